//! The backend (daemon) end of the ring: consumes requests, produces responses.

use crate::idset::IdSet;
use crate::{Index, Layout, RingError, RingMem, SharedMem, PAGE_SIZE};
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::atomic::{fence, Ordering};
use tmem_abi::{Page, PageSink, PageSource, Refusal, Request, RequestEntry, ResponseEntry};

/// One request taken off the ring: its id and the result of validating the copy.
///
/// Every `Incoming` must be answered with [`BackendRing::push_response`], a refused one with
/// `refusal.status()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incoming {
    pub id: u64,
    pub req: Result<Request, Refusal>,
}

/// The last word of a response slot (bytes 56..64: a request's reserved words, which a
/// frontend writes as zero and never reads back in a response) carries the answer too, in a
/// form a request cannot have: `ANSWERED` in the top 16 bits, the flags in the next 16, the
/// status in the low 32. It is written before the 16-byte response, so a backend that takes
/// the ring over after a crash ([`BackendRing::resume`]) can tell a slot its predecessor
/// already answered (and with what) from one that still holds a request.
const ANSWERED: u64 = 0xa5ed << 48;
const ANSWERED_MASK: u64 = 0xffff << 48;
/// Word index of the answer mark in a slot.
const MARK_WORD: usize = 7;

pub(crate) fn answer_mark(status: i32, flags: u32) -> u64 {
    // Response flags are a few low bits (`tmem_abi::rsp_flags`); 16 are kept.
    debug_assert!(
        flags <= 0xffff,
        "response flags {flags:#x} do not fit the mark"
    );
    ANSWERED | (u64::from(flags & 0xffff) << 32) | u64::from(status as u32)
}

fn parse_mark(w: u64) -> Option<(i32, u32)> {
    (w & ANSWERED_MASK == ANSWERED).then_some((w as u32 as i32, ((w >> 32) & 0xffff) as u32))
}

/// What [`BackendRing::resume`] found in the ring it took over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resumed {
    /// Requests the previous backend had answered but not published: answered again from
    /// their slots (published by the next [`BackendRing::publish`]).
    pub answered: u32,
    /// Requests after those, not answered yet: consumed and served as new ones.
    pub pending: u32,
}

/// The daemon's end of one guest's ring.
///
/// Invariants: `rsp_prod_pvt <= req_cons` (free-running, wrapping), and the ids in `in_flight`
/// are exactly the `req_cons - rsp_prod_pvt` requests consumed but not yet answered, so
/// `in_flight.len() <= ring entries` whatever the guest does.
#[derive(Debug)]
pub struct BackendRing<M: SharedMem> {
    ring: RingMem<M>,
    req_cons: u32,
    rsp_prod_pvt: u32,
    rsp_published: u32,
    in_flight: IdSet,
    broken: Option<RingError>,
}

impl<M: SharedMem> BackendRing<M> {
    /// Attach to a ring the frontend has initialised (indices start at zero). Checks that the
    /// memory is large enough and aligned for `layout`; reads nothing from the header.
    pub fn new(mem: M, layout: Layout) -> Result<Self, RingError> {
        let ring = RingMem::new(mem, layout)?;
        let entries = ring.entries() as usize;
        Ok(BackendRing {
            ring,
            req_cons: 0,
            rsp_prod_pvt: 0,
            rsp_published: 0,
            in_flight: IdSet::with_max(entries),
            broken: None,
        })
    }

    /// Take over a ring another backend served (a tmemd that died or was restarted while the
    /// frontend stayed connected). Serving starts at the responses the guest can see
    /// (`rsp_prod`). The requests after it that the previous backend had already carried out
    /// carry their answer (see [`BackendRing::push_response`]): they are answered again from
    /// it. The rest are left for [`BackendRing::next_batch`], to be carried out (again, if the
    /// previous backend had started on them). Responses are pushed in request order, so the
    /// answered requests are a prefix. An error means the indices are inconsistent: the ring
    /// cannot be taken over.
    pub fn resume(mem: M, layout: Layout) -> Result<(Self, Resumed), RingError> {
        let mut ring = BackendRing::new(mem, layout)?;
        let size = ring.ring.entries();
        let rsp_prod = ring.ring.index(Index::RspProd).load(Ordering::Acquire);
        let req_prod = ring.ring.index(Index::ReqProd).load(Ordering::Acquire);
        let ahead = req_prod.wrapping_sub(rsp_prod);
        if ahead > size {
            return Err(RingError::Overflow {
                req_prod,
                ahead,
                size,
            });
        }
        ring.req_cons = rsp_prod;
        ring.rsp_prod_pvt = rsp_prod;
        ring.rsp_published = rsp_prod;
        let mut answered = 0;
        while answered < ahead {
            let i = rsp_prod.wrapping_add(answered);
            let w = ring.ring.read_words::<8>(i);
            let Some((status, flags)) = parse_mark(w[MARK_WORD]) else {
                break;
            };
            // Written whole again: the previous backend may have died inside the response.
            let rsp = ResponseEntry {
                id: w[0],
                status,
                flags,
            };
            ring.ring.write_entry(i, &rsp.to_bytes());
            answered += 1;
        }
        ring.req_cons = rsp_prod.wrapping_add(answered);
        ring.rsp_prod_pvt = ring.req_cons;
        let resumed = Resumed {
            answered,
            pending: ahead - answered,
        };
        Ok((ring, resumed))
    }

