//! `firewall` against the reference v1.1.1 and the newest reference builds: the same filter-table
//! state (IPv4 and IPv6) for the same inputs, real traffic with the fake host's FORWARD policy
//! DROP, bridge isolation (`ingressPolicy`), concurrent ADDs on a fresh host, a host switched
//! between the suites with containers attached, and bad input.
//!
//! Deliberate differences, asserted per suite below:
//! - concurrent ADDs on a fresh host: ours never fails and writes each chain and jump once (the
//!   references duplicate the jumps and can fail with "CHAIN_USER_ADD failed"; the test prints
//!   what they did);
//! - DEL without `prevResult` removes the attachment's rules (the references remove nothing);
//! - DEL of an attachment whose address was recycled to a live one keeps the rules of that
//!   address (the references remove the new owner's rules);
//! - GC removes the rules of attachments not in `cni.dev/valid-attachments` (the references have
//!   no GC; v1.1.1 does not speak 1.1.0 at all);
//! - CHECK on a host without the rules fails and changes nothing (the references create the
//!   chains, then fail);
//! - DEL never fails on a configuration ADD would refuse (nothing of ours can exist under it);
//! - every bad input is refused before anything changes: an unknown `backend` (the references
//!   silently use iptables), an admin chain name iptables cannot take (the references create
//!   what they can, then fail), an ingress policy without a bridge in `prevResult` (the
//!   references install the accept rules, then fail);
//! - `ingressPolicy: isolated` exists in ours and the newest reference, not in v1.1.1; the
//!   isolation rules shared by both policies carry the newest reference's comment
//!   `(ingressPolicy: same-bridge|isolated)` where v1.1.1 wrote `(ingressPolicy: same-bridge)`,
//!   and ours counts a rule with v1.1.1's comment as present, so a host switched from v1.1.1
//!   gets no second copy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use conformance::{
    exec, plugin_command, read_outputs, require_root, suites_with_head, Attachment, FakeHost, Netns, Output, Runtime,
    Suite,
};
use serde_json::{json, Value};
use std::io::Write;

const VERSION: &str = "1.0.0";

/// The comment of the shared isolation rules, as the newest reference (and ours) writes it and
/// as v1.1.1 wrote it; ours takes either as present.
const NEWEST_COMMENT: &str = "(ingressPolicy: same-bridge|isolated)";
const V1_1_COMMENT: &str = "(ingressPolicy: same-bridge)";

/// A fake host with the firewall plugin's store in its scratch directory.
struct Host {
    host: FakeHost,
    /// The container namespace every direct invocation names in `CNI_NETNS`.
    ctr: Netns,
}

impl Host {
    fn new() -> Host {
        let host = FakeHost::new().unwrap();
        let ctr = host.container().unwrap();
        Host { host, ctr }
    }

    fn store(&self) -> String {
        self.host.dir.join("fw").display().to_string()
    }

    /// A firewall configuration with `extra` keys, `prevResult` naming the addresses `n` of
    /// 10.88.0.0/16 and fd00::/64 on bridge `bridge` (when given).
    fn conf(&self, extra: Value, prev: Option<Value>) -> Value {
        let mut c = json!({"cniVersion": VERSION, "name": "fwnet", "type": "firewall", "dataDir": self.store()});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        if let Some(p) = prev {
            c["prevResult"] = p;
        }
        c
    }

    fn call(&self, suite: &Suite, command: &str, cid: &str, conf: &Value) -> Output {
        let path = suite.dir.display().to_string();
        let netns = self.ctr.path();
        let env = [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", cid),
            ("CNI_NETNS", netns.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", path.as_str()),
        ];
        exec(&suite.plugin("firewall"), &env, conf.to_string().as_bytes(), Some(&self.host.ns)).unwrap()
    }

    fn ok(&self, suite: &Suite, command: &str, cid: &str, conf: &Value) -> Output {
        let out = self.call(suite, command, cid, conf);
        assert!(out.ok(), "{} {command} {cid}: {} {}", suite.name, out.stdout, out.stderr);
        out
    }

    /// Both families' filter tables, comments and counters dropped.
    fn state(&self) -> String {
        let mut out = String::new();
        for tool in ["iptables-save", "ip6tables-save"] {
            out.push_str(&normalise(&self.host.ns.run(tool, &["-t", "filter"]).unwrap()));
        }
        out
    }

    fn rules_for(&self, ip: &str) -> usize {
        self.state().lines().filter(|l| l.contains(&format!(" {ip}/"))).count()
    }
}

fn normalise(dump: &str) -> String {
    dump.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match (l.starts_with(':'), l.rfind(" [")) {
            (true, Some(at)) => format!("{} [0:0]\n", &l[..at]),
            _ => format!("{l}\n"),
        })
        .collect()
}

