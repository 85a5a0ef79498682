//! Adaptive polling: spin on the ring for a short while before paying for a sleep.
//!
//! Waking a thread sleeping on an eventfd on another CPU costs tens of microseconds on the
//! machines tmemd runs on, while noticing a new index in shared memory costs about a tenth of a
//! microsecond. A loop that goes to sleep the instant its ring is empty therefore pays a wake-up
//! for nearly every request of a synchronous guest. [`PollPolicy`] spins for `spin` first and
//! only then arms the event and sleeps; see `docs/benchmarks.md` ("tmem-ring") for the
//! measurement behind the default.

use std::time::{Duration, Instant};

/// How long to poll before sleeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollPolicy {
    /// Spin this long on `ready()` before arming the event and sleeping. Zero: never spin.
    pub spin: Duration,
    /// Check the clock once every this many polls (reading it costs more than a poll).
    pub clock_every: u32,
}

impl PollPolicy {
    /// The default spin: 50 µs, about one cross-CPU wake-up. Spinning longer than a wake-up
    /// costs more CPU than it can save; spinning less misses most synchronous round trips.
    pub const DEFAULT_SPIN: Duration = Duration::from_micros(50);

    /// Never spin: sleep as soon as the ring is empty (Xen's classic behaviour).
    pub const fn sleep_at_once() -> Self {
        PollPolicy {
            spin: Duration::ZERO,
            clock_every: 64,
        }
    }

    /// Spin until `ready()` is true or the spin budget is spent. True if ready.
    pub fn spin_until(&self, mut ready: impl FnMut() -> bool) -> bool {
        if ready() {
            return true;
        }
        if self.spin.is_zero() {
            return false;
        }
        let start = Instant::now();
        let every = self.clock_every.max(1);
        // Bounded by the clock: each round of `every` polls checks the elapsed time.
        loop {
            for _ in 0..every {
                std::hint::spin_loop();
                if ready() {
                    return true;
                }
            }
            if start.elapsed() >= self.spin {
                return false;
            }
        }
    }

    /// The whole wait: spin on `ready`, then `prepare_to_sleep` (arm the event and re-check;
    /// true means work arrived), then `sleep` (block on the event, e.g. an eventfd with a
    /// timeout). Returns how the wait ended. The caller loops on its own work.
    pub fn wait(
        &self,
        ready: impl FnMut() -> bool,
        prepare_to_sleep: impl FnOnce() -> bool,
        sleep: impl FnOnce(),
    ) -> WaitOutcome {
        if self.spin_until(ready) {
            return WaitOutcome::Spun;
        }
        if prepare_to_sleep() {
            return WaitOutcome::RaceAvoided;
        }
        sleep();
        WaitOutcome::Slept
    }
}

impl Default for PollPolicy {
    fn default() -> Self {
        PollPolicy {
            spin: Self::DEFAULT_SPIN,
            clock_every: 64,
        }
    }
}

/// How [`PollPolicy::wait`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOutcome {
    /// Work appeared while spinning.
    Spun,
    /// Work appeared between the spin and arming the event.
    RaceAvoided,
    /// Slept on the event (work may or may not be there now).
    Slept,
}
