//! `cargo bench -p tmem-swapdisk --features test-utils`: the swap disk's data path alone.
//!
//! One thread plays the guest and the backend: tmem-blkif's mock frontend fills a ring (in a
//! memfd) with one-page READs or WRITEs whose data is in granted pages (another memfd, mapped
//! twice); `serve_batch` takes them off the `BlkBackend`, the `SwapDisk` executes them
//! against a durable store (page file in a memfd, as tmemd runs) or its spill file, and the
//! frontend collects the responses. Reported: pages per CPU second of this thread, median
//! of 7 runs with min and max, beside the same-run rate of plain 4 KiB memcpy. CPU time, so
//! that a loaded machine slows the runs down without skewing the rates much.

use std::hint::black_box;
use std::time::Duration;
use tmem_blkif::abi::{op, status};
use tmem_blkif::mock::{full_page, pair, MockGrantPages};
use tmem_blkif::DiskParams;
use tmem_store::{StoreConfig, PAGE_SIZE};
use tmem_swapdisk::mock::{GrantIo, TempDir, TestDisk};
use tmem_swapdisk::serve_batch;

const RUN: Duration = Duration::from_millis(300);
const RUNS: usize = 7;
/// A 64 MiB disk.
const DISK_PAGES: u64 = 16384;

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn memcpy_pages() -> f64 {
    let src = vec![0x5au8; 64 * PAGE_SIZE];
    let mut dst = vec![0u8; 64 * PAGE_SIZE];
    let mut n = 0u64;
    let start = thread_cpu();
    while thread_cpu() - start < RUN {
        for i in 0..64 {
            let r = i * PAGE_SIZE..(i + 1) * PAGE_SIZE;
            dst[r.clone()].copy_from_slice(black_box(&src[r]));
        }
        n += 64;
        black_box(&mut dst);
    }
    n as f64 / (thread_cpu() - start).as_secs_f64()
}

#[derive(Clone, Copy, PartialEq)]
enum Where {
    Memory,
    /// Every page goes to the spill file (the client is frozen) in this directory.
    Spill(&'static str),
}

struct Bench {
    t: TestDisk,
    guest: MockGrantPages,
    grants: MockGrantPages,
    next: u64,
    id: u64,
    /// Journal each batch as tmemd's disk threads do (in the disk's spill directory).
    journal: bool,
}

impl Bench {
    fn new(place: Where, journal: bool) -> Bench {
        let cfg = StoreConfig {
            mem_limit_bytes: 2 * DISK_PAGES * PAGE_SIZE as u64,
            default_persistent_share_percent: 100,
            ..StoreConfig::default()
        };
        let dir = match place {
            Where::Spill(d) => {
                Some(TempDir::new_in(std::path::Path::new(d), "bench").expect("spill directory"))
            }
            Where::Memory => None,
        };
        let t = TestDisk::new(cfg, DISK_PAGES * 8, dir);
        if place != Where::Memory {
            t.store().set_frozen(t.client, true).unwrap();
        }
        let guest = MockGrantPages::create(32).unwrap();
        for k in 0..32u32 {
            let mut p = [0u8; PAGE_SIZE];
            for (i, b) in p.iter_mut().enumerate() {
                *b = (i as u8) ^ (k as u8) | 1;
            }
            guest.write(k, 0, &p).unwrap();
        }
        let grants = guest.map_again().unwrap();
        Bench {
            t,
            guest,
            grants,
            next: 0,
            id: 0,
            journal,
        }
    }

    /// One-page requests of `operation` on consecutive disk pages for `RUN` of CPU time.
    fn run(&mut self, operation: u8) -> f64 {
        self.requests(operation, None)
    }

    /// Write every page of the disk once.
    fn fill(&mut self) {
        self.next = 0;
        self.requests(op::WRITE, Some(DISK_PAGES));
        self.next = 0;
    }

    /// One-page requests for `RUN` of CPU time, or until `pages` were done.
    fn requests(&mut self, operation: u8, pages: Option<u64>) -> f64 {
        let (mut back, mut front) = pair(1, DiskParams::swap_disk(DISK_PAGES * 8)).unwrap();
        let entries = back.entries();
        let mut batch = Vec::with_capacity(entries as usize);
        let mut io = GrantIo {
            pages: &self.grants,
        };
        let mut journal = self.journal.then(|| {
            let path = self.t.dir.0.join("bench.ring");
            tmem_swapdisk::RingJournal::create(&path, 1, entries, 0).expect("ring journal")
        });
        let mut n = 0u64;
        let start = thread_cpu();
        while pages.map_or(thread_cpu() - start < RUN, |p| n < p) {
            for k in 0..entries {
                front.push_rw(operation, self.id, self.next * 8, &[full_page(k)]);
                self.id += 1;
                self.next = (self.next + 1) % DISK_PAGES;
            }
            front.publish();
            serve_batch(
                &mut back,
                self.t.disk(),
                &mut io,
                usize::MAX,
                &mut batch,
                journal.as_mut(),
            )
            .unwrap();
            for r in front.take_responses() {
                assert_eq!(r.status, status::OKAY);
                n += 1;
            }
        }
        black_box(&self.guest);
        n as f64 / (thread_cpu() - start).as_secs_f64()
    }
}

fn summary(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    let shm = "/dev/shm";
    let tmp = "/tmp";
    let cases: [(&str, Where, bool); 4] = [
        ("memory (durable store)", Where::Memory, false),
        ("memory + ring journal", Where::Memory, true),
        ("spill file on tmpfs", Where::Spill(shm), false),
        ("spill file on /tmp", Where::Spill(tmp), false),
    ];
    let mut copy = Vec::new();
    let mut rows = Vec::new();
    for (name, place, journal) in cases {
        let mut b = Bench::new(place, journal);
        // Fill the disk once so that reads find every page where the case puts it.
        b.fill();
        let (mut w, mut r) = (Vec::new(), Vec::new());
        for _ in 0..RUNS {
            copy.push(memcpy_pages());
            w.push(b.run(op::WRITE));
            r.push(b.run(op::READ));
        }
        let s = b.t.disk().stats();
        assert!(place == Where::Memory || s.store_writes == 0, "{s:?}");
        assert!(place != Where::Memory || s.spill_writes == 0, "{s:?}");
        rows.push((name, "write", summary(w)));
        rows.push((name, "read", summary(r)));
    }
    let (c, cmin, cmax) = summary(copy);
    println!(
        "4 KiB memcpy: median {:.2} M pages/s (min {:.2}, max {:.2}), {} runs",
        c / 1e6,
        cmin / 1e6,
        cmax / 1e6,
        RUNS * 4
    );
    println!("one-page requests through ring + backend + swap disk, {RUNS} runs each:");
    for (name, what, (m, lo, hi)) in rows {
        println!(
            "  {what:<5} {name:<24} median {:>7.0} k pages/s (min {:>5.0}, max {:>5.0}) = {:>4.1}% of memcpy, {:>5.2} us/page",
            m / 1e3,
            lo / 1e3,
            hi / 1e3,
            100.0 * m / c,
            1e6 / m
        );
    }
}
