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

/// Whether a page is all zeroes (exits at the first non-zero 64-byte block).
pub(crate) fn is_zero(p: &Page) -> bool {
    p.chunks_exact(64)
        .all(|c| c.iter().fold(0u8, |a, &b| a | b) == 0)
}
