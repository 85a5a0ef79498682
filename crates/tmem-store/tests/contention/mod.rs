//! The contention run that `concurrency.rs` and `concurrency_compressed.rs` share: threads
//! hammer one shared pool and their own private pools. Page contents encode (key, version) in
//! every block of words, so a torn page (parts of two puts), a page from another key, or a
//! stale page (an older version than the last put of a private key) is detected. Memory
//! accounting is checked against the limit throughout and must return to zero at the end.
#![allow(dead_code)] // each test binary uses its own part

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tmem_store::*;

pub const THREADS: usize = 4;
pub const OPS: usize = 20000;
pub const SHARED: [u64; 2] = [0x5eed, 0xfeed];

/// What a variant of the run changes.
#[derive(Clone, Copy)]
pub struct Hooks {
    /// The store's limit, in pages.
    pub limit_pages: u64,
    /// Words per block of one repeated value (1: every word differs; 64: pages compress).
    pub block_words: usize,
    /// Run by each thread after it attached its client.
    pub setup: fn(&Store, ClientId, usize),
    /// Run after each operation of thread `t`, the `n`th.
    pub each_op: fn(&Store, usize, usize),
    /// Run on the store's figures every 128 operations of each thread.
    pub check: fn(&GlobalStats),
}

fn word(kid: u64, ver: u64, i: usize, block: usize) -> u64 {
    (kid << 40 ^ ver).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ ((i / block) as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93)
}

pub fn page(kid: u64, ver: u64, block: usize) -> Page {
    let mut p = [0u8; PAGE_SIZE];
    for (i, c) in p.chunks_exact_mut(8).enumerate() {
        let w = match i {
            0 => kid,
            1 => ver,
            _ => word(kid, ver, i, block),
        };
        c.copy_from_slice(&w.to_le_bytes());
    }
    p
}

/// The (key, version) a page holds, if it is whole and consistent.
pub fn decode(p: &Page, block: usize) -> Option<(u64, u64)> {
    let w = |i: usize| u64::from_le_bytes(p[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
    let (kid, ver) = (w(0), w(1));
    (2..PAGE_SIZE / 8)
        .all(|i| w(i) == word(kid, ver, i, block))
        .then_some((kid, ver))
}

pub fn key(kid: u64) -> PageKey {
    PageKey {
        oid: Oid([kid / 8, 1, 2]),
        index: (kid % 8) as u32,
    }
}

pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Run the threads against `store` (shared pools must not need authorisation) and check that
/// every client's pages are gone at the end; returns the store's final figures.
pub fn run(store: &Arc<Store>, h: &Hooks) -> GlobalStats {
    store.set_shared_auth_required(false);
    let version = Arc::new(AtomicU64::new(1));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = Arc::clone(store);
            let version = Arc::clone(&version);
            let h = *h;
            std::thread::spawn(move || {
                let (c, _) = store.attach_client(t as u32 + 1, 1, "t").unwrap();
                (h.setup)(&store, c, t);
                let (sp, _) = store.new_pool(c, SHARED, PoolKind::SharedEphemeral).unwrap();
                let (ep, _) = store.new_pool(c, [0, 0], PoolKind::PrivateEphemeral).unwrap();
                let (pp, _) = store.new_pool(c, [0, 0], PoolKind::PrivatePersistent).unwrap();
                // Private keys' last successful versions (None = not stored).
                let mut eph_last = vec![None; 32];
                let mut pers_last = vec![None; 16];
                let mut rng = Rng(0x1234_5678 + t as u64 * 7919);
                let mut buf = [0u8; PAGE_SIZE];
                let base = (t as u64 + 1) << 20;
                for n in 0..OPS {
                    let r = rng.next();
                    let ver = version.fetch_add(1, Ordering::Relaxed);
                    match r % 10 {
                        0..=1 => {
                            let kid = (r >> 8) % 48;
                            let _ = store.put(c, sp, key(kid), &page(kid, ver, h.block_words));
                        }
                        2..=3 => {
                            let kid = (r >> 8) % 48;
                            if let Ok(true) = store.get(c, sp, key(kid), &mut buf) {
                                let got = decode(&buf, h.block_words);
                                assert!(matches!(got, Some((k, v)) if k == kid && v < version.load(Ordering::Relaxed)),
                                    "torn or foreign shared page: {got:?} for key {kid}");
                            }
                        }
                        4 => {
                            let kid = (r >> 8) % 48;
                            let _ = store.flush_page(c, sp, key(kid));
                        }
                        5 => {
                            let i = ((r >> 8) % 32) as usize;
                            let kid = base + i as u64;
                            match store.put(c, ep, key(kid), &page(kid, ver, h.block_words)) {
                                Ok(()) => eph_last[i] = Some(ver),
                                Err(_) => eph_last[i] = None,
                            }
                        }
                        6 => {
                            let i = ((r >> 8) % 32) as usize;
                            let kid = base + i as u64;
                            if let Ok(true) = store.get(c, ep, key(kid), &mut buf) {
                                assert_eq!(decode(&buf, h.block_words), Some((kid, eph_last[i].unwrap_or(0))),
                                    "torn or stale ephemeral page");
                            }
                            eph_last[i] = None;
                        }
                        7 => {
                            let i = ((r >> 8) % 16) as usize;
                            let kid = base + 1000 + i as u64;
                            match store.put(c, pp, key(kid), &page(kid, ver, h.block_words)) {
                                Ok(()) => pers_last[i] = Some(ver),
                                Err(TmemError::NoMemory) => {}
                                Err(e) => panic!("persistent put: {e:?}"),
                            }
                        }
                        8 => {
                            let i = ((r >> 8) % 16) as usize;
                            let kid = base + 1000 + i as u64;
                            let hit = matches!(store.get(c, pp, key(kid), &mut buf), Ok(true));
                            match pers_last[i] {
                                Some(v) => {
                                    assert!(hit, "persistent page lost");
                                    assert_eq!(decode(&buf, h.block_words), Some((kid, v)), "torn or stale persistent page");
                                }
                                None => assert!(!hit),
                            }
                        }
                        _ => {
                            let i = ((r >> 8) % 16) as usize;
                            let kid = base + 1000 + i as u64;
                            store.flush_page(c, pp, key(kid)).unwrap();
                            pers_last[i] = None;
                        }
                    }
                    (h.each_op)(&store, t, n);
                    if n % 128 == 0 {
                        let g = store.stats().global;
                        assert!(g.data_bytes <= h.limit_pages * PAGE_SIZE as u64, "over the limit");
                        (h.check)(&g);
                    }
                }
                store.destroy_client(c);
            })
        })
        .collect();
    for j in handles {
        j.join().expect("worker panicked");
    }
    let g = store.stats().global;
    assert_eq!(
        (g.pages, g.data_bytes, g.eph_pages, g.objects),
        (0, 0, 0, 0)
    );
    assert!(g.evictions > 0, "the test should have exercised eviction");
    g
}
