//! The control socket: administrators (the `tmem` CLI) talk to tmemd here.
//!
//! Connections are non-blocking and served from the main thread: a client that sends
//! nothing, sends garbage or never reads can only time out or be closed; it cannot hold
//! up the daemon or other administrators. Peers are checked once, at accept, by their
//! kernel-reported credentials: root, the daemon's own user and `control_uids` administer;
//! `control_readonly_uids` and `control_readonly_gids` (a monitoring agent) may only read
//! (`Op::is_read_only`), and are told so, with the command they tried, when they ask more.
//! Every administrative action is logged once, at info, with the peer's uid and pid, what
//! it asked and what came of it.
//!
//! The administrator must always get in, even when other processes hold every connection:
//! - a connection is idle from its last *complete* request (a byte now and then does not
//!   keep it), and is closed after [`IDLE_TIMEOUT`];
//! - when the table is full, a newcomer from root or the daemon's own user displaces the
//!   connection whose last request is oldest;
//! - other allowed users share at most [`MAX_DELEGATED_CONNS`] connections, at most
//!   [`MAX_CONNS_PER_DELEGATED_UID`] each (a newcomer over its own share displaces its own
//!   oldest), so they can never take the administrator's place;
//! - a peer that cannot be let in is told "busy" (not dropped silently), so `tmem` can say so.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use tmem_control::{
    decode_request, encode_reply, ErrorKind as Kind, MetricsSnapshot, OkReply, Op, Reply, Target,
    CONTROL_VERSION, MAX_REQUEST_BYTES,
};
use tmem_store::{ClientId, Identity};
use tracing::{debug, info, warn};

use crate::daemon::{read_some, write_some};
use crate::ratelimit::RateLimiter;
use crate::settings::Keeper;
use crate::transfer;
use crate::worker::latency::Latency;
use crate::worker::{lock, Shared, WorkerHandle};

/// A connection with no complete request for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Control connections open at once.
pub const MAX_CONTROL_CONNS: usize = 64;
/// Connections that users other than root and the daemon's own user may hold together.
pub const MAX_DELEGATED_CONNS: usize = 48;
/// Connections one such user may hold.
pub const MAX_CONNS_PER_DELEGATED_UID: usize = 8;
/// Replies queued for a client that does not read; past this it is closed.
const MAX_PENDING_OUT: usize = 16 << 20;

/// What request handling needs from the daemon.
#[derive(Debug)]
pub struct Context {
    pub shared: Arc<Shared>,
    pub workers: Arc<Vec<WorkerHandle>>,
    pub started: Instant,
    pub allowed_uids: Vec<u32>,
    /// Peers with these uids may only read.
    pub readonly_uids: Vec<u32>,
    /// Peers whose effective gid is one of these may only read.
    pub readonly_gids: Vec<u32>,
    /// The transports serving guests, as reported by `tmem status`.
    pub transports: Vec<&'static str>,
    /// Where page memory is and what the start recovered, as reported by `tmem status`.
    pub page_memory: tmem_control::PageMemoryStatus,
}

/// The control listener and its connections, with the admission policy above.
#[derive(Debug)]
pub struct ControlServer {
    listener: UnixListener,
    conns: HashMap<usize, ControlConn>,
    next_token: usize,
    first_token: usize,
    /// Root and this uid are administrators: never refused for lack of room.
    own_uid: u32,
    refusal_log: RateLimiter,
}

impl ControlServer {
    /// Serve `listener`; connection tokens are `first_token` and up.
    pub fn new(listener: UnixListener, first_token: usize) -> std::io::Result<ControlServer> {
        listener.set_nonblocking(true)?;
        Ok(ControlServer {
            listener,
            conns: HashMap::new(),
            next_token: first_token,
            first_token,
            own_uid: nix::unistd::geteuid().as_raw(),
            refusal_log: RateLimiter::new(5, Duration::from_secs(10)),
        })
    }

    pub fn register_listener(&self, registry: &Registry, token: Token) -> std::io::Result<()> {
        registry.register(
            &mut SourceFd(&self.listener.as_raw_fd()),
            token,
            Interest::READABLE,
        )
    }

    /// Whether `token` belongs to a control connection.
    pub fn owns(&self, token: Token) -> bool {
        token.0 >= self.first_token
    }

