//! Raw kernel interfaces: the Linux Xen device ioctls (`include/uapi/xen/{gntdev,gntalloc,
//! evtchn}.h`), mmap and poll. Every `unsafe` of the Xen transport lives in this file.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tmem_ring::{SharedMem, PAGE_SIZE};

pub const GNTDEV_PATH: &str = "/dev/xen/gntdev";
pub const GNTALLOC_PATH: &str = "/dev/xen/gntalloc";
pub const EVTCHN_PATH: &str = "/dev/xen/evtchn";

/// `_IOC(_IOC_NONE, type, nr, size)` on x86/arm (`_IOC_NONE` = 0, size at bit 16).
const fn ioc_none(ty: u8, nr: u8, size: usize) -> libc::c_ulong {
    ((size as libc::c_ulong) << 16) | ((ty as libc::c_ulong) << 8) | nr as libc::c_ulong
}

// gntdev.h
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct GntdevGrantRef {
    domid: u32,
    gref: u32,
}
/// `struct ioctl_gntdev_map_grant_ref` with its one-element trailing array (the size the ioctl
/// number encodes); more refs follow in the same buffer.
#[repr(C)]
struct GntdevMapGrantRef {
    count: u32,
    pad: u32,
    index: u64,
    refs: [GntdevGrantRef; 1],
}
#[repr(C)]
struct GntdevUnmapGrantRef {
    index: u64,
    count: u32,
    pad: u32,
}
const IOCTL_GNTDEV_MAP_GRANT_REF: libc::c_ulong =
    ioc_none(b'G', 0, std::mem::size_of::<GntdevMapGrantRef>());
const IOCTL_GNTDEV_UNMAP_GRANT_REF: libc::c_ulong =
    ioc_none(b'G', 1, std::mem::size_of::<GntdevUnmapGrantRef>());

/// The `{ref, offset, domid}` arm of `gntdev_grant_copy_segment`'s source/dest union.
#[repr(C)]
#[derive(Clone, Copy)]
struct GntCopyForeign {
    gref: u32,
    offset: u16,
    domid: u16,
}
/// One end of a grant copy: a local buffer (`virt`) or a peer's grant (`foreign`), as the
/// segment's `GNTCOPY_*_gref` flags say. Both arms are 8 bytes, so every byte is defined.
#[repr(C)]
#[derive(Clone, Copy)]
union GntCopyPtr {
    virt: *mut u8,
    foreign: GntCopyForeign,
}
/// `struct gntdev_grant_copy_segment`; `pad` makes the C struct's tail padding explicit.
#[repr(C)]
#[derive(Clone, Copy)]
struct GntdevGrantCopySegment {
    source: GntCopyPtr,
    dest: GntCopyPtr,
    len: u16,
    flags: u16,
    status: i16,
    pad: u16,
}
/// `struct ioctl_gntdev_grant_copy`.
#[repr(C)]
struct GntdevGrantCopy {
    count: u32,
    segments: *mut GntdevGrantCopySegment,
}
const GNTCOPY_SOURCE_GREF: u16 = 1 << 0;
const GNTCOPY_DEST_GREF: u16 = 1 << 1;
const IOCTL_GNTDEV_GRANT_COPY: libc::c_ulong =
    ioc_none(b'G', 8, std::mem::size_of::<GntdevGrantCopy>());

// Layout of the grant-copy structs as the kernel (64-bit) lays them out.
#[cfg(target_pointer_width = "64")]
const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<GntCopyForeign>() == 8);
    assert!(offset_of!(GntCopyForeign, offset) == 4);
    assert!(offset_of!(GntCopyForeign, domid) == 6);
    assert!(size_of::<GntCopyPtr>() == 8);
    assert!(size_of::<GntdevGrantCopySegment>() == 24);
    assert!(offset_of!(GntdevGrantCopySegment, source) == 0);
    assert!(offset_of!(GntdevGrantCopySegment, dest) == 8);
    assert!(offset_of!(GntdevGrantCopySegment, len) == 16);
    assert!(offset_of!(GntdevGrantCopySegment, flags) == 18);
    assert!(offset_of!(GntdevGrantCopySegment, status) == 20);
    assert!(size_of::<GntdevGrantCopy>() == 16);
    assert!(offset_of!(GntdevGrantCopy, segments) == 8);
    assert!(IOCTL_GNTDEV_GRANT_COPY == 0x0010_4708);
};

// gntalloc.h
#[repr(C)]
struct GntallocAllocGref {
    domid: u16,
    flags: u16,
    count: u32,
    index: u64,
    gref_ids: [u32; 1],
}
#[repr(C)]
struct GntallocDeallocGref {
    index: u64,
    count: u32,
}
const GNTALLOC_FLAG_WRITABLE: u16 = 1;
const IOCTL_GNTALLOC_ALLOC_GREF: libc::c_ulong =
    ioc_none(b'G', 5, std::mem::size_of::<GntallocAllocGref>());
const IOCTL_GNTALLOC_DEALLOC_GREF: libc::c_ulong =
    ioc_none(b'G', 6, std::mem::size_of::<GntallocDeallocGref>());

