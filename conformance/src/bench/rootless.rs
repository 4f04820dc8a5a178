//! The `rootless-wrapper` scenario: our wrapper run the way a rootless runtime runs it, as an
//! unprivileged user inside its own user and mount namespaces, in a private fake host.
//!
//! The layout follows `conformance/tests/rootless.rs` (research/rootless.md section 4), reduced
//! to what the figures need: a fake host (slirp4netns' uplink and the host's loopback live
//! there), an `XDG_RUNTIME_DIR` under `/run/user/`, a "pause" process (`unshare
//! --map-root-user --map-users … --mount --propagation private --fork sleep`, started as the
//! user `cnirootless` in the fake host) owning the user and mount namespaces, and container
//! namespaces the "runtime" makes under `$XDG_RUNTIME_DIR/netns/`. The wrapper is executed as
//! that user inside the pause's namespaces. Where the tests go through `setpriv` and `nsenter`,
//! the child here makes the same calls itself before exec (`setns` into the fake host,
//! `setgroups`/`setresgid`/`setresuid` to the user, `setns` into the pause's user and mount
//! namespaces), so a timed ADD pays one process start, as under podman, not three.
//!
//! It runs once per helper (slirp4netns, pasta), so the figures of both stand side by side in
//! one report. The reference suite has no such plugin; only ours is measured.

use super::proc::{check_stop, timed};
use anyhow::{bail, Context, Result};
use conformance::rootless_user::{self, RootlessUser as Machine, Tun, PY};
use conformance::{build_config, unique, FakeHost, Output, Suite, TCP_SINK_PY, TCP_SOURCE_PY};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The unprivileged user (shared with the rootless tests, which create it the same way).
const WRAPPER: &str = "rootless-wrapper";
/// Debian's default PATH for users: no sbin (the wrapper adds it for its inner plugins).
const USER_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// How long any one command may take before it is called hung and killed.
const CMD_TIMEOUT: Duration = Duration::from_secs(60);
/// The network name of the list.
const NAME: &str = "benchrootless";
/// The host's loopback as the containers see it through either helper (`allowHostLoopback`).
const HOST_LOOPBACK: &str = "10.0.2.2";
/// First port of the throughput sinks on the fake host's loopback.
const SINK_PORT: u16 = 39100;
/// The host port published for the inbound runs (slirp4netns' add_hostfwd for IPv4; with
/// pasta the wrapper's forwarder).
const PUBLISHED_PORT: u16 = 39200;
/// The container port behind it.
const CONTAINER_PORT: u16 = 5001;
/// The helpers measured, in report order.
pub const HELPERS: [&str; 2] = ["slirp4netns", "pasta"];

/// How many of everything.
#[derive(Debug, Clone, Copy)]
pub struct RootlessCounts {
    /// Containers attached while the shared netns is up (the "later" ADDs and DELs).
    pub containers: usize,
    /// Samples of the first ADD and of the last DEL (each a full create/teardown cycle).
    pub cycles: usize,
    /// MiB moved per throughput run.
    pub mib: u32,
    /// Throughput runs.
    pub runs: usize,
}

/// What the scenario measured (times in ms).
#[derive(Debug, Clone, Default)]
pub struct RootlessTimes {
    /// ADDs that created the shared netns and started slirp4netns.
    pub first_add: Vec<f64>,
    /// ADDs with the shared netns up.
    pub add: Vec<f64>,
    /// DELs with other containers still attached.
    pub del: Vec<f64>,
    /// DELs of the last container (stop slirp4netns, unmount the netns, remove the state).
    pub last_del: Vec<f64>,
    /// Container → fake host loopback, Gbit/s per run.
    pub gbit: Vec<f64>,
    /// Fake host loopback → published port → container, Gbit/s per run.
    pub gbit_in: Vec<f64>,
    /// The MTU of a container's `eth0`.
    pub mtu: Option<f64>,
    /// Failed operations.
    pub errors: usize,
    /// The first failure.
    pub first_error: Option<String>,
    /// What teardowns and the final cleanup found left over (helpers, mounts, state, processes).
    pub leftovers: Vec<String>,
}

