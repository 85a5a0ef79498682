//! The daemon's main thread: sockets, handshakes, the control socket, signals, housekeeping.
//!
//! Order of start-up: bind the guest and control sockets (so a second tmemd fails early and
//! clearly), build the store, start the workers, tell systemd we are ready, then serve.
//! SIGTERM or SIGINT stops the workers, removes the sockets and exits 0.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use tmem_local::{HelloLimits, PendingGuest};
use tmem_store::Store;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::control::{self, ControlConn};
use crate::sdnotify::Notifier;
use crate::worker::{self, lock, GuestConn, GuestHandle, Shared, WorkerHandle, WorkerMsg};

const GUEST_LISTENER: Token = Token(0);
const CONTROL_LISTENER: Token = Token(1);
const SIGNALS: Token = Token(2);
const FIRST_CONTROL: usize = 16;
/// Handshakes in progress at once; more connections wait in the listen backlog.
const MAX_HANDSHAKES: u32 = 16;
const MAX_CONTROL_CONNS: usize = 64;
const HOUSEKEEPING: Duration = Duration::from_millis(500);

/// Everything that can stop the daemon, each with a message that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    GuestSocket(#[from] tmem_local::LocalError),
    #[error("cannot use control socket {path}: {message}")]
    ControlSocket { path: PathBuf, message: String },
    #[error("cannot set up signal handling: {0}")]
    Signals(nix::errno::Errno),
    #[error("cannot start the event loop: {0}")]
    Poll(std::io::Error),
    #[error("cannot start worker threads: {0}")]
    Workers(std::io::Error),
}

