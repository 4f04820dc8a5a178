//! Process execution with the measurements `std` does not give: wall time and the peak RSS of
//! the child and every descendant it reaped (`wait4`'s rusage, as GNU time's `%M`).

use anyhow::{Context, Result};
use conformance::{Netns, Output};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// One measured run.
#[derive(Debug)]
pub struct Measured {
    /// What the process printed and how it exited.
    pub out: Output,
    /// Wall time from spawn to reap, in milliseconds.
    pub ms: f64,
    /// Peak resident set of the process tree, in KiB.
    pub maxrss_kib: f64,
}

/// Runs `binary args` like [`conformance::exec`] (empty environment plus `PATH` and `env`,
/// `stdin` fed, optionally inside `netns`) and reaps it with `wait4` to read its peak RSS.
pub fn exec_measured(
    binary: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: &[u8],
    netns: Option<&Netns>,
) -> Result<Measured> {
    let mut cmd = conformance::plugin_command(binary, args, env, netns)?;
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("spawn {}", binary.display()))?;
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin);
    }
    let (stdout, stderr) = conformance::read_outputs(&mut child);
    let pid = libc::pid_t::try_from(child.id()).context("child pid out of range")?;
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `pid` is our child, not yet reaped (std never waits on it: we consume `child`
        // without calling wait); both out-pointers are valid for the call.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e).context("wait4");
        }
    }
    let ms = start.elapsed().as_secs_f64() * 1e3;
    drop(child);
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 };
    Ok(Measured { out: Output { code, stdout, stderr }, ms, maxrss_kib: usage.ru_maxrss as f64 })
}

/// Runs `f` and returns its result with its wall time in milliseconds.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let start = Instant::now();
    let r = f();
    (r, start.elapsed().as_secs_f64() * 1e3)
}

/// The first of `/usr/sbin`, `/sbin`, `/usr/bin`, `/bin` that holds `tool`.
pub fn tool(name: &str) -> Result<PathBuf> {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} not found in /usr/sbin, /sbin, /usr/bin or /bin"))
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Turns SIGINT and SIGTERM into a flag that [`check_stop`] reports, so the scenario returns
/// an error and every fake-host guard is dropped (an abrupt exit would leave namespaces).
pub fn install_stop_handler() -> Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let sa = SigAction::new(SigHandler::Handler(on_signal), SaFlags::SA_RESTART, SigSet::empty());
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(sig, &sa) }.with_context(|| format!("install {sig} handler"))?;
    }
    Ok(())
}

/// Fails once SIGINT or SIGTERM arrived.
pub fn check_stop() -> Result<()> {
    if STOP.load(Ordering::SeqCst) {
        anyhow::bail!("interrupted");
    }
    Ok(())
}
