//! slirp4netns: starting it into the shared netns, knowing it again later, stopping it, and its
//! JSON API for host forwards.
//!
//! Knowing it again: `state.json` records the helper's PID, start time and name, but a record
//! can be forged or stale, so before the wrapper signals a process it checks facts about the
//! process itself, none of which the record supplies ([`Expect`]): the process runs the helper
//! binary the configuration names (the same file: device and inode of `/proc/<pid>/exe`), it
//! runs as this user (not as another host user, not as a container's user), and its command
//! line says it serves this state directory's netns through this state directory's API socket.
//! Nobody but this user (or root) can create files in the state directory, and a process that
//! passes all three checks *is* a slirp4netns serving our netns, which teardown must stop
//! anyway; the record's PID and start time only choose among such processes. An innocent
//! process, another user's helper, or podman's slirp4netns for another netns never passes.
//! One gap the kernel leaves: the binary of a process in another user namespace cannot be
//! looked at from this one. For a helper started in an earlier user namespace of this user (the
//! pause process was restarted), recognised by a `uid_map` and `gid_map` that map exactly our
//! IDs to themselves, the name (`slirp4netns`) stands in for the binary; the user and
//! command-line checks still hold. A process of any other namespace is never ours.
//!
//! The API takes one request per connection: the client writes the JSON, half-closes, and
//! reads the answer until EOF. Answers come as `{"return": …}`, as `{"error": {"desc": …}}`,
//! or, for `list_hostfwd` on 1.2.0, as a bare `{"entries": […]}` although the manual shows a
//! `return` wrapper; all three are accepted. Every step has a deadline: a stopped helper
//! (SIGSTOP) accepts nothing, and `connect()` to its full backlog would otherwise block forever.

use super::config::HelperKind;
use super::state::{Forward, HelperId, NetParams};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long slirp4netns may take to report ready (it takes 3–7 ms here).
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one API request may take, connect to last byte (answers take well under 1 ms).
pub const API_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `slirp4netns --help` may take.
const HELP_TIMEOUT: Duration = Duration::from_secs(5);
/// The tap device slirp4netns creates in the rootless netns.
pub const TAP: &str = "tap0";
/// Directories searched after `PATH` for the helper, since runtimes pass minimal `PATH`s.
const FALLBACK_DIRS: [&str; 5] = ["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"];
/// The bytes of its log kept for an error message.
const LOG_TAIL: u64 = 2000;

/// The fields of `/proc/<pid>/stat` the identity check needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    /// Process name (field 2, without parentheses; may itself contain spaces and parentheses).
    pub comm: String,
    /// State letter (field 3); `Z` and `X` are dead, `T` and `t` stopped.
    pub state: char,
    /// Start time in clock ticks after boot (field 22).
    pub start_time: u64,
}

/// Parses `/proc/<pid>/stat`: the name ends at the *last* `)` since it may contain one.
pub fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    let state = rest.first()?.chars().next()?;
    let start_time = rest.get(19)?.parse().ok()?;
    Some(ProcStat { comm, state, start_time })
}

/// The stat of a live process, `None` when it is gone or a zombie.
pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    if pid <= 0 {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_proc_stat(&text).filter(|s| s.state != 'Z' && s.state != 'X')
}

/// Whether the recorded process still runs: the same PID, start time and name. Necessary, not
/// sufficient, for it to be our helper: see [`Expect`].
pub fn is_alive(helper: &HelperId) -> bool {
    proc_stat(helper.pid).is_some_and(|s| s.start_time == helper.start_time && s.comm == helper.comm)
}

/// What a process must be to count as the helper of one state directory (module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    /// Which helper it must be.
    pub kind: HelperKind,
    /// Device and inode of each file the helper may run: the binary, and for pasta the
    /// `.avx2` build it re-executes itself as. Empty when it cannot be found (nothing matches).
    pub binaries: Vec<(u64, u64)>,
    /// The UID the helper runs as, as this process sees it (its own effective UID).
    pub uid: u32,
    /// The netns it must serve.
    pub netns: PathBuf,
    /// The API socket it must listen on (slirp4netns only).
    pub api_socket: PathBuf,
}

