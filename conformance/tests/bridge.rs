//! `bridge` (+ `host-local`), driven as runtimes drive it, checked against real kernel state,
//! real traffic and the reference plugin where behaviours are meant to match.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use conformance::{require_root, suites, Attachment, FakeHost, Netns, Runtime, Suite};
use serde_json::{json, Value};
use std::collections::BTreeSet;

fn list(host: &FakeHost, version: &str, bridge: Value) -> Value {
    let mut plugin = json!({"type": "bridge", "bridge": "cnibr0", "isGateway": true, "ipMasq": true,
        "ipam": {"type": "host-local", "dataDir": host.dir.join("ipam").display().to_string(),
                 "ranges": [[{"subnet": "10.77.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}});
    for (k, v) in bridge.as_object().unwrap() {
        plugin[k] = v.clone();
    }
    json!({"cniVersion": version, "name": "brnet", "plugins": [plugin]})
}

fn links(ns: &Netns) -> Value {
    ns.ip_json(&["-d", "link", "show"]).unwrap()
}

fn link<'a>(all: &'a Value, name: &str) -> Option<&'a Value> {
    all.as_array().unwrap().iter().find(|l| l["ifname"] == name)
}

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

fn nat_rules(host: &FakeHost) -> String {
    host.ns.run("iptables-save", &["-t", "nat"]).unwrap_or_default()
}

fn reservations(host: &FakeHost) -> BTreeSet<String> {
    conformance::reserved_addresses(&host.dir.join("ipam").join("brnet"))
}

fn veths(host: &FakeHost) -> usize {
    links(&host.ns)
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["ifname"].as_str().unwrap_or("").starts_with("veth"))
        .count()
}

/// Both suites, or just ours with a note when the test covers what the old reference lacks.
fn each_suite(ours_only: bool, f: impl Fn(&Suite)) {
    for suite in suites() {
        if ours_only && suite.is_reference() {
            continue;
        }
        f(&suite);
    }
}

#[test]
fn add_builds_the_reference_topology_and_traffic_flows() {
    require_root!();
    each_suite(false, |suite| {
        let host = FakeHost::new().unwrap();
        let rt = Runtime::new(suite, &host.ns, host.dir.clone());
        let l = list(&host, "1.0.0", json!({"hairpinMode": true, "mtu": 1400}));
        let (c1, c2) = (host.container().unwrap(), host.container().unwrap());
        let (a1, a2) = (Attachment::new("ctr-a", &c1), Attachment::new("ctr-b", &c2));
        let r = rt.add_list(&l, &a1).unwrap();
        rt.add_list(&l, &a2).unwrap();

        let ifs = r["interfaces"].as_array().unwrap();
        assert_eq!(ifs.len(), 3, "{}: {r}", suite.name);
        assert_eq!(ifs[0]["name"], "cnibr0");
        assert!(ifs[1]["name"].as_str().unwrap().starts_with("veth") && ifs[1].get("sandbox").is_none());
        assert_eq!(ifs[2]["name"], "eth0");
        assert_eq!(ifs[2]["sandbox"], c1.path());
        assert_eq!(
            r["ips"],
            json!([{"interface": 2, "address": "10.77.0.2/24", "gateway": "10.77.0.1"}]),
            "{}",
            suite.name
        );
        assert_eq!(r["routes"], json!([{"dst": "0.0.0.0/0"}]));

        let hl = links(&host.ns);
        let br = link(&hl, "cnibr0").unwrap();
        assert_eq!(br["linkinfo"]["info_kind"], "bridge");
        assert_eq!(br["address"], ifs[0]["mac"], "{}: bridge MAC in result", suite.name);
        let hv = link(&hl, ifs[1]["name"].as_str().unwrap()).unwrap();
        assert_eq!(hv["master"], "cnibr0");
        assert_eq!(hv["mtu"], 1400);
        assert_eq!(hv["linkinfo"]["info_slave_data"]["hairpin"], true, "{}", suite.name);
        assert_eq!(hv["address"], ifs[1]["mac"]);
        assert_eq!(addrs(&host.ns, "cnibr0"), vec!["10.77.0.1/24"]);
        assert_eq!(host.ns.run("sysctl", &["-n", "net.ipv4.ip_forward"]).unwrap().trim(), "1");

        let cl = links(&c1);
        let eth0 = link(&cl, "eth0").unwrap();
        assert_eq!(eth0["address"], ifs[2]["mac"]);
        assert_eq!(eth0["mtu"], 1400);
        assert_eq!(addrs(&c1, "eth0"), vec!["10.77.0.2/24"]);
        let routes = c1.ip_json(&["route", "show", "default"]).unwrap();
        assert_eq!(routes[0]["gateway"], "10.77.0.1");
        assert_eq!(c1.run("sysctl", &["-n", "net.ipv4.conf.eth0.arp_notify"]).unwrap().trim(), "1");
        assert_eq!(c1.run("sysctl", &["-n", "net.ipv6.conf.eth0.accept_dad"]).unwrap().trim(), "0");
        let host_veth = ifs[1]["name"].as_str().unwrap();
        for dev in ["cnibr0", host_veth] {
            let key = format!("net.ipv6.conf.{dev}.accept_ra");
            assert_eq!(host.ns.run("sysctl", &["-n", &key]).unwrap().trim(), "0", "{}: {key}", suite.name);
        }

        let nat = nat_rules(&host);
        assert!(
            nat.contains(
                "-A POSTROUTING -s 10.77.0.2/32 -m comment --comment \"name: \\\"brnet\\\" id: \\\"ctr-a\\\"\" -j CNI-"
            ),
            "{}: {nat}",
            suite.name
        );

        // Container to gateway, container to container, and out through masquerade.
        assert!(c1.succeeds("ping", &["-c1", "-W2", "10.77.0.1"]), "{}: ping gateway", suite.name);
        assert!(c1.succeeds("ping", &["-c1", "-W2", "10.77.0.3"]), "{}: ping neighbour", suite.name);
        let outside = Netns::new("o").unwrap();
        host.ns
            .run("ip", &["link", "add", "upl0", "type", "veth", "peer", "name", "upl1", "netns", outside.name()])
            .unwrap();
        host.ns.run("ip", &["addr", "add", "198.51.100.1/24", "dev", "upl0"]).unwrap();
        host.ns.run("ip", &["link", "set", "upl0", "up"]).unwrap();
        outside.run("ip", &["addr", "add", "198.51.100.2/24", "dev", "upl1"]).unwrap();
        outside.run("ip", &["link", "set", "upl1", "up"]).unwrap();
        // The outside has no route back to 10.77.0.0/24: replies arrive only when masqueraded.
        assert!(c1.succeeds("ping", &["-c1", "-W2", "198.51.100.2"]), "{}: ping outside via masquerade", suite.name);

        rt.del_list(&l, &a1).unwrap();
        rt.del_list(&l, &a2).unwrap();
        assert_eq!(veths(&host), 0, "{}: veths left", suite.name);
        assert!(reservations(&host).is_empty(), "{}: reservations left", suite.name);
        assert!(!nat_rules(&host).contains("brnet"), "{}: rules left: {}", suite.name, nat_rules(&host));
        rt.del_list(&l, &a1).unwrap();
    });
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
            let l = list(
                &host,
                version,
                json!({"isDefaultGateway": true, "ipam": {"type": "host-local",
                "dataDir": host.dir.join("ipam").display().to_string(), "ranges": [[{"subnet": "10.78.0.0/24"}]]}}),
            );
            let r = rt.add_list(&l, &att).unwrap_or_else(|e| panic!("{} {version}: {e}", suite.name));
            assert_eq!(r["cniVersion"], version);
            if version < "0.3.0" {
                assert_eq!(r["ip4"]["ip"], "10.78.0.2/24", "{} {version}: {r}", suite.name);
                assert_eq!(r["ip4"]["gateway"], "10.78.0.1");
            } else {
                assert_eq!(r["interfaces"].as_array().unwrap().len(), 3);
                assert_eq!(r["ips"][0]["interface"], 2);
                assert_eq!(r["routes"], json!([{"dst": "0.0.0.0/0", "gw": "10.78.0.1"}]), "{} {version}", suite.name);
                assert_eq!(r["ips"][0].get("version").is_some(), version < "1.0.0", "{} {version}", suite.name);
            }
            if version >= "0.4.0" {
                rt.check_list(&l, &att).unwrap_or_else(|e| panic!("{} {version} CHECK: {e}", suite.name));
            }
            rt.del_list(&l, &att).unwrap();
            assert_eq!(veths(&host), 0);
        }
    });
}

