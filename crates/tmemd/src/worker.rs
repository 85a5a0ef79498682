//! Worker threads: each owns a set of guest connections and serves their rings.
//!
//! A worker polls its rings while there is work and for a short window after (a wake-up
//! through an eventfd costs tens of microseconds on these machines, a polled round trip a
//! fraction of one), then arms the rings' event thresholds and sleeps in epoll. Each guest
//! gets at most [`BATCH`] requests per round, so no guest can starve the others on its
//! worker; a guest that breaks the ring protocol is disconnected, never the worker.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use tmem_abi::{rsp_flags, status, Request};
use tmem_local::{LocalGuest, MemfdRegion};
use tmem_ring::{BackendRing, Incoming};
use tmem_store::{ClientId, Store};
use tmem_xen::{BoundPort, Evtchn, GrantMapping};
use tracing::{debug, info, warn};

use crate::ratelimit::RateLimiter;

/// Requests taken from one guest's ring before the worker turns to the next guest.
pub const BATCH: usize = 64;
/// Responses are published (and the guest notified, if it sleeps) at least this often.
const PUBLISH_EVERY: usize = 16;
const WAKE: Token = Token(0);
/// The worker's event-channel file (all its Xen guests' ports).
const EVTCHN: Token = Token(1);
/// How often a busy worker still looks at its sockets (liveness, new guests).
const EVENT_CHECK: Duration = Duration::from_millis(1);

/// State shared by the accept path, the workers and the control socket.
#[derive(Debug)]
pub struct Shared {
    pub store: Store,
    /// Connected guests, by client, so the control socket can disconnect one.
    pub guests: Mutex<HashMap<ClientId, GuestHandle>>,
    /// Clients whose connection was lost, and when: destroyed once the grace period ends.
    pub detached: Mutex<HashMap<ClientId, Instant>>,
    pub connected: AtomicU32,
}

/// What the control side holds on a connected guest.
#[derive(Debug, Clone)]
pub struct GuestHandle {
    pub kill: Arc<AtomicBool>,
    pub worker: usize,
    pub domid: u32,
}

/// A guest connection as a worker serves it.
#[derive(Debug)]
pub struct GuestConn {
    pub client: ClientId,
    pub domid: u32,
    pub name: String,
    pub ring: BackendRing<GuestMem>,
    pub link: Link,
    pub kill: Arc<AtomicBool>,
    log: RateLimiter,
    batch: Vec<Incoming>,
}

/// The guest's shared area: a sealed memfd (local) or the guest's grants mapped (Xen).
#[derive(Debug)]
pub enum GuestMem {
    Memfd(MemfdRegion),
    Grant(GrantMapping),
}

// SAFETY: forwards to the variant, each of which upholds the SharedMem contract itself.
unsafe impl tmem_ring::SharedMem for GuestMem {
    fn base(&self) -> *mut u8 {
        match self {
            GuestMem::Memfd(m) => m.base(),
            GuestMem::Grant(m) => m.base(),
        }
    }
    fn len(&self) -> usize {
        match self {
            GuestMem::Memfd(m) => m.len(),
            GuestMem::Grant(m) => m.len(),
        }
    }
}

/// How a guest is notified and how its liveness is known.
#[derive(Debug)]
pub enum Link {
    /// Local transport: the kick eventfd, and the socket that carries notifications to the
    /// guest and whose EOF means the guest left. (The hello's notify eventfd is not kept: see
    /// `tmem_local::notify_peer`.)
    Local { kick: OwnedFd, stream: UnixStream },
    /// Xen: an event channel port bound on the worker's evtchn file (unbound on drop).
    /// Liveness is xenstore's business: the daemon's Xen module sets `kill`.
    Xen { port: BoundPort },
}

impl GuestConn {
    /// Wrap an accepted local guest. Fails if its ring memory is unusable.
    pub fn from_local(
        client: ClientId,
        guest: LocalGuest,
        kill: Arc<AtomicBool>,
    ) -> Result<GuestConn, tmem_ring::RingError> {
        let layout = guest.hello.layout;
        let ring = BackendRing::new(GuestMem::Memfd(guest.mem), layout)?;
        Ok(GuestConn {
            client,
            domid: guest.hello.domid,
            name: guest.hello.name.clone(),
            ring,
            link: Link::Local {
                kick: guest.kick,
                stream: guest.stream,
            },
            kill,
            log: RateLimiter::new(10, Duration::from_secs(1)),
            batch: Vec::with_capacity(BATCH),
        })
    }
}

