//! The iptables backend of the `firewall` plugin: the reference's filter-table rules byte for
//! byte (wave2-anchors §1.4), written as one `iptables-restore --noflush -w` batch per family
//! and operation, planned from one `iptables-save -t filter`.
//!
//! ```text
//! -N CNI-FORWARD ; -N <admin>                                    (each only if absent, never flushed)
//! -I FORWARD 1 -m comment --comment "CNI firewall plugin rules" -j CNI-FORWARD
//! -I CNI-FORWARD 1 -m comment --comment "CNI firewall plugin admin overrides" -j <admin>
//! -A CNI-FORWARD -d <ip>/32 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
//! -A CNI-FORWARD -s <ip>/32 -j ACCEPT
//! ```
//!
//! and, for `ingressPolicy` `same-bridge`/`isolated`, the reference's `CNI-ISOLATION-STAGE-1/2`
//! chains. Each command is emitted only when the rule it writes is absent (the reference's
//! `-C` before `-I`/`-A`), in the reference's order, so the resulting table is the one the
//! reference leaves. `-N` (not `:chain`) creates chains, so a batch planned from a stale dump
//! fails whole instead of flushing a chain another writer just filled; it is then re-planned.
//!
//! Fast path (`CNI_FIREWALL_FAST_PATHS=0` turns it off, as every fast path): where iptables is
//! the nf_tables variant and `CNI-FORWARD` already holds rules, the kernel is asked over netlink
//! which of the attachment's addresses already have their two rules, and one batch `-C`hecks
//! every shared jump and isolation rule and appends the missing accept rules: no dump, one
//! process. A missing shared rule fails that batch whole, and the plain path runs instead.
//! DEL likewise: the kernel says how many copies of each accept rule there are, and one batch
//! `-D`eletes exactly those (iptables itself matches each `-D` against the rule, so a rule that
//! only looked like ours fails the batch and the plain path decides); none there, no process.
//!
//! Netlink path, before the fast path: with the `open` policy and both jumps in place (read
//! over netlink, comment included), ADD writes the accept rules as one nf_tables batch of
//! exactly the expressions iptables-nft writes for them (address match, the `conntrack` xtables
//! match, counter, accept), so `iptables-save` prints and `iptables -C` finds the reference's
//! rules; DEL deletes, by handle, the rules whose expressions are exactly those. No process.

use super::forward::{ForwardAccept, ForwardBackend, IngressPolicy};
use super::iptables::{Batch, Rule, SavedTable};
use super::restore::{self, apply_iptables, has_tool, iptables_save, restore_tool, save_tool, PendingRestore};
use super::{Family, FirewallError};
use crate::netlink::{nft_rules, AddrField, CmpOp, Expr, NftBatch, NftFamily, NftOp, NftRule, Verdict};
use std::net::IpAddr;

/// The plugin's chain, jumped to from `FORWARD`.
pub const FORWARD_CHAIN: &str = "CNI-FORWARD";
/// First isolation stage, jumped to from `FORWARD` ahead of [`FORWARD_CHAIN`].
pub const STAGE1_CHAIN: &str = "CNI-ISOLATION-STAGE-1";
/// Second isolation stage.
pub const STAGE2_CHAIN: &str = "CNI-ISOLATION-STAGE-2";

const TABLE: &str = "filter";
const FORWARD_COMMENT: &str = "CNI firewall plugin rules";
const ADMIN_COMMENT: &str = "CNI firewall plugin admin overrides";
const ISOLATION_COMMENT: &str = "CNI firewall plugin rules (ingressPolicy: same-bridge|isolated)";
/// What v1.1.1 (before `isolated`) wrote where the newest reference writes [`ISOLATION_COMMENT`]:
/// a rule with either comment is the same rule, so a host switched from v1.1.1 gets no second copy.
const V1_1_ISOLATION_COMMENT: &str = "CNI firewall plugin rules (ingressPolicy: same-bridge)";

/// The iptables backend.
#[derive(Debug, Clone, Copy, Default)]
pub struct IptablesForward;

/// `<ip>/32` or `<ip>/128`, as `iptables-save` prints a host address.
fn host(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}/32"),
        IpAddr::V6(v6) => format!("{v6}/128"),
    }
}

fn comment(args: &[&str], text: &str, target: &str) -> Vec<String> {
    let mut out: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    out.extend(["-m", "comment", "--comment", text, "-j", target].map(String::from));
    out
}

/// `FORWARD` → `CNI-FORWARD`.
pub fn forward_jump() -> Rule {
    Rule { chain: "FORWARD".into(), args: comment(&[], FORWARD_COMMENT, FORWARD_CHAIN) }
}

/// `CNI-FORWARD` → the admin chain.
pub fn admin_jump(admin_chain: &str) -> Rule {
    Rule { chain: FORWARD_CHAIN.into(), args: comment(&[], ADMIN_COMMENT, admin_chain) }
}

