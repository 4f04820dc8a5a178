//! nf_tables changes as data, written to the kernel as one NETLINK_NETFILTER batch (what `nft -f`
//! sends), and rules read back into the same expression model.
//!
//! `netlink-packet-netfilter` 0.4 (on our `netlink-packet-core` 0.9) covers tables, chains, rules and
//! the meta/payload/cmp/bitwise/immediate/lookup expressions, but has no `masq`, `nat`, `fib` or `ct`
//! expression and no batch exchange, so the few attributes the plugins need are written here by hand
//! with the one attribute reader and writer of [`super::wire`].
//!
//! Expressions are encoded as nft 1.0.6 encodes the same rule text (checked with
//! `nft --debug=netlink`), so `nft list ruleset` cannot tell the two writers apart.

use super::nfnl::{self, nft};
use super::nftables::NftFamily;
use super::socket::{named, Protocol, Socket};
use super::wire::{attrs, AttrWriter};
use ipnetwork::IpNetwork;
use netlink_packet_core::{NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST};
use std::io;
use std::net::IpAddr;

/// A rule's verdict (`immediate reg 0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// `accept`.
    Accept,
    /// `drop`.
    Drop,
    /// `return`.
    Return,
    /// `jump <chain>`.
    Jump(String),
    /// `goto <chain>`.
    Goto(String),
}

impl Verdict {
    fn code(&self) -> i32 {
        match self {
            Verdict::Accept => 1,
            Verdict::Drop => 0,
            Verdict::Return => -5,
            Verdict::Jump(_) => -3,
            Verdict::Goto(_) => -4,
        }
    }
}

/// Comparison of `cmp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `==`.
    Eq = 0,
    /// `!=`.
    Neq = 1,
}

/// Header a `payload` expression reads from (`NFT_PAYLOAD_*_HEADER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadBase {
    /// The network (IP) header.
    Network = 1,
    /// The transport (TCP/UDP) header.
    Transport = 2,
}

/// One nf_tables expression, as the kernel stores it. Registers are the 16-byte `NFT_REG_*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// `meta load <key> => reg <dreg>`.
    Meta {
        /// `NFT_META_*`.
        key: u32,
        /// Destination register.
        dreg: u32,
    },
    /// `payload load <len>b @ <base> header + <offset> => reg <dreg>`.
    Payload {
        /// Which header.
        base: PayloadBase,
        /// Byte offset in it.
        offset: u32,
        /// Bytes loaded.
        len: u32,
        /// Destination register.
        dreg: u32,
    },
    /// `cmp <op> reg <sreg> <data>`.
    Cmp {
        /// Source register.
        sreg: u32,
        /// Comparison.
        op: CmpOp,
        /// Value compared with.
        data: Vec<u8>,
    },
    /// `bitwise reg <dreg> = (reg <sreg> & <mask>) ^ <xor>`.
    Bitwise {
        /// Source register.
        sreg: u32,
        /// Destination register.
        dreg: u32,
        /// Mask.
        mask: Vec<u8>,
        /// Xor value (same length as the mask).
        xor: Vec<u8>,
    },
    /// `immediate reg 0 <verdict>`.
    Verdict(Verdict),
    /// `masq` without options.
    Masquerade,
    /// `immediate reg <dreg> <data>`: loads a constant.
    Load {
        /// Destination register.
        dreg: u32,
        /// The constant.
        data: Vec<u8>,
    },
    /// `nat dnat ip|ip6 addr_min reg <addr> proto_min reg <proto> flags <flags>`.
    Dnat {
        /// Whether the address is IPv6.
        v6: bool,
        /// Register holding the address.
        addr_reg: u32,
        /// Register holding the port.
        proto_reg: u32,
        /// `NF_NAT_RANGE_*` flags as nft sends them (`PROTO_SPECIFIED`); the kernel's implied
        /// `MAP_IPS` is left out when read back.
        flags: u32,
    },
    /// `ct load <key> => reg <dreg>` (original direction implied).
    Ct {
        /// `NFT_CT_*`.
        key: u32,
        /// Destination register.
        dreg: u32,
    },
    /// `fib <flags> <result> => reg <dreg>`.
    Fib {
        /// Destination register.
        dreg: u32,
        /// `NFT_FIB_RESULT_*`.
        result: u32,
        /// `NFTA_FIB_F_*`.
        flags: u32,
    },
    /// `match name <name> rev <rev>`: an xtables match as iptables-nft stores it (nft_compat),
    /// `info` being the match's kernel struct, `XT_ALIGN`ed.
    Match {
        /// The xtables match (`conntrack`, `comment`, …).
        name: String,
        /// Its revision.
        rev: u32,
        /// Its info struct.
        info: Vec<u8>,
    },
    /// `socket <key> => reg <dreg>`: a property of the local socket the packet belongs to.
    Socket {
        /// `NFT_SOCKET_*`.
        key: u32,
        /// Destination register.
        dreg: u32,
    },
    /// `meta set <key> with reg <sreg>`.
    MetaSet {
        /// `NFT_META_*`.
        key: u32,
        /// Source register.
        sreg: u32,
    },
    /// An expression this model does not decode, by name (read back only, or an expression
    /// without attributes such as `counter`).
    Other(String),
}

