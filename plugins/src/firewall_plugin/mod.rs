//! `firewall`: accepts forwarded traffic to and from a container's addresses, behind an
//! administrator's chain, and keeps bridges apart (`ingressPolicy`). A chained plugin: it reads
//! the addresses from `prevResult` and passes that result through unchanged (wave2-anchors §1.4).
//!
//! The rules are the reference's byte for byte; what each ADD installed is also kept in a small
//! store ([`store`]), so that, unlike the reference:
//! * DEL removes the attachment's rules even without `prevResult`, and never an address another
//!   live attachment holds (the reference's DEL of a recycled address removes the new owner's);
//! * GC removes the rules of attachments not in `cni.dev/valid-attachments`;
//! * CHECK changes nothing (the reference's creates missing chains) and also checks the
//!   isolation rules; STATUS says whether the backend can work;
//! * everything is checked before anything changes: an unknown `backend` is an error (the
//!   reference silently uses the default), a missing bridge for an ingress policy is refused
//!   before the accept rules go in (the reference adds them, then fails);
//! * concurrent ADDs serialise on the store's lock and write one batch per family, so each chain
//!   and jump exists once (the reference duplicates jumps and fails with "CHAIN_USER_ADD failed").

pub mod backends;
pub mod config;
pub mod store;

use crate::firewall::forward::{ForwardAccept, IngressPolicy};
use backends::Backend;
use cni_types::error::PLUGIN_NOT_AVAILABLE;
use cni_types::{CmdArgs, CniError, CniResult, Plugin};
use config::FirewallConf;
use std::collections::HashSet;
use std::net::IpAddr;
use store::{Record, Store};

/// The firewall plugin.
pub struct FirewallPlugin;

fn internal(e: impl std::fmt::Display) -> CniError {
    CniError::internal(e)
}

/// The reference's text for a missing `prevResult`.
const MISSING_PREV: &str = "missing prevResult from earlier plugin";

/// The addresses of a result, each once, in order.
fn addresses_of(prev: &CniResult) -> Vec<IpAddr> {
    let mut seen = HashSet::new();
    prev.ips.iter().map(|ip| ip.address.ip()).filter(|a| seen.insert(*a)).collect()
}

/// Checks a bridge name from `prevResult` as the kernel names links, since it becomes rule text.
fn check_bridge(name: &str) -> Result<(), CniError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b':' | b'"' | b'\'' | b'\\'));
    if ok {
        Ok(())
    } else {
        Err(CniError::invalid_config(format!("prevResult.interfaces[0].name {name:?} is not a usable bridge name")))
    }
}

/// What the attachment needs, from the configuration and `prevResult`; refuses what the
/// reference would fail on half way.
fn attachment_of(args: &CmdArgs, conf: &FirewallConf, prev: &CniResult) -> Result<ForwardAccept, CniError> {
    let bridge = prev.interfaces.first().map(|i| i.name.clone());
    if conf.ingress != IngressPolicy::Open {
        match &bridge {
            None => {
                return Err(internal(format!(
                    "interface needs to be set for ingress policy {:?}, make sure to chain \"firewall\" plugin with \"bridge\"",
                    conf.ingress.as_str()
                )))
            }
            Some(name) if name.is_empty() => return Err(internal("got empty bridge name")),
            Some(name) => check_bridge(name)?,
        }
    }
    Ok(ForwardAccept {
        container_id: args.container_id.clone(),
        ifname: args.ifname.clone(),
        addresses: addresses_of(prev),
        admin_chain: conf.admin_chain.clone(),
        ingress: conf.ingress,
        bridge: if conf.ingress == IngressPolicy::Open { None } else { bridge },
    })
}

fn record_of(a: &ForwardAccept, backend: Backend, conf: &FirewallConf) -> Record {
    Record {
        container_id: a.container_id.clone(),
        ifname: a.ifname.clone(),
        backend: backend.as_str().to_string(),
        addresses: a.addresses.clone(),
        admin_chain: a.admin_chain.clone(),
        ingress_policy: a.ingress.as_str().to_string(),
        bridge: a.bridge.clone(),
        firewalld_zone: conf.firewalld_zone.clone(),
    }
}

