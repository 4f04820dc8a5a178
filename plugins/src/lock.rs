//! Exclusive file locks (`flock`) shared with the reference plugins' lock files.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

/// An exclusive `flock` on a file, released when dropped.
#[derive(Debug)]
pub struct FileLock {
    file: File,
}

impl FileLock {
    /// Creates `path` if needed (mode 0600) and blocks until the exclusive lock is held.
    pub fn acquire(path: &Path) -> io::Result<FileLock> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path)?;
        file.lock()?;
        Ok(FileLock { file })
    }

    /// The locked file, open for reading and writing.
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // Closing the descriptor releases the lock too; unlocking first just makes it prompt.
        let _ = self.file.unlock();
    }
}
