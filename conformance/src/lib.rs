//! The runtime side of the conformance suite: fake hosts made of real network namespaces, and
//! a driver that executes plugin binaries the way libcni does.
//!
//! Every test builds its own "host" namespace (plugins run inside it, so bridges, rules and
//! sysctls never touch the machine's own network) plus container namespaces, all uniquely
//! named and removed by guards even when the test fails. The directory of plugins under test
//! is a parameter: [`suites`] yields ours and, when installed, the reference plugins, so the
//! same assertions prove themselves against the reference first.

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};

pub mod driver;
pub mod firewalld;
pub mod rootless_user;
pub mod trace;
pub use driver::{Attachment, Runtime};

/// Where Debian's `containernetworking-plugins` installs the reference plugins.
pub const REFERENCE_DIR: &str = "/usr/lib/cni";

/// A set of plugin binaries under test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suite {
    /// `ours` or `reference`.
    pub name: &'static str,
    /// Directory holding the binaries.
    pub dir: PathBuf,
}

impl Suite {
    /// Whether this is the reference suite (v1.1.1 on Debian 12: spec ≤ 1.0.0, no GC/STATUS).
    pub fn is_reference(&self) -> bool {
        self.name == "reference"
    }

    /// Whether this is the newest reference builds (spec 1.1.0 with STATUS, no GC).
    pub fn is_reference_head(&self) -> bool {
        self.name == "reference-head"
    }

    /// Whether this is our suite.
    pub fn is_ours(&self) -> bool {
        self.name == "ours"
    }

