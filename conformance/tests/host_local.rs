//! `host-local`, executed as a runtime executes it, against its on-disk store.
//!
//! host-local touches no network namespace, so the binaries run directly on a private temp
//! `dataDir` per test. Every behaviour is checked against the reference (v1.1.1, spec ≤ 1.0.0)
//! too, and the store is exercised across the two suites in both directions, since a host must
//! be able to switch between them without leaking or double-allocating addresses.
//!
//! Deliberate differences from the reference, asserted for ours only:
//! - configuration errors are code 7 (the reference reports everything as 999), some messages
//!   name the offending value, a gateway outside its subnet and rangeStart > rangeEnd are
//!   rejected with their own messages;
//! - `IP=` in CNI_ARGS takes a comma list;
//! - DEL and GC need only the store location (an invalid range does not block a release) and
//!   do not create the network directory;
//! - GC and STATUS exist (the v1.1.1 reference predates them);
//! - files are mode 0600 (the reference's HEAD does the same; v1.1.1 wrote 0644);
//! - store files, the network directory and `resolvConf` are opened as what they must be: a
//!   planted symlink is refused, not written through, and a FIFO or device is refused at once
//!   (the reference writes through links and hangs on a FIFO);
//! - a refused ADD leaves the `last_reserved_ip` hints alone (the reference advances them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use conformance::{exec, ours, reference, require_root, skip, suites, Output, Suite};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A scratch `dataDir`, removed on drop.
struct DataDir(PathBuf);

impl DataDir {
    fn new(tag: &str) -> DataDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hl-conf-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        DataDir(dir)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }

    /// The network directory.
    fn net(&self) -> PathBuf {
        self.0.join(NET)
    }

    /// File name → content of the network directory, without the lock file.
    fn files(&self) -> BTreeMap<String, String> {
        let Ok(entries) = fs::read_dir(self.net()) else { return BTreeMap::new() };
        entries
            .map(|e| e.unwrap())
            .map(|e| (e.file_name().into_string().unwrap(), e.path()))
            .filter(|(name, _)| name != "lock")
            .map(|(name, path)| (name, fs::read_to_string(path).unwrap()))
            .collect()
    }

    /// The reserved addresses (file names that are addresses).
    fn reserved(&self) -> BTreeSet<String> {
        self.files().into_keys().filter(|n| n.parse::<std::net::IpAddr>().is_ok()).collect()
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

const NET: &str = "hlnet";

/// A request configuration as libcni sends it: the bridge-like parent with `ipam` inside.
fn conf(version: &str, data_dir: &DataDir, ipam: Value) -> Value {
    let mut ipam = ipam;
    ipam["type"] = json!("host-local");
    ipam["dataDir"] = json!(data_dir.path());
    json!({"cniVersion": version, "name": NET, "type": "bridge", "ipam": ipam})
}

fn v4_29(version: &str, data_dir: &DataDir) -> Value {
    conf(version, data_dir, json!({"ranges": [[{"subnet": "10.252.0.0/29"}]]}))
}

/// One invocation for the attachment `(id, ifname)`.
fn call(suite: &Suite, command: &str, id: &str, ifname: &str, cni_args: &str, conf: &Value) -> Output {
    let path = suite.dir.display().to_string();
    let mut env = vec![("CNI_COMMAND", command), ("CNI_PATH", path.as_str())];
    if !matches!(command, "GC" | "STATUS") {
        // host-local ignores the namespace; the path only has to be present (and not ours).
        env.extend([("CNI_CONTAINERID", id), ("CNI_NETNS", "/var/run/netns/hl-unused"), ("CNI_IFNAME", ifname)]);
        env.push(("CNI_ARGS", cni_args));
    }
    exec(&suite.plugin("host-local"), &env, conf.to_string().as_bytes(), None).unwrap()
}

fn add(suite: &Suite, id: &str, conf: &Value) -> Output {
    call(suite, "ADD", id, "eth0", "", conf)
}

/// The addresses of an ADD result (1.x shape or 0.3/0.4 shape).
fn addresses(out: &Output) -> Vec<String> {
    assert!(out.ok(), "ADD failed: {out:?}");
    let r = out.json().unwrap();
    r["ips"].as_array().unwrap().iter().map(|ip| ip["address"].as_str().unwrap().to_string()).collect()
}

fn add_ok(suite: &Suite, id: &str, conf: &Value) -> String {
    addresses(&add(suite, id, conf)).join(" ")
}

fn ok(out: Output, what: &str) {
    assert!(out.ok(), "{what}: {out:?}");
}

/// The reference's error code for configuration errors (it reports everything as internal).
fn config_error_code(suite: &Suite) -> u64 {
    if suite.is_reference() {
        999
    } else {
        7
    }
}

#[test]
fn results_in_every_version() {
    require_root!();
    let resolv = DataDir::new("resolv");
    let resolv_conf = resolv.0.join("resolv.conf");
    fs::write(&resolv_conf, "# test\nnameserver 10.1.0.53\nnameserver fd00::53\ndomain example.test\nsearch a.test b.test\noptions ndots:2\n").unwrap();
    for suite in suites() {
        for version in ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
            if suite.is_reference() && version == "1.1.0" {
                continue;
            }
            let dd = DataDir::new("versions");
            let c = conf(
                version,
                &dd,
                json!({"ranges": [[{"subnet": "10.254.0.0/24"}], [{"subnet": "fd00:254::/120"}]],
                       "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}, {"dst": "192.168.0.0/16", "gw": "10.254.0.9"}],
                       "resolvConf": resolv_conf.to_str().unwrap()}),
            );
            let out = add(&suite, "ctr1", &c);
            assert!(out.ok(), "{} {version}: {out:?}", suite.name);
            let r = out.json().unwrap();
            let what = format!("{} {version}", suite.name);
            assert_eq!(r["cniVersion"], version, "{what}");
            let dns = json!({"nameservers": ["10.1.0.53", "fd00::53"], "domain": "example.test",
                             "search": ["a.test", "b.test"], "options": ["ndots:2"]});
            assert_eq!(r["dns"], dns, "{what}");
            assert!(r.get("interfaces").is_none(), "{what}: IPAM results carry no interfaces");
            if version < "0.3.0" {
                assert_eq!(
                    r["ip4"],
                    json!({"ip": "10.254.0.2/24", "gateway": "10.254.0.1",
                           "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.254.0.9"}]}),
                    "{what}"
                );
                assert_eq!(
                    r["ip6"],
                    json!({"ip": "fd00:254::2/120", "gateway": "fd00:254::1", "routes": [{"dst": "::/0"}]}),
                    "{what}"
                );
            } else {
                let mut ips = json!([{"address": "10.254.0.2/24", "gateway": "10.254.0.1"},
                                     {"address": "fd00:254::2/120", "gateway": "fd00:254::1"}]);
                if version < "1.0.0" {
                    ips[0]["version"] = json!("4");
                    ips[1]["version"] = json!("6");
                }
                assert_eq!(r["ips"], ips, "{what}");
                assert_eq!(
                    r["routes"],
                    json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}, {"dst": "192.168.0.0/16", "gw": "10.254.0.9"}]),
                    "{what}"
                );
            }
            assert_eq!(dd.reserved(), ["10.254.0.2", "fd00:254::2"].map(String::from).into(), "{what}");
        }
    }
}

