//! [`IdSet`]: the backend's set of request ids in flight.
//!
//! A fixed-capacity open-addressing table (linear probing, backward-shift deletion, no
//! tombstones) sized at twice the ring's entries, so it is never more than half full: the
//! number of ids in flight is bounded by the ring size whatever the guest does
//! (`BackendRing` breaks the ring before it could exceed it). Every probe sequence is
//! therefore bounded by the table size and always ends at an empty bucket. It replaces a
//! `HashSet<u64>` (SipHash, growth checks) that cost about 300 instructions per request.
//!
//! Ids are chosen by the guest. The bucket is a multiply-shift hash keyed with per-table
//! random words, so a guest cannot aim its ids at one bucket without learning the key; even if
//! it did, it would only lengthen probes of its own ring, and never beyond the table size.

use std::hash::{BuildHasher, Hasher};

/// Marks an empty bucket. An id equal to `EMPTY` is kept aside in `has_empty_id`.
const EMPTY: u64 = u64::MAX;

#[derive(Debug)]
pub(crate) struct IdSet {
    buckets: Box<[u64]>,
    mask: usize,
    shift: u32,
    k0: u64,
    k1: u64,
    len: usize,
    /// Whether the id `u64::MAX` (the empty marker) is in the set.
    has_empty_id: bool,
}

impl IdSet {
    /// A set able to hold `max` ids with at most half of its buckets used.
    pub(crate) fn with_max(max: usize) -> IdSet {
        let cap = max.saturating_mul(2).max(2).next_power_of_two();
        let bits = cap.trailing_zeros();
        let rs = std::collections::hash_map::RandomState::new();
        let mut h = rs.build_hasher();
        h.write_u64(0x746d_656d_6964_7331);
        let k0 = h.finish();
        h.write_u64(k0);
        let k1 = h.finish() | 1;
        IdSet {
            buckets: vec![EMPTY; cap].into_boxed_slice(),
            mask: cap - 1,
            // `bits` is at least 1, so the shift is at most 63.
            shift: 64 - bits,
            k0,
            k1,
            len: 0,
            has_empty_id: false,
        }
    }

    #[inline]
    fn home(&self, id: u64) -> usize {
        ((id ^ self.k0).wrapping_mul(self.k1) >> self.shift) as usize
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Insert `id`. False if it was already present or the set is full (more than `max` ids,
    /// which the caller's ring-size bound rules out).
    #[inline]
    pub(crate) fn insert(&mut self, id: u64) -> bool {
        if id == EMPTY {
            if self.has_empty_id {
                return false;
            }
            self.has_empty_id = true;
            self.len += 1;
            return true;
        }
        // Keep at least one empty bucket so every probe ends.
        if self.len + 1 >= self.buckets.len() {
            return false;
        }
        let mut i = self.home(id);
        // Bounded: the table has an empty bucket (checked above).
        for _ in 0..self.buckets.len() {
            let b = self.buckets[i];
            if b == id {
                return false;
            }
            if b == EMPTY {
                self.buckets[i] = id;
                self.len += 1;
                return true;
            }
            i = (i + 1) & self.mask;
        }
        false
    }

    /// Remove `id`. False if it was not present.
    #[inline]
    pub(crate) fn remove(&mut self, id: u64) -> bool {
        if id == EMPTY {
            if !self.has_empty_id {
                return false;
            }
            self.has_empty_id = false;
            self.len -= 1;
            return true;
        }
        let mut i = self.home(id);
        let mut found = None;
        for _ in 0..self.buckets.len() {
            let b = self.buckets[i];
            if b == id {
                found = Some(i);
                break;
            }
            if b == EMPTY {
                return false;
            }
            i = (i + 1) & self.mask;
        }
        let Some(mut hole) = found else { return false };
        // Backward-shift deletion: pull later members of the cluster into the hole when
        // their home bucket does not lie cyclically in (hole, j].
        let mut j = hole;
        for _ in 0..self.buckets.len() {
            j = (j + 1) & self.mask;
            let b = self.buckets[j];
            if b == EMPTY {
                break;
            }
            let h = self.home(b);
            let dist_j = j.wrapping_sub(h) & self.mask;
            let dist_hole = j.wrapping_sub(hole) & self.mask;
            if dist_j >= dist_hole {
                self.buckets[hole] = b;
                hole = j;
            }
        }
        self.buckets[hole] = EMPTY;
        self.len -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::IdSet;
    use std::collections::HashSet;

    #[test]
    fn matches_a_hash_set_under_random_churn() {
        for max in [1usize, 2, 3, 32, 64] {
            let mut s = IdSet::with_max(max);
            let mut model = HashSet::new();
            let mut x = 0x1234_5678_9abc_def1u64 ^ max as u64;
            for _ in 0..20_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Small id space (so duplicates and misses are common) plus the marker value.
                let id = match x % 7 {
                    0 => u64::MAX,
                    _ => (x >> 8) % (3 * max as u64 + 2),
                };
                if x & 0x10 != 0 && model.len() < max {
                    assert_eq!(s.insert(id), model.insert(id), "insert {id}");
                } else {
                    assert_eq!(s.remove(id), model.remove(&id), "remove {id}");
                }
                assert_eq!(s.len(), model.len());
            }
            for id in model.iter().copied().collect::<Vec<_>>() {
                assert!(!s.insert(id));
                assert!(s.remove(id));
            }
            assert_eq!(s.len(), 0);
        }
    }

    #[test]
    fn colliding_ids_stay_correct() {
        // Force every id into one cluster by filling the table to its bound.
        let mut s = IdSet::with_max(8);
        for id in 0..8 {
            assert!(s.insert(id * 1_000_003));
        }
        assert!(!s.insert(3 * 1_000_003));
        for id in (0..8).rev() {
            assert!(s.remove(id * 1_000_003));
            assert!(!s.remove(id * 1_000_003));
        }
        assert_eq!(s.len(), 0);
    }
}
