//! Port forwarding (`portmap`) in the iptables `nat` table, with the reference's chains, rules,
//! comments and order (research 3.4), for `iptables` and `ip6tables` alike:
//! ```text
//! -A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT                       (appended)
//! -A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT                           (appended)
//! -A POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ   (inserted first)
//! -A CNI-HOSTPORT-SETMARK -m comment --comment "CNI portfwd masquerade mark" -j MARK --set-xmark 0x2000/0x2000
//! -A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE
//! -A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"net\" id: \"cid\"" -m multiport --dports 8080,8443 -j CNI-DN-…
//! -A CNI-DN-… -s 10.1.0.0/24 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK    (hairpin)
//! -A CNI-DN-… -s 127.0.0.1/32 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK   (localhost, IPv4)
//! -A CNI-DN-… -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.1.0.5:80
//! ```
//! Rules are kept in the form `iptables-save` prints them, so a planned rule compares equal to the
//! same rule read back.
//!
//! An ADD costs one `iptables-restore` when the shared chains are in place and the container's chain
//! is new (every ADD but a host's first): the batch checks the shared rules with `-C`, creates the
//! chain with `-N` and appends, and fails as a whole if any of that does not hold. Only then is the
//! table dumped and the batch planned from the dump. Dumping the whole table on every ADD would make
//! ADD grow with the number of containers (about 6 µs per rule with iptables-nft).

use super::{apply, chain_name, is_nft, nat_surely_without, plan_remove_chains, remove_chains_by_handle, save};
use super::{Batch, Rule, SavedTable, NAT};
use crate::errors::Collector;
use crate::firewall::error::FirewallError;
use crate::firewall::fastpath;
use crate::firewall::model::{Family, Portmap};
use crate::firewall::names::cut_at_char_boundary;
use crate::firewall::tools::{self, has_tool, restore_tool, save_tool};
use ipnetwork::IpNetwork;
use std::collections::HashSet;
use std::net::IpAddr;

/// The shared chain every container's entry rules live in.
pub const DNAT_CHAIN: &str = "CNI-HOSTPORT-DNAT";
/// The shared chain that marks connections for masquerading.
pub const SETMARK_CHAIN: &str = "CNI-HOSTPORT-SETMARK";
/// The shared chain that masquerades marked connections.
pub const MASQ_CHAIN: &str = "CNI-HOSTPORT-MASQ";
/// The top-level chain of plugin versions before 2018, which jumped to per-container `CNI-SN-…` chains.
pub const OLD_SNAT_CHAIN: &str = "CNI-HOSTPORT-SNAT";

/// `multiport` takes at most 15 ports per rule.
const MULTIPORT_MAX: usize = 15;
/// Longer comments are cut to 253 bytes and `...` (256 in all), exactly as the reference cuts them.
const COMMENT_MAX: usize = 255;
const SETMARK_COMMENT: &str = "CNI portfwd masquerade mark";
const MASQ_ENTRY_COMMENT: &str = "CNI portfwd requiring masquerade";

/// The per-container chain, `CNI-DN-<21 hex of sha512(network + containerID)>`.
pub fn dnat_chain_name(network: &str, container_id: &str) -> String {
    chain_name("DN-", network, container_id)
}

/// The reference's entry-rule comment `dnat name: "<net>" id: "<cid>"`, cut as the reference cuts it.
pub fn dnat_comment(network: &str, container_id: &str) -> String {
    let comment = format!("dnat name: \"{network}\" id: \"{container_id}\"");
    if comment.len() <= COMMENT_MAX {
        return comment;
    }
    format!("{}...", cut_at_char_boundary(&comment, COMMENT_MAX - 2))
}

/// The tool name used in messages, as the reference names it.
fn tool(family: Family) -> &'static str {
    match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    }
}

fn family_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "ipv4",
        Family::V6 => "ipv6",
    }
}

/// `0x2000/0x2000` for bit 13, as Go's `%#x` writes it.
fn mark_value(bit: u8) -> String {
    let value = 1u32 << (bit & 31);
    format!("{value:#x}/{value:#x}")
}

/// `10.1.0.5/24` → `10.1.0.0/24`.
fn subnet_of(a: &IpNetwork) -> String {
    format!("{}/{}", a.network(), a.prefix())
}

/// An address with its full-length prefix, as `iptables-save` prints `-d 127.0.0.1`.
fn host_cidr(ip: IpAddr) -> String {
    format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 })
}

/// `ip:port`, or `[ip]:port` for IPv6.
fn ip_port(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Where a shared rule goes when it is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    Append,
    First,
}

/// The shared chains (in creation order) and rules one container needs, in the order the reference
/// sets them up: the SETMARK and MASQ chains (with the POSTROUTING jump, inserted first so bridge
/// and ptp masquerade rules cannot shadow it), then the PREROUTING and OUTPUT jumps.
fn shared_rules(t: &Portmap) -> (Vec<&'static str>, Vec<(Rule, Position)>) {
    let mut chains = Vec::new();
    let mut rules = Vec::new();
    if t.snat && t.external_set_mark_chain.is_none() {
        let mark = mark_value(t.mark_bit);
        chains.push(SETMARK_CHAIN);
        rules.push((
            Rule::new(
                SETMARK_CHAIN,
                ["-m", "comment", "--comment", SETMARK_COMMENT, "-j", "MARK", "--set-xmark", &mark],
            ),
            Position::Append,
        ));
        chains.push(MASQ_CHAIN);
        rules.push((Rule::new(MASQ_CHAIN, ["-m", "mark", "--mark", &mark, "-j", "MASQUERADE"]), Position::Append));
        rules.push((
            Rule::new("POSTROUTING", ["-m", "comment", "--comment", MASQ_ENTRY_COMMENT, "-j", MASQ_CHAIN]),
            Position::First,
        ));
    }
    chains.push(DNAT_CHAIN);
    for entry in ["PREROUTING", "OUTPUT"] {
        rules.push((Rule::new(entry, ["-m", "addrtype", "--dst-type", "LOCAL", "-j", DNAT_CHAIN]), Position::Append));
    }
    (chains, rules)
}