    /// Accept every pending connection (the listener is edge-triggered).
    pub fn accept_all(&mut self, registry: &Registry, ctx: &Context) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => self.admit(stream, registry, ctx),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!("accept on control socket failed: {e}");
                    break;
                }
            }
        }
    }

    fn admit(&mut self, stream: UnixStream, registry: &Registry, ctx: &Context) {
        let peer = match peer_credentials(&stream) {
            Ok(peer) => peer,
            Err(e) => {
                debug!("control connection dropped: {e}");
                return;
            }
        };
        let uid = peer.uid;
        let Some(role) = role(&peer, ctx) else {
            self.log_refusal(uid, "not allowed");
            refuse(
                &stream,
                Kind::PermissionDenied,
                format!("user id {uid} may not use tmemd's control socket; run tmem as root"),
            );
            return;
        };
        if let Err(why) = self.make_room(uid, registry) {
            self.log_refusal(uid, why);
            refuse(
                &stream,
                Kind::Busy,
                format!("tmemd is busy: {why}; try again in a moment"),
            );
            return;
        }
        let token = self.next_token;
        self.next_token += 1;
        match ControlConn::new(stream, peer, role) {
            Ok(mut conn) => {
                if conn.register(registry, Token(token)).is_ok() {
                    self.conns.insert(token, conn);
                }
            }
            Err(e) => debug!("control connection dropped: {e}"),
        }
    }

    /// Make room for one more connection from `uid` (see [`admission`]); `Err` says why
    /// there is none.
    fn make_room(&mut self, uid: u32, registry: &Registry) -> Result<(), &'static str> {
        let own_uid = self.own_uid;
        let open: Vec<OpenConn> = self
            .conns
            .iter()
            .map(|(&token, c)| OpenConn {
                token,
                uid: c.uid,
                last_request: c.last_request,
            })
            .collect();
        match admission(uid, |u| u == 0 || u == own_uid, &open) {
            Admission::Admit => Ok(()),
            Admission::Busy(why) => Err(why),
            Admission::Displace(token) => {
                if let Some(mut c) = self.conns.remove(&token) {
                    if self.refusal_log.allow().is_some() {
                        info!(
                            uid = c.uid,
                            idle_ms = c.last_request.elapsed().as_millis() as u64,
                            "control socket full; closed the connection idle the longest"
                        );
                    }
                    c.deregister(registry);
                }
                Ok(())
            }
        }
    }

    fn log_refusal(&mut self, uid: u32, why: &str) {
        if let Some(suppressed) = self.refusal_log.allow() {
            warn!(uid, suppressed, "control connection refused: {why}");
        }
    }

    /// Handle readiness of the connection behind `token`.
    pub fn on_ready(&mut self, token: Token, registry: &Registry, ctx: &Context) {
        if let Some(conn) = self.conns.get_mut(&token.0) {
            if !conn.on_ready(ctx, &mut self.refusal_log) {
                conn.deregister(registry);
                if let Some(mut conn) = self.conns.remove(&token.0) {
                    if let Some(p) = conn.handoff.take() {
                        let who = format!("uid {} (pid {})", conn.peer.uid, conn.peer.pid);
                        transfer::spawn(
                            p,
                            conn.stream,
                            conn.outbuf,
                            conn.inbuf,
                            ctx.shared.clone(),
                            who,
                        );
                    }
                }
            }
        }
    }

    /// Close connections idle too long.
    pub fn housekeeping(&mut self, registry: &Registry, now: Instant) {
        self.conns.retain(|_, c| {
            let keep = !c.idle_too_long(now);
            if !keep {
                c.deregister(registry);
            }
            keep
        });
    }

    /// Connections open now.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }
}

/// An open connection, as admission sees it.
#[derive(Debug, Clone, Copy)]
struct OpenConn {
    token: usize,
    uid: u32,
    last_request: Instant,
}

/// What to do with a newcomer from `uid`.
#[derive(Debug, PartialEq, Eq)]
enum Admission {
    Admit,
    /// Close this connection (the one whose last request is oldest) and admit.
    Displace(usize),
    Busy(&'static str),
}

/// The admission policy (module documentation): administrators always get in, displacing
/// the connection idle the longest when the table is full; delegated users share a bounded
/// part of it.
fn admission(uid: u32, is_admin: impl Fn(u32) -> bool, open: &[OpenConn]) -> Admission {
    let oldest = |f: &dyn Fn(&OpenConn) -> bool| {
        open.iter()
            .filter(|c| f(c))
            .min_by_key(|c| c.last_request)
            .map(|c| c.token)
    };
    if is_admin(uid) {
        if open.len() < MAX_CONTROL_CONNS {
            return Admission::Admit;
        }
        return oldest(&|_| true).map_or(
            Admission::Busy("every control connection is in use"),
            Admission::Displace,
        );
    }
    let own = open.iter().filter(|c| c.uid == uid).count();
    if own >= MAX_CONNS_PER_DELEGATED_UID {
        if let Some(t) = oldest(&|c| c.uid == uid) {
            return Admission::Displace(t);
        }
    }
    let delegated = open.iter().filter(|c| !is_admin(c.uid)).count();
    if delegated >= MAX_DELEGATED_CONNS || open.len() >= MAX_CONTROL_CONNS {
        return Admission::Busy("every control connection open to non-root users is in use");
    }
    Admission::Admit
}

/// Who is on the other end of a control connection, as the kernel says (`SO_PEERCRED`, taken
/// at connect).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    /// Effective gid (supplementary groups are not reported by `SO_PEERCRED`).
    pub gid: u32,
    pub pid: i32,
}

