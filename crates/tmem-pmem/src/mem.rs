//! [`PageMemory`]: page frames and their records in a mapped page file.

use std::io;
use std::ops::{Deref, DerefMut};
use std::os::fd::AsFd;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tmem_abi::{Page, PAGE_SIZE};

use crate::file::PageFile;
use crate::layout::*;
use crate::map::Mapping;

/// Why a page file could not be used. Each leaves the file untouched.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot use the page file: {0}")]
    Io(#[from] io::Error),
    #[error(
        "the page file is not a tmemd page file (no tmemd superblock in its {len} bytes); \
         refusing to overwrite it: remove it or configure another path"
    )]
    Foreign { len: u64 },
    #[error(
        "the page file was written by a tmemd with page-file format {found_major}.{found_minor}, \
         which this tmemd (format {FORMAT_MAJOR}.{FORMAT_MINOR}) cannot read; it is left as it \
         was: run a tmemd that reads that format, or remove the file (its guests' persistent \
         pages are then lost)"
    )]
    Incompatible { found_major: u32, found_minor: u32 },
    #[error("the page file's superblock is damaged ({0}); it is left as it was: remove it to start afresh")]
    Corrupt(String),
    #[error(
        "another process holds the page file (another tmemd?); two tmemds on one page file would \
         corrupt it: stop the other one, or give this one another page file"
    )]
    Busy,
}

/// What [`PageMemory::open`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// The file was empty (or its formatting never finished): formatted afresh.
    Formatted,
    /// A page file written by a tmemd of format `1.minor`: its records are to be scanned.
    Existing { minor: u32 },
}

/// Every valid record found by [`PageMemory::scan`].
#[derive(Debug, Default)]
pub struct Scan {
    pub pools: Vec<(u32, PoolRecord)>,
    /// `(frame, record)` for frames that hold a page.
    pub frames: Vec<(u32, PageRecord)>,
    /// `(metadata record slot, record)` for pages kept without a frame.
    pub xrecs: Vec<(u32, PageRecord)>,
    /// Records with a seal that did not match (a write cut short): cleared.
    pub torn: u64,
    pub took: Duration,
}

/// Page frames with a lock each, and the pool and page records that describe them, all in a
/// `MAP_SHARED` mapping of a [`PageFile`].
///
/// Record writes are not synchronised here: the store makes them under its metadata lock.
#[derive(Debug)]
pub struct PageMemory {
    map: Mapping,
    layout: Layout,
    file: PageFile,
    locks: Box<[Mutex<()>]>,
    seq: AtomicU64,
}

/// A locked frame: the page, to read or write, while the guard lives.
#[derive(Debug)]
pub struct FrameGuard<'a> {
    _lock: MutexGuard<'a, ()>,
    page: &'a mut Page,
}

impl Deref for FrameGuard<'_> {
    type Target = Page;
    fn deref(&self) -> &Page {
        self.page
    }
}

impl DerefMut for FrameGuard<'_> {
    fn deref_mut(&mut self) -> &mut Page {
        self.page
    }
}