// evtchn.h
#[repr(C)]
struct EvtchnBindInterdomain {
    remote_domain: u32,
    remote_port: u32,
}
#[repr(C)]
struct EvtchnPort {
    port: u32,
}
const IOCTL_EVTCHN_BIND_INTERDOMAIN: libc::c_ulong =
    ioc_none(b'E', 1, std::mem::size_of::<EvtchnBindInterdomain>());
const IOCTL_EVTCHN_BIND_UNBOUND_PORT: libc::c_ulong = ioc_none(b'E', 2, 4);
const IOCTL_EVTCHN_UNBIND: libc::c_ulong = ioc_none(b'E', 3, 4);
const IOCTL_EVTCHN_NOTIFY: libc::c_ulong = ioc_none(b'E', 4, 4);

const _: () = {
    assert!(std::mem::size_of::<GntdevMapGrantRef>() == 24);
    assert!(std::mem::size_of::<GntdevUnmapGrantRef>() == 16);
    assert!(std::mem::size_of::<GntallocAllocGref>() == 24);
    assert!(std::mem::size_of::<GntallocDeallocGref>() == 16);
    // Values from the kernel headers, as a cross-check of the encoding.
    assert!(IOCTL_GNTDEV_MAP_GRANT_REF == 0x0018_4700);
    assert!(IOCTL_GNTALLOC_ALLOC_GREF == 0x0018_4705);
    assert!(IOCTL_EVTCHN_BIND_INTERDOMAIN == 0x0008_4501);
    assert!(IOCTL_EVTCHN_NOTIFY == 0x0004_4504);
};

// The ioctl buffers below are assembled as little-endian u64 words.
const _: () = assert!(cfg!(target_endian = "little"));

/// Most grants mapped or shared in one call (bounds the ioctl buffers; the data area limit
/// the backend advertises is far below).
pub const MAX_GRANTS_PER_CALL: usize = 1 << 16;

fn open_dev(path: &str) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// `POLLIN`, for callers that do not link libc themselves.
pub const POLLIN: i16 = libc::POLLIN;

/// `poll` one descriptor; `Ok(true)` if ready, `Ok(false)` on timeout. EINTR counts as ready
/// (the caller re-checks).
pub fn poll_fd(fd: RawFd, events: i16, timeout: Option<Duration>) -> std::io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let ms = match timeout {
        None => -1,
        Some(t) => t.as_millis().min(i32::MAX as u128) as i32,
    };
    // SAFETY: `p` is one valid pollfd for the duration of the call.
    let r = unsafe { libc::poll(&mut p, 1, ms) };
    if r < 0 {
        let e = errno();
        if e.kind() == ErrorKind::Interrupted {
            return Ok(true);
        }
        return Err(e);
    }
    Ok(r > 0)
}

/// A shared mapping of `len` bytes of `fd` at page offset `index`.
fn mmap_shared(fd: RawFd, len: usize, index: u64, writable: bool) -> std::io::Result<*mut u8> {
    let prot = if writable {
        libc::PROT_READ | libc::PROT_WRITE
    } else {
        libc::PROT_READ
    };
    let off = libc::off_t::try_from(index)
        .map_err(|_| std::io::Error::new(ErrorKind::InvalidInput, "mmap offset too large"))?;
    // SAFETY: a fresh mapping chosen by the kernel (no fixed address), of a device file we
    // hold open; nothing else is affected.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd, off) };
    if p == libc::MAP_FAILED {
        return Err(errno());
    }
    Ok(p.cast())
}

/// # Safety
/// `addr..addr+len` must be a mapping made by [`mmap_shared`] that nothing uses any more.
unsafe fn munmap(addr: *mut u8, len: usize) {
    // SAFETY: per the function contract.
    unsafe { libc::munmap(addr.cast(), len) };
}

// ---- gntdev: the backend maps a peer's grants ---------------------------------------------

/// `/dev/xen/gntdev`, shared by all mappings of a process.
#[derive(Debug)]
pub struct Gntdev {
    file: File,
}

impl Gntdev {
    pub fn open() -> std::io::Result<Arc<Gntdev>> {
        Ok(Arc::new(Gntdev {
            file: open_dev(GNTDEV_PATH)?,
        }))
    }

    /// For tests: a `Gntdev` over any file, e.g. `/dev/null`, where every ioctl fails with
    /// `ENOTTY` (so a test sees which calls reach the kernel).
    #[cfg(any(test, feature = "test-utils"))]
    pub fn from_file(file: File) -> Arc<Gntdev> {
        Arc::new(Gntdev { file })
    }

