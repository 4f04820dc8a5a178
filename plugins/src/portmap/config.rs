//! The portmap configuration: the reference's keys (research 3.1, 3.2), validated before anything
//! changes, and the container addresses picked from `prevResult` the way the reference picks them.

use crate::firewall::{self, Backend, Family};
use crate::firewall::{PortForward, Portmap, Protocol};
use cni_types::error::INVALID_NETWORK_CONFIG;
use cni_types::limits::MAX_PORT_MAPPINGS;
use cni_types::{CmdArgs, CniError, CniResult, PortMapping};
use ipnetwork::IpNetwork;
use serde::Deserialize;
use std::net::IpAddr;

/// The reference's default mark bit (Kubernetes uses 14 and 15, Calico 20–31).
pub const DEFAULT_MARK_BIT: u8 = 13;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct Raw {
    backend: Option<String>,
    snat: Option<bool>,
    #[serde(rename = "conditionsV4")]
    conditions_v4: Option<Vec<String>>,
    #[serde(rename = "conditionsV6")]
    conditions_v6: Option<Vec<String>>,
    #[serde(rename = "masqAll")]
    masq_all: bool,
    #[serde(rename = "markMasqBit")]
    mark_masq_bit: Option<i64>,
    #[serde(rename = "externalSetMarkChain")]
    external_set_mark_chain: Option<String>,
}

/// A validated portmap configuration.
#[derive(Debug, Clone)]
pub struct PortmapConf {
    /// Network name.
    pub network: String,
    /// The firewall backend (`backend`, else iptables unless only nft is installed).
    pub backend: Backend,
    /// Masquerade hairpin and localhost connections (default true).
    pub snat: bool,
    /// Masquerade connections from any source (`masqAll`).
    pub masq_all: bool,
    /// `markMasqBit` (iptables), default 13.
    pub mark_bit: u8,
    /// `externalSetMarkChain` (iptables).
    pub external_set_mark_chain: Option<String>,
    /// `conditionsV4`.
    pub conditions_v4: Vec<String>,
    /// `conditionsV6`.
    pub conditions_v6: Vec<String>,
    /// `runtimeConfig.portMappings`, validated, in the runtime's order.
    pub forwards: Vec<PortForward>,
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(INVALID_NETWORK_CONFIG, msg)
}

/// Which backend a condition list is written for: iptables arguments start with `-` or `!`, nft
/// expressions never do (the reference tests only `-`, which misreads `["!", "-d", …]`).
fn conditions_backend(conditions: &Option<Vec<String>>) -> Option<Backend> {
    let first = conditions.as_ref()?.first().filter(|t| !t.is_empty())?;
    Some(if first.starts_with('-') || first.starts_with('!') { Backend::Iptables } else { Backend::Nftables })
}

/// Validates one `portMappings` entry; the reference's messages for ports, new ones for the rest.
pub fn parse_mapping(m: &PortMapping) -> Result<PortForward, CniError> {
    let port = |n: i64| u16::try_from(n).ok().filter(|p| *p > 0);
    let container_port = port(m.container_port)
        .ok_or_else(|| invalid(format!("Invalid container port number: {}", m.container_port)))?;
    let host_port = port(m.host_port).ok_or_else(|| invalid(format!("Invalid host port number: {}", m.host_port)))?;
    let protocol = Protocol::parse(&m.protocol).ok_or_else(|| {
        invalid(format!("Invalid protocol {:?} for host port {host_port}: must be tcp, udp or sctp", m.protocol))
    })?;
    let host_ip = match m.host_ip.trim() {
        "" => None,
        text => Some(
            text.parse::<IpAddr>()
                .map_err(|_| invalid(format!("Invalid host IP {:?} for host port {host_port}", m.host_ip)))?
                // An IPv4-mapped IPv6 address is IPv4 to the reference (Go's To4).
                .to_canonical(),
        ),
    };
    Ok(PortForward { host_port, container_port, protocol, host_ip })
}

