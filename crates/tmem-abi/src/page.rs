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
}
