//! Unit tests of both ring ends, the backend mostly against the mock guest.

use crate::mock::pair;
use crate::*;
use std::sync::Arc;
use tmem_abi::status::errno;
use tmem_abi::{cmd, PageSink, PageSource, Request, RequestEntry};

const LAYOUT: Layout = Layout {
    ring_pages: 1,
    data_slots: 4,
};

fn put(id: u64, slot: u32) -> RequestEntry {
    RequestEntry::page_op(id, cmd::PUT_PAGE, 0, [1, 2, 3], id as u32, slot)
}

fn flush(id: u64) -> RequestEntry {
    RequestEntry::page_op(id, cmd::FLUSH_PAGE, 0, [1, 2, 3], 0, 0)
}

fn batch<M: SharedMem>(b: &mut BackendRing<M>, max: usize) -> Result<Vec<Incoming>, RingError> {
    let mut v = Vec::new();
    b.next_batch(max, &mut v).map(|()| v)
}

#[test]
fn layout_geometry() {
    assert_eq!(LAYOUT.ring_entries(), 32);
    assert_eq!(LAYOUT.total_bytes(), 5 * 4096);
    assert_eq!(LAYOUT.slot_offset(0), Some(4096));
    assert_eq!(LAYOUT.slot_offset(3), Some(4 * 4096));
    assert_eq!(LAYOUT.slot_offset(4), None);
}

#[test]
fn new_rejects_bad_memory() {
    let small = HeapMem::new(4096);
    assert!(matches!(
        BackendRing::new(small, LAYOUT),
        Err(RingError::TooSmall { .. })
    ));
    let mem = HeapMem::new(LAYOUT.total_bytes());
    let no_ring = Layout {
        ring_pages: 0,
        data_slots: 4,
    };
    assert!(matches!(
        BackendRing::new(mem, no_ring),
        Err(RingError::BadLayout(..))
    ));
}

#[test]
fn round_trip_frontend_backend_with_data() {
    let mem = Arc::new(HeapMem::new(LAYOUT.total_bytes()));
    let mut f = FrontendRing::init(Arc::clone(&mem), LAYOUT).unwrap();
    let mut b = BackendRing::new(mem, LAYOUT).unwrap();

    let page = [0x5au8; 4096];
    f.write_slot(2, &page);
    f.push_request(&put(7, 2)).unwrap();
    assert!(
        f.publish(),
        "first request must notify (req_event starts at 1)"
    );

    let inc = batch(&mut b, 16).unwrap();
    assert_eq!(inc.len(), 1);
    assert_eq!(inc[0].id, 7);
    let Ok(Request::Put { slot, .. }) = inc[0].req else {
        panic!("{:?}", inc[0])
    };
    let mut got = [0u8; 4096];
    b.slot_source(slot).read_page(&mut got);
    assert_eq!(got, page);
    // Answer a GET-like write into another slot.
    b.slot_sink(1).write_page(&[0xa5; 4096]);
    b.push_response(7, 1, 0).unwrap();
    assert!(b.publish(), "frontend has rsp_event = 1: must be notified");
    assert_eq!(b.in_flight(), 0);

    let r = f.poll_response().unwrap();
    assert_eq!((r.id, r.status, r.flags), (7, 1, 0));
    let mut back = [0u8; 4096];
    f.read_slot(1, &mut back);
    assert_eq!(back, [0xa5; 4096]);
    assert!(f.poll_response().is_none());
    assert_eq!(f.space(), 32);
}

#[test]
fn batching_respects_max_and_answers_out_of_order() {
    let (mut b, mut g) = pair(LAYOUT).unwrap();
    for id in 0..10 {
        g.push(&flush(100 + id));
    }
    g.publish();
    let first = batch(&mut b, 4).unwrap();
    assert_eq!(first.len(), 4);
    let rest = batch(&mut b, 100).unwrap();
    assert_eq!(rest.len(), 6);
    assert_eq!(b.in_flight(), 10);
    assert!(batch(&mut b, 100).unwrap().is_empty());
    // Answer in reverse order.
    for inc in first.iter().chain(&rest).rev() {
        b.push_response(inc.id, 1, 0).unwrap();
    }
    b.publish();
    let ids: Vec<u64> = g.responses_from(0).iter().map(|r| r.id).collect();
    assert_eq!(ids, (100..110).rev().collect::<Vec<_>>());
}

