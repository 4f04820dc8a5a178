//! The `loopback` CNI plugin binary.

fn main() {
    cni_plugins::init_logging("loopback");
    std::process::exit(cni_types::skel::main(&cni_plugins::loopback::Loopback));
}
