//! `tuning`: sets sysctls and link attributes (MAC, MTU, promiscuous and all-multicast mode,
//! transmit queue length) on the container's interface, and puts the link attributes back on DEL
//! from a backup the reference can read too (wave2-anchors §1.5).
//!
//! Everything is checked before anything changes; the sysctl files and a netlink socket are
//! opened inside the container's namespace and used from the host side, so no thread or process
//! is ever left there. An ADD that fails half way writes back what it changed.

mod backup;
pub mod config;

use crate::errors::{internal, Collector, Ctx};
use crate::netlink::{Handle, Link, NetlinkError};
use crate::ns::{NetNs, NsError};
use backup::Backup;
use cni_types::{CmdArgs, CniError, CniResult, Plugin};
use config::{Mac, TuningConf};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

/// The tuning plugin.
pub struct Tuning;

/// A sysctl file opened in the container's namespace, with its value before any change (`None`
/// for a write-only file).
struct SysctlFile {
    file: File,
    original: Option<String>,
}

/// What an ADD opened in the container's namespace.
struct Opened {
    sysctls: Vec<SysctlFile>,
    handle: Option<Handle>,
}

fn read_value(file: &mut File) -> std::io::Result<String> {
    let mut s = String::new();
    file.read_to_string(&mut s)?;
    Ok(s)
}

/// Opens every sysctl file (and a netlink socket when `netlink`) inside `ns`, then switches back.
fn open_in(ns: &NetNs, conf: &TuningConf, writable: bool, netlink: bool) -> Result<Opened, CniError> {
    use nix::fcntl::OFlag;
    let opened = ns.run(|| -> Result<Opened, CniError> {
        let mut sysctls = Vec::with_capacity(conf.sysctls.len());
        for s in &conf.sysctls {
            let access = if writable { OFlag::O_RDWR } else { OFlag::O_RDONLY };
            let opened = match crate::sysctl::open_relative(&s.rel, access) {
                // Write-only knobs (mode 0200) cannot be read back, even by root.
                Err(e) if writable && e.raw_os_error() == Some(nix::libc::EACCES) => {
                    crate::sysctl::open_relative(&s.rel, OFlag::O_WRONLY)
                        .map(|file| SysctlFile { file, original: None })
                }
                Ok(mut file) => {
                    let original = read_value(&mut file).ok();
                    Ok(SysctlFile { file, original })
                }
                Err(e) => Err(e),
            };
            sysctls.push(opened.map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    CniError::invalid_config(format!(
                        "sysctl {:?}: /proc/sys/{} does not exist in the container's network namespace",
                        s.key, s.rel
                    ))
                } else {
                    internal(format!("open /proc/sys/{} in {}: {e}", s.rel, ns.path().display()))
                }
            })?);
        }
        let handle = if netlink {
            Some(Handle::new().ctx(|| format!("open netlink socket in {}", ns.path().display()))?)
        } else {
            None
        };
        Ok(Opened { sysctls, handle })
    });
    opened?
}

fn container_link(h: &mut Handle, ifname: &str) -> Result<Link, CniError> {
    h.link_by_name(ifname)
        .ctx(|| format!("failed to get {ifname:?}"))?
        .ok_or_else(|| internal(format!("failed to get {ifname:?}: Link not found")))
}

/// Checks the requested attributes against what this link accepts, before anything changes.
fn check_fits(conf: &TuningConf, link: &Link) -> Result<(), CniError> {
    if let Some(mac) = &conf.mac {
        if link.mac.is_empty() {
            return Err(CniError::invalid_config(format!("mac: {} has no hardware address to set", link.name)));
        }
        if mac.bytes.len() != link.mac.len() {
            return Err(CniError::invalid_config(format!(
                "mac: {} has {} bytes, but {} takes {}-byte hardware addresses",
                mac.text(),
                mac.bytes.len(),
                link.name,
                link.mac.len()
            )));
        }
    }
    if let Some(mtu) = conf.mtu {
        let (min, max) = (link.min_mtu.unwrap_or(0), link.max_mtu.filter(|m| *m > 0).unwrap_or(u32::MAX));
        if mtu < min || mtu > max {
            return Err(CniError::invalid_config(format!(
                "mtu: {} takes an MTU from {min} to {max}, not {mtu}",
                link.name
            )));
        }
    }
    Ok(())
}

