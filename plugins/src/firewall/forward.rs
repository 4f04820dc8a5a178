//! The data model of what the `firewall` plugin asks of the rule layer: accept forwarded traffic to
//! and from one attachment's addresses, behind an administrator's chain, and keep its bridge apart
//! from others (`ingressPolicy`). Each backend (`iptables`, `nftables`, `firewalld`) turns a
//! [`ForwardAccept`] into its own rule set through [`ForwardBackend`]; the plugin never sees rule text.

use super::error::FirewallError;
use std::net::IpAddr;

/// The reference's default `iptablesAdminChainName`.
pub const DEFAULT_ADMIN_CHAIN: &str = "CNI-ADMIN";

/// The reference's default `firewalldZone`.
pub const DEFAULT_FIREWALLD_ZONE: &str = "trusted";

/// `ingressPolicy`: which traffic may enter the attachment's bridge from elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IngressPolicy {
    /// `""` or `"open"`: no isolation rules.
    #[default]
    Open,
    /// `"same-bridge"`: traffic from other bridges is dropped.
    SameBridge,
    /// `"isolated"`: traffic from other bridges and between ports of the same bridge is dropped.
    Isolated,
}

impl IngressPolicy {
    /// Parses `ingressPolicy` as the reference does (`""` means `open`).
    pub fn parse(value: &str) -> Result<IngressPolicy, FirewallError> {
        match value {
            "" | "open" => Ok(IngressPolicy::Open),
            "same-bridge" => Ok(IngressPolicy::SameBridge),
            "isolated" => Ok(IngressPolicy::Isolated),
            _ => Err(FirewallError::Invalid {
                what: "ingressPolicy",
                value: value.to_string(),
                reason: "must be \"open\", \"same-bridge\" or \"isolated\"",
            }),
        }
    }

    /// The spelling the reference writes in its rule comments.
    pub fn as_str(self) -> &'static str {
        match self {
            IngressPolicy::Open => "open",
            IngressPolicy::SameBridge => "same-bridge",
            IngressPolicy::Isolated => "isolated",
        }
    }
}

/// What one attachment needs from the firewall. Every string here has been checked by the plugin's
/// config decoder (chain and bridge names are valid kernel/iptables names), so backends build rule
/// text from it without further escaping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardAccept {
    /// `CNI_CONTAINERID`: with `ifname`, the attachment key used for bookkeeping (never in the
    /// iptables rule bytes, which are keyed by address as the reference's are).
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// The attachment's addresses (from `prevResult.ips`, or the plugin's store on DEL), each
    /// accepted as a host route (`/32` or `/128`).
    pub addresses: Vec<IpAddr>,
    /// `iptablesAdminChainName`, checked; [`DEFAULT_ADMIN_CHAIN`] when unset.
    pub admin_chain: String,
    /// `ingressPolicy`.
    pub ingress: IngressPolicy,
    /// The bridge the policy applies to (`prevResult.interfaces[0].name`); `None` without
    /// interfaces, which the reference then refuses for a policy other than `open`.
    pub bridge: Option<String>,
}

/// One backend of the `firewall` plugin. Every operation is one transaction per family (one
/// restore batch or one netlink batch), safe under any number of concurrent callers.
pub trait ForwardBackend {
    /// Installs the chains and jumps if missing, then the accept rules for `attachment`'s
    /// addresses (each once), then the isolation rules of its policy.
    fn add(&self, attachment: &ForwardAccept) -> Result<(), FirewallError>;
    /// Verifies every chain, jump and rule [`ForwardBackend::add`] installs; changes nothing.
    fn check(&self, attachment: &ForwardAccept) -> Result<(), FirewallError>;
    /// Removes the accept rules of `addresses` (those no other live attachment still holds, as the
    /// plugin decided); chains, jumps and isolation rules stay, as in the reference. Idempotent.
    fn remove(&self, attachment: &ForwardAccept, addresses: &[IpAddr]) -> Result<(), FirewallError>;
    /// Whether this backend can work on this host (STATUS), with the reason when not.
    fn usable(&self) -> Result<(), FirewallError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_policies_like_the_reference() {
        assert_eq!(IngressPolicy::parse("").unwrap(), IngressPolicy::Open);
        assert_eq!(IngressPolicy::parse("open").unwrap(), IngressPolicy::Open);
        assert_eq!(IngressPolicy::parse("same-bridge").unwrap(), IngressPolicy::SameBridge);
        assert_eq!(IngressPolicy::parse("isolated").unwrap(), IngressPolicy::Isolated);
        let err = IngressPolicy::parse("Isolated").unwrap_err().to_string();
        assert!(err.contains("ingressPolicy"), "{err}");
        assert_eq!(IngressPolicy::Isolated.as_str(), "isolated");
    }
}
