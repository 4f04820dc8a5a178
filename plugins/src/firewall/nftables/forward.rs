//! The `firewall` plugin's nftables backend (`"backend": "nftables"`; the reference has none): the
//! forward-accept rules of [`ForwardAccept`] in a table of their own, planned as data from what the
//! kernel lists over netlink and committed as one NETLINK_NETFILTER batch per operation (ADD, CHECK,
//! DEL, GC), with no process.
//!
//! ```text
//! table inet cni_plugins_firewall {                       # comment "CNI firewall plugin rules"
//!   chain forward {
//!     type filter hook forward priority filter; policy accept;
//!     jump isolation_stage_1
//!     jump admin_jumps
//!     ip daddr 10.88.0.5 ct state established,related accept comment "<attachment>"
//!     ip saddr 10.88.0.5 accept comment "<attachment>"
//!   }
//!   chain admin_jumps { jump CNI-ADMIN }                   # one jump per admin chain name
//!   chain CNI-ADMIN { }                                    # the administrator's: never flushed
//!   chain isolation_stage_1 {                              # ingressPolicy same-bridge / isolated
//!     iifname "br0" oifname != "br0" jump isolation_stage_2
//!     iifname "br0" oifname "br0" drop                    # isolated only
//!   }
//!   chain isolation_stage_2 { oifname "br0" drop }
//! }
//! ```
//!
//! The same semantics as the iptables backend's `CNI-FORWARD`, `CNI-ADMIN` and
//! `CNI-ISOLATION-STAGE-1/2`: isolation first (an administrator's accept cannot lift it), then the
//! administrator's chain (its `drop` is final, its `accept` ends our table), then per address "to
//! it: established and related" and "from it: everything". The `<attachment>` comment is the one
//! the masquerade tables use (`<h16(network)>-<h16(ifname:containerID)>, net: …, if: …, id: …`),
//! so DEL finds an attachment's rules without its addresses, GC finds a network's rules, and a
//! recycled address held by another attachment keeps that attachment's rules.
//!
//! **How an accept here relates to a drop elsewhere.** nftables runs every base chain registered on
//! a hook, in priority order, whatever table it is in. `accept` only ends the base chain it is
//! decided in (the packet goes on to the next one); `drop` is final at once. So:
//! * our accepts never lift a drop of another table: a host whose own forward chain (its
//!   `inet filter`, firewalld's table, or iptables-nft's `FORWARD` with policy DROP) drops
//!   container traffic must accept it there (for instance `iifname "cni0" accept` and
//!   `ct state established,related accept`), or use `backend: "iptables"`, whose rules live in the
//!   same `FORWARD` chain as that policy;
//! * our isolation drops hold whatever another table accepts;
//! * the default-deny of the iptables world is had by setting our own chain's policy:
//!   `nft add chain inet cni_plugins_firewall forward '{ policy drop; }'` makes forwarded traffic
//!   pass only for addresses whose rules exist (and for what the administrator's chain accepts).
//!   We create `forward` only when it is absent and never send a policy, so that choice survives
//!   every ADD.
//!
//! Hence the chain is `policy accept` (this table decides nothing about traffic that is not a
//! container's unless the administrator says so) at priority `filter` (0), beside the host's other
//! filter chains: no priority could make an accept here override a drop elsewhere, and a drop here is
//! final at any priority, so another value would only suggest an ordering that does not exist.
//!
//! Concurrency: a batch that changes the shared layout (the table, its chains, the jumps, the
//! isolation rules) is sent with the ruleset generation it was planned from, so the kernel refuses
//! it if another ADD changed anything in between, and it is planned again from a fresh read. A
//! batch that only touches this attachment's own rules needs no such guard.

use super::masq::{comment as attachment_comment, network_hash};
use crate::firewall::error::FirewallError;
use crate::firewall::forward::{ForwardAccept, ForwardBackend, IngressPolicy};
use crate::firewall::model::Family;
use crate::netlink::{
    nft_chain_exists, nft_generation, nft_table_rules, AddrField, CmpOp, Expr, NftBatch, NftFamily, NftOp, NftRule,
    Verdict,
};
use ipnetwork::IpNetwork;
use std::collections::{BTreeSet, HashSet};
use std::io;
use std::net::IpAddr;

