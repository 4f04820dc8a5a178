//! The bridge plugin's configuration: every key of the reference, validated before anything
//! changes on the host.

use cni_types::error::INVALID_NETWORK_CONFIG;
use cni_types::{CmdArgs, CniError, Dns};
use serde::Deserialize;

/// One `vlanTrunk` entry: a single `id` or a `minID`..`maxID` range.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Trunk {
    /// A single VLAN.
    pub id: Option<i64>,
    /// First VLAN of a range.
    #[serde(rename = "minID")]
    pub min_id: Option<i64>,
    /// Last VLAN of a range.
    #[serde(rename = "maxID")]
    pub max_id: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct Raw {
    bridge: String,
    #[serde(rename = "isGateway")]
    is_gateway: bool,
    #[serde(rename = "isDefaultGateway")]
    is_default_gateway: bool,
    #[serde(rename = "forceAddress")]
    force_address: bool,
    #[serde(rename = "ipMasq")]
    ip_masq: bool,
    #[serde(rename = "ipMasqBackend")]
    ip_masq_backend: Option<String>,
    mtu: i64,
    #[serde(rename = "hairpinMode")]
    hairpin_mode: bool,
    #[serde(rename = "promiscMode")]
    promisc_mode: bool,
    vlan: i64,
    #[serde(rename = "vlanTrunk")]
    vlan_trunk: Vec<Trunk>,
    #[serde(rename = "preserveDefaultVlan")]
    preserve_default_vlan: bool,
    enabledad: bool,
    macspoofchk: bool,
    #[serde(rename = "disableContainerInterface")]
    disable_container_interface: bool,
    #[serde(rename = "portIsolation")]
    port_isolation: bool,
}

/// A validated bridge configuration.
#[derive(Debug, Clone, Default)]
pub struct BridgeConf {
    /// Network name.
    pub network: String,
    /// Bridge device name (default `cni0`).
    pub bridge: String,
    /// Put the gateway address on the bridge and enable forwarding.
    pub is_gateway: bool,
    /// Also add a default route via the gateway.
    pub is_default_gateway: bool,
    /// Replace a different IPv4 address already on the bridge.
    pub force_address: bool,
    /// Masquerade traffic leaving the container's subnet.
    pub ip_masq: bool,
    /// Explicit masquerade backend (`iptables`/`nftables`), else the host's default.
    pub ip_masq_backend: Option<String>,
    /// MTU for a new bridge and both veth ends (0: kernel default).
    pub mtu: u32,
    /// Hairpin on the host veth.
    pub hairpin_mode: bool,
    /// Bridge in promiscuous mode.
    pub promisc_mode: bool,
    /// Access VLAN (0: none).
    pub vlan: u16,
    /// Trunk VLANs, expanded.
    pub vlan_trunk: Vec<u16>,
    /// Keep the default VLAN on the port when VLANs are configured.
    pub preserve_default_vlan: bool,
    /// Keep duplicate address detection on in the container.
    pub enable_dad: bool,
    /// Anti-spoofing rules on the host veth.
    pub mac_spoof_check: bool,
    /// Leave the container interface down (layer-2 only).
    pub disable_container_interface: bool,
    /// Isolate the bridge port.
    pub port_isolation: bool,
    /// IPAM plugin type; empty for a layer-2 bridge.
    pub ipam_type: String,
    /// DNS from the configuration, used instead of IPAM's when set.
    pub dns: Dns,
    /// Requested container MAC (runtimeConfig.mac > args.cni.mac > CNI_ARGS MAC).
    pub mac: Option<[u8; 6]>,
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(INVALID_NETWORK_CONFIG, msg)
}

fn vlan_id(v: i64, what: &str) -> Result<u16, CniError> {
    u16::try_from(v)
        .ok()
        .filter(|v| (1..=4094).contains(v))
        .ok_or_else(|| invalid(format!("incorrect trunk {what} parameter: {v} (must be between 1 and 4094)")))
}

