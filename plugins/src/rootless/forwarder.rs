//! The port forwarder: published ports carried by the wrapper itself, for IPv6 (slirp4netns'
//! `add_hostfwd` knows only IPv4) and, for an uplink without a forwarding API, for both families,
//! with the client's own address kept.
//!
//! It is the wrapper binary started in forwarder mode ([`MODE_FLAG`]), so there is nothing more
//! to install. The wrapper starts it into the shared netns (it runs in the runtime's user
//! namespace, where it has CAP_NET_ADMIN over that netns), records it like the helper (PID,
//! start time, name, binary, control socket) and signals it only once the process is verifiably
//! a forwarder of this user serving this state directory ([`Expect`]). A dead forwarder is
//! restarted by the next call with every recorded port; teardown stops it.
//!
//! How a port is carried:
//! - the wrapper binds the listening socket in the host's netns (the runtime's), before the
//!   inner plugins run: a port already taken, or below `net.ipv4.ip_unprivileged_port_start`,
//!   is an ADD error that leaves nothing behind. Once the inner plugins gave the container its
//!   addresses, it hands the socket to the forwarder over the control socket (`SCM_RIGHTS`), with
//!   the container's addresses and port. A socket keeps the netns it was made in, so the
//!   forwarder accepts host connections while it lives in the shared netns;
//! - for each client the forwarder opens a socket in the shared netns with `IP_TRANSPARENT` /
//!   `IPV6_TRANSPARENT`, binds it to the client's own address and port (a non-local address,
//!   which those options allow) and connects to the container's address and port directly (the
//!   inner portmap's DNAT is not involved). The container sees the client's address;
//! - the container's replies are addressed to the client, so the shared netns would route them
//!   out through its uplink. The forwarder sets up, once per netns, through nf_tables and
//!   rtnetlink: `socket transparent 1 meta mark set 0x2a` in a prerouting chain (a packet that
//!   belongs to one of its transparent sockets), `ip [-6] rule fwmark 0x2a lookup 4242`, and
//!   `local 0.0.0.0/0` and `local ::/0 dev lo table 4242`: marked packets are delivered locally,
//!   to the socket, which is how the kernel's transparent proxying works everywhere;
//! - a client on the host's loopback or a link-local address cannot be answered by the container
//!   (those addresses mean something else there), so it appears as one fixed address the
//!   container can answer and the shared netns routes back the same way (the uplink's address
//!   for the host, e.g. `fd00::2` and `10.0.2.2` with slirp4netns);
//! - a client of a family the container has no address of is carried over the other family from
//!   the shared netns' own address (nothing better exists);
//! - UDP: one flow per client address and port, with its own transparent connected socket, and
//!   an idle timeout of [`UDP_IDLE`]; answers go back through the host-side socket.
//!
//! The control socket takes one request per connection: a JSON line (`add` with one descriptor,
//! `remove`, `list`), then a half-close; the answer is one JSON line. Every step has a deadline.

use super::state::{Forward, HelperId};
use crate::netlink::{Expr, Handle, NftBatch, NftFamily, NftOp};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The first argument that turns the wrapper binary into the forwarder.
pub const MODE_FLAG: &str = "--forwarder";
/// The name the kernel reports for the wrapper binary (`comm` is cut at 15 bytes).
pub const COMM: &str = "rootless-wrappe";
/// The mark of the forwarder's replies in the shared netns.
pub const MARK: u32 = 0x2a;
/// The routing table that delivers marked packets locally.
pub const TABLE: u32 = 4242;
/// The priority of the `fwmark` rule (before `main`, 32766).
const RULE_PRIORITY: u32 = 100;
/// The nf_tables table of the marking rule.
const NFT_TABLE: &str = "cni-rootless-forwarder";
/// How long a UDP flow lives without a datagram either way.
pub const UDP_IDLE: Duration = Duration::from_secs(60);
/// How long one connection to a container may take to be accepted.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a port's thread looks whether it was removed.
const POLL: Duration = Duration::from_millis(100);
/// How long one control request may take, connect to last byte.
pub const API_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a new forwarder may take to set up the shared netns and answer.
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest control message.
const MAX_MESSAGE: usize = 1 << 20;
/// The most TCP connections carried at once (two threads each), over all ports; more wait in
/// the listen backlog.
const MAX_CONNECTIONS: usize = 2048;
/// The most UDP flows of one port at once (one thread and socket each); datagrams of further
/// clients are dropped until one times out.
const MAX_FLOWS: usize = 1024;
/// Connections being carried now.
static CONNECTIONS: AtomicUsize = AtomicUsize::new(0);

/// The copy buffer of one direction of one TCP connection.
const COPY_BUFFER: usize = 256 << 10;

/// One published port as the forwarder carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    /// The wrapper's ID for it (the forward's `id`).
    pub id: i64,
    /// `tcp` or `udp`.
    pub proto: String,
    /// The container's addresses with the container port, at most one per family.
    pub targets: Vec<SocketAddr>,
    /// The source address an IPv4 loopback or link-local client appears with.
    pub map4: Option<Ipv4Addr>,
    /// The source address an IPv6 loopback or link-local client appears with.
    pub map6: Option<Ipv6Addr>,
}

/// Whether a client address cannot be used as a source inside the shared netns.
pub fn needs_mapping(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_loopback() || a.is_link_local() || a.is_unspecified(),
        IpAddr::V6(a) => {
            a.is_loopback()
                || a.is_unspecified()
                || (a.segments()[0] & 0xffc0) == 0xfe80
                || a.to_ipv4_mapped().is_some()
        }
    }
}