#[test]
fn observed_sequence_on_a_29() {
    require_root!();
    for suite in suites() {
        let dd = DataDir::new("seq");
        let c = v4_29("1.0.0", &dd);
        assert_eq!(add_ok(&suite, "a", &c), "10.252.0.2/29");
        assert_eq!(add_ok(&suite, "b", &c), "10.252.0.3/29");
        assert_eq!(add_ok(&suite, "c", &c), "10.252.0.4/29");
        assert_eq!(add_ok(&suite, "d", &c), "10.252.0.5/29");
        ok(call(&suite, "DEL", "b", "eth0", "", &c), "DEL b");
        assert_eq!(add_ok(&suite, "e", &c), "10.252.0.6/29", "{}: round robin, not the freed .3", suite.name);
        assert_eq!(add_ok(&suite, "f", &c), "10.252.0.3/29", "{}: wraps", suite.name);
        let (code, msg, _) = add(&suite, "g", &c).error().unwrap();
        assert_eq!(code, 999);
        assert_eq!(
            msg, "failed to allocate for range 0: no IP addresses available in range set: 10.252.0.1-10.252.0.6",
            "{}",
            suite.name
        );
        assert_eq!(dd.files()["last_reserved_ip.0"], "10.252.0.3", "{}", suite.name);
    }
}

