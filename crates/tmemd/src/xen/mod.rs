//! The Xen backend: tmemd plays toolstack for the `tmem` PV device.
//!
//! It runs on its own thread, `tmemd-xen` (this file: the thread, its loop and the xenstore
//! connection's life), so nothing a guest does through xenstore can hold up signals, the
//! control socket, local handshakes or the watchdog. Every round of the loop beats the thread's
//! heartbeat; the loop wakes at least twice a second even when idle.
//!
//! - [`backend`]: the per-domain state machine. It watches `@introduceDomain`/`@releaseDomain`,
//!   offers the device to every domain the [`Policy`] admits, follows each frontend's `state`
//!   and connects, closes or releases. Each round handles a bounded number of watch events and
//!   paces each domain ([`pace`]), so a domain rewriting its keys in a loop is deferred while
//!   the others are served promptly.
//! - [`attach`]: mapping grants, binding the event channel, handing a [`GuestConn`] to a worker,
//!   and tearing it down again.
//! - The xenstore I/O itself (directories, permissions, states, errors) is in
//!   `tmem_xen::xenbus`; tmemd only decides.
//!
//! A xenstore error or timeout does not end the Xen transport: the connection is dropped
//! ("xenstore connection lost ...; reconnecting"), guests already connected keep being served
//! by their workers, and a new connection is tried with exponential backoff (100 ms up to 5 s).
//! Once back ("xenstore reconnected"), the watches are registered again and every domain is
//! reconciled with what xenstore now holds.
//!
//! [`GuestConn`]: crate::worker::GuestConn

mod attach;
mod backend;
mod disk_thread;
mod grant_io;
mod pace;
mod park;
pub(crate) mod policy;
#[cfg(test)]
mod tests;
mod vbd;

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use tmem_xen::{Evtchn, Gntdev, Xs, XsError};
use tracing::{debug, error, info, warn};

pub use backend::XenBackend;
pub use policy::Policy;

use crate::config::Config;
use crate::health::Heartbeat;
use crate::ratelimit::RateLimiter;
use crate::worker::{Shared, WorkerHandle};

/// This daemon's domain (the backend always lives in dom0).
pub const BACKEND_DOMID: u32 = 0;
/// The loop wakes at least this often, idle or not: the heartbeat, and noticing connections a
/// worker dropped, need it.
const IDLE_WAKE: Duration = Duration::from_millis(500);
/// First wait before reconnecting to xenstore; doubles per failed try up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long one xenstore request may take before the connection counts as lost.
const XS_TIMEOUT: Duration = Duration::from_secs(5);

/// How the control plane opens a xenstore connection (again, after losing one).
pub type Connector = Box<dyn FnMut() -> Result<Xs, XsError> + Send>;

/// The running Xen control plane, owned by the daemon's main thread.
#[derive(Debug)]
pub struct XenThread {
    stop: Arc<AtomicBool>,
    wake: UnixStream,
    join: JoinHandle<()>,
    describe: String,
    domains: usize,
}

/// Probe for Xen, reconcile with xenstore and start the `tmemd-xen` thread. `Err` says why
/// Xen is absent or unusable (the daemon then serves the local transport only).
pub fn start(
    config: &Config,
    shared: Arc<Shared>,
    workers: Arc<Vec<WorkerHandle>>,
    heartbeat: Heartbeat,
) -> Result<XenThread, String> {
    let mut xs = tmem_xen::probe(tmem_xen::Role::Backend).map_err(|e| e.to_string())?;
    xs.set_timeout(XS_TIMEOUT);
    let gntdev = Gntdev::open().map_err(|e| format!("cannot open gntdev: {e}"))?;
    let mut evtchns = Vec::new();
    for _ in 0..workers.len() {
        evtchns.push(Evtchn::open().map_err(|e| format!("cannot open evtchn: {e}"))?);
    }
    let mut backend = XenBackend::new(xs, Some(gntdev), evtchns, config, shared, workers);
    // Xen is here: a xenstore failure now is as transient as one later, so retry it on the
    // thread instead of giving up on the Xen transport.
    let up = match backend.init() {
        Ok(()) => true,
        Err(e) => {
            warn!("xenstore start-up failed: {e}; reconnecting in the background");
            false
        }
    };
    let connect: Connector = Box::new(|| {
        let mut xs = Xs::open()?;
        xs.set_timeout(XS_TIMEOUT);
        Ok(xs)
    });
    spawn_inner(backend, connect, heartbeat, up)
        .map_err(|e| format!("cannot start the Xen thread: {e}"))
}

/// Run an initialised backend on the `tmemd-xen` thread; `connect` opens a new xenstore
/// connection whenever the current one is lost.
pub fn spawn(
    backend: XenBackend,
    connect: Connector,
    heartbeat: Heartbeat,
) -> std::io::Result<XenThread> {
    spawn_inner(backend, connect, heartbeat, true)
}

/// `up`: whether the backend's connection is initialised; if not, the thread starts by
/// reconnecting.
fn spawn_inner(
    backend: XenBackend,
    connect: Connector,
    heartbeat: Heartbeat,
    up: bool,
) -> std::io::Result<XenThread> {
    let (wake, wake_rx) = UnixStream::pair()?;
    wake.set_nonblocking(true)?;
    wake_rx.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let describe = backend.describe();
    let domains = backend.domain_count();
    let plane = ControlPlane {
        backend,
        connect,
        heartbeat,
        stop: stop.clone(),
        wake_rx,
        link: if up {
            Link::Up
        } else {
            Link::down(Instant::now())
        },
        log: RateLimiter::new(10, Duration::from_secs(60)),
    };
    let join = std::thread::Builder::new()
        .name("tmemd-xen".into())
        .spawn(move || plane.run())?;
    Ok(XenThread {
        stop,
        wake,
        join,
        describe,
        domains,
    })
}

