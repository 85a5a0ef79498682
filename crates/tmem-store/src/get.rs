//! Get, and flushing a page or a whole object.

use crate::lru::touch;
use crate::meta::EXTRA;
use crate::{ClientId, Oid, PageKey, PageSink, PoolKind, Store, TmemError};

impl Store {
    /// Fetch a page. `Ok(true)`: hit, data written to `dst`; `Ok(false)`: miss;
    /// `Err(Empty)`: the pool holds no pages. Private ephemeral gets remove the page.
    pub fn get<D: PageSink + ?Sized>(
        &self,
        c: ClientId,
        pool: u32,
        key: PageKey,
        dst: &mut D,
    ) -> Result<bool, TmemError> {
        let r = self.get_inner(c, pool, key, dst);
        self.count(c, r)
    }

    fn get_inner<D: PageSink + ?Sized>(
        &self,
        c: ClientId,
        pool: u32,
        key: PageKey,
        dst: &mut D,
    ) -> Result<bool, TmemError> {
        let mut m = self.meta();
        let gid = m.resolve(c, pool)?;
        let p = m.pool_mut(gid);
        p.c.total_gets += 1;
        let kind = p.kind;
        if p.c.pages == 0 {
            if let Ok(cl) = m.client_mut(c) {
                cl.c.failed_gets += 1;
            }
            return Err(TmemError::Empty);
        }
        let Some(found) = m.lookup(gid, &key) else {
            if let Ok(cl) = m.client_mut(c) {
                cl.c.failed_gets += 1;
            }
            return Ok(false);
        };
        m.pool_mut(gid).c.found_gets += 1;
        if let Ok(cl) = m.client_mut(c) {
            cl.c.succ_gets += 1;
            if kind.is_persistent() {
                cl.c.pers_gets += 1;
            } else {
                cl.c.succ_eph_gets += 1;
            }
        }
        let node = found.node;
        if m.is_z(node) {
            return Ok(self.get_z(m, gid, kind, found.obj, node, dst));
        }
        match kind {
            PoolKind::PrivateEphemeral => {
                let fill = if node & EXTRA != 0 {
                    m.fill_of(node)
                } else {
                    0
                };
                let frame = m.remove_page(found.obj, node);
                match frame {
                    Some(f) => {
                        let g = self.frames.lock(f);
                        drop(m);
                        dst.write_page(&g);
                        drop(g);
                        self.free_frames(&[f]);
                    }
                    None => {
                        drop(m);
                        dst.write_filled_page(fill);
                    }
                }
            }
            PoolKind::SharedEphemeral | PoolKind::PrivatePersistent => {
                if kind.is_shared() {
                    touch(&mut m, gid, node);
                }
                self.copy_kept(m, node, dst);
            }
        }
        Ok(true)
    }

    /// Copy uncompressed page `node`, which stays where it is, to `dst`; the metadata lock
    /// `m` is let go once the page is safe: a frame is locked first, so a flush cannot hand
    /// it to another put while we copy.
    pub(crate) fn copy_kept<D: PageSink + ?Sized>(
        &self,
        m: std::sync::MutexGuard<'_, crate::meta::Meta>,
        node: u32,
        dst: &mut D,
    ) {
        if node & EXTRA != 0 {
            let fill = m.fill_of(node);
            drop(m);
            dst.write_filled_page(fill);
        } else {
            let g = self.frames.lock(node);
            drop(m);
            dst.write_page(&g);
        }
    }

    /// Get of compressed page `node`: its bytes are copied out under the metadata lock
    /// (see `zpage.rs`), decompressed after it.
    pub(crate) fn get_z<D: PageSink + ?Sized>(
        &self,
        mut m: std::sync::MutexGuard<'_, crate::meta::Meta>,
        gid: u32,
        kind: PoolKind,
        obj: u32,
        node: u32,
        dst: &mut D,
    ) -> bool {
        crate::zpage::GET_SCRATCH.with(|cell| {
            // Not re-entered (a sink never calls back into the store); if it ever were, a
            // fresh buffer keeps it correct.
            let mut fresh = None;
            let mut held = cell.try_borrow_mut().ok();
            let scratch: &mut crate::zpage::GetScratch = match held.as_deref_mut() {
                Some(s) => s,
                None => fresh.insert(Box::new((
                    [0; crate::compress::ZBUF_LEN],
                    [0; crate::PAGE_SIZE],
                ))),
            };
            let (buf, page) = &mut **scratch;
            let copied = self.z_read_into(&m, node, buf);
            let mut freed = Vec::new();
            match kind {
                PoolKind::PrivateEphemeral => {
                    m.remove_page(obj, node);
                    freed = m.take_zfreed();
                }
                PoolKind::SharedEphemeral => touch(&mut m, gid, node),
                PoolKind::PrivatePersistent => {}
            }
            drop(m);
            self.free_frames(&freed);
            match copied {
                Some((len, algo)) if crate::compress::decompress(algo, &buf[..len], page) => {
                    dst.write_page(page);
                    true
                }
                // Never expected (the bytes were written by this process under the same
                // lock); a miss is honest, a wrong page would not be.
                _ => {
                    self.zerrors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    false
                }
            }
        })
    }

    /// Remove one page. Carried out and `Ok` whether or not the page existed, frozen or not
    /// (tmemd departs from Xen, which returned `-EFROZEN` after flushing for a frozen client).
    pub fn flush_page(&self, c: ClientId, pool: u32, key: PageKey) -> Result<(), TmemError> {
        let r = (|| {
            let mut m = self.meta();
            let gid = m.resolve(c, pool)?;
            m.pool_mut(gid).c.total_flushes += 1;
            if let Ok(cl) = m.client_mut(c) {
                cl.c.invalidates += 1;
            }
            if let Some(found) = m.lookup(gid, &key) {
                m.pool_mut(gid).c.found_flushes += 1;
                let f = m.remove_page(found.obj, found.node);
                let mut freed = m.take_zfreed();
                drop(m);
                freed.extend(f);
                self.free_frames(&freed);
            }
            Ok(())
        })();
        self.count(c, r)
    }

    /// Remove every page of one object. `Ok` whether or not it existed, frozen or not.
    pub fn flush_object(&self, c: ClientId, pool: u32, oid: Oid) -> Result<(), TmemError> {
        let r = (|| {
            let mut m = self.meta();
            let gid = m.resolve(c, pool)?;
            m.pool_mut(gid).c.total_obj_flushes += 1;
            if let Ok(cl) = m.client_mut(c) {
                cl.c.invalidates += 1;
            }
            if let Some(&obj) = m.pool(gid).objs.get(&oid) {
                m.pool_mut(gid).c.found_obj_flushes += 1;
                let small = !m.reap_manual
                    && m.objs[obj as usize]
                        .as_ref()
                        .is_some_and(|o| o.pages.len() <= m.reap_chunk);
                let mut out = Vec::new();
                if small {
                    m.empty_object(obj, &mut out);
                    out.append(&mut m.zfreed);
                } else {
                    m.queue_object_reap(gid, &oid);
                }
                drop(m);
                self.free_frames(&out);
                self.reap();
            }
            Ok(())
        })();
        self.count(c, r)
    }
}
