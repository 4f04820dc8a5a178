//! IP masquerade for a container's addresses (bridge and ptp `ipMasq`) in the iptables `nat` table,
//! per family, with the reference's rules (research 2.4); chain
//! `CNI-<24 hex of sha512(network+containerID)>`:
//! ```text
//! -A POSTROUTING -s 10.1.0.5/32 -m comment --comment "name: \"net\" id: \"cid\"" -j CNI-…
//! -A CNI-… -d 10.1.0.0/24 -m comment --comment "name: \"net\" id: \"cid\"" -j ACCEPT
//! -A CNI-… ! -d 224.0.0.0/4 -m comment --comment "name: \"net\" id: \"cid\"" -j MASQUERADE
//! ```

use super::{apply, chain_name, format_comment, go_quote, go_unquote, nat_surely_without, plan_remove_chains, save};
use super::{is_nft, remove_chains_by_handle, Batch, Rule, SavedTable, NAT};
use crate::errors::Collector;
use crate::firewall::error::FirewallError;
use crate::firewall::fastpath;
use crate::firewall::model::{Family, MasqTarget};
use crate::firewall::names::cut_at_char_boundary;
use crate::firewall::tools::{self, has_tool, restore_tool, save_tool, PendingRestore};
use crate::netlink::nft_chain_exists;
use ipnetwork::IpNetwork;
use std::collections::HashSet;

const POSTROUTING: &str = "POSTROUTING";

/// Whether the container's nat chain is known to be absent: then no rule can jump to it either
/// (iptables refuses to delete a chain that is still referenced), so nothing needs reading. Any
/// doubt (legacy iptables, a failing probe) answers `false`.
fn chain_surely_absent(family: Family, chain: &str) -> bool {
    fastpath::enabled() && is_nft(family) && matches!(nft_chain_exists(family.nft_family(), NAT, chain), Ok(false))
}

/// An ADD under way (see [`begin`]).
pub struct Setup<'a> {
    target: MasqTarget<'a>,
    /// The prepared restore, fed with its family's blind batch and loading it.
    loading: Option<PendingRestore>,
    /// The prepared restore when no batch could be planned blind for it.
    prepared: Option<PendingRestore>,
}

/// Starts ADD: installs the masquerade rules for every address; re-running leaves one copy of each
/// rule.
///
/// A new container's chain does not exist yet; the kernel says so in one netlink round trip, and the
/// rules are then written blind in one batch, through `prepared` (a restore tool started ahead of
/// time) when it is of that family: it gets its batch now and loads it while the caller goes on (the
/// bridge configures the container meanwhile); [`Setup::finish`] waits for it and does the rest.
/// Dropping the value waits for the restore too, so a caller that fails in between can roll back
/// knowing the batch has landed or failed. Reading the table first (`iptables-save`) costs a process
/// and grows with every container on the host, so it is kept for the rare case of a chain that
/// already exists (a repeated ADD, a second interface of the same container).
pub fn begin(t: MasqTarget<'_>, prepared: Option<PendingRestore>) -> Setup<'_> {
    let mut setup = Setup { target: t, loading: None, prepared };
    if let Some(mut p) = setup.prepared.take() {
        match blind_batch(p.family(), &t) {
            Some(batch) => {
                p.feed(&batch.render());
                setup.loading = Some(p);
            }
            None => setup.prepared = Some(p),
        }
    }
    setup
}

impl Setup<'_> {
    /// Waits for the batch started by [`begin`] and installs whatever it did not cover.
    pub fn finish(mut self) -> Result<(), FirewallError> {
        let t = &self.target;
        for family in Family::ALL.into_iter().filter(|f| !addresses_of(t, *f).is_empty()) {
            if let Some(loading) = self.loading.take_if(|l| l.family() == family) {
                match loading.finish() {
                    Ok(()) => continue,
                    Err(e) => log::debug!("blind masquerade batch failed, re-planning: {e}"),
                }
            } else if let Some(()) = setup_family_blind(family, t, &mut self.prepared) {
                continue;
            }
            apply(family, NAT, false, |saved| plan_iptables_setup(saved, family, t))?;
        }
        Ok(())
    }
}

