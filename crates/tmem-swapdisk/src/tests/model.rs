//! Property test: random READ / WRITE / DISCARD / FLUSH requests at random sector offsets
//! and lengths against a byte-array model of the disk, with a store small enough that pages
//! spill and come back into memory, clean restarts (the store reopened on its page file, the
//! spill file kept), and kills at every point inside a write or discard.
//!
//! Guest data crosses real shared memory: the mock guest's granted pages are a memfd that
//! the disk reads through a second mapping.
//!
//! After a simulated kill the disk is reopened and every page is read: a page the killed
//! request touched must hold its old or its new content, every other page exactly its
//! model content. The model then takes what was read.

use crate::mock::{GrantIo, TestDisk};
use crate::{DiskError, DiskStats};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use tmem_blkif::mock::MockGrantPages;
use tmem_blkif::{BlkRequest, Segment, Transfer};
use tmem_store::{StoreConfig, PAGE_SIZE};

const PAGES: u64 = 96;
const SECTORS: u64 = PAGES * 8;
const FRAMES: u64 = 64;

#[derive(Debug, Clone)]
enum Op {
    /// Segments (first, last), consecutive on the disk from `sector`; data seed (0 = zeroes).
    Write(u64, Vec<(u8, u8)>, u32),
    Read(u64, Vec<(u8, u8)>),
    Discard(u64, u64),
    Flush,
    Restart,
    /// A write (or a discard, when the segment list is empty) killed after `budget` changes
    /// to the store or the spill file, then a restart.
    Killed(u64, Vec<(u8, u8)>, u32, u64, u32),
}

fn segs() -> impl Strategy<Value = Vec<(u8, u8)>> {
    let one = prop_oneof![
        3 => Just((0u8, 7u8)),
        2 => (0u8..8, 0u8..8).prop_map(|(a, b)| (a.min(b), a.max(b))),
    ];
    prop::collection::vec(one, 1..=11)
}

fn op() -> impl Strategy<Value = Op> {
    let sector = prop_oneof![
        2 => (0..PAGES).prop_map(|p| p * 8),
        1 => 0..SECTORS,
    ];
    let seed = prop_oneof![6 => 1u32.., 1 => Just(0u32)];
    prop_oneof![
        8 => (sector.clone(), segs(), seed.clone()).prop_map(|(s, g, d)| Op::Write(s, g, d)),
        5 => (sector.clone(), segs()).prop_map(|(s, g)| Op::Read(s, g)),
        2 => (sector.clone(), 0..SECTORS / 2).prop_map(|(s, n)| Op::Discard(s, n)),
        1 => Just(Op::Flush),
        1 => Just(Op::Restart),
        2 => (sector, prop_oneof![3 => segs(), 1 => Just(vec![])], seed, 0..SECTORS / 4, 0u32..5)
            .prop_map(|(s, g, d, n, b)| Op::Killed(s, g, d, n, b)),
    ]
}

struct Run {
    t: TestDisk,
    /// The guest's view of its granted pages, and the disk's (two mappings of one memfd).
    guest: MockGrantPages,
    back: MockGrantPages,
    image: Vec<u8>,
    totals: DiskStats,
    reconciled: u64,
}

fn fill(seed: u32, k: usize) -> [u8; PAGE_SIZE] {
    let mut p = [0u8; PAGE_SIZE];
    if seed != 0 {
        let mut x = u64::from(seed) << 8 | k as u64 | 1 << 40;
        for c in p.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
    }
    p
}

fn transfer(sector: u64, segs: &[(u8, u8)]) -> Transfer {
    let s: Vec<Segment> = segs
        .iter()
        .enumerate()
        .map(|(k, &(first_sect, last_sect))| Segment {
            gref: k as u32,
            first_sect,
            last_sect,
        })
        .collect();
    let total: u64 = s.iter().map(Segment::sectors).sum();
    Transfer::new(sector.min(SECTORS - total), &s, SECTORS).unwrap()
}

fn add(a: &mut DiskStats, b: DiskStats) {
    a.store_writes += b.store_writes;
    a.spill_writes += b.spill_writes;
    a.promotions += b.promotions;
    a.spill_reads += b.spill_reads;
    a.no_memory += b.no_memory;
    a.over_cap += b.over_cap;
    a.dup_put_flushed += b.dup_put_flushed;
}

impl Run {
    fn new(share: u32) -> Run {
        let cfg = StoreConfig {
            mem_limit_bytes: FRAMES * PAGE_SIZE as u64,
            default_persistent_share_percent: share,
            ..StoreConfig::default()
        };
        let guest = MockGrantPages::create(11).unwrap();
        let back = guest.map_again().unwrap();
        Run {
            t: TestDisk::new(cfg, SECTORS, None),
            guest,
            back,
            image: vec![0; SECTORS as usize * 512],
            totals: DiskStats::default(),
            reconciled: 0,
        }
    }

    fn restart(&mut self) {
        add(&mut self.totals, self.t.disk().stats());
        self.t.restart();
        self.reconciled += self.t.opened.reconciled;
    }

