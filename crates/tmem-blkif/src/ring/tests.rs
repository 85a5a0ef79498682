//! The backend ring against the mock frontend, over two mappings of one memfd.

use super::*;
use crate::abi::{op, status, ENTRY_SIZE};
use crate::mock::{full_page, pair, MemfdMem, MockFrontend};
use crate::RingSetupError;
use proptest::prelude::*;
use std::time::{Duration, Instant};

const DISK: u64 = 1 << 16;

fn setup() -> (BlkBackend<MemfdMem>, MockFrontend<MemfdMem>) {
    pair(1, DiskParams::swap_disk(DISK)).expect("ring pair")
}

fn batch(back: &mut BlkBackend<MemfdMem>) -> Result<Vec<Incoming>, RingError> {
    let mut out = Vec::new();
    back.next_batch(usize::MAX, &mut out).map(|()| out)
}

#[test]
fn one_page_ring_has_32_entries_and_sixteen_pages_512() {
    assert_eq!(setup().0.entries(), 32);
    let (back, front) = pair(16, DiskParams::swap_disk(DISK)).unwrap();
    assert_eq!((back.entries(), front.entries()), (512, 512));
}

#[test]
fn bad_ring_geometry_is_a_setup_error() {
    let d = DiskParams::swap_disk(DISK);
    let mem = MemfdMem::create(4 * crate::PAGE_SIZE).unwrap();
    assert_eq!(
        BlkBackend::new(mem.map_again().unwrap(), 3, d).unwrap_err(),
        RingSetupError::BadPageCount(3)
    );
    assert_eq!(
        BlkBackend::new(mem.map_again().unwrap(), 32, d).unwrap_err(),
        RingSetupError::BadPageCount(32)
    );
    assert!(matches!(
        BlkBackend::new(mem, 8, d).unwrap_err(),
        RingSetupError::TooSmall { .. }
    ));
}

#[test]
fn every_request_kind_round_trips_with_id_and_operation_echoed() {
    let (mut back, mut front) = setup();
    front.push_rw(op::READ, 10, 0, &[full_page(1)]);
    front.push_rw(op::WRITE, 11, 8, &[full_page(2), full_page(3)]);
    front.push_flush(12);
    front.push_rw(op::FLUSH_DISKCACHE, 13, 24, &[full_page(4)]);
    front.push_discard(14, 0, 64, 0);
    assert!(front.publish(), "first request must kick a fresh backend");
    let got = batch(&mut back).unwrap();
    let kinds: Vec<_> = got
        .iter()
        .map(|i| match i.req {
            Ok(BlkRequest::Read(_)) => "read",
            Ok(BlkRequest::Write { flush: false, .. }) => "write",
            Ok(BlkRequest::Flush) => "flush",
            Ok(BlkRequest::Write { flush: true, .. }) => "fua-write",
            Ok(BlkRequest::Discard { .. }) => "discard",
            Err(_) => "refused",
        })
        .collect();
    assert_eq!(kinds, ["read", "write", "flush", "fua-write", "discard"]);
    assert_eq!(back.in_flight(), 5);
    for i in &got {
        back.push_response(i.id, status::OKAY).unwrap();
    }
    assert!(back.publish());
    let rsp = front.take_responses();
    let echoed: Vec<_> = rsp.iter().map(|r| (r.id, r.operation, r.status)).collect();
    assert_eq!(
        echoed,
        [
            (10, op::READ, 0),
            (11, op::WRITE, 0),
            (12, op::FLUSH_DISKCACHE, 0),
            (13, op::FLUSH_DISKCACHE, 0),
            (14, op::DISCARD, 0)
        ]
    );
    assert_eq!(back.in_flight(), 0);
}

#[test]
fn refused_requests_are_answered_with_their_status_and_the_ring_goes_on() {
    let (mut back, mut front) = setup();
    front.push_rw(200, 1, 0, &[full_page(1)]); // unknown op
    front.push_rw(op::READ, 2, DISK, &[full_page(1)]); // past the end
    front.push_indirect(3, op::READ, 40);
    front.push_rw(op::READ, 4, 0, &[full_page(1)]); // fine
    front.publish();
    let got = batch(&mut back).unwrap();
    assert_eq!(got.len(), 4);
    for i in &got {
        let st = match &i.req {
            Ok(_) => status::OKAY,
            Err(r) => r.status(),
        };
        back.push_response(i.id, st).unwrap();
    }
    back.publish();
    let rsp: Vec<_> = front
        .take_responses()
        .iter()
        .map(|r| (r.id, r.operation, r.status))
        .collect();
    assert_eq!(
        rsp,
        [
            (1, 200, status::EOPNOTSUPP),
            (2, op::READ, status::ERROR),
            (3, op::INDIRECT, status::EOPNOTSUPP),
            (4, op::READ, status::OKAY)
        ]
    );
    assert!(back.broken().is_none());
}

