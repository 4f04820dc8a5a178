//! `tuning` against the reference v1.1.1 and the newest reference builds: the same kernel state
//! and the same backup file for the same inputs, restore on DEL (also across suites: a backup
//! written by one is restored by the other), the sysctl allowlist, and bad inputs.
//!
//! Deliberate differences, asserted per suite below:
//! - every bad input is refused before anything changes, and an ADD that fails half way writes
//!   back what it changed (the references write sysctls, the backup and the MAC before they
//!   notice e.g. an MTU the device cannot take, and leave them);
//! - `args.cni.sysctl` without a top-level `sysctl` is applied (both references panic, exit 2,
//!   no error JSON);
//! - sysctl keys follow sysctl(8): `net/ipv4/conf/eth0.100/x` and `net.ipv4.conf.eth0/100.x` name
//!   the interface `eth0.100` (the references turn every dot into a slash); v1.1.1 also
//!   substitutes `IFNAME` before that, so an interface name with dots fails there;
//! - CHECK fails on promiscuous mode only when it was asked for (the references fail whenever the
//!   link is promiscuous, e.g. while tcpdump runs in the container), and compares sysctl values
//!   field by field (`32768 60999` matches the kernel's `32768\t60999`);
//! - DEL removes the backup when the namespace or the link is gone (the references leave it),
//!   and reads only `dataDir` (the references fail DEL on CNI_ARGS they do not know);
//! - a MAC in the result is written as the kernel reports it (lower case, colons), and a 1.1.0
//!   result's interface `mtu` follows a changed MTU (the newest reference leaves it stale);
//! - the backup directory, when ours creates it, is 0700 (the references create it 0600, which
//!   only root's CAP_DAC_OVERRIDE can enter); the backup file itself is 0600 in every suite;
//! - GC exists (the references have none): it removes this network's backups of attachments
//!   that are no longer valid, and only backups ours tagged with the network's name.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use conformance::{exec, exec_args, require_root, suites_with_head, FakeHost, Netns, Output, Suite};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const ORIG_MAC: &str = "0a:58:0a:00:00:02";
const NEW_MAC: &str = "0a:58:0a:00:00:99";
const CID: &str = "ctr1";
const ARP_IGNORE: &str = "net/ipv4/conf/IFNAME/arp_ignore";

/// One container namespace holding a veth end named `ifname`, in a fake host.
struct Ctx {
    suite: Suite,
    host: FakeHost,
    ns: Netns,
    ifname: String,
    data: PathBuf,
    cid: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct LinkState {
    mac: String,
    mtu: u64,
    promisc: bool,
    allmulti: bool,
    txqlen: u64,
}

impl Ctx {
    fn new(suite: &Suite) -> Ctx {
        Ctx::with_ifname(suite, "eth0")
    }

    fn with_ifname(suite: &Suite, ifname: &str) -> Ctx {
        let host = FakeHost::new().unwrap();
        let ns = host.container().unwrap();
        ns.run("ip", &["link", "add", ifname, "address", ORIG_MAC, "type", "veth", "peer", "name", "p0"]).unwrap();
        ns.run("ip", &["link", "set", ifname, "up"]).unwrap();
        let data = host.dir.join("tuning");
        Ctx { suite: suite.clone(), host, ns, ifname: ifname.into(), data, cid: CID.into() }
    }

    fn env<'a>(
        &'a self,
        command: &'a str,
        netns: &'a str,
        cni_args: &'a str,
        path: &'a str,
    ) -> Vec<(&'a str, &'a str)> {
        vec![
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", self.cid.as_str()),
            ("CNI_NETNS", netns),
            ("CNI_IFNAME", self.ifname.as_str()),
            ("CNI_ARGS", cni_args),
            ("CNI_PATH", path),
        ]
    }

    fn call_raw(&self, suite: &Suite, command: &str, stdin: &str, cni_args: &str) -> Output {
        let path = suite.dir.display().to_string();
        let netns = self.ns.path();
        let env = self.env(command, &netns, cni_args, &path);
        exec(&suite.plugin("tuning"), &env, stdin.as_bytes(), Some(&self.host.ns)).unwrap()
    }

    fn call(&self, command: &str, conf: &Value, cni_args: &str) -> Output {
        self.call_raw(&self.suite, command, &conf.to_string(), cni_args)
    }