    /// The request and the image it would leave.
    fn request(&self, op: &Op) -> (BlkRequest, Vec<u8>) {
        let mut image = self.image.clone();
        let req = match op {
            Op::Write(sector, segs, seed) | Op::Killed(sector, segs, seed, ..)
                if !segs.is_empty() =>
            {
                let t = transfer(*sector, segs);
                let mut at = t.sector() as usize * 512;
                for (k, s) in t.segments().iter().enumerate() {
                    let data = fill(*seed, k);
                    self.guest.write(k as u32, 0, &data).unwrap();
                    let r = s.byte_range();
                    image[at..at + r.len()].copy_from_slice(&data[r.clone()]);
                    at += r.len();
                }
                BlkRequest::Write {
                    io: t,
                    flush: false,
                }
            }
            Op::Discard(sector, n) | Op::Killed(sector, _, _, n, _) => {
                let sector = (*sector).min(SECTORS);
                let n = (*n).min(SECTORS - sector);
                let span = tmem_blkif::sectors::discard_span(sector, n);
                for p in span.whole_pages {
                    image[p as usize * PAGE_SIZE..(p as usize + 1) * PAGE_SIZE].fill(0);
                }
                BlkRequest::Discard {
                    sector,
                    nr_sectors: n,
                    secure: false,
                }
            }
            _ => unreachable!(),
        };
        (req, image)
    }

    fn read_page(&mut self, p: u64) -> Vec<u8> {
        let t = transfer(p * 8, &[(0, 7)]);
        let mut io = GrantIo { pages: &self.back };
        self.t
            .disk()
            .execute_blocking(&BlkRequest::Read(t), &mut io)
            .unwrap();
        let mut got = vec![0u8; PAGE_SIZE];
        self.guest.read(0, 0, &mut got).unwrap();
        got
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Write(..) | Op::Discard(..) => {
                let (req, image) = self.request(op);
                let mut io = GrantIo { pages: &self.back };
                self.t.disk().execute_blocking(&req, &mut io).unwrap();
                self.image = image;
            }
            Op::Read(sector, segs) => {
                let t = transfer(*sector, segs);
                for k in 0..t.segments().len() {
                    self.guest.write(k as u32, 0, &[0xa5; PAGE_SIZE]).unwrap();
                }
                let mut io = GrantIo { pages: &self.back };
                self.t
                    .disk()
                    .execute_blocking(&BlkRequest::Read(t), &mut io)
                    .unwrap();
                let mut at = t.sector() as usize * 512;
                for (k, s) in t.segments().iter().enumerate() {
                    let mut got = [0u8; PAGE_SIZE];
                    self.guest.read(k as u32, 0, &mut got).unwrap();
                    let r = s.byte_range();
                    let want = &self.image[at..at + r.len()];
                    prop_assert!(got[r.clone()] == *want, "segment {} of {:?}", k, op);
                    prop_assert!(got[..r.start].iter().all(|&b| b == 0xa5));
                    prop_assert!(got[r.end..].iter().all(|&b| b == 0xa5));
                    at += r.len();
                }
            }
            Op::Flush => {
                let mut io = GrantIo { pages: &self.back };
                self.t
                    .disk()
                    .execute_blocking(&BlkRequest::Flush, &mut io)
                    .unwrap();
                prop_assert!(!self.t.disk().syncer().pending());
            }
            Op::Restart => {
                self.restart();
                self.check_all()?;
            }
            Op::Killed(.., budget) => {
                let (req, new) = self.request(op);
                self.t.disk().crash_after(*budget);
                let mut io = GrantIo { pages: &self.back };
                match self.t.disk().execute(&req, &mut io) {
                    Ok(_) | Err(DiskError::Crashed) => {}
                    Err(e) => panic!("{e}"),
                }
                self.restart();
                for p in 0..PAGES {
                    let r = p as usize * PAGE_SIZE..(p as usize + 1) * PAGE_SIZE;
                    let got = self.read_page(p);
                    prop_assert!(
                        got == self.image[r.clone()] || got == new[r.clone()],
                        "page {} after a kill in {:?}: neither old nor new",
                        p,
                        op
                    );
                    self.image[r].copy_from_slice(&got);
                }
            }
        }
        Ok(())
    }

    fn check_all(&mut self) -> Result<(), TestCaseError> {
        for p in 0..PAGES {
            let got = self.read_page(p);
            let r = p as usize * PAGE_SIZE..(p as usize + 1) * PAGE_SIZE;
            prop_assert!(got == self.image[r], "page {}", p);
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), TestCaseError> {
        self.check_all()?;
        self.restart();
        self.check_all()?;
        add(&mut self.totals, self.t.disk().stats());
        // 64 frames keep one for rewrites: a single disk never makes the store drop a copy.
        prop_assert_eq!(self.totals.dup_put_flushed, 0);
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Memory runs out (NoMemory): the client may fill the whole store.
    #[test]
    fn disk_matches_model_when_memory_runs_out(ops in prop::collection::vec(op(), 1..120)) {
        let mut run = Run::new(100);
        for op in &ops {
            run.step(op)?;
        }
        run.finish()?;
    }

    /// The client's share runs out first (OverCap at 16 pages).
    #[test]
    fn disk_matches_model_at_the_cap(ops in prop::collection::vec(op(), 1..120)) {
        let mut run = Run::new(25);
        for op in &ops {
            run.step(op)?;
        }
        run.finish()?;
    }
}

/// A fixed long run: every path the property tests rely on is really taken.
#[test]
fn a_long_run_takes_every_path() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let ops = prop::collection::vec(op(), 1500)
        .new_tree(&mut runner)
        .unwrap()
        .current();
    for share in [100, 25] {
        let mut run = Run::new(share);
        for op in &ops {
            run.step(op).unwrap();
        }
        run.finish().unwrap();
        let s = run.totals;
        eprintln!("share {share}%: {s:?}, reconciled {}", run.reconciled);
        assert!(s.spill_writes > 100 && s.promotions > 10 && s.spill_reads > 100);
        assert!(
            if share == 100 {
                s.no_memory
            } else {
                s.over_cap
            } > 100
        );
        assert!(run.reconciled > 0, "a kill left a page in both places");
    }
}
