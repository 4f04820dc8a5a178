//! The unprivileged user that the rootless tests and the rootless-wrapper benchmark run the
//! wrapper as, and the "pause" process in which a rootless runtime keeps its user and mount
//! namespaces. Both drive the wrapper the same way, so both set the machine up here.

use anyhow::{bail, Context, Result};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The test user.
pub const USER: &str = "cnirootless";
/// The interpreter of the traffic helpers the user runs.
pub const PY: &str = "/usr/bin/python3";

/// The user's IDs and what the machine's tools need.
#[derive(Debug, Clone)]
pub struct RootlessUser {
    /// `id -u`.
    pub uid: u32,
    /// `id -g`.
    pub gid: u32,
    /// Home directory.
    pub home: String,
    /// First subordinate UID and how many.
    pub subuid: (u64, u64),
    /// First subordinate GID and how many.
    pub subgid: (u64, u64),
    /// util-linux ≥ 2.39 takes `inner:outer:count` for `--map-users`, 2.38 `outer,inner,count`.
    pub colon_maps: bool,
}

/// What to do when `/dev/net/tun` is not world read/write (slirp4netns opens it as the user).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tun {
    /// Make it 0666, Debian's default, and say so.
    Fix,
    /// Report the machine as unable to run.
    Refuse,
}

/// Why the machine cannot run the wrapper as the user.
#[derive(Debug, Clone)]
pub enum NotReady {
    /// Something is missing or disabled here: a reason to skip.
    Unavailable(String),
    /// Setting the user up failed.
    Failed(String),
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotReady::Unavailable(s) | NotReady::Failed(s) => f.write_str(s),
        }
    }
}

fn on_path(name: &str) -> bool {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin"].iter().any(|d| Path::new(d).join(name).exists())
}

fn command_out(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd).args(args).output().with_context(|| format!("run {cmd}"))?;
    if !out.status.success() {
        bail!("{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sub_ids(file: &str) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() == 3 && f[0] == USER).then(|| Some((f[1].parse().ok()?, f[2].parse().ok()?))).flatten()
    })
}

/// Checks that `tools`, python3 and user namespaces are there and what `/dev/net/tun` allows;
/// then creates the user (`useradd -m`) and its subordinate IDs when missing.
pub fn prepare(tools: &[&str], tun: Tun) -> std::result::Result<RootlessUser, NotReady> {
    let unavailable = |s: String| Err(NotReady::Unavailable(s));
    for t in tools {
        if !on_path(t) {
            return unavailable(format!("{t} is missing (apt-get install slirp4netns uidmap util-linux iptables)"));
        }
    }
    if !Path::new(PY).exists() {
        return unavailable(format!("{PY} is missing"));
    }
    let max = std::fs::read_to_string("/proc/sys/user/max_user_namespaces").unwrap_or_default();
    if max.trim() == "0" {
        return unavailable("user namespaces are disabled (user.max_user_namespaces = 0)".into());
    }
    let mode = std::fs::metadata("/dev/net/tun").map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
    if mode & 0o006 != 0o006 {
        let why = format!("/dev/net/tun is mode {mode:o}, so slirp4netns cannot open it as {USER}");
        match tun {
            Tun::Refuse => return unavailable(format!("{why} (Debian's default is 0666)")),
            Tun::Fix => {
                std::fs::set_permissions("/dev/net/tun", std::fs::Permissions::from_mode(0o666))
                    .map_err(|e| NotReady::Failed(format!("{why}; chmod 0666: {e}")))?;
                eprintln!("note: {why}; made it 0666 (Debian's default)");
            }
        }
    }
    let fail = |e: anyhow::Error| NotReady::Failed(format!("{e:#}"));
    if command_out("id", &["-u", USER]).is_err() {
        command_out("useradd", &["-m", USER]).map_err(fail)?;
        eprintln!("note: created the user {USER} (useradd -m)");
    }
    let id = |flag: &str| -> std::result::Result<u32, NotReady> {
        command_out("id", &[flag, USER])
            .map_err(fail)?
            .trim()
            .parse()
            .map_err(|e| NotReady::Failed(format!("id {flag} {USER}: {e}")))
    };
    let (uid, gid) = (id("-u")?, id("-g")?);
    if sub_ids("/etc/subuid").is_none() || sub_ids("/etc/subgid").is_none() {
        // useradd adds them on Debian; an image without login.defs ranges may not.
        let start = 300_000 + u64::from(uid) * 65536;
        let range = format!("{start}-{}", start + 65535);
        command_out("usermod", &["--add-subuids", &range, "--add-subgids", &range, USER]).map_err(fail)?;
    }
    let (Some(subuid), Some(subgid)) = (sub_ids("/etc/subuid"), sub_ids("/etc/subgid")) else {
        return Err(NotReady::Failed(format!("no subordinate IDs for {USER} in /etc/subuid or /etc/subgid")));
    };
    let help = Command::new("unshare").arg("--help").output().map(|o| o.stdout).unwrap_or_default();
    let colon_maps = String::from_utf8_lossy(&help).contains("<inneruid>:<outeruid>");
    Ok(RootlessUser { uid, gid, home: format!("/home/{USER}"), subuid, subgid, colon_maps })
}

impl RootlessUser {
    /// Arguments to `unshare`, run as the user, for a pause process as rootless podman keeps
    /// one: root in a new user namespace with the user's subordinate IDs mapped after it, a
    /// private mount namespace, and a shell that writes its PID to `pidfile` and sleeps.
    pub fn pause_args(&self, pidfile: &Path) -> Vec<String> {
        let map = |(start, count): (u64, u64)| {
            if self.colon_maps {
                format!("1:{start}:{count}")
            } else {
                format!("{start},1,{count}")
            }
        };
        let script = format!("echo $$ > {}; exec sleep 3600", pidfile.display());
        [
            "--map-root-user".to_string(),
            format!("--map-users={}", map(self.subuid)),
            format!("--map-groups={}", map(self.subgid)),
            "--mount".into(),
            "--propagation".into(),
            "private".into(),
            "--fork".into(),
            "/bin/sh".into(),
            "-c".into(),
            script,
        ]
        .into()
    }
}

/// Waits until a pause process started with [`RootlessUser::pause_args`] (stderr piped) has
/// written its PID to `pidfile` and become `sleep`, so its namespaces are final; returns the PID.
/// A pause that exits is reported with its stderr; one that does not start in 10 s is killed.
pub fn wait_for_pause(child: &mut Child, pidfile: &Path) -> Result<u32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid = loop {
        if let Some(pid) = std::fs::read_to_string(pidfile).ok().and_then(|s| s.trim().parse::<u32>().ok()) {
            break pid;
        }
        if let Some(status) = child.try_wait()? {
            let mut err = String::new();
            child.stderr.take().map(|mut e| e.read_to_string(&mut err));
            bail!("pause process failed ({status}): {}", err.trim());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("pause process did not start");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // The pid file is written before `exec sleep`.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(format!("/proc/{pid}/comm")).map_or(true, |c| c.trim() != "sleep") {
        if Instant::now() > deadline {
            bail!("pause process {pid} did not exec sleep");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(pid)
}