/// What a peer may do on the control socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Every request.
    Admin,
    /// Only requests that change nothing (`Op::is_read_only`).
    ReadOnly,
}

/// The role of a peer, `None` when it may not use the control socket at all. An
/// administrator uid keeps its rights even if it is also listed as read-only.
pub fn role(peer: &Peer, ctx: &Context) -> Option<Role> {
    if ctx.allowed_uids.contains(&peer.uid) {
        Some(Role::Admin)
    } else if ctx.readonly_uids.contains(&peer.uid) || ctx.readonly_gids.contains(&peer.gid) {
        Some(Role::ReadOnly)
    } else {
        None
    }
}

fn peer_credentials(stream: &UnixStream) -> std::io::Result<Peer> {
    nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .map(|c| Peer {
            uid: c.uid(),
            gid: c.gid(),
            pid: c.pid(),
        })
        .map_err(std::io::Error::from)
}

/// Answer a peer that is not let in, without waiting for it: the reply is small enough for an
/// empty socket buffer, and the peer reads it even after its own write fails.
fn refuse(stream: &UnixStream, kind: Kind, message: String) {
    let _ = stream.set_nonblocking(true);
    let _ = write_some(&mut &*stream, &encode_reply(Reply::Error { kind, message }));
}

#[derive(Debug)]
pub struct ControlConn {
    stream: UnixStream,
    uid: u32,
    peer: Peer,
    role: Role,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    /// When the last complete request arrived (or the connection was accepted): idleness
    /// and eviction count from here, so trickling bytes does not keep a connection.
    last_request: Instant,
    /// Close once the output is flushed (end of input, or an oversized request).
    closing: bool,
    /// A save or restore this connection asked for: it leaves the event loop for a thread.
    handoff: Option<transfer::Prepared>,
}

impl ControlConn {
    fn new(stream: UnixStream, peer: Peer, role: Role) -> std::io::Result<ControlConn> {
        stream.set_nonblocking(true)?;
        Ok(ControlConn {
            stream,
            uid: peer.uid,
            peer,
            role,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            last_request: Instant::now(),
            closing: false,
            handoff: None,
        })
    }

    fn register(&mut self, registry: &Registry, token: Token) -> std::io::Result<()> {
        registry.register(
            &mut SourceFd(&self.stream.as_raw_fd()),
            token,
            Interest::READABLE | Interest::WRITABLE,
        )
    }

    fn deregister(&mut self, registry: &Registry) {
        let _ = registry.deregister(&mut SourceFd(&self.stream.as_raw_fd()));
    }

    fn idle_too_long(&self, now: Instant) -> bool {
        now.duration_since(self.last_request) > IDLE_TIMEOUT
    }

    /// Handle readiness; returns false when the connection should be dropped.
    fn on_ready(&mut self, ctx: &Context, refusal_log: &mut RateLimiter) -> bool {
        if !self.closing {
            match read_some(&mut self.stream, &mut self.inbuf, MAX_REQUEST_BYTES) {
                Ok(None) => self.closing = true,
                Ok(Some(_)) => {}
                Err(e) => {
                    debug!("control connection read failed: {e}");
                    return false;
                }
            }
            while let Some(pos) = self.inbuf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.inbuf.drain(..=pos).collect();
                self.last_request = Instant::now();
                if let Some(reply) = self.try_transfer(&line[..line.len() - 1], ctx) {
                    match reply {
                        None => return false, // handed off: the server spawns it
                        Some(reply) => {
                            self.outbuf.extend(encode_reply(reply));
                            continue;
                        }
                    }
                }
                let reply = handle_line(
                    &line[..line.len() - 1],
                    ctx,
                    self.peer,
                    self.role,
                    refusal_log,
                );
                self.outbuf.extend(encode_reply(reply));
                if self.outbuf.len() > MAX_PENDING_OUT {
                    return false;
                }
            }
            if self.inbuf.len() >= MAX_REQUEST_BYTES {
                self.outbuf.extend(encode_reply(Reply::Error {
                    kind: Kind::Malformed,
                    message: format!("request longer than {MAX_REQUEST_BYTES} bytes"),
                }));
                self.inbuf.clear();
                self.closing = true;
            }
        }
        match write_some(&mut self.stream, &self.outbuf) {
            Ok(n) => {
                self.outbuf.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::BrokenPipe => return false,
            Err(e) => {
                debug!("control connection write failed: {e}");
                return false;
            }
        }
        !(self.closing && self.outbuf.is_empty())
    }
}