#[test]
fn failed_add_leaves_nothing_behind() {
    require_root!();
    each_suite(false, |suite| {
        let host = FakeHost::new().unwrap();
        let rt = Runtime::new(suite, &host.ns, host.dir.clone());
        let c = host.container().unwrap();
        // The interface name is taken in the container: error before any address is reserved.
        c.run("ip", &["link", "add", "eth0", "type", "veth", "peer", "name", "eth9"]).unwrap();
        let l = list(&host, "1.0.0", json!({}));
        let err = rt.add_list(&l, &Attachment::new("ctr-x", &c)).unwrap_err().to_string();
        assert!(err.contains("already exists"), "{}: {err}", suite.name);
        assert!(reservations(&host).is_empty(), "{}: reservation leaked", suite.name);
        assert_eq!(veths(&host), 0, "{}: veth leaked", suite.name);
        let hint = host.dir.join("ipam/brnet/last_reserved_ip.0");
        assert!(!hint.exists(), "{}: IPAM ran for a refused ADD", suite.name);
        if suite.is_ours() {
            // The reference creates the bridge before it looks at the container.
            assert!(link(&links(&host.ns), "cnibr0").is_none(), "bridge created by a refused ADD");
        }

        // IPAM fails (no such plugin): the veth created before it is removed again.
        let c2 = host.container().unwrap();
        let bad = list(&host, "1.0.0", json!({"ipam": {"type": "no-such-ipam"}}));
        assert!(rt.add_list(&bad, &Attachment::new("ctr-y", &c2)).is_err());
        if !suite.is_reference() {
            // The reference leaves its veth for the runtime's DEL after the failed ADD, and the bridge.
            assert_eq!(veths(&host), 0, "veth leaked after IPAM failure");
            assert!(link(&links(&c2), "eth0").is_none(), "container eth0 leaked");
            assert!(link(&links(&host.ns), "cnibr0").is_none(), "bridge left by a failed ADD");
        }
    });
}

