//! What the veth-based plugins (bridge, ptp) share: the veth pair born in the container,
//! the container side configured from an IPAM result, the helpers ADD starts early, and the
//! error plumbing of their ADD, DEL and GC.

use crate::errors::{internal, Collector, Ctx};
use crate::firewall::{self, Backend, MasqTarget};
use crate::netlink::{Handle, Ipv4Conf, Link, NetlinkError, RouteSpec, VethSpec};
use crate::ns::{NetNs, NsError};
use crate::sysctl;
use cni_types::skel::Command;
use cni_types::{invoke, CmdArgs, CniError, CniResult, IpConfig};
use ipnetwork::IpNetwork;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

/// How many random host-side veth names to try before giving up.
pub(crate) const VETH_NAME_TRIES: usize = 10;

/// Whether `e` is EEXIST.
pub(crate) fn is_eexist(e: &NetlinkError) -> bool {
    e.raw_os_error() == Some(nix::libc::EEXIST)
}

/// A host-side veth name like the reference's: `veth` and 8 random hex digits.
pub(crate) fn random_veth_name() -> io::Result<String> {
    use std::io::Read;
    let mut b = [0u8; 4];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(format!("veth{:02x}{:02x}{:02x}{:02x}", b[0], b[1], b[2], b[3]))
}

/// A netlink socket inside `ns`.
pub(crate) fn handle_in(ns: &NetNs) -> Result<Handle, CniError> {
    ns.run(Handle::new)?.ctx(|| format!("netlink socket in {}", ns.path().display()))
}

/// A netlink socket in the container's namespace, refusing the ADD when the container already
/// has an interface named `ifname`: checked before IPAM starts, so a second ADD of an attachment
/// that exists is refused and leaves it (and its address) as it was.
pub(crate) fn container_without(ns: &NetNs, ifname: &str) -> Result<Handle, CniError> {
    let mut cont = handle_in(ns)?;
    if cont.link_by_name(ifname)?.is_some() {
        return Err(internal(format!("container veth name provided ({ifname}) already exists")));
    }
    Ok(cont)
}

/// Helpers started at the beginning of ADD so their start-up overlaps the netlink work: the IPAM
/// plugin allocates and `iptables-restore` loads its libraries while the veth pair is made.
#[derive(Default)]
pub(crate) struct Started {
    /// The IPAM plugin's ADD, running.
    pub(crate) ipam: Option<invoke::PendingAdd>,
    /// An `iptables-restore` waiting for its batch.
    pub(crate) restore: Option<firewall::PendingRestore>,
}

impl Started {
    /// Starts the IPAM plugin's ADD and, when masquerading with iptables, an `iptables-restore`
    /// for the batch; records the IPAM undo, since the spec asks for a DEL of the delegate
    /// whenever ADD fails after starting it, its own failure included.
    pub(crate) fn begin(
        ipam_type: &str,
        args: &CmdArgs,
        masq: Option<Backend>,
        undo: &mut Vec<Undo>,
    ) -> Result<Started, CniError> {
        let ipam = Some(invoke::delegate_add_start(ipam_type, args)?);
        undo.push(Undo::Ipam);
        let restore = masq.and_then(firewall::prepare_ipmasq);
        Ok(Started { ipam, restore })
    }

    /// Waits for whatever is still running, before a rollback: a DEL of the IPAM plugin must
    /// not race its own ADD, and a dropped masquerade batch must have finished.
    pub(crate) fn settle(mut self) {
        if let Some(p) = self.ipam.take() {
            let _ = p.wait();
        }
    }
}

