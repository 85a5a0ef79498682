//! How page data crosses from a transport into the store and back.
//!
//! The store never sees guest memory. A transport hands it a [`PageSource`] for a put and a
//! [`PageSink`] for a get; the transport's implementation does the one copy in or out of
//! shared memory (with whatever care that memory needs), the store only supplies or receives
//! a private page buffer.

use crate::PAGE_SIZE;

/// One page of data.
pub type Page = [u8; PAGE_SIZE];

/// The data of a put: copied exactly once into a buffer the store owns.
pub trait PageSource {
    /// Copy the whole page into `dst`.
    fn read_page(&self, dst: &mut Page);
}

/// The destination of a get.
pub trait PageSink {
    /// Copy the whole of `src` out to the destination.
    fn write_page(&mut self, src: &Page);
    /// Fill the destination with zeroes (the store keeps no data for all-zero pages).
    fn write_zero_page(&mut self) {
        self.write_page(&[0u8; PAGE_SIZE]);
    }
    /// Fill the destination with one 8-byte word repeated: `word.to_le_bytes()` at every
    /// 8-byte offset (the store keeps no data for same-filled pages). A sink that can write
    /// the pattern straight into its destination should, saving a copy.
    fn write_filled_page(&mut self, word: u64) {
        if word == 0 {
            self.write_zero_page();
        } else {
            let mut p = [0u8; PAGE_SIZE];
            fill_page(&mut p, word);
            self.write_page(&p);
        }
    }
}

/// Fill `p` with `word.to_le_bytes()` repeated.
pub fn fill_page(p: &mut Page, word: u64) {
    let b = word.to_le_bytes();
    for w in p.chunks_exact_mut(8) {
        w.copy_from_slice(&b);
    }
}

impl PageSource for Page {
    fn read_page(&self, dst: &mut Page) {
        dst.copy_from_slice(self);
    }
}

impl PageSink for Page {
    fn write_page(&mut self, src: &Page) {
        self.copy_from_slice(src);
    }
    fn write_zero_page(&mut self) {
        self.fill(0);
    }
    fn write_filled_page(&mut self, word: u64) {
        fill_page(self, word);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that only has `write_page`, to check the provided methods.
    struct Plain(Page);
    impl PageSink for Plain {
        fn write_page(&mut self, src: &Page) {
            self.0.copy_from_slice(src);
        }
    }

    #[test]
    fn filled_pages_repeat_the_word_in_little_endian_order() {
        let word = 0x0807_0605_0403_0201u64;
        let mut a = [0xaau8; PAGE_SIZE];
        a.write_filled_page(word);
        let mut b = Plain([0xaa; PAGE_SIZE]);
        b.write_filled_page(word);
        for p in [&a, &b.0] {
            for (i, &x) in p.iter().enumerate() {
                assert_eq!(x, (i % 8) as u8 + 1, "byte {i}");
            }
        }
        b.write_filled_page(0);
        a.write_filled_page(0);
        assert!(a.iter().chain(b.0.iter()).all(|&x| x == 0));
    }
}
