//! Every file in `examples-conf/` is run as a user would run it: through our `cnitool` over
//! the real libcni when libcni knows the version (and through our driver for 1.1.0), in a fake
//! host, with real traffic, then CHECK and DEL, leaving nothing behind. State paths are moved
//! into the test's scratch directory so the machine's own /var/lib/cni is never touched.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use conformance::{
    cnitool, exec_args, ours, reference, require_root, skip, Attachment, FakeHost, Netns, Runtime, Suite,
};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn examples() -> Vec<(String, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples-conf");
    let mut v: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("conflist"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// A plugin directory holding ours, and the reference's plugins we do not ship.
fn plugin_dir(host: &FakeHost) -> Suite {
    let dir = host.dir.join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    let mut dirs = vec![ours().dir];
    dirs.extend(reference().map(|r| r.dir));
    for d in dirs {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let target = dir.join(e.file_name());
            if e.path().is_file() && !target.exists() && is_executable(&e.path()) {
                std::os::unix::fs::symlink(e.path(), target).unwrap();
            }
        }
    }
    Suite { name: "ours", dir }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata().is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
}

/// Moves host-local's and firewall's state into the scratch directory.
fn localise(list: &Value, host: &FakeHost) -> Value {
    let mut list = list.clone();
    for p in list["plugins"].as_array_mut().unwrap() {
        if p["ipam"]["type"] == "host-local" {
            p["ipam"]["dataDir"] = json!(host.dir.join("ipam").display().to_string());
        }
        if p["type"] == "firewall" {
            p["dataDir"] = json!(host.dir.join("firewall").display().to_string());
        }
    }
    list
}

fn has(list: &Value, ty: &str) -> bool {
    list["plugins"].as_array().unwrap().iter().any(|p| p["type"] == ty)
}

fn veths(host: &FakeHost) -> usize {
    let j = host.ns.ip_json(&["link", "show"]).unwrap();
    j.as_array().unwrap().iter().filter(|l| l["ifname"].as_str().unwrap_or("").starts_with("veth")).count()
}

fn reservations(host: &FakeHost) -> usize {
    let nets = std::fs::read_dir(host.dir.join("ipam")).into_iter().flatten().flatten();
    nets.map(|net| conformance::reserved_addresses(&net.path()).len()).sum()
}

/// Retries a check for a few seconds (IPv6 addresses on the bridge settle asynchronously).
fn eventually(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..40 {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    false
}

/// Traffic a user of this example expects to work.
fn exercise(
    file: &str,
    list: &Value,
    result: &Value,
    c: &Netns,
    c2: Option<&Netns>,
    host: &FakeHost,
    port: Option<u16>,
) {
    let ips: Vec<(String, Option<String>)> = result["ips"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| (i["address"].as_str().unwrap().to_string(), i["gateway"].as_str().map(str::to_string)))
                .collect()
        })
        .unwrap_or_default();
    if ips.is_empty() {
        // Layer 2 only: give both containers addresses by hand and talk across the bridge.
        let c2 = c2.expect("second container");
        c.run("ip", &["addr", "add", "192.0.2.10/24", "dev", "eth0"]).unwrap();
        c2.run("ip", &["addr", "add", "192.0.2.11/24", "dev", "eth0"]).unwrap();
        assert!(eventually(|| c.succeeds("ping", &["-c1", "-W1", "192.0.2.11"])), "{file}: L2 neighbours");
        return;
    }
    for (addr, gw) in &ips {
        let Some(gw) = gw else { continue };
        let v6 = addr.contains(':');
        let args = if v6 { vec!["-6", "-c1", "-W1", gw.as_str()] } else { vec!["-c1", "-W1", gw.as_str()] };
        assert!(eventually(|| c.succeeds("ping", &args)), "{file}: container cannot reach gateway {gw}");
    }
    if let Some(port) = port {
        let _srv = c.tcp_server(8080, "hello-example").unwrap();
        let gw = ips.iter().find_map(|(a, g)| (!a.contains(':')).then(|| g.clone()).flatten()).unwrap();
        assert_eq!(
            host.ns.tcp_get(&gw, port).as_deref(),
            Some("hello-example"),
            "{file}: published port {port} via {gw}"
        );
    }
    let _ = list;
}

fn caps_for(list: &Value, port: u16) -> Value {
    if has(list, "portmap") {
        json!({"portMappings": [{"hostPort": port, "containerPort": 8080, "protocol": "tcp"}]})
    } else {
        json!({})
    }
}

