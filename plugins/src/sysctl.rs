//! `/proc/sys` reads and writes. `/proc/sys/net` follows the network namespace of the thread
//! that opens the file, so these must run inside the namespace they are meant for.

use std::io;
use std::path::PathBuf;

/// The file behind a key given as `net/ipv4/ip_forward` or `net.ipv4.ip_forward`. Dots turn
/// into slashes only in the dotted form, so interface names with dots (`br0.100`) survive in
/// the slash form.
fn path_of(key: &str) -> PathBuf {
    let rel = if key.contains('/') { key.to_string() } else { key.replace('.', "/") };
    PathBuf::from("/proc/sys").join(rel)
}

/// Reads a sysctl, trimmed.
pub fn read(key: &str) -> io::Result<String> {
    Ok(std::fs::read_to_string(path_of(key))?.trim().to_string())
}

/// Writes a sysctl.
pub fn write(key: &str, value: &str) -> io::Result<()> {
    std::fs::write(path_of(key), value)
        .map_err(|e| io::Error::new(e.kind(), format!("write {value} to {}: {e}", path_of(key).display())))
}

/// Writes a sysctl only when it differs, so an unchanged host value is never touched (and a
/// read-only `/proc/sys` that already has the value is no error). One open serves both the read
/// and the write: each path lookup under `/proc/sys/net` costs more with every network
/// namespace on the machine.
pub fn ensure(key: &str, value: &str) -> io::Result<()> {
    use std::io::Read;
    use std::os::unix::fs::FileExt;
    let path = path_of(key);
    let mut file = match std::fs::OpenOptions::new().read(true).write(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(e),
        // Not writable (read-only /proc/sys, no permission): fine if it already holds the value.
        Err(e) => {
            return match read(key) {
                Ok(current) if current == value => Ok(()),
                _ => Err(io::Error::new(e.kind(), format!("write {value} to {}: {e}", path.display()))),
            }
        }
    };
    let mut current = String::new();
    file.read_to_string(&mut current)?;
    if current.trim() == value {
        return Ok(());
    }
    file.write_at(value.as_bytes(), 0)
        .map(|_| ())
        .map_err(|e| io::Error::new(e.kind(), format!("write {value} to {}: {e}", path.display())))
}

/// Like [`ensure`], but a key that does not exist (IPv6 disabled, an old kernel) is no error.
pub fn ensure_if_present(key: &str, value: &str) -> io::Result<()> {
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
}
