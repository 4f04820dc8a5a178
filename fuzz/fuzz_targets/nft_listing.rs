//! `nft -j list` answers.
#![no_main]

use cni_plugins::firewall::tools::nft::Listing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    if let Ok(listing) = Listing::parse(&doc) {
        for rule in &listing.rules {
            let _ = cni_plugins::firewall::nftables::portmap_conditions::render(rule);
        }
    }
});
