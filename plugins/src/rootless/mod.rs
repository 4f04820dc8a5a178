//! `rootless-wrapper`: runs a chain of inner plugins (bridge, host-local, portmap, …) for a
//! rootless runtime, inside one shared "rootless netns" whose uplink is slirp4netns ([`slirp`],
//! the default) or pasta ([`pasta`], `helper: "pasta"`; it has no port API, so the forwarder
//! carries all its published ports). Both get the same addresses, so the netns looks the same
//! either way; which one serves a netns is recorded, and a netns keeps its helper until it is
//! recreated.
//!
//! The runtime calls the wrapper after joining its pause process's user and mount namespaces,
//! in its own network namespace (the host's). Per state directory (so per user) the wrapper
//! keeps one netns, bind-mounted on `<stateDir>/netns`, with the helper serving it. Published
//! ports on IPv4 host addresses are forwarded by slirp4netns from the host to the netns' tap
//! address on the same port, where the inner portmap DNATs them to the container; ports on IPv6
//! host addresses (and, with pasta, IPv4 ones too) are carried by the wrapper's own port
//! forwarder ([`forwarder`]), which keeps the client's address too and is recorded, verified,
//! repaired and stopped like the helper. The inner plugins run as children of
//! the wrapper after it entered the shared netns and a private mount namespace that gives them
//! writable `/run` and `/var/lib/cni` (see [`mounts`]).
//!
//! Everything is remembered in `<stateDir>/state.json` ([`state`]) under one flock on
//! `<stateDir>.lock`, which teardown never deletes. Nothing found on disk is trusted as found
//! ([`trust`]): the path to the state directory is checked component by component (owner, mode,
//! links someone else planted), the directory is the wrapper's own (0700), its files are opened
//! without following links and read up to a bound, a record naming files outside the directory's
//! fixed layout is reset (an ADD or DEL first runs its container's inner DEL in the layout's
//! netns, so that interface goes at once rather than when the kernel frees the netns), and a recorded helper is signalled only once the process is verified
//! to be a helper of this user serving this directory ([`slirp::Expect`]). Teardown removes
//! only the names of that layout. Every wait has a deadline: the lock (a later call gives up
//! with a clear error instead of queueing forever behind a stuck one), the helper's API and
//! readiness, the inner plugins, and every other child process. Every verb validates the state first: a netns
//! file that is no longer a namespace or that belongs to another user namespace is recreated
//! (its old attachments are orphaned and say so in the log), a dead helper is restarted and its
//! forwards are replayed. The last DEL (or a GC that leaves nobody) stops the helper, unmounts
//! the netns and removes the state directory.
//!
//! The wrapper is single-threaded. It does everything that needs the host's netns first
//! (creating the netns, starting the helper, probing and forwarding host ports), then moves
//! itself into the shared netns and a new mount namespace and execs the inner plugins, which
//! inherit both. It never returns to the host's netns: that one belongs to the initial user
//! namespace, where `setns` needs rights a rootless runtime does not have. It does return to
//! the runtime's mount namespace, and the bookkeeping after the inner plugins needs no netns
//! (state files, the helper's unix socket, signals, unmounts). The work that must
//! happen in another netns earlier (creating it, the IPv6 sysctls of a new tap and its IPv6
//! default route) runs in a forked child.

pub mod config;
pub mod forwarder;
pub mod host;
pub mod mounts;
pub mod pasta;
pub mod slirp;
pub mod state;
pub mod trust;

use crate::errors::{internal, Ctx};
use crate::ns::NetNs;
use cni_types::error::PLUGIN_NOT_AVAILABLE;
use cni_types::invoke;
use cni_types::{CmdArgs, CniError, CniResult, Command, Plugin};
use config::{lookup, HelperKind, InnerExtras, WrapperConf};
use serde_json::{Map, Value};
use state::{Forward, Member, NetParams, State, STATE_VERSION};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a call waits for the state lock. Holders only do bounded work (every wait below
/// has a deadline); sixteen calls at once each wait for the others' ADDs.
const LOCK_WAIT: Duration = Duration::from_secs(60);
/// How long one inner plugin may run (bridge and portmap take milliseconds; iptables may wait
/// for its lock a few seconds).
const INNER_TIMEOUT: Duration = Duration::from_secs(30);
/// Whether IPv4 ports go through the forwarder too, rather than slirp4netns' `add_hostfwd`.
const FORWARDER_CARRIES_IPV4: bool = false;
/// The most of the host's `/etc/resolv.conf` read.
const MAX_RESOLV_CONF: u64 = 1 << 20;

/// A forward the forwarder will carry, with the host socket bound for it.
type Bound = (Forward, OwnedFd);

/// The rootless-wrapper meta-plugin.
pub struct RootlessWrapper;

/// The files of one state directory.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The state directory; teardown removes it whole.
    pub dir: PathBuf,
    /// The flock file, beside the directory so teardown never removes it.
    pub lock: PathBuf,
    /// `state.json`.
    pub state: PathBuf,
    /// The bind-mounted netns.
    pub netns: PathBuf,
    /// slirp4netns' API socket.
    pub api_socket: PathBuf,
    /// slirp4netns' output.
    pub log: PathBuf,
    /// pasta's output.
    pub pasta_log: PathBuf,
    /// The generated resolv.conf.
    pub resolv: PathBuf,
    /// A second mount of the netns under `$XDG_RUNTIME_DIR/netns/`, the only place Debian's
    /// AppArmor profile lets pasta open a namespace; named after the state directory.
    pub netns_alias: Option<PathBuf>,
    /// The port forwarder's control socket.
    pub forwarder_socket: PathBuf,
    /// The port forwarder's output.
    pub forwarder_log: PathBuf,
}

/// The names the wrapper makes in a state directory; teardown removes these and nothing else
/// (`resolv.tmp`: the temporary name earlier versions used).
pub const LAYOUT: [&str; 13] = [
    "state.json",
    "state.json.tmp",
    "netns",
    "slirp.sock",
    "slirp.log",
    "pasta.log",
    "resolv.conf",
    "resolv.conf.tmp",
    "resolv.tmp",
    "run",
    "var",
    "forwarder.sock",
    "forwarder.log",
];

impl Paths {
    /// The layout under `dir`.
    pub fn new(dir: &Path) -> Paths {
        Paths {
            dir: dir.to_path_buf(),
            lock: PathBuf::from(format!("{}.lock", dir.display())),
            state: dir.join("state.json"),
            netns: dir.join("netns"),
            api_socket: dir.join("slirp.sock"),
            log: dir.join("slirp.log"),
            pasta_log: dir.join("pasta.log"),
            resolv: dir.join("resolv.conf"),
            netns_alias: None,
            forwarder_socket: dir.join("forwarder.sock"),
            forwarder_log: dir.join("forwarder.log"),
        }
    }

    fn forwarder_paths(&self) -> forwarder::Paths {
        forwarder::Paths {
            netns: self.netns.clone(),
            control: self.forwarder_socket.clone(),
            log: self.forwarder_log.clone(),
        }
    }

    /// The netns path `kind` is given: pasta's is the alias when there is one.
    pub fn helper_netns(&self, kind: HelperKind) -> &Path {
        match (kind, &self.netns_alias) {
            (HelperKind::Pasta, Some(alias)) => alias,
            _ => &self.netns,
        }
    }

    fn helper_paths(&self, kind: HelperKind) -> slirp::HelperPaths {
        let log = match kind {
            HelperKind::Slirp4netns => self.log.clone(),
            HelperKind::Pasta => self.pasta_log.clone(),
        };
        slirp::HelperPaths { netns: self.helper_netns(kind).to_path_buf(), api_socket: self.api_socket.clone(), log }
    }
}

