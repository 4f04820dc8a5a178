//! `bandwidth`: shapes a container's traffic with token bucket filters. A chained plugin: it
//! finds the host end of the container's veth in `prevResult` and passes that result on, with
//! the ifb it creates appended.
//!
//! Ingress (traffic to the container) is a root tbf on the host veth. Egress (traffic from the
//! container) enters the host veth, so an ingress qdisc there redirects every packet (a u32
//! match-all filter with mirred) to an ifb named `bwp` + hash of network and container ID, whose
//! root tbf does the shaping. Qdisc, filter and action are the reference's, field for field
//! (`tc -j` shows the same state), built with rtnetlink messages.
//!
//! Differences from the reference (all deliberate): ADD is idempotent (a retried ADD replaces
//! the tbfs and the filter instead of failing with EEXIST, a leaked ifb is reused) and a failed
//! ADD undoes what it created; without a prevResult and without limits ADD prints an empty
//! result instead of crashing; configuration errors carry code 7 and name the key, and limits
//! rates below 8 bit/s (a zero-rate tbf in the reference) are rejected; DEL needs no valid limits; CHECK also verifies the ingress redirect and
//! finds the root tbf wherever it sits in the qdisc list; our ifb carries the alias
//! `cni-bandwidth <network> <containerID>`, which lets GC remove the ifbs of attachments that
//! are no longer valid (the name alone is a hash and cannot tell one network's ifbs from
//! another's, so ifbs without our alias — the reference's — are left alone); STATUS checks that
//! traffic control over rtnetlink works.

mod config;

pub use config::{ifb_alias, ifb_name, is_ifb_name, parse_ifb_alias, parse_psched, tick_in_usec, BandwidthConf, Limit};

use crate::errors::{internal, Collector, Ctx};
use crate::netlink::{Handle, Link, ETH_P_ALL, INGRESS_HANDLE, TC_H_INGRESS, TC_H_ROOT};
use crate::ns::NetNs;
use cni_types::error::PLUGIN_NOT_AVAILABLE;
use cni_types::result::Interface;
use cni_types::{CmdArgs, CniError, CniResult, Plugin};
use std::collections::HashSet;
use std::io;

/// The bandwidth plugin.
pub struct BandwidthPlugin;

/// The priority of the redirect filter on the host veth's ingress.
const FILTER_PRIORITY: u16 = 1;

/// The spec versions the reference accepts (from 0.3.0), and 1.1.0 as its newest release does.
const VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Finds the host end of the container's veth: the peer index of `ifname` in the container,
/// which must be a link of the host namespace named by a result interface without a sandbox.
fn host_interface(prev: &CniResult, args: &CmdArgs, host: &mut Handle) -> Result<Link, CniError> {
    if prev.interfaces.is_empty() {
        return Err(internal("no interfaces provided"));
    }
    let ns = NetNs::open(&args.netns).ctx(|| format!("failed to open netns {:?}", args.netns))?;
    let mut container = ns.run(Handle::new)?.ctx(|| format!("netlink socket in {}", args.netns))?;
    let link = container.link_by_name(&args.ifname).map_err(internal)?;
    let peer = match link {
        Some(l) if l.kind == "veth" => l.peer_index.filter(|i| *i > 0),
        _ => None,
    }
    .ok_or_else(|| internal(format!("container interface {} has no veth peer", args.ifname)))?;
    let hostlink = host
        .link_by_index(peer)
        .map_err(internal)?
        .ok_or_else(|| internal(format!("veth peer with index {peer} is not in host ns")))?;
    if prev.interfaces.iter().any(|i| i.sandbox.is_empty() && i.name == hostlink.name) {
        Ok(hostlink)
    } else {
        Err(internal("no veth peer of container interface found in host ns"))
    }
}

/// What a failing ADD must undo, in reverse order.
enum Undo {
    RootQdisc(u32),
    IngressQdisc(u32),
    Link(u32),
}

