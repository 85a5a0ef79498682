//! A xenstore client speaking the wire protocol directly: over xenstored's Unix socket in
//! dom0, or `/dev/xen/xenbus` (the kernel's proxy) in a domU.
//!
//! Requests are strictly sequential (one outstanding at a time), so any message that is not a
//! watch event is the answer to the outstanding request. Watch events that arrive meanwhile
//! are queued; a daemon polls [`Xs::as_raw_fd`] for readability, calls [`Xs::pump`] and takes
//! events with [`Xs::take_event`]. The descriptor is non-blocking; requests wait with `poll`
//! up to a timeout, after which the connection is considered broken (a late answer could
//! otherwise be taken for the next request's).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::sys::poll_fd;
use crate::wire::{self, check_path, join_nul, split_nul, ty, Decoder, Message, Perm, WireError};

/// Where xenstored listens in dom0, in the order tried (Debian's libxenstore uses the second).
pub const SOCKET_PATHS: [&str; 2] = ["/run/xenstored/socket", "/var/run/xenstored/socket"];
/// The kernel's xenstore device (domU, or dom0 without a socket).
pub const DEVICE_PATHS: [&str; 2] = ["/dev/xen/xenbus", "/proc/xen/xenbus"];

/// How many times [`Xs::transaction`] retries a transaction that ended with `EAGAIN`.
pub const TRANSACTION_RETRIES: u32 = 16;

/// A xenstore transaction id (0: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tx(pub u32);

impl Tx {
    pub const NONE: Tx = Tx(0);
}

/// A fired watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub path: String,
    pub token: String,
}

#[derive(Debug, thiserror::Error)]
pub enum XsError {
    #[error("cannot open xenstore at {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("xenstore I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("xenstore connection closed")]
    Closed,
    #[error("no answer from xenstore within {0:?}")]
    Timeout(Duration),
    #[error("xenstore connection is broken after an earlier failure")]
    Broken,
    #[error(transparent)]
    Wire(#[from] WireError),
    /// xenstored answered `XS_ERROR` with this errno name (`ENOENT`, `EACCES`, `EAGAIN`, ...).
    #[error("xenstore {op} {path}: {errno}")]
    Errno {
        op: &'static str,
        path: String,
        errno: String,
    },
    #[error("transaction still conflicting after {0} retries")]
    Conflict(u32),
}

impl XsError {
    /// The errno name of an `XS_ERROR` answer.
    pub fn errno(&self) -> Option<&str> {
        match self {
            XsError::Errno { errno, .. } => Some(errno),
            _ => None,
        }
    }
    pub fn is_enoent(&self) -> bool {
        self.errno() == Some("ENOENT")
    }
    pub fn is_eagain(&self) -> bool {
        self.errno() == Some("EAGAIN")
    }
}

#[derive(Debug)]
enum Conn {
    Socket(UnixStream),
    Device(File),
}

impl Conn {
    fn fd(&self) -> RawFd {
        match self {
            Conn::Socket(s) => s.as_raw_fd(),
            Conn::Device(f) => f.as_raw_fd(),
        }
    }
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Socket(s) => s.read(buf),
            Conn::Device(f) => f.read(buf),
        }
    }
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Socket(s) => s.write(buf),
            Conn::Device(f) => f.write(buf),
        }
    }
}

/// A xenstore connection.
#[derive(Debug)]
pub struct Xs {
    conn: Conn,
    what: PathBuf,
    dec: Decoder,
    next_req: u32,
    events: VecDeque<WatchEvent>,
    events_dropped: bool,
    timeout: Duration,
    broken: bool,
}

/// Most watch events kept unread; beyond this the oldest are dropped (watchers re-read
/// state anyway, so an event is a hint, never the data) and [`Xs::take_events_dropped`] says so.
pub const MAX_QUEUED_EVENTS: usize = 4096;
/// Most bytes one [`Xs::pump`] reads (about a thousand small watch events).
pub const MAX_PUMP_BYTES: usize = 64 * 1024;