    /// The path of one plugin.
    pub fn plugin(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Whether the suite ships `name`.
    pub fn has(&self, name: &str) -> bool {
        self.plugin(name).is_file()
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Our plugins: `$CNI_TEST_PLUGIN_DIR`, else the workspace's debug build, built on first use.
pub fn ours() -> Suite {
    static BUILD: Once = Once::new();
    if let Ok(dir) = std::env::var("CNI_TEST_PLUGIN_DIR") {
        return Suite { name: "ours", dir: PathBuf::from(dir) };
    }
    let root = workspace_root();
    BUILD.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status =
            Command::new(cargo).args(["build", "--quiet", "-p", "cni-plugins", "--bins"]).current_dir(&root).status();
        assert!(matches!(status, Ok(s) if s.success()), "building the plugins failed: {status:?}");
    });
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
    Suite { name: "ours", dir: target.join("debug") }
}

/// Our `cnitool` over the real Go libcni, built on first use into the target directory;
/// `None` (with a visible skip) when Go or Debian's libcni sources are missing.
pub fn cnitool() -> Option<PathBuf> {
    static BUILT: Mutex<Option<Option<PathBuf>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(done) = built.as_ref() {
        return done.clone();
    }
    let root = workspace_root();
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
    let out = target.join("cnitool");
    let gopath = "/usr/share/gocode";
    let result = if !Path::new(gopath).join("src/github.com/containernetworking/cni/libcni").is_dir() {
        skip("libcni sources missing (apt-get install golang-github-appc-cni-dev)");
        None
    } else {
        // Debian ships libcni as GOPATH sources: build in GOPATH mode, offline.
        let status = Command::new("go")
            .args(["build", "-o"])
            .arg(&out)
            .arg("./conformance/cnitool")
            .current_dir(&root)
            .env("GO111MODULE", "off")
            .env("GOPATH", gopath)
            .env("GOCACHE", target.join("go-cache"))
            .env("GOFLAGS", "-mod=mod")
            .status();
        match status {
            Ok(s) if s.success() => Some(out),
            other => {
                skip(&format!("building cnitool with go failed: {other:?} (apt-get install golang-go)"));
                None
            }
        }
    };
    *built = Some(result.clone());
    result
}

/// The reference plugins, when installed.
pub fn reference() -> Option<Suite> {
    let dir = PathBuf::from(REFERENCE_DIR);
    dir.join("loopback").is_file().then_some(Suite { name: "reference", dir })
}

/// The newest upstream reference builds (`../shared/reference-head/*.tar.xz`, v1.9.1 and later
/// fixes: nftables backends, spec 1.1.0 STATUS, `ptp`, `firewall`, `tuning`, `bandwidth`),
/// unpacked on first use into the target directory; `$CNI_TEST_REFERENCE_HEAD_DIR` names an
/// unpacked copy instead. `None` (with a visible skip) when the tarball is missing.
pub fn reference_head() -> Option<Suite> {
    static UNPACKED: Mutex<Option<Option<PathBuf>>> = Mutex::new(None);
    if let Ok(dir) = std::env::var("CNI_TEST_REFERENCE_HEAD_DIR") {
        return Some(Suite { name: "reference-head", dir: PathBuf::from(dir) });
    }
    let mut unpacked = UNPACKED.lock().unwrap_or_else(|e| e.into_inner());
    if unpacked.is_none() {
        *unpacked = Some(unpack_reference_head());
    }
    let dir = unpacked.clone().flatten()?;
    Some(Suite { name: "reference-head", dir })
}

fn unpack_reference_head() -> Option<PathBuf> {
    let root = workspace_root();
    let tarball = std::fs::read_dir(root.join("../shared/reference-head"))
        .ok()
        .and_then(|d| d.flatten().map(|e| e.path()).find(|p| p.to_string_lossy().ends_with(".tar.xz")));
    let Some(tarball) = tarball else {
        skip("newest reference builds missing (../shared/reference-head/*.tar.xz)");
        return None;
    };
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
    let dir = target.join("reference-head");
    if dir.join("bridge").is_file() && dir.join("firewall").is_file() {
        return Some(dir);
    }
    // Unpack beside, then rename, so a concurrent test run never sees half a directory.
    let scratch = target.join(format!("reference-head.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let unpacked = std::fs::create_dir_all(&scratch).is_ok()
        && Command::new("tar")
            .arg("-xJf")
            .arg(&tarball)
            .arg("-C")
            .arg(&scratch)
            .arg("--strip-components=1")
            .status()
            .is_ok_and(|s| s.success());
    if !unpacked || (std::fs::rename(&scratch, &dir).is_err() && !dir.join("bridge").is_file()) {
        let _ = std::fs::remove_dir_all(&scratch);
        skip(&format!("unpacking {} failed", tarball.display()));
        return None;
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Some(dir)
}

/// Ours, then the Debian reference and the newest reference builds where they ship `plugin`:
/// the suites a test of a plugin new to this wave (`ptp`, `firewall`, `tuning`, `bandwidth`)
/// runs against.
pub fn suites_with_head(plugin: &str) -> Vec<Suite> {
    let mut v = vec![ours()];
    v.extend(reference().filter(|r| r.has(plugin)));
    v.extend(reference_head().filter(|r| r.has(plugin)));
    v
}

/// Ours, then the reference if it is installed (a test that needs it says so when it is not).
pub fn suites() -> Vec<Suite> {
    let mut v = vec![ours()];
    match reference() {
        Some(r) => v.push(r),
        None => skip("reference plugins are not installed (apt-get install containernetworking-plugins)"),
    }
    v
}

/// Reports a skipped check visibly (CI installs everything, so nothing should be skipped there).
pub fn skip(why: &str) {
    eprintln!("SKIP: {why}");
    if std::env::var("CI").is_ok_and(|v| v == "true") && std::env::var("CNI_TEST_ALLOW_SKIP").is_err() {
        panic!("skipped under CI: {why}");
    }
}

/// Whether the tests can create namespaces (root with CAP_SYS_ADMIN).
pub fn can_create_netns() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Returns early from a test (visibly) when namespaces cannot be created.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::can_create_netns() {
            $crate::skip("needs root to create network namespaces");
            return;
        }
    };
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A unique short name (`cnit<pid><n><tag>`), fit for namespaces and, truncated, interfaces.
pub fn unique(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("cnit{}x{n}{tag}", std::process::id())
}

/// `ip netns add` is not safe to run concurrently on first use of /run/netns (mount races).
static NETNS_SETUP: Mutex<()> = Mutex::new(());

/// A named network namespace (`/run/netns/<name>`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a fresh namespace with `lo` up.
    pub fn new(tag: &str) -> Result<Netns> {
        let name = unique(tag);
        {
            let _g = NETNS_SETUP.lock().unwrap_or_else(|e| e.into_inner());
            run("ip", &["netns", "add", &name])?;
        }
        let ns = Netns { name };
        run("ip", &["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its path, as runtimes pass it in `CNI_NETNS`.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs a command inside the namespace and returns its stdout; fails on a non-zero exit.
    pub fn run(&self, cmd: &str, args: &[&str]) -> Result<String> {
        let mut full = vec!["netns", "exec", &self.name, cmd];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs a command inside the namespace and reports whether it succeeded.
    pub fn succeeds(&self, cmd: &str, args: &[&str]) -> bool {
        self.run(cmd, args).is_ok()
    }

    /// Starts a long-running command inside the namespace; it is killed when the guard drops.
    pub fn spawn(&self, cmd: &str, args: &[&str]) -> Result<Background> {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name, cmd])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("spawn {cmd} in {}", self.name))?;
        Ok(Background(child))
    }

    /// A TCP server on `port` (all addresses) that answers every connection with `reply`.
    pub fn tcp_server(&self, port: u16, reply: &str) -> Result<Background> {
        let code = format!(
            "import socket\ns=socket.socket(socket.AF_INET6)\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
             s.setsockopt(socket.IPPROTO_IPV6,socket.IPV6_V6ONLY,0)\ns.bind(('::',{port}))\ns.listen(16)\n\
             while True:\n c,_=s.accept()\n c.sendall(b'{reply}')\n c.close()\n"
        );
        let bg = self.spawn("python3", &["-c", &code])?;
        // Wait until it listens, so a failed connect means the network, not a slow start.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if self.run("ss", &["-Hltn", &format!("sport = :{port}")]).is_ok_and(|o| !o.trim().is_empty()) {
                return Ok(bg);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        bail!("tcp server on port {port} in {} did not start", self.name)
    }

    /// Connects from inside the namespace to `addr:port` and returns what the server sent.
    pub fn tcp_get(&self, addr: &str, port: u16) -> Option<String> {
        let code = format!(
            "import socket\nc=socket.create_connection(('{addr}',{port}),timeout=3)\nprint(c.recv(100).decode(),end='')\n"
        );
        self.run("python3", &["-c", &code]).ok()
    }

    /// `ip -j <args>` inside the namespace, parsed.
    pub fn ip_json(&self, args: &[&str]) -> Result<Value> {
        let mut full = vec!["-n", &self.name, "-j"];
        full.extend_from_slice(args);
        let out = run("ip", &full)?;
        if out.trim().is_empty() {
            return Ok(json!([]));
        }
        serde_json::from_str(&out).with_context(|| format!("parse ip -j output {out:?}"))
    }

    /// Opens the namespace file, for entering it before exec.
    pub fn file(&self) -> Result<std::fs::File> {
        std::fs::File::open(self.path()).with_context(|| format!("open {}", self.path()))
    }

    /// Deletes the namespace now (e.g. to test DEL after the container is gone).
    pub fn delete(&mut self) {
        if !self.name.is_empty() {
            let _ = run("ip", &["netns", "del", &self.name]);
            self.name.clear();
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.delete();
    }
}

/// A background process, killed and reaped when dropped.
#[derive(Debug)]
pub struct Background(std::process::Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A fake host: the namespace plugins run in, plus a scratch directory for state (IPAM store,
/// result cache), both removed on drop.
#[derive(Debug)]
pub struct FakeHost {
    /// The host namespace.
    pub ns: Netns,
    /// Scratch directory for this host's state.
    pub dir: PathBuf,
}

impl FakeHost {
    /// Creates the host namespace and its scratch directory.
    pub fn new() -> Result<FakeHost> {
        let ns = Netns::new("h")?;
        let dir = std::env::temp_dir().join(format!("{}-state", ns.name()));
        std::fs::create_dir_all(&dir)?;
        Ok(FakeHost { ns, dir })
    }

    /// A fresh container namespace (its guard removes it).
    pub fn container(&self) -> Result<Netns> {
        Netns::new("c")
    }
}

impl Drop for FakeHost {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What a plugin printed and how it exited.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Output {
    /// Whether it exited 0.
    pub fn ok(&self) -> bool {
        self.code == 0
    }

    /// stdout parsed as JSON.
    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.stdout)
            .with_context(|| format!("stdout is not JSON: {:?} (stderr {:?})", self.stdout, self.stderr))
    }

    /// The error object of a failed run: (code, msg, details). Fails when the run succeeded or
    /// did not print an error object, since a runtime could not read the failure either.
    pub fn error(&self) -> Result<(u64, String, String)> {
        if self.ok() {
            bail!("expected failure, got success: {}", self.stdout);
        }
        let j = self.json()?;
        let code = j["code"].as_u64().context("error without numeric code")?;
        let msg = j["msg"].as_str().context("error without msg")?.to_string();
        let details = j.get("details").and_then(Value::as_str).unwrap_or("").to_string();
        Ok((code, msg, details))
    }
}

/// Executes `binary` with exactly `env` (plus `PATH`) and `stdin`, optionally inside the
/// namespace `netns` (entered in the child before exec, as a runtime on that host would be).
pub fn exec(binary: &Path, env: &[(&str, &str)], stdin: &[u8], netns: Option<&Netns>) -> Result<Output> {
    exec_args(binary, &[], env, stdin, netns)
}

/// The command [`exec`] runs: `binary args` with exactly `env` (plus `PATH`, and `CNI_LOG` and
/// `CNI_FIREWALL_FAST_PATHS` when set), piped streams, entering `netns` in the child before exec.
pub fn plugin_command(binary: &Path, args: &[&str], env: &[(&str, &str)], netns: Option<&Netns>) -> Result<Command> {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(binary);
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Ok(level) = std::env::var("CNI_LOG") {
        cmd.env("CNI_LOG", level);
    }
    // The second run of the bridge and portmap tests sets it to take every plain path.
    if let Ok(fast) = std::env::var("CNI_FIREWALL_FAST_PATHS") {
        cmd.env("CNI_FIREWALL_FAST_PATHS", fast);
    }
    if let Some(ns) = netns {
        let file = ns.file()?;
        // SAFETY: runs in the forked child before exec; setns is a single async-signal-safe
        // syscall and `file` stays open in the parent until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
            });
        }
    }
    Ok(cmd)
}

/// Python that receives one TCP connection on `argv[1]:argv[2]` to EOF, printing `ready` once
/// listening and then the bytes and seconds (throughput tests and the benchmark).
pub const TCP_SINK_PY: &str = r#"
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1)
print("ready", flush=True)
c, a = s.accept(); t = time.monotonic(); n = 0
while True:
    b = c.recv(1 << 20)
    if not b:
        break
    n += len(b)
print(n, time.monotonic() - t, flush=True)
"#;

/// Python that sends `argv[3]` MiB to `argv[1]:argv[2]`.
pub const TCP_SOURCE_PY: &str = r#"
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
buf = b"x" * (1 << 20)
for _ in range(int(sys.argv[3])):
    c.sendall(buf)
c.close()
"#;

/// Reads a spawned child's stdout and stderr to their ends (stderr on a thread, so neither pipe
/// can fill up and stall the child).
pub fn read_outputs(child: &mut std::process::Child) -> (String, String) {
    use std::io::Read;
    let mut err_pipe = child.stderr.take();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(p) = err_pipe.as_mut() {
            let _ = p.read_to_string(&mut s);
        }
        s
    });
    let mut stdout = String::new();
    if let Some(mut p) = child.stdout.take() {
        let _ = p.read_to_string(&mut stdout);
    }
    (stdout, err_reader.join().unwrap_or_default())
}

