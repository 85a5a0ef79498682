//! Both ends of the tmem shared ring (Xen `io/ring.h` layout) over a shared-memory trait.
//!
//! [`BackendRing`] is the daemon's end: it reads the guest's producer index once per batch,
//! refuses a ring whose index has run past what the guest may produce, copies each request
//! out of shared memory exactly once and hands the copy to [`tmem_abi::parse_request`].
//! [`FrontendRing`] is the guest's end, which likewise does not trust the backend's index.
//!
//! This crate must never form a Rust reference (`&`/`&mut`) to bytes the peer can write,
//! never trust a value read from shared memory, and never panic or block because of what
//! the peer did. Header indices are accessed as atomics in place; entries and data slots are
//! copied with volatile or `copy_nonoverlapping` accesses into private buffers.

use std::sync::atomic::{AtomicU32, Ordering};

pub mod backend;
pub mod frontend;
mod idset;
mod mem;
#[cfg(any(test, feature = "test-utils"))]
pub mod mock;
pub mod poll;

pub use backend::{BackendRing, Incoming, Resumed, SlotSink, SlotSource};
pub use frontend::FrontendRing;
pub use mem::HeapMem;
pub use poll::{AdaptiveSpin, Crowding, PollPolicy, WaitOutcome, Waitable};

/// Size of one page of the shared area (ring pages and data slots).
pub const PAGE_SIZE: usize = tmem_abi::PAGE_SIZE;

/// Memory shared with the peer: a memfd mapping locally, a grant mapping on Xen.
///
/// # Safety
/// An implementor guarantees that `base()..base() + len()` is valid for reads and writes for
/// as long as the object lives, that `base()` is page aligned (4096), and that both values
/// never change. The peer may write the memory concurrently at any time, so users only access
/// it through raw pointers, volatile copies and atomics, never through references.
pub unsafe trait SharedMem: Send + Sync {
    fn base(&self) -> *mut u8;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// SAFETY: the Arc keeps the inner object (and with it the mapping) alive; base/len forward to
// an implementor that upholds the contract.
unsafe impl<M: SharedMem> SharedMem for std::sync::Arc<M> {
    fn base(&self) -> *mut u8 {
        (**self).base()
    }
    fn len(&self) -> usize {
        (**self).len()
    }
}

/// How a shared area is divided: `ring_pages` pages of ring (header + entries), then
/// `data_slots` page-sized data slots. Slot `i` starts at byte `(ring_pages + i) * 4096`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Layout {
    pub ring_pages: u32,
    pub data_slots: u32,
}

impl Layout {
    /// Bytes the layout needs (ring pages plus data slots).
    pub fn total_bytes(&self) -> usize {
        // u32 + u32 pages of 4 KiB is below 2^45: cannot overflow a 64-bit usize.
        self.checked_total_bytes().unwrap_or(usize::MAX)
    }

    /// [`Layout::total_bytes`] with overflow reported as `None` (only possible on 32-bit hosts).
    pub fn checked_total_bytes(&self) -> Option<usize> {
        let pages = (self.ring_pages as usize).checked_add(self.data_slots as usize)?;
        pages.checked_mul(PAGE_SIZE)
    }

    /// Bytes of the ring part.
    pub fn ring_bytes(&self) -> Option<usize> {
        (self.ring_pages as usize).checked_mul(PAGE_SIZE)
    }

    /// Entries in the ring (a power of two), or 0 if the ring part is too small for one.
    pub fn ring_entries(&self) -> u32 {
        self.ring_bytes()
            .and_then(tmem_abi::ring::ring_entries)
            .unwrap_or(0)
    }

    /// Byte offset of data slot `slot`, if the slot exists.
    pub fn slot_offset(&self, slot: u32) -> Option<usize> {
        if slot >= self.data_slots {
            return None;
        }
        (self.ring_pages as usize)
            .checked_add(slot as usize)?
            .checked_mul(PAGE_SIZE)
    }
}

/// A ring-level failure. Errors from [`BackendRing::next_batch`] are protocol violations by the
/// guest: the daemon answers them by disconnecting that guest (and only that guest).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error("ring layout {0:?} is invalid: {1}")]
    BadLayout(Layout, &'static str),
    #[error("shared memory of {have} bytes is too small for the layout ({need} bytes)")]
    TooSmall { have: usize, need: usize },
    #[error("shared memory base {0:#x} is not page aligned")]
    Misaligned(usize),
    #[error(
        "producer index overflow: req_prod {req_prod} is {ahead} entries ahead of the responses \
         (ring of {size})"
    )]
    Overflow {
        req_prod: u32,
        ahead: u32,
        size: u32,
    },
    #[error("request id {0:#x} is already in flight")]
    DuplicateId(u64),
    #[error("no request with id {0:#x} is in flight")]
    NotInFlight(u64),
    #[error("ring is full")]
    Full,
    #[error("backend response index {rsp_prod} is beyond the {produced} requests produced")]
    BadResponseIndex { rsp_prod: u32, produced: u32 },
}

