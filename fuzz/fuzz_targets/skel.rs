//! The whole skeleton over fuzzed stdin: size and value caps, Go-style spec keys, name and version
//! checks, `prevResult` of any version, and the result printed in the configuration's version.
#![no_main]

use cni_types::skel::{run, Io};
use cni_types::{CmdArgs, CniError, CniResult, Plugin};
use libfuzzer_sys::fuzz_target;

/// Decodes everything a plugin may ask for and answers with the previous result.
struct Echo;

impl Plugin for Echo {
    fn about(&self) -> String {
        "CNI fuzz plugin v0.0.0".into()
    }
    fn add(&self, args: &CmdArgs) -> Result<CniResult, CniError> {
        let net = args.net_conf()?;
        // The name the plugin uses must be the one the skeleton validated.
        assert!(cni_types::validate::network_name(&net.name).is_ok(), "unvalidated name {:?}", net.name);
        let _ = cni_types::args::parse(&args.args, &["IP", "MAC"]);
        Ok(args.prev_result()?.unwrap_or_default())
    }
    fn del(&self, args: &CmdArgs) -> Result<(), CniError> {
        args.net_conf().map(drop)
    }
    fn check(&self, args: &CmdArgs) -> Result<(), CniError> {
        args.prev_result().map(drop)
    }
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the verb; the rest is stdin.
    let (verb, stdin) = match data.split_first() {
        Some((b, rest)) => (["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION"][usize::from(*b) % 6], rest),
        None => return,
    };
    let getenv = |k: &str| -> Option<String> {
        Some(
            match k {
                "CNI_COMMAND" => verb,
                "CNI_CONTAINERID" => "fuzz",
                "CNI_NETNS" => "/nonexistent/fuzz",
                "CNI_IFNAME" => "eth0",
                "CNI_PATH" => "/nonexistent",
                "CNI_ARGS" => "IgnoreUnknown=1;IP=10.0.0.2",
                _ => return None,
            }
            .to_string(),
        )
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut input = stdin;
    let code = run(&Echo, Io { getenv: &getenv, stdin: &mut input, stdout: &mut out, stderr: &mut err });
    // Whatever happened, stdout is one JSON document (or nothing for a quiet success).
    if !out.is_empty() {
        serde_json::from_slice::<serde_json::Value>(&out).expect("stdout is JSON");
    }
    assert!(code == 0 || !out.is_empty(), "a failure always prints an error");
});
