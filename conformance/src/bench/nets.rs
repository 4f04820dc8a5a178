//! The networks the scenarios attach containers to, the participants (a plugin suite or the
//! kernel-work floor) and a `Lane`: one participant's private fake host with its containers.
//!
//! A new plugin is benchmarked by adding a [`Net`] to [`NETS`] and naming its key in a scenario.

use super::proc::{exec_measured, tool};
use anyhow::{anyhow, bail, Context, Result};
use conformance::{Attachment, FakeHost, Netns, Runtime, Suite};
use serde_json::{json, Map, Value};
use std::path::Path;

/// The network name every list uses (also the host-local store directory).
pub const NET_NAME: &str = "benchnet";
/// The bridge every bridge network uses.
const BRIDGE: &str = "cnibench0";
/// Room for every container of the growth scenario.
const SUBNET: &str = "10.88.0.0/16";
const GATEWAY: &str = "10.88.0.1";

/// A network configuration list, and what a participant needs to run it.
pub struct Net {
    /// Short key used in the table, the JSON and `--only`.
    pub key: &'static str,
    /// What the network is, for the report.
    pub title: &'static str,
    /// Plugins a suite must ship to run it (a suite lacking one is skipped with a note).
    pub plugins: &'static [&'static str],
    /// The hand-made equivalent of its kernel work, when there is one.
    pub floor: Option<Floor>,
    /// The list, given the fake host's scratch directory.
    pub list: fn(&Path) -> Value,
    /// A caveat printed with the figures when the network runs (empty: none).
    pub note: &'static str,
    /// Capability arguments the runtime passes for container `i` (e.g. `portMappings`).
    pub caps: fn(usize) -> Map<String, Value>,
    /// Why CHECK is not measured for the reference (empty: it is); the reference's failure is
    /// then a known upstream bug, not something to count against a run.
    pub reference_check_broken: &'static str,
}

fn no_caps(_: usize) -> Map<String, Value> {
    Map::new()
}

/// First host port of container 0 in the portmap networks; container `i` publishes `ports`
/// consecutive TCP ports from `PORT_BASE + i * ports`, so no two containers share one.
const PORT_BASE: usize = 20000;
/// Container port of mapping `j` (`CONTAINER_PORT + j`).
const CONTAINER_PORT: usize = 1000;

/// `portMappings` for container `i` with `ports` TCP ports.
fn port_caps(i: usize, ports: usize) -> Map<String, Value> {
    let mappings: Vec<Value> = (0..ports)
        .map(|j| json!({"hostPort": PORT_BASE + i * ports + j, "containerPort": CONTAINER_PORT + j, "protocol": "tcp"}))
        .collect();
    let mut caps = Map::new();
    caps.insert("portMappings".into(), Value::Array(mappings));
    caps
}

/// bridge + host-local with masquerading, then portmap declaring the `portMappings` capability.
fn portmap_list(dir: &Path) -> Value {
    let mut l = bridge_list(dir, true);
    if let Some(plugins) = l["plugins"].as_array_mut() {
        plugins.push(json!({"type": "portmap", "capabilities": {"portMappings": true}}));
    }
    l
}

/// The reference v1.1.1 portmap's CHECK fails for every IPv4-only container.
const PORTMAP_CHECK_BUG: &str = "CHECK not measured for the reference: v1.1.1 portmap CHECK fails for every IPv4-only \
     container (checks ip6tables too; containernetworking/plugins#819)";

/// The k3s chain (flannel delegates to bridge + host-local): bridge with masquerading, portmap
/// and bandwidth, both declaring their capabilities as k3s's conflist does.
fn k3s_list(dir: &Path) -> Value {
    let mut l = portmap_list(dir);
    if let Some(plugins) = l["plugins"].as_array_mut() {
        plugins.push(json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}));
    }
    l
}

/// podman's CNI chain (`containers/common` `libnetwork/cni`): bridge with masquerading, portmap,
/// firewall and an empty tuning, as `podman network create` writes it. The firewall keeps its
/// store in the host's scratch directory (the reference ignores the key).
fn podman_list(dir: &Path) -> Value {
    let mut l = portmap_list(dir);
    if let Some(plugins) = l["plugins"].as_array_mut() {
        plugins.push(json!({"type": "firewall", "dataDir": dir.join("firewall").display().to_string()}));
        plugins.push(json!({"type": "tuning"}));
    }
    l
}

