//! The per-domain state machine of the Xen backend (see `docs/protocol.md` §3).
//!
//! At start-up a frontend a previous tmemd left connected is resumed in place where it can be
//! (its grants mapped and event channel bound again, its recovered store client resumed:
//! [`super::attach`]); every other existing backend directory is reset (`InitWait`), so
//! those frontends redo the handshake, and those of vanished domains are removed. Frontend
//! `Initialised` connects ([`super::attach`]), `Closing`/`Closed` tears the connection down
//! (persistent pools kept for a reattach), domain release destroys the client. Everything a
//! guest wrote is parsed by `tmem_xen::xenbus` (strict, bounded).
//!
//! Work per [`XenBackend::round`] is bounded: at most [`MAX_EVENTS_PER_ROUND`] watch events are
//! taken, each domain's events collapse into one pending flag, and a domain's pending change is
//! acted on only when its [`Pace`] allows.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::BorrowedFd;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tmem_abi::xenstore::{frontend_path, state};
use tmem_store::ClientId;
use tmem_xen::wire::{parse_u32, INTRODUCE_DOMAIN, RELEASE_DOMAIN};
use tmem_xen::xenbus::{self, FrontendKeys, Limits, Step};
use tmem_xen::{Evtchn, Gntdev, Tx, Xs, XsError};
use tracing::{debug, info, warn};

use super::pace::{may_act, DomLog, Pace};
use super::park::{Parked, Tracked};
use super::policy::Policy;
use super::vbd::VbdDom;
use super::BACKEND_DOMID;
use crate::config::{Config, SwapConfig};
use crate::ratelimit::RateLimiter;
use crate::worker::{lock, Shared, WorkerHandle};

const TOKEN_INTRODUCE: &str = "tmemd-introduce";
const TOKEN_RELEASE: &str = "tmemd-release";
const TOKEN_FRONTEND: &str = "tmemd-fe-";
/// How often domains are rescanned even without a watch event (a safety net, also for
/// introduce/release events dropped from a full queue).
const RESCAN: Duration = Duration::from_secs(2);
/// The rescan interval while domains are parked (see [`XenBackend::round`]).
const RESCAN_PARKED: Duration = Duration::from_millis(250);
/// How often connections a worker dropped are looked for.
const HOUSEKEEPING: Duration = Duration::from_millis(500);
/// Watch events taken per round; the rest wait for the next round (the loop does not sleep
/// while events are queued). Taking an event is cheap (it only marks its domain pending), and
/// this is more than one bounded `pump` brings in, so a flood cannot outgrow the queue.
pub const MAX_EVENTS_PER_ROUND: usize = 2048;

/// A live connection of one domain.
#[derive(Debug)]
pub(super) struct Live {
    pub client: ClientId,
    pub kill: Arc<AtomicBool>,
    pub worker: usize,
    pub keys: FrontendKeys,
}

/// What the backend knows about one domain it offered the device to.
#[derive(Debug)]
pub(super) struct Dom {
    pub name: String,
    /// The backend state we last decided on (rewritten after a reconnect if xenstore lost it).
    pub be_state: u32,
    pub live: Option<Live>,
    /// A watch event arrived that has not been acted on yet.
    pub pending: bool,
    pub pace: Pace,
    pub log: DomLog,
}