    /// Runs the plugin in a private mount namespace whose `/etc/cni/tuning/allowlist.conf`
    /// holds `allowlist`, so the machine's own `/etc` is never touched.
    fn call_with_allowlist(&self, command: &str, conf: &Value, allowlist: &str) -> Output {
        let file = self.host.dir.join("allowlist.conf");
        std::fs::write(&file, allowlist).unwrap();
        let path = self.suite.dir.display().to_string();
        let netns = self.ns.path();
        let env = self.env(command, &netns, "", &path);
        let plugin = self.suite.plugin("tuning").display().to_string();
        let file = file.display().to_string();
        let script = "mount -t tmpfs tmpfs /etc/cni && mkdir /etc/cni/tuning && cp \"$2\" /etc/cni/tuning/allowlist.conf && exec \"$1\"";
        let args = ["--mount", "--propagation", "private", "sh", "-c", script, "sh", &plugin, &file];
        exec_args(Path::new("/usr/bin/unshare"), &args, &env, conf.to_string().as_bytes(), Some(&self.host.ns)).unwrap()
    }

    fn prev(&self, version: &str) -> Value {
        if version < "0.3.0" {
            return json!({"cniVersion": version, "ip4": {"ip": "10.0.0.2/24", "gateway": "10.0.0.1"}});
        }
        json!({"cniVersion": version,
            "interfaces": [{"name": "br0", "mac": "0a:58:0a:00:00:01"}, {"name": self.ifname, "mac": ORIG_MAC, "sandbox": self.ns.path()}],
            "ips": [{"interface": 1, "address": "10.0.0.2/24", "gateway": "10.0.0.1"}],
            "routes": [{"dst": "0.0.0.0/0"}], "dns": {"nameservers": ["10.0.0.1"]}})
    }

