//! `RTM_GETNETCONF`: a namespace's `all` forwarding switch (`net.ipv4.ip_forward`,
//! `net.ipv6.conf.all.forwarding`) read over rtnetlink. netlink-packet-route has no netconf
//! messages, so the request and reply are built and parsed here.
//!
//! Why not read `/proc/sys`: every lookup of `/proc/sys/net/<x>` walks one dentry hash chain
//! that holds an entry for each network namespace on the machine (0.14 ms per open with a
//! thousand containers, over a millisecond when the entry is not near the head of the chain),
//! and the bridge plugin asks on every ADD.

use netlink_sys::protocols::NETLINK_ROUTE;
use std::io;

const RTM_NEWNETCONF: u16 = 80;
const RTM_GETNETCONF: u16 = 82;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NETCONFA_IFINDEX: u16 = 1;
const NETCONFA_FORWARDING: u16 = 2;
/// `NETCONFA_IFINDEX_ALL`: the `all` pseudo-device.
const IFINDEX_ALL: i32 = -1;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

fn request(ipv6: bool) -> Vec<u8> {
    let mut buf = Vec::with_capacity(28);
    buf.extend_from_slice(&28u32.to_ne_bytes());
    buf.extend_from_slice(&RTM_GETNETCONF.to_ne_bytes());
    buf.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    buf.extend_from_slice(&1u32.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    // struct netconfmsg { u8 ncm_family; }, padded to 4.
    buf.extend_from_slice(&[if ipv6 { AF_INET6 } else { AF_INET }, 0, 0, 0]);
    buf.extend_from_slice(&8u16.to_ne_bytes());
    buf.extend_from_slice(&NETCONFA_IFINDEX.to_ne_bytes());
    buf.extend_from_slice(&IFINDEX_ALL.to_ne_bytes());
    buf
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes([*b.get(at)?, *b.get(at + 1)?, *b.get(at + 2)?, *b.get(at + 3)?]))
}

/// The forwarding value in an `RTM_NEWNETCONF` reply; an error reply becomes its errno.
fn parse_reply(b: &[u8]) -> io::Result<Option<bool>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "short netconf reply");
    let len = u32_at(b, 0).ok_or_else(bad)? as usize;
    let kind = u16_at(b, 4).ok_or_else(bad)?;
    let msg = b.get(..len).ok_or_else(bad)?;
    if kind == NLMSG_ERROR {
        let errno = u32_at(msg, 16).ok_or_else(bad)? as i32;
        return Err(io::Error::from_raw_os_error(-errno));
    }
    if kind != RTM_NEWNETCONF {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("unexpected netconf reply type {kind}")));
    }
    let mut at = 20;
    while at + 4 <= msg.len() {
        let alen = usize::from(u16_at(msg, at).ok_or_else(bad)?);
        let akind = u16_at(msg, at + 2).ok_or_else(bad)? & 0x3fff;
        if alen < 4 {
            break;
        }
        if akind == NETCONFA_FORWARDING {
            return Ok(Some(u32_at(msg, at + 4).ok_or_else(bad)? != 0));
        }
        at += (alen + 3) & !3;
    }
    Ok(None)
}

/// Whether forwarding is on for the whole namespace of the calling thread (`ip_forward` for
/// IPv4, `conf/all/forwarding` for IPv6); `None` when the kernel does not say.
pub fn all_forwarding(ipv6: bool) -> io::Result<Option<bool>> {
    let socket = super::open(NETLINK_ROUTE)?;
    socket.send(&request(ipv6), 0)?;
    let data = super::receive(&socket)?;
    parse_reply(&data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout() {
        let r = request(false);
        assert_eq!(r.len(), 28);
        assert_eq!(u16_at(&r, 4), Some(RTM_GETNETCONF));
        assert_eq!(r[16], AF_INET);
        assert_eq!(&r[20..24], &[8, 0, 1, 0]);
        assert_eq!(&r[24..28], &(-1i32).to_ne_bytes());
        assert_eq!(request(true)[16], AF_INET6);
    }

    #[test]
    fn replies() {
        let mut reply = Vec::new();
        reply.extend_from_slice(&36u32.to_ne_bytes());
        reply.extend_from_slice(&RTM_NEWNETCONF.to_ne_bytes());
        reply.extend_from_slice(&[0; 10]);
        reply.extend_from_slice(&[AF_INET, 0, 0, 0]);
        reply.extend_from_slice(&[8, 0, 1, 0]);
        reply.extend_from_slice(&(-1i32).to_ne_bytes());
        reply.extend_from_slice(&[8, 0, 2, 0]);
        reply.extend_from_slice(&1u32.to_ne_bytes());
        assert_eq!(parse_reply(&reply).unwrap(), Some(true));
        reply[32] = 0;
        assert_eq!(parse_reply(&reply).unwrap(), Some(false));
        let mut err = Vec::new();
        err.extend_from_slice(&36u32.to_ne_bytes());
        err.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err.extend_from_slice(&[0; 10]);
        err.extend_from_slice(&(-95i32).to_ne_bytes());
        err.extend_from_slice(&[0; 16]);
        assert_eq!(parse_reply(&err).unwrap_err().raw_os_error(), Some(95));
    }
}
