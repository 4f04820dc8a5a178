//! Exclusive file locks (`flock`) shared with the reference plugins' lock files.

use crate::fsutil;
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use std::fs::File;
use std::io::{self, ErrorKind};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long [`FileLock::acquire`] waits for another holder. Real holders keep a lock for
/// milliseconds; only one that hangs (stopped, stuck on a dead disk) makes a caller wait this
/// long, and the caller then fails with an error instead of hanging with it.
pub const LOCK_WAIT: Duration = Duration::from_secs(60);

/// A lock that could not be taken: the lock file and the errno (`TimedOut` when another holder
/// kept it past the deadline), kept as the `io::Error` source.
#[derive(Debug, thiserror::Error)]
#[error("lock {}: {source}", .path.display())]
pub struct LockError {
    /// The lock file.
    pub path: PathBuf,
    /// The errno.
    #[source]
    pub source: io::Error,
}

impl LockError {
    /// The kind of the underlying `io::Error`.
    pub fn kind(&self) -> ErrorKind {
        self.source.kind()
    }
}

impl From<LockError> for io::Error {
    /// Keeps the kind, so `io::Result` callers can still tell `NotFound`.
    fn from(e: LockError) -> io::Error {
        io::Error::new(e.kind(), e)
    }
}

/// An exclusive `flock` on a file, released when dropped.
#[derive(Debug)]
pub struct FileLock {
    file: File,
    writable: bool,
}

impl FileLock {
    /// Creates `path` if needed (mode 0600) and waits (at most [`LOCK_WAIT`]) until the
    /// exclusive lock is held. The file must be a regular file and not a symlink; on a
    /// read-only file system an existing one is locked read-only (`flock` needs no write
    /// access), see [`FileLock::writable`].
    pub fn acquire(path: &Path) -> Result<FileLock, LockError> {
        Self::acquire_within(path, LOCK_WAIT)
    }

    /// [`FileLock::acquire`] with another deadline (whole seconds, at least one).
    pub fn acquire_within(path: &Path, wait: Duration) -> Result<FileLock, LockError> {
        let named = |source| LockError { path: path.to_path_buf(), source };
        let (file, writable) = fsutil::open_lock(path, 0o600).map_err(named)?;
        lock_within(&file, wait).map_err(named)?;
        Ok(FileLock { file, writable })
    }

    /// The locked file, open for reading (and for writing when [`FileLock::writable`]).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Whether the lock file could be opened for writing.
    pub fn writable(&self) -> bool {
        self.writable
    }
}

/// Does nothing: its only purpose is that a `SIGALRM` interrupts a blocking `flock`.
extern "C" fn interrupt(_: nix::libc::c_int) {}

/// Takes the exclusive lock, failing with `TimedOut` after `wait`. Uncontended it is one
/// `flock` call; contended it blocks in `flock` until the holder lets go or an alarm interrupts
/// it. The plugins are single-threaded, so the alarm reaches the thread that waits.
fn lock_within(file: &File, wait: Duration) -> io::Result<()> {
    match file.try_lock() {
        Ok(()) => return Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => {}
        Err(std::fs::TryLockError::Error(e)) => return Err(e),
    }
    let secs = u32::try_from(wait.as_secs()).unwrap_or(u32::MAX).max(1);
    let deadline = Instant::now() + Duration::from_secs(u64::from(secs));
    let action = SigAction::new(SigHandler::Handler(interrupt), SaFlags::empty(), SigSet::empty());
    // SAFETY: the handler does nothing and so is async-signal-safe; installed without
    // SA_RESTART, the alarm makes the flock below fail with EINTR. The previous action is put
    // back before this function returns.
    let previous = unsafe { sigaction(Signal::SIGALRM, &action) }?;
    let result = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Err(io::Error::new(
                ErrorKind::TimedOut,
                format!("another process has held the lock for more than {secs} s"),
            ));
        }
        nix::unistd::alarm::set(u32::try_from(left.as_secs()).unwrap_or(u32::MAX).max(1));
        // SAFETY: flock(2) on a descriptor `file` keeps open for the whole call.
        let r = unsafe { nix::libc::flock(file.as_raw_fd(), nix::libc::LOCK_EX) };
        let err = (r != 0).then(io::Error::last_os_error);
        nix::unistd::alarm::cancel();
        match err {
            None => break Ok(()),
            // The alarm, or another signal: the loop decides by the clock.
            Some(e) if e.kind() == ErrorKind::Interrupted => {}
            Some(e) => break Err(e),
        }
    };
    // SAFETY: restores the action that was installed when this function was entered.
    unsafe { sigaction(Signal::SIGALRM, &previous) }?;
    result
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // Closing the descriptor releases the lock too; unlocking first just makes it prompt.
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A holder that never lets go: the waiter gives up after its deadline with an error. Run
    /// in a forked child, which has one thread, as a plugin does (the test harness has many,
    /// and the alarm could reach any of them).
    #[test]
    fn a_lock_held_forever_times_out() {
        let path = std::env::temp_dir().join(format!("filelock-test-{}", std::process::id()));
        let held = FileLock::acquire(&path).unwrap();
        // SAFETY: the child only opens, locks and exits (no locks of the parent's threads are
        // needed: glibc resets malloc's in the child).
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let start = Instant::now();
                let r = FileLock::acquire_within(&path, Duration::from_secs(1));
                let ok = matches!(&r, Err(e) if e.kind() == ErrorKind::TimedOut
                    && e.to_string() == format!("lock {}: another process has held the lock for more than 1 s", path.display()))
                    && start.elapsed() < Duration::from_secs(3);
                // SAFETY: ends the forked child without running the parent's destructors.
                unsafe { nix::libc::_exit(if ok { 0 } else { 1 }) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let deadline = Instant::now() + Duration::from_secs(10);
                let status = loop {
                    match nix::sys::wait::waitpid(child, Some(nix::sys::wait::WaitPidFlag::WNOHANG)).unwrap() {
                        nix::sys::wait::WaitStatus::StillAlive if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        nix::sys::wait::WaitStatus::StillAlive => {
                            let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                            panic!("the waiter did not give up");
                        }
                        other => break other,
                    }
                };
                assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
                drop(held);
                // Free again: taken at once.
                FileLock::acquire_within(&path, Duration::from_secs(1)).unwrap();
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}
