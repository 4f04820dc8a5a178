//! `cni-bench`: ours against the reference plugins, driven the way a runtime drives them.
//!
//! Every scenario runs in private fake hosts (one per scenario and participant) and alternates
//! the participants' order per iteration so machine noise hits all of them alike. It prints a
//! Markdown table with the ratio reference / ours per figure, writes `latest.json`,
//! `growth.svg`, `portmap-growth.svg` and `portmap-alone-growth.svg`, and never fails because
//! of a time. See `BENCHMARKS.md` at the workspace root.
//!
//! `cni-bench [--quick] [--ours DIR] [--reference DIR] [--out DIR] [--only a,b]`; the `release`
//! scenario checks the release targets against the newest reference builds (`--ours` a release).

// A command-line tool whose job is printing figures.
#![allow(clippy::print_stdout)]

#[path = "../bench/mod.rs"]
mod bench;

use anyhow::{bail, Context, Result};
use bench::nets::{net, Who};
use bench::proc::{install_stop_handler, tool};
use bench::report::{growth_svg, Report, Row, Series, Unit, TIMED_PLUGIN};
use bench::rootless::RootlessCounts;
use bench::{scenarios, stats};
use conformance::{run, Suite};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Every plugin either suite may ship; absent ones are skipped with a note.
const PLUGINS: &[&str] =
    &["bridge", "host-local", "loopback", "portmap", "ptp", "bandwidth", "tuning", "firewall", "rootless-wrapper"];
/// Networks of the sequential scenario, by key (see `bench::nets::NETS`).
const SEQUENTIAL: &[&str] = &["bridge-masq", "bridge-masq-nft", "bridge", "ptp-masq", "loopback"];
/// Networks of the concurrent scenario.
const CONCURRENT: &[&str] = &["bridge-masq", "bridge"];
/// Network of the growth scenario.
const GROWTH: &str = "bridge-masq";
/// Networks of the portmap scenario (sequential, 1, 10 and 100 ports per container).
const PORTMAP: &[&str] = &["portmap-1", "portmap-10", "portmap-100"];
/// The portmap network whose reference runs are capped (`Counts::portmap_reference_100`).
const PORTMAP_CAPPED: &str = "portmap-100";
/// Network of the portmap growth scenario.
const PORTMAP_GROWTH: &str = "portmap-10";
/// Network of the k3s chain scenario (sequential, every plugin of one suite).
const K3S: &str = "k3s";
/// Network of the podman chain scenario (sequential, every plugin of one suite).
const PODMAN: &str = "podman";
/// Network whose operations are measured for peak memory.
const MEMORY: &str = "bridge-masq";
/// Scenario names `--only` accepts.
const SCENARIOS: &[&str] = &[
    "start",
    "size",
    "memory",
    "release",
    "sequential",
    "concurrent",
    "portmap",
    "k3s",
    "podman",
    "tuning",
    "nftables",
    "rootless",
    "growth",
    "portmap-growth",
];
/// Plugins only the newest reference builds may ship, compared in the release scenario.
const HEAD_ONLY: &[&str] = &["ptp", "firewall", "tuning", "bandwidth"];
/// Where Debian's `netavark` package installs the binary podman runs.
const NETAVARK: &str = "/usr/lib/podman/netavark";

/// How many of everything.
#[derive(Debug, Clone, Copy)]
struct Counts {
    sequential: usize,
    window: usize,
    concurrent: usize,
    callers: usize,
    rounds: usize,
    growth: usize,
    growth_batch: usize,
    growth_window: usize,
    start: usize,
    memory: usize,
    /// Containers per portmap network (sequential).
    portmap: usize,
    /// Containers the reference attaches with 100 ports each (it takes 1-3 s per ADD).
    portmap_reference_100: usize,
    portmap_window: usize,
    /// Containers with 10 ports each accumulating in the portmap growth scenario.
    portmap_growth: usize,
    portmap_growth_window: usize,
    /// The rootless-wrapper scenario.
    rootless: RootlessCounts,
}