/// Most tokens in one `conditionsV4`/`conditionsV6` list.
pub const MAX_CONDITION_TOKENS: usize = 64;
/// Most bytes in one condition token (`iptables-restore` refuses longer parameters).
pub const MAX_CONDITION_TOKEN_LEN: usize = 1023;
/// Most bytes in one condition list, all tokens together: with the rest of its rule, the line
/// stays well under the 10239 bytes `iptables-restore` reads as one line.
pub const MAX_CONDITIONS_LEN: usize = 4096;

/// Checks condition tokens as what they become: one argument of an `iptables-restore` line each, or
/// words of one `nft` rule. Neither may hold a control character (a NUL ends the text the tool
/// sees, a line break starts a new command); nft conditions may not hold `;` or `#` (a new command,
/// a comment to the end of the line) or an unpaired `"` (a string that runs into the next line);
/// counts and lengths are bounded so no line grows past what the tools read as one line.
fn check_tokens(key: &str, tokens: &[String], backend: Backend) -> Result<(), CniError> {
    if tokens.len() > MAX_CONDITION_TOKENS {
        return Err(invalid(format!("{key}: {} tokens, at most {MAX_CONDITION_TOKENS} are accepted", tokens.len())));
    }
    let total: usize = tokens.iter().map(String::len).sum();
    if total > MAX_CONDITIONS_LEN {
        return Err(invalid(format!("{key}: {total} bytes in all, at most {MAX_CONDITIONS_LEN} are accepted")));
    }
    for t in tokens {
        let shown = || t.chars().take(64).collect::<String>();
        if t.len() > MAX_CONDITION_TOKEN_LEN {
            return Err(invalid(format!(
                "{key}: token {:?}… is {} bytes, at most {MAX_CONDITION_TOKEN_LEN} are accepted",
                shown(),
                t.len()
            )));
        }
        if t.chars().any(char::is_control) {
            return Err(invalid(format!(
                "{key}: invalid token {t:?} (no NUL, line breaks or other control characters)"
            )));
        }
        if backend == Backend::Nftables && t.contains([';', '#']) {
            return Err(invalid(format!("{key}: invalid token {t:?} (no ';' or '#' in nftables conditions)")));
        }
    }
    if backend == Backend::Nftables && tokens.iter().map(|t| t.matches('"').count()).sum::<usize>() % 2 != 0 {
        return Err(invalid(format!("{key}: unpaired '\"' in nftables conditions")));
    }
    Ok(())
}

/// Longest chain name iptables accepts (`XT_EXTENSION_MAXNAMELEN` - 1).
pub const MAX_CHAIN_NAME_LEN: usize = 28;

/// Checks `externalSetMarkChain` as the iptables chain name it becomes: 1 to 28 printable ASCII
/// characters, no quote or backslash, not starting with `-` or `!` (which iptables reads as options).
fn check_chain_name(name: &str) -> Result<(), CniError> {
    let printable = name.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\'' | b'\\'));
    if name.is_empty() || name.len() > MAX_CHAIN_NAME_LEN || !printable || name.starts_with(['-', '!']) {
        return Err(invalid(format!(
            "invalid externalSetMarkChain {name:?}: a chain name is 1 to {MAX_CHAIN_NAME_LEN} printable characters \
             without quotes or backslashes, not starting with '-' or '!'"
        )));
    }
    Ok(())
}

impl PortmapConf {
    /// Decodes and validates the configuration of one invocation.
    pub fn load(args: &CmdArgs) -> Result<PortmapConf, CniError> {
        let mut conf = PortmapConf::load_options(args)?;
        let net = args.net_conf()?;
        let mappings = &net.runtime_config.port_mappings;
        if mappings.len() > MAX_PORT_MAPPINGS {
            return Err(invalid(format!(
                "too many port mappings: {}, at most {MAX_PORT_MAPPINGS} are accepted",
                mappings.len()
            )));
        }
        conf.forwards = mappings.iter().map(parse_mapping).collect::<Result<_, _>>()?;
        Ok(conf)
    }

