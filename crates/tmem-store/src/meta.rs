//! The metadata behind the store's lock: clients, pools, objects, accounts, per-node links
//! and global counters, with node field access, extra (frameless) nodes and lookup.

use crate::hash::{IdState, KeyedState};
use crate::pagemap::PageMap;
use crate::reap::Reap;
use crate::{ClientId, Identity, Oid, PageKey, PoolCounters, PoolKind, StoreConfig, TmemError};
use std::collections::{HashMap, VecDeque};

pub(crate) const NIL: u32 = u32::MAX;
pub(crate) const EXTRA: u32 = 1 << 31;

/// One node's list links and position: 16 bytes, so a node never straddles a cache line and
/// a lookup, insert or removal touches one line of node metadata.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(16))]
pub(crate) struct Node {
    pub(crate) prev: u32,
    pub(crate) next: u32,
    pub(crate) obj: u32,
    pub(crate) index: u32,
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
pub(crate) struct Links {
    pub(crate) n: Vec<Node>,
    pub(crate) stamp: Vec<u32>,
}

impl Links {
    pub(crate) fn push(&mut self) {
        self.n.push(NODE_INIT);
        self.stamp.push(0);
    }
    pub(crate) fn len(&self) -> usize {
        self.n.len()
    }
    pub(crate) fn bytes(&self) -> u64 {
        (std::mem::size_of::<Node>() * self.n.capacity() + 4 * self.stamp.capacity()) as u64
    }
}

#[derive(Debug)]
pub(crate) struct Obj {
    pub(crate) pool: u32,
    pub(crate) oid: Oid,
    pub(crate) pages: PageMap,
    /// Unlinked and being emptied by a reap job, which frees the slot at the end.
    pub(crate) reaping: bool,
}

#[derive(Debug)]
pub(crate) struct Pool {
    pub(crate) kind: PoolKind,
    pub(crate) uuid: [u64; 2],
    pub(crate) gen: u64,
    /// Account whose LRU list holds this pool's ephemeral pages.
    pub(crate) account: u32,
    /// Private pools: the owning client. Shared pools: `None`.
    pub(crate) owner: Option<ClientId>,
    pub(crate) sharers: Vec<ClientId>,
    pub(crate) objs: HashMap<Oid, u32, KeyedState>,
    pub(crate) c: PoolCounters,
    /// Its record in the page file ([`NIL`]: not durable, e.g. ephemeral or no page file).
    pub(crate) rec: u32,
}

#[derive(Debug)]
pub(crate) struct Account {
    pub(crate) head: u32,
    pub(crate) eph: u64,
    /// Page memory its ephemeral pages take (see [`cost_of`]): weights share this.
    pub(crate) eph_bytes: u64,
    pub(crate) weight: u32,
    /// Its owner is gone; freed once its last ephemeral page is (pages being reaped still
    /// sit on its list).
    pub(crate) closed: bool,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot {
    pub(crate) gid: u32,
    pub(crate) adopted: bool,
    /// Durable stores: the record of this client's membership of an ephemeral or shared
    /// pool, so that a frontend that stays connected across a restart keeps its pool ids
    /// ([`NIL`]: none; a persistent pool's record is its pool's).
    pub(crate) rec: u32,
}

#[derive(Debug, Default)]
pub(crate) struct ClientCounters {
    pub(crate) eph_max: u64,
    pub(crate) succ_eph_gets: u64,
    pub(crate) pers_puts: u64,
    pub(crate) pers_gets: u64,
    pub(crate) succ_gets: u64,
    pub(crate) failed_gets: u64,
    pub(crate) puts: u64,
    pub(crate) invalidates: u64,
    /// Operations of this client answered with an error (its share of `Te`).
    pub(crate) errors: u64,
    /// Ephemeral pages of its private pools evicted (its share of `Et`).
    pub(crate) evictions: u64,
}

#[derive(Debug)]
pub(crate) struct Client {
    pub(crate) identity: Identity,
    pub(crate) instance: u64,
    pub(crate) name: String,
    pub(crate) attached: bool,
    /// Bumped at every detach, so an expiry decided for one detach never hits a later one.
    pub(crate) detach_epoch: u64,
    pub(crate) frozen: bool,
    pub(crate) weight: u32,
    /// Limit on `bytes` (0 = none).
    pub(crate) cap_bytes: u64,
    pub(crate) compress: bool,
    /// Compression of its pages, per pool kind.
    pub(crate) zc: crate::ClientCompression,
    pub(crate) pools: Vec<Option<Slot>>,
    pub(crate) account: u32,
    pub(crate) pages: u64,
    /// Page memory its private pools' pages take, pages being reclaimed included.
    pub(crate) bytes: u64,
    /// Pages in its private persistent pools (same-filled pages included), and their memory.
    pub(crate) pers_pages: u64,
    pub(crate) pers_bytes: u64,
    /// Limit on `pers_bytes` (0 = none): the default share until an administrator sets a cap.
    pub(crate) pers_cap_bytes: u64,
    pub(crate) c: ClientCounters,
}

impl Client {
    /// Whether one more page in a private pool might take this client over a limit. A put
    /// does not know yet what its page will cost, so it needs room for a raw one: memory
    /// never exceeds the cap, and a cap of N pages holds N raw pages as before.
    pub(crate) fn at_limit(&self, persistent: bool) -> bool {
        let over = |used: u64, cap: u64| cap != 0 && used + crate::PAGE_SIZE as u64 > cap;
        over(self.bytes, self.cap_bytes)
            || (persistent && over(self.pers_bytes, self.pers_cap_bytes))
    }
}

#[derive(Debug, Default)]
pub(crate) struct Global {
    pub(crate) evictions: u64,
    pub(crate) evict_attempts: u64,
    pub(crate) eph: u64,
    pub(crate) eph_max: u64,
    pub(crate) eph_data: u64,
    /// Page memory those pages take: what evicting every ephemeral page would release.
    pub(crate) eph_bytes: u64,
    pub(crate) objects: u64,
    pub(crate) objects_max: u64,
    pub(crate) pages: u64,
    pub(crate) pages_max: u64,
    /// Pages kept without a frame (same-filled, zero ones included) and the all-zero ones.
    pub(crate) same_pages: u64,
    pub(crate) zero_pages: u64,
    pub(crate) good_eph_puts: u64,
    /// Compressed pages, and their compressed bytes.
    pub(crate) z_pages: u64,
    pub(crate) z_bytes: u64,
    /// Compaction passes run, and objects they moved.
    pub(crate) z_compactions: u64,
    pub(crate) z_moved: u64,
}

#[derive(Debug)]
pub(crate) struct Meta {
    pub(crate) cfg: StoreConfig,
    pub(crate) next_client: u32,
    pub(crate) clients: HashMap<ClientId, Client, IdState>,
    pub(crate) by_identity: HashMap<Identity, ClientId>,
    pub(crate) auth: HashMap<Identity, Vec<[u64; 2]>>,
    pub(crate) auth_required: bool,
    pub(crate) pools: Vec<Option<Pool>>,
    pub(crate) pool_free: Vec<u32>,
    pub(crate) next_gen: u64,
    pub(crate) shared: HashMap<[u64; 2], u32>,
    /// Keys of the object-id hash (guest-chosen keys), drawn once per store.
    pub(crate) obj_hash: KeyedState,
    pub(crate) objs: Vec<Option<Obj>>,
    pub(crate) obj_free: Vec<u32>,
    /// Heap bytes of all objects' page maps, kept as they change so stats need no walk.
    pub(crate) obj_heap_bytes: u64,
    /// Destroyed pools and flushed objects whose pages are still to be freed.
    pub(crate) reap: VecDeque<Reap>,
    /// Pages per reap chunk ([`REAP_CHUNK`](crate::reap::REAP_CHUNK); tests make it small).
    pub(crate) reap_chunk: usize,
    /// Tests only: destroys and flushes leave all their pages to
    /// [`Store::reap_step`](crate::Store::reap_step).
    pub(crate) reap_manual: bool,
    /// Reclaim chunks run so far (each one lock acquisition; tests check the bound).
    pub(crate) reap_chunks_run: u64,
    pub(crate) accounts: Vec<Option<Account>>,
    pub(crate) acct_free: Vec<u32>,
    pub(crate) dl: Links,
    pub(crate) xl: Links,
    /// The word each frameless (same-filled) page repeats, by extra-node index; 0 for LRU
    /// heads and free extra nodes.
    pub(crate) xfill: Vec<u64>,
    pub(crate) x_free: Vec<u32>,
    /// Compressed pages: the allocator of their bytes inside frames, each compressed extra
    /// node's handle and codec (by extra-node index; [`NIL`]: not compressed), and frames
    /// runs gave back (see `zpage.rs`).
    pub(crate) z: tmem_zalloc::ZAlloc,
    pub(crate) xz: Vec<u32>,
    /// The node of each allocator handle ([`NIL`]: free), for compaction's record updates.
    pub(crate) zowner: Vec<u32>,
    pub(crate) zfreed: Vec<u32>,
    /// A compressed page was freed since compaction last finished: runs may have holes.
    pub(crate) z_holes: bool,
    /// Most same-filled pages kept without a frame, store-wide: they cost only metadata, but
    /// a guest drives how many there are.
    pub(crate) max_same: u64,
    pub(crate) stamp: u32,
    pub(crate) g: Global,
    /// Durable bookkeeping, for a store on a page file.
    pub(crate) dur: Option<crate::durable::Dur>,
}

/// Where a lookup landed.
pub(crate) struct Found {
    pub(crate) obj: u32,
    pub(crate) node: u32,
}

impl Meta {
    // ---- node field access -------------------------------------------------------------
    pub(crate) fn l(&self, id: u32) -> (&Links, usize) {
        if id & EXTRA != 0 {
            (&self.xl, (id & !EXTRA) as usize)
        } else {
            (&self.dl, id as usize)
        }
    }
    pub(crate) fn lm(&mut self, id: u32) -> (&mut Links, usize) {
        if id & EXTRA != 0 {
            (&mut self.xl, (id & !EXTRA) as usize)
        } else {
            (&mut self.dl, id as usize)
        }
    }
    pub(crate) fn prev(&self, id: u32) -> u32 {
        let (l, i) = self.l(id);
        l.n[i].prev
    }
    pub(crate) fn next(&self, id: u32) -> u32 {
        let (l, i) = self.l(id);
        l.n[i].next
    }
    pub(crate) fn set_prev(&mut self, id: u32, v: u32) {
        let (l, i) = self.lm(id);
        l.n[i].prev = v;
    }
    pub(crate) fn set_next(&mut self, id: u32, v: u32) {
        let (l, i) = self.lm(id);
        l.n[i].next = v;
    }

