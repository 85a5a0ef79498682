//! A worker thread's loop: it owns a set of guest connections and serves their rings.
//!
//! A worker polls its rings while there is work and for a short window after (a wake-up
//! through an eventfd costs tens of microseconds on these machines, a polled round trip a
//! fraction of one), then arms the rings' event thresholds and sleeps in epoll, at most
//! [`IDLE_BEAT`] so that its heartbeat stays fresh. Each guest gets at most [`BATCH`]
//! requests per round, so no guest can starve the others on its worker; a guest that breaks
//! the ring protocol, or whose requests make the serving code panic, is disconnected, never
//! the worker. A panic that poisoned the page store stops the worker: the daemon then exits.

use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use tmem_xen::Evtchn;
use tracing::{debug, error, info, warn};

use super::connection::{GuestConn, Link};
use super::dispatch::{serve, CROWDED_BATCH};
use super::latency::Latency;
use super::presence;
use super::state::{End, Shared};
use crate::health::Heartbeat;
use crate::ratelimit::RateLimiter;

pub use super::dispatch::BATCH;

const WAKE: Token = Token(0);
/// The worker's event-channel file (all its Xen guests' ports).
const EVTCHN: Token = Token(1);
/// How often a busy worker still looks at its sockets (liveness, new guests).
const EVENT_CHECK: Duration = Duration::from_millis(1);
/// The longest an idle worker sleeps: its heartbeat must stay fresh for the watchdog.
pub const IDLE_BEAT: Duration = Duration::from_secs(1);
/// Event-channel ports taken per wake-up; the rest wait for the next round, so a guest
/// kicking in a tight loop cannot keep the worker reading its port.
const PORTS_PER_ROUND: usize = 256;

/// A worker whose last busy round served at most this many requests serves guests that wait
/// for their answers (synchronous, or nearly): it is marked on the presence board while it
/// polls, so that a busy sibling on its CPU keeps its rounds short.
const SYNC_ROUND: usize = 2;

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
    /// Cleared when the worker thread ends, however it ends.
    pub alive: Arc<AtomicBool>,
    /// Service times of the requests this worker served.
    pub latency: Arc<Latency>,
}

/// A message could not be delivered: the worker has ended.
#[derive(Debug, thiserror::Error)]
#[error("worker thread has ended")]
pub struct WorkerGone(pub WorkerMsg);

impl WorkerHandle {
    /// Deliver a message. A worker that has ended gives it back (with its guest, if any, for
    /// the caller to release).
    pub fn send(&self, msg: WorkerMsg) -> Result<(), WorkerGone> {
        if !self.is_alive() {
            return Err(WorkerGone(msg));
        }
        self.tx.send(msg).map_err(|e| WorkerGone(e.0))?;
        let _ = self.waker.wake();
        Ok(())
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }
}

/// The live worker with the fewest guests, if any worker is alive.
pub fn pick_worker(workers: &[WorkerHandle]) -> Option<usize> {
    workers
        .iter()
        .enumerate()
        .filter(|(_, w)| w.is_alive())
        .min_by_key(|(_, w)| w.load.load(Ordering::Relaxed))
        .map(|(i, _)| i)
}

pub struct Worker {
    index: usize,
    poll: Poll,
    rx: Receiver<WorkerMsg>,
    shared: Arc<Shared>,
    load: Arc<AtomicU32>,
    alive: Arc<AtomicBool>,
    latency: Arc<Latency>,
    heartbeat: Heartbeat,
    poll_window: Duration,
    guests: Vec<Option<GuestConn>>,
    /// The event-channel file of this worker's Xen guests, once one arrives.
    evtchn: Option<Arc<Evtchn>>,
    /// Ports left pending by the last bounded drain: take them without sleeping.
    evtchn_pending: bool,
    /// Panics are bugs; their log line is limited for the whole worker.
    panic_log: RateLimiter,
    /// Set on an orderly shutdown: the heartbeat is withdrawn, not left to go silent.
    stopped: bool,
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
    let alive = Arc::new(AtomicBool::new(true));
    let latency = Arc::new(Latency::default());
    let heartbeat = shared.health.register(worker_name(index));
    let worker = Worker {
        index,
        poll,
        rx,
        shared,
        load: load.clone(),
        alive: alive.clone(),
        latency: latency.clone(),
        heartbeat,
        poll_window,
        guests: Vec::new(),
        evtchn: None,
        evtchn_pending: false,
        panic_log: RateLimiter::new(10, Duration::from_secs(1)),
        stopped: false,
    };
    let join = std::thread::Builder::new()
        .name(format!("tmemd-worker-{index}"))
        .spawn(move || worker.run());
    let join = match join {
        Ok(j) => j,
        Err(e) => {
            // The worker was dropped unstarted, which marked it dead and withdrew it.
            return Err(e);
        }
    };
    Ok((
        WorkerHandle {
            tx,
            waker,
            load,
            alive,
            latency,
        },
        join,
    ))
}

