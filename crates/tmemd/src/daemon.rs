//! The daemon's main thread: sockets, handshakes, the control socket, signals, housekeeping.
//!
//! Order of start-up: take the fds systemd passed, bind the guest and control sockets (so a
//! second tmemd fails early and clearly, before it touches page memory), open the store on
//! its page memory ([`crate::pagemem`]: recovery, fd store), give it the saved settings,
//! start the workers and serve; systemd hears READY once the page memory is faulted in (on a
//! thread beside serving).
//! SIGTERM or SIGINT stops the workers, removes the sockets and exits 0.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use tracing::{error, info, warn};

use crate::config::Config;
use crate::control::{self, ControlServer};
use crate::handshake::{raise_fd_limit, Admission};
use crate::health::Health;
use crate::pagemem::{self, Inherited, PageMemError};
use crate::ratelimit::RateLimiter;
use crate::sdnotify::Notifier;
use crate::settings::{Keeper, SettingsError};
use crate::worker::{self, Shared, WorkerHandle, WorkerMsg};

const GUEST_LISTENER: Token = Token(0);
const CONTROL_LISTENER: Token = Token(1);
const SIGNALS: Token = Token(2);
const FIRST_CONTROL: usize = 16;
const HOUSEKEEPING: Duration = Duration::from_millis(500);
/// How often the main loop refreshes the STATUS= line `systemctl status` shows (sent only
/// when it changed).
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Everything that can stop the daemon, each with a message that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    GuestSocket(#[from] tmem_local::LocalError),
    #[error(transparent)]
    ControlSocket(tmem_local::listen::BindError),
    #[error(
        "cannot give the control socket {path} to group {gid} (control_socket_group): {source}; \
         tmemd must be a member of that group (SupplementaryGroups= in its unit) or have \
         CAP_CHOWN"
    )]
    ShareControlSocket {
        path: std::path::PathBuf,
        gid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up signal handling: {0}")]
    Signals(nix::errno::Errno),
    #[error("cannot start the event loop: {0}")]
    Poll(std::io::Error),
    #[error("cannot start worker threads: {0}")]
    Workers(std::io::Error),
    #[error("the main event loop failed: {0}; tmemd stops so that it can be restarted")]
    EventLoop(std::io::Error),
    #[error(
        "a panic inside the page store left it untrustworthy; tmemd stops so that it can be \
         restarted (the panic is in the log above)"
    )]
    StorePoisoned,
    #[error(
        "every worker thread has ended; tmemd stops so that it can be restarted (the reason \
         is in the log above)"
    )]
    NoWorkers,
    #[error(transparent)]
    PageMemory(#[from] PageMemError),
    #[error(transparent)]
    Settings(#[from] SettingsError),
}

impl DaemonError {
    /// The exit status: [`pagemem::EXIT_PAGE_MEMORY`] when page memory cannot be used, 2
    /// for saved settings that cannot be read or a control socket group that cannot be
    /// given (like a bad config file), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            DaemonError::PageMemory(_) => pagemem::EXIT_PAGE_MEMORY,
            // Like a bad configuration: restarting fails the same way.
            DaemonError::Settings(_) | DaemonError::ShareControlSocket { .. } => 2,
            _ => 1,
        }
    }
}

