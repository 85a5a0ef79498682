//! The tmem page store: clients, pools, objects, pages, eviction, quotas, shared-pool
//! authorisation, freeze/thaw and statistics.
//!
//! It must never do I/O, never use `unsafe`, and never see guest memory: page data arrives
//! through a [`PageSource`] and leaves through a [`PageSink`], each copied exactly once.
//! Nothing a guest sends can make it panic; every failure is a [`TmemError`].
//!
//! # Layout
//! * Page data lives in fixed-size frames (see `frames.rs`), addressed by `u32` and recycled
//!   through a free list: on the heap ([`Store::new`]: allocated and pre-faulted in 2 MiB
//!   chunks on first use; nothing outlives the process), or in a page file
//!   ([`Store::open_durable`], `durable.rs`: persistent pages and the records to find them
//!   again outlive tmemd; see docs/persistence.md). The number of frames is the configured
//!   memory limit divided by [`PAGE_SIZE`], so page data can never exceed the limit.
//! * A stored page is a *node*. A page with data is the node whose id equals its frame; a
//!   same-filled page (one 8-byte word repeated, all-zero pages included) and an LRU list head
//!   are "extra" nodes with the top bit set and no frame, the page's word kept beside them.
//!   Per-node metadata is one 16-byte struct (LRU `prev`/`next`, `obj`, `index`) plus a `u32`
//!   LRU stamp.
//! * Each pool maps an [`Oid`] to an object slot (keyed hash, see `hash.rs`); each object maps
//!   a page index to a node (`pagemap.rs`: a vector for dense objects, a map for sparse ones).
//! * Ephemeral pages are on the LRU list of their *account*: the client for private pools, the
//!   pool itself for a shared pool. Lists are circular with a head node, so a page can be
//!   unlinked without knowing whose list it is on.
//!
//! # Modules
//! * `lib.rs`: the [`Store`], its constructor, the locks and their helpers, frame reservation
//!   and the reclaim entry points.
//! * `config.rs`: [`StoreConfig`], [`ClientId`], [`Attach`], [`AttachRefused`].
//! * `meta.rs`: the metadata behind the lock (clients, pools, objects, accounts, node links),
//!   node field access, extra nodes and lookup.
//! * `index.rs`: linking a page into its object and unlinking it, with its counters.
//! * `lru.rs`: LRU lists, accounts and the choice of a page to evict.
//! * `clients.rs`: attach, detach, expiry and destroy of clients.
//! * `pools.rs`: creating, joining, leaving and destroying pools.
//! * `put.rs`, `get.rs`: the page operations (`get.rs` also flushes pages and objects).
//! * `admin.rs`: freeze, weight, caps, shared-pool authorisation, prefault, `flush_kib`.
//! * `durable.rs`: the memory layout's meaning — which pools and pages get records in the
//!   page file, the write order, recovery, and resuming a client after a restart (the file
//!   format itself is in the `tmem-pmem` crate, with the only `unsafe` it needs).
//! * `compress.rs`: the codecs (lz4, zstd) and the per-client, per-pool-kind setting;
//!   `zpage.rs`: compressed pages as objects of the size-class allocator (`tmem-zalloc`)
//!   inside frames, their records in the page file, compaction (docs/architecture.md).
//! * `stats.rs`: the statistics snapshot; `reap.rs`: chunked reclaim; `frames.rs`,
//!   `pagemap.rs`, `hash.rs`, `identity.rs`: the building blocks named above.
//!
//! # Locking
//! One metadata mutex guards everything except page data and the frame free list. Each frame
//! has its own mutex. Order: metadata → frame, metadata → free list. A thread holding a frame
//! lock never waits for the metadata lock, so there is no cycle:
//! * put, common case: take a free frame (free-list lock only) and fill it (its frame lock
//!   only), then take the metadata lock once and link it in (a duplicate is replaced by it).
//!   If that needs anything else (frozen, cap, eviction) the frame goes back and, under the
//!   same acquisition, the general path runs:
//! * put of a new handle: under metadata, check and reserve a frame (evicting if needed); drop
//!   the lock; copy into the frame; retake it and link the page in.
//! * get: under metadata, find the node and lock its frame; drop the metadata lock; copy out.
//!   A frame in the index is therefore read whole or not at all, never while being refilled.
//! * duplicate put (general path, heap frames only: a durable page is never refilled in
//!   place, it takes a new frame like a new handle): the old frame is locked under metadata and refilled in
//!   place after the metadata lock is dropped; readers queue on the frame lock and see old or
//!   new data whole.
//!
//! No acquisition lasts time proportional to a guest's pages: destroyed pools and big flushed
//! objects are unlinked at once and freed in chunks (`reap.rs`), `flush_kib` evicts in
//! chunks, and statistics walk clients and pools only.
//!
//! # Fair share
//! Persistent pages are never evicted, so each client may pin at most
//! `default_persistent_share_percent` of memory in them unless an administrator sets its cap.