/// The name of a worker's heartbeat (and in the log).
pub fn worker_name(index: usize) -> String {
    format!("worker {index}")
}

fn kick_token(slot: usize) -> Token {
    Token(2 + 2 * slot)
}
fn stream_token(slot: usize) -> Token {
    Token(3 + 2 * slot)
}

/// Why the worker's loop ended.
enum Exit {
    Shutdown,
    /// A panic poisoned the store: stop serving, touch nothing.
    StorePoisoned,
}

impl Worker {
    fn run(mut self) {
        match self.serve_until_exit() {
            Exit::Shutdown => {
                self.stopped = true;
                for slot in 0..self.guests.len() {
                    self.remove(slot, End::Close);
                }
            }
            Exit::StorePoisoned => {
                error!(
                    worker = self.index,
                    "the page store was poisoned by a panic; this worker stops and tmemd exits"
                );
            }
        }
        // Drop releases whatever guests are left (see `impl Drop for Worker`).
    }

    fn serve_until_exit(&mut self) -> Exit {
        let mut events = Events::with_capacity(256);
        let mut last_work = Instant::now();
        let mut last_check = Instant::now();
        let mut crowd = tmem_ring::Crowding::new();
        let mut crowded = false;
        // Requests in the last round that had any: a worker whose guests wait for each answer
        // (a few per round) is the one a busy sibling should let in; one serving a stream
        // (dozens per round) is not, or two streaming workers would slow each other down.
        let mut last_round = 0usize;
        let mut since_yield = 0usize;
        loop {
            self.heartbeat.beat();
            let mut work = 0usize;
            // Short rounds only while crowded and another worker polls (serves a guest that
            // waits for answers): alone, a worker keeps its long rounds.
            let short = crowded && self.shared.presence.sibling_polling(self.index);
            let max = if short { CROWDED_BATCH } else { BATCH };
            for slot in 0..self.guests.len() {
                match self.serve_slot(slot, max) {
                    Ok(n) => work += n,
                    Err(exit) => return exit,
                }
            }
            let now = Instant::now();
            crowded = crowd.check(now);
            let presence = &self.shared.presence;
            if work > 0 {
                last_work = now;
                last_round = work;
                presence.not_polling(self.index);
                // With more runnable threads than CPUs, a worker that always has work would
                // keep its CPU for a whole time slice while its guest or another worker on the
                // same CPU waits: let them in once a round. While a sibling serving a waiting
                // guest polls, rounds are short (`CROWDED_BATCH`) and the yield comes after
                // one only if that sibling is queued behind us, else every `BATCH` requests.
                if crowded {
                    since_yield += work;
                    if !short
                        || since_yield >= BATCH
                        || presence.sibling_starved(self.index, presence::current_cpu(), now)
                    {
                        since_yield = 0;
                        std::thread::yield_now();
                    }
                }
            }
            let timeout = if now.duration_since(last_work) < self.poll_window {
                if now.duration_since(last_check) < EVENT_CHECK {
                    if work == 0 {
                        if crowded && last_round <= SYNC_ROUND {
                            presence.polling(self.index, presence::current_cpu(), now);
                        }
                        // Let a guest sharing this CPU run while we wait for it.
                        std::thread::yield_now();
                    }
                    continue;
                }
                Some(Duration::ZERO)
            } else if self.evtchn_pending {
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
                    Some(IDLE_BEAT)
                }
            };
            last_check = now;
            if timeout != Some(Duration::ZERO) {
                presence.not_polling(self.index);
            }
            // Beat again before a sleep: a long round must not leave a stale beat behind it.
            self.heartbeat.beat();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != ErrorKind::Interrupted {
                    warn!("worker {}: poll failed: {e}", self.index);
                }
                continue;
            }
            if self.evtchn_pending {
                self.drain_evtchn();
            }
            for ev in events.iter() {
                match ev.token() {
                    WAKE => {
                        if self.drain_messages() {
                            return Exit::Shutdown;
                        }
                    }
                    EVTCHN => {
                        // Take and unmask the fired ports; the rings are served at the top.
                        self.drain_evtchn();
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
        }
    }

    /// One round for one guest. A panic while serving it disconnects that guest only,
    /// unless it poisoned the store, which ends the worker.
    fn serve_slot(&mut self, slot: usize, max: usize) -> Result<usize, Exit> {
        let Some(g) = self.guests[slot].as_mut() else {
            return Ok(0);
        };
        if g.kill.load(Ordering::Relaxed) {
            self.remove(slot, End::Close);
            return Ok(0);
        }
        #[cfg(test)]
        super::tests::inject_outside(g);
        let store = &self.shared.store;
        let latency = &*self.latency;
        let outcome = catch_unwind(AssertUnwindSafe(|| serve(store, g, latency, max)));
        match outcome {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(reason)) => {
                warn!(
                    domid = g.domid,
                    client = g.client.0,
                    "disconnecting guest: {reason}"
                );
                self.remove(slot, End::Detach);
                Ok(0)
            }
            Err(panic) => {
                if self.shared.store.is_poisoned() {
                    return Err(Exit::StorePoisoned);
                }
                if let Some(suppressed) = self.panic_log.allow() {
                    error!(
                        domid = g.domid,
                        client = g.client.0,
                        worker = self.index,
                        suppressed,
                        "bug: panic while serving this guest ({}); disconnecting it, \
                         the worker goes on serving the others",
                        panic_message(&*panic)
                    );
                }
                self.remove(slot, End::Detach);
                Ok(0)
            }
        }
    }