/// Run the daemon until SIGTERM/SIGINT.
pub fn run(config: Config) -> Result<(), DaemonError> {
    // First, while this is the only thread: it changes the environment.
    let mut inherited = Inherited::from_env();
    raise_fd_limit();
    // Signals are taken through a signalfd; block them in every thread (workers inherit).
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGHUP);
    mask.thread_block().map_err(DaemonError::Signals)?;
    // A guest that closes its socket while we write must not kill the daemon.
    // SAFETY: installing SIG_IGN for SIGPIPE has no preconditions and no handler code.
    unsafe { nix::sys::signal::signal(Signal::SIGPIPE, nix::sys::signal::SigHandler::SigIgn) }
        .map_err(DaemonError::Signals)?;
    let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(DaemonError::Signals)?;

    let guest_listener = tmem_local::bind_listener(&config.socket)?;
    let control_listener = tmem_local::listen::bind_socket(
        &config.control_socket,
        &tmem_local::listen::CONTROL_SOCKET,
    )
    .map_err(DaemonError::ControlSocket)?;
    if let Some(gid) = config.control_socket_gid {
        share_control_socket(&config.control_socket, gid).map_err(|source| {
            DaemonError::ShareControlSocket {
                path: config.control_socket.clone(),
                gid,
                source,
            }
        })?;
    }
    guest_listener
        .set_nonblocking(true)
        .map_err(DaemonError::Poll)?;
    let mut control =
        ControlServer::new(control_listener, FIRST_CONTROL).map_err(DaemonError::Poll)?;

    let notifier = Notifier::from_env();
    let opened = pagemem::open(&config, &mut inherited, &notifier)?;
    opened.store.set_default_compression(config.compression);
    opened
        .store
        .set_compress_max_bytes(config.compress_max_bytes as usize);
    let keeper = Keeper::load(config.settings.clone(), opened.settings)?;
    let page_memory = pagemem::status(
        &opened.placement,
        opened.recovery.as_ref(),
        keeper.backing(),
    );
    let refused = keeper.effective().apply_all(&opened.store);
    info!(
        kept_in = %keeper.backing(),
        changed_with_tmem = keeper.has_changes(),
        refused,
        "administrator settings applied"
    );
    let recovered = opened.store.recovered_clients();
    let shared = Arc::new(Shared::with_settings(opened.store, keeper));
    if !recovered.is_empty() {
        info!(
            clients = recovered.len(),
            grace_secs = config.reattach_grace.as_secs(),
            "recovered clients wait for their guests to reattach"
        );
        shared.schedule_recovered(&recovered);
    }
    let mut workers = Vec::new();
    let mut joins = Vec::new();
    for i in 0..config.workers as usize {
        let (h, j) = worker::spawn(i, shared.clone(), config.poll).map_err(DaemonError::Workers)?;
        workers.push(h);
        joins.push(j);
    }
    let workers = Arc::new(workers);

    let mut poll = Poll::new().map_err(DaemonError::Poll)?;
    let registry = poll.registry();
    registry
        .register(
            &mut SourceFd(&guest_listener.as_raw_fd()),
            GUEST_LISTENER,
            Interest::READABLE,
        )
        .map_err(DaemonError::Poll)?;
    control
        .register_listener(registry, CONTROL_LISTENER)
        .map_err(DaemonError::Poll)?;
    registry
        .register(
            &mut SourceFd(&sigfd.as_raw_fd()),
            SIGNALS,
            Interest::READABLE,
        )
        .map_err(DaemonError::Poll)?;

    let mut watchdog = Notifier::watchdog_interval().map(Watchdog::new);
    let started = Instant::now();
    let admission = Admission::new(
        shared.clone(),
        workers.clone(),
        config.max_ring_pages,
        config.max_data_slots,
        config.max_guests,
    );
    // The Xen control plane runs on its own thread; its heartbeat says it is making progress.
    let xen = if config.xen {
        let heartbeat = shared.health.register("xen control plane");
        match crate::xen::start(&config, shared.clone(), workers.clone(), heartbeat) {
            Ok(x) => {
                info!(
                    xenstore = %x.describe(),
                    domains = x.domain_count(),
                    "xen transport ready"
                );
                Some(x)
            }
            Err(reason) => {
                shared.health.unregister("xen control plane");
                info!("Xen absent: {reason}; serving the local transport only");
                None
            }
        }
    } else {
        info!("Xen transport disabled by configuration; serving the local transport only");
        None
    };
    let ctx = control::Context {
        shared: shared.clone(),
        workers: workers.clone(),
        started,
        allowed_uids: allowed_control_uids(&config),
        readonly_uids: config.control_readonly_uids.clone(),
        readonly_gids: config.control_readonly_gids.clone(),
        transports: if xen.is_some() {
            vec!["local", "xen"]
        } else {
            vec!["local"]
        },
        page_memory,
    };
    info!(
        socket = %config.socket.display(),
        control = %config.control_socket.display(),
        mem_limit = config.store.mem_limit_bytes,
        workers = config.workers,
        xen = xen.is_some(),
        "tmemd ready"
    );
    let mut status = StatusLine::default();
    ready_once_memory_is_in_place(&shared, config.prefault, &notifier, &status.ready);

    let mut events = Events::with_capacity(128);
    let mut last_housekeeping = Instant::now();
    let mut outcome = Ok(());
    'serve: loop {
        if let Err(e) = poll.poll(&mut events, Some(HOUSEKEEPING)) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            error!("event loop failed: {e}");
            outcome = Err(DaemonError::EventLoop(e));
            break;
        }
        // Before anything on this thread touches the store (control requests, expiry).
        if let Err(e) = fail_stop(&shared, &workers) {
            error!("{e}");
            outcome = Err(e);
            break;
        }
        for ev in events.iter() {
            match ev.token() {
                SIGNALS => {
                    while let Ok(Some(sig)) = sigfd.read_signal() {
                        let name = Signal::try_from(sig.ssi_signo as i32)
                            .map(|s| s.as_str())
                            .unwrap_or("signal");
                        if sig.ssi_signo == Signal::SIGHUP as u32 {
                            info!("{name} received; nothing to reload in this version");
                            continue;
                        }
                        info!("{name} received; shutting down");
                        break 'serve;
                    }
                }
                GUEST_LISTENER => {
                    admission.accept_batch(&guest_listener, poll.registry(), GUEST_LISTENER)
                }
                CONTROL_LISTENER => control.accept_all(poll.registry(), &ctx),
                t if control.owns(t) => control.on_ready(t, poll.registry(), &ctx),
                _ => {}
            }
        }
        let now = Instant::now();
        if now.duration_since(last_housekeeping) >= HOUSEKEEPING {
            last_housekeeping = now;
            shared.expire_detached(config.reattach_grace);
            control.housekeeping(poll.registry(), now);
            // Holes freed compressed pages left in their runs become whole frames again.
            shared.store.compact_some();
            status.refresh(now, &shared, &notifier);
        }
        if let Some(w) = watchdog.as_mut() {
            w.tick(now, &shared.health, &notifier);
        }
    }

    notifier.notify("STOPPING=1");
    let poisoned = shared.store.is_poisoned();
    if let Some(x) = xen {
        // Before the workers stop: it waits for them to let go of its guests' rings. Tearing
        // Xen guests down detaches them in the store: not once it is poisoned.
        if poisoned {
            drop(x);
        } else if let Err(e) = x.stop() {
            error!("{e}");
        }
    }
    for w in workers.iter() {
        // A worker that has ended needs no message.
        let _ = w.send(WorkerMsg::Shutdown);
    }
    for (i, j) in joins.into_iter().enumerate() {
        if j.join().is_err() {
            error!("worker {i} ended with a panic");
        }
    }
    tmem_local::listen::remove_socket(&config.socket);
    tmem_local::listen::remove_socket(&config.control_socket);
    match &outcome {
        Ok(()) => info!("tmemd stopped"),
        Err(_) => error!("tmemd stopped on an error"),
    }
    outcome
}