/// One port and the limits a pod's `kubernetes.io/{ingress,egress}-bandwidth: 10M` annotations
/// become (containerd: rate in bit/s, burst the largest the kubelet allows for that rate).
fn k3s_caps(i: usize) -> Map<String, Value> {
    let mut caps = port_caps(i, 1);
    caps.insert(
        "bandwidth".into(),
        json!({"ingressRate": 10_000_000, "ingressBurst": 10_000_000, "egressRate": 10_000_000, "egressBurst": 10_000_000}),
    );
    caps
}

fn bridge_list(dir: &Path, masq: bool) -> Value {
    json!({"cniVersion": "1.0.0", "name": NET_NAME, "plugins": [{
        "type": "bridge", "bridge": BRIDGE, "isGateway": true, "ipMasq": masq,
        "ipam": {"type": "host-local", "dataDir": dir.join("ipam").display().to_string(),
                 "ranges": [[{"subnet": SUBNET}]], "routes": [{"dst": "0.0.0.0/0"}]}}]})
}

/// ptp + host-local with masquerading: a routed veth per container, no bridge.
fn ptp_list(dir: &Path) -> Value {
    json!({"cniVersion": "1.0.0", "name": NET_NAME, "plugins": [{
        "type": "ptp", "ipMasq": true,
        "ipam": {"type": "host-local", "dataDir": dir.join("ipam").display().to_string(),
                 "ranges": [[{"subnet": SUBNET}]], "routes": [{"dst": "0.0.0.0/0"}]}}]})
}

/// Every network a scenario may name.
pub const NETS: &[Net] = &[
    Net {
        key: "bridge-masq",
        title: "bridge + host-local, ipMasq on",
        note: "",
        plugins: &["bridge", "host-local"],
        floor: Some(Floor { masq: true, ports: 0 }),
        list: |d| bridge_list(d, true),
        caps: no_caps,
        reference_check_broken: "",
    },
    Net {
        key: "bridge-masq-nft",
        title: "bridge + host-local, ipMasq on, ipMasqBackend=nftables",
        note: "reference v1.1.1 ignores ipMasqBackend and masquerades with iptables",
        plugins: &["bridge", "host-local"],
        floor: Some(Floor { masq: true, ports: 0 }),
        list: |d| {
            let mut l = bridge_list(d, true);
            l["plugins"][0]["ipMasqBackend"] = json!("nftables");
            l
        },
        caps: no_caps,
        reference_check_broken: "",
    },
    Net {
        key: "bridge",
        title: "bridge + host-local, ipMasq off",
        note: "",
        plugins: &["bridge", "host-local"],
        floor: Some(Floor { masq: false, ports: 0 }),
        list: |d| bridge_list(d, false),
        caps: no_caps,
        reference_check_broken: "",
    },
    Net {
        key: "ptp-masq",
        title: "ptp + host-local, ipMasq on",
        note: "",
        plugins: &["ptp", "host-local"],
        floor: None,
        list: ptp_list,
        caps: no_caps,
        reference_check_broken: "",
    },
    Net {
        key: "loopback",
        title: "loopback",
        note: "",
        plugins: &["loopback"],
        floor: None,
        list: |_| json!({"cniVersion": "1.0.0", "name": NET_NAME, "plugins": [{"type": "loopback"}]}),
        caps: no_caps,
        reference_check_broken: "",
    },
    Net {
        key: "portmap-1",
        title: "bridge + host-local + portmap, ipMasq on, 1 port",
        note: "",
        plugins: &["bridge", "host-local", "portmap"],
        floor: Some(Floor { masq: true, ports: 1 }),
        list: portmap_list,
        caps: |i| port_caps(i, 1),
        reference_check_broken: PORTMAP_CHECK_BUG,
    },
    Net {
        key: "portmap-10",
        title: "bridge + host-local + portmap, ipMasq on, 10 ports",
        note: "",
        plugins: &["bridge", "host-local", "portmap"],
        floor: Some(Floor { masq: true, ports: 10 }),
        list: portmap_list,
        caps: |i| port_caps(i, 10),
        reference_check_broken: PORTMAP_CHECK_BUG,
    },
    Net {
        key: "portmap-10-nft",
        title: "bridge + host-local + portmap, ipMasq on, 10 ports, both nftables backends",
        note: "",
        plugins: &["bridge", "host-local", "portmap"],
        floor: None,
        list: |d| {
            let mut l = portmap_list(d);
            l["plugins"][0]["ipMasqBackend"] = json!("nftables");
            l["plugins"][1]["backend"] = json!("nftables");
            l
        },
        caps: |i| port_caps(i, 10),
        reference_check_broken: "",
    },
    Net {
        key: "portmap-100",
        title: "bridge + host-local + portmap, ipMasq on, 100 ports",
        note: "",
        plugins: &["bridge", "host-local", "portmap"],
        floor: Some(Floor { masq: true, ports: 100 }),
        list: portmap_list,
        caps: |i| port_caps(i, 100),
        reference_check_broken: PORTMAP_CHECK_BUG,
    },
    Net {
        key: "k3s",
        title: "k3s chain: bridge + host-local + portmap (1 port) + bandwidth (both directions)",
        note: "",
        plugins: &["bridge", "host-local", "portmap", "bandwidth"],
        floor: None,
        list: k3s_list,
        caps: k3s_caps,
        reference_check_broken: PORTMAP_CHECK_BUG,
    },
    Net {
        key: "podman",
        title: "podman chain: bridge + host-local + portmap (1 port) + firewall + tuning",
        note: "",
        plugins: &["bridge", "host-local", "portmap", "firewall", "tuning"],
        floor: None,
        list: podman_list,
        caps: |i| port_caps(i, 1),
        reference_check_broken: PORTMAP_CHECK_BUG,
    },
];

