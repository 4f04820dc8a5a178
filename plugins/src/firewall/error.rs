//! The rule layer's one error type: every variant names the command, table or object involved.

use crate::errors::Join;

/// Errors of the firewall module; each names the command or object involved.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// `ipMasqBackend` is neither `iptables` nor `nftables`.
    #[error("unknown ipmasq backend {}", super::names::go_quote(.0))]
    UnknownBackend(String),
    /// A tool is missing from `PATH`, `/usr/sbin` and `/sbin`.
    #[error("{0} not found in $PATH, /usr/sbin or /sbin")]
    ToolNotFound(String),
    /// A tool could not be started or fed.
    #[error("failed to run {command}: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A tool did not finish in time and was killed.
    #[error("{command} did not finish within {timeout:?} and was killed ({env} sets the deadline, in seconds)")]
    TimedOut {
        /// The command line.
        command: String,
        /// How long it was given.
        timeout: std::time::Duration,
        /// The environment variable that sets the deadline.
        env: &'static str,
    },
    /// A tool exited unsuccessfully.
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its trimmed stderr.
        stderr: String,
    },
    /// A tool's output was not what it prints.
    #[error("cannot parse output of {command}: {reason}")]
    Parse {
        /// The command line.
        command: String,
        /// What was wrong.
        reason: String,
    },
    /// A name or value cannot be written in the tool's syntax.
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        /// Which parameter.
        what: &'static str,
        /// Its value.
        value: String,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// The kernel refused or failed an nf_tables netlink exchange.
    #[error("nf_tables {what}: {source}")]
    Netlink {
        /// The operation and the object it concerns.
        what: String,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
    },
    /// An exchange with firewalld over D-Bus failed, was refused or was not answered in time.
    #[error("firewalld {call}: {reason}")]
    Firewalld {
        /// The call, with its zone and source, or the connection attempt.
        call: String,
        /// What went wrong.
        reason: String,
        /// Whether there is no bus or no firewalld at all (nothing to undo on DEL).
        absent: bool,
    },
    /// CHECK found the installed rules differ from what ADD installs.
    #[error("{0}")]
    Check(String),
    /// No backend was configured and neither works on this host.
    #[error("neither iptables nor nftables is usable: iptables: {iptables}; nftables: {nftables}")]
    NoBackend {
        /// Why iptables does not work.
        iptables: Box<FirewallError>,
        /// Why nftables does not work.
        nftables: Box<FirewallError>,
    },
    /// One step of an operation failed; `what` names the step (`could not tear down nftables port
    /// forwarding`).
    #[error("{what}: {source}")]
    Step {
        /// The step.
        what: String,
        /// Why it failed.
        #[source]
        source: Box<FirewallError>,
    },
    /// Several independent steps failed (teardown and GC continue after an error).
    #[error("{}", join_errors(.0))]
    Multiple(Vec<FirewallError>),
}

fn join_errors(errors: &[FirewallError]) -> String {
    errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")
}

impl FirewallError {
    /// Names the step that failed: `what: <self>`.
    pub fn step(self, what: impl Into<String>) -> FirewallError {
        FirewallError::Step { what: what.into(), source: Box::new(self) }
    }
}

impl Join for FirewallError {
    fn join(errors: Vec<FirewallError>) -> FirewallError {
        FirewallError::Multiple(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors::collect;

    #[test]
    fn joins_errors() {
        let err = collect(vec![FirewallError::ToolNotFound("nft".into()), FirewallError::Check("rule missing".into())])
            .unwrap_err();
        assert_eq!(err.to_string(), "nft not found in $PATH, /usr/sbin or /sbin; rule missing");
        assert!(collect(Vec::<FirewallError>::new()).is_ok());
    }
}