/// The Xen side of the daemon (runs on the `tmemd-xen` thread).
#[derive(Debug)]
pub struct XenBackend {
    pub(super) xs: Xs,
    /// `None` only in tests (connecting then fails cleanly).
    pub(super) gntdev: Option<Arc<Gntdev>>,
    pub(super) evtchns: Vec<Arc<Evtchn>>,
    pub(super) shared: Arc<Shared>,
    pub(super) workers: Arc<Vec<WorkerHandle>>,
    policy: Policy,
    limits: Limits,
    pub(super) max_guests: u32,
    pub(super) domains: BTreeMap<u32, Dom>,
    last_rescan: Instant,
    last_housekeeping: Instant,
    /// The start-up reconcile has been done (else a reconnect does it).
    reconciled: bool,
    /// For guest-triggerable lines of a domain we no longer (or not yet) track.
    pub(super) log: RateLimiter,
    /// Swap disks: the configuration, whether the spill directory is usable, the largest
    /// ring offered (as a page order), and each domain's disk (`vbd.rs`).
    pub(super) swap: SwapConfig,
    pub(super) swap_usable: bool,
    pub(super) swap_ring_order: u32,
    pub(super) vbds: BTreeMap<u32, VbdDom>,
    /// Parking (`park.rs`): how long a parked domain waits, each admitted domain's uuid and
    /// suspend mark, the parked domains by uuid, and domains whose frontends wait for a twin.
    pub(super) park_timeout: Duration,
    pub(super) tracked: BTreeMap<u32, Tracked>,
    pub(super) parked: BTreeMap<String, Parked>,
    pub(super) held: BTreeSet<u32>,
    /// Domains admitted before their introduction, to claim parked pages (park.rs).
    pub(super) early: BTreeSet<u32>,
}

fn frontend_token(d: u32) -> String {
    format!("{TOKEN_FRONTEND}{d}")
}

impl XenBackend {
    /// A backend over an open xenstore connection (tests pass a fake one and no gntdev).
    pub fn new(
        xs: Xs,
        gntdev: Option<Arc<Gntdev>>,
        evtchns: Vec<Arc<Evtchn>>,
        config: &Config,
        shared: Arc<Shared>,
        workers: Arc<Vec<WorkerHandle>>,
    ) -> XenBackend {
        let max_ring_page_order = 31 - config.max_ring_pages.max(1).leading_zeros();
        XenBackend {
            xs,
            gntdev,
            evtchns,
            shared,
            workers,
            policy: Policy {
                domains: config.xen_domains.clone(),
            },
            limits: Limits {
                max_ring_page_order: max_ring_page_order.min(xenbus::MAX_RING_PAGE_ORDER),
                max_data_pages: config.max_data_slots,
            },
            max_guests: config.max_guests,
            domains: BTreeMap::new(),
            last_rescan: Instant::now(),
            last_housekeeping: Instant::now(),
            reconciled: false,
            log: RateLimiter::new(20, Duration::from_secs(1)),
            swap: config.swap.clone(),
            swap_usable: false,
            swap_ring_order: 4,
            vbds: BTreeMap::new(),
            park_timeout: config.park_timeout,
            tracked: BTreeMap::new(),
            parked: BTreeMap::new(),
            held: BTreeSet::new(),
            early: BTreeSet::new(),
        }
    }

    /// Start-up: watch domains and reconcile with what xenstore holds.
    pub fn init(&mut self) -> Result<(), String> {
        self.watch_domains()
            .map_err(|e| format!("cannot watch domains: {e}"))?;
        self.reconcile()
            .map_err(|e| format!("start-up reconcile failed: {e}"))
    }

    fn watch_domains(&mut self) -> Result<(), XsError> {
        self.xs.watch(INTRODUCE_DOMAIN, TOKEN_INTRODUCE)?;
        self.xs.watch(RELEASE_DOMAIN, TOKEN_RELEASE)
    }

    /// Where the xenstore connection goes, for the ready line.
    pub fn describe(&self) -> String {
        self.xs.describe()
    }

