//! nfnetlink, the NETLINK_NETFILTER framing: the message type (`subsystem << 8 | message`),
//! `struct nfgenmsg`, and the one place for the constants of the nf_tables and ctnetlink
//! messages the plugins speak (`linux/netfilter/nf_tables.h`, `nfnetlink_conntrack.h`).

use super::wire;

/// `NFNL_SUBSYS_CTNETLINK`.
pub const SUBSYS_CTNETLINK: u16 = 1;
/// `NFNL_SUBSYS_NFTABLES`.
pub const SUBSYS_NFTABLES: u16 = 10;
/// `NFNL_MSG_BATCH_BEGIN`.
pub const MSG_BATCH_BEGIN: u16 = 0x10;
/// `NFNL_MSG_BATCH_END`.
pub const MSG_BATCH_END: u16 = 0x11;
/// `NFNL_BATCH_GENID`, the attribute of BATCH_BEGIN that makes the kernel refuse a batch planned
/// from an older ruleset generation.
pub const BATCH_GENID: u16 = 1;

/// A nfnetlink message: header, `nfgenmsg` (family, `NFNETLINK_V0`, `res_id` big-endian), body.
/// `kind` is the whole message type (the subsystem already shifted in, or a batch marker).
pub fn message(kind: u16, flags: u16, seq: u32, family: u8, res_id: u16, body: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(4 + body.len());
    payload.push(family);
    payload.push(0);
    payload.extend_from_slice(&res_id.to_be_bytes());
    payload.extend_from_slice(body);
    wire::message(kind, flags, seq, &payload)
}

/// The message type of `msg` in `subsystem`.
pub const fn kind(subsystem: u16, msg: u16) -> u16 {
    (subsystem << 8) | msg
}

/// nf_tables messages and attributes.
pub mod nft {
    /// `NFT_MSG_NEWTABLE`.
    pub const MSG_NEWTABLE: u16 = 0;
    /// `NFT_MSG_GETTABLE`.
    pub const MSG_GETTABLE: u16 = 1;
    /// `NFT_MSG_NEWCHAIN`.
    pub const MSG_NEWCHAIN: u16 = 3;
    /// `NFT_MSG_GETCHAIN`.
    pub const MSG_GETCHAIN: u16 = 4;
    /// `NFT_MSG_DELCHAIN`.
    pub const MSG_DELCHAIN: u16 = 5;
    /// `NFT_MSG_NEWRULE`.
    pub const MSG_NEWRULE: u16 = 6;
    /// `NFT_MSG_GETRULE`.
    pub const MSG_GETRULE: u16 = 7;
    /// `NFT_MSG_DELRULE`.
    pub const MSG_DELRULE: u16 = 8;
    /// `NFT_MSG_GETGEN`.
    pub const MSG_GETGEN: u16 = 16;
    /// `NFTA_GEN_ID`.
    pub const GEN_ID: u16 = 1;

