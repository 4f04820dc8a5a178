//! `loopback`: brings `lo` up in the container's namespace.
//!
//! CRI runtimes call it for every pod sandbox. It ignores `CNI_IFNAME` (it only ever works on
//! `lo`), passes a `prevResult` through unchanged, and otherwise reports `lo` with the loopback
//! addresses the namespace has.

use crate::errors::Ctx;
use crate::netlink::Handle;
use crate::ns::{NetNs, NsError};
use cni_types::{CmdArgs, CniError, CniResult, Interface, IpConfig, Plugin};
use ipnetwork::IpNetwork;

const LO: &str = "lo";

/// The loopback plugin.
pub struct Loopback;

/// Opens a netlink socket inside `ns`, then switches back.
fn handle_in(ns: &NetNs) -> Result<Handle, CniError> {
    ns.run(Handle::new)?.ctx(|| format!("open netlink socket in {}", ns.path().display()))
}

fn lo_link(h: &mut Handle, ns: &NetNs) -> Result<crate::netlink::Link, CniError> {
    h.link_by_name(LO)
        .ctx(|| format!("look up {LO} in {}", ns.path().display()))?
        .ok_or_else(|| CniError::internal(format!("Link not found: {LO} in {}", ns.path().display())))
}

impl Plugin for Loopback {
    fn about(&self) -> String {
        crate::about("loopback")
    }

    fn add(&self, args: &CmdArgs) -> Result<CniResult, CniError> {
        let prev = args.prev_result()?;
        let ns = NetNs::open(&args.netns)?;
        let mut h = handle_in(&ns)?;
        let lo = lo_link(&mut h, &ns)?;
        h.set_link_up(lo.index, true).map_err(|e| e.on(LO))?;
        let addrs = h.addresses(Some(lo.index)).map_err(|e| e.on(LO))?;
        if let Some(bad) = addrs.iter().find(|a| !a.net.ip().is_loopback()) {
            return Err(CniError::internal(format!(
                "loopback interface found with non-loopback address {:?}",
                bad.net.ip().to_string()
            )));
        }
        if let Some(prev) = prev {
            return Ok(prev);
        }
        // The reference reports the first address of each family, IPv4 first.
        let first = |v4: bool| addrs.iter().map(|a| a.net).find(|n: &IpNetwork| n.is_ipv4() == v4);
        let ips = [first(true), first(false)]
            .into_iter()
            .flatten()
            .map(|address| IpConfig { interface: Some(0), address, gateway: None })
            .collect();
        Ok(CniResult {
            cni_version: args.cni_version.clone(),
            interfaces: vec![Interface {
                name: LO.into(),
                mac: "00:00:00:00:00:00".into(),
                sandbox: args.netns.clone(),
                ..Default::default()
            }],
            ips,
            ..Default::default()
        })
    }

    fn del(&self, args: &CmdArgs) -> Result<(), CniError> {
        if args.netns.is_empty() {
            return Ok(());
        }
        let ns = match NetNs::open(&args.netns) {
            Ok(ns) => ns,
            // The runtime may call DEL again after the namespace is gone.
            Err(NsError::NotExist(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mut h = handle_in(&ns)?;
        let lo = lo_link(&mut h, &ns)?;
        Ok(h.set_link_up(lo.index, false).map_err(|e| e.on(LO))?)
    }

    fn check(&self, args: &CmdArgs) -> Result<(), CniError> {
        let ns = NetNs::open(&args.netns)?;
        let mut h = handle_in(&ns)?;
        if !lo_link(&mut h, &ns)?.up {
            return Err(CniError::internal("loopback interface is down"));
        }
        Ok(())
    }
}
