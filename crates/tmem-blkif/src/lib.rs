//! The Xen PV block protocol (blkif) as tmemd's swap disks will speak it: the place where
//! everything a block frontend writes into shared memory is parsed.
//!
//! * [`abi`]: the x86_64 wire layout, operation and status codes, with compile-time checks of
//!   every size and offset.
//! * [`parse`]: the one parser. A copied-out request becomes a [`BlkRequest`] or a
//!   [`Refusal`] that names its `BLKIF_RSP_*` status.
//! * [`BlkBackend`]: the backend end of the ring over tmem-ring's [`SharedMem`] trait:
//!   reads `req_prod` once per batch, refuses an overflowing index or a duplicate in-flight
//!   id (disconnect the guest), copies each request out once, publishes responses with
//!   release ordering and the `rsp_event` rule.
//! * [`sectors`]: 512-byte sectors on 4 KiB pages: which bytes of which disk page each
//!   segment reads or writes.
//! * `mock` (feature `test-utils`): a block frontend writing raw requests into a memfd.
//!
//! This crate does no I/O beyond the shared memory it is given, knows nothing of grants or
//! xenstore, and must never form a reference to bytes the guest can write, trust a value
//! read from them, or panic or loop unboundedly because of them.
#![deny(unsafe_code)]

pub mod abi;
#[cfg(any(test, feature = "test-utils"))]
pub mod mock;
pub mod parse;
pub mod ring;
pub mod sectors;
mod shm;

pub use abi::RawRequest;
pub use abi::{PAGE_SIZE, SECTOR_SIZE};
pub use parse::{parse_request, BlkRequest, DiskParams, Refusal, Segment, Transfer};
pub use ring::{BlkBackend, Incoming, ResumeError};
pub use shm::MAX_RING_PAGES;
pub use tmem_ring::SharedMem;

/// The ring cannot be set up on the memory given (a local mistake, not the guest's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RingSetupError {
    #[error("a ring of {0} pages is not offered: use a power of two from 1 to 16")]
    BadPageCount(u32),
    #[error("shared memory of {have} bytes is too small for the ring ({need} bytes)")]
    TooSmall { have: usize, need: usize },
    #[error("shared memory base {0:#x} is not page aligned")]
    Misaligned(usize),
}

/// A ring protocol violation by the guest (answer: disconnect it), or a backend bug
/// ([`RingError::NotInFlight`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error(
        "request producer index {req_prod} is out of range (consumed {req_cons}, ring of {size})"
    )]
    Overflow {
        req_prod: u32,
        req_cons: u32,
        size: u32,
    },
    #[error("request id {0:#x} is already in flight")]
    DuplicateId(u64),
    #[error("no request with id {0:#x} is in flight")]
    NotInFlight(u64),
}
