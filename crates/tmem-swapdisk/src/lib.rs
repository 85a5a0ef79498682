//! The storage engine of a swap disk: validated blkif requests executed against one guest's
//! persistent tmem pages, spilling to a sparse file in dom0 when the store says no.
//!
//! * [`SwapDisk`]: one disk. Disk page `i` (sectors `8i..8i+8`) is page `(oid, i)` of a
//!   persistent pool whose uuid is derived from the disk ([`pool_uuid`]), so a durable store
//!   keeps it across tmemd restarts. Partial pages are read-modify-written.
//! * The spill file (`spill.rs`): when a put is refused (no memory, over cap, frozen) the
//!   page goes to `<spill dir>/<name>.spill` at offset `4096·i`; reads find a page wherever
//!   it is; DISCARD punches holes; FLUSH makes it durable (`fdatasync`).
//! * [`SegmentIo`]: how guest data moves (grant copy on Xen; the mock grant pages of
//!   tmem-blkif in tests, see `mock`).
//! * [`serve_batch`]: take a batch off a [`BlkBackend`](tmem_blkif::BlkBackend), execute,
//!   answer.
//!
//! Which copy of a page is authoritative, and why a tmemd kill at any point leaves every page
//! with its last acknowledged content or the content of a write that was in flight, is argued
//! in `disk.rs` and docs/swap-disk.md ("Storage").
//!
//! Trust boundary: this crate only ever sees requests that tmem-blkif's parser accepted
//! ([`BlkRequest`]) and never touches guest memory itself (only through [`SegmentIo`]).
//! It must never panic because of a request, never let a refused put make the disk report
//! itself full, and never acknowledge a write before its data is in the store or the spill
//! file. No `unsafe`.
#![forbid(unsafe_code)]

mod bits;
mod disk;
mod journal;
#[cfg(any(test, feature = "test-utils"))]
pub mod mock;
mod serve;
mod spill;
#[cfg(test)]
mod tests;

pub use disk::{DiskStats, Done, OpenReport, SwapDisk};
pub use journal::{domain_instance, ring_identity, JournalState, RingJournal};
pub use serve::{serve_batch, ServeError, Served};
pub use spill::SpillSync;
pub use tmem_blkif::{BlkRequest, Segment, PAGE_SIZE, SECTOR_SIZE};
pub use tmem_store::Page;

use std::path::PathBuf;
use tmem_store::{ClientId, Identity, Oid, PoolKind, Store, TmemError};

/// Which disk this is: the guest (identity and domain instance) and its device id. The pool
/// uuid and the spill file name are derived from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DiskId {
    pub identity: Identity,
    /// The domain instance: a new instance of the same domain id never sees the old one's
    /// spill file (it has another name).
    pub instance: u64,
    /// The blkif device id (`virtual-device`).
    pub devid: u32,
}

impl DiskId {
    /// The spill file's name (no directory): `swap-<who>-<instance>-<devid>.spill`.
    pub fn spill_name(&self) -> String {
        format!("{}.spill", self.file_stem())
    }

    /// The ring journal's name (no directory), beside the spill file.
    pub fn journal_name(&self) -> String {
        format!("{}.ring", self.file_stem())
    }

    fn file_stem(&self) -> String {
        let who = match self.identity {
            Identity::Xen { domid } => format!("dom{domid}"),
            Identity::Local { uid, label } => format!("local{uid}.{label}"),
        };
        format!("swap-{who}-{:016x}-{}", self.instance, self.devid)
    }

    /// Read back a file name made by [`DiskId::spill_name`] or [`DiskId::journal_name`]
    /// for a Xen domain: `(domid, instance, devid)`.
    pub fn parse_xen_file_name(name: &str) -> Option<(u32, u64, u32)> {
        let stem = name
            .strip_suffix(".spill")
            .or_else(|| name.strip_suffix(".ring"))?;
        let rest = stem.strip_prefix("swap-dom")?;
        let mut parts = rest.splitn(3, '-');
        let domid = parts.next()?.parse().ok()?;
        let instance = parts.next().filter(|s| s.len() == 16)?;
        let instance = u64::from_str_radix(instance, 16).ok()?;
        let devid = parts.next()?.parse().ok()?;
        Some((domid, instance, devid))
    }
}