/// The two accept rules of one address, in the reference's order.
pub fn accept_rules(ip: &IpAddr) -> [Rule; 2] {
    let h = host(ip);
    [
        Rule::new(FORWARD_CHAIN, ["-d", &h, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"]),
        Rule::new(FORWARD_CHAIN, ["-s", &h, "-j", "ACCEPT"]),
    ]
}

/// Which of the backend's rules an operation covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Chains, jumps, accept rules and isolation rules.
    All,
    /// Only the `ingressPolicy` rules, which the reference writes with iptables whatever the
    /// backend.
    Isolation,
}

/// Where a rule goes when it is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Head,
    Tail,
}

/// The isolation rules of `policy` for `bridge`, each with where the reference puts it, in the
/// reference's order (`setupIsolationChains`).
fn isolation_rules(bridge: &str, policy: IngressPolicy) -> Vec<(Rule, Place)> {
    let own = format!("CNI firewall plugin rules (ingressPolicy: {})", policy.as_str());
    let mut rules = vec![
        (Rule { chain: "FORWARD".into(), args: comment(&[], ISOLATION_COMMENT, STAGE1_CHAIN) }, Place::Head),
        (
            Rule { chain: STAGE1_CHAIN.into(), args: comment(&["-i", bridge, "!", "-o", bridge], &own, STAGE2_CHAIN) },
            Place::Head,
        ),
    ];
    if policy == IngressPolicy::Isolated {
        rules.push((
            Rule { chain: STAGE1_CHAIN.into(), args: comment(&["-i", bridge, "-o", bridge], &own, "DROP") },
            Place::Head,
        ));
    }
    rules.push((Rule { chain: STAGE1_CHAIN.into(), args: comment(&[], ISOLATION_COMMENT, "RETURN") }, Place::Tail));
    rules.push((
        Rule { chain: STAGE2_CHAIN.into(), args: comment(&["-o", bridge], ISOLATION_COMMENT, "DROP") },
        Place::Head,
    ));
    rules.push((Rule { chain: STAGE2_CHAIN.into(), args: comment(&[], ISOLATION_COMMENT, "RETURN") }, Place::Tail));
    rules
}

/// The same rule as v1.1.1 wrote it, for a rule carrying [`ISOLATION_COMMENT`].
fn v1_1_form(rule: &Rule) -> Option<Rule> {
    (rule.comment() == Some(ISOLATION_COMMENT)).then(|| Rule {
        chain: rule.chain.clone(),
        args: rule
            .args
            .iter()
            .map(|a| if a == ISOLATION_COMMENT { V1_1_ISOLATION_COMMENT.to_string() } else { a.clone() })
            .collect(),
    })
}

/// Whether `rule`, or its v1.1.1 form, is in the table.
fn present(table: &SavedTable, rule: &Rule) -> bool {
    table.contains(rule) || v1_1_form(rule).is_some_and(|old| table.contains(&old))
}

/// The addresses of one family, in order.
fn of_family(addresses: &[IpAddr], family: Family) -> Vec<IpAddr> {
    addresses.iter().copied().filter(|a| Family::of(a) == family).collect()
}

/// A batch being planned against a dump, with the dump updated as each command would change it,
/// so that "only if absent" sees what earlier commands of the same batch add.
struct Planner {
    table: SavedTable,
    batch: Batch,
    /// What the batch adds, for undoing it (chains are left: empty ones are harmless, and the
    /// reference leaves its chains too).
    added: Vec<Rule>,
}

impl Planner {
    fn new(saved: &SavedTable) -> Planner {
        Planner { table: saved.clone(), batch: Batch::new(TABLE), added: Vec::new() }
    }

    fn ensure_chain(&mut self, chain: &str) {
        if !self.table.has_chain(chain) {
            self.batch.new_chain(chain);
            self.table.chains.push(chain.to_string());
        }
    }

    fn ensure_rule(&mut self, rule: &Rule, place: Place) {
        if present(&self.table, rule) {
            return;
        }
        match place {
            Place::Head => self.batch.insert(rule, 1),
            Place::Tail => self.batch.append(rule),
        }
        self.table.rules.push(rule.clone());
        self.added.push(rule.clone());
    }
}

