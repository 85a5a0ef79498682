//! The control socket: administrators (the `tmem` CLI) talk to tmemd here.
//!
//! Connections are non-blocking and served from the main thread: a client that sends
//! nothing, sends garbage or never reads can only time out or be closed; it cannot hold
//! up the daemon or other administrators. Peers are checked once, at accept, by their
//! credentials (root, the daemon's own user, or configured uids).

use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use tmem_control::{
    decode_request, encode_reply, ErrorKind as Kind, OkReply, Op, Reply, Target, CONTROL_VERSION,
    MAX_REQUEST_BYTES,
};
use tmem_store::{ClientId, Identity};
use tracing::{debug, info};

use crate::daemon::{read_some, write_some};
use crate::worker::{lock, Shared, WorkerHandle};

/// A control connection that has done nothing for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Replies queued for a client that does not read; past this it is closed.
const MAX_PENDING_OUT: usize = 16 << 20;

/// What request handling needs from the daemon.
#[derive(Debug)]
pub struct Context {
    pub shared: Arc<Shared>,
    pub workers: Arc<Vec<WorkerHandle>>,
    pub started: Instant,
    pub allowed_uids: Vec<u32>,
    /// The transports serving guests, as reported by `tmem status`.
    pub transports: Vec<&'static str>,
}

#[derive(Debug)]
pub struct ControlConn {
    stream: UnixStream,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    last_activity: Instant,
    /// Close once the output is flushed (after a refusal, or end of input).
    closing: bool,
}

impl ControlConn {
    pub fn new(stream: UnixStream, ctx: &Context) -> std::io::Result<ControlConn> {
        stream.set_nonblocking(true)?;
        let cred =
            nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
                .map_err(std::io::Error::from)?;
        let mut conn = ControlConn {
            stream,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            last_activity: Instant::now(),
            closing: false,
        };
        if !ctx.allowed_uids.contains(&cred.uid()) {
            info!(
                uid = cred.uid(),
                pid = cred.pid(),
                "control connection refused"
            );
            conn.outbuf = encode_reply(Reply::Error {
                kind: Kind::PermissionDenied,
                message: format!(
                    "user id {} may not administer tmemd; run tmem as root",
                    cred.uid()
                ),
            });
            conn.closing = true;
        }
        Ok(conn)
    }

    pub fn register(&mut self, registry: &Registry, token: Token) -> std::io::Result<()> {
        registry.register(
            &mut SourceFd(&self.stream.as_raw_fd()),
            token,
            Interest::READABLE | Interest::WRITABLE,
        )
    }

    pub fn deregister(&mut self, registry: &Registry) {
        let _ = registry.deregister(&mut SourceFd(&self.stream.as_raw_fd()));
    }

    pub fn idle_too_long(&self, now: Instant) -> bool {
        now.duration_since(self.last_activity) > IDLE_TIMEOUT
    }

    /// Handle readiness; returns false when the connection should be dropped.
    pub fn on_ready(&mut self, ctx: &Context) -> bool {
        self.last_activity = Instant::now();
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
                let reply = handle_line(&line[..line.len() - 1], ctx);
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

fn handle_line(line: &[u8], ctx: &Context) -> Reply {
    match decode_request(line) {
        Ok(op) => {
            debug!(?op, "control request");
            match execute(op, ctx) {
                Ok(ok) => Reply::Ok(ok),
                Err((kind, message)) => Reply::Error { kind, message },
            }
        }
        Err((kind, message)) => Reply::Error { kind, message },
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
        }),
        Op::List { target } => {
            let mut stats = store.stats();
            if target != Target::All {
                let ids = resolve(ctx, &target)?;
                stats
                    .clients
                    .retain(|c| ids.contains(&ClientId(c.client_id)));
            }
            Ok(OkReply::Stats(Box::new(stats)))
        }
        Op::Freeze { target } => for_each(ctx, &target, |c| store.set_frozen(c, true)),
        Op::Thaw { target } => for_each(ctx, &target, |c| store.set_frozen(c, false)),
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
            for_each(ctx, &target, |c| {
                if let Some(w) = weight {
                    store.set_weight(c, w)?;
                }
                if let Some(cap) = cap_pages {
                    store.set_cap_pages(c, cap)?;
                }
                if let Some(on) = compress {
                    store.set_compress(c, on)?;
                }
                Ok(())
            })
        }
        Op::SharedAuth {
            target,
            uuid,
            allow,
        } => match target {
            Target::All => {
                // Xen's cli_id=ALL: switch authorisation checking off (allow) or on.
                store.set_shared_auth_required(!allow);
                Ok(OkReply::Done { clients: 0 })
            }
            Target::DomId(domid) => store
                .set_shared_auth(Identity::Xen { domid }, uuid, allow)
                .map(|_| OkReply::Done { clients: 1 })
                .map_err(|e| (Kind::Refused, format!("domain {domid}: {e}"))),
            Target::Local { uid, label } => {
                let who = Identity::Local { uid, label };
                store
                    .set_shared_auth(who, uuid, allow)
                    .map(|_| OkReply::Done { clients: 1 })
                    .map_err(|e| (Kind::Refused, format!("client {who}: {e}")))
            }
            Target::Name(_) => {
                let ids = resolve(ctx, &target)?;
                let stats = store.stats();
                for c in stats
                    .clients
                    .iter()
                    .filter(|c| ids.contains(&ClientId(c.client_id)))
                {
                    store
                        .set_shared_auth(c.identity(), uuid, allow)
                        .map_err(|e| (Kind::Refused, format!("client {}: {e}", c.identity())))?;
                }
                Ok(OkReply::Done {
                    clients: ids.len() as u32,
                })
            }
        },
        Op::Freeable => {
            let pages = store.freeable_pages();
            Ok(OkReply::Freeable {
                pages,
                kib: pages * (tmem_abi::PAGE_SIZE as u64 / 1024),
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
                info!(client = c.0, "client destroyed by administrator");
            }
            Ok(OkReply::Done {
                clients: ids.len() as u32,
            })
        }
    }
}

/// Apply `f` to every client the target names.
fn for_each(
    ctx: &Context,
    target: &Target,
    mut f: impl FnMut(ClientId) -> Result<(), tmem_abi::TmemError>,
) -> OpResult {
    let ids = resolve(ctx, target)?;
    for &c in &ids {
        f(c).map_err(|e| (Kind::Refused, e.to_string()))?;
    }
    Ok(OkReply::Done {
        clients: ids.len() as u32,
    })
}

/// The clients a target names; an unknown domain is an error, `All` may be empty.
fn resolve(ctx: &Context, target: &Target) -> Result<Vec<ClientId>, (Kind, String)> {
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
