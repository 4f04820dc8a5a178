//! Firewall rule sets: the only place rule text is built.
//!
//! Two kinds of backends, both driven by batches instead of one process per rule (the reference's
//! main cost, see `research/reference-benchmarks.md`):
//! * iptables: one `iptables-restore --noflush -w` (or `ip6tables-restore`) batch per family and
//!   operation, planned from one `iptables-save -t <table>` dump ([`iptables`] is the chain model,
//!   [`restore`] runs the tools);
//! * nftables: one NETLINK_NETFILTER batch per operation ([`crate::netlink::NftBatch`]), planned as
//!   data from what the kernel lists over netlink (`masq_nft`, `portmap_nftnl`); only a portmap ADD
//!   with user `conditionsV4`/`conditionsV6` (nft text) still goes through `nft -f -` ([`nft`]).
//!
//! Chain names, comments and rules are those of the reference plugins, so a host can move between
//! the suites without leaking rules.

mod dispatch;
mod error;
pub mod fastpath;
pub mod forward;
pub mod iptables;
pub mod model;
mod names;
pub mod nftables;
mod select;
mod spoofcheck;
pub mod tools;

pub use dispatch::{
    begin_ipmasq, check_ipmasq, check_portmap, gc_ipmasq, gc_portmap, portmap_usable, prepare_ipmasq, setup_ipmasq,
    setup_portmap, teardown_ipmasq, teardown_portmap, MasqSetup,
};
pub use error::FirewallError;
pub use model::{Backend, Family, MasqTarget, PortForward, Portmap, Protocol};
pub use select::default_backend;
pub use spoofcheck::{setup_spoofcheck, teardown_spoofcheck};
pub use tools::PendingRestore;
