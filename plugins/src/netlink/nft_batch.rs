//! nf_tables changes as data, written to the kernel as one NETLINK_NETFILTER batch (what `nft -f`
//! sends), and rules read back into the same expression model.
//!
//! `netlink-packet-netfilter` 0.4 (on our `netlink-packet-core` 0.9) covers tables, chains, rules and
//! the meta/payload/cmp/bitwise/immediate/lookup expressions, but has no `masq`, `nat`, `fib` or `ct`
//! expression and no batch exchange, so the few attributes the plugins need are written here by hand
//! with the attribute walker of [`super::nftables`].
//!
//! Expressions are encoded as nft 1.0.6 encodes the same rule text (checked with
//! `nft --debug=netlink`), so `nft list ruleset` cannot tell the two writers apart.

use super::nftables::{attributes, NftFamily};
use ipnetwork::IpNetwork;
use std::io;
use std::net::IpAddr;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLMSG_ERROR: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_USERDATA: u16 = 6;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_CHAIN_USERDATA: u16 = 12;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

/// Userdata TLV type of a table, chain or rule comment (`NFTNL_UDATA_*_COMMENT`).
const UDATA_COMMENT: u8 = 0;

/// `NFPROTO_IPV4` / `NFPROTO_IPV6`, the values `meta nfproto` compares.
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

/// A rule's verdict (`immediate reg 0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// `accept`.
    Accept,
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
    /// `fib <flags> <result> => reg <dreg>`.
    Fib {
        /// Destination register.
        dreg: u32,
        /// `NFT_FIB_RESULT_*`.
        result: u32,
        /// `NFTA_FIB_F_*`.
        flags: u32,
    },
    /// An expression this model does not decode, by name (read back only).
    Other(String),
}