/// The table, in the `inet` family.
pub const TABLE: &str = "cni_plugins_firewall";
const TABLE_COMMENT: &str = "CNI firewall plugin rules";
/// The base chain on the forward hook.
pub const FORWARD: &str = "forward";
const ADMIN_JUMPS: &str = "admin_jumps";
const ISOLATION_1: &str = "isolation_stage_1";
const ISOLATION_2: &str = "isolation_stage_2";
/// Chains of ours an administrator's chain may not be named after.
const OWN_CHAINS: [&str; 4] = [FORWARD, ADMIN_JUMPS, ISOLATION_1, ISOLATION_2];
/// `NF_INET_FORWARD`.
const HOOK_FORWARD: u32 = 2;
/// nft's `filter` priority.
const PRIORITY_FILTER: i32 = 0;
/// How often a batch refused because the table changed under it is planned again (each refusal
/// means another ADD committed, so this bounds the number of concurrent first ADDs waited for).
const ATTEMPTS: usize = 64;

/// What the kernel holds of the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct TableState {
    /// The ruleset generation read before everything else.
    pub generation: u32,
    /// The chains known to exist.
    pub chains: BTreeSet<String>,
    /// Every rule of the table.
    pub rules: Vec<NftRule>,
}

impl TableState {
    /// Reads the generation, then every rule, then probes the chains in `wanted` that no rule
    /// shows to exist (a chain with rules, or one jumped to, exists). An absent table is empty.
    pub fn read(wanted: &[&str]) -> io::Result<TableState> {
        let generation = nft_generation()?;
        let rules = nft_table_rules(NftFamily::Inet, TABLE)?;
        let mut chains: BTreeSet<String> = BTreeSet::new();
        for rule in &rules {
            chains.insert(rule.chain.clone());
            chains.extend(rule.jumps.iter().cloned());
        }
        for name in wanted {
            if !chains.contains(*name) && nft_chain_exists(NftFamily::Inet, TABLE, name)? {
                chains.insert(name.to_string());
            }
        }
        Ok(TableState { generation, chains, rules })
    }

    fn rules_in<'a>(&'a self, chain: &'a str) -> impl Iterator<Item = &'a NftRule> + 'a {
        self.rules.iter().filter(move |r| r.chain == chain)
    }

    fn has_rule(&self, chain: &str, exprs: &[Expr]) -> bool {
        self.rules_in(chain).any(|r| r.exprs == exprs)
    }
}

fn jump(chain: &str) -> Vec<Expr> {
    vec![Expr::Verdict(Verdict::Jump(chain.to_string()))]
}

fn host(ip: IpAddr) -> IpNetwork {
    IpNetwork::from(ip)
}

/// `ip[6] daddr <ip> ct state established,related accept`.
pub(super) fn to_rule(ip: IpAddr) -> Vec<Expr> {
    let mut exprs = Expr::nfproto(ip.is_ipv6());
    exprs.extend(Expr::addr_match(AddrField::Destination, CmpOp::Eq, &host(ip)));
    exprs.extend(Expr::ct_established_related());
    exprs.push(Expr::Verdict(Verdict::Accept));
    exprs
}

/// `ip[6] saddr <ip> accept`.
pub(super) fn from_rule(ip: IpAddr) -> Vec<Expr> {
    let mut exprs = Expr::nfproto(ip.is_ipv6());
    exprs.extend(Expr::addr_match(AddrField::Source, CmpOp::Eq, &host(ip)));
    exprs.push(Expr::Verdict(Verdict::Accept));
    exprs
}

