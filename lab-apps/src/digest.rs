//! SHA-256 digests as the sink reports them: lowercase hex, one line.

use sha2::{Digest, Sha256};

/// Lowercase hex of a finished SHA-256.
pub fn to_hex(hasher: Sha256) -> String {
    hex::encode(hasher.finalize())
}

/// Lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    to_hex(Sha256::new_with_prefix(data))
}

/// Whether the line a sink answered names the digest the sender computed. A line that is
/// not exactly 64 hex digits (a truncated answer, an error text) never matches.
pub fn digests_match(sent: &str, received_line: &str) -> bool {
    let received = received_line.trim_end_matches(['\n', '\r']);
    received.len() == 64
        && received.bytes().all(|b| b.is_ascii_hexdigit())
        && received.eq_ignore_ascii_case(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn known_vectors() {
        assert_eq!(sha256_hex(b""), EMPTY);
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn matching_digest_with_newline() {
        assert!(digests_match(EMPTY, &format!("{EMPTY}\n")));
        assert!(digests_match(EMPTY, EMPTY));
    }

    #[test]
    fn corrupted_digest_is_detected() {
        let mut corrupted = EMPTY.to_string();
        corrupted.replace_range(10..11, "0");
        assert_ne!(corrupted, EMPTY);
        assert!(!digests_match(EMPTY, &corrupted));
        assert!(!digests_match(EMPTY, &sha256_hex(b"x")));
    }

    #[test]
    fn truncated_or_garbage_answer_is_detected() {
        assert!(!digests_match(EMPTY, ""));
        assert!(!digests_match(EMPTY, &EMPTY[..63]));
        assert!(!digests_match(EMPTY, &format!("{EMPTY}00")));
        assert!(!digests_match(EMPTY, "error: connection reset"));
    }
}
