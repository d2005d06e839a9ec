//! The YAML and Istio object parser, the compiler and `analyze`, on any text: a document
//! is applied, skipped or rejected with a message, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_mesh::config::{Model, parse_documents};
use weft_mesh::state::State;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut model = Model::default();
    for (_, parsed) in parse_documents(text) {
        match parsed {
            Ok(Some(object)) => {
                model.insert(object);
            }
            Ok(None) => {}
            Err(err) => {
                let _ = err.to_string();
            }
        }
    }
    let state = State::compile(model);
    let (report, _) = weft_mesh::analyze::report(&state, &[]);
    assert!(report.is_empty() || report.ends_with('\n'));
});
