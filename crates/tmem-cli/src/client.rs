//! One request, one reply over tmemd's control socket, with every failure turned into a
//! [`CliError`] an administrator can act on.

use std::io::{BufRead, BufReader, ErrorKind as IoKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tmem_control::{decode_reply, encode_request, OkReply, Op, Reply, CONTROL_VERSION};

use crate::error::CliError;

/// How long to wait for tmemd to answer one request.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest reply line accepted (a full statistics snapshot of many clients).
const MAX_REPLY_BYTES: u64 = 64 << 20;

/// A client of one control socket.
#[derive(Debug, Clone)]
pub struct Client {
    path: PathBuf,
}

impl Client {
    pub fn new(path: impl Into<PathBuf>) -> Client {
        Client { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Send `op` and return the daemon's successful answer.
    pub fn request(&self, op: &Op) -> Result<OkReply, CliError> {
        let mut stream = UnixStream::connect(&self.path).map_err(|e| self.connect_error(e))?;
        let io = |e| CliError::Unreachable {
            path: self.path.clone(),
            source: e,
        };
        stream.set_read_timeout(Some(REPLY_TIMEOUT)).map_err(io)?;
        stream.set_write_timeout(Some(REPLY_TIMEOUT)).map_err(io)?;
        // A daemon that refuses this peer answers at once and closes; the refusal is still
        // readable after our write fails, and is the better message.
        let write_err = stream.write_all(&encode_request(op)).err();
        let mut line = Vec::new();
        let n = BufReader::new((&stream).take(MAX_REPLY_BYTES))
            .read_until(b'\n', &mut line)
            .map_err(|e| match e.kind() {
                IoKind::WouldBlock | IoKind::TimedOut => CliError::Unreachable {
                    path: self.path.clone(),
                    source: std::io::Error::new(
                        IoKind::TimedOut,
                        format!("no answer within {}s", REPLY_TIMEOUT.as_secs()),
                    ),
                },
                _ => io(e),
            })?;
        if let Some(e) = write_err {
            if n == 0 {
                return Err(io(e));
            }
        }
        if n == 0 {
            return Err(CliError::Unreachable {
                path: self.path.clone(),
                source: std::io::Error::new(
                    IoKind::UnexpectedEof,
                    "tmemd closed the connection without answering",
                ),
            });
        }
        interpret_reply(&line)
    }

    /// A connection of its own, for the commands that stream an image over it.
    pub fn connect(&self) -> Result<UnixStream, CliError> {
        UnixStream::connect(&self.path).map_err(|e| self.connect_error(e))
    }

    fn connect_error(&self, e: std::io::Error) -> CliError {
        match e.kind() {
            IoKind::NotFound | IoKind::ConnectionRefused => CliError::NotRunning {
                path: self.path.clone(),
            },
            IoKind::PermissionDenied => CliError::SocketPermission {
                path: self.path.clone(),
            },
            _ => CliError::Unreachable {
                path: self.path.clone(),
                source: e,
            },
        }
    }
}

/// Turn one reply line into a result. A reply carrying another protocol version is reported
/// as such, even if the rest of it is not understood.
pub fn interpret_reply(line: &[u8]) -> Result<OkReply, CliError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let value: serde_json::Value = serde_json::from_slice(line).map_err(|_| {
        CliError::Protocol(
            "the control socket answered with something that is not tmemd's protocol".into(),
        )
    })?;
    match value.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(CONTROL_VERSION) => {}
        Some(v) => {
            return Err(CliError::Protocol(format!(
                "tmemd speaks control protocol version {v}, this tmem speaks {CONTROL_VERSION}; \
                 install matching tmem and tmemd"
            )))
        }
        None => {
            return Err(CliError::Protocol(
                "tmemd's reply has no protocol version; is this a tmemd control socket?".into(),
            ))
        }
    }
    match decode_reply(line).map_err(CliError::Protocol)? {
        Reply::Ok(ok) => Ok(ok),
        Reply::Error { kind, message } => Err(CliError::Daemon { kind, message }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use tmem_control::{encode_reply, ErrorKind};

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tmem-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn missing_socket_means_not_running() {
        let d = tmp("missing");
        let err = Client::new(d.join("none.sock"))
            .request(&Op::Status)
            .unwrap_err();
        assert!(matches!(err, CliError::NotRunning { .. }), "{err:?}");
        assert_eq!(err.exit_code(), 3);
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn stale_socket_means_not_running() {
        let d = tmp("stale");
        let p = d.join("stale.sock");
        drop(UnixListener::bind(&p).unwrap()); // file stays, nobody listens
        let err = Client::new(&p).request(&Op::Status).unwrap_err();
        assert!(matches!(err, CliError::NotRunning { .. }), "{err:?}");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn replies_are_interpreted() {
        let ok = encode_reply(Reply::Ok(OkReply::Flushed { kib: 8 }));
        assert_eq!(interpret_reply(&ok).unwrap(), OkReply::Flushed { kib: 8 });
        let err = encode_reply(Reply::Error {
            kind: ErrorKind::UnknownDomain,
            message: "domain 9 has no tmem client".into(),
        });
        let e = interpret_reply(&err).unwrap_err();
        assert_eq!(e.exit_code(), 1);
        assert_eq!(e.one_line(), "domain 9 has no tmem client");
    }

    #[test]
    fn other_versions_and_garbage_are_protocol_errors() {
        let e = interpret_reply(br#"{"version":7,"ok":{"kind":"brand_new"}}"#).unwrap_err();
        assert!(e.to_string().contains("version 7"), "{e}");
        assert_eq!(e.exit_code(), 5);
        let e = interpret_reply(b"HTTP/1.1 400 Bad Request").unwrap_err();
        assert_eq!(e.exit_code(), 5);
        let e = interpret_reply(br#"{"hello":1}"#).unwrap_err();
        assert_eq!(e.exit_code(), 5);
    }

    #[test]
    fn a_peer_that_hangs_up_is_reported() {
        let d = tmp("hangup");
        let p = d.join("c.sock");
        let l = UnixListener::bind(&p).unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut req = String::new();
            BufReader::new(&s).read_line(&mut req).unwrap();
            drop(s);
        });
        let err = Client::new(&p).request(&Op::Status).unwrap_err();
        t.join().unwrap();
        assert_eq!(err.exit_code(), 3);
        assert!(
            err.one_line().contains("without answering"),
            "{}",
            err.one_line()
        );
        let _ = std::fs::remove_dir_all(d);
    }
}
