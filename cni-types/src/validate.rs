//! Validation of names that arrive from the runtime, with the reference's codes and messages.

use crate::error::{CniError, INVALID_ENVIRONMENT_VARIABLES, INVALID_NETWORK_CONFIG, UNKNOWN_CONTAINER};

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// Whether `s` matches `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`, the pattern for IDs and network names.
fn is_cni_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Checks `CNI_CONTAINERID`.
pub fn container_id(id: &str) -> Result<(), CniError> {
    if id.is_empty() {
        return Err(CniError::new(UNKNOWN_CONTAINER, "missing containerID"));
    }
    if !is_cni_name(id) {
        return Err(CniError::with_details(INVALID_ENVIRONMENT_VARIABLES, "invalid characters in containerID", id));
    }
    Ok(())
}

/// Checks a network name.
pub fn network_name(name: &str) -> Result<(), CniError> {
    if name.is_empty() {
        return Err(CniError::new(INVALID_NETWORK_CONFIG, "missing network name"));
    }
    if !is_cni_name(name) {
        return Err(CniError::with_details(INVALID_NETWORK_CONFIG, "invalid characters found in network name", name));
    }
    Ok(())
}

/// Checks `CNI_IFNAME` with the kernel's rules (`dev_valid_name`).
pub fn interface_name(name: &str) -> Result<(), CniError> {
    let err = |msg: &str, details: String| Err(CniError::with_details(INVALID_ENVIRONMENT_VARIABLES, msg, details));
    if name.is_empty() {
        return err("interface name is empty", String::new());
    }
    if name.len() > MAX_IFNAME_LEN {
        return err(
            "interface name is too long",
            format!("interface name should be less than {} characters", MAX_IFNAME_LEN + 1),
        );
    }
    if name == "." || name == ".." {
        return err("interface name is . or ..", String::new());
    }
    if name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        return err("interface name contains / or : or whitespace characters", String::new());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids() {
        assert!(container_id("abc-1.2_3").is_ok());
        assert_eq!(container_id("").unwrap_err().code, 3);
        let e = container_id("-abc").unwrap_err();
        assert_eq!((e.code, e.msg.as_str(), e.details.as_str()), (4, "invalid characters in containerID", "-abc"));
        assert_eq!(container_id("a b").unwrap_err().code, 4);
        assert_eq!(container_id("a/b").unwrap_err().code, 4);
    }

    #[test]
    fn interface_names() {
        assert!(interface_name("eth0").is_ok());
        assert!(interface_name("a234567890123456"[..15].as_ref()).is_ok());
        let e = interface_name("a234567890123456").unwrap_err();
        assert_eq!(e.msg, "interface name is too long");
        assert_eq!(e.details, "interface name should be less than 16 characters");
        for bad in [".", "..", "a/b", "a:b", "a b", "a\tb", "a\u{a0}b"] {
            assert_eq!(interface_name(bad).unwrap_err().code, 4, "{bad:?}");
        }
        assert_eq!(interface_name("").unwrap_err().msg, "interface name is empty");
    }

    #[test]
    fn network_names() {
        assert!(network_name("my-net.1").is_ok());
        assert_eq!(network_name("").unwrap_err().msg, "missing network name");
        assert_eq!(network_name("my net").unwrap_err().details, "my net");
    }
}