/// What `systemctl status tmemd` shows on its Status: line: guests, pages, page memory.
fn status_text(shared: &Shared) -> String {
    let g = shared.store.stats().global;
    let guests = shared.connected.load(std::sync::atomic::Ordering::Relaxed);
    // Cloned out first: never hold the map's lock while taking a disk's.
    let disks: Vec<_> = worker::lock(&shared.swap_disks).values().cloned().collect();
    let disks = disks
        .iter()
        .filter(|d| worker::lock(d).state == "connected")
        .count();
    let persistent = g.pages.saturating_sub(g.eph_pages);
    let mut text = format!(
        "{guests} guest(s) connected; {} pages stored ({persistent} persistent); \
         page memory {:.1} of {} MiB in use",
        g.pages,
        // A tenth of a MiB, so that a few hundred pages do not read as nothing.
        g.data_bytes as f64 / f64::from(1u32 << 20),
        g.mem_limit_bytes >> 20,
    );
    if disks > 0 {
        text.push_str(&format!("; {disks} swap disk(s) connected"));
    }
    text
}

/// READY=1, with the first STATUS=; `sent` tells the [`StatusLine`] that updates may follow.
fn send_ready(shared: &Shared, notifier: &Notifier, sent: &AtomicBool) {
    notifier.notify(&format!("READY=1\nSTATUS={}", status_text(shared)));
    sent.store(true, Ordering::Release);
}