fn undo(host: &mut Handle, steps: Vec<Undo>) {
    for step in steps.into_iter().rev() {
        let done = match step {
            Undo::RootQdisc(index) => host.del_qdisc(index, TC_H_ROOT),
            Undo::IngressQdisc(index) => host.del_qdisc(index, TC_H_INGRESS),
            Undo::Link(index) => host.del_link(index),
        };
        if let Err(e) = done {
            log::warn!("rolling back a failed ADD: {e}");
        }
    }
}

/// The ifb for this attachment: created, or a leftover of an earlier ADD brought back to the
/// state a fresh one has (MTU, no transmit queue, up, alias). Creation comes first (it fails
/// with EEXIST when a link has the name), so a fresh ADD pays no lookup for a link that cannot
/// be there yet.
fn ensure_ifb(
    host: &mut Handle,
    name: &str,
    mtu: u32,
    alias: Option<&str>,
    created: &mut Vec<Undo>,
) -> io::Result<Link> {
    match host.create_ifb(name, mtu, alias) {
        Ok(link) => {
            created.push(Undo::Link(link.index));
            return Ok(link);
        }
        Err(e) if e.raw_os_error() == Some(nix::libc::EEXIST) => {}
        Err(e) => return Err(e.into()),
    }
    match host.link_by_name(name)? {
        Some(l) if l.kind == "ifb" => {
            if l.mtu != mtu || l.tx_queue_len != 0 {
                host.set_link_mtu_txqlen(l.index, mtu, 0)?;
            }
            if !l.up {
                host.set_link_up(l.index, true)?;
            }
            if let Some(alias) = alias.filter(|a| *a != l.alias) {
                host.set_link_alias(l.index, alias)?;
            }
            Ok(l)
        }
        Some(l) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("a {} link named {name} exists and is not an ifb", l.kind),
        )),
        None => Err(io::Error::new(io::ErrorKind::NotFound, format!("{name} exists and vanished at once"))),
    }
}

/// The egress path: ifb, ingress qdisc (unless `has_ingress`) and redirect filter on the host
/// veth, tbf on the ifb.
fn setup_egress(
    host: &mut Handle,
    veth: &Link,
    has_ingress: bool,
    ifb: (&str, Option<&str>),
    limit: Limit,
    tick: f64,
    created: &mut Vec<Undo>,
) -> Result<Link, CniError> {
    let (name, alias) = ifb;
    let ifb = ensure_ifb(host, name, veth.mtu, alias, created).ctx(|| "adding link")?;
    if !has_ingress {
        host.add_ingress_qdisc(veth.index).ctx(|| "create ingress qdisc")?;
        created.push(Undo::IngressQdisc(veth.index));
    }
    // A retried ADD finds its own filter and keeps it; anything else at that priority is
    // replaced, so there is never a second one. An ingress qdisc made just now has no filters,
    // so a fresh ADD neither lists nor deletes any.
    let filters =
        if has_ingress { host.filters(veth.index, INGRESS_HANDLE).map_err(|e| e.on(&veth.name))? } else { Vec::new() };
    let redirecting: Vec<_> = filters.iter().filter(|f| !f.redirects.is_empty()).collect();
    let in_place = matches!(redirecting.as_slice(), [f] if f.priority == FILTER_PRIORITY
        && f.protocol == ETH_P_ALL
        && f.kind == "u32"
        && f.redirects.len() == 2
        && f.redirects.iter().all(|r| r.egress_redirect && r.ifindex == ifb.index));
    if !in_place {
        if filters.iter().any(|f| f.priority == FILTER_PRIORITY && f.protocol == ETH_P_ALL) {
            host.del_filters(veth.index, INGRESS_HANDLE, FILTER_PRIORITY, ETH_P_ALL).ctx(|| "add filter")?;
        }
        host.add_redirect_filter(veth.index, INGRESS_HANDLE, FILTER_PRIORITY, ifb.index).ctx(|| "add filter")?;
    }
    host.replace_root_tbf(ifb.index, &limit.tbf(tick)).ctx(|| "create ifb qdisc")?;
    Ok(ifb)
}

