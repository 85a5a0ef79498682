//! Guest-side tmem library: the frontend end of a transport and the lazy-init pool map.
//!
//! A [`Client`] hands out stable pool handles at once, whether or not a backend is connected.
//! While none is, puts are dropped, gets miss and invalidations are no-ops (recorded for
//! persistent and shared pools); when one connects, every pool is created and its handle
//! mapped; when it goes away, handles revert and a background thread reconnects and remaps.
//! Ephemeral pools start empty on every connection; persistent pools are reattached, their
//! recorded invalidations replayed before they are trusted, or their loss reported.
//! [`Cleancache`] and [`Frontswap`] are the Linux-shaped APIs on top.
//!
//! This crate must never return a page it cannot prove current, never hide a loss, and never
//! send a never-mapped pool to a backend. It contains no `unsafe`.

#![forbid(unsafe_code)]

pub mod cleancache;
pub mod client;
mod error;
pub mod frontswap;
pub mod local;
pub mod pool;
pub mod transport;
pub mod xen;

pub use cleancache::{Cleancache, FileKey};
pub use client::{Client, ClientConfig, Counters, Outcome, PageOp, PoolEvent, PoolInfo, Status};
pub use error::FrontError;
pub use frontswap::{Frontswap, LoadOutcome};
pub use local::{LocalSignal, LocalTransport, RingConnection, Signal};
pub use pool::{format_uuid, parse_uuid, random_uuid, PoolHandle};
pub use transport::{Call, Connection, Payload, Reply, Transport};
pub use xen::XenTransport;