    fn conf(&self, version: &str, extra: Value) -> Value {
        let mut c = json!({"cniVersion": version, "name": "tunenet", "type": "tuning",
            "dataDir": self.data.display().to_string(), "prevResult": self.prev(version)});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    fn link(&self) -> LinkState {
        let l = &self.ns.ip_json(&["link", "show", &self.ifname]).unwrap()[0];
        let flags: Vec<&str> = l["flags"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
        LinkState {
            mac: l["address"].as_str().unwrap().to_string(),
            mtu: l["mtu"].as_u64().unwrap(),
            promisc: flags.contains(&"PROMISC"),
            allmulti: flags.contains(&"ALLMULTI"),
            txqlen: l["txqlen"].as_u64().unwrap(),
        }
    }

    fn sysctl(&self, key: &str) -> String {
        let rel = key.replace("IFNAME", &self.ifname);
        self.ns.run("cat", &[&format!("/proc/sys/{rel}")]).unwrap().trim().to_string()
    }

    fn backup(&self) -> PathBuf {
        self.data.join(format!("{}_{}.json", self.cid, self.ifname))
    }

    fn original() -> LinkState {
        LinkState { mac: ORIG_MAC.into(), mtu: 1500, promisc: false, allmulti: false, txqlen: 1000 }
    }
}

/// The keys the v1.1.1 reference does not know (`txQLen` came in v1.4.0).
fn supports_txqlen(suite: &Suite) -> bool {
    !suite.is_reference()
}

#[test]
fn add_sets_everything_and_del_restores_the_link_from_the_same_backup() {
    require_root!();
    let base = json!({"sysctl": {"net.ipv4.conf.IFNAME.arp_ignore": "1", "net.core.somaxconn": "1234"},
        "mac": NEW_MAC, "mtu": 1400, "promisc": true, "allmulti": true});
    let mut full = base.clone();
    full["txQLen"] = json!(600);
    for (extra, needs_txqlen) in [(base, false), (full, true)] {
        let mut backups = Vec::new();
        for suite in suites_with_head("tuning").iter().filter(|s| !needs_txqlen || supports_txqlen(s)) {
            let ctx = Ctx::new(suite);
            let conf = ctx.conf("1.0.0", extra.clone());
            let out = ctx.call("ADD", &conf, "");
            assert!(out.ok(), "{}: {out:?}", suite.name);
            let r = out.json().unwrap();
            assert_eq!(r["interfaces"][1]["mac"], NEW_MAC, "{}: the result carries the new MAC", suite.name);
            assert_eq!(r["interfaces"][0]["mac"], "0a:58:0a:00:00:01", "{}: other interfaces untouched", suite.name);
            assert_eq!(r["ips"], conf["prevResult"]["ips"], "{}", suite.name);
            let want = LinkState {
                mac: NEW_MAC.into(),
                mtu: 1400,
                promisc: true,
                allmulti: true,
                txqlen: if needs_txqlen { 600 } else { 1000 },
            };
            assert_eq!(ctx.link(), want, "{}", suite.name);
            assert_eq!((ctx.sysctl(ARP_IGNORE).as_str(), ctx.sysctl("net/core/somaxconn").as_str()), ("1", "1234"));
            let meta = std::fs::metadata(ctx.backup()).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{}", suite.name);
            backups.push((suite.name, std::fs::read_to_string(ctx.backup()).unwrap()));

            for _ in 0..2 {
                let out = ctx.call("DEL", &conf, "");
                assert!(out.ok() && out.stdout.is_empty(), "{}: {out:?}", suite.name);
                assert_eq!(ctx.link(), Ctx::original(), "{}: DEL restores the link", suite.name);
                assert!(!ctx.backup().exists(), "{}: DEL removes the backup", suite.name);
            }
            // Sysctls are never restored, by any suite.
            assert_eq!(ctx.sysctl(ARP_IGNORE), "1", "{}", suite.name);
        }
        let (first, bytes) = &backups[0];
        assert!(
            bytes.starts_with("{\n \"mac\": \"0a:58:0a:00:00:02\",\n \"promisc\": false,\n \"mtu\": 1500,"),
            "{bytes}"
        );
        for (name, b) in &backups[1..] {
            assert_eq!(b, bytes, "backup of {name} differs from {first}");
        }
    }
}

#[test]
fn every_spec_version_passes_prev_result_through_with_the_mac_from_cni_args() {
    require_root!();
    for suite in suites_with_head("tuning") {
        for version in cni_types::version::ALL {
            if suite.is_reference() && *version == "1.1.0" {
                continue;
            }
            let ctx = Ctx::new(&suite);
            let conf = ctx.conf(version, json!({}));
            let out = ctx.call("ADD", &conf, "IgnoreUnknown=1;K8S_POD_NAME=web;MAC=0A:58:0A:00:00:99");
            assert!(out.ok(), "{} {version}: {out:?}", suite.name);
            assert_eq!(ctx.link().mac, NEW_MAC, "{} {version}", suite.name);
            let r = out.json().unwrap();
            assert_eq!(r["cniVersion"], *version, "{} {version}", suite.name);
            if *version >= "0.3.0" {
                assert_eq!(r["ips"][0]["address"], "10.0.0.2/24", "{} {version}", suite.name);
                if suite.is_ours() {
                    assert_eq!(r["interfaces"][1]["mac"], NEW_MAC, "{version}");
                } else {
                    // The references copy the MAC exactly as given.
                    assert_eq!(r["interfaces"][1]["mac"], "0A:58:0A:00:00:99", "{} {version}", suite.name);
                }
            } else if !suite.is_reference() {
                assert_eq!(r["ip4"]["ip"], "10.0.0.2/24", "{} {version}", suite.name);
            }
            assert!(ctx.call("DEL", &conf, "").ok());
            assert_eq!(ctx.link(), Ctx::original(), "{} {version}", suite.name);
        }
    }
}

#[test]
fn the_precedence_of_mac_sources_is_the_references() {
    require_root!();
    for suite in suites_with_head("tuning") {
        let ctx = Ctx::new(&suite);
        let conf = ctx.conf(
            "1.0.0",
            json!({"mac": "0a:58:0a:00:00:11", "runtimeConfig": {"mac": "0a:58:0a:00:00:33"},
                   "args": {"cni": {"mtu": 1300}}, "mtu": 1400}),
        );
        assert!(ctx.call("ADD", &conf, "IgnoreUnknown=1;MAC=0a:58:0a:00:00:22").ok(), "{}", suite.name);
        assert_eq!((ctx.link().mac.as_str(), ctx.link().mtu), ("0a:58:0a:00:00:33", 1300), "{}", suite.name);
        let mut with_args = conf.clone();
        with_args["args"]["cni"]["mac"] = json!("0a:58:0a:00:00:44");
        assert!(ctx.call("DEL", &conf, "").ok());
        assert!(ctx.call("ADD", &with_args, "IgnoreUnknown=1;MAC=0a:58:0a:00:00:22").ok(), "{}", suite.name);
        assert_eq!(ctx.link().mac, "0a:58:0a:00:00:44", "{}", suite.name);
        let (code, _, _) =
            ctx.call("ADD", &ctx.conf("1.0.0", json!({})), "MAC=0a:58:0a:00:00:22;FOO=1").error().unwrap();
        assert!(code == 4 || !suite.is_ours(), "{}: unknown CNI_ARGS without IgnoreUnknown", suite.name);
    }
}

#[test]
fn a_backup_written_by_one_suite_is_restored_by_the_other() {
    require_root!();
    let suites = suites_with_head("tuning");
    let ours = &suites[0];
    for reference in &suites[1..] {
        let extra = json!({"mac": NEW_MAC, "mtu": 1400, "promisc": true, "allmulti": true});
        for (writer, restorer) in [(reference, ours), (ours, reference)] {
            let ctx = Ctx::new(writer);
            let conf = ctx.conf("1.0.0", extra.clone());
            assert!(ctx.call("ADD", &conf, "").ok(), "ADD by {}", writer.name);
            assert!(ctx.backup().exists());
            let out = ctx.call_raw(restorer, "DEL", &conf.to_string(), "");
            assert!(out.ok(), "DEL by {}: {out:?}", restorer.name);
            assert_eq!(ctx.link(), Ctx::original(), "{} restores what {} saved", restorer.name, writer.name);
            assert!(!ctx.backup().exists(), "{} removes what {} saved", restorer.name, writer.name);
        }
    }
    // And one with the queue length, which only the newest reference knows.
    if let Some(head) = suites.iter().find(|s| s.is_reference_head()) {
        for (writer, restorer) in [(head, ours), (ours, head)] {
            let ctx = Ctx::new(writer);
            let conf = ctx.conf("1.0.0", json!({"txQLen": 42}));
            assert!(ctx.call("ADD", &conf, "").ok());
            assert_eq!(ctx.link().txqlen, 42);
            assert!(ctx.call_raw(restorer, "DEL", &conf.to_string(), "").ok());
            assert_eq!(ctx.link().txqlen, 1000, "{} restores what {} saved", restorer.name, writer.name);
        }
    }
}

#[test]
fn the_allowlist_refuses_a_sysctl_with_nothing_changed() {
    require_root!();
    if !Path::new("/etc/cni").is_dir() || !Path::new("/usr/bin/unshare").exists() {
        conformance::skip("needs /etc/cni and unshare(1) for a private allowlist");
        return;
    }
    // v1.1.1 has no allowlist.
    for suite in suites_with_head("tuning").iter().filter(|s| !s.is_reference()) {
        let ctx = Ctx::new(suite);
        let allow = "^net\\.core\\.somaxconn$\n  ^net\\.ipv4\\.conf\\.IFNAME\\.arp_[a-z]*$\n";
        let refused = ctx.conf(
            "1.0.0",
            json!({"mac": NEW_MAC, "sysctl": {"net.core.somaxconn": "999", "net.ipv4.ip_forward": "1"}}),
        );
        let (code, msg, _) = ctx.call_with_allowlist("ADD", &refused, allow).error().unwrap();
        assert!(msg.starts_with("Sysctl net.ipv4.ip_forward is not allowed."), "{}: {msg}", suite.name);
        if suite.is_ours() {
            assert_eq!(code, 7);
        }
        assert_eq!(ctx.link(), Ctx::original(), "{}", suite.name);
        assert_ne!(ctx.sysctl("net/core/somaxconn"), "999", "{}", suite.name);
        assert_eq!(ctx.sysctl("net/ipv4/ip_forward"), "0", "{}", suite.name);
        assert!(!ctx.backup().exists(), "{}", suite.name);

        let allowed =
            ctx.conf("1.0.0", json!({"sysctl": {"net.core.somaxconn": "999", "net.ipv4.conf.IFNAME.arp_ignore": "2"}}));
        let out = ctx.call_with_allowlist("ADD", &allowed, allow);
        assert!(out.ok(), "{}: {out:?}", suite.name);
        assert_eq!((ctx.sysctl("net/core/somaxconn").as_str(), ctx.sysctl(ARP_IGNORE).as_str()), ("999", "2"));
    }
}

/// Bad inputs: ours refuses each with a CNI error and changes nothing.
#[test]
fn every_bad_input_is_an_error_with_nothing_changed() {
    require_root!();
    let ours = conformance::ours();
    let good_sysctl = json!({"net.ipv4.conf.IFNAME.arp_ignore": "1"});
    let cases: Vec<(&str, Value, &str, u64)> = vec![
        ("not a MAC", json!({"sysctl": good_sysctl, "mac": "zz:00:00:00:00:01"}), "", 7),
        ("multicast MAC", json!({"sysctl": good_sysctl, "mac": "01:00:5e:00:00:01"}), "", 7),
        ("8-byte MAC on Ethernet", json!({"sysctl": good_sysctl, "mac": "02:00:00:00:00:00:00:01"}), "", 7),
        ("negative MTU", json!({"sysctl": good_sysctl, "mtu": -5}), "", 7),
        ("MTU above the device's", json!({"sysctl": good_sysctl, "mac": NEW_MAC, "mtu": 70000}), "", 7),
        ("negative txQLen", json!({"sysctl": good_sysctl, "txQLen": -1}), "", 7),
        (
            "sysctl outside net",
            json!({"sysctl": {"net.ipv4.conf.IFNAME.arp_ignore": "1", "kernel.cnit_nope": "1"}}),
            "",
            7,
        ),
        ("sysctl with ..", json!({"sysctl": {"net/ipv4/../../kernel/cnit_nope": "1"}, "mac": NEW_MAC}), "", 7),
        (
            "sysctl that does not exist",
            json!({"sysctl": {"net.ipv4.conf.IFNAME.arp_ignore": "1", "net.ipv4.cnit_nope": "1"}, "mac": NEW_MAC}),
            "",
            7,
        ),
        (
            "two spellings of one sysctl",
            json!({"sysctl": {"net.core.somaxconn": "1", "net/core/somaxconn": "2"}, "mac": NEW_MAC}),
            "",
            7,
        ),
        ("sysctl value not a string", json!({"sysctl": {"net.core.somaxconn": 5}, "mac": NEW_MAC}), "", 6),
        (
            "sysctl the kernel refuses",
            json!({"sysctl": {"net.ipv4.conf.IFNAME.arp_ignore": "1", "net.core.somaxconn": "abc"}, "mac": NEW_MAC, "mtu": 1400}),
            "",
            999,
        ),
        ("unknown CNI_ARGS", json!({"sysctl": good_sysctl, "mac": NEW_MAC}), "FOO=1", 4),
        ("relative dataDir", json!({"sysctl": good_sysctl, "mac": NEW_MAC, "dataDir": "tuning"}), "", 7),
        ("mtu of the wrong type", json!({"sysctl": good_sysctl, "mtu": "1400"}), "", 6),
        ("no prevResult", json!({"sysctl": good_sysctl, "mac": NEW_MAC, "prevResult": null}), "", 999),
    ];
    let ctx = Ctx::new(&ours);
    let somaxconn = ctx.sysctl("net/core/somaxconn");
    for (what, extra, cni_args, code) in cases {
        let conf = ctx.conf("1.0.0", extra);
        let out = ctx.call("ADD", &conf, cni_args);
        let (got, msg, _) = out.error().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(got, code, "{what}: {msg}");
        assert_eq!(ctx.link(), Ctx::original(), "{what}: the link changed");
        assert_eq!(ctx.sysctl(ARP_IGNORE), "0", "{what}: a sysctl changed");
        assert_eq!(ctx.sysctl("net/core/somaxconn"), somaxconn, "{what}: a sysctl changed");
        assert!(!ctx.backup().exists(), "{what}: a backup was left");
    }
    // Duplicate keys, which a JSON decoder would silently collapse.
    let conf = ctx.conf("1.0.0", json!({"mac": NEW_MAC})).to_string();
    let dup = conf.replacen('{', r#"{"sysctl": {"net.core.somaxconn": "7", "net.core.somaxconn": "8"},"#, 1);
    let (code, msg, _) = ctx.call_raw(&ours, "ADD", &dup, "").error().unwrap();
    assert_eq!(code, 7, "{msg}");
    assert!(msg.contains("duplicated sysctl keys"), "{msg}");
    assert_eq!((ctx.link(), ctx.sysctl("net/core/somaxconn")), (Ctx::original(), somaxconn));

    // A MAC for a device that has no hardware address (a TUN device).
    let tun = Ctx::new(&ours);
    tun.ns.run("ip", &["link", "del", "eth0"]).unwrap();
    tun.ns.run("ip", &["tuntap", "add", "mode", "tun", "name", "eth0"]).unwrap();
    let conf = tun.conf("1.0.0", json!({"sysctl": good_sysctl, "mac": NEW_MAC}));
    let (code, msg, _) = tun.call("ADD", &conf, "").error().unwrap();
    assert_eq!(code, 7, "{msg}");
    assert_eq!(tun.sysctl(ARP_IGNORE), "0");
    assert!(!tun.backup().exists());

    // A link that is not there: nothing is written, not even the sysctls.
    let gone = Ctx::with_ifname(&ours, "eth0");
    gone.ns.run("ip", &["link", "del", "eth0"]).unwrap();
    let conf = gone.conf("1.0.0", json!({"sysctl": {"net.core.somaxconn": "77"}, "mac": NEW_MAC}));
    let (code, msg, _) = gone.call("ADD", &conf, "").error().unwrap();
    assert_eq!(code, 999, "{msg}");
    assert_ne!(gone.sysctl("net/core/somaxconn"), "77");
}

/// The input that makes both references panic is an ordinary one for ours.
#[test]
fn args_cni_sysctl_without_a_top_level_sysctl() {
    require_root!();
    for suite in suites_with_head("tuning") {
        let ctx = Ctx::new(&suite);
        let conf = ctx.conf("1.0.0", json!({"args": {"cni": {"sysctl": {"net.core.somaxconn": "321"}}}}));
        let out = ctx.call("ADD", &conf, "");
        if suite.is_ours() {
            assert!(out.ok(), "{out:?}");
            assert_eq!(ctx.sysctl("net/core/somaxconn"), "321");
        } else {
            assert_eq!(out.code, 2, "{}: {out:?}", suite.name);
            assert!(out.json().is_err() && out.stderr.contains("assignment to entry in nil map"), "{}", suite.name);
        }
    }
}

#[test]
fn check_compares_every_configured_value() {
    require_root!();
    for suite in suites_with_head("tuning") {
        let ctx = Ctx::new(&suite);
        // v1.1.1's CHECK does not substitute IFNAME.
        let key =
            if suite.is_reference() { "net.ipv4.conf.eth0.arp_ignore" } else { "net.ipv4.conf.IFNAME.arp_ignore" };
        let mut extra = json!({"sysctl": {key: "1"}, "mac": NEW_MAC, "mtu": 1400,
            "promisc": true, "allmulti": true});
        if supports_txqlen(&suite) {
            extra["txQLen"] = json!(600);
        }
        let conf = ctx.conf("1.0.0", extra);
        assert!(ctx.call("ADD", &conf, "").ok(), "{}", suite.name);
        let out = ctx.call("CHECK", &conf, "");
        assert!(out.ok(), "{}: {out:?}", suite.name);
        let breakers: Vec<(&str, Vec<&str>, Vec<&str>)> = vec![
            ("mtu", vec!["link", "set", "eth0", "mtu", "1300"], vec!["link", "set", "eth0", "mtu", "1400"]),
            ("mac", vec!["link", "set", "eth0", "address", ORIG_MAC], vec!["link", "set", "eth0", "address", NEW_MAC]),
            ("promisc", vec!["link", "set", "eth0", "promisc", "off"], vec!["link", "set", "eth0", "promisc", "on"]),
            (
                "allmulti",
                vec!["link", "set", "eth0", "allmulticast", "off"],
                vec!["link", "set", "eth0", "allmulticast", "on"],
            ),
        ];
        for (what, break_it, fix_it) in breakers {
            ctx.ns.run("ip", &break_it).unwrap();
            assert!(!ctx.call("CHECK", &conf, "").ok(), "{}: CHECK misses a changed {what}", suite.name);
            ctx.ns.run("ip", &fix_it).unwrap();
            assert!(ctx.call("CHECK", &conf, "").ok(), "{}: CHECK after restoring {what}", suite.name);
        }
        if supports_txqlen(&suite) {
            ctx.ns.run("ip", &["link", "set", "eth0", "txqueuelen", "700"]).unwrap();
            assert!(!ctx.call("CHECK", &conf, "").ok(), "{}: CHECK misses txqlen", suite.name);
            ctx.ns.run("ip", &["link", "set", "eth0", "txqueuelen", "600"]).unwrap();
        }
        ctx.ns.run("sh", &["-c", "echo 0 > /proc/sys/net/ipv4/conf/eth0/arp_ignore"]).unwrap();
        assert!(!ctx.call("CHECK", &conf, "").ok(), "{}: CHECK misses a sysctl", suite.name);
        let mut no_prev = conf.clone();
        no_prev.as_object_mut().unwrap().remove("prevResult");
        assert!(!ctx.call("CHECK", &no_prev, "").ok(), "{}: CHECK needs prevResult", suite.name);

        // Not asked for: promiscuous mode someone else turned on, and the kernel's tab.
        let ctx = Ctx::new(&suite);
        let conf = ctx.conf("1.0.0", json!({"sysctl": {"net.ipv4.ip_local_port_range": "32768 60999"}}));
        assert!(ctx.call("ADD", &conf, "").ok());
        ctx.ns.run("ip", &["link", "set", "eth0", "promisc", "on"]).unwrap();
        assert_eq!(ctx.call("CHECK", &conf, "").ok(), suite.is_ours(), "{}", suite.name);
    }
}

#[test]
fn interface_names_with_dots() {
    require_root!();
    for suite in suites_with_head("tuning") {
        let ctx = Ctx::with_ifname(&suite, "eth0.100");
        let arp = "net/ipv4/conf/eth0.100/arp_ignore";
        let conf = ctx.conf("1.0.0", json!({"sysctl": {"net.ipv4.conf.IFNAME.arp_ignore": "1"}}));
        // v1.1.1 substitutes IFNAME before turning dots into slashes.
        assert_eq!(ctx.call("ADD", &conf, "").ok(), !suite.is_reference(), "{}", suite.name);
        assert_eq!(ctx.sysctl(arp) == "1", !suite.is_reference(), "{}", suite.name);
        for (key, value) in [("net/ipv4/conf/eth0.100/arp_ignore", "2"), ("net.ipv4.conf.eth0/100.arp_ignore", "3")] {
            let conf = ctx.conf("1.0.0", json!({"sysctl": {key: value}}));
            let out = ctx.call("ADD", &conf, "");
            assert_eq!(out.ok(), suite.is_ours(), "{} {key}: {out:?}", suite.name);
            if suite.is_ours() {
                assert_eq!(ctx.sysctl(arp), value, "{key}");
            }
        }
    }
}

#[test]
fn del_is_idempotent_when_the_link_or_the_namespace_is_gone() {
    require_root!();
    for suite in suites_with_head("tuning") {
        let extra = json!({"mac": NEW_MAC, "mtu": 1400});
        // The link is gone.
        let ctx = Ctx::new(&suite);
        let conf = ctx.conf("1.0.0", extra.clone());
        assert!(ctx.call("ADD", &conf, "").ok());
        let out = ctx.call("DEL", &conf, "FOO=1");
        assert_eq!(out.ok(), suite.is_ours(), "{}: DEL with unknown CNI_ARGS: {out:?}", suite.name);
        if suite.is_ours() {
            assert_eq!(ctx.link(), Ctx::original());
            assert!(ctx.call("ADD", &conf, "").ok());
        }
        ctx.ns.run("ip", &["link", "del", "eth0"]).unwrap();
        for _ in 0..2 {
            assert!(ctx.call("DEL", &conf, "").ok(), "{}", suite.name);
        }
        assert_eq!(ctx.backup().exists(), !suite.is_ours(), "{}: backup after DEL without the link", suite.name);

        // The namespace is gone, or the runtime sends none.
        let mut ctx = Ctx::new(&suite);
        let conf = ctx.conf("1.0.0", extra.clone());
        assert!(ctx.call("ADD", &conf, "").ok());
        ctx.ns.delete();
        let path = suite.dir.display().to_string();
        for netns in ["/run/netns/cnit-gone", ""] {
            let env = ctx.env("DEL", netns, "", &path);
            let out = exec(&suite.plugin("tuning"), &env, conf.to_string().as_bytes(), Some(&ctx.host.ns)).unwrap();
            assert!(out.ok(), "{} netns {netns:?}: {out:?}", suite.name);
        }
        assert_eq!(ctx.backup().exists(), !suite.is_ours(), "{}: backup after DEL without the netns", suite.name);
    }
    // A corrupt or hostile backup file never stops DEL, and is never followed.
    let ours = conformance::ours();
    let ctx = Ctx::new(&ours);
    let conf = ctx.conf("1.0.0", json!({"mac": NEW_MAC}));
    std::fs::create_dir_all(&ctx.data).unwrap();
    std::fs::write(ctx.backup(), "{not json").unwrap();
    assert!(ctx.call("DEL", &conf, "").ok());
    assert!(!ctx.backup().exists());
    let target = ctx.host.dir.join("elsewhere.json");
    std::fs::write(&target, r#"{"mtu": 1280}"#).unwrap();
    std::os::unix::fs::symlink(&target, ctx.backup()).unwrap();
    assert!(ctx.call("DEL", &conf, "").ok());
    assert_eq!(ctx.link().mtu, 1500, "a symlinked backup is not followed");
    assert!(target.exists());
}

#[test]
fn gc_removes_only_this_networks_stale_backups() {
    require_root!();
    let ours = conformance::ours();
    let first = Ctx::new(&ours);
    let mut others = Vec::new();
    // (container, network, suite): ctr3 is stale on this network; ctr2 belongs to another
    // network sharing the directory; ctr4 was written by the newest reference (not tagged).
    let head = conformance::reference_head().filter(|h| h.has("tuning"));
    for (cid, net, suite) in [("ctr2", "othernet", &ours), ("ctr3", "tunenet", &ours)]
        .into_iter()
        .chain(head.as_ref().map(|h| ("ctr4", "tunenet", h)))
    {
        let mut ctx = Ctx::new(suite);
        ctx.cid = cid.into();
        ctx.data = first.data.clone();
        let mut conf = ctx.conf("1.0.0", json!({"mac": NEW_MAC}));
        conf["name"] = json!(net);
        assert!(ctx.call("ADD", &conf, "").ok(), "{cid}");
        others.push(ctx);
    }
    assert!(first.call("ADD", &first.conf("1.0.0", json!({"mac": NEW_MAC})), "").ok());
    let gc = |valid: Option<Value>| {
        let mut conf = json!({"cniVersion": "1.1.0", "name": "tunenet", "type": "tuning",
            "dataDir": first.data.display().to_string()});
        if let Some(v) = valid {
            conf["cni.dev/valid-attachments"] = v;
        }
        first.call("GC", &conf, "")
    };
    assert!(gc(None).ok());
    assert!(others.iter().all(|c| c.backup().exists()), "GC without a valid list removes nothing");
    let out = gc(Some(json!([{"containerID": CID, "ifname": "eth0"}])));
    assert!(out.ok(), "{out:?}");
    assert!(first.backup().exists(), "a valid attachment keeps its backup");
    let left: Vec<bool> = others.iter().map(|c| c.backup().exists()).collect();
    assert_eq!(left[..2], [true, false], "ctr2 (another network) stays, ctr3 (stale) goes");
    if left.len() > 2 {
        assert!(left[2], "an untagged backup is left to DEL");
    }
}

/// podman's chain (cniVersion 0.4.0): bridge + host-local, then tuning with the `mac`
/// capability, through the libcni-like driver; CHECK of the whole chain after ADD (as CRI-O
/// does), DEL restoring the MAC before bridge removes the veth.
#[test]
fn a_podman_chain_with_the_mac_capability() {
    require_root!();
    for suite in suites_with_head("tuning").into_iter().filter(|s| s.has("bridge") && s.has("host-local")) {
        let host = FakeHost::new().unwrap();
        let c = host.container().unwrap();
        let rt = conformance::Runtime::new(&suite, &host.ns, host.dir.clone());
        let bridge = json!({"type": "bridge", "bridge": "cnitun0", "isGateway": true, "hairpinMode": true,
            "ipam": {"type": "host-local", "dataDir": host.dir.join("ipam").display().to_string(),
                     "ranges": [[{"subnet": "10.93.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}});
        let tuning = json!({"type": "tuning", "capabilities": {"mac": true},
            "dataDir": host.dir.join("tuning").display().to_string()});
        let list = json!({"cniVersion": "0.4.0", "name": "podnet", "plugins": [bridge, tuning]});
        let mut att = conformance::Attachment::new("podctr", &c);
        att.cni_args = "IgnoreUnknown=1;K8S_POD_NAME=web".into();
        att.caps.insert("mac".into(), json!(NEW_MAC));
        let result = rt.add_list(&list, &att).unwrap_or_else(|e| panic!("{}: {e:#}", suite.name));
        let eth0 = result["interfaces"].as_array().unwrap().iter().find(|i| i["name"] == "eth0").unwrap();
        assert_eq!(eth0["mac"], NEW_MAC, "{}", suite.name);
        assert_eq!(c.ip_json(&["link", "show", "eth0"]).unwrap()[0]["address"], NEW_MAC, "{}", suite.name);
        rt.check_list(&list, &att).unwrap_or_else(|e| panic!("{}: CHECK: {e:#}", suite.name));
        let backup = host.dir.join("tuning").join("podctr_eth0.json");
        assert!(backup.exists(), "{}", suite.name);
        rt.del_list(&list, &att).unwrap_or_else(|e| panic!("{}: DEL: {e:#}", suite.name));
        assert!(!backup.exists(), "{}", suite.name);
        assert!(c.ip_json(&["link", "show", "type", "veth"]).unwrap().as_array().unwrap().is_empty());
    }
}

#[test]
fn a_changed_mtu_shows_in_a_1_1_0_result() {
    require_root!();
    for suite in suites_with_head("tuning").into_iter().filter(|s| !s.is_reference()) {
        let ctx = Ctx::new(&suite);
        let mut conf = ctx.conf("1.1.0", json!({"mtu": 1400}));
        conf["prevResult"]["interfaces"][1]["mtu"] = json!(1500);
        let out = ctx.call("ADD", &conf, "");
        let r = out.json().unwrap();
        assert_eq!(ctx.link().mtu, 1400, "{}", suite.name);
        let want = if suite.is_ours() { 1400 } else { 1500 };
        assert_eq!(r["interfaces"][1]["mtu"], want, "{}", suite.name);
        assert!(r["interfaces"][0].get("mtu").is_none(), "{}: other interfaces untouched", suite.name);
    }
}