#[test]
fn responses_may_come_in_any_order() {
    let (mut back, mut front) = setup();
    for id in 0..5 {
        front.push_rw(op::READ, id, id * 8, &[full_page(1)]);
    }
    front.publish();
    assert_eq!(batch(&mut back).unwrap().len(), 5);
    for id in [3, 0, 4, 1, 2] {
        back.push_response(id, status::OKAY).unwrap();
    }
    back.publish();
    let ids: Vec<u64> = front.take_responses().iter().map(|r| r.id).collect();
    assert_eq!(ids, [3, 0, 4, 1, 2]);
}

#[test]
fn a_batch_takes_at_most_max_and_leaves_the_rest() {
    let (mut back, mut front) = setup();
    for id in 0..10 {
        front.push_rw(op::READ, id, 0, &[full_page(1)]);
    }
    front.publish();
    let mut out = Vec::new();
    back.next_batch(4, &mut out).unwrap();
    assert_eq!(out.len(), 4);
    assert!(back.has_requests());
    back.next_batch(100, &mut out).unwrap();
    assert_eq!(out.len(), 10);
    assert!(!back.has_requests());
}

#[test]
fn a_full_ring_is_accepted() {
    let (mut back, mut front) = setup();
    for id in 0..32 {
        front.push_rw(op::READ, id, 0, &[full_page(1)]);
    }
    front.publish();
    assert_eq!(batch(&mut back).unwrap().len(), 32);
}

#[test]
fn req_prod_more_than_a_ring_ahead_breaks_the_ring() {
    let (mut back, mut front) = setup();
    front.set_req_prod(33);
    let e = batch(&mut back).unwrap_err();
    assert_eq!(
        e,
        RingError::Overflow {
            req_prod: 33,
            req_cons: 0,
            size: 32
        }
    );
    assert_eq!(back.broken(), Some(&e));
    assert_eq!(
        back.in_flight(),
        0,
        "nothing consumed from a ring that overflowed"
    );
}

#[test]
fn req_prod_far_ahead_is_refused_without_consuming_anything() {
    let (mut back, mut front) = setup();
    front.set_req_prod(u32::MAX);
    assert!(matches!(batch(&mut back), Err(RingError::Overflow { .. })));
    assert_eq!(back.in_flight(), 0);
}

#[test]
fn unanswered_requests_count_against_the_ring() {
    // 20 consumed, unanswered: the guest may add 12, not 13.
    let (mut back, mut front) = setup();
    for id in 0..20 {
        front.push_rw(op::READ, id, 0, &[full_page(1)]);
    }
    front.publish();
    assert_eq!(batch(&mut back).unwrap().len(), 20);
    front.set_req_prod(20 + 13);
    assert!(matches!(batch(&mut back), Err(RingError::Overflow { .. })));
}

#[test]
fn req_prod_moving_backwards_breaks_the_ring() {
    let (mut back, mut front) = setup();
    for id in 0..5 {
        front.push_rw(op::READ, id, 0, &[full_page(1)]);
    }
    front.publish();
    assert_eq!(batch(&mut back).unwrap().len(), 5);
    front.set_req_prod(2);
    let e = batch(&mut back).unwrap_err();
    assert!(
        matches!(e, RingError::Overflow { req_prod: 2, .. }),
        "{e:?}"
    );
}

#[test]
fn a_broken_ring_stays_broken_and_reports_no_requests() {
    let (mut back, mut front) = setup();
    front.set_req_prod(1000);
    let e = batch(&mut back).unwrap_err();
    front.set_req_prod(1);
    assert_eq!(batch(&mut back).unwrap_err(), e);
    assert!(!back.has_requests());
    assert!(!back.prepare_to_sleep());
}

#[test]
fn duplicate_id_in_one_batch_disconnects_after_the_valid_requests() {
    let (mut back, mut front) = setup();
    front.push_rw(op::READ, 7, 0, &[full_page(1)]);
    front.push_rw(op::READ, 8, 0, &[full_page(1)]);
    front.push_rw(op::WRITE, 7, 0, &[full_page(1)]);
    front.publish();
    let mut out = Vec::new();
    let e = back.next_batch(usize::MAX, &mut out).unwrap_err();
    assert_eq!(e, RingError::DuplicateId(7));
    assert_eq!(
        out.len(),
        2,
        "the two requests before the duplicate stay valid"
    );
    assert_eq!(back.in_flight(), 2);
}

