//! The tmem page store: clients, pools, objects, pages, eviction, quotas, shared-pool
//! authorisation, freeze/thaw and statistics.
//!
//! It must never do I/O, never use `unsafe`, and never see guest memory: page data arrives
//! through a [`PageSource`] and leaves through a [`PageSink`], each copied exactly once.
//! Nothing a guest sends can make it panic; every failure is a [`TmemError`].
//!
//! # Layout
//! * Page data lives in fixed-size frames (see `frames.rs`), addressed by `u32`, allocated and
//!   pre-faulted in 2 MiB chunks on first use and recycled through a free list. The number of
//!   frames is the configured memory limit divided by [`PAGE_SIZE`], so page data can never
//!   exceed the limit.
//! * A stored page is a *node*. A page with data is the node whose id equals its frame; an
//!   all-zero page (and an LRU list head) is an "extra" node with the top bit set and no frame.
//!   Per-node metadata is one 16-byte struct (LRU `prev`/`next`, `obj`, `index`) plus a `u32`
//!   LRU stamp.
//! * Each pool maps an [`Oid`] to an object slot (keyed hash, see `hash.rs`); each object maps
//!   a page index to a node (`pagemap.rs`: a vector for dense objects, a map for sparse ones).
//! * Ephemeral pages are on the LRU list of their *account*: the client for private pools, the
//!   pool itself for a shared pool. Lists are circular with a head node, so a page can be
//!   unlinked without knowing whose list it is on.
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
//! * duplicate put (general path): the old frame is locked under metadata and refilled in
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

mod durable;
mod frames;
mod hash;
mod identity;
mod pagemap;
mod reap;
mod stats;

pub use durable::{page_file_len, Recovery};
pub use identity::Identity;
pub use stats::{ClientStats, GlobalStats, PoolCounters, PoolStats, SharedPoolStats, StoreStats};
pub use tmem_abi::{Oid, Page, PageKey, PageSink, PageSource, PoolKind, TmemError, PAGE_SIZE};
pub use tmem_pmem::{OpenError as PageFileError, Origin as PageFileOrigin, PageFile};

use frames::{is_zero, Frames};
use hash::{IdState, KeyedState};
use pagemap::PageMap;
use reap::{Reap, HELP_REAP, REAP_CHUNK};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

/// The store's handle for one guest domain instance.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ClientId(pub u32);

/// Store limits and defaults.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StoreConfig {
    /// Bytes of page data the store may hold (default 256 MiB). Rounded down to whole pages.
    pub mem_limit_bytes: u64,
    /// Pools one client may have open (default 64; Xen had a fixed 16).
    pub max_pools_per_client: u32,
    /// Shared pools in the whole store (default 256).
    pub max_shared_pools: u32,
    /// Shared-pool uuids one domain may be authorised for (default 64).
    pub max_auth_per_domain: u32,
    /// Page cap given to new clients; 0 = none beyond memory. Counts the client's private
    /// ephemeral and persistent pages, zero pages included.
    pub default_cap_pages: u64,
    /// Eviction weight given to new clients and to shared pools (default 1).
    pub default_weight: u32,
    /// Share of the memory limit, in percent, that one client may pin in persistent pages
    /// (never evicted) unless an administrator sets its cap; 0 = no such limit (default 25).
    pub default_persistent_share_percent: u32,
}

impl StoreConfig {
    /// Persistent pages one client may hold by default (0 = no limit).
    pub fn persistent_share_pages(&self) -> u64 {
        let frames = self.mem_limit_bytes / PAGE_SIZE as u64;
        match self.default_persistent_share_percent.min(100) {
            0 => 0,
            pct => (frames * pct as u64 / 100).max(1),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            mem_limit_bytes: 256 << 20,
            max_pools_per_client: 64,
            max_shared_pools: 256,
            max_auth_per_domain: 64,
            default_cap_pages: 0,
            default_weight: 1,
            default_persistent_share_percent: 25,
        }
    }
}

/// Why [`Store::attach`] refused a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AttachRefused {
    /// The same identity and instance is attached now (its old connection may be closing).
    #[error("{0} (this instance) is already connected")]
    Attached(Identity),
    /// A local identity is attached now under another instance; replacing it would destroy a
    /// live guest's pools.
    #[error(
        "{identity} is connected now as instance {live:#x}; taking over a live client is refused"
    )]
    LiveTakeover { identity: Identity, live: u64 },
}

/// What [`Store::attach_client`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// A fresh client with no pools.
    New,
    /// The same domain instance came back; its persistent pools were kept.
    Reattached,
}

const NIL: u32 = u32::MAX;
const EXTRA: u32 = 1 << 31;

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

/// One node's list links and position: 16 bytes, so a node never straddles a cache line and
/// a lookup, insert or removal touches one line of node metadata.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(16))]
struct Node {
    prev: u32,
    next: u32,
    obj: u32,
    index: u32,
}

const _: () = assert!(std::mem::size_of::<Node>() == 16);

const NODE_INIT: Node = Node {
    prev: NIL,
    next: NIL,
    obj: NIL,
    index: 0,
};

/// Per-node metadata: links, plus the LRU stamp apart (only ephemeral pages and eviction use
/// it).
#[derive(Debug, Default)]
struct Links {
    n: Vec<Node>,
    stamp: Vec<u32>,
}

impl Links {
    fn push(&mut self) {
        self.n.push(NODE_INIT);
        self.stamp.push(0);
    }
    fn len(&self) -> usize {
        self.n.len()
    }
    fn bytes(&self) -> u64 {
        (std::mem::size_of::<Node>() * self.n.capacity() + 4 * self.stamp.capacity()) as u64
    }
}

#[derive(Debug)]
struct Obj {
    pool: u32,
    oid: Oid,
    pages: PageMap,
    /// Unlinked and being emptied by a reap job, which frees the slot at the end.
    reaping: bool,
}

#[derive(Debug)]
struct Pool {
    kind: PoolKind,
    uuid: [u64; 2],
    gen: u64,
    /// Account whose LRU list holds this pool's ephemeral pages.
    account: u32,
    /// Private pools: the owning client. Shared pools: `None`.
    owner: Option<ClientId>,
    sharers: Vec<ClientId>,
    objs: HashMap<Oid, u32, KeyedState>,
    c: PoolCounters,
}

#[derive(Debug)]
struct Account {
    head: u32,
    eph: u64,
    weight: u32,
    /// Its owner is gone; freed once its last ephemeral page is (pages being reaped still
    /// sit on its list).
    closed: bool,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    gid: u32,
    adopted: bool,
}

#[derive(Debug, Default)]
struct ClientCounters {
    eph_max: u64,
    succ_eph_gets: u64,
    pers_puts: u64,
    pers_gets: u64,
    succ_gets: u64,
    failed_gets: u64,
    puts: u64,
    invalidates: u64,
}

#[derive(Debug)]
struct Client {
    identity: Identity,
    instance: u64,
    name: String,
    attached: bool,
    /// Bumped at every detach, so an expiry decided for one detach never hits a later one.
    detach_epoch: u64,
    frozen: bool,
    weight: u32,
    cap: u64,
    compress: bool,
    pools: Vec<Option<Slot>>,
    account: u32,
    pages: u64,
    /// Pages in its private persistent pools (zero pages included).
    pers_pages: u64,
    /// Limit on `pers_pages` (0 = none): the default share until an administrator sets a cap.
    pers_cap: u64,
    c: ClientCounters,
}

impl Client {
    /// Whether one more page in a private pool would take this client over a limit.
    fn at_limit(&self, persistent: bool) -> bool {
        (self.cap != 0 && self.pages >= self.cap)
            || (persistent && self.pers_cap != 0 && self.pers_pages >= self.pers_cap)
    }
}

#[derive(Debug, Default)]
struct FreeFrames {
    list: Vec<u32>,
    fresh: u32,
}