/// The name of the netns alias of `state_dir` in `$XDG_RUNTIME_DIR/netns/`: a prefix and a
/// 64-bit FNV-1a hash of the path, so one user's state directories never share one.
pub fn alias_name(state_dir: &Path) -> String {
    let hash = state_dir
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
    format!("cni-rootless-{hash:016x}")
}

fn not_available(msg: impl std::fmt::Display) -> CniError {
    CniError::new(PLUGIN_NOT_AVAILABLE, msg.to_string())
}

/// One error for several: the first one's code, all messages.
fn combine(mut errors: Vec<CniError>) -> Result<(), CniError> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => {
            let msg = errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ");
            Err(CniError::new(errors[0].code, msg))
        }
    }
}

fn getenv(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

/// One invocation: its configuration, its files and the lock it holds.
struct Session<'a> {
    conf: WrapperConf,
    args: &'a CmdArgs,
    paths: Paths,
    _lock: trust::StateLock,
}

impl<'a> Session<'a> {
    /// Checks the path to the state directory, then takes the state lock, waiting at most
    /// [`LOCK_WAIT`] (holders never wait for the runtime, so lock order is always runtime lock
    /// → this lock), then checks the state directory itself if it exists.
    fn open(conf: WrapperConf, args: &'a CmdArgs) -> Result<Session<'a>, CniError> {
        let unsafe_dir = |e: String| internal(format!("rootless-wrapper: unsafe stateDir: {e}"));
        let (parent, name) = match (conf.state_dir.parent(), conf.state_dir.file_name()) {
            (Some(p), Some(n)) => (p, n.to_os_string()),
            _ => return Err(unsafe_dir(format!("{} cannot be a state directory", conf.state_dir.display()))),
        };
        let parent = trust::secure_dir(parent, true)
            .map_err(unsafe_dir)?
            .ok_or_else(|| unsafe_dir(format!("{} is missing", parent.display())))?;
        let mut lock_name = name.clone();
        lock_name.push(".lock");
        let lock = trust::lock(&parent.join(lock_name), LOCK_WAIT).map_err(internal)?;
        let dir = trust::secure_dir(&parent.join(&name), false).map_err(unsafe_dir)?.unwrap_or(parent.join(name));
        let mut paths = Paths::new(&dir);
        // Beside the name the configuration gives, even when that name is a link.
        paths.lock = Paths::new(&conf.state_dir).lock;
        paths.netns_alias = getenv("XDG_RUNTIME_DIR")
            .filter(|x| x.starts_with('/'))
            .map(|x| Path::new(&x).join("netns").join(alias_name(&conf.state_dir)));
        Ok(Session { conf, args, paths, _lock: lock })
    }

    /// What a helper of `kind` of this state directory must be (see [`slirp::Expect`]).
    fn expect_kind(&self, kind: HelperKind) -> slirp::Expect {
        slirp::Expect::new(
            kind,
            slirp::find_helper(self.binary_of(kind)).as_deref(),
            self.paths.helper_netns(kind),
            &self.paths.api_socket,
        )
    }

    /// The helper binary of `kind`: the configured one when it is of that kind (a netns made
    /// with the other helper keeps it until it is recreated), else that kind's usual name.
    fn binary_of(&self, kind: HelperKind) -> &str {
        if self.conf.kind == kind {
            self.conf.helper.as_str()
        } else {
            kind.name()
        }
    }

    /// What a forwarder of this state directory must be (see [`forwarder::Expect`]).
    fn forwarder_expect(&self) -> forwarder::Expect {
        forwarder::Expect::new(&self.paths.forwarder_paths())
    }

    /// Whether the recorded forwarder still runs and is verifiably ours.
    fn forwarder_running(&self, st: &State) -> bool {
        st.forwarder.as_ref().is_some_and(|f| forwarder::is_ours(f, &self.forwarder_expect()))
            && self.paths.forwarder_socket.exists()
    }

    /// Stops the recorded forwarder and any unrecorded one serving this directory.
    fn stop_forwarders(&self, st: Option<&State>) -> Vec<String> {
        let expect = self.forwarder_expect();
        let mut errors = Vec::new();
        if let Some(f) = st.and_then(|s| s.forwarder.as_ref()) {
            errors.extend(forwarder::stop(f, &expect).err());
        }
        for stray in forwarder::serving(&expect) {
            log::warn!("stopping unrecorded forwarder pid {} serving {}", stray.pid, self.paths.netns.display());
            errors.extend(forwarder::stop(&stray, &expect).err());
        }
        errors
    }

    /// How the forwarder carries `fwd` to the container of `result`; `None` when the container
    /// has no address.
    fn port_spec(&self, st: &State, fwd: &Forward, result: &Value) -> Option<forwarder::PortSpec> {
        let targets = forwarder::targets_from_result(result, fwd.container_port);
        let gateway = config::SlirpNet::derive(&st.params.cidr).map(|n| n.gateway).unwrap_or(self.conf.net.gateway);
        (!targets.is_empty()).then(|| forwarder::PortSpec {
            id: fwd.id.unwrap_or_default(),
            proto: fwd.proto.clone(),
            targets,
            map4: Some(gateway),
            map6: Some(host::GATEWAY6),
        })
    }

    /// Starts the forwarder when a recorded port needs it and it is not running, with every
    /// recorded port bound again (this must run in the host's netns). A port that cannot be
    /// restored is logged and stays recorded.
    fn ensure_forwarder(&self, st: &mut State) -> Result<(), CniError> {
        let needed = st.forwards().any(|(_, f)| f.forwarder);
        if self.forwarder_running(st) {
            self.reconcile_forwarder(st);
            return Ok(());
        }
        if !needed {
            return Ok(());
        }
        if st.forwarder.is_some() {
            log::warn!("the port forwarder for {} is not running; restarting it", st.netns.display());
        }
        for problem in self.stop_forwarders(Some(st)) {
            log::warn!("{problem}");
        }
        st.forwarder = None;
        let started = forwarder::start(&self.paths.forwarder_paths())
            .map_err(|e| internal(format!("start the port forwarder: {e}")))?;
        st.forwarder = Some(started);
        for member in &st.members {
            let Some(result) = member.result.as_ref() else { continue };
            for fwd in member.forwards.iter().filter(|f| f.forwarder) {
                let restored = self
                    .port_spec(st, fwd, result)
                    .ok_or_else(|| "the container has no address".to_string())
                    .and_then(|spec| {
                        let socket = forwarder::bind_host_port(fwd)?;
                        forwarder::add(&self.paths.forwarder_socket, &spec, socket.as_fd())
                    });
                if let Err(e) = restored {
                    log::warn!(
                        "could not restore host port {}/{} on {} of container {}: {e}",
                        fwd.host_port,
                        fwd.proto,
                        fwd.host_addr,
                        member.container_id
                    );
                }
            }
        }
        self.save(st)
    }

    /// Closes the ports a running forwarder carries that no attachment records any more (a DEL
    /// that could not reach it, a crash between two steps). A stopped forwarder is left alone:
    /// it cannot answer, and the next call tries again.
    fn reconcile_forwarder(&self, st: &State) {
        let Some(fwd) = st.forwarder.as_ref() else { return };
        if let Some(why) = forwarder::unresponsive(fwd) {
            log::warn!("{why}; its ports are checked by a later call");
            return;
        }
        let active = match forwarder::list(&self.paths.forwarder_socket) {
            Ok(ids) => ids,
            Err(e) => {
                log::warn!("port forwarder: {e}");
                return;
            }
        };
        let recorded: Vec<i64> = st.forwards().filter(|(_, f)| f.forwarder).filter_map(|(_, f)| f.id).collect();
        for id in active.into_iter().filter(|id| !recorded.contains(id)) {
            match forwarder::remove(&self.paths.forwarder_socket, id) {
                Ok(()) => log::info!("closed port {id} of the forwarder, which nobody records any more"),
                Err(e) => log::warn!("close port {id} of the forwarder: {e}"),
            }
        }
    }

    /// Hands the host sockets bound for one attachment to the forwarder, now that the inner
    /// chain gave the container its addresses; on failure the ones handed over are removed.
    fn publish(&self, st: &State, bound: &[Bound], result: &Value) -> Result<(), CniError> {
        let mut done: Vec<i64> = Vec::new();
        for (fwd, socket) in bound {
            let sent = self
                .port_spec(st, fwd, result)
                .ok_or_else(|| {
                    format!(
                        "host port {}/{} on {} cannot be forwarded: the container got no address",
                        fwd.host_port, fwd.proto, fwd.host_addr
                    )
                })
                .and_then(|spec| forwarder::add(&self.paths.forwarder_socket, &spec, socket.as_fd()));
            match sent {
                Ok(()) => done.extend(fwd.id),
                Err(e) => {
                    for id in done {
                        let _ = forwarder::remove(&self.paths.forwarder_socket, id);
                    }
                    return Err(internal(format!("port forwarder: {e}")));
                }
            }
        }
        Ok(())
    }

    /// Why a record cannot have been written by this wrapper for this directory, if it cannot:
    /// every path in it is fixed by the layout.
    fn foreign(&self, st: &State) -> Option<String> {
        if st.netns != self.paths.netns {
            return Some(format!("it names {} as the netns, not {}", st.netns.display(), self.paths.netns.display()));
        }
        // pasta has no socket (an empty path in the record); only slirp4netns' is ever used.
        let socket = st.helper.as_ref().map(|h| &h.api_socket).filter(|s| match st.params.helper {
            HelperKind::Slirp4netns => **s != self.paths.api_socket,
            HelperKind::Pasta => !s.as_os_str().is_empty(),
        });
        socket.map(|s| {
            format!("it names {} as the helper's socket, not {}", s.display(), self.paths.api_socket.display())
        })
    }

    /// The recorded state; an unreadable one is reset (nothing in it can be trusted, so the
    /// netns and any helper serving it are removed) unless `keep_broken` asks to report it.
    fn load(&self, keep_broken: bool) -> Result<Option<State>, CniError> {
        let loaded = state::load(&self.paths.state).and_then(|st| match st.as_ref().and_then(|s| self.foreign(s)) {
            Some(why) => Err(format!("state file {}: {why}", self.paths.state.display())),
            None => Ok(st),
        });
        match loaded {
            Ok(st) => Ok(st),
            Err(e) if keep_broken => Err(not_available(format!("rootless-wrapper: broken state: {e}"))),
            Err(e) => {
                log::error!("{e}; resetting {}", self.paths.dir.display());
                let errors = self.teardown(None);
                if errors.is_empty() {
                    Ok(None)
                } else {
                    Err(internal(format!("reset broken state: {}", errors.join("; "))))
                }
            }
        }
    }

    /// After members left: tear everything down when none remain, else record who is left.
    fn settle(&self, st: &mut State) -> Vec<CniError> {
        if st.members.is_empty() {
            return self.teardown(Some(st)).into_iter().map(internal).collect();
        }
        if st.forwarder.is_some() && !st.forwards().any(|(_, f)| f.forwarder) {
            // Nothing left to carry: it would only sit there.
            for problem in self.stop_forwarders(Some(st)) {
                log::warn!("{problem}");
            }
            st.forwarder = None;
        }
        self.save(st).err().into_iter().collect()
    }

    fn save(&self, st: &State) -> Result<(), CniError> {
        state::save(&self.paths.state, st).map_err(internal)
    }

    fn params(&self) -> NetParams {
        NetParams {
            cidr: self.conf.net.cidr.to_string(),
            mtu: self.conf.mtu,
            enable_ipv6: self.conf.enable_ipv6,
            allow_host_loopback: self.conf.allow_host_loopback,
            helper: self.conf.kind,
        }
    }

    /// Takes the settings of the running helper: a configuration edited while the shared netns
    /// exists applies only once it is recreated, and every derived address (forward target,
    /// DNS) must match what slirp4netns actually serves.
    fn adopt(&mut self, st: &State) {
        if st.params == self.params() {
            return;
        }
        log::warn!(
            "{}: the configuration asks for {:?} but the rootless netns runs with {:?}; keeping those until it \
             is recreated",
            self.paths.dir.display(),
            self.params(),
            st.params
        );
        match config::SlirpNet::derive(&st.params.cidr) {
            Ok(net) => self.conf.net = net,
            Err(e) => log::warn!("recorded cidr: {e}"),
        }
        self.conf.mtu = st.params.mtu;
        self.conf.enable_ipv6 = st.params.enable_ipv6;
        self.conf.allow_host_loopback = st.params.allow_host_loopback;
        if self.conf.kind != st.params.helper {
            self.conf.kind = st.params.helper;
            self.conf.helper = st.params.helper.name().to_string();
        }
    }

    /// Why a recorded netns cannot be used any more, if it cannot.
    fn stale_reason(st: &State) -> Option<String> {
        match host::userns_inode() {
            Ok(ino) if ino != st.userns_inode => {
                return Some(format!(
                    "it was made in user namespace {} and this is {ino} (the runtime's pause process was restarted)",
                    st.userns_inode
                ))
            }
            Err(e) => return Some(e),
            Ok(_) => {}
        }
        Self::unusable_netns(&st.netns)
    }

    /// Why `path` is not a netns that can be entered, if it is not.
    fn unusable_netns(path: &Path) -> Option<String> {
        // Opened only once it is known not to be a FIFO (an open would wait for a writer) or a
        // link: a netns mount point is a regular file.
        match std::fs::symlink_metadata(path) {
            Ok(m) if !m.file_type().is_file() => {
                return Some(format!("{} is not a regular file ({:?})", path.display(), m.file_type()))
            }
            _ => {}
        }
        match NetNs::open(path) {
            Ok(_) => None,
            Err(e) => Some(format!("{e} (a reboot, or its mount was lost)")),
        }
    }

    /// The record for an ADD or a DEL. One that cannot be trusted is reset as [`Session::load`]
    /// does, but first the inner DEL of the calling container runs in the netns of the layout
    /// (the only place this wrapper makes attachments, whatever the record says): the reset
    /// unmounts that netns, and the kernel frees it, and the veth pairs in it, only later on its
    /// own workqueue. Without this the container's interface outlives a DEL that reported it
    /// removed, and an ADD that follows the reset finds it still there.
    fn load_clearing(&self) -> Result<Option<State>, CniError> {
        let why = match self.load(true) {
            Ok(st) => return Ok(st),
            Err(e) => e,
        };
        match Self::unusable_netns(&self.paths.netns) {
            Some(reason) => log::debug!("no inner DEL before the reset: {reason}"),
            None => {
                log::warn!("{}; running the inner DEL in {} before the reset", why.msg, self.paths.netns.display());
                let count = self.conf.plugins.len();
                let prev = outer_prev_result(self.args);
                // In a child: entering the netns is for good, and an ADD goes on in the host's.
                let ran = host::in_child(|| {
                    let errs = self
                        .inside(Some(&self.paths.netns), || {
                            self.del_chain(self.args, prev.as_ref(), &self.conf.runtime_config, count)
                        })
                        .map_err(|e| e.msg)?;
                    Ok(errs.iter().map(|e| e.msg.as_str()).collect::<Vec<_>>().join("; ").into_bytes())
                });
                match ran {
                    Ok(errs) if errs.is_empty() => {}
                    Ok(errs) => log::warn!("inner DEL before the reset: {}", String::from_utf8_lossy(&errs)),
                    Err(e) => log::warn!("inner DEL before the reset: {e}"),
                }
            }
        }
        self.load(false)
    }

    fn helper_running(&self, st: &State) -> bool {
        let socket_ok = st.params.helper != HelperKind::Slirp4netns || self.paths.api_socket.exists();
        st.helper.as_ref().is_some_and(|h| slirp::is_ours(h, &self.expect_kind(st.params.helper)) && socket_ok)
    }

    /// Stops the helper (only if it is verifiably ours, plus any unrecorded one that is
    /// verifiably serving this directory), unmounts this directory's netns and removes what the
    /// wrapper made in the directory. Only paths of the layout are touched, whatever `st` says.
    fn teardown(&self, st: Option<&State>) -> Vec<String> {
        let mut errors = Vec::new();
        if let Some((h, kind)) = st.and_then(|s| s.helper.as_ref().map(|h| (h, s.params.helper))) {
            errors.extend(slirp::stop(h, &self.expect_kind(kind)).err());
        }
        // Whatever the record says: either helper may have been left serving this netns.
        for kind in [HelperKind::Slirp4netns, HelperKind::Pasta] {
            let expect = self.expect_kind(kind);
            for stray in host::helpers_serving(&expect) {
                log::warn!(
                    "stopping unrecorded {} pid {} serving {}",
                    kind.name(),
                    stray.pid,
                    self.paths.netns.display()
                );
                errors.extend(slirp::stop(&stray, &expect).err());
            }
        }
        if let Some(alias) = &self.paths.netns_alias {
            errors.extend(host::remove_netns(alias).err());
        }
        errors.extend(self.stop_forwarders(st));
        errors.extend(host::remove_netns(&self.paths.netns).err());
        errors.extend(host::remove_state_dir(&self.paths.dir, &LAYOUT).err());
        log::debug!("tore down the rootless netns in {}", self.paths.dir.display());
        errors
    }

    /// Starts the helper into `st.netns`, replays every recorded forward, and saves.
    fn start_helper(&self, st: &mut State) -> Result<(), CniError> {
        host::check_tun().map_err(internal)?;
        let kind = st.params.helper;
        let binary = slirp::find_helper(self.binary_of(kind))
            .ok_or_else(|| internal(format!("helper {:?} not found on PATH", self.binary_of(kind))))?;
        let expect = self.expect_kind(kind);
        // A new helper has none of the old one's forwards.
        st.stale_forwards.clear();
        if let Some(old) = st.helper.take() {
            // Alive without its socket is no use; it must go before a new one takes tap0.
            let _ = slirp::stop(&old, &expect);
        }
        for stray in host::helpers_serving(&expect) {
            let _ = slirp::stop(&stray, &expect);
        }
        if let (HelperKind::Pasta, Some(alias)) = (kind, &self.paths.netns_alias) {
            self.make_alias(&st.netns, alias)?;
        }
        let started = Instant::now();
        let paths = self.paths.helper_paths(kind);
        let helper = self.with_tap_defaults(st, || match kind {
            HelperKind::Slirp4netns => slirp::start(&binary, &st.params, &paths),
            HelperKind::Pasta => pasta::start(&binary, &st.params, &self.conf.net, &paths, &expect),
        });
        let helper = helper.ctx(|| format!("start {}", kind.name()))?;
        if st.params.enable_ipv6 {
            if let Err(e) = host::ipv6_uplink_in(&st.netns, slirp::TAP, host::GATEWAY6) {
                let _ = slirp::stop(&helper, &expect);
                return Err(internal(format!("IPv6 uplink: {e}")));
            }
        }
        log::debug!("{} pid {} ready in {:?}", kind.name(), helper.pid, started.elapsed());
        let socket = helper.api_socket.clone();
        st.helper = Some(helper);
        let guest =
            config::SlirpNet::derive(&st.params.cidr).map(|n| n.guest).unwrap_or(self.conf.net.guest).to_string();
        for member in &mut st.members {
            for fwd in member.forwards.iter_mut().filter(|f| !f.forwarder) {
                fwd.id = match slirp::add_hostfwd(&socket, fwd, &guest) {
                    Ok(id) => Some(id),
                    Err(e) => {
                        log::warn!(
                            "could not restore host port {}/{} of container {}: {e}",
                            fwd.host_port,
                            fwd.proto,
                            member.container_id
                        );
                        None
                    }
                };
            }
        }
        self.save(st)
    }

    /// Mounts the netns on `alias` too, in a directory checked as the state directory is.
    fn make_alias(&self, netns: &Path, alias: &Path) -> Result<(), CniError> {
        let unsafe_dir = |e: String| internal(format!("rootless-wrapper: unsafe netns directory: {e}"));
        if let Some(dir) = alias.parent() {
            trust::secure_dir(dir, true).map_err(unsafe_dir)?;
        }
        host::alias_netns(netns, alias).map_err(|e| internal(format!("netns for pasta: {e}")))
    }

    /// Runs `work` (the helper's start) with the IPv6 defaults a new tap needs, then restores
    /// them so the inner plugins' links get the usual ones. Duplicate address detection would
    /// hold the tap's address back 1–2 s (podman turns it off the same way); the router
    /// advertisement settings are [`host::TAP_RA_SYSCTLS`].
    fn with_tap_defaults<T>(&self, st: &State, work: impl FnOnce() -> T) -> T {
        const DAD: (&str, &str) = ("net/ipv6/conf/default/accept_dad", "0");
        let mut saved = Vec::new();
        if st.params.enable_ipv6 {
            for (key, value) in std::iter::once(DAD).chain(host::TAP_RA_SYSCTLS) {
                match host::swap_sysctl_in(&st.netns, key, value) {
                    Ok(old) => saved.push((key, old)),
                    Err(e) => log::warn!("set {key} for the tap: {e}"),
                }
            }
        }
        let out = work();
        for (key, old) in saved {
            if let Err(e) = host::swap_sysctl_in(&st.netns, key, old.trim()) {
                log::warn!("restore {key}: {e}");
            }
        }
        out
    }

    /// Creates the state directory, the netns and the helper; on failure nothing is left.
    fn create(&self) -> Result<State, CniError> {
        host::check_tun().map_err(internal)?;
        slirp::find_helper(&self.conf.helper)
            .ok_or_else(|| internal(format!("helper {:?} not found on PATH", self.conf.helper)))?;
        let userns_inode = host::userns_inode().map_err(internal)?;
        let mut st = State {
            version: STATE_VERSION,
            netns: self.paths.netns.clone(),
            userns_inode,
            params: self.params(),
            helper: None,
            members: Vec::new(),
            stale_forwards: Vec::new(),
            forwarder: None,
        };
        let made = self.prepare_dir().and_then(|_| host::create_netns(&st.netns).map_err(internal));
        let made = made.and_then(|_| self.save(&st)).and_then(|_| self.start_helper(&mut st));
        if let Err(e) = made {
            for problem in self.teardown(Some(&st)) {
                log::warn!("cleanup after a failed start: {problem}");
            }
            return Err(e);
        }
        log::info!("created rootless netns {} served by {}", st.netns.display(), self.conf.kind.name());
        Ok(st)
    }

    /// Creates the state directory (0700, ours) and its `run` and `var/lib/cni`, each checked
    /// as it is walked.
    fn prepare_dir(&self) -> Result<(), CniError> {
        let run = self.paths.dir.join("run");
        for dir in [&self.paths.dir, &run, &mounts::rebase(&self.paths.dir, Path::new(mounts::VAR_LIB_CNI))] {
            trust::secure_dir(dir, true).ctx(|| "rootless-wrapper: unsafe stateDir")?;
        }
        mounts::relabel_run_dir(&run).map_err(internal)
    }

    /// Validates the recorded state and repairs it: a stale netns is torn down (and recreated
    /// when `create`), a dead helper is restarted with its forwards. `None`: nothing exists.
    fn ensure(&self, st: Option<State>, create: bool) -> Result<Option<State>, CniError> {
        let mut st = st;
        if let Some(s) = &st {
            if let Some(reason) = Self::stale_reason(s) {
                log::warn!(
                    "rootless netns {} is stale: {reason}; removing it ({} attachment(s) made in it are orphaned)",
                    s.netns.display(),
                    s.members.len()
                );
                let errors = self.teardown(Some(s));
                if !errors.is_empty() {
                    return Err(internal(format!("remove stale rootless netns: {}", errors.join("; "))));
                }
                st = None;
            }
        }
        match st {
            None if create => self.create().map(Some),
            None => Ok(None),
            Some(mut s) => {
                if !self.helper_running(&s) {
                    log::warn!("{} for {} is not running; restarting it", s.params.helper.name(), s.netns.display());
                    self.start_helper(&mut s)?;
                    self.ensure_forwarder(&mut s)?;
                    return Ok(Some(s));
                }
                self.ensure_forwarder(&mut s)?;
                if s.params.enable_ipv6 {
                    // Put back if someone removed it (a route already there is fine).
                    if let Err(e) = host::ipv6_uplink_in(&s.netns, slirp::TAP, host::GATEWAY6) {
                        log::warn!("IPv6 uplink of {}: {e}", s.netns.display());
                    }
                }
                if !s.stale_forwards.is_empty() && s.helper.as_ref().is_some_and(|h| slirp::unresponsive(h).is_none()) {
                    self.remove_stale_forwards(&mut s)?;
                }
                Ok(Some(s))
            }
        }
    }

    /// Removes the forwards a stopped helper kept, now that it answers again.
    fn remove_stale_forwards(&self, st: &mut State) -> Result<(), CniError> {
        let active = match slirp::list_hostfwd(&self.paths.api_socket) {
            Ok(ids) => ids,
            Err(e) => {
                log::warn!("list_hostfwd: {e}; the forwards left behind stay for now");
                return Ok(());
            }
        };
        let stale = std::mem::take(&mut st.stale_forwards);
        for fwd in stale {
            // Gone already (removed before the helper stopped, or by a restart): nothing to do.
            let Some(id) = fwd.id.filter(|id| active.contains(id)) else { continue };
            match slirp::remove_hostfwd(&self.paths.api_socket, id) {
                Ok(()) => log::info!("removed the forward of host port {}/{} left behind", fwd.host_port, fwd.proto),
                Err(e) => {
                    log::warn!("remove forward of host port {}/{} (id {id}): {e}", fwd.host_port, fwd.proto);
                    st.stale_forwards.push(fwd);
                }
            }
        }
        self.save(st)
    }

    /// Adds the forwards `mappings` need: the helper's at once, the forwarder's as host sockets
    /// bound here (handed over once the container has its addresses). On any failure the ones
    /// already added are removed and the sockets closed. pasta has no port API: with it the
    /// forwarder carries both families.
    fn add_forwards(&self, st: &State) -> Result<(Vec<Forward>, Vec<Bound>), CniError> {
        let carry_ipv4 = FORWARDER_CARRIES_IPV4 || st.params.helper == HelperKind::Pasta;
        let wanted = host::forwards_for(&self.conf.port_mappings, self.conf.enable_ipv6, carry_ipv4)
            .map_err(CniError::invalid_config)?;
        for fwd in &wanted {
            if let Some((m, _)) = st.forwards().find(|(_, f)| host::clashes(f, fwd)) {
                return Err(internal(format!(
                    "host port {}/{} cannot be published: container {} already publishes it",
                    fwd.host_port, fwd.proto, m.container_id
                )));
            }
        }
        let helper = st.helper.as_ref().ok_or_else(|| internal("no helper running"))?;
        if let Some(why) = (!wanted.is_empty()).then(|| slirp::unresponsive(helper)).flatten() {
            return Err(internal(why));
        }
        let socket = self.paths.api_socket.clone();
        let guest = self.conf.net.guest.to_string();
        let mut added: Vec<Forward> = Vec::new();
        let mut bound: Vec<Bound> = Vec::new();
        let mut next_id = st.next_forwarder_id();
        for fwd in wanted {
            if fwd.forwarder {
                match forwarder::bind_host_port(&fwd) {
                    Ok(socket) => {
                        let fwd = Forward { id: Some(next_id), ..fwd };
                        next_id += 1;
                        added.push(fwd.clone());
                        bound.push((fwd, socket));
                        continue;
                    }
                    Err(e) => {
                        remove_forwards_logged(self, st, &added);
                        return Err(internal(e));
                    }
                }
            }
            let result = host::probe_host_port(&fwd).and_then(|_| {
                slirp::add_hostfwd(&socket, &fwd, &guest).map_err(|e| {
                    format!("slirp4netns could not forward host port {}/{}: {e}", fwd.host_port, fwd.proto)
                })
            });
            match result {
                Ok(id) => added.push(Forward { id: Some(id), ..fwd }),
                Err(e) => {
                    remove_forwards_logged(self, st, &added);
                    return Err(internal(e));
                }
            }
        }
        Ok((added, bound))
    }

    /// Runs `work` inside the shared netns (a fresh empty one when `None`) and the private mount
    /// namespace, then returns to the runtime's mount namespace; the netns stays (see
    /// [`mounts::Inside`]), so only netns-independent work may follow.
    fn inside<T>(&self, netns: Option<&Path>, work: impl FnOnce() -> T) -> Result<T, CniError> {
        self.prepare_dir()?;
        let host_resolv = read_host_resolv_conf();
        let conf = mounts::build_resolv_conf(&host_resolv, self.conf.net.dns.into(), self.conf.enable_ipv6);
        trust::write_atomic(&self.paths.resolv, conf.as_bytes()).map_err(internal)?;
        let resolv_target = match mounts::resolve_first_run_path(Path::new("/"), "/etc/resolv.conf") {
            Ok(t) => Some(PathBuf::from(t)),
            Err(e) => {
                log::warn!("inner plugins keep the host's resolv.conf: {e}");
                None
            }
        };
        let existing = |p: Option<String>| p.filter(|p| !p.is_empty()).map(PathBuf::from).filter(|p| p.exists());
        let input = mounts::PlanInput {
            state_dir: self.paths.dir.clone(),
            xdg_runtime_dir: existing(getenv("XDG_RUNTIME_DIR")),
            container_netns: existing(Some(self.args.netns.clone())),
            run_systemd: Path::new("/run/systemd").is_dir(),
            resolv_target,
            var_target: mounts::var_lib_cni_target(Path::new("/")).map_err(internal)?,
        };
        let steps = mounts::plan(&input);
        let ns = match netns {
            Some(p) => Some(NetNs::open(p).ctx(|| "open the rootless netns")?),
            None => None,
        };
        let path = mounts::inner_path(&getenv("PATH").unwrap_or_default());
        // Single-threaded process: nothing can read the environment concurrently.
        std::env::set_var("PATH", path);
        let entered = mounts::enter(ns.as_ref().map(NetNs::file), &steps);
        let out = match entered {
            Ok(inside) => {
                let out = work();
                drop(inside);
                Ok(out)
            }
            Err(e) => Err(internal(format!("prepare the mount namespace for the inner plugins: {e}"))),
        };
        for file in mounts::transient_files(&input, &steps) {
            let _ = std::fs::remove_file(file);
        }
        out
    }

    fn extras<'b>(
        &self,
        prev: Option<&'b Value>,
        rc: Option<&'b Map<String, Value>>,
        passthrough: &'b [(String, Value)],
    ) -> InnerExtras<'b> {
        InnerExtras { prev_result: prev, runtime_config: rc, passthrough, mtu: Some(self.conf.mtu) }
    }

    fn exec(&self, i: usize, cmd: Command, args: &CmdArgs, conf: &Value) -> Result<Vec<u8>, CniError> {
        let ty = self.conf.plugin_type(i);
        invoke::start(ty, cmd, args, conf.to_string().as_bytes())?.finish_within(INNER_TIMEOUT)
    }

    fn inner_conf(&self, i: usize, extras: &InnerExtras<'_>) -> Value {
        config::inner_config(&self.conf.plugins[i], &self.conf.name, &self.conf.cni_version, extras)
    }

    /// ADD through the chain with `prevResult` chaining; a failure runs DEL for the plugins
    /// that ran (and the failing one) before returning the inner error unchanged.
    fn add_chain(&self) -> Result<Value, CniError> {
        let mut prev = outer_prev_result(self.args);
        for i in 0..self.conf.plugins.len() {
            let conf = self.inner_conf(i, &self.extras(prev.as_ref(), Some(&self.conf.runtime_config), &[]));
            let out = self.exec(i, Command::Add, self.args, &conf).and_then(|out| {
                serde_json::from_slice::<Value>(&out)
                    .ctx(|| format!("plugin {} printed no result", self.conf.plugin_type(i)))
            });
            match out {
                Ok(v) => prev = Some(v),
                Err(e) => {
                    for problem in self.del_chain(self.args, prev.as_ref(), &self.conf.runtime_config, i + 1) {
                        log::warn!("cleanup after failed ADD: {problem}");
                    }
                    return Err(e);
                }
            }
        }
        prev.ok_or_else(|| internal("no inner plugin produced a result"))
    }

    /// DEL through the first `count` plugins in reverse; goes on after errors and returns them.
    fn del_chain(&self, args: &CmdArgs, prev: Option<&Value>, rc: &Map<String, Value>, count: usize) -> Vec<CniError> {
        let mut errors = Vec::new();
        for i in (0..count.min(self.conf.plugins.len())).rev() {
            let conf = self.inner_conf(i, &self.extras(prev, Some(rc), &[]));
            if let Err(e) = self.exec(i, Command::Del, args, &conf) {
                errors.push(e);
            }
        }
        errors
    }

    fn check_chain(&self) -> Result<(), CniError> {
        let prev = outer_prev_result(self.args);
        for i in 0..self.conf.plugins.len() {
            let conf = self.inner_conf(i, &self.extras(prev.as_ref(), Some(&self.conf.runtime_config), &[]));
            self.exec(i, Command::Check, self.args, &conf)?;
        }
        Ok(())
    }

    fn forward_chain(&self, cmd: Command, passthrough: &[(String, Value)]) -> Vec<CniError> {
        let mut errors = Vec::new();
        for i in 0..self.conf.plugins.len() {
            let conf = self.inner_conf(i, &self.extras(None, None, passthrough));
            if let Err(e) = self.exec(i, cmd, self.args, &conf) {
                errors.push(e);
                if cmd == Command::Status {
                    break;
                }
            }
        }
        errors
    }
}

