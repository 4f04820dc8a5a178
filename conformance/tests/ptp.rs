//! `ptp` (+ `host-local`), driven as runtimes drive it, against ours, Debian's v1.1.1 and the newest
//! reference: the same addresses, routes and masquerade rules, real traffic between containers,
//! host and an outside namespace, and nothing left after DEL.
//!
//! Deliberate differences from the reference, each asserted below for ours only:
//! - a failed ADD removes its veth pair and masquerade rules (the reference leaves them for DEL);
//! - DEL removes the masquerade rules even when the namespace is already gone (the reference needs
//!   the container's interface to find them);
//! - CHECK also checks the host end: its gateway address and the route to each container address;
//! - the gateway on the host end skips duplicate address detection (`nodad`), and the container's
//!   interface has it off (`accept_dad` 0, as our and the reference's bridge do), so IPv6 works as
//!   soon as ADD returns instead of a second or more later;
//! - GC removes masquerade rules of attachments the runtime no longer lists.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use conformance::{require_root, suites_with_head, Attachment, FakeHost, Netns, Runtime, Suite};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

fn ipam(host: &FakeHost, ranges: Value) -> Value {
    json!({"type": "host-local", "dataDir": host.dir.join("ipam").display().to_string(), "ranges": ranges,
           "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]})
}

fn list(host: &FakeHost, version: &str, extra: Value) -> Value {
    let mut plugin = json!({"type": "ptp", "ipMasq": true,
        "ipam": ipam(host, json!([[{"subnet": "10.77.0.0/24"}]]))});
    plugin["ipam"]["routes"] = json!([{"dst": "0.0.0.0/0"}]);
    for (k, v) in extra.as_object().unwrap() {
        plugin[k] = v.clone();
    }
    json!({"cniVersion": version, "name": "ptpnet", "plugins": [plugin]})
}

fn dual_stack(host: &FakeHost, version: &str) -> Value {
    let ranges = json!([[{"subnet": "10.77.0.0/24"}], [{"subnet": "fd77::/64"}]]);
    list(host, version, json!({"mtu": 1400, "ipam": ipam(host, ranges)}))
}

fn each_suite(ours_only: bool, f: impl Fn(&Suite)) {
    for suite in suites_with_head("ptp") {
        if ours_only && !suite.is_ours() {
            continue;
        }
        f(&suite);
    }
}

fn veths(ns: &Netns) -> Vec<String> {
    ns.ip_json(&["link", "show"])
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .filter(|n| n.starts_with("veth"))
        .map(str::to_string)
        .collect()
}

/// `address/prefix` of every global address on `dev`.
fn addrs(ns: &Netns, dev: &str) -> Vec<String> {
    let j = ns.ip_json(&["addr", "show", "dev", dev]).unwrap();
    j[0]["addr_info"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|i| i["scope"] == "global")
                .map(|i| format!("{}/{}", i["local"].as_str().unwrap(), i["prefixlen"]))
                .collect()
        })
        .unwrap_or_default()
}

/// The main table of one family, one line per route, device names replaced by `dev` so that
/// suites with different random veth names compare equal.
fn routes(ns: &Netns, family: &str, dev: &str) -> Vec<String> {
    let j = ns.ip_json(&[family, "route", "show", "table", "main"]).unwrap();
    let mut out: Vec<String> = j
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["dev"] == dev && r["dst"] != "fe80::/64")
        .map(|r| {
            let field = |k: &str| r.get(k).and_then(Value::as_str).map(|v| format!(" {k} {v}")).unwrap_or_default();
            format!(
                "{}{}{}{}{}{}",
                r["dst"].as_str().unwrap(),
                field("gateway"),
                field("protocol"),
                field("scope"),
                field("prefsrc"),
                r.get("metric").map(|m| format!(" metric {m}")).unwrap_or_default()
            )
        })
        .collect();
    out.sort();
    out
}

