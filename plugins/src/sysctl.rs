//! `/proc/sys` reads and writes. `/proc/sys/net` follows the network namespace of the thread
//! that opens the file, so these must run inside the namespace they are meant for.
//!
//! [`ensure`] opens its file through a procfs instance of its own when it can: in the machine's
//! `/proc`, every network namespace has its own `net/ipv4` and `net/ipv6` dentries under the one
//! shared `net` dentry, all in one hash chain, so each lookup walks past an entry per namespace
//! that ever had a sysctl read (about a millisecond with a thousand containers). A private
//! instance holds only the dentries this process looks up.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Mutex;

/// A sysctl that could not be read or written: its file (which names the key) and the errno,
/// kept as the `io::Error` source so [`SysctlError::kind`] tells a missing key from a refusal.
#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    /// Reading the file failed.
    #[error("read {}: {source}", .path.display())]
    Read {
        /// The sysctl's file under `/proc/sys`.
        path: PathBuf,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// Opening or writing the file failed.
    #[error("write {value} to {}: {source}", .path.display())]
    Write {
        /// The sysctl's file under `/proc/sys`.
        path: PathBuf,
        /// The value that was to be written.
        value: String,
        /// The errno.
        #[source]
        source: io::Error,
    },
}

impl SysctlError {
    /// The kind of the underlying `io::Error` (`NotFound` for a key the kernel does not have).
    pub fn kind(&self) -> io::ErrorKind {
        self.io().kind()
    }

    /// The underlying `io::Error`.
    pub fn io(&self) -> &io::Error {
        match self {
            SysctlError::Read { source, .. } | SysctlError::Write { source, .. } => source,
        }
    }

    fn write(key: &str, value: &str, source: io::Error) -> SysctlError {
        SysctlError::Write { path: path_of(key), value: value.to_string(), source }
    }
}

impl From<SysctlError> for io::Error {
    /// Keeps the kind, so `io::Result` callers can still tell `NotFound`.
    fn from(e: SysctlError) -> io::Error {
        io::Error::new(e.kind(), e)
    }
}

/// The file behind a key given as `net/ipv4/ip_forward` or `net.ipv4.ip_forward`. Dots turn
/// into slashes only in the dotted form, so interface names with dots (`br0.100`) survive in
/// the slash form.
fn path_of(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(relative(key))
}

/// The key below `/proc/sys`, slash-separated.
fn relative(key: &str) -> String {
    if key.contains('/') {
        key.to_string()
    } else {
        key.replace('.', "/")
    }
}

/// A new procfs instance, detached (mounted nowhere, so no mount namespace sees it), or `None`
/// where the new mount API or the privilege for it is missing (then `/proc` serves).
fn make_private_proc() -> Option<OwnedFd> {
    use nix::libc::{c_char, c_long, c_uint, syscall, SYS_fsconfig, SYS_fsmount, SYS_fsopen};
    const FSOPEN_CLOEXEC: c_uint = 1;
    const FSCONFIG_CMD_CREATE: c_uint = 6;
    const FSMOUNT_CLOEXEC: c_uint = 1;
    let fstype = c"proc";
    // SAFETY: fsopen(2) with a NUL-terminated name and flags; it returns a new fd or -1.
    let ctx = unsafe { syscall(SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) };
    if ctx < 0 {
        return None;
    }
    // SAFETY: `ctx` is a file descriptor fsopen just returned to us and that nothing else owns.
    let ctx = unsafe { OwnedFd::from_raw_fd(i32::try_from(ctx).ok()?) };
    let none = std::ptr::null::<c_char>();
    // SAFETY: fsconfig(2) on our context fd; the create command takes no key or value.
    if unsafe { syscall(SYS_fsconfig, ctx.as_raw_fd(), FSCONFIG_CMD_CREATE, none, none, 0 as c_long) } < 0 {
        return None;
    }
    // SAFETY: fsmount(2) on our configured context fd; it returns a new mount fd or -1.
    let mnt = unsafe { syscall(SYS_fsmount, ctx.as_raw_fd(), FSMOUNT_CLOEXEC, 0 as c_uint) };
    if mnt < 0 {
        return None;
    }
    // SAFETY: `mnt` is a file descriptor fsmount just returned to us and that nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(i32::try_from(mnt).ok()?) })
}

/// The process's private procfs instance: made on first use, given up by [`release`].
enum PrivateProc {
    Untried,
    Open(OwnedFd),
    Unavailable,
}

static PROC: Mutex<PrivateProc> = Mutex::new(PrivateProc::Untried);

/// Opens a sysctl file for reading and writing, through the private procfs instance when there
/// is one.
fn open_rw(key: &str) -> io::Result<std::fs::File> {
    use nix::fcntl::OFlag;
    let rel = relative(key);
    {
        let mut state = PROC.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if matches!(*state, PrivateProc::Untried) {
            *state = make_private_proc().map_or(PrivateProc::Unavailable, PrivateProc::Open);
        }
        if let PrivateProc::Open(proc_fd) = &*state {
            let path = format!("sys/{rel}");
            let flags = OFlag::O_RDWR | OFlag::O_CLOEXEC;
            match nix::fcntl::openat(proc_fd, path.as_str(), flags, nix::sys::stat::Mode::empty()) {
                Ok(fd) => return Ok(std::fs::File::from(fd)),
                Err(nix::errno::Errno::ENOENT) => return Err(io::ErrorKind::NotFound.into()),
                // Anything else (e.g. a security module refusing the private mount): use /proc.
                Err(e) => log::debug!("private procfs open of {path}: {e}; using /proc"),
            }
        }
    }
    open_relative(&rel, OFlag::O_RDWR)
}