impl GuestConn {
    /// Wrap a Xen guest whose grants are mapped and whose event channel is bound.
    pub fn from_xen(
        client: ClientId,
        domid: u32,
        name: String,
        mem: GrantMapping,
        layout: tmem_ring::Layout,
        port: BoundPort,
        kill: Arc<AtomicBool>,
    ) -> Result<GuestConn, tmem_ring::RingError> {
        let ring = BackendRing::new(GuestMem::Grant(mem), layout)?;
        Ok(GuestConn {
            client,
            domid,
            name,
            ring,
            link: Link::Xen { port },
            kill,
            log: RateLimiter::new(10, Duration::from_secs(1)),
            batch: Vec::with_capacity(BATCH),
        })
    }
}

/// Messages to a worker.
#[derive(Debug)]
pub enum WorkerMsg {
    Add(Box<GuestConn>),
    Shutdown,
}

/// The sending side of a worker, kept by the daemon.
#[derive(Debug)]
pub struct WorkerHandle {
    pub tx: Sender<WorkerMsg>,
    pub waker: Arc<Waker>,
    pub load: Arc<AtomicU32>,
}

impl WorkerHandle {
    pub fn send(&self, msg: WorkerMsg) {
        // A worker that has exited no longer needs messages.
        if self.tx.send(msg).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

/// Why a guest's connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Connection lost: keep persistent pools for a reattach.
    Detach,
    /// The guest said goodbye, or an administrator destroyed it: drop everything.
    Destroy,
    /// Already destroyed by the control side; only close.
    Close,
}

pub struct Worker {
    index: usize,
    poll: Poll,
    rx: Receiver<WorkerMsg>,
    shared: Arc<Shared>,
    load: Arc<AtomicU32>,
    poll_window: Duration,
    guests: Vec<Option<GuestConn>>,
    /// The event-channel file of this worker's Xen guests, once one arrives.
    evtchn: Option<Arc<Evtchn>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("index", &self.index)
            .finish()
    }
}

/// Start a worker thread.
pub fn spawn(
    index: usize,
    shared: Arc<Shared>,
    poll_window: Duration,
) -> std::io::Result<(WorkerHandle, std::thread::JoinHandle<()>)> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
    let (tx, rx) = std::sync::mpsc::channel();
    let load = Arc::new(AtomicU32::new(0));
    let worker = Worker {
        index,
        poll,
        rx,
        shared,
        load: load.clone(),
        poll_window,
        guests: Vec::new(),
        evtchn: None,
    };
    let join = std::thread::Builder::new()
        .name(format!("tmemd-worker-{index}"))
        .spawn(move || worker.run())?;
    Ok((WorkerHandle { tx, waker, load }, join))
}

fn kick_token(slot: usize) -> Token {
    Token(2 + 2 * slot)
}
fn stream_token(slot: usize) -> Token {
    Token(3 + 2 * slot)
}