impl Expect {
    /// The helper of `netns` and `api_socket`, running `binary` as this process's user.
    pub fn new(kind: HelperKind, binary: Option<&Path>, netns: &Path, api_socket: &Path) -> Expect {
        let mut files: Vec<PathBuf> = binary.map(Path::to_path_buf).into_iter().collect();
        if kind == HelperKind::Pasta {
            // pasta execs `<its real file>.avx2` when the CPU has AVX2 (Debian's passt does).
            if let Some(real) = binary.and_then(|b| std::fs::canonicalize(b).ok()) {
                let mut avx2 = real.into_os_string();
                avx2.push(".avx2");
                files.push(PathBuf::from(avx2));
            }
        }
        let binaries = files.iter().filter_map(|b| std::fs::metadata(b).ok()).map(|m| (m.dev(), m.ino())).collect();
        Expect {
            kind,
            binaries,
            uid: nix::unistd::geteuid().as_raw(),
            netns: netns.to_path_buf(),
            api_socket: api_socket.to_path_buf(),
        }
    }

    /// Whether the command line serves exactly this netns (through exactly this socket, for
    /// slirp4netns).
    pub fn matches_args(&self, args: &[&[u8]]) -> bool {
        let want = |flag: &[u8], value: &Path| {
            args.windows(2).any(|w| w[0] == flag && w[1] == value.as_os_str().as_encoded_bytes())
        };
        match self.kind {
            HelperKind::Slirp4netns => {
                want(b"--api-socket", &self.api_socket) && want(b"--netns-type=path", &self.netns)
            }
            HelperKind::Pasta => want(b"--netns", &self.netns) && args.contains(&b"--config-net".as_slice()),
        }
    }

    /// Whether process `pid` is a helper serving this state directory.
    pub fn matches(&self, pid: i32) -> bool {
        if pid <= 0 {
            return false;
        }
        // The name a process of an earlier user namespace must have (see [`process_args`]).
        let comm = proc_stat(pid).map(|s| s.comm).unwrap_or_default();
        let names = comm_names(self.kind);
        let name = names.iter().copied().find(|n| *n == comm).unwrap_or(names[0]);
        self.binaries.iter().any(|binary| {
            process_args(pid, self.uid, *binary, name, None).is_some_and(|cmdline| {
                let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
                self.matches_args(&args)
            })
        })
    }
}

/// The process names (`comm`) a helper of `kind` runs under.
pub fn comm_names(kind: HelperKind) -> &'static [&'static str] {
    match kind {
        HelperKind::Slirp4netns => &["slirp4netns"],
        HelperKind::Pasta => &["pasta", "passt", "pasta.avx2", "passt.avx2"],
    }
}

/// The command line (NUL-separated) of process `pid` if it runs the binary `(dev, ino)` as
/// `uid`. A process started in an earlier user namespace of this user counts when its name is
/// `comm`: the kernel hides the binary of a process in another user namespace, and there its
/// name stands in for it. With `path`, a process still running an earlier file at that path
/// (replaced by an upgrade: the kernel names it `<path> (deleted)`) counts too.
pub fn process_args(pid: i32, uid: u32, (dev, ino): (u64, u64), comm: &str, path: Option<&Path>) -> Option<Vec<u8>> {
    if pid <= 0 {
        return None;
    }
    let proc = PathBuf::from(format!("/proc/{pid}"));
    if !std::fs::metadata(&proc).is_ok_and(|m| m.uid() == uid) {
        log::debug!("pid {pid} does not run as uid {uid}");
        return None;
    }
    let replaced = || {
        let Some(path) = path else { return false };
        let mut deleted = path.as_os_str().to_os_string();
        deleted.push(" (deleted)");
        std::fs::read_link(proc.join("exe")).is_ok_and(|target| target.as_os_str() == deleted)
    };
    let same_binary = match std::fs::metadata(proc.join("exe")) {
        Ok(m) => (m.dev(), m.ino()) == (dev, ino) || replaced(),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            sibling_userns(pid) && proc_stat(pid).is_some_and(|s| s.comm == comm)
        }
        Err(_) => false,
    };
    if !same_binary {
        log::debug!("pid {pid} does not run the expected binary");
        return None;
    }
    std::fs::read(proc.join("cmdline")).ok()
}

/// `(inside, outside, count)` lines of a `uid_map`.
fn parse_id_map(text: &str) -> Vec<(u64, u64, u64)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<u64> = l.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            (f.len() == 3).then(|| (f[0], f[1], f[2]))
        })
        .collect()
}