/// Plans what ADD writes in one family; `None` when everything is in place.
fn plan_add(
    saved: &SavedTable,
    attachment: &ForwardAccept,
    family: Family,
    scope: Scope,
) -> Option<(Batch, Vec<Rule>)> {
    let addresses = of_family(&attachment.addresses, family);
    if addresses.is_empty() {
        return None;
    }
    let mut p = Planner::new(saved);
    if scope == Scope::All {
        p.ensure_chain(FORWARD_CHAIN);
        p.ensure_chain(&attachment.admin_chain);
        p.ensure_rule(&forward_jump(), Place::Head);
        p.ensure_rule(&admin_jump(&attachment.admin_chain), Place::Head);
        for ip in &addresses {
            for rule in accept_rules(ip) {
                p.ensure_rule(&rule, Place::Tail);
            }
        }
    }
    if let (Some(bridge), true) = (&attachment.bridge, attachment.ingress != IngressPolicy::Open) {
        p.ensure_chain(STAGE1_CHAIN);
        p.ensure_chain(STAGE2_CHAIN);
        for (rule, place) in isolation_rules(bridge, attachment.ingress) {
            p.ensure_rule(&rule, place);
        }
    }
    (!p.batch.is_empty()).then_some((p.batch, p.added))
}

/// Plans the removal of every copy of the accept rules of `addresses` (a racing reference can
/// leave two); `None` when none is there.
fn plan_remove(saved: &SavedTable, addresses: &[IpAddr]) -> Option<Batch> {
    let mut batch = Batch::new(TABLE);
    for ip in addresses {
        for rule in accept_rules(ip) {
            for _ in saved.rules.iter().filter(|r| **r == rule) {
                batch.delete(&rule);
            }
        }
    }
    (!batch.is_empty()).then_some(batch)
}

/// Plans the removal of rules a failed ADD added.
fn plan_undo(saved: &SavedTable, added: &[Rule]) -> Option<Batch> {
    let mut batch = Batch::new(TABLE);
    for rule in added.iter().filter(|r| saved.contains(r)) {
        batch.delete(rule);
    }
    (!batch.is_empty()).then_some(batch)
}

/// Whether an nf_tables rule (as iptables-nft writes `-s|-d <ip>/32`) matches `ip` in `field`.
fn matches_address(rule: &NftRule, field: AddrField, ip: &IpAddr) -> bool {
    let prefix = if ip.is_ipv4() { 32 } else { 128 };
    let Ok(net) = ipnetwork::IpNetwork::new(*ip, prefix) else { return false };
    let wanted = Expr::addr_match(field, CmpOp::Eq, &net);
    rule.exprs.windows(wanted.len()).any(|w| w == wanted.as_slice())
}

/// The one-process ADD of the module doc: `None` when it does not apply (legacy iptables, fast
/// paths off, an empty or unreadable `CNI-FORWARD`, an address with only one of its two rules).
fn plan_fast(attachment: &ForwardAccept, family: Family) -> Option<(Batch, Vec<Rule>)> {
    if !super::fastpath::enabled() || !super::ipmasq::iptables_is_nft(family) {
        return None;
    }
    let nft_family = match family {
        Family::V4 => NftFamily::Ip,
        Family::V6 => NftFamily::Ip6,
    };
    let existing = nft_rules(nft_family, TABLE, FORWARD_CHAIN).ok()?;
    if existing.is_empty() {
        return None;
    }
    let mut batch = Batch::new(TABLE);
    batch.check(&forward_jump());
    batch.check(&admin_jump(&attachment.admin_chain));
    if let (Some(bridge), true) = (&attachment.bridge, attachment.ingress != IngressPolicy::Open) {
        for (rule, _) in isolation_rules(bridge, attachment.ingress) {
            batch.check(&rule);
        }
    }
    let mut added = Vec::new();
    for ip in of_family(&attachment.addresses, family) {
        let has = |field| existing.iter().any(|r| matches_address(r, field, &ip));
        match (has(AddrField::Destination), has(AddrField::Source)) {
            (true, true) => {}
            (false, false) => {
                for rule in accept_rules(&ip) {
                    batch.append(&rule);
                    added.push(rule);
                }
            }
            _ => return None,
        }
    }
    Some((batch, added))
}

/// `-m conntrack --ctstate RELATED,ESTABLISHED` as iptables-nft stores it: xtables match
/// `conntrack` revision 3 with its `struct xt_conntrack_mtinfo3` (162 bytes, `XT_ALIGN`ed to
/// 168): `match_flags` = `XT_CONNTRACK_STATE` at byte 146, `state_mask` = the ESTABLISHED (2)
/// and RELATED (4) bits at byte 150, native-endian `__u16`s; everything else zero.
fn conntrack_related_established() -> Expr {
    let mut info = vec![0u8; 168];
    info[146..148].copy_from_slice(&1u16.to_ne_bytes());
    info[150..152].copy_from_slice(&6u16.to_ne_bytes());
    Expr::Match { name: "conntrack".into(), rev: 3, info }
}

