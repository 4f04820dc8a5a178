//! The bandwidth configuration (research wave2-anchors §1.6): the four limits from the top level
//! (which wins when any of its keys is present) or from `runtimeConfig.bandwidth`, validated
//! before anything changes, and the reference's formulas that turn them into tbf parameters.

use crate::errors::Ctx;
use crate::netlink::Tbf;
use cni_types::error::INVALID_NETWORK_CONFIG;
use cni_types::{CmdArgs, CniError};
use serde::Deserialize;
use sha2::{Digest, Sha512};

/// The reference's `TIME_UNITS_PER_SEC`: tc's time unit is the microsecond.
const TIME_UNITS_PER_SEC: f64 = 1_000_000.0;
/// The queueing latency the reference allows on top of the burst.
const LATENCY_MS: f64 = 25.0;
/// The ifb name prefix and the kernel's name length limit.
const IFB_PREFIX: &str = "bwp";
const IFNAMSIZ_MAX: usize = 15;
/// What our ifb's alias starts with; the rest names the attachment (GC reads it).
pub const ALIAS_PREFIX: &str = "cni-bandwidth";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct Raw {
    #[serde(rename = "ingressRate")]
    ingress_rate: Option<u64>,
    #[serde(rename = "ingressBurst")]
    ingress_burst: Option<u64>,
    #[serde(rename = "egressRate")]
    egress_rate: Option<u64>,
    #[serde(rename = "egressBurst")]
    egress_burst: Option<u64>,
}

/// One direction's limit: rate in bit/s, burst in bits, both non-zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Bits per second.
    pub rate: u64,
    /// Bits.
    pub burst: u64,
}

/// A validated bandwidth configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BandwidthConf {
    /// Network name (part of the ifb's name).
    pub network: String,
    /// Traffic to the container: a tbf on the host-side veth.
    pub ingress: Option<Limit>,
    /// Traffic from the container: a tbf on the ifb the host veth's ingress is redirected to.
    pub egress: Option<Limit>,
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(INVALID_NETWORK_CONFIG, msg)
}

/// Checks one direction the way the reference does (rate and burst together, burst below
/// 4 GiB), naming the keys; and a rate under one byte per second, which the reference turns
/// into a zero-rate tbf.
fn limit(direction: &str, rate: u64, burst: u64) -> Result<Option<Limit>, CniError> {
    match (rate, burst) {
        (0, 0) => return Ok(None),
        (_, 0) => {
            return Err(invalid(format!(
                "{direction}Rate is set but {direction}Burst is not: if rate is set, burst must also be set"
            )))
        }
        (0, _) => {
            return Err(invalid(format!(
                "{direction}Burst is set but {direction}Rate is not: if burst is set, rate must also be set"
            )))
        }
        _ => {}
    }
    if burst / 8 >= u64::from(u32::MAX) {
        return Err(invalid(format!("{direction}Burst {burst}: burst cannot be more than 4GB")));
    }
    if rate < 8 {
        return Err(invalid(format!(
            "{direction}Rate {rate}: the rate must be at least 8 bit/s (one byte per second)"
        )));
    }
    Ok(Some(Limit { rate, burst }))
}

/// Go's `uint32(f)` for a float64 on amd64 (the reference's platform): truncation to a 64-bit
/// integer whose low 32 bits are kept; out of the 64-bit range (and NaN) the result is 0.
/// containerd's default burst for annotated pods (2³²−1 bits) overflows the bucket's ticks at
/// rates below ~34 Mbit/s, and the kernel must get the same wrapped value from us.
fn go_u32(x: f64) -> u32 {
    // 2^63, exactly representable.
    let bound = -(i64::MIN as f64);
    if x.is_nan() || !(-bound..bound).contains(&x) {
        0
    } else {
        (x as i64) as u32
    }
}

