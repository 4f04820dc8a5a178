//! Port forwarding (`portmap`) with nftables, in the reference's layout (research 3.5): one table
//! per family, `ip cni_hostport` and `ip6 cni_hostport`:
//! ```text
//! table ip cni_hostport {
//!     comment "CNI portmap plugin"
//!     chain hostports { [ip daddr <hostIP>] tcp dport 8080 dnat to 10.1.0.5:80 comment "<containerID>" … }
//!     chain hostip_hostports { }                                   # kept empty for upgrades
//!     chain hostports_all { jump hostip_hostports; jump hostports }
//!     chain prerouting { type nat hook prerouting priority dstnat; <conditions> fib daddr type local jump hostports_all }
//!     chain output { type nat hook output priority -100; <conditions> fib daddr type local jump hostports_all }
//!     chain masquerading { type nat hook postrouting priority srcnat;       # only with snat
//!         ip saddr 10.1.0.5 ip daddr 10.1.0.5 masquerade comment "<containerID>"     # hairpin (masqAll: 0.0.0.0/0)
//!         ip saddr 127.0.0.1 ip daddr 10.1.0.5 masquerade comment "<containerID>"    # localhost (IPv4, not masqAll)
//!     }
//! }
//! ```
//! The comment is the bare container ID, as the reference writes it, so either suite's DEL finds
//! the other's rules; it names no network, which is why GC cannot attribute rules to one.
//!
//! An ADD lists only `prerouting` (a few rules) and, when it is already right, adds its rules in one
//! transaction: listing the whole table, re-adding existing chains or rewriting `prerouting` on every
//! ADD (as the reference does) would cost time growing with the number of mappings, and deleting
//! rules makes the kernel wait for their destruction.

use super::{
    HOSTIP_HOSTPORTS, HOSTPORTS, HOSTPORTS_ALL, HOSTPORT_TABLE as TABLE, HOSTPORT_TABLE_COMMENT as TABLE_COMMENT,
};
use super::{MASQUERADING, OUTPUT, PREROUTING};
use crate::errors::Collector;
use crate::firewall::error::FirewallError;
use crate::firewall::fastpath;
use crate::firewall::model::{Family, Portmap};
use crate::firewall::tools::nft::{self, apply_nft, nft_apply, ListedRule, Listing, Script};
use crate::firewall::tools::run;
use ipnetwork::IpNetwork;
use serde_json::Value;
use std::collections::HashSet;
use std::net::IpAddr;

/// Numeric priorities: nft 1.0.6 accepts the name `dstnat` only in the prerouting hook.
const PREROUTING_SPEC: &str = "type nat hook prerouting priority -100 ;";
const OUTPUT_SPEC: &str = "type nat hook output priority -100 ;";
const MASQUERADING_SPEC: &str = "type nat hook postrouting priority 100 ;";
/// The tail of the `prerouting` and `output` rules; `fib daddr type local` keeps a hostIP rule
/// from catching traffic that only passes through the host (plugins#1209).
const ENTRY_TAIL: &str = "fib daddr type local jump hostports_all";

/// The `prerouting`/`output` rule: the family's conditions, then the local-destination jump.
fn entry_rule(t: &Portmap, family: Family) -> String {
    let mut parts: Vec<&str> = t.conditions(family).iter().map(String::as_str).collect();
    parts.push(ENTRY_TAIL);
    parts.join(" ")
}

