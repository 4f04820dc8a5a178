//! Stale UDP conntrack entries, deleted over ctnetlink (`NETLINK_NETFILTER`) with no helper process.
//!
//! A UDP "connection" to a host port that was tracked before the port was published keeps its
//! conntrack entry, and with it the old (non-)translation, for as long as packets keep flowing: the
//! nat table is only consulted for new connections (plugins#123, kubernetes#58336). Deleting the
//! entries whose original destination port is a newly mapped UDP host port makes the next packet
//! a new connection that meets the DNAT rule. Like the reference, this dumps the family's table
//! and deletes the matching entries one by one (by their original tuple and zone).
//!
//! The messages are a netlink header, a 4-byte `nfgenmsg` and attributes; ctnetlink is not covered
//! by the rtnetlink crates, so the few fields needed are read and written by hand.

use crate::firewall::Family;
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};
use std::io;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
/// Attribute type bits that are flags (`NLA_F_NESTED`, `NLA_F_NET_BYTEORDER`), not the type.
const NLA_TYPE_MASK: u16 = 0x3fff;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_DST_PORT: u16 = 3;
const IPPROTO_UDP: u8 = 17;

/// `AF_INET` or `AF_INET6`, the `nfgenmsg` family byte.
fn address_family(family: Family) -> u8 {
    match family {
        Family::V4 => nix::libc::AF_INET as u8,
        Family::V6 => nix::libc::AF_INET6 as u8,
    }
}

/// One ctnetlink request: header, `nfgenmsg` (version 0, resource 0) and raw attributes.
fn message(kind: u16, flags: u16, seq: u32, family: Family, attributes: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + NFGENMSG_LEN + attributes.len();
    let mut buf = Vec::with_capacity(len);
    buf.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_ne_bytes());
    buf.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | kind).to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&[address_family(family), 0, 0, 0]);
    buf.extend_from_slice(attributes);
    buf
}

/// One attribute: its type (flags cleared), payload and the whole attribute as received.
struct Attr<'a> {
    kind: u16,
    payload: &'a [u8],
    raw: &'a [u8],
}

/// The attributes in `buf`, stopping at the first malformed one.
fn attributes(buf: &[u8]) -> Vec<Attr<'_>> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 4 <= buf.len() {
        let len = usize::from(u16::from_ne_bytes([buf[off], buf[off + 1]]));
        let kind = u16::from_ne_bytes([buf[off + 2], buf[off + 3]]) & NLA_TYPE_MASK;
        if len < 4 || off + len > buf.len() {
            break;
        }
        out.push(Attr { kind, payload: &buf[off + 4..off + len], raw: &buf[off..off + len] });
        off += (len + 3) & !3;
    }
    out
}

fn find<'a>(attrs: &'a [Attr<'a>], kind: u16) -> Option<&'a Attr<'a>> {
    attrs.iter().find(|a| a.kind == kind)
}

/// The attributes to delete an entry by (its original tuple, and its zone if any) when it is a
/// UDP entry for one of `ports` (sorted).
fn victim(attrs: &[Attr], ports: &[u16]) -> Option<Vec<u8>> {
    let tuple = find(attrs, CTA_TUPLE_ORIG)?;
    let inner = attributes(tuple.payload);
    let proto = attributes(find(&inner, CTA_TUPLE_PROTO)?.payload);
    let number = *find(&proto, CTA_PROTO_NUM)?.payload.first()?;
    let port = find(&proto, CTA_PROTO_DST_PORT)?.payload;
    let port = u16::from_be_bytes([*port.first()?, *port.get(1)?]);
    if number != IPPROTO_UDP || ports.binary_search(&port).is_err() {
        return None;
    }
    let mut request = tuple.raw.to_vec();
    request.resize((request.len() + 3) & !3, 0);
    if let Some(zone) = find(attrs, CTA_ZONE) {
        request.extend_from_slice(zone.raw);
        request.resize((request.len() + 3) & !3, 0);
    }
    Some(request)
}

/// A ctnetlink socket in the caller's network namespace.
struct Conntrack {
    socket: Socket,
    seq: u32,
}

/// What one reply datagram said about the request it answers.
enum Reply {
    /// More to read.
    More,
    /// The request is complete.
    Done,
}

impl Conntrack {
    fn open() -> io::Result<Conntrack> {
        Ok(Conntrack { socket: crate::netlink::open(NETLINK_NETFILTER)?, seq: 0 })
    }