/// The isolation rules of one bridge: `(chain, rule)` in the order they are added.
fn isolation_rules(policy: IngressPolicy, bridge: &str) -> Vec<(&'static str, Vec<Expr>)> {
    let mut out = Vec::new();
    if policy == IngressPolicy::Open {
        return out;
    }
    let mut leaving = Expr::ifname(true, CmpOp::Eq, bridge);
    leaving.extend(Expr::ifname(false, CmpOp::Neq, bridge));
    leaving.extend(jump(ISOLATION_2));
    out.push((ISOLATION_1, leaving));
    if policy == IngressPolicy::Isolated {
        let mut within = Expr::ifname(true, CmpOp::Eq, bridge);
        within.extend(Expr::ifname(false, CmpOp::Eq, bridge));
        within.push(Expr::Verdict(Verdict::Drop));
        out.push((ISOLATION_1, within));
    }
    let mut entering = Expr::ifname(false, CmpOp::Eq, bridge);
    entering.push(Expr::Verdict(Verdict::Drop));
    out.push((ISOLATION_2, entering));
    out
}

/// The comment of the isolation rules, the reference's words.
fn isolation_comment(policy: IngressPolicy) -> String {
    format!("CNI firewall plugin rules (ingressPolicy: {})", policy.as_str())
}

/// The attachment's addresses, IPv4 first, each once (the order the reference adds them).
fn ordered(addresses: &[IpAddr]) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for family in Family::ALL {
        for ip in addresses.iter().filter(|ip| Family::of(ip) == family) {
            if !out.contains(ip) {
                out.push(*ip);
            }
        }
    }
    out
}

fn add_rule(chain: &str, exprs: Vec<Expr>, comment: Option<String>) -> NftOp {
    NftOp::AddRule { table: TABLE.to_string(), chain: chain.to_string(), exprs, comment }
}

fn delete_rule(rule: &NftRule) -> NftOp {
    NftOp::DeleteRule { table: TABLE.to_string(), chain: rule.chain.clone(), handle: rule.handle }
}

fn add_chain(name: &str, hook: Option<(String, u32, i32)>, comment: Option<&str>) -> NftOp {
    NftOp::AddChain { table: TABLE.to_string(), name: name.to_string(), hook, comment: comment.map(str::to_string) }
}

/// The attachment's validated inputs: the admin chain may not be one of ours, and a policy other
/// than `open` needs the bridge.
fn validate(attachment: &ForwardAccept) -> Result<Option<&str>, FirewallError> {
    if OWN_CHAINS.contains(&attachment.admin_chain.as_str()) {
        return Err(FirewallError::Invalid {
            what: "iptablesAdminChainName",
            value: attachment.admin_chain.clone(),
            reason: "names a chain of the nftables backend's own table",
        });
    }
    match (attachment.ingress, attachment.bridge.as_deref()) {
        (IngressPolicy::Open, _) => Ok(None),
        (_, Some(bridge)) => Ok(Some(bridge)),
        (policy, None) => Err(FirewallError::Invalid {
            what: "ingressPolicy",
            value: policy.as_str().to_string(),
            reason: "needs the bridge name in prevResult.interfaces[0]",
        }),
    }
}

/// A planned ADD: the layout part (shared, generation-guarded) and this attachment's own rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct AddPlan {
    /// Table, chains, jumps and isolation rules missing from the layout.
    pub layout: Vec<NftOp>,
    /// The attachment's previous rules deleted, its rules for every address appended.
    pub own: Vec<NftOp>,
}

impl AddPlan {
    /// One batch; whether it must be guarded by the generation it was planned from.
    pub fn batch(self) -> (NftBatch, bool) {
        let guarded = !self.layout.is_empty();
        let mut batch = NftBatch::new(NftFamily::Inet);
        batch.ops = self.layout;
        batch.ops.extend(self.own);
        (batch, guarded)
    }
}

