//! Runs the netfilter tools: `iptables-save`/`iptables-restore` (and the `ip6tables-` pair) and `nft`.
//!
//! Every write is one process fed a whole batch on stdin, so an operation costs one exec per family
//! however many rules it touches, and each batch is applied atomically by the kernel.

use super::iptables::{Batch, SavedTable};
use super::nft::{Listing, Script};
use super::{Family, FirewallError};
use cni_types::child;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a firewall tool may wait for the xtables lock (`-w`), unless `CNI_FIREWALL_TIMEOUT`
/// (seconds) says otherwise. A tool still running [`KILL_GRACE`] after that is killed.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// The environment variable that overrides [`TIMEOUT`], in seconds.
pub const TIMEOUT_ENV: &str = "CNI_FIREWALL_TIMEOUT";

/// How much longer than its lock wait a tool may run before it is killed, so that a tool that
/// gave up on the lock says so itself.
pub const KILL_GRACE: Duration = Duration::from_secs(5);

/// The lock wait in force ([`TIMEOUT`] or `CNI_FIREWALL_TIMEOUT`).
pub fn timeout() -> Duration {
    child::timeout_from_env(TIMEOUT_ENV, TIMEOUT)
}

/// `-w <seconds>` for the restore tools: the lock wait in whole seconds, at least one.
fn lock_wait_secs(timeout: Duration) -> String {
    timeout.as_secs_f64().ceil().max(1.0).to_string()
}

/// Starts `path args…` in its own process group (so a deadline kills all of it), untranslated.
fn spawn(path: &Path, args: &[&str], stdin: Stdio, command: &str) -> Result<std::process::Child, FirewallError> {
    Command::new(path)
        .args(args)
        // Error texts are matched ("No such file or directory"), so keep them untranslated.
        .env("LC_ALL", "C")
        .process_group(0)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| FirewallError::Spawn { command: command.to_string(), source })
}

/// Waits for a tool until `deadline`, feeding it `input`.
fn wait_tool(
    child: &mut std::process::Child,
    input: &[u8],
    deadline: Instant,
    timeout: Duration,
    command: &str,
) -> Result<child::Finished, FirewallError> {
    child::wait(child, input, deadline).map_err(|e| match e {
        child::WaitError::TimedOut => FirewallError::TimedOut { command: command.to_string(), timeout },
        child::WaitError::Io(source) => FirewallError::Spawn { command: command.to_string(), source },
    })
}

/// Where tools are looked for after `$PATH`: runtimes often exec plugins with a `PATH` that lacks the
/// sbin directories.
const FALLBACK_DIRS: [&str; 2] = ["/usr/sbin", "/sbin"];

/// The table-dump tool of a family.
pub fn save_tool(family: Family) -> &'static str {
    match family {
        Family::V4 => "iptables-save",
        Family::V6 => "ip6tables-save",
    }
}

/// The batch-load tool of a family.
pub fn restore_tool(family: Family) -> &'static str {
    match family {
        Family::V4 => "iptables-restore",
        Family::V6 => "ip6tables-restore",
    }
}

/// Finds an executable by name in `$PATH`, then `/usr/sbin` and `/sbin`.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .chain(FALLBACK_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// Whether a tool exists, for backend selection and for skipping cleanup a host cannot have.
pub fn has_tool(name: &str) -> bool {
    find_tool(name).is_some()
}

/// Runs `tool args…`, feeding `stdin`, and returns its stdout; a non-zero exit is an error carrying
/// stderr. A tool still running [`KILL_GRACE`] after the lock wait ([`timeout`]) is killed.
pub fn run(tool: &str, args: &[&str], stdin: Option<&str>) -> Result<String, FirewallError> {
    run_within(tool, args, stdin, timeout() + KILL_GRACE)
}