    /// Map grants `refs` of domain `domid` as one contiguous area, in order. Fails if any
    /// grant is invalid (the whole mapping is then released).
    pub fn map(
        self: &Arc<Self>,
        domid: u32,
        refs: &[u32],
        writable: bool,
    ) -> std::io::Result<GrantMapping> {
        if refs.is_empty() || refs.len() > MAX_GRANTS_PER_CALL {
            return Err(std::io::Error::new(
                ErrorKind::InvalidInput,
                "grant count out of range",
            ));
        }
        // Buffer of u64 words so the header is 8-byte aligned: 16 header bytes + 8 per ref.
        let mut buf = vec![0u64; 2 + refs.len()];
        {
            let words: Vec<u64> = refs
                .iter()
                .map(|&r| u64::from(domid) | (u64::from(r) << 32))
                .collect();
            buf[0] = refs.len() as u64; // count (low half), pad (high half) = 0
            buf[2..].copy_from_slice(&words);
        }
        let hdr = buf.as_mut_ptr().cast::<GntdevMapGrantRef>();
        // SAFETY: `buf` is at least as large as GntdevMapGrantRef (24 bytes) plus the extra
        // refs the kernel reads for `count`, 8-byte aligned, and lives across the call.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), IOCTL_GNTDEV_MAP_GRANT_REF, hdr) };
        if r != 0 {
            return Err(errno());
        }
        let index = buf[1];
        let len = refs.len() * PAGE_SIZE;
        let mut mapping = GrantMapping {
            dev: self.clone(),
            addr: std::ptr::null_mut(),
            len,
            index,
            count: refs.len() as u32,
        };
        // On failure `mapping` is dropped, which releases the reservation.
        mapping.addr = mmap_shared(self.file.as_raw_fd(), len, index, writable)?;
        Ok(mapping)
    }

    fn unmap_ref(&self, index: u64, count: u32) {
        let mut u = GntdevUnmapGrantRef {
            index,
            count,
            pad: 0,
        };
        // SAFETY: `u` is a valid, properly sized struct for this ioctl.
        unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                IOCTL_GNTDEV_UNMAP_GRANT_REF,
                &mut u as *mut GntdevUnmapGrantRef,
            )
        };
    }
}

/// A peer's grants mapped into this process. Unmapped (and the grant handles released) on
/// drop. Implements [`SharedMem`], so tmem-ring runs over it unchanged.
#[derive(Debug)]
pub struct GrantMapping {
    dev: Arc<Gntdev>,
    addr: *mut u8,
    len: usize,
    index: u64,
    count: u32,
}

// SAFETY: the mapping is plain shared memory owned by this object; all access goes through
// raw pointers per the SharedMem contract.
unsafe impl Send for GrantMapping {}
// SAFETY: as above.
unsafe impl Sync for GrantMapping {}

impl Drop for GrantMapping {
    fn drop(&mut self) {
        if !self.addr.is_null() {
            // SAFETY: `addr/len` is our own mapping, dropped exactly once, with no users left
            // (the ring that borrowed it is gone with its owner).
            unsafe { munmap(self.addr, self.len) };
        }
        self.dev.unmap_ref(self.index, self.count);
    }
}

// SAFETY: `addr..addr+len` is a live mapping until Drop; mmap returns page-aligned addresses.
unsafe impl SharedMem for GrantMapping {
    fn base(&self) -> *mut u8 {
        self.addr
    }
    fn len(&self) -> usize {
        self.len
    }
}

impl GrantMapping {
    /// Copy the mapping out (for small read-only areas such as the grant directory).
    pub fn copy_out(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.len];
        // SAFETY: `addr..addr+len` is readable while self lives; the peer may write it
        // concurrently, which only makes the copied values arbitrary (they are validated).
        unsafe { std::ptr::copy_nonoverlapping(self.addr, v.as_mut_ptr(), self.len) };
        v
    }
}

// ---- gntdev grant copy: the hypervisor copies between a peer's grants and our buffers -----

/// Page size of a grant (a Xen page, whatever the local page size).
const GRANT_PAGE: usize = 4096;

/// Most segments in one grant copy call (a blkif request has at most 11; the bound keeps the
/// ioctl's segment array on the stack).
pub const MAX_COPY_SEGMENTS: usize = 64;

/// First domain id that names no real domain (`DOMID_FIRST_RESERVED`: `DOMID_SELF` and up).
const DOMID_FIRST_RESERVED: u32 = 0x7ff0;

/// A byte range of one page a peer granted: `len` bytes at `offset` of grant `gref`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopySeg {
    pub gref: u32,
    pub offset: u16,
    pub len: u16,
}

/// A grant copy that failed. Nothing is known about what was copied, in either direction.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// Refused before the ioctl (`InvalidInput`: too many segments, a buffer count or length
    /// that does not match, a reserved domain id), or the ioctl itself failed.
    #[error("grant copy failed: {0}")]
    Io(#[source] std::io::Error),
    /// Segment `index` is empty or leaves its 4096-byte grant; refused before the ioctl.
    #[error("grant copy segment {index}: {len} bytes at offset {offset} do not fit in one 4096-byte page")]
    Range { index: usize, offset: u16, len: u16 },
    /// Xen refused segment `index` with a `GNTST_*` status (e.g. a bad grant reference).
    #[error("grant copy of segment {index} failed: {} ({status})", gntst_name(*status))]
    Segment { index: usize, status: i16 },
}

impl CopyError {
    /// The segment this error is about, if it is about one.
    pub fn segment(&self) -> Option<usize> {
        match self {
            CopyError::Io(_) => None,
            CopyError::Range { index, .. } | CopyError::Segment { index, .. } => Some(*index),
        }
    }
}