/// The batch for a family of the container's addresses when its chain surely does not exist yet,
/// so it can be written without reading the table.
fn blind_batch(family: Family, t: &MasqTarget) -> Option<Batch> {
    let chain = chain_name("", t.network, t.container_id);
    if addresses_of(t, family).is_empty() || !chain_surely_absent(family, &chain) {
        return None;
    }
    plan_iptables_fresh(family, t)
}

/// The blind batch for a family, through the prepared restore when it is of that family;
/// `Some(())` when it loaded.
fn setup_family_blind(family: Family, t: &MasqTarget, prepared: &mut Option<PendingRestore>) -> Option<()> {
    let batch = blind_batch(family, t)?;
    let loaded = match prepared.take_if(|p| p.family() == family) {
        Some(p) => p.load(&batch.render()),
        None => tools::iptables_restore(family, &batch.render()),
    };
    match loaded {
        Ok(()) => Some(()),
        // Someone created the chain meanwhile: fall back to reading the table.
        Err(e) => {
            log::debug!("blind masquerade batch failed, re-planning: {e}");
            None
        }
    }
}

/// DEL: removes this attachment's chain and the jumps to it, found by chain name, so it works
/// without addresses; what is already gone (or a tool the host lacks) is success.
pub fn teardown(t: &MasqTarget) -> Result<(), FirewallError> {
    let mut errors = Collector::new();
    let chain = chain_name("", t.network, t.container_id);
    for family in Family::ALL {
        if !has_tool(save_tool(family)) || !has_tool(restore_tool(family)) {
            continue;
        }
        if chain_surely_absent(family, &chain) {
            continue;
        }
        match remove_chains_by_handle(family, NAT, std::slice::from_ref(&chain), Some(&[POSTROUTING])) {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => log::debug!("masquerade teardown by handle failed, reading the table: {e}"),
        }
        // Without an address of this family there is no evidence its table holds anything of ours,
        // so a host that cannot dump it (e.g. legacy ip6tables with IPv6 disabled) must not fail DEL.
        let tolerate_unreadable = addresses_of(t, family).is_empty();
        if let Err(e) = apply(family, NAT, tolerate_unreadable, |saved| plan_iptables_teardown(saved, &chain)) {
            errors.push(e);
        }
    }
    errors.finish()
}

/// CHECK: every rule ADD installs for these addresses is present.
pub fn check(t: &MasqTarget) -> Result<(), FirewallError> {
    for family in Family::ALL.into_iter().filter(|f| !addresses_of(t, *f).is_empty()) {
        // A batch of `-C` lines asks iptables itself whether each rule is there without
        // dumping the table; only when it says no is the table read, to name what is missing.
        if tools::iptables_restore(family, &plan_iptables_check(family, t).render()).is_ok() {
            continue;
        }
        let saved = save(family, NAT)?;
        verify_iptables(&saved, family, t).map_err(FirewallError::Check)?;
    }
    Ok(())
}

/// GC: removes the masquerade chains of `network` whose container ID is not in `valid_ids` (the
/// chains ignore ifname, so a container listed with any ifname is kept).
pub fn gc(network: &str, valid_ids: &HashSet<&str>) -> Result<(), FirewallError> {
    let mut errors = Collector::new();
    for family in Family::ALL {
        if !has_tool(save_tool(family)) || !has_tool(restore_tool(family)) {
            continue;
        }
        if nothing_to_collect(family, network, valid_ids) {
            continue;
        }
        if let Err(e) = apply(family, NAT, false, |saved| plan_iptables_gc(saved, network, valid_ids)) {
            errors.push(e);
        }
    }
    errors.finish()
}

