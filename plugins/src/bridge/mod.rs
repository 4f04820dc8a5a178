//! `bridge`: a Linux bridge on the host, a veth pair per container, addresses from IPAM.
//!
//! The result keeps the reference's interface order (bridge, host veth, container
//! interface) because chained plugins (portmap, firewall, tuning, bandwidth) find the
//! interfaces by position and sandbox. Every step of ADD that creates something records how to
//! undo it; a failure undoes them in reverse before the error is returned. DEL never stops at
//! the first error and treats anything already gone as done.

mod config;

pub use config::BridgeConf;

use crate::firewall::{self, Backend, MasqTarget};
use crate::netlink::{self, Handle, Ipv4Conf, Link, RouteSpec, VethSpec};
use crate::ns::{NetNs, NsError};
use crate::sysctl;
use cni_types::skel::Command;
use cni_types::version::Version;
use cni_types::{invoke, CmdArgs, CniError, CniResult, Interface, IpConfig, Plugin, Route};
use ipnetwork::IpNetwork;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

/// The bridge plugin.
pub struct Bridge;

/// How many random host-side veth names to try before giving up.
const VETH_NAME_TRIES: usize = 10;

fn internal(e: impl std::fmt::Display) -> CniError {
    CniError::internal(e)
}

fn ctx<T, E: std::fmt::Display>(r: Result<T, E>, what: impl FnOnce() -> String) -> Result<T, CniError> {
    r.map_err(|e| CniError::internal(format!("{}: {e}", what())))
}

/// This attachment's masquerade target.
fn masq_target<'a>(conf: &'a BridgeConf, args: &'a CmdArgs, addresses: &'a [IpNetwork]) -> MasqTarget<'a> {
    MasqTarget { network: &conf.network, container_id: &args.container_id, ifname: &args.ifname, addresses }
}

/// Success, or every collected error in one (DEL and GC report all they could not do).
fn all_or_errors(errors: Vec<String>) -> Result<(), CniError> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(internal(errors.join("; ")))
    }
}

fn is_eexist(e: &io::Error) -> bool {
    e.raw_os_error() == Some(nix::libc::EEXIST)
}

/// A host-side veth name like the reference's: `veth` and 8 random hex digits.
fn random_veth_name() -> io::Result<String> {
    use std::io::Read;
    let mut b = [0u8; 4];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(format!("veth{:02x}{:02x}{:02x}{:02x}", b[0], b[1], b[2], b[3]))
}

/// A netlink socket inside `ns`.
fn handle_in(ns: &NetNs) -> Result<Handle, CniError> {
    ns.run(Handle::new)
        .map_err(internal)?
        .map_err(|e| internal(format!("netlink socket in {}: {e}", ns.path().display())))
}

/// Helpers started at the beginning of ADD so their start-up overlaps the netlink work: the IPAM
/// plugin allocates and `iptables-restore` loads its libraries while the veth pair is made.
#[derive(Default)]
struct Started {
    ipam: Option<invoke::PendingAdd>,
    restore: Option<firewall::PendingRestore>,
}

/// Something ADD created, and so must undo if a later step fails.
enum Undo {
    Veth(u32),
    SpoofCheck,
    Ipam,
    IpMasq(Vec<IpNetwork>),
}

/// `ensureBridge`: create it (tolerating a concurrent creator), check it is a bridge, up.
fn ensure_bridge(host: &mut Handle, conf: &BridgeConf) -> Result<Link, CniError> {
    let name = &conf.bridge;
    let lookup = |h: &mut Handle| ctx(h.link_by_name(name), || format!("look up bridge {name:?}"));
    let link = match lookup(host)? {
        Some(l) => l,
        None => {
            match host.create_bridge(name, conf.mtu, conf.uses_vlans()) {
                Ok(()) => {}
                Err(e) if is_eexist(&e) => {}
                Err(e) => return Err(internal(format!("failed to create bridge {name:?}: {e}"))),
            }
            let link = lookup(host)?.ok_or_else(|| internal(format!("bridge {name:?} vanished after creation")))?;
            // A bridge whose address was never set takes its lowest port's MAC and changes it as
            // ports come and go, which breaks neighbours' ARP caches and CHECK; pin it at birth.
            if !link.mac.is_empty() {
                ctx(host.set_link_mac(link.index, &link.mac), || format!("pin the MAC of {name}"))?;
            }
            link
        }
    };
    if link.kind != "bridge" {
        return Err(internal(format!("failed to create bridge {name:?}: {name:?} already exists but is not a bridge")));
    }
    if conf.promisc_mode && !link.promisc {
        ctx(host.set_link_promisc(link.index, true), || format!("set {name} promisc"))?;
    }
    // A bridge must not autoconfigure from router advertisements of its own containers.
    if link.ipv6_accept_ra != Some(0) {
        let _ = sysctl::ensure_if_present(&format!("net/ipv6/conf/{name}/accept_ra"), "0");
    }
    if !link.up {
        ctx(host.set_link_up(link.index, true), || format!("set {name} up"))?;
    }
    Ok(link)
}

