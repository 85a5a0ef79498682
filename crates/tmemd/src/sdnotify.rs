//! systemd readiness and watchdog notifications (`sd_notify`), without libsystemd.
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every call is a no-op.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};

/// A handle on `$NOTIFY_SOCKET`, if systemd gave us one.
#[derive(Debug)]
pub struct Notifier {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
}

impl Notifier {
    /// Read `$NOTIFY_SOCKET`. Abstract sockets (`@name`) and paths are both supported.
    pub fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let path = path.to_string_lossy().into_owned();
            let addr = if let Some(name) = path.strip_prefix('@') {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).ok()?
            } else {
                std::os::unix::net::SocketAddr::from_pathname(&path).ok()?
            };
            Some((unbound_nonblocking()?, addr))
        });
        Notifier { socket }
    }

    /// A notifier for the datagram socket at `path` (tests play systemd with one).
    pub fn to_path(path: &std::path::Path) -> Notifier {
        let socket = std::os::unix::net::SocketAddr::from_pathname(path)
            .ok()
            .and_then(|addr| Some((unbound_nonblocking()?, addr)));
        Notifier { socket }
    }

    /// Send one notification line; failures are ignored (systemd may have gone away).
    pub fn notify(&self, state: &str) {
        if let Some((sock, addr)) = &self.socket {
            let _ = sock.send_to_addr(state.as_bytes(), addr);
        }
    }

    /// Whether there is a service manager to notify.
    pub fn is_present(&self) -> bool {
        self.socket.is_some()
    }

    /// Send `state` with `fds` attached (`SCM_RIGHTS`), e.g. `FDSTORE=1` for systemd's fd
    /// store. Unlike [`notify`](Self::notify) this one matters (a lost `FDSTORE` loses the
    /// memory it names at the next restart), so a full socket queue is retried for a moment
    /// and a failure is returned. `Ok(false)`: no service manager to send to.
    pub fn notify_with_fds(&self, state: &str, fds: &[BorrowedFd<'_>]) -> std::io::Result<bool> {
        let Some((sock, addr)) = &self.socket else {
            return Ok(false);
        };
        let to = nix_addr(addr)?;
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let iov = [IoSlice::new(state.as_bytes())];
        let cmsg = [ControlMessage::ScmRights(&raw)];
        let deadline = Instant::now() + FD_SEND_PATIENCE;
        loop {
            match sendmsg(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), Some(&to)) {
                Ok(_) => return Ok(true),
                Err(nix::errno::Errno::EAGAIN) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The watchdog interval systemd asked for, if any, from `$WATCHDOG_USEC`.
    pub fn watchdog_interval() -> Option<Duration> {
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        if let Ok(pid) = std::env::var("WATCHDOG_PID") {
            if pid.parse::<u32>().ok()? != std::process::id() {
                return None;
            }
        }
        (usec > 0).then(|| Duration::from_micros(usec))
    }
}

/// How long a notification carrying fds waits for room in a full notify socket queue.
const FD_SEND_PATIENCE: Duration = Duration::from_secs(2);

/// The same address in the form `sendmsg` takes.
fn nix_addr(addr: &std::os::unix::net::SocketAddr) -> std::io::Result<UnixAddr> {
    use std::os::linux::net::SocketAddrExt;
    if let Some(path) = addr.as_pathname() {
        return Ok(UnixAddr::new(path)?);
    }
    if let Some(name) = addr.as_abstract_name() {
        return Ok(UnixAddr::new_abstract(name)?);
    }
    Err(std::io::Error::other("the notify socket has no address"))
}

/// The sending socket. Non-blocking: a notify socket whose queue is full (systemd busy, or
/// a test not reading) must never stall the main loop; the notification is then dropped.
fn unbound_nonblocking() -> Option<UnixDatagram> {
    let sock = UnixDatagram::unbound().ok()?;
    sock.set_nonblocking(true).ok()?;
    Some(sock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_reach_the_socket() {
        let dir = std::env::temp_dir().join(format!("tmemd-notify-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        let sock = UnixDatagram::unbound().unwrap();
        let addr = std::os::unix::net::SocketAddr::from_pathname(&path).unwrap();
        let n = Notifier {
            socket: Some((sock, addr)),
        };
        n.notify("READY=1");
        let mut buf = [0u8; 64];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn without_systemd_it_is_a_no_op() {
        let n = Notifier { socket: None };
        n.notify("READY=1");
        assert!(!n.notify_with_fds("FDSTORE=1", &[]).unwrap());
    }

    #[test]
    fn fds_reach_the_socket_with_their_message() {
        use nix::sys::socket::{recvmsg, ControlMessageOwned};
        use std::io::{IoSliceMut, Read, Seek, Write};
        use std::os::fd::{AsFd, FromRawFd, OwnedFd};
        let dir = std::env::temp_dir().join(format!("tmemd-notify-fds-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join("payload"))
            .unwrap();
        file.write_all(b"kept by the fd store").unwrap();
        let n = Notifier::to_path(&path);
        assert!(n
            .notify_with_fds("FDSTORE=1\nFDNAME=x", &[file.as_fd()])
            .unwrap());
        let mut buf = [0u8; 64];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([RawFd; 4]);
        let msg = recvmsg::<()>(
            server.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .unwrap();
        let len = msg.bytes;
        let mut fds = Vec::new();
        for c in msg.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(v) = c {
                fds.extend(v);
            }
        }
        assert_eq!(&buf[..len], b"FDSTORE=1\nFDNAME=x");
        assert_eq!(fds.len(), 1);
        // SAFETY: the kernel just installed this fd in our table for us; nothing else owns it.
        let got = unsafe { OwnedFd::from_raw_fd(fds[0]) };
        let mut got = std::fs::File::from(got);
        got.rewind().unwrap();
        let mut text = String::new();
        got.read_to_string(&mut text).unwrap();
        assert_eq!(text, "kept by the fd store");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