impl ControlConn {
    /// A save or restore from a peer allowed to send it: `None` if the line is something
    /// else; `Some(None)` once it is prepared and set aside for [`transfer::spawn`];
    /// `Some(Some(reply))` when it fails its checks (answered here, audited).
    fn try_transfer(&mut self, line: &[u8], ctx: &Context) -> Option<Option<Reply>> {
        let op = decode_request(line).ok()?;
        if !op.is_transfer() || permit(&op, &self.peer, self.role).is_err() {
            return None;
        }
        match transfer::prepare(&op, &ctx.shared.store, |t| resolve(ctx, t)) {
            Ok(p) => {
                info!(
                    op = op.name(),
                    "administrative action by uid {} (pid {}): {}: started",
                    self.peer.uid,
                    self.peer.pid,
                    describe(&op)
                );
                self.handoff = Some(p);
                Some(None)
            }
            Err((kind, message)) => {
                warn!(
                    op = op.name(),
                    "administrative action by uid {} (pid {}): {}: failed ({kind:?}): {message}",
                    self.peer.uid,
                    self.peer.pid,
                    describe(&op)
                );
                Some(Some(Reply::Error { kind, message }))
            }
        }
    }
}

fn handle_line(
    line: &[u8],
    ctx: &Context,
    peer: Peer,
    role: Role,
    refusal_log: &mut RateLimiter,
) -> Reply {
    let op = match decode_request(line) {
        Ok(op) => op,
        Err((kind, message)) => return Reply::Error { kind, message },
    };
    debug!(?op, uid = peer.uid, pid = peer.pid, "control request");
    if op.is_read_only() {
        return match execute(op, ctx) {
            Ok(ok) => Reply::Ok(ok),
            Err((kind, message)) => Reply::Error { kind, message },
        };
    }
    if let Err(message) = permit(&op, &peer, role) {
        if let Some(suppressed) = refusal_log.allow() {
            warn!(
                op = op.name(),
                suppressed,
                "administrative request refused: uid {} (pid {}) has read-only access: {}",
                peer.uid,
                peer.pid,
                describe(&op)
            );
        }
        return Reply::Error {
            kind: Kind::PermissionDenied,
            message,
        };
    }
    let what = describe(&op);
    let name = op.name();
    let outcome = execute(op, ctx);
    // The audit line: one per administrative action, whatever its outcome. Who and what are
    // in the message (what journalctl shows); `op` is also a field (TMEMD_OP in the journal).
    match &outcome {
        Ok(ok) => info!(
            op = name,
            "administrative action by uid {} (pid {}): {what}: {}",
            peer.uid,
            peer.pid,
            result_text(ok)
        ),
        Err((kind, message)) => warn!(
            op = name,
            "administrative action by uid {} (pid {}): {what}: failed ({kind:?}): {message}",
            peer.uid,
            peer.pid
        ),
    }
    match outcome {
        Ok(ok) => Reply::Ok(ok),
        Err((kind, message)) => Reply::Error { kind, message },
    }
}

/// Whether a peer with `role` may send `op`; `Err` is the message it gets.
pub fn permit(op: &Op, peer: &Peer, role: Role) -> Result<(), String> {
    if role == Role::Admin || op.is_read_only() {
        return Ok(());
    }
    Err(format!(
        "user id {} has read-only access to tmemd: `tmem {}` needs an administrator \
         (root, or a uid in control_uids)",
        peer.uid,
        op.name()
    ))
}

/// An administrative request in words, for the audit line.
fn describe(op: &Op) -> String {
    let target = |t: &Target| match t {
        Target::All => "all clients".to_string(),
        Target::DomId(d) => format!("domain {d}"),
        Target::Local { uid, label } => format!("local:{uid}:{label}"),
        Target::Name(n) => format!("domain named {n:?}"),
    };
    match op {
        Op::Freeze { target: t } => format!("freeze {}", target(t)),
        Op::Thaw { target: t } => format!("thaw {}", target(t)),
        Op::Set {
            target: t,
            weight,
            cap_pages,
            compress,
        } => {
            let mut what = Vec::new();
            if let Some(w) = weight {
                what.push(format!("weight={w}"));
            }
            if let Some(c) = cap_pages {
                what.push(format!("cap_pages={c}"));
            }
            if let Some(p) = compress {
                what.push(format!("compress={}", u8::from(*p)));
            }
            format!("set {} on {}", what.join(" "), target(t))
        }
        Op::SharedAuth {
            target: Target::All,
            allow,
            ..
        } => format!(
            "shared-auth for all: authorisation {}",
            if *allow {
                "no longer required"
            } else {
                "required"
            }
        ),
        Op::SharedAuth {
            target: t,
            uuid,
            allow,
        } => format!(
            "shared-auth {} {} for shared pool {}",
            if *allow { "allow" } else { "deny" },
            target(t),
            tmem_control::format_uuid(*uuid)
        ),
        Op::Flush { kib } => format!("flush {kib} KiB"),
        Op::Destroy { target: t } => format!("destroy {}", target(t)),
        Op::Save { target: t, live } => {
            format!("save {}{}", target(t), if *live { " (live)" } else { "" })
        }
        Op::Restore {
            as_identity: Some(i),
        } => format!("restore as {i}"),
        other => other.name().to_string(),
    }
}

