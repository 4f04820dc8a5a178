//! The backup of a link's original attributes, `<dataDir>/<containerID>_<ifname>.json`, byte for
//! byte what the reference writes (Go's `json.MarshalIndent` with a one-space indent, no final
//! newline, file mode 0600), so either suite restores what the other saved.

use crate::fsutil::{self, Links};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Largest backup read; a real one is under 200 bytes.
const MAX_SIZE: u64 = 64 * 1024;

/// The original values of the attributes an ADD changes; a field is present only when that
/// attribute was changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Backup {
    /// Original MAC, `aa:bb:…`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// Whether the link was promiscuous.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub promisc: Option<bool>,
    /// Original MTU (0: not changed).
    #[serde(skip_serializing_if = "is_zero")]
    pub mtu: i64,
    /// Whether all-multicast was on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allmulti: Option<bool>,
    /// Original transmit queue length.
    #[serde(rename = "txQLen", skip_serializing_if = "Option::is_none")]
    pub txqlen: Option<i64>,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

impl Backup {
    /// The file's bytes, in Go's indented shape.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b" ");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
        // Serialising plain fields into memory cannot fail.
        let _ = self.serialize(&mut ser);
        out
    }

    /// Parses a backup with Go's key matching (unknown keys ignored).
    pub fn from_bytes(bytes: &[u8]) -> Result<Backup, serde_json::Error> {
        cni_types::gojson::from_slice(bytes)
    }
}

/// The backup file of one attachment.
pub fn path(data_dir: &Path, container_id: &str, ifname: &str) -> PathBuf {
    data_dir.join(format!("{container_id}_{ifname}.json"))
}

/// The extended attribute naming the network a backup belongs to. File names carry only the
/// container ID and interface, and `dataDir` is shared by every network by default, so GC of one
/// network needs it to leave the others' backups alone. `trusted.*` needs CAP_SYS_ADMIN, which
/// is what keeps a container's own root from forging it; tmpfs supports it.
const NETWORK_XATTR: &std::ffi::CStr = c"trusted.cni-tuning.network";

/// Tags an open backup with its network; best effort (a filesystem without `trusted.*`
/// attributes only means GC will leave this backup to DEL).
fn tag_network(file: &File, network: &str) {
    use std::os::fd::AsRawFd;
    // SAFETY: fsetxattr(2) on an fd we own, with a NUL-terminated name and a value pointer and
    // length taken from one live slice.
    let rc = unsafe {
        nix::libc::fsetxattr(file.as_raw_fd(), NETWORK_XATTR.as_ptr(), network.as_ptr().cast(), network.len(), 0)
    };
    if rc != 0 {
        log::debug!("tag backup with network {network}: {}", io::Error::last_os_error());
    }
}

/// The network an open backup was tagged with, if any.
fn network_of(file: &File) -> Option<String> {
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; 256];
    // SAFETY: fgetxattr(2) on an fd we own, writing at most `buf.len()` bytes into `buf`.
    let n =
        unsafe { nix::libc::fgetxattr(file.as_raw_fd(), NETWORK_XATTR.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    let n = usize::try_from(n).ok()?;
    String::from_utf8(buf.get(..n)?.to_vec()).ok()
}

/// The backups in `dir` that `network` wrote (the file names), for GC: regular files only, never
/// followed through a symlink. A missing directory has none.
pub fn list_network(dir: &Path, network: &str) -> io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else { continue };
        // Only regular files are opened at all (readdir's type, no symlink followed).
        if name.starts_with('.') || !name.ends_with(".json") || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let Ok(file) = fsutil::open_read(&entry.path(), Links::Refuse) else { continue };
        if network_of(&file).as_deref() == Some(network) {
            out.push(name);
        }
    }
    Ok(out)
}

/// Writes `bytes` to `path` atomically (a temporary file renamed over it, never following a
/// symlink), mode 0600, tagged with `network` when given, creating the directory (0700) when
/// needed.
pub fn write(path: &Path, bytes: &[u8], network: Option<&str>) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(bytes)?;
        if let Some(network) = network {
            tag_network(&f, network);
        }
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

use std::os::unix::fs::DirBuilderExt;

/// Reads a backup file: `Ok(None)` when there is none. Opened as what it must be: no symlink,
/// no FIFO (never blocks), a regular file of bounded size.
pub fn read(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fsutil::read_bounded(path, Links::Refuse, MAX_SIZE) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes a backup file (or whatever non-directory sits at its name); gone already is fine.
pub fn remove(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_shape() {
        let full = Backup {
            mac: "0a:58:0a:00:00:02".into(),
            promisc: Some(false),
            mtu: 1500,
            allmulti: Some(true),
            txqlen: Some(1000),
        };
        assert_eq!(
            String::from_utf8(full.to_bytes()).unwrap(),
            "{\n \"mac\": \"0a:58:0a:00:00:02\",\n \"promisc\": false,\n \"mtu\": 1500,\n \"allmulti\": true,\n \"txQLen\": 1000\n}"
        );
        assert_eq!(Backup { mtu: 9000, ..Default::default() }.to_bytes(), b"{\n \"mtu\": 9000\n}");
        assert_eq!(Backup::default().to_bytes(), b"{}");
        let back = Backup::from_bytes(br#"{"MAC":"0a:58:0a:00:00:02","txqlen":5,"other":1}"#).unwrap();
        assert_eq!((back.mac.as_str(), back.txqlen), ("0a:58:0a:00:00:02", Some(5)));
    }

    #[test]
    fn files_are_regular_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("tuning-backup-{}", std::process::id()));
        let p = path(&dir.join("sub"), "c1", "eth0");
        assert_eq!(read(&p).unwrap(), None);
        write(&p, b"{}", None).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(read(&p).unwrap().unwrap(), b"{}");
        remove(&p).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &p).unwrap();
        assert!(read(&p).is_err(), "a symlink is not followed");
        write(&p, b"{}", None).unwrap();
        assert!(std::fs::symlink_metadata(&p).unwrap().is_file(), "the symlink is replaced, its target untouched");
        remove(&p).unwrap();
        remove(&p).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
