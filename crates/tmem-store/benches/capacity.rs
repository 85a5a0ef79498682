//! `cargo bench -p tmem-store --bench capacity`: how many pages a store keeps per MiB of page
//! memory with compression off / lz4 / zstd, against the same compressor run on the same pages
//! with no store around it (the limit), plus put and get rates and synchronous get latency.
//!
//! Two corpora, built on any machine from what is on it (the `tmem-corpus` crate):
//! * **mixed**: 40% pages of executables and shared libraries, 20% of text (documentation,
//!   headers), 10% of logs (`/var/log`, text if too few), 15% zero pages, 5% same-filled
//!   pages of a non-zero word, 10% random pages;
//! * **incompressible**: random pages only.
//!
//! For each mode the store (`TMEM_BENCH_MIB` MiB of page memory, default 16) gets one
//! persistent pool and the corpus is put until memory is full; then every stored page is read
//! back (and compared once, outside the timing). Rates are MB/s of page data on one thread.
//!
//! Last, inline compression against a background design on the mixed corpus: put latency
//! (p50, p99) and rate with lz4 on the put path and with raw puts, then the rate of a pass
//! that compresses the raw pages later and the capacity before and after it, with a page
//! memcpy measured in the same run as the baseline (`TMEM_BENCH_SKIP_MODES=1` skips it).
//! Each mode runs `TMEM_BENCH_RUNS` times (default 5), interleaved; rates are given as median
//! (min-max).

use std::collections::BTreeMap;
use std::time::Instant;
use tmem_corpus::{same_filled, AlignedPage as APage, Corpus};
use tmem_store::*;

const MAX_COMPRESSED: usize = PAGE_SIZE * 3 / 4;

fn key(i: u64) -> PageKey {
    PageKey {
        oid: Oid([i / 64, 0xcafe, 0]),
        index: (i % 64) as u32,
    }
}

/// The compressor alone: bytes the pages need (same-filled: none; compressed if at most the
/// store's threshold, else a page), and its compression rate in MB/s over the pages it ran on.
fn limit(pages: &[APage], algo: Compression) -> (u64, f64) {
    let mut out = vec![0u8; lz4_flex::block::get_maximum_output_size(PAGE_SIZE)];
    let mut zc = zstd::bulk::Compressor::new(1).unwrap();
    let mut bytes = 0u64;
    let mut ran = 0u64;
    let t = Instant::now();
    for p in pages {
        if same_filled(&p.0) {
            continue;
        }
        ran += 1;
        let n = match algo {
            Compression::Off => PAGE_SIZE,
            Compression::Lz4 => lz4_flex::block::compress_into(&p.0, &mut out).unwrap(),
            Compression::Zstd => zc.compress_to_buffer(&p.0[..], &mut out[..]).unwrap(),
        };
        bytes += if n <= MAX_COMPRESSED { n } else { PAGE_SIZE } as u64;
    }
    let secs = t.elapsed().as_secs_f64();
    (bytes, ran as f64 * PAGE_SIZE as f64 / secs / 1e6)
}

struct Run {
    stored: u64,
    put_mbs: f64,
    get_mbs: f64,
    get_p50_ns: f64,
    get_p99_ns: f64,
    data_bytes: u64,
}

