//! Path normalization and the matching of policy values (`paths`, `hosts`...): never a
//! panic; a normalized path is origin-form, has no dot segment or empty segment inside, and
//! normalizing it again changes nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_mesh::policy::{path::normalize, value_matches};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(normal) = normalize(text) {
        let path = &normal.path;
        assert!(path.starts_with('/'), "{path}");
        assert!(!path.contains("//"), "{path}");
        assert!(
            !path.split('/').any(|s| s == "." || s == ".."),
            "{path}"
        );
        let again = normalize(path).expect("a normalized path normalizes");
        assert_eq!(&again.path, path);
    }
    let (pattern, value) = text.split_once('\n').unwrap_or((text, text));
    let _ = value_matches(pattern, value);
});
