//! The one entry to the backends: what bridge, ptp and portmap call, with the [`Backend`] as a
//! value, never matched at a call site. ADD and CHECK go to the configured backend; DEL and GC of
//! masquerade clean what either backend left for the attachment (a host may have switched, or the
//! reference may have written the rules), and portmap DEL cleans iptables always (its chain names
//! cover network and container) and nftables when configured (its rules name only the container).

use super::error::FirewallError;
use super::fastpath;
use super::model::{Backend, Family, MasqTarget, Portmap};
use super::tools::PendingRestore;
use super::{iptables, nftables};
use crate::errors::Collector;
use ipnetwork::IpNetwork;
use std::collections::HashSet;

/// A restore tool started ahead of a masquerade ADD, so its start-up overlaps the caller's other
/// work (bridge and ptp start it while IPAM runs): only the iptables backend loads through a
/// process, and only with fast paths on. Most containers have an IPv4 address; for others it
/// loads nothing.
pub fn prepare_ipmasq(backend: Backend) -> Option<PendingRestore> {
    (backend == Backend::Iptables && fastpath::enabled()).then(|| PendingRestore::spawn(Family::V4).ok()).flatten()
}

/// A masquerade ADD under way (see [`begin_ipmasq`]).
pub enum MasqSetup<'a> {
    /// The iptables batches, one perhaps loading already.
    Iptables(Box<iptables::masq::Setup<'a>>),
    /// The nftables batch, sent by [`MasqSetup::finish`].
    Nftables(MasqTarget<'a>),
}

/// Starts masquerade ADD for `t`: with iptables, a `prepared` restore (see [`prepare_ipmasq`]) gets
/// its batch now and loads it while the caller goes on; [`MasqSetup::finish`] does the rest.
/// Dropping the value waits for a loading batch, so a caller that fails in between can roll back
/// knowing it has landed or failed.
pub fn begin_ipmasq(backend: Backend, t: MasqTarget<'_>, prepared: Option<PendingRestore>) -> MasqSetup<'_> {
    match backend {
        Backend::Iptables => MasqSetup::Iptables(Box::new(iptables::masq::begin(t, prepared))),
        Backend::Nftables => MasqSetup::Nftables(t),
    }
}

impl MasqSetup<'_> {
    /// Waits for what [`begin_ipmasq`] started and installs whatever it did not cover; re-running
    /// ADD leaves one copy of each rule.
    pub fn finish(self) -> Result<(), FirewallError> {
        match self {
            MasqSetup::Iptables(setup) => setup.finish(),
            MasqSetup::Nftables(t) => nftables::masq::setup(&t),
        }
    }
}

/// Masquerade ADD in one call: [`begin_ipmasq`] without a prepared restore, then
/// [`MasqSetup::finish`].
pub fn setup_ipmasq(backend: Backend, t: &MasqTarget) -> Result<(), FirewallError> {
    begin_ipmasq(backend, *t, None).finish()
}

/// Masquerade CHECK: every rule ADD installs for these addresses is present.
pub fn check_ipmasq(backend: Backend, t: &MasqTarget) -> Result<(), FirewallError> {
    match backend {
        Backend::Iptables => iptables::masq::check(t),
        Backend::Nftables => nftables::masq::check(t),
    }
}

/// Masquerade DEL: removes this attachment's rules from both backends, found by chain name and
/// comment, so it works without addresses; what is already gone (or a tool the host lacks) is
/// success, and an error in one backend does not keep the other from being cleaned.
pub fn teardown_ipmasq(t: &MasqTarget) -> Result<(), FirewallError> {
    all_of([iptables::masq::teardown(t), nftables::masq::teardown(t)])
}

/// Masquerade GC: removes both backends' rules of `network` whose attachment (container ID,
/// ifname) is not in `valid`. iptables chains ignore ifname, so there a container ID listed with
/// any ifname is kept.
pub fn gc_ipmasq(network: &str, valid: &[(String, String)]) -> Result<(), FirewallError> {
    let valid_ids: HashSet<&str> = valid.iter().map(|(id, _)| id.as_str()).collect();
    all_of([iptables::masq::gc(network, &valid_ids), nftables::masq::gc(network, valid)])
}

/// Portmap ADD for the family of `address`.
pub fn setup_portmap(backend: Backend, t: &Portmap, address: &IpNetwork) -> Result<(), FirewallError> {
    match backend {
        Backend::Iptables => iptables::portmap::setup(t, address),
        Backend::Nftables => nftables::portmap::setup(t, address),
    }
}

/// Portmap CHECK for the family of `address`.
pub fn check_portmap(backend: Backend, t: &Portmap, address: &IpNetwork) -> Result<(), FirewallError> {
    match backend {
        Backend::Iptables => iptables::portmap::check(t, address),
        Backend::Nftables => nftables::portmap::check(t, address),
    }
}

/// Portmap DEL: the iptables chains of (`network`, `container_id`) always, found by name (so
/// neither mappings nor addresses are needed, and a backend switch leaves nothing); the nftables
/// rules only when `configured` is nftables, since they carry just the container ID, which another
/// network of the same container may share. A family in `present` (the container had an address
/// of it) must be readable. Each backend's error names it.
pub fn teardown_portmap(
    configured: Option<Backend>,
    network: &str,
    container_id: &str,
    present: &[Family],
) -> Result<(), FirewallError> {
    let iptables = iptables::portmap::teardown(network, container_id, present)
        .map_err(|e| e.step("could not tear down iptables port forwarding"));
    let nftables = match configured {
        Some(Backend::Nftables) => nftables::portmap::teardown(container_id)
            .map_err(|e| e.step("could not tear down nftables port forwarding")),
        _ => Ok(()),
    };
    all_of([iptables, nftables])
}

/// Portmap GC: removes the iptables chains of `network`'s containers whose ID is not in
/// `valid_ids`. nftables rules name no network, so GC cannot attribute them and leaves them to DEL.
pub fn gc_portmap(network: &str, valid_ids: &HashSet<&str>) -> Result<(), FirewallError> {
    iptables::portmap::gc(network, valid_ids)
}

/// Portmap STATUS: whether the backend's tools (or the kernel, for nftables without `nft`) work.
pub fn portmap_usable(backend: Backend) -> Result<(), FirewallError> {
    match backend {
        Backend::Iptables => iptables::portmap::usable(),
        Backend::Nftables => nftables::portmap::usable(),
    }
}

/// Runs to the end: every step's error is kept, and all are reported together.
fn all_of<const N: usize>(results: [Result<(), FirewallError>; N]) -> Result<(), FirewallError> {
    let mut errors = Collector::new();
    for result in results {
        errors.keep(result);
    }
    errors.finish()
}
