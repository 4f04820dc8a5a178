//! pasta (Debian's `passt` package) as the uplink of the shared netns, beside slirp4netns.
//!
//! pasta is given the addresses slirp4netns would have (`cidr` + 100 on `tap0`, the gateway
//! at + 2, DNS forwarded from + 3, and `fd00::100/64` via `fd00::2` with `enableIPv6`), so the
//! inner plugins, the generated `resolv.conf` and a runtime see the same network whichever
//! helper serves it. Debian 12's build (0.0~git20230309) needs those given explicitly (`-I`,
//! `-a`, `-n`, `-g`), and a default route on the host to pick its outbound interface; it has no
//! ready descriptor: it configures the tap, then forks into the background and its first
//! process exits, which is the readiness signal. The PID of the process that stays is read from
//! a `--pid` file in a private directory under `/tmp` (Debian's AppArmor profile lets pasta
//! write only under `/tmp` and `$HOME`), removed at once. Its output goes to `pasta.log` in the
//! state directory through a descriptor the wrapper opened.
//!
//! Knowing it again uses [`slirp::Expect`] as for slirp4netns: the binary (or the `.avx2` build
//! pasta re-executes itself as), the user, and a command line naming this netns.
//!
//! pasta has no API to add a port at run time, and its own inbound forwarding is broken in ways
//! that matter for published ports (issue 20), so it is started with every automatic forward
//! off (`-t none -u none -T none -U none`), and the wrapper's port forwarder carries published
//! ports of both families instead.

use super::config::SlirpNet;
use super::slirp::{self, Expect, HelperPaths};
use super::state::{HelperId, NetParams};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long pasta may take to configure the tap and go to the background (about 40 ms here).
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// The IPv6 address of the tap, as slirp4netns' SLAAC address would be in `fd00::/64`.
pub const ADDRESS6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100);
/// The longest pid file read.
const MAX_PID_FILE: u64 = 64;

/// The command line for one start.
pub fn helper_args(params: &NetParams, net: &SlirpNet, netns: &Path, pid_file: &Path) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--config-net".into(),
        "--quiet".into(),
        "-I".into(),
        slirp::TAP.into(),
        "-a".into(),
        net.guest.to_string(),
        "-n".into(),
        net.cidr.prefix().to_string(),
        "-g".into(),
        net.gateway.to_string(),
        "--dns-forward".into(),
        net.dns.to_string(),
        "-m".into(),
        params.mtu.to_string(),
    ];
    if params.enable_ipv6 {
        args.extend(["-a".into(), ADDRESS6.to_string(), "-g".into(), super::host::GATEWAY6.to_string()]);
    } else {
        args.push("--ipv4-only".into());
    }
    if !params.allow_host_loopback {
        // Otherwise connections to the gateway address reach the host's loopback.
        args.push("--no-map-gw".into());
    }
    // No automatic forwards in either direction: published ports do not go through pasta.
    for flag in ["-t", "-u", "-T", "-U"] {
        args.extend([flag.to_string(), "none".to_string()]);
    }
    args.extend([
        "--pid".to_string(),
        pid_file.display().to_string(),
        "--netns".to_string(),
        netns.display().to_string(),
    ]);
    args
}

/// A private directory under `/tmp`, removed with its contents when dropped.
struct PrivateTmp(PathBuf);

impl PrivateTmp {
    fn new() -> Result<PrivateTmp, String> {
        // mkdtemp makes it 0700 and fails rather than reuse a name someone planted.
        nix::unistd::mkdtemp("/tmp/cni-rootless-pasta-XXXXXX")
            .map(PrivateTmp)
            .map_err(|e| format!("make a private directory under /tmp for pasta's pid file: {e}"))
    }
}

impl Drop for PrivateTmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Parses pasta's pid file.
pub fn parse_pid(text: &str) -> Option<i32> {
    text.trim().parse::<i32>().ok().filter(|p| *p > 0)
}

