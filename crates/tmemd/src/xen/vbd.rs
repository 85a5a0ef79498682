//! Swap disks on the control plane: tmemd plays toolstack for a Xen PV block device
//! (`device/vbd/<devid>`) for every admitted domain a `[[swap_disk]]` table names, and
//! connects it to a [`DiskThread`] (docs/swap-disk.md).
//!
//! The state machine is the tmem device's ([`xenbus::backend_step`]); what differs:
//! - **One store client per domain.** The disk's pages are persistent pages of the domain's
//!   client, identified by the domain's instance (a hash of its `vm` path, which a new domain
//!   on a reused domid does not share). A domain that gets a swap disk is therefore not
//!   offered the tmem device (its frontend would attach the same client under another
//!   instance and replace it).
//! - **Never closed under a guest's feet.** blkfront removes a disk whose backend closes,
//!   which kills a guest's swap. So tmemd leaves a connected disk Connected when it stops,
//!   and the next tmemd takes the ring over from the ring journal (requests in flight are
//!   run again and answered); only a protocol violation, a domain's death or a disk that
//!   cannot be carried on (its pages are gone) closes it.
//! - **Clean-up is ours.** libxl knows nothing of the device: the frontend and backend
//!   directories, the spill file and the ring journal are removed when the domain dies.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tmem_abi::xenstore::state;
use tmem_blkif::{BlkBackend, DiskParams};
use tmem_store::{Attach, Identity, SwapDiskStats};
use tmem_swapdisk::{
    domain_instance, open_pool, ring_identity, DiskConfig, DiskId, RingJournal, SwapDisk,
};
use tmem_xen::blkback::{self, BlkfrontKeys, OfferError, VbdOffer};
use tmem_xen::wire::parse_u32;
use tmem_xen::xenbus::{self, KeyError, Step};
use tmem_xen::{BoundPort, Evtchn, Tx, XsError};
use tracing::{debug, info, warn};

use super::backend::XenBackend;
use super::disk_thread::{DiskRun, DiskThread};
use super::grant_io::GrantCopyIo;
use super::pace::{may_act, DomLog, Pace};
use crate::config::SwapRule;
use crate::worker::{lock, End};

pub(super) const TOKEN_VBD: &str = "tmemd-vbd-";

/// One domain's swap disk as the control plane tracks it.
#[derive(Debug)]
pub(super) struct VbdDom {
    pub name: String,
    pub rule: SwapRule,
    pub be_state: u32,
    pub pending: bool,
    pub pace: Pace,
    pub log: DomLog,
    /// The domain instance (from its `vm` path): names the spill file and the client.
    pub instance: u64,
    pub live: Option<DiskThread>,
    /// Refused for good (a collision with a configured disk): not offered again.
    pub refused: bool,
    pub status: Arc<Mutex<SwapDiskStats>>,
}

fn vbd_token(d: u32) -> String {
    format!("{TOKEN_VBD}{d}")
}

impl VbdDom {
    fn set_status(&self, s: &str) {
        lock(&self.status).state = s.to_owned();
    }
}

impl XenBackend {
    fn disk_id(&self, d: u32, v: &VbdDom) -> DiskId {
        DiskId {
            identity: Identity::Xen { domid: d },
            instance: v.instance,
            devid: v.rule.devid,
        }
    }

    fn spill_dir(&self) -> PathBuf {
        self.swap.spill_dir.clone()
    }