/// The backup of what `conf` is about to change on `link`.
fn backup_of(conf: &TuningConf, link: &Link) -> Backup {
    Backup {
        mac: if conf.mac.is_some() { link.mac_string() } else { String::new() },
        promisc: conf.promisc.then_some(link.promisc),
        mtu: if conf.mtu.is_some() { i64::from(link.mtu) } else { 0 },
        allmulti: conf.allmulti.map(|_| link.allmulti),
        txqlen: conf.txqlen.map(|_| i64::from(link.tx_queue_len)),
    }
}

/// Puts back the attributes `b` holds, in the reference's order, each whatever the others did;
/// the error says what failed.
fn restore(h: &mut Handle, index: u32, b: &Backup) -> Result<(), String> {
    let mut errors = Collector::new();
    if b.mtu != 0 {
        match u32::try_from(b.mtu) {
            Ok(mtu) => {
                if let Err(e) = h.set_link_mtu(index, mtu) {
                    errors.push(format!("failed to restore MTU: {e}"));
                }
            }
            Err(_) => errors.push(format!("failed to restore MTU: {} is not an MTU", b.mtu)),
        }
    }
    if !b.mac.is_empty() {
        match config::parse_hw_addr(&b.mac) {
            Ok(mac) => {
                if let Err(e) = h.set_link_mac(index, &mac) {
                    errors.push(format!("failed to restore MAC address: {e}"));
                }
            }
            Err(why) => errors.push(format!("failed to restore MAC address {:?}: {why}", b.mac)),
        }
    }
    if let Some(on) = b.promisc {
        if let Err(e) = h.set_link_promisc(index, on) {
            errors.push(format!("failed to restore promiscuous mode: {e}"));
        }
    }
    if let Some(on) = b.allmulti {
        if let Err(e) = h.set_link_allmulti(index, on) {
            errors.push(format!("failed to restore all-multicast mode: {e}"));
        }
    }
    if let Some(q) = b.txqlen {
        match u32::try_from(q) {
            Ok(q) => {
                if let Err(e) = h.set_link_txqlen(index, q) {
                    errors.push(format!("failed to restore transmit queue length: {e}"));
                }
            }
            Err(_) => errors.push(format!("failed to restore transmit queue length: {q} is not a length")),
        }
    }
    errors.finish()
}

/// What an ADD changed so far, undone in reverse when a later step fails.
#[derive(Default)]
struct Undo {
    sysctls: Vec<(File, String)>,
    backup: Option<(PathBuf, Option<Vec<u8>>)>,
    link: Option<(u32, Backup)>,
}

impl Undo {
    fn run(self, handle: Option<&mut Handle>) {
        if let (Some((index, changed)), Some(h)) = (self.link, handle) {
            if let Err(e) = restore(h, index, &changed) {
                log::warn!("rolling back: {e}");
            }
        }
        if let Some((path, previous)) = self.backup {
            let undone = match previous {
                Some(bytes) => backup::write(&path, &bytes, None),
                None => backup::remove(&path),
            };
            if let Err(e) = undone {
                log::warn!("rolling back {}: {e}", path.display());
            }
        }
        for (file, original) in self.sysctls.iter().rev() {
            if let Err(e) = file.write_at(original.as_bytes(), 0) {
                log::warn!("rolling back a sysctl to {:?}: {e}", original.trim_end());
            }
        }
    }
}

