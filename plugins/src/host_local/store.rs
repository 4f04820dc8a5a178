//! The reservation store, byte-compatible with the reference's disk backend.
//!
//! `<dataDir>/<network>/<ip>` holds `<containerID>\r\n<ifname>` (no trailing newline; older
//! reference versions wrote only the ID), `last_reserved_ip.<set index>` the last address handed
//! out from each range set, and `lock` is the `flock` target that serialises every operation
//! between our plugin and the reference. Names of IPv6 files are the canonical compressed form.

use super::index::{self, Entry, Stamp};
use crate::fsutil::{self, Links};
use crate::lock::FileLock;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fs;
use std::io::{self, ErrorKind};
use std::net::IpAddr;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Prefix of the per-range-set round-robin files.
pub const LAST_RESERVED_PREFIX: &str = "last_reserved_ip.";
/// The lock file inside a network's directory.
pub const LOCK_FILE: &str = "lock";
/// The separator between container ID and interface name in a reservation file.
const LINE_BREAK: &str = "\r\n";

/// Who holds an address, as recorded in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// `<containerID>\r\n<ifname>`.
    Attachment {
        /// Container ID.
        id: String,
        /// Interface name.
        ifname: String,
    },
    /// Only `<containerID>`, as reference versions before 0.7 wrote it.
    Legacy(String),
}

impl Owner {
    /// Reads a reservation file's content; surrounding whitespace is ignored, as the reference does.
    pub fn parse(content: &str) -> Owner {
        let content = content.trim();
        match content.split_once(LINE_BREAK) {
            Some((id, ifname)) => Owner::Attachment { id: id.to_string(), ifname: ifname.to_string() },
            None => Owner::Legacy(content.to_string()),
        }
    }

    /// The file content for an attachment.
    pub fn encode(id: &str, ifname: &str) -> String {
        format!("{}{LINE_BREAK}{ifname}", id.trim())
    }

    /// Whether this is exactly the attachment `(id, ifname)`.
    pub fn is_attachment(&self, id: &str, ifname: &str) -> bool {
        matches!(self, Owner::Attachment { id: i, ifname: f } if i == id.trim() && f == ifname)
    }

    /// Whether this is a legacy record of container `id`.
    pub fn is_legacy_of(&self, id: &str) -> bool {
        matches!(self, Owner::Legacy(i) if i == id.trim())
    }

    /// Whether `(id, ifname)` owns the address, counting legacy records of the container.
    pub fn belongs_to(&self, id: &str, ifname: &str) -> bool {
        self.is_attachment(id, ifname) || self.is_legacy_of(id)
    }
}

/// One reserved address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The address.
    pub ip: IpAddr,
    /// The file's name (the address as the writer spelled it).
    pub name: String,
    /// Its holder.
    pub owner: Owner,
}

/// What the allocator needs from a store; every call happens under the store's lock.
pub trait Backend {
    /// Every reservation of the network.
    fn reservations(&self) -> io::Result<Vec<Reservation>>;
    /// Reserves `ip` for `(id, ifname)` exclusively; `false` when someone holds it already.
    fn reserve(&mut self, ip: IpAddr, id: &str, ifname: &str) -> io::Result<bool>;
    /// Drops the reservation file `name`; a missing file is not an error.
    fn release(&mut self, name: &str) -> io::Result<()>;
    /// The last address handed out from range set `set`, if recorded (content that is no
    /// address counts as no record); an error when the record cannot be read as a file.
    fn last_reserved(&self, set: usize) -> io::Result<Option<IpAddr>>;
    /// Records the last address handed out from range set `set`.
    fn set_last_reserved(&mut self, set: usize, ip: IpAddr) -> io::Result<()>;
}

/// A network's directory, locked for as long as the value lives. Dropping it saves the owner
/// index (see [`super::index`]) when this run read or changed the store.
#[derive(Debug)]
pub struct DiskStore {
    dir: PathBuf,
    lock: FileLock,
    /// Every reservation file as this run knows it, from the first [`Backend::reservations`] on,
    /// kept up to date by `reserve` and `release`.
    known: RefCell<Option<HashMap<String, Entry>>>,
    /// The directory's stamp as the saved index recorded it, if it was current when read.
    saved: Cell<Option<Stamp>>,
}

/// Reads a reservation or `last_reserved_ip` file: a regular file, not a symlink, of at most
/// [`fsutil::SMALL_FILE_MAX`] bytes; anything else is refused with an error naming it.
fn read_small(path: &Path) -> io::Result<Vec<u8>> {
    fsutil::read_bounded(path, Links::Refuse, fsutil::SMALL_FILE_MAX)
}

