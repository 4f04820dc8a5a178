//! Delegation: find a plugin on `CNI_PATH`, run it with our environment and configuration, and
//! return its result or its error unchanged (spec section 4).

use crate::child;
use crate::error::{CniError, INTERNAL, INVALID_NETWORK_CONFIG};
use crate::result::CniResult;
use crate::skel::{CmdArgs, Command};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

/// How long a delegated plugin may run unless `CNI_DELEGATE_TIMEOUT` (seconds) says otherwise:
/// far above what an IPAM plugin takes (milliseconds), and below what runtimes allow a whole ADD.
pub const DELEGATE_TIMEOUT: Duration = Duration::from_secs(60);

/// How a deadline error ends.
const KILLED: &str = "and was killed";

/// The environment variable that overrides [`DELEGATE_TIMEOUT`], in seconds.
pub const DELEGATE_TIMEOUT_ENV: &str = "CNI_DELEGATE_TIMEOUT";

/// Finds `plugin` in the colon-separated directory list `cni_path`.
pub fn find_in_path(plugin: &str, cni_path: &str) -> Result<PathBuf, CniError> {
    if plugin.is_empty() {
        return Err(CniError::internal("no plugin name provided"));
    }
    if plugin.contains('/') || plugin.contains('\\') || plugin == "." || plugin == ".." {
        return Err(CniError::new(
            INVALID_NETWORK_CONFIG,
            format!("invalid plugin name {plugin:?}: it must not contain a path"),
        ));
    }
    let dirs: Vec<&str> = cni_path.split(':').filter(|d| !d.is_empty()).collect();
    if dirs.is_empty() {
        return Err(CniError::internal("no paths provided"));
    }
    for dir in &dirs {
        let candidate = PathBuf::from(dir).join(plugin);
        if std::fs::metadata(&candidate).is_ok_and(|m| m.is_file()) {
            return Ok(candidate);
        }
    }
    Err(CniError::internal(format!("failed to find plugin {plugin:?} in path [{}]", dirs.join(" "))))
}

/// A delegate that has been started and not yet waited for.
pub struct Running {
    child: std::process::Child,
    path: PathBuf,
    /// Its type, which errors name.
    plugin_type: String,
    /// The part of its stdin the pipe did not take at start.
    rest: Vec<u8>,
    started: Instant,
}

