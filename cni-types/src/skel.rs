//! The plugin skeleton: environment and stdin in, one result or error out.
//!
//! [`run`] validates in the reference skeleton's order (so a runtime sees the same code for the
//! same mistake), enforces the per-verb version gates, calls the [`Plugin`] and prints the result
//! in the configuration's version. It is the only writer to stdout in the workspace, and it takes
//! its environment and streams as parameters so every path is testable in-process.

use crate::error::{
    CniError, DECODING_FAILURE, INCOMPATIBLE_CNI_VERSION, INTERNAL, INVALID_ENVIRONMENT_VARIABLES, INVALID_NETNS,
    INVALID_NETWORK_CONFIG, IO_FAILURE,
};
use crate::result::CniResult;
use crate::version::{self, Version};
use crate::{gojson, limits, validate, NetConf};
use serde_json::Value;
use std::io::{Read, Write};

/// A CNI verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach.
    Add,
    /// Detach.
    Del,
    /// Verify an attachment (≥ 0.4.0).
    Check,
    /// Remove stale resources (≥ 1.1.0).
    Gc,
    /// Report readiness (≥ 1.1.0).
    Status,
    /// Report supported versions.
    Version,
}

impl Command {
    /// Parses a `CNI_COMMAND` value.
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }

    /// The `CNI_COMMAND` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Gc => "GC",
            Command::Status => "STATUS",
            Command::Version => "VERSION",
        }
    }
}

/// Everything a plugin receives for one invocation.
#[derive(Debug, Clone, Default)]
pub struct CmdArgs {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`.
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`.
    pub args: String,
    /// `CNI_PATH`.
    pub path: String,
    /// `CNI_NETNS_OVERRIDE`.
    pub netns_override: String,
    /// The configuration bytes exactly as received (what delegates get).
    pub stdin: Vec<u8>,
    /// The configuration as JSON.
    pub config: Value,
    /// The configuration's `cniVersion` (`0.1.0` when absent, as the reference assumes).
    pub cni_version: String,
}

impl CmdArgs {
    /// Decodes the configuration into a plugin's own type with Go's key matching; a type error
    /// is a decoding failure that names the key.
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, CniError> {
        gojson::from_ref(&self.config)
            .map_err(|e| CniError::new(DECODING_FAILURE, format!("failed to load netconf: {e}")))
    }

    /// The keys every plugin shares.
    pub fn net_conf(&self) -> Result<NetConf, CniError> {
        self.decode()
    }

    /// `prevResult` converted to the current shape, if present.
    pub fn prev_result(&self) -> Result<Option<CniResult>, CniError> {
        // The skeleton left one `prevResult` key, the one Go's decoder would use.
        let prev = self.config.get("prevResult").filter(|v| !v.is_null());
        match prev {
            None => Ok(None),
            Some(v) => CniResult::parse(v.clone(), &self.cni_version)
                .map(Some)
                .map_err(|e| e.context("failed to parse prevResult")),
        }
    }

    /// Whether the runtime asked to skip the own-netns check.
    pub fn netns_override(&self) -> bool {
        self.netns_override == "1" || self.netns_override.eq_ignore_ascii_case("true")
    }
}

/// A CNI plugin: one method per verb. Errors are returned, never printed.
pub trait Plugin {
    /// Name and build, printed to stderr when run without `CNI_COMMAND`.
    fn about(&self) -> String;

    /// The spec versions the plugin accepts.
    fn supported_versions(&self) -> &'static [&'static str] {
        version::ALL
    }

    /// ADD: returns the result in the current shape; the skeleton converts it.
    fn add(&self, args: &CmdArgs) -> Result<CniResult, CniError>;

    /// DEL.
    fn del(&self, args: &CmdArgs) -> Result<(), CniError>;

    /// CHECK.
    fn check(&self, args: &CmdArgs) -> Result<(), CniError>;

    /// GC; the default has nothing to collect.
    fn gc(&self, _args: &CmdArgs) -> Result<(), CniError> {
        Ok(())
    }

    /// STATUS; the default is always ready.
    fn status(&self, _args: &CmdArgs) -> Result<(), CniError> {
        Ok(())
    }
}

/// The process side of one invocation: environment lookup and the three streams.
pub struct Io<'a> {
    /// Returns an environment variable, `None` when unset.
    pub getenv: &'a dyn Fn(&str) -> Option<String>,
    /// Standard input.
    pub stdin: &'a mut dyn Read,
    /// Standard output (the protocol).
    pub stdout: &'a mut dyn Write,
    /// Standard error (logs).
    pub stderr: &'a mut dyn Write,
}

/// Which verbs require which variable, in the reference's order.
const REQUIRED: &[(&str, &[&str])] = &[
    ("CNI_COMMAND", &["ADD", "CHECK", "DEL", "GC", "STATUS"]),
    ("CNI_CONTAINERID", &["ADD", "CHECK", "DEL"]),
    ("CNI_NETNS", &["ADD", "CHECK"]),
    ("CNI_IFNAME", &["ADD", "CHECK", "DEL"]),
    ("CNI_ARGS", &[]),
    ("CNI_PATH", &["ADD", "CHECK", "DEL", "GC", "STATUS"]),
    ("CNI_NETNS_OVERRIDE", &[]),
];

