//! The fault group: a plugin killed part way through ADD or DEL, a full disk and a read-only
//! disk under host-local's store. What a runtime does next (DEL, then ADD again) must find and
//! undo everything, give no address twice, and leave no half-written file.
//!
//! Deliberate differences, asserted for ours only:
//! - after a kill mid-ADD or mid-DEL, the next DEL cleans up everything; the reference v1.1.1
//!   does not at some kill points: its DEL fails when the kill came after the POSTROUTING jump
//!   and before its chain (`Chain 'CNI-…' does not exist`), and a DEL killed between removing
//!   the jump and the chain leaves the chain for good;
//! - on a full disk ours refuses ADD with the store exactly as it was; the reference v1.1.1
//!   leaves an empty reservation file behind when its write fails, an address lost for good;
//! - on a read-only `dataDir` both answer CHECK and refuse ADD, and ours refuses DEL without
//!   changing anything; the reference's DEL reports success there although the address stays
//!   reserved, so the runtime forgets an address that is never released.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use conformance::{ours, plugin_command, require_root, run, suites, Attachment, FakeHost, Runtime, Suite};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const NET: &str = "faultnet";

fn ipam_dir(host: &FakeHost) -> PathBuf {
    host.dir.join("ipam")
}

fn list(data_dir: &Path) -> Value {
    json!({"cniVersion": "1.0.0", "name": NET, "plugins": [{"type": "bridge", "bridge": "fltbr0",
        "isGateway": true, "ipMasq": true,
        "ipam": {"type": "host-local", "dataDir": data_dir.display().to_string(),
                 "ranges": [[{"subnet": "10.81.0.0/24"}]]}}]})
}

/// The request the runtime sends the list's only plugin.
fn plugin_conf(list: &Value) -> Value {
    conformance::build_config(&list["plugins"][0], NET, "1.0.0", None, &serde_json::Map::new())
}

/// Every file of the network's store but the lock (whose content is ours to rewrite), with content.
fn store_files(data_dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let Ok(entries) = fs::read_dir(data_dir.join(NET)) else { return BTreeMap::new() };
    entries
        .flatten()
        .filter(|e| e.file_name() != "lock")
        .map(|e| (e.file_name().to_string_lossy().into_owned(), fs::read(e.path()).unwrap_or_default()))
        .collect()
}

fn reservations(data_dir: &Path) -> BTreeSet<String> {
    conformance::reserved_addresses(&data_dir.join(NET))
}

/// Host-side veths and masquerade chains on the fake host: what an attachment leaves there.
fn host_leftovers(host: &FakeHost) -> (usize, usize) {
    let links = host.ns.ip_json(&["link", "show"]).unwrap();
    let veths = links.as_array().unwrap().iter().filter(|l| l["ifname"].as_str().unwrap_or("").starts_with("veth"));
    let nat = host.ns.run("iptables-save", &["-t", "nat"]).unwrap_or_default();
    let chains = nat.lines().filter(|l| l.starts_with(":CNI-")).count();
    (veths.count(), chains)
}

/// Starts `command` of the bridge plugin for `att` in its own process group, waits `delay`,
/// then SIGKILLs the whole group (the plugin and the IPAM plugin and iptables-restore it
/// started, as a runtime stopping a unit or cgroup does) and waits until all of it is gone.
/// Returns whether the plugin had already finished, and with which exit code.
fn kill_after(
    suite: &Suite,
    host: &FakeHost,
    command: &str,
    att: &Attachment,
    conf: &Value,
    delay: Duration,
) -> Option<i32> {
    let path = suite.dir.display().to_string();
    let env = [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", att.container_id.as_str()),
        ("CNI_NETNS", att.netns.as_str()),
        ("CNI_IFNAME", att.ifname.as_str()),
        ("CNI_ARGS", ""),
        ("CNI_PATH", path.as_str()),
    ];
    let mut cmd = plugin_command(&suite.plugin("bridge"), &[], &env, Some(&host.ns)).unwrap();
    cmd.process_group(0);
    let mut child = cmd.spawn().unwrap();
    let pgid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(conf.to_string().as_bytes());
    }
    std::thread::sleep(delay);
    let finished = child.try_wait().unwrap().map(|s| s.code().unwrap_or(-1));
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
    // Children re-parented to init are reaped there; wait until the group is empty.
    let deadline = Instant::now() + Duration::from_secs(10);
    while nix::sys::signal::killpg(pgid, None).is_ok() {
        assert!(Instant::now() < deadline, "process group {pgid} outlived SIGKILL");
        std::thread::sleep(Duration::from_millis(5));
    }
    finished
}

