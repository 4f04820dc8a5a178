//! What plugins ask of the rule layer, as data: masquerade for an attachment ([`MasqTarget`], bridge
//! and ptp `ipMasq`), port mappings for a container ([`Portmap`], portmap), and forward-accept rules
//! for an attachment's addresses ([`ForwardAccept`], the `firewall` plugin; defined in
//! [`super::forward`] beside its backend trait). Backends turn these into rule sets; nothing here
//! knows a rule's syntax.

use super::error::FirewallError;
use crate::netlink::NftFamily;
use ipnetwork::IpNetwork;
use std::net::IpAddr;

pub use super::forward::{ForwardAccept, ForwardBackend, IngressPolicy};

/// Which netfilter front end installs the masquerade rules (`ipMasqBackend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `iptables`/`ip6tables` nat-table chains, as every reference version writes them.
    Iptables,
    /// The `inet cni_plugins_masquerade` table of reference v1.6.1+.
    Nftables,
}

impl Backend {
    /// Parses `ipMasqBackend`: `"iptables"` or `"nftables"`.
    pub fn parse(s: &str) -> Result<Backend, FirewallError> {
        match s {
            "iptables" => Ok(Backend::Iptables),
            "nftables" => Ok(Backend::Nftables),
            other => Err(FirewallError::UnknownBackend(other.to_string())),
        }
    }

    /// The name configurations and messages use: `iptables` or `nftables`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Iptables => "iptables",
            Backend::Nftables => "nftables",
        }
    }
}

/// The IP family a rule applies to; it picks `iptables` or `ip6tables` and the nft `ip`/`ip6` keyword.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// Both families, IPv4 first.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The family of an address.
    pub fn of(ip: &std::net::IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }

    /// The nf_tables family of the family's tables (`ip`, `ip6`), for netlink requests.
    pub fn nft_family(self) -> NftFamily {
        match self {
            Family::V4 => NftFamily::Ip,
            Family::V6 => NftFamily::Ip6,
        }
    }

    /// The nft keyword of that family (`ip`, `ip6`), as nft text and messages write it.
    pub fn nft_keyword(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
}

/// One attachment whose traffic is masqueraded.
#[derive(Debug, Clone, Copy)]
pub struct MasqTarget<'a> {
    /// Network name (config `name`).
    pub network: &'a str,
    /// `CNI_CONTAINERID`.
    pub container_id: &'a str,
    /// `CNI_IFNAME` (only the nftables backend uses it, as in the reference).
    pub ifname: &'a str,
    /// The container's addresses with their prefix, e.g. `10.1.0.5/24`.
    pub addresses: &'a [IpNetwork],
}

/// A port-mapping protocol; the order (by name) is the order of the reference's entry rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// SCTP.
    Sctp,
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// Parses `tcp`, `udp` or `sctp` in any letter case.
    pub fn parse(s: &str) -> Option<Protocol> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Some(Protocol::Tcp),
            "udp" => Some(Protocol::Udp),
            "sctp" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// The lowercase name iptables and nft use.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// One validated port mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortForward {
    /// Port on the host.
    pub host_port: u16,
    /// Port in the container.
    pub container_port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// Host address to match; `None` (or an unspecified address) means every local address.
    pub host_ip: Option<IpAddr>,
}

impl PortForward {
    /// Whether the mapping applies to a container address of `family`: a host IP of the other
    /// family is skipped, as in the reference.
    pub fn applies_to(&self, family: Family) -> bool {
        self.host_ip.is_none_or(|ip| Family::of(&ip) == family)
    }

    /// The destination address to match, if the mapping names a specific one.
    pub fn destination(&self) -> Option<IpAddr> {
        self.host_ip.filter(|ip| !ip.is_unspecified())
    }
}

/// One container's port mappings and the options that shape their rules (shared by both backends).
#[derive(Debug, Clone, Copy)]
pub struct Portmap<'a> {
    /// Network name (config `name`).
    pub network: &'a str,
    /// `CNI_CONTAINERID`.
    pub container_id: &'a str,
    /// The mappings, in the runtime's order.
    pub forwards: &'a [PortForward],
    /// Masquerade hairpin and localhost connections (`snat`, default true).
    pub snat: bool,
    /// Masquerade every source, not just the container's subnet and localhost (`masqAll`).
    pub masq_all: bool,
    /// The mark bit of `CNI-HOSTPORT-SETMARK` (`markMasqBit`, default 13).
    pub mark_bit: u8,
    /// Jump here instead of `CNI-HOSTPORT-SETMARK`, whose chains are then not created.
    pub external_set_mark_chain: Option<&'a str>,
    /// Extra matches for IPv4 entry rules (`conditionsV4`).
    pub conditions_v4: &'a [String],
    /// Extra matches for IPv6 entry rules (`conditionsV6`).
    pub conditions_v6: &'a [String],
}

#[cfg(test)]
impl<'a> Portmap<'a> {
    /// The mappings of a container with every option at the reference's default: `snat` on,
    /// `masqAll` off, mark bit 13, no external mark chain, no conditions (for the backends' tests).
    pub(crate) fn with_defaults(network: &'a str, container_id: &'a str, forwards: &'a [PortForward]) -> Portmap<'a> {
        Portmap {
            network,
            container_id,
            forwards,
            snat: true,
            masq_all: false,
            mark_bit: 13,
            external_set_mark_chain: None,
            conditions_v4: &[],
            conditions_v6: &[],
        }
    }
}

impl Portmap<'_> {
    /// The conditions of one family.
    pub fn conditions(&self, family: Family) -> &[String] {
        match family {
            Family::V4 => self.conditions_v4,
            Family::V6 => self.conditions_v6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_backends() {
        assert_eq!(Backend::parse("iptables").unwrap(), Backend::Iptables);
        assert_eq!(Backend::parse("nftables").unwrap(), Backend::Nftables);
        assert_eq!(Backend::parse("ebtables").unwrap_err().to_string(), r#"unknown ipmasq backend "ebtables""#);
    }
}
