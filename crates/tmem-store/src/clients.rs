//! Clients: attach, detach, expiry of a detached client, and destroy.

use crate::meta::{Client, ClientCounters, Meta, Slot};
use crate::pools::close_pool_locked;
use crate::{Attach, AttachRefused, ClientId, Identity, Store, TmemError, PAGE_SIZE};

impl Store {
    /// A Xen domain (domid, instance) connects: [`Store::attach`] for `Identity::Xen`, any
    /// refusal reported as `NotPermitted`.
    pub fn attach_client(
        &self,
        domid: u32,
        instance: u64,
        name: &str,
    ) -> Result<(ClientId, Attach), TmemError> {
        self.attach(Identity::Xen { domid }, instance, name)
            .map_err(|_| TmemError::NotPermitted)
    }

    /// A guest (identity, instance) connects. The same identity and instance that is detached
    /// is reattached (its persistent pools were kept, ephemeral ones dropped at detach); the
    /// same identity and instance already attached is refused. Another instance of a detached
    /// identity replaces it (a restarted guest has a new instance), as does another instance
    /// of an attached Xen domain (Xen reuses domain ids; tmemd sees the old one die late).
    /// Another instance of an attached local identity is refused: that is a live guest.
    /// Decided under the metadata lock, so two hellos cannot both win.
    pub fn attach(
        &self,
        identity: Identity,
        instance: u64,
        name: &str,
    ) -> Result<(ClientId, Attach), AttachRefused> {
        // A replaced client is destroyed outside the lock (its pages are reaped in chunks);
        // then decide again, since another hello may have come in meanwhile.
        let mut m = loop {
            let mut m = self.meta();
            let Some(&c) = m.by_identity.get(&identity) else {
                break m;
            };
            if let Some(cl) = m.clients.get_mut(&c) {
                if cl.instance == instance {
                    if cl.attached {
                        return Err(AttachRefused::Attached(identity));
                    }
                    cl.attached = true;
                    cl.name = name.to_owned();
                    // A guest that says hello opens its pools again: ephemeral and shared
                    // ones kept for a frontend that might have stayed connected across a
                    // restart (`Store::resume`) are of no use to it.
                    let unadopted: Vec<(u32, u32)> = cl
                        .pools
                        .iter()
                        .enumerate()
                        .filter_map(|(i, s)| match s {
                            Some(s) if !s.adopted => Some((i as u32, s.gid)),
                            _ => None,
                        })
                        .collect();
                    let stale: Vec<u32> = unadopted
                        .into_iter()
                        .filter(|&(_, gid)| !m.pool(gid).kind.is_persistent())
                        .map(|(i, _)| i)
                        .collect();
                    if !stale.is_empty() {
                        let mut out = Vec::new();
                        for i in stale {
                            close_pool_locked(&mut m, c, i, &mut out);
                        }
                        drop(m);
                        self.free_frames(&out);
                        self.reap();
                    }
                    return Ok((c, Attach::Reattached));
                }
                if cl.attached && matches!(identity, Identity::Local { .. }) {
                    return Err(AttachRefused::LiveTakeover {
                        identity,
                        live: cl.instance,
                    });
                }
            }
            let mut out = Vec::new();
            destroy_client_locked(&mut m, c, &mut out);
            drop(m);
            self.free_frames(&out);
            self.reap();
        };
        let id = m.new_client(identity, instance, name);
        Ok((id, Attach::New))
    }

