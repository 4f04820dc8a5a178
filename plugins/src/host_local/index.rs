//! The owner index: what every reservation file of a network says, kept in the store's `lock`
//! file so that ADD, DEL and CHECK need not open every reservation file.
//!
//! Finding an attachment's addresses means knowing every file's content, and opening a
//! thousand files costs several milliseconds per call, more with every container. The index
//! records each file's name, inode and content, plus the directory's modification time as it
//! was right after the writer's last change. A reader trusts an entry only when the
//! directory's modification time is still the recorded one, the file is still there under the
//! same inode, and the index parses; every other file is read. So a store changed by anyone
//! else (the reference plugin, an administrator, a crashed run of ours) is read in full once,
//! and the index is rebuilt.
//!
//! Why the `lock` file: the reference opens it read-only, never reads it and never truncates
//! it; every process that writes the store holds its `flock` while doing so; rewriting a file in
//! place leaves the directory's modification time alone; and no file name is added that a
//! listing of the store (ours, the reference's GC, an operator's script) would have to skip.
//! The reference's scans compare each file's whole content with `<id>\r\n<ifname>`, which a
//! JSON object never equals.
//!
//! What the check cannot see: within one tick of a coarse file-system clock (kernels before
//! 6.13 with ext4 and most others), someone releasing an address and someone reserving the same
//! address again, with the file system handing the new file the old inode number. Any other
//! change inside a tick still renames, adds or removes a file, which the directory listing shows.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};

/// Format version; an index of another version is ignored.
const VERSION: u32 = 1;

/// The largest index read: a /16 fully reserved with long container IDs is a few MiB, so a
/// bigger lock file was not written by us and is ignored (every file is read instead).
const MAX_LEN: u64 = 64 << 20;

/// A reservation file as the index remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Its inode number: a file released and reserved again is a new file.
    pub ino: u64,
    /// Its content, as read (the owner is parsed from this on every use).
    pub content: String,
}

/// Which directory, and how it looked after the writer's last change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Stamp {
    /// The stamp of a directory's metadata.
    pub fn of(meta: &Metadata) -> Stamp {
        Stamp { dev: meta.dev(), ino: meta.ino(), mtime: meta.mtime(), mtime_nsec: meta.mtime_nsec() }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct OnDisk {
    /// Says what the file is to a person who opens it.
    #[serde(rename = "cni-plugins-rs host-local owner index")]
    version: u32,
    stamp: Stamp,
    files: HashMap<String, Entry>,
}

/// FNV-1a, 64 bits: enough to tell a whole index from one torn by an interrupted write.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// Reads the index from the lock file: the entries, if the index is whole, of this version, and
/// the directory is unchanged since it was written. `None` means "read every file".
pub fn load(lock: &File, now: Stamp) -> Option<HashMap<String, Entry>> {
    let len = lock.metadata().ok()?.len();
    if len == 0 || len > MAX_LEN {
        return None;
    }
    // Bounded as it is read: the file may grow after the size was looked at.
    let buf = crate::fsutil::read_all_at_bounded(lock, MAX_LEN).ok()?;
    let split = buf.iter().rposition(|b| *b == b'\n')?;
    let (json, sum) = (&buf[..split], std::str::from_utf8(&buf[split + 1..]).ok()?);
    if u64::from_str_radix(sum, 16).ok()? != checksum(json) {
        return None;
    }
    let on_disk: OnDisk = serde_json::from_slice(json).ok()?;
    (on_disk.version == VERSION && on_disk.stamp == now).then_some(on_disk.files)
}

/// Writes the index into the lock file in place, as JSON and a checksum line; a write cut short
/// fails the checksum. New content goes first, then the length. The directory is not touched.
pub fn store(lock: &File, now: Stamp, files: &HashMap<String, Entry>) -> io::Result<()> {
    #[derive(Serialize)]
    struct Borrowed<'a> {
        #[serde(rename = "cni-plugins-rs host-local owner index")]
        version: u32,
        stamp: Stamp,
        files: &'a HashMap<String, Entry>,
    }
    let mut body = serde_json::to_vec(&Borrowed { version: VERSION, stamp: now, files })?;
    let sum = checksum(&body);
    body.extend_from_slice(format!("\n{sum:016x}").as_bytes());
    lock.write_all_at(&body, 0)?;
    lock.set_len(body.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host_local::store::tests::TempDir;
    use std::fs::OpenOptions;

    fn entries() -> HashMap<String, Entry> {
        let mut m = HashMap::new();
        m.insert("10.0.0.2".to_string(), Entry { ino: 7, content: "c1\r\neth0".into() });
        m.insert("fd00::2".to_string(), Entry { ino: 9, content: "legacy".into() });
        m
    }

    #[test]
    fn round_trip_only_with_the_same_stamp() {
        let tmp = TempDir::new("index");
        let path = tmp.0.join("lock");
        let f = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).unwrap();
        let stamp = Stamp::of(&std::fs::metadata(&tmp.0).unwrap());
        assert_eq!(load(&f, stamp), None, "an empty lock file holds no index");
        store(&f, stamp, &entries()).unwrap();
        assert_eq!(load(&f, stamp), Some(entries()));
        let later = Stamp { mtime_nsec: stamp.mtime_nsec + 1, ..stamp };
        assert_eq!(load(&f, later), None, "a directory changed since is read in full");
        let other_dir = Stamp { ino: stamp.ino + 1, ..stamp };
        assert_eq!(load(&f, other_dir), None);
    }

    #[test]
    fn shorter_rewrite_and_torn_writes() {
        let tmp = TempDir::new("index-torn");
        let path = tmp.0.join("lock");
        let f = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).unwrap();
        let stamp = Stamp::of(&std::fs::metadata(&tmp.0).unwrap());
        store(&f, stamp, &entries()).unwrap();
        let mut one = entries();
        one.remove("fd00::2");
        store(&f, stamp, &one).unwrap();
        assert_eq!(load(&f, stamp), Some(one.clone()), "a shorter index leaves no tail behind");
        // A write cut short before the length was set: new bytes over a longer old index.
        let full = std::fs::read(&path).unwrap();
        store(&f, stamp, &entries()).unwrap();
        f.write_all_at(&full, 0).unwrap();
        assert_eq!(load(&f, stamp), None);
        // One flipped byte in an otherwise whole index; garbage; the reference's empty lock file.
        store(&f, stamp, &entries()).unwrap();
        let mut flipped = std::fs::read(&path).unwrap();
        let at = flipped.iter().position(|b| *b == b'7').unwrap();
        flipped[at] = b'8';
        std::fs::write(&path, &flipped).unwrap();
        assert_eq!(load(&f, stamp), None);
        std::fs::write(&path, b"{\"cni-plugins-rs host-local owner index\": 1").unwrap();
        assert_eq!(load(&f, stamp), None);
        std::fs::write(&path, b"").unwrap();
        assert_eq!(load(&f, stamp), None);
    }
}
