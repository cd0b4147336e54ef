//! Manifest parsing and the key ⇄ path mapping on arbitrary bytes: never a panic, and whatever
//! is accepted stays inside its roots and prefix.
#![no_main]

use ferry::manifest::{self, Manifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Manifest::from_json(data) else { return };
    for e in &m.workdir.entries {
        assert!(manifest::check_rel(&e.path).is_ok());
        assert!(m.root_of(&format!("{}/{}", m.workdir.path, e.path)).is_some());
    }
    for d in m.inputs.iter().chain(&m.indices) {
        assert!(m.root_of(&d.path).is_some());
        assert!(manifest::check_key(&d.key).is_ok());
        for f in &d.files {
            assert!(manifest::check_rel(&f.path).is_ok());
        }
    }
    let local = manifest::local_path(Some(std::path::Path::new("/pod")), &m.workdir.path);
    assert!(local.starts_with("/pod"));
});
