//! Root tests of the firewall module against the real kernel: each test runs on its own thread in a
//! private network namespace, so the tools it spawns see a netfilter state of their own, and it
//! asserts on what `iptables-save` / `nft list` print. Without root (or a tool) a test prints SKIP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cni_plugins::firewall::iptables::{chain_name, format_comment};
use cni_plugins::firewall::tools::find_tool;
use cni_plugins::firewall::{self, Backend, MasqTarget};
use ipnetwork::IpNetwork;
use nix::sched::{unshare, CloneFlags};
use std::process::{Command, Stdio};

/// Runs `body` on a new thread that has unshared its network namespace (namespaces are per thread;
/// child processes inherit the thread's). Skips visibly without root or without `tools`.
fn in_netns(test: &str, tools: &[&str], body: impl FnOnce() + Send + 'static) {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP {test}: needs root");
        return;
    }
    if let Some(missing) = tools.iter().find(|t| find_tool(t).is_none()) {
        eprintln!("SKIP {test}: {missing} not installed");
        return;
    }
    let outcome = std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        body();
    })
    .join();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

const IPT_TOOLS: &[&str] = &["iptables-save", "iptables-restore", "ip6tables-save", "ip6tables-restore"];

fn tool(name: &str, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(find_tool(name).unwrap())
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{name} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The nat table's chain declarations and rules (no comments or timestamps).
fn nat(v6: bool) -> Vec<String> {
    let text = tool(if v6 { "ip6tables-save" } else { "iptables-save" }, &["-t", "nat"], None);
    text.lines().filter(|l| l.starts_with(':') || l.starts_with("-A")).map(str::to_string).collect()
}

/// The nat lines that belong to CNI (chains and rules naming a `CNI-` chain).
fn cni_lines(v6: bool) -> Vec<String> {
    nat(v6).into_iter().filter(|l| l.contains("CNI-")).collect()
}

fn restore(v6: bool, batch: &str) {
    tool(if v6 { "ip6tables-restore" } else { "iptables-restore" }, &["--noflush", "-w"], Some(batch));
}

fn nets(list: &[&str]) -> Vec<IpNetwork> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn masq<'a>(network: &'a str, id: &'a str, ifname: &'a str, addresses: &'a [IpNetwork]) -> MasqTarget<'a> {
    MasqTarget { network, container_id: id, ifname, addresses }
}

/// The three reference lines of one address, as `iptables-save` prints them.
fn reference_lines(network: &str, id: &str, ip: &str, subnet: &str) -> Vec<String> {
    let chain = chain_name("", network, id);
    let comment = format_comment(network, id).replace('"', "\\\"");
    let (host, multicast) = if ip.contains(':') { ("128", "ff00::/8") } else { ("32", "224.0.0.0/4") };
    vec![
        format!("-A POSTROUTING -s {ip}/{host} -m comment --comment \"{comment}\" -j {chain}"),
        format!("-A {chain} -d {subnet} -m comment --comment \"{comment}\" -j ACCEPT"),
        format!("-A {chain} ! -d {multicast} -m comment --comment \"{comment}\" -j MASQUERADE"),
    ]
}

fn assert_has(lines: &[String], wanted: &[String]) {
    for w in wanted {
        assert_eq!(lines.iter().filter(|l| *l == w).count(), 1, "want exactly one {w:?} in\n{}", lines.join("\n"));
    }
}

#[test]
fn iptables_setup_check_teardown_v4_v6() {
    in_netns("iptables_setup_check_teardown_v4_v6", IPT_TOOLS, || {
        let addrs = nets(&["10.88.0.5/24", "fd00:88::5/64"]);
        let t = masq("testnet", "ctr1", "eth0", &addrs);
        assert!(firewall::check_ipmasq(Backend::Iptables, &t).is_err());

        firewall::setup_ipmasq(Backend::Iptables, &t).unwrap();
        let (v4, v6) = (nat(false), nat(true));
        assert_has(&v4, &reference_lines("testnet", "ctr1", "10.88.0.5", "10.88.0.0/24"));
        assert_has(&v6, &reference_lines("testnet", "ctr1", "fd00:88::5", "fd00:88::/64"));
        assert_eq!(cni_lines(false).len(), 4, "chain + 3 rules: {v4:#?}");
        firewall::check_ipmasq(Backend::Iptables, &t).unwrap();

        // One rule missing (the v6 MASQUERADE): CHECK fails and names it.
        let chain = chain_name("", "testnet", "ctr1");
        let comment = format_comment("testnet", "ctr1").replace('"', "\\\"");
        restore(
            true,
            &format!("*nat\n-D {chain} ! -d ff00::/8 -m comment --comment \"{comment}\" -j MASQUERADE\nCOMMIT\n"),
        );
        let err = firewall::check_ipmasq(Backend::Iptables, &t).unwrap_err().to_string();
        assert!(err.contains("MASQUERADE"), "{err}");
        firewall::setup_ipmasq(Backend::Iptables, &t).unwrap();
        firewall::check_ipmasq(Backend::Iptables, &t).unwrap();
        let (v4, v6) = (nat(false), nat(true));

        // ADD again: nothing duplicated, nothing reordered.
        firewall::setup_ipmasq(Backend::Iptables, &t).unwrap();
        assert_eq!((nat(false), nat(true)), (v4, v6));

        firewall::teardown_ipmasq(&t).unwrap();
        assert_eq!(cni_lines(false), Vec::<String>::new());
        assert_eq!(cni_lines(true), Vec::<String>::new());
        assert!(firewall::check_ipmasq(Backend::Iptables, &t).is_err());
        // DEL again: already gone is success.
        firewall::teardown_ipmasq(&t).unwrap();
    });
}

#[test]
fn iptables_teardown_without_addresses() {
    in_netns("iptables_teardown_without_addresses", IPT_TOOLS, || {
        let addrs = nets(&["10.88.0.5/24", "10.88.0.6/24", "fd00:88::5/64"]);
        firewall::setup_ipmasq(Backend::Iptables, &masq("testnet", "ctr1", "eth0", &addrs)).unwrap();
        assert_eq!(cni_lines(false).len(), 5, "chain, ACCEPT, MASQUERADE, 2 jumps");
        // The reference leaks everything here (DEL after the netns is gone has no addresses).
        firewall::teardown_ipmasq(&masq("testnet", "ctr1", "eth0", &[])).unwrap();
        assert_eq!(cni_lines(false), Vec::<String>::new());
        assert_eq!(cni_lines(true), Vec::<String>::new());
    });
}

#[test]
fn iptables_teardown_removes_the_legacy_jump() {
    in_netns("iptables_teardown_removes_the_legacy_jump", IPT_TOOLS, || {
        let addrs = nets(&["10.88.0.5/24"]);
        let t = masq("testnet", "ctr1", "eth0", &addrs);
        firewall::setup_ipmasq(Backend::Iptables, &t).unwrap();
        // Old reference versions jumped with `-s <ip>/<prefix>`.
        let chain = chain_name("", "testnet", "ctr1");
        let comment = format_comment("testnet", "ctr1").replace('"', "\\\"");
        restore(
            false,
            &format!("*nat\n-A POSTROUTING -s 10.88.0.5/24 -m comment --comment \"{comment}\" -j {chain}\nCOMMIT\n"),
        );
        assert_eq!(cni_lines(false).len(), 5);
        firewall::teardown_ipmasq(&t).unwrap();
        assert_eq!(cni_lines(false), Vec::<String>::new());
    });
}

#[test]
fn iptables_recognises_the_reference_rules() {
    in_netns("iptables_recognises_the_reference_rules", IPT_TOOLS, || {
        // Exactly what the reference bridge v1.1.1 leaves (see ipmasq.rs unit tests), loaded as is.
        let chain = chain_name("", "specnet", "ctr1");
        let mut batch = format!("*nat\n:{chain} - [0:0]\n");
        let lines = reference_lines("specnet", "ctr1", "10.251.0.2", "10.251.0.0/24");
        lines.iter().for_each(|l| batch.push_str(&format!("{l}\n")));
        batch.push_str("COMMIT\n");
        restore(false, &batch);
        let before = nat(false);

        let addrs = nets(&["10.251.0.2/24"]);
        let t = masq("specnet", "ctr1", "eth0", &addrs);
        firewall::check_ipmasq(Backend::Iptables, &t).unwrap();
        firewall::setup_ipmasq(Backend::Iptables, &t).unwrap();
        assert_eq!(nat(false), before, "ADD over the reference's rules changes nothing");
        firewall::teardown_ipmasq(&t).unwrap();
        assert_eq!(cni_lines(false), Vec::<String>::new());
    });
}

#[test]
fn iptables_two_interfaces_share_the_chain() {
    in_netns("iptables_two_interfaces_share_the_chain", IPT_TOOLS, || {
        let (a, b) = (nets(&["10.88.0.5/24"]), nets(&["10.99.0.5/24"]));
        firewall::setup_ipmasq(Backend::Iptables, &masq("testnet", "ctr1", "eth0", &a)).unwrap();
        firewall::setup_ipmasq(Backend::Iptables, &masq("testnet", "ctr1", "eth1", &b)).unwrap();
        let chain = chain_name("", "testnet", "ctr1");
        let rules: Vec<String> = nat(false).into_iter().filter(|l| l.starts_with(&format!("-A {chain} "))).collect();
        assert_eq!(rules.len(), 3, "{rules:#?}");
        assert!(rules[0].contains("-d 10.88.0.0/24") && rules[1].contains("-d 10.99.0.0/24"), "{rules:#?}");
        assert!(rules[2].ends_with("-j MASQUERADE"));
        firewall::check_ipmasq(Backend::Iptables, &masq("testnet", "ctr1", "eth0", &a)).unwrap();
        firewall::check_ipmasq(Backend::Iptables, &masq("testnet", "ctr1", "eth1", &b)).unwrap();
    });
}

#[test]
fn iptables_gc_removes_only_invalid_attachments() {
    in_netns("iptables_gc_removes_only_invalid_attachments", IPT_TOOLS, || {
        let (one, two, three) = (
            nets(&["10.88.0.1/24", "fd00:88::1/64"]),
            nets(&["10.88.0.2/24", "fd00:88::2/64"]),
            nets(&["10.77.0.3/24"]),
        );
        firewall::setup_ipmasq(Backend::Iptables, &masq("testnet", "ctr1", "eth0", &one)).unwrap();
        firewall::setup_ipmasq(Backend::Iptables, &masq("testnet", "ctr2", "eth0", &two)).unwrap();
        firewall::setup_ipmasq(Backend::Iptables, &masq("othernet", "ctr3", "eth0", &three)).unwrap();

        // The chain hash ignores ifname: ctr1 listed with another ifname still keeps its chain.
        firewall::gc_ipmasq("testnet", &[("ctr1".to_string(), "eth9".to_string())]).unwrap();
        let (v4, v6) = (cni_lines(false), cni_lines(true));
        let (c1, c2, c3) =
            (chain_name("", "testnet", "ctr1"), chain_name("", "testnet", "ctr2"), chain_name("", "othernet", "ctr3"));
        assert_eq!(v4.iter().filter(|l| l.contains(&c1)).count(), 4);
        assert_eq!(v6.iter().filter(|l| l.contains(&c1)).count(), 4);
        assert_eq!(v4.iter().chain(&v6).filter(|l| l.contains(&c2)).count(), 0, "{v4:#?}\n{v6:#?}");
        assert_eq!(v4.iter().filter(|l| l.contains(&c3)).count(), 4);

        firewall::gc_ipmasq("testnet", &[]).unwrap();
        let v4 = cni_lines(false);
        assert!(v4.iter().all(|l| l.contains(&c3)), "{v4:#?}");
        assert_eq!(cni_lines(true), Vec::<String>::new());
    });
}

/// `nft list table inet cni_plugins_masquerade`, or empty when the table does not exist.
fn masq_table() -> String {
    let out = Command::new(find_tool("nft").unwrap())
        .args(["list", "table", "inet", "cni_plugins_masquerade"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

fn masq_rules() -> Vec<String> {
    masq_table().lines().map(str::trim).filter(|l| l.contains(" masquerade comment")).map(str::to_string).collect()
}

#[test]
fn nft_setup_check_teardown_v4_v6() {
    in_netns("nft_setup_check_teardown_v4_v6", &["nft"], || {
        let addrs = nets(&["10.88.0.5/24", "fd00:88::5/64"]);
        let t = masq("testnet", "ctr1", "eth0", &addrs);
        assert!(firewall::check_ipmasq(Backend::Nftables, &t).is_err());

        firewall::setup_ipmasq(Backend::Nftables, &t).unwrap();
        let table = masq_table();
        for want in [
            "type nat hook postrouting priority srcnat; policy accept;",
            "ip daddr 224.0.0.0/4 return",
            "ip6 daddr ff00::/8 return",
            "goto masq_checks",
        ] {
            assert_eq!(table.matches(want).count(), 1, "{want:?} in\n{table}");
        }
        // h16("testnet")-h16("eth0:ctr1"), computed independently with sha512sum.
        let comment = "comment \"c5964c6794a1152e-7883a6f9ce71eedb, net: testnet, if: eth0, id: ctr1\"";
        assert_eq!(
            masq_rules(),
            [
                format!("ip saddr 10.88.0.5 ip daddr != 10.88.0.0/24 masquerade {comment}"),
                format!("ip6 saddr fd00:88::5 ip6 daddr != fd00:88::/64 masquerade {comment}"),
            ],
            "{table}"
        );
        firewall::check_ipmasq(Backend::Nftables, &t).unwrap();

        let postrouting = || -> Vec<String> {
            let out = Command::new(find_tool("nft").unwrap())
                .args(["-a", "list", "chain", "inet", "cni_plugins_masquerade", "postrouting"])
                .output()
                .unwrap();
            String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .filter(|l| l.contains("# handle"))
                .map(str::to_string)
                .collect()
        };
        let before = postrouting();
        let second = masq("testnet", "ctr2", "eth0", &addrs[..1]);
        firewall::setup_ipmasq(Backend::Nftables, &second).unwrap();
        assert_eq!(postrouting(), before, "a correct postrouting chain is not rewritten (same handles)");
        firewall::teardown_ipmasq(&second).unwrap();

        firewall::setup_ipmasq(Backend::Nftables, &t).unwrap();
        assert_eq!(masq_table(), table, "ADD again changes nothing");

        firewall::teardown_ipmasq(&t).unwrap();
        assert_eq!(masq_rules(), Vec::<String>::new());
        assert!(firewall::check_ipmasq(Backend::Nftables, &t).is_err());
        firewall::teardown_ipmasq(&t).unwrap();

        firewall::setup_ipmasq(Backend::Nftables, &t).unwrap();
        firewall::teardown_ipmasq(&masq("testnet", "ctr1", "eth0", &[])).unwrap();
        assert_eq!(masq_rules(), Vec::<String>::new());
    });
}

#[test]
fn nft_gc_removes_only_invalid_attachments() {
    in_netns("nft_gc_removes_only_invalid_attachments", &["nft"], || {
        let (one, one_b, two, three) = (
            nets(&["10.88.0.1/24", "fd00:88::1/64"]),
            nets(&["10.99.0.1/24"]),
            nets(&["10.88.0.2/24"]),
            nets(&["10.77.0.3/24"]),
        );
        firewall::setup_ipmasq(Backend::Nftables, &masq("testnet", "ctr1", "eth0", &one)).unwrap();
        firewall::setup_ipmasq(Backend::Nftables, &masq("testnet", "ctr1", "eth1", &one_b)).unwrap();
        firewall::setup_ipmasq(Backend::Nftables, &masq("testnet", "ctr2", "eth0", &two)).unwrap();
        firewall::setup_ipmasq(Backend::Nftables, &masq("othernet", "ctr3", "eth0", &three)).unwrap();
        assert_eq!(masq_rules().len(), 5);

        // nftables comments carry the ifname, so ctr1/eth1 is a different attachment.
        firewall::gc_ipmasq("testnet", &[("ctr1".to_string(), "eth0".to_string())]).unwrap();
        let rules = masq_rules();
        assert_eq!(rules.len(), 3, "{rules:#?}");
        assert!(rules.iter().filter(|r| r.contains("net: testnet")).all(|r| r.contains("if: eth0, id: ctr1")));
        assert_eq!(rules.iter().filter(|r| r.contains("net: othernet")).count(), 1);
        firewall::check_ipmasq(Backend::Nftables, &masq("testnet", "ctr1", "eth0", &one)).unwrap();
    });
}

#[test]
fn cleanup_on_an_untouched_host_succeeds() {
    in_netns("cleanup_on_an_untouched_host_succeeds", &["nft"], || {
        let addrs = nets(&["10.88.0.5/24", "fd00:88::5/64"]);
        firewall::teardown_ipmasq(&masq("testnet", "ctr1", "eth0", &addrs)).unwrap();
        firewall::teardown_ipmasq(&masq("testnet", "ctr1", "eth0", &[])).unwrap();
        firewall::gc_ipmasq("testnet", &[]).unwrap();
        firewall::teardown_spoofcheck("ctr1", "eth0").unwrap();
        assert_eq!(masq_table(), "", "cleanup creates nothing");
    });
}

/// `nft list table bridge nat`, or empty.
fn bridge_nat() -> String {
    let out = Command::new(find_tool("nft").unwrap()).args(["list", "table", "bridge", "nat"]).output().unwrap();
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn spoofcheck_setup_teardown() {
    in_netns("spoofcheck_setup_teardown", &["nft"], || {
        firewall::setup_spoofcheck("veth0000aaaa", "ctr1", "eth0", "0a:58:0a:58:00:05").unwrap();
        let table = bridge_nat();
        for want in [
            "type filter hook prerouting priority dstnat; policy accept;",
            "iifname \"veth0000aaaa\" jump cni-br-iface-ctr1-eth0 comment \"macspoofchk-ctr1-eth0\"",
            "chain cni-br-iface-ctr1-eth0 {",
            "jump cni-br-iface-ctr1-eth0-mac comment \"macspoofchk-ctr1-eth0\"",
            "chain cni-br-iface-ctr1-eth0-mac {",
            "ether saddr 0a:58:0a:58:00:05 return comment \"macspoofchk-ctr1-eth0\"",
            "drop comment \"macspoofchk-ctr1-eth0\"",
        ] {
            assert_eq!(table.matches(want).count(), 1, "{want:?} in\n{table}");
        }

        // ADD again (say with a new veth): still one entry rule, one set of chain rules.
        firewall::setup_spoofcheck("veth0000bbbb", "ctr1", "eth0", "0a:58:0a:58:00:05").unwrap();
        let table = bridge_nat();
        assert_eq!(table.matches("jump cni-br-iface-ctr1-eth0 ").count(), 1, "{table}");
        assert!(table.contains("iifname \"veth0000bbbb\""), "{table}");
        assert_eq!(table.matches("drop comment").count(), 1, "{table}");

        firewall::setup_spoofcheck("veth0000cccc", "ctr2", "eth0", "0a:58:0a:58:00:06").unwrap();
        firewall::teardown_spoofcheck("ctr1", "eth0").unwrap();
        let table = bridge_nat();
        assert!(!table.contains("ctr1"), "{table}");
        assert!(table.contains("iifname \"veth0000cccc\" jump cni-br-iface-ctr2-eth0"), "{table}");
        firewall::teardown_spoofcheck("ctr1", "eth0").unwrap();
        firewall::teardown_spoofcheck("ctr2", "eth0").unwrap();
        let table = bridge_nat();
        assert!(!table.contains("cni-br-iface") && table.contains("chain PREROUTING"), "{table}");
    });
}

#[test]
fn default_backend_prefers_iptables() {
    // This machine's kernel speaks nf_tables, so one of the two always works here.
    let want = if find_tool("iptables-restore").is_some() && find_tool("iptables-save").is_some() {
        Backend::Iptables
    } else {
        Backend::Nftables
    };
    assert_eq!(firewall::default_backend().unwrap(), want);
}

/// portmap DEL with iptables-nft removes, by handle, every jump to the container's chains (the
/// entry rules in `CNI-HOSTPORT-DNAT`, the pre-2018 `CNI-HOSTPORT-SNAT` jump to `CNI-SN-…`) and the
/// chains, and nothing of another container; a family without a nat table is no error.
#[test]
fn portmap_teardown_removes_jumps_and_chains_only_of_its_container() {
    use cni_plugins::firewall::iptables::portmap::{dnat_chain_name, teardown as teardown_portmap_iptables};
    in_netns("portmap_teardown_removes_jumps_and_chains_only_of_its_container", IPT_TOOLS, || {
        let (dn1, dn2) = (dnat_chain_name("specnet", "ctr1"), dnat_chain_name("specnet", "ctr2"));
        let sn1 = chain_name("SN-", "specnet", "ctr1");
        let comment = |id: &str| format!("dnat name: \\\"specnet\\\" id: \\\"{id}\\\"");
        restore(
            false,
            &format!(
                "*nat\n:CNI-HOSTPORT-DNAT - [0:0]\n:CNI-HOSTPORT-SNAT - [0:0]\n:{dn1} - [0:0]\n:{dn2} - [0:0]\n:{sn1} - [0:0]\n\
                 -A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT\n\
                 -A CNI-HOSTPORT-DNAT -p tcp -m comment --comment \"{}\" -m multiport --dports 18080 -j {dn1}\n\
                 -A CNI-HOSTPORT-DNAT -p udp -m comment --comment \"{}\" -m multiport --dports 15353 -j {dn1}\n\
                 -A CNI-HOSTPORT-DNAT -p tcp -m comment --comment \"{}\" -m multiport --dports 19090 -j {dn2}\n\
                 -A {dn1} -p tcp -m tcp --dport 18080 -j DNAT --to-destination 10.251.0.2:80\n\
                 -A {dn2} -p tcp -m tcp --dport 19090 -j DNAT --to-destination 10.251.0.3:90\n\
                 -A CNI-HOSTPORT-SNAT -j {sn1}\n\
                 -A {sn1} -s 10.251.0.2/32 -j MASQUERADE\nCOMMIT\n",
                comment("ctr1"),
                comment("ctr1"),
                comment("ctr2"),
            ),
        );
        teardown_portmap_iptables("specnet", "ctr1", &[firewall::Family::V4]).unwrap();
        let left = nat(false);
        assert!(left.iter().all(|l| !l.contains(&dn1) && !l.contains(&sn1)), "{left:#?}");
        assert_eq!(left.iter().filter(|l| l.contains(&dn2)).count(), 3, "ctr2 untouched: {left:#?}");
        assert!(left.iter().any(|l| l == ":CNI-HOSTPORT-SNAT - [0:0]"), "shared chains stay: {left:#?}");
        // Again: nothing left to remove is success.
        teardown_portmap_iptables("specnet", "ctr1", &[firewall::Family::V4]).unwrap();
    });
}