/// Plans ADD: the table and chains that are missing (an existing `forward` keeps its policy), the
/// head of `forward` (`jump isolation_stage_1`, `jump admin_jumps`) made right, the admin chain and
/// its jump, the bridge's isolation rules, then this attachment's accept rules replaced.
pub(super) fn plan_add(state: &TableState, network: &str, attachment: &ForwardAccept, bridge: Option<&str>) -> AddPlan {
    let mut plan = AddPlan::default();
    let layout = &mut plan.layout;
    let has = |name: &str| state.chains.contains(name);
    if !has(FORWARD) {
        layout.push(NftOp::AddTable { name: TABLE.to_string(), comment: Some(TABLE_COMMENT.to_string()) });
    }
    // The second isolation stage is only asked about when a policy needs it (an `open` ADD then
    // reads no more than the rules): it is made with the layout and only rules jump to it.
    let stage2_needed = !has(FORWARD) || bridge.is_some();
    for name in [ISOLATION_1, ISOLATION_2, ADMIN_JUMPS] {
        if !has(name) && (name != ISOLATION_2 || stage2_needed) {
            layout.push(add_chain(name, None, None));
        }
    }
    if !has(FORWARD) {
        layout.push(add_chain(FORWARD, Some(("filter".to_string(), HOOK_FORWARD, PRIORITY_FILTER)), None));
    }
    let head = [jump(ISOLATION_1), jump(ADMIN_JUMPS)];
    let forward: Vec<&NftRule> = state.rules_in(FORWARD).collect();
    let head_right = forward.len() >= 2 && forward[0].exprs == head[0] && forward[1].exprs == head[1];
    if !head_right {
        for rule in forward.iter().filter(|r| head.contains(&r.exprs)) {
            layout.push(delete_rule(rule));
        }
        // Each insert goes first, so the second one ends up at the head.
        for exprs in head.into_iter().rev() {
            layout.push(NftOp::InsertRule {
                table: TABLE.to_string(),
                chain: FORWARD.to_string(),
                exprs,
                comment: None,
            });
        }
    }
    let admin = attachment.admin_chain.as_str();
    if !has(admin) {
        layout.push(add_chain(admin, None, None));
    }
    if !state.has_rule(ADMIN_JUMPS, &jump(admin)) {
        layout.push(add_rule(ADMIN_JUMPS, jump(admin), None));
    }
    if let Some(bridge) = bridge {
        for (chain, exprs) in isolation_rules(attachment.ingress, bridge) {
            if !state.has_rule(chain, &exprs) {
                layout.push(add_rule(chain, exprs, Some(isolation_comment(attachment.ingress))));
            }
        }
    }
    let text = attachment_comment(network, &attachment.ifname, &attachment.container_id);
    for rule in state.rules_in(FORWARD).filter(|r| r.comment.as_deref() == Some(text.as_str())) {
        plan.own.push(delete_rule(rule));
    }
    for ip in ordered(&attachment.addresses) {
        plan.own.push(add_rule(FORWARD, to_rule(ip), Some(text.clone())));
        plan.own.push(add_rule(FORWARD, from_rule(ip), Some(text.clone())));
    }
    plan
}

/// CHECK: every chain, jump and rule [`plan_add`] would install is there.
pub(super) fn verify(
    state: &TableState,
    network: &str,
    attachment: &ForwardAccept,
    bridge: Option<&str>,
) -> Result<(), String> {
    let forward: Vec<&NftRule> = state.rules_in(FORWARD).collect();
    let head = [jump(ISOLATION_1), jump(ADMIN_JUMPS)];
    if forward.len() < 2 || forward[0].exprs != head[0] || forward[1].exprs != head[1] {
        return Err(format!(
            "chain {FORWARD} of table inet {TABLE} does not start with jump {ISOLATION_1}, jump {ADMIN_JUMPS}"
        ));
    }
    let admin = attachment.admin_chain.as_str();
    if !state.has_rule(ADMIN_JUMPS, &jump(admin)) {
        return Err(format!("chain {ADMIN_JUMPS} of table inet {TABLE} has no jump to admin chain {admin}"));
    }
    if let Some(bridge) = bridge {
        for (chain, exprs) in isolation_rules(attachment.ingress, bridge) {
            if !state.has_rule(chain, &exprs) {
                return Err(format!(
                    "ingressPolicy {} rule for bridge {bridge} not found in chain {chain} of table inet {TABLE}",
                    attachment.ingress.as_str()
                ));
            }
        }
    }
    let text = attachment_comment(network, &attachment.ifname, &attachment.container_id);
    let mine = |exprs: &[Expr]| forward.iter().any(|r| r.comment.as_deref() == Some(text.as_str()) && r.exprs == exprs);
    for ip in ordered(&attachment.addresses) {
        if !mine(&to_rule(ip)) || !mine(&from_rule(ip)) {
            return Err(format!(
                "accept rules for {ip} not found in chain {FORWARD} of table inet {TABLE} (comment {text:?})"
            ));
        }
    }
    Ok(())
}

