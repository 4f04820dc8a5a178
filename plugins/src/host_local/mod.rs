//! host-local IPAM: addresses from configured ranges, reserved in a directory of small files
//! shared (format and lock) with the reference plugin, so a host can switch between the two.
//!
//! `config` validates, `range` does the address arithmetic and allocation order, `allocator`
//! decides, `store` touches the disk; this module maps the CNI verbs onto them.

pub mod allocator;
pub mod config;
pub mod dns;
pub mod index;
pub mod range;
pub mod store;

use cni_types::error::{CniError, PLUGIN_NOT_AVAILABLE};
use cni_types::{CmdArgs, CniResult, Dns, Plugin};
use config::Location;
use store::DiskStore;

/// The host-local IPAM plugin.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostLocal;

/// Opens and locks the network's store, creating it.
fn open_store(loc: &Location) -> Result<DiskStore, CniError> {
    DiskStore::open(&loc.data_dir, &loc.network).map_err(|e| {
        CniError::internal(format!(
            "failed to open host-local store {}: {e}",
            loc.data_dir.join(&loc.network).display()
        ))
    })
}

/// Opens and locks the network's store if it exists.
fn open_existing_store(loc: &Location) -> Result<Option<DiskStore>, CniError> {
    DiskStore::open_existing(&loc.data_dir, &loc.network).map_err(|e| {
        CniError::internal(format!(
            "failed to open host-local store {}: {e}",
            loc.data_dir.join(&loc.network).display()
        ))
    })
}

impl Plugin for HostLocal {
    fn about(&self) -> String {
        crate::about("host-local")
    }

    fn add(&self, args: &CmdArgs) -> Result<CniResult, CniError> {
        let conf = config::load(args)?;
        // Read before anything is reserved, so a bad path costs no rollback.
        let dns = match &conf.resolv_conf {
            Some(path) => dns::read_resolv_conf(path).map_err(CniError::internal)?,
            None => Dns::default(),
        };
        let mut store = open_store(&conf.location)?;
        let ips = allocator::allocate(&mut store, &conf.range_sets, &conf.requested, &args.container_id, &args.ifname)
            .map_err(CniError::internal)?;
        Ok(CniResult {
            cni_version: cni_types::version::CURRENT.into(),
            interfaces: Vec::new(),
            ips,
            routes: conf.routes,
            dns,
        })
    }

    /// Releases by attachment. Only the store location is needed, so a configuration whose
    /// ranges no longer validate can still be torn down (the reference refuses, leaking).
    fn del(&self, args: &CmdArgs) -> Result<(), CniError> {
        let (net, ipam) = config::decode(args)?;
        let Some(mut store) = open_existing_store(&config::location(&net, &ipam))? else {
            return Ok(());
        };
        allocator::release(&mut store, &args.container_id, &args.ifname).map(|_| ()).map_err(CniError::internal)
    }

    fn check(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = config::load(args)?;
        let found = match open_existing_store(&conf.location)? {
            Some(store) => allocator::find(&store, &args.container_id, &args.ifname).map_err(CniError::internal)?,
            None => false,
        };
        if found {
            Ok(())
        } else {
            Err(CniError::internal(format!(
                "host-local: Failed to find address added by container {}",
                args.container_id
            )))
        }
    }

    /// Releases reservations of attachments the runtime no longer knows. Without an
    /// attachment list there is no way to tell stale from live, so nothing is touched.
    fn gc(&self, args: &CmdArgs) -> Result<(), CniError> {
        let (net, ipam) = config::decode(args)?;
        let common = args.net_conf()?;
        let Some(valid) = common.gc_valid_attachments() else {
            log::debug!("host-local: GC without cni.dev/valid-attachments; nothing to do");
            return Ok(());
        };
        let Some(mut store) = open_existing_store(&config::location(&net, &ipam))? else {
            return Ok(());
        };
        allocator::gc(&mut store, valid).map(|_| ()).map_err(CniError::internal)
    }

    /// Ready unless the store cannot take a reservation or some range set is full: ADD needs
    /// one address from every set, so one exhausted set already makes every ADD fail.
    fn status(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = config::load(args)?;
        let dir = conf.location.data_dir.join(&conf.location.network);
        let unusable = |e: std::io::Error| {
            CniError::new(
                PLUGIN_NOT_AVAILABLE,
                format!("host-local: data directory {} is not usable: {e}", dir.display()),
            )
        };
        let store = DiskStore::open(&conf.location.data_dir, &conf.location.network).map_err(unusable)?;
        // Read before the probe file comes and goes, so the owner index is still current.
        let full =
            allocator::exhausted_sets(&store, &conf.range_sets).map_err(|e| CniError::new(PLUGIN_NOT_AVAILABLE, e))?;
        store.probe_writable().map_err(unusable)?;
        if let Some(&idx) = full.first() {
            return Err(CniError::new(
                PLUGIN_NOT_AVAILABLE,
                format!("host-local: no IP addresses available in range set {idx}: {}", conf.range_sets[idx]),
            ));
        }
        Ok(())
    }
}