#[test]
fn a_failure_after_ipam_releases_the_address() {
    require_root!();
    each_suite(true, |suite| {
        let host = FakeHost::new().unwrap();
        let rt = Runtime::new(suite, &host.ns, host.dir.clone());
        // A non-bridge link holds the gateway-to-be address on the bridge: forceAddress is off,
        // so ADD fails after IPAM and must give the address back and remove the veth. The
        // masquerade batch was already loading by then: its rules must go too.
        let c0 = host.container().unwrap();
        rt.add_list(&list(&host, "1.0.0", json!({})), &Attachment::new("ctr-0", &c0)).unwrap();
        let nat_before = nat_rules(&host);
        let c = host.container().unwrap();
        let other = json!({"cniVersion": "1.0.0", "name": "brnet", "plugins": [{"type": "bridge", "bridge": "cnibr0",
            "isGateway": true, "ipMasq": true,
            "ipam": {"type": "host-local", "dataDir": host.dir.join("ipam").display().to_string(),
            "ranges": [[{"subnet": "10.79.0.0/24"}]]}}]});
        let err = rt.add_list(&other, &Attachment::new("ctr-1", &c)).unwrap_err().to_string();
        assert!(err.contains("already has an IP address different from 10.79.0.1/24"), "{err}");
        assert_eq!(reservations(&host), BTreeSet::from(["10.77.0.2".to_string()]), "only ctr-0 holds an address");
        assert_eq!(veths(&host), 1, "only ctr-0's veth remains");
        let strip = |s: &str| s.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>().join("\n");
        assert_eq!(strip(&nat_rules(&host)), strip(&nat_before), "ctr-1's masquerade rules were rolled back");
    });
}

/// A second ADD of an attachment that exists is refused before IPAM runs, so the attachment keeps
/// its address, its reservation and its traffic, as with the reference.
#[test]
fn a_second_add_of_an_attachment_leaves_it_as_it_was() {
    require_root!();
    each_suite(false, |suite| {
        let host = FakeHost::new().unwrap();
        let rt = Runtime::new(suite, &host.ns, host.dir.clone());
        let l = list(&host, "1.0.0", json!({}));
        let c = host.container().unwrap();
        let att = Attachment::new("ctr-dup", &c);
        rt.add_list(&l, &att).unwrap();
        let store = host.dir.join("ipam/brnet");
        let files = conformance::store_files;
        let before = files(&store);
        let conf = conformance::build_config(&l["plugins"][0], "brnet", "1.0.0", None, &Default::default());
        let out = rt.invoke("bridge", "ADD", &att, &conf).unwrap();
        let (_, msg, _) = out.error().unwrap();
        assert!(msg.contains("already exists"), "{}: {msg}", suite.name);
        assert_eq!(files(&store), before, "{}: the store changed", suite.name);
        assert_eq!(addrs(&c, "eth0"), vec!["10.77.0.2/24"], "{}", suite.name);
        assert_eq!(veths(&host), 1, "{}", suite.name);
        rt.check_list(&l, &att).unwrap_or_else(|e| panic!("{}: CHECK after the refused ADD: {e}", suite.name));
        assert!(c.succeeds("ping", &["-c1", "-W2", "10.77.0.1"]), "{}: traffic after the refused ADD", suite.name);
        rt.del_list(&l, &att).unwrap();
    });
}

/// A failure after the bridge and its gateway address were made by this ADD takes both back
/// (the reference keeps them), and puts back a gateway `forceAddress` removed; with another
/// container on the bridge, everything stays.
#[test]
fn a_failed_add_takes_back_the_bridge_and_gateway_it_made() {
    require_root!();
    each_suite(true, |suite| {
        let host = FakeHost::new().unwrap();
        let rt = Runtime::new(suite, &host.ns, host.dir.clone());
        // A route whose gateway is not on any link: the container's routes fail last.
        let bad = list(
            &host,
            "1.0.0",
            json!({"ipam": {"type": "host-local", "dataDir": host.dir.join("ipam").display().to_string(),
                "ranges": [[{"subnet": "10.77.0.0/24"}]], "routes": [{"dst": "192.0.2.0/24", "gw": "203.0.113.1"}]}}),
        );
        let c = host.container().unwrap();
        let err = rt.add_list(&bad, &Attachment::new("ctr-r", &c)).unwrap_err().to_string();
        assert!(err.contains("failed to add route '192.0.2.0/24 via 203.0.113.1"), "{err}");
        assert!(link(&links(&host.ns), "cnibr0").is_none(), "bridge left by a failed ADD");
        assert!(reservations(&host).is_empty());
        assert_eq!(veths(&host), 0);
        assert!(!nat_rules(&host).contains(":CNI-"), "{}", nat_rules(&host));

        // An unused bridge left by an earlier network: forceAddress swaps its gateway, and the
        // failed ADD swaps it back.
        let c0 = host.container().unwrap();
        let good = list(&host, "1.0.0", json!({}));
        rt.add_list(&good, &Attachment::new("ctr-0", &c0)).unwrap();
        rt.del_list(&good, &Attachment::new("ctr-0", &c0)).unwrap();
        let mut forced = bad.clone();
        forced["plugins"][0]["forceAddress"] = json!(true);
        forced["plugins"][0]["ipam"]["ranges"] = json!([[{"subnet": "10.79.0.0/24"}]]);
        let err = rt.add_list(&forced, &Attachment::new("ctr-r", &c)).unwrap_err().to_string();
        assert!(err.contains("failed to add route"), "{err}");
        assert_eq!(addrs(&host.ns, "cnibr0"), vec!["10.77.0.1/24"], "the forced-out gateway is back");

        rt.add_list(&good, &Attachment::new("ctr-0", &c0)).unwrap();
        assert!(rt.add_list(&bad, &Attachment::new("ctr-r", &c)).is_err());
        assert_eq!(addrs(&host.ns, "cnibr0"), vec!["10.77.0.1/24"], "the bridge in use keeps its gateway");
        assert!(c0.succeeds("ping", &["-c1", "-W2", "10.77.0.1"]));
    });
}