fn add(args: &CmdArgs) -> Result<CniResult, CniError> {
    let tick = tick_in_usec()?;
    let conf = BandwidthConf::load(args)?;
    let prev = args.prev_result()?;
    if conf.is_empty() {
        return Ok(prev.unwrap_or_else(|| CniResult { cni_version: args.cni_version.clone(), ..Default::default() }));
    }
    let mut result = prev.ok_or_else(|| internal("must be called as chained plugin"))?;
    let mut host = Handle::new()?;
    let veth = host_interface(&result, args, &mut host)?;
    let mut created = Vec::new();
    let mut shape = || -> Result<Option<Link>, CniError> {
        // What an earlier ADD left, so a retry neither fails nor undoes it.
        let qdiscs = host.qdiscs(veth.index).map_err(|e| e.on(&veth.name))?;
        let had_tbf = qdiscs.iter().any(|q| q.parent == TC_H_ROOT && q.kind == "tbf");
        let has_ingress =
            qdiscs.iter().any(|q| q.parent == TC_H_INGRESS && q.handle == INGRESS_HANDLE && q.kind == "ingress");
        if let Some(limit) = conf.ingress {
            host.replace_root_tbf(veth.index, &limit.tbf(tick)).ctx(|| "create qdisc")?;
            if !had_tbf {
                created.push(Undo::RootQdisc(veth.index));
            }
        }
        match conf.egress {
            Some(limit) => {
                let name = ifb_name(&conf.network, &args.container_id);
                let alias = ifb_alias(&conf.network, &args.container_id);
                let ifb = (name.as_str(), alias.as_deref());
                setup_egress(&mut host, &veth, has_ingress, ifb, limit, tick, &mut created).map(Some)
            }
            None => Ok(None),
        }
    };
    match shape() {
        Ok(ifb) => {
            if let Some(ifb) = ifb {
                if !result.interfaces.iter().any(|i| i.name == ifb.name && i.sandbox.is_empty()) {
                    result.interfaces.push(Interface {
                        name: ifb.name.clone(),
                        mac: ifb.mac_string(),
                        ..Default::default()
                    });
                }
            }
            Ok(result)
        }
        Err(e) => {
            undo(&mut host, created);
            Err(e)
        }
    }
}

/// Compares the root tbf of `link` with what `limit` asks for.
fn check_tbf(host: &mut Handle, link: &Link, limit: Limit, tick: f64) -> Result<(), CniError> {
    let qdiscs = host.qdiscs(link.index).map_err(|e| e.on(&link.name))?;
    let root = qdiscs.iter().find(|q| q.parent == TC_H_ROOT);
    let Some(tbf) = root.and_then(|q| q.tbf) else {
        return Err(internal(format!("Failed to find qdisc: no root tbf on {}", link.name)));
    };
    let want = limit.tbf(tick);
    if tbf.rate != want.rate {
        return Err(internal(format!("Rate doesn't match on {}: {} B/s, want {}", link.name, tbf.rate, want.rate)));
    }
    if tbf.limit != want.limit {
        return Err(internal(format!("Limit doesn't match on {}: {}, want {}", link.name, tbf.limit, want.limit)));
    }
    if tbf.buffer != want.buffer {
        return Err(internal(format!("Buffer doesn't match on {}: {}, want {}", link.name, tbf.buffer, want.buffer)));
    }
    Ok(())
}

fn check(args: &CmdArgs) -> Result<(), CniError> {
    let tick = tick_in_usec()?;
    let conf = BandwidthConf::load(args)?;
    let prev = args.prev_result()?.ok_or_else(|| internal("must be called as a chained plugin"))?;
    let mut host = Handle::new()?;
    let veth = host_interface(&prev, args, &mut host)?;
    if let Some(limit) = conf.ingress {
        check_tbf(&mut host, &veth, limit, tick)?;
    }
    if let Some(limit) = conf.egress {
        let name = ifb_name(&conf.network, &args.container_id);
        let ifb = host
            .link_by_name(&name)
            .map_err(internal)?
            .filter(|l| l.kind == "ifb")
            .ok_or_else(|| internal(format!("get ifb device: no ifb named {name}")))?;
        check_tbf(&mut host, &ifb, limit, tick)?;
        let filters = host.filters(veth.index, INGRESS_HANDLE).map_err(|e| e.on(&veth.name))?;
        let redirected = filters.iter().any(|f| {
            f.priority == FILTER_PRIORITY
                && f.protocol == ETH_P_ALL
                && f.redirects.iter().any(|r| r.egress_redirect && r.ifindex == ifb.index)
        });
        if !redirected {
            return Err(internal(format!("no filter on {} redirects its ingress to {name}", veth.name)));
        }
    }
    Ok(())
}

