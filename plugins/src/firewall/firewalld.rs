//! The `firewall` plugin's firewalld backend: each attachment address becomes a source
//! (`<ip>/32` or `<ip>/128`, spelled as the reference spells it) of a firewalld zone, added and
//! removed over D-Bus (`org.fedoraproject.FirewallD1.zone`); `ingressPolicy` isolation stays raw
//! iptables, as in the reference. Unlike the reference, CHECK believes
//! `querySource`'s answer, DEL reports the failures that matter, and every exchange with the bus
//! (connect, authentication, each call) runs under one deadline, so an unanswering bus cannot hang
//! the plugin.
//!
//! The bus is the system bus as libdbus finds it: `$DBUS_SYSTEM_BUS_ADDRESS`, else
//! [`DEFAULT_SYSTEM_BUS_ADDRESS`]. zbus is driven from this thread (its internal executor thread
//! is off); `async-io` keeps its reactor thread, so nothing here may run before a single-threaded
//! namespace switch.

use super::forward::{ForwardAccept, ForwardBackend, DEFAULT_FIREWALLD_ZONE};
use super::iptables::forward::IptablesForward;
use super::FirewallError;
use futures_lite::future;
use std::future::Future;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The well-known bus name firewalld owns while it runs.
pub const BUS_NAME: &str = "org.fedoraproject.FirewallD1";
/// firewalld's main object.
pub const OBJECT_PATH: &str = "/org/fedoraproject/FirewallD1";
/// The interface of `addSource`, `removeSource` and `querySource`.
pub const ZONE_INTERFACE: &str = "org.fedoraproject.FirewallD1.zone";
/// The variable naming the system bus, as libdbus reads it.
pub const SYSTEM_BUS_ENV: &str = "DBUS_SYSTEM_BUS_ADDRESS";
/// The system bus when [`SYSTEM_BUS_ENV`] is unset.
pub const DEFAULT_SYSTEM_BUS_ADDRESS: &str = "unix:path=/run/dbus/system_bus_socket";
/// How long one operation (connect plus its calls) may take by default: libdbus's reply timeout.
pub const TIMEOUT: Duration = Duration::from_secs(25);
/// How long the default-backend probe may take: it runs on every call that names no backend, so a
/// stuck bus costs at most this before the plugin falls back to iptables.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest zone name firewalld accepts (its `max_zone_name_len`: 28-character chains minus
/// `POST_` and `_allow`).
pub const MAX_ZONE_LEN: usize = 17;

const DBUS_NAME: &str = "org.freedesktop.DBus";
const DBUS_PATH: &str = "/org/freedesktop/DBus";

/// firewalld's error codes the backend tolerates (its exceptions carry them first in the message).
const ZONE_ALREADY_SET: &str = "ZONE_ALREADY_SET";
const UNKNOWN_SOURCE: &str = "UNKNOWN_SOURCE";
const ZONE_CONFLICT: &str = "ZONE_CONFLICT";
const INVALID_ZONE: &str = "INVALID_ZONE";

/// The deadline of one operation: `$CNI_FIREWALL_TIMEOUT` seconds (the firewall layer's one
/// knob), else [`TIMEOUT`].
pub fn timeout() -> Duration {
    cni_types::child::timeout_from_env(super::tools::TIMEOUT_ENV, TIMEOUT)
}

/// The system bus address: `$DBUS_SYSTEM_BUS_ADDRESS` when set and not empty, else
/// [`DEFAULT_SYSTEM_BUS_ADDRESS`].
pub fn system_bus_address() -> String {
    match std::env::var(SYSTEM_BUS_ENV) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => DEFAULT_SYSTEM_BUS_ADDRESS.to_string(),
    }
}

/// Checks a `firewalldZone` the way firewalld checks zone names (ASCII letters, digits, `_`, `-`
/// and at most one inner `/`; at most [`MAX_ZONE_LEN`] characters before the `/`), so a bad name
/// is refused before anything changes. The empty string is not a zone: the plugin's decoder
/// turns an unset key into [`DEFAULT_FIREWALLD_ZONE`] first.
pub fn check_zone(zone: &str) -> Result<(), FirewallError> {
    let invalid = |reason| Err(FirewallError::Invalid { what: "firewalldZone", value: zone.to_string(), reason });
    if zone.is_empty() {
        return invalid("must not be empty");
    }
    if !zone.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '/')) {
        return invalid("may hold only ASCII letters, digits, '_', '-' and '/'");
    }
    if zone.starts_with('/') || zone.ends_with('/') || zone.matches('/').count() > 1 {
        return invalid("may hold one '/' only between two names");
    }
    let name = zone.split('/').next().unwrap_or(zone);
    if name.len() > MAX_ZONE_LEN {
        return invalid("is longer than the 17 characters firewalld allows");
    }
    Ok(())
}

