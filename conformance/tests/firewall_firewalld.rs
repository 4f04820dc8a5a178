//! `firewall` with its firewalld backend, against a real firewalld (Debian's package) on a private
//! D-Bus inside each test's fake host (`conformance::firewalld`), never the machine's bus. Each
//! case runs against ours and, where they ship `firewall`, the reference v1.1.1 and the newest
//! reference builds; the plugins find the private bus through `DBUS_SYSTEM_BUS_ADDRESS`, as
//! libdbus and godbus do.
//!
//! Deliberate differences, asserted per suite below:
//! - CHECK believes `querySource`: a source removed behind the plugin's back fails CHECK, naming
//!   the address and the zone (the references ignore the answer and pass);
//! - a `firewalldZone` firewalld could never hold is refused with code 7 before anything changes
//!   (the references send it to firewalld and fail there);
//! - with firewalld stopped, DEL succeeds (its runtime sources went with it), CHECK and STATUS
//!   say firewalld is not running (the references' CHECK fails with a bus error, their DEL passes);
//! - a firewalld that holds its name but answers nothing fails ADD after `CNI_FIREWALL_TIMEOUT`
//!   (the references wait for godbus, which has no deadline: they are not run in that case);
//! - DEL without `prevResult` removes the attachment's sources (the references remove nothing).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use conformance::firewalld::{self, Firewalld};
use conformance::{exec, require_root, skip, suites_with_head, FakeHost, Netns, Output, Suite};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const VERSION: &str = "1.0.0";

/// A fake host with a container namespace and a firewalld of its own.
struct Host {
    fw: Firewalld,
    ctr: Netns,
    host: FakeHost,
}

impl Host {
    /// `None` (after a visible skip) when firewalld is not installed.
    fn new() -> Option<Host> {
        if !firewalld::available() {
            skip("firewalld is not installed (scripts/dev installs it)");
            return None;
        }
        let host = FakeHost::new().unwrap();
        let ctr = host.container().unwrap();
        let fw = Firewalld::start(&host).unwrap();
        Some(Host { fw, ctr, host })
    }

    fn store(&self) -> String {
        self.host.dir.join("fw").display().to_string()
    }

    /// A firewall configuration with `extra` keys and `prevResult` when given.
    fn conf(&self, extra: Value, prev: Option<Value>) -> Value {
        let mut c = json!({"cniVersion": VERSION, "name": "fwdnet", "type": "firewall", "dataDir": self.store()});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        if let Some(p) = prev {
            c["prevResult"] = p;
        }
        c
    }