#[test]
fn small_subnets_custom_gateways_and_ipv6_edges() {
    require_root!();
    for suite in suites() {
        let dd = DataDir::new("small");
        let gw6 = conf("1.0.0", &dd, json!({"ranges": [[{"subnet": "10.252.0.0/29", "gateway": "10.252.0.6"}]]}));
        assert_eq!(add_ok(&suite, "a", &gw6), "10.252.0.1/29", "{}", suite.name);

        let dd = DataDir::new("small");
        let s30 = conf("1.0.0", &dd, json!({"ranges": [[{"subnet": "10.253.0.4/30"}]]}));
        assert_eq!(add_ok(&suite, "a", &s30), "10.253.0.6/30", "{}", suite.name);
        assert!(!add(&suite, "b", &s30).ok(), "{}: a /30 holds one address", suite.name);

        let dd = DataDir::new("small");
        let v6 = conf("1.0.0", &dd, json!({"ranges": [[{"subnet": "fd00::/126"}]]}));
        assert_eq!(add_ok(&suite, "a", &v6), "fd00::2/126", "{}", suite.name);
        assert_eq!(add_ok(&suite, "b", &v6), "fd00::3/126", "{}: the last IPv6 address is allocatable", suite.name);
        assert!(!add(&suite, "c", &v6).ok());

        // Canonical compressed IPv6 file names, whatever spelling the request used.
        let dd = DataDir::new("small");
        let c = conf("1.0.0", &dd, json!({"ranges": [[{"subnet": "FD00:0:0:1::/64"}]]}));
        let out = call(&suite, "ADD", "a", "eth0", "IP=fd00:0:0:1:0:0:0:5", &c);
        assert_eq!(addresses(&out), ["fd00:0:0:1::5/64"], "{}", suite.name);
        assert_eq!(dd.reserved(), ["fd00:0:0:1::5".to_string()].into(), "{}", suite.name);

        // A range in the middle of a subnet, spanning two ranges in one set.
        let dd = DataDir::new("small");
        let c = conf(
            "1.0.0",
            &dd,
            json!({"ranges": [[{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.10", "rangeEnd": "10.1.0.11"},
                                {"subnet": "10.2.0.0/24", "rangeStart": "10.2.0.20", "rangeEnd": "10.2.0.20"}]]}),
        );
        let got: Vec<String> = ["a", "b", "c"].iter().map(|id| add_ok(&suite, id, &c)).collect();
        assert_eq!(got, ["10.1.0.10/24", "10.1.0.11/24", "10.2.0.20/24"], "{}", suite.name);
        let out = add(&suite, "d", &c);
        assert!(out.error().unwrap().1.ends_with("10.1.0.10-10.1.0.11,10.2.0.20-10.2.0.20"), "{out:?}");
    }
}

#[test]
fn invalid_configurations_are_rejected_and_allocate_nothing() {
    require_root!();
    // (ipam, version, our message, whether the reference prints the same text)
    let cases: Vec<(Value, &str, &str, bool)> = vec![
        (json!({}), "1.0.0", "no IP ranges specified", true),
        (json!({"ranges": [[]]}), "1.0.0", "invalid range set 0: empty range set", true),
        (
            json!({"ranges": [[{"subnet": "10.9.0.5/24"}]]}),
            "1.0.0",
            "invalid range set 0: Network has host bits set. For a subnet mask of length 24 the network address is 10.9.0.0 (subnet 10.9.0.5/24)",
            false,
        ),
        (
            json!({"ranges": [[{"subnet": "10.9.0.0/31"}]]}),
            "1.0.0",
            "invalid range set 0: Network 10.9.0.0/31 too small to allocate from",
            true,
        ),
        (
            json!({"ranges": [[{"subnet": "10.9.0.0/32"}]]}),
            "1.0.0",
            "invalid range set 0: Network 10.9.0.0/32 too small to allocate from",
            true,
        ),
        (
            json!({"ranges": [[{"subnet": "fd00::/127"}]]}),
            "1.0.0",
            "invalid range set 0: Network fd00::/127 too small to allocate from",
            true,
        ),
        (
            json!({"ranges": [[{"subnet": "fd00::/128"}]]}),
            "1.0.0",
            "invalid range set 0: Network fd00::/128 too small to allocate from",
            true,
        ),
        (
            json!({"ranges": [[{"subnet": "10.9.0.0/24", "rangeStart": "10.8.0.1"}]]}),
            "1.0.0",
            "invalid range set 0: RangeStart 10.8.0.1 not in network 10.9.0.0/24",
            true,
        ),
        (
            json!({"ranges": [[{"subnet": "10.9.0.0/24", "rangeEnd": "10.8.0.1"}]]}),
            "1.0.0",
            "invalid range set 0: RangeEnd 10.8.0.1 not in network 10.9.0.0/24",
            true,
        ),
        (
            json!({"ranges": [[{"subnet": "10.9.0.0/24"}, {"subnet": "10.9.0.0/25"}]]}),
            "1.0.0",
            "invalid range set 0: subnets 10.9.0.1-10.9.0.254 and 10.9.0.1-10.9.0.126 overlap",
            true,
        ),
        (
            json!({"ranges": [[{"subnet": "10.9.0.0/24"}], [{"subnet": "10.9.0.0/25"}]]}),
            "1.0.0",
            "range set 0 overlaps with 1",
            true,
        ),
        (
            json!({"subnet": "10.9.0.0/16", "ranges": [[{"subnet": "fd00::/64"}], [{"subnet": "10.9.3.0/24"}]]}),
            "1.0.0",
            "range set 0 overlaps with 2",
            true,
        ),
        (
            json!({"ranges": [[{"subnet": "10.9.0.0/24"}, {"subnet": "fd00::/64"}]]}),
            "1.0.0",
            "invalid range set 0: mixed address families: 10.9.0.0/24 and fd00::/64",
            false,
        ),
        (
            json!({"ranges": [[{"subnet": "10.9.0.0/24"}], [{"subnet": "10.10.0.0/24"}]]}),
            "0.2.0",
            "CNI version 0.2.0 does not support more than 1 address per family",
            true,
        ),
    ];
    for suite in suites() {
        for (ipam, version, msg, same) in &cases {
            let dd = DataDir::new("invalid");
            let out = add(&suite, "ctr1", &conf(version, &dd, ipam.clone()));
            let (code, got, _) = out.error().unwrap_or_else(|e| panic!("{} {ipam}: {e}", suite.name));
            assert_eq!(code, config_error_code(&suite), "{} {ipam}", suite.name);
            if !suite.is_reference() || *same {
                assert_eq!(&got, msg, "{} {ipam}", suite.name);
            }
            assert!(dd.reserved().is_empty(), "{} {ipam}", suite.name);
        }
        let out = add(&suite, "ctr1", &json!({"cniVersion": "1.0.0", "name": NET, "type": "bridge"}));
        let (code, msg, _) = out.error().unwrap();
        assert_eq!((code, msg.as_str()), (config_error_code(&suite), "IPAM config missing 'ipam' key"));
    }

    // Stricter than the reference: it takes these and misbehaves later.
    let suite = ours();
    for (ipam, msg) in [
        (
            json!({"ranges": [[{"subnet": "10.9.0.0/29", "gateway": "10.8.0.1"}]]}),
            "invalid range set 0: gateway 10.8.0.1 not in network 10.9.0.0/29",
        ),
        (
            json!({"ranges": [[{"subnet": "10.9.0.0/24", "rangeStart": "10.9.0.50", "rangeEnd": "10.9.0.40"}]]}),
            "invalid range set 0: RangeStart 10.9.0.50 is after RangeEnd 10.9.0.40 in network 10.9.0.0/24",
        ),
        (json!({"ranges": [[{"rangeStart": "10.0.0.1"}]]}), "invalid range set 0: range has no subnet"),
    ] {
        let dd = DataDir::new("invalid");
        let (code, got, _) = add(&suite, "ctr1", &conf("1.0.0", &dd, ipam)).error().unwrap();
        assert_eq!((code, got.as_str()), (7, msg));
    }
}

#[test]
fn requested_addresses_from_every_source() {
    require_root!();
    for suite in suites() {
        let dd = DataDir::new("req");
        let base = conf("1.0.0", &dd, json!({"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00:1::/64"}]]}));
        let name = suite.name;

        let out = call(&suite, "ADD", "a", "eth0", "IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.1.0.50", &base);
        assert_eq!(addresses(&out), ["10.1.0.50/24", "fd00:1::2/64"], "{name}");

        let mut c = base.clone();
        c["args"] = json!({"cni": {"ips": ["fd00:1::77", "10.1.0.77/24"]}});
        assert_eq!(addresses(&add(&suite, "b", &c)), ["10.1.0.77/24", "fd00:1::77/64"], "{name}");

        // A runtime may send the same address twice (podman does); that is one request.
        let mut c = base.clone();
        c["runtimeConfig"] = json!({"ips": ["10.1.0.88", "10.1.0.88"]});
        // Round robin continues after the last reservation of the set, the requested ::77.
        assert_eq!(addresses(&add(&suite, "c", &c)), ["10.1.0.88/24", "fd00:1::78/64"], "{name}");

        let before = dd.reserved();
        let failures = [
            ("IP=10.1.0.1", "failed to allocate for range 0: requested ip 10.1.0.1 is subnet's gateway"),
            (
                "IP=10.1.0.50",
                "failed to allocate for range 0: requested IP address 10.1.0.50 is not available in range set 10.1.0.1-10.1.0.254",
            ),
            ("IP=10.2.0.5", "failed to allocate all requested IPs: 10.2.0.5"),
        ];
        for (args, msg) in failures {
            let out = call(&suite, "ADD", "d", "eth0", args, &base);
            let (code, got, _) = out.error().unwrap();
            assert_eq!((code, got.as_str()), (999, msg), "{name} {args}");
            assert_eq!(dd.reserved(), before, "{name} {args}: nothing stays allocated");
        }
        // A taken address in the second set: the first set's fresh reservation is rolled back.
        let mut c = base.clone();
        c["runtimeConfig"] = json!({"ips": ["fd00:1::77"]});
        let (_, msg, _) = add(&suite, "e", &c).error().unwrap();
        assert!(msg.starts_with("failed to allocate for range 1: requested IP address fd00:1::77"), "{name}: {msg}");
        assert_eq!(dd.reserved(), before, "{name}");

        // runtimeConfig.ipRanges are prepended to the configured ranges.
        let dd2 = DataDir::new("req");
        let mut c = conf("1.0.0", &dd2, json!({"ranges": [[{"subnet": "10.1.0.0/24"}]]}));
        c["runtimeConfig"] = json!({"ipRanges": [[{"subnet": "10.7.0.0/24", "rangeStart": "10.7.0.100"}]]});
        assert_eq!(addresses(&add(&suite, "a", &c)), ["10.7.0.100/24", "10.1.0.2/24"], "{name}");
        assert!(dd2.files().contains_key("last_reserved_ip.1"), "{name}");
    }

    // Ours reads a comma list in IP=, as newer runtimes send it.
    let suite = ours();
    let dd = DataDir::new("req");
    let base = conf("1.0.0", &dd, json!({"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00:1::/64"}]]}));
    let out = call(&suite, "ADD", "a", "eth0", "IP=fd00:1::9,10.1.0.9", &base);
    assert_eq!(addresses(&out), ["10.1.0.9/24", "fd00:1::9/64"]);
    let (code, msg, _) = call(&suite, "ADD", "b", "eth0", "IP=10.1.0.x", &base).error().unwrap();
    assert_eq!((code, msg.as_str()), (4, "CNI_ARGS: invalid IP address \"10.1.0.x\" in IP=10.1.0.x"));
}

