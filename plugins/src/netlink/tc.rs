//! Traffic control: qdiscs, filters and their actions (`tc qdisc`, `tc filter`).
//!
//! `netlink-packet-route` carries the message, the u32 classifier and the mirred action; the
//! token bucket filter's options are not in it, so [`Tbf`] encodes and decodes `TCA_TBF_PARMS`
//! (`struct tc_tbf_qopt`) and `TCA_TBF_RATE64` here.

use super::wire::attrs;
use super::{op, Handle, LinkIndex, NetlinkError};
use netlink_packet_core::{DefaultNla, Nla, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionMirrorOption, TcActionOption, TcActionType, TcAttribute, TcFilterU32Option,
    TcHandle, TcMessage, TcMirror, TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::RouteNetlinkMessage;
use std::io;

/// `TCA_OPTIONS`: a qdisc's options, one nested attribute.
const TCA_OPTIONS: u16 = 2;
/// `TCA_TBF_PARMS`: `struct tc_tbf_qopt`.
const TCA_TBF_PARMS: u16 = 1;
/// `TCA_TBF_RATE64`: the rate in bytes per second when it does not fit the 32 bits of the qopt.
const TCA_TBF_RATE64: u16 = 4;
/// `sizeof(struct tc_tbf_qopt)`: two `tc_ratespec` of 12 bytes, then limit, buffer, mtu.
const TBF_QOPT_LEN: usize = 36;
/// `ETH_P_ALL`, the protocol of a filter that sees every packet.
pub const ETH_P_ALL: u16 = 0x0003;

/// A token bucket filter's parameters as the kernel stores them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tbf {
    /// Rate in bytes per second.
    pub rate: u64,
    /// Bytes that may wait in the queue.
    pub limit: u32,
    /// Bucket size in scheduler ticks (`/proc/net/psched`).
    pub buffer: u32,
}

impl Tbf {
    /// The `TCA_OPTIONS` attributes: the qopt (rate truncated to 32 bits, no peak rate, as
    /// `tc` and the reference send it) and, above 32 bits, the full rate.
    fn options(&self) -> Vec<TcOption> {
        let mut qopt = [0u8; TBF_QOPT_LEN];
        // tc_ratespec: cell_log, linklayer, overhead, cell_align, mpu, then the rate at offset 8.
        qopt[8..12].copy_from_slice(&(self.rate as u32).to_ne_bytes());
        qopt[24..28].copy_from_slice(&self.limit.to_ne_bytes());
        qopt[28..32].copy_from_slice(&self.buffer.to_ne_bytes());
        let mut options = vec![TcOption::Other(DefaultNla::new(TCA_TBF_PARMS, qopt.to_vec()))];
        if self.rate >= 1 << 32 {
            options.push(TcOption::Other(DefaultNla::new(TCA_TBF_RATE64, self.rate.to_ne_bytes().to_vec())));
        }
        options
    }

    /// Reads the parameters back from the nested `TCA_OPTIONS` of a dumped tbf qdisc.
    fn parse(nested: &[u8]) -> Option<Tbf> {
        let mut tbf = None;
        let mut rate64 = None;
        for attr in attrs(nested) {
            let value = attr.value;
            match attr.kind {
                TCA_TBF_PARMS if value.len() >= TBF_QOPT_LEN => {
                    let word = |at: usize| u32::from_ne_bytes([value[at], value[at + 1], value[at + 2], value[at + 3]]);
                    tbf = Some(Tbf { rate: u64::from(word(8)), limit: word(24), buffer: word(28) });
                }
                TCA_TBF_RATE64 => rate64 = <[u8; 8]>::try_from(value).ok().map(u64::from_ne_bytes),
                _ => {}
            }
        }
        let mut tbf = tbf?;
        if let Some(rate) = rate64 {
            tbf.rate = rate;
        }
        Some(tbf)
    }
}