/// The points at which the plugin is killed: from before it starts to after it has finished
/// (a debug build of ours takes about 10 ms for this ADD, the reference about 40 ms).
const KILL_DELAYS_MS: [u64; 9] = [0, 1, 2, 4, 7, 11, 18, 30, 60];

#[test]
fn a_kill_mid_add_is_undone_by_del_and_add_works_again() {
    require_root!();
    {
        let suite = ours();
        let host = FakeHost::new().unwrap();
        let rt = Runtime::new(&suite, &host.ns, host.dir.clone());
        let dd = ipam_dir(&host);
        let l = list(&dd);
        // A container attached all along: nothing done to the others may touch it.
        let keep_ns = host.container().unwrap();
        let keep = Attachment::new("keep", &keep_ns);
        let kept = rt.add_list(&l, &keep).unwrap();
        let kept_ip = kept["ips"][0]["address"].as_str().unwrap().to_string();
        for (i, ms) in KILL_DELAYS_MS.iter().enumerate() {
            let c = host.container().unwrap();
            let att = Attachment::new(&format!("kill-add-{i}"), &c);
            let finished = kill_after(&suite, &host, "ADD", &att, &plugin_conf(&l), Duration::from_millis(*ms));
            rt.del_list(&l, &att).unwrap_or_else(|e| panic!("{}: DEL after a kill at {ms} ms: {e}", suite.name));
            let what = format!("{}: killed at {ms} ms (finished first: {finished:?})", suite.name);
            assert_eq!(reservations(&dd), BTreeSet::from([kept_ip.split('/').next().unwrap().to_string()]), "{what}");
            assert_eq!(host_leftovers(&host), (1, 1), "{what}: only the kept container's veth and chain remain");
            assert!(c.ip_json(&["link", "show", "eth0"]).is_err(), "{what}: eth0 left in the container");
            let files = store_files(&dd);
            assert!(files.keys().all(|f| !f.starts_with('.')), "{what}: scratch file left: {files:?}");

            // The runtime retries: ADD works and gets an address no one else holds.
            let r = rt.add_list(&l, &att).unwrap_or_else(|e| panic!("{what}: ADD again: {e}"));
            let ip = r["ips"][0]["address"].as_str().unwrap();
            assert_ne!(ip, kept_ip, "{what}");
            assert!(c.succeeds("ping", &["-c1", "-W2", "10.81.0.1"]), "{what}: no traffic after the retry");
            rt.check_list(&l, &keep).unwrap_or_else(|e| panic!("{what}: CHECK of the kept container: {e}"));
            rt.del_list(&l, &att).unwrap();
        }
        rt.del_list(&l, &keep).unwrap();
        assert!(reservations(&dd).is_empty(), "{}", suite.name);
        assert_eq!(host_leftovers(&host), (0, 0), "{}", suite.name);
    }
}

#[test]
fn a_kill_mid_del_is_finished_by_the_next_del() {
    require_root!();
    {
        let suite = ours();
        let host = FakeHost::new().unwrap();
        let rt = Runtime::new(&suite, &host.ns, host.dir.clone());
        let dd = ipam_dir(&host);
        let l = list(&dd);
        for (i, ms) in KILL_DELAYS_MS.iter().enumerate() {
            let c = host.container().unwrap();
            let att = Attachment::new(&format!("kill-del-{i}"), &c);
            let r = rt.add_list(&l, &att).unwrap();
            let mut conf = plugin_conf(&l);
            conf["prevResult"] = r.clone();
            let finished = kill_after(&suite, &host, "DEL", &att, &conf, Duration::from_millis(*ms));
            let what = format!("{}: DEL killed at {ms} ms (finished first: {finished:?})", suite.name);
            rt.del_list(&l, &att).unwrap_or_else(|e| panic!("{what}: the next DEL: {e}"));
            assert!(reservations(&dd).is_empty(), "{what}");
            assert_eq!(host_leftovers(&host), (0, 0), "{what}");
            assert!(c.ip_json(&["link", "show", "eth0"]).is_err(), "{what}: eth0 left in the container");
            rt.del_list(&l, &att).unwrap_or_else(|e| panic!("{what}: DEL is idempotent: {e}"));
        }
    }
}

