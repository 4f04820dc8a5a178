//! The `ptp` CNI plugin binary.

fn main() {
    cni_plugins::init_logging("ptp");
    std::process::exit(cni_types::skel::main(&cni_plugins::ptp::Ptp));
}
