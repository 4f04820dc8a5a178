//! nf_tables existence probes over NETLINK_NETFILTER: "does this table/chain exist?" answered by
//! the kernel in one round trip, where asking `iptables-save` or `nft list` costs a process and a
//! dump that grows with every container on the host.

use std::io;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_GETRULE: u16 = 7;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFTNL_UDATA_RULE_COMMENT: u8 = 0;
const NLM_F_DUMP: u16 = 0x300;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;

/// nf_tables address families (`NFPROTO_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NftFamily {
    /// `inet` (both IP versions).
    Inet = 1,
    /// `ip`.
    Ip = 2,
    /// `bridge`.
    Bridge = 7,
    /// `ip6`.
    Ip6 = 10,
}

fn push_attr(buf: &mut Vec<u8>, kind: u16, value: &str) {
    let len = 4 + value.len() + 1;
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value.as_bytes());
    buf.push(0);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

/// One rule of a chain: its handle and its comment, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftRule {
    /// The chain the rule is in.
    pub chain: String,
    /// The rule handle (`delete rule … handle N`).
    pub handle: u64,
    /// The rule comment.
    pub comment: Option<String>,
    /// Chains the rule jumps or goes to.
    pub jumps: Vec<String>,
    /// Its expressions.
    pub exprs: Vec<super::nft_batch::Expr>,
}

/// One GET request: netlink header, `nfgenmsg`, string attributes.
fn request(msg: u16, family: NftFamily, attrs: &[(u16, &str)], seq: u32) -> Vec<u8> {
    request_flags(msg, family, attrs, seq, NLM_F_REQUEST | NLM_F_ACK)
}

fn request_flags(msg: u16, family: NftFamily, attrs: &[(u16, &str)], seq: u32, flags: u16) -> Vec<u8> {
    let mut buf = vec![0u8; 16];
    buf.extend_from_slice(&[family as u8, 0, 0, 0]); // nfgen_family, NFNETLINK_V0, res_id (big endian) 0
    for (kind, value) in attrs {
        push_attr(&mut buf, *kind, value);
    }
    let len = buf.len() as u32;
    buf[0..4].copy_from_slice(&len.to_ne_bytes());
    buf[4..6].copy_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | msg).to_ne_bytes());
    buf[6..8].copy_from_slice(&flags.to_ne_bytes());
    buf[8..12].copy_from_slice(&seq.to_ne_bytes());
    buf
}

/// Sends `req` and hands each reply payload (after the netlink header) to `each`, until the ACK
/// or `Done`; ENOENT comes back as `Ok(false)`, anything else as the error.
fn exchange(req: &[u8], seq: u32, mut each: impl FnMut(&[u8])) -> io::Result<bool> {
    let socket = super::settle::open_netfilter()?;
    socket.send(req, 0)?;
    loop {
        let data = super::receive(&socket)?;
        let mut off = 0;
        while off + 16 <= data.len() {
            let word = |at: usize| u32::from_ne_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
            let len = word(off) as usize;
            let kind = u16::from_ne_bytes([data[off + 4], data[off + 5]]);
            if len < 16 || off + len > data.len() {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "truncated nfnetlink reply"));
            }
            if word(off + 8) == seq {
                match kind {
                    NLMSG_ERROR if len >= 20 => {
                        let code = i32::from_ne_bytes([data[off + 16], data[off + 17], data[off + 18], data[off + 19]]);
                        return match -code {
                            0 => Ok(true),
                            e if e == nix::libc::ENOENT => Ok(false),
                            e => Err(io::Error::from_raw_os_error(e)),
                        };
                    }
                    NLMSG_DONE => return Ok(true),
                    _ => each(&data[off + 16..off + len]),
                }
            }
            off += (len + 3) & !3;
        }
    }
}

/// Reads replies to `seq`: `Ok(true)` when the object came back, `Ok(false)` for ENOENT.
fn exists(req: &[u8], seq: u32) -> io::Result<bool> {
    let mut found = false;
    let acked = exchange(req, seq, |_| found = true)?;
    Ok(acked && found)
}

/// Walks the netlink attributes of `buf`.
pub(super) fn attributes(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut off = 0;
    std::iter::from_fn(move || {
        if off + 4 > buf.len() {
            return None;
        }
        let len = u16::from_ne_bytes([buf[off], buf[off + 1]]) as usize;
        let kind = u16::from_ne_bytes([buf[off + 2], buf[off + 3]]) & 0x3fff;
        if len < 4 || off + len > buf.len() {
            return None;
        }
        let value = &buf[off + 4..off + len];
        off += (len + 3) & !3;
        Some((kind, value))
    })
}

