//! End-to-end benchmark: real tmemd, real `tmem-guest bench` processes over the local
//! transport, next to the limits measured in the same run (the in-process store, and a bare
//! shared-memory ring that only copies pages), plus tmemd's CPU use while idle.
//!
//! `cargo bench -p tmem-tests --bench e2e` prints one table. `TMEM_E2E_PAGES` sets the pages
//! per guest (default 100000). Numbers go into docs/benchmarks.md.
//!
//! A second table compares durable page memory (the default: a page file on /dev/shm) with
//! heap frames (`--no-durable`): two daemons side by side, one guest at a time, alternating,
//! `TMEM_E2E_RUNS` runs (default 5), medians with min and max.

use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tmem_abi::{Oid, Page, PageKey, PoolKind, PAGE_SIZE};
use tmem_store::{Store, StoreConfig};
use tmem_tests::{bin, Daemon, TempDir, Value};

fn pages_per_guest() -> u64 {
    std::env::var("TMEM_E2E_PAGES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000)
}

struct Row {
    what: String,
    put: f64,
    get: f64,
    note: String,
}

/// Run `n` guest bench processes at once; returns (aggregate put pages/s, get pages/s, lines).
fn guests(dir: &TempDir, n: usize, pages: u64, extra: &[&str]) -> (f64, f64, Vec<Value>) {
    let children: Vec<_> = (0..n)
        .map(|i| {
            Command::new(bin("tmem-guest"))
                .arg("bench")
                .arg("--socket")
                .arg(dir.socket())
                .args(["--domid", &(10 + i).to_string()])
                .args(["--pages", &pages.to_string()])
                .args(extra)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn tmem-guest bench")
        })
        .collect();
    let mut lines = Vec::new();
    for c in children {
        let out = c.wait_with_output().expect("bench output");
        assert!(out.status.success(), "tmem-guest bench failed");
        let v: Value = serde_json::from_slice(&out.stdout).expect("bench JSON");
        assert_eq!(v["verification_errors"], 0, "{v}");
        assert_eq!(v["put"]["stored"].as_u64(), Some(pages), "{v}");
        assert_eq!(v["get"]["hits"].as_u64(), Some(pages), "{v}");
        lines.push(v);
    }
    // Aggregate rate: all pages over the slowest guest's time (they ran concurrently).
    let total = pages as f64 * n as f64;
    let slowest = |phase: &str| {
        lines
            .iter()
            .map(|v| v[phase]["seconds"].as_f64().unwrap_or(f64::MAX))
            .fold(0.0, f64::max)
    };
    (total / slowest("put"), total / slowest("get"), lines)
}

/// The store alone, in this process, one thread: the same pages and access pattern.
fn store_limit(pages: u64) -> (f64, f64) {
    let store = Store::new(StoreConfig {
        mem_limit_bytes: (pages + 1024) * PAGE_SIZE as u64,
        default_persistent_share_percent: 0,
        ..StoreConfig::default()
    });
    store.prefault();
    let (c, _) = store.attach_client(1, 1, "bench").unwrap();
    let (pool, _) = store
        .new_pool(c, [1, 1], PoolKind::PrivatePersistent)
        .unwrap();
    let key = |i: u64| PageKey {
        oid: Oid([i >> 10, 0, 0]),
        index: (i & 1023) as u32,
    };
    let mut page: Page = [0x5a; PAGE_SIZE];
    let t = Instant::now();
    for i in 0..pages {
        page[0..8].copy_from_slice(&i.to_le_bytes());
        store.put(c, pool, key(i), &page).unwrap();
    }
    let put = pages as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for i in 0..pages {
        assert!(store.get(c, pool, key(i), &mut page).unwrap());
    }
    let get = pages as f64 / t.elapsed().as_secs_f64();
    (put, get)
}

/// A bare single-producer single-consumer ring of page slots between two threads: the
/// producer copies a page into a slot, the consumer copies it out into its own memory (as a
/// store would). No validation, no store, no notifications: the limit of any shm design.
fn bare_ring_limit(pages: u64) -> f64 {
    const SLOTS: usize = 64;
    struct Ring {
        slots: Vec<std::cell::UnsafeCell<Page>>,
        head: std::sync::atomic::AtomicU64,
        tail: std::sync::atomic::AtomicU64,
    }
    // SAFETY: each slot is written only by the producer while it owns it (head - tail < SLOTS)
    // and read only by the consumer after the release store of `head`; the indices hand over.
    unsafe impl Sync for Ring {}
    let ring = Arc::new(Ring {
        slots: (0..SLOTS)
            .map(|_| std::cell::UnsafeCell::new([0u8; PAGE_SIZE]))
            .collect(),
        head: 0.into(),
        tail: 0.into(),
    });
    let r2 = ring.clone();
    let start = Arc::new(std::sync::Barrier::new(2));
    let start2 = start.clone();
    let consumer = std::thread::spawn(move || {
        // The consumer's destination: distinct pages, like a store's frames.
        // Filled with a non-zero byte so it is faulted in before the clock matters, as the
        // store's frames are.
        let mut dst: Vec<Page> = vec![[1u8; PAGE_SIZE]; (pages as usize).min(1 << 18)];
        let n = dst.len();
        start2.wait();
        for i in 0..pages {
            while r2.head.load(Ordering::Acquire) == i {
                std::hint::spin_loop();
            }
            // SAFETY: slot i % SLOTS was published by the producer and is not rewritten until
            // `tail` passes i.
            let src = unsafe { &*r2.slots[i as usize % SLOTS].get() };
            dst[i as usize % n].copy_from_slice(src);
            r2.tail.store(i + 1, Ordering::Release);
        }
        std::hint::black_box(&dst);
    });
    let src: Page = [0x5a; PAGE_SIZE];
    start.wait();
    let t = Instant::now();
    for i in 0..pages {
        while i - ring.tail.load(Ordering::Acquire) >= SLOTS as u64 {
            std::hint::spin_loop();
        }
        // SAFETY: the consumer finished with this slot (tail > i - SLOTS) and will not read it
        // before the release store of head below.
        unsafe { (*ring.slots[i as usize % SLOTS].get()).copy_from_slice(&src) };
        ring.head.store(i + 1, Ordering::Release);
    }
    consumer.join().unwrap();
    pages as f64 / t.elapsed().as_secs_f64()
}

/// CPU time (user + system) of a process, in clock ticks, from /proc.
fn cpu_ticks(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the ")" of the command name; utime and stime are fields 14 and 15.
    let rest = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

fn idle_cpu_percent(pid: i32, secs: u64) -> f64 {
    let hz = 100.0; // USER_HZ on Linux
    let a = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(secs));
    let b = cpu_ticks(pid);
    (b - a) as f64 / hz / secs as f64 * 100.0
}

fn main() {
    let pages = pages_per_guest();
    let dir = TempDir::new("e2e");
    let mem = format!("{}M", ((pages * 8 * PAGE_SIZE as u64) >> 20) + 256);
    let daemon = Daemon::start(&dir, &["--mem-limit", &mem]);
    // Measure the steady state: wait until tmemd has faulted in its page memory.
    tmem_tests::wait_for(Duration::from_secs(120), "tmemd prefault", || {
        daemon
            .log_text()
            .contains("page-data memory faulted in")
            .then_some(())
    });
    let mut rows = Vec::new();

    let bare = bare_ring_limit(pages);
    rows.push(Row {
        what: "bare shm ring + memcpy, 2 threads (limit)".into(),
        put: bare,
        get: bare,
        note: "no validation, no store".into(),
    });
    let (sp, sg) = store_limit(pages);
    rows.push(Row {
        what: "in-process store, 1 thread (limit)".into(),
        put: sp,
        get: sg,
        note: "no ring".into(),
    });
    for n in [1usize, 2, 8] {
        let (p, g, _) = guests(&dir, n, pages, &[]);
        rows.push(Row {
            what: format!("tmemd, {n} guest(s), window 128"),
            put: p,
            get: g,
            note: format!(
                "{:.0}% / {:.0}% of bare ring",
                100.0 * p / bare,
                100.0 * g / bare
            ),
        });
    }
    // Synchronous round trips (window 1): alone, then with one loaded guest beside it.
    let sync_pages = (pages / 10).max(1000);
    let (_, _, alone) = guests(&dir, 1, sync_pages, &["--window", "1"]);
    let load = Command::new(bin("tmem-guest"))
        .arg("bench")
        .arg("--socket")
        .arg(dir.socket())
        .args(["--domid", "99", "--pages", &(pages * 4).to_string()])
        .stdout(Stdio::null())
        .spawn()
        .expect("load guest");
    std::thread::sleep(Duration::from_millis(200));
    let (_, _, loaded) = guests(&dir, 1, sync_pages, &["--window", "1"]);
    let mut load = load;
    let _ = load.wait();

    // Idle CPU: nothing connected, then one connected guest that does nothing.
    std::thread::sleep(Duration::from_millis(500));
    let idle_empty = idle_cpu_percent(daemon.pid(), 3);
    let idle_client = {
        let t = tmem_front::LocalTransport::new(dir.socket(), 50, 50, "idle");
        let c = tmem_front::Client::new(Box::new(t), tmem_front::ClientConfig::default());
        assert!(c.wait_mapped(Duration::from_secs(5)));
        std::thread::sleep(Duration::from_millis(500));
        idle_cpu_percent(daemon.pid(), 3)
    };

    println!();
    println!("tmemd end-to-end benchmark: {pages} pages per guest (4 KiB), local transport");
    println!();
    println!(
        "| {:<44} | {:>14} | {:>14} | {:<30} |",
        "path", "put pages/s", "get pages/s", "note"
    );
    println!("|{:-<46}|{:->16}|{:->16}|{:-<32}|", "", "", "", "");
    for r in &rows {
        println!(
            "| {:<44} | {:>14.0} | {:>14.0} | {:<30} |",
            r.what, r.put, r.get, r.note
        );
    }
    println!();
    println!("| synchronous round trip (window 1)  | put p50 | put p99 | get p50 | get p99 |");
    println!("|------------------------------------|--------:|--------:|--------:|--------:|");
    for (what, v) in [("alone", &alone[0]), ("beside a loaded guest", &loaded[0])] {
        println!(
            "| {:<34} | {:>5.1} µs | {:>5.1} µs | {:>5.1} µs | {:>5.1} µs |",
            what,
            v["put"]["p50_us"].as_f64().unwrap_or(f64::NAN),
            v["put"]["p99_us"].as_f64().unwrap_or(f64::NAN),
            v["get"]["p50_us"].as_f64().unwrap_or(f64::NAN),
            v["get"]["p99_us"].as_f64().unwrap_or(f64::NAN),
        );
    }
    println!();
    println!("| tmemd CPU while idle              | % of one core |");
    println!("|-----------------------------------|--------------:|");
    println!("| no guest connected                | {idle_empty:>12.2}% |");
    println!("| one idle guest connected          | {idle_client:>12.2}% |");
    drop(daemon);
    durable_vs_heap(pages, &mem);
}

fn runs() -> usize {
    std::env::var("TMEM_E2E_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
        .max(1)
}

/// Median, min and max.
fn spread(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

/// Persistent puts and gets through tmemd with durable page memory against heap frames.
fn durable_vs_heap(pages: u64, mem: &str) {
    let dirs = [TempDir::new("e2e-heap"), TempDir::new("e2e-durable")];
    let daemons = [
        Daemon::start(&dirs[0], &["--mem-limit", mem, "--no-durable"]),
        Daemon::start(&dirs[1], &["--mem-limit", mem]),
    ];
    for d in &daemons {
        tmem_tests::wait_for(Duration::from_secs(120), "tmemd prefault", || {
            d.log_text()
                .contains("page-data memory faulted in")
                .then_some(())
        });
    }
    let sync_pages = (pages / 10).max(1000);
    // [mode][metric] over runs: put/s, get/s, sync put p50, p99, sync get p50, p99.
    let mut m: [[Vec<f64>; 6]; 2] = Default::default();
    for run in 0..runs() {
        for k in 0..2 {
            // Alternate which goes first, so neither always runs on a warmer machine.
            let mode = if run % 2 == 0 { k } else { 1 - k };
            let (p, g, _) = guests(&dirs[mode], 1, pages, &[]);
            let (_, _, sync) = guests(&dirs[mode], 1, sync_pages, &["--window", "1"]);
            let v = &sync[0];
            let lat = |op: &str, q: &str| v[op][q].as_f64().unwrap_or(f64::NAN);
            let vals = [
                p,
                g,
                lat("put", "p50_us"),
                lat("put", "p99_us"),
                lat("get", "p50_us"),
                lat("get", "p99_us"),
            ];
            for (i, x) in vals.into_iter().enumerate() {
                m[mode][i].push(x);
            }
        }
    }
    println!();
    println!(
        "durable page memory against heap frames: persistent pool, 1 guest, window 128 and \
         window 1; median [min–max] of {} runs",
        runs()
    );
    println!();
    println!("| metric | heap frames (--no-durable) | durable (page file) | durable / heap |");
    println!("|---|---:|---:|---:|");
    let names = [
        "put pages/s",
        "get pages/s",
        "sync put p50 µs",
        "sync put p99 µs",
        "sync get p50 µs",
        "sync get p99 µs",
    ];
    let [heap, durable] = &mut m;
    for (i, name) in names.iter().enumerate() {
        let (hm, hl, hh) = spread(&mut heap[i]);
        let (dm, dl, dh) = spread(&mut durable[i]);
        let fmt = |x: f64| {
            if i < 2 {
                format!("{x:.0}")
            } else {
                format!("{x:.1}")
            }
        };
        println!(
            "| {name} | {} [{}–{}] | {} [{}–{}] | {:.2} |",
            fmt(hm),
            fmt(hl),
            fmt(hh),
            fmt(dm),
            fmt(dl),
            fmt(dh),
            dm / hm
        );
    }
}