    /// `NFTA_TABLE_NAME`.
    pub const TABLE_NAME: u16 = 1;
    /// `NFTA_TABLE_USERDATA`.
    pub const TABLE_USERDATA: u16 = 6;
    /// `NFTA_CHAIN_TABLE`.
    pub const CHAIN_TABLE: u16 = 1;
    /// `NFTA_CHAIN_NAME`.
    pub const CHAIN_NAME: u16 = 3;
    /// `NFTA_CHAIN_HOOK`.
    pub const CHAIN_HOOK: u16 = 4;
    /// `NFTA_CHAIN_TYPE`.
    pub const CHAIN_TYPE: u16 = 7;
    /// `NFTA_CHAIN_USERDATA`.
    pub const CHAIN_USERDATA: u16 = 12;
    /// `NFTA_HOOK_HOOKNUM`.
    pub const HOOK_HOOKNUM: u16 = 1;
    /// `NFTA_HOOK_PRIORITY`.
    pub const HOOK_PRIORITY: u16 = 2;
    /// `NFTA_RULE_TABLE`.
    pub const RULE_TABLE: u16 = 1;
    /// `NFTA_RULE_CHAIN`.
    pub const RULE_CHAIN: u16 = 2;
    /// `NFTA_RULE_HANDLE`.
    pub const RULE_HANDLE: u16 = 3;
    /// `NFTA_RULE_EXPRESSIONS`.
    pub const RULE_EXPRESSIONS: u16 = 4;
    /// `NFTA_RULE_USERDATA`.
    pub const RULE_USERDATA: u16 = 7;
    /// `NFTA_LIST_ELEM`.
    pub const LIST_ELEM: u16 = 1;
    /// `NFTA_EXPR_NAME`.
    pub const EXPR_NAME: u16 = 1;
    /// `NFTA_EXPR_DATA`.
    pub const EXPR_DATA: u16 = 2;
    /// `NFTA_DATA_VALUE`.
    pub const DATA_VALUE: u16 = 1;
    /// `NFTA_DATA_VERDICT`.
    pub const DATA_VERDICT: u16 = 2;
    /// `NFTA_VERDICT_CODE`.
    pub const VERDICT_CODE: u16 = 1;
    /// `NFTA_VERDICT_CHAIN`.
    pub const VERDICT_CHAIN: u16 = 2;
    /// `NFTA_IMMEDIATE_DATA`.
    pub const IMMEDIATE_DATA: u16 = 2;
    /// `NFTA_MATCH_NAME` (an xt match inside a rule of iptables-nft).
    pub const MATCH_NAME: u16 = 1;
    /// `NFTA_MATCH_REV`.
    pub const MATCH_REV: u16 = 2;
    /// `NFTA_MATCH_INFO`.
    pub const MATCH_INFO: u16 = 3;
    /// Userdata TLV type of a table, chain or rule comment (`NFTNL_UDATA_*_COMMENT`).
    pub const UDATA_COMMENT: u8 = 0;

    /// `NFTA_META_DREG`.
    pub const META_DREG: u16 = 1;
    /// `NFTA_META_KEY`.
    pub const META_KEY: u16 = 2;
    /// `NFTA_META_SREG` (`meta set`).
    pub const META_SREG: u16 = 3;
    /// `NFTA_SOCKET_KEY`.
    pub const SOCKET_KEY: u16 = 1;
    /// `NFTA_SOCKET_DREG`.
    pub const SOCKET_DREG: u16 = 2;
    /// `NFTA_PAYLOAD_DREG`.
    pub const PAYLOAD_DREG: u16 = 1;
    /// `NFTA_PAYLOAD_BASE`.
    pub const PAYLOAD_BASE: u16 = 2;
    /// `NFTA_PAYLOAD_OFFSET`.
    pub const PAYLOAD_OFFSET: u16 = 3;
    /// `NFTA_PAYLOAD_LEN`.
    pub const PAYLOAD_LEN: u16 = 4;
    /// `NFTA_CMP_SREG`.
    pub const CMP_SREG: u16 = 1;
    /// `NFTA_CMP_OP`.
    pub const CMP_OP: u16 = 2;
    /// `NFTA_CMP_DATA`.
    pub const CMP_DATA: u16 = 3;
    /// `NFTA_BITWISE_SREG`.
    pub const BITWISE_SREG: u16 = 1;
    /// `NFTA_BITWISE_DREG`.
    pub const BITWISE_DREG: u16 = 2;
    /// `NFTA_BITWISE_LEN`.
    pub const BITWISE_LEN: u16 = 3;
    /// `NFTA_BITWISE_MASK`.
    pub const BITWISE_MASK: u16 = 4;
    /// `NFTA_BITWISE_XOR`.
    pub const BITWISE_XOR: u16 = 5;
    /// `NFTA_BITWISE_OP` (kernels that know other operations than mask-and-xor).
    pub const BITWISE_OP: u16 = 6;
    /// `NFTA_IMMEDIATE_DREG`.
    pub const IMMEDIATE_DREG: u16 = 1;
    /// `NFTA_NAT_TYPE`.
    pub const NAT_TYPE: u16 = 1;
    /// `NFTA_NAT_FAMILY`.
    pub const NAT_FAMILY: u16 = 2;
    /// `NFTA_NAT_REG_ADDR_MIN`.
    pub const NAT_REG_ADDR_MIN: u16 = 3;
    /// `NFTA_NAT_REG_ADDR_MAX`.
    pub const NAT_REG_ADDR_MAX: u16 = 4;
    /// `NFTA_NAT_REG_PROTO_MIN`.
    pub const NAT_REG_PROTO_MIN: u16 = 5;
    /// `NFTA_NAT_REG_PROTO_MAX`.
    pub const NAT_REG_PROTO_MAX: u16 = 6;
    /// `NFTA_NAT_FLAGS`.
    pub const NAT_FLAGS: u16 = 7;
    /// `NFTA_FIB_DREG`.
    pub const FIB_DREG: u16 = 1;
    /// `NFTA_FIB_RESULT`.
    pub const FIB_RESULT: u16 = 2;
    /// `NFTA_FIB_FLAGS`.
    pub const FIB_FLAGS: u16 = 3;

