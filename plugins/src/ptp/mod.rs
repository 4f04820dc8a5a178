//! `ptp`: a veth pair per container and routes instead of a shared bridge.
//!
//! The layout is the reference's, so a host can switch suites with containers attached. For each
//! IPAM address `10.1.0.5/24` with gateway `10.1.0.1`:
//! ```text
//! host:       ip addr add 10.1.0.1/32 dev vethXXXXXXXX
//!             ip route add 10.1.0.5/32 dev vethXXXXXXXX scope host
//! container:  ip addr add 10.1.0.5/24 dev eth0          (its prefix route is then removed)
//!             ip route add 10.1.0.1/32 dev eth0 scope link src 10.1.0.5
//!             ip route add 10.1.0.0/24 via 10.1.0.1 dev eth0 src 10.1.0.5
//! ```
//! so everything, the container's own subnet included, goes through the host, which forwards
//! it. The result lists the host veth, then the container interface (chained plugins find them
//! by position and sandbox). ADD records what it created and undoes it on failure; DEL never
//! stops at the first error and treats anything already gone as done.

mod config;

pub use config::PtpConf;

use crate::errors::{internal, Collector, Ctx};
use crate::firewall::{self, MasqTarget};
use crate::netlink::{self, Handle, Link, RouteSpec};
use crate::ns::NetNs;
use crate::sysctl;
use crate::veth::{
    configure_container, container_without, create_veth_pair, gc_ipam_and_masq, handle_in, is_eexist, masq_backend,
    rollback, wait_for_dad, ContainerEnd, Started, Undo,
};
use cni_types::net::network_of;
use cni_types::skel::Command;
use cni_types::{invoke, CmdArgs, CniError, CniResult, Interface, IpConfig, Plugin};
use ipnetwork::IpNetwork;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The ptp plugin.
pub struct Ptp;

/// `RT_SCOPE_LINK`.
const SCOPE_LINK: u8 = 253;
/// `RT_SCOPE_HOST`.
const SCOPE_HOST: u8 = 254;

/// This attachment's masquerade target.
fn masq_target<'a>(conf: &'a PtpConf, args: &'a CmdArgs, addresses: &'a [IpNetwork]) -> MasqTarget<'a> {
    MasqTarget { network: &conf.network, container_id: &args.container_id, ifname: &args.ifname, addresses }
}

/// `addr` alone: `/32` or `/128`.
fn host_net(addr: IpAddr) -> IpNetwork {
    IpNetwork::from(addr)
}

/// The gateway of each address; ptp routes everything through it, so one is required.
fn gateways(ips: &[IpConfig]) -> Result<Vec<IpAddr>, CniError> {
    ips.iter()
        .map(|ip| match ip.gateway {
            Some(gw) if gw.is_ipv4() == ip.address.is_ipv4() && gw != ip.address.ip() => Ok(gw),
            Some(gw) => Err(internal(format!("IPAM gateway {gw} cannot route address {}", ip.address))),
            None => Err(internal(format!(
                "IPAM returned no gateway for {}: ptp routes the container through one",
                ip.address
            ))),
        })
        .collect()
}

/// Routes to the container on the host side: `ip route add <ip>/32 dev <veth> scope host`.
fn host_route(ip: &IpConfig, veth: u32) -> RouteSpec {
    RouteSpec {
        dst: host_net(ip.address.ip()),
        gw: None,
        oif: Some(veth),
        priority: None,
        table: None,
        scope: Some(SCOPE_HOST),
        mtu: None,
        advmss: None,
    }
}

/// The container's two routes for one address: the gateway on the link, and its own subnet
/// through the gateway (so that even neighbours go through the host).
fn container_routes(ip: &IpConfig, gw: IpAddr, index: u32) -> [RouteSpec; 2] {
    let base = RouteSpec {
        dst: host_net(gw),
        gw: None,
        oif: Some(index),
        priority: None,
        table: None,
        scope: Some(SCOPE_LINK),
        mtu: None,
        advmss: None,
    };
    let subnet = RouteSpec { dst: network_of(&ip.address), gw: Some(gw), scope: None, ..base.clone() };
    [base, subnet]
}

