//! Local transport for tmem: a Unix stream socket handshake that passes a sealed memfd (ring
//! pages, then data pages) and two eventfds from a guest process to tmemd.
//!
//! After the hello the socket carries only liveness (EOF: the guest is gone) and an optional
//! one-byte goodbye; requests travel over the ring in the memfd (`tmem-ring`). The wire format
//! is specified in `docs/protocol.md`. This crate validates everything the peer sends; it never
//! trusts sizes, seals or descriptor types it did not check, and it never blocks without a
//! timeout during the handshake. Linux only.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    getsockopt, recvmsg, sendmsg, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
};
use tmem_ring::Layout;

mod fd;
mod hello;
pub mod wire;

pub use fd::{
    drain_eventfd, is_eventfd, kick, memfd_seals, new_eventfd, set_nonblocking, wait_eventfd,
    wait_readable, MemfdRegion, REQUIRED_SEALS,
};
pub use hello::{parse_hello, ParsedHello};
use wire::{
    HelloWire, ReplyWire, HELLO_FDS, HELLO_MAGIC, HELLO_SIZE, MAX_NAME, REPLY_MAGIC, REPLY_SIZE,
};

/// Default socket path of tmemd's local transport.
pub const DEFAULT_SOCKET: &str = "/run/tmemd/tmemd.sock";
/// How long [`connect`] waits for the daemon's reply.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the local transport outside the hello itself.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error(
        "another tmemd is listening on {0}; stop it first or choose another path with --socket"
    )]
    AlreadyListening(PathBuf),
    #[error("{0} exists and is not a socket; refusing to remove it: move it away or choose another path with --socket")]
    NotASocket(PathBuf),
    #[error(
        "permission denied on {path}; run tmemd as root or choose a writable path with --socket"
    )]
    PermissionDenied {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot bind {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot connect to tmemd at {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid connection parameters: {0}")]
    BadParams(String),
    #[error("{op} failed")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("tmemd refused the connection ({status}): {message}")]
    Rejected { status: i32, message: String },
    #[error("malformed reply from tmemd: {0}")]
    BadReply(String),
}

fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> LocalError {
    move |source| LocalError::Io { op, source }
}

/// Why a hello was refused. Each variant is answered with a reply carrying
/// [`HelloError::status`] and the message, when the peer can still read it.
#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    #[error("no hello within {0:?}")]
    Timeout(Duration),
    #[error("peer closed the connection during the hello")]
    PeerClosed,
    #[error("socket error during the hello")]
    Io(#[source] io::Error),
    #[error("cannot read peer credentials")]
    Credentials(#[source] io::Error),
    #[error("bad magic {0:#010x} (not a tmem hello)")]
    BadMagic(u32),
    #[error("protocol version {got} not supported (this tmemd speaks {want})")]
    BadVersion { got: u32, want: u32 },
    #[error("malformed hello: {0}")]
    Malformed(&'static str),
    #[error("hello must carry exactly {HELLO_FDS} descriptors (memfd, kick, notify), got {0}")]
    FdCount(usize),
    #[error("ring_pages {got} is outside 1..={max}")]
    RingPages { got: u32, max: u32 },
    #[error("data_slots {got} exceeds the limit of {max}")]
    DataSlots { got: u32, max: u32 },
    #[error("bad layout")]
    Layout(#[source] tmem_ring::RingError),
    #[error("first descriptor is not a memfd")]
    NotMemfd(#[source] io::Error),
    #[error("memfd seals {0:#x} lack F_SEAL_SHRINK|F_SEAL_GROW")]
    NotSealed(libc::c_int),
    #[error("memfd is {have} bytes, the layout needs {need}")]
    MemfdTooSmall { have: u64, need: u64 },
    #[error("{0} descriptor is not an eventfd")]
    NotEventfd(&'static str),
    #[error("cannot map the memfd")]
    Map(#[source] io::Error),
}

impl HelloError {
    /// The negative errno sent in the reply.
    pub fn status(&self) -> i32 {
        use tmem_abi::status::errno::*;
        -match self {
            HelloError::Timeout(_) => libc::ETIMEDOUT,
            HelloError::PeerClosed | HelloError::Io(_) | HelloError::Credentials(_) => libc::EIO,
            HelloError::BadMagic(_) | HelloError::BadVersion { .. } | HelloError::Malformed(_) => {
                EPROTO
            }
            HelloError::FdCount(_) | HelloError::NotMemfd(_) | HelloError::NotEventfd(_) => {
                libc::EBADF
            }
            HelloError::RingPages { .. } | HelloError::DataSlots { .. } => E2BIG,
            HelloError::Layout(_) | HelloError::MemfdTooSmall { .. } => EINVAL,
            HelloError::NotSealed(_) => EPERM,
            HelloError::Map(_) => ENOMEM,
        }
    }

    /// The text sent in the reply: this error and its sources.
    pub fn message(&self) -> String {
        let mut s = self.to_string();
        let mut src = std::error::Error::source(self);
        let mut depth = 0;
        while let Some(e) = src {
            if depth == 4 {
                break;
            }
            s.push_str(": ");
            s.push_str(&e.to_string());
            src = e.source();
            depth += 1;
        }
        s
    }
}

/// A validated hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub domid: u32,
    pub instance: u64,
    pub layout: Layout,
    pub name: String,
    /// Hello flags; none are defined, so always 0 after validation.
    pub flags: u32,
}

/// Daemon-side limits applied to every hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelloLimits {
    pub max_ring_pages: u32,
    pub max_data_slots: u32,
    /// The whole hello (all bytes and descriptors) must arrive within this time.
    pub timeout: Duration,
}

impl Default for HelloLimits {
    fn default() -> Self {
        HelloLimits {
            max_ring_pages: 16,
            max_data_slots: 1024,
            timeout: Duration::from_secs(5),
        }
    }
}

/// The peer's process credentials (`SO_PEERCRED`, taken when it connected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// A guest whose hello passed validation and which awaits the daemon's policy decision.
#[derive(Debug)]
pub struct PendingGuest {
    pub hello: Hello,
    pub peer: Credentials,
    pub mem: MemfdRegion,
    pub kick: OwnedFd,
    pub notify: OwnedFd,
    pub stream: UnixStream,
}

/// An accepted local guest.
#[derive(Debug)]
pub struct LocalGuest {
    pub client_id: u32,
    pub hello: Hello,
    pub peer: Credentials,
    pub mem: MemfdRegion,
    pub kick: OwnedFd,
    pub notify: OwnedFd,
    pub stream: UnixStream,
}

/// What the socket of an accepted guest said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerEvent {
    /// Nothing to read now.
    Idle,
    /// The guest asked for its pools to be destroyed and is leaving.
    Goodbye,
    /// The guest closed the socket (or the socket failed): it is gone.
    Closed,
    /// The guest sent a byte that means nothing: a protocol error, disconnect it.
    Garbage(u8),
}

/// Read one event from a guest's socket without blocking.
pub fn poll_peer(stream: &UnixStream) -> PeerEvent {
    let mut b = [0u8; 1];
    // SAFETY: receives at most one byte into a live local buffer.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_DONTWAIT,
        )
    };
    match n {
        1 if b[0] == wire::GOODBYE => PeerEvent::Goodbye,
        1 => PeerEvent::Garbage(b[0]),
        0 => PeerEvent::Closed,
        _ => match io::Error::last_os_error().kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => PeerEvent::Idle,
            _ => PeerEvent::Closed,
        },
    }
}

impl LocalGuest {
    /// See [`poll_peer`].
    pub fn poll_peer(&self) -> PeerEvent {
        poll_peer(&self.stream)
    }
}

/// Bind the daemon's listening socket at `path`: create the parent directory (0755) if
/// missing, remove a stale socket nobody listens on, refuse if another daemon listens.
pub fn bind_listener(path: &Path) -> Result<UnixListener, LocalError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(|source| match source.kind() {
                    io::ErrorKind::PermissionDenied => LocalError::PermissionDenied {
                        path: dir.to_owned(),
                        source,
                    },
                    _ => LocalError::CreateDir {
                        path: dir.to_owned(),
                        source,
                    },
                })?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            if !meta.file_type().is_socket() {
                return Err(LocalError::NotASocket(path.to_owned()));
            }
            match UnixStream::connect(path) {
                Ok(_) => return Err(LocalError::AlreadyListening(path.to_owned())),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    // Stale socket of a daemon that is gone.
                    match std::fs::remove_file(path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(source) if source.kind() == io::ErrorKind::PermissionDenied => {
                            return Err(LocalError::PermissionDenied {
                                path: path.to_owned(),
                                source,
                            })
                        }
                        Err(source) => return Err(io_err("removing stale socket")(source)),
                    }
                }
                Err(source) if source.kind() == io::ErrorKind::PermissionDenied => {
                    return Err(LocalError::PermissionDenied {
                        path: path.to_owned(),
                        source,
                    })
                }
                Err(source) => {
                    return Err(LocalError::Bind {
                        path: path.to_owned(),
                        source,
                    })
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(LocalError::Bind {
                path: path.to_owned(),
                source,
            })
        }
    }
    UnixListener::bind(path).map_err(|source| match source.kind() {
        io::ErrorKind::PermissionDenied => LocalError::PermissionDenied {
            path: path.to_owned(),
            source,
        },
        io::ErrorKind::AddrInUse => LocalError::AlreadyListening(path.to_owned()),
        _ => LocalError::Bind {
            path: path.to_owned(),
            source,
        },
    })
}

