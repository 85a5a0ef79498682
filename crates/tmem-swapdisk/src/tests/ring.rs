//! The whole data path over real shared memory: tmem-blkif's mock frontend writes requests
//! into a ring in a memfd and data into granted pages in another; `serve_batch` takes them
//! off the `BlkBackend`, executes them on a `SwapDisk` and answers.

use crate::mock::{GrantIo, TestDisk};
use crate::serve_batch;
use std::collections::HashMap;
use tmem_blkif::abi::{op, status};
use tmem_blkif::mock::{full_page, pair, MockGrantPages};
use tmem_blkif::{DiskParams, Segment};
use tmem_store::{StoreConfig, PAGE_SIZE};

const SECTORS: u64 = 256 * 8;

fn page(tag: u8) -> [u8; PAGE_SIZE] {
    let mut p = [0u8; PAGE_SIZE];
    for (i, b) in p.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(7) ^ tag | 0x80;
    }
    p
}

fn small_store() -> StoreConfig {
    StoreConfig {
        mem_limit_bytes: 20 * PAGE_SIZE as u64,
        default_persistent_share_percent: 100,
        ..StoreConfig::default()
    }
}

#[test]
fn every_request_kind_over_the_ring() {
    let (mut back, mut front) = pair(1, DiskParams::swap_disk(SECTORS)).unwrap();
    let guest = MockGrantPages::create(64).unwrap();
    let grants = guest.map_again().unwrap();
    let mut t = TestDisk::new(small_store(), SECTORS, None);
    let mut batch = Vec::new();
    let mut serve = |t: &mut TestDisk, back: &mut _| {
        let mut io = GrantIo { pages: &grants };
        serve_batch(back, t.disk(), &mut io, 64, &mut batch, None).unwrap()
    };

    // 30 one-page WRITEs (more than memory lets the disk keep: some spill), one per grant.
    for k in 0..30u32 {
        guest.write(k, 0, &page(k as u8)).unwrap();
        front.push_rw(
            op::WRITE,
            u64::from(k),
            u64::from(k) * 8 * 3,
            &[full_page(k)],
        );
    }
    front.push_flush(100);
    front.publish();
    let served = serve(&mut t, &mut back);
    assert_eq!(served.answered, 31);
    let rsp = front.take_responses();
    assert_eq!(rsp.len(), 31);
    assert!(rsp.iter().all(|r| r.status == status::OKAY), "{rsp:?}");
    let ops: HashMap<u64, u8> = rsp.iter().map(|r| (r.id, r.operation)).collect();
    assert_eq!(ops[&100], op::FLUSH_DISKCACHE);
    assert_eq!(ops[&7], op::WRITE);

    // Read them back into other grants; a two-segment read across pages; a partial read.
    for k in 0..30u32 {
        guest.write(32 + (k % 32), 0, &[0; PAGE_SIZE]).unwrap();
    }
    for k in 0..30u32 {
        front.push_rw(
            op::READ,
            1000 + u64::from(k),
            u64::from(k) * 8 * 3,
            &[full_page(32 + k)],
        );
        front.publish();
        serve(&mut t, &mut back);
        let r = front.take_responses();
        assert_eq!((r.len(), r[0].status), (1, status::OKAY));
        let mut got = [0u8; PAGE_SIZE];
        guest.read(32 + k, 0, &mut got).unwrap();
        assert_eq!(got, page(k as u8), "disk page {}", k * 3);
    }
    let half = Segment {
        gref: 40,
        first_sect: 2,
        last_sect: 5,
    };
    guest.write(40, 0, &[0x11; PAGE_SIZE]).unwrap();
    front.push_rw(op::READ, 2000, 3 * 8 + 6, &[half]);
    front.publish();
    serve(&mut t, &mut back);
    assert_eq!(front.take_responses()[0].status, status::OKAY);
    let mut got = [0u8; PAGE_SIZE];
    guest.read(40, 0, &mut got).unwrap();
    let mut want = [0x11u8; PAGE_SIZE];
    want[1024..2048].copy_from_slice(&page(1)[3072..4096]); // disk page 3 = write 1
    want[2048..3072].fill(0); // disk page 4: never written
    assert_eq!(got, want);

    // DISCARD pages 0..9, then they read as zeroes.
    front.push_discard(3000, 0, 72, 0);
    front.push_rw(op::READ, 3001, 3 * 8, &[full_page(41)]);
    front.publish();
    serve(&mut t, &mut back);
    let r = front.take_responses();
    assert!(r.iter().all(|r| r.status == status::OKAY), "{r:?}");
    guest.read(41, 0, &mut got).unwrap();
    assert_eq!(got, [0; PAGE_SIZE]);

    // Refused by the parser, or failing in the disk: answered, and nothing else happens.
    front.push_rw(op::WRITE, 4000, SECTORS - 4, &[full_page(0)]); // past the end
    front.push_indirect(4001, op::READ, 1);
    front.push_discard(4002, 0, 8, 1); // secure discard: not offered
    front.push_rw(op::WRITE, 4003, 8 * 200, &[full_page(9999)]); // a grant the guest lacks
    front.push_rw(op::READ, 4004, 8 * 12, &[full_page(9999)]);
    front.push_rw(op::FLUSH_DISKCACHE, 4005, 8 * 201, &[full_page(5)]); // a FUA write
    front.publish();
    serve(&mut t, &mut back);
    let st: HashMap<u64, i16> = front
        .take_responses()
        .iter()
        .map(|r| (r.id, r.status))
        .collect();
    assert_eq!(st[&4000], status::ERROR);
    assert_eq!(st[&4001], status::EOPNOTSUPP);
    assert_eq!(st[&4002], status::EOPNOTSUPP);
    assert_eq!(st[&4003], status::ERROR);
    assert_eq!(st[&4004], status::ERROR);
    assert_eq!(st[&4005], status::OKAY);
    assert!(
        !t.disk().syncer().pending(),
        "the FUA write was made durable"
    );
    // The failed write left its page as it was.
    front.push_rw(op::READ, 5000, 8 * 200, &[full_page(42)]);
    front.push_rw(op::READ, 5001, 8 * 201, &[full_page(43)]);
    front.publish();
    serve(&mut t, &mut back);
    assert_eq!(front.take_responses().len(), 2);
    guest.read(42, 0, &mut got).unwrap();
    assert_eq!(got, [0; PAGE_SIZE]);
    guest.read(43, 0, &mut got).unwrap();
    assert_eq!(got, page(5));
    let s = t.disk().stats();
    assert!(s.spill_writes > 0 && s.store_writes > 0, "{s:?}");
}

