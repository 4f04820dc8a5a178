use super::*;
use crate::net::parse_cidr;
use crate::result::{Interface, IpConfig};
use std::cell::RefCell;
use std::collections::HashMap;

/// Records what it was called with and answers from a script.
#[derive(Default)]
struct Fake {
    calls: RefCell<Vec<(&'static str, CmdArgs)>>,
    fail: Option<CniError>,
    l2_only: bool,
}

impl Fake {
    fn record(&self, verb: &'static str, args: &CmdArgs) -> Result<(), CniError> {
        self.calls.borrow_mut().push((verb, args.clone()));
        match &self.fail {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}

impl Plugin for Fake {
    fn about(&self) -> String {
        "CNI fake plugin v1.0.0".into()
    }
    fn add(&self, args: &CmdArgs) -> Result<CniResult, CniError> {
        self.record("ADD", args)?;
        let mut r = CniResult {
            interfaces: vec![Interface {
                name: args.ifname.clone(),
                sandbox: args.netns.clone(),
                ..Default::default()
            }],
            ..Default::default()
        };
        if !self.l2_only {
            r.ips.push(IpConfig { interface: Some(0), address: parse_cidr("10.0.0.2/24").unwrap(), gateway: None });
        }
        Ok(r)
    }
    fn del(&self, args: &CmdArgs) -> Result<(), CniError> {
        self.record("DEL", args)
    }
    fn check(&self, args: &CmdArgs) -> Result<(), CniError> {
        self.record("CHECK", args)
    }
    fn gc(&self, args: &CmdArgs) -> Result<(), CniError> {
        self.record("GC", args)
    }
    fn status(&self, args: &CmdArgs) -> Result<(), CniError> {
        self.record("STATUS", args)
    }
}

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }
    fn err(&self) -> (u64, String, String) {
        assert_eq!(self.code, 1, "expected failure, stdout {:?}", self.stdout);
        let j = self.json();
        (
            j["code"].as_u64().unwrap(),
            j["msg"].as_str().unwrap().to_string(),
            j.get("details").and_then(Value::as_str).unwrap_or("").to_string(),
        )
    }
}

const ENV_ADD: &[(&str, &str)] = &[
    ("CNI_COMMAND", "ADD"),
    ("CNI_CONTAINERID", "ctr1"),
    ("CNI_NETNS", "/var/run/netns/nonexistent-test"),
    ("CNI_IFNAME", "eth0"),
    ("CNI_PATH", "/opt/cni/bin"),
];

fn invoke(plugin: &Fake, env: &[(&str, &str)], stdin: &str) -> Outcome {
    let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let getenv = move |k: &str| env.get(k).cloned();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = run(plugin, Io { getenv: &getenv, stdin: &mut stdin.as_bytes(), stdout: &mut out, stderr: &mut err });
    Outcome { code, stdout: String::from_utf8(out).unwrap(), stderr: String::from_utf8(err).unwrap() }
}

fn with(
    env: &[(&'static str, &'static str)],
    key: &'static str,
    value: &'static str,
) -> Vec<(&'static str, &'static str)> {
    let mut v: Vec<_> = env.iter().filter(|(k, _)| *k != key).copied().collect();
    v.push((key, value));
    v
}

fn without(env: &[(&'static str, &'static str)], key: &str) -> Vec<(&'static str, &'static str)> {
    env.iter().filter(|(k, _)| *k != key).copied().collect()
}

const CONF: &str = r#"{"cniVersion":"1.0.0","name":"net1","type":"fake"}"#;

#[test]
fn no_command_prints_about_to_stderr_and_succeeds() {
    let o = invoke(&Fake::default(), &[], "");
    assert_eq!(o.code, 0);
    assert!(o.stdout.is_empty());
    assert!(
        o.stderr.starts_with("CNI fake plugin v1.0.0\nCNI protocol versions supported: 0.1.0, 0.2.0"),
        "{}",
        o.stderr
    );
}

#[test]
fn missing_variables_are_listed_together() {
    let o = invoke(&Fake::default(), &[("CNI_COMMAND", "ADD")], CONF);
    assert_eq!(
        o.err(),
        (4, "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME,CNI_PATH] missing".into(), String::new())
    );
    let o = invoke(&Fake::default(), &[("CNI_COMMAND", "DEL")], CONF);
    assert_eq!(o.err().1, "required env variables [CNI_CONTAINERID,CNI_IFNAME,CNI_PATH] missing");
    let o = invoke(&Fake::default(), &[("CNI_COMMAND", "GC")], CONF);
    assert_eq!(o.err().1, "required env variables [CNI_PATH] missing");
    let o = invoke(&Fake::default(), &without(ENV_ADD, "CNI_NETNS"), CONF);
    assert_eq!(o.err().1, "required env variables [CNI_NETNS] missing");
}

#[test]
fn invalid_variables_fail_in_order() {
    let o = invoke(&Fake::default(), &with(ENV_ADD, "CNI_CONTAINERID", "bad id"), CONF);
    assert_eq!(o.err(), (4, "invalid characters in containerID".into(), "bad id".into()));
    let o = invoke(&Fake::default(), &with(ENV_ADD, "CNI_IFNAME", "this-name-is-too-long"), CONF);
    assert_eq!(
        o.err(),
        (4, "interface name is too long".into(), "interface name should be less than 16 characters".into())
    );
    for bad in ["..", "a/b", "a:b", "a b"] {
        let env = with(ENV_ADD, "CNI_IFNAME", Box::leak(bad.to_string().into_boxed_str()));
        assert_eq!(invoke(&Fake::default(), &env, CONF).err().0, 4, "{bad}");
    }
    // An invalid ID is reported before a missing later variable, as the reference does.
    let env = with(&without(ENV_ADD, "CNI_PATH"), "CNI_CONTAINERID", "-x");
    assert_eq!(invoke(&Fake::default(), &env, CONF).err().1, "invalid characters in containerID");
}

#[test]
fn version_answers_with_or_without_input() {
    let env = [("CNI_COMMAND", "VERSION")];
    let o = invoke(&Fake::default(), &env, r#"{"cniVersion":"0.4.0"}"#);
    assert_eq!(o.code, 0);
    assert_eq!(o.json()["cniVersion"], "0.4.0");
    assert_eq!(o.json()["supportedVersions"], serde_json::json!(crate::version::ALL));
    let o = invoke(&Fake::default(), &env, "");
    assert_eq!(o.json()["cniVersion"], "1.1.0");
    // The libcni probe: dummy variables, a 1.1.0 body.
    let probe = [("CNI_COMMAND", "VERSION"), ("CNI_NETNS", "dummy"), ("CNI_IFNAME", "dummy"), ("CNI_PATH", "dummy")];
    let o = invoke(&Fake::default(), &probe, r#"{"cniVersion":"1.1.0"}"#);
    assert_eq!((o.code, o.json()["cniVersion"].as_str()), (0, Some("1.1.0")));
}

#[test]
fn bad_configs() {
    let f = Fake::default();
    assert_eq!(invoke(&f, ENV_ADD, "{nope").err().0, 6);
    assert!(invoke(&f, ENV_ADD, "{nope").err().1.starts_with("error unmarshall network config:"));
    assert_eq!(invoke(&f, ENV_ADD, "[1]").err().0, 6);
    assert_eq!(invoke(&f, ENV_ADD, r#"{"name":5}"#).err().0, 6);
    assert_eq!(
        invoke(&f, ENV_ADD, r#"{"cniVersion":"1.0.0"}"#).err(),
        (7, "missing network name".into(), String::new())
    );
    assert_eq!(
        invoke(&f, ENV_ADD, r#"{"name":"a b"}"#).err(),
        (7, "invalid characters found in network name".into(), "a b".into())
    );
    assert_eq!(invoke(&f, ENV_ADD, r#"{"name":"n","cniVersion":1}"#).err().0, 6);
    assert!(f.calls.borrow().is_empty(), "no handler may run on bad input");
}

#[test]
fn unknown_command_is_checked_after_the_config() {
    let env = with(ENV_ADD, "CNI_COMMAND", "FOO");
    assert_eq!(invoke(&Fake::default(), &env, "{}").err().0, 7);
    assert_eq!(invoke(&Fake::default(), &env, CONF).err(), (4, "unknown CNI_COMMAND: FOO".into(), String::new()));
}

#[test]
fn version_gates() {
    let f = Fake::default();
    let o = invoke(&f, ENV_ADD, r#"{"name":"n","cniVersion":"0.3.2"}"#);
    let (code, msg, details) = o.err();
    assert_eq!((code, msg.as_str()), (1, "incompatible CNI versions"));
    assert!(details.starts_with(r#"config is "0.3.2", plugin supports ["0.1.0""#), "{details}");
    let check = with(ENV_ADD, "CNI_COMMAND", "CHECK");
    assert_eq!(
        invoke(&f, &check, r#"{"name":"n","cniVersion":"0.3.1"}"#).err().1,
        "config version does not allow CHECK"
    );
    assert_eq!(invoke(&f, &check, r#"{"name":"n"}"#).err().1, "config version does not allow CHECK");
    assert_eq!(
        invoke(&f, &check, r#"{"name":"n","cniVersion":"2.0.0"}"#).err().1,
        "plugin version does not allow CHECK"
    );
    assert_eq!(invoke(&f, &check, r#"{"name":"n","cniVersion":"x"}"#).err().0, 6);
    let gc = [("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")];
    assert_eq!(invoke(&f, &gc, CONF).err().1, "config version does not allow GC");
    let status = [("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/opt/cni/bin")];
    assert_eq!(invoke(&f, &status, CONF).err().1, "config version does not allow STATUS");
    assert!(f.calls.borrow().is_empty());
    let v11 = r#"{"name":"n","cniVersion":"1.1.0"}"#;
    assert_eq!(invoke(&f, &gc, v11).code, 0);
    assert_eq!(invoke(&f, &status, v11).code, 0);
    assert_eq!(invoke(&f, &check, r#"{"name":"n","cniVersion":"0.4.0"}"#).code, 0);
    let verbs: Vec<_> = f.calls.borrow().iter().map(|(v, _)| *v).collect();
    assert_eq!(verbs, ["GC", "STATUS", "CHECK"]);
}

#[test]
fn add_prints_the_result_in_the_config_version() {
    for v in crate::version::ALL {
        let f = Fake::default();
        let conf = format!(r#"{{"cniVersion":"{v}","name":"n","type":"fake","extra":{{"kept":true}}}}"#);
        let o = invoke(&f, ENV_ADD, &conf);
        assert_eq!(o.code, 0, "{v}: {}", o.stdout);
        let j = o.json();
        assert_eq!(j["cniVersion"], *v);
        if *v < "0.3.0" {
            assert_eq!(j["ip4"]["ip"], "10.0.0.2/24");
        } else {
            assert_eq!(j["ips"][0]["address"], "10.0.0.2/24");
        }
        let calls = f.calls.borrow();
        let args = &calls[0].1;
        assert_eq!(args.cni_version, *v);
        assert_eq!(args.stdin, conf.as_bytes());
        assert_eq!(args.config["extra"]["kept"], true, "unknown keys reach the plugin");
        assert_eq!((args.container_id.as_str(), args.ifname.as_str()), ("ctr1", "eth0"));
    }
}

#[test]
fn result_that_cannot_be_expressed_is_an_error() {
    let f = Fake { l2_only: true, ..Default::default() };
    let o = invoke(&f, ENV_ADD, r#"{"cniVersion":"0.2.0","name":"n"}"#);
    assert_eq!(o.err(), (999, "cannot convert: no valid IP addresses".into(), String::new()));
}

#[test]
fn plugin_errors_pass_through_with_the_version() {
    let f = Fake { fail: Some(CniError::with_details(11, "busy", "later")), ..Default::default() };
    let o = invoke(&f, ENV_ADD, CONF);
    assert_eq!(o.err(), (11, "busy".into(), "later".into()));
    assert_eq!(o.json()["cniVersion"], "1.0.0");
    assert!(o.stdout.contains("\n    \"code\": 11"), "pretty-printed like the reference: {}", o.stdout);
}

#[test]
fn del_without_netns_reaches_the_plugin() {
    let f = Fake::default();
    let env = with(&without(ENV_ADD, "CNI_NETNS"), "CNI_COMMAND", "DEL");
    let o = invoke(&f, &env, CONF);
    assert_eq!((o.code, o.stdout.as_str()), (0, ""));
    assert_eq!(f.calls.borrow()[0].1.netns, "");
}

#[test]
fn own_netns_is_refused_before_anything_changes() {
    let f = Fake::default();
    let env = with(ENV_ADD, "CNI_NETNS", "/proc/self/ns/net");
    assert_eq!(invoke(&f, &env, CONF).err().0, 8);
    assert!(f.calls.borrow().is_empty());
    let env = with(&env, "CNI_NETNS_OVERRIDE", "true");
    assert_eq!(invoke(&f, &env, CONF).code, 0);
}

#[test]
fn prev_result_is_converted_from_any_version() {
    let f = Fake::default();
    let conf = r#"{"cniVersion":"0.4.0","name":"n","prevResult":{"ips":[{"version":"4","address":"10.9.0.3/16"}]}}"#;
    assert_eq!(invoke(&f, &with(ENV_ADD, "CNI_COMMAND", "CHECK"), conf).code, 0);
    let prev = f.calls.borrow()[0].1.prev_result().unwrap().unwrap();
    assert_eq!(prev.cni_version, "0.4.0");
    assert_eq!(prev.ips[0].address.to_string(), "10.9.0.3/16");
}

#[test]
fn the_name_validated_is_the_name_used() {
    // Go's decoder keeps the last key that folds to `name`; so does the check (the reference: code 7).
    let f = Fake::default();
    for conf in [
        r#"{"name":"hlnet","Name":"../../../victim"}"#,
        r#"{"name":"hlnet","NAME":"/abs/path"}"#,
        r#"{"Name":"hlnet","name":"a/b"}"#,
    ] {
        let e = invoke(&f, ENV_ADD, conf).err();
        assert_eq!((e.0, e.1.as_str()), (7, "invalid characters found in network name"), "{conf}");
    }
    assert!(f.calls.borrow().is_empty(), "no handler may run on bad input");
    // A later `null` leaves the value as Go leaves it; the plugin sees one exact `name` key.
    let o = invoke(&f, ENV_ADD, r#"{"cniVersion":"1.0.0","NAME":"first","name":"net1","Name":null,"type":"fake"}"#);
    assert_eq!(o.code, 0, "{}", o.stdout);
    let calls = f.calls.borrow();
    let config = calls[0].1.config.as_object().unwrap();
    assert_eq!(config.get("name"), Some(&Value::String("net1".into())));
    assert_eq!(config.keys().filter(|k| k.eq_ignore_ascii_case("name")).count(), 1);
    assert_eq!(calls[0].1.net_conf().unwrap().name, "net1");
}

#[test]
fn spec_keys_fold_like_go_everywhere() {
    // U+017F folds to `S` in Go, so `cniVerſion` is a spelling of `cniVersion`.
    let f = Fake::default();
    let e = invoke(&f, ENV_ADD, r#"{"name":"n","cniVer\u017fion":"9.9.9"}"#).err();
    assert_eq!(e.0, 1, "the folded cniVersion is the version used: {e:?}");
    let o = invoke(&f, ENV_ADD, r#"{"name":"n","cniVersion":"0.4.0","CNIVERSION":"1.0.0","type":"fake"}"#);
    assert_eq!(o.json()["cniVersion"], "1.0.0");
    let version = with(ENV_ADD, "CNI_COMMAND", "VERSION");
    let o = invoke(&f, &version, r#"{"cniVersion":"0.4.0","CniVersion":"0.3.1"}"#);
    assert_eq!(o.json()["cniVersion"], "0.3.1");
}

#[test]
fn oversized_configs_are_refused_before_decoding() {
    let f = Fake::default();
    let mut conf = String::from(r#"{"name":"n","junk":["#);
    conf.push_str(&"0,".repeat(crate::limits::MAX_CONFIG_VALUES));
    conf.push_str("0]}");
    let e = invoke(&f, ENV_ADD, &conf).err();
    assert_eq!(e.0, 7);
    assert!(e.1.starts_with("network configuration too large"), "{}", e.1);
    let big = format!(r#"{{"name":"n","junk":"{}"}}"#, "x".repeat(crate::limits::MAX_CONFIG_BYTES));
    assert!(invoke(&f, ENV_ADD, &big).err().1.contains("more than 8388608 bytes"));
    assert!(f.calls.borrow().is_empty());
}