/// The host's resolv.conf, read without blocking on a FIFO and up to a bound.
fn read_host_resolv_conf() -> String {
    let path = Path::new("/etc/resolv.conf");
    match crate::fsutil::read_bounded(path, crate::fsutil::Links::Follow, MAX_RESOLV_CONF) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!("{e}; the inner plugins get only slirp4netns' DNS");
            }
            String::new()
        }
    }
}

/// Removes forwards from the helper and returns what could not be removed. A helper that is
/// gone took its forwards with it; one that is stopped cannot answer, and is not waited for.
fn remove_forwards(s: &Session<'_>, st: &State, forwards: &[Forward]) -> Vec<String> {
    let (carried, forwards): (Vec<Forward>, Vec<Forward>) = forwards.iter().cloned().partition(|f| f.forwarder);
    let mut errors = remove_carried(s, st, &carried);
    errors.extend(remove_helper_forwards(s, st, &forwards));
    errors
}

/// Removes ports from the forwarder; one that is gone took them with it.
fn remove_carried(s: &Session<'_>, st: &State, forwards: &[Forward]) -> Vec<String> {
    if forwards.is_empty() || !s.forwarder_running(st) {
        return Vec::new();
    }
    if let Some(why) = st.forwarder.as_ref().and_then(forwarder::unresponsive) {
        let ports: Vec<String> =
            forwards.iter().map(|f| format!("{}/{} on {}", f.host_port, f.proto, f.host_addr)).collect();
        return vec![format!(
            "host port(s) {} stay open until the forwarder runs again (they are closed then): {why}",
            ports.join(", ")
        )];
    }
    let mut errors = Vec::new();
    for fwd in forwards {
        let Some(id) = fwd.id else { continue };
        if let Err(e) = forwarder::remove(&s.paths.forwarder_socket, id) {
            errors.push(format!(
                "remove host port {}/{} on {} from the forwarder: {e}",
                fwd.host_port, fwd.proto, fwd.host_addr
            ));
            break;
        }
    }
    errors
}

