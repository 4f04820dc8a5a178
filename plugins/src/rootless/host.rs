//! Host-side work, done in the runtime's namespaces before the wrapper enters the shared netns:
//! privilege and device checks, the bind-mounted netns file, host port checks, and removal of
//! everything under the state directory.

use super::mounts::mounts_within;
use super::slirp::Expect;
use super::state::{Forward, HelperId};
use crate::errors::Collector;
use cni_types::PortMapping;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use std::fs::File;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// The start of the error for a process without the rights a user namespace gives.
pub const NEED_USERNS: &str = "rootless-wrapper must run inside the runtime's user namespace";
/// The device slirp4netns opens for its tap.
pub const TUN: &str = "/dev/net/tun";
const CAP_NET_ADMIN: u32 = 12;
/// How long work in a forked child (creating a netns, a sysctl) may take.
const CHILD_TIMEOUT: Duration = Duration::from_secs(10);
const CAP_SYS_ADMIN: u32 = 21;

/// `CapEff` from `/proc/self/status` text.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

/// Names the capabilities among CAP_SYS_ADMIN and CAP_NET_ADMIN that `cap_eff` lacks.
pub fn missing_caps(cap_eff: u64) -> Vec<&'static str> {
    [(CAP_SYS_ADMIN, "CAP_SYS_ADMIN"), (CAP_NET_ADMIN, "CAP_NET_ADMIN")]
        .into_iter()
        .filter(|(bit, _)| cap_eff & (1u64 << bit) == 0)
        .map(|(_, name)| name)
        .collect()
}

/// Inode of this process's user namespace.
pub fn userns_inode() -> Result<u64, String> {
    std::fs::metadata("/proc/thread-self/ns/user")
        .map(|m| m.ino())
        .map_err(|e| format!("stat /proc/thread-self/ns/user: {e}"))
}

/// Whether the current mount namespace belongs to the current user namespace; mounting (the
/// netns file, the private `/run`) needs that. A runtime that entered only the user namespace
/// of its pause process, not its mount namespace, fails here.
fn mount_ns_is_ours() -> Result<bool, String> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let mnt = File::open("/proc/thread-self/ns/mnt").map_err(|e| format!("open /proc/thread-self/ns/mnt: {e}"))?;
    // SAFETY: NS_GET_USERNS on an open nsfs descriptor takes no argument and returns a new
    // descriptor or -1; the returned descriptor is owned exactly once below.
    let fd = unsafe { nix::libc::ioctl(mnt.as_raw_fd(), nix::libc::NS_GET_USERNS) };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        return match err.raw_os_error() {
            // The owner is an ancestor of our user namespace.
            Some(nix::libc::EPERM) => Ok(false),
            // Kernels before 4.9 cannot tell; let the mount itself decide.
            Some(nix::libc::ENOTTY) | Some(nix::libc::EINVAL) => Ok(true),
            _ => Err(format!("NS_GET_USERNS on the mount namespace: {err}")),
        };
    }
    // SAFETY: `fd` is a fresh descriptor returned by the kernel and owned by nobody else.
    let owner = unsafe { OwnedFd::from_raw_fd(fd) };
    let owner_ino = File::from(owner).metadata().map(|m| m.ino()).map_err(|e| format!("stat owner userns: {e}"))?;
    Ok(owner_ino == userns_inode()?)
}

/// Checks, before anything is changed, that this process can create and mount namespaces:
/// CAP_SYS_ADMIN and CAP_NET_ADMIN, in a mount namespace its user namespace owns.
pub fn check_privileges() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| format!("read /proc/self/status: {e}"))?;
    let caps = parse_cap_eff(&status).ok_or("no CapEff line in /proc/self/status")?;
    let missing = missing_caps(caps);
    if !missing.is_empty() {
        return Err(format!(
            "{NEED_USERNS} (this process lacks {}; a rootless runtime runs CNI plugins after joining its pause \
             process's user and mount namespaces, e.g. nsenter -U -m -t <pause-pid>)",
            missing.join(" and ")
        ));
    }
    if !mount_ns_is_ours()? {
        return Err(format!(
            "{NEED_USERNS} and its mount namespace (this mount namespace belongs to another user namespace, so \
             the netns file and the private /run cannot be mounted; join both, e.g. nsenter -U -m -t <pause-pid>)"
        ));
    }
    Ok(())
}