/// Whether the maps describe another user namespace that maps the same IDs as ours, the same
/// way: `theirs` is read from inside ours, so each of its IDs must map to itself here, over the
/// same ranges (a process of the init namespace or of someone else's maps to nothing here).
pub fn same_mapping(ours: &str, theirs: &str) -> bool {
    let (ours, theirs) = (parse_id_map(ours), parse_id_map(theirs));
    let ranges = |m: &[(u64, u64, u64)]| m.iter().map(|(i, _, c)| (*i, *c)).collect::<Vec<_>>();
    !theirs.is_empty() && theirs.iter().all(|(i, o, _)| i == o) && ranges(&ours) == ranges(&theirs)
}

/// Whether process `pid` lives in a user namespace of this user that maps exactly what ours
/// maps (the namespace of an earlier pause process), read where no ptrace rights are needed.
pub fn sibling_userns(pid: i32) -> bool {
    let read = |p: String| std::fs::read_to_string(p).unwrap_or_default();
    same_mapping(&read("/proc/self/uid_map".into()), &read(format!("/proc/{pid}/uid_map")))
        && same_mapping(&read("/proc/self/gid_map".into()), &read(format!("/proc/{pid}/gid_map")))
}

/// Whether the recorded helper still runs and is verifiably ours.
pub fn is_ours(helper: &HelperId, expect: &Expect) -> bool {
    is_alive(helper) && expect.matches(helper.pid)
}

/// Why the helper cannot answer now, if it cannot: it is stopped (SIGSTOP, a debugger).
pub fn unresponsive(helper: &HelperId) -> Option<String> {
    let st = proc_stat(helper.pid)?;
    matches!(st.state, 'T' | 't').then(|| {
        let name = helper.binary.file_name().map(|n| n.to_string_lossy().into_owned());
        format!(
            "{} (pid {}) is stopped and cannot answer; resume it (kill -CONT {}) or remove the last container to \
             restart it",
            name.as_deref().unwrap_or("the helper"),
            helper.pid,
            helper.pid
        )
    })
}

/// Stops the recorded helper if it is still, verifiably, ours; anything else with its PID is
/// left alone. Waits for it to exit so the netns is released before it is unmounted.
pub fn stop(helper: &HelperId, expect: &Expect) -> Result<(), String> {
    stop_verified(helper, |h| is_ours(h, expect))
}

/// Stops the recorded process while `is_ours` holds for it (checked again before each
/// signal), SIGTERM then SIGKILL, and waits for it to exit.
pub fn stop_verified(helper: &HelperId, is_ours: impl Fn(&HelperId) -> bool) -> Result<(), String> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    if !is_ours(helper) {
        log::debug!("helper pid {} is gone or not ours; nothing to stop", helper.pid);
        return Ok(());
    }
    let pid = Pid::from_raw(helper.pid);
    for (signal, wait) in [(Signal::SIGTERM, Duration::from_secs(2)), (Signal::SIGKILL, Duration::from_secs(2))] {
        // Checked again right before each signal, so the PID cannot have been reused in between
        // by anything but another process that passes the same checks.
        if !is_ours(helper) {
            return Ok(());
        }
        match kill(pid, signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => return Err(format!("kill helper pid {}: {e}", helper.pid)),
        }
        if signal == Signal::SIGTERM {
            // A stopped helper would keep SIGTERM pending forever.
            let _ = kill(pid, Signal::SIGCONT);
        }
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if !is_alive(helper) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    Err(format!("helper pid {} did not exit after SIGKILL", helper.pid))
}

/// Finds the helper binary: a path as given, else the name on `PATH` and the usual directories.
pub fn find_helper(helper: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if helper.contains('/') {
        let p = PathBuf::from(helper);
        return runnable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .filter(|d| !d.as_os_str().is_empty())
        .chain(FALLBACK_DIRS.iter().map(PathBuf::from))
        .map(|d| d.join(helper))
        .find(|p| runnable(p))
}

/// Optional flags this slirp4netns build knows, from its `--help`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    /// `--enable-sandbox`.
    pub sandbox: bool,
    /// `--enable-seccomp`.
    pub seccomp: bool,
}

/// Reads the flags out of `--help` text, refusing builds without the ones the wrapper needs.
pub fn parse_features(help: &str) -> Result<Features, String> {
    for needed in ["--api-socket", "--netns-type", "--cidr", "--disable-host-loopback", "--ready-fd", "--mtu"] {
        if !help.contains(needed) {
            return Err(format!("slirp4netns lacks {needed} (version 0.4.0 or later is needed)"));
        }
    }
    Ok(Features { sandbox: help.contains("--enable-sandbox"), seccomp: help.contains("--enable-seccomp") })
}