impl PortSpec {
    /// Where a client at `peer` is carried: the target, and the transparent source address and
    /// port to bind (`None`: a plain socket, the client's address cannot be kept).
    pub fn route(&self, peer: SocketAddr) -> Option<(SocketAddr, Option<SocketAddr>)> {
        let ip = match peer.ip() {
            IpAddr::V6(a) => a.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(a)),
            v4 => v4,
        };
        let same = self.targets.iter().find(|t| t.is_ipv4() == ip.is_ipv4());
        let Some(target) = same else {
            return self.targets.first().map(|t| (*t, None));
        };
        let clash = self.targets.iter().any(|t| t.ip() == ip);
        let source = if needs_mapping(ip) || clash {
            match ip {
                IpAddr::V4(_) => self.map4.map(|a| SocketAddr::new(a.into(), 0)),
                IpAddr::V6(_) => self.map6.map(|a| SocketAddr::new(a.into(), 0)),
            }
        } else {
            Some(SocketAddr::new(ip, peer.port()))
        };
        Some((*target, source))
    }
}

/// The container's addresses in an inner chain's result (those on its interfaces), each with
/// `port`: one per family.
pub fn targets_from_result(result: &Value, port: u16) -> Vec<SocketAddr> {
    let interfaces = result.get("interfaces").and_then(Value::as_array);
    let in_container = |ip: &Value| {
        let Some(i) = ip.get("interface").and_then(Value::as_u64) else { return true };
        interfaces
            .and_then(|ifs| ifs.get(i as usize))
            .and_then(|i| i.get("sandbox"))
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
    };
    let mut out: Vec<SocketAddr> = Vec::new();
    for ip in result.get("ips").and_then(Value::as_array).into_iter().flatten() {
        let Some(addr) = ip.get("address").and_then(Value::as_str) else { continue };
        let Ok(net) = addr.parse::<ipnetwork::IpNetwork>() else { continue };
        if in_container(ip) && !out.iter().any(|t| t.is_ipv4() == net.ip().is_ipv4()) {
            out.push(SocketAddr::new(net.ip(), port));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The wrapper's side: host sockets, starting, knowing and stopping the forwarder, requests.

/// The message for a host port that cannot be bound.
pub fn port_error(fwd: &Forward, e: &std::io::Error) -> String {
    let what = format!("host port {}/{} on {}", fwd.host_port, fwd.proto, fwd.host_addr);
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => format!(
            "{what} cannot be published: ports below {} are privileged here (net.ipv4.ip_unprivileged_port_start); \
             use a higher hostPort or lower that sysctl",
            super::host::unprivileged_port_start()
        ),
        std::io::ErrorKind::AddrInUse => format!("{what} cannot be published: it is already in use"),
        std::io::ErrorKind::AddrNotAvailable => {
            format!("{what} cannot be published: {} is not an address of this host", fwd.host_addr)
        }
        _ => format!("{what} cannot be published: {e}"),
    }
}

/// Binds the host socket of a forward the forwarder carries, in the calling thread's netns
/// (the host's): listening for TCP, IPv6 sockets IPv6-only (IPv4 has its own forward).
pub fn bind_host_port(fwd: &Forward) -> Result<OwnedFd, String> {
    let ip: IpAddr = fwd.host_addr.parse().map_err(|_| format!("invalid host address {:?}", fwd.host_addr))?;
    let addr = SocketAddr::new(ip, fwd.host_port);
    let tcp = fwd.proto == "tcp";
    let bound = (|| -> std::io::Result<Socket> {
        let (ty, proto) = if tcp { (Type::STREAM, Protocol::TCP) } else { (Type::DGRAM, Protocol::UDP) };
        let s = Socket::new(Domain::for_address(addr), ty.cloexec(), Some(proto))?;
        if ip.is_ipv6() {
            s.set_only_v6(true)?;
        }
        if tcp {
            // As every server does: a port whose last connections are in TIME_WAIT is free.
            s.set_reuse_address(true)?;
        }
        s.bind(&addr.into())?;
        if tcp {
            s.listen(1024)?;
        }
        Ok(s)
    })();
    bound.map(OwnedFd::from).map_err(|e| port_error(fwd, &e))
}

/// The forwarder's files in the state directory.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The netns it serves.
    pub netns: PathBuf,
    /// Its control socket.
    pub control: PathBuf,
    /// Its stdout and stderr.
    pub log: PathBuf,
}

/// What a process must be to count as the forwarder of one state directory: it runs this
/// binary (or an earlier file at its path, replaced by an upgrade of the plugins while it ran;
/// or, in an earlier user namespace of this user where the binary cannot be looked at, has its
/// name), as this user, with this directory's netns and control socket on its
/// command line. The same rules as for the helper ([`super::slirp::Expect`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    /// Device and inode of the wrapper binary.
    pub binary: Option<(u64, u64)>,
    /// Its path.
    pub path: Option<PathBuf>,
    /// The UID it runs as.
    pub uid: u32,
    /// The netns it serves.
    pub netns: PathBuf,
    /// Its control socket.
    pub control: PathBuf,
}

impl Expect {
    /// The forwarder of `paths`, running this binary as this user.
    pub fn new(paths: &Paths) -> Expect {
        let path = std::env::current_exe().ok();
        let binary = path.as_ref().and_then(|b| std::fs::metadata(b).ok()).map(|m| (m.dev(), m.ino()));
        Expect {
            binary,
            path,
            uid: nix::unistd::geteuid().as_raw(),
            netns: paths.netns.clone(),
            control: paths.control.clone(),
        }
    }