/// Opens `/proc/sys/<rel>` (`rel` slash-separated, already checked by the caller) with `access`
/// (`O_RDONLY`, `O_WRONLY` or `O_RDWR`), never following a symlink. A file under `net/` stays
/// bound to the network namespace of the thread that opened it, so a plugin can open it in the
/// container's namespace, switch back, and read or write it from the host side. It goes through
/// the machine's `/proc`, not a private instance: for tuning's one or two files, making and
/// tearing down the instance cost about 0.4 ms more per ADD with tens of namespaces on the host,
/// and broke even at about 400 namespaces that had read a sysctl (measured on Debian 12's 6.1).
pub fn open_relative(rel: &str, access: nix::fcntl::OFlag) -> io::Result<std::fs::File> {
    use nix::fcntl::OFlag;
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.read(access != OFlag::O_WRONLY).write(access != OFlag::O_RDONLY);
    options.custom_flags(nix::libc::O_NOFOLLOW).open(PathBuf::from("/proc/sys").join(rel))
}

/// Gives up the private procfs instance once no more sysctls are due. Unmounting it waits for an
/// RCU grace period, a millisecond or more on a busy host; done here on a thread of its own, it
/// overlaps the caller's remaining work instead of delaying the process's exit. A later
/// [`ensure`] makes a new instance.
pub fn release() {
    let mut state = PROC.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !matches!(*state, PrivateProc::Open(_)) {
        return;
    }
    if let PrivateProc::Open(fd) = std::mem::replace(&mut *state, PrivateProc::Untried) {
        if let Err(e) = std::thread::Builder::new().name("procfs-release".into()).spawn(move || drop(fd)) {
            log::debug!("closing the private procfs on this thread: {e}");
        }
    }
}

/// Reads a sysctl, trimmed.
pub fn read(key: &str) -> Result<String, SysctlError> {
    let path = path_of(key);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text.trim().to_string()),
        Err(source) => Err(SysctlError::Read { path, source }),
    }
}

/// Writes a sysctl.
pub fn write(key: &str, value: &str) -> Result<(), SysctlError> {
    std::fs::write(path_of(key), value).map_err(|e| SysctlError::write(key, value, e))
}

/// Writes a sysctl only when it differs, so an unchanged host value is never touched (and a
/// read-only `/proc/sys` that already has the value is no error). One open serves both the read
/// and the write: each path lookup under `/proc/sys/net` costs more with every network
/// namespace on the machine.
pub fn ensure(key: &str, value: &str) -> Result<(), SysctlError> {
    use std::io::Read;
    use std::os::unix::fs::FileExt;
    let mut file = match open_rw(key) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(SysctlError::write(key, value, e)),
        // Not writable (read-only /proc/sys, no permission): fine if it already holds the value.
        Err(e) => {
            return match read(key) {
                Ok(current) if current == value => Ok(()),
                _ => Err(SysctlError::write(key, value, e)),
            }
        }
    };
    let mut current = String::new();
    file.read_to_string(&mut current).map_err(|source| SysctlError::Read { path: path_of(key), source })?;
    if current.trim() == value {
        return Ok(());
    }
    file.write_at(value.as_bytes(), 0).map(|_| ()).map_err(|e| SysctlError::write(key, value, e))
}

/// Like [`ensure`], but a key that does not exist (IPv6 disabled, an old kernel) is no error.
pub fn ensure_if_present(key: &str, value: &str) -> Result<(), SysctlError> {
    match ensure(key, value) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_forms() {
        assert_eq!(path_of("net.ipv4.ip_forward"), PathBuf::from("/proc/sys/net/ipv4/ip_forward"));
        assert_eq!(
            path_of("net/ipv4/conf/br0.100/arp_notify"),
            PathBuf::from("/proc/sys/net/ipv4/conf/br0.100/arp_notify")
        );
    }

    #[test]
    fn errors_name_the_file_and_keep_the_errno() {
        let e = read("net/ipv4/conf/cnit-none-such/arp_notify").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().starts_with("read /proc/sys/net/ipv4/conf/cnit-none-such/arp_notify: "), "{e}");
        assert!(ensure_if_present("net.ipv4.conf.cnit-none-such.arp_notify", "1").is_ok());
        let e = ensure("net.ipv4.conf.cnit-none-such.arp_notify", "1").unwrap_err();
        assert!(e.to_string().starts_with("write 1 to /proc/sys/net/ipv4/conf/cnit-none-such/arp_notify: "), "{e}");
        assert_eq!(io::Error::from(e).kind(), io::ErrorKind::NotFound);
    }
}