/// A `prevResult` with address `n` of each family (`v6` adds the IPv6 one) on `bridge`.
fn prev(n: u8, bridge: Option<&str>, v6: bool) -> Value {
    let mut ips = vec![json!({"address": format!("10.88.0.{n}/16"), "interface": 1, "gateway": "10.88.0.1"})];
    if v6 {
        ips.push(json!({"address": format!("fd00::{n}/64"), "interface": 1}));
    }
    let mut interfaces = Vec::new();
    if let Some(b) = bridge {
        interfaces.push(json!({"name": b, "mac": "0a:58:0a:58:00:01"}));
    }
    interfaces.push(json!({"name": "eth0", "mac": "0a:58:0a:58:00:02", "sandbox": "/run/netns/x"}));
    json!({"cniVersion": VERSION, "interfaces": interfaces, "ips": ips})
}

fn supports_isolated(suite: &Suite) -> bool {
    !suite.is_reference()
}

/// One scenario of direct invocations; returns the state after each step.
fn scenario(suite: &Suite, policy: &str, admin: Option<&str>) -> Vec<String> {
    let h = Host::new();
    let mut extra = json!({"ingressPolicy": policy});
    if let Some(a) = admin {
        extra["iptablesAdminChainName"] = a.into();
    }
    // An administrator's rule in the admin chain, made before the plugin ran: never flushed.
    let admin_chain = admin.unwrap_or("CNI-ADMIN");
    for tool in ["iptables", "ip6tables"] {
        h.host.ns.run(tool, &["-N", admin_chain]).unwrap();
        h.host.ns.run(tool, &["-A", admin_chain, "-p", "tcp", "--dport", "9", "-j", "DROP"]).unwrap();
    }
    let mut states = Vec::new();
    h.ok(suite, "ADD", "c1", &h.conf(extra.clone(), Some(prev(2, Some("cnifw0"), true))));
    states.push(h.state());
    h.ok(suite, "ADD", "c2", &h.conf(extra.clone(), Some(prev(3, Some("cnifw0"), true))));
    h.ok(suite, "ADD", "c3", &h.conf(extra.clone(), Some(prev(4, Some("cnifw1"), false))));
    // The same ADD again (a runtime retry) changes nothing.
    h.ok(suite, "ADD", "c2", &h.conf(extra.clone(), Some(prev(3, Some("cnifw0"), true))));
    states.push(h.state());
    h.ok(suite, "CHECK", "c2", &h.conf(extra.clone(), Some(prev(3, Some("cnifw0"), true))));
    h.ok(suite, "DEL", "c2", &h.conf(extra.clone(), Some(prev(3, Some("cnifw0"), true))));
    states.push(h.state());
    h.ok(suite, "DEL", "c2", &h.conf(extra.clone(), Some(prev(3, Some("cnifw0"), true))));
    h.ok(suite, "DEL", "c1", &h.conf(extra.clone(), Some(prev(2, Some("cnifw0"), true))));
    h.ok(suite, "DEL", "c3", &h.conf(extra, Some(prev(4, Some("cnifw1"), false))));
    states.push(h.state());
    let last = states.last().unwrap();
    assert!(last.contains("-A CNI-ADMIN -p tcp -m tcp --dport 9 -j DROP") || admin.is_some(), "{last}");
    states
}

