//! Results of every version (`prevResult`, delegate output): parse, then convert to every version.
#![no_main]

use cni_types::CniResult;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((pick, json)) = data.split_first() else { return };
    let versions = cni_types::version::ALL;
    let version = versions[usize::from(*pick) % versions.len()];
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(json) else { return };
    let Ok(result) = CniResult::parse(value, version) else { return };
    for target in versions {
        if let Ok(out) = result.to_version_json(target) {
            // What we print, we read back.
            let _ = CniResult::parse(out, target).expect("a printed result parses");
        }
    }
});
