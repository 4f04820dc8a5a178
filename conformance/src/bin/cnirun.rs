//! `cnirun`: a small cnitool-style runtime over the conformance driver.
//!
//! `cnirun add|check|del|gc|status <conflist> [netns] [containerID]`, with `CNI_PATH` (default
//! `/opt/cni/bin`), `CNI_ARGS`, `CAP_ARGS` (JSON capability arguments, as cnitool takes them),
//! `CNI_IFNAME` (default `eth0`) and `CNI_CACHE_DIR` (default `/var/lib/cni`).

// A command-line tool: printing the result is its job.
#![allow(clippy::print_stdout)]

use anyhow::{bail, Context, Result};
use conformance::{Attachment, Runtime, Suite};
use serde_json::Value;
use std::path::PathBuf;

fn main() {
    if let Err(e) = real_main() {
        eprintln!("cnirun: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: cnirun add|check|del|gc|status <conflist> [netns] [containerID]";
    let (verb, file) = match (args.first(), args.get(1)) {
        (Some(v), Some(f)) => (v.as_str(), f),
        _ => bail!(usage),
    };
    let list: Value = serde_json::from_slice(&std::fs::read(file).with_context(|| format!("read {file}"))?)
        .with_context(|| format!("parse {file}"))?;
    let netns = args.get(2).cloned().unwrap_or_default();
    let container_id = args.get(3).cloned().unwrap_or_else(|| {
        // cnitool derives the ID from the netns path.
        let base = netns.rsplit('/').next().unwrap_or("cnirun");
        format!("cnirun-{base}")
    });
    let path = std::env::var("CNI_PATH").unwrap_or_else(|_| "/opt/cni/bin".into());
    let caps = match std::env::var("CAP_ARGS") {
        Ok(s) if !s.is_empty() => {
            serde_json::from_str::<Value>(&s).context("parse CAP_ARGS")?.as_object().cloned().unwrap_or_default()
        }
        _ => Default::default(),
    };
    let att = Attachment {
        container_id,
        netns,
        ifname: std::env::var("CNI_IFNAME").unwrap_or_else(|_| "eth0".into()),
        cni_args: std::env::var("CNI_ARGS").unwrap_or_default(),
        caps,
    };
    let rt = Runtime {
        suite: Suite { name: "ours", dir: PathBuf::from(path.split(':').next().unwrap_or(&path)) },
        host: None,
        cache_dir: PathBuf::from(std::env::var("CNI_CACHE_DIR").unwrap_or_else(|_| "/var/lib/cni".into())),
    };
    match verb {
        "add" => {
            let result = rt.add_list(&list, &att)?;
            println!("{}", serde_json::to_string_pretty(&result)?);
        }
        "check" => rt.check_list(&list, &att)?,
        "del" => rt.del_list(&list, &att)?,
        "gc" => rt.gc_list(&list, &[])?,
        "status" => rt.status_list(&list)?,
        _ => bail!(usage),
    }
    Ok(())
}