fn detect_features(binary: &Path) -> Result<Features, String> {
    let mut cmd = Command::new(binary);
    cmd.arg("--help");
    let out = output_within(cmd, HELP_TIMEOUT, 1 << 20).map_err(|e| format!("run {} --help: {e}", binary.display()))?;
    parse_features(&String::from_utf8_lossy(&out)).map_err(|e| format!("{}: {e}", binary.display()))
}

/// Runs `cmd` and returns its stdout and stderr together (at most `max` bytes kept); a command
/// that does not finish within `timeout` is killed and is an error.
pub fn output_within(mut cmd: Command, timeout: Duration, max: usize) -> Result<Vec<u8>, String> {
    let (reader, writer) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let writer2 = writer.try_clone().map_err(|e| format!("dup: {e}"))?;
    cmd.stdin(Stdio::null()).stdout(OwnedFd::from(writer)).stderr(OwnedFd::from(writer2));
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    // The Command holds the write ends until it is dropped; EOF needs them gone.
    drop(cmd);
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let failed = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Some(format!("no answer within {timeout:?}"));
        }
        let _ = reader.set_read_timeout(Some(left));
        match (&reader).read(&mut buf) {
            Ok(0) => break None,
            Ok(n) => {
                if out.len() < max {
                    out.extend_from_slice(&buf[..n.min(max - out.len())]);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => break Some(format!("read its output: {e}")),
        }
    };
    // EOF: it closed its output, so it is exiting; a short grace, then it is killed.
    let grace = Instant::now() + Duration::from_millis(500);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if failed.is_none() && Instant::now() < grace => std::thread::sleep(Duration::from_millis(1)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// The command line for one helper start.
pub fn helper_args(params: &NetParams, features: Features, netns: &Path, api_socket: &Path) -> Vec<String> {
    let mut args = vec!["--configure".to_string(), format!("--mtu={}", params.mtu), format!("--cidr={}", params.cidr)];
    if !params.allow_host_loopback {
        args.push("--disable-host-loopback".into());
    }
    if params.enable_ipv6 {
        args.push("--enable-ipv6".into());
    }
    if features.sandbox {
        args.push("--enable-sandbox".into());
    }
    if features.seccomp {
        args.push("--enable-seccomp".into());
    }
    args.extend([
        "--api-socket".to_string(),
        api_socket.display().to_string(),
        "--ready-fd=3".to_string(),
        "--netns-type=path".to_string(),
        netns.display().to_string(),
        TAP.to_string(),
    ]);
    args
}

/// Where the helper's files live in the state directory.
#[derive(Debug, Clone)]
pub struct HelperPaths {
    /// The netns it serves.
    pub netns: PathBuf,
    /// Its API socket.
    pub api_socket: PathBuf,
    /// Its stdout and stderr.
    pub log: PathBuf,
}

/// The end of a helper's log, for an error message.
pub fn read_log(path: &Path) -> String {
    // Keep the end: that is where the failure is.
    let bytes = super::trust::read_tail(path, LOG_TAIL).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let tail = text.trim();
    if tail.is_empty() {
        "(no output)".into()
    } else {
        tail.to_string()
    }
}

/// Starts the helper into `paths.netns` and waits until it reports ready and its API socket
/// exists. On failure the helper is killed and its log is part of the error.
pub fn start(binary: &Path, params: &NetParams, paths: &HelperPaths) -> Result<HelperId, String> {
    use std::os::unix::process::CommandExt;
    let features = detect_features(binary)?;
    let _ = std::fs::remove_file(&paths.api_socket);
    let log =
        super::trust::create_fresh(&paths.log, 0o600).map_err(|e| format!("create {}: {e}", paths.log.display()))?;
    let log_err = log.try_clone().map_err(|e| format!("dup {}: {e}", paths.log.display()))?;
    // A socket pair instead of a pipe: reads can time out, and EOF tells that the helper died
    // before it was ready (its end is its only open copy once we drop ours).
    let (ready, ready_child) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let args = helper_args(params, features, &paths.netns, &paths.api_socket);
    log::debug!("starting {} {}", binary.display(), args.join(" "));
    let child_fd = ready_child.as_raw_fd();
    let sandbox = features.sandbox;
    // Its mount namespace starts as a copy of ours; copies of container netns mounts in it would
    // keep those namespaces alive for as long as the helper runs, after the runtime removed them.
    let detach: Vec<std::ffi::CString> = if sandbox { nsfs_copies_to_drop(&paths.netns) } else { Vec::new() };
    let mut cmd = Command::new(binary);
    cmd.args(&args).current_dir("/").stdin(Stdio::null()).stdout(log).stderr(log_err);
    // SAFETY: runs in the forked child before exec and only makes async-signal-safe syscalls
    // (setsid, unshare, dup2, fcntl) on a descriptor that stays open in the parent until spawn
    // returns.
    unsafe {
        cmd.pre_exec(move || {
            // Its own session: signals aimed at the runtime's process group must not reach it.
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            // With --enable-sandbox it pivots its root; in a mount namespace of its own that
            // cannot touch ours (slirp4netns PR #153, as podman does).
            if sandbox {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(std::io::Error::from)?;
                for path in &detach {
                    // Mounts inherited from a more privileged namespace are locked and stay.
                    nix::libc::umount2(path.as_ptr(), nix::libc::MNT_DETACH);
                }
            }
            inherit_as_fd3(child_fd)
        });
    }
    let mut child = cmd.spawn().map_err(|e| format!("start {}: {e}", binary.display()))?;
    drop(ready_child);
    let fail = |child: &mut std::process::Child, why: String| -> String {
        let _ = child.kill();
        let _ = child.wait();
        format!("{why}; slirp4netns log: {}", read_log(&paths.log))
    };
    let _ = ready.set_read_timeout(Some(READY_TIMEOUT));
    let mut byte = [0u8; 1];
    match (&ready).read(&mut byte) {
        Ok(1) if byte[0] == b'1' => {}
        Ok(0) => {
            // Give the exit status a moment to be collectable.
            std::thread::sleep(Duration::from_millis(5));
            let status = child.try_wait().ok().flatten().map(|s| s.to_string()).unwrap_or_else(|| "no status".into());
            return Err(fail(&mut child, format!("slirp4netns exited before it was ready ({status})")));
        }
        Ok(_) => return Err(fail(&mut child, format!("slirp4netns reported {:?} on its ready fd", byte[0] as char))),
        Err(e) => {
            return Err(fail(&mut child, format!("slirp4netns was not ready within {READY_TIMEOUT:?}: {e}")));
        }
    }
    // Before slirp4netns 0.4.0 the API socket could appear after the ready signal.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !paths.api_socket.exists() {
        if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            return Err(fail(&mut child, format!("API socket {} did not appear", paths.api_socket.display())));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let pid = i32::try_from(child.id()).map_err(|_| format!("pid {} out of range", child.id()))?;
    let Some(stat) = proc_stat(pid) else {
        return Err(fail(&mut child, format!("slirp4netns (pid {pid}) vanished right after start")));
    };
    // The Child is dropped without waiting: the helper outlives this invocation by design.
    Ok(HelperId {
        pid,
        start_time: stat.start_time,
        comm: stat.comm,
        binary: binary.to_path_buf(),
        api_socket: paths.api_socket.clone(),
    })
}

/// Makes `fd` descriptor 3 of the program about to be executed (kept across exec). Only
/// async-signal-safe syscalls, so it may run between fork and exec.
pub fn inherit_as_fd3(fd: std::os::fd::RawFd) -> std::io::Result<()> {
    use nix::libc;
    if fd == 3 {
        // SAFETY: fcntl on a descriptor number takes and returns plain integers.
        let flags = unsafe { libc::fcntl(3, libc::F_GETFD) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    // SAFETY: dup2 on descriptor numbers takes and returns plain integers (the copy has no
    // close-on-exec flag).
    } else if unsafe { libc::dup2(fd, 3) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The nsfs mount points of this mount namespace other than `keep`, for the helper to drop.
pub fn nsfs_copies_to_drop(keep: &Path) -> Vec<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    super::mounts::nsfs_mount_points(&info)
        .into_iter()
        .filter(|p| p != keep)
        .filter_map(|p| std::ffi::CString::new(p.as_os_str().as_bytes()).ok())
        .collect()
}

/// Interprets an API answer: `{"error": {"desc"}}` is an error, `{"return": X}` is `X`, and any
/// other object (the bare `list_hostfwd` shape) is the answer itself.
pub fn parse_response(bytes: &[u8]) -> Result<Value, String> {
    let text = String::from_utf8_lossy(bytes);
    if text.trim().is_empty() {
        return Err("empty answer".into());
    }
    let v: Value = serde_json::from_str(text.trim()).map_err(|e| format!("unparsable answer {text:?}: {e}"))?;
    if let Some(err) = v.get("error") {
        let desc = err.get("desc").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| err.to_string());
        return Err(desc);
    }
    if let Some(ret) = v.get("return") {
        return Ok(ret.clone());
    }
    if v.is_object() {
        return Ok(v);
    }
    Err(format!("unexpected answer {text:?}"))
}

/// Connects to a unix socket, giving up after `timeout` (a listener whose backlog is full, as
/// a stopped one's soon is, would otherwise block `connect()` forever).
pub fn connect_within(socket: &Path, timeout: Duration) -> std::io::Result<UnixStream> {
    use nix::libc;
    let path = socket.as_os_str().as_encoded_bytes();
    // SAFETY: a plain C struct for which all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if path.len() >= addr.sun_path.len() || path.contains(&0) {
        return Err(std::io::Error::other(format!("socket path {} is too long", socket.display())));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(path) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: socket() takes no pointers; the result is checked and owned exactly once.
    let raw = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let tv = libc::timeval {
        tv_sec: timeout.as_secs().try_into().unwrap_or(libc::time_t::MAX),
        tv_usec: timeout.subsec_micros().into(),
    };
    // For unix sockets, connect() waits for room in the listener's backlog at most SO_SNDTIMEO.
    // SAFETY: the option value points at a live timeval of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a live, initialised sockaddr_un of `len` bytes.
    let rc = unsafe { libc::connect(fd.as_raw_fd(), (&addr as *const libc::sockaddr_un).cast(), len) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINPROGRESS) => {
                std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no room to connect within {timeout:?}"))
            }
            _ => e,
        });
    }
    Ok(UnixStream::from(fd))
}

