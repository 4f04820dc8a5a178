//! The reference's naming helpers, shared by every backend: the sha512 hex prefixes its chain
//! names and comments are built from, and Go's `%q` quoting its comments and messages use.

use sha2::{Digest, Sha512};
use std::fmt::Write as _;

/// The first `len` lowercase hex digits of sha512(`data`), the reference's `MustFormatHashWithPrefix`.
pub fn sha512_hex(data: &str, len: usize) -> String {
    let digest = Sha512::digest(data.as_bytes());
    let mut hex = String::with_capacity(128);
    for byte in digest {
        let _ = write!(hex, "{byte:02x}");
    }
    hex.truncate(len);
    hex
}

/// Quotes like Go's `%q`, which the reference uses in comments and error texts.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Reverses [`go_quote`] for the escapes it produces; `None` if `s` is not one quoted string.
pub fn go_unquote(s: &str) -> Option<String> {
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return None,
            '\\' => match chars.next()? {
                '"' => out.push('"'),
                '\\' => out.push('\\'),
                'a' => out.push('\u{7}'),
                'b' => out.push('\u{8}'),
                'f' => out.push('\u{c}'),
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                'v' => out.push('\u{b}'),
                'x' => out.push(hex_char(&mut chars, 2)?),
                'u' => out.push(hex_char(&mut chars, 4)?),
                'U' => out.push(hex_char(&mut chars, 8)?),
                _ => return None,
            },
            c => out.push(c),
        }
    }
    Some(out)
}

fn hex_char(chars: &mut std::str::Chars, digits: usize) -> Option<char> {
    let hex: String = chars.by_ref().take(digits).collect();
    if hex.len() != digits {
        return None;
    }
    char::from_u32(u32::from_str_radix(&hex, 16).ok()?)
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary, as the
/// reference's comments are cut (iptables' 255-byte comment match, nft's 128-byte comments).
pub fn cut_at_char_boundary(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_like_the_reference() {
        assert_eq!(sha512_hex("specnetctr1", 24), "47b0c350c56dfce277c5b5d1");
        assert_eq!(sha512_hex("specnet", 16), "56ecd7e6189379d3");
    }

    #[test]
    fn cuts_at_a_character_boundary() {
        assert_eq!(cut_at_char_boundary("abc", 5), "abc");
        assert_eq!(cut_at_char_boundary("abcé", 4), "abc");
        assert_eq!(cut_at_char_boundary("abcé", 5), "abcé");
    }

    #[test]
    fn quotes_like_go() {
        assert_eq!(go_quote("a\"b\\c\n\u{1}é"), r#""a\"b\\c\n\x01é""#);
        for s in ["", "plain", "a\"b\\c\n\u{1}é\u{85}"] {
            assert_eq!(go_unquote(&go_quote(s)).as_deref(), Some(s));
        }
        assert_eq!(go_unquote("\"open"), None);
        assert_eq!(go_unquote(r#""a"b""#), None);
    }
}