/// Splits user conditions into the basic matches `iptables-save` prints first (`-s`, `-d`, `-i`,
/// `-o`, each possibly negated, addresses with their prefix) and the rest, kept in order. Only a
/// best effort: a condition spelled some other way makes a re-planned ADD append a second copy of
/// the entry rule, which is harmless (DEL removes every jump to the chain).
fn split_conditions(conditions: &[String], family: Family) -> (Vec<String>, Vec<String>) {
    const SLOTS: [(&str, &[&str]); 4] = [
        ("-s", &["-s", "--source", "--src"]),
        ("-d", &["-d", "--destination", "--dst"]),
        ("-i", &["-i", "--in-interface"]),
        ("-o", &["-o", "--out-interface"]),
    ];
    let slot_of = |tok: &str| SLOTS.iter().position(|(_, names)| names.contains(&tok));
    let mut basic: [Option<(bool, String)>; 4] = Default::default();
    let mut rest = Vec::new();
    let mut i = 0;
    while i < conditions.len() {
        let negated = conditions[i] == "!" && conditions.get(i + 1).is_some_and(|t| slot_of(t).is_some());
        let at = if negated { i + 1 } else { i };
        match (slot_of(&conditions[at]), conditions.get(at + 1)) {
            (Some(slot), Some(value)) if basic[slot].is_none() => {
                let value = if slot < 2 { canonical_address(value, family) } else { value.clone() };
                basic[slot] = Some((negated, value));
                i = at + 2;
            }
            _ => {
                rest.push(conditions[i].clone());
                i += 1;
            }
        }
    }
    let mut out = Vec::new();
    for (slot, value) in basic.iter().enumerate() {
        if let Some((negated, value)) = value {
            if *negated {
                out.push("!".to_string());
            }
            out.push(SLOTS[slot].0.to_string());
            out.push(value.clone());
        }
    }
    (out, rest)
}

/// `192.0.2.7` → `192.0.2.7/32`, `10.1.2.3/24` → `10.1.2.0/24`; anything else unchanged.
fn canonical_address(value: &str, family: Family) -> String {
    let parsed = match value.split_once('/') {
        None => value.parse::<IpAddr>().ok().map(|ip| (ip, None)),
        Some((ip, len)) => ip.parse::<IpAddr>().ok().zip(len.parse::<u8>().ok()).map(|(ip, len)| (ip, Some(len))),
    };
    match parsed {
        Some((ip, len)) if Family::of(&ip) == family => {
            let full = if ip.is_ipv4() { 32 } else { 128 };
            match IpNetwork::new(ip, len.unwrap_or(full)) {
                Ok(net) => format!("{}/{}", net.network(), net.prefix()),
                Err(_) => value.to_string(),
            }
        }
        _ => value.to_string(),
    }
}

/// The entry rules in `CNI-HOSTPORT-DNAT`: one per protocol (in name order) and run of at most 15
/// host ports (in mapping order). Like the reference, every mapping counts, whatever the family of
/// its host IP.
fn entry_rules(t: &Portmap, family: Family) -> Vec<Rule> {
    let chain = dnat_chain_name(t.network, t.container_id);
    let comment = dnat_comment(t.network, t.container_id);
    let (basic, rest) = split_conditions(t.conditions(family), family);
    let mut protocols: Vec<_> = t.forwards.iter().map(|f| f.protocol).collect();
    protocols.sort();
    protocols.dedup();
    let mut rules = Vec::new();
    for protocol in protocols {
        let ports: Vec<String> =
            t.forwards.iter().filter(|f| f.protocol == protocol).map(|f| f.host_port.to_string()).collect();
        for run in ports.chunks(MULTIPORT_MAX) {
            let mut args = basic.clone();
            args.extend(strings(&["-p", protocol.as_str(), "-m", "comment", "--comment", &comment]));
            args.extend(strings(&["-m", "multiport", "--dports", &run.join(",")]));
            args.extend(rest.iter().cloned());
            args.extend(strings(&["-j", &chain]));
            rules.push(Rule { chain: DNAT_CHAIN.to_string(), args });
        }
    }
    rules
}

/// The container chain's rules for one address, per mapping in order: hairpin mark, localhost mark
/// (IPv4 without `masqAll`), DNAT. The marks come first because DNAT ends the chain.
fn container_rules(t: &Portmap, address: &IpNetwork) -> Vec<Rule> {
    let family = Family::of(&address.ip());
    let chain = dnat_chain_name(t.network, t.container_id);
    let setmark = t.external_set_mark_chain.unwrap_or(SETMARK_CHAIN);
    let mut rules = Vec::new();
    for f in t.forwards.iter().filter(|f| f.applies_to(family)) {
        let dst: Vec<String> = f.destination().map(|ip| vec!["-d".to_string(), host_cidr(ip)]).unwrap_or_default();
        let proto = f.protocol.as_str();
        let port = f.host_port.to_string();
        let matches = |src: Option<&str>| {
            let mut args: Vec<String> = src.map(|s| vec!["-s".to_string(), s.to_string()]).unwrap_or_default();
            args.extend(dst.iter().cloned());
            args.extend(strings(&["-p", proto, "-m", proto, "--dport", &port]));
            args
        };
        if t.snat {
            // `-s 0.0.0.0/0` matches everything, so iptables-save prints no source at all.
            let hairpin_src = if t.masq_all { None } else { Some(subnet_of(address)) };
            let mut args = matches(hairpin_src.as_deref());
            args.extend(strings(&["-j", setmark]));
            rules.push(Rule { chain: chain.clone(), args });
            if family == Family::V4 && !t.masq_all {
                let mut args = matches(Some("127.0.0.1/32"));
                args.extend(strings(&["-j", setmark]));
                rules.push(Rule { chain: chain.clone(), args });
            }
        }
        let mut args = matches(None);
        args.extend(strings(&["-j", "DNAT", "--to-destination", &ip_port(address.ip(), f.container_port)]));
        rules.push(Rule { chain: chain.clone(), args });
    }
    rules
}