/// The name of a `GNTST_*` status (`xen/include/public/grant_table.h`).
pub fn gntst_name(status: i16) -> &'static str {
    match status {
        0 => "okay",
        -1 => "general error",
        -2 => "bad domain",
        -3 => "bad grant reference",
        -4 => "bad handle",
        -5 => "bad virtual address",
        -6 => "bad device address",
        -7 => "no device space",
        -8 => "permission denied",
        -9 => "bad page",
        -10 => "bad copy argument",
        -11 => "address too big",
        -12 => "try again",
        -13 => "no space",
        _ => "unknown status",
    }
}

fn invalid_input(why: String) -> CopyError {
    CopyError::Io(std::io::Error::new(ErrorKind::InvalidInput, why))
}

/// Which way a grant copy goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyDir {
    FromGuest,
    ToGuest,
}

const EMPTY_COPY_SEGMENT: GntdevGrantCopySegment = GntdevGrantCopySegment {
    source: GntCopyPtr {
        foreign: GntCopyForeign {
            gref: 0,
            offset: 0,
            domid: 0,
        },
    },
    dest: GntCopyPtr {
        foreign: GntCopyForeign {
            gref: 0,
            offset: 0,
            domid: 0,
        },
    },
    len: 0,
    flags: 0,
    status: 0,
    pad: 0,
};

/// Fill `out[..segs.len()]` with the ioctl's segments, refusing everything the kernel would
/// refuse (or should never see) first. `local(i)` is buffer `i`: its address and length.
fn build_copy(
    domid: u32,
    dir: CopyDir,
    segs: &[CopySeg],
    nbufs: usize,
    mut local: impl FnMut(usize) -> (*mut u8, usize),
    out: &mut [GntdevGrantCopySegment; MAX_COPY_SEGMENTS],
) -> Result<(), CopyError> {
    if segs.len() > MAX_COPY_SEGMENTS {
        return Err(invalid_input(format!(
            "{} segments in one grant copy (at most {MAX_COPY_SEGMENTS})",
            segs.len()
        )));
    }
    if nbufs != segs.len() {
        return Err(invalid_input(format!(
            "{} buffers for {} grant copy segments",
            nbufs,
            segs.len()
        )));
    }
    if domid >= DOMID_FIRST_RESERVED {
        return Err(invalid_input(format!(
            "domain id {domid} is reserved: no grants to copy"
        )));
    }
    for (i, (s, o)) in segs.iter().zip(out.iter_mut()).enumerate() {
        if s.len == 0 || usize::from(s.offset) + usize::from(s.len) > GRANT_PAGE {
            return Err(CopyError::Range {
                index: i,
                offset: s.offset,
                len: s.len,
            });
        }
        let (ptr, len) = local(i);
        if len != usize::from(s.len) {
            return Err(invalid_input(format!(
                "grant copy buffer {i} is {len} bytes for a {}-byte segment",
                s.len
            )));
        }
        let foreign = GntCopyPtr {
            foreign: GntCopyForeign {
                gref: s.gref,
                offset: s.offset,
                domid: domid as u16, // < DOMID_FIRST_RESERVED, checked above
            },
        };
        let virt = GntCopyPtr { virt: ptr };
        let (source, dest, flags) = match dir {
            CopyDir::FromGuest => (foreign, virt, GNTCOPY_SOURCE_GREF),
            CopyDir::ToGuest => (virt, foreign, GNTCOPY_DEST_GREF),
        };
        *o = GntdevGrantCopySegment {
            source,
            dest,
            len: s.len,
            flags,
            // Not "okay" until the kernel says so.
            status: -1,
            pad: 0,
        };
    }
    Ok(())
}

/// The first segment whose status is not `GNTST_okay`, as an error.
fn copy_status(ops: &[GntdevGrantCopySegment]) -> Result<(), CopyError> {
    match ops.iter().position(|o| o.status != 0) {
        None => Ok(()),
        Some(index) => Err(CopyError::Segment {
            index,
            status: ops[index].status,
        }),
    }
}

impl Gntdev {
    /// Guest → local: for each `i`, copy `segs[i]` (`len` bytes at `offset` of grant `gref`
    /// of `domid`) into `bufs[i]`, which must be exactly `segs[i].len` bytes. One ioctl for
    /// all segments; every segment's status is checked.
    pub fn copy_from_guest(
        &self,
        domid: u32,
        segs: &[CopySeg],
        bufs: &mut [&mut [u8]],
    ) -> Result<(), CopyError> {
        let mut ops = [EMPTY_COPY_SEGMENT; MAX_COPY_SEGMENTS];
        build_copy(
            domid,
            CopyDir::FromGuest,
            segs,
            bufs.len(),
            |i| (bufs[i].as_mut_ptr(), bufs[i].len()),
            &mut ops,
        )?;
        // The kernel writes into `bufs` through the pointers taken above; `bufs` stays
        // mutably borrowed (unused by us) until the call returns.
        self.grant_copy(&mut ops[..segs.len()])
    }