fn apply(conf: &TuningConf, args: &CmdArgs, opened: &mut Opened, undo: &mut Undo) -> Result<(), CniError> {
    let link = match opened.handle.as_mut() {
        Some(h) => {
            let link = container_link(h, &args.ifname)?;
            check_fits(conf, &link)?;
            Some(link)
        }
        None => None,
    };
    for (s, f) in conf.sysctls.iter().zip(&opened.sysctls) {
        f.file.write_at(s.value.as_bytes(), 0).ctx(|| format!("write {:?} to /proc/sys/{}", s.value, s.rel))?;
        if let Some(original) = &f.original {
            undo.sysctls.push((f.file.try_clone().map_err(internal)?, original.clone()));
        }
    }
    let (Some(link), Some(h)) = (link, opened.handle.as_mut()) else { return Ok(()) };

    let original = backup_of(conf, &link);
    let path = backup::path(&conf.data_dir, &args.container_id, &args.ifname);
    let previous = backup::read(&path).ok().flatten();
    backup::write(&path, &original.to_bytes(), Some(&conf.network))
        .ctx(|| format!("failed to save backup {}", path.display()))?;
    undo.backup = Some((path, previous));

    let mut changed = Backup::default();
    let index = link.index;
    let step = |r: Result<(), NetlinkError>| r.map_err(|e| CniError::from(e.on(&link.name)));
    if let Some(mac) = &conf.mac {
        step(h.set_link_mac(index, &mac.bytes))?;
        changed.mac.clone_from(&original.mac);
        undo.link = Some((index, changed.clone()));
    }
    if conf.promisc {
        step(h.set_link_promisc(index, true))?;
        changed.promisc = original.promisc;
        undo.link = Some((index, changed.clone()));
    }
    if let Some(mtu) = conf.mtu {
        step(h.set_link_mtu(index, mtu))?;
        changed.mtu = original.mtu;
        undo.link = Some((index, changed.clone()));
    }
    if let Some(on) = conf.allmulti {
        step(h.set_link_allmulti(index, on))?;
        changed.allmulti = original.allmulti;
        undo.link = Some((index, changed.clone()));
    }
    if let Some(q) = conf.txqlen {
        step(h.set_link_txqlen(index, q))?;
        changed.txqlen = original.txqlen;
        undo.link = Some((index, changed));
    }
    Ok(())
}

/// Rewrites the result's entry for the tuned interface.
fn update_result(prev: &mut CniResult, ifname: &str, mac: Option<&Mac>, mtu: Option<u32>) {
    for iface in prev.interfaces.iter_mut().filter(|i| i.name == ifname) {
        if let Some(mac) = mac {
            iface.mac = mac.text();
        }
        // Only where the previous plugin reported one (1.1.0), so it stays true.
        if let (Some(mtu), Some(_)) = (mtu, iface.mtu) {
            iface.mtu = Some(mtu);
        }
    }
}

/// Sysctl values compare as the kernel prints them: fields separated by any whitespace.
fn same_value(a: &str, b: &str) -> bool {
    a.split_whitespace().eq(b.split_whitespace())
}

impl Plugin for Tuning {
    fn about(&self) -> String {
        crate::about("tuning")
    }

    fn add(&self, args: &CmdArgs) -> Result<CniResult, CniError> {
        let conf = config::parse(args)?;
        config::check_allowlist(&conf.sysctls)?;
        let mut prev = args.prev_result()?.ok_or_else(|| internal("Required prevResult missing"))?;
        let ns = NetNs::open(&args.netns)?;
        if conf.sysctls.is_empty() && !conf.changes_link() {
            return Ok(prev);
        }
        let mut opened = open_in(&ns, &conf, true, conf.changes_link())?;
        let mut undo = Undo::default();
        if let Err(e) = apply(&conf, args, &mut opened, &mut undo) {
            undo.run(opened.handle.as_mut());
            return Err(e);
        }
        update_result(&mut prev, &args.ifname, conf.mac.as_ref(), conf.mtu);
        Ok(prev)
    }

    fn del(&self, args: &CmdArgs) -> Result<(), CniError> {
        let dir = config::data_dir(args)?;
        let path = backup::path(&dir, &args.container_id, &args.ifname);
        let bytes = match backup::read(&path) {
            Ok(None) => return Ok(()),
            Ok(Some(b)) => b,
            Err(e) => {
                log::warn!("not restoring {} from {}: {e}", args.ifname, path.display());
                return Ok(());
            }
        };
        match Backup::from_bytes(&bytes) {
            Ok(b) => restore_in(args, &b),
            Err(e) => log::warn!("not restoring {} from {}: {e}", args.ifname, path.display()),
        }
        // Once DEL has run the attachment is gone: nothing will read this backup again.
        if let Err(e) = backup::remove(&path) {
            log::warn!("remove {}: {e}", path.display());
        }
        Ok(())
    }