/// Rules not yet seen, in order (a duplicate mapping yields one rule, as check-then-append does).
/// Hashed, so that 10000 mappings cost 10000 lookups rather than 50 million comparisons.
fn unique(rules: Vec<Rule>) -> Vec<Rule> {
    let mut seen: HashSet<Rule> = HashSet::with_capacity(rules.len());
    rules.into_iter().filter(|rule| seen.insert(rule.clone())).collect()
}

/// Whether the kernel shows the shared chains in place (iptables-nft only): every entry jump from
/// a built-in chain exists and each shared chain has its rule. Asked over netlink, because a `-C`
/// line makes `iptables-restore` read the whole table first, which grows with every container
/// (measured: 5 ms without, 14–20 ms with, at 1000 containers).
fn shared_rules_in_place(t: &Portmap, family: Family) -> bool {
    if !is_nft(family) {
        return false;
    }
    let nf = family.nft_family();
    shared_rules(t).1.iter().all(|(rule, _)| {
        let Ok(listed) = crate::netlink::nft_rules(nf, NAT, &rule.chain) else { return false };
        match rule.target() {
            Some(target) if target.starts_with("CNI-") => listed.iter().any(|r| r.jumps.iter().any(|j| j == target)),
            _ => !listed.is_empty(),
        }
    })
}

/// The one-exec ADD: check the shared rules (unless the kernel already said they are there),
/// create the container chain (failing if it exists) and fill it, add the entry rules. Fails as
/// a whole unless the host is already set up.
fn plan_fast_setup(t: &Portmap, address: &IpNetwork, shared_known: bool) -> Batch {
    let family = Family::of(&address.ip());
    let mut batch = Batch::new(NAT);
    if !shared_known {
        for (rule, _) in shared_rules(t).1 {
            batch.check(&rule);
        }
    }
    batch.new_chain(&dnat_chain_name(t.network, t.container_id));
    for rule in unique(container_rules(t, address)).iter().chain(unique(entry_rules(t, family)).iter()) {
        batch.append(rule);
    }
    batch
}

/// Plans ADD from a dump the way the reference's check-then-add works: create missing chains with
/// `-N` (a concurrent creator then fails the batch instead of being flushed), add each missing rule,
/// keep what is there (a container attached twice to one network shares its chain). `None` when
/// everything is in place.
fn plan_setup(saved: &SavedTable, t: &Portmap, address: &IpNetwork) -> Option<Batch> {
    let family = Family::of(&address.ip());
    let chain = dnat_chain_name(t.network, t.container_id);
    let (shared_chains, shared) = shared_rules(t);
    let container = container_rules(t, address);
    let entries = entry_rules(t, family);
    let mut batch = Batch::new(NAT);
    // Every rule of the table and of the batch, hashed: one lookup per planned rule.
    let mut present: HashSet<&Rule> = saved.rules.iter().collect();
    fn add<'r>(batch: &mut Batch, present: &mut HashSet<&'r Rule>, rule: &'r Rule, position: Position) {
        if !present.insert(rule) {
            return;
        }
        match position {
            Position::Append => batch.append(rule),
            Position::First => batch.insert(rule, 1),
        }
    }
    // Chains before the rules that jump to them, in the reference's order.
    for name in shared_chains {
        if !saved.has_chain(name) {
            batch.new_chain(name);
        }
        for (rule, position) in shared.iter().filter(|(r, _)| r.chain == name || r.target() == Some(name)) {
            add(&mut batch, &mut present, rule, *position);
        }
    }
    if !saved.has_chain(&chain) {
        batch.new_chain(&chain);
    }
    for rule in container.iter().chain(entries.iter()) {
        add(&mut batch, &mut present, rule, Position::Append);
    }
    (!batch.is_empty()).then_some(batch)
}

/// ADD for the family of `address`: one batch when the host is set up, else dump, plan and load.
pub fn setup(t: &Portmap, address: &IpNetwork) -> Result<(), FirewallError> {
    let family = Family::of(&address.ip());
    let shared_known = shared_rules_in_place(t, family);
    // Where the kernel could be asked (iptables-nft) and said the shared rules are missing, the
    // one-batch ADD would fail after the tool parsed every rule of it: plan from the dump at once.
    let shared_missing = !shared_known && is_nft(family);
    if !shared_missing && fastpath::enabled() {
        match tools::iptables_restore(family, &plan_fast_setup(t, address, shared_known).render()) {
            Ok(()) => return Ok(()),
            Err(FirewallError::ToolNotFound(tool)) => return Err(FirewallError::ToolNotFound(tool)),
            Err(e) => log::debug!("portmap: planning from {} after the one-batch ADD failed: {e}", save_tool(family)),
        }
    }
    apply(family, NAT, false, |saved| plan_setup(saved, t, address))
}

