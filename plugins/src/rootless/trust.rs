//! Trusting what is found on disk: the state directory, the files in it, and the lock beside it.
//!
//! The wrapper keeps its state in a directory named by the configuration. Before anything in it
//! is read or acted on, the path is walked component by component from `/` with descriptors
//! (`openat(O_PATH | O_NOFOLLOW)`), so what is checked is what is used:
//!
//! - a directory that others can write (group or world write bit) must be sticky, or anybody
//!   could replace what is in it;
//! - a symbolic link is followed only when it is ours, or belongs to the owner of the directory
//!   that holds it and nobody else can write that directory (`/var/run -> /run`); a link someone
//!   else planted in a directory of ours, or in `/tmp`, is refused;
//! - a directory on the way belongs to us, to root, or to an owner this user namespace does not
//!   map (the host's root looks like that from inside, and so, unavoidably, does any other host
//!   user); a directory of a mapped user other than us (a container's user) is refused;
//! - the state directory itself is a real directory, ours, writable by nobody else; the wrapper
//!   creates it (and any missing parent) with mode 0700.
//!
//! Once the chain holds, nobody but us and root can change any name on it, so the resolved path
//! can be used as a path afterwards (helper arguments, mounts). Files inside are opened without
//! following links, must be regular, ours, and are read up to a bound.

use crate::fsutil::{self, Links};
use nix::fcntl::{openat, readlinkat, OFlag};
use nix::sys::stat::{fstat, mkdirat, FileStat, Mode, SFlag};
use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

/// Symbolic links followed at most while resolving one path (the kernel's own limit).
const MAX_LINKS: usize = 40;

/// The user IDs the checks compare against, as this process sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    /// Our effective UID (root inside the runtime's user namespace).
    pub me: u32,
    /// The UID unmapped owners show as (`/proc/sys/kernel/overflowuid`).
    pub overflow: u32,
}

impl Ids {
    /// This process's view.
    pub fn current() -> Ids {
        let overflow = std::fs::read_to_string("/proc/sys/kernel/overflowuid")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(65534);
        Ids { me: nix::unistd::geteuid().as_raw(), overflow }
    }
}

fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

fn others_can_write(st: &FileStat) -> bool {
    st.st_mode & 0o022 != 0
}

fn sticky(st: &FileStat) -> bool {
    st.st_mode & 0o1000 != 0
}

/// Why the entry `name` (with `st`) of the directory `parent` (with `pst`) may not be used on
/// the way to the state directory, if it may not.
pub fn refuse_entry(ids: Ids, parent: &Path, pst: &FileStat, name: &Path, st: &FileStat) -> Option<String> {
    let path = parent.join(name);
    if others_can_write(pst) && !sticky(pst) {
        return Some(format!(
            "{} is writable by other users and not sticky, so anything in it can be replaced",
            parent.display()
        ));
    }
    match kind(st) {
        SFlag::S_IFLNK => {
            let system_link = st.st_uid == pst.st_uid && !others_can_write(pst);
            if st.st_uid != ids.me && !system_link {
                return Some(format!(
                    "{} is a symbolic link of uid {}, which is neither yours nor the owner of {}: someone else \
                     planted it",
                    path.display(),
                    st.st_uid,
                    parent.display()
                ));
            }
            None
        }
        SFlag::S_IFDIR => {
            if st.st_uid != ids.me && st.st_uid != 0 && st.st_uid != ids.overflow {
                return Some(format!(
                    "{} belongs to uid {}, another user of this user namespace",
                    path.display(),
                    st.st_uid
                ));
            }
            None
        }
        _ => Some(format!("{} is not a directory", path.display())),
    }
}

