//! The release artifact as an admin and a runtime meet it: `scripts/dev dist`'s tarball unpacked
//! into an empty directory, its binaries run in a root holding nothing else, its checksums, the
//! about line runtimes parse, and the documented upgrade of a live plugin directory.
//!
//! The tarball is built once per run (a static release build) into the target directory;
//! `CNI_TEST_DIST_DIR=<dir>` tests an already built `dist/` instead.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use conformance::{exec, ours, reference, reference_head, require_root, run, unique, Netns, Suite};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// The workspace version the about line and the tarball's name carry.
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| workspace().join("target"))
}

/// The `name`s of the `[[bin]]` sections of plugins/Cargo.toml: every plugin the release ships.
fn plugin_names() -> Vec<String> {
    let manifest = std::fs::read_to_string(workspace().join("plugins/Cargo.toml")).unwrap();
    let mut names = Vec::new();
    let mut in_bin = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin {
            if let Some(v) = line.strip_prefix("name").map(str::trim).and_then(|r| r.strip_prefix('=')) {
                names.push(v.trim().trim_matches('"').to_string());
            }
        }
    }
    assert!(names.contains(&"loopback".to_string()), "no [[bin]] names read: {names:?}");
    names
}

fn tarball_name() -> String {
    format!("cni-plugins-linux-amd64-v{VERSION}.tgz")
}

/// The dist directory holding the tarball and its sidecars, built on first use.
fn dist_dir() -> &'static Path {
    static DIST: OnceLock<PathBuf> = OnceLock::new();
    DIST.get_or_init(|| {
        if let Ok(dir) = std::env::var("CNI_TEST_DIST_DIR") {
            return PathBuf::from(dir);
        }
        let dir = target_dir().join("release-test-dist");
        let status = Command::new("bash")
            .arg(workspace().join("scripts/dev"))
            .arg("dist")
            .env("DIST_DIR", &dir)
            .env("DIST_ARCH", "amd64")
            .status()
            .unwrap();
        assert!(status.success(), "scripts/dev dist failed: {status}");
        dir
    })
}

/// A fresh empty directory under the target directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = target_dir().join("release-test").join(unique(tag));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The tarball unpacked into a new empty directory, exactly as the README's install does.
fn unpacked(tag: &str) -> Scratch {
    let s = Scratch::new(tag);
    let tgz = dist_dir().join(tarball_name());
    run("tar", &["-xzf", tgz.to_str().unwrap(), "-C", s.0.to_str().unwrap()]).unwrap();
    s
}

/// Runs `argv` (a path inside `root`) chrooted into `root` with exactly `env`, in a private mount
/// namespace where `netns` (if any) is bind-mounted at `/netns` and, for it, the kernel's `/proc`
/// is mounted (namespace switching reads `/proc/thread-self/ns/net`, as the reference's does;
/// every runtime has it); no file of the host is visible. Returns (code, stdout, stderr).
fn in_empty_root(
    root: &Path,
    argv: &str,
    env: &[(&str, &str)],
    stdin: &str,
    netns: Option<&Netns>,
) -> (i32, String, String) {
    use std::io::Write;
    let mut script = String::from("set -e\n");
    if let Some(ns) = netns {
        script.push_str(&format!(
            "touch '{0}/netns'\nmount --bind '{1}' '{0}/netns'\nmkdir -p '{0}/proc'\nmount -t proc proc '{0}/proc'\n",
            root.display(),
            ns.path()
        ));
    }
    script.push_str(&format!("exec chroot '{}' {argv}\n", root.display()));
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    if netns.is_some() {
        let _ = std::fs::remove_file(root.join("netns"));
        let _ = std::fs::remove_dir(root.join("proc"));
    }
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn tarball_is_flat_root_owned_and_ships_every_plugin() {
    let tgz = dist_dir().join(tarball_name());
    let listing = run("tar", &["--numeric-owner", "-tvzf", tgz.to_str().unwrap()]).unwrap();
    let mut names = Vec::new();
    for line in listing.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (mode, owner, name) = (f[0], f[1], *f.last().unwrap());
        assert_eq!(owner, "0/0", "{line}");
        if name == "./" {
            assert_eq!(mode, "drwxr-xr-x", "unpacking applies ./'s mode to the target directory: {line}");
            continue;
        }
        let bare = name.strip_prefix("./").unwrap_or_else(|| panic!("not flat under ./: {line}"));
        assert!(!bare.contains('/'), "not flat: {line}");
        let want = if bare == "README.md" || bare == "LICENSE" { "-rw-r--r--" } else { "-rwxr-xr-x" };
        assert_eq!(mode, want, "{line}");
        names.push(bare.to_string());
    }
    let mut want = plugin_names();
    want.extend(["README.md".to_string(), "LICENSE".to_string()]);
    names.sort();
    want.sort();
    assert_eq!(names, want);
}