/// `ip:port`, or `[ip]:port` for IPv6, as nft writes a DNAT target.
fn ip_port(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// This container's `hostports` rules for one address, in mapping order.
fn hostport_rules(t: &Portmap, address: &IpNetwork) -> Vec<String> {
    let family = Family::of(&address.ip());
    let ip = family.nft_keyword();
    t.forwards
        .iter()
        .filter(|f| f.applies_to(family))
        .map(|f| {
            let daddr = f.destination().map(|d| format!("{ip} daddr {d} ")).unwrap_or_default();
            format!(
                "{daddr}{} dport {} dnat to {}",
                f.protocol.as_str(),
                f.host_port,
                ip_port(address.ip(), f.container_port)
            )
        })
        .collect()
}

/// This container's `masquerading` rules for one address: hairpin, then localhost (IPv4, not masqAll).
fn masquerade_rules(t: &Portmap, address: &IpNetwork) -> Vec<String> {
    if !t.snat {
        return Vec::new();
    }
    let family = Family::of(&address.ip());
    let ip = family.nft_keyword();
    let cip = address.ip();
    let source = match (t.masq_all, family) {
        (true, Family::V4) => "0.0.0.0/0".to_string(),
        (true, Family::V6) => "::/0".to_string(),
        (false, _) => cip.to_string(),
    };
    let mut rules = vec![format!("{ip} saddr {source} {ip} daddr {cip} masquerade")];
    if family == Family::V4 && !t.masq_all {
        rules.push(format!("ip saddr 127.0.0.1 ip daddr {cip} masquerade"));
    }
    rules
}

/// Writes a listed rule back in nft syntax for the expressions these rules use; anything else
/// becomes `?`, which matches no planned rule.
pub fn render(rule: &ListedRule) -> String {
    rule.expr.iter().map(render_expr).collect::<Vec<_>>().join(" ")
}

fn render_expr(e: &Value) -> String {
    let render_value = |v: &Value| -> String {
        match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Object(_) => match v.get("prefix") {
                Some(p) => format!(
                    "{}/{}",
                    p.get("addr").and_then(Value::as_str).unwrap_or("?"),
                    p.get("len").and_then(Value::as_u64).map(|l| l.to_string()).unwrap_or_else(|| "?".into())
                ),
                None => "?".into(),
            },
            _ => "?".into(),
        }
    };
    if let Some(m) = e.get("match") {
        let left = m.get("left").unwrap_or(&Value::Null);
        let left = if let Some(p) = left.get("payload") {
            format!(
                "{} {}",
                p.get("protocol").and_then(Value::as_str).unwrap_or("?"),
                p.get("field").and_then(Value::as_str).unwrap_or("?")
            )
        } else if let Some(f) = left.get("fib") {
            let flags: Vec<&str> =
                f.get("flags").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
            format!("fib {} {}", flags.join(" . "), f.get("result").and_then(Value::as_str).unwrap_or("?"))
        } else if let Some(k) = left.get("meta").and_then(|m| m.get("key")).and_then(Value::as_str) {
            format!("meta {k}")
        } else {
            "?".into()
        };
        let op = match m.get("op").and_then(Value::as_str) {
            Some("==") | Some("in") => String::new(),
            Some(op) => format!("{op} "),
            None => "? ".into(),
        };
        return format!("{left} {op}{}", render_value(m.get("right").unwrap_or(&Value::Null)));
    }
    for verdict in ["jump", "goto"] {
        if let Some(target) = e.get(verdict).and_then(|v| v.get("target")).and_then(Value::as_str) {
            return format!("{verdict} {target}");
        }
    }
    if let Some(d) = e.get("dnat") {
        let addr = d.get("addr").map(render_value).unwrap_or_else(|| "?".into());
        return match d.get("port").and_then(Value::as_u64) {
            Some(port) if addr.contains(':') => format!("dnat to [{addr}]:{port}"),
            Some(port) => format!("dnat to {addr}:{port}"),
            None => format!("dnat to {addr}"),
        };
    }
    if e.get("masquerade").is_some() {
        return "masquerade".into();
    }
    "?".into()
}

/// Whether `chain` holds exactly `want`, in order.
fn chain_is(listing: &Listing, chain: &str, want: &[String]) -> bool {
    listing.rules_in(chain).map(render).eq(want.iter().cloned())
}

/// The `(chain, text)` of every rule in the container's chains that carries its comment, rendered
/// once, so that looking up each planned rule costs one hash rather than a walk of the listing.
fn own_rules<'a>(listing: &'a Listing, container_id: &str) -> HashSet<(&'a str, String)> {
    [HOSTPORTS, HOSTIP_HOSTPORTS, MASQUERADING]
        .into_iter()
        .flat_map(|chain| listing.rules_in(chain))
        .filter(|r| r.comment.as_deref() == Some(container_id))
        .map(|r| (r.chain.as_str(), render(r)))
        .collect()
}

