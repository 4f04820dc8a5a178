//! The skeleton protocol as a runtime sees it, checked against our binaries and the
//! reference's. `loopback` is the probe because every suite has it; every bad invocation must
//! fail with the right code, print one error object on stdout, and change nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use conformance::{exec, require_root, suites, FakeHost, Netns, Output, Suite};
use serde_json::json;

const CONF: &str = r#"{"cniVersion":"1.0.0","name":"skelnet","type":"loopback"}"#;

struct Call<'a> {
    suite: &'a Suite,
    host: &'a FakeHost,
    ns: &'a Netns,
}

impl Call<'_> {
    fn env(&self, command: &str) -> Vec<(String, String)> {
        vec![
            ("CNI_COMMAND".into(), command.into()),
            ("CNI_CONTAINERID".into(), "ctr1".into()),
            ("CNI_NETNS".into(), self.ns.path()),
            ("CNI_IFNAME".into(), "eth0".into()),
            ("CNI_PATH".into(), self.suite.dir.display().to_string()),
        ]
    }

    fn run(&self, env: &[(String, String)], stdin: &str) -> Output {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        exec(&self.suite.plugin("loopback"), &env, stdin.as_bytes(), Some(&self.host.ns)).unwrap()
    }

    fn with(&self, command: &str, key: &str, value: &str) -> Vec<(String, String)> {
        let mut env: Vec<_> = self.env(command).into_iter().filter(|(k, _)| k != key).collect();
        env.push((key.into(), value.into()));
        env
    }

    fn without(&self, command: &str, key: &str) -> Vec<(String, String)> {
        self.env(command).into_iter().filter(|(k, _)| k != key).collect()
    }

    /// Asserts the failure's code (and message when given) and that `lo` is still down.
    fn fails(&self, what: &str, out: Output, code: u64, msg: Option<&str>) {
        let (got_code, got_msg, _) = out.error().unwrap_or_else(|e| panic!("{} {what}: {e}", self.suite.name));
        assert_eq!(got_code, code, "{} {what}: {got_msg}", self.suite.name);
        if let Some(m) = msg {
            assert_eq!(got_msg, m, "{} {what}", self.suite.name);
        }
        assert!(!lo_up(self.ns), "{} {what}: a failed call changed state", self.suite.name);
    }
}

fn lo_up(ns: &Netns) -> bool {
    let links = ns.ip_json(&["link", "show", "lo"]).unwrap();
    links[0]["flags"].as_array().unwrap().iter().any(|f| f == "UP")
}

fn with_down_lo(f: impl Fn(&Call)) {
    for suite in suites() {
        let host = FakeHost::new().unwrap();
        let ns = host.container().unwrap();
        ns.run("ip", &["link", "set", "lo", "down"]).unwrap();
        f(&Call { suite: &suite, host: &host, ns: &ns });
    }
}

#[test]
fn without_a_command_the_plugin_describes_itself() {
    for suite in suites() {
        let out = exec(&suite.plugin("loopback"), &[], b"", None).unwrap();
        assert!(out.ok(), "{}: {out:?}", suite.name);
        assert!(out.stdout.is_empty(), "{}", suite.name);
        assert!(
            out.stderr.contains("CNI protocol versions supported: 0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0"),
            "{}: {}",
            suite.name,
            out.stderr
        );
    }
}

#[test]
fn version_answers_the_libcni_probe() {
    for suite in suites() {
        // What libcni's GetVersionInfo sends.
        let env = [("CNI_COMMAND", "VERSION"), ("CNI_NETNS", "dummy"), ("CNI_IFNAME", "dummy"), ("CNI_PATH", "dummy")];
        let out = exec(&suite.plugin("loopback"), &env, br#"{"cniVersion":"1.1.0"}"#, None).unwrap();
        assert!(out.ok(), "{}: {out:?}", suite.name);
        let j = out.json().unwrap();
        let versions = j["supportedVersions"].as_array().unwrap();
        for v in ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"] {
            assert!(versions.contains(&json!(v)), "{} lacks {v}", suite.name);
        }
        if !suite.is_reference() {
            assert!(versions.contains(&json!("1.1.0")));
            assert_eq!(j["cniVersion"], "1.1.0", "the spec echoes the input version");
        }
        // No stdin at all (a person at a shell).
        let out = exec(&suite.plugin("loopback"), &[("CNI_COMMAND", "VERSION")], b"", None).unwrap();
        assert!(out.ok() && out.json().is_ok(), "{}: {out:?}", suite.name);
    }
}

#[test]
fn missing_variables_are_named_together() {
    require_root!();
    with_down_lo(|c| {
        let out = c.run(&[("CNI_COMMAND".into(), "ADD".into())], CONF);
        c.fails(
            "ADD without vars",
            out,
            4,
            Some("required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME,CNI_PATH] missing"),
        );
        let out = c.run(&c.without("ADD", "CNI_NETNS"), CONF);
        c.fails("ADD without CNI_NETNS", out, 4, Some("required env variables [CNI_NETNS] missing"));
        let out = c.run(&c.without("CHECK", "CNI_PATH"), CONF);
        c.fails("CHECK without CNI_PATH", out, 4, Some("required env variables [CNI_PATH] missing"));
        let out = c.run(&c.without("DEL", "CNI_CONTAINERID"), CONF);
        c.fails("DEL without CNI_CONTAINERID", out, 4, Some("required env variables [CNI_CONTAINERID] missing"));
    });
}