/// Why the state directory itself (with `st`) may not be used, if it may not.
pub fn refuse_state_dir(ids: Ids, path: &Path, st: &FileStat) -> Option<String> {
    if kind(st) != SFlag::S_IFDIR {
        return Some(format!("{} is not a directory", path.display()));
    }
    if st.st_uid != ids.me {
        return Some(format!(
            "{} belongs to uid {} (as seen here), not to the user running the wrapper (uid {})",
            path.display(),
            st.st_uid,
            ids.me
        ));
    }
    if others_can_write(st) {
        return Some(format!(
            "{} is writable by other users (mode {:04o}); it must be 0700",
            path.display(),
            st.st_mode & 0o7777
        ));
    }
    None
}

fn open_path(dir: &OwnedFd, name: &Path) -> nix::Result<OwnedFd> {
    openat(dir, name, OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())
}

/// Walks `path` from `/` as described in the module documentation and returns the resolved
/// path of the state directory: `Ok(None)` when it does not exist and `create` is false.
/// Missing directories are created with mode 0700 when `create` is true.
pub fn secure_dir(path: &Path, create: bool) -> Result<Option<PathBuf>, String> {
    secure_dir_as(Ids::current(), path, create)
}

/// [`secure_dir`] with the IDs given (for tests).
pub fn secure_dir_as(ids: Ids, path: &Path, create: bool) -> Result<Option<PathBuf>, String> {
    if !path.is_absolute() {
        return Err(format!("{} is not an absolute path", path.display()));
    }
    let open_root = || open_path_abs(Path::new("/"));
    // The directories walked so far: every one a real directory reached through checked names.
    let mut stack: Vec<(PathBuf, OwnedFd, FileStat)> = Vec::new();
    let root = open_root()?;
    let root_st = fstat(&root).map_err(|e| format!("stat /: {e}"))?;
    stack.push((PathBuf::from("/"), root, root_st));
    let mut todo: VecDeque<OsString> = components(path);
    let mut links = 0;
    while let Some(name) = todo.pop_front() {
        if name == ".." {
            if stack.len() > 1 {
                stack.pop();
            }
            continue;
        }
        let last = todo.is_empty();
        let Some((dir_path, dir_fd, dir_st)) = stack.last() else { return Err("empty walk".into()) };
        let entry = Path::new(&name);
        let here = dir_path.join(entry);
        let fd = match open_path(dir_fd, entry) {
            Ok(fd) => fd,
            Err(nix::errno::Errno::ENOENT) if create => {
                if others_can_write(dir_st) && !sticky(dir_st) {
                    return Err(format!(
                        "{} is writable by other users and not sticky, so nothing made in it can be trusted",
                        dir_path.display()
                    ));
                }
                match mkdirat(dir_fd, entry, Mode::from_bits_truncate(0o700)) {
                    Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                    Err(e) => return Err(format!("create {}: {e}", here.display())),
                }
                open_path(dir_fd, entry).map_err(|e| format!("open {}: {e}", here.display()))?
            }
            Err(nix::errno::Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(format!("open {}: {e}", here.display())),
        };
        let st = fstat(&fd).map_err(|e| format!("stat {}: {e}", here.display()))?;
        if last && kind(&st) == SFlag::S_IFDIR {
            // The state directory itself: the more specific message first.
            if let Some(why) = refuse_state_dir(ids, &here, &st) {
                return Err(why);
            }
        }
        if let Some(why) = refuse_entry(ids, dir_path, dir_st, entry, &st) {
            return Err(why);
        }
        if kind(&st) == SFlag::S_IFLNK {
            links += 1;
            if links > MAX_LINKS {
                return Err(format!("too many symbolic links resolving {}", path.display()));
            }
            let target = readlinkat(dir_fd, entry).map_err(|e| format!("read link {}: {e}", here.display()))?;
            let target = PathBuf::from(target);
            if target.is_absolute() {
                stack.truncate(1);
            }
            for c in components(&target).into_iter().rev() {
                todo.push_front(c);
            }
            continue;
        }
        stack.push((here, fd, st));
    }
    Ok(stack.pop().map(|(p, _, _)| p))
}

fn open_path_abs(path: &Path) -> Result<OwnedFd, String> {
    nix::fcntl::open(path, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| format!("open {}: {e}", path.display()))
}

fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

/// Refuses a file of the state directory that another user owns.
fn check_own(path: &Path, file: &File) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let uid = file.metadata()?.uid();
    if uid != Ids::current().me {
        return Err(std::io::Error::other(format!("{} belongs to uid {uid}, not to us", path.display())));
    }
    Ok(())
}