#[test]
fn one_address_per_attachment() {
    require_root!();
    for suite in suites() {
        let dd = DataDir::new("dup");
        let c = conf("1.0.0", &dd, json!({"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00:1::/64"}]]}));
        assert_eq!(add_ok(&suite, "ctr1", &c), "10.1.0.2/24 fd00:1::2/64");
        let (code, msg, _) = add(&suite, "ctr1", &c).error().unwrap();
        assert_eq!(
            (code, msg.as_str()),
            (999, "failed to allocate for range 0: 10.1.0.2 has been allocated to ctr1, duplicate allocation is not allowed"),
            "{}",
            suite.name
        );
        let second = call(&suite, "ADD", "ctr1", "eth1", "", &c);
        assert_eq!(addresses(&second), ["10.1.0.3/24", "fd00:1::3/64"], "{}", suite.name);
        assert_eq!(dd.files()["10.1.0.2"], "ctr1\r\neth0");
        assert_eq!(dd.files()["fd00:1::3"], "ctr1\r\neth1");
        assert_eq!(dd.reserved().len(), 4, "{}: the refused ADD changed nothing", suite.name);
    }
}

#[test]
fn del_releases_by_attachment_and_always_succeeds() {
    require_root!();
    for suite in suites() {
        let name = suite.name;
        let dd = DataDir::new("del");
        let c = conf("1.0.0", &dd, json!({"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00:1::/64"}]]}));
        add_ok(&suite, "ctr1", &c);
        addresses(&call(&suite, "ADD", "ctr1", "eth1", "", &c));
        add_ok(&suite, "ctr2", &c);
        ok(call(&suite, "DEL", "ctr1", "eth0", "", &c), "DEL");
        assert_eq!(
            dd.reserved(),
            ["10.1.0.3", "10.1.0.4", "fd00:1::3", "fd00:1::4"].map(String::from).into(),
            "{name}: only ctr1/eth0 released"
        );
        ok(call(&suite, "DEL", "ctr1", "eth0", "", &c), "repeated DEL");
        ok(call(&suite, "DEL", "never-added", "eth0", "", &c), "DEL of an unknown container");

        // A reservation written before interface names were recorded holds just the ID.
        fs::write(dd.net().join("10.1.0.99"), "legacy-ctr").unwrap();
        ok(call(&suite, "DEL", "legacy-ctr", "eth0", "", &c), "DEL legacy");
        assert!(!dd.reserved().contains("10.1.0.99"), "{name}: legacy record released");
        assert!(dd.files().contains_key("last_reserved_ip.0") && dd.net().join("lock").exists(), "{name}");

        // No network directory at all.
        let empty = DataDir::new("del");
        ok(call(&suite, "DEL", "ctr1", "eth0", "", &v4_29("1.0.0", &empty)), "DEL without a store");
        if !suite.is_reference() {
            assert!(!empty.net().exists(), "DEL does not create the store");
            // The ranges no longer validate, the reservation is still released.
            let bad = conf("1.0.0", &dd, json!({"ranges": [[{"subnet": "10.1.0.5/24"}]]}));
            ok(call(&suite, "DEL", "ctr2", "eth0", "", &bad), "DEL with invalid ranges");
            assert_eq!(dd.reserved(), ["10.1.0.3", "fd00:1::3"].map(String::from).into());
        }
    }
}