/// The expressions iptables-nft writes for one of the two accept rules of `ip`
/// (`destination`: the conntrack one), counter included.
fn accept_rule_exprs(ip: &IpAddr, destination: bool) -> Option<Vec<Expr>> {
    let prefix = if ip.is_ipv4() { 32 } else { 128 };
    let net = ipnetwork::IpNetwork::new(*ip, prefix).ok()?;
    let field = if destination { AddrField::Destination } else { AddrField::Source };
    let mut exprs = Expr::addr_match(field, CmpOp::Eq, &net);
    if destination {
        exprs.push(conntrack_related_established());
    }
    exprs.push(Expr::Other("counter".into()));
    exprs.push(Expr::Verdict(Verdict::Accept));
    Some(exprs)
}

/// Whether an nf_tables rule is exactly one of the two accept rules of `ip` as iptables-nft
/// writes it (a counter or not), with no comment.
fn is_accept_rule(rule: &NftRule, ip: &IpAddr, destination: bool) -> bool {
    let counter = Expr::Other("counter".into());
    let Some(wanted) = accept_rule_exprs(ip, destination) else { return false };
    let wanted: Vec<&Expr> = wanted.iter().filter(|e| **e != counter).collect();
    let shape: Vec<&Expr> = rule.exprs.iter().filter(|e| **e != counter).collect();
    rule.comment.is_none() && shape == wanted
}

/// Whether `rules` hold the plugin's jump to `target` with `comment` as iptables-nft writes it:
/// the comment match, a counter or not, the jump, nothing else.
fn has_jump(rules: &[NftRule], comment: &str, target: &str) -> bool {
    rules.iter().any(|r| {
        let shape: Vec<&Expr> = r.exprs.iter().filter(|e| **e != Expr::Other("counter".into())).collect();
        r.comment.as_deref() == Some(comment)
            && matches!(shape.as_slice(), [Expr::Match { name, .. }, Expr::Verdict(Verdict::Jump(to))]
                if name == "comment" && to == target)
    })
}

/// ADD without any process, where iptables is the nf_tables variant and the policy is `open`:
/// the kernel shows the `FORWARD` and admin jumps in place, and the accept rules go in as one
/// nf_tables batch of exactly the expressions iptables-nft writes (so `iptables-save` prints,
/// and `iptables -C` finds, the reference's rules). `None` when this does not apply.
fn add_netlink(attachment: &ForwardAccept, family: Family) -> Option<Vec<Rule>> {
    if !super::fastpath::enabled()
        || !super::ipmasq::iptables_is_nft(family)
        || (attachment.ingress != IngressPolicy::Open && attachment.bridge.is_some())
    {
        return None;
    }
    let nft_family = super::ipmasq::nft_family(family);
    let existing = nft_rules(nft_family, TABLE, FORWARD_CHAIN).ok()?;
    let forward = nft_rules(nft_family, TABLE, "FORWARD").ok()?;
    if !has_jump(&forward, FORWARD_COMMENT, FORWARD_CHAIN)
        || !has_jump(&existing, ADMIN_COMMENT, &attachment.admin_chain)
    {
        return None;
    }
    let mut batch = NftBatch::new(nft_family);
    let mut added = Vec::new();
    for ip in of_family(&attachment.addresses, family) {
        let has = |destination| existing.iter().any(|r| is_accept_rule(r, &ip, destination));
        match (has(true), has(false)) {
            (true, true) => {}
            (false, false) => {
                for (rule, destination) in accept_rules(&ip).into_iter().zip([true, false]) {
                    let exprs = accept_rule_exprs(&ip, destination)?;
                    batch.ops.push(NftOp::AddRule {
                        table: TABLE.into(),
                        chain: FORWARD_CHAIN.into(),
                        exprs,
                        comment: None,
                    });
                    added.push(rule);
                }
            }
            _ => return None,
        }
    }
    match batch.commit() {
        Ok(()) => Some(added),
        Err(e) => {
            log::debug!("{} netlink path not taken: {e}", tool_name(family));
            None
        }
    }
}

/// DEL without any process where iptables is the nf_tables variant: the rules that are exactly
/// the accept rules of `addresses` (every copy) are deleted by handle in one nf_tables batch.
/// `false` when this does not apply or the kernel refused the batch.
fn remove_netlink(addresses: &[IpAddr], family: Family) -> bool {
    if !super::fastpath::enabled() || !super::ipmasq::iptables_is_nft(family) {
        return false;
    }
    let nft_family = super::ipmasq::nft_family(family);
    let Ok(existing) = nft_rules(nft_family, TABLE, FORWARD_CHAIN) else { return false };
    let mut batch = NftBatch::new(nft_family);
    for rule in &existing {
        let ours = addresses.iter().any(|ip| is_accept_rule(rule, ip, true) || is_accept_rule(rule, ip, false));
        let mentions = addresses.iter().any(|ip| {
            matches_address(rule, AddrField::Source, ip) || matches_address(rule, AddrField::Destination, ip)
        });
        // A rule naming the address that is not exactly ours: let iptables itself decide.
        if mentions && !ours {
            return false;
        }
        if ours {
            batch.ops.push(NftOp::DeleteRule { table: TABLE.into(), chain: FORWARD_CHAIN.into(), handle: rule.handle });
        }
    }
    match batch.commit() {
        Ok(()) => true,
        Err(e) => {
            log::debug!("{} netlink path not taken: {e}", tool_name(family));
            false
        }
    }
}

