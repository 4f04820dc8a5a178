//! ADD results of every spec version and the conversions between them.
//!
//! Plugins build a [`CniResult`] (the 1.1.0 shape). [`CniResult::parse`] reads a result of any
//! version (a delegate's output, a `prevResult`) up into that shape, and
//! [`CniResult::to_version_json`] writes it down into the version a config asks for, with the
//! reference library's conversion rules: 0.3.x/0.4.0 add `ips[].version`, 0.1.0/0.2.0 keep only
//! the first address of each family as `ip4`/`ip6` and fail when there is none.

use crate::error::{CniError, DECODING_FAILURE, INCOMPATIBLE_CNI_VERSION};
use crate::gojson;
use crate::net::{cidr, opt_ip};
use crate::version::{Version, ALL};
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::net::IpAddr;

/// An interface created by the attachment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// Hardware address, if any.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// MTU (1.1.0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path for container interfaces; empty on the host.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
    /// Socket path (1.1.0).
    #[serde(rename = "socketPath", skip_serializing_if = "String::is_empty")]
    pub socket_path: String,
    /// PCI identifier (1.1.0).
    #[serde(rename = "pciID", skip_serializing_if = "String::is_empty")]
    pub pci_id: String,
}

/// An IP address assigned by the attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Index into `interfaces`; absent in IPAM results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    /// The address with its prefix length (host bits kept).
    #[serde(with = "cidr")]
    pub address: IpNetwork,
    /// Gateway of the subnet, if any.
    #[serde(default, with = "opt_ip", skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

/// A route created by the attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination prefix.
    #[serde(with = "cidr")]
    pub dst: IpNetwork,
    /// Next hop; when absent the family's gateway may be used.
    #[serde(default, with = "opt_ip", skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// Path MTU (1.1.0).
    #[serde(default, skip_serializing_if = "is_none_or_zero")]
    pub mtu: Option<u32>,
    /// Advertised MSS (1.1.0).
    #[serde(default, skip_serializing_if = "is_none_or_zero")]
    pub advmss: Option<u32>,
    /// Metric (1.1.0).
    #[serde(default, skip_serializing_if = "is_none_or_zero")]
    pub priority: Option<u32>,
    /// Routing table (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    /// Scope: 0 global, 253 link, 254 host (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

fn is_none_or_zero(v: &Option<u32>) -> bool {
    matches!(v, None | Some(0))
}

impl Route {
    /// A route to `dst`, optionally via `gw`, with no 1.1.0 attributes.
    pub fn new(dst: IpNetwork, gw: Option<IpAddr>) -> Route {
        Route { dst, gw, mtu: None, advmss: None, priority: None, table: None, scope: None }
    }
}

/// DNS information; also the `dns` key of network configurations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Dns {
    /// Name servers, in priority order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub domain: String,
    /// Search domains, in priority order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    /// Whether no field is set.
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty() && self.domain.is_empty() && self.search.is_empty() && self.options.is_empty()
    }
}

/// An ADD result in the current (1.1.0) shape.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CniResult {
    /// The version the result was produced in; rewritten on output.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// Interfaces created.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// Addresses assigned.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    /// Routes created.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// DNS information.
    #[serde(skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

