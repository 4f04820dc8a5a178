//! Allocation, release, lookup and garbage collection over a [`Backend`]; the caller holds the
//! store's lock for the whole call, so each function sees and leaves a consistent store.

use super::range::RangeSet;
use super::store::{Backend, Owner, Reservation};
use crate::errors::Collector;
use cni_types::{Attachment, IpConfig};
use std::collections::HashSet;
use std::net::IpAddr;

fn io_context(what: &str) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Allocates one address from every range set for `(id, ifname)`; a requested address is
/// taken from the first set that holds it. Everything that can refuse is read before the first
/// reservation, the `last_reserved_ip` hints are written only once every set has its address,
/// and on any failure everything this call reserved is released again, so a failed ADD leaves
/// the store as it found it.
pub fn allocate(
    store: &mut impl Backend,
    sets: &[RangeSet],
    requested: &[IpAddr],
    id: &str,
    ifname: &str,
) -> Result<Vec<IpConfig>, String> {
    let existing = store.reservations().map_err(io_context("failed to read reservations"))?;
    let hints = (0..sets.len())
        .map(|idx| store.last_reserved(idx))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(io_context("failed to read the last reserved address"))?;
    let mut taken: HashSet<IpAddr> = existing.iter().map(|r| r.ip).collect();
    let mut pending: Vec<IpAddr> = requested.to_vec();
    let mut reserved: Vec<IpAddr> = Vec::new();
    let mut out = Vec::with_capacity(sets.len());

    for (idx, set) in sets.iter().enumerate() {
        let wanted = pending.iter().position(|ip| set.contains(*ip)).map(|i| pending.remove(i));
        let step = allocate_in_set(store, &existing, &mut taken, set, hints[idx], wanted, id, ifname);
        match step {
            Ok((ip, config)) => {
                reserved.push(ip);
                out.push(config);
            }
            Err(e) => {
                roll_back(store, &reserved);
                return Err(format!("failed to allocate for range {idx}: {e}"));
            }
        }
    }
    if !pending.is_empty() {
        roll_back(store, &reserved);
        let list: Vec<String> = pending.iter().map(IpAddr::to_string).collect();
        return Err(format!("failed to allocate all requested IPs: {}", list.join(" ")));
    }
    for (idx, ip) in reserved.iter().enumerate() {
        // Only round-robin depends on this file; losing it must not fail an ADD that succeeded.
        if let Err(e) = store.set_last_reserved(idx, *ip) {
            log::warn!("host-local: failed to record last reserved address {ip} of range set {idx}: {e}");
        }
    }
    Ok(out)
}

