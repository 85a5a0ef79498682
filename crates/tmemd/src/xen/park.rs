//! Parking: a Xen domain's pages follow it across `xl save`/`xl restore` and `xl migrate`
//! on one host (docs/operations.md, "Save, restore and migration").
//!
//! - **Who a domain is.** At admission tmemd reads the domain's uuid from its `vm` path,
//!   trusted only when dom0 owns that node ([`xenbus::read_domain_uuid`]), and watches its
//!   `control/shutdown` node.
//! - **Suspending.** The toolstack writes `suspend` there for a save or a migration; tmemd
//!   marks the domain (the mark stays until the domain is released). A guest can write it
//!   too: then it only gets its *own* pages kept for `park_timeout_secs` after its death.
//!   The guest acknowledges a request by writing an empty value, and it may do so before
//!   tmemd reads the node (seen in the QEMU migrate scenario: a saved domain's swap disk was
//!   destroyed). So a write tmemd only ever reads as empty, a request that came and went
//!   unseen, marks the domain too: a poweroff missed that way parks pages until the timeout,
//!   a save missed that way would lose them. The node read as gone is no acknowledgement:
//!   the toolstack removes it with the domain's directory at every destroy.
//! - **Park instead of destroy.** A marked domain that is released keeps its persistent pools
//!   and its swap disk (pages, spill file; the ring journal is of no use to a new ring), in
//!   the parked table under its uuid, for `park_timeout_secs`. Ephemeral pools went at the
//!   detach. Any other release destroys as before.
//! - **Claim.** The first domain with the same uuid (admitted later, as `xl restore` makes
//!   it: before its introduction, so that its devices are there when it resumes; or already there, as `xl migrate` to this host makes it while the old one lives)
//!   takes the entry: the store client is re-keyed to its domain id (durably,
//!   `Store::rekey`), the spill file renamed, and its devices connect to the old pages. The
//!   entry is consumed: a second domain restored from the same image starts empty.
//! - **Twins.** While a domain with the same uuid is alive and suspending (a migration on
//!   this host), the new one's devices are offered but not connected, so its frontends
//!   cannot attach fresh, empty clients before the pages are handed over; at the old one's
//!   release the new one claims them at once (if it is held or has no client yet: a second
//!   live domain of the same image that has pages of its own keeps them).
//! - **Release.** An entry not claimed in time is released (pages, spill file, journal); so
//!   is one whose old domain id a domain with another uuid takes.
//!
//! Not kept across a tmemd restart: the parked table lives in this process (the pages are in
//! durable memory, and a restarted tmemd drops them once the reattach grace ends).

use std::time::Instant;

use tmem_store::{ClientId, Identity, ParkedStats};
use tmem_swapdisk::DiskId;
use tmem_xen::wire::parse_u32;
use tmem_xen::xenbus;
use tmem_xen::{Tx, XsError};
use tracing::{info, warn};

use super::backend::XenBackend;
use crate::config::SwapRule;
use crate::worker::{lock, End, ParkedStatus};

pub(super) const TOKEN_SUSPEND: &str = "tmemd-sd-";

fn suspend_token(d: u32) -> String {
    format!("{TOKEN_SUSPEND}{d}")
}

/// A domain saved or migrated away, its pages waiting for its uuid.
#[derive(Debug)]
pub(super) struct Parked {
    pub name: String,
    pub old_domid: u32,
    /// The store client holding its pages (none if it had none).
    pub client: Option<ClientId>,
    /// Its swap disk (rule and instance): the spill file is still named after `old_domid`.
    pub vbd: Option<(SwapRule, u64)>,
    pub deadline: Instant,
}

/// What tmemd knows of an admitted domain for parking.
#[derive(Debug, Default)]
pub(super) struct Tracked {
    /// Its uuid, if dom0 vouched for one.
    pub uuid: Option<String>,
    /// The toolstack (or the guest) asked it to suspend.
    pub suspending: bool,
    /// The next event of the shutdown watch is the one xenstored fires when a watch is set.
    pub initial_event: bool,
    /// A request other than `suspend` was read (its acknowledgement is no surprise).
    pub request_seen: bool,
    /// A request was acknowledged before tmemd could read it: it may have been `suspend`.
    pub unseen_request: bool,
}

