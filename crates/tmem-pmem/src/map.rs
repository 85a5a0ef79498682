//! The shared mapping of a page file, and the only `unsafe` in durable memory.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

use tmem_abi::{Page, PAGE_SIZE};

/// A `MAP_SHARED` read-write mapping of a whole file. Writes through it go straight to the
/// file's pages (tmpfs or memfd), so they outlive this process.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this struct until drop; all access goes through
// atomics (record words) or through `&Page`/`&mut Page` handed out under a per-frame lock by
// `PageMemory`, so sharing it between threads is sound.
unsafe impl Send for Mapping {}
// SAFETY: as for Send.
unsafe impl Sync for Mapping {}

impl Mapping {
    pub fn new(fd: &impl AsFd, len: usize) -> io::Result<Mapping> {
        if len == 0 {
            return Err(io::Error::other("cannot map an empty page file"));
        }
        // SAFETY: a fresh mapping at an address the kernel chooses; no existing memory is
        // affected. The fd is valid for the call (borrowed) and the mapping keeps the file.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_fd().as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave NULL"))?;
        Ok(Mapping { ptr, len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The 64-bit word at byte offset `off` (8-aligned, inside the mapping).
    pub fn word(&self, off: usize) -> &AtomicU64 {
        assert!(
            off & 7 == 0 && off + 8 <= self.len,
            "word {off} outside page file"
        );
        // SAFETY: in bounds and 8-aligned (checked above; the mapping is page aligned). The
        // memory lives as long as `self`, and every access to record words is atomic.
        unsafe { AtomicU64::from_ptr(self.ptr.as_ptr().wrapping_add(off).cast::<u64>()) }
    }

    /// The page at byte offset `off`, for writing.
    ///
    /// # Safety
    /// No other reference to the same page may exist while the returned one lives (the
    /// caller holds the page's frame lock).
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn page_mut(&self, off: usize) -> &mut Page {
        assert!(off & (PAGE_SIZE - 1) == 0 && off + PAGE_SIZE <= self.len);
        // SAFETY: in bounds and aligned; exclusivity is the caller's contract.
        unsafe { &mut *self.ptr.as_ptr().wrapping_add(off).cast::<Page>() }
    }

    /// Ask the kernel to back `[off, off + len)` with memory and page-table entries now,
    /// without changing its contents. Best effort: `Ok(false)` if the kernel cannot.
    pub fn populate(&self, off: usize, len: usize) -> io::Result<bool> {
        assert!(off & (PAGE_SIZE - 1) == 0 && off + len <= self.len);
        // SAFETY: the range is inside our mapping; MADV_POPULATE_WRITE only faults pages in
        // (it never changes their contents) and touches nothing outside the range.
        let r = unsafe {
            libc::madvise(
                self.ptr.as_ptr().wrapping_add(off).cast(),
                len,
                libc::MADV_POPULATE_WRITE,
            )
        };
        if r == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            // Kernels before 5.14 do not know it.
            Some(libc::EINVAL) => Ok(false),
            _ => Err(e),
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped; no reference into it outlives `self`
        // (they all borrow from it).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}
