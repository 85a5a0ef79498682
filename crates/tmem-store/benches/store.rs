//! `cargo bench -p tmem-store`: put, get and flush rates of the store over a working set much
//! larger than the CPU caches (1 GiB of pages by default, random order), with 1 and 2 threads,
//! next to a plain copy of the same pages in the same order timed just before each op, plus the
//! metadata bytes per stored page. Set `TMEM_BENCH_MIB` to change the working set, and
//! `TMEM_BENCH_CONTENT` what the pages hold: `sparse` (default: a number in the first and last
//! 8 bytes, zeroes between), `random` (random bytes), or `same` (each page one 8-byte word
//! repeated, stored without a data frame).

use std::time::Instant;
use tmem_store::*;

const PAGES_PER_OBJECT: u64 = 64;

/// A page-aligned page, as guest pages in the rings' data slots are. (A `Vec<Page>` starts
/// 16 bytes into a page; a copy into a frame 4 to 12 bytes further on in its page runs four
/// times slower on x86, "4K aliasing", and which frame a put gets decided whether it did.)
#[derive(Clone, Copy)]
#[repr(C, align(4096))]
struct APage(Page);

fn key(i: u64) -> PageKey {
    PageKey {
        oid: Oid([i / PAGES_PER_OBJECT, 0xfeed, 0]),
        index: (i % PAGES_PER_OBJECT) as u32,
    }
}

fn shuffle(v: &mut [u64], mut s: u64) {
    for i in (1..v.len()).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        v.swap(i, (s % (i as u64 + 1)) as usize);
    }
}

/// Run `f(thread, part)` on `threads` threads over equal parts of `order`; returns seconds.
fn timed<F: Fn(usize, &[u64]) + Sync>(order: &[u64], threads: usize, f: F) -> f64 {
    let part = order.len().div_ceil(threads);
    let t = Instant::now();
    std::thread::scope(|s| {
        for (n, chunk) in order.chunks(part).enumerate() {
            let f = &f;
            s.spawn(move || f(n, chunk));
        }
    });
    t.elapsed().as_secs_f64()
}

fn main() {
    let mib: u64 = std::env::var("TMEM_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let n = mib * 256;
    println!("tmem-store benchmark: {n} pages ({mib} MiB), {PAGES_PER_OBJECT} pages per object, random order");
    // Source (guest) pages and destination pages, faulted in before any timing.
    let content = std::env::var("TMEM_BENCH_CONTENT").unwrap_or_else(|_| "sparse".into());
    println!("page content: {content}");
    let mut src: Vec<APage> = vec![APage([0u8; PAGE_SIZE]); n as usize];
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    for (i, APage(p)) in src.iter_mut().enumerate() {
        match content.as_str() {
            "random" => {
                for w in p.chunks_exact_mut(8) {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    w.copy_from_slice(&rng.to_le_bytes());
                }
            }
            "same" => {
                for w in p.chunks_exact_mut(8) {
                    w.copy_from_slice(&(i as u64 + 1).to_le_bytes());
                }
            }
            _ => {
                p[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
                p[4088..].copy_from_slice(&(i as u64 ^ 0x5a5a).to_le_bytes());
            }
        }
    }
    let dst: Vec<std::sync::Mutex<Page>> = (0..n)
        .map(|_| std::sync::Mutex::new([1u8; PAGE_SIZE]))
        .collect();
    let mut order: Vec<u64> = (0..n).collect();
    shuffle(&mut order, 0x9E37_79B9_7F4A_7C15);

    println!();
    println!(
        "{:>8} {:>7} {:>12} {:>12} {:>8}",
        "op", "threads", "Mpages/s", "memcpy Mp/s", "ratio"
    );
    let mut meta_per_page = 0.0;
    for threads in [1usize, 2] {
        let store = Store::new(StoreConfig {
            mem_limit_bytes: n * PAGE_SIZE as u64,
            // One client fills the store: no default persistent share.
            default_persistent_share_percent: 0,
            ..StoreConfig::default()
        });
        let clients: Vec<(ClientId, u32)> = (0..threads)
            .map(|t| {
                let (c, _) = store.attach_client(t as u32 + 1, 1, "bench").unwrap();
                let (p, _) = store
                    .new_pool(c, [0, 0], PoolKind::PrivatePersistent)
                    .unwrap();
                (c, p)
            })
            .collect();
        let put = |t: usize, part: &[u64]| {
            let (c, p) = clients[t];
            for &i in part {
                store.put(c, p, key(i), &src[i as usize].0).unwrap();
            }
        };
        let get = |t: usize, part: &[u64]| {
            let (c, p) = clients[t];
            for &i in part {
                let mut d = dst[i as usize].lock().unwrap();
                assert_eq!(store.get(c, p, key(i), &mut *d), Ok(true));
            }
        };
        let flush = |t: usize, part: &[u64]| {
            let (c, p) = clients[t];
            for &i in part {
                store.flush_page(c, p, key(i)).unwrap();
            }
        };
        let memcpy = |_t: usize, part: &[u64]| {
            for &i in part {
                let mut d = dst[i as usize].lock().unwrap();
                d.copy_from_slice(&src[i as usize].0);
            }
        };
        // Warm-up: fault in the store's frames, then empty it again.
        timed(&order, threads, put);
        timed(&order, threads, flush);
        // The memcpy reference is timed right before each op it is compared with: on a
        // shared machine the load changes within a run, and a ratio against a copy timed a
        // minute earlier says more about the neighbours than about the store.
        let tm_put = timed(&order, threads, memcpy);
        let tp = timed(&order, threads, put);
        let st = store.stats().global;
        meta_per_page = st.metadata_bytes as f64 / st.pages as f64;
        let tm_get = timed(&order, threads, memcpy);
        let tg = timed(&order, threads, get);
        for (p, d) in src.iter().zip(&dst).step_by(4097) {
            assert!(p.0 == *d.lock().unwrap(), "get returned wrong data");
        }
        let tf = timed(&order, threads, flush);
        let rate = |t: f64| n as f64 / t / 1e6;
        for (name, t, tm) in [
            ("put", tp, Some(tm_put)),
            ("get", tg, Some(tm_get)),
            ("flush", tf, None),
        ] {
            let (mc, ratio) = match tm {
                Some(tm) => (
                    format!("{:.3}", rate(tm)),
                    format!("{:.0}%", 100.0 * tm / t),
                ),
                None => (String::from("-"), String::from("-")),
            };
            println!(
                "{:>8} {:>7} {:>12.3} {:>12} {:>8}",
                name,
                threads,
                rate(t),
                mc,
                ratio
            );
        }
    }
    println!();
    println!("metadata bytes per stored page: {meta_per_page:.1}");
}