#[test]
fn check_finds_the_reservation() {
    require_root!();
    for suite in suites() {
        let dd = DataDir::new("check");
        let c = v4_29("1.0.0", &dd);
        add_ok(&suite, "ctr1", &c);
        ok(call(&suite, "CHECK", "ctr1", "eth0", "", &c), "CHECK");
        let (code, msg, _) = call(&suite, "CHECK", "ctr2", "eth0", "", &c).error().unwrap();
        assert_eq!((code, msg.as_str()), (999, "host-local: Failed to find address added by container ctr2"));
        fs::write(dd.net().join("10.252.0.6"), "legacy-ctr").unwrap();
        ok(call(&suite, "CHECK", "legacy-ctr", "eth0", "", &c), "CHECK legacy");
        ok(call(&suite, "DEL", "ctr1", "eth0", "", &c), "DEL");
        assert!(!call(&suite, "CHECK", "ctr1", "eth0", "", &c).ok(), "{}: CHECK after DEL", suite.name);
    }
}

#[test]
fn gc_releases_what_the_runtime_no_longer_knows() {
    require_root!();
    let suite = ours();
    let dd = DataDir::new("gc");
    let c = conf("1.1.0", &dd, json!({"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00:1::/64"}]]}));
    add_ok(&suite, "keep", &c);
    addresses(&call(&suite, "ADD", "keep", "eth1", "", &c));
    add_ok(&suite, "gone", &c);
    fs::write(dd.net().join("10.1.0.200"), "keep").unwrap();
    fs::write(dd.net().join("10.1.0.201"), "stale-legacy").unwrap();
    let lock_before = fs::metadata(dd.net().join("lock")).unwrap();
    let last_before: Vec<String> = ["last_reserved_ip.0", "last_reserved_ip.1"].map(|f| dd.files()[f].clone()).into();

    // No attachment list: the runtime did not say what is valid, so nothing is touched.
    ok(call(&suite, "GC", "", "", "", &c), "GC without attachments");
    assert_eq!(dd.reserved().len(), 8);

    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    ok(call(&suite, "GC", "", "", "", &gc), "GC");
    assert_eq!(dd.reserved(), ["10.1.0.2", "10.1.0.200", "fd00:1::2"].map(String::from).into());
    assert_eq!(fs::metadata(dd.net().join("lock")).unwrap().ino(), lock_before.ino(), "lock untouched");
    let last_after: Vec<String> = ["last_reserved_ip.0", "last_reserved_ip.1"].map(|f| dd.files()[f].clone()).into();
    assert_eq!(last_after, last_before);

    // The older key name works too, and an empty list releases everything.
    let mut gc = c.clone();
    gc["cni.dev/attachments"] = json!([]);
    ok(call(&suite, "GC", "", "", "", &gc), "GC with the legacy key");
    assert!(dd.reserved().is_empty());
    assert!(dd.net().join("lock").exists() && dd.files().contains_key("last_reserved_ip.0"));
    // The freed addresses are allocatable again.
    let mut again = c.clone();
    again["runtimeConfig"] = json!({"ips": ["10.1.0.3", "fd00:1::3"]});
    assert_eq!(add_ok(&suite, "new", &again), "10.1.0.3/24 fd00:1::3/64");

    match reference() {
        // v1.1.1 predates GC; at 1.0.0 it is not even a verb the skeleton dispatches.
        Some(r) => assert!(!call(&r, "GC", "", "", "", &conf("1.0.0", &dd, json!({}))).ok()),
        None => skip("reference plugins are not installed"),
    }
}