#[test]
fn sidecars_verify_with_sha256sum_and_sha512sum_and_catch_a_changed_byte() {
    let dir = dist_dir();
    let name = tarball_name();
    for (tool, len) in [("sha256sum", 64), ("sha512sum", 128)] {
        let ext = &tool[..6];
        let sidecar = std::fs::read_to_string(dir.join(format!("{name}.{ext}"))).unwrap();
        // One line, in the tool's own format: the digest, two spaces, the file name.
        let (digest, file) = sidecar.strip_suffix('\n').unwrap().split_once("  ").unwrap();
        assert_eq!(file, name);
        assert!(digest.len() == len && digest.bytes().all(|b| b.is_ascii_hexdigit()), "{sidecar}");
        let ok = Command::new(tool).args(["-c", &format!("{name}.{ext}")]).current_dir(dir).output().unwrap();
        assert!(ok.status.success(), "{tool} -c: {}", String::from_utf8_lossy(&ok.stderr));

        // The same check on a copy with one byte changed must fail.
        let copy = Scratch::new("sum");
        let mut bytes = std::fs::read(dir.join(&name)).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        std::fs::write(copy.0.join(&name), bytes).unwrap();
        std::fs::write(copy.0.join(format!("{name}.{ext}")), &sidecar).unwrap();
        let bad = Command::new(tool).args(["-c", &format!("{name}.{ext}")]).current_dir(&copy.0).output().unwrap();
        assert!(!bad.status.success(), "{tool} -c accepted a changed tarball");
    }
}