/// Whether slirp4netns can open the tun device; its own message is only "child failed(1)".
pub fn check_tun() -> Result<(), String> {
    use nix::unistd::{access, AccessFlags};
    access(TUN, AccessFlags::R_OK | AccessFlags::W_OK).map_err(|e| {
        format!(
            "no read/write access to {TUN} ({e}); slirp4netns needs it: make it mode 0666 (Debian's default) \
             and load the tun module"
        )
    })
}

/// Runs `work` in a forked child and returns what it returned.
///
/// A thread that leaves the host's network namespace can never come back: that namespace
/// belongs to the initial user namespace, where the wrapper has no rights, so `setns` back
/// fails with EPERM. Work that must happen in another netns while the wrapper still has
/// host-side work to do therefore runs in a child. The wrapper is single-threaded, so the child
/// may run ordinary code; it leaves only through `_exit`, never flushing the parent's buffers.
pub fn in_child(work: impl FnOnce() -> Result<Vec<u8>, String>) -> Result<Vec<u8>, String> {
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let (mut parent_end, mut child_end) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    // SAFETY: the process is single-threaded (the wrapper never starts threads), so the child
    // owns a consistent copy of all memory and locks.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop(parent_end);
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
                .unwrap_or_else(|_| Err("the child panicked".to_string()));
            let message = match outcome {
                Ok(payload) => [b"ok:".as_slice(), &payload].concat(),
                Err(e) => [b"err:".as_slice(), e.as_bytes()].concat(),
            };
            let _ = child_end.write_all(&message);
            // SAFETY: _exit ends the child at once without running the parent's exit handlers.
            unsafe { nix::libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            drop(child_end);
            let deadline = Instant::now() + CHILD_TIMEOUT;
            let mut message = Vec::new();
            let mut buf = [0u8; 4096];
            let read = loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                    break Err(format!("child {child} did not finish within {CHILD_TIMEOUT:?}"));
                }
                let _ = parent_end.set_read_timeout(Some(left));
                match parent_end.read(&mut buf) {
                    Ok(0) => break Ok(()),
                    Ok(n) => message.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                    Err(e) => {
                        let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                        break Err(format!("read from child {child}: {e}"));
                    }
                }
            };
            // It closed its end (it is in _exit) or was killed: the wait is short.
            let status = waitpid(child, None).map_err(|e| format!("wait for child {child}: {e}"))?;
            read?;
            if let Some(payload) = message.strip_prefix(b"ok:") {
                return Ok(payload.to_vec());
            }
            if let Some(err) = message.strip_prefix(b"err:") {
                return Err(String::from_utf8_lossy(err).into_owned());
            }
            Err(match status {
                WaitStatus::Exited(_, code) => format!("child {child} exited with {code} without reporting"),
                other => format!("child {child} ended without reporting: {other:?}"),
            })
        }
    }
}