/// [`exec`] with command-line arguments.
pub fn exec_args(
    binary: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: &[u8],
    netns: Option<&Netns>,
) -> Result<Output> {
    use std::io::Write;
    let mut cmd = plugin_command(binary, args, env, netns)?;
    let mut child = cmd.spawn().with_context(|| format!("spawn {}", binary.display()))?;
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin);
    }
    let out = child.wait_with_output()?;
    Ok(Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// The addresses host-local holds in one network's store directory (`<dataDir>/<network>`): the
/// files named by an IP address, never `lock`, `last_reserved_ip.*` or scratch files. Empty when
/// the directory does not exist.
pub fn reserved_addresses(network_dir: &Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(network_dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Every file of a host-local network store but `lock`, with its bytes, sorted by name: what a
/// refused call must leave exactly as it was.
pub fn store_files(network_dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(network_dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name() != "lock")
                .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Runs a host command; returns stdout, or an error with its stderr.
pub fn run(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd).args(args).output().with_context(|| format!("run {cmd}"))?;
    if !out.status.success() {
        bail!("{cmd} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Builds a request configuration the way libcni does for one plugin of a list: the plugin
/// object with the list's `name` and `cniVersion`, `prevResult` when given, and
/// `runtimeConfig` holding only the capabilities the plugin declares that the runtime supplies.
pub fn build_config(
    plugin: &Value,
    name: &str,
    version: &str,
    prev: Option<&Value>,
    caps: &Map<String, Value>,
) -> Value {
    let mut conf = plugin.as_object().cloned().unwrap_or_default();
    conf.insert("name".into(), name.into());
    conf.insert("cniVersion".into(), version.into());
    if let Some(p) = prev {
        conf.insert("prevResult".into(), p.clone());
    }
    let declared = conf.get("capabilities").and_then(Value::as_object).cloned().unwrap_or_default();
    let rc: Map<String, Value> = caps
        .iter()
        .filter(|(k, _)| declared.get(k.as_str()).and_then(Value::as_bool) == Some(true))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !rc.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(rc));
    }
    Value::Object(conf)
}
