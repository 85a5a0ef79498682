//! Rate limiting for log lines a guest can trigger, so a misbehaving guest cannot flood the
//! log (Xen had to demote such messages after they were used to spam the hypervisor log).

use std::time::{Duration, Instant};

/// A token bucket: `burst` lines at once, then one per `every`.
#[derive(Debug)]
pub struct RateLimiter {
    tokens: u32,
    burst: u32,
    every: Duration,
    last_refill: Instant,
    suppressed: u64,
}

impl RateLimiter {
    pub fn new(burst: u32, every: Duration) -> Self {
        RateLimiter {
            tokens: burst,
            burst,
            every,
            last_refill: Instant::now(),
            suppressed: 0,
        }
    }

    /// Whether a line may be logged now. When it may, returns how many lines were
    /// suppressed since the last one logged, so the caller can say so.
    pub fn allow(&mut self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&mut self, now: Instant) -> Option<u64> {
        let elapsed = now.saturating_duration_since(self.last_refill);
        if !self.every.is_zero() {
            let new = (elapsed.as_nanos() / self.every.as_nanos()).min(u32::MAX as u128) as u32;
            if new > 0 {
                self.tokens = self.tokens.saturating_add(new).min(self.burst);
                self.last_refill = now;
            }
        }
        if self.tokens == 0 {
            self.suppressed += 1;
            return None;
        }
        self.tokens -= 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_limits_then_refills() {
        let mut r = RateLimiter::new(3, Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(r.allow_at(t0), Some(0));
        assert_eq!(r.allow_at(t0), Some(0));
        assert_eq!(r.allow_at(t0), Some(0));
        assert_eq!(r.allow_at(t0), None);
        assert_eq!(r.allow_at(t0), None);
        let t1 = t0 + Duration::from_millis(1500);
        assert_eq!(r.allow_at(t1), Some(2));
        assert_eq!(r.allow_at(t1), None);
    }
}