/// The 0.1.0/0.2.0 per-family block.
#[derive(Debug, Clone, Deserialize)]
struct LegacyIp {
    #[serde(with = "cidr")]
    ip: IpNetwork,
    #[serde(default, with = "opt_ip")]
    gateway: Option<IpAddr>,
    #[serde(default)]
    routes: Vec<Route>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct LegacyResult {
    ip4: Option<LegacyIp>,
    ip6: Option<LegacyIp>,
    dns: Dns,
}

fn is_legacy(version: &str) -> bool {
    matches!(version, "0.1.0" | "0.2.0")
}

fn decode_err(e: impl std::fmt::Display) -> CniError {
    CniError::new(DECODING_FAILURE, format!("failed to decode result: {e}"))
}

impl CniResult {
    /// Parses a result of any version. Its own `cniVersion` wins; `default_version` (the config's)
    /// is assumed when it has none, as the reference does for `prevResult`.
    pub fn parse(value: Value, default_version: &str) -> Result<CniResult, CniError> {
        if !value.is_object() {
            return Err(decode_err("a result must be a JSON object"));
        }
        let version = value
            .as_object()
            // Go's rules, as for every key: the last non-null key that folds to `cniVersion`.
            .and_then(|m| {
                m.iter()
                    .rev()
                    .find(|(k, v)| !v.is_null() && gojson::go_key_matches(k, "cniVersion"))
                    .map(|(_, v)| v.clone())
            })
            .and_then(|v| v.as_str().map(str::to_string))
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| default_version.to_string());
        if !ALL.contains(&version.as_str()) {
            return Err(CniError::new(INCOMPATIBLE_CNI_VERSION, format!("unsupported result version {version:?}")));
        }
        let mut result = if is_legacy(&version) {
            let legacy: LegacyResult = gojson::from_value(value).map_err(decode_err)?;
            let mut r = CniResult { dns: legacy.dns, ..Default::default() };
            for block in [legacy.ip4, legacy.ip6].into_iter().flatten() {
                r.ips.push(IpConfig { interface: None, address: block.ip, gateway: block.gateway });
                r.routes.extend(block.routes.into_iter().map(|rt| Route::new(rt.dst, rt.gw)));
            }
            r
        } else {
            gojson::from_value::<CniResult>(value).map_err(decode_err)?
        };
        result.cni_version = version;
        Ok(result)
    }

    /// Parses result bytes (see [`CniResult::parse`]).
    pub fn parse_slice(bytes: &[u8], default_version: &str) -> Result<CniResult, CniError> {
        let value: Value = serde_json::from_slice(bytes).map_err(decode_err)?;
        CniResult::parse(value, default_version)
    }

    /// The JSON of this result in spec version `version`, or an error when it cannot be
    /// expressed there (0.1.0/0.2.0 without any address).
    pub fn to_version_json(&self, version: &str) -> Result<Value, CniError> {
        if !ALL.contains(&version) {
            return Err(CniError::new(
                INCOMPATIBLE_CNI_VERSION,
                format!("cannot convert result to unknown version {version:?}"),
            ));
        }
        let dns = serde_json::to_value(&self.dns).unwrap_or_else(|_| json!({}));
        if is_legacy(version) {
            return self.to_legacy_json(version, dns);
        }
        let mut out = Map::new();
        out.insert("cniVersion".into(), version.into());
        let pre_1 = Version::parse(version)? < Version(1, 0, 0);
        if !self.interfaces.is_empty() {
            let ifaces = self
                .interfaces
                .iter()
                .map(|i| {
                    if pre_1 {
                        let mut m = Map::new();
                        m.insert("name".into(), i.name.clone().into());
                        if !i.mac.is_empty() {
                            m.insert("mac".into(), i.mac.clone().into());
                        }
                        if !i.sandbox.is_empty() {
                            m.insert("sandbox".into(), i.sandbox.clone().into());
                        }
                        Value::Object(m)
                    } else {
                        serde_json::to_value(i).unwrap_or(Value::Null)
                    }
                })
                .collect();
            out.insert("interfaces".into(), Value::Array(ifaces));
        }
        if !self.ips.is_empty() {
            let ips = self
                .ips
                .iter()
                .map(|ip| {
                    let mut v = serde_json::to_value(ip).unwrap_or(Value::Null);
                    if let (true, Some(m)) = (pre_1, v.as_object_mut()) {
                        let family = if ip.address.is_ipv4() { "4" } else { "6" };
                        m.insert("version".into(), family.into());
                    }
                    v
                })
                .collect();
            out.insert("ips".into(), Value::Array(ips));
        }
        if !self.routes.is_empty() {
            out.insert("routes".into(), serde_json::to_value(&self.routes).unwrap_or(Value::Null));
        }
        // The 0.3.x/0.4.0 Go types always print `dns`, the 1.x types omit it when empty.
        if pre_1 || !self.dns.is_empty() {
            out.insert("dns".into(), dns);
        }
        Ok(Value::Object(out))
    }

