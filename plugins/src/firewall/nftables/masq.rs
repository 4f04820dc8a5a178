//! The masquerade nftables backend: the reference's table `inet cni_plugins_masquerade` planned as
//! data ([`NftBatch`]) from what the kernel reports over netlink, and committed as one batch per
//! operation, with no process.
//!
//! ```text
//! table inet cni_plugins_masquerade {            # comment "Masquerading for plugins from …"
//!   chain masq_checks {                          # comment "Masquerade traffic from certain IPs …"
//!     ip saddr 10.1.0.5 ip daddr != 10.1.0.0/24 masquerade comment "<h16(net)>-<h16(ifname:cid)>, net: …"
//!   }
//!   chain postrouting {
//!     type nat hook postrouting priority srcnat; policy accept;
//!     ip daddr 224.0.0.0/4 return
//!     ip6 daddr ff00::/8 return
//!     goto masq_checks
//!   }
//! }
//! ```

use crate::firewall::error::FirewallError;
use crate::firewall::fastpath;
use crate::firewall::model::{Family, MasqTarget};
use crate::firewall::names::sha512_hex;
use crate::firewall::tools::nft;
use crate::netlink::{
    nft_chain_exists, nft_table_rules, AddrField, CmpOp, Expr, NftBatch, NftFamily, NftOp, NftRule, Verdict,
};
use ipnetwork::IpNetwork;
use std::collections::HashSet;
use std::io;

const TABLE: &str = "cni_plugins_masquerade";
const CHECKS: &str = "masq_checks";
const POSTROUTING: &str = "postrouting";
const TABLE_COMMENT: &str = "Masquerading for plugins from github.com/containernetworking/plugins";
const CHECKS_COMMENT: &str = "Masquerade traffic from certain IPs to any (non-multicast) IP outside their subnet";
/// `NF_INET_POST_ROUTING`.
const HOOK_POSTROUTING: u32 = 4;
/// nft's `srcnat` priority.
const PRIORITY_SRCNAT: i32 = 100;

/// What the kernel holds of the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct TableState {
    /// Whether `masq_checks` exists.
    pub checks: bool,
    /// Whether `postrouting` exists.
    pub postrouting: bool,
    /// Every rule of the table.
    pub rules: Vec<NftRule>,
}

impl TableState {
    /// Reads the table: one rule dump and two chain probes (an absent table is an empty state).
    pub(super) fn read() -> io::Result<TableState> {
        let rules = nft_table_rules(NftFamily::Inet, TABLE)?;
        let exists = |name: &str| -> io::Result<bool> {
            if rules.iter().any(|r| r.chain == name) {
                Ok(true)
            } else {
                nft_chain_exists(NftFamily::Inet, TABLE, name)
            }
        };
        let (checks, postrouting) = (exists(CHECKS)?, exists(POSTROUTING)?);
        Ok(TableState { checks, postrouting, rules })
    }

    fn rules_in<'a>(&'a self, chain: &'a str) -> impl Iterator<Item = &'a NftRule> + 'a {
        self.rules.iter().filter(move |r| r.chain == chain)
    }
}

/// First 16 hex of sha512(network): the prefix of all of a network's comments.
pub(super) fn network_hash(network: &str) -> String {
    sha512_hex(network, 16)
}

/// `<h16(network)>-<h16(ifname:containerID)>`: the prefix of one attachment's comments.
pub(super) fn instance_hash(network: &str, ifname: &str, container_id: &str) -> String {
    format!("{}-{}", network_hash(network), sha512_hex(&format!("{ifname}:{container_id}"), 16))
}

/// The reference rule comment: the instance hash, then the names without `"`, cut to 128 bytes.
pub(super) fn comment(network: &str, ifname: &str, container_id: &str) -> String {
    let clean = |s: &str| s.replace('"', "");
    nft::truncate_comment(format!(
        "{}, net: {}, if: {}, id: {}",
        instance_hash(network, ifname, container_id),
        clean(network),
        clean(ifname),
        clean(container_id)
    ))
}

