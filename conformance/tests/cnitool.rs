//! The plugins under the real libcni: our `cnitool` (conformance/cnitool, built with Debian's
//! libcni sources) runs config lists by name with libcni's result cache, CHECK and DEL from
//! the cache and version conversion, and chains with reference plugins we do not ship
//! (`firewall`, `tuning`, `bandwidth`), which must accept our results.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use conformance::{cnitool, exec_args, ours, reference, require_root, skip, FakeHost, Netns, Output};
use serde_json::{json, Value};
use std::path::PathBuf;

struct Tool<'a> {
    bin: PathBuf,
    host: &'a FakeHost,
    confdir: PathBuf,
    cni_path: String,
}

impl<'a> Tool<'a> {
    /// cnitool over our plugins, with the reference directory after ours on `CNI_PATH` so
    /// plugins we do not ship (firewall, tuning, bandwidth) come from there.
    fn new(host: &'a FakeHost) -> Option<Tool<'a>> {
        let bin = cnitool()?;
        let confdir = host.dir.join("net.d");
        std::fs::create_dir_all(&confdir).unwrap();
        let mut cni_path = ours().dir.display().to_string();
        match reference() {
            Some(r) => cni_path = format!("{cni_path}:{}", r.dir.display()),
            None => skip("reference plugins missing: chains with firewall/tuning/bandwidth cannot run"),
        }
        Some(Tool { bin, host, confdir, cni_path })
    }

    fn install(&self, file: &str, list: &Value) {
        std::fs::write(self.confdir.join(file), serde_json::to_vec_pretty(list).unwrap()).unwrap();
    }

    fn run(&self, verb: &str, network: &str, ns: &Netns, extra: &[(&str, &str)]) -> Output {
        self.run_path(verb, network, &ns.path(), extra)
    }

    fn run_path(&self, verb: &str, network: &str, path: &str, extra: &[(&str, &str)]) -> Output {
        let confdir = self.confdir.display().to_string();
        let cache = self.host.dir.join("cache").display().to_string();
        let mut env = vec![
            ("NETCONFPATH", confdir.as_str()),
            ("CNI_PATH", self.cni_path.as_str()),
            ("CNI_CACHE_DIR", cache.as_str()),
        ];
        env.extend_from_slice(extra);
        exec_args(&self.bin, &[verb, network, path], &env, b"", Some(&self.host.ns)).unwrap()
    }

    fn ok(&self, verb: &str, network: &str, ns: &Netns, extra: &[(&str, &str)]) -> Output {
        let out = self.run(verb, network, ns, extra);
        assert!(out.ok(), "cnitool {verb} {network}: {}\n{}", out.stderr, out.stdout);
        out
    }

    fn cache_files(&self) -> usize {
        std::fs::read_dir(self.host.dir.join("cache/results")).map(|d| d.count()).unwrap_or(0)
    }
}

fn bridge_list(host: &FakeHost, version: &str, extra_plugins: &[Value]) -> Value {
    let mut plugins = vec![json!({"type": "bridge", "bridge": "cnitbr0", "isGateway": true, "ipMasq": true,
        "hairpinMode": true,
        "ipam": {"type": "host-local", "dataDir": host.dir.join("ipam").display().to_string(),
                 "ranges": [[{"subnet": "10.91.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}})];
    plugins.extend_from_slice(extra_plugins);
    json!({"cniVersion": version, "name": "toolnet", "plugins": plugins})
}

#[test]
fn add_check_del_through_libcni_in_each_version() {
    require_root!();
    for version in ["0.3.1", "0.4.0", "1.0.0"] {
        let host = FakeHost::new().unwrap();
        let Some(tool) = Tool::new(&host) else { return };
        tool.install("10-toolnet.conflist", &bridge_list(&host, version, &[]));
        let c = host.container().unwrap();
        let out = tool.ok("add", "toolnet", &c, &[]);
        let r: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(r["cniVersion"], version);
        assert_eq!(r["ips"][0]["address"], "10.91.0.2/24", "{version}: {r}");
        assert_eq!(tool.cache_files(), 1, "libcni cached the result");
        assert!(c.succeeds("ping", &["-c1", "-W2", "10.91.0.1"]), "{version}: container reaches the gateway");
        if version != "0.3.1" {
            tool.ok("check", "toolnet", &c, &[]);
        }
        tool.ok("del", "toolnet", &c, &[]);
        assert_eq!(tool.cache_files(), 0, "libcni removed the cache after DEL");
        // libcni DELs again without a cache entry: still success.
        tool.ok("del", "toolnet", &c, &[]);
    }
}

#[test]
fn chains_with_reference_firewall_tuning_and_bandwidth() {
    require_root!();
    let host = FakeHost::new().unwrap();
    let Some(tool) = Tool::new(&host) else { return };
    if reference().is_none() {
        return;
    }
    let list = bridge_list(
        &host,
        "1.0.0",
        &[
            // The store in the scratch directory, not the machine's /run/cni/firewall.
            json!({"type": "firewall", "dataDir": host.dir.join("firewall").display().to_string()}),
            json!({"type": "tuning", "sysctl": {"net.core.somaxconn": "512"}, "capabilities": {"mac": true}}),
            json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}),
        ],
    );
    tool.install("10-toolnet.conflist", &list);
    let c = host.container().unwrap();
    let caps = r#"{"mac":"02:00:00:aa:bb:cc","bandwidth":{"ingressRate":1000000,"ingressBurst":100000,"egressRate":1000000,"egressBurst":100000}}"#;
    let out = tool.ok("add", "toolnet", &c, &[("CAP_ARGS", caps)]);
    let r: Value = serde_json::from_str(&out.stdout).unwrap();
    // tuning rewrote the container MAC and said so in the result it passed on.
    assert_eq!(r["interfaces"][2]["mac"], "02:00:00:aa:bb:cc", "{r}");
    assert_eq!(c.run("sysctl", &["-n", "net.core.somaxconn"]).unwrap().trim(), "512");
    // firewall found the container address through our result.
    let filter = host.ns.run("iptables-save", &["-t", "filter"]).unwrap();
    assert!(filter.contains("-A CNI-FORWARD -d 10.91.0.2/32"), "{filter}");
    // bandwidth found the host veth (the entry without a sandbox) and shaped it.
    let veth = r["interfaces"][1]["name"].as_str().unwrap();
    let qdisc = host.ns.run("tc", &["qdisc", "show", "dev", veth]).unwrap();
    assert!(qdisc.contains("tbf"), "{qdisc}");
    tool.ok("check", "toolnet", &c, &[("CAP_ARGS", caps)]);
    tool.ok("del", "toolnet", &c, &[("CAP_ARGS", caps)]);
    let filter = host.ns.run("iptables-save", &["-t", "filter"]).unwrap();
    assert!(!filter.contains("10.91.0.2"), "{filter}");
}

#[test]
fn runtime_quirks_repeated_del_and_static_ips() {
    require_root!();
    let host = FakeHost::new().unwrap();
    let Some(tool) = Tool::new(&host) else { return };
    let mut list = bridge_list(&host, "1.0.0", &[]);
    list["plugins"][0]["capabilities"] = json!({"ips": true});
    tool.install("10-toolnet.conflist", &list);
    let c = host.container().unwrap();
    // A runtime sending the same static address twice, as podman does on reload.
    let out = tool.ok(
        "add",
        "toolnet",
        &c,
        &[
            ("CAP_ARGS", r#"{"ips":["10.91.0.42/24","10.91.0.42/24"]}"#),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web"),
        ],
    );
    let r: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(r["ips"][0]["address"], "10.91.0.42/24");
    tool.ok("del", "toolnet", &c, &[]);
    // The container is gone before the runtime's DEL, which then comes twice.
    let mut gone = host.container().unwrap();
    tool.ok("add", "toolnet", &gone, &[]);
    let path = gone.path();
    gone.delete();
    for _ in 0..2 {
        let out = tool.run_path("del", "toolnet", &path, &[]);
        assert!(out.ok(), "DEL after the netns is gone: {}", out.stderr);
    }
    assert!(!host.ns.run("iptables-save", &["-t", "nat"]).unwrap().contains("toolnet"), "masquerade rules left");
}
