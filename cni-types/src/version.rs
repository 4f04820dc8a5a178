//! The released spec versions, their parsing and ordering, and the VERSION answer.

use crate::error::{CniError, DECODING_FAILURE, INCOMPATIBLE_CNI_VERSION};

/// The spec version plugins of this workspace build their results in.
pub const CURRENT: &str = "1.1.0";

/// Every released spec version, oldest first.
pub const ALL: &[&str] = &["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A parsed `major.minor.patch` version, ordered numerically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u64, pub u64, pub u64);

impl Version {
    /// Parses `1`, `1.0` or `1.0.0` as the Go library does (missing parts are zero).
    pub fn parse(s: &str) -> Result<Version, CniError> {
        let bad = || {
            CniError::new(
                DECODING_FAILURE,
                format!("invalid version {s:?}: the version is empty or has too many parts"),
            )
        };
        let mut parts = [0u64; 3];
        let fields: Vec<&str> = s.split('.').collect();
        if s.is_empty() || fields.len() > 3 {
            return Err(bad());
        }
        for (slot, field) in parts.iter_mut().zip(&fields) {
            *slot = field.parse::<u64>().map_err(|_| {
                CniError::new(DECODING_FAILURE, format!("failed to convert version part {field:?} of {s:?}"))
            })?;
        }
        Ok(Version(parts[0], parts[1], parts[2]))
    }

    /// Whether `s` is at least `min` (both parsed; errors are decoding failures).
    pub fn at_least(s: &str, min: &str) -> Result<bool, CniError> {
        Ok(Version::parse(s)? >= Version::parse(min)?)
    }
}

/// Formats a list the way Go's `%q` formats a string slice: `["0.1.0" "0.2.0"]`.
pub fn go_quoted_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(" "))
}

/// Checks that a config version is one the plugin supports, exactly as the reference reconciler.
pub fn reconcile(config_version: &str, supported: &[&str]) -> Result<(), CniError> {
    if supported.contains(&config_version) {
        return Ok(());
    }
    Err(CniError::with_details(
        INCOMPATIBLE_CNI_VERSION,
        "incompatible CNI versions",
        format!("config is {config_version:?}, plugin supports {}", go_quoted_list(supported)),
    ))
}

/// The JSON a plugin prints for VERSION.
pub fn version_info(cni_version: &str, supported: &[&str]) -> serde_json::Value {
    serde_json::json!({ "cniVersion": cni_version, "supportedVersions": supported })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordering_is_numeric() {
        assert!(Version::parse("0.10.0").unwrap() > Version::parse("0.4.0").unwrap());
        assert!(Version::at_least("1.1.0", "1.1.0").unwrap());
        assert!(!Version::at_least("0.3.1", "0.4.0").unwrap());
        assert_eq!(Version::parse("1").unwrap(), Version(1, 0, 0));
        assert_eq!(Version::parse("x.1").unwrap_err().code, DECODING_FAILURE);
        assert_eq!(Version::parse("").unwrap_err().code, DECODING_FAILURE);
    }

    #[test]
    fn reconcile_reports_like_the_reference() {
        let e = reconcile("0.3.2", ALL).unwrap_err();
        assert_eq!(e.code, 1);
        assert_eq!(
            e.details,
            r#"config is "0.3.2", plugin supports ["0.1.0" "0.2.0" "0.3.0" "0.3.1" "0.4.0" "1.0.0" "1.1.0"]"#
        );
        assert!(reconcile("0.4.0", ALL).is_ok());
    }
}