    /// The requests not consumed yet (at most a ring), validated, without consuming them.
    /// A backend taking a ring over looks at them before deciding to serve it.
    pub fn peek_pending(&self) -> Vec<Result<Request, Refusal>> {
        let req_prod = self.ring.index(Index::ReqProd).load(Ordering::Acquire);
        let n = req_prod
            .wrapping_sub(self.req_cons)
            .min(self.ring.entries());
        let data_slots = self.ring.layout().data_slots;
        (0..n)
            .map(|k| {
                let w = self.ring.read_words::<8>(self.req_cons.wrapping_add(k));
                tmem_abi::parse_request(&request_from_words(w), data_slots)
            })
            .collect()
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

    /// The protocol violation that broke this ring, if any. A broken ring consumes nothing more.
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
            && self.ring.index(Index::ReqProd).load(Ordering::Acquire) != self.req_cons
    }

    /// Read `req_prod` once, check it, and copy out up to `max` requests, each validated with
    /// [`tmem_abi::parse_request`]. Appends to `out`.
    ///
    /// An error is a ring protocol violation (the guest should be disconnected); requests
    /// appended before it are still valid and in flight. The ring stays broken afterwards.
    pub fn next_batch(&mut self, max: usize, out: &mut Vec<Incoming>) -> Result<(), RingError> {
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        let size = self.ring.entries();
        let req_prod = self.ring.index(Index::ReqProd).load(Ordering::Acquire);
        // Entries between our response producer and the guest's request producer are the
        // guest's requests plus the slots of requests we still own; together at most a ring.
        let ahead = req_prod.wrapping_sub(self.rsp_prod_pvt);
        let owned = self.req_cons.wrapping_sub(self.rsp_prod_pvt);
        if ahead > size || ahead < owned {
            let e = RingError::Overflow {
                req_prod,
                ahead,
                size,
            };
            self.broken = Some(e.clone());
            return Err(e);
        }
        let avail = ahead - owned; // no underflow: checked above
        let n = (avail as usize).min(max);
        let data_slots = self.ring.layout().data_slots;
        for _ in 0..n {
            // The one copy out of shared memory: eight words, decoded as the wire layout
            // (`RequestEntry::from_bytes` of the same 64 bytes; tested against it).
            let entry = request_from_words(self.ring.read_words::<8>(self.req_cons));
            if !self.in_flight.insert(entry.id) {
                let e = RingError::DuplicateId(entry.id);
                self.broken = Some(e.clone());
                return Err(e);
            }
            self.req_cons = self.req_cons.wrapping_add(1);
            out.push(Incoming {
                id: entry.id,
                req: tmem_abi::parse_request(&entry, data_slots),
            });
        }
        Ok(())
    }

    /// Answer the consumed request `id` (responses may come in any order). Written to shared
    /// memory at once, visible to the guest after [`BackendRing::publish`].
    pub fn push_response(&mut self, id: u64, status: i32, flags: u32) -> Result<(), RingError> {
        if !self.in_flight.remove(id) {
            return Err(RingError::NotInFlight(id));
        }
        // There is a consumed request per in-flight id, so rsp_prod_pvt < req_cons: the slot
        // we write belongs to a request we have already copied out.
        let rsp = ResponseEntry { id, status, flags };
        // The mark first: a slot with the mark was carried out, whatever else a crash left in
        // it; a slot without it still holds its request unchanged (resume).
        self.ring
            .write_word(self.rsp_prod_pvt, MARK_WORD, answer_mark(status, flags));
        self.ring.write_entry(self.rsp_prod_pvt, &rsp.to_bytes());
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publish pushed responses (release). True if the guest asked to be notified, by the
    /// `rsp_event` rule of `io/ring.h`.
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
        fence(Ordering::SeqCst);
        let event = self.ring.index(Index::RspEvent).load(Ordering::Relaxed);
        new.wrapping_sub(event) < new.wrapping_sub(old)
    }

