//! Address ranges and range sets: parsing, validation and the allocation order.
//!
//! Addresses are handled as `u128` inside a family so that IPv4 and IPv6 share one piece of
//! arithmetic; a [`Range`] only ever holds addresses of its subnet's family.

use cni_types::net::{parse_cidr, parse_ip};
use cni_types::IpRange;
use ipnetwork::IpNetwork;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address in its canonical form: IPv4-mapped IPv6 (`::ffff:a.b.c.d`) becomes IPv4, as the
/// reference canonicalises every address to its 4-byte form.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The address as an integer within its family.
fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The integer `v` as an address of the family of `like`; callers keep `v` inside the family.
fn from_u128(like: IpAddr, v: u128) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(v as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

/// One validated range: every address field is set and of the subnet's family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// The subnet, host bits clear.
    pub subnet: IpNetwork,
    /// First allocatable address (inclusive).
    pub start: IpAddr,
    /// Last allocatable address (inclusive).
    pub end: IpAddr,
    /// The gateway: returned with every address of this range, never allocated from it.
    pub gateway: IpAddr,
}

/// Parses an optional address field of a range; `""` means "use the default".
fn optional_ip(field: &str, value: &str) -> Result<Option<IpAddr>, String> {
    if value.is_empty() {
        return Ok(None);
    }
    parse_ip(value).map(|ip| Some(canonical(ip))).map_err(|_| format!("invalid IP address in {field}: {value:?}"))
}

impl Range {
    /// Validates a configured range and fills in the defaults (gateway and start: network + 1;
    /// end: the IPv4 broadcast − 1, or the last IPv6 address), with the reference's messages.
    pub fn parse(raw: &IpRange) -> Result<Range, String> {
        if raw.subnet.is_empty() {
            return Err("range has no subnet".into());
        }
        let subnet = parse_cidr(&raw.subnet)?;
        if let IpAddr::V6(v6) = subnet.ip() {
            if v6.to_ipv4_mapped().is_some() {
                return Err(format!("Network {subnet} is an IPv4-mapped IPv6 subnet; write it in IPv4 form"));
            }
        }
        let bits = if subnet.is_ipv4() { 32 } else { 128 };
        // A /31, /32, /127 or /128 leaves nothing once the network address and gateway are out.
        if subnet.prefix() > bits - 2 {
            return Err(format!("Network {subnet} too small to allocate from"));
        }
        if subnet.ip() != subnet.network() {
            return Err(format!(
                "Network has host bits set. For a subnet mask of length {} the network address is {} (subnet {subnet})",
                subnet.prefix(),
                subnet.network()
            ));
        }
        let network = to_u128(subnet.network());
        let first = from_u128(subnet.ip(), network + 1);
        let last = {
            let all_ones = to_u128(subnet.broadcast());
            // The reference never hands out the IPv4 broadcast; IPv6 has none.
            from_u128(subnet.ip(), if subnet.is_ipv4() { all_ones - 1 } else { all_ones })
        };

        let in_subnet = |field: &str, ip: IpAddr| -> Result<IpAddr, String> {
            if subnet.contains(ip) {
                Ok(ip)
            } else {
                Err(format!("{field} {ip} not in network {subnet}"))
            }
        };
        // The reference stopped checking the gateway at some point; a gateway outside the
        // subnet makes the bridge plugin configure an address nobody can reach, so we refuse it.
        let gateway = match optional_ip("gateway", &raw.gateway)? {
            Some(gw) => in_subnet("gateway", gw)?,
            None => first,
        };
        let start = match optional_ip("rangeStart", &raw.range_start)? {
            Some(ip) => in_subnet("RangeStart", ip)?,
            None => first,
        };
        let end = match optional_ip("rangeEnd", &raw.range_end)? {
            Some(ip) => in_subnet("RangeEnd", ip)?,
            None => last,
        };
        if to_u128(start) > to_u128(end) {
            return Err(format!("RangeStart {start} is after RangeEnd {end} in network {subnet}"));
        }
        Ok(Range { subnet, start, end, gateway })
    }

