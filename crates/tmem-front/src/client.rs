//! The lazy-init pool map and the generic page API.
//!
//! One [`Client`] owns one transport. All state — the connection, the pool map, the counters —
//! sits behind one mutex, so a remap (which runs `NEW_POOL` and the invalidation replay on
//! the new connection while holding it) can never interleave with an operation: an op sees a
//! handle either unmapped (fake behaviour) or mapped *and* replayed. A background thread
//! reconnects with exponential backoff and remaps; it also probes an idle connection so a
//! dead backend is noticed even when the guest makes no calls.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use tmem_abi::{cmd, rsp_flags, status, Oid, Page, PageKey, PoolKind, RequestEntry, TmemError};

use crate::pool::{format_uuid, random_uuid, uuid_words, Held, Pool, PoolHandle};
use crate::transport::{Call, Connection, Payload, Transport};
use crate::FrontError;

/// Tuning of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// First reconnect delay after a failed attempt.
    pub backoff_initial: Duration,
    /// Upper bound of the doubling reconnect delay.
    pub backoff_max: Duration,
    /// How often an idle connection is probed for liveness.
    pub liveness_interval: Duration,
    /// Most invalidations recorded for one *shared* pool while disconnected; beyond that the
    /// pool is never trusted again (it stays unmapped). Persistent pools need no bound: they
    /// only record keys they know the backend may hold.
    pub shared_replay_limit: usize,
    /// Fake ids are handed out from here upwards.
    pub first_fake_id: u32,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
            liveness_interval: Duration::from_millis(100),
            shared_replay_limit: 65_536,
            first_fake_id: 1000,
        }
    }
}

/// One page operation of a batch.
#[derive(Debug)]
pub enum PageOp<'a> {
    Put(PageKey, &'a Page),
    Get(PageKey, &'a mut Page),
    FlushPage(PageKey),
    FlushObject(Oid),
}

/// The result of one page operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Put accepted by the backend.
    Stored,
    /// Get hit; the page was copied out.
    Hit,
    /// Get miss (for a persistent pool: the page was never stored, or was invalidated).
    Miss,
    /// Flush done (or nothing to flush).
    Flushed,
    /// Put not stored because no backend is reachable (fake handle); the caller keeps the page.
    Dropped,
    /// Persistent get of a page stored before the backend lost the pool: the data is gone.
    Lost,
    /// Persistent get of a page that should be on the backend, which is unreachable right now.
    Unavailable,
    /// The backend refused the operation.
    Failed(TmemError),
}

/// Cleancache-style counters (ephemeral pools), as the seed kept them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CleancacheCounters {
    pub succ_gets: u64,
    pub failed_gets: u64,
    pub puts: u64,
    pub invalidates: u64,
}

/// Frontswap-style counters (persistent pools).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FrontswapCounters {
    pub succ_stores: u64,
    pub failed_stores: u64,
    pub loads: u64,
    pub succ_loads: u64,
    /// Loads answered `Lost` (stored before a reported loss).
    pub lost_loads: u64,
    pub invalidates: u64,
}

/// Connection and pool-map counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MapCounters {
    pub connects: u64,
    pub disconnects: u64,
    pub failed_connects: u64,
    /// Pools created or reattached on a backend (NEW_POOL successes during remaps).
    pub pools_mapped: u64,
    /// Persistent pools the backend reattached with their pages.
    pub reattached: u64,
    /// Persistent pools whose pages the backend lost (not reattached).
    pub losses: u64,
    /// Pages lost in those losses.
    pub lost_pages: u64,
    /// Invalidations replayed on reattached pools.
    pub replayed: u64,
    /// Puts dropped because the handle was unmapped.
    pub dropped_puts: u64,
    /// Gets answered locally (unmapped handle, or persistent page known absent).
    pub local_gets: u64,
    /// Persistent gets that missed although the page was stored (counted as lost).
    pub unexpected_misses: u64,
    /// Error statuses returned by the backend.
    pub backend_errors: u64,
    /// NEW_POOL refusals (e.g. not authorised for a shared uuid).
    pub refused_pools: u64,
}

/// A snapshot of all counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub cleancache: CleancacheCounters,
    pub frontswap: FrontswapCounters,
    pub map: MapCounters,
}