    /// Ask to be notified of the next request, then check again. True means requests
    /// arrived meanwhile: do not sleep.
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

    /// The data of a `PUT` from data slot `slot`. A slot outside the data area (which
    /// `parse_request` already refuses) reads as zeroes.
    pub fn slot_source(&self, slot: u32) -> SlotSource<'_> {
        SlotSource {
            ptr: self.ring.slot_ptr(slot).and_then(NonNull::new),
            _ring: PhantomData,
        }
    }

    /// The destination of a `GET` into data slot `slot`. Writes to a slot outside the data
    /// area are dropped.
    pub fn slot_sink(&mut self, slot: u32) -> SlotSink<'_> {
        SlotSink {
            ptr: self.ring.slot_ptr(slot).and_then(NonNull::new),
            _ring: PhantomData,
        }
    }
}

/// A request from the eight little-endian words of its ring entry (the layout of
/// `RequestEntry::from_bytes`, without a detour through a byte array).
#[inline]
fn request_from_words(w: [u64; 8]) -> RequestEntry {
    RequestEntry {
        id: w[0],
        cmd: w[1] as u32,
        pool_id: (w[1] >> 32) as u32 as i32,
        arg: [w[2], w[3], w[4], w[5], w[6]],
        rsvd: [w[7] as u32, (w[7] >> 32) as u32],
    }
}

#[cfg(test)]
#[test]
fn request_from_words_matches_from_bytes() {
    let mut x = 0x0123_4567_89ab_cdefu64;
    for _ in 0..1000 {
        let mut b = [0u8; tmem_abi::ENTRY_SIZE];
        let mut w = [0u64; 8];
        for (k, c) in b.chunks_exact_mut(8).enumerate() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
            w[k] = x;
        }
        assert_eq!(request_from_words(w), RequestEntry::from_bytes(&b));
    }
}

/// Reads one data slot of a [`BackendRing`] (a [`PageSource`]).
#[derive(Debug)]
pub struct SlotSource<'a> {
    ptr: Option<NonNull<u8>>,
    _ring: PhantomData<&'a ()>,
}

impl SlotSource<'_> {
    /// False if the slot was outside the data area.
    pub fn is_valid(&self) -> bool {
        self.ptr.is_some()
    }
}

impl PageSource for SlotSource<'_> {
    fn read_page(&self, dst: &mut Page) {
        match self.ptr {
            // SAFETY: `p` is a bounds-checked data slot (4096 bytes) of shared memory kept
            // mapped by the ring borrowed for 'a; `dst` is private and cannot overlap it.
            Some(p) => unsafe {
                std::ptr::copy_nonoverlapping(p.as_ptr(), dst.as_mut_ptr(), PAGE_SIZE)
            },
            None => dst.fill(0),
        }
    }
}

/// Writes one data slot of a [`BackendRing`] (a [`PageSink`]).
#[derive(Debug)]
pub struct SlotSink<'a> {
    ptr: Option<NonNull<u8>>,
    _ring: PhantomData<&'a mut ()>,
}

impl SlotSink<'_> {
    /// False if the slot was outside the data area.
    pub fn is_valid(&self) -> bool {
        self.ptr.is_some()
    }
}

impl PageSink for SlotSink<'_> {
    fn write_page(&mut self, src: &Page) {
        if let Some(p) = self.ptr {
            // SAFETY: `p` is a bounds-checked data slot (4096 bytes) of shared memory kept
            // mapped by the ring borrowed for 'a; `src` is private memory.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), p.as_ptr(), PAGE_SIZE) }
        }
    }
    fn write_zero_page(&mut self) {
        if let Some(p) = self.ptr {
            // SAFETY: as in write_page.
            unsafe { std::ptr::write_bytes(p.as_ptr(), 0, PAGE_SIZE) }
        }
    }
    fn write_filled_page(&mut self, word: u64) {
        let Some(p) = self.ptr else { return };
        // Straight into the slot: one pass over it, no page-sized buffer to copy from.
        let w = u64::from_ne_bytes(word.to_le_bytes());
        for i in 0..PAGE_SIZE / 8 {
            let dst = p.as_ptr().wrapping_add(i * 8).cast::<u64>();
            // SAFETY: as in write_page; `i * 8 + 8 <= PAGE_SIZE` keeps every store inside the
            // slot, and `write_unaligned` assumes nothing about the slot's alignment.
            unsafe { dst.write_unaligned(w) }
        }
    }
}
