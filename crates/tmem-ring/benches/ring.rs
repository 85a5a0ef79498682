//! `cargo bench -p tmem-ring`: the ring against its limit, and spin vs sleep round trips.
//!
//! Prints, from one run: a bare SPSC ring with 4 KiB memcpy per page (the limit), PUT
//! throughput through FrontendRing/BackendRing between two threads, and synchronous round-trip
//! latency with the backend polling (PollPolicy default) vs sleeping on an eventfd at once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tmem_abi::{cmd, PageSource, Request, RequestEntry, PAGE_SIZE};
use tmem_ring::{BackendRing, FrontendRing, HeapMem, Layout, PollPolicy, SharedMem};

const RUN: Duration = Duration::from_millis(700);
const SLOTS: u32 = 64;

fn mpages(n: u64, t: Duration) -> f64 {
    n as f64 / t.as_secs_f64() / 1e6
}

/// A bare single-producer single-consumer ring of 4 KiB slots, no validation, no responses:
/// the producer copies a page in, the consumer copies it out.
fn bare_spsc() -> (u64, Duration) {
    struct Shared {
        head: AtomicU64,
        tail: AtomicU64,
        stop: AtomicBool,
        mem: HeapMem,
    }
    let n = SLOTS as u64;
    let s = Arc::new(Shared {
        head: AtomicU64::new(0),
        tail: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        mem: HeapMem::new(SLOTS as usize * PAGE_SIZE),
    });
    let c = Arc::clone(&s);
    let consumer = thread::spawn(move || {
        let mut page = [0u8; PAGE_SIZE];
        let mut tail = 0u64;
        let mut sum = 0u64;
        loop {
            let head = c.head.load(Ordering::Acquire);
            if head == tail {
                if c.stop.load(Ordering::Relaxed) {
                    break;
                }
                std::hint::spin_loop();
                continue;
            }
            while tail != head {
                let off = (tail % n) as usize * PAGE_SIZE;
                // SAFETY: slot inside the HeapMem; the producer does not write it until
                // `tail` moves past it.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        c.mem.base().wrapping_add(off),
                        page.as_mut_ptr(),
                        PAGE_SIZE,
                    )
                };
                sum = sum.wrapping_add(page[0] as u64);
                tail += 1;
            }
            c.tail.store(tail, Ordering::Release);
        }
        std::hint::black_box(sum);
        tail
    });
    let page = [7u8; PAGE_SIZE];
    let start = Instant::now();
    let mut head = 0u64;
    while start.elapsed() < RUN {
        for _ in 0..256 {
            let tail = s.tail.load(Ordering::Acquire);
            let mut pushed = false;
            while head - tail < n {
                let off = (head % n) as usize * PAGE_SIZE;
                // SAFETY: slot inside the HeapMem, free (head - tail < n).
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        page.as_ptr(),
                        s.mem.base().wrapping_add(off),
                        PAGE_SIZE,
                    )
                };
                head += 1;
                pushed = true;
                if head - tail >= n {
                    break;
                }
            }
            if pushed {
                s.head.store(head, Ordering::Release);
            }
        }
    }
    s.stop.store(true, Ordering::Relaxed);
    let done = consumer.join().unwrap();
    (done, start.elapsed())
}

