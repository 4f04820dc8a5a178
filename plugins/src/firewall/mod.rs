//! Firewall rule sets: the only place rule text is built.
//!
//! Two kinds of backends, both driven by batches instead of one process per rule (the reference's
//! main cost, see `research/reference-benchmarks.md`):
//! * iptables: one `iptables-restore --noflush -w` (or `ip6tables-restore`) batch per family and
//!   operation, planned from one `iptables-save -t <table>` dump ([`iptables`] is the chain model,
//!   [`restore`] runs the tools);
//! * nftables: one NETLINK_NETFILTER batch per operation ([`crate::netlink::NftBatch`]), planned as
//!   data from what the kernel lists over netlink (`masq_nft`, `portmap_nftnl`); only a portmap ADD
//!   with user `conditionsV4`/`conditionsV6` (nft text) still goes through `nft -f -` ([`nft`]).
//!
//! Chain names, comments and rules are those of the reference plugins, so a host can move between
//! the suites without leaking rules.

pub mod fastpath;
pub mod firewalld;
pub mod forward;
pub mod forward_iptables;
mod ipmasq;
pub mod iptables;
mod masq_nft;
pub mod nft;
pub mod portmap_iptables;
pub mod portmap_nft;
mod portmap_nftnl;
pub mod restore;
mod select;
mod spoofcheck;

pub use ipmasq::{
    begin_ipmasq, check_ipmasq, gc_ipmasq, setup_ipmasq, setup_ipmasq_prepared, teardown_ipmasq, MasqSetup, MasqTarget,
};
pub use restore::PendingRestore;
pub use select::default_backend;
pub use spoofcheck::{setup_spoofcheck, teardown_spoofcheck};

use sha2::{Digest, Sha512};
use std::fmt::Write as _;

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
}

/// Errors of the firewall module; each names the command or object involved.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// `ipMasqBackend` is neither `iptables` nor `nftables`.
    #[error("unknown ipmasq backend {}", iptables::go_quote(.0))]
    UnknownBackend(String),
    /// A tool is missing from `PATH`, `/usr/sbin` and `/sbin`.
    #[error("{0} not found in $PATH, /usr/sbin or /sbin")]
    ToolNotFound(String),
    /// A tool could not be started or fed.
    #[error("failed to run {command}: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A tool did not finish in time and was killed.
    #[error(
        "{command} did not finish within {timeout:?} and was killed ({} sets the deadline, in seconds)",
        restore::TIMEOUT_ENV
    )]
    TimedOut {
        /// The command line.
        command: String,
        /// How long it was given.
        timeout: std::time::Duration,
    },
    /// A tool exited unsuccessfully.
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its trimmed stderr.
        stderr: String,
    },
    /// A tool's output was not what it prints.
    #[error("cannot parse output of {command}: {reason}")]
    Parse {
        /// The command line.
        command: String,
        /// What was wrong.
        reason: String,
    },
    /// A name or value cannot be written in the tool's syntax.
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        /// Which parameter.
        what: &'static str,
        /// Its value.
        value: String,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// The kernel refused or failed an nf_tables netlink exchange.
    #[error("nf_tables {what}: {source}")]
    Netlink {
        /// The operation and the object it concerns.
        what: String,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
    },
    /// An exchange with firewalld over D-Bus failed, was refused or was not answered in time.
    #[error("firewalld {call}: {reason}")]
    Firewalld {
        /// The call, with its zone and source, or the connection attempt.
        call: String,
        /// What went wrong.
        reason: String,
        /// Whether there is no bus or no firewalld at all (nothing to undo on DEL).
        absent: bool,
    },
    /// CHECK found the installed rules differ from what ADD installs.
    #[error("{0}")]
    Check(String),
    /// No backend was configured and neither works on this host.
    #[error("neither iptables nor nftables is usable: iptables: {iptables}; nftables: {nftables}")]
    NoBackend {
        /// Why iptables does not work.
        iptables: Box<FirewallError>,
        /// Why nftables does not work.
        nftables: Box<FirewallError>,
    },
    /// Several independent steps failed (teardown and GC continue after an error).
    #[error("{}", join_errors(.0))]
    Multiple(Vec<FirewallError>),
}

fn join_errors(errors: &[FirewallError]) -> String {
    errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")
}

impl FirewallError {
    /// Folds the errors of independent steps into one result.
    pub fn collect(mut errors: Vec<FirewallError>) -> Result<(), FirewallError> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(FirewallError::Multiple(errors)),
        }
    }
}

/// The first `len` lowercase hex digits of sha512(`data`), the reference's `MustFormatHashWithPrefix`.
pub(crate) fn sha512_hex(data: &str, len: usize) -> String {
    let digest = Sha512::digest(data.as_bytes());
    let mut hex = String::with_capacity(128);
    for byte in digest {
        let _ = write!(hex, "{byte:02x}");
    }
    hex.truncate(len);
    hex
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

    #[test]
    fn hashes_like_the_reference() {
        assert_eq!(sha512_hex("specnetctr1", 24), "47b0c350c56dfce277c5b5d1");
        assert_eq!(sha512_hex("specnet", 16), "56ecd7e6189379d3");
    }

    #[test]
    fn joins_errors() {
        let err = FirewallError::collect(vec![
            FirewallError::ToolNotFound("nft".into()),
            FirewallError::Check("rule missing".into()),
        ])
        .unwrap_err();
        assert_eq!(err.to_string(), "nft not found in $PATH, /usr/sbin or /sbin; rule missing");
        assert!(FirewallError::collect(vec![]).is_ok());
    }
}
