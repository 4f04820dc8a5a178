//! `portmap`: publishes container ports on the host. A chained plugin: it reads the container's
//! addresses from `prevResult` (bridge, ptp) and passes that result through unchanged.
//!
//! ADD installs, per address family of the container, the DNAT rules of the iptables backend (the
//! reference's chains, one `iptables-restore` per family) or the nftables backend, then deletes
//! stale UDP conntrack entries of the mapped ports and, for IPv4 with `snat`, sets `route_localnet`
//! on the host interface towards the container so that 127.0.0.1 mappings can be forwarded.
//!
//! Differences from the reference v1.1.1 (all deliberate): DEL finds the rules by chain name even
//! when the runtime does not send `portMappings` again, and tolerates invalid mappings; CHECK checks
//! only the families the container has; GC removes iptables rules of attachments no longer valid;
//! STATUS reports whether the backend's tools work; ports above 65535, unknown protocols and
//! malformed host IPs are rejected up front; the protocol is lowercased; a failed iptables ADD
//! leaves nothing behind (one atomic batch). nftables rules carry only the container ID (the
//! reference's comment), so DEL removes them only when the nftables backend is configured, and GC
//! cannot attribute them to a network and leaves them to DEL.

mod config;
mod conntrack;

pub use config::{container_addresses, parse_mapping, PortmapConf, DEFAULT_MARK_BIT};

use crate::errors::{internal, Ctx};
use crate::firewall::{self, Family, PortForward, Protocol};
use crate::netlink::{Handle, Ipv4Conf, Link};
use crate::sysctl;
use cni_types::error::PLUGIN_NOT_AVAILABLE;
use cni_types::{CmdArgs, CniError, CniResult, Plugin};
use std::collections::HashSet;
use std::net::IpAddr;

/// The portmap plugin.
pub struct PortmapPlugin;

fn family_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "ipv4",
        Family::V6 => "ipv6",
    }
}

/// Deletes the UDP conntrack entries of the mapped UDP host ports, as the reference does after the
/// rules are in place; failures are only logged, the forwarding works for new flows regardless.
fn flush_udp_conntrack(family: Family, forwards: &[PortForward], ip: IpAddr) {
    let mut ports: Vec<u16> = forwards.iter().filter(|f| f.protocol == Protocol::Udp).map(|f| f.host_port).collect();
    ports.sort_unstable();
    ports.dedup();
    match conntrack::delete_udp_entries(family, &ports) {
        Ok(0) => {}
        Ok(n) => log::debug!("deleted {n} stale UDP conntrack entries for {ip}"),
        Err(e) => log::warn!("failed to delete stale UDP conntrack entries for {ip}: {e}"),
    }
}

/// `sysctl net.ipv4.conf.<if>.route_localnet=1` on the host interface `ip route get <container>`
/// names, so that connections from 127.0.0.1, once DNATed, may leave through it. The reference
/// skips the step when the lookup fails; so does this.
fn enable_route_localnet(ip: IpAddr) -> Result<(), CniError> {
    let lookup = || -> std::io::Result<Option<(Handle, Link)>> {
        let mut host = Handle::new()?;
        let Some(index) = host.route_get(ip)? else { return Ok(None) };
        Ok(host.link_by_index(index)?.map(|l| (host, l)))
    };
    let (mut host, link) = match lookup() {
        Ok(Some(found)) => found,
        Ok(None) => return Ok(()),
        Err(e) => {
            log::debug!("no route to {ip}, route_localnet left alone: {e}");
            return Ok(());
        }
    };
    // The link reports the switch, and rtnetlink sets it without a /proc/sys/net path lookup
    // (which costs more with every network namespace on the machine); the sysctl stays the
    // fallback.
    if link.ipv4_route_localnet == Some(1) {
        return Ok(());
    }
    match host.enable_ipv4_conf(link.index, Ipv4Conf::RouteLocalnet) {
        Ok(()) => Ok(()),
        Err(e) => {
            log::debug!("route_localnet over rtnetlink: {e}; writing the sysctl");
            sysctl::ensure(&format!("net/ipv4/conf/{}/route_localnet", link.name), "1")
                .ctx(|| "unable to enable route_localnet")
        }
    }
}

impl Plugin for PortmapPlugin {
    fn about(&self) -> String {
        crate::about("portmap")
    }

    fn add(&self, args: &CmdArgs) -> Result<CniResult, CniError> {
        let conf = PortmapConf::load(args).map_err(|e| e.context("failed to parse config"))?;
        let prev = args.prev_result()?.ok_or_else(|| internal("must be called as chained plugin"))?;
        if conf.forwards.is_empty() {
            return Ok(prev);
        }
        let t = conf.portmap(&args.container_id);
        for address in container_addresses(&prev, &args.ifname) {
            let family = Family::of(&address.ip());
            firewall::setup_portmap(conf.backend, &t, &address)
                .ctx(|| format!("unable to set up {} port forwarding", family_name(family)))?;
            flush_udp_conntrack(family, &conf.forwards, address.ip());
            if family == Family::V4 && conf.snat {
                enable_route_localnet(address.ip())?;
            }
        }
        Ok(prev)
    }

    fn del(&self, args: &CmdArgs) -> Result<(), CniError> {
        let net = args.net_conf()?;
        // DEL needs neither the mappings nor the addresses, so a configuration ADD rejected must
        // not keep the runtime from deleting: the iptables rules are found by chain name alone.
        let backend = match PortmapConf::load_options(args) {
            Ok(conf) => Some(conf.backend),
            Err(e) => {
                log::warn!("DEL with an invalid configuration ({e}); removing iptables rules only");
                None
            }
        };
        let present: Vec<Family> = match args.prev_result() {
            Ok(Some(prev)) => container_addresses(&prev, &args.ifname).iter().map(|a| Family::of(&a.ip())).collect(),
            _ => Vec::new(),
        };
        // iptables always: the chain name covers network and container ID, so this never touches
        // another attachment, and it cleans up after a backend switch. nftables only when
        // configured: its rules carry just the container ID, which another network of the same
        // container may share.
        Ok(firewall::teardown_portmap(backend, &net.name, &args.container_id, &present)?)
    }

    fn check(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = PortmapConf::load(args)?;
        let prev = args.prev_result()?.ok_or_else(|| internal("Required prevResult missing"))?;
        if conf.forwards.is_empty() {
            return Ok(());
        }
        let t = conf.portmap(&args.container_id);
        for address in container_addresses(&prev, &args.ifname) {
            firewall::check_portmap(conf.backend, &t, &address)?;
        }
        Ok(())
    }

    fn gc(&self, args: &CmdArgs) -> Result<(), CniError> {
        let net = args.net_conf()?;
        // Without a list from the runtime nothing can be known to be stale.
        let Some(valid) = net.gc_valid_attachments() else { return Ok(()) };
        if matches!(PortmapConf::load_options(args), Ok(c) if c.backend == firewall::Backend::Nftables) {
            log::info!("nftables port forwards name only the container ID, not the network; GC leaves them to DEL");
        }
        let ids: HashSet<&str> = valid.iter().map(|a| a.container_id.as_str()).collect();
        firewall::gc_portmap(&net.name, &ids).ctx(|| "port forwarding GC")
    }

    fn status(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = PortmapConf::load_options(args)?;
        let name = conf.backend.name();
        firewall::portmap_usable(conf.backend)
            .map_err(|e| CniError::new(PLUGIN_NOT_AVAILABLE, format!("portmap: the {name} backend is not usable: {e}")))
    }
}
