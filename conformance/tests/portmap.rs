//! `portmap` chained after `bridge` + `host-local`, driven as runtimes drive it (capability
//! `portMappings`), checked against the reference's rule sets, real traffic through the published
//! ports, and the kernel state DEL, CHECK and GC leave.
//!
//! Deliberate differences from the reference v1.1.1, asserted per suite below: DEL removes the rules
//! when the runtime does not send `portMappings` again (the reference does nothing); CHECK passes for
//! an IPv4-only container (the reference checks ip6tables too and fails); GC, STATUS and the
//! nftables backend exist only in ours; ports above 65535, unknown protocols and bad host IPs are
//! rejected before anything changes.
//!
//! The timing comparison is `#[ignore]`d (it runs the reference's 100-port ADD, ~1–2 s each, and
//! wants a quiet machine); run it with
//! `CNI_TEST_PLUGIN_DIR=target/release cargo test -p conformance --test portmap -- --ignored --nocapture`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use conformance::driver::PluginFailure;
use conformance::{build_config, exec, require_root, suites, Attachment, FakeHost, Netns, Runtime, Suite};
use serde_json::{json, Map, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BRIDGE: &str = "cnipm0";
const NET: &str = "pmnet";

/// bridge (gateway, masquerade, hairpin) + host-local (+ IPv6 when `dual`) + portmap with `extra` keys.
fn list(host: &FakeHost, version: &str, dual: bool, extra: Value) -> Value {
    let mut ranges = vec![json!([{"subnet": "10.91.0.0/24"}])];
    let mut routes = vec![json!({"dst": "0.0.0.0/0"})];
    if dual {
        ranges.push(json!([{"subnet": "fd00:91::/64"}]));
        routes.push(json!({"dst": "::/0"}));
    }
    // hairpinMode as podman sets it: with br_netfilter (on here) a hairpin connection is DNATed
    // while bridged and must leave through the port it came in by.
    let bridge = json!({"type": "bridge", "bridge": BRIDGE, "isGateway": true, "ipMasq": true, "hairpinMode": true,
        "ipam": {"type": "host-local", "dataDir": host.dir.join("ipam").display().to_string(),
                 "ranges": ranges, "routes": routes}});
    let mut portmap = json!({"type": "portmap", "capabilities": {"portMappings": true}});
    for (k, v) in extra.as_object().unwrap() {
        portmap[k] = v.clone();
    }
    json!({"cniVersion": version, "name": NET, "plugins": [bridge, portmap]})
}

fn with_ports(id: &str, c: &Netns, mappings: Value) -> Attachment {
    let mut att = Attachment::new(id, c);
    att.caps.insert("portMappings".into(), mappings);
    att
}

fn tcp(host_port: u16, container_port: u16) -> Value {
    json!({"hostPort": host_port, "containerPort": container_port, "protocol": "tcp"})
}

fn udp(host_port: u16, container_port: u16) -> Value {
    json!({"hostPort": host_port, "containerPort": container_port, "protocol": "udp"})
}

fn save(host: &FakeHost, family: &str) -> String {
    let tool = if family == "v6" { "ip6tables-save" } else { "iptables-save" };
    host.ns.run(tool, &["-t", "nat"]).unwrap()
}

/// The portmap part of a nat dump, in a form both suites must produce identically: the declared
/// `CNI-HOSTPORT-*`/`CNI-DN-*` chains, their rules in order, and the jumps to them from the
/// built-in chains with their position there (POSTROUTING's must be first). Chain names hash
/// network and container ID only, so nothing random is left to normalise.
fn portmap_rules(dump: &str) -> Vec<String> {
    let ours = |s: &str| s.contains("CNI-HOSTPORT-") || s.contains("CNI-DN-");
    let mut out = Vec::new();
    let mut position: std::collections::HashMap<String, usize> = Default::default();
    for line in dump.lines() {
        if let Some(decl) = line.strip_prefix(':') {
            if ours(decl) {
                out.push(line.split_whitespace().next().unwrap().to_string());
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let chain = rule.split_whitespace().next().unwrap().to_string();
            let at = position.entry(chain.clone()).or_default();
            if ours(&chain) {
                out.push(line.to_string());
            } else if ours(rule) {
                out.push(format!("{chain}[{at}] {line}"));
            }
            *at += 1;
        }
    }
    out
}

/// A server in a namespace, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a dual-stack Python server in `ns` that answers every connection (TCP) or datagram (UDP)
/// with `<reply> <peer address>`, and waits until it listens.
fn server(ns: &Netns, udp: bool, port: u16, reply: &str) -> Server {
    let body = if udp {
        "s=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM)\n\
         s.setsockopt(socket.IPPROTO_IPV6,socket.IPV6_V6ONLY,0)\ns.bind(('::',PORT))\nprint('ready',flush=True)\n\
         while True:\n d,a=s.recvfrom(100)\n s.sendto(('REPLY '+a[0].replace('::ffff:','')).encode(),a)\n"
    } else {
        "s=socket.socket(socket.AF_INET6)\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         s.setsockopt(socket.IPPROTO_IPV6,socket.IPV6_V6ONLY,0)\ns.bind(('::',PORT))\ns.listen(64)\n\
         print('ready',flush=True)\n\
         while True:\n c,a=s.accept()\n c.sendall(('REPLY '+a[0].replace('::ffff:','')).encode())\n c.close()\n"
    };
    let code = format!("import socket\n{}", body.replace("PORT", &port.to_string()).replace("REPLY", reply));
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns.name(), "python3", "-c", &code])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "server on port {port} did not start");
    Server(child)
}

