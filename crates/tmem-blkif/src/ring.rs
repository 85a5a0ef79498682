//! The backend end of a blkif ring: consumes requests, produces responses.

use crate::abi::{RawRequest, Response};
use crate::parse::{parse_request, BlkRequest, DiskParams, Refusal};
use crate::shm::{Index, RingMem};
use crate::{RingError, RingSetupError};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{fence, Ordering};
use tmem_ring::SharedMem;

/// One request taken off the ring: the id and operation to echo, and the result of
/// validating the copy. Each must be answered with [`BlkBackend::push_response`]; a refused
/// one with `refusal.status()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incoming {
    pub id: u64,
    pub operation: u8,
    pub req: Result<BlkRequest, Refusal>,
    /// The ring index it was taken from, and the bytes as copied out (what a journal keeps,
    /// so that a restarted backend can run it again: see [`BlkBackend::resume`]).
    pub index: u32,
    pub raw: RawRequest,
}

/// Why a ring cannot be taken over by [`BlkBackend::resume`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    #[error(transparent)]
    Setup(#[from] RingSetupError),
    #[error(
        "ring indexes do not fit the journal (requests produced {req_prod}, responses {rsp_prod}, \
         consumed {consumed}, ring of {size})"
    )]
    Indexes {
        req_prod: u32,
        rsp_prod: u32,
        consumed: u32,
        size: u32,
    },
    #[error("the journal has no copy of request {0}")]
    Missing(u32),
}

/// The daemon's end of one guest's blkif ring.
///
/// Invariants: `rsp_prod_pvt <= req_cons` (free-running, wrapping), and `in_flight` holds
/// exactly the ids of the `req_cons - rsp_prod_pvt` requests consumed and not yet answered,
/// so it never holds more than a ring's worth of entries whatever the guest does.
#[derive(Debug)]
pub struct BlkBackend<M: SharedMem> {
    ring: RingMem<M>,
    disk: DiskParams,
    req_cons: u32,
    rsp_prod_pvt: u32,
    rsp_published: u32,
    /// Id → operation of each request in flight (the operation is echoed in the response).
    in_flight: HashMap<u64, u8>,
    /// Requests a previous backend consumed (their slots may hold its responses by now),
    /// taken again from its journal: handed out before anything new.
    replay: VecDeque<(u32, RawRequest)>,
    broken: Option<RingError>,
}

impl<M: SharedMem> BlkBackend<M> {
    /// Attach to a ring of `ring_pages` pages (power of two, at most
    /// [`crate::MAX_RING_PAGES`]) at the start of `mem`, which the frontend has initialised.
    /// Requests are checked against `disk`. Reads nothing from the ring yet.
    pub fn new(mem: M, ring_pages: u32, disk: DiskParams) -> Result<Self, RingSetupError> {
        let ring = RingMem::new(mem, ring_pages)?;
        let entries = ring.entries() as usize;
        Ok(BlkBackend {
            ring,
            disk,
            req_cons: 0,
            rsp_prod_pvt: 0,
            rsp_published: 0,
            in_flight: HashMap::with_capacity(entries),
            replay: VecDeque::new(),
            broken: None,
        })
    }

    /// Take over a ring another backend served (a tmemd killed or restarted while the
    /// frontend stayed connected). `consumed` is the request index up to which the previous
    /// backend's journal says it took requests, and `journaled(i)` that journal's copy of
    /// request `i`: a slot whose request was consumed may since hold a response, so its copy
    /// is taken from the journal, never from the ring.
    ///
    /// Every request the guest has not seen answered (`rsp_prod .. req_prod`) is handed out
    /// again by [`BlkBackend::next_batch`], those before `consumed` first: block requests may
    /// be carried out twice (a write writes the same bytes, a read reads them, a discard or
    /// flush repeats), and answers the previous backend wrote but did not publish are simply
    /// written again. Returns the backend and how many requests come from the journal.
    pub fn resume(
        mem: M,
        ring_pages: u32,
        disk: DiskParams,
        consumed: u32,
        mut journaled: impl FnMut(u32) -> Option<RawRequest>,
    ) -> Result<(Self, usize), ResumeError> {
        let mut b = Self::new(mem, ring_pages, disk)?;
        let size = b.ring.entries();
        let req_prod = b.ring.index(Index::ReqProd).load(Ordering::Acquire);
        let rsp_prod = b.ring.index(Index::RspProd).load(Ordering::Acquire);
        let ahead = req_prod.wrapping_sub(rsp_prod);
        let owned = consumed.wrapping_sub(rsp_prod);
        if ahead > size || owned > ahead {
            return Err(ResumeError::Indexes {
                req_prod,
                rsp_prod,
                consumed,
                size,
            });
        }
        for k in 0..owned {
            let i = rsp_prod.wrapping_add(k);
            let raw = journaled(i).ok_or(ResumeError::Missing(i))?;
            b.replay.push_back((i, raw));
        }
        b.req_cons = consumed;
        b.rsp_prod_pvt = rsp_prod;
        b.rsp_published = rsp_prod;
        Ok((b, owned as usize))
    }

