//! The iptables backend: rules in the reference's `nat` chains, written as one
//! `iptables-restore --noflush -w` batch per family and operation ([`tools`]), planned as data
//! (`rules.rs`: rules, dumps, batches) from one `iptables-save -t <table>` dump, with netlink probes
//! where iptables is the nf_tables variant (see [`crate::firewall::fastpath`]). [`masq`] is bridge
//! and ptp masquerade, [`portmap`] is portmap's DNAT.

pub mod forward;
pub mod masq;
pub mod portmap;
mod rules;

pub use rules::*;

use crate::firewall::error::FirewallError;
use crate::firewall::fastpath;
use crate::firewall::model::Family;
use crate::firewall::tools::{self, run, save_tool};
use crate::netlink::{nft_chain_exists, nft_rules, nft_table_rules, NftBatch, NftOp};
use std::collections::HashSet;

/// The table every rule of this backend lives in.
pub const NAT: &str = "nat";

/// Whether the host's `iptables-restore` for `family` is the nf_tables variant (iptables-nft), whose
/// chains the kernel can be asked about directly. Debian links it through alternatives to
/// `xtables-nft-multi`; the legacy variant is `xtables-legacy-multi`.
pub fn is_nft(family: Family) -> bool {
    tools::find_tool(tools::restore_tool(family))
        .and_then(|p| std::fs::canonicalize(p).ok())
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().contains("nft")))
        .unwrap_or(false)
}

/// Dumps and parses one table: `iptables-save -t <table>` (or `ip6tables-save`).
pub fn save(family: Family, table: &str) -> Result<SavedTable, FirewallError> {
    let tool = save_tool(family);
    let text = run(tool, &["-t", table], None)?;
    SavedTable::parse(&text, table)
        .map_err(|reason| FirewallError::Parse { command: format!("{tool} -t {table}"), reason })
}

/// Dumps `table`, plans a batch from the dump and loads it; `plan` returns `None` when nothing is to
/// be done. A concurrent writer can change the table between dump and load, which fails the batch as
/// a whole (it is atomic), so one failure re-plans from a fresh dump. `tolerate_unreadable` turns a
/// failing dump into "nothing to do" (cleanup on a host that cannot have the table).
pub fn apply(
    family: Family,
    table: &str,
    tolerate_unreadable: bool,
    plan: impl Fn(&SavedTable) -> Option<Batch>,
) -> Result<(), FirewallError> {
    for attempt in 0..2 {
        let saved = match save(family, table) {
            Ok(saved) => saved,
            Err(e) if tolerate_unreadable => {
                log::debug!("nothing to clean up in {family:?} table {table}: {e}");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let Some(batch) = plan(&saved) else { return Ok(()) };
        match tools::iptables_restore(family, &batch.render()) {
            Ok(()) => return Ok(()),
            Err(e) if attempt == 0 => log::debug!("re-planning after a failed batch: {e}"),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Removes iptables chains of `table` and every rule elsewhere that jumps to them, when
/// iptables is the nf_tables variant: the kernel lists the rules over netlink (those of the
/// `sources` chains that exist, or of the whole table) and one nf_tables batch over netlink deletes
/// the jumps by handle and the chains, with no process. Reading the table through `iptables-save`
/// instead grows with every container on the host. `Ok(false)` when this way does not apply (legacy
/// iptables); any error leaves the table as it was, for the caller to fall back on [`apply`].
pub fn remove_chains_by_handle(
    family: Family,
    table: &str,
    chains: &[String],
    sources: Option<&[&str]>,
) -> Result<bool, FirewallError> {
    if !fastpath::enabled() || !is_nft(family) {
        return Ok(false);
    }
    let (nft_fam, fam_name) = (family.nft_family(), family.nft_keyword());
    let netlink = |what: String| move |source| FirewallError::Spawn { command: format!("netlink {what}"), source };
    let mut existing = Vec::new();
    for chain in chains {
        if nft_chain_exists(nft_fam, table, chain).map_err(netlink(format!("get chain {fam_name} {table} {chain}")))? {
            existing.push(chain.as_str());
        }
    }
    // No chain, no jump to it: the kernel refuses rules that jump to a missing chain.
    if existing.is_empty() {
        return Ok(true);
    }
    let rules = match sources {
        Some(sources) => {
            let mut all = Vec::new();
            for source in sources {
                // A source chain that does not exist holds no jump.
                if !nft_chain_exists(nft_fam, table, source)
                    .map_err(netlink(format!("get chain {fam_name} {table} {source}")))?
                {
                    continue;
                }
                all.extend(
                    nft_rules(nft_fam, table, source).map_err(netlink(format!("list {fam_name} {table} {source}")))?,
                );
            }
            all
        }
        None => nft_table_rules(nft_fam, table).map_err(netlink(format!("list table {fam_name} {table}")))?,
    };
    let mut batch = NftBatch::new(nft_fam);
    for r in rules.iter().filter(|r| !existing.contains(&r.chain.as_str())) {
        if r.jumps.iter().any(|j| existing.contains(&j.as_str())) {
            batch.ops.push(NftOp::DeleteRule { table: table.to_string(), chain: r.chain.clone(), handle: r.handle });
        }
    }
    for c in &existing {
        batch.ops.push(NftOp::FlushChain { table: table.to_string(), chain: c.to_string() });
    }
    for c in &existing {
        batch.ops.push(NftOp::DeleteChain { table: table.to_string(), chain: c.to_string() });
    }
    batch.commit().map_err(|source| FirewallError::Netlink {
        what: format!("delete chains {} from {fam_name} {table}", existing.join(", ")),
        source,
    })?;
    Ok(true)
}

/// Whether the kernel shows (iptables-nft, over netlink) that no rule of the family's nat table has
/// a comment `wanted` selects. Legacy iptables or a failing dump answer `false`.
pub fn nat_surely_without(family: Family, wanted: impl Fn(&str) -> bool) -> bool {
    if !is_nft(family) {
        return false;
    }
    if !fastpath::enabled() {
        return false;
    }
    match crate::netlink::nft_table_rules(family.nft_family(), NAT) {
        Ok(rules) => !rules.iter().any(|r| r.comment.as_deref().is_some_and(&wanted)),
        Err(_) => false,
    }
}

/// Plans removing nat `chains`: every rule elsewhere that jumps to them, then flush and delete those
/// that exist. `None` when there is nothing.
pub fn plan_remove_chains(saved: &SavedTable, chains: &[String]) -> Option<Batch> {
    let mut batch = Batch::new(NAT);
    let doomed: HashSet<&str> = chains.iter().map(String::as_str).collect();
    for rule in saved.rules.iter().filter(|r| !doomed.contains(r.chain.as_str())) {
        if rule.target().is_some_and(|t| doomed.contains(t)) {
            batch.delete(rule);
        }
    }
    let declared: HashSet<&str> = saved.chains.iter().map(String::as_str).collect();
    let existing: Vec<&String> = chains.iter().filter(|c| declared.contains(c.as_str())).collect();
    existing.iter().for_each(|c| batch.flush_chain(c));
    existing.iter().for_each(|c| batch.delete_chain(c));
    (!batch.is_empty()).then_some(batch)
}