/// Plans deleting the `forward` rules whose comment `doomed` selects.
pub(super) fn plan_delete(state: &TableState, doomed: impl Fn(&str) -> bool) -> NftBatch {
    let mut batch = NftBatch::new(NftFamily::Inet);
    for rule in state.rules_in(FORWARD).filter(|r| r.comment.as_deref().is_some_and(&doomed)) {
        batch.ops.push(delete_rule(rule));
    }
    batch
}

fn netlink_error(what: &str, source: io::Error) -> FirewallError {
    FirewallError::Netlink { what: format!("{what} of table inet {TABLE}"), source }
}

/// Whether a read error means nf_tables cannot be spoken here at all, so nothing of ours can exist.
fn unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(nix::libc::EPROTONOSUPPORT | nix::libc::EOPNOTSUPP | nix::libc::EAFNOSUPPORT))
}

/// Reads the table, plans with `plan` and commits, guarded by the read's generation when `plan`
/// says so; a refused batch (the table changed in between) is planned again from a fresh read.
fn read_plan_commit(
    what: &str,
    wanted: &[&str],
    plan: impl Fn(&TableState) -> (NftBatch, bool),
) -> Result<(), FirewallError> {
    let mut last = None;
    for attempt in 0..ATTEMPTS {
        let state = TableState::read(wanted).map_err(|e| netlink_error("reading", e))?;
        let (batch, guarded) = plan(&state);
        let outcome = if guarded { batch.commit_if_unchanged(state.generation) } else { batch.commit() };
        match outcome {
            Ok(()) => return Ok(()),
            Err(e) => {
                log::debug!("firewall {what} batch refused (attempt {}), re-planning: {e}", attempt + 1);
                last = Some(e);
            }
        }
    }
    Err(netlink_error(what, last.unwrap_or_else(|| io::Error::other("no attempt"))))
}

/// The nftables backend for one network (its name keys the rule comments, so GC stays inside it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftForward {
    network: String,
}

impl NftForward {
    /// The backend for the network named `network` (the configuration's `name`).
    pub fn new(network: &str) -> NftForward {
        NftForward { network: network.to_string() }
    }

    /// Deletes the `forward` rules `doomed` selects; a host without nf_tables has none.
    fn delete_where(&self, what: &str, doomed: impl Fn(&str) -> bool) -> Result<(), FirewallError> {
        match TableState::read(&[]) {
            Err(e) if unsupported(&e) => Ok(()),
            Err(e) => Err(netlink_error("reading", e)),
            Ok(state) if plan_delete(&state, &doomed).is_empty() => Ok(()),
            Ok(_) => read_plan_commit(what, &[], |state| (plan_delete(state, &doomed), false)),
        }
    }

    /// GC: deletes the network's accept rules whose attachment (container ID, ifname) is not in
    /// `valid`; the layout and other networks' rules stay.
    pub fn gc(&self, valid: &[(String, String)]) -> Result<(), FirewallError> {
        let prefix = format!("{}-", network_hash(&self.network));
        let keep: HashSet<String> =
            valid.iter().map(|(id, ifname)| attachment_comment(&self.network, ifname, id)).collect();
        self.delete_where("firewall gc", |c| c.starts_with(&prefix) && !keep.contains(c))
    }
}

impl ForwardBackend for NftForward {
    fn add(&self, attachment: &ForwardAccept) -> Result<(), FirewallError> {
        let bridge = validate(attachment)?;
        let mut wanted = vec![FORWARD, ISOLATION_1, ADMIN_JUMPS, attachment.admin_chain.as_str()];
        if bridge.is_some() {
            wanted.push(ISOLATION_2);
        }
        read_plan_commit("firewall setup", &wanted, |state| plan_add(state, &self.network, attachment, bridge).batch())
    }

    fn check(&self, attachment: &ForwardAccept) -> Result<(), FirewallError> {
        let bridge = validate(attachment)?;
        let state = TableState::read(&[]).map_err(|e| netlink_error("reading", e))?;
        verify(&state, &self.network, attachment, bridge).map_err(FirewallError::Check)
    }

