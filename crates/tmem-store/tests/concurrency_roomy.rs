//! Concurrency with room to spare: puts take the one-lock path (a free frame is filled before
//! the metadata lock is taken, and a duplicate is replaced by the new frame). Threads race
//! duplicate puts, zero-page puts, gets and flushes on the keys of one shared pool, and on
//! their own persistent pools; every page read must be whole, of the right key, and (for
//! private keys) the last version put. Accounting must return to zero.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tmem_store::*;

const THREADS: usize = 4;
const OPS: usize = 20000;
const SHARED: [u64; 2] = [0x5eed, 0xbeef];
const SHARED_KEYS: u64 = 48;
/// Shared keys at or above this are sometimes written as all-zero pages.
const ZERO_KEYS: u64 = 40;

mod contention;

fn page(kid: u64, ver: u64) -> Page {
    contention::page(kid, ver, 1)
}

fn decode(p: &Page) -> Option<(u64, u64)> {
    contention::decode(p, 1)
}

fn key(kid: u64) -> PageKey {
    PageKey {
        oid: Oid([kid / 8, 3, 4]),
        index: (kid % 8) as u32,
    }
}

#[test]
fn one_lock_puts_race_gets_and_flushes_without_tearing() {
    let store = Arc::new(Store::new(StoreConfig {
        // Room for every key of every pool: no put ever needs to evict.
        mem_limit_bytes: 1024 * PAGE_SIZE as u64,
        ..StoreConfig::default()
    }));
    store.set_shared_auth_required(false);
    let version = Arc::new(AtomicU64::new(1));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = Arc::clone(&store);
            let version = Arc::clone(&version);
            std::thread::spawn(move || {
                let (c, _) = store.attach_client(t as u32 + 1, 1, "t").unwrap();
                let (sp, _) = store
                    .new_pool(c, SHARED, PoolKind::SharedEphemeral)
                    .unwrap();
                let (pp, _) = store
                    .new_pool(c, [0, 0], PoolKind::PrivatePersistent)
                    .unwrap();
                let mut pers_last: Vec<Option<u64>> = vec![None; 16];
                let mut x = 0x2545_F491_4F6C_DD1Du64 ^ ((t as u64 + 1) * 0x9E37);
                let mut buf = [0u8; PAGE_SIZE];
                let zero = [0u8; PAGE_SIZE];
                let base = (t as u64 + 1) << 20;
                for _ in 0..OPS {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let ver = version.fetch_add(1, Ordering::Relaxed);
                    let kid = (x >> 8) % SHARED_KEYS;
                    match x % 8 {
                        0 | 1 => {
                            let p = if kid >= ZERO_KEYS && x & 0x100 != 0 {
                                zero
                            } else {
                                page(kid, ver)
                            };
                            store.put(c, sp, key(kid), &p).unwrap();
                        }
                        2 | 3 => {
                            if let Ok(true) = store.get(c, sp, key(kid), &mut buf) {
                                let ok = match decode(&buf) {
                                    Some((k, v)) => k == kid && v < version.load(Ordering::Relaxed),
                                    None => kid >= ZERO_KEYS && buf == zero,
                                };
                                assert!(ok, "torn or foreign shared page for key {kid}");
                            }
                        }
                        4 => store.flush_page(c, sp, key(kid)).unwrap(),
                        5 => {
                            let i = (kid % 16) as usize;
                            let pk = base + i as u64;
                            store.put(c, pp, key(pk), &page(pk, ver)).unwrap();
                            pers_last[i] = Some(ver);
                        }
                        6 => {
                            let i = (kid % 16) as usize;
                            let pk = base + i as u64;
                            let hit = matches!(store.get(c, pp, key(pk), &mut buf), Ok(true));
                            match pers_last[i] {
                                Some(v) => {
                                    assert!(hit, "persistent page lost");
                                    assert_eq!(decode(&buf), Some((pk, v)), "stale or torn");
                                }
                                None => assert!(!hit, "flushed persistent page came back"),
                            }
                        }
                        _ => {
                            let i = (kid % 16) as usize;
                            store.flush_page(c, pp, key(base + i as u64)).unwrap();
                            pers_last[i] = None;
                        }
                    }
                }
                let st = store.stats();
                let me = st.clients.iter().find(|s| s.client_id == c.0).unwrap();
                let held = pers_last.iter().filter(|v| v.is_some()).count() as u64;
                assert_eq!(me.pages, held, "client page count drifted");
                store.destroy_client(c);
            })
        })
        .collect();
    for h in handles {
        h.join().expect("worker panicked");
    }
    let g = store.stats().global;
    assert_eq!(
        (g.pages, g.data_bytes, g.eph_pages, g.objects, g.zero_pages),
        (0, 0, 0, 0, 0)
    );
    assert_eq!(g.evictions, 0, "nothing should have needed evicting");
    assert_eq!(
        g.frames_free, g.frames_allocated,
        "every frame is back on the free list"
    );
}
