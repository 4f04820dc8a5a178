//! Child processes with a deadline: feed a child its input, collect its output and, when it has
//! not finished in time, kill its whole process group. Every helper a plugin runs (a delegated
//! plugin, a firewall tool) goes through here, so none can hold a plugin forever.

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// What a child left when it finished in time.
#[derive(Debug)]
pub struct Finished {
    /// Its exit status.
    pub status: ExitStatus,
    /// All it wrote to stdout.
    pub stdout: Vec<u8>,
    /// All it wrote to stderr.
    pub stderr: Vec<u8>,
    /// Whether all input was delivered (a child may exit without reading it: its status tells).
    pub fed: io::Result<()>,
}

/// Why [`wait`] gave up.
#[derive(Debug)]
pub enum WaitError {
    /// The deadline passed; the child's process group was killed and the child reaped.
    TimedOut,
    /// A system call failed while waiting.
    Io(io::Error),
}

/// Reads a deadline in seconds (decimals allowed, above zero) from environment variable `var`,
/// or `default` when it is unset or not a positive number.
pub fn timeout_from_env(var: &str, default: Duration) -> Duration {
    match std::env::var(var).ok().map(|v| v.trim().parse::<f64>()) {
        Some(Ok(secs)) if secs.is_finite() && secs > 0.0 && secs < 1e9 => Duration::from_secs_f64(secs),
        Some(_) => {
            log::warn!("{var} is not a positive number of seconds; using {default:?}");
            default
        }
        None => default,
    }
}

/// Writes to `child`'s stdin what the pipe takes without blocking, so the child can start on it
/// while the caller goes on; returns how many bytes were written. When all of `input` was, the
/// pipe is closed (the child sees end of file); the rest is for [`wait`].
pub fn prefeed(child: &mut Child, input: &[u8]) -> usize {
    let Some(pipe) = child.stdin.as_mut() else { return 0 };
    if set_nonblocking(pipe).is_err() {
        return 0;
    }
    let mut written = 0;
    while written < input.len() {
        match pipe.write(&input[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // Full (the rest waits for `wait`), or the child is gone (its status will tell).
            Err(_) => return written,
        }
    }
    child.stdin = None;
    written
}

/// Feeds `input` to `child` (whose stdin, when piped, is closed afterwards), reads its stdout and
/// stderr to the end and waits for it to exit, all before `deadline`. At the deadline the child's
/// process group is killed: spawn it with `process_group(0)` so that its own children go too.
/// The child is reaped on every path and only then, so the group signalled is always its own.
pub fn wait(child: &mut Child, input: &[u8], deadline: Instant) -> Result<Finished, WaitError> {
    let pid =
        Pid::from_raw(i32::try_from(child.id()).map_err(|_| WaitError::Io(io::Error::other("PID out of range")))?);
    let mut stdin = child.stdin.take().filter(|_| !input.is_empty());
    if let Some(pipe) = &stdin {
        set_nonblocking(pipe).map_err(WaitError::Io)?;
    }
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut written = 0;
    let mut fed = Ok(());
    // Once both output pipes are closed, the child is exiting (or closed them and goes on): its
    // exit is looked for in short steps, without reaping it.
    let mut step = Duration::from_micros(100);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if stdout.is_none() && stderr.is_none() {
            if has_exited(pid).map_err(WaitError::Io)? {
                break;
            }
            if !remaining.is_zero() {
                std::thread::sleep(step.min(remaining));
                step = (step * 2).min(Duration::from_millis(5));
                continue;
            }
        }
        if remaining.is_zero() {
            // The group's leader is our child, not yet reaped, so no other process can have
            // been given its ID.
            let _ = killpg(pid, Signal::SIGKILL);
            let _ = child.wait();
            return Err(WaitError::TimedOut);
        }
        let (mut fds, mut which) = (Vec::with_capacity(3), Vec::with_capacity(3));
        if let Some(p) = &stdin {
            fds.push(PollFd::new(p.as_fd(), PollFlags::POLLOUT));
            which.push(0);
        }
        if let Some(p) = &stdout {
            fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
            which.push(1);
        }
        if let Some(p) = &stderr {
            fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
            which.push(2);
        }
        let ms = PollTimeout::try_from(remaining.max(Duration::from_millis(1))).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, ms) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(WaitError::Io(e.into())),
        }
        let ready: Vec<usize> =
            fds.iter().zip(&which).filter(|(f, _)| f.any().unwrap_or(true)).map(|(_, w)| *w).collect();
        drop(fds);
        for w in ready {
            match w {
                0 => {
                    if let Some(pipe) = stdin.as_mut() {
                        match pipe.write(&input[written..]) {
                            Ok(n) => written += n,
                            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
                            Err(e) => {
                                fed = Err(e);
                                stdin = None;
                            }
                        }
                        if written == input.len() {
                            // Dropping the pipe closes it: the child sees end of file.
                            stdin = None;
                        }
                    }
                }
                1 => drain(&mut stdout, &mut out).map_err(WaitError::Io)?,
                _ => drain(&mut stderr, &mut err).map_err(WaitError::Io)?,
            }
        }
    }
    if stdin.take().is_some() && written < input.len() {
        fed = Err(io::Error::from(io::ErrorKind::BrokenPipe));
    }
    let status = child.wait().map_err(WaitError::Io)?;
    Ok(Finished { status, stdout: out, stderr: err, fed })
}