#[test]
fn the_same_filter_tables_as_the_reference_for_the_same_inputs() {
    require_root!();
    let suites = suites_with_head("firewall");
    let ours = &suites[0];
    for (policy, admin) in [
        ("open", None),
        ("", Some("NOMAD-ADMIN")),
        ("same-bridge", None),
        ("isolated", Some("A-28-CHARACTER-CHAIN-NAME-OK")),
    ] {
        let mine = scenario(ours, policy, admin);
        assert!(mine[0].contains("-A CNI-FORWARD -s fd00::2/128 -j ACCEPT"), "{}", mine[0]);
        assert!(mine[1].contains("-A CNI-FORWARD -s 10.88.0.4/32 -j ACCEPT"), "{}", mine[1]);
        assert!(!mine[2].contains("10.88.0.3/"), "{}", mine[2]);
        for reference in suites.iter().skip(1) {
            if policy == "isolated" && !supports_isolated(reference) {
                continue;
            }
            let theirs = scenario(reference, policy, admin);
            for (step, (a, b)) in mine.iter().zip(&theirs).enumerate() {
                let a = if reference.is_reference() { a.replace(NEWEST_COMMENT, V1_1_COMMENT) } else { a.clone() };
                assert_eq!(&a, b, "policy {policy:?} admin {admin:?} step {step}: ours vs {}", reference.name);
            }
        }
    }
}

/// A fake host whose FORWARD policy is DROP, with an "outside" namespace routed through it.
struct Routed {
    host: FakeHost,
    outside: Netns,
}

impl Routed {
    fn new() -> Routed {
        let host = FakeHost::new().unwrap();
        let outside = Netns::new("o").unwrap();
        let hn = host.ns.name().to_string();
        host.ns
            .run("ip", &["link", "add", "up0", "type", "veth", "peer", "name", "dn0", "netns", outside.name()])
            .unwrap();
        host.ns.run("ip", &["addr", "add", "192.168.77.1/24", "dev", "up0"]).unwrap();
        host.ns.run("ip", &["addr", "add", "fd77::1/64", "dev", "up0", "nodad"]).unwrap();
        host.ns.run("ip", &["link", "set", "up0", "up"]).unwrap();
        outside.run("ip", &["addr", "add", "192.168.77.2/24", "dev", "dn0"]).unwrap();
        outside.run("ip", &["addr", "add", "fd77::2/64", "dev", "dn0", "nodad"]).unwrap();
        outside.run("ip", &["link", "set", "dn0", "up"]).unwrap();
        outside.run("ip", &["route", "add", "default", "via", "192.168.77.1"]).unwrap();
        outside.run("ip", &["-6", "route", "add", "default", "via", "fd77::1"]).unwrap();
        for (key, value) in [("net.ipv4.ip_forward", "1"), ("net.ipv6.conf.all.forwarding", "1")] {
            host.ns.run("sysctl", &["-qw", &format!("{key}={value}")]).unwrap();
        }
        for tool in ["iptables", "ip6tables"] {
            host.ns.run(tool, &["-P", "FORWARD", "DROP"]).unwrap();
        }
        let _ = hn;
        Routed { host, outside }
    }

    /// bridge (gateway, no masquerade) + host-local on `subnet` + firewall with `extra` keys.
    fn list(&self, net: &str, bridge: &str, subnet: u8, extra: Value) -> Value {
        let ipam = json!({"type": "host-local", "dataDir": self.host.dir.join("ipam").display().to_string(),
            "ranges": [[{"subnet": format!("10.{subnet}.0.0/24")}], [{"subnet": format!("fd00:{subnet}::/64")}]],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]});
        let bridge = json!({"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false, "ipam": ipam});
        let mut fw = json!({"type": "firewall", "dataDir": self.host.dir.join("fw").display().to_string()});
        for (k, v) in extra.as_object().unwrap() {
            fw[k] = v.clone();
        }
        json!({"cniVersion": VERSION, "name": net, "plugins": [bridge, fw]})
    }

    fn runtime(&self, suite: &Suite) -> Runtime<'_> {
        Runtime::new(suite, &self.host.ns, self.host.dir.clone())
    }
}

fn address(result: &Value, family: u8) -> String {
    let ips = result["ips"].as_array().unwrap();
    let ip = ips
        .iter()
        .map(|i| i["address"].as_str().unwrap().split('/').next().unwrap().to_string())
        .find(|a| a.contains(':') == (family == 6))
        .unwrap();
    ip
}