/// Creates a network namespace and bind-mounts it on `path` (created if needed). A forked child
/// makes the namespace and the mount (both land in the shared mount namespace); this process
/// stays in its netns.
pub fn create_netns(path: &Path) -> Result<(), String> {
    // A leftover mount from an interrupted run would be mounted over, not replaced.
    let _ = umount2(path, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW);
    super::trust::create_fresh(path, 0o600).map_err(|e| format!("create netns mount point {}: {e}", path.display()))?;
    let made = in_child(|| {
        unshare(CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("{NEED_USERNS} (creating a network namespace failed: {e})"))?;
        mount(Some("/proc/thread-self/ns/net"), path, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(
            |e| match e {
                nix::errno::Errno::EPERM => {
                    format!("{NEED_USERNS} and its mount namespace (bind-mounting {} failed: {e})", path.display())
                }
                _ => format!("bind-mount the new netns on {}: {e}", path.display()),
            },
        )?;
        Ok(Vec::new())
    });
    if made.is_err() {
        let _ = std::fs::remove_file(path);
    }
    made.map(drop)
}

/// Makes `alias` a second mount of the netns mounted on `netns` (nothing to do when it already
/// is one), for a helper that may open namespaces only under a fixed directory (Debian's
/// AppArmor profile for pasta: `/run/user/<uid>/netns/*`).
pub fn alias_netns(netns: &Path, alias: &Path) -> Result<(), String> {
    let id = |p: &Path| std::fs::metadata(p).map(|m| (m.dev(), m.ino()));
    let want = id(netns).map_err(|e| format!("stat {}: {e}", netns.display()))?;
    let is_file = std::fs::symlink_metadata(alias).is_ok_and(|m| m.file_type().is_file());
    if is_file && id(alias).is_ok_and(|got| got == want) {
        return Ok(());
    }
    remove_netns(alias)?;
    super::trust::create_fresh(alias, 0o600).map_err(|e| format!("create {}: {e}", alias.display()))?;
    mount(Some(netns), alias, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(|e| {
        let _ = std::fs::remove_file(alias);
        format!("bind-mount {} on {}: {e}", netns.display(), alias.display())
    })
}

/// Reads a sysctl inside `netns` and sets it to `value`, returning the old value; runs in a
/// child since this process cannot come back from another netns.
pub fn swap_sysctl_in(netns: &Path, key: &str, value: &str) -> Result<String, String> {
    let ns = File::open(netns).map_err(|e| format!("open {}: {e}", netns.display()))?;
    let old = in_child(|| {
        setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| format!("enter {}: {e}", netns.display()))?;
        let old = crate::sysctl::read(key).map_err(|e| e.to_string())?;
        crate::sysctl::write(key, value).map_err(|e| e.to_string())?;
        Ok(old.into_bytes())
    })?;
    Ok(String::from_utf8_lossy(&old).into_owned())
}

/// slirp4netns' IPv6 gateway: its prefix is fixed at `fd00::/64` and the host side is `::2`.
pub const GATEWAY6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);

/// What a new tap must start with for the static IPv6 uplink: router advertisements still
/// renew its SLAAC address once the inner bridge turns forwarding on (`accept_ra=2`), and
/// never install a default route of their own (`accept_ra_defrtr=0`), which the kernel would
/// purge at that moment anyway and which would clash with [`ipv6_uplink_in`]'s.
pub const TAP_RA_SYSCTLS: [(&str, &str); 2] =
    [("net/ipv6/conf/default/accept_ra", "2"), ("net/ipv6/conf/default/accept_ra_defrtr", "0")];

/// Adds `default via <gateway> dev <tap>` inside `netns`: without it the shared netns has no
/// IPv6 path out, since the inner bridge turns forwarding on and the kernel then ignores (and
/// purges) the route slirp4netns' router advertisement would give. A route already there is
/// fine. Runs in a child since this process cannot come back from another netns.
pub fn ipv6_uplink_in(netns: &Path, tap: &str, gateway: std::net::Ipv6Addr) -> Result<(), String> {
    use crate::netlink::{Handle, RouteSpec};
    let ns = File::open(netns).map_err(|e| format!("open {}: {e}", netns.display()))?;
    in_child(|| {
        setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| format!("enter {}: {e}", netns.display()))?;
        let mut nl = Handle::new().map_err(|e| format!("netlink: {e}"))?;
        let link = nl.link_by_name(tap).map_err(|e| format!("look up {tap}: {e}"))?;
        let link = link.ok_or_else(|| format!("{tap} does not exist in {}", netns.display()))?;
        let route = RouteSpec {
            dst: ipnetwork::IpNetwork::V6(
                ipnetwork::Ipv6Network::new(std::net::Ipv6Addr::UNSPECIFIED, 0).map_err(|e| e.to_string())?,
            ),
            gw: Some(gateway.into()),
            oif: Some(link.index),
            priority: None,
            table: None,
            scope: None,
            mtu: None,
            advmss: None,
        };
        // On the link by definition: the prefix route only comes with the router advertisement.
        match nl.add_route_flagged(&route, netlink_packet_route::route::RouteFlags::Onlink) {
            Ok(()) => Ok(Vec::new()),
            Err(e) if e.raw_os_error() == Some(nix::libc::EEXIST) => Ok(Vec::new()),
            Err(e) => Err(format!("add the IPv6 default route via {gateway} dev {tap}: {e}")),
        }
    })
    .map(drop)
}

/// Unmounts (lazily: a helper may still hold it) and removes a netns file; gone is fine.
pub fn remove_netns(path: &Path) -> Result<(), String> {
    match umount2(path, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(format!("unmount {}: {e}", path.display())),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("remove {}: {e}", path.display())),
    }
}