impl Tracked {
    /// Whether its release may be a save or a migration (see the module comment).
    pub fn may_be_suspending(&self) -> bool {
        self.suspending || self.unseen_request
    }
}

impl XenBackend {
    /// A domain is admitted (tmem device or swap disk): read its uuid and watch its shutdown
    /// node; a parked entry under its old domain id with another uuid is released, one with
    /// its uuid claimed.
    pub(super) fn track(&mut self, d: u32) -> Result<(), XsError> {
        let uuid = xenbus::read_domain_uuid(&mut self.xs, d)?;
        let reused: Vec<String> = self
            .parked
            .iter()
            .filter(|(u, p)| p.old_domid == d && Some(*u) != uuid.as_ref())
            .map(|(u, _)| u.clone())
            .collect();
        for u in reused {
            self.release_parked(&u, "its domain id was taken by a domain with another uuid");
        }
        self.tracked.insert(
            d,
            Tracked {
                uuid: uuid.clone(),
                initial_event: true,
                ..Tracked::default()
            },
        );
        self.xs
            .watch(&xenbus::shutdown_path(d), &suspend_token(d))?;
        if let Some(u) = uuid {
            if self.parked.contains_key(&u) && self.twin_of(d).is_none() {
                self.claim(&u, d);
            }
        }
        Ok(())
    }

    /// A domain not introduced yet (its restore is under way): admit it now if dom0 vouches
    /// for a uuid that has parked pages. `xl restore` introduces a domain only shortly before
    /// it unpauses it, and a resumed blkfront gives up on a disk whose frontend directory is
    /// not there yet; libxl has written the domain's home directory and `vm` path by then.
    pub(super) fn early_claimant(&mut self, d: u32) -> Result<bool, XsError> {
        if self.parked.is_empty() {
            return Ok(false);
        }
        let Some(uuid) = xenbus::read_domain_uuid(&mut self.xs, d)? else {
            return Ok(false);
        };
        if !self.parked.contains_key(&uuid) {
            return Ok(false);
        }
        info!(
            domid = d,
            uuid = %uuid,
            "a domain with a parked uuid is being built: offering its devices before it runs"
        );
        self.early.insert(d);
        Ok(true)
    }

    /// The domain is gone: forget it.
    pub(super) fn untrack(&mut self, d: u32) -> Result<(), XsError> {
        if self.tracked.remove(&d).is_none() {
            return Ok(());
        }
        self.held.remove(&d);
        self.early.remove(&d);
        self.xs
            .unwatch(&xenbus::shutdown_path(d), &suspend_token(d))
    }

    /// After a xenstore reconnect: watch every tracked domain's shutdown node again.
    pub(super) fn rewatch_suspend(&mut self) -> Result<(), XsError> {
        let doms: Vec<u32> = self.tracked.keys().copied().collect();
        for d in doms {
            if let Some(t) = self.tracked.get_mut(&d) {
                t.initial_event = true;
            }
            self.xs
                .watch(&xenbus::shutdown_path(d), &suspend_token(d))?;
        }
        Ok(())
    }

    /// The domain id a suspend watch token names.
    pub(super) fn suspend_token_domid(token: &str) -> Option<u32> {
        token.strip_prefix(TOKEN_SUSPEND).and_then(parse_u32)
    }

    /// A domain's shutdown node was written: `suspend` marks it (for good: the guest clears
    /// the node when it acknowledges), and so does an acknowledgement of a request never read
    /// (see the module comment).
    pub(super) fn suspend_event(&mut self, d: u32) -> Result<(), XsError> {
        if !self.tracked.contains_key(&d) {
            return Ok(());
        }
        let v = self.xs.read(Tx::NONE, &xenbus::shutdown_path(d))?;
        let Some(t) = self.tracked.get_mut(&d) else {
            return Ok(());
        };
        let initial = std::mem::replace(&mut t.initial_event, false);
        // The node is gone: the toolstack is removing the domain's directory (a destroy, or
        // the end of a save). That is no acknowledgement; a save was marked before it.
        let Some(v) = v else {
            return Ok(());
        };
        match v.as_slice() {
            b"suspend" => {
                if !t.suspending {
                    t.suspending = true;
                    info!(
                        domid = d,
                        uuid = t.uuid.as_deref().unwrap_or("-"),
                        "domain is suspending (save or migration): its pages will be parked \
                         at its release"
                    );
                }
            }
            // The watch being set, or an acknowledgement: of a request read before, or of one
            // that came and went unseen.
            b"" => {
                if !initial && !t.request_seen && !t.suspending && !t.unseen_request {
                    t.unseen_request = true;
                    info!(
                        domid = d,
                        uuid = t.uuid.as_deref().unwrap_or("-"),
                        "domain acknowledged a shutdown request before tmemd read it: its \
                         pages will be parked at its release, in case it was a save"
                    );
                }
                t.request_seen = false;
            }
            _ => t.request_seen = true,
        }
        Ok(())
    }