/// Creates the veth pair, peer born in the container as `ifname`, host end on the bridge.
fn create_veth_pair(
    host: &mut Handle,
    cont: &mut Handle,
    ns: &NetNs,
    conf: &BridgeConf,
    args: &CmdArgs,
    bridge: &Link,
) -> Result<Link, CniError> {
    for _ in 0..VETH_NAME_TRIES {
        let name = random_veth_name().map_err(internal)?;
        let spec = VethSpec {
            host_name: &name,
            peer_name: &args.ifname,
            mtu: conf.mtu,
            peer_mac: conf.mac,
            master: Some(bridge.index),
        };
        match host.create_veth(&spec, ns.file().as_fd()) {
            Ok(()) => {
                return ctx(host.link_by_name(&name), || format!("look up {name}"))?
                    .ok_or_else(|| internal(format!("veth {name} vanished after creation")));
            }
            Err(e) if is_eexist(&e) => {
                if ctx(cont.link_by_name(&args.ifname), || format!("look up {}", args.ifname))?.is_some() {
                    return Err(internal(format!("container veth name provided ({}) already exists", args.ifname)));
                }
                // The random host name collided; try another.
            }
            // The kernel numbers bridge ports in 10 bits: 1023 ports at most.
            Err(e) if e.raw_os_error() == Some(nix::libc::EXFULL) => {
                return Err(internal(format!(
                    "failed to create veth pair {name}/{}: bridge {:?} already has the kernel's maximum of 1023 ports",
                    args.ifname, bridge.name
                )))
            }
            Err(e) => {
                return Err(internal(format!(
                    "failed to create veth pair {name}/{} in {}: {e}",
                    args.ifname,
                    ns.path().display()
                )))
            }
        }
    }
    Err(internal("failed to find a free host veth name"))
}

/// Access VLAN as PVID untagged, trunks tagged; the default VLAN 1 goes unless preserved.
fn configure_port_vlans(host: &mut Handle, index: u32, conf: &BridgeConf) -> Result<(), CniError> {
    if !conf.uses_vlans() {
        return Ok(());
    }
    if !conf.preserve_default_vlan {
        ctx(host.bridge_port_vlan(index, 1, false, false), || "remove default VLAN 1 from port".into())?;
    }
    // With trunks and no access VLAN the native VLAN is 1, as in the reference.
    let native = if conf.vlan != 0 { conf.vlan } else { 1 };
    ctx(host.bridge_port_vlan(index, native, true, true), || format!("add VLAN {native} to port"))?;
    for &vid in conf.vlan_trunk.iter().filter(|v| **v != native) {
        ctx(host.bridge_port_vlan(index, vid, false, true), || format!("add trunk VLAN {vid} to port"))?;
    }
    Ok(())
}

/// The gateway of the first address of each family that has one.
fn family_gateways(ips: &[IpConfig]) -> (Option<IpAddr>, Option<IpAddr>) {
    let gw = |v4: bool| ips.iter().filter(|i| i.address.is_ipv4() == v4).find_map(|i| i.gateway);
    (gw(true), gw(false))
}

/// The first address after the network address (`10.1.0.0/24` → `10.1.0.1`).
fn first_host(net: &IpNetwork) -> IpAddr {
    match net.network() {
        IpAddr::V4(a) => IpAddr::V4(u32::from(a).wrapping_add(1).into()),
        IpAddr::V6(a) => IpAddr::V6(u128::from(a).wrapping_add(1).into()),
    }
}

