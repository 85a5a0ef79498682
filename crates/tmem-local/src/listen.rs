//! Binding tmemd's listening Unix sockets (the guest socket and the control socket) safely.
//!
//! One helper for both, so they follow the same rules: the socket gets exactly the mode asked
//! for whatever the umask (it never exists with a wider mode, not even between bind and chmod);
//! only a stale *socket* is ever removed (a regular file, directory or symlink at the path is
//! left alone and reported); only the default runtime directory is created, any other missing
//! directory is an error (a typo must not create `/nonexistent-dir`); a path too long for a
//! Unix socket is refused with the limit named.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::sys::socket::{
    bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
};
use nix::sys::stat::{fchmod, Mode};

/// The runtime directory tmemd may create itself (systemd's `RuntimeDirectory=tmemd`).
pub const RUNTIME_DIR: &str = "/run/tmemd";
/// Longest socket path the kernel accepts (`sun_path` is 108 bytes with the final NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// How one listening socket is made.
#[derive(Debug, Clone, Copy)]
pub struct SocketSpec {
    /// Permission bits of the socket file (connecting needs write permission).
    pub mode: u32,
    /// The command-line flag that chooses this path, named in error messages.
    pub flag: &'static str,
}

/// The guest socket: owner and group may connect (local guests run as root or in tmemd's
/// group; everybody else is kept out whatever the umask).
pub const GUEST_SOCKET: SocketSpec = SocketSpec {
    mode: 0o660,
    flag: "--socket",
};
/// The control socket: owner only.
pub const CONTROL_SOCKET: SocketSpec = SocketSpec {
    mode: 0o600,
    flag: "--control-socket",
};

/// Why a listening socket could not be set up; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("socket path {path} is {len} bytes long; Unix sockets allow at most {MAX_SOCKET_PATH}: choose a shorter path with {flag}")]
    PathTooLong {
        path: PathBuf,
        len: usize,
        flag: &'static str,
    },
    #[error("directory {dir} does not exist; create it first or choose another path with {flag}")]
    NoDirectory { dir: PathBuf, flag: &'static str },
    #[error("cannot create directory {dir}")]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} exists and is not a socket; refusing to remove it: move it away or choose another path with {flag}")]
    NotASocket { path: PathBuf, flag: &'static str },
    #[error(
        "another tmemd is listening on {path}; stop it first or choose another path with {flag}"
    )]
    AlreadyListening { path: PathBuf, flag: &'static str },
    #[error(
        "permission denied on {path}; run tmemd as root or choose a writable path with {flag}"
    )]
    PermissionDenied {
        path: PathBuf,
        flag: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Bind a listening socket at `path` as `spec` says (see the module documentation).
pub fn bind_socket(path: &Path, spec: &SocketSpec) -> Result<UnixListener, BindError> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(BindError::PathTooLong {
            path: path.to_owned(),
            len,
            flag: spec.flag,
        });
    }
    ensure_directory(path, spec)?;
    remove_stale(path, spec)?;
    let io_err = |op: &'static str| {
        move |e: nix::errno::Errno| {
            let source = io::Error::from(e);
            if source.kind() == io::ErrorKind::PermissionDenied {
                BindError::PermissionDenied {
                    path: path.to_owned(),
                    flag: spec.flag,
                    source,
                }
            } else if source.kind() == io::ErrorKind::AddrInUse {
                BindError::AlreadyListening {
                    path: path.to_owned(),
                    flag: spec.flag,
                }
            } else {
                BindError::Io {
                    op,
                    path: path.to_owned(),
                    source,
                }
            }
        }
    };
    let fd: OwnedFd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io_err("create a socket for"))?;
    // The file bind creates takes the socket inode's mode minus the umask: narrowing the
    // inode first means the file is never more open than `spec.mode`, even for an instant.
    fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(spec.mode))
        .map_err(io_err("set the mode of"))?;
    let addr = UnixAddr::new(path).map_err(io_err("use the path"))?;
    bind(fd.as_raw_fd(), &addr).map_err(io_err("bind"))?;
    // A stricter umask may have removed bits we want (e.g. group access): set them exactly.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(spec.mode)).map_err(
        |source| BindError::Io {
            op: "set the permissions of",
            path: path.to_owned(),
            source,
        },
    )?;
    listen(&fd, Backlog::MAXCONN).map_err(io_err("listen on"))?;
    Ok(UnixListener::from(fd))
}