/// The source string for `ip`: `<ip>/32` or `<ip>/128`, exactly as the reference sends it (so a
/// host can switch suites with sources in place).
pub fn source_of(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}/32"),
        IpAddr::V6(v6) => format!("{v6}/128"),
    }
}

/// Whether firewalld runs on the system bus: the name [`BUS_NAME`] has an owner. Any failure
/// (no bus, no answer within [`PROBE_TIMEOUT`]) means no; this is the reference's rule for a
/// configuration that names no backend.
pub fn firewalld_running() -> bool {
    firewalld_running_on(&system_bus_address())
}

fn firewalld_running_on(address: &str) -> bool {
    // The common host has no system bus socket at all: say so without starting a reactor.
    if let Some(path) = unix_path(address) {
        if !std::path::Path::new(path).exists() {
            log::debug!("firewalld probe: no system bus at {path}");
            return false;
        }
    }
    match Bus::connect(address, PROBE_TIMEOUT) {
        Ok(bus) => bus.name_has_owner().unwrap_or_else(|e| {
            log::debug!("firewalld probe: {e}");
            false
        }),
        Err(e) => {
            log::debug!("firewalld probe: {e}");
            false
        }
    }
}

/// The socket path of a single `unix:path=` address (its other keys, such as `guid`, dropped).
fn unix_path(address: &str) -> Option<&str> {
    if address.contains(';') {
        return None;
    }
    address.strip_prefix("unix:path=").map(|rest| rest.split(',').next().unwrap_or(rest))
}

/// The firewalld backend for one zone.
#[derive(Debug, Clone)]
pub struct Firewalld {
    zone: String,
    address: String,
    timeout: Duration,
}

impl Firewalld {
    /// A backend for `zone` (checked by [`check_zone`]; empty means [`DEFAULT_FIREWALLD_ZONE`])
    /// on the system bus, with the deadline of [`timeout`].
    pub fn new(zone: &str) -> Result<Firewalld, FirewallError> {
        Firewalld::on_bus(zone, &system_bus_address(), timeout())
    }

    /// [`Firewalld::new`] on the bus at `address` with its own deadline per operation.
    pub fn on_bus(zone: &str, address: &str, timeout: Duration) -> Result<Firewalld, FirewallError> {
        let zone = if zone.is_empty() { DEFAULT_FIREWALLD_ZONE } else { zone };
        check_zone(zone)?;
        Ok(Firewalld { zone: zone.to_string(), address: address.to_string(), timeout })
    }

    /// The zone sources go to.
    pub fn zone(&self) -> &str {
        &self.zone
    }

    fn connect(&self) -> Result<Bus, FirewallError> {
        Bus::connect(&self.address, self.timeout)
    }

    /// Connects and makes sure firewalld owns its name, so a missing firewalld is reported as
    /// such rather than as a failed call.
    fn connect_running(&self) -> Result<Bus, FirewallError> {
        let bus = self.connect()?;
        if !bus.name_has_owner()? {
            return Err(bus.not_running());
        }
        Ok(bus)
    }
}

