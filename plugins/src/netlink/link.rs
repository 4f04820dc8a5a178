//! Links: look up, create bridges and veth pairs, enslave, set flags, MAC, MTU, port options.

use super::{op, Handle, LinkIndex, NetlinkError};
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::link::{AfSpecBridge, BridgeVlanInfo, BridgeVlanInfoFlags};
use netlink_packet_route::link::{AfSpecInet, AfSpecInet6, AfSpecUnspec, InetDevConf};
use netlink_packet_route::link::{
    InfoBridge, InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute, LinkFlags,
    LinkInfo, LinkMessage, State,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// What the plugins need to know about a link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// `IFF_UP` is set (administratively up).
    pub up: bool,
    /// Hardware address.
    pub mac: Vec<u8>,
    /// MTU.
    pub mtu: u32,
    /// `IFLA_INFO_KIND` (`bridge`, `veth`, …), empty for e.g. `lo`.
    pub kind: String,
    /// Index of the controlling device (bridge), if enslaved.
    pub master: Option<u32>,
    /// `IFF_PROMISC` is set.
    pub promisc: bool,
    /// `IFF_ALLMULTI` is set.
    pub allmulti: bool,
    /// Transmit queue length (`IFLA_TXQLEN`).
    pub tx_queue_len: u32,
    /// Smallest MTU the device accepts (`IFLA_MIN_MTU`), where the kernel reports it.
    pub min_mtu: Option<u32>,
    /// Largest MTU the device accepts (`IFLA_MAX_MTU`), where the kernel reports it.
    pub max_mtu: Option<u32>,
    /// Operational state (`IFLA_OPERSTATE`), e.g. `Up`, `Down`, `LowerLayerDown`.
    pub oper_state: Option<State>,
    /// For a veth: the peer's interface index (`IFLA_LINK`), in whichever namespace it lives.
    pub peer_index: Option<u32>,
    /// `IFLA_IFALIAS`, empty when unset.
    pub alias: String,
    /// `net.ipv6.conf.<name>.accept_ra`, when the link has IPv6.
    pub ipv6_accept_ra: Option<i32>,
    /// `net.ipv6.conf.<name>.accept_dad`, when the link has IPv6.
    pub ipv6_accept_dad: Option<i32>,
    /// `net.ipv4.conf.<name>.arp_notify`, when the link has IPv4.
    pub ipv4_arp_notify: Option<i32>,
    /// `net.ipv4.conf.<name>.route_localnet`, when the link has IPv4.
    pub ipv4_route_localnet: Option<i32>,
}

/// A per-device IPv4 switch [`Handle::enable_ipv4_conf`] can turn on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipv4Conf {
    /// `arp_notify`.
    ArpNotify,
    /// `route_localnet`.
    RouteLocalnet,
}

