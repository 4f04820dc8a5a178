//! Stale UDP conntrack entries deleted over ctnetlink (`NETLINK_NETFILTER`), no helper process:
//! `conntrack -D -p udp --orig-port-dst <port>`. Like the reference, this dumps the family's
//! table and deletes the matching entries one by one, by their original tuple and zone sent back
//! exactly as the kernel dumped them.

use super::nfnl::{self, ct};
use super::socket::{named, Flow, Protocol, Socket};
use super::wire::{attrs, AttrWriter, Attrs};
use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use std::io;

const IPPROTO_UDP: u8 = 17;

/// `AF_INET` or `AF_INET6`, the `nfgenmsg` family byte.
fn address_family(ipv6: bool) -> u8 {
    if ipv6 {
        nix::libc::AF_INET6 as u8
    } else {
        nix::libc::AF_INET as u8
    }
}

/// The body of a ctnetlink request: `nfgenmsg` (family, version 0, resource 0) and attributes.
fn request_body(ipv6: bool, attributes: &[u8]) -> Vec<u8> {
    let mut body = AttrWriter::new();
    body.raw(&[address_family(ipv6), 0, 0, 0]).raw(attributes);
    body.into_bytes()
}

/// The attributes to delete an entry by (its original tuple, and its zone if any) when it is a
/// UDP entry for one of `ports` (sorted).
fn victim(entry: Attrs, ports: &[u16]) -> Option<Vec<u8>> {
    let tuple = entry.get(ct::TUPLE_ORIG)?;
    let proto = tuple.nested().get(ct::TUPLE_PROTO)?.nested();
    let number = *proto.get(ct::PROTO_NUM)?.value.first()?;
    let port = proto.get(ct::PROTO_DST_PORT)?.value;
    let port = u16::from_be_bytes([*port.first()?, *port.get(1)?]);
    if number != IPPROTO_UDP || ports.binary_search(&port).is_err() {
        return None;
    }
    let mut request = AttrWriter::new();
    request.raw(tuple.raw);
    if let Some(zone) = entry.get(ct::ZONE) {
        request.raw(zone.raw);
    }
    Some(request.into_bytes())
}

/// `conntrack -D -p udp --orig-port-dst <port>` for every port, in one address family of the
/// calling thread's namespace: deletes the UDP entries whose original destination port is in
/// `ports`; returns how many were deleted. Entries that vanish meanwhile are not an error.
pub fn delete_udp_conntrack(ipv6: bool, ports: &[u16]) -> io::Result<usize> {
    if ports.is_empty() {
        return Ok(0);
    }
    let mut sorted = ports.to_vec();
    sorted.sort_unstable();
    let table = if ipv6 { "ipv6 conntrack table" } else { "ipv4 conntrack table" };
    let mut socket = Socket::open(Protocol::Netfilter).map_err(|e| named(format_args!("open {table}"), e))?;
    let mut victims = Vec::new();
    let get = nfnl::kind(nfnl::SUBSYS_CTNETLINK, ct::MSG_GET);
    socket
        .exchange(get, NLM_F_REQUEST | NLM_F_DUMP, &request_body(ipv6, &[]), |reply| {
            if let Some(entry) = reply.body.get(4..) {
                victims.extend(victim(attrs(entry), &sorted));
            }
            Ok(Flow::More)
        })
        .map_err(|e| named(format_args!("dump {table}"), e))?;
    let delete = nfnl::kind(nfnl::SUBSYS_CTNETLINK, ct::MSG_DELETE);
    let mut deleted = 0;
    for request in victims {
        match socket.exchange(delete, NLM_F_REQUEST | NLM_F_ACK, &request_body(ipv6, &request), |_| Ok(Flow::More)) {
            Ok(_) => deleted += 1,
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => {}
            Err(e) => return Err(named(format_args!("delete a UDP entry of the {table}"), e)),
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::super::wire;
    use super::*;

    /// The attributes of a dumped entry: original tuple (as the kernel nests it), zone, status.
    fn entry(proto: u8, dport: u16, zone: Option<u16>) -> Vec<u8> {
        let mut w = AttrWriter::new();
        w.nest(ct::TUPLE_ORIG, |t| {
            t.nest(1, |ip| {
                ip.bytes_attr(1, &[10, 0, 0, 1]).bytes_attr(2, &[10, 0, 0, 2]);
            })
            .nest(ct::TUPLE_PROTO, |p| {
                p.bytes_attr(ct::PROTO_NUM, &[proto])
                    .bytes_attr(2, &5000u16.to_be_bytes())
                    .bytes_attr(ct::PROTO_DST_PORT, &dport.to_be_bytes());
            });
        });
        w.nest(2, |_| {});
        if let Some(z) = zone {
            w.bytes_attr(ct::ZONE, &z.to_be_bytes());
        }
        w.u32_be(3, 8);
        w.into_bytes()
    }

    #[test]
    fn picks_udp_entries_of_the_ports() {
        let udp = entry(IPPROTO_UDP, 5353, None);
        let request = victim(attrs(&udp), &[53, 5353]).unwrap();
        // The original tuple, unchanged, is the whole request.
        assert_eq!(request, attrs(&udp).get(ct::TUPLE_ORIG).unwrap().raw);
        assert!(victim(attrs(&entry(6, 5353, None)), &[5353]).is_none(), "TCP is left alone");
        assert!(victim(attrs(&entry(IPPROTO_UDP, 53, None)), &[5353]).is_none());
        let zoned = entry(IPPROTO_UDP, 53, Some(7));
        let request = victim(attrs(&zoned), &[53]).unwrap();
        assert_eq!(attrs(&request).map(|a| a.kind).collect::<Vec<_>>(), [ct::TUPLE_ORIG, ct::ZONE]);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn request_golden_bytes() {
        let get = nfnl::kind(nfnl::SUBSYS_CTNETLINK, ct::MSG_GET);
        let m = wire::message(get, NLM_F_REQUEST | NLM_F_DUMP, 7, &request_body(true, &[]));
        assert_eq!(m, [20, 0, 0, 0, 1, 1, 1, 3, 7, 0, 0, 0, 0, 0, 0, 0, 10, 0, 0, 0]);
        // A delete by a zoned tuple: the dumped attributes follow nfgenmsg unchanged.
        let zoned = entry(IPPROTO_UDP, 53, Some(7));
        let request = victim(attrs(&zoned), &[53]).unwrap();
        let delete = nfnl::kind(nfnl::SUBSYS_CTNETLINK, ct::MSG_DELETE);
        let m = wire::message(delete, NLM_F_REQUEST | NLM_F_ACK, 8, &request_body(false, &request));
        let tuple_len = attrs(&zoned).get(ct::TUPLE_ORIG).unwrap().raw.len();
        assert_eq!(&m[..16], &[(20 + tuple_len + 8) as u8, 0, 0, 0, 2, 1, 5, 0, 8, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&m[16..20], &[2, 0, 0, 0]);
        assert_eq!(&m[20..20 + tuple_len], &zoned[..tuple_len]);
        assert_eq!(&m[20 + tuple_len..], &[6, 0, 18, 0, 0, 7, 0, 0]);
    }
}