/// The network with `key`.
pub fn net(key: &str) -> Result<&'static Net> {
    NETS.iter().find(|n| n.key == key).ok_or_else(|| anyhow!("no network {key}"))
}

/// Who does the work: a plugin suite, or the floor.
#[derive(Debug, Clone)]
pub enum Who {
    /// Plugins driven by the runtime driver.
    Suite(Suite),
    /// The same kernel objects made by `ip -batch` (and `iptables-restore`) directly.
    Floor,
    /// podman's network stack, `netavark setup`/`teardown` (this binary) with the network as podman
    /// 4 describes it, on the same bridge and subnet (bridge networks only).
    Netavark(std::path::PathBuf),
}

impl Who {
    /// `ours`, `reference` or `floor`.
    pub fn label(&self) -> &'static str {
        match self {
            Who::Suite(s) => s.name,
            Who::Floor => "floor",
            Who::Netavark(_) => "netavark",
        }
    }
}

/// The floor's recipe: what a bridge ADD (and portmap ADD) leaves in the kernel, done by the
/// smallest programs at hand, on interfaces with the settings the plugins give theirs (made
/// untimed, as namespace defaults). It is an upper bound of the kernel work: it pays two or three
/// small process starts (`ip`, `ip`, `iptables-restore`) where a plugin needs one.
#[derive(Debug, Clone, Copy)]
pub struct Floor {
    /// Also install the masquerade chain and rules (one `iptables-restore --noflush` batch).
    pub masq: bool,
    /// Also publish this many TCP ports as portmap does (same batch): a per-container chain with
    /// the two hairpin/localhost mark rules and the DNAT rule per port, and entry rules in the
    /// shared `CNI-HOSTPORT-DNAT` chain, 15 ports each (the `multiport` maximum).
    pub ports: usize,
}

/// `multiport` takes at most 15 ports per rule.
const MULTIPORT_MAX: usize = 15;