/// The attachment a record describes. A record is read back from disk, so the names that become
/// rule text are checked again as ADD checked them before writing it.
fn attachment_from_record(r: &Record) -> Result<ForwardAccept, CniError> {
    if r.admin_chain != crate::firewall::forward::DEFAULT_ADMIN_CHAIN {
        config::check_chain_name(&r.admin_chain)
            .map_err(|e| internal(format!("the store's record of {}/{}: {}", r.container_id, r.ifname, e.msg)))?;
    }
    if let Some(bridge) = &r.bridge {
        check_bridge(bridge)
            .map_err(|e| internal(format!("the store's record of {}/{}: {}", r.container_id, r.ifname, e.msg)))?;
    }
    Ok(ForwardAccept {
        container_id: r.container_id.clone(),
        ifname: r.ifname.clone(),
        addresses: r.addresses.clone(),
        admin_chain: r.admin_chain.clone(),
        ingress: IngressPolicy::parse(&r.ingress_policy).unwrap_or_default(),
        bridge: r.bridge.clone(),
    })
}

fn open_store(conf_dir: &std::path::Path) -> Result<Store, CniError> {
    Store::open(conf_dir).map_err(|e| internal(format!("open the firewall plugin's store {}: {e}", conf_dir.display())))
}

fn key(network: &str, r: &Record) -> (String, String, String) {
    (network.to_string(), r.container_id.clone(), r.ifname.clone())
}

/// Removes the rules of `attachment` for the addresses no other live attachment holds.
fn remove_rules(
    store: &Store,
    backend: Backend,
    zone: &str,
    network: &str,
    attachment: &ForwardAccept,
    skip: &HashSet<(String, String, String)>,
) -> Result<(), CniError> {
    let held = store.held_addresses(skip).map_err(|e| internal(format!("read the firewall plugin's store: {e}")))?;
    let free: Vec<IpAddr> = attachment.addresses.iter().copied().filter(|a| !held.contains(a)).collect();
    if free.len() < attachment.addresses.len() {
        log::info!("keeping the rules of addresses another attachment holds");
    }
    // The nftables rules name their attachment, so another holder of an address keeps its own.
    if free.is_empty() && backend != Backend::Nftables {
        return Ok(());
    }
    let b = backends::open(backend, zone, network).map_err(internal)?;
    b.remove(attachment, &free).map_err(|e| internal(format!("remove the {} rules: {e}", backend.as_str())))
}

impl Plugin for FirewallPlugin {
    fn about(&self) -> String {
        crate::about("firewall")
    }

