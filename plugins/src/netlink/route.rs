//! Routes: add, delete, list and look up.

use super::{op, Handle, NetlinkError};
use ipnetwork::IpNetwork;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteMetric, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use std::io;
use std::net::IpAddr;

/// A unicast route as the plugins create and check them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// Destination prefix.
    pub dst: IpNetwork,
    /// Next hop, if any.
    pub gw: Option<IpAddr>,
    /// Output interface index.
    pub oif: Option<u32>,
    /// Metric.
    pub priority: Option<u32>,
    /// Table (main when absent).
    pub table: Option<u32>,
    /// Scope (universe when absent; 253 link, 254 host).
    pub scope: Option<u8>,
    /// Path MTU.
    pub mtu: Option<u32>,
    /// Advertised MSS.
    pub advmss: Option<u32>,
}

const RT_TABLE_MAIN: u32 = 254;

impl std::fmt::Display for RouteSpec {
    /// In `ip route`'s words: `10.0.0.0/24 via 10.0.0.1 dev 7 table 100`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.dst)?;
        if let Some(gw) = self.gw {
            write!(f, " via {gw}")?;
        }
        if let Some(oif) = self.oif {
            write!(f, " dev {oif}")?;
        }
        match self.table {
            Some(t) if t != RT_TABLE_MAIN => write!(f, " table {t}"),
            _ => Ok(()),
        }
    }
}

fn to_route_address(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(v4) => RouteAddress::Inet(v4),
        IpAddr::V6(v6) => RouteAddress::Inet6(v6),
    }
}

fn from_route_address(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// The request message for `r`.
fn route_message(r: &RouteSpec, protocol: RouteProtocol) -> RouteMessage {
    let mut msg = RouteMessage::default();
    let table = r.table.unwrap_or(RT_TABLE_MAIN);
    msg.header = RouteHeader {
        address_family: if r.dst.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 },
        destination_prefix_length: r.dst.prefix(),
        table: u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC),
        protocol,
        scope: r.scope.map(RouteScope::from).unwrap_or(RouteScope::Universe),
        kind: RouteType::Unicast,
        ..Default::default()
    };
    msg.attributes.push(RouteAttribute::Destination(to_route_address(r.dst.network())));
    msg.attributes.push(RouteAttribute::Table(table));
    if let Some(gw) = r.gw {
        msg.attributes.push(RouteAttribute::Gateway(to_route_address(gw)));
    }
    if let Some(oif) = r.oif {
        msg.attributes.push(RouteAttribute::Oif(oif));
    }
    if let Some(p) = r.priority {
        msg.attributes.push(RouteAttribute::Priority(p));
    }
    let mut metrics = Vec::new();
    if let Some(m) = r.mtu.filter(|m| *m > 0) {
        metrics.push(RouteMetric::Mtu(m));
    }
    if let Some(m) = r.advmss.filter(|m| *m > 0) {
        metrics.push(RouteMetric::Advmss(m));
    }
    if !metrics.is_empty() {
        msg.attributes.push(RouteAttribute::Metrics(metrics));
    }
    msg
}

impl Handle {
    /// `ip route add <dst> [via gw] [dev oif] [metric] [table] [scope] [mtu] [advmss]`; EEXIST is
    /// returned as is so callers can treat an identical route as present.
    pub fn add_route(&mut self, r: &RouteSpec) -> Result<(), NetlinkError> {
        self.add_route_src(r, None)
    }

    /// [`Handle::add_route`] with a preferred source address (`src <ip>`).
    pub fn add_route_src(&mut self, r: &RouteSpec, src: Option<IpAddr>) -> Result<(), NetlinkError> {
        let mut msg = route_message(r, RouteProtocol::Boot);
        if let Some(src) = src {
            msg.attributes.push(RouteAttribute::PrefSource(to_route_address(src)));
        }
        self.request(RouteNetlinkMessage::NewRoute(msg), NLM_F_CREATE | NLM_F_EXCL).map_err(op("add route", r))
    }

