//! The Xen backend: tmemd plays toolstack for the `tmem` PV device.
//!
//! Runs on the main thread. It watches `@introduceDomain`/`@releaseDomain`, creates the backend
//! and frontend directories of every domain the policy admits, follows each frontend's
//! `state`, and on `Initialised` validates the frontend's keys, maps its ring and data grants
//! (gntdev), binds its event channel on the chosen worker's evtchn file, attaches a store
//! client and hands a [`GuestConn`] to that worker. Frontend `Closing`/`Closed` tears the
//! connection down (persistent pools kept for a reattach); domain release destroys the client.
//! At start-up every existing backend directory is reset (`InitWait`), so connected frontends
//! of a previous tmemd redo the handshake, and those of vanished domains are removed.
//! Everything a guest wrote is parsed by `tmem_xen::xenbus` (strict, bounded).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tmem_abi::xenstore::{backend_path, frontend_path, key, state};
use tmem_store::ClientId;
use tmem_xen::wire::{parse_u32, INTRODUCE_DOMAIN, RELEASE_DOMAIN};
use tmem_xen::xenbus::{self, FrontendKeys, Limits, Step};
use tmem_xen::{BoundPort, Evtchn, Gntdev, Tx, Xs, XsError};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::ratelimit::RateLimiter;
use crate::worker::{self, lock, End, GuestConn, GuestHandle, Shared, WorkerHandle, WorkerMsg};

/// This daemon's domain (the backend always lives in dom0).
const BACKEND_DOMID: u32 = 0;
const TOKEN_INTRODUCE: &str = "tmemd-introduce";
const TOKEN_RELEASE: &str = "tmemd-release";
const TOKEN_FRONTEND: &str = "tmemd-fe-";
/// How often domains are rescanned even without a watch event (a safety net).
const RESCAN: Duration = Duration::from_secs(2);
/// How long a torn-down connection may take to leave its worker.
const TEARDOWN_WAIT: Duration = Duration::from_secs(2);

/// Which domains get a tmem device.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// `None`: every domain but dom0. Otherwise domain ids or names.
    pub domains: Option<Vec<String>>,
}

impl Policy {
    pub fn admits(&self, domid: u32, name: &str) -> bool {
        if domid == BACKEND_DOMID {
            return false;
        }
        match &self.domains {
            None => true,
            Some(list) => list
                .iter()
                .any(|e| parse_u32(e) == Some(domid) || (!name.is_empty() && e == name)),
        }
    }
}

#[derive(Debug)]
struct Live {
    client: ClientId,
    kill: Arc<AtomicBool>,
    worker: usize,
    keys: FrontendKeys,
}

#[derive(Debug)]
struct Dom {
    name: String,
    be_state: u32,
    live: Option<Live>,
}

/// The Xen side of the daemon.
#[derive(Debug)]
pub struct XenBackend {
    xs: Xs,
    /// `None` only in tests (connecting then fails cleanly).
    gntdev: Option<Arc<Gntdev>>,
    evtchns: Vec<Arc<Evtchn>>,
    shared: Arc<Shared>,
    workers: Arc<Vec<WorkerHandle>>,
    policy: Policy,
    limits: Limits,
    max_guests: u32,
    domains: BTreeMap<u32, Dom>,
    last_rescan: Instant,
    log: RateLimiter,
    failed: bool,
}

