//! Page-data buffers: a fixed number of page frames, allocated (and pre-faulted) in chunks
//! the first time a frame of a chunk is needed, then recycled for the life of the store.
//!
//! Each frame sits behind its own mutex so that data is copied in and out without holding the
//! store's metadata lock; see the locking rules in `lib.rs`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use tmem_abi::{Page, PAGE_SIZE};

/// Frames per chunk (2 MiB of page data).
pub(crate) const CHUNK_FRAMES: usize = 512;

/// One chunk of frames.
type Chunk = Box<[Mutex<Page>]>;

pub(crate) struct Frames {
    chunks: Box<[OnceLock<Chunk>]>,
    nframes: u32,
    /// Chunks and frames allocated so far, so statistics need not walk the chunks.
    allocated_chunks: AtomicUsize,
    allocated_frames: AtomicUsize,
}

impl std::fmt::Debug for Frames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frames")
            .field("nframes", &self.nframes)
            .field("chunks_allocated", &self.chunks_allocated())
            .finish()
    }
}

impl Frames {
    pub(crate) fn new(nframes: u32) -> Frames {
        let n = (nframes as usize).div_ceil(CHUNK_FRAMES);
        Frames {
            chunks: (0..n).map(|_| OnceLock::new()).collect(),
            nframes,
            allocated_chunks: AtomicUsize::new(0),
            allocated_frames: AtomicUsize::new(0),
        }
    }

    /// Lock frame `f` (which must be `< nframes`), allocating its chunk on first use.
    pub(crate) fn lock(&self, f: u32) -> MutexGuard<'_, Page> {
        let f = f as usize;
        self.chunk(f / CHUNK_FRAMES)[f % CHUNK_FRAMES]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Chunk `c`, allocated and faulted in on first use.
    fn chunk(&self, c: usize) -> &Chunk {
        self.chunks[c].get_or_init(|| {
            let len = (self.nframes as usize - c * CHUNK_FRAMES).min(CHUNK_FRAMES);
            let mut v = Vec::with_capacity(len);
            for _ in 0..len {
                // Writing the zeroes faults the page in now, not on a later put.
                v.push(Mutex::new([0u8; PAGE_SIZE]));
            }
            std::hint::black_box(&mut v);
            self.allocated_chunks.fetch_add(1, Ordering::Relaxed);
            self.allocated_frames.fetch_add(len, Ordering::Relaxed);
            v.into_boxed_slice()
        })
    }

    /// Allocate and fault in every chunk not allocated yet; returns how many frames that
    /// was. Safe to run beside puts: a put that needs a chunk being faulted waits for it.
    pub(crate) fn prefault_all(&self) -> usize {
        let mut n = 0;
        for c in 0..self.chunks.len() {
            if self.chunks[c].get().is_none() {
                n += self.chunk(c).len();
            }
        }
        n
    }

    pub(crate) fn chunks_allocated(&self) -> usize {
        self.chunks.iter().filter(|c| c.get().is_some()).count()
    }

    /// Bytes spent beyond the page data itself by the allocated frames (mutex words, padding).
    pub(crate) fn overhead_bytes(&self) -> u64 {
        let per = std::mem::size_of::<Mutex<Page>>() - PAGE_SIZE;
        let frames = self.allocated_frames.load(Ordering::Relaxed);
        let chunks = self.allocated_chunks.load(Ordering::Relaxed);
        (frames * per + chunks * std::mem::size_of::<Chunk>()) as u64
    }
}

/// The word a *same-filled* page repeats: `Some(w)` if every 8 bytes of `p` are
/// `w.to_le_bytes()` (zram's rule; `Some(0)` is an all-zero page), else `None`.
///
/// Runs on every put, right after the copy into the frame (the first line is in cache): a
/// page that is not same-filled is almost always told by its first 64 bytes, so the scan goes
/// by 64-byte blocks (eight word compares folded into one test, which the compiler
/// vectorises) and stops at the first block with a word that differs.
pub(crate) fn same_fill(p: &Page) -> Option<u64> {
    let word = |c: &[u8]| u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
    let w = word(&p[..8]);
    p.chunks_exact(64)
        .all(|block| block.chunks_exact(8).fold(0, |acc, c| acc | (word(c) ^ w)) == 0)
        .then_some(w)
}

/// Where page frames live: the heap (nothing survives the process) or a mapped page file
/// (durable; see `durable.rs`).
#[derive(Debug)]
pub(crate) enum FrameMem {
    Heap(Frames),
    Mapped(std::sync::Arc<tmem_pmem::PageMemory>),
}

