//! Put: the fast path (a frame filled before the metadata lock) and the general path
//! (reserve under the lock, fill outside it, link in after).

use crate::frames::same_fill;
use crate::lru::touch;
use crate::meta::{Meta, EXTRA};
use crate::zpage::ZCopy;
use crate::{lock, ClientId, Page, PageKey, PageSource, Reserve, Store, TmemError, PAGE_SIZE};

/// Own pages an ephemeral put over its client's cap may evict to make room: enough for a
/// raw page's worth of compressed ones, bounded so that a pile of same-filled pages (which
/// free nothing) cannot hold the lock.
const OWN_EVICT_MAX: usize = 64;

impl Store {
    /// Store a page. Duplicate puts replace the data (allowed while frozen; in place on heap
    /// frames, in a new frame on a durable pool); if a duplicate cannot be stored the old copy
    /// is removed and `DupPutFlushed` returned.
    pub fn put<S: PageSource + ?Sized>(
        &self,
        c: ClientId,
        pool: u32,
        key: PageKey,
        src: &S,
    ) -> Result<(), TmemError> {
        let r = self.put_inner(c, pool, key, src, false);
        self.count(c, r)
    }

    /// [`Store::put`], except that a duplicate that cannot be stored leaves the old copy in
    /// place and answers `NoMemory`, for a caller that will store the page elsewhere and then
    /// flush this copy (a swap disk spilling to a file): a kill in between then leaves the
    /// old contents, never none.
    pub fn put_keeping_old<S: PageSource + ?Sized>(
        &self,
        c: ClientId,
        pool: u32,
        key: PageKey,
        src: &S,
    ) -> Result<(), TmemError> {
        let r = self.put_inner(c, pool, key, src, true);
        self.count(c, r)
    }

