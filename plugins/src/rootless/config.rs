//! The wrapper's configuration: its own keys, the slirp4netns addresses derived from `cidr`, and
//! the inner plugins' request configurations built the way libcni builds them for a list.

use cni_types::error::INVALID_NETWORK_CONFIG;
use cni_types::{CmdArgs, CniError, PortMapping};
use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::net::Ipv4Addr;
use std::path::PathBuf;

/// slirp4netns' MTU when `mtu` is unset: podman's default, about 3.5x the throughput of 1500.
pub const DEFAULT_MTU: u32 = 65520;
/// slirp4netns' own default network.
pub const DEFAULT_CIDR: &str = "10.0.2.0/24";
/// The state directory when `stateDir` is unset.
pub const DEFAULT_STATE_DIR: &str = "$XDG_RUNTIME_DIR/cni-rootless";
/// The default helper.
pub const SLIRP4NETNS: &str = "slirp4netns";
/// The other helper: pasta, from the passt package.
pub const PASTA: &str = "pasta";
/// This plugin's type, refused as an inner plugin.
pub const SELF_TYPE: &str = "rootless-wrapper";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct Raw {
    name: String,
    #[serde(rename = "cniVersion")]
    cni_version: String,
    #[serde(rename = "stateDir")]
    state_dir: String,
    helper: String,
    mtu: Option<i64>,
    cidr: String,
    #[serde(rename = "enableIPv6")]
    enable_ipv6: bool,
    #[serde(rename = "allowHostLoopback")]
    allow_host_loopback: bool,
    plugins: Option<Vec<Value>>,
}

/// Which program serves the shared netns as its uplink.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HelperKind {
    /// slirp4netns: the default, with its API for published ports.
    #[default]
    Slirp4netns,
    /// pasta: no run-time port API, so the wrapper's forwarder carries every published port.
    Pasta,
}

impl HelperKind {
    /// The name users write in `helper`, and the binary looked up on `PATH`.
    pub fn name(self) -> &'static str {
        match self {
            HelperKind::Slirp4netns => SLIRP4NETNS,
            HelperKind::Pasta => PASTA,
        }
    }

    /// The kind a `helper` value names: a known name, or a path whose file name starts with
    /// one (`/usr/bin/pasta`, `/usr/bin/passt.avx2`); any other path is taken for slirp4netns.
    pub fn of(helper: &str) -> Option<HelperKind> {
        let base = helper.rsplit('/').next().unwrap_or(helper);
        match helper {
            "" | SLIRP4NETNS => Some(HelperKind::Slirp4netns),
            PASTA => Some(HelperKind::Pasta),
            _ if helper.contains('/') && (base.starts_with("pasta") || base.starts_with("passt")) => {
                Some(HelperKind::Pasta)
            }
            _ if helper.contains('/') => Some(HelperKind::Slirp4netns),
            _ => None,
        }
    }
}

/// The addresses slirp4netns gives its network: they move with `--cidr`, so they are derived,
/// never written down as 10.0.2.x. pasta is given the same ones (`-a`, `-n`, `-g`,
/// `--dns-forward`), so both helpers look alike from inside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlirpNet {
    /// The network, host bits cleared.
    pub cidr: Ipv4Network,
    /// The host as seen from the rootless netns (network + 2); host loopback when allowed.
    pub gateway: Ipv4Addr,
    /// slirp4netns' DNS forwarder (network + 3).
    pub dns: Ipv4Addr,
    /// The tap device's address in the rootless netns (network + 100); forwards land here.
    pub guest: Ipv4Addr,
}

impl SlirpNet {
    /// Derives the addresses from a CIDR, refusing networks too small to hold network + 100.
    pub fn derive(cidr: &str) -> Result<SlirpNet, String> {
        let parsed: Ipv4Network = cidr.parse().map_err(|e| format!("invalid cidr {cidr:?}: {e}"))?;
        let net = Ipv4Network::new(parsed.network(), parsed.prefix()).map_err(|e| format!("cidr {cidr:?}: {e}"))?;
        let nth = |n: u32| -> Result<Ipv4Addr, String> {
            let addr = u32::from(net.network())
                .checked_add(n)
                .map(Ipv4Addr::from)
                .filter(|a| net.contains(*a) && *a != net.broadcast())
                .ok_or_else(|| format!("cidr {cidr:?} is too small: slirp4netns needs the address network+{n}"))?;
            Ok(addr)
        };
        Ok(SlirpNet { cidr: net, gateway: nth(2)?, dns: nth(3)?, guest: nth(100)? })
    }
}