/// `ip[6] saddr <a> ip[6] daddr != <subnet of a> masquerade`.
pub(super) fn masquerade_rule(a: &IpNetwork) -> Vec<Expr> {
    let host = IpNetwork::new(a.ip(), if a.is_ipv4() { 32 } else { 128 }).unwrap_or(*a);
    let subnet = IpNetwork::new(a.network(), a.prefix()).unwrap_or(*a);
    let mut exprs = Expr::nfproto(a.is_ipv6());
    exprs.extend(Expr::addr_match(AddrField::Source, CmpOp::Eq, &host));
    exprs.extend(Expr::addr_match(AddrField::Destination, CmpOp::Neq, &subnet));
    exprs.push(Expr::Masquerade);
    exprs
}

/// The three rules of `postrouting`: multicast returns, then `goto masq_checks`.
fn postrouting_rules() -> Vec<Vec<Expr>> {
    let multicast = |v6: bool, net: &str| {
        let mut exprs = Expr::nfproto(v6);
        if let Ok(net) = net.parse::<IpNetwork>() {
            exprs.extend(Expr::addr_match(AddrField::Destination, CmpOp::Eq, &net));
        }
        exprs.push(Expr::Verdict(Verdict::Return));
        exprs
    };
    vec![
        multicast(false, "224.0.0.0/4"),
        multicast(true, "ff00::/8"),
        vec![Expr::Verdict(Verdict::Goto(CHECKS.to_string()))],
    ]
}

fn add_rule(chain: &str, exprs: Vec<Expr>, comment: Option<String>) -> NftOp {
    NftOp::AddRule { table: TABLE.to_string(), chain: chain.to_string(), exprs, comment }
}

fn delete_rule(rule: &NftRule) -> NftOp {
    NftOp::DeleteRule { table: TABLE.to_string(), chain: rule.chain.clone(), handle: rule.handle }
}

/// The attachment's addresses, IPv4 first, without duplicates (the order the reference adds them).
fn addresses(addresses: &[IpNetwork]) -> Vec<IpNetwork> {
    let mut out: Vec<IpNetwork> = Vec::new();
    for family in Family::ALL {
        for a in addresses.iter().filter(|a| Family::of(&a.ip()) == family) {
            if !out.iter().any(|o| o.ip() == a.ip()) {
                out.push(*a);
            }
        }
    }
    out
}

/// Plans ADD as the reference does: ensure the table and chains, (re)write `postrouting`, replace this
/// attachment's rules in `masq_checks` (found by comment prefix) with one per address. Unlike the
/// reference, chains already there are not re-added and a `postrouting` already right is not
/// rewritten, so an ADD into a set-up table only adds its rules.
pub(super) fn plan_setup(
    state: &TableState,
    network: &str,
    ifname: &str,
    container_id: &str,
    addrs: &[IpNetwork],
) -> NftBatch {
    let mut batch = NftBatch::new(NftFamily::Inet);
    let ops = &mut batch.ops;
    if !state.checks || !state.postrouting {
        ops.push(NftOp::AddTable { name: TABLE.to_string(), comment: Some(TABLE_COMMENT.to_string()) });
    }
    if !state.checks {
        ops.push(NftOp::AddChain {
            table: TABLE.to_string(),
            name: CHECKS.to_string(),
            hook: None,
            comment: Some(CHECKS_COMMENT.to_string()),
        });
    }
    let want = postrouting_rules();
    let have: Vec<&Vec<Expr>> = state.rules_in(POSTROUTING).map(|r| &r.exprs).collect();
    if !(have.len() == want.len() && have.iter().zip(&want).all(|(h, w)| *h == w)) {
        if !state.postrouting {
            ops.push(NftOp::AddChain {
                table: TABLE.to_string(),
                name: POSTROUTING.to_string(),
                hook: Some(("nat".to_string(), HOOK_POSTROUTING, PRIORITY_SRCNAT)),
                comment: None,
            });
        }
        ops.push(NftOp::FlushChain { table: TABLE.to_string(), chain: POSTROUTING.to_string() });
        ops.extend(want.into_iter().map(|exprs| add_rule(POSTROUTING, exprs, None)));
    }
    let instance = instance_hash(network, ifname, container_id);
    for rule in state.rules_in(CHECKS).filter(|r| r.comment.as_deref().is_some_and(|c| c.starts_with(&instance))) {
        ops.push(delete_rule(rule));
    }
    let text = comment(network, ifname, container_id);
    for a in addresses(addrs) {
        ops.push(add_rule(CHECKS, masquerade_rule(&a), Some(text.clone())));
    }
    batch
}

