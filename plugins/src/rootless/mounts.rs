//! The private mount namespace the inner plugins run in.
//!
//! Inside the runtime's user namespace, `/run` and `/var/lib/cni` belong to an unmapped root and
//! cannot be written, so host-local, iptables-legacy (`/run/xtables.lock`) and friends fail. The
//! wrapper therefore enters the shared netns, unshares a mount namespace (slave propagation, so
//! nothing leaks back to the runtime's), and mounts, in this order:
//!
//! 1. `$XDG_RUNTIME_DIR` → `<state>$XDG_RUNTIME_DIR` (and a container netns living elsewhere
//!    under `/run` → `<state>/run/...`), so both stay reachable once `/run` is replaced;
//! 2. `/run/systemd` → `<state>/run/systemd` (sockets such as `/dev/log` point into it);
//! 3. `<state>/resolv.conf` over the first path under `/run` that `/etc/resolv.conf` leads to
//!    (over `/etc/resolv.conf` itself when it leads nowhere under `/run`), on a tmpfs when that
//!    path is in `/run/systemd/resolve` where systemd-resolved replaces files;
//! 4. `<state>/var/lib/cni` → `/var/lib/cni` (or `<state>` + its first existing ancestor);
//! 5. `<state>/run` → `/run`.

use nix::mount::{mount, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use std::fs::File;
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};

/// Symlinks followed at most while resolving `/etc/resolv.conf`.
const MAX_LINKS: usize = 255;
/// The persistent CNI directory inner plugins expect to write.
pub const VAR_LIB_CNI: &str = "/var/lib/cni";
/// What is left of `PATH` for the inner plugins must contain these (Debian users lack them).
const SBIN_DIRS: [&str; 2] = ["/usr/sbin", "/sbin"];

/// Whether `path` lies strictly below `dir` (component-wise, so `/running` is not under `/run`).
pub fn is_under(path: &Path, dir: &Path) -> bool {
    path != dir && path.starts_with(dir)
}

/// `base` + the absolute `path`: where `path` lives inside the state directory.
pub fn rebase(base: &Path, path: &Path) -> PathBuf {
    let rel: PathBuf = path.components().filter(|c| !matches!(c, Component::RootDir)).collect();
    base.join(rel)
}

/// Joins and cleans an absolute path lexically (`.` dropped, `..` pops, never above `/`).
fn clean(parts: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in parts {
        match p.as_str() {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            _ => out.push(p),
        }
    }
    out
}

fn split(path: &str) -> Vec<String> {
    path.split('/').map(str::to_string).collect()
}

fn join(parts: &[String]) -> String {
    format!("/{}", parts.join("/"))
}

/// Follows `start` (an absolute path) through symlinks in every component, as seen under
/// `root`, and stops at the first path that lands under `/run/`.
///
/// The bind mount for resolv.conf must target a path that still exists once `/run` is replaced:
/// the kernel follows symlinks before mounting, so binding over `/etc/resolv.conf` when it links
/// into `/run` would land on a file that vanishes (podman #10855). Going on past the first
/// `/run/` hit would reach a second link's target that the new `/run` does not have (#11222).
/// Absolute targets replace the path, relative ones join the link's directory (#11358), and
/// directory components are links too (`/etc -> /usr/etc`, #12461). Since the walk restarts
/// after every link and the components before a link are then known not to be links, `..`
/// in a relative target can be resolved lexically.
pub fn resolve_first_run_path(root: &Path, start: &str) -> Result<String, String> {
    let mut parts = clean(split(start));
    let mut links = 0;
    let mut i = 0;
    while i < parts.len() {
        let prefix = join(&parts[..=i]);
        let meta =
            std::fs::symlink_metadata(rebase(root, Path::new(&prefix))).map_err(|e| format!("stat {prefix}: {e}"))?;
        if !meta.file_type().is_symlink() {
            i += 1;
            continue;
        }
        links += 1;
        if links > MAX_LINKS {
            return Err(format!("too many levels of symbolic links resolving {start}"));
        }
        let target = std::fs::read_link(rebase(root, Path::new(&prefix)))
            .map_err(|e| format!("read link {prefix}: {e}"))?
            .to_string_lossy()
            .into_owned();
        let rest = parts[i + 1..].to_vec();
        let base = if target.starts_with('/') { Vec::new() } else { parts[..i].to_vec() };
        parts = clean(base.into_iter().chain(split(&target)).chain(rest));
        let now = join(&parts);
        if now.starts_with("/run/") {
            return Ok(now);
        }
        i = 0;
    }
    Ok(join(&parts))
}

