//! `rootless-wrapper`, run the way a rootless runtime runs it (research/rootless.md section 4).
//!
//! Every test has its own fake host (a network namespace: slirp4netns' uplink and every host
//! port live there, never on the machine's network), its own `XDG_RUNTIME_DIR` under
//! `/run/user/`, and its own "pause" process: `unshare --map-root-user --map-users … --mount
//! --propagation private --fork sleep`, started as the unprivileged user `cnirootless` inside
//! the fake host. The wrapper is then invoked as that user through `nsenter -U -m -t <pause>`
//! with a clean environment (PATH without /usr/sbin), as podman invokes CNI, with CNI_PATH
//! pointing at a copy of our plugins the user can execute. Container namespaces are made by
//! the "runtime" under `$XDG_RUNTIME_DIR/netns/`. Assertions use real traffic (python3 clients
//! and servers) and real kernel and process state.
//!
//! Setup needs root: it creates the user if missing (`useradd -m cnirootless`, which on Debian
//! also adds its subordinate IDs) and, when `/dev/net/tun` is not world read/write (Debian's
//! default is 0666; some images ship 0600), makes it 0666 and says so. Guards stop every
//! process, mount and directory a test made, also when it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use anyhow::{bail, Context, Result};
use conformance::rootless_user::{self, NotReady, RootlessUser as Machine, Tun, PY, USER};
use conformance::{build_config, ours, require_root, skip, unique, FakeHost, Output, TCP_SINK_PY, TCP_SOURCE_PY};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Debian's default PATH for users: no sbin, which the wrapper must make up for (M10).
const USER_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
const WRAPPER: &str = "rootless-wrapper";
/// The two helpers the tests that apply to both run with.
const SLIRP: &str = "slirp4netns";
const PASTA: &str = "pasta";
/// The process names a helper of this test can have (pasta re-executes itself as passt.avx2).
const HELPER_COMMS: [&str; 5] = ["slirp4netns", "pasta", "passt", "pasta.avx2", "passt.avx2"];

/// Runs each listed `fn(helper: &str)` once per helper, as `slirp4netns::<name>` and
/// `pasta::<name>`.
macro_rules! for_both_helpers {
    ($($f:ident),* $(,)?) => {
        mod slirp4netns {
            $( #[test] fn $f() { super::$f(super::SLIRP) } )*
        }
        mod pasta {
            $( #[test] fn $f() { super::$f(super::PASTA) } )*
        }
    };
}

for_both_helpers!(
    traffic_through_the_helper_and_published_ports_then_clean_teardown,
    dns_goes_through_the_advertised_address,
    host_loopback_is_closed_by_default,
    custom_cidr_and_ipv6,
    outbound_ipv6_from_a_container,
    dead_helper_is_restarted_with_its_forwards,
    stale_netns_is_recreated,
    concurrent_add_and_del_of_sixteen_containers,
    gc_detaches_what_the_runtime_no_longer_knows,
    ipv6_published_ports_keep_the_client_address,
    a_stopped_forwarder_gives_clean_errors_and_its_ports_close_later,
);
/// How long any one command may take before the test calls it hung.
const CMD_TIMEOUT: Duration = Duration::from_secs(60);

/// Accepts connections forever; answers each with a line naming itself and the peer.
const SERVER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(64)
print("ready", flush=True)
while True:
    c, a = s.accept()
    try:
        c.sendall(("hello-%s from %s\n" % (sys.argv[3], a[0])).encode())
    finally:
        c.close()
"#;

/// Connects, prints what the server says, exits 1 on failure.
const CLIENT: &str = r#"
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    data = b""
    while True:
        b = c.recv(4096)
        if not b:
            break
        data += b
    print(data.decode().strip())
except Exception as e:
    print("ERROR %s" % e)
    sys.exit(1)
"#;

/// Answers every datagram with a line naming itself and the peer.
const UDP_SERVER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    data, a = s.recvfrom(2048)
    s.sendto(("hello-%s from %s" % (sys.argv[3], a[0])).encode(), a)
"#;

/// Sends one datagram (again every half second), prints the first answer, exits 1 on silence.
const UDP_CLIENT: &str = r#"
import socket, sys, time
c = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
c.settimeout(0.5)
end = time.time() + float(sys.argv[3])
while time.time() < end:
    c.sendto(b"ping", (sys.argv[1], int(sys.argv[2])))
    try:
        print(c.recv(2048).decode().strip())
        sys.exit(0)
    except socket.timeout:
        pass
print("ERROR no answer")
sys.exit(1)
"#;

/// [`UDP_CLIENT`] on a connected socket: answers from any other address than the one written
/// to are dropped by the kernel, as most UDP clients (DNS resolvers among them) do.
const UDP_CLIENT_CONNECTED: &str = r#"
import socket, sys, time
c = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
c.settimeout(0.5)
c.connect((sys.argv[1], int(sys.argv[2])))
end = time.time() + float(sys.argv[3])
while time.time() < end:
    c.send(b"ping")
    try:
        print(c.recv(2048).decode().strip())
        sys.exit(0)
    except (socket.timeout, ConnectionRefusedError):
        pass
print("ERROR no answer")
sys.exit(1)
"#;

/// An inner plugin that reports what it sees to `$PROBE_OUT` (one JSON line per call), chains
/// results adding its `tag` to `dns.search`, and fails the verbs listed in `failOn`.
const PROBE: &str = r#"#!/usr/bin/python3
import json, os, subprocess, sys
conf = json.load(sys.stdin)
cmd = os.environ.get("CNI_COMMAND", "")
d = {"cmd": cmd, "tag": conf.get("tag"), "config": conf, "path": os.environ.get("PATH", ""),
     "netns_ino": os.stat("/proc/self/ns/net").st_ino, "uid": os.getuid(),
     "mountinfo": open("/proc/self/mountinfo").read()}
try:
    d["resolv"] = open("/etc/resolv.conf").read()
except Exception as e:
    d["resolv"] = "ERROR %s" % e
def attempt(name, f):
    try:
        f(); d[name] = True
    except Exception as e:
        d[name] = "ERROR %s" % e
attempt("xtables_lock", lambda: open("/run/xtables.lock", "a").close())
attempt("run_netns", lambda: os.makedirs("/run/netns", exist_ok=True))
def var_lib_cni():
    os.makedirs("/var/lib/cni/networks/" + conf["name"], exist_ok=True)
    open("/var/lib/cni/networks/" + conf["name"] + "/probe", "w").write("x")
attempt("var_lib_cni", var_lib_cni)
netns = os.environ.get("CNI_NETNS", "")
d["cni_netns_ino"] = os.stat(netns).st_ino if netns and os.path.exists(netns) else None
xdg = os.environ.get("XDG_RUNTIME_DIR", "")
d["xdg_listing"] = sorted(os.listdir(xdg)) if xdg and os.path.isdir(xdg) else None
try:
    r = subprocess.run(["iptables-legacy", "-w", "-t", "nat", "-S"], capture_output=True, text=True, timeout=10)
    d["iptables_legacy"] = (r.returncode, r.stderr.strip())
except Exception as e:
    d["iptables_legacy"] = (-1, str(e))
with open(os.environ["PROBE_OUT"], "a") as f:
    f.write(json.dumps(d) + "\n")
if cmd in conf.get("failOn", []):
    print(json.dumps({"cniVersion": conf["cniVersion"], "code": 142, "msg": "probe %s fails %s" % (conf.get("tag"), cmd)}))
    sys.exit(1)
if cmd == "ADD":
    r = conf.get("prevResult") or {"cniVersion": conf["cniVersion"]}
    r.setdefault("dns", {}).setdefault("search", []).append(conf.get("tag", "probe"))
    print(json.dumps(r))
"#;

/// A stand-in for slirp4netns that fails the way a broken one does.
const FAILING_HELPER: &str = "#!/bin/sh\n\
case \"$1\" in --help) echo '--api-socket --netns-type --cidr --disable-host-loopback --ready-fd --mtu'; exit 0;; esac\n\
echo 'boom: fake slirp4netns cannot start' >&2\nexit 1\n";

/// What the machine provides, checked once (the tests skip when it cannot run them, and fail
/// when setting the user up fails).
fn machine() -> Option<&'static Machine> {
    static M: OnceLock<Option<Machine>> = OnceLock::new();
    M.get_or_init(|| {
        let tools = ["slirp4netns", "newuidmap", "newgidmap", "nsenter", "unshare", "setpriv", "iptables"];
        match rootless_user::prepare(&tools, Tun::Fix) {
            Ok(m) => Some(m),
            Err(NotReady::Unavailable(why)) => {
                skip(&why);
                None
            }
            Err(NotReady::Failed(why)) => panic!("setting up {USER}: {why}"),
        }
    })
    .as_ref()
}

macro_rules! setup {
    ($conf:expr) => {{
        require_root!();
        let Some(m) = machine() else { return };
        let conf: Value = $conf;
        if conf["helper"] == PASTA && !on_path(PASTA) {
            skip("pasta is not installed (Debian package passt)");
            return;
        }
        Harness::new(m, conf).unwrap()
    }};
}

fn on_path(name: &str) -> bool {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).any(|d| d.join(name).is_file())
}

/// The pause process: owner of the user and mount namespaces, like podman's.
struct Pause {
    child: Child,
    pid: u32,
}