/// Sends one request to the API socket and returns the interpreted answer, all within
/// [`API_TIMEOUT`].
pub fn request(socket: &Path, req: &Value) -> Result<Value, String> {
    request_within(socket, req, API_TIMEOUT)
}

/// [`request`] with another deadline.
pub fn request_within(socket: &Path, req: &Value, timeout: Duration) -> Result<Value, String> {
    let deadline = Instant::now() + timeout;
    let left = || {
        let l = deadline.saturating_duration_since(Instant::now());
        (!l.is_zero()).then_some(l).ok_or_else(|| format!("slirp4netns did not answer within {timeout:?}"))
    };
    let mut stream = connect_within(socket, timeout).map_err(|e| format!("connect to {}: {e}", socket.display()))?;
    stream.set_write_timeout(Some(left()?)).map_err(|e| format!("set timeout: {e}"))?;
    stream.write_all(req.to_string().as_bytes()).map_err(|e| format!("send request: {e}"))?;
    // slirp4netns answers only after EOF on the request.
    stream.shutdown(std::net::Shutdown::Write).map_err(|e| format!("half-close: {e}"))?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        stream.set_read_timeout(Some(left()?)).map_err(|e| format!("set timeout: {e}"))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) if answer.len() + n > MAX_ANSWER => return Err(format!("answer longer than {MAX_ANSWER} bytes")),
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err(format!("slirp4netns did not answer within {timeout:?}"))
            }
            Err(e) => return Err(format!("read answer: {e}")),
        }
    }
    parse_response(&answer)
}