/// The resolv.conf for the inner plugins: slirp4netns' DNS first, then the host's name servers
/// that make sense from the rootless netns (no loopback ones: 127.0.0.53 is not reachable from
/// there; no IPv6 ones unless IPv6 is on), then the host's search and options lines.
pub fn build_resolv_conf(host: &str, slirp_dns: IpAddr, ipv6: bool) -> String {
    let mut out = format!("nameserver {slirp_dns}\n");
    let mut search = None;
    let mut options = Vec::new();
    for line in host.lines() {
        let line = line.trim();
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                let Some(server) = words.next() else { continue };
                // A zone index (fe80::1%eth0) is not part of the address.
                let ip = server.split('%').next().and_then(|s| s.parse::<IpAddr>().ok());
                let keep = match ip {
                    Some(ip) if ip.is_loopback() => false,
                    Some(IpAddr::V6(_)) => ipv6,
                    Some(IpAddr::V4(v4)) => v4 != std::net::Ipv4Addr::UNSPECIFIED,
                    None => false,
                };
                if keep && server != slirp_dns.to_string() {
                    out.push_str(&format!("nameserver {server}\n"));
                }
            }
            // The last search or domain line wins, as in the resolver.
            Some("search") | Some("domain") => search = Some(words.collect::<Vec<_>>().join(" ")),
            Some("options") => options.push(words.collect::<Vec<_>>().join(" ")),
            _ => {}
        }
    }
    if let Some(s) = search.filter(|s| !s.is_empty()) {
        out.push_str(&format!("search {s}\n"));
    }
    for o in options.into_iter().filter(|o| !o.is_empty()) {
        out.push_str(&format!("options {o}\n"));
    }
    out
}

/// The first of `/var/lib/cni` and its ancestors that exists under `root`; the walk ends at `/`
/// (an error: binding over `/` would hide everything), so it always terminates (podman #10857).
pub fn var_lib_cni_target(root: &Path) -> Result<PathBuf, String> {
    let mut target = PathBuf::from(VAR_LIB_CNI);
    loop {
        if rebase(root, &target).is_dir() {
            return Ok(target);
        }
        match target.parent() {
            Some(parent) if parent != Path::new("/") => target = parent.to_path_buf(),
            _ => return Err(format!("neither {VAR_LIB_CNI} nor any parent directory below / exists")),
        }
    }
}

/// One step of the mount setup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `mkdir -p`.
    Dir(PathBuf),
    /// Create an empty file (a mount point for a file bind).
    File(PathBuf),
    /// `mount --bind` (`--rbind` when recursive).
    Bind {
        /// Source.
        src: PathBuf,
        /// Mount point.
        dst: PathBuf,
        /// Include submounts.
        recursive: bool,
    },
    /// A fresh tmpfs.
    Tmpfs(PathBuf),
}

/// The facts the plan depends on, gathered on the host side.
#[derive(Debug, Clone, Default)]
pub struct PlanInput {
    /// The state directory.
    pub state_dir: PathBuf,
    /// `$XDG_RUNTIME_DIR`, if set and existing.
    pub xdg_runtime_dir: Option<PathBuf>,
    /// `CNI_NETNS`, if given and existing.
    pub container_netns: Option<PathBuf>,
    /// Whether `/run/systemd` exists.
    pub run_systemd: bool,
    /// Where resolv.conf gets bound (from [`resolve_first_run_path`]); `None` skips it.
    pub resolv_target: Option<PathBuf>,
    /// Where the persistent CNI directory gets bound (from [`var_lib_cni_target`]).
    pub var_target: PathBuf,
}

