//! `CNI_FIREWALL_FAST_PATHS=0` (issue 14) makes the rule layer take its plain paths, and those
//! leave the same kernel state. The fast paths themselves are listed in
//! `plugins/src/firewall/fastpath.rs`; the bridge and portmap tests run a second time with the
//! variable set (`scripts/dev test`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use conformance::{require_root, Attachment, FakeHost, Runtime};
use serde_json::{json, Value};

fn list(host: &FakeHost) -> Value {
    let bridge = json!({"type": "bridge", "bridge": "cnifp0", "isGateway": true, "ipMasq": true,
        "ipMasqBackend": "iptables",
        "ipam": {"type": "host-local", "dataDir": host.dir.join("ipam").display().to_string(),
                 "ranges": [[{"subnet": "10.94.0.0/24"}]]}});
    json!({"cniVersion": "1.1.0", "name": "fpnet", "plugins": [bridge]})
}

/// The nat table's rules of ours, without counters.
fn nat(host: &FakeHost) -> Vec<String> {
    let saved = host.ns.run("iptables-save", &["-t", "nat"]).unwrap();
    saved.lines().filter(|l| l.contains("CNI-") && !l.starts_with('#')).map(str::to_string).collect()
}

/// Runs ADD of one new container under strace, with fast paths on or off, and returns the nat rules
/// after it and the programs the bridge plugin started; DEL must then leave nothing.
fn add_traced(fast: bool) -> (Vec<String>, Vec<String>) {
    let host = FakeHost::new().unwrap();
    let dir = host.dir.join("traced");
    let suite = conformance::trace::traced_suite(&dir, &["bridge"]).unwrap();
    if !fast {
        let script = std::fs::read_to_string(dir.join("bridge")).unwrap();
        let script = script.replace("exec strace", "CNI_FIREWALL_FAST_PATHS=0 exec strace");
        std::fs::write(dir.join("bridge"), script).unwrap();
    }
    let rt = Runtime::new(&suite, &host.ns, host.dir.clone());
    let l = list(&host);
    let c = host.container().unwrap();
    let att = Attachment::new("ctr-fp", &c);
    rt.add_list(&l, &att).unwrap();
    let rules = nat(&host);
    let execs = conformance::trace::traced_execs(&dir).unwrap();
    rt.del_list(&l, &att).unwrap();
    assert!(nat(&host).iter().all(|r| !r.contains("id: \\\"ctr-fp\\\"")), "{:?}", nat(&host));
    (rules, execs)
}

#[test]
fn plain_paths_leave_the_same_rules_and_the_switch_is_obeyed() {
    require_root!();
    if !conformance::trace::have_strace() {
        conformance::skip("strace is not installed");
        return;
    }
    let iptables_nft =
        std::fs::canonicalize("/usr/sbin/iptables-restore").is_ok_and(|p| p.to_string_lossy().contains("nft"));
    let (fast_rules, fast_execs) = add_traced(true);
    let (plain_rules, plain_execs) = add_traced(false);
    assert!(!fast_rules.is_empty(), "no masquerade rules written");
    assert_eq!(fast_rules, plain_rules, "fast and plain paths wrote different rules");
    let saves = |execs: &[String]| execs.iter().filter(|e| e.ends_with("iptables-save")).count();
    // The plain path reads the table before writing; the fast path (iptables-nft: the kernel says
    // the new container's chain is absent) writes blind.
    assert!(saves(&plain_execs) >= 1, "plain path read no table: {plain_execs:?}");
    if iptables_nft {
        assert_eq!(saves(&fast_execs), 0, "fast path read the table: {fast_execs:?}");
    }
}