/// Write a fresh ring header into `mem` as a frontend must before the backend attaches:
/// header and entries zeroed, both event thresholds 1 (notify on the first request and on the
/// first response). Data slots are left alone.
pub fn init_shared_ring<M: SharedMem>(mem: &M, layout: Layout) -> Result<(), RingError> {
    // Validate the geometry with a borrowed view.
    let ring = RingMem::new(mem, layout)?;
    let ring_bytes = layout.ring_bytes().unwrap_or(0);
    // SAFETY: `RingMem::new` checked the area holds `ring_pages` pages (`ring_bytes`); the
    // bytes are written through a raw pointer, never referenced.
    unsafe { std::ptr::write_bytes(mem.base(), 0, ring_bytes) };
    ring.index(Index::ReqProd).store(0, Ordering::Relaxed);
    ring.index(Index::RspProd).store(0, Ordering::Relaxed);
    ring.index(Index::ReqEvent).store(1, Ordering::Relaxed);
    ring.index(Index::RspEvent).store(1, Ordering::Release);
    Ok(())
}

// SAFETY: forwards to the referenced implementor, which outlives the reference.
unsafe impl<M: SharedMem> SharedMem for &M {
    fn base(&self) -> *mut u8 {
        (**self).base()
    }
    fn len(&self) -> usize {
        (**self).len()
    }
}

/// The ring and data area of one connection, with validated geometry. Private: all access
/// to shared bytes goes through here.
#[derive(Debug)]
pub(crate) struct RingMem<M: SharedMem> {
    mem: M,
    layout: Layout,
    entries: u32,
}

/// The header index fields, by byte offset.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Index {
    ReqProd,
    ReqEvent,
    RspProd,
    RspEvent,
}

impl<M: SharedMem> RingMem<M> {
    pub(crate) fn new(mem: M, layout: Layout) -> Result<Self, RingError> {
        if layout.ring_pages == 0 {
            return Err(RingError::BadLayout(layout, "no ring pages"));
        }
        let entries = layout.ring_entries();
        if entries == 0 {
            return Err(RingError::BadLayout(layout, "ring too large"));
        }
        let need = layout
            .checked_total_bytes()
            .ok_or(RingError::BadLayout(layout, "size overflows"))?;
        let have = mem.len();
        if have < need {
            return Err(RingError::TooSmall { have, need });
        }
        let base = mem.base() as usize;
        if base == 0 || base & (PAGE_SIZE - 1) != 0 {
            return Err(RingError::Misaligned(base));
        }
        Ok(RingMem {
            mem,
            layout,
            entries,
        })
    }

    pub(crate) fn layout(&self) -> Layout {
        self.layout
    }

    pub(crate) fn entries(&self) -> u32 {
        self.entries
    }

    pub(crate) fn mem(&self) -> &M {
        &self.mem
    }

    /// One header index, as an atomic in place.
    pub(crate) fn index(&self, which: Index) -> &AtomicU32 {
        use tmem_abi::ring::offsets::*;
        let off = match which {
            Index::ReqProd => REQ_PROD,
            Index::ReqEvent => REQ_EVENT,
            Index::RspProd => RSP_PROD,
            Index::RspEvent => RSP_EVENT,
        };
        let p = self.mem.base().wrapping_add(off).cast::<u32>();
        // SAFETY: `new` checked that the area holds at least one page, is page aligned and
        // stays mapped while `self` lives; `off` is one of 0/4/8/12, so the u32 is in bounds
        // and 4-byte aligned. Every access to these four words, ours and the peer's, is
        // atomic (the peer is expected to use atomics; a torn write only gives a bad value,
        // which callers validate).
        unsafe { AtomicU32::from_ptr(p) }
    }

    /// Pointer to the entry slot of free-running ring index `i`.
    fn entry_ptr(&self, i: u32) -> *mut u8 {
        let slot = (i & (self.entries - 1)) as usize;
        let off = tmem_abi::HEADER_SIZE + slot * tmem_abi::ENTRY_SIZE;
        debug_assert!(off + tmem_abi::ENTRY_SIZE <= self.layout.ring_pages as usize * PAGE_SIZE);
        // SAFETY: `slot < entries` and `ring_entries` only counts slots that fit in the ring
        // pages after the header, so `off + 64` is inside the validated area.
        unsafe { self.mem.base().add(off) }
    }

