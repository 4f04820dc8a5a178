//! The portmap nftables backend over netlink: the reference's `ip|ip6 cni_hostport` tables (see
//! [`super::portmap_conditions`] for the layout) planned as data and committed as one
//! NETLINK_NETFILTER batch per operation, with no process. Entry rules with user
//! `conditionsV4`/`conditionsV6` are nft text this module does not compile, so ADD and CHECK of
//! such a portmap go to [`super::portmap_conditions`] and `nft`.

use super::portmap_conditions;
use super::{
    HOSTIP_HOSTPORTS, HOSTPORTS, HOSTPORTS_ALL, HOSTPORT_TABLE as TABLE, HOSTPORT_TABLE_COMMENT as TABLE_COMMENT,
};
use super::{MASQUERADING, OUTPUT, PREROUTING};
use crate::errors::Collector;
use crate::firewall::error::FirewallError;
use crate::firewall::fastpath;
use crate::firewall::model::{Family, Portmap, Protocol};
use crate::firewall::tools::has_tool;
use crate::netlink::{
    nft_chain_exists, nft_rules, nft_table_rules, AddrField, CmpOp, Expr, NftBatch, NftOp, NftRule, Verdict,
};
use ipnetwork::IpNetwork;
use std::io;

const CHAINS: [&str; 6] = [HOSTPORTS, HOSTIP_HOSTPORTS, HOSTPORTS_ALL, PREROUTING, OUTPUT, MASQUERADING];
/// `(chain, hook number, priority)` of the base chains: `NF_INET_PRE_ROUTING` at dstnat,
/// `NF_INET_LOCAL_OUT` at -100, `NF_INET_POST_ROUTING` at srcnat.
const BASE_CHAINS: [(&str, u32, i32); 3] = [(PREROUTING, 0, -100), (OUTPUT, 3, -100), (MASQUERADING, 4, 100)];

fn l4proto(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

/// What the kernel holds of one family's table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct TableState {
    /// The chains that exist.
    pub chains: Vec<&'static str>,
    /// Every rule of the table.
    pub rules: Vec<NftRule>,
}

impl TableState {
    /// Reads the table: one rule dump, and a probe for each chain that holds no rule.
    pub fn read(family: Family) -> io::Result<TableState> {
        let fam = family.nft_family();
        let rules = nft_table_rules(fam, TABLE)?;
        let mut chains = Vec::new();
        for chain in CHAINS {
            if rules.iter().any(|r| r.chain == chain) || nft_chain_exists(fam, TABLE, chain)? {
                chains.push(chain);
            }
        }
        Ok(TableState { chains, rules })
    }

    fn has_chain(&self, chain: &str) -> bool {
        self.chains.contains(&chain)
    }

    fn rules_in<'a>(&'a self, chain: &'a str) -> impl Iterator<Item = &'a NftRule> + 'a {
        self.rules.iter().filter(move |r| r.chain == chain)
    }

    /// Whether `chain` holds exactly `want`, in order.
    fn chain_is(&self, chain: &str, want: &[Vec<Expr>]) -> bool {
        self.rules_in(chain).map(|r| &r.exprs).eq(want.iter())
    }
}

fn jump(chain: &str) -> Expr {
    Expr::Verdict(Verdict::Jump(chain.to_string()))
}

/// The `prerouting`/`output` rule without conditions: `fib daddr type local jump hostports_all`.
fn entry_rule() -> Vec<Expr> {
    let mut exprs = Expr::fib_daddr_local();
    exprs.push(jump(HOSTPORTS_ALL));
    exprs
}

