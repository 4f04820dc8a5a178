//! `loopback`, driven as runtimes drive it, against real namespaces.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use conformance::{exec, require_root, suites, Attachment, FakeHost, Netns, Runtime, Suite};
use serde_json::{json, Value};

fn lo_up(ns: &Netns) -> bool {
    let links = ns.ip_json(&["link", "show", "lo"]).unwrap();
    links[0]["flags"].as_array().unwrap().iter().any(|f| f == "UP")
}

fn call(suite: &Suite, host: &FakeHost, command: &str, netns: &str, conf: &Value) -> conformance::Output {
    let path = suite.dir.display().to_string();
    let env = [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "ctr1"),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", path.as_str()),
    ];
    exec(&suite.plugin("loopback"), &env, conf.to_string().as_bytes(), Some(&host.ns)).unwrap()
}

fn conf(version: &str) -> Value {
    json!({"cniVersion": version, "name": "lonet", "type": "loopback"})
}

#[test]
fn add_brings_lo_up_and_reports_it_in_every_version() {
    require_root!();
    for suite in suites() {
        for version in ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
            if suite.is_reference() && version == "1.1.0" {
                continue;
            }
            let host = FakeHost::new().unwrap();
            let ns = host.container().unwrap();
            ns.run("ip", &["link", "set", "lo", "down"]).unwrap();
            let out = call(&suite, &host, "ADD", &ns.path(), &conf(version));
            assert!(out.ok(), "{} {version}: {out:?}", suite.name);
            assert!(lo_up(&ns), "{} {version}: lo is not up", suite.name);
            let r = out.json().unwrap();
            assert_eq!(r["cniVersion"], version, "{}", suite.name);
            if version >= "0.3.0" {
                assert_eq!(
                    r["interfaces"],
                    json!([{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": ns.path()}]),
                    "{} {version}",
                    suite.name
                );
                assert_eq!(r["ips"][0]["address"], "127.0.0.1/8");
                assert_eq!(r["ips"][0]["interface"], 0);
                // The v1.1.1 reference prints its 1.0 shape under older versions (no `version`).
                if version < "1.0.0" && !suite.is_reference() {
                    assert_eq!(r["ips"][0]["version"], "4", "{version}");
                }
            } else if !suite.is_reference() {
                // The 0.2.0 shape; the v1.1.1 reference wrongly prints the 1.0 shape here.
                assert_eq!(r["ip4"]["ip"], "127.0.0.1/8", "{version}");
                assert_eq!(r["ip6"]["ip"], "::1/128", "{version}");
            }
        }
    }
}

#[test]
fn add_passes_prev_result_through() {
    require_root!();
    for suite in suites() {
        let host = FakeHost::new().unwrap();
        let ns = host.container().unwrap();
        let prev = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": ns.path()}],
            "ips": [{"interface": 0, "address": "10.1.2.3/24", "gateway": "10.1.2.1"}], "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {"nameservers": ["10.1.2.1"]}});
        let mut c = conf("1.0.0");
        c["prevResult"] = prev.clone();
        let out = call(&suite, &host, "ADD", &ns.path(), &c);
        assert!(out.ok(), "{}: {out:?}", suite.name);
        assert_eq!(out.json().unwrap(), prev, "{}", suite.name);
        assert!(lo_up(&ns));
    }
}

#[test]
fn check_fails_when_lo_is_down() {
    require_root!();
    for suite in suites() {
        let host = FakeHost::new().unwrap();
        let ns = host.container().unwrap();
        assert!(call(&suite, &host, "ADD", &ns.path(), &conf("1.0.0")).ok());
        let mut c = conf("1.0.0");
        c["prevResult"] = json!({"cniVersion": "1.0.0"});
        assert!(call(&suite, &host, "CHECK", &ns.path(), &c).ok(), "{}", suite.name);
        ns.run("ip", &["link", "set", "lo", "down"]).unwrap();
        let (code, msg, _) = call(&suite, &host, "CHECK", &ns.path(), &c).error().unwrap();
        assert_eq!((code, msg.as_str()), (999, "loopback interface is down"), "{}", suite.name);
    }
}

#[test]
fn del_is_idempotent_and_tolerates_a_missing_namespace() {
    require_root!();
    for suite in suites() {
        let host = FakeHost::new().unwrap();
        let mut ns = host.container().unwrap();
        assert!(call(&suite, &host, "ADD", &ns.path(), &conf("1.0.0")).ok());
        for _ in 0..2 {
            let out = call(&suite, &host, "DEL", &ns.path(), &conf("1.0.0"));
            assert!(out.ok() && out.stdout.is_empty(), "{}: {out:?}", suite.name);
            assert!(!lo_up(&ns), "{}", suite.name);
        }
        let path = ns.path();
        ns.delete();
        assert!(call(&suite, &host, "DEL", &path, &conf("1.0.0")).ok(), "{}: DEL after the netns is gone", suite.name);
        assert!(call(&suite, &host, "DEL", "", &conf("1.0.0")).ok(), "{}: DEL without CNI_NETNS", suite.name);
        let (code, _, _) = call(&suite, &host, "ADD", &path, &conf("1.0.0")).error().unwrap();
        assert_eq!(code, 999, "{}: ADD into a missing netns", suite.name);
    }
}

#[test]
fn a_conflist_through_the_runtime_driver() {
    require_root!();
    for suite in suites() {
        let host = FakeHost::new().unwrap();
        let ns = host.container().unwrap();
        ns.run("ip", &["link", "set", "lo", "down"]).unwrap();
        let rt = Runtime::new(&suite, &host.ns, host.dir.clone());
        let list = json!({"cniVersion": "1.0.0", "name": "lolist", "plugins": [{"type": "loopback"}]});
        let att = Attachment::new("ctr-list", &ns);
        let result = rt.add_list(&list, &att).unwrap();
        assert_eq!(result["interfaces"][0]["name"], "lo");
        assert!(lo_up(&ns));
        rt.check_list(&list, &att).unwrap();
        rt.del_list(&list, &att).unwrap();
        assert!(!lo_up(&ns));
        if !suite.is_reference() {
            let list11 = json!({"cniVersion": "1.1.0", "name": "lolist", "plugins": [{"type": "loopback"}]});
            rt.add_list(&list11, &att).unwrap();
            rt.status_list(&list11).unwrap();
            rt.gc_list(&list11, &[]).unwrap();
            assert!(!lo_up(&ns), "GC of an attachment that is not valid runs its DEL");
        }
    }
}