impl ForwardBackend for Firewalld {
    /// Adds each address as a source of the zone (one already there is fine), then, as the
    /// reference does, the `ingressPolicy` isolation rules with raw iptables. A failure removes
    /// the sources this call added, so a failed ADD leaves the zone as it was.
    fn add(&self, attachment: &ForwardAccept) -> Result<(), FirewallError> {
        let bus = self.connect_running()?;
        let mut added: Vec<String> = Vec::new();
        let mut failure = None;
        for ip in &attachment.addresses {
            let source = source_of(ip);
            match bus.zone_call("addSource", &self.zone, &source) {
                Ok(_) => added.push(source),
                Err(CallError::Firewalld(code, _)) if code == ZONE_ALREADY_SET => {}
                Err(e) => {
                    failure = Some(e.into_error("addSource", &self.zone, &source, &bus));
                    break;
                }
            }
        }
        let failure = match failure {
            Some(e) => e,
            None => match IptablesForward.add_isolation(attachment) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            },
        };
        for source in added.iter().rev() {
            if let Err(undo) = bus.zone_call("removeSource", &self.zone, source) {
                log::warn!("rolling back: {}", undo.into_error("removeSource", &self.zone, source, &bus));
            }
        }
        Err(failure)
    }

    /// Asks `querySource` for each address and believes the answer: a source missing from the
    /// zone fails, naming the address and the zone. Then verifies the isolation rules ADD wrote.
    fn check(&self, attachment: &ForwardAccept) -> Result<(), FirewallError> {
        let bus = self.connect_running()?;
        for ip in &attachment.addresses {
            let source = source_of(ip);
            let present = bus
                .query_source(&self.zone, &source)
                .map_err(|e| e.into_error("querySource", &self.zone, &source, &bus))?;
            if !present {
                return Err(FirewallError::Check(format!(
                    "firewalld zone {:?} has no source {source} (it was removed since ADD)",
                    self.zone
                )));
            }
        }
        IptablesForward.check_isolation(attachment)
    }

    /// Removes each address from the zone. A source that is not there (not set, in another
    /// zone, or the zone is gone) is nothing to remove; so is everything when firewalld is not
    /// running (its runtime sources went with it). Other failures are reported after every
    /// address has been tried.
    fn remove(&self, _attachment: &ForwardAccept, addresses: &[IpAddr]) -> Result<(), FirewallError> {
        if addresses.is_empty() {
            return Ok(());
        }
        let bus = match self.connect() {
            Ok(bus) => bus,
            Err(e) if is_absent_bus(&e) => {
                log::info!("firewalld: {e}; no source to remove");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if !bus.name_has_owner()? {
            log::info!("{}; no source to remove", bus.not_running());
            return Ok(());
        }
        let mut errors = Vec::new();
        for ip in addresses {
            let source = source_of(ip);
            match bus.zone_call("removeSource", &self.zone, &source) {
                Ok(_) => {}
                Err(CallError::Firewalld(code, msg))
                    if [UNKNOWN_SOURCE, ZONE_CONFLICT, INVALID_ZONE].contains(&code.as_str()) =>
                {
                    log::debug!("removeSource({}, {source}): {code}: {msg}", self.zone);
                }
                Err(e) => errors.push(e.into_error("removeSource", &self.zone, &source, &bus)),
            }
        }
        crate::errors::collect(errors)
    }

    /// The bus answers and firewalld owns its name.
    fn usable(&self) -> Result<(), FirewallError> {
        self.connect_running().map(drop)
    }
}

/// Whether a connect error means there is no bus at all (no socket, nobody listening).
fn is_absent_bus(e: &FirewallError) -> bool {
    matches!(e, FirewallError::Firewalld { absent: true, .. })
}

/// One connection to a bus and the deadline every exchange on it shares.
struct Bus {
    conn: zbus::Connection,
    address: String,
    deadline: Instant,
    timeout: Duration,
}

/// Why one call failed: firewalld's own refusal (its error code and message), or the bus.
enum CallError {
    Firewalld(String, String),
    Bus(String),
    TimedOut,
}

impl CallError {
    fn into_error(self, method: &str, zone: &str, source: &str, bus: &Bus) -> FirewallError {
        let call = format!("{method}(zone {zone:?}, source {source})");
        let reason = match self {
            CallError::Firewalld(code, msg) if code == INVALID_ZONE => {
                format!("firewalld has no zone {zone:?} ({msg})")
            }
            CallError::Firewalld(code, msg) if code == ZONE_CONFLICT => {
                format!("{source} is a source of another zone ({code}: {msg})")
            }
            CallError::Firewalld(code, msg) => format!("{code}: {msg}"),
            CallError::Bus(msg) => msg,
            CallError::TimedOut => bus.timed_out_reason(),
        };
        FirewallError::Firewalld { call, reason, absent: false }
    }
}

impl Bus {
    /// Connects to `address` and says Hello, all within `timeout`.
    fn connect(address: &str, timeout: Duration) -> Result<Bus, FirewallError> {
        let deadline = Instant::now() + timeout;
        let fail = |reason: String, absent: bool| FirewallError::Firewalld {
            call: format!("connect to the system bus {address}"),
            reason,
            absent,
        };
        // The system bus is a local socket; a tcp: address would also make zbus resolve host
        // names through glibc's NSS, which a static build must never reach.
        if !address.starts_with("unix:") {
            return Err(fail(format!("only unix: addresses are supported (from ${SYSTEM_BUS_ENV})"), false));
        }
        let builder = zbus::connection::Builder::address(address)
            .map_err(|e| fail(format!("bad address (from ${SYSTEM_BUS_ENV} or the default): {e}"), false))?
            .internal_executor(false);
        let conn = match async_io::block_on(within(deadline, builder.build())) {
            Some(Ok(conn)) => conn,
            Some(Err(e)) => {
                let absent = match &e {
                    zbus::Error::InputOutput(io) | zbus::Error::Connection(io, _) => {
                        matches!(io.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused)
                    }
                    _ => false,
                };
                // zbus's message repeats the address; say only what happened.
                let reason = match &e {
                    zbus::Error::Connection(io, _) => io.to_string(),
                    other => other.to_string(),
                };
                return Err(fail(reason, absent));
            }
            None => {
                return Err(fail(
                    format!(
                        "no answer within {timeout:?} ({} sets the deadline, in seconds)",
                        super::tools::TIMEOUT_ENV
                    ),
                    false,
                ))
            }
        };
        Ok(Bus { conn, address: address.to_string(), deadline, timeout })
    }

    /// Runs one method call under the connection's deadline, driving zbus's executor here.
    fn call<B>(&self, dest: &str, path: &str, iface: &str, method: &str, body: &B) -> Result<zbus::Message, CallError>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        let executor = self.conn.executor();
        let work = future::or(self.conn.call_method(Some(dest), path, Some(iface), method, body), async {
            loop {
                executor.tick().await;
            }
        });
        match async_io::block_on(within(self.deadline, work)) {
            None => Err(CallError::TimedOut),
            Some(Ok(reply)) => Ok(reply),
            Some(Err(zbus::Error::MethodError(name, msg, _))) => {
                let msg = msg.unwrap_or_default();
                // firewalld's exceptions say "<CODE>: <detail>"; other errors keep their name.
                match msg.split_once(':') {
                    Some((code, detail))
                        if !code.is_empty() && code.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') =>
                    {
                        Err(CallError::Firewalld(code.to_string(), detail.trim().to_string()))
                    }
                    _ if msg.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') && !msg.is_empty() => {
                        Err(CallError::Firewalld(msg, String::new()))
                    }
                    _ => Err(CallError::Bus(format!("{name}: {msg}"))),
                }
            }
            Some(Err(e)) => Err(CallError::Bus(e.to_string())),
        }
    }

    fn zone_call(&self, method: &str, zone: &str, source: &str) -> Result<zbus::Message, CallError> {
        self.call(BUS_NAME, OBJECT_PATH, ZONE_INTERFACE, method, &(zone, source))
    }

    fn query_source(&self, zone: &str, source: &str) -> Result<bool, CallError> {
        let reply = self.zone_call("querySource", zone, source)?;
        reply.body().deserialize::<bool>().map_err(|e| CallError::Bus(format!("unexpected reply: {e}")))
    }

    /// Asks the bus whether [`BUS_NAME`] has an owner.
    fn name_has_owner(&self) -> Result<bool, FirewallError> {
        let fail = |reason: String| FirewallError::Firewalld {
            call: format!("NameHasOwner({BUS_NAME}) on {}", self.address),
            reason,
            absent: false,
        };
        let reply = self.call(DBUS_NAME, DBUS_PATH, DBUS_NAME, "NameHasOwner", &(BUS_NAME,)).map_err(|e| match e {
            CallError::TimedOut => fail(self.timed_out_reason()),
            CallError::Firewalld(code, msg) => fail(format!("{code}: {msg}")),
            CallError::Bus(msg) => fail(msg),
        })?;
        reply.body().deserialize::<bool>().map_err(|e| fail(format!("unexpected reply: {e}")))
    }

    fn not_running(&self) -> FirewallError {
        FirewallError::Firewalld {
            call: format!("look up {BUS_NAME} on {}", self.address),
            reason: "firewalld is not running (nobody owns its bus name)".to_string(),
            absent: true,
        }
    }

    fn timed_out_reason(&self) -> String {
        format!("no answer within {:?} ({} sets the deadline, in seconds)", self.timeout, super::tools::TIMEOUT_ENV)
    }
}