#![forbid(unsafe_code)]

mod admin;
mod clients;
mod compress;
mod config;
mod durable;
mod frames;
mod get;
mod hash;
mod identity;
mod index;
mod lru;
mod meta;
mod pagemap;
mod pools;
mod put;
mod reap;
mod rekey;
mod stats;
mod transfer;
mod zpage;

pub use compress::{ClientCompression, Compression};
pub use config::{Attach, AttachRefused, ClientId, StoreConfig};
pub use durable::{page_file_len, Recovery};
pub use identity::Identity;
pub use rekey::{ParkedStats, RekeyRefused};
pub use stats::{
    ClientStats, CompressionStats, GlobalStats, PoolCounters, PoolStats, SharedPoolStats,
    StoreStats, SwapDiskStats,
};
pub use tmem_abi::{Oid, Page, PageKey, PageSink, PageSource, PoolKind, TmemError, PAGE_SIZE};
pub use tmem_pmem::{OpenError as PageFileError, Origin as PageFileOrigin, PageFile};
pub use transfer::KeptPool;

use frames::{FrameMem, Frames};
use hash::KeyedState;
use meta::{Global, Links, Meta, EXTRA};
use reap::{HELP_REAP, REAP_CHUNK};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

/// Take one of the store's locks. A lock poisoned by a panic in another thread is never
/// recovered: that thread may have left the metadata half-updated (a frame both free and in a
/// pool would hand one guest's page to another), so every later call panics too and the
/// daemon stops (see [`Store::is_poisoned`]).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(_) => poisoned(),
    }
}

fn poisoned() -> ! {
    panic!("the page store was poisoned by an earlier panic; it cannot be trusted")
}

#[derive(Debug, Default)]
struct FreeFrames {
    list: Vec<u32>,
    fresh: u32,
}

/// The page store. `Send + Sync`; every method takes `&self`.
#[derive(Debug)]
pub struct Store {
    meta: Mutex<Meta>,
    free: Mutex<FreeFrames>,
    frames: FrameMem,
    nframes: u32,
    total_ops: AtomicU64,
    errored_ops: AtomicU64,
    /// Threads queued for the metadata lock (see [`Store::meta`]).
    waiting: AtomicU32,
    /// Compression settings readable without the metadata lock (the put path compresses
    /// before taking it): whether any client compresses, each such client's setting, the
    /// codec `set_compress(c, true)` picks, and the largest compressed size kept.
    zany: AtomicBool,
    zmodes: Mutex<HashMap<ClientId, ClientCompression>>,
    zdefault: AtomicU32,
    zmax: AtomicUsize,
    /// Compressed pages that did not decompress (never expected; answered as misses).
    zerrors: AtomicU64,
    /// Each client's (hashed) run of pages that did not compress (see `zpage.rs`), and
    /// pages tried without gain and pages not tried because of such a run.
    zmiss: [AtomicU32; zpage::ZMISS_SLOTS],
    zincompressible: AtomicU64,
    zskipped: AtomicU64,
}

/// Result of trying to obtain a frame.
enum Reserve {
    Frame(u32),
    NoneEvictable,
}

/// Page frames for a configuration: its memory limit in whole pages.
pub(crate) fn frames_for(cfg: &StoreConfig) -> u32 {
    (cfg.mem_limit_bytes / PAGE_SIZE as u64).min((EXTRA - 1) as u64) as u32
}

impl Store {
    /// A store with the given limits. Page memory is allocated on first use and kept.
    pub fn new(cfg: StoreConfig) -> Store {
        let nframes = frames_for(&cfg);
        Store::with_memory(cfg, nframes, FrameMem::Heap(Frames::new(nframes)), None)
    }

