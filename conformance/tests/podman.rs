//! podman (Debian's 4.3, CNI network backend) running busybox containers on our plugins.
//!
//! `cni_plugin_dirs` names only our directory, so podman's whole chain (`bridge`, `portmap`,
//! `firewall`, `tuning`, with `host-local`) runs on our binaries alone. The image is imported
//! from a rootfs made of the host's static busybox: no registry is needed.
//!
//! Nothing of the machine's own state is used. podman runs inside the fake host's network
//! namespace and inside a private mount namespace (held by one `sleep` process) where `/run`
//! is an empty tmpfs and `/var/lib` an overlay whose upper layer is a tmpfs. So container
//! namespaces (`/run/netns`), the runtime's state, the libcni result cache
//! (`/var/lib/cni/results`) and host-local's store (`/var/lib/cni/networks`) are private; the
//! test reads them through `/proc/<holder>/root`. Storage, configuration, locks and events live
//! in the fake host's directory, and the containers' cgroups under a unique parent that the
//! guard removes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use conformance::{ours, require_root, skip, unique, FakeHost, Netns, Output};
use serde_json::Value;
use std::cell::Cell;
use std::io::{BufRead, BufReader, Read};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PACKAGES: &str = "apt-get install podman busybox-static runc conmon";
const BUSYBOX: &str = "/bin/busybox";
const IMAGE: &str = "localhost/cnit-busybox:latest";
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Upper bound for one podman command, so a hang fails the test instead of the CI job.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a check that depends on a container starting or a cleanup finishing may retry.
const SETTLE: Duration = Duration::from_secs(10);
/// The chains plugins share between containers and leave in place (as the reference does).
const SHARED_CHAINS: &[&str] =
    &["CNI-FORWARD", "CNI-ADMIN", "CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-SETMARK", "CNI-HOSTPORT-MASQ"];

/// A private podman in a fake host, with one network created through `podman network create`.
struct Podman {
    podman: PathBuf,
    /// Holds the private mount namespace; its pid is the target of every `nsenter`.
    holder: Child,
    holder_mntns: String,
    cgroup_parent: String,
    network: String,
    subnet_prefix: String,
    calls: Cell<usize>,
    /// Dropped after `Drop::drop` ran podman's own cleanup: removes the namespace and the dir.
    host: FakeHost,
}

impl Podman {
    /// Sets up podman with a network on `subnet` (a /24); `None` after a visible skip.
    fn new(subnet: &str) -> Option<Podman> {
        let Some(podman) = which("podman") else {
            skip(&format!("podman is not installed ({PACKAGES})"));
            return None;
        };
        if which("runc").is_none() || which("conmon").is_none() {
            skip(&format!("runc or conmon is not installed ({PACKAGES})"));
            return None;
        }
        if !is_static_elf(Path::new(BUSYBOX)) {
            skip(&format!("the image needs a static {BUSYBOX} ({PACKAGES})"));
            return None;
        }
        let ours = ours();
        for plugin in ["bridge", "host-local", "portmap", "firewall", "tuning"] {
            assert!(ours.has(plugin), "our {plugin} is missing from {}", ours.dir.display());
        }

        let host = FakeHost::new().unwrap();
        let d = host.dir.clone();
        for sub in ["root", "runroot", "tmp", "varlib", "net.d", "rootfs/bin", "rootfs/www"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let (nofile, nproc) = container_rlimits();
        let conf = format!(
            r#"[containers]
default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]

[network]
network_backend = "cni"
cni_plugin_dirs = ["{ours}"]
network_config_dir = "{d}/net.d"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{d}/tmp/events.log"
image_copy_tmp_dir = "{d}/tmp"
lock_type = "file"
runtime = "runc"
tmp_dir = "{d}/tmp"
"#,
            ours = ours.dir.display(),
            d = d.display(),
        );
        std::fs::write(d.join("containers.conf"), conf).unwrap();
        let storage = format!(
            "[storage]\ndriver = \"vfs\"\nrunroot = \"{d}/runroot\"\ngraphroot = \"{d}/root\"\n",
            d = d.display()
        );
        std::fs::write(d.join("storage.conf"), storage).unwrap();

        // conmon daemonizes: make it our child when its parent exits, so the guard can reap it
        // instead of leaving the zombie to whatever init the machine has.
        let _ = nix::sys::prctl::set_child_subreaper(true);
        let prefix = subnet.rsplit_once('.').map(|(p, _)| format!("{p}.")).expect("an IPv4 /24");
        let (holder, holder_mntns) = spawn_holder(&host);
        let p = Podman {
            podman,
            holder,
            holder_mntns,
            cgroup_parent: format!("/{}", unique("pod")),
            network: unique("net"),
            subnet_prefix: prefix,
            calls: Cell::new(0),
            host,
        };
        p.import_image();
        p.ok(&["network", "create", "--disable-dns", "--subnet", subnet, &p.network]);
        // What podman 4.3 writes for a bridge network: the chain every user of it runs.
        let conflist: Value =
            serde_json::from_slice(&std::fs::read(d.join("net.d").join(format!("{}.conflist", p.network))).unwrap())
                .unwrap();
        let types: Vec<&str> =
            conflist["plugins"].as_array().unwrap().iter().map(|p| p["type"].as_str().unwrap_or("")).collect();
        assert_eq!(types, ["bridge", "portmap", "firewall", "tuning"], "{conflist}");
        eprintln!("podman network {} (cniVersion {}), every plugin ours", p.network, conflist["cniVersion"]);
        Some(p)
    }