    fn put_inner<S: PageSource + ?Sized>(
        &self,
        c: ClientId,
        pool: u32,
        key: PageKey,
        src: &S,
        keep_old: bool,
    ) -> Result<(), TmemError> {
        // Fast path: fill a free frame before taking the metadata lock, so that the lock is
        // taken once and never held during the copy. If the put turns out to need anything
        // unusual (frozen, cap, no such pool) the frame goes back and the general path below
        // runs under the same lock acquisition.
        let pre = self.take_free_frame().map(|(f, left)| {
            let mut g = self.frames.lock(f);
            src.read_page(&mut g);
            let fill = same_fill(&g);
            // Compressed before the lock too, if this client compresses (one relaxed load
            // when no client does).
            let z = fill.and(None).or_else(|| self.try_compress(c, &g));
            (f, fill, left, z)
        });
        let mut m = self.meta();
        if let Some((f, _, _, _)) = pre {
            // A never-used frame gets its node now, before it can reach the free list.
            m.ensure_data_links(f);
        }
        let gid = match m.resolve(c, pool) {
            Ok(g) => g,
            Err(e) => {
                if let Some((f, _, _, _)) = pre {
                    self.free_frames(&[f]);
                }
                return Err(e);
            }
        };
        let gen = m.pool(gid).gen;
        m.pool_mut(gid).c.total_puts += 1;
        if let Some((f, fill, left, z)) = pre {
            let z = z.as_deref();
            if let Some(to_free) = self.link_prefilled(&mut m, c, gid, &key, f, fill, left, z) {
                drop(m);
                self.free_frames(&to_free);
                return Ok(());
            }
            self.free_frames(&[f]);
        }
        if let Some(found) = m.lookup(gid, &key) {
            if found.node & EXTRA == 0 && !m.durable_pool(gid) {
                // Duplicate of a page with data: refill its frame in place.
                let mut g = self.frames.lock(found.node);
                drop(m);
                src.read_page(&mut g);
                let fill = same_fill(&g);
                drop(g);
                let mut m = self.meta();
                self.finish_dup(&mut m, c, pool, gid, gen, &key, found.node, fill);
                return Ok(());
            }
            // Duplicate of a same-filled page, or of a durable page (never refilled in place:
            // a kill midway would leave a mix of old and new): it needs a new frame (unless
            // same-filled).
            return match self.reserve(&mut m, false) {
                Reserve::Frame(f) => {
                    drop(m);
                    self.fill_and_link(c, pool, gid, gen, key, src, f, true)
                }
                Reserve::NoneEvictable => {
                    let mut scratch = [0u8; PAGE_SIZE];
                    src.read_page(&mut scratch);
                    if let Some(w) = same_fill(&scratch) {
                        // A compressed page is not same-filled: it is replaced by a new node.
                        let old_same = m.is_same(found.node);
                        if old_same && (m.fill_of(found.node) == w || !m.durable_pool(gid)) {
                            // Same-filled over same-filled: a new word is set in place
                            // (a durable page's record names its word: it takes a new one).
                            m.set_fill(found.node, w);
                            self.count_put_ok(&mut m, c, gid, true);
                            touch(&mut m, gid, found.node);
                            return Ok(());
                        }
                        // Replacing a frameless page by one adds none, but a durable one
                        // needs a second record until the old one is cleared.
                        let room = if old_same {
                            m.record_room(gid)
                        } else {
                            m.can_same(gid)
                        };
                        if room {
                            let x = m.alloc_same(w);
                            m.publish(gid, &key, x);
                            let fr = m.remove_page(found.obj, found.node);
                            m.insert_page(gid, &key, x);
                            self.count_put_ok(&mut m, c, gid, true);
                            drop(m);
                            self.free_frames(fr.as_slice());
                            return Ok(());
                        }
                    }
                    if keep_old {
                        m.pool_mut(gid).c.no_mem_puts += 1;
                        return Err(TmemError::NoMemory);
                    }
                    let fr = m.remove_page(found.obj, found.node);
                    m.pool_mut(gid).c.dup_puts_flushed += 1;
                    drop(m);
                    self.free_frames(fr.as_slice());
                    Err(TmemError::DupPutFlushed)
                }
            };
        }
        // A new handle.
        let (frozen, account) = {
            let cl = m.client(c)?;
            (cl.frozen, cl.account)
        };
        if frozen {
            return Err(TmemError::Frozen);
        }
        let kind = m.pool(gid).kind;
        if kind.is_persistent() && m.client(c)?.at_limit(true) {
            return Err(TmemError::OverCap);
        }
        let mut own_frame = None;
        if !kind.is_shared() && m.client(c)?.at_limit(false) {
            // Over cap: an ephemeral put may push out this client's own oldest ephemeral
            // pages until a raw page fits (a few compressed ones, or one raw one).
            if kind.is_persistent() {
                return Err(TmemError::OverCap);
            }
            // Only its ephemeral pages can go: if the rest alone leaves no room, evict none.
            let cl = m.client(c)?;
            let eph = m
                .accounts
                .get(account as usize)
                .and_then(Option::as_ref)
                .map_or(0, |a| a.eph_bytes);
            if cl.bytes.saturating_sub(eph) + PAGE_SIZE as u64 > cl.cap_bytes {
                return Err(TmemError::OverCap);
            }
            let mut frames = Vec::new();
            for _ in 0..OWN_EVICT_MAX {
                match m.evict_from(account) {
                    Some(f) => frames.extend(f),
                    None => break,
                }
                if !m.client(c)?.at_limit(false) {
                    break;
                }
            }
            frames.append(&mut m.zfreed);
            if m.client(c)?.at_limit(false) {
                drop(m);
                self.free_frames(&frames);
                return Err(TmemError::OverCap);
            }
            own_frame = frames.pop();
            if !frames.is_empty() {
                self.free_frames(&frames);
            }
        }
        let reserved = match own_frame {
            Some(f) => Reserve::Frame(f),
            None => {
                let new_durable = m.durable_pool(gid);
                self.reserve(&mut m, new_durable)
            }
        };
        match reserved {
            Reserve::Frame(f) => {
                drop(m);
                self.fill_and_link(c, pool, gid, gen, key, src, f, false)
            }
            Reserve::NoneEvictable => {
                let mut scratch = [0u8; PAGE_SIZE];
                src.read_page(&mut scratch);
                if let Some(w) = same_fill(&scratch).filter(|_| m.can_same(gid)) {
                    let x = m.alloc_same(w);
                    m.publish(gid, &key, x);
                    m.insert_page(gid, &key, x);
                    self.count_put_ok(&mut m, c, gid, false);
                    return Ok(());
                }
                // No frame, but a compressed page may still fit a free slot of a run
                // (compressed under the lock: bounded work, and only when memory is full).
                if let Some(x) = self.z_into_free_slot(&mut m, c, gid, &scratch) {
                    m.publish(gid, &key, x);
                    m.insert_page(gid, &key, x);
                    self.count_put_ok(&mut m, c, gid, false);
                    return Ok(());
                }
                m.pool_mut(gid).c.no_mem_puts += 1;
                Err(TmemError::NoMemory)
            }
        }
    }

