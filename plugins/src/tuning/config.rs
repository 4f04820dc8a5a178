//! The tuning configuration: the reference's keys and precedence, every value checked before
//! anything changes (wave2-anchors §1.5).
//!
//! Precedence, as the reference: `mac` < CNI_ARGS `MAC` < `runtimeConfig.mac` < `args.cni.mac`;
//! `args.cni.{promisc,mtu,allmulti,txQLen}` override the top-level keys; `args.cni.sysctl` is merged
//! over `sysctl`.

use crate::errors::Ctx;
use cni_types::error::{DECODING_FAILURE, INVALID_NETWORK_CONFIG};
use cni_types::{gojson, CmdArgs, CniError};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Where backups go unless `dataDir` says otherwise (tmpfs: they die with a reboot, as do links).
pub const DEFAULT_DATA_DIR: &str = "/run/cni/tuning";
/// The sysctl allowlist: one regular expression a line; no file means every net sysctl is allowed.
pub const ALLOWLIST: &str = "/etc/cni/tuning/allowlist.conf";
/// Largest allowlist read; a real one is a few lines.
const ALLOWLIST_MAX: u64 = 1 << 20;

/// One sysctl to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysctl {
    /// The key as configured (what the allowlist is matched against).
    pub key: String,
    /// The file below `/proc/sys`, slash-separated, `IFNAME` substituted.
    pub rel: String,
    /// The value, written as given.
    pub value: String,
}

/// A MAC address as configured, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mac {
    /// The address bytes (6, 8 or 20 of them, as Go's `net.ParseMAC` accepts).
    pub bytes: Vec<u8>,
}

impl Mac {
    /// Lower-case, colon-separated: what the kernel reports and the result carries.
    pub fn text(&self) -> String {
        format_mac(&self.bytes)
    }
}

/// Formats hardware address bytes as `aa:bb:…`.
pub fn format_mac(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// A validated tuning configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TuningConf {
    /// Network name (tags the backups for GC).
    pub network: String,
    /// Directory of the backups.
    pub data_dir: PathBuf,
    /// Sysctls in configuration order (`args.cni.sysctl` replacing same-file entries in place).
    pub sysctls: Vec<Sysctl>,
    /// New MAC address.
    pub mac: Option<Mac>,
    /// Turn promiscuous mode on (off is never applied, as in the reference).
    pub promisc: bool,
    /// New MTU.
    pub mtu: Option<u32>,
    /// Turn all-multicast on or off.
    pub allmulti: Option<bool>,
    /// New transmit queue length.
    pub txqlen: Option<u32>,
}