impl Drop for Pause {
    fn drop(&mut self) {
        kill(self.pid);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kill(pid: u32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
}

/// One container attachment.
#[derive(Clone, Debug)]
struct Ctr {
    id: String,
    netns: String,
    caps: Map<String, Value>,
}

impl Ctr {
    fn with_port(mut self, host: u16, container: u16) -> Ctr {
        let mut pm = self.caps.get("portMappings").and_then(Value::as_array).cloned().unwrap_or_default();
        pm.push(json!({"hostPort": host, "containerPort": container, "protocol": "tcp"}));
        self.caps.insert("portMappings".into(), Value::Array(pm));
        self
    }
}

/// One test's world: fake host, user, XDG_RUNTIME_DIR, pause, plugin copies and servers.
struct Harness {
    m: &'static Machine,
    host: FakeHost,
    xdg: PathBuf,
    /// A directory under /run (outside XDG) for namespaces the user owns.
    extra_run: PathBuf,
    bin: PathBuf,
    list: Value,
    pause: Mutex<Option<Pause>>,
    servers: Mutex<Vec<Child>>,
    results: Mutex<HashMap<String, Value>>,
}

impl Harness {
    fn new(m: &'static Machine, wrapper: Value) -> Result<Harness> {
        // Built (or found) first: a failing build must not leave the directories below behind.
        let suite = ours();
        let host = FakeHost::new()?;
        // A default route on the fake host, as every real host has: Debian 12's pasta picks its
        // outbound interface from it and refuses to start without one. Nothing answers there.
        for args in [
            "link add upl0 type veth peer name upl1",
            "link set upl0 up",
            "link set upl1 up",
            "addr add 203.0.113.1/24 dev upl0",
            "addr add 2001:db8:ff::1/64 dev upl0 nodad",
            "route add default via 203.0.113.254",
            "-6 route add default via 2001:db8:ff::fe",
        ] {
            host.ns.run("ip", &args.split(' ').collect::<Vec<_>>())?;
        }
        let name = unique("rl");
        let xdg = PathBuf::from("/run/user").join(&name);
        let extra_run = PathBuf::from("/run/user").join(format!("{name}-ns"));
        let bin = std::env::temp_dir().join(format!("{name}-bin"));
        for dir in [&xdg, &extra_run] {
            std::fs::create_dir_all(dir)?;
            std::os::unix::fs::chown(dir, Some(m.uid), Some(m.gid))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        std::fs::create_dir_all(&bin)?;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))?;
        for p in ["bridge", "host-local", "loopback", "portmap", WRAPPER] {
            let src = suite.plugin(p);
            if src.is_file() {
                // Hard links keep cargo's 0755 and cost nothing; copy across filesystems.
                if std::fs::hard_link(&src, bin.join(p)).is_err() {
                    std::fs::copy(&src, bin.join(p))?;
                }
            }
        }
        script(&bin.join("probe"), PROBE)?;
        script(&bin.join("fake-slirp4netns"), FAILING_HELPER)?;
        let list = json!({"cniVersion": "1.0.0", "name": name, "plugins": [wrapper]});
        let h = Harness {
            m,
            host,
            xdg,
            extra_run,
            bin,
            list,
            pause: Mutex::new(None),
            servers: Mutex::new(Vec::new()),
            results: Mutex::new(HashMap::new()),
        };
        h.start_pause()?;
        Ok(h)
    }

    fn state_dir(&self) -> PathBuf {
        self.xdg.join("cni-rootless")
    }

    fn rootless_netns(&self) -> String {
        self.state_dir().join("netns").display().to_string()
    }

    fn has_portmap(&self) -> bool {
        self.bin.join("portmap").is_file()
    }

    /// A command run as the test user inside the fake host's netns, with a clean environment.
    fn user_cmd(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new("/usr/bin/setpriv");
        cmd.arg(format!("--reuid={}", self.m.uid))
            .arg(format!("--regid={}", self.m.gid))
            .arg("--clear-groups")
            .arg("--")
            .args(args)
            .env_clear()
            .env("HOME", &self.m.home)
            .env("XDG_RUNTIME_DIR", &self.xdg)
            .env("PATH", USER_PATH)
            .envs(env.iter().copied());
        if let Ok(level) = std::env::var("CNI_LOG") {
            cmd.env("CNI_LOG", level);
        }
        let file = self.host.ns.file().unwrap();
        // SAFETY: runs in the forked child before exec; setns is one async-signal-safe syscall.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
            });
        }
        cmd
    }

    fn pause_pid(&self) -> u32 {
        self.pause.lock().unwrap().as_ref().expect("pause running").pid
    }

    /// A command run as the runtime runs plugins: the user, inside the pause's namespaces.
    fn runtime_cmd(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let pid = self.pause_pid().to_string();
        let mut full = vec!["/usr/bin/nsenter", "-U", "-m", "-t", pid.as_str(), "--preserve-credentials", "--"];
        full.extend_from_slice(args);
        self.user_cmd(&full, env)
    }

    fn start_pause(&self) -> Result<()> {
        let pidfile = self.xdg.join("pause.pid");
        let _ = std::fs::remove_file(&pidfile);
        let owned = self.m.pause_args(&pidfile);
        let args: Vec<&str> = std::iter::once("/usr/bin/unshare").chain(owned.iter().map(String::as_str)).collect();
        let mut cmd = self.user_cmd(&args, &[]);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        let pid = rootless_user::wait_for_pause(&mut child, &pidfile)?;
        *self.pause.lock().unwrap() = Some(Pause { child, pid });
        Ok(())
    }

    /// Replaces the pause process: a new user and mount namespace, as after `podman system
    /// migrate` or a restart of the pause process.
    fn restart_pause(&self) -> Result<()> {
        drop(self.pause.lock().unwrap().take());
        self.start_pause()
    }

    /// Runs a prepared command with `stdin`, with a timeout.
    fn run(&self, mut cmd: Command, stdin: &[u8]) -> Result<Output> {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().context("spawn")?;
        if let Some(mut input) = child.stdin.take() {
            let _ = input.write_all(stdin);
        }
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let out = match rx.recv_timeout(CMD_TIMEOUT) {
            Ok(out) => out?,
            Err(_) => {
                kill(pid);
                bail!("command timed out after {CMD_TIMEOUT:?}");
            }
        };
        Ok(Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Runs a shell script as the runtime; fails on a non-zero exit.
    fn runtime_sh(&self, script: &str) -> Result<String> {
        let out = self.run(self.runtime_cmd(&["/bin/sh", "-c", script], &[]), b"")?;
        if !out.ok() {
            bail!("runtime script failed ({}): {script}\n{}{}", out.code, out.stdout, out.stderr);
        }
        Ok(out.stdout)
    }

    /// A container netns made by the runtime under `dir` (default `$XDG_RUNTIME_DIR/netns`).
    fn container_in(&self, dir: &Path, tag: &str) -> Result<Ctr> {
        let p = dir.join(tag).display().to_string();
        self.runtime_sh(&format!(
            "mkdir -p {d} && touch {p} && unshare --net={p} ip link set lo up",
            d = dir.display()
        ))?;
        Ok(Ctr { id: format!("ctr-{tag}"), netns: p, caps: Map::new() })
    }

    fn container(&self, tag: &str) -> Result<Ctr> {
        self.container_in(&self.xdg.join("netns"), tag)
    }

    /// Runs a command inside a network namespace the runtime owns.
    fn in_netns(&self, netns: &str, args: &[&str]) -> Result<Output> {
        let flag = format!("--net={netns}");
        let mut full = vec!["/usr/bin/nsenter", flag.as_str()];
        full.extend_from_slice(args);
        self.run(self.runtime_cmd(&full, &[]), b"")
    }

    /// Connects from a container to `ip:port`; the server's greeting or the error.
    fn connect_from(&self, ctr: &Ctr, ip: &str, port: u16) -> Result<String> {
        let out = self.in_netns(&ctr.netns, &[PY, "-c", CLIENT, ip, &port.to_string(), "3"])?;
        if out.ok() {
            Ok(out.stdout.trim().to_string())
        } else {
            bail!("{}{}", out.stdout.trim(), out.stderr.trim())
        }
    }

    /// Connects from the fake host (as root, like any client on that host).
    fn connect_from_host(&self, ip: &str, port: u16) -> Result<String> {
        let mut cmd = Command::new(PY);
        cmd.args(["-c", CLIENT, ip, &port.to_string(), "3"]);
        in_host(&mut cmd, &self.host);
        let out = self.run(cmd, b"")?;
        if out.ok() {
            Ok(out.stdout.trim().to_string())
        } else {
            bail!("{}{}", out.stdout.trim(), out.stderr.trim())
        }
    }

    fn spawn_server(&self, mut cmd: Command) -> Result<()> {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
        let mut child = cmd.spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line)?;
        if line.trim() != "ready" {
            let _ = child.kill();
            bail!("server did not start: {line:?}");
        }
        self.servers.lock().unwrap().push(child);
        Ok(())
    }

    /// A server on the fake host (as root), e.g. on its loopback.
    fn host_server(&self, bind: &str, port: u16, name: &str) -> Result<()> {
        let mut cmd = Command::new(PY);
        cmd.args(["-c", SERVER, bind, &port.to_string(), name]);
        in_host(&mut cmd, &self.host);
        self.spawn_server(cmd)
    }

    /// A server in a container, started by the runtime.
    fn container_server(&self, ctr: &Ctr, port: u16, name: &str) -> Result<()> {
        let flag = format!("--net={}", ctr.netns);
        let port = port.to_string();
        let cmd = self.runtime_cmd(&["/usr/bin/nsenter", &flag, PY, "-c", SERVER, "0.0.0.0", &port, name], &[]);
        self.spawn_server(cmd)
    }

    /// Invokes one plugin of the list as the runtime does.
    fn invoke(&self, ty: &str, command: &str, ctr: Option<&Ctr>, conf: &Value, env: &[(&str, &str)]) -> Result<Output> {
        let bin = self.bin.display().to_string();
        let (id, netns) = ctr.map(|c| (c.id.as_str(), c.netns.as_str())).unwrap_or(("", ""));
        let mut all = vec![
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", id),
            ("CNI_NETNS", netns),
            ("CNI_IFNAME", if ctr.is_some() { "eth0" } else { "" }),
            ("CNI_ARGS", ""),
            ("CNI_PATH", bin.as_str()),
        ];
        all.extend_from_slice(env);
        let path = self.bin.join(ty).display().to_string();
        self.run(self.runtime_cmd(&[path.as_str()], &all), conf.to_string().as_bytes())
    }

    fn list_parts(list: &Value) -> (String, String, Vec<Value>) {
        let name = list["name"].as_str().unwrap().to_string();
        let version = list["cniVersion"].as_str().unwrap().to_string();
        (name, version, list["plugins"].as_array().unwrap().clone())
    }

    /// ADD through a list (libcni's chaining); caches the result for DEL and CHECK.
    fn add_list(&self, list: &Value, ctr: &Ctr, env: &[(&str, &str)]) -> Result<Value> {
        let (name, version, plugins) = Self::list_parts(list);
        let mut prev: Option<Value> = None;
        for p in &plugins {
            let conf = build_config(p, &name, &version, prev.as_ref(), &ctr.caps);
            let ty = p["type"].as_str().unwrap();
            let out = self.invoke(ty, "ADD", Some(ctr), &conf, env)?;
            if !out.ok() {
                bail!("ADD {} failed: {}\n{}", ctr.id, out.stdout.trim(), out.stderr.trim());
            }
            prev = Some(out.json()?);
        }
        let result = prev.unwrap_or(Value::Null);
        self.results.lock().unwrap().insert(ctr.id.clone(), result.clone());
        Ok(result)
    }

    fn add(&self, ctr: &Ctr) -> Result<Value> {
        self.add_list(&self.list, ctr, &[])
    }

    /// A verb through the list with the cached result as `prevResult`; the first failure.
    fn verb_list(&self, list: &Value, verb: &str, ctr: &Ctr, env: &[(&str, &str)]) -> Result<Output> {
        let (name, version, mut plugins) = Self::list_parts(list);
        let prev = self.results.lock().unwrap().get(&ctr.id).cloned();
        if verb == "DEL" {
            plugins.reverse();
        }
        let mut last = None;
        for p in &plugins {
            let conf = build_config(p, &name, &version, prev.as_ref(), &ctr.caps);
            let out = self.invoke(p["type"].as_str().unwrap(), verb, Some(ctr), &conf, env)?;
            if !out.ok() {
                return Ok(out);
            }
            last = Some(out);
        }
        if verb == "DEL" {
            self.results.lock().unwrap().remove(&ctr.id);
        }
        last.context("empty list")
    }

    fn del(&self, ctr: &Ctr) -> Result<()> {
        let out = self.verb_list(&self.list, "DEL", ctr, &[])?;
        if !out.ok() {
            bail!("DEL {} failed: {}\n{}", ctr.id, out.stdout.trim(), out.stderr.trim());
        }
        Ok(())
    }

    fn check(&self, ctr: &Ctr) -> Result<Output> {
        self.verb_list(&self.list, "CHECK", ctr, &[])
    }

    /// GC or STATUS (1.1.0) to the wrapper with `extra` keys.
    fn list_verb(&self, verb: &str, extra: Value) -> Result<Output> {
        let (name, _, plugins) = Self::list_parts(&self.list);
        let mut conf = build_config(&plugins[0], &name, "1.1.0", None, &Map::new());
        for (k, v) in extra.as_object().unwrap() {
            conf[k] = v.clone();
        }
        self.invoke(WRAPPER, verb, None, &conf, &[])
    }

    fn state(&self) -> Option<Value> {
        std::fs::read(self.state_dir().join("state.json")).ok().map(|b| serde_json::from_slice(&b).unwrap())
    }

    fn helper_pid(&self) -> u32 {
        self.state().unwrap()["helper"]["pid"].as_u64().unwrap() as u32
    }

    /// Live processes (zombies do not count: the machine's init may not reap them) whose stat
    /// and command line (NUL-separated) `want` accepts.
    fn live_processes(&self, want: impl Fn(&str, &str) -> bool) -> Vec<u32> {
        let mut found = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
                .into_owned();
            let alive =
                stat.rsplit(')').next().and_then(|r| r.split_whitespace().next()).is_some_and(|s| s != "Z" && s != "X");
            if alive && want(&stat, &cmdline) {
                found.push(pid);
            }
        }
        found
    }

    /// Helper processes (either kind) of this test still running.
    fn live_helpers(&self) -> Vec<u32> {
        let marker = self.xdg.display().to_string();
        self.live_processes(|stat, cmdline| {
            let comm = stat.split_once('(').and_then(|(_, r)| r.rsplit_once(')')).map(|(c, _)| c).unwrap_or("");
            HELPER_COMMS.contains(&comm) && cmdline.contains(&marker) && !cmdline.contains("\0--forwarder\0")
        })
    }

    /// Port forwarders (the wrapper binary in forwarder mode) of this test still running.
    fn live_forwarders(&self) -> Vec<u32> {
        let marker = self.xdg.display().to_string();
        self.live_processes(|_, cmdline| cmdline.contains("\0--forwarder\0") && cmdline.contains(&marker))
    }

    fn forwarder_pid(&self) -> Option<u32> {
        self.state()?["forwarder"]["pid"].as_u64().map(|p| p as u32)
    }

    /// Mounts of the state directory, and netns aliases, in the pause's mount namespace.
    fn pause_mounts(&self) -> Vec<String> {
        let info = std::fs::read_to_string(format!("/proc/{}/mountinfo", self.pause_pid())).unwrap_or_default();
        let dir = self.state_dir().display().to_string();
        let alias = self.xdg.join("netns/cni-rootless-").display().to_string();
        info.lines().filter(|l| l.contains(&dir) || l.contains(&alias)).map(str::to_string).collect()
    }

    /// After the last DEL: no helper, no netns mount, no state.
    fn assert_clean(&self) {
        self.assert_clean_except(&[]);
    }

    /// [`Harness::assert_clean`], not counting the processes in `others` (which merely look
    /// like helpers).
    fn assert_clean_except(&self, others: &[u32]) {
        let helpers: Vec<u32> = self.live_helpers().into_iter().filter(|p| !others.contains(p)).collect();
        assert!(helpers.is_empty(), "helper still running: {helpers:?}");
        let forwarders = self.live_forwarders();
        assert!(forwarders.is_empty(), "port forwarder still running: {forwarders:?}");
        assert!(self.pause_mounts().is_empty(), "mounts left: {:?}", self.pause_mounts());
        let aliases: Vec<String> = std::fs::read_dir(self.xdg.join("netns"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("cni-rootless-"))
            .collect();
        assert!(aliases.is_empty(), "netns aliases left: {aliases:?}");
        assert!(
            !self.state_dir().exists(),
            "state directory left: {:?}",
            std::fs::read_dir(self.state_dir()).map(|d| d.count())
        );
    }

    /// Forward IDs the helper reports, straight from its API socket.
    fn hostfwd_entries(&self) -> Vec<Value> {
        let mut s = std::os::unix::net::UnixStream::connect(self.state_dir().join("slirp.sock")).unwrap();
        s.write_all(br#"{"execute": "list_hostfwd"}"#).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        let v: Value = serde_json::from_str(&answer).unwrap();
        v["entries"].as_array().or_else(|| v["return"]["entries"].as_array()).cloned().unwrap_or_default()
    }

    fn wrapper_conf(&self) -> Value {
        self.list["plugins"][0].clone()
    }

    fn with_wrapper(&self, f: impl FnOnce(&mut Value)) -> Value {
        let mut list = self.list.clone();
        f(&mut list["plugins"][0]);
        list
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for mut s in self.servers.lock().unwrap().drain(..) {
            let _ = s.kill();
            let _ = s.wait();
        }
        // Anything of this test's user still running with this test's paths in its command
        // line (helpers, container servers).
        let marker = self.xdg.display().to_string();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            let owned = e.metadata().is_ok_and(|m| m.uid() == self.m.uid);
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if owned && String::from_utf8_lossy(&cmdline).contains(&marker) {
                kill(pid);
            }
        }
        drop(self.pause.lock().unwrap().take());
        // The mounts lived only in the pause's mount namespace, which is gone now.
        let _ = std::fs::remove_dir_all(&self.xdg);
        let _ = std::fs::remove_dir_all(&self.extra_run);
        let _ = std::fs::remove_dir_all(&self.bin);
    }
}

fn script(path: &Path, body: &str) -> Result<()> {
    std::fs::write(path, body)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn in_host(cmd: &mut Command, host: &FakeHost) {
    let file = host.ns.file().unwrap();
    // SAFETY: runs in the forked child before exec; setns is one async-signal-safe syscall.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
        });
    }
}

fn wrapper(extra: Value) -> Value {
    wrapper_with(SLIRP, extra)
}

