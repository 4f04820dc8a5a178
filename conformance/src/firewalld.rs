//! A real firewalld for one fake host, never the machine's: a private `dbus-daemon` (its own
//! configuration and socket in a scratch directory) and Debian's `firewalld --nofork --nopid`,
//! both inside the fake host's network namespace and a private mount namespace whose `/run` is an
//! empty tmpfs (so neither can reach the machine's bus socket or write its run files). firewalld
//! reads a `firewalld.conf` of its own (`--system-config`) and logs to its console, which the
//! harness keeps for failure messages. Dropping the guard stops firewalld (SIGTERM, then SIGKILL
//! after a grace), then the bus, and removes the scratch directory.

use crate::{run, unique, FakeHost};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The well-known name firewalld owns.
pub const BUS_NAME: &str = "org.fedoraproject.FirewallD1";

/// How long firewalld may take to start (python, then its first rule set, on a busy machine).
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a stopped firewalld or bus may take to exit before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Whether the programs the harness runs are installed (Debian's `firewalld` and `dbus-daemon`).
pub fn available() -> bool {
    ["/usr/sbin/firewalld", "/usr/bin/firewall-cmd", "/usr/bin/dbus-daemon", "/usr/bin/dbus-send"]
        .iter()
        .all(|p| Path::new(p).is_file())
}

/// A private bus and a firewalld on it, in one fake host.
#[derive(Debug)]
pub struct Firewalld {
    /// `DBUS_SYSTEM_BUS_ADDRESS` for clients of this bus.
    pub address: String,
    netns: String,
    dir: PathBuf,
    bus: Option<Child>,
    daemon: Option<Child>,
}

/// The bus configuration: a system bus on `socket` on which root may own and call anything (the
/// machine's policy files are not read, so nothing else can reach it by accident).
fn bus_config(socket: &Path) -> String {
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="root"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"#,
        socket.display()
    )
}

/// firewalld's settings: Debian's defaults with the nftables backend, and nothing left behind on
/// exit.
const FIREWALLD_CONF: &str = "DefaultZone=public\nCleanupOnExit=yes\nCleanupModulesOnExit=no\nLockdown=no\n\
IPv6_rpfilter=yes\nIndividualCalls=no\nLogDenied=off\nFirewallBackend=nftables\nFlushAllOnReload=yes\n\
RFC3964_IPv4=yes\n";

impl Firewalld {
    /// Starts the bus and firewalld in `host` and waits (with a deadline) until firewalld owns its
    /// name and says it is running.
    pub fn start(host: &FakeHost) -> Result<Firewalld> {
        if !available() {
            bail!("firewalld is not installed (apt-get install firewalld, see scripts/dev)");
        }
        let dir = std::env::temp_dir().join(format!("{}-fwd", unique("")));
        std::fs::create_dir_all(dir.join("etc"))?;
        let socket = dir.join("bus");
        std::fs::write(dir.join("bus.conf"), bus_config(&socket))?;
        std::fs::write(dir.join("etc/firewalld.conf"), FIREWALLD_CONF)?;
        let address = format!("unix:path={}", socket.display());
        let mut me = Firewalld { address, netns: host.ns.name().to_string(), dir, bus: None, daemon: None };
        let conf = me.dir.join("bus.conf").display().to_string();
        me.bus = Some(me.spawn(
            "bus.log",
            &["dbus-daemon", &format!("--config-file={conf}"), "--nofork", "--nopidfile", "--nosyslog"],
        )?);
        me.wait_for("the private bus", |_| socket.exists())?;
        me.start_firewalld()?;
        Ok(me)
    }

    /// (Re)starts firewalld on the bus and waits until it runs.
    pub fn start_firewalld(&mut self) -> Result<()> {
        let etc = self.dir.join("etc").display().to_string();
        self.daemon = Some(self.spawn(
            "firewalld.log",
            &["firewalld", "--nofork", "--nopid", "--system-config", &etc, "--log-target", "console"],
        )?);
        self.wait_for("firewalld", |fw| fw.state().is_some_and(|s| s == "RUNNING"))
    }