/// Opens a file of the state directory for reading: not through a link, regular, ours.
fn open_own(path: &Path) -> std::io::Result<File> {
    let file = fsutil::open_read(path, Links::Refuse)?;
    check_own(path, &file)?;
    Ok(file)
}

/// Reads a file of the state directory whole, refusing links, non-regular files, other owners
/// and files larger than `max` bytes.
pub fn read_bounded(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    fsutil::read_to_end_bounded(path, &mut open_own(path)?, max)
}

/// The last `max` bytes of a file of the state directory (a log), with the same checks.
pub fn read_tail(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    fsutil::read_tail_of(&mut open_own(path)?, max)
}

/// Creates `path` afresh (whatever had the name is unlinked first, never followed) for writing.
pub fn create_fresh(path: &Path, mode: u32) -> std::io::Result<File> {
    fsutil::create_fresh(path, mode)
}

/// Replaces `path` (mode 0600) by rename from a fresh temporary file, so a reader never sees half of it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    fsutil::replace(path, bytes, 0o600).map_err(|e| format!("write {}: {e}", path.display()))
}

/// The state lock, held until dropped.
#[derive(Debug)]
pub struct StateLock {
    file: File,
}

impl Drop for StateLock {
    fn drop(&mut self) {
        // Closing releases it too; unlocking first just makes it prompt.
        let _ = self.file.unlock();
    }
}

