//! `cargo bench -p tmem-store --bench durable`: what durable page memory costs. The same
//! workload on a store with heap frames (nothing survives tmemd) and on a durable store
//! (frames and records in a memfd page file), interleaved run by run, with a plain copy of
//! the same pages as the baseline, all in one run; then the time a restarted tmemd takes to
//! recover the full page file. Medians of `TMEM_BENCH_RUNS` runs (default 5) with min and max.
//! `TMEM_BENCH_MIB` sets the working set (default 1024 MiB of persistent pages).

use std::time::{Duration, Instant};
use tmem_store::*;

const UUID: [u64; 2] = [0xbe, 0xef];

/// A page-aligned page, as guest pages in the rings' data areas are (a copy between pages
/// whose addresses differ by a little less than a multiple of 4 KiB runs slower on x86:
/// "4K aliasing"; page-aligned buffers keep that out of the comparison).
#[derive(Clone, Copy)]
#[repr(C, align(4096))]
struct APage(Page);

fn key(i: u64) -> PageKey {
    PageKey {
        oid: Oid([i / 64, 0xfeed, 0]),
        index: (i % 64) as u32,
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

fn cfg(n: u64) -> StoreConfig {
    StoreConfig {
        // Room for every page plus the frames a durable store keeps free for duplicates.
        mem_limit_bytes: (n + 64) * PAGE_SIZE as u64,
        default_persistent_share_percent: 0,
        ..StoreConfig::default()
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Heap,
    Durable,
}

fn open(mode: Mode, n: u64) -> Store {
    let s = match mode {
        Mode::Heap => Store::new(cfg(n)),
        Mode::Durable => {
            Store::open_durable(cfg(n), PageFile::memfd("bench").unwrap())
                .unwrap()
                .0
        }
    };
    s.prefault();
    s
}

fn pool(s: &Store) -> (ClientId, u32) {
    let (c, _) = s.attach(Identity::Xen { domid: 1 }, 1, "bench").unwrap();
    let (p, _) = s.new_pool(c, UUID, PoolKind::PrivatePersistent).unwrap();
    (c, p)
}

fn median(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6
}

#[derive(Default)]
struct Runs {
    put: Vec<f64>,
    dup: Vec<f64>,
    get: Vec<f64>,
    get_random: Vec<f64>,
    put_p50: Vec<f64>,
    put_p99: Vec<f64>,
    get_p50: Vec<f64>,
    get_p99: Vec<f64>,
}

fn main() {
    let mib: u64 = std::env::var("TMEM_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let runs: usize = std::env::var("TMEM_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let n = mib * 256;
    println!("durable page memory: {n} persistent pages ({mib} MiB), random key order, {runs} runs, 1 thread");
    let mut src: Vec<APage> = vec![APage([0u8; PAGE_SIZE]); n as usize];
    for (i, APage(p)) in src.iter_mut().enumerate() {
        p[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
        p[4088..].copy_from_slice(&(i as u64 ^ 0x5a5a).to_le_bytes());
    }
    let mut order: Vec<u64> = (0..n).collect();
    shuffle(&mut order, 0x9E37_79B9_7F4A_7C15);
    let mut dst: Vec<APage> = vec![APage([1u8; PAGE_SIZE]); n as usize];
    let lat_n = (n as usize).min(20_000);

    let mut memcpy = Vec::new();
    let mut res = [Runs::default(), Runs::default()];
    for _ in 0..runs {
        // Baseline: copy the same pages in the same order.
        let t = Instant::now();
        for &i in &order {
            dst[i as usize].0 = src[i as usize].0;
        }
        std::hint::black_box(&dst);
        memcpy.push(n as f64 / t.elapsed().as_secs_f64() / 1e6);
        for (m, mode) in [Mode::Heap, Mode::Durable].into_iter().enumerate() {
            let s = open(mode, n);
            let (c, p) = pool(&s);
            let r = &mut res[m];
            let t = Instant::now();
            for &i in &order {
                s.put(c, p, key(i), &src[i as usize].0).unwrap();
            }
            r.put.push(n as f64 / t.elapsed().as_secs_f64() / 1e6);
            let t = Instant::now();
            for &i in &order {
                s.put(c, p, key(i), &src[(i as usize + 1) % n as usize].0)
                    .unwrap();
            }
            r.dup.push(n as f64 / t.elapsed().as_secs_f64() / 1e6);
            let mut abuf = Box::new(APage([0u8; PAGE_SIZE]));
            let buf = &mut abuf.0;
            // Pages were stored in `order`, so their frames were handed out in that order:
            // getting them in `order` walks the frames in sequence, getting them by key jumps
            // between frames at random (as a long-running store's frames are).
            let t = Instant::now();
            for &i in &order {
                s.get(c, p, key(i), buf).unwrap();
            }
            r.get.push(n as f64 / t.elapsed().as_secs_f64() / 1e6);
            let t = Instant::now();
            for i in 0..n {
                s.get(c, p, key(i), buf).unwrap();
            }
            r.get_random
                .push(n as f64 / t.elapsed().as_secs_f64() / 1e6);
            // Synchronous latency: one timed operation at a time.
            let mut lp = Vec::with_capacity(lat_n);
            let mut lg = Vec::with_capacity(lat_n);
            for &i in order.iter().take(lat_n) {
                let t = Instant::now();
                s.put(c, p, key(i), &src[i as usize].0).unwrap();
                lp.push(t.elapsed());
                let t = Instant::now();
                s.get(c, p, key(i), buf).unwrap();
                lg.push(t.elapsed());
                assert_eq!(*buf, src[i as usize].0);
            }
            r.put_p50.push(pct(&mut lp, 0.5));
            r.put_p99.push(pct(&mut lp, 0.99));
            r.get_p50.push(pct(&mut lg, 0.5));
            r.get_p99.push(pct(&mut lg, 0.99));
        }
    }
    let (mc, mcl, mch) = median(&mut memcpy);
    println!();
    println!("rates in Mpages/s, latency in µs: median [min–max] of {runs} runs");
    println!(
        "{:<22} {:>22} {:>22} {:>8}",
        "", "heap frames", "durable (memfd)", "durable/heap"
    );
    let line = |name: &str, h: &mut Vec<f64>, d: &mut Vec<f64>| {
        let (hm, hl, hh) = median(h);
        let (dm, dl, dh) = median(d);
        println!(
            "{:<22} {:>8.3} [{:.3}–{:.3}] {:>8.3} [{:.3}–{:.3}] {:>8.2}",
            name,
            hm,
            hl,
            hh,
            dm,
            dl,
            dh,
            dm / hm
        );
    };
    let [h, d] = &mut res;
    line("put (new page)", &mut h.put, &mut d.put);
    line("put (duplicate)", &mut h.dup, &mut d.dup);
    line("get, frames in order", &mut h.get, &mut d.get);
    line(
        "get, frames at random",
        &mut h.get_random,
        &mut d.get_random,
    );
    line("sync put p50 µs", &mut h.put_p50, &mut d.put_p50);
    line("sync put p99 µs", &mut h.put_p99, &mut d.put_p99);
    line("sync get p50 µs", &mut h.get_p50, &mut d.get_p50);
    line("sync get p99 µs", &mut h.get_p99, &mut d.get_p99);
    println!(
        "{:<22} {:>8.3} [{:.3}–{:.3}]  (same pages, same order)",
        "memcpy baseline", mc, mcl, mch
    );

    // Recovery: a restarted tmemd opening the full page file.
    let s = open(Mode::Durable, n);
    let (c, p) = pool(&s);
    for &i in &order {
        s.put(c, p, key(i), &src[i as usize].0).unwrap();
    }
    let fd = s.page_file().unwrap().try_clone_fd().unwrap();
    drop(s);
    let mut total = Vec::new();
    let mut scan = Vec::new();
    let mut rebuild = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let (s, rec) =
            Store::open_durable(cfg(n), PageFile::from_fd(fd.try_clone().unwrap(), "bench"))
                .unwrap();
        total.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(rec.pages, n);
        scan.push(rec.scan.as_secs_f64() * 1e3);
        rebuild.push(rec.rebuild.as_secs_f64() * 1e3);
        drop(s);
    }
    let (tm, tl, th) = median(&mut total);
    let (sm, sl, sh) = median(&mut scan);
    let (rm, rl, rh) = median(&mut rebuild);
    println!();
    println!("recovery of {n} pages ({mib} MiB), ms: median [min–max]");
    println!("  open_durable total {tm:.1} [{tl:.1}–{th:.1}]  scan {sm:.1} [{sl:.1}–{sh:.1}]  rebuild {rm:.1} [{rl:.1}–{rh:.1}]");
}