/// Run the daemon until SIGTERM/SIGINT.
pub fn run(config: Config) -> Result<(), DaemonError> {
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
    let control_listener = bind_control(&config.control_socket)?;
    guest_listener
        .set_nonblocking(true)
        .map_err(DaemonError::Poll)?;
    control_listener
        .set_nonblocking(true)
        .map_err(DaemonError::Poll)?;

    let shared = Arc::new(Shared {
        store: Store::new(config.store.clone()),
        guests: Mutex::new(HashMap::new()),
        detached: Mutex::new(HashMap::new()),
        connected: AtomicU32::new(0),
    });
    if config.prefault {
        // Pages faulted in on the put path would cost each put ~10 µs; do it now, beside
        // serving (a put that needs a chunk still being faulted waits for that chunk only).
        let shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("tmemd-prefault".into())
            .spawn(move || {
                let t = Instant::now();
                let bytes = shared.store.prefault();
                info!(
                    mib = bytes >> 20,
                    ms = t.elapsed().as_millis() as u64,
                    "page-data memory faulted in"
                );
            });
        if let Err(e) = spawned {
            warn!("cannot start the prefault thread ({e}); memory will be faulted in on use");
        }
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
    registry
        .register(
            &mut SourceFd(&control_listener.as_raw_fd()),
            CONTROL_LISTENER,
            Interest::READABLE,
        )
        .map_err(DaemonError::Poll)?;
    registry
        .register(
            &mut SourceFd(&sigfd.as_raw_fd()),
            SIGNALS,
            Interest::READABLE,
        )
        .map_err(DaemonError::Poll)?;

    let notifier = Notifier::from_env();
    let watchdog = Notifier::watchdog_interval().map(|d| d / 2);
    let started = Instant::now();
    let handshakes = Arc::new(AtomicU32::new(0));
    let limits = HelloLimits {
        max_ring_pages: config.max_ring_pages,
        max_data_slots: config.max_data_slots,
        timeout: Duration::from_secs(2),
    };
    // The Xen control plane runs on its own thread; its heartbeat says it is making progress.
    let health = crate::health::Health::default();
    let xen = if config.xen {
        let heartbeat = health.register("xen control plane");
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
                health.unregister("xen control plane");
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
        transports: if xen.is_some() {
            vec!["local", "xen"]
        } else {
            vec!["local"]
        },
    };
    info!(
        socket = %config.socket.display(),
        control = %config.control_socket.display(),
        mem_limit = config.store.mem_limit_bytes,
        workers = config.workers,
        xen = xen.is_some(),
        "tmemd ready"
    );
    notifier.notify("READY=1\nSTATUS=serving guests");

    let mut events = Events::with_capacity(128);
    let mut controls: HashMap<usize, ControlConn> = HashMap::new();
    let mut next_control = FIRST_CONTROL;
    let mut last_housekeeping = Instant::now();
    let mut last_watchdog = Instant::now();
    'serve: loop {
        if let Err(e) = poll.poll(&mut events, Some(HOUSEKEEPING)) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            error!("event loop failed: {e}");
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
                GUEST_LISTENER => loop {
                    match guest_listener.accept() {
                        Ok((stream, _)) => start_handshake(
                            stream,
                            &shared,
                            &workers,
                            &handshakes,
                            &limits,
                            config.max_guests,
                        ),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(e) => {
                            warn!("accept on guest socket failed: {e}");
                            break;
                        }
                    }
                },
                CONTROL_LISTENER => loop {
                    match control_listener.accept() {
                        Ok((stream, _)) => {
                            if controls.len() >= MAX_CONTROL_CONNS {
                                debug!("too many control connections; closing a new one");
                                continue;
                            }
                            match ControlConn::new(stream, &ctx) {
                                Ok(mut conn) => {
                                    let token = next_control;
                                    next_control += 1;
                                    if conn.register(poll.registry(), Token(token)).is_ok() {
                                        controls.insert(token, conn);
                                    }
                                }
                                Err(e) => debug!("control connection dropped: {e}"),
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(e) => {
                            warn!("accept on control socket failed: {e}");
                            break;
                        }
                    }
                },
                Token(t) => {
                    if let Some(conn) = controls.get_mut(&t) {
                        if !conn.on_ready(&ctx) {
                            conn.deregister(poll.registry());
                            controls.remove(&t);
                        }
                    }
                }
            }
        }
        let now = Instant::now();
        if now.duration_since(last_housekeeping) >= HOUSEKEEPING {
            last_housekeeping = now;
            expire_detached(&shared, config.reattach_grace);
            controls.retain(|_, c| {
                let keep = !c.idle_too_long(now);
                if !keep {
                    c.deregister(poll.registry());
                }
                keep
            });
        }
        if let Some(interval) = watchdog {
            if now.duration_since(last_watchdog) >= interval {
                last_watchdog = now;
                notifier.notify("WATCHDOG=1");
            }
        }
    }

    notifier.notify("STOPPING=1");
    if let Some(x) = xen {
        // Before the workers stop: it waits for them to let go of its guests' rings.
        if let Err(e) = x.stop() {
            error!("{e}");
        }
    }
    for w in workers.iter() {
        w.send(WorkerMsg::Shutdown);
    }
    for j in joins {
        let _ = j.join();
    }
    let _ = std::fs::remove_file(&config.socket);
    let _ = std::fs::remove_file(&config.control_socket);
    info!("tmemd stopped");
    Ok(())
}

/// Hand a new guest connection to a short-lived thread for its handshake, so a peer that
/// sends nothing (or sends slowly) never holds up the daemon.
fn start_handshake(
    stream: UnixStream,
    shared: &Arc<Shared>,
    workers: &Arc<Vec<WorkerHandle>>,
    handshakes: &Arc<AtomicU32>,
    limits: &HelloLimits,
    max_guests: u32,
) {
    if handshakes.fetch_add(1, Ordering::AcqRel) >= MAX_HANDSHAKES {
        handshakes.fetch_sub(1, Ordering::AcqRel);
        debug!("too many handshakes in progress; dropping a connection");
        return;
    }
    let shared = shared.clone();
    let workers = workers.clone();
    let handshakes2 = handshakes.clone();
    let limits = *limits;
    let spawned = std::thread::Builder::new()
        .name("tmemd-handshake".into())
        .spawn(move || {
            handshake(stream, &shared, &workers, &limits, max_guests);
            handshakes2.fetch_sub(1, Ordering::AcqRel);
        });
    if let Err(e) = spawned {
        handshakes.fetch_sub(1, Ordering::AcqRel);
        warn!("cannot start a handshake thread: {e}");
    }
}

