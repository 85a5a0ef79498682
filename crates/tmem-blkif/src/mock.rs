//! A mock block frontend for backend tests and fuzzers (feature `test-utils`).
//!
//! [`MockFrontend`] writes raw request slots into real shared memory the way a guest's
//! blkfront, well-behaved or not, could: any bytes in any slot, any `req_prod`. [`pair`]
//! maps one memfd twice, so the frontend and the [`BlkBackend`] see the same pages at two
//! different addresses, as a guest and dom0 do.

use crate::abi::{
    op, RawRequest, RequestDiscard, RequestIndirect, RequestRw, RequestSegment, Response,
};
use crate::shm::{Index, RingMem};
use crate::{BlkBackend, DiskParams, RingSetupError, Segment, SharedMem, PAGE_SIZE};
use std::sync::atomic::Ordering;

mod grants;
mod memfd;
pub use grants::{BadGrant, MockGrantPages};
pub use memfd::MemfdMem;

/// A fake blkfront over shared memory that a [`BlkBackend`] also maps.
#[derive(Debug)]
pub struct MockFrontend<M: SharedMem> {
    ring: RingMem<M>,
    req_prod_pvt: u32,
    rsp_cons: u32,
}

/// A backend and a mock frontend on two mappings of one fresh memfd of `ring_pages` pages.
pub fn pair(
    ring_pages: u32,
    disk: DiskParams,
) -> Result<(BlkBackend<MemfdMem>, MockFrontend<MemfdMem>), RingSetupError> {
    let bytes = ring_pages.max(1) as usize * PAGE_SIZE;
    let front_mem = MemfdMem::create(bytes).expect("memfd for the mock frontend");
    let back_mem = front_mem.map_again().expect("second mapping of the memfd");
    let front = MockFrontend::new(front_mem, ring_pages)?;
    let back = BlkBackend::new(back_mem, ring_pages, disk)?;
    Ok((back, front))
}

impl<M: SharedMem> MockFrontend<M> {
    /// Initialise the ring header as blkfront does (`SHARED_RING_INIT`: indices 0, events 1)
    /// and zero the slots.
    pub fn new(mem: M, ring_pages: u32) -> Result<Self, RingSetupError> {
        let ring = RingMem::new(mem, ring_pages)?;
        for i in 0..ring.entries() {
            ring.write_request(i, &RawRequest([0; crate::abi::ENTRY_SIZE]));
        }
        ring.index(Index::ReqProd).store(0, Ordering::SeqCst);
        ring.index(Index::RspProd).store(0, Ordering::SeqCst);
        ring.index(Index::ReqEvent).store(1, Ordering::SeqCst);
        ring.index(Index::RspEvent).store(1, Ordering::SeqCst);
        Ok(MockFrontend {
            ring,
            req_prod_pvt: 0,
            rsp_cons: 0,
        })
    }

    pub fn entries(&self) -> u32 {
        self.ring.entries()
    }

    /// Write raw slot bytes at the private producer index and advance it (not yet
    /// published).
    pub fn push_raw(&mut self, raw: &RawRequest) {
        self.ring.write_request(self.req_prod_pvt, raw);
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
    }

    /// Write raw bytes into the slot of ring index `index` without moving any index.
    pub fn write_slot(&self, index: u32, raw: &RawRequest) {
        self.ring.write_request(index, raw);
    }

    /// Queue a READ or WRITE (`operation`) of `segs` starting at `sector`.
    pub fn push_rw(&mut self, operation: u8, id: u64, sector: u64, segs: &[Segment]) {
        self.push_raw(&rw_request(operation, id, sector, segs));
    }

    /// Queue a FLUSH_DISKCACHE without data.
    pub fn push_flush(&mut self, id: u64) {
        self.push_rw(op::FLUSH_DISKCACHE, id, 0, &[]);
    }