    /// Removes this attachment's rules, found by comment: `addresses` is not needed, and rules of
    /// another attachment holding the same address are never touched.
    fn remove(&self, attachment: &ForwardAccept, _addresses: &[IpAddr]) -> Result<(), FirewallError> {
        let text = attachment_comment(&self.network, &attachment.ifname, &attachment.container_id);
        self.delete_where("firewall teardown", |c| c == text)
    }

    fn usable(&self) -> Result<(), FirewallError> {
        nft_generation().map(drop).map_err(|e| netlink_error("probing nf_tables for", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::PayloadBase::Network;

    fn attachment(id: &str, addresses: &[&str], ingress: IngressPolicy) -> ForwardAccept {
        ForwardAccept {
            container_id: id.into(),
            ifname: "eth0".into(),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            admin_chain: "CNI-ADMIN".into(),
            ingress,
            bridge: Some("cni0".into()),
        }
    }

    fn rule(chain: &str, handle: u64, comment: Option<String>, exprs: Vec<Expr>) -> NftRule {
        NftRule { chain: chain.into(), handle, comment, jumps: vec![], exprs }
    }

    fn insert(exprs: Vec<Expr>) -> NftOp {
        NftOp::InsertRule { table: TABLE.into(), chain: FORWARD.into(), exprs, comment: None }
    }

    /// The state after a first ADD of `a` (handles from 10).
    fn laid_out(a: &ForwardAccept) -> TableState {
        let mut state = TableState::default();
        for c in [FORWARD, ADMIN_JUMPS, ISOLATION_1, ISOLATION_2, "CNI-ADMIN"] {
            state.chains.insert(c.into());
        }
        let mut handle = 10;
        let mut push = |chain: &str, comment: Option<String>, exprs: Vec<Expr>| {
            state.rules.push(rule(chain, handle, comment, exprs));
            handle += 1;
        };
        push(FORWARD, None, jump(ISOLATION_1));
        push(FORWARD, None, jump(ADMIN_JUMPS));
        push(ADMIN_JUMPS, None, jump("CNI-ADMIN"));
        let text = attachment_comment("podman", &a.ifname, &a.container_id);
        for ip in ordered(&a.addresses) {
            push(FORWARD, Some(text.clone()), to_rule(ip));
            push(FORWARD, Some(text.clone()), from_rule(ip));
        }
        state
    }

    #[test]
    fn accept_rules_are_what_nft_writes() {
        // `nft --debug=netlink`: ip daddr 10.88.0.5 ct state established,related accept
        assert_eq!(
            to_rule("10.88.0.5".parse().unwrap()),
            vec![
                Expr::Meta { key: 15, dreg: 1 },
                Expr::Cmp { sreg: 1, op: CmpOp::Eq, data: vec![2] },
                Expr::Payload { base: Network, offset: 16, len: 4, dreg: 1 },
                Expr::Cmp { sreg: 1, op: CmpOp::Eq, data: vec![10, 88, 0, 5] },
                Expr::Ct { key: 0, dreg: 1 },
                Expr::Bitwise { sreg: 1, dreg: 1, mask: 6u32.to_ne_bytes().to_vec(), xor: vec![0; 4] },
                Expr::Cmp { sreg: 1, op: CmpOp::Neq, data: vec![0; 4] },
                Expr::Verdict(Verdict::Accept),
            ]
        );
        // ip6 saddr fd00::5 accept
        let v6 = from_rule("fd00::5".parse().unwrap());
        assert_eq!(v6[1], Expr::Cmp { sreg: 1, op: CmpOp::Eq, data: vec![10] });
        assert_eq!(v6[2], Expr::Payload { base: Network, offset: 8, len: 16, dreg: 1 });
        assert_eq!(v6.last(), Some(&Expr::Verdict(Verdict::Accept)));
    }

    #[test]
    fn first_add_lays_out_the_table() {
        let a = attachment("ctr1", &["fd00::5", "10.88.0.5"], IngressPolicy::SameBridge);
        let (batch, guarded) = plan_add(&TableState::default(), "podman", &a, Some("cni0")).batch();
        assert!(guarded);
        let text = attachment_comment("podman", "eth0", "ctr1");
        let iso = Some("CNI firewall plugin rules (ingressPolicy: same-bridge)".to_string());
        let (v4, v6) = ("10.88.0.5".parse().unwrap(), "fd00::5".parse().unwrap());
        let rules = isolation_rules(IngressPolicy::SameBridge, "cni0");
        assert_eq!(rules.len(), 2);
        let want = vec![
            NftOp::AddTable { name: TABLE.into(), comment: Some(TABLE_COMMENT.into()) },
            add_chain(ISOLATION_1, None, None),
            add_chain(ISOLATION_2, None, None),
            add_chain(ADMIN_JUMPS, None, None),
            add_chain(FORWARD, Some(("filter".into(), 2, 0)), None),
            insert(jump(ADMIN_JUMPS)),
            insert(jump(ISOLATION_1)),
            add_chain("CNI-ADMIN", None, None),
            add_rule(ADMIN_JUMPS, jump("CNI-ADMIN"), None),
            add_rule(ISOLATION_1, rules[0].1.clone(), iso.clone()),
            add_rule(ISOLATION_2, rules[1].1.clone(), iso),
            add_rule(FORWARD, to_rule(v4), Some(text.clone())),
            add_rule(FORWARD, from_rule(v4), Some(text.clone())),
            add_rule(FORWARD, to_rule(v6), Some(text.clone())),
            add_rule(FORWARD, from_rule(v6), Some(text)),
        ];
        assert_eq!(batch.ops, want);
        // The isolation rules, in nft's words.
        let mut br = b"cni0".to_vec();
        br.resize(16, 0);
        assert_eq!(
            rules[0].1,
            vec![
                Expr::Meta { key: 6, dreg: 1 },
                Expr::Cmp { sreg: 1, op: CmpOp::Eq, data: br.clone() },
                Expr::Meta { key: 7, dreg: 1 },
                Expr::Cmp { sreg: 1, op: CmpOp::Neq, data: br.clone() },
                Expr::Verdict(Verdict::Jump(ISOLATION_2.into())),
            ]
        );
        assert_eq!(
            rules[1],
            (
                ISOLATION_2,
                vec![
                    Expr::Meta { key: 7, dreg: 1 },
                    Expr::Cmp { sreg: 1, op: CmpOp::Eq, data: br },
                    Expr::Verdict(Verdict::Drop)
                ]
            )
        );
        assert_eq!(isolation_rules(IngressPolicy::Isolated, "cni0").len(), 3);
        assert!(isolation_rules(IngressPolicy::Open, "cni0").is_empty());
    }

    #[test]
    fn add_into_a_laid_out_table_touches_only_its_own_rules() {
        let first = attachment("ctr1", &["10.88.0.5"], IngressPolicy::Open);
        let mut state = laid_out(&first);
        // An `open` ADD does not ask about the second isolation stage; nothing is missing for it.
        state.chains.remove(ISOLATION_2);
        let second = attachment("ctr2", &["10.88.0.6"], IngressPolicy::Open);
        let (batch, guarded) = plan_add(&state, "podman", &second, None).batch();
        assert!(!guarded, "{batch:?}");
        let text = attachment_comment("podman", "eth0", "ctr2");
        let ip = "10.88.0.6".parse().unwrap();
        assert_eq!(
            batch.ops,
            vec![add_rule(FORWARD, to_rule(ip), Some(text.clone())), add_rule(FORWARD, from_rule(ip), Some(text))]
        );
        // The same attachment again: its rules are replaced, not doubled.
        let (batch, _) = plan_add(&state, "podman", &first, None).batch();
        assert_eq!(
            &batch.ops[..2],
            &[
                NftOp::DeleteRule { table: TABLE.into(), chain: FORWARD.into(), handle: 13 },
                NftOp::DeleteRule { table: TABLE.into(), chain: FORWARD.into(), handle: 14 },
            ]
        );
        assert_eq!(batch.ops.len(), 4);
        // Another admin chain name adds its chain and jump, guarded.
        let mut nomad = second.clone();
        nomad.admin_chain = "NOMAD-ADMIN".into();
        let plan = plan_add(&state, "nomad", &nomad, None);
        assert_eq!(
            plan.layout,
            vec![add_chain("NOMAD-ADMIN", None, None), add_rule(ADMIN_JUMPS, jump("NOMAD-ADMIN"), None)]
        );
    }

    #[test]
    fn a_broken_head_of_forward_is_rebuilt() {
        let a = attachment("ctr1", &["10.88.0.5"], IngressPolicy::Open);
        let mut state = laid_out(&a);
        // An administrator deleted the isolation jump: the admin jump moves back behind it.
        state.rules.retain(|r| r.handle != 10);
        let plan = plan_add(&state, "podman", &a, None);
        assert_eq!(
            plan.layout,
            vec![
                NftOp::DeleteRule { table: TABLE.into(), chain: FORWARD.into(), handle: 11 },
                insert(jump(ADMIN_JUMPS)),
                insert(jump(ISOLATION_1)),
            ]
        );
        assert!(verify(&state, "podman", &a, None).unwrap_err().contains("does not start with"));
    }

    #[test]
    fn check_finds_every_missing_piece() {
        let a = attachment("ctr1", &["10.88.0.5", "fd00::5"], IngressPolicy::Open);
        let state = laid_out(&a);
        assert_eq!(verify(&state, "podman", &a, None), Ok(()));
        // Another network with the same container and ifname has other comments.
        assert!(verify(&state, "other", &a, None).unwrap_err().contains("10.88.0.5"));
        let mut missing = state.clone();
        missing.rules.retain(|r| r.exprs != from_rule("fd00::5".parse().unwrap()));
        assert!(verify(&missing, "podman", &a, None).unwrap_err().contains("fd00::5"));
        let mut no_admin = state.clone();
        no_admin.rules.retain(|r| r.chain != ADMIN_JUMPS);
        assert!(verify(&no_admin, "podman", &a, None).unwrap_err().contains("CNI-ADMIN"));
        let isolated = attachment("ctr1", &["10.88.0.5", "fd00::5"], IngressPolicy::Isolated);
        assert!(verify(&state, "podman", &isolated, Some("cni0")).unwrap_err().contains("bridge cni0"));
    }

    #[test]
    fn delete_and_gc_select_by_comment() {
        let a = attachment("ctr1", &["10.88.0.5"], IngressPolicy::Open);
        let mut state = laid_out(&a);
        // A recycled address: ctr2 now holds 10.88.0.5 too.
        let other = attachment_comment("podman", "eth0", "ctr2");
        state.rules.push(rule(FORWARD, 40, Some(other.clone()), to_rule("10.88.0.5".parse().unwrap())));
        state.rules.push(rule(FORWARD, 41, Some(attachment_comment("elsewhere", "eth0", "ctr3")), vec![]));
        let mine = attachment_comment("podman", "eth0", "ctr1");
        let handles = |b: NftBatch| {
            b.ops
                .iter()
                .filter_map(|op| if let NftOp::DeleteRule { handle, .. } = op { Some(*handle) } else { None })
                .collect::<Vec<_>>()
        };
        assert_eq!(handles(plan_delete(&state, |c| c == mine)), vec![13, 14]);
        let prefix = format!("{}-", network_hash("podman"));
        let keep = [other];
        assert_eq!(
            handles(plan_delete(&state, |c| c.starts_with(&prefix) && !keep.iter().any(|k| k == c))),
            vec![13, 14]
        );
    }

    #[test]
    fn refuses_what_it_cannot_write() {
        let mut a = attachment("ctr1", &["10.88.0.5"], IngressPolicy::Open);
        a.admin_chain = FORWARD.into();
        assert!(validate(&a).unwrap_err().to_string().contains("iptablesAdminChainName"));
        let mut b = attachment("ctr1", &["10.88.0.5"], IngressPolicy::Isolated);
        b.bridge = None;
        assert!(validate(&b).unwrap_err().to_string().contains("ingressPolicy"));
        b.ingress = IngressPolicy::Open;
        assert_eq!(validate(&b).unwrap(), None);
    }
}
