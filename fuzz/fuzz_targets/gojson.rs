//! The Go-style JSON layer: key folding, last-wins, nulls, the spec's NetConf and conflists.
#![no_main]

use cni_types::{gojson, NetConf, NetConfList};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if cni_types::limits::config_size(data).is_err() {
        return;
    }
    let _ = NetConfList::parse(data);
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let conf = gojson::from_ref::<NetConf>(&value);
    if let serde_json::Value::Object(map) = value.clone() {
        // Canonical keys decode to the same struct as the original ones.
        let canonical = serde_json::Value::Object(gojson::canonicalize(map, gojson::fields_of::<NetConf>()));
        let again = gojson::from_ref::<NetConf>(&canonical);
        assert_eq!(conf.as_ref().ok(), again.as_ref().ok(), "canonicalize changed what Go's rules decode");
    }
});