impl XenBackend {
    /// Probe for Xen and start serving; `Err` says why Xen is absent or unusable.
    pub fn start(
        config: &Config,
        shared: Arc<Shared>,
        workers: Arc<Vec<WorkerHandle>>,
    ) -> Result<XenBackend, String> {
        let xs = tmem_xen::probe(tmem_xen::Role::Backend).map_err(|e| e.to_string())?;
        let gntdev = Gntdev::open().map_err(|e| format!("cannot open gntdev: {e}"))?;
        let mut evtchns = Vec::new();
        for _ in 0..workers.len() {
            evtchns.push(Evtchn::open().map_err(|e| format!("cannot open evtchn: {e}"))?);
        }
        let mut x = XenBackend::new(xs, Some(gntdev), evtchns, config, shared, workers);
        x.init()?;
        Ok(x)
    }

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
            log: RateLimiter::new(20, Duration::from_secs(1)),
            failed: false,
        }
    }

    /// Watch domains and reconcile with what xenstore holds.
    pub fn init(&mut self) -> Result<(), String> {
        self.xs
            .watch(INTRODUCE_DOMAIN, TOKEN_INTRODUCE)
            .and_then(|()| self.xs.watch(RELEASE_DOMAIN, TOKEN_RELEASE))
            .map_err(|e| format!("cannot watch domains: {e}"))?;
        self.reconcile()
            .map_err(|e| format!("start-up reconcile failed: {e}"))
    }

    /// Where the xenstore connection goes, for the ready line.
    pub fn describe(&self) -> String {
        self.xs.describe()
    }

    /// The descriptor to poll (watch events).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.xs.as_raw_fd()
    }

    /// Domains currently served (for the ready line).
    pub fn domain_count(&self) -> usize {
        self.domains.len()
    }

    /// Readable xenstore (or queued events): handle every watch event.
    pub fn process(&mut self) {
        if self.failed {
            return;
        }
        if let Err(e) = self.process_inner() {
            self.fail(e);
        }
    }

    fn fail(&mut self, e: XsError) {
        warn!(
            "xenstore connection failed: {e}; the Xen transport stops (local transport continues)"
        );
        self.failed = true;
        let doms: Vec<u32> = self.domains.keys().copied().collect();
        for d in doms {
            self.teardown(d);
        }
    }

    fn process_inner(&mut self) -> Result<(), XsError> {
        self.xs.pump()?;
        // Our own requests may queue more events while we handle these.
        while self.xs.has_events() {
            self.handle_events()?;
        }
        Ok(())
    }

    fn handle_events(&mut self) -> Result<(), XsError> {
        let mut rescan = false;
        let mut frontends = Vec::new();
        while let Some(ev) = self.xs.take_event() {
            if ev.token == TOKEN_INTRODUCE || ev.token == TOKEN_RELEASE {
                rescan = true;
            } else if let Some(d) = ev.token.strip_prefix(TOKEN_FRONTEND) {
                if let Some(d) = parse_u32(d) {
                    if !frontends.contains(&d) {
                        frontends.push(d);
                    }
                }
            }
        }
        if rescan {
            self.rescan()?;
        }
        for d in frontends {
            if self.domains.contains_key(&d) {
                self.frontend_changed(d)?;
            }
        }
        Ok(())
    }

    /// Periodic work: connections a worker dropped (ring violation, admin destroy), rescan.
    pub fn housekeeping(&mut self) {
        if self.failed {
            return;
        }
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
            if let Some(dom) = self.domains.get_mut(&d) {
                dom.live = None;
            }
            info!(
                domid = d,
                "Xen guest connection dropped by tmemd; closing the device"
            );
            let r = self
                .set_error(d, "connection closed by tmemd")
                .and_then(|()| self.set_state(d, state::CLOSED));
            if let Err(e) = r {
                return self.fail(e);
            }
        }
        if self.last_rescan.elapsed() >= RESCAN {
            if let Err(e) = self.rescan() {
                self.fail(e);
            }
        }
        self.process();
    }

    /// Orderly stop: close every connection and tell the frontends (`Closed`), so they drop
    /// to fake handles and wait for the next tmemd.
    pub fn shutdown(&mut self) {
        let doms: Vec<u32> = self.domains.keys().copied().collect();
        for d in doms {
            self.teardown(d);
            if !self.failed {
                let _ = self.set_error(d, "tmemd stopped");
                let _ = self.set_state(d, state::CLOSED);
            }
        }
    }

    // ---- domains ---------------------------------------------------------------------------

    /// Start-up: drop backend directories of vanished domains, then admit live ones (which
    /// resets their directories to InitWait so old connections are redone).
    fn reconcile(&mut self) -> Result<(), XsError> {
        let root = format!(
            "/local/domain/{BACKEND_DOMID}/backend/{}",
            tmem_abi::xenstore::DEVICE_TYPE
        );
        if let Some(old) = self.xs.directory(Tx::NONE, &root)? {
            for d in old {
                let Some(domid) = parse_u32(&d) else { continue };
                if !self.domain_alive(domid)? {
                    info!(domid, "removing the tmem device of a domain that is gone");
                    self.xs.rm(Tx::NONE, &format!("{root}/{d}"))?;
                }
            }
        }
        self.rescan()
    }

    fn domain_alive(&mut self, domid: u32) -> Result<bool, XsError> {
        if self
            .xs
            .read(Tx::NONE, &format!("/local/domain/{domid}"))?
            .is_none()
        {
            return Ok(false);
        }
        self.xs.is_domain_introduced(domid)
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
        for d in listed {
            if d == BACKEND_DOMID || self.domains.contains_key(&d) {
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
            if !self.xs.is_domain_introduced(d)? {
                continue;
            }
            self.admit(d, name)?;
        }
        Ok(())
    }

    /// Create both directories with their permissions, advertise, go InitWait, watch.
    fn admit(&mut self, d: u32, name: String) -> Result<(), XsError> {
        let be = backend_path(BACKEND_DOMID, d);
        let fe = frontend_path(d);
        let limits = self.limits;
        self.xs.transaction(|xs, tx| {
            xs.rm(tx, &be)?;
            xs.mkdir(tx, &be)?;
            let bperms = xenbus::backend_perms(BACKEND_DOMID, d);
            // The guest may read its backend directory and the one above (to watch it).
            let parent = &be[..be.rfind('/').expect("absolute path")];
            xs.set_perms(tx, parent, &bperms)?;
            xs.set_perms(tx, &be, &bperms)?;
            let w =
                |xs: &mut Xs, k: &str, v: String| xs.write(tx, &format!("{be}/{k}"), v.as_bytes());
            w(xs, key::FRONTEND, fe.clone())?;
            w(xs, key::FRONTEND_ID, d.to_string())?;
            w(
                xs,
                key::PROTOCOL_VERSION,
                xenbus::PROTOCOL_VERSION.to_string(),
            )?;
            w(
                xs,
                key::MAX_RING_PAGE_ORDER,
                limits.max_ring_page_order.to_string(),
            )?;
            w(xs, key::MAX_DATA_PAGES, limits.max_data_pages.to_string())?;
            w(xs, key::STATE, state::INIT_WAIT.to_string())?;
            if xs.read(tx, &fe)?.is_none() {
                xs.mkdir(tx, &fe)?;
            }
            let fperms = xenbus::frontend_perms(BACKEND_DOMID, d);
            let fparent = &fe[..fe.rfind('/').expect("absolute path")];
            xs.set_perms(tx, fparent, &fperms)?;
            xs.set_perms(tx, &fe, &fperms)?;
            xs.write(tx, &format!("{fe}/{}", key::BACKEND), be.as_bytes())?;
            xs.write(
                tx,
                &format!("{fe}/{}", key::BACKEND_ID),
                BACKEND_DOMID.to_string().as_bytes(),
            )?;
            if xs.read(tx, &format!("{fe}/{}", key::STATE))?.is_none() {
                xs.write(
                    tx,
                    &format!("{fe}/{}", key::STATE),
                    state::INITIALISING.to_string().as_bytes(),
                )?;
            }
            Ok(())
        })?;
        info!(domid = d, name = %name, "tmem device offered to domain (InitWait)");
        self.domains.insert(
            d,
            Dom {
                name,
                be_state: state::INIT_WAIT,
                live: None,
            },
        );
        self.xs.watch(
            &format!("{fe}/{}", key::STATE),
            &format!("{TOKEN_FRONTEND}{d}"),
        )
    }

    /// The domain is gone: close its connection, destroy its pools, remove the backend.
    fn release(&mut self, d: u32) -> Result<(), XsError> {
        self.teardown(d);
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
        self.domains.remove(&d);
        let fe = frontend_path(d);
        self.xs.unwatch(
            &format!("{fe}/{}", key::STATE),
            &format!("{TOKEN_FRONTEND}{d}"),
        )?;
        let be = backend_path(BACKEND_DOMID, d);
        // `.../backend/tmem/<domid>/0`: remove the `<domid>` level too.
        self.xs
            .rm(Tx::NONE, &be[..be.rfind('/').expect("absolute path")])?;
        info!(domid = d, "domain gone; tmem device removed");
        Ok(())
    }

    fn frontend_changed(&mut self, d: u32) -> Result<(), XsError> {
        if !self.domain_alive(d)? {
            return self.release(d);
        }
        let fe = frontend_path(d);
        let raw = self.xs.read(Tx::NONE, &format!("{fe}/{}", key::STATE))?;
        let fe_state = xenbus::parse_state(raw.as_deref());
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
                self.xs.rm(
                    Tx::NONE,
                    &format!("{}/error", backend_path(BACKEND_DOMID, d)),
                )?;
                self.set_state(d, state::INIT_WAIT)
            }
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
                self.xs.rm(
                    Tx::NONE,
                    &format!("{}/error", backend_path(BACKEND_DOMID, d)),
                )?;
                self.set_state(d, state::CONNECTED)?;
                info!(
                    domid = d,
                    client = client.0,
                    "Xen guest connected over grants and event channel"
                );
                Ok(())
            }
            Err(msg) => self.refuse(d, &msg),
        }
    }

    /// Refuse a frontend's parameters: say why in `error` and go Closed.
    fn refuse(&mut self, d: u32, msg: &str) -> Result<(), XsError> {
        if let Some(suppressed) = self.log.allow() {
            warn!(
                domid = d,
                suppressed, "refusing the guest's tmem device: {msg}"
            );
        }
        self.set_error(d, msg)?;
        self.set_state(d, state::CLOSED)
    }

    /// Map, bind, attach and hand to a worker. On error everything taken is released.
    fn attach(&mut self, d: u32, keys: FrontendKeys) -> Result<Live, String> {
        let slot = self
            .shared
            .reserve(self.max_guests)
            .map_err(|full| full.to_string())?;
        let gntdev = self
            .gntdev
            .clone()
            .ok_or_else(|| "the grant device is not available".to_string())?;
        let mut refs = keys.ring_refs.clone();
        if keys.data_pages > 0 {
            let dir = gntdev
                .map(d, &keys.data_dir_refs, false)
                .map_err(|e| format!("cannot map the data directory grants: {e}"))?;
            let bytes = dir.copy_out();
            drop(dir);
            refs.extend(
                xenbus::parse_data_dir(&bytes, keys.data_pages).map_err(|e| e.to_string())?,
            );
        }
        let mem = gntdev
            .map(d, &refs, true)
            .map_err(|e| format!("cannot map the ring and data grants: {e}"))?;
        let layout = tmem_ring::Layout {
            ring_pages: keys.ring_pages(),
            data_slots: keys.data_pages,
        };
        let worker = worker::pick_worker(&self.workers)
            .ok_or_else(|| "no worker thread is left to serve the guest".to_string())?;
        let evtchn = self.evtchns[worker].clone();
        let local = evtchn
            .bind_interdomain(d, keys.event_channel)
            .map_err(|e| format!("cannot bind event channel {}: {e}", keys.event_channel))?;
        let port = BoundPort {
            evtchn,
            port: local,
        };
        let name = self
            .domains
            .get(&d)
            .map(|x| x.name.clone())
            .unwrap_or_default();
        let (client, attach) = self
            .shared
            .store
            .attach_client(d, keys.instance, &name)
            .map_err(|e| format!("cannot attach a store client: {e}"))?;
        self.shared.attached(client);
        let kill = Arc::new(AtomicBool::new(false));
        let conn = match GuestConn::from_xen(client, d, name, mem, layout, port, kill.clone()) {
            Ok(c) => c,
            Err(e) => {
                self.shared.release(client, End::Detach);
                return Err(format!("ring unusable: {e}"));
            }
        };
        debug!(domid = d, ?attach, worker, "handing Xen guest to worker");
        let handle = GuestHandle {
            kill: kill.clone(),
            worker,
            domid: d,
        };
        self.shared.register(slot, client, handle);
        if self.workers[worker]
            .send(WorkerMsg::Add(Box::new(conn)))
            .is_err()
        {
            self.shared.release(client, End::Detach);
            return Err("the guest's worker thread has ended".into());
        }
        Ok(Live {
            client,
            kill,
            worker,
            keys,
        })
    }

    /// Stop serving a connection and wait until its worker has let go of the ring (so no
    /// request of the old ring can run after a new connection replays invalidations), then
    /// detach the client: persistent pools stay for a reattach within the grace period.
    fn teardown(&mut self, d: u32) {
        let Some(live) = self.domains.get_mut(&d).and_then(|x| x.live.take()) else {
            return;
        };
        live.kill.store(true, Ordering::Relaxed);
        if let Some(w) = self.workers.get(live.worker) {
            let _ = w.waker.wake();
        }
        let deadline = Instant::now() + TEARDOWN_WAIT;
        while lock(&self.shared.guests).contains_key(&live.client) {
            if Instant::now() >= deadline {
                warn!(domid = d, "worker did not release the guest in time");
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.shared.release(live.client, End::Detach);
        info!(
            domid = d,
            client = live.client.0,
            "Xen guest disconnected; grants unmapped"
        );
    }

    fn set_state(&mut self, d: u32, s: u32) -> Result<(), XsError> {
        if let Some(dom) = self.domains.get_mut(&d) {
            dom.be_state = s;
        }
        let p = format!("{}/{}", backend_path(BACKEND_DOMID, d), key::STATE);
        self.xs.write(Tx::NONE, &p, s.to_string().as_bytes())
    }

    fn set_error(&mut self, d: u32, msg: &str) -> Result<(), XsError> {
        let p = format!("{}/error", backend_path(BACKEND_DOMID, d));
        let msg: String = msg.chars().take(200).collect();
        self.xs.write(Tx::NONE, &p, msg.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Args, FileConfig};
    use tmem_xen::fake::FakeXenstore;

    fn until(x: &mut XenBackend, what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            std::thread::sleep(Duration::from_millis(5));
            x.process();
        }
    }

    /// The backend's xenstore side against a fake xenstored: reconcile, offer, refusal of
    /// hostile keys, reset, a connect that fails cleanly (no grant device here), release.
    #[test]
    fn backend_lifecycle_against_a_fake_xenstored() {
        let fx = FakeXenstore::new();
        fx.introduce(0, "Domain-0");
        // Left over by a previous tmemd: a domain that is gone, and one still connected.
        fx.write("/local/domain/0/backend/tmem/9/0/state", "4");
        fx.introduce(3, "web");
        let fe3 = frontend_path(3);
        let be3 = backend_path(0, 3);
        fx.write(&format!("{fe3}/state"), "4");
        fx.write(&format!("{be3}/state"), "4");

        let config = Config::merge(Args::default(), FileConfig::default()).unwrap();
        let shared = Arc::new(Shared::new(tmem_store::Store::new(config.store.clone())));
        let (w, join) = crate::worker::spawn(0, shared.clone(), Duration::from_micros(50)).unwrap();
        let workers = Arc::new(vec![w]);
        let (xs, _srv) = fx.connect();
        let mut x = XenBackend::new(
            xs,
            None,
            Vec::new(),
            &config,
            shared.clone(),
            workers.clone(),
        );
        x.init().unwrap();

        // Reconcile: the dead domain's backend is gone; the live one reset to InitWait with
        // both directories' permissions, limits and links; the frontend's own state untouched.
        assert!(!fx.exists("/local/domain/0/backend/tmem/9"));
        let st = |p: &str| fx.read(&format!("{p}/state"));
        assert_eq!(st(&be3).as_deref(), Some("2"));
        assert_eq!(fx.perms(&be3).unwrap(), ["n0", "r3"]);
        assert_eq!(
            fx.perms("/local/domain/0/backend/tmem/3").unwrap(),
            ["n0", "r3"]
        );
        assert_eq!(fx.perms(&fe3).unwrap(), ["n3", "r0"]);
        assert_eq!(
            fx.read(&format!("{fe3}/backend")).as_deref(),
            Some(be3.as_str())
        );
        assert_eq!(
            fx.read(&format!("{be3}/protocol-version")).as_deref(),
            Some("1")
        );
        assert_eq!(
            fx.read(&format!("{be3}/max-ring-page-order")).as_deref(),
            Some("4")
        );
        assert_eq!(
            fx.read(&format!("{be3}/max-data-pages")).as_deref(),
            Some("1024")
        );
        assert_eq!(fx.read(&format!("{be3}/frontend-id")).as_deref(), Some("3"));
        assert_eq!(st(&fe3).as_deref(), Some("4"));
        assert!(
            !fx.exists("/local/domain/0/backend/tmem/0"),
            "dom0 gets no device"
        );

        // A domain introduced later is offered the device too, frontend state Initialising.
        fx.introduce(4, "db");
        let be4 = backend_path(0, 4);
        until(&mut x, "domain 4 offered", || {
            st(&be4).as_deref() == Some("2")
        });
        assert_eq!(st(&frontend_path(4)).as_deref(), Some("1"));

        // Hostile keys are refused with a reason, and the backend waits for a reset.
        for (k, v) in [
            ("ring-page-order", "9"),
            ("ring-ref0", "8"),
            ("data-pages", "1"),
            ("data-dir-ref0", "9"),
            ("event-channel", "5"),
            ("instance", "42"),
        ] {
            fx.write(&format!("{fe3}/{k}"), v);
        }
        fx.write(&format!("{fe3}/state"), "3");
        until(&mut x, "refusal", || st(&be3).as_deref() == Some("6"));
        let err = fx.read(&format!("{be3}/error")).unwrap();
        assert!(err.contains("max-ring-page-order"), "{err}");
        // Still Initialised with a Closed backend: nothing happens until the guest resets.
        fx.write(&format!("{fe3}/ring-page-order"), "0");
        fx.write(&format!("{fe3}/state"), "3");
        x.process();
        assert_eq!(st(&be3).as_deref(), Some("6"));
        fx.write(&format!("{fe3}/state"), "6");
        until(&mut x, "reset to InitWait", || {
            st(&be3).as_deref() == Some("2")
        });
        assert!(!fx.exists(&format!("{be3}/error")));
        // Good keys, but this host has no grant device: refused cleanly, nothing attached.
        fx.write(&format!("{fe3}/state"), "3");
        until(&mut x, "connect refused", || {
            st(&be3).as_deref() == Some("6")
        });
        assert!(fx
            .read(&format!("{be3}/error"))
            .unwrap()
            .contains("grant device"));
        assert_eq!(shared.connected.load(Ordering::Relaxed), 0);

        // Release: the client and all its pools go, and the backend directory.
        let (c, _) = shared.store.attach_client(3, 42, "web").unwrap();
        fx.release(3);
        until(&mut x, "domain 3 released", || {
            !fx.exists("/local/domain/0/backend/tmem/3")
        });
        assert_eq!(
            shared.store.client_by_domid(3),
            None,
            "client {c:?} destroyed"
        );
        assert_eq!(st(&be4).as_deref(), Some("2"), "other domains untouched");

        x.shutdown();
        assert_eq!(st(&be4).as_deref(), Some("6"));
        assert_eq!(
            fx.read(&format!("{be4}/error")).as_deref(),
            Some("tmemd stopped")
        );
        workers[0].send(WorkerMsg::Shutdown).unwrap();
        join.join().unwrap();
    }

    #[test]
    fn policy_defaults_to_every_guest_and_matches_ids_or_names() {
        let all = Policy::default();
        assert!(!all.admits(0, "Domain-0"));
        assert!(all.admits(1, "a"));
        let some = Policy {
            domains: Some(vec!["3".into(), "web".into()]),
        };
        assert!(some.admits(3, "x"));
        assert!(some.admits(9, "web"));
        assert!(!some.admits(4, "db"));
        assert!(!some.admits(4, ""));
        assert!(!some.admits(0, "web"));
    }
}
