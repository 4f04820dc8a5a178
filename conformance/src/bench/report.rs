//! Figures as rows (printed as a Markdown table and written as JSON) and the growth chart,
//! written as SVG text by hand.

use super::rootless::RootlessTimes;
use super::scenarios::{LaneTimes, Memory, Start};
use super::stats::{fit, median, percentile, rolling_median, slope};
use serde_json::{json, Map, Value};
use std::fmt::Write as _;

/// How a figure is measured; decides its formatting and which ratios make sense.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Milliseconds (lower is better).
    Ms,
    /// Milliseconds per container already attached (a slope; no ratio).
    MsPerCtr,
    /// Operations per second (higher is better).
    PerSec,
    /// Gigabits per second (higher is better).
    Gbps,
    /// A count (errors, addresses, leftovers; no ratio).
    Count,
    /// Kibibytes.
    KiB,
    /// Mebibytes.
    MiB,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::Ms => "ms",
            Unit::MsPerCtr => "ms/ctr",
            Unit::PerSec => "1/s",
            Unit::Gbps => "Gbit/s",
            Unit::Count => "count",
            Unit::KiB => "KiB",
            Unit::MiB => "MiB",
        }
    }

    fn fmt(self, v: f64) -> String {
        match self {
            Unit::Ms if v < 10.0 => format!("{v:.2}"),
            Unit::Ms if v < 100.0 => format!("{v:.1}"),
            Unit::Ms => format!("{v:.0}"),
            Unit::MsPerCtr => format!("{v:+.4}"),
            Unit::PerSec | Unit::MiB => format!("{v:.1}"),
            Unit::Gbps => format!("{v:.2}"),
            Unit::Count | Unit::KiB => format!("{v:.0}"),
        }
    }

    fn has_ratio(self) -> bool {
        matches!(self, Unit::Ms | Unit::PerSec | Unit::Gbps | Unit::KiB | Unit::MiB)
    }
}

/// One figure for every participant.
#[derive(Debug, Clone)]
pub struct Row {
    /// Scenario it belongs to.
    pub scenario: String,
    /// What it is.
    pub figure: String,
    /// Its unit.
    pub unit: Unit,
    /// Our plugins.
    pub ours: Option<f64>,
    /// The reference plugins.
    pub reference: Option<f64>,
    /// The floor (kernel work by `ip`/`iptables-restore`, or `/bin/true` for start-up).
    pub floor: Option<f64>,
}

impl Row {
    /// reference / ours, for figures where a ratio means something.
    pub fn ratio(&self) -> Option<f64> {
        match (self.unit.has_ratio(), self.ours, self.reference) {
            (true, Some(o), Some(r)) if o > 0.0 => Some(r / o),
            _ => None,
        }
    }

    /// ours / floor: how far above the floor our plugins are.
    pub fn above_floor(&self) -> Option<f64> {
        match (self.unit, self.ours, self.floor) {
            (Unit::Ms, Some(o), Some(f)) if f > 0.0 => Some(o / f),
            _ => None,
        }
    }
}

fn ratio_text(r: Option<f64>) -> String {
    match r {
        Some(r) if r < 1.0 => format!("{r:.2}x"),
        Some(r) => format!("{r:.1}x"),
        None => "–".into(),
    }
}

/// Every figure, note and raw sample of a run.
#[derive(Debug, Default)]
pub struct Report {
    /// The table.
    pub rows: Vec<Row>,
    /// Skips, errors and leftovers worth a line.
    pub notes: Vec<String>,
    /// Raw samples by scenario and participant.
    pub raw: Map<String, Value>,
    /// Failed operations and leftovers: a non-zero count fails the run (times never do).
    pub problems: usize,
}

fn by<'a>(t: &'a [LaneTimes], who: &str) -> Option<&'a LaneTimes> {
    t.iter().find(|l| l.who == who)
}