    /// Decodes and validates everything but the mappings (DEL needs no mappings, so bad ones must
    /// not keep a runtime from deleting).
    pub fn load_options(args: &CmdArgs) -> Result<PortmapConf, CniError> {
        let raw: Raw = args.decode()?;
        let net = args.net_conf()?;
        if raw.mark_masq_bit.is_some() && raw.external_set_mark_chain.is_some() {
            return Err(invalid("Cannot specify externalSetMarkChain and markMasqBit"));
        }
        let mark_bit = match raw.mark_masq_bit {
            None => DEFAULT_MARK_BIT,
            Some(bit) => u8::try_from(bit)
                .ok()
                .filter(|b| *b <= 31)
                .ok_or_else(|| invalid("MasqMarkBit must be between 0 and 31"))?,
        };
        if let Some(chain) = raw.external_set_mark_chain.as_deref() {
            check_chain_name(chain)?;
        }
        let backend = match raw.backend.as_deref() {
            None => firewall::default_backend()
                .map_err(|e| CniError::new(cni_types::error::PLUGIN_NOT_AVAILABLE, format!("portmap: {e}")))?,
            Some("iptables") => Backend::Iptables,
            Some("nftables") => Backend::Nftables,
            Some(other) => return Err(invalid(format!("unrecognized backend {other:?}"))),
        };
        let mut foreign = Vec::new();
        if raw.external_set_mark_chain.is_some() && backend == Backend::Nftables {
            foreign.push("externalSetMarkChain");
        }
        for (key, conditions) in [("conditionsV4", &raw.conditions_v4), ("conditionsV6", &raw.conditions_v6)] {
            if conditions_backend(conditions).is_some_and(|b| b != backend) {
                foreign.push(key);
            }
            check_tokens(key, conditions.as_deref().unwrap_or_default(), backend)?;
        }
        if !foreign.is_empty() {
            let other = if backend == Backend::Iptables { Backend::Nftables } else { Backend::Iptables };
            return Err(invalid(format!(
                "{} backend was requested but configuration contains {}-specific options [{}]",
                backend.name(),
                other.name(),
                foreign.join(" ")
            )));
        }
        Ok(PortmapConf {
            network: net.name,
            backend,
            snat: raw.snat.unwrap_or(true),
            masq_all: raw.masq_all,
            mark_bit,
            external_set_mark_chain: raw.external_set_mark_chain,
            conditions_v4: raw.conditions_v4.unwrap_or_default(),
            conditions_v6: raw.conditions_v6.unwrap_or_default(),
            forwards: Vec::new(),
        })
    }

    /// The rule-building view of this configuration for one container.
    pub fn portmap<'a>(&'a self, container_id: &'a str) -> Portmap<'a> {
        Portmap {
            network: &self.network,
            container_id,
            forwards: &self.forwards,
            snat: self.snat,
            masq_all: self.masq_all,
            mark_bit: self.mark_bit,
            external_set_mark_chain: self.external_set_mark_chain.as_deref(),
            conditions_v4: &self.conditions_v4,
            conditions_v6: &self.conditions_v6,
        }
    }
}

