//! Chunked reclaim under concurrency: a reaper thread frees destroyed pools and flushed
//! objects a few pages at a time while client threads put, get, flush and destroy in a store
//! small enough that eviction, memory-full puts and puts helping the reclaim all happen.
//! Every hit is checked byte for byte against the last put of that key in the *current* pool
//! (never a destroyed pool's or a flushed object's page); persistent pages are known exactly.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use tmem_store::*;

const THREADS: u64 = 3;
const LIMIT_PAGES: u64 = 160;
const OPS: usize = 15_000;

fn page(tid: u64, gen: u64, k: u64, ver: u64) -> Page {
    let mut p = [0u8; PAGE_SIZE];
    for (i, c) in p.chunks_exact_mut(8).enumerate() {
        let w = match i % 4 {
            0 => tid,
            1 => gen,
            2 => k,
            _ => ver.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i as u64,
        };
        c.copy_from_slice(&(w | 1 << 63).to_le_bytes());
    }
    p
}

fn key(k: u64) -> PageKey {
    PageKey {
        oid: Oid([k / 8, 9, 0]),
        index: (k % 8) as u32,
    }
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// One client's pool and what it may hold: key -> version of the last successful put.
struct Pool {
    id: u32,
    kind: PoolKind,
    gen: u64,
    held: HashMap<u64, u64>,
}

fn client_thread(s: &Store, tid: u64) {
    let (c, _) = s.attach_client(tid as u32 + 1, 1, "t").unwrap();
    let mut pools: Vec<Pool> = [PoolKind::PrivatePersistent, PoolKind::PrivateEphemeral]
        .into_iter()
        .map(|kind| Pool {
            id: s.new_pool(c, [0, 0], kind).unwrap().0,
            kind,
            gen: 0,
            held: HashMap::new(),
        })
        .collect();
    let mut rng = Rng(0x1234_5678 ^ ((tid + 1) * 0x9E37_79B9));
    let mut ver = 0;
    let mut buf = [0u8; PAGE_SIZE];
    for _ in 0..OPS {
        let p = &mut pools[rng.below(2) as usize];
        let k = rng.below(48);
        let persistent = p.kind.is_persistent();
        match rng.below(100) {
            0..=44 => {
                ver += 1;
                match s.put(c, p.id, key(k), &page(tid, p.gen, k, ver)) {
                    Ok(()) => drop(p.held.insert(k, ver)),
                    Err(TmemError::NoMemory) => {
                        assert!(!p.held.contains_key(&k) || !persistent, "dup put failed");
                    }
                    Err(e) => panic!("thread {tid}: put {k}: {e:?}"),
                }
            }
            45..=84 => match s.get(c, p.id, key(k), &mut buf) {
                Ok(true) => {
                    let v = *p.held.get(&k).unwrap_or_else(|| {
                        panic!("thread {tid}: hit on key {k} never put in this pool")
                    });
                    assert!(
                        buf == page(tid, p.gen, k, v),
                        "thread {tid}: key {k}: wrong, stale or old-pool data"
                    );
                    if !persistent {
                        p.held.remove(&k);
                    }
                }
                Ok(false) | Err(TmemError::Empty) => {
                    assert!(
                        !persistent || !p.held.contains_key(&k),
                        "persistent page lost"
                    );
                    p.held.remove(&k);
                }
                Err(e) => panic!("thread {tid}: get {k}: {e:?}"),
            },
            85..=92 => {
                s.flush_object(c, p.id, key(k).oid).unwrap();
                p.held.retain(|&x, _| x / 8 != k / 8);
            }
            _ => {
                assert_eq!(s.destroy_pool(c, p.id), Ok(true));
                let (id, _) = s.new_pool(c, [0, 0], p.kind).unwrap();
                p.id = id;
                p.gen += 1;
                p.held.clear();
            }
        }
    }
}

#[test]
fn reclaim_races_puts_gets_flushes_and_evictions_without_stale_data() {
    let s = Store::new(StoreConfig {
        mem_limit_bytes: LIMIT_PAGES * PAGE_SIZE as u64,
        default_persistent_share_percent: 0,
        ..StoreConfig::default()
    });
    // Reclaim only by the reaper below (and by puts that need memory), 3 pages at a time.
    s.set_manual_reap(3);
    let done = AtomicBool::new(false);
    std::thread::scope(|sc| {
        let reaper = sc.spawn(|| {
            let mut steps = 0u64;
            while !done.load(Ordering::Acquire) {
                if !s.reap_step() {
                    std::thread::yield_now();
                }
                steps += 1;
            }
            steps
        });
        let clients: Vec<_> = (0..THREADS)
            .map(|t| {
                let s = &s;
                sc.spawn(move || client_thread(s, t))
            })
            .collect();
        for c in clients {
            c.join().expect("client thread");
        }
        done.store(true, Ordering::Release);
        reaper.join().expect("reaper thread");
    });
    while s.reap_step() {}
    let st = s.stats();
    let g = &st.global;
    assert!(g.data_bytes <= LIMIT_PAGES * PAGE_SIZE as u64);
    // Everything left is charged to a live pool.
    let live: u64 = st
        .clients
        .iter()
        .flat_map(|c| c.pools.iter())
        .map(|p| p.counters.pages)
        .sum();
    assert_eq!(g.pages, live, "pages left behind by reclaim");
    let charged: u64 = st.clients.iter().map(|c| c.pages).sum();
    assert_eq!(charged, live);
}