#[test]
fn event_suppression_both_directions() {
    let mem = Arc::new(HeapMem::new(LAYOUT.total_bytes()));
    let mut f = FrontendRing::init(Arc::clone(&mem), LAYOUT).unwrap();
    let mut b = BackendRing::new(mem, LAYOUT).unwrap();

    // Backend not sleeping yet after it consumed the first request: further requests do not
    // need a kick.
    f.push_request(&flush(1)).unwrap();
    assert!(f.publish());
    assert_eq!(batch(&mut b, 8).unwrap().len(), 1);
    f.push_request(&flush(2)).unwrap();
    assert!(
        !f.publish(),
        "backend is busy (req_event not re-armed): no kick"
    );
    // Backend arms the event before sleeping; it sees the pending request and stays awake.
    assert!(b.prepare_to_sleep());
    assert_eq!(batch(&mut b, 8).unwrap().len(), 1);
    // Now empty: arming reports nothing, and the next publish must kick.
    assert!(!b.prepare_to_sleep());
    f.push_request(&flush(3)).unwrap();
    assert!(f.publish(), "backend sleeps: must kick");
    assert_eq!(batch(&mut b, 8).unwrap().len(), 1);

    // Responses: frontend polled rsp_event = 1, first response notifies.
    b.push_response(1, 1, 0).unwrap();
    assert!(b.publish());
    // Frontend has not re-armed: no notify for the next one.
    b.push_response(2, 1, 0).unwrap();
    assert!(!b.publish(), "frontend is polling: no notify");
    assert_eq!(f.poll_response().unwrap().id, 1);
    assert_eq!(f.poll_response().unwrap().id, 2);
    assert!(!f.prepare_to_sleep());
    b.push_response(3, 1, 0).unwrap();
    assert!(b.publish(), "frontend sleeps: must notify");
    // Nothing new to publish: no notify.
    assert!(!b.publish());
}

#[test]
fn overflowing_req_prod_breaks_the_ring() {
    let (mut b, mut g) = pair(LAYOUT).unwrap();
    g.set_req_prod(33); // one more than the 32 entries
    let e = batch(&mut b, 100).unwrap_err();
    assert!(matches!(e, RingError::Overflow { req_prod: 33, .. }), "{e}");
    // It stays broken, and does not claim requests.
    assert!(batch(&mut b, 100).is_err());
    assert!(!b.has_requests());
    assert_eq!(b.in_flight(), 0);

    let (mut b, mut g) = pair(LAYOUT).unwrap();
    g.set_req_prod(u32::MAX); // "negative": way ahead in wrapping arithmetic
    assert!(matches!(
        batch(&mut b, 100),
        Err(RingError::Overflow { .. })
    ));
}

#[test]
fn overflow_counts_requests_still_in_flight() {
    let (mut b, mut g) = pair(LAYOUT).unwrap();
    for id in 0..32 {
        g.push(&flush(id));
    }
    g.publish();
    assert_eq!(batch(&mut b, 100).unwrap().len(), 32);
    // All 32 slots belong to unanswered requests; one more request would overwrite one.
    g.push(&flush(99));
    g.publish();
    assert!(matches!(
        batch(&mut b, 100),
        Err(RingError::Overflow { ahead: 33, .. })
    ));
}

#[test]
fn req_prod_moving_backwards_breaks_the_ring() {
    let (mut b, mut g) = pair(LAYOUT).unwrap();
    for id in 0..5 {
        g.push(&flush(id));
    }
    g.publish();
    assert_eq!(batch(&mut b, 100).unwrap().len(), 5);
    g.set_req_prod(3);
    assert!(matches!(
        batch(&mut b, 100),
        Err(RingError::Overflow { req_prod: 3, .. })
    ));
}