impl Limit {
    /// The reference's tbf parameters (`createTBF`): rate in bytes, `buffer` the burst's
    /// duration at that rate in scheduler ticks, `limit` 25 ms of traffic plus the burst in
    /// bytes. The floating-point steps and the 32-bit conversions are the reference's, in its
    /// order, so the numbers are bit-identical.
    pub fn tbf(&self, tick_in_usec: f64) -> Tbf {
        let rate = self.rate / 8;
        // Validated: below u32::MAX.
        let burst = (self.burst / 8) as u32;
        let time = go_u32(f64::from(burst) * TIME_UNITS_PER_SEC / rate as f64);
        let buffer = go_u32(f64::from(time) * tick_in_usec);
        let latency = TIME_UNITS_PER_SEC * (LATENCY_MS / 1000.0);
        let limit = go_u32(rate as f64 * latency / TIME_UNITS_PER_SEC).wrapping_add(burst);
        Tbf { rate, limit, buffer }
    }
}

/// Microseconds per scheduler tick from `/proc/net/psched`, read the way the reference's netlink
/// library reads it (15.625 on every kernel since 2.6.x with high-resolution timers).
pub fn tick_in_usec() -> Result<f64, CniError> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open("/proc/net/psched")
        .and_then(|f| f.take(128).read_to_string(&mut text))
        .ctx(|| "cannot read the scheduler clock from /proc/net/psched")?;
    parse_psched(&text).ok_or_else(|| CniError::internal(format!("unexpected /proc/net/psched: {text:?}")))
}

/// Parses `/proc/net/psched` (four hex words: t2us, us2t, clock resolution, hz).
pub fn parse_psched(text: &str) -> Option<f64> {
    let words: Vec<u64> =
        text.split_whitespace().take(4).map(|w| u64::from_str_radix(w, 16).ok()).collect::<Option<_>>()?;
    let [mut t2us, us2t, clock_res, _] = <[u64; 4]>::try_from(words).ok()?;
    if us2t == 0 {
        return None;
    }
    if clock_res == 1_000_000_000 {
        t2us = us2t;
    }
    let clock_factor = clock_res as f64 / TIME_UNITS_PER_SEC;
    Some(t2us as f64 / us2t as f64 * clock_factor)
}

