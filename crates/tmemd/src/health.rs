//! Liveness of the daemon's threads, for the systemd watchdog.
//!
//! Every long-lived thread (each worker, the Xen control plane) owns a [`Heartbeat`] and beats
//! it whenever it has gone round its loop, idle or not. The main thread feeds systemd's
//! watchdog only while every heartbeat is fresh, so a hung thread gets tmemd restarted instead
//! of leaving its guests unserved behind a daemon that still looks alive.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::sync::lock;

/// One thread's proof of progress: milliseconds since the registry's start at its last beat.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    epoch: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Heartbeat {
    /// Record progress now. Cheap (one relaxed store); call it once per loop round.
    pub fn beat(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct Entry {
    name: String,
    last_ms: Arc<AtomicU64>,
}

/// The set of heartbeats the watchdog checks.
#[derive(Debug)]
pub struct Health {
    epoch: Instant,
    entries: Mutex<Vec<Entry>>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            epoch: Instant::now(),
            entries: Mutex::new(Vec::new()),
        }
    }
}

impl Health {
    /// A new heartbeat named for the log (e.g. `worker 0`, `xen control plane`), fresh now.
    pub fn register(&self, name: impl Into<String>) -> Heartbeat {
        let hb = Heartbeat {
            epoch: self.epoch,
            last_ms: Arc::new(AtomicU64::new(0)),
        };
        hb.beat();
        lock(&self.entries).push(Entry {
            name: name.into(),
            last_ms: hb.last_ms.clone(),
        });
        hb
    }

    /// Stop checking a heartbeat (its thread ended on purpose).
    pub fn unregister(&self, name: &str) {
        lock(&self.entries).retain(|e| e.name != name);
    }

    /// `Ok` when every registered thread has beaten within `max_age`; otherwise the names of
    /// the silent ones and how long each has been silent.
    pub fn check(&self, max_age: Duration) -> Result<(), String> {
        let now = self.epoch.elapsed().as_millis() as u64;
        let max = max_age.as_millis() as u64;
        let stale: Vec<String> = lock(&self.entries)
            .iter()
            .filter_map(|e| {
                let age = now.saturating_sub(e.last_ms.load(Ordering::Relaxed));
                (age > max).then(|| format!("{} (silent {} ms)", e.name, age))
            })
            .collect();
        if stale.is_empty() {
            Ok(())
        } else {
            Err(stale.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_thread_fails_the_check_and_a_beating_one_passes() {
        let h = Health::default();
        let a = h.register("worker 0");
        let _b = h.register("worker 1");
        assert!(h.check(Duration::from_secs(60)).is_ok());
        std::thread::sleep(Duration::from_millis(30));
        a.beat();
        let err = h.check(Duration::from_millis(20)).unwrap_err();
        assert!(err.contains("worker 1"), "{err}");
        assert!(!err.contains("worker 0"), "{err}");
        h.unregister("worker 1");
        assert!(h.check(Duration::from_millis(20)).is_ok());
    }
}