impl Xs {
    /// Connect the usual way: `$XENSTORED_PATH`, then the dom0 sockets, then the device.
    pub fn open() -> Result<Xs, XsError> {
        let mut last = None;
        let env = std::env::var_os("XENSTORED_PATH").map(PathBuf::from);
        let sockets = env
            .iter()
            .cloned()
            .chain(SOCKET_PATHS.iter().map(PathBuf::from));
        for p in sockets {
            if !p.exists() {
                continue;
            }
            if p.starts_with("/dev") || p.starts_with("/proc") {
                match Xs::open_device(&p) {
                    Ok(x) => return Ok(x),
                    Err(e) => last = Some(e),
                }
                continue;
            }
            match Xs::open_socket(&p) {
                Ok(x) => return Ok(x),
                Err(e) => last = Some(e),
            }
        }
        for p in DEVICE_PATHS {
            let p = Path::new(p);
            if !p.exists() {
                continue;
            }
            match Xs::open_device(p) {
                Ok(x) => return Ok(x),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| XsError::Open {
            path: PathBuf::from(SOCKET_PATHS[0]),
            source: std::io::Error::new(
                ErrorKind::NotFound,
                "no xenstored socket and no /dev/xen/xenbus",
            ),
        }))
    }

    pub fn open_socket(path: &Path) -> Result<Xs, XsError> {
        let s = UnixStream::connect(path).map_err(|source| XsError::Open {
            path: path.to_owned(),
            source,
        })?;
        Xs::from_stream(s, path)
    }

