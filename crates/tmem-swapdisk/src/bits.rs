//! A fixed-size bit set over disk pages, with a count of set bits.

use std::ops::Range;

#[derive(Debug, Clone)]
pub(crate) struct Bits {
    words: Vec<u64>,
    len: u64,
    ones: u64,
}

impl Bits {
    pub(crate) fn new(len: u64) -> Bits {
        Bits {
            words: vec![0; len.div_ceil(64) as usize],
            len,
            ones: 0,
        }
    }

    pub(crate) fn ones(&self) -> u64 {
        self.ones
    }

    pub(crate) fn get(&self, i: u64) -> bool {
        i < self.len && self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    pub(crate) fn set(&mut self, i: u64) {
        if i < self.len {
            let w = &mut self.words[(i / 64) as usize];
            let m = 1 << (i % 64);
            if *w & m == 0 {
                *w |= m;
                self.ones += 1;
            }
        }
    }

    pub(crate) fn clear(&mut self, i: u64) {
        if i < self.len {
            let w = &mut self.words[(i / 64) as usize];
            let m = 1 << (i % 64);
            if *w & m != 0 {
                *w &= !m;
                self.ones -= 1;
            }
        }
    }

    pub(crate) fn set_range(&mut self, r: Range<u64>) {
        for i in r.start..r.end.min(self.len) {
            self.set(i);
        }
    }

    pub(crate) fn set_all(&mut self) {
        self.set_range(0..self.len);
    }

    pub(crate) fn clear_all(&mut self) {
        self.words.fill(0);
        self.ones = 0;
    }

    pub(crate) fn clear_range(&mut self, r: Range<u64>) {
        let mut i = r.start;
        while let Some(j) = self.next_one(i, r.end) {
            self.clear(j);
            i = j + 1;
        }
    }

    /// The first set bit in `from..end`, skipping clear words 64 at a time.
    pub(crate) fn next_one(&self, from: u64, end: u64) -> Option<u64> {
        let end = end.min(self.len);
        let mut i = from;
        while i < end {
            let w = self.words[(i / 64) as usize] >> (i % 64);
            if w == 0 {
                i = (i / 64 + 1) * 64;
                continue;
            }
            let j = i + u64::from(w.trailing_zeros());
            return (j < end).then_some(j);
        }
        None
    }

    pub(crate) fn any_in(&self, r: Range<u64>) -> bool {
        self.next_one(r.start, r.end).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_clear_count_and_scan() {
        let mut b = Bits::new(200);
        for i in [0, 5, 63, 64, 130, 199, 200, 1000] {
            b.set(i);
        }
        assert_eq!(b.ones(), 6);
        assert!(b.get(63) && b.get(64) && !b.get(62) && !b.get(200));
        assert_eq!(b.next_one(6, 200), Some(63));
        assert_eq!(b.next_one(65, 130), None);
        assert_eq!(b.next_one(65, 131), Some(130));
        assert!(!b.any_in(131..199));
        b.clear_range(60..131);
        assert_eq!(b.ones(), 3);
        b.set_all();
        assert_eq!(b.ones(), 200);
        b.clear_all();
        assert_eq!((b.ones(), b.next_one(0, 200)), (0, None));
    }
}