    fn dir(&self) -> &Path {
        &self.host.dir
    }

    /// `path` as podman sees it, in the private mount namespace.
    fn private(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{path}", self.holder.id()))
    }

    /// What podman wrote under `/var/lib/<path>`: the overlay's upper layer, without the host's
    /// own files (other runtimes on the machine may use `/var/lib/cni` meanwhile).
    fn written(&self, path: &str) -> PathBuf {
        self.private(&format!("{}/varlib/upper/{path}", self.dir().display()))
    }

    /// Builds the image from the host's static busybox: `FROM scratch` as a tarball import.
    fn import_image(&self) {
        let rootfs = self.dir().join("rootfs");
        std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).unwrap();
        for applet in ["sh", "httpd", "nc", "sleep", "cat", "ip"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        std::fs::write(rootfs.join("www/index.html"), "unset\n").unwrap();
        let tar = self.dir().join("rootfs.tar");
        conformance::run("tar", &["-C", &rootfs.display().to_string(), "-cf", &tar.display().to_string(), "."])
            .unwrap();
        self.ok(&["import", &tar.display().to_string(), IMAGE]);
    }

    /// Runs podman (in the fake host's network namespace and our mount namespace, with private
    /// configuration and state); stdout and stderr go to files so conmon cannot hold a pipe.
    fn podman(&self, args: &[&str]) -> Output {
        let n = self.calls.get();
        self.calls.set(n + 1);
        let d = self.dir();
        let (out_path, err_path) = (d.join(format!("podman-{n}.out")), d.join(format!("podman-{n}.err")));
        let global: Vec<String> = vec![
            format!("--root={}/root", d.display()),
            format!("--runroot={}/runroot", d.display()),
            format!("--tmpdir={}/tmp", d.display()),
            format!("--network-config-dir={}/net.d", d.display()),
            "--cgroup-manager=cgroupfs".into(),
            "--events-backend=file".into(),
            "--runtime=runc".into(),
            "--storage-driver=vfs".into(),
        ];
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.holder.id().to_string(), "-m", "-n", "--"])
            .arg(&self.podman)
            .args(&global)
            .args(args)
            .env_clear()
            .env("PATH", PATH)
            .env("HOME", d)
            .env("TMPDIR", d.join("tmp"))
            .env("CONTAINERS_CONF", d.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"))
            .env("CNI_LOG_FILE", d.join("plugins.log"))
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap());
        if let Ok(level) = std::env::var("CNI_LOG") {
            cmd.env("CNI_LOG", level);
        }
        let mut child = cmd.spawn().expect("spawn nsenter");
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        if status.is_none() {
            stderr.push_str(&format!("\n(timed out after {COMMAND_TIMEOUT:?})"));
        }
        Output {
            code: status.and_then(|s| s.code()).unwrap_or(-1),
            stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
            stderr,
        }
    }

    /// [`Podman::podman`] that must succeed; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.podman(args);
        assert!(
            out.ok(),
            "podman {} failed ({}):\n{}\n{}\nplugin log:\n{}",
            args.join(" "),
            out.code,
            out.stderr,
            out.stdout,
            self.plugin_log()
        );
        out.stdout
    }

    fn plugin_log(&self) -> String {
        std::fs::read_to_string(self.dir().join("plugins.log")).unwrap_or_default()
    }

    /// Starts a detached web server container named `name` (it serves `served-by-<name>` on
    /// ports 80, 81 and 82); returns its ID.
    fn run_web(&self, name: &str, extra: &[&str]) -> String {
        self.run_web_on(name, &self.network, extra)
    }

    /// [`Podman::run_web`] on another network of this podman.
    fn run_web_on(&self, name: &str, network: &str, extra: &[&str]) -> String {
        let script = format!(
            "echo served-by-{name} > /www/index.html && httpd -p 81 -h /www && httpd -p 82 -h /www \
             && exec httpd -f -p 80 -h /www"
        );
        let mut args = vec!["run", "-d", "--name", name, "--cgroup-parent", &self.cgroup_parent];
        args.extend(["--network", network]);
        args.extend_from_slice(extra);
        args.extend([IMAGE, "sh", "-c", &script]);
        self.ok(&args).trim().to_string()
    }

    /// The container's address on our network, as podman recorded it from the result.
    fn ip_of(&self, name: &str) -> String {
        self.ip_on(name, &self.network)
    }

    /// The container's address on `network`.
    fn ip_on(&self, name: &str, network: &str) -> String {
        let v: Value = serde_json::from_str(&self.ok(&["inspect", name])).unwrap();
        v[0]["NetworkSettings"]["Networks"][network]["IPAddress"].as_str().unwrap_or_default().to_string()
    }

    /// The bridge podman named for the network.
    fn bridge(&self) -> String {
        let v: Value = serde_json::from_str(&self.ok(&["network", "inspect", &self.network])).unwrap();
        v[0]["network_interface"].as_str().expect("network_interface").to_string()
    }

    fn gateway(&self) -> String {
        format!("{}1", self.subnet_prefix)
    }

    /// An HTTP GET from inside container `name`.
    fn exec_get(&self, name: &str, addr: &str, port: u16) -> Result<String, String> {
        let out = self.podman(&["exec", name, "sh", "-c", &http_get_script("nc", addr, port)]);
        if out.ok() {
            Ok(out.stdout)
        } else {
            Err(format!("{}{}", out.stdout, out.stderr))
        }
    }

    /// Veths in the fake host, except the link to the outside client.
    fn veths(&self) -> Vec<String> {
        let links = self.host.ns.ip_json(&["link", "show", "type", "veth"]).unwrap();
        links
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|l| l["ifname"].as_str())
            .filter(|n| *n != "ext0")
            .map(String::from)
            .collect()
    }

    /// host-local's reservations for the network: `(ip, content)` of each address file.
    fn reservations(&self) -> Vec<(String, String)> {
        let dir = self.written("cni/networks").join(&self.network);
        let mut v: Vec<(String, String)> = std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter_map(|e| e.file_name().into_string().ok().map(|n| (n, e.path())))
                    .filter(|(n, _)| n.parse::<IpAddr>().is_ok())
                    .map(|(n, p)| (n, std::fs::read_to_string(p).unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    fn reserved_ips(&self) -> Vec<String> {
        self.reservations().into_iter().map(|(ip, _)| ip).collect()
    }

    /// Files in libcni's result cache for our network.
    fn cached_results(&self) -> Vec<String> {
        let ours = format!("{}-", self.network);
        list_dir(&self.written("cni/results")).into_iter().filter(|f| f.starts_with(&ours)).collect()
    }

    /// Container namespaces podman still has mounted under its (private) `/run/netns`.
    fn netns_files(&self) -> Vec<String> {
        list_dir(&self.private("/run/netns"))
    }

    /// The fake host's packet filter: iptables (filter and nat), and nftables when `nft` exists.
    fn firewall(&self) -> String {
        let mut all = self.host.ns.run("iptables-save", &[]).unwrap();
        if which("nft").is_some() {
            all.push_str(&self.host.ns.run("nft", &["list", "ruleset"]).unwrap_or_default());
        }
        all
    }

    /// After every container and the network are removed: no veth, no container namespace, no
    /// reservation, no cached result, and no rule or chain of any container left.
    fn assert_nothing_left(&self, ids: &[&str], ips: &[&str], bridge: &str) {
        assert!(self.veths().is_empty(), "veths left: {:?}", self.veths());
        assert!(!self.host.ns.succeeds("ip", &["link", "show", bridge]), "bridge {bridge} left");
        assert!(self.netns_files().is_empty(), "netns left: {:?}", self.netns_files());
        assert!(self.reservations().is_empty(), "reservations left: {:?}", self.reservations());
        assert!(self.cached_results().is_empty(), "libcni results left: {:?}", self.cached_results());
        let rules = self.firewall();
        for token in ids.iter().chain(ips) {
            assert!(!rules.contains(token), "rules still mention {token}:\n{rules}");
        }
        for line in rules.lines() {
            if let Some(chain) = line.strip_prefix(":CNI-") {
                let chain = format!("CNI-{}", chain.split_whitespace().next().unwrap_or(""));
                assert!(SHARED_CHAINS.contains(&chain.as_str()), "per-container chain {chain} left:\n{rules}");
            }
            assert!(!line.starts_with("-A CNI-HOSTPORT-DNAT "), "port mapping left: {line}");
            if line.starts_with("-A CNI-FORWARD ") {
                assert!(line.contains("-j CNI-ADMIN"), "firewall rule left: {line}");
            }
        }
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "-af", "-t", "0"]);
        let _ = self.podman(&["network", "rm", "-f", &self.network]);
        // Whatever is left of ours: conmon, exit-command cleanups, containers of a failed test.
        let leftovers: Vec<i32> = std::fs::read_dir("/proc")
            .map(|d| d.filter_map(Result::ok).filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
            .unwrap_or_default();
        let holder = self.holder.id() as i32;
        let stray: Vec<i32> = leftovers
            .into_iter()
            .filter(|&pid| pid != holder)
            .filter(|&pid| {
                std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
                    .is_ok_and(|l| l.to_string_lossy() == self.holder_mntns)
                    || std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                        .is_ok_and(|c| c.lines().any(|l| l.contains(&format!(":{}/", self.cgroup_parent))))
            })
            .collect();
        for &pid in &stray {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        reap_conmons();
        // Cgroups are removed depth first; a killed task may take a moment to leave its cgroup.
        let deadline = Instant::now() + Duration::from_secs(3);
        while !remove_cgroups(&self.cgroup_parent) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Starts the process that holds our mount namespace, inside the fake host's network namespace:
/// `/run` is a fresh tmpfs and `/var/lib` an overlay writing to a tmpfs (mounted on
/// `<dir>/varlib`, a tmpfs so that it works wherever `<dir>` is, overlayfs included).
fn spawn_holder(host: &FakeHost) -> (Child, String) {
    let d = host.dir.display().to_string();
    let script = r#"mount -t tmpfs -o mode=0755 cnit-podman "$1/varlib" \
        && mkdir "$1/varlib/upper" "$1/varlib/work" \
        && mount -t overlay overlay -o "lowerdir=/var/lib,upperdir=$1/varlib/upper,workdir=$1/varlib/work" /var/lib \
        && mount -t tmpfs -o mode=0755 cnit-podman /run \
        && echo ready && exec sleep infinity"#;
    let mut holder = Command::new("nsenter")
        .arg(format!("--net={}", host.ns.path()))
        .args(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", &d])
        .env_clear()
        .env("PATH", PATH)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the mount namespace holder");
    let mut line = String::new();
    let _ = BufReader::new(holder.stdout.take().unwrap()).read_line(&mut line);
    if line.trim() != "ready" {
        let _ = holder.kill();
        let mut err = String::new();
        let _ = holder.stderr.take().unwrap().read_to_string(&mut err);
        let _ = holder.wait();
        panic!("private mount namespace setup failed: {err}");
    }
    let mntns = std::fs::read_link(format!("/proc/{}/ns/mnt", holder.id())).unwrap().to_string_lossy().into_owned();
    assert_ne!(
        Some(mntns.clone()),
        std::fs::read_link("/proc/self/ns/mnt").ok().map(|l| l.to_string_lossy().into_owned()),
        "the holder must have its own mount namespace"
    );
    (holder, mntns)
}

/// Reaps the exited conmons reparented to this process (only those: a concurrent test may be
/// waiting for its own children).
fn reap_conmons() {
    let me = std::process::id().to_string();
    let Ok(dir) = std::fs::read_dir("/proc") else { return };
    for pid in dir.filter_map(Result::ok).filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()) {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((head, tail)) = stat.rsplit_once(')') else { continue };
        let mut fields = tail.split_whitespace();
        let (state, ppid) = (fields.next(), fields.next());
        if head.ends_with("(conmon") && state == Some("Z") && ppid == Some(me.as_str()) {
            let _ =
                nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        }
    }
}

/// Removes `parent` from every cgroup hierarchy, children first; true when none is left.
fn remove_cgroups(parent: &str) -> bool {
    fn rmdir_tree(dir: &Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.filter_map(Result::ok) {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    rmdir_tree(&e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut clean = true;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        if !matches!(right.split_whitespace().next(), Some("cgroup" | "cgroup2")) {
            continue;
        }
        let Some(mountpoint) = left.split_whitespace().nth(4) else { continue };
        let dir = Path::new(mountpoint).join(parent.trim_start_matches('/'));
        if dir.exists() {
            rmdir_tree(&dir);
            clean &= !dir.exists();
        }
    }
    clean
}

/// Limits for the containers: podman asks for 1048576 open files and processes as root, which
/// fails where the machine lowered the hard limits (no CAP_SYS_RESOURCE in some sandboxes).
fn container_rlimits() -> (u64, u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = |name: &str| {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l[name.len()..].split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(u64::MAX)
    };
    (soft("Max open files").min(65536), soft("Max processes").min(16384))
}

/// Whether `path` is an ELF executable without an interpreter (so it runs in an empty image).
fn is_static_elf(path: &Path) -> bool {
    let Ok(b) = std::fs::read(path) else { return false };
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        return false; // only 64-bit little-endian is handled; anything else counts as missing
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let u64_at = |o: usize| b.get(o..o + 8).map(|s| u64::from_le_bytes(s.try_into().unwrap()) as usize);
    let (Some(phoff), phentsize, phnum) = (u64_at(32), u16_at(54), u16_at(56)) else { return false };
    const PT_INTERP: u32 = 3;
    (0..phnum).all(|i| {
        let at = phoff + i * phentsize;
        b.get(at..at + 4).is_some_and(|t| u32::from_le_bytes(t.try_into().unwrap()) != PT_INTERP)
    })
}

fn which(name: &str) -> Option<PathBuf> {
    PATH.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

fn list_dir(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

fn http_get_script(nc: &str, addr: &str, port: u16) -> String {
    format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | {nc} -w 3 {addr} {port}")
}

/// An HTTP GET from a namespace of the test (the fake host or the outside client).
fn ns_get(ns: &Netns, addr: &str, port: u16) -> Result<String, String> {
    ns.run("sh", &["-c", &http_get_script(&format!("{BUSYBOX} nc"), addr, port)]).map_err(|e| e.to_string())
}

/// Retries `get` until the response comes from `server` (containers need a moment to listen).
fn assert_served(what: &str, server: &str, get: impl Fn() -> Result<String, String>) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let got = get();
        if got.as_ref().is_ok_and(|body| body.contains(&format!("served-by-{server}"))) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: expected a response from {server}, got {got:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `cond` holds, for state that podman changes from a background cleanup.
fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + SETTLE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn containers_reach_each_other_and_leave_nothing_behind() {
    require_root!();
    let Some(p) = Podman::new("10.89.71.0/24") else { return };
    let bridge = p.bridge();
    let id1 = p.run_web("web1", &[]);
    let id2 = p.run_web("web2", &["--ip", "10.89.71.50"]);
    let ip1 = p.ip_of("web1");
    assert!(ip1.starts_with(&p.subnet_prefix), "web1 got {ip1:?}");
    assert_eq!(p.ip_of("web2"), "10.89.71.50", "podman run --ip (CNI_ARGS IP=) honoured");

    // Real kernel and store state: one veth per container on podman's bridge, one reservation
    // each in host-local's store naming the container, one cached result each.
    let ports = p.host.ns.ip_json(&["link", "show", "master", &bridge]).unwrap();
    assert_eq!(ports.as_array().map(Vec::len), Some(2), "veths on {bridge}: {ports}");
    let reservations = p.reservations();
    assert_eq!(reservations.len(), 2, "{reservations:?}");
    for (ip, id) in [(&ip1, &id1), (&"10.89.71.50".to_string(), &id2)] {
        assert!(reservations.iter().any(|(r, owner)| r == ip && owner.starts_with(id.as_str())), "{reservations:?}");
    }
    assert_eq!(p.cached_results().len(), 2, "libcni cached both results");
    assert_eq!(p.netns_files().len(), 2);

    // Host to container and container to container, both ways.
    assert_served("host -> web1", "web1", || ns_get(&p.host.ns, &ip1, 80));
    assert_served("host -> web2", "web2", || ns_get(&p.host.ns, "10.89.71.50", 80));
    assert_served("web2 -> web1", "web1", || p.exec_get("web2", &ip1, 80));
    assert_served("web1 -> web2", "web2", || p.exec_get("web1", "10.89.71.50", 80));

    // The same static address again: host-local refuses it, podman DELs the half-made
    // attachment with no prevResult, and `podman rm` DELs it again once its netns is gone.
    // None of that may touch web2, which holds the address.
    let dup = p.podman(&[
        "run",
        "-d",
        "--name",
        "dup",
        "--cgroup-parent",
        &p.cgroup_parent,
        "--network",
        &p.network,
        "--ip",
        "10.89.71.50",
        IMAGE,
        "sleep",
        "60",
    ]);
    assert!(!dup.ok(), "a second container got 10.89.71.50: {}", dup.stdout);
    assert!(dup.stderr.contains("10.89.71.50"), "the IPAM error reaches the user: {}", dup.stderr);
    let rm = p.podman(&["rm", "-f", "-t", "0", "dup"]);
    assert!(rm.ok(), "podman rm after a failed ADD: {}", rm.stderr);
    for bad in ["failed (delete)", "level=error"] {
        assert!(!rm.stderr.contains(bad), "a repeated DEL failed: {}\n{}", rm.stderr, p.plugin_log());
    }
    let mut both = vec![ip1.clone(), "10.89.71.50".to_string()];
    both.sort();
    assert_eq!(p.reserved_ips(), both, "web2 keeps its address through the failed ADD and the DELs");
    assert_eq!(p.veths().len(), 2, "the failed container left a veth or took one: {:?}", p.veths());
    assert_served("host -> web2 after the duplicate", "web2", || ns_get(&p.host.ns, "10.89.71.50", 80));
    assert_served("web1 -> web2 after the duplicate", "web2", || p.exec_get("web1", "10.89.71.50", 80));

    // Stopping web1 removes its attachment and nothing of web2's.
    p.ok(&["stop", "-t", "0", "web1"]);
    wait_for("web1's reservation to go", || p.reserved_ips() == ["10.89.71.50"]);
    wait_for("web1's veth to go", || p.veths().len() == 1);
    assert_eq!(p.cached_results().len(), 1);
    assert_served("web2 after web1 stopped", "web2", || ns_get(&p.host.ns, "10.89.71.50", 80));

    p.ok(&["rm", "-f", "-t", "0", "web1", "web2"]);
    p.ok(&["network", "rm", &p.network]);
    wait_for("every attachment to go", || p.veths().is_empty() && p.netns_files().is_empty());
    p.assert_nothing_left(&[&id1, &id2], &[&ip1, "10.89.71.50"], &bridge);
}

#[test]
fn published_ports_reach_the_container_through_our_portmap() {
    require_root!();
    let Some(p) = Podman::new("10.89.72.0/24") else { return };
    assert!(
        ours().has("portmap"),
        "our portmap is not in {} yet: podman would run the reference one from {} instead",
        ours().dir.display(),
        conformance::REFERENCE_DIR
    );
    let bridge = p.bridge();
    // A client outside the fake host, behind a veth: its traffic arrives through PREROUTING.
    let client = p.host.container().unwrap();
    let link = format!("link add ext0 netns {} type veth peer name ext1 netns {}", p.host.ns.name(), client.name());
    conformance::run("ip", &link.split_whitespace().collect::<Vec<_>>()).unwrap();
    p.host.ns.run("ip", &["addr", "add", "192.0.2.1/24", "dev", "ext0"]).unwrap();
    p.host.ns.run("ip", &["link", "set", "ext0", "up"]).unwrap();
    client.run("ip", &["addr", "add", "192.0.2.2/24", "dev", "ext1"]).unwrap();
    client.run("ip", &["link", "set", "ext1", "up"]).unwrap();

    // A single port, a range (podman sends one mapping per port) and one bound to a host address.
    let id = p.run_web("web", &["-p", "8080:80", "-p", "8081-8082:81-82", "-p", "192.0.2.1:8083:80"]);
    let ip = p.ip_of("web");
    let peer_id = p.run_web("peer", &[]);
    let peer_ip = p.ip_of("peer");

    for port in [8080, 8081, 8082, 8083] {
        assert_served(&format!("client -> 192.0.2.1:{port}"), "web", || ns_get(&client, "192.0.2.1", port));
    }
    assert_served("host -> 192.0.2.1:8080", "web", || ns_get(&p.host.ns, "192.0.2.1", 8080));
    assert_served("host -> 127.0.0.1:8080", "web", || ns_get(&p.host.ns, "127.0.0.1", 8080));
    let gateway = p.gateway();
    assert_served("peer -> gateway:8080 (hairpin)", "web", || p.exec_get("peer", &gateway, 8080));
    // 8083 is published on 192.0.2.1 only.
    let other = ns_get(&p.host.ns, "127.0.0.1", 8083);
    assert!(!other.as_ref().is_ok_and(|b| b.contains("served-by")), "8083 is bound to 192.0.2.1 only: {other:?}");

    // Removing the container removes its mappings (portmap DEL gets the same portMappings from
    // podman's cache as ADD did), and nothing of it stays after the network is removed.
    p.ok(&["rm", "-f", "-t", "0", "web"]);
    wait_for("web's attachment to go", || p.veths().len() == 1);
    let rules = p.firewall();
    assert!(!rules.contains(&id) && !rules.contains(&format!("{ip}:80")), "web's rules left:\n{rules}");
    assert_served("peer still reachable", "peer", || ns_get(&p.host.ns, &peer_ip, 80));

    p.ok(&["rm", "-f", "-t", "0", "peer"]);
    p.ok(&["network", "rm", &p.network]);
    wait_for("every attachment to go", || p.veths().is_empty() && p.netns_files().is_empty());
    p.assert_nothing_left(&[&id, &peer_id], &[&ip, &peer_ip], &bridge);
}

#[test]
fn isolated_networks_do_not_reach_each_other() {
    require_root!();
    let Some(p) = Podman::new("10.89.73.0/24") else { return };
    let (iso1, iso2) = (unique("iso"), unique("iso"));
    for (net, subnet) in [(&iso1, "10.89.74.0/24"), (&iso2, "10.89.75.0/24")] {
        p.ok(&["network", "create", "--disable-dns", "--opt", "isolate=true", "--subnet", subnet, net]);
    }
    // podman turns `isolate` into the firewall's ingressPolicy.
    let conflist: Value =
        serde_json::from_slice(&std::fs::read(p.dir().join("net.d").join(format!("{iso1}.conflist"))).unwrap())
            .unwrap();
    let firewall = conflist["plugins"].as_array().unwrap().iter().find(|p| p["type"] == "firewall").unwrap();
    assert_eq!(firewall["ingressPolicy"], "same-bridge", "{conflist}");

    p.run_web_on("a1", &iso1, &[]);
    p.run_web_on("a2", &iso1, &[]);
    p.run_web_on("b1", &iso2, &[]);
    let (a1, b1) = (p.ip_on("a1", &iso1), p.ip_on("b1", &iso2));
    assert_served("a2 -> a1 on one isolated network", "a1", || p.exec_get("a2", &a1, 80));
    assert_served("host -> b1", "b1", || ns_get(&p.host.ns, &b1, 80));
    assert!(p.exec_get("b1", &a1, 80).is_err(), "b1 reached a1 across isolated networks");
    assert!(p.exec_get("a1", &b1, 80).is_err(), "a1 reached b1 across isolated networks");
    let rules = p.firewall();
    assert!(rules.contains("-j CNI-ISOLATION-STAGE-1"), "{rules}");

    p.ok(&["rm", "-f", "-t", "0", "a1", "a2", "b1"]);
    p.ok(&["network", "rm", &iso1, &iso2]);
    wait_for("every attachment to go", || p.veths().is_empty() && p.netns_files().is_empty());
    let rules = p.firewall();
    assert!(
        !rules.contains(&format!("{a1}/32")) && !rules.contains(&format!("{b1}/32")),
        "accept rules left:\n{rules}"
    );
}
