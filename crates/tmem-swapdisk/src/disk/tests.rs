//! Unit tests of the storage paths: every request kind, partial pages, spill, promote,
//! refusal reasons, sync, and the reconcile step after a kill between two writes.

use super::*;
use crate::mock::{TempDir, TestDisk};
use crate::{Segment, SegmentError};
use tmem_blkif::mock::full_page;
use tmem_store::StoreConfig;

/// Guest pages on the heap, gref = index.
struct VecIo(Vec<Page>);

impl VecIo {
    fn new(n: usize) -> VecIo {
        VecIo(vec![[0; PAGE_SIZE]; n])
    }
}

impl SegmentIo for VecIo {
    fn fetch(&mut self, segs: &[Segment], pages: &mut [Page]) -> Result<(), SegmentError> {
        for (k, (s, p)) in segs.iter().zip(pages).enumerate() {
            let src = self.0.get(s.gref as usize).ok_or(SegmentError {
                segment: k,
                gref: s.gref,
            })?;
            p[s.byte_range()].copy_from_slice(&src[s.byte_range()]);
        }
        Ok(())
    }
    fn deliver(&mut self, segs: &[Segment], pages: &[Page]) -> Result<(), SegmentError> {
        for (k, (s, p)) in segs.iter().zip(pages).enumerate() {
            let dst = self.0.get_mut(s.gref as usize).ok_or(SegmentError {
                segment: k,
                gref: s.gref,
            })?;
            dst[s.byte_range()].copy_from_slice(&p[s.byte_range()]);
        }
        Ok(())
    }
}

fn pattern(tag: u8) -> Page {
    let mut p = [0u8; PAGE_SIZE];
    for (i, b) in p.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(13) ^ tag | 1;
    }
    p
}

fn seg(gref: u32, first: u8, last: u8) -> Segment {
    Segment {
        gref,
        first_sect: first,
        last_sect: last,
    }
}

const SECTORS: u64 = 64 * 8;

/// A store of `frames` pages whose client may fill all of it with persistent pages.
fn store_cfg(frames: u64) -> StoreConfig {
    StoreConfig {
        mem_limit_bytes: frames * PAGE_SIZE as u64,
        default_persistent_share_percent: 100,
        ..StoreConfig::default()
    }
}

fn write(t: &mut TestDisk, io: &mut VecIo, sector: u64, segs: &[Segment]) -> Done {
    let tr = Transfer::new(sector, segs, t.disk().sectors()).unwrap();
    t.disk()
        .execute(
            &BlkRequest::Write {
                io: tr,
                flush: false,
            },
            io,
        )
        .unwrap()
}

fn write_page(t: &mut TestDisk, page: u64, data: &Page) {
    let mut io = VecIo::new(1);
    io.0[0] = *data;
    write(t, &mut io, page * 8, &[full_page(0)]);
}

fn read_page(t: &mut TestDisk, page: u64) -> Page {
    let mut io = VecIo::new(1);
    let tr = Transfer::new(page * 8, &[full_page(0)], t.disk().sectors()).unwrap();
    t.disk().execute(&BlkRequest::Read(tr), &mut io).unwrap();
    io.0[0]
}

fn pool_pages(t: &TestDisk) -> u64 {
    let st = t.store().stats();
    st.clients
        .iter()
        .flat_map(|c| &c.pools)
        .map(|p| p.counters.pages)
        .sum()
}

#[test]
fn whole_pages_round_trip_through_memory() {
    let mut t = TestDisk::new(store_cfg(128), SECTORS, None);
    for p in 0..10 {
        write_page(&mut t, p, &pattern(p as u8));
    }
    for p in 0..10 {
        assert_eq!(read_page(&mut t, p), pattern(p as u8));
    }
    assert_eq!(
        read_page(&mut t, 11),
        [0; PAGE_SIZE],
        "never written: zeroes"
    );
    let s = t.disk().stats();
    assert_eq!((s.store_writes, s.spill_writes, s.spill_reads), (10, 0, 0));
    assert_eq!(pool_pages(&t), 10);
}

