//! MAC spoof check (bridge `macspoofchk`): frames entering the bridge from the container's host veth
//! must carry the container's MAC. The reference's nftables layout (research 2.5), `bridge nat` table:
//! ```text
//! chain PREROUTING { type filter hook prerouting priority -300; policy accept;
//!     iifname "<veth>" jump cni-br-iface-<cid>-<if> comment "macspoofchk-<cid>-<if>" }
//! chain cni-br-iface-<cid>-<if> { jump cni-br-iface-<cid>-<if>-mac comment "…" }
//! chain cni-br-iface-<cid>-<if>-mac { ether saddr <mac> return comment "…"; drop comment "…" }
//! ```
//! The table and `PREROUTING` are shared and stay after teardown, as with the reference.

use super::error::FirewallError;
use super::tools::has_tool;
use super::tools::nft::{self, apply_nft, Listing, Script};

const FAMILY: &str = "bridge";
const TABLE: &str = "nat";
const PREROUTING: &str = "PREROUTING";

/// The names of one attachment's objects.
struct Names {
    iface_chain: String,
    mac_chain: String,
    comment: String,
}

impl Names {
    fn new(container_id: &str, ifname: &str) -> Names {
        let ref_id = format!("{container_id}-{ifname}");
        let iface_chain = format!("cni-br-iface-{ref_id}");
        Names { mac_chain: format!("{iface_chain}-mac"), iface_chain, comment: format!("macspoofchk-{ref_id}") }
    }

    /// This attachment's `PREROUTING` rules: by comment as the reference finds them, or by jump target.
    fn is_entry_rule(&self, rule: &nft::ListedRule) -> bool {
        rule.chain == PREROUTING
            && (rule.comment.as_deref() == Some(self.comment.as_str())
                || rule.has_verdict_to("jump", &self.iface_chain))
    }
}

/// Installs the spoof check for `host_veth`, allowing only `mac`; re-running replaces the rules.
pub fn setup_spoofcheck(host_veth: &str, container_id: &str, ifname: &str, mac: &str) -> Result<(), FirewallError> {
    apply_nft(&["chain", FAMILY, TABLE, PREROUTING], false, |listing| {
        plan_setup(listing, host_veth, container_id, ifname, mac).map(Some)
    })
}

/// Removes the spoof check of one attachment; what is already gone (or no `nft` at all) is success.
pub fn teardown_spoofcheck(container_id: &str, ifname: &str) -> Result<(), FirewallError> {
    if !has_tool("nft") {
        return Ok(());
    }
    apply_nft(&["table", FAMILY, TABLE], true, |listing| plan_teardown(listing, container_id, ifname))
}

/// Plans setup in one transaction: declare the table and chains, flush this attachment's chains,
/// replace its `PREROUTING` entry rule (the reference appends another on every ADD), add the rules.
fn plan_setup(
    listing: &Listing,
    host_veth: &str,
    container_id: &str,
    ifname: &str,
    mac: &str,
) -> Result<Script, FirewallError> {
    let names = Names::new(container_id, ifname);
    let iface_chain = nft::identifier("spoofcheck chain", &names.iface_chain)?;
    let mac_chain = nft::identifier("spoofcheck chain", &names.mac_chain)?;
    let comment = nft::quote("spoofcheck comment", &names.comment)?;
    let veth = nft::quote("host veth name", host_veth)?;
    let mac = normalize_mac(mac)?;

    let mut script = Script::new();
    script.add_table(FAMILY, TABLE, None);
    // Re-adding an existing chain is slow once it holds many rules (~20 ms at 100), and PREROUTING
    // holds one per attachment.
    if !listing.has_chain(PREROUTING) {
        script.add_chain(
            FAMILY,
            TABLE,
            PREROUTING,
            Some("type filter hook prerouting priority -300 ; policy accept ;"),
        );
    }
    script.add_chain(FAMILY, TABLE, iface_chain, None);
    script.add_chain(FAMILY, TABLE, mac_chain, None);
    script.flush_chain(FAMILY, TABLE, iface_chain);
    script.flush_chain(FAMILY, TABLE, mac_chain);
    for rule in listing.rules.iter().filter(|r| names.is_entry_rule(r)) {
        script.delete_rule(rule);
    }
    script.add_rule(FAMILY, TABLE, PREROUTING, &format!("iifname {veth} jump {iface_chain} comment {comment}"));
    script.add_rule(FAMILY, TABLE, iface_chain, &format!("jump {mac_chain} comment {comment}"));
    script.add_rule(FAMILY, TABLE, mac_chain, &format!("ether saddr {mac} return comment {comment}"));
    script.add_rule(FAMILY, TABLE, mac_chain, &format!("drop comment {comment}"));
    Ok(script)
}

/// Plans teardown: delete the entry rules, then flush and delete whichever of the two chains exist
/// (the iface chain first: it jumps to the mac chain). `None` when nothing is left.
fn plan_teardown(listing: &Listing, container_id: &str, ifname: &str) -> Result<Option<Script>, FirewallError> {
    let names = Names::new(container_id, ifname);
    let mut script = Script::new();
    for rule in listing.rules.iter().filter(|r| names.is_entry_rule(r)) {
        script.delete_rule(rule);
    }
    for chain in [&names.iface_chain, &names.mac_chain] {
        if listing.has_chain(chain) {
            let chain = nft::identifier("spoofcheck chain", chain)?;
            script.flush_chain(FAMILY, TABLE, chain);
            script.delete_chain(FAMILY, TABLE, chain);
        }
    }
    Ok((!script.is_empty()).then_some(script))
}