/// One row of the pool map, for display.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolInfo {
    pub fake_id: u32,
    /// `"private-ephemeral"`, `"shared-ephemeral"` or `"private-persistent"`.
    pub kind: &'static str,
    pub uuid: String,
    /// The real pool id on the current connection, if mapped.
    pub real_id: Option<i32>,
    pub ever_mapped: bool,
    /// Loss flag (persistent pools), set on a loss until acknowledged.
    pub lost: bool,
    pub losses: u64,
    pub lost_pages: u64,
    /// Persistent pools: pages stored in the current epoch.
    pub held_pages: usize,
    /// Invalidations waiting to be replayed.
    pub pending_replay: usize,
    /// The backend's last refusal of this pool, if any.
    pub error: Option<String>,
    pub poisoned: bool,
}

/// Something the caller should know about, drained with [`Client::take_events`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum PoolEvent {
    /// The backend no longer had this persistent pool's pages.
    Lost { fake_id: u32, pages: u64 },
    /// The backend refused to create this pool.
    Refused { fake_id: u32, error: String },
}

/// A whole-client status snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub connected: bool,
    pub transport: String,
    pub client_id: Option<u64>,
    pub last_error: Option<String>,
    /// The backend refused this client for good: it no longer tries to connect
    /// (`last_error` says why).
    pub refused: bool,
    pub counters: Counters,
    pub pools: Vec<PoolInfo>,
}

pub(crate) fn kind_name(k: PoolKind) -> &'static str {
    match k {
        PoolKind::PrivateEphemeral => "private-ephemeral",
        PoolKind::SharedEphemeral => "shared-ephemeral",
        PoolKind::PrivatePersistent => "private-persistent",
    }
}

struct State {
    conn: Option<Box<dyn Connection>>,
    client_id: Option<u64>,
    pools: BTreeMap<u32, Pool>,
    next_fake: u32,
    /// Persistent pools destroyed while unreachable: `(uuid, kind)` to destroy on reconnect.
    pending_destroys: Vec<([u8; 16], PoolKind)>,
    counters: Counters,
    events: Vec<PoolEvent>,
    last_error: Option<String>,
    /// A permanent refusal ended the reconnect loop.
    refused: bool,
    stop: bool,
    cfg: ClientConfig,
}

struct Shared {
    state: Mutex<State>,
    /// The reconnect thread's doorbell (disconnect, stop): rung, and the condvar it sleeps on.
    /// Apart from `state` so that its periodic wake-up never queues on the state lock, which a
    /// caller holds for each whole batch: waiting there, it was woken and sent back to sleep
    /// at hundreds of the callers' unlocks a second, each one a futex syscall for the caller.
    bell: Mutex<bool>,
    wake: Condvar,
    /// Signalled whenever the connection or the map changes.
    changed: Condvar,
    transport_name: String,
}

/// The guest-side tmem client: the lazy-init pool map over one transport.
///
/// Cheap to share between threads (`&Client` is all an operation needs).
pub struct Client {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("transport", &self.shared.transport_name)
            .finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock leaves the map consistent enough to keep serving: every
    // mutation keeps the invariants before it can panic. Never propagate the poison.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Client {
    /// Start a client: returns at once (all handles fake) and connects in the background.
    pub fn new(transport: Box<dyn Transport>, cfg: ClientConfig) -> Client {
        let shared = Arc::new(Shared {
            transport_name: transport.describe(),
            state: Mutex::new(State {
                conn: None,
                client_id: None,
                pools: BTreeMap::new(),
                next_fake: cfg.first_fake_id,
                pending_destroys: Vec::new(),
                counters: Counters::default(),
                events: Vec::new(),
                last_error: None,
                refused: false,
                stop: false,
                cfg,
            }),
            bell: Mutex::new(false),
            wake: Condvar::new(),
            changed: Condvar::new(),
        });
        let s2 = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("tmem-reconnect".into())
            .spawn(move || reconnect_loop(&s2, transport))
            .expect("spawning the tmem reconnect thread");
        Client {
            shared,
            thread: Some(thread),
        }
    }

    /// Whether a backend is connected now.
    pub fn is_connected(&self) -> bool {
        lock(&self.shared.state).conn.is_some()
    }

    /// Whether the backend refused this client for good, so it stopped trying to connect.
    pub fn is_refused(&self) -> bool {
        lock(&self.shared.state).refused
    }

    /// Wait until a backend is connected and every pool that can be mapped is mapped
    /// (false at once if the backend refused this client for good).
    pub fn wait_mapped(&self, timeout: Duration) -> bool {
        self.wait_until(timeout, |st| {
            st.conn.is_some()
                && st
                    .pools
                    .values()
                    .all(|p| p.real.is_some() || p.refused.is_some() || p.poisoned)
        })
    }

    /// Wait until no backend is connected.
    pub fn wait_disconnected(&self, timeout: Duration) -> bool {
        self.wait_until(timeout, |st| st.conn.is_none())
    }

