//! The firewall plugin's nftables backend against the kernel, without the plugin's store lock in
//! front of it: each test runs in a private network namespace (threads it spawns share it) and
//! asserts on what `nft` lists. Without root or `nft` a test prints SKIP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cni_plugins::firewall::forward::{ForwardAccept, ForwardBackend, IngressPolicy};
use cni_plugins::firewall::nftables::forward::{NftForward, TABLE};
use cni_plugins::firewall::tools::find_tool;
use cni_plugins::netlink::{nft_generation, NftBatch, NftFamily, NftOp};
use std::process::Command;

fn in_netns(test: &str, body: impl FnOnce() + Send + 'static) {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP {test}: needs root");
        return;
    }
    if find_tool("nft").is_none() {
        eprintln!("SKIP {test}: nft not installed");
        return;
    }
    let outcome = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        body();
    })
    .join();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// The rules of `chain` as `nft` lists them, trimmed.
fn chain(name: &str) -> Vec<String> {
    let out = Command::new(find_tool("nft").unwrap()).args(["list", "chain", "inet", TABLE, name]).output().unwrap();
    assert!(out.status.success(), "nft list chain {name}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
    lines
        .into_iter()
        .filter(|l| !l.is_empty() && !["table ", "chain ", "type ", "}"].iter().any(|p| l.starts_with(p)))
        .collect()
}

fn attachment(i: usize, admin: &str, bridge: &str) -> ForwardAccept {
    ForwardAccept {
        container_id: format!("ctr-{i}"),
        ifname: "eth0".into(),
        addresses: vec![format!("10.77.{}.{}", i / 200, 2 + i % 200).parse().unwrap()],
        admin_chain: admin.into(),
        ingress: IngressPolicy::SameBridge,
        bridge: Some(bridge.into()),
    }
}

/// `n` first ADDs at once, each with its own admin chain and bridge, so every one of them changes
/// the shared layout: it must come out complete, each jump and rule once.
fn concurrent_first_adds(n: usize) {
    let backend = NftForward::new("concurrent");
    // All start at once, so their reads see the same (empty) table.
    let start = std::sync::Barrier::new(n);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (backend, start) = (&backend, &start);
                s.spawn(move || {
                    let a = attachment(i, &format!("ADMIN-{i}"), &format!("br{i}"));
                    start.wait();
                    backend.add(&a)
                })
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            h.join().unwrap().unwrap_or_else(|e| panic!("ADD {i}: {e}"));
        }
    });
    let forward = chain("forward");
    assert_eq!(forward[..2], ["jump isolation_stage_1", "jump admin_jumps"], "{forward:?}");
    assert_eq!(forward.len(), 2 + 2 * n, "{forward:?}");
    let mut jumps = chain("admin_jumps");
    jumps.sort();
    jumps.dedup();
    assert_eq!(jumps.len(), n, "admin jumps lost or doubled: {:?}", chain("admin_jumps"));
    assert_eq!(chain("admin_jumps").len(), n);
    assert_eq!(chain("isolation_stage_1").len(), n, "{:?}", chain("isolation_stage_1"));
    assert_eq!(chain("isolation_stage_2").len(), n);
    for i in 0..n {
        backend.check(&attachment(i, &format!("ADMIN-{i}"), &format!("br{i}"))).unwrap();
    }
}

/// Several rounds on a fresh table each: a lost race shows only now and then.
fn rounds(n: usize, times: usize) {
    for _ in 0..times {
        concurrent_first_adds(n);
        let nft = find_tool("nft").unwrap();
        assert!(Command::new(nft).args(["delete", "table", "inet", TABLE]).status().unwrap().success());
    }
}

#[test]
fn ten_concurrent_first_adds_with_different_layouts() {
    in_netns("ten_concurrent_first_adds_with_different_layouts", || rounds(10, 8));
}

#[test]
fn fifty_concurrent_first_adds_with_different_layouts() {
    in_netns("fifty_concurrent_first_adds_with_different_layouts", || rounds(50, 3));
}

#[test]
fn a_batch_planned_before_a_change_is_refused_whole() {
    in_netns("a_batch_planned_before_a_change_is_refused_whole", || {
        let before = nft_generation().unwrap();
        let mut first = NftBatch::new(NftFamily::Inet);
        first.ops.push(NftOp::AddTable { name: "gen_a".into(), comment: None });
        first.commit_if_unchanged(before).unwrap();
        let mut stale = NftBatch::new(NftFamily::Inet);
        stale.ops.push(NftOp::AddTable { name: "gen_b".into(), comment: None });
        let err = stale.commit_if_unchanged(before).unwrap_err();
        assert_eq!(err.raw_os_error(), None, "{err}");
        assert!(err.to_string().contains("restart") || err.to_string().contains("85"), "{err}");
        let tables = Command::new(find_tool("nft").unwrap()).args(["list", "tables"]).output().unwrap().stdout;
        let tables = String::from_utf8(tables).unwrap();
        assert!(tables.contains("gen_a") && !tables.contains("gen_b"), "{tables}");
        stale.commit_if_unchanged(nft_generation().unwrap()).unwrap();
    });
}

#[test]
fn del_is_idempotent_and_keeps_the_administrators_chain() {
    in_netns("del_is_idempotent_and_keeps_the_administrators_chain", || {
        let backend = NftForward::new("idem");
        let a = attachment(1, "CNI-ADMIN", "br1");
        backend.remove(&a, &a.addresses).unwrap();
        backend.add(&a).unwrap();
        let status = Command::new(find_tool("nft").unwrap())
            .args(["add", "rule", "inet", TABLE, "CNI-ADMIN", "ip", "saddr", "192.0.2.1", "drop"])
            .status()
            .unwrap();
        assert!(status.success());
        backend.add(&a).unwrap();
        backend.remove(&a, &a.addresses).unwrap();
        backend.remove(&a, &a.addresses).unwrap();
        assert_eq!(chain("forward"), ["jump isolation_stage_1", "jump admin_jumps"]);
        assert_eq!(chain("CNI-ADMIN"), ["ip saddr 192.0.2.1 drop"]);
        assert!(backend.check(&a).unwrap_err().to_string().contains("10.77.0.3"));
        backend.usable().unwrap();
    });
}
