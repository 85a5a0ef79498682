//! Per-domain pacing of what a guest can make the control plane do.
//!
//! A domU owns its frontend directory and can rewrite its keys as fast as xenstored lets it;
//! each write fires our watch. Events are only hints (the state is re-read), so a domain's
//! events are coalesced into one "changed" flag, and [`Pace`] decides when that flag may be
//! acted on: a burst of changes at once (a handshake, a few reconnects), then a delay that
//! doubles with every further change (capped), forgiven only once the domain has been quiet.
//! A flooding domain costs a bounded number of xenstore requests; other domains never wait
//! for it. [`DomLog`] rate-limits the log lines a domain can trigger, per call site.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tracing::warn;

use crate::ratelimit::RateLimiter;

/// Changes handled at once before pacing starts (a handshake takes three or four).
pub const BURST: u32 = 16;
/// First delay once the burst is spent; doubles with every change handled after it.
pub const MIN_DELAY: Duration = Duration::from_millis(100);
/// Longest delay between two handled changes of one domain. Well under the 5 s a frontend
/// waits for an answer, so even a paced guest's handshake is answered in time.
pub const MAX_DELAY: Duration = Duration::from_secs(2);
/// A domain with no handled change for this long gets its full burst back. Longer than
/// [`MAX_DELAY`], so a domain that never stops writing is never forgiven.
pub const QUIET: Duration = Duration::from_secs(10);

/// One domain's pacing state.
#[derive(Debug, Clone)]
pub struct Pace {
    credit: u32,
    delay: Duration,
    not_before: Instant,
    last_pass: Option<Instant>,
}

/// What [`Pace::pass`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Act on the change now.
    Go,
    /// Act on it now; later changes wait this long (pacing just started or grew).
    GoThenWait(Duration),
    /// Not yet: come back at this instant.
    Wait(Instant),
}

/// Whether domain `domid`'s pending change may be acted on at `now`; when pacing starts or
/// grows, says so (rate-limited per domain). `keys` names what the domain keeps changing.
pub fn may_act(pace: &mut Pace, log: &mut DomLog, now: Instant, domid: u32, keys: &str) -> bool {
    match pace.pass(now) {
        Pass::Wait(_) => false,
        Pass::Go => true,
        Pass::GoThenWait(delay) => {
            if let Some(suppressed) = log.allow("paced") {
                warn!(
                    domid,
                    suppressed,
                    "domain keeps changing its {keys} keys; acting on its changes at most \
                     every {delay:?}"
                );
            }
            true
        }
    }
}

impl Pace {
    pub fn new(now: Instant) -> Pace {
        Pace {
            credit: BURST,
            delay: Duration::ZERO,
            not_before: now,
            last_pass: None,
        }
    }

    /// May a pending change be acted on at `now`?
    pub fn pass(&mut self, now: Instant) -> Pass {
        if now < self.not_before {
            return Pass::Wait(self.not_before);
        }
        if self
            .last_pass
            .is_some_and(|t| now.saturating_duration_since(t) >= QUIET)
        {
            self.credit = BURST;
            self.delay = Duration::ZERO;
        }
        self.last_pass = Some(now);
        if self.credit > 0 {
            self.credit -= 1;
            return Pass::Go;
        }
        self.delay = (self.delay * 2).clamp(MIN_DELAY, MAX_DELAY);
        self.not_before = now + self.delay;
        Pass::GoThenWait(self.delay)
    }

    /// When a pending change may next be acted on.
    pub fn not_before(&self) -> Instant {
        self.not_before
    }
}

/// Rate limits for one domain's log lines, one bucket per call site.
#[derive(Debug, Default)]
pub struct DomLog {
    sites: BTreeMap<&'static str, RateLimiter>,
}

impl DomLog {
    /// Whether a line from `site` may be logged now; `Some(suppressed since the last one)`.
    pub fn allow(&mut self, site: &'static str) -> Option<u64> {
        self.sites
            .entry(site)
            .or_insert_with(|| RateLimiter::new(5, Duration::from_secs(6)))
            .allow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A domain that changes its keys without pause gets a burst, then ever longer delays up
    /// to the cap, and is not forgiven while it keeps going; a quiet one is forgiven.
    #[test]
    fn a_flooding_domain_is_paced_and_a_quiet_one_forgiven() {
        let t0 = Instant::now();
        let mut p = Pace::new(t0);
        for _ in 0..BURST {
            assert_eq!(p.pass(t0), Pass::Go);
        }
        assert_eq!(p.pass(t0), Pass::GoThenWait(MIN_DELAY));
        assert_eq!(p.pass(t0), Pass::Wait(t0 + MIN_DELAY));
        // Come back whenever allowed: the delays double up to the cap.
        let mut now = t0;
        let mut passes = 0;
        let mut delays = Vec::new();
        while now < t0 + Duration::from_secs(60) {
            match p.pass(now) {
                Pass::Wait(t) => now = t,
                Pass::GoThenWait(d) => {
                    passes += 1;
                    delays.push(d);
                }
                Pass::Go => passes += 1,
            }
        }
        assert_eq!(delays[0], MIN_DELAY * 2);
        assert!(delays.windows(2).all(|w| w[1] >= w[0]), "{delays:?}");
        assert_eq!(*delays.last().unwrap(), MAX_DELAY);
        // A minute at one change per MAX_DELAY, plus the ramp.
        let bound = 8 + 60 / MAX_DELAY.as_secs();
        assert!(passes <= bound, "{passes} passes in 60 s (at most {bound})");
        // Quiet for QUIET: the burst is back.
        let later = now + QUIET;
        assert_eq!(p.pass(later), Pass::Go);
    }

    #[test]
    fn domain_log_limits_each_site_separately() {
        let mut l = DomLog::default();
        for _ in 0..5 {
            assert!(l.allow("refuse").is_some());
        }
        assert!(l.allow("refuse").is_none());
        assert!(l.allow("connect").is_some(), "another site is not silenced");
    }
}