/// Starts pasta into `paths.netns` and waits until it has configured the tap and gone to the
/// background. On failure nothing of it is left running and its log is part of the error.
pub fn start(
    binary: &Path,
    params: &NetParams,
    net: &SlirpNet,
    paths: &HelperPaths,
    expect: &Expect,
) -> Result<HelperId, String> {
    use std::os::unix::process::CommandExt;
    let tmp = PrivateTmp::new()?;
    let pid_file = tmp.0.join("pasta.pid");
    let log =
        super::trust::create_fresh(&paths.log, 0o600).map_err(|e| format!("create {}: {e}", paths.log.display()))?;
    let log_err = log.try_clone().map_err(|e| format!("dup {}: {e}", paths.log.display()))?;
    let args = helper_args(params, net, &paths.netns, &pid_file);
    log::debug!("starting {} {}", binary.display(), args.join(" "));
    // As for slirp4netns: copies of container netns mounts in its mount namespace would keep
    // those namespaces alive for as long as it runs.
    let detach = slirp::nsfs_copies_to_drop(&paths.netns);
    let mut cmd = Command::new(binary);
    cmd.args(&args).current_dir("/").stdin(Stdio::null()).stdout(log).stderr(log_err);
    // SAFETY: runs in the forked child before exec and only makes async-signal-safe syscalls
    // (setsid, unshare, umount2) on memory allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            // Its own session: signals aimed at the runtime's process group must not reach it.
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(std::io::Error::from)?;
            for path in &detach {
                // Mounts inherited from a more privileged namespace are locked and stay.
                nix::libc::umount2(path.as_ptr(), nix::libc::MNT_DETACH);
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| format!("start {}: {e}", binary.display()))?;
    let deadline = Instant::now() + READY_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                // It may have forked already: whatever serves our netns goes too.
                stop_strays(expect);
                return Err(format!(
                    "pasta was not ready within {READY_TIMEOUT:?}; pasta log: {}",
                    slirp::read_log(&paths.log)
                ));
            }
            Err(e) => return Err(format!("wait for pasta: {e}")),
        }
    };
    if !status.success() {
        stop_strays(expect);
        return Err(format!("pasta failed ({status}); pasta log: {}", slirp::read_log(&paths.log)));
    }
    let text = crate::fsutil::read_bounded(&pid_file, crate::fsutil::Links::Refuse, MAX_PID_FILE)
        .map_err(|e| format!("pasta wrote no pid file {}: {e}", pid_file.display()));
    let pid = text.and_then(|t| {
        parse_pid(&String::from_utf8_lossy(&t))
            .ok_or_else(|| format!("pasta's pid file {} is garbled", pid_file.display()))
    });
    let identified = pid.and_then(|pid| {
        let stat = slirp::proc_stat(pid).ok_or_else(|| format!("pasta (pid {pid}) exited right after its start"))?;
        if !expect.matches(pid) {
            return Err(format!("pid {pid} from pasta's pid file is not the pasta serving {}", paths.netns.display()));
        }
        Ok(HelperId {
            pid,
            start_time: stat.start_time,
            comm: stat.comm,
            binary: binary.to_path_buf(),
            api_socket: PathBuf::new(),
        })
    });
    identified.map_err(|e| {
        stop_strays(expect);
        format!("{e}; pasta log: {}", slirp::read_log(&paths.log))
    })
}

/// Stops every pasta verifiably serving this netns (after a failed start).
fn stop_strays(expect: &Expect) {
    for stray in super::host::helpers_serving(expect) {
        let _ = slirp::stop(&stray, expect);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rootless::config::HelperKind;

    fn strs(v: &[String]) -> Vec<&[u8]> {
        v.iter().map(|a| a.as_bytes()).collect()
    }

    #[test]
    fn arguments_follow_the_parameters() {
        let net = SlirpNet::derive("10.0.2.0/24").unwrap();
        let params = NetParams { cidr: "10.0.2.0/24".into(), mtu: 65520, ..Default::default() };
        let args = helper_args(&params, &net, Path::new("/s/netns"), Path::new("/tmp/x/pasta.pid"));
        assert_eq!(
            args.join(" "),
            "--config-net --quiet -I tap0 -a 10.0.2.100 -n 24 -g 10.0.2.2 --dns-forward 10.0.2.3 -m 65520 \
             --ipv4-only --no-map-gw -t none -u none -T none -U none --pid /tmp/x/pasta.pid --netns /s/netns"
        );
        let net = SlirpNet::derive("10.99.0.0/16").unwrap();
        let open = NetParams { mtu: 1500, enable_ipv6: true, allow_host_loopback: true, ..params };
        let args = helper_args(&open, &net, Path::new("/s/netns"), Path::new("/p"));
        let line = args.join(" ");
        assert!(line.contains("-a 10.99.0.100 -n 16 -g 10.99.0.2 --dns-forward 10.99.0.3 -m 1500"), "{line}");
        assert!(line.contains("-a fd00::100 -g fd00::2"), "{line}");
        assert!(!line.contains("--ipv4-only") && !line.contains("--no-map-gw"), "{line}");

        // The identity check recognises exactly this netns.
        let expect = Expect::new(HelperKind::Pasta, None, Path::new("/s/netns"), Path::new(""));
        assert!(expect.matches_args(&strs(&args)));
        let other = helper_args(&open, &net, Path::new("/s/netns2"), Path::new("/p"));
        assert!(!expect.matches_args(&strs(&other)));
        let slirp = Expect { kind: HelperKind::Slirp4netns, ..expect.clone() };
        assert!(!slirp.matches_args(&strs(&args)), "a pasta is not a slirp4netns");
        assert!(!expect.matches_args(&[b"sleep".as_slice(), b"--netns", b"/s/netns"]), "needs --config-net");
    }

    #[test]
    fn pid_files() {
        assert_eq!(parse_pid("4242\n"), Some(4242));
        assert_eq!(parse_pid(" 7 "), Some(7));
        assert_eq!(parse_pid("0"), None);
        assert_eq!(parse_pid("-1"), None);
        assert_eq!(parse_pid("x"), None);
        assert_eq!(parse_pid(""), None);
    }

    #[test]
    fn the_private_directory_goes_with_its_guard() {
        let t = PrivateTmp::new().unwrap();
        let dir = t.0.clone();
        std::fs::write(dir.join("pasta.pid"), b"1").unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        drop(t);
        assert!(!dir.exists());
    }
}