#[test]
fn duplicate_in_flight_id_breaks_the_ring() {
    let (mut b, mut g) = pair(LAYOUT).unwrap();
    g.push(&flush(5));
    g.push(&flush(6));
    g.push(&flush(5));
    g.publish();
    let mut out = Vec::new();
    assert_eq!(b.next_batch(10, &mut out), Err(RingError::DuplicateId(5)));
    assert_eq!(out.len(), 2, "requests before the violation stay valid");

    // An id may be reused once it has been answered.
    let (mut b, mut g) = pair(LAYOUT).unwrap();
    g.push(&flush(5));
    g.publish();
    assert_eq!(batch(&mut b, 10).unwrap().len(), 1);
    b.push_response(5, 1, 0).unwrap();
    b.publish();
    g.push(&flush(5));
    g.publish();
    assert_eq!(batch(&mut b, 10).unwrap().len(), 1);
}

#[test]
fn garbage_commands_are_refused_not_fatal() {
    let (mut b, mut g) = pair(LAYOUT).unwrap();
    let mut junk = [0xffu8; 64];
    junk[..8].copy_from_slice(&1u64.to_le_bytes());
    g.push_bytes(&junk);
    g.push(&RequestEntry::page_op(2, cmd::CONTROL, 0, [0; 3], 0, 0));
    g.push(&RequestEntry::page_op(3, 77, 0, [0; 3], 0, 0));
    g.publish();
    let inc = batch(&mut b, 10).unwrap();
    assert_eq!(inc.len(), 3);
    for i in &inc {
        let status = i.req.unwrap_err().status();
        b.push_response(i.id, status, 0).unwrap();
    }
    b.publish();
    let st: Vec<i32> = g.responses_from(0).iter().map(|r| r.status).collect();
    assert_eq!(st, vec![-errno::EINVAL, -errno::EPERM, -errno::ENOSYS]);
    assert!(b.broken().is_none());
}

#[test]
fn slot_out_of_range_is_refused_and_slot_io_never_panics() {
    let (mut b, mut g) = pair(LAYOUT).unwrap();
    g.push(&put(1, 4));
    g.publish();
    let inc = batch(&mut b, 10).unwrap();
    assert_eq!(
        inc[0].req,
        Err(tmem_abi::Refusal::SlotOutOfRange { slot: 4, slots: 4 })
    );
    // Direct slot I/O out of range: zero page in, write dropped.
    let before = g.snapshot();
    let src = b.slot_source(4);
    assert!(!src.is_valid());
    let mut p = [1u8; 4096];
    src.read_page(&mut p);
    assert_eq!(p, [0u8; 4096]);
    let mut sink = b.slot_sink(u32::MAX);
    assert!(!sink.is_valid());
    sink.write_page(&[9u8; 4096]);
    sink.write_zero_page();
    sink.write_filled_page(0x1234);
    assert_eq!(g.snapshot(), before);
}

#[test]
fn a_filled_page_is_written_into_its_slot_only() {
    let (mut b, g) = pair(LAYOUT).unwrap();
    let before = g.snapshot();
    b.slot_sink(2).write_filled_page(0x0807_0605_0403_0201);
    let mut p = [0u8; 4096];
    g.read_slot(2, &mut p);
    for (i, &x) in p.iter().enumerate() {
        assert_eq!(x, (i % 8) as u8 + 1, "byte {i}");
    }
    // Nothing outside the slot changed.
    let off = LAYOUT.slot_offset(2).unwrap();
    let after = g.snapshot();
    assert_eq!(after[off..off + 4096], p[..]);
    assert_eq!(after[..off], before[..off]);
    assert_eq!(after[off + 4096..], before[off + 4096..]);
}

#[test]
fn response_for_unknown_id_is_an_error() {
    let (mut b, mut g) = pair(LAYOUT).unwrap();
    assert_eq!(b.push_response(1, 1, 0), Err(RingError::NotInFlight(1)));
    g.push(&flush(1));
    g.publish();
    batch(&mut b, 10).unwrap();
    b.push_response(1, 1, 0).unwrap();
    assert_eq!(b.push_response(1, 1, 0), Err(RingError::NotInFlight(1)));
    assert!(!b.publish() || g.rsp_prod() == 1);
    assert_eq!(g.rsp_prod(), 1);
}