/// The one-process DEL of the module doc: `Some(None)` when the kernel holds none of the
/// rules, `None` when the fast path does not apply.
fn plan_fast_remove(addresses: &[IpAddr], family: Family) -> Option<Option<Batch>> {
    if !super::fastpath::enabled() || !super::ipmasq::iptables_is_nft(family) {
        return None;
    }
    let nft_family = match family {
        Family::V4 => NftFamily::Ip,
        Family::V6 => NftFamily::Ip6,
    };
    let existing = nft_rules(nft_family, TABLE, FORWARD_CHAIN).ok()?;
    let mut batch = Batch::new(TABLE);
    for ip in addresses {
        for (rule, destination) in accept_rules(ip).iter().zip([true, false]) {
            for _ in existing.iter().filter(|r| is_accept_rule(r, ip, destination)) {
                batch.delete(rule);
            }
        }
    }
    Some((!batch.is_empty()).then_some(batch))
}

/// ADD in one family by the plain path: dump, plan, one batch. Returns what it added.
fn add_plain(attachment: &ForwardAccept, family: Family) -> Result<Vec<Rule>, FirewallError> {
    let added = std::cell::RefCell::new(Vec::new());
    apply_iptables(family, TABLE, false, |saved| {
        let (batch, rules) = plan_add(saved, attachment, family, Scope::All)?;
        *added.borrow_mut() = rules;
        Some(batch)
    })?;
    Ok(added.into_inner())
}

/// ADD in every family of `attachment`, recording in `done` what each added: the fast batches
/// first, all started before any is waited for (so the families' restores run side by side),
/// then the plain path for every family the fast path did not serve.
fn add_families(attachment: &ForwardAccept, done: &mut Vec<(Family, Vec<Rule>)>) -> Result<(), FirewallError> {
    let mut fed = Vec::new();
    let mut plain = Vec::new();
    for family in Family::ALL.into_iter().filter(|f| !of_family(&attachment.addresses, *f).is_empty()) {
        if let Some(added) = add_netlink(attachment, family) {
            done.push((family, added));
            continue;
        }
        let started = plan_fast(attachment, family).and_then(|(batch, added)| {
            let mut restore = PendingRestore::spawn(family).ok()?;
            restore.feed(&batch.render());
            Some((restore, added))
        });
        match started {
            Some((restore, added)) => fed.push((family, restore, added)),
            None => plain.push(family),
        }
    }
    for (family, restore, added) in fed {
        match restore.finish() {
            Ok(()) => done.push((family, added)),
            Err(e) => {
                log::debug!("{} fast path not taken: {e}", tool_name(family));
                plain.push(family);
            }
        }
    }
    for family in plain {
        done.push((family, add_plain(attachment, family)?));
    }
    Ok(())
}

fn tool_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    }
}

/// What CHECK finds missing in one family's dump, as the first missing chain or rule.
fn verify(saved: &SavedTable, attachment: &ForwardAccept, family: Family, scope: Scope) -> Result<(), FirewallError> {
    let addresses = of_family(&attachment.addresses, family);
    if addresses.is_empty() {
        return Ok(());
    }
    let tool = tool_name(family);
    let (mut chains, mut rules) = (Vec::new(), Vec::new());
    if scope == Scope::All {
        chains.extend([FORWARD_CHAIN, attachment.admin_chain.as_str()]);
        rules.extend([forward_jump(), admin_jump(&attachment.admin_chain)]);
        rules.extend(addresses.iter().flat_map(accept_rules));
    }
    if let (Some(bridge), true) = (&attachment.bridge, attachment.ingress != IngressPolicy::Open) {
        chains.extend([STAGE1_CHAIN, STAGE2_CHAIN]);
        rules.extend(isolation_rules(bridge, attachment.ingress).into_iter().map(|(r, _)| r));
    }
    for chain in chains {
        if !saved.has_chain(chain) {
            return Err(FirewallError::Check(format!("{tool} filter table: expected chain {chain} not found")));
        }
    }
    for rule in rules {
        if !present(saved, &rule) {
            return Err(FirewallError::Check(format!(
                "{tool} filter table: expected rule \"-A {} {}\" not found",
                rule.chain,
                rule.render_args()
            )));
        }
    }
    Ok(())
}