/// The wrapper with `helper` as its uplink.
fn wrapper_with(helper: &str, extra: Value) -> Value {
    let mut w = json!({
        "type": WRAPPER,
        "helper": helper,
        "capabilities": {"portMappings": true},
        "stateDir": "$XDG_RUNTIME_DIR/cni-rootless",
        "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    });
    for (k, v) in extra.as_object().unwrap() {
        w[k] = v.clone();
    }
    w
}

fn ip_of(result: &Value) -> String {
    result["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_string()
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed())
}

/// Two containers on the inner bridge, host loopback reached through the helper, a port
/// published on the (fake) host (slirp4netns; pasta refuses ports), and nothing left after the
/// last DEL.
fn traffic_through_the_helper_and_published_ports_then_clean_teardown(helper: &str) {
    let h = setup!(wrapper_with(helper, json!({"allowHostLoopback": true})));
    // slirp4netns forwards IPv4 ports itself (add_hostfwd); with pasta the wrapper's forwarder does.
    let slirp = helper == SLIRP;
    h.host_server("127.0.0.1", 38471, "host").unwrap();
    let c1 = h.container("c1").unwrap().with_port(18080, 80);
    let c2 = h.container("c2").unwrap();

    let (r1, first) = timed(|| h.add(&c1));
    let r1 = r1.unwrap();
    let (r2, later) = timed(|| h.add(&c2));
    let r2 = r2.unwrap();
    eprintln!("ADD timing through setpriv+nsenter: first (creates netns + {helper}) {first:?}, later {later:?}");
    let (ip1, ip2) = (ip_of(&r1), ip_of(&r2));
    assert!(ip1.starts_with("10.88.") && ip2.starts_with("10.88.") && ip1 != ip2, "{r1} {r2}");
    assert_eq!(r1["interfaces"][2]["sandbox"], c1.netns.as_str());

    // Outbound: container → the helper's gateway address → the fake host's loopback.
    assert_eq!(h.connect_from(&c1, "10.0.2.2", 38471).unwrap(), "hello-host from 127.0.0.1");
    // The inner bridge got the helper's MTU.
    let link = h.in_netns(&c1.netns, &["ip", "-j", "link", "show", "eth0"]).unwrap();
    assert!(link.stdout.contains("\"mtu\":65520"), "{}", link.stdout);
    // Container to container on the inner bridge.
    let ping = h.in_netns(&c1.netns, &["ping", "-c1", "-W2", &ip2]).unwrap();
    assert!(ping.ok(), "ping c2: {}{}", ping.stdout, ping.stderr);
    h.container_server(&c1, 80, "c1").unwrap();
    assert!(h.connect_from(&c2, &ip1, 80).unwrap().starts_with("hello-c1 from "));

    // Inbound: fake-host client → slirp4netns forward → inner portmap DNAT → container, or
    // → the wrapper's forwarder → container.
    if h.has_portmap() {
        let got = h.connect_from_host("127.0.0.1", 18080).unwrap();
        assert!(got.starts_with("hello-c1 from "), "{got}");
    } else {
        skip("portmap is not built: the published-port path stops at the rootless netns");
    }
    if slirp {
        assert_eq!(h.hostfwd_entries().len(), 1);
    } else {
        assert!(h.forwarder_pid().is_some(), "pasta's ports go through the forwarder");
    }
    let check = h.check(&c1).unwrap();
    assert!(check.ok(), "CHECK: {}{}", check.stdout, check.stderr);

    // The first container leaves: its port closes, the other keeps working.
    h.del(&c1).unwrap();
    assert!(h.connect_from_host("127.0.0.1", 18080).is_err(), "forward removed with its container");
    if slirp {
        assert!(h.hostfwd_entries().is_empty());
    }
    assert_eq!(h.connect_from(&c2, "10.0.2.2", 38471).unwrap(), "hello-host from 127.0.0.1");
    assert_eq!(h.live_helpers().len(), 1);

    h.del(&c2).unwrap();
    h.assert_clean();
    // Double DEL: nothing to do, nothing created.
    h.del(&c2).unwrap();
    h.del(&c1).unwrap();
    h.assert_clean();
}

/// DNS: the address the wrapper writes first into `resolv.conf` (cidr + 3) forwards a query
/// from a container to the host's own first nameserver, and the answer comes back.
fn dns_goes_through_the_advertised_address(helper: &str) {
    let h = setup!(wrapper_with(helper, json!({"cidr": "10.77.0.0/24"})));
    // The host's resolver, on the fake host, named by the resolv.conf the runtime's mount
    // namespace shows (the helpers read it there).
    h.host.ns.run("ip", &["addr", "add", "192.0.2.53/32", "dev", "lo"]).unwrap();
    let mut dns = Command::new(PY);
    dns.args(["-c", UDP_SERVER, "192.0.2.53", "53", "dns"]);
    in_host(&mut dns, &h.host);
    h.spawn_server(dns).unwrap();
    let resolv = h.xdg.join("host-resolv.conf");
    std::fs::write(&resolv, b"nameserver 192.0.2.53\n").unwrap();
    h.runtime_sh(&format!("mount --bind {} /etc/resolv.conf", resolv.display())).unwrap();
    let c1 = h.container("c1").unwrap();
    h.add(&c1).unwrap();
    let advertised = std::fs::read_to_string(h.state_dir().join("resolv.conf")).unwrap();
    assert_eq!(advertised.lines().next(), Some("nameserver 10.77.0.3"), "{advertised}");
    let out = h.in_netns(&c1.netns, &[PY, "-c", UDP_CLIENT, "10.77.0.3", "53", "3"]).unwrap();
    assert!(out.ok(), "no DNS answer through {helper}: {}{}", out.stdout, out.stderr);
    assert!(out.stdout.starts_with("hello-dns from "), "{}", out.stdout);
    h.del(&c1).unwrap();
    h.assert_clean();
}

/// `--disable-host-loopback` (slirp4netns) or `--no-map-gw` (pasta) by default: the host's
/// 127.0.0.1 is unreachable while the same server on another host address is reachable.
fn host_loopback_is_closed_by_default(helper: &str) {
    let h = setup!(wrapper_with(helper, json!({})));
    // A second host address: reachable through slirp4netns like any remote address.
    h.host.ns.run("ip", &["addr", "add", "192.0.2.1/32", "dev", "lo"]).unwrap();
    h.host_server("0.0.0.0", 38472, "host").unwrap();
    let c1 = h.container("c1").unwrap();
    h.add(&c1).unwrap();
    assert_eq!(h.connect_from(&c1, "192.0.2.1", 38472).unwrap(), "hello-host from 192.0.2.1");
    let blocked = h.connect_from(&c1, "10.0.2.2", 38472);
    assert!(blocked.is_err(), "host loopback must be closed by default: {blocked:?}");
    h.del(&c1).unwrap();
    h.assert_clean();
}

/// What the inner plugins see: the shared netns, resolv.conf through a systemd-resolved style
/// symlink chain (M1, M2, M5), a netns outside XDG under /run (M7), PATH with sbin (M10),
/// writable /run and /var/lib/cni (M11, M13), and nothing leaking back (M8).
#[test]
fn inner_plugins_see_the_prepared_mount_namespace() {
    let h = setup!(wrapper(json!({"plugins": [
        {"type": "probe", "tag": "first", "capabilities": {"portMappings": true}},
        {"type": "probe", "tag": "second"}
    ]})));
    let list = h.list.clone();
    // In the pause's private mount namespace, lay things out as systemd-resolved does, whatever
    // this machine has: /etc/resolv.conf → ../run/systemd/resolve/stub-resolv.conf → resolv.conf,
    // with a tmpfs /run that keeps /run/user (the XDG directories) reachable.
    let x = h.xdg.display();
    h.runtime_sh(&format!(
        r#"set -e
O={x}/etc-orig; mkdir -p $O; mount --bind /etc $O
mount -t tmpfs tmpfs /etc
for e in $O/* $O/.[!.]*; do
  [ -e "$e" ] || [ -L "$e" ] || continue
  n=${{e##*/}}
  [ "$n" = resolv.conf ] && continue
  if [ -L "$e" ]; then cp -P "$e" /etc/$n
  elif [ -d "$e" ]; then mkdir /etc/$n; mount --bind "$e" /etc/$n
  else touch /etc/$n; mount --bind "$e" /etc/$n; fi
done
ln -s ../run/systemd/resolve/stub-resolv.conf /etc/resolv.conf
R={x}/fake-run; mkdir -p $R; mount -t tmpfs tmpfs $R
mkdir -p $R/user $R/systemd/resolve
mount --rbind /run/user $R/user
printf 'nameserver 127.0.0.53\nnameserver 192.0.2.53\nsearch example.test\n' > $R/systemd/resolve/resolv.conf
ln -s resolv.conf $R/systemd/resolve/stub-resolv.conf
mount --rbind $R /run
"#
    ))
    .unwrap();
    // A container netns under /run but outside XDG_RUNTIME_DIR.
    let mut c1 = h.container_in(&h.extra_run, "c1").unwrap();
    c1.caps.insert(
        "portMappings".into(),
        json!([{"hostPort": 18081, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"}]),
    );
    let out_file = h.xdg.join("probe.out");
    std::fs::write(&out_file, b"").unwrap();
    std::os::unix::fs::chown(&out_file, Some(h.m.uid), Some(h.m.gid)).unwrap();
    let probe_env = out_file.display().to_string();
    let result = h.add_list(&list, &c1, &[("PROBE_OUT", probe_env.as_str())]).unwrap();
    assert_eq!(result["dns"]["search"], json!(["first", "second"]), "prevResult chaining: {result}");

    let lines: Vec<Value> =
        std::fs::read_to_string(&out_file).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    let first = &lines[0];
    let rootless_ino: u64 =
        h.runtime_sh(&format!("stat -L -c %i {}", h.rootless_netns())).unwrap().trim().parse().unwrap();
    assert_eq!(first["netns_ino"], rootless_ino, "inner plugins run in the shared netns");
    assert_eq!(first["uid"], 0);
    let path = first["path"].as_str().unwrap();
    assert!(path.split(':').any(|d| d == "/usr/sbin") && path.split(':').any(|d| d == "/sbin"), "{path}");
    for key in ["xtables_lock", "run_netns", "var_lib_cni"] {
        assert_eq!(first[key], true, "{key}: {}", first[key]);
    }
    let legacy = &first["iptables_legacy"];
    assert!(!legacy[1].as_str().unwrap_or("").contains("xtables.lock"), "iptables-legacy lock: {legacy}");
    let ctr_ino: u64 = h.runtime_sh(&format!("stat -L -c %i {}", c1.netns)).unwrap().trim().parse().unwrap();
    assert_eq!(first["cni_netns_ino"], ctr_ino, "CNI_NETNS outside XDG under /run stays reachable");
    let listing = &first["xdg_listing"];
    assert!(listing.as_array().unwrap().iter().any(|n| n == "cni-rootless"), "XDG_RUNTIME_DIR reachable: {listing}");
    // Config as libcni builds it; hostIP cleared for the inner portmap; capabilities filtered.
    assert_eq!(
        first["config"]["runtimeConfig"],
        json!({"portMappings": [{"hostPort": 18081, "containerPort": 80, "protocol": "tcp"}]})
    );
    assert_eq!(first["config"]["name"], h.list["name"]);
    assert!(lines[1]["config"].get("runtimeConfig").is_none());
    assert_eq!(lines[1]["config"]["prevResult"]["dns"]["search"], json!(["first"]));
    // The forward binds the host address the runtime asked for.
    let fwd = h.hostfwd_entries();
    assert_eq!(
        (fwd[0]["host_addr"].as_str(), fwd[0]["host_port"].as_u64(), fwd[0]["guest_port"].as_u64()),
        (Some("127.0.0.1"), Some(18081), Some(18081))
    );
    assert_eq!(fwd[0]["guest_addr"], "10.0.2.100");

    let mountinfo = first["mountinfo"].as_str().unwrap();
    assert_eq!(first["resolv"], "nameserver 10.0.2.3\nnameserver 192.0.2.53\nsearch example.test\n");
    assert!(
        mountinfo
            .lines()
            .any(|l| l.split_whitespace().nth(4) == Some("/run/systemd/resolve") && l.contains(" - tmpfs ")),
        "tmpfs over /run/systemd/resolve (M5)"
    );
    // The pause's own files are untouched.
    let host_view = h.runtime_sh("cat /run/systemd/resolve/resolv.conf").unwrap();
    assert!(host_view.starts_with("nameserver 127.0.0.53\n"), "{host_view}");
    // Nothing leaked back into the runtime's mount namespace (M8): only the netns file.
    let leaked = h.pause_mounts();
    assert_eq!(leaked.len(), 1, "{leaked:?}");
    assert!(leaked[0].contains(" - nsfs "), "{leaked:?}");
    // IPAM state lives in the state directory, not on the machine.
    assert!(h.state_dir().join("var/lib/cni/networks").join(h.list["name"].as_str().unwrap()).join("probe").exists());
    assert!(!Path::new("/var/lib/cni/networks").join(h.list["name"].as_str().unwrap()).exists());
    // slirp4netns does not pin copies of container netns mounts.
    let helper_mounts = std::fs::read_to_string(format!("/proc/{}/mountinfo", h.helper_pid())).unwrap();
    assert!(!helper_mounts.contains(&c1.netns), "helper pins the container netns");

    let del = h.verb_list(&list, "DEL", &c1, &[("PROBE_OUT", probe_env.as_str())]).unwrap();
    assert!(del.ok(), "{}{}", del.stdout, del.stderr);
    h.assert_clean();
}

/// Another `cidr` moves every derived address (gateway, DNS, tap, forward target); with IPv6
/// the tap gets its SLAAC address without waiting for duplicate address detection, which is
/// switched back on afterwards.
fn custom_cidr_and_ipv6(helper: &str) {
    let h =
        setup!(wrapper_with(helper, json!({"cidr": "10.99.0.0/24", "enableIPv6": true, "allowHostLoopback": true})));
    let slirp = helper == SLIRP;
    h.host_server("127.0.0.1", 38475, "host").unwrap();
    let c1 = h.container("c1").unwrap().with_port(18089, 80);
    h.add(&c1).unwrap();
    let netns = h.rootless_netns();
    let addrs = h.in_netns(&netns, &["ip", "-o", "addr", "show", "dev", "tap0"]).unwrap().stdout;
    assert!(addrs.contains("inet 10.99.0.100/24"), "{addrs}");
    assert!(addrs.contains("inet6 fd00::"), "SLAAC address at once: {addrs}");
    let dad = h.in_netns(&netns, &["cat", "/proc/sys/net/ipv6/conf/default/accept_dad"]).unwrap().stdout;
    assert_eq!(dad.trim(), "1", "DAD restored");
    assert_eq!(
        std::fs::read_to_string(h.state_dir().join("resolv.conf")).unwrap().lines().next(),
        Some("nameserver 10.99.0.3")
    );
    assert_eq!(h.connect_from(&c1, "10.99.0.2", 38475).unwrap(), "hello-host from 127.0.0.1");
    if slirp {
        assert_eq!(h.hostfwd_entries()[0]["guest_addr"], "10.99.0.100");
    }
    if h.has_portmap() {
        h.container_server(&c1, 80, "c1").unwrap();
        assert!(h.connect_from_host("127.0.0.1", 18089).unwrap().starts_with("hello-c1"));
    }
    h.del(&c1).unwrap();
    h.assert_clean();
}

/// With `enableIPv6` a container has an IPv6 path out: the shared netns gets a default route
/// through slirp4netns (the inner bridge's forwarding keeps the router advertisement's out),
/// and it is put back when removed and after a helper restart, which makes a new tap.
fn outbound_ipv6_from_a_container(helper: &str) {
    let h = setup!(wrapper_with(
        helper,
        json!({"enableIPv6": true, "plugins": [
        {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}], [{"subnet": "fd88::/64"}]],
                  "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}}]})
    ));
    // A global address on the fake host: slirp4netns reaches it like any remote IPv6 host.
    h.host.ns.run("ip", &["addr", "add", "2001:db8:1::1/128", "dev", "lo", "nodad"]).unwrap();
    h.host_server("::", 38476, "host6").unwrap();
    let c1 = h.container("c1").unwrap();
    let r = h.add(&c1).unwrap();
    assert!(r["ips"].as_array().unwrap().iter().any(|ip| ip["address"].as_str().unwrap().starts_with("fd88::")), "{r}");
    let netns = h.rootless_netns();
    let routes = h.in_netns(&netns, &["ip", "-6", "route", "show", "default"]).unwrap().stdout;
    assert!(routes.contains("default via fd00::2 dev tap0"), "{routes}");
    let forwarding = h.in_netns(&netns, &["cat", "/proc/sys/net/ipv6/conf/all/forwarding"]).unwrap().stdout;
    assert_eq!(forwarding.trim(), "1", "the inner bridge forwards");
    for (key, want) in [("tap0/accept_ra", "2"), ("tap0/accept_ra_defrtr", "0"), ("default/accept_ra", "1")] {
        let got = h.in_netns(&netns, &["cat", &format!("/proc/sys/net/ipv6/conf/{key}")]).unwrap().stdout;
        assert_eq!(got.trim(), want, "{key}");
    }
    let reached = |h: &Harness| -> Result<String> {
        // The container's own address may still be tentative for a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match h.connect_from(&c1, "2001:db8:1::1", 38476) {
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                other => return other,
            }
        }
    };
    let got = reached(&h).unwrap();
    assert!(got.starts_with("hello-host6 from 2001:db8:1::1"), "{got}");

    // A route removed by hand is put back by the next call.
    let del = h.in_netns(&netns, &["ip", "-6", "route", "del", "default"]).unwrap();
    assert!(del.ok(), "{}", del.stderr);
    let check = h.check(&c1).unwrap();
    assert!(check.ok(), "CHECK: {}{}", check.stdout, check.stderr);
    let routes = h.in_netns(&netns, &["ip", "-6", "route", "show", "default"]).unwrap().stdout;
    assert!(routes.contains("default via fd00::2 dev tap0"), "repaired: {routes}");

    // A new helper makes a new tap: the route comes back with it.
    kill(h.helper_pid());
    let c2 = h.container("c2").unwrap();
    h.add(&c2).unwrap();
    let routes = h.in_netns(&netns, &["ip", "-6", "route", "show", "default"]).unwrap().stdout;
    assert!(routes.contains("default via fd00::2 dev tap0"), "after restart: {routes}");
    assert!(reached(&h).unwrap().starts_with("hello-host6 from "));
    h.del(&c2).unwrap();
    h.del(&c1).unwrap();
    h.assert_clean();
}

/// A client with its own addresses, in its own namespace behind the fake host (a machine on
/// the host's LAN).
struct Client {
    ns: conformance::Netns,
}

impl Client {
    /// Host side 192.0.2.1 and 2001:db8:2::1, client 192.0.2.10 and 2001:db8:2::10.
    fn new(h: &Harness) -> Client {
        let ns = conformance::Netns::new("cl").unwrap();
        let (host_if, peer) = (format!("{}h", &ns.name()[..ns.name().len().min(12)]), "eth0");
        h.host
            .ns
            .run("ip", &["link", "add", &host_if, "type", "veth", "peer", "name", peer, "netns", ns.name()])
            .unwrap();
        for (cmd, args) in [
            (&h.host.ns, vec!["ip", "addr", "add", "192.0.2.1/24", "dev", &host_if]),
            (&h.host.ns, vec!["ip", "addr", "add", "2001:db8:2::1/64", "dev", &host_if, "nodad"]),
            (&h.host.ns, vec!["ip", "link", "set", &host_if, "up"]),
            (&ns, vec!["ip", "addr", "add", "192.0.2.10/24", "dev", peer]),
            (&ns, vec!["ip", "addr", "add", "2001:db8:2::10/64", "dev", peer, "nodad"]),
            (&ns, vec!["ip", "link", "set", peer, "up"]),
        ] {
            cmd.run(args[0], &args[1..]).unwrap();
        }
        Client { ns }
    }

    fn tcp(&self, ip: &str, port: u16) -> Result<String> {
        let out = self.ns.run(PY, &["-c", CLIENT, ip, &port.to_string(), "3"])?;
        Ok(out.trim().to_string())
    }

    fn udp(&self, ip: &str, port: u16) -> Result<String> {
        let out = self.ns.run(PY, &["-c", UDP_CLIENT, ip, &port.to_string(), "3"])?;
        Ok(out.trim().to_string())
    }
}

/// `hostIP` picks the host address a port is published on, tcp and udp, and a client on the
/// host's network reaches the container with its own address (slirp4netns keeps the source of
/// non-loopback clients). An IPv6 `hostIP` is refused by name until IPv6 ports are carried.
#[test]
fn host_ip_and_udp_ports_keep_the_client_address() {
    let h = setup!(wrapper(json!({})));
    let client = Client::new(&h);
    let mut c1 = h.container("c1").unwrap();
    c1.caps.insert(
        "portMappings".into(),
        json!([{"hostPort": 18092, "containerPort": 80, "protocol": "tcp", "hostIP": "192.0.2.1"},
               {"hostPort": 18093, "containerPort": 53, "protocol": "udp", "hostIP": ""},
               {"hostPort": 18094, "containerPort": 80, "protocol": "tcp", "hostIP": "0.0.0.0"}]),
    );
    h.add(&c1).unwrap();
    if !h.has_portmap() {
        skip("portmap is not built: the published-port path stops at the rootless netns");
        h.del(&c1).unwrap();
        return;
    }
    h.container_server(&c1, 80, "c1").unwrap();
    let flag = format!("--net={}", c1.netns);
    h.spawn_server(h.runtime_cmd(&["/usr/bin/nsenter", &flag, PY, "-c", UDP_SERVER, "0.0.0.0", "53", "udp"], &[]))
        .unwrap();
    assert_eq!(client.tcp("192.0.2.1", 18092).unwrap(), "hello-c1 from 192.0.2.10");
    assert_eq!(client.tcp("192.0.2.1", 18094).unwrap(), "hello-c1 from 192.0.2.10");
    assert_eq!(client.udp("192.0.2.1", 18093).unwrap(), "hello-udp from 192.0.2.10");
    // Published on 192.0.2.1 only: the host's loopback does not answer on that port.
    assert!(h.connect_from_host("127.0.0.1", 18092).is_err());
    // A client on the host's loopback appears as slirp4netns' host address.
    assert_eq!(h.connect_from_host("127.0.0.1", 18094).unwrap(), "hello-c1 from 10.0.2.2");
    let mut addrs: Vec<String> = h
        .hostfwd_entries()
        .iter()
        .map(|e| format!("{}:{}", e["host_addr"].as_str().unwrap(), e["host_port"]))
        .collect();
    addrs.sort();
    assert_eq!(addrs, ["0.0.0.0:18093", "0.0.0.0:18094", "192.0.2.1:18092"]);

    // IPv6 host addresses: a clear error, and the ADD leaves nothing of its own behind.
    let mut c2 = h.container("c2").unwrap();
    c2.caps.insert(
        "portMappings".into(),
        json!([{"hostPort": 18095, "containerPort": 80, "protocol": "tcp"},
               {"hostPort": 18096, "containerPort": 80, "protocol": "tcp", "hostIP": "2001:db8:2::1"}]),
    );
    let err = h.add(&c2).unwrap_err().to_string();
    assert!(err.contains("host port 18096/tcp") && err.contains("IPv6"), "{err}");
    assert_eq!(h.hostfwd_entries().len(), 3, "only the first container's forwards");
    h.del(&c1).unwrap();
    h.assert_clean();
}

/// Retries `f` for a few seconds: a container's IPv6 address may still be tentative at first.
fn eventually(f: impl Fn() -> Result<String>) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match f() {
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            other => return other,
        }
    }
}