    /// Whether `ip` lies between `start` and `end` of this range (same family).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_ipv4() == self.start.is_ipv4()
            && self.subnet.contains(ip)
            && to_u128(self.start) <= to_u128(ip)
            && to_u128(ip) <= to_u128(self.end)
    }

    /// Whether the two ranges share an address.
    pub fn overlaps(&self, other: &Range) -> bool {
        self.start.is_ipv4() == other.start.is_ipv4()
            && to_u128(self.start) <= to_u128(other.end)
            && to_u128(other.start) <= to_u128(self.end)
    }

    /// Whether `ip` (inside this range) may be handed out: never the gateway, the network
    /// address or the IPv4 broadcast, even when `rangeStart`/`rangeEnd` include them.
    pub fn is_allocatable(&self, ip: IpAddr) -> bool {
        ip != self.gateway && ip != self.subnet.network() && !(self.subnet.is_ipv4() && ip == self.subnet.broadcast())
    }

    /// `ip` with this range's prefix length, as results carry it.
    pub fn address(&self, ip: IpAddr) -> Result<IpNetwork, String> {
        IpNetwork::new(ip, self.subnet.prefix()).map_err(|e| format!("{ip}: {e}"))
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// A pool of ranges of one family; one address is allocated from each set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet(pub Vec<Range>);

impl RangeSet {
    /// Validates a configured set: not empty, one family, no two ranges overlapping.
    pub fn parse(raw: &[IpRange]) -> Result<RangeSet, String> {
        if raw.is_empty() {
            return Err("empty range set".into());
        }
        let ranges = raw.iter().map(Range::parse).collect::<Result<Vec<_>, _>>()?;
        let v4 = ranges[0].start.is_ipv4();
        if let Some(other) = ranges.iter().find(|r| r.start.is_ipv4() != v4) {
            return Err(format!("mixed address families: {} and {}", ranges[0].subnet, other.subnet));
        }
        for (i, a) in ranges.iter().enumerate() {
            if let Some(b) = ranges[i + 1..].iter().find(|b| a.overlaps(b)) {
                return Err(format!("subnets {a} and {b} overlap"));
            }
        }
        Ok(RangeSet(ranges))
    }

    /// Whether the set's addresses are IPv4.
    pub fn is_ipv4(&self) -> bool {
        self.0.first().is_some_and(|r| r.start.is_ipv4())
    }

    /// The range holding `ip`, if any.
    pub fn range_for(&self, ip: IpAddr) -> Option<&Range> {
        self.0.iter().find(|r| r.contains(ip))
    }

    /// Whether some range of the set holds `ip`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.range_for(ip).is_some()
    }

    /// Whether any range of this set shares an address with any range of `other`.
    pub fn overlaps(&self, other: &RangeSet) -> bool {
        self.0.iter().any(|a| other.0.iter().any(|b| a.overlaps(b)))
    }

    /// The allocation order: every allocatable address once, starting after `last` when `last`
    /// is in the set (round robin, so a crash-looping container does not get the same address
    /// back at once), else at the first range's start; ranges follow each other and wrap.
    pub fn candidates(&self, last: Option<IpAddr>) -> Candidates<'_> {
        let start = last
            .map(canonical)
            .and_then(|ip| self.0.iter().position(|r| r.contains(ip)).map(|i| self.step((i, to_u128(ip)))))
            .or_else(|| self.0.first().map(|r| (0, to_u128(r.start))));
        Candidates { set: self, start, pos: start, started: false }
    }

    /// The position after `pos`: the next address, or the next range's start after an end.
    fn step(&self, (i, v): (usize, u128)) -> (usize, u128) {
        match self.0.get(i) {
            Some(r) if v < to_u128(r.end) => (i, v + 1),
            _ => {
                let next = (i + 1) % self.0.len().max(1);
                (next, self.0.get(next).map_or(0, |r| to_u128(r.start)))
            }
        }
    }
}

impl fmt::Display for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// The addresses of a [`RangeSet`] in allocation order, each with the range it belongs to.
#[derive(Debug, Clone)]
pub struct Candidates<'a> {
    set: &'a RangeSet,
    start: Option<(usize, u128)>,
    pos: Option<(usize, u128)>,
    started: bool,
}