    fn to_legacy_json(&self, version: &str, dns: Value) -> Result<Value, CniError> {
        let first = |v4: bool| self.ips.iter().find(|ip| ip.address.is_ipv4() == v4);
        let block = |v4: bool| {
            first(v4).map(|ip| {
                let mut m = Map::new();
                m.insert("ip".into(), format!("{}/{}", ip.address.ip(), ip.address.prefix()).into());
                if let Some(gw) = ip.gateway {
                    m.insert("gateway".into(), gw.to_string().into());
                }
                let routes: Vec<Value> = self
                    .routes
                    .iter()
                    .filter(|r| r.dst.is_ipv4() == v4)
                    .map(|r| serde_json::to_value(Route::new(r.dst, r.gw)).unwrap_or(Value::Null))
                    .collect();
                if !routes.is_empty() {
                    m.insert("routes".into(), Value::Array(routes));
                }
                Value::Object(m)
            })
        };
        let (ip4, ip6) = (block(true), block(false));
        if ip4.is_none() && ip6.is_none() {
            return Err(CniError::internal("cannot convert: no valid IP addresses"));
        }
        let mut out = Map::new();
        out.insert("cniVersion".into(), version.into());
        if let Some(b) = ip4 {
            out.insert("ip4".into(), b);
        }
        if let Some(b) = ip6 {
            out.insert("ip6".into(), b);
        }
        out.insert("dns".into(), dns);
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::parse_cidr;

    fn sample() -> CniResult {
        CniResult {
            cni_version: "1.1.0".into(),
            interfaces: vec![
                Interface { name: "cni0".into(), mac: "0a:58:0a:01:00:01".into(), ..Default::default() },
                Interface { name: "veth1234abcd".into(), mac: "fa:4a:f8:6a:22:d7".into(), ..Default::default() },
                Interface {
                    name: "eth0".into(),
                    mac: "aa:b7:3c:ba:54:55".into(),
                    sandbox: "/var/run/netns/c".into(),
                    mtu: Some(1500),
                    ..Default::default()
                },
            ],
            ips: vec![
                IpConfig {
                    interface: Some(2),
                    address: parse_cidr("10.1.0.5/16").unwrap(),
                    gateway: "10.1.0.1".parse().ok(),
                },
                IpConfig {
                    interface: Some(2),
                    address: parse_cidr("fd00::5/64").unwrap(),
                    gateway: "fd00::1".parse().ok(),
                },
                IpConfig { interface: Some(2), address: parse_cidr("10.2.0.5/16").unwrap(), gateway: None },
            ],
            routes: vec![
                Route { priority: Some(10), ..Route::new(parse_cidr("0.0.0.0/0").unwrap(), "10.1.0.1".parse().ok()) },
                Route::new(parse_cidr("::/0").unwrap(), None),
            ],
            dns: Dns { nameservers: vec!["10.1.0.1".into()], ..Default::default() },
        }
    }

    /// Every pair of versions: down, then back up to current, loses only what the lower
    /// version cannot carry.
    #[test]
    fn every_version_pair_round_trips() {
        let base = sample();
        for from in ALL {
            let from_json = base.to_version_json(from).unwrap();
            let parsed = CniResult::parse(from_json, "1.1.0").unwrap();
            assert_eq!(parsed.cni_version, *from);
            for to in ALL {
                let json = parsed.to_version_json(to).unwrap();
                assert_eq!(json["cniVersion"], *to);
                let again = CniResult::parse(json, to).unwrap();
                let legacy = is_legacy(from) || is_legacy(to);
                assert_eq!(again.ips.len(), if legacy { 2 } else { 3 }, "{from}->{to}");
                assert_eq!(again.routes.len(), 2, "{from}->{to}");
                assert_eq!(again.dns, base.dns);
                if !legacy {
                    assert_eq!(again.interfaces.len(), 3);
                    assert_eq!(again.ips[0].interface, Some(2));
                    let pre_1 = Version::parse(from).unwrap() < Version(1, 0, 0)
                        || Version::parse(to).unwrap() < Version(1, 0, 0);
                    assert_eq!(again.interfaces[2].mtu, if pre_1 { None } else { Some(1500) }, "{from}->{to}");
                }
            }
        }
    }

    /// The spec appendix's bridge and host-local results come back out unchanged at 1.1.0.
    #[test]
    fn spec_appendix_results_round_trip() {
        let bridge = serde_json::json!({
            "ips": [{"address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 2}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "interfaces": [
                {"name": "cni0", "mac": "00:11:22:33:44:55"},
                {"name": "veth3243", "mac": "55:44:33:22:11:11"},
                {"name": "eth0", "mac": "99:88:77:66:55:44", "sandbox": "/var/run/netns/blue"}
            ],
            "dns": {"nameservers": ["10.1.0.1"]}
        });
        let ipam = serde_json::json!({
            "ips": [{"address": "10.1.0.5/16", "gateway": "10.1.0.1"}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {"nameservers": ["10.1.0.1"]}
        });
        for golden in [bridge, ipam] {
            let r = CniResult::parse(golden.clone(), "1.1.0").unwrap();
            let mut out = r.to_version_json("1.1.0").unwrap();
            out.as_object_mut().unwrap().remove("cniVersion");
            assert_eq!(out, golden);
        }
    }

    #[test]
    fn golden_040_matches_the_reference_shape() {
        let json = sample().to_version_json("0.4.0").unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "cniVersion": "0.4.0",
                "interfaces": [
                    {"name": "cni0", "mac": "0a:58:0a:01:00:01"},
                    {"name": "veth1234abcd", "mac": "fa:4a:f8:6a:22:d7"},
                    {"name": "eth0", "mac": "aa:b7:3c:ba:54:55", "sandbox": "/var/run/netns/c"}
                ],
                "ips": [
                    {"version": "4", "interface": 2, "address": "10.1.0.5/16", "gateway": "10.1.0.1"},
                    {"version": "6", "interface": 2, "address": "fd00::5/64", "gateway": "fd00::1"},
                    {"version": "4", "interface": 2, "address": "10.2.0.5/16"}
                ],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1", "priority": 10}, {"dst": "::/0"}],
                "dns": {"nameservers": ["10.1.0.1"]}
            })
        );
    }

