//! The one way tmemd takes its own mutexes.

use std::sync::{Mutex, MutexGuard};

/// Lock one of the daemon's own maps (connected guests, detached clients, heartbeats).
///
/// Poisoning is recovered from because every critical section on these maps is a single map
/// operation, so a panic elsewhere in the holder cannot leave one half-updated. The page store
/// is different: a panic inside it is a fail-stop (see `tmem_store`), never recovered here.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