    /// Runs the suite's firewall in the fake host with the private bus, plus `env`.
    fn call_env(&self, suite: &Suite, command: &str, cid: &str, conf: &Value, env: &[(&str, &str)]) -> Output {
        let path = suite.dir.display().to_string();
        let netns = self.ctr.path();
        let (bus_var, bus) = self.fw.env();
        let mut all = vec![
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", cid),
            ("CNI_NETNS", netns.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", path.as_str()),
            (bus_var, bus),
        ];
        all.extend_from_slice(env);
        exec(&suite.plugin("firewall"), &all, conf.to_string().as_bytes(), Some(&self.host.ns)).unwrap()
    }

    fn call(&self, suite: &Suite, command: &str, cid: &str, conf: &Value) -> Output {
        self.call_env(suite, command, cid, conf, &[])
    }

    fn ok(&self, suite: &Suite, command: &str, cid: &str, conf: &Value) -> Output {
        let out = self.call(suite, command, cid, conf);
        assert!(out.ok(), "{} {command} {cid}: {} {}\n{}", suite.name, out.stdout, out.stderr, self.fw.logs());
        out
    }

    fn sources(&self, zone: &str) -> Vec<String> {
        let mut v = self.fw.sources(zone).unwrap();
        v.sort();
        v
    }

    /// Every zone's sources: what a refused call must leave as it was.
    fn all_sources(&self) -> Vec<(String, Vec<String>)> {
        let zones = self.fw.all_sources().unwrap();
        assert!(zones.iter().any(|(z, s)| z == "trusted" && !s.is_empty()), "{zones:?}");
        zones
    }

    /// The filter table's CNI chains in both families (the iptables backend's footprint).
    fn cni_chains(&self) -> String {
        let mut out = String::new();
        for tool in ["iptables-save", "ip6tables-save"] {
            let dump = self.host.ns.run(tool, &["-t", "filter"]).unwrap();
            out.extend(dump.lines().filter(|l| l.contains("CNI-")).map(|l| format!("{l}\n")));
        }
        out
    }
}

/// A `prevResult` with address `n` of 10.88.0.0/16 and, with `v6`, of fd00::/64.
fn prev(n: u8, v6: bool) -> Value {
    let mut ips = vec![json!({"address": format!("10.88.0.{n}/16"), "interface": 1, "gateway": "10.88.0.1"})];
    if v6 {
        ips.push(json!({"address": format!("fd00::{n}/64"), "interface": 1}));
    }
    json!({"cniVersion": VERSION,
           "interfaces": [{"name": "cnifwd0"}, {"name": "eth0", "sandbox": "/run/netns/x"}],
           "ips": ips})
}

#[test]
fn add_check_del_keep_the_zone_s_sources_like_the_reference() {
    require_root!();
    for suite in suites_with_head("firewall") {
        let Some(h) = Host::new() else { return };
        let fwd = json!({"backend": "firewalld"});
        let c1 = h.conf(fwd.clone(), Some(prev(5, true)));
        h.ok(&suite, "ADD", "c1", &c1);
        assert_eq!(h.sources("trusted"), ["10.88.0.5/32", "fd00::5/128"], "{}", suite.name);
        // A retried ADD and a second attachment.
        h.ok(&suite, "ADD", "c1", &c1);
        h.ok(&suite, "ADD", "c2", &h.conf(fwd.clone(), Some(prev(6, false))));
        assert_eq!(h.sources("trusted"), ["10.88.0.5/32", "10.88.0.6/32", "fd00::5/128"], "{}", suite.name);
        assert_eq!(h.cni_chains(), "", "{}: the firewalld backend writes no iptables rules", suite.name);
        h.ok(&suite, "CHECK", "c1", &c1);

        // Removed behind the plugin's back: ours fails CHECK, naming the address and the zone.
        h.fw.cmd(&["--zone=trusted", "--remove-source=fd00::5/128"]).unwrap();
        let out = h.call(&suite, "CHECK", "c1", &c1);
        if suite.is_ours() {
            let (code, msg, _) = out.error().unwrap();
            assert_eq!(code, 999, "{msg}");
            assert!(msg.contains("fd00::5/128") && msg.contains("trusted"), "{msg}");
        } else {
            assert!(out.ok(), "{}: the reference ignores querySource's answer: {}", suite.name, out.stdout);
        }
        // ADD puts it back.
        h.ok(&suite, "ADD", "c1", &c1);
        h.ok(&suite, "CHECK", "c1", &c1);

        h.ok(&suite, "DEL", "c1", &c1);
        assert_eq!(h.sources("trusted"), ["10.88.0.6/32"], "{}", suite.name);
        h.ok(&suite, "DEL", "c1", &c1);
        // Ours removes c2's source without prevResult, from its store; the references cannot.
        h.ok(&suite, "DEL", "c2", &h.conf(fwd.clone(), None));
        if suite.is_ours() {
            assert_eq!(h.sources("trusted"), Vec::<String>::new());
        } else {
            assert_eq!(h.sources("trusted"), ["10.88.0.6/32"], "{}", suite.name);
        }
    }
}

/// The container reaches a TCP server on the fake host only while its address is a source of
/// `trusted`: the default zone (`public`) rejects it.
#[test]
fn traffic_from_the_container_follows_the_zone() {
    require_root!();
    for suite in suites_with_head("firewall") {
        let Some(h) = Host::new() else { return };
        let ns = &h.host.ns;
        ns.run("ip", &["link", "add", "fwdh0", "type", "veth", "peer", "name", "eth0", "netns", h.ctr.name()]).unwrap();
        ns.run("ip", &["addr", "add", "10.88.0.1/16", "dev", "fwdh0"]).unwrap();
        ns.run("ip", &["link", "set", "fwdh0", "up"]).unwrap();
        h.ctr.run("ip", &["addr", "add", "10.88.0.7/16", "dev", "eth0"]).unwrap();
        h.ctr.run("ip", &["link", "set", "eth0", "up"]).unwrap();
        let _server = ns.tcp_server(8080, "hello").unwrap();
        let reach = || h.ctr.tcp_get("10.88.0.1", 8080);
        assert_eq!(reach(), None, "{}: public zone lets the container in before ADD", suite.name);
        let conf = h.conf(json!({"backend": "firewalld"}), Some(prev(7, false)));
        h.ok(&suite, "ADD", "c1", &conf);
        assert_eq!(reach().as_deref(), Some("hello"), "{}: trusted zone after ADD", suite.name);
        h.ok(&suite, "DEL", "c1", &conf);
        assert_eq!(reach(), None, "{}: the container still gets in after DEL", suite.name);
    }
}

#[test]
fn a_custom_zone_gets_the_sources() {
    require_root!();
    for suite in suites_with_head("firewall") {
        let Some(h) = Host::new() else { return };
        let conf = h.conf(json!({"backend": "firewalld", "firewalldZone": "internal"}), Some(prev(8, true)));
        h.ok(&suite, "ADD", "c1", &conf);
        assert_eq!(h.sources("internal"), ["10.88.0.8/32", "fd00::8/128"], "{}", suite.name);
        assert_eq!(h.sources("trusted"), Vec::<String>::new(), "{}", suite.name);
        h.ok(&suite, "CHECK", "c1", &conf);
        h.ok(&suite, "DEL", "c1", &conf);
        assert_eq!(h.sources("internal"), Vec::<String>::new(), "{}", suite.name);
    }
}

#[test]
fn a_bad_zone_is_refused_and_changes_nothing() {
    require_root!();
    let ours = &suites_with_head("firewall")[0];
    let Some(h) = Host::new() else { return };
    // One attachment in place, so "nothing changed" has something to keep.
    h.ok(ours, "ADD", "c0", &h.conf(json!({"backend": "firewalld"}), Some(prev(9, false))));
    let before = h.all_sources();
    for zone in ["bad zone", "/trusted", "a/b/c", "an-eighteen-charsx", "zone;reload", "trüsted"] {
        let out = h.call(
            ours,
            "ADD",
            "c1",
            &h.conf(json!({"backend": "firewalld", "firewalldZone": zone}), Some(prev(10, false))),
        );
        let (code, msg, _) = out.error().unwrap();
        assert_eq!(code, 7, "{zone:?}: {msg}");
        assert!(msg.contains("firewalldZone"), "{zone:?}: {msg}");
        assert_eq!(h.all_sources(), before, "{zone:?}");
    }
    // A well-formed zone firewalld does not have: its error names the zone, nothing is left.
    let out = h.call(
        ours,
        "ADD",
        "c1",
        &h.conf(json!({"backend": "firewalld", "firewalldZone": "nosuchzone"}), Some(prev(10, true))),
    );
    let (_, msg, _) = out.error().unwrap();
    assert!(msg.contains("nosuchzone") && msg.contains("10.88.0.10/32"), "{msg}");
    assert_eq!(h.all_sources(), before);
    // The failed ADD left no record: DEL without prevResult has nothing of c1's to remove.
    h.ok(ours, "DEL", "c1", &h.conf(json!({"backend": "firewalld"}), None));
    assert_eq!(h.all_sources(), before);
}

/// A source already in another zone: ADD fails naming the conflict and rolls back the sources it
/// added before it.
#[test]
fn a_failed_add_rolls_back_its_sources() {
    require_root!();
    let ours = &suites_with_head("firewall")[0];
    let Some(h) = Host::new() else { return };
    h.fw.cmd(&["--zone=internal", "--add-source=fd00::11/128"]).unwrap();
    let out = h.call(ours, "ADD", "c1", &h.conf(json!({"backend": "firewalld"}), Some(prev(11, true))));
    let (_, msg, _) = out.error().unwrap();
    assert!(msg.contains("fd00::11/128") && msg.contains("ZONE_CONFLICT"), "{msg}");
    assert_eq!(h.sources("trusted"), Vec::<String>::new(), "10.88.0.11/32 was not rolled back");
    assert_eq!(h.sources("internal"), ["fd00::11/128"]);
}

#[test]
fn firewalld_stopped_or_hung_gives_a_clear_error_in_time() {
    require_root!();
    for suite in suites_with_head("firewall") {
        let Some(mut h) = Host::new() else { return };
        let conf = h.conf(json!({"backend": "firewalld"}), Some(prev(12, false)));
        h.ok(&suite, "ADD", "c1", &conf);

        // Hung: it keeps its name and answers nothing. Only ours has a deadline.
        if suite.is_ours() {
            h.fw.freeze_firewalld().unwrap();
            let t0 = Instant::now();
            let out = h.call_env(&suite, "CHECK", "c1", &conf, &[("CNI_FIREWALL_TIMEOUT", "2")]);
            let took = t0.elapsed();
            h.fw.thaw_firewalld().unwrap();
            let (_, msg, _) = out.error().unwrap();
            assert!(msg.contains("no answer within") && msg.contains("CNI_FIREWALL_TIMEOUT"), "{msg}");
            assert!(took < Duration::from_secs(6), "CHECK took {took:?} with a 2 s deadline");
        }

        h.fw.stop_firewalld();
        let t0 = Instant::now();
        let check = h.call(&suite, "CHECK", "c1", &conf);
        assert!(!check.ok(), "{}: CHECK passed with firewalld stopped", suite.name);
        if suite.is_ours() {
            let (_, msg, _) = check.error().unwrap();
            assert!(msg.contains("firewalld is not running"), "{msg}");
            let status = h.call(
                &suite,
                "STATUS",
                "",
                &json!({"cniVersion": "1.1.0", "name": "fwdnet",
                "type": "firewall", "backend": "firewalld", "dataDir": h.store()}),
            );
            let (code, msg, _) = status.error().unwrap();
            assert_eq!(code, 50, "{msg}");
            assert!(msg.contains("firewalld is not running"), "{msg}");
        }
        // DEL passes: the sources went with firewalld's runtime state.
        h.ok(&suite, "DEL", "c1", &conf);
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());

        // Restarted, it serves the next ADD.
        h.fw.start_firewalld().unwrap();
        assert_eq!(h.sources("trusted"), Vec::<String>::new());
        h.ok(&suite, "ADD", "c2", &h.conf(json!({"backend": "firewalld"}), Some(prev(13, false))));
        assert_eq!(h.sources("trusted"), ["10.88.0.13/32"], "{}", suite.name);
    }
}