/// [`run`] with a deadline of `timeout`.
pub fn run_within(tool: &str, args: &[&str], stdin: Option<&str>, timeout: Duration) -> Result<String, FirewallError> {
    let path = find_tool(tool).ok_or_else(|| FirewallError::ToolNotFound(tool.to_string()))?;
    let command = std::iter::once(tool).chain(args.iter().copied()).collect::<Vec<_>>().join(" ");
    log::debug!("running {command}{}", stdin.map(|s| format!(" with input:\n{s}")).unwrap_or_default());
    let mut child = spawn(&path, args, if stdin.is_some() { Stdio::piped() } else { Stdio::null() }, &command)?;
    let input = stdin.unwrap_or_default().as_bytes();
    // The child is reaped on every path; if it quit without reading its input, its stderr says why.
    let output = wait_tool(&mut child, input, Instant::now() + timeout, timeout, &command)?;
    if !output.status.success() {
        return Err(FirewallError::Command {
            command,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    output.fed.map_err(|source| FirewallError::Spawn { command, source })?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Dumps and parses one table: `iptables-save -t <table>` (or `ip6tables-save`).
pub fn iptables_save(family: Family, table: &str) -> Result<SavedTable, FirewallError> {
    let tool = save_tool(family);
    let text = run(tool, &["-t", table], None)?;
    SavedTable::parse(&text, table)
        .map_err(|reason| FirewallError::Parse { command: format!("{tool} -t {table}"), reason })
}

/// Longest line `iptables-restore` reads as one: it reads lines into a 10240-byte buffer, so a
/// longer one is cut and its tail read as the next command.
pub const MAX_RESTORE_LINE: usize = 10238;

/// Appends one command and its newline to rule text, with every control character in it (a line
/// break inside an argument, a NUL) written as NUL, so [`check_text`] refuses the whole text.
pub fn push_line(text: &mut String, line: &str) {
    let bad = |c: char| c.is_control() && c != '\t';
    if line.contains(bad) {
        text.extend(line.chars().map(|c| if bad(c) { '\0' } else { c }));
    } else {
        text.push_str(line);
    }
    text.push('\n');
}

/// Refuses rule text whose meaning the tool would not see as written, before anything runs: a NUL
/// (where an argument held a control character; the tools stop reading at it, `nft` with success),
/// a carriage return, or (for `iptables-restore`, `max_line` set) a line it would cut in two.
pub fn check_text(tool: &str, text: &str, max_line: Option<usize>) -> Result<(), FirewallError> {
    let refuse = |line: &str, reason: &'static str| FirewallError::Invalid {
        what: "rule text",
        value: format!("{tool}: {}", line.chars().take(120).collect::<String>().replace('\0', "\\0")),
        reason,
    };
    for line in text.split('\n') {
        if line.contains(['\0', '\r']) {
            return Err(refuse(line, "an argument holds a NUL, line break or other control character"));
        }
        if max_line.is_some_and(|max| line.len() > max) {
            return Err(refuse(line, "longer than the 10238 bytes iptables-restore reads as one line"));
        }
    }
    Ok(())
}

/// Loads a batch without touching anything it does not name: `iptables-restore --noflush -w`.
pub fn iptables_restore(family: Family, batch: &str) -> Result<(), FirewallError> {
    check_text(restore_tool(family), batch, Some(MAX_RESTORE_LINE))?;
    PendingRestore::spawn(family)?.load(batch)
}

/// An `iptables-restore --noflush -w <secs>` (or `ip6tables-restore`) started before its batch is
/// known, so its start-up (dynamic linking, extension loading: most of its cost) overlaps the
/// caller's other work. Dropped unused, it gets empty input and changes nothing.
pub struct PendingRestore {
    child: std::process::Child,
    command: String,
    family: Family,
    /// What [`PendingRestore::feed`] gave it, kept to name a failing line.
    batch: String,
    /// The part of the batch the pipe did not take at once, fed while waiting.
    rest: Vec<u8>,
    /// Why the batch was not fed at all ([`check_text`] refused it).
    refused: Option<FirewallError>,
    /// How long it may wait for the xtables lock, and when it started.
    timeout: Duration,
    started: Instant,
    /// Whether it has been waited for.
    reaped: bool,
}

impl PendingRestore {
    /// Starts the restore tool of `family`; it waits for its input.
    pub fn spawn(family: Family) -> Result<PendingRestore, FirewallError> {
        let tool = restore_tool(family);
        let path = find_tool(tool).ok_or_else(|| FirewallError::ToolNotFound(tool.to_string()))?;
        let timeout = timeout();
        let secs = lock_wait_secs(timeout);
        let command = format!("{tool} --noflush -w {secs}");
        let child = spawn(&path, &["--noflush", "-w", &secs], Stdio::piped(), &command)?;
        Ok(PendingRestore {
            child,
            command,
            family,
            batch: String::new(),
            rest: Vec::new(),
            refused: None,
            timeout,
            started: Instant::now(),
            reaped: false,
        })
    }

    /// The family whose tables it loads into.
    pub fn family(&self) -> Family {
        self.family
    }

    /// Feeds `batch`, closes the input and waits; errors name the failing input line.
    pub fn load(mut self, batch: &str) -> Result<(), FirewallError> {
        self.feed(batch);
        self.finish()
    }

    /// Feeds `batch` (what the pipe takes now; the rest while [`PendingRestore::finish`] waits)
    /// so the tool loads it while the caller goes on; dropping waits too.
    pub fn feed(&mut self, batch: &str) {
        if let Err(e) = check_text(restore_tool(self.family), batch, Some(MAX_RESTORE_LINE)) {
            // Closing the input unfed: the tool reads nothing and changes nothing.
            self.child.stdin.take();
            self.refused = Some(e);
            return;
        }
        log::debug!("running {} with input:\n{batch}", self.command);
        let fed = child::prefeed(&mut self.child, batch.as_bytes());
        self.rest = batch.as_bytes()[fed..].to_vec();
        self.batch = batch.to_string();
    }

    /// Waits for the tool; errors name the failing input line.
    pub fn finish(mut self) -> Result<(), FirewallError> {
        let batch = std::mem::take(&mut self.batch);
        let rest = std::mem::take(&mut self.rest);
        let output = self.wait(&rest)?;
        if let Some(refused) = self.refused.take() {
            return Err(refused);
        }
        let command = self.command.clone();
        if !output.status.success() {
            // Drop the usage hint; name the failing input line unless it is the COMMIT, which the
            // nft variant blames for any error in the table.
            let stderr = String::from_utf8_lossy(&output.stderr);
            let mut stderr: String = stderr
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("Try `"))
                .collect::<Vec<_>>()
                .join("; ");
            let blamed = failed_line(&stderr).and_then(|n| batch.lines().nth(n.checked_sub(1)?));
            if let Some(line) = blamed.filter(|l| *l != "COMMIT") {
                stderr = format!("{stderr} (input line: {line})");
            }
            return Err(FirewallError::Command { command, status: output.status.to_string(), stderr });
        }
        output.fed.map_err(|source| FirewallError::Spawn { command, source })
    }

    /// Feeds `rest`, closes the input and waits for the tool, killing it [`KILL_GRACE`] after its
    /// lock wait.
    fn wait(&mut self, rest: &[u8]) -> Result<child::Finished, FirewallError> {
        self.reaped = true;
        let limit = self.timeout + KILL_GRACE;
        wait_tool(&mut self.child, rest, self.started + limit, limit, &self.command)
    }
}

impl Drop for PendingRestore {
    fn drop(&mut self) {
        // Unused: close the input (nothing to load) and reap the child, within the deadline.
        if !self.reaped {
            self.child.stdin.take();
            let _ = self.wait(&[]);
        }
    }
}

/// The input line a restore tool blames: `Error occurred at line: 3` (nft variant) or
/// `iptables-restore: line 3 failed` (legacy).
fn failed_line(stderr: &str) -> Option<usize> {
    let after = stderr.split_once("at line: ").or_else(|| stderr.split_once(": line "))?.1;
    after.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// Applies an nft script as one transaction: `nft -f -`.
pub fn nft_apply(script: &str) -> Result<(), FirewallError> {
    check_text("nft", script, None)?;
    run("nft", &["-f", "-"], Some(script)).map(drop)
}

/// Lists an nft object as JSON (`nft -j list <what…>`); `None` when the table or chain does not exist.
pub fn nft_list(what: &[&str]) -> Result<Option<serde_json::Value>, FirewallError> {
    let mut args = vec!["-j", "list"];
    args.extend_from_slice(what);
    match run("nft", &args, None) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| FirewallError::Parse { command: format!("nft {}", args.join(" ")), reason: e.to_string() }),
        Err(FirewallError::Command { stderr, .. }) if stderr.contains("No such file or directory") => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes iptables chains of `table` and every rule elsewhere that jumps to them, when
/// iptables is the nf_tables variant: the kernel lists the rules over netlink (those of the
/// `sources` chains that exist, or of the whole table) and one nf_tables batch over netlink deletes
/// the jumps by handle and the chains, with no process. Reading the table through `iptables-save`
/// instead grows with every container on the host. `Ok(false)` when this way does not apply (legacy
/// iptables); any error leaves the table as it was, for the caller to fall back on `apply_iptables`.
pub fn remove_chains_nft(
    family: Family,
    table: &str,
    chains: &[String],
    sources: Option<&[&str]>,
) -> Result<bool, FirewallError> {
    use crate::netlink::{nft_chain_exists, nft_rules, nft_table_rules, NftBatch, NftFamily, NftOp};
    if !super::fastpath::enabled() || !super::ipmasq::iptables_is_nft(family) {
        return Ok(false);
    }
    let (nft_fam, fam_name) = match family {
        Family::V4 => (NftFamily::Ip, "ip"),
        Family::V6 => (NftFamily::Ip6, "ip6"),
    };
    let netlink = |what: String| move |source| FirewallError::Spawn { command: format!("netlink {what}"), source };
    let mut existing = Vec::new();
    for chain in chains {
        if nft_chain_exists(nft_fam, table, chain).map_err(netlink(format!("get chain {fam_name} {table} {chain}")))? {
            existing.push(chain.as_str());
        }
    }
    // No chain, no jump to it: the kernel refuses rules that jump to a missing chain.
    if existing.is_empty() {
        return Ok(true);
    }
    let rules = match sources {
        Some(sources) => {
            let mut all = Vec::new();
            for source in sources {
                // A source chain that does not exist holds no jump.
                if !nft_chain_exists(nft_fam, table, source)
                    .map_err(netlink(format!("get chain {fam_name} {table} {source}")))?
                {
                    continue;
                }
                all.extend(
                    nft_rules(nft_fam, table, source).map_err(netlink(format!("list {fam_name} {table} {source}")))?,
                );
            }
            all
        }
        None => nft_table_rules(nft_fam, table).map_err(netlink(format!("list table {fam_name} {table}")))?,
    };
    let mut batch = NftBatch::new(nft_fam);
    let (table, chain) = (table.to_string(), |c: &str| c.to_string());
    for r in rules.iter().filter(|r| !existing.contains(&r.chain.as_str())) {
        if r.jumps.iter().any(|j| existing.contains(&j.as_str())) {
            batch.ops.push(NftOp::DeleteRule { table: table.clone(), chain: r.chain.clone(), handle: r.handle });
        }
    }
    existing.iter().for_each(|c| batch.ops.push(NftOp::FlushChain { table: table.clone(), chain: chain(c) }));
    existing.iter().for_each(|c| batch.ops.push(NftOp::DeleteChain { table: table.clone(), chain: chain(c) }));
    batch.commit().map_err(|source| FirewallError::Netlink {
        what: format!("delete chains {} from {fam_name} {table}", existing.join(", ")),
        source,
    })?;
    Ok(true)
}

/// Dumps `table`, plans a batch from the dump and loads it; `plan` returns `None` when nothing is to
/// be done. A concurrent writer can change the table between dump and load, which fails the batch as
/// a whole (it is atomic), so one failure re-plans from a fresh dump. `tolerate_unreadable` turns a
/// failing dump into "nothing to do" (cleanup on a host that cannot have the table).
pub fn apply_iptables(
    family: Family,
    table: &str,
    tolerate_unreadable: bool,
    plan: impl Fn(&SavedTable) -> Option<Batch>,
) -> Result<(), FirewallError> {
    for attempt in 0..2 {
        let saved = match iptables_save(family, table) {
            Ok(saved) => saved,
            Err(e) if tolerate_unreadable => {
                log::debug!("nothing to clean up in {family:?} table {table}: {e}");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let Some(batch) = plan(&saved) else { return Ok(()) };
        match iptables_restore(family, &batch.render()) {
            Ok(()) => return Ok(()),
            Err(e) if attempt == 0 => log::debug!("re-planning after a failed batch: {e}"),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Lists `what`, plans a script from the listing and applies it, re-planning once after a failure as
/// [`apply_iptables`] does. `tolerate_unsupported` makes a kernel without nf_tables "nothing to do".
pub fn apply_nft(
    what: &[&str],
    tolerate_unsupported: bool,
    plan: impl Fn(&Listing) -> Result<Option<Script>, FirewallError>,
) -> Result<(), FirewallError> {
    for attempt in 0..2 {
        let listing = match Listing::fetch(what) {
            Ok(listing) => listing,
            Err(FirewallError::Command { ref stderr, .. })
                if tolerate_unsupported && stderr.contains("not supported") =>
            {
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let Some(script) = plan(&listing)?.filter(|s| !s.is_empty()) else { return Ok(()) };
        match nft_apply(&script.render()) {
            Ok(()) => return Ok(()),
            Err(e) if attempt == 0 => log::debug!("re-planning after a failed transaction: {e}"),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::iptables::{Batch, Rule};

    #[test]
    fn rule_text_that_would_change_meaning_is_refused() {
        // An argument with a line break would become a second command: rendered as NUL, refused.
        let mut batch = Batch::new("nat");
        batch.append(&Rule::new("CNI-X", ["-d", "10.0.0.1\n-A PREROUTING -p tcp --dport 22 -j DNAT", "-j", "ACCEPT"]));
        let text = batch.render();
        assert_eq!(text.lines().count(), 3, "one command stays one line: {text:?}");
        let e = check_text("iptables-restore", &text, Some(MAX_RESTORE_LINE)).unwrap_err();
        assert!(e.to_string().contains("control character"), "{e}");
        for arg in ["a\0b", "a\rb", "a\u{85}b"] {
            let mut batch = Batch::new("nat");
            batch.append(&Rule::new("CNI-X", ["-d", arg]));
            assert!(check_text("iptables-restore", &batch.render(), Some(MAX_RESTORE_LINE)).is_err(), "{arg:?}");
        }
        // iptables-restore reads 10239 bytes a line: one byte more and the tail is a new command.
        let mut batch = Batch::new("nat");
        batch.append(&Rule::new("CNI-X", ["-m", "comment", "--comment", &"x".repeat(MAX_RESTORE_LINE)]));
        let e = check_text("iptables-restore", &batch.render(), Some(MAX_RESTORE_LINE)).unwrap_err();
        assert!(e.to_string().contains("10238 bytes"), "{e}");
        assert!(check_text("nft", &batch.render(), None).is_ok(), "nft reads lines of any length");
        let mut ok = Batch::new("nat");
        ok.append(&Rule::new("CNI-X", ["-m", "comment", "--comment", "a\tb \"c\"", "-j", "ACCEPT"]));
        assert!(check_text("iptables-restore", &ok.render(), Some(MAX_RESTORE_LINE)).is_ok());
        let mut script = crate::firewall::nft::Script::new();
        script.add_rule("ip", "t", "c", "ip daddr 10.0.0.1\0 accept");
        assert!(check_text("nft", &script.render(), None).is_err());
    }

    #[test]
    fn finds_the_blamed_line() {
        assert_eq!(
            failed_line("iptables-restore v1.8.9 (nf_tables): Chain 'X' does not exist\nError occurred at line: 3\n"),
            Some(3)
        );
        assert_eq!(failed_line("iptables-restore: line 12 failed"), Some(12));
        assert_eq!(failed_line("Another app is currently holding the xtables lock"), None);
    }

    #[test]
    fn finds_tools_outside_path() {
        // `sh` lives in /bin or /usr/bin, which are on every PATH; a missing tool is None.
        assert!(find_tool("sh").is_some());
        assert!(find_tool("no-such-tool-for-cni").is_none());
    }

    #[test]
    fn errors_name_the_command() {
        let err = run("sh", &["-c", "echo oops >&2; exit 3"], None).unwrap_err();
        assert_eq!(err.to_string(), "sh -c echo oops >&2; exit 3 failed (exit status: 3): oops");
        let out = run("sh", &["-c", "cat"], Some("batch\n")).unwrap();
        assert_eq!(out, "batch\n");
        assert!(matches!(run("no-such-tool-for-cni", &[], None), Err(FirewallError::ToolNotFound(_))));
    }

    #[test]
    fn a_hanging_tool_is_killed_at_the_deadline() {
        let t = Instant::now();
        // It neither reads its input nor exits, and has started a helper of its own.
        let input = "x".repeat(1 << 20);
        let err =
            run_within("sh", &["-c", "sleep 30 & sleep 30"], Some(&input), Duration::from_millis(300)).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(matches!(err, FirewallError::TimedOut { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "sh -c sleep 30 & sleep 30 did not finish within 300ms and was killed (CNI_FIREWALL_TIMEOUT sets the deadline, in seconds)"
        );
        assert_eq!(lock_wait_secs(Duration::from_millis(300)), "1");
        assert_eq!(lock_wait_secs(Duration::from_secs(60)), "60");
    }
}