fn result_text(ok: &OkReply) -> String {
    match ok {
        OkReply::Done { clients } => format!("done ({clients} client(s))"),
        OkReply::Flushed { kib } => format!("flushed {kib} KiB"),
        other => format!("{other:?}"),
    }
}

type OpResult = Result<OkReply, (Kind, String)>;

fn execute(op: Op, ctx: &Context) -> OpResult {
    let store = &ctx.shared.store;
    match op {
        Op::Status => Ok(OkReply::Status {
            daemon_version: env!("CARGO_PKG_VERSION").to_string(),
            control_version: CONTROL_VERSION,
            uptime_secs: ctx.started.elapsed().as_secs(),
            guests_connected: ctx.shared.connected.load(Ordering::Relaxed),
            transports: ctx.transports.iter().map(|t| t.to_string()).collect(),
            page_memory: Some(ctx.page_memory.clone()),
        }),
        Op::List { target } => {
            let mut stats = store.stats();
            stats.swap_disks = swap_disks(ctx, &stats);
            stats.parked = parked(ctx);
            if target != Target::All {
                let ids = resolve(ctx, &target)?;
                stats
                    .clients
                    .retain(|c| ids.contains(&ClientId(c.client_id)));
                stats.swap_disks.retain(|s| {
                    s.client_id
                        .is_some_and(|c| ids.iter().any(|i| u64::from(i.0) == c))
                });
                stats.parked.retain(|s| {
                    s.client_id
                        .is_some_and(|c| ids.iter().any(|i| u64::from(i.0) == c))
                });
            }
            Ok(OkReply::Stats(Box::new(stats)))
        }
        Op::Freeze { target } => administer(ctx, |keeper| {
            for_each(ctx, &target, |c, who| {
                store.set_frozen(c, true)?;
                keeper.change_client(who, |s| s.frozen = Some(true));
                Ok(())
            })
        }),
        Op::Thaw { target } => administer(ctx, |keeper| {
            for_each(ctx, &target, |c, who| {
                store.set_frozen(c, false)?;
                keeper.change_client(who, |s| s.frozen = Some(false));
                Ok(())
            })
        }),
        Op::Set {
            target,
            weight,
            cap_pages,
            compress,
        } => {
            if weight.is_none() && cap_pages.is_none() && compress.is_none() {
                return Err((
                    Kind::InvalidArgument,
                    "nothing to set: give a weight, a cap or a compress flag".into(),
                ));
            }
            administer(ctx, |keeper| {
                for_each(ctx, &target, |c, who| {
                    if let Some(w) = weight {
                        store.set_weight(c, w)?;
                        keeper.change_client(who, |s| s.weight = Some(w));
                    }
                    if let Some(cap) = cap_pages {
                        store.set_cap_pages(c, cap)?;
                        keeper.change_client(who, |s| s.cap_pages = Some(cap));
                    }
                    if let Some(on) = compress {
                        store.set_compress(c, on)?;
                        keeper.change_client(who, |s| s.compress = Some(on));
                    }
                    Ok(())
                })
            })
        }
        Op::SharedAuth {
            target,
            uuid,
            allow,
        } => administer(ctx, |keeper| {
            let mut authorise = |who: Identity| {
                store
                    .set_shared_auth(who, uuid, allow)
                    .map_err(|e| match who {
                        Identity::Xen { domid } => (Kind::Refused, format!("domain {domid}: {e}")),
                        Identity::Local { .. } => (Kind::Refused, format!("client {who}: {e}")),
                    })?;
                keeper.change_shared_auth(who, uuid, allow);
                Ok::<_, (Kind, String)>(())
            };
            match &target {
                Target::All => {
                    // Xen's cli_id=ALL: switch authorisation checking off (allow) or on.
                    store.set_shared_auth_required(!allow);
                    keeper.change_shared_auth_required(!allow);
                    Ok(OkReply::Done { clients: 0 })
                }
                Target::DomId(domid) => {
                    authorise(Identity::Xen { domid: *domid })?;
                    Ok(OkReply::Done { clients: 1 })
                }
                Target::Local { uid, label } => {
                    authorise(Identity::Local {
                        uid: *uid,
                        label: *label,
                    })?;
                    Ok(OkReply::Done { clients: 1 })
                }
                Target::Name(_) => {
                    let ids = resolve(ctx, &target)?;
                    for (_, who) in identities(ctx, &ids) {
                        authorise(who)?;
                    }
                    Ok(OkReply::Done {
                        clients: ids.len() as u32,
                    })
                }
            }
        }),
        // Allowed peers' transfers never get here (ControlConn::try_transfer takes them).
        Op::Save { .. } | Op::Restore { .. } => Err((
            Kind::Malformed,
            "save and restore run over a connection of their own".into(),
        )),
        Op::Metrics => Ok(OkReply::Metrics(Box::new(MetricsSnapshot {
            stats: {
                let mut stats = store.stats();
                stats.swap_disks = swap_disks(ctx, &stats);
                stats
            },
            uptime_secs: ctx.started.elapsed().as_secs(),
            guests_connected: ctx.shared.connected.load(Ordering::Relaxed),
            page_memory: Some(ctx.page_memory.clone()),
            latency: Latency::sum(ctx.workers.iter().map(|w| &*w.latency)),
            ring_batches: Some(Latency::sum_batches(
                ctx.workers.iter().map(|w| &*w.latency),
            )),
            daemon_version: env!("CARGO_PKG_VERSION").to_string(),
        }))),
        Op::Freeable => {
            // Memory actually used: compressed pages release less than a frame each.
            Ok(OkReply::Freeable {
                pages: store.freeable_pages(),
                kib: store.freeable_bytes() / 1024,
            })
        }
        Op::Flush { kib } => Ok(OkReply::Flushed {
            kib: store.flush_kib(kib),
        }),
        Op::Destroy { target } => {
            if target == Target::All {
                return Err((
                    Kind::InvalidArgument,
                    "destroy takes one domain, not all".into(),
                ));
            }
            let ids = resolve(ctx, &target)?;
            for &c in &ids {
                store.destroy_client(c);
                lock(&ctx.shared.detached).remove(&c);
                if let Some(h) = lock(&ctx.shared.guests).get(&c) {
                    h.kill.store(true, Ordering::Relaxed);
                    if let Some(w) = ctx.workers.get(h.worker) {
                        let _ = w.waker.wake();
                    }
                }
            }
            Ok(OkReply::Done {
                clients: ids.len() as u32,
            })
        }
    }
}