/// `NFT_META_NFPROTO`.
const NFT_META_NFPROTO: u32 = 15;
/// `NFT_META_L4PROTO`.
const NFT_META_L4PROTO: u32 = 16;
/// `NFT_REG_1`.
const REG1: u32 = 1;
/// `NFT_REG_2`.
const REG2: u32 = 2;
/// `NF_NAT_RANGE_MAP_IPS`, which the kernel adds whenever an address register is given.
const NF_NAT_RANGE_MAP_IPS: u32 = 1;
/// `NF_NAT_RANGE_PROTO_SPECIFIED`.
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 2;
/// `NFT_FIB_RESULT_ADDRTYPE`.
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
/// `NFTA_FIB_F_DADDR`.
const NFTA_FIB_F_DADDR: u32 = 2;
/// `RTN_LOCAL`.
const RTN_LOCAL: u32 = 2;

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
        let proto = if v6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 };
        vec![
            Expr::Meta { key: NFT_META_NFPROTO, dreg: REG1 },
            Expr::Cmp { sreg: REG1, op: CmpOp::Eq, data: vec![proto] },
        ]
    }

    /// `<tcp|udp|sctp> dport <port>` (protocol number `l4proto`), as nft encodes it.
    pub fn dport(l4proto: u8, port: u16) -> Vec<Expr> {
        vec![
            Expr::Meta { key: NFT_META_L4PROTO, dreg: REG1 },
            Expr::Cmp { sreg: REG1, op: CmpOp::Eq, data: vec![l4proto] },
            Expr::Payload { base: PayloadBase::Transport, offset: 2, len: 2, dreg: REG1 },
            Expr::Cmp { sreg: REG1, op: CmpOp::Eq, data: port.to_be_bytes().to_vec() },
        ]
    }

    /// `dnat to <ip>:<port>` (`[ip]:port` for IPv6).
    pub fn dnat_to(ip: IpAddr, port: u16) -> Vec<Expr> {
        let (v6, addr) = match ip {
            IpAddr::V4(a) => (false, a.octets().to_vec()),
            IpAddr::V6(a) => (true, a.octets().to_vec()),
        };
        vec![
            Expr::Load { dreg: REG1, data: addr },
            Expr::Load { dreg: REG2, data: port.to_be_bytes().to_vec() },
            Expr::Dnat { v6, addr_reg: REG1, proto_reg: REG2, flags: NF_NAT_RANGE_PROTO_SPECIFIED },
        ]
    }

    /// `fib daddr type local`.
    pub fn fib_daddr_local() -> Vec<Expr> {
        vec![
            Expr::Fib { dreg: REG1, result: NFT_FIB_RESULT_ADDRTYPE, flags: NFTA_FIB_F_DADDR },
            Expr::Cmp { sreg: REG1, op: CmpOp::Eq, data: RTN_LOCAL.to_ne_bytes().to_vec() },
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
        let load = |len: usize| Expr::Payload { base: PayloadBase::Network, offset, len: len as u32, dreg: REG1 };
        if prefix == full * 8 || (prefix > 0 && prefix % 8 == 0) {
            let len = prefix / 8;
            return vec![load(len), Expr::Cmp { sreg: REG1, op, data: bytes[..len].to_vec() }];
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
            Expr::Bitwise { sreg: REG1, dreg: REG1, mask, xor: vec![0; full] },
            Expr::Cmp { sreg: REG1, op, data: bytes },
        ]
    }

    /// The expression's `NFTA_LIST_ELEM` body.
    fn encode(&self, out: &mut Attrs) {
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
            Expr::Other(name) => name.as_str(),
        };
        out.put_str(NFTA_EXPR_NAME, name);
        let mut data = Attrs::default();
        match self {
            Expr::Meta { key, dreg } => {
                data.put_u32(1, *dreg);
                data.put_u32(2, *key);
            }
            Expr::Payload { base, offset, len, dreg } => {
                data.put_u32(1, *dreg);
                data.put_u32(2, *base as u32);
                data.put_u32(3, *offset);
                data.put_u32(4, *len);
            }
            Expr::Cmp { sreg, op, data: value } => {
                data.put_u32(1, *sreg);
                data.put_u32(2, *op as u32);
                data.nest(3, |d| d.put_bytes(NFTA_DATA_VALUE, value));
            }
            Expr::Bitwise { sreg, dreg, mask, xor } => {
                data.put_u32(1, *sreg);
                data.put_u32(2, *dreg);
                data.put_u32(3, mask.len() as u32);
                data.nest(4, |d| d.put_bytes(NFTA_DATA_VALUE, mask));
                data.nest(5, |d| d.put_bytes(NFTA_DATA_VALUE, xor));
            }
            Expr::Verdict(v) => {
                data.put_u32(1, 0);
                data.nest(2, |d| {
                    d.nest(NFTA_DATA_VERDICT, |d| {
                        d.put_u32(NFTA_VERDICT_CODE, v.code() as u32);
                        if let Verdict::Jump(chain) | Verdict::Goto(chain) = v {
                            d.put_str(NFTA_VERDICT_CHAIN, chain);
                        }
                    })
                });
            }
            Expr::Load { dreg, data: value } => {
                data.put_u32(1, *dreg);
                data.nest(2, |d| d.put_bytes(NFTA_DATA_VALUE, value));
            }
            Expr::Dnat { v6, addr_reg, proto_reg, flags } => {
                data.put_u32(1, 1);
                data.put_u32(2, u32::from(if *v6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 }));
                data.put_u32(3, *addr_reg);
                data.put_u32(5, *proto_reg);
                data.put_u32(7, *flags);
            }
            Expr::Fib { dreg, result, flags } => {
                data.put_u32(1, *dreg);
                data.put_u32(2, *result);
                data.put_u32(3, *flags);
            }
            Expr::Masquerade | Expr::Other(_) => {}
        }
        if !data.0.is_empty() {
            out.nest_raw(NFTA_EXPR_DATA, &data.0);
        }
    }

    /// Reads one `NFTA_LIST_ELEM` body back; expressions outside the model become [`Expr::Other`].
    fn decode(elem: &[u8]) -> Expr {
        let mut name: &[u8] = &[];
        let mut data: &[u8] = &[];
        for (k, v) in attributes(elem) {
            match k {
                NFTA_EXPR_NAME => name = strip_nul(v),
                NFTA_EXPR_DATA => data = v,
                _ => {}
            }
        }
        let mut u32s = [None; 8];
        let mut blobs: [Option<Vec<u8>>; 8] = Default::default();
        for (k, v) in attributes(data) {
            let k = usize::from(k);
            if k < 8 {
                if let Ok(b) = <[u8; 4]>::try_from(v) {
                    u32s[k] = Some(u32::from_be_bytes(b));
                }
                blobs[k] = Some(v.to_vec());
            }
        }
        let value = |k: usize| -> Option<Vec<u8>> {
            let nested = blobs[k].as_deref()?;
            attributes(nested).find(|(t, _)| *t == NFTA_DATA_VALUE).map(|(_, v)| v.to_vec())
        };
        let other = || Expr::Other(String::from_utf8_lossy(name).into_owned());
        let decoded = match name {
            b"meta" => (|| Some(Expr::Meta { key: u32s[2]?, dreg: u32s[1]? }))(),
            b"payload" => (|| {
                let base = match u32s[2]? {
                    1 => PayloadBase::Network,
                    2 => PayloadBase::Transport,
                    _ => return None,
                };
                Some(Expr::Payload { base, offset: u32s[3]?, len: u32s[4]?, dreg: u32s[1]? })
            })(),
            b"cmp" => (|| {
                let op = match u32s[2]? {
                    0 => CmpOp::Eq,
                    1 => CmpOp::Neq,
                    _ => return None,
                };
                Some(Expr::Cmp { sreg: u32s[1]?, op, data: value(3)? })
            })(),
            // A kernel that knows other bitwise operations reports NFTA_BITWISE_OP (6); 0 is the mask.
            b"bitwise" if u32s[6].unwrap_or(0) == 0 => {
                (|| Some(Expr::Bitwise { sreg: u32s[1]?, dreg: u32s[2]?, mask: value(4)?, xor: value(5)? }))()
            }
            b"immediate" if u32s[1] == Some(0) => (|| {
                let nested = blobs[2].as_deref()?;
                let (_, verdict) = attributes(nested).find(|(t, _)| *t == NFTA_DATA_VERDICT)?;
                let mut code = None;
                let mut chain = None;
                for (t, v) in attributes(verdict) {
                    match t {
                        NFTA_VERDICT_CODE => code = <[u8; 4]>::try_from(v).ok().map(i32::from_be_bytes),
                        NFTA_VERDICT_CHAIN => chain = Some(String::from_utf8_lossy(strip_nul(v)).into_owned()),
                        _ => {}
                    }
                }
                Some(Expr::Verdict(match (code?, chain) {
                    (1, None) => Verdict::Accept,
                    (-5, None) => Verdict::Return,
                    (-3, Some(c)) => Verdict::Jump(c),
                    (-4, Some(c)) => Verdict::Goto(c),
                    _ => return None,
                }))
            })(),
            b"masq" if data.is_empty() => Some(Expr::Masquerade),
            b"immediate" => (|| Some(Expr::Load { dreg: u32s[1]?, data: value(2)? }))(),
            // NFT_NAT_DNAT; the kernel reports the max registers too (equal to the min ones).
            b"nat" if u32s[1] == Some(1) => (|| {
                let v6 = match u8::try_from(u32s[2]?).ok()? {
                    NFPROTO_IPV4 => false,
                    NFPROTO_IPV6 => true,
                    _ => return None,
                };
                let (addr_reg, proto_reg) = (u32s[3]?, u32s[5]?);
                if u32s[4].is_some_and(|r| r != addr_reg) || u32s[6].is_some_and(|r| r != proto_reg) {
                    return None;
                }
                Some(Expr::Dnat { v6, addr_reg, proto_reg, flags: u32s[7].unwrap_or(0) & !NF_NAT_RANGE_MAP_IPS })
            })(),
            b"fib" => (|| Some(Expr::Fib { dreg: u32s[1]?, result: u32s[2]?, flags: u32s[3]? }))(),
            _ => None,
        };
        decoded.unwrap_or_else(other)
    }
}