impl TuningConf {
    /// Whether any link attribute changes (and so a backup is due).
    pub fn changes_link(&self) -> bool {
        self.mac.is_some() || self.promisc || self.mtu.is_some() || self.allmulti.is_some() || self.txqlen.is_some()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Raw {
    #[serde(rename = "dataDir")]
    data_dir: String,
    sysctl: Option<Map<String, Value>>,
    mac: String,
    promisc: bool,
    mtu: i64,
    #[serde(rename = "txQLen")]
    txqlen: Option<i64>,
    allmulti: Option<bool>,
    #[serde(rename = "runtimeConfig")]
    runtime_config: RawRuntime,
    args: RawArgs,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawRuntime {
    mac: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawArgs {
    cni: RawCniArgs,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawCniArgs {
    sysctl: Option<Map<String, Value>>,
    mac: Option<String>,
    promisc: Option<bool>,
    mtu: Option<i64>,
    allmulti: Option<bool>,
    #[serde(rename = "txQLen")]
    txqlen: Option<i64>,
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(INVALID_NETWORK_CONFIG, msg)
}

fn decode(args: &CmdArgs) -> Result<Raw, CniError> {
    gojson::from_value(args.config.clone())
        .map_err(|e| CniError::new(DECODING_FAILURE, format!("failed to load netconf: {e}")))
}

fn data_dir_of(raw: &Raw) -> Result<PathBuf, CniError> {
    if raw.data_dir.is_empty() {
        return Ok(PathBuf::from(DEFAULT_DATA_DIR));
    }
    if raw.data_dir.contains('\0') || !Path::new(&raw.data_dir).is_absolute() {
        return Err(invalid(format!("dataDir {:?} must be an absolute path", raw.data_dir)));
    }
    Ok(PathBuf::from(&raw.data_dir))
}

/// Only `dataDir`: what DEL and GC need, so they work whatever else the configuration holds.
pub fn data_dir(args: &CmdArgs) -> Result<PathBuf, CniError> {
    data_dir_of(&decode(args)?)
}

/// Decodes and checks the whole configuration for ADD and CHECK, `CNI_ARGS` included.
pub fn parse(args: &CmdArgs) -> Result<TuningConf, CniError> {
    check_duplicate_keys(&args.stdin)?;
    let raw = decode(args)?;
    let data_dir = data_dir_of(&raw)?;

    let mut mac = raw.mac.clone();
    let env = cni_types::args::parse(&args.args, &["MAC"])?;
    if let Some(m) = env.get("MAC").filter(|m| !m.is_empty()) {
        mac = m.clone();
    }
    if !raw.runtime_config.mac.is_empty() {
        mac = raw.runtime_config.mac.clone();
    }
    let cni = &raw.args.cni;
    let mut from_args = false;
    if let Some(m) = &cni.mac {
        mac = m.clone();
        from_args = true;
    }
    let mac = if mac.is_empty() {
        None
    } else {
        let field = if from_args { "args.cni.mac" } else { "mac" };
        Some(parse_mac(&mac).map_err(|why| invalid(format!("{field}: {mac:?} is not a MAC address: {why}")))?)
    };

    let mtu = cni.mtu.unwrap_or(raw.mtu);
    let mtu = match mtu {
        0 => None,
        m => Some(
            u32::try_from(m).ok().filter(|m| *m > 0).ok_or_else(|| invalid(format!("mtu: {m} is not a valid MTU")))?,
        ),
    };
    let txqlen = match cni.txqlen.or(raw.txqlen) {
        None => None,
        Some(q) => Some(u32::try_from(q).map_err(|_| invalid(format!("txQLen: {q} is not a valid queue length")))?),
    };

    let mut sysctls: Vec<Sysctl> = Vec::new();
    for (origin, map) in [("sysctl", &raw.sysctl), ("args.cni.sysctl", &cni.sysctl)] {
        let Some(map) = map else { continue };
        let mut seen_here: Vec<usize> = Vec::new();
        for (key, value) in map {
            let Value::String(value) = value else {
                return Err(CniError::new(
                    DECODING_FAILURE,
                    format!("failed to load netconf: {origin}.{key}: expected a string, got {value}"),
                ));
            };
            let rel = sysctl_path(key, &args.ifname).map_err(|why| invalid(format!("{origin}: key {key:?} {why}")))?;
            let entry = Sysctl { key: key.clone(), rel, value: value.clone() };
            match sysctls.iter().position(|s| s.rel == entry.rel) {
                // Two spellings of one file in one object: which wins would be an accident.
                Some(i) if seen_here.contains(&i) => {
                    return Err(invalid(format!(
                        "{origin}: keys {:?} and {key:?} name the same sysctl",
                        sysctls[i].key
                    )))
                }
                Some(i) => {
                    sysctls[i] = entry;
                    seen_here.push(i);
                }
                None => {
                    seen_here.push(sysctls.len());
                    sysctls.push(entry);
                }
            }
        }
    }

    Ok(TuningConf {
        network: args.net_conf()?.name,
        data_dir,
        sysctls,
        mac,
        promisc: cni.promisc.unwrap_or(raw.promisc),
        mtu,
        allmulti: cni.allmulti.or(raw.allmulti),
        txqlen,
    })
}

/// The file below `/proc/sys` for `key`, with sysctl(8)'s separator rule: when the first
/// separator is `/`, dots are part of names (`net/ipv4/conf/eth0.100/rp_filter`); when it is `.`,
/// `.` and `/` swap (`net.ipv4.conf.eth0/100.rp_filter`). `IFNAME` (first occurrence) becomes the
/// interface name after that, so a name with dots stays whole. Only files under `net/`.
pub fn sysctl_path(key: &str, ifname: &str) -> Result<String, String> {
    if key.contains('\0') {
        return Err("contains a NUL byte".into());
    }
    let swapped: String = match key.find(['.', '/']) {
        Some(i) if key.as_bytes()[i] == b'.' => key
            .chars()
            .map(|c| match c {
                '.' => '/',
                '/' => '.',
                c => c,
            })
            .collect(),
        _ => key.to_string(),
    };
    let substituted = swapped.replacen("IFNAME", ifname, 1);
    let parts: Vec<&str> = substituted.split('/').filter(|p| !p.is_empty()).collect();
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err("must not contain . or .. path components".into());
    }
    if parts.len() < 2 || parts[0] != "net" {
        return Err("is not a network sysctl: only files under /proc/sys/net/ can be set".into());
    }
    Ok(parts.join("/"))
}

/// Parses a MAC address to set on an interface: any form [`parse_hw_addr`] takes, and for
/// 6-byte addresses neither multicast nor all-zero (the kernel would refuse it after other
/// changes were made).
pub fn parse_mac(s: &str) -> Result<Mac, String> {
    let bytes = parse_hw_addr(s)?;
    if bytes.len() == 6 {
        if bytes[0] & 1 == 1 {
            return Err("a multicast address cannot be an interface's address".into());
        }
        if bytes.iter().all(|b| *b == 0) {
            return Err("the all-zero address cannot be an interface's address".into());
        }
    }
    Ok(Mac { bytes })
}

/// Parses a hardware address in every form Go's `net.ParseMAC` takes: `aa:bb:…`, `aa-bb-…`
/// or `aabb.ccdd.…`, of 6, 8 or 20 bytes.
pub fn parse_hw_addr(s: &str) -> Result<Vec<u8>, String> {
    let bad = || "expected 6, 8 or 20 hex bytes as aa:bb:cc:dd:ee:ff".to_string();
    let b = s.as_bytes();
    if b.len() < 14 {
        return Err(bad());
    }
    let (group, sep) = match (b[2], b[4]) {
        (b':', _) | (b'-', _) => (2, b[2]),
        (_, b'.') => (4, b'.'),
        _ => return Err(bad()),
    };
    if !(b.len() + 1).is_multiple_of(group + 1) {
        return Err(bad());
    }
    let mut bytes = Vec::new();
    for (i, chunk) in b.chunks(group + 1).enumerate() {
        let hex = &chunk[..group];
        if chunk.len() == group + 1 && chunk[group] != sep {
            return Err(bad());
        }
        if chunk.len() != group + 1 && (i + 1) * (group + 1) != b.len() + 1 {
            return Err(bad());
        }
        for pair in hex.chunks(2) {
            let text = std::str::from_utf8(pair).map_err(|_| bad())?;
            if pair.len() != 2 || !pair.iter().all(u8::is_ascii_hexdigit) {
                return Err(bad());
            }
            bytes.push(u8::from_str_radix(text, 16).map_err(|_| bad())?);
        }
    }
    if ![6, 8, 20].contains(&bytes.len()) {
        return Err(bad());
    }
    Ok(bytes)
}

/// Checks every sysctl key against the allowlist, when the host has one.
pub fn check_allowlist(sysctls: &[Sysctl]) -> Result<(), CniError> {
    check_allowlist_at(Path::new(ALLOWLIST), sysctls)
}

fn check_allowlist_at(path: &Path, sysctls: &[Sysctl]) -> Result<(), CniError> {
    if sysctls.is_empty() {
        return Ok(());
    }
    // A symlink is fine (configuration management and ConfigMaps use them); a FIFO must not
    // block us and anything but a regular file is refused.
    let bytes = match crate::fsutil::read_bounded(path, crate::fsutil::Links::Follow, ALLOWLIST_MAX) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(CniError::internal(format!(
                "sysctl allowlist {} must be a regular file of at most {ALLOWLIST_MAX} bytes: {e}",
                path.display()
            )))
        }
    };
    let text = String::from_utf8(bytes).ctx(|| format!("read sysctl allowlist {}", path.display()))?;
    let mut patterns = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let re = regex_lite::Regex::new(line)
            .map_err(|e| invalid(format!("sysctl allowlist {} line {}: {e}", path.display(), n + 1)))?;
        patterns.push((line, re));
    }
    for s in sysctls {
        if !patterns.iter().any(|(_, re)| re.is_match(&s.key)) {
            let allowed: Vec<&str> = patterns.iter().map(|(l, _)| *l).collect();
            return Err(invalid(format!(
                "Sysctl {} is not allowed. Only the following sysctls are allowed: [{}]",
                s.key,
                allowed.join(" ")
            )));
        }
    }
    Ok(())
}

/// Refuses a key given twice in `sysctl` or `args.cni.sysctl`: a JSON decoder keeps only the
/// last, so this looks at the raw text.
pub fn check_duplicate_keys(raw: &[u8]) -> Result<(), CniError> {
    let mut de = serde_json::Deserializer::from_slice(raw);
    Scan(Level::Top).deserialize(&mut de).map_err(|e| {
        let text = e.to_string();
        let text = text.split(" at line ").next().unwrap_or(&text).to_string();
        invalid(text)
    })
}

#[derive(Clone, Copy)]
enum Level {
    Top,
    Args,
    Cni,
    Keys,
}

struct Scan(Level);

impl<'de> DeserializeSeed<'de> for Scan {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Scan {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let (child_key, child_level, what) = match self.0 {
            Level::Top => ("sysctl", Level::Keys, "sysctl"),
            Level::Args => ("cni", Level::Cni, "args.cni"),
            Level::Cni => ("sysctl", Level::Keys, "args.cni.sysctl"),
            Level::Keys => ("", Level::Keys, ""),
        };
        let mut seen = HashSet::new();
        let mut children = 0;
        while let Some(key) = map.next_key::<String>()? {
            if let Level::Keys = self.0 {
                if !seen.insert(key.clone()) {
                    return Err(de::Error::custom(format!("duplicated sysctl keys are not allowed: {key:?}")));
                }
                map.next_value::<IgnoredAny>()?;
            } else if key.eq_ignore_ascii_case(child_key) {
                children += 1;
                if children > 1 {
                    return Err(de::Error::custom(format!("{what} is given more than once")));
                }
                map.next_value_seed(Scan(child_level))?;
            } else if matches!(self.0, Level::Top) && key.eq_ignore_ascii_case("args") {
                map.next_value_seed(Scan(Level::Args))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(conf: Value, cni_args: &str) -> CmdArgs {
        CmdArgs {
            container_id: "c1".into(),
            ifname: "eth0.100".into(),
            args: cni_args.into(),
            stdin: conf.to_string().into_bytes(),
            config: conf,
            cni_version: "1.0.0".into(),
            ..Default::default()
        }
    }

    #[test]
    fn sysctl_keys_follow_sysctl8() {
        let p = |k: &str| sysctl_path(k, "eth0.100");
        assert_eq!(p("net.ipv4.ip_forward").unwrap(), "net/ipv4/ip_forward");
        assert_eq!(p("net/ipv4/ip_forward").unwrap(), "net/ipv4/ip_forward");
        assert_eq!(p("net.ipv4.conf.IFNAME.rp_filter").unwrap(), "net/ipv4/conf/eth0.100/rp_filter");
        assert_eq!(p("net/ipv4/conf/IFNAME/rp_filter").unwrap(), "net/ipv4/conf/eth0.100/rp_filter");
        assert_eq!(p("net/ipv4/conf/br0.7/rp_filter").unwrap(), "net/ipv4/conf/br0.7/rp_filter");
        assert_eq!(p("net.ipv4.conf.br0/7.rp_filter").unwrap(), "net/ipv4/conf/br0.7/rp_filter");
        assert_eq!(p("net.ipv4.conf.IFNAME.IFNAME").unwrap(), "net/ipv4/conf/eth0.100/IFNAME");
        assert!(p("kernel.panic").is_err());
        assert!(p("net").is_err());
        assert!(p("net/../kernel/panic").is_err());
        assert!(p("net/ipv4/../../kernel").is_err());
        assert!(p("net/./ipv4/ip_forward").is_err());
        assert!(p("netx.ipv4").is_err());
        assert!(p("net.ipv4\0").is_err());
        assert!(sysctl_path("net.ipv4.conf.IFNAME.x", "..").is_err());
    }

    #[test]
    fn macs_in_go_forms() {
        assert_eq!(parse_mac("02:00:5E:10:00:01").unwrap().text(), "02:00:5e:10:00:01");
        assert_eq!(parse_mac("02-00-5e-10-00-01").unwrap().text(), "02:00:5e:10:00:01");
        assert_eq!(parse_mac("0200.5e10.0001").unwrap().text(), "02:00:5e:10:00:01");
        assert_eq!(parse_mac("02:00:5e:10:00:00:00:01").unwrap().bytes.len(), 8);
        for bad in [
            "",
            "02:00:5e:10:00",
            "02:00:5e:10:00:0g",
            "02:00-5e:10:00:01",
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
            "02:00:5e:10:00:01:",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn precedence_of_the_reference() {
        let conf = json!({"name": "n", "type": "tuning", "mac": "02:00:00:00:00:01", "mtu": 1400, "promisc": true,
            "runtimeConfig": {"mac": "02:00:00:00:00:03"},
            "args": {"cni": {"mtu": 1300, "promisc": false, "txQLen": 0}}});
        let c = parse(&args(conf.clone(), "IgnoreUnknown=1;MAC=02:00:00:00:00:02;K8S_POD_NAME=x")).unwrap();
        assert_eq!(c.mac.unwrap().text(), "02:00:00:00:00:03");
        assert_eq!((c.mtu, c.promisc, c.txqlen, c.allmulti), (Some(1300), false, Some(0), None));
        let mut no_rc = conf.clone();
        no_rc.as_object_mut().unwrap().remove("runtimeConfig");
        let c = parse(&args(no_rc.clone(), "MAC=02:00:00:00:00:02")).unwrap();
        assert_eq!(c.mac.unwrap().text(), "02:00:00:00:00:02");
        assert_eq!(parse(&args(no_rc.clone(), "FOO=1")).unwrap_err().code, 4);
        no_rc["args"]["cni"]["mac"] = json!("");
        assert_eq!(parse(&args(no_rc, "MAC=02:00:00:00:00:02")).unwrap().mac, None);
        assert_eq!(parse(&args(json!({"name": "n"}), "")).unwrap().data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    }

    #[test]
    fn sysctls_merge_and_refuse_duplicates() {
        let conf = json!({"name": "n", "sysctl": {"net.ipv4.ip_forward": "1", "net.core.somaxconn": "500"},
            "args": {"cni": {"sysctl": {"net/ipv4/ip_forward": "0", "net.ipv4.conf.IFNAME.rp_filter": "2"}}}});
        let c = parse(&args(conf, "")).unwrap();
        let got: Vec<(&str, &str)> = c.sysctls.iter().map(|s| (s.rel.as_str(), s.value.as_str())).collect();
        assert_eq!(
            got,
            [("net/ipv4/ip_forward", "0"), ("net/core/somaxconn", "500"), ("net/ipv4/conf/eth0.100/rp_filter", "2")]
        );
        // args.cni.sysctl without a top-level sysctl: the reference panics here.
        let c =
            parse(&args(json!({"name": "n", "args": {"cni": {"sysctl": {"net.core.somaxconn": "5"}}}}), "")).unwrap();
        assert_eq!(c.sysctls.len(), 1);
        let raw = br#"{"name":"n","sysctl":{"net.core.somaxconn":"1","net.core.somaxconn":"2"}}"#;
        assert!(check_duplicate_keys(raw).unwrap_err().msg.contains("duplicated sysctl keys"));
        let raw = br#"{"name":"n","args":{"cni":{"sysctl":{"a":"1","a":"2"}}},"x":[{"a":1,"a":2}]}"#;
        assert!(check_duplicate_keys(raw).is_err());
        assert!(check_duplicate_keys(br#"{"x":{"a":1,"a":2},"sysctl":{"a":"1"}}"#).is_ok());
        assert!(check_duplicate_keys(br#"{"sysctl":{"a":"1"},"Sysctl":{"b":"1"}}"#).is_err());
        let same = json!({"name": "n", "sysctl": {"net.ipv4.ip_forward": "1", "net/ipv4/ip_forward": "0"}});
        assert!(parse(&args(same, "")).unwrap_err().msg.contains("name the same sysctl"));
        let num = json!({"name": "n", "sysctl": {"net.ipv4.ip_forward": 1}});
        assert_eq!(parse(&args(num, "")).unwrap_err().code, 6);
    }

    #[test]
    fn bad_values_are_config_errors() {
        for conf in [
            json!({"name": "n", "mtu": -1}),
            json!({"name": "n", "txQLen": -1}),
            json!({"name": "n", "mac": "nope"}),
            json!({"name": "n", "sysctl": {"kernel.panic": "1"}}),
            json!({"name": "n", "dataDir": "relative"}),
        ] {
            assert_eq!(parse(&args(conf.clone(), "")).unwrap_err().code, 7, "{conf}");
        }
    }

    #[test]
    fn allowlist_matches_keys_unanchored() {
        let dir = std::env::temp_dir().join(format!("tuning-allow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("allowlist.conf");
        let s = |k: &str| Sysctl { key: k.into(), rel: String::new(), value: "1".into() };
        assert!(check_allowlist_at(&path, &[s("net.core.somaxconn")]).is_ok(), "no file: no check");
        std::fs::write(&path, "^net\\.core\\.somaxconn$\n\n  ^net\\.ipv4\\.conf\\.IFNAME\\.[a-z_]*$  \n").unwrap();
        assert!(check_allowlist_at(&path, &[s("net.core.somaxconn"), s("net.ipv4.conf.IFNAME.rp_filter")]).is_ok());
        let e = check_allowlist_at(&path, &[s("net.ipv4.ip_forward")]).unwrap_err();
        assert_eq!(e.code, 7);
        assert!(e.msg.starts_with("Sysctl net.ipv4.ip_forward is not allowed."), "{}", e.msg);
        std::fs::write(&path, "(\n").unwrap();
        assert!(check_allowlist_at(&path, &[s("x")]).unwrap_err().msg.contains("line 1"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