/// Run an administrative change with the settings held (so a client attaching meanwhile
/// gets either the old settings and then the change, or the new ones), then save them: a
/// change that is in effect but could not be saved is reported, since it would not survive
/// a restart.
/// Parked Xen domains, with the seconds each has left.
fn parked(ctx: &Context) -> Vec<tmem_store::ParkedStats> {
    let now = std::time::Instant::now();
    lock(&ctx.shared.parked)
        .values()
        .map(|p| {
            let mut s = p.stats.clone();
            s.secs_left = p.deadline.saturating_duration_since(now).as_secs();
            s
        })
        .collect()
}

/// The swap disks as their threads last reported them, with the pages each holds in memory
/// (its pool's page count in this snapshot).
fn swap_disks(ctx: &Context, stats: &tmem_store::StoreStats) -> Vec<tmem_store::SwapDiskStats> {
    let disks: Vec<_> = lock(&ctx.shared.swap_disks).values().cloned().collect();
    disks
        .iter()
        .map(|d| {
            let mut s = lock(d).clone();
            s.pages_in_memory = match (s.client_id, s.pool_id) {
                (Some(c), Some(p)) => stats
                    .clients
                    .iter()
                    .find(|x| u64::from(x.client_id) == c)
                    .and_then(|x| x.pools.iter().find(|q| q.pool_id == p))
                    .map_or(0, |q| q.counters.pages),
                _ => 0,
            };
            s
        })
        .collect()
}

fn administer(ctx: &Context, f: impl FnOnce(&mut Keeper) -> OpResult) -> OpResult {
    let mut keeper = lock(&ctx.shared.settings);
    let outcome = f(&mut keeper);
    // Also after an error: changes made to the clients before it are in effect.
    if !keeper.is_dirty() {
        return outcome;
    }
    match keeper.save() {
        Ok(()) => outcome,
        Err(e) => {
            warn!("{e}");
            // The operation's own error says more; else say the change will not last.
            outcome?;
            Err((
                Kind::Refused,
                format!("the change is in effect but will not survive a restart of tmemd: {e}"),
            ))
        }
    }
}