#[derive(Debug, Default)]
struct Global {
    evictions: u64,
    evict_attempts: u64,
    eph: u64,
    eph_max: u64,
    eph_data: u64,
    objects: u64,
    objects_max: u64,
    pages: u64,
    pages_max: u64,
    zero_pages: u64,
    good_eph_puts: u64,
}

#[derive(Debug)]
struct Meta {
    cfg: StoreConfig,
    next_client: u32,
    clients: HashMap<ClientId, Client, IdState>,
    by_identity: HashMap<Identity, ClientId>,
    auth: HashMap<Identity, Vec<[u64; 2]>>,
    auth_required: bool,
    pools: Vec<Option<Pool>>,
    pool_free: Vec<u32>,
    next_gen: u64,
    shared: HashMap<[u64; 2], u32>,
    /// Keys of the object-id hash (guest-chosen keys), drawn once per store.
    obj_hash: KeyedState,
    objs: Vec<Option<Obj>>,
    obj_free: Vec<u32>,
    /// Heap bytes of all objects' page maps, kept as they change so stats need no walk.
    obj_heap_bytes: u64,
    /// Destroyed pools and flushed objects whose pages are still to be freed.
    reap: VecDeque<Reap>,
    /// Pages per reap chunk ([`REAP_CHUNK`]; tests make it small).
    reap_chunk: usize,
    /// Tests only: destroys and flushes leave all their pages to [`Store::reap_step`].
    reap_manual: bool,
    /// Reclaim chunks run so far (each one lock acquisition; tests check the bound).
    reap_chunks_run: u64,
    accounts: Vec<Option<Account>>,
    acct_free: Vec<u32>,
    dl: Links,
    xl: Links,
    x_free: Vec<u32>,
    max_zero: u64,
    stamp: u32,
    g: Global,
}

/// The page store. `Send + Sync`; every method takes `&self`.
#[derive(Debug)]
pub struct Store {
    meta: Mutex<Meta>,
    free: Mutex<FreeFrames>,
    frames: Frames,
    nframes: u32,
    total_ops: AtomicU64,
    errored_ops: AtomicU64,
    /// Threads queued for the metadata lock (see [`Store::meta`]).
    waiting: AtomicU32,
}

/// Where a lookup landed.
struct Found {
    obj: u32,
    node: u32,
}

impl Meta {
    // ---- node field access -------------------------------------------------------------
    fn l(&self, id: u32) -> (&Links, usize) {
        if id & EXTRA != 0 {
            (&self.xl, (id & !EXTRA) as usize)
        } else {
            (&self.dl, id as usize)
        }
    }
    fn lm(&mut self, id: u32) -> (&mut Links, usize) {
        if id & EXTRA != 0 {
            (&mut self.xl, (id & !EXTRA) as usize)
        } else {
            (&mut self.dl, id as usize)
        }
    }
    fn prev(&self, id: u32) -> u32 {
        let (l, i) = self.l(id);
        l.n[i].prev
    }
    fn next(&self, id: u32) -> u32 {
        let (l, i) = self.l(id);
        l.n[i].next
    }
    fn set_prev(&mut self, id: u32, v: u32) {
        let (l, i) = self.lm(id);
        l.n[i].prev = v;
    }
    fn set_next(&mut self, id: u32, v: u32) {
        let (l, i) = self.lm(id);
        l.n[i].next = v;
    }

    fn alloc_extra(&mut self) -> u32 {
        if let Some(x) = self.x_free.pop() {
            return x;
        }
        let x = self.xl.len() as u32 | EXTRA;
        self.xl.push();
        x
    }
    fn free_extra(&mut self, x: u32) {
        let (l, i) = self.lm(x);
        l.n[i].prev = NIL;
        l.n[i].next = NIL;
        l.n[i].obj = NIL;
        self.x_free.push(x);
    }

    // ---- LRU ---------------------------------------------------------------------------
    fn lru_push(&mut self, head: u32, id: u32) {
        let tail = self.prev(head);
        self.set_next(tail, id);
        self.set_prev(id, tail);
        self.set_next(id, head);
        self.set_prev(head, id);
        self.stamp = self.stamp.wrapping_add(1);
        let s = self.stamp;
        let (l, i) = self.lm(id);
        l.stamp[i] = s;
    }
    fn lru_unlink(&mut self, id: u32) {
        let p = self.prev(id);
        let n = self.next(id);
        if p == NIL || n == NIL {
            return;
        }
        self.set_next(p, n);
        self.set_prev(n, p);
        self.set_prev(id, NIL);
        self.set_next(id, NIL);
    }

    fn new_account(&mut self, weight: u32) -> u32 {
        let head = self.alloc_extra();
        self.set_prev(head, head);
        self.set_next(head, head);
        let a = Account {
            head,
            eph: 0,
            weight,
            closed: false,
        };
        if let Some(i) = self.acct_free.pop() {
            self.accounts[i as usize] = Some(a);
            i
        } else {
            self.accounts.push(Some(a));
            (self.accounts.len() - 1) as u32
        }
    }
    /// Free account `a` now if its list is empty, else when its last ephemeral page goes.
    fn free_account(&mut self, a: u32) {
        let Some(Some(acc)) = self.accounts.get_mut(a as usize) else {
            return;
        };
        if acc.eph > 0 {
            acc.closed = true;
            return;
        }
        if let Some(acc) = self.accounts[a as usize].take() {
            self.free_extra(acc.head);
            self.acct_free.push(a);
        }
    }

    // ---- lookup ------------------------------------------------------------------------
    fn client(&self, c: ClientId) -> Result<&Client, TmemError> {
        self.clients.get(&c).ok_or(TmemError::NoDevice)
    }
    fn client_mut(&mut self, c: ClientId) -> Result<&mut Client, TmemError> {
        self.clients.get_mut(&c).ok_or(TmemError::NoDevice)
    }
    /// The global pool id a guest's pool id names.
    fn resolve(&self, c: ClientId, pool: u32) -> Result<u32, TmemError> {
        let cl = self.client(c)?;
        if !cl.attached {
            return Err(TmemError::NoDevice);
        }
        match cl.pools.get(pool as usize) {
            Some(Some(s)) if s.adopted => Ok(s.gid),
            _ => Err(TmemError::NoSuchPool),
        }
    }
    fn pool(&self, gid: u32) -> &Pool {
        match self.pools.get(gid as usize) {
            Some(Some(p)) => p,
            _ => unreachable_pool(),
        }
    }
    fn pool_mut(&mut self, gid: u32) -> &mut Pool {
        match self.pools.get_mut(gid as usize) {
            Some(Some(p)) => p,
            _ => unreachable_pool(),
        }
    }
    fn lookup(&self, gid: u32, key: &PageKey) -> Option<Found> {
        let obj = *self.pool(gid).objs.get(&key.oid)?;
        let node = self.objs[obj as usize].as_ref()?.pages.get(key.index)?;
        Some(Found { obj, node })
    }