/// A locked frame of either kind.
pub(crate) enum FrameLock<'a> {
    Heap(MutexGuard<'a, Page>),
    Mapped(tmem_pmem::FrameGuard<'a>),
}

impl std::ops::Deref for FrameLock<'_> {
    type Target = Page;
    fn deref(&self) -> &Page {
        match self {
            FrameLock::Heap(g) => g,
            FrameLock::Mapped(g) => g,
        }
    }
}

impl std::ops::DerefMut for FrameLock<'_> {
    fn deref_mut(&mut self) -> &mut Page {
        match self {
            FrameLock::Heap(g) => &mut *g,
            FrameLock::Mapped(g) => &mut *g,
        }
    }
}

impl FrameMem {
    #[inline]
    pub(crate) fn lock(&self, f: u32) -> FrameLock<'_> {
        match self {
            FrameMem::Heap(h) => FrameLock::Heap(h.lock(f)),
            FrameMem::Mapped(m) => FrameLock::Mapped(m.lock_frame(f)),
        }
    }

    /// Fault in all page memory; the bytes that took.
    pub(crate) fn prefault(&self) -> u64 {
        match self {
            FrameMem::Heap(h) => h.prefault_all() as u64 * PAGE_SIZE as u64,
            // Best effort: a page file that cannot be populated (tmpfs full) still works for
            // the pages it can hold; the failure shows as a put error, not a crash.
            FrameMem::Mapped(m) => m.populate().unwrap_or(0),
        }
    }

    pub(crate) fn overhead_bytes(&self) -> u64 {
        match self {
            FrameMem::Heap(h) => h.overhead_bytes(),
            FrameMem::Mapped(m) => {
                let g = m.geometry();
                // Frame locks, plus the page and pool records in the file.
                (g.nframes as u64) * (std::mem::size_of::<Mutex<()>>() as u64 + 64)
                    + (g.nxrecs as u64 + g.npools as u64) * 64
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(w: u64) -> Page {
        let mut p = [0u8; PAGE_SIZE];
        tmem_abi::page::fill_page(&mut p, w);
        p
    }

    #[test]
    fn same_filled_pages_of_every_word_class_are_recognised() {
        for w in [
            0,
            u64::MAX,
            0x0102_0304_0506_0708,
            0x8000_0000_0000_0001,
            1,
            0xabab_abab_abab_abab,
        ] {
            assert_eq!(same_fill(&filled(w)), Some(w), "word {w:#x}");
        }
        assert_eq!(same_fill(&[0xff; PAGE_SIZE]), Some(u64::MAX));
        // The word is the page's first 8 bytes read little-endian.
        let mut p = [0u8; PAGE_SIZE];
        for (i, b) in p.iter_mut().enumerate() {
            *b = (i % 8) as u8 + 1;
        }
        assert_eq!(same_fill(&p), Some(0x0807_0605_0403_0201));
    }

    #[test]
    fn a_page_that_differs_anywhere_is_not_same_filled() {
        for w in [0, u64::MAX, 0x0102_0304_0506_0708] {
            // Every byte position, in every word of the first and last block, and a few in
            // between: one flipped bit is enough.
            for at in (0..128)
                .chain(PAGE_SIZE - 128..PAGE_SIZE)
                .chain([1000, 2048, 3333])
            {
                let mut p = filled(w);
                p[at] ^= 0x10;
                assert_eq!(same_fill(&p), None, "word {w:#x}, byte {at} changed");
            }
        }
        // Only the last byte differs (what a scan that stopped early would miss).
        let mut p = [0u8; PAGE_SIZE];
        p[PAGE_SIZE - 1] = 1;
        assert_eq!(same_fill(&p), None);
        // A repeated 4-byte pattern is a repeated 8-byte word too; a repeated 16-byte one
        // whose halves differ is not.
        let mut p = [0u8; PAGE_SIZE];
        for (i, c) in p.chunks_exact_mut(8).enumerate() {
            c.copy_from_slice(&(if i % 2 == 0 { 5u64 } else { 6 }).to_le_bytes());
        }
        assert_eq!(same_fill(&p), None);
        let mut p = [0u8; PAGE_SIZE];
        for c in p.chunks_exact_mut(4) {
            c.copy_from_slice(&0xdead_beefu32.to_le_bytes());
        }
        assert_eq!(same_fill(&p), Some(0xdead_beef_dead_beef));
    }
}