#[test]
fn every_example_config_works() {
    require_root!();
    let mut ran = 0;
    for (i, (file, raw)) in examples().into_iter().enumerate() {
        if has(&raw, "rootless-wrapper") {
            // Run as an unprivileged user by the rootless tests.
            continue;
        }
        let port = 18100 + i as u16;
        let host = FakeHost::new().unwrap();
        let suite = plugin_dir(&host);
        for p in raw["plugins"].as_array().unwrap() {
            let ty = p["type"].as_str().unwrap();
            assert!(suite.has(ty), "{file}: plugin {ty} is not available");
        }
        let list = localise(&raw, &host);
        let caps = caps_for(&list, port);
        let (c, c2) = (host.container().unwrap(), host.container().unwrap());
        let rt = Runtime::new(&suite, &host.ns, host.dir.join("driver-cache"));
        let mut att = Attachment::new("example-a", &c);
        att.caps = caps.as_object().cloned().unwrap_or_default();
        let mut att2 = Attachment::new("example-b", &c2);
        att2.caps = json!({}).as_object().cloned().unwrap_or_default();

        let version = cni_types::NetConfList::parse(list.to_string().as_bytes()).unwrap().effective_version();
        // Debian's libcni 1.1.2 knows versions up to 1.0.0; 1.1.0 lists go through our driver.
        let tool = if version.as_str() <= "1.0.0" { cnitool() } else { None };
        let result = match &tool {
            Some(bin) => {
                let confdir = host.dir.join("net.d");
                std::fs::create_dir_all(&confdir).unwrap();
                std::fs::write(confdir.join(&file), serde_json::to_vec(&list).unwrap()).unwrap();
                let name = list["name"].as_str().unwrap().to_string();
                let run = |verb: &str, ns: &Netns, id: &str, caps: &Value| {
                    let (confdir, cache, path) = (
                        confdir.display().to_string(),
                        host.dir.join("cache").display().to_string(),
                        suite.dir.display().to_string(),
                    );
                    let caps = caps.to_string();
                    let env = [
                        ("NETCONFPATH", confdir.as_str()),
                        ("CNI_PATH", path.as_str()),
                        ("CNI_CACHE_DIR", cache.as_str()),
                        ("CNI_CONTAINERID", id),
                        ("CAP_ARGS", caps.as_str()),
                    ];
                    let nspath = ns.path();
                    let out = exec_args(bin, &[verb, &name, &nspath], &env, b"", Some(&host.ns)).unwrap();
                    assert!(out.ok(), "{file}: cnitool {verb}: {}", out.stderr);
                    out
                };
                let r: Value = serde_json::from_str(&run("add", &c, "example-a", &caps).stdout).unwrap();
                run("add", &c2, "example-b", &json!({}));
                exercise(&file, &list, &r, &c, Some(&c2), &host, has(&list, "portmap").then_some(port));
                if version.as_str() >= "0.4.0" {
                    run("check", &c, "example-a", &caps);
                }
                run("del", &c, "example-a", &caps);
                run("del", &c2, "example-b", &json!({}));
                r
            }
            None => {
                if version.as_str() <= "1.0.0" {
                    skip("cnitool unavailable: examples run through our driver only");
                }
                let r = rt.add_list(&list, &att).unwrap_or_else(|e| panic!("{file}: ADD: {e}"));
                rt.add_list(&list, &att2).unwrap_or_else(|e| panic!("{file}: ADD: {e}"));
                exercise(&file, &list, &r, &c, Some(&c2), &host, has(&list, "portmap").then_some(port));
                rt.check_list(&list, &att).unwrap_or_else(|e| panic!("{file}: CHECK: {e}"));
                if version.as_str() >= "1.1.0" {
                    rt.status_list(&list).unwrap_or_else(|e| panic!("{file}: STATUS: {e}"));
                }
                rt.del_list(&list, &att).unwrap_or_else(|e| panic!("{file}: DEL: {e}"));
                rt.gc_list(&list, &[]).unwrap_or_else(|e| panic!("{file}: GC: {e}"));
                r
            }
        };
        assert!(result.is_object(), "{file}: {result}");
        if has(&list, "bridge") || has(&list, "ptp") {
            assert_eq!(veths(&host), 0, "{file}: veths left");
        }
        assert_eq!(reservations(&host), 0, "{file}: reservations left");
        let nat = host.ns.run("iptables-save", &["-t", "nat"]).unwrap_or_default();
        assert!(
            !nat.contains("CNI-DN-") && !nat.contains(&format!("name: \\\"{}\\\"", list["name"].as_str().unwrap())),
            "{file}: rules left: {nat}"
        );
        ran += 1;
        let _: Option<PathBuf> = None;
    }
    assert!(ran > 0, "no example configs found");
}