fn handshake(
    stream: UnixStream,
    shared: &Arc<Shared>,
    workers: &[WorkerHandle],
    limits: &HelloLimits,
    max_guests: u32,
) {
    let pending: PendingGuest = match tmem_local::read_hello(stream, limits) {
        Ok(p) => p,
        Err(e) => {
            debug!("guest handshake refused: {e}");
            return;
        }
    };
    let hello = &pending.hello;
    let (domid, instance) = (hello.domid, hello.instance);
    if shared.connected.load(Ordering::Acquire) >= max_guests {
        pending.reject(&format!(
            "tmemd already serves its maximum of {max_guests} guests"
        ));
        return;
    }
    let name = hello.name.clone();
    let (client, attach) = match shared.store.attach_client(domid, instance, &name) {
        Ok(r) => r,
        Err(e) => {
            pending.reject(&format!(
                "domain {domid} (instance {instance:#x}) is already connected: {e}"
            ));
            return;
        }
    };
    lock(&shared.detached).remove(&client);
    let guest = match pending.accept(client.0) {
        Ok(g) => g,
        Err(e) => {
            debug!(domid, "guest went away during handshake: {e}");
            shared.store.detach_client(client);
            lock(&shared.detached).insert(client, Instant::now());
            return;
        }
    };
    let kill = Arc::new(AtomicBool::new(false));
    let conn = match GuestConn::from_local(client, guest, kill.clone()) {
        Ok(c) => c,
        Err(e) => {
            warn!(domid, "guest ring unusable: {e}");
            shared.store.detach_client(client);
            lock(&shared.detached).insert(client, Instant::now());
            return;
        }
    };
    let (index, worker) = workers
        .iter()
        .enumerate()
        .min_by_key(|(_, w)| w.load.load(Ordering::Relaxed))
        .expect("at least one worker");
    debug!(domid, ?attach, worker = index, "handing guest to worker");
    shared.connected.fetch_add(1, Ordering::AcqRel);
    lock(&shared.guests).insert(
        client,
        GuestHandle {
            kill,
            worker: index,
            domid,
        },
    );
    worker.send(WorkerMsg::Add(Box::new(conn)));
}

/// Destroy clients whose connection has been gone longer than the grace period.
fn expire_detached(shared: &Shared, grace: Duration) {
    let now = Instant::now();
    let expired: Vec<_> = {
        let mut d = lock(&shared.detached);
        let expired: Vec<_> = d
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= grace)
            .map(|(c, _)| *c)
            .collect();
        for c in &expired {
            d.remove(c);
        }
        expired
    };
    for c in expired {
        // A client that reattached in the meantime is connected again: leave it.
        if lock(&shared.guests).contains_key(&c) {
            continue;
        }
        if shared.store.destroy_client(c) {
            info!(client = c.0, "reattach grace period over; client destroyed");
        }
    }
}

fn allowed_control_uids(config: &Config) -> Vec<u32> {
    let mut v = vec![0, nix::unistd::geteuid().as_raw()];
    v.extend(&config.control_uids);
    v.sort_unstable();
    v.dedup();
    v
}

/// Bind the control socket, owner-only (0600), refusing to steal it from a live tmemd.
fn bind_control(path: &Path) -> Result<UnixListener, DaemonError> {
    let err = |message: String| DaemonError::ControlSocket {
        path: path.to_owned(),
        message,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| err(format!("cannot create its directory: {e}")))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(err(
                "another tmemd is already running there; stop it first or choose another path with --control-socket".into(),
            ));
        }
        std::fs::remove_file(path).map_err(|e| err(format!("cannot remove stale socket: {e}")))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| match e.kind() {
        ErrorKind::PermissionDenied => {
            err("permission denied; run tmemd as root or choose a writable path".into())
        }
        _ => err(e.to_string()),
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| err(format!("cannot restrict its permissions: {e}")))?;
    Ok(listener)
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
