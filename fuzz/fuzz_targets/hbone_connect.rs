//! What a tunnel peer controls in a CONNECT request: `:authority` (which must be ip:port)
//! and `Forwarded` (RFC 7239). Neither may panic, and a parsed `for=` is an address.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (authority, forwarded) = text.split_once('\n').unwrap_or((text, text));
    if let Ok(uri) = authority.parse::<http::Uri>()
        && let Some(a) = uri.authority()
    {
        let _ = a.as_str().parse::<std::net::SocketAddr>();
    }
    if weft_mesh::hbone::forwarded_for(forwarded).is_some() {
        assert!(forwarded.to_ascii_lowercase().contains("for"), "{forwarded:?}");
    }
});