    /// Wait until `done` holds for the state (re-checked whenever the map changes).
    fn wait_until(&self, timeout: Duration, done: impl Fn(&State) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = lock(&self.shared.state);
        loop {
            if done(&g) {
                return true;
            }
            if g.refused {
                return false; // refused for good: it will never hold
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = self
                .shared
                .changed
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Create a pool. Without a backend this returns a fake handle at once; with one, the pool
    /// is created now and a refusal (e.g. not authorised for a shared uuid) is returned as an
    /// error. `uuid` is required for shared pools; private pools get a random one if `None`.
    pub fn create_pool(
        &self,
        kind: PoolKind,
        uuid: Option<[u8; 16]>,
    ) -> Result<PoolHandle, FrontError> {
        let uuid = match uuid {
            Some(u) => u,
            None => random_uuid(),
        };
        let mut g = lock(&self.shared.state);
        let st = &mut *g;
        let fake = st.next_fake;
        let mut pool = Pool::new(kind, uuid);
        if st.conn.is_some() {
            let mut calls = [Call::new(
                RequestEntry::new_pool(0, uuid_words(&uuid), kind.flags()),
                Payload::None,
            )];
            // On a disconnect the handle stays fake and is mapped on reconnect.
            if self.exec(st, &mut calls).is_ok() {
                {
                    let r = calls[0].reply.expect("answered");
                    if r.status < 0 {
                        st.counters.map.refused_pools += 1;
                        return Err(FrontError::from_status(r.status));
                    }
                    let mut real = r.status;
                    if r.flags & rsp_flags::REATTACHED != 0 && !kind.is_shared() {
                        // A brand-new private handle must start empty.
                        match self.recreate(st, uuid, kind, real) {
                            Ok(Some(id)) => real = id,
                            Ok(None) => {} // disconnected: leave it unmapped
                            Err(e) => return Err(e),
                        }
                    }
                    if st.conn.is_some() {
                        pool.real = Some(real);
                        pool.ever_mapped = true;
                        st.counters.map.pools_mapped += 1;
                    }
                }
            }
        }
        st.next_fake = st.next_fake.checked_add(1).unwrap_or(st.cfg.first_fake_id);
        st.pools.insert(fake, pool);
        self.shared.changed.notify_all();
        Ok(PoolHandle(fake))
    }

    /// Destroy a pool. A pool that never reached a backend is forgotten locally only.
    pub fn destroy_pool(&self, h: PoolHandle) -> Result<(), FrontError> {
        let mut g = lock(&self.shared.state);
        let st = &mut *g;
        let pool = st.pools.remove(&h.0).ok_or(FrontError::NoSuchHandle(h.0))?;
        if let Some(real) = pool.real {
            let mut calls = [Call::new(
                RequestEntry::destroy_pool(0, real),
                Payload::None,
            )];
            if self.exec(st, &mut calls).is_err() && pool.kind.is_persistent() {
                st.pending_destroys.push((pool.uuid, pool.kind));
            }
        } else if pool.ever_mapped && pool.kind.is_persistent() {
            // The backend may keep it for reattachment: destroy it when we are back.
            st.pending_destroys.push((pool.uuid, pool.kind));
        }
        if pool.kind.is_persistent() {
            st.counters.frontswap.invalidates += 1;
        } else {
            st.counters.cleancache.invalidates += 1;
        }
        self.shared.changed.notify_all();
        Ok(())
    }

    /// Store a page.
    pub fn put(&self, h: PoolHandle, key: PageKey, page: &Page) -> Outcome {
        self.one(h, PageOp::Put(key, page))
    }

    /// Fetch a page into `page` (untouched unless the outcome is `Hit`).
    pub fn get(&self, h: PoolHandle, key: PageKey, page: &mut Page) -> Outcome {
        self.one(h, PageOp::Get(key, page))
    }

    /// Invalidate one page.
    pub fn flush_page(&self, h: PoolHandle, key: PageKey) -> Outcome {
        self.one(h, PageOp::FlushPage(key))
    }

    /// Invalidate every page of an object.
    pub fn flush_object(&self, h: PoolHandle, oid: Oid) -> Outcome {
        self.one(h, PageOp::FlushObject(oid))
    }

    fn one(&self, h: PoolHandle, op: PageOp<'_>) -> Outcome {
        let mut ops = [op];
        let mut out = Vec::with_capacity(1);
        match self.batch(h, &mut ops, &mut out) {
            Ok(()) => out[0],
            Err(_) => Outcome::Failed(TmemError::NoSuchPool),
        }
    }

    /// Run a batch of page operations on one pool: pipelined on the ring (one publish and
    /// notification per refill), answered in order into `out` (cleared first).
    pub fn batch(
        &self,
        h: PoolHandle,
        ops: &mut [PageOp<'_>],
        out: &mut Vec<Outcome>,
    ) -> Result<(), FrontError> {
        out.clear();
        let mut g = lock(&self.shared.state);
        let st = &mut *g;
        let limit = st.cfg.shared_replay_limit;
        let pool = st
            .pools
            .get_mut(&h.0)
            .ok_or(FrontError::NoSuchHandle(h.0))?;
        let real = match (pool.real, st.conn.is_some()) {
            (Some(r), true) => Some(r),
            _ => None,
        };
        let kind = pool.kind;
        let Some(real) = real else {
            for op in ops.iter() {
                let o = unmapped_op(pool, op, limit);
                count(&mut st.counters, kind, op, o, false);
                out.push(o);
            }
            return Ok(());
        };
        let mut calls: Vec<Call<'_>> = ops
            .iter_mut()
            .map(|op| match op {
                PageOp::Put(k, p) => Call::new(
                    RequestEntry::page_op(0, cmd::PUT_PAGE, real, k.oid.0, k.index, 0),
                    Payload::Put(p),
                ),
                PageOp::Get(k, p) => Call::new(
                    RequestEntry::page_op(0, cmd::GET_PAGE, real, k.oid.0, k.index, 0),
                    Payload::Get(p),
                ),
                PageOp::FlushPage(k) => Call::new(
                    RequestEntry::page_op(0, cmd::FLUSH_PAGE, real, k.oid.0, k.index, 0),
                    Payload::None,
                ),
                PageOp::FlushObject(oid) => Call::new(
                    RequestEntry::page_op(0, cmd::FLUSH_OBJECT, real, oid.0, 0, 0),
                    Payload::None,
                ),
            })
            .collect();
        let res = st
            .conn
            .as_mut()
            .expect("checked above")
            .call_batch(&mut calls);
        let replies: Vec<_> = calls.iter().map(|c| c.reply).collect();
        drop(calls);
        let pool = st.pools.get_mut(&h.0).expect("still there under the lock");
        for (op, reply) in ops.iter().zip(replies) {
            let o = match reply {
                Some(r) => mapped_reply(pool, op, r.status, &mut st.counters),
                None => unknown_outcome(pool, op, limit),
            };
            count(&mut st.counters, kind, op, o, reply.is_some());
            out.push(o);
        }
        if let Err(e) = res {
            self.disconnect(st, &e);
        }
        Ok(())
    }

    /// Run calls on the current connection; on a disconnect, revert the map.
    fn exec(&self, st: &mut State, calls: &mut [Call<'_>]) -> Result<(), FrontError> {
        let Some(conn) = st.conn.as_mut() else {
            return Err(FrontError::Disconnected("not connected".into()));
        };
        match conn.call_batch(calls) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.disconnect(st, &e);
                Err(e)
            }
        }
    }

    /// Destroy a reattached pool and create it afresh (a new handle must start empty).
    /// `Ok(None)` if the connection died meanwhile.
    fn recreate(
        &self,
        st: &mut State,
        uuid: [u8; 16],
        kind: PoolKind,
        real: i32,
    ) -> Result<Option<i32>, FrontError> {
        let mut calls = [
            Call::new(RequestEntry::destroy_pool(0, real), Payload::None),
            Call::new(
                RequestEntry::new_pool(0, uuid_words(&uuid), kind.flags()),
                Payload::None,
            ),
        ];
        if self.exec(st, &mut calls).is_err() {
            return Ok(None);
        }
        let r = calls[1].reply.expect("answered");
        if r.status < 0 {
            return Err(FrontError::from_status(r.status));
        }
        Ok(Some(r.status))
    }

    fn disconnect(&self, st: &mut State, why: &FrontError) {
        disconnect_state(st, why);
        self.shared.ring();
        self.shared.changed.notify_all();
    }

    /// Counters snapshot.
    pub fn counters(&self) -> Counters {
        lock(&self.shared.state).counters
    }

    /// The pool map, for display.
    pub fn pools(&self) -> Vec<PoolInfo> {
        let g = lock(&self.shared.state);
        pool_infos(&g)
    }

    /// Everything at once (one consistent snapshot).
    pub fn status(&self) -> Status {
        let g = lock(&self.shared.state);
        Status {
            connected: g.conn.is_some(),
            transport: self.shared.transport_name.clone(),
            client_id: g.client_id,
            last_error: g.last_error.clone(),
            refused: g.refused,
            counters: g.counters,
            pools: pool_infos(&g),
        }
    }

    /// The loss state of one handle: `Some((losses, lost_pages))` if a loss is flagged.
    pub fn pool_lost(&self, h: PoolHandle) -> Option<(u64, u64)> {
        let g = lock(&self.shared.state);
        g.pools
            .get(&h.0)
            .filter(|p| p.lost)
            .map(|p| (p.losses, p.lost_pages))
    }

    /// Clear a handle's loss flag (its counters stay).
    pub fn acknowledge_loss(&self, h: PoolHandle) {
        if let Some(p) = lock(&self.shared.state).pools.get_mut(&h.0) {
            p.lost = false;
        }
    }

    /// Drain pending events (losses, refusals).
    pub fn take_events(&self) -> Vec<PoolEvent> {
        std::mem::take(&mut lock(&self.shared.state).events)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        {
            let mut g = lock(&self.shared.state);
            g.stop = true;
            if let Some(mut c) = g.conn.take() {
                c.goodbye();
            }
        }
        self.shared.ring();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn pool_infos(st: &State) -> Vec<PoolInfo> {
    let connected = st.conn.is_some();
    st.pools
        .iter()
        .map(|(&fake, p)| PoolInfo {
            fake_id: fake,
            kind: kind_name(p.kind),
            uuid: format_uuid(&p.uuid),
            real_id: if connected { p.real } else { None },
            ever_mapped: p.ever_mapped,
            lost: p.lost,
            losses: p.losses,
            lost_pages: p.lost_pages,
            held_pages: if p.kind.is_persistent() {
                p.current_pages()
            } else {
                0
            },
            pending_replay: p.replay.len(),
            error: p.refused.map(|e| e.to_string()),
            poisoned: p.poisoned,
        })
        .collect()
}

fn disconnect_state(st: &mut State, why: &FrontError) {
    if st.conn.take().is_some() {
        st.counters.map.disconnects += 1;
    }
    st.client_id = None;
    st.last_error = Some(why.to_string());
    for p in st.pools.values_mut() {
        p.real = None;
    }
}

/// A get answered without the backend: a persistent page the backend should hold is
/// unavailable (or lost), anything else a miss.
fn local_get(pool: &Pool, k: &PageKey) -> Outcome {
    if !pool.kind.is_persistent() {
        return Outcome::Miss;
    }
    match pool.held(k) {
        Held::No => Outcome::Miss,
        Held::Current => Outcome::Unavailable,
        Held::Lost => Outcome::Lost,
    }
}

/// Record an invalidation of a shared pool made while its outcome on the backend is unknown.
fn record_shared<R>(pool: &mut Pool, rec: impl FnOnce(&mut Pool) -> R, limit: usize) {
    if !pool.ever_mapped || pool.poisoned {
        return;
    }
    if pool.replay.len() >= limit {
        pool.poisoned = true;
        pool.replay.clear();
        return;
    }
    rec(pool);
}

/// A page op on an unmapped handle: answered locally.
fn unmapped_op(pool: &mut Pool, op: &PageOp<'_>, limit: usize) -> Outcome {
    let persistent = pool.kind.is_persistent();
    let shared = pool.kind.is_shared();
    match op {
        PageOp::Put(k, _) => {
            if persistent && pool.unhold(k) == Held::Current {
                // The backend may still hold an older copy: invalidate it before trusting.
                pool.replay.pages.insert(*k);
            }
            Outcome::Dropped
        }
        PageOp::Get(k, _) => local_get(pool, k),
        PageOp::FlushPage(k) => {
            if persistent {
                if pool.unhold(k) == Held::Current {
                    pool.replay.pages.insert(*k);
                }
            } else if shared {
                record_shared(pool, |p| p.replay.pages.insert(*k), limit);
            }
            Outcome::Flushed
        }
        PageOp::FlushObject(oid) => {
            if persistent {
                if pool.unhold_object(oid) {
                    pool.replay.objects.insert(*oid);
                }
            } else if shared {
                record_shared(pool, |p| p.replay.objects.insert(*oid), limit);
            }
            Outcome::Flushed
        }
    }
}

/// A page op sent to the backend whose answer never came: it may or may not have run.
fn unknown_outcome(pool: &mut Pool, op: &PageOp<'_>, limit: usize) -> Outcome {
    let persistent = pool.kind.is_persistent();
    let shared = pool.kind.is_shared();
    match op {
        PageOp::Put(k, _) | PageOp::FlushPage(k) => {
            if persistent {
                pool.unhold(k);
                pool.replay.pages.insert(*k);
            } else if shared {
                record_shared(pool, |p| p.replay.pages.insert(*k), limit);
            }
            if matches!(op, PageOp::Put(..)) {
                Outcome::Dropped
            } else {
                Outcome::Flushed
            }
        }
        PageOp::FlushObject(oid) => {
            if persistent {
                pool.unhold_object(oid);
                pool.replay.objects.insert(*oid);
            } else if shared {
                record_shared(pool, |p| p.replay.objects.insert(*oid), limit);
            }
            Outcome::Flushed
        }
        PageOp::Get(k, _) => local_get(pool, k),
    }
}

const EEMPTY: i32 = -tmem_abi::status::errno::EEMPTY;

/// A page op answered by the backend.
fn mapped_reply(pool: &mut Pool, op: &PageOp<'_>, st: i32, c: &mut Counters) -> Outcome {
    let persistent = pool.kind.is_persistent();
    // -EEMPTY is Xen's way of saying "miss" on an empty pool, not an error.
    if st < 0 && st != EEMPTY {
        c.map.backend_errors += 1;
    }
    let err = || TmemError::from_status(st).unwrap_or(TmemError::Invalid);
    match op {
        PageOp::Put(k, _) => {
            if st == status::SUCCESS {
                if persistent {
                    pool.hold(*k);
                }
                Outcome::Stored
            } else {
                // A failed duplicate put removed the old copy (DESIGN §4): forget it.
                if persistent {
                    pool.unhold(k);
                }
                Outcome::Failed(err())
            }
        }
        PageOp::Get(k, _) => match st {
            status::SUCCESS => {
                if persistent && pool.held(k) != Held::Current {
                    // Never trust a page we do not believe is there (e.g. left from an
                    // earlier life of a reattached pool): treat as a miss.
                    return if pool.held(k) == Held::Lost {
                        Outcome::Lost
                    } else {
                        Outcome::Miss
                    };
                }
                Outcome::Hit
            }
            status::MISS | EEMPTY => {
                if persistent {
                    match pool.held(k) {
                        Held::No => Outcome::Miss,
                        Held::Lost => Outcome::Lost,
                        Held::Current => {
                            // Persistent pages are never evicted: this is a loss. Report it.
                            c.map.unexpected_misses += 1;
                            pool.unhold(k);
                            pool.lost = true;
                            pool.lost_pages += 1;
                            c.map.lost_pages += 1;
                            Outcome::Lost
                        }
                    }
                } else {
                    Outcome::Miss
                }
            }
            _ => Outcome::Failed(err()),
        },
        PageOp::FlushPage(k) => {
            if persistent {
                pool.unhold(k);
            }
            if st < 0 {
                Outcome::Failed(err())
            } else {
                Outcome::Flushed
            }
        }
        PageOp::FlushObject(oid) => {
            if persistent {
                pool.unhold_object(oid);
            }
            if st < 0 {
                Outcome::Failed(err())
            } else {
                Outcome::Flushed
            }
        }
    }
}

fn count(c: &mut Counters, kind: PoolKind, op: &PageOp<'_>, o: Outcome, sent: bool) {
    if matches!(op, PageOp::Get(..)) && !sent {
        c.map.local_gets += 1;
    }
    if kind.is_persistent() {
        let f = &mut c.frontswap;
        match op {
            PageOp::Put(..) => {
                if o == Outcome::Stored {
                    f.succ_stores += 1
                } else {
                    f.failed_stores += 1
                }
            }
            PageOp::Get(..) => {
                f.loads += 1;
                match o {
                    Outcome::Hit => f.succ_loads += 1,
                    Outcome::Lost => f.lost_loads += 1,
                    _ => {}
                }
            }
            PageOp::FlushPage(_) | PageOp::FlushObject(_) => f.invalidates += 1,
        }
    } else {
        let cc = &mut c.cleancache;
        match op {
            PageOp::Put(..) => {
                if sent {
                    cc.puts += 1
                }
            }
            PageOp::Get(..) => {
                if o == Outcome::Hit {
                    cc.succ_gets += 1
                } else {
                    cc.failed_gets += 1
                }
            }
            PageOp::FlushPage(_) | PageOp::FlushObject(_) => cc.invalidates += 1,
        }
    }
    if o == Outcome::Dropped && matches!(op, PageOp::Put(..)) {
        c.map.dropped_puts += 1;
    }
}

impl Shared {
    /// Wake the reconnect thread: the connection went away, or the client stops.
    fn ring(&self) {
        *self.bell.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.wake.notify_all();
    }

    /// Sleep until the doorbell rings or `timeout` passes; true if it rang (and unring it).
    fn sleep(&self, timeout: Duration) -> bool {
        let mut rung = self.bell.lock().unwrap_or_else(|p| p.into_inner());
        if !*rung {
            rung = self
                .wake
                .wait_timeout(rung, timeout)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        std::mem::replace(&mut *rung, false)
    }
}

fn reconnect_loop(shared: &Shared, mut transport: Box<dyn Transport>) {
    let (mut backoff, interval) = {
        let g = lock(&shared.state);
        (g.cfg.backoff_initial, g.cfg.liveness_interval)
    };
    loop {
        let connected = {
            let g = lock(&shared.state);
            if g.stop {
                return;
            }
            g.conn.is_some()
        };
        // Connected: check the peer every `interval`, without queueing on the state lock.
        if connected {
            loop {
                let rung = shared.sleep(interval);
                let mut g = if rung {
                    lock(&shared.state)
                } else {
                    match shared.state.try_lock() {
                        Ok(g) => g,
                        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                        // A caller holds it for a batch: it uses the connection and notices a dead
                        // peer itself. Check again next time.
                        Err(std::sync::TryLockError::WouldBlock) => continue,
                    }
                };
                if g.stop {
                    return;
                }
                if g.conn.is_none() {
                    break;
                }
                let dead = g.conn.as_mut().is_some_and(|c| !c.is_alive());
                if dead {
                    disconnect_state(&mut g, &FrontError::Disconnected("peer hung up".into()));
                    shared.changed.notify_all();
                    break;
                }
            }
        }
        // Not connected: try, without holding the lock (ops keep running on fake handles).
        let attempt = transport.connect();
        let mut g = lock(&shared.state);
        if g.stop {
            return;
        }
        match attempt {
            Ok(conn) => {
                g.client_id = Some(conn.client_id());
                g.conn = Some(conn);
                g.counters.map.connects += 1;
                match remap(&mut g) {
                    Ok(()) => {
                        g.last_error = None;
                        backoff = g.cfg.backoff_initial;
                    }
                    Err(e) => disconnect_state(&mut g, &e),
                }
                shared.changed.notify_all();
                if g.conn.is_some() {
                    continue;
                }
            }
            Err(e) => {
                g.counters.map.failed_connects += 1;
                g.last_error = Some(e.to_string());
                if e.is_permanent_refusal() {
                    // Retrying the same hello cannot succeed: stop, keep serving fake handles
                    // (every op misses), and let the status say why.
                    g.refused = true;
                    shared.changed.notify_all();
                    drop(g);
                    while !lock(&shared.state).stop {
                        shared.sleep(Duration::from_secs(3600));
                    }
                    return;
                }
            }
        }
        let wait = backoff;
        backoff = (backoff * 2).min(g.cfg.backoff_max);
        drop(g);
        let deadline = Instant::now() + wait;
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if shared.sleep(deadline - now) && lock(&shared.state).stop {
                return;
            }
        }
    }
}

fn run(st: &mut State, calls: &mut [Call<'_>]) -> Result<(), FrontError> {
    match st.conn.as_mut() {
        Some(c) => c.call_batch(calls),
        None => Err(FrontError::Disconnected("not connected".into())),
    }
}

/// Map every recorded pool on a fresh connection: destroy what was destroyed while away,
/// create (or reattach) each pool, replay recorded invalidations, report losses. A pool is
/// marked mapped only after all of that succeeded; any disconnect leaves it unmapped with its
/// records intact.
fn remap(st: &mut State) -> Result<(), FrontError> {
    // 1. Persistent pools destroyed while we were away.
    if !st.pending_destroys.is_empty() {
        let pd = st.pending_destroys.clone();
        let mut calls: Vec<Call<'_>> = pd
            .iter()
            .map(|(u, k)| {
                Call::new(
                    RequestEntry::new_pool(0, uuid_words(u), k.flags()),
                    Payload::None,
                )
            })
            .collect();
        run(st, &mut calls)?;
        let ids: Vec<i32> = calls
            .iter()
            .filter_map(|c| c.reply.map(|r| r.status))
            .filter(|&s| s >= 0)
            .collect();
        let mut calls: Vec<Call<'_>> = ids
            .iter()
            .map(|&id| Call::new(RequestEntry::destroy_pool(0, id), Payload::None))
            .collect();
        run(st, &mut calls)?;
        st.pending_destroys.clear();
    }

    // 2. NEW_POOL for every pool.
    let todo: Vec<u32> = st
        .pools
        .iter()
        .filter(|(_, p)| !p.poisoned)
        .map(|(&f, _)| f)
        .collect();
    let mut calls: Vec<Call<'_>> = todo
        .iter()
        .map(|f| {
            let p = &st.pools[f];
            Call::new(
                RequestEntry::new_pool(0, uuid_words(&p.uuid), p.kind.flags()),
                Payload::None,
            )
        })
        .collect();
    run(st, &mut calls)?;
    let replies: Vec<_> = calls.iter().map(|c| c.reply.expect("answered")).collect();
    drop(calls);

    // 3. Per pool: recreate, reattach+replay, or report the loss.
    let mut mapped: Vec<(u32, i32)> = Vec::new();
    for (&fake, r) in todo.iter().zip(replies) {
        if r.status < 0 {
            let e = TmemError::from_status(r.status).unwrap_or(TmemError::Invalid);
            let p = st.pools.get_mut(&fake).expect("present");
            if p.refused != Some(e) {
                st.events.push(PoolEvent::Refused {
                    fake_id: fake,
                    error: e.to_string(),
                });
            }
            p.refused = Some(e);
            st.counters.map.refused_pools += 1;
            continue;
        }
        let reattached = r.flags & rsp_flags::REATTACHED != 0;
        let (kind, uuid, ever, held) = {
            let p = &st.pools[&fake];
            (p.kind, p.uuid, p.ever_mapped, p.held_pages)
        };
        let mut real = r.status;
        let fresh_needed = reattached
            && (kind == PoolKind::PrivateEphemeral || (kind.is_persistent() && !ever && held == 0));
        if fresh_needed {
            let mut c2 = [
                Call::new(RequestEntry::destroy_pool(0, real), Payload::None),
                Call::new(
                    RequestEntry::new_pool(0, uuid_words(&uuid), kind.flags()),
                    Payload::None,
                ),
            ];
            run(st, &mut c2)?;
            let r2 = c2[1].reply.expect("answered");
            if r2.status < 0 {
                let p = st.pools.get_mut(&fake).expect("present");
                p.refused = TmemError::from_status(r2.status);
                continue;
            }
            real = r2.status;
        }
        let p = st.pools.get_mut(&fake).expect("present");
        p.refused = None;
        if kind.is_persistent() {
            if reattached && !fresh_needed {
                st.counters.map.reattached += 1;
                if !p.replay.is_empty() {
                    let (pages, objects): (Vec<PageKey>, Vec<Oid>) = (
                        p.replay.pages.iter().copied().collect(),
                        p.replay.objects.iter().copied().collect(),
                    );
                    replay(st, real, &pages, &objects)?;
                }
            } else {
                // Not reattached: whatever we had stored there is gone.
                let pages = p.current_pages() as u64;
                if pages > 0 {
                    p.epoch += 1;
                    p.losses += 1;
                    p.lost_pages += pages;
                    p.lost = true;
                    st.counters.map.losses += 1;
                    st.counters.map.lost_pages += pages;
                    st.events.push(PoolEvent::Lost {
                        fake_id: fake,
                        pages,
                    });
                }
            }
        } else if kind.is_shared() && !p.replay.is_empty() {
            let (pages, objects): (Vec<PageKey>, Vec<Oid>) = (
                p.replay.pages.iter().copied().collect(),
                p.replay.objects.iter().copied().collect(),
            );
            replay(st, real, &pages, &objects)?;
        }
        let p = st.pools.get_mut(&fake).expect("present");
        p.replay.clear();
        mapped.push((fake, real));
    }

    // 4. Only now are the handles trusted.
    for (fake, real) in mapped {
        let p = st.pools.get_mut(&fake).expect("present");
        p.real = Some(real);
        p.ever_mapped = true;
        st.counters.map.pools_mapped += 1;
    }
    Ok(())
}

fn replay(st: &mut State, real: i32, pages: &[PageKey], objects: &[Oid]) -> Result<(), FrontError> {
    let mut calls: Vec<Call<'_>> = objects
        .iter()
        .map(|o| {
            Call::new(
                RequestEntry::page_op(0, cmd::FLUSH_OBJECT, real, o.0, 0, 0),
                Payload::None,
            )
        })
        .chain(pages.iter().map(|k| {
            Call::new(
                RequestEntry::page_op(0, cmd::FLUSH_PAGE, real, k.oid.0, k.index, 0),
                Payload::None,
            )
        }))
        .collect();
    run(st, &mut calls)?;
    st.counters.map.replayed += calls.len() as u64;
    Ok(())
}
