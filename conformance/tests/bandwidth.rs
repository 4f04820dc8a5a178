//! `bandwidth` chained after `bridge` + `host-local` (as k3s and Calico chain it) and after a plain
//! veth, driven with top-level limits and with the `bandwidth` capability the CRI runtimes fill
//! from pod annotations; checked against both references' kernel state (`tc -j` qdiscs, classes,
//! filters and actions in the fake host), real traffic through a 2 Mbit/s limit in both
//! directions, and what DEL, CHECK, GC and STATUS do.
//!
//! Deliberate differences from the references, asserted per suite below: a retried ADD and an
//! ADD that finds a leaked ifb succeed (the references fail with EEXIST); ADD without limits and
//! without a prevResult prints an empty result (the references crash); configuration errors
//! carry code 7 (theirs 999); CHECK also fails when the ingress redirect is gone; our ifb carries
//! the alias `cni-bandwidth <network> <containerID>` (normalised away when comparing), which GC
//! uses; GC and STATUS exist only in ours.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use conformance::{exec, require_root, suites_with_head, Attachment, FakeHost, Netns, Runtime, Suite};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

const NET: &str = "bwnet";
const BRIDGE: &str = "cnibw0";
/// 2 Mbit/s with a 100 kbit bucket, in both directions.
const RATE: u64 = 2_000_000;
const BURST: u64 = 100_000;