/// (existing containers, ADD ms) points of one participant.
pub type Series = (&'static str, Vec<(f64, f64)>);

/// Median of the first `w` points of `series`; none when it has fewer than `2 w` (first and
/// last windows would overlap, e.g. a reference run capped to fewer containers).
fn first_of(series: &[(f64, f64)], w: usize) -> Option<f64> {
    if series.len() < 2 * w {
        return None;
    }
    let ys: Vec<f64> = series.iter().take(w).map(|p| p.1).collect();
    median(&ys)
}

fn last_of(series: &[(f64, f64)], w: usize) -> Option<f64> {
    if series.len() < 2 * w {
        return None;
    }
    let skip = series.len().saturating_sub(w);
    let ys: Vec<f64> = series.iter().skip(skip).map(|p| p.1).collect();
    median(&ys)
}

fn first_window(t: &LaneTimes, w: usize) -> Option<f64> {
    first_of(&t.add_series, w)
}

fn last_window(t: &LaneTimes, w: usize) -> Option<f64> {
    last_of(&t.add_series, w)
}

/// The plugin of a chain whose own ADD time gets rows of its own (the issue's portmap targets
/// are about portmap's ADD, not the chain's).
pub const TIMED_PLUGIN: &str = "portmap";
/// Further plugins of a chain whose own ADD p50 and p90 get rows (bandwidth, which k3s chains
/// after portmap; firewall and tuning, which podman chains after it).
const ALSO_TIMED: &[&str] = &["bandwidth", "firewall", "tuning"];
/// The first step of the k3s chain (bridge, with its host-local child): its own ADD rows appear
/// only in chains that also run bandwidth, so that each of k3s's three steps has a figure
/// without adding rows to every bridge scenario.
const K3S_FIRST_STEP: &str = "bridge";

fn round3(v: &[f64]) -> Value {
    Value::Array(v.iter().map(|x| json!((x * 1000.0).round() / 1000.0)).collect())
}

impl Report {
    fn row(
        &mut self,
        scenario: &str,
        figure: &str,
        unit: Unit,
        t: &[LaneTimes],
        f: impl Fn(&LaneTimes) -> Option<f64>,
    ) {
        self.rows.push(Row {
            scenario: scenario.into(),
            figure: format!("{figure} ({})", unit.name()),
            unit,
            ours: by(t, "ours").and_then(&f),
            reference: by(t, "reference").and_then(&f),
            floor: by(t, "floor").and_then(&f),
        });
    }

    fn lane_notes(&mut self, scenario: &str, t: &[LaneTimes]) {
        let mut raw = Map::new();
        for l in t {
            self.problems += l.errors + l.leftovers.map_or(0, |x| x.total());
            if let Some(e) = &l.first_error {
                self.notes.push(format!("{scenario}: {} had {} failed operations; first: {e}", l.who, l.errors));
            }
            if let Some(left) = l.leftovers.filter(|x| x.total() > 0) {
                self.notes.push(format!(
                    "{scenario}: {} left {} veths, {} reservations, {} rules after DEL",
                    l.who, left.veths, left.reservations, left.rules
                ));
            }
            let points = |s: &[(f64, f64)]| -> Vec<Value> {
                s.iter().map(|(x, y)| json!([x, (y * 1000.0).round() / 1000.0])).collect()
            };
            let series = points(&l.add_series);
            let plugins: Map<String, Value> =
                l.plugin_series.iter().map(|(ty, s)| (ty.clone(), Value::Array(points(s)))).collect();
            raw.insert(
                l.who.into(),
                json!({"first_add": l.first_add, "add": round3(&l.add), "add_series": series,
                    "plugin_add_series": plugins, "check": round3(&l.check), "del": round3(&l.del),
                    "errors": l.errors, "unique_ips": l.unique_ips(), "wall_add_ms": l.wall_add_ms,
                    "wall_del_ms": l.wall_del_ms, "first_error": l.first_error,
                    "leftovers": l.leftovers.map(|x| json!({"veths": x.veths, "reservations": x.reservations, "rules": x.rules}))}),
            );
        }
        self.raw.insert(scenario.into(), Value::Object(raw));
    }

    fn leftover_row(&mut self, scenario: &str, t: &[LaneTimes]) {
        self.row(scenario, "leftovers after DEL", Unit::Count, t, |l| l.leftovers.map(|x| x.total() as f64));
    }

    /// Rows of the sequential scenario; `w` is the growth window.
    pub fn sequential(&mut self, scenario: &str, t: &[LaneTimes], w: usize) {
        let pct = |v: &Vec<f64>, p| percentile(v, p);
        self.row(scenario, "first ADD (warm-up, fresh host)", Unit::Ms, t, |l| l.first_add);
        self.row(scenario, "ADD p50", Unit::Ms, t, |l| pct(&l.add, 50.0));
        self.row(scenario, "ADD p90", Unit::Ms, t, |l| pct(&l.add, 90.0));
        self.row(scenario, "CHECK p50", Unit::Ms, t, |l| pct(&l.check, 50.0));
        self.row(scenario, "CHECK p90", Unit::Ms, t, |l| pct(&l.check, 90.0));
        self.row(scenario, "DEL p50", Unit::Ms, t, |l| pct(&l.del, 50.0));
        self.row(scenario, "DEL p90", Unit::Ms, t, |l| pct(&l.del, 90.0));
        self.row(scenario, &format!("ADD median, first {w}"), Unit::Ms, t, |l| first_window(l, w));
        self.row(scenario, &format!("ADD median, last {w}"), Unit::Ms, t, |l| last_window(l, w));
        self.row(scenario, "ADD slope per existing ctr", Unit::MsPerCtr, t, |l| slope(&l.add_series));
        self.plugin_rows(scenario, t, None);
        self.row(scenario, "errors", Unit::Count, t, |l| Some(l.errors as f64));
        self.leftover_row(scenario, t);
        self.lane_notes(scenario, t);
    }

    /// Rows of [`K3S_FIRST_STEP`]'s and [`ALSO_TIMED`]'s own ADD time (p50, p90) and of [`TIMED_PLUGIN`]'s, when the
    /// chain has them: p50 and p90, and for the latter with a
    /// growth window `w` also the first and last window medians and the slope. No floor: the
    /// floor makes the chain's kernel objects in one batch and has no portmap part of its own.
    fn plugin_rows(&mut self, scenario: &str, t: &[LaneTimes], w: Option<usize>) {
        let has = |ty: &str| t.iter().any(|l| l.plugin_series.contains_key(ty));
        if has(K3S_FIRST_STEP) && ALSO_TIMED.iter().any(|ty| has(ty)) {
            let ty = K3S_FIRST_STEP;
            self.row(scenario, &format!("{ty} alone: ADD p50"), Unit::Ms, t, |l| percentile(&l.plugin_add(ty), 50.0));
            self.row(scenario, &format!("{ty} alone: ADD p90"), Unit::Ms, t, |l| percentile(&l.plugin_add(ty), 90.0));
        }
        for ty in ALSO_TIMED.iter().filter(|ty| has(ty)) {
            self.row(scenario, &format!("{ty} alone: ADD p50"), Unit::Ms, t, |l| percentile(&l.plugin_add(ty), 50.0));
            self.row(scenario, &format!("{ty} alone: ADD p90"), Unit::Ms, t, |l| percentile(&l.plugin_add(ty), 90.0));
        }
        let ty = TIMED_PLUGIN;
        if !t.iter().any(|l| l.plugin_series.contains_key(ty)) {
            return;
        }
        let series = |l: &LaneTimes| l.plugin_series.get(ty).cloned().unwrap_or_default();
        self.row(scenario, &format!("{ty} alone: ADD p50"), Unit::Ms, t, |l| percentile(&l.plugin_add(ty), 50.0));
        self.row(scenario, &format!("{ty} alone: ADD p90"), Unit::Ms, t, |l| percentile(&l.plugin_add(ty), 90.0));
        if let Some(w) = w {
            self.row(scenario, &format!("{ty} alone: ADD median, first {w}"), Unit::Ms, t, |l| first_of(&series(l), w));
            self.row(scenario, &format!("{ty} alone: ADD median, last {w}"), Unit::Ms, t, |l| last_of(&series(l), w));
            self.row(scenario, &format!("{ty} alone: ADD slope per existing ctr"), Unit::MsPerCtr, t, |l| {
                slope(&series(l))
            });
        }
    }

    /// Rows of the concurrent scenario.
    pub fn concurrent(&mut self, scenario: &str, t: &[LaneTimes]) {
        let rate = |n: usize, ms: f64| (ms > 0.0).then(|| n as f64 / (ms / 1e3));
        self.row(scenario, "ADD throughput, higher is better", Unit::PerSec, t, |l| rate(l.add.len(), l.wall_add_ms));
        self.row(scenario, "ADD latency p50", Unit::Ms, t, |l| percentile(&l.add, 50.0));
        self.row(scenario, "ADD latency p90", Unit::Ms, t, |l| percentile(&l.add, 90.0));
        self.row(scenario, "DEL throughput, higher is better", Unit::PerSec, t, |l| rate(l.del.len(), l.wall_del_ms));
        self.row(scenario, "DEL latency p50", Unit::Ms, t, |l| percentile(&l.del, 50.0));
        self.row(scenario, "errors", Unit::Count, t, |l| Some(l.errors as f64));
        self.row(scenario, "unique addresses", Unit::Count, t, |l| Some(l.unique_ips() as f64));
        self.leftover_row(scenario, t);
        self.lane_notes(scenario, t);
    }

    /// Rows of the growth scenario; returns its points for the chart.
    pub fn growth(&mut self, scenario: &str, t: &[LaneTimes], w: usize, n: usize) -> Vec<Series> {
        self.row(scenario, "ADD p50", Unit::Ms, t, |l| percentile(&l.add, 50.0));
        self.row(scenario, "ADD p90", Unit::Ms, t, |l| percentile(&l.add, 90.0));
        self.row(scenario, &format!("ADD median, first {w}"), Unit::Ms, t, |l| first_window(l, w));
        self.row(scenario, &format!("ADD median, last {w}"), Unit::Ms, t, |l| last_window(l, w));
        self.row(scenario, "ADD slope per existing ctr", Unit::MsPerCtr, t, |l| slope(&l.add_series));
        self.plugin_rows(scenario, t, Some(w));
        self.row(scenario, &format!("DEL p50 with ~{n} attached"), Unit::Ms, t, |l| median(&l.del));
        self.row(scenario, "errors", Unit::Count, t, |l| Some(l.errors as f64));
        self.lane_notes(scenario, t);
        t.iter().map(|l| (l.who, l.add_series.clone())).collect()
    }

    /// Rows of the rootless-wrapper scenario (ours only: the reference has no such plugin).
    pub fn rootless(&mut self, scenario: &str, t: &RootlessTimes, mib: u32) {
        let mut push = |figure: String, unit: Unit, ours: Option<f64>| {
            self.rows.push(Row {
                scenario: scenario.into(),
                figure: format!("{figure} ({})", unit.name()),
                unit,
                ours,
                reference: None,
                floor: None,
            });
        };
        let (nf, nl, nr) = (t.first_add.len(), t.last_del.len(), t.gbit.len());
        push(format!("first ADD (creates netns + helper), median of {nf}"), Unit::Ms, median(&t.first_add));
        push("ADD p50 (shared netns up)".into(), Unit::Ms, percentile(&t.add, 50.0));
        push("ADD p90 (shared netns up)".into(), Unit::Ms, percentile(&t.add, 90.0));
        push("DEL p50 (others attached)".into(), Unit::Ms, percentile(&t.del, 50.0));
        push("DEL p90 (others attached)".into(), Unit::Ms, percentile(&t.del, 90.0));
        push(format!("last DEL (stops the helper), median of {nl}"), Unit::Ms, median(&t.last_del));
        push("container eth0 MTU".into(), Unit::Count, t.mtu);
        push(format!("TCP container → host loopback, median of {nr} × {mib} MiB"), Unit::Gbps, median(&t.gbit));
        let ni = t.gbit_in.len();
        push(
            format!("TCP host loopback → published port → container, median of {ni} × {mib} MiB"),
            Unit::Gbps,
            median(&t.gbit_in),
        );
        push("errors".into(), Unit::Count, Some(t.errors as f64));
        push("leftovers after DEL".into(), Unit::Count, Some(t.leftovers.len() as f64));
        self.problems += t.errors + t.leftovers.len();
        if let Some(e) = &t.first_error {
            self.notes.push(format!("{scenario}: {} failed operations; first: {e}", t.errors));
        }
        for l in &t.leftovers {
            self.notes.push(format!("{scenario}: left behind {l}"));
        }
        self.raw.insert(
            scenario.into(),
            json!({"ours": {"first_add": round3(&t.first_add), "add": round3(&t.add), "del": round3(&t.del),
                "last_del": round3(&t.last_del), "gbit_per_s": round3(&t.gbit),
                "gbit_per_s_inbound": round3(&t.gbit_in), "mtu": t.mtu,
                "errors": t.errors, "first_error": t.first_error, "leftovers": t.leftovers}}),
        );
    }

    /// Rows of start-up cost and peak RSS of VERSION.
    pub fn start(&mut self, starts: &[Start], true_ms: &[f64]) {
        let pick = |s: &Start, who: &str, rss: bool| {
            s.per_suite.iter().find(|p| p.0 == who).and_then(|p| median(if rss { &p.2 } else { &p.1 }))
        };
        let truth = median(true_ms);
        for s in starts {
            self.rows.push(Row {
                scenario: "start-up".into(),
                figure: format!("{} VERSION, median (ms)", s.plugin),
                unit: Unit::Ms,
                ours: pick(s, "ours", false),
                reference: pick(s, "reference", false),
                floor: truth,
            });
        }
        for s in starts {
            self.rows.push(Row {
                scenario: "peak memory".into(),
                figure: format!("{} VERSION (MiB)", s.plugin),
                unit: Unit::MiB,
                ours: pick(s, "ours", true).map(|k| k / 1024.0),
                reference: pick(s, "reference", true).map(|k| k / 1024.0),
                floor: None,
            });
        }
        let mut raw = Map::new();
        for s in starts {
            let per: Map<String, Value> = s.per_suite.iter().map(|(w, ms, _)| (w.to_string(), round3(ms))).collect();
            raw.insert(s.plugin.clone(), Value::Object(per));
        }
        raw.insert("/bin/true".into(), round3(true_ms));
        self.raw.insert("start-up".into(), Value::Object(raw));
    }

    /// Rows of peak RSS during operations.
    pub fn memory(&mut self, mem: &[Memory]) {
        for m in mem {
            let pick = |who: &str| m.per_suite.iter().find(|p| p.0 == who).and_then(|p| median(&p.1));
            self.rows.push(Row {
                scenario: "peak memory".into(),
                figure: format!("{} (MiB)", m.figure),
                unit: Unit::MiB,
                ours: pick("ours").map(|k| k / 1024.0),
                reference: pick("reference").map(|k| k / 1024.0),
                floor: None,
            });
        }
    }

    /// A row of binary sizes.
    pub fn size(&mut self, plugin: &str, ours: Option<f64>, reference: Option<f64>) {
        self.rows.push(Row {
            scenario: "binary size".into(),
            figure: format!("{plugin} (KiB)"),
            unit: Unit::KiB,
            ours,
            reference,
            floor: None,
        });
    }

    /// The table as Markdown, the scenario named once per group.
    pub fn markdown(&self) -> String {
        let head = ["scenario", "figure", "ours", "reference", "ref/ours", "floor*", "ours/floor"];
        let mut cells: Vec<[String; 7]> = Vec::new();
        let mut last = "";
        for r in &self.rows {
            let v = |x: Option<f64>| x.map_or("–".into(), |x| r.unit.fmt(x));
            let scen = if r.scenario == last { String::new() } else { r.scenario.clone() };
            last = &r.scenario;
            cells.push([
                scen,
                r.figure.clone(),
                v(r.ours),
                v(r.reference),
                ratio_text(r.ratio()),
                v(r.floor),
                ratio_text(r.above_floor()),
            ]);
        }
        let mut width = head.map(|h| h.chars().count());
        for c in &cells {
            for (w, s) in width.iter_mut().zip(c.iter()) {
                *w = (*w).max(s.chars().count());
            }
        }
        let line = |c: &[String]| {
            let mut s = String::from("|");
            for (i, (cell, w)) in c.iter().zip(width.iter()).enumerate() {
                let pad = w - cell.chars().count();
                if i < 2 {
                    let _ = write!(s, " {cell}{} |", " ".repeat(pad));
                } else {
                    let _ = write!(s, " {}{cell} |", " ".repeat(pad));
                }
            }
            s.push('\n');
            s
        };
        let mut out = line(&head.map(String::from));
        let rule: Vec<String> = width
            .iter()
            .enumerate()
            .map(|(i, w)| if i < 2 { "-".repeat(*w) } else { format!("{}:", "-".repeat(w - 1)) })
            .collect();
        out.push_str(&line(&rule));
        for c in &cells {
            out.push_str(&line(c));
        }
        out
    }

    /// Everything as JSON.
    pub fn json(&self, meta: Value) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                json!({"scenario": r.scenario, "figure": r.figure, "unit": r.unit.name(), "ours": r.ours,
                    "reference": r.reference, "floor": r.floor, "reference_over_ours": r.ratio(),
                    "ours_over_floor": r.above_floor()})
            })
            .collect();
        json!({"meta": meta, "rows": rows, "notes": self.notes, "raw": self.raw})
    }
}