    /// Take (a bounded number of) fired event-channel ports and unmask them.
    fn drain_evtchn(&mut self) {
        self.evtchn_pending = false;
        let Some(ev) = &self.evtchn else { return };
        match ev.drain_bounded(PORTS_PER_ROUND, |_| {}) {
            Ok(d) => self.evtchn_pending = d.more,
            Err(e) => warn!("worker {}: event channel read failed: {e}", self.index),
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
        let watched = match &g.link {
            Link::Xen { port } => self.watch_evtchn(&port.evtchn),
            Link::Local { kick, stream } => self.watch_local(slot, kick, stream),
        };
        if let Err(e) = watched {
            warn!(
                domid = g.domid,
                client = g.client.0,
                "cannot watch the guest's notifications ({e}); disconnecting it"
            );
            self.shared.release(g.client, End::Detach);
            return;
        }
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

    fn watch_local(
        &self,
        slot: usize,
        kick: &std::os::fd::OwnedFd,
        stream: &std::os::unix::net::UnixStream,
    ) -> std::io::Result<()> {
        let registry = self.poll.registry();
        let kick = kick.as_raw_fd();
        // Never read the kick eventfd: mio is edge-triggered, so every write by the guest
        // wakes us, and not reading means a guest fiddling with the fd's flags cannot block us.
        registry.register(&mut SourceFd(&kick), kick_token(slot), Interest::READABLE)?;
        let stream_fd = stream.as_raw_fd();
        let watched = registry
            .register(
                &mut SourceFd(&stream_fd),
                stream_token(slot),
                Interest::READABLE,
            )
            .and_then(|()| stream.set_nonblocking(true));
        if watched.is_err() {
            let _ = registry.deregister(&mut SourceFd(&kick));
            let _ = registry.deregister(&mut SourceFd(&stream_fd));
        }
        watched
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
        self.drain_evtchn();
        Ok(())
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
                if let Some(suppressed) = g.log.garbage.allow() {
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
        self.forget(&g);
        self.shared.release(g.client, end);
        match end {
            End::Detach => info!(
                domid = g.domid,
                client = g.client.0,
                "guest disconnected; persistent pools kept for reattach"
            ),
            End::Destroy => info!(
                domid = g.domid,
                client = g.client.0,
                "guest closed; pools destroyed"
            ),
            End::Close => debug!(
                domid = g.domid,
                client = g.client.0,
                "guest connection closed"
            ),
        }
    }

    /// Stop watching a guest's descriptors and stop counting it as this worker's load.
    fn forget(&self, g: &GuestConn) {
        // The guest holds the same open files: closing ours would not take them out of epoll.
        if let Link::Local { kick, stream, .. } = &g.link {
            let registry = self.poll.registry();
            let _ = registry.deregister(&mut SourceFd(&kick.as_raw_fd()));
            let _ = registry.deregister(&mut SourceFd(&stream.as_raw_fd()));
        }
        self.load.fetch_sub(1, Ordering::Relaxed);
    }
}

/// However the worker ends (shutdown, poisoned store, or a panic outside any guest), it is
/// marked dead so no guest is given to it again, and the guests it still holds are released
/// (closed only, if the store is poisoned: touching it would panic again).
impl Drop for Worker {
    fn drop(&mut self) {
        self.alive.store(false, Ordering::Release);
        let poisoned = self.shared.store.is_poisoned();
        let end = if poisoned { End::Close } else { End::Detach };
        let mut left = 0;
        for g in self.guests.iter_mut().filter_map(Option::take) {
            left += 1;
            self.shared.release(g.client, end);
        }
        if self.stopped {
            self.shared.health.unregister(&worker_name(self.index));
        } else if !poisoned {
            error!(
                worker = self.index,
                guests = left,
                "worker thread ended unexpectedly; its guests were disconnected"
            );
            // A dead worker must not stop the watchdog while the others serve; the main loop
            // stops tmemd once no worker is left.
            self.shared.health.unregister(&worker_name(self.index));
        }
    }
}

/// The message of a caught panic, for the log.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "no message"
    }
}
