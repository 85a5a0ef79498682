//! [`HeapMem`]: page-aligned private heap memory that implements [`SharedMem`].

use crate::{SharedMem, PAGE_SIZE};
use std::alloc::{alloc_zeroed, dealloc, handle_alloc_error, Layout as AllocLayout};

/// Zeroed, page-aligned heap memory implementing [`SharedMem`], for tests, benches and
/// in-process use (two threads share it through an `Arc<HeapMem>`).
#[derive(Debug)]
pub struct HeapMem {
    ptr: *mut u8,
    layout: AllocLayout,
}

// SAFETY: HeapMem owns its allocation; the bytes are only accessed through raw pointers by
// users that follow the SharedMem contract (atomics/volatile), so sharing it is sound.
unsafe impl Send for HeapMem {}
// SAFETY: as above; no `&` into the bytes is ever handed out.
unsafe impl Sync for HeapMem {}

impl HeapMem {
    /// At least `bytes` bytes (rounded up to whole pages, minimum one page), zeroed.
    ///
    /// # Panics
    /// If `bytes` rounded up to a page overflows `isize` (a caller bug, not a peer's).
    pub fn new(bytes: usize) -> Self {
        let pages = bytes.div_ceil(PAGE_SIZE).max(1);
        let size = pages
            .checked_mul(PAGE_SIZE)
            .expect("HeapMem size overflows");
        let layout = AllocLayout::from_size_align(size, PAGE_SIZE).expect("HeapMem layout");
        // SAFETY: `layout` has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            handle_alloc_error(layout);
        }
        HeapMem { ptr, layout }
    }
}

impl Drop for HeapMem {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `alloc_zeroed(self.layout)` and is freed only here.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

// SAFETY: the allocation is `layout.size()` bytes, page aligned, and lives until Drop.
unsafe impl SharedMem for HeapMem {
    fn base(&self) -> *mut u8 {
        self.ptr
    }
    fn len(&self) -> usize {
        self.layout.size()
    }
}
