//! Every plugin's configuration loader over fuzzed JSON (already through the skeleton's checks).
#![no_main]

use cni_plugins::bandwidth::BandwidthConf;
use cni_plugins::bridge::BridgeConf;
use cni_plugins::host_local::config as host_local;
use cni_plugins::portmap::PortmapConf;
use cni_plugins::ptp::PtpConf;
use cni_plugins::rootless::config::WrapperConf;
use cni_plugins::tuning::config as tuning;
use cni_types::CmdArgs;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if cni_types::limits::config_size(data).is_err() {
        return;
    }
    let Ok(config @ serde_json::Value::Object(_)) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let args = CmdArgs {
        container_id: "fuzz".into(),
        netns: "/nonexistent/fuzz".into(),
        ifname: "eth0".into(),
        args: "IgnoreUnknown=1".into(),
        path: "/nonexistent".into(),
        stdin: data.to_vec(),
        config,
        cni_version: "1.1.0".into(),
        ..Default::default()
    };
    if let Ok(conf) = PortmapConf::load(&args) {
        // Every condition accepted is one line's worth of printable text.
        for token in conf.conditions_v4.iter().chain(&conf.conditions_v6) {
            assert!(!token.chars().any(char::is_control), "control character accepted: {token:?}");
        }
        assert!(conf.forwards.len() <= cni_types::limits::MAX_PORT_MAPPINGS);
    }
    let _ = PortmapConf::load_options(&args);
    let _ = BridgeConf::load(&args);
    let _ = host_local::load(&args);
    let _ = PtpConf::load(&args);
    let _ = BandwidthConf::load(&args);
    if let Ok(conf) = tuning::parse(&args) {
        // Every sysctl accepted names a file under /proc/sys/net without a way out of it.
        for s in &conf.sysctls {
            assert!(s.rel.starts_with("net/"), "sysctl outside net/: {:?}", s.rel);
            assert!(!s.rel.split('/').any(|c| c == ".." || c == "." || c.is_empty()), "sysctl path escapes: {:?}", s.rel);
        }
    }
    let getenv = |_: &str| -> Option<String> { None };
    let _ = WrapperConf::load(&args, &getenv);
});