/// With `enableIPv6`, ports are published on IPv6 too, carried by the wrapper's forwarder: a
/// client on the host's network reaches the container over either family with its own address
/// (tcp and udp), `[::1]` works (it appears as slirp4netns' host address), a port taken on the
/// host fails the ADD and leaves nothing, a killed forwarder is restarted with every port by
/// the next call, and it goes away with the last port.
fn ipv6_published_ports_keep_the_client_address(helper: &str) {
    let h = setup!(wrapper_with(
        helper,
        json!({"enableIPv6": true, "plugins": [
        {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}], [{"subnet": "fd88::/64"}]],
                  "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}},
        {"type": "portmap", "capabilities": {"portMappings": true}}]})
    ));
    if !h.has_portmap() {
        skip("portmap is not built: the IPv4 published-port path stops at the rootless netns");
        return;
    }
    let client = Client::new(&h);
    let mut c1 = h.container("c1").unwrap();
    c1.caps.insert(
        "portMappings".into(),
        json!([{"hostPort": 18110, "containerPort": 80, "protocol": "tcp", "hostIP": ""},
               {"hostPort": 18111, "containerPort": 53, "protocol": "udp", "hostIP": ""},
               {"hostPort": 18112, "containerPort": 80, "protocol": "tcp", "hostIP": "2001:db8:2::1"},
               {"hostPort": 18113, "containerPort": 80, "protocol": "tcp", "hostIP": "::"}]),
    );
    h.add(&c1).unwrap();
    let flag = format!("--net={}", c1.netns);
    h.spawn_server(h.runtime_cmd(&["/usr/bin/nsenter", &flag, PY, "-c", SERVER, "::", "80", "c1"], &[])).unwrap();
    h.spawn_server(h.runtime_cmd(&["/usr/bin/nsenter", &flag, PY, "-c", UDP_SERVER, "::", "53", "udp"], &[])).unwrap();

    // Both families, the client's own address (the server is dual-stack: IPv4 peers are mapped).
    assert_eq!(eventually(|| client.tcp("2001:db8:2::1", 18110)).unwrap(), "hello-c1 from 2001:db8:2::10");
    assert_eq!(client.tcp("192.0.2.1", 18110).unwrap(), "hello-c1 from ::ffff:192.0.2.10");
    assert_eq!(client.udp("2001:db8:2::1", 18111).unwrap(), "hello-udp from 2001:db8:2::10");
    assert_eq!(client.udp("192.0.2.1", 18111).unwrap(), "hello-udp from ::ffff:192.0.2.10");
    // A host address the route back does not prefer: UDP answers still come from it.
    h.host.ns.run("ip", &["addr", "add", "2001:db8:3::1/128", "dev", "lo", "nodad"]).unwrap();
    client.ns.run("ip", &["-6", "route", "add", "2001:db8:3::/64", "via", "2001:db8:2::1"]).unwrap();
    let connected =
        |ip: &str| client.ns.run(PY, &["-c", UDP_CLIENT_CONNECTED, ip, "18111", "3"]).map(|o| o.trim().to_string());
    assert_eq!(connected("2001:db8:3::1").unwrap(), "hello-udp from 2001:db8:2::10");
    // One IPv6 host address, and "::" (IPv6 only).
    assert_eq!(client.tcp("2001:db8:2::1", 18112).unwrap(), "hello-c1 from 2001:db8:2::10");
    assert!(h.connect_from_host("::1", 18112).is_err(), "published on 2001:db8:2::1 only");
    assert_eq!(client.tcp("2001:db8:2::1", 18113).unwrap(), "hello-c1 from 2001:db8:2::10");
    assert!(client.tcp("192.0.2.1", 18113).is_err(), "\"::\" is IPv6 only");
    // The host's loopback: an address the container can answer.
    assert_eq!(h.connect_from_host("::1", 18110).unwrap(), "hello-c1 from fd00::2");
    let check = h.check(&c1).unwrap();
    assert!(check.ok(), "CHECK: {}{}", check.stdout, check.stderr);
    let fwd = h.forwarder_pid().expect("forwarder recorded");
    assert_eq!(h.live_forwarders(), vec![fwd]);

    // A port taken on the host: the ADD fails by name and leaves nothing of its own.
    h.host_server("::", 18114, "taker").unwrap();
    let mut c2 = h.container("c2").unwrap();
    c2.caps.insert("portMappings".into(), json!([{"hostPort": 18114, "containerPort": 80, "hostIP": "::"}]));
    let err = h.add(&c2).unwrap_err().to_string();
    assert!(err.contains("host port 18114/tcp") && err.contains("already in use"), "{err}");
    let st = h.state().unwrap();
    assert_eq!(st["members"].as_array().unwrap().len(), 1, "{st}");

    // The forwarder killed: the next call restarts it with every port.
    kill(fwd);
    std::thread::sleep(Duration::from_millis(100));
    assert!(client.tcp("2001:db8:2::1", 18110).is_err(), "no IPv6 port without the forwarder");
    let check = h.check(&c1).unwrap();
    assert!(check.ok(), "CHECK repairs: {}{}", check.stdout, check.stderr);
    let again = h.forwarder_pid().unwrap();
    assert_ne!(again, fwd);
    assert_eq!(client.tcp("2001:db8:2::1", 18110).unwrap(), "hello-c1 from 2001:db8:2::10");
    assert_eq!(client.udp("2001:db8:2::1", 18111).unwrap(), "hello-udp from 2001:db8:2::10");
    assert_eq!(client.tcp("2001:db8:2::1", 18112).unwrap(), "hello-c1 from 2001:db8:2::10");

    // The plugins upgraded while it runs (a new file at the wrapper's path): the new wrapper
    // still knows the running forwarder as its own, keeps it, and can stop it.
    let fresh = h.bin.join("rootless-wrapper.new");
    std::fs::copy(h.bin.join(WRAPPER), &fresh).unwrap();
    std::fs::rename(&fresh, h.bin.join(WRAPPER)).unwrap();
    // The last port leaves: the forwarder goes, the netns stays for the other container.
    let c3 = h.container("c3").unwrap();
    h.add(&c3).unwrap();
    assert_eq!(h.forwarder_pid(), Some(again), "kept across the upgrade");
    h.del(&c1).unwrap();
    assert!(client.tcp("2001:db8:2::1", 18110).is_err(), "port closed with its container");
    assert!(h.live_forwarders().is_empty(), "{:?}", h.live_forwarders());
    assert!(h.state().unwrap().get("forwarder").is_none());
    h.del(&c3).unwrap();
    h.assert_clean();
}

