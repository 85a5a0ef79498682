//! Pools: create or join, destroy or leave.

use crate::meta::{Meta, Pool, Slot, NIL};
use crate::{ClientId, PoolCounters, PoolKind, Store, TmemError};
use std::collections::HashMap;

impl Store {
    /// Create or join a pool. `Ok((pool_id, reattached))`.
    ///
    /// A persistent pool whose non-zero uuid matches a pool this client kept across a detach
    /// is re-adopted with the same id and `reattached = true`. Shared pools are joined by uuid;
    /// an unauthorised domain gets `NotAuthorised`; the uuids `{0,0}` and `{!0,!0}` are
    /// refused with `NotPermitted`, as is any limit being reached.
    pub fn new_pool(
        &self,
        c: ClientId,
        uuid: [u64; 2],
        kind: PoolKind,
    ) -> Result<(u32, bool), TmemError> {
        // A client re-created after a domain id reuse finds its predecessor's pages gone.
        self.reap();
        let r = self.new_pool_inner(c, uuid, kind);
        self.count(c, r)
    }

    fn new_pool_inner(
        &self,
        c: ClientId,
        uuid: [u64; 2],
        kind: PoolKind,
    ) -> Result<(u32, bool), TmemError> {
        let mut m = self.meta();
        let m = &mut *m;
        let cl = m.client(c)?;
        if !cl.attached {
            return Err(TmemError::NoDevice);
        }
        if kind.is_persistent() && uuid != [0, 0] {
            let kept = cl.pools.iter().enumerate().find_map(|(i, s)| match s {
                Some(s) if !s.adopted && m.pool(s.gid).uuid == uuid => Some(i),
                _ => None,
            });
            if let Some(i) = kept {
                if let Some(Some(s)) = m.client_mut(c)?.pools.get_mut(i) {
                    s.adopted = true;
                }
                return Ok((i as u32, true));
            }
        }
        let max = m.cfg.max_pools_per_client as usize;
        let free_slot = cl.pools.iter().position(Option::is_none);
        let slot = match free_slot {
            Some(i) => i,
            None if cl.pools.len() < max => cl.pools.len(),
            None => return Err(TmemError::NotPermitted),
        };
        if slot >= max {
            return Err(TmemError::NotPermitted);
        }
        let identity = cl.identity;
        let gid = if kind.is_shared() {
            if uuid == [0, 0] || uuid == [!0, !0] {
                return Err(TmemError::NotPermitted);
            }
            if m.auth_required && !m.auth.get(&identity).is_some_and(|l| l.contains(&uuid)) {
                return Err(TmemError::NotAuthorised);
            }
            if let Some(&gid) = m.shared.get(&uuid) {
                let p = m.pool_mut(gid);
                if p.sharers.contains(&c) {
                    // Already joined: answer with the id it has.
                    let cl = m.client(c)?;
                    if let Some(i) = cl
                        .pools
                        .iter()
                        .position(|s| s.is_some_and(|s| s.gid == gid))
                    {
                        return Ok((i as u32, false));
                    }
                }
                let p = m.pool_mut(gid);
                if !p.sharers.contains(&c) {
                    p.sharers.push(c);
                }
                gid
            } else {
                if m.shared.len() >= m.cfg.max_shared_pools as usize {
                    return Err(TmemError::NotPermitted);
                }
                let account = m.new_account(m.cfg.default_weight);
                let gid = new_pool_slot(m, kind, uuid, account, None, vec![c]);
                m.shared.insert(uuid, gid);
                gid
            }
        } else {
            // A pool whose pages would not survive tmemd is refused, not silently volatile.
            if m.pool_record_available(kind, uuid) == Some(false) || slot > u16::MAX as usize {
                return Err(TmemError::NotPermitted);
            }
            let account = m.client(c)?.account;
            new_pool_slot(m, kind, uuid, account, Some(c), Vec::new())
        };
        let cl = m.client_mut(c)?;
        let s = Some(Slot {
            gid,
            adopted: true,
            rec: NIL,
        });
        if slot == cl.pools.len() {
            cl.pools.push(s);
        } else {
            cl.pools[slot] = s;
        }
        if kind.is_persistent() {
            m.record_pool(gid, c, slot as u32);
        } else {
            m.record_slot(gid, c, slot as u32);
        }
        Ok((slot as u32, false))
    }