/// bridge + host-local + bandwidth with `extra` keys (and the `bandwidth` capability declared).
fn list(host: &FakeHost, version: &str, extra: Value) -> Value {
    let bridge = json!({"type": "bridge", "bridge": BRIDGE, "isGateway": true, "ipMasq": true, "hairpinMode": true,
        "ipam": {"type": "host-local", "dataDir": host.dir.join("ipam").display().to_string(),
                 "ranges": [[{"subnet": "10.93.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}});
    let mut bw = json!({"type": "bandwidth", "capabilities": {"bandwidth": true}});
    for (k, v) in extra.as_object().unwrap() {
        bw[k] = v.clone();
    }
    json!({"cniVersion": version, "name": NET, "plugins": [bridge, bw]})
}

fn both_ways() -> Value {
    json!({"ingressRate": RATE, "ingressBurst": BURST, "egressRate": RATE, "egressBurst": BURST})
}

/// The ifb name the reference gives (`bwp` + sha512(network + container ID), 15 characters).
/// Computed independently of the plugins (Python's hashlib).
fn ifb(network: &str, id: &str) -> String {
    let code = format!("import hashlib;print(('bwp'+hashlib.sha512(b'{network}{id}').hexdigest())[:15])");
    conformance::run("python3", &["-c", &code]).unwrap().trim().to_string()
}

fn links(ns: &Netns) -> Vec<Value> {
    ns.ip_json(&["-d", "link", "show"]).unwrap().as_array().cloned().unwrap_or_default()
}

fn link_names(ns: &Netns) -> Vec<String> {
    links(ns).iter().filter_map(|l| l["ifname"].as_str().map(str::to_string)).collect()
}

fn tc_json(ns: &Netns, args: &[&str]) -> Value {
    let out = ns.run("tc", args).unwrap();
    if out.trim().is_empty() {
        return json!([]);
    }
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("tc {args:?}: {e}: {out:?}"))
}

/// Every traffic-control object in the host namespace, per link, with what must differ between
/// two runs replaced by stable names: each veth's random name by the container it serves (in
/// the order given), and from the ifb's link attributes only what the reference sets (kind,
/// MTU, flags, queue length; not the MAC, the index or our alias).
fn tc_state(host: &FakeHost, veths: &[(&str, &str)]) -> Value {
    let rename = |text: String| veths.iter().fold(text, |t, (name, role)| t.replace(name, role));
    let mut state = serde_json::Map::new();
    for link in links(&host.ns) {
        let name = link["ifname"].as_str().unwrap().to_string();
        let mut entry = json!({
            "qdiscs": tc_json(&host.ns, &["-j", "-d", "qdisc", "show", "dev", &name]),
            // tc prints classes of a tbf (its inner 1:1) as text even with -j.
            "classes": host.ns.run("tc", &["-d", "class", "show", "dev", &name]).unwrap(),
            "ingress_filters": tc_json(&host.ns, &["-j", "-d", "filter", "show", "dev", &name, "parent", "ffff:"]),
            "root_filters": tc_json(&host.ns, &["-j", "-d", "filter", "show", "dev", &name, "root"]),
        });
        if link["linkinfo"]["info_kind"] == "ifb" {
            entry["link"] = json!({"mtu": link["mtu"], "flags": link["flags"], "txqlen": link.get("txqlen"),
                "operstate": link["operstate"], "numtxqueues": link["num_tx_queues"]});
        }
        state.insert(rename(name), serde_json::from_str(&rename(entry.to_string())).unwrap());
    }
    Value::Object(state)
}

/// The host-side interface of a result (the one without a sandbox that is not the bridge or
/// an ifb).
fn host_veth(result: &Value) -> String {
    result["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i.get("sandbox").is_none_or(|s| s.as_str() == Some("")))
        .map(|i| i["name"].as_str().unwrap().to_string())
        .find(|n| n != BRIDGE && !n.starts_with("bwp"))
        .unwrap()
}

fn with_bandwidth(id: &str, c: &Netns, bw: Value) -> Attachment {
    let mut att = Attachment::new(id, c);
    att.caps.insert("bandwidth".into(), bw);
    att
}

#[test]
fn kernel_state_matches_the_references() {
    require_root!();
    let mut states: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for suite in suites_with_head("bandwidth") {
        let host = FakeHost::new().unwrap();
        let rt = Runtime::new(&suite, &host.ns, host.dir.clone());
        let (c1, c2, c3) = (host.container().unwrap(), host.container().unwrap(), host.container().unwrap());
        // Top-level limits in both directions; the capability only (ingress, and a rate that
        // needs 64 bits in bytes); top-level winning over the capability (egress only).
        let top = list(&host, "1.0.0", both_ways());
        let cap = list(&host, "1.0.0", json!({}));
        let a1 = Attachment::new("ctr-1", &c1);
        let a2 = with_bandwidth("ctr-2", &c2, json!({"ingressRate": 40_000_000_000u64, "ingressBurst": 800_000}));
        let mixed = list(&host, "1.0.0", json!({"egressRate": 1_000_000, "egressBurst": 64_000}));
        let a3 = with_bandwidth("ctr-3", &c3, json!({"ingressRate": RATE, "ingressBurst": BURST}));
        let r1 = rt.add_list(&top, &a1).unwrap();
        let r2 = rt.add_list(&cap, &a2).unwrap();
        let r3 = rt.add_list(&mixed, &a3).unwrap();
        // What containerd sends for a pod annotated with 2M both ways: a burst of 2³²−1 bits,
        // whose bucket in ticks overflows 32 bits (the reference wraps it; so must we).
        let c4 = host.container().unwrap();
        let huge = u64::from(u32::MAX);
        let a4 = with_bandwidth(
            "ctr-4",
            &c4,
            json!({"ingressRate": RATE, "ingressBurst": huge, "egressRate": RATE, "egressBurst": huge}),
        );
        let r4 = rt.add_list(&cap, &a4).unwrap();
        let (v1, v2, v3, v4) = (host_veth(&r1), host_veth(&r2), host_veth(&r3), host_veth(&r4));
        let roles =
            [(v1.as_str(), "VETH-1"), (v2.as_str(), "VETH-2"), (v3.as_str(), "VETH-3"), (v4.as_str(), "VETH-4")];
        let n = suite.name;
        // The ifb is appended to the result with its MAC, no sandbox.
        let last = r1["interfaces"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["name"], ifb(NET, "ctr-1"), "{n}: {r1}");
        assert!(last["mac"].as_str().is_some_and(|m| m.len() == 17) && last.get("sandbox").is_none(), "{n}: {r1}");
        assert!(!r2["interfaces"].to_string().contains("bwp"), "{n}: ingress only needs no ifb: {r2}");
        let after_add = tc_state(&host, &roles);
        rt.check_list(&top, &a1).unwrap();
        rt.check_list(&cap, &a2).unwrap();
        rt.check_list(&mixed, &a3).unwrap();
        rt.del_list(&top, &a1).unwrap();
        let after_del = tc_state(&host, &roles);
        assert!(!link_names(&host.ns).contains(&ifb(NET, "ctr-1")), "{n}: DEL leaves the ifb");
        rt.del_list(&cap, &a2).unwrap();
        rt.del_list(&mixed, &a3).unwrap();
        rt.check_list(&cap, &a4).unwrap();
        rt.del_list(&cap, &a4).unwrap();
        assert!(!link_names(&host.ns).iter().any(|l| l.starts_with("bwp")), "{n}: {:?}", link_names(&host.ns));
        // The numbers the reference computes (rate in bytes, tc's "burst" is the bucket).
        let veth1 = &after_add["VETH-1"]["qdiscs"][0];
        assert_eq!((veth1["kind"].as_str(), veth1["options"]["rate"].as_u64()), (Some("tbf"), Some(250_000)), "{n}");
        assert_eq!(veth1["options"]["burst"], "12500b/1", "{n}");
        states.push((n, vec![after_add, after_del]));
    }
    let (ours, references) = states.split_first().unwrap();
    assert!(!references.is_empty(), "no reference ships bandwidth");
    for (name, theirs) in references {
        assert_eq!(ours.1[0], theirs[0], "after ADD: ours vs {name}");
        assert_eq!(ours.1[1], theirs[1], "after DEL of one: ours vs {name}");
    }
}

/// A receiver that reads until EOF and answers with the byte count, killed when dropped.
struct Sink(Child);

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sink(ns: &Netns, port: u16) -> Sink {
    let code = format!(
        "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         s.bind(('0.0.0.0',{port}))\ns.listen(4)\nprint('ready',flush=True)\n\
         while True:\n c,_=s.accept()\n n=0\n while True:\n  d=c.recv(65536)\n  if not d: break\n  n+=len(d)\n \
         c.sendall(str(n).encode())\n c.close()\n"
    );
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns.name(), "python3", "-c", &code])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    Sink(child)
}

/// Sends `bytes` from `ns` to `addr:port` and waits until the receiver has counted them all;
/// the seconds it took.
fn transfer(ns: &Netns, addr: &str, port: u16, bytes: usize) -> f64 {
    let code = format!(
        "import socket,time\nc=socket.create_connection(('{addr}',{port}),timeout=30)\nt=time.monotonic()\n\
         c.sendall(b'x'*{bytes})\nc.shutdown(socket.SHUT_WR)\nn=int(c.recv(100))\n\
         assert n=={bytes},n\nprint(time.monotonic()-t)\n"
    );
    ns.run("python3", &["-c", &code]).unwrap().trim().parse().unwrap()
}

#[test]
fn traffic_through_a_2_mbit_limit_takes_the_time_it_implies_both_ways() {
    require_root!();
    // 400 kB at 250 kB/s, less the 12.5 kB bucket that leaves at once: ~1.55 s each way.
    const BYTES: usize = 400_000;
    let expected = (BYTES as f64 - BURST as f64 / 8.0) / (RATE as f64 / 8.0);
    for suite in suites_with_head("bandwidth") {
        let host = FakeHost::new().unwrap();
        let rt = Runtime::new(&suite, &host.ns, host.dir.clone());
        let c = host.container().unwrap();
        let att = Attachment::new("ctr-t", &c);
        let n = suite.name;
        // Unshaped first, so the test shows the limit is what slows the transfer down.
        let plain = list(&host, "1.0.0", json!({}));
        let result = rt.add_list(&plain, &att).unwrap();
        let ip = result["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_string();
        let (_to_container, _to_host) = (sink(&c, 5001), sink(&host.ns, 5002));
        let fast = transfer(&host.ns, &ip, 5001, BYTES);
        assert!(fast < expected / 3.0, "{n}: unshaped transfer took {fast:.2}s");
        rt.del_list(&plain, &att).unwrap();

        let shaped = list(&host, "1.0.0", both_ways());
        let result = rt.add_list(&shaped, &att).unwrap();
        let ip = result["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_string();
        let ingress = transfer(&host.ns, &ip, 5001, BYTES);
        let egress = transfer(&c, "10.93.0.1", 5002, BYTES);
        eprintln!("{n}: {BYTES} B through {RATE} bit/s: to the container {ingress:.2}s, from it {egress:.2}s, expected {expected:.2}s");
        for (what, took) in [("to the container", ingress), ("from the container", egress)] {
            assert!(
                took > expected * 0.85 && took < expected * 1.6,
                "{n}: {what} took {took:.2}s, expected {expected:.2}s"
            );
        }
        rt.del_list(&shaped, &att).unwrap();
    }
}

#[test]
fn retried_add_and_a_leaked_ifb_are_repaired() {
    require_root!();
    for suite in suites_with_head("bandwidth") {
        let host = FakeHost::new().unwrap();
        let rt = Runtime::new(&suite, &host.ns, host.dir.clone());
        let c = host.container().unwrap();
        let att = Attachment::new("ctr-r", &c);
        let l = list(&host, "1.0.0", both_ways());
        let result = rt.add_list(&l, &att).unwrap();
        let veth = host_veth(&result);
        let roles = [(veth.as_str(), "VETH")];
        let once = tc_state(&host, &roles);
        let n = suite.name;
        // The runtime runs bandwidth again with the same prevResult (its first answer was lost).
        let mut prev = result.clone();
        prev["interfaces"].as_array_mut().unwrap().retain(|i| !i["name"].as_str().unwrap().starts_with("bwp"));
        let mut conf = json!({"cniVersion": "1.0.0", "name": NET, "type": "bandwidth", "prevResult": prev});
        for (k, v) in both_ways().as_object().unwrap() {
            conf[k] = v.clone();
        }
        let again = invoke(&suite, &host, "ADD", "ctr-r", &c.path(), &conf);
        if !suite.is_ours() {
            let (_, msg, _) = again.error().unwrap();
            assert!(msg.contains("file exists"), "{n}: {msg}");
            rt.del_list(&l, &att).unwrap();
            continue;
        }
        assert_eq!(again.json().unwrap()["interfaces"], result["interfaces"], "{n}: {again:?}");
        assert_eq!(tc_state(&host, &roles), once, "{n}: a retried ADD changed the kernel state");
        rt.check_list(&l, &att).unwrap();
        // A crashed ADD left the ifb behind (down, wrong MTU, no qdisc) and nothing else.
        rt.del_list(&l, &att).unwrap();
        let name = ifb(NET, "ctr-r");
        host.ns.run("ip", &["link", "add", &name, "mtu", "1400", "type", "ifb"]).unwrap();
        let result = rt.add_list(&l, &att).unwrap();
        let veth = host_veth(&result);
        assert_eq!(tc_state(&host, &[(veth.as_str(), "VETH")]), once, "{n}: the leaked ifb was not repaired");
        rt.check_list(&l, &att).unwrap();
        rt.del_list(&l, &att).unwrap();
        assert!(!link_names(&host.ns).contains(&name));
    }
}

/// One bandwidth invocation with a hand-written configuration.
fn invoke(suite: &Suite, host: &FakeHost, command: &str, id: &str, netns: &str, conf: &Value) -> conformance::Output {
    let path = suite.dir.display().to_string();
    let env = [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", id),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", path.as_str()),
    ];
    exec(&suite.plugin("bandwidth"), &env, conf.to_string().as_bytes(), Some(&host.ns)).unwrap()
}

#[test]
fn del_needs_neither_netns_nor_prev_result_and_is_idempotent() {
    require_root!();
    for suite in suites_with_head("bandwidth") {
        let host = FakeHost::new().unwrap();
        let rt = Runtime::new(&suite, &host.ns, host.dir.clone());
        let mut c = host.container().unwrap();
        let att = Attachment::new("ctr-d", &c);
        let l = list(&host, "1.0.0", both_ways());
        rt.add_list(&l, &att).unwrap();
        let name = ifb(NET, "ctr-d");
        assert!(link_names(&host.ns).contains(&name));
        c.delete();
        let conf = json!({"cniVersion": "1.0.0", "name": NET, "type": "bandwidth"});
        for _ in 0..2 {
            let out = invoke(&suite, &host, "DEL", "ctr-d", "", &conf);
            assert!(out.ok(), "{}: {out:?}", suite.name);
            assert!(!link_names(&host.ns).contains(&name), "{}", suite.name);
        }
        // Ours deletes even when the limits in the configuration are invalid (nothing in them
        // is needed to find the ifb); the references refuse.
        rt.add_list(&l, &Attachment::new("ctr-d2", &host.container().unwrap())).unwrap();
        let bad = json!({"cniVersion": "1.0.0", "name": NET, "type": "bandwidth", "ingressRate": RATE});
        let out = invoke(&suite, &host, "DEL", "ctr-d2", "", &bad);
        assert_eq!(out.ok(), suite.is_ours(), "{}: {out:?}", suite.name);
        assert_eq!(link_names(&host.ns).contains(&ifb(NET, "ctr-d2")), !suite.is_ours(), "{}", suite.name);
    }
}

#[test]
fn a_failed_add_leaves_nothing_behind() {
    require_root!();
    for suite in suites_with_head("bandwidth") {
        let host = FakeHost::new().unwrap();
        let c = host.container().unwrap();
        let prev = plain_veth(&host, &c);
        let before = tc_state(&host, &[]);
        // Something that is not an ifb holds the name: egress setup fails after ingress is done.
        let name = ifb(NET, "ctr-f");
        host.ns.run("ip", &["link", "add", &name, "type", "bridge"]).unwrap();
        let mut conf = json!({"cniVersion": "1.0.0", "name": NET, "type": "bandwidth", "prevResult": prev});
        for (k, v) in both_ways().as_object().unwrap() {
            conf[k] = v.clone();
        }
        let out = invoke(&suite, &host, "ADD", "ctr-f", &c.path(), &conf);
        let (_, msg, _) = out.error().unwrap();
        assert!(msg.contains("adding link"), "{}: {msg}", suite.name);
        host.ns.run("ip", &["link", "del", &name]).unwrap();
        // The references leave the veth's tbf behind.
        assert_eq!(tc_state(&host, &[]) == before, suite.is_ours(), "{}", suite.name);
    }
}

#[test]
fn check_compares_the_kernel_with_the_config() {
    require_root!();
    for suite in suites_with_head("bandwidth") {
        let host = FakeHost::new().unwrap();
        let rt = Runtime::new(&suite, &host.ns, host.dir.clone());
        let c = host.container().unwrap();
        let att = Attachment::new("ctr-k", &c);
        let l = list(&host, "1.0.0", both_ways());
        let result = rt.add_list(&l, &att).unwrap();
        let veth = host_veth(&result);
        let n = suite.name;
        rt.check_list(&l, &att).unwrap();
        // Someone changed the container's ingress limit: every suite notices.
        host.ns
            .run(
                "tc",
                &[
                    "qdisc", "change", "dev", &veth, "root", "handle", "1:", "tbf", "rate", "1mbit", "burst", "12500",
                    "latency", "25ms",
                ],
            )
            .unwrap();
        let failure = format!("{:#}", rt.check_list(&l, &att).unwrap_err());
        assert!(failure.contains("Rate doesn't match"), "{n}: {failure}");
        rt.del_list(&l, &att).unwrap();
        // The redirect to the ifb is gone: only ours notices (the references look at the tbfs).
        let veth = host_veth(&rt.add_list(&l, &att).unwrap());
        host.ns.run("tc", &["filter", "del", "dev", &veth, "parent", "ffff:"]).unwrap();
        let checked = rt.check_list(&l, &att);
        if suite.is_ours() {
            assert!(format!("{:#}", checked.unwrap_err()).contains("redirects"), "{n}");
        } else {
            checked.unwrap();
        }
        rt.del_list(&l, &att).unwrap();
    }
}

#[test]
fn invalid_limits_are_rejected_before_anything_changes() {
    require_root!();
    for suite in suites_with_head("bandwidth") {
        let host = FakeHost::new().unwrap();
        let rt = Runtime::new(&suite, &host.ns, host.dir.clone());
        let c = host.container().unwrap();
        let n = suite.name;
        let plain = list(&host, "1.0.0", json!({}));
        let att = Attachment::new("ctr-v", &c);
        let prev = rt.add_list(&plain, &att).unwrap();
        let before = tc_state(&host, &[]);
        for (bad, field) in [
            (json!({"ingressRate": RATE}), "ingressBurst"),
            (json!({"egressBurst": BURST}), "egressRate"),
            (json!({"egressRate": RATE, "egressBurst": 40_000_000_000u64}), "4GB"),
        ] {
            let mut conf = json!({"cniVersion": "1.0.0", "name": NET, "type": "bandwidth", "prevResult": prev});
            for (k, v) in bad.as_object().unwrap() {
                conf[k] = v.clone();
            }
            let out = invoke(&suite, &host, "ADD", "ctr-v", &c.path(), &conf);
            let (code, msg, _) = out.error().unwrap();
            if suite.is_ours() {
                assert_eq!(code, 7, "{n}: {msg}");
                assert!(msg.contains(field), "{n}: {msg} should name {field}");
            }
            assert_eq!(tc_state(&host, &[]), before, "{n}: {bad} changed the kernel state");
        }
        // A negative rate is not a number the reference's decoder takes either.
        let conf = json!({"cniVersion": "1.0.0", "name": NET, "type": "bandwidth", "prevResult": prev,
            "ingressRate": -1, "ingressBurst": BURST});
        let out = invoke(&suite, &host, "ADD", "ctr-v", &c.path(), &conf);
        let (_, msg, _) = out.error().unwrap();
        if suite.is_ours() {
            assert!(msg.contains("ingressRate"), "{n}: {msg}");
        }
        rt.del_list(&plain, &att).unwrap();
    }
}

#[test]
fn without_limits_the_result_passes_through() {
    require_root!();
    for suite in suites_with_head("bandwidth") {
        let host = FakeHost::new().unwrap();
        let rt = Runtime::new(&suite, &host.ns, host.dir.clone());
        let c = host.container().unwrap();
        let plain = list(&host, "1.0.0", json!({}));
        let att = Attachment::new("ctr-p", &c);
        let bridge_only = json!({"cniVersion": "1.0.0", "name": NET, "plugins": [plain["plugins"][0].clone()]});
        let prev = rt.add_list(&bridge_only, &att).unwrap();
        let n = suite.name;
        for zero in [json!({}), json!({"ingressRate": 0, "ingressBurst": 0})] {
            let mut conf = json!({"cniVersion": "1.0.0", "name": NET, "type": "bandwidth", "prevResult": prev});
            for (k, v) in zero.as_object().unwrap() {
                conf[k] = v.clone();
            }
            let out = invoke(&suite, &host, "ADD", "ctr-p", &c.path(), &conf);
            assert_eq!(out.json().unwrap()["interfaces"], prev["interfaces"], "{n}: {out:?}");
        }
        // No limits and no prevResult: the references crash (Go nil dereference, exit 2).
        let conf = json!({"cniVersion": "1.0.0", "name": NET, "type": "bandwidth"});
        let out = invoke(&suite, &host, "ADD", "ctr-p", &c.path(), &conf);
        if suite.is_ours() {
            assert_eq!(out.json().unwrap(), json!({"cniVersion": "1.0.0"}), "{n}: {out:?}");
        } else {
            assert_eq!(out.code, 2, "{n}: {out:?}");
        }
        // Limits but no prevResult.
        let conf = json!({"cniVersion": "1.0.0", "name": NET, "type": "bandwidth", "ingressRate": RATE, "ingressBurst": BURST});
        let (_, msg, _) = invoke(&suite, &host, "ADD", "ctr-p", &c.path(), &conf).error().unwrap();
        assert!(msg.contains("must be called as chained plugin"), "{n}: {msg}");
        rt.del_list(&plain, &att).unwrap();
    }
}

#[test]
fn every_spec_version_the_references_accept() {
    require_root!();
    for suite in suites_with_head("bandwidth") {
        let mut versions = vec!["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
        if !suite.is_reference() {
            versions.push("1.1.0");
        }
        let host = FakeHost::new().unwrap();
        let rt = Runtime::new(&suite, &host.ns, host.dir.clone());
        for (i, version) in versions.iter().enumerate() {
            let c = host.container().unwrap();
            let id = format!("ctr-v{i}");
            let att = Attachment::new(&id, &c);
            let l = list(&host, version, both_ways());
            let result = rt.add_list(&l, &att).unwrap();
            assert_eq!(result["cniVersion"], *version, "{}: {result}", suite.name);
            assert!(result["interfaces"].to_string().contains(&ifb(NET, &id)), "{} {version}: {result}", suite.name);
            if *version != "0.3.0" && *version != "0.3.1" {
                rt.check_list(&l, &att).unwrap();
            }
            rt.del_list(&l, &att).unwrap();
            assert!(!link_names(&host.ns).contains(&ifb(NET, &id)), "{} {version}", suite.name);
        }
        // 0.2.0 is refused by every suite.
        let c = host.container().unwrap();
        let conf = json!({"cniVersion": "0.2.0", "name": NET, "type": "bandwidth"});
        let (code, _, _) = invoke(&suite, &host, "ADD", "ctr-old", &c.path(), &conf).error().unwrap();
        assert_eq!(code, 1, "{}", suite.name);
    }
}

#[test]
fn gc_removes_only_this_networks_stale_ifbs() {
    require_root!();
    let suite = conformance::ours();
    let host = FakeHost::new().unwrap();
    let rt = Runtime::new(&suite, &host.ns, host.dir.clone());
    let l = list(&host, "1.1.0", both_ways());
    let (c1, c2, c3) = (host.container().unwrap(), host.container().unwrap(), host.container().unwrap());
    let (a1, a2) = (Attachment::new("ctr-g1", &c1), Attachment::new("ctr-g2", &c2));
    rt.add_list(&l, &a1).unwrap();
    rt.add_list(&l, &a2).unwrap();
    // Another network on the same host, and an ifb the reference made (no alias: unattributable).
    let mut other = l.clone();
    other["name"] = json!("othernet");
    other["plugins"][0]["bridge"] = json!("cnibw1");
    other["plugins"][0]["ipam"]["ranges"] = json!([[{"subnet": "10.94.0.0/24"}]]);
    rt.add_list(&other, &Attachment::new("ctr-g3", &c3)).unwrap();
    let foreign = ifb(NET, "ctr-gone");
    host.ns.run("ip", &["link", "add", &foreign, "type", "ifb"]).unwrap();
    rt.status_list(&l).unwrap();
    // The runtime lost track of ctr-g1 (no cache entry, so no DEL): GC alone must clean it.
    std::fs::remove_file(host.dir.join(format!("results/{NET}-ctr-g1-eth0"))).unwrap();
    rt.gc_list(&l, std::slice::from_ref(&a2)).unwrap();
    let names = link_names(&host.ns);
    assert!(!names.contains(&ifb(NET, "ctr-g1")), "{names:?}");
    assert!(names.contains(&ifb(NET, "ctr-g2")), "{names:?}");
    assert!(names.contains(&ifb("othernet", "ctr-g3")), "{names:?}");
    assert!(names.contains(&foreign), "{names:?}");
    rt.check_list(&l, &a2).unwrap();
    rt.del_list(&l, &a2).unwrap();
    rt.del_list(&other, &Attachment::new("ctr-g3", &c3)).unwrap();
}

/// A veth pair made by hand (as `ptp` or any other veth plugin leaves it) and the prevResult
/// that describes it.
fn plain_veth(host: &FakeHost, c: &Netns) -> Value {
    let veth = conformance::unique("v");
    let veth = &veth[veth.len().saturating_sub(15)..];
    host.ns
        .run("ip", &["link", "add", veth, "mtu", "1400", "type", "veth", "peer", "name", "eth0", "netns", c.name()])
        .unwrap();
    host.ns.run("ip", &["link", "set", veth, "up"]).unwrap();
    c.run("ip", &["link", "set", "eth0", "up"]).unwrap();
    json!({"cniVersion": "1.0.0", "interfaces": [{"name": veth}, {"name": "eth0", "sandbox": c.path()}], "ips": []})
}

#[test]
fn works_behind_a_plain_veth_and_behind_ptp() {
    require_root!();
    for suite in suites_with_head("bandwidth") {
        let host = FakeHost::new().unwrap();
        let c = host.container().unwrap();
        let n = suite.name;
        let prev = plain_veth(&host, &c);
        let mut conf = json!({"cniVersion": "1.0.0", "name": NET, "type": "bandwidth", "prevResult": prev});
        for (k, v) in both_ways().as_object().unwrap() {
            conf[k] = v.clone();
        }
        let out = invoke(&suite, &host, "ADD", "ctr-pv", &c.path(), &conf);
        let result = out.json().unwrap();
        let name = ifb(NET, "ctr-pv");
        assert_eq!(result["interfaces"][2]["name"], name, "{n}: {out:?}");
        // The ifb takes the host veth's MTU.
        let link = host.ns.ip_json(&["link", "show", &name]).unwrap();
        assert_eq!(link[0]["mtu"], 1400, "{n}");
        assert!(invoke(&suite, &host, "CHECK", "ctr-pv", &c.path(), &conf).ok(), "{n}");
        // Not a veth (macvlan, a bridge…): refused, nothing created.
        let c3 = host.container().unwrap();
        c3.run("ip", &["link", "add", "eth0", "type", "bridge"]).unwrap();
        let before = tc_state(&host, &[]);
        let not_veth = json!({"cniVersion": "1.0.0", "name": "othernet", "type": "bandwidth",
            "ingressRate": RATE, "ingressBurst": BURST, "egressRate": RATE, "egressBurst": BURST,
            "prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": c3.path()}], "ips": []}});
        let (_, msg, _) = invoke(&suite, &host, "ADD", "ctr-nv", &c3.path(), &not_veth).error().unwrap();
        assert!(msg.contains("has no veth peer"), "{n}: {msg}");
        assert_eq!(tc_state(&host, &[]), before, "{n}");
        assert!(invoke(&suite, &host, "DEL", "ctr-pv", &c.path(), &conf).ok(), "{n}");
        assert!(!link_names(&host.ns).contains(&name), "{n}");

        if suite.has("ptp") && suite.has("host-local") {
            let rt = Runtime::new(&suite, &host.ns, host.dir.clone());
            let c2 = host.container().unwrap();
            let att = Attachment::new("ctr-ptp", &c2);
            let ptp = json!({"cniVersion": "1.0.0", "name": NET, "plugins": [
                {"type": "ptp", "ipMasq": false, "ipam": {"type": "host-local", "dataDir": host.dir.join("ipam").display().to_string(),
                    "ranges": [[{"subnet": "10.95.0.0/24"}]]}},
                {"type": "bandwidth", "ingressRate": RATE, "ingressBurst": BURST, "egressRate": RATE, "egressBurst": BURST}]});
            let result = rt.add_list(&ptp, &att).unwrap();
            assert!(result["interfaces"].to_string().contains(&ifb(NET, "ctr-ptp")), "{n}: {result}");
            rt.check_list(&ptp, &att).unwrap();
            rt.del_list(&ptp, &att).unwrap();
            assert!(!link_names(&host.ns).contains(&ifb(NET, "ctr-ptp")), "{n}");
        }
    }
}

#[test]
fn status_reports_ready() {
    require_root!();
    let suite = conformance::ours();
    let host = FakeHost::new().unwrap();
    let conf = json!({"cniVersion": "1.1.0", "name": NET, "type": "bandwidth"});
    let out = invoke(&suite, &host, "STATUS", "", "", &conf);
    assert!(out.ok(), "{out:?}");
}