    /// Whether a released domain's pages are parked rather than destroyed.
    pub(super) fn should_park(&self, d: u32) -> bool {
        !self.park_timeout.is_zero()
            && self
                .tracked
                .get(&d)
                .is_some_and(|t| t.may_be_suspending() && t.uuid.is_some())
    }

    /// Another tracked domain with `d`'s uuid (the old domain of a migration on this host).
    pub(super) fn twin_of(&self, d: u32) -> Option<u32> {
        let u = self.tracked.get(&d)?.uuid.as_ref()?;
        self.tracked
            .iter()
            .find(|(&e, t)| e != d && t.uuid.as_ref() == Some(u))
            .map(|(&e, _)| e)
    }

    /// A frontend of `d` wants to connect: hold it while a twin that is suspending lives
    /// (true: held). A twin that is not suspending is another live domain of the same image;
    /// each keeps its own pages.
    pub(super) fn hold_for_twin(&mut self, d: u32) -> bool {
        let Some(twin) = self.twin_of(d) else {
            return false;
        };
        if !self
            .tracked
            .get(&twin)
            .is_some_and(Tracked::may_be_suspending)
        {
            return false;
        }
        if self.held.insert(d) {
            info!(
                domid = d,
                twin,
                "domain has the uuid of a live domain (a migration on this host): its devices \
                 connect once that domain is gone and its pages are handed over"
            );
        }
        true
    }

    /// Released domain `d`'s client (detached) and swap disk are parked under its uuid; a
    /// live twin claims them at once. The caller has torn the connections down.
    pub(super) fn park(&mut self, d: u32, name: String, vbd: Option<(SwapRule, u64)>) {
        let Some(uuid) = self.tracked.get(&d).and_then(|t| t.uuid.clone()) else {
            return;
        };
        let client = self.shared.store.client_by_domid(d);
        if let Some(c) = client {
            // Out of the reattach grace: the park timeout decides now.
            lock(&self.shared.detached).remove(&c);
        }
        let deadline = Instant::now() + self.park_timeout;
        info!(
            domid = d,
            uuid = %uuid,
            client = client.map(|c| c.0),
            swap_disk = vbd.is_some(),
            timeout_s = self.park_timeout.as_secs(),
            "suspended domain released: its persistent pages and swap disk are parked for a \
             domain with its uuid"
        );
        let status = ParkedStatus {
            stats: ParkedStats {
                state: "parked".into(),
                uuid: uuid.clone(),
                name: name.clone(),
                old_domid: d,
                client_id: client.map(|c| u64::from(c.0)),
                swap_disk: vbd.as_ref().map(|(r, _)| r.device.clone()),
                secs_left: 0,
            },
            deadline,
        };
        if let Some(old) = self.parked.insert(
            uuid.clone(),
            Parked {
                name,
                old_domid: d,
                client,
                vbd,
                deadline,
            },
        ) {
            // The same uuid parked twice (two domains restored from one image, both saved):
            // the older one's pages go.
            self.drop_parked(&uuid, old, "a newer save of the same uuid replaced it");
        }
        lock(&self.shared.parked).insert(uuid.clone(), status);
        // A live twin claims at once if it is waiting for these pages: held, or with no
        // client yet (its frontends have not connected). One with pages of its own keeps them.
        if let Some(twin) = self
            .tracked
            .iter()
            .filter(|(&e, t)| e != d && t.uuid.as_ref() == Some(&uuid))
            .map(|(&e, _)| e)
            .find(|e| self.held.contains(e) || self.shared.store.client_by_domid(*e).is_none())
        {
            self.claim(&uuid, twin);
        }
    }