fn run_store(pages: &[APage], mib: u64, algo: Compression) -> Run {
    let s = Store::new(StoreConfig {
        mem_limit_bytes: mib << 20,
        default_persistent_share_percent: 0,
        ..StoreConfig::default()
    });
    s.prefault();
    let (c, _) = s.attach_client(1, 1, "bench").unwrap();
    s.set_compression(c, ClientCompression::both(algo)).unwrap();
    let (p, _) = s.new_pool(c, [1, 2], PoolKind::PrivatePersistent).unwrap();
    let t = Instant::now();
    let mut stored = 0u64;
    for (i, pg) in pages.iter().enumerate() {
        match s.put(c, p, key(i as u64), &pg.0) {
            Ok(()) => stored += 1,
            Err(TmemError::NoMemory) => break,
            Err(e) => panic!("put: {e}"),
        }
    }
    let put_secs = t.elapsed().as_secs_f64();
    let data_bytes = s.stats().global.data_bytes;
    let mut dst = APage([0u8; PAGE_SIZE]);
    let mut lat = Vec::with_capacity(stored as usize);
    let t = Instant::now();
    for i in 0..stored {
        let t0 = Instant::now();
        let r = s.get(c, p, key(i), &mut dst.0);
        lat.push(t0.elapsed().as_nanos() as u32);
        assert_eq!(r, Ok(true));
    }
    let get_secs = t.elapsed().as_secs_f64();
    // Every byte once, outside the timing.
    for i in 0..stored {
        s.get(c, p, key(i), &mut dst.0).unwrap();
        assert!(dst.0 == pages[i as usize].0, "page {i} differs");
    }
    lat.sort_unstable();
    let pct = |q: f64| lat[((lat.len() as f64 - 1.0) * q) as usize] as f64;
    Run {
        stored,
        put_mbs: stored as f64 * PAGE_SIZE as f64 / put_secs / 1e6,
        get_mbs: stored as f64 * PAGE_SIZE as f64 / get_secs / 1e6,
        get_p50_ns: pct(0.5),
        get_p99_ns: pct(0.99),
        data_bytes,
    }
}

fn med(v: &mut [f64]) -> String {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    format!("{:.0} ({:.0}-{:.0})", v[v.len() / 2], v[0], v[v.len() - 1])
}

fn table(name: &str, pages: &[APage], mib: u64, runs: usize) {
    let modes = [Compression::Off, Compression::Lz4, Compression::Zstd];
    let mut res: BTreeMap<&str, Vec<Run>> = BTreeMap::new();
    for _ in 0..runs {
        for m in modes {
            res.entry(m.name())
                .or_default()
                .push(run_store(pages, mib, m));
        }
    }
    println!(
        "\n## {name} corpus, {mib} MiB of page memory, {runs} runs (rates: median (min-max))\n"
    );
    println!("| mode | pages stored | pages / MiB | vs raw | limit pages / MiB | % of limit | compressor alone MB/s | put MB/s | get MB/s | get p50 ns | get p99 ns |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let raw_per_mib = 256.0;
    for m in modes {
        let rs = res.get_mut(m.name()).unwrap();
        let stored = rs[0].stored;
        assert!(
            rs.iter().all(|r| r.stored == stored),
            "capacity differs between runs"
        );
        let per_mib = stored as f64 / mib as f64;
        // The limit over the pages this store took (the same first `stored` pages).
        let (bytes, alone) = limit(&pages[..stored as usize], m);
        let lim = stored as f64 / (bytes.max(1) as f64 / (1 << 20) as f64);
        let name = if m == Compression::Off {
            "off (same-filled only)"
        } else {
            m.name()
        };
        println!(
            "| {name} | {stored} | {per_mib:.0} | {:.2}x | {lim:.0} | {:.0}% | {} | {} | {} | {} | {} |",
            per_mib / raw_per_mib,
            per_mib / lim * 100.0,
            if m == Compression::Off { "-".into() } else { format!("{alone:.0}") },
            med(&mut rs.iter().map(|r| r.put_mbs).collect::<Vec<_>>()),
            med(&mut rs.iter().map(|r| r.get_mbs).collect::<Vec<_>>()),
            med(&mut rs.iter().map(|r| r.get_p50_ns).collect::<Vec<_>>()),
            med(&mut rs.iter().map(|r| r.get_p99_ns).collect::<Vec<_>>()),
        );
        let _ = rs[0].data_bytes;
    }
    let off = &res["off"];
    for m in [Compression::Lz4, Compression::Zstd] {
        let r = &res[m.name()];
        let mut ratio: Vec<f64> = r
            .iter()
            .zip(off)
            .map(|(a, b)| a.put_mbs / b.put_mbs)
            .collect();
        ratio.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "\n{}: put rate / off, run by run: median {:.2} (min {:.2}, max {:.2})",
            m.name(),
            ratio[ratio.len() / 2],
            ratio[0],
            ratio[ratio.len() - 1]
        );
    }
}