    /// Request slots in the ring.
    pub fn entries(&self) -> u32 {
        self.ring.entries()
    }

    pub fn disk(&self) -> &DiskParams {
        &self.disk
    }

    pub fn mem(&self) -> &M {
        self.ring.mem()
    }

    /// The protocol violation that broke this ring, if any. A broken ring consumes nothing.
    pub fn broken(&self) -> Option<&RingError> {
        self.broken.as_ref()
    }

    /// Requests consumed and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Cheap check whether the guest has produced requests we have not consumed.
    pub fn has_requests(&self) -> bool {
        self.broken.is_none()
            && (!self.replay.is_empty()
                || self.ring.index(Index::ReqProd).load(Ordering::Acquire) != self.req_cons)
    }

    /// Read `req_prod` once (acquire), check it, and copy out and parse up to `max`
    /// requests, appending them to `out`.
    ///
    /// An error is a protocol violation: disconnect the guest. Requests appended before the
    /// error are valid and in flight; the ring stays broken.
    pub fn next_batch(&mut self, max: usize, out: &mut Vec<Incoming>) -> Result<(), RingError> {
        if let Some(e) = self.broken {
            return Err(e);
        }
        let mut max = max;
        while max > 0 {
            let Some((index, raw)) = self.replay.pop_front() else {
                break;
            };
            self.take(index, raw, out)?;
            max -= 1;
        }
        let size = self.ring.entries();
        let req_prod = self.ring.index(Index::ReqProd).load(Ordering::Acquire);
        // Between our response producer and the guest's request producer lie the guest's new
        // requests plus the slots of requests we have not answered: at most one ring
        // (`RING_REQUEST_PROD_OVERFLOW`), and never fewer than we already consumed.
        let ahead = req_prod.wrapping_sub(self.rsp_prod_pvt);
        let owned = self.req_cons.wrapping_sub(self.rsp_prod_pvt);
        if ahead > size || ahead < owned {
            return Err(self.fail(RingError::Overflow {
                req_prod,
                req_cons: self.req_cons,
                size,
            }));
        }
        let n = ((ahead - owned) as usize).min(max);
        for _ in 0..n {
            let index = self.req_cons;
            let raw = self.ring.read_request(index);
            self.take(index, raw, out)?;
            self.req_cons = self.req_cons.wrapping_add(1);
        }
        Ok(())
    }

    /// One request copied out: refuse a duplicate id, else record it in flight and parse it.
    fn take(
        &mut self,
        index: u32,
        raw: RawRequest,
        out: &mut Vec<Incoming>,
    ) -> Result<(), RingError> {
        let (id, operation) = (raw.id(), raw.operation());
        if self.in_flight.contains_key(&id) {
            return Err(self.fail(RingError::DuplicateId(id)));
        }
        self.in_flight.insert(id, operation);
        out.push(Incoming {
            id,
            operation,
            req: parse_request(&raw, &self.disk),
            index,
            raw,
        });
        Ok(())
    }

    /// Test hook: pretend 2^32-ish requests went by, to exercise index wrap-around.
    #[cfg(test)]
    pub(crate) fn start_at(&mut self, index: u32) {
        self.req_cons = index;
        self.rsp_prod_pvt = index;
        self.rsp_published = index;
    }

    fn fail(&mut self, e: RingError) -> RingError {
        self.broken = Some(e);
        e
    }

    /// Answer the consumed request `id` (in any order) with a `BLKIF_RSP_*` status. Written
    /// at once; the guest sees it after [`BlkBackend::publish`].
    pub fn push_response(&mut self, id: u64, status: i16) -> Result<(), RingError> {
        let operation = self
            .in_flight
            .remove(&id)
            .ok_or(RingError::NotInFlight(id))?;
        // One consumed, unanswered request per in-flight id, so rsp_prod_pvt < req_cons: the
        // slot we overwrite holds a request we have already copied out.
        let rsp = Response {
            id,
            operation,
            status,
        };
        self.ring.write_response(self.rsp_prod_pvt, &rsp.to_bytes());
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publish pushed responses (release). True if the guest asked to be notified, by the
    /// `rsp_event` rule of `io/ring.h` (`RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`).
    pub fn publish(&mut self) -> bool {
        let old = self.rsp_published;
        let new = self.rsp_prod_pvt;
        if old == new {
            return false;
        }
        self.ring
            .index(Index::RspProd)
            .store(new, Ordering::Release);
        self.rsp_published = new;
        // The guest's rsp_event must be read after our rsp_prod store is visible.
        fence(Ordering::SeqCst);
        let event = self.ring.index(Index::RspEvent).load(Ordering::Relaxed);
        new.wrapping_sub(event) < new.wrapping_sub(old)
    }

    /// Ask to be notified of the next request, then look again
    /// (`RING_FINAL_CHECK_FOR_REQUESTS`). True: requests arrived meanwhile, do not sleep.
    pub fn prepare_to_sleep(&mut self) -> bool {
        if self.broken.is_some() {
            return false;
        }
        self.ring
            .index(Index::ReqEvent)
            .store(self.req_cons.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::SeqCst);
        self.has_requests()
    }
}

#[cfg(test)]
mod tests;
