//! The `rootless-wrapper` CNI meta-plugin binary.

fn main() {
    cni_plugins::init_logging("rootless-wrapper");
    std::process::exit(cni_types::skel::main(&cni_plugins::rootless::RootlessWrapper));
}