/// Marks a swap disk's pool uuid (ASCII "tmemswap"); the device id is the other half.
const SWAP_UUID_TAG: u64 = u64::from_le_bytes(*b"tmemswap");

/// The persistent pool uuid of swap disk `devid` of a client. Never `{0,0}` or `{!0,!0}`.
/// A guest that also runs a tmem frontend could name the same uuid and reach its own
/// disk's pages: its own data, nobody else's.
pub fn pool_uuid(devid: u32) -> [u64; 2] {
    [SWAP_UUID_TAG, u64::from(devid)]
}

/// The object id under which the disk's pages are stored in its pool.
pub(crate) fn disk_oid(devid: u32) -> Oid {
    Oid([SWAP_UUID_TAG, u64::from(devid), 0])
}

/// Create (or, after a tmemd restart, reattach) the disk's pool in the client's store.
/// `Ok((pool, reattached))`: pass `fresh = !reattached` to [`SwapDisk::open`].
pub fn open_pool(store: &Store, client: ClientId, devid: u32) -> Result<(u32, bool), TmemError> {
    store.new_pool(client, pool_uuid(devid), PoolKind::PrivatePersistent)
}

/// What a disk is and where its spill file goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    pub id: DiskId,
    /// Size in 512-byte sectors (at most 2^35: pages are indexed by `u32`).
    pub sectors: u64,
    /// Directory of the spill file (must exist; a sparse file of the disk's size goes there).
    pub spill_dir: PathBuf,
}

/// Copying a request's data between the guest's granted pages and local pages.
///
/// `segs[k]` is segment `k` of the request; only its sectors (`segs[k].byte_range()`) are
/// copied, at the same offsets in `pages[k]`. An implementation may batch the whole call
/// into one grant-copy operation. A failure fails the request (BLKIF_RSP_ERROR), nothing
/// else: for a write, nothing has been stored yet when `fetch` runs.
pub trait SegmentIo {
    /// Guest → local: the data of a WRITE.
    fn fetch(&mut self, segs: &[Segment], pages: &mut [Page]) -> Result<(), SegmentError>;
    /// Local → guest: the data of a READ.
    fn deliver(&mut self, segs: &[Segment], pages: &[Page]) -> Result<(), SegmentError>;
}

/// A segment's data could not be copied (a bad grant reference, for instance).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("copying segment {segment} (grant ref {gref}) failed")]
pub struct SegmentError {
    pub segment: usize,
    pub gref: u32,
}

/// Why a request failed (it is answered with BLKIF_RSP_ERROR).
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(transparent)]
    Segment(#[from] SegmentError),
    #[error("store {op} of disk page {page} failed")]
    Store {
        op: &'static str,
        page: u64,
        #[source]
        source: TmemError,
    },
    #[error("spill file {op} of disk page {page} failed")]
    Spill {
        op: &'static str,
        page: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("sectors {sector}+{sectors} are not on this disk")]
    OutOfRange { sector: u64, sectors: u64 },
    #[error("flushing the spill file to disk failed")]
    Sync(#[source] std::io::Error),
    /// Test hook only: the simulated kill point was reached (`SwapDisk::crash_after`).
    #[error("simulated crash")]
    Crashed,
}

impl DiskError {
    /// The blkif response status for a request that failed this way.
    pub fn status(&self) -> i16 {
        tmem_blkif::abi::status::ERROR
    }
}

/// Why a disk could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("a swap disk of {0} sectors is not offered: use 8 to 2^35 sectors")]
    Size(u64),
    #[error("cannot open the spill file {path}")]
    SpillOpen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("spill file {path} is {have} bytes, the disk needs {want}: the disk's size changed; open it fresh")]
    SpillSize { path: PathBuf, have: u64, want: u64 },
    #[error("cannot read the spill file {path}")]
    SpillScan {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the disk's pool {pool} is not usable")]
    Pool {
        pool: u32,
        #[source]
        source: TmemError,
    },
    #[error("reconciling page {page} of the spill file with the store failed")]
    Reconcile {
        page: u64,
        #[source]
        source: DiskError,
    },
}
