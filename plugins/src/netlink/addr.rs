//! Addresses: list them.

use super::Handle;
use ipnetwork::IpNetwork;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::RouteNetlinkMessage;
use std::io;

/// An address on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// Interface index it is on.
    pub index: u32,
    /// The address with its prefix length.
    pub net: IpNetwork,
}

impl Handle {
    /// `ip addr show`, optionally only for one interface index.
    pub fn addresses(&mut self, index: Option<u32>) -> io::Result<Vec<Address>> {
        let replies = self.dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))?;
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
            for attr in &msg.attributes {
                match attr {
                    AddressAttribute::Local(ip) => local = Some(*ip),
                    AddressAttribute::Address(ip) => address = Some(*ip),
                    _ => {}
                }
            }
            if let Some(ip) = local.or(address) {
                if let Ok(net) = IpNetwork::new(ip, msg.header.prefix_len) {
                    out.push(Address { index: msg.header.index, net });
                }
            }
        }
        Ok(out)
    }
}