/// A stopped forwarder (SIGSTOP): CHECK fails at once naming it, DEL detaches the container
/// and names the port it could not close, and once the forwarder runs again the next call
/// closes that port while the other container's keeps working; a GC that drops the last
/// container with ports closes them and stops the forwarder.
fn a_stopped_forwarder_gives_clean_errors_and_its_ports_close_later(helper: &str) {
    let h = setup!(wrapper_with(
        helper,
        json!({"enableIPv6": true, "plugins": [
        {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}], [{"subnet": "fd88::/64"}]],
                  "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}}]})
    ));
    let client = Client::new(&h);
    let mut c1 = h.container("c1").unwrap();
    c1.caps.insert("portMappings".into(), json!([{"hostPort": 18130, "containerPort": 80, "hostIP": "::"}]));
    let mut c2 = h.container("c2").unwrap();
    c2.caps.insert("portMappings".into(), json!([{"hostPort": 18131, "containerPort": 80, "hostIP": "::"}]));
    h.add(&c1).unwrap();
    h.add(&c2).unwrap();
    let flag = format!("--net={}", c2.netns);
    h.spawn_server(h.runtime_cmd(&["/usr/bin/nsenter", &flag, PY, "-c", SERVER, "::", "80", "c2"], &[])).unwrap();
    assert_eq!(eventually(|| client.tcp("2001:db8:2::1", 18131)).unwrap(), "hello-c2 from 2001:db8:2::10");
    let pid = h.forwarder_pid().unwrap();
    let signal = |sig| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap();
    signal(nix::sys::signal::Signal::SIGSTOP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap().rsplit(')').next().unwrap().contains(" T ") {
        assert!(Instant::now() < deadline, "forwarder {pid} did not stop");
        std::thread::sleep(Duration::from_millis(5));
    }
    let quick = Duration::from_secs(2);
    let (check, t) = timed(|| h.check(&c1).unwrap());
    let (_, msg, _) = check.error().unwrap();
    assert!(msg.contains("stopped") && msg.contains(&pid.to_string()), "{msg}");
    assert!(t < quick, "CHECK took {t:?}");
    let (del, t) = timed(|| h.verb_list(&h.list, "DEL", &c1, &[]).unwrap());
    let (_, msg, _) = del.error().unwrap();
    assert!(msg.contains("18130/tcp") && msg.contains("stopped"), "{msg}");
    assert!(t < quick, "DEL took {t:?}");
    assert_eq!(h.state().unwrap()["members"].as_array().unwrap().len(), 1, "c1 is detached all the same");

    signal(nix::sys::signal::Signal::SIGCONT);
    let check = h.check(&c2).unwrap();
    assert!(check.ok(), "CHECK: {}{}", check.stdout, check.stderr);
    assert_eq!(h.forwarder_pid(), Some(pid), "resumed, not restarted");
    // c1's port is closed (the host can bind it again); c2's still carried.
    h.host_server("::", 18130, "host").unwrap();
    assert_eq!(client.tcp("2001:db8:2::1", 18131).unwrap(), "hello-c2 from 2001:db8:2::10");
    // GC that knows no attachment: c2 and its port go, and the forwarder with them.
    let c3 = h.container("c3").unwrap();
    h.add(&c3).unwrap();
    let valid = json!([{"containerID": c3.id, "ifname": "eth0"}]);
    let gc = h.list_verb("GC", json!({"cni.dev/valid-attachments": valid})).unwrap();
    assert!(gc.ok(), "GC: {}{}", gc.stdout, gc.stderr);
    assert!(h.live_forwarders().is_empty(), "{:?}", h.live_forwarders());
    h.host_server("::", 18131, "host").unwrap();
    h.del(&c3).unwrap();
    h.assert_clean();
}

/// A dead helper is restarted by the next ADD, and the older container's port works again.
fn dead_helper_is_restarted_with_its_forwards(helper: &str) {
    let h = setup!(wrapper_with(helper, json!({"allowHostLoopback": true})));
    h.host_server("127.0.0.1", 38473, "host").unwrap();
    let c1 = h.container("c1").unwrap().with_port(18082, 80);
    h.add(&c1).unwrap();
    h.container_server(&c1, 80, "c1").unwrap();
    let old = h.helper_pid();
    kill(old);
    std::thread::sleep(Duration::from_millis(100));
    assert!(h.live_helpers().is_empty());
    assert!(h.connect_from(&c1, "10.0.2.2", 38473).is_err(), "no uplink without the helper");

    let c2 = h.container("c2").unwrap();
    h.add(&c2).unwrap();
    let new = h.helper_pid();
    assert_ne!(old, new);
    assert_eq!(h.live_helpers(), vec![new]);
    assert_eq!(h.connect_from(&c1, "10.0.2.2", 38473).unwrap(), "hello-host from 127.0.0.1");
    if h.has_portmap() {
        assert!(h.connect_from_host("127.0.0.1", 18082).unwrap().starts_with("hello-c1"));
    }
    let check = h.check(&c1).unwrap();
    assert!(check.ok(), "{}{}", check.stdout, check.stderr);
    h.del(&c1).unwrap();
    h.del(&c2).unwrap();
    h.assert_clean();
}

/// A netns file that lost its mount (reboot-like) and one from a dead user namespace (the
/// pause process restarted) are recreated, and the old helper is stopped.
fn stale_netns_is_recreated(helper: &str) {
    let h = setup!(wrapper_with(helper, json!({"allowHostLoopback": true})));
    h.host_server("127.0.0.1", 38474, "host").unwrap();
    let c1 = h.container("c1").unwrap();
    h.add(&c1).unwrap();
    let first_helper = h.helper_pid();
    // nsfs inode numbers are reused once a namespace is freed, so "recreated" is shown by the
    // path being a namespace again (and by the traffic below), not by a different inode.
    let fs_type = |h: &Harness| h.runtime_sh(&format!("stat -f -c %T {}", h.rootless_netns())).unwrap();
    assert_eq!(fs_type(&h).trim(), "nsfs");
    // The mount goes away; the path is now an empty file (as after a reboot with /run on disk).
    h.runtime_sh(&format!("umount -l {}", h.rootless_netns())).unwrap();
    assert_ne!(fs_type(&h).trim(), "nsfs", "the mount is gone");
    let c2 = h.container("c2").unwrap();
    h.add(&c2).unwrap();
    assert_eq!(fs_type(&h).trim(), "nsfs", "netns recreated");
    assert!(h.live_helpers().iter().all(|p| *p != first_helper), "the old helper is stopped");
    assert_eq!(h.live_helpers().len(), 1);
    assert_eq!(h.connect_from(&c2, "10.0.2.2", 38474).unwrap(), "hello-host from 127.0.0.1");
    assert_eq!(h.state().unwrap()["members"].as_array().unwrap().len(), 1, "c1 orphaned");
    h.del(&c1).unwrap();
    assert_eq!(h.state().unwrap()["members"].as_array().unwrap().len(), 1, "an orphan's DEL leaves c2");

    // A new pause process: new user namespace, the old mount is gone with the old mount ns.
    let second_helper = h.helper_pid();
    h.restart_pause().unwrap();
    let c3 = h.container("c3").unwrap();
    h.add(&c3).unwrap();
    assert!(!h.live_helpers().contains(&second_helper), "helper of the dead user namespace stopped");
    assert_eq!(h.live_helpers().len(), 1);
    assert_eq!(h.connect_from(&c3, "10.0.2.2", 38474).unwrap(), "hello-host from 127.0.0.1");
    // An orphan's DEL is harmless; c2's netns died with the old mount namespace, so the
    // runtime has no path to give; the last real member tears down.
    let mut c2 = c2;
    c2.netns.clear();
    h.del(&c2).unwrap();
    assert_eq!(h.live_helpers().len(), 1);
    h.del(&c3).unwrap();
    h.assert_clean();
}

/// A forwarder left in the user namespace of a dead pause process is known and stopped when
/// the stale netns is recreated: its host port is free again for the new attachment.
#[test]
fn forwarder_of_a_dead_user_namespace_is_stopped() {
    let h = setup!(wrapper(json!({"enableIPv6": true, "plugins": [
        {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}], [{"subnet": "fd88::/64"}]],
                  "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}}]})));
    let client = Client::new(&h);
    let port = json!([{"hostPort": 18140, "containerPort": 80, "hostIP": "::"}]);
    let mut c1 = h.container("c1").unwrap();
    c1.caps.insert("portMappings".into(), port.clone());
    h.add(&c1).unwrap();
    let old = h.forwarder_pid().unwrap();
    h.restart_pause().unwrap();
    let mut c2 = h.container("c2").unwrap();
    c2.caps.insert("portMappings".into(), port);
    h.add(&c2).unwrap();
    assert!(!h.live_forwarders().contains(&old), "forwarder of the dead user namespace stopped");
    let new = h.forwarder_pid().unwrap();
    assert_eq!(h.live_forwarders(), vec![new]);
    let flag = format!("--net={}", c2.netns);
    h.spawn_server(h.runtime_cmd(&["/usr/bin/nsenter", &flag, PY, "-c", SERVER, "::", "80", "c2"], &[])).unwrap();
    assert_eq!(eventually(|| client.tcp("2001:db8:2::1", 18140)).unwrap(), "hello-c2 from 2001:db8:2::10");
    h.del(&c2).unwrap();
    h.assert_clean();
}

/// 16 ADD/DEL pairs at once (create/teardown churn), then 16 ADDs and 16 DELs at once.
fn concurrent_add_and_del_of_sixteen_containers(helper: &str) {
    let h = setup!(wrapper_with(helper, json!({})));
    let ctrs: Vec<Ctr> = (0..16).map(|i| h.container(&format!("c{i}")).unwrap()).collect();
    let t = Instant::now();
    std::thread::scope(|s| {
        let handles: Vec<_> = ctrs
            .iter()
            .map(|c| {
                let h = &h;
                s.spawn(move || -> Result<()> {
                    h.add(c)?;
                    h.del(c)
                })
            })
            .collect();
        for j in handles {
            j.join().unwrap().unwrap();
        }
    });
    h.assert_clean();
    std::thread::scope(|s| {
        let handles: Vec<_> = ctrs.iter().map(|c| s.spawn(|| h.add(c))).collect();
        let ips: std::collections::BTreeSet<String> =
            handles.into_iter().map(|j| ip_of(&j.join().unwrap().unwrap())).collect();
        assert_eq!(ips.len(), 16, "distinct addresses");
    });
    assert_eq!(h.state().unwrap()["members"].as_array().unwrap().len(), 16);
    assert_eq!(h.live_helpers().len(), 1);
    if helper == SLIRP {
        // slirp4netns answers pings to its gateway itself; pasta passes them on to the host's
        // network, where nothing has that address.
        let ping = h.in_netns(&ctrs[0].netns, &["ping", "-c1", "-W2", "10.0.2.2"]).unwrap();
        assert!(ping.ok(), "{}{}", ping.stdout, ping.stderr);
    }
    h.host.ns.run("ip", &["addr", "add", "192.0.2.1/32", "dev", "lo"]).unwrap();
    h.host_server("192.0.2.1", 38477, "host").unwrap();
    for c in [&ctrs[0], &ctrs[15]] {
        assert!(h.connect_from(c, "192.0.2.1", 38477).unwrap().starts_with("hello-host from "));
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = ctrs.iter().map(|c| s.spawn(|| h.del(c))).collect();
        for j in handles {
            j.join().unwrap().unwrap();
        }
    });
    h.assert_clean();
    eprintln!("64 concurrent wrapper calls took {:?}", t.elapsed());
}

/// GC with the runtime's list detaches the others (inner DEL, forwards); with an empty list it
/// tears everything down; without a list it only validates.
fn gc_detaches_what_the_runtime_no_longer_knows(helper: &str) {
    let mut h = setup!(wrapper_with(helper, json!({})));
    let slirp = helper == SLIRP;
    h.list["cniVersion"] = json!("1.1.0");
    let c1 = h.container("c1").unwrap().with_port(18083, 80);
    let c2 = h.container("c2").unwrap().with_port(18084, 80);
    h.add(&c1).unwrap();
    let r2 = h.add(&c2).unwrap();
    let ipam = h.state_dir().join("var/lib/cni/networks").join(h.list["name"].as_str().unwrap());
    assert!(ipam.join(ip_of(&r2)).exists());
    let gc = h.list_verb("GC", json!({})).unwrap();
    assert!(gc.ok(), "{}{}", gc.stdout, gc.stderr);
    assert_eq!(h.state().unwrap()["members"].as_array().unwrap().len(), 2, "no list: only validation");

    let valid = json!([{"containerID": c1.id, "ifname": "eth0"}]);
    let gc = h.list_verb("GC", json!({"cni.dev/valid-attachments": valid, "cni.dev/attachments": valid})).unwrap();
    assert!(gc.ok(), "{}{}", gc.stdout, gc.stderr);
    let members = h.state().unwrap()["members"].as_array().unwrap().clone();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0]["containerID"], c1.id.as_str());
    assert!(!ipam.join(ip_of(&r2)).exists(), "c2's address released by the inner DEL");
    if slirp {
        let fwd = h.hostfwd_entries();
        assert_eq!(fwd.len(), 1);
        assert_eq!(fwd[0]["host_port"], 18083);
    }
    let links = h.in_netns(&h.rootless_netns(), &["ip", "-o", "link", "show", "type", "veth"]).unwrap();
    assert_eq!(links.stdout.lines().count(), 1, "{}", links.stdout);
    let (_, msg, _) = h.check(&c2).unwrap().error().unwrap();
    assert!(msg.contains("is not attached"), "{msg}");
    assert!(h.check(&c1).unwrap().ok());

    let gc = h.list_verb("GC", json!({"cni.dev/valid-attachments": [], "cni.dev/attachments": []})).unwrap();
    assert!(gc.ok(), "{}{}", gc.stdout, gc.stderr);
    h.assert_clean();
}

/// A failing inner ADD runs the inner DEL chain and returns the inner error unchanged; a failing
/// inner DEL does not stop the other DELs nor the teardown.
#[test]
fn inner_failures_are_cleaned_up_and_reported_unchanged() {
    let bridge = json!({"type": "bridge", "bridge": "cni0", "isGateway": true,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]]}});
    let h = setup!(wrapper(json!({"plugins": [bridge,
        {"type": "probe", "tag": "first"},
        {"type": "probe", "tag": "second", "failOn": ["ADD", "DEL"]}]})));
    let out_file = h.xdg.join("probe.out");
    std::fs::write(&out_file, b"").unwrap();
    std::os::unix::fs::chown(&out_file, Some(h.m.uid), Some(h.m.gid)).unwrap();
    let out_env = out_file.display().to_string();
    let env = [("PROBE_OUT", out_env.as_str())];
    let calls = || -> Vec<String> {
        std::fs::read_to_string(&out_file)
            .unwrap()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                format!("{} {}", v["cmd"].as_str().unwrap(), v["tag"].as_str().unwrap())
            })
            .collect()
    };
    let c1 = h.container("c1").unwrap().with_port(18088, 80);
    let out = h
        .invoke(
            WRAPPER,
            "ADD",
            Some(&c1),
            &build_config(&h.wrapper_conf(), h.list["name"].as_str().unwrap(), "1.0.0", None, &c1.caps),
            &env,
        )
        .unwrap();
    let (code, msg, _) = out.error().unwrap();
    assert_eq!((code, msg.as_str()), (142, "probe second fails ADD"), "the inner error, unchanged");
    assert_eq!(calls(), ["ADD first", "ADD second", "DEL second", "DEL first"]);
    let links = h.in_netns(&c1.netns, &["ip", "-o", "link", "show"]).unwrap();
    assert!(!links.stdout.contains("eth0"), "eth0 removed: {}", links.stdout);
    h.assert_clean();

    let list = h.with_wrapper(|w| {
        w["plugins"] =
            json!([{"type": "probe", "tag": "first"}, {"type": "probe", "tag": "second", "failOn": ["DEL"]}]);
    });
    std::fs::write(&out_file, b"").unwrap();
    let c2 = h.container("c2").unwrap();
    h.add_list(&list, &c1, &env).unwrap();
    h.add_list(&list, &c2, &env).unwrap();
    let del = h.verb_list(&list, "DEL", &c1, &env).unwrap();
    assert_eq!(del.error().unwrap().0, 142);
    assert_eq!(h.state().unwrap()["members"].as_array().unwrap().len(), 1, "c1 detached anyway");
    let del = h.verb_list(&list, "DEL", &c2, &env).unwrap();
    assert_eq!(del.error().unwrap().0, 142);
    assert_eq!(calls()[4..], ["DEL second", "DEL first", "DEL second", "DEL first"]);
    h.assert_clean();
    // Once everything is gone a retried DEL succeeds.
    assert!(h.verb_list(&list, "DEL", &c2, &env).unwrap().ok());
}

