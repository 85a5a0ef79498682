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
use crate::{lock, ClientId, Page, PageKey, Store, PAGE_SIZE};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use tmem_pmem::{page_flags, PageRecord};
use tmem_zalloc::Span;

/// Bits of `Meta::xz` above the allocator handle: the codec.
const ALGO_SHIFT: u32 = 30;
const HANDLE_MASK: u32 = (1 << ALGO_SHIFT) - 1;

/// Misses in a row after which a client's pages are stored raw without a try for a while.
pub(crate) const MISS_RUN: u32 = 8;
/// The longest run of pages stored raw without a try during a streak: a try on a page that
/// does not compress costs about as much as the put itself with lz4, four times that with
/// zstd, so one in 1025 keeps an incompressible client within ~1% of compression off (one
/// in 65 cost zstd ~7%), and a client whose pages compress again is noticed within 4 MiB.
pub(crate) const MAX_SKIP: u32 = 1024;
/// Slots of the per-client miss record.
pub(crate) const ZMISS_SLOTS: usize = 64;

/// Objects moved per housekeeping compaction step ([`Store::compact_some`]).
pub(crate) const IDLE_COMPACT: usize = 256;

/// Objects moved per compaction step taken by a put under memory pressure.
pub(crate) const PRESSURE_COMPACT: usize = 256;

/// Recovery: each run frame's run, its place in the run, and the run's class.
pub(crate) type RunFrames = HashMap<u32, (u32, u32, tmem_zalloc::ClassInfo)>;

/// A compressed page's place in its record's last word: first frame (bits 0-31), offset in
/// it (32-43), length - 1 (44-55), codec (56-57).
fn encode_loc(frame: u32, off: u32, len: u32, algo: Compression) -> u64 {
    frame as u64
        | (off as u64 & 0xfff) << 32
        | ((len as u64 - 1) & 0xfff) << 44
        | (algo.code() as u64) << 56
}

fn decode_loc(w: u64) -> Option<(u32, u32, u32, Compression)> {
    let algo = Compression::from_code((w >> 56) as u32 & 3);
    if !algo.is_on() || w >> 58 != 0 {
        return None;
    }
    Some((
        w as u32,
        (w >> 32) as u32 & 0xfff,
        ((w >> 44) as u32 & 0xfff) + 1,
        algo,
    ))
}

/// Per-thread scratch for gets of compressed pages: the compressed bytes copied out under the
/// lock and the page they expand to (so a get zeroes no 8.5 KiB of stack).
pub(crate) type GetScratch = Box<(ZBuf, Page)>;

thread_local! {
    pub(crate) static GET_SCRATCH: std::cell::RefCell<GetScratch> =
        std::cell::RefCell::new(Box::new(([0; ZBUF_LEN], [0; PAGE_SIZE])));
}

/// A compressed page, made on the put path, to be stored under the metadata lock.
pub(crate) struct ZCopy {
    pub(crate) algo: Compression,
    pub(crate) len: usize,
    pub(crate) bytes: ZBuf,
}

impl Meta {
    /// A new node for allocator object `h` (`len` bytes compressed with `algo`), linked both
    /// ways and counted: for a put and for recovery alike.
    fn link_z(&mut self, h: u32, algo: Compression, len: usize) -> u32 {
        let x = self.alloc_extra();
        let i = (x & !EXTRA) as usize;
        if self.xz.len() <= i {
            self.xz.resize(i + 1, NIL);
        }
        self.xz[i] = h | algo.code() << ALGO_SHIFT;
        if self.zowner.len() <= h as usize {
            self.zowner.resize(h as usize + 1, NIL);
        }
        self.zowner[h as usize] = x;
        self.g.z_pages += 1;
        self.g.z_bytes += len as u64;
        x
    }

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

