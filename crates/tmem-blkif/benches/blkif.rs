//! `cargo bench -p tmem-blkif --features test-utils`: the cost of the protocol layer alone.
//!
//! One thread plays both ends over two mappings of one memfd: the mock frontend fills the ring
//! with one-page WRITEs, the backend takes them in batches, parses them, maps them to page ops,
//! answers and publishes, the frontend collects the responses. No data moves, so this is the
//! per-request overhead the protocol adds to a 4 KiB copy; the same-run memcpy rate of 4 KiB
//! pages is printed beside it. Both are timed in this thread's CPU time, so a loaded machine
//! slows the run down but does not skew the rates much.

use std::hint::black_box;
use std::time::Duration;
use tmem_blkif::abi::{op, status};
use tmem_blkif::mock::{full_page, pair};
use tmem_blkif::sectors::page_ops;
use tmem_blkif::{BlkRequest, DiskParams, PAGE_SIZE};

const RUN: Duration = Duration::from_millis(700);

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Requests per CPU second for both ends together, and for the backend's part alone.
fn protocol(ring_pages: u32) -> (f64, f64) {
    let (mut back, mut front) = pair(ring_pages, DiskParams::swap_disk(1 << 24)).unwrap();
    let entries = u64::from(back.entries());
    let mut batch = Vec::with_capacity(entries as usize);
    let (mut n, mut bytes) = (0u64, 0usize);
    let mut backend = Duration::ZERO;
    let start = thread_cpu();
    while thread_cpu() - start < RUN {
        for k in 0..entries {
            let id = n + k;
            front.push_rw(op::WRITE, id, (id % (1 << 21)) * 8, &[full_page(id as u32)]);
        }
        front.publish();
        let b0 = thread_cpu();
        batch.clear();
        back.next_batch(usize::MAX, &mut batch).unwrap();
        for i in &batch {
            if let Ok(BlkRequest::Write { io, .. }) = &i.req {
                bytes += page_ops(io).iter().map(|o| o.len).sum::<usize>();
            }
            back.push_response(i.id, status::OKAY).unwrap();
        }
        back.publish();
        backend += thread_cpu() - b0;
        n += front.take_responses().len() as u64;
    }
    black_box(bytes);
    let n = n as f64;
    (
        n / (thread_cpu() - start).as_secs_f64(),
        n / backend.as_secs_f64(),
    )
}

fn memcpy_pages() -> f64 {
    let src = vec![0x5au8; 64 * PAGE_SIZE];
    let mut dst = vec![0u8; 64 * PAGE_SIZE];
    let mut n = 0u64;
    let start = thread_cpu();
    while thread_cpu() - start < RUN {
        for i in 0..64 {
            let r = i * PAGE_SIZE..(i + 1) * PAGE_SIZE;
            dst[r.clone()].copy_from_slice(black_box(&src[r]));
        }
        n += 64;
        black_box(&mut dst);
    }
    n as f64 / (thread_cpu() - start).as_secs_f64()
}

fn main() {
    let copy = memcpy_pages();
    println!(
        "memcpy of 4 KiB pages:            {:>6.2} M pages/s",
        copy / 1e6
    );
    for pages in [1, 4] {
        let (both, back) = protocol(pages);
        println!(
            "{pages}-page ring, both ends:          {:>6.2} M req/s ({:.0} ns each)",
            both / 1e6,
            1e9 / both
        );
        println!(
            "{pages}-page ring, backend alone:      {:>6.2} M req/s ({:.0} ns each, {:.2}x a 4 KiB memcpy)",
            back / 1e6,
            1e9 / back,
            copy / back
        );
    }
}
