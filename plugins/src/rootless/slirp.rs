//! slirp4netns: starting it into the shared netns, knowing it again later (PID + start time +
//! name, so a recycled PID is never killed), stopping it, and its JSON API for host forwards.
//!
//! The API takes one request per connection: the client writes the JSON, half-closes, and
//! reads the answer until EOF. Answers come as `{"return": …}`, as `{"error": {"desc": …}}`,
//! or, for `list_hostfwd` on 1.2.0, as a bare `{"entries": […]}` although the manual shows a
//! `return` wrapper; all three are accepted.

use super::state::{Forward, HelperId, NetParams};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long slirp4netns may take to report ready (it takes 3–7 ms here).
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an API request may take.
const API_TIMEOUT: Duration = Duration::from_secs(5);
/// The tap device slirp4netns creates in the rootless netns.
pub const TAP: &str = "tap0";
/// Directories searched after `PATH` for the helper, since runtimes pass minimal `PATH`s.
const FALLBACK_DIRS: [&str; 5] = ["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"];

/// The fields of `/proc/<pid>/stat` the identity check needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    /// Process name (field 2, without parentheses; may itself contain spaces and parentheses).
    pub comm: String,
    /// State letter (field 3); `Z` and `X` are dead.
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
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_proc_stat(&text).filter(|s| s.state != 'Z' && s.state != 'X')
}

/// Whether the recorded helper is still running: the same PID, start time and name.
pub fn is_alive(helper: &HelperId) -> bool {
    helper.pid > 0 && proc_stat(helper.pid).is_some_and(|s| s.start_time == helper.start_time && s.comm == helper.comm)
}

/// Stops the recorded helper if it is still the process we started; anything else with its PID
/// is left alone. Waits for it to exit so the netns is released before it is unmounted.
pub fn stop(helper: &HelperId) -> Result<(), String> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    if !is_alive(helper) {
        log::debug!("helper pid {} is gone or no longer ours; nothing to stop", helper.pid);
        return Ok(());
    }
    for (signal, wait) in [(Signal::SIGTERM, Duration::from_secs(2)), (Signal::SIGKILL, Duration::from_secs(2))] {
        match kill(Pid::from_raw(helper.pid), signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => return Err(format!("kill helper pid {}: {e}", helper.pid)),
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
    let out = Command::new(binary)
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run {} --help: {e}", binary.display()))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    parse_features(&text).map_err(|e| format!("{}: {e}", binary.display()))
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

fn read_log(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let text = text.trim();
    // Keep the end: that is where the failure is.
    let tail: String = text.chars().rev().take(2000).collect::<Vec<_>>().into_iter().rev().collect();
    if tail.is_empty() {
        "(no output)".into()
    } else {
        tail
    }
}

/// Starts the helper into `paths.netns` and waits until it reports ready and its API socket
/// exists. On failure the helper is killed and its log is part of the error.
pub fn start(binary: &Path, params: &NetParams, paths: &HelperPaths) -> Result<HelperId, String> {
    use std::os::unix::process::CommandExt;
    let features = detect_features(binary)?;
    let _ = std::fs::remove_file(&paths.api_socket);
    let log = std::fs::File::create(&paths.log).map_err(|e| format!("create {}: {e}", paths.log.display()))?;
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
            if child_fd == 3 {
                let flags = nix::libc::fcntl(3, nix::libc::F_GETFD);
                if flags < 0 || nix::libc::fcntl(3, nix::libc::F_SETFD, flags & !nix::libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if nix::libc::dup2(child_fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
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

/// The nsfs mount points of this mount namespace other than `keep`, for the helper to drop.
fn nsfs_copies_to_drop(keep: &Path) -> Vec<std::ffi::CString> {
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

/// Sends one request to the API socket and returns the interpreted answer.
pub fn request(socket: &Path, req: &Value) -> Result<Value, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| format!("connect to {}: {e}", socket.display()))?;
    let _ = stream.set_read_timeout(Some(API_TIMEOUT));
    let _ = stream.set_write_timeout(Some(API_TIMEOUT));
    stream.write_all(req.to_string().as_bytes()).map_err(|e| format!("send request: {e}"))?;
    // slirp4netns answers only after EOF on the request.
    stream.shutdown(std::net::Shutdown::Write).map_err(|e| format!("half-close: {e}"))?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).map_err(|e| format!("read answer: {e}"))?;
    parse_response(&answer)
}

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
        // stop() refuses to signal a process that is not the recorded one.
        let impostor = HelperId { pid, start_time: me.start_time + 1, comm: me.comm, ..Default::default() };
        assert!(stop(&impostor).is_ok());
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

        let params =
            NetParams { cidr: "10.0.2.0/24".into(), mtu: 65520, enable_ipv6: false, allow_host_loopback: false };
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
