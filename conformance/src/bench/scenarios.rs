//! The scenarios. Each builds one fresh fake host per participant and alternates the
//! participants' order from one iteration to the next, so machine noise hits all of them alike.

use super::nets::{Added, Lane, Leftovers, Net, Who, NET_NAME};
use super::proc::{check_stop, exec_measured, timed};
use anyhow::{bail, Result};
use conformance::{build_config, Suite};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// What one participant measured in one scenario (times in ms).
#[derive(Debug, Clone, Default)]
pub struct LaneTimes {
    /// `ours`, `reference` or `floor`.
    pub who: &'static str,
    /// The warm-up ADD of container 0, which creates the bridge (not in `add`).
    pub first_add: Option<f64>,
    /// Successful ADDs.
    pub add: Vec<f64>,
    /// (containers already attached, ms) of every successful ADD.
    pub add_series: Vec<(f64, f64)>,
    /// Per plugin type of a chain: (containers already attached, ms the plugin took) of every
    /// successful ADD, from the driver's per-plugin timing (empty for one-plugin lists).
    pub plugin_series: BTreeMap<String, Vec<(f64, f64)>>,
    /// Successful CHECKs.
    pub check: Vec<f64>,
    /// Successful DELs.
    pub del: Vec<f64>,
    /// Failed operations.
    pub errors: usize,
    /// The first failure, for the notes.
    pub first_error: Option<String>,
    /// Addresses handed out by successful ADDs.
    pub ips: Vec<String>,
    /// Wall time of all ADD rounds (concurrent scenario).
    pub wall_add_ms: f64,
    /// Wall time of all DEL rounds (concurrent scenario).
    pub wall_del_ms: f64,
    /// What DEL left behind, when checked.
    pub leftovers: Option<Leftovers>,
}

impl LaneTimes {
    fn new(who: &'static str) -> LaneTimes {
        LaneTimes { who, ..Default::default() }
    }

    fn fail(&mut self, what: &str, e: &anyhow::Error) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{what}: {e:#}"));
        }
    }

    fn record_add(&mut self, i: usize, r: Result<Added>, ms: f64) {
        match r {
            Ok(added) => {
                self.add.push(ms);
                self.add_series.push((i as f64, ms));
                self.ips.extend(added.ip);
                for (ty, ms) in added.plugins {
                    self.plugin_series.entry(ty).or_default().push((i as f64, ms));
                }
            }
            Err(e) => self.fail(&format!("ADD bench-{i}"), &e),
        }
    }

    fn record(&mut self, what: &str, i: usize, r: Result<()>, ms: f64, into: fn(&mut LaneTimes) -> &mut Vec<f64>) {
        match r {
            Ok(()) => into(self).push(ms),
            Err(e) => self.fail(&format!("{what} bench-{i}"), &e),
        }
    }

    /// The ADD times of plugin `ty` alone (ms), in order.
    pub fn plugin_add(&self, ty: &str) -> Vec<f64> {
        self.plugin_series.get(ty).map(|v| v.iter().map(|p| p.1).collect()).unwrap_or_default()
    }

    /// Distinct addresses among successful ADDs.
    pub fn unique_ips(&self) -> usize {
        self.ips.iter().collect::<std::collections::BTreeSet<_>>().len()
    }
}

/// Participant indices for iteration `i`, rotated so each goes first in turn.
fn rotation(i: usize, k: usize) -> impl Iterator<Item = usize> {
    (0..k).map(move |x| (x + i) % k)
}

/// ADD of container 0 in every lane: it creates the bridge (and the first firewall chains), a
/// cost paid once per host, so it is reported apart from the steady state.
fn warm_up(lanes: &mut [Lane], times: &mut [LaneTimes]) -> Result<()> {
    for (lane, t) in lanes.iter_mut().zip(times.iter_mut()) {
        lane.grow_to(1)?;
        let (r, ms) = timed(|| lane.add(0));
        match r {
            Ok(added) => {
                t.first_add = Some(ms);
                t.ips.extend(added.ip);
            }
            Err(e) => t.fail("ADD bench-0 (warm-up)", &e),
        }
    }
    Ok(())
}