/// Which address of the IP header a match reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrField {
    /// `ip saddr` / `ip6 saddr`.
    Source,
    /// `ip daddr` / `ip6 daddr`.
    Destination,
}

impl Expr {
    /// `meta nfproto ipv4|ipv6`, which nft puts before an `ip`/`ip6` match in an `inet` table.
    pub fn nfproto(v6: bool) -> Vec<Expr> {
        let proto = if v6 { nft::NFPROTO_IPV6 } else { nft::NFPROTO_IPV4 };
        vec![
            Expr::Meta { key: nft::META_NFPROTO, dreg: nft::REG_1 },
            Expr::Cmp { sreg: nft::REG_1, op: CmpOp::Eq, data: vec![proto] },
        ]
    }

    /// `<tcp|udp|sctp> dport <port>` (protocol number `l4proto`), as nft encodes it.
    pub fn dport(l4proto: u8, port: u16) -> Vec<Expr> {
        vec![
            Expr::Meta { key: nft::META_L4PROTO, dreg: nft::REG_1 },
            Expr::Cmp { sreg: nft::REG_1, op: CmpOp::Eq, data: vec![l4proto] },
            Expr::Payload { base: PayloadBase::Transport, offset: 2, len: 2, dreg: nft::REG_1 },
            Expr::Cmp { sreg: nft::REG_1, op: CmpOp::Eq, data: port.to_be_bytes().to_vec() },
        ]
    }

    /// `dnat to <ip>:<port>` (`[ip]:port` for IPv6).
    pub fn dnat_to(ip: IpAddr, port: u16) -> Vec<Expr> {
        let (v6, addr) = match ip {
            IpAddr::V4(a) => (false, a.octets().to_vec()),
            IpAddr::V6(a) => (true, a.octets().to_vec()),
        };
        vec![
            Expr::Load { dreg: nft::REG_1, data: addr },
            Expr::Load { dreg: nft::REG_2, data: port.to_be_bytes().to_vec() },
            Expr::Dnat { v6, addr_reg: nft::REG_1, proto_reg: nft::REG_2, flags: nft::NF_NAT_RANGE_PROTO_SPECIFIED },
        ]
    }

    /// `ct state established,related`, as nft encodes it (the state bits masked, compared with 0).
    pub fn ct_established_related() -> Vec<Expr> {
        vec![
            Expr::Ct { key: nft::CT_STATE, dreg: nft::REG_1 },
            Expr::Bitwise {
                sreg: nft::REG_1,
                dreg: nft::REG_1,
                mask: nft::CT_STATE_ESTABLISHED_RELATED.to_ne_bytes().to_vec(),
                xor: vec![0; 4],
            },
            Expr::Cmp { sreg: nft::REG_1, op: CmpOp::Neq, data: vec![0; 4] },
        ]
    }

    /// `iifname <op> "<name>"` (`input`) or `oifname <op> "<name>"`: the name NUL-padded to
    /// `IFNAMSIZ`, as nft compares it. `name` must be a valid interface name (at most 15 bytes).
    pub fn ifname(input: bool, op: CmpOp, name: &str) -> Vec<Expr> {
        /// `IFNAMSIZ`: nft compares interface names as this many NUL-padded bytes.
        const IFNAMSIZ: usize = 16;
        let mut data = name.as_bytes().to_vec();
        data.resize(IFNAMSIZ, 0);
        vec![
            Expr::Meta { key: if input { nft::META_IIFNAME } else { nft::META_OIFNAME }, dreg: nft::REG_1 },
            Expr::Cmp { sreg: nft::REG_1, op, data },
        ]
    }

    /// `fib daddr type local`.
    pub fn fib_daddr_local() -> Vec<Expr> {
        vec![
            Expr::Fib { dreg: nft::REG_1, result: nft::FIB_RESULT_ADDRTYPE, flags: nft::FIB_F_DADDR },
            Expr::Cmp { sreg: nft::REG_1, op: CmpOp::Eq, data: nft::RTN_LOCAL.to_ne_bytes().to_vec() },
        ]
    }

    /// `socket transparent 1 meta mark set <mark>`: marks packets that belong to a local socket
    /// with `IP_TRANSPARENT`/`IPV6_TRANSPARENT` (a transparent proxy's replies).
    pub fn mark_transparent_socket(mark: u32) -> Vec<Expr> {
        vec![
            Expr::Socket { key: nft::SOCKET_TRANSPARENT, dreg: nft::REG_1 },
            Expr::Cmp { sreg: nft::REG_1, op: CmpOp::Eq, data: vec![1] },
            Expr::Load { dreg: nft::REG_1, data: mark.to_ne_bytes().to_vec() },
            Expr::MetaSet { key: nft::META_MARK, sreg: nft::REG_1 },
        ]
    }