/// Whether the kernel shows (iptables-nft, over netlink) that the nat table holds no rule of `network`
/// for a container outside `valid_ids`, so GC need not run `iptables-save`. Any doubt answers `false`.
fn nothing_to_collect(family: Family, network: &str, valid_ids: &HashSet<&str>) -> bool {
    let prefix = format!("name: {} id: ", go_quote(network));
    nat_surely_without(family, |comment| {
        comment.strip_prefix(&prefix).and_then(go_unquote).is_some_and(|id| !valid_ids.contains(id.as_str()))
    })
}

/// The target's addresses of one family, without duplicates, in the caller's order.
fn addresses_of(t: &MasqTarget, family: Family) -> Vec<IpNetwork> {
    let mut out: Vec<IpNetwork> = Vec::new();
    for a in t.addresses.iter().filter(|a| Family::of(&a.ip()) == family) {
        if !out.iter().any(|o| o.ip() == a.ip()) {
            out.push(*a);
        }
    }
    out
}

/// `10.1.0.5/24` → `10.1.0.0/24`.
fn subnet_of(a: &IpNetwork) -> String {
    format!("{}/{}", a.network(), a.prefix())
}

/// `10.1.0.5/24` → `10.1.0.5/32`, the form `iptables-save` prints for `-s 10.1.0.5`.
fn host_of(a: &IpNetwork) -> String {
    let bits = if a.is_ipv4() { 32 } else { 128 };
    format!("{}/{bits}", a.ip())
}

fn multicast(family: Family) -> &'static str {
    match family {
        Family::V4 => "224.0.0.0/4",
        Family::V6 => "ff00::/8",
    }
}

fn accept_rule(chain: &str, subnet: &str, comment: &str) -> Rule {
    Rule::new(chain, ["-d", subnet, "-m", "comment", "--comment", comment, "-j", "ACCEPT"])
}

fn masquerade_rule(chain: &str, family: Family, comment: &str) -> Rule {
    Rule::new(chain, ["!", "-d", multicast(family), "-m", "comment", "--comment", comment, "-j", "MASQUERADE"])
}

fn jump_rule(chain: &str, address: &IpNetwork, comment: &str) -> Rule {
    Rule::new(POSTROUTING, ["-s", &host_of(address), "-m", "comment", "--comment", comment, "-j", chain])
}

/// The container chain's rules ADD writes: one ACCEPT per subnet (those already in the chain first,
/// so a second interface of the same container on this network keeps its own), then MASQUERADE.
/// Unlike the reference's per-address append, every ACCEPT precedes the MASQUERADE, so an address in
/// a second subnet is not masqueraded towards that subnet.
fn chain_rules(saved: &SavedTable, family: Family, t: &MasqTarget) -> Vec<Rule> {
    let chain = chain_name("", t.network, t.container_id);
    let comment = masq_comment(t.network, t.container_id);
    let mut subnets: Vec<String> = saved
        .rules_in(&chain)
        .filter_map(|r| r.option("-d").filter(|d| *r == accept_rule(&chain, d, &comment)).map(str::to_string))
        .collect();
    for subnet in addresses_of(t, family).iter().map(subnet_of) {
        if !subnets.contains(&subnet) {
            subnets.push(subnet);
        }
    }
    let mut rules: Vec<Rule> = subnets.iter().map(|s| accept_rule(&chain, s, &comment)).collect();
    rules.push(masquerade_rule(&chain, family, &comment));
    rules
}

/// Plans ADD for one family: rewrite the container chain (`:CHAIN - [0:0]` flushes it) unless it
/// already holds exactly its rules, and add the POSTROUTING jumps that are missing. `None` when
/// everything is in place.
fn plan_iptables_setup(saved: &SavedTable, family: Family, t: &MasqTarget) -> Option<Batch> {
    let addresses = addresses_of(t, family);
    if addresses.is_empty() {
        return None;
    }
    let chain = chain_name("", t.network, t.container_id);
    let comment = masq_comment(t.network, t.container_id);
    let wanted = chain_rules(saved, family, t);
    let chain_ok = saved.has_chain(&chain) && saved.rules_in(&chain).eq(wanted.iter());
    let jumps: Vec<Rule> =
        addresses.iter().map(|a| jump_rule(&chain, a, &comment)).filter(|j| !saved.contains(j)).collect();
    if chain_ok && jumps.is_empty() {
        return None;
    }
    let mut batch = Batch::new(NAT);
    if !chain_ok {
        batch.declare_chain(&chain);
        wanted.iter().for_each(|r| batch.append(r));
    }
    jumps.iter().for_each(|j| batch.append(j));
    Some(batch)
}