    /// Domain `d` has `uuid`: it takes the parked entry (the client re-keyed, the spill file
    /// renamed), and its held frontends may connect.
    fn claim(&mut self, uuid: &str, d: u32) {
        let Some(p) = self.parked.remove(uuid) else {
            return;
        };
        lock(&self.shared.parked).remove(uuid);
        if let Some(c) = p.client {
            if let Err(e) = self.shared.store.rekey(c, d) {
                warn!(
                    domid = d,
                    old_domid = p.old_domid,
                    "cannot hand the parked pages over: {e}; they are released"
                );
                self.drop_parked(uuid, p, "the hand-over failed");
                self.unhold(d);
                return;
            }
            // Waits for the new domain's frontends like any detached client.
            self.shared.release(c, End::Detach);
        }
        if let Some((rule, instance)) = &p.vbd {
            let dir = self.swap.spill_dir.clone();
            let old = DiskId {
                identity: Identity::Xen { domid: p.old_domid },
                instance: *instance,
                devid: rule.devid,
            };
            let new = DiskId {
                identity: Identity::Xen { domid: d },
                ..old
            };
            if p.old_domid != d {
                if let Err(e) =
                    std::fs::rename(dir.join(old.spill_name()), dir.join(new.spill_name()))
                {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        warn!(
                            domid = d,
                            "cannot rename the parked swap disk's spill file: {e}"
                        );
                    }
                }
            }
            // A resumed blkfront starts a new ring and resubmits what was in flight: the old
            // ring's journal is of no use.
            remove_file(&dir.join(old.journal_name()), d);
            if let Some(v) = self.vbds.get_mut(&d) {
                v.instance = *instance;
            }
        }
        info!(
            domid = d,
            old_domid = p.old_domid,
            uuid,
            client = p.client.map(|c| c.0),
            "domain claimed the parked pages of its uuid; its devices reconnect to them"
        );
        self.unhold(d);
    }

    /// `d`'s frontends were held for a twin: look at them again.
    fn unhold(&mut self, d: u32) {
        if self.held.remove(&d) {
            if let Some(dom) = self.domains.get_mut(&d) {
                dom.pending = true;
            }
            if let Some(v) = self.vbds.get_mut(&d) {
                v.pending = true;
            }
        }
    }

    /// A released domain was not parked: domains held for it go on (they start empty).
    pub(super) fn unhold_twins(&mut self, d: u32) {
        let Some(u) = self.tracked.get(&d).and_then(|t| t.uuid.clone()) else {
            return;
        };
        let twins: Vec<u32> = self
            .tracked
            .iter()
            .filter(|(&e, t)| e != d && t.uuid.as_ref() == Some(&u))
            .map(|(&e, _)| e)
            .collect();
        for e in twins {
            self.unhold(e);
        }
    }

    /// Release entries whose time is up.
    pub(super) fn expire_parked(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .parked
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(u, _)| u.clone())
            .collect();
        for u in due {
            self.release_parked(&u, "no domain with its uuid came within park_timeout_secs");
        }
    }

    fn release_parked(&mut self, uuid: &str, why: &str) {
        if let Some(p) = self.parked.remove(uuid) {
            lock(&self.shared.parked).remove(uuid);
            self.drop_parked(uuid, p, why);
        }
    }

    /// Destroy a parked entry's pages, spill file and journal.
    fn drop_parked(&mut self, uuid: &str, p: Parked, why: &str) {
        if let Some(c) = p.client {
            lock(&self.shared.detached).remove(&c);
            self.shared.store.destroy_client(c);
        }
        if let Some((rule, instance)) = &p.vbd {
            let id = DiskId {
                identity: Identity::Xen { domid: p.old_domid },
                instance: *instance,
                devid: rule.devid,
            };
            for name in [id.spill_name(), id.journal_name()] {
                remove_file(&self.swap.spill_dir.join(name), p.old_domid);
            }
        }
        info!(
            old_domid = p.old_domid,
            name = %p.name,
            uuid,
            "parked pages released: {why}"
        );
    }

    /// Parked domains (an orderly stop warns that the next tmemd does not know them).
    pub(super) fn parked_count(&self) -> usize {
        self.parked.len()
    }
}

fn remove_file(p: &std::path::Path, domid: u32) {
    match std::fs::remove_file(p) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => warn!(domid, "cannot remove {}: {e}", p.display()),
    }
}