    // ---- page insert / remove ------------------------------------------------------------
    fn insert_page(&mut self, gid: u32, key: &PageKey, node: u32) {
        let obj = match self.pool(gid).objs.get(&key.oid) {
            Some(&o) => o,
            None => {
                let o = Obj {
                    pool: gid,
                    oid: key.oid,
                    pages: PageMap::default(),
                    reaping: false,
                };
                let slot = if let Some(s) = self.obj_free.pop() {
                    self.objs[s as usize] = Some(o);
                    s
                } else {
                    self.objs.push(Some(o));
                    (self.objs.len() - 1) as u32
                };
                let p = self.pool_mut(gid);
                p.objs.insert(key.oid, slot);
                p.c.objects += 1;
                p.c.objects_max = p.c.objects_max.max(p.c.objects);
                self.g.objects += 1;
                self.g.objects_max = self.g.objects_max.max(self.g.objects);
                slot
            }
        };
        if let Some(o) = self.objs[obj as usize].as_mut() {
            let before = o.pages.heap_bytes();
            o.pages.insert(key.index, node);
            self.obj_heap_bytes = self.obj_heap_bytes + o.pages.heap_bytes() - before;
        }
        {
            let (l, i) = self.lm(node);
            l.n[i].obj = obj;
            l.n[i].index = key.index;
        }
        let p = self.pool_mut(gid);
        p.c.pages += 1;
        p.c.pages_max = p.c.pages_max.max(p.c.pages);
        let (kind, account, owner) = (p.kind, p.account, p.owner);
        if let Some(o) = owner {
            if let Some(cl) = self.clients.get_mut(&o) {
                cl.pages += 1;
                if kind.is_persistent() {
                    cl.pers_pages += 1;
                }
            }
        }
        if node & EXTRA != 0 {
            self.g.zero_pages += 1;
        }
        self.g.pages += 1;
        self.g.pages_max = self.g.pages_max.max(self.g.pages);
        if !kind.is_persistent() {
            let head = match self.accounts[account as usize].as_mut() {
                Some(a) => {
                    a.eph += 1;
                    a.head
                }
                None => return,
            };
            self.lru_push(head, node);
            self.g.eph += 1;
            self.g.eph_max = self.g.eph_max.max(self.g.eph);
            if node & EXTRA == 0 {
                self.g.eph_data += 1;
            }
            if let Some(o) = owner {
                if let Some(cl) = self.clients.get_mut(&o) {
                    let e = self.accounts[account as usize]
                        .as_ref()
                        .map_or(0, |a| a.eph);
                    cl.c.eph_max = cl.c.eph_max.max(e);
                }
            }
        }
    }

    /// Remove one page. Returns its frame if it had one (the caller frees it).
    fn remove_page(&mut self, obj: u32, node: u32) -> Option<u32> {
        let index = {
            let (l, i) = self.l(node);
            l.n[i].index
        };
        let (gid, reaping) = match self.objs[obj as usize].as_mut() {
            Some(o) => {
                // A reaped object's map was taken by its job: nothing to remove there.
                let before = o.pages.heap_bytes();
                o.pages.remove(index);
                self.obj_heap_bytes = self.obj_heap_bytes + o.pages.heap_bytes() - before;
                (o.pool, o.reaping)
            }
            None => return None,
        };
        if !reaping
            && self.objs[obj as usize]
                .as_ref()
                .is_some_and(|o| o.pages.is_empty())
        {
            self.free_object(obj);
        }
        let p = self.pool_mut(gid);
        let (kind, account, owner) = (p.kind, p.account, p.owner);
        // A reaped object's pages were taken off its pool and client when it was unlinked.
        if !reaping {
            p.c.pages -= 1;
        }
        if let Some(o) = owner.filter(|_| !reaping) {
            if let Some(cl) = self.clients.get_mut(&o) {
                cl.pages -= 1;
                if kind.is_persistent() {
                    cl.pers_pages -= 1;
                }
            }
        }
        self.g.pages -= 1;
        if !kind.is_persistent() {
            self.lru_unlink(node);
            let orphan = match self.accounts[account as usize].as_mut() {
                Some(a) => {
                    a.eph -= 1;
                    a.closed && a.eph == 0
                }
                None => false,
            };
            if orphan {
                self.free_account(account);
            }
            self.g.eph -= 1;
            if node & EXTRA == 0 {
                self.g.eph_data -= 1;
            }
        }
        if node & EXTRA != 0 {
            self.g.zero_pages -= 1;
            self.free_extra(node);
            None
        } else {
            let (l, i) = self.lm(node);
            l.n[i].obj = NIL;
            l.n[i].prev = NIL;
            l.n[i].next = NIL;
            Some(node)
        }
    }

    /// Free object slot `obj` (its pages are gone), unlinking it from its pool's map if it is
    /// still there (a reaped object was unlinked at once, and its oid may name another
    /// object by now).
    fn free_object(&mut self, obj: u32) {
        let Some(o) = self.objs.get_mut(obj as usize).and_then(Option::take) else {
            return;
        };
        self.obj_heap_bytes -= o.pages.heap_bytes();
        let p = self.pool_mut(o.pool);
        if p.objs.get(&o.oid) == Some(&obj) {
            p.objs.remove(&o.oid);
        }
        p.c.objects -= 1;
        self.g.objects -= 1;
        self.obj_free.push(obj);
    }

    fn empty_object(&mut self, obj: u32, out: &mut Vec<u32>) {
        let nodes: Vec<u32> = match self.objs[obj as usize].as_ref() {
            Some(o) => o.pages.nodes(),
            None => return,
        };
        for n in nodes {
            if let Some(f) = self.remove_page(obj, n) {
                out.push(f);
            }
        }
    }

    // ---- eviction ------------------------------------------------------------------------
    /// The account to evict from: the one furthest over its weighted share of ephemeral
    /// pages, else the one holding the globally oldest ephemeral page.
    fn pick_victim_account(&self) -> Option<u32> {
        let total_w: u128 = self
            .accounts
            .iter()
            .flatten()
            .filter(|a| a.eph > 0)
            .map(|a| a.weight as u128)
            .sum();
        let g = self.g.eph as u128;
        let mut best: Option<(u128, u32)> = None;
        let mut oldest: Option<(u32, u32)> = None;
        for (i, a) in self.accounts.iter().enumerate() {
            let Some(a) = a else { continue };
            if a.eph == 0 {
                continue;
            }
            // Over share: eph / g > weight / total_w.
            let lhs = a.eph as u128 * total_w;
            let rhs = g * a.weight as u128;
            if lhs > rhs {
                let excess = lhs - rhs;
                if best.is_none_or(|(e, _)| e < excess) {
                    best = Some((excess, i as u32));
                }
            }
            let first = self.next(a.head);
            let (l, j) = self.l(first);
            let age = self.stamp.wrapping_sub(l.stamp[j]);
            if oldest.is_none_or(|(o, _)| o < age) {
                oldest = Some((age, i as u32));
            }
        }
        best.map(|b| b.1).or(oldest.map(|o| o.1))
    }

    /// Evict the oldest ephemeral page of `account`. `None` if it has none; else its frame.
    fn evict_from(&mut self, account: u32) -> Option<Option<u32>> {
        self.g.evict_attempts += 1;
        let head = self.accounts.get(account as usize)?.as_ref()?.head;
        let node = self.next(head);
        if node == head || node == NIL {
            return None;
        }
        let obj = {
            let (l, i) = self.l(node);
            l.n[i].obj
        };
        self.g.evictions += 1;
        Some(self.remove_page(obj, node))
    }

    /// Evict by the weighted-LRU policy. `None` if nothing is evictable.
    fn evict_one(&mut self) -> Option<Option<u32>> {
        let a = self.pick_victim_account();
        match a {
            Some(a) => self.evict_from(a),
            None => {
                self.g.evict_attempts += 1;
                None
            }
        }
    }

    fn ensure_data_links(&mut self, f: u32) {
        while self.dl.len() <= f as usize {
            self.dl.push();
        }
    }
}

/// Page frames for a configuration: its memory limit in whole pages.
pub(crate) fn frames_for(cfg: &StoreConfig) -> u32 {
    (cfg.mem_limit_bytes / PAGE_SIZE as u64).min((EXTRA - 1) as u64) as u32
}

#[cold]
fn unreachable_pool() -> ! {
    // Every global pool id held in a client slot, object or account names a live pool; this
    // is an internal invariant, not reachable from guest input.
    panic!("tmem-store: internal invariant broken: dangling pool id")
}

/// Result of trying to obtain a frame.
enum Reserve {
    Frame(u32),
    NoneEvictable,
}