/// The mount steps, in the order the kernel needs them (see the module documentation).
pub fn plan(input: &PlanInput) -> Vec<Step> {
    let state = &input.state_dir;
    let run = Path::new("/run");
    let mut steps = Vec::new();
    let bind = |steps: &mut Vec<Step>, src: &Path, dst: PathBuf, recursive: bool| {
        steps.push(Step::Bind { src: src.to_path_buf(), dst, recursive });
    };
    // 1. Whatever lives under /run and must stay reachable.
    let xdg = input.xdg_runtime_dir.as_deref().filter(|x| is_under(x, run));
    if let Some(x) = xdg {
        steps.push(Step::Dir(rebase(state, x)));
        bind(&mut steps, x, rebase(state, x), true);
    }
    if let Some(ns) = input.container_netns.as_deref() {
        let covered = xdg.is_some_and(|x| is_under(ns, x));
        if is_under(ns, run) && !covered {
            let dst = rebase(state, ns);
            if let Some(parent) = dst.parent() {
                steps.push(Step::Dir(parent.to_path_buf()));
            }
            steps.push(Step::File(dst.clone()));
            bind(&mut steps, ns, dst, false);
        }
    }
    // 2.
    if input.run_systemd {
        let dst = rebase(state, Path::new("/run/systemd"));
        steps.push(Step::Dir(dst.clone()));
        bind(&mut steps, Path::new("/run/systemd"), dst, true);
    }
    // 3.
    if let Some(target) = input.resolv_target.as_deref() {
        let conf = state.join("resolv.conf");
        if is_under(target, run) {
            let resolve_dir = Path::new("/run/systemd/resolve");
            if is_under(target, resolve_dir) {
                // systemd-resolved unlinks and recreates its files; a bind on an unlinked file is
                // dropped, so isolate the directory (podman #10929).
                steps.push(Step::Dir(rebase(state, resolve_dir)));
                steps.push(Step::Tmpfs(rebase(state, resolve_dir)));
            }
            let dst = rebase(state, target);
            if let Some(parent) = dst.parent() {
                steps.push(Step::Dir(parent.to_path_buf()));
            }
            steps.push(Step::File(dst.clone()));
            bind(&mut steps, &conf, dst, false);
        } else {
            bind(&mut steps, &conf, target.to_path_buf(), false);
        }
    }
    // 4.
    steps.push(Step::Dir(rebase(state, Path::new(VAR_LIB_CNI))));
    bind(&mut steps, &rebase(state, &input.var_target), input.var_target.clone(), false);
    // 5.
    let state_run = state.join("run");
    steps.push(Step::Dir(state_run.clone()));
    bind(&mut steps, &state_run, run.to_path_buf(), true);
    steps
}

/// Files the plan creates as mount points that do not belong in the state directory once the
/// invocation is over (a container netns mount point per container would otherwise pile up).
pub fn transient_files(input: &PlanInput, steps: &[Step]) -> Vec<PathBuf> {
    let Some(ns) = input.container_netns.as_deref() else { return Vec::new() };
    let dst = rebase(&input.state_dir, ns);
    steps.iter().filter(|s| matches!(s, Step::File(p) if *p == dst)).map(|_| dst.clone()).collect()
}

fn errno_context(what: String) -> impl FnOnce(nix::errno::Errno) -> String {
    move |e| format!("{what}: {e}")
}

/// Performs one step.
pub fn apply(step: &Step) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    match step {
        Step::Dir(p) => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(p)
            .map_err(|e| format!("create directory {}: {e}", p.display())),
        Step::File(p) => std::fs::OpenOptions::new()
            .read(true)
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
            .open(p)
            .map(drop)
            .map_err(|e| format!("create mount point {}: {e}", p.display())),
        Step::Bind { src, dst, recursive } => {
            let mut flags = MsFlags::MS_BIND;
            if *recursive {
                flags |= MsFlags::MS_REC;
            }
            mount(Some(src.as_path()), dst.as_path(), None::<&str>, flags, None::<&str>)
                .map_err(errno_context(format!("bind mount {} on {}", src.display(), dst.display())))
        }
        Step::Tmpfs(p) => mount(
            Some("tmpfs"),
            p.as_path(),
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=0755"),
        )
        .map_err(errno_context(format!("mount tmpfs on {}", p.display()))),
    }
}

