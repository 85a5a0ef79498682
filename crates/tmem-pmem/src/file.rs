//! [`PageFile`]: the file that holds page memory. A memfd (kept in systemd's fd store), a
//! file on a tmpfs path, or an fd inherited from the previous tmemd.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::sys::memfd::{memfd_create, MemFdCreateFlag};

/// Where a page file came from (for logs and `tmem status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A memfd created by this process.
    Memfd,
    /// A file at this path (opened or created).
    Path(PathBuf),
    /// An fd handed over by the service manager, with its name.
    Inherited(String),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Memfd => write!(f, "a new memfd"),
            Origin::Path(p) => write!(f, "{}", p.display()),
            Origin::Inherited(n) => write!(f, "fd \"{n}\" from the service manager"),
        }
    }
}

/// An open page file. Its contents are only ever read and written through a mapping.
#[derive(Debug)]
pub struct PageFile {
    fd: OwnedFd,
    origin: Origin,
}

impl PageFile {
    /// A new, empty memfd named `name` (the name shows in /proc/PID/fd, nothing else).
    pub fn memfd(name: &str) -> io::Result<PageFile> {
        let cname = CString::new(name).map_err(|_| io::Error::other("NUL in memfd name"))?;
        let fd = memfd_create(&cname, MemFdCreateFlag::MFD_CLOEXEC)?;
        Ok(PageFile {
            fd,
            origin: Origin::Memfd,
        })
    }

    /// Open the file at `path`, creating it (mode 0600) if it does not exist. It should be on
    /// a tmpfs: on a disk file system every page write would become disk I/O.
    pub fn open_path(path: &Path) -> io::Result<PageFile> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        Ok(PageFile {
            fd: f.into(),
            origin: Origin::Path(path.to_owned()),
        })
    }

    /// A page file from an fd some other party kept for us (systemd's fd store).
    pub fn from_fd(fd: OwnedFd, name: &str) -> PageFile {
        PageFile {
            fd,
            origin: Origin::Inherited(name.to_owned()),
        }
    }

    /// Its size in bytes.
    pub fn len(&self) -> io::Result<u64> {
        Ok(nix::sys::stat::fstat(self.fd.as_raw_fd())?.st_size as u64)
    }

    /// Whether it is empty (a new file).
    pub fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Where it came from.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// A duplicate of its fd (to hand to the service manager's fd store).
    pub fn try_clone_fd(&self) -> io::Result<OwnedFd> {
        self.fd.try_clone()
    }

    pub(crate) fn set_len(&self, len: u64) -> io::Result<()> {
        nix::unistd::ftruncate(self.fd.as_fd(), len as libc::off_t)?;
        Ok(())
    }
}

impl AsFd for PageFile {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