#[test]
fn a_ring_broken_by_the_guest_still_answers_what_it_took() {
    let (mut back, mut front) = pair(1, DiskParams::swap_disk(SECTORS)).unwrap();
    let guest = MockGrantPages::create(4).unwrap();
    let grants = guest.map_again().unwrap();
    let mut t = TestDisk::new(small_store(), SECTORS, None);
    guest.write(0, 0, &page(1)).unwrap();
    front.push_rw(op::WRITE, 1, 0, &[full_page(0)]);
    front.push_rw(op::WRITE, 1, 8, &[full_page(0)]); // the same id again
    front.publish();
    let mut batch = Vec::new();
    let mut io = GrantIo { pages: &grants };
    let e = serve_batch(&mut back, t.disk(), &mut io, 64, &mut batch, None).unwrap_err();
    assert!(
        matches!(
            e,
            crate::ServeError::Ring(tmem_blkif::RingError::DuplicateId(1))
        ),
        "{e}"
    );
    let r = front.take_responses();
    assert_eq!((r.len(), r[0].id, r[0].status), (1, 1, status::OKAY));
    // The guest's data stays on the disk across a restart of the store.
    t.restart();
    let (mut back, mut front) = pair(1, DiskParams::swap_disk(SECTORS)).unwrap();
    front.push_rw(op::READ, 2, 0, &[full_page(1)]);
    front.publish();
    serve_batch(&mut back, t.disk(), &mut io, 64, &mut batch, None).unwrap();
    assert_eq!(front.take_responses()[0].status, status::OKAY);
    let mut got = [0u8; PAGE_SIZE];
    guest.read(1, 0, &mut got).unwrap();
    assert_eq!(got, page(1));
}