/// A configuration that names no backend uses firewalld while it owns its name, else iptables,
/// as the reference decides.
#[test]
fn no_backend_means_firewalld_while_it_runs() {
    require_root!();
    for suite in suites_with_head("firewall") {
        let Some(mut h) = Host::new() else { return };
        let conf = h.conf(json!({}), Some(prev(14, false)));
        h.ok(&suite, "ADD", "c1", &conf);
        assert_eq!(h.sources("trusted"), ["10.88.0.14/32"], "{}", suite.name);
        assert_eq!(h.cni_chains(), "", "{}", suite.name);
        h.ok(&suite, "DEL", "c1", &conf);
        assert_eq!(h.sources("trusted"), Vec::<String>::new(), "{}", suite.name);

        h.fw.stop_firewalld();
        let conf = h.conf(json!({}), Some(prev(15, false)));
        h.ok(&suite, "ADD", "c2", &conf);
        assert!(
            h.cni_chains().contains("-A CNI-FORWARD -s 10.88.0.15/32 -j ACCEPT"),
            "{}: {}",
            suite.name,
            h.cni_chains()
        );
        h.ok(&suite, "DEL", "c2", &conf);
        assert!(!h.cni_chains().contains("10.88.0.15/32"), "{}", suite.name);
    }
}

