//! Key hashing: a request key (bytes) becomes a 64-bit hash with SipHash-1-3
//! (Aumasson & Bernstein, 2012; the `siphasher` crate).
//!
//! The hash is keyed. By default the key is [`DEFAULT_HASH_KEY`], a fixed,
//! public constant, so every instance and every restart maps the same request
//! key to the same hash (and therefore the same backend). An operator who does
//! not want clients to be able to predict (and pile onto) a backend configures
//! a secret `hash_key`; every instance of one pool must then share it.
//!
//! Guarantees: a pure function of (hash key, bytes); identical on every
//! platform (SipHash reads its input as little-endian words); pinned by
//! literal test vectors below, so a dependency upgrade cannot silently remap
//! every session.

use std::hash::Hasher;

use siphasher::sip::SipHasher13;
use siphasher::sip128::{Hasher128, SipHasher13 as SipHasher13x128};

/// The fixed, documented default key: the ASCII bytes of `affinity-hash-v1`.
pub const DEFAULT_HASH_KEY: [u8; 16] = *b"affinity-hash-v1";

/// The key under which backend *names* are hashed to place them in tables and
/// rings. It is independent of the configured `hash_key`: a secret hides where
/// keys go, not where backends sit.
const MEMBER_HASH_KEY: [u8; 16] = *b"affinity-member1";

/// Hashes request keys under one SipHash key. Cheap to copy.
#[derive(Clone, Copy, Debug)]
pub struct KeyHasher {
    sip: SipHasher13,
}

impl Default for KeyHasher {
    fn default() -> Self {
        KeyHasher::new(DEFAULT_HASH_KEY)
    }
}

impl KeyHasher {
    /// A hasher under `key` (the configured secret, or [`DEFAULT_HASH_KEY`]).
    pub fn new(key: [u8; 16]) -> Self {
        KeyHasher {
            sip: SipHasher13::new_with_key(&key),
        }
    }

    /// The 64-bit hash of a request key.
    #[inline]
    pub fn hash(&self, key: &[u8]) -> u64 {
        self.sip.hash(key)
    }
}

/// 128 bits derived from a backend name (and a small domain tag so that
/// different uses of the same name are independent), as two `u64` halves.
pub(crate) fn member_hash128(tag: &[u8], name: &str) -> (u64, u64) {
    let mut h = SipHasher13x128::new_with_key(&MEMBER_HASH_KEY);
    // The length prefix keeps ("ab", "c") and ("a", "bc") apart.
    h.write(&(tag.len() as u64).to_le_bytes());
    h.write(tag);
    h.write(name.as_bytes());
    h.finish128().as_u64()
}

/// SplitMix64's finaliser (Steele, Lea & Flood, 2014): a fast bijective mixer
/// for deriving well-spread 64-bit values from structured integers.
#[inline]
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Literal values pin the hash across machines, runs and crate upgrades:
    /// if one of these changes, every deployed pool would remap its keys.
    #[test]
    fn default_key_hashes_are_pinned_to_literal_values() {
        let h = KeyHasher::default();
        let vectors: [(&[u8], u64); 4] = [
            (b"", PINNED[0]),
            (b"127.0.0.1", PINNED[1]),
            (b"/index.html?user=42", PINNED[2]),
            (b"session-0123456789abcdef", PINNED[3]),
        ];
        for (key, want) in vectors {
            assert_eq!(
                h.hash(key),
                want,
                "hash of {:?} changed",
                String::from_utf8_lossy(key)
            );
        }
    }

    /// Computed by an independent SipHash-1-3 written from the paper in
    /// Python (which reproduces the paper's SipHash-2-4 vector
    /// `0xa129ca6149be45e5`), not by this crate.
    const PINNED: [u64; 4] = [
        0x2565_c7e9_1107_20e5,
        0xa833_5a9a_7e50_bb22,
        0xe008_18e3_b54b_c3e1,
        0xa941_982e_66b6_f164,
    ];

    #[test]
    fn the_default_key_is_the_documented_ascii_string() {
        assert_eq!(&DEFAULT_HASH_KEY, b"affinity-hash-v1");
    }

    #[test]
    fn a_configured_secret_changes_the_hash() {
        let a = KeyHasher::default().hash(b"10.0.0.1");
        let b = KeyHasher::new(*b"0123456789abcdef").hash(b"10.0.0.1");
        assert_ne!(a, b);
    }

    #[test]
    fn member_hashes_depend_on_tag_and_name() {
        assert_ne!(member_hash128(b"a", "x"), member_hash128(b"b", "x"));
        assert_ne!(member_hash128(b"a", "x"), member_hash128(b"a", "y"));
        assert_eq!(member_hash128(b"a", "x"), member_hash128(b"a", "x"));
    }
}