#[test]
fn invalid_variables_are_refused() {
    require_root!();
    with_down_lo(|c| {
        for id in ["bad id", "-leading", "a/b", "a;b"] {
            let out = c.run(&c.with("ADD", "CNI_CONTAINERID", id), CONF);
            c.fails(&format!("container id {id:?}"), out, 4, Some("invalid characters in containerID"));
        }
        let out = c.run(&c.with("ADD", "CNI_IFNAME", "sixteen-chars-xx"), CONF);
        c.fails("16-byte ifname", out, 4, Some("interface name is too long"));
        for name in ["..", ".", "a/b", "a:b", "a b", "tab\tx"] {
            let out = c.run(&c.with("ADD", "CNI_IFNAME", name), CONF);
            c.fails(&format!("ifname {name:?}"), out, 4, None);
        }
        let out = c.run(&c.with("ADD", "CNI_COMMAND", "FOO"), CONF);
        c.fails("unknown command", out, 4, Some("unknown CNI_COMMAND: FOO"));
    });
}

#[test]
fn bad_configurations_are_refused() {
    require_root!();
    with_down_lo(|c| {
        let env = c.env("ADD");
        c.fails("truncated JSON", c.run(&env, r#"{"cniVersion":"1.0.0","name":"#), 6, None);
        c.fails("empty stdin", c.run(&env, ""), 6, None);
        c.fails(
            "missing name",
            c.run(&env, r#"{"cniVersion":"1.0.0","type":"loopback"}"#),
            7,
            Some("missing network name"),
        );
        c.fails(
            "bad name",
            c.run(&env, r#"{"cniVersion":"1.0.0","name":"bad name","type":"loopback"}"#),
            7,
            Some("invalid characters found in network name"),
        );
        // The config is checked before the command: even an unknown command reports it.
        c.fails("unknown command, bad config", c.run(&c.with("ADD", "CNI_COMMAND", "FOO"), "{}"), 7, None);
    });
}

#[test]
fn unsupported_versions_and_version_gates() {
    require_root!();
    with_down_lo(|c| {
        let out = c.run(&c.env("ADD"), r#"{"cniVersion":"0.3.2","name":"n","type":"loopback"}"#);
        c.fails("unknown version", out, 1, Some("incompatible CNI versions"));
        let out = c.run(&c.env("ADD"), r#"{"cniVersion":"9.0.0","name":"n","type":"loopback"}"#);
        c.fails("future version", out, 1, Some("incompatible CNI versions"));
        let out = c.run(&c.env("CHECK"), r#"{"cniVersion":"0.3.1","name":"n","type":"loopback"}"#);
        c.fails("CHECK at 0.3.1", out, 1, Some("config version does not allow CHECK"));
        if !c.suite.is_reference() {
            // The reference on Debian 12 predates GC and STATUS (it answers "unknown CNI_COMMAND").
            for verb in ["GC", "STATUS"] {
                let out = c.run(&[("CNI_COMMAND".into(), verb.into()), ("CNI_PATH".into(), "/x".into())], CONF);
                c.fails(&format!("{verb} at 1.0.0"), out, 1, Some(&format!("config version does not allow {verb}")));
            }
        }
    });
}

#[test]
fn gc_and_status_need_only_cni_path() {
    for suite in suites().into_iter().filter(|s| !s.is_reference()) {
        let conf = br#"{"cniVersion":"1.1.0","name":"n","type":"loopback"}"#;
        for verb in ["GC", "STATUS"] {
            let out =
                exec(&suite.plugin("loopback"), &[("CNI_COMMAND", verb), ("CNI_PATH", "/x")], conf, None).unwrap();
            assert!(out.ok() && out.stdout.is_empty(), "{verb}: {out:?}");
            let out = exec(&suite.plugin("loopback"), &[("CNI_COMMAND", verb)], conf, None).unwrap();
            assert_eq!(out.error().unwrap().1, "required env variables [CNI_PATH] missing");
        }
    }
}

#[test]
fn own_namespace_is_refused() {
    require_root!();
    for suite in suites().into_iter().filter(|s| !s.is_reference()) {
        let host = FakeHost::new().unwrap();
        let own = host.ns.path();
        let env = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_NETNS", own.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/x"),
        ];
        let out = exec(&suite.plugin("loopback"), &env, CONF.as_bytes(), Some(&host.ns)).unwrap();
        assert_eq!(out.error().unwrap().0, 8);
    }
}

/// `CNI_ARGS` is parsed as the reference's `LoadArgs` does; `host-local` is the probe because it
/// reads `IP=`. Errors change nothing: the store stays empty.
#[test]
fn cni_args_rules() {
    for suite in suites() {
        let dir = std::env::temp_dir().join(conformance::unique("args"));
        let conf = json!({"cniVersion": "1.0.0", "name": "argsnet", "type": "host-local",
            "ipam": {"type": "host-local", "dataDir": dir.display().to_string(), "ranges": [[{"subnet": "10.90.0.0/24"}]]}});
        let path = suite.dir.display().to_string();
        let run = |args: &str| {
            let env = [
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "c1"),
                ("CNI_NETNS", "/x"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", path.as_str()),
                ("CNI_ARGS", args),
            ];
            exec(&suite.plugin("host-local"), &env, conf.to_string().as_bytes(), None).unwrap()
        };
        for bad in ["FOO=bar", "IP", "IP=10.90.0.9=x", "IgnoreUnknown=maybe;IP=10.90.0.9", "IP=10.90.0.9;"] {
            let out = run(bad);
            assert!(out.error().is_ok(), "{} accepted CNI_ARGS {bad:?}: {}", suite.name, out.stdout);
        }
        let stored: Vec<_> = std::fs::read_dir(dir.join("argsnet"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(stored.iter().all(|n| n == "lock"), "{}: {stored:?}", suite.name);
        let out = run("IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.90.0.9");
        assert!(out.ok(), "{}: {out:?}", suite.name);
        assert_eq!(out.json().unwrap()["ips"][0]["address"], "10.90.0.9/24");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