impl RootlessTimes {
    fn fail(&mut self, what: &str, e: &anyhow::Error) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{what}: {e:#}"));
        }
    }
}

/// Checks the tools; creates the user (as the rootless tests do) when missing. `Err(reason)`
/// when the scenario cannot run here.
fn machine(suite: &Suite, helper: &str) -> std::result::Result<Machine, String> {
    if !suite.has(WRAPPER) {
        return Err(format!("{} has no {WRAPPER}", suite.name));
    }
    let on_path =
        |n: &str| std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).any(|d| d.join(n).is_file());
    if !on_path(helper) {
        return Err(format!("{helper} is not installed"));
    }
    rootless_user::prepare(&["slirp4netns", "newuidmap", "newgidmap", "nsenter", "unshare"], Tun::Refuse)
        .map_err(|e| e.to_string())
}

fn kill(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

/// Runs a prepared command with `stdin` and a timeout. The child is only reaped after the
/// watchdog is gone, so a late SIGKILL can never hit a recycled PID.
fn run(mut cmd: Command, stdin: &[u8]) -> Result<Output> {
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().context("spawn")?;
    let pid = child.id();
    let (cancel, cancelled) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if cancelled.recv_timeout(CMD_TIMEOUT) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
            kill(pid);
            return true;
        }
        false
    });
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin);
    }
    let (stdout, stderr) = conformance::read_outputs(&mut child);
    // Wait for the exit without reaping (WNOWAIT), so the PID stays ours until the watchdog ends.
    loop {
        // SAFETY: an all-zero siginfo_t is a valid value of this plain C struct.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `pid` is our unreaped child; `info` is valid for the call.
        let r = unsafe { libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break;
        }
    }
    drop(cancel);
    let timed_out = watchdog.join().unwrap_or(false);
    let status = child.wait()?;
    if timed_out {
        bail!("timed out after {CMD_TIMEOUT:?} (killed)");
    }
    Ok(Output { code: status.code().unwrap_or(-1), stdout, stderr })
}

/// One container of the runtime.
struct Ctr {
    id: String,
    netns: String,
    /// Its capability arguments (`portMappings`).
    caps: Map<String, Value>,
}

/// The scenario's world: fake host, XDG_RUNTIME_DIR, plugin copies, pause process.
struct World {
    m: Machine,
    /// Declared first: dropped after `Drop for World` has stopped everything in it.
    host: FakeHost,
    xdg: PathBuf,
    bin: PathBuf,
    list: Value,
    pause: Option<(Child, u32)>,
    /// The pause's user and mount namespaces, entered by every runtime command.
    userns: Option<std::fs::File>,
    mntns: Option<std::fs::File>,
    results: HashMap<String, Value>,
}

