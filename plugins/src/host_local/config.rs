//! host-local's configuration: the `ipam` section, the requested addresses from every source,
//! and the validated list of range sets.

use super::range::{canonical, RangeSet};
use cni_types::error::{CniError, INVALID_ENVIRONMENT_VARIABLES};
use cni_types::net::parse_cidr;
use cni_types::version::Version;
use cni_types::{CmdArgs, IpRange, Route};
use serde::Deserialize;
use std::net::IpAddr;
use std::path::PathBuf;

/// Where the reference keeps its store when `dataDir` is not set.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

/// The keys host-local reads from the whole network configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RawNet {
    /// Network name: the store's directory.
    pub name: String,
    /// `ipam`; `None` when the key is absent or null.
    pub ipam: Option<RawIpam>,
    /// The capability arguments host-local honours.
    #[serde(rename = "runtimeConfig")]
    pub runtime_config: RawRuntimeConfig,
    /// `args.cni.ips`.
    pub args: RawArgs,
}

/// The `ipam` object.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RawIpam {
    /// Legacy single range: subnet.
    pub subnet: String,
    /// Legacy single range: first address.
    #[serde(rename = "rangeStart")]
    pub range_start: String,
    /// Legacy single range: last address.
    #[serde(rename = "rangeEnd")]
    pub range_end: String,
    /// Legacy single range: gateway.
    pub gateway: String,
    /// Range sets.
    pub ranges: Vec<Vec<IpRange>>,
    /// Routes copied into the result.
    pub routes: Vec<Route>,
    /// Store root.
    #[serde(rename = "dataDir")]
    pub data_dir: String,
    /// A resolv.conf to report as the result's `dns`.
    #[serde(rename = "resolvConf")]
    pub resolv_conf: String,
}

/// `runtimeConfig` as host-local sees it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RawRuntimeConfig {
    /// `ips` capability.
    pub ips: Vec<String>,
    /// `ipRanges` capability.
    #[serde(rename = "ipRanges")]
    pub ip_ranges: Vec<Vec<IpRange>>,
}

/// `args`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RawArgs {
    /// `args.cni`.
    pub cni: RawCniArgs,
}

/// `args.cni`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RawCniArgs {
    /// Requested addresses.
    pub ips: Vec<String>,
}

/// Where a network's reservations live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The store root (`dataDir`).
    pub data_dir: PathBuf,
    /// The network name (a directory under the root).
    pub network: String,
}

/// A validated host-local configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamConfig {
    /// Where the reservations live.
    pub location: Location,
    /// Range sets in allocation order (runtime `ipRanges`, legacy range, `ranges`).
    pub range_sets: Vec<RangeSet>,
    /// Requested addresses, duplicates removed, in the order the sources were read.
    pub requested: Vec<IpAddr>,
    /// Routes for the result.
    pub routes: Vec<Route>,
    /// resolv.conf to parse into the result's `dns`, if any.
    pub resolv_conf: Option<PathBuf>,
}

/// Decodes the configuration and checks that it has an `ipam` section.
pub fn decode(args: &CmdArgs) -> Result<(RawNet, RawIpam), CniError> {
    let net: RawNet = args.decode()?;
    let ipam = net.ipam.clone().ok_or_else(|| CniError::invalid_config("IPAM config missing 'ipam' key"))?;
    Ok((net, ipam))
}

/// The store location alone: all DEL and GC need, so that a configuration whose ranges no
/// longer validate can still have its reservations released.
pub fn location(net: &RawNet, ipam: &RawIpam) -> Location {
    let data_dir = if ipam.data_dir.is_empty() { DEFAULT_DATA_DIR } else { ipam.data_dir.as_str() };
    Location { data_dir: PathBuf::from(data_dir), network: net.name.clone() }
}

/// Parses one requested address: `ip` or `ip/prefix` (the prefix is ignored, the range's wins).
fn requested_ip(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    let ip = match text.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => parse_cidr(text).ok()?.ip(),
    };
    Some(canonical(ip))
}