/// `fut`'s output, or `None` once `deadline` has passed.
async fn within<T>(deadline: Instant, fut: impl Future<Output = T>) -> Option<T> {
    future::or(async { Some(fut.await) }, async {
        async_io::Timer::at(deadline).await;
        None
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_names_follow_firewalld() {
        for ok in ["trusted", "public", "cni_zone-1", "a/b", "seventeen-chars-x", "seventeen-chars-x/more"] {
            check_zone(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["", "/a", "a/", "a/b/c", "eighteen-chars-xyz", "tru sted", "zone;rm", "zöne", "a\"b"] {
            let err = check_zone(bad).unwrap_err().to_string();
            assert!(err.contains("firewalldZone"), "{bad}: {err}");
        }
    }

    #[test]
    fn sources_are_spelled_like_the_reference() {
        assert_eq!(source_of(&"10.88.0.5".parse().unwrap()), "10.88.0.5/32");
        assert_eq!(source_of(&"fd00::a:5".parse().unwrap()), "fd00::a:5/128");
    }

    #[test]
    fn reads_a_unix_path_address() {
        assert_eq!(unix_path(DEFAULT_SYSTEM_BUS_ADDRESS), Some("/run/dbus/system_bus_socket"));
        assert_eq!(unix_path("unix:path=/tmp/b,guid=0123"), Some("/tmp/b"));
        assert_eq!(unix_path("unix:abstract=x"), None);
        assert_eq!(unix_path("unix:path=/a;unix:path=/b"), None);
    }

    #[test]
    fn only_local_buses_are_used() {
        let err = Bus::connect("tcp:host=localhost,port=1", Duration::from_secs(1)).err().unwrap().to_string();
        assert!(err.contains("only unix: addresses"), "{err}");
        assert!(!firewalld_running_on("tcp:host=localhost,port=1"));
    }

    #[test]
    fn empty_zone_means_trusted() {
        let fw = Firewalld::on_bus("", DEFAULT_SYSTEM_BUS_ADDRESS, TIMEOUT).unwrap();
        assert_eq!(fw.zone(), "trusted");
        assert!(Firewalld::on_bus("bad zone", DEFAULT_SYSTEM_BUS_ADDRESS, TIMEOUT).is_err());
    }

    #[test]
    fn a_missing_bus_is_not_firewalld_and_fails_fast() {
        let dir = std::env::temp_dir().join(format!("cni-fwd-unit-{}", std::process::id()));
        let address = format!("unix:path={}/no-such-socket", dir.display());
        let t0 = Instant::now();
        let err = Bus::connect(&address, Duration::from_secs(5)).err().unwrap();
        assert!(is_absent_bus(&err), "{err}");
        assert!(err.to_string().contains("no-such-socket"), "{err}");
        assert!(t0.elapsed() < Duration::from_secs(2));
        // DEL with no bus removes nothing and succeeds; CHECK and STATUS say why they cannot work.
        let fw = Firewalld::on_bus("trusted", &address, Duration::from_secs(5)).unwrap();
        let att = ForwardAccept {
            container_id: "c".into(),
            ifname: "eth0".into(),
            addresses: vec!["10.1.0.2".parse().unwrap()],
            admin_chain: "CNI-ADMIN".into(),
            ingress: Default::default(),
            bridge: None,
        };
        fw.remove(&att, &att.addresses).unwrap();
        assert!(fw.check(&att).is_err());
        assert!(fw.usable().is_err());
    }

    #[test]
    fn an_unanswering_bus_hits_the_deadline() {
        // A socket that accepts connections and never speaks: authentication cannot finish.
        let dir = std::env::temp_dir().join(format!("cni-fwd-unit-mute-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bus");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let address = format!("unix:path={}", path.display());
        let t0 = Instant::now();
        let err = Bus::connect(&address, Duration::from_millis(400)).err().unwrap();
        let elapsed = t0.elapsed();
        drop(listener);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(err.to_string().contains("no answer within"), "{err}");
        assert!(!is_absent_bus(&err));
        assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    }
}