impl PageMemory {
    /// Map `file`: format it for `want` if it is new, else check its superblock (its own
    /// geometry is kept: see [`PageMemory::geometry`]). Nothing is written to an existing
    /// file until its superblock has been found good.
    pub fn open(file: PageFile, want: Geometry) -> Result<(PageMemory, Opened), OpenError> {
        // Held for as long as the file is open (the lock belongs to the open file, so an fd
        // handed back by systemd's fd store, the same open file, takes it again at once).
        #[allow(deprecated)]
        match nix::fcntl::flock(
            std::os::fd::AsRawFd::as_raw_fd(&file.as_fd()),
            nix::fcntl::FlockArg::LockExclusiveNonblock,
        ) {
            Ok(()) => {}
            Err(nix::errno::Errno::EWOULDBLOCK) => return Err(OpenError::Busy),
            Err(e) => return Err(OpenError::Io(e.into())),
        }
        let len = file.len()?;
        let mut sb = [0u64; SB_WORDS];
        if len >= PAGE_SIZE as u64 {
            let mut buf = [0u8; SB_WORDS * 8];
            nix::sys::uio::pread(file.as_fd(), &mut buf, 0).map_err(io::Error::from)?;
            for (i, w) in sb.iter_mut().enumerate() {
                *w = u64::from_le_bytes(buf[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
            }
        }
        // No magic: a format that never finished (it writes the magic last, after the other
        // words in order), or an empty file. Anything else without our magic is not ours.
        let unfinished = sb[SB_MAGIC] == 0
            && (sb[SB_VERSION] == 0 || (sb[SB_VERSION] >> 32) as u32 == FORMAT_MAJOR);
        if len == 0 || unfinished {
            return Self::format(file, want).map(|m| (m, Opened::Formatted));
        }
        if sb[SB_MAGIC] != MAGIC {
            return Err(OpenError::Foreign { len });
        }
        let (major, minor) = ((sb[SB_VERSION] >> 32) as u32, sb[SB_VERSION] as u32);
        if major != FORMAT_MAJOR {
            return Err(OpenError::Incompatible {
                found_major: major,
                found_minor: minor,
            });
        }
        if seal(SEED_SUPER, &sb[1..SB_SUM]) != sb[SB_SUM] {
            return Err(OpenError::Corrupt("checksum mismatch".into()));
        }
        if sb[SB_PAGE_SIZE] != PAGE_SIZE as u64 {
            return Err(OpenError::Corrupt(format!(
                "page size {}",
                sb[SB_PAGE_SIZE]
            )));
        }
        let geo = Geometry {
            nframes: u32::try_from(sb[SB_NFRAMES]).map_err(|_| bad("frame count"))?,
            nxrecs: u32::try_from(sb[SB_NXRECS]).map_err(|_| bad("record count"))?,
            npools: u32::try_from(sb[SB_NPOOLS]).map_err(|_| bad("pool count"))?,
        };
        let layout = Layout::new(geo);
        if layout.len as u64 != sb[SB_LEN] || len != sb[SB_LEN] {
            return Err(OpenError::Corrupt(format!(
                "file is {len} bytes, superblock says {} and geometry {}",
                sb[SB_LEN], layout.len
            )));
        }
        let map = Mapping::new(&file, layout.len)?;
        Ok((Self::with(map, layout, file), Opened::Existing { minor }))
    }

    fn format(file: PageFile, geo: Geometry) -> Result<PageMemory, OpenError> {
        let layout = Layout::new(geo);
        // Drop whatever an interrupted format left, then size the file: tmpfs and memfd
        // give back zeroes for the rest, so every record starts without a seal.
        file.set_len(0)?;
        file.set_len(layout.len as u64)?;
        let map = Mapping::new(&file, layout.len)?;
        let mut sb = [0u64; SB_WORDS];
        sb[SB_VERSION] = (FORMAT_MAJOR as u64) << 32 | FORMAT_MINOR as u64;
        sb[SB_PAGE_SIZE] = PAGE_SIZE as u64;
        sb[SB_NFRAMES] = geo.nframes as u64;
        sb[SB_NXRECS] = geo.nxrecs as u64;
        sb[SB_NPOOLS] = geo.npools as u64;
        sb[SB_LEN] = layout.len as u64;
        sb[SB_SUM] = seal(SEED_SUPER, &sb[1..SB_SUM]);
        for (i, w) in sb.iter().enumerate().skip(1) {
            map.word(i * 8).store(*w, Ordering::Relaxed);
        }
        // The magic last: a format cut short leaves no magic and is formatted again.
        fence(Ordering::Release);
        map.word(SB_MAGIC * 8).store(MAGIC, Ordering::Relaxed);
        Ok(Self::with(map, layout, file))
    }

    fn with(map: Mapping, layout: Layout, file: PageFile) -> PageMemory {
        debug_assert_eq!(map.len(), layout.len);
        PageMemory {
            locks: (0..layout.geo.nframes).map(|_| Mutex::new(())).collect(),
            map,
            layout,
            file,
            seq: AtomicU64::new(1),
        }
    }

    /// The file's geometry (on an existing file, what it was formatted with).
    pub fn geometry(&self) -> Geometry {
        self.layout.geo
    }

    /// The page file (to hand its fd to the service manager).
    pub fn file(&self) -> &PageFile {
        &self.file
    }

    /// Lock frame `f` (`< nframes`).
    pub fn lock_frame(&self, f: u32) -> FrameGuard<'_> {
        let lock = self.locks[f as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let off = self.layout.data + f as usize * PAGE_SIZE;
        // SAFETY: the frame's lock is held for as long as the reference lives (both are in
        // the guard), and this is the only place a reference to frame data is made.
        let page = unsafe { self.map.page_mut(off) };
        FrameGuard { _lock: lock, page }
    }

    fn record_off(&self, region: usize, slot: u32) -> usize {
        region + slot as usize * RECORD
    }

    fn write_record(&self, off: usize, seed: u64, words: &[u64; WORDS - 1]) {
        let s = self.map.word(off);
        s.store(0, Ordering::Relaxed);
        crate::crash::point();
        // The seal is gone before any field changes (a compiler or CPU reordering the field
        // stores above it could leave a stale seal over new fields).
        fence(Ordering::Release);
        for (i, w) in words.iter().enumerate() {
            self.map.word(off + 8 + i * 8).store(*w, Ordering::Relaxed);
        }
        crate::crash::point();
        // Everything before (the record's fields, and the page data the caller copied into
        // the frame) is in place before the seal says so.
        fence(Ordering::Release);
        s.store(seal(seed, words), Ordering::Relaxed);
        crate::crash::point();
    }

    fn clear_record(&self, off: usize) {
        self.map.word(off).store(0, Ordering::Relaxed);
        // Whatever the caller does next (reuse the frame) comes after the clear.
        fence(Ordering::Release);
        crate::crash::point();
    }

    fn read_record(&self, off: usize, seed: u64) -> Result<Option<[u64; WORDS - 1]>, ()> {
        let s = self.map.word(off).load(Ordering::Relaxed);
        if s == 0 {
            return Ok(None);
        }
        let mut w = [0u64; WORDS - 1];
        for (i, x) in w.iter_mut().enumerate() {
            *x = self.map.word(off + 8 + i * 8).load(Ordering::Relaxed);
        }
        if seal(seed, &w) == s {
            Ok(Some(w))
        } else {
            Err(())
        }
    }

    /// A sequence number for the next page record (higher than any in the file).
    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Say that frame `f` holds `rec`'s page. Call after the page data is in the frame.
    pub fn publish_frame(&self, f: u32, rec: &PageRecord) {
        self.write_record(
            self.record_off(self.layout.frame_hdrs, f),
            SEED_PAGE,
            &rec.encode(),
        );
    }

    /// Frame `f` no longer holds a page worth keeping.
    pub fn clear_frame(&self, f: u32) {
        self.clear_record(self.record_off(self.layout.frame_hdrs, f));
    }

    /// Say that a page without a frame exists (metadata record `r`).
    pub fn publish_xrec(&self, r: u32, rec: &PageRecord) {
        self.write_record(
            self.record_off(self.layout.xrecs, r),
            SEED_PAGE,
            &rec.encode(),
        );
    }

    pub fn clear_xrec(&self, r: u32) {
        self.clear_record(self.record_off(self.layout.xrecs, r));
    }

    pub fn write_pool(&self, slot: u32, rec: &PoolRecord) {
        self.write_record(
            self.record_off(self.layout.pools, slot),
            SEED_POOL,
            &rec.encode(),
        );
    }

    pub fn clear_pool(&self, slot: u32) {
        self.clear_record(self.record_off(self.layout.pools, slot));
    }

    /// Read every record; clear the torn ones; make [`PageMemory::next_seq`] continue above
    /// every sequence number found.
    pub fn scan(&self) -> Scan {
        let start = Instant::now();
        let mut s = Scan::default();
        let g = self.layout.geo;
        for slot in 0..g.npools {
            let off = self.record_off(self.layout.pools, slot);
            match self.read_record(off, SEED_POOL) {
                Ok(Some(w)) => s.pools.push((slot, PoolRecord::decode(&w))),
                Ok(None) => {}
                Err(()) => {
                    s.torn += 1;
                    self.clear_record(off);
                }
            }
        }
        let mut max_seq = 0;
        for (region, n, out) in [
            (self.layout.frame_hdrs, g.nframes, &mut s.frames),
            (self.layout.xrecs, g.nxrecs, &mut s.xrecs),
        ] {
            for slot in 0..n {
                let off = region + slot as usize * RECORD;
                match self.read_record(off, SEED_PAGE) {
                    Ok(Some(w)) => {
                        let r = PageRecord::decode(&w);
                        max_seq = max_seq.max(r.seq);
                        out.push((slot, r));
                    }
                    Ok(None) => {}
                    Err(()) => {
                        s.torn += 1;
                        self.clear_record(off);
                    }
                }
            }
        }
        self.seq.store(max_seq + 1, Ordering::Relaxed);
        s.took = start.elapsed();
        s
    }

    /// Back the whole file with memory and page tables now, contents unchanged (a first
    /// touch costs as much as twenty page copies). Fails if the file system is full.
    /// Returns the bytes populated.
    pub fn populate(&self) -> io::Result<u64> {
        let len = self.layout.len;
        nix::fcntl::fallocate(
            std::os::fd::AsRawFd::as_raw_fd(&self.file.as_fd()),
            nix::fcntl::FallocateFlags::empty(),
            0,
            len as libc::off_t,
        )
        .map_err(io::Error::from)?;
        // In 2 MiB steps, so a put beside it never waits for the whole file.
        const STEP: usize = 2 << 20;
        let mut off = 0;
        while off < len {
            let n = STEP.min(len - off);
            if !self.map.populate(off, n)? {
                break;
            }
            off += n;
        }
        Ok(len as u64)
    }
}

fn bad(what: &str) -> OpenError {
    OpenError::Corrupt(format!("{what} out of range"))
}
