//! The nf_tables existence probes against the kernel, in a private network namespace.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cni_plugins::netlink::{nft_chain_exists, nft_table_exists, NftFamily};
use std::process::Command;

fn in_private_netns(f: impl FnOnce() + Send) {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: needs root");
        return;
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f();
        })
        .join()
        .unwrap();
    });
}

fn sh(args: &[&str]) {
    let st = Command::new(args[0]).args(&args[1..]).status().unwrap();
    assert!(st.success(), "{args:?}");
}

#[test]
fn probes_see_iptables_nft_chains_and_nft_tables() {
    in_private_netns(|| {
        assert!(!nft_table_exists(NftFamily::Ip, "nat").unwrap());
        assert!(!nft_chain_exists(NftFamily::Ip, "nat", "CNI-probe").unwrap());
        sh(&["iptables", "-t", "nat", "-N", "CNI-probe"]);
        let nft_backed = String::from_utf8(Command::new("iptables").arg("--version").output().unwrap().stdout)
            .unwrap()
            .contains("nf_tables");
        if nft_backed {
            assert!(nft_table_exists(NftFamily::Ip, "nat").unwrap());
            assert!(nft_chain_exists(NftFamily::Ip, "nat", "CNI-probe").unwrap());
            assert!(!nft_chain_exists(NftFamily::Ip, "nat", "CNI-other").unwrap());
            assert!(!nft_chain_exists(NftFamily::Ip6, "nat", "CNI-probe").unwrap());
        }
        sh(&["nft", "add", "table", "inet", "probe_t"]);
        sh(&["nft", "add", "chain", "inet", "probe_t", "c1"]);
        assert!(nft_table_exists(NftFamily::Inet, "probe_t").unwrap());
        assert!(nft_chain_exists(NftFamily::Inet, "probe_t", "c1").unwrap());
        assert!(!nft_chain_exists(NftFamily::Inet, "probe_t", "c2").unwrap());
    });
}

#[test]
fn rule_listing_returns_handles_and_comments() {
    in_private_netns(|| {
        assert!(cni_plugins::netlink::nft_rules(NftFamily::Inet, "probe_r", "c").unwrap().is_empty());
        sh(&["nft", "add", "table", "inet", "probe_r"]);
        sh(&["nft", "add", "chain", "inet", "probe_r", "c"]);
        sh(&[
            "nft",
            "add",
            "rule",
            "inet",
            "probe_r",
            "c",
            "ip",
            "saddr",
            "10.0.0.1",
            "accept",
            "comment",
            "\"first one\"",
        ]);
        sh(&["nft", "add", "rule", "inet", "probe_r", "c", "ip", "saddr", "10.0.0.2", "accept"]);
        let rules = cni_plugins::netlink::nft_rules(NftFamily::Inet, "probe_r", "c").unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].comment.as_deref(), Some("first one"));
        assert_eq!(rules[1].comment, None);
        assert!(rules[0].handle > 0 && rules[1].handle > rules[0].handle);
    });
}

#[test]
fn rule_listing_names_jump_targets_of_iptables_rules() {
    in_private_netns(|| {
        let nft_backed = String::from_utf8(Command::new("iptables").arg("--version").output().unwrap().stdout)
            .unwrap()
            .contains("nf_tables");
        if !nft_backed {
            eprintln!("SKIP: iptables is not the nf_tables variant");
            return;
        }
        sh(&["iptables", "-t", "nat", "-N", "CNI-HOSTPORT-DNAT"]);
        sh(&[
            "iptables",
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-m",
            "addrtype",
            "--dst-type",
            "LOCAL",
            "-j",
            "CNI-HOSTPORT-DNAT",
        ]);
        sh(&["iptables", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "-j", "ACCEPT"]);
        let rules = cni_plugins::netlink::nft_rules(NftFamily::Ip, "nat", "PREROUTING").unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].jumps, vec!["CNI-HOSTPORT-DNAT".to_string()]);
        assert!(rules[1].jumps.is_empty());
    });
}