impl<'a> Iterator for Candidates<'a> {
    type Item = (IpAddr, &'a Range);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let pos = self.pos?;
            if self.started && Some(pos) == self.start {
                // Back where we began: the cycle is complete.
                self.pos = None;
                return None;
            }
            self.started = true;
            self.pos = Some(self.set.step(pos));
            let range = self.set.0.get(pos.0)?;
            let ip = from_u128(range.start, pos.1);
            if range.is_allocatable(ip) {
                return Some((ip, range));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(subnet: &str, start: &str, end: &str, gw: &str) -> IpRange {
        IpRange { subnet: subnet.into(), range_start: start.into(), range_end: end.into(), gateway: gw.into() }
    }

    fn set(ranges: &[IpRange]) -> RangeSet {
        RangeSet::parse(ranges).unwrap()
    }

    fn ips(c: Candidates<'_>) -> Vec<String> {
        c.map(|(ip, _)| ip.to_string()).collect()
    }

    #[test]
    fn defaults_ipv4() {
        let r = Range::parse(&raw("10.1.2.0/24", "", "", "")).unwrap();
        assert_eq!(r.start.to_string(), "10.1.2.1");
        assert_eq!(r.end.to_string(), "10.1.2.254");
        assert_eq!(r.gateway.to_string(), "10.1.2.1");
        assert_eq!(r.to_string(), "10.1.2.1-10.1.2.254");
    }

    #[test]
    fn defaults_ipv6_end_is_the_last_address() {
        let r = Range::parse(&raw("fd00:1::/120", "", "", "")).unwrap();
        assert_eq!(r.start.to_string(), "fd00:1::1");
        assert_eq!(r.end.to_string(), "fd00:1::ff");
        assert_eq!(r.gateway.to_string(), "fd00:1::1");
    }

    #[test]
    fn explicit_fields_are_kept_and_canonicalised() {
        let r = Range::parse(&raw("10.0.0.0/24", "::ffff:10.0.0.10", "10.0.0.20", "10.0.0.254")).unwrap();
        assert_eq!(r.start, "10.0.0.10".parse::<IpAddr>().unwrap());
        assert_eq!(r.end.to_string(), "10.0.0.20");
        assert_eq!(r.gateway.to_string(), "10.0.0.254");
    }

    #[test]
    fn validation_messages_name_the_value() {
        let err = |r: IpRange| Range::parse(&r).unwrap_err();
        assert_eq!(
            err(raw("10.253.1.5/24", "", "", "")),
            "Network has host bits set. For a subnet mask of length 24 the network address is 10.253.1.0 (subnet 10.253.1.5/24)"
        );
        for small in ["10.253.0.0/31", "10.253.0.1/32", "fd00::/127", "fd00::/128"] {
            assert_eq!(err(raw(small, "", "", "")), format!("Network {small} too small to allocate from"));
        }
        assert!(Range::parse(&raw("10.0.0.0/30", "", "", "")).is_ok());
        assert!(Range::parse(&raw("fd00::/126", "", "", "")).is_ok());
    }

    #[test]
    fn bounds_outside_the_subnet_are_rejected() {
        let err = |r: IpRange| Range::parse(&r).unwrap_err();
        assert_eq!(err(raw("10.9.0.0/24", "10.8.0.1", "", "")), "RangeStart 10.8.0.1 not in network 10.9.0.0/24");
        assert_eq!(err(raw("10.9.0.0/24", "", "10.8.0.1", "")), "RangeEnd 10.8.0.1 not in network 10.9.0.0/24");
        assert_eq!(err(raw("10.9.0.0/29", "", "", "10.8.0.1")), "gateway 10.8.0.1 not in network 10.9.0.0/29");
        assert_eq!(err(raw("10.9.0.0/24", "fd00::1", "", "")), "RangeStart fd00::1 not in network 10.9.0.0/24");
        assert_eq!(
            err(raw("10.9.0.0/24", "10.9.0.50", "10.9.0.40", "")),
            "RangeStart 10.9.0.50 is after RangeEnd 10.9.0.40 in network 10.9.0.0/24"
        );
        assert_eq!(err(raw("10.9.0.0/24", "x", "", "")), "invalid IP address in rangeStart: \"x\"");
        assert_eq!(err(raw("10.9.0.0/33", "", "", "")), "invalid CIDR address: 10.9.0.0/33");
        assert_eq!(err(raw("", "10.0.0.1", "", "")), "range has no subnet");
    }

    #[test]
    fn set_validation() {
        assert_eq!(RangeSet::parse(&[]).unwrap_err(), "empty range set");
        assert_eq!(
            RangeSet::parse(&[raw("10.9.0.0/24", "", "", ""), raw("fd00::/64", "", "", "")]).unwrap_err(),
            "mixed address families: 10.9.0.0/24 and fd00::/64"
        );
        assert_eq!(
            RangeSet::parse(&[raw("10.9.0.0/24", "", "", ""), raw("10.9.0.0/25", "", "", "")]).unwrap_err(),
            "subnets 10.9.0.1-10.9.0.254 and 10.9.0.1-10.9.0.126 overlap"
        );
        // Two ranges of one subnet that do not share addresses are fine.
        let s =
            set(&[raw("10.9.0.0/24", "10.9.0.10", "10.9.0.19", ""), raw("10.9.0.0/24", "10.9.0.20", "10.9.0.29", "")]);
        assert!(s.contains("10.9.0.25".parse().unwrap()));
        assert!(!s.contains("10.9.0.5".parse().unwrap()));
        assert!(!s.contains("fd00::5".parse().unwrap()));
        let other = set(&[raw("10.9.0.0/16", "", "", "")]);
        assert!(s.overlaps(&other) && other.overlaps(&s));
        assert!(!s.overlaps(&set(&[raw("fd00::/64", "", "", "")])));
    }

    #[test]
    fn order_starts_at_range_start_and_skips_the_gateway() {
        let s = set(&[raw("10.252.0.0/29", "", "", "")]);
        assert_eq!(ips(s.candidates(None)), ["10.252.0.2", "10.252.0.3", "10.252.0.4", "10.252.0.5", "10.252.0.6"]);
        // A gateway at the top of the subnet frees .1.
        let s = set(&[raw("10.252.0.0/29", "", "", "10.252.0.6")]);
        assert_eq!(ips(s.candidates(None))[0], "10.252.0.1");
        assert_eq!(ips(s.candidates(None)).len(), 5);
    }

    #[test]
    fn order_is_round_robin_and_wraps() {
        let s = set(&[raw("10.252.0.0/29", "", "", "")]);
        assert_eq!(
            ips(s.candidates(Some("10.252.0.4".parse().unwrap()))),
            ["10.252.0.5", "10.252.0.6", "10.252.0.2", "10.252.0.3", "10.252.0.4"]
        );
        assert_eq!(ips(s.candidates(Some("10.252.0.6".parse().unwrap())))[0], "10.252.0.2");
        // A last address outside the set (ranges changed) restarts at the beginning.
        assert_eq!(ips(s.candidates(Some("10.99.0.4".parse().unwrap())))[0], "10.252.0.2");
    }

    #[test]
    fn order_crosses_ranges() {
        let s =
            set(&[raw("10.1.0.0/24", "10.1.0.10", "10.1.0.11", ""), raw("10.2.0.0/24", "10.2.0.20", "10.2.0.21", "")]);
        assert_eq!(ips(s.candidates(None)), ["10.1.0.10", "10.1.0.11", "10.2.0.20", "10.2.0.21"]);
        assert_eq!(
            ips(s.candidates(Some("10.2.0.21".parse().unwrap()))),
            ["10.1.0.10", "10.1.0.11", "10.2.0.20", "10.2.0.21"]
        );
        assert_eq!(
            ips(s.candidates(Some("10.1.0.11".parse().unwrap()))),
            ["10.2.0.20", "10.2.0.21", "10.1.0.10", "10.1.0.11"]
        );
        let (_, r) = s.candidates(None).nth(2).unwrap();
        assert_eq!(r.gateway.to_string(), "10.2.0.1");
    }

    #[test]
    fn never_network_or_broadcast_even_when_configured() {
        let s = set(&[raw("10.3.0.0/29", "10.3.0.0", "10.3.0.7", "10.3.0.1")]);
        assert_eq!(ips(s.candidates(None)), ["10.3.0.2", "10.3.0.3", "10.3.0.4", "10.3.0.5", "10.3.0.6"]);
    }

    #[test]
    fn ipv6_last_address_is_allocatable() {
        let s = set(&[raw("fd00::/126", "", "", "")]);
        assert_eq!(ips(s.candidates(None)), ["fd00::2", "fd00::3"]);
        let r = Range::parse(&raw("fd00::/126", "", "", "")).unwrap();
        assert_eq!(r.address("fd00::3".parse().unwrap()).unwrap().to_string(), "fd00::3/126");
    }

    #[test]
    fn smallest_ipv4_subnet() {
        let s = set(&[raw("10.253.0.4/30", "", "", "")]);
        assert_eq!(ips(s.candidates(None)), ["10.253.0.6"]);
    }

    #[test]
    fn huge_ipv6_sets_are_lazy() {
        let s = set(&[raw("fd00::/8", "", "", "")]);
        let first: Vec<String> = s.candidates(None).take(2).map(|(ip, _)| ip.to_string()).collect();
        assert_eq!(first, ["fd00::2", "fd00::3"]);
        // Wrapping at the very top of the IPv6 space does not overflow.
        let top = set(&[raw("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff0/124", "", "", "")]);
        let all = ips(top.candidates(Some("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap())));
        assert_eq!(all.first().map(String::as_str), Some("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff2"));
        assert_eq!(all.len(), 14);
    }

    #[test]
    fn canonical_form_matches_the_reference_file_names() {
        for (input, name) in [
            ("FD00:0254:0:0:0:0:0:2", "fd00:254::2"),
            ("2001:db8:0:1:0:0:0:1", "2001:db8:0:1::1"),
            ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),
            ("1:0:2:3:4:5:6:7", "1:0:2:3:4:5:6:7"),
            ("::ffff:10.1.2.3", "10.1.2.3"),
            ("::", "::"),
        ] {
            assert_eq!(canonical(input.parse().unwrap()).to_string(), name);
        }
    }
}
