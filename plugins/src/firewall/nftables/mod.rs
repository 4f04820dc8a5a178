//! The nftables backend: the reference's tables (v1.6.1+), planned as data
//! ([`crate::netlink::NftBatch`]) from what the kernel lists over netlink and committed as one
//! NETLINK_NETFILTER batch per operation, with no process. [`masq`] is bridge and ptp masquerade
//! (`inet cni_plugins_masquerade`), [`portmap`] is portmap's DNAT (`ip|ip6 cni_hostport`); only a
//! portmap with user `conditionsV4`/`conditionsV6` (nft text) goes through `nft -f -`
//! ([`portmap_conditions`]).

pub mod forward;
pub mod masq;
pub mod portmap;
pub mod portmap_conditions;

use crate::firewall::error::FirewallError;
use crate::netlink::{nft_table_exists, NftFamily};

/// The portmap table, in both the `ip` and `ip6` families, and its chains: shared by the netlink
/// path and the `nft` text path so both write the reference's layout.
pub const HOSTPORT_TABLE: &str = "cni_hostport";
/// The portmap table's comment.
const HOSTPORT_TABLE_COMMENT: &str = "CNI portmap plugin";
/// The chain of every container's DNAT rules.
const HOSTPORTS: &str = "hostports";
/// The chain the reference kept for host-IP rules; created, left empty.
const HOSTIP_HOSTPORTS: &str = "hostip_hostports";
/// The chain both entry chains jump to.
const HOSTPORTS_ALL: &str = "hostports_all";
/// The `nat prerouting` entry chain.
const PREROUTING: &str = "prerouting";
/// The `nat output` entry chain.
const OUTPUT: &str = "output";
/// The `nat postrouting` chain of the hairpin and localhost masquerade rules.
const MASQUERADING: &str = "masquerading";

/// Whether the kernel answers nf_tables requests (no `nft` binary needed): one netlink round trip
/// asking about the portmap table, which need not exist.
pub fn kernel_usable() -> Result<(), FirewallError> {
    nft_table_exists(NftFamily::Ip, HOSTPORT_TABLE)
        .map(drop)
        .map_err(|source| FirewallError::Netlink { what: format!("probing of table ip {HOSTPORT_TABLE}"), source })
}