    /// Copy the first `N` bytes of the entry at ring index `i` out of shared memory (once),
    /// as `N / 8` volatile 8-byte loads (a volatile `[u8; 64]` load compiles to 64 one-byte
    /// loads and stores).
    pub(crate) fn read_entry<const N: usize>(&self, i: u32) -> [u8; N] {
        const { assert!(N <= tmem_abi::ENTRY_SIZE && N.is_multiple_of(8)) };
        let p = self.entry_ptr(i).cast::<u64>();
        let mut out = [0u8; N];
        for (k, chunk) in out.chunks_exact_mut(8).enumerate() {
            // SAFETY: `p` is the start of 64 in-bounds bytes (entry_ptr), 8-byte aligned
            // (page-aligned base, 64-byte header and entries); `k < N / 8 <= 8`. u64 has no
            // invalid bit patterns; the volatile read copies whatever the peer left there.
            let w = unsafe { p.wrapping_add(k).read_volatile() };
            chunk.copy_from_slice(&w.to_ne_bytes());
        }
        out
    }

    /// The first `N` little-endian 8-byte words of the entry at ring index `i`, copied out of
    /// shared memory once with volatile loads.
    pub(crate) fn read_words<const N: usize>(&self, i: u32) -> [u64; N] {
        const { assert!(N * 8 <= tmem_abi::ENTRY_SIZE) };
        let p = self.entry_ptr(i).cast::<u64>();
        let mut out = [0u64; N];
        for (k, w) in out.iter_mut().enumerate() {
            // SAFETY: as in read_entry: `k < N <= 8`, in bounds and 8-byte aligned.
            *w = u64::from_le(unsafe { p.wrapping_add(k).read_volatile() });
        }
        out
    }

    /// Write `N` bytes at the start of the entry at ring index `i`, as `N / 8` volatile
    /// 8-byte stores.
    pub(crate) fn write_entry<const N: usize>(&self, i: u32, bytes: &[u8; N]) {
        const { assert!(N <= tmem_abi::ENTRY_SIZE && N.is_multiple_of(8)) };
        let p = self.entry_ptr(i).cast::<u64>();
        for (k, chunk) in bytes.chunks_exact(8).enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            // SAFETY: as in read_entry: `k < N / 8`, in bounds and 8-byte aligned.
            unsafe { p.wrapping_add(k).write_volatile(u64::from_ne_bytes(w)) }
        }
    }

    /// Write the little-endian 8-byte word `k` of the entry at ring index `i` (one volatile
    /// store).
    pub(crate) fn write_word(&self, i: u32, k: usize, w: u64) {
        assert!(k < tmem_abi::ENTRY_SIZE / 8);
        let p = self.entry_ptr(i).cast::<u64>();
        // SAFETY: as in read_entry: `k < 8`, in bounds and 8-byte aligned.
        unsafe { p.wrapping_add(k).write_volatile(w.to_le()) }
    }

    /// Pointer to data slot `slot`, if it is inside the data area.
    pub(crate) fn slot_ptr(&self, slot: u32) -> Option<*mut u8> {
        let off = self.layout.slot_offset(slot)?;
        // SAFETY: `slot < data_slots`, so `off + 4096 <= total_bytes <= len` (checked in new).
        Some(unsafe { self.mem.base().add(off) })
    }

    /// Copy data slot `slot` into `dst`. False (and `dst` untouched) if there is no such slot.
    pub(crate) fn copy_from_slot(&self, slot: u32, dst: &mut tmem_abi::Page) -> bool {
        let Some(src) = self.slot_ptr(slot) else {
            return false;
        };
        // SAFETY: `src` is 4096 in-bounds bytes of shared memory, `dst` a private page that
        // cannot overlap it. The peer may write the source meanwhile; we copy bytes, and the
        // result is only ever treated as opaque data.
        unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), PAGE_SIZE) };
        true
    }

    /// Copy `src` into data slot `slot`. False if there is no such slot.
    pub(crate) fn copy_to_slot(&self, slot: u32, src: &tmem_abi::Page) -> bool {
        let Some(dst) = self.slot_ptr(slot) else {
            return false;
        };
        // SAFETY: `dst` is 4096 in-bounds bytes of shared memory, `src` private memory.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, PAGE_SIZE) };
        true
    }

    /// Zero data slot `slot`. False if there is no such slot.
    pub(crate) fn zero_slot(&self, slot: u32) -> bool {
        let Some(dst) = self.slot_ptr(slot) else {
            return false;
        };
        // SAFETY: `dst` is 4096 in-bounds bytes of shared memory.
        unsafe { std::ptr::write_bytes(dst, 0, PAGE_SIZE) };
        true
    }
}

#[cfg(test)]
mod tests;