/// The chains named by a rule's `immediate` verdicts (`jump X`, `goto X`: iptables' `-j X`).
fn verdict_chains(expressions: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for (_, elem) in attributes(expressions).filter(|(k, _)| *k == NFTA_LIST_ELEM) {
        let mut name: &[u8] = &[];
        let mut data: &[u8] = &[];
        for (k, v) in attributes(elem) {
            match k {
                NFTA_EXPR_NAME => name = v,
                NFTA_EXPR_DATA => data = v,
                _ => {}
            }
        }
        if name.strip_suffix(&[0]).unwrap_or(name) != b"immediate" {
            continue;
        }
        for (_, value) in attributes(data).filter(|(k, _)| *k == NFTA_IMMEDIATE_DATA) {
            for (_, verdict) in attributes(value).filter(|(k, _)| *k == NFTA_DATA_VERDICT) {
                for (_, chain) in attributes(verdict).filter(|(k, _)| *k == NFTA_VERDICT_CHAIN) {
                    out.push(String::from_utf8_lossy(chain.strip_suffix(&[0]).unwrap_or(chain)).into_owned());
                }
            }
        }
    }
    out
}

/// The text of an iptables-nft `-m comment` (an xt `comment` match, whose info is the NUL-padded
/// text), so rules of iptables-nft tables can be found by comment like nft's own.
fn xt_comment(expressions: &[u8]) -> Option<String> {
    const NFTA_MATCH_NAME: u16 = 1;
    const NFTA_MATCH_INFO: u16 = 3;
    for (_, elem) in attributes(expressions).filter(|(k, _)| *k == NFTA_LIST_ELEM) {
        let mut is_match = false;
        let mut data: &[u8] = &[];
        for (k, v) in attributes(elem) {
            match k {
                NFTA_EXPR_NAME => is_match = v.strip_suffix(&[0]).unwrap_or(v) == b"match",
                NFTA_EXPR_DATA => data = v,
                _ => {}
            }
        }
        if !is_match {
            continue;
        }
        let mut name: &[u8] = &[];
        let mut info: &[u8] = &[];
        for (k, v) in attributes(data) {
            match k {
                NFTA_MATCH_NAME => name = v.strip_suffix(&[0]).unwrap_or(v),
                NFTA_MATCH_INFO => info = v,
                _ => {}
            }
        }
        if name == b"comment" {
            let end = info.iter().position(|b| *b == 0).unwrap_or(info.len());
            return Some(String::from_utf8_lossy(&info[..end]).into_owned());
        }
    }
    None
}

/// Parses one NEWRULE payload (after `nfgenmsg`) into handle and comment.
fn parse_rule(payload: &[u8]) -> Option<NftRule> {
    let mut rule = NftRule { chain: String::new(), handle: 0, comment: None, jumps: Vec::new(), exprs: Vec::new() };
    let mut have_handle = false;
    for (kind, value) in attributes(payload.get(4..)?) {
        match kind {
            NFTA_RULE_CHAIN => {
                rule.chain = String::from_utf8_lossy(value.strip_suffix(&[0]).unwrap_or(value)).into_owned()
            }
            NFTA_RULE_HANDLE if value.len() == 8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(value);
                rule.handle = u64::from_be_bytes(b);
                have_handle = true;
            }
            NFTA_RULE_EXPRESSIONS => {
                rule.jumps = verdict_chains(value);
                if rule.comment.is_none() {
                    rule.comment = xt_comment(value);
                }
                rule.exprs = super::nft_batch::decode_exprs(value);
            }
            NFTA_RULE_USERDATA => {
                // Userdata is its own TLV list: u8 type, u8 length, value.
                let mut i = 0;
                while i + 2 <= value.len() {
                    let (t, l) = (value[i], value[i + 1] as usize);
                    let Some(v) = value.get(i + 2..i + 2 + l) else { break };
                    if t == NFTNL_UDATA_RULE_COMMENT {
                        let text = v.strip_suffix(&[0]).unwrap_or(v);
                        rule.comment = Some(String::from_utf8_lossy(text).into_owned());
                    }
                    i += 2 + l;
                }
            }
            _ => {}
        }
    }
    have_handle.then_some(rule)
}

/// `nft -a list chain <family> <table> <chain>`, reduced to handles and comments; an absent chain
/// or table has no rules.
pub fn nft_rules(family: NftFamily, table: &str, chain: &str) -> io::Result<Vec<NftRule>> {
    let req = request_flags(
        NFT_MSG_GETRULE,
        family,
        &[(NFTA_RULE_TABLE, table), (NFTA_RULE_CHAIN, chain)],
        1,
        NLM_F_REQUEST | NLM_F_DUMP,
    );
    let mut rules = Vec::new();
    exchange(&req, 1, |payload| rules.extend(parse_rule(payload)))?;
    Ok(rules)
}