#[test]
fn partial_pages_are_read_modify_written() {
    let mut t = TestDisk::new(store_cfg(128), SECTORS, None);
    write_page(&mut t, 3, &pattern(1));
    let mut io = VecIo::new(3);
    io.0[0] = pattern(2);
    io.0[1] = pattern(3);
    io.0[2] = pattern(4);
    // Sectors 8*3+2 ..= 8*3+4 from grant 0's sectors 5..=7, then two sectors of grant 1
    // on the same page, then grant 2's six sectors across the page boundary into page 4.
    write(
        &mut t,
        &mut io,
        3 * 8 + 2,
        &[seg(0, 5, 7), seg(1, 0, 1), seg(2, 2, 7)],
    );
    let mut want3 = pattern(1);
    want3[2 * 512..5 * 512].copy_from_slice(&pattern(2)[5 * 512..8 * 512]);
    want3[5 * 512..7 * 512].copy_from_slice(&pattern(3)[..2 * 512]);
    want3[7 * 512..].copy_from_slice(&pattern(4)[2 * 512..3 * 512]);
    let mut want4 = [0u8; PAGE_SIZE];
    want4[..5 * 512].copy_from_slice(&pattern(4)[3 * 512..]);
    assert_eq!(read_page(&mut t, 3), want3);
    assert_eq!(read_page(&mut t, 4), want4);
    // A partial read lands at the segment's sectors and nowhere else.
    let mut io = VecIo::new(1);
    io.0[0] = [0xee; PAGE_SIZE];
    let tr = Transfer::new(3 * 8 + 6, &[seg(0, 1, 4)], SECTORS).unwrap();
    t.disk().execute(&BlkRequest::Read(tr), &mut io).unwrap();
    let mut want = [0xeeu8; PAGE_SIZE];
    want[512..1024].copy_from_slice(&want3[6 * 512..7 * 512]);
    want[1024..1536].copy_from_slice(&want3[7 * 512..]);
    want[1536..2560].copy_from_slice(&want4[..1024]);
    assert_eq!(io.0[0], want);
}

#[test]
fn refused_puts_spill_and_rewrites_promote() {
    // 16 frames: the 17th page and beyond go to the spill file.
    let mut t = TestDisk::new(store_cfg(16), SECTORS, None);
    for p in 0..40 {
        write_page(&mut t, p, &pattern(p as u8));
    }
    let s = t.disk().stats();
    assert!(s.spill_writes >= 24, "{s:?}");
    assert_eq!(s.store_writes + s.spill_writes, 40);
    assert_eq!(t.disk().spilled_pages(), s.spill_writes);
    for p in 0..40 {
        assert_eq!(read_page(&mut t, p), pattern(p as u8), "page {p}");
    }
    assert!(t.disk().stats().spill_reads >= 24);
    // Free memory by discarding pages 0..8, then rewrite spilled pages: into memory.
    let d = BlkRequest::Discard {
        sector: 0,
        nr_sectors: 64,
        secure: false,
    };
    t.disk().execute(&d, &mut VecIo::new(0)).unwrap();
    let spilled_before = t.disk().spilled_pages();
    for p in 30..34 {
        write_page(&mut t, p, &pattern(100 + p as u8));
    }
    let s = t.disk().stats();
    assert_eq!(s.promotions, 4, "{s:?}");
    assert_eq!(t.disk().spilled_pages(), spilled_before - 4);
    for p in 0..40 {
        let want = match p {
            0..8 => [0; PAGE_SIZE],
            30..34 => pattern(100 + p as u8),
            _ => pattern(p as u8),
        };
        assert_eq!(read_page(&mut t, p), want, "page {p}");
    }
}

#[test]
fn cap_and_freeze_send_pages_to_the_spill_file() {
    let mut t = TestDisk::new(store_cfg(128), SECTORS, None);
    t.store().set_cap_pages(t.client, 4).unwrap();
    for p in 0..6 {
        write_page(&mut t, p, &pattern(p as u8));
    }
    assert_eq!(t.disk().stats().over_cap, 2);
    t.store().set_cap_pages(t.client, 0).unwrap();
    t.store().set_frozen(t.client, true).unwrap();
    write_page(&mut t, 10, &pattern(10));
    write_page(&mut t, 0, &pattern(50)); // a rewrite in memory is allowed while frozen
    assert_eq!(t.disk().stats().frozen, 1);
    for (p, d) in [(0, 50), (1, 1), (4, 4), (5, 5), (10, 10)] {
        assert_eq!(read_page(&mut t, p), pattern(d), "page {p}");
    }
}

