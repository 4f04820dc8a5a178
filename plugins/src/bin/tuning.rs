//! The `tuning` CNI plugin binary.

fn main() {
    cni_plugins::init_logging("tuning");
    std::process::exit(cni_types::skel::main(&cni_plugins::tuning::Tuning));
}