/// `ingressPolicy` with the firewalld backend: the sources go to the zone and the isolation rules
/// are raw iptables, the same as the reference writes (v1.1.1 comments the shared rules
/// `(ingressPolicy: same-bridge)` where the newest reference and ours write
/// `(ingressPolicy: same-bridge|isolated)`).
#[test]
fn isolation_stays_raw_iptables_as_in_the_reference() {
    require_root!();
    let mut tables: Vec<(String, String)> = Vec::new();
    for suite in suites_with_head("firewall") {
        let Some(h) = Host::new() else { return };
        let conf = h.conf(json!({"backend": "firewalld", "ingressPolicy": "same-bridge"}), Some(prev(16, true)));
        h.ok(&suite, "ADD", "c1", &conf);
        assert_eq!(h.sources("trusted"), ["10.88.0.16/32", "fd00::16/128"], "{}", suite.name);
        let chains = h.cni_chains();
        assert!(chains.contains("-A CNI-ISOLATION-STAGE-2 -o cnifwd0"), "{}: {chains}", suite.name);
        assert!(!chains.contains("CNI-FORWARD"), "{}: {chains}", suite.name);
        let chains = if suite.is_reference() {
            chains
        } else {
            chains.replace("(ingressPolicy: same-bridge|isolated)", "(ingressPolicy: same-bridge)")
        };
        tables.push((suite.name.to_string(), chains));
        h.ok(&suite, "CHECK", "c1", &conf);
        // An isolation rule removed behind the plugin's back: ours fails CHECK (the references
        // ask firewalld only), and ADD puts it back.
        h.host.ns.run("iptables", &["-F", "CNI-ISOLATION-STAGE-2"]).unwrap();
        let out = h.call(&suite, "CHECK", "c1", &conf);
        if suite.is_ours() {
            let (_, msg, _) = out.error().unwrap();
            assert!(msg.contains("CNI-ISOLATION-STAGE-2"), "{msg}");
        } else {
            assert!(out.ok(), "{}: {}", suite.name, out.stdout);
        }
        h.ok(&suite, "ADD", "c1", &conf);
        h.ok(&suite, "CHECK", "c1", &conf);
        h.ok(&suite, "DEL", "c1", &conf);
        assert_eq!(h.sources("trusted"), Vec::<String>::new(), "{}", suite.name);
    }
    for (name, table) in &tables[1..] {
        assert_eq!(&tables[0].1, table, "ours vs {name}");
    }
}