    /// `ip[6] saddr|daddr <op> <net>` as nft encodes it: a byte-aligned prefix loads only its bytes,
    /// any other prefix loads the whole address and masks it; a full-length one is compared whole.
    pub fn addr_match(field: AddrField, op: CmpOp, net: &IpNetwork) -> Vec<Expr> {
        let (bytes, offset): (Vec<u8>, u32) = match (net.network(), field) {
            (IpAddr::V4(a), AddrField::Source) => (a.octets().to_vec(), 12),
            (IpAddr::V4(a), AddrField::Destination) => (a.octets().to_vec(), 16),
            (IpAddr::V6(a), AddrField::Source) => (a.octets().to_vec(), 8),
            (IpAddr::V6(a), AddrField::Destination) => (a.octets().to_vec(), 24),
        };
        let prefix = usize::from(net.prefix());
        let full = bytes.len();
        let load = |len: usize| Expr::Payload { base: PayloadBase::Network, offset, len: len as u32, dreg: nft::REG_1 };
        if prefix == full * 8 || (prefix > 0 && prefix % 8 == 0) {
            let len = prefix / 8;
            return vec![load(len), Expr::Cmp { sreg: nft::REG_1, op, data: bytes[..len].to_vec() }];
        }
        let mask: Vec<u8> = (0..full)
            .map(|i| {
                let bits = prefix.saturating_sub(i * 8).min(8);
                if bits == 0 {
                    0
                } else {
                    0xffu8 << (8 - bits)
                }
            })
            .collect();
        vec![
            load(full),
            Expr::Bitwise { sreg: nft::REG_1, dreg: nft::REG_1, mask, xor: vec![0; full] },
            Expr::Cmp { sreg: nft::REG_1, op, data: bytes },
        ]
    }

    /// The expression's `nft::LIST_ELEM` body.
    fn encode(&self, out: &mut AttrWriter) {
        let name = match self {
            Expr::Meta { .. } => "meta",
            Expr::Payload { .. } => "payload",
            Expr::Cmp { .. } => "cmp",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Verdict(_) => "immediate",
            Expr::Masquerade => "masq",
            Expr::Load { .. } => "immediate",
            Expr::Dnat { .. } => "nat",
            Expr::Fib { .. } => "fib",
            Expr::Ct { .. } => "ct",
            Expr::Match { .. } => "match",
            Expr::Socket { .. } => "socket",
            Expr::MetaSet { .. } => "meta",
            Expr::Other(name) => name.as_str(),
        };
        out.str_attr(nft::EXPR_NAME, name);
        let mut data = AttrWriter::new();
        match self {
            Expr::Meta { key, dreg } => {
                data.u32_be(nft::META_DREG, *dreg);
                data.u32_be(nft::META_KEY, *key);
            }
            Expr::Payload { base, offset, len, dreg } => {
                data.u32_be(nft::PAYLOAD_DREG, *dreg);
                data.u32_be(nft::PAYLOAD_BASE, *base as u32);
                data.u32_be(nft::PAYLOAD_OFFSET, *offset);
                data.u32_be(nft::PAYLOAD_LEN, *len);
            }
            Expr::Cmp { sreg, op, data: value } => {
                data.u32_be(nft::CMP_SREG, *sreg);
                data.u32_be(nft::CMP_OP, *op as u32);
                data.nest(nft::CMP_DATA, |d| {
                    d.bytes_attr(nft::DATA_VALUE, value);
                });
            }
            Expr::Bitwise { sreg, dreg, mask, xor } => {
                data.u32_be(nft::BITWISE_SREG, *sreg);
                data.u32_be(nft::BITWISE_DREG, *dreg);
                data.u32_be(nft::BITWISE_LEN, mask.len() as u32);
                data.nest(nft::BITWISE_MASK, |d| {
                    d.bytes_attr(nft::DATA_VALUE, mask);
                });
                data.nest(nft::BITWISE_XOR, |d| {
                    d.bytes_attr(nft::DATA_VALUE, xor);
                });
            }
            Expr::Verdict(v) => {
                data.u32_be(nft::IMMEDIATE_DREG, nft::REG_VERDICT);
                data.nest(nft::IMMEDIATE_DATA, |d| {
                    d.nest(nft::DATA_VERDICT, |d| {
                        d.u32_be(nft::VERDICT_CODE, v.code() as u32);
                        if let Verdict::Jump(chain) | Verdict::Goto(chain) = v {
                            d.str_attr(nft::VERDICT_CHAIN, chain);
                        }
                    });
                });
            }
            Expr::Load { dreg, data: value } => {
                data.u32_be(nft::IMMEDIATE_DREG, *dreg);
                data.nest(nft::IMMEDIATE_DATA, |d| {
                    d.bytes_attr(nft::DATA_VALUE, value);
                });
            }
            Expr::Dnat { v6, addr_reg, proto_reg, flags } => {
                data.u32_be(nft::NAT_TYPE, nft::NAT_DNAT);
                data.u32_be(nft::NAT_FAMILY, u32::from(if *v6 { nft::NFPROTO_IPV6 } else { nft::NFPROTO_IPV4 }));
                data.u32_be(nft::NAT_REG_ADDR_MIN, *addr_reg);
                data.u32_be(nft::NAT_REG_PROTO_MIN, *proto_reg);
                data.u32_be(nft::NAT_FLAGS, *flags);
            }
            Expr::Ct { key, dreg } => {
                data.u32_be(nft::CT_DREG, *dreg);
                data.u32_be(nft::CT_KEY, *key);
            }
            Expr::Fib { dreg, result, flags } => {
                data.u32_be(nft::FIB_DREG, *dreg);
                data.u32_be(nft::FIB_RESULT, *result);
                data.u32_be(nft::FIB_FLAGS, *flags);
            }
            Expr::Match { name, rev, info } => {
                data.str_attr(nft::MATCH_NAME, name);
                data.u32_be(nft::MATCH_REV, *rev);
                data.bytes_attr(nft::MATCH_INFO, info);
            }
            Expr::Socket { key, dreg } => {
                data.u32_be(nft::SOCKET_KEY, *key);
                data.u32_be(nft::SOCKET_DREG, *dreg);
            }
            Expr::MetaSet { key, sreg } => {
                data.u32_be(nft::META_KEY, *key);
                data.u32_be(nft::META_SREG, *sreg);
            }
            Expr::Masquerade | Expr::Other(_) => {}
        }
        if !data.is_empty() {
            out.nest(nft::EXPR_DATA, |d| {
                d.raw(data.bytes());
            });
        }
    }