/// Removes forwards from the helper (see [`remove_forwards`]).
fn remove_helper_forwards(s: &Session<'_>, st: &State, forwards: &[Forward]) -> Vec<String> {
    let expect = s.expect_kind(st.params.helper);
    let Some(helper) = st.helper.as_ref().filter(|h| slirp::is_ours(h, &expect)) else { return Vec::new() };
    let ids: Vec<(i64, &Forward)> = forwards.iter().filter_map(|f| f.id.map(|id| (id, f))).collect();
    if ids.is_empty() {
        return Vec::new();
    }
    if let Some(why) = slirp::unresponsive(helper) {
        let ports: Vec<String> = ids.iter().map(|(_, f)| format!("{}/{}", f.host_port, f.proto)).collect();
        return vec![format!(
            "host port(s) {} stay forwarded until slirp4netns runs again (they are removed then): {why}",
            ports.join(", ")
        )];
    }
    let mut errors = Vec::new();
    for (id, fwd) in ids {
        if let Err(e) = slirp::remove_hostfwd(&s.paths.api_socket, id) {
            errors.push(format!("remove forward of host port {}/{} (id {id}): {e}", fwd.host_port, fwd.proto));
            if let Some(why) = slirp::unresponsive(helper) {
                // Stopped meanwhile: one deadline spent is enough.
                errors.push(why);
                break;
            }
        }
    }
    errors
}