impl Link {
    fn from_message(msg: &LinkMessage) -> Link {
        let mut link = Link {
            index: msg.header.index,
            up: msg.header.flags.contains(LinkFlags::Up),
            promisc: msg.header.flags.contains(LinkFlags::Promisc),
            allmulti: msg.header.flags.contains(LinkFlags::Allmulti),
            ..Default::default()
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Address(a) => link.mac = a.clone(),
                LinkAttribute::Mtu(m) => link.mtu = *m,
                LinkAttribute::MinMtu(m) => link.min_mtu = Some(*m),
                LinkAttribute::MaxMtu(m) => link.max_mtu = Some(*m),
                LinkAttribute::TxQueueLen(q) => link.tx_queue_len = *q,
                LinkAttribute::Controller(m) => link.master = Some(*m),
                LinkAttribute::OperState(st) => link.oper_state = Some(*st),
                LinkAttribute::Link(peer) => link.peer_index = Some(*peer),
                LinkAttribute::IfAlias(a) => link.alias = a.clone(),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(kind) = info {
                            link.kind = kind.to_string();
                        }
                    }
                }
                // The per-device sysctls come with every link, so reading one costs no path
                // lookup under /proc/sys/net (which grows with the number of namespaces).
                LinkAttribute::AfSpecUnspec(families) => {
                    for family in families {
                        match family {
                            AfSpecUnspec::Inet(attrs) => {
                                for a in attrs {
                                    if let AfSpecInet::DevConf(c) = a {
                                        link.ipv4_arp_notify = Some(c.arp_notify);
                                        link.ipv4_route_localnet = Some(c.route_localnet);
                                    }
                                }
                            }
                            AfSpecUnspec::Inet6(attrs) => {
                                for a in attrs {
                                    if let AfSpecInet6::DevConf(c) = a {
                                        link.ipv6_accept_ra = Some(c.accept_ra);
                                        link.ipv6_accept_dad = Some(c.accept_dad);
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }

    /// The MAC in the `aa:bb:cc:dd:ee:ff` form results use.
    pub fn mac_string(&self) -> String {
        self.mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
    }
}

/// Parses `aa:bb:cc:dd:ee:ff` (any case) into six bytes.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for byte in out.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Options for [`Handle::create_veth`].
#[derive(Debug, Clone, Default)]
pub struct VethSpec<'a> {
    /// Name of the end that stays in the handle's namespace.
    pub host_name: &'a str,
    /// Name of the end created in `peer_netns`.
    pub peer_name: &'a str,
    /// MTU of both ends (0: kernel default).
    pub mtu: u32,
    /// MAC of the peer end, if requested.
    pub peer_mac: Option<[u8; 6]>,
    /// Bridge to enslave the host end to at creation.
    pub master: Option<u32>,
}

pub(super) fn is_absent(e: &io::Error) -> bool {
    e.raw_os_error() == Some(nix::libc::ENODEV)
}

impl Handle {
    /// `ip link show <name>`; `None` when there is no such link.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_link(msg).map_err(op("look up link", name))
    }

    /// `ip link show` by index; `None` when there is no such link.
    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>, NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.get_link(msg).map_err(op("look up", LinkIndex(index)))
    }

    fn get_link(&mut self, msg: LinkMessage) -> io::Result<Option<Link>> {
        match self.get(RouteNetlinkMessage::GetLink(msg)) {
            Ok(replies) => Ok(replies.iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `ip link` dump: every link in the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        let replies = self.dump(RouteNetlinkMessage::GetLink(LinkMessage::default())).map_err(op("list", "links"))?;
        Ok(replies
            .iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })
            .collect())
    }

    /// `ip link add <name> type bridge [mtu M] [vlan_filtering 1]`; EEXIST is returned as is
    /// so a caller racing another creator can treat it as "already there".
    pub fn create_bridge(&mut self, name: &str, mtu: u32, vlan_filtering: bool) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        if mtu > 0 {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        let mut info = vec![LinkInfo::Kind(InfoKind::Bridge)];
        if vlan_filtering {
            // Must be sent with RTM_NEWLINK: the kernel ignores it on RTM_SETLINK.
            info.push(LinkInfo::Data(InfoData::Bridge(vec![InfoBridge::VlanFiltering(true)])));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(info));
        self.request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL).map_err(op("create bridge", name))
    }

    /// `ip link add <host> [master B] type veth peer name <peer> netns <fd>`: one request, the
    /// peer is born in the container namespace (never visible on the host).
    pub fn create_veth(&mut self, spec: &VethSpec<'_>, peer_netns: BorrowedFd<'_>) -> Result<(), NetlinkError> {
        let mut peer = LinkMessage::default();
        peer.attributes.push(LinkAttribute::IfName(spec.peer_name.to_string()));
        peer.attributes.push(LinkAttribute::NetNsFd(peer_netns.as_raw_fd()));
        if spec.mtu > 0 {
            peer.attributes.push(LinkAttribute::Mtu(spec.mtu));
        }
        if let Some(mac) = spec.peer_mac {
            peer.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(spec.host_name.to_string()));
        if spec.mtu > 0 {
            msg.attributes.push(LinkAttribute::Mtu(spec.mtu));
        }
        if let Some(master) = spec.master {
            msg.attributes.push(LinkAttribute::Controller(master));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
            .map_err(op("create veth", format_args!("{} (peer {})", spec.host_name, spec.peer_name)))
    }

    /// `ip link add <name> mtu <mtu> txqueuelen 0 up type ifb` and `ip link set <name> alias
    /// <alias>`; returns the new link. EEXIST passes through.
    pub fn create_ifb(&mut self, name: &str, mtu: u32, alias: Option<&str>) -> Result<Link, NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        msg.attributes.push(LinkAttribute::TxQueueLen(0));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Ifb)]));
        self.request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL).map_err(op("create ifb", name))?;
        let mut link = self.link_by_name(name)?.ok_or_else(|| {
            NetlinkError::new("look up link", name, io::Error::new(io::ErrorKind::NotFound, "vanished after creation"))
        })?;
        if let Some(alias) = alias {
            // The kernel takes an alias only in RTM_SETLINK, not at creation.
            self.set_link_alias(link.index, alias)?;
            link.alias = alias.to_string();
        }
        Ok(link)
    }

    /// `ip link set <index> alias <alias>`.
    pub fn set_link_alias(&mut self, index: u32, alias: &str) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::IfAlias(alias.to_string()));
        self.request(RouteNetlinkMessage::SetLink(msg), 0).map_err(op("set the alias of", LinkIndex(index)))
    }

    /// `ip link set <index> mtu <mtu> txqueuelen <txqlen>`.
    pub fn set_link_mtu_txqlen(&mut self, index: u32, mtu: u32, txqlen: u32) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        msg.attributes.push(LinkAttribute::TxQueueLen(txqlen));
        self.request(RouteNetlinkMessage::SetLink(msg), 0)
            .map_err(op("set the MTU and txqueuelen of", LinkIndex(index)))
    }

    /// `ip link del <index>`; a link that is already gone is not an error.
    pub fn del_link(&mut self, index: u32) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        match self.request(RouteNetlinkMessage::DelLink(msg), 0) {
            Err(e) if is_absent(&e) => Ok(()),
            other => other.map_err(op("delete", LinkIndex(index))),
        }
    }

    /// `ip link set <index> address <mac>`.
    pub fn set_link_mac(&mut self, index: u32, mac: &[u8]) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        self.request(RouteNetlinkMessage::SetLink(msg), 0).map_err(op("set the MAC of", LinkIndex(index)))
    }

    /// `ip link set <index> promisc on|off`.
    pub fn set_link_promisc(&mut self, index: u32, on: bool) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = if on { LinkFlags::Promisc } else { LinkFlags::empty() };
        msg.header.change_mask = LinkFlags::Promisc;
        self.request(RouteNetlinkMessage::SetLink(msg), 0).map_err(op("set promisc on", LinkIndex(index)))
    }

    /// `ip link set <index> allmulticast on|off`.
    pub fn set_link_allmulti(&mut self, index: u32, on: bool) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = if on { LinkFlags::Allmulti } else { LinkFlags::empty() };
        msg.header.change_mask = LinkFlags::Allmulti;
        self.request(RouteNetlinkMessage::SetLink(msg), 0).map_err(op("set allmulticast on", LinkIndex(index)))
    }

    /// `ip link set <index> mtu <mtu>`.
    pub fn set_link_mtu(&mut self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        self.request(RouteNetlinkMessage::SetLink(msg), 0).map_err(op("set the MTU of", LinkIndex(index)))
    }

    /// `ip link set <index> txqueuelen <len>`.
    pub fn set_link_txqlen(&mut self, index: u32, len: u32) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::TxQueueLen(len));
        self.request(RouteNetlinkMessage::SetLink(msg), 0).map_err(op("set the txqueuelen of", LinkIndex(index)))
    }

    /// `net.ipv4.conf.<link>.<switch>=1` through rtnetlink (`IFLA_INET_CONF`), which costs no
    /// `/proc/sys` path lookup.
    pub fn enable_ipv4_conf(&mut self, index: u32, switch: Ipv4Conf) -> Result<(), NetlinkError> {
        let mut conf = InetDevConf::default();
        match switch {
            Ipv4Conf::ArpNotify => conf.arp_notify = 1,
            Ipv4Conf::RouteLocalnet => conf.route_localnet = 1,
        }
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes
            .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![AfSpecInet::DevConfRequest(conf)])]));
        self.request(RouteNetlinkMessage::SetLink(msg), 0)
            .map_err(op("set an IPv4 devconf switch of", LinkIndex(index)))
    }

    /// `ip link set <index> type bridge_slave hairpin on|off [isolated on]`. Isolation is only
    /// sent when wanted, so kernels without it (before 4.18) work for everyone else.
    pub fn set_bridge_port(&mut self, index: u32, hairpin: bool, isolated: bool) -> Result<(), NetlinkError> {
        let mut port = vec![InfoBridgePort::HairpinMode(hairpin)];
        if isolated {
            port.push(InfoBridgePort::Isolated(true));
        }
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(port)),
        ]));
        self.request(RouteNetlinkMessage::NewLink(msg), 0).map_err(op("set hairpin/isolation on", LinkIndex(index)))
    }

    /// `bridge vlan add|del dev <index> vid <vid> [pvid untagged]` on a bridge port.
    pub fn bridge_port_vlan(
        &mut self,
        index: u32,
        vid: u16,
        pvid_untagged: bool,
        add: bool,
    ) -> Result<(), NetlinkError> {
        let mut flags = BridgeVlanInfoFlags::empty();
        if pvid_untagged {
            flags |= BridgeVlanInfoFlags::Pvid | BridgeVlanInfoFlags::Untagged;
        }
        let mut msg = LinkMessage::default();
        msg.header.interface_family = AddressFamily::Bridge;
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::AfSpecBridge(vec![AfSpecBridge::VlanInfo(BridgeVlanInfo { flags, vid })]));
        let req = if add { RouteNetlinkMessage::SetLink(msg) } else { RouteNetlinkMessage::DelLink(msg) };
        self.request(req, 0).map_err(op(if add { "add a VLAN to" } else { "remove a VLAN from" }, LinkIndex(index)))
    }

    /// `ip link set <index> up|down`.
    pub fn set_link_up(&mut self, index: u32, up: bool) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = if up { LinkFlags::Up } else { LinkFlags::empty() };
        msg.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(msg), 0)
            .map_err(op(if up { "set up" } else { "set down" }, LinkIndex(index)))
    }
}