/// PUT pages through FrontendRing -> BackendRing (both polling), backend copies each page out
/// of its slot into a private buffer and answers.
fn ring_put() -> (u64, Duration) {
    let layout = Layout {
        ring_pages: 2,
        data_slots: SLOTS,
    };
    let mem = Arc::new(HeapMem::new(layout.total_bytes()));
    let mut f = FrontendRing::init(Arc::clone(&mem), layout).unwrap();
    let mut b = BackendRing::new(mem, layout).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let st = Arc::clone(&stop);
    let backend = thread::spawn(move || {
        let mut v = Vec::with_capacity(64);
        let mut page = [0u8; PAGE_SIZE];
        let mut n = 0u64;
        while !st.load(Ordering::Relaxed) {
            v.clear();
            if b.next_batch(64, &mut v).is_err() {
                break;
            }
            for i in &v {
                if let Ok(Request::Put { slot, .. }) = i.req {
                    b.slot_source(slot).read_page(&mut page);
                }
                let _ = b.push_response(i.id, 1, 0);
                n += 1;
            }
            b.publish();
        }
        n
    });
    let page = [9u8; PAGE_SIZE];
    let mut free: Vec<u32> = (0..SLOTS).collect();
    let mut slot_of = vec![0u32; 1 << 16];
    let start = Instant::now();
    let mut id = 0u64;
    let mut got = 0u64;
    while start.elapsed() < RUN {
        for _ in 0..64 {
            while f.space() > 0 {
                let Some(slot) = free.pop() else { break };
                f.write_slot(slot, &page);
                slot_of[(id & 0xffff) as usize] = slot;
                f.push_request(&RequestEntry::page_op(
                    id,
                    cmd::PUT_PAGE,
                    0,
                    [1, 2, 3],
                    0,
                    slot,
                ))
                .unwrap();
                id += 1;
            }
            f.publish();
            while let Some(r) = f.poll_response() {
                free.push(slot_of[(r.id & 0xffff) as usize]);
                got += 1;
            }
        }
    }
    let t = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    backend.join().unwrap();
    (got, t)
}

/// One thread plays both ends (no cross-core traffic): the per-page CPU cost of the ring code
/// itself. `ring == false` is the bare equivalent (memcpy in, memcpy out, no entries).
/// Deterministic enough for `valgrind --tool=callgrind` (`-- --single N`).
fn single_thread(ring: bool, pages: u64) -> (u64, Duration) {
    let layout = Layout {
        ring_pages: 2,
        data_slots: SLOTS,
    };
    let mem = Arc::new(HeapMem::new(layout.total_bytes()));
    let mut f = FrontendRing::init(Arc::clone(&mem), layout).unwrap();
    let mut b = BackendRing::new(Arc::clone(&mem), layout).unwrap();
    let src = [9u8; PAGE_SIZE];
    let mut page = [0u8; PAGE_SIZE];
    let mut v = Vec::with_capacity(64);
    let mut sum = 0u64;
    let start = Instant::now();
    let mut id = 0u64;
    while id < pages {
        if ring {
            for slot in 0..SLOTS {
                f.write_slot(slot, &src);
                f.push_request(&RequestEntry::page_op(
                    id,
                    cmd::PUT_PAGE,
                    0,
                    [1, 2, 3],
                    0,
                    slot,
                ))
                .unwrap();
                id += 1;
            }
            f.publish();
            v.clear();
            b.next_batch(64, &mut v).unwrap();
            for i in &v {
                if let Ok(Request::Put { slot, .. }) = i.req {
                    b.slot_source(slot).read_page(&mut page);
                    sum = sum.wrapping_add(page[0] as u64);
                }
                b.push_response(i.id, 1, 0).unwrap();
            }
            b.publish();
            while let Some(r) = f.poll_response() {
                sum = sum.wrapping_add(r.id);
            }
        } else {
            for slot in 0..SLOTS as usize {
                // SAFETY: slot inside the HeapMem data area.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        src.as_ptr(),
                        mem.base().wrapping_add((2 + slot) * PAGE_SIZE),
                        PAGE_SIZE,
                    )
                };
                id += 1;
            }
            for slot in 0..SLOTS as usize {
                // SAFETY: as above.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        mem.base().wrapping_add((2 + slot) * PAGE_SIZE),
                        page.as_mut_ptr(),
                        PAGE_SIZE,
                    )
                };
                sum = sum.wrapping_add(page[0] as u64);
            }
        }
    }
    std::hint::black_box(sum);
    (id, start.elapsed())
}

fn eventfd() -> i32 {
    // SAFETY: plain syscall.
    unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) }
}
fn ev_kick(fd: i32) {
    let one = 1u64;
    // SAFETY: writes 8 bytes from a live local.
    unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
}
fn ev_wait(fd: i32) {
    let mut v = 0u64;
    // SAFETY: reads 8 bytes into a live local; blocks until signalled.
    unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
}