impl Floor {
    fn setup(self, host: &FakeHost) -> Result<()> {
        let batch =
            format!("link add {BRIDGE} type bridge\naddr add {GATEWAY}/16 dev {BRIDGE}\nlink set {BRIDGE} up\n");
        ip_batch(&host.ns, &batch)?;
        // Host veths made from now on start with `accept_ra=0`, as both suites set it on theirs.
        host.ns.run("sysctl", &["-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.default.accept_ra=0"])?;
        if self.ports > 0 {
            // The shared chains portmap makes on a host's first ADD (untimed here).
            restore(
                &host.ns,
                "*nat\n:CNI-HOSTPORT-DNAT - [0:0]\n:CNI-HOSTPORT-SETMARK - [0:0]\n:CNI-HOSTPORT-MASQ - [0:0]\n\
                 -A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT\n\
                 -A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT\n\
                 -I POSTROUTING 1 -m comment --comment \"CNI portfwd requiring masquerade\" -j CNI-HOSTPORT-MASQ\n\
                 -A CNI-HOSTPORT-SETMARK -m comment --comment \"CNI portfwd masquerade mark\" -j MARK --set-xmark 0x2000/0x2000\n\
                 -A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE\nCOMMIT\n",
            )?;
        }
        Ok(())
    }

    /// Gives the container's interfaces-to-be the settings both suites write on `eth0` (DAD off,
    /// as `enabledad` defaults to false; `arp_notify` on), as the namespace's defaults. It is
    /// untimed, where the plugins pay for it, and it matters for the kernel's work: with DAD on, a
    /// new container's first router solicitation and MLD reports (which the bridge floods to
    /// every port) come a second later, after the ADD; with DAD off they come during it.
    fn prepare_container(c: &Netns) -> Result<()> {
        c.run("sysctl", &["-qw", "net.ipv6.conf.default.accept_dad=0", "net.ipv4.conf.default.arp_notify=1"])?;
        Ok(())
    }

    fn addr(i: usize) -> String {
        let n = i + 2;
        format!("10.88.{}.{}", (n >> 8) & 255, n & 255)
    }

    fn comment(i: usize) -> String {
        format!("-m comment --comment \"name: \\\"{NET_NAME}\\\" id: \\\"bench-{i}\\\"\"")
    }

    /// The host ports of container `i`, as [`port_caps`] publishes them.
    fn host_ports(self, i: usize) -> Vec<usize> {
        (0..self.ports).map(|j| PORT_BASE + i * self.ports + j).collect()
    }

    /// The entry rules of container `i` in `CNI-HOSTPORT-DNAT`, without the `-A`/`-D`.
    fn entry_rules(self, i: usize) -> Vec<String> {
        let ports: Vec<String> = self.host_ports(i).iter().map(usize::to_string).collect();
        ports
            .chunks(MULTIPORT_MAX)
            .map(|run| {
                format!(
                    "CNI-HOSTPORT-DNAT -p tcp {} -m multiport --dports {} -j CNI-FLOOR-DN-{i}",
                    Self::comment(i),
                    run.join(",")
                )
            })
            .collect()
    }

    fn add(self, host: &FakeHost, c: &Netns, i: usize) -> Result<()> {
        let veth = format!("vflr{i}");
        ip_batch(
            &host.ns,
            &format!(
                "link add {veth} type veth peer name eth0 netns {}\nlink set {veth} master {BRIDGE}\nlink set {veth} up\n",
                c.name()
            ),
        )?;
        ip_batch(
            c,
            &format!("addr add {}/16 dev eth0\nlink set eth0 up\nroute add default via {GATEWAY}\n", Self::addr(i)),
        )?;
        let mut batch = String::new();
        if self.masq {
            let (chain, cm) = (format!("CNI-FLOOR-{i}"), Self::comment(i));
            batch.push_str(&format!(
                ":{chain} - [0:0]\n-A {chain} -d {SUBNET} {cm} -j ACCEPT\n\
                 -A {chain} ! -d 224.0.0.0/4 {cm} -j MASQUERADE\n-A POSTROUTING -s {}/32 {cm} -j {chain}\n",
                Self::addr(i)
            ));
        }
        if self.ports > 0 {
            let dn = format!("CNI-FLOOR-DN-{i}");
            batch.push_str(&format!(":{dn} - [0:0]\n"));
            for (j, port) in self.host_ports(i).into_iter().enumerate() {
                batch.push_str(&format!(
                    "-A {dn} -s {SUBNET} -p tcp -m tcp --dport {port} -j CNI-HOSTPORT-SETMARK\n\
                     -A {dn} -s 127.0.0.1/32 -p tcp -m tcp --dport {port} -j CNI-HOSTPORT-SETMARK\n\
                     -A {dn} -p tcp -m tcp --dport {port} -j DNAT --to-destination {}:{}\n",
                    Self::addr(i),
                    CONTAINER_PORT + j
                ));
            }
            for rule in self.entry_rules(i) {
                batch.push_str(&format!("-A {rule}\n"));
            }
        }
        if !batch.is_empty() {
            restore(&host.ns, &format!("*nat\n{batch}COMMIT\n"))?;
        }
        Ok(())
    }

