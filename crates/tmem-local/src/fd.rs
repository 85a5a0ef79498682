//! The shared memory and eventfds of a local connection.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::time::Duration;

/// A `MAP_SHARED` read/write mapping of (the start of) a memfd. Unmapped on drop.
#[derive(Debug)]
pub struct MemfdRegion {
    ptr: NonNull<u8>,
    len: usize,
    fd: OwnedFd,
}

// SAFETY: the mapping is plain shared memory owned by this object; all access goes through the
// SharedMem contract (raw pointers, atomics, volatile copies), so moving or sharing the handle
// between threads is sound.
unsafe impl Send for MemfdRegion {}
// SAFETY: as above; no reference into the mapping is handed out.
unsafe impl Sync for MemfdRegion {}

/// The seals a hello memfd must carry.
pub const REQUIRED_SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;

impl MemfdRegion {
    /// Create a memfd of `len` bytes, seal its size (`F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_SEAL`)
    /// and map it.
    pub fn create(name: &str, len: usize) -> io::Result<Self> {
        Self::create_with_seals(name, len, REQUIRED_SEALS | libc::F_SEAL_SEAL)
    }

    /// [`MemfdRegion::create`] with chosen seals (tests use it to make bad memfds).
    pub fn create_with_seals(name: &str, len: usize, seals: libc::c_int) -> io::Result<Self> {
        let cname = CString::new(name.replace('\0', "_")).map_err(io::Error::other)?;
        let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
        // SAFETY: `cname` is a valid NUL-terminated string; memfd_create has no other inputs.
        let raw = unsafe { libc::memfd_create(cname.as_ptr(), flags) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let size = libc::off_t::try_from(len).map_err(io::Error::other)?;
        // SAFETY: plain syscall on a descriptor we own.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), size) } < 0 {
            return Err(io::Error::last_os_error());
        }
        if seals != 0 {
            // SAFETY: plain syscall on a descriptor we own.
            if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Self::map(fd, len)
    }

    /// Map the first `len` bytes of `fd` shared and read/write. The caller has checked that
    /// the file is at least `len` bytes and cannot shrink.
    pub fn map(fd: OwnedFd, len: usize) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty mapping"));
        }
        // SAFETY: a new mapping at an address of the kernel's choosing; it aliases no Rust
        // object. Errors are reported through MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(MemfdRegion { ptr, len, fd })
    }

    /// The memfd behind the mapping.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for MemfdRegion {
    fn drop(&mut self) {
        // SAFETY: `ptr/len` is exactly the mapping made in `map`, unmapped only here; users
        // hold no references into it (SharedMem contract).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

// SAFETY: `ptr..ptr+len` is a live page-aligned (mmap) read/write mapping until Drop. The
// memfd's size is sealed against shrinking (checked by the daemon, set by `create`), so no
// access can fault with SIGBUS.
unsafe impl tmem_ring::SharedMem for MemfdRegion {
    fn base(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    fn len(&self) -> usize {
        self.len
    }
}

/// The seals of a memfd, or an error if the descriptor is not a sealable shmem file.
pub fn memfd_seals(fd: BorrowedFd<'_>) -> io::Result<libc::c_int> {
    // SAFETY: plain syscall on a borrowed valid descriptor.
    let s = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if s < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(s)
}

/// A new non-blocking, close-on-exec eventfd.
pub fn new_eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall.
    let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// True if `fd` is an eventfd.
pub fn is_eventfd(fd: BorrowedFd<'_>) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map(|p| p.as_os_str() == "anon_inode:[eventfd]")
        .unwrap_or(false)
}

/// Make `fd` non-blocking (shared with the peer: it is one open file).
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain syscall on a borrowed valid descriptor.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Signal an eventfd (add 1). Errors are ignored: the only possible one on a valid eventfd is
/// a saturated counter, which means a wake-up is pending anyway.
pub fn kick(fd: BorrowedFd<'_>) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a live local buffer to a borrowed valid descriptor.
    let _ = unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
}

/// Reset an eventfd's counter without blocking. True if it had been signalled.
pub fn drain_eventfd(fd: BorrowedFd<'_>) -> bool {
    let mut buf = [0u8; 8];
    // SAFETY: reads at most 8 bytes into a live local buffer. On a blocking eventfd with a
    // zero counter this would block, so callers only call it after poll reported POLLIN (or on
    // the non-blocking eventfds this crate creates).
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    n == 8
}

/// Wait until the eventfd is signalled or `timeout` passes (`None`: forever), then reset it.
/// True if it was signalled.
pub fn wait_eventfd(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    let ms: libc::c_int = match timeout {
        None => -1,
        Some(t) => {
            // Round up so a short non-zero timeout does not become a busy poll.
            let ms = t.as_micros().div_ceil(1000);
            libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
        }
    };
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd, count 1.
    let r = unsafe { libc::poll(&mut pfd, 1, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(e);
    }
    if r == 0 {
        return Ok(false);
    }
    Ok(drain_eventfd(fd))
}

/// Wait until any of `fds` is readable (or hung up) or `timeout` passes (`None`: forever).
/// True if one is. Reads nothing.
pub fn wait_readable(fds: &[BorrowedFd<'_>], timeout: Option<Duration>) -> io::Result<bool> {
    let ms: libc::c_int = match timeout {
        None => -1,
        Some(t) => libc::c_int::try_from(t.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX),
    };
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|f| libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `pfds` is a live array of `pfds.len()` pollfds.
    let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(r > 0)
}
