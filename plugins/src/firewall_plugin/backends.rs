//! Which [`ForwardBackend`] serves a configuration: the one place the plugin names a backend.

use super::config::BackendChoice;
use crate::firewall::firewalld::Firewalld;
use crate::firewall::forward::ForwardBackend;
use crate::firewall::iptables::forward::IptablesForward;
use crate::firewall::nftables::forward::NftForward;
use crate::firewall::{self, FirewallError};

/// A backend chosen for one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The reference's filter-table rules.
    Iptables,
    /// Our own nftables table.
    Nftables,
    /// Sources in a firewalld zone over D-Bus.
    Firewalld,
}

impl Backend {
    /// The name stored in the attachment store and used in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Iptables => "iptables",
            Backend::Nftables => "nftables",
            Backend::Firewalld => "firewalld",
        }
    }

    /// Reads a stored name back.
    pub fn parse(name: &str) -> Option<Backend> {
        match name {
            "iptables" => Some(Backend::Iptables),
            "nftables" => Some(Backend::Nftables),
            "firewalld" => Some(Backend::Firewalld),
            _ => None,
        }
    }
}

/// Whether firewalld owns `org.fedoraproject.FirewallD1` on the system bus (the reference's
/// automatic choice), asked once per process.
pub fn firewalld_running() -> bool {
    static RUNNING: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *RUNNING.get_or_init(firewall::firewalld::firewalld_running)
}

/// Resolves the configured choice: an explicit backend as named; unset, firewalld while it
/// runs, else iptables where it works, else nftables (as every other plugin of the suite
/// chooses, `firewall::default_backend`).
pub fn resolve(choice: BackendChoice) -> Result<Backend, FirewallError> {
    Ok(match choice {
        BackendChoice::Iptables => Backend::Iptables,
        BackendChoice::Nftables => Backend::Nftables,
        BackendChoice::Firewalld => Backend::Firewalld,
        BackendChoice::Auto if firewalld_running() => Backend::Firewalld,
        BackendChoice::Auto => match firewall::default_backend()? {
            firewall::Backend::Iptables => Backend::Iptables,
            firewall::Backend::Nftables => Backend::Nftables,
        },
    })
}

/// The backend's implementation for the network named `network`; `zone` is the firewalld zone in
/// force.
pub fn open(backend: Backend, zone: &str, network: &str) -> Result<Box<dyn ForwardBackend>, FirewallError> {
    match backend {
        Backend::Iptables => Ok(Box::new(IptablesForward)),
        Backend::Nftables => Ok(Box::new(NftForward::new(network))),
        Backend::Firewalld => Ok(Box::new(Firewalld::new(zone)?)),
    }
}