/// Plans ADD from a listing of the family's table: create what is missing, rewrite
/// `hostports_all`, `prerouting` and `output` only when they are not already right, add this
/// container's rules that are not there yet.
fn plan_setup(listing: &Listing, t: &Portmap, address: &IpNetwork) -> Result<Script, FirewallError> {
    let family = Family::of(&address.ip());
    let fam = family.nft_keyword();
    let comment = nft::quote("container ID", t.container_id)?;
    let mut script = Script::new();
    if listing.chains.is_empty() {
        script.add_table(fam, TABLE, Some(TABLE_COMMENT));
    }
    for chain in [HOSTPORTS, HOSTIP_HOSTPORTS, HOSTPORTS_ALL] {
        if !listing.has_chain(chain) {
            script.add_chain(fam, TABLE, chain, None);
        }
    }
    let jumps = [format!("jump {HOSTIP_HOSTPORTS}"), format!("jump {HOSTPORTS}")];
    if !chain_is(listing, HOSTPORTS_ALL, &jumps) {
        script.flush_chain(fam, TABLE, HOSTPORTS_ALL);
        jumps.iter().for_each(|j| script.add_rule(fam, TABLE, HOSTPORTS_ALL, j));
    }
    let entry = [entry_rule(t, family)];
    for (chain, spec) in [(PREROUTING, PREROUTING_SPEC), (OUTPUT, OUTPUT_SPEC)] {
        if chain_is(listing, chain, &entry) {
            continue;
        }
        if !listing.has_chain(chain) {
            script.add_chain(fam, TABLE, chain, Some(spec));
        }
        // Flushed even when just created: a concurrent first ADD may have filled it meanwhile.
        script.flush_chain(fam, TABLE, chain);
        script.add_rule(fam, TABLE, chain, &entry[0]);
    }
    if t.snat && !listing.has_chain(MASQUERADING) {
        script.add_chain(fam, TABLE, MASQUERADING, Some(MASQUERADING_SPEC));
    }
    let mut present = own_rules(listing, t.container_id);
    let own = hostport_rules(t, address).into_iter().map(|r| (HOSTPORTS, r));
    for (chain, rule) in own.chain(masquerade_rules(t, address).into_iter().map(|r| (MASQUERADING, r))) {
        let line = format!("{rule} comment {comment}");
        if present.insert((chain, rule)) {
            script.add_rule(fam, TABLE, chain, &line);
        }
    }
    Ok(script)
}

/// The one-transaction ADD: this container's rules only, valid when the chains exist.
fn plan_fast_setup(t: &Portmap, address: &IpNetwork) -> Result<Script, FirewallError> {
    let fam = Family::of(&address.ip()).nft_keyword();
    let comment = nft::quote("container ID", t.container_id)?;
    let mut script = Script::new();
    let mut seen: HashSet<(&str, String)> = HashSet::new();
    let own = hostport_rules(t, address).into_iter().map(|r| (HOSTPORTS, r));
    for (chain, rule) in own.chain(masquerade_rules(t, address).into_iter().map(|r| (MASQUERADING, r))) {
        let line = format!("{rule} comment {comment}");
        if seen.insert((chain, rule)) {
            script.add_rule(fam, TABLE, chain, &line);
        }
    }
    Ok(script)
}

/// ADD for the family of `address`, for a portmap with entry conditions.
pub fn setup(t: &Portmap, address: &IpNetwork) -> Result<(), FirewallError> {
    let family = Family::of(&address.ip());
    let fam = family.nft_keyword();
    // `prerouting` right means a complete, current layout was written before (all chains are
    // created in one transaction); a missing `masquerading` fails the transaction below instead.
    let entry = [entry_rule(t, family)];
    let listing = match fastpath::enabled() {
        true => Listing::fetch(&["chain", fam, TABLE, PREROUTING]),
        false => Err(FirewallError::Check("fast paths are off".into())),
    };
    match listing {
        Ok(listing) if chain_is(&listing, PREROUTING, &entry) => {
            match nft_apply(&plan_fast_setup(t, address)?.render()) {
                Ok(()) => return Ok(()),
                Err(e) => log::debug!("portmap: listing table {fam} {TABLE} after the one-transaction ADD failed: {e}"),
            }
        }
        Ok(_) => {}
        Err(e) => log::debug!("portmap: cannot list {fam} {TABLE} {PREROUTING}: {e}"),
    }
    apply_nft(&["table", fam, TABLE], false, |listing| plan_setup(listing, t, address).map(Some))
}