#[test]
fn status_reports_exhaustion_and_unusable_stores() {
    require_root!();
    let suite = ours();
    let dd = DataDir::new("status");
    let c = conf("1.1.0", &dd, json!({"ranges": [[{"subnet": "10.253.0.4/30"}], [{"subnet": "fd00::/64"}]]}));
    ok(call(&suite, "STATUS", "", "", "", &c), "STATUS on an empty store");
    add_ok(&suite, "a", &c);
    let (code, msg, _) = call(&suite, "STATUS", "", "", "", &c).error().unwrap();
    assert_eq!(
        (code, msg.as_str()),
        (50, "host-local: no IP addresses available in range set 0: 10.253.0.5-10.253.0.6")
    );
    ok(call(&suite, "DEL", "a", "eth0", "", &c), "DEL");
    ok(call(&suite, "STATUS", "", "", "", &c), "STATUS after DEL");

    // A data dir that cannot hold a directory (a regular file is in the way).
    let blocked = DataDir::new("status");
    let file = blocked.0.join("file");
    fs::write(&file, "").unwrap();
    let mut c = v4_29("1.1.0", &blocked);
    c["ipam"]["dataDir"] = json!(file.to_str().unwrap());
    let (code, msg, _) = call(&suite, "STATUS", "", "", "", &c).error().unwrap();
    assert_eq!(code, 50, "{msg}");
    assert!(msg.contains(&format!("data directory {}/{NET} is not usable", file.display())), "{msg}");
    // Invalid configuration stays a configuration error.
    let (code, _, _) = call(&suite, "STATUS", "", "", "", &conf("1.1.0", &dd, json!({}))).error().unwrap();
    assert_eq!(code, 7);
}