    pub(crate) fn alloc_extra(&mut self) -> u32 {
        if let Some(x) = self.x_free.pop() {
            return x;
        }
        let x = self.xl.len() as u32 | EXTRA;
        self.xl.push();
        self.xfill.push(0);
        x
    }
    /// An extra node for a same-filled page of `word` (not linked yet).
    pub(crate) fn alloc_same(&mut self, word: u64) -> u32 {
        let x = self.alloc_extra();
        self.xfill[(x & !EXTRA) as usize] = word;
        x
    }
    /// The word extra node `x` repeats.
    pub(crate) fn fill_of(&self, x: u32) -> u64 {
        self.xfill.get((x & !EXTRA) as usize).copied().unwrap_or(0)
    }
    /// Change the word of linked same-filled page `x` in place (heap pools only: a durable
    /// page's record names its word, so it is replaced by a new node instead).
    pub(crate) fn set_fill(&mut self, x: u32, word: u64) {
        let Some(f) = self.xfill.get_mut((x & !EXTRA) as usize) else {
            return;
        };
        let old = std::mem::replace(f, word);
        match (old == 0, word == 0) {
            (true, false) => self.g.zero_pages -= 1,
            (false, true) => self.g.zero_pages += 1,
            _ => {}
        }
    }
    pub(crate) fn free_extra(&mut self, x: u32) {
        let (l, i) = self.lm(x);
        l.n[i].prev = NIL;
        l.n[i].next = NIL;
        l.n[i].obj = NIL;
        if let Some(f) = self.xfill.get_mut(i) {
            *f = 0;
        }
        self.x_free.push(x);
    }