    /// Reads one `nft::LIST_ELEM` body back; expressions outside the model become [`Expr::Other`].
    fn decode(elem: &[u8]) -> Expr {
        let elem = attrs(elem);
        let name = elem.get(nft::EXPR_NAME).map(|n| n.bytes_z()).unwrap_or_default();
        let data = elem.get(nft::EXPR_DATA).map(|d| d.value).unwrap_or_default();
        // Every expression the model knows numbers its attributes below 8.
        let mut u32s = [None; 8];
        let mut blobs: [Option<&[u8]>; 8] = Default::default();
        for attr in attrs(data) {
            let k = usize::from(attr.kind);
            if k < 8 {
                u32s[k] = attr.u32_be();
                blobs[k] = Some(attr.value);
            }
        }
        let num = |k: u16| u32s[usize::from(k)];
        let value = |k: u16| -> Option<Vec<u8>> {
            attrs(blobs[usize::from(k)]?).get(nft::DATA_VALUE).map(|v| v.value.to_vec())
        };
        let other = || Expr::Other(String::from_utf8_lossy(name).into_owned());
        let decoded = match name {
            b"match" => (|| {
                let name = String::from_utf8_lossy(attrs(data).get(nft::MATCH_NAME)?.bytes_z()).into_owned();
                Some(Expr::Match {
                    name,
                    rev: num(nft::MATCH_REV)?,
                    info: blobs[usize::from(nft::MATCH_INFO)]?.to_vec(),
                })
            })(),
            b"meta" if num(nft::META_SREG).is_some() => {
                (|| Some(Expr::MetaSet { key: num(nft::META_KEY)?, sreg: num(nft::META_SREG)? }))()
            }
            b"meta" => (|| Some(Expr::Meta { key: num(nft::META_KEY)?, dreg: num(nft::META_DREG)? }))(),
            b"socket" => (|| Some(Expr::Socket { key: num(nft::SOCKET_KEY)?, dreg: num(nft::SOCKET_DREG)? }))(),
            b"payload" => (|| {
                let base = match num(nft::PAYLOAD_BASE)? {
                    1 => PayloadBase::Network,
                    2 => PayloadBase::Transport,
                    _ => return None,
                };
                let (offset, len) = (num(nft::PAYLOAD_OFFSET)?, num(nft::PAYLOAD_LEN)?);
                Some(Expr::Payload { base, offset, len, dreg: num(nft::PAYLOAD_DREG)? })
            })(),
            b"cmp" => (|| {
                let op = match num(nft::CMP_OP)? {
                    0 => CmpOp::Eq,
                    1 => CmpOp::Neq,
                    _ => return None,
                };
                Some(Expr::Cmp { sreg: num(nft::CMP_SREG)?, op, data: value(nft::CMP_DATA)? })
            })(),
            // A kernel that knows other bitwise operations reports the operation; 0 is mask-and-xor.
            b"bitwise" if num(nft::BITWISE_OP).unwrap_or(0) == 0 => (|| {
                Some(Expr::Bitwise {
                    sreg: num(nft::BITWISE_SREG)?,
                    dreg: num(nft::BITWISE_DREG)?,
                    mask: value(nft::BITWISE_MASK)?,
                    xor: value(nft::BITWISE_XOR)?,
                })
            })(),
            b"immediate" if num(nft::IMMEDIATE_DREG) == Some(nft::REG_VERDICT) => (|| {
                let verdict = attrs(blobs[usize::from(nft::IMMEDIATE_DATA)]?).get(nft::DATA_VERDICT)?.nested();
                let code = verdict.get(nft::VERDICT_CODE).and_then(|c| c.u32_be()).map(|c| c as i32);
                let chain = verdict.get(nft::VERDICT_CHAIN).map(|c| c.string());
                Some(Expr::Verdict(match (code?, chain) {
                    (1, None) => Verdict::Accept,
                    (0, None) => Verdict::Drop,
                    (-5, None) => Verdict::Return,
                    (-3, Some(c)) => Verdict::Jump(c),
                    (-4, Some(c)) => Verdict::Goto(c),
                    _ => return None,
                }))
            })(),
            b"masq" if data.is_empty() => Some(Expr::Masquerade),
            b"immediate" => {
                (|| Some(Expr::Load { dreg: num(nft::IMMEDIATE_DREG)?, data: value(nft::IMMEDIATE_DATA)? }))()
            }
            // The kernel reports the max registers too (equal to the min ones).
            b"nat" if num(nft::NAT_TYPE) == Some(nft::NAT_DNAT) => (|| {
                let v6 = match u8::try_from(num(nft::NAT_FAMILY)?).ok()? {
                    nft::NFPROTO_IPV4 => false,
                    nft::NFPROTO_IPV6 => true,
                    _ => return None,
                };
                let (addr_reg, proto_reg) = (num(nft::NAT_REG_ADDR_MIN)?, num(nft::NAT_REG_PROTO_MIN)?);
                if num(nft::NAT_REG_ADDR_MAX).is_some_and(|r| r != addr_reg)
                    || num(nft::NAT_REG_PROTO_MAX).is_some_and(|r| r != proto_reg)
                {
                    return None;
                }
                let flags = num(nft::NAT_FLAGS).unwrap_or(0) & !nft::NF_NAT_RANGE_MAP_IPS;
                Some(Expr::Dnat { v6, addr_reg, proto_reg, flags })
            })(),
            b"fib" => (|| {
                Some(Expr::Fib {
                    dreg: num(nft::FIB_DREG)?,
                    result: num(nft::FIB_RESULT)?,
                    flags: num(nft::FIB_FLAGS)?,
                })
            })(),
            // Only the original-direction form (no NFTA_CT_DIRECTION) is in the model.
            b"ct" if blobs[usize::from(nft::CT_DIRECTION)].is_none() => {
                (|| Some(Expr::Ct { key: num(nft::CT_KEY)?, dreg: num(nft::CT_DREG)? }))()
            }
            _ => None,
        };
        decoded.unwrap_or_else(other)
    }
}

