//! `bridge`: a Linux bridge on the host, a veth pair per container, addresses from IPAM.
//!
//! The result keeps the reference's interface order (bridge, host veth, container
//! interface) because chained plugins (portmap, firewall, tuning, bandwidth) find the
//! interfaces by position and sandbox. Every step of ADD that creates something records how to
//! undo it; a failure undoes them in reverse before the error is returned. DEL never stops at
//! the first error and treats anything already gone as done.

mod config;

pub use config::BridgeConf;

use crate::errors::{internal, Collector, Ctx};
use crate::firewall::{self, MasqTarget};
use crate::netlink::{self, Handle, Link};
use crate::ns::NetNs;
use crate::sysctl;
use crate::veth::{
    configure_container, container_without, create_veth_pair, gc_ipam_and_masq, handle_in, is_eexist, masq_backend,
    rollback, ContainerEnd, Started, Undo,
};
use cni_types::skel::Command;
use cni_types::version::Version;
use cni_types::{invoke, CmdArgs, CniError, CniResult, Interface, IpConfig, Plugin, Route};
use ipnetwork::IpNetwork;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The bridge plugin.
pub struct Bridge;

/// This attachment's masquerade target.
fn masq_target<'a>(conf: &'a BridgeConf, args: &'a CmdArgs, addresses: &'a [IpNetwork]) -> MasqTarget<'a> {
    MasqTarget { network: &conf.network, container_id: &args.container_id, ifname: &args.ifname, addresses }
}

/// Looks up the bridge; one of that name that is not a bridge refuses the ADD.
fn find_bridge(host: &mut Handle, conf: &BridgeConf) -> Result<Option<Link>, CniError> {
    let name = &conf.bridge;
    let found = host.link_by_name(name)?;
    if let Some(link) = found.as_ref().filter(|l| l.kind != "bridge") {
        return Err(internal(format!(
            "failed to create bridge {name:?}: {:?} already exists but is not a bridge",
            link.name
        )));
    }
    Ok(found)
}

/// The checks of ADD that can refuse without IPAM's answer, run before IPAM starts or anything
/// changes: the bridge name is free or a bridge, and the container has no interface of that
/// name (a second ADD of an attachment that exists is refused here and leaves it as it was).
fn check_add<'a>(host: &mut Handle, ns: &'a NetNs, conf: &BridgeConf, args: &CmdArgs) -> Result<Checked<'a>, CniError> {
    let bridge = find_bridge(host, conf)?;
    let cont = container_without(ns, &args.ifname)?;
    Ok(Checked { ns, cont, bridge })
}

/// What [`check_add`] found: the container's namespace and netlink socket, and the bridge if
/// it exists.
struct Checked<'a> {
    ns: &'a NetNs,
    cont: Handle,
    bridge: Option<Link>,
}

/// `ensureBridge`: create it (tolerating a concurrent creator), check it is a bridge, up.
/// `found` is the bridge as [`check_add`] saw it; a bridge this call creates is recorded in `undo`.
fn ensure_bridge(
    host: &mut Handle,
    conf: &BridgeConf,
    found: Option<Link>,
    undo: &mut Vec<Undo>,
) -> Result<Link, CniError> {
    let name = &conf.bridge;
    let lookup = |h: &mut Handle| h.link_by_name(name).map_err(CniError::from);
    let link = match found {
        Some(l) => l,
        None => {
            let created = match host.create_bridge(name, conf.mtu, conf.uses_vlans()) {
                Ok(()) => true,
                Err(e) if is_eexist(&e) => false,
                Err(e) => return Err(internal(format!("failed to create bridge {name:?}: {}", e.cause()))),
            };
            let link = lookup(host)?.ok_or_else(|| internal(format!("bridge {name:?} vanished after creation")))?;
            if created {
                undo.push(Undo::Bridge(link.index));
            }
            // A bridge whose address was never set takes its lowest port's MAC and changes it as
            // ports come and go, which breaks neighbours' ARP caches and CHECK; pin it at birth.
            if !link.mac.is_empty() {
                host.set_link_mac(link.index, &link.mac).map_err(|e| e.on(name))?;
            }
            link
        }
    };
    if link.kind != "bridge" {
        return Err(internal(format!("failed to create bridge {name:?}: {name:?} already exists but is not a bridge")));
    }
    if conf.promisc_mode && !link.promisc {
        host.set_link_promisc(link.index, true).map_err(|e| e.on(name))?;
    }
    // A bridge must not autoconfigure from router advertisements of its own containers.
    if link.ipv6_accept_ra != Some(0) {
        let _ = sysctl::ensure_if_present(&format!("net/ipv6/conf/{name}/accept_ra"), "0");
    }
    if !link.up {
        host.set_link_up(link.index, true).map_err(|e| e.on(name))?;
    }
    Ok(link)
}