#[test]
fn every_plugin_is_static_and_answers_in_a_root_holding_only_the_binaries() {
    require_root!();
    let root = unpacked("root");
    std::fs::remove_file(root.0.join("README.md")).unwrap();
    std::fs::remove_file(root.0.join("LICENSE")).unwrap();
    for p in plugin_names() {
        let bin = root.0.join(&p);
        let headers = run("readelf", &["-lW", bin.to_str().unwrap()]).unwrap();
        assert!(!headers.contains("INTERP"), "{p} needs a dynamic loader:\n{headers}");
        let dynamic = run("readelf", &["-dW", bin.to_str().unwrap()]).unwrap();
        assert!(!dynamic.contains("(NEEDED)"), "{p} needs shared libraries:\n{dynamic}");
        // A static glibc loads NSS modules at run time for user, group and host lookups, which an
        // empty root (or another distribution's libc) cannot give it: none may be linked in.
        // One exception: `firewall` links zbus (the firewalld backend), whose server-side
        // handshake (peer credentials: getpwuid_r, getgrouplist) and TCP transport (getaddrinfo)
        // pull NSS in. Neither runs in the plugin: it is a client (no server handshake) and
        // `firewall::firewalld` refuses every bus address but `unix:` before zbus reads it.
        let bytes = std::fs::read(&bin).unwrap();
        if p != "firewall" {
            assert!(!bytes.windows(13).any(|w| w == b"nsswitch.conf"), "{p} links glibc's NSS");
        }

        // No CNI_COMMAND: the about line, the spec versions, exit 0 (what Nomad and nerdctl run).
        let (code, stdout, stderr) = in_empty_root(&root.0, &format!("/{p}"), &[], "", None);
        assert_eq!(code, 0, "{p}: {stderr}");
        assert_eq!(stdout, "", "{p}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines[0], format!("CNI {p} plugin v{VERSION}"), "{p}");
        // Every plugin lists its spec versions (bandwidth, like the reference's, starts at 0.3.0).
        assert!(lines[1].starts_with("CNI protocol versions supported: 0."), "{p}: {stderr}");
        assert!(lines[1].ends_with(", 1.0.0, 1.1.0"), "{p}: {stderr}");

        let (code, stdout, stderr) =
            in_empty_root(&root.0, &format!("/{p}"), &[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"1.0.0"}"#, None);
        assert_eq!(code, 0, "{p} VERSION: {stdout} {stderr}");
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert!(v["supportedVersions"].as_array().unwrap().iter().any(|s| s == "1.1.0"), "{p}: {stdout}");
    }
}

#[test]
fn loopback_adds_and_deletes_from_a_root_holding_only_the_binaries() {
    require_root!();
    let root = unpacked("lo");
    let ns = Netns::new("rel").unwrap();
    ns.run("ip", &["link", "set", "lo", "down"]).unwrap();
    let lo_up = |ns: &Netns| ns.ip_json(&["link", "show", "lo"]).unwrap()[0]["flags"].to_string().contains("\"UP\"");
    let conf = r#"{"cniVersion":"1.0.0","name":"lonet","type":"loopback"}"#;
    for (command, up) in [("ADD", true), ("DEL", false)] {
        let env = [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", "ctr1"),
            ("CNI_NETNS", "/netns"),
            ("CNI_IFNAME", "lo"),
            ("CNI_PATH", "/"),
        ];
        let (code, stdout, stderr) = in_empty_root(&root.0, "/loopback", &env, conf, Some(&ns));
        assert_eq!(code, 0, "{command}: {stdout} {stderr}");
        assert_eq!(lo_up(&ns), up, "{command}");
        if command == "ADD" {
            let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
            assert_eq!(r["ips"][0]["address"], "127.0.0.1/8", "{stdout}");
        }
    }
}

/// The safe upgrade command README documents (the line after the `TGZ=… DIR=…` line in its
/// "Upgrade" section), so what is tested is what users copy.
fn documented_upgrade_command() -> String {
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let mut lines = readme.lines().skip_while(|l| !l.starts_with("TGZ=cni-plugins-linux-"));
    lines.next().expect("README has no 'TGZ=cni-plugins-linux-… DIR=…' line");
    lines.next().expect("README has no upgrade command after the TGZ= line").to_string()
}

#[test]
fn upgrading_a_live_plugin_directory_fails_no_call() {
    require_root!();
    let dir = unpacked("live");
    let tgz = dist_dir().join(tarball_name());
    let command = documented_upgrade_command();
    assert!(command.contains("mv") && command.contains("$DIR") && command.contains("$TGZ"), "{command}");
    let bin = dir.0.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let during = Arc::new(AtomicUsize::new(0));
    let upgrading = Arc::new(AtomicBool::new(false));
    let conf = r#"{"cniVersion":"1.0.0","name":"lonet","type":"loopback"}"#;
    let callers: Vec<_> = (0..8)
        .map(|i| {
            let (bin, stop, calls, during, upgrading) =
                (bin.clone(), stop.clone(), calls.clone(), during.clone(), upgrading.clone());
            std::thread::spawn(move || -> Vec<String> {
                let ns = Netns::new("up").unwrap();
                let mut failures = Vec::new();
                let id = format!("ctr{i}");
                while !stop.load(Ordering::SeqCst) {
                    for command in ["ADD", "DEL"] {
                        let env = [
                            ("CNI_COMMAND", command),
                            ("CNI_CONTAINERID", id.as_str()),
                            ("CNI_NETNS", &ns.path()),
                            ("CNI_IFNAME", "lo"),
                            ("CNI_PATH", bin.to_str().unwrap()),
                        ];
                        let busy = upgrading.load(Ordering::SeqCst);
                        match exec(&bin.join("loopback"), &env, conf.as_bytes(), None) {
                            Ok(out) if out.ok() => {}
                            Ok(out) => {
                                failures.push(format!("{command}: exit {} {} {}", out.code, out.stdout, out.stderr))
                            }
                            Err(e) => failures.push(format!("{command}: {e:#}")),
                        }
                        calls.fetch_add(1, Ordering::SeqCst);
                        if busy && upgrading.load(Ordering::SeqCst) {
                            during.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
                failures
            })
        })
        .collect();
    // Let every caller get going, then upgrade the directory again and again under them.
    while calls.load(Ordering::SeqCst) < 16 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let upgrades = 20;
    upgrading.store(true, Ordering::SeqCst);
    // Alternately the README's command and `scripts/dev install-from` (what `scripts/dev install`
    // does after building), each replacing every plugin under the callers.
    let source = unpacked("src");
    for i in 0..upgrades {
        let out = if i % 2 == 0 {
            Command::new("sh").args(["-c", &command]).env("TGZ", &tgz).env("DIR", &bin).output().unwrap()
        } else {
            Command::new("bash")
                .arg(workspace().join("scripts/dev"))
                .arg("install-from")
                .arg(&source.0)
                .env("CNI_BIN_DIR", &bin)
                .output()
                .unwrap()
        };
        assert!(out.status.success(), "upgrade {i}: {}", String::from_utf8_lossy(&out.stderr));
    }
    upgrading.store(false, Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    let failures: Vec<String> = callers.into_iter().flat_map(|c| c.join().unwrap()).collect();
    let during = during.load(Ordering::SeqCst);
    eprintln!("{} calls, {during} of them while {upgrades} upgrades ran", calls.load(Ordering::SeqCst));
    assert!(during >= 50, "the callers barely overlapped the upgrades ({during} calls): the test proves nothing");
    assert!(failures.is_empty(), "{} calls failed, e.g. {:?}", failures.len(), &failures[..failures.len().min(5)]);
    // Nothing of the upgrade is left beside the plugins.
    let leftovers: Vec<_> = std::fs::read_dir(&bin)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

// ---------------------------------------------------------------------------------------------
// The about line as runtimes parse it.

/// (major, minor, patch, prerelease identifiers): what semver precedence looks at.
type Semver = (u64, u64, u64, Vec<String>);

/// nerdctl's reading of a version (`pkg/netutil/netutil_unix.go` `guessFirewallPluginVersion`:
/// the rest of the stderr line after `CNI <type> plugin `, given to Masterminds/semver v3
/// `NewVersion`, whose default coercing mode matches
/// `^v?([0-9]+)(\.[0-9]+)?(\.[0-9]+)?(-([0-9A-Za-z\-]+(\.[0-9A-Za-z\-]+)*))?(\+([0-9A-Za-z\-]+(\.[0-9A-Za-z\-]+)*))?$`
/// and then refuses numeric prerelease identifiers with a leading zero). Returns
/// (major, minor, patch, prerelease identifiers); build metadata never takes part in comparisons.
fn nerdctl_version(stderr: &str, plugin: &str) -> Option<Semver> {
    let prefix = format!("CNI {plugin} plugin ");
    let rest = stderr.lines().find_map(|l| l.strip_prefix(prefix.as_str()))?;
    let ident = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let s = rest.strip_prefix('v').unwrap_or(rest);
    let (s, meta) = s.split_once('+').map_or((s, None), |(a, b)| (a, Some(b)));
    if meta.is_some_and(|m| !m.split('.').all(ident)) {
        return None;
    }
    let (core, pre) = s.split_once('-').map_or((s, None), |(a, b)| (a, Some(b)));
    let pre: Vec<String> = match pre {
        None => Vec::new(),
        Some(p) if p.split('.').all(ident) => p.split('.').map(str::to_string).collect(),
        Some(_) => return None,
    };
    if pre.iter().any(|i| i.len() > 1 && i.starts_with('0') && i.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    let nums: Vec<&str> = core.split('.').collect();
    if nums.is_empty() || nums.len() > 3 || !nums.iter().all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let n = |i: usize| nums.get(i).map_or(Some(0), |x| x.parse().ok());
    Some((n(0)?, n(1)?, n(2)?, pre))
}

/// Semver precedence of (major, minor, patch, prerelease): a release ranks above its
/// prereleases; prerelease identifiers compare numerically when both are numbers.
fn semver_cmp(a: &Semver, b: &Semver) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    let core = (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2));
    if core != Equal {
        return core;
    }
    match (a.3.is_empty(), b.3.is_empty()) {
        (true, true) => Equal,
        (true, false) => Greater,
        (false, true) => Less,
        (false, false) => {
            for (x, y) in a.3.iter().zip(&b.3) {
                let o = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(x), Ok(y)) => x.cmp(&y),
                    (Ok(_), Err(_)) => Less,
                    (Err(_), Ok(_)) => Greater,
                    _ => x.cmp(y),
                };
                if o != Equal {
                    return o;
                }
            }
            a.3.len().cmp(&b.3.len())
        }
    }
}

/// Nomad's reading (`client/fingerprint/plugins_cni.go` `detectOnePlugin`): the first
/// whitespace-separated token of stdout+stderr that hashicorp/go-version `NewSemver` accepts,
/// i.e. matches `^v?([0-9]+(\.[0-9]+)*?)(-(…ident…))?(\+(…ident…))?$` with identifiers of
/// `[0-9A-Za-z\-~]`. Returns the token and its (segments padded to 3, prerelease).
fn nomad_version(output: &str) -> Option<(String, Semver)> {
    let ident = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'~');
    output.split_whitespace().find_map(|token| {
        let s = token.strip_prefix('v').unwrap_or(token);
        let (s, meta) = s.split_once('+').map_or((s, None), |(a, b)| (a, Some(b)));
        if meta.is_some_and(|m| !m.split('.').all(ident)) {
            return None;
        }
        let (core, pre) = s.split_once('-').map_or((s, None), |(a, b)| (a, Some(b)));
        if pre.is_some_and(|p| !p.split('.').all(ident)) {
            return None;
        }
        let nums: Vec<u64> = core
            .split('.')
            .map(|n| n.parse().ok().filter(|_| n.bytes().all(|b| b.is_ascii_digit())))
            .collect::<Option<_>>()?;
        let n = |i: usize| nums.get(i).copied().unwrap_or(0);
        let pre = pre.map(|p| p.split('.').map(str::to_string).collect()).unwrap_or_default();
        Some((token.to_string(), (n(0), n(1), n(2), pre)))
    })
}

fn v(s: &str) -> Semver {
    nerdctl_version(&format!("CNI x plugin {s}"), "x").unwrap()
}

#[test]
fn the_parsers_read_versions_as_nerdctl_and_nomad_do() {
    // nerdctl's own test cases (pkg/netutil/netutil_unix_test.go).
    assert_eq!(nerdctl_version("CNI firewall plugin v1.1.0\n", "firewall"), Some((1, 1, 0, vec![])));
    assert_eq!(
        nerdctl_version("Foo\nCNI firewall plugin v123.456.789+beta.10\nBar\n", "firewall"),
        Some((123, 456, 789, vec![]))
    );
    assert_eq!(nerdctl_version("CNI firewall plugin version unknown\n", "firewall"), None);
    assert_eq!(nerdctl_version("CNI plugin firewall (cni-plugins-rs 0.1.0)\n", "firewall"), None);
    assert!(semver_cmp(&v("v1.9.1-3d27709"), &v("v1.9.1")).is_lt());
    assert!(semver_cmp(&v("v1.9.1+rs.1"), &v("v1.9.1")).is_eq());
    assert!(semver_cmp(&v("v1.10.0"), &v("v1.9.1")).is_gt());
    // Nomad: the first token that parses, whatever line it is on.
    let debian = "CNI bridge plugin version unknown\nCNI protocol versions supported: 0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0\n";
    assert_eq!(nomad_version(debian).unwrap().0, "1.0.0");
    assert_eq!(
        nomad_version("CNI plugin bridge (cni-plugins-rs 0.1.0)\nCNI protocol versions supported: 0.1.0, 1.1.0")
            .unwrap()
            .0,
        "1.1.0"
    );
    assert_eq!(nomad_version("CNI bridge plugin v1.9.1-3d27709\n").unwrap().0, "v1.9.1-3d27709");
}

/// Every plugin's about line passes nerdctl's firewall checks (≥ v1.1.0 for isolation, ≥ v1.7.1
/// for `ingressPolicy: isolated`, read off that plugin's own line) and Nomad's `semver >= 0.4.0`
/// constraint on the token Nomad picks, and compares at least as high as the newest reference
/// build of the same plugin. Checked on the references too, so the parsers are seen to work.
#[test]
fn about_lines_pass_nerdctl_and_nomad_and_rank_with_the_newest_reference() {
    let head = reference_head();
    let suites: Vec<Suite> = [Some(ours()), reference(), head.clone()].into_iter().flatten().collect();
    for suite in &suites {
        for p in plugin_names().iter().map(String::as_str).chain(["firewall"]) {
            if !suite.has(p) {
                continue;
            }
            // As Nomad and nerdctl run it: no arguments, no CNI_COMMAND.
            let out = exec(&suite.plugin(p), &[], b"", None).unwrap();
            assert_eq!(out.code, 0, "{} {p}: {out:?}", suite.name);
            let nomad = nomad_version(&format!("{}{}", out.stdout, out.stderr));
            let nerdctl = nerdctl_version(&out.stderr, p);
            if suite.is_reference() {
                // Debian's v1.1.1 says "version unknown": nerdctl cannot read it, and Nomad takes
                // a spec version from the second line.
                assert_eq!(nerdctl, None, "{p}: {}", out.stderr);
                assert_eq!(nomad.unwrap().0, "1.0.0", "{p}");
                continue;
            }
            let nerdctl = nerdctl.unwrap_or_else(|| panic!("{} {p}: nerdctl cannot read {:?}", suite.name, out.stderr));
            assert!(semver_cmp(&nerdctl, &v("v1.7.1")).is_ge(), "{} {p}: {nerdctl:?}", suite.name);
            let (token, nomad) = nomad.unwrap();
            assert!(token.starts_with('v') && out.stderr.lines().next().unwrap().ends_with(&token), "{p}: {token}");
            assert!(semver_cmp(&nomad, &v("0.4.0")).is_ge(), "{} {p}: {token}", suite.name);
            if suite.is_ours() {
                assert_eq!(out.stderr.lines().next().unwrap(), format!("CNI {p} plugin v{VERSION}"));
                if let Some(h) = head.as_ref().filter(|h| h.has(p)) {
                    let theirs = exec(&h.plugin(p), &[], b"", None).unwrap();
                    let theirs = nerdctl_version(&theirs.stderr, p).unwrap();
                    assert!(
                        semver_cmp(&nerdctl, &theirs).is_ge(),
                        "{p}: ours {nerdctl:?} < newest reference {theirs:?}"
                    );
                }
            }
        }
    }
}