/// A bus that accepts connections and answers nothing (its daemon frozen) holds ours up for the
/// probe's 2 s at most: with no backend named it falls back to iptables; with `firewalld` named
/// it fails after `CNI_FIREWALL_TIMEOUT`. (The references would wait forever: not run here.)
#[test]
fn a_hung_bus_does_not_hang_the_plugin() {
    require_root!();
    let ours = &suites_with_head("firewall")[0];
    let Some(h) = Host::new() else { return };
    h.fw.freeze_bus().unwrap();
    let t0 = Instant::now();
    let auto = h.call(ours, "ADD", "c1", &h.conf(json!({}), Some(prev(17, false))));
    let auto_took = t0.elapsed();
    let t0 = Instant::now();
    let named = h.call_env(
        ours,
        "ADD",
        "c2",
        &h.conf(json!({"backend": "firewalld"}), Some(prev(18, false))),
        &[("CNI_FIREWALL_TIMEOUT", "1.5")],
    );
    let named_took = t0.elapsed();
    h.fw.thaw_bus().unwrap();
    assert!(auto.ok(), "{} {}", auto.stdout, auto.stderr);
    assert!(h.cni_chains().contains("-A CNI-FORWARD -s 10.88.0.17/32 -j ACCEPT"), "{}", h.cni_chains());
    assert!(auto_took < Duration::from_secs(6), "ADD took {auto_took:?} on a hung bus");
    let (_, msg, _) = named.error().unwrap();
    assert!(msg.contains("no answer within"), "{msg}");
    assert!(named_took < Duration::from_secs(5), "ADD took {named_took:?} with a 1.5 s deadline");
    assert_eq!(h.sources("trusted"), Vec::<String>::new());
    h.ok(ours, "DEL", "c1", &h.conf(json!({}), Some(prev(17, false))));
}

/// Ours only (the references have no GC; their STATUS does not ask firewalld): GC removes the
/// sources of attachments the runtime no longer lists, keeps a recycled address another live
/// attachment holds, and STATUS passes while firewalld runs.
#[test]
fn gc_removes_stale_sources_and_status_asks_firewalld() {
    require_root!();
    let ours = &suites_with_head("firewall")[0];
    let Some(h) = Host::new() else { return };
    let v = |prev: Option<Value>| {
        let mut c = h.conf(json!({"backend": "firewalld"}), prev);
        c["cniVersion"] = "1.1.0".into();
        if let Some(p) = c.get_mut("prevResult") {
            p["cniVersion"] = "1.1.0".into();
        }
        c
    };
    h.ok(ours, "STATUS", "", &v(None));
    h.ok(ours, "ADD", "g1", &v(Some(prev(20, true))));
    h.ok(ours, "ADD", "g2", &v(Some(prev(21, false))));
    // g3 holds g1's IPv4 address again (recycled): GC of g1 must keep that source.
    h.ok(ours, "ADD", "g3", &v(Some(prev(20, false))));
    let mut gc = v(None);
    gc["cni.dev/valid-attachments"] =
        json!([{"containerID": "g2", "ifname": "eth0"}, {"containerID": "g3", "ifname": "eth0"}]);
    h.ok(ours, "GC", "", &gc);
    assert_eq!(h.sources("trusted"), ["10.88.0.20/32", "10.88.0.21/32"]);
}
