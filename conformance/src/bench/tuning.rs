//! The tuning scenario: the plugin alone, as the last link of podman's chain with
//! `--mac-address` (CNI_ARGS `MAC=`) and one sysctl, against each reference that ships it.
//!
//! Every participant gets its own fake host with `n` container namespaces, each holding a veth
//! end `eth0` (made untimed, as the main plugin would have). ADD, CHECK and DEL of container
//! `i` run for every participant in turn, the order rotated per container. After DEL the link
//! must have its MAC back and the backup must be gone; anything else counts as a problem.

use super::proc::{check_stop, exec_measured};
use super::report::{Report, Row, Unit};
use super::stats::percentile;
use anyhow::{Context, Result};
use conformance::{FakeHost, Netns, Suite};
use serde_json::{json, Map, Value};

const ORIG_MAC: &str = "0a:58:0a:00:00:02";

struct Lane {
    suite: Suite,
    host: FakeHost,
    containers: Vec<Netns>,
    add: Vec<f64>,
    check: Vec<f64>,
    del: Vec<f64>,
    errors: usize,
    first_error: Option<String>,
    leftovers: usize,
}

impl Lane {
    fn new(suite: Suite) -> Result<Lane> {
        Ok(Lane {
            suite,
            host: FakeHost::new()?,
            containers: Vec::new(),
            add: Vec::new(),
            check: Vec::new(),
            del: Vec::new(),
            errors: 0,
            first_error: None,
            leftovers: 0,
        })
    }

    fn grow_to(&mut self, n: usize) -> Result<()> {
        while self.containers.len() < n {
            check_stop()?;
            let c = self.host.container()?;
            c.run("ip", &["link", "add", "eth0", "address", ORIG_MAC, "type", "veth", "peer", "name", "p0"])?;
            c.run("ip", &["link", "set", "eth0", "up"])?;
            self.containers.push(c);
        }
        Ok(())
    }

    fn mac(i: usize) -> String {
        format!("0a:58:0a:01:{:02x}:{:02x}", (i >> 8) & 255, i & 255)
    }

    fn conf(&self, i: usize) -> Result<Value> {
        let c = self.containers.get(i).context("no such container")?;
        // A literal interface name: v1.1.1's CHECK does not substitute IFNAME.
        Ok(json!({"cniVersion": "1.0.0", "name": "benchnet", "type": "tuning",
            "dataDir": self.host.dir.join("tuning").display().to_string(),
            "sysctl": {"net.ipv4.conf.eth0.arp_ignore": "1"},
            "prevResult": {"cniVersion": "1.0.0",
                "interfaces": [{"name": "eth0", "mac": ORIG_MAC, "sandbox": c.path()}],
                "ips": [{"interface": 0, "address": "10.88.0.2/16", "gateway": "10.88.0.1"}]}}))
    }

    /// One operation on container `i`; its time when it succeeded.
    fn op(&mut self, command: &str, i: usize) -> Result<Option<f64>> {
        let conf = self.conf(i)?;
        let netns = self.containers[i].path();
        let (id, dir) = (format!("bench-{i}"), self.suite.dir.display().to_string());
        let args = format!("IgnoreUnknown=1;K8S_POD_NAME=bench-{i};MAC={}", Lane::mac(i));
        let env = [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", id.as_str()),
            ("CNI_NETNS", netns.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", args.as_str()),
            ("CNI_PATH", dir.as_str()),
        ];
        let m =
            exec_measured(&self.suite.plugin("tuning"), &[], &env, conf.to_string().as_bytes(), Some(&self.host.ns))?;
        if m.out.ok() {
            return Ok(Some(m.ms));
        }
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{command} bench-{i}: {} {}", m.out.stdout.trim(), m.out.stderr.trim()));
        }
        Ok(None)
    }

    /// Whether container `i` is back as it was (the MAC) with no backup left.
    fn restored(&self, i: usize) -> Result<bool> {
        let links = self.containers[i].ip_json(&["link", "show", "eth0"])?;
        let backup = self.host.dir.join("tuning").join(format!("bench-{i}_eth0.json"));
        Ok(links[0]["address"] == ORIG_MAC && !backup.exists())
    }
}

