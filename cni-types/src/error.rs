//! The error object every plugin prints on failure, and the spec's well-known codes.

use serde::{Deserialize, Serialize};

/// Incompatible CNI version.
pub const INCOMPATIBLE_CNI_VERSION: u32 = 1;
/// Unsupported field in the network configuration; the message names key and value.
pub const UNSUPPORTED_FIELD: u32 = 2;
/// Container unknown or does not exist.
pub const UNKNOWN_CONTAINER: u32 = 3;
/// Missing or invalid `CNI_*` environment variables; the message names them.
pub const INVALID_ENVIRONMENT_VARIABLES: u32 = 4;
/// I/O failure, e.g. reading stdin.
pub const IO_FAILURE: u32 = 5;
/// Content could not be decoded (JSON, version strings).
pub const DECODING_FAILURE: u32 = 6;
/// The network configuration is invalid.
pub const INVALID_NETWORK_CONFIG: u32 = 7;
/// `CNI_NETNS` is the plugin's own network namespace (library extension of the Go skeleton).
pub const INVALID_NETNS: u32 = 8;
/// A transient condition; the runtime should retry.
pub const TRY_AGAIN_LATER: u32 = 11;
/// STATUS: the plugin cannot service ADD.
pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
/// STATUS: not available, and existing containers may have limited connectivity.
pub const LIMITED_CONNECTIVITY: u32 = 51;
/// Any other failure; the code the reference skeleton gives untyped errors.
pub const INTERNAL: u32 = 999;

/// A CNI error: `{"code", "msg", "details"}` on stdout with a non-zero exit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct CniError {
    /// Spec error code (0–99 well-known, 100+ plugin specific, 999 internal).
    #[serde(default)]
    pub code: u32,
    /// Short description.
    #[serde(default)]
    pub msg: String,
    /// Longer description; omitted from JSON when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.details.is_empty() {
            f.write_str(&self.msg)
        } else {
            write!(f, "{}; {}", self.msg, self.details)
        }
    }
}

impl CniError {
    /// An error with a code and message and no details.
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError { code, msg: msg.into(), details: String::new() }
    }

    /// An error with a code, message and details.
    pub fn with_details(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError { code, msg: msg.into(), details: details.into() }
    }

    /// An operational failure (code 999), as the reference reports them.
    pub fn internal(msg: impl std::fmt::Display) -> Self {
        CniError::new(INTERNAL, msg.to_string())
    }

    /// An invalid network configuration (code 7).
    pub fn invalid_config(msg: impl std::fmt::Display) -> Self {
        CniError::new(INVALID_NETWORK_CONFIG, msg.to_string())
    }

    /// Prefixes the message with context, keeping code and details.
    pub fn context(mut self, ctx: impl std::fmt::Display) -> Self {
        self.msg = format!("{ctx}: {}", self.msg);
        self
    }

    /// The JSON object a plugin prints; `cni_version` is included when known, as the spec shows.
    pub fn to_json(&self, cni_version: Option<&str>) -> serde_json::Value {
        let mut obj = serde_json::Map::new();
        if let Some(v) = cni_version {
            obj.insert("cniVersion".into(), v.into());
        }
        obj.insert("code".into(), self.code.into());
        obj.insert("msg".into(), self.msg.clone().into());
        if !self.details.is_empty() {
            obj.insert("details".into(), self.details.clone().into());
        }
        serde_json::Value::Object(obj)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_json_follow_the_reference() {
        let e =
            CniError::with_details(4, "interface name is too long", "interface name should be less than 16 characters");
        assert_eq!(e.to_string(), "interface name is too long; interface name should be less than 16 characters");
        let j = e.to_json(Some("1.1.0"));
        assert_eq!(j["code"], 4);
        assert_eq!(j["cniVersion"], "1.1.0");
        let plain = CniError::new(7, "missing network name").to_json(None);
        assert!(plain.get("details").is_none() && plain.get("cniVersion").is_none());
    }

    #[test]
    fn error_objects_parse_from_other_plugins() {
        let e: CniError = serde_json::from_str(r#"{"code":999,"msg":"boom","cniVersion":"1.0.0"}"#).unwrap();
        assert_eq!(e, CniError::new(999, "boom"));
    }
}