impl IptablesForward {
    /// Only the `ingressPolicy` rules of `attachment` (nothing for `open`), in the families of
    /// its addresses: the reference writes them with iptables whatever the backend, so the
    /// firewalld backend calls this after its own work. One batch per family; idempotent.
    pub fn add_isolation(&self, attachment: &ForwardAccept) -> Result<(), FirewallError> {
        if attachment.ingress == IngressPolicy::Open || attachment.bridge.is_none() {
            return Ok(());
        }
        for family in Family::ALL {
            if of_family(&attachment.addresses, family).is_empty() {
                continue;
            }
            apply_iptables(family, TABLE, false, |saved| {
                plan_add(saved, attachment, family, Scope::Isolation).map(|(batch, _)| batch)
            })?;
        }
        Ok(())
    }

    /// Verifies what [`IptablesForward::add_isolation`] writes; changes nothing.
    pub fn check_isolation(&self, attachment: &ForwardAccept) -> Result<(), FirewallError> {
        for family in Family::ALL {
            if attachment.ingress == IngressPolicy::Open || of_family(&attachment.addresses, family).is_empty() {
                continue;
            }
            verify(&iptables_save(family, TABLE)?, attachment, family, Scope::Isolation)?;
        }
        Ok(())
    }
}

impl ForwardBackend for IptablesForward {
    /// Each family is one batch; when a later family fails, what the earlier ones added is
    /// deleted again, so a failed ADD leaves the tables as they were (chains aside).
    fn add(&self, attachment: &ForwardAccept) -> Result<(), FirewallError> {
        let mut done = Vec::new();
        let result = add_families(attachment, &mut done);
        if result.is_err() {
            for (family, rules) in done {
                if let Err(undo) = apply_iptables(family, TABLE, true, |saved| plan_undo(saved, &rules)) {
                    log::warn!("rolling back the {} rules: {undo}", tool_name(family));
                }
            }
        }
        result
    }

    fn check(&self, attachment: &ForwardAccept) -> Result<(), FirewallError> {
        for family in Family::ALL {
            if of_family(&attachment.addresses, family).is_empty() {
                continue;
            }
            verify(&iptables_save(family, TABLE)?, attachment, family, Scope::All)?;
        }
        Ok(())
    }

    fn remove(&self, _attachment: &ForwardAccept, addresses: &[IpAddr]) -> Result<(), FirewallError> {
        let mut errors = Vec::new();
        for family in Family::ALL {
            let mine = of_family(addresses, family);
            if mine.is_empty() {
                continue;
            }
            if remove_netlink(&mine, family) {
                continue;
            }
            match plan_fast_remove(&mine, family) {
                Some(None) => continue,
                Some(Some(batch)) => match restore::iptables_restore(family, &batch.render()) {
                    Ok(()) => continue,
                    Err(e) => log::debug!("{} fast path not taken: {e}", tool_name(family)),
                },
                None => {}
            }
            if let Err(e) = apply_iptables(family, TABLE, true, |saved| plan_remove(saved, &mine)) {
                errors.push(e);
            }
        }
        FirewallError::collect(errors)
    }

