//! The ptp plugin's configuration: the reference's keys, validated before anything changes.

use cni_types::error::INVALID_NETWORK_CONFIG;
use cni_types::{CmdArgs, CniError, Dns};
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct Raw {
    #[serde(rename = "ipMasq")]
    ip_masq: bool,
    #[serde(rename = "ipMasqBackend")]
    ip_masq_backend: Option<String>,
    mtu: i64,
}

/// A validated ptp configuration.
#[derive(Debug, Clone, Default)]
pub struct PtpConf {
    /// Network name.
    pub network: String,
    /// Masquerade traffic leaving the container's subnet.
    pub ip_masq: bool,
    /// Explicit masquerade backend (`iptables`/`nftables`), else the host's default.
    pub ip_masq_backend: Option<String>,
    /// MTU of both veth ends (0: kernel default).
    pub mtu: u32,
    /// IPAM plugin type (ptp always routes addresses, so one is required).
    pub ipam_type: String,
    /// DNS from the configuration, used instead of IPAM's when set.
    pub dns: Dns,
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(INVALID_NETWORK_CONFIG, msg)
}

impl PtpConf {
    /// Decodes and validates the configuration of one invocation.
    pub fn load(args: &CmdArgs) -> Result<PtpConf, CniError> {
        let raw: Raw = args.decode()?;
        let net = args.net_conf()?;
        let mtu =
            u32::try_from(raw.mtu).map_err(|_| invalid(format!("invalid mtu {}: must not be negative", raw.mtu)))?;
        if mtu != 0 && !(68..=65535).contains(&mtu) {
            return Err(invalid(format!("invalid mtu {mtu}: a veth takes 68 to 65535")));
        }
        if let Some(b) = &raw.ip_masq_backend {
            if b != "iptables" && b != "nftables" {
                return Err(invalid(format!("unknown ipMasqBackend {b:?}: want \"iptables\" or \"nftables\"")));
            }
        }
        if net.ipam.plugin_type.is_empty() {
            return Err(invalid("ipam.type is missing: ptp needs an IPAM plugin for the container's addresses"));
        }
        Ok(PtpConf {
            network: net.name,
            ip_masq: raw.ip_masq,
            ip_masq_backend: raw.ip_masq_backend,
            mtu,
            ipam_type: net.ipam.plugin_type,
            dns: net.dns,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn load(conf: serde_json::Value) -> Result<PtpConf, CniError> {
        let args = CmdArgs { config: conf, cni_version: "1.0.0".into(), ..Default::default() };
        PtpConf::load(&args)
    }

    #[test]
    fn keys_decode() {
        let c = load(json!({"name": "n", "ipMasq": true, "ipMasqBackend": "nftables", "mtu": 1400,
            "ipam": {"type": "host-local"}, "dns": {"nameservers": ["10.0.0.10"]}}))
        .unwrap();
        assert!(c.ip_masq);
        assert_eq!(c.ip_masq_backend.as_deref(), Some("nftables"));
        assert_eq!((c.mtu, c.ipam_type.as_str(), c.network.as_str()), (1400, "host-local", "n"));
        assert_eq!(c.dns.nameservers, vec!["10.0.0.10".to_string()]);
    }

    #[test]
    fn invalid_values_name_themselves() {
        let ipam = json!({"type": "host-local"});
        let e = load(json!({"name": "n", "ipam": ipam, "mtu": -1})).unwrap_err();
        assert!(e.msg.contains("mtu") && e.code == INVALID_NETWORK_CONFIG, "{}", e.msg);
        assert!(load(json!({"name": "n", "ipam": ipam, "mtu": 70000})).unwrap_err().msg.contains("mtu"));
        assert!(load(json!({"name": "n", "ipam": ipam, "ipMasqBackend": "pf"})).unwrap_err().msg.contains("\"pf\""));
        assert!(load(json!({"name": "n", "ipam": ipam, "ipMasq": "yes"})).unwrap_err().msg.contains("ipMasq"));
        assert!(load(json!({"name": "n"})).unwrap_err().msg.contains("ipam.type"));
    }
}
