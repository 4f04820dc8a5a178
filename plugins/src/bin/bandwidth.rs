//! The `bandwidth` CNI plugin binary.

fn main() {
    cni_plugins::init_logging("bandwidth");
    std::process::exit(cni_types::skel::main(&cni_plugins::bandwidth::BandwidthPlugin));
}