    /// IPv4 must work (tools installed, the filter table readable); IPv6 only needs to be
    /// installed, as a host without IPv6 still serves IPv4 attachments.
    fn usable(&self) -> Result<(), FirewallError> {
        for family in Family::ALL {
            for tool in [restore_tool(family), save_tool(family)] {
                if !has_tool(tool) {
                    return Err(FirewallError::ToolNotFound(tool.to_string()));
                }
            }
        }
        restore::iptables_save(Family::V4, TABLE).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attachment(addresses: &[&str], ingress: IngressPolicy) -> ForwardAccept {
        ForwardAccept {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            admin_chain: "CNI-ADMIN".into(),
            ingress,
            bridge: Some("cni0".into()),
        }
    }

    fn dump(lines: &str) -> SavedTable {
        SavedTable::parse(&format!("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n{lines}COMMIT\n"), "filter")
            .unwrap()
    }

    #[test]
    fn a_fresh_host_gets_the_reference_commands() {
        let (batch, added) =
            plan_add(&dump(""), &attachment(&["10.88.0.2", "fd00::2"], IngressPolicy::Open), Family::V4, Scope::All)
                .unwrap();
        assert_eq!(
            batch.render(),
            "*filter\n-N CNI-FORWARD\n-N CNI-ADMIN\n\
             -I FORWARD 1 -m comment --comment \"CNI firewall plugin rules\" -j CNI-FORWARD\n\
             -I CNI-FORWARD 1 -m comment --comment \"CNI firewall plugin admin overrides\" -j CNI-ADMIN\n\
             -A CNI-FORWARD -d 10.88.0.2/32 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
             -A CNI-FORWARD -s 10.88.0.2/32 -j ACCEPT\nCOMMIT\n"
        );
        assert_eq!(added.len(), 4);
        let (v6, _) =
            plan_add(&dump(""), &attachment(&["10.88.0.2", "fd00::2"], IngressPolicy::Open), Family::V6, Scope::All)
                .unwrap();
        assert!(v6.render().contains("-A CNI-FORWARD -s fd00::2/128 -j ACCEPT\n"), "{}", v6.render());
        assert!(plan_add(&dump(""), &attachment(&["10.88.0.2"], IngressPolicy::Open), Family::V6, Scope::All).is_none());
    }

    #[test]
    fn present_rules_and_chains_are_left_alone() {
        let saved = dump(
            ":CNI-FORWARD - [0:0]\n:CNI-ADMIN - [0:0]\n\
             -A FORWARD -m comment --comment \"CNI firewall plugin rules\" -j CNI-FORWARD\n\
             -A CNI-FORWARD -m comment --comment \"CNI firewall plugin admin overrides\" -j CNI-ADMIN\n\
             -A CNI-FORWARD -d 10.88.0.2/32 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
             -A CNI-FORWARD -s 10.88.0.2/32 -j ACCEPT\n-A CNI-ADMIN -j DROP\n",
        );
        assert!(plan_add(&saved, &attachment(&["10.88.0.2"], IngressPolicy::Open), Family::V4, Scope::All).is_none());
        verify(&saved, &attachment(&["10.88.0.2"], IngressPolicy::Open), Family::V4, Scope::All).unwrap();
        let e = verify(&saved, &attachment(&["10.88.0.3"], IngressPolicy::Open), Family::V4, Scope::All).unwrap_err();
        assert!(e.to_string().contains("-A CNI-FORWARD -d 10.88.0.3/32"), "{e}");
        let (batch, _) =
            plan_add(&saved, &attachment(&["10.88.0.3"], IngressPolicy::Open), Family::V4, Scope::All).unwrap();
        assert_eq!(
            batch.render(),
            "*filter\n-A CNI-FORWARD -d 10.88.0.3/32 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
             -A CNI-FORWARD -s 10.88.0.3/32 -j ACCEPT\nCOMMIT\n"
        );
    }

    #[test]
    fn isolation_follows_the_reference_order() {
        let (batch, _) =
            plan_add(&dump(""), &attachment(&["10.88.0.2"], IngressPolicy::Isolated), Family::V4, Scope::All).unwrap();
        let text = batch.render();
        let tail: Vec<&str> = text.lines().skip(7).collect();
        assert_eq!(
            tail,
            [
                "-N CNI-ISOLATION-STAGE-1",
                "-N CNI-ISOLATION-STAGE-2",
                "-I FORWARD 1 -m comment --comment \"CNI firewall plugin rules (ingressPolicy: same-bridge|isolated)\" -j CNI-ISOLATION-STAGE-1",
                "-I CNI-ISOLATION-STAGE-1 1 -i cni0 ! -o cni0 -m comment --comment \"CNI firewall plugin rules (ingressPolicy: isolated)\" -j CNI-ISOLATION-STAGE-2",
                "-I CNI-ISOLATION-STAGE-1 1 -i cni0 -o cni0 -m comment --comment \"CNI firewall plugin rules (ingressPolicy: isolated)\" -j DROP",
                "-A CNI-ISOLATION-STAGE-1 -m comment --comment \"CNI firewall plugin rules (ingressPolicy: same-bridge|isolated)\" -j RETURN",
                "-I CNI-ISOLATION-STAGE-2 1 -o cni0 -m comment --comment \"CNI firewall plugin rules (ingressPolicy: same-bridge|isolated)\" -j DROP",
                "-A CNI-ISOLATION-STAGE-2 -m comment --comment \"CNI firewall plugin rules (ingressPolicy: same-bridge|isolated)\" -j RETURN",
                "COMMIT",
            ]
        );
    }

    #[test]
    fn isolation_alone_touches_no_accept_rule() {
        let a = attachment(&["10.88.0.2"], IngressPolicy::SameBridge);
        let (batch, _) = plan_add(&dump(""), &a, Family::V4, Scope::Isolation).unwrap();
        let text = batch.render();
        assert!(text.starts_with("*filter\n-N CNI-ISOLATION-STAGE-1\n-N CNI-ISOLATION-STAGE-2\n"), "{text}");
        assert!(!text.contains("CNI-FORWARD") && !text.contains("CNI-ADMIN"), "{text}");
        let e = verify(&dump(""), &a, Family::V4, Scope::Isolation).unwrap_err();
        assert!(e.to_string().contains("CNI-ISOLATION-STAGE-1"), "{e}");
        assert!(plan_add(&dump(""), &a, Family::V6, Scope::Isolation).is_none());
    }

    #[test]
    fn isolation_rules_v1_1_wrote_count_as_present() {
        let old = "CNI firewall plugin rules (ingressPolicy: same-bridge)";
        let saved = dump(&format!(
            ":CNI-FORWARD - [0:0]\n:CNI-ADMIN - [0:0]\n:CNI-ISOLATION-STAGE-1 - [0:0]\n:CNI-ISOLATION-STAGE-2 - [0:0]\n\
             -A FORWARD -m comment --comment \"{old}\" -j CNI-ISOLATION-STAGE-1\n\
             -A FORWARD -m comment --comment \"CNI firewall plugin rules\" -j CNI-FORWARD\n\
             -A CNI-FORWARD -m comment --comment \"CNI firewall plugin admin overrides\" -j CNI-ADMIN\n\
             -A CNI-FORWARD -d 10.88.0.2/32 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
             -A CNI-FORWARD -s 10.88.0.2/32 -j ACCEPT\n\
             -A CNI-ISOLATION-STAGE-1 -i cni0 ! -o cni0 -m comment --comment \"{old}\" -j CNI-ISOLATION-STAGE-2\n\
             -A CNI-ISOLATION-STAGE-1 -m comment --comment \"{old}\" -j RETURN\n\
             -A CNI-ISOLATION-STAGE-2 -o cni0 -m comment --comment \"{old}\" -j DROP\n\
             -A CNI-ISOLATION-STAGE-2 -m comment --comment \"{old}\" -j RETURN\n"
        ));
        let a = attachment(&["10.88.0.2"], IngressPolicy::SameBridge);
        assert!(plan_add(&saved, &a, Family::V4, Scope::All).is_none());
        verify(&saved, &a, Family::V4, Scope::All).unwrap();
    }

    #[test]
    fn recognises_the_accept_rules_as_iptables_nft_stores_them() {
        let ip: IpAddr = "10.88.0.2".parse().unwrap();
        let rule = |exprs: Vec<Expr>, comment: Option<&str>| NftRule {
            chain: FORWARD_CHAIN.into(),
            handle: 7,
            comment: comment.map(String::from),
            jumps: Vec::new(),
            exprs,
        };
        let src = accept_rule_exprs(&ip, false).unwrap();
        let dst = accept_rule_exprs(&ip, true).unwrap();
        assert_eq!(dst.len(), 5, "{dst:?}");
        let Expr::Match { info, .. } = &dst[2] else { panic!("{dst:?}") };
        assert_eq!(info.len(), 168);
        assert!(is_accept_rule(&rule(src.clone(), None), &ip, false));
        assert!(is_accept_rule(&rule(dst.clone(), None), &ip, true));
        // Read back without its counter it is the same rule.
        let no_counter: Vec<Expr> = src.iter().filter(|e| **e != Expr::Other("counter".into())).cloned().collect();
        assert!(is_accept_rule(&rule(no_counter, None), &ip, false));
        assert!(matches_address(&rule(dst.clone(), None), AddrField::Destination, &ip));
        assert!(!matches_address(&rule(dst.clone(), None), AddrField::Source, &ip));
        assert!(!is_accept_rule(&rule(dst.clone(), None), &ip, false));
        assert!(!is_accept_rule(&rule(src.clone(), Some("admin")), &ip, false));
        assert!(!is_accept_rule(&rule(src.clone(), None), &"10.88.0.3".parse().unwrap(), false));
        // Another state match (`--ctstate NEW`) is not ours.
        let mut other = dst;
        other[2] = Expr::Match { name: "conntrack".into(), rev: 3, info: vec![0; 168] };
        assert!(!is_accept_rule(&rule(other, None), &ip, true));
        let jump = rule(
            vec![
                Expr::Match { name: "comment".into(), rev: 0, info: Vec::new() },
                Expr::Other("counter".into()),
                Expr::Verdict(Verdict::Jump("CNI-ADMIN".into())),
            ],
            Some(ADMIN_COMMENT),
        );
        assert!(has_jump(std::slice::from_ref(&jump), ADMIN_COMMENT, "CNI-ADMIN"));
        assert!(!has_jump(&[jump], ADMIN_COMMENT, "NOMAD-ADMIN"));
    }

    #[test]
    fn removal_takes_every_copy_and_nothing_else() {
        let saved = dump(
            ":CNI-FORWARD - [0:0]\n-A CNI-FORWARD -s 10.88.0.2/32 -j ACCEPT\n-A CNI-FORWARD -s 10.88.0.2/32 -j ACCEPT\n\
             -A CNI-FORWARD -s 10.88.0.3/32 -j ACCEPT\n",
        );
        let batch = plan_remove(&saved, &["10.88.0.2".parse().unwrap()]).unwrap();
        assert_eq!(
            batch.render(),
            "*filter\n-D CNI-FORWARD -s 10.88.0.2/32 -j ACCEPT\n-D CNI-FORWARD -s 10.88.0.2/32 -j ACCEPT\nCOMMIT\n"
        );
        assert!(plan_remove(&saved, &["10.88.0.9".parse().unwrap()]).is_none());
    }
}