/// The STATUS= line, refreshed every [`STATUS_EVERY`] and sent only when it changed, and
/// only after READY=1: a service manager (and our tests) read the first message after the
/// fd store's as the readiness one.
#[derive(Debug, Default)]
struct StatusLine {
    sent: String,
    at: Option<Instant>,
    /// Set once READY=1 has gone out (by the prefault thread, or at once without prefault).
    ready: Arc<AtomicBool>,
}

impl StatusLine {
    fn refresh(&mut self, now: Instant, shared: &Shared, notifier: &Notifier) {
        if !notifier.is_present()
            || !self.ready.load(Ordering::Acquire)
            || self
                .at
                .is_some_and(|at| now.duration_since(at) < STATUS_EVERY)
        {
            return;
        }
        self.at = Some(now);
        let text = status_text(shared);
        if text != self.sent {
            notifier.notify(&format!("STATUS={text}"));
            self.sent = text;
        }
    }
}

/// Tell systemd we are ready only once the page memory is in place: it is faulted in on a
/// thread beside serving (guests get in at once; a put needing a chunk still being faulted
/// waits for that chunk only), which sends READY when done. Without prefault, READY is now.
fn ready_once_memory_is_in_place(
    shared: &Arc<Shared>,
    prefault: bool,
    notifier: &Notifier,
    sent: &Arc<AtomicBool>,
) {
    if !prefault {
        send_ready(shared, notifier, sent);
        return;
    }
    let prefault_then_ready = {
        let shared = shared.clone();
        let sent = sent.clone();
        move || {
            let t = Instant::now();
            let bytes = shared.store.prefault();
            info!(
                mib = bytes >> 20,
                ms = t.elapsed().as_millis() as u64,
                "page-data memory faulted in"
            );
            send_ready(&shared, &Notifier::from_env(), &sent);
        }
    };
    let spawned = std::thread::Builder::new()
        .name("tmemd-prefault".into())
        .spawn(prefault_then_ready.clone());
    if let Err(e) = spawned {
        warn!("cannot start the prefault thread ({e}); faulting in page memory now");
        prefault_then_ready();
    }
}

/// Conditions under which tmemd must stop (non-zero) rather than go on: systemd restarts it.
fn fail_stop(shared: &Shared, workers: &[WorkerHandle]) -> Result<(), DaemonError> {
    if shared.store.is_poisoned() {
        return Err(DaemonError::StorePoisoned);
    }
    if !workers.iter().any(WorkerHandle::is_alive) {
        return Err(DaemonError::NoWorkers);
    }
    Ok(())
}

/// The longest any thread may go without a heartbeat before the watchdog stops being fed.
/// Idle workers beat every [`worker::IDLE_BEAT`]; this leaves room for a loaded machine.
const HEARTBEAT_MAX_AGE: Duration = Duration::from_secs(5);

/// Feeds systemd's watchdog (`WATCHDOG=1` at half its interval), but only while every
/// worker and the Xen control plane have shown progress recently: a hung thread then gets
/// tmemd restarted instead of hiding behind a main thread that still runs.
#[derive(Debug)]
struct Watchdog {
    every: Duration,
    max_age: Duration,
    last: Option<Instant>,
    log: RateLimiter,
}

