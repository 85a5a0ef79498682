//! Admission of local guests: accept, hello, identity, refusal — without letting a flood of
//! connections lock anyone out.
//!
//! Every accepted connection waits for its hello in a short-lived thread of its own. Waiting
//! connections are bounded per peer uid and in all; when a bound is reached the *oldest*
//! waiting connection of that uid (or of anyone, for the global bound) is shed with a
//! temporary refusal, never the newest. A real client sends its hello right after connecting,
//! so its connection is the newest and stops waiting within microseconds; a flood of silent
//! connections only ever evicts itself, even when it runs as the same uid (root in CI).
//! Connections with hello bytes queued but not yet read are shed last. Silent connections
//! also end at the first-byte deadline.
//!
//! A guest's identity is what the kernel says: `Identity::Local { uid, label }`, with the uid
//! from `SO_PEERCRED` and the hello's `domid` field only as a label inside that uid's
//! namespace, so a local peer can never claim a Xen domain or another user's client.
//! Every refusal reaches the peer with a reason and a class, and is logged rate-limited per
//! call site and peer uid.

use std::collections::{HashMap, VecDeque};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use tmem_local::{HelloError, HelloLimits, PendingGuest, Refusal, RefusalClass};
use tmem_store::{AttachRefused, Identity};
use tracing::{debug, info, warn};

use crate::ratelimit::RateLimiter;
use crate::sync::lock;
use crate::worker::{self, End, GuestConn, GuestHandle, Shared, WorkerHandle, WorkerMsg};

/// Connections waiting for their hello, in all.
pub const MAX_WAITING: usize = 32;
/// Connections waiting for their hello from one peer uid.
pub const MAX_WAITING_PER_UID: usize = 8;
/// Hellos being validated and attached at once (each takes microseconds; a bound all the
/// same, since every one is a thread).
const MAX_VALIDATING: u32 = 32;
/// Connections accepted per wake-up of the main loop, so a flood cannot starve its other work.
const ACCEPT_BATCH: usize = 64;
/// The whole hello must arrive within this time ...
const HELLO_TIMEOUT: Duration = Duration::from_secs(2);
/// ... and its first byte within this one.
const FIRST_BYTE: Duration = Duration::from_millis(500);

/// A connection whose hello has not arrived yet.
#[derive(Debug)]
struct Waiting {
    id: u64,
    uid: u32,
    /// A second handle on the socket, to answer and shut it down when it is shed.
    stream: UnixStream,
}

impl Waiting {
    /// Bytes the peer sent that its thread has not read yet (0 if unknown).
    fn queued(&self) -> i32 {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int into a live local; the descriptor is valid.
        let r = unsafe { libc::ioctl(self.stream.as_raw_fd(), libc::FIONREAD, &mut n) };
        if r < 0 {
            0
        } else {
            n
        }
    }
}

/// Admits local guests; owned by the main loop, shared with the handshake threads.
#[derive(Debug, Clone)]
pub struct Admission {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    workers: Arc<Vec<WorkerHandle>>,
    limits: HelloLimits,
    max_guests: u32,
    /// Oldest first.
    waiting: Mutex<VecDeque<Waiting>>,
    validating: AtomicU32,
    next_id: AtomicU64,
    log: RefusalLog,
}

impl Admission {
    pub fn new(
        shared: Arc<Shared>,
        workers: Arc<Vec<WorkerHandle>>,
        max_ring_pages: u32,
        max_data_slots: u32,
        max_guests: u32,
    ) -> Admission {
        Admission {
            inner: Arc::new(Inner {
                shared,
                workers,
                limits: HelloLimits {
                    max_ring_pages,
                    max_data_slots,
                    timeout: HELLO_TIMEOUT,
                    first_byte: FIRST_BYTE,
                },
                max_guests,
                waiting: Mutex::new(VecDeque::new()),
                validating: AtomicU32::new(0),
                next_id: AtomicU64::new(0),
                log: RefusalLog::default(),
            }),
        }
    }

