//! Files opened as what they must be: the one place the plugins open a file whose path comes
//! from a configuration, the environment or a directory anyone else may write (the host-local
//! store).
//!
//! Every open is `O_NONBLOCK`, so a FIFO planted where a file should be cannot hang the plugin
//! in `open` (the flag is irrelevant for the regular files that pass); the type is checked with
//! `fstat` on the open descriptor, so what is read or written is a regular file and never a
//! FIFO, socket or device such as `/dev/zero`; reads stop at a stated bound. Files inside the
//! store are opened `O_NOFOLLOW` and written in place only when they have one link, so a
//! planted symlink or hard link cannot redirect a write. Paths an administrator names in a
//! configuration (`resolvConf`, `CNI_LOG_FILE`) may be symlinks (`/etc/resolv.conf` often is),
//! but what they lead to must still be a regular file.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// The most a small file (a reservation, a `last_reserved_ip` hint, a resolv.conf) may hold:
/// real ones are a few dozen bytes to a few KiB, so anything bigger is refused, not read.
pub const SMALL_FILE_MAX: u64 = 1 << 20;

/// Whether the last component of a path may be a symbolic link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// Refused (`O_NOFOLLOW`): files of a store the plugin owns.
    Refuse,
    /// Followed: paths an administrator names in a configuration.
    Follow,
}

fn flags(links: Links) -> i32 {
    let nofollow = if links == Links::Refuse { nix::libc::O_NOFOLLOW } else { 0 };
    nix::libc::O_NONBLOCK | nofollow
}

/// What a file that is not a regular file is, for error messages.
fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

fn refused(path: &Path, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(ErrorKind::InvalidInput, format!("{}: {what}", path.display()))
}

/// Names the errors an `O_NOFOLLOW | O_NONBLOCK` open gives for the wrong kind of file.
fn open_error(path: &Path, e: io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(nix::libc::ELOOP) => refused(path, "is a symbolic link, not a regular file (refused)"),
        // O_WRONLY | O_NONBLOCK on a FIFO without a reader.
        Some(nix::libc::ENXIO) => refused(path, "is a FIFO or device, not a regular file (refused)"),
        _ => e,
    }
}

/// Opens with `opts` plus `O_NONBLOCK` (and `O_NOFOLLOW` for [`Links::Refuse`]), then checks
/// on the descriptor that it is a regular file.
fn open_regular(path: &Path, opts: &mut OpenOptions, links: Links) -> io::Result<File> {
    let file = opts.custom_flags(flags(links)).open(path).map_err(|e| open_error(path, e))?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(refused(path, format_args!("is {}, not a regular file (refused)", kind_of(&meta))));
    }
    Ok(file)
}

/// Opens an existing regular file for reading.
pub fn open_read(path: &Path, links: Links) -> io::Result<File> {
    open_regular(path, OpenOptions::new().read(true), links)
}

/// Reads an open file to its end, refusing one longer than `limit` bytes. A first short read
/// of up to 512 bytes ends it, so a small file costs one `read`.
pub fn read_to_end_bounded(path: &Path, file: &mut File, limit: u64) -> io::Result<Vec<u8>> {
    let mut buf = [0u8; 512];
    let n = file.read(&mut buf)?;
    let mut out = buf[..n].to_vec();
    if n == buf.len() {
        file.take(limit.saturating_sub(n as u64).saturating_add(1)).read_to_end(&mut out)?;
    }
    if out.len() as u64 > limit {
        return Err(refused(path, format_args!("is larger than {limit} bytes (refused)")));
    }
    Ok(out)
}

/// Reads an open file from its start with `pread` (its position untouched), refusing one longer
/// than `limit` bytes. Memory grows with what is read, never with the size the file claims.
pub fn read_all_at_bounded(file: &File, limit: u64) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = file.read_at(&mut chunk, out.len() as u64)?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&chunk[..n]);
        if out.len() as u64 > limit {
            return Err(io::Error::new(ErrorKind::InvalidData, format!("larger than {limit} bytes (refused)")));
        }
    }
}

/// Reads a regular file of at most `limit` bytes.
pub fn read_bounded(path: &Path, links: Links, limit: u64) -> io::Result<Vec<u8>> {
    let mut file = open_read(path, links)?;
    read_to_end_bounded(path, &mut file, limit)
}

/// Reads the last `max` bytes of an open file (the tail of a log).
pub fn read_tail_of(file: &mut File, max: u64) -> io::Result<Vec<u8>> {
    use std::io::{Seek, SeekFrom};
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(max)))?;
    let mut out = Vec::new();
    file.take(max).read_to_end(&mut out)?;
    Ok(out)
}