#[test]
fn duplicate_id_across_batches_disconnects_but_a_reused_answered_id_is_fine() {
    let (mut back, mut front) = setup();
    front.push_rw(op::READ, 7, 0, &[full_page(1)]);
    front.publish();
    batch(&mut back).unwrap();
    back.push_response(7, status::OKAY).unwrap();
    back.publish();
    // Answered: id 7 may be used again.
    front.push_rw(op::READ, 7, 0, &[full_page(1)]);
    front.publish();
    assert_eq!(batch(&mut back).unwrap().len(), 1);
    // Still in flight: reusing it now is a protocol violation.
    front.push_rw(op::READ, 7, 0, &[full_page(1)]);
    front.publish();
    assert_eq!(batch(&mut back).unwrap_err(), RingError::DuplicateId(7));
}

#[test]
fn answering_an_id_not_in_flight_is_an_error_and_writes_nothing() {
    let (mut back, mut front) = setup();
    assert_eq!(
        back.push_response(5, status::OKAY),
        Err(RingError::NotInFlight(5))
    );
    assert!(!back.publish());
    assert_eq!(front.rsp_prod(), 0);
    assert!(front.take_responses().is_empty());
}

#[test]
fn a_request_is_copied_once_and_later_scribbles_do_not_change_it() {
    let (mut back, mut front) = setup();
    front.push_rw(op::WRITE, 1, 8, &[full_page(42)]);
    front.publish();
    let got = batch(&mut back).unwrap();
    // The guest rewrites the slot after we consumed it.
    front.write_slot(0, &crate::abi::RawRequest([0xff; ENTRY_SIZE]));
    let Ok(BlkRequest::Write { io, .. }) = got[0].req else {
        panic!("{:?}", got[0]);
    };
    assert_eq!((io.sector(), io.segments()[0].gref), (8, 42));
    back.push_response(1, status::OKAY).unwrap();
    back.publish();
    assert_eq!(front.take_responses()[0].operation, op::WRITE);
}

#[test]
fn publish_notifies_only_when_rsp_event_is_passed() {
    let (mut back, mut front) = setup();
    for id in 0..3 {
        front.push_rw(op::READ, id, 0, &[full_page(1)]);
    }
    front.publish();
    batch(&mut back).unwrap();
    // The guest wants a kick only once the third response is out.
    front.set_rsp_event(3);
    back.push_response(0, status::OKAY).unwrap();
    assert!(!back.publish(), "rsp_prod 1 has not reached rsp_event 3");
    back.push_response(1, status::OKAY).unwrap();
    assert!(!back.publish());
    back.push_response(2, status::OKAY).unwrap();
    assert!(back.publish(), "rsp_prod 3 passed rsp_event 3");
    assert!(!back.publish(), "nothing new to publish");
}

#[test]
fn prepare_to_sleep_arms_req_event_and_sees_late_requests() {
    let (mut back, mut front) = setup();
    assert!(!back.prepare_to_sleep());
    assert_eq!(front.req_event(), 1);
    front.push_rw(op::READ, 1, 0, &[full_page(1)]);
    assert!(front.publish(), "armed backend must be kicked");
    batch(&mut back).unwrap();
    // Not re-armed: the next request needs no kick.
    front.push_rw(op::READ, 2, 0, &[full_page(1)]);
    assert!(!front.publish());
    // Requests arrived before the final check: do not sleep.
    assert!(back.prepare_to_sleep());
    assert_eq!(front.req_event(), 2);
}

#[test]
fn indices_wrap_around_u32_without_a_false_overflow() {
    let (mut back, mut front) = setup();
    let start = u32::MAX - 40;
    back.start_at(start);
    front.start_at(start);
    let mut next_id = 0u64;
    // Three full rings across the wrap point, answered in reverse order each time.
    for _ in 0..3 {
        for _ in 0..32 {
            front.push_rw(op::READ, next_id, 0, &[full_page(1)]);
            next_id += 1;
        }
        front.publish();
        let got = batch(&mut back).expect("no overflow across the wrap");
        assert_eq!(got.len(), 32);
        for i in got.iter().rev() {
            back.push_response(i.id, status::OKAY).unwrap();
        }
        back.publish();
        assert_eq!(front.take_responses().len(), 32);
    }
    // And the overflow check still bites after the wrap.
    front.set_req_prod(start.wrapping_add(96 + 33));
    assert!(matches!(batch(&mut back), Err(RingError::Overflow { .. })));
}

#[test]
fn indices_only_the_backend_writes_are_never_trusted() {
    let (mut back, mut front) = setup();
    front.scribble_backend_indices(1000, 7);
    front.push_rw(op::READ, 1, 0, &[full_page(1)]);
    front.publish();
    assert_eq!(batch(&mut back).unwrap().len(), 1);
    back.push_response(1, status::OKAY).unwrap();
    back.publish();
    // The backend wrote its own private index, not 1000 + 1.
    assert_eq!(front.rsp_prod(), 1);
    assert_eq!(front.response(0).id, 1);
}