/// The requested addresses: CNI_ARGS `IP` (a comma list), then `args.cni.ips`, then
/// `runtimeConfig.ips`. A runtime may send one address through several of them or twice in
/// one, so duplicates collapse into one request.
pub fn requested_ips(cni_args: &str, net: &RawNet) -> Result<Vec<IpAddr>, CniError> {
    let mut out: Vec<IpAddr> = Vec::new();
    // A set beside the list keeps the order and makes each duplicate check one lookup (a list
    // of every address of a /16 must not cost a comparison with each earlier one).
    let mut seen = std::collections::HashSet::new();
    let mut push = |ip: IpAddr| {
        if seen.insert(ip) {
            out.push(ip);
        }
    };
    let env = cni_types::args::parse(cni_args, &["IP"])?;
    if let Some(list) = env.get("IP") {
        for item in list.split(',').filter(|s| !s.trim().is_empty()) {
            let ip = requested_ip(item).ok_or_else(|| {
                CniError::new(
                    INVALID_ENVIRONMENT_VARIABLES,
                    format!("CNI_ARGS: invalid IP address {:?} in IP={list}", item.trim()),
                )
            })?;
            push(ip);
        }
    }
    for (key, list) in [("args.cni.ips", &net.args.cni.ips), ("runtimeConfig.ips", &net.runtime_config.ips)] {
        for item in list {
            let ip = requested_ip(item)
                .ok_or_else(|| CniError::invalid_config(format!("{key}: invalid IP address {item:?}")))?;
            push(ip);
        }
    }
    Ok(out)
}