#[test]
fn fifty_concurrent_adds_get_fifty_addresses() {
    require_root!();
    for suite in suites() {
        let dd = DataDir::new("conc");
        let c = conf("1.0.0", &dd, json!({"ranges": [[{"subnet": "10.5.0.0/24"}], [{"subnet": "fd00:5::/64"}]]}));
        let outs: Vec<Output> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..50)
                .map(|i| {
                    s.spawn({
                        let (suite, c) = (&suite, &c);
                        move || add(suite, &format!("ctr{i}"), c)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut all = BTreeSet::new();
        for out in &outs {
            for a in addresses(out) {
                assert!(all.insert(a.clone()), "{}: {a} handed out twice", suite.name);
            }
        }
        assert_eq!(all.len(), 100, "{}", suite.name);
        assert_eq!(dd.reserved().len(), 100, "{}", suite.name);
        let owners: BTreeSet<String> =
            dd.files().into_iter().filter(|(n, _)| !n.starts_with("last_")).map(|(_, v)| v).collect();
        assert_eq!(owners.len(), 50, "{}: every container holds its own files", suite.name);
        // Concurrent DELs leave only the bookkeeping files.
        std::thread::scope(|s| {
            for i in 0..50 {
                let (suite, c) = (&suite, &c);
                s.spawn(move || ok(call(suite, "DEL", &format!("ctr{i}"), "eth0", "", c), "DEL"));
            }
        });
        assert!(dd.reserved().is_empty(), "{}", suite.name);
        let leftovers: Vec<String> =
            fs::read_dir(dd.net()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert!(leftovers.iter().all(|n| n == "lock" || n.starts_with("last_reserved_ip.")), "{leftovers:?}");
    }
}

/// Runs the same script with `first` then `second` sharing one store.
fn interop(first: &Suite, second: &Suite) {
    let what = format!("{} then {}", first.name, second.name);
    let dd = DataDir::new("interop");
    let c = conf("1.0.0", &dd, json!({"ranges": [[{"subnet": "10.252.0.0/29"}], [{"subnet": "fd00:252::/124"}]]}));
    assert_eq!(add_ok(first, "a", &c), "10.252.0.2/29 fd00:252::2/124");
    assert_eq!(add_ok(first, "b", &c), "10.252.0.3/29 fd00:252::3/124");
    assert_eq!(add_ok(first, "c", &c), "10.252.0.4/29 fd00:252::4/124");
    ok(call(first, "DEL", "b", "eth0", "", &c), "DEL b");
    fs::write(dd.net().join("10.252.0.6"), "legacy").unwrap();

    // The second suite continues the round robin, sees every reservation, and releases them.
    assert_eq!(add_ok(second, "d", &c), "10.252.0.5/29 fd00:252::5/124", "{what}");
    assert_eq!(add_ok(second, "e", &c), "10.252.0.3/29 fd00:252::6/124", "{what}: skips held .6, wraps to .3");
    let (_, msg, _) = add(second, "a", &c).error().unwrap();
    assert!(msg.contains("10.252.0.2 has been allocated to a, duplicate allocation is not allowed"), "{what}: {msg}");
    assert!(!add(second, "f", &c).ok(), "{what}: the IPv4 set is full");
    assert!(!dd.reserved().contains("fd00:252::7"), "{what}: the failed ADD left nothing");
    ok(call(second, "CHECK", "a", "eth0", "", &c), "CHECK a");
    ok(call(second, "CHECK", "legacy", "eth0", "", &c), "CHECK legacy");
    for id in ["a", "c", "d", "e", "legacy"] {
        ok(call(second, "DEL", id, "eth0", "", &c), "DEL");
    }
    assert!(dd.reserved().is_empty(), "{what}: {:?}", dd.files());
    // And back: the first suite picks up after the second's last reservation.
    assert_eq!(add_ok(first, "g", &c), "10.252.0.4/29 fd00:252::7/124", "{what}");
}

#[test]
fn store_written_by_the_reference_is_used_by_ours() {
    require_root!();
    let Some(reference) = reference() else { return skip("reference plugins are not installed") };
    interop(&reference, &ours());
}

#[test]
fn store_written_by_ours_is_used_by_the_reference() {
    require_root!();
    let Some(reference) = reference() else { return skip("reference plugins are not installed") };
    interop(&ours(), &reference);
}

/// Ours keeps an owner index in the lock file; a reference call right before each of ours
/// (well inside one tick of a coarse file-system clock) must still be seen in full.
#[test]
fn ours_sees_each_reference_change_made_between_its_calls() {
    require_root!();
    let Some(reference) = reference() else { return skip("reference plugins are not installed") };
    let ours = ours();
    let dd = DataDir::new("alternate");
    let c = conf("1.0.0", &dd, json!({"ranges": [[{"subnet": "10.252.0.0/28"}]]}));
    for i in 0..20 {
        let (o, r) = (format!("o{i}"), format!("r{i}"));
        add_ok(&ours, &o, &c);
        let held = add_ok(&reference, &r, &c);
        let (_, msg, _) = add(&ours, &r, &c).error().unwrap();
        assert!(msg.contains(&format!("has been allocated to {r}")), "round {i}: {msg}");
        ok(call(&reference, "DEL", &o, "eth0", "", &c), "reference DEL of ours");
        assert!(!call(&ours, "CHECK", &o, "eth0", "", &c).ok(), "round {i}: released by the reference");
        ok(call(&ours, "CHECK", &r, "eth0", "", &c), "CHECK of the reference's");
        ok(call(&ours, "DEL", &r, "eth0", "", &c), "our DEL of the reference's");
        assert!(dd.reserved().is_empty(), "round {i}: {held} still held: {:?}", dd.files());
    }
}

#[test]
fn store_files_are_identical_to_the_reference() {
    require_root!();
    let Some(reference) = reference() else { return skip("reference plugins are not installed") };
    let mut stores = Vec::new();
    for suite in [ours(), reference] {
        let dd = DataDir::new("bytes");
        let c =
            conf("0.4.0", &dd, json!({"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "2001:db8:0:0:1::/80"}]]}));
        add_ok(&suite, "ctr-1", &c);
        addresses(&call(&suite, "ADD", "ctr-1", "net1", "", &c));
        add_ok(&suite, "ctr-2", &c);
        ok(call(&suite, "DEL", "ctr-2", "eth0", "", &c), "DEL");
        add_ok(&suite, "ctr-3", &c);
        let files = dd.files();
        assert!(dd.net().join("lock").exists());
        stores.push((suite.name, files));
    }
    assert_eq!(stores[0].1, stores[1].1, "file names and bytes must match the reference");
    assert_eq!(stores[0].1["2001:db8::1:0:0:2"], "ctr-1\r\neth0");
}

/// p50 of ADD and DEL, ours against the reference. Run with the release build:
/// `cargo build --release -p cni-plugins && CNI_TEST_PLUGIN_DIR=target/release cargo test
/// -p conformance --test host_local -- --ignored --nocapture p50`.
#[test]
#[ignore = "benchmark"]
fn p50_add_del() {
    require_root!();
    const N: usize = 200;
    let mut report = Vec::new();
    let suites = suites();
    let dirs: Vec<DataDir> = suites.iter().map(|_| DataDir::new("bench")).collect();
    let confs: Vec<Value> = dirs
        .iter()
        .map(|dd| {
            conf("1.0.0", dd, json!({"ranges": [[{"subnet": "10.60.0.0/16"}]], "routes": [{"dst": "0.0.0.0/0"}]}))
        })
        .collect();
    let mut times: Vec<[Vec<f64>; 2]> = suites.iter().map(|_| [Vec::new(), Vec::new()]).collect();
    // Interleaved, so drift in machine load hits both suites alike.
    for (verb, cmd) in ["ADD", "DEL"].into_iter().enumerate() {
        for i in 0..N {
            for (s, suite) in suites.iter().enumerate() {
                let t = std::time::Instant::now();
                let out = call(suite, cmd, &format!("bench{i}"), "eth0", "", &confs[s]);
                times[s][verb].push(t.elapsed().as_secs_f64() * 1000.0);
                assert!(out.ok(), "{} {cmd}: {out:?}", suite.name);
            }
        }
    }
    for (s, suite) in suites.iter().enumerate() {
        for (verb, name) in ["ADD", "DEL"].iter().enumerate() {
            let mut t = times[s][verb].clone();
            t.sort_by(f64::total_cmp);
            report.push(format!(
                "{:<9} {name}: p50 {:.3} ms  p90 {:.3} ms  ({} dir {})",
                suite.name,
                t[N / 2],
                t[N * 9 / 10],
                N,
                suite.dir.display()
            ));
        }
    }
    eprintln!("{}", report.join("\n"));
}

/// [`call`] that must finish within `secs`: a plugin that hangs (a FIFO opened as a file) is
/// killed and the test fails, rather than hanging the suite.
fn call_within(suite: &Suite, command: &str, id: &str, conf: &Value, secs: u64) -> Output {
    use std::io::Write;
    let path = suite.dir.display().to_string();
    let env = [
        ("CNI_COMMAND", command),
        ("CNI_PATH", path.as_str()),
        ("CNI_CONTAINERID", id),
        ("CNI_NETNS", "/var/run/netns/hl-unused"),
        ("CNI_IFNAME", "eth0"),
    ];
    let mut child = conformance::plugin_command(&suite.plugin("host-local"), &[], &env, None).unwrap().spawn().unwrap();
    child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{}: {command} with {conf} did not finish within {secs} s", suite.name);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let (stdout, stderr) = conformance::read_outputs(&mut child);
    Output { code: child.wait().unwrap().code().unwrap_or(-1), stdout, stderr }
}

/// Files of the store, and `resolvConf`, are opened as what they must be: a symlink planted as
/// `lock` or `last_reserved_ip.0` is not written through, and a FIFO or a device where a file
/// should be is refused at once instead of hanging or reading without end. The reference writes
/// through the links and hangs on the FIFO, so this runs against ours.
#[test]
fn planted_links_fifos_and_devices_are_refused_at_once() {
    require_root!();
    let suite = ours();
    let victims = DataDir::new("victim");
    let victim = victims.0.join("victim");
    let refused = |dd: &DataDir, c: &Value, what: &str, needle: &str| {
        let out = call_within(&suite, "ADD", "ctr1", c, 5);
        let (code, msg, _) = out.error().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(code, 999, "{what}: {msg}");
        assert!(msg.contains(needle), "{what}: {msg}");
        assert!(dd.reserved().is_empty(), "{what}: a refused ADD reserved an address");
        assert_eq!(fs::read(&victim).unwrap(), b"precious", "{what}: written through a link");
    };
    fs::write(&victim, "precious").unwrap();

    let dd = DataDir::new("planted-lock");
    let c = v4_29("1.0.0", &dd);
    fs::create_dir(dd.net()).unwrap();
    std::os::unix::fs::symlink(&victim, dd.net().join("lock")).unwrap();
    refused(&dd, &c, "lock is a symlink", "lock: is a symbolic link");

    let dd = DataDir::new("planted-last");
    let c = v4_29("1.0.0", &dd);
    fs::create_dir(dd.net()).unwrap();
    std::os::unix::fs::symlink(&victim, dd.net().join("last_reserved_ip.0")).unwrap();
    refused(&dd, &c, "last_reserved_ip.0 is a symlink", "last_reserved_ip.0: is a symbolic link");

    let dd = DataDir::new("planted-net");
    let c = v4_29("1.0.0", &dd);
    std::os::unix::fs::symlink(&victims.0, dd.net()).unwrap();
    refused(&dd, &c, "the network directory is a symlink", "is a symbolic link, not a directory");
    assert_eq!(fs::read_dir(&victims.0).unwrap().count(), 1, "nothing created through the link");

    let dd = DataDir::new("planted-fifo");
    let c = v4_29("1.0.0", &dd);
    fs::create_dir(dd.net()).unwrap();
    let fifo = dd.net().join("10.252.0.5");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let out = call_within(&suite, "ADD", "ctr1", &c, 5);
    let msg = out.error().unwrap().1;
    assert!(msg.contains("10.252.0.5: is a FIFO, not a regular file"), "{msg}");
    let out = call_within(&suite, "DEL", "ctr1", &c, 5);
    assert!(out.error().unwrap().1.contains("is a FIFO"), "DEL names the FIFO too");
    fs::remove_file(&fifo).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &fifo).unwrap();
    let msg = call_within(&suite, "ADD", "ctr1", &c, 5).error().unwrap().1;
    assert!(msg.contains("10.252.0.5: is a symbolic link"), "{msg}");

    let dd = DataDir::new("resolv");
    let pipe = dd.0.join("resolv.fifo");
    nix::unistd::mkfifo(&pipe, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let to_zero = dd.0.join("resolv.link");
    std::os::unix::fs::symlink("/dev/zero", &to_zero).unwrap();
    for (path, kind) in [
        (PathBuf::from("/dev/zero"), "a character device"),
        (PathBuf::from("/dev/urandom"), "a character device"),
        (to_zero, "a character device"),
        (pipe, "a FIFO"),
    ] {
        let c = conf("1.0.0", &dd, json!({"ranges": [[{"subnet": "10.252.0.0/29"}]], "resolvConf": path}));
        let what = format!("resolvConf {}", path.display());
        let out = call_within(&suite, "ADD", "ctr1", &c, 5);
        let msg = out.error().unwrap().1;
        assert!(msg.contains(&format!("failed to read resolvConf {}", path.display())), "{what}: {msg}");
        assert!(msg.contains(&format!("is {kind}, not a regular file")), "{what}: {msg}");
        assert!(dd.reserved().is_empty(), "{what}");
    }
    // /etc/resolv.conf is often a symlink: a link to a regular file is read.
    let real = dd.0.join("resolv.real");
    fs::write(&real, "nameserver 192.0.2.53\n").unwrap();
    let link = dd.0.join("resolv.conf");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let c = conf("1.0.0", &dd, json!({"ranges": [[{"subnet": "10.252.0.0/29"}]], "resolvConf": link}));
    let out = call_within(&suite, "ADD", "ctr1", &c, 5);
    assert!(out.ok(), "{out:?}");
    assert_eq!(out.json().unwrap()["dns"]["nameservers"], json!(["192.0.2.53"]));
}

/// A refused ADD leaves every `last_reserved_ip` hint as it was, even when the refusal comes
/// from a later range set than one that already had its address (the reference advances the
/// first set's hint), so the next ADD gets the address it would have had.
#[test]
fn a_refused_add_leaves_the_hints_alone() {
    require_root!();
    let suite = ours();
    let dd = DataDir::new("hints");
    // The second set has one address: the second container's ADD fails there.
    let c = conf("1.0.0", &dd, json!({"ranges": [[{"subnet": "10.254.0.0/24"}], [{"subnet": "10.255.0.0/30"}]]}));
    assert_eq!(add_ok(&suite, "a", &c), "10.254.0.2/24 10.255.0.2/30");
    let before = dd.files();
    let (_, msg, _) = add(&suite, "b", &c).error().unwrap();
    assert!(msg.contains("no IP addresses available in range set"), "{msg}");
    assert_eq!(dd.files(), before, "the refused ADD changed the store");
    ok(call(&suite, "DEL", "a", "eth0", "", &c), "DEL");
    assert_eq!(add_ok(&suite, "b", &c), "10.254.0.3/24 10.255.0.2/30");
}