/// A 10 KB container ID: the masquerade comment is cut to the 255 bytes iptables keeps (as
/// iptables does for the reference), so ADD, CHECK and DEL work.
#[test]
fn a_long_container_id_gets_its_masquerade_rules() {
    require_root!();
    each_suite(false, |suite| {
        let host = FakeHost::new().unwrap();
        let rt = Runtime::new(suite, &host.ns, host.dir.clone());
        let l = list(&host, "1.0.0", json!({}));
        let c = host.container().unwrap();
        let id = "c".repeat(10 * 1024);
        let att = Attachment::new(&id, &c);
        let mut conf = conformance::build_config(&l["plugins"][0], "brnet", "1.0.0", None, &Default::default());
        let out = rt.invoke("bridge", "ADD", &att, &conf).unwrap();
        assert!(out.ok(), "{}: {out:?}", suite.name);
        let nat = nat_rules(&host);
        let comment = format!("name: \\\"brnet\\\" id: \\\"{}", "c".repeat(255 - 19));
        let jump =
            nat.lines().find(|l| l.starts_with("-A POSTROUTING -s 10.77.0.2/32")).unwrap_or_else(|| panic!("{nat}"));
        assert!(jump.contains(&format!("--comment \"{comment}\" -j CNI-")), "{}: {jump}", suite.name);
        conf["prevResult"] = out.json().unwrap();
        let check = rt.invoke("bridge", "CHECK", &att, &conf).unwrap();
        assert!(check.ok(), "{}: {check:?}", suite.name);
        let del = rt.invoke("bridge", "DEL", &att, &conf).unwrap();
        assert!(del.ok(), "{}: {del:?}", suite.name);
        assert!(!nat_rules(&host).contains(":CNI-"), "{}", suite.name);
        assert!(reservations(&host).is_empty());
    });
}

/// The first ADD puts the gateway address on the bridge and pins its MAC; later ADDs leave the
/// bridge alone. Setting a MAC, even the one it has, makes the kernel flush every ARP and NDP entry
/// of the device, static ones included: a later ADD must not wipe the host's neighbours.
#[test]
fn a_later_add_keeps_the_bridges_neighbours_and_its_pinned_mac() {
    require_root!();
    each_suite(false, |suite| {
        let host = FakeHost::new().unwrap();
        let rt = Runtime::new(suite, &host.ns, host.dir.clone());
        let l = list(&host, "1.0.0", json!({}));
        let (c1, c2) = (host.container().unwrap(), host.container().unwrap());
        let (a1, a2) = (Attachment::new("ctr-a", &c1), Attachment::new("ctr-b", &c2));
        let r1 = rt.add_list(&l, &a1).unwrap();
        let mac = r1["interfaces"][0]["mac"].as_str().unwrap().to_string();
        let assign = || host.ns.run("cat", &["/sys/class/net/cnibr0/addr_assign_type"]).unwrap().trim().to_string();
        assert_eq!(assign(), "3", "{}: the first ADD pins the bridge MAC (NET_ADDR_SET)", suite.name);

        let neigh = ["10.77.0.200", "lladdr", "02:00:00:00:00:c8", "dev", "cnibr0", "nud", "permanent"];
        host.ns.run("ip", &[&["neigh", "add"][..], &neigh[..]].concat()).unwrap();
        let r2 = rt.add_list(&l, &a2).unwrap();
        let shown = host.ns.run("ip", &["neigh", "show", "dev", "cnibr0"]).unwrap();
        assert!(shown.contains("10.77.0.200 lladdr 02:00:00:00:00:c8 PERMANENT"), "{}: {shown:?}", suite.name);
        assert_eq!(r2["interfaces"][0]["mac"], mac.as_str(), "{}: bridge MAC moved", suite.name);
        assert_eq!(assign(), "3", "{}", suite.name);

        rt.del_list(&l, &a2).unwrap();
        rt.del_list(&l, &a1).unwrap();
        assert_eq!(veths(&host), 0, "{}: veths left", suite.name);
    });
}

