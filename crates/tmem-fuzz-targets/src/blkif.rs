//! Target `blkif_ring`: a hostile block frontend (tmem-blkif's `MockFrontend`, writing plain
//! shared memory) against the real `BlkBackend`, optionally taken over from an arbitrary
//! journal as a restarted tmemd does. The input is a program: raw or plausible requests,
//! producer indices anywhere, rewritten slots, interleaved with backend batches, answers in
//! any order, publishes and sleeps.
//!
//! Invariants checked: nothing panics; the backend never has more requests in flight than
//! the ring has entries, and its count matches a model of what it handed out; one batch never
//! returns more than asked; every accepted READ/WRITE/DISCARD lies inside the disk and has
//! 1..=11 segments of valid sector ranges; a duplicate in-flight id or a bad producer index
//! breaks the ring and it stays broken; the backend never writes `req_prod`, and `rsp_prod`
//! is exactly the responses published.

use crate::input::Input;
use std::collections::HashSet;
use tmem_blkif::abi::{op, RawRequest, ENTRY_SIZE};
use tmem_blkif::mock::{rw_request, MemfdMem, MockFrontend};
use tmem_blkif::{BlkBackend, BlkRequest, DiskParams, Incoming, Segment};

const MAX_OPS: usize = 512;
/// A small disk, so that plausible requests hit its end.
const SECTORS: u64 = 64 * 8;

pub fn blkif_ring(data: &[u8]) {
    let mut inp = Input::new(data);
    let pages = 1u32 << (inp.u8() % 2);
    let bytes = pages as usize * 4096;
    let front_mem = MemfdMem::create(bytes).expect("memfd");
    let back_mem = front_mem.map_again().expect("second mapping");
    let mut front = MockFrontend::new(front_mem, pages).expect("ring");
    let disk = DiskParams::swap_disk(SECTORS);
    let (backend, replayed) = if inp.bool() {
        // A takeover: the guest produced some requests first, and the journal says anything.
        for _ in 0..inp.u8() % 8 {
            front.push_raw(&plausible(&mut inp));
        }
        front.publish();
        let consumed = u32::from(inp.u8() % 12);
        let journal: Vec<RawRequest> = (0..4).map(|_| plausible(&mut inp)).collect();
        let hole = inp.u8() % 6;
        let r = BlkBackend::resume(back_mem, pages, disk, consumed, |i| {
            (i as u8 != hole).then(|| journal[i as usize % journal.len()])
        });
        match r {
            Ok((b, n)) => {
                assert!(n as u32 <= b.entries(), "replays more than a ring");
                (b, n)
            }
            Err(e) => {
                let _ = e.to_string();
                return;
            }
        }
    } else {
        (BlkBackend::new(back_mem, pages, disk).expect("ring"), 0)
    };
    let mut run = Run {
        entries: backend.entries(),
        backend,
        front,
        in_flight: HashSet::new(),
        // Requests a takeover hands out again count as owned from the start.
        owned_unseen: replayed,
        answered: 0,
        published: 0,
        broken: false,
    };
    run.published = run.front.rsp_prod();
    run.answered = run.published;
    for _ in 0..MAX_OPS {
        if inp.is_empty() {
            break;
        }
        run.step(&mut inp);
    }
}

struct Run {
    backend: BlkBackend<MemfdMem>,
    front: MockFrontend<MemfdMem>,
    entries: u32,
    in_flight: HashSet<u64>,
    owned_unseen: usize,
    answered: u32,
    published: u32,
    broken: bool,
}

impl Run {
    fn step(&mut self, inp: &mut Input<'_>) {
        match inp.u8() % 11 {
            0 => self.front.push_raw(&RawRequest(inp.array::<ENTRY_SIZE>())),
            1 => {
                let r = plausible(inp);
                self.front.push_raw(&r);
            }
            2 => {
                self.front.publish();
            }
            3 => {
                let delta = i32::from(inp.u8() as i8) as u32;
                let v = self.front.req_prod().wrapping_add(delta);
                self.front.set_req_prod(v);
            }
            4 => {
                let index = inp.u32();
                self.front
                    .write_slot(index, &RawRequest(inp.array::<ENTRY_SIZE>()));
            }
            5 => self.front.set_rsp_event(inp.u32()),
            6 => self.batch(usize::from(inp.u8() % 40)),
            7 => {
                let n = self.in_flight.len();
                if n > 0 {
                    let k = usize::from(inp.u8()) % n;
                    let id = *self.in_flight.iter().nth(k).expect("k < n");
                    self.respond(id);
                }
            }
            8 => {
                let id = u64::from(inp.u8() % 16);
                self.respond(id);
            }
            9 => {
                self.published = self.answered;
                self.backend_only(|b| {
                    b.publish();
                });
            }
            _ => self.backend_only(|b| {
                let _ = b.prepare_to_sleep();
                let _ = b.has_requests();
            }),
        }
        assert_eq!(self.backend.in_flight(), self.in_flight.len());
        assert!(self.in_flight.len() + self.owned_unseen <= self.entries as usize);
    }