/// Creates the veth pair, peer born in the container as `ifname` (with `mac` if given), host
/// end named like the reference's and, when `master` is given, enslaved to that bridge.
pub(crate) fn create_veth_pair(
    host: &mut Handle,
    cont: &mut Handle,
    ns: &NetNs,
    ifname: &str,
    mtu: u32,
    mac: Option<[u8; 6]>,
    master: Option<&Link>,
) -> Result<Link, CniError> {
    for _ in 0..VETH_NAME_TRIES {
        let name = random_veth_name().map_err(internal)?;
        let spec =
            VethSpec { host_name: &name, peer_name: ifname, mtu, peer_mac: mac, master: master.map(|m| m.index) };
        match host.create_veth(&spec, ns.file().as_fd()) {
            Ok(()) => {
                return host
                    .link_by_name(&name)?
                    .ok_or_else(|| internal(format!("veth {name} vanished after creation")));
            }
            Err(e) if is_eexist(&e) => {
                if cont.link_by_name(ifname)?.is_some() {
                    return Err(internal(format!("container veth name provided ({}) already exists", ifname)));
                }
                // The random host name collided; try another.
            }
            // The kernel numbers bridge ports in 10 bits: 1023 ports at most.
            Err(e) if e.raw_os_error() == Some(nix::libc::EXFULL) && master.is_some() => {
                return Err(internal(format!(
                    "failed to create veth pair {name}/{}: bridge {:?} already has the kernel's maximum of 1023 ports",
                    ifname,
                    master.map(|m| m.name.as_str()).unwrap_or_default()
                )))
            }
            Err(e) => {
                return Err(internal(format!(
                    "failed to create veth pair {name}/{} in {}: {e}",
                    ifname,
                    ns.path().display()
                )))
            }
        }
    }
    Err(internal("failed to find a free host veth name"))
}

/// The gateway of the first address of each family that has one.
pub(crate) fn family_gateways(ips: &[IpConfig]) -> (Option<IpAddr>, Option<IpAddr>) {
    let gw = |v4: bool| ips.iter().filter(|i| i.address.is_ipv4() == v4).find_map(|i| i.gateway);
    (gw(true), gw(false))
}

