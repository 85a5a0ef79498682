//! Request service times, measured in the workers for `tmem metrics`.
//!
//! Each worker owns one [`Latency`]: per request kind, [`LATENCY_BUCKETS`] log2 buckets and a
//! sum, all relaxed atomics written only by that worker, so recording is two plain loads and
//! stores (no locked instruction, no lock); the control thread reads and sums every worker's
//! copy. A
//! request's time runs from the end of the previous answer (or the start of the batch, or a
//! notification sent to the guest) to the end of its own execution, so one clock read per
//! request covers it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tmem_abi::Request;
use tmem_control::{LatencyHistogram, LATENCY_BUCKETS, REQUEST_KINDS};

/// Index in [`REQUEST_KINDS`] of a request the ring layer refused before execution.
pub const REFUSED: usize = 6;

/// The index in [`REQUEST_KINDS`] of a request.
pub fn kind_of(req: &Request) -> usize {
    match req {
        Request::NewPool { .. } => 0,
        Request::DestroyPool { .. } => 1,
        Request::Put { .. } => 2,
        Request::Get { .. } => 3,
        Request::FlushPage { .. } => 4,
        Request::FlushObject { .. } => 5,
    }
}

/// One worker's histograms.
#[derive(Debug)]
pub struct Latency {
    kinds: [Kind; REQUEST_KINDS.len()],
    /// Per batch of one guest's requests: taking it off the ring to its last answer.
    batches: Kind,
}

#[derive(Debug)]
struct Kind {
    buckets: [AtomicU64; LATENCY_BUCKETS],
    sum_ns: AtomicU64,
}

impl Default for Kind {
    fn default() -> Self {
        Kind {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            kinds: std::array::from_fn(|_| Kind::default()),
            batches: Kind::default(),
        }
    }
}

impl Kind {
    fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // Only the owning worker writes, so a plain load and store (no locked
        // read-modify-write) cannot lose an update; readers want eventual totals.
        let b = &self.buckets[bucket(ns)];
        b.store(b.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
        self.sum_ns.store(
            self.sum_ns.load(Ordering::Relaxed).wrapping_add(ns),
            Ordering::Relaxed,
        );
    }

    fn add_to(&self, h: &mut LatencyHistogram) {
        for (b, a) in h.buckets.iter_mut().zip(&self.buckets) {
            *b = b.wrapping_add(a.load(Ordering::Relaxed));
        }
        h.sum_ns = h.sum_ns.wrapping_add(self.sum_ns.load(Ordering::Relaxed));
    }
}

fn empty(op: &str) -> LatencyHistogram {
    LatencyHistogram {
        op: op.to_string(),
        buckets: vec![0; LATENCY_BUCKETS],
        sum_ns: 0,
    }
}

/// The bucket of a duration: its number of significant bits, the last bucket open-ended.
fn bucket(ns: u64) -> usize {
    ((u64::BITS - ns.leading_zeros()) as usize).min(LATENCY_BUCKETS - 1)
}

impl Latency {
    /// Count one request of kind `kind` (an index in [`REQUEST_KINDS`]) that took `d`.
    #[inline]
    pub fn record(&self, kind: usize, d: Duration) {
        if let Some(k) = self.kinds.get(kind) {
            k.record(d);
        }
    }

    /// Count one batch of a guest's requests that took `d` from the ring to its last answer.
    #[inline]
    pub fn record_batch(&self, d: Duration) {
        self.batches.record(d);
    }

    /// The batch histogram, summed over `workers`.
    pub fn sum_batches<'a>(workers: impl IntoIterator<Item = &'a Latency>) -> LatencyHistogram {
        let mut h = empty("ring_batch");
        for w in workers {
            w.batches.add_to(&mut h);
        }
        h
    }

    /// Every kind's histogram, summed over `workers`.
    pub fn sum<'a>(workers: impl IntoIterator<Item = &'a Latency>) -> Vec<LatencyHistogram> {
        let mut out: Vec<LatencyHistogram> = REQUEST_KINDS.iter().map(|op| empty(op)).collect();
        for w in workers {
            for (h, k) in out.iter_mut().zip(&w.kinds) {
                k.add_to(h);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn durations_land_in_their_power_of_two_bucket() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1), 1);
        assert_eq!(bucket(255), 8);
        assert_eq!(bucket(256), 9);
        assert_eq!(bucket(u64::MAX), LATENCY_BUCKETS - 1);
        let (a, b) = (Latency::default(), Latency::default());
        a.record(2, Duration::from_nanos(300));
        a.record(2, Duration::from_nanos(700));
        b.record(2, Duration::from_nanos(300));
        b.record(REFUSED, Duration::from_secs(100));
        a.record(99, Duration::from_nanos(1)); // out of range: ignored, not a panic
        let h = Latency::sum([&a, &b]);
        assert_eq!(h[2].op, "put");
        assert_eq!(h[2].count(), 3);
        assert_eq!(h[2].buckets[9], 2);
        assert_eq!(h[2].buckets[10], 1);
        assert_eq!(h[2].sum_ns, 1300);
        assert_eq!(h[REFUSED].buckets[LATENCY_BUCKETS - 1], 1);
        a.record_batch(Duration::from_nanos(1000));
        b.record_batch(Duration::from_nanos(1000));
        let batches = Latency::sum_batches([&a, &b]);
        assert_eq!(
            (batches.count(), batches.sum_ns, batches.buckets[10]),
            (2, 2000, 2)
        );
        assert_eq!(h[2].count(), 3, "a batch is not a request");
        // Each count is below its bucket's bound.
        assert!(300 <= LatencyHistogram::bucket_bound_ns(9).unwrap());
        assert!(700 <= LatencyHistogram::bucket_bound_ns(10).unwrap());
    }

    /// What measuring costs per request: one clock read and one record. Printed for the
    /// record (`cargo test -p tmemd --release -- --nocapture recording_costs`); the assertion
    /// only catches a gross regression (a lock or a syscall on the hot path).
    #[test]
    fn recording_costs_a_clock_read_and_two_relaxed_stores() {
        let l = Latency::default();
        let n = 1_000_000u32;
        let t0 = Instant::now();
        let mut last = t0;
        for i in 0..n {
            let now = Instant::now();
            l.record((i % 6) as usize, now - last);
            last = now;
        }
        let per = t0.elapsed() / n;
        // The clock read alone, for comparison: what the record adds is the difference.
        let t1 = Instant::now();
        let mut sink = Duration::ZERO;
        for _ in 0..n {
            let now = Instant::now();
            sink += now - t1;
        }
        let clock = t1.elapsed() / n;
        std::hint::black_box(sink);
        println!(
            "latency_cost: {per:?} per request (clock read + record), {clock:?} the clock alone"
        );
        assert!(per < Duration::from_micros(2), "{per:?} per record");
        assert_eq!(
            Latency::sum([&l]).iter().map(|h| h.count()).sum::<u64>(),
            u64::from(n)
        );
    }
}