/// Access VLAN as PVID untagged, trunks tagged; the default VLAN 1 goes unless preserved.
fn configure_port_vlans(host: &mut Handle, index: u32, conf: &BridgeConf) -> Result<(), CniError> {
    if !conf.uses_vlans() {
        return Ok(());
    }
    if !conf.preserve_default_vlan {
        host.bridge_port_vlan(index, 1, false, false).ctx(|| "remove default VLAN 1 from port")?;
    }
    // With trunks and no access VLAN the native VLAN is 1, as in the reference.
    let native = if conf.vlan != 0 { conf.vlan } else { 1 };
    host.bridge_port_vlan(index, native, true, true).ctx(|| format!("add VLAN {native} to port"))?;
    for &vid in conf.vlan_trunk.iter().filter(|v| **v != native) {
        host.bridge_port_vlan(index, vid, false, true).ctx(|| format!("add trunk VLAN {vid} to port"))?;
    }
    Ok(())
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
/// one bridge with different IPv4 gateways). What it adds or removes is recorded in `undo`.
fn ensure_bridge_addr(
    host: &mut Handle,
    bridge: &Link,
    want: &IpNetwork,
    force: bool,
    undo: &mut Vec<Undo>,
) -> Result<bool, CniError> {
    let existing = host.addresses(Some(bridge.index)).map_err(|e| e.on(&bridge.name))?;
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
        host.del_address(bridge.index, &a.net).map_err(|e| e.on(&bridge.name))?;
        undo.push(Undo::BridgeAddrRemoved(bridge.index, a.net));
    }
    match host.add_address(bridge.index, want) {
        Ok(()) => {
            undo.push(Undo::BridgeAddr(bridge.index, *want));
            Ok(true)
        }
        Err(e) if is_eexist(&e) => Ok(false),
        Err(e) => Err(internal(format!("failed to set bridge addr {want} on {}: {}", bridge.name, e.cause()))),
    }
}

/// Waits for the host end to reach operstate UP, as the reference does (0, 50, 500, 1000, 1000 ms).
/// Returns the link as last read.
fn wait_port_up(host: &mut Handle, index: u32) -> Result<Link, CniError> {
    use netlink_packet_route::link::State;
    let mut last = None;
    for delay in [0u64, 50, 500, 1000, 1000] {
        std::thread::sleep(Duration::from_millis(delay));
        let link = host.link_by_index(index).ctx(|| "look up host veth")?;
        last = link.as_ref().and_then(|l| l.oper_state);
        if let Some(l) = link.filter(|_| last == Some(State::Up)) {
            return Ok(l);
        }
    }
    Err(internal(format!("bridge port in error state: {:?}", last.unwrap_or(State::Unknown))))
}

/// CHECK of everything but IPAM: the bridge, the veth pair, the container's addresses and routes
/// and the masquerade rules are as prevResult and the configuration say.
fn check_attachment(conf: &BridgeConf, args: &CmdArgs, prev: &CniResult, ns: &NetNs) -> Result<(), CniError> {
    let mut host = Handle::new().map_err(internal)?;
    let mut cont = handle_in(ns)?;

    let bridge = host
        .link_by_name(&conf.bridge)
        .ctx(|| format!("look up {}", conf.bridge))?
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
    let cl = cont
        .link_by_name(&args.ifname)
        .ctx(|| format!("look up {}", args.ifname))?
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

    let have = cont.addresses(Some(cl.index)).ctx(|| "list container addresses")?;
    for ip in prev.ips.iter().filter(|i| i.interface.is_none_or(|x| x == pc)) {
        if !have.iter().any(|a| a.net == ip.address) {
            return Err(internal(format!("{} has no address {}", args.ifname, ip.address)));
        }
    }
    let mut routes = cont.routes(true).ctx(|| "list routes")?;
    routes.extend(cont.routes(false).ctx(|| "list routes")?);
    for r in &prev.routes {
        let found =
            routes.iter().any(|k| k.dst == cni_types::net::network_of(&r.dst) && (r.gw.is_none() || k.gw == r.gw));
        if !found {
            return Err(internal(format!("route {} via {:?} not found in {}", r.dst, r.gw, args.netns)));
        }
    }
    if conf.is_layer3() && conf.ip_masq {
        let addrs: Vec<IpNetwork> = prev.ips.iter().map(|i| i.address).collect();
        let target = masq_target(conf, args, &addrs);
        firewall::check_ipmasq(masq_backend(conf.ip_masq_backend.as_deref())?, &target).ctx(|| "IP masquerading")?;
    }
    Ok(())
}