/// Logs what [`remove_forwards`] could not do, where nothing better can be done about it.
fn remove_forwards_logged(s: &Session<'_>, st: &State, forwards: &[Forward]) {
    for problem in remove_forwards(s, st, forwards) {
        log::warn!("{problem}");
    }
}

/// The outer `prevResult`, passed on unchanged (it is already in the configuration's version).
fn outer_prev_result(args: &CmdArgs) -> Option<Value> {
    args.config.as_object().and_then(|m| lookup(m, "prevResult")).filter(|v| !v.is_null()).cloned()
}

/// The GC lists as the runtime sent them, for the inner plugins.
fn gc_lists(args: &CmdArgs) -> Vec<(String, Value)> {
    let Some(map) = args.config.as_object() else { return Vec::new() };
    ["cni.dev/valid-attachments", "cni.dev/attachments"]
        .iter()
        .filter_map(|k| lookup(map, k).map(|v| (k.to_string(), v.clone())))
        .collect()
}

impl Plugin for RootlessWrapper {
    fn about(&self) -> String {
        crate::about("rootless-wrapper")
    }

    fn add(&self, args: &CmdArgs) -> Result<CniResult, CniError> {
        let started = Instant::now();
        let conf = WrapperConf::load(args, &getenv)?;
        // Before anything is created: without these rights nothing below can work.
        host::check_privileges().map_err(internal)?;
        let mut s = Session::open(conf, args)?;
        let st = s.load_clearing()?;
        let first = st.is_none();
        let Some(mut st) = s.ensure(st, true)? else { return Err(internal("rootless netns could not be created")) };
        s.adopt(&st);
        // A runtime retrying ADD: the earlier record and its ports are replaced.
        if let Some(old) = st.take_member(&args.container_id, &args.ifname) {
            remove_forwards_logged(&s, &st, &old.forwards);
        }
        let (forwards, bound) = match s.add_forwards(&st) {
            Ok(f) => f,
            Err(e) => {
                finish(&s, &st);
                return Err(e);
            }
        };
        st.members.push(Member {
            container_id: args.container_id.clone(),
            ifname: args.ifname.clone(),
            network: s.conf.name.clone(),
            netns: args.netns.clone(),
            cni_args: args.args.clone(),
            runtime_config: Value::Object(s.conf.runtime_config.clone()),
            result: None,
            forwards,
        });
        // Recorded before the inner plugins run, so a crash in between leaves something GC sees.
        s.save(&st)?;
        if !bound.is_empty() {
            // Started (if need be) from the host's netns: it binds the older ports again.
            if let Err(e) = s.ensure_forwarder(&mut st) {
                if let Some(m) = st.take_member(&args.container_id, &args.ifname) {
                    remove_forwards_logged(&s, &st, &m.forwards);
                }
                finish(&s, &st);
                return Err(e);
            }
        }
        let host_done = started.elapsed();
        let netns = st.netns.clone();
        let outcome = s.inside(Some(&netns), || s.add_chain()).and_then(|r| r);
        // The container has its addresses now: the forwarder can carry its ports.
        let outcome = match outcome {
            Ok(value) => match s.publish(&st, &bound, &value) {
                Ok(()) => Ok(value),
                Err(e) => {
                    let prev = Some(value);
                    let undo = s.inside(Some(&netns), || {
                        s.del_chain(args, prev.as_ref(), &s.conf.runtime_config, s.conf.plugins.len())
                    });
                    for problem in undo.unwrap_or_else(|e| vec![e]) {
                        log::warn!("cleanup after failed ADD: {problem}");
                    }
                    Err(e)
                }
            },
            Err(e) => Err(e),
        };
        drop(bound);
        match outcome {
            Ok(value) => {
                let result = CniResult::parse(value.clone(), &s.conf.cni_version)?;
                if let Some(m) =
                    st.members.iter_mut().find(|m| m.container_id == args.container_id && m.ifname == args.ifname)
                {
                    m.result = Some(value);
                }
                s.save(&st)?;
                log::debug!(
                    "ADD {} ({}): host side {host_done:?}, total {:?}",
                    args.container_id,
                    if first { "first" } else { "joined" },
                    started.elapsed()
                );
                Ok(result)
            }
            Err(e) => {
                if let Some(m) = st.take_member(&args.container_id, &args.ifname) {
                    remove_forwards_logged(&s, &st, &m.forwards);
                }
                finish(&s, &st);
                Err(e)
            }
        }
    }