    /// A frame from the free list (or a never-used one) without touching the metadata, for
    /// a put that fills it before taking the metadata lock. `None` when memory is full: the
    /// caller then reserves under the metadata lock, evicting if needed. With the frame, how
    /// many were left free after taking it.
    fn take_free_frame(&self) -> Option<(u32, u64)> {
        let mut f = lock(&self.free);
        let x = match f.list.pop() {
            Some(x) => x,
            None if f.fresh < self.nframes => {
                f.fresh += 1;
                f.fresh - 1
            }
            None => return None,
        };
        Some((x, f.list.len() as u64 + (self.nframes - f.fresh) as u64))
    }

    /// Link the already-filled frame `f` as the page `key` of pool `gid` if that needs no
    /// eviction and no refusal: a duplicate (replaced by the new frame; a data duplicate
    /// thereby behaves like the in-place refill of the general path) or a new handle of an
    /// unfrozen client within its cap. Returns the frames to free, or `None` (nothing changed)
    /// to leave the put to the general path. `left`: the frames that were free after `f` was
    /// taken.
    #[allow(clippy::too_many_arguments)]
    fn link_prefilled(
        &self,
        m: &mut Meta,
        c: ClientId,
        gid: u32,
        key: &PageKey,
        f: u32,
        fill: Option<u64>,
        left: u64,
        z: Option<&ZCopy>,
    ) -> Option<Vec<u32>> {
        let found = m.lookup(gid, key);
        if found.is_none() {
            let cl = m.client(c).ok()?;
            let kind = m.pool(gid).kind;
            if cl.frozen || (!kind.is_shared() && cl.at_limit(kind.is_persistent())) {
                return None;
            }
            // `f` may be one of the frames kept for duplicates (see `Store::reserve`).
            if m.durable_pool(gid) && left < self.dup_reserve() {
                return None;
            }
        }
        let mut to_free = Vec::new();
        let node = self.node_for(m, c, gid, f, fill, z, &mut to_free);
        // Durable: the new copy is recorded before the old one's record goes.
        m.publish(gid, key, node);
        let dup = match found {
            Some(old) => {
                if let Some(of) = m.remove_page(old.obj, old.node) {
                    to_free.push(of);
                }
                true
            }
            None => false,
        };
        m.insert_page(gid, key, node);
        self.count_put_ok(m, c, gid, dup);
        to_free.append(&mut m.zfreed);
        Some(to_free)
    }