#[test]
fn guest_that_never_reads_responses_cannot_wedge_or_overrun() {
    // Guard: a byte pattern in the data area that must never change.
    let layout = Layout {
        ring_pages: 1,
        data_slots: 1,
    };
    let (mut b, mut g) = pair(layout).unwrap();
    g.write_slot(0, &[0xeeu8; 4096]);
    let n = b.entries();
    let mut answered = 0u64;
    // The guest fills the ring, scribbles on the event fields, then produces one more
    // request before anything was answered: caught, not obeyed, and nothing outside the ring
    // moves.
    for k in 0..u64::from(n) {
        g.push(&flush(k));
    }
    g.set_req_event(0xdead_beef);
    g.set_rsp_event(7);
    g.publish();
    let inc = batch(&mut b, usize::MAX).unwrap();
    assert_eq!(inc.len() as u32, n);
    assert!(b.in_flight() <= n as usize);
    g.push(&flush(999_999_999));
    g.publish();
    assert!(batch(&mut b, usize::MAX).is_err());
    // Answering what was consumed stays inside the ring even on a broken ring.
    for i in &inc {
        b.push_response(i.id, 1, 0).unwrap();
        answered += 1;
    }
    b.publish();
    let mut page = [0u8; 4096];
    g.read_slot(0, &mut page);
    assert_eq!(page, [0xeeu8; 4096], "data area untouched");
    assert_eq!(answered, u64::from(n));

    // Without the over-production, many laps work and never block.
    let (mut b, mut g) = pair(layout).unwrap();
    for round in 0..50u64 {
        for k in 0..u64::from(n) {
            g.push(&flush(round * 1000 + k));
        }
        g.publish();
        for i in batch(&mut b, usize::MAX).unwrap() {
            b.push_response(i.id, 1, 0).unwrap();
        }
        b.publish();
        assert_eq!(b.in_flight(), 0);
        assert_eq!(g.rsp_prod(), (round as u32 + 1) * n);
    }
}

#[test]
fn frontend_rejects_impossible_rsp_prod() {
    let mem = Arc::new(HeapMem::new(LAYOUT.total_bytes()));
    let mut f = FrontendRing::init(Arc::clone(&mem), LAYOUT).unwrap();
    f.push_request(&flush(1)).unwrap();
    f.publish();
    // A hostile backend claims 5 responses to 1 request.
    let hdr = RingMem::new(Arc::clone(&mem), LAYOUT).unwrap();
    hdr.index(Index::ReqProd)
        .store(1, std::sync::atomic::Ordering::SeqCst);
    hdr.index(Index::RspProd)
        .store(5, std::sync::atomic::Ordering::SeqCst);
    assert!(matches!(
        f.try_poll_response(),
        Err(RingError::BadResponseIndex { rsp_prod: 5, .. })
    ));
    assert!(f.poll_response().is_none());
    assert!(f.broken().is_some());
}

#[test]
fn frontend_full_when_unanswered() {
    let mem = Arc::new(HeapMem::new(LAYOUT.total_bytes()));
    let mut f = FrontendRing::init(mem, LAYOUT).unwrap();
    for id in 0..32 {
        f.push_request(&flush(id)).unwrap();
    }
    assert_eq!(f.space(), 0);
    assert_eq!(f.push_request(&flush(99)), Err(RingError::Full));
}

#[test]
fn two_threads_many_requests() {
    let layout = Layout {
        ring_pages: 1,
        data_slots: 32,
    };
    let mem = Arc::new(HeapMem::new(layout.total_bytes()));
    let mut f = FrontendRing::init(Arc::clone(&mem), layout).unwrap();
    let mut b = BackendRing::new(mem, layout).unwrap();
    const N: u64 = 20_000;
    let t = std::thread::spawn(move || {
        let mut done = 0u64;
        let mut v = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while done < N && std::time::Instant::now() < deadline {
            v.clear();
            b.next_batch(64, &mut v).unwrap();
            for i in &v {
                let Ok(Request::Put { slot, .. }) = i.req else {
                    panic!("{i:?}")
                };
                let mut p = [0u8; 4096];
                b.slot_source(slot).read_page(&mut p);
                let ok = p[0] as u64 == i.id % 251 && p[4095] as u64 == i.id % 251;
                b.push_response(i.id, if ok { 1 } else { -1 }, 0).unwrap();
                done += 1;
            }
            b.publish();
        }
        done
    });
    let mut sent = 0u64;
    let mut got = 0u64;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while got < N && std::time::Instant::now() < deadline {
        while sent < N && f.space() > 0 {
            let slot = (sent % 32) as u32;
            f.write_slot(slot, &[(sent % 251) as u8; 4096]);
            f.push_request(&put(sent, slot)).unwrap();
            sent += 1;
        }
        f.publish();
        while let Some(r) = f.poll_response() {
            assert_eq!(r.status, 1, "id {}", r.id);
            got += 1;
        }
    }
    assert_eq!(got, N);
    assert_eq!(t.join().unwrap(), N);
}