/// The `-C` batch of CHECK: every shared rule, container rule and entry rule of this address.
fn plan_check(t: &Portmap, address: &IpNetwork) -> Batch {
    let family = Family::of(&address.ip());
    let mut batch = Batch::new(NAT);
    let shared = shared_rules(t).1.into_iter().map(|(r, _)| r);
    for rule in shared.chain(container_rules(t, address)).chain(entry_rules(t, family)) {
        batch.check(&rule);
    }
    batch
}

/// CHECK for the family of `address`: iptables itself compares every rule ADD installs (`-C`, as
/// the reference does), in one batch that changes nothing.
pub fn check(t: &Portmap, address: &IpNetwork) -> Result<(), FirewallError> {
    let family = Family::of(&address.ip());
    tools::iptables_restore(family, &plan_check(t, address).render()).map_err(|e| {
        let text = e.to_string();
        let rule = text.rsplit_once("(input line: -C ").and_then(|(_, r)| r.strip_suffix(')'));
        FirewallError::Check(match rule {
            Some(rule) => format!(
                "could not check {} dnat: rule not found in {} table nat: -A {rule}",
                family_name(family),
                tool(family)
            ),
            None => format!("could not check {} dnat: {text}", family_name(family)),
        })
    })
}

/// DEL's plan: the container chain and the pre-2018 `CNI-SN-…` chain, found by name, so neither the
/// mappings nor the addresses are needed.
fn plan_teardown(saved: &SavedTable, network: &str, container_id: &str) -> Option<Batch> {
    let chains = [dnat_chain_name(network, container_id), chain_name("SN-", network, container_id)];
    plan_remove_chains(saved, &chains)
}

/// DEL: removes the container's chains and every jump to them from both families' nat tables
/// whose tools exist. A family in `present` (the container had an address of it) must be readable;
/// another one that cannot be dumped (IPv6 disabled) has nothing of ours.
pub fn teardown(network: &str, container_id: &str, present: &[Family]) -> Result<(), FirewallError> {
    let mut errors = Collector::new();
    for family in Family::ALL {
        if !has_tool(save_tool(family)) || !has_tool(restore_tool(family)) {
            continue;
        }
        let chains = [dnat_chain_name(network, container_id), chain_name("SN-", network, container_id)];
        // Only the reference's chains jump to these; listing just them keeps DEL from reading every
        // rule of a large container chain (the kernel's rule dump restarts from the head of the
        // table for each batch it returns, so a whole-table dump grows with its square).
        match remove_chains_by_handle(family, NAT, &chains, Some(&[DNAT_CHAIN, OLD_SNAT_CHAIN])) {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => log::debug!("portmap teardown by handle failed, reading the table: {e}"),
        }
        let tolerate = !present.contains(&family);
        if let Err(e) = apply(family, NAT, tolerate, |saved| plan_teardown(saved, network, container_id)) {
            errors.push(e);
        }
    }
    errors.finish()
}

/// GC's plan: the chains of `network`'s containers not in `valid_ids`, recognised by the entry rules'
/// comment and confirmed by the chain name it implies (a trimmed comment names no container).
fn plan_gc(saved: &SavedTable, network: &str, valid_ids: &HashSet<&str>) -> Option<Batch> {
    let prefix = format!("dnat name: \"{network}\" id: \"");
    let mut stale: Vec<String> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    for rule in saved.rules_in(DNAT_CHAIN) {
        let Some(id) = rule.comment().and_then(|c| c.strip_prefix(&prefix)).and_then(|r| r.strip_suffix('"')) else {
            continue;
        };
        if id.contains('"') || valid_ids.contains(id) {
            continue;
        }
        let chain = dnat_chain_name(network, id);
        if rule.target() == Some(chain.as_str()) && seen.insert(chain.clone()) {
            stale.push(chain);
        }
    }
    plan_remove_chains(saved, &stale)
}

/// GC: removes the chains of `network`'s containers whose ID is not in `valid_ids` (the chain hash
/// covers network and container ID only, so any listed interface keeps the container's rules).
pub fn gc(network: &str, valid_ids: &HashSet<&str>) -> Result<(), FirewallError> {
    let mut errors = Collector::new();
    for family in Family::ALL {
        if !has_tool(save_tool(family)) || !has_tool(restore_tool(family)) {
            continue;
        }
        // The kernel lists iptables-nft rules with their comments: nothing stale, no iptables-save.
        let prefix = format!("dnat name: \"{network}\" id: \"");
        let stale = |c: &str| c.strip_prefix(&prefix).is_some_and(|r| !valid_ids.contains(r.trim_end_matches('"')));
        if nat_surely_without(family, stale) {
            continue;
        }
        // A host without IPv6 cannot dump ip6tables, and so holds nothing there to collect.
        let tolerate = family == Family::V6;
        if let Err(e) = apply(family, NAT, tolerate, |saved| plan_gc(saved, network, valid_ids)) {
            errors.push(e);
        }
    }
    errors.finish()
}