/// Remove the socket at `path` at shutdown, if it still is a socket (never anything else).
pub fn remove_socket(path: &Path) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

/// The parent directory must exist; only [`RUNTIME_DIR`] is created (0755) when missing.
fn ensure_directory(path: &Path, spec: &SocketSpec) -> Result<(), BindError> {
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d,
        None => return Ok(()),
    };
    if dir.is_dir() {
        return Ok(());
    }
    if dir != Path::new(RUNTIME_DIR) {
        return Err(BindError::NoDirectory {
            dir: dir.to_owned(),
            flag: spec.flag,
        });
    }
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(dir)
        .or_else(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => Ok(()),
            _ => Err(e),
        })
        .map_err(|source| match source.kind() {
            io::ErrorKind::PermissionDenied => BindError::PermissionDenied {
                path: dir.to_owned(),
                flag: spec.flag,
                source,
            },
            _ => BindError::CreateDir {
                dir: dir.to_owned(),
                source,
            },
        })
}

/// Remove a socket nobody listens on; refuse a live one and anything that is not a socket.
fn remove_stale(path: &Path, spec: &SocketSpec) -> Result<(), BindError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(BindError::Io {
                op: "inspect",
                path: path.to_owned(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(BindError::NotASocket {
            path: path.to_owned(),
            flag: spec.flag,
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(BindError::AlreadyListening {
            path: path.to_owned(),
            flag: spec.flag,
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(source) if source.kind() == io::ErrorKind::PermissionDenied => {
                    Err(BindError::PermissionDenied {
                        path: path.to_owned(),
                        flag: spec.flag,
                        source,
                    })
                }
                Err(source) => Err(BindError::Io {
                    op: "remove the stale socket",
                    path: path.to_owned(),
                    source,
                }),
            }
        }
        Err(source) if source.kind() == io::ErrorKind::PermissionDenied => {
            Err(BindError::PermissionDenied {
                path: path.to_owned(),
                flag: spec.flag,
                source,
            })
        }
        Err(source) => Err(BindError::Io {
            op: "connect to the existing socket",
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tmem-listen-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn mode_is_exact_whatever_the_umask() {
        let d = dir("mode");
        // SAFETY: umask only changes this process's file creation mask; restored below.
        let old = unsafe { libc::umask(0) };
        let g = bind_socket(&d.join("g.sock"), &GUEST_SOCKET);
        let c = bind_socket(&d.join("c.sock"), &CONTROL_SOCKET);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let (_g, _c) = (g.unwrap(), c.unwrap());
        let mode = |p: &str| std::fs::metadata(d.join(p)).unwrap().mode() & 0o777;
        assert_eq!(mode("g.sock"), 0o660);
        assert_eq!(mode("c.sock"), 0o600);
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn regular_files_are_never_removed() {
        let d = dir("file");
        let f = d.join("precious");
        std::fs::write(&f, b"keep me").unwrap();
        let e = bind_socket(&f, &CONTROL_SOCKET).unwrap_err();
        assert!(matches!(e, BindError::NotASocket { .. }), "{e:?}");
        assert!(e.to_string().contains("--control-socket"), "{e}");
        assert_eq!(std::fs::read(&f).unwrap(), b"keep me");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn missing_directories_are_not_created() {
        let d = dir("nodir");
        let p = d.join("missing").join("x.sock");
        let e = bind_socket(&p, &GUEST_SOCKET).unwrap_err();
        assert!(matches!(e, BindError::NoDirectory { .. }), "{e:?}");
        assert!(!d.join("missing").exists());
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn long_paths_are_refused_with_the_limit() {
        let p = PathBuf::from(format!("/tmp/{}/s.sock", "x".repeat(120)));
        let e = bind_socket(&p, &GUEST_SOCKET).unwrap_err();
        assert!(e.to_string().contains("at most 107"), "{e}");
    }
}