    /// Accept up to a batch of connections. If the batch was used up, re-arm the listener so
    /// the main loop comes back for the rest after its other events.
    pub fn accept_batch(&self, listener: &UnixListener, registry: &Registry, token: Token) {
        for _ in 0..ACCEPT_BATCH {
            match listener.accept() {
                Ok((stream, _)) => self.admit(stream),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.inner.log.warn(
                        "accept",
                        u32::MAX,
                        &format!("accept on guest socket: {e}"),
                    );
                    return;
                }
            }
        }
        // Edge-triggered: re-registering reports the listener again if it is still readable.
        let _ = registry.reregister(
            &mut SourceFd(&listener.as_raw_fd()),
            token,
            Interest::READABLE,
        );
    }

    /// Take one new connection: make room by shedding, then wait for its hello in a thread.
    pub fn admit(&self, stream: UnixStream) {
        let inner = &self.inner;
        let Ok(peer) = tmem_local::peer_credentials(&stream) else {
            return; // the peer is already gone
        };
        let uid = peer.uid;
        if inner.validating.load(Ordering::Acquire) >= MAX_VALIDATING {
            let r = temporary(
                libc::EAGAIN,
                "tmemd is busy validating other hellos; retry shortly".into(),
            );
            inner.refuse_stream(&stream, uid, "validating-full", &r);
            return;
        }
        let Ok(dup) = stream.try_clone() else {
            return;
        };
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let shed = {
            let mut w = lock(&inner.waiting);
            let shed = victim_for(&w, uid).and_then(|i| w.remove(i));
            w.push_back(Waiting {
                id,
                uid,
                stream: dup,
            });
            shed
        };
        if let Some(v) = shed {
            let r = temporary(
                libc::EAGAIN,
                format!(
                    "too many connections waiting for a hello (uid {} has {MAX_WAITING_PER_UID} at most, all peers {MAX_WAITING}); this was the oldest: send the hello at once",
                    v.uid
                ),
            );
            inner.refuse_stream(&v.stream, v.uid, "shed", &r);
        }
        let inner2 = inner.clone();
        let spawned = std::thread::Builder::new()
            .name("tmemd-handshake".into())
            .spawn(move || inner2.handshake(id, uid, stream));
        if let Err(e) = spawned {
            if let Some(w) = inner.forget(id) {
                let r = temporary(libc::EAGAIN, "tmemd cannot start a handshake now".into());
                inner.refuse_stream(&w.stream, uid, "spawn", &r);
            }
            inner.log.warn(
                "spawn",
                uid,
                &format!("cannot start a handshake thread: {e}"),
            );
        }
    }
}

/// Which waiting connection to shed so one from `uid` can wait: none while there is room; that
/// uid's own oldest when it is at its limit; anyone's oldest when all slots are taken.
fn victim_for(w: &VecDeque<Waiting>, uid: u32) -> Option<usize> {
    let mine = w.iter().filter(|x| x.uid == uid).count();
    if mine >= MAX_WAITING_PER_UID {
        pick_victim(w, |x| x.uid == uid)
    } else if w.len() >= MAX_WAITING {
        pick_victim(w, |_| true)
    } else {
        None
    }
}

/// The oldest waiting connection matching `f`, preferring one with nothing queued (a silent
/// or stalled peer) over one whose hello is in the socket but not read yet.
fn pick_victim(w: &VecDeque<Waiting>, f: impl Fn(&Waiting) -> bool) -> Option<usize> {
    let mut fallback = None;
    for (i, x) in w.iter().enumerate().filter(|(_, x)| f(x)) {
        if x.queued() == 0 {
            return Some(i);
        }
        fallback.get_or_insert(i);
    }
    fallback
}

fn temporary(errno: i32, message: String) -> Refusal {
    Refusal {
        status: -errno,
        class: RefusalClass::Temporary,
        message,
    }
}

impl Inner {
    /// Remove a waiting connection (its hello arrived, failed or it was never started).
    fn forget(&self, id: u64) -> Option<Waiting> {
        let mut w = lock(&self.waiting);
        let i = w.iter().position(|x| x.id == id)?;
        w.remove(i)
    }