    pub(crate) fn ensure_data_links(&mut self, f: u32) {
        while self.dl.len() <= f as usize {
            self.dl.push();
        }
    }

    // ---- lookup ------------------------------------------------------------------------
    pub(crate) fn client(&self, c: ClientId) -> Result<&Client, TmemError> {
        self.clients.get(&c).ok_or(TmemError::NoDevice)
    }
    pub(crate) fn client_mut(&mut self, c: ClientId) -> Result<&mut Client, TmemError> {
        self.clients.get_mut(&c).ok_or(TmemError::NoDevice)
    }
    /// The global pool id a guest's pool id names.
    pub(crate) fn resolve(&self, c: ClientId, pool: u32) -> Result<u32, TmemError> {
        let cl = self.client(c)?;
        if !cl.attached {
            return Err(TmemError::NoDevice);
        }
        match cl.pools.get(pool as usize) {
            Some(Some(s)) if s.adopted => Ok(s.gid),
            _ => Err(TmemError::NoSuchPool),
        }
    }
    pub(crate) fn pool(&self, gid: u32) -> &Pool {
        match self.pools.get(gid as usize) {
            Some(Some(p)) => p,
            _ => unreachable_pool(),
        }
    }
    pub(crate) fn pool_mut(&mut self, gid: u32) -> &mut Pool {
        match self.pools.get_mut(gid as usize) {
            Some(Some(p)) => p,
            _ => unreachable_pool(),
        }
    }
    pub(crate) fn lookup(&self, gid: u32, key: &PageKey) -> Option<Found> {
        let obj = *self.pool(gid).objs.get(&key.oid)?;
        let node = self.objs[obj as usize].as_ref()?.pages.get(key.index)?;
        Some(Found { obj, node })
    }
}

#[cold]
fn unreachable_pool() -> ! {
    // Every global pool id held in a client slot, object or account names a live pool; this
    // is an internal invariant, not reachable from guest input.
    panic!("tmem-store: internal invariant broken: dangling pool id")
}

/// The page memory node `x` takes, given its [`Meta::z_cost`] `zc`: a frame for a raw page,
/// its share of its run for a compressed one (run bytes / slots of its size class), nothing
/// for a same-filled page. Caps, weights, `freeable` and flushes all count this.
pub(crate) fn cost_of(x: u32, zc: Option<(u64, u64)>) -> u64 {
    match zc {
        Some((_, cost)) => cost,
        None if x & EXTRA == 0 => crate::PAGE_SIZE as u64,
        None => 0,
    }
}