    fn del(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = WrapperConf::load(args, &getenv)?;
        let mut s = Session::open(conf, args)?;
        let Some(st) = s.load_clearing()? else {
            // Nothing was ever set up here (or it is all gone already): a repeated DEL is fine.
            return Ok(());
        };
        s.adopt(&st);
        host::check_privileges().map_err(internal)?;
        let mut st = match s.ensure(Some(st.clone()), false) {
            Ok(Some(st)) => st,
            Ok(None) => return Ok(()),
            Err(e) => {
                // DEL must make progress: without a helper the inner DEL still works.
                log::warn!("DEL goes on without repairing the helper: {e}");
                st
            }
        };
        let mut errors = Vec::new();
        let mut stuck = Vec::new();
        if let Some(m) = st.take_member(&args.container_id, &args.ifname) {
            stuck = remove_forwards(&s, &st, &m.forwards);
            if !stuck.is_empty() {
                // Tried again by every later call, once the helper answers.
                st.stale_forwards.extend(m.forwards.iter().filter(|f| f.id.is_some() && !f.forwarder).cloned());
            }
        }
        let netns = st.netns.clone();
        let count = s.conf.plugins.len();
        match s
            .inside(Some(&netns), || s.del_chain(args, outer_prev_result(args).as_ref(), &s.conf.runtime_config, count))
        {
            Ok(errs) => errors.extend(errs),
            Err(e) => errors.push(e),
        }
        // The last member leaving stops the helper, and its forwards go with it.
        if !st.members.is_empty() {
            errors.extend(stuck.into_iter().map(internal));
        }
        errors.extend(s.settle(&mut st));
        combine(errors)
    }