#[test]
fn poll_policy_spins_then_gives_up() {
    let p = PollPolicy {
        spin: std::time::Duration::from_micros(200),
        clock_every: 8,
    };
    let start = std::time::Instant::now();
    assert!(!p.spin_until(|| false));
    assert!(start.elapsed() >= std::time::Duration::from_micros(200));
    let mut n = 0;
    assert!(p.spin_until(|| {
        n += 1;
        n == 10
    }));
    assert!(!PollPolicy::sleep_at_once().spin_until(|| false));
    // The full wait on a real ring: nothing there -> arms req_event and sleeps.
    let (mut b, mut g) = pair(LAYOUT).unwrap();
    let mut slept = false;
    assert_eq!(
        PollPolicy::sleep_at_once().wait(&mut b, || slept = true),
        WaitOutcome::Slept
    );
    assert!(slept);
    assert_eq!(g.req_event(), 1);
    g.push(&flush(1));
    assert!(g.publish(), "sleeping backend must be kicked");
    assert_eq!(
        PollPolicy::default().wait(&mut b, || unreachable!()),
        WaitOutcome::Spun
    );
    assert_eq!(PollPolicy::default().spin, PollPolicy::DEFAULT_SPIN);
}

/// A backend dies with requests in every state: answered and published, answered but not
/// published, answered with only the mark written (killed inside `push_response`), consumed
/// but not answered, not consumed. The next backend takes the ring over: the guest gets every
/// answer the dead one computed, unchanged, and the rest are served as new requests.
#[test]
fn resume_answers_what_the_previous_backend_carried_out_and_serves_the_rest() {
    let (mut b1, mut g) = pair(LAYOUT).unwrap();
    let mem = Arc::clone(b1.mem());
    for id in 1..=6 {
        g.push(&put(id, (id % 4) as u32));
    }
    g.publish();
    let got = batch(&mut b1, 5).unwrap();
    assert_eq!(got.len(), 5);
    b1.push_response(1, 1, 0).unwrap();
    assert!(b1.publish() || g.rsp_prod() == 1);
    b1.push_response(2, -28, 0).unwrap();
    b1.push_response(3, 1, tmem_abi::rsp_flags::REATTACHED)
        .unwrap();
    // Killed inside the answer to request 4: the mark is written, the response is not.
    let mut torn = put(4, 0).to_bytes();
    torn[56..64].copy_from_slice(&crate::backend::answer_mark(0, 0).to_le_bytes());
    g.write_entry_bytes(3, &torn);
    // Request 5 was consumed but not answered; request 6 not consumed.
    drop(b1);
    assert_eq!(g.rsp_prod(), 1);

    let (mut b2, r) = BackendRing::resume(Arc::clone(&mem), LAYOUT).unwrap();
    assert_eq!(
        r,
        Resumed {
            answered: 3,
            pending: 2
        }
    );
    let pending = b2.peek_pending();
    assert_eq!(pending.len(), 2);
    assert!(matches!(pending[0], Ok(Request::Put { .. })));
    b2.publish();
    let rsps = g.responses_from(0);
    let seen: Vec<(u64, i32, u32)> = rsps.iter().map(|r| (r.id, r.status, r.flags)).collect();
    assert_eq!(
        seen,
        [
            (1, 1, 0),
            (2, -28, 0),
            (3, 1, tmem_abi::rsp_flags::REATTACHED),
            (4, 0, 0)
        ]
    );
    // The unanswered ones come as new requests, in order, and nothing else.
    let got = batch(&mut b2, 64).unwrap();
    let ids: Vec<u64> = got.iter().map(|i| i.id).collect();
    assert_eq!(ids, [5, 6]);
    assert!(got.iter().all(|i| i.req.is_ok()));
    b2.push_response(5, 1, 0).unwrap();
    b2.push_response(6, 1, 0).unwrap();
    b2.publish();
    assert_eq!(g.rsp_prod(), 6);
    assert_eq!(
        g.responses_from(4).iter().map(|r| r.id).collect::<Vec<_>>(),
        [5, 6]
    );
    // The ring goes on as usual, across the wrap.
    for round in 0..3u64 {
        for k in 0..20 {
            g.push(&flush(100 + round * 20 + k));
        }
        g.publish();
        let got = batch(&mut b2, 64).unwrap();
        assert_eq!(got.len(), 20);
        for i in got {
            b2.push_response(i.id, 1, 0).unwrap();
        }
        b2.publish();
    }
    assert_eq!(g.rsp_prod(), 66);
}