    /// Destroy (or, for a shared pool, leave) a pool. `Ok(true)` if there was one.
    pub fn destroy_pool(&self, c: ClientId, pool: u32) -> Result<bool, TmemError> {
        let r = (|| {
            let mut m = self.meta();
            let cl = m.client(c)?;
            if !cl.attached {
                return Err(TmemError::NoDevice);
            }
            match cl.pools.get(pool as usize) {
                Some(Some(s)) if s.adopted => {}
                _ => return Ok(false),
            }
            let mut out = Vec::new();
            close_pool_locked(&mut m, c, pool, &mut out);
            drop(m);
            self.free_frames(&out);
            self.reap();
            Ok(true)
        })();
        self.count(c, r)
    }
}

pub(crate) fn new_pool_slot(
    m: &mut Meta,
    kind: PoolKind,
    uuid: [u64; 2],
    account: u32,
    owner: Option<ClientId>,
    sharers: Vec<ClientId>,
) -> u32 {
    let gen = m.next_gen;
    m.next_gen += 1;
    let p = Pool {
        kind,
        uuid,
        gen,
        account,
        owner,
        sharers,
        objs: HashMap::with_hasher(m.obj_hash),
        c: PoolCounters::default(),
        rec: NIL,
    };
    if let Some(g) = m.pool_free.pop() {
        m.pools[g as usize] = Some(p);
        g
    } else {
        m.pools.push(Some(p));
        (m.pools.len() - 1) as u32
    }
}

/// Close slot `pool` of client `c`: destroy a private pool, leave a shared one (destroying it
/// with its last sharer). Pages a leaving sharer put stay for the others.
pub(crate) fn close_pool_locked(m: &mut Meta, c: ClientId, pool: u32, out: &mut Vec<u32>) {
    let Ok(cl) = m.client_mut(c) else { return };
    let Some(Some(s)) = cl.pools.get_mut(pool as usize).map(Option::take) else {
        return;
    };
    while cl.pools.last().is_some_and(Option::is_none) {
        cl.pools.pop();
    }
    let gid = s.gid;
    m.forget_slot(s.rec);
    let p = m.pool_mut(gid);
    if p.kind.is_shared() {
        p.sharers.retain(|x| *x != c);
        if !p.sharers.is_empty() {
            return;
        }
    }
    // The client stops being charged for the pool's pages now: they can no longer be used.
    let p = m.pool_mut(gid);
    let (pages, bytes, persistent) = (p.c.pages, p.c.mem_bytes, p.kind.is_persistent());
    if p.owner.take().is_some() {
        if let Ok(cl) = m.client_mut(c) {
            cl.pages -= pages;
            cl.bytes -= bytes;
            if persistent {
                cl.pers_pages -= pages;
                cl.pers_bytes -= bytes;
            }
        }
    }
    let p = m.pool(gid);
    let (shared, uuid) = (p.kind.is_shared(), p.uuid);
    // Unlinked now; its pages go in bounded chunks (a small pool at once, here).
    let small = p.c.pages + p.c.objects <= SMALL_POOL;
    if shared && m.shared.get(&uuid) == Some(&gid) {
        m.shared.remove(&uuid);
    }
    m.forget_pool(gid);
    m.queue_pool_reap(gid);
    if small && m.reap.len() == 1 && !m.reap_manual {
        m.reap_chunk(SMALL_POOL as usize + 1, out);
    }
}

/// A pool with at most this many pages plus objects is freed within its destroy.
const SMALL_POOL: u64 = 64;