    /// A store on `frames` (`nframes` of them), durable if `dur` is given.
    fn with_memory(
        cfg: StoreConfig,
        nframes: u32,
        frames: FrameMem,
        dur: Option<durable::Dur>,
    ) -> Store {
        let meta = Meta {
            next_client: 1,
            clients: HashMap::default(),
            by_identity: HashMap::new(),
            auth: HashMap::new(),
            auth_required: true,
            pools: Vec::new(),
            pool_free: Vec::new(),
            next_gen: 1,
            shared: HashMap::new(),
            obj_hash: KeyedState::random(),
            objs: Vec::new(),
            obj_free: Vec::new(),
            obj_heap_bytes: 0,
            reap: VecDeque::new(),
            reap_chunk: REAP_CHUNK,
            reap_manual: false,
            reap_chunks_run: 0,
            accounts: Vec::new(),
            acct_free: Vec::new(),
            dl: Links::default(),
            xl: Links::default(),
            xfill: Vec::new(),
            x_free: Vec::new(),
            z: tmem_zalloc::ZAlloc::new(),
            xz: Vec::new(),
            zowner: Vec::new(),
            zfreed: Vec::new(),
            z_holes: false,
            // Same-filled pages cost only metadata; bound them anyway (guest-driven
            // allocation).
            max_same: (nframes as u64).max(1 << 16),
            stamp: 0,
            g: Global::default(),
            dur,
            cfg,
        };
        Store {
            meta: Mutex::new(meta),
            free: Mutex::new(FreeFrames::default()),
            frames,
            nframes,
            total_ops: AtomicU64::new(0),
            errored_ops: AtomicU64::new(0),
            waiting: AtomicU32::new(0),
            zany: AtomicBool::new(false),
            zmodes: Mutex::new(HashMap::new()),
            zdefault: AtomicU32::new(Compression::Lz4.code()),
            zmax: AtomicUsize::new(DEFAULT_COMPRESS_MAX),
            zerrors: AtomicU64::new(0),
            zmiss: std::array::from_fn(|_| AtomicU32::new(0)),
            zincompressible: AtomicU64::new(0),
            zskipped: AtomicU64::new(0),
        }
    }

    /// The configuration the store was made with.
    pub fn config(&self) -> StoreConfig {
        self.meta().cfg.clone()
    }

