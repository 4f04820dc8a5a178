//! Address text in the forms the reference accepts and prints (Go's `net.ParseCIDR`/`ParseIP`).

use ipnetwork::IpNetwork;
use std::net::IpAddr;

/// Parses `addr/prefix` strictly: the prefix is required, decimal, and within the family's width.
/// The address keeps its host bits (`10.1.0.5/24` stays `10.1.0.5/24`).
pub fn parse_cidr(s: &str) -> Result<IpNetwork, String> {
    let bad = || format!("invalid CIDR address: {s}");
    let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
    let ip: IpAddr = addr.parse().map_err(|_| bad())?;
    if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    IpNetwork::new(ip, prefix).map_err(|_| bad())
}

/// Parses an IP address as Go's `net.ParseIP` does (no zone, no brackets).
pub fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.parse().map_err(|_| format!("invalid IP address: {s}"))
}

/// The network address of `net` with the prefix (`10.1.0.5/24` → `10.1.0.0/24`).
pub fn network_of(net: &IpNetwork) -> IpNetwork {
    // The prefix came from a valid network, so re-building with it cannot fail.
    IpNetwork::new(net.network(), net.prefix()).unwrap_or(*net)
}

/// serde helpers for CIDR strings in results.
pub(crate) mod cidr {
    use super::*;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(n: &IpNetwork, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}/{}", n.ip(), n.prefix()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<IpNetwork, D::Error> {
        let s = String::deserialize(d)?;
        parse_cidr(&s).map_err(serde::de::Error::custom)
    }
}

/// serde helpers for optional IP strings; `""` means absent, as in Go.
pub(crate) mod opt_ip {
    use super::*;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ip: &Option<IpAddr>, s: S) -> Result<S::Ok, S::Error> {
        match ip {
            Some(ip) => s.collect_str(ip),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) if s.is_empty() => Ok(None),
            Some(s) => parse_ip(&s).map(Some).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing_is_strict() {
        assert_eq!(parse_cidr("10.1.0.5/24").unwrap().to_string(), "10.1.0.5/24");
        assert_eq!(parse_cidr("fd00::5/64").unwrap().prefix(), 64);
        for bad in
            ["10.1.0.5", "10.1.0.0/33", "10.1.0.0/255.255.255.0", "x/24", "fd00::/129", "10.0.0.0/", "10.0.0.0/+8"]
        {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
        assert_eq!(network_of(&parse_cidr("10.1.0.5/24").unwrap()).to_string(), "10.1.0.0/24");
    }
}