    /// The descriptor to poll (watch events).
    pub fn xs_fd(&self) -> BorrowedFd<'_> {
        self.xs.as_fd()
    }

    /// Domains currently offered the device.
    pub fn domain_count(&self) -> usize {
        self.domains.len()
    }

    /// Watch events are waiting to be taken (the loop should come back at once).
    pub fn has_queued_work(&self) -> bool {
        self.xs.has_events()
    }

    /// The earliest instant a paced domain's pending change may be acted on.
    pub fn next_due(&self) -> Option<Instant> {
        let tmem = self
            .domains
            .values()
            .filter(|d| d.pending)
            .map(|d| d.pace.not_before())
            .min();
        match (tmem, self.vbd_next_due()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// One bounded round of work: read xenstore, take up to [`MAX_EVENTS_PER_ROUND`] events,
    /// rescan if due, close connections workers dropped, act on domains whose pace allows.
    /// An error means the xenstore connection is lost.
    pub fn round(&mut self) -> Result<(), XsError> {
        self.xs.pump()?;
        // While pages are parked, a restored domain must be seen before its unpause (its
        // blkfront resumes at once and needs its disk offered by then): look more often.
        let every = if self.parked.is_empty() {
            RESCAN
        } else {
            RESCAN_PARKED
        };
        let mut rescan = self.last_rescan.elapsed() >= every;
        for _ in 0..MAX_EVENTS_PER_ROUND {
            let Some(ev) = self.xs.take_event() else {
                break;
            };
            if ev.token == TOKEN_INTRODUCE || ev.token == TOKEN_RELEASE {
                rescan = true;
            } else if let Some(d) = ev.token.strip_prefix(TOKEN_FRONTEND).and_then(parse_u32) {
                if let Some(dom) = self.domains.get_mut(&d) {
                    dom.pending = true;
                }
            } else if let Some(d) = Self::vbd_token_domid(&ev.token) {
                self.vbd_event(d);
            } else if let Some(d) = Self::suspend_token_domid(&ev.token) {
                self.suspend_event(d)?;
            }
        }
        if self.xs.take_events_dropped() {
            // Some domain's event may be among those lost: look at every domain again.
            if let Some(suppressed) = self.log.allow() {
                warn!(
                    suppressed,
                    "xenstore watch events were dropped (queue full); rechecking every domain"
                );
            }
            rescan = true;
            for dom in self.domains.values_mut() {
                dom.pending = true;
            }
            self.vbd_mark_all_pending();
        }
        if rescan {
            self.rescan()?;
        }
        if self.last_housekeeping.elapsed() >= HOUSEKEEPING {
            self.last_housekeeping = Instant::now();
            self.close_dropped()?;
            self.vbd_close_ended()?;
            self.expire_parked();
        }
        self.act_on_pending()?;
        self.vbd_act_on_pending()
    }

    /// Act on every pending domain whose pace allows, each at most once per round.
    fn act_on_pending(&mut self) -> Result<(), XsError> {
        let now = Instant::now();
        let pending: Vec<u32> = self
            .domains
            .iter()
            .filter(|(_, dom)| dom.pending)
            .map(|(d, _)| *d)
            .collect();
        for d in pending {
            let Some(dom) = self.domains.get_mut(&d) else {
                continue;
            };
            if !may_act(&mut dom.pace, &mut dom.log, now, d, "tmem frontend") {
                continue;
            }
            dom.pending = false;
            self.frontend_changed(d)?;
        }
        Ok(())
    }

    /// Connections a worker dropped (ring violation, admin destroy, a panic): close the
    /// device in xenstore with a reason.
    fn close_dropped(&mut self) -> Result<(), XsError> {
        let dropped: Vec<u32> = {
            let guests = lock(&self.shared.guests);
            self.domains
                .iter()
                .filter(|(_, dom)| {
                    dom.live
                        .as_ref()
                        .is_some_and(|l| !guests.contains_key(&l.client))
                })
                .map(|(d, _)| *d)
                .collect()
        };
        for d in dropped {
            if let Some(suppressed) = self.guest_log(d, "dropped") {
                info!(
                    domid = d,
                    suppressed, "Xen guest connection dropped by tmemd; closing the device"
                );
            }
            xenbus::set_backend_error(
                &mut self.xs,
                BACKEND_DOMID,
                d,
                "connection closed by tmemd",
            )?;
            self.set_state(d, state::CLOSED)?;
            // Only now: if xenstore failed above, the next housekeeping after a reconnect
            // finds this connection again and finishes closing it.
            if let Some(dom) = self.domains.get_mut(&d) {
                dom.live = None;
            }
        }
        Ok(())
    }

    /// A log line a guest can trigger: `Some(suppressed)` if it may be written now.
    pub(super) fn guest_log(&mut self, d: u32, site: &'static str) -> Option<u64> {
        match self.domains.get_mut(&d) {
            Some(dom) => dom.log.allow(site),
            None => self.log.allow(),
        }
    }

    /// Orderly stop: close every connection and, if xenstore is reachable, tell the frontends
    /// (`Closed`), so they drop to fake handles and wait for the next tmemd.
    pub fn shutdown(&mut self, xenstore_up: bool) {
        if self.parked_count() > 0 {
            warn!(
                parked = self.parked_count(),
                "stopping with parked domains: a restarted tmemd does not know them, and drops \
                 their pages once the reattach grace ends"
            );
        }
        self.vbd_shutdown();
        let doms: Vec<u32> = self.domains.keys().copied().collect();
        for d in doms {
            self.teardown(d);
            if xenstore_up {
                let _ = xenbus::set_backend_error(&mut self.xs, BACKEND_DOMID, d, "tmemd stopped");
                let _ = self.set_state(d, state::CLOSED);
            }
        }
    }

    /// A new xenstore connection after the old one was lost: watch again and reconcile every
    /// domain with what xenstore holds now. Live connections are kept where the domain and
    /// its device directory still exist (their rings never depended on xenstore).
    pub fn reconnected(&mut self, xs: Xs) -> Result<(), XsError> {
        self.xs = xs;
        self.watch_domains()?;
        if !self.reconciled {
            // Nothing was served yet (no round ran); start from scratch.
            self.domains.clear();
            return self.reconcile();
        }
        let known: Vec<u32> = self.domains.keys().copied().collect();
        for d in known {
            if !self.domain_alive(d)? {
                self.release(d)?;
                continue;
            }
            let Some(in_xs) = xenbus::backend_state(&mut self.xs, BACKEND_DOMID, d)? else {
                // Our directory is gone: start this domain over (the rescan offers it again).
                self.teardown(d);
                self.domains.remove(&d);
                continue;
            };
            let decided = self.domains.get(&d).map(|x| x.be_state);
            if let Some(s) = decided.filter(|&s| s != in_xs) {
                self.set_state(d, s)?;
            }
            // Fires once at once, so the frontend's current state is looked at again.
            xenbus::watch_frontend_state(&mut self.xs, d, &frontend_token(d))?;
        }
        self.vbd_rewatch()?;
        self.rewatch_suspend()?;
        self.rescan()
    }

    // ---- domains ---------------------------------------------------------------------------

    /// Start-up: drop backend directories of vanished domains, then admit live ones (which
    /// resets their directories to InitWait so old connections are redone).
    fn reconcile(&mut self) -> Result<(), XsError> {
        for domid in xenbus::list_devices(&mut self.xs, BACKEND_DOMID)? {
            if !self.domain_alive(domid)? {
                info!(domid, "removing the tmem device of a domain that is gone");
                xenbus::remove_device(&mut self.xs, BACKEND_DOMID, domid)?;
            }
        }
        self.swap_startup();
        self.swap_reconcile()?;
        self.rescan()?;
        self.reconciled = true;
        Ok(())
    }

    pub(super) fn domain_alive(&mut self, domid: u32) -> Result<bool, XsError> {
        if self
            .xs
            .read(Tx::NONE, &format!("/local/domain/{domid}"))?
            .is_none()
        {
            return Ok(false);
        }
        if self.xs.is_domain_introduced(domid)? {
            self.early.remove(&domid);
            return Ok(true);
        }
        // A domain being restored that claimed parked pages is served before it is
        // introduced (park.rs): alive while its home directory is there.
        Ok(self.early.contains(&domid))
    }

    fn rescan(&mut self) -> Result<(), XsError> {
        self.last_rescan = Instant::now();
        let listed: Vec<u32> = self
            .xs
            .directory(Tx::NONE, "/local/domain")?
            .unwrap_or_default()
            .iter()
            .filter_map(|d| parse_u32(d))
            .collect();
        let known: Vec<u32> = self.domains.keys().copied().collect();
        for d in known {
            if !listed.contains(&d) || !self.domain_alive(d)? {
                self.release(d)?;
            }
        }
        let known: Vec<u32> = self.vbds.keys().copied().collect();
        for d in known {
            if !listed.contains(&d) || !self.domain_alive(d)? {
                self.vbd_release(d)?;
            }
        }
        for d in listed {
            if d == BACKEND_DOMID || self.domains.contains_key(&d) || self.vbds.contains_key(&d) {
                continue;
            }
            let name = self
                .xs
                .read_string(Tx::NONE, &format!("/local/domain/{d}/name"))?
                .unwrap_or_default();
            let name: String = name.chars().filter(|c| !c.is_control()).take(64).collect();
            if !self.policy.admits(d, &name) {
                continue;
            }
            if !self.xs.is_domain_introduced(d)? && !self.early_claimant(d)? {
                continue;
            }
            if let Some(rule) = self.swap_rule_for(d, &name) {
                // One store client per domain: a domain with a swap disk is not offered the
                // tmem device as well (see vbd.rs).
                self.swap_admit(d, name, rule)?;
            } else {
                self.admit(d, name)?;
            }
            self.track(d)?;
        }
        Ok(())
    }

    /// Offer the device (directories, permissions, limits, InitWait) and watch the frontend;
    /// or carry on the connection a previous tmemd left, if it can be resumed.
    fn admit(&mut self, d: u32, name: String) -> Result<(), XsError> {
        if self.try_resume(d, &name)? {
            return Ok(());
        }
        xenbus::offer_device(&mut self.xs, BACKEND_DOMID, d, &self.limits)?;
        info!(domid = d, name = %name, "tmem device offered to domain (InitWait)");
        self.domains.insert(
            d,
            Dom {
                name,
                be_state: state::INIT_WAIT,
                live: None,
                pending: false,
                pace: Pace::new(Instant::now()),
                log: DomLog::default(),
            },
        );
        xenbus::watch_frontend_state(&mut self.xs, d, &frontend_token(d))
    }

    /// A domain we do not track yet whose frontend and backend both say Connected: a
    /// previous tmemd served it and died or was stopped without closing it (a SIGKILL, a
    /// crash, an exec into a new build). Carry the connection on in place: the frontend never
    /// notices. True if resumed; false (having logged why) if the device is to be offered
    /// afresh, which resets the backend state and makes the frontend reconnect.
    fn try_resume(&mut self, d: u32, name: &str) -> Result<bool, XsError> {
        if xenbus::frontend_state(&mut self.xs, d)? != Some(state::CONNECTED)
            || xenbus::backend_state(&mut self.xs, BACKEND_DOMID, d)? != Some(state::CONNECTED)
        {
            return Ok(false);
        }
        let started = Instant::now();
        let fe = frontend_path(d);
        let limits = self.limits;
        // The same parser, bounds and limits as a fresh connect.
        let keys = match xenbus::read_frontend_keys(&mut self.xs, Tx::NONE, &fe, &limits) {
            Ok(k) => k,
            Err(xenbus::KeyError::Xs(e)) => return Err(e),
            Err(e) => {
                self.resume_refused(d, &e.to_string());
                return Ok(false);
            }
        };
        self.domains.insert(
            d,
            Dom {
                name: name.to_owned(),
                be_state: state::CONNECTED,
                live: None,
                pending: false,
                pace: Pace::new(Instant::now()),
                log: DomLog::default(),
            },
        );
        match self.resume(d, keys) {
            Ok((live, resumed)) => {
                let client = live.client;
                if let Some(dom) = self.domains.get_mut(&d) {
                    dom.live = Some(live);
                }
                info!(
                    domid = d,
                    name,
                    client = client.0,
                    answered = resumed.answered,
                    pending = resumed.pending,
                    took_us = started.elapsed().as_micros() as u64,
                    "Xen guest resumed in place after a tmemd restart (same grants, event \
                     channel and pool ids; requests in flight answered)"
                );
                xenbus::watch_frontend_state(&mut self.xs, d, &frontend_token(d))?;
                Ok(true)
            }
            Err(msg) => {
                self.domains.remove(&d);
                self.resume_refused(d, &msg);
                Ok(false)
            }
        }
    }

    fn resume_refused(&mut self, d: u32, msg: &str) {
        if let Some(suppressed) = self.log.allow() {
            info!(
                domid = d,
                suppressed,
                "cannot resume the Xen guest's connection in place: {msg}; offering the device \
                 afresh (the guest reconnects)"
            );
        }
    }

    /// The domain is gone: close its connection, destroy its pools (or park them, if it was
    /// suspending: `park.rs`), remove the backend.
    fn release(&mut self, d: u32) -> Result<(), XsError> {
        self.teardown(d);
        if self.should_park(d) {
            let name = self.dom_name(d);
            self.park(d, name, None);
        } else {
            if let Some(c) = self.shared.store.client_by_domid(d) {
                lock(&self.shared.detached).remove(&c);
                if self.shared.store.destroy_client(c) {
                    info!(
                        domid = d,
                        client = c.0,
                        "domain released; its pools are destroyed"
                    );
                }
            }
            self.unhold_twins(d);
        }
        self.untrack(d)?;
        self.domains.remove(&d);
        xenbus::unwatch_frontend_state(&mut self.xs, d, &frontend_token(d))?;
        xenbus::remove_device(&mut self.xs, BACKEND_DOMID, d)?;
        info!(domid = d, "domain gone; tmem device removed");
        Ok(())
    }

    fn frontend_changed(&mut self, d: u32) -> Result<(), XsError> {
        if !self.domain_alive(d)? {
            return self.release(d);
        }
        let fe_state = xenbus::frontend_state(&mut self.xs, d)?;
        let Some(dom) = self.domains.get(&d) else {
            return Ok(());
        };
        let step = xenbus::backend_step(fe_state, dom.be_state, dom.live.is_some());
        debug!(
            domid = d,
            ?fe_state,
            be_state = dom.be_state,
            ?step,
            "frontend state changed"
        );
        match step {
            Step::Nothing => Ok(()),
            Step::Close => {
                self.teardown(d);
                self.set_state(d, state::CLOSED)
            }
            Step::Reset => {
                self.teardown(d);
                xenbus::clear_backend_error(&mut self.xs, BACKEND_DOMID, d)?;
                self.set_state(d, state::INIT_WAIT)
            }
            Step::Connect if self.hold_for_twin(d) => Ok(()),
            Step::Connect => self.connect(d),
        }
    }

    fn connect(&mut self, d: u32) -> Result<(), XsError> {
        let fe = frontend_path(d);
        let limits = self.limits;
        let keys = match xenbus::read_frontend_keys(&mut self.xs, Tx::NONE, &fe, &limits) {
            Ok(k) => k,
            Err(xenbus::KeyError::Xs(e)) => return Err(e),
            Err(e) => return self.refuse(d, &e.to_string()),
        };
        if let Some(live) = self.domains.get(&d).and_then(|x| x.live.as_ref()) {
            if live.keys == keys {
                return Ok(()); // the connection we already serve
            }
        }
        self.teardown(d);
        match self.attach(d, keys) {
            Ok(live) => {
                let client = live.client;
                if let Some(dom) = self.domains.get_mut(&d) {
                    dom.live = Some(live);
                }
                xenbus::clear_backend_error(&mut self.xs, BACKEND_DOMID, d)?;
                self.set_state(d, state::CONNECTED)?;
                if let Some(suppressed) = self.guest_log(d, "connected") {
                    info!(
                        domid = d,
                        client = client.0,
                        suppressed,
                        "Xen guest connected over grants and event channel"
                    );
                }
                Ok(())
            }
            Err(msg) => self.refuse(d, &msg),
        }
    }

    /// Refuse a frontend's parameters: say why in `error` and go Closed.
    fn refuse(&mut self, d: u32, msg: &str) -> Result<(), XsError> {
        if let Some(suppressed) = self.guest_log(d, "refuse") {
            warn!(
                domid = d,
                suppressed, "refusing the guest's tmem device: {msg}"
            );
        }
        xenbus::set_backend_error(&mut self.xs, BACKEND_DOMID, d, msg)?;
        self.set_state(d, state::CLOSED)
    }

    fn set_state(&mut self, d: u32, s: u32) -> Result<(), XsError> {
        if let Some(dom) = self.domains.get_mut(&d) {
            dom.be_state = s;
        }
        xenbus::set_backend_state(&mut self.xs, BACKEND_DOMID, d, s)
    }
}