impl Worker {
    fn run(mut self) {
        let mut events = Events::with_capacity(256);
        let mut last_work = Instant::now();
        let mut last_check = Instant::now();
        loop {
            let mut work = 0usize;
            for slot in 0..self.guests.len() {
                let Some(g) = self.guests[slot].as_mut() else {
                    continue;
                };
                if g.kill.load(Ordering::Relaxed) {
                    self.remove(slot, End::Close);
                    continue;
                }
                match serve(&self.shared.store, g) {
                    Ok(n) => work += n,
                    Err(reason) => {
                        warn!(
                            domid = g.domid,
                            client = g.client.0,
                            "disconnecting guest: {reason}"
                        );
                        self.remove(slot, End::Detach);
                    }
                }
            }
            let now = Instant::now();
            if work > 0 {
                last_work = now;
            }
            let timeout = if now.duration_since(last_work) < self.poll_window {
                if now.duration_since(last_check) < EVENT_CHECK {
                    if work == 0 {
                        // Let a guest sharing this CPU run while we wait for it.
                        std::thread::yield_now();
                    }
                    continue;
                }
                Some(Duration::ZERO)
            } else {
                // Arm every ring's event threshold; a request that raced in means no sleep.
                let mut pending = false;
                for g in self.guests.iter_mut().flatten() {
                    pending |= g.ring.prepare_to_sleep();
                }
                if pending {
                    last_work = now;
                    Some(Duration::ZERO)
                } else {
                    None
                }
            };
            last_check = now;
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != ErrorKind::Interrupted {
                    warn!("worker {}: poll failed: {e}", self.index);
                }
                continue;
            }
            let mut shutdown = false;
            for ev in events.iter() {
                match ev.token() {
                    WAKE => shutdown |= self.drain_messages(),
                    EVTCHN => {
                        // Take and unmask the fired ports; the rings are served at the top.
                        if let Some(ev) = &self.evtchn {
                            if let Err(e) = ev.drain(|_| {}) {
                                warn!("worker {}: event channel read failed: {e}", self.index);
                            }
                        }
                        last_work = Instant::now();
                    }
                    Token(t) => {
                        let slot = (t - 2) / 2;
                        if t % 2 == 0 {
                            // A kick: the rings are served at the top of the loop.
                            last_work = Instant::now();
                        } else {
                            self.check_stream(slot);
                        }
                    }
                }
            }
            if shutdown {
                for slot in 0..self.guests.len() {
                    if self.guests[slot].is_some() {
                        self.remove(slot, End::Close);
                    }
                }
                return;
            }
        }
    }

    /// Take new guests; returns true on shutdown.
    fn drain_messages(&mut self) -> bool {
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                WorkerMsg::Add(g) => self.add(*g),
                WorkerMsg::Shutdown => return true,
            }
        }
        false
    }

    fn add(&mut self, g: GuestConn) {
        let slot = match self.guests.iter().position(Option::is_none) {
            Some(s) => s,
            None => {
                self.guests.push(None);
                self.guests.len() - 1
            }
        };
        if let Link::Xen { port } = &g.link {
            if let Err(e) = self.watch_evtchn(&port.evtchn) {
                warn!(domid = g.domid, "cannot watch the event channel file: {e}");
                lock(&self.shared.guests).remove(&g.client);
                self.shared.connected.fetch_sub(1, Ordering::Relaxed);
                return;
            }
            self.adopt(slot, g);
            return;
        }
        let Link::Local {
            ref kick,
            ref stream,
            ..
        } = g.link
        else {
            return;
        };
        let registry = self.poll.registry();
        let kick = kick.as_raw_fd();
        let stream_fd = stream.as_raw_fd();
        // Never read the kick eventfd: mio is edge-triggered, so every write by the guest
        // wakes us, and not reading means a guest fiddling with the fd's flags cannot block us.
        let ok = registry
            .register(&mut SourceFd(&kick), kick_token(slot), Interest::READABLE)
            .and_then(|_| {
                registry.register(
                    &mut SourceFd(&stream_fd),
                    stream_token(slot),
                    Interest::READABLE,
                )
            });
        if let Err(e) = ok {
            warn!(
                domid = g.domid,
                "cannot watch guest's file descriptors: {e}"
            );
            let _ = registry.deregister(&mut SourceFd(&kick));
            self.shared.store.detach_client(g.client);
            return;
        }
        if let Err(e) = stream.set_nonblocking(true) {
            warn!(
                domid = g.domid,
                "cannot make guest socket non-blocking: {e}"
            );
        }
        self.adopt(slot, g);
    }

    /// Register the worker's evtchn file once (every Xen guest of a worker shares it).
    fn watch_evtchn(&mut self, ev: &Arc<Evtchn>) -> std::io::Result<()> {
        if let Some(have) = &self.evtchn {
            if Arc::ptr_eq(have, ev) {
                return Ok(());
            }
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&have.as_raw_fd()));
        }
        self.poll.registry().register(
            &mut SourceFd(&ev.as_raw_fd()),
            EVTCHN,
            Interest::READABLE,
        )?;
        self.evtchn = Some(ev.clone());
        // Ports that fired before registration would not raise an edge: take them now.
        let _ = ev.drain(|_| {});
        Ok(())
    }

    fn adopt(&mut self, slot: usize, g: GuestConn) {
        info!(
            domid = g.domid,
            client = g.client.0,
            name = %g.name,
            worker = self.index,
            "guest connected"
        );
        self.guests[slot] = Some(g);
        self.load.fetch_add(1, Ordering::Relaxed);
    }

    /// The guest's socket is readable: end of file (it died), a goodbye, or noise.
    fn check_stream(&mut self, slot: usize) {
        let Some(g) = self.guests.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let Link::Local { stream, .. } = &g.link else {
            return;
        };
        // Anything but a goodbye after the hello is a protocol error, so one byte decides.
        let end = match tmem_local::poll_peer(stream) {
            tmem_local::PeerEvent::Idle => None,
            tmem_local::PeerEvent::Goodbye => Some(End::Destroy),
            tmem_local::PeerEvent::Closed => Some(End::Detach),
            tmem_local::PeerEvent::Garbage(b) => {
                if let Some(suppressed) = g.log.allow() {
                    warn!(
                        domid = g.domid,
                        suppressed, "guest sent byte {b:#04x} on its socket; disconnecting"
                    );
                }
                Some(End::Detach)
            }
        };
        if let Some(end) = end {
            self.remove(slot, end);
        }
    }

    fn remove(&mut self, slot: usize, end: End) {
        let Some(g) = self.guests.get_mut(slot).and_then(Option::take) else {
            return;
        };
        let registry = self.poll.registry();
        // The guest holds the same open files: closing ours would not take them out of epoll.
        if let Link::Local { kick, stream, .. } = &g.link {
            let _ = registry.deregister(&mut SourceFd(&kick.as_raw_fd()));
            let _ = registry.deregister(&mut SourceFd(&stream.as_raw_fd()));
        }
        self.load.fetch_sub(1, Ordering::Relaxed);
        self.shared.connected.fetch_sub(1, Ordering::Relaxed);
        lock(&self.shared.guests).remove(&g.client);
        match end {
            End::Detach => {
                self.shared.store.detach_client(g.client);
                lock(&self.shared.detached).insert(g.client, Instant::now());
                info!(
                    domid = g.domid,
                    client = g.client.0,
                    "guest disconnected; persistent pools kept for reattach"
                );
            }
            End::Destroy => {
                self.shared.store.destroy_client(g.client);
                info!(
                    domid = g.domid,
                    client = g.client.0,
                    "guest closed; pools destroyed"
                );
            }
            End::Close => {
                debug!(
                    domid = g.domid,
                    client = g.client.0,
                    "guest connection closed"
                );
            }
        }
    }
}