    /// Whether a command line is exactly a forwarder's for this directory.
    pub fn matches_args(&self, args: &[&[u8]]) -> bool {
        let want = |flag: &[u8], value: &Path| {
            args.windows(2).any(|w| w[0] == flag && w[1] == value.as_os_str().as_encoded_bytes())
        };
        args.get(1) == Some(&MODE_FLAG.as_bytes()) && want(b"--control", &self.control) && want(b"--netns", &self.netns)
    }

    /// Whether process `pid` is a forwarder serving this state directory.
    pub fn matches(&self, pid: i32) -> bool {
        let Some(binary) = self.binary else { return false };
        super::slirp::process_args(pid, self.uid, binary, COMM, self.path.as_deref()).is_some_and(|cmdline| {
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            self.matches_args(&args)
        })
    }
}

/// Whether the recorded forwarder still runs and is verifiably ours.
pub fn is_ours(fwd: &HelperId, expect: &Expect) -> bool {
    super::slirp::is_alive(fwd) && expect.matches(fwd.pid)
}

/// Why the forwarder cannot answer now, if it cannot: it is stopped (SIGSTOP, a debugger).
pub fn unresponsive(fwd: &HelperId) -> Option<String> {
    let st = super::slirp::proc_stat(fwd.pid)?;
    matches!(st.state, 'T' | 't').then(|| {
        format!(
            "the port forwarder (pid {}) is stopped and cannot answer; resume it (kill -CONT {}) or remove the \
             last container with a published port to restart it",
            fwd.pid, fwd.pid
        )
    })
}

/// Stops the recorded forwarder if it is still, verifiably, ours (see [`super::slirp::stop`]).
pub fn stop(fwd: &HelperId, expect: &Expect) -> Result<(), String> {
    super::slirp::stop_verified(fwd, |h| is_ours(h, expect))
}

/// Forwarders serving this state directory that no state records.
pub fn serving(expect: &Expect) -> Vec<HelperId> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if pid == std::process::id() as i32 {
            continue;
        }
        let Some(stat) = super::slirp::proc_stat(pid) else { continue };
        if stat.comm == COMM && expect.matches(pid) {
            found.push(HelperId { pid, start_time: stat.start_time, comm: stat.comm, ..Default::default() });
        }
    }
    found
}

/// Starts the forwarder into `paths.netns` and waits until it has set the netns up and
/// answers. The wrapper binds the control socket itself and passes it as descriptor 3, so
/// there is no window in which the name exists without a listener.
pub fn start(paths: &Paths) -> Result<HelperId, String> {
    use std::os::unix::process::CommandExt;
    let binary = std::env::current_exe().map_err(|e| format!("find the wrapper binary: {e}"))?;
    let _ = std::fs::remove_file(&paths.control);
    let listener = UnixListener::bind(&paths.control).map_err(|e| format!("bind {}: {e}", paths.control.display()))?;
    let log =
        super::trust::create_fresh(&paths.log, 0o600).map_err(|e| format!("create {}: {e}", paths.log.display()))?;
    let log_err = log.try_clone().map_err(|e| format!("dup {}: {e}", paths.log.display()))?;
    let netns = std::fs::File::open(&paths.netns).map_err(|e| format!("open {}: {e}", paths.netns.display()))?;
    let mut cmd = Command::new(&binary);
    cmd.arg(MODE_FLAG)
        .arg("--control")
        .arg(&paths.control)
        .arg("--netns")
        .arg(&paths.netns)
        .current_dir("/")
        .env_clear()
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    for key in ["CNI_LOG", "ROOTLESS_WRAPPER_LOG"] {
        if let Some(v) = std::env::var_os(key) {
            cmd.env(key, v);
        }
    }
    let (ns_fd, listen_fd) = (netns.as_raw_fd(), listener.as_raw_fd());
    // SAFETY: runs in the forked child before exec and makes only async-signal-safe syscalls
    // (setsid, setns, dup2, fcntl) on descriptors the parent keeps open until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            // Its own session: signals aimed at the runtime's process group must not reach it.
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            if nix::libc::setns(ns_fd, nix::libc::CLONE_NEWNET) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            super::slirp::inherit_as_fd3(listen_fd)
        });
    }
    let child = cmd.spawn().map_err(|e| format!("start {} {MODE_FLAG}: {e}", binary.display()));
    // Only the forwarder holds the listener now: if it dies, a request fails at once.
    drop(listener);
    let mut child = child?;
    let fail = |child: &mut std::process::Child, why: String| -> String {
        let _ = child.kill();
        let _ = child.wait();
        let tail = super::trust::read_tail(&paths.log, 2000).unwrap_or_default();
        format!("{why}; forwarder log: {}", String::from_utf8_lossy(&tail).trim())
    };
    if let Err(e) = request_within(&paths.control, &json!({"op": "list"}), None, READY_TIMEOUT) {
        return Err(fail(&mut child, format!("the forwarder did not become ready: {e}")));
    }
    let pid = i32::try_from(child.id()).map_err(|_| format!("pid {} out of range", child.id()))?;
    let Some(stat) = super::slirp::proc_stat(pid) else {
        return Err(fail(&mut child, format!("the forwarder (pid {pid}) vanished right after start")));
    };
    // The Child is dropped without waiting: the forwarder outlives this invocation by design.
    Ok(HelperId { pid, start_time: stat.start_time, comm: stat.comm, binary, api_socket: paths.control.clone() })
}

