//! The firewall configuration: the reference's keys (`backend`, `iptablesAdminChainName`,
//! `firewalldZone`, `ingressPolicy`), each checked before anything changes, plus `dataDir`, where
//! the attachment store lives (ours only; the reference keeps no state and ignores the key).

use crate::firewall::forward::{IngressPolicy, DEFAULT_ADMIN_CHAIN, DEFAULT_FIREWALLD_ZONE};
use cni_types::{CmdArgs, CniError};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Where the attachment store lives unless `dataDir` says otherwise. tmpfs: the rules die with a
/// reboot, and so must the records of them.
pub const DEFAULT_DATA_DIR: &str = "/run/cni/firewall";

/// The spec versions the plugin accepts: the reference's `VersionsStartingFrom("0.4.0")`.
pub const VERSIONS: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];

/// Longest iptables chain name (`XT_EXTENSION_MAXNAMELEN` - 1).
pub const MAX_CHAIN_LEN: usize = 28;

/// Chains and targets an admin chain may not be named after: jumping to them would loop or mean
/// something else, and `iptables -N` refuses the target names.
const RESERVED_CHAINS: &[&str] = &[
    "INPUT",
    "OUTPUT",
    "FORWARD",
    "PREROUTING",
    "POSTROUTING",
    "ACCEPT",
    "DROP",
    "QUEUE",
    "RETURN",
    "REJECT",
    "LOG",
    "MARK",
    "CT",
    "NFLOG",
    "NFQUEUE",
    "CNI-FORWARD",
    "CNI-ISOLATION-STAGE-1",
    "CNI-ISOLATION-STAGE-2",
];

/// The backend the configuration asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    /// `"iptables"`.
    Iptables,
    /// `"firewalld"`.
    Firewalld,
    /// `"nftables"` (ours; the reference has none).
    Nftables,
    /// Unset: firewalld while it owns its D-Bus name, else iptables where it works, else nftables.
    Auto,
}

impl BackendChoice {
    /// Parses `backend`. The reference silently treats an unknown value as unset; a typo here is
    /// an error that names the key instead.
    pub fn parse(value: &str) -> Result<BackendChoice, CniError> {
        match value {
            "" => Ok(BackendChoice::Auto),
            "iptables" => Ok(BackendChoice::Iptables),
            "firewalld" => Ok(BackendChoice::Firewalld),
            "nftables" => Ok(BackendChoice::Nftables),
            other => Err(CniError::invalid_config(format!(
                "backend: {other:?} is not a firewall backend (\"iptables\", \"firewalld\" or \"nftables\", or unset)"
            ))),
        }
    }
}

/// A checked firewall configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallConf {
    /// Network name (names the store's directory; checked by the skeleton).
    pub network: String,
    /// `backend`.
    pub backend: BackendChoice,
    /// `iptablesAdminChainName`, checked; [`DEFAULT_ADMIN_CHAIN`] when unset.
    pub admin_chain: String,
    /// `firewalldZone`, checked; [`DEFAULT_FIREWALLD_ZONE`] when unset.
    pub firewalld_zone: String,
    /// `ingressPolicy`.
    pub ingress: IngressPolicy,
    /// `dataDir`: the attachment store.
    pub data_dir: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Raw {
    name: String,
    backend: String,
    #[serde(rename = "iptablesAdminChainName")]
    iptables_admin_chain_name: String,
    #[serde(rename = "firewalldZone")]
    firewalld_zone: String,
    #[serde(rename = "ingressPolicy")]
    ingress_policy: String,
    #[serde(rename = "dataDir")]
    data_dir: String,
}

/// Checks `iptablesAdminChainName` as iptables would take it in a restore batch: 1 to 28
/// printable ASCII characters, no space or quote, not starting with `-` or `!`, and not a
/// built-in chain, a standard target or one of the plugin's own chains.
pub fn check_chain_name(name: &str) -> Result<(), CniError> {
    let bad = |why: &str| Err(CniError::invalid_config(format!("iptablesAdminChainName {name:?}: {why}")));
    if name.len() > MAX_CHAIN_LEN {
        return bad("longer than the 28 characters of an iptables chain name");
    }
    if !name.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\'' | b'\\')) {
        return bad("an iptables chain name is printable ASCII without spaces, quotes or backslashes");
    }
    if name.starts_with(['-', '!']) {
        return bad("an iptables chain name may not start with '-' or '!'");
    }
    if RESERVED_CHAINS.contains(&name) {
        return bad("names a built-in chain, a standard target or one of the plugin's own chains");
    }
    Ok(())
}

/// firewalld's own rule for zone names (`firewall::firewalld::check_zone`), as code 7.
fn check_zone(zone: &str) -> Result<(), CniError> {
    crate::firewall::firewalld::check_zone(zone).map_err(CniError::invalid_config)
}