fn send_reply(stream: &UnixStream, status: i32, client_id: u32, message: &str) -> io::Result<()> {
    let r = ReplyWire {
        magic: REPLY_MAGIC,
        version: tmem_abi::ring::PROTOCOL_VERSION,
        status,
        client_id,
        message: message.to_owned(),
    };
    (&*stream).write_all(&r.to_bytes())
}

/// Read and validate a hello on a freshly accepted `stream` (blocking, at most
/// `limits.timeout` in all). On error an error reply has been sent if the peer can take it.
pub fn read_hello(stream: UnixStream, limits: &HelloLimits) -> Result<PendingGuest, HelloError> {
    match read_hello_inner(&stream, limits) {
        Ok((hello, peer, mem, kick, notify)) => Ok(PendingGuest {
            hello,
            peer,
            mem,
            kick,
            notify,
            stream,
        }),
        Err(e) => {
            if !matches!(e, HelloError::PeerClosed) {
                let _ =
                    stream.set_write_timeout(Some(limits.timeout.max(Duration::from_millis(1))));
                let _ = send_reply(&stream, e.status(), 0, &e.message());
            }
            Err(e)
        }
    }
}

type HelloParts = (Hello, Credentials, MemfdRegion, OwnedFd, OwnedFd);

fn read_hello_inner(stream: &UnixStream, limits: &HelloLimits) -> Result<HelloParts, HelloError> {
    let creds = getsockopt(stream, sockopt::PeerCredentials)
        .map_err(|e| HelloError::Credentials(e.into()))?;
    let peer = Credentials {
        pid: creds.pid(),
        uid: creds.uid(),
        gid: creds.gid(),
    };
    let (buf, mut fds) = recv_hello(stream, limits.timeout)?;
    let ParsedHello { hello, need } = parse_hello(&buf, fds.len(), limits)?;
    // Order fixed by the protocol: memfd, kick, notify.
    let notify = fds.pop().ok_or(HelloError::FdCount(0))?;
    let kick = fds.pop().ok_or(HelloError::FdCount(1))?;
    let memfd = fds.pop().ok_or(HelloError::FdCount(2))?;
    let seals = memfd_seals(memfd.as_fd()).map_err(HelloError::NotMemfd)?;
    if seals & REQUIRED_SEALS != REQUIRED_SEALS {
        return Err(HelloError::NotSealed(seals));
    }
    let st =
        nix::sys::stat::fstat(memfd.as_raw_fd()).map_err(|e| HelloError::NotMemfd(e.into()))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(HelloError::NotMemfd(io::Error::other("not a regular file")));
    }
    let have = u64::try_from(st.st_size).unwrap_or(0);
    if have < need as u64 {
        return Err(HelloError::MemfdTooSmall {
            have,
            need: need as u64,
        });
    }
    if !is_eventfd(kick.as_fd()) {
        return Err(HelloError::NotEventfd("kick"));
    }
    if !is_eventfd(notify.as_fd()) {
        return Err(HelloError::NotEventfd("notify"));
    }
    set_nonblocking(kick.as_fd()).map_err(HelloError::Io)?;
    set_nonblocking(notify.as_fd()).map_err(HelloError::Io)?;
    let mem = MemfdRegion::map(memfd, need).map_err(HelloError::Map)?;
    Ok((hello, peer, mem, kick, notify))
}