/// Reads what a ready pipe holds into `buf`; at end of file (or a hang-up) the pipe is dropped.
fn drain<R: Read>(pipe: &mut Option<R>, buf: &mut Vec<u8>) -> io::Result<()> {
    if let Some(r) = pipe.as_mut() {
        let mut chunk = [0u8; 16384];
        match r.read(&mut chunk) {
            Ok(0) => *pipe = None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn set_nonblocking(fd: &impl AsFd) -> io::Result<()> {
    let flags = OFlag::from_bits_retain(fcntl(fd.as_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Whether child `pid` has exited, without reaping it (so its ID stays ours until `wait`).
fn has_exited(pid: Pid) -> io::Result<bool> {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    Ok(!matches!(waitid(Id::Pid(pid), flags)?, WaitStatus::StillAlive))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};

    fn sh(script: &str) -> Child {
        Command::new("sh")
            .args(["-c", script])
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    #[test]
    fn feeds_and_collects_large_streams() {
        let input = vec![b'x'; 1 << 20];
        let done =
            wait(&mut sh("cat; cat >&2 </dev/null; echo e >&2"), &input, Instant::now() + Duration::from_secs(20))
                .unwrap();
        assert!(done.status.success());
        assert_eq!(done.stdout.len(), input.len());
        assert_eq!(done.stderr, b"e\n");
        assert!(done.fed.is_ok());
    }

    #[test]
    fn a_hanging_child_and_its_children_are_killed_at_the_deadline() {
        let t = Instant::now();
        // Neither reads its input (8 MiB does not fit a pipe) nor exits; the background sleep
        // holds stdout open after its parent is gone.
        let input = vec![b'x'; 8 << 20];
        let mut child = sh("sleep 30 & sleep 30");
        let e = wait(&mut child, &input, Instant::now() + Duration::from_millis(300)).unwrap_err();
        assert!(matches!(e, WaitError::TimedOut), "{e:?}");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        // The grandchild went with the group: nothing holds the pipe.
        let mut child = sh("(sleep 30 &) ; echo started");
        let e = wait(&mut child, b"", Instant::now() + Duration::from_millis(300)).unwrap_err();
        assert!(matches!(e, WaitError::TimedOut), "{e:?}");
    }

    #[test]
    fn a_child_that_exits_without_reading_is_reported_by_status() {
        let done = wait(&mut sh("exit 3"), &vec![b'x'; 1 << 20], Instant::now() + Duration::from_secs(10)).unwrap();
        assert_eq!(done.status.code(), Some(3));
    }

    #[test]
    fn timeouts_come_from_the_environment() {
        assert_eq!(timeout_from_env("CNI_TEST_UNSET_TIMEOUT_VAR", Duration::from_secs(60)), Duration::from_secs(60));
    }
}
