//! The netlink layer's error: what was asked, of which object, and the kernel's errno.

use std::fmt::Display;
use std::io;

/// A netlink request that failed: the operation and its object (`create veth eth0 (peer
/// veth1a2b3c4d)`, `add address 10.0.0.2/24 to link 7`, `delete route 10.0.0.0/24 dev 7`), and
/// the errno kept as the `io::Error` source, so callers still test
/// [`NetlinkError::raw_os_error`] (EEXIST, ENODEV, …) or [`NetlinkError::kind`]. A request that
/// only knows a link's index names it `link 7` until the caller, who knows the name, says
/// [`NetlinkError::on`].
#[derive(Debug, thiserror::Error)]
#[error("{verb} {object}: {source}")]
pub struct NetlinkError {
    verb: String,
    object: Object,
    #[source]
    source: io::Error,
}

/// What a request was about.
#[derive(Debug)]
enum Object {
    /// A link known only by its index.
    Link(u32),
    /// Anything named: a link name, a table, `links`.
    Named(String),
}

impl Display for Object {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Object::Link(index) => write!(f, "link {index}"),
            Object::Named(name) => f.write_str(name),
        }
    }
}

impl NetlinkError {
    /// `source` while doing `verb` to `object` (`"create bridge"`, `"cni0"`).
    pub fn new(verb: impl Display, object: impl Display, source: io::Error) -> NetlinkError {
        NetlinkError { verb: verb.to_string(), object: Object::Named(object.to_string()), source }
    }

    /// `source` while doing `verb` to the link with `index`.
    pub(super) fn link(verb: impl Display, index: u32, source: io::Error) -> NetlinkError {
        NetlinkError { verb: verb.to_string(), object: Object::Link(index), source }
    }

    /// Names the link a request knew only by its index: `set up link 7` becomes `set up eth0`.
    #[must_use]
    pub fn on(mut self, name: &str) -> NetlinkError {
        if matches!(self.object, Object::Link(_)) {
            self.object = Object::Named(name.to_string());
        }
        self
    }

    /// The bare cause, for a message that already names the operation and object in the
    /// reference's words (`failed to add route '…': <cause>`).
    pub fn cause(&self) -> &io::Error {
        &self.source
    }

    /// The kernel's errno, if the kernel refused (rather than a decode error or a timeout).
    pub fn raw_os_error(&self) -> Option<i32> {
        self.source.raw_os_error()
    }

    /// The kind of the underlying `io::Error` (`TimedOut` when the kernel did not answer).
    pub fn kind(&self) -> io::ErrorKind {
        self.source.kind()
    }
}

impl From<NetlinkError> for io::Error {
    /// Keeps the errno's kind, so `io::Result` callers still tell `NotFound` or `TimedOut`.
    fn from(e: NetlinkError) -> io::Error {
        io::Error::new(e.kind(), e)
    }
}

/// The link an index-only request is about.
pub(super) struct LinkIndex(pub u32);

/// What a request is about: a link's index or anything named.
pub(super) trait IntoObject {
    /// The error of `verb` on this object.
    fn error(self, verb: String, source: io::Error) -> NetlinkError;
}

impl IntoObject for LinkIndex {
    fn error(self, verb: String, source: io::Error) -> NetlinkError {
        NetlinkError::link(verb, self.0, source)
    }
}

impl<T: Display> IntoObject for T {
    fn error(self, verb: String, source: io::Error) -> NetlinkError {
        NetlinkError::new(verb, self, source)
    }
}

/// Names an `io::Error` of a request: `r.map_err(op("set up", LinkIndex(7)))`.
pub(super) fn op(verb: impl Display, object: impl IntoObject) -> impl FnOnce(io::Error) -> NetlinkError {
    let verb = verb.to_string();
    move |e| object.error(verb, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_object_and_keeps_the_errno() {
        let r: io::Result<()> = Err(io::Error::from_raw_os_error(nix::libc::EEXIST));
        let e = r.map_err(op("create veth", "eth0")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(nix::libc::EEXIST));
        assert_eq!(e.to_string(), format!("create veth eth0: {}", io::Error::from_raw_os_error(nix::libc::EEXIST)));
        assert_eq!(e.cause().raw_os_error(), Some(nix::libc::EEXIST));
        assert_eq!(io::Error::from(e).kind(), io::ErrorKind::AlreadyExists);
        let e = op("set up", LinkIndex(7))(io::Error::other("x"));
        assert_eq!(e.to_string(), "set up link 7: x");
        assert_eq!(e.on("eth0").to_string(), "set up eth0: x");
        assert_eq!(op("delete", "cni0")(io::Error::other("x")).on("eth0").to_string(), "delete cni0: x");
    }
}