fn pretty(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    // Serialising a Value into memory cannot fail.
    let _ = serde::Serialize::serialize(value, &mut ser);
    out.push(b'\n');
    out
}

/// Runs one invocation of `plugin`; returns the process exit code.
pub fn run(plugin: &dyn Plugin, io: Io<'_>) -> i32 {
    let Io { getenv, stdin, stdout, stderr } = io;
    match dispatch(plugin, getenv, stdin, stderr) {
        Ok(Outcome::Quiet) => 0,
        Ok(Outcome::Print(v)) => match stdout.write_all(&pretty(&v)).and_then(|_| stdout.flush()) {
            Ok(()) => 0,
            Err(e) => {
                let _ = writeln!(stderr, "failed to write result: {e}");
                1
            }
        },
        Err((err, version)) => {
            log::debug!("{} failed: {err}", plugin.about());
            let _ = stdout.write_all(&pretty(&err.to_json(version.as_deref())));
            let _ = stdout.flush();
            1
        }
    }
}

/// Runs `plugin` as the process: real environment and streams. Returns the exit code.
pub fn main(plugin: &dyn Plugin) -> i32 {
    use std::io::IsTerminal;
    let getenv = |k: &str| std::env::var(k).ok();
    let mut stdin_lock = std::io::stdin().lock();
    let mut empty = std::io::empty();
    // VERSION may be typed at a terminal by a person; never wait for input there.
    let is_version = std::env::var("CNI_COMMAND").is_ok_and(|c| c == "VERSION");
    let stdin: &mut dyn Read = if is_version && std::io::stdin().is_terminal() { &mut empty } else { &mut stdin_lock };
    run(
        plugin,
        Io { getenv: &getenv, stdin, stdout: &mut std::io::stdout().lock(), stderr: &mut std::io::stderr().lock() },
    )
}

enum Outcome {
    Quiet,
    Print(Value),
}

type Failure = (CniError, Option<String>);

fn dispatch(
    plugin: &dyn Plugin,
    getenv: &dyn Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
    stderr: &mut dyn Write,
) -> Result<Outcome, Failure> {
    let supported = plugin.supported_versions();
    let cmd_name = getenv("CNI_COMMAND").unwrap_or_default();
    if cmd_name.is_empty() {
        // The reference prints its about text instead of an error when there is no command.
        let _ = writeln!(stderr, "{}", plugin.about());
        let _ = writeln!(stderr, "CNI protocol versions supported: {}", supported.join(", "));
        return Ok(Outcome::Quiet);
    }

    let mut values = Vec::with_capacity(REQUIRED.len());
    let mut missing = Vec::new();
    for (name, required_for) in REQUIRED {
        let value = getenv(name).unwrap_or_default();
        let required = required_for.contains(&cmd_name.as_str());
        if value.is_empty() {
            if required || *name == "CNI_COMMAND" {
                missing.push(*name);
            }
        } else if required {
            let checked = match *name {
                "CNI_CONTAINERID" => validate::container_id(&value),
                "CNI_IFNAME" => validate::interface_name(&value),
                _ => Ok(()),
            };
            checked.map_err(|e| (e, None))?;
        }
        values.push(value);
    }
    if !missing.is_empty() {
        let msg = format!("required env variables [{}] missing", missing.join(","));
        return Err((CniError::new(INVALID_ENVIRONMENT_VARIABLES, msg), None));
    }

    let mut raw = Vec::new();
    // One byte past the cap tells "at the cap" from "over it" without reading the rest.
    let read = stdin.take(limits::MAX_CONFIG_BYTES as u64 + 1).read_to_end(&mut raw);
    if cmd_name == "VERSION" {
        // The spec echoes the input's cniVersion; the libcni probe sends one, a person may not.
        // Go's key rules here too: the version echoed is the one a Go decoder would read.
        let asked = serde_json::from_slice::<Value>(&raw)
            .ok()
            .and_then(|v| match v {
                Value::Object(map) => Some(gojson::canonicalize(map, &["cniVersion"])),
                _ => None,
            })
            .and_then(|m| m.get("cniVersion").and_then(Value::as_str).map(str::to_string))
            .filter(|v| Version::parse(v).is_ok())
            .unwrap_or_else(|| version::CURRENT.to_string());
        return Ok(Outcome::Print(version::version_info(&asked, supported)));
    }
    read.map_err(|e| (CniError::new(IO_FAILURE, format!("error reading from stdin: {e}")), None))?;
    limits::config_size(&raw).map_err(|e| (e, None))?;

    let config = validate_config(&raw).map_err(|e| (e, None))?;
    let cni_version = config_version(&config).map_err(|e| (e, None))?;
    let fail = |e: CniError| (e, Some(cni_version.clone()));

    let Some(command) = Command::parse(&cmd_name) else {
        return Err(fail(CniError::new(INVALID_ENVIRONMENT_VARIABLES, format!("unknown CNI_COMMAND: {cmd_name}"))));
    };

    let args = CmdArgs {
        container_id: values[1].clone(),
        netns: values[2].clone(),
        ifname: values[3].clone(),
        args: values[4].clone(),
        path: values[5].clone(),
        netns_override: values[6].clone(),
        stdin: raw,
        config,
        cni_version: cni_version.clone(),
    };

    let gate = |min: &str, verb: &str| -> Result<(), CniError> {
        if !Version::at_least(&cni_version, min)? {
            return Err(CniError::new(INCOMPATIBLE_CNI_VERSION, format!("config version does not allow {verb}")));
        }
        let mut any = false;
        for v in supported {
            any |= Version::at_least(v, &cni_version)?;
        }
        if !any {
            return Err(CniError::new(INCOMPATIBLE_CNI_VERSION, format!("plugin version does not allow {verb}")));
        }
        Ok(())
    };

    match command {
        Command::Add | Command::Del => {
            version::reconcile(&cni_version, supported).map_err(fail)?;
            // Checked before the plugin runs (the reference checks after), so nothing changes.
            if !args.netns_override() && is_own_netns(&args.netns) {
                return Err(fail(CniError::new(
                    INVALID_NETNS,
                    "plugin's netns and netns from CNI_NETNS should not be the same",
                )));
            }
            if command == Command::Add {
                let result = plugin.add(&args).map_err(fail)?;
                let json = result.to_version_json(&cni_version).map_err(fail)?;
                Ok(Outcome::Print(json))
            } else {
                plugin.del(&args).map_err(fail)?;
                Ok(Outcome::Quiet)
            }
        }
        Command::Check => {
            gate("0.4.0", "CHECK").map_err(fail)?;
            version::reconcile(&cni_version, supported).map_err(fail)?;
            plugin.check(&args).map_err(fail)?;
            Ok(Outcome::Quiet)
        }
        Command::Gc => {
            gate("1.1.0", "GC").map_err(fail)?;
            version::reconcile(&cni_version, supported).map_err(fail)?;
            plugin.gc(&args).map_err(fail)?;
            Ok(Outcome::Quiet)
        }
        Command::Status => {
            gate("1.1.0", "STATUS").map_err(fail)?;
            version::reconcile(&cni_version, supported).map_err(fail)?;
            plugin.status(&args).map_err(fail)?;
            Ok(Outcome::Quiet)
        }
        Command::Version => Err(fail(CniError::new(INTERNAL, "VERSION is answered before dispatch"))),
    }
}