const FULL: Counts = Counts {
    sequential: 100,
    window: 50,
    concurrent: 100,
    callers: 8,
    rounds: 2,
    growth: 1000,
    growth_batch: 50,
    growth_window: 50,
    start: 200,
    memory: 5,
    portmap: 50,
    portmap_reference_100: 50,
    portmap_window: 25,
    portmap_growth: 100,
    portmap_growth_window: 10,
    rootless: RootlessCounts { containers: 20, cycles: 5, mib: 200, runs: 3 },
};

const QUICK: Counts = Counts {
    sequential: 10,
    window: 5,
    concurrent: 16,
    callers: 8,
    rounds: 2,
    growth: 40,
    growth_batch: 20,
    growth_window: 10,
    start: 20,
    memory: 2,
    portmap: 4,
    portmap_reference_100: 2,
    portmap_window: 2,
    portmap_growth: 10,
    portmap_growth_window: 3,
    rootless: RootlessCounts { containers: 3, cycles: 2, mib: 10, runs: 1 },
};

struct Args {
    quick: bool,
    ours: PathBuf,
    reference: Option<PathBuf>,
    out: PathBuf,
    only: Vec<String>,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

fn parse_args() -> Result<Args> {
    let root = workspace_root();
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
    let mut a = Args {
        quick: false,
        ours: target.join("release"),
        reference: Some(PathBuf::from(conformance::REFERENCE_DIR)),
        out: PathBuf::new(),
        only: Vec::new(),
    };
    let mut out = None;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--quick" => a.quick = true,
            "--ours" => a.ours = PathBuf::from(value()?),
            "--reference" => a.reference = Some(PathBuf::from(value()?)),
            "--no-reference" => a.reference = None,
            "--out" => out = Some(PathBuf::from(value()?)),
            "--only" => a.only = value()?.split(',').map(str::to_string).collect(),
            "-h" | "--help" => {
                println!(
                    "usage: cni-bench [--quick] [--ours DIR] [--reference DIR | --no-reference] [--out DIR] [--only {}]",
                    SCENARIOS.join(",")
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other} (try --help)"),
        }
    }
    if let Some(bad) = a.only.iter().find(|s| !SCENARIOS.contains(&s.as_str())) {
        bail!("unknown scenario {bad}; known: {}", SCENARIOS.join(", "));
    }
    // A smoke run must not overwrite the published figures.
    a.out = out.unwrap_or_else(|| if a.quick { target.join("cni-bench-quick") } else { root.join("benchmarks") });
    Ok(a)
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("cni-bench: {e:#}");
        std::process::exit(1);
    }
}

/// The suites, and the participants of a network's scenarios (suites lacking a plugin of it
/// are left out with a note).
struct Setup {
    suites: Vec<Suite>,
}

impl Setup {
    fn whos(&self, key: &str, with_floor: bool, notes: &mut Vec<String>) -> Result<Vec<Who>> {
        let net = net(key)?;
        let mut whos = Vec::new();
        for s in &self.suites {
            match net.plugins.iter().find(|p| !s.has(p)) {
                None => whos.push(Who::Suite(s.clone())),
                Some(p) => note(notes, format!("{key}: {} lacks {p}; skipped for it", s.name)),
            }
        }
        if with_floor && net.floor.is_some() && !whos.is_empty() {
            whos.push(Who::Floor);
        }
        Ok(whos)
    }
}

fn note(notes: &mut Vec<String>, n: String) {
    eprintln!("note: {n}");
    notes.push(n);
}

