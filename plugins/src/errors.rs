//! Errors in one style across the plugins' library.
//!
//! Each layer has one error type that names the object it failed on and keeps the cause (for
//! the system layers, the errno as an `io::Error` source, so callers still test
//! `raw_os_error()` or `kind()`). A plugin turns each into the [`CniError`] it reports by `?`,
//! through the one `From` impl below, which picks the code: the errno → CNI code mapping lives
//! here and nowhere else.
//!
//! | Layer | Error type | Names | CNI code |
//! |---|---|---|---|
//! | [`crate::netlink`] (link, address, route, tc) | [`NetlinkError`] | the operation and its object: link name (or `link <index>` until [`NetlinkError::on`] names it), address, route | 999 for every errno (EEXIST, ENODEV, EPERM, a timeout), as the reference reports them |
//! | [`crate::sysctl`] | [`SysctlError`] | the file under `/proc/sys` and the value | 999 |
//! | [`crate::lock`] | [`LockError`] | the lock file | 999 (also a lock held past [`crate::lock::LOCK_WAIT`]) |
//! | [`crate::ns`] | [`NsError`] | the namespace path | 999, as the reference's "failed to open netns" |
//! | [`crate::firewall`] | [`FirewallError`] | the command, table or chain | 7 for an unknown backend name, 50 when neither backend works on the host, 999 otherwise |
//! | [`crate::veth`] | [`CniError`] directly | composes the layers above; its reference texts (`failed to add route '…': <cause>`) use [`NetlinkError::cause`] so the object is not said twice | 999 |
//!
//! Two more ways into a [`CniError`], for what no layer names:
//! * [`Ctx::ctx`] says what was being done (`open netlink socket in /run/netns/x: <error>`) and
//!   reports an operational failure (999) — for context the error cannot know (the namespace,
//!   the step's purpose), never to restate an object the error already names;
//! * [`internal`] when the error's own text says everything.
//!
//! DEL and GC go on after a failure and report every one at the end: [`Collector`] (joined by
//! `; `; host-local's DEL keeps the reference's `;` without a space).

use crate::firewall::FirewallError;
use crate::lock::LockError;
use crate::netlink::NetlinkError;
use crate::ns::NsError;
use crate::sysctl::SysctlError;
use cni_types::error::{INVALID_NETWORK_CONFIG, PLUGIN_NOT_AVAILABLE};
use cni_types::CniError;
use std::fmt::Display;

/// An operational failure (code 999) whose message is the error's own text.
pub fn internal(e: impl Display) -> CniError {
    CniError::internal(e)
}

/// Context for a layer's error at the plugin boundary.
pub trait Ctx<T> {
    /// The error as an operational failure (code 999), prefixed with what was being done:
    /// `<what>: <error>`.
    fn ctx<W: Display>(self, what: impl FnOnce() -> W) -> Result<T, CniError>;
}

impl<T, E: Display> Ctx<T> for Result<T, E> {
    fn ctx<W: Display>(self, what: impl FnOnce() -> W) -> Result<T, CniError> {
        self.map_err(|e| CniError::internal(format!("{}: {e}", what())))
    }
}

impl From<FirewallError> for CniError {
    /// A backend name that is not one, or a configured value the backend cannot write (an admin
    /// chain named like one of its own, a zone name, rule text), is the configuration's fault (7);
    /// a host where neither backend works cannot serve the plugin (50); anything else is an
    /// operational failure (999).
    fn from(e: FirewallError) -> CniError {
        let code = match e {
            FirewallError::UnknownBackend(_) | FirewallError::Invalid { .. } => INVALID_NETWORK_CONFIG,
            FirewallError::NoBackend { .. } => PLUGIN_NOT_AVAILABLE,
            _ => cni_types::error::INTERNAL,
        };
        CniError::new(code, e.to_string())
    }
}

impl From<NsError> for CniError {
    /// A namespace that cannot be opened is an operational failure (999), as in the reference.
    fn from(e: NsError) -> CniError {
        CniError::internal(e)
    }
}

impl From<NetlinkError> for CniError {
    /// Every kernel refusal over netlink is an operational failure (999), as in the reference
    /// (its netlink library's errors reach skel as plain errors): EEXIST on a link name, ENODEV,
    /// EPERM without CAP_NET_ADMIN, a timeout. The message names the operation and its object.
    fn from(e: NetlinkError) -> CniError {
        CniError::internal(e)
    }
}

impl From<SysctlError> for CniError {
    /// A sysctl that cannot be read or written is an operational failure (999), as in the
    /// reference; the message names the file and the value.
    fn from(e: SysctlError) -> CniError {
        CniError::internal(e)
    }
}

impl From<LockError> for CniError {
    /// A lock that cannot be taken (or was held past the deadline) is an operational failure
    /// (999), as in the reference; the message names the lock file.
    fn from(e: LockError) -> CniError {
        CniError::internal(e)
    }
}

