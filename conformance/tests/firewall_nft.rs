//! The `firewall` plugin's nftables backend (`"backend": "nftables"`, ours only: the reference has
//! no such backend, so these cases run against our suite alone) through the binary, in fake hosts:
//! the table as planned, real traffic with the table's forward policy set to drop, CHECK, DEL
//! (idempotent, without `prevResult`, with a recycled address), GC, isolation between bridges and
//! inside one, concurrent first ADDs, no process started, and the backend chosen by itself on a
//! host without iptables.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use conformance::{build_config, ours, require_root, Attachment, FakeHost, Netns, Runtime, Suite};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const TABLE: &str = "cni_plugins_firewall";

/// bridge (gateway, masquerade) + host-local → firewall with the nftables backend.
fn list(host: &FakeHost, net: &str, bridge: &str, subnet: &str, firewall: Value) -> Value {
    let mut fw = json!({"type": "firewall", "backend": "nftables",
        "dataDir": host.dir.join("firewall").display().to_string()});
    for (k, v) in firewall.as_object().unwrap() {
        fw[k] = v.clone();
    }
    let bridge = json!({"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": true,
        "ipam": {"type": "host-local", "dataDir": host.dir.join("ipam").display().to_string(),
                 "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}]}});
    json!({"cniVersion": "1.1.0", "name": net, "plugins": [bridge, fw]})
}

fn nft(host: &FakeHost, args: &[&str]) -> String {
    host.ns.run("nft", args).unwrap_or_default()
}

/// `nft list table inet cni_plugins_firewall`, one trimmed line per statement, without handles.
fn table(host: &FakeHost) -> Vec<String> {
    nft(host, &["list", "table", "inet", TABLE])
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// The rules (text, handle) of `chain`.
fn rules(host: &FakeHost, chain: &str) -> Vec<(String, u64)> {
    let text = nft(host, &["-a", "list", "chain", "inet", TABLE, chain]);
    text.lines()
        .filter_map(|l| {
            let (rule, handle) = l.trim().rsplit_once(" # handle ")?;
            (!rule.starts_with("chain ")).then_some(())?;
            Some((rule.to_string(), handle.parse().ok()?))
        })
        .collect()
}

/// A link to a namespace standing for the rest of the world: host 198.51.100.1, peer .2, which
/// routes `routed` back through the host (so it could reach containers if nothing stopped it).
fn outside(host: &FakeHost, routed: &[&str]) -> Netns {
    let o = Netns::new("o").unwrap();
    host.ns.run("ip", &["link", "add", "upl0", "type", "veth", "peer", "name", "upl1", "netns", o.name()]).unwrap();
    host.ns.run("ip", &["addr", "add", "198.51.100.1/24", "dev", "upl0"]).unwrap();
    host.ns.run("ip", &["link", "set", "upl0", "up"]).unwrap();
    o.run("ip", &["addr", "add", "198.51.100.2/24", "dev", "upl1"]).unwrap();
    o.run("ip", &["link", "set", "upl1", "up"]).unwrap();
    for net in routed {
        o.run("ip", &["route", "add", net, "via", "198.51.100.1"]).unwrap();
    }
    o
}

fn first_ip(result: &Value) -> String {
    let cidr = result["ips"][0]["address"].as_str().unwrap();
    cidr.split('/').next().unwrap().to_string()
}

/// One firewall-only invocation with `prev` (or none) as prevResult.
fn firewall_call(
    rt: &Runtime,
    l: &Value,
    command: &str,
    att: &Attachment,
    prev: Option<&Value>,
) -> conformance::Output {
    let conf = build_config(&l["plugins"][1], l["name"].as_str().unwrap(), "1.1.0", prev, &att.caps);
    rt.invoke("firewall", command, att, &conf).unwrap()
}

#[test]
fn the_table_is_laid_out_as_planned_and_traffic_follows_the_rules() {
    require_root!();
    let suite = ours();
    let host = FakeHost::new().unwrap();
    let rt = Runtime::new(&suite, &host.ns, host.dir.clone());
    let l = list(&host, "fwnet", "cnifw0", "10.94.0.0/24", json!({}));
    let c1 = host.container().unwrap();
    let a1 = Attachment::new("ctr-one", &c1);
    let r1 = rt.add_list(&l, &a1).unwrap();
    assert_eq!(first_ip(&r1), "10.94.0.2");

    let comment = "027cea8d5d8cb94d-de66d83e2b266152, net: fwnet, if: eth0, id: ctr-one";
    let want = [
        format!("table inet {TABLE} {{"),
        "comment \"CNI firewall plugin rules\"".into(),
        "chain isolation_stage_1 {".into(),
        "}".into(),
        "chain isolation_stage_2 {".into(),
        "}".into(),
        "chain admin_jumps {".into(),
        "jump CNI-ADMIN".into(),
        "}".into(),
        "chain forward {".into(),
        "type filter hook forward priority filter; policy accept;".into(),
        "jump isolation_stage_1".into(),
        "jump admin_jumps".into(),
        format!("ip daddr 10.94.0.2 ct state established,related accept comment \"{comment}\""),
        format!("ip saddr 10.94.0.2 accept comment \"{comment}\""),
        "}".into(),
        "chain CNI-ADMIN {".into(),
        "}".into(),
        "}".into(),
    ];
    assert_eq!(table(&host), want, "the table as nft lists it");
    let saved = host.ns.run("iptables-save", &["-t", "filter"]).unwrap_or_default();
    assert!(!saved.contains("CNI-"), "iptables rules written:\n{saved}");

    // Default deny, the nftables way: the administrator sets our chain's policy; ADDs keep it.
    host.ns.run("nft", &["add", "chain", "inet", TABLE, "forward", "{ policy drop ; }"]).unwrap();
    let out = outside(&host, &["10.94.0.0/24"]);
    let _world = out.tcp_server(8000, "world").unwrap();
    let _svc = c1.tcp_server(80, "inside").unwrap();
    assert_eq!(c1.tcp_get("198.51.100.2", 8000).as_deref(), Some("world"), "the container reaches out");
    assert_eq!(out.tcp_get("10.94.0.2", 80), None, "the world reached the container unasked");

    let c2 = host.container().unwrap();
    let a2 = Attachment::new("ctr-two", &c2);
    let r2 = rt.add_list(&l, &a2).unwrap();
    assert!(table(&host).contains(&"type filter hook forward priority filter; policy drop;".to_string()));
    assert_eq!(c2.tcp_get("198.51.100.2", 8000).as_deref(), Some("world"), "second container");
    rt.check_list(&l, &a1).unwrap();
    rt.check_list(&l, &a2).unwrap();

    // CHECK fails once one of the rules is gone, naming the address.
    let (_, handle) = rules(&host, "forward").into_iter().find(|(r, _)| r.starts_with("ip saddr 10.94.0.3 ")).unwrap();
    host.ns.run("nft", &["delete", "rule", "inet", TABLE, "forward", "handle", &handle.to_string()]).unwrap();
    let err = rt.check_list(&l, &a2).unwrap_err().to_string();
    assert!(err.contains("10.94.0.3"), "{err}");
    assert_eq!(c2.tcp_get("198.51.100.2", 8000), None, "still forwarded without its rule");
    // ADD again repairs it, without doubling anything.
    let again = firewall_call(&rt, &l, "ADD", &a2, Some(&r2));
    assert!(again.ok(), "repairing ADD: {:?}", again.error());
    rt.check_list(&l, &a2).unwrap();
    let forward = rules(&host, "forward");
    assert_eq!(forward.len(), 2 + 4, "{forward:?}");

    // DEL: the container no longer gets out, the other one still does; twice is fine.
    rt.del_list(&l, &a1).unwrap();
    assert_eq!(c1.tcp_get("198.51.100.2", 8000), None, "forwarded after DEL");
    assert_eq!(c2.tcp_get("198.51.100.2", 8000).as_deref(), Some("world"), "the other container lost its rules");
    assert!(!table(&host).iter().any(|l| l.contains("ctr-one")), "{:?}", table(&host));
    let again = firewall_call(&rt, &l, "DEL", &a1, Some(&r1));
    assert!(again.ok(), "second DEL: {:?}", again.error());
    // The administrator's chain and policy survive everything.
    assert!(table(&host).contains(&"chain CNI-ADMIN {".to_string()));
    rt.del_list(&l, &a2).unwrap();
    assert!(table(&host).contains(&"type filter hook forward priority filter; policy drop;".to_string()));
}

#[test]
fn del_needs_no_prev_result_and_spares_a_recycled_address() {
    require_root!();
    let suite = ours();
    let host = FakeHost::new().unwrap();
    let rt = Runtime::new(&suite, &host.ns, host.dir.clone());
    let l = list(&host, "fwrec", "cnifw1", "10.95.0.0/24", json!({}));
    let c = host.container().unwrap();
    let old = Attachment::new("ctr-old", &c);
    let new = Attachment::new("ctr-new", &c);
    // Both attachments hold 10.95.0.7: the old one's DEL came late, after the address was reused.
    let prev = json!({"cniVersion": "1.1.0", "interfaces": [{"name": "cnifw1"}], "ips": [{"address": "10.95.0.7/24"}]});
    for att in [&old, &new] {
        let out = firewall_call(&rt, &l, "ADD", att, Some(&prev));
        assert!(out.ok(), "ADD {}: {:?}", att.container_id, out.error());
    }
    assert_eq!(rules(&host, "forward").len(), 2 + 4);
    let out = firewall_call(&rt, &l, "DEL", &old, None);
    assert!(out.ok(), "DEL without prevResult: {:?}", out.error());
    let left: Vec<String> = rules(&host, "forward").into_iter().map(|(r, _)| r).collect();
    assert!(!left.iter().any(|r| r.contains("ctr-old")), "{left:?}");
    assert_eq!(left.iter().filter(|r| r.contains("id: ctr-new") && r.contains("10.95.0.7")).count(), 2, "{left:?}");
    let check = firewall_call(&rt, &l, "CHECK", &new, Some(&prev));
    assert!(check.ok(), "CHECK of the new holder: {:?}", check.error());

    // GC keeps what is valid and removes the rest of this network only.
    let other_net = list(&host, "fwother", "cnifw1", "10.95.0.0/24", json!({}));
    let stranger = Attachment::new("ctr-stranger", &c);
    assert!(firewall_call(&rt, &other_net, "ADD", &stranger, Some(&prev)).ok());
    let gone = Attachment::new("ctr-gone", &c);
    assert!(firewall_call(&rt, &l, "ADD", &gone, Some(&prev)).ok());
    // Rules whose record is gone (another store): the nftables rules name their attachment.
    let mut elsewhere = l.clone();
    elsewhere["plugins"][1]["dataDir"] = json!(host.dir.join("other-store").display().to_string());
    let ghost = Attachment::new("ctr-ghost", &c);
    assert!(firewall_call(&rt, &elsewhere, "ADD", &ghost, Some(&prev)).ok());
    let mut gc = build_config(&l["plugins"][1], "fwrec", "1.1.0", None, &Default::default());
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "ctr-new", "ifname": "eth0"}]);
    let out = rt.invoke("firewall", "GC", &Attachment::default(), &gc).unwrap();
    assert!(out.ok(), "GC: {:?}", out.error());
    let left: Vec<String> = rules(&host, "forward").into_iter().map(|(r, _)| r).collect();
    assert!(!left.iter().any(|r| r.contains("ctr-gone")), "GC left a stale attachment: {left:?}");
    assert!(!left.iter().any(|r| r.contains("ctr-ghost")), "GC left rules without a record: {left:?}");
    assert!(left.iter().any(|r| r.contains("ctr-new")), "GC removed a valid attachment: {left:?}");
    assert!(left.iter().any(|r| r.contains("ctr-stranger")), "GC reached into another network: {left:?}");
}

#[test]
fn same_bridge_keeps_bridges_apart_and_isolated_keeps_ports_apart() {
    require_root!();
    let suite = ours();
    let host = FakeHost::new().unwrap();
    let rt = Runtime::new(&suite, &host.ns, host.dir.clone());
    let a_net = list(&host, "fwa", "cnifwa", "10.96.1.0/24", json!({"ingressPolicy": "same-bridge"}));
    let b_net = list(&host, "fwb", "cnifwb", "10.96.2.0/24", json!({"ingressPolicy": "same-bridge"}));
    let open_net = list(&host, "fwo", "cnifwo", "10.96.3.0/24", json!({}));
    let (ca, cb, co) = (host.container().unwrap(), host.container().unwrap(), host.container().unwrap());
    let ra = rt.add_list(&a_net, &Attachment::new("ctr-a", &ca)).unwrap();
    let rb = rt.add_list(&b_net, &Attachment::new("ctr-b", &cb)).unwrap();
    rt.add_list(&open_net, &Attachment::new("ctr-o", &co)).unwrap();
    let (ip_a, ip_b) = (first_ip(&ra), first_ip(&rb));
    let _sa = ca.tcp_server(80, "a").unwrap();
    let _sb = cb.tcp_server(80, "b").unwrap();
    assert_eq!(ca.tcp_get(&ip_b, 80), None, "same-bridge: a reached b's bridge");
    assert_eq!(cb.tcp_get(&ip_a, 80), None, "same-bridge: b reached a's bridge");
    // A bridge without a policy is not one of the isolated ones (as in the reference).
    assert_eq!(co.tcp_get(&ip_a, 80).as_deref(), Some("a"), "an open bridge is cut off");
    let stage1 = rules(&host, "isolation_stage_1");
    assert_eq!(stage1.len(), 2, "{stage1:?}");
    assert!(stage1[0].0.starts_with("iifname \"cnifwa\" oifname != \"cnifwa\" jump isolation_stage_2"), "{stage1:?}");
    rt.check_list(&a_net, &Attachment::new("ctr-a", &ca)).unwrap();

    // isolated: two containers on one bridge cannot talk; each still reaches the gateway.
    let iso = list(&host, "fwi", "cnifwi", "10.96.4.0/24", json!({"ingressPolicy": "isolated"}));
    let (c1, c2) = (host.container().unwrap(), host.container().unwrap());
    let r1 = rt.add_list(&iso, &Attachment::new("ctr-i1", &c1)).unwrap();
    let r2 = rt.add_list(&iso, &Attachment::new("ctr-i2", &c2)).unwrap();
    // Bridged frames reach the forward hook only with br_netfilter; route them instead, each
    // container reaching the other through the gateway (the bridge's address), so they do.
    let (ip1, ip2) = (first_ip(&r1), first_ip(&r2));
    let _s1 = c1.tcp_server(80, "one").unwrap();
    c2.run("ip", &["route", "add", &format!("{ip1}/32"), "via", "10.96.4.1"]).unwrap();
    c1.run("ip", &["route", "add", &format!("{ip2}/32"), "via", "10.96.4.1"]).unwrap();
    assert_eq!(c2.tcp_get(&ip1, 80), None, "isolated: a neighbour on the bridge got through");
    assert!(c2.succeeds("ping", &["-c1", "-W1", "10.96.4.1"]), "isolated: the gateway is unreachable");
    let stage1 = rules(&host, "isolation_stage_1");
    let (_, drop) = stage1.iter().find(|(r, _)| r.starts_with("iifname \"cnifwi\" oifname \"cnifwi\" drop")).unwrap();
    // The control: without that rule the same path works.
    host.ns.run("nft", &["delete", "rule", "inet", TABLE, "isolation_stage_1", "handle", &drop.to_string()]).unwrap();
    assert_eq!(c2.tcp_get(&ip1, 80).as_deref(), Some("one"), "the routed path itself is broken");
}

#[test]
fn ten_concurrent_first_adds_lay_the_table_out_once() {
    require_root!();
    let suite = ours();
    let host = FakeHost::new().unwrap();
    let rt = Runtime::new(&suite, &host.ns, host.dir.clone());
    let l = list(&host, "fwconc", "cnifwc", "10.97.0.0/24", json!({"ingressPolicy": "same-bridge"}));
    let n = 10;
    let c = host.container().unwrap();
    let outcomes: Vec<conformance::Output> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (rt, l, c) = (&rt, &l, &c);
                s.spawn(move || {
                    let att = Attachment::new(&format!("ctr-{i}"), c);
                    let prev = json!({"cniVersion": "1.1.0", "interfaces": [{"name": "cnifwc"}],
                        "ips": [{"address": format!("10.97.0.{}/24", 10 + i)}]});
                    firewall_call(rt, l, "ADD", &att, Some(&prev))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, out) in outcomes.iter().enumerate() {
        assert!(out.ok(), "ADD {i}: {:?}", out.error());
    }
    let forward: Vec<String> = rules(&host, "forward").into_iter().map(|(r, _)| r).collect();
    assert_eq!(forward[..2], ["jump isolation_stage_1".to_string(), "jump admin_jumps".to_string()], "{forward:?}");
    assert_eq!(forward.len(), 2 + 2 * n, "{forward:?}");
    assert_eq!(rules(&host, "admin_jumps").len(), 1);
    assert_eq!(rules(&host, "isolation_stage_1").len(), 1);
    assert_eq!(rules(&host, "isolation_stage_2").len(), 1);
}

#[test]
fn add_check_del_and_gc_start_no_process() {
    require_root!();
    let host = FakeHost::new().unwrap();
    if host.ns.run("strace", &["-V"]).is_err() {
        conformance::skip("strace is not installed");
        return;
    }
    let dir = host.dir.join("traced");
    let suite = conformance::trace::traced_suite(&dir, &["firewall"]).unwrap();
    let rt = Runtime::new(&suite, &host.ns, host.dir.clone());
    let l = list(&host, "fwtrace", "cnifwt", "10.98.0.0/24", json!({"ingressPolicy": "isolated"}));
    let c = host.container().unwrap();
    let att = Attachment::new("ctr-traced", &c);
    rt.add_list(&l, &att).unwrap();
    rt.check_list(&l, &att).unwrap();
    rt.gc_list(&l, std::slice::from_ref(&att)).unwrap();
    rt.del_list(&l, &att).unwrap();
    rt.status_list(&l).unwrap();
    let execs = conformance::trace::traced_execs(&dir).unwrap();
    let firewall = ours().plugin("firewall").display().to_string();
    let others: Vec<&String> = execs.iter().filter(|e| **e != firewall).collect();
    assert!(execs.contains(&firewall), "nothing traced: {execs:?}");
    assert!(others.is_empty(), "the firewall plugin started {others:?}");
}

/// A suite whose firewall (and bridge, host-local) run with the iptables programs hidden in a
/// private mount namespace (as `backend_choice.rs` does); the machine's binaries are not touched.
fn without_iptables(suite: &Suite, dir: &Path) -> Suite {
    std::fs::create_dir_all(dir).unwrap();
    for name in ["bridge", "host-local", "firewall"] {
        let script = format!(
            "#!/bin/sh\nexec unshare -m sh -c 'for f in /usr/sbin/iptables* /usr/sbin/ip6tables* /usr/sbin/xtables*; do \
             [ -e \"$f\" ] && mount --bind /dev/null \"$f\"; done; exec \"$0\" \"$@\"' {} \"$@\"\n",
            suite.plugin(name).display()
        );
        let path = dir.join(name);
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    Suite { name: suite.name, dir: dir.to_path_buf() }
}

#[test]
fn a_host_without_iptables_gets_the_nftables_backend_unasked() {
    require_root!();
    let host = FakeHost::new().unwrap();
    let suite = without_iptables(&ours(), &host.dir.join("bin"));
    let rt = Runtime::new(&suite, &host.ns, host.dir.clone());
    let mut l = list(&host, "fwauto", "cnifwn", "10.99.0.0/24", json!({}));
    l["plugins"][1].as_object_mut().unwrap().remove("backend");
    let c = host.container().unwrap();
    let att = Attachment::new("ctr-auto", &c);
    rt.add_list(&l, &att).unwrap();
    let t = table(&host);
    assert!(t.iter().any(|r| r.starts_with("ip saddr 10.99.0.2 accept comment")), "{t:?}");
    let saved = host.ns.run("iptables-save", &["-t", "filter"]).unwrap_or_default();
    assert!(!saved.contains("CNI-"), "iptables rules written:\n{saved}");
    rt.check_list(&l, &att).unwrap();
    rt.status_list(&l).unwrap();
    rt.del_list(&l, &att).unwrap();
    assert!(!table(&host).iter().any(|r| r.contains("ctr-auto")));
}
