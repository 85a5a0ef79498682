//! Compressed pages in the store: objects of the size-class allocator (`tmem-zalloc`) inside
//! page frames, each one an extra node (no frame of its own) whose allocator handle and codec
//! are kept beside it.
//!
//! Locking: every byte of a compressed object is read and written under the metadata lock
//! (with each frame's own lock taken one at a time inside it), so compaction, which moves
//! objects under that lock, can never race a reader. Copying at most [`PAGE_SIZE`] bytes that
//! way costs about as much as the lookup; the decompression itself runs after the lock is
//! dropped, as does the compression on the put path.
//!
//! Frames a run gives back go to `Meta::zfreed` (a free list under the metadata lock) and from
//! there to the store's free list at the next reservation or reclaim.

use crate::compress::{self, ClientCompression, Compression, ZBuf, ZBUF_LEN};
use crate::meta::{Meta, EXTRA, NIL};
use crate::{lock, ClientId, Page, Store, PAGE_SIZE};
use std::sync::atomic::Ordering;
use tmem_zalloc::Span;

/// Bits of `Meta::xz` above the allocator handle: the codec.
const ALGO_SHIFT: u32 = 30;
const HANDLE_MASK: u32 = (1 << ALGO_SHIFT) - 1;

/// Misses in a row after which a client's pages are stored raw without a try for a while.
pub(crate) const MISS_RUN: u32 = 8;
/// Slots of the per-client miss record.
pub(crate) const ZMISS_SLOTS: usize = 64;

/// Objects moved per compaction step taken by a put under memory pressure.
pub(crate) const PRESSURE_COMPACT: usize = 256;

/// A compressed page read out under the metadata lock, to be decompressed after it.
pub(crate) struct ZCopy {
    pub(crate) algo: Compression,
    pub(crate) len: usize,
    pub(crate) bytes: ZBuf,
}

impl ZCopy {
    /// Decompress into `out`; false if the bytes do not make a page (never expected: they
    /// were written by this process under the same lock).
    pub(crate) fn expand(&self, out: &mut Page) -> bool {
        compress::decompress(self.algo, &self.bytes[..self.len], out)
    }
}

impl Meta {
    /// Whether node `x` is a compressed page.
    #[inline]
    pub(crate) fn is_z(&self, x: u32) -> bool {
        x & EXTRA != 0
            && self
                .xz
                .get((x & !EXTRA) as usize)
                .is_some_and(|&v| v != NIL)
    }

    /// Whether `x` is a page with no frame of its own and no allocator object: a same-filled
    /// page (or an LRU head).
    #[inline]
    pub(crate) fn is_same(&self, x: u32) -> bool {
        x & EXTRA != 0 && !self.is_z(x)
    }

    fn zhandle(&self, x: u32) -> Option<(u32, Compression)> {
        let v = *self.xz.get((x & !EXTRA) as usize)?;
        (v != NIL).then(|| (v & HANDLE_MASK, Compression::from_code(v >> ALGO_SHIFT)))
    }

    /// Free the allocator object of compressed node `x` (being removed); its run's frames, if
    /// that emptied it, go to `zfreed`.
    pub(crate) fn free_z(&mut self, x: u32) {
        let Some((h, _)) = self.zhandle(x) else {
            return;
        };
        let len = self.z.len_of(h).unwrap_or(0) as u64;
        self.g.z_pages -= 1;
        self.g.z_bytes -= len;
        if let Some(fs) = self.z.free(h) {
            self.zfreed.extend_from_slice(fs.as_slice());
        }
        if let Some(v) = self.xz.get_mut((x & !EXTRA) as usize) {
            *v = NIL;
        }
    }

    /// Frames runs gave back, for the store's free list.
    pub(crate) fn take_zfreed(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.zfreed)
    }

    /// Whether pool `gid`'s pages of client `c` are compressed with `algo` now. Durable pools
    /// keep their pages raw (their records name a frame; compressed persistent pages in the
    /// page file are not done yet).
    pub(crate) fn wants_z(&self, c: ClientId, gid: u32, algo: Compression) -> bool {
        if !algo.is_on() || self.durable_pool(gid) {
            return false;
        }
        let p = self.pool(gid);
        let setting = match p.owner {
            Some(o) => self.clients.get(&o).map(|cl| cl.zc),
            // A shared pool: the putting client's setting.
            None => self.clients.get(&c).map(|cl| cl.zc),
        };
        setting.is_some_and(|s| s.for_kind(p.kind.is_persistent()) == algo)
    }
}