    /// Connection lost: drop the client's ephemeral pools and its uuid-less persistent pools,
    /// leave its shared pools, keep persistent pools with a uuid for reattachment. Returns the
    /// detach epoch to pass to [`Store::expire_detached`] when the grace period ends.
    pub fn detach_client(&self, c: ClientId) -> u64 {
        let mut m = self.meta();
        let mut out = Vec::new();
        let Ok(cl) = m.client(c) else { return 0 };
        let slots: Vec<(usize, Slot)> = cl
            .pools
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.map(|s| (i, s)))
            .collect();
        for (i, s) in slots {
            let p = m.pool(s.gid);
            let keep = p.kind.is_persistent() && p.uuid != [0, 0];
            if keep {
                if let Ok(cl) = m.client_mut(c) {
                    if let Some(Some(slot)) = cl.pools.get_mut(i) {
                        slot.adopted = false;
                    }
                }
            } else {
                close_pool_locked(&mut m, c, i as u32, &mut out);
            }
        }
        let mut epoch = 0;
        if let Ok(cl) = m.client_mut(c) {
            cl.attached = false;
            cl.detach_epoch += 1;
            epoch = cl.detach_epoch;
        }
        drop(m);
        self.free_frames(&out);
        self.reap();
        epoch
    }

    /// The reattach grace period of detach `epoch` is over: destroy the client, but only if it
    /// is still detached from that same detach. Decided under the store's lock, so a guest
    /// reattaching as its grace expires keeps its persistent pools. Returns whether destroyed.
    pub fn expire_detached(&self, c: ClientId, epoch: u64) -> bool {
        let mut m = self.meta();
        match m.client(c) {
            Ok(cl) if !cl.attached && cl.detach_epoch == epoch => {}
            _ => return false,
        }
        let mut out = Vec::new();
        destroy_client_locked(&mut m, c, &mut out);
        drop(m);
        self.free_frames(&out);
        self.reap();
        true
    }

    /// Domain gone: drop everything of this client and leave its shared pools. Returns whether
    /// the client existed.
    pub fn destroy_client(&self, c: ClientId) -> bool {
        let mut m = self.meta();
        let mut out = Vec::new();
        let existed = destroy_client_locked(&mut m, c, &mut out);
        drop(m);
        self.free_frames(&out);
        self.reap();
        existed
    }

    /// The client of a Xen domain id, attached or detached.
    pub fn client_by_domid(&self, domid: u32) -> Option<ClientId> {
        self.client_by_identity(Identity::Xen { domid })
    }

    /// The client of an identity, attached or detached.
    pub fn client_by_identity(&self, identity: Identity) -> Option<ClientId> {
        self.meta().by_identity.get(&identity).copied()
    }
}

pub(crate) fn destroy_client_locked(m: &mut Meta, c: ClientId, out: &mut Vec<u32>) -> bool {
    let Ok(cl) = m.client(c) else { return false };
    let n = cl.pools.len();
    for i in 0..n {
        close_pool_locked(m, c, i as u32, out);
    }
    if let Some(cl) = m.clients.remove(&c) {
        if m.by_identity.get(&cl.identity) == Some(&c) {
            m.by_identity.remove(&cl.identity);
        }
        m.free_account(cl.account);
        m.drop_renames(cl.identity, cl.instance);
    }
    true
}

impl Meta {
    /// A new client, attached, with the configured defaults and no pools.
    pub(crate) fn new_client(&mut self, identity: Identity, instance: u64, name: &str) -> ClientId {
        let id = ClientId(self.next_client);
        self.next_client = self.next_client.wrapping_add(1).max(1);
        let weight = self.cfg.default_weight;
        let account = self.new_account(weight);
        let cl = Client {
            identity,
            instance,
            name: name.to_owned(),
            attached: true,
            detach_epoch: 0,
            frozen: false,
            weight,
            cap_bytes: self.cfg.default_cap_pages.saturating_mul(PAGE_SIZE as u64),
            compress: false,
            zc: crate::ClientCompression::default(),
            pools: Vec::new(),
            account,
            pages: 0,
            bytes: 0,
            pers_pages: 0,
            pers_bytes: 0,
            pers_cap_bytes: self.cfg.persistent_share_pages() * PAGE_SIZE as u64,
            c: ClientCounters::default(),
        };
        self.clients.insert(id, cl);
        self.by_identity.insert(identity, id);
        id
    }
}