fn expand_trunks(trunks: &[Trunk]) -> Result<Vec<u16>, CniError> {
    let mut out = Vec::new();
    for t in trunks {
        match (t.id, t.min_id, t.max_id) {
            (Some(id), _, _) => out.push(vlan_id(id, "id")?),
            (None, Some(min), Some(max)) => {
                let (lo, hi) = (vlan_id(min, "minID")?, vlan_id(max, "maxID")?);
                if lo > hi {
                    return Err(invalid(format!("minID is greater than maxID in trunk parameter ({lo} > {hi})")));
                }
                out.extend(lo..=hi);
            }
            (None, None, None) => {
                return Err(invalid("incorrect trunk id parameter: a trunk needs id or minID and maxID"))
            }
            _ => return Err(invalid("minID and maxID should be configured simultaneously, minID or maxID is missing")),
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

impl BridgeConf {
    /// Decodes and validates the configuration of one invocation.
    pub fn load(args: &CmdArgs) -> Result<BridgeConf, CniError> {
        let raw: Raw = args.decode()?;
        let net = args.net_conf()?;
        let bridge = if raw.bridge.is_empty() { "cni0".to_string() } else { raw.bridge };
        cni_types::validate::interface_name(&bridge)
            .map_err(|e| invalid(format!("invalid bridge name {bridge:?}: {}", e.msg)))?;
        if !(0..=4094).contains(&raw.vlan) {
            return Err(invalid(format!("invalid VLAN ID {} (must be between 0 and 4094)", raw.vlan)));
        }
        let mtu =
            u32::try_from(raw.mtu).map_err(|_| invalid(format!("invalid mtu {}: must not be negative", raw.mtu)))?;
        if let Some(b) = &raw.ip_masq_backend {
            if b != "iptables" && b != "nftables" {
                return Err(invalid(format!("unknown ipmasq backend {b:?}")));
            }
        }
        if raw.hairpin_mode && raw.promisc_mode {
            return Err(invalid("cannot set hairpin mode and promiscuous mode at the same time"));
        }
        if raw.disable_container_interface && !net.ipam.plugin_type.is_empty() {
            return Err(invalid("cannot use IPAM when DisableContainerInterface flag is set"));
        }
        let mac_text = match (&net.runtime_config.mac, &net.args.cni.mac) {
            (Some(m), _) if !m.is_empty() => Some(m.clone()),
            (_, Some(m)) if !m.is_empty() => Some(m.clone()),
            _ => cni_types::args::parse(&args.args, &["MAC"])?.remove("MAC").filter(|m| !m.is_empty()),
        };
        let mac = match mac_text {
            None => None,
            Some(m) => Some(
                crate::netlink::parse_mac(&m)
                    .filter(|b| b[0] & 1 == 0)
                    .ok_or_else(|| invalid(format!("invalid MAC address {m:?}: want a unicast aa:bb:cc:dd:ee:ff")))?,
            ),
        };
        Ok(BridgeConf {
            network: net.name,
            bridge,
            is_gateway: raw.is_gateway || raw.is_default_gateway,
            is_default_gateway: raw.is_default_gateway,
            force_address: raw.force_address,
            ip_masq: raw.ip_masq,
            ip_masq_backend: raw.ip_masq_backend,
            mtu,
            hairpin_mode: raw.hairpin_mode,
            promisc_mode: raw.promisc_mode,
            vlan: raw.vlan as u16,
            vlan_trunk: expand_trunks(&raw.vlan_trunk)?,
            preserve_default_vlan: raw.preserve_default_vlan,
            enable_dad: raw.enabledad,
            mac_spoof_check: raw.macspoofchk,
            disable_container_interface: raw.disable_container_interface,
            port_isolation: raw.port_isolation,
            ipam_type: net.ipam.plugin_type,
            dns: net.dns,
            mac,
        })
    }

    /// Whether the bridge needs VLAN filtering.
    pub fn uses_vlans(&self) -> bool {
        self.vlan != 0 || !self.vlan_trunk.is_empty()
    }

    /// Whether addresses are managed (an IPAM plugin is configured).
    pub fn is_layer3(&self) -> bool {
        !self.ipam_type.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn load(conf: serde_json::Value, cni_args: &str) -> Result<BridgeConf, CniError> {
        let args = CmdArgs { config: conf, cni_version: "1.0.0".into(), args: cni_args.into(), ..Default::default() };
        BridgeConf::load(&args)
    }

    #[test]
    fn defaults_and_implications() {
        let c = load(json!({"name": "n", "isDefaultGateway": true}), "").unwrap();
        assert_eq!(c.bridge, "cni0");
        assert!(c.is_gateway && !c.is_layer3());
    }

    #[test]
    fn invalid_values_name_themselves() {
        assert!(load(json!({"name": "n", "vlan": 5000}), "").unwrap_err().msg.contains("invalid VLAN ID 5000"));
        assert!(load(json!({"name": "n", "ipMasqBackend": "pf"}), "").unwrap_err().msg.contains("\"pf\""));
        assert!(load(json!({"name": "n", "bridge": "a-very-long-bridge-name"}), "")
            .unwrap_err()
            .msg
            .contains("too long"));
        assert!(load(json!({"name": "n", "hairpinMode": true, "promiscMode": true}), "").is_err());
        assert!(load(json!({"name": "n", "mtu": -1}), "").is_err());
        let e = load(json!({"name": "n", "ipMasq": "yes"}), "").unwrap_err();
        assert!(e.msg.contains("ipMasq"), "{}", e.msg);
        assert!(
            load(json!({"name": "n", "disableContainerInterface": true, "ipam": {"type": "host-local"}}), "").is_err()
        );
        assert!(load(json!({"name": "n", "vlanTrunk": [{"minID": 5}]}), "")
            .unwrap_err()
            .msg
            .contains("simultaneously"));
        assert!(load(json!({"name": "n", "vlanTrunk": [{"minID": 9, "maxID": 5}]}), "")
            .unwrap_err()
            .msg
            .contains("greater"));
    }

    #[test]
    fn mac_precedence() {
        let mac = |rc: &str, a: &str, env: &str| {
            let mut conf = json!({"name": "n"});
            if !rc.is_empty() {
                conf["runtimeConfig"] = json!({"mac": rc});
            }
            if !a.is_empty() {
                conf["args"] = json!({"cni": {"mac": a}});
            }
            load(conf, env).unwrap().mac
        };
        assert_eq!(mac("02:00:00:00:00:01", "02:00:00:00:00:02", "MAC=02:00:00:00:00:03"), Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(mac("", "02:00:00:00:00:02", "MAC=02:00:00:00:00:03"), Some([2, 0, 0, 0, 0, 2]));
        assert_eq!(mac("", "", "IgnoreUnknown=1;MAC=02:00:00:00:00:03;K8S_POD_NAME=x"), Some([2, 0, 0, 0, 0, 3]));
        assert!(load(json!({"name": "n", "runtimeConfig": {"mac": "01:00:00:00:00:01"}}), "").is_err(), "multicast");
        assert!(load(json!({"name": "n"}), "FOO=1").is_err(), "unknown CNI_ARGS without IgnoreUnknown");
    }

    #[test]
    fn trunks_expand() {
        let c = load(json!({"name": "n", "vlanTrunk": [{"id": 7}, {"minID": 3, "maxID": 5}]}), "").unwrap();
        assert_eq!(c.vlan_trunk, vec![3, 4, 5, 7]);
    }
}
