//! [`MemfdMem`]: a `MAP_SHARED` mapping of a memfd, which can be mapped again at a second
//! address (the mock frontend's view and the backend's view of the same pages).
#![allow(unsafe_code)]

use crate::SharedMem;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;

/// One read/write shared mapping of a memfd. Unmapped on drop; the memfd closes with the
/// last mapping.
#[derive(Debug)]
pub struct MemfdMem {
    ptr: NonNull<u8>,
    len: usize,
    fd: Arc<OwnedFd>,
}

// SAFETY: the mapping is owned by this object and only accessed through the SharedMem
// contract (raw pointers, atomics, volatile copies), so it can move between threads.
unsafe impl Send for MemfdMem {}
// SAFETY: as above; no reference into the mapping is handed out.
unsafe impl Sync for MemfdMem {}

impl MemfdMem {
    /// A new zeroed memfd of `len` bytes (rounded up to whole pages), mapped once.
    pub fn create(len: usize) -> io::Result<MemfdMem> {
        let len = len.div_ceil(crate::PAGE_SIZE).max(1) * crate::PAGE_SIZE;
        // SAFETY: the name is a valid NUL-terminated string; no other inputs.
        let raw = unsafe { libc::memfd_create(c"tmem-blkif-mock".as_ptr(), libc::MFD_CLOEXEC) };
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
        Self::map(Arc::new(fd), len)
    }

    /// A second mapping of the same memfd, at another address.
    pub fn map_again(&self) -> io::Result<MemfdMem> {
        Self::map(Arc::clone(&self.fd), self.len)
    }

    fn map(fd: Arc<OwnedFd>, len: usize) -> io::Result<MemfdMem> {
        // SAFETY: a new mapping where the kernel chooses; it aliases no Rust object, and
        // failure is reported as MAP_FAILED.
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
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(MemfdMem { ptr, len, fd })
    }
}

impl Drop for MemfdMem {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `map`, unmapped only here; no references into
        // it exist (SharedMem contract).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

// SAFETY: `ptr..ptr+len` is a live, page-aligned (mmap) read/write mapping until Drop, and the
// memfd is never truncated, so accesses cannot fault.
unsafe impl SharedMem for MemfdMem {
    fn base(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    fn len(&self) -> usize {
        self.len
    }
}