    fn backend_only(&mut self, f: impl FnOnce(&mut BlkBackend<MemfdMem>)) {
        let req_prod = self.front.req_prod();
        f(&mut self.backend);
        assert_eq!(self.front.req_prod(), req_prod, "backend wrote req_prod");
        assert_eq!(
            self.front.rsp_prod(),
            self.published,
            "rsp_prod is not what was published"
        );
    }

    fn batch(&mut self, max: usize) {
        let mut out: Vec<Incoming> = Vec::new();
        let mut res = Ok(());
        self.backend_only(|b| res = b.next_batch(max, &mut out));
        assert!(out.len() <= max, "batch of {} exceeds max {max}", out.len());
        for inc in &out {
            if self.owned_unseen > 0 {
                self.owned_unseen -= 1;
            }
            assert!(
                self.in_flight.insert(inc.id),
                "id {:#x} handed out twice",
                inc.id
            );
            check(inc);
        }
        match res {
            Ok(()) => assert!(!self.broken, "a broken ring produced a batch"),
            Err(e) => {
                let _ = e.to_string();
                assert!(
                    self.backend.broken().is_some(),
                    "error {e} left the ring usable"
                );
                self.broken = true;
                self.owned_unseen = 0;
            }
        }
        if self.broken {
            let mut more = Vec::new();
            assert!(self.backend.next_batch(8, &mut more).is_err());
            assert!(more.is_empty());
            assert!(!self.backend.has_requests());
        }
    }

    fn respond(&mut self, id: u64) {
        let expected = self.in_flight.remove(&id);
        let mut res = Ok(());
        self.backend_only(|b| res = b.push_response(id, 0));
        assert_eq!(res.is_ok(), expected, "push_response({id:#x}) = {res:?}");
        if expected {
            self.answered = self.answered.wrapping_add(1);
        }
    }
}

/// What the parser accepted is inside the disk and well formed.
fn check(inc: &Incoming) {
    match &inc.req {
        Ok(BlkRequest::Read(t)) | Ok(BlkRequest::Write { io: t, .. }) => {
            let segs = t.segments();
            assert!((1..=11).contains(&segs.len()));
            assert!(segs
                .iter()
                .all(|s| s.first_sect <= s.last_sect && s.last_sect <= 7));
            let end = t.sector().checked_add(t.sectors()).expect("no overflow");
            assert!(end <= SECTORS, "transfer ends at {end}, past the disk");
        }
        Ok(BlkRequest::Discard {
            sector, nr_sectors, ..
        }) => {
            let end = sector.checked_add(*nr_sectors).expect("no overflow");
            assert!(end <= SECTORS);
        }
        Ok(BlkRequest::Flush) => {}
        Err(refusal) => assert!(refusal.status() < 0),
    }
}

/// A request that passes or nearly passes validation: small colliding ids, sectors near the
/// end of the disk, segment ranges around the valid ones.
fn plausible(inp: &mut Input<'_>) -> RawRequest {
    const OPS: [u8; 5] = [
        op::READ,
        op::WRITE,
        op::FLUSH_DISKCACHE,
        op::DISCARD,
        op::INDIRECT,
    ];
    let operation = OPS[usize::from(inp.u8()) % OPS.len()];
    let id = u64::from(inp.u8() % 16);
    let sector = u64::from(inp.u8()) * 2 + if inp.bool() { SECTORS - 64 } else { 0 };
    if operation == op::DISCARD {
        let mut r = rw_request(op::DISCARD, id, sector, &[]);
        r.0[1] = inp.u8() % 2;
        r.0[24..32].copy_from_slice(&u64::from(inp.u8()).to_le_bytes());
        return r;
    }
    let n = usize::from(inp.u8() % 13);
    let segs: Vec<Segment> = (0..n)
        .map(|_| Segment {
            gref: u32::from(inp.u8()),
            first_sect: inp.u8() % 9,
            last_sect: inp.u8() % 9,
        })
        .collect();
    let mut r = rw_request(operation, id, sector, &segs);
    if n > 11 {
        r.0[1] = n as u8;
    }
    r
}
