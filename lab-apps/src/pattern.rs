//! Deterministic pseudo-random payload.
//!
//! The sender must be able to produce megabytes per millisecond and the same bytes again
//! from the same seed, so this is SplitMix64 (Steele, Lea, Flood: "Fast splittable
//! pseudorandom number generators", OOPSLA 2014), not a cryptographic generator. The
//! stream is the little-endian words of the generator, and it does not depend on how the
//! caller cuts it into buffers.

/// An endless byte stream derived from a seed.
#[derive(Debug, Clone)]
pub struct Pattern {
    state: u64,
    /// Bytes of the last word that a short `fill` did not use; the live ones are
    /// `carry[8 - carry_len..]`.
    carry: [u8; 8],
    carry_len: usize,
}

impl Pattern {
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed,
            carry: [0; 8],
            carry_len: 0,
        }
    }

    fn next_word(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Fills `buf` with the next `buf.len()` bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let take = self.carry_len.min(buf.len());
        let start = 8 - self.carry_len;
        buf[..take].copy_from_slice(&self.carry[start..start + take]);
        self.carry_len -= take;

        let mut words = buf[take..].chunks_exact_mut(8);
        for word in &mut words {
            word.copy_from_slice(&self.next_word().to_le_bytes());
        }
        let rest = words.into_remainder();
        if !rest.is_empty() {
            let word = self.next_word().to_le_bytes();
            rest.copy_from_slice(&word[..rest.len()]);
            self.carry = word;
            self.carry_len = 8 - rest.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(seed: u64, len: usize, chunk: usize) -> Vec<u8> {
        let mut pattern = Pattern::new(seed);
        let mut out = vec![0; len];
        for piece in out.chunks_mut(chunk) {
            pattern.fill(piece);
        }
        out
    }

    #[test]
    fn same_stream_whatever_the_chunk_size() {
        let whole = stream(7, 1000, 1000);
        for chunk in [1, 3, 7, 8, 9, 64, 999] {
            assert_eq!(stream(7, 1000, chunk), whole, "chunk {chunk}");
        }
    }

    #[test]
    fn seeds_differ() {
        assert_ne!(stream(1, 64, 64), stream(2, 64, 64));
    }

    #[test]
    fn empty_fill_is_a_no_op() {
        let mut a = Pattern::new(3);
        a.fill(&mut []);
        let mut b = Pattern::new(3);
        let (mut x, mut y) = ([0; 16], [0; 16]);
        a.fill(&mut x);
        b.fill(&mut y);
        assert_eq!(x, y);
    }
}