#[test]
fn traffic_flows_only_while_the_rules_exist() {
    require_root!();
    for suite in suites_with_head("firewall") {
        let r = Routed::new();
        let rt = r.runtime(&suite);
        let list = r.list("fwtraffic", "cnifwt0", 61, json!({}));
        let c = r.host.container().unwrap();
        let att = Attachment::new("t1", &c);
        let result = rt.add_list(&list, &att).unwrap();
        let (v4, v6) = (address(&result, 4), address(&result, 6));
        let _out_srv = r.outside.tcp_server(8080, "out").unwrap();
        let _in_srv = c.tcp_server(8081, "in").unwrap();
        let name = &suite.name;
        assert_eq!(c.tcp_get("192.168.77.2", 8080).as_deref(), Some("out"), "{name}: container to outside, IPv4");
        assert_eq!(c.tcp_get("fd77::2", 8080).as_deref(), Some("out"), "{name}: container to outside, IPv6");
        assert_eq!(r.outside.tcp_get(&v4, 8081), None, "{name}: outside reached the container unasked (IPv4)");
        assert_eq!(r.outside.tcp_get(&v6, 8081), None, "{name}: outside reached the container unasked (IPv6)");
        rt.check_list(&list, &att).unwrap();
        // DEL of the firewall alone: the container is cut off again.
        let mut fw = list["plugins"][1].clone();
        fw["name"] = "fwtraffic".into();
        fw["cniVersion"] = VERSION.into();
        fw["prevResult"] = result.clone();
        let out = rt.invoke("firewall", "DEL", &att, &fw).unwrap();
        assert!(out.ok(), "{name}: {}", out.stdout);
        assert_eq!(c.tcp_get("192.168.77.2", 8080), None, "{name}: traffic without the rules (IPv4)");
        assert_eq!(c.tcp_get("fd77::2", 8080), None, "{name}: traffic without the rules (IPv6)");
        rt.del_list(&list, &att).unwrap();
    }
}

/// Two containers on one bridge and one on another, all with `policy`; returns whether
/// (same-bridge neighbour, other-bridge container, outside) answered the first container.
fn reachability(suite: &Suite, policy: &str) -> (bool, bool, bool) {
    let r = Routed::new();
    let rt = r.runtime(suite);
    let extra = json!({"ingressPolicy": policy});
    let a_list = r.list("fwiso-a", "cnifwa0", 62, extra.clone());
    let b_list = r.list("fwiso-b", "cnifwb0", 63, extra);
    let (c1, c2, c3) = (r.host.container().unwrap(), r.host.container().unwrap(), r.host.container().unwrap());
    let (a1, a2, b1) = (Attachment::new("i1", &c1), Attachment::new("i2", &c2), Attachment::new("i3", &c3));
    rt.add_list(&a_list, &a1).unwrap();
    let r2 = rt.add_list(&a_list, &a2).unwrap();
    let r3 = rt.add_list(&b_list, &b1).unwrap();
    let _s2 = c2.tcp_server(8082, "neighbour").unwrap();
    let _s3 = c3.tcp_server(8083, "other").unwrap();
    let _so = r.outside.tcp_server(8080, "out").unwrap();
    let got = (
        c1.tcp_get(&address(&r2, 4), 8082).is_some(),
        c1.tcp_get(&address(&r3, 4), 8083).is_some(),
        c1.tcp_get("192.168.77.2", 8080).is_some(),
    );
    for (list, att) in [(&a_list, &a1), (&a_list, &a2), (&b_list, &b1)] {
        rt.del_list(list, att).unwrap();
    }
    got
}

#[test]
fn ingress_policies_isolate_bridges_and_ports() {
    require_root!();
    for suite in suites_with_head("firewall") {
        let name = &suite.name;
        assert_eq!(reachability(&suite, "open"), (true, true, true), "{name}: open");
        assert_eq!(reachability(&suite, "same-bridge"), (true, false, true), "{name}: same-bridge");
        if supports_isolated(&suite) {
            assert_eq!(reachability(&suite, "isolated"), (false, false, true), "{name}: isolated");
        }
    }
}

