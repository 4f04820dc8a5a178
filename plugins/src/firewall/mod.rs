//! Firewall rule sets: the only place rule text or nf_tables rules are built.
//!
//! What plugins ask for is data ([`model`]); each backend plans it into rule sets as data with
//! pure, golden-tested functions and writes them in one batch per operation, instead of the
//! reference's one process per rule (its main cost, see `research/reference-benchmarks.md`).
//! Chain names, comments and rules are those of the reference plugins, so a host can move
//! between the suites without leaking rules.
//!
//! ```text
//! model.rs        what plugins ask: MasqTarget (bridge/ptp ipMasq), Portmap + PortForward +
//!                 Protocol (portmap), Backend, Family; forward.rs: ForwardAccept, IngressPolicy
//!                 and the ForwardBackend trait (the firewall plugin)
//! dispatch.rs     the one entry: setup/check/teardown/gc of masquerade and portmap with the
//!                 Backend as a value; the only `match` on it. DEL and GC clean both backends
//! select.rs       default_backend(): iptables where it works, else nftables (the reference at HEAD)
//! iptables/       one `iptables-restore --noflush -w` batch per family, planned from one
//!                 `iptables-save` dump: rules.rs (Rule, SavedTable, Batch), masq.rs, portmap.rs;
//!                 mod.rs: dump/plan/load, iptables-nft probes, deletion by handle
//! nftables/       one NETLINK_NETFILTER batch per operation (crate::netlink::NftBatch): masq.rs
//!                 (inet cni_plugins_masquerade), portmap.rs (ip|ip6 cni_hostport);
//!                 portmap_conditions.rs: portmap with user nft conditions, through `nft -f -`
//! spoofcheck.rs   bridge macspoofchk (bridge nat table, through `nft`)
//! tools/          the processes: iptables-save/-restore (PendingRestore), nft (Script, Listing),
//!                 deadlines; text in, text out, no backend
//! fastpath.rs     every fast path, its condition and plain path; CNI_FIREWALL_FAST_PATHS=0
//! error.rs        FirewallError; names.rs: the reference's hashes and Go quoting
//! ```
//! Imports go one way, from the plugins down: dispatch and select → backends → tools, model,
//! error, names (`scripts/firewall-imports` prints the graph and fails on a circle). A backend
//! imports no other backend and only this facade imports `dispatch`.
//!
//! To add a backend for an existing request: a module beside `iptables/` and `nftables/` with
//! `setup`/`check`/`teardown`/`gc` taking the model types, a [`Backend`] variant (with its
//! `parse` and `name`), and its arm in each `match` of `dispatch.rs`; the compiler lists every
//! place. For a new kind of request: its data in `model.rs` (or a file beside it, as `forward.rs`),
//! one module per backend under that backend's directory (the firewall plugin's forward rules go
//! to `iptables/forward.rs`, `nftables/forward.rs` and `firewalld.rs`), and its entry in
//! `dispatch.rs` or, as `ForwardBackend` does, a trait the plugin holds as a value.

mod dispatch;
mod error;
pub mod fastpath;
pub mod firewalld;
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
