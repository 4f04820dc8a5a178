//! The backend chosen by itself (issue 14): a configuration that names no backend gets iptables
//! where iptables works and nftables where only nftables works, as the reference at HEAD decides
//! (`SupportsIPTables`/`SupportsNFTables`), and a clear error naming both where neither works.
//!
//! "A host without iptables" is our plugins run through wrappers that enter a private mount
//! namespace in which every `iptables*`/`ip6tables*`/`xtables*` program under `/usr/sbin` is
//! covered by `/dev/null`; the machine's own binaries are never touched. "A host where nftables does
//! not work either" adds a user namespace, whose root has no `CAP_NET_ADMIN` over the fake host's
//! network namespace, so the kernel refuses every nf_tables request.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use conformance::{build_config, require_root, Attachment, FakeHost, Netns, Runtime, Suite};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const BRIDGE: &str = "cnibc0";
const NET: &str = "bcnet";

/// A suite whose `plugins` run the real ones of `suite` with the iptables programs hidden (and,
/// with `no_caps`, inside a user namespace without rights over the network namespace).
fn without_iptables(suite: &Suite, dir: &Path, no_caps: bool) -> Suite {
    std::fs::create_dir_all(dir).unwrap();
    let unshare = if no_caps { "unshare -U -r -m" } else { "unshare -m" };
    for name in ["bridge", "portmap", "host-local"] {
        let real = suite.plugin(name);
        let script = format!(
            "#!/bin/sh\nexec {unshare} sh -c 'for f in /usr/sbin/iptables* /usr/sbin/ip6tables* /usr/sbin/xtables*; do \
             [ -e \"$f\" ] && mount --bind /dev/null \"$f\"; done; exec \"$0\" \"$@\"' {} \"$@\"\n",
            real.display()
        );
        let path = dir.join(name);
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    Suite { name: suite.name, dir: dir.to_path_buf() }
}

/// bridge (gateway, masquerade) + host-local + portmap, naming no backend anywhere.
fn list(host: &FakeHost) -> Value {
    let bridge = json!({"type": "bridge", "bridge": BRIDGE, "isGateway": true, "ipMasq": true,
        "ipam": {"type": "host-local", "dataDir": host.dir.join("ipam").display().to_string(),
                 "ranges": [[{"subnet": "10.93.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}});
    let portmap = json!({"type": "portmap", "capabilities": {"portMappings": true}});
    json!({"cniVersion": "1.1.0", "name": NET, "plugins": [bridge, portmap]})
}

/// A link to a second namespace standing for the rest of the world: host 198.51.100.1, peer .2.
fn outside(host: &FakeHost) -> Netns {
    let o = Netns::new("o").unwrap();
    host.ns.run("ip", &["link", "add", "upl0", "type", "veth", "peer", "name", "upl1", "netns", o.name()]).unwrap();
    host.ns.run("ip", &["addr", "add", "198.51.100.1/24", "dev", "upl0"]).unwrap();
    host.ns.run("ip", &["link", "set", "upl0", "up"]).unwrap();
    o.run("ip", &["addr", "add", "198.51.100.2/24", "dev", "upl1"]).unwrap();
    o.run("ip", &["link", "set", "upl1", "up"]).unwrap();
    o
}

/// A TCP server on `port` answering each connection with the peer's address.
fn echo_peer(ns: &Netns, port: u16) -> conformance::Background {
    let code = format!(
        "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         s.bind(('0.0.0.0',{port}))\ns.listen(8)\nwhile True:\n c,a=s.accept()\n c.sendall(a[0].encode())\n c.close()\n"
    );
    let bg = ns.spawn("python3", &["-c", &code]).unwrap();
    for _ in 0..250 {
        if ns.run("ss", &["-Hltn", &format!("sport = :{port}")]).is_ok_and(|o| !o.trim().is_empty()) {
            return bg;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("server on {port} did not start");
}

fn nft(host: &FakeHost, args: &[&str]) -> String {
    host.ns.run("nft", args).unwrap_or_default()
}

#[test]
fn a_host_without_iptables_gets_masquerade_and_ports_through_nftables() {
    require_root!();
    let mut suites = vec![conformance::ours()];
    suites.extend(conformance::reference_head());
    for real in suites {
        let host = FakeHost::new().unwrap();
        let suite = without_iptables(&real, &host.dir.join("bin"), false);
        let rt = Runtime::new(&suite, &host.ns, host.dir.clone());
        let l = list(&host);
        let c = host.container().unwrap();
        let mut att = Attachment::new("ctr-noipt", &c);
        att.caps.insert("portMappings".into(), json!([{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]));
        let n = suite.name;
        rt.add_list(&l, &att).unwrap_or_else(|e| panic!("{n}: ADD without iptables: {e}"));
        let masq = nft(&host, &["list", "table", "inet", "cni_plugins_masquerade"]);
        assert!(masq.contains("ip saddr 10.93.0.2 ip daddr != 10.93.0.0/24 masquerade"), "{n}:\n{masq}");
        let ports = nft(&host, &["list", "table", "ip", "cni_hostport"]);
        assert!(ports.contains("tcp dport 18080 dnat to 10.93.0.2:80 comment \"ctr-noipt\""), "{n}:\n{ports}");
        let saved = host.ns.run("iptables-save", &["-t", "nat"]).unwrap();
        assert!(!saved.contains("CNI-"), "{n}: iptables rules written:\n{saved}");

        let out = outside(&host);
        // Masquerade: the world sees the host's address, not the container's.
        let _peer = echo_peer(&out, 8000);
        assert_eq!(c.tcp_get("198.51.100.2", 8000).as_deref(), Some("198.51.100.1"), "{n}: masquerade");
        // The published port: PREROUTING DNAT from the world into the container.
        let _web = c.tcp_server(80, "web").unwrap();
        assert_eq!(out.tcp_get("198.51.100.1", 18080).as_deref(), Some("web"), "{n}: port mapping");

        rt.check_list(&l, &att).unwrap_or_else(|e| panic!("{n}: CHECK: {e}"));
        rt.del_list(&l, &att).unwrap_or_else(|e| panic!("{n}: DEL: {e}"));
        let masq = nft(&host, &["list", "table", "inet", "cni_plugins_masquerade"]);
        assert!(!masq.contains("masquerade comment"), "{n}: masquerade left after DEL:\n{masq}");
        let ports = nft(&host, &["list", "table", "ip", "cni_hostport"]);
        assert!(!ports.contains("ctr-noipt"), "{n}: port mapping left after DEL:\n{ports}");
        assert_eq!(out.tcp_get("198.51.100.1", 18080), None, "{n}: still forwarded after DEL");
        rt.del_list(&l, &att).unwrap_or_else(|e| panic!("{n}: second DEL: {e}"));
    }
}

#[test]
fn a_host_where_neither_works_gets_an_error_naming_both_and_no_change() {
    require_root!();
    let host = FakeHost::new().unwrap();
    let suite = without_iptables(&conformance::ours(), &host.dir.join("bin"), true);
    let rt = Runtime::new(&suite, &host.ns, host.dir.clone());
    let l = list(&host);
    let c = host.container().unwrap();
    let att = Attachment::new("ctr-none", &c);
    let links_before = host.ns.run("ip", &["-o", "link"]).unwrap();

    let bridge = build_config(&l["plugins"][0], NET, "1.1.0", None, &att.caps);
    let out = rt.invoke("bridge", "ADD", &att, &bridge).unwrap();
    let (code, msg, _) = out.error().unwrap();
    assert_eq!(code, 50, "{msg}");
    assert!(msg.contains("iptables") && msg.contains("nftables"), "bridge: {msg}");

    let prev = json!({"cniVersion": "1.1.0", "ips": [{"address": "10.93.0.2/24"}]});
    let mut caps = att.caps.clone();
    caps.insert("portMappings".into(), json!([{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]));
    let portmap = build_config(&l["plugins"][1], NET, "1.1.0", Some(&prev), &caps);
    let out = rt.invoke("portmap", "ADD", &att, &portmap).unwrap();
    let (code, msg, _) = out.error().unwrap();
    assert_eq!(code, 50, "{msg}");
    assert!(msg.contains("neither iptables nor nftables"), "portmap: {msg}");

    assert_eq!(host.ns.run("ip", &["-o", "link"]).unwrap(), links_before, "a link changed");
    assert!(!nft(&host, &["list", "tables"]).contains("cni_"), "an nftables table appeared");
}