    /// The metadata lock. A thread that finds it taken says so while it waits, so that
    /// reclaim lets it in between two chunks (a mutex gives no fairness: the reclaiming
    /// thread would usually take the lock again before the woken waiter runs). Costs nothing
    /// extra when the lock is free.
    fn meta(&self) -> MutexGuard<'_, Meta> {
        match self.meta.try_lock() {
            Ok(g) => g,
            Err(TryLockError::WouldBlock) => {
                self.waiting.fetch_add(1, Ordering::Relaxed);
                let g = lock(&self.meta);
                self.waiting.fetch_sub(1, Ordering::Relaxed);
                g
            }
            // Not `lock()`: the error still holds the guard, and locking again would deadlock.
            Err(TryLockError::Poisoned(_)) => poisoned(),
        }
    }

    /// Between two chunks of reclaim: let the threads that queued for the metadata lock
    /// during the chunk take it first (for at most [`HANDOFF_MAX`], so a steady stream of
    /// operations slows reclaim down but cannot stop it). No yield when nobody waits: on a
    /// busy host that would cost a time slice per chunk, and the destroying guest's worker
    /// serves other guests too.
    fn hand_off(&self) {
        let start = Instant::now();
        while self.waiting.load(Ordering::Relaxed) > 0 && start.elapsed() < HANDOFF_MAX {
            std::thread::yield_now();
        }
    }

    fn count<T>(&self, c: ClientId, r: Result<T, TmemError>) -> Result<T, TmemError> {
        self.total_ops.fetch_add(1, Ordering::Relaxed);
        if r.is_err() {
            self.errored_ops.fetch_add(1, Ordering::Relaxed);
            // The error path only: the metadata lock it takes again is not on the hit path.
            if let Ok(cl) = self.meta().client_mut(c) {
                cl.c.errors += 1;
            }
        }
        r
    }

    fn free_frames(&self, frames: &[u32]) {
        if !frames.is_empty() {
            lock(&self.free).list.extend_from_slice(frames);
        }
    }

    /// Free the pages of destroyed pools and flushed objects, `REAP_CHUNK` (2048) pages per
    /// metadata-lock acquisition, yielding between chunks so that other guests' operations
    /// get the lock. Returns when nothing is pending. The destroy and flush operations call
    /// it themselves; any thread may call it, several at once share the work.
    pub fn reap(&self) {
        loop {
            let mut out = Vec::new();
            let more = {
                let mut m = self.meta();
                if !m.reap_pending() {
                    return;
                }
                if m.reap_manual {
                    return;
                }
                let chunk = m.reap_chunk;
                let more = m.reap_chunk(chunk, &mut out);
                out.append(&mut m.zfreed);
                more
            };
            self.free_frames(&out);
            if !more {
                return;
            }
            self.hand_off();
        }
    }

    /// Tests only: reclaim in chunks of `chunk` pages, and only when [`Store::reap_step`] is
    /// called (a put that needs memory still helps), so that tests can interleave reclaim with
    /// other operations.
    #[doc(hidden)]
    pub fn set_manual_reap(&self, chunk: usize) {
        let mut m = self.meta();
        m.reap_manual = true;
        m.reap_chunk = chunk.max(1);
    }

    /// Tests only: run one reclaim chunk; whether work remains.
    #[doc(hidden)]
    pub fn reap_step(&self) -> bool {
        let mut out = Vec::new();
        let more = {
            let mut m = self.meta();
            let chunk = m.reap_chunk;
            let more = m.reap_chunk(chunk, &mut out);
            out.append(&mut m.zfreed);
            more
        };
        self.free_frames(&out);
        more
    }

    /// Frames a durable store keeps free for duplicate puts: 1/64 of memory, at most 64.
    fn dup_reserve(&self) -> u64 {
        if self.is_durable() {
            (self.nframes as u64 / 64).min(64)
        } else {
            0
        }
    }

    /// Get a frame for a put: free list, a never-used frame, or eviction (`m` is the locked
    /// metadata).
    ///
    /// `new_durable`: the put is of a new page of a durable pool, which may not take the last
    /// [`Store::dup_reserve`] free frames: those are kept for duplicate puts, which on a
    /// durable pool always need a new frame (a full store of persistent pages would otherwise
    /// refuse every rewrite of a page).
    fn reserve(&self, m: &mut Meta, new_durable: bool) -> Reserve {
        {
            let mut f = lock(&self.free);
            // Frames compressed runs gave back are free like any other.
            f.list.append(&mut m.zfreed);
            let keep = if new_durable { self.dup_reserve() } else { 0 };
            let available = f.list.len() as u64 + (self.nframes - f.fresh) as u64;
            // Else fall through to reclaim and eviction.
            if available > keep {
                if let Some(x) = f.list.pop() {
                    drop(f);
                    m.ensure_data_links(x);
                    return Reserve::Frame(x);
                }
                if f.fresh < self.nframes {
                    let x = f.fresh;
                    f.fresh += 1;
                    drop(f);
                    m.ensure_data_links(x);
                    return Reserve::Frame(x);
                }
            }
        }
        if m.reap_pending() {
            // Pages nobody can name any more go before pages somebody may still want.
            let mut freed = Vec::new();
            m.reap_chunk(HELP_REAP, &mut freed);
            if let Some(x) = freed.pop() {
                self.free_frames(&freed);
                return Reserve::Frame(x);
            }
        }
        // Evicted same-filled pages free no frame, and an evicted compressed page frees one
        // only when its run empties: bound the walk so that a guest's pile of them cannot hold
        // the lock (this put then fails; the next one goes on from there). Every so many
        // compressed evictions, compaction turns the holes they left into whole frames.
        let mut z_evicted = 0usize;
        for _ in 0..REAP_CHUNK {
            if let Some(f) = m.zfreed.pop() {
                return Reserve::Frame(f);
            }
            if m.g.eph_data == 0 {
                break;
            }
            let before = m.g.z_pages;
            match m.evict_one() {
                Some(Some(f)) => return Reserve::Frame(f),
                Some(None) => {
                    if m.g.z_pages < before {
                        z_evicted += 1;
                        if z_evicted.is_multiple_of(16) && m.zfreed.is_empty() {
                            self.z_compact(m, zpage::PRESSURE_COMPACT);
                        }
                    }
                }
                None => break,
            }
        }
        if let Some(f) = m.zfreed.pop() {
            return Reserve::Frame(f);
        }
        // Nothing to evict (memory full of persistent pages, say): holes that freed
        // compressed pages left in their runs may still add up to whole frames.
        if m.z_holes {
            self.z_compact(m, zpage::PRESSURE_COMPACT);
            if let Some(f) = m.zfreed.pop() {
                return Reserve::Frame(f);
            }
        }
        Reserve::NoneEvictable
    }

    /// Whether a panic inside the store has poisoned it: every later call would panic, so the
    /// daemon must stop (and be restarted) instead of serving from possibly broken metadata.
    pub fn is_poisoned(&self) -> bool {
        self.meta.is_poisoned() || self.free.is_poisoned()
    }

    /// Poison the store as a panic inside it would (tests of the daemon's fail-stop only).
    #[cfg(feature = "test-utils")]
    pub fn poison_for_tests(&self) {
        std::thread::scope(|s| {
            let _ = s
                .spawn(|| {
                    let _held = lock(&self.meta);
                    panic!("poisoning the store on purpose (test)");
                })
                .join();
        });
    }
}

/// Largest compressed page kept by default: 75% of a page (see `compress.rs`).
const DEFAULT_COMPRESS_MAX: usize = PAGE_SIZE * 3 / 4;

/// Longest a reclaiming thread waits, between two chunks, for queued threads to take the lock.
const HANDOFF_MAX: Duration = Duration::from_millis(1);

#[cfg(test)]
mod tests;