fn lanes(net: &'static Net, whos: &[Who]) -> Result<(Vec<Lane>, Vec<LaneTimes>)> {
    let lanes = whos.iter().map(|w| Lane::new(w.clone(), net)).collect::<Result<Vec<_>>>()?;
    let times = lanes.iter().map(|l| LaneTimes::new(l.label())).collect();
    Ok((lanes, times))
}

fn check_leftovers(lanes: &[Lane], times: &mut [LaneTimes]) -> Result<()> {
    for (l, t) in lanes.iter().zip(times.iter_mut()) {
        t.leftovers = Some(l.leftovers()?);
    }
    Ok(())
}

/// A warm-up container, then `n` containers one after another: all ADDs (they accumulate on
/// one bridge; container `i` finds `i` attached), then all CHECKs, then all DELs, then a look
/// for leftovers. The reference attaches only the first `reference_n` of them (for scenarios
/// where it takes seconds per container); the others run all `n`.
pub fn sequential(net: &'static Net, whos: &[Who], n: usize, reference_n: usize) -> Result<Vec<LaneTimes>> {
    let (mut lanes, mut times) = lanes(net, whos)?;
    let k = lanes.len();
    let count: Vec<usize> = lanes.iter().map(|l| if l.is_reference() { n.min(reference_n) } else { n }).collect();
    warm_up(&mut lanes, &mut times)?;
    for i in 1..=n {
        check_stop()?;
        for j in rotation(i, k).filter(|&j| i <= count[j]) {
            lanes[j].grow_to(i + 1)?;
            let (r, ms) = timed(|| lanes[j].add(i));
            times[j].record_add(i, r, ms);
        }
    }
    for i in 1..=n {
        check_stop()?;
        for j in rotation(i, k).filter(|&j| i <= count[j] && lanes[j].can_check()) {
            let (r, ms) = timed(|| lanes[j].check(i));
            times[j].record("CHECK", i, r, ms, |t| &mut t.check);
        }
    }
    for i in 1..=n {
        check_stop()?;
        for j in rotation(i, k).filter(|&j| i <= count[j]) {
            let (r, ms) = timed(|| lanes[j].del(i));
            times[j].record("DEL", i, r, ms, |t| &mut t.del);
        }
    }
    for (lane, t) in lanes.iter().zip(times.iter_mut()) {
        if let Err(e) = lane.del(0) {
            t.fail("DEL bench-0 (warm-up)", &e);
        }
    }
    check_leftovers(&lanes, &mut times)?;
    Ok(times)
}

type Outcome<T> = (usize, Result<T>, f64);

/// Runs `op` for every container of `range` from `callers` threads; returns the wall time.
fn parallel<T: Send>(
    lane: &Lane,
    range: Range<usize>,
    callers: usize,
    op: impl Fn(&Lane, usize) -> Result<T> + Sync,
) -> (f64, Vec<Outcome<T>>) {
    let next = AtomicUsize::new(range.start);
    let done: Mutex<Vec<Outcome<T>>> = Mutex::new(Vec::new());
    let ((), wall) = timed(|| {
        std::thread::scope(|s| {
            for _ in 0..callers {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= range.end || check_stop().is_err() {
                            break;
                        }
                        let (r, ms) = timed(|| op(lane, i));
                        mine.push((i, r, ms));
                    }
                    done.lock().unwrap_or_else(|e| e.into_inner()).extend(mine);
                });
            }
        })
    });
    let mut all = done.into_inner().unwrap_or_else(|e| e.into_inner());
    all.sort_by_key(|o| o.0);
    (wall, all)
}

