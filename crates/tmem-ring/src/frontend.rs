//! The frontend (guest) end of the ring: produces requests, consumes responses.

use crate::{Index, Layout, RingError, RingMem, SharedMem, PAGE_SIZE};
use std::sync::atomic::{fence, Ordering};
use tmem_abi::{Page, RequestEntry, ResponseEntry};

/// The guest's end of the ring. It owns `req_prod` and `rsp_event`, and checks the backend's
/// `rsp_prod` before believing it.
#[derive(Debug)]
pub struct FrontendRing<M: SharedMem> {
    ring: RingMem<M>,
    req_prod_pvt: u32,
    req_published: u32,
    rsp_cons: u32,
    /// The last `rsp_prod` read and validated: responses up to it are consumed without
    /// touching the shared header again (one acquire load per batch, not per response).
    rsp_prod_seen: u32,
    broken: Option<RingError>,
}

impl<M: SharedMem> FrontendRing<M> {
    /// Take `mem` as a fresh ring: zero the header and the entries, set both event
    /// thresholds to 1 (notify on the first request / response).
    pub fn init(mem: M, layout: Layout) -> Result<Self, RingError> {
        crate::init_shared_ring(&mem, layout)?;
        let ring = RingMem::new(mem, layout)?;
        Ok(FrontendRing {
            ring,
            req_prod_pvt: 0,
            req_published: 0,
            rsp_cons: 0,
            rsp_prod_seen: 0,
            broken: None,
        })
    }

    pub fn layout(&self) -> Layout {
        self.ring.layout()
    }

    /// Number of ring entries.
    pub fn entries(&self) -> u32 {
        self.ring.entries()
    }

    /// The shared memory.
    pub fn mem(&self) -> &M {
        self.ring.mem()
    }

    /// Why the backend is considered broken (it published an impossible `rsp_prod`).
    pub fn broken(&self) -> Option<&RingError> {
        self.broken.as_ref()
    }

    /// Free request slots: entries minus requests pushed and not yet answered.
    pub fn space(&self) -> u32 {
        let used = self.req_prod_pvt.wrapping_sub(self.rsp_cons);
        self.ring.entries().saturating_sub(used)
    }

    /// Requests pushed whose responses have not been consumed.
    pub fn outstanding(&self) -> u32 {
        self.req_prod_pvt.wrapping_sub(self.rsp_cons)
    }

    /// Write a request into the next slot (visible to the backend after `publish`).
    pub fn push_request(&mut self, req: &RequestEntry) -> Result<(), RingError> {
        if self.space() == 0 {
            return Err(RingError::Full);
        }
        self.ring.write_entry(self.req_prod_pvt, &req.to_bytes());
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publish pushed requests (release). True if the backend asked to be notified
    /// (`req_event` rule).
    pub fn publish(&mut self) -> bool {
        let old = self.req_published;
        let new = self.req_prod_pvt;
        if old == new {
            return false;
        }
        self.ring
            .index(Index::ReqProd)
            .store(new, Ordering::Release);
        self.req_published = new;
        fence(Ordering::SeqCst);
        let event = self.ring.index(Index::ReqEvent).load(Ordering::Relaxed);
        new.wrapping_sub(event) < new.wrapping_sub(old)
    }

    /// The next response, if one is published. `None` also when the backend is broken
    /// (see [`FrontendRing::broken`]).
    pub fn poll_response(&mut self) -> Option<ResponseEntry> {
        self.try_poll_response().ok().flatten()
    }

    /// The next response, or the error if the backend published more responses than there
    /// are requests.
    pub fn try_poll_response(&mut self) -> Result<Option<ResponseEntry>, RingError> {
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        if self.rsp_cons == self.rsp_prod_seen {
            let rsp_prod = self.ring.index(Index::RspProd).load(Ordering::Acquire);
            let avail = rsp_prod.wrapping_sub(self.rsp_cons);
            let produced = self.req_published.wrapping_sub(self.rsp_cons);
            if avail > produced {
                let e = RingError::BadResponseIndex { rsp_prod, produced };
                self.broken = Some(e.clone());
                return Err(e);
            }
            if avail == 0 {
                return Ok(None);
            }
            self.rsp_prod_seen = rsp_prod;
        }
        let head = self.ring.read_entry::<16>(self.rsp_cons);
        self.rsp_cons = self.rsp_cons.wrapping_add(1);
        Ok(Some(ResponseEntry::from_bytes(&head)))
    }

    /// Cheap check whether a response is waiting.
    pub fn has_responses(&self) -> bool {
        self.ring.index(Index::RspProd).load(Ordering::Acquire) != self.rsp_cons
    }

    /// Ask to be notified of the next response, then check again. True: responses arrived,
    /// do not sleep.
    pub fn prepare_to_sleep(&mut self) -> bool {
        self.ring
            .index(Index::RspEvent)
            .store(self.rsp_cons.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::SeqCst);
        self.has_responses()
    }

    /// Fill data slot `slot` (for a `PUT`).
    ///
    /// # Panics
    /// If `slot >= data_slots` (a bug in the caller, which chose the slot).
    pub fn write_slot(&mut self, slot: u32, page: &Page) {
        assert!(
            self.ring.copy_to_slot(slot, page),
            "data slot {slot} out of range ({} slots)",
            self.ring.layout().data_slots
        );
    }

    /// Copy data slot `slot` out (after a `GET` hit).
    ///
    /// # Panics
    /// If `slot >= data_slots`.
    pub fn read_slot(&self, slot: u32, page: &mut Page) {
        assert!(
            self.ring.copy_from_slot(slot, page),
            "data slot {slot} out of range ({} slots)",
            self.ring.layout().data_slots
        );
    }

    /// Zero data slot `slot`.
    ///
    /// # Panics
    /// If `slot >= data_slots`.
    pub fn zero_slot(&mut self, slot: u32) {
        assert!(self.ring.zero_slot(slot), "data slot {slot} out of range");
    }
}

const _: () = assert!(PAGE_SIZE == 4096);
