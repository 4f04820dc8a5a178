//! The `firewall` CNI plugin binary.

fn main() {
    cni_plugins::init_logging("firewall");
    std::process::exit(cni_types::skel::main(&cni_plugins::firewall_plugin::FirewallPlugin));
}