    fn send(&mut self, kind: u16, flags: u16, family: Family, attributes: &[u8]) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        self.socket.send(&message(kind, flags, self.seq, family, attributes), 0)?;
        Ok(self.seq)
    }

    /// Reads the replies to `seq`, handing each entry's attributes to `entry`, until `Done` or the ACK.
    fn receive(&mut self, seq: u32, mut entry: impl FnMut(&[Attr])) -> io::Result<()> {
        loop {
            let data = crate::netlink::receive(&self.socket)?;
            if let Reply::Done = Self::walk(&data, seq, &mut entry)? {
                return Ok(());
            }
        }
    }

    fn walk(data: &[u8], seq: u32, entry: &mut impl FnMut(&[Attr])) -> io::Result<Reply> {
        let mut off = 0;
        while off + NLMSG_HDRLEN <= data.len() {
            let word = |at: usize| u32::from_ne_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
            let len = word(off) as usize;
            let kind = u16::from_ne_bytes([data[off + 4], data[off + 5]]);
            if len < NLMSG_HDRLEN || off + len > data.len() {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "truncated ctnetlink message"));
            }
            let body = &data[off + NLMSG_HDRLEN..off + len];
            let ours = word(off + 8) == seq;
            off += (len + 3) & !3;
            if !ours {
                continue;
            }
            match kind {
                NLMSG_DONE => return Ok(Reply::Done),
                NLMSG_ERROR => {
                    let code = body.get(..4).map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]])).unwrap_or(0);
                    return if code == 0 { Ok(Reply::Done) } else { Err(io::Error::from_raw_os_error(-code)) };
                }
                _ if body.len() >= NFGENMSG_LEN => entry(&attributes(&body[NFGENMSG_LEN..])),
                _ => {}
            }
        }
        Ok(Reply::More)
    }
}

/// `conntrack -D -p udp --orig-port-dst <port>` for every port, in one family: deletes the UDP
/// entries whose original destination port is in `ports`; returns how many were deleted. Entries
/// that vanish meanwhile are not an error.
pub fn delete_udp_entries(family: Family, ports: &[u16]) -> io::Result<usize> {
    if ports.is_empty() {
        return Ok(0);
    }
    let mut ct = Conntrack::open()?;
    let seq = ct.send(IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, family, &[])?;
    let mut victims = Vec::new();
    ct.receive(seq, |attrs| victims.extend(victim(attrs, ports)))?;
    let mut deleted = 0;
    for request in victims {
        let seq = ct.send(IPCTNL_MSG_CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, family, &request)?;
        match ct.receive(seq, |_| {}) {
            Ok(()) => deleted += 1,
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&u16::try_from(payload.len() + 4).unwrap().to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(payload);
        out.resize((out.len() + 3) & !3, 0);
        out
    }

    /// The attributes of a dumped entry: original tuple (as the kernel nests it), zone, status.
    fn entry(proto: u8, dport: u16, zone: Option<u16>) -> Vec<u8> {
        let ip = attr(0x8000 | 1, &[attr(1, &[10, 0, 0, 1]), attr(2, &[10, 0, 0, 2])].concat());
        let l4 = attr(
            0x8000 | CTA_TUPLE_PROTO,
            &[
                attr(CTA_PROTO_NUM, &[proto]),
                attr(2, &5000u16.to_be_bytes()),
                attr(CTA_PROTO_DST_PORT, &dport.to_be_bytes()),
            ]
            .concat(),
        );
        let mut out = attr(0x8000 | CTA_TUPLE_ORIG, &[ip, l4].concat());
        out.extend(attr(0x8000 | 2, &[]));
        if let Some(z) = zone {
            out.extend(attr(CTA_ZONE, &z.to_be_bytes()));
        }
        out.extend(attr(3, &8u32.to_be_bytes()));
        out
    }

    #[test]
    fn picks_udp_entries_of_the_ports() {
        let udp = entry(IPPROTO_UDP, 5353, None);
        let request = victim(&attributes(&udp), &[53, 5353]).unwrap();
        // The original tuple, unchanged, is the whole request.
        assert_eq!(request, attributes(&udp)[0].raw);
        assert!(victim(&attributes(&entry(6, 5353, None)), &[5353]).is_none(), "TCP is left alone");
        assert!(victim(&attributes(&entry(IPPROTO_UDP, 53, None)), &[5353]).is_none());
        let zoned = entry(IPPROTO_UDP, 53, Some(7));
        let request = victim(&attributes(&zoned), &[53]).unwrap();
        assert_eq!(attributes(&request).iter().map(|a| a.kind).collect::<Vec<_>>(), [CTA_TUPLE_ORIG, CTA_ZONE]);
    }

    #[test]
    fn builds_requests() {
        let m = message(IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, 7, Family::V6, &[]);
        assert_eq!(m.len(), 20);
        assert_eq!(u32::from_ne_bytes([m[0], m[1], m[2], m[3]]), 20);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), 0x101);
        assert_eq!(u16::from_ne_bytes([m[6], m[7]]), 0x301);
        assert_eq!(&m[16..], &[10, 0, 0, 0]);
    }

    #[test]
    fn malformed_attributes_stop_the_walk() {
        assert!(attributes(&[8, 0, 1, 0, 1, 2]).is_empty());
        assert_eq!(attributes(&[]).len(), 0);
    }
}