    /// The hello of `id` is in: stop waiting, unless it was shed meanwhile.
    fn claim(&self, id: u64) -> bool {
        if self.forget(id).is_none() {
            return false;
        }
        self.validating.fetch_add(1, Ordering::AcqRel);
        true
    }

    fn refuse_stream(&self, stream: &UnixStream, uid: u32, site: &'static str, r: &Refusal) {
        self.log.refusal(site, uid, r);
        tmem_local::refuse(stream, r);
    }

    fn handshake(&self, id: u64, uid: u32, stream: UnixStream) {
        let mut claimed = false;
        let res = tmem_local::read_hello_claimed(stream, &self.limits, || {
            claimed = self.claim(id);
            claimed
        });
        if !claimed {
            self.forget(id);
        }
        match res {
            Ok(pending) => self.admit_hello(pending),
            Err(HelloError::Shed) | Err(HelloError::PeerClosed) => {}
            Err(e) => self.log.refusal(
                "hello",
                uid,
                &Refusal {
                    status: e.status(),
                    class: e.class(),
                    message: e.message(),
                },
            ),
        }
        if claimed {
            self.validating.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// A valid hello: apply the daemon's policy, attach the client, hand it to a worker.
    fn admit_hello(&self, pending: PendingGuest) {
        let shared = &self.shared;
        let uid = pending.peer.uid;
        let hello = &pending.hello;
        let identity = Identity::Local {
            uid,
            label: hello.domid,
        };
        let instance = hello.instance;
        let max_guests = self.max_guests;
        // Checked and taken in one step; given back on every path that does not register.
        let slot = match shared.reserve(max_guests) {
            Ok(slot) => slot,
            Err(full) => {
                let r = temporary(libc::EAGAIN, format!("{full}; retry later"));
                self.log.refusal("max-guests", uid, &r);
                pending.refuse(&r);
                return;
            }
        };
        let name = hello.name.clone();
        let (client, attach) = match shared.store.attach(identity, instance, &name) {
            Ok(r) => r,
            Err(e) => {
                let why = match e {
                    AttachRefused::Attached(_) => "its old connection may still be closing",
                    AttachRefused::LiveTakeover { .. } => {
                        "use another label (--domid) or wait until that guest disconnects"
                    }
                };
                let r = temporary(libc::EBUSY, format!("{e}; {why}"));
                self.log.refusal("identity", uid, &r);
                pending.refuse(&r);
                return;
            }
        };
        shared.attached_as(client, identity);
        let guest = match pending.accept(client.0) {
            Ok(g) => g,
            Err(e) => {
                debug!(%identity, "guest went away during handshake: {e}");
                return shared.release(client, End::Detach);
            }
        };
        let kill = Arc::new(AtomicBool::new(false));
        let conn = match GuestConn::from_local(client, guest, kill.clone()) {
            Ok(c) => c,
            Err(e) => {
                self.log
                    .warn("ring", uid, &format!("{identity}: ring unusable: {e}"));
                return shared.release(client, End::Detach);
            }
        };
        let Some(index) = worker::pick_worker(&self.workers) else {
            self.log.warn(
                "no-worker",
                uid,
                "no worker thread is left to serve a guest",
            );
            return shared.release(client, End::Detach);
        };
        debug!(%identity, ?attach, worker = index, "handing guest to worker");
        let handle = GuestHandle {
            kill,
            worker: index,
            domid: identity_label(identity),
        };
        shared.register(slot, client, handle);
        if self.workers[index]
            .send(WorkerMsg::Add(Box::new(conn)))
            .is_err()
        {
            self.log.warn(
                "no-worker",
                uid,
                "the guest's worker thread has ended; disconnecting it",
            );
            shared.release(client, End::Detach);
        }
    }
}

fn identity_label(identity: Identity) -> u32 {
    match identity {
        Identity::Xen { domid } => domid,
        Identity::Local { label, .. } => label,
    }
}

/// Refusal and error lines a peer can trigger, limited per call site and per peer uid so one
/// noisy peer cannot silence the others.
#[derive(Debug, Default)]
struct RefusalLog {
    limiters: Mutex<HashMap<(&'static str, u32), RateLimiter>>,
}

/// Distinct (site, uid) limiters kept; beyond it the map starts afresh (uids are few).
const MAX_LIMITERS: usize = 4096;

impl RefusalLog {
    fn allow(&self, site: &'static str, uid: u32) -> Option<u64> {
        let mut m = lock(&self.limiters);
        if m.len() >= MAX_LIMITERS && !m.contains_key(&(site, uid)) {
            m.clear();
        }
        m.entry((site, uid))
            .or_insert_with(|| RateLimiter::new(5, Duration::from_secs(2)))
            .allow()
    }

    fn refusal(&self, site: &'static str, uid: u32, r: &Refusal) {
        if let Some(suppressed) = self.allow(site, uid) {
            info!(
                uid,
                status = r.status,
                class = %r.class,
                suppressed,
                "local guest refused: {}",
                r.message
            );
        }
    }

    fn warn(&self, site: &'static str, uid: u32, msg: &str) {
        if let Some(suppressed) = self.allow(site, uid) {
            warn!(uid, suppressed, "{msg}");
        }
    }
}

/// Raise this process's soft limit on open files to the hard limit: every guest holds a few
/// descriptors, and the default soft limit (1024) would cap guests far below `max_guests`.
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one struct into a live local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        debug!(
            "cannot read RLIMIT_NOFILE: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    let before = lim.rlim_cur;
    if before >= lim.rlim_max {
        debug!(
            soft = before,
            hard = lim.rlim_max,
            "RLIMIT_NOFILE already at its hard limit"
        );
        return;
    }
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: setrlimit reads one struct from a live local.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        debug!(
            "cannot raise RLIMIT_NOFILE: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    debug!(
        from = before,
        to = lim.rlim_cur,
        "RLIMIT_NOFILE soft limit raised"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A waiting entry for `uid`, and the peer end (to queue bytes, and to keep it open).
    fn entry(id: u64, uid: u32) -> (Waiting, UnixStream) {
        let (ours, peer) = UnixStream::pair().unwrap();
        (
            Waiting {
                id,
                uid,
                stream: ours,
            },
            peer,
        )
    }

    #[test]
    fn a_uid_at_its_limit_sheds_its_own_oldest_silent_connection() {
        let mut w = VecDeque::new();
        let mut peers = Vec::new();
        // uid 7 fills its share; uid 8 has one older connection than all of them.
        let (e, p) = entry(0, 8);
        w.push_back(e);
        peers.push(p);
        for id in 1..=MAX_WAITING_PER_UID as u64 {
            let (e, p) = entry(id, 7);
            w.push_back(e);
            peers.push(p);
        }
        assert_eq!(victim_for(&w, 9), None, "room for another uid");
        // uid 7's oldest (id 1) goes, not uid 8's older one.
        assert_eq!(victim_for(&w, 7).map(|i| w[i].id), Some(1));
        // A connection whose hello is queued but unread is passed over for a silent one.
        peers[1].write_all(b"hello").unwrap();
        assert_eq!(victim_for(&w, 7).map(|i| w[i].id), Some(2));
        // If every one of them has bytes queued, the oldest goes all the same (hard bound).
        for p in &mut peers[2..] {
            p.write_all(b"x").unwrap();
        }
        assert_eq!(victim_for(&w, 7).map(|i| w[i].id), Some(1));
    }

    #[test]
    fn a_full_table_sheds_the_oldest_of_anyone() {
        let mut w = VecDeque::new();
        let mut peers = Vec::new();
        for id in 0..MAX_WAITING as u64 {
            // Many uids, each below its own limit.
            let (e, p) = entry(id, id as u32 % 5);
            w.push_back(e);
            peers.push(p);
        }
        assert_eq!(victim_for(&w, 100).map(|i| w[i].id), Some(0));
        peers[0].write_all(b"h").unwrap();
        assert_eq!(victim_for(&w, 100).map(|i| w[i].id), Some(1));
    }
}