    fn del(self, host: &FakeHost, i: usize) -> Result<()> {
        ip_batch(&host.ns, &format!("link del vflr{i}\n"))?;
        let mut batch = String::new();
        if self.ports > 0 {
            for rule in self.entry_rules(i) {
                batch.push_str(&format!("-D {rule}\n"));
            }
            batch.push_str(&format!("-F CNI-FLOOR-DN-{i}\n-X CNI-FLOOR-DN-{i}\n"));
        }
        if self.masq {
            let (chain, cm) = (format!("CNI-FLOOR-{i}"), Self::comment(i));
            batch
                .push_str(&format!("-D POSTROUTING -s {}/32 {cm} -j {chain}\n-F {chain}\n-X {chain}\n", Self::addr(i)));
        }
        if !batch.is_empty() {
            restore(&host.ns, &format!("*nat\n{batch}COMMIT\n"))?;
        }
        Ok(())
    }
}

fn ip_batch(ns: &Netns, batch: &str) -> Result<()> {
    let m = exec_measured(&tool("ip")?, &["-batch", "-"], &[], batch.as_bytes(), Some(ns))?;
    if !m.out.ok() {
        bail!("ip -batch in {} failed: {}", ns.name(), m.out.stderr.trim());
    }
    Ok(())
}

fn restore(ns: &Netns, batch: &str) -> Result<()> {
    let m = exec_measured(&tool("iptables-restore")?, &["-w", "--noflush"], &[], batch.as_bytes(), Some(ns))?;
    if !m.out.ok() {
        bail!("iptables-restore in {} failed: {}", ns.name(), m.out.stderr.trim());
    }
    Ok(())
}

/// What a participant left in its fake host after DEL of every container.
#[derive(Debug, Clone, Copy, Default)]
pub struct Leftovers {
    /// veth links in the host namespace.
    pub veths: usize,
    /// Addresses still reserved in the host-local store.
    pub reservations: usize,
    /// nat rules and chains naming the network or a per-container chain.
    pub rules: usize,
}

impl Leftovers {
    /// The sum of all three.
    pub fn total(&self) -> usize {
        self.veths + self.reservations + self.rules
    }
}

/// What one ADD returned.
#[derive(Debug, Clone, Default)]
pub struct Added {
    /// The first address of the result.
    pub ip: Option<String>,
    /// (plugin type, ms) of every plugin of a chain, in order (empty for one plugin or the floor).
    pub plugins: Vec<(String, f64)>,
}

/// One participant's private fake host with the containers it attached.
pub struct Lane {
    /// Who does the work.
    pub who: Who,
    net: &'static Net,
    list: Value,
    /// Container namespaces by container number; declared before `host` so they go first.
    containers: Vec<Netns>,
    host: FakeHost,
}

impl Lane {
    /// A fresh fake host for `who` running `net` (the floor gets its bridge up front).
    pub fn new(who: Who, net: &'static Net) -> Result<Lane> {
        let host = FakeHost::new()?;
        if let (Who::Floor, Some(floor)) = (&who, net.floor) {
            floor.setup(&host)?;
        }
        let list = (net.list)(&host.dir);
        Ok(Lane { who, net, list, containers: Vec::new(), host })
    }

