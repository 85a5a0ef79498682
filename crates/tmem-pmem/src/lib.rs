//! tmemd's durable page memory.
//!
//! Persistent pages must outlive the tmemd process (a crash, a watchdog kill, a restart, an
//! upgrade), never the host: the page frames, and records enough to rebuild the store's
//! index, live in a memory file — a memfd that systemd keeps in its fd store, or a file on a
//! tmpfs — mapped shared. A restarted tmemd maps the same file and scans its records.
//!
//! This crate owns the mapping and every `unsafe` access to it, so that the store keeps
//! `forbid(unsafe_code)`. It knows the layout ([`layout`]) and how to write a record so that
//! a write cut short by a kill is never taken for valid; what the records *mean* (which page
//! wins, which pools and clients to rebuild) is the store's business.

pub mod crash;
mod file;
pub mod layout;
mod map;
mod mem;

pub use file::{Origin, PageFile};
pub use layout::{
    file_len, page_flags, Geometry, PageRecord, PoolRecord, FORMAT_MAJOR, FORMAT_MINOR,
};
pub use mem::{FrameGuard, OpenError, Opened, PageMemory, Scan};

#[cfg(test)]
mod tests;