/// Releases what this invocation reserved (and only that: earlier reservations of the same
/// attachment, if any, are not ours to drop).
fn roll_back(store: &mut impl Backend, reserved: &[IpAddr]) {
    for ip in reserved {
        if let Err(e) = store.release(&ip.to_string()) {
            log::warn!("host-local: failed to roll back reservation of {ip}: {e}");
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn allocate_in_set(
    store: &mut impl Backend,
    existing: &[Reservation],
    taken: &mut HashSet<IpAddr>,
    set: &RangeSet,
    last: Option<IpAddr>,
    wanted: Option<IpAddr>,
    id: &str,
    ifname: &str,
) -> Result<(IpAddr, IpConfig), String> {
    // The spec forbids a second ADD for the same attachment; the same container with another
    // interface is a different attachment and gets its own address.
    if let Some(held) = existing.iter().find(|r| r.owner.belongs_to(id, ifname) && set.contains(r.ip)) {
        return Err(format!("{} has been allocated to {}, duplicate allocation is not allowed", held.ip, id.trim()));
    }

    let (ip, range) = match wanted {
        Some(ip) => {
            let range = set.range_for(ip).ok_or_else(|| format!("{ip} not in range set {set}"))?;
            if ip == range.gateway {
                return Err(format!("requested ip {ip} is subnet's gateway"));
            }
            if !range.is_allocatable(ip) {
                return Err(format!("requested ip {ip} is the network or broadcast address of {}", range.subnet));
            }
            let ok = store.reserve(ip, id, ifname).map_err(io_context(&format!("failed to reserve {ip}")))?;
            if !ok {
                return Err(format!("requested IP address {ip} is not available in range set {set}"));
            }
            (ip, range)
        }
        None => {
            let mut found = None;
            for (ip, range) in set.candidates(last) {
                if taken.contains(&ip) {
                    continue;
                }
                let ok = store.reserve(ip, id, ifname).map_err(io_context(&format!("failed to reserve {ip}")))?;
                if ok {
                    found = Some((ip, range));
                    break;
                }
                // Held by a writer that did not show up in our scan: remember and move on.
                taken.insert(ip);
            }
            found.ok_or_else(|| format!("no IP addresses available in range set: {set}"))?
        }
    };
    taken.insert(ip);
    let config = IpConfig { interface: None, address: range.address(ip)?, gateway: Some(range.gateway) };
    Ok((ip, config))
}

/// Releases every address of `(id, ifname)`; when there is none, the container's legacy
/// (ID-only) records. Returns how many were released; continues past errors and reports all.
pub fn release(store: &mut impl Backend, id: &str, ifname: &str) -> Result<usize, String> {
    let all = store.reservations().map_err(io_context("failed to read reservations"))?;
    let mut mine: Vec<&Reservation> = all.iter().filter(|r| r.owner.is_attachment(id, ifname)).collect();
    if mine.is_empty() {
        mine = all.iter().filter(|r| r.owner.is_legacy_of(id)).collect();
    }
    let mut errors = Vec::new();
    for r in &mine {
        if let Err(e) = store.release(&r.name) {
            errors.push(format!("failed to release {}: {e}", r.ip));
        }
    }
    if errors.is_empty() {
        Ok(mine.len())
    } else {
        // The reference's DEL joins its errors with ";" and no space: kept, since runtimes log it.
        Err(errors.join(";"))
    }
}

/// Whether `(id, ifname)` (or a legacy record of `id`) holds any address.
pub fn find(store: &impl Backend, id: &str, ifname: &str) -> Result<bool, String> {
    let all = store.reservations().map_err(io_context("failed to read reservations"))?;
    Ok(all.iter().any(|r| r.owner.belongs_to(id, ifname)))
}

/// Whether a reservation belongs to one of the `valid` attachments. A legacy record names no
/// interface, so it stays while its container has any valid attachment.
fn is_valid(owner: &Owner, valid: &[Attachment]) -> bool {
    match owner {
        Owner::Attachment { id, ifname } => valid.iter().any(|a| a.container_id.trim() == id && &a.ifname == ifname),
        Owner::Legacy(id) => valid.iter().any(|a| a.container_id.trim() == id),
    }
}

/// Releases every reservation not held by one of the `valid` attachments; returns how many.
/// Continues past errors and reports them all.
pub fn gc(store: &mut impl Backend, valid: &[Attachment]) -> Result<usize, String> {
    let all = store.reservations().map_err(io_context("failed to read reservations"))?;
    // The reference has no GC, so no text to match: the library's Collector, like every GC.
    let mut released = 0;
    let mut errors = Collector::<String>::new();
    for r in all.iter().filter(|r| !is_valid(&r.owner, valid)) {
        if errors.keep(store.release(&r.name).map_err(|e| format!("failed to release {}: {e}", r.ip))).is_some() {
            released += 1;
        }
    }
    errors.finish().map(|()| released)
}

/// The indices of the range sets in which no address is free.
pub fn exhausted_sets(store: &impl Backend, sets: &[RangeSet]) -> Result<Vec<usize>, String> {
    let all = store.reservations().map_err(io_context("failed to read reservations"))?;
    let taken: HashSet<IpAddr> = all.iter().map(|r| r.ip).collect();
    let mut full = Vec::new();
    for (idx, set) in sets.iter().enumerate() {
        let last = store.last_reserved(idx).map_err(io_context("failed to read the last reserved address"))?;
        if !set.candidates(last).any(|(ip, _)| !taken.contains(&ip)) {
            full.push(idx);
        }
    }
    Ok(full)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host_local::range::canonical;
    use crate::host_local::store::tests::TempDir;
    use crate::host_local::store::DiskStore;
    use cni_types::IpRange;
    use std::collections::BTreeMap;
    use std::io;

    /// The store in memory, with the disk store's semantics.
    #[derive(Default)]
    struct MemStore {
        files: BTreeMap<String, String>,
        last: BTreeMap<usize, IpAddr>,
    }

    impl Backend for MemStore {
        fn reservations(&self) -> io::Result<Vec<Reservation>> {
            Ok(self
                .files
                .iter()
                .filter_map(|(name, content)| {
                    let ip = name.parse().ok()?;
                    Some(Reservation { ip: canonical(ip), name: name.clone(), owner: Owner::parse(content) })
                })
                .collect())
        }
        fn reserve(&mut self, ip: IpAddr, id: &str, ifname: &str) -> io::Result<bool> {
            let name = ip.to_string();
            if self.files.contains_key(&name) {
                return Ok(false);
            }
            self.files.insert(name, Owner::encode(id, ifname));
            Ok(true)
        }
        fn release(&mut self, name: &str) -> io::Result<()> {
            self.files.remove(name);
            Ok(())
        }
        fn last_reserved(&self, set: usize) -> io::Result<Option<IpAddr>> {
            Ok(self.last.get(&set).copied())
        }
        fn set_last_reserved(&mut self, set: usize, ip: IpAddr) -> io::Result<()> {
            self.last.insert(set, ip);
            Ok(())
        }
    }

    fn sets(specs: &[&[&str]]) -> Vec<RangeSet> {
        specs
            .iter()
            .map(|set| {
                let raw: Vec<IpRange> =
                    set.iter().map(|s| IpRange { subnet: s.to_string(), ..Default::default() }).collect();
                RangeSet::parse(&raw).unwrap()
            })
            .collect()
    }

    fn add(store: &mut impl Backend, sets: &[RangeSet], id: &str) -> Result<String, String> {
        let ips = allocate(store, sets, &[], id, "eth0")?;
        Ok(ips.iter().map(|c| c.address.to_string()).collect::<Vec<_>>().join(" "))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The sequence observed with the reference on a /29.
    fn observed_sequence(store: &mut impl Backend) {
        let s = sets(&[&["10.252.0.0/29"]]);
        assert_eq!(add(store, &s, "a").unwrap(), "10.252.0.2/29");
        assert_eq!(add(store, &s, "b").unwrap(), "10.252.0.3/29");
        assert_eq!(add(store, &s, "c").unwrap(), "10.252.0.4/29");
        assert_eq!(add(store, &s, "d").unwrap(), "10.252.0.5/29");
        assert_eq!(release(store, "b", "eth0").unwrap(), 1);
        assert_eq!(add(store, &s, "e").unwrap(), "10.252.0.6/29", "round robin, not the freed .3");
        assert_eq!(add(store, &s, "f").unwrap(), "10.252.0.3/29", "wraps to the freed address");
        assert_eq!(
            add(store, &s, "g").unwrap_err(),
            "failed to allocate for range 0: no IP addresses available in range set: 10.252.0.1-10.252.0.6"
        );
        assert_eq!(exhausted_sets(store, &s).unwrap(), [0]);
    }

    #[test]
    fn observed_sequence_in_memory() {
        observed_sequence(&mut MemStore::default());
    }

    #[test]
    fn observed_sequence_on_disk() {
        let tmp = TempDir::new("alloc");
        let mut store = DiskStore::open(&tmp.0, "net").unwrap();
        observed_sequence(&mut store);
    }

    #[test]
    fn result_carries_gateway_and_prefix() {
        let mut store = MemStore::default();
        let s = sets(&[&["10.254.0.0/24"], &["fd00:254::/120"]]);
        let ips = allocate(&mut store, &s, &[], "c1", "eth0").unwrap();
        assert_eq!(ips[0].address.to_string(), "10.254.0.2/24");
        assert_eq!(ips[0].gateway, Some(ip("10.254.0.1")));
        assert_eq!(ips[1].address.to_string(), "fd00:254::2/120");
        assert_eq!(ips[1].gateway, Some(ip("fd00:254::1")));
        assert!(ips.iter().all(|c| c.interface.is_none()));
        assert_eq!(store.last.get(&1), Some(&ip("fd00:254::2")));
    }

    #[test]
    fn duplicate_add_is_refused_but_second_interface_is_not() {
        let mut store = MemStore::default();
        let s = sets(&[&["10.1.0.0/24"]]);
        allocate(&mut store, &s, &[], "c1", "eth0").unwrap();
        let e = allocate(&mut store, &s, &[], "c1", "eth0").unwrap_err();
        assert_eq!(
            e,
            "failed to allocate for range 0: 10.1.0.2 has been allocated to c1, duplicate allocation is not allowed"
        );
        let second = allocate(&mut store, &s, &[], "c1", "eth1").unwrap();
        assert_eq!(second[0].address.to_string(), "10.1.0.3/24");
        assert_eq!(store.files.len(), 2, "the refused ADD left nothing behind");
        // A legacy record of the container counts as holding an address too.
        store.files.insert("10.1.0.50".into(), "c9".into());
        assert!(allocate(&mut store, &s, &[], "c9", "eth0").unwrap_err().contains("duplicate"));
    }

    #[test]
    fn requested_addresses() {
        let mut store = MemStore::default();
        let s = sets(&[&["10.1.0.0/24"], &["fd00::/64"]]);
        let got = allocate(&mut store, &s, &[ip("fd00::99"), ip("10.1.0.77")], "c1", "eth0").unwrap();
        assert_eq!(got[0].address.to_string(), "10.1.0.77/24");
        assert_eq!(got[1].address.to_string(), "fd00::99/64");
        // The requested address moves the round-robin position, as in the reference.
        assert_eq!(store.last.get(&0), Some(&ip("10.1.0.77")));

        let err = |store: &mut MemStore, req: &[&str]| {
            let req: Vec<IpAddr> = req.iter().map(|s| ip(s)).collect();
            let before = store.files.clone();
            let e = allocate(store, &s, &req, "c2", "eth0").unwrap_err();
            assert_eq!(store.files, before, "nothing stays allocated after: {e}");
            e
        };
        assert_eq!(
            err(&mut store, &["10.1.0.1"]),
            "failed to allocate for range 0: requested ip 10.1.0.1 is subnet's gateway"
        );
        assert_eq!(
            err(&mut store, &["10.1.0.77"]),
            "failed to allocate for range 0: requested IP address 10.1.0.77 is not available in range set 10.1.0.1-10.1.0.254"
        );
        assert_eq!(
            err(&mut store, &["fd00::99"]),
            "failed to allocate for range 1: requested IP address fd00::99 is not available in range set fd00::1-fd00::ffff:ffff:ffff:ffff"
        );
        assert_eq!(err(&mut store, &["10.2.0.5"]), "failed to allocate all requested IPs: 10.2.0.5");
        assert_eq!(err(&mut store, &["10.1.0.5", "10.1.0.6"]), "failed to allocate all requested IPs: 10.1.0.6");
    }

    #[test]
    fn requested_network_and_broadcast_are_refused() {
        let raw = [IpRange {
            subnet: "10.3.0.0/29".into(),
            range_start: "10.3.0.0".into(),
            range_end: "10.3.0.7".into(),
            gateway: "10.3.0.1".into(),
        }];
        let s = vec![RangeSet::parse(&raw).unwrap()];
        let mut store = MemStore::default();
        for bad in ["10.3.0.0", "10.3.0.7"] {
            let e = allocate(&mut store, &s, &[ip(bad)], "c", "eth0").unwrap_err();
            assert!(e.contains("network or broadcast address of 10.3.0.0/29"), "{e}");
        }
    }

    #[test]
    fn failure_in_a_later_set_releases_the_earlier_ones() {
        let mut store = MemStore::default();
        let s = sets(&[&["10.1.0.0/24"], &["10.2.0.0/30"]]);
        allocate(&mut store, &s, &[], "c1", "eth0").unwrap();
        let e = allocate(&mut store, &s, &[], "c2", "eth0").unwrap_err();
        assert_eq!(e, "failed to allocate for range 1: no IP addresses available in range set: 10.2.0.1-10.2.0.2");
        assert_eq!(store.files.len(), 2);
        assert_eq!(exhausted_sets(&store, &s).unwrap(), [1]);
    }

    #[test]
    fn release_prefers_exact_match_then_legacy() {
        let mut store = MemStore::default();
        store.files.insert("10.0.0.2".into(), "c1\r\neth0".into());
        store.files.insert("10.0.0.3".into(), "c1\r\neth1".into());
        store.files.insert("10.0.0.4".into(), "c1".into());
        assert_eq!(release(&mut store, "c1", "eth0").unwrap(), 1);
        assert!(store.files.contains_key("10.0.0.3") && store.files.contains_key("10.0.0.4"));
        // Nothing for eth2 itself: the legacy ID-only record goes.
        assert_eq!(release(&mut store, "c1", "eth2").unwrap(), 1);
        assert_eq!(store.files.keys().collect::<Vec<_>>(), ["10.0.0.3"]);
        assert_eq!(release(&mut store, "unknown", "eth0").unwrap(), 0);
        assert!(find(&store, "c1", "eth1").unwrap());
        assert!(find(&store, "c1", "eth0").is_ok_and(|f| !f));
    }

    #[test]
    fn gc_keeps_valid_attachments_only() {
        let mut store = MemStore::default();
        store.files.insert("10.0.0.1".into(), "keep\r\neth0".into());
        store.files.insert("10.0.0.2".into(), "keep\r\neth1".into());
        store.files.insert("10.0.0.3".into(), "gone\r\neth0".into());
        store.files.insert("10.0.0.4".into(), "keep".into());
        store.files.insert("10.0.0.5".into(), "stale-legacy".into());
        store.files.insert("last_reserved_ip.0".into(), "gone".into());
        store.files.insert("lock".into(), String::new());
        let valid = [Attachment { container_id: "keep".into(), ifname: "eth0".into() }];
        assert_eq!(gc(&mut store, &valid).unwrap(), 3);
        assert_eq!(store.files.keys().collect::<Vec<_>>(), ["10.0.0.1", "10.0.0.4", "last_reserved_ip.0", "lock"]);
        assert_eq!(gc(&mut store, &[]).unwrap(), 2);
        assert_eq!(store.files.keys().collect::<Vec<_>>(), ["last_reserved_ip.0", "lock"]);
    }

    #[test]
    fn ipv6_exhaustion_includes_the_last_address() {
        let mut store = MemStore::default();
        let s = sets(&[&["fd00::/126"]]);
        assert_eq!(add(&mut store, &s, "a").unwrap(), "fd00::2/126");
        assert_eq!(add(&mut store, &s, "b").unwrap(), "fd00::3/126");
        assert!(add(&mut store, &s, "c")
            .unwrap_err()
            .contains("no IP addresses available in range set: fd00::1-fd00::3"));
    }

    #[test]
    fn addresses_held_outside_the_scan_are_skipped() {
        // Simulates a writer that ignores the lock: the reservation attempt is the final word.
        struct Racy(MemStore);
        impl Backend for Racy {
            fn reservations(&self) -> io::Result<Vec<Reservation>> {
                Ok(Vec::new())
            }
            fn reserve(&mut self, ip: IpAddr, id: &str, ifname: &str) -> io::Result<bool> {
                self.0.reserve(ip, id, ifname)
            }
            fn release(&mut self, name: &str) -> io::Result<()> {
                self.0.release(name)
            }
            fn last_reserved(&self, set: usize) -> io::Result<Option<IpAddr>> {
                self.0.last_reserved(set)
            }
            fn set_last_reserved(&mut self, set: usize, ip: IpAddr) -> io::Result<()> {
                self.0.set_last_reserved(set, ip)
            }
        }
        let mut store = Racy(MemStore::default());
        store.0.files.insert("10.0.0.2".into(), "other\r\neth0".into());
        let s = sets(&[&["10.0.0.0/24"]]);
        assert_eq!(add(&mut store, &s, "c1").unwrap(), "10.0.0.3/24");
    }
}