fn del(args: &CmdArgs) -> Result<(), CniError> {
    let net = args.net_conf()?;
    let name = ifb_name(&net.name, &args.container_id);
    let mut host = Handle::new()?;
    match host.link_by_name(&name).map_err(internal)? {
        Some(link) if link.kind == "ifb" => host.del_link(link.index).ctx(|| format!("failed to delete {name}")),
        Some(link) => {
            log::warn!("{name} is a {} link, not an ifb; left alone", link.kind);
            Ok(())
        }
        None => Ok(()),
    }
}

/// GC. The valid list gives the names of the ifbs to keep (hash of this network and each valid
/// container ID), but not which of the other `bwp*` ifbs are this network's: another network's
/// attachments, or one whose runtime runs GC later, hash to names just as well formed, and
/// deleting one would cut that container's egress (its redirect would point nowhere). So an
/// ifb is removed only when its alias, written at ADD, names this network and a container ID
/// that hashes with it to that very name, and that ID is not valid. Ifbs without our alias
/// (made by the reference, or by an ADD that crashed before naming it) are left to DEL.
fn gc(args: &CmdArgs) -> Result<(), CniError> {
    let net = args.net_conf()?;
    let Some(valid) = net.gc_valid_attachments() else { return Ok(()) };
    let keep: HashSet<String> = valid.iter().map(|a| ifb_name(&net.name, &a.container_id)).collect();
    let mut host = Handle::new()?;
    let links = host.links()?;
    let mut errors = Collector::new();
    for link in links.iter().filter(|l| l.kind == "ifb" && is_ifb_name(&l.name) && !keep.contains(&l.name)) {
        // Only an ifb whose alias names this network, and whose name is the hash of that
        // network and the container ID it records, is known to be ours and stale.
        let ours = parse_ifb_alias(&link.alias)
            .is_some_and(|(network, id)| network == net.name && ifb_name(network, id) == link.name);
        if !ours {
            log::debug!("GC: {} belongs to no attachment this network can name; left alone", link.name);
            continue;
        }
        errors.step(|| format!("failed to delete {}", link.name), host.del_link(link.index));
    }
    errors.into_cni()
}

impl Plugin for BandwidthPlugin {
    fn about(&self) -> String {
        crate::about("bandwidth")
    }

    fn supported_versions(&self) -> &'static [&'static str] {
        VERSIONS
    }

    fn add(&self, args: &CmdArgs) -> Result<CniResult, CniError> {
        add(args)
    }

    fn del(&self, args: &CmdArgs) -> Result<(), CniError> {
        del(args)
    }

    fn check(&self, args: &CmdArgs) -> Result<(), CniError> {
        check(args)
    }

    fn gc(&self, args: &CmdArgs) -> Result<(), CniError> {
        gc(args)
    }

    fn status(&self, args: &CmdArgs) -> Result<(), CniError> {
        args.net_conf()?;
        let unavailable = |e: crate::netlink::NetlinkError| {
            CniError::new(PLUGIN_NOT_AVAILABLE, format!("bandwidth: traffic control over rtnetlink: {e}"))
        };
        let mut host = Handle::new().map_err(unavailable)?;
        // The loopback device exists in every namespace; listing its qdiscs needs tc support.
        host.qdiscs(1).map_err(unavailable)?;
        tick_in_usec().map_err(|e| CniError::new(PLUGIN_NOT_AVAILABLE, e.msg))?;
        Ok(())
    }
}