fn color(who: &str) -> &'static str {
    match who {
        "ours" => "#1f77b4",
        "reference" => "#d62728",
        _ => "#7f7f7f",
    }
}

fn nice_step(range: f64, ticks: f64) -> f64 {
    let raw = (range / ticks).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let n = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    n * mag
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// ADD time against containers already attached: faint dots per ADD, a running median and the
/// least-squares line per participant. Points above the y range (rare outliers) are counted.
pub fn growth_svg(series: &[Series], title: &str, subtitle: &str) -> String {
    let (w, h) = (960.0, 540.0);
    let (left, right, top, bottom) = (70.0, 230.0, 72.0, 60.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let xmax_data = series.iter().flat_map(|s| s.1.iter().map(|p| p.0)).fold(1.0, f64::max);
    let xstep = nice_step(xmax_data, 8.0);
    let xmax = (xmax_data / xstep).ceil() * xstep;
    let ytop = series
        .iter()
        .filter_map(|s| percentile(&s.1.iter().map(|p| p.1).collect::<Vec<_>>(), 99.0))
        .fold(1.0, f64::max)
        * 1.1;
    let ystep = nice_step(ytop, 6.0);
    let ymax = (ytop / ystep).ceil() * ystep;
    let sx = |x: f64| left + x / xmax * pw;
    let sy = |y: f64| top + ph - y.min(ymax) / ymax * ph;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="{left}" y="24" font-size="16" font-weight="bold">{}</text>"#, esc(title));
    let _ = writeln!(s, r##"<text x="{left}" y="42" fill="#555">{}</text>"##, esc(subtitle));
    let _ = writeln!(
        s,
        r##"<text x="{left}" y="58" fill="#555">dots: one ADD each; solid: running median; dashed: least-squares fit</text>"##
    );
    let _ = writeln!(s, r#"<clipPath id="plot"><rect x="{left}" y="{top}" width="{pw}" height="{ph}"/></clipPath>"#);
    let mut y = 0.0;
    while y <= ymax + 1e-9 {
        let py = sy(y);
        let _ =
            writeln!(s, r##"<line x1="{left}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#e5e5e5"/>"##, left + pw);
        let _ =
            writeln!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#, left - 6.0, py + 4.0, fmt_tick(y));
        y += ystep;
    }
    let mut x = 0.0;
    while x <= xmax + 1e-9 {
        let px = sx(x);
        let _ = writeln!(s, r##"<line x1="{px:.1}" y1="{top}" x2="{px:.1}" y2="{:.1}" stroke="#f0f0f0"/>"##, top + ph);
        let _ =
            writeln!(s, r#"<text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"#, top + ph + 18.0, fmt_tick(x));
        x += xstep;
    }
    let _ = writeln!(s, r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##);
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">containers already attached to the bridge</text>"#,
        left + pw / 2.0,
        h - 16.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(20 {:.1}) rotate(-90)" text-anchor="middle">ADD time (ms)</text>"#,
        top + ph / 2.0
    );
    let mut legend_y = top + 10.0;
    for (who, pts) in series {
        let c = color(who);
        let _ = writeln!(s, r#"<g clip-path="url(#plot)" fill="{c}" fill-opacity="0.3">"#);
        for (x, y) in pts {
            let _ = writeln!(s, r#"<circle cx="{:.1}" cy="{:.1}" r="1.6"/>"#, sx(*x), sy(*y));
        }
        let _ = writeln!(s, "</g>");
        let run = rolling_median(pts, (pts.len() / 40).max(5));
        let path: Vec<String> = run.iter().map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y))).collect();
        let _ = writeln!(
            s,
            r#"<polyline clip-path="url(#plot)" fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        if let (Some((a, b)), Some(&(x0, _)), Some(&(x1, _))) = (fit(pts), pts.first(), pts.last()) {
            let _ = writeln!(
                s,
                r#"<line clip-path="url(#plot)" x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{c}" stroke-width="1.5" stroke-dasharray="6 4"/>"#,
                sx(x0),
                sy(a + b * x0),
                sx(x1),
                sy(a + b * x1)
            );
        }
        let above = pts.iter().filter(|p| p.1 > ymax).count();
        let ys: Vec<f64> = pts.iter().map(|p| p.1).collect();
        let lx = left + pw + 16.0;
        let _ = writeln!(s, r#"<rect x="{lx}" y="{:.1}" width="14" height="4" fill="{c}"/>"#, legend_y - 4.0);
        let _ = writeln!(s, r#"<text x="{:.1}" y="{legend_y:.1}" font-weight="bold">{who}</text>"#, lx + 20.0);
        let lines = [
            format!("median {} ms", median(&ys).map_or("–".into(), |m| format!("{m:.2}"))),
            format!("slope {} ms/ctr", slope(pts).map_or("–".into(), |b| format!("{b:+.4}"))),
            match above {
                0 => String::new(),
                1 => format!("1 point above {ymax} ms"),
                n => format!("{n} points above {ymax} ms"),
            },
        ];
        for (k, text) in lines.iter().enumerate().filter(|(_, t)| !t.is_empty()) {
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" fill="#333">{}</text>"##,
                lx + 20.0,
                legend_y + 16.0 * (k as f64 + 1.0),
                esc(text)
            );
        }
        legend_y += 76.0;
    }
    s.push_str("</svg>\n");
    s
}

fn fmt_tick(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}