/// Plans deleting the `masq_checks` rules whose comment `doomed` selects.
pub(super) fn plan_delete(state: &TableState, doomed: impl Fn(&str) -> bool) -> NftBatch {
    let mut batch = NftBatch::new(NftFamily::Inet);
    for rule in state.rules_in(CHECKS).filter(|r| r.comment.as_deref().is_some_and(&doomed)) {
        batch.ops.push(delete_rule(rule));
    }
    batch
}

/// CHECK: `postrouting` goes to `masq_checks`, which holds this attachment's rule for every address.
pub(super) fn verify(
    state: &TableState,
    network: &str,
    ifname: &str,
    container_id: &str,
    addrs: &[IpNetwork],
) -> Result<(), String> {
    let goto = Expr::Verdict(Verdict::Goto(CHECKS.to_string()));
    if !state.rules_in(POSTROUTING).any(|r| r.exprs.contains(&goto)) {
        return Err(format!("chain {POSTROUTING} of table inet {TABLE} does not go to {CHECKS}"));
    }
    let text = comment(network, ifname, container_id);
    for a in addresses(addrs) {
        let want = masquerade_rule(&a);
        if !state.rules_in(CHECKS).any(|r| r.comment.as_deref() == Some(text.as_str()) && r.exprs == want) {
            return Err(format!("masquerade rule for {} not found in table inet {TABLE} (comment {text:?})", a.ip()));
        }
    }
    Ok(())
}

fn netlink_error(what: &str, source: io::Error) -> FirewallError {
    FirewallError::Netlink { what: format!("{what} of table inet {TABLE}"), source }
}

/// Reads the table with `read`, plans with `plan` and commits (an empty plan commits nothing); a
/// batch the kernel refuses (another ADD changed the table in between) is planned once more from a
/// fresh read.
fn read_plan_commit(
    what: &str,
    read: impl Fn() -> io::Result<TableState>,
    plan: impl Fn(&TableState) -> NftBatch,
) -> Result<(), FirewallError> {
    let mut last = None;
    for _ in 0..2 {
        let state = read().map_err(|e| netlink_error("reading", e))?;
        let batch = plan(&state);
        match batch.commit() {
            Ok(()) => return Ok(()),
            Err(e) => {
                log::debug!("masquerade {what} batch refused, re-planning: {e}");
                last = Some(e);
            }
        }
    }
    Err(netlink_error(what, last.unwrap_or_else(|| io::Error::other("no attempt"))))
}

/// ADD.
pub fn setup(t: &MasqTarget) -> Result<(), FirewallError> {
    read_plan_commit("masquerade setup", TableState::read, |state| {
        plan_setup(state, t.network, t.ifname, t.container_id, t.addresses)
    })
}

/// CHECK.
pub fn check(t: &MasqTarget) -> Result<(), FirewallError> {
    // Only rules are verified, so one dump is the whole read.
    let state = if fastpath::enabled() {
        let rules = nft_table_rules(NftFamily::Inet, TABLE).map_err(|e| netlink_error("reading", e))?;
        TableState { checks: true, postrouting: true, rules }
    } else {
        TableState::read().map_err(|e| netlink_error("reading", e))?
    };
    verify(&state, t.network, t.ifname, t.container_id, t.addresses).map_err(FirewallError::Check)
}