/// The kernel numbers bridge ports in 10 bits. A full bridge fails ADD with an error that says so,
/// and leaves no veth or reservation behind.
#[test]
fn a_full_bridge_is_named_as_the_reason() {
    require_root!();
    each_suite(true, |suite| {
        let host = FakeHost::new().unwrap();
        let rt = Runtime::new(suite, &host.ns, host.dir.clone());
        let l = list(&host, "1.0.0", json!({}));
        let c0 = host.container().unwrap();
        rt.add_list(&l, &Attachment::new("ctr-0", &c0)).unwrap();
        // 1022 more ports, made by ip -batch (dummy peers stay in the host).
        let batch: String = (0..1022)
            .map(|i| format!("link add fill{i} type veth peer name fillp{i}\nlink set fill{i} master cnibr0\n"))
            .collect();
        let file = host.dir.join("fill.batch");
        std::fs::write(&file, batch).unwrap();
        host.ns.run("ip", &["-batch", file.to_str().unwrap()]).unwrap();
        let c = host.container().unwrap();
        let err = rt.add_list(&l, &Attachment::new("ctr-1", &c)).unwrap_err().to_string();
        assert!(err.contains("already has the kernel's maximum of 1023 ports"), "{err}");
        assert_eq!(reservations(&host), BTreeSet::from(["10.77.0.2".to_string()]), "only ctr-0 holds an address");
        assert!(link(&links(&c), "eth0").is_none(), "no container interface left");
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
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while veths(&host) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert_eq!(veths(&host), 0, "{}", suite.name);
        if !suite.is_reference() {
            // The reference leaks its masquerade rules here (plugins#810); ours must not.
            assert!(!nat_rules(&host).contains("brnet"), "rules left: {}", nat_rules(&host));
        }
        // DEL without CNI_NETNS and without prevResult, twice.
        let none = Attachment { netns: String::new(), ..att.clone() };
        rt.del_list(&l, &none).unwrap();
        rt.del_list(&l, &none).unwrap();
    });
}

#[test]
fn layer2_bridge_and_its_check() {
    require_root!();
    each_suite(false, |suite| {
        let host = FakeHost::new().unwrap();
        let rt = Runtime::new(suite, &host.ns, host.dir.clone());
        let c = host.container().unwrap();
        let att = Attachment::new("ctr-l2", &c);
        let l = json!({"cniVersion": "1.0.0", "name": "l2net", "plugins": [{"type": "bridge", "bridge": "cnil2", "ipam": {}}]});
        let r = rt.add_list(&l, &att).unwrap();
        assert!(r.get("ips").is_none(), "{r}");
        let eth0 = links(&c);
        assert!(link(&eth0, "eth0").unwrap()["flags"].as_array().unwrap().contains(&json!("UP")));
        if !suite.is_reference() {
            // The reference's CHECK tries to run an IPAM plugin named "" and fails.
            rt.check_list(&l, &att).unwrap();
        }
        rt.del_list(&l, &att).unwrap();
        let l020 = json!({"cniVersion": "0.2.0", "name": "l2net", "plugins": [{"type": "bridge", "bridge": "cnil2", "ipam": {}}]});
        assert!(rt.add_list(&l020, &att).is_err(), "an L2 result cannot be expressed in 0.2.0");
        if !suite.is_reference() {
            assert_eq!(veths(&host), 0, "refused before creating anything");
        }
    });
}

#[test]
fn check_notices_missing_pieces() {
    require_root!();
    each_suite(false, |suite| {
        let host = FakeHost::new().unwrap();
        let rt = Runtime::new(suite, &host.ns, host.dir.clone());
        let c = host.container().unwrap();
        let att = Attachment::new("ctr-chk", &c);
        let l = list(&host, "1.0.0", json!({}));
        rt.add_list(&l, &att).unwrap();
        rt.check_list(&l, &att).unwrap();
        c.run("ip", &["addr", "flush", "dev", "eth0"]).unwrap();
        assert!(rt.check_list(&l, &att).is_err(), "{}: CHECK passed without the address", suite.name);
        rt.del_list(&l, &att).unwrap();
    });
}

#[test]
fn mac_promisc_and_custom_gateway() {
    require_root!();
    each_suite(false, |suite| {
        let host = FakeHost::new().unwrap();
        let rt = Runtime::new(suite, &host.ns, host.dir.clone());
        let c = host.container().unwrap();
        let mut att = Attachment::new("ctr-mac", &c);
        att.caps.insert("mac".into(), json!("02:42:ac:11:00:09"));
        let mut l = list(&host, "1.0.0", json!({"promiscMode": true, "capabilities": {"mac": true}}));
        l["plugins"][0]["ipam"]["ranges"] = json!([[{"subnet": "10.80.0.0/24", "gateway": "10.80.0.254"}]]);
        let r = rt.add_list(&l, &att).unwrap();
        assert_eq!(r["interfaces"][2]["mac"], "02:42:ac:11:00:09", "{}", suite.name);
        assert_eq!(link(&links(&c), "eth0").unwrap()["address"], "02:42:ac:11:00:09");
        assert!(link(&links(&host.ns), "cnibr0").unwrap()["flags"].as_array().unwrap().contains(&json!("PROMISC")));
        assert_eq!(addrs(&host.ns, "cnibr0"), vec!["10.80.0.254/24"]);
        assert_eq!(r["ips"][0]["gateway"], "10.80.0.254");
        rt.check_list(&l, &att).unwrap_or_else(|e| panic!("{}: CHECK of a promiscuous bridge: {e}", suite.name));
        rt.del_list(&l, &att).unwrap();
    });
}