/// Parses the configuration and checks its name, with the reference's codes.
///
/// The spec's keys are decoded once, with Go's rules (the last of several keys that fold to one
/// field wins), and the configuration every plugin sees keeps only that value under the exact key:
/// `{"name":"ok","Name":"../x"}` is checked, and used, as `../x`. A plugin can then look a spec key
/// up any way it likes and still get the value that was validated.
fn validate_config(raw: &[u8]) -> Result<Value, CniError> {
    let value: Value = serde_json::from_slice(raw)
        .map_err(|e| CniError::new(DECODING_FAILURE, format!("error unmarshall network config: {e}")))?;
    let Value::Object(map) = value else {
        return Err(CniError::new(
            DECODING_FAILURE,
            "error unmarshall network config: the configuration must be a JSON object",
        ));
    };
    let map = gojson::canonicalize(map, gojson::fields_of::<NetConf>());
    let name = match map.get("name") {
        None | Some(Value::Null) => "",
        Some(Value::String(s)) => s.as_str(),
        Some(other) => {
            return Err(CniError::new(
                DECODING_FAILURE,
                format!("error unmarshall network config: name: expected a string, got {other}"),
            ))
        }
    };
    if name.is_empty() {
        return Err(CniError::new(INVALID_NETWORK_CONFIG, "missing network name"));
    }
    validate::network_name(name)?;
    Ok(Value::Object(map))
}

/// The configuration's version; `0.1.0` when absent or empty, as the reference decoder assumes.
fn config_version(config: &Value) -> Result<String, CniError> {
    let map = config.as_object();
    match map.and_then(|m| m.get("cniVersion")) {
        None | Some(Value::Null) => Ok("0.1.0".into()),
        Some(Value::String(s)) if s.is_empty() => Ok("0.1.0".into()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(CniError::new(
            DECODING_FAILURE,
            format!("decoding version from network config: cniVersion: expected a string, got {other}"),
        )),
    }
}

/// Whether `path` names the network namespace this process is in (same nsfs inode).
fn is_own_netns(path: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    if path.is_empty() {
        return false;
    }
    match (std::fs::metadata(path), std::fs::metadata("/proc/self/ns/net")) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        // A missing namespace is the plugin's to report (or to tolerate, for DEL).
        _ => false,
    }
}

#[cfg(test)]
mod tests;