/// STATUS, and clear errors that change nothing.
#[test]
fn status_and_clear_errors() {
    let h = setup!(wrapper(json!({})));
    // Outside any user namespace: refused before anything is created.
    let c1 = h.container("c1").unwrap();
    let conf = build_config(&h.wrapper_conf(), h.list["name"].as_str().unwrap(), "1.0.0", None, &Map::new());
    let bin = h.bin.display().to_string();
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "plain"),
        ("CNI_NETNS", c1.netns.as_str()),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", bin.as_str()),
    ];
    let wrapper_path = h.bin.join(WRAPPER).display().to_string();
    let out = h.run(h.user_cmd(&[wrapper_path.as_str()], &env), conf.to_string().as_bytes()).unwrap();
    let (code, msg, _) = out.error().unwrap();
    assert_eq!(code, 999);
    assert!(msg.starts_with("rootless-wrapper must run inside the runtime's user namespace ("), "{msg}");
    assert!(!h.state_dir().exists() && !h.xdg.join("cni-rootless.lock").exists(), "nothing created");
    let mut status_conf = conf.clone();
    status_conf["cniVersion"] = json!("1.1.0");
    let env = [("CNI_COMMAND", "STATUS"), ("CNI_PATH", bin.as_str())];
    let out = h.run(h.user_cmd(&[wrapper_path.as_str()], &env), status_conf.to_string().as_bytes()).unwrap();
    let (code, msg, _) = out.error().unwrap();
    assert_eq!(code, 50, "{msg}");

    // Ready inside the user namespace; the inner plugins' STATUS is asked in a netns like the
    // shared one, and nothing but the lock file stays.
    let status = h.list_verb("STATUS", json!({})).unwrap();
    assert!(status.ok(), "{}{}", status.stdout, status.stderr);
    assert!(!h.state_dir().exists(), "STATUS leaves nothing behind");

    // A missing helper binary.
    let missing = h.with_wrapper(|w| w["helper"] = json!("/nonexistent/slirp4netns"));
    let err = h.add_list(&missing, &c1, &[]).unwrap_err().to_string();
    assert!(err.contains("not found"), "{err}");
    let out = {
        let (name, _, plugins) = Harness::list_parts(&missing);
        let conf = build_config(&plugins[0], &name, "1.1.0", None, &Map::new());
        h.invoke(WRAPPER, "STATUS", None, &conf, &[]).unwrap()
    };
    let (code, msg, _) = out.error().unwrap();
    assert!(code == 50 && msg.contains("/nonexistent/slirp4netns"), "{msg}");
    assert!(!h.state_dir().exists());

    // A helper that fails: its output is in the error, and no netns or state is left (L11).
    let fake = h.bin.join("fake-slirp4netns").display().to_string();
    let failing = h.with_wrapper(|w| w["helper"] = json!(fake));
    let err = h.add_list(&failing, &c1, &[]).unwrap_err().to_string();
    assert!(err.contains("boom: fake slirp4netns cannot start"), "{err}");
    h.assert_clean();

    // Ports: privileged, already published by another container, taken on the host.
    let low = c1.clone().with_port(80, 80);
    let err = h.add(&low).unwrap_err().to_string();
    assert!(err.contains("host port 80/tcp") && err.contains("privileged"), "{err}");
    h.assert_clean();
    let a = c1.clone().with_port(18085, 80);
    h.add(&a).unwrap();
    let mut b = h.container("c2").unwrap().with_port(18085, 81);
    let err = h.add(&b).unwrap_err().to_string();
    assert!(err.contains("host port 18085/tcp") && err.contains(&a.id), "{err}");
    h.host_server("0.0.0.0", 18086, "squatter").unwrap();
    b.caps.clear();
    let b = b.with_port(18086, 80);
    let err = h.add(&b).unwrap_err().to_string();
    assert!(err.contains("host port 18086/tcp") && err.contains("already in use"), "{err}");
    assert_eq!(h.hostfwd_entries().len(), 1, "the first container's forward is untouched");

    // A recorded helper PID that now belongs to another process of the user is not killed (L10).
    let sleeper = h.user_cmd(&["/bin/sleep", "60"], &[]).spawn().unwrap();
    let mut st = h.state().unwrap();
    let real = st["helper"]["pid"].as_u64().unwrap();
    st["helper"]["pid"] = json!(sleeper.id());
    std::fs::write(h.state_dir().join("state.json"), serde_json::to_vec(&st).unwrap()).unwrap();
    h.del(&a).unwrap();
    let alive = std::fs::read_to_string(format!("/proc/{}/stat", sleeper.id())).unwrap();
    assert!(alive.contains("(sleep) S"), "the impostor was not killed: {alive}");
    assert!(!h.live_helpers().contains(&(real as u32)), "the real helper was found by its netns and stopped");
    h.assert_clean();
    let mut sleeper = sleeper;
    let _ = sleeper.kill();
    let _ = sleeper.wait();

    // Broken state: STATUS reports it, ADD resets and goes on.
    std::fs::create_dir_all(h.state_dir()).unwrap();
    std::fs::write(h.state_dir().join("state.json"), b"{garbage").unwrap();
    for p in [h.state_dir(), h.state_dir().join("state.json")] {
        std::os::unix::fs::chown(p, Some(h.m.uid), Some(h.m.gid)).unwrap();
    }
    let out = h.list_verb("STATUS", json!({})).unwrap();
    let (code, msg, _) = out.error().unwrap();
    assert!(code == 50 && msg.contains("broken state"), "{msg}");
    h.add(&c1).unwrap();
    h.del(&c1).unwrap();
    h.assert_clean();

    // No access to /dev/net/tun (masked in the pause's mount namespace by a root-only file).
    let mask = h.extra_run.join("tun-mask");
    std::fs::write(&mask, b"").unwrap();
    std::fs::set_permissions(&mask, std::fs::Permissions::from_mode(0o600)).unwrap();
    h.runtime_sh(&format!("mount --bind {} /dev/net/tun", mask.display())).unwrap();
    let out = h.list_verb("STATUS", json!({})).unwrap();
    let (code, msg, _) = out.error().unwrap();
    assert!(code == 50 && msg.contains("/dev/net/tun"), "{msg}");
    let err = h.add(&c1).unwrap_err().to_string();
    assert!(err.contains("no read/write access to /dev/net/tun"), "{err}");
    h.assert_clean();
}

/// A stand-in for pasta that fails the way a broken one does.
const FAILING_PASTA: &str = "#!/bin/sh\necho 'boom: fake pasta cannot start' >&2\nexit 1\n";

/// pasta: published IPv4 ports go through the wrapper's forwarder (pasta has no port API), tcp
/// and udp, and the client's own address reaches the container; a netns already served by
/// pasta carries ports that way also when the configuration names slirp4netns; pasta is given
/// the netns alias; STATUS works; a missing pasta is named by STATUS, and one that fails to
/// start leaves nothing behind and its output is in the error.
#[test]
fn pasta_ports_go_through_the_forwarder_and_failures_are_reported() {
    let h = setup!(wrapper_with(PASTA, json!({})));
    let name = h.list["name"].as_str().unwrap().to_string();
    let client = Client::new(&h);
    let mut c1 = h.container("c1").unwrap();
    c1.caps.insert(
        "portMappings".into(),
        json!([{"hostPort": 18097, "containerPort": 80, "protocol": "tcp"},
               {"hostPort": 18098, "containerPort": 53, "protocol": "udp", "hostIP": "192.0.2.1"}]),
    );
    h.add(&c1).unwrap();
    h.container_server(&c1, 80, "c1").unwrap();
    let flag = format!("--net={}", c1.netns);
    h.spawn_server(h.runtime_cmd(&["/usr/bin/nsenter", &flag, PY, "-c", UDP_SERVER, "0.0.0.0", "53", "udp"], &[]))
        .unwrap();
    assert_eq!(eventually(|| client.tcp("192.0.2.1", 18097)).unwrap(), "hello-c1 from 192.0.2.10");
    assert_eq!(client.udp("192.0.2.1", 18098).unwrap(), "hello-udp from 192.0.2.10");
    assert_eq!(h.connect_from_host("127.0.0.1", 18097).unwrap(), "hello-c1 from 10.0.2.2");
    assert!(h.forwarder_pid().is_some());
    let check = h.check(&c1).unwrap();
    assert!(check.ok(), "CHECK: {}{}", check.stdout, check.stderr);

    let pid = h.helper_pid();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert!(HELPER_COMMS[1..].contains(&comm.trim()), "pasta runs as {comm}");
    // Given the netns where Debian's AppArmor profile lets it open one, and the same namespace.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let given = &args[args.iter().position(|a| a == "--netns").unwrap() + 1];
    assert!(given.starts_with(&format!("{}/netns/cni-rootless-", h.xdg.display())), "{args:?}");
    let ino = |p: &str| h.runtime_sh(&format!("stat -L -c %i {p}")).unwrap();
    assert_eq!(ino(given), ino(&h.rootless_netns()));
    assert!(!args.iter().any(|a| a.starts_with(&h.xdg.display().to_string()) && a.ends_with(".pid")), "{args:?}");
    let slirp_list = h.with_wrapper(|w| w["helper"] = json!(SLIRP));
    let c2 = h.container("c2").unwrap().with_port(18099, 80);
    h.add_list(&slirp_list, &c2, &[]).unwrap();
    h.container_server(&c2, 80, "c2").unwrap();
    assert_eq!(client.tcp("192.0.2.1", 18099).unwrap(), "hello-c2 from 192.0.2.10");
    assert_eq!(h.live_helpers(), vec![pid], "the running pasta is kept");
    let status = h.list_verb("STATUS", json!({})).unwrap();
    assert!(status.ok(), "{}{}", status.stdout, status.stderr);
    let del = h.verb_list(&slirp_list, "DEL", &c2, &[]).unwrap();
    assert!(del.ok(), "{}{}", del.stdout, del.stderr);
    h.del(&c1).unwrap();
    assert!(client.tcp("192.0.2.1", 18097).is_err(), "port closed with its container");
    h.assert_clean();

    let missing = h.with_wrapper(|w| w["helper"] = json!("/nonexistent/pasta"));
    let (_, _, plugins) = Harness::list_parts(&missing);
    let out = h.invoke(WRAPPER, "STATUS", None, &build_config(&plugins[0], &name, "1.1.0", None, &Map::new()), &[]);
    let (code, msg, _) = out.unwrap().error().unwrap();
    assert!(code == 50 && msg.contains("/nonexistent/pasta"), "{msg}");

    script(&h.bin.join("pasta-broken"), FAILING_PASTA).unwrap();
    let broken = h.bin.join("pasta-broken").display().to_string();
    let failing = h.with_wrapper(|w| w["helper"] = json!(broken));
    let err = h.add_list(&failing, &c1, &[]).unwrap_err().to_string();
    assert!(err.contains("boom: fake pasta cannot start"), "{err}");
    h.assert_clean();
}