/// Builds and validates the range sets, with the reference's order and messages: runtime
/// `ipRanges` first, then the legacy top-level range, then `ranges`.
pub fn range_sets(net: &RawNet, ipam: &RawIpam, cni_version: &str) -> Result<Vec<RangeSet>, CniError> {
    let mut raw: Vec<Vec<IpRange>> = net.runtime_config.ip_ranges.clone();
    // The legacy form only counts when it names a subnet, as in the reference.
    if !ipam.subnet.is_empty() {
        raw.push(vec![IpRange {
            subnet: ipam.subnet.clone(),
            range_start: ipam.range_start.clone(),
            range_end: ipam.range_end.clone(),
            gateway: ipam.gateway.clone(),
        }]);
    }
    raw.extend(ipam.ranges.iter().cloned());
    if raw.is_empty() {
        return Err(CniError::invalid_config("no IP ranges specified"));
    }
    let sets = raw
        .iter()
        .enumerate()
        .map(|(i, set)| {
            RangeSet::parse(set).map_err(|e| CniError::invalid_config(format!("invalid range set {i}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;

    let v4 = sets.iter().filter(|s| s.is_ipv4()).count();
    let v6 = sets.len() - v4;
    // 0.1.0/0.2.0 results carry one ip4 and one ip6 block: a second address could not be reported.
    if (v4 > 1 || v6 > 1) && !Version::at_least(cni_version, "0.3.0").unwrap_or(false) {
        return Err(CniError::invalid_config(format!(
            "CNI version {cni_version} does not support more than 1 address per family"
        )));
    }
    for (i, a) in sets.iter().enumerate() {
        if let Some(j) = sets[i + 1..].iter().position(|b| a.overlaps(b)) {
            return Err(CniError::invalid_config(format!("range set {i} overlaps with {}", i + 1 + j)));
        }
    }
    Ok(sets)
}

/// Decodes and validates everything ADD, CHECK and STATUS need.
pub fn load(args: &CmdArgs) -> Result<IpamConfig, CniError> {
    let (net, ipam) = decode(args)?;
    let requested = requested_ips(&args.args, &net)?;
    let range_sets = range_sets(&net, &ipam, &args.cni_version)?;
    Ok(IpamConfig {
        location: location(&net, &ipam),
        range_sets,
        requested,
        routes: ipam.routes.clone(),
        resolv_conf: (!ipam.resolv_conf.is_empty()).then(|| PathBuf::from(&ipam.resolv_conf)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn args(config: Value, cni_args: &str) -> CmdArgs {
        let cni_version = config["cniVersion"].as_str().unwrap_or("0.1.0").to_string();
        CmdArgs {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            args: cni_args.into(),
            config,
            cni_version,
            ..Default::default()
        }
    }

    fn conf(ipam: Value) -> Value {
        json!({"cniVersion": "1.0.0", "name": "net1", "type": "bridge", "ipam": ipam})
    }

    fn err(config: Value) -> CniError {
        load(&args(config, "")).unwrap_err()
    }

    #[test]
    fn full_config() {
        let c = load(&args(
            conf(json!({
                "type": "host-local",
                "Subnet": "10.1.0.0/16", "rangeStart": "10.1.0.10", "gateway": "10.1.0.254",
                "ranges": [[{"subnet": "10.2.0.0/24"}, {"subnet": "10.3.0.0/24"}], [{"subnet": "fd00::/64"}]],
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0", "gw": "fd00::1"}],
                "dataDir": "/run/cni/ipam", "resolvConf": "/etc/resolv.conf",
                "unknownKey": true
            })),
            "",
        ))
        .unwrap();
        assert_eq!(c.location, Location { data_dir: "/run/cni/ipam".into(), network: "net1".into() });
        assert_eq!(c.range_sets.len(), 3);
        assert_eq!(c.range_sets[0].to_string(), "10.1.0.10-10.1.255.254");
        assert_eq!(c.range_sets[0].0[0].gateway.to_string(), "10.1.0.254");
        assert_eq!(c.range_sets[1].to_string(), "10.2.0.1-10.2.0.254,10.3.0.1-10.3.0.254");
        assert_eq!(c.range_sets[2].to_string(), "fd00::1-fd00::ffff:ffff:ffff:ffff");
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.routes[1].gw.map(|g| g.to_string()).as_deref(), Some("fd00::1"));
        assert_eq!(c.resolv_conf, Some(PathBuf::from("/etc/resolv.conf")));
        assert!(c.requested.is_empty());
    }

    #[test]
    fn default_data_dir_and_runtime_ranges_come_first() {
        let mut config = conf(json!({"type": "host-local", "ranges": [[{"subnet": "10.2.0.0/24"}]]}));
        config["runtimeConfig"] = json!({"ipRanges": [[{"subnet": "10.9.0.0/24", "rangeStart": "10.9.0.100"}]]});
        let c = load(&args(config, "")).unwrap();
        assert_eq!(c.location.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(c.range_sets[0].to_string(), "10.9.0.100-10.9.0.254");
        assert_eq!(c.range_sets[1].to_string(), "10.2.0.1-10.2.0.254");
    }

    #[test]
    fn requested_addresses_from_every_source() {
        let mut config = conf(json!({"type": "host-local", "ranges": [[{"subnet": "10.2.0.0/24"}]]}));
        config["args"] = json!({"cni": {"ips": ["10.2.0.7/24", "fd00::7"]}});
        config["runtimeConfig"] = json!({"ips": ["10.2.0.9", "10.2.0.9", "10.2.0.5"]});
        let c = load(&args(config, "IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.2.0.5, ::ffff:10.2.0.6")).unwrap();
        let got: Vec<String> = c.requested.iter().map(|i| i.to_string()).collect();
        assert_eq!(got, ["10.2.0.5", "10.2.0.6", "10.2.0.7", "fd00::7", "10.2.0.9"]);
    }

    #[test]
    fn bad_requested_addresses_are_named() {
        let base = conf(json!({"type": "host-local", "ranges": [[{"subnet": "10.2.0.0/24"}]]}));
        let e = load(&args(base.clone(), "IP=10.2.0.5,bogus")).unwrap_err();
        assert_eq!((e.code, e.msg.as_str()), (4, "CNI_ARGS: invalid IP address \"bogus\" in IP=10.2.0.5,bogus"));
        let e = load(&args(base.clone(), "FOO=1")).unwrap_err();
        assert_eq!(e.code, 4);
        let mut c = base;
        c["runtimeConfig"] = json!({"ips": ["10.2.0.300"]});
        let e = err(c);
        assert_eq!((e.code, e.msg.as_str()), (7, "runtimeConfig.ips: invalid IP address \"10.2.0.300\""));
    }

    #[test]
    fn validation_follows_the_reference() {
        let cases = [
            (json!({"type": "host-local"}), "no IP ranges specified"),
            (json!({"type": "host-local", "ranges": []}), "no IP ranges specified"),
            (json!({"type": "host-local", "ranges": [[]]}), "invalid range set 0: empty range set"),
            (
                json!({"type": "host-local", "ranges": [[{"subnet": "10.9.0.0/24"}], [{"subnet": "10.9.0.0/25"}]]}),
                "range set 0 overlaps with 1",
            ),
            (
                json!({"type": "host-local", "subnet": "10.8.0.0/16", "ranges": [[{"subnet": "fd00::/64"}], [{"subnet": "10.8.1.0/24"}]]}),
                "range set 0 overlaps with 2",
            ),
            (
                json!({"type": "host-local", "ranges": [[{"subnet": "10.9.0.0/24"}], [{"subnet": "10.9.1.5/24"}]]}),
                "invalid range set 1: Network has host bits set. For a subnet mask of length 24 the network address is 10.9.1.0 (subnet 10.9.1.5/24)",
            ),
            (
                json!({"type": "host-local", "ranges": [[{"subnet": "10.9.0.0/32"}]]}),
                "invalid range set 0: Network 10.9.0.0/32 too small to allocate from",
            ),
        ];
        for (ipam, msg) in cases {
            let e = err(conf(ipam));
            assert_eq!((e.code, e.msg.as_str()), (7, msg));
        }
        let e = err(json!({"cniVersion": "1.0.0", "name": "n", "type": "bridge"}));
        assert_eq!((e.code, e.msg.as_str()), (7, "IPAM config missing 'ipam' key"));
        let e = err(json!({"cniVersion": "1.0.0", "name": "n", "ipam": null}));
        assert_eq!(e.msg, "IPAM config missing 'ipam' key");
    }

    #[test]
    fn requested_addresses_collapse_in_order_at_any_count() {
        let net: RawNet = serde_json::from_value(json!({"name": "n",
            "args": {"cni": {"ips": ["10.0.0.3", "10.0.0.2/24"]}},
            "runtimeConfig": {"ips": ["10.0.0.2", "fd00::1", "10.0.0.4"]}}))
        .unwrap();
        let got = requested_ips("IP=10.0.0.4,10.0.0.3", &net).unwrap();
        let want: Vec<IpAddr> =
            ["10.0.0.4", "10.0.0.3", "10.0.0.2", "fd00::1"].iter().map(|s| s.parse().unwrap()).collect();
        assert_eq!(got, want);
        // Every address of a /14, each twice: one lookup per address, not a scan of the list
        // (quadratic, this took minutes).
        let ips: Vec<String> = (0..1u32 << 18).map(|i| std::net::Ipv4Addr::from(0x0a00_0000 | i).to_string()).collect();
        let mut all = ips.clone();
        all.extend(ips);
        let net: RawNet = serde_json::from_value(json!({"name": "n", "runtimeConfig": {"ips": all}})).unwrap();
        let t = std::time::Instant::now();
        assert_eq!(requested_ips("", &net).unwrap().len(), 1 << 18);
        assert!(t.elapsed() < std::time::Duration::from_secs(20), "{:?}", t.elapsed());
    }

    #[test]
    fn old_versions_get_one_address_per_family() {
        let ipam = json!({"type": "host-local", "ranges": [[{"subnet": "10.9.0.0/24"}], [{"subnet": "10.10.0.0/24"}]]});
        let mut c = conf(ipam.clone());
        c["cniVersion"] = json!("0.2.0");
        let e = err(c);
        assert_eq!((e.code, e.msg.as_str()), (7, "CNI version 0.2.0 does not support more than 1 address per family"));
        let mut c = conf(ipam);
        c["cniVersion"] = json!("0.3.0");
        assert!(load(&args(c, "")).is_ok());
        let mut c =
            conf(json!({"type": "host-local", "ranges": [[{"subnet": "10.9.0.0/24"}], [{"subnet": "fd00::/64"}]]}));
        c["cniVersion"] = json!("0.2.0");
        assert!(load(&args(c, "")).is_ok());
    }

    #[test]
    fn wrong_types_are_decoding_errors_that_name_the_key() {
        let e = err(conf(json!({"type": "host-local", "ranges": [[{"subnet": 5}]]})));
        assert_eq!(e.code, 6);
        assert!(e.msg.contains("ipam.ranges[0][0].subnet"), "{}", e.msg);
        let e = err(conf(json!({"type": "host-local", "subnet": "10.0.0.0/24", "routes": [{"dst": "nope"}]})));
        assert!(e.msg.contains("ipam.routes[0].dst") && e.msg.contains("nope"), "{}", e.msg);
    }

    #[test]
    fn location_needs_no_valid_ranges() {
        let a = args(conf(json!({"type": "host-local", "dataDir": "/tmp/x", "ranges": [[{"subnet": "bad"}]]})), "");
        let (net, ipam) = decode(&a).unwrap();
        assert_eq!(location(&net, &ipam).data_dir, PathBuf::from("/tmp/x"));
        assert!(load(&a).is_err());
    }
}
