//! The local transport: tmem-local's socket handshake plus a tmem-ring frontend ring.

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tmem_abi::{cmd, status, ResponseEntry};
use tmem_local::ConnectParams;
use tmem_ring::{AdaptiveSpin, FrontendRing, Layout, PollPolicy, SharedMem};

use crate::transport::{Call, Connection, Payload, Reply, Transport};
use crate::FrontError;

/// Bits of a request id that name its in-flight tag (the rest is a sequence number).
const TAG_BITS: u32 = 20;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;

/// Requests are published (and the backend kicked, if it sleeps) at least this often while a
/// batch is being pushed: publishing only once the whole window is written would leave the
/// backend idle while the guest copies pages in, and the guest idle while the backend works
/// through them (the two would alternate instead of overlapping).
const PUBLISH_EVERY: usize = 16;
/// While the machine is crowded, a guest pushing a batch yields its CPU this often (a
/// multiple of [`PUBLISH_EVERY`]).
const YIELD_EVERY: usize = 64;

/// How long one sleep on the notify eventfd lasts before the socket is checked again.
const SLEEP_SLICE: Duration = Duration::from_millis(20);

/// Reach tmemd over its Unix socket.
#[derive(Debug, Clone)]
pub struct LocalTransport {
    pub path: PathBuf,
    pub domid: u32,
    /// Domain instance: persistent pools are reattached by `(instance, uuid)`.
    pub instance: u64,
    pub name: String,
    pub layout: Layout,
    /// Most requests in flight (also bounded by ring entries and data slots). 1: synchronous.
    pub window: usize,
    /// Spin before sleeping on the notify eventfd.
    pub poll: PollPolicy,
    /// A call with no progress for this long means the backend is dead.
    pub call_timeout: Duration,
    /// How long the handshake may take.
    pub connect_timeout: Duration,
}

