//! The only code that touches the shared ring pages: index words as atomics in place, slots
//! copied in and out with volatile 8-byte accesses. No reference to shared bytes is formed.
#![allow(unsafe_code)]

use crate::abi::{
    ring_entries, RawRequest, ENTRY_SIZE, PAGE_SIZE, RESPONSE_SIZE, RING_HEADER_SIZE,
};
use crate::RingSetupError;
use std::sync::atomic::AtomicU32;
use tmem_ring::SharedMem;

/// Largest ring the backend accepts, in pages (`max-ring-page-order` 4, as Linux's blkback).
pub const MAX_RING_PAGES: u32 = 16;

/// The header index fields.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Index {
    ReqProd,
    ReqEvent,
    RspProd,
    RspEvent,
}

/// A blkif ring in shared memory with checked geometry.
#[derive(Debug)]
pub(crate) struct RingMem<M: SharedMem> {
    mem: M,
    entries: u32,
}

impl<M: SharedMem> RingMem<M> {
    /// `pages` ring pages (a power of two, 1..=16) at the start of `mem`.
    pub(crate) fn new(mem: M, pages: u32) -> Result<Self, RingSetupError> {
        if !pages.is_power_of_two() || pages > MAX_RING_PAGES {
            return Err(RingSetupError::BadPageCount(pages));
        }
        let need = pages as usize * PAGE_SIZE;
        if mem.len() < need {
            return Err(RingSetupError::TooSmall {
                have: mem.len(),
                need,
            });
        }
        let base = mem.base() as usize;
        if base == 0 || !base.is_multiple_of(PAGE_SIZE) {
            return Err(RingSetupError::Misaligned(base));
        }
        Ok(RingMem {
            mem,
            entries: ring_entries(need),
        })
    }

    pub(crate) fn entries(&self) -> u32 {
        self.entries
    }

    pub(crate) fn mem(&self) -> &M {
        &self.mem
    }

    /// One header index, as an atomic in place.
    pub(crate) fn index(&self, which: Index) -> &AtomicU32 {
        use crate::abi::ring_offsets::*;
        let off = match which {
            Index::ReqProd => REQ_PROD,
            Index::ReqEvent => REQ_EVENT,
            Index::RspProd => RSP_PROD,
            Index::RspEvent => RSP_EVENT,
        };
        let p = self.mem.base().wrapping_add(off).cast::<u32>();
        // SAFETY: `new` checked the area is at least one page, page aligned and mapped while
        // `self` lives; `off` is 0/4/8/12, so the u32 is in bounds and aligned. Both sides
        // access these words atomically; a value the guest wrote is validated by the caller.
        unsafe { AtomicU32::from_ptr(p) }
    }

    /// First byte of the slot of free-running ring index `i`, as a `u64` pointer.
    fn slot(&self, i: u32) -> *mut u64 {
        let slot = (i & (self.entries - 1)) as usize;
        let off = RING_HEADER_SIZE + slot * ENTRY_SIZE;
        // The entry count only counts whole slots after the header inside the ring pages.
        debug_assert!(off + ENTRY_SIZE <= self.mem.len());
        self.mem.base().wrapping_add(off).cast::<u64>()
    }

    /// Copy the request slot of ring index `i` out of shared memory, once.
    pub(crate) fn read_request(&self, i: u32) -> RawRequest {
        let p = self.slot(i);
        let mut words = [0u64; ENTRY_SIZE / 8];
        for (k, w) in words.iter_mut().enumerate() {
            // SAFETY: the slot's 112 bytes are inside the checked ring area (`slot`), and
            // 8-byte aligned (page-aligned base, 64-byte header, 112-byte slots); k < 14.
            // Any bit pattern is a valid u64; the peer may be writing it concurrently.
            *w = u64::from_le(unsafe { p.wrapping_add(k).read_volatile() });
        }
        RawRequest::from_words(&words)
    }

    /// Write a whole request slot (the mock frontend's side).
    #[cfg(any(test, feature = "test-utils"))]
    pub(crate) fn write_request(&self, i: u32, raw: &RawRequest) {
        self.write_words(i, &raw.0);
    }

    /// Write a response into the slot of ring index `i` (its first 16 bytes only).
    pub(crate) fn write_response(&self, i: u32, bytes: &[u8; RESPONSE_SIZE]) {
        self.write_words(i, bytes);
    }

    /// Read the response in the slot of ring index `i` (the mock frontend's side).
    #[cfg(any(test, feature = "test-utils"))]
    pub(crate) fn read_response(&self, i: u32) -> [u8; RESPONSE_SIZE] {
        let p = self.slot(i);
        let mut out = [0u8; RESPONSE_SIZE];
        for (k, chunk) in out.chunks_exact_mut(8).enumerate() {
            // SAFETY: as in read_request; k < 2.
            let w = unsafe { p.wrapping_add(k).read_volatile() };
            chunk.copy_from_slice(&w.to_ne_bytes());
        }
        out
    }

    fn write_words(&self, i: u32, bytes: &[u8]) {
        debug_assert!(bytes.len() <= ENTRY_SIZE && bytes.len().is_multiple_of(8));
        let p = self.slot(i);
        for (k, chunk) in bytes.chunks_exact(8).enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            // SAFETY: as in read_request; k < bytes.len() / 8 <= 14.
            unsafe { p.wrapping_add(k).write_volatile(u64::from_ne_bytes(w)) }
        }
    }
}