#[test]
fn twenty_concurrent_adds_into_a_new_bridge() {
    require_root!();
    each_suite(true, |suite| {
        let host = FakeHost::new().unwrap();
        let l = list(&host, "1.0.0", json!({}));
        let containers: Vec<Netns> = (0..20).map(|_| host.container().unwrap()).collect();
        let results: Vec<Value> = std::thread::scope(|s| {
            let handles: Vec<_> = containers
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let (l, host) = (&l, &host);
                    s.spawn(move || {
                        let rt = Runtime::new(suite, &host.ns, host.dir.clone());
                        rt.add_list(l, &Attachment::new(&format!("ctr-{i}"), c)).unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let ips: BTreeSet<String> =
            results.iter().map(|r| r["ips"][0]["address"].as_str().unwrap().to_string()).collect();
        assert_eq!(ips.len(), 20, "distinct addresses");
        let bridges = links(&host.ns).as_array().unwrap().iter().filter(|l| l["ifname"] == "cnibr0").count();
        assert_eq!(bridges, 1);
        assert_eq!(veths(&host), 20);
        std::thread::scope(|s| {
            for (i, c) in containers.iter().enumerate() {
                let (l, host) = (&l, &host);
                s.spawn(move || {
                    let rt = Runtime::new(suite, &host.ns, host.dir.clone());
                    rt.del_list(l, &Attachment::new(&format!("ctr-{i}"), c)).unwrap();
                });
            }
        });
        assert_eq!(veths(&host), 0);
        assert!(reservations(&host).is_empty());
        assert!(!nat_rules(&host).contains("brnet"), "{}", nat_rules(&host));
    });
}

#[test]
fn nftables_masquerade_and_gc() {
    require_root!();
    each_suite(true, |suite| {
        let host = FakeHost::new().unwrap();
        let rt = Runtime::new(suite, &host.ns, host.dir.clone());
        let l = list(&host, "1.1.0", json!({"ipMasqBackend": "nftables"}));
        let (c1, c2) = (host.container().unwrap(), host.container().unwrap());
        let (a1, a2) = (Attachment::new("ctr-n1", &c1), Attachment::new("ctr-n2", &c2));
        rt.add_list(&l, &a1).unwrap();
        rt.add_list(&l, &a2).unwrap();
        let rules = host.ns.run("nft", &["list", "table", "inet", "cni_plugins_masquerade"]).unwrap();
        assert!(rules.contains("ip saddr 10.77.0.2 ip daddr != 10.77.0.0/24 masquerade"), "{rules}");
        rt.check_list(&l, &a1).unwrap();
        rt.status_list(&l).unwrap();
        // The runtime lost track of ctr-n1 (no cache entry, so no DEL): GC alone must clean it.
        std::fs::remove_file(host.dir.join("results/brnet-ctr-n1-eth0")).unwrap();
        rt.gc_list(&l, std::slice::from_ref(&a2)).unwrap();
        let rules = host.ns.run("nft", &["list", "table", "inet", "cni_plugins_masquerade"]).unwrap();
        assert!(!rules.contains("10.77.0.2 "), "{rules}");
        assert!(rules.contains("10.77.0.3 "), "{rules}");
        assert_eq!(reservations(&host), BTreeSet::from(["10.77.0.3".to_string()]));
        rt.del_list(&l, &a2).unwrap();
        let rules = host.ns.run("nft", &["list", "table", "inet", "cni_plugins_masquerade"]).unwrap_or_default();
        assert!(!rules.contains("masquerade comment"), "{rules}");
    });
}

/// A FIFO named as the container's namespace is refused at once: the namespace is opened
/// without blocking and its file system checked (opening a FIFO for reading otherwise waits
/// for a writer forever).
#[test]
fn a_fifo_as_the_namespace_is_refused_at_once() {
    require_root!();
    let suite = conformance::ours();
    let host = FakeHost::new().unwrap();
    let fifo = host.dir.join("netns-fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let l = list(&host, "1.0.0", json!({}));
    let conf = conformance::build_config(&l["plugins"][0], "brnet", "1.0.0", None, &Default::default());
    let path = suite.dir.display().to_string();
    let netns = fifo.display().to_string();
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "ctr-fifo"),
        ("CNI_NETNS", netns.as_str()),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", path.as_str()),
    ];
    let mut child =
        conformance::plugin_command(&suite.plugin("bridge"), &[], &env, Some(&host.ns)).unwrap().spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), conf.to_string().as_bytes()).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("bridge ADD with a FIFO as CNI_NETNS did not finish within 5 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let (stdout, _) = conformance::read_outputs(&mut child);
    let err: Value = serde_json::from_str(&stdout).unwrap();
    assert!(err["msg"].as_str().unwrap().contains("is not a network namespace"), "{err}");
    assert!(reservations(&host).is_empty());
    assert!(link(&links(&host.ns), "cnibr0").is_none());
}

/// Dual-stack bridge list with the nftables masquerade backend.
fn nft_list(host: &FakeHost) -> Value {
    let mut l = list(host, "1.1.0", json!({"ipMasqBackend": "nftables"}));
    l["plugins"][0]["ipam"]["ranges"] = json!([[{"subnet": "10.77.0.0/24"}], [{"subnet": "fd00:77::/64"}]]);
    l["plugins"][0]["ipam"]["routes"] = json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]);
    l
}

