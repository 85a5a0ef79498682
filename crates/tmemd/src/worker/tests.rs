//! In-process tests of the worker: real worker threads, guests over real memfd memory written
//! by tmem-ring's mock guest, and test-only faults in the serving code (never guest-reachable).

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tmem_abi::{cmd, status, PoolKind, RequestEntry, PAGE_SIZE};
use tmem_local::MemfdRegion;
use tmem_ring::mock::MockGuest;
use tmem_ring::{BackendRing, Layout};
use tmem_store::{Attach, ClientId, Store, StoreConfig};

use super::*;

/// Misbehaviour of the serving code, to show what the worker does about its own bugs.
#[derive(Debug, Clone)]
pub(crate) enum Fault {
    /// A bug that panics while serving this guest.
    Panic,
    /// A bug that panics inside the page store, poisoning it.
    PoisonStore,
    /// A bug that hangs the worker while the flag is set.
    Hang(Arc<AtomicBool>),
    /// A bug in the worker's own loop, outside any guest's serve step: the thread dies.
    KillWorker,
}

pub(super) fn inject_outside(g: &GuestConn) {
    if let Some(Fault::KillWorker) = g.fault {
        panic!("test fault: a bug in the worker loop");
    }
}

pub(super) fn inject(store: &Store, g: &mut GuestConn) {
    match &g.fault {
        None => {}
        Some(Fault::Panic) => panic!("test fault: a bug while serving domain {}", g.domid),
        Some(Fault::PoisonStore) => {
            store.poison_for_tests();
            panic!("test fault: a bug inside the store");
        }
        Some(Fault::KillWorker) => {}
        Some(Fault::Hang(on)) => {
            while on.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

const LAYOUT: Layout = Layout {
    ring_pages: 1,
    data_slots: 4,
};
const DEADLINE: Duration = Duration::from_secs(20);

pub(crate) fn shared() -> Arc<Shared> {
    Arc::new(Shared::new(Store::new(StoreConfig {
        mem_limit_bytes: 64 * PAGE_SIZE as u64,
        ..StoreConfig::default()
    })))
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool, seen: impl Fn() -> String) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; saw {}",
            seen()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The guest's side of a local connection served by a real worker.
pub(crate) struct TestGuest {
    mock: MockGuest<MemfdRegion>,
    client: ClientId,
    kick: OwnedFd,
    _peer: UnixStream,
    next: u64,
    seen: u32,
}

/// A connection whose ring lives in a real memfd mapped twice (guest and worker), built and
/// registered the way the daemon's handshake does, then handed to `worker`.
pub(crate) fn connect(
    shared: &Arc<Shared>,
    worker: &WorkerHandle,
    domid: u32,
    fault: Option<Fault>,
) -> TestGuest {
    let len = LAYOUT.total_bytes();
    let theirs = MemfdRegion::create("test-guest", len).unwrap();
    let ours = MemfdRegion::map(theirs.fd().try_clone_to_owned().unwrap(), len).unwrap();
    let mock = MockGuest::new(theirs, LAYOUT).unwrap();
    let ring = BackendRing::new(GuestMem::Memfd(ours), LAYOUT).unwrap();
    let kick = tmem_local::new_eventfd().unwrap();
    let (stream, peer) = UnixStream::pair().unwrap();
    let slot = shared.reserve(16).unwrap();
    let (client, _) = shared.store.attach_client(domid, 1, "test").unwrap();
    let kill = Arc::new(AtomicBool::new(false));
    let link = Link::Local {
        kick: kick.try_clone().unwrap(),
        stream,
    };
    let mut conn = GuestConn::new(client, domid, "test".into(), ring, link, kill.clone());
    conn.fault = fault;
    let handle = GuestHandle {
        kill,
        worker: 0,
        domid,
    };
    shared.register(slot, client, handle);
    worker.send(WorkerMsg::Add(Box::new(conn))).unwrap();
    TestGuest {
        mock,
        client,
        kick,
        _peer: peer,
        next: 1,
        seen: 0,
    }
}

impl TestGuest {
    /// Send one request and wait for its answer; returns the status.
    fn call(&mut self, req: RequestEntry) -> i32 {
        let mut req = req;
        req.id = self.next;
        self.next += 1;
        self.mock.push(&req);
        self.mock.publish();
        tmem_local::kick(self.kick.as_fd());
        let want = self.seen + 1;
        wait_for(
            "an answer",
            || self.mock.rsp_prod() == want,
            || format!("rsp_prod {}", self.mock.rsp_prod()),
        );
        let rsp = self.mock.response(self.seen);
        self.seen = want;
        assert_eq!(rsp.id, req.id);
        rsp.status
    }

    /// A persistent pool, a put and a get of the same page: all succeed.
    fn round_trip(&mut self) {
        let pool = self.call(RequestEntry::new_pool(
            0,
            [7, 7],
            PoolKind::PrivatePersistent.flags(),
        ));
        assert!(pool >= 0, "new pool: {pool}");
        self.mock.write_slot(0, &[0x5a; PAGE_SIZE]);
        let put = RequestEntry::page_op(0, cmd::PUT_PAGE, pool, [1, 0, 0], 3, 0);
        assert_eq!(self.call(put), status::SUCCESS);
        let get = RequestEntry::page_op(0, cmd::GET_PAGE, pool, [1, 0, 0], 3, 1);
        assert_eq!(self.call(get), status::SUCCESS);
        let mut page = [0u8; PAGE_SIZE];
        self.mock.read_slot(1, &mut page);
        assert!(page.iter().all(|&b| b == 0x5a), "wrong data back");
    }
}

fn connected(shared: &Shared) -> u32 {
    shared.connected.load(Ordering::Acquire)
}

#[test]
fn a_panic_while_serving_one_guest_disconnects_only_that_guest() {
    let shared = shared();
    let (w, join) = spawn(0, shared.clone(), Duration::from_micros(50)).unwrap();
    let mut good = connect(&shared, &w, 1, None);
    good.round_trip();
    let bad = connect(&shared, &w, 2, Some(Fault::Panic));
    wait_for(
        "the panicking guest to be disconnected",
        || !lock(&shared.guests).contains_key(&bad.client),
        || format!("{:?}", lock(&shared.guests).keys().collect::<Vec<_>>()),
    );
    assert!(w.is_alive(), "the worker died with the guest");
    assert_eq!(connected(&shared), 1, "the slot of the panicking guest");
    // It was detached, not left attached: the same instance can come back.
    assert_eq!(
        shared.store.attach_client(2, 1, "test"),
        Ok((bad.client, Attach::Reattached))
    );
    // The worker keeps serving the good guest, on the same ring.
    good.round_trip();
    assert!(lock(&shared.guests).contains_key(&good.client));
    w.send(WorkerMsg::Shutdown).unwrap();
    join.join().expect("the worker thread ended cleanly");
    assert_eq!(connected(&shared), 0);
}

#[test]
fn a_panic_that_poisons_the_store_stops_the_worker_and_shows_it() {
    let shared = shared();
    let (w, join) = spawn(0, shared.clone(), Duration::from_micros(50)).unwrap();
    let _other = connect(&shared, &w, 1, None);
    let _bad = connect(&shared, &w, 2, Some(Fault::PoisonStore));
    wait_for(
        "the worker to stop",
        || !w.is_alive(),
        || format!("connected {}", connected(&shared)),
    );
    join.join()
        .expect("the worker ended by itself, without unwinding");
    assert!(shared.store.is_poisoned());
    // Its guests were closed without touching the poisoned store, and it takes no new ones.
    assert_eq!(connected(&shared), 0);
    assert!(lock(&shared.guests).is_empty());
    assert!(w.send(WorkerMsg::Shutdown).is_err());
}

#[test]
fn a_dead_worker_is_given_no_new_guest() {
    let shared = shared();
    let (w0, j0) = spawn(0, shared.clone(), Duration::from_micros(50)).unwrap();
    let (w1, j1) = spawn(1, shared.clone(), Duration::from_micros(50)).unwrap();
    w0.send(WorkerMsg::Shutdown).unwrap();
    j0.join().unwrap();
    assert!(!w0.is_alive());
    assert!(matches!(
        w0.send(WorkerMsg::Shutdown),
        Err(WorkerGone(WorkerMsg::Shutdown))
    ));
    let workers = [w0, w1];
    assert_eq!(pick_worker(&workers), Some(1));
    workers[1].send(WorkerMsg::Shutdown).unwrap();
    j1.join().unwrap();
    assert_eq!(pick_worker(&workers), None);
    // Withdrawn on purpose: a stopped worker does not fail the watchdog's check.
    assert!(shared.health.check(Duration::from_millis(1)).is_ok());
}

#[test]
fn a_guest_whose_descriptors_cannot_be_watched_gives_its_slot_back() {
    let shared = shared();
    let (w, join) = spawn(0, shared.clone(), Duration::from_micros(50)).unwrap();
    let len = LAYOUT.total_bytes();
    let mem = MemfdRegion::create("test-guest", len).unwrap();
    let _guest = MockGuest::new(
        MemfdRegion::map(mem.fd().try_clone_to_owned().unwrap(), len).unwrap(),
        LAYOUT,
    )
    .unwrap();
    let ring = BackendRing::new(GuestMem::Memfd(mem), LAYOUT).unwrap();
    // epoll refuses a regular file: the worker cannot watch this "kick".
    let file = std::fs::File::open(std::env::current_exe().unwrap()).unwrap();
    let (stream, _peer) = UnixStream::pair().unwrap();
    let slot = shared.reserve(1).unwrap();
    let (client, _) = shared.store.attach_client(9, 1, "test").unwrap();
    let kill = Arc::new(AtomicBool::new(false));
    let link = Link::Local {
        kick: file.into(),
        stream,
    };
    let conn = GuestConn::new(client, 9, "test".into(), ring, link, kill.clone());
    let handle = GuestHandle {
        kill,
        worker: 0,
        domid: 9,
    };
    shared.register(slot, client, handle);
    assert!(shared.reserve(1).is_err(), "max_guests 1 is in use");
    w.send(WorkerMsg::Add(Box::new(conn))).unwrap();
    wait_for(
        "the slot to come back",
        || connected(&shared) == 0,
        || format!("connected {}", connected(&shared)),
    );
    assert!(lock(&shared.guests).is_empty(), "left registered");
    assert!(shared.reserve(1).is_ok(), "the slot was leaked");
    assert_eq!(
        shared.store.attach_client(9, 1, "test"),
        Ok((client, Attach::Reattached)),
        "the client was left attached"
    );
    w.send(WorkerMsg::Shutdown).unwrap();
    join.join().unwrap();
}

#[test]
fn reservations_never_exceed_max_guests_and_come_back_on_drop() {
    let shared = shared();
    let held: Vec<_> = std::thread::scope(|s| {
        let racers: Vec<_> = (0..8).map(|_| s.spawn(|| shared.reserve(3))).collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert_eq!(held.iter().filter(|r| r.is_ok()).count(), 3);
    assert_eq!(connected(&shared), 3);
    assert_eq!(shared.reserve(3).unwrap_err(), Full { max: 3 });
    drop(held);
    assert_eq!(connected(&shared), 0, "a dropped reservation kept its slot");
}

#[test]
fn a_guest_reattaching_as_its_grace_expires_keeps_its_persistent_pools() {
    let shared = shared();
    let (c, _) = shared.store.attach_client(4, 1, "test").unwrap();
    let (pool, _) = shared
        .store
        .new_pool(c, [1, 2], PoolKind::PrivatePersistent)
        .unwrap();
    shared.release(c, End::Detach);
    // The guest's handshake has attached it again but not yet registered the connection
    // when the grace period ends.
    assert_eq!(
        shared.store.attach_client(4, 1, "test"),
        Ok((c, Attach::Reattached))
    );
    shared.expire_detached(Duration::ZERO);
    assert_eq!(shared.store.client_by_domid(4), Some(c), "client destroyed");
    assert_eq!(
        shared
            .store
            .new_pool(c, [1, 2], PoolKind::PrivatePersistent),
        Ok((pool, true)),
        "persistent pool lost"
    );
}

/// A client rebuilt by recovery is detached in the store with an epoch; the daemon schedules
/// it like a lost connection: destroyed when the grace ends, unless its guest came back.
#[test]
fn recovered_clients_expire_after_the_grace_unless_their_guest_reattaches() {
    let shared = shared();
    let (gone, _) = shared.store.attach_client(5, 1, "gone").unwrap();
    let (back, _) = shared.store.attach_client(6, 1, "back").unwrap();
    // What recovery leaves: detached clients and their epochs, nothing in `detached` yet.
    let recovered = vec![
        (gone, shared.store.detach_client(gone)),
        (back, shared.store.detach_client(back)),
    ];
    shared.schedule_recovered(&recovered);
    shared.expire_detached(Duration::from_secs(3600));
    assert_eq!(
        shared.store.client_by_domid(5),
        Some(gone),
        "expired too early"
    );
    assert_eq!(
        shared.store.attach_client(6, 1, "back"),
        Ok((back, Attach::Reattached))
    );
    shared.attached_as(back, tmem_store::Identity::Xen { domid: 6 });
    shared.expire_detached(Duration::ZERO);
    assert_eq!(shared.store.client_by_domid(5), None, "not expired");
    assert_eq!(
        shared.store.client_by_domid(6),
        Some(back),
        "reattached, kept"
    );
}

/// Settings given to an identity reach its client when it attaches, before any request.
#[test]
fn a_client_gets_its_identitys_settings_when_it_attaches() {
    use crate::settings::{ClientSettings, Keeper, Settings, Who};
    let mut baseline = Settings::default();
    baseline.clients.insert(
        Who(tmem_store::Identity::Xen { domid: 8 }),
        ClientSettings {
            weight: Some(3),
            cap_pages: Some(40),
            frozen: Some(true),
            ..ClientSettings::default()
        },
    );
    let shared = Shared::with_settings(
        Store::new(StoreConfig {
            mem_limit_bytes: 64 * PAGE_SIZE as u64,
            ..StoreConfig::default()
        }),
        Keeper::in_memory(baseline),
    );
    let (c, _) = shared.store.attach_client(8, 1, "set").unwrap();
    shared.attached_as(c, tmem_store::Identity::Xen { domid: 8 });
    let (other, _) = shared.store.attach_client(9, 1, "unset").unwrap();
    shared.attached_as(other, tmem_store::Identity::Xen { domid: 9 });
    let stats = shared.store.stats();
    let get = |id: ClientId| stats.clients.iter().find(|x| x.client_id == id.0).unwrap();
    assert_eq!(
        (get(c).weight, get(c).cap_pages, get(c).frozen),
        (3, 40, true)
    );
    assert!(!get(other).frozen);
    assert_ne!(get(other).weight, 3);
}

#[test]
fn an_idle_worker_keeps_beating_and_a_hung_one_goes_silent() {
    let shared = shared();
    let (w, join) = spawn(0, shared.clone(), Duration::from_micros(50)).unwrap();
    let max_age = IDLE_BEAT * 2;
    // Idle, asleep in epoll, well past its last beat at start-up: still fresh.
    std::thread::sleep(max_age + IDLE_BEAT);
    shared
        .health
        .check(max_age)
        .expect("an idle worker went silent");
    let hang = Arc::new(AtomicBool::new(true));
    let _g = connect(&shared, &w, 3, Some(Fault::Hang(hang.clone())));
    let deadline = Instant::now() + DEADLINE;
    let err = loop {
        if let Err(e) = shared.health.check(max_age) {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "a hung worker kept looking alive"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(err.contains("worker 0"), "{err}");
    hang.store(false, Ordering::Relaxed);
    w.send(WorkerMsg::Shutdown).unwrap();
    join.join().unwrap();
}

#[test]
fn a_worker_that_dies_releases_its_guests_and_is_noticed() {
    let shared = shared();
    let (w, join) = spawn(0, shared.clone(), Duration::from_micros(50)).unwrap();
    let mut other = connect(&shared, &w, 1, None);
    other.round_trip();
    let _bad = connect(&shared, &w, 2, Some(Fault::KillWorker));
    wait_for(
        "the worker to be marked dead",
        || !w.is_alive(),
        || format!("connected {}", connected(&shared)),
    );
    assert!(join.join().is_err(), "the worker thread panicked");
    // Both of its guests were released (detached, not left attached), slots given back.
    wait_for(
        "the dead worker's guests to be released",
        || connected(&shared) == 0,
        || format!("connected {}", connected(&shared)),
    );
    assert!(lock(&shared.guests).is_empty());
    assert_eq!(
        shared.store.attach_client(1, 1, "test"),
        Ok((other.client, Attach::Reattached))
    );
    assert!(matches!(
        w.send(WorkerMsg::Shutdown),
        Err(WorkerGone(WorkerMsg::Shutdown))
    ));
    assert_eq!(pick_worker(std::slice::from_ref(&w)), None);
    // Withdrawn from the watchdog: the daemon's own check (no live worker) stops it instead.
    assert!(shared.health.check(Duration::from_millis(1)).is_ok());
}

/// Serve `ring` for `client` as a worker's serve steps do, until no request is left (for
/// tests of a ring taken over after a restart). Returns how many requests were served.
pub(crate) fn serve_until_idle(
    store: &Store,
    client: ClientId,
    domid: u32,
    ring: BackendRing<GuestMem>,
) -> usize {
    let kick = tmem_local::new_eventfd().unwrap();
    let (stream, _peer) = UnixStream::pair().unwrap();
    let link = Link::Local { kick, stream };
    let kill = Arc::new(AtomicBool::new(false));
    let mut g = GuestConn::new(client, domid, "test".into(), ring, link, kill);
    let mut n = 0;
    loop {
        match super::dispatch::serve(
            store,
            &mut g,
            &super::latency::Latency::default(),
            super::BATCH,
        )
        .unwrap()
        {
            0 => return n,
            k => n += k,
        }
    }
}