/// One rule of a container: its chain, its expressions and how nft would write it (for messages).
type OwnRule = (&'static str, Vec<Expr>, String);

/// This container's rules for one address, hostports first, without duplicates:
/// `[ip daddr <hostIP>] <proto> dport <hostPort> dnat to <ip>:<port>`, then (with snat) the hairpin
/// masquerade and, for IPv4 without masqAll, the localhost one.
pub(super) fn own_rules(t: &Portmap, address: &IpNetwork) -> Vec<OwnRule> {
    let family = Family::of(&address.ip());
    let ip = Family::nft_keyword(family);
    let full = if family == Family::V4 { 32 } else { 128 };
    let host = |ip| IpNetwork::new(ip, full).unwrap_or(*address);
    let mut out: Vec<OwnRule> = Vec::new();
    for f in t.forwards.iter().filter(|f| f.applies_to(family)) {
        let mut exprs = Vec::new();
        let mut text = String::new();
        if let Some(d) = f.destination() {
            exprs.extend(Expr::addr_match(AddrField::Destination, CmpOp::Eq, &host(d)));
            text = format!("{ip} daddr {d} ");
        }
        exprs.extend(Expr::dport(l4proto(f.protocol), f.host_port));
        exprs.extend(Expr::dnat_to(address.ip(), f.container_port));
        let target = match address.ip() {
            std::net::IpAddr::V4(a) => format!("{a}:{}", f.container_port),
            std::net::IpAddr::V6(a) => format!("[{a}]:{}", f.container_port),
        };
        text.push_str(&format!("{} dport {} dnat to {target}", f.protocol.as_str(), f.host_port));
        out.push((HOSTPORTS, exprs, text));
    }
    if t.snat {
        let source = if t.masq_all { IpNetwork::new(address.ip(), 0).unwrap_or(*address) } else { host(address.ip()) };
        let masquerade = |src: &IpNetwork| {
            let mut exprs = Expr::addr_match(AddrField::Source, CmpOp::Eq, src);
            exprs.extend(Expr::addr_match(AddrField::Destination, CmpOp::Eq, &host(address.ip())));
            exprs.push(Expr::Masquerade);
            (MASQUERADING, exprs, format!("{ip} saddr {src} {ip} daddr {} masquerade", address.ip()))
        };
        out.push(masquerade(&source));
        if family == Family::V4 && !t.masq_all {
            if let Ok(localhost) = "127.0.0.1/32".parse::<IpNetwork>() {
                out.push(masquerade(&localhost));
            }
        }
    }
    let mut unique: Vec<OwnRule> = Vec::new();
    for rule in out {
        if !unique.iter().any(|u| u.0 == rule.0 && u.1 == rule.1) {
            unique.push(rule);
        }
    }
    unique
}

fn add_rule(chain: &str, exprs: Vec<Expr>, comment: Option<&str>) -> NftOp {
    NftOp::AddRule { table: TABLE.to_string(), chain: chain.to_string(), exprs, comment: comment.map(str::to_string) }
}

/// Plans ADD without conditions from the family's table: create what is missing, rewrite
/// `hostports_all`, `prerouting` and `output` only when they are not already right, add this
/// container's rules that are not there yet.
pub(super) fn plan_setup(state: &TableState, t: &Portmap, address: &IpNetwork) -> NftBatch {
    let mut batch = NftBatch::new(Family::of(&address.ip()).nft_family());
    let ops = &mut batch.ops;
    if state.chains.is_empty() {
        ops.push(NftOp::AddTable { name: TABLE.to_string(), comment: Some(TABLE_COMMENT.to_string()) });
    }
    for chain in [HOSTPORTS, HOSTIP_HOSTPORTS, HOSTPORTS_ALL] {
        if !state.has_chain(chain) {
            ops.push(NftOp::AddChain { table: TABLE.into(), name: chain.into(), hook: None, comment: None });
        }
    }
    let jumps = [vec![jump(HOSTIP_HOSTPORTS)], vec![jump(HOSTPORTS)]];
    if !state.chain_is(HOSTPORTS_ALL, &jumps) {
        ops.push(NftOp::FlushChain { table: TABLE.into(), chain: HOSTPORTS_ALL.into() });
        ops.extend(jumps.into_iter().map(|j| add_rule(HOSTPORTS_ALL, j, None)));
    }
    let entry = [entry_rule()];
    for (chain, hook, priority) in BASE_CHAINS {
        let wanted = chain != MASQUERADING || t.snat;
        if !wanted || (chain != MASQUERADING && state.chain_is(chain, &entry)) {
            continue;
        }
        if !state.has_chain(chain) {
            let hook = Some(("nat".to_string(), hook, priority));
            ops.push(NftOp::AddChain { table: TABLE.into(), name: chain.into(), hook, comment: None });
        }
        if chain != MASQUERADING {
            // Flushed even when just created: a concurrent first ADD may have filled it meanwhile.
            ops.push(NftOp::FlushChain { table: TABLE.into(), chain: chain.into() });
            ops.push(add_rule(chain, entry_rule(), None));
        }
    }
    for (chain, exprs, _) in own_rules(t, address) {
        let present = state.rules_in(chain).any(|r| r.comment.as_deref() == Some(t.container_id) && r.exprs == exprs);
        if !present {
            ops.push(add_rule(chain, exprs, Some(t.container_id)));
        }
    }
    batch
}

/// The one-batch ADD into a set-up table: this container's rules only.
fn plan_fast_setup(t: &Portmap, address: &IpNetwork) -> NftBatch {
    let mut batch = NftBatch::new(Family::of(&address.ip()).nft_family());
    for (chain, exprs, _) in own_rules(t, address) {
        batch.ops.push(add_rule(chain, exprs, Some(t.container_id)));
    }
    batch
}

fn netlink_error(what: &str, family: Family, source: io::Error) -> FirewallError {
    let fam = Family::nft_keyword(family);
    FirewallError::Netlink { what: format!("{what} of table {fam} {TABLE}"), source }
}

/// ADD for the family of `address`, for a portmap without entry conditions. When `prerouting`
/// is right (all chains are created in one batch, so the layout is complete) only this
/// container's rules are sent; otherwise, or when the kernel refuses that batch, the table is read
/// and planned in full.
pub fn setup(t: &Portmap, address: &IpNetwork) -> Result<(), FirewallError> {
    let family = Family::of(&address.ip());
    if !t.conditions(family).is_empty() {
        return portmap_conditions::setup(t, address);
    }
    let entry = [entry_rule()];
    if let Some(Ok(prerouting)) = fastpath::enabled().then(|| nft_rules(family.nft_family(), TABLE, PREROUTING)) {
        if prerouting.len() == 1 && prerouting[0].exprs == entry[0] {
            match plan_fast_setup(t, address).commit() {
                Ok(()) => return Ok(()),
                Err(e) => log::debug!("portmap: the rules-only batch failed, reading the table: {e}"),
            }
        }
    }
    let mut last = None;
    for _ in 0..2 {
        let state = TableState::read(family).map_err(|e| netlink_error("reading", family, e))?;
        match plan_setup(&state, t, address).commit() {
            Ok(()) => return Ok(()),
            Err(e) => {
                log::debug!("portmap: setup batch refused, re-planning: {e}");
                last = Some(e);
            }
        }
    }
    Err(netlink_error("setup", family, last.unwrap_or_else(|| io::Error::other("no attempt"))))
}

/// CHECK: the entry chains lead to `hostports_all` (whatever their conditions), which jumps to
/// `hostports`, and every rule ADD adds for this container is there with its comment.
pub(super) fn verify(state: &TableState, t: &Portmap, address: &IpNetwork) -> Result<(), String> {
    let fam = Family::nft_keyword(Family::of(&address.ip()));
    let tail = entry_rule();
    for chain in [PREROUTING, OUTPUT] {
        if !state.rules_in(chain).any(|r| r.exprs.ends_with(&tail)) {
            return Err(format!("chain {chain} of table {fam} {TABLE} does not jump to {HOSTPORTS_ALL}"));
        }
    }
    if !state.rules_in(HOSTPORTS_ALL).any(|r| r.exprs == [jump(HOSTPORTS)]) {
        return Err(format!("chain {HOSTPORTS_ALL} of table {fam} {TABLE} does not jump to {HOSTPORTS}"));
    }
    for (chain, exprs, text) in own_rules(t, address) {
        if !state.rules_in(chain).any(|r| r.comment.as_deref() == Some(t.container_id) && r.exprs == exprs) {
            return Err(format!(
                "missing hostport rule in chain {chain} of table {fam} {TABLE}: {text} comment {:?}",
                t.container_id
            ));
        }
    }
    Ok(())
}

/// CHECK for the family of `address`.
pub fn check(t: &Portmap, address: &IpNetwork) -> Result<(), FirewallError> {
    let family = Family::of(&address.ip());
    if !t.conditions(family).is_empty() && has_tool("nft") {
        return portmap_conditions::check(t, address);
    }
    // Only rules are verified, so one dump is the whole read.
    let state = if fastpath::enabled() {
        let rules = nft_table_rules(family.nft_family(), TABLE).map_err(|e| netlink_error("reading", family, e))?;
        TableState { chains: Vec::new(), rules }
    } else {
        TableState::read(family).map_err(|e| netlink_error("reading", family, e))?
    };
    verify(&state, t, address).map_err(FirewallError::Check)
}

/// Plans deleting the rules whose comment is exactly the container ID, from the chains the
/// reference writes them to.
pub(super) fn plan_teardown(rules: &[NftRule], family: Family, container_id: &str) -> NftBatch {
    let mut batch = NftBatch::new(family.nft_family());
    for rule in rules.iter().filter(|r| [HOSTPORTS, HOSTIP_HOSTPORTS, MASQUERADING].contains(&r.chain.as_str())) {
        if rule.comment.as_deref() == Some(container_id) {
            batch.ops.push(NftOp::DeleteRule { table: TABLE.into(), chain: rule.chain.clone(), handle: rule.handle });
        }
    }
    batch
}

/// DEL: deletes this container's rules from both families' tables; what is not there, or a kernel
/// without nf_tables, is success.
fn teardown_netlink(container_id: &str) -> Result<(), FirewallError> {
    let mut errors = Collector::new();
    for family in Family::ALL {
        let mut result = Ok(());
        for _ in 0..2 {
            result = match nft_table_rules(family.nft_family(), TABLE) {
                Ok(rules) => plan_teardown(&rules, family, container_id).commit(),
                Err(e) if matches!(e.raw_os_error(), Some(nix::libc::EPROTONOSUPPORT | nix::libc::EOPNOTSUPP)) => {
                    Ok(())
                }
                Err(e) => Err(e),
            };
            if result.is_ok() {
                break;
            }
        }
        if let Err(e) = result {
            errors.push(netlink_error("teardown", family, e));
        }
    }
    errors.finish()
}

/// DEL: deletes this container's rules from both families' tables (what is not there is success),
/// through `nft` when netlink fails.
pub fn teardown(container_id: &str) -> Result<(), FirewallError> {
    if teardown_netlink(container_id).is_ok() {
        return Ok(());
    }
    portmap_conditions::teardown(container_id)
}

/// STATUS: whether `nft` runs, or without `nft`, whether the kernel answers nf_tables requests.
pub fn usable() -> Result<(), FirewallError> {
    if has_tool("nft") {
        return portmap_conditions::usable();
    }
    super::kernel_usable()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::PortForward;
    use crate::netlink::PayloadBase;

    fn forwards() -> Vec<PortForward> {
        vec![
            PortForward { host_port: 8080, container_port: 80, protocol: Protocol::Tcp, host_ip: None },
            PortForward {
                host_port: 53,
                container_port: 5353,
                protocol: Protocol::Udp,
                host_ip: Some("192.168.1.1".parse().unwrap()),
            },
        ]
    }

    fn portmap(forwards: &[PortForward]) -> Portmap<'_> {
        Portmap::with_defaults("pmnet", "ctr1", forwards)
    }

    #[test]
    fn rules_are_what_nft_writes() {
        // `nft --debug=netlink`: ip daddr 192.168.1.1 udp dport 53 dnat to 10.1.0.5:5353
        let f = forwards();
        let rules = own_rules(&portmap(&f), &"10.1.0.5/24".parse().unwrap());
        assert_eq!(rules.len(), 4);
        assert_eq!(rules[1].2, "ip daddr 192.168.1.1 udp dport 53 dnat to 10.1.0.5:5353");
        assert_eq!(
            (rules[1].0, rules[1].1.clone()),
            (
                HOSTPORTS,
                vec![
                    Expr::Payload { base: PayloadBase::Network, offset: 16, len: 4, dreg: 1 },
                    Expr::Cmp { sreg: 1, op: CmpOp::Eq, data: vec![192, 168, 1, 1] },
                    Expr::Meta { key: 16, dreg: 1 },
                    Expr::Cmp { sreg: 1, op: CmpOp::Eq, data: vec![17] },
                    Expr::Payload { base: PayloadBase::Transport, offset: 2, len: 2, dreg: 1 },
                    Expr::Cmp { sreg: 1, op: CmpOp::Eq, data: vec![0, 53] },
                    Expr::Load { dreg: 1, data: vec![10, 1, 0, 5] },
                    Expr::Load { dreg: 2, data: vec![0x14, 0xe9] },
                    Expr::Dnat { v6: false, addr_reg: 1, proto_reg: 2, flags: 2 },
                ]
            )
        );
        assert_eq!(rules[2].0, MASQUERADING);
        assert_eq!(rules[3].1[1], Expr::Cmp { sreg: 1, op: CmpOp::Eq, data: vec![127, 0, 0, 1] });
        // The IPv6 address gets no mapping bound to an IPv4 host IP and no localhost rule.
        assert_eq!(own_rules(&portmap(&f), &"fd00::5/64".parse().unwrap()).len(), 2);
    }

    #[test]
    fn first_setup_then_rules_only() {
        let f = forwards();
        let t = portmap(&f);
        let address: IpNetwork = "10.1.0.5/24".parse().unwrap();
        let batch = plan_setup(&TableState::default(), &t, &address);
        let names: Vec<String> = batch
            .ops
            .iter()
            .map(|op| match op {
                NftOp::AddTable { .. } => "table".to_string(),
                NftOp::AddChain { name, .. } => format!("chain {name}"),
                NftOp::FlushChain { chain, .. } => format!("flush {chain}"),
                NftOp::AddRule { chain, .. } => format!("rule {chain}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            names,
            [
                "table",
                "chain hostports",
                "chain hostip_hostports",
                "chain hostports_all",
                "flush hostports_all",
                "rule hostports_all",
                "rule hostports_all",
                "chain prerouting",
                "flush prerouting",
                "rule prerouting",
                "chain output",
                "flush output",
                "rule output",
                "chain masquerading",
                "rule hostports",
                "rule hostports",
                "rule masquerading",
                "rule masquerading",
            ]
        );
        // Read back as the kernel would list it, the layout is complete: only missing rules follow.
        let mut state = TableState { chains: CHAINS.to_vec(), rules: vec![] };
        let mut handle = 1;
        for op in &batch.ops {
            if let NftOp::AddRule { chain, exprs, comment, .. } = op {
                handle += 1;
                let (chain, comment, exprs) = (chain.clone(), comment.clone(), exprs.clone());
                state.rules.push(NftRule { chain, handle, comment, jumps: vec![], exprs });
            }
        }
        assert!(plan_setup(&state, &t, &address).is_empty());
        assert_eq!(verify(&state, &t, &address), Ok(()));
        let teardown = plan_teardown(&state.rules, Family::V4, "ctr1");
        assert_eq!(teardown.ops.len(), 4);
        assert!(plan_teardown(&state.rules, Family::V4, "ctr2").is_empty());
        state.rules.retain(|r| r.chain != HOSTPORTS);
        assert!(verify(&state, &t, &address).unwrap_err().contains("chain hostports"));
    }
}