    /// `NFPROTO_IPV4`, the value `meta nfproto` compares and a nat expression's family.
    pub const NFPROTO_IPV4: u8 = 2;
    /// `NFPROTO_IPV6`.
    pub const NFPROTO_IPV6: u8 = 10;
    /// `NFT_META_NFPROTO`.
    pub const META_NFPROTO: u32 = 15;
    /// `NFT_META_L4PROTO`.
    pub const META_L4PROTO: u32 = 16;
    /// `NFT_META_IIFNAME`.
    pub const META_IIFNAME: u32 = 6;
    /// `NFT_META_OIFNAME`.
    pub const META_OIFNAME: u32 = 7;
    /// `NFTA_CT_DREG`.
    pub const CT_DREG: u16 = 1;
    /// `NFTA_CT_KEY`.
    pub const CT_KEY: u16 = 2;
    /// `NFTA_CT_DIRECTION`.
    pub const CT_DIRECTION: u16 = 3;
    /// `NFT_CT_STATE`.
    pub const CT_STATE: u32 = 0;
    /// `NF_CT_STATE_BIT(IP_CT_ESTABLISHED) | NF_CT_STATE_BIT(IP_CT_RELATED)`.
    pub const CT_STATE_ESTABLISHED_RELATED: u32 = (1 << 1) | (1 << 2);
    /// `NFT_META_MARK`.
    pub const META_MARK: u32 = 3;
    /// `NFT_SOCKET_TRANSPARENT`.
    pub const SOCKET_TRANSPARENT: u32 = 0;
    /// `NFT_REG_VERDICT`.
    pub const REG_VERDICT: u32 = 0;
    /// `NFT_REG_1`.
    pub const REG_1: u32 = 1;
    /// `NFT_REG_2`.
    pub const REG_2: u32 = 2;
    /// `NFT_NAT_DNAT`.
    pub const NAT_DNAT: u32 = 1;
    /// `NF_NAT_RANGE_MAP_IPS`, which the kernel adds whenever an address register is given.
    pub const NF_NAT_RANGE_MAP_IPS: u32 = 1;
    /// `NF_NAT_RANGE_PROTO_SPECIFIED`.
    pub const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 2;
    /// `NFT_FIB_RESULT_ADDRTYPE`.
    pub const FIB_RESULT_ADDRTYPE: u32 = 3;
    /// `NFTA_FIB_F_DADDR`.
    pub const FIB_F_DADDR: u32 = 2;
    /// `RTN_LOCAL`, the address type `fib daddr type local` compares.
    pub const RTN_LOCAL: u32 = 2;
}

/// ctnetlink messages and attributes.
pub mod ct {
    /// `IPCTNL_MSG_CT_GET`.
    pub const MSG_GET: u16 = 1;
    /// `IPCTNL_MSG_CT_DELETE`.
    pub const MSG_DELETE: u16 = 2;
    /// `CTA_TUPLE_ORIG`.
    pub const TUPLE_ORIG: u16 = 1;
    /// `CTA_TUPLE_PROTO`.
    pub const TUPLE_PROTO: u16 = 2;
    /// `CTA_ZONE`.
    pub const ZONE: u16 = 18;
    /// `CTA_PROTO_NUM`.
    pub const PROTO_NUM: u16 = 1;
    /// `CTA_PROTO_DST_PORT`.
    pub const PROTO_DST_PORT: u16 = 3;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_endian = "little")]
    fn nfgenmsg_golden_bytes() {
        assert_eq!(
            message(MSG_BATCH_BEGIN, 1, 3, 0, SUBSYS_NFTABLES, &[]),
            [20, 0, 0, 0, 0x10, 0, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10]
        );
        assert_eq!(
            message(kind(SUBSYS_CTNETLINK, ct::MSG_GET), 0x301, 7, 10, 0, &[]),
            [20, 0, 0, 0, 1, 1, 1, 3, 7, 0, 0, 0, 0, 0, 0, 0, 10, 0, 0, 0]
        );
    }
}