    /// `ours`, `reference` or `floor`.
    pub fn label(&self) -> &'static str {
        self.who.label()
    }

    /// Whether this lane runs the reference suite.
    pub fn is_reference(&self) -> bool {
        matches!(&self.who, Who::Suite(s) if s.is_reference())
    }

    /// Creates container namespaces (untimed) until there are `n`.
    pub fn grow_to(&mut self, n: usize) -> Result<()> {
        while self.containers.len() < n {
            super::proc::check_stop()?;
            let c = self.host.container()?;
            if matches!(self.who, Who::Floor) {
                Floor::prepare_container(&c)?;
            }
            self.containers.push(c);
        }
        Ok(())
    }

    fn container(&self, i: usize) -> Result<&Netns> {
        self.containers.get(i).with_context(|| format!("container {i} was not created"))
    }

    fn attachment(&self, i: usize) -> Result<Attachment> {
        let mut att = Attachment::new(&format!("bench-{i}"), self.container(i)?);
        att.caps = (self.net.caps)(i);
        Ok(att)
    }

    fn runtime<'a>(&'a self, suite: &Suite) -> Runtime<'a> {
        Runtime::new(suite, &self.host.ns, self.host.dir.clone())
    }

    fn floor(&self) -> Result<Floor> {
        self.net.floor.with_context(|| format!("{} has no floor recipe", self.net.key))
    }

    /// ADD of container `i`: the first address of the result, when there is one, and how long
    /// each plugin of the list took (ms; a one-plugin list and the floor report none).
    pub fn add(&self, i: usize) -> Result<Added> {
        match &self.who {
            Who::Suite(s) => {
                let (r, times) = self.runtime(s).add_list_timed(&self.list, &self.attachment(i)?)?;
                let plugins = if times.len() > 1 {
                    times.into_iter().map(|(ty, d)| (ty, d.as_secs_f64() * 1e3)).collect()
                } else {
                    Vec::new()
                };
                Ok(Added { ip: r["ips"][0]["address"].as_str().map(str::to_string), plugins })
            }
            Who::Floor => {
                self.floor()?.add(&self.host, self.container(i)?, i)?;
                Ok(Added { ip: Some(format!("{}/16", Floor::addr(i))), plugins: Vec::new() })
            }
            Who::Netavark(binary) => {
                let out = self.netavark(binary, "setup", i)?;
                let reply: Value =
                    serde_json::from_str(&out).with_context(|| format!("netavark setup printed {out}"))?;
                let ip = reply[NET_NAME]["interfaces"]["eth0"]["subnets"][0]["ipnet"].as_str().map(str::to_string);
                Ok(Added { ip, plugins: Vec::new() })
            }
        }
    }

    /// Runs `netavark --config <dir> -f <options> <command> <netns>` in the fake host, with the
    /// network options podman 4 passes for container `i` (its address chosen by podman, as here).
    fn netavark(&self, binary: &Path, command: &str, i: usize) -> Result<String> {
        let Some(floor) = self.net.floor.filter(|f| f.ports == 0) else {
            bail!("{}: netavark runs only the bridge networks without ports", self.net.key)
        };
        let options = json!({
            "container_id": format!("{:0>64x}", i + 1),
            "container_name": format!("bench-{i}"),
            "networks": {NET_NAME: {"interface_name": "eth0", "static_ips": [Floor::addr(i)]}},
            "network_info": {NET_NAME: {
                "name": NET_NAME, "id": "b".repeat(64), "driver": "bridge", "network_interface": BRIDGE,
                "subnets": [{"subnet": SUBNET, "gateway": GATEWAY}],
                "ipv6_enabled": false, "internal": !floor.masq, "dns_enabled": false}},
        });
        let file = self.host.dir.join(format!("netavark-{i}.json"));
        std::fs::write(&file, options.to_string())?;
        let config = self.host.dir.join("netavark");
        std::fs::create_dir_all(&config)?;
        let (config, file) = (config.display().to_string(), file.display().to_string());
        let netns = self.container(i)?.path();
        let args = ["--config", config.as_str(), "-f", file.as_str(), command, netns.as_str()];
        let out = conformance::exec_args(binary, &args, &[], b"", Some(&self.host.ns))?;
        if !out.ok() {
            bail!("netavark {command} failed ({}): {}{}", out.code, out.stdout.trim(), out.stderr.trim());
        }
        Ok(out.stdout)
    }

    /// Whether CHECK is measured for this participant: the floor has nothing to check, and the
    /// reference is left out where its CHECK is known to fail ([`Net::reference_check_broken`]).
    pub fn can_check(&self) -> bool {
        match &self.who {
            Who::Suite(s) => !s.is_reference() || self.net.reference_check_broken.is_empty(),
            Who::Floor | Who::Netavark(_) => false,
        }
    }

    /// CHECK of container `i`.
    pub fn check(&self, i: usize) -> Result<()> {
        match &self.who {
            Who::Suite(s) => self.runtime(s).check_list(&self.list, &self.attachment(i)?),
            Who::Floor | Who::Netavark(_) => Ok(()),
        }
    }

    /// DEL of container `i`.
    pub fn del(&self, i: usize) -> Result<()> {
        match &self.who {
            Who::Suite(s) => self.runtime(s).del_list(&self.list, &self.attachment(i)?),
            Who::Floor => self.floor()?.del(&self.host, i),
            Who::Netavark(binary) => self.netavark(binary, "teardown", i).map(drop),
        }
    }

    /// Runs one plugin of the list directly for container `i`, measuring its peak RSS.
    pub fn invoke_measured(
        &self,
        plugin: &str,
        command: &str,
        i: usize,
        conf: &Value,
    ) -> Result<super::proc::Measured> {
        let Who::Suite(suite) = &self.who else { bail!("the floor runs no plugin") };
        let id = format!("bench-{i}");
        let netns = self.container(i)?.path();
        let path = suite.dir.display().to_string();
        let env = [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", id.as_str()),
            ("CNI_NETNS", netns.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", ""),
            ("CNI_PATH", path.as_str()),
        ];
        exec_measured(&suite.plugin(plugin), &[], &env, conf.to_string().as_bytes(), Some(&self.host.ns))
    }

    /// The list this lane runs.
    pub fn list(&self) -> &Value {
        &self.list
    }

    /// The fake host's scratch directory.
    pub fn dir(&self) -> &Path {
        &self.host.dir
    }

    /// Counts what is left in the fake host after every container was deleted.
    pub fn leftovers(&self) -> Result<Leftovers> {
        // bandwidth's ifbs count as the veths they shape.
        let veths = self.host.ns.ip_json(&["link", "show", "type", "veth"])?.as_array().map_or(0, Vec::len)
            + self.host.ns.ip_json(&["link", "show", "type", "ifb"])?.as_array().map_or(0, Vec::len);
        let store = self.host.dir.join("ipam").join(NET_NAME);
        let reservations = std::fs::read_dir(store)
            .map(|d| {
                d.flatten().filter(|e| e.file_name().to_string_lossy().parse::<std::net::IpAddr>().is_ok()).count()
            })
            .unwrap_or(0);
        // portmap's shared CNI-HOSTPORT-* chains (and their jumps) stay by design in both suites;
        // per-container chains (CNI-<hash>, CNI-DN-<hash>, CNI-FLOOR-*) and rules naming the
        // network must not.
        let ours = |l: &&str| {
            l.contains(NET_NAME)
                || (l.starts_with(":CNI-") && !l.starts_with(":CNI-HOSTPORT-"))
                || l.contains("CNI-DN-")
                || l.contains("CNI-FLOOR")
        };
        let ipt = self.host.ns.run("iptables-save", &["-t", "nat"]).unwrap_or_default();
        let nft = self.host.ns.run("nft", &["list", "ruleset"]).unwrap_or_default();
        // Native nftables rules (ipMasqBackend=nftables) name no network, only their verdict.
        let nft_rules = nft.lines().filter(|l| l.contains(NET_NAME) || l.contains("masquerade comment")).count();
        let rules = ipt.lines().filter(ours).count().max(nft_rules);
        Ok(Leftovers { veths, reservations, rules })
    }
}