/// `0A-58-…` or `0a:58:…` → `0a:58:…`; anything else is rejected rather than pasted into a script.
fn normalize_mac(mac: &str) -> Result<String, FirewallError> {
    let octets: Vec<&str> = mac.split([':', '-']).collect();
    let valid = octets.len() == 6 && octets.iter().all(|o| o.len() == 2 && o.chars().all(|c| c.is_ascii_hexdigit()));
    if !valid {
        return Err(FirewallError::Invalid {
            what: "MAC address",
            value: mac.to_string(),
            reason: "want six hex octets",
        });
    }
    Ok(octets.join(":").to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// `nft -j list table bridge nat` after the reference bridge v1.1.1 ran ADD with `macspoofchk: true`
    /// (container ctr1, eth0, host veth veth5a54b7d2, MAC d6:af:d2:ec:5e:9d), trimmed to one rule per chain.
    fn reference_listing() -> Listing {
        let doc: Value = json!({"nftables": [
            {"table": {"family": "bridge", "name": "nat", "handle": 1}},
            {"chain": {"family": "bridge", "table": "nat", "name": "PREROUTING", "handle": 1, "type": "filter",
                       "hook": "prerouting", "prio": -300, "policy": "accept"}},
            {"chain": {"family": "bridge", "table": "nat", "name": "cni-br-iface-ctr1-eth0", "handle": 2}},
            {"chain": {"family": "bridge", "table": "nat", "name": "cni-br-iface-ctr1-eth0-mac", "handle": 3}},
            {"rule": {"family": "bridge", "table": "nat", "chain": "PREROUTING", "handle": 4,
                      "comment": "macspoofchk-ctr1-eth0", "expr": [
                {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "veth5a54b7d2"}},
                {"jump": {"target": "cni-br-iface-ctr1-eth0"}}]}},
            {"rule": {"family": "bridge", "table": "nat", "chain": "cni-br-iface-ctr1-eth0", "handle": 5,
                      "comment": "macspoofchk-ctr1-eth0", "expr": [{"jump": {"target": "cni-br-iface-ctr1-eth0-mac"}}]}},
            {"rule": {"family": "bridge", "table": "nat", "chain": "PREROUTING", "handle": 9,
                      "comment": "macspoofchk-ctr2-eth0", "expr": [{"jump": {"target": "cni-br-iface-ctr2-eth0"}}]}}]});
        Listing::parse(&doc).unwrap()
    }

    #[test]
    fn setup_script_is_the_reference_layout() {
        let script = plan_setup(&Listing::default(), "veth5a54b7d2", "ctr1", "eth0", "D6:AF:D2:EC:5E:9D").unwrap();
        assert_eq!(
            script.render(),
            r#"add table bridge nat
add chain bridge nat PREROUTING { type filter hook prerouting priority -300 ; policy accept ; }
add chain bridge nat cni-br-iface-ctr1-eth0
add chain bridge nat cni-br-iface-ctr1-eth0-mac
flush chain bridge nat cni-br-iface-ctr1-eth0
flush chain bridge nat cni-br-iface-ctr1-eth0-mac
add rule bridge nat PREROUTING iifname "veth5a54b7d2" jump cni-br-iface-ctr1-eth0 comment "macspoofchk-ctr1-eth0"
add rule bridge nat cni-br-iface-ctr1-eth0 jump cni-br-iface-ctr1-eth0-mac comment "macspoofchk-ctr1-eth0"
add rule bridge nat cni-br-iface-ctr1-eth0-mac ether saddr d6:af:d2:ec:5e:9d return comment "macspoofchk-ctr1-eth0"
add rule bridge nat cni-br-iface-ctr1-eth0-mac drop comment "macspoofchk-ctr1-eth0"
"#
        );
    }

    #[test]
    fn setup_replaces_the_entry_rule() {
        let script = plan_setup(&reference_listing(), "vethnew", "ctr1", "eth0", "d6:af:d2:ec:5e:9d").unwrap().render();
        assert!(script.contains("delete rule bridge nat PREROUTING handle 4\n"));
        assert!(!script.contains("handle 9"), "another attachment's rule is kept: {script}");
    }

    #[test]
    fn teardown_script() {
        let script = plan_teardown(&reference_listing(), "ctr1", "eth0").unwrap().unwrap();
        assert_eq!(
            script.render(),
            "delete rule bridge nat PREROUTING handle 4\nflush chain bridge nat cni-br-iface-ctr1-eth0\n\
             delete chain bridge nat cni-br-iface-ctr1-eth0\nflush chain bridge nat cni-br-iface-ctr1-eth0-mac\n\
             delete chain bridge nat cni-br-iface-ctr1-eth0-mac\n"
        );
        assert_eq!(plan_teardown(&Listing::default(), "ctr1", "eth0").unwrap(), None);
    }

    #[test]
    fn rejects_what_nft_cannot_express() {
        assert!(plan_setup(&Listing::default(), "veth1", "ctr1", "eth0", "d6:af:d2:ec:5e").is_err());
        assert!(plan_setup(&Listing::default(), "veth\"1", "ctr1", "eth0", "d6:af:d2:ec:5e:9d").is_err());
        assert!(plan_setup(&Listing::default(), "veth1", "ctr1", "eth 0", "d6:af:d2:ec:5e:9d").is_err());
        assert_eq!(normalize_mac("0A-58-0a-01-00-05").unwrap(), "0a:58:0a:01:00:05");
    }
}