/// The container's addresses as the reference picks them: per family the first address whose
/// `interface` is unset, out of range, or names `ifname` inside a sandbox.
pub fn container_addresses(prev: &CniResult, ifname: &str) -> Vec<IpNetwork> {
    let mut picked: Vec<IpNetwork> = Vec::new();
    for ip in &prev.ips {
        let family = Family::of(&ip.address.ip());
        if picked.iter().any(|p| Family::of(&p.ip()) == family) {
            continue;
        }
        let other_interface =
            ip.interface.and_then(|i| prev.interfaces.get(i)).is_some_and(|i| i.name != ifname || i.sandbox.is_empty());
        if !other_interface {
            picked.push(ip.address);
        }
    }
    picked.sort_by_key(|a| a.is_ipv6());
    picked
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(conf: serde_json::Value) -> CmdArgs {
        CmdArgs { container_id: "ctr1".into(), ifname: "eth0".into(), config: conf, ..Default::default() }
    }

    fn load(extra: serde_json::Value) -> Result<PortmapConf, CniError> {
        let mut conf = json!({"cniVersion": "1.0.0", "name": "net", "type": "portmap", "backend": "iptables"});
        for (k, v) in extra.as_object().unwrap() {
            conf[k] = v.clone();
        }
        PortmapConf::load(&args(conf))
    }

    fn mappings(m: serde_json::Value) -> serde_json::Value {
        json!({"runtimeConfig": {"portMappings": m}})
    }

    #[test]
    fn defaults() {
        let c = load(json!({})).unwrap();
        assert!(c.snat && !c.masq_all);
        assert_eq!(c.mark_bit, 13);
        assert_eq!(c.backend, Backend::Iptables);
        assert!(c.forwards.is_empty());
    }

    #[test]
    fn mappings_are_validated_and_normalised() {
        let c = load(mappings(json!([
            {"hostPort": 8080, "containerPort": 80, "protocol": "TCP"},
            {"HostPort": 53, "ContainerPort": 53, "Protocol": "udp", "HostIP": "::ffff:127.0.0.1"},
            {"hostPort": 9, "containerPort": 9, "protocol": "sctp", "hostIP": "fd00::1"}
        ])))
        .unwrap();
        assert_eq!(
            c.forwards,
            [
                PortForward { host_port: 8080, container_port: 80, protocol: Protocol::Tcp, host_ip: None },
                PortForward {
                    host_port: 53,
                    container_port: 53,
                    protocol: Protocol::Udp,
                    host_ip: Some("127.0.0.1".parse().unwrap())
                },
                PortForward {
                    host_port: 9,
                    container_port: 9,
                    protocol: Protocol::Sctp,
                    host_ip: Some("fd00::1".parse().unwrap())
                },
            ]
        );
        let err = |m: serde_json::Value| load(mappings(json!([m]))).unwrap_err();
        assert_eq!(
            err(json!({"hostPort": 0, "containerPort": 80, "protocol": "tcp"})).msg,
            "Invalid host port number: 0"
        );
        assert_eq!(
            err(json!({"hostPort": 70000, "containerPort": 80, "protocol": "tcp"})).msg,
            "Invalid host port number: 70000"
        );
        assert_eq!(
            err(json!({"hostPort": 80, "containerPort": -1, "protocol": "tcp"})).msg,
            "Invalid container port number: -1"
        );
        let e = err(json!({"hostPort": 80, "containerPort": 80, "protocol": "icmp"}));
        assert_eq!(e.msg, r#"Invalid protocol "icmp" for host port 80: must be tcp, udp or sctp"#);
        assert_eq!(e.code, INVALID_NETWORK_CONFIG);
        assert_eq!(
            err(json!({"hostPort": 80, "containerPort": 80, "protocol": "tcp", "hostIP": "localhost"})).msg,
            r#"Invalid host IP "localhost" for host port 80"#
        );
    }

    #[test]
    fn option_errors() {
        assert_eq!(
            load(json!({"markMasqBit": 5, "externalSetMarkChain": "KUBE-MARK-MASQ"})).unwrap_err().msg,
            "Cannot specify externalSetMarkChain and markMasqBit"
        );
        assert_eq!(load(json!({"markMasqBit": 32})).unwrap_err().msg, "MasqMarkBit must be between 0 and 31");
        assert_eq!(load(json!({"backend": "ebpf"})).unwrap_err().msg, r#"unrecognized backend "ebpf""#);
        assert_eq!(
            load(json!({"conditionsV4": ["ip", "daddr", "1.2.3.4"], "conditionsV6": ["ip6"]})).unwrap_err().msg,
            "iptables backend was requested but configuration contains nftables-specific options [conditionsV4 conditionsV6]"
        );
        assert_eq!(
            load(json!({"backend": "nftables", "externalSetMarkChain": "X", "conditionsV4": ["!", "-d", "1.2.3.4"]}))
                .unwrap_err()
                .msg,
            "nftables backend was requested but configuration contains iptables-specific options [externalSetMarkChain conditionsV4]"
        );
        assert!(load(json!({"conditionsV4": ["!", "-d", "192.0.2.0/24"], "markMasqBit": 0})).is_ok());
        assert!(load(json!({"backend": "nftables", "conditionsV4": ["ip daddr 1.2.3.4; flush ruleset"]})).is_err());
    }

    #[test]
    fn condition_tokens_are_checked_as_what_they_become() {
        let v4 = |c: serde_json::Value| load(json!({"conditionsV4": c}));
        let nft = |c: serde_json::Value| load(json!({"backend": "nftables", "conditionsV4": c}));
        for bad in ["10.0.0.0/8\0", "1.2.3.4\n-A PREROUTING -j ACCEPT", "a\rb", "a\u{7f}"] {
            let e = v4(json!(["-d", bad])).unwrap_err();
            assert_eq!(e.code, 7);
            assert!(e.msg.starts_with("conditionsV4: invalid token"), "{}", e.msg);
        }
        // One token longer than iptables-restore takes, or a list padded past a line.
        let e = v4(json!(["-d", "1".repeat(MAX_CONDITION_TOKEN_LEN + 1)])).unwrap_err();
        assert!(e.msg.contains("at most 1023"), "{}", e.msg);
        let padded: Vec<String> = (0..8).map(|_| "x".repeat(1000)).collect();
        assert!(v4(json!(padded)).unwrap_err().msg.contains("at most 4096"));
        let many: Vec<&str> = vec!["!"; MAX_CONDITION_TOKENS + 1];
        assert!(v4(json!(many)).unwrap_err().msg.contains("at most 64"));
        // iptables arguments are quoted, so ';' and '#' mean nothing there; in nft they do.
        assert!(v4(json!(["-m", "comment", "--comment", "a;b #c \"d\""])).is_ok());
        assert!(nft(json!(["ip", "saddr", "1.2.3.4", "#", "x"])).unwrap_err().msg.contains("no ';' or '#'"));
        assert!(nft(json!(["iifname", "\"eth0", "accept"])).unwrap_err().msg.contains("unpaired"));
        assert!(nft(json!(["iifname", "\"eth0\""])).is_ok());
    }

    #[test]
    fn external_chain_and_mapping_count_are_bounded() {
        for bad in ["", "-j", "!X", "a b", "a\"b", &"C".repeat(29), "a\0"] {
            let e = load(json!({"externalSetMarkChain": bad})).unwrap_err();
            assert!(e.msg.starts_with("invalid externalSetMarkChain"), "{bad:?}: {}", e.msg);
        }
        assert!(load(json!({"externalSetMarkChain": "KUBE-MARK-MASQ"})).is_ok());
        let one = json!({"hostPort": 80, "containerPort": 80, "protocol": "tcp"});
        let e = load(mappings(json!(vec![one; MAX_PORT_MAPPINGS + 1]))).unwrap_err();
        assert_eq!(e.msg, "too many port mappings: 65537, at most 65536 are accepted");
        // podman's -p 1000-9000:1000-9000 is one mapping per port.
        let podman: Vec<_> =
            (1000..=9000).map(|p| json!({"hostPort": p, "containerPort": p, "protocol": "tcp"})).collect();
        assert_eq!(load(mappings(json!(podman))).unwrap().forwards.len(), 8001);
    }

    #[test]
    fn picks_addresses_like_the_reference() {
        let prev: CniResult = CniResult::parse(
            json!({"cniVersion": "1.0.0",
                "interfaces": [{"name": "br0"}, {"name": "eth0", "sandbox": "/run/netns/x"}, {"name": "eth1", "sandbox": "/x"}],
                "ips": [{"interface": 0, "address": "10.0.0.1/24"},
                        {"interface": 2, "address": "10.1.0.5/24"},
                        {"interface": 1, "address": "fd00::5/64"},
                        {"interface": 1, "address": "10.2.0.5/24"},
                        {"interface": 1, "address": "10.3.0.5/24"}]}),
            "1.0.0",
        )
        .unwrap();
        let picked: Vec<String> = container_addresses(&prev, "eth0").iter().map(|a| a.to_string()).collect();
        assert_eq!(picked, ["10.2.0.5/24", "fd00::5/64"]);
        // No interface index, or one out of range: taken as the container's.
        let prev = CniResult::parse(json!({"ips": [{"interface": 7, "address": "10.9.0.2/16"}]}), "1.0.0").unwrap();
        assert_eq!(container_addresses(&prev, "eth0"), ["10.9.0.2/16".parse::<IpNetwork>().unwrap()]);
    }
}