/// Creates `path` afresh and empty (mode `mode`): whatever had the name is unlinked first,
/// never followed, then the file is made as [`create_new`] does.
pub fn create_fresh(path: &Path, mode: u32) -> io::Result<File> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    create_new(path, &[], mode)
}

/// Replaces `path` with `content` (mode `mode`) by renaming a fresh `<name>.tmp` over it, so a
/// reader sees the old file or the new one whole; a failed write leaves no temporary file.
pub fn replace(path: &Path, content: &[u8], mode: u32) -> io::Result<()> {
    let mut name = path.file_name().map(std::ffi::OsString::from).unwrap_or_default();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let mut file = create_fresh(&tmp, mode)?;
    let written = file.write_all(content).and_then(|()| {
        drop(file);
        std::fs::rename(&tmp, path)
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Creates `path` (mode `mode`), failing if anything at all is there, symlinks included
/// (`O_EXCL` never follows), and writes `content`. A write that fails (a full disk) removes
/// the file again, so nothing half-written or empty is left.
pub fn create_new(path: &Path, content: &[u8], mode: u32) -> io::Result<File> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(flags(Links::Refuse))
        .open(path)
        .map_err(|e| open_error(path, e))?;
    if let Err(e) = file.write_all(content) {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(file)
}

/// Replaces the content of the regular file at `path` in place, creating it (mode `mode`) when
/// missing. A symlink, a non-regular file, or a file with a second hard link is refused before
/// anything is written, so the write cannot land in another file. The new bytes go over the
/// old ones before the length is set: rewriting a short file needs no new block, so a full
/// disk leaves the old content rather than an empty file.
pub fn write_in_place(path: &Path, content: &[u8], mode: u32) -> io::Result<File> {
    use std::os::unix::fs::FileExt;
    let file =
        open_regular(path, OpenOptions::new().write(true).create(true).truncate(false).mode(mode), Links::Refuse)?;
    if file.metadata()?.nlink() > 1 {
        return Err(refused(path, "has more than one hard link (refused)"));
    }
    file.write_all_at(content, 0)?;
    file.set_len(content.len() as u64)?;
    Ok(file)
}

/// Opens (creating, mode `mode`) the lock file of a store for reading and writing, or only for
/// reading when the file system or permissions allow no more (a read-only `dataDir` still
/// allows CHECK). Returns the file and whether it is writable.
pub fn open_lock(path: &Path, mode: u32) -> io::Result<(File, bool)> {
    let rw = open_regular(
        path,
        OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(mode),
        Links::Refuse,
    );
    match rw {
        Ok(file) => Ok((file, true)),
        Err(e) if matches!(e.raw_os_error(), Some(nix::libc::EROFS | nix::libc::EACCES)) => {
            match open_read(path, Links::Refuse) {
                Ok(file) => Ok((file, false)),
                // No lock file on a read-only store: report why it could not be made.
                Err(r) if r.kind() == ErrorKind::NotFound => Err(e),
                Err(r) => Err(r),
            }
        }
        Err(e) => Err(e),
    }
}

/// Opens a log file for appending, creating it (mode 0600); it must be a regular file.
pub fn open_append(path: &Path) -> io::Result<File> {
    open_regular(path, OpenOptions::new().append(true).create(true).mode(0o600), Links::Follow)
}

/// Makes sure `parent/name` is a directory, creating `parent` as needed (its existing
/// components may be symlinks an administrator set up) and `name` itself with `mode`. `name`
/// must be one path component, and is refused when it is a symlink or anything but a directory.
pub fn ensure_dir(parent: &Path, name: &str, mode: u32) -> io::Result<()> {
    let dir = parent.join(name);
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(refused(&dir, "is not a single path component (refused)"));
    }
    DirBuilder::new().recursive(true).mode(mode).create(parent)?;
    match DirBuilder::new().mode(mode).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    check_dir(&dir)
}

/// Checks that `dir` itself (not what a symlink there leads to) is a directory.
pub fn check_dir(dir: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.file_type().is_dir() {
        return Err(refused(dir, format_args!("is {}, not a directory (refused)", kind_of(&meta))));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_at_the_start_up_to_a_bound() {
        let dir = std::env::temp_dir().join(format!("fsutil-at-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        std::fs::write(&path, vec![b'a'; 100_000]).unwrap();
        let mut file = File::open(&path).unwrap();
        let mut first = [0u8; 10];
        file.read_exact(&mut first).unwrap();
        assert_eq!(read_all_at_bounded(&file, 100_000).unwrap().len(), 100_000);
        assert!(read_all_at_bounded(&file, 99_999).unwrap_err().to_string().contains("larger than 99999"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    struct Tmp(PathBuf);
    impl Tmp {
        fn new(tag: &str) -> Tmp {
            let p = std::env::temp_dir().join(format!("fsutil-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Tmp(p)
        }
    }
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn fifo(path: &Path) {
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    }

    #[test]
    fn reads_regular_files_and_refuses_the_rest_fast() {
        let t = Tmp::new("read");
        let file = t.0.join("f");
        std::fs::write(&file, "x".repeat(600)).unwrap();
        assert_eq!(read_bounded(&file, Links::Refuse, 600).unwrap().len(), 600);
        let err = read_bounded(&file, Links::Refuse, 599).unwrap_err().to_string();
        assert!(err.contains("larger than 599 bytes"), "{err}");
        std::fs::write(&file, "short").unwrap();
        assert_eq!(read_bounded(&file, Links::Refuse, SMALL_FILE_MAX).unwrap(), b"short");

        let link = t.0.join("link");
        symlink(&file, &link).unwrap();
        let err = read_bounded(&link, Links::Refuse, SMALL_FILE_MAX).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert_eq!(read_bounded(&link, Links::Follow, SMALL_FILE_MAX).unwrap(), b"short");

        let start = Instant::now();
        let pipe = t.0.join("fifo");
        fifo(&pipe);
        let err = read_bounded(&pipe, Links::Follow, SMALL_FILE_MAX).unwrap_err().to_string();
        assert!(err.contains("is a FIFO"), "{err}");
        for dev in ["/dev/zero", "/dev/urandom"] {
            let err = read_bounded(Path::new(dev), Links::Follow, SMALL_FILE_MAX).unwrap_err().to_string();
            assert!(err.contains("character device"), "{err}");
        }
        let to_dev = t.0.join("to-zero");
        symlink("/dev/zero", &to_dev).unwrap();
        assert!(read_bounded(&to_dev, Links::Follow, SMALL_FILE_MAX).is_err());
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn writes_never_go_through_links_or_into_fifos() {
        let t = Tmp::new("write");
        let victim = t.0.join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let link = t.0.join("link");
        symlink(&victim, &link).unwrap();
        assert!(write_in_place(&link, b"x", 0o600).unwrap_err().to_string().contains("symbolic link"));
        assert!(create_new(&link, b"x", 0o600).is_err());
        assert!(open_lock(&link, 0o600).unwrap_err().to_string().contains("symbolic link"));
        let hard = t.0.join("hard");
        std::fs::hard_link(&victim, &hard).unwrap();
        assert!(write_in_place(&hard, b"x", 0o600).unwrap_err().to_string().contains("hard link"));
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");

        let pipe = t.0.join("fifo");
        fifo(&pipe);
        assert!(write_in_place(&pipe, b"x", 0o600).is_err());
        assert!(open_lock(&pipe, 0o600).unwrap_err().to_string().contains("FIFO"));

        assert!(open_append(&pipe).unwrap_err().to_string().contains("FIFO"), "a log FIFO without reader");
        let log = t.0.join("log");
        open_append(&log).unwrap().write_all(b"a").unwrap();
        open_append(&log).unwrap().write_all(b"b").unwrap();
        assert_eq!(std::fs::read(&log).unwrap(), b"ab");

        let fresh = t.0.join("fresh");
        write_in_place(&fresh, b"longer content", 0o600).unwrap();
        write_in_place(&fresh, b"short", 0o600).unwrap();
        assert_eq!(std::fs::read(&fresh).unwrap(), b"short");
        assert!(create_new(&fresh, b"x", 0o600).is_err());
    }

    #[test]
    fn directories_are_created_but_not_through_symlinks() {
        let t = Tmp::new("dir");
        ensure_dir(&t.0.join("a/b"), "net", 0o755).unwrap();
        assert!(t.0.join("a/b/net").is_dir());
        ensure_dir(&t.0.join("a/b"), "net", 0o755).unwrap();
        std::fs::create_dir(t.0.join("elsewhere")).unwrap();
        symlink(t.0.join("elsewhere"), t.0.join("a/b/planted")).unwrap();
        let err = ensure_dir(&t.0.join("a/b"), "planted", 0o755).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert!(ensure_dir(&t.0, "..", 0o755).is_err());
        // An administrator's symlink above the store is followed.
        symlink(t.0.join("elsewhere"), t.0.join("data")).unwrap();
        ensure_dir(&t.0.join("data"), "net", 0o755).unwrap();
        assert!(t.0.join("elsewhere/net").is_dir());
    }
}