/// The reference's ifb name: `bwp` and the hex SHA-512 of network name and container ID, cut to
/// 15 characters.
pub fn ifb_name(network: &str, container_id: &str) -> String {
    let digest = Sha512::digest(format!("{network}{container_id}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{IFB_PREFIX}{hex}")[..IFNAMSIZ_MAX].to_string()
}

/// Whether a link name has the shape of a bandwidth ifb.
pub fn is_ifb_name(name: &str) -> bool {
    name.len() == IFNAMSIZ_MAX
        && name.starts_with(IFB_PREFIX)
        && name[IFB_PREFIX.len()..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The alias recording which attachment an ifb belongs to: `cni-bandwidth <network> <id>`
/// (neither may contain a space; the kernel takes at most 255 bytes).
pub fn ifb_alias(network: &str, container_id: &str) -> Option<String> {
    let alias = format!("{ALIAS_PREFIX} {network} {container_id}");
    (alias.len() < 256).then_some(alias)
}

/// The (network, container ID) an alias written by [`ifb_alias`] names.
pub fn parse_ifb_alias(alias: &str) -> Option<(&str, &str)> {
    let rest = alias.strip_prefix(ALIAS_PREFIX)?.strip_prefix(' ')?;
    let (network, id) = rest.split_once(' ')?;
    (!network.is_empty() && !id.is_empty() && !id.contains(' ')).then_some((network, id))
}

impl BandwidthConf {
    /// Decodes and validates the configuration of one invocation.
    pub fn load(args: &CmdArgs) -> Result<BandwidthConf, CniError> {
        let raw: Raw = args.decode()?;
        let net = args.net_conf()?;
        let top_level = raw.ingress_rate.is_some()
            || raw.ingress_burst.is_some()
            || raw.egress_rate.is_some()
            || raw.egress_burst.is_some();
        let (ir, ib, er, eb) = if top_level {
            (
                raw.ingress_rate.unwrap_or(0),
                raw.ingress_burst.unwrap_or(0),
                raw.egress_rate.unwrap_or(0),
                raw.egress_burst.unwrap_or(0),
            )
        } else {
            let bw = net.runtime_config.bandwidth.unwrap_or_default();
            (bw.ingress_rate, bw.ingress_burst, bw.egress_rate, bw.egress_burst)
        };
        let from = if top_level { "" } else { "runtimeConfig.bandwidth." };
        let ingress = limit(&format!("{from}ingress"), ir, ib)?;
        let egress = limit(&format!("{from}egress"), er, eb)?;
        Ok(BandwidthConf { network: net.name, ingress, egress })
    }

    /// Whether nothing is to be shaped.
    pub fn is_empty(&self) -> bool {
        self.ingress.is_none() && self.egress.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: f64 = 15.625;

    #[test]
    fn psched_of_a_high_resolution_kernel() {
        assert_eq!(parse_psched("000003e8 00000040 000f4240 3b9aca00\n"), Some(15.625));
        assert_eq!(parse_psched("00000001 00000001 3b9aca00 3b9aca00"), Some(1000.0));
        assert_eq!(parse_psched("garbage"), None);
    }

    #[test]
    fn tbf_matches_the_reference_numbers() {
        // The reference's kernel state for 2 Mbit/s, 100 kbit burst: rate 250000 B/s,
        // burst 12500 B ("12500b" in tc), latency 25 ms.
        let tbf = Limit { rate: 2_000_000, burst: 100_000 }.tbf(TICK);
        assert_eq!(tbf, Tbf { rate: 250_000, limit: 6250 + 12_500, buffer: 50_000 * 15 + 50_000 * 5 / 8 });
        let big = Limit { rate: 100_000_000_000, burst: 8_000_000 }.tbf(TICK);
        assert_eq!(big.rate, 12_500_000_000);
    }

    #[test]
    fn limits_are_validated_in_pairs_and_bounds() {
        assert_eq!(limit("ingress", 0, 0).ok(), Some(None));
        assert!(limit("ingress", 1000, 0).unwrap_err().msg.contains("ingressBurst"));
        assert!(limit("egress", 0, 1000).unwrap_err().msg.contains("egressRate"));
        assert!(limit("egress", 1000, 8 * u64::from(u32::MAX)).unwrap_err().msg.contains("4GB"));
        assert!(limit("egress", 7, 1000).is_err());
        assert!(limit("egress", 1_000_000, 80_000).unwrap().is_some());
    }

    #[test]
    fn overflowing_buckets_wrap_as_the_reference_does() {
        // containerd's burst for annotated pods at 2 Mbit/s: 2147483 ms of bucket, 3.36e10
        // ticks, wrapped to 32 bits as Go's conversion on amd64 wraps it.
        let tbf = Limit { rate: 2_000_000, burst: u64::from(u32::MAX) }.tbf(TICK);
        assert_eq!(tbf.buffer, ((536_870_911u64 * 1_000_000 / 250_000) as f64 * TICK) as u64 as u32);
        assert_eq!(tbf.limit, 6250 + 536_870_911);
        assert_eq!(go_u32(f64::INFINITY), 0);
        assert_eq!(go_u32(4_294_967_296.0 + 5.0), 5);
    }

    #[test]
    fn ifb_names_are_the_references() {
        assert_eq!(ifb_name("mynet", "ctr1"), "bwp5145007e2a84");
        assert!(is_ifb_name("bwp5145007e2a84"));
        assert!(!is_ifb_name("bwp5145007e2a8"));
        assert!(!is_ifb_name("bwpX145007e2a84"));
    }

    #[test]
    fn aliases_name_the_attachment() {
        let alias = ifb_alias("mynet", "ctr1").unwrap();
        assert_eq!(parse_ifb_alias(&alias), Some(("mynet", "ctr1")));
        assert_eq!(parse_ifb_alias("something else"), None);
        assert_eq!(parse_ifb_alias("cni-bandwidth onlyone"), None);
        assert!(ifb_alias(&"n".repeat(200), &"c".repeat(64)).is_none());
    }
}