/// `PATH` for the inner plugins: the runtime's, plus `/usr/sbin` and `/sbin` if missing, since
/// Debian gives users no sbin and iptables lives there (podman commit f230214db1).
pub fn inner_path(current: &str) -> String {
    let mut dirs: Vec<&str> = current.split(':').filter(|d| !d.is_empty()).collect();
    for sbin in SBIN_DIRS {
        if !dirs.contains(&sbin) {
            dirs.push(sbin);
        }
    }
    dirs.join(":")
}

/// SELinux label iptables needs on the private `/run` (podman relabels it the same way).
const IPTABLES_RUN_LABEL: &str = "system_u:object_r:iptables_var_run_t:s0";

/// Labels `dir` for iptables when SELinux is on; filesystems without labels are no error.
pub fn relabel_run_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    if !Path::new("/sys/fs/selinux/enforce").exists() {
        return Ok(());
    }
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    let value = IPTABLES_RUN_LABEL.as_bytes();
    // SAFETY: both pointers come from live buffers of the given lengths for the call's duration.
    let rc = unsafe {
        nix::libc::lsetxattr(path.as_ptr(), c"security.selinux".as_ptr(), value.as_ptr().cast(), value.len(), 0)
    };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(nix::libc::ENOTSUP) => Ok(()),
        _ => Err(format!("label {} {IPTABLES_RUN_LABEL}: {err}", dir.display())),
    }
}

/// Inside the private mount namespace until dropped; dropping returns to the runtime's mount
/// namespace (allowed: the runtime's user namespace owns it). The network namespace is not
/// restored, because it cannot be: the host's belongs to the initial user namespace, where
/// `setns` needs rights the wrapper lacks. Whatever follows must not depend on the netns
/// (state files, unix-socket API calls, signals and unmounts do not).
pub struct Inside {
    mnt: File,
}

impl Drop for Inside {
    fn drop(&mut self) {
        // Continuing inside the private mount namespace would make the host-side cleanup act on
        // the wrong files; stopping is the only safe answer.
        if let Err(e) = setns(&self.mnt, CloneFlags::CLONE_NEWNS) {
            log::error!("cannot return to the original mount namespace: {e}; aborting");
            std::process::abort();
        }
    }
}

/// Enters `netns` for good (see [`Inside`]), or a fresh empty one of this user namespace when
/// there is none yet (STATUS: the inner plugins then see what they would see in the shared
/// netns, not a host netns they have no rights in), and a private mount namespace prepared by
/// `steps`. The process must be single-threaded: namespaces are per thread, and the inner
/// plugins, started afterwards as children, inherit both.
pub fn enter(netns: Option<&File>, steps: &[Step]) -> Result<Inside, String> {
    let mnt = File::open("/proc/thread-self/ns/mnt").map_err(|e| format!("open /proc/thread-self/ns/mnt: {e}"))?;
    match netns {
        Some(ns) => setns(ns, CloneFlags::CLONE_NEWNET).map_err(errno_context("enter the rootless netns".into()))?,
        None => unshare(CloneFlags::CLONE_NEWNET).map_err(errno_context("create a network namespace".into()))?,
    }
    unshare(CloneFlags::CLONE_NEWNS).map_err(errno_context("unshare the mount namespace".into()))?;
    // From here on every early return switches back.
    let inside = Inside { mnt };
    // Slave before any mount: nothing propagates back, host unmounts still propagate in
    // (private would keep host devices busy, podman #25994).
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_SLAVE | MsFlags::MS_REC, None::<&str>)
        .map_err(errno_context("make / a recursive slave".into()))?;
    for step in steps {
        apply(step)?;
    }
    Ok(inside)
}

/// Whether a mount point path from `/proc/self/mountinfo` is `dir` or below it.
fn mount_is_within(mount_point: &str, dir: &Path) -> bool {
    let p = Path::new(mount_point);
    p == dir || p.starts_with(dir)
}

