//! Network namespaces: open a netns path, check it is one, and run work inside it.
//!
//! A namespace switch is per thread; plugins are single-threaded, so the process enters the
//! container namespace, opens what it needs there (a netlink socket stays bound to the
//! namespace it was created in) and switches back at once. [`NetNs::run`] restores the
//! original namespace on every path, including early returns and errors.

use nix::sched::{setns, CloneFlags};
use nix::sys::statfs::{fstatfs, FsType};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// statfs magic of nsfs (bind-mounted namespace files, /proc/<pid>/ns/net on modern kernels).
const NSFS_MAGIC: i64 = 0x6e73_6673;
/// statfs magic of procfs (/proc/<pid>/ns/net on old kernels).
const PROC_SUPER_MAGIC: i64 = 0x9fa0;

/// Why a namespace path could not be used.
#[derive(Debug, thiserror::Error)]
pub enum NsError {
    /// The path does not exist (DEL treats this as already cleaned up).
    #[error("failed to open netns {0:?}: no such file or directory")]
    NotExist(PathBuf),
    /// The path exists but is not a namespace file.
    #[error("{0:?} is not a network namespace (filesystem magic {1:#x})")]
    NotNs(PathBuf, i64),
    /// Any other failure, with the operation that failed.
    #[error("{op} netns {path:?}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The namespace path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// An open network namespace.
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
}

fn fs_magic(t: FsType) -> i64 {
    // FsType wraps the platform's f_type; widening to i64 keeps the constants comparable.
    #[allow(clippy::unnecessary_cast)]
    {
        t.0 as i64
    }
}

impl NetNs {
    /// Opens `path` and checks that it is a namespace file.
    pub fn open(path: impl AsRef<Path>) -> Result<NetNs, NsError> {
        let path = path.as_ref().to_path_buf();
        // O_NONBLOCK: a FIFO named as the namespace must not hang the open; fstatfs below
        // refuses anything that is not a namespace file.
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_NONBLOCK).open(&path)
        }
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => NsError::NotExist(path.clone()),
            _ => NsError::Io { op: "open", path: path.clone(), source: e },
        })?;
        let magic = fstatfs(&file).map(|s| fs_magic(s.filesystem_type())).map_err(|e| NsError::Io {
            op: "statfs",
            path: path.clone(),
            source: e.into(),
        })?;
        if magic != NSFS_MAGIC && magic != PROC_SUPER_MAGIC {
            return Err(NsError::NotNs(path, magic));
        }
        Ok(NetNs { file, path })
    }

    /// The namespace the calling thread is in now.
    pub fn current() -> Result<NetNs, NsError> {
        NetNs::open("/proc/thread-self/ns/net")
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open namespace file (e.g. for `IFLA_NET_NS_FD`).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Runs `work` inside this namespace and switches back afterwards, whatever `work` returns.
    pub fn run<T>(&self, work: impl FnOnce() -> T) -> Result<T, NsError> {
        let origin = NetNs::current()?;
        setns(&self.file, CloneFlags::CLONE_NEWNET).map_err(|e| NsError::Io {
            op: "enter",
            path: self.path.clone(),
            source: e.into(),
        })?;
        let _back = Restore(origin);
        Ok(work())
    }
}

/// Switches the thread back to its original namespace when dropped.
struct Restore(NetNs);

impl Drop for Restore {
    fn drop(&mut self) {
        if let Err(e) = setns(&self.0.file, CloneFlags::CLONE_NEWNET) {
            // Continuing in the wrong namespace would touch the container instead of the host.
            log::error!("cannot return to netns {:?}: {e}; aborting", self.0.path);
            std::process::abort();
        }
    }
}