/// The longest API answer read (a `list_hostfwd` of every port is about 7 MB).
const MAX_ANSWER: usize = 16 << 20;

/// `add_hostfwd`: forwards `host_addr:host_port` to `guest_addr:guest_port`; returns its ID.
pub fn add_hostfwd(socket: &Path, fwd: &Forward, guest_addr: &str) -> Result<i64, String> {
    let req = json!({"execute": "add_hostfwd", "arguments": {"proto": fwd.proto, "host_addr": fwd.host_addr,
        "host_port": fwd.host_port, "guest_addr": guest_addr, "guest_port": fwd.guest_port}});
    let ret = request(socket, &req)?;
    ret.get("id").and_then(Value::as_i64).ok_or_else(|| format!("add_hostfwd answer without id: {ret}"))
}

/// `remove_hostfwd` by ID.
pub fn remove_hostfwd(socket: &Path, id: i64) -> Result<(), String> {
    request(socket, &json!({"execute": "remove_hostfwd", "arguments": {"id": id}})).map(|_| ())
}

/// `list_hostfwd`: the IDs of the forwards the helper has.
pub fn list_hostfwd(socket: &Path) -> Result<Vec<i64>, String> {
    let ret = request(socket, &json!({"execute": "list_hostfwd"}))?;
    Ok(entry_ids(&ret))
}