/// Undoes mountinfo's octal escapes (`\040` for a space, …).
pub fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let v = (bytes[i + 1] - b'0') as u32 * 64 + (bytes[i + 2] - b'0') as u32 * 8 + (bytes[i + 3] - b'0') as u32;
            if let Ok(b) = u8::try_from(v) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount points in `mountinfo` text at or below `dir`, deepest first.
pub fn mounts_within(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(unescape_mountinfo)
        .filter(|m| mount_is_within(m, dir))
        .map(PathBuf::from)
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// The namespace-file mount points (fstype `nsfs`) in `mountinfo` text.
pub fn nsfs_mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter(|l| l.split(" - ").nth(1).and_then(|rest| rest.split_whitespace().next()) == Some("nsfs"))
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct Tree(PathBuf);
    impl Tree {
        fn new(tag: &str) -> Tree {
            let p = std::env::temp_dir().join(format!("rootless-walk-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Tree(p)
        }
        fn dir(&self, rel: &str) {
            std::fs::create_dir_all(self.0.join(rel)).unwrap();
        }
        fn file(&self, rel: &str) {
            let p = self.0.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "nameserver 192.0.2.1\n").unwrap();
        }
        fn link(&self, rel: &str, target: &str) {
            let p = self.0.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            symlink(target, p).unwrap();
        }
        fn walk(&self) -> Result<String, String> {
            resolve_first_run_path(&self.0, "/etc/resolv.conf")
        }
    }
    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn plain_file_stays() {
        let t = Tree::new("plain");
        t.file("etc/resolv.conf");
        assert_eq!(t.walk().unwrap(), "/etc/resolv.conf");
    }

    #[test]
    fn relative_link_into_run_stops_there() {
        // M1: the systemd-resolved layout.
        let t = Tree::new("m1");
        t.link("etc/resolv.conf", "../run/systemd/resolve/stub-resolv.conf");
        t.file("run/systemd/resolve/stub-resolv.conf");
        assert_eq!(t.walk().unwrap(), "/run/systemd/resolve/stub-resolv.conf");
    }

    #[test]
    fn second_link_under_run_is_not_followed() {
        // M2: stub-resolv.conf -> resolv.conf must not be chased.
        let t = Tree::new("m2");
        t.link("etc/resolv.conf", "/run/systemd/resolve/stub-resolv.conf");
        t.link("run/systemd/resolve/stub-resolv.conf", "resolv.conf");
        t.file("run/systemd/resolve/resolv.conf");
        assert_eq!(t.walk().unwrap(), "/run/systemd/resolve/stub-resolv.conf");
        // Even a dangling first hop is fine: the file is created in the new /run.
        let t = Tree::new("m2b");
        t.link("etc/resolv.conf", "/run/resolvconf/resolv.conf");
        assert_eq!(t.walk().unwrap(), "/run/resolvconf/resolv.conf");
    }

    #[test]
    fn absolute_and_relative_targets() {
        // M3: absolute replaces, relative joins the link's directory.
        let t = Tree::new("m3");
        t.link("etc/resolv.conf", "/etc/alt/resolv.conf");
        t.link("etc/alt/resolv.conf", "../../var/resolv.conf");
        t.file("var/resolv.conf");
        assert_eq!(t.walk().unwrap(), "/var/resolv.conf");
        let t = Tree::new("m3b");
        t.link("etc/resolv.conf", "./sub/../real.conf");
        t.file("etc/real.conf");
        assert_eq!(t.walk().unwrap(), "/etc/real.conf");
    }

    #[test]
    fn directory_components_are_links_too() {
        // M4: /etc -> /usr/etc, then resolv.conf -> /run/...
        let t = Tree::new("m4");
        t.link("etc", "usr/etc");
        t.link("usr/etc/resolv.conf", "../../run/NetworkManager/resolv.conf");
        t.dir("run");
        assert_eq!(t.walk().unwrap(), "/run/NetworkManager/resolv.conf");
        let t = Tree::new("m4b");
        t.link("etc", "/usr/etc");
        t.file("usr/etc/resolv.conf");
        assert_eq!(t.walk().unwrap(), "/usr/etc/resolv.conf");
    }

    #[test]
    fn link_loops_end_with_an_error() {
        let t = Tree::new("loop");
        t.link("etc/resolv.conf", "a");
        t.link("etc/a", "b");
        t.link("etc/b", "a");
        assert!(t.walk().unwrap_err().contains("too many levels"));
        // A chain of 300 distinct links is refused too.
        let t = Tree::new("chain");
        t.link("etc/resolv.conf", "l0");
        for i in 0..300 {
            t.link(&format!("etc/l{i}"), &format!("l{}", i + 1));
        }
        t.file("etc/l300");
        assert!(t.walk().unwrap_err().contains("too many levels"));
        let t = Tree::new("missing");
        t.dir("etc");
        assert!(t.walk().unwrap_err().contains("stat /etc/resolv.conf"));
    }

    #[test]
    fn var_lib_cni_walks_up_and_stops() {
        // M6
        let t = Tree::new("m6");
        t.dir("var/lib/cni");
        assert_eq!(var_lib_cni_target(&t.0).unwrap(), PathBuf::from("/var/lib/cni"));
        let t = Tree::new("m6b");
        t.dir("var/lib");
        assert_eq!(var_lib_cni_target(&t.0).unwrap(), PathBuf::from("/var/lib"));
        let t = Tree::new("m6c");
        t.dir("var");
        assert_eq!(var_lib_cni_target(&t.0).unwrap(), PathBuf::from("/var"));
        let t = Tree::new("m6d");
        assert!(var_lib_cni_target(&t.0).unwrap_err().contains("below /"));
    }

    #[test]
    fn resolv_conf_content() {
        let host = "# generated\nnameserver 127.0.0.53\nnameserver 192.0.2.1\nnameserver ::1\nnameserver 2001:db8::1\n\
                    nameserver fe80::1%eth0\nnameserver 10.0.2.3\nnameserver bogus\ndomain a.example\nsearch b.example c.example\n\
                    options edns0 trust-ad\noptions ndots:2\n";
        let dns: IpAddr = "10.0.2.3".parse().unwrap();
        assert_eq!(
            build_resolv_conf(host, dns, false),
            "nameserver 10.0.2.3\nnameserver 192.0.2.1\nsearch b.example c.example\noptions edns0 trust-ad\noptions ndots:2\n"
        );
        let with6 = build_resolv_conf(host, dns, true);
        assert!(with6.contains("nameserver 2001:db8::1\nnameserver fe80::1%eth0\n"), "{with6}");
        assert!(!with6.contains("::1\nnameserver 2001"), "loopback v6 dropped: {with6}");
        assert_eq!(build_resolv_conf("", dns, false), "nameserver 10.0.2.3\n");
    }

    fn input() -> PlanInput {
        PlanInput {
            state_dir: "/run/user/1000/cni-rootless".into(),
            xdg_runtime_dir: Some("/run/user/1000".into()),
            container_netns: Some("/run/user/1000/netns/c1".into()),
            run_systemd: true,
            resolv_target: Some("/etc/resolv.conf".into()),
            var_target: "/var/lib/cni".into(),
        }
    }

    fn bind(src: &str, dst: &str, recursive: bool) -> Step {
        Step::Bind { src: src.into(), dst: dst.into(), recursive }
    }

    #[test]
    fn plan_follows_the_seed_order() {
        let s = "/run/user/1000/cni-rootless";
        let steps = plan(&input());
        assert_eq!(
            steps,
            vec![
                Step::Dir(format!("{s}/run/user/1000").into()),
                bind("/run/user/1000", &format!("{s}/run/user/1000"), true),
                Step::Dir(format!("{s}/run/systemd").into()),
                bind("/run/systemd", &format!("{s}/run/systemd"), true),
                bind(&format!("{s}/resolv.conf"), "/etc/resolv.conf", false),
                Step::Dir(format!("{s}/var/lib/cni").into()),
                bind(&format!("{s}/var/lib/cni"), "/var/lib/cni", false),
                Step::Dir(format!("{s}/run").into()),
                bind(&format!("{s}/run"), "/run", true),
            ]
        );
        assert!(transient_files(&input(), &steps).is_empty());
    }

    #[test]
    fn plan_for_systemd_resolved_missing_var_lib_cni_and_a_netns_in_run() {
        let s = "/home/u/.cache/rl";
        let i = PlanInput {
            state_dir: s.into(),
            xdg_runtime_dir: Some("/run/user/1000".into()),
            container_netns: Some("/run/netns/ctr".into()),
            run_systemd: false,
            resolv_target: Some("/run/systemd/resolve/stub-resolv.conf".into()),
            var_target: "/var/lib".into(),
        };
        let steps = plan(&i);
        assert_eq!(
            steps,
            vec![
                Step::Dir(format!("{s}/run/user/1000").into()),
                bind("/run/user/1000", &format!("{s}/run/user/1000"), true),
                Step::Dir(format!("{s}/run/netns").into()),
                Step::File(format!("{s}/run/netns/ctr").into()),
                bind("/run/netns/ctr", &format!("{s}/run/netns/ctr"), false),
                // M5: tmpfs first, then the file on it.
                Step::Dir(format!("{s}/run/systemd/resolve").into()),
                Step::Tmpfs(format!("{s}/run/systemd/resolve").into()),
                Step::Dir(format!("{s}/run/systemd/resolve").into()),
                Step::File(format!("{s}/run/systemd/resolve/stub-resolv.conf").into()),
                bind(&format!("{s}/resolv.conf"), &format!("{s}/run/systemd/resolve/stub-resolv.conf"), false),
                Step::Dir(format!("{s}/var/lib/cni").into()),
                // M6: the first existing parent, from the state directory.
                bind(&format!("{s}/var/lib"), "/var/lib", false),
                Step::Dir(format!("{s}/run").into()),
                bind(&format!("{s}/run"), "/run", true),
            ]
        );
        assert_eq!(transient_files(&i, &steps), vec![PathBuf::from(format!("{s}/run/netns/ctr"))]);
    }

    #[test]
    fn plan_skips_what_is_not_under_run() {
        let i = PlanInput {
            state_dir: "/srv/rl".into(),
            xdg_runtime_dir: Some("/tmp/xdg".into()),
            container_netns: Some("/proc/42/ns/net".into()),
            run_systemd: false,
            resolv_target: None,
            var_target: "/var/lib/cni".into(),
        };
        let steps = plan(&i);
        assert_eq!(steps.len(), 4, "{steps:?}");
        assert!(matches!(&steps[1], Step::Bind { dst, .. } if dst == Path::new("/var/lib/cni")));
    }

    #[test]
    fn path_gets_sbin() {
        assert_eq!(inner_path("/usr/local/bin:/usr/bin:/bin"), "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin");
        assert_eq!(inner_path("/usr/sbin:/usr/bin:/sbin"), "/usr/sbin:/usr/bin:/sbin");
        assert_eq!(inner_path(""), "/usr/sbin:/sbin");
    }

    #[test]
    fn paths() {
        assert!(is_under(Path::new("/run/user/1"), Path::new("/run")));
        assert!(!is_under(Path::new("/running"), Path::new("/run")));
        assert!(!is_under(Path::new("/run"), Path::new("/run")));
        assert_eq!(rebase(Path::new("/s"), Path::new("/run/x")), PathBuf::from("/s/run/x"));
    }

    #[test]
    fn mountinfo_parsing() {
        let info = "22 1 0:21 / /proc rw - proc proc rw\n\
                    90 30 0:4 net:[4026532500] /run/user/1000/cni-rootless/netns rw - nsfs nsfs rw\n\
                    91 30 0:50 / /run/user/1000/cni-rootless/run/a\\040b rw - tmpfs tmpfs rw\n\
                    92 30 0:51 / /run/user/1000/cni-rootless-other rw - tmpfs tmpfs rw\n";
        let found = mounts_within(info, Path::new("/run/user/1000/cni-rootless"));
        assert_eq!(
            found,
            vec![
                PathBuf::from("/run/user/1000/cni-rootless/run/a b"),
                PathBuf::from("/run/user/1000/cni-rootless/netns")
            ]
        );
        assert_eq!(unescape_mountinfo("a\\011b\\134"), "a\tb\\");
        assert_eq!(nsfs_mount_points(info), vec![PathBuf::from("/run/user/1000/cni-rootless/netns")]);
    }
}