/// One change of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NftOp {
    /// `add table <family> <name> [{ comment "…" ; }]`.
    AddTable {
        /// Table name.
        name: String,
        /// Its comment.
        comment: Option<String>,
    },
    /// `add chain <family> <table> <name> [{ type <kind> hook <hook> priority <priority> ; comment "…" ; }]`.
    AddChain {
        /// Table name.
        table: String,
        /// Chain name.
        name: String,
        /// `(type, NF_INET_* hook number, priority)` of a base chain.
        hook: Option<(String, u32, i32)>,
        /// Its comment.
        comment: Option<String>,
    },
    /// `flush chain <family> <table> <chain>`.
    FlushChain {
        /// Table name.
        table: String,
        /// Chain name.
        chain: String,
    },
    /// `delete chain <family> <table> <chain>`.
    DeleteChain {
        /// Table name.
        table: String,
        /// Chain name.
        chain: String,
    },
    /// `add rule <family> <table> <chain> <exprs> [comment "…"]`.
    AddRule {
        /// Table name.
        table: String,
        /// Chain name.
        chain: String,
        /// Its expressions.
        exprs: Vec<Expr>,
        /// Its comment.
        comment: Option<String>,
    },
    /// `insert rule <family> <table> <chain> <exprs> [comment "…"]`: at the head of the chain.
    InsertRule {
        /// Table name.
        table: String,
        /// Chain name.
        chain: String,
        /// Its expressions.
        exprs: Vec<Expr>,
        /// Its comment.
        comment: Option<String>,
    },
    /// `delete rule <family> <table> <chain> handle <handle>`.
    DeleteRule {
        /// Table name.
        table: String,
        /// Chain name.
        chain: String,
        /// The rule's handle.
        handle: u64,
    },
}