    fn check(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = WrapperConf::load(args, &getenv)?;
        host::check_privileges().map_err(internal)?;
        let mut s = Session::open(conf, args)?;
        let st = s.load(false)?;
        let Some(st) = s.ensure(st, false)? else {
            return Err(internal(format!("rootless netns in {} does not exist", s.paths.dir.display())));
        };
        s.adopt(&st);
        let Some(member) = st.member(&args.container_id, &args.ifname) else {
            return Err(internal(format!(
                "container {} interface {} is not attached to the rootless netns",
                args.container_id, args.ifname
            )));
        };
        let helper = st.helper.as_ref().ok_or_else(|| internal("no helper"))?;
        if let Some(why) = slirp::unresponsive(helper) {
            return Err(internal(why));
        }
        let carried: Vec<&Forward> = member.forwards.iter().filter(|f| f.forwarder).collect();
        if !carried.is_empty() {
            if !s.forwarder_running(&st) {
                return Err(internal("the port forwarder is not running"));
            }
            if let Some(why) = st.forwarder.as_ref().and_then(forwarder::unresponsive) {
                return Err(internal(why));
            }
            let active = forwarder::list(&s.paths.forwarder_socket).map_err(internal)?;
            for fwd in carried {
                if !fwd.id.is_some_and(|id| active.contains(&id)) {
                    return Err(internal(format!(
                        "host port {}/{} on {} of container {} is not carried by the port forwarder",
                        fwd.host_port, fwd.proto, fwd.host_addr, args.container_id
                    )));
                }
            }
        }
        if member.forwards.iter().any(|f| !f.forwarder) {
            let active = slirp::list_hostfwd(&s.paths.api_socket).map_err(|e| {
                // It may have been stopped after the check above: say so rather than "no answer".
                internal(slirp::unresponsive(helper).unwrap_or_else(|| format!("list_hostfwd: {e}")))
            })?;
            for fwd in member.forwards.iter().filter(|f| !f.forwarder) {
                if !fwd.id.is_some_and(|id| active.contains(&id)) {
                    return Err(internal(format!(
                        "host port {}/{} of container {} is not forwarded by slirp4netns",
                        fwd.host_port, fwd.proto, args.container_id
                    )));
                }
            }
        }
        let netns = st.netns.clone();
        s.inside(Some(&netns), || s.check_chain())?
    }

