//! Every file in `examples-conf/` is run through the runtime driver: ADD, CHECK, DEL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use conformance::{ours, require_root, Attachment, FakeHost, Runtime};
use serde_json::Value;
use std::path::Path;

#[test]
fn every_example_config_works() {
    require_root!();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples-conf");
    let mut ran = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("conflist") {
            continue;
        }
        let list: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let suite = ours();
        for plugin in list["plugins"].as_array().unwrap() {
            let ty = plugin["type"].as_str().unwrap();
            assert!(suite.has(ty), "{}: plugin {ty} is not built", path.display());
        }
        let host = FakeHost::new().unwrap();
        let ns = host.container().unwrap();
        let rt = Runtime::new(&suite, &host.ns, host.dir.clone());
        let att = Attachment::new("example", &ns);
        rt.add_list(&list, &att).unwrap_or_else(|e| panic!("{}: ADD: {e}", path.display()));
        rt.check_list(&list, &att).unwrap_or_else(|e| panic!("{}: CHECK: {e}", path.display()));
        rt.del_list(&list, &att).unwrap_or_else(|e| panic!("{}: DEL: {e}", path.display()));
        ran += 1;
    }
    assert!(ran > 0, "no example configs found in {}", dir.display());
}