/// Starts `n` ADDs at once on a fresh host; returns the failures and the final state.
fn concurrent_adds(suite: &Suite, n: u8) -> (Vec<String>, String) {
    let h = Host::new();
    let path = suite.dir.display().to_string();
    let netns = h.ctr.path();
    let mut children = Vec::new();
    for i in 0..n {
        let cid = format!("cc{i}");
        let env = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", cid.as_str()),
            ("CNI_NETNS", netns.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", path.as_str()),
        ];
        let conf = h.conf(json!({}), Some(prev(i + 2, Some("cnifw0"), true)));
        let mut child =
            plugin_command(&suite.plugin("firewall"), &[], &env, Some(&h.host.ns)).unwrap().spawn().unwrap();
        child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
        children.push(child);
    }
    let mut failures = Vec::new();
    for mut child in children {
        let (stdout, _) = read_outputs(&mut child);
        if !child.wait().unwrap().success() {
            failures.push(stdout.split_whitespace().collect::<Vec<_>>().join(" "));
        }
    }
    (failures, h.state())
}

fn count(state: &str, line: &str) -> usize {
    state.lines().filter(|l| *l == line).count()
}

#[test]
fn concurrent_adds_on_a_fresh_host_write_each_chain_and_jump_once() {
    require_root!();
    const JUMP: &str = "-A FORWARD -m comment --comment \"CNI firewall plugin rules\" -j CNI-FORWARD";
    const ADMIN: &str = "-A CNI-FORWARD -m comment --comment \"CNI firewall plugin admin overrides\" -j CNI-ADMIN";
    for n in [10u8, 50] {
        for suite in suites_with_head("firewall") {
            let (failures, state) = concurrent_adds(&suite, n);
            let accepts = state.lines().filter(|l| l.ends_with("-j ACCEPT") && l.contains("-s ")).count();
            let jumps = (count(&state, JUMP), count(&state, ADMIN));
            if suite.is_ours() {
                assert!(failures.is_empty(), "{n} concurrent ADDs: {failures:?}");
                assert_eq!(jumps, (2, 2), "{n} ADDs: one jump of each kind per family:\n{state}");
                assert_eq!(count(&state, ":CNI-FORWARD - [0:0]"), 2, "{state}");
                assert_eq!(accepts, 2 * usize::from(n), "{state}");
            } else {
                eprintln!(
                    "{}: {n} concurrent ADDs on a fresh host: {} failed{}, jumps FORWARD→CNI-FORWARD {} and \
                     CNI-FORWARD→CNI-ADMIN {} (both families; 2 each is right), {accepts} of {} source rules",
                    suite.name,
                    failures.len(),
                    failures.first().map(|f| format!(" (e.g. {f})")).unwrap_or_default(),
                    jumps.0,
                    jumps.1,
                    2 * usize::from(n)
                );
            }
        }
    }
}

#[test]
fn a_host_switches_suites_with_containers_attached() {
    require_root!();
    let suites = suites_with_head("firewall");
    let ours = &suites[0];
    for reference in suites.iter().skip(1) {
        let h = Host::new();
        let conf = |n| h.conf(json!({"ingressPolicy": "same-bridge"}), Some(prev(n, Some("cnifw0"), true)));
        // Reference first, then ours beside it, then the reference deletes ours and ours its.
        h.ok(reference, "ADD", "r1", &conf(2));
        let after_reference = h.state();
        h.ok(ours, "ADD", "o1", &conf(3));
        h.ok(ours, "CHECK", "r1", &conf(2));
        h.ok(reference, "CHECK", "o1", &conf(3));
        h.ok(reference, "DEL", "o1", &conf(3));
        assert_eq!(h.state(), after_reference, "{}: the reference removed what ours added", reference.name);
        h.ok(ours, "DEL", "r1", &conf(2));
        assert_eq!(h.rules_for("10.88.0.2"), 0, "{}", h.state());
        assert_eq!(h.rules_for("fd00::2"), 0, "{}", h.state());
        // And back: ours first, the reference on top.
        h.ok(ours, "ADD", "o2", &conf(4));
        h.ok(reference, "ADD", "r2", &conf(5));
        h.ok(ours, "DEL", "r2", &conf(5));
        h.ok(reference, "DEL", "o2", &conf(4));
        assert_eq!(h.rules_for("10.88.0.4") + h.rules_for("10.88.0.5"), 0, "{}", h.state());
        // Ours still has a record of o2 (the reference deleted it): a late DEL of o2 must not
        // remove the rules of the address's next owner.
        h.ok(ours, "ADD", "o3", &conf(4));
        h.ok(ours, "DEL", "o2", &h.conf(json!({}), None));
        assert_eq!(h.rules_for("10.88.0.4"), 2, "{}", h.state());
    }
}