impl LocalTransport {
    /// Defaults: 4 ring pages (128 entries), 128 data slots, window 128, the ring's default
    /// poll policy, 5 s call timeout.
    pub fn new(path: impl Into<PathBuf>, domid: u32, instance: u64, name: &str) -> Self {
        LocalTransport {
            path: path.into(),
            domid,
            instance,
            name: name.to_owned(),
            layout: Layout {
                ring_pages: 4,
                data_slots: 128,
            },
            window: 128,
            poll: PollPolicy::default(),
            call_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

impl Transport for LocalTransport {
    fn connect(&mut self) -> Result<Box<dyn Connection>, FrontError> {
        let p = ConnectParams {
            domid: self.domid,
            instance: self.instance,
            name: self.name.clone(),
            layout: self.layout,
        };
        let c = tmem_local::connect_with_timeout(&self.path, &p, self.connect_timeout).map_err(
            |e| match e {
                tmem_local::LocalError::Rejected {
                    status,
                    class,
                    message,
                } => FrontError::Refused {
                    permanent: class == tmem_local::RefusalClass::Permanent,
                    reason: format!("{message} ({status})"),
                },
                e => FrontError::Connect {
                    what: format!("{}", self.path.display()),
                    source: Some(Box::new(e)),
                },
            },
        )?;
        c.stream
            .set_nonblocking(true)
            .map_err(|e| FrontError::Disconnected(format!("socket: {e}")))?;
        let ring = FrontendRing::init(c.mem, c.layout)
            .map_err(|e| FrontError::Disconnected(format!("ring: {e}")))?;
        let conn = RingConnection::new(
            ring,
            c.kick,
            c.notify,
            c.stream,
            c.client_id,
            self.window,
            self.poll,
            self.call_timeout,
        );
        Ok(Box::new(conn))
    }

    fn describe(&self) -> String {
        format!("local:{}", self.path.display())
    }
}

/// How a ring connection kicks its backend, sleeps until notified, and learns that the
/// backend is gone. [`LocalSignal`] uses eventfds and a socket; the Xen transport an event
/// channel and xenstore.
pub trait Signal: Send + std::fmt::Debug {
    /// Tell the backend that requests were published.
    fn kick(&mut self);
    /// Sleep until the backend notifies or `timeout` passes. `Ok(true)`: notified.
    fn wait(&mut self, timeout: Duration) -> Result<bool, FrontError>;
    /// Non-blocking liveness check: `Err(Disconnected)` if the backend is gone.
    fn check(&mut self) -> Result<(), FrontError>;
    /// Orderly close: the guest is leaving for good.
    fn goodbye(&mut self) {}
}

/// The local transport's signals: the kick eventfd, and the socket on which tmemd sends its
/// notify bytes and whose EOF means tmemd is gone. The notify eventfd of the hello is also
/// watched, for backends that signal through it (tmemd itself does not; see
/// `tmem_local::notify_peer`).
#[derive(Debug)]
pub struct LocalSignal {
    kick: OwnedFd,
    notify: OwnedFd,
    stream: UnixStream,
}

impl LocalSignal {
    /// Consume what the backend sent on the socket: notify bytes are fine, end of file or any
    /// other byte means the backend is gone or broken. True if a notify byte was read.
    fn consume_socket(&mut self) -> Result<bool, FrontError> {
        let mut notified = false;
        let mut buf = [0u8; 64];
        // Bounded: a backend that floods the socket cannot keep us here.
        for _ in 0..64 {
            match (&self.stream).read(&mut buf) {
                Ok(0) => return Err(FrontError::Disconnected("tmemd closed the socket".into())),
                Ok(n) => {
                    if buf[..n].iter().any(|&b| b != tmem_local::wire::NOTIFY) {
                        return Err(FrontError::Disconnected(
                            "tmemd sent unexpected bytes on the socket".into(),
                        ));
                    }
                    notified = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(FrontError::Disconnected(format!("socket: {e}"))),
            }
        }
        Ok(notified)
    }
}

impl Signal for LocalSignal {
    fn kick(&mut self) {
        tmem_local::kick(self.kick.as_fd());
    }

    fn wait(&mut self, timeout: Duration) -> Result<bool, FrontError> {
        let ready =
            tmem_local::wait_readable(&[self.stream.as_fd(), self.notify.as_fd()], Some(timeout))
                .map_err(|e| FrontError::Disconnected(format!("waiting for tmemd: {e}")))?;
        if !ready {
            return Ok(false);
        }
        let by_eventfd = tmem_local::drain_eventfd(self.notify.as_fd());
        let by_socket = self.consume_socket()?;
        Ok(by_eventfd || by_socket)
    }

    /// Non-blocking look at the socket: `Err` if the daemon closed it (or wrote garbage).
    fn check(&mut self) -> Result<(), FrontError> {
        self.consume_socket().map(|_| ())
    }

    fn goodbye(&mut self) {
        tmem_local::goodbye(&self.stream);
    }
}

/// One live connection over a frontend ring and a [`Signal`] (by default eventfds plus a
/// stream socket whose EOF means the backend is gone). The local transport builds one from
/// its handshake; tests build one over `HeapMem` and a socket pair; the Xen transport over
/// granted pages and an event channel.
#[derive(Debug)]
pub struct RingConnection<M: SharedMem, S: Signal = LocalSignal> {
    ring: FrontendRing<M>,
    signal: S,
    client_id: u32,
    cap: usize,
    seq: u64,
    /// tag -> (index of the call in the current batch, full request id)
    inflight: Vec<Option<(usize, u64)>>,
    free: Vec<u32>,
    /// The poll policy's spin, shortened while spinning does not pay.
    spin: AdaptiveSpin,
    timeout: Duration,
}

impl<M: SharedMem> RingConnection<M, LocalSignal> {
    /// `stream` must be non-blocking. `window` is capped by ring entries and data slots.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ring: FrontendRing<M>,
        kick: OwnedFd,
        notify: OwnedFd,
        stream: UnixStream,
        client_id: u32,
        window: usize,
        poll: PollPolicy,
        timeout: Duration,
    ) -> RingConnection<M> {
        let signal = LocalSignal {
            kick,
            notify,
            stream,
        };
        RingConnection::with_signal(ring, signal, client_id, window, poll, timeout)
    }
}

impl<M: SharedMem, S: Signal> RingConnection<M, S> {
    /// A connection over any [`Signal`]. `window` is capped by ring entries and data slots.
    pub fn with_signal(
        ring: FrontendRing<M>,
        signal: S,
        client_id: u32,
        window: usize,
        poll: PollPolicy,
        timeout: Duration,
    ) -> RingConnection<M, S> {
        let layout = ring.layout();
        let cap = window
            .max(1)
            .min(ring.entries() as usize)
            .min(layout.data_slots.max(1) as usize)
            .min(TAG_MASK as usize);
        RingConnection {
            ring,
            signal,
            client_id,
            cap,
            seq: 0,
            inflight: vec![None; cap],
            free: (0..cap as u32).rev().collect(),
            spin: AdaptiveSpin::new(poll),
            timeout,
        }
    }

    /// Consume every published response. Returns how many calls completed.
    fn drain(&mut self, calls: &mut [Call<'_>]) -> Result<usize, FrontError> {
        let mut n = 0;
        loop {
            let rsp = match self.ring.try_poll_response() {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(n),
                Err(e) => return Err(FrontError::Disconnected(format!("ring: {e}"))),
            };
            self.complete(calls, rsp)?;
            n += 1;
        }
    }

    fn complete(&mut self, calls: &mut [Call<'_>], rsp: ResponseEntry) -> Result<(), FrontError> {
        let tag = (rsp.id & TAG_MASK) as usize;
        let (idx, id) = match self.inflight.get(tag).copied().flatten() {
            Some(x) if x.1 == rsp.id => x,
            _ => {
                return Err(FrontError::Disconnected(format!(
                    "tmemd answered request id {:#x}, which is not in flight",
                    rsp.id
                )))
            }
        };
        debug_assert_eq!(id, rsp.id);
        self.inflight[tag] = None;
        self.free.push(tag as u32);
        let call = &mut calls[idx];
        if let Payload::Get(page) = &mut call.data {
            if rsp.status == status::SUCCESS {
                self.ring.read_slot(tag as u32, page);
            }
        }
        call.reply = Some(Reply {
            status: rsp.status,
            flags: rsp.flags,
        });
        Ok(())
    }

    /// Wait for at least one response (spin, then sleep on the notify eventfd).
    fn wait(&mut self, since: Instant) -> Result<(), FrontError> {
        loop {
            let ring = &self.ring;
            if self.spin.spin_until(|| ring.has_responses()) {
                return Ok(());
            }
            if self.ring.prepare_to_sleep() {
                return Ok(());
            }
            let woke = self.signal.wait(SLEEP_SLICE)?;
            if self.ring.has_responses() {
                return Ok(());
            }
            self.signal.check()?;
            if !woke && since.elapsed() >= self.timeout {
                return Err(FrontError::Disconnected(format!(
                    "no answer from tmemd in {:?}",
                    self.timeout
                )));
            }
        }
    }

    fn fail(&mut self, e: FrontError) -> Result<(), FrontError> {
        // The connection is dead: forget what was in flight.
        for s in self.inflight.iter_mut() {
            *s = None;
        }
        self.free = (0..self.cap as u32).rev().collect();
        Err(e)
    }
}

impl<M: SharedMem + 'static, S: Signal + 'static> Connection for RingConnection<M, S> {
    fn call_batch(&mut self, calls: &mut [Call<'_>]) -> Result<(), FrontError> {
        let n = calls.len();
        let mut next = 0;
        let mut done = 0;
        let mut progress = Instant::now();
        while done < n {
            let mut pushed = 0usize;
            while next < n && self.ring.space() > 0 {
                let Some(tag) = self.free.pop() else { break };
                self.seq = self.seq.wrapping_add(1);
                let id = (self.seq << TAG_BITS) | u64::from(tag);
                let call = &mut calls[next];
                let mut req = call.req;
                req.id = id;
                match &call.data {
                    Payload::Put(page) => {
                        self.ring.write_slot(tag, page);
                        req.arg[3] = (req.arg[3] & 0xffff_ffff) | (u64::from(tag) << 32);
                    }
                    Payload::Get(_) => {
                        req.arg[3] = (req.arg[3] & 0xffff_ffff) | (u64::from(tag) << 32);
                    }
                    Payload::None => {}
                }
                debug_assert!(
                    !matches!(req.cmd, cmd::PUT_PAGE | cmd::GET_PAGE)
                        || !matches!(call.data, Payload::None)
                );
                if let Err(e) = self.ring.push_request(&req) {
                    self.free.push(tag);
                    return self.fail(FrontError::Disconnected(format!("ring: {e}")));
                }
                self.inflight[tag as usize] = Some((next, id));
                next += 1;
                pushed += 1;
                if pushed.is_multiple_of(PUBLISH_EVERY) {
                    if self.ring.publish() {
                        self.signal.kick();
                    }
                    if self.spin.crowded() && pushed.is_multiple_of(YIELD_EVERY) {
                        // Copying a window of pages in takes a few hundred µs: on a crowded
                        // machine, let a thread waiting for this CPU (the backend, or another
                        // guest's synchronous call) in between, not only at the end.
                        std::thread::yield_now();
                    }
                }
            }
            if pushed > 0 && self.ring.publish() {
                self.signal.kick();
            }
            let got = match self.drain(calls) {
                Ok(g) => g,
                Err(e) => return self.fail(e),
            };
            if got > 0 {
                done += got;
                progress = Instant::now();
                continue;
            }
            if let Err(e) = self.wait(progress) {
                return self.fail(e);
            }
        }
        Ok(())
    }

    fn is_alive(&mut self) -> bool {
        self.signal.check().is_ok()
    }

    fn window(&self) -> usize {
        self.cap
    }

    fn client_id(&self) -> u64 {
        u64::from(self.client_id)
    }

    fn goodbye(&mut self) {
        self.signal.goodbye();
    }
}