    /// A compressed node's length and the memory it takes (its share of its run).
    pub(crate) fn z_cost(&self, x: u32) -> Option<(u64, u64)> {
        let (h, _) = self.zhandle(x)?;
        let len = self.z.len_of(h)?;
        let c = self.z.class_for(len)?;
        Some((
            len as u64,
            c.frames as u64 * PAGE_SIZE as u64 / c.slots as u64,
        ))
    }

    fn zhandle(&self, x: u32) -> Option<(u32, Compression)> {
        // A frame's node id is not an extra index (the two are separate number spaces).
        if x & EXTRA == 0 {
            return None;
        }
        let v = *self.xz.get((x & !EXTRA) as usize)?;
        (v != NIL).then(|| (v & HANDLE_MASK, Compression::from_code(v >> ALGO_SHIFT)))
    }

    /// Free the allocator object of compressed node `x` (being removed; a durable page's
    /// record is already cleared); its run's frames, if that emptied it, go to `zfreed`.
    pub(crate) fn free_z(&mut self, x: u32) {
        let Some((h, _)) = self.zhandle(x) else {
            return;
        };
        let len = self.z.len_of(h).unwrap_or(0) as u64;
        self.z_holes = true;
        self.g.z_pages -= 1;
        self.g.z_bytes -= len;
        if let Some(fs) = self.z.free(h) {
            self.release_run_frames(fs.as_slice());
        }
        if let Some(v) = self.xz.get_mut((x & !EXTRA) as usize) {
            *v = NIL;
        }
        if let Some(o) = self.zowner.get_mut(h as usize) {
            *o = NIL;
        }
    }

    /// Frames of a run that emptied: a durable store clears their run records first (so a
    /// recovery never takes them for a run again), then they are free.
    pub(crate) fn release_run_frames(&mut self, frames: &[u32]) {
        if let Some(d) = self.dur.as_ref() {
            for &f in frames {
                d.pm.clear_frame(f);
            }
        }
        self.zfreed.extend_from_slice(frames);
    }

    /// Durable stores: record a new run (every frame: its class, the run's length, the
    /// frame's place in it, and a key shared by the run), before any object is written to
    /// it. `h` is the object whose allocation made the run.
    pub(crate) fn record_run(&mut self, h: u32) {
        let Some((frames, class)) = self.z.run_of(h) else {
            return;
        };
        let Some(d) = self.dur.as_ref() else { return };
        let key = d.pm.next_seq();
        let fs = frames.as_slice();
        for (i, &f) in fs.iter().enumerate() {
            let r = PageRecord {
                pool_slot: u32::MAX,
                flags: page_flags::RUN,
                oid: [class.size as u64, fs.len() as u64 | (i as u64) << 32, key],
                index: 0,
                seq: key,
                fill: fs[0] as u64,
            };
            d.pm.publish_frame(f, &r);
        }
    }

    /// Where compressed node `x`'s bytes are, as its page record says it (`None`: `x` is
    /// not compressed): first frame, offset in it, length and codec in one word.
    pub(crate) fn z_location(&self, x: u32) -> Option<u64> {
        let (h, algo) = self.zhandle(x)?;
        let s = self.z.span(h)?;
        let p = s.pieces().first()?;
        Some(encode_loc(p.frame, p.off, s.len() as u32, algo))
    }

    /// After compaction moved handle `h`: a durable page gets a record of its new place
    /// (higher sequence number) before the record of its old one is cleared, so a kill in
    /// between leaves one or the other.
    fn republish_moved(&mut self, h: u32) {
        let Some(&node) = self.zowner.get(h as usize) else {
            return;
        };
        if node == NIL || self.dur.is_none() {
            return;
        }
        let (obj, index) = {
            let (l, i) = self.l(node);
            (l.n[i].obj, l.n[i].index)
        };
        let Some(o) = self.objs.get(obj as usize).and_then(|o| o.as_ref()) else {
            return;
        };
        let (gid, oid) = (o.pool, o.oid);
        if !self.durable_pool(gid) {
            return;
        }
        let old = self
            .dur
            .as_ref()
            .and_then(|d| d.xrec_of(node))
            .unwrap_or(NIL);
        self.publish(gid, &PageKey { oid, index }, node);
        let new = self
            .dur
            .as_ref()
            .and_then(|d| d.xrec_of(node))
            .unwrap_or(NIL);
        // Only once the new record is there (`can_compact` made sure one was free).
        if old != NIL && new != old {
            if let Some(d) = self.dur.as_mut() {
                d.release_xrec(old);
            }
        }
    }