impl Store {
    /// The client's compression setting, read without the metadata lock (`None`: off).
    #[inline]
    pub(crate) fn zsetting(&self, c: ClientId) -> Option<ClientCompression> {
        if !self.zany.load(Ordering::Relaxed) {
            return None;
        }
        lock(&self.zmodes).get(&c).copied().filter(|s| s.is_on())
    }

    /// Compress a page just copied into a frame if its client compresses (before the pool's
    /// kind is known: see [`ClientCompression::guess`]).
    /// Boxed: the put path carries it (or `None`) around, and it is made only for a page
    /// that compressed.
    ///
    /// A client whose pages keep failing to compress (encrypted swap, media) stops paying for
    /// it: after [`MISS_RUN`] misses in a row the next pages are stored raw without a try,
    /// 1, 2, 4 ... up to 64 of them after each further miss, and one page that compresses
    /// ends the streak. The record is per client, hashed into a few slots (two clients
    /// sharing one only share a streak).
    pub(crate) fn try_compress(&self, c: ClientId, page: &Page) -> Option<Box<ZCopy>> {
        let algo = self.zsetting(c)?.guess();
        let slot = &self.zmiss[c.0 as usize % ZMISS_SLOTS];
        let v = slot.load(Ordering::Relaxed);
        let (miss, skip) = (v & 0xffff, v >> 16);
        if skip > 0 {
            slot.store(v - (1 << 16), Ordering::Relaxed);
            self.zskipped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let max = self.zmax.load(Ordering::Relaxed);
        let mut z = Box::new(ZCopy {
            algo,
            len: 0,
            bytes: [0u8; ZBUF_LEN],
        });
        match compress::compress(algo, page, &mut z.bytes, max) {
            Some(n) => {
                if miss != 0 {
                    slot.store(0, Ordering::Relaxed);
                }
                z.len = n;
                Some(z)
            }
            None => {
                self.zincompressible.fetch_add(1, Ordering::Relaxed);
                let miss = (miss + 1).min(0xffff);
                let skip = if miss >= MISS_RUN {
                    1u32 << (miss - MISS_RUN).min(6)
                } else {
                    0
                };
                slot.store(miss | skip << 16, Ordering::Relaxed);
                None
            }
        }
    }

    /// Keep `bytes` (made by `algo`) as a compressed object and return its node, not linked
    /// yet. `spare`: a frame whose contents are no longer needed (the page's own frame, now
    /// that it is compressed), which a new run takes first. `None` (nothing changed): the
    /// page must stay raw; else whether `spare` was taken.
    pub(crate) fn z_store(
        &self,
        m: &mut Meta,
        bytes: &[u8],
        algo: Compression,
        spare: Option<u32>,
    ) -> Option<(u32, bool)> {
        let need = m.z.frames_needed(bytes.len())?;
        let mut frames = Vec::new();
        let mut used_spare = false;
        if need > 0 {
            if let Some(s) = spare {
                frames.push(s);
                used_spare = true;
            }
            while frames.len() < need {
                match m.zfreed.pop() {
                    Some(f) => frames.push(f),
                    None => break,
                }
            }
            if frames.len() < need {
                let mut fl = lock(&self.free);
                while frames.len() < need {
                    if let Some(f) = fl.list.pop() {
                        frames.push(f);
                    } else if fl.fresh < self.nframes {
                        fl.fresh += 1;
                        frames.push(fl.fresh - 1);
                    } else {
                        break;
                    }
                }
            }
            if frames.len() < need {
                // Not enough for a run: give back what was taken, keep the page raw.
                let taken = if used_spare {
                    &frames[1..]
                } else {
                    &frames[..]
                };
                m.zfreed.extend_from_slice(taken);
                return None;
            }
            for &f in &frames {
                // A never-used frame gets its node before it can ever reach the free list.
                m.ensure_data_links(f);
            }
        }
        let h = match m.z.alloc(bytes.len(), |_| Some(frames)) {
            Ok(h) if h <= HANDLE_MASK => h,
            Ok(h) => {
                if let Some(fs) = m.z.free(h) {
                    m.zfreed.extend_from_slice(fs.as_slice());
                }
                return None;
            }
            Err(_) => return None,
        };
        if let Some(span) = m.z.span(h) {
            self.z_write(&span, bytes);
        }
        let x = m.alloc_extra();
        let i = (x & !EXTRA) as usize;
        if m.xz.len() <= i {
            m.xz.resize(i + 1, NIL);
        }
        m.xz[i] = h | algo.code() << ALGO_SHIFT;
        m.g.z_pages += 1;
        m.g.z_bytes += bytes.len() as u64;
        Some((x, used_spare))
    }

    /// Copy compressed node `x`'s bytes out (under the metadata lock).
    pub(crate) fn z_read(&self, m: &Meta, x: u32) -> Option<ZCopy> {
        let (h, algo) = m.zhandle(x)?;
        let span = m.z.span(h)?;
        let mut out = ZCopy {
            algo,
            len: span.len(),
            bytes: [0u8; ZBUF_LEN],
        };
        self.span_read(&span, &mut out.bytes);
        Some(out)
    }

    fn span_read(&self, span: &Span, out: &mut [u8]) {
        let mut at = 0;
        for p in span.pieces() {
            let (o, l) = (p.off as usize, p.len as usize);
            let g = self.frames.lock(p.frame);
            out[at..at + l].copy_from_slice(&g[o..o + l]);
            at += l;
        }
    }

    fn z_write(&self, span: &Span, bytes: &[u8]) {
        let mut at = 0;
        for p in span.pieces() {
            let (o, l) = (p.off as usize, p.len as usize);
            let mut g = self.frames.lock(p.frame);
            g[o..o + l].copy_from_slice(&bytes[at..at + l]);
            at += l;
        }
    }

    /// Move at most `budget` compressed objects so that runs empty (under the metadata
    /// lock); their frames go to `zfreed`. Returns the frames freed.
    pub(crate) fn z_compact(&self, m: &mut Meta, budget: usize) -> usize {
        let c = m.z.compact(budget);
        let mut buf = [0u8; PAGE_SIZE];
        for mv in &c.moves {
            let n = mv.from.len();
            self.span_read(&mv.from, &mut buf[..n]);
            self.z_write(&mv.to, &buf[..n]);
        }
        m.g.z_compactions += 1;
        m.g.z_moved += c.moves.len() as u64;
        m.zfreed.extend_from_slice(&c.freed);
        c.freed.len()
    }

    /// Compact compressed pages: move at most `budget` objects, give emptied frames back.
    /// Returns the frames freed. The daemon calls it from housekeeping; a put under memory
    /// pressure also compacts a little before it evicts more.
    pub fn compact(&self, budget: usize) -> u64 {
        let (n, freed) = {
            let mut m = self.meta();
            if m.z.reclaimable_frames() == 0 {
                return 0;
            }
            let n = self.z_compact(&mut m, budget);
            (n, m.take_zfreed())
        };
        self.free_frames(&freed);
        n as u64
    }

    /// Frames compaction could give back now.
    pub fn compactable_frames(&self) -> u64 {
        self.meta().z.reclaimable_frames()
    }

    /// Set a client's compression, per pool kind, at run time. Pages already stored stay as
    /// they are.
    pub fn set_compression(
        &self,
        c: ClientId,
        setting: ClientCompression,
    ) -> Result<(), crate::TmemError> {
        let mut m = self.meta();
        let cl = m.client_mut(c)?;
        cl.zc = setting;
        cl.compress = setting.is_on();
        let mut z = lock(&self.zmodes);
        if setting.is_on() {
            z.insert(c, setting);
        } else {
            z.remove(&c);
        }
        self.zany.store(!z.is_empty(), Ordering::Relaxed);
        Ok(())
    }

    /// The codec `set_compress(c, true)` turns on (default lz4).
    pub fn set_default_compression(&self, algo: Compression) {
        self.zdefault.store(algo.code(), Ordering::Relaxed);
    }

    pub(crate) fn default_compression(&self) -> Compression {
        match Compression::from_code(self.zdefault.load(Ordering::Relaxed)) {
            Compression::Off => Compression::Lz4,
            a => a,
        }
    }

    /// Largest compressed size kept (bytes, 64 to 4032; default 3072): pages that do not
    /// compress to this or less are stored raw.
    pub fn set_compress_max_bytes(&self, n: usize) {
        self.zmax
            .store(n.clamp(64, PAGE_SIZE - 64), Ordering::Relaxed);
    }
}