/// Removes what the wrapper made in `dir` (the `entries` of its layout) after detaching any
/// mount below `dir`, then `dir` itself if that left it empty: whatever else is in it was not
/// made by the wrapper and stays. Refuses when a mount remains, since deleting through a mount
/// would delete someone else's files.
pub fn remove_state_dir(dir: &Path, entries: &[&str]) -> Result<(), String> {
    let mountinfo = || std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("read mountinfo: {e}"));
    for m in mounts_within(&mountinfo()?, dir) {
        if let Err(e) = umount2(&m, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
            log::warn!("detach {}: {e}", m.display());
        }
    }
    let left = mounts_within(&mountinfo()?, dir);
    if !left.is_empty() {
        let list: Vec<String> = left.iter().map(|p| p.display().to_string()).collect();
        return Err(format!("not removing {}: still mounted: {}", dir.display(), list.join(", ")));
    }
    let mut errors = Collector::new();
    for name in entries {
        let path = dir.join(name);
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        // remove_dir_all removes links, never what they point to.
        let gone = if meta.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        match gone {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(format!("remove {}: {e}", path.display())),
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => {
            log::warn!("{} keeps files the wrapper did not make; leaving it", dir.display());
        }
        Err(e) => errors.push(format!("remove {}: {e}", dir.display())),
    }
    errors.finish()
}

/// The helpers serving one state directory that no state records (started by a run that
/// crashed before saving, or by an earlier user namespace whose state was reset): only
/// processes that pass every check of [`Expect`], never merely any process of the user whose
/// arguments mention the netns path.
pub fn helpers_serving(expect: &Expect) -> Vec<HelperId> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Some(stat) = super::slirp::proc_stat(pid) else { continue };
        if super::slirp::comm_names(expect.kind).contains(&stat.comm.as_str()) && expect.matches(pid) {
            found.push(HelperId { pid, start_time: stat.start_time, comm: stat.comm, ..Default::default() });
        }
    }
    found
}

/// The first port unprivileged users may bind in this netns.
pub fn unprivileged_port_start() -> u16 {
    crate::sysctl::read("net.ipv4.ip_unprivileged_port_start").ok().and_then(|v| v.parse().ok()).unwrap_or(1024)
}

/// The forwards a list of port mappings asks for; refuses what cannot be forwarded. IPv6 host
/// addresses go through the forwarder and only with `enable_ipv6` (an empty `hostIP` means
/// both families then, IPv4 alone otherwise); IPv4 ones through the forwarder when
/// `carry_ipv4`, else through the helper's own forwarding.
pub fn forwards_for(mappings: &[PortMapping], enable_ipv6: bool, carry_ipv4: bool) -> Result<Vec<Forward>, String> {
    let mut out: Vec<(Forward, i64)> = Vec::new();
    for m in mappings {
        let proto = if m.protocol.is_empty() { "tcp".to_string() } else { m.protocol.to_ascii_lowercase() };
        if proto != "tcp" && proto != "udp" {
            return Err(format!("host port {}/{proto}: only tcp and udp ports can be published", m.host_port));
        }
        let port = u16::try_from(m.host_port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("invalid hostPort {} (1..65535)", m.host_port))?;
        let container_port = u16::try_from(m.container_port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("host port {port}/{proto}: invalid containerPort {}", m.container_port))?;
        let any4 = Ipv4Addr::UNSPECIFIED.to_string();
        let any6 = std::net::Ipv6Addr::UNSPECIFIED.to_string();
        let addrs: Vec<String> = match m.host_ip.as_str() {
            "" if enable_ipv6 => vec![any4, any6],
            "" => vec![any4],
            ip => match ip.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(v4)) => vec![v4.to_string()],
                Ok(std::net::IpAddr::V6(_)) if !enable_ipv6 => {
                    return Err(format!(
                        "host port {port}/{proto}: hostIP {ip} is IPv6, which needs \"enableIPv6\": true in the \
                         rootless-wrapper configuration"
                    ))
                }
                Ok(std::net::IpAddr::V6(v6)) => vec![v6.to_string()],
                Err(_) => return Err(format!("host port {port}/{proto}: invalid hostIP {ip:?}")),
            },
        };
        for host_addr in addrs {
            let forwarder = carry_ipv4 || host_addr.contains(':');
            let fwd = Forward {
                id: None,
                proto: proto.clone(),
                host_addr,
                host_port: port,
                guest_port: port,
                container_port,
                forwarder,
            };
            let mut duplicate = false;
            for (f, cport) in out.iter().filter(|(f, _)| f.proto == fwd.proto && f.host_port == fwd.host_port) {
                if *cport != m.container_port {
                    // Inside the rootless netns the host address is gone, so one port can lead to
                    // only one container port.
                    return Err(format!(
                        "host port {port}/{} is mapped to two container ports; inside the rootless netns one host \
                         port can lead to only one container port",
                        fwd.proto
                    ));
                }
                if f.host_addr == fwd.host_addr {
                    duplicate = true;
                } else if clashes(f, &fwd) {
                    return Err(format!(
                        "host port {port}/{} is mapped on {} and on {}, which overlap",
                        fwd.proto, f.host_addr, fwd.host_addr
                    ));
                }
            }
            if !duplicate {
                out.push((fwd, m.container_port));
            }
        }
    }
    Ok(out.into_iter().map(|(f, _)| f).collect())
}