    fn gc(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = WrapperConf::load(args, &getenv)?;
        let mut s = Session::open(conf, args)?;
        let Some(st) = s.load(false)? else { return Ok(()) };
        host::check_privileges().map_err(internal)?;
        let Some(mut st) = s.ensure(Some(st), false)? else { return Ok(()) };
        s.adopt(&st);
        let valid = args.net_conf()?.gc_valid_attachments().map(<[_]>::to_vec);
        let Some(valid) = valid else {
            // Without a list nothing can be known to be stale: validating was all there was to do.
            let netns = st.netns.clone();
            return combine(s.inside(Some(&netns), || s.forward_chain(Command::Gc, &gc_lists(args)))?);
        };
        let is_valid = |m: &Member| valid.iter().any(|v| v.container_id == m.container_id && v.ifname == m.ifname);
        let (keep, stale): (Vec<Member>, Vec<Member>) = st.members.drain(..).partition(is_valid);
        st.members = keep;
        let mut errors = Vec::new();
        for m in &stale {
            remove_forwards_logged(&s, &st, &m.forwards);
        }
        let netns = st.netns.clone();
        let lists = gc_lists(args);
        let inner = s.inside(Some(&netns), || {
            let mut errors = Vec::new();
            for m in &stale {
                log::info!("GC: detaching container {} interface {}", m.container_id, m.ifname);
                let member_args = CmdArgs {
                    container_id: m.container_id.clone(),
                    netns: m.netns.clone(),
                    ifname: m.ifname.clone(),
                    args: m.cni_args.clone(),
                    ..args.clone()
                };
                let rc = m.runtime_config.as_object().cloned().unwrap_or_default();
                errors.extend(s.del_chain(&member_args, m.result.as_ref(), &rc, s.conf.plugins.len()));
            }
            if !st.members.is_empty() {
                errors.extend(s.forward_chain(Command::Gc, &lists));
            }
            errors
        });
        match inner {
            Ok(errs) => errors.extend(errs),
            Err(e) => errors.push(e),
        }
        errors.extend(s.settle(&mut st));
        combine(errors)
    }

    fn status(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = WrapperConf::load(args, &getenv)?;
        let mut reasons = Vec::new();
        reasons.extend(host::check_privileges().err());
        reasons.extend(host::check_tun().err());
        if slirp::find_helper(&conf.helper).is_none() {
            reasons.push(format!("helper binary {:?} not found on PATH", conf.helper));
        }
        if !reasons.is_empty() {
            return Err(not_available(format!("rootless-wrapper is not ready: {}", reasons.join("; "))));
        }
        let mut s = Session::open(conf, args)?;
        let st = s.load(true)?;
        let st = s.ensure(st, false).map_err(|e| not_available(format!("rootless-wrapper: broken state: {e}")))?;
        if let Some(st) = &st {
            s.adopt(st);
        }
        let netns = st.as_ref().map(|st| st.netns.clone());
        let inner = s.inside(netns.as_deref(), || s.forward_chain(Command::Status, &[]));
        if st.is_none() {
            // The inner plugins needed the directories; nothing else exists, so nothing stays.
            for problem in s.teardown(None) {
                log::warn!("STATUS cleanup: {problem}");
            }
        }
        combine(inner?)
    }
}

/// Saves the state, or tears everything down when nobody is attached any more.
fn finish(s: &Session<'_>, st: &State) {
    if st.members.is_empty() {
        for problem in s.teardown(Some(st)) {
            log::warn!("teardown: {problem}");
        }
    } else if let Err(e) = s.save(st) {
        log::warn!("{e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_keeps_the_lock_outside_the_directory() {
        let p = Paths::new(Path::new("/run/user/1000/cni-rootless"));
        assert_eq!(p.lock, PathBuf::from("/run/user/1000/cni-rootless.lock"));
        assert!(!p.lock.starts_with(&p.dir));
        for inside in [&p.state, &p.netns, &p.api_socket, &p.log, &p.resolv] {
            assert!(inside.starts_with(&p.dir));
        }
    }

    #[test]
    fn netns_aliases_are_named_after_the_state_directory() {
        let a = alias_name(Path::new("/run/user/1000/cni-rootless"));
        assert!(a.starts_with("cni-rootless-") && a.len() == "cni-rootless-".len() + 16, "{a}");
        assert_eq!(a, alias_name(Path::new("/run/user/1000/cni-rootless")));
        assert_ne!(a, alias_name(Path::new("/run/user/1000/cni-rootless2")));
        let mut p = Paths::new(Path::new("/s"));
        assert_eq!(p.helper_netns(HelperKind::Pasta), Path::new("/s/netns"));
        p.netns_alias = Some(PathBuf::from("/run/user/1000/netns/x"));
        assert_eq!(p.helper_netns(HelperKind::Pasta), Path::new("/run/user/1000/netns/x"));
        assert_eq!(p.helper_netns(HelperKind::Slirp4netns), Path::new("/s/netns"));
    }

    #[test]
    fn errors_combine_keeping_the_first_code() {
        assert!(combine(vec![]).is_ok());
        let one = CniError::new(11, "busy");
        assert_eq!(combine(vec![one.clone()]).unwrap_err(), one);
        let e = combine(vec![CniError::new(7, "a"), CniError::new(999, "b")]).unwrap_err();
        assert_eq!((e.code, e.msg.as_str()), (7, "a; b"));
    }

    #[test]
    fn a_hung_inner_plugin_is_killed_at_its_deadline() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("rootless-inner-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, body) in [("hang", "#!/bin/sh\nexec sleep 30\n"), ("quick", "#!/bin/sh\necho '{}'\n")] {
            std::fs::write(dir.join(name), body).unwrap();
            std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let args = CmdArgs { path: dir.display().to_string(), ..Default::default() };
        let t = Instant::now();
        let running = invoke::start("hang", Command::Add, &args, b"{}").unwrap();
        let e = running.finish_within(Duration::from_millis(300)).unwrap_err();
        assert!(e.msg.contains("did not finish within") && e.msg.contains("hang"), "{e:?}");
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        let running = invoke::start("quick", Command::Add, &args, b"{}").unwrap();
        assert_eq!(running.finish_within(Duration::from_secs(10)).unwrap(), b"{}\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn gc_lists_are_passed_through() {
        let config =
            serde_json::json!({"name": "n", "cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]});
        let args = CmdArgs { config, ..Default::default() };
        let lists = gc_lists(&args);
        assert_eq!(lists.len(), 1);
        assert_eq!(lists[0].0, "cni.dev/valid-attachments");
        assert!(outer_prev_result(&args).is_none());
    }
}