    /// Whether compaction may move objects now: a durable store needs a free metadata
    /// record for each moved persistent page's new record (the old one is freed right after,
    /// so one is enough).
    pub(crate) fn can_compact(&self) -> bool {
        self.dur.as_ref().is_none_or(|d| d.xrec_available())
    }

    /// Frames runs gave back, for the store's free list.
    pub(crate) fn take_zfreed(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.zfreed)
    }

    /// Whether pool `gid`'s pages of client `c` are compressed with `algo` now.
    pub(crate) fn wants_z(&self, c: ClientId, gid: u32, algo: Compression) -> bool {
        // A durable page needs a metadata record (compressed pages share them with
        // same-filled ones).
        if !algo.is_on() || !self.record_room(gid) {
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
    /// 1, 2, 4 ... up to [`MAX_SKIP`] of them after each further miss, and one page that
    /// compresses ends the streak. The record is per client, hashed into a few slots (two
    /// clients sharing one only share a streak). A skipped page costs two atomics: the
    /// client's setting (behind a lock) is not even looked up.
    pub(crate) fn try_compress(&self, c: ClientId, page: &Page) -> Option<Box<ZCopy>> {
        if !self.zany.load(Ordering::Relaxed) {
            return None;
        }
        let slot = &self.zmiss[c.0 as usize % ZMISS_SLOTS];
        let v = slot.load(Ordering::Relaxed);
        let (miss, skip) = (v & 0xffff, v >> 16);
        if skip > 0 {
            // Stored raw either way: this client is in a streak, or (sharing its slot) does
            // not compress at all.
            slot.store(v - (1 << 16), Ordering::Relaxed);
            self.zskipped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let algo = self.zsetting(c)?.guess();
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
                    1u32 << (miss - MISS_RUN).min(MAX_SKIP.trailing_zeros())
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
        let new_run = need > 0;
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
        if new_run {
            m.record_run(h);
        }
        if let Some(span) = m.z.span(h) {
            self.z_write(&span, bytes);
        }
        Some((m.link_z(h, algo, bytes.len()), used_spare))
    }

    /// Copy compressed node `x`'s bytes into `out` (under the metadata lock); their length
    /// and codec.
    pub(crate) fn z_read_into(
        &self,
        m: &Meta,
        x: u32,
        out: &mut ZBuf,
    ) -> Option<(usize, Compression)> {
        let (h, algo) = m.zhandle(x)?;
        let span = m.z.span(h)?;
        self.span_read(&span, out);
        Some((span.len(), algo))
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
        if !m.can_compact() {
            return 0;
        }
        let c = m.z.compact(budget);
        if c.moves.len() < budget {
            // Nothing left to move until another compressed page is freed.
            m.z_holes = false;
        }
        let mut buf = [0u8; PAGE_SIZE];
        for mv in &c.moves {
            let n = mv.from.len();
            self.span_read(&mv.from, &mut buf[..n]);
            self.z_write(&mv.to, &buf[..n]);
            m.republish_moved(mv.handle);
        }
        m.g.z_compactions += 1;
        m.g.z_moved += c.moves.len() as u64;
        m.release_run_frames(&c.freed);
        c.freed.len()
    }

    /// Recovery: rebuild the runs the page file records (a run comes back only whole: every
    /// one of its frames with a record of the same key, class and length). Returns the
    /// other frame records, and each run frame's run, place in it and class.
    pub(crate) fn recover_runs(
        &self,
        m: &mut Meta,
        pm: &tmem_pmem::PageMemory,
        frames: Vec<(u32, PageRecord)>,
        rep: &mut crate::Recovery,
    ) -> (Vec<(u32, PageRecord)>, RunFrames) {
        let mut rest = Vec::with_capacity(frames.len());
        // key -> (size, len, members by place)
        let mut runs: HashMap<u64, (u64, usize, Vec<Option<u32>>)> = HashMap::new();
        let mut bad = Vec::new();
        for (f, r) in frames {
            if r.flags != page_flags::RUN {
                rest.push((f, r));
                continue;
            }
            let (size, len, at) = (r.oid[0], (r.oid[1] & 0xffff_ffff) as usize, r.oid[1] >> 32);
            if len == 0 || len > tmem_zalloc::MAX_RUN_FRAMES || at as usize >= len {
                bad.push(f);
                continue;
            }
            let e = runs
                .entry(r.oid[2])
                .or_insert_with(|| (size, len, vec![None; len]));
            if e.0 != size || e.1 != len || e.2[at as usize].is_some() {
                bad.push(f);
                continue;
            }
            e.2[at as usize] = Some(f);
        }
        let mut out = RunFrames::new();
        for (_, (size, _, members)) in runs {
            let whole: Option<Vec<u32>> = members.iter().copied().collect();
            let restored = whole.as_ref().and_then(|fs| {
                let size = u32::try_from(size).ok()?;
                let rid = m.z.restore_run(size, fs)?;
                let class = m.z.class_for(size as usize)?;
                Some((rid, class))
            });
            match (whole, restored) {
                (Some(fs), Some((rid, class))) => {
                    for (i, f) in fs.into_iter().enumerate() {
                        m.ensure_data_links(f);
                        out.insert(f, (rid, i as u32, class));
                    }
                }
                _ => bad.extend(members.into_iter().flatten()),
            }
        }
        for f in bad {
            rep.torn += 1;
            pm.clear_frame(f);
        }
        (rest, out)
    }

    /// Recovery: the compressed page whose record says `loc`, put back into its run's slot;
    /// its node (not linked yet). `None` if the record names no restored run, a slot out of
    /// range or taken, or a codec this build does not have.
    pub(crate) fn recover_z(&self, m: &mut Meta, runs: &RunFrames, loc: u64) -> Option<u32> {
        let (frame, off, len, algo) = decode_loc(loc)?;
        let &(rid, at, class) = runs.get(&frame)?;
        let slot = tmem_zalloc::ZAlloc::slot_at(class, at, off)?;
        let h = m.z.restore_object(rid, slot, len as usize)?;
        if h > HANDLE_MASK {
            return None;
        }
        Some(m.link_z(h, algo, len as usize))
    }

    /// Compact compressed pages: move at most `budget` objects, give emptied frames back.
    /// Returns the frames freed. The daemon calls it from housekeeping; a put under memory
    /// pressure also compacts a little before it evicts more.
    pub fn compact(&self, budget: usize) -> u64 {
        self.compact_when(budget, |m| m.z.reclaimable_frames() > 0)
    }

    /// Housekeeping: compact a little (at most [`IDLE_COMPACT`] moves, well under a
    /// millisecond of the metadata lock) if compressed pages were freed since compaction last
    /// finished. Returns the frames freed.
    pub fn compact_some(&self) -> u64 {
        self.compact_when(IDLE_COMPACT, |m| m.z_holes)
    }

    /// Compact up to `budget` moves if `worth` says so (under the metadata lock); the frames
    /// freed go back to the free list after it.
    fn compact_when(&self, budget: usize, worth: impl FnOnce(&Meta) -> bool) -> u64 {
        let (n, freed) = {
            let mut m = self.meta();
            if !worth(&m) {
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