/// STATUS: whether `iptables-save`/`iptables-restore` of either family can work with the nat table.
pub fn usable() -> Result<(), FirewallError> {
    let mut errors = Collector::new();
    for family in Family::ALL {
        if !has_tool(restore_tool(family)) {
            errors.push(FirewallError::ToolNotFound(restore_tool(family).to_string()));
            continue;
        }
        match save(family, NAT) {
            Ok(_) => return Ok(()),
            Err(e) => errors.push(e),
        }
    }
    errors.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::{PortForward, Protocol};

    /// `iptables-save -t nat` after the reference portmap v1.1.1 (Debian, /usr/lib/cni) ran ADD in a
    /// throwaway netns with `name: specnet`, CNI_CONTAINERID=ctr1, prevResult 10.251.0.2/24 and
    /// fd00:246::2/64 on eth0, mappings tcp 18080→80, tcp 18443→443, udp 15353→53 on 127.0.0.1.
    const REFERENCE_V4: &str = r#"*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:CNI-DN-47b0c350c56dfce277c5b - [0:0]
:CNI-HOSTPORT-DNAT - [0:0]
:CNI-HOSTPORT-MASQ - [0:0]
:CNI-HOSTPORT-SETMARK - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ
-A CNI-DN-47b0c350c56dfce277c5b -s 10.251.0.0/24 -p tcp -m tcp --dport 18080 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-47b0c350c56dfce277c5b -s 127.0.0.1/32 -p tcp -m tcp --dport 18080 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-47b0c350c56dfce277c5b -p tcp -m tcp --dport 18080 -j DNAT --to-destination 10.251.0.2:80
-A CNI-DN-47b0c350c56dfce277c5b -s 10.251.0.0/24 -p tcp -m tcp --dport 18443 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-47b0c350c56dfce277c5b -s 127.0.0.1/32 -p tcp -m tcp --dport 18443 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-47b0c350c56dfce277c5b -p tcp -m tcp --dport 18443 -j DNAT --to-destination 10.251.0.2:443
-A CNI-DN-47b0c350c56dfce277c5b -s 10.251.0.0/24 -d 127.0.0.1/32 -p udp -m udp --dport 15353 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-47b0c350c56dfce277c5b -s 127.0.0.1/32 -d 127.0.0.1/32 -p udp -m udp --dport 15353 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-47b0c350c56dfce277c5b -d 127.0.0.1/32 -p udp -m udp --dport 15353 -j DNAT --to-destination 10.251.0.2:53
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"specnet\" id: \"ctr1\"" -m multiport --dports 18080,18443 -j CNI-DN-47b0c350c56dfce277c5b
-A CNI-HOSTPORT-DNAT -p udp -m comment --comment "dnat name: \"specnet\" id: \"ctr1\"" -m multiport --dports 15353 -j CNI-DN-47b0c350c56dfce277c5b
-A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE
-A CNI-HOSTPORT-SETMARK -m comment --comment "CNI portfwd masquerade mark" -j MARK --set-xmark 0x2000/0x2000
COMMIT
"#;

    /// `ip6tables-save -t nat` from the same reference run: the 127.0.0.1 mapping has no IPv6 rules,
    /// but its port still appears in the entry rule.
    const REFERENCE_V6: &str = r#"*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:CNI-DN-47b0c350c56dfce277c5b - [0:0]
:CNI-HOSTPORT-DNAT - [0:0]
:CNI-HOSTPORT-MASQ - [0:0]
:CNI-HOSTPORT-SETMARK - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ
-A CNI-DN-47b0c350c56dfce277c5b -s fd00:246::/64 -p tcp -m tcp --dport 18080 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-47b0c350c56dfce277c5b -p tcp -m tcp --dport 18080 -j DNAT --to-destination [fd00:246::2]:80
-A CNI-DN-47b0c350c56dfce277c5b -s fd00:246::/64 -p tcp -m tcp --dport 18443 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-47b0c350c56dfce277c5b -p tcp -m tcp --dport 18443 -j DNAT --to-destination [fd00:246::2]:443
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"specnet\" id: \"ctr1\"" -m multiport --dports 18080,18443 -j CNI-DN-47b0c350c56dfce277c5b
-A CNI-HOSTPORT-DNAT -p udp -m comment --comment "dnat name: \"specnet\" id: \"ctr1\"" -m multiport --dports 15353 -j CNI-DN-47b0c350c56dfce277c5b
-A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE
-A CNI-HOSTPORT-SETMARK -m comment --comment "CNI portfwd masquerade mark" -j MARK --set-xmark 0x2000/0x2000
COMMIT
"#;

    /// The container chain and entry rules of a second reference run (v1.1.1): `snat: false`,
    /// `conditionsV4: ["!", "-d", "192.0.2.0/24"]`, mappings tcp 8080, tcp 8081 on 0.0.0.0, sctp
    /// 8082 on ::, tcp 8083 on 192.0.2.7, udp 8084 on fd00::9; container c1 at 10.251.0.2/24.
    const REFERENCE_OPTIONS_V4: &str = r#"*nat
:CNI-DN-aecf3b8c19c82cf5a79c5 - [0:0]
:CNI-HOSTPORT-DNAT - [0:0]
-A CNI-DN-aecf3b8c19c82cf5a79c5 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.251.0.2:80
-A CNI-DN-aecf3b8c19c82cf5a79c5 -p tcp -m tcp --dport 8081 -j DNAT --to-destination 10.251.0.2:81
-A CNI-DN-aecf3b8c19c82cf5a79c5 -d 192.0.2.7/32 -p tcp -m tcp --dport 8083 -j DNAT --to-destination 10.251.0.2:83
-A CNI-HOSTPORT-DNAT ! -d 192.0.2.0/24 -p sctp -m comment --comment "dnat name: \"specnet\" id: \"c1\"" -m multiport --dports 8082 -j CNI-DN-aecf3b8c19c82cf5a79c5
-A CNI-HOSTPORT-DNAT ! -d 192.0.2.0/24 -p tcp -m comment --comment "dnat name: \"specnet\" id: \"c1\"" -m multiport --dports 8080,8081,8083 -j CNI-DN-aecf3b8c19c82cf5a79c5
-A CNI-HOSTPORT-DNAT ! -d 192.0.2.0/24 -p udp -m comment --comment "dnat name: \"specnet\" id: \"c1\"" -m multiport --dports 8084 -j CNI-DN-aecf3b8c19c82cf5a79c5
COMMIT
"#;

    const EMPTY_NAT: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
                             :POSTROUTING ACCEPT [0:0]\nCOMMIT\n";

    fn nat(text: &str) -> SavedTable {
        SavedTable::parse(text, NAT).unwrap()
    }

    fn fwd(host_port: u16, container_port: u16, protocol: Protocol, host_ip: Option<&str>) -> PortForward {
        PortForward { host_port, container_port, protocol, host_ip: host_ip.map(|s| s.parse().unwrap()) }
    }

    fn reference_forwards() -> Vec<PortForward> {
        vec![
            fwd(18080, 80, Protocol::Tcp, None),
            fwd(18443, 443, Protocol::Tcp, None),
            fwd(15353, 53, Protocol::Udp, Some("127.0.0.1")),
        ]
    }

    fn portmap<'a>(forwards: &'a [PortForward], id: &'a str) -> Portmap<'a> {
        Portmap::with_defaults("specnet", id, forwards)
    }

    fn addr(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    /// Applies a planned batch to a dump the way iptables would (enough for these batches).
    fn apply(saved: &SavedTable, batch: &Batch) -> SavedTable {
        let mut out = saved.clone();
        for line in batch.render().lines().filter(|l| !l.starts_with('*') && *l != "COMMIT") {
            let mut args = crate::firewall::iptables::split_args(line).unwrap();
            let op = args.remove(0);
            let chain = args.remove(0);
            match op.as_str() {
                "-N" => out.chains.push(chain),
                "-A" => {
                    let at = out.rules.iter().rposition(|r| r.chain == chain).map(|i| i + 1).unwrap_or(out.rules.len());
                    out.rules.insert(at, Rule { chain, args });
                }
                "-I" => {
                    args.remove(0);
                    let at = out.rules.iter().position(|r| r.chain == chain).unwrap_or(out.rules.len());
                    out.rules.insert(at, Rule { chain, args });
                }
                "-D" => {
                    let at = out.rules.iter().position(|r| r.chain == chain && r.args == args).unwrap();
                    out.rules.remove(at);
                }
                "-F" => out.rules.retain(|r| r.chain != chain),
                "-X" => out.chains.retain(|c| *c != chain),
                other => panic!("unexpected {other}"),
            }
        }
        out
    }

    /// The rules of each chain, in order, keyed by chain: what "same rules, same order" means.
    fn by_chain(saved: &SavedTable) -> Vec<(String, Vec<Vec<String>>)> {
        let mut chains = saved.chains.clone();
        chains.sort();
        chains.iter().map(|c| (c.clone(), saved.rules_in(c).map(|r| r.args.clone()).collect())).collect()
    }

    #[test]
    fn first_add_builds_the_reference_table() {
        let forwards = reference_forwards();
        let t = portmap(&forwards, "ctr1");
        for (address, reference) in [("10.251.0.2/24", REFERENCE_V4), ("fd00:246::2/64", REFERENCE_V6)] {
            let batch = plan_setup(&nat(EMPTY_NAT), &t, &addr(address)).unwrap();
            assert_eq!(by_chain(&apply(&nat(EMPTY_NAT), &batch)), by_chain(&nat(reference)), "{address}");
            // Re-running ADD on the reference's own state changes nothing.
            assert_eq!(plan_setup(&nat(reference), &t, &addr(address)), None, "{address}");
        }
    }

    #[test]
    fn first_add_batch_text() {
        let forwards = reference_forwards();
        let batch = plan_setup(&nat(EMPTY_NAT), &portmap(&forwards, "ctr1"), &addr("10.251.0.2/24")).unwrap();
        assert_eq!(
            batch.render(),
            r#"*nat
-N CNI-HOSTPORT-SETMARK
-A CNI-HOSTPORT-SETMARK -m comment --comment "CNI portfwd masquerade mark" -j MARK --set-xmark 0x2000/0x2000
-N CNI-HOSTPORT-MASQ
-A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE
-I POSTROUTING 1 -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ
-N CNI-HOSTPORT-DNAT
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-N CNI-DN-47b0c350c56dfce277c5b
-A CNI-DN-47b0c350c56dfce277c5b -s 10.251.0.0/24 -p tcp -m tcp --dport 18080 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-47b0c350c56dfce277c5b -s 127.0.0.1/32 -p tcp -m tcp --dport 18080 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-47b0c350c56dfce277c5b -p tcp -m tcp --dport 18080 -j DNAT --to-destination 10.251.0.2:80
-A CNI-DN-47b0c350c56dfce277c5b -s 10.251.0.0/24 -p tcp -m tcp --dport 18443 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-47b0c350c56dfce277c5b -s 127.0.0.1/32 -p tcp -m tcp --dport 18443 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-47b0c350c56dfce277c5b -p tcp -m tcp --dport 18443 -j DNAT --to-destination 10.251.0.2:443
-A CNI-DN-47b0c350c56dfce277c5b -s 10.251.0.0/24 -d 127.0.0.1/32 -p udp -m udp --dport 15353 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-47b0c350c56dfce277c5b -s 127.0.0.1/32 -d 127.0.0.1/32 -p udp -m udp --dport 15353 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-47b0c350c56dfce277c5b -d 127.0.0.1/32 -p udp -m udp --dport 15353 -j DNAT --to-destination 10.251.0.2:53
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"specnet\" id: \"ctr1\"" -m multiport --dports 18080,18443 -j CNI-DN-47b0c350c56dfce277c5b
-A CNI-HOSTPORT-DNAT -p udp -m comment --comment "dnat name: \"specnet\" id: \"ctr1\"" -m multiport --dports 15353 -j CNI-DN-47b0c350c56dfce277c5b
COMMIT
"#
        );
    }

    #[test]
    fn fast_batch_checks_shared_rules_and_creates_the_chain() {
        let forwards = reference_forwards();
        let batch = plan_fast_setup(&portmap(&forwards, "ctr1"), &addr("fd00:246::2/64"), false).render();
        let lines: Vec<&str> = batch.lines().collect();
        assert_eq!(
            &lines[..7],
            [
                "*nat",
                r#"-C CNI-HOSTPORT-SETMARK -m comment --comment "CNI portfwd masquerade mark" -j MARK --set-xmark 0x2000/0x2000"#,
                "-C CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE",
                r#"-C POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ"#,
                "-C PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT",
                "-C OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT",
                "-N CNI-DN-47b0c350c56dfce277c5b",
            ]
        );
        let appended: Vec<&str> = lines[7..lines.len() - 1].iter().map(|l| l.trim_start_matches("-A ")).collect();
        let reference: Vec<String> = REFERENCE_V6
            .lines()
            .filter(|l| l.starts_with("-A CNI-DN-") || l.starts_with("-A CNI-HOSTPORT-DNAT"))
            .map(|l| l.trim_start_matches("-A ").to_string())
            .collect();
        assert_eq!(appended, reference);
        assert_eq!(lines.last(), Some(&"COMMIT"));
    }

    #[test]
    fn options_match_the_reference() {
        let forwards = vec![
            fwd(8080, 80, Protocol::Tcp, None),
            fwd(8081, 81, Protocol::Tcp, Some("0.0.0.0")),
            fwd(8082, 82, Protocol::Sctp, Some("::")),
            fwd(8083, 83, Protocol::Tcp, Some("192.0.2.7")),
            fwd(8084, 84, Protocol::Udp, Some("fd00::9")),
        ];
        let conditions = ["!".to_string(), "-d".to_string(), "192.0.2.0/24".to_string()];
        let t = Portmap { snat: false, conditions_v4: &conditions, ..portmap(&forwards, "c1") };
        let want = nat(REFERENCE_OPTIONS_V4);
        let rules: Vec<Rule> =
            container_rules(&t, &addr("10.251.0.2/24")).into_iter().chain(entry_rules(&t, Family::V4)).collect();
        assert_eq!(rules, want.rules);
        // snat off: no SETMARK/MASQ chains, only the DNAT entry jumps.
        let (chains, shared) = shared_rules(&t);
        assert_eq!(chains, [DNAT_CHAIN]);
        assert_eq!(shared.len(), 2);
    }

    #[test]
    fn masq_all_external_chain_and_mark_bit() {
        let forwards = vec![fwd(8080, 80, Protocol::Tcp, None)];
        let t = Portmap { masq_all: true, ..portmap(&forwards, "c1") };
        let v4: Vec<String> = container_rules(&t, &addr("10.1.0.5/24")).iter().map(Rule::render_args).collect();
        assert_eq!(
            v4,
            [
                "-p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK",
                "-p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.1.0.5:80"
            ]
        );
        let t = Portmap { external_set_mark_chain: Some("KUBE-MARK-MASQ"), ..portmap(&forwards, "c1") };
        let v6: Vec<String> = container_rules(&t, &addr("fd00::5/64")).iter().map(Rule::render_args).collect();
        assert_eq!(
            v6,
            [
                "-s fd00::/64 -p tcp -m tcp --dport 8080 -j KUBE-MARK-MASQ",
                "-p tcp -m tcp --dport 8080 -j DNAT --to-destination [fd00::5]:80"
            ]
        );
        assert_eq!(shared_rules(&t).0, [DNAT_CHAIN]);
        assert_eq!(mark_value(0), "0x1/0x1");
        assert_eq!(mark_value(5), "0x20/0x20");
        assert_eq!(mark_value(31), "0x80000000/0x80000000");
    }

    #[test]
    fn entry_rules_split_into_runs_of_fifteen() {
        let forwards: Vec<PortForward> = (0..40).map(|i| fwd(20000 + i, 80, Protocol::Tcp, None)).collect();
        let rules = entry_rules(&portmap(&forwards, "c1"), Family::V4);
        let runs: Vec<usize> = rules.iter().map(|r| r.option("--dports").unwrap().split(',').count()).collect();
        assert_eq!(runs, [15, 15, 10]);
        assert!(rules[1].option("--dports").unwrap().starts_with("20015,20016,"));
    }

    #[test]
    fn conditions_are_written_as_iptables_save_prints_them() {
        let c = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (basic, rest) = split_conditions(
            &c(&[
                "-m",
                "set",
                "--match-set",
                "x",
                "dst",
                "-o",
                "eth0",
                "!",
                "-i",
                "eth1",
                "--dst",
                "1.2.3.4",
                "!",
                "-s",
                "5.6.7.8/24",
            ]),
            Family::V4,
        );
        assert_eq!(basic, c(&["!", "-s", "5.6.7.0/24", "-d", "1.2.3.4/32", "!", "-i", "eth1", "-o", "eth0"]));
        assert_eq!(rest, c(&["-m", "set", "--match-set", "x", "dst"]));
        let (basic, rest) = split_conditions(&c(&["!", "-m", "foo"]), Family::V6);
        assert!(basic.is_empty());
        assert_eq!(rest, c(&["!", "-m", "foo"]));
    }

    #[test]
    fn a_second_container_and_a_second_add() {
        let first = reference_forwards();
        let saved = nat(REFERENCE_V4);
        let other = vec![fwd(9090, 90, Protocol::Tcp, None)];
        let batch = plan_setup(&saved, &portmap(&other, "ctr2"), &addr("10.251.0.3/24")).unwrap().render();
        // Only the new container's chain and entry; the shared rules are in place.
        assert!(batch.lines().all(|l| l == "*nat" || l == "COMMIT" || l.contains("CNI-DN-")), "{batch}");
        // ADD again with one more mapping: only the missing rules are appended (the reference's union).
        let mut more = first.clone();
        more.push(fwd(9090, 90, Protocol::Tcp, None));
        let batch = plan_setup(&saved, &portmap(&more, "ctr1"), &addr("10.251.0.2/24")).unwrap().render();
        let added: Vec<&str> = batch.lines().filter(|l| l.starts_with("-A")).collect();
        assert_eq!(added.len(), 4, "{batch}");
        assert!(added[3].contains("--dports 18080,18443,9090"), "{batch}");
    }

    #[test]
    fn teardown_removes_only_this_container() {
        let mut text = REFERENCE_V4.to_string();
        let other = dnat_chain_name("specnet", "ctr2");
        text = text.replace(
            "COMMIT",
            &format!(
                ":{other} - [0:0]\n-A {other} -p tcp -m tcp --dport 9090 -j DNAT --to-destination 10.251.0.3:90\n\
                 -A CNI-HOSTPORT-DNAT -p tcp -m comment --comment \"dnat name: \\\"specnet\\\" id: \\\"ctr2\\\"\" \
                 -m multiport --dports 9090 -j {other}\nCOMMIT"
            ),
        );
        let batch = plan_teardown(&nat(&text), "specnet", "ctr1").unwrap();
        assert_eq!(
            batch.render(),
            r#"*nat
-D CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"specnet\" id: \"ctr1\"" -m multiport --dports 18080,18443 -j CNI-DN-47b0c350c56dfce277c5b
-D CNI-HOSTPORT-DNAT -p udp -m comment --comment "dnat name: \"specnet\" id: \"ctr1\"" -m multiport --dports 15353 -j CNI-DN-47b0c350c56dfce277c5b
-F CNI-DN-47b0c350c56dfce277c5b
-X CNI-DN-47b0c350c56dfce277c5b
COMMIT
"#
        );
        let after = apply(&nat(&text), &batch);
        assert!(after.has_chain(&other) && after.jumps_to(&other).count() == 1);
        assert_eq!(plan_teardown(&after, "specnet", "ctr1"), None);
        // The pre-2018 SNAT chain and its jump go too.
        let sn = chain_name("SN-", "specnet", "ctr1");
        let old = format!("*nat\n:{OLD_SNAT_CHAIN} - [0:0]\n:{sn} - [0:0]\n-A {OLD_SNAT_CHAIN} -j {sn}\nCOMMIT\n");
        assert_eq!(
            plan_teardown(&nat(&old), "specnet", "ctr1").unwrap().render(),
            format!("*nat\n-D {OLD_SNAT_CHAIN} -j {sn}\n-F {sn}\n-X {sn}\nCOMMIT\n")
        );
    }

    #[test]
    fn gc_removes_unlisted_containers_of_this_network() {
        let mut text = REFERENCE_V4.to_string();
        for (net, id) in [("specnet", "ctr2"), ("othernet", "ctr3")] {
            let chain = dnat_chain_name(net, id);
            let comment = dnat_comment(net, id).replace('"', "\\\"");
            text = text.replace(
                "COMMIT",
                &format!(
                    ":{chain} - [0:0]\n-A {chain} -p tcp -m tcp --dport 1 -j DNAT --to-destination 10.0.0.1:1\n\
                     -A CNI-HOSTPORT-DNAT -p tcp -m comment --comment \"{comment}\" -m multiport --dports 1 -j {chain}\nCOMMIT"
                ),
            );
        }
        let valid: HashSet<&str> = ["ctr2"].into_iter().collect();
        let batch = plan_gc(&nat(&text), "specnet", &valid).unwrap().render();
        assert!(batch.contains("-X CNI-DN-47b0c350c56dfce277c5b\n"), "{batch}");
        assert!(!batch.contains(&dnat_chain_name("specnet", "ctr2")), "{batch}");
        assert!(!batch.contains(&dnat_chain_name("othernet", "ctr3")), "{batch}");
        let all: HashSet<&str> = ["ctr1", "ctr2"].into_iter().collect();
        assert_eq!(plan_gc(&nat(&text), "specnet", &all), None);
    }

    #[test]
    fn check_batch_only_checks() {
        let forwards = reference_forwards();
        let batch = plan_check(&portmap(&forwards, "ctr1"), &addr("10.251.0.2/24")).render();
        let lines: Vec<&str> = batch.lines().collect();
        assert!(lines[1..lines.len() - 1].iter().all(|l| l.starts_with("-C ")), "{batch}");
        assert_eq!(lines.len(), 2 + 5 + 9 + 2);
    }

    #[test]
    fn long_comments_are_trimmed_like_the_reference() {
        let id = "c".repeat(300);
        let comment = dnat_comment("net", &id);
        assert_eq!(comment.len(), 256);
        assert!(comment.ends_with("ccc..."));
        assert_eq!(dnat_comment("specnet", "ctr1"), r#"dnat name: "specnet" id: "ctr1""#);
    }

    #[test]
    fn protocols_parse_in_any_case() {
        assert_eq!(Protocol::parse("TCP"), Some(Protocol::Tcp));
        assert_eq!(Protocol::parse("Sctp"), Some(Protocol::Sctp));
        assert_eq!(Protocol::parse("icmp"), None);
        let v4only = fwd(1, 1, Protocol::Udp, Some("127.0.0.1"));
        assert!(v4only.applies_to(Family::V4) && !v4only.applies_to(Family::V6));
        assert_eq!(fwd(1, 1, Protocol::Udp, Some("::")).destination(), None);
    }
}
