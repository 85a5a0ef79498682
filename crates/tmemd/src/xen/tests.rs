//! The Xen backend against the fake xenstored: the device lifecycle, a guest flooding its
//! keys while another domain connects, and xenstored going away and coming back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tmem_abi::xenstore::{backend_path, frontend_path};
use tmem_abi::{cmd, status, Oid, Page, PageKey, PoolKind, RequestEntry, PAGE_SIZE};
use tmem_ring::mock::MockGuest;
use tmem_ring::BackendRing;
use tmem_xen::fake::FakeXenstore;
use tmem_xen::wire::ty;
use tmem_xen::Xs;

use super::*;
use crate::config::{Args, Config, FileConfig};
use crate::health::Health;
use crate::worker::{GuestMem, Shared, WorkerHandle, WorkerMsg};

/// A store and one worker, as the daemon has them.
struct Daemon {
    config: Config,
    shared: Arc<Shared>,
    workers: Arc<Vec<WorkerHandle>>,
    join: JoinHandle<()>,
}

impl Daemon {
    fn new() -> Daemon {
        let config = Config::merge(Args::default(), FileConfig::default()).unwrap();
        let store = tmem_store::Store::new(config.store.clone());
        Daemon::with_store(config, store)
    }

    fn with_store(config: Config, store: tmem_store::Store) -> Daemon {
        let shared = Arc::new(Shared::new(store));
        let (w, join) = crate::worker::spawn(0, shared.clone(), Duration::from_micros(50)).unwrap();
        Daemon {
            config,
            shared,
            workers: Arc::new(vec![w]),
            join,
        }
    }

    fn backend(&self, xs: Xs) -> XenBackend {
        XenBackend::new(
            xs,
            None,
            Vec::new(),
            &self.config,
            self.shared.clone(),
            self.workers.clone(),
        )
    }

    fn stop(self) {
        let _ = self.workers[0].send(WorkerMsg::Shutdown);
        self.join.join().unwrap();
    }
}

fn until(x: &mut XenBackend, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
        x.round().unwrap();
    }
}

/// Wait (without driving anything: the backend runs on its own thread) until `cond` holds;
/// returns how long it took, or panics saying what was seen.
fn wait_for(
    what: &str,
    limit: Duration,
    mut cond: impl FnMut() -> bool,
    seen: impl Fn() -> String,
) -> Duration {
    let t = Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < limit,
            "timed out after {limit:?} waiting for: {what}; seen: {}",
            seen()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    t.elapsed()
}

/// Wait until exactly `n` watches are registered (a device's state is written before its
/// watch is set up, so the count can lag it).
fn watches(fx: &FakeXenstore, n: usize) {
    wait_for(
        &format!("{n} watches"),
        Duration::from_secs(10),
        || fx.watch_count() == n,
        || format!("{} watches", fx.watch_count()),
    );
}

fn state_of(fx: &FakeXenstore, dir: &str) -> Option<String> {
    fx.read(&format!("{dir}/state"))
}

/// A frontend's keys as a well-behaved guest publishes them (one ring page, no data pages).
fn publish_keys(fx: &FakeXenstore, domid: u32) {
    let fe = frontend_path(domid);
    for (k, v) in [
        ("ring-page-order", "0"),
        ("ring-ref0", "8"),
        ("data-pages", "0"),
        ("event-channel", "5"),
        ("instance", "42"),
    ] {
        fx.write(&format!("{fe}/{k}"), v);
    }
    fx.write(&format!("{fe}/state"), "3");
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

    let d = Daemon::new();
    let (xs, _srv) = fx.connect();
    let mut x = d.backend(xs);
    x.init().unwrap();
    let shared = d.shared.clone();

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
    x.round().unwrap();
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

    x.shutdown(true);
    assert_eq!(st(&be4).as_deref(), Some("6"));
    assert_eq!(
        fx.read(&format!("{be4}/error")).as_deref(),
        Some("tmemd stopped")
    );
    d.stop();
}