/// Receive the hello bytes and descriptors within `timeout`. Descriptors arriving with any
/// segment are collected (and closed if the hello is then refused).
fn recv_hello(
    stream: &UnixStream,
    timeout: Duration,
) -> Result<([u8; HELLO_SIZE], Vec<OwnedFd>), HelloError> {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; HELLO_SIZE];
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut got = 0usize;
    let mut truncated = false;
    // Bounded: each pass either reads at least one byte or ends; the deadline bounds waits.
    while got < HELLO_SIZE {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HelloError::Timeout(timeout));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(HelloError::Io)?;
        let mut cmsg = nix::cmsg_space!([RawFd; 8]);
        let mut iov = [IoSliceMut::new(&mut buf[got..])];
        let res = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        );
        let msg = match res {
            Ok(m) => m,
            Err(nix::errno::Errno::EAGAIN) => return Err(HelloError::Timeout(timeout)),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(HelloError::Io(e.into())),
        };
        let n = msg.bytes;
        if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
            truncated = true;
        }
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    for r in raw {
                        // SAFETY: SCM_RIGHTS just installed `r` in our table; we are its
                        // only owner.
                        fds.push(unsafe { OwnedFd::from_raw_fd(r) });
                    }
                }
            }
        }
        if n == 0 {
            return Err(HelloError::PeerClosed);
        }
        got += n;
    }
    if truncated {
        return Err(HelloError::FdCount(fds.len().max(HELLO_FDS + 1)));
    }
    Ok((buf, fds))
}