/// What the plugins need to know about a qdisc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qdisc {
    /// Handle, `major:minor` as one number (`1:` is `0x0001_0000`).
    pub handle: u32,
    /// Parent handle (`TC_H_ROOT`, `TC_H_INGRESS` or a class).
    pub parent: u32,
    /// Kind (`tbf`, `ingress`, `noqueue`, …).
    pub kind: String,
    /// The token bucket's parameters, for a tbf.
    pub tbf: Option<Tbf>,
}

/// `TC_H_ROOT`: the parent of a device's root qdisc.
pub const TC_H_ROOT: u32 = 0xFFFF_FFFF;
/// `TC_H_INGRESS`: the parent of the ingress qdisc.
pub const TC_H_INGRESS: u32 = 0xFFFF_FFF1;
/// `ffff:`, the ingress qdisc's handle.
pub const INGRESS_HANDLE: u32 = 0xFFFF_0000;

/// One `mirred` action of a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redirect {
    /// The device packets are sent to.
    pub ifindex: u32,
    /// Egress redirect (the only kind the plugins create).
    pub egress_redirect: bool,
}

/// What the plugins need to know about a filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// Priority (`pref`).
    pub priority: u16,
    /// Protocol (`ETH_P_*`).
    pub protocol: u16,
    /// Kind (`u32`, …).
    pub kind: String,
    /// The mirred actions of a u32 filter, in order.
    pub redirects: Vec<Redirect>,
}

fn tc_message(index: u32, handle: u32, parent: u32) -> io::Result<TcMessage> {
    let index =
        i32::try_from(index).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface index too large"))?;
    let mut msg = TcMessage::with_index(index);
    msg.header.handle = TcHandle::from(handle);
    msg.header.parent = TcHandle::from(parent);
    Ok(msg)
}

fn kind_of(attrs: &[TcAttribute]) -> String {
    attrs.iter().find_map(|a| if let TcAttribute::Kind(k) = a { Some(k.clone()) } else { None }).unwrap_or_default()
}

/// A mirred action that redirects to `ifindex`'s egress and then does `then`.
fn mirred_redirect(tab: u16, ifindex: u32, then: TcActionType) -> TcAction {
    let mut parms = TcMirror::default();
    parms.generic.action = then;
    parms.eaction = TcMirrorActionType::EgressRedir;
    parms.ifindex = ifindex;
    let mut action = TcAction::default();
    action.tab = tab;
    action.attributes = vec![
        TcActionAttribute::Kind("mirred".into()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(parms))]),
    ];
    action
}

fn redirects_of(options: &[TcOption]) -> Vec<Redirect> {
    let mut out = Vec::new();
    for option in options {
        let TcOption::U32(TcFilterU32Option::Action(actions)) = option else { continue };
        for action in actions {
            for attr in &action.attributes {
                let TcActionAttribute::Options(opts) = attr else { continue };
                for opt in opts {
                    if let TcActionOption::Mirror(TcActionMirrorOption::Parms(p)) = opt {
                        out.push(Redirect {
                            ifindex: p.ifindex,
                            egress_redirect: p.eaction == TcMirrorActionType::EgressRedir,
                        });
                    }
                }
            }
        }
    }
    out
}

