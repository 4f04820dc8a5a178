//! `CNI_ARGS`: `K=V;K=V` pairs, parsed exactly as the reference's `LoadArgs` does.
//!
//! Keys are matched case-sensitively against the names a plugin knows; a pair must split into
//! exactly two parts on `=`; unknown keys are an error unless `IgnoreUnknown` is true
//! (`1`/`true`, any case). `IgnoreUnknown` is always known.

use crate::error::{CniError, INVALID_ENVIRONMENT_VARIABLES};
use crate::version::go_quoted_list;
use std::collections::BTreeMap;

/// The key that lets unknown keys through.
pub const IGNORE_UNKNOWN: &str = "IgnoreUnknown";

fn arg_error(msg: String) -> CniError {
    CniError::new(INVALID_ENVIRONMENT_VARIABLES, msg)
}

/// Parses a Go `UnmarshallableBool`.
fn parse_bool(pair: &str, value: &str) -> Result<bool, CniError> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        _ => Err(arg_error(format!(
            "ARGS: error parsing value of pair {pair:?}: boolean unmarshal error: invalid input {value}"
        ))),
    }
}

/// Parses `CNI_ARGS` for a plugin that knows `known` keys; returns the known keys' values
/// (the last pair wins) without `IgnoreUnknown`.
pub fn parse(args: &str, known: &[&str]) -> Result<BTreeMap<String, String>, CniError> {
    let mut values = BTreeMap::new();
    if args.is_empty() {
        return Ok(values);
    }
    let mut unknown = Vec::new();
    let mut ignore_unknown = false;
    for pair in args.split(';') {
        let parts: Vec<&str> = pair.split('=').collect();
        let [key, value] = parts[..] else {
            return Err(arg_error(format!("ARGS: invalid pair {pair:?}")));
        };
        if key == IGNORE_UNKNOWN {
            ignore_unknown = parse_bool(pair, value)?;
        } else if known.contains(&key) {
            values.insert(key.to_string(), value.to_string());
        } else {
            unknown.push(pair);
        }
    }
    if !unknown.is_empty() && !ignore_unknown {
        return Err(arg_error(format!("ARGS: unknown args {}", go_quoted_list(&unknown))));
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_and_unknown_keys() {
        let v = parse("IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.0.0.5", &["IP"]).unwrap();
        assert_eq!(v.get("IP").map(String::as_str), Some("10.0.0.5"));
        assert_eq!(v.len(), 1);
        let e = parse("FOO=bar;IP=1.2.3.4", &["IP"]).unwrap_err();
        assert_eq!((e.code, e.msg.as_str()), (4, r#"ARGS: unknown args ["FOO=bar"]"#));
        assert!(parse("", &[]).unwrap().is_empty());
    }

    #[test]
    fn malformed_pairs() {
        assert_eq!(parse("IP", &["IP"]).unwrap_err().msg, r#"ARGS: invalid pair "IP""#);
        assert_eq!(parse("IP=a=b", &["IP"]).unwrap_err().msg, r#"ARGS: invalid pair "IP=a=b""#);
        assert_eq!(parse("IP=1;", &["IP"]).unwrap_err().msg, r#"ARGS: invalid pair """#);
    }

    #[test]
    fn keys_are_case_sensitive_and_ignore_unknown_is_a_bool() {
        assert!(parse("ip=1.2.3.4", &["IP"]).is_err());
        assert!(parse("IgnoreUnknown=TRUE;ip=1.2.3.4", &["IP"]).unwrap().is_empty());
        assert!(parse("IgnoreUnknown=0;ip=1.2.3.4", &["IP"]).is_err());
        let e = parse("IgnoreUnknown=yes", &[]).unwrap_err();
        assert!(e.msg.contains("boolean unmarshal error: invalid input yes"), "{}", e.msg);
        // Unknown keys before IgnoreUnknown are forgiven too: the reference decides at the end.
        assert!(parse("FOO=1;IgnoreUnknown=1", &[]).is_ok());
    }
}