    #[test]
    fn golden_020_keeps_the_first_address_per_family() {
        let json = sample().to_version_json("0.2.0").unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "cniVersion": "0.2.0",
                "ip4": {"ip": "10.1.0.5/16", "gateway": "10.1.0.1", "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}]},
                "ip6": {"ip": "fd00::5/64", "gateway": "fd00::1", "routes": [{"dst": "::/0"}]},
                "dns": {"nameservers": ["10.1.0.1"]}
            })
        );
    }

    #[test]
    fn spec_observed_020_host_local_result_parses() {
        let r = CniResult::parse_slice(
            br#"{"cniVersion":"0.2.0","ip4":{"ip":"10.252.0.4/29","gateway":"10.252.0.1","routes":[{"dst":"0.0.0.0/0"}]},"dns":{}}"#,
            "0.2.0",
        )
        .unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.252.0.4/29");
        assert_eq!(r.routes[0].gw, None);
        let v1 = r.to_version_json("1.0.0").unwrap();
        assert!(v1.get("dns").is_none(), "1.x omits an empty dns");
        assert!(v1["ips"][0].get("version").is_none());
    }

    #[test]
    fn l2_result_cannot_go_below_030() {
        let r = CniResult {
            interfaces: vec![Interface { name: "eth0".into(), ..Default::default() }],
            ..Default::default()
        };
        for v in ["0.1.0", "0.2.0"] {
            let e = r.to_version_json(v).unwrap_err();
            assert_eq!(e.msg, "cannot convert: no valid IP addresses");
        }
        assert!(r.to_version_json("0.3.0").is_ok());
    }

    #[test]
    fn result_without_version_takes_the_config_version_and_keys_fold() {
        let r = CniResult::parse(serde_json::json!({"IPs": [{"Address": "10.0.0.2/24", "Version": "4"}]}), "0.4.0")
            .unwrap();
        assert_eq!(r.cni_version, "0.4.0");
        assert_eq!(r.ips.len(), 1);
    }

    #[test]
    fn result_version_is_the_one_go_decodes() {
        let r = CniResult::parse(json!({"cniVersion": "0.2.0", "CNIVERSION": "1.0.0", "ips": []}), "0.4.0").unwrap();
        assert_eq!(r.cni_version, "1.0.0");
        let r = CniResult::parse(json!({"cniVersion": "0.3.1", "CniVersion": null}), "0.4.0").unwrap();
        assert_eq!(r.cni_version, "0.3.1");
    }

    #[test]
    fn bad_results_are_decoding_failures() {
        assert_eq!(CniResult::parse_slice(b"nope", "1.0.0").unwrap_err().code, DECODING_FAILURE);
        let e = CniResult::parse(serde_json::json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2"}]}), "1.0.0")
            .unwrap_err();
        assert!(e.msg.contains("invalid CIDR address: 10.0.0.2"), "{}", e.msg);
        assert_eq!(CniResult::parse(serde_json::json!({"cniVersion": "9.9.9"}), "1.0.0").unwrap_err().code, 1);
    }
}