/// A validated wrapper configuration.
#[derive(Debug, Clone)]
pub struct WrapperConf {
    /// Network name (the outer list's).
    pub name: String,
    /// The configuration's spec version, given to every inner plugin.
    pub cni_version: String,
    /// Where the shared netns and all state live (one shared netns per state directory).
    pub state_dir: PathBuf,
    /// The helper binary: a name looked up on `PATH`, or a path.
    pub helper: String,
    /// Which helper that is.
    pub kind: HelperKind,
    /// MTU of the tap device (and of inner bridges that set none).
    pub mtu: u32,
    /// slirp4netns' network and its derived addresses.
    pub net: SlirpNet,
    /// `--enable-ipv6`.
    pub enable_ipv6: bool,
    /// Let the rootless netns reach the host's loopback through the gateway address.
    pub allow_host_loopback: bool,
    /// The inner plugin objects, run as a chain.
    pub plugins: Vec<Value>,
    /// The outer `runtimeConfig`, as the runtime sent it to the wrapper.
    pub runtime_config: Map<String, Value>,
    /// `runtimeConfig.portMappings`.
    pub port_mappings: Vec<PortMapping>,
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(INVALID_NETWORK_CONFIG, msg)
}

/// Replaces `$XDG_RUNTIME_DIR` and `${XDG_RUNTIME_DIR}` in `path` using `getenv`.
pub fn expand_state_dir(path: &str, getenv: &dyn Fn(&str) -> Option<String>) -> Result<PathBuf, String> {
    let mut out = path.to_string();
    for pattern in ["${XDG_RUNTIME_DIR}", "$XDG_RUNTIME_DIR"] {
        if out.contains(pattern) {
            let xdg = getenv("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()).ok_or_else(|| {
                format!("stateDir {path:?} uses XDG_RUNTIME_DIR, which is not set; set it or give an absolute stateDir")
            })?;
            out = out.replace(pattern, xdg.trim_end_matches('/'));
        }
    }
    if !out.starts_with('/') {
        return Err(format!("stateDir {out:?} must be an absolute path"));
    }
    if out.contains('$') {
        return Err(format!("stateDir {out:?}: only $XDG_RUNTIME_DIR is expanded"));
    }
    let trimmed = out.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err("stateDir must not be /".into());
    }
    Ok(PathBuf::from(trimmed))
}

/// Finds a key as Go's decoder would: exact, else the last case-insensitive match.
pub fn lookup<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).or_else(|| map.iter().rev().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v))
}

fn has_key(map: &Map<String, Value>, key: &str) -> bool {
    lookup(map, key).is_some_and(|v| !v.is_null())
}

impl WrapperConf {
    /// Decodes and validates the configuration of one invocation.
    pub fn load(args: &CmdArgs, getenv: &dyn Fn(&str) -> Option<String>) -> Result<WrapperConf, CniError> {
        let raw: Raw = args.decode()?;
        let state_dir = if raw.state_dir.is_empty() { DEFAULT_STATE_DIR } else { raw.state_dir.as_str() };
        let state_dir = expand_state_dir(state_dir, getenv).map_err(invalid)?;
        let kind = HelperKind::of(&raw.helper).ok_or_else(|| {
            invalid(format!(
                "helper {:?} is not supported: use \"slirp4netns\", \"pasta\" or the path of one of them",
                raw.helper
            ))
        })?;
        let helper = if raw.helper.is_empty() { kind.name().to_string() } else { raw.helper.clone() };
        let mtu = match raw.mtu {
            None | Some(0) => DEFAULT_MTU,
            Some(m) => u32::try_from(m)
                .ok()
                .filter(|m| (1280..=65521).contains(m))
                .ok_or_else(|| invalid(format!("mtu {m} is out of range (1280..65521)")))?,
        };
        let cidr = if raw.cidr.is_empty() { DEFAULT_CIDR } else { raw.cidr.as_str() };
        let net = SlirpNet::derive(cidr).map_err(invalid)?;
        let plugins = raw.plugins.unwrap_or_default();
        if plugins.is_empty() {
            return Err(invalid("rootless-wrapper: \"plugins\" must list at least one inner plugin"));
        }
        for (i, p) in plugins.iter().enumerate() {
            let ty = p.as_object().and_then(|m| lookup(m, "type")).and_then(Value::as_str).unwrap_or("");
            if ty.is_empty() {
                return Err(invalid(format!("rootless-wrapper: plugins[{i}] has no \"type\"")));
            }
            if ty == SELF_TYPE {
                return Err(invalid(format!("rootless-wrapper: plugins[{i}] cannot be rootless-wrapper itself")));
            }
        }
        let config = args.config.as_object().cloned().unwrap_or_default();
        let runtime_config = lookup(&config, "runtimeConfig").and_then(Value::as_object).cloned().unwrap_or_default();
        let port_mappings = args.net_conf()?.runtime_config.port_mappings;
        Ok(WrapperConf {
            name: raw.name,
            cni_version: if raw.cni_version.is_empty() { args.cni_version.clone() } else { raw.cni_version },
            state_dir,
            helper,
            kind,
            mtu,
            net,
            enable_ipv6: raw.enable_ipv6,
            allow_host_loopback: raw.allow_host_loopback,
            plugins,
            runtime_config,
            port_mappings,
        })
    }