fn real_main() -> Result<()> {
    let args = parse_args()?;
    if !conformance::can_create_netns() {
        bail!("needs root to create network namespaces (try sudo)");
    }
    for t in ["ip", "iptables-restore", "iptables-save"] {
        tool(t)?;
    }
    install_stop_handler()?;
    let c = if args.quick { QUICK } else { FULL };
    let wants = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    let started = Instant::now();

    let mut report = Report::default();
    let ours = Suite { name: "ours", dir: args.ours.clone() };
    if !PLUGINS.iter().any(|p| ours.has(p)) {
        bail!("no plugins in {}; build them first: cargo build --release -p cni-plugins", ours.dir.display());
    }
    let mut suites = vec![ours];
    match &args.reference {
        Some(dir) if dir.join("bridge").is_file() => suites.push(Suite { name: "reference", dir: dir.clone() }),
        Some(dir) => note(&mut report.notes, format!("no reference plugins in {}; ours only", dir.display())),
        None => {}
    }
    let setup = Setup { suites };
    for p in PLUGINS {
        for s in &setup.suites {
            if !s.has(p) {
                note(&mut report.notes, format!("{} has no {p}", s.name));
            }
        }
    }
    eprintln!(
        "cni-bench: {} run; ours {}{}; results to {}",
        if args.quick { "quick" } else { "full" },
        setup.suites[0].dir.display(),
        setup.suites.get(1).map(|s| format!(", reference {}", s.dir.display())).unwrap_or_default(),
        args.out.display()
    );

    if wants("start") {
        eprintln!("== start-up: VERSION x{} per plugin and suite", c.start);
        let (starts, true_ms) = scenarios::start_cost(&setup.suites, PLUGINS, c.start)?;
        report.start(&starts, &true_ms);
    }
    if wants("memory") {
        eprintln!("== peak memory: {} runs per suite", c.memory);
        let (mem, notes) = scenarios::memory(net(MEMORY)?, &setup.suites, c.memory)?;
        report.memory(&mem);
        report.problems += notes.len();
        for n in notes {
            note(&mut report.notes, format!("memory: {n}"));
        }
    }
    if wants("size") {
        for p in PLUGINS {
            let size = |who: &str| {
                setup
                    .suites
                    .iter()
                    .find(|s| s.name == who && s.has(p))
                    .and_then(|s| std::fs::metadata(s.plugin(p)).ok())
                    .map(|m| m.len() as f64 / 1024.0)
            };
            if size("ours").is_some() || size("reference").is_some() {
                report.size(p, size("ours"), size("reference"));
            }
        }
    }
    if wants("release") {
        release(&setup.suites[0], &mut report, c)?;
    }
    if wants("sequential") {
        for key in SEQUENTIAL {
            sequential(&setup, &mut report, key, c.sequential, c.sequential, c.window)?;
        }
    }
    if wants("concurrent") {
        for key in CONCURRENT {
            let whos = setup.whos(key, false, &mut report.notes)?;
            if whos.is_empty() {
                continue;
            }
            let n = net(key)?;
            let scenario = format!("concurrent {}, N={} P={}", n.title, c.concurrent, c.callers);
            eprintln!("== {scenario}");
            let t = scenarios::concurrent(n, &whos, c.concurrent, c.callers, c.rounds)?;
            report.concurrent(&scenario, &t);
        }
    }
    if wants("portmap") {
        for key in PORTMAP {
            let reference_n = if *key == PORTMAP_CAPPED { c.portmap_reference_100 } else { c.portmap };
            sequential(&setup, &mut report, key, c.portmap, reference_n, c.portmap_window)?;
        }
    }
    if wants("k3s") {
        sequential(&setup, &mut report, K3S, c.portmap, c.portmap, c.portmap_window)?;
    }
    if wants("podman") {
        sequential(&setup, &mut report, PODMAN, c.portmap, c.portmap, c.portmap_window)?;
    }
    if wants("tuning") {
        // Beside the suites of the run, the newest reference builds when they are at hand.
        let mut references: Vec<Suite> = setup.suites[1..].to_vec();
        references.extend(conformance::reference_head());
        eprintln!("== tuning alone, N={}", c.sequential);
        bench::tuning::run(&setup.suites[0], &references, c.sequential, &mut report)?;
    }
    let mut nft_summary = None;
    if wants("nftables") {
        nft_summary =
            nftables(&setup, &mut report, c.portmap.max(c.sequential / 2), c.window.min(c.portmap_window * 2))?;
    }
    if wants("rootless") {
        rootless(&setup, &mut report, c.rootless)?;
    }
    // (file name, SVG text). The big growth scenario runs last: the kernel tears its thousands of
    // namespaces down asynchronously, which would disturb whatever ran next.
    let mut charts: Vec<(&str, String)> = Vec::new();
    if wants("portmap-growth") {
        let floor = "floor = ip -batch + one iptables-restore (masquerade + DNAT rules)";
        let (n, w) = (c.portmap_growth, c.portmap_growth_window);
        let svgs = growth(&setup, &mut report, PORTMAP_GROWTH, n, c.growth_batch, w, floor)?;
        charts.extend(["portmap-growth.svg", "portmap-alone-growth.svg"].into_iter().zip(svgs));
    }
    if wants("growth") {
        let floor = "floor = ip -batch + iptables-restore";
        let svgs = growth(&setup, &mut report, GROWTH, c.growth, c.growth_batch, c.growth_window, floor)?;
        charts.extend(["growth.svg"].into_iter().zip(svgs));
    }

    let left = leftover_namespaces()?;
    report.problems += left.len();
    if !left.is_empty() {
        note(&mut report.notes, format!("left behind: {}", left.join(", ")));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let meta = meta(&args, &setup, c, elapsed, left.len());
    std::fs::create_dir_all(&args.out).with_context(|| format!("create {}", args.out.display()))?;
    let json_path = args.out.join("latest.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report.json(meta))? + "\n")
        .with_context(|| format!("write {}", json_path.display()))?;
    for (file, svg) in charts {
        let svg_path = args.out.join(file);
        std::fs::write(&svg_path, svg).with_context(|| format!("write {}", svg_path.display()))?;
    }

    println!("{}", report.markdown());
    if let Some(summary) = nft_summary {
        println!("{summary}");
    }
    println!(
        "\\* floor: the same kernel objects made by `ip -batch` (host side, then container side; the interfaces \
         get the plugins' DAD, `arp_notify` and `accept_ra` settings as untimed namespace defaults) plus one \
         `iptables-restore --noflush` when masquerading (with portmap, the same batch also holds the DNAT chain \
         and rules): an approximation of the kernel-work floor that still pays 2-3 small process starts; for \
         start-up rows it is `/bin/true`."
    );
    for n in &report.notes {
        println!("- {n}");
    }
    println!(
        "\nnamespaces and state directories left behind: {}; total run time {:.0} s; results in {}",
        left.len(),
        elapsed,
        args.out.display()
    );
    if report.problems > 0 {
        bail!("{} failed operations or leftovers (see the notes above)", report.problems);
    }
    Ok(())
}

/// The release targets, against the newest reference builds (`conformance::reference_head`),
/// as notes saying met or missed: every binary at most a third of the size of the reference's
/// same plugin, VERSION at most 1.2x `/bin/true`'s start in the same run, and the peak memory
/// of a bridge ADD with its children at most half the reference's. Run it on what ships:
/// `--ours` an unpacked release tarball (or `target/x86_64-unknown-linux-gnu/release`).
fn release(ours: &Suite, report: &mut Report, c: Counts) -> Result<()> {
    const SCENARIO: &str = "release (vs newest reference)";
    let Some(head) = conformance::reference_head() else {
        note(&mut report.notes, "release: the newest reference builds are missing; skipped".into());
        return Ok(());
    };
    let mut plugins: Vec<&str> = PLUGINS.iter().chain(HEAD_ONLY).copied().filter(|p| ours.has(p)).collect();
    let mut seen = std::collections::BTreeSet::new();
    plugins.retain(|p| seen.insert(*p));
    let verdict = |report: &mut Report, what: String, value: f64, limit: f64| {
        let met = if value <= limit { "met" } else { "MISSED" };
        note(&mut report.notes, format!("release target {met}: {what} = {value:.2} (at most {limit:.2})"));
    };
    let kib = |s: &Suite, p: &str| std::fs::metadata(s.plugin(p)).ok().map(|m| m.len() as f64 / 1024.0);
    for p in &plugins {
        let (o, r) = (kib(ours, p), kib(&head, p));
        report.rows.push(Row {
            scenario: SCENARIO.into(),
            figure: format!("{p} size (KiB)"),
            unit: Unit::KiB,
            ours: o,
            reference: r,
            floor: None,
        });
        if let (Some(o), Some(r)) = (o, r) {
            verdict(report, format!("{p} size ours/reference"), o / r, 1.0 / 3.0);
        }
    }
    eprintln!("== release: VERSION x{} per plugin beside /bin/true", c.start);
    let (starts, true_ms) = scenarios::start_cost(std::slice::from_ref(ours), &plugins, c.start)?;
    let truth = stats::median(&true_ms);
    for s in &starts {
        let ms = s.per_suite.first().and_then(|(_, ms, _)| stats::median(ms));
        report.rows.push(Row {
            scenario: SCENARIO.into(),
            figure: format!("{} VERSION, median (ms)", s.plugin),
            unit: Unit::Ms,
            ours: ms,
            reference: None,
            floor: truth,
        });
        if let (Some(ms), Some(t)) = (ms, truth) {
            verdict(report, format!("{} VERSION / /bin/true (median of {})", s.plugin, c.start), ms / t, 1.2);
        }
    }
    eprintln!("== release: peak memory of a bridge ADD, {} runs per suite", c.memory);
    let suites = [ours.clone(), head];
    let (mem, notes) = scenarios::memory(net(MEMORY)?, &suites, c.memory)?;
    report.problems += notes.len();
    for n in notes {
        note(&mut report.notes, format!("release memory: {n}"));
    }
    let tree = mem.iter().find(|m| m.figure == "bridge ADD (tree)").context("no bridge ADD figure")?;
    let pick = |who: &str| tree.per_suite.iter().find(|p| p.0 == who).and_then(|p| stats::median(&p.1));
    let (o, r) = (pick("ours"), pick("reference-head"));
    report.rows.push(Row {
        scenario: SCENARIO.into(),
        figure: "bridge ADD with children, peak RSS (MiB)".into(),
        unit: Unit::MiB,
        ours: o.map(|k| k / 1024.0),
        reference: r.map(|k| k / 1024.0),
        floor: None,
    });
    if let (Some(o), Some(r)) = (o, r) {
        verdict(report, format!("bridge ADD peak RSS ours/reference (median of {})", c.memory), o / r, 0.5);
    }
    Ok(())
}

/// The sequential scenario on network `key`: `n` containers (the reference only `reference_n`),
/// growth window `window`.
fn sequential(
    setup: &Setup,
    report: &mut Report,
    key: &str,
    n: usize,
    reference_n: usize,
    window: usize,
) -> Result<()> {
    let whos = setup.whos(key, true, &mut report.notes)?;
    if whos.is_empty() {
        return Ok(());
    }
    let net = net(key)?;
    let has_reference = whos.iter().any(|w| matches!(w, Who::Suite(s) if s.is_reference()));
    let capped = has_reference && reference_n < n;
    let scenario = if capped {
        format!("sequential {}, N={n} (reference N={reference_n})", net.title)
    } else {
        format!("sequential {}, N={n}", net.title)
    };
    eprintln!("== {scenario}");
    if !net.note.is_empty() {
        note(&mut report.notes, format!("{scenario}: {}", net.note));
    }
    if capped {
        note(
            &mut report.notes,
            format!(
                "{scenario}: the reference attaches only the first {reference_n} containers (seconds per ADD), \
                 ours and the floor all {n}; its figures come from fewer, less crowded containers"
            ),
        );
    }
    if has_reference && !net.reference_check_broken.is_empty() {
        note(&mut report.notes, format!("{scenario}: {}", net.reference_check_broken));
    }
    let t = scenarios::sequential(net, &whos, n, reference_n)?;
    report.sequential(&scenario, &t, window.min(n / 2).max(1));
    Ok(())
}

/// The growth scenario on network `key` with `n` containers; returns its charts: the chain's
/// ADD time, then (for a chain with [`TIMED_PLUGIN`]) that plugin's own ADD time.
fn growth(
    setup: &Setup,
    report: &mut Report,
    key: &str,
    n: usize,
    batch: usize,
    window: usize,
    floor: &str,
) -> Result<Vec<String>> {
    let whos = setup.whos(key, true, &mut report.notes)?;
    if whos.is_empty() {
        return Ok(Vec::new());
    }
    let net = net(key)?;
    let scenario = format!("growth {}, N={n}", net.title);
    eprintln!("== {scenario} (namespaces in batches of {batch})");
    let t = scenarios::growth(net, &whos, n, batch, window)?;
    let series: Vec<Series> = report.growth(&scenario, &t, window, n);
    let mut charts = vec![growth_svg(
        &series,
        &format!("ADD time as containers accumulate: {}", net.title),
        &format!("{n} containers on one bridge, cniVersion 1.0.0, participants interleaved; {floor}"),
    )];
    // Ours only: next to the reference's 100+ ms its few ms would be a flat line at the bottom.
    let own = |who: &str| t.iter().find(|l| l.who == who).and_then(|l| l.plugin_series.get(TIMED_PLUGIN));
    if let Some(ours) = own("ours").filter(|s| !s.is_empty()) {
        let reference = own("reference").map(|s| {
            let ys: Vec<f64> = s.iter().map(|p| p.1).collect();
            format!(
                "; reference (not drawn): median {} ms, slope {} ms/ctr",
                stats::median(&ys).map_or("–".into(), |m| format!("{m:.0}")),
                stats::slope(s).map_or("–".into(), |b| format!("{b:+.3}"))
            )
        });
        charts.push(growth_svg(
            &[("ours", ours.clone())],
            &format!("{TIMED_PLUGIN}'s own ADD time as containers accumulate (ours)"),
            &format!(
                "{n} containers, {} ports each; the {TIMED_PLUGIN} exec of each chained ADD alone{}",
                net.floor.map_or(0, |f| f.ports),
                reference.unwrap_or_default()
            ),
        ));
    }
    Ok(charts)
}

/// The nftables scenario: ours beside the newest reference builds (`reference-head`, whose
/// nftables backends are the ones to match) and podman's netavark, sequentially on one host each,
/// `n` containers. Returns its summary table: the issue's four targets with the figures measured.
fn nftables(setup: &Setup, report: &mut Report, n: usize, window: usize) -> Result<Option<String>> {
    let ours = Who::Suite(setup.suites[0].clone());
    let head = conformance::reference_head().map(Who::Suite);
    let netavark = Path::new(NETAVARK).is_file().then(|| Who::Netavark(PathBuf::from(NETAVARK)));
    if head.is_none() {
        note(&mut report.notes, "nftables: the newest reference builds are missing; ours only".into());
    }
    if netavark.is_none() {
        note(&mut report.notes, format!("nftables: no {NETAVARK} (apt-get install netavark); netavark left out"));
    }
    let mut run = |key: &str, whos: Vec<Who>| -> Result<Vec<scenarios::LaneTimes>> {
        let net = net(key)?;
        let scenario = format!("nftables: sequential {}, N={n}", net.title);
        eprintln!("== {scenario} ({})", whos.iter().map(Who::label).collect::<Vec<_>>().join(", "));
        let t = scenarios::sequential(net, &whos, n, n)?;
        report.sequential(&scenario, &t, window.min(n / 2).max(1));
        Ok(t)
    };
    let ipt = run("bridge-masq", [Some(ours.clone()), netavark.clone()].into_iter().flatten().collect())?;
    let nft = run("bridge-masq-nft", [Some(ours.clone()), head.clone(), netavark].into_iter().flatten().collect())?;
    let pm = run("portmap-10-nft", [Some(ours), head].into_iter().flatten().collect())?;
    let p50 = |t: &[scenarios::LaneTimes], who: &str, f: fn(&scenarios::LaneTimes) -> Vec<f64>| {
        t.iter().find(|l| l.who == who).and_then(|l| stats::percentile(&f(l), 50.0))
    };
    let add = |l: &scenarios::LaneTimes| l.add.clone();
    let check = |l: &scenarios::LaneTimes| l.check.clone();
    let del = |l: &scenarios::LaneTimes| l.del.clone();
    let portmap = |l: &scenarios::LaneTimes| l.plugin_add(TIMED_PLUGIN);
    let ms = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.2}"));
    let mut rows = vec![
        "| target (p50, ms) | ours | other | ours / other | goal |".to_string(),
        "|---|---:|---:|---:|---|".to_string(),
    ];
    let mut row = |what: &str, ours: Option<f64>, other: Option<f64>, goal: &str| {
        let ratio = match (ours, other) {
            (Some(o), Some(x)) if x > 0.0 => format!("{:.3}", o / x),
            _ => "–".into(),
        };
        rows.push(format!("| {what} | {} | {} | {ratio} | {goal} |", ms(ours), ms(other)));
    };
    row(
        "bridge ADD: nftables backend (ours) / iptables backend (ours)",
        p50(&nft, "ours", add),
        p50(&ipt, "ours", add),
        "≤ 1",
    );
    row(
        "bridge CHECK, nftables: ours / reference-head",
        p50(&nft, "ours", check),
        p50(&nft, "reference-head", check),
        "≤ 0.333",
    );
    row(
        "portmap alone ADD, 10 ports, nftables: ours / reference-head",
        p50(&pm, "ours", portmap),
        p50(&pm, "reference-head", portmap),
        "≤ 0.05",
    );
    row(
        "bridge DEL, iptables masquerade: ours / netavark teardown",
        p50(&ipt, "ours", del),
        p50(&ipt, "netavark", del),
        "≤ 1",
    );
    row(
        "bridge DEL, nftables masquerade: ours / netavark teardown",
        p50(&nft, "ours", del),
        p50(&nft, "netavark", del),
        "≤ 1",
    );
    Ok(Some(format!("\n### nftables and netavark (N={n} each)\n\n{}\n", rows.join("\n"))))
}

/// The rootless-wrapper scenario, ours only (the reference has no such plugin).
fn rootless(setup: &Setup, report: &mut Report, c: RootlessCounts) -> Result<()> {
    let ours = &setup.suites[0];
    let scenario = format!("rootless-wrapper (bridge + host-local + portmap inside, slirp4netns), N={}", c.containers);
    if let Some(why) = bench::rootless::unavailable(ours) {
        note(&mut report.notes, format!("rootless-wrapper scenario skipped: {why}"));
        return Ok(());
    }
    eprintln!("== {scenario}");
    note(
        &mut report.notes,
        format!(
            "{scenario}: ours only, the reference has no rootless-wrapper; run as the unprivileged user in its own \
             user and mount namespaces in a fake host, allowHostLoopback on, inner bridge MTU left to the wrapper"
        ),
    );
    match bench::rootless::rootless(ours, c) {
        Ok(t) => report.rootless(&scenario, &t, c.mib),
        // Ctrl-C ends the run; anything else fails this scenario only.
        Err(e) if bench::proc::check_stop().is_err() => return Err(e),
        Err(e) => {
            report.problems += 1;
            note(&mut report.notes, format!("{scenario}: could not run: {e:#}"));
        }
    }
    Ok(())
}

/// Namespaces (`/run/netns`) and fake-host state directories (temp dir) of this process that
/// are still present: every guard should have removed them.
fn leftover_namespaces() -> Result<Vec<String>> {
    let prefix = format!("cnit{}x", std::process::id());
    let mut left = Vec::new();
    for dir in [PathBuf::from("/run/netns"), PathBuf::from("/run/user"), std::env::temp_dir()] {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        left.extend(
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .map(|n| dir.join(n).display().to_string()),
        );
    }
    Ok(left)
}

fn meta(args: &Args, setup: &Setup, c: Counts, elapsed: f64, leftover_netns: usize) -> Value {
    let sh = |cmd: &str, a: &[&str]| run(cmd, a).map(|s| s.trim().to_string()).unwrap_or_default();
    json!({
        "date": sh("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        "kernel": sh("uname", &["-r"]),
        "nproc": sh("nproc", &[]),
        "iptables": sh("iptables", &["--version"]),
        "reference_package": sh("dpkg-query", &["-W", "-f", "${Version}", "containernetworking-plugins"]),
        "quick": args.quick,
        "suites": setup.suites.iter().map(|s| json!({"name": s.name, "dir": s.dir})).collect::<Vec<_>>(),
        "counts": {"sequential": c.sequential, "concurrent": c.concurrent, "callers": c.callers,
                   "growth": c.growth, "start": c.start, "memory": c.memory, "portmap": c.portmap,
                   "portmap_reference_100": c.portmap_reference_100, "portmap_growth": c.portmap_growth,
                   "rootless": c.rootless.containers, "rootless_cycles": c.rootless.cycles,
                   "rootless_mib": c.rootless.mib, "rootless_runs": c.rootless.runs},
        "runtime_s": (elapsed * 10.0).round() / 10.0,
        "leftover_namespaces": leftover_netns,
    })
}
