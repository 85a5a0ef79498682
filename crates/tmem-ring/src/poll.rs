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

/// A spin that adapts to whether spinning pays (see `docs/benchmarks.md`, "Polling beside a
/// loaded guest").
///
/// A spinner only gains if its peer is running at the same time. With more runnable threads
/// than CPUs the peer is often waiting for the very CPU the spinner holds, so a pure spin
/// burns its budget (or a whole time slice) and then pays the wake-up anyway. Two rules:
/// - **Crowded** (more runnable threads than CPUs, see [`Crowding`]): between polls the spinner yields its CPU, so a peer
///   queued behind it runs at once and answers within a context switch or two.
/// - **Misses**: every spin that ends without work halves the next budget (down to a
///   1/16th); a spin that pays restores the full budget. After [`AdaptiveSpin::PROBE_AFTER`]
///   misses in a row one full spin is tried again, so a peer that gets its CPU back is
///   noticed.
#[derive(Debug, Clone)]
pub struct AdaptiveSpin {
    policy: PollPolicy,
    budget: Duration,
    misses: u32,
    crowd: Crowding,
}

impl AdaptiveSpin {
    /// Consecutive misses after which one full-budget spin is tried again.
    pub const PROBE_AFTER: u32 = 32;

    /// Adapt within `policy.spin` (the largest budget).
    pub fn new(policy: PollPolicy) -> Self {
        AdaptiveSpin {
            policy,
            budget: policy.spin,
            misses: 0,
            crowd: Crowding::new(),
        }
    }

    /// The budget the next spin gets.
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// Whether the last sample saw more runnable threads than CPUs.
    pub fn crowded(&self) -> bool {
        self.crowd.crowded
    }

    /// Spin until `ready()` or the current budget is spent; true if ready. Yields between
    /// polls while the machine is crowded. Updates the budget from the outcome.
    pub fn spin_until(&mut self, mut ready: impl FnMut() -> bool) -> bool {
        if ready() {
            self.paid();
            return true;
        }
        if self.policy.spin.is_zero() {
            return false;
        }
        let now = Instant::now();
        let crowded = self.crowd.check(now);
        let budget = if self.misses >= Self::PROBE_AFTER {
            self.misses = 0;
            self.policy.spin
        } else {
            self.budget
        };
        // While crowded, one poll between yields: the peer quite likely waits for this very
        // CPU, and each spin-loop hint costs tens of nanoseconds (64 of them were 3 µs of
        // every synchronous round trip when guest and worker shared a CPU).
        let every = if crowded {
            1
        } else {
            self.policy.clock_every.max(1)
        };
        // Bounded by the clock: each round of `every` polls checks the elapsed time.
        loop {
            for _ in 0..every {
                std::hint::spin_loop();
                if ready() {
                    self.paid();
                    return true;
                }
            }
            if now.elapsed() >= budget {
                self.missed();
                return false;
            }
            if crowded {
                // Hand the CPU to whoever waits for it: quite likely the peer.
                std::thread::yield_now();
                if ready() {
                    self.paid();
                    return true;
                }
            }
        }
    }

    /// Spinning paid: the peer answers while we watch; spin fully next time.
    fn paid(&mut self) {
        self.misses = 0;
        self.budget = self.policy.spin;
    }

    /// A spin ended without work: the next one is shorter.
    fn missed(&mut self) {
        self.misses = self.misses.saturating_add(1);
        self.budget = (self.budget / 2).max(self.policy.spin / 16);
    }
}

/// Whether more threads are runnable than there are CPUs, sampled at most every
/// [`Crowding::EVERY`]: then a thread that polls holds a CPU some other thread (quite likely
/// the one it waits for) is queued for.
#[derive(Debug, Clone)]
pub struct Crowding {
    cpus: usize,
    checked: Option<Instant>,
    crowded: bool,
}

impl Crowding {
    /// How often the run queue length is sampled (one small read of `/proc/loadavg`).
    pub const EVERY: Duration = Duration::from_millis(5);

    pub fn new() -> Self {
        Crowding {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            checked: None,
            crowded: false,
        }
    }

    /// The latest sample, taken anew if the last one is older than [`Crowding::EVERY`].
    pub fn check(&mut self, now: Instant) -> bool {
        if self
            .checked
            .is_none_or(|t| now.duration_since(t) >= Self::EVERY)
        {
            self.checked = Some(now);
            self.crowded = runnable_threads().is_some_and(|r| r > self.cpus);
        }
        self.crowded
    }
}

impl Default for Crowding {
    fn default() -> Self {
        Crowding::new()
    }
}

/// Runnable threads on the machine (the fourth field of `/proc/loadavg`, "running/total";
/// it counts the reader). `None` where there is no such file.
fn runnable_threads() -> Option<usize> {
    let mut f = std::fs::File::open("/proc/loadavg").ok()?;
    let mut buf = [0u8; 128];
    let n = std::io::Read::read(&mut f, &mut buf).ok()?;
    parse_runnable(std::str::from_utf8(&buf[..n]).ok()?)
}

fn parse_runnable(loadavg: &str) -> Option<usize> {
    let field = loadavg.split_whitespace().nth(3)?;
    field.split_once('/')?.0.parse().ok()
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

#[cfg(test)]
mod adaptive_tests {
    use super::*;

    fn policy() -> PollPolicy {
        PollPolicy {
            spin: Duration::from_micros(64),
            clock_every: 8,
        }
    }

    #[test]
    fn loadavg_runnable_field() {
        assert_eq!(parse_runnable("2.93 2.48 2.11 4/102 19709\n"), Some(4));
        assert_eq!(parse_runnable("0.00 0.00 0.00 1/1 1"), Some(1));
        assert_eq!(parse_runnable("garbage"), None);
        assert_eq!(parse_runnable("1 2 3 x/5 1"), None);
    }

    #[test]
    fn misses_shrink_the_budget_and_a_hit_restores_it() {
        let mut a = AdaptiveSpin::new(policy());
        assert_eq!(a.budget(), Duration::from_micros(64));
        assert!(!a.spin_until(|| false));
        assert_eq!(a.budget(), Duration::from_micros(32));
        for _ in 0..10 {
            assert!(!a.spin_until(|| false));
        }
        assert_eq!(
            a.budget(),
            Duration::from_micros(4),
            "floor: 1/16 of the policy"
        );
        // Work found (here at once, so a preempted test cannot miss it) restores the budget.
        assert!(a.spin_until(|| true));
        assert_eq!(a.budget(), Duration::from_micros(64));
    }

    #[test]
    fn a_full_spin_is_probed_after_many_misses() {
        let mut a = AdaptiveSpin::new(policy());
        for _ in 0..AdaptiveSpin::PROBE_AFTER {
            assert!(!a.spin_until(|| false));
        }
        // The probe spins the full 64 µs although the budget is at its floor.
        let start = Instant::now();
        assert!(!a.spin_until(|| false));
        assert!(start.elapsed() >= Duration::from_micros(64));
    }

    #[test]
    fn zero_spin_never_spins() {
        let mut a = AdaptiveSpin::new(PollPolicy::sleep_at_once());
        let mut polls = 0;
        assert!(!a.spin_until(|| {
            polls += 1;
            false
        }));
        assert_eq!(polls, 1);
    }
}
