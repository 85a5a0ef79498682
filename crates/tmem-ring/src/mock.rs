//! A mock guest for backend tests and fuzzers (feature `test-utils`).
//!
//! [`MockGuest`] writes raw bytes into real shared memory the way a guest, well-behaved or
//! not, could: any request bytes in any slot, any `req_prod` (including an overflowing one),
//! and it never has to read a response.

use crate::{BackendRing, HeapMem, Index, Layout, RingError, RingMem, SharedMem};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tmem_abi::{Page, RequestEntry, ResponseEntry, ENTRY_SIZE};

/// A fake guest over shared memory that a [`BackendRing`] also maps.
#[derive(Debug)]
pub struct MockGuest<M: SharedMem> {
    ring: RingMem<M>,
    req_prod_pvt: u32,
}

/// A backend ring and a mock guest over the same heap area.
pub type MockPair = (BackendRing<Arc<HeapMem>>, MockGuest<Arc<HeapMem>>);

/// A backend ring and a mock guest sharing one fresh heap area.
pub fn pair(layout: Layout) -> Result<MockPair, RingError> {
    let mem = Arc::new(HeapMem::new(layout.total_bytes()));
    let guest = MockGuest::new(Arc::clone(&mem), layout)?;
    let backend = BackendRing::new(mem, layout)?;
    Ok((backend, guest))
}

impl<M: SharedMem> MockGuest<M> {
    /// Initialise the header as a frontend would (indices 0, events 1).
    pub fn new(mem: M, layout: Layout) -> Result<Self, RingError> {
        let ring = RingMem::new(mem, layout)?;
        ring.index(Index::ReqProd).store(0, Ordering::SeqCst);
        ring.index(Index::RspProd).store(0, Ordering::SeqCst);
        ring.index(Index::ReqEvent).store(1, Ordering::SeqCst);
        ring.index(Index::RspEvent).store(1, Ordering::SeqCst);
        Ok(MockGuest {
            ring,
            req_prod_pvt: 0,
        })
    }

    pub fn entries(&self) -> u32 {
        self.ring.entries()
    }

    /// Write 64 raw bytes into the slot of ring index `index`.
    pub fn write_entry_bytes(&self, index: u32, bytes: &[u8; ENTRY_SIZE]) {
        self.ring.write_entry(index, bytes);
    }

    /// Write a request at the private producer index and advance it (not yet published).
    pub fn push(&mut self, req: &RequestEntry) {
        self.push_bytes(&req.to_bytes());
    }

    /// Write raw request bytes at the private producer index and advance it.
    pub fn push_bytes(&mut self, bytes: &[u8; ENTRY_SIZE]) {
        self.ring.write_entry(self.req_prod_pvt, bytes);
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
    }

    /// Publish the private producer index. True if the `req_event` rule asks for a kick.
    pub fn publish(&mut self) -> bool {
        let old = self.req_prod();
        let new = self.req_prod_pvt;
        self.ring.index(Index::ReqProd).store(new, Ordering::SeqCst);
        let event = self.req_event();
        new != old && new.wrapping_sub(event) < new.wrapping_sub(old)
    }

    /// Set `req_prod` to anything (e.g. far ahead, or backwards).
    pub fn set_req_prod(&mut self, v: u32) {
        self.req_prod_pvt = v;
        self.ring.index(Index::ReqProd).store(v, Ordering::SeqCst);
    }

    pub fn req_prod(&self) -> u32 {
        self.ring.index(Index::ReqProd).load(Ordering::SeqCst)
    }
    pub fn req_event(&self) -> u32 {
        self.ring.index(Index::ReqEvent).load(Ordering::SeqCst)
    }
    pub fn rsp_prod(&self) -> u32 {
        self.ring.index(Index::RspProd).load(Ordering::SeqCst)
    }
    pub fn set_rsp_event(&self, v: u32) {
        self.ring.index(Index::RspEvent).store(v, Ordering::SeqCst);
    }
    /// Scribble on `req_event` or `rsp_prod` too (fields the guest should not write).
    pub fn set_req_event(&self, v: u32) {
        self.ring.index(Index::ReqEvent).store(v, Ordering::SeqCst);
    }

    /// The response in the slot of ring index `index`.
    pub fn response(&self, index: u32) -> ResponseEntry {
        ResponseEntry::from_bytes(&self.ring.read_entry::<16>(index))
    }

    /// All responses published so far with index in `from..rsp_prod`.
    pub fn responses_from(&self, from: u32) -> Vec<ResponseEntry> {
        let to = self.rsp_prod();
        let n = to.wrapping_sub(from).min(self.entries());
        (0..n)
            .map(|k| self.response(from.wrapping_add(k)))
            .collect()
    }

    /// Fill data slot `slot`. Panics if out of range (test helper).
    pub fn write_slot(&self, slot: u32, page: &Page) {
        assert!(self.ring.copy_to_slot(slot, page), "slot out of range");
    }
    /// Read data slot `slot`. Panics if out of range (test helper).
    pub fn read_slot(&self, slot: u32, page: &mut Page) {
        assert!(self.ring.copy_from_slot(slot, page), "slot out of range");
    }

    /// A copy of every byte of the shared area (e.g. to check nothing outside the ring moved).
    pub fn snapshot(&self) -> Vec<u8> {
        let len = self.ring.mem().len();
        let mut v = vec![0u8; len];
        // SAFETY: base..base+len is valid for reads (SharedMem contract); `v` is private.
        unsafe { std::ptr::copy_nonoverlapping(self.ring.mem().base(), v.as_mut_ptr(), len) };
        v
    }
}