/// Synchronous round trips (window 1): the backend waits with `policy`, the frontend with the
/// same policy. Returns sorted latencies in ns.
fn round_trip(policy: PollPolicy, count: usize) -> Vec<u64> {
    let layout = Layout {
        ring_pages: 1,
        data_slots: 1,
    };
    let mem = Arc::new(HeapMem::new(layout.total_bytes()));
    let mut f = FrontendRing::init(Arc::clone(&mem), layout).unwrap();
    let mut b = BackendRing::new(mem, layout).unwrap();
    let (kick, notify) = (eventfd(), eventfd());
    let stop = Arc::new(AtomicBool::new(false));
    let st = Arc::clone(&stop);
    let backend = thread::spawn(move || {
        let mut v = Vec::new();
        while !st.load(Ordering::Relaxed) {
            v.clear();
            if b.next_batch(32, &mut v).is_err() {
                break;
            }
            for i in &v {
                let _ = b.push_response(i.id, 1, 0);
            }
            if b.publish() {
                ev_kick(notify);
            }
            if v.is_empty() {
                policy.wait(&mut b, || ev_wait(kick));
            }
        }
    });
    let mut lat = Vec::with_capacity(count);
    for id in 0..count as u64 + 100 {
        let t0 = Instant::now();
        f.push_request(&RequestEntry::page_op(
            id,
            cmd::FLUSH_PAGE,
            0,
            [1, 2, 3],
            0,
            0,
        ))
        .unwrap();
        if f.publish() {
            ev_kick(kick);
        }
        loop {
            if f.poll_response().is_some() {
                break;
            }
            policy.wait(&mut f, || ev_wait(notify));
        }
        if id >= 100 {
            lat.push(t0.elapsed().as_nanos() as u64);
        }
    }
    stop.store(true, Ordering::Relaxed);
    // Wake the backend if it sleeps.
    f.push_request(&RequestEntry::page_op(
        u64::MAX,
        cmd::FLUSH_PAGE,
        0,
        [0; 3],
        0,
        0,
    ))
    .unwrap();
    f.publish();
    ev_kick(kick);
    backend.join().unwrap();
    lat.sort_unstable();
    lat
}

fn pct(v: &[u64], p: f64) -> f64 {
    v[((v.len() - 1) as f64 * p) as usize] as f64 / 1000.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--single") {
        // For callgrind: only the single-thread loops, N pages each.
        let n = args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(64_000);
        let (a, ta) = single_thread(false, n);
        let (b, tb) = single_thread(true, n);
        println!(
            "single thread: bare {:.2} / ring {:.2} M pages/s",
            mpages(a, ta),
            mpages(b, tb)
        );
        return;
    }
    println!(
        "tmem-ring bench ({} ms per throughput run, 4 KiB pages, {SLOTS} data slots)",
        RUN.as_millis()
    );
    let (n, t) = bare_spsc();
    let bare = mpages(n, t);
    println!("bare SPSC ring + memcpy both sides : {bare:6.2} M pages/s (the limit)");
    let (n, t) = ring_put();
    let ring = mpages(n, t);
    println!(
        "FrontendRing -> BackendRing PUT    : {ring:6.2} M pages/s ({:.0}% of bare)",
        ring / bare * 100.0
    );
    let (n, t) = single_thread(false, 2_000_000);
    let bare1 = mpages(n, t);
    let (n, t) = single_thread(true, 2_000_000);
    let ring1 = mpages(n, t);
    println!(
        "one thread plays both ends, bare   : {bare1:6.2} M pages/s; ring {ring1:6.2} M pages/s ({:.0}%)",
        ring1 / bare1 * 100.0
    );
    println!("synchronous round trip (window 1), flush request, µs:");
    println!(
        "  {:<32} {:>8} {:>8} {:>8}",
        "backend/frontend wait policy", "p50", "p99", "max"
    );
    for (name, pol, count) in [
        ("spin 50 µs, then eventfd", PollPolicy::default(), 20_000),
        (
            "spin 5 µs, then eventfd",
            PollPolicy {
                spin: Duration::from_micros(5),
                ..PollPolicy::default()
            },
            5_000,
        ),
        ("eventfd sleep at once", PollPolicy::sleep_at_once(), 3_000),
    ] {
        let l = round_trip(pol, count);
        println!(
            "  {name:<32} {:>8.2} {:>8.2} {:>8.2}",
            pct(&l, 0.5),
            pct(&l, 0.99),
            pct(&l, 1.0)
        );
    }
}