/// Starts plugin `plugin_type` for `command` with the caller's `CNI_*` values and `stdin`; the
/// caller can do other work while it runs and collect it with [`Running::finish`].
pub fn start(plugin_type: &str, command: Command, args: &CmdArgs, stdin: &[u8]) -> Result<Running, CniError> {
    let path = find_in_path(plugin_type, &args.path)?;
    let mut child = Process::new(&path)
        .env("CNI_COMMAND", command.as_str())
        .env("CNI_CONTAINERID", &args.container_id)
        .env("CNI_NETNS", &args.netns)
        .env("CNI_IFNAME", &args.ifname)
        .env("CNI_ARGS", &args.args)
        .env("CNI_PATH", &args.path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that a deadline kills whatever it started too.
        .process_group(0)
        .spawn()
        .map_err(|e| CniError::internal(format!("failed to run plugin {}: {e}", path.display())))?;
    let started = Instant::now();
    // A plugin that exits without reading its stdin closes the pipe; its exit status tells.
    let fed = child::prefeed(&mut child, stdin);
    Ok(Running { child, path, plugin_type: plugin_type.to_string(), rest: stdin[fed..].to_vec(), started })
}

impl Running {
    /// The plugin's process ID, for a caller that bounds how long it may run.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the plugin; returns its stdout, or its own error object unchanged. A plugin still
    /// running [`DELEGATE_TIMEOUT`] (or `CNI_DELEGATE_TIMEOUT` seconds) after its start is killed,
    /// with whatever it started, and that is the error.
    pub fn finish(self) -> Result<Vec<u8>, CniError> {
        let timeout = child::timeout_from_env(DELEGATE_TIMEOUT_ENV, DELEGATE_TIMEOUT);
        self.finish_within(timeout).map_err(|mut e| {
            if e.msg.ends_with(KILLED) {
                e.msg.push_str(&format!(" ({DELEGATE_TIMEOUT_ENV} sets the deadline, in seconds)"));
            }
            e
        })
    }

    /// [`Running::finish`] with a deadline of `timeout` after the plugin's start.
    pub fn finish_within(self, timeout: Duration) -> Result<Vec<u8>, CniError> {
        let Running { mut child, path, plugin_type, rest, started } = self;
        let out = child::wait(&mut child, &rest, started + timeout).map_err(|e| match e {
            child::WaitError::TimedOut => {
                CniError::internal(format!("plugin {plugin_type} did not finish within {timeout:?} {KILLED}"))
            }
            child::WaitError::Io(e) => CniError::internal(format!("failed to wait for plugin {}: {e}", path.display())),
        })?;
        // The spec wants the delegate's stderr on ours.
        let _ = std::io::stderr().write_all(&out.stderr);
        if out.status.success() {
            return Ok(out.stdout);
        }
        if out.stdout.iter().all(u8::is_ascii_whitespace) {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let msg = if stderr.trim().is_empty() {
                format!("netplugin failed with no error message: {}", out.status)
            } else {
                format!("netplugin failed: {:?}", stderr.trim())
            };
            return Err(CniError::new(INTERNAL, msg));
        }
        match serde_json::from_slice::<CniError>(&out.stdout) {
            Ok(err) => Err(err),
            Err(e) => Err(CniError::internal(format!(
                "netplugin failed but error parsing its diagnostic message {:?}: {e}",
                String::from_utf8_lossy(&out.stdout)
            ))),
        }
    }
}

/// Runs plugin `plugin_type` for `command` with the caller's `CNI_*` values and `stdin`, and
/// returns its stdout. A failing plugin's own error object is returned unchanged.
pub fn exec(plugin_type: &str, command: Command, args: &CmdArgs, stdin: &[u8]) -> Result<Vec<u8>, CniError> {
    start(plugin_type, command, args, stdin)?.finish()
}

/// An IPAM ADD started with [`delegate_add_start`].
pub struct PendingAdd {
    running: Running,
    version: String,
}

impl PendingAdd {
    /// Waits for the delegate and parses its result into the current shape.
    pub fn wait(self) -> Result<CniResult, CniError> {
        let out = self.running.finish()?;
        CniResult::parse_slice(&out, &self.version)
    }
}

/// Starts a delegated ADD without waiting for it, so the caller can create interfaces while the
/// IPAM plugin allocates.
pub fn delegate_add_start(plugin_type: &str, args: &CmdArgs) -> Result<PendingAdd, CniError> {
    Ok(PendingAdd { running: start(plugin_type, Command::Add, args, &args.stdin)?, version: args.cni_version.clone() })
}

/// Delegates ADD and parses the result (in the configuration's version) into the current shape.
pub fn delegate_add(plugin_type: &str, args: &CmdArgs) -> Result<CniResult, CniError> {
    delegate_add_start(plugin_type, args)?.wait()
}

/// Delegates DEL, CHECK, GC or STATUS; success is an exit status of zero.
pub fn delegate(plugin_type: &str, command: Command, args: &CmdArgs) -> Result<(), CniError> {
    exec(plugin_type, command, args, &args.stdin).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_in_path_rules() {
        let dir = std::env::temp_dir().join(format!("cni-invoke-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("fake"), b"").unwrap();
        let list = format!("/nonexistent:{}", dir.display());
        assert_eq!(find_in_path("fake", &list).unwrap(), dir.join("fake"));
        let e = find_in_path("other", &list).unwrap_err();
        assert_eq!(e.msg, format!("failed to find plugin \"other\" in path [/nonexistent {}]", dir.display()));
        assert_eq!(find_in_path("", &list).unwrap_err().msg, "no plugin name provided");
        assert_eq!(find_in_path("../fake", &list).unwrap_err().code, 7);
        assert_eq!(find_in_path("fake", "").unwrap_err().msg, "no paths provided");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn script(dir: &std::path::Path, name: &str, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn delegation_passes_environment_and_stdin_and_returns_errors_unchanged() {
        let dir = std::env::temp_dir().join(format!("cni-deleg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Echoes back what it got so the test sees the environment and stdin it was given.
        script(
            &dir,
            "ipam-ok",
            r#"in=$(cat); echo "{\"cniVersion\":\"0.4.0\",\"ips\":[{\"version\":\"4\",\"address\":\"10.0.0.2/24\"}],\"dns\":{\"domain\":\"$CNI_COMMAND-$CNI_CONTAINERID-$CNI_IFNAME-${#in}\"}}""#,
        );
        script(&dir, "ipam-err", r#"echo '{"code":11,"msg":"busy","details":"try later"}'; exit 1"#);
        script(&dir, "ipam-silent", "echo oops >&2; exit 3");
        let stdin = br#"{"cniVersion":"0.4.0","name":"n"}"#.to_vec();
        let args = CmdArgs {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            path: dir.display().to_string(),
            cni_version: "0.4.0".into(),
            stdin: stdin.clone(),
            ..Default::default()
        };
        let r = delegate_add("ipam-ok", &args).unwrap();
        assert_eq!(r.dns.domain, format!("ADD-c1-eth0-{}", stdin.len()));
        assert_eq!(r.ips[0].address.to_string(), "10.0.0.2/24");
        assert!(delegate("ipam-ok", Command::Del, &args).is_ok());
        assert_eq!(
            delegate("ipam-err", Command::Del, &args).unwrap_err(),
            CniError::with_details(11, "busy", "try later")
        );
        assert_eq!(delegate("ipam-silent", Command::Add, &args).unwrap_err().msg, r#"netplugin failed: "oops""#);
        // One that hangs (and has started a helper of its own) is killed at the deadline.
        script(&dir, "ipam-hang", "sleep 30 & sleep 30");
        let t = std::time::Instant::now();
        let running = start("ipam-hang", Command::Add, &args, &args.stdin).unwrap();
        let e = running.finish_within(Duration::from_millis(300)).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert_eq!(e.code, INTERNAL);
        assert!(e.msg.contains("ipam-hang") && e.msg.contains("did not finish within 300ms"), "{}", e.msg);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
