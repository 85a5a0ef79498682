//! Moving a client's persistent pages out of this store and into another (`tmem save` and
//! `tmem restore`). Reading works on a detached client too: a domain being saved is
//! suspended, so its client is usually detached, and its pages are what must move. Writing
//! goes through the ordinary attach/new_pool/put path, so an imported page is stored, counted
//! and made durable exactly like a guest's.

use crate::{ClientId, PageKey, PageSink, PoolKind, Store, TmemError};

/// One persistent pool of a client, with the keys of its pages at the time of the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptPool {
    /// The client's pool id.
    pub pool: u32,
    pub uuid: [u64; 2],
    pub keys: Vec<PageKey>,
}

impl Store {
    /// The client's private persistent pools (attached or kept across a detach) and their
    /// page keys, in pool-id order. Pools without a uuid are left out: nothing could find
    /// them again after a move.
    pub fn persistent_pools(&self, c: ClientId) -> Result<Vec<KeptPool>, TmemError> {
        let m = self.meta();
        let cl = m.client(c)?;
        let mut out = Vec::new();
        for (i, s) in cl.pools.iter().enumerate() {
            let Some(s) = s else { continue };
            let p = m.pool(s.gid);
            if !p.kind.is_persistent() || p.uuid == [0, 0] {
                continue;
            }
            let mut keys = Vec::with_capacity(p.c.pages as usize);
            for (&oid, &obj) in &p.objs {
                let Some(o) = m.objs[obj as usize].as_ref() else {
                    continue;
                };
                for node in o.pages.nodes() {
                    let (l, j) = m.l(node);
                    keys.push(PageKey {
                        oid,
                        index: l.n[j].index,
                    });
                }
            }
            keys.sort_unstable();
            out.push(KeptPool {
                pool: i as u32,
                uuid: p.uuid,
                keys,
            });
        }
        Ok(out)
    }

    /// Copy one page of a client's persistent pool to `dst` without counting it as a guest's
    /// get and whether or not the client is attached. `Ok(false)`: the page is gone (flushed
    /// since the snapshot). A pool that is not persistent is `NoSuchPool`.
    pub fn read_kept<D: PageSink + ?Sized>(
        &self,
        c: ClientId,
        pool: u32,
        key: PageKey,
        dst: &mut D,
    ) -> Result<bool, TmemError> {
        let m = self.meta();
        let gid = match m.client(c)?.pools.get(pool as usize) {
            Some(Some(s)) => s.gid,
            _ => return Err(TmemError::NoSuchPool),
        };
        if !m.pool(gid).kind.is_persistent() {
            return Err(TmemError::NoSuchPool);
        }
        let Some(found) = m.lookup(gid, &key) else {
            return Ok(false);
        };
        let node = found.node;
        if m.is_z(node) {
            // As a persistent get: copied under the lock, decompressed after it.
            return Ok(self.get_z(m, gid, PoolKind::PrivatePersistent, found.obj, node, dst));
        }
        self.copy_kept(m, node, dst);
        Ok(true)
    }
}
