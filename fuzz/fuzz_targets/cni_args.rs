//! `CNI_ARGS`: `K=V;K=V` with the reference's rules.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(values) = cni_types::args::parse(&text, &["IP", "MAC", "K8S_POD_NAME"]) {
        for (k, v) in &values {
            assert!(["IP", "MAC", "K8S_POD_NAME"].contains(&k.as_str()));
            assert!(!v.contains(';') && !v.contains('='), "a value holds a separator: {v:?}");
        }
    }
});
