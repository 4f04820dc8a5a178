//! Files the plugins read back: host-local reservations and its owner index, the rootless
//! wrapper's `state.json`, slirp4netns API answers, resolv.conf.
#![no_main]

use cni_plugins::host_local::{dns, index, store};
use cni_plugins::rootless::{slirp, state};
use libfuzzer_sys::fuzz_target;
use std::io::Write;

/// The index's checksum line (FNV-1a 64), so that fuzzed JSON gets past it.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = store::Owner::parse(&text);
    let _ = dns::parse_resolv_conf(&text);
    let _ = state::State::decode(data);
    let _ = slirp::parse_response(data);
    let _ = slirp::parse_proc_stat(&text);
    let Ok(mut file) = tempfile() else { return };
    let _ = file.write_all(data);
    let _ = write!(file, "\n{:x}", fnv(data));
    if let Ok(meta) = file.metadata() {
        let _ = index::load(&file, index::Stamp::of(&meta));
    }
});

fn tempfile() -> std::io::Result<std::fs::File> {
    let dir = std::env::temp_dir();
    let path = dir.join(format!("cni-fuzz-index-{}", std::process::id()));
    let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}