/// A tmemd killed in the middle of a batch — requests taken and journaled, some executed
/// and answered into their slots but nothing published — and a new backend taking the ring
/// over from the journal: every request is answered exactly once, the answers written into
/// slots by the dead backend are never read as requests, and the disk holds every write.
#[test]
fn a_ring_taken_over_from_the_journal_answers_every_request_once() {
    use crate::{ring_identity, RingJournal};
    use tmem_blkif::mock::{MemfdMem, MockFrontend};
    use tmem_blkif::BlkBackend;

    let front_mem = MemfdMem::create(PAGE_SIZE).unwrap();
    let first_mem = front_mem.map_again().unwrap();
    let second_mem = front_mem.map_again().unwrap();
    let mut front = MockFrontend::new(front_mem, 1).unwrap();
    let params = DiskParams::swap_disk(SECTORS);
    let mut back = BlkBackend::new(first_mem, 1, params).unwrap();
    let guest = MockGrantPages::create(32).unwrap();
    let grants = guest.map_again().unwrap();
    let mut io = GrantIo { pages: &grants };
    let mut t = TestDisk::new(small_store(), SECTORS, None);
    let jpath = t.dir.0.join("test.ring");
    let ident = ring_identity(&[7], 3);
    let mut journal = RingJournal::create(&jpath, ident, back.entries(), 0).unwrap();

    // A first batch served in full: 8 writes, answered and published.
    for k in 0..8u32 {
        guest.write(k, 0, &page(k as u8)).unwrap();
        front.push_rw(op::WRITE, u64::from(k), u64::from(k) * 8, &[full_page(k)]);
    }
    front.publish();
    let mut batch = Vec::new();
    let s = serve_batch(
        &mut back,
        t.disk(),
        &mut io,
        64,
        &mut batch,
        Some(&mut journal),
    )
    .unwrap();
    assert_eq!(s.answered, 8);
    assert_eq!(front.take_responses().len(), 8);

    // The second batch: 12 more writes (they wrap past slot 31 of the 32-slot ring) taken
    // and journaled; the first 5 executed and answered into their slots; then the kill.
    for k in 8..20u32 {
        guest.write(k, 0, &page(k as u8)).unwrap();
        front.push_rw(
            op::WRITE,
            100 + u64::from(k),
            u64::from(k) * 8,
            &[full_page(k)],
        );
    }
    front.publish();
    batch.clear();
    back.next_batch(64, &mut batch).unwrap();
    assert_eq!(batch.len(), 12);
    journal.record(&batch).unwrap();
    for inc in &batch[..5] {
        t.disk()
            .execute_blocking(inc.req.as_ref().unwrap(), &mut io)
            .unwrap();
        back.push_response(inc.id, status::OKAY).unwrap();
    }
    drop(back); // killed: nothing published
    drop(journal);
    assert!(front.take_responses().is_empty());
    // Two more requests arrive while no backend runs.
    for k in 20..22u32 {
        guest.write(k, 0, &page(k as u8)).unwrap();
        front.push_rw(
            op::WRITE,
            100 + u64::from(k),
            u64::from(k) * 8,
            &[full_page(k)],
        );
    }
    front.push_rw(op::READ, 500, 0, &[full_page(30)]);
    front.publish();

    // The new tmemd: the store restarted from its page file, the ring from the journal.
    t.restart();
    let state = RingJournal::read(&jpath).unwrap().expect("journal");
    assert_eq!((state.ident, state.consumed), (ident, 20));
    let (mut back, replayed) =
        BlkBackend::resume(second_mem, 1, params, state.consumed, |i| state.request(i)).unwrap();
    assert_eq!(replayed, 12);
    let mut journal = RingJournal::reopen(&jpath, back.entries()).unwrap();
    let s = serve_batch(
        &mut back,
        t.disk(),
        &mut io,
        64,
        &mut batch,
        Some(&mut journal),
    )
    .unwrap();
    assert_eq!((s.answered, s.errors), (15, 0));
    let rsp = front.take_responses();
    let mut ids: Vec<u64> = rsp.iter().map(|r| r.id).collect();
    ids.sort_unstable();
    let want: Vec<u64> = (108..122).chain([500]).collect();
    assert_eq!(ids, want, "each outstanding request answered once");
    assert!(rsp.iter().all(|r| r.status == status::OKAY), "{rsp:?}");
    let mut got = [0u8; PAGE_SIZE];
    guest.read(30, 0, &mut got).unwrap();
    assert_eq!(
        got,
        page(0),
        "the read after the takeover sees the first write"
    );
    for k in 0..22u32 {
        front.push_rw(
            op::READ,
            1000 + u64::from(k),
            u64::from(k) * 8,
            &[full_page(31)],
        );
        front.publish();
        serve_batch(&mut back, t.disk(), &mut io, 64, &mut batch, None).unwrap();
        assert_eq!(front.take_responses()[0].status, status::OKAY);
        guest.read(31, 0, &mut got).unwrap();
        assert_eq!(got, page(k as u8), "disk page {k}");
    }
}

/// A journal that does not cover what the ring shows (another ring's, or one that fell
/// behind) is refused instead of replaying the wrong requests.
#[test]
fn a_journal_that_does_not_fit_the_ring_is_refused() {
    use tmem_blkif::mock::{MemfdMem, MockFrontend};
    use tmem_blkif::{BlkBackend, ResumeError};

    let front_mem = MemfdMem::create(PAGE_SIZE).unwrap();
    let back_mem = front_mem.map_again().unwrap();
    let again = front_mem.map_again().unwrap();
    let mut front = MockFrontend::new(front_mem, 1).unwrap();
    let params = DiskParams::swap_disk(SECTORS);
    for k in 0..4u64 {
        front.push_rw(op::READ, k, 0, &[full_page(0)]);
    }
    front.publish();
    // Consumed beyond what the guest produced.
    let e = BlkBackend::resume(back_mem, 1, params, 5, |_| None).unwrap_err();
    assert!(matches!(e, ResumeError::Indexes { .. }), "{e}");
    // Consumed 2, but the journal has no copies.
    let e = BlkBackend::resume(again, 1, params, 2, |_| None).unwrap_err();
    assert_eq!(e, ResumeError::Missing(0));
}
