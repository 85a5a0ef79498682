//! Target `ring_backend`: a hostile guest (tmem-ring's `MockGuest`, writing plain shared
//! memory) against the real `BackendRing`. The input is a program: guest writes of entries,
//! ids, slots and header indices, interleaved with backend batches, responses and publishes.
//!
//! Invariants checked: nothing panics; the backend never has more requests in flight than the
//! ring has entries, and its count matches a model of what it handed out; every accepted
//! `PUT`/`GET` names a slot inside the data area; a duplicate in-flight id or a bad producer
//! index breaks the ring (an error, i.e. a disconnect) and it stays broken; one batch never
//! returns more than asked; the backend never writes the guest's header fields.

use crate::input::Input;
use std::collections::HashSet;
use tmem_abi::{cmd, pool_flags, Page, PageSink, PageSource, Request, RequestEntry, ENTRY_SIZE};
use tmem_ring::mock::{pair, MockGuest};
use tmem_ring::{BackendRing, Incoming, Layout, SharedMem};

/// Operations per input: bounds the run whatever the input length.
const MAX_OPS: usize = 512;

pub fn ring_backend(data: &[u8]) {
    let mut inp = Input::new(data);
    let layout = Layout {
        ring_pages: 1 + u32::from(inp.u8() % 2),
        data_slots: u32::from(inp.u8() % 5),
    };
    let (backend, guest) = pair(layout).expect("a small valid layout");
    let mut run = Run {
        entries: backend.entries(),
        backend,
        guest,
        layout,
        in_flight: HashSet::new(),
        answered: 0,
        published: 0,
        broken: false,
    };
    for _ in 0..MAX_OPS {
        if inp.is_empty() {
            break;
        }
        run.step(&mut inp);
    }
}

struct Run<M: SharedMem> {
    backend: BackendRing<M>,
    guest: MockGuest<M>,
    layout: Layout,
    entries: u32,
    /// Model: ids the backend handed out and we have not answered.
    in_flight: HashSet<u64>,
    /// Responses pushed so far (wrapping, like the ring's indices).
    answered: u32,
    /// `answered` at the last publish: what `rsp_prod` must say.
    published: u32,
    broken: bool,
}

impl<M: SharedMem> Run<M> {
    fn step(&mut self, inp: &mut Input<'_>) {
        match inp.u8() % 13 {
            // Guest side: anything a guest can write.
            0 => self.guest.push_bytes(&inp.array::<ENTRY_SIZE>()),
            1 => {
                let req = plausible_request(inp, self.layout);
                self.guest.push(&req);
            }
            2 => {
                self.guest.publish();
            }
            3 => {
                // Near the current index, forwards or backwards.
                let delta = i32::from(inp.u8() as i8) as u32;
                let v = self.guest.req_prod().wrapping_add(delta);
                self.guest.set_req_prod(v);
            }
            4 => self.guest.set_req_prod(inp.u32()),
            5 => {
                // Rewrite any slot, including one of a request already in flight.
                let index = inp.u32();
                self.guest
                    .write_entry_bytes(index, &inp.array::<ENTRY_SIZE>());
            }
            6 => self.guest.set_req_event(inp.u32()),
            7 => self.guest.set_rsp_event(inp.u32()),
            // Backend side: what the daemon's worker does.
            8 => self.batch(usize::from(inp.u8())),
            9 => {
                // Answer one in-flight request (any order).
                let n = self.in_flight.len();
                if n > 0 {
                    let k = usize::from(inp.u8()) % n;
                    let id = *self.in_flight.iter().nth(k).expect("k < n");
                    let status = inp.u32() as i32;
                    self.respond(id, status);
                }
            }
            10 => {
                // Answer an id the guest may or may not have in flight.
                let id = u64::from(inp.u8() % 16);
                self.respond(id, 1);
            }
            11 => {
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
        assert!(self.in_flight.len() <= self.entries as usize);
    }

    /// Run a backend operation and check it left the guest's header fields alone.
    fn backend_only(&mut self, f: impl FnOnce(&mut BackendRing<M>)) {
        let req_prod = self.guest.req_prod();
        f(&mut self.backend);
        assert_eq!(self.guest.req_prod(), req_prod, "backend wrote req_prod");
        assert_eq!(
            self.guest.rsp_prod(),
            self.published,
            "rsp_prod is not the count of responses published"
        );
    }

    fn batch(&mut self, max: usize) {
        let mut out = Vec::new();
        let mut res = Ok(());
        self.backend_only(|b| res = b.next_batch(max, &mut out));
        assert!(out.len() <= max, "batch of {} exceeds max {max}", out.len());
        for inc in &out {
            self.take(inc);
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
            }
        }
        if self.broken {
            // A broken ring stays broken and consumes nothing more.
            let mut more = Vec::new();
            assert!(self.backend.next_batch(64, &mut more).is_err());
            assert!(more.is_empty());
            assert!(!self.backend.has_requests());
        }
    }

    /// Check one request the backend handed out, and serve its data slot as the daemon would.
    fn take(&mut self, inc: &Incoming) {
        assert!(
            self.in_flight.insert(inc.id),
            "id {:#x} handed out twice while in flight",
            inc.id
        );
        match inc.req {
            Ok(Request::Put { slot, .. }) => {
                assert!(slot < self.layout.data_slots);
                let src = self.backend.slot_source(slot);
                assert!(src.is_valid());
                let mut page: Page = [0; tmem_abi::PAGE_SIZE];
                src.read_page(&mut page);
            }
            Ok(Request::Get { slot, .. }) => {
                assert!(slot < self.layout.data_slots);
                let mut sink = self.backend.slot_sink(slot);
                assert!(sink.is_valid());
                sink.write_zero_page();
            }
            Ok(_) => {}
            Err(refusal) => assert!(refusal.status() < 0),
        }
    }

    fn respond(&mut self, id: u64, status: i32) {
        let expected = self.in_flight.remove(&id);
        let mut res = Ok(());
        self.backend_only(|b| res = b.push_response(id, status, 0));
        assert_eq!(res.is_ok(), expected, "push_response({id:#x}) = {res:?}");
        if expected {
            self.answered = self.answered.wrapping_add(1);
        }
    }
}

/// A request that passes or nearly passes validation, so the fuzzer reaches the paths behind
/// `parse_request` quickly: small ids (to collide), small pools, slots around the data area.
fn plausible_request(inp: &mut Input<'_>, layout: Layout) -> RequestEntry {
    const CMDS: [u32; 8] = [
        cmd::PUT_PAGE,
        cmd::GET_PAGE,
        cmd::FLUSH_PAGE,
        cmd::FLUSH_OBJECT,
        cmd::NEW_POOL,
        cmd::DESTROY_POOL,
        cmd::CONTROL,
        cmd::NEW_PAGE,
    ];
    let id = u64::from(inp.u8() % 16);
    let command = CMDS[usize::from(inp.u8()) % CMDS.len()];
    let pool = i32::from(inp.u8() % 4);
    match command {
        cmd::NEW_POOL => {
            let flags = if inp.bool() {
                pool_flags::for_kind(inp.bool(), inp.bool())
            } else {
                inp.u32()
            };
            RequestEntry::new_pool(id, [inp.u64(), inp.u64()], flags)
        }
        cmd::DESTROY_POOL => RequestEntry::destroy_pool(id, pool),
        _ => {
            let slot = u32::from(inp.u8()) % (layout.data_slots + 2);
            let oid = [u64::from(inp.u8()), 0, 0];
            RequestEntry::page_op(id, command, pool, oid, u32::from(inp.u8()), slot)
        }
    }
}