/// A small tmpfs mounted for a test's store, unmounted (lazily, so a failing test cannot
/// leave it busy) and removed on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn new(tag: &str, size: &str) -> Tmpfs {
        let dir = std::env::temp_dir().join(conformance::unique(tag));
        fs::create_dir_all(&dir).unwrap();
        run("mount", &["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs", dir.to_str().unwrap()])
            .unwrap();
        Tmpfs(dir)
    }

    /// Fills the file system: a file grown until the disk is full.
    fn fill(&self) {
        let mut f = fs::File::create(self.0.join("filler")).unwrap();
        let block = vec![0u8; 4096];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(nix::libc::ENOSPC), "{e}");
                    break;
                }
            }
        }
    }

    fn remount(&self, mode: &str) {
        run("mount", &["-o", &format!("remount,{mode}"), self.0.to_str().unwrap()]).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = run("umount", &["-l", self.0.to_str().unwrap()]);
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs `host-local` directly, as bridge does, for `(id, eth0)`.
fn host_local(suite: &Suite, command: &str, id: &str, conf: &Value) -> conformance::Output {
    let path = suite.dir.display().to_string();
    let env = [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", id),
        ("CNI_NETNS", "/var/run/netns/faults-unused"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", path.as_str()),
    ];
    conformance::exec(&suite.plugin("host-local"), &env, conf.to_string().as_bytes(), None).unwrap()
}

fn ipam_conf(data_dir: &Path, ranges: Value) -> Value {
    json!({"cniVersion": "1.0.0", "name": NET, "type": "bridge",
           "ipam": {"type": "host-local", "dataDir": data_dir.display().to_string(), "ranges": ranges}})
}

#[test]
fn a_full_disk_refuses_add_and_changes_nothing() {
    require_root!();
    let suite = conformance::ours();
    let fs_ = Tmpfs::new("full", "256k");
    // Two range sets: a refusal in the second must not leave the first's hint advanced either.
    let conf = ipam_conf(&fs_.0, json!([[{"subnet": "10.82.0.0/24"}], [{"subnet": "fd00:82::/64"}]]));
    let first = host_local(&suite, "ADD", "before", &conf);
    assert!(first.ok(), "{first:?}");
    let before = store_files(&fs_.0);
    fs_.fill();

    let out = host_local(&suite, "ADD", "refused", &conf);
    let (code, msg, _) = out.error().unwrap();
    assert_eq!(code, 999, "{msg}");
    assert!(msg.contains("No space left on device"), "{msg}");
    assert_eq!(store_files(&fs_.0), before, "a refused ADD leaves the store as it was (no empty or scratch file)");
    assert!(host_local(&suite, "CHECK", "before", &conf).ok(), "CHECK of the existing attachment");
    let mut status_conf = conf.clone();
    status_conf["cniVersion"] = json!("1.1.0");
    let status = host_local(&suite, "STATUS", "", &status_conf);
    assert_eq!(status.error().unwrap().0, 50, "STATUS says the store cannot take a reservation");

    // Through bridge: refused, nothing left on the host either.
    let host = FakeHost::new().unwrap();
    let rt = Runtime::new(&suite, &host.ns, host.dir.clone());
    let c = host.container().unwrap();
    let l = json!({"cniVersion": "1.0.0", "name": NET, "plugins": [{"type": "bridge", "bridge": "fullbr0",
        "isGateway": true, "ipMasq": true, "ipam": conf["ipam"].clone()}]});
    assert!(rt.add_list(&l, &Attachment::new("refused", &c)).is_err());
    assert_eq!(store_files(&fs_.0), before);
    assert_eq!(host_leftovers(&host), (0, 0));
    assert!(host.ns.ip_json(&["link", "show", "fullbr0"]).is_err(), "the bridge this ADD created is gone");

    // DEL frees space and works on a full disk; then ADD works again.
    assert!(host_local(&suite, "DEL", "before", &conf).ok());
    fs::remove_file(fs_.0.join("filler")).unwrap();
    let again = host_local(&suite, "ADD", "refused", &conf);
    assert!(again.ok(), "{again:?}");
}

#[test]
fn a_read_only_data_dir_answers_check_and_refuses_changes() {
    require_root!();
    for suite in suites() {
        let fs_ = Tmpfs::new("ro", "1m");
        let conf = ipam_conf(&fs_.0, json!([[{"subnet": "10.83.0.0/24"}]]));
        let first = host_local(&suite, "ADD", "held", &conf);
        assert!(first.ok(), "{}: {first:?}", suite.name);
        let before = store_files(&fs_.0);
        let lock_before = fs::read(fs_.0.join(NET).join("lock")).unwrap();
        fs_.remount("ro");

        let check = host_local(&suite, "CHECK", "held", &conf);
        assert!(check.ok(), "{}: CHECK on a read-only dataDir: {check:?}", suite.name);
        let missing = host_local(&suite, "CHECK", "other", &conf);
        let (_, msg, _) = missing.error().unwrap();
        assert!(msg.contains("Failed to find address added by container other"), "{}: {msg}", suite.name);
        let add = host_local(&suite, "ADD", "new", &conf);
        let (_, msg, _) = add.error().unwrap();
        assert!(msg.to_lowercase().contains("read-only file system"), "{}: {msg}", suite.name);
        let del = host_local(&suite, "DEL", "held", &conf);
        if suite.is_ours() {
            assert!(!del.ok(), "DEL cannot release on a read-only disk and says so");
        }
        fs_.remount("rw");
        assert_eq!(store_files(&fs_.0), before, "{}: nothing changed", suite.name);
        if suite.is_ours() {
            assert_eq!(fs::read(fs_.0.join(NET).join("lock")).unwrap(), lock_before);
        }
        assert!(host_local(&suite, "DEL", "held", &conf).ok(), "{}: DEL once writable", suite.name);
        assert!(reservations(&fs_.0).is_empty());
    }
}

/// An IPAM plugin that never answers (nor reads its input) and has started a helper of its own.
fn hanging_ipam(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let pidfile = dir.join("helper.pid");
    let script = dir.join("hang-ipam");
    fs::write(&script, format!("#!/bin/sh\nsleep 30 &\necho $! > {}\nexec sleep 30\n", pidfile.display())).unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    pidfile
}

#[test]
fn a_hanging_ipam_plugin_is_killed_at_the_deadline_and_add_rolls_back() {
    // Ours only: the reference waits for its delegate for ever.
    require_root!();
    let suite = ours();
    for plugin in ["bridge", "ptp"] {
        let host = FakeHost::new().unwrap();
        let c = host.container().unwrap();
        let dir = host.dir.join("cni-path");
        fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(suite.plugin(plugin), dir.join(plugin)).unwrap();
        let pidfile = hanging_ipam(&dir);
        let conf = json!({"cniVersion": "1.0.0", "name": NET, "type": plugin, "bridge": "cnifault0",
            "isGateway": true, "ipMasq": true, "ipam": {"type": "hang-ipam"}});
        let path = dir.display().to_string();
        let netns = c.path();
        let env = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "ctr-hang"),
            ("CNI_NETNS", netns.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", path.as_str()),
            ("CNI_DELEGATE_TIMEOUT", "1"),
        ];
        let t = Instant::now();
        let out = conformance::exec(&suite.plugin(plugin), &env, conf.to_string().as_bytes(), Some(&host.ns)).unwrap();
        let took = t.elapsed();
        assert_ne!(out.code, 0, "{plugin}: {out:?}");
        assert!(took < Duration::from_secs(10), "{plugin}: took {took:?}");
        let err: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(err["code"], 999, "{plugin}: {err}");
        let msg = err["msg"].as_str().unwrap();
        assert!(msg.contains("hang-ipam") && msg.contains("did not finish within 1s"), "{plugin}: {msg}");
        assert!(msg.contains("CNI_DELEGATE_TIMEOUT"), "{plugin}: {msg}");
        // Rolled back: no veth on the host, nothing in the container, no masquerade chain.
        assert_eq!(host_leftovers(&host), (0, 0), "{plugin}: leftovers");
        let links = c.ip_json(&["link", "show"]).unwrap();
        assert_eq!(links.as_array().unwrap().len(), 1, "{plugin}: container links {links}");
        // The delegate's own helper went with it (it is in the delegate's process group).
        let helper = fs::read_to_string(&pidfile).unwrap();
        let proc_dir = PathBuf::from(format!("/proc/{}", helper.trim()));
        let gone = Instant::now() + Duration::from_secs(5);
        while proc_dir.exists() && Instant::now() < gone {
            let stat = fs::read_to_string(proc_dir.join("stat")).unwrap_or_default();
            // Killed and waiting for init to reap it counts as gone.
            if stat.split(") ").nth(1).is_some_and(|s| s.starts_with('Z')) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let stat = fs::read_to_string(proc_dir.join("stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.split(") ").nth(1).is_some_and(|s| s.starts_with('Z')),
            "{plugin}: helper alive: {stat}"
        );
    }
}

#[test]
fn a_hanging_firewall_tool_is_killed_at_the_deadline_and_add_rolls_back() {
    // Ours only: the reference waits for iptables-restore for ever (and for the xtables lock
    // with a bare `-w`). The tool here hangs without reading its input, as one stuck on the
    // lock does; iptables-nft takes no xtables lock, so the lock itself cannot be held here.
    require_root!();
    use std::os::unix::fs::PermissionsExt;
    let suite = ours();
    let host = FakeHost::new().unwrap();
    let c = host.container().unwrap();
    let bin = host.dir.join("sbin");
    fs::create_dir_all(&bin).unwrap();
    for tool in ["iptables-restore", "ip6tables-restore"] {
        fs::write(bin.join(tool), "#!/bin/sh\nsleep 30 &\nexec sleep 30\n").unwrap();
        fs::set_permissions(bin.join(tool), fs::Permissions::from_mode(0o755)).unwrap();
    }
    let dd = ipam_dir(&host);
    let conf = json!({"cniVersion": "1.0.0", "name": NET, "type": "bridge", "bridge": "cnifault1",
        "isGateway": true, "ipMasq": true, "ipMasqBackend": "iptables",
        "ipam": {"type": "host-local", "dataDir": dd.display().to_string(), "subnet": "10.84.0.0/24"}});
    let path = format!("{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", bin.display());
    let cni_path = suite.dir.display().to_string();
    let netns = c.path();
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "ctr-fw"),
        ("CNI_NETNS", netns.as_str()),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", cni_path.as_str()),
        ("PATH", path.as_str()),
        ("CNI_FIREWALL_TIMEOUT", "0.5"),
    ];
    let t = Instant::now();
    let out = conformance::exec(&suite.plugin("bridge"), &env, conf.to_string().as_bytes(), Some(&host.ns)).unwrap();
    let took = t.elapsed();
    assert_ne!(out.code, 0, "{out:?}");
    // 0.5 s of lock wait and 5 s of grace, once for the ADD and at most once for its rollback.
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let err: Value = serde_json::from_str(&out.stdout).unwrap();
    let msg = err["msg"].as_str().unwrap();
    assert!(msg.contains("iptables-restore --noflush -w 1") && msg.contains("did not finish within"), "{msg}");
    assert!(msg.contains("CNI_FIREWALL_TIMEOUT"), "{msg}");
    assert_eq!(host_leftovers(&host), (0, 0), "leftovers");
    assert!(reservations(&dd).is_empty(), "reservation leaked: {:?}", reservations(&dd));
}