impl World {
    fn new(m: Machine, suite: &Suite, helper: &str) -> Result<World> {
        let host = FakeHost::new()?;
        // A default route, as real hosts have: Debian 12's pasta refuses to start without one.
        for args in [
            "link add upl0 type veth peer name upl1",
            "link set upl0 up",
            "link set upl1 up",
            "addr add 203.0.113.1/24 dev upl0",
            "route add default via 203.0.113.254",
        ] {
            host.ns.run("ip", &args.split(' ').collect::<Vec<_>>())?;
        }
        let name = unique("rl");
        let xdg = PathBuf::from("/run/user").join(&name);
        let bin = std::env::temp_dir().join(format!("{name}-bin"));
        let wrapper = json!({
            "type": WRAPPER,
            "helper": helper,
            "capabilities": {"portMappings": true},
            "stateDir": "$XDG_RUNTIME_DIR/cni-rootless",
            "allowHostLoopback": true,
            "plugins": [
                {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]],
                          "routes": [{"dst": "0.0.0.0/0"}]}},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        });
        let list = json!({"cniVersion": "1.0.0", "name": NAME, "plugins": [wrapper]});
        let mut w = World { m, host, xdg, bin, list, pause: None, userns: None, mntns: None, results: HashMap::new() };
        std::fs::create_dir_all(&w.xdg)?;
        std::os::unix::fs::chown(&w.xdg, Some(w.m.uid), Some(w.m.gid))?;
        std::fs::set_permissions(&w.xdg, std::fs::Permissions::from_mode(0o700))?;
        // Copies the user can execute (the --ours directory may be private to root).
        std::fs::create_dir_all(&w.bin)?;
        std::fs::set_permissions(&w.bin, std::fs::Permissions::from_mode(0o755))?;
        for p in ["bridge", "host-local", "loopback", "portmap", WRAPPER] {
            if suite.has(p) {
                let dst = w.bin.join(p);
                std::fs::copy(suite.plugin(p), &dst).with_context(|| format!("copy {p}"))?;
                std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755))?;
            }
        }
        w.start_pause()?;
        Ok(w)
    }

    fn state_dir(&self) -> PathBuf {
        self.xdg.join("cni-rootless")
    }

    /// A command run as the user inside the fake host, with a clean environment.
    fn user_cmd(&self, program: &str, args: &[&str], env: &[(&str, &str)], enter_pause: bool) -> Result<Command> {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .env("HOME", &self.m.home)
            .env("XDG_RUNTIME_DIR", &self.xdg)
            .env("PATH", USER_PATH)
            .envs(env.iter().copied());
        let host = self.host.ns.file()?;
        let pause = if enter_pause {
            let (Some(u), Some(m)) = (&self.userns, &self.mntns) else { bail!("the pause process is not running") };
            Some((u.try_clone()?, m.try_clone()?))
        } else {
            None
        };
        let (uid, gid) = (nix::unistd::Uid::from_raw(self.m.uid), nix::unistd::Gid::from_raw(self.m.gid));
        // SAFETY: runs in the forked (single-threaded) child before exec and makes only
        // async-signal-safe syscalls on descriptors opened in the parent.
        unsafe {
            cmd.pre_exec(move || {
                use nix::sched::{setns, CloneFlags};
                let io = std::io::Error::from;
                setns(host.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io)?;
                nix::unistd::setgroups(&[]).map_err(io)?;
                nix::unistd::setresgid(gid, gid, gid).map_err(io)?;
                nix::unistd::setresuid(uid, uid, uid).map_err(io)?;
                if let Some((user, mnt)) = &pause {
                    // As the namespace's owner the user may enter it, then its mount namespace.
                    setns(user.as_fd(), CloneFlags::CLONE_NEWUSER).map_err(io)?;
                    setns(mnt.as_fd(), CloneFlags::CLONE_NEWNS).map_err(io)?;
                }
                Ok(())
            });
        }
        Ok(cmd)
    }

    /// A command run as the runtime runs plugins: the user, inside the pause's namespaces.
    fn runtime_cmd(&self, program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Command> {
        self.user_cmd(program, args, env, true)
    }

    fn start_pause(&mut self) -> Result<()> {
        let pidfile = self.xdg.join("pause.pid");
        let owned = self.m.pause_args(&pidfile);
        let args: Vec<&str> = owned.iter().map(String::as_str).collect();
        let mut cmd = self.user_cmd("/usr/bin/unshare", &args, &[], false)?;
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().context("spawn the pause process")?;
        let pid = rootless_user::wait_for_pause(&mut child, &pidfile)?;
        self.pause = Some((child, pid));
        self.userns = Some(std::fs::File::open(format!("/proc/{pid}/ns/user")).context("open the pause's userns")?);
        self.mntns = Some(std::fs::File::open(format!("/proc/{pid}/ns/mnt")).context("open the pause's mntns")?);
        Ok(())
    }

    fn pause_pid(&self) -> Option<u32> {
        self.pause.as_ref().map(|p| p.1)
    }

    /// Runs a shell script as the runtime; fails on a non-zero exit.
    fn runtime_sh(&self, script: &str) -> Result<String> {
        let out = run(self.runtime_cmd("/bin/sh", &["-c", script], &[])?, b"")?;
        if !out.ok() {
            bail!("runtime script failed ({}): {script}: {}{}", out.code, out.stdout.trim(), out.stderr.trim());
        }
        Ok(out.stdout)
    }

    /// A container netns made by the runtime under `$XDG_RUNTIME_DIR/netns`.
    fn container(&self, tag: &str) -> Result<Ctr> {
        let dir = self.xdg.join("netns");
        let p = dir.join(tag).display().to_string();
        self.runtime_sh(&format!("mkdir -p {} && touch {p} && unshare --net={p} ip link set lo up", dir.display()))?;
        Ok(Ctr { id: format!("bench-{tag}"), netns: p, caps: Map::new() })
    }

    /// Runs a command as the runtime inside a container's netns.
    fn in_container(&self, ctr: &Ctr, args: &[&str]) -> Result<Output> {
        let flag = format!("--net={}", ctr.netns);
        let mut full = vec![flag.as_str()];
        full.extend_from_slice(args);
        run(self.runtime_cmd("/usr/bin/nsenter", &full, &[])?, b"")
    }

    /// One wrapper call as the runtime makes it.
    fn invoke(&self, command: &str, ctr: &Ctr, conf: &Value) -> Result<Output> {
        let bin = self.bin.display().to_string();
        let env = [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", ctr.id.as_str()),
            ("CNI_NETNS", ctr.netns.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", ""),
            ("CNI_PATH", bin.as_str()),
        ];
        let wrapper = self.bin.join(WRAPPER).display().to_string();
        run(self.runtime_cmd(&wrapper, &[], &env)?, conf.to_string().as_bytes())
    }

    fn wrapper_conf(&self, prev: Option<&Value>, caps: &Map<String, Value>) -> Value {
        build_config(&self.list["plugins"][0], NAME, "1.0.0", prev, caps)
    }

    /// ADD (timed: exec of the wrapper and parsing its result); caches the result for DEL.
    fn add(&mut self, ctr: &Ctr) -> Result<f64> {
        let conf = self.wrapper_conf(None, &ctr.caps);
        let (result, ms) = timed(|| -> Result<Value> {
            let out = self.invoke("ADD", ctr, &conf)?;
            if !out.ok() {
                bail!("ADD {} failed: {} {}", ctr.id, out.stdout.trim(), out.stderr.trim());
            }
            out.json()
        });
        self.results.insert(ctr.id.clone(), result?);
        Ok(ms)
    }

    /// DEL with the cached result as `prevResult` (timed like ADD).
    fn del(&mut self, ctr: &Ctr) -> Result<f64> {
        let conf = self.wrapper_conf(self.results.get(&ctr.id), &ctr.caps);
        let (r, ms) = timed(|| -> Result<()> {
            let out = self.invoke("DEL", ctr, &conf)?;
            if !out.ok() {
                bail!("DEL {} failed: {} {}", ctr.id, out.stdout.trim(), out.stderr.trim());
            }
            Ok(())
        });
        r?;
        self.results.remove(&ctr.id);
        Ok(ms)
    }

    /// Processes of the user with this world's paths on their command line (helpers, and
    /// anything else started for it), the pause process and `Z`ombies excluded: `(pid, comm)`.
    fn own_processes(&self) -> Vec<(u32, String)> {
        let marker = self.xdg.display().to_string();
        let pause: Vec<u32> = self.pause.iter().flat_map(|(child, pid)| [child.id(), *pid]).collect();
        let mut found = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            if pause.contains(&pid) || !e.metadata().is_ok_and(|m| m.uid() == self.m.uid) {
                continue;
            }
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let alive =
                stat.rsplit(')').next().and_then(|r| r.split_whitespace().next()).is_some_and(|s| s != "Z" && s != "X");
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if alive && String::from_utf8_lossy(&cmdline).contains(&marker) {
                let comm = stat.split_once('(').and_then(|(_, r)| r.rsplit_once(')')).map_or("", |(c, _)| c);
                found.push((pid, comm.to_string()));
            }
        }
        found
    }

    /// What the last DEL should have removed and did not: live helpers, mounts of the state
    /// directory in the pause's mount namespace, the state directory.
    fn left_after_teardown(&self) -> Vec<String> {
        let mut left: Vec<String> =
            self.own_processes().into_iter().map(|(pid, comm)| format!("process {pid} ({comm})")).collect();
        let dir = self.state_dir().display().to_string();
        if let Some(pid) = self.pause_pid() {
            let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
            left.extend(info.lines().filter(|l| l.contains(&dir)).map(|l| format!("mount {l}")));
        }
        if self.state_dir().exists() {
            left.push(format!("state directory {dir}"));
        }
        left
    }

    /// Container → a sink on the fake host's loopback through slirp4netns; Gbit/s.
    fn throughput(&self, ctr: &Ctr, port: u16, mib: u32) -> Result<f64> {
        let mut sink = Command::new(PY);
        sink.args(["-c", TCP_SINK_PY, "127.0.0.1", &port.to_string()])
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let host = self.host.ns.file()?;
        // SAFETY: runs in the forked child before exec; setns is one async-signal-safe syscall.
        unsafe {
            sink.pre_exec(move || {
                nix::sched::setns(host.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
            });
        }
        let mut sink = Sink(sink.spawn().context("spawn the sink")?);
        let mut out = BufReader::new(sink.0.stdout.take().context("sink stdout")?);
        let mut line = String::new();
        out.read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!("sink did not start: {line:?}");
        }
        let src =
            self.in_container(ctr, &[PY, "-c", TCP_SOURCE_PY, HOST_LOOPBACK, &port.to_string(), &mib.to_string()])?;
        if !src.ok() {
            bail!("sender failed: {}", src.stderr.trim());
        }
        line.clear();
        out.read_line(&mut line)?;
        let mut f = line.split_whitespace();
        let (Some(bytes), Some(secs)) = (f.next(), f.next()) else { bail!("sink said {line:?}") };
        let (bytes, secs): (f64, f64) = (bytes.parse()?, secs.parse()?);
        if bytes < f64::from(mib) * 1048576.0 || secs <= 0.0 {
            bail!("sink received {bytes} bytes in {secs} s");
        }
        Ok(bytes * 8.0 / secs / 1e9)
    }

    /// Fake host loopback → published port → container; Gbit/s. The sink runs in the container
    /// as the runtime, the source on the fake host as root.
    fn throughput_in(&self, ctr: &Ctr, mib: u32) -> Result<f64> {
        let flag = format!("--net={}", ctr.netns);
        let port = CONTAINER_PORT.to_string();
        let mut sink = self.runtime_cmd("/usr/bin/nsenter", &[&flag, PY, "-c", TCP_SINK_PY, "0.0.0.0", &port], &[])?;
        sink.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
        let mut sink = Sink(sink.spawn().context("spawn the sink")?);
        let mut out = BufReader::new(sink.0.stdout.take().context("sink stdout")?);
        let mut line = String::new();
        out.read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!("sink did not start: {line:?}");
        }
        let mut src = Command::new(PY);
        src.args(["-c", TCP_SOURCE_PY, "127.0.0.1", &PUBLISHED_PORT.to_string(), &mib.to_string()]).env_clear();
        let host = self.host.ns.file()?;
        // SAFETY: runs in the forked child before exec; setns is one async-signal-safe syscall.
        unsafe {
            src.pre_exec(move || {
                nix::sched::setns(host.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
            });
        }
        let src = run(src, b"")?;
        if !src.ok() {
            bail!("sender failed: {}", src.stderr.trim());
        }
        line.clear();
        out.read_line(&mut line)?;
        let mut f = line.split_whitespace();
        let (Some(bytes), Some(secs)) = (f.next(), f.next()) else { bail!("sink said {line:?}") };
        let (bytes, secs): (f64, f64) = (bytes.parse()?, secs.parse()?);
        if bytes < f64::from(mib) * 1048576.0 || secs <= 0.0 {
            bail!("sink received {bytes} bytes in {secs} s");
        }
        Ok(bytes * 8.0 / secs / 1e9)
    }

    /// Stops whatever of this world still runs; returns what had to be stopped.
    fn stop_everything(&mut self) -> Vec<String> {
        let left: Vec<String> =
            self.own_processes().into_iter().map(|(pid, comm)| format!("process {pid} ({comm})")).collect();
        for (pid, _) in self.own_processes() {
            kill(pid);
        }
        self.userns = None;
        self.mntns = None;
        if let Some((mut child, pid)) = self.pause.take() {
            kill(pid);
            let _ = child.kill();
            let _ = child.wait();
        }
        left
    }
}