    /// [`Handle::add_route`] with route flags (`onlink`: the gateway is on the link whether or
    /// not a route says so).
    pub fn add_route_flagged(&mut self, r: &RouteSpec, flags: RouteFlags) -> Result<(), NetlinkError> {
        let mut msg = route_message(r, RouteProtocol::Boot);
        msg.header.flags = flags;
        self.request(RouteNetlinkMessage::NewRoute(msg), NLM_F_CREATE | NLM_F_EXCL).map_err(op("add route", r))
    }

    /// `ip route del <dst> [via gw] [dev oif] [table]` whatever its protocol and scope (unless
    /// `r.scope` names one); a route that is already gone is not an error.
    pub fn del_route(&mut self, r: &RouteSpec) -> Result<(), NetlinkError> {
        let mut msg = route_message(r, RouteProtocol::Unspec);
        if r.scope.is_none() {
            msg.header.scope = RouteScope::NoWhere;
        }
        match self.request(RouteNetlinkMessage::DelRoute(msg), 0) {
            Err(e) if e.raw_os_error() == Some(nix::libc::ESRCH) => Ok(()),
            other => other.map_err(op("delete route", r)),
        }
    }

    /// `ip route get <dst>`: the interface index the kernel would send a packet for `dst` out of,
    /// `None` when the answer names none (an unreachable or blackhole destination).
    pub fn route_get(&mut self, dst: IpAddr) -> Result<Option<u32>, NetlinkError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = if dst.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
        msg.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
        msg.attributes.push(RouteAttribute::Destination(to_route_address(dst)));
        let replies = self.get(RouteNetlinkMessage::GetRoute(msg)).map_err(op("look up the route to", dst))?;
        Ok(replies.iter().find_map(|reply| match reply {
            RouteNetlinkMessage::NewRoute(m) => m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(index) => Some(*index),
                _ => None,
            }),
            _ => None,
        }))
    }

    /// `ip route show table all` for one family (v4 when `v4`), unicast routes only.
    pub fn routes(&mut self, v4: bool) -> Result<Vec<RouteSpec>, NetlinkError> {
        let mut req = RouteMessage::default();
        req.header.address_family = if v4 { AddressFamily::Inet } else { AddressFamily::Inet6 };
        let what = if v4 { "IPv4 routes" } else { "IPv6 routes" };
        let replies = self.dump(RouteNetlinkMessage::GetRoute(req)).map_err(op("list", what))?;
        let mut out = Vec::new();
        for reply in replies {
            let RouteNetlinkMessage::NewRoute(msg) = reply else { continue };
            if msg.header.kind != RouteType::Unicast {
                continue;
            }
            let mut spec = RouteSpec {
                dst: IpNetwork::new(
                    if v4 { IpAddr::from([0u8; 4]) } else { IpAddr::from([0u16; 8]) },
                    msg.header.destination_prefix_length,
                )
                .map_err(|e| op("list", what)(io::Error::new(io::ErrorKind::InvalidData, e.to_string())))?,
                gw: None,
                oif: None,
                priority: None,
                table: Some(u32::from(msg.header.table)),
                scope: Some(u8::from(msg.header.scope)),
                mtu: None,
                advmss: None,
            };
            for attr in &msg.attributes {
                match attr {
                    RouteAttribute::Destination(a) => {
                        if let Some(ip) = from_route_address(a) {
                            spec.dst = IpNetwork::new(ip, msg.header.destination_prefix_length).unwrap_or(spec.dst);
                        }
                    }
                    RouteAttribute::Gateway(a) => spec.gw = from_route_address(a),
                    RouteAttribute::Oif(i) => spec.oif = Some(*i),
                    RouteAttribute::Priority(p) => spec.priority = Some(*p),
                    RouteAttribute::Table(t) => spec.table = Some(*t),
                    _ => {}
                }
            }
            out.push(spec);
        }
        Ok(out)
    }
}
