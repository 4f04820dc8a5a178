//! Which backend a plugin uses when its configuration names none (bridge/ptp `ipMasqBackend`,
//! portmap `backend`): one rule for every plugin, the reference's at HEAD (`SupportsIPTables`,
//! `SupportsNFTables`): iptables where iptables works, else nftables where nftables works, else an
//! error naming both.
//!
//! "iptables works" means `iptables-restore` and `iptables-save` are installed and can reach the
//! kernel: for iptables-nft that is the nf_tables netlink interface, asked in one round trip; for
//! iptables-legacy the kernel's `ip_tables` module, seen in `/proc/net/ip_tables_names`, else one
//! `iptables-save -t nat` run. "nftables works" means the kernel answers an nf_tables request over
//! netlink (no `nft` binary is needed).

use super::error::FirewallError;
use super::model::{Backend, Family};
use super::tools::{has_tool, restore_tool, save_tool};
use super::{iptables, nftables};

/// The backend for a configuration that names none: iptables if it works, else nftables if it
/// works, else [`FirewallError::NoBackend`] with both reasons. The host is probed once per process
/// (an ADD asks while validating and again when it writes).
pub fn default_backend() -> Result<Backend, FirewallError> {
    static CHOSEN: std::sync::OnceLock<Backend> = std::sync::OnceLock::new();
    if let Some(backend) = CHOSEN.get() {
        return Ok(*backend);
    }
    let backend = probe()?;
    Ok(*CHOSEN.get_or_init(|| backend))
}

fn probe() -> Result<Backend, FirewallError> {
    let iptables = match iptables_works() {
        Ok(()) => return Ok(Backend::Iptables),
        Err(e) => e,
    };
    match nftables::kernel_usable() {
        Ok(()) => Ok(Backend::Nftables),
        Err(nftables) => Err(FirewallError::NoBackend { iptables: Box::new(iptables), nftables: Box::new(nftables) }),
    }
}

/// Whether the IPv4 iptables tools are installed and can talk to the kernel.
fn iptables_works() -> Result<(), FirewallError> {
    for tool in [restore_tool(Family::V4), save_tool(Family::V4)] {
        if !has_tool(tool) {
            return Err(FirewallError::ToolNotFound(tool.to_string()));
        }
    }
    if iptables::is_nft(Family::V4) {
        return nftables::kernel_usable();
    }
    if std::path::Path::new("/proc/net/ip_tables_names").exists() {
        return Ok(());
    }
    iptables::save(Family::V4, iptables::NAT).map(drop)
}