/// Whether two forwards would bind the same host socket (IPv6 sockets are IPv6-only).
pub fn clashes(a: &Forward, b: &Forward) -> bool {
    let parse = |f: &Forward| f.host_addr.parse::<std::net::IpAddr>().ok();
    let (Some(x), Some(y)) = (parse(a), parse(b)) else { return a.host_addr == b.host_addr };
    a.proto == b.proto
        && a.host_port == b.host_port
        && x.is_ipv4() == y.is_ipv4()
        && (x == y || x.is_unspecified() || y.is_unspecified())
}

/// Tries to bind the host socket a forward needs, so that a port the user may not bind or that
/// is taken fails with a message naming it (slirp4netns only says "slirp_add_hostfwd failed").
pub fn probe_host_port(fwd: &Forward) -> Result<(), String> {
    let addr: Ipv4Addr = fwd.host_addr.parse().map_err(|_| format!("invalid host address {:?}", fwd.host_addr))?;
    let bound = if fwd.proto == "udp" {
        UdpSocket::bind((addr, fwd.host_port)).map(drop)
    } else {
        TcpListener::bind((addr, fwd.host_port)).map(drop)
    };
    bound.map_err(|e| super::forwarder::port_error(fwd, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm(host: i64, container: i64, proto: &str, ip: &str) -> PortMapping {
        PortMapping { host_port: host, container_port: container, protocol: proto.into(), host_ip: ip.into() }
    }

    #[test]
    fn capabilities() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(status), Some(0x1ff_ffff_ffff));
        assert!(missing_caps(0x1ff_ffff_ffff).is_empty());
        assert_eq!(missing_caps(0), vec!["CAP_SYS_ADMIN", "CAP_NET_ADMIN"]);
        assert_eq!(missing_caps(1 << 21), vec!["CAP_NET_ADMIN"]);
        assert_eq!(parse_cap_eff("Name: x\n"), None);
    }

    #[test]
    fn forwards_from_mappings() {
        let f = forwards_for(
            &[pm(8080, 80, "tcp", ""), pm(5353, 53, "UDP", "127.0.0.1"), pm(8080, 80, "", "")],
            false,
            false,
        )
        .unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(
            (f[0].proto.as_str(), f[0].host_addr.as_str(), f[0].host_port, f[0].guest_port),
            ("tcp", "0.0.0.0", 8080, 8080)
        );
        assert_eq!((f[1].proto.as_str(), f[1].host_addr.as_str()), ("udp", "127.0.0.1"));
        assert!(forwards_for(&[pm(80, 80, "sctp", "")], false, false).unwrap_err().contains("only tcp and udp"));
        assert!(forwards_for(&[pm(0, 80, "tcp", "")], false, false).unwrap_err().contains("invalid hostPort 0"));
        assert!(forwards_for(&[pm(70000, 80, "tcp", "")], false, false).is_err());
        assert!(forwards_for(&[pm(80, 80, "tcp", "::1")], false, false).unwrap_err().contains("IPv6"));
        assert!(forwards_for(&[pm(80, 80, "tcp", "x")], false, false).unwrap_err().contains("invalid hostIP"));
        let e = forwards_for(&[pm(8080, 80, "tcp", ""), pm(8080, 81, "tcp", "")], false, false).unwrap_err();
        assert!(e.contains("two container ports"), "{e}");
        let e = forwards_for(&[pm(8080, 80, "tcp", "127.0.0.1"), pm(8080, 80, "tcp", "")], false, false).unwrap_err();
        assert!(e.contains("overlap"), "{e}");
        let two =
            forwards_for(&[pm(8080, 80, "tcp", "127.0.0.1"), pm(8080, 80, "tcp", "127.0.0.2")], false, false).unwrap();
        assert_eq!(two.len(), 2, "one port on two host addresses, same container port");
        assert_eq!(forwards_for(&[pm(8080, 80, "tcp", ""), pm(8080, 80, "udp", "")], false, false).unwrap().len(), 2);
        // With IPv6: "" is both families, the IPv6 side carried by the forwarder to the container port.
        let both = forwards_for(&[pm(8080, 80, "tcp", ""), pm(8081, 81, "udp", "2001:db8::1")], true, false).unwrap();
        let got: Vec<(&str, bool, u16)> =
            both.iter().map(|f| (f.host_addr.as_str(), f.forwarder, f.container_port)).collect();
        assert_eq!(got, [("0.0.0.0", false, 80), ("::", true, 80), ("2001:db8::1", true, 81)]);
        assert_eq!(forwards_for(&[pm(8080, 80, "tcp", "::")], true, false).unwrap().len(), 1);
        let all = forwards_for(&[pm(8080, 80, "tcp", ""), pm(8081, 81, "udp", "127.0.0.1")], true, true).unwrap();
        assert!(all.iter().all(|f| f.forwarder), "{all:?}");
        assert_eq!(all.len(), 3);
        assert_eq!(forwards_for(&[pm(8080, 80, "tcp", "0.0.0.0")], true, false).unwrap()[0].host_addr, "0.0.0.0");
        let e = forwards_for(&[pm(8080, 80, "tcp", "::1"), pm(8080, 80, "tcp", "")], true, false).unwrap_err();
        assert!(e.contains("overlap"), "{e}");
    }

    #[test]
    fn clash_rules() {
        let f = |addr: &str, port, proto: &str| Forward {
            id: None,
            proto: proto.into(),
            host_addr: addr.into(),
            host_port: port,
            guest_port: port,
            ..Default::default()
        };
        assert!(clashes(&f("0.0.0.0", 1, "tcp"), &f("127.0.0.1", 1, "tcp")));
        assert!(clashes(&f("127.0.0.1", 1, "tcp"), &f("127.0.0.1", 1, "tcp")));
        assert!(!clashes(&f("127.0.0.1", 1, "tcp"), &f("127.0.0.2", 1, "tcp")));
        assert!(!clashes(&f("0.0.0.0", 1, "tcp"), &f("0.0.0.0", 1, "udp")));
        assert!(!clashes(&f("0.0.0.0", 1, "tcp"), &f("0.0.0.0", 2, "tcp")));
        // IPv6 sockets are IPv6-only: "::" and "0.0.0.0" live side by side.
        assert!(!clashes(&f("0.0.0.0", 1, "tcp"), &f("::", 1, "tcp")));
        assert!(clashes(&f("::", 1, "tcp"), &f("2001:db8::1", 1, "tcp")));
        assert!(!clashes(&f("::1", 1, "tcp"), &f("2001:db8::1", 1, "tcp")));
    }

    #[test]
    fn port_probe_names_the_port() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let fwd = Forward {
            proto: "tcp".into(),
            host_addr: "127.0.0.1".into(),
            host_port: port,
            guest_port: port,
            ..Default::default()
        };
        let e = probe_host_port(&fwd).unwrap_err();
        assert!(e.contains(&format!("host port {port}/tcp")) && e.contains("already in use"), "{e}");
        drop(taken);
        assert!(probe_host_port(&fwd).is_ok());
        let bad = Forward { host_addr: "192.0.2.123".into(), ..fwd };
        assert!(probe_host_port(&bad).unwrap_err().contains("not an address of this host"));
    }
}
