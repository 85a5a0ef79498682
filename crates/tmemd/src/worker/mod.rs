//! Worker threads: each owns a set of guest connections and serves their rings.
//!
//! - [`state`]: what every thread shares, and the one register/release path of connections;
//! - [`connection`]: one guest connection (ring, memory, notification link, log limits);
//! - [`dispatch`]: serving one guest's ring against the store;
//! - [`event_loop`]: the worker thread, its epoll loop, panic containment and heartbeat;
//! - [`latency`]: per-worker request service-time histograms;
//! - [`presence`]: where polling workers run, so a busy one can yield to a queued sibling.

mod connection;
mod dispatch;
mod event_loop;
pub mod latency;
pub mod presence;
mod state;
#[cfg(test)]
pub(crate) mod tests;

pub use crate::sync::lock;
pub use connection::{GuestConn, GuestMem, Link};
pub use event_loop::{
    pick_worker, spawn, worker_name, WorkerGone, WorkerHandle, WorkerMsg, BATCH, IDLE_BEAT,
};
pub use state::{Detached, End, Full, GuestHandle, ParkedStatus, Reservation, Shared};