/// The masquerade table as the kernel holds it, in three renderings (nft's text, its JSON and the
/// netlink expressions with registers and comment userdata), with kernel handles removed.
fn masquerade_table(host: &FakeHost) -> String {
    let table = ["list", "table", "inet", "cni_plugins_masquerade"];
    let text = host.ns.run("nft", &table).unwrap_or_default();
    let mut json_args = vec!["-j"];
    json_args.extend(table);
    let mut json: Value = serde_json::from_str(&host.ns.run("nft", &json_args).unwrap_or("{}".into())).unwrap();
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.remove("handle");
                m.remove("metainfo");
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut json);
    let mut netlink_args = vec!["--debug=netlink"];
    netlink_args.extend(table);
    // Rule headers end with the rule's handle and its predecessor's: drop the numbers.
    let netlink: Vec<String> = host
        .ns
        .run("nft", &netlink_args)
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim_end_matches(|c: char| c.is_ascii_digit() || c == ' ').to_string())
        .collect();
    format!("{text}\n{json}\n{}", netlink.join("\n"))
}

#[test]
fn nftables_masquerade_is_the_newest_references_table() {
    require_root!();
    let Some(head) = conformance::reference_head() else { return };
    let mut seen: Vec<(String, String, String)> = Vec::new();
    for suite in [conformance::ours(), head] {
        let host = FakeHost::new().unwrap();
        let rt = Runtime::new(&suite, &host.ns, host.dir.clone());
        let l = nft_list(&host);
        let (c1, c2) = (host.container().unwrap(), host.container().unwrap());
        let (a1, a2) = (Attachment::new("ctr-n1", &c1), Attachment::new("ctr-n2", &c2));
        rt.add_list(&l, &a1).unwrap();
        rt.add_list(&l, &a2).unwrap();
        let added = masquerade_table(&host);
        assert!(added.contains("ip6 saddr fd00:77::2 ip6 daddr != fd00:77::/64 masquerade"), "{added}");
        rt.check_list(&l, &a1).unwrap();
        rt.del_list(&l, &a1).unwrap();
        let one_left = masquerade_table(&host);
        rt.del_list(&l, &a2).unwrap();
        let empty = masquerade_table(&host);
        assert!(!empty.contains("masquerade comment"), "{}: {empty}", suite.name);
        seen.push((added, one_left, empty));
    }
    assert_eq!(seen[0].0, seen[1].0, "after two ADDs: ours, then the newest reference");
    assert_eq!(seen[0].1, seen[1].1, "after one DEL: ours, then the newest reference");
    assert_eq!(seen[0].2, seen[1].2, "after both DELs: ours, then the newest reference");
}

#[test]
fn a_host_moves_between_the_newest_reference_and_ours_with_containers_attached() {
    require_root!();
    let Some(head) = conformance::reference_head() else { return };
    let host = FakeHost::new().unwrap();
    let ours = Runtime::new(&conformance::ours(), &host.ns, host.dir.clone());
    let theirs = Runtime::new(&head, &host.ns, host.dir.clone());
    let l = nft_list(&host);
    let cs: Vec<Netns> = (0..4).map(|_| host.container().unwrap()).collect();
    let atts: Vec<Attachment> = cs.iter().enumerate().map(|(i, c)| Attachment::new(&format!("ctr-s{i}"), c)).collect();
    let masq_rules = |host: &FakeHost| -> Vec<String> {
        let text = host.ns.run("nft", &["list", "chain", "inet", "cni_plugins_masquerade", "masq_checks"]).unwrap();
        text.lines().filter(|l| l.contains("masquerade comment")).map(|l| l.trim().to_string()).collect()
    };
    let postrouting = |host: &FakeHost| {
        host.ns.run("nft", &["list", "chain", "inet", "cni_plugins_masquerade", "postrouting"]).unwrap()
    };
    // Two containers under the reference, then the host switches to ours.
    theirs.add_list(&l, &atts[0]).unwrap();
    theirs.add_list(&l, &atts[1]).unwrap();
    ours.add_list(&l, &atts[2]).unwrap();
    ours.check_list(&l, &atts[0]).unwrap();
    theirs.check_list(&l, &atts[2]).unwrap();
    // Ours found the reference's table set up: it added its two rules and left postrouting alone.
    assert_eq!(postrouting(&host).matches("goto masq_checks").count(), 1);
    assert_eq!(masq_rules(&host).len(), 6, "{:?}", masq_rules(&host));
    ours.del_list(&l, &atts[0]).unwrap();
    assert_eq!(masq_rules(&host).len(), 4, "{:?}", masq_rules(&host));
    // And back: the reference adds and deletes among ours.
    theirs.add_list(&l, &atts[3]).unwrap();
    theirs.del_list(&l, &atts[2]).unwrap();
    let left = masq_rules(&host);
    assert_eq!(left.len(), 4, "{left:?}");
    assert!(left.iter().all(|r| r.contains("id: ctr-s1") || r.contains("id: ctr-s3")), "{left:?}");
    let chain = postrouting(&host);
    assert_eq!(chain.matches("goto masq_checks").count(), 1, "{chain}");
    assert_eq!(chain.matches("return").count(), 2, "{chain}");
    ours.del_list(&l, &atts[3]).unwrap();
    theirs.del_list(&l, &atts[1]).unwrap();
    assert!(masq_rules(&host).is_empty(), "{:?}", masq_rules(&host));
    assert!(reservations(&host).is_empty());
}

