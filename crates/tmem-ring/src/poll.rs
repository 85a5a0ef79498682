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

    /// The whole wait of a ring end: spin on [`Waitable::ready`], then
    /// [`Waitable::prepare_to_sleep`] (arm the event and re-check), then `sleep` (block on the
    /// event, e.g. `tmem_local::wait_eventfd` with a timeout). The caller loops on its
    /// own work afterwards.
    pub fn wait<W: Waitable + ?Sized>(&self, ring: &mut W, sleep: impl FnOnce()) -> WaitOutcome {
        if self.spin_until(|| ring.ready()) {
            return WaitOutcome::Spun;
        }
        if ring.prepare_to_sleep() {
            return WaitOutcome::RaceAvoided;
        }
        sleep();
        WaitOutcome::Slept
    }
}

/// A ring end a [`PollPolicy`] can wait on.
pub trait Waitable {
    /// Work is waiting (cheap; called in the spin loop).
    fn ready(&self) -> bool;
    /// Arm the peer's notification, fence, re-check; true if work arrived meanwhile.
    fn prepare_to_sleep(&mut self) -> bool;
}

impl<M: crate::SharedMem> Waitable for crate::BackendRing<M> {
    fn ready(&self) -> bool {
        self.has_requests()
    }
    fn prepare_to_sleep(&mut self) -> bool {
        crate::BackendRing::prepare_to_sleep(self)
    }
}

impl<M: crate::SharedMem> Waitable for crate::FrontendRing<M> {
    fn ready(&self) -> bool {
        self.has_responses()
    }
    fn prepare_to_sleep(&mut self) -> bool {
        crate::FrontendRing::prepare_to_sleep(self)
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