/// Turns on forwarding for each family the container has.
fn enable_forwarding(ips: &[IpConfig]) -> Result<(), CniError> {
    if ips.iter().any(|i| i.address.is_ipv4()) && !matches!(netlink::all_forwarding(false), Ok(Some(true))) {
        sysctl::ensure("net/ipv4/ip_forward", "1")?;
    }
    if ips.iter().any(|i| !i.address.is_ipv4()) && !matches!(netlink::all_forwarding(true), Ok(Some(true))) {
        sysctl::ensure("net/ipv6/conf/all/forwarding", "1")?;
    }
    Ok(())
}

/// The host end: the gateway of each address, and a route to each container address.
fn configure_host_veth(host: &mut Handle, veth: &Link, ips: &[IpConfig], gws: &[IpAddr]) -> Result<(), CniError> {
    for (ip, gw) in ips.iter().zip(gws) {
        // Every host end carries the same gateway, which no container can hold: duplicate address
        // detection would only keep the container from reaching its IPv6 gateway for a second.
        let added = if gw.is_ipv4() {
            host.add_address(veth.index, &host_net(*gw))
        } else {
            host.add_address_nodad(veth.index, &host_net(*gw))
        };
        match added {
            Err(e) if !is_eexist(&e) => {
                return Err(internal(format!("failed to add IP addr {gw} to {}: {}", veth.name, e.cause())));
            }
            _ => {}
        }
        match host.add_route(&host_route(ip, veth.index)) {
            Err(e) if !is_eexist(&e) => {
                return Err(internal(format!(
                    "failed to add route {} dev {}: {}",
                    ip.address.ip(),
                    veth.name,
                    e.cause()
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Replaces each address's prefix route in the container with a route through its gateway.
fn route_through_gateways(
    cont: &mut Handle,
    link: &Link,
    ifname: &str,
    ips: &[IpConfig],
    gws: &[IpAddr],
) -> Result<(), CniError> {
    for (ip, gw) in ips.iter().zip(gws) {
        let subnet = network_of(&ip.address);
        let kernel_route = RouteSpec {
            dst: subnet,
            gw: None,
            oif: Some(link.index),
            priority: None,
            table: None,
            scope: None,
            mtu: None,
            advmss: None,
        };
        cont.del_route(&kernel_route)
            .map_err(|e| internal(format!("failed to delete route {subnet} dev {ifname}: {}", e.cause())))?;
        for r in container_routes(ip, *gw, link.index) {
            match cont.add_route_src(&r, Some(ip.address.ip())) {
                Err(e) if !is_eexist(&e) => {
                    let via = r.gw.map(|g| format!(" via {g}")).unwrap_or_default();
                    return Err(internal(format!("failed to add route {}{via} dev {ifname}: {}", r.dst, e.cause())));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Waits (at most 2 s) until the container's end has carrier, so that the container's first
/// packets are not dropped; the kernel reports a veth's carrier promptly, usually within 1 ms.
fn wait_carrier(cont: &mut Handle, index: u32, ifname: &str) -> Result<(), CniError> {
    use netlink_packet_route::link::State;
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut last = None;
    loop {
        let link = cont.link_by_index(index).map_err(|e| e.on(ifname))?;
        last = link.and_then(|l| l.oper_state).or(last);
        if last == Some(State::Up) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(internal(format!(
                "{ifname} has no carrier after 2s (state {:?})",
                last.unwrap_or(State::Unknown)
            )));
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

impl Ptp {
    fn add_steps(
        args: &CmdArgs,
        conf: &PtpConf,
        ns: &NetNs,
        mut cont: Handle,
        host: &mut Handle,
        undo: &mut Vec<Undo>,
        started: &mut Started,
    ) -> Result<CniResult, CniError> {
        let t0 = Instant::now();
        let mark = |what: &str| log::debug!("{what} after {:?}", t0.elapsed());
        let veth = create_veth_pair(host, &mut cont, ns, &args.ifname, conf.mtu, None, None)?;
        undo.push(Undo::Veth(veth.index));
        let cont_link = cont
            .link_by_name(&args.ifname)?
            .ok_or_else(|| internal(format!("{} vanished from {}", args.ifname, ns.path().display())))?;
        // The host owns the routes of this link.
        if veth.ipv6_accept_ra != Some(0) {
            let _ = sysctl::ensure_if_present(&format!("net/ipv6/conf/{}/accept_ra", veth.name), "0");
        }
        host.set_link_up(veth.index, true).ctx(|| format!("failed to set {} up", veth.name))?;
        mark("veth pair ready");

        let pending = started.ipam.take().ok_or_else(|| internal("IPAM was not started"))?;
        let ipam = pending.wait()?;
        mark("IPAM done");
        if ipam.ips.is_empty() {
            return Err(internal("IPAM plugin returned missing IP config"));
        }
        let mut result = CniResult {
            ips: ipam.ips.into_iter().map(|ip| IpConfig { interface: Some(1), ..ip }).collect(),
            routes: ipam.routes,
            dns: ipam.dns,
            ..Default::default()
        };
        let gws = gateways(&result.ips)?;
        enable_forwarding(&result.ips)?;
        // The masquerade batch loads while the links are configured; dropping `masq` on an error
        // below waits for it, so the rollback sees whatever it installed.
        let masq_addrs: Vec<IpNetwork> = result.ips.iter().map(|i| i.address).collect();
        let masq = if conf.ip_masq {
            undo.push(Undo::IpMasq(masq_addrs.clone()));
            let backend = masq_backend(conf.ip_masq_backend.as_deref())?;
            Some(firewall::begin_ipmasq(backend, masq_target(conf, args, &masq_addrs), started.restore.take()))
        } else {
            None
        };
        // The host side first: once the container's interface is up, the kernel's own work for
        // the new link (linkwatch, IPv6 autoconfiguration) holds the RTNL for a while.
        configure_host_veth(host, &veth, &result.ips, &gws)?;
        mark("host veth configured");
        // DAD is off in the container: its only neighbour is the host end, which holds the gateway.
        configure_container(ns, &mut cont, &cont_link, &args.ifname, false, &result)?;
        // A route's source must be a usable address: an IPv6 one is tentative until the kernel
        // has seen the link up.
        if result.ips.iter().any(|i| !i.address.is_ipv4()) {
            wait_for_dad(&mut cont, cont_link.index)?;
        }
        route_through_gateways(&mut cont, &cont_link, &args.ifname, &result.ips, &gws)?;
        mark("container configured");
        if let Some(masq) = masq {
            masq.finish().ctx(|| "failed to set up IP masquerading")?;
            mark("masquerade installed");
        }
        // Last: the kernel reports the carrier while the masquerade batch loads.
        wait_carrier(&mut cont, cont_link.index, &args.ifname)?;
        mark("carrier up");

        result.interfaces = vec![
            Interface { name: veth.name.clone(), mac: veth.mac_string(), ..Default::default() },
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

/// DEL without the container's namespace: the host end named in prevResult, if it is still a
/// veth routing one of prevResult's addresses (a namespace file unmounted while still alive
/// keeps the pair), for the caller to delete with the socket that found it. Returns prevResult's
/// addresses too.
fn host_end_from_prev(args: &CmdArgs) -> (Vec<IpNetwork>, Option<(Handle, Link)>) {
    let Ok(Some(prev)) = args.prev_result() else { return (Vec::new(), None) };
    let addrs: Vec<IpNetwork> = prev.ips.iter().map(|i| i.address).collect();
    let Some(hv) = prev.interfaces.iter().find(|i| i.sandbox.is_empty()) else { return (addrs, None) };
    let Ok(mut host) = Handle::new() else { return (addrs, None) };
    let Ok(Some(link)) = host.link_by_name(&hv.name) else { return (addrs, None) };
    if link.kind != "veth" {
        return (addrs, None);
    }
    let mut routes = host.routes(true).unwrap_or_default();
    routes.extend(host.routes(false).unwrap_or_default());
    let ours = routes.iter().any(|r| r.oif == Some(link.index) && addrs.iter().any(|a| r.dst == host_net(a.ip())));
    (addrs, ours.then_some((host, link)))
}

impl Plugin for Ptp {
    fn about(&self) -> String {
        crate::about("ptp")
    }

    fn add(&self, args: &CmdArgs) -> Result<CniResult, CniError> {
        let conf = PtpConf::load(args)?;
        let backend = if conf.ip_masq { Some(masq_backend(conf.ip_masq_backend.as_deref())?) } else { None };
        let ns = NetNs::open(&args.netns)?;
        let mut host = Handle::new()?;
        // Refused before IPAM starts: a second ADD of an existing attachment keeps its address.
        let cont = container_without(&ns, &args.ifname)?;
        let mut undo = Vec::new();
        let mut started = Started::begin(&conf.ipam_type, args, backend, &mut undo)?;
        match Self::add_steps(args, &conf, &ns, cont, &mut host, &mut undo, &mut started) {
            Ok(r) => Ok(r),
            Err(e) => {
                started.settle();
                rollback(args, &conf.network, &conf.ipam_type, &mut host, undo);
                Err(e)
            }
        }
    }

    fn del(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = PtpConf::load(args)?;
        let mut errors = Collector::new();
        // The IPAM plugin releases the address while the interfaces go (the reference releases it
        // before deleting anything): its process start and work overlap the kernel's waits below.
        let ipam =
            errors.keep(invoke::start(&conf.ipam_type, Command::Del, args, &args.stdin).map_err(|e| e.to_string()));
        let mut end = ContainerEnd::find(args, &mut errors);
        let mut host_end = None;
        if end.gone {
            let (prev_addrs, found) = host_end_from_prev(args);
            host_end = found;
            if end.addrs.is_empty() {
                end.addrs = prev_addrs;
            }
        }
        // The rules go before the veth, and the sockets of their nf_tables batches stay open until
        // it is deleted, so the kernel's cleanup of the deleted rules overlaps the veth deletion's
        // own wait (see `netlink::NftSettle`).
        let settle = netlink::NftSettle::begin();
        if conf.ip_masq {
            errors.step(
                || "failed to tear down IP masquerading",
                firewall::teardown_ipmasq(&masq_target(&conf, args, &end.addrs)),
            );
        }
        end.finish_del(&args.ifname, host_end, settle, ipam, errors)
    }

    fn check(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = PtpConf::load(args)?;
        let prev = args.prev_result()?.ok_or_else(|| internal("ptp: Required prevResult missing"))?;
        let ns = NetNs::open(&args.netns)?;
        invoke::delegate(&conf.ipam_type, Command::Check, args)?;
        let mut host = Handle::new().map_err(internal)?;
        let mut cont = handle_in(&ns)?;

        let pc = prev
            .interfaces
            .iter()
            .position(|i| i.name == args.ifname && i.sandbox == args.netns)
            .ok_or_else(|| internal(format!("interface {} in {} is not in prevResult", args.ifname, args.netns)))?;
        let cl = cont.link_by_name(&args.ifname)?.ok_or_else(|| {
            internal(format!("ptp: Container Interface name in prevResult: {} not found", args.ifname))
        })?;
        if cl.kind != "veth" {
            return Err(internal(format!("Error: Container interface {} not of type veth/p2p", args.ifname)));
        }
        let want_mac = &prev.interfaces[pc].mac;
        if !want_mac.is_empty() && !want_mac.eq_ignore_ascii_case(&cl.mac_string()) {
            return Err(internal(format!(
                "ptp: Interface {} Mac {} doesn't match container Mac: {}",
                args.ifname,
                want_mac,
                cl.mac_string()
            )));
        }
        let host_end = prev
            .interfaces
            .iter()
            .filter(|i| i.sandbox.is_empty())
            .find_map(|i| match host.link_by_name(&i.name) {
                Ok(Some(h))
                    if h.kind == "veth"
                        && h.peer_index == Some(cl.index)
                        && cl.peer_index == Some(h.index)
                        && (i.mac.is_empty() || i.mac.eq_ignore_ascii_case(&h.mac_string())) =>
                {
                    Some(h)
                }
                _ => None,
            })
            .ok_or_else(|| internal(format!("the host end of {} named in prevResult was not found", args.ifname)))?;

        let ips: Vec<IpConfig> =
            prev.ips.iter().filter(|i| i.interface.is_none_or(|x| x == pc)).cloned().collect::<Vec<_>>();
        let gws = gateways(&ips)?;
        let have = cont.addresses(Some(cl.index)).ctx(|| "list container addresses")?;
        let host_addrs = host.addresses(Some(host_end.index)).map_err(|e| e.on(&host_end.name))?;
        let mut cont_routes = cont.routes(true)?;
        cont_routes.extend(cont.routes(false)?);
        let has_route = |routes: &[RouteSpec], want: &RouteSpec| {
            routes.iter().any(|k| k.dst == want.dst && k.oif == want.oif && (want.gw.is_none() || k.gw == want.gw))
        };
        for (ip, gw) in ips.iter().zip(&gws) {
            if !have.iter().any(|a| a.net == ip.address) {
                return Err(internal(format!("{} has no address {}", args.ifname, ip.address)));
            }
            if !host_addrs.iter().any(|a| a.net == host_net(*gw)) {
                return Err(internal(format!("{} has no gateway address {gw}", host_end.name)));
            }
            // Asked of the kernel rather than found in a dump of every container's routes.
            let via = host.route_get(ip.address.ip())?;
            if via != Some(host_end.index) {
                return Err(internal(format!("host route {} dev {} not found", ip.address.ip(), host_end.name)));
            }
            for r in container_routes(ip, *gw, cl.index) {
                if !has_route(&cont_routes, &r) {
                    let via = r.gw.map(|g| format!(" via {g}")).unwrap_or_default();
                    return Err(internal(format!("route {}{via} dev {} not found", r.dst, args.ifname)));
                }
            }
        }
        for r in &prev.routes {
            let found = cont_routes.iter().any(|k| k.dst == network_of(&r.dst) && (r.gw.is_none() || k.gw == r.gw));
            if !found {
                return Err(internal(format!("route {} via {:?} not found in {}", r.dst, r.gw, args.netns)));
            }
        }
        if conf.ip_masq {
            let addrs: Vec<IpNetwork> = ips.iter().map(|i| i.address).collect();
            let target = masq_target(&conf, args, &addrs);
            let backend = masq_backend(conf.ip_masq_backend.as_deref())?;
            firewall::check_ipmasq(backend, &target).ctx(|| "IP masquerading")?;
        }
        Ok(())
    }

    fn gc(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = PtpConf::load(args)?;
        gc_ipam_and_masq(Some(&conf.ipam_type), &conf.network, args)
    }

    fn status(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = PtpConf::load(args)?;
        invoke::delegate(&conf.ipam_type, Command::Status, args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(addr: &str, gw: Option<&str>) -> IpConfig {
        IpConfig { interface: None, address: addr.parse().unwrap(), gateway: gw.map(|g| g.parse().unwrap()) }
    }

    #[test]
    fn every_address_needs_a_gateway_of_its_family() {
        let ok = gateways(&[ip("10.1.0.5/24", Some("10.1.0.1")), ip("fd00::5/64", Some("fd00::1"))]).unwrap();
        assert_eq!(ok, vec!["10.1.0.1".parse::<IpAddr>().unwrap(), "fd00::1".parse().unwrap()]);
        let e = gateways(&[ip("10.1.0.5/24", None)]).unwrap_err();
        assert!(e.msg.contains("no gateway for 10.1.0.5/24"), "{}", e.msg);
        assert!(gateways(&[ip("10.1.0.5/24", Some("fd00::1"))]).is_err());
        assert!(gateways(&[ip("10.1.0.5/24", Some("10.1.0.5"))]).is_err());
    }

    #[test]
    fn routes_have_the_reference_layout() {
        let a = ip("10.1.0.5/24", Some("10.1.0.1"));
        let [gw, subnet] = container_routes(&a, "10.1.0.1".parse().unwrap(), 7);
        assert_eq!(
            (gw.dst.to_string(), gw.gw, gw.scope, gw.oif),
            ("10.1.0.1/32".into(), None, Some(SCOPE_LINK), Some(7))
        );
        assert_eq!(subnet.dst.to_string(), "10.1.0.0/24");
        assert_eq!((subnet.gw, subnet.scope), (Some("10.1.0.1".parse().unwrap()), None));
        let h = host_route(&ip("fd00::5/64", Some("fd00::1")), 9);
        assert_eq!((h.dst.to_string(), h.scope, h.oif), ("fd00::5/128".into(), Some(SCOPE_HOST), Some(9)));
    }
}