/// A comment as nft stores it: one userdata TLV, the text with its NUL.
fn comment_udata(comment: &str) -> Vec<u8> {
    let mut text = comment.as_bytes().to_vec();
    text.truncate(254);
    text.push(0);
    let mut out = vec![nft::UDATA_COMMENT, text.len() as u8];
    out.extend_from_slice(&text);
    out
}

/// An atomic set of nf_tables changes in one address family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftBatch {
    /// The family of every table touched.
    pub family: NftFamily,
    /// The changes, in order.
    pub ops: Vec<NftOp>,
}

impl NftBatch {
    /// An empty batch.
    pub fn new(family: NftFamily) -> NftBatch {
        NftBatch { family, ops: Vec::new() }
    }

    /// Whether the batch would change nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The batch's bytes, sequence numbers from `seq`: BATCH_BEGIN, one message per change (each
    /// asking for an ACK), BATCH_END.
    pub fn encode(&self, seq: u32) -> Vec<u8> {
        self.encode_at(seq, None)
    }

    /// [`NftBatch::encode`], with BATCH_BEGIN carrying `NFNL_BATCH_GENID` when `generation` is given:
    /// the kernel then refuses the whole batch (`ERESTART`) if the ruleset changed since that
    /// generation was read.
    fn encode_at(&self, seq: u32, generation: Option<u32>) -> Vec<u8> {
        let family = self.family as u8;
        let batch_marker =
            |kind: u16, seq: u32, body: &[u8]| nfnl::message(kind, NLM_F_REQUEST, seq, 0, nfnl::SUBSYS_NFTABLES, body);
        let mut begin = AttrWriter::new();
        if let Some(id) = generation {
            begin.u32_be(nfnl::BATCH_GENID, id);
        }
        let mut out = batch_marker(nfnl::MSG_BATCH_BEGIN, seq, begin.bytes());
        for (i, op) in self.ops.iter().enumerate() {
            let mut a = AttrWriter::new();
            let (msg, flags) = match op {
                NftOp::AddTable { name, comment } => {
                    a.str_attr(nft::TABLE_NAME, name);
                    if let Some(c) = comment {
                        a.bytes_attr(nft::TABLE_USERDATA, &comment_udata(c));
                    }
                    (nft::MSG_NEWTABLE, NLM_F_CREATE)
                }
                NftOp::AddChain { table, name, hook, comment } => {
                    a.str_attr(nft::CHAIN_TABLE, table);
                    a.str_attr(nft::CHAIN_NAME, name);
                    if let Some((kind, hooknum, priority)) = hook {
                        a.nest(nft::CHAIN_HOOK, |h| {
                            h.u32_be(nft::HOOK_HOOKNUM, *hooknum);
                            h.u32_be(nft::HOOK_PRIORITY, *priority as u32);
                        });
                        a.str_attr(nft::CHAIN_TYPE, kind);
                    }
                    if let Some(c) = comment {
                        a.bytes_attr(nft::CHAIN_USERDATA, &comment_udata(c));
                    }
                    (nft::MSG_NEWCHAIN, NLM_F_CREATE)
                }
                NftOp::FlushChain { table, chain } => {
                    a.str_attr(nft::RULE_TABLE, table);
                    a.str_attr(nft::RULE_CHAIN, chain);
                    (nft::MSG_DELRULE, 0)
                }
                NftOp::DeleteChain { table, chain } => {
                    a.str_attr(nft::CHAIN_TABLE, table);
                    a.str_attr(nft::CHAIN_NAME, chain);
                    (nft::MSG_DELCHAIN, 0)
                }
                NftOp::AddRule { table, chain, exprs, comment } => {
                    encode_rule(&mut a, table, chain, exprs, comment.as_deref());
                    (nft::MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND)
                }
                // Without NLM_F_APPEND and without a position the kernel puts the rule first.
                NftOp::InsertRule { table, chain, exprs, comment } => {
                    encode_rule(&mut a, table, chain, exprs, comment.as_deref());
                    (nft::MSG_NEWRULE, NLM_F_CREATE)
                }
                NftOp::DeleteRule { table, chain, handle } => {
                    a.str_attr(nft::RULE_TABLE, table);
                    a.str_attr(nft::RULE_CHAIN, chain);
                    a.bytes_attr(nft::RULE_HANDLE, &handle.to_be_bytes());
                    (nft::MSG_DELRULE, 0)
                }
            };
            let kind = nfnl::kind(nfnl::SUBSYS_NFTABLES, msg);
            let flags = NLM_F_REQUEST | NLM_F_ACK | flags;
            out.extend(nfnl::message(kind, flags, seq.wrapping_add(1 + i as u32), family, 0, a.bytes()));
        }
        out.extend(batch_marker(nfnl::MSG_BATCH_END, seq.wrapping_add(1 + self.ops.len() as u32), &[]));
        out
    }

    /// Sends the batch in the calling thread's network namespace and waits (at most 10 s) for the
    /// kernel to accept every change; the first refusal is the error and nothing is changed.
    pub fn commit(&self) -> io::Result<()> {
        self.commit_at(None)
    }