/// Apply `f` to every client the target names, with its identity.
fn for_each(
    ctx: &Context,
    target: &Target,
    mut f: impl FnMut(ClientId, Identity) -> Result<(), tmem_abi::TmemError>,
) -> OpResult {
    let ids = resolve(ctx, target)?;
    for (c, who) in identities(ctx, &ids) {
        f(c, who).map_err(|e| (Kind::Refused, e.to_string()))?;
    }
    Ok(OkReply::Done {
        clients: ids.len() as u32,
    })
}

/// The identities of these clients (a client destroyed meanwhile is left out).
fn identities(ctx: &Context, ids: &[ClientId]) -> Vec<(ClientId, Identity)> {
    let stats = ctx.shared.store.stats();
    ids.iter()
        .filter_map(|&c| {
            stats
                .clients
                .iter()
                .find(|s| s.client_id == c.0)
                .map(|s| (c, s.identity()))
        })
        .collect()
}

/// The clients a target names; an unknown domain is an error, `All` may be empty.
pub(crate) fn resolve(ctx: &Context, target: &Target) -> Result<Vec<ClientId>, (Kind, String)> {
    let store = &ctx.shared.store;
    match target {
        Target::All => Ok(store
            .stats()
            .clients
            .iter()
            .map(|c| ClientId(c.client_id))
            .collect()),
        Target::DomId(d) => store.client_by_domid(*d).map(|c| vec![c]).ok_or_else(|| {
            (
                Kind::UnknownDomain,
                format!("domain {d} has no tmem client; `tmem list` shows the domains tmemd knows"),
            )
        }),
        Target::Local { uid, label } => {
            let who = Identity::Local {
                uid: *uid,
                label: *label,
            };
            store
                .client_by_identity(who)
                .map(|c| vec![c])
                .ok_or_else(|| {
                    (
                        Kind::UnknownDomain,
                        format!(
                            "{who} has no tmem client; `tmem list` shows the clients tmemd knows"
                        ),
                    )
                })
        }
        Target::Name(n) => {
            let ids: Vec<_> = store
                .stats()
                .clients
                .iter()
                .filter(|c| &c.name == n)
                .map(|c| ClientId(c.client_id))
                .collect();
            match ids.len() {
                0 => Err((
                    Kind::UnknownDomain,
                    format!(
                        "no tmem client is named '{n}'; `tmem list` shows the domains tmemd knows"
                    ),
                )),
                1 => Ok(ids),
                k => Err((
                    Kind::InvalidArgument,
                    format!("{k} clients are named '{n}'; give a domain id instead"),
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conns(uids: &[u32]) -> Vec<OpenConn> {
        let t0 = Instant::now();
        uids.iter()
            .enumerate()
            .map(|(i, &uid)| OpenConn {
                token: i,
                uid,
                // Token 0 is the oldest.
                last_request: t0 + Duration::from_millis(i as u64),
            })
            .collect()
    }

    fn admin(uid: u32) -> bool {
        uid == 0
    }

    fn context(backing: crate::settings::Backing) -> Context {
        use crate::settings::{Keeper, Settings};
        let store = tmem_store::Store::new(tmem_store::StoreConfig {
            mem_limit_bytes: 64 * tmem_abi::PAGE_SIZE as u64,
            ..tmem_store::StoreConfig::default()
        });
        let keeper = Keeper::load(Settings::default(), backing).unwrap();
        Context {
            shared: Arc::new(Shared::with_settings(store, keeper)),
            workers: Arc::new(Vec::new()),
            started: Instant::now(),
            allowed_uids: vec![0],
            readonly_uids: vec![65534],
            readonly_gids: vec![4242],
            transports: vec!["local"],
            page_memory: tmem_control::PageMemoryStatus {
                origin: "heap".into(),
                durable: false,
                inherited: false,
                path: None,
                settings: String::new(),
                recovery: None,
            },
        }
    }

    #[test]
    fn every_administrative_change_is_saved_and_a_failed_save_is_reported() {
        use crate::settings::Backing;
        let dir = std::env::temp_dir().join(format!("tmemd-control-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("pages.settings.json");
        let _ = std::fs::remove_file(&path);
        let ctx = context(Backing::File(path.clone()));
        ctx.shared.store.attach_client(3, 1, "web").unwrap();
        let ok = |op| assert!(matches!(execute(op, &ctx), Ok(OkReply::Done { .. })));
        ok(Op::Set {
            target: Target::DomId(3),
            weight: Some(4),
            cap_pages: Some(99),
            compress: None,
        });
        ok(Op::Freeze {
            target: Target::Name("web".into()),
        });
        ok(Op::SharedAuth {
            target: Target::DomId(7),
            uuid: [1, 2],
            allow: true,
        });
        let saved = std::fs::read_to_string(&path).unwrap();
        let v: serde_json::Value = serde_json::from_str(&saved).unwrap();
        assert_eq!(v["clients"]["3"]["weight"], 4, "{saved}");
        assert_eq!(v["clients"]["3"]["cap_pages"], 99, "{saved}");
        assert_eq!(v["clients"]["3"]["frozen"], true, "{saved}");
        assert_eq!(
            v["clients"]["7"]["shared_auth"][0],
            tmem_control::format_uuid([1, 2]),
            "{saved}"
        );
        assert!(ctx.shared.store.stats().clients[0].frozen);

        // Nowhere to save: the change is made, and the administrator hears it will not last.
        let ctx = context(Backing::File(dir.join("missing-dir").join("s.json")));
        ctx.shared.store.attach_client(3, 1, "web").unwrap();
        // A request that changes nothing saves nothing, and reports its own error.
        let e = execute(
            Op::Freeze {
                target: Target::DomId(99),
            },
            &ctx,
        )
        .unwrap_err();
        assert_eq!(e.0, Kind::UnknownDomain, "{}", e.1);
        let e = execute(
            Op::Thaw {
                target: Target::DomId(3),
            },
            &ctx,
        )
        .unwrap_err();
        assert_eq!(e.0, Kind::Refused);
        assert!(e.1.contains("will not survive a restart"), "{}", e.1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn read_only_peers_may_read_and_nothing_else() {
        let ctx = context(crate::settings::Backing::Memory);
        let peer = |uid, gid| Peer { uid, gid, pid: 1 };
        assert_eq!(role(&peer(0, 0), &ctx), Some(Role::Admin));
        assert_eq!(role(&peer(65534, 65534), &ctx), Some(Role::ReadOnly));
        assert_eq!(role(&peer(1000, 4242), &ctx), Some(Role::ReadOnly));
        assert_eq!(role(&peer(1000, 1000), &ctx), None);
        // Listed as both: the administrator's rights win.
        let mut both = context(crate::settings::Backing::Memory);
        both.readonly_uids.push(0);
        assert_eq!(role(&peer(0, 0), &both), Some(Role::Admin));

        let ro = peer(65534, 65534);
        let mut log = RateLimiter::new(5, Duration::from_secs(10));
        ctx.shared.store.attach_client(3, 1, "web").unwrap();
        for op in [
            Op::Status,
            Op::List {
                target: Target::All,
            },
            Op::Freeable,
            Op::Metrics,
        ] {
            let line = tmem_control::encode_request(&op);
            let r = handle_line(&line[..line.len() - 1], &ctx, ro, Role::ReadOnly, &mut log);
            assert!(matches!(r, Reply::Ok(_)), "{op:?}: {r:?}");
        }
        let freeze = Op::Freeze {
            target: Target::DomId(3),
        };
        let line = tmem_control::encode_request(&freeze);
        match handle_line(&line[..line.len() - 1], &ctx, ro, Role::ReadOnly, &mut log) {
            Reply::Error { kind, message } => {
                assert_eq!(kind, Kind::PermissionDenied);
                assert_eq!(
                    message,
                    "user id 65534 has read-only access to tmemd: `tmem freeze` needs an \
                     administrator (root, or a uid in control_uids)"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(
            !ctx.shared.store.stats().clients[0].frozen,
            "nothing changed"
        );
        let r = handle_line(
            &line[..line.len() - 1],
            &ctx,
            peer(0, 0),
            Role::Admin,
            &mut log,
        );
        assert!(
            matches!(r, Reply::Ok(OkReply::Done { clients: 1 })),
            "{r:?}"
        );
        assert!(ctx.shared.store.stats().clients[0].frozen);
    }

    #[test]
    fn administrators_displace_the_oldest_when_full() {
        let full = conns(&[0; MAX_CONTROL_CONNS]);
        assert_eq!(admission(0, admin, &full), Admission::Displace(0));
        assert_eq!(admission(0, admin, &full[1..]), Admission::Admit);
    }

    #[test]
    fn delegated_users_cannot_take_the_administrators_place() {
        let full = conns(&[0; MAX_CONTROL_CONNS]);
        assert!(matches!(admission(7, admin, &full), Admission::Busy(_)));
        let delegated: Vec<u32> = (0..MAX_DELEGATED_CONNS as u32)
            .map(|i| 100 + i % 8)
            .collect();
        let open = conns(&delegated);
        assert!(matches!(admission(200, admin, &open), Admission::Busy(_)));
        // Root still gets in, and so would it with the rest of the table full.
        assert_eq!(admission(0, admin, &open), Admission::Admit);
    }

    #[test]
    fn a_delegated_user_over_its_share_displaces_its_own_oldest() {
        let mut uids = vec![0, 5];
        uids.extend([9; MAX_CONNS_PER_DELEGATED_UID]);
        let open = conns(&uids);
        assert_eq!(admission(9, admin, &open), Admission::Displace(2));
        assert_eq!(admission(5, admin, &open), Admission::Admit);
    }
}