    /// Local → guest: for each `i`, copy `bufs[i]` (exactly `segs[i].len` bytes) to `len`
    /// bytes at `offset` of grant `gref` of `domid`. One ioctl; every status is checked.
    pub fn copy_to_guest(
        &self,
        domid: u32,
        segs: &[CopySeg],
        bufs: &[&[u8]],
    ) -> Result<(), CopyError> {
        let mut ops = [EMPTY_COPY_SEGMENT; MAX_COPY_SEGMENTS];
        // The kernel only reads a source buffer (no FOLL_WRITE), so the `*mut` is never
        // written through.
        build_copy(
            domid,
            CopyDir::ToGuest,
            segs,
            bufs.len(),
            |i| (bufs[i].as_ptr().cast_mut(), bufs[i].len()),
            &mut ops,
        )?;
        self.grant_copy(&mut ops[..segs.len()])
    }

    /// Run one `IOCTL_GNTDEV_GRANT_COPY` over segments [`build_copy`] checked.
    fn grant_copy(&self, ops: &mut [GntdevGrantCopySegment]) -> Result<(), CopyError> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut arg = GntdevGrantCopy {
            count: ops.len() as u32, // <= MAX_COPY_SEGMENTS
            segments: ops.as_mut_ptr(),
        };
        // SAFETY: `arg` points at `count` initialised segments that live across the call; the
        // kernel writes only their `status`. Each local address is a live buffer of exactly
        // `len` bytes borrowed by our caller for the call (written only for `dest` buffers,
        // which come from `&mut` slices); each grant range was checked to stay in its page.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                IOCTL_GNTDEV_GRANT_COPY,
                &mut arg as *mut GntdevGrantCopy,
            )
        };
        if r < 0 {
            return Err(CopyError::Io(errno()));
        }
        copy_status(ops)
    }
}

// ---- gntalloc: the frontend shares its own pages ----------------------------------------

/// Pages of this domain granted to another domain through `/dev/xen/gntalloc`, mapped here.
/// Dropping unmaps them and releases the grants (the kernel keeps a page alive while the
/// peer still maps it).
#[derive(Debug)]
pub struct GrantShare {
    file: File,
    addr: *mut u8,
    len: usize,
    index: u64,
    refs: Vec<u32>,
}

// SAFETY: plain shared memory owned by this object, accessed through raw pointers only.
unsafe impl Send for GrantShare {}
// SAFETY: as above.
unsafe impl Sync for GrantShare {}

impl GrantShare {
    /// Allocate `pages` zeroed pages granted to `peer`.
    pub fn alloc(peer: u32, pages: usize, writable: bool) -> std::io::Result<GrantShare> {
        if pages == 0 || pages > MAX_GRANTS_PER_CALL {
            return Err(std::io::Error::new(
                ErrorKind::InvalidInput,
                "page count out of range",
            ));
        }
        let peer = u16::try_from(peer)
            .map_err(|_| std::io::Error::new(ErrorKind::InvalidInput, "peer domid too large"))?;
        let file = open_dev(GNTALLOC_PATH)?;
        // 16 header bytes, then `pages` u32 ids; in u64 words for alignment.
        let words = 2 + pages.div_ceil(2);
        let mut buf = vec![0u64; words];
        let flags = if writable { GNTALLOC_FLAG_WRITABLE } else { 0 };
        buf[0] = u64::from(peer) | (u64::from(flags) << 16) | ((pages as u64) << 32);
        let hdr = buf.as_mut_ptr().cast::<GntallocAllocGref>();
        // SAFETY: `buf` holds the header and room for `pages` grant ids, is 8-byte aligned,
        // and outlives the call.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), IOCTL_GNTALLOC_ALLOC_GREF, hdr) };
        if r != 0 {
            return Err(errno());
        }
        let index = buf[1];
        let refs: Vec<u32> = (0..pages)
            .map(|i| {
                let w = buf[2 + i / 2];
                if i % 2 == 0 {
                    w as u32
                } else {
                    (w >> 32) as u32
                }
            })
            .collect();
        let len = pages * PAGE_SIZE;
        let mut share = GrantShare {
            file,
            addr: std::ptr::null_mut(),
            len,
            index,
            refs,
        };
        share.addr = mmap_shared(share.file.as_raw_fd(), len, index, true)?;
        Ok(share)
    }

    /// The grant reference of each page, in order.
    pub fn refs(&self) -> &[u32] {
        &self.refs
    }

    /// Copy `bytes` into the shared pages at `offset` (before the peer maps them).
    pub fn write_at(&self, offset: usize, bytes: &[u8]) {
        let end = offset.checked_add(bytes.len()).expect("offset overflow");
        assert!(end <= self.len, "write_at out of range");
        // SAFETY: `offset <= len` (checked above), so the pointer stays inside our mapping.
        let dst = unsafe { self.addr.add(offset) };
        // SAFETY: `dst..dst+bytes.len()` is inside our live mapping; raw copy, no reference.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len()) };
    }
}