    fn supported_versions(&self) -> &'static [&'static str] {
        config::VERSIONS
    }

    fn add(&self, args: &CmdArgs) -> Result<CniResult, CniError> {
        let conf = config::parse(args)?;
        let prev = args.prev_result()?.ok_or_else(|| internal(MISSING_PREV))?;
        let attachment = attachment_of(args, &conf, &prev)?;
        let backend = backends::resolve(conf.backend).map_err(internal)?;
        let b = backends::open(backend, &conf.firewalld_zone, &conf.network).map_err(internal)?;
        if attachment.addresses.is_empty() {
            // Nothing to accept and, as in the reference, no family to isolate in.
            return Ok(prev);
        }
        let store = open_store(&conf.data_dir)?;
        let previous = store
            .get(&conf.network, &args.container_id, &args.ifname)
            .map_err(|e| internal(format!("read the firewall plugin's store: {e}")))?;
        // The record first: an ADD that dies after its rules went in still leaves what DEL needs.
        store
            .put(&conf.network, &record_of(&attachment, backend, &conf))
            .map_err(|e| internal(format!("write the firewall plugin's store: {e}")))?;
        if let Err(e) = b.add(&attachment) {
            let undone = match &previous {
                Some(r) => store.put(&conf.network, r),
                None => store.remove(&conf.network, &args.container_id, &args.ifname),
            };
            if let Err(u) = undone {
                log::warn!("rolling back the firewall plugin's store: {u}");
            }
            return Err(internal(format!("add the {} rules: {e}", backend.as_str())));
        }
        Ok(prev)
    }

    fn del(&self, args: &CmdArgs) -> Result<(), CniError> {
        let (network, data_dir) = config::store_location(args)?;
        let conf = config::parse(args);
        let store = open_store(&data_dir)?;
        let record = store
            .get(&network, &args.container_id, &args.ifname)
            .map_err(|e| internal(format!("read the firewall plugin's store: {e}")))?;
        let prev = args.prev_result().ok().flatten();
        let (mut attachment, backend, zone) = match (&record, &conf) {
            (Some(r), _) => {
                let backend = Backend::parse(&r.backend)
                    .ok_or_else(|| internal(format!("the store names an unknown backend {:?}", r.backend)))?;
                (attachment_from_record(r)?, backend, r.firewalld_zone.clone())
            }
            // ADD refuses such a configuration, so nothing of ours can be installed under it:
            // a DEL that failed here would only keep the runtime from ever finishing.
            (None, Err(e)) => {
                log::warn!("DEL with an invalid configuration and no record: nothing to remove ({e})");
                return Ok(());
            }
            // Added by another suite, or never: what prevResult names, as the reference removes.
            (None, Ok(conf)) => {
                let Some(prev) = &prev else { return Ok(()) };
                let a = ForwardAccept {
                    container_id: args.container_id.clone(),
                    ifname: args.ifname.clone(),
                    addresses: Vec::new(),
                    admin_chain: conf.admin_chain.clone(),
                    ingress: conf.ingress,
                    // Only a name ADD would have accepted can name rules of ours.
                    bridge: prev.interfaces.first().map(|i| i.name.clone()).filter(|b| check_bridge(b).is_ok()),
                };
                (a, backends::resolve(conf.backend).map_err(internal)?, conf.firewalld_zone.clone())
            }
        };
        if let Some(prev) = &prev {
            for a in addresses_of(prev) {
                if !attachment.addresses.contains(&a) {
                    attachment.addresses.push(a);
                }
            }
        }
        let me: HashSet<_> = [(network.clone(), args.container_id.clone(), args.ifname.clone())].into();
        remove_rules(&store, backend, &zone, &network, &attachment, &me)?;
        store
            .remove(&network, &args.container_id, &args.ifname)
            .map_err(|e| internal(format!("remove from the firewall plugin's store: {e}")))
    }

    fn check(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = config::parse(args)?;
        let prev = args.prev_result()?.ok_or_else(|| internal(MISSING_PREV))?;
        let attachment = attachment_of(args, &conf, &prev)?;
        let backend = backends::resolve(conf.backend).map_err(internal)?;
        let b = backends::open(backend, &conf.firewalld_zone, &conf.network).map_err(internal)?;
        b.check(&attachment).map_err(internal)
    }

    fn gc(&self, args: &CmdArgs) -> Result<(), CniError> {
        let net = args.net_conf()?;
        // Without a list from the runtime nothing can be known to be stale.
        let Some(valid) = net.gc_valid_attachments() else { return Ok(()) };
        let (network, data_dir) = config::store_location(args)?;
        let valid: HashSet<(&str, &str)> = valid.iter().map(|a| (a.container_id.as_str(), a.ifname.as_str())).collect();
        let store = open_store(&data_dir)?;
        let records = store.list(&network).map_err(|e| internal(format!("read the firewall plugin's store: {e}")))?;
        let stale: Vec<&Record> =
            records.iter().filter(|r| !valid.contains(&(r.container_id.as_str(), r.ifname.as_str()))).collect();
        let skip: HashSet<_> = stale.iter().map(|r| key(&network, r)).collect();
        let mut errors = Vec::new();
        for r in stale {
            let Some(backend) = Backend::parse(&r.backend) else {
                errors.push(format!("{}/{}: unknown backend {:?}", r.container_id, r.ifname, r.backend));
                continue;
            };
            let removed = attachment_from_record(r)
                .and_then(|a| remove_rules(&store, backend, &r.firewalld_zone, &network, &a, &skip))
                .and_then(|()| store.remove(&network, &r.container_id, &r.ifname).map_err(internal));
            if let Err(e) = removed {
                errors.push(format!("{}/{}: {e}", r.container_id, r.ifname));
            }
        }
        // The nftables rules name their network and attachment, so GC also finds those no record
        // names (a store removed while rules stayed).
        if let Ok(Backend::Nftables) = config::parse(args).and_then(|c| backends::resolve(c.backend).map_err(internal))
        {
            let keep: Vec<(String, String)> =
                valid.iter().map(|(id, ifname)| (id.to_string(), ifname.to_string())).collect();
            if let Err(e) = crate::firewall::nftables::forward::NftForward::new(&network).gc(&keep) {
                errors.push(format!("nftables: {e}"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(internal(format!("firewall GC: {}", errors.join("; "))))
        }
    }

    fn status(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = config::parse(args)?;
        let unusable = |e: crate::firewall::FirewallError| {
            CniError::new(PLUGIN_NOT_AVAILABLE, format!("firewall: no usable backend: {e}"))
        };
        let backend = backends::resolve(conf.backend).map_err(unusable)?;
        let b = backends::open(backend, &conf.firewalld_zone, &conf.network).map_err(unusable)?;
        b.usable().map_err(|e| {
            CniError::new(
                PLUGIN_NOT_AVAILABLE,
                format!("firewall: the {} backend is not usable: {e}", backend.as_str()),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(config: serde_json::Value) -> CmdArgs {
        CmdArgs {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            config,
            cni_version: "1.0.0".into(),
            ..Default::default()
        }
    }

    fn prev(interfaces: serde_json::Value) -> CniResult {
        CniResult::parse(
            json!({"cniVersion": "1.0.0", "interfaces": interfaces,
                   "ips": [{"address": "10.88.0.2/16"}, {"address": "fd00::2/64"}, {"address": "10.88.0.2/16"}]}),
            "1.0.0",
        )
        .unwrap()
    }

    #[test]
    fn builds_the_attachment_from_prev_result() {
        let a = args(json!({"name": "n", "ingressPolicy": "same-bridge"}));
        let conf = config::parse(&a).unwrap();
        let got = attachment_of(&a, &conf, &prev(json!([{"name": "cni0"}, {"name": "eth0"}]))).unwrap();
        assert_eq!(got.addresses, ["10.88.0.2".parse::<IpAddr>().unwrap(), "fd00::2".parse().unwrap()]);
        assert_eq!(got.bridge.as_deref(), Some("cni0"));
        let e = attachment_of(&a, &conf, &prev(json!([]))).unwrap_err();
        assert!(e.msg.contains("interface needs to be set for ingress policy \"same-bridge\""), "{e}");
        let e = attachment_of(&a, &conf, &prev(json!([{"name": "x y"}]))).unwrap_err();
        assert_eq!(e.code, 7, "{e}");
        let open = args(json!({"name": "n"}));
        let got = attachment_of(&open, &config::parse(&open).unwrap(), &prev(json!([]))).unwrap();
        assert_eq!(got.bridge, None);
    }

    #[test]
    fn records_round_trip() {
        let a = args(json!({"name": "n", "ingressPolicy": "isolated"}));
        let conf = config::parse(&a).unwrap();
        let att = attachment_of(&a, &conf, &prev(json!([{"name": "cni0"}]))).unwrap();
        assert_eq!(attachment_from_record(&record_of(&att, Backend::Iptables, &conf)).unwrap(), att);
    }
}
