//! The concurrency test of `concurrency.rs` with compression on: threads compress with lz4,
//! zstd or only their ephemeral pages, pages compress (each 64-word block repeats one word,
//! which still encodes key, version and block), and one thread compacts now and then, so
//! puts, gets, evictions and compaction moves of compressed objects sharing frames race.
//! A torn, foreign or stale page is detected as in `concurrency.rs`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tmem_store::*;

const LIMIT_PAGES: u64 = 24;
const THREADS: usize = 4;
const OPS: usize = 20000;
const SHARED: [u64; 2] = [0x5eed, 0xfeed];

fn word(kid: u64, ver: u64, i: usize) -> u64 {
    (kid << 40 ^ ver).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ ((i / 64) as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93)
}

fn page(kid: u64, ver: u64) -> Page {
    let mut p = [0u8; PAGE_SIZE];
    for (i, c) in p.chunks_exact_mut(8).enumerate() {
        let w = if i == 0 {
            kid
        } else if i == 1 {
            ver
        } else {
            word(kid, ver, i)
        };
        c.copy_from_slice(&w.to_le_bytes());
    }
    p
}

/// The (key, version) a page holds, if it is whole and consistent.
fn decode(p: &Page) -> Option<(u64, u64)> {
    let w = |i: usize| u64::from_le_bytes(p[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
    let (kid, ver) = (w(0), w(1));
    (2..PAGE_SIZE / 8)
        .all(|i| w(i) == word(kid, ver, i))
        .then_some((kid, ver))
}

fn key(kid: u64) -> PageKey {
    PageKey {
        oid: Oid([kid / 8, 1, 2]),
        index: (kid % 8) as u32,
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn no_torn_or_stale_compressed_pages_under_contention() {
    let store = Arc::new(Store::new(StoreConfig {
        mem_limit_bytes: LIMIT_PAGES * PAGE_SIZE as u64,
        // Memory is small here (so that compressed pages get evicted): no per-client share.
        default_persistent_share_percent: 0,
        ..StoreConfig::default()
    }));
    store.set_shared_auth_required(false);
    let version = Arc::new(AtomicU64::new(1));
    let seen_z = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = Arc::clone(&store);
            let version = Arc::clone(&version);
            let seen_z = Arc::clone(&seen_z);
            std::thread::spawn(move || {
                let (c, _) = store.attach_client(t as u32 + 1, 1, "t").unwrap();
                let (l, z, o) = (Compression::Lz4, Compression::Zstd, Compression::Off);
                let (ephemeral, persistent) = [(l, l), (z, z), (l, o), (o, z)][t % 4];
                store
                    .set_compression(c, ClientCompression { ephemeral, persistent })
                    .unwrap();
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
                            let _ = store.put(c, sp, key(kid), &page(kid, ver));
                        }
                        2..=3 => {
                            let kid = (r >> 8) % 48;
                            if let Ok(true) = store.get(c, sp, key(kid), &mut buf) {
                                let got = decode(&buf);
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
                            match store.put(c, ep, key(kid), &page(kid, ver)) {
                                Ok(()) => eph_last[i] = Some(ver),
                                Err(_) => eph_last[i] = None,
                            }
                        }
                        6 => {
                            let i = ((r >> 8) % 32) as usize;
                            let kid = base + i as u64;
                            if let Ok(true) = store.get(c, ep, key(kid), &mut buf) {
                                assert_eq!(decode(&buf), Some((kid, eph_last[i].unwrap_or(0))),
                                    "torn or stale ephemeral page");
                            }
                            eph_last[i] = None;
                        }
                        7 => {
                            let i = ((r >> 8) % 16) as usize;
                            let kid = base + 1000 + i as u64;
                            match store.put(c, pp, key(kid), &page(kid, ver)) {
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
                                    assert_eq!(decode(&buf), Some((kid, v)), "torn or stale persistent page");
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
                    if t == 0 && n % 256 == 0 {
                        store.compact(64);
                    }
                    if n % 128 == 0 {
                        let g = store.stats().global;
                        assert_eq!(g.compression.decompress_errors, 0);
                        seen_z.fetch_max(g.compression.pages, Ordering::Relaxed);
                        assert!(g.data_bytes <= LIMIT_PAGES * PAGE_SIZE as u64, "over the limit");
                    }
                }
                store.destroy_client(c);
            })
        })
        .collect();
    for h in handles {
        h.join().expect("worker panicked");
    }
    let g = store.stats().global;
    assert_eq!(
        (g.pages, g.data_bytes, g.eph_pages, g.objects),
        (0, 0, 0, 0)
    );
    assert!(g.evictions > 0, "the test should have exercised eviction");
    assert!(g.compression.compactions > 0);
    assert!(
        seen_z.load(Ordering::Relaxed) > 24,
        "compressed pages should outnumber frames"
    );
    assert_eq!(g.compression.frames, 0);
}