/// Gateways when the bridge is the gateway, and the default routes `isDefaultGateway` adds.
fn calc_gateways(conf: &BridgeConf, result: &mut CniResult) -> Vec<IpNetwork> {
    let mut bridge_addrs: Vec<IpNetwork> = Vec::new();
    if !conf.is_gateway {
        return bridge_addrs;
    }
    let mut default_done = [false, false];
    for ip in result.ips.iter_mut() {
        let gw = *ip.gateway.get_or_insert_with(|| first_host(&ip.address));
        if let Ok(net) = IpNetwork::new(gw, ip.address.prefix()) {
            if !bridge_addrs.contains(&net) {
                bridge_addrs.push(net);
            }
        }
        let fam = usize::from(!ip.address.is_ipv4());
        if conf.is_default_gateway && !default_done[fam] {
            default_done[fam] = true;
            let any = if ip.address.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
            let Ok(dst) = cni_types::net::parse_cidr(any) else { continue };
            if !result.routes.iter().any(|r| r.dst == dst && r.gw.is_some()) {
                result.routes.push(Route::new(dst, Some(gw)));
            }
        }
    }
    bridge_addrs
}

/// Puts a gateway address on the bridge unless it is there, and says whether this call added it;
/// another IPv4 address there is an error unless `forceAddress` (several networks may not share
/// one bridge with different IPv4 gateways).
fn ensure_bridge_addr(host: &mut Handle, bridge: &Link, want: &IpNetwork, force: bool) -> Result<bool, CniError> {
    let existing = ctx(host.addresses(Some(bridge.index)), || format!("list addresses of {}", bridge.name))?;
    for a in existing.iter().filter(|a| a.net.is_ipv4() == want.is_ipv4()) {
        if a.net == *want {
            return Ok(false);
        }
        let conflicts = want.is_ipv4() || a.net.contains(want.ip()) || want.contains(a.net.ip());
        if !conflicts {
            continue;
        }
        if !force {
            return Err(internal(format!("{:?} already has an IP address different from {want}", bridge.name)));
        }
        ctx(host.del_address(bridge.index, &a.net), || format!("remove {} from {}", a.net, bridge.name))?;
    }
    match host.add_address(bridge.index, want) {
        Ok(()) => Ok(true),
        Err(e) if is_eexist(&e) => Ok(false),
        Err(e) => Err(internal(format!("failed to set bridge addr {want} on {}: {e}", bridge.name))),
    }
}