/// Errors that fold into one: how [`collect`] reports several.
pub trait Join: Sized {
    /// One error standing for all of `errors` (at least two).
    fn join(errors: Vec<Self>) -> Self;
}

impl Join for String {
    fn join(errors: Vec<String>) -> String {
        errors.join("; ")
    }
}

/// Folds the errors of independent steps into one result: none is success, one is itself,
/// several are [`Join::join`]ed.
pub fn collect<E: Join>(mut errors: Vec<E>) -> Result<(), E> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => Err(E::join(errors)),
    }
}

/// What a DEL or GC could not do: each step runs whatever the others did, its error is kept, and
/// [`Collector::finish`] reports them all (`E = String` for a plugin, [`FirewallError`] inside
/// the rule layer).
#[derive(Debug)]
pub struct Collector<E = String> {
    errors: Vec<E>,
}

impl<E> Default for Collector<E> {
    fn default() -> Self {
        Collector { errors: Vec::new() }
    }
}

impl<E: Join> Collector<E> {
    /// No error yet.
    pub fn new() -> Self {
        Collector::default()
    }

    /// Keeps an error.
    pub fn push(&mut self, error: impl Into<E>) {
        self.errors.push(error.into());
    }

    /// Keeps the error of `result`, if any, and returns its value otherwise.
    pub fn keep<T>(&mut self, result: Result<T, impl Into<E>>) -> Option<T> {
        result.map_err(|e| self.push(e)).ok()
    }

    /// Whether nothing failed so far.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// Success, or every kept error in one ([`collect`]).
    pub fn finish(self) -> Result<(), E> {
        collect(self.errors)
    }
}

impl Collector<String> {
    /// Keeps the error of `result` prefixed with what the step was: `<what>: <error>`.
    pub fn step<W: Display>(&mut self, what: impl FnOnce() -> W, result: Result<(), impl Display>) {
        if let Err(e) = result {
            self.errors.push(format!("{}: {e}", what()));
        }
    }

    /// Success, or every kept error as one operational failure (code 999), joined by `; `: what
    /// a plugin's DEL or GC reports.
    pub fn into_cni(self) -> Result<(), CniError> {
        self.finish().map_err(CniError::internal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_and_goes_on() {
        let mut errors = Collector::<String>::new();
        assert!(errors.keep(Ok::<_, String>(3)) == Some(3) && errors.is_empty());
        assert_eq!(errors.keep(Err::<(), _>("first")), None);
        errors.step(|| "delete veth0", Err::<(), _>("no such device"));
        errors.step(|| "never", Ok::<(), String>(()));
        let e = errors.into_cni().unwrap_err();
        assert_eq!((e.code, e.msg.as_str()), (999, "first; delete veth0: no such device"));
        assert!(Collector::<String>::new().into_cni().is_ok());
        assert_eq!(collect(vec!["only".to_string()]), Err("only".to_string()));
    }

    #[test]
    fn layers_convert_with_their_codes() {
        let r: Result<(), std::io::Error> = Err(std::io::Error::other("gone"));
        let e = r.ctx(|| format!("look up {}", "eth0")).unwrap_err();
        assert_eq!((e.code, e.msg.as_str()), (999, "look up eth0: gone"));
        assert_eq!(CniError::from(FirewallError::UnknownBackend("x".into())).code, 7);
        let none = FirewallError::NoBackend {
            iptables: Box::new(FirewallError::ToolNotFound("iptables-restore".into())),
            nftables: Box::new(FirewallError::Check("no".into())),
        };
        assert_eq!(CniError::from(none).code, 50);
        assert_eq!(CniError::from(FirewallError::Check("rule missing".into())), CniError::internal("rule missing"));
    }

    #[test]
    fn system_layers_name_their_object_and_report_999() {
        let eexist = || std::io::Error::from_raw_os_error(nix::libc::EEXIST);
        let e = CniError::from(NetlinkError::new("create bridge", "cni0", eexist()));
        assert_eq!((e.code, e.msg), (999, format!("create bridge cni0: {}", eexist())));
        let e = CniError::from(crate::sysctl::ensure("net.ipv4.conf.cnit-none-such.arp_notify", "1").unwrap_err());
        assert_eq!(e.code, 999);
        assert!(e.msg.starts_with("write 1 to /proc/sys/net/ipv4/conf/cnit-none-such/arp_notify: "), "{}", e.msg);
        let path = std::path::PathBuf::from("/nonexistent-cnit/lock");
        let e = CniError::from(crate::lock::FileLock::acquire(&path).unwrap_err());
        assert_eq!(e.code, 999);
        assert!(e.msg.starts_with("lock /nonexistent-cnit/lock: "), "{}", e.msg);
    }
}
