//! Which CPU each polling worker last ran on, and when, so that a busy worker can tell that a
//! sibling is queued behind it on its own CPU and yield to it (see docs/benchmarks.md,
//! "Synchronous puts beside a loaded guest").
//!
//! Why: on a crowded machine two workers often share a CPU. The one serving a streaming guest
//! always has work; the one serving a synchronous guest polls with a yield between polls, so
//! it only runs when the busy one yields. Yielding after every short round costs the busy
//! worker half its throughput when other programs share the CPU (a yield may hand it a whole
//! time slice of theirs), so it yields only when a polling sibling on its CPU has not run for
//! [`STARVED`].

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Most workers (the configuration's upper bound).
const SLOTS: usize = 64;
/// `cpu` of a worker that is not polling (busy, asleep, or gone).
const NOT_POLLING: u32 = u32::MAX;
/// A polling worker that has not been seen for this long is waiting for a CPU.
pub const STARVED: Duration = Duration::from_micros(4);

#[derive(Debug)]
struct Slot {
    cpu: AtomicU32,
    /// Nanoseconds since the board's epoch.
    seen: AtomicU64,
}

/// One slot per worker; only its own worker writes a slot (relaxed: a stale read costs at most
/// one needless or one late yield).
#[derive(Debug)]
pub struct Presence {
    epoch: Instant,
    slots: Box<[Slot]>,
}

impl Default for Presence {
    fn default() -> Self {
        Presence {
            epoch: Instant::now(),
            slots: (0..SLOTS)
                .map(|_| Slot {
                    cpu: AtomicU32::new(NOT_POLLING),
                    seen: AtomicU64::new(0),
                })
                .collect(),
        }
    }
}

impl Presence {
    fn nanos(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// Worker `me` is polling for work on `cpu` at `now`.
    pub fn polling(&self, me: usize, cpu: u32, now: Instant) {
        if let Some(s) = self.slots.get(me) {
            s.seen.store(self.nanos(now), Ordering::Relaxed);
            s.cpu.store(cpu, Ordering::Relaxed);
        }
    }

    /// Worker `me` is busy or about to sleep: nobody needs to yield to it.
    pub fn not_polling(&self, me: usize) {
        if let Some(s) = self.slots.get(me) {
            s.cpu.store(NOT_POLLING, Ordering::Relaxed);
        }
    }

    /// Whether another worker polls for work (then the caller keeps its rounds short).
    pub fn sibling_polling(&self, me: usize) -> bool {
        self.slots
            .iter()
            .enumerate()
            .any(|(i, s)| i != me && s.cpu.load(Ordering::Relaxed) != NOT_POLLING)
    }

    /// Whether another worker last polled on `cpu` and has not run for [`STARVED`]: it is
    /// queued behind the caller.
    pub fn sibling_starved(&self, me: usize, cpu: u32, now: Instant) -> bool {
        let now = self.nanos(now);
        let starved = STARVED.as_nanos() as u64;
        self.slots.iter().enumerate().any(|(i, s)| {
            i != me
                && s.cpu.load(Ordering::Relaxed) == cpu
                && now.saturating_sub(s.seen.load(Ordering::Relaxed)) >= starved
        })
    }
}

/// The CPU this thread runs on (`u32::MAX` if unknown, which matches no polling worker).
pub fn current_cpu() -> u32 {
    // SAFETY: sched_getcpu takes no arguments and touches no memory of ours.
    let c = unsafe { libc::sched_getcpu() };
    u32::try_from(c).unwrap_or(NOT_POLLING)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_polling_sibling_on_my_cpu_is_starved_only_after_the_threshold() {
        let p = Presence::default();
        let t0 = Instant::now();
        assert!(!p.sibling_polling(0));
        p.polling(1, 3, t0);
        assert!(p.sibling_polling(0));
        assert!(!p.sibling_polling(1), "itself");
        assert!(!p.sibling_starved(0, 3, t0), "just seen");
        let later = t0 + STARVED;
        assert!(p.sibling_starved(0, 3, later));
        assert!(!p.sibling_starved(0, 2, later), "another CPU");
        assert!(!p.sibling_starved(1, 3, later), "itself");
        p.not_polling(1);
        assert!(!p.sibling_starved(0, 3, later), "not polling any more");
        assert!(!p.sibling_polling(0));
        // Out-of-range workers are ignored rather than panicking.
        p.polling(SLOTS + 5, 3, t0);
        assert!(!p.sibling_starved(0, 3, later));
    }

    #[test]
    fn the_current_cpu_is_known_on_linux() {
        assert_ne!(current_cpu(), NOT_POLLING);
    }
}