/// `nft -a list table <family> <table>`, reduced to chain, handle, comment and jump targets of
/// every rule; an absent table has no rules.
pub fn nft_table_rules(family: NftFamily, table: &str) -> io::Result<Vec<NftRule>> {
    let req = request_flags(NFT_MSG_GETRULE, family, &[(NFTA_RULE_TABLE, table)], 1, NLM_F_REQUEST | NLM_F_DUMP);
    let mut rules = Vec::new();
    exchange(&req, 1, |payload| rules.extend(parse_rule(payload)))?;
    Ok(rules)
}

/// `nft list table <family> <table>` succeeds.
pub fn nft_table_exists(family: NftFamily, table: &str) -> io::Result<bool> {
    exists(&request(NFT_MSG_GETTABLE, family, &[(NFTA_TABLE_NAME, table)], 1), 1)
}

/// `nft list chain <family> <table> <chain>` succeeds. With iptables-nft this also answers
/// "does iptables chain X of table nat exist".
pub fn nft_chain_exists(family: NftFamily, table: &str, chain: &str) -> io::Result<bool> {
    exists(&request(NFT_MSG_GETCHAIN, family, &[(NFTA_CHAIN_TABLE, table), (NFTA_CHAIN_NAME, chain)], 1), 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout() {
        let r = request(NFT_MSG_GETCHAIN, NftFamily::Ip, &[(NFTA_CHAIN_TABLE, "nat"), (NFTA_CHAIN_NAME, "CNI-x")], 7);
        assert_eq!(r.len(), 16 + 4 + 8 + 12);
        assert_eq!(u32::from_ne_bytes([r[0], r[1], r[2], r[3]]) as usize, r.len());
        assert_eq!(u16::from_ne_bytes([r[4], r[5]]), (10 << 8) | 4);
        assert_eq!(&r[16..20], &[2, 0, 0, 0]);
        assert_eq!(&r[20..28], &[8, 0, 1, 0, b'n', b'a', b't', 0]);
        assert_eq!(&r[28..40], &[10, 0, 3, 0, b'C', b'N', b'I', b'-', b'x', 0, 0, 0]);
    }

    #[test]
    fn rule_payload_parsing() {
        let mut p = vec![1, 0, 0, 0];
        p.extend_from_slice(&[12, 0, 3, 0]);
        p.extend_from_slice(&42u64.to_be_bytes());
        let udata = [0u8, 4, b'a', b'b', b'c', 0];
        p.extend_from_slice(&[(4 + udata.len()) as u8, 0, 7, 0]);
        p.extend_from_slice(&udata);
        p.extend_from_slice(&[0, 0]);
        assert_eq!(
            parse_rule(&p),
            Some(NftRule {
                chain: String::new(),
                handle: 42,
                comment: Some("abc".into()),
                jumps: vec![],
                exprs: vec![]
            })
        );
        let mut named = vec![1, 0, 0, 0, 8, 0, 2, 0, b'F', b'O', b'O', 0];
        named.extend_from_slice(&p[4..]);
        assert_eq!(parse_rule(&named).map(|r| r.chain), Some("FOO".to_string()));
    }

    #[test]
    fn iptables_nft_comments_are_read_from_the_xt_match() {
        // `-m comment --comment 'name: "x" id: "y"'` as iptables-nft stores it: expression "match",
        // NFTA_MATCH_NAME "comment", NFTA_MATCH_REV 0, NFTA_MATCH_INFO the text padded to 256 bytes.
        let mut info = br#"name: "x" id: "y""#.to_vec();
        info.resize(256, 0);
        let mut data = Vec::new();
        push_attr(&mut data, 1, "comment");
        data.extend_from_slice(&[8, 0, 2, 0, 0, 0, 0, 0]);
        data.extend_from_slice(&((4 + info.len()) as u16).to_ne_bytes());
        data.extend_from_slice(&3u16.to_ne_bytes());
        data.extend_from_slice(&info);
        let mut elem = Vec::new();
        push_attr(&mut elem, NFTA_EXPR_NAME, "match");
        elem.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        elem.extend_from_slice(&NFTA_EXPR_DATA.to_ne_bytes());
        elem.extend_from_slice(&data);
        let mut list = Vec::new();
        list.extend_from_slice(&((4 + elem.len()) as u16).to_ne_bytes());
        list.extend_from_slice(&NFTA_LIST_ELEM.to_ne_bytes());
        list.extend_from_slice(&elem);
        assert_eq!(xt_comment(&list).as_deref(), Some(r#"name: "x" id: "y""#));
        assert_eq!(xt_comment(&[]), None);
    }
}