/// A frontend thread and a backend thread over two mappings of one memfd, with real
/// concurrency: every request is answered exactly once, with its own id, across many ring
/// wraps.
#[test]
fn threads_exchange_many_requests_over_shared_memory() {
    const N: u64 = 20_000;
    let (mut back, mut front) = setup();
    let deadline = Instant::now() + Duration::from_secs(120);
    let server = std::thread::spawn(move || {
        let mut served = 0u64;
        let mut out = Vec::new();
        while served < N {
            assert!(Instant::now() < deadline, "backend: served {served} of {N}");
            out.clear();
            back.next_batch(16, &mut out)
                .expect("well-behaved frontend");
            for i in &out {
                let Ok(BlkRequest::Read(t)) = i.req else {
                    panic!("request {} refused: {:?}", i.id, i.req);
                };
                assert_eq!(t.sector(), (i.id % 1000) * 8, "request {}", i.id);
                back.push_response(i.id, status::OKAY).unwrap();
                served += 1;
            }
            back.publish();
            if out.is_empty() && !back.prepare_to_sleep() {
                std::thread::yield_now();
            }
        }
        served
    });
    let (mut sent, mut answered) = (0u64, 0u64);
    while answered < N {
        assert!(
            Instant::now() < deadline,
            "frontend: sent {sent}, answered {answered} of {N}"
        );
        while sent < N && sent - answered < u64::from(front.entries()) {
            front.push_rw(op::READ, sent, (sent % 1000) * 8, &[full_page(sent as u32)]);
            sent += 1;
        }
        front.publish();
        let rsp = front.take_responses();
        for r in &rsp {
            assert_eq!((r.id, r.status), (answered, status::OKAY));
            answered += 1;
        }
        if rsp.is_empty() {
            std::thread::yield_now();
        }
    }
    assert_eq!(server.join().unwrap(), N);
}

#[derive(Debug, Clone)]
enum GuestAction {
    Valid(u64),
    Garbage(Vec<u8>),
    SetReqProd(u32),
    Answer(usize),
    Batch(usize),
}

fn arb_guest_action() -> impl Strategy<Value = GuestAction> {
    prop_oneof![
        4 => (0u64..64).prop_map(GuestAction::Valid),
        2 => proptest::collection::vec(any::<u8>(), ENTRY_SIZE).prop_map(GuestAction::Garbage),
        1 => any::<u32>().prop_map(GuestAction::SetReqProd),
        3 => (0usize..40).prop_map(GuestAction::Answer),
        3 => (0usize..40).prop_map(GuestAction::Batch),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Whatever the guest writes: no panic, in-flight requests never exceed the ring, a
    /// broken ring consumes nothing more, and every response names a consumed request.
    #[test]
    fn hostile_guest_cannot_break_the_backend_invariants(
        actions in proptest::collection::vec(arb_guest_action(), 1..80)
    ) {
        let (mut back, mut front) = setup();
        let mut pending: Vec<u64> = Vec::new();
        let mut consumed = std::collections::HashSet::new();
        for a in actions {
            match a {
                GuestAction::Valid(id) => {
                    front.push_rw(op::READ, id, 0, &[full_page(1)]);
                    front.publish();
                }
                GuestAction::Garbage(b) => {
                    let mut raw = [0u8; ENTRY_SIZE];
                    raw.copy_from_slice(&b);
                    front.push_raw(&crate::abi::RawRequest(raw));
                    front.publish();
                }
                GuestAction::SetReqProd(v) => front.set_req_prod(v),
                GuestAction::Answer(k) => {
                    if !pending.is_empty() {
                        let id = pending.swap_remove(k % pending.len());
                        prop_assert!(back.push_response(id, status::OKAY).is_ok());
                        back.publish();
                        // Read at once: the guest may later scribble over its own slots.
                        for r in front.take_responses() {
                            prop_assert!(consumed.contains(&r.id), "response for unconsumed id {}", r.id);
                        }
                    }
                }
                GuestAction::Batch(max) => {
                    let was_broken = back.broken().is_some();
                    let mut out = Vec::new();
                    let r = back.next_batch(max, &mut out);
                    prop_assert!(out.len() <= max);
                    if was_broken {
                        prop_assert!(r.is_err() && out.is_empty());
                    }
                    for i in out {
                        consumed.insert(i.id);
                        pending.push(i.id);
                    }
                }
            }
            prop_assert!(back.in_flight() <= back.entries() as usize);
            prop_assert_eq!(back.in_flight(), pending.len());
        }
    }
}
