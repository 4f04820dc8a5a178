//! The `rootless-wrapper` CNI meta-plugin binary.

fn main() {
    cni_plugins::init_logging("rootless-wrapper");
    // Started by the wrapper itself to carry published ports.
    if let Some(code) = cni_plugins::rootless::forwarder::main_if_requested() {
        std::process::exit(code);
    }
    std::process::exit(cni_types::skel::main(&cni_plugins::rootless::RootlessWrapper));
}