/// Kills and reaps the sink, also on early return.
struct Sink(Child);

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop_everything();
        // The netns mounts lived only in the pause's mount namespace, gone with it.
        let _ = std::fs::remove_dir_all(&self.xdg);
        let _ = std::fs::remove_dir_all(&self.bin);
    }
}

/// Why the scenario cannot run here with `helper`, or `None` when it can (creating the user if
/// needed).
pub fn unavailable(suite: &Suite, helper: &str) -> Option<String> {
    machine(suite, helper).err()
}

/// The scenario: `cycles` create/teardown cycles of one container (first ADD, last DEL); then
/// `containers` more ADDs with the shared netns up, the MTU of `eth0`, `runs` throughput runs
/// from the first container to the fake host's loopback and from the fake host's loopback
/// through a published port to it, DELs of the others, the last DEL; after every teardown a
/// look for anything left.
pub fn rootless(suite: &Suite, c: RootlessCounts, helper: &str) -> Result<RootlessTimes> {
    let m = machine(suite, helper).map_err(anyhow::Error::msg)?;
    let mut w = World::new(m, suite, helper)?;
    let mut t = RootlessTimes::default();
    let mut c0 = w.container("c0")?;
    let pm = json!([{"hostPort": PUBLISHED_PORT, "containerPort": CONTAINER_PORT, "protocol": "tcp"}]);
    c0.caps.insert("portMappings".into(), pm);
    let teardown_check = |w: &World, t: &mut RootlessTimes, when: &str| {
        for l in w.left_after_teardown() {
            t.leftovers.push(format!("{when}: {l}"));
        }
    };
    for k in 0..c.cycles.saturating_sub(1) {
        check_stop()?;
        match w.add(&c0) {
            Ok(ms) => t.first_add.push(ms),
            Err(e) => t.fail(&format!("first ADD, cycle {k}"), &e),
        }
        match w.del(&c0) {
            Ok(ms) => t.last_del.push(ms),
            Err(e) => t.fail(&format!("last DEL, cycle {k}"), &e),
        }
        teardown_check(&w, &mut t, &format!("after cycle {k}"));
    }
    let others: Vec<Ctr> = (1..=c.containers).map(|i| w.container(&format!("c{i}"))).collect::<Result<_>>()?;
    check_stop()?;
    match w.add(&c0) {
        Ok(ms) => t.first_add.push(ms),
        Err(e) => t.fail("first ADD", &e),
    }
    for ctr in &others {
        check_stop()?;
        match w.add(ctr) {
            Ok(ms) => t.add.push(ms),
            Err(e) => t.fail(&format!("ADD {}", ctr.id), &e),
        }
    }
    let link = w.in_container(&c0, &["ip", "-j", "link", "show", "eth0"])?;
    t.mtu = serde_json::from_str::<Value>(&link.stdout).ok().and_then(|v| v[0]["mtu"].as_f64());
    for r in 0..c.runs {
        check_stop()?;
        let port = SINK_PORT + u16::try_from(r).unwrap_or(0);
        match w.throughput(&c0, port, c.mib) {
            Ok(g) => t.gbit.push(g),
            Err(e) => t.fail(&format!("throughput run {r}"), &e),
        }
        match w.throughput_in(&c0, c.mib) {
            Ok(g) => t.gbit_in.push(g),
            Err(e) => t.fail(&format!("inbound throughput run {r}"), &e),
        }
    }
    for ctr in &others {
        check_stop()?;
        match w.del(ctr) {
            Ok(ms) => t.del.push(ms),
            Err(e) => t.fail(&format!("DEL {}", ctr.id), &e),
        }
    }
    match w.del(&c0) {
        Ok(ms) => t.last_del.push(ms),
        Err(e) => t.fail("last DEL", &e),
    }
    teardown_check(&w, &mut t, "after the last DEL");
    for l in w.stop_everything() {
        t.leftovers.push(format!("at cleanup: {l}"));
    }
    let xdg = w.xdg.clone();
    drop(w);
    if xdg.exists() {
        t.leftovers.push(format!("{} not removed", xdg.display()));
    }
    Ok(t)
}
