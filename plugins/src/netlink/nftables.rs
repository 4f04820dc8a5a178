//! nf_tables existence probes over NETLINK_NETFILTER: "does this table/chain exist?" answered by
//! the kernel in one round trip, where asking `iptables-save` or `nft list` costs a process and a
//! dump that grows with every container on the host.

use super::nfnl::{self, nft};
use super::socket::{Flow, Protocol, Socket, DUMP_RETRIES};
use super::wire::{attrs, AttrWriter};
use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use std::io;

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

/// The body of a GET request: `nfgenmsg` and string attributes.
fn request_body(family: NftFamily, attributes: &[(u16, &str)]) -> Vec<u8> {
    let mut w = AttrWriter::new();
    w.raw(&[family as u8, 0, 0, 0]); // nfgen_family, NFNETLINK_V0, res_id 0
    for (kind, value) in attributes {
        w.str_attr(*kind, value);
    }
    w.into_bytes()
}

/// Whether a GET of `msg` names an existing object (ENOENT: no such table or chain).
fn exists(msg: u16, family: NftFamily, attributes: &[(u16, &str)]) -> io::Result<bool> {
    let mut socket = Socket::open(Protocol::Netfilter)?;
    let mut found = false;
    let kind = nfnl::kind(nfnl::SUBSYS_NFTABLES, msg);
    match socket.exchange(kind, NLM_F_REQUEST | NLM_F_ACK, &request_body(family, attributes), |_| {
        found = true;
        Ok(Flow::More)
    }) {
        Ok(_) => Ok(found),
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The rules a GETRULE dump with `attributes` selects; an absent table or chain has none. The
/// dump is read again while the kernel flags it as interrupted (another process changed the
/// rule set meanwhile), so a plan is never made from half of one generation and half of another.
fn dump_rules(family: NftFamily, attributes: &[(u16, &str)]) -> io::Result<Vec<NftRule>> {
    let mut socket = Socket::open(Protocol::Netfilter)?;
    let kind = nfnl::kind(nfnl::SUBSYS_NFTABLES, nft::MSG_GETRULE);
    let body = request_body(family, attributes);
    for _ in 0..DUMP_RETRIES {
        let mut rules = Vec::new();
        let answer = socket.exchange(kind, NLM_F_REQUEST | NLM_F_DUMP, &body, |reply| {
            rules.extend(parse_rule(reply.body));
            Ok(Flow::More)
        });
        match answer {
            Ok(false) => return Ok(rules),
            Ok(true) => {}
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(io::ErrorKind::Interrupted, "nf_tables rule dump kept being interrupted"))
}

/// The chains named by a rule's `immediate` verdicts (`jump X`, `goto X`: iptables' `-j X`).
fn verdict_chains(expressions: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for elem in attrs(expressions).all(nft::LIST_ELEM) {
        let elem = elem.nested();
        if elem.get(nft::EXPR_NAME).map(|n| n.bytes_z()) != Some(b"immediate") {
            continue;
        }
        let Some(data) = elem.get(nft::EXPR_DATA) else { continue };
        for value in data.nested().all(nft::IMMEDIATE_DATA) {
            for verdict in value.nested().all(nft::DATA_VERDICT) {
                out.extend(verdict.nested().all(nft::VERDICT_CHAIN).map(|c| c.string()));
            }
        }
    }
    out
}

/// The text of an iptables-nft `-m comment` (an xt `comment` match, whose info is the NUL-padded
/// text), so rules of iptables-nft tables can be found by comment like nft's own.
fn xt_comment(expressions: &[u8]) -> Option<String> {
    for elem in attrs(expressions).all(nft::LIST_ELEM) {
        let elem = elem.nested();
        if elem.get(nft::EXPR_NAME).map(|n| n.bytes_z()) != Some(b"match") {
            continue;
        }
        let Some(data) = elem.get(nft::EXPR_DATA) else { continue };
        let data = data.nested();
        if data.get(nft::MATCH_NAME).map(|n| n.bytes_z()) == Some(b"comment") {
            let info = data.get(nft::MATCH_INFO).map(|i| i.value).unwrap_or_default();
            let end = info.iter().position(|b| *b == 0).unwrap_or(info.len());
            return Some(String::from_utf8_lossy(&info[..end]).into_owned());
        }
    }
    None
}

/// The comment in a rule's userdata, its own TLV list (u8 type, u8 length, value).
fn udata_comment(udata: &[u8]) -> Option<String> {
    let mut i = 0;
    let mut comment = None;
    while i + 2 <= udata.len() {
        let (t, l) = (udata[i], usize::from(udata[i + 1]));
        let Some(v) = udata.get(i + 2..i + 2 + l) else { break };
        if t == nft::UDATA_COMMENT {
            comment = Some(String::from_utf8_lossy(v.strip_suffix(&[0]).unwrap_or(v)).into_owned());
        }
        i += 2 + l;
    }
    comment
}

/// Parses one NEWRULE body (from `nfgenmsg` on) into chain, handle, comment, jumps and
/// expressions; a rule without a handle is none.
fn parse_rule(body: &[u8]) -> Option<NftRule> {
    let mut rule = NftRule { chain: String::new(), handle: 0, comment: None, jumps: Vec::new(), exprs: Vec::new() };
    let mut have_handle = false;
    for attr in attrs(body.get(4..)?) {
        match attr.kind {
            nft::RULE_CHAIN => rule.chain = attr.string(),
            nft::RULE_HANDLE => {
                if let Some(handle) = attr.u64_be() {
                    rule.handle = handle;
                    have_handle = true;
                }
            }
            nft::RULE_EXPRESSIONS => {
                rule.jumps = verdict_chains(attr.value);
                if rule.comment.is_none() {
                    rule.comment = xt_comment(attr.value);
                }
                rule.exprs = super::nft_batch::decode_exprs(attr.value);
            }
            nft::RULE_USERDATA => {
                if let Some(comment) = udata_comment(attr.value) {
                    rule.comment = Some(comment);
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
    dump_rules(family, &[(nft::RULE_TABLE, table), (nft::RULE_CHAIN, chain)])
}

/// `nft -a list table <family> <table>`, reduced to chain, handle, comment and jump targets of
/// every rule; an absent table has no rules.
pub fn nft_table_rules(family: NftFamily, table: &str) -> io::Result<Vec<NftRule>> {
    dump_rules(family, &[(nft::RULE_TABLE, table)])
}

/// The ruleset's generation (`NFT_MSG_GETGEN`): it changes with every committed batch, so a batch
/// planned from reads made after this call can be sent with
/// [`super::NftBatch::commit_if_unchanged`].
pub fn nft_generation() -> io::Result<u32> {
    let mut socket = Socket::open(Protocol::Netfilter)?;
    let mut id = None;
    let kind = nfnl::kind(nfnl::SUBSYS_NFTABLES, nft::MSG_GETGEN);
    socket.exchange(kind, NLM_F_REQUEST | NLM_F_ACK, &request_body(NftFamily::Inet, &[]), |reply| {
        if let Some(gen) = attrs(reply.body.get(4..).unwrap_or_default()).get(nft::GEN_ID).and_then(|a| a.u32_be()) {
            id = Some(gen);
        }
        Ok(Flow::More)
    })?;
    id.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "nf_tables sent no generation id"))
}

/// `nft list table <family> <table>` succeeds.
pub fn nft_table_exists(family: NftFamily, table: &str) -> io::Result<bool> {
    exists(nft::MSG_GETTABLE, family, &[(nft::TABLE_NAME, table)])
}

/// `nft list chain <family> <table> <chain>` succeeds. With iptables-nft this also answers
/// "does iptables chain X of table nat exist".
pub fn nft_chain_exists(family: NftFamily, table: &str, chain: &str) -> io::Result<bool> {
    exists(nft::MSG_GETCHAIN, family, &[(nft::CHAIN_TABLE, table), (nft::CHAIN_NAME, chain)])
}

#[cfg(test)]
mod tests {
    use super::super::wire;
    use super::*;

    #[test]
    #[cfg(target_endian = "little")]
    fn request_golden_bytes() {
        // `nft list chain ip nat CNI-x` as GETCHAIN from sequence 7.
        let body = request_body(NftFamily::Ip, &[(nft::CHAIN_TABLE, "nat"), (nft::CHAIN_NAME, "CNI-x")]);
        let r =
            wire::message(nfnl::kind(nfnl::SUBSYS_NFTABLES, nft::MSG_GETCHAIN), NLM_F_REQUEST | NLM_F_ACK, 7, &body);
        let want: Vec<u8> = [
            &[40, 0, 0, 0, 4, 10, 5, 0, 7, 0, 0, 0, 0, 0, 0, 0][..],
            &[2, 0, 0, 0],
            &[8, 0, 1, 0, b'n', b'a', b't', 0],
            &[10, 0, 3, 0, b'C', b'N', b'I', b'-', b'x', 0, 0, 0],
        ]
        .concat();
        assert_eq!(r, want);
        // A rule dump of one table: NLM_F_DUMP, family inet.
        let body = request_body(NftFamily::Inet, &[(nft::RULE_TABLE, "t")]);
        let r =
            wire::message(nfnl::kind(nfnl::SUBSYS_NFTABLES, nft::MSG_GETRULE), NLM_F_REQUEST | NLM_F_DUMP, 1, &body);
        assert_eq!(r, [28, 0, 0, 0, 7, 10, 1, 3, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 6, 0, 1, 0, b't', 0, 0, 0]);
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
        assert_eq!(parse_rule(&[1, 0, 0, 0, 8, 0, 2, 0, b'F', b'O', b'O', 0]), None, "no handle");
    }

    #[test]
    fn jumps_are_read_from_immediate_verdicts() {
        let mut list = AttrWriter::new();
        list.nest(nft::LIST_ELEM, |e| {
            e.str_attr(nft::EXPR_NAME, "immediate").nest(nft::EXPR_DATA, |d| {
                d.u32_be(1, 0).nest(nft::IMMEDIATE_DATA, |v| {
                    v.nest(nft::DATA_VERDICT, |v| {
                        v.u32_be(nft::VERDICT_CODE, -3i32 as u32).str_attr(nft::VERDICT_CHAIN, "CNI-abc");
                    });
                });
            });
        });
        assert_eq!(verdict_chains(list.bytes()), ["CNI-abc"]);
    }

    #[test]
    fn iptables_nft_comments_are_read_from_the_xt_match() {
        // `-m comment --comment 'name: "x" id: "y"'` as iptables-nft stores it: expression "match",
        // NFTA_MATCH_NAME "comment", NFTA_MATCH_REV 0, NFTA_MATCH_INFO the text padded to 256 bytes.
        let mut info = br#"name: "x" id: "y""#.to_vec();
        info.resize(256, 0);
        let mut list = AttrWriter::new();
        list.nest(nft::LIST_ELEM, |e| {
            e.str_attr(nft::EXPR_NAME, "match").nest(nft::EXPR_DATA, |d| {
                d.str_attr(nft::MATCH_NAME, "comment").u32_be(2, 0).bytes_attr(nft::MATCH_INFO, &info);
            });
        });
        assert_eq!(xt_comment(list.bytes()).as_deref(), Some(r#"name: "x" id: "y""#));
        assert_eq!(xt_comment(&[]), None);
    }
}
