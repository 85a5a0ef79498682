//! Hashers for the store's hot maps, replacing SipHash (about half of the store's own
//! instructions per page operation in the 1 GiB benchmark, under the metadata lock).
//!
//! * [`IdState`] for maps keyed by ids the store assigns itself ([`crate::ClientId`]): one
//!   multiply; keys are not chosen by a guest, so there is nothing to attack.
//! * [`KeyedState`] for maps keyed by guest-chosen values (object ids): a folded 64×64→128
//!   multiply per 8-byte word, keyed with two random words drawn once per store (the
//!   construction of foldhash/aHash's fallback). A guest cannot aim its object ids at one
//!   bucket without learning the key.

use std::hash::{BuildHasher, Hasher};

const MUL: u64 = 0x9E37_79B9_7F4A_7C15;

#[inline]
fn fold(a: u64, b: u64) -> u64 {
    let p = (a as u128).wrapping_mul(b as u128);
    (p as u64) ^ ((p >> 64) as u64)
}

/// For store-assigned integer ids.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct IdState;

#[derive(Debug, Default)]
pub(crate) struct IdHasher(u64);

impl BuildHasher for IdState {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ *b as u64).wrapping_mul(MUL);
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(v as u64);
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(MUL);
    }
    fn finish(&self) -> u64 {
        // hashbrown takes the bucket from the low bits and a tag from the top 7: mix both.
        self.0 ^ (self.0 >> 29)
    }
}

/// For guest-chosen keys: keyed with random words.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyedState {
    k0: u64,
    k1: u64,
}

impl KeyedState {
    /// Fresh random keys (from the standard library's per-process random source).
    pub(crate) fn random() -> KeyedState {
        let rs = std::collections::hash_map::RandomState::new();
        let k0 = rs.hash_one(0x746d_656d_7374_6f72u64);
        let k1 = rs.hash_one(k0) | 1;
        KeyedState { k0, k1 }
    }
}

#[derive(Debug)]
pub(crate) struct KeyedHasher {
    h: u64,
    k1: u64,
}

impl BuildHasher for KeyedState {
    type Hasher = KeyedHasher;
    fn build_hasher(&self) -> KeyedHasher {
        KeyedHasher {
            h: self.k0,
            k1: self.k1,
        }
    }
}

impl Hasher for KeyedHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.write_u64(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(v as u64);
    }
    fn write_u64(&mut self, v: u64) {
        self.h = fold(self.h ^ v, self.k1);
    }
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
    fn finish(&self) -> u64 {
        fold(self.h, MUL ^ self.k1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn keyed_hash_spreads_structured_keys() {
        let s = KeyedState::random();
        // Object ids that differ in one word only, as a guest would make them.
        let mut buckets = HashSet::new();
        for i in 0..4096u64 {
            buckets.insert(s.hash_one(crate::Oid([i, 7, 0])) & 0xfff);
        }
        // A decent hash fills well over half of 4096 buckets with 4096 keys (random: ~63%).
        assert!(buckets.len() > 2300, "{}", buckets.len());
        let t = KeyedState::random();
        assert_ne!(
            s.hash_one(crate::Oid([1, 2, 3])),
            t.hash_one(crate::Oid([1, 2, 3]))
        );
    }
}