#[test]
fn del_without_prev_result() {
    require_root!();
    for suite in suites_with_head("firewall") {
        let h = Host::new();
        h.ok(&suite, "ADD", "d1", &h.conf(json!({}), Some(prev(2, None, true))));
        h.ok(&suite, "DEL", "d1", &h.conf(json!({}), None));
        let left = h.rules_for("10.88.0.2") + h.rules_for("fd00::2");
        if suite.is_ours() {
            assert_eq!(left, 0, "{}", h.state());
            // Idempotent, and after the record is gone too.
            h.ok(&suite, "DEL", "d1", &h.conf(json!({}), None));
            h.ok(&suite, "DEL", "d1", &h.conf(json!({}), Some(prev(2, None, true))));
        } else {
            assert_eq!(left, 4, "{}: the reference removes nothing without prevResult", suite.name);
        }
    }
}

#[test]
fn a_recycled_address_keeps_its_new_owners_rules() {
    require_root!();
    for suite in suites_with_head("firewall") {
        let h = Host::new();
        // c1's DEL is late: its address already went to c2.
        h.ok(&suite, "ADD", "c1", &h.conf(json!({}), Some(prev(2, None, false))));
        h.ok(&suite, "ADD", "c2", &h.conf(json!({}), Some(prev(2, None, false))));
        h.ok(&suite, "DEL", "c1", &h.conf(json!({}), Some(prev(2, None, false))));
        let left = h.rules_for("10.88.0.2");
        if suite.is_ours() {
            assert_eq!(left, 2, "c2 still holds 10.88.0.2:\n{}", h.state());
            h.ok(&suite, "CHECK", "c2", &h.conf(json!({}), Some(prev(2, None, false))));
            h.ok(&suite, "DEL", "c2", &h.conf(json!({}), None));
            assert_eq!(h.rules_for("10.88.0.2"), 0, "{}", h.state());
        } else {
            assert_eq!(left, 0, "{}: the reference removes the new owner's rules", suite.name);
        }
    }
}

#[test]
fn gc_removes_the_rules_of_attachments_no_longer_valid() {
    require_root!();
    for suite in suites_with_head("firewall").into_iter().filter(|s| !s.is_reference()) {
        let h = Host::new();
        let v = |extra: Value, p| {
            let mut c = h.conf(extra, p);
            c["cniVersion"] = "1.1.0".into();
            c
        };
        h.ok(&suite, "ADD", "g1", &v(json!({}), Some(prev(2, None, true))));
        h.ok(&suite, "ADD", "g2", &v(json!({}), Some(prev(3, None, true))));
        // g3 holds g1's IPv4 address (recycled): GC of g1 must keep its rules.
        h.ok(&suite, "ADD", "g3", &v(json!({}), Some(prev(2, None, false))));
        let mut gc = v(json!({}), None);
        gc["cni.dev/valid-attachments"] =
            json!([{"containerID": "g2", "ifname": "eth0"}, {"containerID": "g3", "ifname": "eth0"}]);
        h.ok(&suite, "GC", "", &gc);
        let left = (h.rules_for("10.88.0.2"), h.rules_for("fd00::2"), h.rules_for("10.88.0.3"));
        if suite.is_ours() {
            assert_eq!(left, (2, 0, 2), "{}", h.state());
            h.ok(&suite, "STATUS", "", &v(json!({}), None));
        } else {
            assert_eq!(left, (2, 2, 2), "{}: the reference has no GC", suite.name);
        }
    }
}