/// CHECK for the family of `address`: the entry chains lead to `hostports`, and every rule ADD
/// adds for this container is there with its comment.
fn verify(listing: &Listing, t: &Portmap, address: &IpNetwork) -> Result<(), String> {
    let fam = Family::of(&address.ip()).nft_keyword();
    for chain in [PREROUTING, OUTPUT] {
        if !listing.rules_in(chain).any(|r| render(r).ends_with(ENTRY_TAIL)) {
            return Err(format!("chain {chain} of table {fam} {TABLE} does not jump to {HOSTPORTS_ALL}"));
        }
    }
    if !listing.rules_in(HOSTPORTS_ALL).any(|r| r.has_verdict_to("jump", HOSTPORTS)) {
        return Err(format!("chain {HOSTPORTS_ALL} of table {fam} {TABLE} does not jump to {HOSTPORTS}"));
    }
    let present = own_rules(listing, t.container_id);
    let own = hostport_rules(t, address).into_iter().map(|r| (HOSTPORTS, r));
    for (chain, rule) in own.chain(masquerade_rules(t, address).into_iter().map(|r| (MASQUERADING, r))) {
        if !present.contains(&(chain, rule.clone())) {
            return Err(format!(
                "missing hostport rule in chain {chain} of table {fam} {TABLE}: {rule} comment {:?}",
                t.container_id
            ));
        }
    }
    Ok(())
}

/// CHECK for the family of `address`, for a portmap with entry conditions.
pub fn check(t: &Portmap, address: &IpNetwork) -> Result<(), FirewallError> {
    let fam = Family::of(&address.ip()).nft_keyword();
    let listing = Listing::fetch(&["table", fam, TABLE])?;
    verify(&listing, t, address).map_err(FirewallError::Check)
}

/// Plans deleting the rules whose comment is exactly the container ID, from the chains the
/// reference writes them to; `None` when there are none.
fn plan_teardown(listing: &Listing, container_id: &str) -> Option<Script> {
    let mut script = Script::new();
    for chain in [HOSTPORTS, HOSTIP_HOSTPORTS, MASQUERADING] {
        for rule in listing.rules_in(chain).filter(|r| r.comment.as_deref() == Some(container_id)) {
            script.delete_rule(rule);
        }
    }
    (!script.is_empty()).then_some(script)
}

/// DEL through `nft`: deletes this container's rules from both families' tables (what is not
/// there is success).
pub fn teardown(container_id: &str) -> Result<(), FirewallError> {
    let mut errors = Collector::new();
    for family in Family::ALL {
        let what = ["table", family.nft_keyword(), TABLE];
        if let Err(e) = apply_nft(&what, true, |listing| Ok(plan_teardown(listing, container_id))) {
            errors.push(e);
        }
    }
    errors.finish()
}