/// Sysctls, addresses, link up and routes inside the container (reference `ConfigureIface`).
fn configure_container(
    ns: &NetNs,
    cont: &mut Handle,
    link: &Link,
    args: &CmdArgs,
    conf: &BridgeConf,
    result: &CniResult,
) -> Result<(), CniError> {
    let ifname = &args.ifname;
    let index = link.index;
    let has_v6 = result.ips.iter().any(|i| !i.address.is_ipv4());
    let has_v4 = result.ips.iter().any(|i| i.address.is_ipv4());
    // What the link already reports (its devconf comes with it) is not written again, and
    // arp_notify goes over rtnetlink: each /proc/sys/net path costs more with every namespace.
    let arp_notify_done = !has_v4
        || link.ipv4_arp_notify == Some(1)
        || match cont.enable_ipv4_conf(index, Ipv4Conf::ArpNotify) {
            Ok(()) => true,
            Err(e) => {
                log::debug!("arp_notify over rtnetlink: {e}; writing the sysctl");
                false
            }
        };
    ns.run(|| -> io::Result<()> {
        if has_v6 {
            sysctl::ensure_if_present("net/ipv6/conf/lo/disable_ipv6", "0")?;
            sysctl::ensure_if_present(&format!("net/ipv6/conf/{ifname}/disable_ipv6"), "0")?;
            sysctl::ensure_if_present(&format!("net/ipv6/conf/{ifname}/keep_addr_on_down"), "1")?;
        }
        // DAD costs seconds per container and the bridge owns the subnet, so it is off unless asked.
        if conf.enable_dad {
            sysctl::ensure_if_present(&format!("net/ipv6/conf/{ifname}/enhanced_dad"), "1")?;
            sysctl::ensure_if_present(&format!("net/ipv6/conf/{ifname}/accept_dad"), "1")?;
        } else if link.ipv6_accept_dad != Some(0) {
            sysctl::ensure_if_present(&format!("net/ipv6/conf/{ifname}/accept_dad"), "0")?;
        }
        if !arp_notify_done {
            sysctl::ensure_if_present(&format!("net/ipv4/conf/{ifname}/arp_notify"), "1")?;
        }
        Ok(())
    })
    .map_err(internal)?
    .map_err(|e| internal(format!("container sysctls for {ifname}: {e}")))?;
    // The last sysctl of an ADD.
    sysctl::release();

    for ip in &result.ips {
        match cont.add_address(index, &ip.address) {
            Err(e) if !is_eexist(&e) => {
                return Err(internal(format!("failed to add IP addr {} to {ifname}: {e}", ip.address)))
            }
            _ => {}
        }
    }
    ctx(cont.set_link_up(index, true), || format!("failed to set {ifname} up"))?;
    if has_v6 && conf.enable_dad {
        wait_for_dad(cont, index)?;
    }
    let (gw4, gw6) = family_gateways(&result.ips);
    for r in &result.routes {
        let gw = r.gw.or(if r.dst.is_ipv4() { gw4 } else { gw6 });
        let spec = RouteSpec {
            dst: r.dst,
            gw,
            oif: Some(index),
            priority: r.priority,
            table: r.table,
            scope: r.scope,
            mtu: r.mtu,
            advmss: r.advmss,
        };
        match cont.add_route(&spec) {
            Err(e) if !is_eexist(&e) => {
                let via = gw.map(|g| format!(" via {g}")).unwrap_or_default();
                return Err(internal(format!("failed to add route '{}{via} dev {ifname}': {e}", r.dst)));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Waits (at most 5 s) until no address on the link is still tentative.
fn wait_for_dad(cont: &mut Handle, index: u32) -> Result<(), CniError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let addrs = ctx(cont.addresses(Some(index)), || "list container addresses".into())?;
        if !addrs.iter().any(|a| a.tentative) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(internal("IPv6 duplicate address detection did not finish within 5s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for the host end to reach operstate UP, as the reference does (0, 50, 500, 1000, 1000 ms).
/// Returns the link as last read.
fn wait_port_up(host: &mut Handle, index: u32) -> Result<Link, CniError> {
    use netlink_packet_route::link::State;
    let mut last = None;
    for delay in [0u64, 50, 500, 1000, 1000] {
        std::thread::sleep(Duration::from_millis(delay));
        let link = ctx(host.link_by_index(index), || "look up host veth".into())?;
        last = link.as_ref().and_then(|l| l.oper_state);
        if let Some(l) = link.filter(|_| last == Some(State::Up)) {
            return Ok(l);
        }
    }
    Err(internal(format!("bridge port in error state: {:?}", last.unwrap_or(State::Unknown))))
}

fn masq_backend(conf: &BridgeConf) -> Result<Backend, CniError> {
    match &conf.ip_masq_backend {
        Some(b) => Backend::parse(b).map_err(CniError::invalid_config),
        None => Ok(firewall::default_backend()),
    }
}

impl Bridge {
    fn add_steps(
        &self,
        args: &CmdArgs,
        conf: &BridgeConf,
        ns: &NetNs,
        host: &mut Handle,
        undo: &mut Vec<Undo>,
        started: &mut Started,
    ) -> Result<CniResult, CniError> {
        let t0 = Instant::now();
        let mark = |what: &str| log::debug!("{what} after {:?}", t0.elapsed());
        let bridge = ensure_bridge(host, conf)?;
        mark("bridge ensured");
        let mut cont = handle_in(ns)?;
        let veth = create_veth_pair(host, &mut cont, ns, conf, args, &bridge)?;
        undo.push(Undo::Veth(veth.index));
        let cont_link = ctx(cont.link_by_name(&args.ifname), || format!("look up {}", args.ifname))?
            .ok_or_else(|| internal(format!("{} vanished from {}", args.ifname, ns.path().display())))?;

        if veth.ipv6_accept_ra != Some(0) {
            let _ = sysctl::ensure_if_present(&format!("net/ipv6/conf/{}/accept_ra", veth.name), "0");
        }
        ctx(host.set_link_up(veth.index, true), || format!("failed to set {} up", veth.name))?;
        if conf.hairpin_mode || conf.port_isolation {
            ctx(host.set_bridge_port(veth.index, conf.hairpin_mode, conf.port_isolation), || {
                format!("failed to set hairpin/isolation on {}", veth.name)
            })?;
        }
        configure_port_vlans(host, veth.index, conf)?;
        mark("veth pair ready");

        if conf.mac_spoof_check {
            ctx(
                firewall::setup_spoofcheck(&veth.name, &args.container_id, &args.ifname, &cont_link.mac_string()),
                || "failed to set up MAC spoof check".into(),
            )?;
            undo.push(Undo::SpoofCheck);
        }

        let mut result = CniResult::default();
        if conf.is_layer3() {
            let pending = started.ipam.take().ok_or_else(|| internal("IPAM was not started"))?;
            let ipam = pending.wait()?;
            mark("IPAM done");
            if ipam.ips.is_empty() {
                return Err(internal("IPAM plugin returned missing IP config"));
            }
            result.ips = ipam.ips.into_iter().map(|ip| IpConfig { interface: Some(2), ..ip }).collect();
            result.routes = ipam.routes;
            result.dns = ipam.dns;
            let bridge_addrs = calc_gateways(conf, &mut result);
            // The masquerade batch loads while the container is configured; dropping `masq` on an
            // error below waits for it, so the rollback sees whatever it installed.
            let masq_addrs: Vec<IpNetwork> = result.ips.iter().map(|i| i.address).collect();
            let masq_target = masq_target(conf, args, &masq_addrs);
            let masq = if conf.ip_masq {
                undo.push(Undo::IpMasq(masq_addrs.clone()));
                Some(firewall::begin_ipmasq(masq_backend(conf)?, masq_target, started.restore.take()))
            } else {
                None
            };
            // The bridge side first: once the container's interface is up, the kernel's own work
            // for the new link (linkwatch, IPv6 autoconfiguration) holds the RTNL for a while.
            if conf.is_gateway {
                let mut added = false;
                for net in &bridge_addrs {
                    added |= ensure_bridge_addr(host, &bridge, net, conf.force_address)?;
                }
                // Pin the bridge MAC so it stops following the lowest port MAC as ports come and go,
                // when the gateway address goes on, as the reference does. Not on every ADD: setting
                // a MAC, even the same one, makes the kernel flush the bridge's ARP and NDP entries.
                if added {
                    let current = ctx(host.link_by_index(bridge.index), || "look up bridge".into())?;
                    if let Some(l) = current {
                        ctx(host.set_link_mac(bridge.index, &l.mac), || "pin bridge MAC".into())?;
                    }
                }
                let v4 = result.ips.iter().any(|i| i.address.is_ipv4());
                let v6 = result.ips.iter().any(|i| !i.address.is_ipv4());
                if v4 && !matches!(netlink::all_forwarding(false), Ok(Some(true))) {
                    ctx(sysctl::ensure("net/ipv4/ip_forward", "1"), || "enable IPv4 forwarding".into())?;
                }
                if v6 && !matches!(netlink::all_forwarding(true), Ok(Some(true))) {
                    ctx(sysctl::ensure("net/ipv6/conf/all/forwarding", "1"), || "enable IPv6 forwarding".into())?;
                }
            }
            configure_container(ns, &mut cont, &cont_link, args, conf, &result)?;
            mark("container configured");
            if let Some(masq) = masq {
                ctx(masq.finish(), || "failed to set up IP masquerading".into())?;
                mark("masquerade installed");
            }
        } else {
            // A layer-2 ADD writes no sysctl after the host veth's.
            sysctl::release();
            if !conf.disable_container_interface {
                ctx(cont.set_link_up(cont_link.index, true), || format!("failed to set {} up", args.ifname))?;
            }
        }
        let port = if conf.disable_container_interface {
            None
        } else {
            let port = wait_port_up(host, veth.index)?;
            mark("port up");
            Some(port)
        };

        // Enslaving can change MACs (plugins#805): report what the bridge and the host veth have
        // now (the port was just read). The container's interface keeps the MAC it was made with.
        let mac_of = |h: &mut Handle, index: u32| -> Result<String, CniError> {
            Ok(ctx(h.link_by_index(index), || "refresh link".into())?.map(|l| l.mac_string()).unwrap_or_default())
        };
        let veth_mac = match port {
            Some(l) => l.mac_string(),
            None => mac_of(host, veth.index)?,
        };
        result.interfaces = vec![
            Interface { name: bridge.name.clone(), mac: mac_of(host, bridge.index)?, ..Default::default() },
            Interface { name: veth.name.clone(), mac: veth_mac, ..Default::default() },
            Interface {
                name: args.ifname.clone(),
                mac: cont_link.mac_string(),
                sandbox: args.netns.clone(),
                ..Default::default()
            },
        ];
        if !conf.dns.is_empty() {
            result.dns = conf.dns.clone();
        }
        result.cni_version = args.cni_version.clone();
        Ok(result)
    }

    fn rollback(&self, args: &CmdArgs, conf: &BridgeConf, host: &mut Handle, undo: Vec<Undo>) {
        for step in undo.into_iter().rev() {
            let r = match step {
                Undo::IpMasq(addrs) => firewall::teardown_ipmasq(&masq_target(conf, args, &addrs)).map_err(internal),
                Undo::Ipam => invoke::delegate(&conf.ipam_type, Command::Del, args),
                Undo::SpoofCheck => firewall::teardown_spoofcheck(&args.container_id, &args.ifname).map_err(internal),
                Undo::Veth(index) => host.del_link(index).map_err(internal),
            };
            if let Err(e) = r {
                log::error!("rollback after failed ADD: {e}");
            }
        }
    }
}

impl Plugin for Bridge {
    fn about(&self) -> String {
        crate::about("bridge")
    }

    fn add(&self, args: &CmdArgs) -> Result<CniResult, CniError> {
        let conf = BridgeConf::load(args)?;
        // A layer-2 result has no address to express in 0.1.0/0.2.0; say so before creating anything.
        if !conf.is_layer3() && Version::parse(&args.cni_version)? < Version(0, 3, 0) {
            return Err(internal("cannot convert: no valid IP addresses"));
        }
        if conf.ip_masq {
            masq_backend(&conf)?;
        }
        if conf.uses_vlans() && conf.is_gateway {
            return Err(CniError::new(
                cni_types::error::UNSUPPORTED_FIELD,
                format!("vlan {} together with isGateway is not supported by this bridge plugin", conf.vlan),
            ));
        }
        let ns = NetNs::open(&args.netns).map_err(internal)?;
        let mut host = Handle::new().map_err(|e| internal(format!("netlink socket: {e}")))?;
        let mut undo = Vec::new();
        let mut started = Started::default();
        if conf.is_layer3() {
            started.ipam = Some(invoke::delegate_add_start(&conf.ipam_type, args)?);
            // The spec asks for a DEL of the delegate whenever ADD fails after starting it, its own failure included.
            undo.push(Undo::Ipam);
            if conf.ip_masq && masq_backend(&conf)? == Backend::Iptables {
                // Most containers have an IPv4 address; for others this loads nothing.
                started.restore = firewall::PendingRestore::spawn(firewall::Family::V4).ok();
            }
        }
        match self.add_steps(args, &conf, &ns, &mut host, &mut undo, &mut started) {
            Ok(r) => Ok(r),
            Err(e) => {
                // A DEL of the IPAM plugin must not race its own ADD.
                if let Some(p) = started.ipam.take() {
                    let _ = p.wait();
                }
                drop(started);
                self.rollback(args, &conf, &mut host, undo);
                Err(e)
            }
        }
    }

    fn del(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = BridgeConf::load(args)?;
        let masquerading = conf.is_layer3() && conf.ip_masq;
        // The masquerade teardown runs on its own thread beside the link deletion: both end waiting
        // for the kernel's RCU grace period (the veth's unregistering, nf_tables freeing deleted
        // rules when the socket closes), and waiting together costs one period instead of two.
        let conf = &conf;
        std::thread::scope(|scope| {
            let teardown_masq = |addrs: Vec<IpNetwork>| {
                scope.spawn(move || {
                    firewall::teardown_ipmasq(&masq_target(conf, args, &addrs))
                        .map_err(|e| format!("failed to tear down IP masquerading: {e}"))
                })
            };
            let mut masq = None;
            let mut errors: Vec<String> = Vec::new();
            let mut addrs: Vec<IpNetwork> = Vec::new();
            let mut container_gone = args.netns.is_empty();
            if !args.netns.is_empty() {
                match NetNs::open(&args.netns) {
                    Ok(ns) => match handle_in(&ns) {
                        Ok(mut cont) => match cont.link_by_name(&args.ifname) {
                            Ok(Some(link)) => {
                                if let Ok(a) = cont.addresses(Some(link.index)) {
                                    addrs = a.into_iter().map(|a| a.net).filter(|n| !n.ip().is_loopback()).collect();
                                }
                                if masquerading {
                                    masq = Some(teardown_masq(addrs.clone()));
                                }
                                if let Err(e) = cont.del_link(link.index) {
                                    errors.push(format!("failed to delete {}: {e}", args.ifname));
                                }
                            }
                            Ok(None) => {}
                            Err(e) => errors.push(format!("look up {}: {e}", args.ifname)),
                        },
                        Err(e) => errors.push(e.msg),
                    },
                    Err(NsError::NotExist(_)) => container_gone = true,
                    Err(e) => errors.push(e.to_string()),
                }
            }
            // With the namespace gone its veth end went with it, and with it the host end; but a
            // namespace file that was unmounted while still alive keeps the pair, so remove the
            // host end named in prevResult if it is still ours.
            if container_gone {
                if let Ok(Some(prev)) = args.prev_result() {
                    if let (Some(hv), Ok(mut host)) = (prev.interfaces.get(1), Handle::new()) {
                        if let (Ok(Some(l)), Ok(Some(br))) =
                            (host.link_by_name(&hv.name), host.link_by_name(&conf.bridge))
                        {
                            if l.kind == "veth" && l.master == Some(br.index) {
                                if let Err(e) = host.del_link(l.index) {
                                    errors.push(format!("failed to delete {}: {e}", hv.name));
                                }
                            }
                        }
                    }
                    if addrs.is_empty() {
                        addrs = prev.ips.iter().map(|i| i.address).collect();
                    }
                }
            }
            if conf.is_layer3() {
                if let Err(e) = invoke::delegate(&conf.ipam_type, Command::Del, args) {
                    errors.push(e.to_string());
                }
            }
            if conf.mac_spoof_check {
                if let Err(e) = firewall::teardown_spoofcheck(&args.container_id, &args.ifname) {
                    log::warn!("MAC spoof check teardown: {e}");
                }
            }
            if masquerading {
                let result = match masq.take() {
                    Some(job) => job.join().unwrap_or_else(|_| Err("IP masquerading teardown panicked".into())),
                    None => firewall::teardown_ipmasq(&masq_target(conf, args, &addrs))
                        .map_err(|e| format!("failed to tear down IP masquerading: {e}")),
                };
                if let Err(e) = result {
                    errors.push(e);
                }
            }
            all_or_errors(errors)
        })
    }

    fn check(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = BridgeConf::load(args)?;
        let prev = args.prev_result()?.ok_or_else(|| internal("Required prevResult missing"))?;
        let ns = NetNs::open(&args.netns).map_err(internal)?;
        if conf.is_layer3() {
            invoke::delegate(&conf.ipam_type, Command::Check, args)?;
        }
        let mut host = Handle::new().map_err(internal)?;
        let mut cont = handle_in(&ns)?;

        let bridge = ctx(host.link_by_name(&conf.bridge), || format!("look up {}", conf.bridge))?
            .filter(|l| l.kind == "bridge")
            .ok_or_else(|| internal(format!("bridge {:?} not found", conf.bridge)))?;
        // Only a pinned bridge MAC is stable (ours always are; one created by another tool may
        // follow its lowest port), so a gateway bridge, which ADD pins, is where it is checked.
        let pinned = conf.is_gateway;
        if let Some(pb) = prev.interfaces.iter().find(|i| i.name == conf.bridge).filter(|_| pinned) {
            if !pb.mac.is_empty() && !pb.mac.eq_ignore_ascii_case(&bridge.mac_string()) {
                return Err(internal(format!(
                    "bridge {} MAC {} differs from {} in prevResult",
                    bridge.name,
                    bridge.mac_string(),
                    pb.mac
                )));
            }
        }
        if bridge.promisc != conf.promisc_mode {
            return Err(internal(format!(
                "bridge {} promiscuous mode is {}, config wants {}",
                bridge.name, bridge.promisc, conf.promisc_mode
            )));
        }

        let pc = prev
            .interfaces
            .iter()
            .position(|i| i.name == args.ifname && i.sandbox == args.netns)
            .ok_or_else(|| internal(format!("interface {} in {} is not in prevResult", args.ifname, args.netns)))?;
        let cl = ctx(cont.link_by_name(&args.ifname), || format!("look up {}", args.ifname))?
            .ok_or_else(|| internal(format!("Link not found: {} in {}", args.ifname, args.netns)))?;
        if cl.kind != "veth" {
            return Err(internal(format!("{} is a {:?}, not a veth", args.ifname, cl.kind)));
        }
        let want_mac = &prev.interfaces[pc].mac;
        if !want_mac.is_empty() && !want_mac.eq_ignore_ascii_case(&cl.mac_string()) {
            return Err(internal(format!(
                "interface {} MAC {} differs from {} in prevResult",
                args.ifname,
                cl.mac_string(),
                want_mac
            )));
        }
        let veth_found = prev.interfaces.iter().filter(|i| i.sandbox.is_empty() && i.name != conf.bridge).any(|i| {
            matches!(host.link_by_name(&i.name), Ok(Some(h)) if h.kind == "veth"
                && h.peer_index == Some(cl.index)
                && cl.peer_index == Some(h.index)
                && h.master == Some(bridge.index)
                && (i.mac.is_empty() || i.mac.eq_ignore_ascii_case(&h.mac_string())))
        });
        if !veth_found {
            return Err(internal(format!("CNI veth created for bridge {} was not found", conf.bridge)));
        }

        let have = ctx(cont.addresses(Some(cl.index)), || "list container addresses".into())?;
        for ip in prev.ips.iter().filter(|i| i.interface.is_none_or(|x| x == pc)) {
            if !have.iter().any(|a| a.net == ip.address) {
                return Err(internal(format!("{} has no address {}", args.ifname, ip.address)));
            }
        }
        let mut routes = ctx(cont.routes(true), || "list routes".into())?;
        routes.extend(ctx(cont.routes(false), || "list routes".into())?);
        for r in &prev.routes {
            let found =
                routes.iter().any(|k| k.dst == cni_types::net::network_of(&r.dst) && (r.gw.is_none() || k.gw == r.gw));
            if !found {
                return Err(internal(format!("route {} via {:?} not found in {}", r.dst, r.gw, args.netns)));
            }
        }
        if conf.is_layer3() && conf.ip_masq {
            let addrs: Vec<IpNetwork> = prev.ips.iter().map(|i| i.address).collect();
            let target = masq_target(&conf, args, &addrs);
            ctx(firewall::check_ipmasq(masq_backend(&conf)?, &target), || "IP masquerading".into())?;
        }
        Ok(())
    }

    fn gc(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = BridgeConf::load(args)?;
        let net = args.net_conf()?;
        let mut errors = Vec::new();
        if conf.is_layer3() {
            if let Err(e) = invoke::delegate(&conf.ipam_type, Command::Gc, args) {
                errors.push(e.to_string());
            }
        }
        // Without a list from the runtime nothing can be known to be stale.
        if let Some(valid) = net.gc_valid_attachments() {
            let valid: Vec<(String, String)> =
                valid.iter().map(|a| (a.container_id.clone(), a.ifname.clone())).collect();
            if let Err(e) = firewall::gc_ipmasq(&conf.network, &valid) {
                errors.push(format!("IP masquerade GC: {e}"));
            }
        }
        all_or_errors(errors)
    }

    fn status(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = BridgeConf::load(args)?;
        if conf.is_layer3() {
            invoke::delegate(&conf.ipam_type, Command::Status, args)?;
        }
        Ok(())
    }
}