impl Handle {
    /// `tc qdisc show dev <index>`.
    pub fn qdiscs(&mut self, index: u32) -> Result<Vec<Qdisc>, NetlinkError> {
        let replies = tc_message(index, 0, 0)
            .and_then(|msg| self.dump(RouteNetlinkMessage::GetQueueDiscipline(msg)))
            .map_err(op("list the qdiscs of", LinkIndex(index)))?;
        Ok(replies
            .iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewQueueDiscipline(m) if m.header.index as u32 == index => Some(m),
                _ => None,
            })
            .map(|m| {
                let kind = kind_of(&m.attributes);
                let tbf = (kind == "tbf")
                    .then(|| {
                        m.attributes.iter().find_map(|a| match a {
                            TcAttribute::Options(opts) => opts.iter().find_map(|o| match o {
                                TcOption::Other(nla) if nla.kind() == TCA_OPTIONS => {
                                    let mut raw = vec![0u8; nla.value_len()];
                                    nla.emit_value(&mut raw);
                                    Tbf::parse(&raw)
                                }
                                _ => None,
                            }),
                            _ => None,
                        })
                    })
                    .flatten();
                Qdisc { handle: m.header.handle.into(), parent: m.header.parent.into(), kind, tbf }
            })
            .collect())
    }

    /// `tc qdisc replace dev <index> root handle 1: tbf rate … burst … limit …`: creates the
    /// root tbf, replaces another root qdisc, or changes a tbf `1:` in place.
    pub fn replace_root_tbf(&mut self, index: u32, tbf: &Tbf) -> Result<(), NetlinkError> {
        let named = op("replace the root tbf qdisc of", LinkIndex(index));
        let mut msg = match tc_message(index, 0x0001_0000, TC_H_ROOT) {
            Ok(msg) => msg,
            Err(e) => return Err(named(e)),
        };
        msg.attributes.push(TcAttribute::Kind("tbf".into()));
        msg.attributes.push(TcAttribute::Options(tbf.options()));
        self.request(RouteNetlinkMessage::NewQueueDiscipline(msg), NLM_F_CREATE | NLM_F_REPLACE).map_err(named)
    }

    /// `tc qdisc add dev <index> handle ffff: ingress`; EEXIST passes through.
    pub fn add_ingress_qdisc(&mut self, index: u32) -> Result<(), NetlinkError> {
        tc_message(index, INGRESS_HANDLE, TC_H_INGRESS)
            .and_then(|mut msg| {
                msg.attributes.push(TcAttribute::Kind("ingress".into()));
                self.request(RouteNetlinkMessage::NewQueueDiscipline(msg), NLM_F_CREATE | NLM_F_EXCL)
            })
            .map_err(op("add the ingress qdisc to", LinkIndex(index)))
    }

    /// `tc qdisc del dev <index> parent <parent>`; a qdisc or device already gone is not an
    /// error.
    pub fn del_qdisc(&mut self, index: u32, parent: u32) -> Result<(), NetlinkError> {
        let result =
            tc_message(index, 0, parent).and_then(|msg| self.request(RouteNetlinkMessage::DelQueueDiscipline(msg), 0));
        match result {
            Err(e) if matches!(e.raw_os_error(), Some(nix::libc::ENOENT | nix::libc::ENODEV | nix::libc::EINVAL)) => {
                Ok(())
            }
            other => other.map_err(op("delete the qdisc of", LinkIndex(index))),
        }
    }

    /// `tc filter show dev <index> parent <parent>`.
    pub fn filters(&mut self, index: u32, parent: u32) -> Result<Vec<Filter>, NetlinkError> {
        let replies = tc_message(index, 0, parent)
            .and_then(|msg| self.dump(RouteNetlinkMessage::GetTrafficFilter(msg)))
            .map_err(op("list the filters of", LinkIndex(index)))?;
        Ok(replies
            .iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewTrafficFilter(m) if m.header.index as u32 == index => Some(m),
                _ => None,
            })
            .map(|m| {
                let options: Vec<TcOption> = m
                    .attributes
                    .iter()
                    .filter_map(|a| if let TcAttribute::Options(o) = a { Some(o.clone()) } else { None })
                    .flatten()
                    .collect();
                Filter {
                    priority: (m.header.info >> 16) as u16,
                    protocol: u16::from_be(m.header.info as u16),
                    kind: kind_of(&m.attributes),
                    redirects: redirects_of(&options),
                }
            })
            .collect())
    }

    /// `tc filter del dev <index> parent <parent> prio <prio> protocol <protocol>`: the whole
    /// classifier at that priority; nothing there is not an error.
    pub fn del_filters(&mut self, index: u32, parent: u32, priority: u16, protocol: u16) -> Result<(), NetlinkError> {
        let result = tc_message(index, 0, parent).and_then(|mut msg| {
            msg.header.info = (u32::from(priority) << 16) | u32::from(protocol.to_be());
            self.request(RouteNetlinkMessage::DelTrafficFilter(msg), 0)
        });
        match result {
            Err(e) if matches!(e.raw_os_error(), Some(nix::libc::ENOENT | nix::libc::EINVAL)) => Ok(()),
            other => other.map_err(op("delete the filters of", LinkIndex(index))),
        }
    }

    /// `tc filter add dev <index> parent <parent> prio <prio> protocol all u32 match u32 0 0
    /// flowid 1:1 action mirred egress redirect dev <target> action mirred egress redirect dev
    /// <target> pipe`: the reference's match-all redirect, including the second mirred action
    /// its netlink library appends (kept so the kernel state is the same).
    pub fn add_redirect_filter(
        &mut self,
        index: u32,
        parent: u32,
        priority: u16,
        target: u32,
    ) -> Result<(), NetlinkError> {
        let named = op("add a redirect filter to", LinkIndex(index));
        let mut msg = match tc_message(index, 0, parent) {
            Ok(msg) => msg,
            Err(e) => return Err(named(e)),
        };
        msg.header.info = (u32::from(priority) << 16) | u32::from(ETH_P_ALL.to_be());
        let mut selector = TcU32Selector::default();
        selector.flags = TcU32SelectorFlags::Terminal;
        selector.nkeys = 1;
        selector.keys = vec![TcU32Key::default()];
        msg.attributes.push(TcAttribute::Kind("u32".into()));
        msg.attributes.push(TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::Selector(selector)),
            TcOption::U32(TcFilterU32Option::ClassId(TcHandle { major: 1, minor: 1 })),
            TcOption::U32(TcFilterU32Option::Action(vec![
                mirred_redirect(1, target, TcActionType::Stolen),
                mirred_redirect(2, target, TcActionType::Ok),
            ])),
        ]));
        self.request(RouteNetlinkMessage::NewTrafficFilter(msg), NLM_F_CREATE | NLM_F_EXCL).map_err(named)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nested `TCA_OPTIONS` body the kernel receives for `tbf`.
    fn options_bytes(tbf: &Tbf) -> Vec<u8> {
        let mut nested = super::super::wire::AttrWriter::new();
        for option in tbf.options() {
            let TcOption::Other(nla) = option else { panic!("tbf options are raw") };
            let mut value = vec![0u8; nla.value_len()];
            nla.emit_value(&mut value);
            nested.bytes_attr(nla.kind(), &value);
        }
        nested.into_bytes()
    }

    #[test]
    fn tbf_options_round_trip_through_the_kernel_layout() {
        for tbf in [Tbf { rate: 250_000, limit: 18_750, buffer: 781_250 }, Tbf { rate: 5 << 32, limit: 7, buffer: 9 }] {
            assert_eq!(Tbf::parse(&options_bytes(&tbf)), Some(tbf));
        }
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn tbf_options_golden_bytes() {
        // `tc qdisc replace ... tbf rate 2mbit burst ... limit ...`: tc_tbf_qopt with the rate at
        // offset 8 of the first ratespec, limit and buffer after both ratespecs, no peak rate.
        let bytes = options_bytes(&Tbf { rate: 250_000, limit: 18_750, buffer: 781_250 });
        let mut want = vec![40, 0, 1, 0];
        want.extend([0u8; 8]);
        want.extend(250_000u32.to_le_bytes());
        want.extend([0u8; 12]);
        want.extend(18_750u32.to_le_bytes());
        want.extend(781_250u32.to_le_bytes());
        want.extend([0u8; 4]);
        assert_eq!(bytes, want);
        // Above 32 bits the qopt keeps the truncated rate and TCA_TBF_RATE64 carries the full one.
        let bytes = options_bytes(&Tbf { rate: 5 << 32, limit: 7, buffer: 9 });
        assert_eq!(&bytes[40..], &[12, 0, 4, 0, 0, 0, 0, 0, 5, 0, 0, 0]);
    }
}
