//! Stale UDP conntrack entries, deleted when a UDP host port is published.
//!
//! A UDP "connection" to a host port that was tracked before the port was published keeps its
//! conntrack entry, and with it the old (non-)translation, for as long as packets keep flowing: the
//! nat table is only consulted for new connections (plugins#123, kubernetes#58336). Deleting the
//! entries whose original destination port is a newly mapped UDP host port makes the next packet
//! a new connection that meets the DNAT rule. The ctnetlink codec is in [`crate::netlink`].

use crate::firewall::Family;
use std::io;

/// `conntrack -D -p udp --orig-port-dst <port>` for every port, in one family: deletes the UDP
/// entries whose original destination port is in `ports`; returns how many were deleted. Entries
/// that vanish meanwhile are not an error.
pub fn delete_udp_entries(family: Family, ports: &[u16]) -> io::Result<usize> {
    crate::netlink::delete_udp_conntrack(family == Family::V6, ports)
}