impl Bridge {
    fn add_steps(
        &self,
        args: &CmdArgs,
        conf: &BridgeConf,
        host: &mut Handle,
        checked: &mut Checked<'_>,
        undo: &mut Vec<Undo>,
        started: &mut Started,
    ) -> Result<CniResult, CniError> {
        let t0 = Instant::now();
        let mark = |what: &str| log::debug!("{what} after {:?}", t0.elapsed());
        let bridge = ensure_bridge(host, conf, checked.bridge.take(), undo)?;
        let ns = checked.ns;
        let cont = &mut checked.cont;
        mark("bridge ensured");
        let veth = create_veth_pair(host, cont, ns, &args.ifname, conf.mtu, conf.mac, Some(&bridge))?;
        undo.push(Undo::Veth(veth.index));
        let cont_link = cont
            .link_by_name(&args.ifname)?
            .ok_or_else(|| internal(format!("{} vanished from {}", args.ifname, ns.path().display())))?;

        if veth.ipv6_accept_ra != Some(0) {
            let _ = sysctl::ensure_if_present(&format!("net/ipv6/conf/{}/accept_ra", veth.name), "0");
        }
        host.set_link_up(veth.index, true).ctx(|| format!("failed to set {} up", veth.name))?;
        if conf.hairpin_mode || conf.port_isolation {
            host.set_bridge_port(veth.index, conf.hairpin_mode, conf.port_isolation)
                .ctx(|| format!("failed to set hairpin/isolation on {}", veth.name))?;
        }
        configure_port_vlans(host, veth.index, conf)?;
        mark("veth pair ready");

        if conf.mac_spoof_check {
            firewall::setup_spoofcheck(&veth.name, &args.container_id, &args.ifname, &cont_link.mac_string())
                .ctx(|| "failed to set up MAC spoof check")?;
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
                Some(firewall::begin_ipmasq(
                    masq_backend(conf.ip_masq_backend.as_deref())?,
                    masq_target,
                    started.restore.take(),
                ))
            } else {
                None
            };
            // The bridge side first: once the container's interface is up, the kernel's own work
            // for the new link (linkwatch, IPv6 autoconfiguration) holds the RTNL for a while.
            if conf.is_gateway {
                let mut added = false;
                for net in &bridge_addrs {
                    added |= ensure_bridge_addr(host, &bridge, net, conf.force_address, undo)?;
                }
                // Pin the bridge MAC so it stops following the lowest port MAC as ports come and go,
                // when the gateway address goes on, as the reference does. Not on every ADD: setting
                // a MAC, even the same one, makes the kernel flush the bridge's ARP and NDP entries.
                if added {
                    let current = host.link_by_index(bridge.index).ctx(|| "look up bridge")?;
                    if let Some(l) = current {
                        host.set_link_mac(bridge.index, &l.mac).ctx(|| "pin bridge MAC")?;
                    }
                }
                let v4 = result.ips.iter().any(|i| i.address.is_ipv4());
                let v6 = result.ips.iter().any(|i| !i.address.is_ipv4());
                if v4 && !matches!(netlink::all_forwarding(false), Ok(Some(true))) {
                    sysctl::ensure("net/ipv4/ip_forward", "1")?;
                }
                if v6 && !matches!(netlink::all_forwarding(true), Ok(Some(true))) {
                    sysctl::ensure("net/ipv6/conf/all/forwarding", "1")?;
                }
            }
            configure_container(ns, cont, &cont_link, &args.ifname, conf.enable_dad, &result)?;
            mark("container configured");
            if let Some(masq) = masq {
                masq.finish().ctx(|| "failed to set up IP masquerading")?;
                mark("masquerade installed");
            }
        } else {
            // A layer-2 ADD writes no sysctl after the host veth's.
            sysctl::release();
            if !conf.disable_container_interface {
                cont.set_link_up(cont_link.index, true).ctx(|| format!("failed to set {} up", args.ifname))?;
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
            Ok(h.link_by_index(index).ctx(|| "refresh link")?.map(|l| l.mac_string()).unwrap_or_default())
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
            masq_backend(conf.ip_masq_backend.as_deref())?;
        }
        if conf.uses_vlans() && conf.is_gateway {
            return Err(CniError::new(
                cni_types::error::UNSUPPORTED_FIELD,
                format!("vlan {} together with isGateway is not supported by this bridge plugin", conf.vlan),
            ));
        }
        let ns = NetNs::open(&args.netns)?;
        let mut host = Handle::new()?;
        let mut checked = check_add(&mut host, &ns, &conf, args)?;
        let mut undo = Vec::new();
        let mut started = if conf.is_layer3() {
            let masq = if conf.ip_masq { Some(masq_backend(conf.ip_masq_backend.as_deref())?) } else { None };
            Started::begin(&conf.ipam_type, args, masq, &mut undo)?
        } else {
            Started::default()
        };
        match self.add_steps(args, &conf, &mut host, &mut checked, &mut undo, &mut started) {
            Ok(r) => Ok(r),
            Err(e) => {
                started.settle();
                rollback(args, &conf.network, &conf.ipam_type, &mut host, undo);
                Err(e)
            }
        }
    }