    /// The type of inner plugin `i`.
    pub fn plugin_type(&self, i: usize) -> &str {
        self.plugins
            .get(i)
            .and_then(Value::as_object)
            .and_then(|m| lookup(m, "type"))
            .and_then(Value::as_str)
            .unwrap_or("")
    }
}

/// Port mappings as the inner portmap must see them: `hostIP` cleared, because the host address
/// belongs to the host side (slirp4netns binds it) and never exists inside the rootless netns.
pub fn inner_port_mappings(mappings: &Value) -> Value {
    match mappings {
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|m| match m {
                    Value::Object(o) => {
                        let mut o = o.clone();
                        o.retain(|k, _| !k.eq_ignore_ascii_case("hostIP"));
                        Value::Object(o)
                    }
                    other => other.clone(),
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// What the inner request configuration gets beyond the plugin object itself.
#[derive(Debug, Clone, Default)]
pub struct InnerExtras<'a> {
    /// `prevResult`, already in the configuration's version.
    pub prev_result: Option<&'a Value>,
    /// The runtime's capability arguments (the outer `runtimeConfig`).
    pub runtime_config: Option<&'a Map<String, Value>>,
    /// Keys copied as they are (GC's `cni.dev/valid-attachments` and `cni.dev/attachments`).
    pub passthrough: &'a [(String, Value)],
    /// The helper MTU, given to inner bridges that set none.
    pub mtu: Option<u32>,
}

/// Builds the request configuration for one inner plugin as libcni does for one plugin of a
/// list: the plugin object plus the list's `name` and `cniVersion`, `prevResult`, and a
/// `runtimeConfig` holding only the capabilities this plugin declares.
pub fn inner_config(plugin: &Value, name: &str, cni_version: &str, extras: &InnerExtras<'_>) -> Value {
    let mut conf = plugin.as_object().cloned().unwrap_or_default();
    conf.insert("name".into(), name.into());
    conf.insert("cniVersion".into(), cni_version.into());
    if let Some(prev) = extras.prev_result {
        conf.insert("prevResult".into(), prev.clone());
    }
    let declared = lookup(&conf, "capabilities").and_then(Value::as_object).cloned().unwrap_or_default();
    let mut rc = Map::new();
    if let Some(outer) = extras.runtime_config {
        for (cap, value) in outer {
            if declared.get(cap).and_then(Value::as_bool) != Some(true) {
                continue;
            }
            let value = if cap == "portMappings" { inner_port_mappings(value) } else { value.clone() };
            rc.insert(cap.clone(), value);
        }
    }
    if !rc.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(rc));
    }
    for (k, v) in extras.passthrough {
        conf.insert(k.clone(), v.clone());
    }
    // A bridge at MTU 1500 behind a 65520 tap costs 3.5x in throughput (research/rootless.md 3.2).
    if let Some(mtu) = extras.mtu {
        let is_bridge = lookup(&conf, "type").and_then(Value::as_str) == Some("bridge");
        if is_bridge && !has_key(&conf, "mtu") {
            conf.insert("mtu".into(), mtu.into());
        }
    }
    Value::Object(conf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args_for(config: Value) -> CmdArgs {
        let stdin = serde_json::to_vec(&config).unwrap();
        let cni_version = config["cniVersion"].as_str().unwrap_or("0.1.0").to_string();
        CmdArgs { config, stdin, cni_version, ..Default::default() }
    }

    fn env(xdg: Option<&'static str>) -> impl Fn(&str) -> Option<String> {
        move |k: &str| if k == "XDG_RUNTIME_DIR" { xdg.map(str::to_string) } else { None }
    }

    #[test]
    fn addresses_follow_the_cidr() {
        let n = SlirpNet::derive("10.0.2.0/24").unwrap();
        assert_eq!(
            (n.gateway, n.dns, n.guest),
            ("10.0.2.2".parse().unwrap(), "10.0.2.3".parse().unwrap(), "10.0.2.100".parse().unwrap())
        );
        let n = SlirpNet::derive("10.99.0.0/24").unwrap();
        assert_eq!(n.dns, "10.99.0.3".parse::<Ipv4Addr>().unwrap());
        assert_eq!(n.guest, "10.99.0.100".parse::<Ipv4Addr>().unwrap());
        // Host bits are cleared, as slirp4netns does.
        let n = SlirpNet::derive("172.16.5.77/16").unwrap();
        assert_eq!(n.cidr.to_string(), "172.16.0.0/16");
        assert_eq!(n.guest, "172.16.0.100".parse::<Ipv4Addr>().unwrap());
        assert!(SlirpNet::derive("10.0.2.0/25").is_ok());
        assert!(SlirpNet::derive("10.0.2.0/26").unwrap_err().contains("too small"));
        assert!(SlirpNet::derive("255.255.255.255/32").is_err());
        assert!(SlirpNet::derive("fd00::/64").is_err());
        assert!(SlirpNet::derive("nonsense").is_err());
    }

    #[test]
    fn state_dir_expansion() {
        let e = env(Some("/run/user/1000/"));
        assert_eq!(
            expand_state_dir("$XDG_RUNTIME_DIR/cni-rootless", &e).unwrap(),
            PathBuf::from("/run/user/1000/cni-rootless")
        );
        assert_eq!(expand_state_dir("${XDG_RUNTIME_DIR}/x/", &e).unwrap(), PathBuf::from("/run/user/1000/x"));
        assert_eq!(expand_state_dir("/var/tmp/s", &env(None)).unwrap(), PathBuf::from("/var/tmp/s"));
        assert!(expand_state_dir("$XDG_RUNTIME_DIR/x", &env(None)).unwrap_err().contains("not set"));
        assert!(expand_state_dir("relative/dir", &e).unwrap_err().contains("absolute"));
        assert!(expand_state_dir("$HOME/x", &e).is_err());
        assert!(expand_state_dir("/", &e).is_err());
    }

    #[test]
    fn config_defaults_and_keys() {
        let a = args_for(json!({"cniVersion": "1.0.0", "name": "rl", "type": "rootless-wrapper",
            "plugins": [{"type": "bridge"}, {"type": "portmap", "capabilities": {"portMappings": true}}],
            "RuntimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"}]}}));
        let c = WrapperConf::load(&a, &env(Some("/run/user/7"))).unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/run/user/7/cni-rootless"));
        assert_eq!(
            (c.helper.as_str(), c.mtu, c.enable_ipv6, c.allow_host_loopback),
            ("slirp4netns", 65520, false, false)
        );
        assert_eq!(c.net.cidr.to_string(), "10.0.2.0/24");
        assert_eq!(c.plugin_type(1), "portmap");
        assert_eq!(c.port_mappings.len(), 1);
        assert_eq!(c.port_mappings[0].host_ip, "127.0.0.1");
        assert!(c.runtime_config.contains_key("portMappings"));

        let a = args_for(
            json!({"cniVersion": "1.0.0", "name": "rl", "stateDir": "/tmp/s", "helper": "/opt/slirp4netns",
            "MTU": 1500, "cidr": "10.9.0.0/24", "enableIPv6": true, "allowHostLoopback": true, "plugins": [{"type": "bridge"}]}),
        );
        let c = WrapperConf::load(&a, &env(None)).unwrap();
        assert_eq!(
            (c.helper.as_str(), c.mtu, c.enable_ipv6, c.allow_host_loopback),
            ("/opt/slirp4netns", 1500, true, true)
        );
        assert_eq!(c.net.gateway, "10.9.0.2".parse::<Ipv4Addr>().unwrap());
        assert_eq!(c.kind, HelperKind::Slirp4netns);
    }

    #[test]
    fn helper_kinds() {
        assert_eq!(HelperKind::of(""), Some(HelperKind::Slirp4netns));
        assert_eq!(HelperKind::of("slirp4netns"), Some(HelperKind::Slirp4netns));
        assert_eq!(HelperKind::of("pasta"), Some(HelperKind::Pasta));
        assert_eq!(HelperKind::of("/usr/bin/pasta"), Some(HelperKind::Pasta));
        assert_eq!(HelperKind::of("/usr/bin/passt.avx2"), Some(HelperKind::Pasta));
        assert_eq!(HelperKind::of("/opt/bin/slirp4netns"), Some(HelperKind::Slirp4netns));
        assert_eq!(HelperKind::of("passt"), None);
        assert_eq!(HelperKind::of("vde_plug"), None);
        let a = args_for(json!({"cniVersion": "1.0.0", "name": "rl", "stateDir": "/tmp/s", "helper": "pasta",
            "plugins": [{"type": "bridge"}]}));
        let c = WrapperConf::load(&a, &env(None)).unwrap();
        assert_eq!((c.helper.as_str(), c.kind, c.mtu), ("pasta", HelperKind::Pasta, DEFAULT_MTU));
        assert_eq!(serde_json::to_value(HelperKind::Pasta).unwrap(), json!("pasta"));
    }

    #[test]
    fn config_errors() {
        let bad = |extra: Value| {
            let mut conf =
                json!({"cniVersion": "1.0.0", "name": "rl", "stateDir": "/tmp/s", "plugins": [{"type": "bridge"}]});
            for (k, v) in extra.as_object().unwrap() {
                conf[k] = v.clone();
            }
            WrapperConf::load(&args_for(conf), &env(None)).unwrap_err()
        };
        assert_eq!(bad(json!({"plugins": []})).code, 7);
        assert_eq!(bad(json!({"plugins": null})).code, 7);
        assert!(bad(json!({"plugins": [{"bridge": "x"}]})).msg.contains("no \"type\""));
        assert!(bad(json!({"plugins": [{"type": "rootless-wrapper"}]})).msg.contains("itself"));
        assert!(bad(json!({"helper": "vde"})).msg.contains("not supported"));
        assert!(bad(json!({"mtu": 100})).msg.contains("out of range"));
        assert!(bad(json!({"cidr": "10.0.0.0/30"})).msg.contains("too small"));
        assert_eq!(bad(json!({"mtu": "big"})).code, 6);
        assert!(bad(json!({"stateDir": "$XDG_RUNTIME_DIR/x"})).msg.contains("XDG_RUNTIME_DIR"));
    }

    #[test]
    fn inner_configs_are_built_like_libcni() {
        let rc = json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"}],
            "mac": "aa:bb:cc:dd:ee:ff"});
        let rc = rc.as_object().unwrap().clone();
        let prev = json!({"cniVersion": "1.0.0", "ips": []});
        let portmap = json!({"type": "portmap", "capabilities": {"portMappings": true}, "snat": true});
        let extras =
            InnerExtras { prev_result: Some(&prev), runtime_config: Some(&rc), mtu: Some(65520), ..Default::default() };
        let c = inner_config(&portmap, "rl", "1.0.0", &extras);
        assert_eq!(c["name"], "rl");
        assert_eq!(c["cniVersion"], "1.0.0");
        assert_eq!(c["prevResult"], prev);
        assert_eq!(c["snat"], true);
        // Only declared capabilities, and hostIP cleared for the inner portmap.
        assert_eq!(
            c["runtimeConfig"],
            json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]})
        );
        assert!(c.get("mtu").is_none());

        let bridge = json!({"type": "bridge", "bridge": "cni0"});
        let c = inner_config(&bridge, "rl", "1.0.0", &extras);
        assert!(c.get("runtimeConfig").is_none());
        assert_eq!(c["mtu"], 65520, "inner bridge inherits the helper MTU");
        let c = inner_config(&json!({"type": "bridge", "MTU": 1400}), "rl", "1.0.0", &extras);
        assert_eq!(c["MTU"], 1400);
        assert!(c.get("mtu").is_none(), "an explicit MTU wins, in any key case");

        let lists = vec![("cni.dev/valid-attachments".to_string(), json!([{"containerID": "a", "ifname": "eth0"}]))];
        let c = inner_config(&bridge, "rl", "1.1.0", &InnerExtras { passthrough: &lists, ..Default::default() });
        assert_eq!(c["cni.dev/valid-attachments"][0]["containerID"], "a");
        assert!(c.get("prevResult").is_none());
    }
}