/// One control request with its descriptor, within [`API_TIMEOUT`].
pub fn request(control: &Path, req: &Value, fd: Option<BorrowedFd<'_>>) -> Result<Value, String> {
    request_within(control, req, fd, API_TIMEOUT)
}

fn request_within(control: &Path, req: &Value, fd: Option<BorrowedFd<'_>>, timeout: Duration) -> Result<Value, String> {
    let stream = super::slirp::connect_within(control, timeout)
        .map_err(|e| format!("connect to the forwarder at {}: {e}", control.display()))?;
    stream.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let mut body = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    body.push(b'\n');
    let fds: Vec<RawFd> = fd.map(|f| f.as_raw_fd()).into_iter().collect();
    let cmsgs: Vec<ControlMessage<'_>> =
        if fds.is_empty() { Vec::new() } else { vec![ControlMessage::ScmRights(&fds)] };
    let sent = sendmsg::<()>(stream.as_raw_fd(), &[IoSlice::new(&body)], &cmsgs, MsgFlags::MSG_NOSIGNAL, None)
        .map_err(|e| format!("send to the forwarder: {e}"))?;
    (&stream).write_all(&body[sent..]).map_err(|e| format!("send to the forwarder: {e}"))?;
    let _ = stream.shutdown(Shutdown::Write);
    let mut answer = Vec::new();
    (&stream).take(MAX_MESSAGE as u64).read_to_end(&mut answer).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            format!("the forwarder did not answer within {timeout:?}")
        }
        _ => format!("read the forwarder's answer: {e}"),
    })?;
    let v: Value = serde_json::from_slice(&answer)
        .map_err(|e| format!("unparsable answer {:?}: {e}", String::from_utf8_lossy(&answer)))?;
    if let Some(err) = v.get("error") {
        return Err(err.as_str().map(str::to_string).unwrap_or_else(|| err.to_string()));
    }
    Ok(v.get("ok").cloned().unwrap_or(Value::Null))
}

/// Hands a bound host socket to the forwarder.
pub fn add(control: &Path, spec: &PortSpec, socket: BorrowedFd<'_>) -> Result<(), String> {
    request(control, &json!({"op": "add", "port": spec}), Some(socket)).map(drop)
}

/// Closes a port; the host socket is closed when this returns.
pub fn remove(control: &Path, id: i64) -> Result<(), String> {
    request(control, &json!({"op": "remove", "id": id}), None).map(drop)
}

/// The IDs of the ports the forwarder carries.
pub fn list(control: &Path) -> Result<Vec<i64>, String> {
    let v = request(control, &json!({"op": "list"}), None)?;
    Ok(v.as_array().map(|a| a.iter().filter_map(Value::as_i64).collect()).unwrap_or_default())
}

// ---------------------------------------------------------------------------------------------
// The forwarder's side.

/// Runs the forwarder when the process was started in forwarder mode; `None` otherwise.
pub fn main_if_requested() -> Option<i32> {
    let mode = std::env::args_os().nth(1).is_some_and(|a| a == MODE_FLAG);
    if !mode {
        return None;
    }
    Some(match serve() {
        Ok(()) => 0,
        Err(e) => {
            log::error!("forwarder: {e}");
            1
        }
    })
}

/// One carried port: its stop switch and its thread.
struct Running {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve() -> Result<(), String> {
    // SAFETY: descriptor 3 was set up by the wrapper as the control listener (see `start`); it
    // is checked to be a listening unix socket before use and owned only here.
    let owned = unsafe { OwnedFd::from_raw_fd(3) };
    let listening = nix::sys::socket::getsockopt(&owned, nix::sys::socket::sockopt::AcceptConn)
        .map_err(|e| format!("descriptor 3 is not the control socket: {e}"))?;
    if !listening {
        return Err("descriptor 3 is not a listening socket".into());
    }
    let control = UnixListener::from(owned);
    raise_fd_limit();
    setup_netns().map_err(|e| format!("set up the shared netns for transparent forwarding: {e}"))?;
    log::info!("forwarder ready");
    let mut ports: HashMap<i64, Running> = HashMap::new();
    loop {
        let (stream, _) = match control.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // Out of descriptors for a moment (many connections): they come back.
            Err(e) if matches!(e.raw_os_error(), Some(nix::libc::EMFILE | nix::libc::ENFILE | nix::libc::ENOBUFS)) => {
                log::warn!("accept on the control socket: {e}");
                std::thread::sleep(POLL);
                continue;
            }
            Err(e) => return Err(format!("accept on the control socket: {e}")),
        };
        let answer = match read_request(&stream) {
            Ok((req, fds)) => handle(&mut ports, &req, fds),
            Err(e) => Err(e),
        };
        let line = match answer {
            Ok(v) => json!({ "ok": v }),
            Err(e) => {
                log::warn!("control request: {e}");
                json!({ "error": e })
            }
        };
        let _ = stream.set_write_timeout(Some(API_TIMEOUT));
        let _ = (&stream).write_all(format!("{line}\n").as_bytes());
    }
}