fn main() {
    let mib: u64 = std::env::var("TMEM_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let runs: usize = std::env::var("TMEM_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    // Enough pages to fill the store at 4:1.
    let n = (mib as usize * 256 * 4).max(4096);
    let mixed = Corpus::mixed(n);
    println!("# capacity benchmark\n\nmixed corpus: {}", mixed.describe());
    let mixed = mixed.pages;
    table("mixed", &mixed, mib, runs);
    let noise = tmem_corpus::incompressible(mib as usize * 256 + 64);
    table("incompressible", &noise, mib, runs);
    if std::env::var_os("TMEM_BENCH_SKIP_MODES").is_none() {
        inline_vs_background(&mixed, runs);
    }
}

/// One run of the inline-versus-background comparison (see [`inline_vs_background`]).
struct ModeRun {
    memcpy_ns: f64,
    raw_p50: f64,
    raw_p99: f64,
    raw_mbs: f64,
    lz4_p50: f64,
    lz4_p99: f64,
    lz4_mbs: f64,
    pass_pages_s: f64,
    raw_per_mib: f64,
    pass_per_mib: f64,
    inline_per_mib: f64,
}

/// A heap store big enough for all of `pages` raw (plus room), one persistent pool.
fn roomy_store(pages: &[APage], algo: Compression) -> (Store, ClientId, u32) {
    let s = Store::new(StoreConfig {
        mem_limit_bytes: (pages.len() as u64 + 1024) * PAGE_SIZE as u64,
        default_persistent_share_percent: 0,
        ..StoreConfig::default()
    });
    s.prefault();
    let (c, _) = s.attach_client(1, 1, "bench").unwrap();
    s.set_compression(c, ClientCompression::both(algo)).unwrap();
    let (p, _) = s.new_pool(c, [1, 2], PoolKind::PrivatePersistent).unwrap();
    (s, c, p)
}

/// Put every page, timing each: (p50 ns, p99 ns, MB/s).
fn timed_puts(s: &Store, c: ClientId, p: u32, pages: &[APage]) -> (f64, f64, f64) {
    let mut lat = Vec::with_capacity(pages.len());
    let t = Instant::now();
    for (i, pg) in pages.iter().enumerate() {
        let t0 = Instant::now();
        s.put(c, p, key(i as u64), &pg.0).unwrap();
        lat.push(t0.elapsed().as_nanos() as u32);
    }
    let secs = t.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |q: f64| lat[((lat.len() as f64 - 1.0) * q) as usize] as f64;
    (
        pct(0.5),
        pct(0.99),
        pages.len() as f64 * PAGE_SIZE as f64 / secs / 1e6,
    )
}

/// Pages per MiB of page memory in use (frames holding a page or a compressed run).
fn per_mib(s: &Store) -> f64 {
    let g = s.stats().global;
    g.pages as f64 / (g.data_bytes.max(1) as f64 / (1 << 20) as f64)
}

fn mode_run(pages: &[APage]) -> ModeRun {
    // The same-run baseline: a page copy, what a raw put cannot go below.
    let mut dst = APage([0u8; PAGE_SIZE]);
    let t = Instant::now();
    for pg in pages {
        dst.0.copy_from_slice(std::hint::black_box(&pg.0));
        std::hint::black_box(&dst);
    }
    let memcpy_ns = t.elapsed().as_nanos() as f64 / pages.len() as f64;

    // Inline: lz4 on the put path.
    let (s, c, p) = roomy_store(pages, Compression::Lz4);
    let (lz4_p50, lz4_p99, lz4_mbs) = timed_puts(&s, c, p, pages);
    let inline_per_mib = per_mib(&s);
    drop(s);

    // Background: raw puts, then a pass that compresses the cold pages. The pass reads each
    // page back and puts it again with lz4 on (a duplicate put takes a free frame, compresses
    // and frees the raw one): the work a store-internal pass would do, plus one extra 4 KiB
    // copy and lookup per page, so an upper bound on its cost.
    let (s, c, p) = roomy_store(pages, Compression::Off);
    let (raw_p50, raw_p99, raw_mbs) = timed_puts(&s, c, p, pages);
    let raw_per_mib = per_mib(&s);
    s.set_compression(c, ClientCompression::both(Compression::Lz4))
        .unwrap();
    let t = Instant::now();
    for i in 0..pages.len() as u64 {
        assert_eq!(s.get(c, p, key(i), &mut dst.0), Ok(true));
        s.put(c, p, key(i), &dst.0).unwrap();
    }
    s.compact(usize::MAX);
    let pass_pages_s = pages.len() as f64 / t.elapsed().as_secs_f64();
    let pass_per_mib = per_mib(&s);
    // Every byte once, outside the timing.
    for (i, pg) in pages.iter().enumerate() {
        assert_eq!(s.get(c, p, key(i as u64), &mut dst.0), Ok(true));
        assert!(dst.0 == pg.0, "page {i} differs after the pass");
    }
    ModeRun {
        memcpy_ns,
        raw_p50,
        raw_p99,
        raw_mbs,
        lz4_p50,
        lz4_p99,
        lz4_mbs,
        pass_pages_s,
        raw_per_mib,
        pass_per_mib,
        inline_per_mib,
    }
}

/// Inline lz4 on the put path against raw puts plus a later pass over cold pages, on the
/// same pages, with the memcpy baseline of the same run.
fn inline_vs_background(pages: &[APage], runs: usize) {
    let rs: Vec<ModeRun> = (0..runs).map(|_| mode_run(pages)).collect();
    let col = |f: fn(&ModeRun) -> f64| med(&mut rs.iter().map(f).collect::<Vec<_>>());
    let ratio = |f: fn(&ModeRun) -> f64| {
        let mut v: Vec<f64> = rs.iter().map(f).collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        format!("{:.2} ({:.2}-{:.2})", v[v.len() / 2], v[0], v[v.len() - 1])
    };
    println!(
        "\n## inline vs background compression, mixed corpus, {} pages, {runs} runs (median (min-max))\n",
        pages.len()
    );
    println!(
        "memcpy of a page (same-run baseline): {} ns\n",
        col(|r| r.memcpy_ns)
    );
    println!(
        "| put path | put p50 ns | put p99 ns | put MB/s | p50 / memcpy | pages / MiB after puts |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| raw (background design) | {} | {} | {} | {} | {} |",
        col(|r| r.raw_p50),
        col(|r| r.raw_p99),
        col(|r| r.raw_mbs),
        ratio(|r| r.raw_p50 / r.memcpy_ns),
        col(|r| r.raw_per_mib),
    );
    println!(
        "| inline lz4 | {} | {} | {} | {} | {} |",
        col(|r| r.lz4_p50),
        col(|r| r.lz4_p99),
        col(|r| r.lz4_mbs),
        ratio(|r| r.lz4_p50 / r.memcpy_ns),
        col(|r| r.inline_per_mib),
    );
    println!(
        "\ninline lz4 put p50 / raw put p50: {}; put rate inline / raw: {}",
        ratio(|r| r.lz4_p50 / r.raw_p50),
        ratio(|r| r.lz4_mbs / r.raw_mbs),
    );
    println!(
        "background pass (get + lz4 duplicate put + compaction): {} pages/s; pages / MiB {} before the pass, {} after (inline: {}); pass time per page / inline put p50: {}",
        col(|r| r.pass_pages_s),
        col(|r| r.raw_per_mib),
        col(|r| r.pass_per_mib),
        col(|r| r.inline_per_mib),
        ratio(|r| 1e9 / r.pass_pages_s / r.lz4_p50),
    );
}