/// Sysctls, addresses, link up and routes inside the container (reference `ConfigureIface`).
/// `enable_dad` keeps IPv6 duplicate address detection on and waits for it.
pub(crate) fn configure_container(
    ns: &NetNs,
    cont: &mut Handle,
    link: &Link,
    ifname: &str,
    enable_dad: bool,
    result: &CniResult,
) -> Result<(), CniError> {
    let index = link.index;
    let has_v6 = result.ips.iter().any(|i| !i.address.is_ipv4());
    let has_v4 = result.ips.iter().any(|i| i.address.is_ipv4());
    // What the link already reports (its devconf comes with it) is not written again, and
    // arp_notify goes over rtnetlink: each /proc/sys/net path costs more with every namespace.
    let arp_notify_done = !has_v4
        || link.ipv4_arp_notify == Some(1)
        || match cont.enable_ipv4_conf(index, Ipv4Conf::ArpNotify) {
            Ok(()) => true,
            Err(e) => {
                log::debug!("arp_notify over rtnetlink: {e}; writing the sysctl");
                false
            }
        };
    ns.run(|| -> io::Result<()> {
        if has_v6 {
            sysctl::ensure_if_present("net/ipv6/conf/lo/disable_ipv6", "0")?;
            sysctl::ensure_if_present(&format!("net/ipv6/conf/{ifname}/disable_ipv6"), "0")?;
            sysctl::ensure_if_present(&format!("net/ipv6/conf/{ifname}/keep_addr_on_down"), "1")?;
        }
        // DAD costs seconds per container and the bridge owns the subnet, so it is off unless asked.
        if enable_dad {
            sysctl::ensure_if_present(&format!("net/ipv6/conf/{ifname}/enhanced_dad"), "1")?;
            sysctl::ensure_if_present(&format!("net/ipv6/conf/{ifname}/accept_dad"), "1")?;
        } else if link.ipv6_accept_dad != Some(0) {
            sysctl::ensure_if_present(&format!("net/ipv6/conf/{ifname}/accept_dad"), "0")?;
        }
        if !arp_notify_done {
            sysctl::ensure_if_present(&format!("net/ipv4/conf/{ifname}/arp_notify"), "1")?;
        }
        Ok(())
    })?
    .ctx(|| format!("container sysctls for {ifname}"))?;
    // The last sysctl of an ADD.
    sysctl::release();

    for ip in &result.ips {
        match cont.add_address(index, &ip.address) {
            Err(e) if !is_eexist(&e) => {
                return Err(internal(format!("failed to add IP addr {} to {ifname}: {}", ip.address, e.cause())))
            }
            _ => {}
        }
    }
    cont.set_link_up(index, true).ctx(|| format!("failed to set {ifname} up"))?;
    if has_v6 && enable_dad {
        wait_for_dad(cont, index)?;
    }
    let (gw4, gw6) = family_gateways(&result.ips);
    for r in &result.routes {
        let gw = r.gw.or(if r.dst.is_ipv4() { gw4 } else { gw6 });
        let spec = RouteSpec {
            dst: r.dst,
            gw,
            oif: Some(index),
            priority: r.priority,
            table: r.table,
            scope: r.scope,
            mtu: r.mtu,
            advmss: r.advmss,
        };
        match cont.add_route(&spec) {
            Err(e) if !is_eexist(&e) => {
                let via = gw.map(|g| format!(" via {g}")).unwrap_or_default();
                return Err(internal(format!("failed to add route '{}{via} dev {ifname}': {}", r.dst, e.cause())));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Waits (at most 5 s) until no address on the link is still tentative.
pub(crate) fn wait_for_dad(cont: &mut Handle, index: u32) -> Result<(), CniError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    // With DAD off the kernel clears the flag as soon as its worker runs after link up, within
    // a millisecond: poll fast at first, then every 20 ms.
    let mut pause = Duration::from_micros(200);
    loop {
        let addrs = cont.addresses(Some(index)).ctx(|| "list container addresses")?;
        if !addrs.iter().any(|a| a.tentative) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(internal("IPv6 duplicate address detection did not finish within 5s"));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Something ADD created, and so must undo if a later step fails.
pub(crate) enum Undo {
    /// The bridge this ADD created: removed again unless a port appeared on it meanwhile.
    Bridge(u32),
    /// A gateway address this ADD put on a bridge that had it not: removed again unless
    /// another port than this ADD's veth uses the bridge.
    BridgeAddr(u32, IpNetwork),
    /// An address `forceAddress` took off the bridge: put back under the same condition.
    BridgeAddrRemoved(u32, IpNetwork),
    /// The host end of the veth pair (its peer, addresses and routes go with it).
    Veth(u32),
    /// bridge's MAC spoof check rules.
    SpoofCheck,
    /// The IPAM plugin's reservation.
    Ipam,
    /// The masquerade rules for these addresses.
    IpMasq(Vec<IpNetwork>),
}

/// Undoes what a failed ADD created, newest first; what cannot be undone is logged.
pub(crate) fn rollback(args: &CmdArgs, network: &str, ipam_type: &str, host: &mut Handle, undo: Vec<Undo>) {
    let veth = undo.iter().find_map(|u| if let Undo::Veth(i) = u { Some(*i) } else { None });
    for step in undo.into_iter().rev() {
        let r = match step {
            // Another container that joined meanwhile keeps the bridge and its gateway, as the
            // reference keeps them; otherwise the failed ADD leaves the host as it found it.
            Undo::BridgeAddr(index, net) => match bridge_in_use(host, index, veth) {
                Ok(false) => host.del_address(index, &net).map_err(internal),
                Ok(true) => Ok(()),
                Err(e) => Err(internal(e)),
            },
            Undo::BridgeAddrRemoved(index, net) => match bridge_in_use(host, index, veth) {
                Ok(false) => match host.add_address(index, &net) {
                    Err(e) if !is_eexist(&e) => Err(internal(e)),
                    _ => Ok(()),
                },
                Ok(true) => Ok(()),
                Err(e) => Err(internal(e)),
            },
            Undo::Bridge(index) => match bridge_in_use(host, index, None) {
                Ok(false) => host.del_link(index).map_err(internal),
                Ok(true) => Ok(()),
                Err(e) => Err(internal(e)),
            },
            Undo::IpMasq(addresses) => {
                let target = MasqTarget {
                    network,
                    container_id: &args.container_id,
                    ifname: &args.ifname,
                    addresses: &addresses,
                };
                firewall::teardown_ipmasq(&target).map_err(CniError::from)
            }
            Undo::Ipam => invoke::delegate(ipam_type, Command::Del, args),
            Undo::SpoofCheck => firewall::teardown_spoofcheck(&args.container_id, &args.ifname).map_err(CniError::from),
            Undo::Veth(index) => host.del_link(index).map_err(internal),
        };
        if let Err(e) = r {
            log::error!("rollback after failed ADD: {e}");
        }
    }
}

/// Whether `bridge` has a port other than `except`.
fn bridge_in_use(host: &mut Handle, bridge: u32, except: Option<u32>) -> io::Result<bool> {
    Ok(host.links()?.iter().any(|l| l.master == Some(bridge) && Some(l.index) != except))
}

/// What DEL found on the container's side before deleting anything.
pub(crate) struct ContainerEnd {
    /// No netns was given, or its file no longer exists: the container's interfaces went with it.
    pub(crate) gone: bool,
    /// The addresses `CNI_IFNAME` has (loopback excluded; empty when it is not there).
    pub(crate) addrs: Vec<IpNetwork>,
    /// A socket in the container's namespace and the index of `CNI_IFNAME` there, when it exists.
    found: Option<(Handle, u32)>,
}

impl ContainerEnd {
    /// Looks up `CNI_IFNAME` in `CNI_NETNS` and reads its addresses; errors are collected, so DEL
    /// goes on with the rest.
    pub(crate) fn find(args: &CmdArgs, errors: &mut Collector) -> ContainerEnd {
        let mut end = ContainerEnd { gone: args.netns.is_empty(), addrs: Vec::new(), found: None };
        if end.gone {
            return end;
        }
        match NetNs::open(&args.netns) {
            Ok(ns) => match handle_in(&ns) {
                Ok(mut cont) => match cont.link_by_name(&args.ifname) {
                    Ok(Some(link)) => {
                        if let Ok(a) = cont.addresses(Some(link.index)) {
                            end.addrs = a.into_iter().map(|a| a.net).filter(|n| !n.ip().is_loopback()).collect();
                        }
                        end.found = Some((cont, link.index));
                    }
                    Ok(None) => {}
                    Err(e) => errors.push(e.to_string()),
                },
                Err(e) => errors.push(e.msg),
            },
            Err(NsError::NotExist(_)) => end.gone = true,
            Err(e) => errors.push(e.to_string()),
        }
        end
    }

    /// Deletes `ifname` where [`ContainerEnd::find`] found it, from inside the container's
    /// namespace (its veth peer goes with it); a failure is collected.
    pub(crate) fn delete(self, ifname: &str, errors: &mut Collector) {
        if let Some((mut cont, index)) = self.found {
            if let Err(e) = cont.del_link(index) {
                errors.push(format!("failed to delete {ifname}: {}", e.cause()));
            }
        }
    }

    /// DEL's last steps, the same for bridge and ptp: deletes `ifname` here and the host end
    /// DEL found apart from it (a veth whose peer is already gone), then lets `settle` close the
    /// netfilter sockets the rule teardown used and collects IPAM's DEL, started first.
    pub(crate) fn finish_del(
        self,
        ifname: &str,
        host_end: Option<(Handle, Link)>,
        settle: crate::netlink::NftSettle,
        ipam: Option<invoke::Running>,
        mut errors: Collector,
    ) -> Result<(), CniError> {
        self.delete(ifname, &mut errors);
        if let Some((mut host, l)) = host_end {
            errors.step(
                || format!("failed to delete {}", l.name),
                host.del_link(l.index).map_err(|e| e.cause().to_string()),
            );
        }
        drop(settle);
        if let Some(ipam) = ipam {
            errors.keep(ipam.finish().map_err(|e| e.to_string()));
        }
        errors.into_cni()
    }
}

/// GC: forwarded to the IPAM plugin (when there is one), then the masquerade rules of
/// `network` whose attachment the runtime no longer lists are removed. Both run; all errors
/// are reported.
pub(crate) fn gc_ipam_and_masq(ipam_type: Option<&str>, network: &str, args: &CmdArgs) -> Result<(), CniError> {
    let net = args.net_conf()?;
    let mut errors = Collector::new();
    if let Some(ipam) = ipam_type {
        errors.keep(invoke::delegate(ipam, Command::Gc, args).map_err(|e| e.to_string()));
    }
    // Without a list from the runtime nothing can be known to be stale.
    if let Some(valid) = net.gc_valid_attachments() {
        let valid: Vec<(String, String)> = valid.iter().map(|a| (a.container_id.clone(), a.ifname.clone())).collect();
        errors.step(|| "IP masquerade GC", firewall::gc_ipmasq(network, &valid));
    }
    errors.into_cni()
}

/// The masquerade backend `ipMasqBackend` names, else the host's default.
pub(crate) fn masq_backend(name: Option<&str>) -> Result<Backend, CniError> {
    match name {
        Some(b) => Ok(Backend::parse(b)?),
        None => Ok(firewall::default_backend()?),
    }
}
