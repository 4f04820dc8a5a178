//! The `resolvConf` option: a resolv.conf file turned into the result's `dns`.

use crate::fsutil::{self, Links};
use cni_types::Dns;
use std::path::Path;

/// Parses resolv.conf text as the reference does: every `nameserver`, the last `domain`, all
/// `search` and `options` words appended; comments (`#`, `;`) and one-word lines ignored.
pub fn parse_resolv_conf(text: &str) -> Dns {
    let mut dns = Dns::default();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [keyword, first, ..] = fields[..] else {
            continue;
        };
        let words = fields[1..].iter().map(|w| w.to_string());
        match keyword {
            // Only the first word: that is what the reference keeps of a nameserver line.
            "nameserver" => dns.nameservers.push(first.to_string()),
            "domain" => dns.domain = first.to_string(),
            "search" => dns.search.extend(words),
            "options" => dns.options.extend(words),
            _ => {}
        }
    }
    dns
}

/// Reads and parses the resolv.conf at `path`: a regular file (a symlink to one is fine, as
/// `/etc/resolv.conf` often is) of at most [`fsutil::SMALL_FILE_MAX`] bytes.
pub fn read_resolv_conf(path: &Path) -> Result<Dns, String> {
    let bytes = fsutil::read_bounded(path, Links::Follow, fsutil::SMALL_FILE_MAX)
        .map_err(|e| format!("failed to read resolvConf {}: {e}", path.display()))?;
    Ok(parse_resolv_conf(&String::from_utf8_lossy(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_the_reference() {
        let dns = parse_resolv_conf(
            "# comment\n; other comment\nnameserver 10.0.0.1\nnameserver  fd00::53 extra\n\
             domain a.example\ndomain b.example\nsearch x.example y.example\nsearch z.example\n\
             options ndots:2 timeout:1\noptions rotate\n  nameserver\t10.0.0.2  \nsortlist 1.2.3.4\nbogus\n\n",
        );
        assert_eq!(dns.nameservers, ["10.0.0.1", "fd00::53", "10.0.0.2"]);
        assert_eq!(dns.domain, "b.example");
        assert_eq!(dns.search, ["x.example", "y.example", "z.example"]);
        assert_eq!(dns.options, ["ndots:2", "timeout:1", "rotate"]);
    }

    #[test]
    fn empty_file_gives_empty_dns() {
        assert!(parse_resolv_conf("").is_empty());
        assert!(parse_resolv_conf("nameserver\n#nameserver 1.1.1.1\n").is_empty());
    }

    #[test]
    fn devices_and_fifos_are_refused_at_once() {
        for dev in ["/dev/zero", "/dev/urandom"] {
            let err = read_resolv_conf(Path::new(dev)).unwrap_err();
            assert!(err.contains("character device, not a regular file"), "{err}");
        }
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = read_resolv_conf(Path::new("/nonexistent/resolv.conf")).unwrap_err();
        assert!(err.starts_with("failed to read resolvConf /nonexistent/resolv.conf: "), "{err}");
    }
}