/// Plans ADD for a chain known to be absent: `-N` (which, unlike `:CHAIN`, makes iptables-nft look
/// only for that chain, not list them all; 0.8 ms less at 1000 containers) and its rules.
fn plan_iptables_fresh(family: Family, t: &MasqTarget) -> Option<Batch> {
    let addresses = addresses_of(t, family);
    if addresses.is_empty() {
        return None;
    }
    let chain = chain_name("", t.network, t.container_id);
    let comment = masq_comment(t.network, t.container_id);
    let mut batch = Batch::new(NAT);
    batch.new_chain(&chain);
    chain_rules(&SavedTable::default(), family, t).iter().for_each(|r| batch.append(r));
    addresses.iter().for_each(|a| batch.append(&jump_rule(&chain, a, &comment)));
    Some(batch)
}

/// Plans DEL for one family: delete every rule jumping to the container chain (whatever its source
/// form, including the legacy `-s <ip>/<prefix>`), then flush and delete the chain.
fn plan_iptables_teardown(saved: &SavedTable, chain: &str) -> Option<Batch> {
    plan_remove_chains(saved, &[chain.to_string()])
}

/// The iptables comment of an attachment's rules: the reference's `name: "<net>" id: "<id>"`, cut
/// to the 255 bytes the comment match holds. `iptables` cuts it so when the reference passes a
/// longer one (a long container ID); written whole into a restore batch it would instead make
/// the line too long for `iptables-restore`.
fn masq_comment(network: &str, container_id: &str) -> String {
    let mut comment = format_comment(network, container_id);
    comment.truncate(cut_at_char_boundary(&comment, COMMENT_MAX).len());
    comment
}

/// The longest comment the `comment` match stores (`XT_MAX_COMMENT_LEN` less its NUL).
const COMMENT_MAX: usize = 255;

/// Plans GC for one family: the chains of `network`'s containers not in `valid_ids`, recognised by
/// the reference comment on their rules or on the jumps to them. A comment cut short (a long
/// container ID) names no ID, so its rule's own chain, or the chain it jumps to, is the owner.
fn plan_iptables_gc(saved: &SavedTable, network: &str, valid_ids: &HashSet<&str>) -> Option<Batch> {
    let prefix = format!("name: {} id: ", go_quote(network));
    let valid: HashSet<String> = valid_ids.iter().map(|id| chain_name("", network, id)).collect();
    let mut stale: Vec<String> = Vec::new();
    for rule in &saved.rules {
        let Some(quoted) = rule.comment().and_then(|c| c.strip_prefix(&prefix)) else { continue };
        let owner = match go_unquote(quoted) {
            Some(id) => chain_name("", network, &id),
            None if quoted.len() + prefix.len() >= COMMENT_MAX && rule.chain != POSTROUTING => rule.chain.clone(),
            None if quoted.len() + prefix.len() >= COMMENT_MAX => match rule.target() {
                Some(target) => target.to_string(),
                None => continue,
            },
            None => continue,
        };
        if valid.contains(&owner) || !owner.starts_with("CNI-") {
            continue;
        }
        // Only a rule in that container's chain or jumping to it is ours; portmap's comments differ.
        if (rule.chain == owner || rule.target() == Some(owner.as_str())) && !stale.contains(&owner) {
            stale.push(owner);
        }
    }
    plan_remove_chains(saved, &stale)
}

