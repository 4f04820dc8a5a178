//! Addresses: list, add, delete.

use super::{op, Handle, LinkIndex, NetlinkError};
use ipnetwork::IpNetwork;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use std::net::IpAddr;

/// An address on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// Interface index it is on.
    pub index: u32,
    /// The address with its prefix length.
    pub net: IpNetwork,
    /// Still doing duplicate address detection (IPv6).
    pub tentative: bool,
}

fn address_message(index: u32, net: &IpNetwork) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.index = index;
    msg.header.prefix_len = net.prefix();
    msg.header.family = if net.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    msg.attributes.push(AddressAttribute::Local(net.ip()));
    msg.attributes.push(AddressAttribute::Address(net.ip()));
    if let (IpAddr::V4(_), IpNetwork::V4(v4)) = (net.ip(), net) {
        if net.prefix() < 31 {
            msg.attributes.push(AddressAttribute::Broadcast(v4.broadcast()));
        }
    }
    msg
}

impl Handle {
    /// `ip addr show`, optionally only for one interface index.
    pub fn addresses(&mut self, index: Option<u32>) -> Result<Vec<Address>, NetlinkError> {
        let mut req = AddressMessage::default();
        req.header.index = index.unwrap_or(0);
        let replies = self.dump(RouteNetlinkMessage::GetAddress(req)).map_err(|e| match index {
            Some(i) => op("list the addresses of", LinkIndex(i))(e),
            None => op("list", "addresses")(e),
        })?;
        let mut out = Vec::new();
        for reply in replies {
            let RouteNetlinkMessage::NewAddress(msg) = reply else {
                continue;
            };
            if index.is_some_and(|i| i != msg.header.index) {
                continue;
            }
            // IFA_LOCAL is the interface's own address on point-to-point links; IFA_ADDRESS elsewhere.
            let mut local = None;
            let mut address = None;
            let mut tentative = false;
            for attr in &msg.attributes {
                match attr {
                    AddressAttribute::Local(ip) => local = Some(*ip),
                    AddressAttribute::Address(ip) => address = Some(*ip),
                    AddressAttribute::Flags(f) => tentative = f.contains(AddressFlags::Tentative),
                    _ => {}
                }
            }
            if let Some(ip) = local.or(address) {
                if let Ok(net) = IpNetwork::new(ip, msg.header.prefix_len) {
                    out.push(Address { index: msg.header.index, net, tentative });
                }
            }
        }
        Ok(out)
    }

    /// `ip addr add <net> dev <index>`; EEXIST is returned as is.
    pub fn add_address(&mut self, index: u32, net: &IpNetwork) -> Result<(), NetlinkError> {
        self.request(RouteNetlinkMessage::NewAddress(address_message(index, net)), NLM_F_CREATE | NLM_F_EXCL)
            .map_err(op(format_args!("add address {net} to"), LinkIndex(index)))
    }

    /// `ip addr add <net> dev <index> nodad`: an IPv6 address usable at once (no duplicate address
    /// detection); EEXIST is returned as is.
    pub fn add_address_nodad(&mut self, index: u32, net: &IpNetwork) -> Result<(), NetlinkError> {
        let mut msg = address_message(index, net);
        msg.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        self.request(RouteNetlinkMessage::NewAddress(msg), NLM_F_CREATE | NLM_F_EXCL)
            .map_err(op(format_args!("add address {net} to"), LinkIndex(index)))
    }

    /// `ip addr del <net> dev <index>`; an address that is already gone is not an error.
    pub fn del_address(&mut self, index: u32, net: &IpNetwork) -> Result<(), NetlinkError> {
        match self.request(RouteNetlinkMessage::DelAddress(address_message(index, net)), 0) {
            Err(e) if e.raw_os_error() == Some(nix::libc::EADDRNOTAVAIL) => Ok(()),
            other => other.map_err(op(format_args!("delete address {net} from"), LinkIndex(index))),
        }
    }
}
