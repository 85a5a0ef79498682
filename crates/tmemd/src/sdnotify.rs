//! systemd readiness and watchdog notifications (`sd_notify`), without libsystemd.
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every call is a no-op.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

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
    }
}