/// STATUS: whether `nft` runs and the kernel has nf_tables.
pub fn usable() -> Result<(), FirewallError> {
    run("nft", &["list", "tables"], None).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::{PortForward, Protocol};

    fn fwd(host_port: u16, container_port: u16, protocol: Protocol, host_ip: Option<&str>) -> PortForward {
        PortForward { host_port, container_port, protocol, host_ip: host_ip.map(|s| s.parse().unwrap()) }
    }

    fn portmap(forwards: &[PortForward]) -> Portmap<'_> {
        Portmap::with_defaults("specnet", "ctr1", forwards)
    }

    fn forwards() -> Vec<PortForward> {
        vec![
            fwd(8080, 80, Protocol::Tcp, None),
            fwd(5353, 53, Protocol::Udp, Some("127.0.0.1")),
            fwd(8443, 443, Protocol::Sctp, Some("fd00::9")),
        ]
    }

    fn addr(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    /// `nft -j list table ip cni_hostport` (nft 1.0.6) after a script with this module's rules,
    /// reduced to the chains and rules.
    fn listed_v4() -> Listing {
        let rule = |chain: &str, handle: u64, comment: Option<&str>, expr: Value| {
            let mut r =
                serde_json::json!({"family": "ip", "table": TABLE, "chain": chain, "handle": handle, "expr": expr});
            if let Some(c) = comment {
                r["comment"] = c.into();
            }
            serde_json::json!({ "rule": r })
        };
        let chain = |name: &str| serde_json::json!({"chain": {"family": "ip", "table": TABLE, "name": name}});
        let payload = |proto: &str, field: &str, right: Value| serde_json::json!({"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": field}}, "right": right}});
        let fib = serde_json::json!({"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local"}});
        let jump = |to: &str| serde_json::json!({"jump": {"target": to}});
        let doc = serde_json::json!({"nftables": [
            chain(HOSTPORTS), chain(HOSTIP_HOSTPORTS), chain(HOSTPORTS_ALL), chain(PREROUTING), chain(OUTPUT), chain(MASQUERADING),
            rule(HOSTPORTS, 11, Some("ctr1"), serde_json::json!([payload("tcp", "dport", 8080.into()),
                {"dnat": {"addr": "10.1.0.5", "port": 80}}])),
            rule(HOSTPORTS, 12, Some("ctr1"), serde_json::json!([payload("ip", "daddr", "127.0.0.1".into()),
                payload("udp", "dport", 5353.into()), {"dnat": {"addr": "10.1.0.5", "port": 53}}])),
            rule(HOSTPORTS, 13, Some("ctr2"), serde_json::json!([payload("tcp", "dport", 9090.into()),
                {"dnat": {"addr": "10.1.0.6", "port": 90}}])),
            rule(HOSTPORTS_ALL, 4, None, serde_json::json!([jump(HOSTIP_HOSTPORTS)])),
            rule(HOSTPORTS_ALL, 5, None, serde_json::json!([jump(HOSTPORTS)])),
            rule(PREROUTING, 7, None, serde_json::json!([fib.clone(), jump(HOSTPORTS_ALL)])),
            rule(OUTPUT, 9, None, serde_json::json!([fib, jump(HOSTPORTS_ALL)])),
            rule(MASQUERADING, 14, Some("ctr1"), serde_json::json!([payload("ip", "saddr", "10.1.0.5".into()),
                payload("ip", "daddr", "10.1.0.5".into()), {"masquerade": null}])),
            rule(MASQUERADING, 15, Some("ctr1"), serde_json::json!([payload("ip", "saddr", "127.0.0.1".into()),
                payload("ip", "daddr", "10.1.0.5".into()), {"masquerade": null}])),
        ]});
        Listing::parse(&doc).unwrap()
    }

    #[test]
    fn first_add_script() {
        let f = forwards();
        let script = plan_setup(&Listing::default(), &portmap(&f), &addr("10.1.0.5/24")).unwrap();
        assert_eq!(
            script.render(),
            r#"add table ip cni_hostport { comment "CNI portmap plugin" ; }
add chain ip cni_hostport hostports
add chain ip cni_hostport hostip_hostports
add chain ip cni_hostport hostports_all
flush chain ip cni_hostport hostports_all
add rule ip cni_hostport hostports_all jump hostip_hostports
add rule ip cni_hostport hostports_all jump hostports
add chain ip cni_hostport prerouting { type nat hook prerouting priority -100 ; }
flush chain ip cni_hostport prerouting
add rule ip cni_hostport prerouting fib daddr type local jump hostports_all
add chain ip cni_hostport output { type nat hook output priority -100 ; }
flush chain ip cni_hostport output
add rule ip cni_hostport output fib daddr type local jump hostports_all
add chain ip cni_hostport masquerading { type nat hook postrouting priority 100 ; }
add rule ip cni_hostport hostports tcp dport 8080 dnat to 10.1.0.5:80 comment "ctr1"
add rule ip cni_hostport hostports ip daddr 127.0.0.1 udp dport 5353 dnat to 10.1.0.5:53 comment "ctr1"
add rule ip cni_hostport masquerading ip saddr 10.1.0.5 ip daddr 10.1.0.5 masquerade comment "ctr1"
add rule ip cni_hostport masquerading ip saddr 127.0.0.1 ip daddr 10.1.0.5 masquerade comment "ctr1"
"#
        );
    }

    #[test]
    fn ipv6_rules_and_options() {
        let f = forwards();
        let t = portmap(&f);
        assert_eq!(
            hostport_rules(&t, &addr("fd00::5/64")),
            ["tcp dport 8080 dnat to [fd00::5]:80", "ip6 daddr fd00::9 sctp dport 8443 dnat to [fd00::5]:443"]
        );
        assert_eq!(masquerade_rules(&t, &addr("fd00::5/64")), ["ip6 saddr fd00::5 ip6 daddr fd00::5 masquerade"]);
        let all = Portmap { masq_all: true, ..t };
        assert_eq!(masquerade_rules(&all, &addr("10.1.0.5/24")), ["ip saddr 0.0.0.0/0 ip daddr 10.1.0.5 masquerade"]);
        assert_eq!(masquerade_rules(&all, &addr("fd00::5/64")), ["ip6 saddr ::/0 ip6 daddr fd00::5 masquerade"]);
        assert!(masquerade_rules(&Portmap { snat: false, ..t }, &addr("10.1.0.5/24")).is_empty());
        let conditions = ["ip".to_string(), "daddr".into(), "!=".into(), "192.0.2.0/24".into()];
        let t = Portmap { conditions_v4: &conditions, ..t };
        assert_eq!(entry_rule(&t, Family::V4), "ip daddr != 192.0.2.0/24 fib daddr type local jump hostports_all");
        assert_eq!(entry_rule(&t, Family::V6), "fib daddr type local jump hostports_all");
    }

    #[test]
    fn an_existing_layout_only_gets_the_new_rules() {
        let listing = listed_v4();
        let f = vec![fwd(8080, 80, Protocol::Tcp, None), fwd(8081, 81, Protocol::Tcp, None)];
        let script = plan_setup(&listing, &portmap(&f), &addr("10.1.0.5/24")).unwrap();
        assert_eq!(
            script.render(),
            "add rule ip cni_hostport hostports tcp dport 8081 dnat to 10.1.0.5:81 comment \"ctr1\"\n"
        );
        // Other conditions: prerouting and output are rewritten (last writer wins, as in the reference).
        let conditions = ["ip".to_string(), "daddr".into(), "!=".into(), "192.0.2.0/24".into()];
        let t = Portmap { conditions_v4: &conditions, ..portmap(&f) };
        let script = plan_setup(&listing, &t, &addr("10.1.0.5/24")).unwrap().render();
        assert!(script.contains("flush chain ip cni_hostport prerouting\nadd rule ip cni_hostport prerouting ip daddr != 192.0.2.0/24 fib daddr type local jump hostports_all\n"), "{script}");
        assert!(script.contains("flush chain ip cni_hostport output\n"), "{script}");
    }

    #[test]
    fn renders_listed_rules() {
        let listing = listed_v4();
        let texts: Vec<String> = listing.rules_in(HOSTPORTS).map(render).collect();
        assert_eq!(
            texts,
            [
                "tcp dport 8080 dnat to 10.1.0.5:80",
                "ip daddr 127.0.0.1 udp dport 5353 dnat to 10.1.0.5:53",
                "tcp dport 9090 dnat to 10.1.0.6:90"
            ]
        );
        let odd: Value = serde_json::json!({"nftables": [{"rule": {"family": "ip6", "table": TABLE, "chain": PREROUTING,
            "handle": 3, "expr": [
            {"match": {"op": "!=", "left": {"payload": {"protocol": "ip6", "field": "daddr"}}, "right": {"prefix": {"addr": "fd01::", "len": 64}}}},
            {"counter": {"packets": 0, "bytes": 0}},
            {"dnat": {"addr": "fd00::5", "port": 80}}]}}]});
        let listing = Listing::parse(&odd).unwrap();
        assert_eq!(render(&listing.rules[0]), "ip6 daddr != fd01::/64 ? dnat to [fd00::5]:80");
    }

    #[test]
    fn check_finds_missing_rules() {
        let listing = listed_v4();
        let f = forwards();
        assert_eq!(verify(&listing, &portmap(&f), &addr("10.1.0.5/24")), Ok(()));
        let more = vec![fwd(8081, 81, Protocol::Tcp, None)];
        let err = verify(&listing, &portmap(&more), &addr("10.1.0.5/24")).unwrap_err();
        assert!(err.contains("tcp dport 8081 dnat to 10.1.0.5:81"), "{err}");
        assert!(verify(&Listing::default(), &portmap(&f), &addr("10.1.0.5/24")).is_err());
    }

    #[test]
    fn teardown_deletes_only_this_containers_rules() {
        let script = plan_teardown(&listed_v4(), "ctr1").unwrap();
        assert_eq!(
            script.render(),
            "delete rule ip cni_hostport hostports handle 11\ndelete rule ip cni_hostport hostports handle 12\n\
             delete rule ip cni_hostport masquerading handle 14\ndelete rule ip cni_hostport masquerading handle 15\n"
        );
        assert_eq!(plan_teardown(&listed_v4(), "ctr9"), None);
    }

    #[test]
    fn fast_script_adds_rules_only() {
        let f = forwards();
        let script = plan_fast_setup(&portmap(&f), &addr("fd00::5/64")).unwrap().render();
        assert_eq!(
            script,
            "add rule ip6 cni_hostport hostports tcp dport 8080 dnat to [fd00::5]:80 comment \"ctr1\"\n\
             add rule ip6 cni_hostport hostports ip6 daddr fd00::9 sctp dport 8443 dnat to [fd00::5]:443 comment \"ctr1\"\n\
             add rule ip6 cni_hostport masquerading ip6 saddr fd00::5 ip6 daddr fd00::5 masquerade comment \"ctr1\"\n"
        );
    }
}
