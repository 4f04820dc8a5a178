//! The `portmap` CNI plugin binary.

fn main() {
    cni_plugins::init_logging("portmap");
    std::process::exit(cni_types::skel::main(&cni_plugins::portmap::PortmapPlugin));
}