/// pasta, recognised by what it is, not by what the record says: an impostor named pasta whose
/// command line names the same netns is never signalled while the real pasta is found and
/// stopped; a stopped pasta (SIGSTOP) gives CHECK a clean error at once, blocks no DEL, and the
/// last DEL stops it all the same.
#[test]
fn pasta_impostors_are_spared_and_a_stopped_pasta_blocks_nobody() {
    let h = setup!(wrapper_with(PASTA, json!({})));
    let c1 = h.container("c1").unwrap();
    h.add(&c1).unwrap();
    let real = h.helper_pid();
    let cmdline = std::fs::read(format!("/proc/{real}/cmdline")).unwrap();
    let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let alias = args[args.iter().position(|a| a == "--netns").unwrap() + 1].clone();
    let fake_bin = h.extra_run.join("impostor");
    std::fs::create_dir_all(&fake_bin).unwrap();
    std::os::unix::fs::symlink("/bin/bash", fake_bin.join("pasta")).unwrap();
    let exe = fake_bin.join("pasta").display().to_string();
    let mut impostor = h
        .user_cmd(&[&exe, "-c", "read -t 3600 x", "pasta", "--config-net", "--netns", &alias], &[])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ipid = impostor.id();
    std::thread::sleep(Duration::from_millis(100));
    let mut st = h.state().unwrap();
    st["helper"]["pid"] = json!(ipid);
    st["helper"]["startTime"] = json!(start_time(ipid));
    st["helper"]["comm"] = json!("pasta");
    std::fs::write(h.state_dir().join("state.json"), serde_json::to_vec(&st).unwrap()).unwrap();
    h.del(&c1).unwrap();
    assert!(is_running(ipid), "the impostor was signalled");
    assert!(!is_running(real), "the real pasta, verified, was stopped");
    h.assert_clean_except(&[ipid]);
    let _ = impostor.kill();
    let _ = impostor.wait();

    let (c2, c3) = (h.container("c2").unwrap(), h.container("c3").unwrap());
    h.add(&c2).unwrap();
    h.add(&c3).unwrap();
    let pid = h.helper_pid();
    let signal = |sig| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap();
    let stopped = || {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap().rsplit(')').next().unwrap().contains(" T ")
        {
            assert!(Instant::now() < deadline, "pasta {pid} did not stop");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    signal(nix::sys::signal::Signal::SIGSTOP);
    stopped();
    let quick = Duration::from_secs(10);
    let (check, t) = timed(|| h.check(&c2).unwrap());
    let (_, msg, _) = check.error().unwrap();
    assert!(msg.contains("stopped") && msg.contains(&pid.to_string()), "{msg}");
    assert!(t < quick, "CHECK took {t:?}");
    let (del, t) = timed(|| h.del(&c2));
    del.unwrap();
    assert!(t < quick, "DEL took {t:?}");
    assert!(is_running(pid), "a stopped pasta serving others is left to its owner");
    signal(nix::sys::signal::Signal::SIGCONT);
    let check = h.check(&c3).unwrap();
    assert!(check.ok(), "{}{}", check.stdout, check.stderr);
    signal(nix::sys::signal::Signal::SIGSTOP);
    stopped();
    let (del, t) = timed(|| h.del(&c3));
    del.unwrap();
    assert!(t < quick, "{t:?}");
    h.assert_clean();
}

/// Every example configuration with the wrapper, run rootless: ADD, traffic, CHECK, DEL.
#[test]
fn example_conflists_run_rootless() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples-conf");
    let mut examples = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("conflist") {
            continue;
        }
        let list: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        if list["plugins"].as_array().unwrap().iter().any(|pl| pl["type"] == WRAPPER) {
            examples.push((p, list));
        }
    }
    assert!(!examples.is_empty(), "no rootless example in {}", dir.display());
    for (path, list) in examples {
        let h = setup!(list["plugins"][0].clone());
        let c1 = h.container("c1").unwrap().with_port(18087, 80);
        h.add_list(&list, &c1, &[]).unwrap_or_else(|e| panic!("{}: ADD: {e}", path.display()));
        h.container_server(&c1, 80, "c1").unwrap();
        if h.has_portmap() && list["plugins"][0]["capabilities"]["portMappings"] == true {
            let got = h.connect_from_host("127.0.0.1", 18087).unwrap();
            assert!(got.starts_with("hello-c1"), "{}: {got}", path.display());
        }
        let check = h.verb_list(&list, "CHECK", &c1, &[]).unwrap();
        assert!(check.ok(), "{}: CHECK: {}{}", path.display(), check.stdout, check.stderr);
        let del = h.verb_list(&list, "DEL", &c1, &[]).unwrap();
        assert!(del.ok(), "{}: DEL: {}{}", path.display(), del.stdout, del.stderr);
        h.assert_clean();
    }
}

/// Moves `mb` megabytes from a container to a sink on the fake host's loopback; Gbit/s.
fn throughput(h: &Harness, ctr: &Ctr, port: u16, mb: u32) -> f64 {
    let mut sink = Command::new(PY);
    sink.args(["-c", TCP_SINK_PY, "127.0.0.1", &port.to_string()]).stdin(Stdio::null()).stdout(Stdio::piped());
    in_host(&mut sink, &h.host);
    let mut sink = sink.spawn().unwrap();
    let mut out = BufReader::new(sink.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let src =
        h.in_netns(&ctr.netns, &[PY, "-c", TCP_SOURCE_PY, "10.0.2.2", &port.to_string(), &mb.to_string()]).unwrap();
    assert!(src.ok(), "{}", src.stderr);
    line.clear();
    out.read_line(&mut line).unwrap();
    let _ = sink.wait();
    let mut f = line.split_whitespace();
    let bytes: f64 = f.next().unwrap().parse().unwrap();
    let secs: f64 = f.next().unwrap().parse().unwrap();
    bytes * 8.0 / secs / 1e9
}

/// Figures for the report, not a test: `cargo test -p conformance --test rootless -- --ignored
/// --nocapture figures` (`CNI_TEST_PLUGIN_DIR=target/release` for release binaries).
#[test]
#[ignore]
fn figures() {
    for bridge_mtu in [None, Some(1500)] {
        let mut w = wrapper(json!({"allowHostLoopback": true}));
        if let Some(mtu) = bridge_mtu {
            w["plugins"][0]["mtu"] = json!(mtu);
        }
        let h = setup!(w);
        let ctrs: Vec<Ctr> = (0..6).map(|i| h.container(&format!("f{i}")).unwrap()).collect();
        let mut times = Vec::new();
        let name = h.list["name"].as_str().unwrap().to_string();
        for c in &ctrs {
            let conf = build_config(&h.wrapper_conf(), &name, "1.0.0", None, &c.caps);
            let (out, t) = timed(|| h.invoke(WRAPPER, "ADD", Some(c), &conf, &[("ROOTLESS_WRAPPER_LOG", "debug")]));
            let out = out.unwrap();
            assert!(out.ok(), "{}", out.stderr);
            h.results.lock().unwrap().insert(c.id.clone(), out.json().unwrap());
            let own = out.stderr.lines().find(|l| l.contains("host side")).unwrap_or("").to_string();
            eprintln!("FIGURE   wrapper's own view: {}", own.split("ADD ").nth(1).unwrap_or(&own));
            times.push(t);
        }
        let later = &times[1..];
        let mean = later.iter().sum::<Duration>() / later.len() as u32;
        eprintln!("FIGURE bridge mtu {bridge_mtu:?}: first ADD {:?}; later ADDs mean {mean:?} ({later:?})", times[0]);
        for run in 0..3 {
            let gbit = throughput(&h, &ctrs[0], 38479 + run, 200);
            eprintln!("FIGURE bridge mtu {bridge_mtu:?}: 200 MB container -> host loopback: {gbit:.2} Gbit/s");
        }
        for c in &ctrs {
            h.del(c).unwrap();
        }
        h.assert_clean();
    }
}

/// Receives one connection on a dual-stack socket to its end; prints bytes and seconds.
const SINK_ANY: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", int(sys.argv[1]))); s.listen(1)
print("ready", flush=True)
c, a = s.accept(); t = time.monotonic(); n = 0
while True:
    b = c.recv(1 << 20)
    if not b:
        break
    n += len(b)
print(n, time.monotonic() - t, flush=True)
"#;

/// Sends `argv[2]` MiB to the first connection on a dual-stack socket, then exits.
const SOURCE_ANY: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", int(sys.argv[1]))); s.listen(1)
print("ready", flush=True)
c, a = s.accept(); buf = b"x" * (1 << 20)
for _ in range(int(sys.argv[2])):
    c.sendall(buf)
c.close()
"#;

/// Connects and reads to the end; prints bytes and seconds.
const DRAIN: &str = r#"
import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
t = time.monotonic(); n = 0
while True:
    b = c.recv(1 << 20)
    if not b:
        break
    n += len(b)
print(n, time.monotonic() - t, flush=True)
"#;

/// Gbit/s of "bytes seconds".
fn gbit(line: &str) -> f64 {
    let mut f = line.split_whitespace();
    let bytes: f64 = f.next().unwrap().parse().unwrap();
    let secs: f64 = f.next().unwrap().parse().unwrap();
    bytes * 8.0 / secs / 1e9
}

/// Throughput through a published port between `client` and a server in `ctr` listening on
/// `cport`: `upload` client → container, else container → client.
fn published_throughput(h: &Harness, ctr: &Ctr, client: &Client, ip: &str, port: u16, cport: u16, upload: bool) -> f64 {
    let flag = format!("--net={}", ctr.netns);
    let (script, mb) = (if upload { SINK_ANY } else { SOURCE_ANY }, "200");
    let cport = cport.to_string();
    let mut args = vec!["/usr/bin/nsenter", flag.as_str(), PY, "-c", script, cport.as_str()];
    if !upload {
        args.push(mb);
    }
    let mut server = h.runtime_cmd(&args, &[]);
    server.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut server = server.spawn().unwrap();
    let mut out = BufReader::new(server.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let port = port.to_string();
    let figure = if upload {
        client.ns.run(PY, &["-c", TCP_SOURCE_PY, ip, &port, mb]).unwrap();
        line.clear();
        out.read_line(&mut line).unwrap();
        gbit(&line)
    } else {
        gbit(&client.ns.run(PY, &["-c", DRAIN, ip, &port]).unwrap())
    };
    let _ = server.kill();
    let _ = server.wait();
    figure
}

/// Figures for the report, not a test: published-port throughput of slirp4netns (IPv4) beside
/// the forwarder (IPv6; and IPv4 with pasta), each helper in turn, all keeping the client's
/// address: `cargo test -p conformance --test rootless -- --ignored --nocapture
/// published_port_figures`.
#[test]
#[ignore]
fn published_port_figures() {
    for helper in [SLIRP, PASTA] {
        let h = setup!(wrapper_with(
            helper,
            json!({"enableIPv6": true, "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}], [{"subnet": "fd88::/64"}]],
                      "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": true}}]})
        ));
        let client = Client::new(&h);
        let c1 = h.container("c1").unwrap().with_port(18120, 5001);
        h.add(&c1).unwrap();
        h.container_server(&c1, 80, "c1").unwrap();
        let ipv4 = if helper == SLIRP { "IPv4 through slirp4netns" } else { "IPv4 through the forwarder" };
        for (what, ip) in [(ipv4, "192.0.2.1"), ("IPv6 through the forwarder", "2001:db8:2::1")] {
            for upload in [true, false] {
                let runs: Vec<String> = (0..3)
                    .map(|_| format!("{:.2}", published_throughput(&h, &c1, &client, ip, 18120, 5001, upload)))
                    .collect();
                let dir = if upload { "client -> container" } else { "container -> client" };
                eprintln!("FIGURE helper {helper}: published port, {what}, 200 MB {dir}: {} Gbit/s", runs.join(" / "));
            }
        }
        h.del(&c1).unwrap();
        h.assert_clean();
    }
}