/// Raises the soft limit on open descriptors towards the hard one: every carried connection
/// takes two, every UDP flow one.
fn raise_fd_limit() {
    let mut lim = nix::libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit struct through a pointer to a live local.
    if unsafe { nix::libc::getrlimit(nix::libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    let want = lim.rlim_max.min(65536);
    if want > lim.rlim_cur {
        lim.rlim_cur = want;
        // SAFETY: setrlimit reads one rlimit struct through a pointer to a live local.
        if unsafe { nix::libc::setrlimit(nix::libc::RLIMIT_NOFILE, &lim) } != 0 {
            log::debug!("raise RLIMIT_NOFILE: {}", std::io::Error::last_os_error());
        }
    }
}

fn read_request(stream: &UnixStream) -> Result<(Value, Vec<OwnedFd>), String> {
    stream.set_read_timeout(Some(API_TIMEOUT)).map_err(|e| e.to_string())?;
    let mut data = Vec::new();
    let mut fds = Vec::new();
    loop {
        let mut buf = vec![0u8; 16 << 10];
        let mut space = nix::cmsg_space!([RawFd; 4]);
        let (n, received) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
                .map_err(|e| format!("read request: {e}"))?;
            let mut received = Vec::new();
            for c in msg.cmsgs().map_err(|e| format!("read request: {e}"))? {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    received.extend(raw);
                }
            }
            (msg.bytes, received)
        };
        for raw in received {
            // SAFETY: the kernel just installed this descriptor in our table for us; nobody
            // else owns it.
            fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
        }
        if n == 0 {
            break;
        }
        data.extend_from_slice(&buf[..n]);
        if data.len() > MAX_MESSAGE {
            return Err("request too large".into());
        }
        if data.ends_with(b"\n") {
            break;
        }
    }
    let req = serde_json::from_slice(&data).map_err(|e| format!("unparsable request: {e}"))?;
    Ok((req, fds))
}

fn handle(ports: &mut HashMap<i64, Running>, req: &Value, mut fds: Vec<OwnedFd>) -> Result<Value, String> {
    match req.get("op").and_then(Value::as_str) {
        Some("list") => {
            let mut ids: Vec<i64> = ports.keys().copied().collect();
            ids.sort_unstable();
            Ok(json!(ids))
        }
        Some("remove") => {
            let id = req.get("id").and_then(Value::as_i64).ok_or("remove: no id")?;
            if let Some(r) = ports.remove(&id) {
                r.stop();
                log::info!("port {id} removed");
            }
            Ok(Value::Null)
        }
        Some("add") => {
            let spec: PortSpec = serde_json::from_value(req.get("port").cloned().unwrap_or(Value::Null))
                .map_err(|e| format!("add: bad port: {e}"))?;
            if fds.len() != 1 {
                return Err(format!("add: expected one socket, got {}", fds.len()));
            }
            if spec.targets.is_empty() {
                return Err(format!("add: port {} has no target", spec.id));
            }
            let fd = fds.remove(0);
            if let Some(old) = ports.remove(&spec.id) {
                old.stop();
            }
            let running = carry(spec.clone(), fd)?;
            ports.insert(spec.id, running);
            log::info!("port {} ({}) carried to {:?}", spec.id, spec.proto, spec.targets);
            Ok(Value::Null)
        }
        other => Err(format!("unknown request {other:?}")),
    }
}

/// Starts the thread that serves one host socket.
fn carry(spec: PortSpec, fd: OwnedFd) -> Result<Running, String> {
    let kind = nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::SockType)
        .map_err(|e| format!("add: not a socket: {e}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let spec = Arc::new(spec);
    let thread = match (spec.proto.as_str(), kind) {
        ("tcp", nix::sys::socket::SockType::Stream) => {
            let listener = TcpListener::from(fd);
            listener.set_nonblocking(true).map_err(|e| e.to_string())?;
            std::thread::Builder::new().spawn(move || serve_tcp(listener, spec, flag))
        }
        ("udp", nix::sys::socket::SockType::Datagram) => {
            let socket = UdpSocket::from(fd);
            socket.set_read_timeout(Some(POLL)).map_err(|e| e.to_string())?;
            want_destinations(&socket).map_err(|e| format!("add: {e}"))?;
            std::thread::Builder::new().spawn(move || serve_udp(socket, spec, flag))
        }
        (proto, kind) => return Err(format!("add: a {kind:?} socket cannot carry {proto}")),
    };
    let thread = thread.map_err(|e| format!("add: no thread for the port: {e}"))?;
    Ok(Running { stop, thread: Some(thread) })
}

fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    let ms = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
    matches!(poll(&mut fds, ms), Ok(n) if n > 0)
}

fn serve_tcp(listener: TcpListener, spec: Arc<PortSpec>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        if CONNECTIONS.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            std::thread::sleep(POLL);
            continue;
        }
        if !wait_readable(listener.as_fd(), POLL) {
            continue;
        }
        match listener.accept() {
            Ok((client, peer)) => {
                let spec2 = spec.clone();
                CONNECTIONS.fetch_add(1, Ordering::SeqCst);
                let spawned = std::thread::Builder::new().spawn(move || {
                    // Per client, so at debug level: a client hammering a port whose container
                    // is gone must not fill the log.
                    if let Err(e) = relay_tcp(client, peer, &spec2) {
                        log::debug!("port {}: client {peer}: {e}", spec2.id);
                    }
                    CONNECTIONS.fetch_sub(1, Ordering::SeqCst);
                });
                if let Err(e) = spawned {
                    CONNECTIONS.fetch_sub(1, Ordering::SeqCst);
                    log::warn!("port {}: no thread for a connection: {e}", spec.id);
                    std::thread::sleep(POLL);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => {
                log::warn!("port {}: accept: {e}", spec.id);
                std::thread::sleep(POLL);
            }
        }
    }
}