impl Drop for GrantShare {
    fn drop(&mut self) {
        if !self.addr.is_null() {
            // SAFETY: our own mapping, unused from here on.
            unsafe { munmap(self.addr, self.len) };
        }
        let mut d = GntallocDeallocGref {
            index: self.index,
            count: self.refs.len() as u32,
        };
        // SAFETY: a valid struct for this ioctl on the file that allocated the grants.
        unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                IOCTL_GNTALLOC_DEALLOC_GREF,
                &mut d as *mut GntallocDeallocGref,
            )
        };
    }
}

// SAFETY: `addr..addr+len` is a live, page-aligned mapping until Drop.
unsafe impl SharedMem for GrantShare {
    fn base(&self) -> *mut u8 {
        self.addr
    }
    fn len(&self) -> usize {
        self.len
    }
}

// ---- event channels ----------------------------------------------------------------------

/// `/dev/xen/evtchn`: one open file can bind many ports. Reading yields the ports that fired
/// (each then stays masked until written back); the file is non-blocking and pollable.
#[derive(Debug)]
pub struct Evtchn {
    file: File,
}

impl Evtchn {
    pub fn open() -> std::io::Result<Arc<Evtchn>> {
        Ok(Arc::new(Evtchn {
            file: open_dev(EVTCHN_PATH)?,
        }))
    }

    pub fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Bind to `remote_port` of `domid` (the backend side). Returns the local port.
    pub fn bind_interdomain(&self, domid: u32, remote_port: u32) -> std::io::Result<u32> {
        let mut b = EvtchnBindInterdomain {
            remote_domain: domid,
            remote_port,
        };
        // SAFETY: a valid struct for this ioctl; the kernel only reads it.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                IOCTL_EVTCHN_BIND_INTERDOMAIN,
                &mut b as *mut EvtchnBindInterdomain,
            )
        };
        if r < 0 {
            return Err(errno());
        }
        Ok(r as u32)
    }

    /// Allocate a port that `domid` may bind to (the frontend side). Returns the port.
    pub fn bind_unbound(&self, domid: u32) -> std::io::Result<u32> {
        let mut p = EvtchnPort { port: domid };
        // SAFETY: a valid 4-byte struct for this ioctl.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                IOCTL_EVTCHN_BIND_UNBOUND_PORT,
                &mut p as *mut EvtchnPort,
            )
        };
        if r < 0 {
            return Err(errno());
        }
        Ok(r as u32)
    }

    fn port_ioctl(&self, req: libc::c_ulong, port: u32) -> std::io::Result<()> {
        let mut p = EvtchnPort { port };
        // SAFETY: a valid 4-byte struct for these ioctls.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), req, &mut p as *mut EvtchnPort) };
        if r < 0 {
            return Err(errno());
        }
        Ok(())
    }

    pub fn notify(&self, port: u32) -> std::io::Result<()> {
        self.port_ioctl(IOCTL_EVTCHN_NOTIFY, port)
    }

    pub fn unbind(&self, port: u32) -> std::io::Result<()> {
        self.port_ioctl(IOCTL_EVTCHN_UNBIND, port)
    }

    /// Take every pending port (without blocking) and unmask each again. Returns how many.
    /// Unbounded: for a frontend waiting on its own port. A backend serving guests uses
    /// [`Evtchn::drain_bounded`], so a guest kicking in a loop cannot keep it here.
    pub fn drain(&self, on_port: impl FnMut(u32)) -> std::io::Result<usize> {
        Ok(drain_ports(&self.file, usize::MAX, on_port)?.ports)
    }

    /// Take at most about `max_ports` pending ports (without blocking) and unmask them; more
    /// may be pending when `more` is set: call again on the next round.
    pub fn drain_bounded(
        &self,
        max_ports: usize,
        on_port: impl FnMut(u32),
    ) -> std::io::Result<Drained> {
        drain_ports(&self.file, max_ports, on_port)
    }

    /// Wait up to `timeout` for any port to fire; drains and unmasks. True if one fired.
    pub fn wait(&self, timeout: Option<Duration>) -> std::io::Result<bool> {
        if self.drain(|_| {})? > 0 {
            return Ok(true);
        }
        poll_fd(self.as_raw_fd(), libc::POLLIN, timeout)?;
        Ok(self.drain(|_| {})? > 0)
    }
}

/// What one bounded drain of an event-channel file took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    pub ports: usize,
    /// The bound was reached before the file ran dry.
    pub more: bool,
}

