//! `iptables-save` dumps and restore-line quoting: parse any dump; a parsed rule renders to a line
//! that splits back into the same arguments.
#![no_main]

use cni_plugins::firewall::iptables::{split_args, Rule, SavedTable};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(saved) = SavedTable::parse(&text, "nat") {
        for rule in &saved.rules {
            let line = rule.render_args();
            if !line.contains(|c: char| c.is_control()) {
                assert_eq!(split_args(&line).as_ref(), Ok(&rule.args), "render/split round trip of {line:?}");
            }
        }
    }
    // Arguments of any content survive quoting, or are refused before a tool sees them.
    let args: Vec<String> = text.split('\u{1f}').map(str::to_string).collect();
    let rule = Rule { chain: "CNI-X".into(), args: args.clone() };
    let mut batch = cni_plugins::firewall::iptables::Batch::new("nat");
    batch.append(&rule);
    let rendered = batch.render();
    let line_ok = cni_plugins::firewall::tools::check_text("iptables-restore", &rendered, Some(10238)).is_ok();
    if line_ok {
        let line = rendered.lines().nth(1).expect("the command line");
        let split = split_args(line.strip_prefix("-A ").expect("an append")).expect("renders parse");
        assert_eq!(split[1..], args[..], "accepted text means what was asked");
    }
});