/// Takes the exclusive lock on `path` (created 0600 if missing; refused when it is a link, not
/// regular or not ours), waiting at most `wait`: a call stuck elsewhere never blocks the user's
/// later calls forever.
pub fn lock(path: &Path, wait: Duration) -> Result<StateLock, String> {
    let (file, _) = fsutil::open_lock(path, 0o600).map_err(|e| format!("open lock {}: {e}", path.display()))?;
    check_own(path, &file).map_err(|e| format!("lock {e}; someone else made it"))?;
    let deadline = Instant::now() + wait;
    let mut pause = Duration::from_millis(1);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(StateLock { file }),
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(e)) => return Err(format!("lock {}: {e}", path.display())),
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "another rootless-wrapper call has held {} for more than {wait:?}; it is stuck or very slow \
                 (see its log), try again later",
                path.display()
            ));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rootless-trust-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        d
    }

    #[test]
    fn creates_missing_directories_0700_and_reuses_them() {
        let base = tmp("create");
        let dir = base.join("a/b");
        assert_eq!(secure_dir(&dir, false).unwrap(), None);
        let got = secure_dir(&dir, true).unwrap().unwrap();
        assert_eq!(got, std::fs::canonicalize(&dir).unwrap());
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert_eq!(secure_dir(&dir, false).unwrap(), Some(got));
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn refuses_writable_dirs_and_follows_own_links() {
        let base = tmp("refuse");
        let dir = base.join("state");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = secure_dir(&dir, false).unwrap_err();
        assert!(e.contains("writable by other users"), "{e}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink("state", base.join("link")).unwrap();
        assert_eq!(secure_dir(&base.join("link"), false).unwrap(), Some(std::fs::canonicalize(&dir).unwrap()));
        // A world-writable, non-sticky directory on the way.
        let open = base.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = secure_dir(&open.join("x"), true).unwrap_err();
        assert!(e.contains("not sticky"), "{e}");
        assert!(!open.join("x").exists());
        std::fs::write(base.join("file"), b"").unwrap();
        assert!(secure_dir(&base.join("file"), false).unwrap_err().contains("not a directory"));
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn entry_rules() {
        let ids = Ids { me: 1000, overflow: 65534 };
        let st = |mode: u32, uid: u32| {
            // SAFETY: a zeroed stat is a valid value of a plain C struct.
            let mut s: FileStat = unsafe { std::mem::zeroed() };
            s.st_mode = mode;
            s.st_uid = uid;
            s
        };
        let p = Path::new("/p");
        let n = Path::new("n");
        let mine_dir = st(0o040700, 1000);
        // A link planted by someone else in our directory.
        assert!(refuse_entry(ids, p, &mine_dir, n, &st(0o120777, 65534)).unwrap().contains("planted"));
        assert!(refuse_entry(ids, p, &mine_dir, n, &st(0o120777, 1000)).is_none());
        // A system link in a system directory.
        assert!(refuse_entry(ids, p, &st(0o040755, 65534), n, &st(0o120777, 65534)).is_none());
        // Sticky /tmp: only our entries.
        let tmpdir = st(0o041777, 65534);
        assert!(refuse_entry(ids, p, &tmpdir, n, &st(0o040700, 4242)).is_some(), "a container user's directory");
        assert!(refuse_entry(ids, p, &tmpdir, n, &st(0o120777, 65534)).is_some(), "a link in /tmp only if ours");
        assert!(refuse_entry(ids, p, &tmpdir, n, &st(0o120777, 1000)).is_none());
        assert!(refuse_entry(ids, p, &st(0o041777, 1000), n, &st(0o040755, 65534)).is_none(), "/run/user");
        assert!(refuse_entry(ids, p, &tmpdir, n, &st(0o040700, 1000)).is_none());
        assert!(refuse_entry(ids, p, &st(0o040777, 65534), n, &st(0o040700, 1000)).unwrap().contains("not sticky"));
        // A directory of a container's user.
        assert!(refuse_entry(ids, p, &st(0o040755, 0), n, &st(0o040755, 1001)).is_some());
        assert!(refuse_state_dir(ids, p, &st(0o040700, 65534)).unwrap().contains("belongs to uid 65534"));
        assert!(refuse_state_dir(ids, p, &st(0o040770, 1000)).unwrap().contains("writable"));
        assert!(refuse_state_dir(ids, p, &st(0o040755, 1000)).is_none());
    }

    #[test]
    fn files_are_opened_as_what_they_must_be() {
        let base = tmp("files");
        let f = base.join("state.json");
        write_atomic(&f, b"{}").unwrap();
        assert_eq!(read_bounded(&f, 10).unwrap(), b"{}");
        assert!(read_bounded(&f, 1).is_err());
        std::os::unix::fs::symlink("/etc/hostname", base.join("link")).unwrap();
        assert!(read_bounded(&base.join("link"), 1 << 20).is_err());
        nix::unistd::mkfifo(&base.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        assert!(read_bounded(&base.join("fifo"), 10).unwrap_err().to_string().contains("not a regular file"));
        // A link at the temporary name is replaced, not written through.
        let victim = base.join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, base.join("state.json.tmp")).unwrap();
        write_atomic(&f, b"[1]").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(read_tail(&f, 2).unwrap(), b"1]");
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn lock_wait_is_bounded() {
        let base = tmp("lock");
        let path = base.join("x.lock");
        let held = lock(&path, Duration::from_secs(1)).unwrap();
        let t = Instant::now();
        let e = lock(&path, Duration::from_millis(200)).unwrap_err();
        assert!(e.contains("held"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(2));
        drop(held);
        assert!(lock(&path, Duration::from_millis(200)).is_ok());
        std::os::unix::fs::symlink(&path, base.join("link.lock")).unwrap();
        assert!(lock(&base.join("link.lock"), Duration::from_millis(10)).is_err());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