#[test]
fn a_rewrite_a_full_store_cannot_take_goes_to_the_spill_file() {
    // Under 64 frames a durable store keeps no frame for rewrites: a full store refuses a
    // rewritten page, keeping the old copy (NoMemory) until the new data is in the spill
    // file, then the old copy goes.
    let mut t = TestDisk::new(store_cfg(8), SECTORS, None);
    for p in 0..9 {
        write_page(&mut t, p, &pattern(p as u8));
    }
    let before = t.disk().stats().no_memory;
    write_page(&mut t, 2, &pattern(77));
    assert_eq!(t.disk().stats().no_memory, before + 1);
    assert_eq!(t.disk().stats().dup_put_flushed, 0);
    assert_eq!(read_page(&mut t, 2), pattern(77));
    t.restart();
    assert_eq!(read_page(&mut t, 2), pattern(77));
}

#[test]
fn zero_pages_take_no_room() {
    let mut t = TestDisk::new(store_cfg(4), SECTORS, None);
    for p in 0..8 {
        write_page(&mut t, p, &pattern(p as u8));
    }
    assert_eq!(t.disk().spilled_pages(), 4);
    for p in 0..8 {
        write_page(&mut t, p, &[0; PAGE_SIZE]);
    }
    assert_eq!((pool_pages(&t), t.disk().spilled_pages()), (0, 0));
    assert_eq!(read_page(&mut t, 6), [0; PAGE_SIZE]);
}

#[test]
fn discard_frees_whole_pages_and_keeps_partial_ones() {
    let mut t = TestDisk::new(store_cfg(8), SECTORS, None);
    for p in 0..16 {
        write_page(&mut t, p, &pattern(p as u8));
    }
    // Sectors 12..60: page 1 partly (kept), pages 2..7 whole, page 7 partly (kept).
    let d = BlkRequest::Discard {
        sector: 12,
        nr_sectors: 48,
        secure: false,
    };
    assert_eq!(t.disk().execute(&d, &mut VecIo::new(0)).unwrap(), Done::Now);
    for p in 0..16 {
        let want = if (2..7).contains(&p) {
            [0; PAGE_SIZE]
        } else {
            pattern(p as u8)
        };
        assert_eq!(read_page(&mut t, p), want, "page {p}");
    }
    // The whole disk: one object flush and one punch.
    let all = BlkRequest::Discard {
        sector: 0,
        nr_sectors: SECTORS,
        secure: false,
    };
    t.disk().execute(&all, &mut VecIo::new(0)).unwrap();
    assert_eq!((pool_pages(&t), t.disk().spilled_pages()), (0, 0));
    for p in 0..16 {
        assert_eq!(read_page(&mut t, p), [0; PAGE_SIZE]);
    }
    assert_eq!(t.disk().stats().discards, 2);
}

#[test]
fn flush_waits_for_a_sync_only_when_spilled_data_is_not_durable() {
    let mut t = TestDisk::new(store_cfg(4), SECTORS, None);
    let flush = BlkRequest::Flush;
    let mut io = VecIo::new(1);
    write_page(&mut t, 0, &pattern(1));
    assert_eq!(t.disk().execute(&flush, &mut io).unwrap(), Done::Now);
    for p in 1..6 {
        write_page(&mut t, p, &pattern(1));
    }
    assert_eq!(t.disk().execute(&flush, &mut io).unwrap(), Done::AfterSync);
    let sync = t.disk().syncer();
    assert!(sync.pending());
    sync.sync().unwrap();
    assert!(!sync.pending());
    assert_eq!(t.disk().execute(&flush, &mut io).unwrap(), Done::Now);
    // A write with FUA that spills needs the sync too.
    io.0[0] = pattern(9);
    let tr = Transfer::new(9 * 8, &[full_page(0)], SECTORS).unwrap();
    let fua = BlkRequest::Write {
        io: tr,
        flush: true,
    };
    assert_eq!(t.disk().execute(&fua, &mut io).unwrap(), Done::AfterSync);
    t.disk().execute_blocking(&fua, &mut io).unwrap();
    assert!(!sync.pending());
    assert_eq!(t.disk().stats().flushes, 3);
}