    fn check(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = config::parse(args)?;
        args.prev_result()?.ok_or_else(|| internal("Required prevResult missing"))?;
        let ns = NetNs::open(&args.netns)?;
        let mut opened = open_in(&ns, &conf, false, true)?;
        for (s, f) in conf.sysctls.iter().zip(&opened.sysctls) {
            let current = f.original.as_deref().unwrap_or_default();
            if !same_value(current, &s.value) {
                return Err(internal(format!(
                    "Error: Tuning configured value of /proc/sys/{} is {}, current value is {}",
                    s.rel,
                    s.value,
                    current.trim_end()
                )));
            }
        }
        let Some(h) = opened.handle.as_mut() else { return Err(internal("no netlink socket")) };
        let link = h
            .link_by_name(&args.ifname)?
            .ok_or_else(|| internal(format!("Cannot find container link {}", args.ifname)))?;
        let name = &args.ifname;
        if let Some(mac) = &conf.mac {
            if mac.bytes != link.mac {
                return Err(internal(format!(
                    "Error: Tuning configured Ethernet of {name} is {}, current value is {}",
                    mac.text(),
                    link.mac_string()
                )));
            }
        }
        // Only a promiscuous mode that was asked for is checked: a container may turn it on
        // itself (tcpdump), which the reference wrongly reports as a failure.
        if conf.promisc && !link.promisc {
            return Err(internal(format!("Error: Tuning link {name} configured promisc is true, current value is 0")));
        }
        if let Some(mtu) = conf.mtu.filter(|m| *m != link.mtu) {
            return Err(internal(format!(
                "Error: Tuning configured MTU of {name} is {mtu}, current value is {}",
                link.mtu
            )));
        }
        if let Some(on) = conf.allmulti.filter(|on| *on != link.allmulti) {
            return Err(internal(format!(
                "Error: Tuning configured all-multicast mode of {name} is {on}, current value is {}",
                link.allmulti
            )));
        }
        if let Some(q) = conf.txqlen.filter(|q| *q != link.tx_queue_len) {
            return Err(internal(format!(
                "Error: Tuning configured Transmit Queue Length of {name} is {q}, current value is {}",
                link.tx_queue_len
            )));
        }
        Ok(())
    }

    /// Removes this network's backups of attachments the runtime no longer has. Their links
    /// went with their namespaces, so there is nothing to restore. Only backups ours tagged with
    /// this network are touched: the file names do not say which network wrote them.
    fn gc(&self, args: &CmdArgs) -> Result<(), CniError> {
        let net = args.net_conf()?;
        let Some(valid) = net.gc_valid_attachments() else { return Ok(()) };
        let dir = config::data_dir(args)?;
        let keep: std::collections::HashSet<String> =
            valid.iter().map(|a| format!("{}_{}.json", a.container_id, a.ifname)).collect();
        let names = backup::list_network(&dir, &net.name).ctx(|| format!("list backups in {}", dir.display()))?;
        let mut errors = Collector::new();
        for name in names.iter().filter(|n| !keep.contains(*n)) {
            errors.step(|| format!("remove {}", dir.join(name).display()), backup::remove(&dir.join(name)));
        }
        errors.into_cni()
    }
}

/// Restores `b` on the attachment's link; a namespace or link that is gone has nothing to
/// restore. Failures are logged, never returned: DEL must not get stuck on a link it cannot
/// put back (the reference ignores them too).
fn restore_in(args: &CmdArgs, b: &Backup) {
    let ns = match NetNs::open(&args.netns) {
        Ok(ns) => ns,
        Err(NsError::NotExist(_)) => return,
        Err(e) => return log::warn!("not restoring {}: {e}", args.ifname),
    };
    let mut h = match ns.run(Handle::new) {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => return log::warn!("not restoring {}: netlink socket in {}: {e}", args.ifname, args.netns),
        Err(e) => return log::warn!("not restoring {}: {e}", args.ifname),
    };
    match h.link_by_name(&args.ifname) {
        Ok(Some(link)) => {
            if let Err(e) = restore(&mut h, link.index, b) {
                log::warn!("{}: {e}", args.ifname);
            }
        }
        Ok(None) => {}
        Err(e) => log::warn!("not restoring {}: {e}", args.ifname),
    }
}
