//! [`PageMap`]: one object's page index → node map.
//!
//! Most objects are dense (a file's pages, a swap cluster): their indices are small and mostly
//! filled. Those are a plain `Vec<u32>` indexed by page index (`NIL` = hole): 4 bytes per slot,
//! a lookup without hashing. An object whose indices are sparse (guests choose indices freely)
//! is a `HashMap`, so no guest can make the vector large for few pages:
//! * a dense map holds at most `max(DENSE_MIN, 2 × pages)` slots when it grows; an insert
//!   beyond that converts it to a hash map;
//! * a dense map that falls below 25% full (and has more than `DENSE_MIN` slots) after a
//!   removal becomes a hash map; a hash map that reaches 50% density (largest index + 1 ≤
//!   2 × pages) becomes dense again. The gap between the two thresholds makes conversions cost
//!   O(1) amortised per insert or removal.

use std::collections::HashMap;

const NIL: u32 = u32::MAX;
/// A dense map may always use this many slots (256 bytes), whatever its page count.
const DENSE_MIN: usize = 64;

#[derive(Debug)]
pub(crate) enum PageMap {
    Dense {
        slots: Vec<u32>,
        len: u32,
    },
    /// `max` is an upper bound of the largest index present (not lowered on removal).
    Sparse {
        map: HashMap<u32, u32>,
        max: u32,
    },
}

impl Default for PageMap {
    fn default() -> Self {
        PageMap::Dense {
            slots: Vec::new(),
            len: 0,
        }
    }
}

impl PageMap {
    #[inline]
    pub(crate) fn get(&self, index: u32) -> Option<u32> {
        match self {
            PageMap::Dense { slots, .. } => match slots.get(index as usize) {
                Some(&n) if n != NIL => Some(n),
                _ => None,
            },
            PageMap::Sparse { map, .. } => map.get(&index).copied(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            PageMap::Dense { len, .. } => *len as usize,
            PageMap::Sparse { map, .. } => map.len(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Map `index` to `node` (a node is never `NIL`); replaces any previous node.
    pub(crate) fn insert(&mut self, index: u32, node: u32) {
        debug_assert!(node != NIL);
        match self {
            PageMap::Dense { slots, len } => {
                let i = index as usize;
                if i < slots.len() {
                    if slots[i] == NIL {
                        *len += 1;
                    }
                    slots[i] = node;
                    return;
                }
                let want = i + 1;
                if want <= DENSE_MIN.max(2 * (*len as usize + 1)) {
                    slots.reserve_exact(want - slots.len());
                    slots.resize(want, NIL);
                    slots[i] = node;
                    *len += 1;
                    return;
                }
                self.make_sparse();
                self.insert(index, node);
            }
            PageMap::Sparse { map, max } => {
                map.insert(index, node);
                *max = (*max).max(index);
                if (*max as usize) < 2 * map.len() {
                    self.make_dense();
                }
            }
        }
    }

    /// Remove `index`; its node if it was present.
    pub(crate) fn remove(&mut self, index: u32) -> Option<u32> {
        match self {
            PageMap::Dense { slots, len } => {
                let i = index as usize;
                let n = *slots.get(i).filter(|&&n| n != NIL)?;
                slots[i] = NIL;
                *len -= 1;
                if *len == 0 {
                    *slots = Vec::new();
                } else if slots.len() > DENSE_MIN && (*len as usize) * 4 < slots.len() {
                    self.make_sparse();
                } else {
                    while slots.last() == Some(&NIL) {
                        slots.pop();
                    }
                }
                Some(n)
            }
            PageMap::Sparse { map, .. } => map.remove(&index),
        }
    }

    /// Every node, in no particular order.
    pub(crate) fn nodes(&self) -> Vec<u32> {
        match self {
            PageMap::Dense { slots, .. } => slots.iter().copied().filter(|&n| n != NIL).collect(),
            PageMap::Sparse { map, .. } => map.values().copied().collect(),
        }
    }

    /// Consume the map into an iterator over its nodes, so that a big object can be emptied a
    /// chunk at a time without rescanning what was already taken.
    pub(crate) fn into_nodes(self) -> NodeDrain {
        match self {
            PageMap::Dense { slots, .. } => NodeDrain::Dense(slots.into_iter()),
            PageMap::Sparse { map, .. } => NodeDrain::Sparse(map.into_values()),
        }
    }

    /// Heap bytes used (hash maps estimated as hashbrown lays them out).
    pub(crate) fn heap_bytes(&self) -> u64 {
        match self {
            PageMap::Dense { slots, .. } => 4 * slots.capacity() as u64,
            PageMap::Sparse { map, .. } => {
                let cap = map.capacity();
                if cap == 0 {
                    return 0;
                }
                let buckets = (cap * 8 / 7).next_power_of_two().max(4);
                (buckets * 9 + 16) as u64
            }
        }
    }

    fn make_sparse(&mut self) {
        if let PageMap::Dense { slots, .. } = self {
            let mut map = HashMap::with_capacity(slots.len() / 2);
            let mut max = 0;
            for (i, &n) in slots.iter().enumerate() {
                if n != NIL {
                    map.insert(i as u32, n);
                    max = i as u32;
                }
            }
            *self = PageMap::Sparse { map, max };
        }
    }

    fn make_dense(&mut self) {
        if let PageMap::Sparse { map, .. } = self {
            let top = map.keys().copied().max().map_or(0, |m| m as usize + 1);
            let mut slots = vec![NIL; top];
            for (&i, &n) in map.iter() {
                slots[i as usize] = n;
            }
            let len = map.len() as u32;
            *self = PageMap::Dense { slots, len };
        }
    }
}

/// The nodes of a consumed [`PageMap`], in no particular order.
#[derive(Debug)]
pub(crate) enum NodeDrain {
    Dense(std::vec::IntoIter<u32>),
    Sparse(std::collections::hash_map::IntoValues<u32, u32>),
}

impl Iterator for NodeDrain {
    type Item = u32;
    fn next(&mut self) -> Option<u32> {
        match self {
            NodeDrain::Dense(it) => it.find(|&n| n != NIL),
            NodeDrain::Sparse(it) => it.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PageMap;
    use std::collections::HashMap;

    #[test]
    fn matches_a_hash_map_and_stays_bounded() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for spread in [8u32, 64, 200, 5000, u32::MAX] {
            let mut m = PageMap::default();
            let mut model: HashMap<u32, u32> = HashMap::new();
            for step in 0..20_000u32 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let idx = ((x >> 16) as u32) % spread.max(1);
                if x & 3 != 0 {
                    m.insert(idx, step);
                    model.insert(idx, step);
                } else {
                    assert_eq!(m.remove(idx), model.remove(&idx));
                }
                assert_eq!(m.len(), model.len());
                assert_eq!(m.get(idx), model.get(&idx).copied());
                if let PageMap::Dense { slots, len } = &m {
                    // Bounded: at most max(64, 4 × pages) slots, whatever the indices.
                    assert!(
                        slots.len() <= 64usize.max(4 * *len as usize),
                        "{}",
                        slots.len()
                    );
                }
            }
            let mut a = m.nodes();
            let mut b: Vec<u32> = model.values().copied().collect();
            a.sort_unstable();
            b.sort_unstable();
            assert_eq!(a, b);
        }
    }
}