/// A ring whose indices are more than a ring apart cannot be taken over; a ring with nothing
/// in flight is taken over as it is.
#[test]
fn resume_refuses_inconsistent_indices_and_takes_an_idle_ring() {
    let (b1, mut g) = pair(LAYOUT).unwrap();
    let mem = Arc::clone(b1.mem());
    drop(b1);
    let (b2, r) = BackendRing::resume(Arc::clone(&mem), LAYOUT).unwrap();
    assert_eq!(
        r,
        Resumed {
            answered: 0,
            pending: 0
        }
    );
    assert!(b2.peek_pending().is_empty());
    drop(b2);
    g.set_req_prod(LAYOUT.ring_entries() + 1);
    assert!(matches!(
        BackendRing::resume(mem, LAYOUT),
        Err(RingError::Overflow { .. })
    ));
}

/// A request whose reserved word looks like an answer mark (only a hostile guest writes one)
/// is "answered" with what it says: the guest fools only itself.
#[test]
fn a_forged_mark_only_answers_the_forger() {
    let (b1, mut g) = pair(LAYOUT).unwrap();
    let mem = Arc::clone(b1.mem());
    drop(b1);
    let mut forged = put(9, 0).to_bytes();
    forged[56..64].copy_from_slice(&crate::backend::answer_mark(1, 0).to_le_bytes());
    g.push_bytes(&forged);
    g.push(&put(10, 1));
    g.publish();
    let (mut b2, r) = BackendRing::resume(mem, LAYOUT).unwrap();
    assert_eq!((r.answered, r.pending), (1, 1));
    let got = batch(&mut b2, 8).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, 10);
}

/// Whatever a guest (or a dead backend) left in the ring, taking it over is bounded and never
/// panics: an error, or at most a ring's worth of answered and pending requests, after which
/// the ring serves as usual.
#[test]
fn resume_over_arbitrary_ring_contents_is_bounded() {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let size = LAYOUT.ring_entries();
    for _ in 0..500 {
        let (b1, mut g) = pair(LAYOUT).unwrap();
        let mem = Arc::clone(b1.mem());
        drop(b1);
        for i in 0..size {
            let mut e = [0u8; 64];
            for c in e.chunks_exact_mut(8) {
                let w = next();
                // Often a valid answer mark, so long answered prefixes happen too.
                let w = if w % 3 == 0 {
                    crate::backend::answer_mark(w as i32, (w >> 40) as u32 & 1)
                } else {
                    w
                };
                c.copy_from_slice(&w.to_le_bytes());
            }
            g.write_entry_bytes(i, &e);
        }
        let rsp = next() as u32;
        let req = if next() % 2 == 0 {
            rsp.wrapping_add((next() % u64::from(size + 1)) as u32)
        } else {
            next() as u32
        };
        g.set_req_prod(req);
        // The response producer the dead backend left.
        RingMem::new(Arc::clone(&mem), LAYOUT)
            .unwrap()
            .index(Index::RspProd)
            .store(rsp, std::sync::atomic::Ordering::SeqCst);
        let (mut b, r) = match BackendRing::resume(mem, LAYOUT) {
            Ok(x) => x,
            Err(e) => {
                assert!(req.wrapping_sub(rsp) > size, "{e}");
                continue;
            }
        };
        assert_eq!(r.answered + r.pending, req.wrapping_sub(rsp));
        assert!(b.peek_pending().len() as u32 <= r.pending);
        b.publish();
        assert_eq!(g.rsp_prod(), rsp.wrapping_add(r.answered));
        let mut v = Vec::new();
        let _ = b.next_batch(64, &mut v);
        assert!(v.len() as u32 <= r.pending);
    }
}
