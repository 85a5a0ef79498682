//! A big pool's destroy must not hold the store for its whole walk: another client's gets
//! complete while it runs (before chunked reclaim, one 256 MiB destroy held the metadata lock
//! throughout, and no get could finish in the middle of it).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tmem_store::*;

// 256 MiB: a destroy long enough that the getter is scheduled during it even on a host
// with many more runnable threads than CPUs.
const BIG_PAGES: u64 = 65536;
const SMALL_PAGES: u64 = 64;
const ATTEMPTS: usize = 5;

fn key(i: u64) -> PageKey {
    PageKey {
        oid: Oid([i / 64, 3, 0]),
        index: (i % 64) as u32,
    }
}

fn page(i: u64, tag: u64) -> Page {
    let mut p = [0u8; PAGE_SIZE];
    for c in p.chunks_exact_mut(16) {
        c[..8].copy_from_slice(&i.to_le_bytes());
        c[8..].copy_from_slice(&tag.to_le_bytes());
    }
    p
}

#[test]
fn destroying_a_big_pool_lets_other_clients_get() {
    let store = Store::new(StoreConfig {
        mem_limit_bytes: (BIG_PAGES + SMALL_PAGES + 16) * PAGE_SIZE as u64,
        default_persistent_share_percent: 0,
        ..StoreConfig::default()
    });
    let (big, _) = store.attach_client(1, 1, "big").unwrap();
    let (small, _) = store.attach_client(2, 1, "small").unwrap();
    let (sp, _) = store
        .new_pool(small, [0, 0], PoolKind::PrivatePersistent)
        .unwrap();
    for i in 0..SMALL_PAGES {
        store.put(small, sp, key(i), &page(i, 2)).unwrap();
    }
    let mut seen = Vec::new();
    for attempt in 0..ATTEMPTS {
        let (bp, _) = store
            .new_pool(big, [0, 0], PoolKind::PrivatePersistent)
            .unwrap();
        for i in 0..BIG_PAGES {
            store
                .put(big, bp, key(i), &page(i, 100 + attempt as u64))
                .unwrap();
        }
        let stop = AtomicBool::new(false);
        let started = AtomicBool::new(false);
        let (t0, t1, ends) = std::thread::scope(|s| {
            let getter = s.spawn(|| {
                let mut ends = Vec::new();
                let mut dst = [0u8; PAGE_SIZE];
                let mut i = 0;
                while !stop.load(Ordering::Acquire) {
                    i = (i + 1) % SMALL_PAGES;
                    assert_eq!(store.get(small, sp, key(i), &mut dst), Ok(true));
                    assert!(dst == page(i, 2), "wrong data for page {i}");
                    ends.push(Instant::now());
                    started.store(true, Ordering::Release);
                }
                ends
            });
            let deadline = Instant::now() + Duration::from_secs(60);
            while !started.load(Ordering::Acquire) {
                assert!(Instant::now() < deadline, "getter never ran");
                std::thread::yield_now();
            }
            let t0 = Instant::now();
            assert_eq!(store.destroy_pool(big, bp), Ok(true));
            let t1 = Instant::now();
            stop.store(true, Ordering::Release);
            (t0, t1, getter.join().unwrap())
        });
        // Gets that completed in the middle half of the destroy: impossible if the destroy
        // holds the lock from start to end.
        let span = t1 - t0;
        let (lo, hi) = (t0 + span / 4, t0 + span * 3 / 4);
        let middle = ends.iter().filter(|&&e| e > lo && e < hi).count();
        let inside = ends.iter().filter(|&&e| e > t0 && e < t1).count();
        seen.push(format!(
            "attempt {attempt}: destroy {span:?}, {inside} gets ended during it, {middle} in its middle half"
        ));
        let g = store.stats().global;
        assert_eq!(
            g.pages, SMALL_PAGES,
            "destroy_pool returned with pages left"
        );
        // The id now names a new, empty pool.
        let (np, _) = store
            .new_pool(big, [0, 0], PoolKind::PrivatePersistent)
            .unwrap();
        assert_eq!(np, bp);
        let mut dst = [0u8; PAGE_SIZE];
        assert_eq!(store.get(big, np, key(5), &mut dst), Err(TmemError::Empty));
        assert_eq!(store.destroy_pool(big, np), Ok(true));
        if middle > 0 {
            eprintln!("{}", seen.join("\n"));
            return;
        }
    }
    panic!(
        "no get completed in the middle of any destroy:\n{}",
        seen.join("\n")
    );
}
