//! The `bridge` CNI plugin binary.

fn main() {
    cni_plugins::init_logging("bridge");
    std::process::exit(cni_types::skel::main(&cni_plugins::bridge::Bridge));
}
