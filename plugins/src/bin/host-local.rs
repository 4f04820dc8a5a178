//! The `host-local` IPAM plugin binary.

fn main() {
    cni_plugins::init_logging("host-local");
    std::process::exit(cni_types::skel::main(&cni_plugins::host_local::HostLocal));
}