/// Whether a read error means nf_tables cannot be spoken here at all, so nothing of ours can exist.
fn unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(nix::libc::EPROTONOSUPPORT | nix::libc::EOPNOTSUPP | nix::libc::EAFNOSUPPORT))
}

/// Deletes the `masq_checks` rules `doomed` selects. Deleting needs only the rules, so each read is
/// one dump with no chain probes; a host without nf_tables has none.
fn delete_where(what: &str, doomed: impl Fn(&str) -> bool) -> Result<(), FirewallError> {
    let read = || {
        let rules = match nft_table_rules(NftFamily::Inet, TABLE) {
            Err(e) if unsupported(&e) => Ok(Vec::new()),
            r => r,
        }?;
        Ok(TableState { checks: true, postrouting: true, rules })
    };
    read_plan_commit(what, read, |state| plan_delete(state, &doomed))
}

/// DEL: this attachment's rules, found by comment, so it works without addresses.
pub fn teardown(t: &MasqTarget) -> Result<(), FirewallError> {
    let prefix = instance_hash(t.network, t.ifname, t.container_id);
    delete_where("masquerade teardown", |c| c.starts_with(&prefix))
}

/// GC: the network's rules whose attachment (container ID, ifname) is not in `valid`.
pub fn gc(network: &str, valid: &[(String, String)]) -> Result<(), FirewallError> {
    let prefix = format!("{}-", network_hash(network));
    let keep: HashSet<String> = valid.iter().map(|(id, ifname)| comment(network, ifname, id)).collect();
    delete_where("masquerade gc", |c| c.starts_with(&prefix) && !keep.contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNetwork> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn rule(chain: &str, handle: u64, comment: Option<String>, exprs: Vec<Expr>) -> NftRule {
        NftRule { chain: chain.into(), handle, comment, jumps: vec![], exprs }
    }

    #[test]
    fn comment_is_the_reference_format() {
        // h16("specnet") = 56ecd7e6189379d3, h16("eth0:ctr1") = 7883a6f9ce71eedb (sha512sum).
        assert_eq!(
            comment("specnet", "eth0", "ctr1"),
            "56ecd7e6189379d3-7883a6f9ce71eedb, net: specnet, if: eth0, id: ctr1"
        );
        assert_eq!(comment("a\"b", "eth0", &"c".repeat(200)).len(), 128);
        assert!(comment("a\"b", "eth0", "c").contains("net: ab,"));
    }

    #[test]
    fn first_setup_builds_the_table() {
        let batch =
            plan_setup(&TableState::default(), "specnet", "eth0", "ctr1", &nets(&["fd00::5/64", "10.1.0.5/24"]));
        let c = comment("specnet", "eth0", "ctr1");
        let want = vec![
            NftOp::AddTable { name: TABLE.into(), comment: Some(TABLE_COMMENT.into()) },
            NftOp::AddChain {
                table: TABLE.into(),
                name: CHECKS.into(),
                hook: None,
                comment: Some(CHECKS_COMMENT.into()),
            },
            NftOp::AddChain {
                table: TABLE.into(),
                name: POSTROUTING.into(),
                hook: Some(("nat".into(), 4, 100)),
                comment: None,
            },
            NftOp::FlushChain { table: TABLE.into(), chain: POSTROUTING.into() },
            add_rule(POSTROUTING, postrouting_rules()[0].clone(), None),
            add_rule(POSTROUTING, postrouting_rules()[1].clone(), None),
            add_rule(POSTROUTING, vec![Expr::Verdict(Verdict::Goto(CHECKS.into()))], None),
            add_rule(CHECKS, masquerade_rule(&"10.1.0.5/24".parse().unwrap()), Some(c.clone())),
            add_rule(CHECKS, masquerade_rule(&"fd00::5/64".parse().unwrap()), Some(c)),
        ];
        assert_eq!(batch.ops, want);
    }

    #[test]
    fn setup_into_a_set_up_table_replaces_only_this_attachments_rules() {
        let addrs = nets(&["10.1.0.5/24"]);
        let mut state = TableState { checks: true, postrouting: true, rules: vec![] };
        for (i, exprs) in postrouting_rules().into_iter().enumerate() {
            state.rules.push(rule(POSTROUTING, 2 + i as u64, None, exprs));
        }
        state.rules.push(rule(CHECKS, 6, Some(comment("specnet", "eth0", "ctr1")), vec![]));
        state.rules.push(rule(CHECKS, 7, Some(comment("specnet", "eth1", "ctr1")), vec![]));
        let batch = plan_setup(&state, "specnet", "eth0", "ctr1", &addrs);
        assert_eq!(
            batch.ops,
            vec![
                NftOp::DeleteRule { table: TABLE.into(), chain: CHECKS.into(), handle: 6 },
                add_rule(CHECKS, masquerade_rule(&addrs[0]), Some(comment("specnet", "eth0", "ctr1"))),
            ]
        );
        // A postrouting that lost its goto is flushed and rewritten.
        state.rules.retain(|r| r.handle != 4);
        let batch = plan_setup(&state, "specnet", "eth0", "ctr1", &addrs);
        assert_eq!(batch.ops[0], NftOp::FlushChain { table: TABLE.into(), chain: POSTROUTING.into() });
    }

    #[test]
    fn masquerade_rule_is_what_nft_writes() {
        // `nft --debug=netlink`: ip saddr 10.1.0.5 ip daddr != 10.1.0.0/24 masquerade
        use crate::netlink::PayloadBase::Network;
        assert_eq!(
            masquerade_rule(&"10.1.0.5/24".parse().unwrap()),
            vec![
                Expr::Meta { key: 15, dreg: 1 },
                Expr::Cmp { sreg: 1, op: CmpOp::Eq, data: vec![2] },
                Expr::Payload { base: Network, offset: 12, len: 4, dreg: 1 },
                Expr::Cmp { sreg: 1, op: CmpOp::Eq, data: vec![10, 1, 0, 5] },
                Expr::Payload { base: Network, offset: 16, len: 3, dreg: 1 },
                Expr::Cmp { sreg: 1, op: CmpOp::Neq, data: vec![10, 1, 0] },
                Expr::Masquerade,
            ]
        );
    }

    #[test]
    fn delete_and_check_by_comment() {
        let addrs = nets(&["10.1.0.5/24"]);
        let mine = comment("specnet", "eth0", "ctr1");
        let goto = rule(POSTROUTING, 3, None, vec![Expr::Verdict(Verdict::Goto(CHECKS.into()))]);
        let masq = rule(CHECKS, 6, Some(mine.clone()), masquerade_rule(&addrs[0]));
        let other = rule(CHECKS, 7, Some(comment("specnet", "eth0", "ctr2")), vec![]);
        let state = TableState { checks: true, postrouting: true, rules: vec![goto.clone(), masq.clone(), other] };
        let prefix = instance_hash("specnet", "eth0", "ctr1");
        assert_eq!(
            plan_delete(&state, |c| c.starts_with(&prefix)).ops,
            vec![NftOp::DeleteRule { table: TABLE.into(), chain: CHECKS.into(), handle: 6 }]
        );
        assert_eq!(verify(&state, "specnet", "eth0", "ctr1", &addrs), Ok(()));
        assert!(verify(&state, "specnet", "eth0", "ctr1", &nets(&["10.1.0.6/24"])).unwrap_err().contains("10.1.0.6"));
        let headless = TableState { checks: true, postrouting: true, rules: vec![masq] };
        assert!(verify(&headless, "specnet", "eth0", "ctr1", &addrs).is_err());
    }
}
