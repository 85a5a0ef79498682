//! Re-keying a detached Xen client to another domain id: a domain saved and restored (or
//! migrated on one host) comes back under a new domain id, and its pools follow it.
//!
//! In memory the client's identity changes under the metadata lock. In the page file, pool
//! records are never rewritten (a rewrite in place could be torn and lose the pool): rename
//! records ([`Rename`]) say which records belong to which domain id now. The first record a
//! re-key writes is its commit point; a kill before it leaves the old identity, after it the
//! new one, never both. Rename records are then compacted to one per domain id that still
//! has records of the client, so repeated save/restore cycles do not use up pool slots.

use std::collections::BTreeSet;

use crate::clients::destroy_client_locked;
use crate::durable::Rename;
use crate::meta::NIL;
use crate::{ClientId, Identity, Store};

/// Why [`Store::rekey`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RekeyRefused {
    #[error("no such client")]
    NoClient,
    #[error("client {0} is connected; only a detached client can be re-keyed")]
    Attached(Identity),
    #[error("only Xen clients are re-keyed to another domain id")]
    NotXen,
    #[error("{0} is connected now; its pools cannot be replaced")]
    TargetLive(Identity),
    #[error("the page file has no free pool record for the rename")]
    NoRecord,
}

impl Store {
    /// Detached Xen client `c` becomes domain `to` (same instance, same pools and pages). A
    /// detached client `to` already has (a dead domain's leftovers) is destroyed first; an
    /// attached one refuses. Durable: see the module comment.
    pub fn rekey(&self, c: ClientId, to: u32) -> Result<(), RekeyRefused> {
        let target = Identity::Xen { domid: to };
        let mut m = self.meta();
        let cl = m.clients.get(&c).ok_or(RekeyRefused::NoClient)?;
        let Identity::Xen { domid: cur } = cl.identity else {
            return Err(RekeyRefused::NotXen);
        };
        if cl.attached {
            return Err(RekeyRefused::Attached(cl.identity));
        }
        if cur == to {
            return Ok(());
        }
        let instance = cl.instance;
        let mut out = Vec::new();
        if let Some(&other) = m.by_identity.get(&target) {
            if m.clients.get(&other).is_some_and(|o| o.attached) {
                return Err(RekeyRefused::TargetLive(target));
            }
            destroy_client_locked(&mut m, other, &mut out);
        }
        // The client's record slots, and the domain ids they were written under.
        let cl = m.clients.get(&c).ok_or(RekeyRefused::NoClient)?;
        let mut slots = Vec::new();
        for s in cl.pools.iter().flatten() {
            if s.rec != NIL {
                slots.push(s.rec);
            }
            let p = m.pool(s.gid);
            if p.owner == Some(c) && p.rec != NIL {
                slots.push(p.rec);
            }
        }
        let bound = m.next_gen + 1;
        if let Some(d) = m.dur.as_mut() {
            let needed: BTreeSet<u32> = slots
                .iter()
                .filter_map(|s| d.slot_owner.get(s).copied())
                .collect();
            let existing: Vec<Rename> = d
                .renames
                .iter()
                .filter(|r| r.to == cur && r.instance == instance)
                .copied()
                .collect();
            let bound_of = |f: u32| {
                if f == cur {
                    Some(bound)
                } else {
                    existing.iter().find(|r| r.from == f).map(|r| r.bound)
                }
            };
            let mut gen = bound;
            let mut write = |d: &mut crate::durable::Dur, from: u32, b: u64| -> bool {
                let mut rn = Rename {
                    slot: NIL,
                    from,
                    to,
                    instance,
                    bound: b,
                    gen,
                };
                gen += 1;
                d.write_rename(&mut rn)
            };
            // Enough free slots for every record this writes, checked before the first.
            let wanted = needed.len() + usize::from(needed.len() > 1);
            if d.free_pool_slots() < wanted {
                drop(m);
                self.free_frames(&out);
                return Err(RekeyRefused::NoRecord);
            }
            let mut chain = None;
            if needed.len() > 1 {
                // Several writes: the chain record cur -> to commits them all at once; the
                // compacted records written after it say the same.
                if write(d, cur, bound) {
                    chain = d.renames.last().map(|r| r.slot);
                }
            }
            for &f in &needed {
                if f == to || (f == cur && chain.is_some()) {
                    continue;
                }
                if let Some(b) = bound_of(f) {
                    write(d, f, b);
                }
            }
            // The superseded records go first, the chain (if no record needs it) last: until
            // then it is what makes a mix of old and new records resolve to `to`.
            for r in existing {
                d.clear_rename(r.slot);
            }
            if let Some(slot) = chain.filter(|_| !needed.contains(&cur)) {
                d.clear_rename(slot);
            }
            let next = gen;
            m.next_gen = m.next_gen.max(next);
        }
        m.next_gen = m.next_gen.max(bound + 1);
        m.by_identity.remove(&Identity::Xen { domid: cur });
        m.by_identity.insert(target, c);
        if let Some(cl) = m.clients.get_mut(&c) {
            cl.identity = target;
        }
        drop(m);
        self.free_frames(&out);
        self.reap();
        Ok(())
    }
}

impl crate::meta::Meta {
    /// Client (identity, instance) is gone: its rename records go too.
    pub(crate) fn drop_renames(&mut self, identity: Identity, instance: u64) {
        let Identity::Xen { domid } = identity else {
            return;
        };
        let Some(d) = self.dur.as_mut() else { return };
        let slots: Vec<u32> = d
            .renames
            .iter()
            .filter(|r| r.to == domid && r.instance == instance)
            .map(|r| r.slot)
            .collect();
        for s in slots {
            d.clear_rename(s);
        }
    }
}

/// A Xen domain saved or migrated away whose pages wait for a domain with its uuid (filled
/// in by the daemon, which parks them; shown by `tmem list`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ParkedStats {
    /// `parked`.
    pub state: String,
    /// The domain's uuid (from its `vm` path) and name, and the domain id it had.
    pub uuid: String,
    pub name: String,
    pub old_domid: u32,
    /// The store client holding its pages (none if it had no pages).
    pub client_id: Option<u64>,
    /// Its swap disk's device name, if it had one (spill file kept).
    pub swap_disk: Option<String>,
    /// Seconds until its pages are released.
    pub secs_left: u64,
}