/// A socket in the shared netns bound to `source` with the transparent option (the client's
/// port first, any port when that one is taken).
fn transparent_socket(source: SocketAddr, ty: Type, proto: Protocol) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::for_address(source), ty.cloexec(), Some(proto))?;
    if source.is_ipv4() {
        s.set_ip_transparent_v4(true)?;
    } else {
        s.set_ip_transparent_v6(true)?;
    }
    s.set_reuse_address(true)?;
    match s.bind(&source.into()) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && source.port() != 0 => {
            s.bind(&SocketAddr::new(source.ip(), 0).into())?
        }
        other => other?,
    }
    Ok(s)
}

fn relay_tcp(client: TcpStream, peer: SocketAddr, spec: &PortSpec) -> Result<(), String> {
    client.set_nonblocking(false).map_err(|e| e.to_string())?;
    let (target, source) = spec.route(peer).ok_or("no target")?;
    let socket = match source {
        Some(src) => transparent_socket(src, Type::STREAM, Protocol::TCP)
            .map_err(|e| format!("transparent socket for {src}: {e}"))?,
        None => Socket::new(Domain::for_address(target), Type::STREAM.cloexec(), Some(Protocol::TCP))
            .map_err(|e| e.to_string())?,
    };
    if let Err(e) = socket.connect_timeout(&SockAddr::from(target), CONNECT_TIMEOUT) {
        // The client learns it as a reset, as if the container had refused it itself.
        let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
        return Err(format!("connect to {target}: {e}"));
    }
    let upstream = TcpStream::from(socket);
    let _ = upstream.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let (c2, u2) = (client.try_clone().map_err(|e| e.to_string())?, upstream.try_clone().map_err(|e| e.to_string())?);
    let back = std::thread::Builder::new().spawn(move || pump(u2, c2)).map_err(|e| format!("no thread: {e}"))?;
    pump(client, upstream);
    let _ = back.join();
    Ok(())
}

/// Copies one direction until EOF or an error, then passes the half-close on.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    let _ = from.shutdown(Shutdown::Read);
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => {
                // A reset: the other side learns it by a reset too.
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// A UDP flow: the connected socket towards the container, when it last carried anything, and
/// the host address the client wrote to (answers must come from it).
struct Flow {
    socket: UdpSocket,
    last: AtomicU64,
    local: Option<IpAddr>,
}

/// Asks the kernel to report each datagram's destination address (a wildcard socket answers
/// from the address the client wrote to, not from whatever the route prefers).
fn want_destinations(socket: &UdpSocket) -> std::io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    let v6 = socket.local_addr()?.is_ipv6();
    if v6 {
        setsockopt(socket, sockopt::Ipv6RecvPacketInfo, &true)?;
    } else {
        setsockopt(socket, sockopt::Ipv4PacketInfo, &true)?;
    }
    Ok(())
}

/// One datagram: its length, its source and the local address it was sent to.
fn recv_with_destination(socket: &UdpSocket, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr, Option<IpAddr>)> {
    use nix::sys::socket::{SockaddrLike, SockaddrStorage};
    let mut space = nix::cmsg_space!(nix::libc::in6_pktinfo, nix::libc::in_pktinfo);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrStorage>(socket.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::empty())?;
    let mut local = None;
    for c in msg.cmsgs()? {
        match c {
            ControlMessageOwned::Ipv6PacketInfo(info) => {
                local = Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)));
            }
            ControlMessageOwned::Ipv4PacketInfo(info) => {
                local = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr))));
            }
            _ => {}
        }
    }
    let peer = msg.address.as_ref().and_then(|a| match a.family() {
        Some(nix::sys::socket::AddressFamily::Inet6) => {
            a.as_sockaddr_in6().map(|a| SocketAddr::V6(std::net::SocketAddrV6::from(*a)))
        }
        Some(nix::sys::socket::AddressFamily::Inet) => {
            a.as_sockaddr_in().map(|a| SocketAddr::V4(std::net::SocketAddrV4::from(*a)))
        }
        _ => None,
    });
    let peer = peer.ok_or_else(|| std::io::Error::other("datagram without a source address"))?;
    Ok((msg.bytes, peer, local))
}

/// Sends `data` to `peer` from the local address `local` (when known).
fn send_from(socket: &UdpSocket, data: &[u8], peer: SocketAddr, local: Option<IpAddr>) -> std::io::Result<()> {
    use nix::sys::socket::SockaddrStorage;
    let to = SockaddrStorage::from(peer);
    let iov = [IoSlice::new(data)];
    match local {
        Some(IpAddr::V6(a)) if peer.is_ipv6() => {
            let info =
                nix::libc::in6_pktinfo { ipi6_addr: nix::libc::in6_addr { s6_addr: a.octets() }, ipi6_ifindex: 0 };
            sendmsg(socket.as_raw_fd(), &iov, &[ControlMessage::Ipv6PacketInfo(&info)], MsgFlags::empty(), Some(&to))?;
        }
        Some(IpAddr::V4(a)) if peer.is_ipv4() => {
            let info = nix::libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: nix::libc::in_addr { s_addr: u32::from(a).to_be() },
                ipi_addr: nix::libc::in_addr { s_addr: 0 },
            };
            sendmsg(socket.as_raw_fd(), &iov, &[ControlMessage::Ipv4PacketInfo(&info)], MsgFlags::empty(), Some(&to))?;
        }
        _ => {
            socket.send_to(data, peer)?;
        }
    }
    Ok(())
}