    fn del(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = BridgeConf::load(args)?;
        let mut errors = Collector::new();
        // The IPAM plugin releases the address while the interfaces go (the reference releases it
        // before deleting anything): its process start and work overlap the kernel's waits below.
        let ipam = if conf.is_layer3() {
            errors.keep(invoke::start(&conf.ipam_type, Command::Del, args, &args.stdin).map_err(|e| e.to_string()))
        } else {
            None
        };
        let mut end = ContainerEnd::find(args, &mut errors);
        // With the namespace gone its veth end went with it, and with it the host end; but a
        // namespace file that was unmounted while still alive keeps the pair, so the host end
        // named in prevResult goes too if it is still ours.
        let mut host_end = None;
        if end.gone {
            if let Ok(Some(prev)) = args.prev_result() {
                if let (Some(hv), Ok(mut host)) = (prev.interfaces.get(1), Handle::new()) {
                    if let (Ok(Some(l)), Ok(Some(br))) = (host.link_by_name(&hv.name), host.link_by_name(&conf.bridge))
                    {
                        if l.kind == "veth" && l.master == Some(br.index) {
                            host_end = Some((host, l));
                        }
                    }
                }
                if end.addrs.is_empty() {
                    end.addrs = prev.ips.iter().map(|i| i.address).collect();
                }
            }
        }
        // The rules go before the veth, and the sockets of their nf_tables batches stay open until
        // it is deleted: the kernel's cleanup of the deleted rules (an RCU grace period, waited for
        // when such a socket closes) then runs during the veth deletion's own wait, not after it.
        let settle = netlink::NftSettle::begin();
        if conf.mac_spoof_check {
            if let Err(e) = firewall::teardown_spoofcheck(&args.container_id, &args.ifname) {
                log::warn!("MAC spoof check teardown: {e}");
            }
        }
        if conf.is_layer3() && conf.ip_masq {
            let target = masq_target(&conf, args, &end.addrs);
            errors.step(|| "failed to tear down IP masquerading", firewall::teardown_ipmasq(&target));
        }
        end.finish_del(&args.ifname, host_end, settle, ipam, errors)
    }

    fn check(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = BridgeConf::load(args)?;
        let prev = args.prev_result()?.ok_or_else(|| internal("Required prevResult missing"))?;
        let ns = NetNs::open(&args.netns)?;
        // The IPAM plugin checks its store while the interfaces are read; its verdict still
        // comes first, as the reference asks it first.
        let ipam = if conf.is_layer3() {
            Some(invoke::start(&conf.ipam_type, Command::Check, args, &args.stdin)?)
        } else {
            None
        };
        let attachment = check_attachment(&conf, args, &prev, &ns);
        if let Some(ipam) = ipam {
            ipam.finish()?;
        }
        attachment
    }

    fn gc(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = BridgeConf::load(args)?;
        gc_ipam_and_masq(conf.is_layer3().then_some(conf.ipam_type.as_str()), &conf.network, args)
    }

    fn status(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = BridgeConf::load(args)?;
        if conf.is_layer3() {
            invoke::delegate(&conf.ipam_type, Command::Status, args)?;
        }
        Ok(())
    }
}