/// The `id`s in a `list_hostfwd` answer.
pub fn entry_ids(answer: &Value) -> Vec<i64> {
    answer
        .get("entries")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|e| e.get("id").and_then(Value::as_i64)).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_parsing() {
        let line = "4242 (slirp4netns) S 1 4242 4242 0 -1 4194560 300 0 0 0 1 2 0 0 20 0 1 0 987654 10000 200 \
                    18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            parse_proc_stat(line),
            Some(ProcStat { comm: "slirp4netns".into(), state: 'S', start_time: 987654 })
        );
        // A name with spaces and a parenthesis must not shift the fields.
        let odd = "7 (a) b (c) Z 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 55 0 0";
        assert_eq!(parse_proc_stat(odd), Some(ProcStat { comm: "a) b (c".into(), state: 'Z', start_time: 55 }));
        assert_eq!(parse_proc_stat("garbage"), None);
        assert_eq!(parse_proc_stat("1 (x) S 1 2"), None);
    }

    #[test]
    fn own_process_is_alive_and_a_wrong_start_time_is_not() {
        let pid = std::process::id() as i32;
        let me = proc_stat(pid).unwrap();
        let id = HelperId { pid, start_time: me.start_time, comm: me.comm.clone(), ..Default::default() };
        assert!(is_alive(&id));
        assert!(!is_alive(&HelperId { start_time: me.start_time + 1, ..id.clone() }), "a recycled PID is not ours");
        assert!(!is_alive(&HelperId { comm: "other".into(), ..id.clone() }));
        assert!(!is_alive(&HelperId { pid: 0, ..id }));
        // stop() refuses to signal a process that is not the recorded one, and one that is
        // recorded exactly but is not a helper of ours (this test binary serves no netns).
        let exe = std::env::current_exe().unwrap();
        let expect =
            Expect::new(HelperKind::Slirp4netns, Some(&exe), Path::new("/s/netns"), Path::new("/s/slirp.sock"));
        let impostor = HelperId { pid, start_time: me.start_time + 1, comm: me.comm.clone(), ..Default::default() };
        assert!(stop(&impostor, &expect).is_ok());
        let exact = HelperId { pid, start_time: me.start_time, comm: me.comm, ..Default::default() };
        assert!(!is_ours(&exact, &expect));
        assert!(stop(&exact, &expect).is_ok(), "and we are still here");
        assert!(unresponsive(&exact).is_none());
    }

    #[test]
    fn identity_needs_our_paths_in_the_command_line() {
        let expect = Expect::new(HelperKind::Slirp4netns, None, Path::new("/s/netns"), Path::new("/s/slirp.sock"));
        let ours = helper_args(&NetParams::default(), Features::default(), &expect.netns, &expect.api_socket);
        let ours: Vec<&[u8]> = ours.iter().map(|a| a.as_bytes()).collect();
        assert!(expect.matches_args(&ours));
        let other = helper_args(&NetParams::default(), Features::default(), Path::new("/s/netns2"), &expect.api_socket);
        let other: Vec<&[u8]> = other.iter().map(|a| a.as_bytes()).collect();
        assert!(!expect.matches_args(&other));
        // The paths merely mentioned somewhere are not enough.
        let mention: Vec<&[u8]> = vec![b"sleep", b"/s/netns", b"/s/slirp.sock"];
        assert!(!expect.matches_args(&mention));
        // Without a helper binary to compare with, nothing is ours.
        assert!(!expect.matches(std::process::id() as i32));
    }

    #[test]
    fn sibling_user_namespaces_map_the_same_ids_to_themselves() {
        let ours = "         0       1001          1\n         1     100000      65536\n";
        assert!(same_mapping(ours, "0 0 1\n1 1 65536\n"));
        // A process of the initial namespace, seen from ours.
        assert!(!same_mapping(ours, "0 4294967295 4294967295\n"));
        // Another user's namespace: its IDs map to nothing here.
        assert!(!same_mapping(ours, "0 4294967295 1\n"));
        assert!(!same_mapping(ours, "0 0 1\n"), "fewer IDs mapped");
        assert!(!same_mapping(ours, ""));
    }

    #[test]
    fn a_listener_that_never_answers_fails_within_the_deadline() {
        use std::os::unix::net::UnixListener;
        let dir = std::env::temp_dir().join(format!("rootless-api-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("api.sock");
        let _ = std::fs::remove_file(&sock);
        let listener = UnixListener::bind(&sock).unwrap();
        // As a stopped slirp4netns: nothing accepted, a backlog that fills at once.
        // SAFETY: listen() on a live descriptor takes no pointers.
        assert_eq!(unsafe { nix::libc::listen(listener.as_raw_fd(), 0) }, 0);
        for _ in 0..3 {
            let t = Instant::now();
            let e = request_within(&sock, &json!({"execute": "list_hostfwd"}), Duration::from_millis(300)).unwrap_err();
            assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
            assert!(e.contains("within") || e.contains("connect"), "{e}");
        }
        drop(listener);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn commands_have_a_deadline() {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "echo out; echo err >&2"]);
        let out = output_within(cmd, Duration::from_secs(5), 1 << 10).unwrap();
        assert_eq!(String::from_utf8_lossy(&out).lines().count(), 2);
        let t = Instant::now();
        let mut cmd = Command::new("/bin/sleep");
        cmd.arg("30");
        assert!(output_within(cmd, Duration::from_millis(200), 10).unwrap_err().contains("within"));
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn api_answers_in_every_shape() {
        assert_eq!(parse_response(br#"{"return": {"id": 3}}"#).unwrap()["id"], 3);
        assert_eq!(parse_response(br#"{"return": {}}"#).unwrap(), json!({}));
        let list = parse_response(
            br#"{"entries": [{"id": 1, "proto": "tcp", "host_addr": "0.0.0.0", "host_port": 8080, "guest_addr": "10.0.2.100", "guest_port": 8080}, {"id": 4}]}"#,
        )
        .unwrap();
        assert_eq!(entry_ids(&list), vec![1, 4]);
        let wrapped = parse_response(br#"{"return": {"entries": [{"id": 2}]}}"#).unwrap();
        assert_eq!(entry_ids(&wrapped), vec![2]);
        assert_eq!(
            parse_response(br#"{"error": {"desc": "bad request: add_hostfwd: slirp_add_hostfwd failed"}}"#)
                .unwrap_err(),
            "bad request: add_hostfwd: slirp_add_hostfwd failed"
        );
        assert!(parse_response(br#"{"error": "weird"}"#).unwrap_err().contains("weird"));
        assert!(parse_response(b"").is_err());
        assert!(parse_response(b"[1]").is_err());
        assert!(parse_response(b"{truncated").is_err());
    }

    #[test]
    fn features_and_arguments() {
        let help = "Usage: slirp4netns [OPTION]... PID|PATH [TAPNAME]\n -c, --configure\n -e, --exit-fd=FD\n \
                    -r, --ready-fd=FD\n -m, --mtu=MTU\n --cidr=CIDR\n --disable-host-loopback\n --netns-type=TYPE\n \
                    -a, --api-socket=PATH\n --enable-sandbox\n --enable-seccomp\n";
        let f = parse_features(help).unwrap();
        assert_eq!(f, Features { sandbox: true, seccomp: true });
        let old = help.replace("--enable-sandbox", "").replace("--enable-seccomp", "");
        assert_eq!(parse_features(&old).unwrap(), Features::default());
        assert!(parse_features(&help.replace("--api-socket", "")).unwrap_err().contains("--api-socket"));

        let params = NetParams { cidr: "10.0.2.0/24".into(), mtu: 65520, ..Default::default() };
        let args = helper_args(&params, f, Path::new("/s/netns"), Path::new("/s/slirp.sock"));
        assert_eq!(
            args.join(" "),
            "--configure --mtu=65520 --cidr=10.0.2.0/24 --disable-host-loopback --enable-sandbox --enable-seccomp \
             --api-socket /s/slirp.sock --ready-fd=3 --netns-type=path /s/netns tap0"
        );
        let open = NetParams { allow_host_loopback: true, enable_ipv6: true, ..params };
        let args = helper_args(&open, Features::default(), Path::new("/n"), Path::new("/a"));
        assert!(!args.contains(&"--disable-host-loopback".to_string()));
        assert!(args.contains(&"--enable-ipv6".to_string()));
        assert!(!args.iter().any(|a| a.contains("sandbox")));
    }

    #[test]
    fn helper_lookup() {
        assert_eq!(find_helper("/bin/sh"), Some(PathBuf::from("/bin/sh")));
        assert_eq!(find_helper("/nonexistent/slirp4netns"), None);
        assert!(find_helper("sh").is_some());
        assert_eq!(find_helper("no-such-helper-binary"), None);
    }
}