    /// Copy a put's data into reserved frame `f` (metadata unlocked), then link it in.
    #[allow(clippy::too_many_arguments)]
    fn fill_and_link<S: PageSource + ?Sized>(
        &self,
        c: ClientId,
        pool: u32,
        gid: u32,
        gen: u64,
        key: PageKey,
        src: &S,
        f: u32,
        was_dup: bool,
    ) -> Result<(), TmemError> {
        let (fill, z) = {
            let mut g = self.frames.lock(f);
            src.read_page(&mut g);
            let fill = same_fill(&g);
            (fill, fill.and(None).or_else(|| self.try_compress(c, &g)))
        };
        let mut m = self.meta();
        // The pool may have gone while the metadata lock was dropped.
        let alive = m.resolve(c, pool) == Ok(gid) && m.pool(gid).gen == gen;
        if !alive {
            drop(m);
            self.free_frames(&[f]);
            return Err(TmemError::NoSuchPool);
        }
        let mut to_free = Vec::new();
        let mut dup = was_dup;
        let old = m.lookup(gid, &key);
        if old.is_some() {
            dup = true;
        } else if !m.pool(gid).kind.is_shared() {
            // Re-check the cap: another put may have used the room meanwhile.
            let cl = m.client(c)?;
            if !dup && cl.at_limit(m.pool(gid).kind.is_persistent()) {
                drop(m);
                self.free_frames(&[f]);
                return Err(TmemError::OverCap);
            }
        }
        let node = self.node_for(&mut m, c, gid, f, fill, z.as_deref(), &mut to_free);
        // Durable: the new copy is recorded before the old one (whatever is there now) goes.
        m.publish(gid, &key, node);
        if let Some(old) = old {
            if let Some(of) = m.remove_page(old.obj, old.node) {
                to_free.push(of);
            }
        }
        m.insert_page(gid, &key, node);
        self.count_put_ok(&mut m, c, gid, dup);
        to_free.append(&mut m.zfreed);
        drop(m);
        self.free_frames(&to_free);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_dup(
        &self,
        m: &mut Meta,
        c: ClientId,
        pool: u32,
        gid: u32,
        gen: u64,
        key: &PageKey,
        node: u32,
        fill: Option<u64>,
    ) {
        if !(m.resolve(c, pool) == Ok(gid) && m.pool(gid).gen == gen) {
            return;
        }
        self.count_put_ok(m, c, gid, true);
        let Some(found) = m.lookup(gid, key) else {
            return;
        };
        if found.node != node {
            return;
        }
        // Heap frames only (a durable page is never refilled in place): no record to write.
        if let Some(w) = fill.filter(|_| m.g.same_pages < m.max_same) {
            // Turn it into a same-filled page: give the frame back.
            if let Some(f) = m.remove_page(found.obj, node) {
                let x = m.alloc_same(w);
                m.insert_page(gid, key, x);
                self.free_frames(&[f]);
            }
        } else if !m.pool(gid).kind.is_persistent() {
            touch(m, gid, node);
        }
    }

    /// The node that will hold a page just copied into frame `f`: a same-filled node, a
    /// compressed one (`z`, if the pool's setting wants that codec and an allocator slot can
    /// be had), or `f` itself. Frames given up go to `to_free`.
    #[allow(clippy::too_many_arguments)]
    fn node_for(
        &self,
        m: &mut Meta,
        c: ClientId,
        gid: u32,
        f: u32,
        fill: Option<u64>,
        z: Option<&ZCopy>,
        to_free: &mut Vec<u32>,
    ) -> u32 {
        if let Some(w) = fill.filter(|_| m.can_same(gid)) {
            to_free.push(f);
            return m.alloc_same(w);
        }
        let Some(z) = z.filter(|z| m.wants_z(c, gid, z.algo)) else {
            return f;
        };
        match self.z_store(m, &z.bytes[..z.len], z.algo, Some(f)) {
            Some((x, used)) => {
                if !used {
                    to_free.push(f);
                }
                x
            }
            None => f,
        }
    }

    /// Memory is full: keep `page` compressed in a free slot of an existing run, if its
    /// client compresses this pool's pages and one is free. Returns the node (not linked).
    fn z_into_free_slot(&self, m: &mut Meta, c: ClientId, gid: u32, page: &Page) -> Option<u32> {
        let z = self.try_compress(c, page)?;
        if !m.wants_z(c, gid, z.algo) || m.z.frames_needed(z.len) != Some(0) {
            return None;
        }
        self.z_store(m, &z.bytes[..z.len], z.algo, None)
            .map(|(x, _)| x)
    }

    fn count_put_ok(&self, m: &mut Meta, c: ClientId, gid: u32, dup: bool) {
        let p = m.pool_mut(gid);
        p.c.good_puts += 1;
        if dup {
            p.c.dup_puts_replaced += 1;
        }
        let persistent = p.kind.is_persistent();
        if !persistent {
            m.g.good_eph_puts += 1;
        }
        if let Ok(cl) = m.client_mut(c) {
            cl.c.puts += 1;
            if persistent {
                cl.c.pers_puts += 1;
            }
        }
    }
}