    /// [`NftBatch::commit`] only if the ruleset is still at `generation` (from
    /// [`super::nft_generation`]); otherwise nothing is changed and the kernel answers `ERESTART`,
    /// so a plan made from a read can never be applied over someone else's change made after it.
    pub fn commit_if_unchanged(&self, generation: u32) -> io::Result<()> {
        self.commit_at(Some(generation))
    }

    fn commit_at(&self, generation: Option<u32>) -> io::Result<()> {
        if self.ops.is_empty() {
            return Ok(());
        }
        let count = u32::try_from(self.ops.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "nf_tables batch too large"))?;
        let mut socket = Socket::open(Protocol::Netfilter)?;
        // BATCH_BEGIN, the changes, BATCH_END: only the changes are answered.
        let seq = socket.reserve(count + 2);
        socket.send(&self.encode_at(seq, generation))?;
        socket.acks(seq.wrapping_add(1), count).map_err(|(index, e)| {
            let what = index.and_then(|i| self.ops.get(i)).map(describe).unwrap_or_else(|| "nf_tables batch".into());
            named(what, e)
        })
    }
}

/// The body of a NEWRULE message.
fn encode_rule(a: &mut AttrWriter, table: &str, chain: &str, exprs: &[Expr], comment: Option<&str>) {
    a.str_attr(nft::RULE_TABLE, table);
    a.str_attr(nft::RULE_CHAIN, chain);
    a.nest(nft::RULE_EXPRESSIONS, |list| {
        for e in exprs {
            list.nest(nft::LIST_ELEM, |elem| {
                e.encode(elem);
            });
        }
    });
    if let Some(c) = comment {
        a.bytes_attr(nft::RULE_USERDATA, &comment_udata(c));
    }
}

/// The change in nft's words, for error messages.
fn describe(op: &NftOp) -> String {
    match op {
        NftOp::AddTable { name, .. } => format!("add table {name}"),
        NftOp::AddChain { table, name, .. } => format!("add chain {table} {name}"),
        NftOp::FlushChain { table, chain } => format!("flush chain {table} {chain}"),
        NftOp::DeleteChain { table, chain } => format!("delete chain {table} {chain}"),
        NftOp::AddRule { table, chain, comment, .. } => {
            format!("add rule {table} {chain} (comment {:?})", comment.as_deref().unwrap_or(""))
        }
        NftOp::InsertRule { table, chain, comment, .. } => {
            format!("insert rule {table} {chain} (comment {:?})", comment.as_deref().unwrap_or(""))
        }
        NftOp::DeleteRule { table, chain, handle } => format!("delete rule {table} {chain} handle {handle}"),
    }
}