/// The start time (`/proc/<pid>/stat` field 22) of a live process.
fn start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat.rsplit(')').next().unwrap().split_whitespace().nth(19).unwrap().parse().unwrap()
}

fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit(')').next().and_then(|r| r.split_whitespace().next()).is_some_and(|st| st != "Z"))
}

/// A state directory someone else owns, one anybody can write, and one reached through a link
/// someone else planted are refused with a clear error before anything in them is used or
/// made; so is a lock file that is a planted link. The directory the wrapper makes is 0700.
#[test]
fn unsafe_state_dirs_are_refused_before_anything_is_used() {
    let h = setup!(wrapper(json!({})));
    let c1 = h.container("c1").unwrap();
    let dir = h.state_dir();
    let conf = build_config(&h.wrapper_conf(), h.list["name"].as_str().unwrap(), "1.0.0", None, &c1.caps);
    let refused = |what: &str, needle: &str| {
        for verb in ["ADD", "DEL"] {
            let (out, t) = timed(|| h.invoke(WRAPPER, verb, Some(&c1), &conf, &[]).unwrap());
            let (code, msg, _) = out.error().unwrap_or_else(|e| panic!("{what}: {verb} was not refused: {e}"));
            assert_eq!(code, 999, "{what}: {msg}");
            assert!(msg.contains(needle), "{what}: {verb}: {msg}");
            assert!(t < Duration::from_secs(10), "{what}: {t:?}");
        }
        assert!(h.live_helpers().is_empty(), "{what}: a helper was started");
        assert!(h.pause_mounts().is_empty(), "{what}: something was mounted");
    };
    let own = |p: &Path| std::os::unix::fs::lchown(p, Some(h.m.uid), Some(h.m.gid)).unwrap();

    // Another user's directory, with a file of theirs in it.
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("theirs"), b"keep").unwrap();
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    refused("another user's directory", "unsafe stateDir");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "nothing made or removed in it");
    assert_eq!(std::fs::read(dir.join("theirs")).unwrap(), b"keep");
    std::fs::remove_dir_all(&dir).unwrap();

    // Our own directory, writable by everybody.
    std::fs::create_dir(&dir).unwrap();
    own(&dir);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    refused("a world-writable directory", "writable by other users");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    std::fs::remove_dir(&dir).unwrap();

    // A link planted by someone else (root here) in the user's XDG_RUNTIME_DIR, pointing at a
    // directory that is fine in itself.
    let target = h.xdg.join("elsewhere");
    std::fs::create_dir(&target).unwrap();
    own(&target);
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(&target, &dir).unwrap();
    refused("a planted symbolic link", "planted");
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);
    std::fs::remove_file(&dir).unwrap();

    // The lock file as a planted link: not written through.
    let victim = h.xdg.join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    own(&victim);
    let lock = h.xdg.join("cni-rootless.lock");
    std::fs::remove_file(&lock).unwrap();
    std::os::unix::fs::symlink(&victim, &lock).unwrap();
    refused("a planted lock link", "lock");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    std::fs::remove_file(&lock).unwrap();

    // With all that gone: made by the wrapper, 0700, the user's, and removed at the end.
    h.add(&c1).unwrap();
    let meta = std::fs::metadata(&dir).unwrap();
    assert_eq!((meta.uid(), meta.permissions().mode() & 0o777), (h.m.uid, 0o700));
    h.del(&c1).unwrap();
    h.assert_clean();
}

/// A forged `state.json` cannot make the wrapper signal a process it did not start (an
/// innocent process of the user that looks like the helper in every recorded fact and whose
/// arguments name the netns and the socket), unmount another container's netns, or delete a
/// file it names; teardown removes only what the wrapper made; a state file that is a FIFO is
/// not waited on.
#[test]
fn forged_state_signals_unmounts_and_deletes_nothing_it_did_not_make() {
    let h = setup!(wrapper(json!({})));
    let c1 = h.container("c1").unwrap().with_port(18093, 80);
    // Another container's netns: a mount in the runtime's mount namespace.
    let c2 = h.container("c2").unwrap();
    let nsfs = |p: &str| h.runtime_sh(&format!("stat -f -c %T {p}")).unwrap().trim() == "nsfs";
    // DEL removes the container's interface before it returns, not when the kernel gets round
    // to freeing the shared netns it reset.
    let no_eth0 = |ctr: &Ctr| {
        let out = h.in_netns(&ctr.netns, &["ip", "-o", "link", "show"]).unwrap();
        assert!(out.ok() && !out.stdout.contains("eth0"), "eth0 left in {} after DEL: {}", ctr.netns, out.stdout);
    };
    h.add(&c1).unwrap();
    let real = h.helper_pid();

    // The impostor: a shell named slirp4netns, run by the user, whose command line carries
    // the same arguments a helper of this directory has.
    let fake_bin = h.extra_run.join("impostor");
    std::fs::create_dir_all(&fake_bin).unwrap();
    std::os::unix::fs::symlink("/bin/bash", fake_bin.join("slirp4netns")).unwrap();
    let exe = fake_bin.join("slirp4netns").display().to_string();
    let sock = h.state_dir().join("slirp.sock").display().to_string();
    let netns = h.rootless_netns();
    // It waits on a pipe this test holds: no child of its own outlives it.
    let mut impostor = h
        .user_cmd(
            &[&exe, "-c", "read -t 3600 x", "slirp4netns", "--api-socket", &sock, "--netns-type=path", &netns, "tap0"],
            &[],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ipid = impostor.id();
    std::thread::sleep(Duration::from_millis(100));
    assert!(std::fs::read_to_string(format!("/proc/{ipid}/comm")).unwrap().trim() == "slirp4netns");

    let forge = |f: &dyn Fn(&mut Value)| {
        let mut st = h.state().unwrap();
        f(&mut st);
        std::fs::write(h.state_dir().join("state.json"), serde_json::to_vec(&st).unwrap()).unwrap();
    };
    forge(&|st| {
        st["helper"]["pid"] = json!(ipid);
        st["helper"]["startTime"] = json!(start_time(ipid));
        st["netns"] = json!(c2.netns);
    });
    h.del(&c1).unwrap();
    no_eth0(&c1);
    assert!(is_running(ipid), "the impostor was signalled");
    assert!(nsfs(&c2.netns), "another container's netns was unmounted");
    assert!(!is_running(real), "the real helper, verified, was stopped");
    h.assert_clean_except(&[ipid]);

    // A netns and a socket named elsewhere, and a file of the user's in the state directory.
    // A reset orphans the container's end of its veth, which the kernel removes with the old
    // rootless netns, asynchronously: every step after a reset uses a fresh container.
    let c3 = h.container("c3").unwrap().with_port(18093, 80);
    h.add(&c3).unwrap();
    let victim = h.xdg.join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    std::os::unix::fs::chown(&victim, Some(h.m.uid), Some(h.m.gid)).unwrap();
    let keep = h.state_dir().join("notes.txt");
    std::fs::write(&keep, b"mine").unwrap();
    forge(&|st| {
        st["netns"] = json!(victim);
        st["helper"]["apiSocket"] = json!(victim);
    });
    h.del(&c3).unwrap();
    no_eth0(&c3);
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious", "a file the record names was deleted");
    assert_eq!(std::fs::read(&keep).unwrap(), b"mine", "teardown removed a file it did not make");
    let left: Vec<_> = std::fs::read_dir(h.state_dir()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(left, ["notes.txt"], "only the layout is removed");
    std::fs::remove_dir_all(h.state_dir()).unwrap();
    h.assert_clean_except(&[ipid]);

    // A state file that is a FIFO: reset, not waited on.
    let (c4, c5) = (h.container("c4").unwrap(), h.container("c5").unwrap());
    h.add(&c4).unwrap();
    let state = h.state_dir().join("state.json");
    std::fs::remove_file(&state).unwrap();
    nix::unistd::mkfifo(&state, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    std::os::unix::fs::chown(&state, Some(h.m.uid), Some(h.m.gid)).unwrap();
    let (added, t) = timed(|| h.add(&c5));
    added.unwrap();
    assert!(t < Duration::from_secs(20), "{t:?}");
    assert!(std::fs::symlink_metadata(&state).unwrap().is_file());
    h.del(&c5).unwrap();
    h.assert_clean_except(&[ipid]);

    let _ = impostor.kill();
    let _ = impostor.wait();
}

/// A stopped helper (SIGSTOP) gives CHECK and DEL a clean error within seconds instead of
/// hanging on its API socket with the state lock held; calls at the same time are not
/// blocked; the last DEL still stops it and cleans up.
#[test]
fn stopped_helper_gives_clean_errors_and_blocks_nobody() {
    let h = setup!(wrapper(json!({})));
    let c1 = h.container("c1").unwrap().with_port(18094, 80);
    let c2 = h.container("c2").unwrap().with_port(18095, 80);
    let c3 = h.container("c3").unwrap();
    for c in [&c1, &c2, &c3] {
        h.add(c).unwrap();
    }
    let pid = h.helper_pid();
    let signal = |sig| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap();
    // A signal takes effect once the helper is scheduled: wait until the kernel says it stopped.
    let stopped = || {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap().rsplit(')').next().unwrap().contains(" T ")
        {
            assert!(Instant::now() < deadline, "slirp4netns {pid} did not stop");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    signal(nix::sys::signal::Signal::SIGSTOP);
    stopped();
    let quick = Duration::from_secs(10);

    let (check, t) = timed(|| h.check(&c1).unwrap());
    let (_, msg, _) = check.error().unwrap();
    assert!(msg.contains("stopped"), "{msg}");
    assert!(t < quick, "CHECK took {t:?}");

    // Several calls at once: none waits behind another for long.
    let outs: Vec<(Output, Duration)> = std::thread::scope(|s| {
        let a = s.spawn(|| timed(|| h.check(&c2).unwrap()));
        let b = s.spawn(|| timed(|| h.check(&c3).unwrap()));
        let c = s.spawn(|| timed(|| h.verb_list(&h.list, "DEL", &c1, &[]).unwrap()));
        [a, b, c].into_iter().map(|j| j.join().unwrap()).collect()
    });
    for (out, t) in &outs {
        let (_, msg, _) = out.error().unwrap();
        assert!(msg.contains("stopped"), "{msg}");
        assert!(*t < quick, "{t:?}: {msg}");
    }
    assert!(outs[2].0.error().unwrap().1.contains("18094/tcp"), "DEL names the port it could not close");
    let members = h.state().unwrap()["members"].as_array().unwrap().len();
    assert_eq!(members, 2, "c1 is detached all the same");
    assert!(is_running(pid), "a stopped helper serving others is left to its owner");

    // Resumed, it answers again, and the port c1 left behind is closed by the next call.
    signal(nix::sys::signal::Signal::SIGCONT);
    let check = h.check(&c2).unwrap();
    assert!(check.ok(), "{}{}", check.stdout, check.stderr);
    let ports: Vec<u64> = h.hostfwd_entries().iter().map(|e| e["host_port"].as_u64().unwrap()).collect();
    assert_eq!(ports, [18095], "c1's forward removed once the helper answered");
    assert!(h.state().unwrap().get("staleForwards").is_none());

    // Stopped again, the last DELs: the helper goes, stopped or not, and everything with it.
    signal(nix::sys::signal::Signal::SIGSTOP);
    stopped();
    h.del(&c2).unwrap_err();
    let (del, t) = timed(|| h.del(&c3));
    del.unwrap();
    assert!(t < quick, "{t:?}");
    h.assert_clean();
}

/// An inner plugin that hangs in ADD for one container and answers at once otherwise.
const HANGING_PLUGIN: &str = "#!/bin/sh\ncat >/dev/null\n\
case \"$CNI_COMMAND:$CNI_CONTAINERID\" in\n\
ADD:ctr-stuck) exec sleep 600;;\n\
ADD:*) echo '{\"cniVersion\": \"1.0.0\"}';;\n\
esac\nexit 0\n";

/// An inner plugin that hangs holds the state lock only until its deadline: it is killed, its
/// ADD fails with an error naming it, and a call of the same user waiting for the lock then
/// goes on instead of queueing forever.
#[test]
fn a_hung_inner_plugin_is_killed_and_the_next_call_goes_on() {
    let h = setup!(wrapper(json!({"plugins": [{"type": "hang"}]})));
    script(&h.bin.join("hang"), HANGING_PLUGIN).unwrap();
    let stuck = h.container("stuck").unwrap();
    let c2 = h.container("c2").unwrap();
    let t = Instant::now();
    let (first, second) = std::thread::scope(|s| {
        let first = s.spawn(|| timed(|| h.add(&stuck)));
        // Once the first call holds the lock and runs the plugin.
        std::thread::sleep(Duration::from_secs(2));
        let second = s.spawn(|| timed(|| h.add(&c2)));
        (first.join().unwrap(), second.join().unwrap())
    });
    let ((added, t1), (other, t2)) = (first, second);
    let err = added.unwrap_err().to_string();
    assert!(err.contains("plugin hang did not finish within 30s and was killed"), "{err}");
    assert!(t1 < Duration::from_secs(45), "the hung ADD took {t1:?}");
    other.unwrap();
    assert!(t2 < Duration::from_secs(50), "the waiting ADD took {t2:?}");
    eprintln!("hung ADD failed after {t1:?}; the next ADD finished {:?} after the start", t.elapsed());
    // Only this test's: other runs of the suite on the machine use the same user.
    let userns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/user")).ok();
    let ours = userns(&h.pause_pid().to_string());
    assert!(ours.is_some(), "the pause process's user namespace");
    let sleepers = Command::new("pgrep").args(["-u", USER, "-f", "sleep 600"]).output().unwrap();
    let sleepers: Vec<String> = String::from_utf8_lossy(&sleepers.stdout)
        .split_whitespace()
        .filter(|pid| userns(pid) == ours)
        .map(str::to_string)
        .collect();
    assert!(sleepers.is_empty(), "the hung plugin was not killed: {sleepers:?}");
    assert_eq!(h.state().unwrap()["members"].as_array().unwrap().len(), 1);
    h.del(&c2).unwrap();
    h.assert_clean();
}