    /// Start-up, before any disk is offered: make the spill directory, and remove the spill
    /// files and journals no recovered client can own (all of them with heap page memory).
    pub(super) fn swap_startup(&mut self) {
        if self.swap.rules.is_empty() {
            return;
        }
        let dir = self.spill_dir();
        if let Err(e) = std::fs::create_dir_all(&dir) {
            warn!(
                "cannot create the swap spill directory {}: {e}; swap disks are not offered \
                 (create it, or set swap_spill_dir)",
                dir.display()
            );
            self.swap_usable = false;
            return;
        }
        self.swap_usable = true;
        let recovered: Vec<(u32, u64)> = {
            let stats = self.shared.store.stats();
            stats
                .clients
                .iter()
                .filter(|c| c.local_uid.is_none())
                .map(|c| (c.domid, c.instance))
                .collect()
        };
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some((domid, instance, _)) = DiskId::parse_xen_file_name(&name) else {
                continue;
            };
            if !recovered.contains(&(domid, instance)) {
                match std::fs::remove_file(e.path()) {
                    Ok(()) => {
                        info!(file = %name, "removed a swap disk file no recovered guest owns")
                    }
                    Err(err) => warn!(file = %name, "cannot remove a stale swap disk file: {err}"),
                }
            }
        }
    }

    /// Start-up: drop the device directories of domains that are gone.
    pub(super) fn swap_reconcile(&mut self) -> Result<(), XsError> {
        for (domid, devid) in blkback::list_vbds(&mut self.xs)? {
            if !self.domain_alive(domid)? {
                info!(
                    domid,
                    devid, "removing the swap disk of a domain that is gone"
                );
                blkback::remove_vbd(&mut self.xs, domid, devid)?;
            }
        }
        Ok(())
    }

    /// Does this domain get a swap disk (and therefore not the tmem device)?
    pub(super) fn swap_rule_for(&self, d: u32, name: &str) -> Option<SwapRule> {
        self.swap.disk_for(d, name).cloned()
    }

    /// A newly seen domain with a swap disk: carry on a disk a previous tmemd left connected,
    /// or offer it afresh.
    pub(super) fn swap_admit(
        &mut self,
        d: u32,
        name: String,
        rule: SwapRule,
    ) -> Result<(), XsError> {
        let status = Arc::new(Mutex::new(SwapDiskStats {
            domid: d,
            name: name.clone(),
            device: rule.device.clone(),
            devid: rule.devid,
            sectors: rule.sectors,
            state: "offered".into(),
            ..SwapDiskStats::default()
        }));
        let vm = self
            .xs
            .read_string(Tx::NONE, &format!("/local/domain/{d}/vm"))?
            .unwrap_or_default();
        let mut v = VbdDom {
            name,
            rule,
            be_state: state::INIT_WAIT,
            pending: false,
            pace: Pace::new(Instant::now()),
            log: DomLog::default(),
            instance: domain_instance(&vm),
            live: None,
            refused: false,
            status,
        };
        lock(&self.shared.swap_disks).insert((d, v.rule.devid), v.status.clone());
        if !self.swap_usable {
            v.refused = true;
            v.set_status("refused");
            self.vbds.insert(d, v);
            return Ok(());
        }
        if vm.is_empty() {
            warn!(
                domid = d,
                "domain has no vm path in xenstore; its swap disk is not offered"
            );
            v.refused = true;
            v.set_status("refused");
            self.vbds.insert(d, v);
            return Ok(());
        }
        let devid = v.rule.devid;
        let ours = blkback::vbd_backend_state(&mut self.xs, d, devid)?;
        if ours.is_none() {
            if let Some(other) = blkback::vbd_in_use(&mut self.xs, d, devid)? {
                warn!(
                    domid = d,
                    device = %v.rule.device,
                    "the domain already has a disk {} (backend {other}); its swap disk is not \
                     offered: choose another device in [[swap_disk]]",
                    v.rule.device
                );
                v.refused = true;
                v.set_status("refused");
                self.vbds.insert(d, v);
                return Ok(());
            }
        }
        let fe = blkback::vbd_frontend_state(&mut self.xs, d, devid)?;
        self.vbds.insert(d, v);
        if ours == Some(state::CONNECTED) && fe == Some(state::CONNECTED) {
            match self.vbd_resume(d) {
                Ok(()) => {
                    return blkback::watch_vbd_frontend(&mut self.xs, d, devid, &vbd_token(d))
                }
                Err(VbdFail::Xs(e)) => return Err(e),
                Err(VbdFail::Refuse(msg)) => {
                    // The guest's disk cannot be carried on: close it, so the guest sees a
                    // dead disk instead of one that silently lost its pages.
                    warn!(
                        domid = d,
                        "cannot carry on the swap disk after a restart: {msg}; closing it"
                    );
                    blkback::set_vbd_error(&mut self.xs, d, devid, &msg)?;
                    self.vbd_set_state(d, state::CLOSING)?;
                    return blkback::watch_vbd_frontend(&mut self.xs, d, devid, &vbd_token(d));
                }
            }
        }
        let Some(v) = self.vbds.get(&d) else {
            return Ok(());
        };
        let offer = VbdOffer {
            domid: d,
            devid,
            dev_name: v.rule.device.clone(),
            sectors: v.rule.sectors,
            max_ring_page_order: self.swap_ring_order,
        };
        // Ours from an earlier tmemd and not connected, or new: (re)written from scratch.
        match blkback::offer_vbd(&mut self.xs, &offer) {
            Ok(()) => {}
            Err(OfferError::Xs(e)) => return Err(e),
            Err(e @ OfferError::InUse { .. }) => {
                // A disk hot-plugged in the meantime.
                warn!(domid = d, "swap disk not offered: {e}");
                if let Some(v) = self.vbds.get_mut(&d) {
                    v.refused = true;
                    v.set_status("refused");
                }
                return Ok(());
            }
        }
        info!(domid = d, device = %offer.dev_name, sectors = offer.sectors, "swap disk offered to domain (InitWait)");
        blkback::watch_vbd_frontend(&mut self.xs, d, devid, &vbd_token(d))
    }

    /// Watch events for vbd frontends mark their domain pending.
    pub(super) fn vbd_event(&mut self, d: u32) {
        if let Some(v) = self.vbds.get_mut(&d) {
            v.pending = true;
        }
    }

    pub(super) fn vbd_mark_all_pending(&mut self) {
        for v in self.vbds.values_mut() {
            v.pending = true;
        }
    }

    pub(super) fn vbd_next_due(&self) -> Option<Instant> {
        self.vbds
            .values()
            .filter(|v| v.pending)
            .map(|v| v.pace.not_before())
            .min()
    }

    /// Act on every pending vbd whose pace allows.
    pub(super) fn vbd_act_on_pending(&mut self) -> Result<(), XsError> {
        let now = Instant::now();
        let pending: Vec<u32> = self
            .vbds
            .iter()
            .filter(|(_, v)| v.pending)
            .map(|(d, _)| *d)
            .collect();
        for d in pending {
            let Some(v) = self.vbds.get_mut(&d) else {
                continue;
            };
            if !may_act(&mut v.pace, &mut v.log, now, d, "block frontend") {
                continue;
            }
            v.pending = false;
            self.vbd_frontend_changed(d)?;
        }
        Ok(())
    }

    fn vbd_frontend_changed(&mut self, d: u32) -> Result<(), XsError> {
        if !self.domain_alive(d)? {
            return self.vbd_release(d);
        }
        let Some(v) = self.vbds.get(&d) else {
            return Ok(());
        };
        if v.refused {
            return Ok(());
        }
        let devid = v.rule.devid;
        let fe = blkback::vbd_frontend_state(&mut self.xs, d, devid)?;
        let step = xenbus::backend_step(fe, v.be_state, v.live.is_some());
        debug!(
            domid = d,
            ?fe,
            be_state = v.be_state,
            ?step,
            "block frontend state changed"
        );
        match step {
            Step::Nothing => Ok(()),
            Step::Close => {
                self.vbd_teardown(d);
                self.vbd_set_state(d, state::CLOSED)
            }
            Step::Reset => {
                self.vbd_teardown(d);
                self.vbd_set_state(d, state::INIT_WAIT)
            }
            Step::Connect if self.hold_for_twin(d) => Ok(()),
            Step::Connect => match self.vbd_connect(d) {
                Ok(()) => {
                    blkback::clear_vbd_error(&mut self.xs, d, devid)?;
                    self.vbd_set_state(d, state::CONNECTED)
                }
                Err(VbdFail::Xs(e)) => Err(e),
                Err(VbdFail::Refuse(msg)) => {
                    if let Some(v) = self.vbds.get_mut(&d) {
                        if let Some(suppressed) = v.log.allow("refuse") {
                            warn!(
                                domid = d,
                                suppressed, "refusing the guest's swap disk: {msg}"
                            );
                        }
                        v.set_status("refused");
                    }
                    blkback::set_vbd_error(&mut self.xs, d, devid, &msg)?;
                    self.vbd_set_state(d, state::CLOSED)
                }
            },
        }
    }

    fn vbd_set_state(&mut self, d: u32, s: u32) -> Result<(), XsError> {
        let Some(v) = self.vbds.get_mut(&d) else {
            return Ok(());
        };
        v.be_state = s;
        let devid = v.rule.devid;
        blkback::set_vbd_state(&mut self.xs, d, devid, s)
    }

    /// Connect a frontend that says Initialised: attach the domain's client, open the disk,
    /// map the ring, start a journal, bind the event channel, start the disk's thread.
    fn vbd_connect(&mut self, d: u32) -> Result<(), VbdFail> {
        let keys = self.vbd_keys(d)?;
        let live = self.vbds.get(&d).and_then(|v| v.live.as_ref());
        if live.is_some_and(|l| l.keys == keys && !l.has_ended()) {
            return Ok(()); // the ring we already serve
        }
        self.vbd_teardown(d);
        self.vbd_start(d, keys, None)
    }

    /// Carry on a disk a previous tmemd served: the same as a connect, but the ring is taken
    /// over from its journal and the disk's pages must have survived.
    fn vbd_resume(&mut self, d: u32) -> Result<(), VbdFail> {
        let started = Instant::now();
        let keys = self.vbd_keys(d)?;
        let v = self
            .vbds
            .get(&d)
            .ok_or_else(|| VbdFail::Refuse("no such disk".into()))?;
        let path = self.spill_dir().join(self.disk_id(d, v).journal_name());
        let journal = RingJournal::read(&path)
            .map_err(|e| VbdFail::Refuse(format!("cannot read the ring journal: {e}")))?
            .ok_or_else(|| {
                VbdFail::Refuse("there is no ring journal to take the ring over from".into())
            })?;
        if journal.ident != ring_identity(&keys.ring_refs, keys.event_channel) {
            return Err(VbdFail::Refuse(
                "the ring journal belongs to another ring".into(),
            ));
        }
        self.vbd_start(d, keys, Some(journal))?;
        if let Some(v) = self.vbds.get_mut(&d) {
            v.be_state = state::CONNECTED;
        }
        info!(
            domid = d,
            took_us = started.elapsed().as_micros() as u64,
            "swap disk resumed in place after a tmemd restart (same ring; requests in flight \
             run again and answered)"
        );
        Ok(())
    }

    fn vbd_keys(&mut self, d: u32) -> Result<BlkfrontKeys, VbdFail> {
        let devid = self
            .vbds
            .get(&d)
            .map(|v| v.rule.devid)
            .ok_or_else(|| VbdFail::Refuse("no such disk".into()))?;
        match blkback::read_blkfront_keys(&mut self.xs, d, devid, self.swap_ring_order) {
            Ok(k) => Ok(k),
            Err(KeyError::Xs(e)) => Err(VbdFail::Xs(e)),
            Err(e) => Err(VbdFail::Refuse(e.to_string())),
        }
    }

    fn vbd_start(
        &mut self,
        d: u32,
        keys: BlkfrontKeys,
        resume: Option<tmem_swapdisk::JournalState>,
    ) -> Result<(), VbdFail> {
        let refuse = |m: String| VbdFail::Refuse(m);
        let gntdev = self
            .gntdev
            .clone()
            .ok_or_else(|| refuse("the grant device is not available".into()))?;
        let (name, rule, instance, status) = {
            let v = self
                .vbds
                .get(&d)
                .ok_or_else(|| refuse("no such disk".into()))?;
            (v.name.clone(), v.rule.clone(), v.instance, v.status.clone())
        };
        let id = DiskId {
            identity: Identity::Xen { domid: d },
            instance,
            devid: rule.devid,
        };
        let store = self.shared.store.clone();
        let (client, attach) = store
            .attach_client(d, instance, &name)
            .map_err(|e| refuse(format!("cannot attach the domain's store client: {e}")))?;
        self.shared.attached_as(client, Identity::Xen { domid: d });
        // From here on, every failure gives the client back (kept for the grace period).
        let fail = |shared: &crate::worker::Shared, m: String| {
            shared.release(client, End::Detach);
            VbdFail::Refuse(m)
        };
        let (pool, reattached) = match open_pool(&store, client, rule.devid) {
            Ok(p) => p,
            Err(e) => {
                return Err(fail(
                    &self.shared,
                    format!("cannot open the disk's pool: {e}"),
                ))
            }
        };
        if resume.is_some() && (attach != Attach::Reattached || !reattached) {
            return Err(fail(
                &self.shared,
                "the disk's pages did not survive the restart (page memory is not durable, or \
                 the reattach grace period ran out)"
                    .into(),
            ));
        }
        let cfg = DiskConfig {
            id,
            sectors: rule.sectors,
            spill_dir: self.spill_dir(),
        };
        let (disk, report) = match SwapDisk::open(&cfg, store.clone(), client, pool, !reattached) {
            Ok(x) => x,
            Err(e) => return Err(fail(&self.shared, format!("cannot open the disk: {e}"))),
        };
        let ring_pages = keys.ring_refs.len() as u32;
        let mem = match gntdev.map(d, &keys.ring_refs, true) {
            Ok(m) => m,
            Err(e) => {
                return Err(fail(
                    &self.shared,
                    format!("cannot map the ring grants: {e}"),
                ))
            }
        };
        let params = DiskParams::swap_disk(rule.sectors);
        let jpath = self.spill_dir().join(id.journal_name());
        let ident = ring_identity(&keys.ring_refs, keys.event_channel);
        let (back, journal, replayed) = match resume {
            None => {
                let back = match BlkBackend::new(mem, ring_pages, params) {
                    Ok(b) => b,
                    Err(e) => return Err(fail(&self.shared, format!("ring unusable: {e}"))),
                };
                let j = RingJournal::create(&jpath, ident, back.entries(), 0);
                (back, j, 0)
            }
            Some(state) => {
                let r = BlkBackend::resume(mem, ring_pages, params, state.consumed, |i| {
                    state.request(i)
                });
                let (back, replayed) = match r {
                    Ok(x) => x,
                    Err(e) => {
                        return Err(fail(
                            &self.shared,
                            format!("the ring cannot be taken over: {e}"),
                        ))
                    }
                };
                let j = RingJournal::reopen(&jpath, back.entries());
                (back, j, replayed)
            }
        };
        let journal = match journal {
            Ok(j) => j,
            Err(e) => {
                return Err(fail(
                    &self.shared,
                    format!("cannot write the ring journal {}: {e}", jpath.display()),
                ))
            }
        };
        let evtchn = match Evtchn::open() {
            Ok(e) => e,
            Err(e) => return Err(fail(&self.shared, format!("cannot open evtchn: {e}"))),
        };
        let local = match evtchn.bind_interdomain(d, keys.event_channel) {
            Ok(p) => p,
            Err(e) => {
                return Err(fail(
                    &self.shared,
                    format!("cannot bind event channel {}: {e}", keys.event_channel),
                ))
            }
        };
        let port = BoundPort {
            evtchn,
            port: local,
        };
        {
            let mut s = lock(&status);
            s.client_id = Some(u64::from(client.0));
            s.pool_id = Some(pool);
            s.state = "connected".into();
            s.pages_spilled = report.spilled_pages;
        }
        let run = DiskRun {
            domid: d,
            devid: rule.devid,
            back,
            disk,
            io: GrantCopyIo::new(gntdev, d),
            journal: Some(journal),
            port,
            status,
        };
        let thread = match DiskThread::spawn(run, client, keys, self.shared.clone()) {
            Ok(t) => t,
            Err(e) => {
                return Err(fail(
                    &self.shared,
                    format!("cannot start the disk's thread: {e}"),
                ))
            }
        };
        if let Some(v) = self.vbds.get_mut(&d) {
            v.live = Some(thread);
        }
        info!(
            domid = d,
            client = client.0,
            device = %rule.device,
            ring_pages,
            reattached,
            spilled = report.spilled_pages,
            reconciled = report.reconciled,
            replayed,
            "swap disk connected"
        );
        Ok(())
    }

    /// Stop the disk's thread (if any) and detach the client: its pages stay for the grace
    /// period, in case the frontend connects again.
    pub(super) fn vbd_teardown(&mut self, d: u32) {
        let Some(v) = self.vbds.get_mut(&d) else {
            return;
        };
        let Some(live) = v.live.take() else {
            return;
        };
        v.set_status("closed");
        let client = live.client;
        live.stop();
        self.shared.release(client, End::Detach);
        info!(domid = d, "swap disk disconnected; ring unmapped");
    }

    /// Disk threads that ended on their own (the guest broke the protocol): close the device.
    pub(super) fn vbd_close_ended(&mut self) -> Result<(), XsError> {
        let ended: Vec<u32> = self
            .vbds
            .iter()
            .filter(|(_, v)| v.live.as_ref().is_some_and(|l| l.has_ended()))
            .map(|(d, _)| *d)
            .collect();
        for d in ended {
            self.vbd_teardown(d);
            let devid = match self.vbds.get(&d) {
                Some(v) => v.rule.devid,
                None => continue,
            };
            blkback::set_vbd_error(&mut self.xs, d, devid, "disk closed by tmemd")?;
            self.vbd_set_state(d, state::CLOSING)?;
        }
        Ok(())
    }

    /// The domain is gone: stop its disk, destroy its client's pages, remove the spill file,
    /// the journal and every xenstore entry tmemd made for it. A domain that was suspending
    /// keeps its pages and spill file, parked (`park.rs`).
    pub(super) fn vbd_release(&mut self, d: u32) -> Result<(), XsError> {
        let Some(v) = self.vbds.get(&d) else {
            return Ok(());
        };
        let devid = v.rule.devid;
        let id = self.disk_id(d, v);
        let parked = (v.rule.clone(), v.instance, v.name.clone(), v.refused);
        self.vbd_teardown(d);
        let park = self.should_park(d) && !parked.3;
        if park {
            self.park(d, parked.2, Some((parked.0, parked.1)));
        } else {
            if let Some(c) = self.shared.store.client_by_domid(d) {
                lock(&self.shared.detached).remove(&c);
                self.shared.store.destroy_client(c);
            }
            for name in [id.spill_name(), id.journal_name()] {
                let p = self.spill_dir().join(name);
                match std::fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => warn!(domid = d, "cannot remove {}: {e}", p.display()),
                }
            }
            self.unhold_twins(d);
        }
        self.untrack(d)?;
        lock(&self.shared.swap_disks).remove(&(d, devid));
        self.vbds.remove(&d);
        blkback::unwatch_vbd_frontend(&mut self.xs, d, devid, &vbd_token(d))?;
        blkback::remove_vbd(&mut self.xs, d, devid)?;
        if park {
            info!(
                domid = d,
                "domain gone; its swap disk's xenstore entries removed"
            );
        } else {
            info!(
                domid = d,
                "domain gone; swap disk, its pages and its spill file removed"
            );
        }
        Ok(())
    }

    /// Orderly stop: stop every disk thread but leave the devices Connected, so the guests'
    /// disks stay and the next tmemd takes their rings over (requests wait meanwhile).
    pub(super) fn vbd_shutdown(&mut self) {
        let doms: Vec<u32> = self.vbds.keys().copied().collect();
        for d in doms {
            if let Some(live) = self.vbds.get_mut(&d).and_then(|v| v.live.take()) {
                let client = live.client;
                live.stop();
                self.shared.release(client, End::Detach);
            }
        }
    }

    /// After a xenstore reconnect: watch every tracked vbd frontend again.
    pub(super) fn vbd_rewatch(&mut self) -> Result<(), XsError> {
        let known: Vec<(u32, u32)> = self.vbds.iter().map(|(d, v)| (*d, v.rule.devid)).collect();
        for (d, devid) in known {
            if !self.domain_alive(d)? {
                self.vbd_release(d)?;
                continue;
            }
            blkback::watch_vbd_frontend(&mut self.xs, d, devid, &vbd_token(d))?;
        }
        Ok(())
    }

    /// The domain id a vbd watch token names.
    pub(super) fn vbd_token_domid(token: &str) -> Option<u32> {
        token.strip_prefix(TOKEN_VBD).and_then(parse_u32)
    }
}

/// Why a connect or resume did not happen.
pub(super) enum VbdFail {
    /// xenstore failed: the connection is lost (handled by the caller's reconnect).
    Xs(XsError),
    /// The disk cannot be served: say why in `error`, close the device.
    Refuse(String),
}
