//! The bounds on what a runtime may hand a plugin, so that no input costs unbounded memory or
//! time. Each is far above what a runtime sends (podman's `-p 1-65535` is 65535 mappings, about
//! 5 MB of JSON with its `prevResult`) and each is refused with code 7 and a message that names it.
//! README "Limits" lists them.

use crate::error::{CniError, INVALID_NETWORK_CONFIG};

/// Most bytes of configuration read from stdin (8 MiB).
pub const MAX_CONFIG_BYTES: usize = 8 << 20;

/// Most JSON values (scalars, arrays, objects) one configuration may hold: a 10-million-element
/// array in a key no plugin reads must not become 10 million decoded values.
pub const MAX_CONFIG_VALUES: usize = 1 << 20;

/// Most port mappings one `portMappings` list may hold: one per port of one protocol (65536).
pub const MAX_PORT_MAPPINGS: usize = 1 << 16;

fn too_big(what: String) -> CniError {
    CniError::new(INVALID_NETWORK_CONFIG, what)
}

/// Refuses a configuration longer than [`MAX_CONFIG_BYTES`] or holding more than
/// [`MAX_CONFIG_VALUES`] values, before any of it is decoded (one pass over the bytes, no allocation).
pub fn config_size(raw: &[u8]) -> Result<(), CniError> {
    if raw.len() > MAX_CONFIG_BYTES {
        return Err(too_big(format!("network configuration too large: more than {MAX_CONFIG_BYTES} bytes")));
    }
    let values = count_values(raw);
    if values > MAX_CONFIG_VALUES {
        return Err(too_big(format!(
            "network configuration too large: {values} JSON values, at most {MAX_CONFIG_VALUES} are accepted"
        )));
    }
    Ok(())
}

/// An upper bound on the number of values in a JSON text: one per `[`, `{`, `,` and `:` outside
/// strings, plus one. Malformed text gets some count; the parser refuses it afterwards.
pub fn count_values(raw: &[u8]) -> usize {
    let mut count = 1;
    let mut in_string = false;
    let mut escaped = false;
    for &b in raw {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else {
            match b {
                b'"' => in_string = true,
                b'[' | b'{' | b',' | b':' => count += 1,
                _ => {}
            }
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_values_outside_strings() {
        assert_eq!(count_values(b"{}"), 2);
        assert_eq!(count_values(br#"{"a":[1,2,3]}"#), 6);
        assert_eq!(count_values(br#"{"a":"[,,,:\",{"}"#), 3);
    }

    #[test]
    fn refuses_what_is_too_big() {
        let mut junk = b"{\"name\":\"n\",\"junk\":[".to_vec();
        junk.extend(std::iter::repeat_n(b"0,".as_slice(), MAX_CONFIG_VALUES).flatten());
        junk.extend(b"0]}");
        let e = config_size(&junk).unwrap_err();
        assert_eq!(e.code, 7);
        assert!(e.msg.starts_with("network configuration too large:"), "{}", e.msg);
        let long = vec![b' '; MAX_CONFIG_BYTES + 1];
        assert!(config_size(&long).unwrap_err().msg.contains("more than 8388608 bytes"));
        assert!(config_size(br#"{"name":"n"}"#).is_ok());
    }
}