impl PendingGuest {
    /// Accept the guest as client `client_id`: send the success reply.
    pub fn accept(self, client_id: u32) -> Result<LocalGuest, LocalError> {
        send_reply(&self.stream, 0, client_id, "").map_err(io_err("sending hello reply"))?;
        Ok(LocalGuest {
            client_id,
            hello: self.hello,
            peer: self.peer,
            mem: self.mem,
            kick: self.kick,
            notify: self.notify,
            stream: self.stream,
        })
    }

    /// Refuse the guest (policy): send an `-EPERM` reply with `reason`, then close.
    pub fn reject(self, reason: &str) {
        self.reject_with(-tmem_abi::status::errno::EPERM, reason);
    }

    /// Refuse the guest with a chosen negative errno.
    pub fn reject_with(self, status: i32, reason: &str) {
        let _ = send_reply(&self.stream, status, 0, reason);
    }
}

/// Guest-side parameters of [`connect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectParams {
    pub domid: u32,
    pub instance: u64,
    pub name: String,
    pub layout: Layout,
}

/// A guest's accepted connection. `mem` holds an initialised ring header; wrap it with
/// `tmem_ring::FrontendRing::init(conn.mem, conn.layout)`.
#[derive(Debug)]
pub struct LocalConnection {
    pub client_id: u32,
    pub layout: Layout,
    pub mem: MemfdRegion,
    pub kick: OwnedFd,
    pub notify: OwnedFd,
    pub stream: UnixStream,
}

impl LocalConnection {
    /// Tell the daemon to destroy this guest's pools, then close the socket.
    pub fn goodbye(self) {
        goodbye(&self.stream);
    }
}