/// A domain rewriting its frontend state in a loop gets a bounded number of looks, while a
/// domain introduced during the flood is offered the device and its connect handled within a
/// deadline, and the control plane's heartbeat stays fresh throughout.
#[test]
fn a_flooding_domain_is_paced_while_another_domain_connects() {
    let fx = FakeXenstore::new();
    fx.introduce(0, "Domain-0");
    fx.introduce(5, "flooder");
    let d = Daemon::new();
    let (xs, _srv) = fx.connect();
    let mut x = d.backend(xs);
    x.init().unwrap();
    let health = Health::default();
    let hb = health.register("xen control plane");
    let fx2 = fx.clone();
    let plane = spawn(x, Box::new(move || fx2.try_connect().map(|(xs, _)| xs)), hb).unwrap();
    let (be5, fe5, be6) = (backend_path(0, 5), frontend_path(5), backend_path(0, 6));
    let fe5_state = format!("{fe5}/state");
    wait_for(
        "domain 5 offered",
        Duration::from_secs(10),
        || state_of(&fx, &be5).as_deref() == Some("2"),
        || format!("{:?}", state_of(&fx, &be5)),
    );

    let reads_before = fx
        .log()
        .iter()
        .filter(|(t, p)| *t == ty::READ && *p == fe5_state)
        .count();
    // The flood: Initialised / Initialising alternately, each a connect attempt or a reset.
    let stop = Arc::new(AtomicBool::new(false));
    let flooder = {
        let (fx, stop, p) = (fx.clone(), stop.clone(), fe5_state.clone());
        std::thread::spawn(move || {
            let mut writes = 0u64;
            while !stop.load(Ordering::Relaxed) {
                fx.write(&p, if writes.is_multiple_of(2) { "3" } else { "1" });
                writes += 1;
                // About 20 000 writes a second at most: hundreds of times what a guest
                // needs, and about what one xenstored serves; a test thread writing into the
                // fake without pause would only measure how busy this machine is.
                if writes.is_multiple_of(20) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            writes
        })
    };
    let reads_of_fe5 = || {
        fx.log()
            .iter()
            .filter(|(t, p)| *t == ty::READ && *p == fe5_state)
            .count()
    };
    // Let the flood get going, then introduce a good domain and connect it.
    std::thread::sleep(Duration::from_millis(300));
    let flood_start = Instant::now();
    fx.introduce(6, "good");
    let offered = wait_for(
        "domain 6 offered during the flood",
        Duration::from_secs(3),
        || state_of(&fx, &be6).as_deref() == Some("2"),
        || format!("be6 state {:?}", state_of(&fx, &be6)),
    );
    publish_keys(&fx, 6);
    // No grant device in this test: a handled connect is a clean refusal with that reason.
    let handled = wait_for(
        "domain 6's connect handled during the flood",
        Duration::from_secs(5),
        || state_of(&fx, &be6).as_deref() == Some("6"),
        || {
            format!(
                "be6 state {:?}, error {:?}",
                state_of(&fx, &be6),
                fx.read(&format!("{be6}/error"))
            )
        },
    );
    assert!(fx
        .read(&format!("{be6}/error"))
        .unwrap()
        .contains("grant device"));
    // Keep flooding for a while and watch the heartbeat.
    while flood_start.elapsed() < Duration::from_secs(3) {
        if let Err(stale) = health.check(Duration::from_millis(1500)) {
            panic!("heartbeat went stale during the flood: {stale}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let flood_time = flood_start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let writes = flooder.join().unwrap();
    let looks = reads_of_fe5() - reads_before;
    eprintln!(
        "flood: {writes} writes by domain 5, {looks} looks at its state in {flood_time:?}; \
         domain 6 offered after {offered:?}, connect handled after {handled:?}"
    );
    assert!(
        writes > 1000,
        "the flood was too weak to show anything: {writes} writes"
    );
    // Pacing: a burst of 16, then delays doubling from 100 ms: ~25 looks in 3.3 s at most.
    // Unpaced, the same flood got hundreds of looks and the good domain waited ~5 s.
    assert!(
        looks <= 30,
        "domain 5 was looked at {looks} times for {writes} writes in {flood_time:?}"
    );
    plane.stop().unwrap();
    d.stop();
}

/// xenstored goes away (every connection closed, new ones refused) and comes back: the
/// backend reconnects with backoff, registers its watches again (once each), and serves what
/// happened meanwhile: a domain introduced while it was gone is offered the device, and a
/// frontend that changed state while it was gone is handled.
#[test]
fn the_backend_reconnects_after_xenstored_goes_away_and_comes_back() {
    let fx = FakeXenstore::new();
    fx.introduce(0, "Domain-0");
    fx.introduce(3, "web");
    let d = Daemon::new();
    let (xs, _srv) = fx.connect();
    let mut x = d.backend(xs);
    x.init().unwrap();
    let fx2 = fx.clone();
    let health = Health::default();
    let plane = spawn(
        x,
        Box::new(move || fx2.try_connect().map(|(xs, _)| xs)),
        health.register("xen control plane"),
    )
    .unwrap();
    let (be3, be7) = (backend_path(0, 3), backend_path(0, 7));
    wait_for(
        "domain 3 offered",
        Duration::from_secs(10),
        || state_of(&fx, &be3).as_deref() == Some("2"),
        || format!("{:?}", state_of(&fx, &be3)),
    );
    // introduce, release, domain 3's frontend state and shutdown node.
    watches(&fx, 4);

    fx.stop();
    wait_for(
        "the fake to drop its connections",
        Duration::from_secs(10),
        || fx.watch_count() == 0,
        || format!("{} watches", fx.watch_count()),
    );
    // While xenstored is away: a domain appears, another publishes its keys.
    fx.introduce(7, "late");
    publish_keys(&fx, 3);
    // Stay away long enough for a few failed tries (backoff grows past 200 ms).
    std::thread::sleep(Duration::from_millis(700));
    assert!(!fx.exists(&be7));
    assert!(
        health.check(Duration::from_millis(1500)).is_ok(),
        "heartbeat while xenstored is away"
    );
    fx.start();

    let offered = wait_for(
        "domain 7 offered after the reconnect",
        Duration::from_secs(10),
        || state_of(&fx, &be7).as_deref() == Some("2"),
        || format!("be7 {:?}", state_of(&fx, &be7)),
    );
    wait_for(
        "domain 3's connect handled after the reconnect",
        Duration::from_secs(10),
        || state_of(&fx, &be3).as_deref() == Some("6"),
        || format!("be3 {:?}", state_of(&fx, &be3)),
    );
    assert!(fx
        .read(&format!("{be3}/error"))
        .unwrap()
        .contains("grant device"));
    // Each registered again exactly once (with a duplicate the count would not settle at 6):
    // introduce, release, and each domain's frontend state and shutdown node.
    watches(&fx, 6);
    eprintln!("reconnected and offered domain 7 {offered:?} after xenstored came back");

    // Still fully working: a release is seen.
    fx.release(7);
    wait_for(
        "domain 7 released",
        Duration::from_secs(10),
        || !fx.exists("/local/domain/0/backend/tmem/7"),
        || "backend dir still there".into(),
    );
    plane.stop().unwrap();
    assert_eq!(state_of(&fx, &be3).as_deref(), Some("6"));
    assert_eq!(
        fx.read(&format!("{be3}/error")).as_deref(),
        Some("tmemd stopped")
    );
    d.stop();
}

/// One round takes a bounded batch of watch events, however many are queued, and acts on the
/// flooding domain at most once. Events the full queue dropped (here another domain's
/// handshake, queued first) are not lost for good: every domain is looked at again.
#[test]
fn one_round_takes_a_bounded_batch_and_recovers_dropped_events() {
    let fx = FakeXenstore::new();
    fx.introduce(0, "Domain-0");
    fx.introduce(5, "flooder");
    fx.introduce(6, "good");
    let d = Daemon::new();
    let (xs, _srv) = fx.connect();
    let mut x = d.backend(xs);
    x.init().unwrap();
    let be6 = backend_path(0, 6);
    publish_keys(&fx, 6);
    let fe5_state = format!("{}/state", frontend_path(5));
    for i in 0..8000u32 {
        fx.write(&fe5_state, if i.is_multiple_of(2) { "3" } else { "1" });
    }
    let t = Instant::now();
    while x.xs.queued_events() < tmem_xen::xs::MAX_QUEUED_EVENTS {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "only {} events arrived",
            x.xs.queued_events()
        );
        std::thread::sleep(Duration::from_millis(5));
        x.xs.pump().unwrap();
    }
    let before = x.xs.queued_events();
    let reads = || {
        fx.log()
            .iter()
            .filter(|(t, p)| *t == ty::READ && *p == fe5_state)
            .count()
    };
    let reads_before = reads();
    assert_eq!(state_of(&fx, &be6).as_deref(), Some("2"));
    x.round().unwrap();
    let after = x.xs.queued_events();
    assert!(
        after + backend::MAX_EVENTS_PER_ROUND >= before && after > 0,
        "{before} events queued, {after} left after one round"
    );
    assert!(
        reads() - reads_before <= 1,
        "the flooder was looked at once"
    );
    assert_eq!(
        state_of(&fx, &be6).as_deref(),
        Some("6"),
        "domain 6's handshake, whose event was dropped, was handled"
    );
    d.stop();
}

/// xenstore failing during start-up does not disable the Xen transport: the thread starts
/// by reconnecting, then does the start-up reconcile.
#[test]
fn a_xenstore_failure_at_start_up_is_retried_on_the_thread() {
    let fx = FakeXenstore::new();
    fx.introduce(0, "Domain-0");
    fx.introduce(3, "web");
    fx.write("/local/domain/0/backend/tmem/9/0/state", "4"); // a domain that is gone
    let d = Daemon::new();
    let (xs, _srv) = fx.connect();
    fx.stop();
    let mut x = d.backend(xs);
    let e = x.init().unwrap_err();
    assert!(e.contains("cannot watch domains"), "{e}");
    let fx2 = fx.clone();
    let health = Health::default();
    let plane = spawn_inner(
        x,
        Box::new(move || fx2.try_connect().map(|(xs, _)| xs)),
        health.register("xen control plane"),
        false,
    )
    .unwrap();
    fx.start();
    let be3 = backend_path(0, 3);
    wait_for(
        "domain 3 offered once xenstore is reachable",
        Duration::from_secs(10),
        || state_of(&fx, &be3).as_deref() == Some("2"),
        || format!("{:?}", state_of(&fx, &be3)),
    );
    assert!(!fx.exists("/local/domain/0/backend/tmem/9"), "reconciled");
    watches(&fx, 4);
    plane.stop().unwrap();
    d.stop();
}

// ---- resuming a frontend a dead tmemd left connected -----------------------------------------

const RLAYOUT: tmem_ring::Layout = tmem_ring::Layout {
    ring_pages: 1,
    data_slots: 4,
};
const UUID: [u64; 2] = [0x7a, 0x7b];

fn durable_store() -> tmem_store::Store {
    let cfg = tmem_store::StoreConfig {
        mem_limit_bytes: 256 * PAGE_SIZE as u64,
        default_persistent_share_percent: 0,
        ..tmem_store::StoreConfig::default()
    };
    let file = tmem_store::PageFile::memfd("xen-resume").unwrap();
    tmem_store::Store::open_durable(cfg, file).unwrap().0
}

/// The store as a tmemd killed now leaves it and the next one opens it.
fn restart(s: tmem_store::Store) -> tmem_store::Store {
    let fd = s.page_file().unwrap().try_clone_fd().unwrap();
    let cfg = s.config();
    drop(s);
    let file = tmem_store::PageFile::from_fd(fd, "xen-resume");
    tmem_store::Store::open_durable(cfg, file).unwrap().0
}

/// The guest's ring pages (a memfd standing in for its grants) and a way to map them again,
/// as each tmemd maps the grants for itself.
struct GuestPages {
    theirs: tmem_local::MemfdRegion,
}

impl GuestPages {
    fn new() -> (GuestPages, MockGuest<tmem_local::MemfdRegion>) {
        let len = RLAYOUT.total_bytes();
        let theirs = tmem_local::MemfdRegion::create("xen-guest", len).unwrap();
        let again = tmem_local::MemfdRegion::map(theirs.fd().try_clone_to_owned().unwrap(), len);
        let mock = MockGuest::new(again.unwrap(), RLAYOUT).unwrap();
        (GuestPages { theirs }, mock)
    }
    fn map(&self) -> GuestMem {
        let fd = self.theirs.fd().try_clone_to_owned().unwrap();
        GuestMem::Memfd(tmem_local::MemfdRegion::map(fd, RLAYOUT.total_bytes()).unwrap())
    }
}

fn page_of(b: u8) -> Page {
    let mut p = [b; PAGE_SIZE];
    p[0] = !b;
    p
}

fn op(id: u64, cmd: u32, pool: u32, index: u32, slot: u32) -> RequestEntry {
    RequestEntry::page_op(id, cmd, pool as i32, [1, 2, 3], index, slot)
}

/// tmemd is killed while a guest's requests are in every state: answered and published,
/// carried out and answered but not published, consumed but not carried out, not consumed.
/// The next tmemd takes the ring over: the guest gets every answer, each request takes
/// effect once, the persistent page put before the kill is read back byte for byte, and
/// every pool keeps its id.
#[test]
fn a_ring_taken_over_after_a_kill_answers_every_request_in_flight() {
    let s1 = durable_store();
    let (c, _) = s1.attach_client(3, 42, "web").unwrap();
    let (pp, _) = s1.new_pool(c, UUID, PoolKind::PrivatePersistent).unwrap();
    let (ep, _) = s1.new_pool(c, [0, 0], PoolKind::PrivateEphemeral).unwrap();
    let (pages, mut g) = GuestPages::new();
    let (a, b) = (page_of(0xa1), page_of(0xb2));
    g.write_slot(0, &a);
    g.write_slot(1, &b);
    g.push(&op(1, cmd::PUT_PAGE, pp, 0, 0));
    g.push(&op(2, cmd::PUT_PAGE, pp, 1, 1));
    g.push(&op(3, cmd::GET_PAGE, pp, 0, 2));
    g.push(&op(4, cmd::FLUSH_PAGE, pp, 1, 0));
    g.publish();

    // The first tmemd: carries out 1 and 2, publishes only 1's answer, consumed 3 and 4.
    let mut b1 = BackendRing::new(pages.map(), RLAYOUT).unwrap();
    let mut got = Vec::new();
    b1.next_batch(8, &mut got).unwrap();
    assert_eq!(got.len(), 4);
    let key = |i| PageKey {
        oid: Oid([1, 2, 3]),
        index: i,
    };
    s1.put(c, pp, key(0), &b1.slot_source(0)).unwrap();
    b1.push_response(1, status::SUCCESS, 0).unwrap();
    b1.publish();
    s1.put(c, pp, key(1), &b1.slot_source(1)).unwrap();
    b1.push_response(2, status::SUCCESS, 0).unwrap();
    // SIGKILL.
    drop(b1);
    let s2 = restart(s1);
    assert_eq!(g.rsp_prod(), 1);

    let (c2, ring, r) = attach::take_over(&s2, 3, 42, "web", pages.map(), RLAYOUT).unwrap();
    assert_eq!((r.answered, r.pending), (1, 2));
    assert_eq!(
        g.rsp_prod(),
        2,
        "the dead tmemd's answer to request 2 is published"
    );
    assert_eq!(
        crate::worker::tests::serve_until_idle(&s2, c2, 3, ring),
        2,
        "requests 3 and 4 are served"
    );
    let answers: Vec<(u64, i32)> = g
        .responses_from(0)
        .iter()
        .map(|r| (r.id, r.status))
        .collect();
    assert_eq!(
        answers,
        [
            (1, status::SUCCESS),
            (2, status::SUCCESS),
            (3, status::SUCCESS),
            (4, status::SUCCESS)
        ]
    );
    let mut read = [0u8; PAGE_SIZE];
    g.read_slot(2, &mut read);
    assert_eq!(read, a, "the page put before the kill, byte for byte");
    assert_eq!(s2.get(c2, pp, key(1), &mut read), Ok(false), "flushed once");
    assert_eq!(s2.get(c2, pp, key(0), &mut read), Ok(true));
    assert_eq!(read, a);
    // The ephemeral pool is there under its old id, empty and usable.
    s2.put(c2, ep, key(5), &b).unwrap();
    assert_eq!(s2.get(c2, ep, key(5), &mut read), Ok(true));
    assert_eq!(read, b);
}

/// Each reason not to resume in place: nothing recovered (a heap store, another instance) or
/// a pool operation in flight (not safe to run twice). The recovered client stays for the
/// guest's reconnect.
#[test]
fn a_ring_is_not_taken_over_without_its_client_or_with_a_pool_op_in_flight() {
    let s1 = durable_store();
    let (c, _) = s1.attach_client(3, 42, "web").unwrap();
    s1.new_pool(c, UUID, PoolKind::PrivatePersistent).unwrap();
    let s = restart(s1);
    let (pages, mut g) = GuestPages::new();
    let heap = tmem_store::Store::new(s.config());
    let e = attach::take_over(&heap, 3, 42, "web", pages.map(), RLAYOUT).unwrap_err();
    assert!(e.contains("no client"), "{e}");
    let e = attach::take_over(&s, 3, 43, "web", pages.map(), RLAYOUT).unwrap_err();
    assert!(e.contains("no client of this domain instance (43)"), "{e}");
    g.push(&RequestEntry::new_pool(9, UUID, 1 << 24 | 1));
    g.publish();
    let e = attach::take_over(&s, 3, 42, "web", pages.map(), RLAYOUT).unwrap_err();
    assert!(e.contains("pool was being created or destroyed"), "{e}");
    // The guest reconnects: its persistent pool comes back reattached.
    let (c, how) = s.attach_client(3, 42, "web").unwrap();
    assert_eq!(how, tmem_store::Attach::Reattached);
    let (_, reattached) = s.new_pool(c, UUID, PoolKind::PrivatePersistent).unwrap();
    assert!(reattached);
}

/// At start-up a frontend both of whose states say Connected is tried for a resume; when it
/// cannot be (here: no grant device), the device is offered afresh so the guest reconnects,
/// and its recovered client waits for that reconnect. A frontend whose backend was closed
/// (a SIGTERM) is simply offered the device.
#[test]
fn start_up_resumes_or_resets_frontends_left_connected() {
    let fx = FakeXenstore::new();
    fx.introduce(0, "Domain-0");
    fx.introduce(3, "web");
    fx.introduce(4, "db");
    publish_keys(&fx, 3);
    publish_keys(&fx, 4);
    let (fe3, be3, fe4, be4) = (
        frontend_path(3),
        backend_path(0, 3),
        frontend_path(4),
        backend_path(0, 4),
    );
    fx.write(&format!("{fe3}/state"), "4");
    fx.write(&format!("{be3}/state"), "4");
    fx.write(&format!("{fe4}/state"), "4");
    fx.write(&format!("{be4}/state"), "6");

    let s1 = durable_store();
    let (c, _) = s1.attach_client(3, 42, "web").unwrap();
    s1.new_pool(c, UUID, PoolKind::PrivatePersistent).unwrap();
    let store = restart(s1);
    let config = Config::merge(Args::default(), FileConfig::default()).unwrap();
    let d = Daemon::with_store(config, store);
    let (xs, _srv) = fx.connect();
    let mut x = d.backend(xs);
    x.init().unwrap();
    for be in [&be3, &be4] {
        assert_eq!(
            state_of(&fx, be).as_deref(),
            Some("2"),
            "{be} offered afresh"
        );
    }
    assert_eq!(d.shared.connected.load(Ordering::Relaxed), 0);
    let rec = d.shared.store.recovered_clients();
    assert_eq!(rec.len(), 1, "the client waits for the guest's reconnect");
    let (_, how) = d.shared.store.attach_client(3, 42, "web").unwrap();
    assert_eq!(how, tmem_store::Attach::Reattached);
    d.stop();
}

/// Swap disks against a fake xenstored: stale spill files removed at start; a configured
/// domain offered a vbd (and not the tmem device) with the keys and permissions blkfront
/// needs; a collision with a disk from the domain's configuration refused; a connect that
/// fails cleanly (no grant device here) closes the device with a reason; hostile frontend
/// keys refused; domain death removes every entry tmemd made and the disk's files.
#[test]
fn swap_disk_lifecycle_against_a_fake_xenstored() {
    let dir = std::env::temp_dir().join(format!("tmemd-vbd-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let stale = dir.join("swap-dom9-00000000000000aa-51712.spill");
    std::fs::write(&stale, b"old").unwrap();
    let unrelated = dir.join("notes.txt");
    std::fs::write(&unrelated, b"keep").unwrap();

    let fx = FakeXenstore::new();
    fx.introduce(0, "Domain-0");
    fx.introduce(5, "swapper");
    fx.write(
        "/local/domain/5/vm",
        "/vm/00000000-0000-0000-0000-000000000005",
    );
    fx.introduce(6, "plain");
    fx.introduce(7, "clash");
    fx.write(
        "/local/domain/7/vm",
        "/vm/00000000-0000-0000-0000-000000000007",
    );
    let xvdz = 268_441_856u32;
    fx.write(
        &format!("/local/domain/7/device/vbd/{xvdz}/backend"),
        "/local/domain/0/backend/vbd/7/268441856",
    );

    let file: FileConfig = toml::from_str(&format!(
        "swap_spill_dir = {:?}\n[[swap_disk]]\ndomains = [\"swapper\", \"clash\"]\nsize = \"64MiB\"\n",
        dir.display().to_string()
    ))
    .unwrap();
    let config = Config::merge(Args::default(), file).unwrap();
    let store = tmem_store::Store::new(config.store.clone());
    let d = Daemon::with_store(config, store);
    let (xs, _srv) = fx.connect();
    let mut x = d.backend(xs);
    x.init().unwrap();

    assert!(
        !stale.exists(),
        "a spill file no recovered guest owns is removed"
    );
    assert!(unrelated.exists(), "other files are left alone");
    let be = format!("/local/domain/0/backend/tmemblk/5/{xvdz}");
    let fe = format!("/local/domain/5/device/vbd/{xvdz}");
    let st = |p: &str| fx.read(&format!("{p}/state"));
    assert_eq!(st(&be).as_deref(), Some("2"));
    assert_eq!(st(&fe).as_deref(), Some("1"));
    assert_eq!(fx.perms(&be).unwrap(), ["n0", "r5"]);
    assert_eq!(fx.perms(&fe).unwrap(), ["n5", "r0"]);
    assert_eq!(
        fx.read(&format!("{fe}/backend")).as_deref(),
        Some(be.as_str())
    );
    assert_eq!(
        fx.read(&format!("{fe}/virtual-device")).as_deref(),
        Some("268441856")
    );
    assert_eq!(fx.read(&format!("{be}/sectors")).as_deref(), Some("131072"));
    assert_eq!(
        fx.read(&format!("{be}/sector-size")).as_deref(),
        Some("512")
    );
    assert_eq!(
        fx.read(&format!("{be}/feature-discard")).as_deref(),
        Some("1")
    );
    assert_eq!(
        fx.read(&format!("{be}/feature-flush-cache")).as_deref(),
        Some("1")
    );
    assert!(
        !fx.exists(&backend_path(0, 5)),
        "a domain with a swap disk is not offered the tmem device"
    );
    assert_eq!(st(&backend_path(0, 6)).as_deref(), Some("2"), "others are");
    assert!(
        !fx.exists("/local/domain/0/backend/tmemblk/7"),
        "a device number in use by a configured disk is refused"
    );
    let disks = |d: &Daemon| -> Vec<(u32, String)> {
        crate::sync::lock(&d.shared.swap_disks)
            .values()
            .map(|s| {
                let s = crate::sync::lock(s);
                (s.domid, s.state.clone())
            })
            .collect()
    };
    assert_eq!(
        disks(&d),
        [(5, "offered".to_string()), (7, "refused".to_string())]
    );

    // Hostile keys: refused with a reason, device closed.
    for (k, v) in [
        ("ring-page-order", "9"),
        ("ring-ref0", "8"),
        ("event-channel", "5"),
    ] {
        fx.write(&format!("{fe}/{k}"), v);
    }
    fx.write(&format!("{fe}/state"), "3");
    until(&mut x, "refusal", || st(&be).as_deref() == Some("6"));
    let err = fx.read(&format!("{be}/error")).unwrap();
    assert!(err.contains("ring-page-order"), "{err}");

    // The frontend resets; well-formed keys; the connect fails cleanly (no grant device).
    fx.write(&format!("{fe}/state"), "1");
    until(&mut x, "reset", || st(&be).as_deref() == Some("2"));
    fx.rm(&format!("{fe}/ring-page-order"));
    fx.rm(&format!("{fe}/ring-ref0"));
    fx.write(&format!("{fe}/ring-ref"), "8");
    fx.write(&format!("{fe}/protocol"), "x86_64-abi");
    fx.write(&format!("{fe}/state"), "3");
    until(&mut x, "connect refused", || {
        st(&be).as_deref() == Some("6")
    });
    let err = fx.read(&format!("{be}/error")).unwrap();
    assert!(err.contains("grant device"), "{err}");

    // The domain dies: every entry tmemd made goes, and the disk's files with it.
    fx.release(5);
    until(&mut x, "removal", || {
        !fx.exists("/local/domain/0/backend/tmemblk/5") && !fx.exists(&fe)
    });
    assert_eq!(disks(&d), [(7, "refused".to_string())]);
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["notes.txt"]);
    d.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- parking (save, restore, migration on one host) ------------------------------------------

const UUID_A: &str = "5e6f7a00-1234-4abc-8def-0123456789ab";
const UUID_B: &str = "0badf00d-0000-4000-8000-000000000001";

/// A domain as libxl makes it: home directory, name, and a `vm` path dom0 owns (`owner`
/// lets a test make it the guest's own instead).
fn vm_domain(fx: &FakeXenstore, admin: &mut Xs, d: u32, name: &str, uuid: &str, owner: u32) {
    fx.introduce(d, name);
    let vm = format!("/local/domain/{d}/vm");
    fx.write(&vm, &format!("/vm/{uuid}"));
    use tmem_xen::wire::{Access, Perm};
    admin
        .set_perms(
            tmem_xen::Tx::NONE,
            &vm,
            &[Perm::new(owner, Access::None), Perm::new(d, Access::Read)],
        )
        .unwrap();
}

/// Domain `d`'s guest had a client with one persistent page (seed `b`), now detached.
fn guest_pages(d: &Daemon, domid: u32, b: u8) -> tmem_store::ClientId {
    let s = &d.shared.store;
    let (c, _) = s.attach_client(domid, 42, "g").unwrap();
    let (p, _) = s.new_pool(c, [7, 7], PoolKind::PrivatePersistent).unwrap();
    let key = PageKey {
        oid: Oid([1, 2, 3]),
        index: 0,
    };
    s.put(c, p, key, &page_of(b)).unwrap();
    s.detach_client(c);
    c
}

/// The page a reattached guest of `domid` (instance 42) finds, if any.
fn page_found(d: &Daemon, domid: u32) -> Option<Page> {
    let s = &d.shared.store;
    let (c, _) = s.attach_client(domid, 42, "g").ok()?;
    let (p, re) = s.new_pool(c, [7, 7], PoolKind::PrivatePersistent).unwrap();
    let mut buf = [0u8; PAGE_SIZE];
    let key = PageKey {
        oid: Oid([1, 2, 3]),
        index: 0,
    };
    let found = re && s.get(c, p, key, &mut buf) == Ok(true);
    s.detach_client(c);
    found.then_some(buf)
}

fn park_config(extra: &str) -> Config {
    let file: FileConfig = toml::from_str(&format!("park_timeout_secs = 1\n{extra}")).unwrap();
    Config::merge(Args::default(), file).unwrap()
}

fn suspend(fx: &FakeXenstore, d: u32) {
    fx.write(&format!("/local/domain/{d}/control/shutdown"), "suspend");
}

fn parked_uuids(d: &Daemon) -> Vec<String> {
    crate::sync::lock(&d.shared.parked)
        .keys()
        .cloned()
        .collect()
}

/// Two domains with dom0-vouched uuids (`UUID_A`, then `UUID_B`), each with one persistent
/// page (`guest_pages`), and a tmemd that parks (`park_timeout_secs = 1`), initialised. The
/// last item holds the fake xenstored's connection threads: keep it.
fn parking_pair(
    doms: [(u32, &str, u8); 2],
) -> (FakeXenstore, Xs, Daemon, XenBackend, [JoinHandle<()>; 2]) {
    let fx = FakeXenstore::new();
    let (mut admin, a) = fx.connect();
    fx.introduce(0, "Domain-0");
    for ((dom, name, _), uuid) in doms.iter().zip([UUID_A, UUID_B]) {
        vm_domain(&fx, &mut admin, *dom, name, uuid, 0);
    }
    let config = park_config("");
    let store = tmem_store::Store::new(config.store.clone());
    let d = Daemon::with_store(config, store);
    let (xs, srv) = fx.connect();
    let mut x = d.backend(xs);
    x.init().unwrap();
    for (dom, _, b) in doms {
        guest_pages(&d, dom, b);
    }
    (fx, admin, d, x, [a, srv])
}

/// `xl save` then `xl restore`: the suspended domain's pages are parked at its release and
/// handed to the next domain with its uuid, once; a plain release destroys; a `vm` node the
/// guest owns is not trusted; an unclaimed entry is released after the timeout.
#[test]
fn a_suspended_domain_is_parked_and_its_uuid_claims_the_pages_once() {
    let (fx, mut admin, d, mut x, _conns) = parking_pair([(3, "web", 33), (4, "db", 44)]);

    // Domain 4 just dies: destroyed as ever. Removing its directory fires its shutdown watch
    // too, and a node read as gone is no acknowledgement of an unseen request.
    fx.release(4);
    drive(&mut x, "4 released", |x| !x.domains.contains_key(&4));
    assert_eq!(d.shared.store.client_by_domid(4), None);
    assert!(parked_uuids(&d).is_empty());

    // Domain 3 is saved: suspend, then released. Parked, shown, out of the reattach grace.
    suspend(&fx, 3);
    drive(&mut x, "suspend seen", |x| {
        x.tracked.get(&3).is_some_and(|t| t.suspending)
    });
    fx.release(3);
    drive(&mut x, "3 released", |x| !x.domains.contains_key(&3));
    let c = d
        .shared
        .store
        .client_by_domid(3)
        .expect("parked client kept");
    assert!(!crate::sync::lock(&d.shared.detached).contains_key(&c));
    assert_eq!(parked_uuids(&d), [UUID_A]);
    let st = crate::sync::lock(&d.shared.parked)[UUID_A].stats.clone();
    assert_eq!(
        (
            st.old_domid,
            st.client_id,
            st.name.as_str(),
            st.state.as_str()
        ),
        (3, Some(u64::from(c.0)), "web", "parked")
    );

    // Restored as domain 9: seen while being built, before its introduction (xl restore
    // introduces it just before the unpause); the client is re-keyed to 9 and the device
    // offered at once.
    fx.write("/local/domain/9/name", "web");
    fx.write("/local/domain/9/vm", &format!("/vm/{UUID_A}"));
    drive(&mut x, "9 offered before its introduction", |x| {
        x.domains.contains_key(&9)
    });
    assert_eq!(
        state_of(&fx, &backend_path(0, 9)).as_deref(),
        Some("2"),
        "offered"
    );
    fx.introduce(9, "web");
    drive(&mut x, "9 introduced", |x| !x.early.contains(&9));
    assert!(x.domains.contains_key(&9), "still served once introduced");
    assert!(parked_uuids(&d).is_empty(), "claimed");
    assert_eq!(d.shared.store.client_by_domid(3), None);
    assert_eq!(d.shared.store.client_by_domid(9), Some(c));
    assert_eq!(page_found(&d, 9), Some(page_of(33)));

    // The same image restored again as domain 10: nothing parked, so it starts empty.
    vm_domain(&fx, &mut admin, 10, "web", UUID_A, 0);
    drive(&mut x, "10 offered", |x| x.domains.contains_key(&10));
    assert_eq!(page_found(&d, 10), None);
    assert_eq!(
        page_found(&d, 9),
        Some(page_of(33)),
        "the first claimant keeps its pages"
    );

    // A domain whose `vm` node it owns itself names a uuid: not trusted, never parked.
    vm_domain(&fx, &mut admin, 11, "liar", UUID_B, 11);
    drive(&mut x, "11 offered", |x| x.domains.contains_key(&11));
    assert_eq!(x.tracked.get(&11).map(|t| t.uuid.clone()), Some(None));
    guest_pages(&d, 11, 111);
    suspend(&fx, 11);
    drive(&mut x, "suspend seen", |x| {
        x.tracked.get(&11).is_some_and(|t| t.suspending)
    });
    fx.release(11);
    drive(&mut x, "11 released", |x| !x.domains.contains_key(&11));
    assert_eq!(
        d.shared.store.client_by_domid(11),
        None,
        "destroyed, not parked"
    );

    // Domain 9 saved and never restored: released after park_timeout_secs.
    suspend(&fx, 9);
    drive(&mut x, "suspend seen", |x| {
        x.tracked.get(&9).is_some_and(|t| t.suspending)
    });
    fx.release(9);
    drive(&mut x, "9 parked", |_x| parked_uuids(&d) == [UUID_A]);
    let t = Instant::now();
    drive(&mut x, "timeout", |_x| parked_uuids(&d).is_empty());
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(d.shared.store.client_by_domid(9), None);
    d.stop();
}

/// A guest can acknowledge `suspend` (clear the node) before tmemd reads it: tmemd then sees
/// only an empty node, and the save must still park the pages. A request read as another
/// value (poweroff) and then acknowledged is no save: the pages are destroyed at once.
#[test]
fn a_save_acknowledged_before_tmemd_reads_the_request_still_parks() {
    let (fx, mut admin, d, mut x, _conns) = parking_pair([(5, "swapper", 55), (6, "plain", 66)]);
    drive(
        &mut x,
        "both watches set and their first events taken",
        |x| {
            [5, 6]
                .iter()
                .all(|d| x.tracked.get(d).is_some_and(|t| !t.initial_event))
        },
    );
    assert!(
        !x.tracked[&5].may_be_suspending(),
        "setting the watch is no request"
    );

    // The toolstack's request and the guest's acknowledgement, both before tmemd looks. The
    // save itself takes a while: tmemd reads the acknowledgement before the domain is gone.
    let node = "/local/domain/5/control/shutdown";
    fx.write(node, "suspend");
    fx.write(node, "");
    drive(&mut x, "acknowledgement read", |x| {
        x.tracked[&5].unseen_request
    });
    fx.release(5);
    drive(&mut x, "5 released", |x| !x.domains.contains_key(&5));
    assert_eq!(parked_uuids(&d), [UUID_A], "parked, not destroyed");
    let c = d
        .shared
        .store
        .client_by_domid(5)
        .expect("parked client kept");
    vm_domain(&fx, &mut admin, 15, "swapper", UUID_A, 0);
    drive(&mut x, "15 claims", |_x| parked_uuids(&d).is_empty());
    assert_eq!(d.shared.store.client_by_domid(15), Some(c));
    assert_eq!(page_found(&d, 15), Some(page_of(55)));

    // A poweroff read as such, then acknowledged: destroyed at the release.
    let node = "/local/domain/6/control/shutdown";
    fx.write(node, "poweroff");
    drive(&mut x, "poweroff read", |x| x.tracked[&6].request_seen);
    fx.write(node, "");
    drive(&mut x, "acknowledgement read", |x| {
        !x.tracked[&6].request_seen
    });
    assert!(!x.tracked[&6].may_be_suspending());
    fx.release(6);
    drive(&mut x, "6 released", |x| !x.domains.contains_key(&6));
    assert_eq!(d.shared.store.client_by_domid(6), None, "destroyed");
    assert!(parked_uuids(&d).is_empty());
    d.stop();
}

/// `xl migrate` to this host: the new domain exists while the old one lives. Its devices are
/// offered but its frontend's connect is held until the old domain is released and parked;
/// then the new domain claims the pages at once and its connect goes ahead. A domain that
/// takes a parked domain id with another uuid releases the parked pages first.
#[test]
fn a_migration_on_one_host_holds_the_new_domain_until_the_old_one_is_parked() {
    let fx = FakeXenstore::new();
    let (mut admin, _a) = fx.connect();
    fx.introduce(0, "Domain-0");
    vm_domain(&fx, &mut admin, 3, "web", UUID_A, 0);
    let d = Daemon::with_store(
        park_config(""),
        tmem_store::Store::new(park_config("").store),
    );
    let (xs, _srv) = fx.connect();
    let mut x = d.backend(xs);
    x.init().unwrap();
    let c = guest_pages(&d, 3, 33);
    suspend(&fx, 3);
    vm_domain(&fx, &mut admin, 8, "web--incoming", UUID_A, 0);
    drive(&mut x, "8 offered", |x| x.domains.contains_key(&8));
    publish_keys(&fx, 8);
    fx.write(&format!("{}/state", frontend_path(8)), "3");
    drive(&mut x, "8 held", |x| x.held.contains(&8));
    assert_eq!(state_of(&fx, &backend_path(0, 8)).as_deref(), Some("2"));

    fx.release(3);
    // Claimed at the release; the held connect then runs (and fails here: no grant device).
    drive(&mut x, "8 connect tried", |_x| {
        state_of(&fx, &backend_path(0, 8)).as_deref() == Some("6")
    });
    assert!(x.held.is_empty());
    assert!(parked_uuids(&d).is_empty());
    assert_eq!(d.shared.store.client_by_domid(8), Some(c));
    assert_eq!(page_found(&d, 8), Some(page_of(33)));

    // Domain 8 saved; domain id 8 then reused by another uuid: the parked pages go first.
    suspend(&fx, 8);
    drive(&mut x, "suspend seen", |x| {
        x.tracked.get(&8).is_some_and(|t| t.suspending)
    });
    fx.release(8);
    drive(&mut x, "8 parked", |_x| parked_uuids(&d) == [UUID_A]);
    vm_domain(&fx, &mut admin, 8, "other", UUID_B, 0);
    drive(&mut x, "8 again", |x| x.domains.contains_key(&8));
    assert!(parked_uuids(&d).is_empty());
    assert_eq!(page_found(&d, 8), None, "another domain never sees them");
    d.stop();
}

/// A swap disk parked with its domain: the spill file stays under the old domain id, is
/// renamed for the claimant, and the old ring's journal goes.
#[test]
fn a_parked_swap_disk_keeps_its_spill_file_for_the_claimant() {
    let dir = std::env::temp_dir().join(format!("tmemd-park-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fx = FakeXenstore::new();
    let (mut admin, _a) = fx.connect();
    fx.introduce(0, "Domain-0");
    vm_domain(&fx, &mut admin, 5, "swapper", UUID_A, 0);
    let config = park_config(&format!(
        "swap_spill_dir = {:?}\n[[swap_disk]]\ndomains = [\"swapper\"]\nsize = \"64MiB\"\n",
        dir.display().to_string()
    ));
    let d = Daemon::with_store(config.clone(), tmem_store::Store::new(config.store.clone()));
    let (xs, _srv) = fx.connect();
    let mut x = d.backend(xs);
    x.init().unwrap();
    drive(&mut x, "5 tracked", |x| x.vbds.contains_key(&5));
    let instance = x.vbds[&5].instance;
    let file = |domid: u32, ext: &str| {
        dir.join(format!(
            "swap-dom{domid}-{instance:016x}-{}.{ext}",
            x_devid()
        ))
    };
    std::fs::write(file(5, "spill"), b"pages").unwrap();
    std::fs::write(file(5, "ring"), b"journal").unwrap();
    suspend(&fx, 5);
    drive(&mut x, "suspend seen", |x| {
        x.tracked.get(&5).is_some_and(|t| t.suspending)
    });
    fx.release(5);
    drive(&mut x, "5 parked", |_x| parked_uuids(&d) == [UUID_A]);
    assert!(file(5, "spill").exists() && file(5, "ring").exists());
    assert_eq!(
        crate::sync::lock(&d.shared.parked)[UUID_A]
            .stats
            .swap_disk
            .as_deref(),
        Some("xvdz")
    );
    vm_domain(&fx, &mut admin, 6, "swapper", UUID_A, 0);
    drive(&mut x, "claimed", |_x| parked_uuids(&d).is_empty());
    assert_eq!(std::fs::read(file(6, "spill")).unwrap(), b"pages");
    assert!(!file(5, "spill").exists() && !file(5, "ring").exists());

    // Saved again and never claimed: spill file removed at the timeout.
    suspend(&fx, 6);
    drive(&mut x, "suspend seen", |x| {
        x.tracked.get(&6).is_some_and(|t| t.suspending)
    });
    fx.release(6);
    drive(&mut x, "6 parked", |_x| parked_uuids(&d) == [UUID_A]);
    assert!(file(6, "spill").exists());
    drive(&mut x, "timeout", |_x| parked_uuids(&d).is_empty());
    assert!(!file(6, "spill").exists());
    d.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// [`until`], with the backend handed to the condition.
fn drive(x: &mut XenBackend, what: &str, mut cond: impl FnMut(&XenBackend) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond(x) {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
        x.round().unwrap();
    }
}

/// The default swap disk's device number (`xvdz`).
fn x_devid() -> u32 {
    268_441_856
}