fn serve_udp(listener: UdpSocket, spec: Arc<PortSpec>, stop: Arc<AtomicBool>) {
    let listener = Arc::new(listener);
    let flows: Arc<Mutex<HashMap<SocketAddr, Arc<Flow>>>> = Arc::new(Mutex::new(HashMap::new()));
    let epoch = Instant::now();
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::SeqCst) {
        let (n, peer, local) = match recv_with_destination(&listener, &mut buf) {
            Ok(r) => r,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::warn!("port {}: receive: {e}", spec.id);
                std::thread::sleep(POLL);
                continue;
            }
        };
        let existing = flows.lock().ok().and_then(|f| f.get(&peer).cloned());
        let full = flows.lock().map(|f| f.len() >= MAX_FLOWS).unwrap_or(true);
        let flow = match existing {
            Some(f) => f,
            None if full => {
                log::debug!("port {}: {MAX_FLOWS} flows already; dropping a datagram of {peer}", spec.id);
                continue;
            }
            None => match open_flow(&spec, peer) {
                Ok(socket) => {
                    let flow = Arc::new(Flow { socket, last: AtomicU64::new(0), local });
                    if let Ok(mut f) = flows.lock() {
                        f.insert(peer, flow.clone());
                    }
                    let (flow2, flows2, listener2, stop2) =
                        (flow.clone(), flows.clone(), listener.clone(), stop.clone());
                    let peer2 = peer;
                    let spawned = std::thread::Builder::new().spawn(move || {
                        udp_replies(&flow2, &listener2, peer2, &stop2, epoch);
                        if let Ok(mut f) = flows2.lock() {
                            f.remove(&peer2);
                        }
                    });
                    if let Err(e) = spawned {
                        log::warn!("port {}: no thread for the flow of {peer}: {e}", spec.id);
                        if let Ok(mut f) = flows.lock() {
                            f.remove(&peer);
                        }
                        continue;
                    }
                    flow
                }
                Err(e) => {
                    log::debug!("port {}: client {peer}: {e}", spec.id);
                    continue;
                }
            },
        };
        flow.last.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        if let Err(e) = flow.socket.send(&buf[..n]) {
            log::debug!("port {}: to the container for {peer}: {e}", spec.id);
        }
    }
}

fn open_flow(spec: &PortSpec, peer: SocketAddr) -> Result<UdpSocket, String> {
    let (target, source) = spec.route(peer).ok_or("no target")?;
    let socket = match source {
        Some(src) => transparent_socket(src, Type::DGRAM, Protocol::UDP)
            .map_err(|e| format!("transparent socket for {src}: {e}"))?,
        None => Socket::new(Domain::for_address(target), Type::DGRAM.cloexec(), Some(Protocol::UDP))
            .map_err(|e| e.to_string())?,
    };
    socket.connect(&SockAddr::from(target)).map_err(|e| format!("connect to {target}: {e}"))?;
    let socket = UdpSocket::from(socket);
    socket.set_read_timeout(Some(POLL)).map_err(|e| e.to_string())?;
    Ok(socket)
}

