//! Exclusive file locks (`flock`) shared with the reference plugins' lock files.

use crate::fsutil;
use std::fs::File;
use std::io;
use std::path::Path;

/// An exclusive `flock` on a file, released when dropped.
#[derive(Debug)]
pub struct FileLock {
    file: File,
    writable: bool,
}

impl FileLock {
    /// Creates `path` if needed (mode 0600) and blocks until the exclusive lock is held. The
    /// file must be a regular file and not a symlink; on a read-only file system an existing
    /// one is locked read-only (`flock` needs no write access), see [`FileLock::writable`].
    pub fn acquire(path: &Path) -> io::Result<FileLock> {
        let (file, writable) = fsutil::open_lock(path, 0o600)?;
        file.lock()?;
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

impl Drop for FileLock {
    fn drop(&mut self) {
        // Closing the descriptor releases the lock too; unlocking first just makes it prompt.
        let _ = self.file.unlock();
    }
}