/// Runs the scenario for ours and every reference in `references` that ships tuning; one block
/// of rows per reference, all from the same interleaved run.
pub fn run(ours: &Suite, references: &[Suite], n: usize, report: &mut Report) -> Result<()> {
    let mut lanes = vec![Lane::new(ours.clone())?];
    for r in references.iter().filter(|r| r.has("tuning")) {
        lanes.push(Lane::new(r.clone())?);
    }
    for lane in &mut lanes {
        lane.grow_to(n)?;
    }
    let k = lanes.len();
    // The floor: `/bin/true` started the same way, in the same fake host, interleaved.
    let truth = std::path::Path::new("/bin/true");
    let mut floor = Vec::new();
    for (command, pick) in [("ADD", 0usize), ("CHECK", 1), ("DEL", 2)] {
        for i in 0..n {
            check_stop()?;
            if pick == 0 {
                floor.push(exec_measured(truth, &[], &[], b"{}", Some(&lanes[0].host.ns))?.ms);
            }
            for j in (0..k).map(|x| (x + i) % k) {
                if let Some(ms) = lanes[j].op(command, i)? {
                    match pick {
                        0 => lanes[j].add.push(ms),
                        1 => lanes[j].check.push(ms),
                        _ => lanes[j].del.push(ms),
                    }
                }
            }
        }
    }
    for lane in &mut lanes {
        for i in 0..n {
            if !lane.restored(i)? {
                lane.leftovers += 1;
            }
        }
    }
    let ours_lane = &lanes[0];
    let mut raw = Map::new();
    for lane in &lanes {
        raw.insert(
            lane.suite.name.into(),
            json!({"add": lane.add, "check": lane.check, "del": lane.del,
            "errors": lane.errors, "first_error": lane.first_error, "not_restored": lane.leftovers}),
        );
        report.problems += lane.errors + lane.leftovers;
        if let Some(e) = &lane.first_error {
            report.notes.push(format!("tuning: {} had {} failed operations; first: {e}", lane.suite.name, lane.errors));
        }
        if lane.leftovers > 0 {
            report.notes.push(format!(
                "tuning: {} left {} links unrestored or backups behind",
                lane.suite.name, lane.leftovers
            ));
        }
    }
    raw.insert("floor".into(), json!({"true": floor}));
    let start = percentile(&floor, 50.0);
    for lane in &lanes[1..] {
        let scenario = format!("tuning alone, a sysctl and a MAC (CNI_ARGS), N={n}, vs {}", lane.suite.name);
        for (figure, o, r) in [
            ("ADD p50", &ours_lane.add, &lane.add),
            ("ADD p90", &ours_lane.add, &lane.add),
            ("CHECK p50", &ours_lane.check, &lane.check),
            ("DEL p50", &ours_lane.del, &lane.del),
        ] {
            let p = if figure.ends_with("p90") { 90.0 } else { 50.0 };
            report.rows.push(Row {
                scenario: scenario.clone(),
                figure: format!("{figure} (ms)"),
                unit: Unit::Ms,
                ours: percentile(o, p),
                reference: percentile(r, p),
                floor: start,
            });
        }
        // What each spends beyond starting a process: the plugin's own work.
        let beyond = |v: &Vec<f64>| percentile(v, 50.0).zip(start).map(|(x, f)| (x - f).max(0.0));
        report.rows.push(Row {
            scenario,
            figure: "ADD p50 beyond /bin/true (ms)".into(),
            unit: Unit::Ms,
            ours: beyond(&ours_lane.add),
            reference: beyond(&lane.add),
            floor: None,
        });
    }
    report.notes.push(
        "tuning: the floor is /bin/true started the same way (process start alone); the \"beyond\" row is \
         each median minus it"
            .into(),
    );
    if lanes.len() == 1 {
        report.notes.push("tuning: no reference ships tuning; nothing to compare".into());
    }
    report.raw.insert(format!("tuning, N={n}"), Value::Object(raw));
    Ok(())
}