impl Watchdog {
    fn new(interval: Duration) -> Watchdog {
        Watchdog {
            every: interval / 2,
            // A silent thread must stop the feeding well within systemd's interval, but a
            // healthy idle one beats only once a second.
            max_age: HEARTBEAT_MAX_AGE.min(interval.max(worker::IDLE_BEAT * 3)),
            last: None,
            log: RateLimiter::new(1, Duration::from_secs(10)),
        }
    }

    /// Called every main-loop round; returns whether it fed the watchdog now.
    fn tick(&mut self, now: Instant, health: &Health, notifier: &Notifier) -> bool {
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.every)
        {
            return false;
        }
        match health.check(self.max_age) {
            Ok(()) => {
                self.last = Some(now);
                notifier.notify("WATCHDOG=1");
                true
            }
            Err(silent) => {
                if let Some(suppressed) = self.log.allow() {
                    error!(
                        suppressed,
                        "not feeding the systemd watchdog: no progress from {silent}; \
                         systemd will restart tmemd if this lasts"
                    );
                }
                false
            }
        }
    }
}

/// Give the control socket to `gid`, mode 0660, so that group's members can connect (what
/// each may do is still decided by its credentials at accept). Widened after bind: the
/// socket exists with mode 0600 first, never wider than configured.
fn share_control_socket(path: &std::path::Path, gid: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // No chown when the socket has the group already (tmemd runs with that group): the
    // unit's system-call filter may forbid chown.
    if std::fs::metadata(path)?.gid() != gid {
        std::os::unix::fs::chown(path, None, Some(gid))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
}

fn allowed_control_uids(config: &Config) -> Vec<u32> {
    let mut v = vec![0, nix::unistd::geteuid().as_raw()];
    v.extend(&config.control_uids);
    v.sort_unstable();
    v.dedup();
    v
}

/// Write all of `buf` to a non-blocking stream as far as it goes; returns bytes written.
pub fn write_some(stream: &mut impl Write, buf: &[u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match stream.write(&buf[done..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Read what is available from a non-blocking stream; `Ok(None)` at end of file.
pub fn read_some(
    stream: &mut impl Read,
    out: &mut Vec<u8>,
    cap: usize,
) -> std::io::Result<Option<usize>> {
    let mut total = 0;
    let mut buf = [0u8; 4096];
    while out.len() < cap {
        let want = buf.len().min(cap - out.len());
        match stream.read(&mut buf[..want]) {
            Ok(0) => return Ok(None),
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                total += n;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(Some(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::tests::{connect, shared, Fault};
    use std::os::unix::net::UnixDatagram;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// systemd's side of the notify socket.
    struct FakeSystemd {
        socket: UnixDatagram,
        dir: PathBuf,
    }

    impl FakeSystemd {
        fn new() -> FakeSystemd {
            let dir = std::env::temp_dir().join(format!(
                "tmemd-watchdog-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let socket = UnixDatagram::bind(dir.join("notify")).unwrap();
            socket.set_nonblocking(true).unwrap();
            FakeSystemd { socket, dir }
        }
        fn notifier(&self) -> Notifier {
            Notifier::to_path(&self.dir.join("notify"))
        }
        /// Every notification received so far.
        fn received(&self) -> Vec<String> {
            let mut out = Vec::new();
            let mut buf = [0u8; 256];
            while let Ok(n) = self.socket.recv(&mut buf) {
                out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            out
        }
    }

    impl Drop for FakeSystemd {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Run the main loop's watchdog tick for `how_long`; returns what systemd received.
    fn run_watchdog(
        wd: &mut Watchdog,
        health: &Health,
        sd: &FakeSystemd,
        how_long: Duration,
    ) -> Vec<String> {
        let n = sd.notifier();
        let end = Instant::now() + how_long;
        let mut got = Vec::new();
        while Instant::now() < end {
            wd.tick(Instant::now(), health, &n);
            got.extend(sd.received());
            std::thread::sleep(Duration::from_millis(10));
        }
        got
    }

    #[test]
    fn the_watchdog_is_fed_while_workers_beat_and_starves_when_one_hangs() {
        let shared = shared();
        let (w, join) = worker::spawn(0, shared.clone(), Duration::from_micros(50)).unwrap();
        let sd = FakeSystemd::new();
        let mut wd = Watchdog::new(Duration::from_millis(200));
        wd.max_age = worker::IDLE_BEAT * 2;
        // Healthy and idle: WATCHDOG=1 keeps arriving (every 100 ms).
        let fed = run_watchdog(&mut wd, &shared.health, &sd, worker::IDLE_BEAT * 3);
        assert!(
            fed.len() >= 10 && fed.iter().all(|m| m == "WATCHDOG=1"),
            "healthy daemon sent {fed:?}"
        );
        // The worker hangs while serving a guest: once its heartbeat is stale, no more.
        let hang = Arc::new(AtomicBool::new(true));
        let _g = connect(&shared, &w, 3, Some(Fault::Hang(hang.clone())));
        let deadline = Instant::now() + Duration::from_secs(20);
        while shared.health.check(wd.max_age).is_ok() {
            assert!(
                Instant::now() < deadline,
                "the hung worker still looks alive"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        sd.received();
        let fed = run_watchdog(&mut wd, &shared.health, &sd, Duration::from_secs(1));
        assert!(
            fed.is_empty(),
            "a hung worker still fed the watchdog: {fed:?}"
        );
        // It recovers: feeding resumes.
        hang.store(false, Ordering::Relaxed);
        let fed = run_watchdog(&mut wd, &shared.health, &sd, Duration::from_secs(1));
        assert!(!fed.is_empty(), "feeding did not resume");
        w.send(WorkerMsg::Shutdown).unwrap();
        join.join().unwrap();
    }

    #[test]
    fn the_status_line_counts_guests_pages_and_memory_and_is_sent_when_it_changes() {
        let shared = shared();
        let text = status_text(&shared);
        let limit = shared.store.stats().global.mem_limit_bytes >> 20;
        assert_eq!(
            text,
            format!(
                "0 guest(s) connected; 0 pages stored (0 persistent); page memory 0.0 of {limit} MiB in use"
            )
        );
        let sd = FakeSystemd::new();
        let n = sd.notifier();
        let mut line = StatusLine::default();
        let t0 = Instant::now();
        // Nothing before READY=1, which carries the first STATUS=.
        line.refresh(t0, &shared, &n);
        assert!(sd.received().is_empty());
        send_ready(&shared, &n, &line.ready);
        assert_eq!(sd.received(), vec![format!("READY=1\nSTATUS={text}")]);
        line.refresh(t0, &shared, &n);
        assert_eq!(sd.received(), vec![format!("STATUS={text}")]);
        // Unchanged: nothing more, even once the interval has passed.
        line.refresh(t0 + STATUS_EVERY, &shared, &n);
        assert!(sd.received().is_empty());
        shared
            .connected
            .fetch_add(2, std::sync::atomic::Ordering::Relaxed);
        // Changed, but too soon: not yet.
        line.refresh(t0 + STATUS_EVERY + Duration::from_secs(1), &shared, &n);
        assert!(sd.received().is_empty());
        line.refresh(t0 + STATUS_EVERY * 2, &shared, &n);
        let got = sd.received();
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with("STATUS=2 guest(s) connected; "),
            "{got:?}"
        );
    }

    #[test]
    fn a_poisoned_store_or_no_live_worker_stops_the_daemon() {
        let shared = shared();
        let (w, join) = worker::spawn(0, shared.clone(), Duration::from_micros(50)).unwrap();
        let workers = vec![w];
        assert!(fail_stop(&shared, &workers).is_ok());
        workers[0].send(WorkerMsg::Shutdown).unwrap();
        join.join().unwrap();
        assert!(matches!(
            fail_stop(&shared, &workers),
            Err(DaemonError::NoWorkers)
        ));
        shared.store.poison_for_tests();
        assert!(matches!(
            fail_stop(&shared, &workers),
            Err(DaemonError::StorePoisoned)
        ));
    }
}