fn udp_replies(flow: &Flow, listener: &UdpSocket, peer: SocketAddr, stop: &AtomicBool, epoch: Instant) {
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::SeqCst) {
        match flow.socket.recv(&mut buf) {
            Ok(n) => {
                flow.last.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                let _ = send_from(listener, &buf[..n], peer, flow.local);
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                let idle = (epoch.elapsed().as_millis() as u64).saturating_sub(flow.last.load(Ordering::Relaxed));
                if idle > UDP_IDLE.as_millis() as u64 {
                    return;
                }
            }
            // ICMP port unreachable from the container and the like: the flow stays.
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// The marking rule, the `fwmark` rules and the local routes of both families (see the module
/// documentation), and `lo` up; what exists already is kept, so a restart is harmless.
fn setup_netns() -> Result<(), String> {
    use netlink_packet_route::route::{
        RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
    };
    use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
    use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
    const NLM_F_CREATE: u16 = 0x400;
    const NLM_F_EXCL: u16 = 0x200;
    let mut nl = Handle::new().map_err(|e| format!("netlink: {e}"))?;
    // lo is index 1 in every netns.
    nl.set_link_up(1, true).map_err(|e| format!("set lo up: {e}"))?;
    let ipv6 = Path::new("/proc/sys/net/ipv6").exists();
    for v6 in [false, true] {
        if v6 && !ipv6 {
            continue;
        }
        let family = if v6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
        let mut rule = RuleMessage::default();
        rule.header.family = family;
        rule.header.action = RuleAction::ToTable;
        rule.attributes.push(RuleAttribute::FwMark(MARK));
        rule.attributes.push(RuleAttribute::FwMask(0xffff_ffff));
        rule.attributes.push(RuleAttribute::Priority(RULE_PRIORITY));
        rule.attributes.push(RuleAttribute::Table(TABLE));
        match nl.request(RouteNetlinkMessage::NewRule(rule), NLM_F_CREATE | NLM_F_EXCL) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(nix::libc::EEXIST) => {}
            Err(e) => return Err(format!("add rule fwmark {MARK:#x} lookup {TABLE} ({family:?}): {e}")),
        }
        let mut route = RouteMessage::default();
        route.header = RouteHeader {
            address_family: family,
            destination_prefix_length: 0,
            table: RouteHeader::RT_TABLE_UNSPEC,
            protocol: RouteProtocol::Boot,
            scope: RouteScope::Host,
            kind: RouteType::Local,
            ..Default::default()
        };
        route.attributes.push(RouteAttribute::Table(TABLE));
        route.attributes.push(RouteAttribute::Oif(1));
        match nl.request(RouteNetlinkMessage::NewRoute(route), NLM_F_CREATE | NLM_F_EXCL) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(nix::libc::EEXIST) => {}
            Err(e) => return Err(format!("add local default route dev lo table {TABLE} ({family:?}): {e}")),
        }
    }
    let table = NFT_TABLE.to_string();
    let chain = "prerouting".to_string();
    let mut batch = NftBatch::new(NftFamily::Inet);
    batch.ops = vec![
        NftOp::AddTable { name: table.clone(), comment: Some("rootless-wrapper forwarder".into()) },
        // NF_INET_PRE_ROUTING, priority mangle.
        NftOp::AddChain {
            table: table.clone(),
            name: chain.clone(),
            hook: Some(("filter".into(), 0, -150)),
            comment: None,
        },
        NftOp::FlushChain { table: table.clone(), chain: chain.clone() },
        NftOp::AddRule { table, chain, exprs: Expr::mark_transparent_socket(MARK), comment: None },
    ];
    batch.commit().map_err(|e| format!("nf_tables: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(targets: &[&str]) -> PortSpec {
        PortSpec {
            id: 1,
            proto: "tcp".into(),
            targets: targets.iter().map(|t| t.parse().unwrap()).collect(),
            map4: Some("10.0.2.2".parse().unwrap()),
            map6: Some("fd00::2".parse().unwrap()),
        }
    }

    #[test]
    fn clients_keep_their_address_unless_the_container_cannot_answer_it() {
        let s = spec(&["10.88.0.2:80", "[fd88::2]:80"]);
        let r = |p: &str| s.route(p.parse().unwrap()).unwrap();
        assert_eq!(
            r("[2001:db8::10]:4000"),
            ("[fd88::2]:80".parse().unwrap(), Some("[2001:db8::10]:4000".parse().unwrap()))
        );
        assert_eq!(r("192.0.2.10:4000"), ("10.88.0.2:80".parse().unwrap(), Some("192.0.2.10:4000".parse().unwrap())));
        assert_eq!(r("[::1]:4000").1, Some("[fd00::2]:0".parse().unwrap()));
        assert_eq!(r("[fe80::1]:4000").1, Some("[fd00::2]:0".parse().unwrap()));
        assert_eq!(r("127.0.0.1:4000").1, Some("10.0.2.2:0".parse().unwrap()));
        assert_eq!(r("[::ffff:192.0.2.10]:4000").0, "10.88.0.2:80".parse().unwrap());
        // A client with the container's own address would be answered by the container itself.
        assert_eq!(r("[fd88::2]:4000").1, Some("[fd00::2]:0".parse().unwrap()));
        // No address of the client's family: carried over the other one, from the netns' own.
        let v4 = spec(&["10.88.0.2:80"]);
        assert_eq!(v4.route("[2001:db8::10]:4000".parse().unwrap()), Some(("10.88.0.2:80".parse().unwrap(), None)));
        assert_eq!(spec(&[]).route("[2001:db8::10]:4000".parse().unwrap()), None);
    }

    #[test]
    fn targets_are_the_container_addresses() {
        let result = json!({"interfaces": [{"name": "cni0"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/n"}],
            "ips": [{"address": "10.88.0.2/16", "interface": 2}, {"address": "fd88::2/64", "interface": 2},
                    {"address": "10.88.0.1/16", "interface": 0}, {"address": "10.88.0.9/16", "interface": 2}]});
        let t = targets_from_result(&result, 80);
        assert_eq!(t, vec!["10.88.0.2:80".parse().unwrap(), "[fd88::2]:80".parse().unwrap()]);
        assert!(targets_from_result(&json!({}), 80).is_empty());
    }

    #[test]
    fn identity_needs_the_mode_and_our_paths() {
        let paths = Paths { netns: "/s/netns".into(), control: "/s/forwarder.sock".into(), log: "/s/f.log".into() };
        let e = Expect::new(&paths);
        let ours: Vec<&[u8]> =
            vec![b"/bin/rootless-wrapper", b"--forwarder", b"--control", b"/s/forwarder.sock", b"--netns", b"/s/netns"];
        assert!(e.matches_args(&ours));
        let other: Vec<&[u8]> =
            vec![b"/bin/rootless-wrapper", b"--forwarder", b"--control", b"/t/forwarder.sock", b"--netns", b"/s/netns"];
        assert!(!e.matches_args(&other));
        let mention: Vec<&[u8]> = vec![b"sleep", b"--control", b"/s/forwarder.sock", b"--netns", b"/s/netns"];
        assert!(!e.matches_args(&mention));
        // This test binary is not a forwarder of that directory.
        assert!(!e.matches(std::process::id() as i32));
    }

    #[test]
    fn host_ports_bind_ipv6_only_and_name_the_port_when_taken() {
        let fwd = |port| Forward {
            id: None,
            proto: "tcp".into(),
            host_addr: "::1".into(),
            host_port: port,
            guest_port: port,
            container_port: 80,
            forwarder: true,
        };
        let Ok(first) = bind_host_port(&fwd(0)) else { return }; // no IPv6 on this machine
        let port = TcpListener::from(first.try_clone().unwrap()).local_addr().unwrap().port();
        let e = bind_host_port(&fwd(port)).unwrap_err();
        assert!(e.contains(&format!("host port {port}/tcp")) && e.contains("already in use"), "{e}");
        // IPv6-only: the same port on IPv4 is still free.
        assert!(TcpListener::bind(("127.0.0.1", port)).is_ok());
        drop(first);
        assert!(bind_host_port(&fwd(port)).is_ok());
    }
}