impl Store {
    /// A store with the given limits. Page memory is allocated on first use and kept.
    pub fn new(cfg: StoreConfig) -> Store {
        let nframes = frames_for(&cfg);
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
            x_free: Vec::new(),
            // Zero pages cost only metadata; bound them anyway (guest-driven allocation).
            max_zero: (nframes as u64).max(1 << 16),
            stamp: 0,
            g: Global::default(),
            cfg,
        };
        Store {
            meta: Mutex::new(meta),
            free: Mutex::new(FreeFrames::default()),
            frames: Frames::new(nframes),
            nframes,
            total_ops: AtomicU64::new(0),
            errored_ops: AtomicU64::new(0),
            waiting: AtomicU32::new(0),
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

    fn count<T>(&self, r: Result<T, TmemError>) -> Result<T, TmemError> {
        self.total_ops.fetch_add(1, Ordering::Relaxed);
        if r.is_err() {
            self.errored_ops.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn free_frames(&self, frames: &[u32]) {
        if !frames.is_empty() {
            lock(&self.free).list.extend_from_slice(frames);
        }
    }

    /// Free the pages of destroyed pools and flushed objects, [`REAP_CHUNK`] pages per
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
                m.reap_chunk(chunk, &mut out)
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
            m.reap_chunk(chunk, &mut out)
        };
        self.free_frames(&out);
        more
    }

    /// Get a frame for a put: free list, a never-used frame, or eviction (`m` is the locked
    /// metadata).
    fn reserve(&self, m: &mut Meta) -> Reserve {
        {
            let mut f = lock(&self.free);
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
        if m.reap_pending() {
            // Pages nobody can name any more go before pages somebody may still want.
            let mut freed = Vec::new();
            m.reap_chunk(HELP_REAP, &mut freed);
            if let Some(x) = freed.pop() {
                self.free_frames(&freed);
                return Reserve::Frame(x);
            }
        }
        // Evicted zero pages free no frame: bound the walk so that a guest's pile of them
        // cannot hold the lock (this put then fails; the next one goes on from there).
        for _ in 0..REAP_CHUNK {
            if m.g.eph_data == 0 {
                break;
            }
            match m.evict_one() {
                Some(Some(f)) => return Reserve::Frame(f),
                Some(None) => continue,
                None => break,
            }
        }
        Reserve::NoneEvictable
    }

    // ---- clients -------------------------------------------------------------------------

    /// A Xen domain (domid, instance) connects: [`Store::attach`] for `Identity::Xen`, any
    /// refusal reported as `NotPermitted`.
    pub fn attach_client(
        &self,
        domid: u32,
        instance: u64,
        name: &str,
    ) -> Result<(ClientId, Attach), TmemError> {
        self.attach(Identity::Xen { domid }, instance, name)
            .map_err(|_| TmemError::NotPermitted)
    }

    /// A guest (identity, instance) connects. The same identity and instance that is detached
    /// is reattached (its persistent pools were kept, ephemeral ones dropped at detach); the
    /// same identity and instance already attached is refused. Another instance of a detached
    /// identity replaces it (a restarted guest has a new instance), as does another instance
    /// of an attached Xen domain (Xen reuses domain ids; tmemd sees the old one die late).
    /// Another instance of an attached local identity is refused: that is a live guest.
    /// Decided under the metadata lock, so two hellos cannot both win.
    pub fn attach(
        &self,
        identity: Identity,
        instance: u64,
        name: &str,
    ) -> Result<(ClientId, Attach), AttachRefused> {
        // A replaced client is destroyed outside the lock (its pages are reaped in chunks);
        // then decide again, since another hello may have come in meanwhile.
        let mut m = loop {
            let mut m = self.meta();
            let Some(&c) = m.by_identity.get(&identity) else {
                break m;
            };
            if let Some(cl) = m.clients.get_mut(&c) {
                if cl.instance == instance {
                    if cl.attached {
                        return Err(AttachRefused::Attached(identity));
                    }
                    cl.attached = true;
                    cl.name = name.to_owned();
                    return Ok((c, Attach::Reattached));
                }
                if cl.attached && matches!(identity, Identity::Local { .. }) {
                    return Err(AttachRefused::LiveTakeover {
                        identity,
                        live: cl.instance,
                    });
                }
            }
            let mut out = Vec::new();
            destroy_client_locked(&mut m, c, &mut out);
            drop(m);
            self.free_frames(&out);
            self.reap();
        };
        let id = ClientId(m.next_client);
        m.next_client = m.next_client.wrapping_add(1).max(1);
        let weight = m.cfg.default_weight;
        let account = m.new_account(weight);
        let cl = Client {
            identity,
            instance,
            name: name.to_owned(),
            attached: true,
            detach_epoch: 0,
            frozen: false,
            weight,
            cap: m.cfg.default_cap_pages,
            compress: false,
            pools: Vec::new(),
            account,
            pages: 0,
            pers_pages: 0,
            pers_cap: m.cfg.persistent_share_pages(),
            c: ClientCounters::default(),
        };
        m.clients.insert(id, cl);
        m.by_identity.insert(identity, id);
        Ok((id, Attach::New))
    }

    /// Connection lost: drop the client's ephemeral pools and its uuid-less persistent pools,
    /// leave its shared pools, keep persistent pools with a uuid for reattachment. Returns the
    /// detach epoch to pass to [`Store::expire_detached`] when the grace period ends.
    pub fn detach_client(&self, c: ClientId) -> u64 {
        let mut m = self.meta();
        let mut out = Vec::new();
        let Ok(cl) = m.client(c) else { return 0 };
        let slots: Vec<(usize, Slot)> = cl
            .pools
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.map(|s| (i, s)))
            .collect();
        for (i, s) in slots {
            let p = m.pool(s.gid);
            let keep = p.kind.is_persistent() && p.uuid != [0, 0];
            if keep {
                if let Ok(cl) = m.client_mut(c) {
                    if let Some(Some(slot)) = cl.pools.get_mut(i) {
                        slot.adopted = false;
                    }
                }
            } else {
                close_pool_locked(&mut m, c, i as u32, &mut out);
            }
        }
        let mut epoch = 0;
        if let Ok(cl) = m.client_mut(c) {
            cl.attached = false;
            cl.detach_epoch += 1;
            epoch = cl.detach_epoch;
        }
        drop(m);
        self.free_frames(&out);
        self.reap();
        epoch
    }

    /// The reattach grace period of detach `epoch` is over: destroy the client, but only if it
    /// is still detached from that same detach. Decided under the store's lock, so a guest
    /// reattaching as its grace expires keeps its persistent pools. Returns whether destroyed.
    pub fn expire_detached(&self, c: ClientId, epoch: u64) -> bool {
        let mut m = self.meta();
        match m.client(c) {
            Ok(cl) if !cl.attached && cl.detach_epoch == epoch => {}
            _ => return false,
        }
        let mut out = Vec::new();
        destroy_client_locked(&mut m, c, &mut out);
        drop(m);
        self.free_frames(&out);
        self.reap();
        true
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

    /// Domain gone: drop everything of this client and leave its shared pools. Returns whether
    /// the client existed.
    pub fn destroy_client(&self, c: ClientId) -> bool {
        let mut m = self.meta();
        let mut out = Vec::new();
        let existed = destroy_client_locked(&mut m, c, &mut out);
        drop(m);
        self.free_frames(&out);
        self.reap();
        existed
    }

    /// The client of a Xen domain id, attached or detached.
    pub fn client_by_domid(&self, domid: u32) -> Option<ClientId> {
        self.client_by_identity(Identity::Xen { domid })
    }

    /// The client of an identity, attached or detached.
    pub fn client_by_identity(&self, identity: Identity) -> Option<ClientId> {
        self.meta().by_identity.get(&identity).copied()
    }

    // ---- pools ---------------------------------------------------------------------------

    /// Create or join a pool. `Ok((pool_id, reattached))`.
    ///
    /// A persistent pool whose non-zero uuid matches a pool this client kept across a detach
    /// is re-adopted with the same id and `reattached = true`. Shared pools are joined by uuid;
    /// an unauthorised domain gets `NotAuthorised`; the uuids `{0,0}` and `{!0,!0}` are
    /// refused with `NotPermitted`, as is any limit being reached.
    pub fn new_pool(
        &self,
        c: ClientId,
        uuid: [u64; 2],
        kind: PoolKind,
    ) -> Result<(u32, bool), TmemError> {
        // A client re-created after a domain id reuse finds its predecessor's pages gone.
        self.reap();
        let r = self.new_pool_inner(c, uuid, kind);
        self.count(r)
    }

    fn new_pool_inner(
        &self,
        c: ClientId,
        uuid: [u64; 2],
        kind: PoolKind,
    ) -> Result<(u32, bool), TmemError> {
        let mut m = self.meta();
        let m = &mut *m;
        let cl = m.client(c)?;
        if !cl.attached {
            return Err(TmemError::NoDevice);
        }
        if kind.is_persistent() && uuid != [0, 0] {
            let kept = cl.pools.iter().enumerate().find_map(|(i, s)| match s {
                Some(s) if !s.adopted && m.pool(s.gid).uuid == uuid => Some(i),
                _ => None,
            });
            if let Some(i) = kept {
                if let Some(Some(s)) = m.client_mut(c)?.pools.get_mut(i) {
                    s.adopted = true;
                }
                return Ok((i as u32, true));
            }
        }
        let max = m.cfg.max_pools_per_client as usize;
        let free_slot = cl.pools.iter().position(Option::is_none);
        let slot = match free_slot {
            Some(i) => i,
            None if cl.pools.len() < max => cl.pools.len(),
            None => return Err(TmemError::NotPermitted),
        };
        if slot >= max {
            return Err(TmemError::NotPermitted);
        }
        let identity = cl.identity;
        let gid = if kind.is_shared() {
            if uuid == [0, 0] || uuid == [!0, !0] {
                return Err(TmemError::NotPermitted);
            }
            if m.auth_required && !m.auth.get(&identity).is_some_and(|l| l.contains(&uuid)) {
                return Err(TmemError::NotAuthorised);
            }
            if let Some(&gid) = m.shared.get(&uuid) {
                let p = m.pool_mut(gid);
                if p.sharers.contains(&c) {
                    // Already joined: answer with the id it has.
                    let cl = m.client(c)?;
                    if let Some(i) = cl
                        .pools
                        .iter()
                        .position(|s| s.is_some_and(|s| s.gid == gid))
                    {
                        return Ok((i as u32, false));
                    }
                }
                let p = m.pool_mut(gid);
                if !p.sharers.contains(&c) {
                    p.sharers.push(c);
                }
                gid
            } else {
                if m.shared.len() >= m.cfg.max_shared_pools as usize {
                    return Err(TmemError::NotPermitted);
                }
                let account = m.new_account(m.cfg.default_weight);
                let gid = new_pool_slot(m, kind, uuid, account, None, vec![c]);
                m.shared.insert(uuid, gid);
                gid
            }
        } else {
            let account = m.client(c)?.account;
            new_pool_slot(m, kind, uuid, account, Some(c), Vec::new())
        };
        let cl = m.client_mut(c)?;
        let s = Some(Slot { gid, adopted: true });
        if slot == cl.pools.len() {
            cl.pools.push(s);
        } else {
            cl.pools[slot] = s;
        }
        Ok((slot as u32, false))
    }

    /// Destroy (or, for a shared pool, leave) a pool. `Ok(true)` if there was one.
    pub fn destroy_pool(&self, c: ClientId, pool: u32) -> Result<bool, TmemError> {
        let r = (|| {
            let mut m = self.meta();
            let cl = m.client(c)?;
            if !cl.attached {
                return Err(TmemError::NoDevice);
            }
            match cl.pools.get(pool as usize) {
                Some(Some(s)) if s.adopted => {}
                _ => return Ok(false),
            }
            let mut out = Vec::new();
            close_pool_locked(&mut m, c, pool, &mut out);
            drop(m);
            self.free_frames(&out);
            self.reap();
            Ok(true)
        })();
        self.count(r)
    }

    // ---- page operations -----------------------------------------------------------------

    /// Store a page. Duplicate puts replace the data in place (allowed while frozen); if a
    /// duplicate cannot be stored the old copy is removed and `DupPutFlushed` returned.
    pub fn put<S: PageSource + ?Sized>(
        &self,
        c: ClientId,
        pool: u32,
        key: PageKey,
        src: &S,
    ) -> Result<(), TmemError> {
        let r = self.put_inner(c, pool, key, src);
        self.count(r)
    }

    fn put_inner<S: PageSource + ?Sized>(
        &self,
        c: ClientId,
        pool: u32,
        key: PageKey,
        src: &S,
    ) -> Result<(), TmemError> {
        // Fast path: fill a free frame before taking the metadata lock, so that the lock is
        // taken once and never held during the copy. If the put turns out to need anything
        // unusual (frozen, cap, no such pool) the frame goes back and the general path below
        // runs under the same lock acquisition.
        let pre = self.take_free_frame().map(|f| {
            let mut g = self.frames.lock(f);
            src.read_page(&mut g);
            (f, is_zero(&g))
        });
        let mut m = self.meta();
        if let Some((f, _)) = pre {
            // A never-used frame gets its node now, before it can reach the free list.
            m.ensure_data_links(f);
        }
        let gid = match m.resolve(c, pool) {
            Ok(g) => g,
            Err(e) => {
                if let Some((f, _)) = pre {
                    self.free_frames(&[f]);
                }
                return Err(e);
            }
        };
        let gen = m.pool(gid).gen;
        m.pool_mut(gid).c.total_puts += 1;
        if let Some((f, zero)) = pre {
            if let Some(to_free) = self.link_prefilled(&mut m, c, gid, &key, f, zero) {
                drop(m);
                self.free_frames(&to_free);
                return Ok(());
            }
            self.free_frames(&[f]);
        }
        if let Some(found) = m.lookup(gid, &key) {
            if found.node & EXTRA == 0 {
                // Duplicate of a page with data: refill its frame in place.
                let mut g = self.frames.lock(found.node);
                drop(m);
                src.read_page(&mut g);
                let zero = is_zero(&g);
                drop(g);
                let mut m = self.meta();
                self.finish_dup(&mut m, c, pool, gid, gen, &key, found.node, zero);
                return Ok(());
            }
            // Duplicate of a zero page: it needs a frame now (unless zero again).
            return match self.reserve(&mut m) {
                Reserve::Frame(f) => {
                    drop(m);
                    self.fill_and_link(c, pool, gid, gen, key, src, f, true)
                }
                Reserve::NoneEvictable => {
                    let mut scratch = [0u8; PAGE_SIZE];
                    src.read_page(&mut scratch);
                    if is_zero(&scratch) {
                        self.count_put_ok(&mut m, c, gid, true);
                        touch(&mut m, gid, found.node);
                        return Ok(());
                    }
                    let fr = m.remove_page(found.obj, found.node);
                    debug_assert!(fr.is_none());
                    m.pool_mut(gid).c.dup_puts_flushed += 1;
                    Err(TmemError::DupPutFlushed)
                }
            };
        }
        // A new handle.
        let (frozen, cap, pages, account) = {
            let cl = m.client(c)?;
            (cl.frozen, cl.cap, cl.pages, cl.account)
        };
        if frozen {
            return Err(TmemError::Frozen);
        }
        let kind = m.pool(gid).kind;
        if kind.is_persistent() && m.client(c)?.at_limit(true) {
            return Err(TmemError::OverCap);
        }
        let mut own_frame = None;
        if !kind.is_shared() && cap != 0 && pages >= cap {
            // Over cap: an ephemeral put may push out this client's own oldest ephemeral page.
            if kind.is_persistent() {
                return Err(TmemError::OverCap);
            }
            match m.evict_from(account) {
                Some(f) => own_frame = f,
                None => return Err(TmemError::OverCap),
            }
            if m.client(c)?.pages >= cap {
                if let Some(f) = own_frame {
                    drop(m);
                    self.free_frames(&[f]);
                }
                return Err(TmemError::OverCap);
            }
        }
        let reserved = match own_frame {
            Some(f) => Reserve::Frame(f),
            None => self.reserve(&mut m),
        };
        match reserved {
            Reserve::Frame(f) => {
                drop(m);
                self.fill_and_link(c, pool, gid, gen, key, src, f, false)
            }
            Reserve::NoneEvictable => {
                let mut scratch = [0u8; PAGE_SIZE];
                src.read_page(&mut scratch);
                if is_zero(&scratch) && m.g.zero_pages < m.max_zero {
                    let x = m.alloc_extra();
                    m.insert_page(gid, &key, x);
                    self.count_put_ok(&mut m, c, gid, false);
                    return Ok(());
                }
                m.pool_mut(gid).c.no_mem_puts += 1;
                Err(TmemError::NoMemory)
            }
        }
    }

    /// A frame from the free list (or a never-used one) without touching the metadata, for
    /// a put that fills it before taking the metadata lock. `None` when memory is full: the
    /// caller then reserves under the metadata lock, evicting if needed.
    fn take_free_frame(&self) -> Option<u32> {
        let mut f = lock(&self.free);
        if let Some(x) = f.list.pop() {
            return Some(x);
        }
        if f.fresh < self.nframes {
            let x = f.fresh;
            f.fresh += 1;
            return Some(x);
        }
        None
    }

    /// Link the already-filled frame `f` as the page `key` of pool `gid` if that needs no
    /// eviction and no refusal: a duplicate (replaced by the new frame; a data duplicate
    /// thereby behaves like the in-place refill of the general path) or a new handle of an
    /// unfrozen client within its cap. Returns the frames to free, or `None` (nothing changed)
    /// to leave the put to the general path.
    fn link_prefilled(
        &self,
        m: &mut Meta,
        c: ClientId,
        gid: u32,
        key: &PageKey,
        f: u32,
        zero: bool,
    ) -> Option<Vec<u32>> {
        let found = m.lookup(gid, key);
        if found.is_none() {
            let cl = m.client(c).ok()?;
            let kind = m.pool(gid).kind;
            if cl.frozen || (!kind.is_shared() && cl.at_limit(kind.is_persistent())) {
                return None;
            }
        }
        let mut to_free = Vec::new();
        let dup = match found {
            Some(old) => {
                if let Some(of) = m.remove_page(old.obj, old.node) {
                    to_free.push(of);
                }
                true
            }
            None => false,
        };
        let node = if zero && m.g.zero_pages < m.max_zero {
            to_free.push(f);
            m.alloc_extra()
        } else {
            f
        };
        m.insert_page(gid, key, node);
        self.count_put_ok(m, c, gid, dup);
        Some(to_free)
    }

    /// Copy a put's data into reserved frame `f` (metadata unlocked), then link it in.
    #[allow(clippy::too_many_arguments)]
    fn fill_and_link<S: PageSource + ?Sized>(
        &self,
        c: ClientId,
        pool: u32,
        gid: u32,
        gen: u64,
        key: PageKey,
        src: &S,
        f: u32,
        was_dup: bool,
    ) -> Result<(), TmemError> {
        let zero = {
            let mut g = self.frames.lock(f);
            src.read_page(&mut g);
            is_zero(&g)
        };
        let mut m = self.meta();
        // The pool may have gone while the metadata lock was dropped.
        let alive = m.resolve(c, pool) == Ok(gid) && m.pool(gid).gen == gen;
        if !alive {
            drop(m);
            self.free_frames(&[f]);
            return Err(TmemError::NoSuchPool);
        }
        let mut to_free = Vec::new();
        let mut dup = was_dup;
        if let Some(old) = m.lookup(gid, &key) {
            // Replace whatever is there now.
            if let Some(of) = m.remove_page(old.obj, old.node) {
                to_free.push(of);
            }
            dup = true;
        } else if !m.pool(gid).kind.is_shared() {
            // Re-check the cap: another put may have used the room meanwhile.
            let cl = m.client(c)?;
            if !dup && cl.at_limit(m.pool(gid).kind.is_persistent()) {
                drop(m);
                self.free_frames(&[f]);
                return Err(TmemError::OverCap);
            }
        }
        let node = if zero && m.g.zero_pages < m.max_zero {
            to_free.push(f);
            m.alloc_extra()
        } else {
            f
        };
        m.insert_page(gid, &key, node);
        self.count_put_ok(&mut m, c, gid, dup);
        drop(m);
        self.free_frames(&to_free);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_dup(
        &self,
        m: &mut Meta,
        c: ClientId,
        pool: u32,
        gid: u32,
        gen: u64,
        key: &PageKey,
        node: u32,
        zero: bool,
    ) {
        if !(m.resolve(c, pool) == Ok(gid) && m.pool(gid).gen == gen) {
            return;
        }
        self.count_put_ok(m, c, gid, true);
        let Some(found) = m.lookup(gid, key) else {
            return;
        };
        if found.node != node {
            return;
        }
        if zero && m.g.zero_pages < m.max_zero {
            // Turn it into a zero page: give the frame back.
            if let Some(f) = m.remove_page(found.obj, node) {
                let x = m.alloc_extra();
                m.insert_page(gid, key, x);
                self.free_frames(&[f]);
            }
        } else if !m.pool(gid).kind.is_persistent() {
            touch(m, gid, node);
        }
    }

    fn count_put_ok(&self, m: &mut Meta, c: ClientId, gid: u32, dup: bool) {
        let p = m.pool_mut(gid);
        p.c.good_puts += 1;
        if dup {
            p.c.dup_puts_replaced += 1;
        }
        let persistent = p.kind.is_persistent();
        if !persistent {
            m.g.good_eph_puts += 1;
        }
        if let Ok(cl) = m.client_mut(c) {
            cl.c.puts += 1;
            if persistent {
                cl.c.pers_puts += 1;
            }
        }
    }

    /// Fetch a page. `Ok(true)`: hit, data written to `dst`; `Ok(false)`: miss;
    /// `Err(Empty)`: the pool holds no pages. Private ephemeral gets remove the page.
    pub fn get<D: PageSink + ?Sized>(
        &self,
        c: ClientId,
        pool: u32,
        key: PageKey,
        dst: &mut D,
    ) -> Result<bool, TmemError> {
        let r = self.get_inner(c, pool, key, dst);
        self.count(r)
    }

    fn get_inner<D: PageSink + ?Sized>(
        &self,
        c: ClientId,
        pool: u32,
        key: PageKey,
        dst: &mut D,
    ) -> Result<bool, TmemError> {
        let mut m = self.meta();
        let gid = m.resolve(c, pool)?;
        let p = m.pool_mut(gid);
        p.c.total_gets += 1;
        let kind = p.kind;
        if p.c.pages == 0 {
            if let Ok(cl) = m.client_mut(c) {
                cl.c.failed_gets += 1;
            }
            return Err(TmemError::Empty);
        }
        let Some(found) = m.lookup(gid, &key) else {
            if let Ok(cl) = m.client_mut(c) {
                cl.c.failed_gets += 1;
            }
            return Ok(false);
        };
        m.pool_mut(gid).c.found_gets += 1;
        if let Ok(cl) = m.client_mut(c) {
            cl.c.succ_gets += 1;
            if kind.is_persistent() {
                cl.c.pers_gets += 1;
            } else {
                cl.c.succ_eph_gets += 1;
            }
        }
        let node = found.node;
        match kind {
            PoolKind::PrivateEphemeral => {
                let frame = m.remove_page(found.obj, node);
                match frame {
                    Some(f) => {
                        let g = self.frames.lock(f);
                        drop(m);
                        dst.write_page(&g);
                        drop(g);
                        self.free_frames(&[f]);
                    }
                    None => {
                        drop(m);
                        dst.write_zero_page();
                    }
                }
            }
            PoolKind::SharedEphemeral | PoolKind::PrivatePersistent => {
                if kind.is_shared() {
                    touch(&mut m, gid, node);
                }
                if node & EXTRA != 0 {
                    drop(m);
                    dst.write_zero_page();
                } else {
                    let g = self.frames.lock(node);
                    drop(m);
                    dst.write_page(&g);
                }
            }
        }
        Ok(true)
    }

    /// Remove one page. Carried out and `Ok` whether or not the page existed, frozen or not
    /// (tmemd departs from Xen, which returned `-EFROZEN` after flushing for a frozen client).
    pub fn flush_page(&self, c: ClientId, pool: u32, key: PageKey) -> Result<(), TmemError> {
        let r = (|| {
            let mut m = self.meta();
            let gid = m.resolve(c, pool)?;
            m.pool_mut(gid).c.total_flushes += 1;
            if let Ok(cl) = m.client_mut(c) {
                cl.c.invalidates += 1;
            }
            if let Some(found) = m.lookup(gid, &key) {
                m.pool_mut(gid).c.found_flushes += 1;
                let f = m.remove_page(found.obj, found.node);
                drop(m);
                if let Some(f) = f {
                    self.free_frames(&[f]);
                }
            }
            Ok(())
        })();
        self.count(r)
    }

    /// Remove every page of one object. `Ok` whether or not it existed, frozen or not.
    pub fn flush_object(&self, c: ClientId, pool: u32, oid: Oid) -> Result<(), TmemError> {
        let r = (|| {
            let mut m = self.meta();
            let gid = m.resolve(c, pool)?;
            m.pool_mut(gid).c.total_obj_flushes += 1;
            if let Ok(cl) = m.client_mut(c) {
                cl.c.invalidates += 1;
            }
            if let Some(&obj) = m.pool(gid).objs.get(&oid) {
                m.pool_mut(gid).c.found_obj_flushes += 1;
                let small = !m.reap_manual
                    && m.objs[obj as usize]
                        .as_ref()
                        .is_some_and(|o| o.pages.len() <= m.reap_chunk);
                let mut out = Vec::new();
                if small {
                    m.empty_object(obj, &mut out);
                } else {
                    m.queue_object_reap(gid, &oid);
                }
                drop(m);
                self.free_frames(&out);
                self.reap();
            }
            Ok(())
        })();
        self.count(r)
    }

    // ---- administration --------------------------------------------------------------------

    /// Freeze or thaw a client: while frozen, puts of new handles fail with `Frozen`.
    pub fn set_frozen(&self, c: ClientId, frozen: bool) -> Result<(), TmemError> {
        self.meta().client_mut(c)?.frozen = frozen;
        Ok(())
    }

    /// Set a client's eviction weight.
    pub fn set_weight(&self, c: ClientId, weight: u32) -> Result<(), TmemError> {
        let mut m = self.meta();
        let cl = m.client_mut(c)?;
        cl.weight = weight;
        let a = cl.account;
        if let Some(Some(acc)) = m.accounts.get_mut(a as usize) {
            acc.weight = weight;
        }
        Ok(())
    }

    /// Set a client's page cap (0 = none). It replaces the default persistent share for this
    /// client. Pages already stored above a lowered cap stay.
    pub fn set_cap_pages(&self, c: ClientId, cap: u64) -> Result<(), TmemError> {
        let mut m = self.meta();
        let cl = m.client_mut(c)?;
        cl.cap = cap;
        cl.pers_cap = 0;
        Ok(())
    }

    /// Record whether a client asked for compression (reported only, for now).
    pub fn set_compress(&self, c: ClientId, on: bool) -> Result<(), TmemError> {
        self.meta().client_mut(c)?.compress = on;
        Ok(())
    }

    /// Allow or disallow a domain to join the shared pool `uuid`. Works before the domain
    /// has connected. `Ok(true)` if the list changed; a full list gives `NoMemory`.
    /// Revoking does not expel a domain that has already joined.
    pub fn set_shared_auth(
        &self,
        who: Identity,
        uuid: [u64; 2],
        allow: bool,
    ) -> Result<bool, TmemError> {
        let mut m = self.meta();
        let max = m.cfg.max_auth_per_domain as usize;
        if allow {
            let l = m.auth.entry(who).or_default();
            if l.contains(&uuid) {
                return Ok(false);
            }
            if l.len() >= max {
                if l.is_empty() {
                    m.auth.remove(&who);
                }
                return Err(TmemError::NoMemory);
            }
            l.push(uuid);
            Ok(true)
        } else {
            let Some(l) = m.auth.get_mut(&who) else {
                return Ok(false);
            };
            let before = l.len();
            l.retain(|u| *u != uuid);
            let changed = l.len() != before;
            if l.is_empty() {
                m.auth.remove(&who);
            }
            Ok(changed)
        }
    }

    /// Global switch (Xen's `cli_id=ALL`): when false any domain may join any shared pool.
    pub fn set_shared_auth_required(&self, required: bool) {
        self.meta().auth_required = required;
    }

    /// Fault in all page-data memory now, so that no put ever waits for the kernel to back a
    /// frame (a first-touch fault costs as much as twenty page copies). Meant for a background
    /// thread at start-up; puts may run meanwhile. Returns the bytes it faulted in.
    pub fn prefault(&self) -> u64 {
        self.frames.prefault_all() as u64 * PAGE_SIZE as u64
    }

    /// Ephemeral pages whose eviction would release page memory now.
    pub fn freeable_pages(&self) -> u64 {
        self.meta().g.eph_data
    }

    /// Evict ephemeral pages until at least `kib` KiB of page memory has been released (or
    /// nothing is left to evict); returns the KiB released. The frames go back to the store's
    /// free list (they stay allocated to the daemon, pre-faulted, for later puts).
    pub fn flush_kib(&self, kib: u64) -> u64 {
        let want = kib.div_ceil((PAGE_SIZE / 1024) as u64);
        let mut freed = 0u64;
        // A chunk of evictions per lock acquisition, so a large flush never stalls the guests.
        loop {
            let mut m = self.meta();
            let mut out = Vec::new();
            let mut steps = 0;
            let mut more = true;
            while freed + (out.len() as u64) < want && steps < REAP_CHUNK {
                steps += 1;
                if m.g.eph_data == 0 {
                    more = false;
                    break;
                }
                match m.evict_one() {
                    Some(Some(f)) => out.push(f),
                    Some(None) => {}
                    None => {
                        more = false;
                        break;
                    }
                }
            }
            drop(m);
            freed += out.len() as u64;
            self.free_frames(&out);
            if !more || freed >= want {
                return freed * (PAGE_SIZE / 1024) as u64;
            }
            self.hand_off();
        }
    }

    /// A snapshot of every counter, taken under the metadata lock.
    pub fn stats(&self) -> StoreStats {
        let m = self.meta();
        let (free_len, fresh) = {
            let f = lock(&self.free);
            (f.list.len() as u64, f.fresh as u64)
        };
        let mut clients: Vec<ClientStats> = m
            .clients
            .iter()
            .map(|(id, cl)| ClientStats {
                client_id: id.0,
                domid: match cl.identity {
                    Identity::Xen { domid } => domid,
                    Identity::Local { label, .. } => label,
                },
                local_uid: match cl.identity {
                    Identity::Xen { .. } => None,
                    Identity::Local { uid, .. } => Some(uid),
                },
                instance: cl.instance,
                name: cl.name.clone(),
                attached: cl.attached,
                weight: cl.weight,
                cap_pages: cl.cap,
                compress: cl.compress,
                frozen: cl.frozen,
                pages: cl.pages,
                eph_pages: m
                    .accounts
                    .get(cl.account as usize)
                    .and_then(Option::as_ref)
                    .map_or(0, |a| a.eph),
                eph_pages_max: cl.c.eph_max,
                succ_eph_gets: cl.c.succ_eph_gets,
                pers_puts: cl.c.pers_puts,
                pers_gets: cl.c.pers_gets,
                succ_gets: cl.c.succ_gets,
                failed_gets: cl.c.failed_gets,
                puts: cl.c.puts,
                invalidates: cl.c.invalidates,
                pools: cl
                    .pools
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| {
                        let s = (*s)?;
                        let p = m.pool(s.gid);
                        Some(PoolStats {
                            pool_id: i as u32,
                            kind: p.kind.xen_tag().to_owned(),
                            uuid: p.uuid,
                            adopted: s.adopted,
                            counters: p.c.clone(),
                        })
                    })
                    .collect(),
            })
            .collect();
        clients.sort_by_key(|c| (c.identity(), c.client_id));
        let mut shared_pools: Vec<SharedPoolStats> = m
            .shared
            .values()
            .map(|&gid| {
                let p = m.pool(gid);
                SharedPoolStats {
                    uuid: p.uuid,
                    kind: p.kind.xen_tag().to_owned(),
                    sharers: p
                        .sharers
                        .iter()
                        .filter_map(|c| match m.clients.get(c)?.identity {
                            Identity::Xen { domid } => Some(domid),
                            Identity::Local { .. } => None,
                        })
                        .collect(),
                    local_sharers: p
                        .sharers
                        .iter()
                        .filter_map(|c| match m.clients.get(c)?.identity {
                            Identity::Xen { .. } => None,
                            local => Some(local.to_string()),
                        })
                        .collect(),
                    weight: m
                        .accounts
                        .get(p.account as usize)
                        .and_then(Option::as_ref)
                        .map_or(0, |a| a.weight),
                    counters: p.c.clone(),
                }
            })
            .collect();
        shared_pools.sort_by_key(|s| s.uuid);
        let used = fresh - free_len;
        StoreStats {
            global: GlobalStats {
                total_ops: self.total_ops.load(Ordering::Relaxed),
                errored_ops: self.errored_ops.load(Ordering::Relaxed),
                evictions: m.g.evictions,
                evict_attempts: m.g.evict_attempts,
                eph_pages: m.g.eph,
                eph_pages_max: m.g.eph_max,
                objects: m.g.objects,
                objects_max: m.g.objects_max,
                pages: m.g.pages,
                pages_max: m.g.pages_max,
                zero_pages: m.g.zero_pages,
                good_eph_puts: m.g.good_eph_puts,
                mem_limit_bytes: self.nframes as u64 * PAGE_SIZE as u64,
                data_bytes: used * PAGE_SIZE as u64,
                frames_allocated: fresh,
                frames_free: free_len,
                freeable_pages: m.g.eph_data,
                metadata_bytes: self.metadata_bytes(&m, free_len),
                shared_auth_required: m.auth_required,
            },
            clients,
            shared_pools,
        }
    }

    /// Estimate of metadata bytes: per-node arrays, frame locks, object and pool maps.
    fn metadata_bytes(&self, m: &Meta, free_cap: u64) -> u64 {
        fn map_bytes(cap: usize, entry: usize) -> u64 {
            if cap == 0 {
                return 0;
            }
            // hashbrown: buckets = next power of two of cap * 8 / 7, one control byte each
            // plus a group of trailing control bytes.
            let buckets = (cap * 8 / 7).next_power_of_two().max(4);
            (buckets * (entry + 1) + 16) as u64
        }
        let mut b = m.dl.bytes() + m.xl.bytes() + self.frames.overhead_bytes();
        b += 4 * free_cap + 4 * m.x_free.capacity() as u64;
        b += (m.objs.capacity() * std::mem::size_of::<Option<Obj>>()) as u64;
        b += 4 * m.obj_free.capacity() as u64;
        b += m.obj_heap_bytes;
        for p in m.pools.iter().flatten() {
            b += std::mem::size_of::<Pool>() as u64;
            b += map_bytes(p.objs.capacity(), std::mem::size_of::<(Oid, u32)>());
        }
        b
    }
}

/// Move an ephemeral page to the MRU end of its account's list.
fn touch(m: &mut Meta, gid: u32, node: u32) {
    let p = m.pool(gid);
    if p.kind.is_persistent() {
        return;
    }
    let account = p.account;
    if let Some(Some(a)) = m.accounts.get(account as usize) {
        let head = a.head;
        m.lru_unlink(node);
        m.lru_push(head, node);
    }
}

fn new_pool_slot(
    m: &mut Meta,
    kind: PoolKind,
    uuid: [u64; 2],
    account: u32,
    owner: Option<ClientId>,
    sharers: Vec<ClientId>,
) -> u32 {
    let gen = m.next_gen;
    m.next_gen += 1;
    let p = Pool {
        kind,
        uuid,
        gen,
        account,
        owner,
        sharers,
        objs: HashMap::with_hasher(m.obj_hash),
        c: PoolCounters::default(),
    };
    if let Some(g) = m.pool_free.pop() {
        m.pools[g as usize] = Some(p);
        g
    } else {
        m.pools.push(Some(p));
        (m.pools.len() - 1) as u32
    }
}

/// Close slot `pool` of client `c`: destroy a private pool, leave a shared one (destroying it
/// with its last sharer). Pages a leaving sharer put stay for the others.
fn close_pool_locked(m: &mut Meta, c: ClientId, pool: u32, out: &mut Vec<u32>) {
    let Ok(cl) = m.client_mut(c) else { return };
    let Some(Some(s)) = cl.pools.get_mut(pool as usize).map(Option::take) else {
        return;
    };
    while cl.pools.last().is_some_and(Option::is_none) {
        cl.pools.pop();
    }
    let gid = s.gid;
    let p = m.pool_mut(gid);
    if p.kind.is_shared() {
        p.sharers.retain(|x| *x != c);
        if !p.sharers.is_empty() {
            return;
        }
    }
    // The client stops being charged for the pool's pages now: they can no longer be used.
    let p = m.pool_mut(gid);
    let (pages, persistent) = (p.c.pages, p.kind.is_persistent());
    if p.owner.take().is_some() {
        if let Ok(cl) = m.client_mut(c) {
            cl.pages -= pages;
            if persistent {
                cl.pers_pages -= pages;
            }
        }
    }
    let p = m.pool(gid);
    let (shared, uuid) = (p.kind.is_shared(), p.uuid);
    // Unlinked now; its pages go in bounded chunks (a small pool at once, here).
    let small = p.c.pages + p.c.objects <= SMALL_POOL;
    if shared && m.shared.get(&uuid) == Some(&gid) {
        m.shared.remove(&uuid);
    }
    m.queue_pool_reap(gid);
    if small && m.reap.len() == 1 && !m.reap_manual {
        m.reap_chunk(SMALL_POOL as usize + 1, out);
    }
}

/// Longest a reclaiming thread waits, between two chunks, for queued threads to take the lock.
const HANDOFF_MAX: Duration = Duration::from_millis(1);

/// A pool with at most this many pages plus objects is freed within its destroy.
const SMALL_POOL: u64 = 64;

fn destroy_client_locked(m: &mut Meta, c: ClientId, out: &mut Vec<u32>) -> bool {
    let Ok(cl) = m.client(c) else { return false };
    let n = cl.pools.len();
    for i in 0..n {
        close_pool_locked(m, c, i as u32, out);
    }
    if let Some(cl) = m.clients.remove(&c) {
        if m.by_identity.get(&cl.identity) == Some(&c) {
            m.by_identity.remove(&cl.identity);
        }
        m.free_account(cl.account);
    }
    true
}

#[cfg(test)]
mod tests;