fn strip_nul(v: &[u8]) -> &[u8] {
    v.strip_suffix(&[0]).unwrap_or(v)
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

/// Netlink attributes being written (native-endian headers, 4-byte aligned).
#[derive(Debug, Default)]
struct Attrs(Vec<u8>);

impl Attrs {
    fn put_bytes(&mut self, kind: u16, value: &[u8]) {
        self.0.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(value);
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
    }

    fn put_str(&mut self, kind: u16, value: &str) {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.put_bytes(kind, &bytes);
    }

    fn put_u32(&mut self, kind: u16, value: u32) {
        self.put_bytes(kind, &value.to_be_bytes());
    }

    fn nest_raw(&mut self, kind: u16, body: &[u8]) {
        self.put_bytes(kind | NLA_F_NESTED, body);
    }

    fn nest(&mut self, kind: u16, fill: impl FnOnce(&mut Attrs)) {
        let mut inner = Attrs::default();
        fill(&mut inner);
        self.nest_raw(kind, &inner.0);
    }
}

/// A comment as nft stores it: one userdata TLV, the text with its NUL.
fn comment_udata(comment: &str) -> Vec<u8> {
    let mut text = comment.as_bytes().to_vec();
    text.truncate(254);
    text.push(0);
    let mut out = vec![UDATA_COMMENT, text.len() as u8];
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

    fn message(&self, kind: u16, flags: u16, seq: u32, res_id: u16, family: u8, body: &[u8]) -> Vec<u8> {
        let mut msg = Vec::with_capacity(20 + body.len());
        msg.extend_from_slice(&((20 + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.push(family);
        msg.push(0);
        msg.extend_from_slice(&res_id.to_be_bytes());
        msg.extend_from_slice(body);
        msg
    }

    /// The batch's bytes, sequence numbers from `seq`: BATCH_BEGIN, one message per change (each
    /// asking for an ACK), BATCH_END.
    pub fn encode(&self, seq: u32) -> Vec<u8> {
        let family = self.family as u8;
        let mut out = self.message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, NFNL_SUBSYS_NFTABLES, 0, &[]);
        for (i, op) in self.ops.iter().enumerate() {
            let mut a = Attrs::default();
            let (msg, flags) = match op {
                NftOp::AddTable { name, comment } => {
                    a.put_str(NFTA_TABLE_NAME, name);
                    if let Some(c) = comment {
                        a.put_bytes(NFTA_TABLE_USERDATA, &comment_udata(c));
                    }
                    (NFT_MSG_NEWTABLE, NLM_F_CREATE)
                }
                NftOp::AddChain { table, name, hook, comment } => {
                    a.put_str(NFTA_CHAIN_TABLE, table);
                    a.put_str(NFTA_CHAIN_NAME, name);
                    if let Some((kind, hooknum, priority)) = hook {
                        a.nest(NFTA_CHAIN_HOOK, |h| {
                            h.put_u32(NFTA_HOOK_HOOKNUM, *hooknum);
                            h.put_u32(NFTA_HOOK_PRIORITY, *priority as u32);
                        });
                        a.put_str(NFTA_CHAIN_TYPE, kind);
                    }
                    if let Some(c) = comment {
                        a.put_bytes(NFTA_CHAIN_USERDATA, &comment_udata(c));
                    }
                    (NFT_MSG_NEWCHAIN, NLM_F_CREATE)
                }
                NftOp::FlushChain { table, chain } => {
                    a.put_str(NFTA_RULE_TABLE, table);
                    a.put_str(NFTA_RULE_CHAIN, chain);
                    (NFT_MSG_DELRULE, 0)
                }
                NftOp::DeleteChain { table, chain } => {
                    a.put_str(NFTA_CHAIN_TABLE, table);
                    a.put_str(NFTA_CHAIN_NAME, chain);
                    (NFT_MSG_DELCHAIN, 0)
                }
                NftOp::AddRule { table, chain, exprs, comment } => {
                    a.put_str(NFTA_RULE_TABLE, table);
                    a.put_str(NFTA_RULE_CHAIN, chain);
                    a.nest(NFTA_RULE_EXPRESSIONS, |list| {
                        for e in exprs {
                            list.nest(NFTA_LIST_ELEM, |elem| e.encode(elem));
                        }
                    });
                    if let Some(c) = comment {
                        a.put_bytes(NFTA_RULE_USERDATA, &comment_udata(c));
                    }
                    (NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND)
                }
                NftOp::DeleteRule { table, chain, handle } => {
                    a.put_str(NFTA_RULE_TABLE, table);
                    a.put_str(NFTA_RULE_CHAIN, chain);
                    a.put_bytes(NFTA_RULE_HANDLE, &handle.to_be_bytes());
                    (NFT_MSG_DELRULE, 0)
                }
            };
            let kind = (NFNL_SUBSYS_NFTABLES << 8) | msg;
            let flags = NLM_F_REQUEST | NLM_F_ACK | flags;
            out.extend(self.message(kind, flags, seq + 1 + i as u32, 0, family, &a.0));
        }
        let end_seq = seq + 1 + self.ops.len() as u32;
        out.extend(self.message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, end_seq, NFNL_SUBSYS_NFTABLES, 0, &[]));
        out
    }

    /// Sends the batch in the calling thread's network namespace and waits (at most 10 s) for the
    /// kernel to accept every change; the first refusal is the error and nothing is changed.
    pub fn commit(&self) -> io::Result<()> {
        if self.ops.is_empty() {
            return Ok(());
        }
        let socket = super::settle::open_netfilter()?;
        let seq = 1;
        socket.send(&self.encode(seq), 0)?;
        let mut pending: Vec<u32> = (0..self.ops.len() as u32).map(|i| seq + 1 + i).collect();
        while !pending.is_empty() {
            let data = super::receive(&socket)?;
            let mut off = 0;
            while off + 16 <= data.len() {
                let len = u32::from_ne_bytes([data[off], data[off + 1], data[off + 2], data[off + 3]]) as usize;
                if len < 16 || off + len > data.len() {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "truncated nfnetlink reply"));
                }
                let kind = u16::from_ne_bytes([data[off + 4], data[off + 5]]);
                let reply_seq = u32::from_ne_bytes([data[off + 8], data[off + 9], data[off + 10], data[off + 11]]);
                if kind == NLMSG_ERROR && len >= 20 {
                    let code = i32::from_ne_bytes([data[off + 16], data[off + 17], data[off + 18], data[off + 19]]);
                    if code != 0 {
                        let index = reply_seq.wrapping_sub(seq + 1) as usize;
                        let what = self.ops.get(index).map(describe).unwrap_or_else(|| "nf_tables batch".into());
                        let e = io::Error::from_raw_os_error(-code);
                        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
                    }
                    pending.retain(|s| *s != reply_seq);
                }
                off += (len + 3) & !3;
            }
        }
        Ok(())
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
        NftOp::DeleteRule { table, chain, handle } => format!("delete rule {table} {chain} handle {handle}"),
    }
}

/// Decodes a rule's `NFTA_RULE_EXPRESSIONS` into the expression model.
pub(super) fn decode_exprs(list: &[u8]) -> Vec<Expr> {
    attributes(list).filter(|(k, _)| *k == NFTA_LIST_ELEM).map(|(_, elem)| Expr::decode(elem)).collect()
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
    fn expressions_round_trip() {
        let mut exprs = Expr::nfproto(false);
        exprs.extend(Expr::addr_match(AddrField::Destination, CmpOp::Eq, &net("224.0.0.0/4")));
        exprs.push(Expr::Verdict(Verdict::Goto("masq_checks".into())));
        exprs.push(Expr::Verdict(Verdict::Return));
        exprs.push(Expr::Masquerade);
        exprs.extend(Expr::dport(6, 8080));
        exprs.extend(Expr::dnat_to("fd00::5".parse().unwrap(), 80));
        exprs.extend(Expr::fib_daddr_local());
        let mut list = Attrs::default();
        for e in &exprs {
            list.nest(NFTA_LIST_ELEM, |elem| e.encode(elem));
        }
        assert_eq!(decode_exprs(&list.0), exprs);
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