/// Removes a scratch file a crashed run of this pid left behind (scratch files are never
/// reused in place, so a planted link there is removed, not written through).
fn remove_leftover(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Whether `name` is one [`scratch_name`] makes.
fn is_scratch(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

/// A scratch name in the store directory that can never be read as an address or a
/// `last_reserved_ip` file, and that is unique among concurrent writers (all hold the lock,
/// the pid is belt and braces against a writer that does not).
fn scratch_name(what: &str) -> String {
    format!(".{what}.{}.tmp", std::process::id())
}

impl DiskStore {
    /// Opens (creating it, mode 0755 as the reference does) `<data_dir>/<network>` and takes its lock.
    /// The network directory itself must be a directory, not a symlink to one.
    pub fn open(data_dir: &Path, network: &str) -> io::Result<DiskStore> {
        fsutil::ensure_dir(data_dir, network, 0o755)?;
        Self::lock(data_dir.join(network))
    }

    /// Opens an existing network directory and takes its lock; `None` when there is none, so
    /// that DEL and GC leave no empty directory behind.
    pub fn open_existing(data_dir: &Path, network: &str) -> io::Result<Option<DiskStore>> {
        let dir = data_dir.join(network);
        match fsutil::check_dir(&dir) {
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
            Ok(()) => {}
        }
        match Self::lock(dir) {
            Ok(store) => Ok(Some(store)),
            // Removed between the check and the lock: nothing to do either.
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn lock(dir: PathBuf) -> io::Result<DiskStore> {
        let lock = FileLock::acquire(&dir.join(LOCK_FILE))?;
        Ok(DiskStore { dir, lock, known: RefCell::new(None), saved: Cell::new(None) })
    }

    /// The network's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Proves the directory takes new reservations (STATUS): writes and removes a scratch file
    /// with content, since a full disk still takes an empty one.
    pub fn probe_writable(&self) -> io::Result<()> {
        let probe = self.dir.join(scratch_name("status-probe"));
        remove_leftover(&probe)?;
        fsutil::create_new(&probe, b"status probe", 0o600)?;
        fs::remove_file(&probe)
    }

    fn stamp(&self) -> io::Result<Stamp> {
        Ok(Stamp::of(&fs::metadata(&self.dir)?))
    }

    /// Saves what this run knows as the index, stamped with the directory as it is now (after
    /// every change of this run, under the lock). Nothing to do when the saved index is current.
    fn save_index(&self) -> io::Result<()> {
        let known = self.known.borrow();
        let Some(files) = known.as_ref() else { return Ok(()) };
        // A read-only store (CHECK on a read-only dataDir) keeps whatever index it has.
        if !self.lock.writable() {
            return Ok(());
        }
        let now = self.stamp()?;
        if self.saved.get() == Some(now) {
            return Ok(());
        }
        index::store(self.lock.file(), now, files)
    }

    fn last_reserved_path(&self, set: usize) -> PathBuf {
        self.dir.join(format!("{LAST_RESERVED_PREFIX}{set}"))
    }
}

impl Backend for DiskStore {
    /// The directory listing decides which reservations exist; the index (when the directory is
    /// unchanged since it was saved) supplies the content of files it knows under the same inode,
    /// and every other file is read.
    fn reservations(&self) -> io::Result<Vec<Reservation>> {
        let stamp = self.stamp()?;
        let mut trusted = index::load(self.lock.file(), stamp);
        self.saved.set(trusted.as_ref().map(|_| stamp));
        let mut changed = false;
        let mut files = HashMap::new();
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            // Only address-named files are reservations: never `lock`, `last_reserved_ip.*`
            // or scratch files, whatever they contain.
            let Ok(ip) = name.parse::<IpAddr>() else {
                // Every writer of scratch files holds the lock, so one seen now was left by a
                // run that was killed between writing and linking it.
                if is_scratch(name) && self.lock.writable() {
                    if let Err(e) = fs::remove_file(entry.path()) {
                        log::warn!("host-local: failed to remove leftover {}: {e}", entry.path().display());
                    }
                }
                continue;
            };
            let ino = entry.ino();
            let content = match trusted.as_mut().and_then(|t| t.remove(name)).filter(|e| e.ino == ino) {
                Some(known) => known.content,
                None => match read_small(&entry.path()) {
                    Ok(bytes) => {
                        changed = true;
                        String::from_utf8_lossy(&bytes).into_owned()
                    }
                    // Released by someone who does not take the lock: it is simply gone.
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    // A refusal names the file already.
                    Err(e) if e.kind() == ErrorKind::InvalidInput => return Err(e),
                    Err(e) => return Err(io::Error::new(e.kind(), format!("read {}: {e}", entry.path().display()))),
                },
            };
            out.push(Reservation {
                ip: super::range::canonical(ip),
                name: name.to_string(),
                owner: Owner::parse(&content),
            });
            files.insert(name.to_string(), Entry { ino, content });
        }
        if changed || trusted.is_some_and(|t| !t.is_empty()) {
            // A file the index did not know, or one it knew gone: when the index was trusted,
            // someone changed the store inside one tick of the directory's clock.
            self.saved.set(None);
        }
        *self.known.borrow_mut() = Some(files);
        Ok(out)
    }

    fn reserve(&mut self, ip: IpAddr, id: &str, ifname: &str) -> io::Result<bool> {
        let name = ip.to_string();
        let path = self.dir.join(&name);
        let scratch = self.dir.join(scratch_name(&name));
        // The file appears whole or not at all: written under a scratch name, then hard-linked
        // into place, which (like O_EXCL) fails when the address is already reserved. A write
        // that fails (a full disk) takes its scratch file with it.
        let content = Owner::encode(id, ifname);
        remove_leftover(&scratch)?;
        let ino = fsutil::create_new(&scratch, content.as_bytes(), 0o600)?.metadata()?.ino();
        let linked = fs::hard_link(&scratch, &path);
        if let Err(e) = fs::remove_file(&scratch) {
            // The reservation stands either way; a leftover scratch file is removed next time.
            log::warn!("host-local: failed to remove {}: {e}", scratch.display());
        }
        let ino = match linked {
            Ok(()) => ino,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
            // File systems without hard links: fall back to O_EXCL on the final name.
            Err(e) if matches!(e.kind(), ErrorKind::Unsupported | ErrorKind::PermissionDenied) => {
                match fsutil::create_new(&path, content.as_bytes(), 0o600) {
                    Ok(file) => file.metadata()?.ino(),
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        if let Some(known) = self.known.get_mut().as_mut() {
            known.insert(name, Entry { ino, content });
        }
        Ok(true)
    }

    fn release(&mut self, name: &str) -> io::Result<()> {
        match fs::remove_file(self.dir.join(name)) {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        if let Some(known) = self.known.get_mut().as_mut() {
            known.remove(name);
        }
        Ok(())
    }

    fn last_reserved(&self, set: usize) -> io::Result<Option<IpAddr>> {
        let path = self.last_reserved_path(set);
        let bytes = match read_small(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let text = String::from_utf8_lossy(&bytes);
        Ok(text.trim().parse().ok().map(super::range::canonical))
    }

    fn set_last_reserved(&mut self, set: usize, ip: IpAddr) -> io::Result<()> {
        // Written in place, as the reference does: the file only says where the next search
        // starts, and a torn write reads as no hint at all, so a rename would buy nothing but
        // an extra half millisecond per ADD.
        fsutil::write_in_place(&self.last_reserved_path(set), ip.to_string().as_bytes(), 0o600).map(|_| ())
    }
}

impl Drop for DiskStore {
    fn drop(&mut self) {
        // Still under the lock: the lock field is dropped after this runs.
        if let Err(e) = self.save_index() {
            log::warn!("host-local: failed to save the owner index in {}: {e}", self.dir.display());
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A fresh directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "host-local-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn owner_format() {
        assert_eq!(Owner::encode(" c1 ", "eth0"), "c1\r\neth0");
        let o = Owner::parse("c1\r\neth0");
        assert!(o.is_attachment("c1", "eth0") && !o.is_attachment("c1", "eth1") && !o.is_legacy_of("c1"));
        assert!(o.belongs_to("c1", "eth0") && !o.belongs_to("c2", "eth0"));
        let legacy = Owner::parse("c1\n");
        assert_eq!(legacy, Owner::Legacy("c1".into()));
        assert!(legacy.belongs_to("c1", "anything") && !legacy.is_attachment("c1", "eth0"));
    }

    #[test]
    fn files_are_byte_compatible() {
        let tmp = TempDir::new("store");
        let mut s = DiskStore::open(&tmp.0, "net").unwrap();
        let v4: IpAddr = "10.0.0.2".parse().unwrap();
        let v6: IpAddr = "fd00:254:0::2".parse().unwrap();
        assert!(s.reserve(v4, "c1", "eth0").unwrap());
        assert!(!s.reserve(v4, "c2", "eth0").unwrap(), "a held address is not taken twice");
        assert!(s.reserve(v6, "c1", "eth1").unwrap());
        s.set_last_reserved(0, v4).unwrap();
        s.set_last_reserved(1, v6).unwrap();
        let dir = tmp.0.join("net");
        assert_eq!(fs::read(dir.join("10.0.0.2")).unwrap(), b"c1\r\neth0");
        assert_eq!(fs::read(dir.join("fd00:254::2")).unwrap(), b"c1\r\neth1");
        assert_eq!(fs::read(dir.join("last_reserved_ip.0")).unwrap(), b"10.0.0.2");
        assert_eq!(fs::read(dir.join("last_reserved_ip.1")).unwrap(), b"fd00:254::2");
        let mode = fs::metadata(dir.join("10.0.0.2")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let mut names: Vec<String> =
            fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["10.0.0.2", "fd00:254::2", "last_reserved_ip.0", "last_reserved_ip.1", "lock"]);
        assert_eq!(s.last_reserved(1).unwrap(), Some(v6));
        assert_eq!(s.last_reserved(7).unwrap(), None);
    }

    #[test]
    fn reservations_skip_bookkeeping_files_and_read_legacy_ones() {
        let tmp = TempDir::new("scan");
        let mut s = DiskStore::open(&tmp.0, "net").unwrap();
        let dir = tmp.0.join("net");
        fs::write(dir.join("10.0.0.9"), "legacy-id").unwrap();
        // A last_reserved_ip file whose content looks like a container ID is still not a reservation.
        fs::write(dir.join("last_reserved_ip.0"), "10.0.0.9").unwrap();
        fs::write(dir.join(".junk.tmp"), "c1\r\neth0").unwrap();
        assert!(s.reserve("10.0.0.3".parse().unwrap(), "c1", "eth0").unwrap());
        let mut r = s.reservations().unwrap();
        r.sort_by_key(|r| r.ip);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].owner, Owner::Attachment { id: "c1".into(), ifname: "eth0".into() });
        assert_eq!(r[1].owner, Owner::Legacy("legacy-id".into()));
        assert!(!dir.join(".junk.tmp").exists(), "a killed writer's scratch file is removed under the lock");
        s.release("10.0.0.9").unwrap();
        s.release("10.0.0.9").unwrap();
        assert_eq!(s.reservations().unwrap().len(), 1);
        s.probe_writable().unwrap();
    }

    fn owners(s: &DiskStore) -> Vec<(String, Owner)> {
        let mut v: Vec<(String, Owner)> = s.reservations().unwrap().into_iter().map(|r| (r.name, r.owner)).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn att(id: &str) -> Owner {
        Owner::Attachment { id: id.into(), ifname: "eth0".into() }
    }

    #[test]
    fn the_owner_index_serves_unchanged_stores_only() {
        let tmp = TempDir::new("index-use");
        let dir = tmp.0.join("net");
        {
            let mut s = DiskStore::open(&tmp.0, "net").unwrap();
            s.reservations().unwrap();
            assert!(s.reserve("10.0.0.2".parse().unwrap(), "c1", "eth0").unwrap());
            assert!(s.reserve("10.0.0.3".parse().unwrap(), "c2", "eth0").unwrap());
        }
        assert_ne!(fs::read(dir.join(LOCK_FILE)).unwrap(), b"", "the index lives in the lock file");
        // Rewriting a file in place leaves the directory alone, so only the index can explain
        // seeing the old owner: it was used instead of reading the file.
        fs::write(dir.join("10.0.0.2"), "changed-in-place").unwrap();
        let s = DiskStore::open(&tmp.0, "net").unwrap();
        assert_eq!(owners(&s), [("10.0.0.2".into(), att("c1")), ("10.0.0.3".into(), att("c2"))]);
        drop(s);

        // A writer that keeps no index (the reference): new, removed and replaced files are seen,
        // even within one tick of a coarse clock (the links keep the old inodes from reuse).
        for (i, name) in ["10.0.0.2", "10.0.0.3"].iter().enumerate() {
            fs::hard_link(dir.join(name), tmp.0.join(format!("old{i}"))).unwrap();
        }
        fs::write(dir.join("10.0.0.4"), "c4\r\neth0").unwrap();
        fs::remove_file(dir.join("10.0.0.3")).unwrap();
        fs::remove_file(dir.join("10.0.0.2")).unwrap();
        fs::write(dir.join("10.0.0.2"), "c9\r\neth0").unwrap();
        let s = DiskStore::open(&tmp.0, "net").unwrap();
        assert_eq!(owners(&s), [("10.0.0.2".into(), att("c9")), ("10.0.0.4".into(), att("c4"))]);
        drop(s);

        // A file replaced under the same name and the same directory timestamp: only its inode
        // tells (a hard link keeps the old inode alive, so the new file cannot reuse it).
        let keep = tmp.0.join("keep");
        fs::hard_link(dir.join("10.0.0.4"), &keep).unwrap();
        let before = fs::metadata(&dir).unwrap().modified().unwrap();
        fs::remove_file(dir.join("10.0.0.4")).unwrap();
        fs::write(dir.join("10.0.0.4"), "c5\r\neth0").unwrap();
        let times = fs::FileTimes::new().set_modified(before);
        fs::File::open(&dir).unwrap().set_times(times).unwrap();
        let s = DiskStore::open(&tmp.0, "net").unwrap();
        assert_eq!(owners(&s), [("10.0.0.2".into(), att("c9")), ("10.0.0.4".into(), att("c5"))]);
    }

    #[test]
    fn a_damaged_index_means_reading_every_file() {
        let tmp = TempDir::new("index-damaged");
        let dir = tmp.0.join("net");
        {
            let mut s = DiskStore::open(&tmp.0, "net").unwrap();
            s.reservations().unwrap();
            assert!(s.reserve("10.0.0.2".parse().unwrap(), "c1", "eth0").unwrap());
        }
        fs::write(dir.join("10.0.0.2"), "c2\r\neth0").unwrap();
        let mut lock = fs::read(dir.join(LOCK_FILE)).unwrap();
        lock.truncate(lock.len() / 2);
        fs::write(dir.join(LOCK_FILE), &lock).unwrap();
        let s = DiskStore::open(&tmp.0, "net").unwrap();
        assert_eq!(owners(&s), [("10.0.0.2".into(), att("c2"))]);
    }

    #[test]
    fn long_contents_are_read_whole() {
        let tmp = TempDir::new("long");
        let path = tmp.0.join("f");
        let long = format!("{}\r\neth0", "x".repeat(1500));
        fs::write(&path, &long).unwrap();
        assert_eq!(read_small(&path).unwrap(), long.as_bytes());
        fs::write(&path, "x".repeat(512)).unwrap();
        assert_eq!(read_small(&path).unwrap().len(), 512);
    }

    #[test]
    fn planted_links_and_fifos_are_refused_not_followed() {
        use std::os::unix::fs::symlink;
        let tmp = TempDir::new("planted");
        let victim = tmp.0.join("victim");
        fs::write(&victim, "keep").unwrap();
        let dir = tmp.0.join("net");
        fs::create_dir(&dir).unwrap();
        symlink(&victim, dir.join(LOCK_FILE)).unwrap();
        let err = DiskStore::open(&tmp.0, "net").unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        fs::remove_file(dir.join(LOCK_FILE)).unwrap();

        symlink(&victim, dir.join("last_reserved_ip.0")).unwrap();
        let mut s = DiskStore::open(&tmp.0, "net").unwrap();
        assert!(s.last_reserved(0).unwrap_err().to_string().contains("symbolic link"));
        assert!(s.set_last_reserved(0, "10.0.0.2".parse().unwrap()).is_err());
        fs::remove_file(dir.join("last_reserved_ip.0")).unwrap();
        // A scratch name planted as a link is replaced, never written through.
        symlink(&victim, dir.join(scratch_name("10.0.0.3"))).unwrap();
        assert!(s.reserve("10.0.0.3".parse().unwrap(), "c1", "eth0").unwrap());
        assert_eq!(fs::read(&victim).unwrap(), b"keep");

        nix::unistd::mkfifo(&dir.join("10.0.0.9"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = s.reservations().unwrap_err().to_string();
        assert!(err.contains("10.0.0.9: is a FIFO"), "{err}");
        drop(s);

        fs::remove_dir_all(&dir).unwrap();
        fs::create_dir(tmp.0.join("elsewhere")).unwrap();
        symlink(tmp.0.join("elsewhere"), &dir).unwrap();
        assert!(DiskStore::open(&tmp.0, "net").is_err());
        assert!(DiskStore::open_existing(&tmp.0, "net").is_err());
        assert_eq!(fs::read_dir(tmp.0.join("elsewhere")).unwrap().count(), 0);
    }

    #[test]
    fn open_existing_does_not_create() {
        let tmp = TempDir::new("existing");
        assert!(DiskStore::open_existing(&tmp.0, "net").unwrap().is_none());
        assert!(!tmp.0.join("net").exists());
        drop(DiskStore::open(&tmp.0, "net").unwrap());
        assert!(DiskStore::open_existing(&tmp.0, "net").unwrap().is_some());
    }
}