#[test]
fn check_changes_nothing_on_a_host_without_the_rules() {
    require_root!();
    for suite in suites_with_head("firewall") {
        let h = Host::new();
        let before = h.state();
        let out = h.call(&suite, "CHECK", "k1", &h.conf(json!({}), Some(prev(2, None, true))));
        assert!(!out.ok(), "{}: CHECK passed without rules", suite.name);
        if suite.is_ours() {
            assert_eq!(h.state(), before);
            assert!(out.stdout.contains("CNI-FORWARD"), "{}", out.stdout);
        } else {
            assert_ne!(h.state(), before, "{}: the reference's CHECK creates the chains", suite.name);
        }
    }
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    require_root!();
    let suites = suites_with_head("firewall");
    let ours = &suites[0];
    let h = Host::new();
    let before = h.state();
    let p = || Some(prev(2, None, true));
    let mut no_interfaces = prev(2, None, true);
    no_interfaces.as_object_mut().unwrap().remove("interfaces");
    let cases: Vec<(Value, u64, &str)> = vec![
        (h.conf(json!({"backend": "ipt"}), p()), 7, "backend"),
        (h.conf(json!({"iptablesAdminChainName": "TOO-LONG-FOR-AN-IPTABLES-CHAIN"}), p()), 7, "iptablesAdminChainName"),
        (h.conf(json!({"iptablesAdminChainName": "x y"}), p()), 7, "iptablesAdminChainName"),
        (h.conf(json!({"iptablesAdminChainName": "ACCEPT"}), p()), 7, "iptablesAdminChainName"),
        (h.conf(json!({"ingressPolicy": "closed"}), p()), 7, "ingressPolicy"),
        (h.conf(json!({"ingressPolicy": "same-bridge"}), Some(no_interfaces)), 999, "interface needs to be set"),
        (h.conf(json!({}), None), 999, "missing prevResult from earlier plugin"),
        (h.conf(json!({"iptablesAdminChainName": 5}), p()), 6, "iptablesAdminChainName"),
    ];
    for (conf, code, names) in &cases {
        let out = h.call(ours, "ADD", "b1", conf);
        let (got, msg, details) = out.error().unwrap();
        assert_eq!(got, *code, "{conf}: {msg}");
        assert!(msg.contains(names), "{conf}: {msg} {details}");
        assert_eq!(h.state(), before, "{conf}");
        // The runtime's DEL after the failed ADD: nothing was installed, so nothing blocks it.
        h.ok(ours, "DEL", "b1", conf);
        assert_eq!(h.state(), before, "{conf}");
    }
    // Spec versions before 0.4.0 are refused, as the reference refuses them.
    for suite in &suites {
        let mut old = h.conf(
            json!({}),
            Some(json!({"cniVersion": "0.3.1", "ips": [{"version": "4", "address": "10.88.0.2/16"}]})),
        );
        old["cniVersion"] = "0.3.1".into();
        let (code, msg, details) = h.call(suite, "ADD", "b1", &old).error().unwrap();
        assert_eq!((code, msg.as_str()), (1, "incompatible CNI versions"), "{}: {details}", suite.name);
        assert_eq!(h.state(), before);
    }
    // What the references do with the same inputs: they change state first.
    for reference in suites.iter().skip(1) {
        let out = h.call(reference, "ADD", "b1", &cases[5].0);
        assert!(!out.ok(), "{}", reference.name);
        assert_eq!(
            h.rules_for("10.88.0.2"),
            2,
            "{}: the reference adds the accept rules before it fails",
            reference.name
        );
        h.ok(reference, "DEL", "b1", &cases[5].0);
    }
}

/// With the `open` policy ours writes the accept rules of every ADD after the first over
/// netlink (no iptables process): the references must read them as their own.
#[test]
fn rules_ours_writes_over_netlink_are_the_references_rules() {
    require_root!();
    let suites = suites_with_head("firewall");
    let ours = &suites[0];
    for reference in suites.iter().skip(1) {
        let h = Host::new();
        let conf = |n| h.conf(json!({}), Some(prev(n, None, true)));
        h.ok(ours, "ADD", "n1", &conf(2));
        h.ok(ours, "ADD", "n2", &conf(3));
        h.ok(reference, "CHECK", "n2", &conf(3));
        h.ok(reference, "DEL", "n2", &conf(3));
        assert_eq!(h.rules_for("10.88.0.3") + h.rules_for("fd00::3"), 0, "{}: {}", reference.name, h.state());
        assert_eq!(h.rules_for("10.88.0.2") + h.rules_for("fd00::2"), 4, "{}", h.state());
        // And the other way: what the reference wrote, ours deletes over netlink.
        h.ok(reference, "ADD", "r3", &conf(4));
        h.ok(ours, "CHECK", "r3", &conf(4));
        h.ok(ours, "DEL", "r3", &conf(4));
        assert_eq!(h.rules_for("10.88.0.4") + h.rules_for("fd00::4"), 0, "{}: {}", reference.name, h.state());
    }
}