    /// Queue a DISCARD.
    pub fn push_discard(&mut self, id: u64, sector: u64, nr_sectors: u64, flag: u8) {
        self.push_raw(
            &RequestDiscard {
                operation: op::DISCARD,
                flag,
                handle: 0,
                id,
                sector_number: sector,
                nr_sectors,
            }
            .to_raw(),
        );
    }

    /// Queue an INDIRECT request (which the backend refuses).
    pub fn push_indirect(&mut self, id: u64, indirect_op: u8, nr_segments: u16) {
        self.push_raw(
            &RequestIndirect {
                operation: op::INDIRECT,
                indirect_op,
                nr_segments,
                id,
                ..Default::default()
            }
            .to_raw(),
        );
    }

    /// Publish the private producer index (`RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`). True if
    /// the backend's `req_event` asks for a kick.
    pub fn publish(&mut self) -> bool {
        let old = self.req_prod();
        let new = self.req_prod_pvt;
        self.ring
            .index(Index::ReqProd)
            .store(new, Ordering::Release);
        std::sync::atomic::fence(Ordering::SeqCst);
        let event = self.ring.index(Index::ReqEvent).load(Ordering::Relaxed);
        new.wrapping_sub(event) < new.wrapping_sub(old)
    }

    /// Start both producer indices at `index` instead of 0 (with a backend that does the
    /// same), to exercise wrap-around of the free-running indices.
    pub fn start_at(&mut self, index: u32) {
        self.req_prod_pvt = index;
        self.rsp_cons = index;
        self.ring
            .index(Index::ReqProd)
            .store(index, Ordering::SeqCst);
        self.ring
            .index(Index::RspProd)
            .store(index, Ordering::SeqCst);
        self.ring
            .index(Index::ReqEvent)
            .store(index.wrapping_add(1), Ordering::SeqCst);
        self.ring
            .index(Index::RspEvent)
            .store(index.wrapping_add(1), Ordering::SeqCst);
    }

    /// Scribble on the indices only the backend should write (`rsp_prod`, `req_event`).
    pub fn scribble_backend_indices(&self, rsp_prod: u32, req_event: u32) {
        self.ring
            .index(Index::RspProd)
            .store(rsp_prod, Ordering::SeqCst);
        self.ring
            .index(Index::ReqEvent)
            .store(req_event, Ordering::SeqCst);
    }

    /// Set `req_prod` to anything (far ahead, backwards...).
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
        self.ring.index(Index::RspProd).load(Ordering::Acquire)
    }
    pub fn set_rsp_event(&self, v: u32) {
        self.ring.index(Index::RspEvent).store(v, Ordering::SeqCst);
    }

    /// The response in the slot of ring index `index`.
    pub fn response(&self, index: u32) -> Response {
        Response::from_bytes(&self.ring.read_response(index))
    }

    /// Take every response published since the last call (at most a ring's worth).
    pub fn take_responses(&mut self) -> Vec<Response> {
        let to = self.rsp_prod();
        let n = to.wrapping_sub(self.rsp_cons).min(self.entries());
        let out = (0..n)
            .map(|k| self.response(self.rsp_cons.wrapping_add(k)))
            .collect();
        self.rsp_cons = self.rsp_cons.wrapping_add(n);
        out
    }
}

/// The slot bytes of a READ/WRITE/FLUSH request with these segments (at most 11 are used).
pub fn rw_request(operation: u8, id: u64, sector: u64, segs: &[Segment]) -> RawRequest {
    let mut req = RequestRw {
        operation,
        nr_segments: segs.len().min(u8::MAX as usize) as u8,
        handle: 0,
        id,
        sector_number: sector,
        ..Default::default()
    };
    for (dst, s) in req.seg.iter_mut().zip(segs) {
        *dst = RequestSegment {
            gref: s.gref,
            first_sect: s.first_sect,
            last_sect: s.last_sect,
        };
    }
    req.to_raw()
}

/// A whole-page segment of grant `gref`.
pub fn full_page(gref: u32) -> Segment {
    Segment {
        gref,
        first_sect: 0,
        last_sect: 7,
    }
}