    pub fn open_device(path: &Path) -> Result<Xs, XsError> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| XsError::Open {
                path: path.to_owned(),
                source,
            })?;
        Ok(Xs::new(Conn::Device(f), path))
    }

    /// Use a connected stream (tests use one end of a socket pair with [`crate::fake`]).
    pub fn from_stream(s: UnixStream, what: &Path) -> Result<Xs, XsError> {
        s.set_nonblocking(true)?;
        Ok(Xs::new(Conn::Socket(s), what))
    }

    fn new(conn: Conn, what: &Path) -> Xs {
        Xs {
            conn,
            what: what.to_owned(),
            dec: Decoder::default(),
            next_req: 1,
            events: VecDeque::new(),
            events_dropped: false,
            timeout: Duration::from_secs(10),
            broken: false,
        }
    }

    /// Where this connection goes.
    pub fn describe(&self) -> String {
        self.what.display().to_string()
    }

    /// How long a request may wait for its answer (default 10 s).
    pub fn set_timeout(&mut self, t: Duration) {
        self.timeout = t;
    }

    /// The descriptor to poll for readability (watch events).
    pub fn as_raw_fd(&self) -> RawFd {
        self.conn.fd()
    }

    /// The descriptor, borrowed (for safe poll wrappers).
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.conn {
            Conn::Socket(s) => s.as_fd(),
            Conn::Device(f) => f.as_fd(),
        }
    }

    /// How many watch events are queued.
    pub fn queued_events(&self) -> usize {
        self.events.len()
    }

    /// Read what is available without blocking (at most [`MAX_PUMP_BYTES`], so a peer that
    /// keeps sending cannot keep the caller here; poll again for the rest) and queue watch
    /// events. An error means the connection is unusable.
    pub fn pump(&mut self) -> Result<(), XsError> {
        if self.broken {
            return Err(XsError::Broken);
        }
        let mut budget = MAX_PUMP_BYTES;
        while budget > 0 {
            match self.read_available()? {
                0 => break,
                n => budget = budget.saturating_sub(n),
            }
        }
        while let Some(m) = self.decode()? {
            self.stray(m);
        }
        Ok(())
    }

    /// The oldest queued watch event.
    pub fn take_event(&mut self) -> Option<WatchEvent> {
        self.events.pop_front()
    }

    /// Whether events are queued.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// Whether events were dropped from a full queue since the last call. A watcher that sees
    /// `true` must re-read everything it watches (events are hints, and some are gone).
    pub fn take_events_dropped(&mut self) -> bool {
        std::mem::take(&mut self.events_dropped)
    }

    fn decode(&mut self) -> Result<Option<Message>, XsError> {
        self.dec.next_message().map_err(|e| {
            self.broken = true;
            XsError::Wire(e)
        })
    }

    /// One read; how many bytes came in (0: nothing available now).
    fn read_available(&mut self) -> Result<usize, XsError> {
        let mut buf = [0u8; 4096 + 16];
        loop {
            return match self.conn.read(&mut buf) {
                Ok(0) => {
                    self.broken = true;
                    Err(XsError::Closed)
                }
                Ok(n) => {
                    self.dec.push(&buf[..n]);
                    Ok(n)
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(0),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.broken = true;
                    Err(XsError::Io(e))
                }
            };
        }
    }

    /// A message outside a request: a watch event (queued) or noise (ignored).
    fn stray(&mut self, m: Message) {
        if m.ty != ty::WATCH_EVENT {
            return;
        }
        if let Ok(parts) = split_nul(&m.payload) {
            if parts.len() >= 2 {
                if self.events.len() >= MAX_QUEUED_EVENTS {
                    self.events.pop_front();
                    self.events_dropped = true;
                }
                self.events.push_back(WatchEvent {
                    path: parts[0].clone(),
                    token: parts[1].clone(),
                });
            }
        }
    }

    /// Send one request and wait for its answer. `op`/`path` name it in errors.
    fn request(
        &mut self,
        op: &'static str,
        path: &str,
        t: u32,
        tx: Tx,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, XsError> {
        if self.broken {
            return Err(XsError::Broken);
        }
        let req_id = self.next_req;
        self.next_req = self.next_req.wrapping_add(1);
        let bytes = Message {
            ty: t,
            req_id,
            tx_id: tx.0,
            payload,
        }
        .encode()?;
        let deadline = Instant::now() + self.timeout;
        let r = self.exchange(&bytes, deadline);
        let m = match r {
            Ok(m) => m,
            Err(e) => {
                self.broken = true;
                return Err(e);
            }
        };
        if m.ty == ty::ERROR {
            let errno = split_nul(&m.payload)
                .ok()
                .and_then(|v| v.into_iter().next())
                .unwrap_or_else(|| "EIO".into());
            return Err(XsError::Errno {
                op,
                path: path.to_owned(),
                errno,
            });
        }
        Ok(m.payload)
    }

    fn exchange(&mut self, bytes: &[u8], deadline: Instant) -> Result<Message, XsError> {
        // The device wants a whole message per write; the socket takes partial writes.
        let mut done = 0;
        while done < bytes.len() {
            match self.conn.write(&bytes[done..]) {
                Ok(0) => return Err(XsError::Closed),
                Ok(n) => done += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.wait(libc::POLLOUT, deadline)?;
                }
                Err(e) => return Err(XsError::Io(e)),
            }
        }
        loop {
            while let Some(m) = self.decode()? {
                if m.ty == ty::WATCH_EVENT {
                    self.stray(m);
                } else {
                    return Ok(m);
                }
            }
            if self.read_available()? == 0 {
                self.wait(libc::POLLIN, deadline)?;
            }
        }
    }

    fn wait(&self, events: i16, deadline: Instant) -> Result<(), XsError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(XsError::Timeout(self.timeout));
        }
        poll_fd(self.conn.fd(), events, Some(left))?;
        Ok(())
    }

    // ---- operations ------------------------------------------------------------------------

    /// The value of a node; `Ok(None)` if it does not exist.
    pub fn read(&mut self, tx: Tx, path: &str) -> Result<Option<Vec<u8>>, XsError> {
        check_path(path)?;
        match self.request("read", path, ty::READ, tx, join_nul(&[path.as_bytes()])) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_enoent() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// [`Xs::read`] as UTF-8 text (invalid UTF-8 reads as absent garbage: `Some` lossy).
    pub fn read_string(&mut self, tx: Tx, path: &str) -> Result<Option<String>, XsError> {
        Ok(self
            .read(tx, path)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    pub fn write(&mut self, tx: Tx, path: &str, value: &[u8]) -> Result<(), XsError> {
        check_path(path)?;
        let mut p = path.as_bytes().to_vec();
        p.push(0);
        p.extend_from_slice(value);
        self.request("write", path, ty::WRITE, tx, p).map(drop)
    }

    pub fn mkdir(&mut self, tx: Tx, path: &str) -> Result<(), XsError> {
        check_path(path)?;
        self.request("mkdir", path, ty::MKDIR, tx, join_nul(&[path.as_bytes()]))
            .map(drop)
    }

    /// Remove a node and everything below it; absent is fine.
    pub fn rm(&mut self, tx: Tx, path: &str) -> Result<(), XsError> {
        check_path(path)?;
        match self.request("rm", path, ty::RM, tx, join_nul(&[path.as_bytes()])) {
            Err(e) if e.is_enoent() => Ok(()),
            r => r.map(drop),
        }
    }

    /// Child names; `Ok(None)` if the node does not exist.
    pub fn directory(&mut self, tx: Tx, path: &str) -> Result<Option<Vec<String>>, XsError> {
        check_path(path)?;
        match self.request(
            "directory",
            path,
            ty::DIRECTORY,
            tx,
            join_nul(&[path.as_bytes()]),
        ) {
            Ok(v) => Ok(Some(split_nul(&v)?)),
            Err(e) if e.is_enoent() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn get_perms(&mut self, tx: Tx, path: &str) -> Result<Vec<Perm>, XsError> {
        check_path(path)?;
        let v = self.request(
            "get-perms",
            path,
            ty::GET_PERMS,
            tx,
            join_nul(&[path.as_bytes()]),
        )?;
        split_nul(&v)?
            .iter()
            .map(|s| Perm::parse(s).map_err(XsError::from))
            .collect()
    }

    /// Set a node's permissions: `perms[0]` is the owner and everyone's default.
    pub fn set_perms(&mut self, tx: Tx, path: &str, perms: &[Perm]) -> Result<(), XsError> {
        check_path(path)?;
        if perms.is_empty() {
            return Err(WireError::Malformed("a permission list needs an owner").into());
        }
        let strs: Vec<String> = perms.iter().map(Perm::format).collect();
        let mut parts: Vec<&[u8]> = vec![path.as_bytes()];
        parts.extend(strs.iter().map(|s| s.as_bytes()));
        self.request("set-perms", path, ty::SET_PERMS, tx, join_nul(&parts))
            .map(drop)
    }

    /// Watch `path` (and everything below it). xenstored fires the watch once at once.
    pub fn watch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        check_path(path)?;
        self.request(
            "watch",
            path,
            ty::WATCH,
            Tx::NONE,
            join_nul(&[path.as_bytes(), token.as_bytes()]),
        )
        .map(drop)
    }

    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        check_path(path)?;
        self.request(
            "unwatch",
            path,
            ty::UNWATCH,
            Tx::NONE,
            join_nul(&[path.as_bytes(), token.as_bytes()]),
        )
        .map(drop)
        .or_else(|e| if e.is_enoent() { Ok(()) } else { Err(e) })
    }

    pub fn transaction_start(&mut self) -> Result<Tx, XsError> {
        let v = self.request(
            "transaction-start",
            "",
            ty::TRANSACTION_START,
            Tx::NONE,
            vec![0],
        )?;
        let s = split_nul(&v)?.into_iter().next().unwrap_or_default();
        wire::parse_u32(&s)
            .filter(|&t| t != 0)
            .map(Tx)
            .ok_or_else(|| WireError::Malformed("bad transaction id").into())
    }

    /// End a transaction; `Ok(false)` if it conflicted (`EAGAIN`) and must be redone.
    pub fn transaction_end(&mut self, tx: Tx, commit: bool) -> Result<bool, XsError> {
        let arg: &[u8] = if commit { b"T" } else { b"F" };
        match self.request(
            "transaction-end",
            "",
            ty::TRANSACTION_END,
            tx,
            join_nul(&[arg]),
        ) {
            Ok(_) => Ok(true),
            Err(e) if commit && e.is_eagain() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Run `f` in a transaction, redoing it while it conflicts. An error from `f` aborts.
    pub fn transaction<T>(
        &mut self,
        mut f: impl FnMut(&mut Xs, Tx) -> Result<T, XsError>,
    ) -> Result<T, XsError> {
        for _ in 0..=TRANSACTION_RETRIES {
            let tx = self.transaction_start()?;
            let v = match f(self, tx) {
                Ok(v) => v,
                Err(e) => {
                    let _ = self.transaction_end(tx, false);
                    return Err(e);
                }
            };
            if self.transaction_end(tx, true)? {
                return Ok(v);
            }
        }
        Err(XsError::Conflict(TRANSACTION_RETRIES))
    }

    /// `/local/domain/<domid>` as xenstored names it.
    pub fn get_domain_path(&mut self, domid: u32) -> Result<String, XsError> {
        let d = domid.to_string();
        let v = self.request(
            "get-domain-path",
            "",
            ty::GET_DOMAIN_PATH,
            Tx::NONE,
            join_nul(&[d.as_bytes()]),
        )?;
        Ok(split_nul(&v)?.into_iter().next().unwrap_or_default())
    }

    /// This domain's own id, read from the relative key `domid` (a domU's view of its home
    /// directory; the toolstack writes it).
    pub fn own_domid(&mut self) -> Result<u32, XsError> {
        let v = self.request("read", "domid", ty::READ, Tx::NONE, join_nul(&[b"domid"]))?;
        let s = String::from_utf8_lossy(&v).into_owned();
        wire::parse_u32(s.trim_end_matches('\0'))
            .ok_or_else(|| WireError::Malformed("own domid is not a number").into())
    }

    /// Whether xenstored knows the domain (it was introduced and not yet released).
    pub fn is_domain_introduced(&mut self, domid: u32) -> Result<bool, XsError> {
        let d = domid.to_string();
        let v = self.request(
            "is-domain-introduced",
            "",
            ty::IS_DOMAIN_INTRODUCED,
            Tx::NONE,
            join_nul(&[d.as_bytes()]),
        )?;
        Ok(split_nul(&v)?.first().map(String::as_str) == Some("T"))
    }
}