    /// Runs `argv` in the fake host's network namespace and a private mount namespace with an
    /// empty `/run`, output appended to `log` in the scratch directory.
    fn spawn(&self, log: &str, argv: &[&str]) -> Result<Child> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(log))?;
        Command::new("ip")
            .args(["netns", "exec", &self.netns, "unshare", "--mount", "--propagation", "private", "sh", "-c"])
            .arg("mount -t tmpfs -o mode=0755 cni-test-run /run && exec \"$@\"")
            .arg("sh")
            .args(argv)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.address)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", argv[0]))
    }

    fn wait_for(&mut self, what: &str, ready: impl Fn(&Firewalld) -> bool) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if ready(self) {
                return Ok(());
            }
            if let Some(status) = self.exited() {
                bail!("{what} did not start: a process exited ({status}); logs: {}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("{what} did not start within {START_TIMEOUT:?}; logs: {}", self.logs())
    }

    /// How one of the harness's processes ended, if one has.
    fn exited(&mut self) -> Option<String> {
        for child in [self.bus.as_mut(), self.daemon.as_mut()].into_iter().flatten() {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status.to_string());
            }
        }
        None
    }

    /// What the bus and firewalld printed.
    pub fn logs(&self) -> String {
        ["bus.log", "firewalld.log"]
            .iter()
            .map(|f| format!("{f}: {}", std::fs::read_to_string(self.dir.join(f)).unwrap_or_default().trim()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `dbus-send` on this bus (1 s reply deadline); its stdout, or `None` when it failed.
    fn dbus_send(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("dbus-send")
            .arg(format!("--bus={}", self.address))
            .args(["--print-reply", "--reply-timeout=1000"])
            .args(args)
            .env_clear()
            .output()
            .ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// firewalld's `state` property (`RUNNING` once it serves calls), `None` while it does not
    /// answer.
    pub fn state(&self) -> Option<String> {
        let out = self.dbus_send(&[
            &format!("--dest={BUS_NAME}"),
            "/org/fedoraproject/FirewallD1",
            "org.freedesktop.DBus.Properties.Get",
            &format!("string:{BUS_NAME}"),
            "string:state",
        ])?;
        out.split('"').nth(1).map(str::to_string)
    }

    /// Whether the name firewalld takes has an owner on this bus.
    pub fn name_owned(&self) -> bool {
        self.dbus_send(&[
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.NameHasOwner",
            &format!("string:{BUS_NAME}"),
        ])
        .is_some_and(|o| o.contains("boolean true"))
    }

    /// `firewall-cmd <args>` against this firewalld (from the fake host); its trimmed stdout.
    pub fn cmd(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["netns", "exec", &self.netns, "env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"];
        let bus = format!("DBUS_SYSTEM_BUS_ADDRESS={}", self.address);
        full.push(&bus);
        full.push("firewall-cmd");
        full.extend_from_slice(args);
        Ok(run("ip", &full)?.trim().to_string())
    }

    /// The sources of `zone`, as firewalld lists them.
    pub fn sources(&self, zone: &str) -> Result<Vec<String>> {
        let out = self.cmd(&[&format!("--zone={zone}"), "--list-sources"])?;
        Ok(out.split_whitespace().map(str::to_string).collect())
    }

    /// Every zone with its sources, sorted, from one `--list-all-zones`.
    pub fn all_sources(&self) -> Result<Vec<(String, Vec<String>)>> {
        let mut zones: Vec<(String, Vec<String>)> = Vec::new();
        for line in self.cmd(&["--list-all-zones"])?.lines() {
            if !line.starts_with(' ') && !line.trim().is_empty() {
                let name = line.split_whitespace().next().unwrap_or_default();
                zones.push((name.to_string(), Vec::new()));
            } else if let (Some(rest), Some(zone)) = (line.trim().strip_prefix("sources:"), zones.last_mut()) {
                zone.1 = rest.split_whitespace().map(str::to_string).collect();
                zone.1.sort();
            }
        }
        Ok(zones)
    }

    /// The environment a plugin needs to find this bus.
    pub fn env(&self) -> (&'static str, &str) {
        ("DBUS_SYSTEM_BUS_ADDRESS", &self.address)
    }

    /// Stops firewalld (SIGTERM, SIGKILL after a grace) and waits until its name is released;
    /// the bus stays.
    pub fn stop_firewalld(&mut self) {
        if let Some(child) = self.daemon.take() {
            stop(child);
            let deadline = Instant::now() + STOP_GRACE;
            while self.name_owned() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Freezes firewalld (SIGSTOP): it keeps its name but answers nothing, as a hung daemon.
    pub fn freeze_firewalld(&self) -> Result<()> {
        signal(self.daemon.as_ref(), nix::sys::signal::Signal::SIGSTOP)
    }

    /// Lets a frozen firewalld go on.
    pub fn thaw_firewalld(&self) -> Result<()> {
        signal(self.daemon.as_ref(), nix::sys::signal::Signal::SIGCONT)
    }

    /// Freezes the bus itself: connections are accepted by the kernel, then nothing answers.
    pub fn freeze_bus(&self) -> Result<()> {
        signal(self.bus.as_ref(), nix::sys::signal::Signal::SIGSTOP)
    }

    /// Lets a frozen bus go on.
    pub fn thaw_bus(&self) -> Result<()> {
        signal(self.bus.as_ref(), nix::sys::signal::Signal::SIGCONT)
    }
}

fn signal(child: Option<&Child>, sig: nix::sys::signal::Signal) -> Result<()> {
    let child = child.context("the process is not running")?;
    let pid = i32::try_from(child.id())?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)?;
    Ok(())
}

/// Ends one of the harness's children: SIGCONT (it may be frozen) and SIGTERM, SIGKILL after
/// [`STOP_GRACE`], then reaps it.
fn stop(mut child: Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Firewalld {
    fn drop(&mut self) {
        self.stop_firewalld();
        if let Some(bus) = self.bus.take() {
            stop(bus);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