/// Wake a guest: send the notify byte on its socket, never blocking.
///
/// The daemon does not write the notify eventfd: the guest shares that file and could make
/// it blocking and fill its counter between any check and the write, hanging the worker.
/// A socket send takes `MSG_DONTWAIT` per call, whatever the guest does. A full socket buffer
/// means wake-ups are already pending, so it is not an error; a closed peer is.
pub fn notify_peer(stream: &UnixStream) -> io::Result<()> {
    let b = [wire::NOTIFY];
    // SAFETY: sends one byte from a live local buffer.
    let n = unsafe {
        libc::send(
            stream.as_raw_fd(),
            b.as_ptr().cast(),
            1,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n == 1 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(()),
        _ => Err(e),
    }
}

/// Send the goodbye byte on a guest socket and shut down the writing side.
pub fn goodbye(stream: &UnixStream) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = (&*stream).write_all(&[wire::GOODBYE]);
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// Connect to tmemd at `path`: create, size, seal and map a memfd for `p.layout`, initialise
/// the ring header in it, create the kick and notify eventfds, send the hello, read the reply.
pub fn connect(path: &Path, p: &ConnectParams) -> Result<LocalConnection, LocalError> {
    connect_with_timeout(path, p, CONNECT_TIMEOUT)
}

/// [`connect`] with a chosen reply timeout.
pub fn connect_with_timeout(
    path: &Path,
    p: &ConnectParams,
    timeout: Duration,
) -> Result<LocalConnection, LocalError> {
    if p.name.len() > MAX_NAME {
        return Err(LocalError::BadParams(format!(
            "name is {} bytes, at most {MAX_NAME}",
            p.name.len()
        )));
    }
    let total = p
        .layout
        .checked_total_bytes()
        .filter(|_| p.layout.ring_entries() > 0)
        .ok_or_else(|| LocalError::BadParams(format!("bad layout {:?}", p.layout)))?;
    let mem = MemfdRegion::create(&format!("tmem-{}", p.name), total)
        .map_err(io_err("creating the memfd"))?;
    tmem_ring::init_shared_ring(&mem, p.layout)
        .map_err(|e| LocalError::BadParams(e.to_string()))?;
    let kick = new_eventfd().map_err(io_err("creating the kick eventfd"))?;
    let notify = new_eventfd().map_err(io_err("creating the notify eventfd"))?;
    let stream = UnixStream::connect(path).map_err(|source| match source.kind() {
        io::ErrorKind::PermissionDenied => LocalError::PermissionDenied {
            path: path.to_owned(),
            source,
        },
        _ => LocalError::Connect {
            path: path.to_owned(),
            source,
        },
    })?;
    let mut name = [0u8; MAX_NAME];
    name[..p.name.len()].copy_from_slice(p.name.as_bytes());
    let hello = HelloWire {
        magic: HELLO_MAGIC,
        version: tmem_abi::ring::PROTOCOL_VERSION,
        domid: p.domid,
        flags: 0,
        instance: p.instance,
        ring_pages: p.layout.ring_pages,
        data_slots: p.layout.data_slots,
        name_len: p.name.len() as u32,
        reserved: 0,
        name,
    };
    send_hello(
        &stream,
        &hello.to_bytes(),
        &[mem.fd(), kick.as_fd(), notify.as_fd()],
    )?;
    let client_id = read_reply(&stream, timeout)?;
    Ok(LocalConnection {
        client_id,
        layout: p.layout,
        mem,
        kick,
        notify,
        stream,
    })
}

/// Send raw hello bytes with descriptors (exposed for tests and alternative clients).
pub fn send_hello(
    stream: &UnixStream,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<(), LocalError> {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let iov = [IoSlice::new(bytes)];
    let cmsgs = [ControlMessage::ScmRights(&raw)];
    let cm: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsgs };
    let n = sendmsg::<()>(stream.as_raw_fd(), &iov, cm, MsgFlags::MSG_NOSIGNAL, None)
        .map_err(|e| io_err("sending the hello")(e.into()))?;
    if n < bytes.len() {
        (&*stream)
            .write_all(&bytes[n..])
            .map_err(io_err("sending the hello"))?;
    }
    Ok(())
}

/// Read the daemon's reply: the client id, or the refusal.
pub fn read_reply(stream: &UnixStream, timeout: Duration) -> Result<u32, LocalError> {
    stream
        .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
        .map_err(io_err("setting the reply timeout"))?;
    let mut buf = [0u8; REPLY_SIZE];
    (&*stream)
        .read_exact(&mut buf)
        .map_err(io_err("reading the hello reply"))?;
    stream
        .set_read_timeout(None)
        .map_err(io_err("clearing the reply timeout"))?;
    let r =
        ReplyWire::from_bytes(&buf).ok_or_else(|| LocalError::BadReply("bad message".into()))?;
    if r.magic != REPLY_MAGIC {
        return Err(LocalError::BadReply(format!("bad magic {:#010x}", r.magic)));
    }
    if r.status != 0 {
        return Err(LocalError::Rejected {
            status: r.status,
            message: r.message,
        });
    }
    Ok(r.client_id)
}