/// CHECK for one family: the chain exists and holds its ACCEPT and MASQUERADE rules, and every jump exists.
/// The rules ADD installs for one family, as `-C` lines: the batch fails unless all are present.
fn plan_iptables_check(family: Family, t: &MasqTarget) -> Batch {
    let chain = chain_name("", t.network, t.container_id);
    let comment = masq_comment(t.network, t.container_id);
    let addresses = addresses_of(t, family);
    let mut batch = Batch::new(NAT);
    for a in &addresses {
        batch.check(&accept_rule(&chain, &subnet_of(a), &comment));
    }
    batch.check(&masquerade_rule(&chain, family, &comment));
    for a in &addresses {
        batch.check(&jump_rule(&chain, a, &comment));
    }
    batch
}

fn verify_iptables(saved: &SavedTable, family: Family, t: &MasqTarget) -> Result<(), String> {
    let chain = chain_name("", t.network, t.container_id);
    let comment = masq_comment(t.network, t.container_id);
    let tool = match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    };
    if !saved.has_chain(&chain) {
        return Err(format!("masquerade chain {chain} not found in {tool} table nat"));
    }
    let addresses = addresses_of(t, family);
    let wanted = addresses
        .iter()
        .map(|a| accept_rule(&chain, &subnet_of(a), &comment))
        .chain([masquerade_rule(&chain, family, &comment)])
        .chain(addresses.iter().map(|a| jump_rule(&chain, a, &comment)));
    for rule in wanted {
        if !saved.contains(&rule) {
            return Err(format!(
                "masquerade rule not found in {tool} table nat: -A {} {}",
                rule.chain,
                rule.render_args()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `iptables-save -t nat` after the reference bridge v1.1.1 (Debian, /usr/lib/cni) ran ADD with
    /// `{"name":"specnet","bridge":"specbr0","isGateway":true,"ipMasq":true, host-local 10.251.0.0/24 +
    /// fd00:246::/64}`, CNI_CONTAINERID=ctr1, CNI_IFNAME=eth0, in a throwaway netns.
    const REFERENCE_V4: &str = r#"# Generated by iptables-save v1.8.9 (nf_tables) on Mon Nov 30 08:42:03 2026
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:CNI-47b0c350c56dfce277c5b5d1 - [0:0]
-A POSTROUTING -s 10.251.0.2/32 -m comment --comment "name: \"specnet\" id: \"ctr1\"" -j CNI-47b0c350c56dfce277c5b5d1
-A CNI-47b0c350c56dfce277c5b5d1 -d 10.251.0.0/24 -m comment --comment "name: \"specnet\" id: \"ctr1\"" -j ACCEPT
-A CNI-47b0c350c56dfce277c5b5d1 ! -d 224.0.0.0/4 -m comment --comment "name: \"specnet\" id: \"ctr1\"" -j MASQUERADE
COMMIT
# Completed on Mon Nov 30 08:42:03 2026
"#;

    /// `ip6tables-save -t nat` from the same reference run.
    const REFERENCE_V6: &str = r#"# Generated by ip6tables-save v1.8.9 (nf_tables) on Mon Nov 30 08:42:03 2026
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:CNI-47b0c350c56dfce277c5b5d1 - [0:0]
-A POSTROUTING -s fd00:246::2/128 -m comment --comment "name: \"specnet\" id: \"ctr1\"" -j CNI-47b0c350c56dfce277c5b5d1
-A CNI-47b0c350c56dfce277c5b5d1 -d fd00:246::/64 -m comment --comment "name: \"specnet\" id: \"ctr1\"" -j ACCEPT
-A CNI-47b0c350c56dfce277c5b5d1 ! -d ff00::/8 -m comment --comment "name: \"specnet\" id: \"ctr1\"" -j MASQUERADE
COMMIT
# Completed on Mon Nov 30 08:42:03 2026
"#;

    const EMPTY_NAT: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
                             :POSTROUTING ACCEPT [0:0]\nCOMMIT\n";

    fn nat(text: &str) -> SavedTable {
        SavedTable::parse(text, NAT).unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNetwork> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn target<'a>(addresses: &'a [IpNetwork]) -> MasqTarget<'a> {
        MasqTarget { network: "specnet", container_id: "ctr1", ifname: "eth0", addresses }
    }

    #[test]
    fn fresh_batch_creates_the_chain_with_n() {
        let addrs = nets(&["10.251.0.2/24"]);
        assert_eq!(
            plan_iptables_fresh(Family::V4, &target(&addrs)).unwrap().render(),
            r#"*nat
-N CNI-47b0c350c56dfce277c5b5d1
-A CNI-47b0c350c56dfce277c5b5d1 -d 10.251.0.0/24 -m comment --comment "name: \"specnet\" id: \"ctr1\"" -j ACCEPT
-A CNI-47b0c350c56dfce277c5b5d1 ! -d 224.0.0.0/4 -m comment --comment "name: \"specnet\" id: \"ctr1\"" -j MASQUERADE
-A POSTROUTING -s 10.251.0.2/32 -m comment --comment "name: \"specnet\" id: \"ctr1\"" -j CNI-47b0c350c56dfce277c5b5d1
COMMIT
"#
        );
        assert!(plan_iptables_fresh(Family::V6, &target(&addrs)).is_none());
    }

    #[test]
    fn setup_batch_is_the_reference_rules() {
        let addrs = nets(&["10.251.0.2/24", "fd00:246::2/64"]);
        let v4 = plan_iptables_setup(&nat(EMPTY_NAT), Family::V4, &target(&addrs)).unwrap();
        assert_eq!(
            v4.render(),
            r#"*nat
:CNI-47b0c350c56dfce277c5b5d1 - [0:0]
-A CNI-47b0c350c56dfce277c5b5d1 -d 10.251.0.0/24 -m comment --comment "name: \"specnet\" id: \"ctr1\"" -j ACCEPT
-A CNI-47b0c350c56dfce277c5b5d1 ! -d 224.0.0.0/4 -m comment --comment "name: \"specnet\" id: \"ctr1\"" -j MASQUERADE
-A POSTROUTING -s 10.251.0.2/32 -m comment --comment "name: \"specnet\" id: \"ctr1\"" -j CNI-47b0c350c56dfce277c5b5d1
COMMIT
"#
        );
        let v6 = plan_iptables_setup(&nat(EMPTY_NAT), Family::V6, &target(&addrs)).unwrap();
        assert_eq!(
            v6.render(),
            r#"*nat
:CNI-47b0c350c56dfce277c5b5d1 - [0:0]
-A CNI-47b0c350c56dfce277c5b5d1 -d fd00:246::/64 -m comment --comment "name: \"specnet\" id: \"ctr1\"" -j ACCEPT
-A CNI-47b0c350c56dfce277c5b5d1 ! -d ff00::/8 -m comment --comment "name: \"specnet\" id: \"ctr1\"" -j MASQUERADE
-A POSTROUTING -s fd00:246::2/128 -m comment --comment "name: \"specnet\" id: \"ctr1\"" -j CNI-47b0c350c56dfce277c5b5d1
COMMIT
"#
        );
    }

    #[test]
    fn reference_state_is_already_in_place() {
        let addrs = nets(&["10.251.0.2/24", "fd00:246::2/64"]);
        let t = target(&addrs);
        assert_eq!(plan_iptables_setup(&nat(REFERENCE_V4), Family::V4, &t), None);
        assert_eq!(plan_iptables_setup(&nat(REFERENCE_V6), Family::V6, &t), None);
        assert_eq!(verify_iptables(&nat(REFERENCE_V4), Family::V4, &t), Ok(()));
        assert_eq!(verify_iptables(&nat(REFERENCE_V6), Family::V6, &t), Ok(()));
    }

    #[test]
    fn setup_only_adds_missing_jumps() {
        // Chain intact, a new address: only its jump is appended, no chain rewrite.
        let addrs = nets(&["10.251.0.2/24", "10.251.0.3/24"]);
        let batch = plan_iptables_setup(&nat(REFERENCE_V4), Family::V4, &target(&addrs)).unwrap();
        assert_eq!(
            batch.render(),
            "*nat\n-A POSTROUTING -s 10.251.0.3/32 -m comment --comment \"name: \\\"specnet\\\" id: \\\"ctr1\\\"\" \
             -j CNI-47b0c350c56dfce277c5b5d1\nCOMMIT\n"
        );
    }

    #[test]
    fn setup_keeps_accepts_before_masquerade() {
        // The reference appends per address: ACCEPT 10.251.0.0/24, MASQUERADE, ACCEPT 10.252.0.0/24.
        // The rewrite keeps both subnets and puts MASQUERADE last.
        let reordered = REFERENCE_V4.replace(
            "COMMIT",
            "-A CNI-47b0c350c56dfce277c5b5d1 -d 10.252.0.0/24 -m comment --comment \"name: \\\"specnet\\\" id: \
             \\\"ctr1\\\"\" -j ACCEPT\nCOMMIT",
        );
        let addrs = nets(&["10.251.0.2/24"]);
        let batch = plan_iptables_setup(&nat(&reordered), Family::V4, &target(&addrs)).unwrap().render();
        let lines: Vec<&str> = batch.lines().collect();
        assert_eq!(lines[1], ":CNI-47b0c350c56dfce277c5b5d1 - [0:0]");
        assert!(lines[2].contains("-d 10.251.0.0/24") && lines[3].contains("-d 10.252.0.0/24"));
        assert!(lines[4].ends_with("-j MASQUERADE"));
        assert_eq!(lines.len(), 6, "no jump re-added: {batch}");
    }

    #[test]
    fn setup_skips_families_without_addresses() {
        let addrs = nets(&["10.251.0.2/24"]);
        assert_eq!(plan_iptables_setup(&nat(EMPTY_NAT), Family::V6, &target(&addrs)), None);
    }

    #[test]
    fn teardown_deletes_jumps_of_any_form_then_the_chain() {
        let legacy = REFERENCE_V4.replace(
            "COMMIT",
            "-A POSTROUTING -s 10.251.0.2/24 -m comment --comment \"name: \\\"specnet\\\" id: \\\"ctr1\\\"\" \
             -j CNI-47b0c350c56dfce277c5b5d1\nCOMMIT",
        );
        let batch = plan_iptables_teardown(&nat(&legacy), "CNI-47b0c350c56dfce277c5b5d1").unwrap();
        assert_eq!(
            batch.render(),
            r#"*nat
-D POSTROUTING -s 10.251.0.2/32 -m comment --comment "name: \"specnet\" id: \"ctr1\"" -j CNI-47b0c350c56dfce277c5b5d1
-D POSTROUTING -s 10.251.0.2/24 -m comment --comment "name: \"specnet\" id: \"ctr1\"" -j CNI-47b0c350c56dfce277c5b5d1
-F CNI-47b0c350c56dfce277c5b5d1
-X CNI-47b0c350c56dfce277c5b5d1
COMMIT
"#
        );
        assert_eq!(plan_iptables_teardown(&nat(EMPTY_NAT), "CNI-47b0c350c56dfce277c5b5d1"), None);
    }

    #[test]
    fn gc_removes_only_unlisted_containers_of_the_network() {
        let comment = |net: &str, id: &str| format_comment(net, id).replace('"', "\\\"");
        let mut dump = String::from("*nat\n:POSTROUTING ACCEPT [0:0]\n");
        for (net, id, ip) in
            [("specnet", "ctr1", "10.0.0.1"), ("specnet", "ctr2", "10.0.0.2"), ("other", "ctr3", "10.0.0.3")]
        {
            let chain = chain_name("", net, id);
            dump.push_str(&format!(":{chain} - [0:0]\n"));
            dump.push_str(&format!(
                "-A POSTROUTING -s {ip}/32 -m comment --comment \"{}\" -j {chain}\n",
                comment(net, id)
            ));
            dump.push_str(&format!(
                "-A {chain} -d 10.0.0.0/24 -m comment --comment \"{}\" -j ACCEPT\n",
                comment(net, id)
            ));
        }
        // An orphan chain whose jump is gone is still recognised by its rules' comment.
        let orphan = chain_name("", "specnet", "ctr4");
        dump.push_str(&format!(
            ":{orphan} - [0:0]\n-A {orphan} -j MASQUERADE -m comment --comment \"{}\"\n",
            comment("specnet", "ctr4")
        ));
        dump.push_str("COMMIT\n");
        let valid: HashSet<&str> = ["ctr1"].into_iter().collect();
        let batch = plan_iptables_gc(&nat(&dump), "specnet", &valid).unwrap().render();
        let ctr2 = chain_name("", "specnet", "ctr2");
        assert_eq!(
            batch,
            format!(
                "*nat\n-D POSTROUTING -s 10.0.0.2/32 -m comment --comment \"{}\" -j {ctr2}\n-F {ctr2}\n-F {orphan}\n\
                 -X {ctr2}\n-X {orphan}\nCOMMIT\n",
                comment("specnet", "ctr2")
            )
        );
        let all: HashSet<&str> = ["ctr1", "ctr2", "ctr4"].into_iter().collect();
        assert_eq!(plan_iptables_gc(&nat(&dump), "specnet", &all), None);
    }

    #[test]
    fn long_container_ids_give_the_comment_iptables_keeps() {
        let long = "c".repeat(10 * 1024);
        let comment = masq_comment("specnet", &long);
        assert_eq!(comment.len(), 255);
        assert_eq!(comment, format_comment("specnet", &long)[..255]);
        assert_eq!(masq_comment("specnet", "ctr1"), format_comment("specnet", "ctr1"));
        let addrs = nets(&["10.0.0.5/24"]);
        let t = MasqTarget { network: "specnet", container_id: &long, ifname: "eth0", addresses: &addrs };
        let batch = plan_iptables_fresh(Family::V4, &t).unwrap().render();
        assert!(batch.lines().all(|l| l.len() < 400), "{batch}");

        // GC recognises such a chain by the rules in it and the jump to it.
        let chain = chain_name("", "specnet", &long);
        let quoted = comment.replace('"', "\\\"");
        let dump = format!(
            "*nat\n:POSTROUTING ACCEPT [0:0]\n:{chain} - [0:0]\n\
             -A POSTROUTING -s 10.0.0.5/32 -m comment --comment \"{quoted}\" -j {chain}\n\
             -A {chain} -d 10.0.0.0/24 -m comment --comment \"{quoted}\" -j ACCEPT\nCOMMIT\n"
        );
        let none: HashSet<&str> = HashSet::new();
        let batch = plan_iptables_gc(&nat(&dump), "specnet", &none).unwrap().render();
        assert!(batch.contains(&format!("-X {chain}")), "{batch}");
        let keep: HashSet<&str> = [long.as_str()].into_iter().collect();
        assert_eq!(plan_iptables_gc(&nat(&dump), "specnet", &keep), None);
    }

    #[test]
    fn check_reports_the_missing_rule() {
        let addrs = nets(&["10.251.0.2/24"]);
        let without_masq: String =
            REFERENCE_V4.lines().filter(|l| !l.contains("MASQUERADE")).map(|l| format!("{l}\n")).collect();
        assert_eq!(
            verify_iptables(&nat(&without_masq), Family::V4, &target(&addrs)).unwrap_err(),
            r#"masquerade rule not found in iptables table nat: -A CNI-47b0c350c56dfce277c5b5d1 ! -d 224.0.0.0/4 -m comment --comment "name: \"specnet\" id: \"ctr1\"" -j MASQUERADE"#
        );
        assert_eq!(
            verify_iptables(&nat(EMPTY_NAT), Family::V4, &target(&addrs)).unwrap_err(),
            "masquerade chain CNI-47b0c350c56dfce277c5b5d1 not found in iptables table nat"
        );
    }
}