fn data_dir_of(raw: &Raw) -> Result<PathBuf, CniError> {
    if raw.data_dir.is_empty() {
        return Ok(PathBuf::from(DEFAULT_DATA_DIR));
    }
    if raw.data_dir.contains('\0') || !Path::new(&raw.data_dir).is_absolute() {
        return Err(CniError::invalid_config(format!("dataDir {:?} must be an absolute path", raw.data_dir)));
    }
    Ok(PathBuf::from(&raw.data_dir))
}

/// Decodes and checks the whole configuration.
pub fn parse(args: &CmdArgs) -> Result<FirewallConf, CniError> {
    let raw: Raw = args.decode()?;
    let backend = BackendChoice::parse(&raw.backend)?;
    let admin_chain = if raw.iptables_admin_chain_name.is_empty() {
        DEFAULT_ADMIN_CHAIN.to_string()
    } else {
        check_chain_name(&raw.iptables_admin_chain_name)?;
        raw.iptables_admin_chain_name.clone()
    };
    let firewalld_zone = if raw.firewalld_zone.is_empty() {
        DEFAULT_FIREWALLD_ZONE.to_string()
    } else {
        check_zone(&raw.firewalld_zone)?;
        raw.firewalld_zone.clone()
    };
    let ingress = IngressPolicy::parse(&raw.ingress_policy).map_err(CniError::invalid_config)?;
    let data_dir = data_dir_of(&raw)?;
    Ok(FirewallConf { network: raw.name, backend, admin_chain, firewalld_zone, ingress, data_dir })
}

/// The keys that locate the store, decoded alone.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Location {
    name: String,
    #[serde(rename = "dataDir")]
    data_dir: String,
}

/// Only the network name and `dataDir`: what DEL and GC need to find the store, so they work
/// whatever else the configuration holds.
pub fn store_location(args: &CmdArgs) -> Result<(String, PathBuf), CniError> {
    let loc: Location = args.decode()?;
    let raw = Raw { name: loc.name, data_dir: loc.data_dir, ..Raw::default() };
    Ok((raw.name.clone(), data_dir_of(&raw)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(config: serde_json::Value) -> CmdArgs {
        CmdArgs { config, cni_version: "1.0.0".into(), ..Default::default() }
    }

    #[test]
    fn defaults_like_the_reference() {
        let c = parse(&args(json!({"name": "n", "type": "firewall"}))).unwrap();
        assert_eq!(c.backend, BackendChoice::Auto);
        assert_eq!(c.admin_chain, "CNI-ADMIN");
        assert_eq!(c.firewalld_zone, "trusted");
        assert_eq!(c.ingress, IngressPolicy::Open);
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    }

    #[test]
    fn reads_every_key() {
        let c = parse(&args(json!({"name": "n", "backend": "iptables", "iptablesAdminChainName": "NOMAD-ADMIN",
            "firewalldZone": "public", "ingressPolicy": "isolated", "dataDir": "/tmp/x"})))
        .unwrap();
        assert_eq!(c.backend, BackendChoice::Iptables);
        assert_eq!(c.admin_chain, "NOMAD-ADMIN");
        assert_eq!(c.firewalld_zone, "public");
        assert_eq!(c.ingress, IngressPolicy::Isolated);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        for (backend, want) in [("firewalld", BackendChoice::Firewalld), ("nftables", BackendChoice::Nftables)] {
            assert_eq!(parse(&args(json!({"name": "n", "backend": backend}))).unwrap().backend, want);
        }
    }

    #[test]
    fn refuses_bad_values_naming_the_key() {
        for (key, value) in [
            ("backend", json!("ipt")),
            ("iptablesAdminChainName", json!("A-VERY-LONG-ADMIN-CHAIN-NAME-X")),
            ("iptablesAdminChainName", json!("two words")),
            ("iptablesAdminChainName", json!("x\n-A FORWARD -j ACCEPT")),
            ("iptablesAdminChainName", json!("-j")),
            ("iptablesAdminChainName", json!("ACCEPT")),
            ("iptablesAdminChainName", json!("CNI-FORWARD")),
            ("iptablesAdminChainName", json!("quo\"te")),
            ("firewalldZone", json!("a zone")),
            ("ingressPolicy", json!("closed")),
            ("dataDir", json!("relative")),
        ] {
            let e = parse(&args(json!({"name": "n", key: value}))).unwrap_err();
            assert_eq!(e.code, 7, "{key}={value}: {e}");
            assert!(e.msg.contains(key), "{key}={value}: {e}");
        }
        assert_eq!(parse(&args(json!({"name": "n", "ingressPolicy": 3}))).unwrap_err().code, 6);
        check_chain_name("A-28-CHARACTER-CHAIN-NAME-OK").unwrap();
    }

    #[test]
    fn store_location_ignores_the_rest() {
        let (net, dir) =
            store_location(&args(json!({"name": "n", "ingressPolicy": "bogus", "iptablesAdminChainName": 5}))).unwrap();
        assert_eq!((net.as_str(), dir), ("n", PathBuf::from(DEFAULT_DATA_DIR)));
    }
}
