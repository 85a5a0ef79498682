//! `cargo bench -p tmem-store --bench destroy`: one thread destroys a big persistent pool
//! (1 GiB by default) while another does synchronous gets on its own small pool. Prints the
//! getter's latency percentiles while nothing else runs (baseline) and during the destroy,
//! per run and as the median of the runs with min and max. Set `TMEM_BENCH_MIB` (pool size)
//! and `TMEM_BENCH_RUNS` (default 5).

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};
use tmem_store::*;

/// Pages of the getter's own pool.
const GETTER_PAGES: u64 = 1024;
const BASELINE: Duration = Duration::from_millis(300);

const IDLE: u8 = 0;
const BASE: u8 = 1;
const DESTROY: u8 = 2;
const STOP: u8 = 3;

fn key(i: u64) -> PageKey {
    PageKey {
        oid: Oid([i / 64, 0xfeed, 0]),
        index: (i % 64) as u32,
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy, Default)]
struct Lat {
    p50: f64,
    p99: f64,
    max: f64,
    n: usize,
}

/// Percentiles in µs of `v` (nanoseconds).
fn lat(mut v: Vec<u64>) -> Lat {
    if v.is_empty() {
        return Lat::default();
    }
    v.sort_unstable();
    let at = |q: f64| v[((v.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    Lat {
        p50: at(0.5),
        p99: at(0.99),
        max: *v.last().unwrap_or(&0) as f64 / 1000.0,
        n: v.len(),
    }
}

fn summary(name: &str, xs: &[f64]) {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    println!(
        "{name:>28}: median {:>9.1}  min {:>9.1}  max {:>9.1}",
        v[v.len() / 2],
        v[0],
        v[v.len() - 1]
    );
}

fn main() {
    let mib = env("TMEM_BENCH_MIB", 1024);
    let runs = env("TMEM_BENCH_RUNS", 5) as usize;
    let pages = mib * 256;
    let store = Store::new(StoreConfig {
        mem_limit_bytes: (pages + GETTER_PAGES + 64) * PAGE_SIZE as u64,
        // One client holds the whole pool here: lift the default persistent share.
        default_persistent_share_percent: 0,
        ..StoreConfig::default()
    });
    let (big, _) = store.attach_client(1, 1, "destroyer").unwrap();
    let (small, _) = store.attach_client(2, 1, "getter").unwrap();
    let (sp, _) = store
        .new_pool(small, [0, 0], PoolKind::PrivatePersistent)
        .unwrap();
    let mut src: Page = [0u8; PAGE_SIZE];
    for i in 0..GETTER_PAGES {
        src[..8].copy_from_slice(&(i + 1).to_le_bytes());
        store.put(small, sp, key(i), &src).unwrap();
    }
    println!(
        "tmem-store destroy benchmark: {mib} MiB persistent pool destroyed while another \
         client gets from its {GETTER_PAGES}-page pool; {runs} runs; latencies in µs"
    );
    println!();
    println!(
        "{:>4} {:>10} {:>8} {:>8} {:>8} {:>10} {:>8} {:>8} {:>8} {:>10}",
        "run", "base n", "p50", "p99", "max", "destroy n", "p50", "p99", "max", "destroy ms"
    );
    let phase = AtomicU8::new(IDLE);
    let mut rows: Vec<(Lat, Lat, f64)> = Vec::new();
    std::thread::scope(|s| {
        let getter = s.spawn(|| {
            let mut dst: Page = [0u8; PAGE_SIZE];
            let mut base = Vec::new();
            let mut during = Vec::new();
            let mut out = Vec::new();
            let mut x = 0x9E37_79B9_7F4A_7C15u64;
            loop {
                let ph = phase.load(Ordering::Acquire);
                match ph {
                    STOP => break,
                    IDLE => {
                        if !base.is_empty() || !during.is_empty() {
                            out.push((std::mem::take(&mut base), std::mem::take(&mut during)));
                        }
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    }
                    _ => {}
                }
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = x % GETTER_PAGES;
                let t = Instant::now();
                let hit = store.get(small, sp, key(i), &mut dst);
                let ns = t.elapsed().as_nanos() as u64;
                assert_eq!(hit, Ok(true));
                assert_eq!(dst[..8], (i + 1).to_le_bytes(), "wrong data");
                // A get that overlapped the destroy counts as during it.
                let end = phase.load(Ordering::Acquire);
                if ph == DESTROY || end == DESTROY {
                    during.push(ns);
                } else if end == BASE {
                    base.push(ns);
                }
            }
            out
        });
        for run in 0..runs {
            let (bp, _) = store
                .new_pool(big, [0, 0], PoolKind::PrivatePersistent)
                .unwrap();
            for i in 0..pages {
                src[..8].copy_from_slice(&i.to_le_bytes());
                src[4088..].copy_from_slice(&(run as u64).to_le_bytes());
                store.put(big, bp, key(i), &src).unwrap();
            }
            phase.store(BASE, Ordering::Release);
            std::thread::sleep(BASELINE);
            phase.store(DESTROY, Ordering::Release);
            let t = Instant::now();
            assert_eq!(store.destroy_pool(big, bp), Ok(true));
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            phase.store(IDLE, Ordering::Release);
            rows.push((Lat::default(), Lat::default(), ms));
            // Let the getter hand over this run's samples before the next fill.
            std::thread::sleep(Duration::from_millis(20));
        }
        phase.store(STOP, Ordering::Release);
        let samples = getter.join().unwrap();
        for (row, (b, d)) in rows.iter_mut().zip(samples) {
            row.0 = lat(b);
            row.1 = lat(d);
        }
    });
    for (run, (b, d, ms)) in rows.iter().enumerate() {
        println!(
            "{:>4} {:>10} {:>8.2} {:>8.2} {:>8.1} {:>10} {:>8.2} {:>8.2} {:>8.1} {:>10.1}",
            run, b.n, b.p50, b.p99, b.max, d.n, d.p50, d.p99, d.max, ms
        );
    }
    println!();
    let col = |f: fn(&(Lat, Lat, f64)) -> f64| rows.iter().map(f).collect::<Vec<f64>>();
    summary("baseline p50 µs", &col(|r| r.0.p50));
    summary("baseline p99 µs", &col(|r| r.0.p99));
    summary("baseline max µs", &col(|r| r.0.max));
    summary("during destroy p50 µs", &col(|r| r.1.p50));
    summary("during destroy p99 µs", &col(|r| r.1.p99));
    summary("during destroy max µs", &col(|r| r.1.max));
    summary("gets during destroy", &col(|r| r.1.n as f64));
    summary("destroy ms", &col(|r| r.2));
    let left = store.stats().global;
    assert_eq!(left.pages, GETTER_PAGES, "pages left after the destroys");
}