pub use crate::sync::lock;

/// Serve up to [`BATCH`] requests of one guest. An error means: disconnect this guest.
fn serve(store: &Store, g: &mut GuestConn) -> Result<usize, String> {
    g.batch.clear();
    g.ring
        .next_batch(BATCH, &mut g.batch)
        .map_err(|e| format!("ring protocol violation: {e}"))?;
    let n = g.batch.len();
    if n == 0 {
        return Ok(0);
    }
    for i in 0..n {
        let Incoming { id, req } = g.batch[i];
        let (status, flags) = match req {
            Ok(req) => execute(store, g.client, &mut g.ring, req),
            Err(refusal) => {
                if let Some(suppressed) = g.log.allow() {
                    warn!(domid = g.domid, suppressed, "refused request: {refusal}");
                }
                (refusal.status(), 0)
            }
        };
        g.ring
            .push_response(id, status, flags)
            .map_err(|e| format!("cannot answer request: {e}"))?;
        // Publish in small groups, not once per batch: a guest polling for its first answers
        // can consume them and refill the ring while we work on the rest.
        if (i + 1) % PUBLISH_EVERY == 0 || i + 1 == n {
            publish(g)?;
        }
    }
    Ok(n)
}

/// Make pushed responses visible, and notify the guest if it asked to be woken.
fn publish(g: &mut GuestConn) -> Result<(), String> {
    if g.ring.publish() {
        match &g.link {
            Link::Local { stream, .. } => {
                tmem_local::notify_peer(stream).map_err(|e| format!("cannot notify guest: {e}"))?
            }
            Link::Xen { port } => port
                .notify()
                .map_err(|e| format!("cannot notify guest's event channel: {e}"))?,
        }
    }
    Ok(())
}

/// Carry out one validated request against the store; returns (status, response flags).
fn execute(
    store: &Store,
    client: ClientId,
    ring: &mut BackendRing<GuestMem>,
    req: Request,
) -> (i32, u32) {
    let result = match req {
        Request::NewPool { uuid, kind } => {
            return match store.new_pool(client, uuid, kind) {
                Ok((pool, reattached)) => (
                    pool as i32,
                    if reattached { rsp_flags::REATTACHED } else { 0 },
                ),
                Err(e) => (e.status(), 0),
            }
        }
        Request::DestroyPool { pool } => store.destroy_pool(client, pool).map(i32::from),
        Request::Put { pool, key, slot } => store
            .put(client, pool, key, &ring.slot_source(slot))
            .map(|()| status::SUCCESS),
        Request::Get { pool, key, slot } => store
            .get(client, pool, key, &mut ring.slot_sink(slot))
            .map(|hit| if hit { status::SUCCESS } else { status::MISS }),
        Request::FlushPage { pool, key } => store
            .flush_page(client, pool, key)
            .map(|()| status::SUCCESS),
        Request::FlushObject { pool, oid } => store
            .flush_object(client, pool, oid)
            .map(|()| status::SUCCESS),
    };
    (result.unwrap_or_else(|e| e.status()), 0)
}