/// Whether the run turned the rule layer's fast paths off (`CNI_FIREWALL_FAST_PATHS=0`, which the
/// driver passes on): the plain paths read the nat table through `iptables-save`, so the tests
/// that count programs hold only with the fast paths on.
fn fast_paths_off() -> bool {
    std::env::var("CNI_FIREWALL_FAST_PATHS")
        .is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "0" | "false" | "off" | "no"))
}

/// Whether programs can be counted here: strace is installed and the fast paths are on.
fn can_count_programs() -> bool {
    if !conformance::trace::have_strace() {
        conformance::skip("strace is not installed");
        return false;
    }
    if fast_paths_off() {
        conformance::skip("fast paths are off: the plain paths run iptables-save by design");
        return false;
    }
    true
}

#[test]
fn nftables_masquerade_runs_no_program_but_ipam() {
    require_root!();
    if !can_count_programs() {
        return;
    }
    let host = FakeHost::new().unwrap();
    let suite = conformance::trace::traced_suite(&host.dir.join("traced"), &["bridge"]).unwrap();
    let rt = Runtime::new(&suite, &host.ns, host.dir.clone());
    let l = nft_list(&host);
    let (c1, c2) = (host.container().unwrap(), host.container().unwrap());
    let (a1, a2) = (Attachment::new("ctr-t1", &c1), Attachment::new("ctr-t2", &c2));
    rt.add_list(&l, &a1).unwrap();
    rt.add_list(&l, &a2).unwrap();
    rt.check_list(&l, &a1).unwrap();
    std::fs::remove_file(host.dir.join("results/brnet-ctr-t2-eth0")).unwrap();
    rt.gc_list(&l, std::slice::from_ref(&a1)).unwrap();
    rt.del_list(&l, &a1).unwrap();
    let rules = host.ns.run("nft", &["list", "table", "inet", "cni_plugins_masquerade"]).unwrap();
    assert!(!rules.contains("masquerade comment"), "{rules}");
    let execs = conformance::trace::traced_execs(&suite.dir).unwrap();
    let bridge = conformance::ours().plugin("bridge").display().to_string();
    let ipam = suite.plugin("host-local").display().to_string();
    // ADD, ADD, CHECK, GC, DEL: five bridge runs, each calling host-local once.
    assert_eq!(execs.iter().filter(|e| **e == bridge).count(), 5, "{execs:?}");
    assert_eq!(execs.iter().filter(|e| **e == ipam).count(), 5, "{execs:?}");
    assert!(execs.iter().all(|e| *e == bridge || *e == ipam), "{execs:?}");
}

/// DEL on an iptables-nft host deletes the container's masquerade chain and its jump by handle in
/// one nf_tables batch over netlink: no `iptables-save`, `iptables-restore` or `nft` process, only
/// the IPAM plugin. The chain and the jump are really gone afterwards, and a neighbour's stay.
#[test]
fn iptables_nft_del_runs_no_program_but_ipam() {
    require_root!();
    if !can_count_programs() {
        return;
    }
    let nft_variant = std::fs::canonicalize("/usr/sbin/iptables-restore")
        .is_ok_and(|p| p.file_name().is_some_and(|n| n.to_string_lossy().contains("nft")));
    if !nft_variant {
        conformance::skip("iptables is not the nf_tables variant here");
        return;
    }
    let host = FakeHost::new().unwrap();
    // ADD runs iptables-restore by design; only DEL is traced.
    let ours = conformance::ours();
    let plain = Runtime::new(&ours, &host.ns, host.dir.clone());
    let suite = conformance::trace::traced_suite(&host.dir.join("traced"), &["bridge"]).unwrap();
    let traced = Runtime::new(&suite, &host.ns, host.dir.clone());
    let l = list(&host, "1.1.0", json!({}));
    let (c1, c2) = (host.container().unwrap(), host.container().unwrap());
    let (a1, a2) = (Attachment::new("ctr-d1", &c1), Attachment::new("ctr-d2", &c2));
    plain.add_list(&l, &a1).unwrap();
    plain.add_list(&l, &a2).unwrap();
    let before = nat_rules(&host);
    let per_container = before.matches("ctr-d1").count();
    assert!(per_container >= 2 && before.matches("ctr-d2").count() == per_container, "{before}");
    traced.del_list(&l, &a1).unwrap();
    let after = nat_rules(&host);
    assert!(!after.contains("ctr-d1"), "{after}");
    assert_eq!(after.matches("ctr-d2").count(), per_container, "{after}");
    assert_eq!(reservations(&host), BTreeSet::from(["10.77.0.3".to_string()]));
    assert_eq!(veths(&host), 1);
    let execs = conformance::trace::traced_execs(&suite.dir).unwrap();
    let bridge = ours.plugin("bridge").display().to_string();
    let ipam = suite.plugin("host-local").display().to_string();
    assert_eq!(execs.iter().filter(|e| **e == bridge).count(), 1, "{execs:?}");
    assert_eq!(execs.iter().filter(|e| **e == ipam).count(), 1, "{execs:?}");
    assert!(execs.iter().all(|e| *e == bridge || *e == ipam), "{execs:?}");
    plain.del_list(&l, &a2).unwrap();
    assert!(!nat_rules(&host).contains("ctr-d"), "{}", nat_rules(&host));
}