#[test]
fn a_failed_segment_copy_fails_the_request_and_changes_nothing() {
    let mut t = TestDisk::new(store_cfg(16), SECTORS, None);
    write_page(&mut t, 0, &pattern(1));
    write_page(&mut t, 1, &pattern(2));
    let mut io = VecIo::new(1);
    io.0[0] = pattern(3);
    // Segment 1 names a grant the guest does not have.
    let tr = Transfer::new(0, &[full_page(0), full_page(5)], SECTORS).unwrap();
    let e = t
        .disk()
        .execute(
            &BlkRequest::Write {
                io: tr,
                flush: false,
            },
            &mut io,
        )
        .unwrap_err();
    assert!(matches!(
        e,
        DiskError::Segment(SegmentError {
            segment: 1,
            gref: 5
        })
    ));
    assert_eq!(e.status(), tmem_blkif::abi::status::ERROR);
    assert_eq!(read_page(&mut t, 0), pattern(1));
    assert!(t.disk().execute(&BlkRequest::Read(tr), &mut io).is_err());
}

#[test]
fn pages_survive_restarts_wherever_they_are() {
    let mut t = TestDisk::new(store_cfg(64), SECTORS, None);
    for p in 0..64 {
        write_page(&mut t, p, &pattern(p as u8));
    }
    let spilled = t.disk().spilled_pages();
    assert!(spilled > 0);
    let rec = t.restart();
    assert_eq!(rec.pages, 64 - spilled);
    assert_eq!(t.opened.spilled_pages, spilled);
    assert_eq!(t.opened.reconciled, 0);
    for p in 0..64 {
        assert_eq!(read_page(&mut t, p), pattern(p as u8), "page {p}");
    }
}

#[test]
fn a_kill_between_put_and_punch_is_reconciled_at_open() {
    let mut t = TestDisk::new(store_cfg(4), SECTORS, None);
    for p in 0..6 {
        write_page(&mut t, p, &pattern(p as u8));
    }
    // Page 5 is spilled; free memory, then rewrite it with the kill after the put.
    let d = BlkRequest::Discard {
        sector: 0,
        nr_sectors: 8,
        secure: false,
    };
    t.disk().execute(&d, &mut VecIo::new(0)).unwrap();
    t.disk().crash_after(1);
    let mut io = VecIo::new(1);
    io.0[0] = pattern(55);
    let tr = Transfer::new(5 * 8, &[full_page(0)], SECTORS).unwrap();
    let e = t.disk().execute(
        &BlkRequest::Write {
            io: tr,
            flush: false,
        },
        &mut io,
    );
    assert!(matches!(e, Err(DiskError::Crashed)), "{e:?}");
    t.restart();
    assert_eq!(t.opened.reconciled, 1, "{:?}", t.opened);
    assert_eq!(read_page(&mut t, 5), pattern(55), "the store's copy wins");
    assert_eq!(read_page(&mut t, 4), pattern(4));
}

#[test]
fn a_fresh_disk_forgets_an_old_spill_file_and_a_size_change_is_refused() {
    let mut t = TestDisk::new(store_cfg(2), SECTORS, None);
    for p in 0..4 {
        write_page(&mut t, p, &pattern(1));
    }
    let dir = std::mem::replace(&mut t.dir, TempDir::new("moved").unwrap());
    let cfg = t.cfg.clone();
    drop(t);
    // Same directory and name, new store: the pool is new, so the disk starts empty.
    let mut t = TestDisk::new(store_cfg(2), SECTORS, Some(dir));
    assert!(t.opened.spill_created);
    for p in 0..4 {
        assert_eq!(read_page(&mut t, p), [0; PAGE_SIZE]);
    }
    let store = std::sync::Arc::new(tmem_store::Store::new(store_cfg(2)));
    let (c, _) = store.attach_client(1, 1, "x").unwrap();
    let (pool, _) = crate::open_pool(&store, c, 1).unwrap();
    let bigger = crate::DiskConfig {
        sectors: SECTORS * 2,
        ..cfg
    };
    let e = SwapDisk::open(&bigger, store, c, pool, false).unwrap_err();
    assert!(matches!(e, crate::OpenError::SpillSize { .. }), "{e}");
}