/// Read fired ports from an evtchn file (4 bytes each) and write them back to unmask them,
/// until it has none (`WouldBlock`) or `max_ports` were taken. Each read takes up to
/// [`PORTS_PER_READ`] ports, so the bound is exceeded by less than one read.
fn drain_ports<F>(
    mut file: F,
    max_ports: usize,
    mut on_port: impl FnMut(u32),
) -> std::io::Result<Drained>
where
    F: std::io::Read + std::io::Write,
{
    let mut n = 0;
    let mut buf = [0u8; 4 * PORTS_PER_READ];
    while n < max_ports {
        match file.read(&mut buf) {
            Ok(0) => {
                return Ok(Drained {
                    ports: n,
                    more: false,
                })
            }
            Ok(len) => {
                let len = len - len % 4;
                for c in buf[..len].chunks_exact(4) {
                    on_port(u32::from_ne_bytes(c.try_into().expect("4 bytes")));
                }
                // Unmask what we took; errors (an unbound port) are harmless.
                let _ = file.write(&buf[..len]);
                n += len / 4;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                return Ok(Drained {
                    ports: n,
                    more: false,
                })
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Drained {
        ports: n,
        more: true,
    })
}

/// Ports taken by one read of an evtchn file.
const PORTS_PER_READ: usize = 64;

/// A port bound on a shared [`Evtchn`]; unbound on drop.
#[derive(Debug)]
pub struct BoundPort {
    pub evtchn: Arc<Evtchn>,
    pub port: u32,
}

impl BoundPort {
    pub fn notify(&self) -> std::io::Result<()> {
        self.evtchn.notify(self.port)
    }
}

impl Drop for BoundPort {
    fn drop(&mut self) {
        let _ = self.evtchn.unbind(self.port);
    }
}

/// Whether a path exists (used by the probe).
pub fn exists(p: &str) -> bool {
    Path::new(p).exists()
}

#[cfg(test)]
mod drain_tests {
    use super::*;

    /// An evtchn file whose guest re-fires its port as soon as it is unmasked, forever.
    struct KickingGuest {
        reads: usize,
        unmasked: usize,
    }

    impl std::io::Read for KickingGuest {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.reads += 1;
            let len = buf.len() - buf.len() % 4;
            for c in buf[..len].chunks_exact_mut(4) {
                c.copy_from_slice(&7u32.to_ne_bytes());
            }
            Ok(len)
        }
    }

    impl std::io::Write for KickingGuest {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.unmasked += buf.len() / 4;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_port_firing_forever_is_drained_only_up_to_the_bound() {
        let mut guest = KickingGuest {
            reads: 0,
            unmasked: 0,
        };
        let mut seen = 0;
        let d = drain_ports(&mut guest, 256, |p| {
            assert_eq!(p, 7);
            seen += 1;
        })
        .unwrap();
        assert!(d.more, "{d:?}");
        assert!(
            (256..256 + PORTS_PER_READ).contains(&d.ports),
            "took {} ports",
            d.ports
        );
        assert_eq!(seen, d.ports);
        assert_eq!(guest.unmasked, d.ports, "every port taken is unmasked");
    }

    #[test]
    fn an_empty_file_ends_the_drain_with_nothing_more() {
        struct Quiet;
        impl std::io::Read for Quiet {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(ErrorKind::WouldBlock.into())
            }
        }
        impl std::io::Write for Quiet {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let d = drain_ports(Quiet, 256, |_| panic!("no port fired")).unwrap();
        assert_eq!(
            d,
            Drained {
                ports: 0,
                more: false
            }
        );
    }
}

#[cfg(test)]
mod copy_tests {
    use super::*;

    /// A `Gntdev` whose file is not gntdev: any ioctl that reaches it fails with ENOTTY, so a
    /// test tells "refused before the ioctl" from "went to the kernel".
    fn not_gntdev() -> Gntdev {
        Gntdev {
            file: File::open("/dev/null").unwrap(),
        }
    }

    fn reached_the_ioctl(e: &CopyError) -> bool {
        matches!(e, CopyError::Io(io) if io.raw_os_error() == Some(libc::ENOTTY))
    }

    fn seg_bytes(o: &GntdevGrantCopySegment) -> [u8; 24] {
        let mut b = [0u8; 24];
        // SAFETY: the segment is 24 bytes (asserted at compile time) with no implicit padding
        // (`pad` is a field; both union arms are 8 bytes and one was written whole).
        unsafe {
            std::ptr::copy_nonoverlapping(
                (o as *const GntdevGrantCopySegment).cast::<u8>(),
                b.as_mut_ptr(),
                24,
            )
        };
        b
    }

    #[test]
    fn segments_are_laid_out_as_the_kernel_reads_them() {
        let mut buf = [0u8; 512];
        let addr = buf.as_mut_ptr() as u64;
        let mut ops = [EMPTY_COPY_SEGMENT; MAX_COPY_SEGMENTS];
        let seg = CopySeg {
            gref: 0x1234_5678,
            offset: 3584,
            len: 512,
        };
        build_copy(
            0x7ef,
            CopyDir::FromGuest,
            &[seg],
            1,
            |_| (buf.as_mut_ptr(), 512),
            &mut ops,
        )
        .unwrap();
        let mut want = [0u8; 24];
        want[0..4].copy_from_slice(&0x1234_5678u32.to_le_bytes());
        want[4..6].copy_from_slice(&3584u16.to_le_bytes());
        want[6..8].copy_from_slice(&0x7efu16.to_le_bytes());
        want[8..16].copy_from_slice(&addr.to_le_bytes());
        want[16..18].copy_from_slice(&512u16.to_le_bytes());
        want[18..20].copy_from_slice(&GNTCOPY_SOURCE_GREF.to_le_bytes());
        want[20..22].copy_from_slice(&(-1i16).to_le_bytes());
        assert_eq!(seg_bytes(&ops[0]), want);

        // The other way: the grant is the destination.
        build_copy(
            0x7ef,
            CopyDir::ToGuest,
            &[seg],
            1,
            |_| (buf.as_mut_ptr(), 512),
            &mut ops,
        )
        .unwrap();
        let b = seg_bytes(&ops[0]);
        assert_eq!(b[0..8], want[8..16], "source is our buffer");
        assert_eq!(b[8..16], want[0..8], "dest is the grant");
        assert_eq!(b[18..20], GNTCOPY_DEST_GREF.to_le_bytes());
    }

    #[test]
    fn bad_ranges_are_refused_before_the_ioctl() {
        let g = not_gntdev();
        for (offset, len) in [
            (0u16, 0u16),
            (4095, 2),
            (0, 4097),
            (4096, 1),
            (65535, 65535),
        ] {
            let seg = CopySeg {
                gref: 9,
                offset,
                len,
            };
            let mut page = vec![0u8; usize::from(len)];
            let e = g
                .copy_from_guest(1, &[seg, seg], &mut [&mut page[..], &mut [][..]])
                .unwrap_err();
            assert!(
                matches!(e, CopyError::Range { index: 0, offset: o, len: l } if o == offset && l == len),
                "{offset}+{len}: {e}"
            );
            let e = g.copy_to_guest(1, &[seg], &[&page[..]]).unwrap_err();
            assert!(matches!(e, CopyError::Range { index: 0, .. }), "{e}");
        }
        // The second segment is the bad one.
        let ok = CopySeg {
            gref: 1,
            offset: 0,
            len: 4096,
        };
        let bad = CopySeg {
            gref: 2,
            offset: 512,
            len: 3585,
        };
        let (mut a, mut b) = ([0u8; 4096], [0u8; 3585]);
        let e = g
            .copy_from_guest(1, &[ok, bad], &mut [&mut a[..], &mut b[..]])
            .unwrap_err();
        assert!(matches!(e, CopyError::Range { index: 1, .. }), "{e}");
        assert_eq!(e.segment(), Some(1));
        assert!(e.to_string().contains("3585 bytes at offset 512"), "{e}");
        // A whole page and a last sector fit.
        let last = CopySeg {
            gref: 3,
            offset: 3584,
            len: 512,
        };
        let mut c = [0u8; 512];
        let e = g
            .copy_from_guest(1, &[ok, last], &mut [&mut a[..], &mut c[..]])
            .unwrap_err();
        assert!(reached_the_ioctl(&e), "{e}");
    }

    #[test]
    fn calls_that_do_not_add_up_are_refused_before_the_ioctl() {
        let g = not_gntdev();
        let seg = CopySeg {
            gref: 1,
            offset: 0,
            len: 512,
        };
        let mut a = [0u8; 512];
        let invalid = |e: CopyError| {
            assert!(
                matches!(&e, CopyError::Io(io) if io.kind() == ErrorKind::InvalidInput),
                "{e}"
            );
            e.to_string()
        };
        // Too many segments.
        let segs = vec![seg; MAX_COPY_SEGMENTS + 1];
        let bufs: Vec<&[u8]> = vec![&a[..]; MAX_COPY_SEGMENTS + 1];
        let m = invalid(g.copy_to_guest(1, &segs, &bufs).unwrap_err());
        assert!(m.contains("65 segments"), "{m}");
        // Buffer count and length.
        let m = invalid(g.copy_to_guest(1, &[seg, seg], &[&a[..]]).unwrap_err());
        assert!(m.contains("1 buffers for 2"), "{m}");
        let m = invalid(
            g.copy_from_guest(1, &[seg], &mut [&mut a[..511]])
                .unwrap_err(),
        );
        assert!(m.contains("511 bytes for a 512-byte"), "{m}");
        // Reserved domain ids (DOMID_SELF and up) and ids that do not fit a domid_t.
        for d in [0x7ff0, 0x7ff2, 0x1_0000, u32::MAX] {
            let m = invalid(g.copy_from_guest(d, &[seg], &mut [&mut a[..]]).unwrap_err());
            assert!(m.contains("reserved"), "{m}");
        }
        // Nothing to copy: no ioctl at all.
        g.copy_from_guest(1, &[], &mut []).unwrap();
        // The largest accepted call reaches the kernel.
        let segs = vec![seg; MAX_COPY_SEGMENTS];
        let bufs: Vec<&[u8]> = vec![&a[..]; MAX_COPY_SEGMENTS];
        assert!(reached_the_ioctl(
            &g.copy_to_guest(0x7fef, &segs, &bufs).unwrap_err()
        ));
    }

    #[test]
    fn the_first_failed_segment_is_reported() {
        let mut ops = [EMPTY_COPY_SEGMENT; 4];
        for o in &mut ops {
            o.status = 0;
        }
        copy_status(&ops).unwrap();
        ops[2].status = -3;
        ops[3].status = -1;
        let e = copy_status(&ops).unwrap_err();
        assert!(
            matches!(
                e,
                CopyError::Segment {
                    index: 2,
                    status: -3
                }
            ),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "grant copy of segment 2 failed: bad grant reference (-3)"
        );
    }
}
