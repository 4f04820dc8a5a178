//! The fast paths of the rule layer, in one list, and the one switch that turns them all off.
//!
//! Each fast path is a shortcut to the same kernel state as its plain path; the plain path is
//! always correct on its own (it reads the table, plans, and writes one batch), and every fast
//! path falls back to it when its condition does not hold or the kernel refuses its batch.
//! `CNI_FIREWALL_FAST_PATHS=0` (also `false`, `off`, `no`) in the plugin's environment makes every
//! call site below take the plain path; the conformance suite runs the bridge, portmap and firewall
//! tests both ways.
//!
//! | Fast path | Where | Taken when | Plain path otherwise |
//! |---|---|---|---|
//! | Pre-spawned `iptables-restore` | bridge/ptp ADD (`veth::Started::begin` through `dispatch::prepare_ipmasq`) | masquerade with iptables: the IPv4 restore starts while IPAM runs | spawn `iptables-restore` when the batch is ready |
//! | Blind masquerade batch | `iptables::masq::begin`, `iptables::masq::Setup::finish` | iptables-nft and the kernel says (netlink) the container's nat chain does not exist | `iptables-save -t nat`, plan, `iptables-restore` |
//! | Chain-absent probe on DEL | `iptables::masq::teardown` | iptables-nft and the kernel says the container's chain does not exist: nothing to read or delete | dump and plan as below |
//! | Deletion by handle | `iptables::remove_chains_by_handle` from masquerade and portmap DEL (iptables) | iptables-nft: the jumps and chains are listed over netlink and deleted by handle in one batch | `iptables-save -t nat`, plan, `iptables-restore` |
//! | Nothing-to-collect probe on GC | `iptables::masq::gc`, `iptables::portmap::gc` (both through `iptables::nat_surely_without`) | iptables-nft and no nat rule comment names a stale container of the network: nothing to read | `iptables-save -t nat`, plan, `iptables-restore` |
//! | One-batch portmap ADD (iptables) | `iptables::portmap::setup` | the shared chains are in place (or cannot be asked about): the container's rules only, shared rules checked inside the batch | `iptables-save -t nat`, plan all, `iptables-restore` |
//! | Rules-only portmap ADD (nftables) | `nftables::portmap::setup`, `nftables::portmap_conditions::setup` | the table's `prerouting` chain is exactly what ADD writes, so the layout is complete | read the whole table, plan the layout and rules, one batch |
//! | CHECK in one dump (nftables) | `nftables::masq::check`, `nftables::portmap::check` | always: only rules are compared, so the chains are not asked for one by one | read the table with its chains, then compare |
//! | Accept rules over netlink (firewall, iptables) | `iptables::forward` ADD and DEL | iptables-nft, `ingressPolicy` open, both jumps in place (read over netlink): the accept rules are written, or deleted by handle, as exactly the expressions iptables-nft writes | the one-process batch below, else dump, plan, `iptables-restore` |
//! | One-process batch (firewall, iptables) | `iptables::forward` ADD and DEL | iptables-nft and `CNI-FORWARD` holds rules: the kernel says which accept rules exist; one batch `-C`hecks the shared rules and appends or `-D`eletes exactly the attachment's | `iptables-save -t filter`, plan, `iptables-restore` |

use std::sync::OnceLock;

/// The environment variable that turns every fast path off when `0`, `false`, `off` or `no`.
pub const FAST_PATHS_ENV: &str = "CNI_FIREWALL_FAST_PATHS";

/// Whether fast paths may be taken; read once per process from [`FAST_PATHS_ENV`].
pub fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var(FAST_PATHS_ENV).map_or(true, |v| parse(&v)))
}

/// Whether a value of [`FAST_PATHS_ENV`] leaves fast paths on.
fn parse(value: &str) -> bool {
    !matches!(value.trim().to_ascii_lowercase().as_str(), "0" | "false" | "off" | "no")
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn only_an_explicit_no_turns_fast_paths_off() {
        for off in ["0", "false", "OFF", " no "] {
            assert!(!parse(off), "{off:?}");
        }
        for on in ["1", "true", "", "yes"] {
            assert!(parse(on), "{on:?}");
        }
    }
}