/// Decodes a rule's `nft::RULE_EXPRESSIONS` into the expression model.
pub(super) fn decode_exprs(list: &[u8]) -> Vec<Expr> {
    attrs(list).all(nft::LIST_ELEM).map(|elem| Expr::decode(elem.value)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn prefixes_load_like_nft() {
        // `ip daddr != 10.1.0.0/24`: nft loads 3 bytes, no mask.
        assert_eq!(
            Expr::addr_match(AddrField::Destination, CmpOp::Neq, &net("10.1.0.0/24")),
            vec![
                Expr::Payload { base: PayloadBase::Network, offset: 16, len: 3, dreg: 1 },
                Expr::Cmp { sreg: 1, op: CmpOp::Neq, data: vec![10, 1, 0] },
            ]
        );
        // `ip daddr 224.0.0.0/4`: 4 bytes masked with 0xf0000000.
        assert_eq!(
            Expr::addr_match(AddrField::Destination, CmpOp::Eq, &net("224.0.0.0/4")),
            vec![
                Expr::Payload { base: PayloadBase::Network, offset: 16, len: 4, dreg: 1 },
                Expr::Bitwise { sreg: 1, dreg: 1, mask: vec![0xf0, 0, 0, 0], xor: vec![0; 4] },
                Expr::Cmp { sreg: 1, op: CmpOp::Eq, data: vec![224, 0, 0, 0] },
            ]
        );
        // `ip6 saddr fd00::5`: the whole address at offset 8.
        let v6 = Expr::addr_match(AddrField::Source, CmpOp::Eq, &net("fd00::5/128"));
        assert_eq!(v6[0], Expr::Payload { base: PayloadBase::Network, offset: 8, len: 16, dreg: 1 });
        // `ip6 daddr != fd00::/60`: 16 bytes, mask ends in 0xf0 at byte 7.
        let masked = Expr::addr_match(AddrField::Destination, CmpOp::Neq, &net("fd00::/60"));
        let Expr::Bitwise { mask, .. } = &masked[1] else { panic!("{masked:?}") };
        assert_eq!(mask, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xf0, 0, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn conntrack_and_interface_matches_are_what_nft_writes() {
        // `nft --debug=netlink`: ct state established,related / oifname != "cni0" / drop
        assert_eq!(
            Expr::ct_established_related(),
            vec![
                Expr::Ct { key: 0, dreg: 1 },
                Expr::Bitwise { sreg: 1, dreg: 1, mask: 6u32.to_ne_bytes().to_vec(), xor: vec![0; 4] },
                Expr::Cmp { sreg: 1, op: CmpOp::Neq, data: vec![0; 4] },
            ]
        );
        let mut name = b"cni0".to_vec();
        name.resize(16, 0);
        assert_eq!(
            Expr::ifname(false, CmpOp::Neq, "cni0"),
            vec![Expr::Meta { key: 7, dreg: 1 }, Expr::Cmp { sreg: 1, op: CmpOp::Neq, data: name }]
        );
        assert_eq!(Expr::ifname(true, CmpOp::Eq, "x")[0], Expr::Meta { key: 6, dreg: 1 });
        assert_eq!(Verdict::Drop.code(), 0);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn insert_prepends_and_a_generation_guards_the_batch() {
        let insert = NftBatch {
            family: NftFamily::Inet,
            ops: vec![NftOp::InsertRule { table: "t".into(), chain: "c".into(), exprs: vec![], comment: None }],
        };
        let bytes = insert.encode_at(1, Some(0x0102_0304));
        // BATCH_BEGIN grows by the NFNL_BATCH_GENID attribute (big-endian u32).
        assert_eq!(&bytes[..4], &28u32.to_ne_bytes());
        assert_eq!(&bytes[20..28], &[8, 0, 1, 0, 1, 2, 3, 4]);
        // NEWRULE with REQUEST|ACK|CREATE and no APPEND.
        assert_eq!(&bytes[28 + 4..28 + 8], &[6, 10, 0x05, 0x04]);
    }

    #[test]
    fn expressions_round_trip() {
        let mut exprs = Expr::nfproto(false);
        exprs.extend(Expr::addr_match(AddrField::Destination, CmpOp::Eq, &net("224.0.0.0/4")));
        exprs.push(Expr::Verdict(Verdict::Goto("masq_checks".into())));
        exprs.push(Expr::Verdict(Verdict::Return));
        exprs.push(Expr::Masquerade);
        exprs.extend(Expr::dport(6, 8080));
        exprs.extend(Expr::dnat_to("fd00::5".parse().unwrap(), 80));
        exprs.extend(Expr::fib_daddr_local());
        exprs.push(Expr::Match { name: "conntrack".into(), rev: 3, info: vec![1, 2, 3, 4, 0, 0, 0, 0] });
        exprs.push(Expr::Other("counter".into()));
        exprs.extend(Expr::mark_transparent_socket(0x2a));
        exprs.extend(Expr::ct_established_related());
        exprs.extend(Expr::ifname(true, CmpOp::Neq, "cni0"));
        exprs.push(Expr::Verdict(Verdict::Drop));
        let mut list = AttrWriter::new();
        for e in &exprs {
            list.nest(nft::LIST_ELEM, |elem| e.encode(elem));
        }
        assert_eq!(decode_exprs(list.bytes()), exprs);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn golden_batch_bytes() {
        // `add rule inet t c masquerade comment "ab"` as one batch from sequence 7.
        let batch = NftBatch {
            family: NftFamily::Inet,
            ops: vec![NftOp::AddRule {
                table: "t".into(),
                chain: "c".into(),
                exprs: vec![Expr::Masquerade],
                comment: Some("ab".into()),
            }],
        };
        let bytes = batch.encode(7);
        let mut want: Vec<u8> = Vec::new();
        // BATCH_BEGIN: len 20, type 0x10, NLM_F_REQUEST, seq 7, pid 0, AF_UNSPEC, v0, res_id 10 (BE).
        want.extend([20, 0, 0, 0, 0x10, 0, 1, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10]);
        // NEWRULE (10 << 8 | 6), REQUEST|ACK|CREATE|APPEND, seq 8, family inet.
        let body: Vec<u8> = [
            &[6, 0, 1, 0, b't', 0, 0, 0][..],
            &[6, 0, 2, 0, b'c', 0, 0, 0],
            // expressions (nested) > elem (nested) > name "masq"
            &[20, 0, 4, 0x80, 16, 0, 1, 0x80, 9, 0, 1, 0, b'm', b'a', b's', b'q', 0, 0, 0, 0],
            // userdata: comment TLV with NUL
            &[9, 0, 7, 0, 0, 3, b'a', b'b', 0, 0, 0, 0],
        ]
        .concat();
        want.extend(((20 + body.len()) as u32).to_ne_bytes());
        want.extend([6, 10, 0x05, 0x0c, 8, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
        want.extend(body);
        want.extend([20, 0, 0, 0, 0x11, 0, 1, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10]);
        assert_eq!(bytes, want);
    }
}
