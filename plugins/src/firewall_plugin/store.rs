//! The attachment store: what each ADD installed, so that DEL works without `prevResult`, never
//! removes an address another live attachment holds (a recycled address), and GC can attribute
//! rules to attachments. The rule bytes stay the reference's; this is beside them.
//!
//! Layout: `<dataDir>/lock` (one flock for the store and every rule change), and one record per
//! attachment, `<dataDir>/<network>/<containerID>:<ifname>` (JSON, mode 0600). Every component is
//! a value the skeleton checked (network name, container ID: letters, digits, `_.-`; ifname: no
//! `/`, `:` or whitespace), and `:` appears in neither the container ID nor the ifname, so a name
//! stands for one attachment only.

use crate::fsutil::{self, Links};
use crate::lock::FileLock;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::io::{self, ErrorKind};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Largest record read; a real one is a few hundred bytes.
const MAX_RECORD: u64 = 64 * 1024;

/// What one ADD installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// `CNI_CONTAINERID`.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// The backend that installed the rules (`iptables`, `nftables`, `firewalld`).
    pub backend: String,
    /// The addresses whose rules it installed.
    pub addresses: Vec<IpAddr>,
    /// `iptablesAdminChainName` in force.
    #[serde(rename = "adminChain")]
    pub admin_chain: String,
    /// `ingressPolicy` in force.
    #[serde(rename = "ingressPolicy")]
    pub ingress_policy: String,
    /// The bridge the policy applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// `firewalldZone` in force.
    #[serde(rename = "firewalldZone")]
    pub firewalld_zone: String,
}

/// The store, locked for the lifetime of this value.
pub struct Store {
    dir: PathBuf,
    _lock: FileLock,
}

fn record_name(container_id: &str, ifname: &str) -> String {
    format!("{container_id}:{ifname}")
}

impl Store {
    /// Creates `dir` if needed (0700) and takes its lock.
    pub fn open(dir: &Path) -> io::Result<Store> {
        let parent = dir.parent().unwrap_or(Path::new("/"));
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        fsutil::ensure_dir(parent, name, 0o700)?;
        let lock = FileLock::acquire(&dir.join("lock"))?;
        Ok(Store { dir: dir.to_path_buf(), _lock: lock })
    }

    fn network_dir(&self, network: &str) -> PathBuf {
        self.dir.join(network)
    }

    fn path(&self, network: &str, container_id: &str, ifname: &str) -> PathBuf {
        self.network_dir(network).join(record_name(container_id, ifname))
    }

    /// The record of one attachment, `None` when there is none.
    pub fn get(&self, network: &str, container_id: &str, ifname: &str) -> io::Result<Option<Record>> {
        read_record(&self.path(network, container_id, ifname))
    }

    /// Writes (or replaces) the record of one attachment.
    pub fn put(&self, network: &str, record: &Record) -> io::Result<()> {
        fsutil::ensure_dir(&self.dir, network, 0o700)?;
        let bytes = serde_json::to_vec(record).map_err(io::Error::other)?;
        fsutil::replace(&self.path(network, &record.container_id, &record.ifname), &bytes, 0o600)
    }

    /// Removes the record of one attachment; a missing one is not an error.
    pub fn remove(&self, network: &str, container_id: &str, ifname: &str) -> io::Result<()> {
        match std::fs::remove_file(self.path(network, container_id, ifname)) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every record of one network.
    pub fn list(&self, network: &str) -> io::Result<Vec<Record>> {
        list_dir(&self.network_dir(network))
    }

    /// Every record of every network, each with its network.
    pub fn all(&self) -> io::Result<Vec<(String, Record)>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let Ok(network) = entry.file_name().into_string() else { continue };
            if !entry.file_type()?.is_dir() {
                continue;
            }
            out.extend(list_dir(&entry.path())?.into_iter().map(|r| (network.clone(), r)));
        }
        Ok(out)
    }

    /// The addresses held by every attachment except those `skip` names (network, container ID,
    /// ifname).
    pub fn held_addresses(&self, skip: &HashSet<(String, String, String)>) -> io::Result<HashSet<IpAddr>> {
        let mut held = HashSet::new();
        for (network, r) in self.all()? {
            if !skip.contains(&(network, r.container_id.clone(), r.ifname.clone())) {
                held.extend(r.addresses);
            }
        }
        Ok(held)
    }
}

fn read_record(path: &Path) -> io::Result<Option<Record>> {
    match fsutil::read_bounded(path, Links::Refuse, MAX_RECORD) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io::Error::new(ErrorKind::InvalidData, format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The records in one network's directory: regular files whose content names the attachment
/// their file name does; anything else is skipped with a warning.
fn list_dir(dir: &Path) -> io::Result<Vec<Record>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else { continue };
        if name.ends_with(".tmp") || !entry.file_type()?.is_file() {
            continue;
        }
        match read_record(&entry.path()) {
            Ok(Some(r)) if record_name(&r.container_id, &r.ifname) == name => out.push(r),
            Ok(_) => log::warn!("{}: not a record of this name, skipped", entry.path().display()),
            Err(e) => log::warn!("skipping {e}"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, ip: &str) -> Record {
        Record {
            container_id: id.into(),
            ifname: "eth0".into(),
            backend: "iptables".into(),
            addresses: vec![ip.parse().unwrap()],
            admin_chain: "CNI-ADMIN".into(),
            ingress_policy: "open".into(),
            bridge: Some("cni0".into()),
            firewalld_zone: "trusted".into(),
        }
    }

    #[test]
    fn keeps_records_per_network_and_attachment() {
        let dir = std::env::temp_dir().join(format!("fw-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).unwrap();
        store.put("net1", &record("a", "10.0.0.2")).unwrap();
        store.put("net2", &record("b", "10.0.0.3")).unwrap();
        assert_eq!(store.get("net1", "a", "eth0").unwrap(), Some(record("a", "10.0.0.2")));
        assert_eq!(store.get("net1", "b", "eth0").unwrap(), None);
        assert_eq!(store.list("net2").unwrap(), vec![record("b", "10.0.0.3")]);
        assert_eq!(store.all().unwrap().len(), 2);
        let skip: HashSet<_> = [("net1".to_string(), "a".to_string(), "eth0".to_string())].into();
        let held = store.held_addresses(&skip).unwrap();
        assert_eq!(held, ["10.0.0.3".parse().unwrap()].into());
        // A file whose content names another attachment is not trusted.
        std::fs::write(dir.join("net2").join("c:eth0"), serde_json::to_vec(&record("b", "10.0.0.9")).unwrap()).unwrap();
        assert_eq!(store.list("net2").unwrap().len(), 1);
        store.remove("net1", "a", "eth0").unwrap();
        store.remove("net1", "a", "eth0").unwrap();
        assert_eq!(store.get("net1", "a", "eth0").unwrap(), None);
        std::os::unix::fs::symlink("/etc/passwd", dir.join("net1").join("s:eth0")).unwrap();
        assert!(store.get("net1", "s", "eth0").is_err());
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