fn nat_rules(host: &FakeHost, tool: &str) -> Vec<String> {
    let mut rules: Vec<String> = host
        .ns
        .run(tool, &["-t", "nat"])
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("-A") || l.starts_with(":CNI-"))
        .map(|l| l.split(" [").next().unwrap().to_string())
        .collect();
    rules.sort();
    rules
}

fn reservations(host: &FakeHost) -> BTreeSet<String> {
    conformance::reserved_addresses(&host.dir.join("ipam").join("ptpnet"))
}

fn sysctl(ns: &Netns, key: &str) -> String {
    ns.run("sysctl", &["-n", key]).unwrap().trim().to_string()
}

/// Pings until an answer or 4 s: the reference's gateway address on the host end is tentative
/// (duplicate address detection) for a second or more after its ADD.
fn ping(from: &Netns, to: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(4);
    loop {
        if from.succeeds("ping", &["-c1", "-W1", to]) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Everything one suite's ADD of two dual-stack containers leaves in the kernel, device names
/// normalised: what must be identical between ours and the references.
fn layout(host: &FakeHost, c1: &Netns, hv1: &str) -> Vec<String> {
    let mut out = vec![format!("host {hv1}: {:?}", addrs(&host.ns, hv1))];
    for fam in ["-4", "-6"] {
        out.push(format!("host {fam}: {:?}", routes(&host.ns, fam, hv1)));
        out.push(format!("container {fam}: {:?}", routes(c1, fam, "eth0")));
    }
    out.push(format!("container eth0: {:?}", addrs(c1, "eth0")));
    out.push(format!("nat: {:?}", nat_rules(host, "iptables-save")));
    out.push(format!("nat6: {:?}", nat_rules(host, "ip6tables-save")));
    out.push(format!(
        "forwarding: {} {}",
        sysctl(&host.ns, "net.ipv4.ip_forward"),
        sysctl(&host.ns, "net.ipv6.conf.all.forwarding")
    ));
    out.push(format!("accept_ra {}", sysctl(&host.ns, &format!("net.ipv6.conf.{hv1}.accept_ra"))));
    out.iter().map(|l| l.replace(hv1, "HOSTVETH")).collect()
}

#[test]
fn dual_stack_layout_matches_the_reference_and_traffic_flows() {
    require_root!();
    let mut layouts: Vec<(String, Vec<String>)> = Vec::new();
    for suite in suites_with_head("ptp") {
        let host = FakeHost::new().unwrap();
        let rt = Runtime::new(&suite, &host.ns, host.dir.clone());
        let l = dual_stack(&host, "1.0.0");
        let (c1, c2) = (host.container().unwrap(), host.container().unwrap());
        let (a1, a2) = (Attachment::new("ctr-a", &c1), Attachment::new("ctr-b", &c2));
        let r = rt.add_list(&l, &a1).unwrap();
        let r2 = rt.add_list(&l, &a2).unwrap();

        let ifs = r["interfaces"].as_array().unwrap();
        assert_eq!(ifs.len(), 2, "{}: {r}", suite.name);
        let hv1 = ifs[0]["name"].as_str().unwrap();
        assert!(hv1.starts_with("veth") && hv1.len() == 12 && ifs[0].get("sandbox").is_none(), "{r}");
        assert_eq!(ifs[1]["name"], "eth0");
        assert_eq!(ifs[1]["sandbox"], c1.path());
        assert_eq!(
            r["ips"],
            json!([{"interface": 1, "address": "10.77.0.2/24", "gateway": "10.77.0.1"},
                   {"interface": 1, "address": "fd77::2/64", "gateway": "fd77::1"}]),
            "{}",
            suite.name
        );
        assert_eq!(r["routes"], json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]), "{}", suite.name);
        let hl = host.ns.ip_json(&["link", "show", "dev", hv1]).unwrap();
        assert_eq!(hl[0]["address"], ifs[0]["mac"], "{}", suite.name);
        assert_eq!(hl[0]["mtu"], 1400);
        let cl = c1.ip_json(&["link", "show", "dev", "eth0"]).unwrap();
        assert_eq!(cl[0]["address"], ifs[1]["mac"]);
        assert_eq!(cl[0]["mtu"], 1400);

        let lay = layout(&host, &c1, hv1);
        // The layout the reference's source describes, spelled out once.
        assert!(lay.contains(&r#"host HOSTVETH: ["10.77.0.1/32", "fd77::1/128"]"#.to_string()), "{lay:#?}");
        assert!(lay.contains(&r#"host -4: ["10.77.0.2 scope host"]"#.to_string()), "{}: {lay:#?}", suite.name);
        assert!(
            lay.contains(
                &r#"container -4: ["10.77.0.0/24 gateway 10.77.0.1 prefsrc 10.77.0.2", "10.77.0.1 scope link prefsrc 10.77.0.2", "default gateway 10.77.0.1"]"#
                    .to_string()
            ),
            "{}: {lay:#?}",
            suite.name
        );
        layouts.push((suite.name.to_string(), lay));

        // Host → container, container → host (gateway), container → container through the host.
        for (from, to) in [
            (&host.ns, "10.77.0.2"),
            (&host.ns, "fd77::2"),
            (&c1, "10.77.0.1"),
            (&c1, "fd77::1"),
            (&c1, "10.77.0.3"),
            (&c1, "fd77::3"),
            (&c2, "10.77.0.2"),
        ] {
            assert!(ping(from, to), "{}: ping {to} from {}", suite.name, from.name());
        }
        let server = c2.tcp_server(8080, "hello").unwrap();
        assert_eq!(c1.tcp_get("10.77.0.3", 8080).as_deref(), Some("hello"), "{}", suite.name);
        assert_eq!(c1.tcp_get("fd77::3", 8080).as_deref(), Some("hello"), "{}", suite.name);
        drop(server);
        // Out through masquerade: the outside has no route back to the containers.
        let outside = Netns::new("o").unwrap();
        host.ns
            .run("ip", &["link", "add", "upl0", "type", "veth", "peer", "name", "upl1", "netns", outside.name()])
            .unwrap();
        host.ns.run("ip", &["addr", "add", "198.51.100.1/24", "dev", "upl0"]).unwrap();
        host.ns.run("ip", &["link", "set", "upl0", "up"]).unwrap();
        outside.run("ip", &["addr", "add", "198.51.100.2/24", "dev", "upl1"]).unwrap();
        outside.run("ip", &["link", "set", "upl1", "up"]).unwrap();
        assert!(ping(&c1, "198.51.100.2"), "{}: ping outside via masquerade", suite.name);

        if suite.is_ours() {
            assert_eq!(sysctl(&c1, "net.ipv6.conf.eth0.accept_dad"), "0");
            let flags = host.ns.ip_json(&["-6", "addr", "show", "dev", hv1]).unwrap();
            let gw = flags[0]["addr_info"].as_array().unwrap().iter().find(|a| a["local"] == "fd77::1").unwrap();
            assert_eq!(gw["nodad"], true, "{gw}");
        }
        rt.check_list(&l, &a1).unwrap_or_else(|e| panic!("{}: CHECK: {e}", suite.name));
        let hv2 = r2["interfaces"][0]["name"].as_str().unwrap().to_string();
        rt.del_list(&l, &a1).unwrap();
        rt.del_list(&l, &a2).unwrap();
        assert!(veths(&host.ns).is_empty(), "{}: veths left", suite.name);
        for fam in ["-4", "-6"] {
            assert!(routes(&host.ns, fam, &hv2).is_empty(), "{}: host routes left", suite.name);
        }
        assert!(reservations(&host).is_empty(), "{}: reservations left", suite.name);
        assert!(
            nat_rules(&host, "iptables-save").is_empty(),
            "{}: {:?}",
            suite.name,
            nat_rules(&host, "iptables-save")
        );
        assert!(nat_rules(&host, "ip6tables-save").is_empty(), "{}", suite.name);
        rt.del_list(&l, &a1).unwrap();
    }
    let (ours, ours_layout) = &layouts[0];
    for (name, lay) in &layouts[1..] {
        assert_eq!(ours_layout, lay, "{ours} and {name} differ");
    }
}

#[test]
fn results_in_every_version() {
    require_root!();
    each_suite(false, |suite| {
        for version in ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
            if suite.is_reference() && version == "1.1.0" {
                continue;
            }
            let host = FakeHost::new().unwrap();
            let rt = Runtime::new(suite, &host.ns, host.dir.clone());
            let c = host.container().unwrap();
            let att = Attachment::new("ctr-v", &c);
            let l = list(&host, version, json!({"ipMasq": false}));
            let r = rt.add_list(&l, &att).unwrap_or_else(|e| panic!("{} {version}: {e}", suite.name));
            assert_eq!(r["cniVersion"], version);
            if version < "0.3.0" {
                assert_eq!(r["ip4"]["ip"], "10.77.0.2/24", "{} {version}: {r}", suite.name);
                assert_eq!(r["ip4"]["gateway"], "10.77.0.1");
            } else {
                assert_eq!(r["interfaces"].as_array().unwrap().len(), 2);
                assert_eq!(r["ips"][0]["interface"], 1);
                assert_eq!(r["ips"][0].get("version").is_some(), version < "1.0.0", "{} {version}", suite.name);
            }
            if version >= "0.4.0" {
                rt.check_list(&l, &att).unwrap_or_else(|e| panic!("{} {version} CHECK: {e}", suite.name));
            }
            rt.del_list(&l, &att).unwrap();
            assert!(veths(&host.ns).is_empty());
            assert!(reservations(&host).is_empty());
        }
    });
}

#[test]
fn dns_comes_from_ipam_unless_the_config_sets_it() {
    require_root!();
    each_suite(false, |suite| {
        let host = FakeHost::new().unwrap();
        let rt = Runtime::new(suite, &host.ns, host.dir.clone());
        let resolv = host.dir.join("resolv.conf");
        std::fs::write(&resolv, "nameserver 10.0.0.10\nsearch example.test\n").unwrap();
        let mut l = list(&host, "1.0.0", json!({"ipMasq": false}));
        l["plugins"][0]["ipam"]["resolvConf"] = json!(resolv.display().to_string());
        let (c1, c2) = (host.container().unwrap(), host.container().unwrap());
        let r = rt.add_list(&l, &Attachment::new("ctr-d1", &c1)).unwrap();
        assert_eq!(r["dns"], json!({"nameservers": ["10.0.0.10"], "search": ["example.test"]}), "{}", suite.name);
        l["plugins"][0]["dns"] = json!({"nameservers": ["192.0.2.53"]});
        let r = rt.add_list(&l, &Attachment::new("ctr-d2", &c2)).unwrap();
        assert_eq!(r["dns"], json!({"nameservers": ["192.0.2.53"]}), "{}", suite.name);
    });
}

#[test]
fn failed_add_leaves_nothing_behind() {
    require_root!();
    each_suite(false, |suite| {
        let host = FakeHost::new().unwrap();
        let rt = Runtime::new(suite, &host.ns, host.dir.clone());
        // The interface name is taken in the container.
        let c = host.container().unwrap();
        c.run("ip", &["link", "add", "eth0", "type", "veth", "peer", "name", "eth9"]).unwrap();
        let l = list(&host, "1.0.0", json!({}));
        let err = rt.add_list(&l, &Attachment::new("ctr-x", &c)).unwrap_err().to_string();
        assert!(err.contains("already exists") || err.contains("file exists"), "{}: {err}", suite.name);
        assert!(reservations(&host).is_empty(), "{}: reservation leaked", suite.name);
        assert!(veths(&host.ns).is_empty(), "{}: veth leaked", suite.name);

        // A route IPAM asks for cannot be added (its gateway is on no link): ADD fails after the
        // address is reserved, the host end configured and the masquerade rules started.
        let c2 = host.container().unwrap();
        let mut bad = list(&host, "1.0.0", json!({}));
        bad["plugins"][0]["ipam"]["routes"] = json!([{"dst": "10.99.0.0/16", "gw": "192.0.2.1"}]);
        assert!(rt.add_list(&bad, &Attachment::new("ctr-y", &c2)).is_err(), "{}", suite.name);
        assert!(reservations(&host).is_empty(), "{}: reservation leaked", suite.name);
        if suite.is_ours() {
            // The reference leaves its veth pair and rules for the runtime's DEL.
            assert!(veths(&host.ns).is_empty(), "veth leaked: {:?}", veths(&host.ns));
            assert!(nat_rules(&host, "iptables-save").is_empty(), "{:?}", nat_rules(&host, "iptables-save"));
            assert!(routes(&host.ns, "-4", "").is_empty());
        }
    });
}

/// A second ADD of an attachment that exists is refused before IPAM runs, so the attachment
/// keeps its address and its traffic. Ours only: both references run IPAM first and their
/// rollback releases the existing attachment's address.
#[test]
fn a_second_add_of_an_attachment_leaves_it_as_it_was() {
    require_root!();
    each_suite(true, |suite| {
        let host = FakeHost::new().unwrap();
        let rt = Runtime::new(suite, &host.ns, host.dir.clone());
        let l = list(&host, "1.0.0", json!({}));
        let c = host.container().unwrap();
        let att = Attachment::new("ctr-dup", &c);
        rt.add_list(&l, &att).unwrap();
        let store = host.dir.join("ipam/ptpnet");
        let files = conformance::store_files;
        let before = files(&store);
        let conf = conformance::build_config(&l["plugins"][0], "ptpnet", "1.0.0", None, &Default::default());
        let out = rt.invoke("ptp", "ADD", &att, &conf).unwrap();
        let (_, msg, _) = out.error().unwrap();
        assert!(msg.contains("already exists"), "{}: {msg}", suite.name);
        assert_eq!(files(&store), before, "{}: the store changed", suite.name);
        assert_eq!(addrs(&c, "eth0"), vec!["10.77.0.2/24"], "{}", suite.name);
        assert_eq!(veths(&host.ns).len(), 1, "{}", suite.name);
        rt.check_list(&l, &att).unwrap_or_else(|e| panic!("{}: CHECK after the refused ADD: {e}", suite.name));
        assert!(ping(&c, "10.77.0.1"), "{}: traffic after the refused ADD", suite.name);
        rt.del_list(&l, &att).unwrap();
    });
}

#[test]
fn bad_config_is_refused_before_anything_changes() {
    require_root!();
    each_suite(true, |suite| {
        let host = FakeHost::new().unwrap();
        let rt = Runtime::new(suite, &host.ns, host.dir.clone());
        let c = host.container().unwrap();
        let att = Attachment::new("ctr-bad", &c);
        for (extra, field) in [
            (json!({"ipMasqBackend": "pf"}), "ipMasqBackend"),
            (json!({"mtu": -5}), "mtu"),
            (json!({"ipMasq": "yes"}), "ipMasq"),
            (json!({"ipam": {}}), "ipam.type"),
        ] {
            let l = list(&host, "1.0.0", extra);
            let conf = conformance::build_config(&l["plugins"][0], "ptpnet", "1.0.0", None, &Default::default());
            let out = rt.invoke("ptp", "ADD", &att, &conf).unwrap();
            let (code, msg, _) = out.error().unwrap();
            assert!(code == 7 || code == 6, "{field}: code {code}");
            assert!(msg.contains(field), "{field}: {msg}");
        }
        assert!(veths(&host.ns).is_empty());
        assert!(reservations(&host).is_empty());
    });
}

#[test]
fn del_cleans_up_after_the_namespace_is_gone() {
    require_root!();
    each_suite(false, |suite| {
        let host = FakeHost::new().unwrap();
        let rt = Runtime::new(suite, &host.ns, host.dir.clone());
        let mut c = host.container().unwrap();
        let att = Attachment::new("ctr-gone", &c);
        let l = list(&host, "1.0.0", json!({}));
        rt.add_list(&l, &att).unwrap();
        c.delete();
        rt.del_list(&l, &att).unwrap();
        assert!(reservations(&host).is_empty(), "{}", suite.name);
        // The kernel destroys a deleted namespace (and the veth pair with it) asynchronously.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !veths(&host.ns).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(veths(&host.ns).is_empty(), "{}", suite.name);
        if suite.is_ours() {
            // The reference finds its rules through the container's interface, so it leaks them here.
            assert!(nat_rules(&host, "iptables-save").is_empty(), "{:?}", nat_rules(&host, "iptables-save"));
        }
        // DEL without CNI_NETNS and without prevResult, twice.
        let none = Attachment { netns: String::new(), ..att.clone() };
        rt.del_list(&l, &none).unwrap();
        rt.del_list(&l, &none).unwrap();
    });
}

/// A namespace file unmounted while the namespace lives on keeps the veth pair: DEL finds the host
/// end through prevResult and removes it.
#[test]
fn del_removes_the_host_end_named_in_prev_result() {
    require_root!();
    each_suite(true, |suite| {
        let host = FakeHost::new().unwrap();
        let rt = Runtime::new(suite, &host.ns, host.dir.clone());
        let c = host.container().unwrap();
        let l = list(&host, "1.0.0", json!({}));
        let att = Attachment::new("ctr-kept", &c);
        rt.add_list(&l, &att).unwrap();
        // Keep the namespace alive in a process, then remove its name.
        let _holder = c.spawn("sleep", &["30"]).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        conformance::run("umount", &[&c.path()]).unwrap();
        std::fs::remove_file(c.path()).unwrap();
        rt.del_list(&l, &att).unwrap();
        assert!(veths(&host.ns).is_empty(), "host end left: {:?}", veths(&host.ns));
        assert!(nat_rules(&host, "iptables-save").is_empty());
    });
}

#[test]
fn check_notices_missing_pieces() {
    require_root!();
    each_suite(false, |suite| {
        let host = FakeHost::new().unwrap();
        let rt = Runtime::new(suite, &host.ns, host.dir.clone());
        let l = list(&host, "1.0.0", json!({}));
        let breakages: [(&str, &[&str], bool); 3] = [
            ("container address", &["addr", "flush", "dev", "eth0"], true),
            ("container subnet route", &["route", "del", "10.77.0.0/24"], false),
            ("host route", &["route", "del", "10.77.0.X"], false),
        ];
        for (i, (what, cmd, reference_notices)) in breakages.iter().enumerate() {
            if !suite.is_ours() && !reference_notices {
                continue;
            }
            let c = host.container().unwrap();
            let att = Attachment::new(&format!("ctr-chk{i}"), &c);
            let r = rt.add_list(&l, &att).unwrap();
            rt.check_list(&l, &att).unwrap_or_else(|e| panic!("{}: {e}", suite.name));
            let (ns, ip) = if *what == "host route" { (&host.ns, "10.77.0.") } else { (&c, "") };
            let addr = r["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_string();
            let cmd: Vec<&str> =
                cmd.iter().map(|a| if a.starts_with(ip) && !ip.is_empty() { addr.as_str() } else { a }).collect();
            ns.run("ip", &cmd).unwrap();
            assert!(rt.check_list(&l, &att).is_err(), "{}: CHECK passed without the {what}", suite.name);
            rt.del_list(&l, &att).unwrap();
        }
        let c = host.container().unwrap();
        let att = Attachment::new("ctr-masq", &c);
        rt.add_list(&l, &att).unwrap();
        if suite.is_ours() {
            let chain = nat_rules(&host, "iptables-save")
                .iter()
                .find_map(|r| r.strip_prefix(':').and_then(|c| c.split_whitespace().next()).map(str::to_string))
                .unwrap();
            host.ns.run("iptables", &["-t", "nat", "-F", &chain]).unwrap();
            assert!(rt.check_list(&l, &att).is_err(), "CHECK passed without the masquerade rules");
        }
        rt.del_list(&l, &att).unwrap();
    });
}

#[test]
fn nftables_masquerade_gc_and_status() {
    require_root!();
    for suite in suites_with_head("ptp").iter().filter(|s| !s.is_reference()) {
        let host = FakeHost::new().unwrap();
        let rt = Runtime::new(suite, &host.ns, host.dir.clone());
        let l = list(&host, "1.1.0", json!({"ipMasqBackend": "nftables"}));
        let (c1, c2) = (host.container().unwrap(), host.container().unwrap());
        let (a1, a2) = (Attachment::new("ctr-n1", &c1), Attachment::new("ctr-n2", &c2));
        rt.add_list(&l, &a1).unwrap();
        rt.add_list(&l, &a2).unwrap();
        let table = || host.ns.run("nft", &["list", "table", "inet", "cni_plugins_masquerade"]).unwrap_or_default();
        let rules = table();
        assert!(rules.contains("ip saddr 10.77.0.2 ip daddr != 10.77.0.0/24 masquerade"), "{}: {rules}", suite.name);
        assert!(nat_rules(&host, "iptables-save").is_empty(), "{}: iptables used", suite.name);
        rt.check_list(&l, &a1).unwrap();
        rt.status_list(&l).unwrap();
        if suite.is_ours() {
            // The runtime lost track of ctr-n1 (no cache entry, so no DEL): GC alone must clean it.
            std::fs::remove_file(host.dir.join("results/ptpnet-ctr-n1-eth0")).unwrap();
            rt.gc_list(&l, std::slice::from_ref(&a2)).unwrap();
            let rules = table();
            assert!(!rules.contains("10.77.0.2 "), "{rules}");
            assert!(rules.contains("10.77.0.3 "), "{rules}");
            assert_eq!(reservations(&host), BTreeSet::from(["10.77.0.3".to_string()]));
        }
        rt.del_list(&l, &a2).unwrap();
        rt.del_list(&l, &a1).unwrap();
        assert!(!table().contains("masquerade comment"), "{}: {}", suite.name, table());
    }
}

/// ptp shares nothing between containers but the gateway address and the nat table: twenty ADDs
/// at once get twenty addresses, twenty working pairs and rules, and twenty DELs leave nothing.
#[test]
fn twenty_concurrent_adds_and_dels() {
    require_root!();
    each_suite(true, |suite| {
        let host = FakeHost::new().unwrap();
        let l = list(&host, "1.0.0", json!({}));
        let containers: Vec<Netns> = (0..20).map(|_| host.container().unwrap()).collect();
        let each = |f: &(dyn Fn(&Runtime, &Attachment) + Sync)| {
            std::thread::scope(|s| {
                for (i, c) in containers.iter().enumerate() {
                    let host = &host;
                    s.spawn(move || {
                        let rt = Runtime::new(suite, &host.ns, host.dir.clone());
                        f(&rt, &Attachment::new(&format!("ctr-{i}"), c));
                    });
                }
            })
        };
        each(&|rt, att| {
            rt.add_list(&l, att).unwrap();
        });
        assert_eq!(reservations(&host).len(), 20);
        assert_eq!(veths(&host.ns).len(), 20);
        let chains = nat_rules(&host, "iptables-save").iter().filter(|r| r.starts_with(":CNI-")).count();
        assert_eq!(chains, 20, "{:?}", nat_rules(&host, "iptables-save"));
        for c in &containers {
            assert!(c.succeeds("ping", &["-c1", "-W2", "10.77.0.1"]), "{}: gateway", c.name());
        }
        each(&|rt, att| rt.del_list(&l, att).unwrap());
        assert!(veths(&host.ns).is_empty());
        assert!(reservations(&host).is_empty());
        assert!(nat_rules(&host, "iptables-save").is_empty(), "{:?}", nat_rules(&host, "iptables-save"));
    });
}