/// Connects (TCP) or sends a datagram (UDP, optionally from a fixed source port) from `ns` to
/// `addr:port`; the server's answer, or `None`.
fn get(ns: &Netns, udp: bool, addr: &str, port: u16, source_port: Option<u16>) -> Option<String> {
    let code = if udp {
        format!(
            "import socket,sys\nf=socket.AF_INET6 if ':' in '{addr}' else socket.AF_INET\n\
             s=socket.socket(f,socket.SOCK_DGRAM)\ns.settimeout(1)\n{}\
             for i in range(2):\n s.sendto(b'hi',('{addr}',{port}))\n try:\n  print(s.recvfrom(200)[0].decode());sys.exit(0)\n \
             except socket.timeout:\n  pass\nsys.exit(1)\n",
            source_port.map(|p| format!("s.bind(('',{p}))\n")).unwrap_or_default()
        )
    } else {
        format!("import socket\nc=socket.create_connection(('{addr}',{port}),timeout=2)\nprint(c.recv(200).decode())\n")
    };
    ns.run("python3", &["-c", &code]).ok().map(|s| s.trim().to_string())
}

/// Like [`get`], retried for a few seconds (an IPv6 address may still be tentative).
fn get_eventually(ns: &Netns, udp: bool, addr: &str, port: u16) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = get(ns, udp, addr, port, None);
        if answer.is_some() || Instant::now() > deadline {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An "outside" namespace on a veth to the host: host 198.51.100.1, outside 198.51.100.2, and no
/// route from outside to the containers.
fn outside(host: &FakeHost) -> Netns {
    let o = Netns::new("o").unwrap();
    host.ns.run("ip", &["link", "add", "upl0", "type", "veth", "peer", "name", "upl1", "netns", o.name()]).unwrap();
    host.ns.run("ip", &["addr", "add", "198.51.100.1/24", "dev", "upl0"]).unwrap();
    host.ns.run("ip", &["link", "set", "upl0", "up"]).unwrap();
    o.run("ip", &["addr", "add", "198.51.100.2/24", "dev", "upl1"]).unwrap();
    o.run("ip", &["link", "set", "upl1", "up"]).unwrap();
    o
}

fn each_suite(ours_only: bool, mut f: impl FnMut(&Suite)) {
    for suite in suites() {
        if ours_only && suite.is_reference() {
            continue;
        }
        f(&suite);
    }
}

#[test]
fn rule_sets_match_the_reference() {
    require_root!();
    let mut dumps: Vec<(String, Vec<Vec<String>>)> = Vec::new();
    each_suite(false, |suite| {
        let host = FakeHost::new().unwrap();
        let rt = Runtime::new(suite, &host.ns, host.dir.clone());
        let l = list(&host, "1.0.0", true, json!({}));
        let (c1, c2) = (host.container().unwrap(), host.container().unwrap());
        let mut mappings = vec![
            tcp(18080, 80),
            tcp(18443, 443),
            json!({"hostPort": 15353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"}),
            json!({"hostPort": 18082, "containerPort": 82, "protocol": "sctp", "hostIP": "::"}),
            json!({"hostPort": 18083, "containerPort": 83, "protocol": "tcp", "hostIP": "fd00:91::1"}),
        ];
        // 20 more TCP ports: entry rules in runs of 15.
        mappings.extend((0..20).map(|i| tcp(20000 + i, 1000 + i)));
        let a1 = with_ports("ctr-a", &c1, Value::Array(mappings));
        let a2 = with_ports("ctr-b", &c2, json!([tcp(19090, 90)]));
        rt.add_list(&l, &a1).unwrap();
        rt.add_list(&l, &a2).unwrap();
        let mut snapshots = vec![portmap_rules(&save(&host, "v4")), portmap_rules(&save(&host, "v6"))];
        rt.del_list(&l, &a1).unwrap();
        snapshots.push(portmap_rules(&save(&host, "v4")));
        snapshots.push(portmap_rules(&save(&host, "v6")));
        rt.del_list(&l, &a2).unwrap();
        assert!(snapshots[0].iter().any(|l| l.starts_with("POSTROUTING[0] ")), "{}: {:#?}", suite.name, snapshots[0]);
        // TCP ports in mapping order, 15 per entry rule: 18080,18443,18083,20000…20011 | 20012…20019.
        assert!(snapshots[0].iter().any(|l| l.contains("--dports 20012,20013,20014,20015,20016,20017,20018,20019 ")));
        dumps.push((suite.name.to_string(), snapshots));
    });
    if let [(_, ours), (_, reference)] = dumps.as_slice() {
        for (i, what) in ["v4 after 2 ADDs", "v6 after 2 ADDs", "v4 after DEL", "v6 after DEL"].iter().enumerate() {
            assert_eq!(ours[i], reference[i], "{what}: ours vs reference");
        }
    }
}

#[test]
fn traffic_reaches_the_container_through_published_ports() {
    require_root!();
    each_suite(false, |suite| {
        let host = FakeHost::new().unwrap();
        let rt = Runtime::new(suite, &host.ns, host.dir.clone());
        let l = list(&host, "1.0.0", true, json!({}));
        let c = host.container().unwrap();
        let att = with_ports("ctr-t", &c, json!([tcp(18080, 80), udp(15353, 53)]));
        rt.add_list(&l, &att).unwrap();
        let _web = server(&c, false, 80, "web");
        let _dns = server(&c, true, 53, "dns");
        let out = outside(&host);
        let n = suite.name;

        // From the host to its bridge address: OUTPUT DNAT.
        assert_eq!(get(&host.ns, false, "10.91.0.1", 18080, None).as_deref(), Some("web 10.91.0.1"), "{n}");
        assert_eq!(get(&host.ns, true, "10.91.0.1", 15353, None).as_deref(), Some("dns 10.91.0.1"), "{n}");
        // From the host to 127.0.0.1: needs route_localnet on the bridge and the localhost masquerade.
        assert_eq!(
            host.ns.run("sysctl", &["-n", &format!("net.ipv4.conf.{BRIDGE}.route_localnet")]).unwrap().trim(),
            "1"
        );
        assert_eq!(get(&host.ns, false, "127.0.0.1", 18080, None).as_deref(), Some("web 10.91.0.1"), "{n}");
        assert_eq!(get(&host.ns, true, "127.0.0.1", 15353, None).as_deref(), Some("dns 10.91.0.1"), "{n}");
        // From another machine to the host's address: PREROUTING DNAT, source kept.
        assert_eq!(get(&out, false, "198.51.100.1", 18080, None).as_deref(), Some("web 198.51.100.2"), "{n}");
        assert_eq!(get(&out, true, "198.51.100.1", 15353, None).as_deref(), Some("dns 198.51.100.2"), "{n}");
        // Hairpin: the container reaches itself through the host, masqueraded to the bridge address.
        assert_eq!(get(&c, false, "198.51.100.1", 18080, None).as_deref(), Some("web 10.91.0.1"), "{n}");
        assert_eq!(get(&c, false, "10.91.0.1", 18080, None).as_deref(), Some("web 10.91.0.1"), "{n}");
        assert_eq!(get(&c, true, "10.91.0.1", 15353, None).as_deref(), Some("dns 10.91.0.1"), "{n}");
        // IPv6 to the bridge's IPv6 address.
        assert_eq!(get_eventually(&host.ns, false, "fd00:91::1", 18080).as_deref(), Some("web fd00:91::1"), "{n}");
        assert_eq!(get_eventually(&c, false, "fd00:91::1", 18080).as_deref(), Some("web fd00:91::1"), "{n}");

        rt.del_list(&l, &att).unwrap();
        assert_eq!(get(&host.ns, false, "10.91.0.1", 18080, None), None, "{n}: still forwarded after DEL");
    });
}

#[test]
fn del_of_one_container_leaves_the_other_working() {
    require_root!();
    each_suite(false, |suite| {
        let host = FakeHost::new().unwrap();
        let rt = Runtime::new(suite, &host.ns, host.dir.clone());
        let l = list(&host, "1.0.0", false, json!({}));
        let (c1, c2) = (host.container().unwrap(), host.container().unwrap());
        let a1 = with_ports("ctr-1", &c1, json!([tcp(18081, 80), udp(15301, 53)]));
        let a2 = with_ports("ctr-2", &c2, json!([tcp(18082, 80), udp(15302, 53)]));
        rt.add_list(&l, &a1).unwrap();
        rt.add_list(&l, &a2).unwrap();
        let _s1 = server(&c1, false, 80, "one");
        let _s2 = server(&c2, false, 80, "two");
        let _u2 = server(&c2, true, 53, "udp-two");
        assert_eq!(get(&host.ns, false, "127.0.0.1", 18081, None).as_deref(), Some("one 10.91.0.1"), "{}", suite.name);
        assert_eq!(get(&host.ns, false, "127.0.0.1", 18082, None).as_deref(), Some("two 10.91.0.1"), "{}", suite.name);
        rt.del_list(&l, &a1).unwrap();
        assert_eq!(get(&host.ns, false, "127.0.0.1", 18081, None), None, "{}", suite.name);
        assert_eq!(get(&host.ns, false, "127.0.0.1", 18082, None).as_deref(), Some("two 10.91.0.1"), "{}", suite.name);
        assert_eq!(
            get(&host.ns, true, "10.91.0.1", 15302, None).as_deref(),
            Some("udp-two 10.91.0.1"),
            "{}",
            suite.name
        );
        rt.check_list(&l, &a2).unwrap_or_else(|e| {
            // The reference's CHECK fails for every IPv4-only container (research 3.3).
            assert!(suite.is_reference(), "{}: {e}", suite.name);
        });
        rt.del_list(&l, &a2).unwrap();
        let v4 = save(&host, "v4");
        assert!(!v4.contains("CNI-DN-"), "{}: {v4}", suite.name);
        // The shared chains stay, as in the reference.
        assert!(v4.contains(":CNI-HOSTPORT-DNAT"), "{}", suite.name);
    });
}

#[test]
fn del_without_port_mappings_and_twice() {
    require_root!();
    each_suite(false, |suite| {
        let host = FakeHost::new().unwrap();
        let rt = Runtime::new(suite, &host.ns, host.dir.clone());
        let l = list(&host, "1.0.0", true, json!({}));
        let c = host.container().unwrap();
        let att = with_ports("ctr-d", &c, json!([tcp(18080, 80)]));
        rt.add_list(&l, &att).unwrap();
        // The runtime forgot the capability arguments on DEL.
        let forgetful = Attachment::new("ctr-d", &c);
        rt.del_list(&l, &forgetful).unwrap();
        let (v4, v6) = (save(&host, "v4"), save(&host, "v6"));
        if suite.is_reference() {
            // The reference does nothing without portMappings: the forward leaks.
            assert!(v4.contains("CNI-DN-"), "reference changed behaviour: {v4}");
        } else {
            assert!(!v4.contains("CNI-DN-") && !v6.contains("CNI-DN-"), "ours: {v4}\n{v6}");
        }
        // Repeated DEL (with and without mappings, without prevResult) succeeds.
        rt.del_list(&l, &att).unwrap();
        rt.del_list(&l, &att).unwrap();
        let conf = build_config(&l["plugins"][1], NET, "1.0.0", None, &Map::new());
        let out = rt.invoke("portmap", "DEL", &Attachment::new("ctr-d", &c), &conf).unwrap();
        assert!(out.ok(), "{}: {:?}", suite.name, out);
        assert!(!save(&host, "v4").contains("CNI-DN-"), "{}", suite.name);
    });
}

#[test]
fn check_verifies_this_containers_rules() {
    require_root!();
    each_suite(true, |suite| {
        let host = FakeHost::new().unwrap();
        let rt = Runtime::new(suite, &host.ns, host.dir.clone());
        for (dual, id) in [(false, "ctr-c4"), (true, "ctr-c6")] {
            let l = list(&host, "1.0.0", dual, json!({}));
            let c = host.container().unwrap();
            let att = with_ports(id, &c, json!([tcp(18080, 80), udp(15353, 53)]));
            rt.add_list(&l, &att).unwrap();
            rt.check_list(&l, &att).unwrap();
            let chain = host
                .ns
                .run("iptables", &["-t", "nat", "-S"])
                .unwrap()
                .lines()
                .find(|l| l.starts_with("-A CNI-DN-") && l.contains("--dport 15353 -j DNAT"))
                .map(|l| l.trim_start_matches("-A ").to_string())
                .unwrap();
            let mut del = vec!["-t", "nat", "-D"];
            del.extend(chain.split_whitespace());
            host.ns.run("iptables", &del).unwrap();
            let err = rt.check_list(&l, &att).unwrap_err().to_string();
            assert!(err.contains("--dport 15353 -j DNAT"), "{err}");
            rt.del_list(&l, &att).unwrap();
        }
    });
}

/// The host's conntrack entries for UDP to `port` (`/proc/net/nf_conntrack` of its namespace).
fn udp_conntrack(host: &FakeHost, port: u16) -> Vec<String> {
    let table = host.ns.run("cat", &["/proc/net/nf_conntrack"]).unwrap_or_default();
    table.lines().filter(|l| l.contains(" udp ") && l.contains(&format!("dport={port} "))).map(str::to_string).collect()
}

#[test]
fn stale_udp_conntrack_entries_are_flushed_on_add() {
    require_root!();
    each_suite(false, |suite| {
        let host = FakeHost::new().unwrap();
        let rt = Runtime::new(suite, &host.ns, host.dir.clone());
        let l = list(&host, "1.0.0", false, json!({}));
        let c = host.container().unwrap();
        let out = outside(&host);
        // The bridge's masquerade rules make the host track connections.
        let prev = rt.add_list(&bridge_only(&l), &Attachment::new("ctr-u", &c)).unwrap();
        let _dns = server(&c, true, 53, "dns");
        // A client sends to the port before it is published: nothing answers, and conntrack now
        // holds an un-NATed entry for this flow.
        assert_eq!(get(&out, true, "198.51.100.1", 15353, Some(40000)), None);
        let stale = udp_conntrack(&host, 15353);
        assert!(stale.iter().any(|e| !e.contains("10.91.0.2")), "no stale entry to flush: {stale:?}");
        let att = with_ports("ctr-u", &c, json!([udp(15353, 53)]));
        let added = portmap_alone(&rt, &l, "ADD", &att, Some(&prev));
        assert!(added.ok(), "{}: {added:?}", suite.name);
        // Same flow again: without the flush it would miss the DNAT rule for as long as it lasts.
        assert_eq!(
            get(&out, true, "198.51.100.1", 15353, Some(40000)).as_deref(),
            Some("dns 198.51.100.2"),
            "{}: {:?}",
            suite.name,
            udp_conntrack(&host, 15353)
        );
        assert!(portmap_alone(&rt, &l, "DEL", &att, Some(&prev)).ok());
        rt.del_list(&bridge_only(&l), &Attachment::new("ctr-u", &c)).unwrap();
    });
}

/// The bridge alone, as the first half of the chain, to feed portmap a prevResult by hand.
fn bridge_only(l: &Value) -> Value {
    json!({"cniVersion": l["cniVersion"], "name": NET, "plugins": [l["plugins"][0].clone()]})
}

/// Invokes portmap alone with `prev` as prevResult and `mappings` as capability argument.
fn portmap_alone(
    rt: &Runtime,
    l: &Value,
    command: &str,
    att: &Attachment,
    prev: Option<&Value>,
) -> conformance::Output {
    let version = l["cniVersion"].as_str().unwrap();
    let conf = build_config(&l["plugins"][1], NET, version, prev, &att.caps);
    rt.invoke("portmap", command, att, &conf).unwrap()
}

#[test]
fn result_passes_through_and_prev_result_is_required() {
    require_root!();
    each_suite(false, |suite| {
        let host = FakeHost::new().unwrap();
        let rt = Runtime::new(suite, &host.ns, host.dir.clone());
        for version in ["0.3.1", "0.4.0", "1.0.0"] {
            let l = list(&host, version, true, json!({}));
            let c = host.container().unwrap();
            let prev = rt.add_list(&bridge_only(&l), &Attachment::new("ctr-n", &c)).unwrap();
            for mappings in [json!([]), json!([tcp(18080, 80)])] {
                let att = with_ports("ctr-n", &c, mappings.clone());
                let out = portmap_alone(&rt, &l, "ADD", &att, Some(&prev));
                let mut result = out.json().unwrap();
                // v1.1.1's library prints an empty "dns": {} that the bridge's result lacks.
                if result["dns"] == json!({}) && prev.get("dns").is_none() {
                    result.as_object_mut().unwrap().remove("dns");
                }
                assert_eq!(result, prev, "{} {version} {mappings}", suite.name);
                assert_eq!(save(&host, "v4").contains("CNI-DN-"), mappings != json!([]), "{} {version}", suite.name);
                assert!(portmap_alone(&rt, &l, "DEL", &att, Some(&prev)).ok());
            }
            rt.del_list(&bridge_only(&l), &Attachment::new("ctr-n", &c)).unwrap();
        }
        let l = list(&host, "1.0.0", false, json!({}));
        let c = host.container().unwrap();
        let out = portmap_alone(&rt, &l, "ADD", &with_ports("ctr-x", &c, json!([tcp(1, 1)])), None);
        let (_, msg, _) = out.error().unwrap();
        assert_eq!(msg, "must be called as chained plugin", "{}", suite.name);
    });
}

#[test]
fn invalid_mappings_are_rejected_before_anything_changes() {
    require_root!();
    each_suite(true, |suite| {
        let host = FakeHost::new().unwrap();
        let rt = Runtime::new(suite, &host.ns, host.dir.clone());
        let l = list(&host, "1.0.0", false, json!({}));
        let c = host.container().unwrap();
        for (mapping, msg) in [
            (
                json!({"hostPort": 70000, "containerPort": 80, "protocol": "tcp"}),
                "failed to parse config: Invalid host port number: 70000",
            ),
            (tcp(8080, 0), "failed to parse config: Invalid container port number: 0"),
            (
                json!({"hostPort": 8080, "containerPort": 80, "protocol": "icmp"}),
                "failed to parse config: Invalid protocol \"icmp\" for host port 8080: must be tcp, udp or sctp",
            ),
            (
                json!({"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "1.2.3"}),
                "failed to parse config: Invalid host IP \"1.2.3\" for host port 8080",
            ),
        ] {
            let att = with_ports("ctr-bad", &c, json!([mapping]));
            let err = rt.add_list(&l, &att).unwrap_err();
            let failure = err.downcast_ref::<PluginFailure>().unwrap();
            assert_eq!(failure.plugin, "portmap");
            assert_eq!(failure.output.error().unwrap(), (7, msg.to_string(), String::new()));
            assert!(!save(&host, "v4").contains("CNI-HOSTPORT"), "rules after a rejected ADD");
            // The runtime's DEL after the failed ADD gets the same mappings and must succeed.
            rt.del_list(&l, &att).unwrap();
        }
        // Uppercase protocols are accepted (lowercased).
        let att = with_ports("ctr-up", &c, json!([{"hostPort": 8080, "containerPort": 80, "protocol": "TCP"}]));
        rt.add_list(&l, &att).unwrap();
        assert!(save(&host, "v4").contains("-p tcp -m tcp --dport 8080 -j DNAT"));
        rt.del_list(&l, &att).unwrap();
    });
}

#[test]
fn gc_removes_only_stale_attachments() {
    require_root!();
    each_suite(true, |suite| {
        let host = FakeHost::new().unwrap();
        let rt = Runtime::new(suite, &host.ns, host.dir.clone());
        let l = list(&host, "1.1.0", false, json!({}));
        let (c1, c2) = (host.container().unwrap(), host.container().unwrap());
        let (a1, a2) =
            (with_ports("ctr-g1", &c1, json!([tcp(18081, 80)])), with_ports("ctr-g2", &c2, json!([tcp(18082, 80)])));
        rt.add_list(&l, &a1).unwrap();
        rt.add_list(&l, &a2).unwrap();
        rt.status_list(&l).unwrap();
        // The runtime lost track of ctr-g1 (no cache entry, so no DEL): GC alone must clean it.
        std::fs::remove_file(host.dir.join(format!("results/{NET}-ctr-g1-eth0"))).unwrap();
        rt.gc_list(&l, std::slice::from_ref(&a2)).unwrap();
        let v4 = save(&host, "v4");
        assert!(!v4.contains("id: \\\"ctr-g1\\\""), "{v4}");
        assert!(v4.contains("id: \\\"ctr-g2\\\""), "{v4}");
        let _s = server(&c2, false, 80, "two");
        assert_eq!(get(&host.ns, false, "127.0.0.1", 18082, None).as_deref(), Some("two 10.91.0.1"));
        // GC with every attachment valid keeps everything.
        rt.gc_list(&l, std::slice::from_ref(&a2)).unwrap();
        assert!(save(&host, "v4").contains("id: \\\"ctr-g2\\\""));
        rt.del_list(&l, &a2).unwrap();
    });
}

#[test]
fn nftables_backend_layout_traffic_and_teardown() {
    require_root!();
    each_suite(true, |suite| {
        let host = FakeHost::new().unwrap();
        let rt = Runtime::new(suite, &host.ns, host.dir.clone());
        let l = list(&host, "1.1.0", true, json!({"backend": "nftables"}));
        let (c1, c2) = (host.container().unwrap(), host.container().unwrap());
        let a1 = with_ports("ctr-n1", &c1, json!([tcp(18080, 80), udp(15353, 53)]));
        let a2 = with_ports("ctr-n2", &c2, json!([tcp(18081, 80)]));
        rt.add_list(&l, &a1).unwrap();
        rt.add_list(&l, &a2).unwrap();
        let table = host.ns.run("nft", &["list", "table", "ip", "cni_hostport"]).unwrap();
        for want in [
            "comment \"CNI portmap plugin\"",
            "tcp dport 18080 dnat to 10.91.0.2:80 comment \"ctr-n1\"",
            "udp dport 15353 dnat to 10.91.0.2:53 comment \"ctr-n1\"",
            "tcp dport 18081 dnat to 10.91.0.3:80 comment \"ctr-n2\"",
            "chain hostip_hostports {",
            "jump hostip_hostports\n\t\tjump hostports\n",
            "type nat hook prerouting priority dstnat; policy accept;\n\t\tfib daddr type local jump hostports_all",
            "type nat hook output priority -100; policy accept;\n\t\tfib daddr type local jump hostports_all",
            "ip saddr 10.91.0.2 ip daddr 10.91.0.2 masquerade comment \"ctr-n1\"",
            "ip saddr 127.0.0.1 ip daddr 10.91.0.2 masquerade comment \"ctr-n1\"",
        ] {
            assert!(table.contains(want), "missing {want:?} in\n{table}");
        }
        let table6 = host.ns.run("nft", &["list", "table", "ip6", "cni_hostport"]).unwrap();
        assert!(table6.contains("tcp dport 18080 dnat to [fd00:91::2]:80 comment \"ctr-n1\""), "{table6}");
        assert!(!save(&host, "v4").contains("CNI-HOSTPORT"), "iptables used with backend nftables");
        rt.check_list(&l, &a1).unwrap();
        rt.status_list(&l).unwrap();

        let _web = server(&c1, false, 80, "web");
        let _dns = server(&c1, true, 53, "dns");
        let out = outside(&host);
        assert_eq!(get(&host.ns, false, "10.91.0.1", 18080, None).as_deref(), Some("web 10.91.0.1"));
        assert_eq!(get(&host.ns, false, "127.0.0.1", 18080, None).as_deref(), Some("web 10.91.0.1"));
        assert_eq!(get(&host.ns, true, "127.0.0.1", 15353, None).as_deref(), Some("dns 10.91.0.1"));
        assert_eq!(get(&out, false, "198.51.100.1", 18080, None).as_deref(), Some("web 198.51.100.2"));
        assert_eq!(get(&c1, false, "198.51.100.1", 18080, None).as_deref(), Some("web 10.91.0.1"));
        assert_eq!(get_eventually(&host.ns, false, "fd00:91::1", 18080).as_deref(), Some("web fd00:91::1"));

        rt.del_list(&l, &a1).unwrap();
        rt.del_list(&l, &a1).unwrap();
        let table = host.ns.run("nft", &["list", "table", "ip", "cni_hostport"]).unwrap();
        assert!(!table.contains("ctr-n1") && table.contains("ctr-n2"), "{table}");
        assert_eq!(get(&host.ns, false, "10.91.0.1", 18080, None), None);
        rt.del_list(&l, &a2).unwrap();
        let all = host.ns.run("nft", &["list", "ruleset"]).unwrap();
        assert!(!all.contains("comment \"ctr-"), "{all}");
    });
}

#[test]
fn concurrent_adds_on_a_fresh_host() {
    require_root!();
    each_suite(true, |suite| {
        for backend in ["iptables", "nftables"] {
            let host = FakeHost::new().unwrap();
            let l = list(&host, "1.0.0", false, json!({"backend": backend}));
            let containers: Vec<Netns> = (0..10).map(|_| host.container().unwrap()).collect();
            let attachments: Vec<Attachment> = containers
                .iter()
                .enumerate()
                .map(|(i, c)| with_ports(&format!("ctr-{i}"), c, json!([tcp(18000 + i as u16, 80)])))
                .collect();
            let each = |verb: &str| {
                std::thread::scope(|s| {
                    for att in &attachments {
                        let (l, host) = (&l, &host);
                        s.spawn(move || {
                            let rt = Runtime::new(suite, &host.ns, host.dir.clone());
                            match verb {
                                "ADD" => rt.add_list(l, att).map(drop),
                                _ => rt.del_list(l, att),
                            }
                            .unwrap_or_else(|e| panic!("{backend} {verb} {}: {e}", att.container_id));
                        });
                    }
                });
            };
            each("ADD");
            if backend == "iptables" {
                // Every racer planned the shared chains; exactly one copy of each shared rule exists.
                let v4 = save(&host, "v4");
                for (rule, n) in [
                    ("-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT", 1),
                    ("-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT", 1),
                    ("-j CNI-HOSTPORT-MASQ", 1),
                    ("-j MARK --set-xmark 0x2000/0x2000", 1),
                    ("-A CNI-HOSTPORT-DNAT ", 10),
                ] {
                    assert_eq!(v4.matches(rule).count(), n, "{rule}:\n{v4}");
                }
            } else {
                let table = host.ns.run("nft", &["list", "table", "ip", "cni_hostport"]).unwrap();
                assert_eq!(table.matches("jump hostports_all").count(), 2, "{table}");
                assert_eq!(table.matches(" dnat to ").count(), 10, "{table}");
            }
            let _web = server(&containers[7], false, 80, "seven");
            assert_eq!(get(&host.ns, false, "127.0.0.1", 18007, None).as_deref(), Some("seven 10.91.0.1"), "{backend}");
            each("DEL");
            assert!(!save(&host, "v4").contains("CNI-DN-"), "{backend}");
            let rules = host.ns.run("nft", &["list", "ruleset"]).unwrap();
            assert!(!rules.contains("comment \"ctr-"), "{backend}: {rules}");
        }
    });
}

// ---- timing ----------------------------------------------------------------------------------

/// A fake host with a bridge holding 10.92.0.1/16, so portmap can be timed alone with synthetic
/// prevResults (it needs no veth, only a route to the container address).
fn timing_host() -> FakeHost {
    let host = FakeHost::new().unwrap();
    host.ns.run("ip", &["link", "add", BRIDGE, "type", "bridge"]).unwrap();
    host.ns.run("ip", &["addr", "add", "10.92.0.1/16", "dev", BRIDGE]).unwrap();
    host.ns.run("ip", &["link", "set", BRIDGE, "up"]).unwrap();
    host
}

/// Runs portmap `command` for container number `n` (address 10.92.x.y) with `ports` TCP mappings
/// starting at `first_port`; returns the wall time in ms.
fn time_portmap(suite: &Suite, host: &FakeHost, command: &str, n: u32, first_port: u32, ports: u32) -> f64 {
    let ip = format!("10.92.{}.{}/16", 1 + n / 250, 2 + n % 250);
    let mappings: Vec<Value> = (0..ports).map(|i| tcp((first_port + i) as u16, 80)).collect();
    let prev = json!({"cniVersion": "1.0.0",
        "interfaces": [{"name": BRIDGE}, {"name": "veth0"}, {"name": "eth0", "sandbox": "/run/netns/none"}],
        "ips": [{"interface": 2, "address": ip, "gateway": "10.92.0.1"}]});
    let mut caps = Map::new();
    caps.insert("portMappings".into(), Value::Array(mappings));
    let plugin = json!({"type": "portmap", "capabilities": {"portMappings": true}});
    let conf = build_config(&plugin, NET, "1.0.0", Some(&prev), &caps);
    let id = format!("bench-{n}");
    let path = suite.dir.display().to_string();
    let env = [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", id.as_str()),
        ("CNI_NETNS", "/run/netns/none"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", path.as_str()),
    ];
    let start = Instant::now();
    let out = exec(&suite.plugin("portmap"), &env, conf.to_string().as_bytes(), Some(&host.ns)).unwrap();
    let ms = start.elapsed().as_secs_f64() * 1e3;
    assert!(out.ok(), "{} {command}: {out:?}", suite.name);
    ms
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[test]
#[ignore = "benchmark: run alone, with release binaries (see the module docs)"]
fn timing_against_the_reference() {
    require_root!();
    let all = suites();
    let hosts: Vec<FakeHost> = all.iter().map(|_| timing_host()).collect();
    // Warm up: the first ADD on a host creates the shared chains.
    for (suite, host) in all.iter().zip(&hosts) {
        time_portmap(suite, host, "ADD", 0, 30000, 1);
        time_portmap(suite, host, "DEL", 0, 30000, 1);
    }
    for (ports, reps) in [(10u32, 9usize), (100, 5)] {
        let mut add: Vec<Vec<f64>> = vec![Vec::new(); all.len()];
        let mut del: Vec<Vec<f64>> = vec![Vec::new(); all.len()];
        for rep in 0..reps {
            for (i, (suite, host)) in all.iter().zip(&hosts).enumerate() {
                let n = 1 + rep as u32;
                add[i].push(time_portmap(suite, host, "ADD", n, 30000, ports));
                del[i].push(time_portmap(suite, host, "DEL", n, 30000, ports));
            }
        }
        for (i, suite) in all.iter().enumerate() {
            eprintln!(
                "portmap {ports:>3} ports  {:<9}  ADD median {:>8.2} ms  DEL median {:>7.2} ms",
                suite.name,
                median(add[i].clone()),
                median(del[i].clone())
            );
        }
        if all.len() == 2 {
            let ratio = median(add[1].clone()) / median(add[0].clone());
            eprintln!("portmap {ports:>3} ports  ADD reference/ours = {ratio:.1}x");
            assert!(ratio > if ports == 10 { 5.0 } else { 20.0 }, "ours is not clearly faster: {ratio:.1}x");
        }
    }
    // Growth: 100 containers with 10 ports each accumulate on one host (ours; the reference too
    // with CNI_TEST_PORTMAP_REFERENCE_GROWTH=1, ~40 s).
    let growth_suites: Vec<usize> = (0..all.len())
        .filter(|i| !all[*i].is_reference() || std::env::var("CNI_TEST_PORTMAP_REFERENCE_GROWTH").is_ok())
        .collect();
    for i in growth_suites {
        let times: Vec<f64> =
            (0..100u32).map(|n| time_portmap(&all[i], &hosts[i], "ADD", 100 + n, 31000 + n * 10, 10)).collect();
        let (first, last) = (median(times[..10].to_vec()), median(times[90..].to_vec()));
        eprintln!(
            "portmap growth {:<9}  ADD median containers 1-10 {first:.2} ms, 91-100 {last:.2} ms (+{:.3} ms per container)",
            all[i].name,
            (last - first) / 90.0
        );
        if !all[i].is_reference() {
            assert!(last < first * 2.0 + 2.0, "ADD grows with the table: {first:.2} -> {last:.2} ms");
        }
    }
}

/// Dual-stack list with both nftables backends (bridge masquerade and portmap).
fn nft_list(host: &FakeHost) -> Value {
    let mut l = list(host, "1.1.0", true, json!({"backend": "nftables"}));
    l["plugins"][0]["ipMasqBackend"] = json!("nftables");
    l
}

/// Both `cni_hostport` tables as the kernel holds them: nft's text and the netlink expressions with
/// comment userdata, rule handles removed.
fn hostport_tables(host: &FakeHost) -> String {
    let mut out = String::new();
    for family in ["ip", "ip6"] {
        out.push_str(&host.ns.run("nft", &["list", "table", family, "cni_hostport"]).unwrap_or_default());
        let netlink = host.ns.run("nft", &["--debug=netlink", "list", "table", family, "cni_hostport"]);
        for line in netlink.unwrap_or_default().lines() {
            out.push_str(line.trim_end_matches(|c: char| c.is_ascii_digit() || c == ' '));
            out.push('\n');
        }
    }
    out
}

#[test]
fn nftables_tables_are_the_newest_references() {
    require_root!();
    let Some(head) = conformance::reference_head() else { return };
    let mut seen: Vec<Vec<String>> = Vec::new();
    for suite in [conformance::ours(), head] {
        let host = FakeHost::new().unwrap();
        let rt = Runtime::new(&suite, &host.ns, host.dir.clone());
        let l = nft_list(&host);
        let (c1, c2) = (host.container().unwrap(), host.container().unwrap());
        let a1 = with_ports(
            "ctr-h1",
            &c1,
            json!([tcp(18080, 80), udp(15353, 53), {"hostPort": 18443, "containerPort": 443, "protocol": "tcp",
                    "hostIP": "10.91.0.1"}]),
        );
        let a2 = with_ports(
            "ctr-h2",
            &c2,
            json!([tcp(18081, 80), {"hostPort": 19000, "containerPort": 9000,
            "protocol": "sctp"}]),
        );
        rt.add_list(&l, &a1).unwrap();
        rt.add_list(&l, &a2).unwrap();
        let mut states = vec![hostport_tables(&host)];
        rt.check_list(&l, &a2).unwrap();
        rt.del_list(&l, &a1).unwrap();
        states.push(hostport_tables(&host));
        rt.del_list(&l, &a2).unwrap();
        states.push(hostport_tables(&host));
        assert!(!states[2].contains("comment \"ctr-"), "{}: {}", suite.name, states[2]);
        seen.push(states);
    }
    for (i, when) in ["after two ADDs", "after one DEL", "after both DELs"].iter().enumerate() {
        assert_eq!(seen[0][i], seen[1][i], "{when}: ours, then the newest reference");
    }
}

#[test]
fn a_host_moves_between_the_newest_references_nftables_and_ours() {
    require_root!();
    let Some(head) = conformance::reference_head() else { return };
    let host = FakeHost::new().unwrap();
    let ours = Runtime::new(&conformance::ours(), &host.ns, host.dir.clone());
    let theirs = Runtime::new(&head, &host.ns, host.dir.clone());
    let l = nft_list(&host);
    let cs: Vec<Netns> = (0..3).map(|_| host.container().unwrap()).collect();
    let atts: Vec<Attachment> = cs
        .iter()
        .enumerate()
        .map(|(i, c)| with_ports(&format!("ctr-m{i}"), c, json!([tcp(18090 + i as u16, 80)])))
        .collect();
    let rules = |host: &FakeHost| -> Vec<String> {
        let mut out = Vec::new();
        for family in ["ip", "ip6"] {
            let text = host.ns.run("nft", &["list", "table", family, "cni_hostport"]).unwrap_or_default();
            out.extend(text.lines().filter(|l| l.contains("comment \"ctr-")).map(|l| format!("{family} {}", l.trim())));
        }
        out
    };
    theirs.add_list(&l, &atts[0]).unwrap();
    theirs.add_list(&l, &atts[1]).unwrap();
    // Per container: v4 dnat + hairpin + localhost masquerade, v6 dnat + hairpin masquerade.
    assert_eq!(rules(&host).len(), 10, "{:?}", rules(&host));
    ours.add_list(&l, &atts[2]).unwrap();
    assert_eq!(rules(&host).len(), 15, "{:?}", rules(&host));
    ours.check_list(&l, &atts[0]).unwrap();
    theirs.check_list(&l, &atts[2]).unwrap();
    let _web = server(&cs[2], false, 80, "web");
    assert_eq!(get(&host.ns, false, "127.0.0.1", 18092, None).as_deref(), Some("web 10.91.0.1"));
    ours.del_list(&l, &atts[0]).unwrap();
    theirs.del_list(&l, &atts[2]).unwrap();
    let left = rules(&host);
    assert_eq!(left.len(), 5, "{left:?}");
    assert!(left.iter().all(|r| r.contains("\"ctr-m1\"")), "{left:?}");
    for family in ["ip", "ip6"] {
        let table = host.ns.run("nft", &["list", "table", family, "cni_hostport"]).unwrap();
        assert_eq!(table.matches("jump hostports_all").count(), 2, "{table}");
        assert_eq!(table.matches("jump hostports\n").count(), 1, "{table}");
    }
    ours.del_list(&l, &atts[1]).unwrap();
    assert!(rules(&host).is_empty(), "{:?}", rules(&host));
}

#[test]
fn nftables_backends_run_no_program_but_ipam() {
    require_root!();
    if !conformance::trace::have_strace() {
        conformance::skip("strace is not installed");
        return;
    }
    // The plain paths (CNI_FIREWALL_FAST_PATHS=0) read the nat table through iptables-save.
    if std::env::var("CNI_FIREWALL_FAST_PATHS")
        .is_ok_and(|v| ["0", "false", "off", "no"].contains(&v.trim().to_ascii_lowercase().as_str()))
    {
        conformance::skip("fast paths are off: the plain paths run iptables-save by design");
        return;
    }
    let host = FakeHost::new().unwrap();
    let suite = conformance::trace::traced_suite(&host.dir.join("traced"), &["bridge", "portmap"]).unwrap();
    let rt = Runtime::new(&suite, &host.ns, host.dir.clone());
    let l = nft_list(&host);
    let (c1, c2) = (host.container().unwrap(), host.container().unwrap());
    let (a1, a2) = (
        with_ports("ctr-t1", &c1, json!([tcp(18100, 80), udp(15300, 53)])),
        with_ports("ctr-t2", &c2, json!([tcp(18101, 80)])),
    );
    rt.add_list(&l, &a1).unwrap();
    rt.add_list(&l, &a2).unwrap();
    rt.check_list(&l, &a1).unwrap();
    std::fs::remove_file(host.dir.join(format!("results/{NET}-ctr-t2-eth0"))).unwrap();
    rt.gc_list(&l, std::slice::from_ref(&a1)).unwrap();
    rt.del_list(&l, &a1).unwrap();
    let execs = conformance::trace::traced_execs(&suite.dir).unwrap();
    let real = conformance::ours();
    let allowed = [
        real.plugin("bridge").display().to_string(),
        real.plugin("portmap").display().to_string(),
        suite.plugin("host-local").display().to_string(),
    ];
    let unexpected: Vec<&String> = execs.iter().filter(|e| !allowed.contains(e)).collect();
    assert!(unexpected.is_empty(), "programs run besides the plugins and IPAM: {unexpected:?}");
    // ADD, ADD, CHECK, GC, DEL: five runs of each plugin.
    assert_eq!(execs.iter().filter(|e| **e == allowed[1]).count(), 5, "{execs:?}");
}