/// `n` containers attached by `callers` concurrent callers, in `rounds` rounds whose order of
/// participants alternates; then all DELs the same way, then a look for leftovers.
pub fn concurrent(net: &'static Net, whos: &[Who], n: usize, callers: usize, rounds: usize) -> Result<Vec<LaneTimes>> {
    let (mut lanes, mut times) = lanes(net, whos)?;
    let k = lanes.len();
    let per = n.div_ceil(rounds.max(1));
    let ranges: Vec<Range<usize>> = (0..n).step_by(per.max(1)).map(|s| s..(s + per).min(n)).collect();
    for (r, range) in ranges.iter().enumerate() {
        for lane in &mut lanes {
            lane.grow_to(range.end)?;
        }
        for j in rotation(r, k) {
            check_stop()?;
            let (wall, outcomes) = parallel(&lanes[j], range.clone(), callers, |l, i| l.add(i));
            times[j].wall_add_ms += wall;
            for (i, res, ms) in outcomes {
                times[j].record_add(i, res, ms);
            }
        }
    }
    for (r, range) in ranges.iter().enumerate() {
        for j in rotation(r + 1, k) {
            check_stop()?;
            let (wall, outcomes) = parallel(&lanes[j], range.clone(), callers, |l, i| l.del(i));
            times[j].wall_del_ms += wall;
            for (i, res, ms) in outcomes {
                times[j].record("DEL", i, res, ms, |t| &mut t.del);
            }
        }
    }
    check_leftovers(&lanes, &mut times)?;
    Ok(times)
}

/// A warm-up container, then `n` containers accumulating on one bridge (namespaces made
/// `batch` at a time, untimed); then DEL of the last `del_window` with all the others still
/// attached. The rest goes with the fake host: deleting its namespaces removes links and
/// rules, its guard the store.
pub fn growth(net: &'static Net, whos: &[Who], n: usize, batch: usize, del_window: usize) -> Result<Vec<LaneTimes>> {
    let (mut lanes, mut times) = lanes(net, whos)?;
    let k = lanes.len();
    warm_up(&mut lanes, &mut times)?;
    for start in (1..=n).step_by(batch.max(1)) {
        let end = (start + batch).min(n + 1);
        for lane in &mut lanes {
            check_stop()?;
            lane.grow_to(end)?;
        }
        for i in start..end {
            check_stop()?;
            for j in rotation(i, k) {
                let (r, ms) = timed(|| lanes[j].add(i));
                times[j].record_add(i, r, ms);
            }
        }
    }
    for i in ((n + 1).saturating_sub(del_window).max(1)..=n).rev() {
        check_stop()?;
        for j in rotation(i, k) {
            let (r, ms) = timed(|| lanes[j].del(i));
            times[j].record("DEL", i, r, ms, |t| &mut t.del);
        }
    }
    Ok(times)
}

