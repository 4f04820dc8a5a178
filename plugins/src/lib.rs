//! The plugins' shared machinery (namespaces, netlink, sysctl, firewall, locks) and the plugins.

pub mod bandwidth;
pub mod bridge;
pub mod firewall;
pub mod firewall_plugin;
pub mod fsutil;
pub mod host_local;
pub mod lock;
pub mod loopback;
pub mod netlink;
pub mod ns;
pub mod portmap;
pub mod ptp;
pub mod rootless;
pub mod sysctl;
pub mod tuning;
pub mod veth;

/// The line a plugin prints first to stderr when run without `CNI_COMMAND`, the shape the
/// reference prints and runtimes parse (nerdctl, Nomad): `CNI <type> plugin v<semver>`.
///
/// The version is the workspace's, `MAJOR.MINOR.PATCH+rs.N`: `MAJOR.MINOR.PATCH` is the reference
/// release whose behaviour the suite implements (runtimes compare it against reference releases to
/// decide which features to use, e.g. nerdctl wants a `firewall` at v1.7.1 or later for
/// `ingressPolicy: isolated`), and the build metadata `rs.N` counts our releases at that level.
/// Semver ignores build metadata in comparisons, so the line compares exactly as the reference
/// release does; a prerelease tag would compare lower and is never used.
pub fn about(plugin: &str) -> String {
    format!("CNI {plugin} plugin v{}", env!("CARGO_PKG_VERSION"))
}

/// Sets up logging to stderr (stdout is the protocol). `CNI_LOG` (or the plugin-specific
/// `<PLUGIN>_LOG`, e.g. `BRIDGE_LOG`) takes `error`, `warn`, `info`, `debug`; `CNI_LOG_FILE`
/// appends to a file instead, useful because runtimes often swallow stderr.
pub fn init_logging(plugin: &str) {
    let specific = format!("{}_LOG", plugin.to_ascii_uppercase().replace('-', "_"));
    let level = std::env::var(&specific).or_else(|_| std::env::var("CNI_LOG")).unwrap_or_else(|_| "warn".into());
    let mut builder = env_logger::Builder::new();
    builder.parse_filters(&level).format_timestamp_millis();
    if let Ok(path) = std::env::var("CNI_LOG_FILE") {
        if let Ok(file) = fsutil::open_append(std::path::Path::new(&path)) {
            builder.target(env_logger::Target::Pipe(Box::new(file)));
        }
    }
    let _ = builder.try_init();
}