impl XenThread {
    /// Where the xenstore connection goes, for the ready line.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// Domains offered the device at start-up (for the ready line).
    pub fn domain_count(&self) -> usize {
        self.domains
    }

    /// Orderly stop: the thread closes every Xen connection (frontends see `Closed` and wait
    /// for the next tmemd) and ends. `Err` if the thread had panicked.
    pub fn stop(mut self) -> Result<(), String> {
        self.stop.store(true, Ordering::Release);
        // A full pipe already holds a wake-up; any other error means the thread is gone,
        // which join reports.
        let _ = self.wake.write(&[1]);
        self.join
            .join()
            .map_err(|_| "the Xen control plane thread panicked".to_string())
    }
}

/// The xenstore connection's state.
#[derive(Debug)]
enum Link {
    Up,
    Down {
        since: Instant,
        next_try: Instant,
        backoff: Duration,
        tries: u32,
    },
}

impl Link {
    /// Just lost (or never had): first try after [`FIRST_BACKOFF`].
    fn down(now: Instant) -> Link {
        Link::Down {
            since: now,
            next_try: now + FIRST_BACKOFF,
            backoff: FIRST_BACKOFF,
            tries: 0,
        }
    }
}

/// The thread's state: the backend and how to reach xenstore.
struct ControlPlane {
    backend: XenBackend,
    connect: Connector,
    heartbeat: Heartbeat,
    stop: Arc<AtomicBool>,
    wake_rx: UnixStream,
    link: Link,
    /// For the lost/reconnected lines.
    log: RateLimiter,
}

impl ControlPlane {
    fn run(mut self) {
        loop {
            self.heartbeat.beat();
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            let timeout = self.timeout(Instant::now());
            self.wait(timeout);
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            match self.link {
                Link::Up => {
                    if let Err(e) = self.backend.round() {
                        self.lost(e);
                    }
                }
                Link::Down { next_try, .. } => {
                    if Instant::now() >= next_try {
                        self.reconnect();
                    }
                }
            }
        }
        self.backend.shutdown(matches!(self.link, Link::Up));
        debug!("Xen control plane stopped");
    }

    /// How long the next wait may be: zero while work is queued, until the next paced domain
    /// or reconnect is due, and never more than [`IDLE_WAKE`].
    fn timeout(&self, now: Instant) -> Duration {
        let until = match self.link {
            Link::Up if self.backend.has_queued_work() => return Duration::ZERO,
            Link::Up => self.backend.next_due(),
            Link::Down { next_try, .. } => Some(next_try),
        };
        until
            .map(|t| t.saturating_duration_since(now))
            .unwrap_or(IDLE_WAKE)
            .min(IDLE_WAKE)
    }

    /// Sleep until xenstore has input, the daemon wakes us, or `timeout` passes.
    fn wait(&mut self, timeout: Duration) {
        // Round up, so a wait for a deadline a fraction of a millisecond away does not spin.
        let ms = timeout.as_micros().div_ceil(1000).min(u16::MAX as u128) as u16;
        let mut fds = vec![PollFd::new(self.wake_rx.as_fd(), PollFlags::POLLIN)];
        if matches!(self.link, Link::Up) {
            fds.push(PollFd::new(self.backend.xs_fd(), PollFlags::POLLIN));
        }
        match nix::poll::poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                // Cannot wait: pace the loop instead of spinning.
                error!("Xen control plane cannot poll: {e}");
                std::thread::sleep(timeout);
            }
        }
        let mut buf = [0u8; 64];
        while let Ok(n) = self.wake_rx.read(&mut buf) {
            if n == 0 {
                // The daemon dropped its handle without stopping us: stop rather than spin.
                self.stop.store(true, Ordering::Release);
                break;
            }
        }
    }

    fn lost(&mut self, e: XsError) {
        // Rate-limited: a flapping xenstored must not flood the log.
        if let Some(suppressed) = self.log.allow() {
            warn!(
                suppressed,
                "xenstore connection lost: {e}; reconnecting (connected Xen guests keep being \
                 served)"
            );
        }
        self.link = Link::down(Instant::now());
    }

    fn reconnect(&mut self) {
        let Link::Down {
            since,
            backoff,
            tries,
            ..
        } = self.link
        else {
            return;
        };
        let tries = tries + 1;
        let r = (self.connect)().and_then(|xs| self.backend.reconnected(xs));
        match r {
            Ok(()) => {
                if let Some(suppressed) = self.log.allow() {
                    info!(
                        down_ms = since.elapsed().as_millis() as u64,
                        tries,
                        domains = self.backend.domain_count(),
                        suppressed,
                        "xenstore reconnected; Xen transport serving again"
                    );
                }
                self.link = Link::Up;
            }
            Err(e) => {
                let backoff = (backoff * 2).min(MAX_BACKOFF);
                // The first failures are expected while xenstored restarts; say it at most
                // once per backoff step until the cap, then once per cap interval.
                if tries <= 3 || (backoff == MAX_BACKOFF && tries.is_multiple_of(12)) {
                    warn!(
                        tries,
                        "xenstore still unreachable: {e}; next try in {backoff:?}"
                    );
                } else {
                    debug!(tries, "xenstore still unreachable: {e}");
                }
                self.link = Link::Down {
                    since,
                    next_try: Instant::now() + backoff,
                    backoff,
                    tries,
                };
            }
        }
    }
}