/// VERSION start-up of one plugin, per suite.
#[derive(Debug, Clone)]
pub struct Start {
    /// Plugin name.
    pub plugin: String,
    /// (suite, ms samples, peak RSS KiB samples).
    pub per_suite: Vec<(&'static str, Vec<f64>, Vec<f64>)>,
}

/// `CNI_COMMAND=VERSION` of every plugin some suite ships, `n` times each, interleaved across
/// suites and plugins; plus `/bin/true` started the same way as the baseline.
pub fn start_cost(suites: &[Suite], plugins: &[&str], n: usize) -> Result<(Vec<Start>, Vec<f64>)> {
    let mut starts: Vec<Start> = plugins
        .iter()
        .filter(|p| suites.iter().any(|s| s.has(p)))
        .map(|p| Start {
            plugin: p.to_string(),
            per_suite: suites.iter().filter(|s| s.has(p)).map(|s| (s.name, Vec::new(), Vec::new())).collect(),
        })
        .collect();
    let truth = std::path::Path::new("/bin/true");
    let mut true_ms = Vec::new();
    let stdin = br#"{"cniVersion":"1.0.0"}"#;
    for i in 0..n {
        check_stop()?;
        for start in &mut starts {
            let k = start.per_suite.len();
            for j in rotation(i, k) {
                let (name, ms, rss) = &mut start.per_suite[j];
                let Some(suite) = suites.iter().find(|s| s.name == *name) else { continue };
                let m = exec_measured(&suite.plugin(&start.plugin), &[], &[("CNI_COMMAND", "VERSION")], stdin, None)?;
                if !m.out.ok() {
                    bail!("{} {} VERSION failed: {}", suite.name, start.plugin, m.out.stderr.trim());
                }
                ms.push(m.ms);
                rss.push(m.maxrss_kib);
            }
        }
        true_ms.push(exec_measured(truth, &[], &[], b"", None)?.ms);
    }
    Ok((starts, true_ms))
}

/// Peak RSS samples (KiB) of one operation, per suite.
#[derive(Debug, Clone)]
pub struct Memory {
    /// What ran.
    pub figure: &'static str,
    /// (suite, samples).
    pub per_suite: Vec<(&'static str, Vec<f64>)>,
}

/// Peak RSS of a bridge ADD (with its host-local and iptables children) and DEL, of host-local
/// alone and of loopback, `reps` times per suite, interleaved.
pub fn memory(net: &'static Net, suites: &[Suite], reps: usize) -> Result<(Vec<Memory>, Vec<String>)> {
    let whos: Vec<Who> = suites.iter().cloned().map(Who::Suite).collect();
    let (mut lanes, _) = lanes(net, &whos)?;
    let figures = ["bridge ADD (tree)", "bridge DEL (tree)", "host-local ADD", "loopback ADD"];
    let mut mem: Vec<Memory> = figures
        .iter()
        .map(|f| Memory { figure: f, per_suite: lanes.iter().map(|l| (l.label(), Vec::new())).collect() })
        .collect();
    let mut notes = Vec::new();
    for lane in &mut lanes {
        lane.grow_to(reps)?;
    }
    let k = lanes.len();
    for i in 0..reps {
        check_stop()?;
        for j in rotation(i, k) {
            let lane = &lanes[j];
            let suite_has = |p: &str| matches!(&lane.who, Who::Suite(s) if s.has(p));
            let list = lane.list();
            let plugin = &list["plugins"][0];
            let mut run = |fig: Option<usize>, ty: &str, cmd: &str, conf: &Value| -> Option<Value> {
                if !suite_has(ty) {
                    return None;
                }
                match lane.invoke_measured(ty, cmd, i, conf) {
                    Ok(m) if m.out.ok() => {
                        if let Some(f) = fig {
                            mem[f].per_suite[j].1.push(m.maxrss_kib);
                        }
                        serde_json::from_str(&m.out.stdout).ok().or(Some(Value::Null))
                    }
                    Ok(m) => {
                        notes.push(format!("{}: {ty} {cmd} failed: {}", lane.label(), m.out.stdout.trim()));
                        None
                    }
                    Err(e) => {
                        notes.push(format!("{}: {ty} {cmd}: {e:#}", lane.label()));
                        None
                    }
                }
            };
            let none = Map::new();
            let add = build_config(plugin, NET_NAME, "1.0.0", None, &none);
            if let Some(result) = run(Some(0), "bridge", "ADD", &add) {
                run(Some(1), "bridge", "DEL", &build_config(plugin, NET_NAME, "1.0.0", Some(&result), &none));
            }
            let hl_dir = lane.dir().join("ipam-hl").display().to_string();
            let hl = json!({"cniVersion": "1.0.0", "name": "benchhl", "type": "bridge",
                "ipam": {"type": "host-local", "dataDir": hl_dir, "ranges": [[{"subnet": "10.89.0.0/16"}]]}});
            if run(Some(2), "host-local", "ADD", &hl).is_some() {
                run(None, "host-local", "DEL", &hl);
            }
            let lo = json!({"cniVersion": "1.0.0", "name": "benchlo", "type": "loopback"});
            if run(Some(3), "loopback", "ADD", &lo).is_some() {
                run(None, "loopback", "DEL", &lo);
            }
        }
    }
    Ok((mem, notes))
}
