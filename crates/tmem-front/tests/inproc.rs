//! The pool map against a real in-process backend: tmem-store behind a tmem-ring
//! `BackendRing` on `HeapMem`, with real eventfds and a socket pair for liveness, served by a
//! thread. "Killing" the backend stops that thread and closes its socket end, as a SIGKILLed
//! tmemd would; "restarting" it with a fresh store loses every page.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tmem_abi::{rsp_flags, status, Oid, Page, PageKey, PoolKind, Request, TmemError, PAGE_SIZE};
use tmem_front::{
    Cleancache, Client, ClientConfig, Connection, FileKey, FrontError, Frontswap, LoadOutcome,
    Outcome, RingConnection, Transport,
};
use tmem_ring::{BackendRing, FrontendRing, HeapMem, Layout, PollPolicy};
use tmem_store::{Store, StoreConfig};

const LAYOUT: Layout = Layout {
    ring_pages: 1,
    data_slots: 16,
};

struct Conn {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// A tmemd stand-in made of the real store and ring.
struct Backend {
    store: Mutex<Arc<Store>>,
    up: AtomicBool,
    conns: Mutex<Vec<Conn>>,
}

impl Backend {
    fn new(up: bool) -> Arc<Backend> {
        Arc::new(Backend {
            store: Mutex::new(Arc::new(Store::new(StoreConfig::default()))),
            up: AtomicBool::new(up),
            conns: Mutex::new(Vec::new()),
        })
    }
    fn start(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
    /// Stop serving: every connection's socket closes (guests see EOF).
    fn kill(&self) {
        self.up.store(false, Ordering::SeqCst);
        let conns: Vec<Conn> = self.conns.lock().unwrap().drain(..).collect();
        for c in conns {
            c.stop.store(true, Ordering::SeqCst);
            c.thread.join().unwrap();
        }
    }
    /// A restarted daemon: all pages gone.
    fn replace_store(&self) {
        *self.store.lock().unwrap() = Arc::new(Store::new(StoreConfig::default()));
    }
}

struct TestTransport {
    backend: Arc<Backend>,
    domid: u32,
    instance: u64,
}

impl Transport for TestTransport {
    fn connect(&mut self) -> Result<Box<dyn Connection>, FrontError> {
        if !self.backend.up.load(Ordering::SeqCst) {
            return Err(FrontError::Connect {
                what: "test backend down".into(),
                source: None,
            });
        }
        let store = Arc::clone(&self.backend.store.lock().unwrap());
        let (cid, _) = store
            .attach_client(self.domid, self.instance, "test")
            .map_err(|e| FrontError::Connect {
                what: format!("attach: {e}"),
                source: None,
            })?;
        let mem = Arc::new(HeapMem::new(LAYOUT.total_bytes()));
        let front = FrontendRing::init(Arc::clone(&mem), LAYOUT).unwrap();
        let back = BackendRing::new(mem, LAYOUT).unwrap();
        let kick = tmem_local::new_eventfd().unwrap();
        let notify = tmem_local::new_eventfd().unwrap();
        let kick2 = kick.try_clone().unwrap();
        let notify2 = notify.try_clone().unwrap();
        let (fs, bs) = UnixStream::pair().unwrap();
        fs.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            serve(back, &store, cid, kick2, notify2, &stop2);
            store.detach_client(cid);
            drop(bs);
        });
        self.backend
            .conns
            .lock()
            .unwrap()
            .push(Conn { stop, thread });
        Ok(Box::new(RingConnection::new(
            front,
            kick,
            notify,
            fs,
            cid.0,
            16,
            PollPolicy::default(),
            Duration::from_secs(2),
        )))
    }
    fn describe(&self) -> String {
        "test".into()
    }
}

fn serve(
    mut ring: BackendRing<Arc<HeapMem>>,
    store: &Store,
    c: tmem_store::ClientId,
    kick: OwnedFd,
    notify: OwnedFd,
    stop: &AtomicBool,
) {
    let mut batch = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        batch.clear();
        if ring.next_batch(64, &mut batch).is_err() {
            return;
        }
        for inc in &batch {
            let (st, fl) = match inc.req {
                Err(r) => (r.status(), 0),
                Ok(Request::NewPool { uuid, kind }) => match store.new_pool(c, uuid, kind) {
                    Ok((id, re)) => (id as i32, if re { rsp_flags::REATTACHED } else { 0 }),
                    Err(e) => (e.status(), 0),
                },
                Ok(Request::DestroyPool { pool }) => match store.destroy_pool(c, pool) {
                    Ok(true) => (status::SUCCESS, 0),
                    Ok(false) => (status::MISS, 0),
                    Err(e) => (e.status(), 0),
                },
                Ok(Request::Put { pool, key, slot }) => {
                    match store.put(c, pool, key, &ring.slot_source(slot)) {
                        Ok(()) => (status::SUCCESS, 0),
                        Err(e) => (e.status(), 0),
                    }
                }
                Ok(Request::Get { pool, key, slot }) => {
                    match store.get(c, pool, key, &mut ring.slot_sink(slot)) {
                        Ok(true) => (status::SUCCESS, 0),
                        Ok(false) | Err(TmemError::Empty) => (status::MISS, 0),
                        Err(e) => (e.status(), 0),
                    }
                }
                Ok(Request::FlushPage { pool, key }) => match store.flush_page(c, pool, key) {
                    Ok(()) => (status::SUCCESS, 0),
                    Err(e) => (e.status(), 0),
                },
                Ok(Request::FlushObject { pool, oid }) => match store.flush_object(c, pool, oid) {
                    Ok(()) => (status::SUCCESS, 0),
                    Err(e) => (e.status(), 0),
                },
            };
            ring.push_response(inc.id, st, fl).unwrap();
        }
        if !batch.is_empty() {
            if ring.publish() {
                tmem_local::kick(notify.as_fd());
            }
            continue;
        }
        if ring.prepare_to_sleep() {
            continue;
        }
        let _ = tmem_local::wait_eventfd(kick.as_fd(), Some(Duration::from_millis(5)));
    }
}

fn client(backend: &Arc<Backend>, instance: u64) -> Arc<Client> {
    let t = TestTransport {
        backend: Arc::clone(backend),
        domid: 7,
        instance,
    };
    let cfg = ClientConfig {
        backoff_initial: Duration::from_millis(2),
        backoff_max: Duration::from_millis(20),
        liveness_interval: Duration::from_millis(10),
        ..ClientConfig::default()
    };
    Arc::new(Client::new(Box::new(t), cfg))
}

fn page(tag: u64) -> Page {
    let mut p = [0u8; PAGE_SIZE];
    for (i, c) in p.chunks_exact_mut(8).enumerate() {
        c.copy_from_slice(&(tag.wrapping_mul(0x9e37_79b9) ^ i as u64).to_le_bytes());
    }
    p
}

fn key(o: u64, i: u32) -> PageKey {
    PageKey {
        oid: Oid([o, 0, 0]),
        index: i,
    }
}

const T: Duration = Duration::from_secs(3);

#[test]
fn no_backend_gives_fake_handles_drops_puts_and_misses() {
    let b = Backend::new(false);
    let c = client(&b, 1);
    let cc = Cleancache::new(Arc::clone(&c));
    // Far more than the seed's 32 filesystems.
    let hs: Vec<_> = (0..100).map(|_| cc.init_fs().unwrap()).collect();
    assert_eq!(hs[0].fake_id(), 1000);
    assert_eq!(hs[99].fake_id(), 1099);
    let p = page(1);
    assert_eq!(
        cc.put_page(hs[5], FileKey::from_ino(3), 4, &p),
        Outcome::Dropped
    );
    let mut out = [0u8; PAGE_SIZE];
    assert!(!cc.get_page(hs[5], FileKey::from_ino(3), 4, &mut out));
    assert_eq!(out, [0u8; PAGE_SIZE]);
    cc.invalidate_page(hs[5], FileKey::from_ino(3), 4);
    cc.invalidate_inode(hs[5], FileKey::from_ino(3));
    // A never-mapped pool is destroyed locally.
    cc.invalidate_fs(hs[6]).unwrap();
    let fswap = Frontswap::new(Arc::clone(&c));
    fswap.init(0).unwrap();
    assert!(!fswap.store(0, 9, &p));
    assert_eq!(fswap.load(0, 9, &mut out), LoadOutcome::NotStored);
    let st = c.status();
    assert!(!st.connected);
    assert_eq!(st.pools.len(), 100);
    assert!(st.pools.iter().all(|p| p.real_id.is_none()));
    assert_eq!(st.counters.map.dropped_puts, 2);
    assert_eq!(st.counters.cleancache.failed_gets, 1);
    assert_eq!(st.counters.frontswap.failed_stores, 1);
}

#[test]
fn pools_are_mapped_when_the_backend_comes_up() {
    let b = Backend::new(false);
    let c = client(&b, 2);
    let cc = Cleancache::new(Arc::clone(&c));
    let fswap = Frontswap::new(Arc::clone(&c));
    let hs: Vec<_> = (0..40).map(|_| cc.init_fs().unwrap()).collect();
    fswap.init(0).unwrap();
    let p = page(7);
    assert_eq!(
        cc.put_page(hs[0], FileKey::from_ino(1), 0, &p),
        Outcome::Dropped
    );
    b.start();
    assert!(c.wait_mapped(T));
    let st = c.status();
    assert!(
        st.pools.iter().all(|p| p.real_id.is_some()),
        "{:?}",
        st.pools
    );
    // The page dropped before the backend came is not there; a new one is.
    let mut out = [0u8; PAGE_SIZE];
    assert!(!cc.get_page(hs[0], FileKey::from_ino(1), 0, &mut out));
    assert_eq!(
        cc.put_page(hs[0], FileKey::from_ino(1), 0, &p),
        Outcome::Stored
    );
    assert!(cc.get_page(hs[0], FileKey::from_ino(1), 0, &mut out));
    assert_eq!(out, p);
    assert!(fswap.store(1, 12345, &p));
    let mut out2 = [0u8; PAGE_SIZE];
    assert_eq!(fswap.load(1, 12345, &mut out2), LoadOutcome::Loaded);
    assert_eq!(out2, p);
    b.kill();
}

#[test]
fn disconnect_reverts_and_reconnect_remaps_with_replay() {
    let b = Backend::new(true);
    let c = client(&b, 3);
    let eph = c.create_pool(PoolKind::PrivateEphemeral, None).unwrap();
    let per = c.create_pool(PoolKind::PrivatePersistent, None).unwrap();
    assert!(c.wait_mapped(T));
    for i in 0..3 {
        assert_eq!(c.put(per, key(1, i), &page(u64::from(i))), Outcome::Stored);
    }
    assert_eq!(c.put(eph, key(1, 0), &page(100)), Outcome::Stored);
    b.kill();
    assert!(c.wait_disconnected(T));
    assert!(c.pools().iter().all(|p| p.real_id.is_none()));
    let mut out = [0u8; PAGE_SIZE];
    // While away: page 0 invalidated, page 1 rewritten (the put is dropped), page 2 kept.
    c.flush_page(per, key(1, 0));
    assert_eq!(c.put(per, key(1, 1), &page(99)), Outcome::Dropped);
    assert_eq!(c.get(per, key(1, 2), &mut out), Outcome::Unavailable);
    assert_eq!(c.pools()[1].pending_replay, 2);
    b.start();
    assert!(c.wait_mapped(T));
    let cnt = c.counters();
    assert_eq!(cnt.map.reattached, 1);
    assert_eq!(cnt.map.replayed, 2);
    assert_eq!(cnt.map.losses, 0);
    assert_eq!(c.get(per, key(1, 0), &mut out), Outcome::Miss);
    assert_eq!(c.get(per, key(1, 1), &mut out), Outcome::Miss);
    assert_eq!(c.get(per, key(1, 2), &mut out), Outcome::Hit);
    assert_eq!(out, page(2));
    // Ephemeral pools start empty on every connection.
    assert_eq!(c.get(eph, key(1, 0), &mut out), Outcome::Miss);
    b.kill();
}

#[test]
fn a_lost_persistent_pool_is_reported_not_hidden() {
    let b = Backend::new(true);
    let c = client(&b, 4);
    let fswap = Frontswap::new(Arc::clone(&c));
    fswap.init(0).unwrap();
    assert!(c.wait_mapped(T));
    assert!(fswap.store(0, 1, &page(1)));
    assert!(fswap.store(0, 2, &page(2)));
    b.kill();
    b.replace_store();
    b.start();
    assert!(c.wait_disconnected(T) || c.counters().map.disconnects > 0);
    assert!(c.wait_mapped(T));
    // Wait for the remap that follows the restart.
    let deadline = std::time::Instant::now() + T;
    while c.counters().map.connects < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(c.wait_mapped(T));
    let cnt = c.counters();
    assert_eq!(cnt.map.losses, 1);
    assert_eq!(cnt.map.lost_pages, 2);
    assert_eq!(fswap.lost(), Some((1, 2)));
    let mut out = [0u8; PAGE_SIZE];
    assert_eq!(fswap.load(0, 1, &mut out), LoadOutcome::Lost);
    assert!(c.pools()[0].lost);
    // New stores work and are not lost.
    assert!(fswap.store(0, 1, &page(11)));
    assert_eq!(fswap.load(0, 1, &mut out), LoadOutcome::Loaded);
    assert_eq!(out, page(11));
    assert_eq!(fswap.load(0, 2, &mut out), LoadOutcome::Lost);
    b.kill();
}

#[test]
fn many_threads_with_remaps_in_the_middle_never_see_stale_bytes() {
    let b = Backend::new(true);
    let c = client(&b, 5);
    let per = c.create_pool(PoolKind::PrivatePersistent, None).unwrap();
    let eph = c.create_pool(PoolKind::PrivateEphemeral, None).unwrap();
    assert!(c.wait_mapped(T));
    let stop = Arc::new(AtomicBool::new(false));
    let mut ts = Vec::new();
    for t in 0..4u64 {
        let c = Arc::clone(&c);
        let stop = Arc::clone(&stop);
        ts.push(std::thread::spawn(move || {
            let mut ver = [None::<u64>; 32];
            let mut hits = 0u64;
            let mut n = 0u64;
            let mut out = [0u8; PAGE_SIZE];
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let i = (n * 7 % 32) as usize;
                let k = key(t, i as u32);
                let tag = (t << 40) | n;
                match n % 3 {
                    0 => {
                        ver[i] = (c.put(per, k, &page(tag)) == Outcome::Stored).then_some(tag);
                        c.put(eph, k, &page(tag));
                    }
                    1 => match c.get(per, k, &mut out) {
                        Outcome::Hit => {
                            hits += 1;
                            assert_eq!(Some(out), ver[i].map(page), "stale persistent page");
                        }
                        Outcome::Lost => ver[i] = None,
                        _ => {}
                    },
                    _ => {
                        if c.get(eph, k, &mut out) == Outcome::Hit {
                            // Only a page put since the last connection, of this thread's key.
                            let got = u64::from_le_bytes(out[0..8].try_into().unwrap());
                            let _ = got;
                            assert!(out != [0u8; PAGE_SIZE]);
                        }
                        if n.is_multiple_of(11) {
                            c.flush_page(per, k);
                            ver[i] = None;
                        }
                    }
                }
            }
            hits
        }));
    }
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(150));
        b.kill();
        std::thread::sleep(Duration::from_millis(50));
        b.start();
        assert!(c.wait_mapped(T));
    }
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::SeqCst);
    let hits: u64 = ts.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(hits > 0);
    assert!(c.counters().map.connects >= 4);
    b.kill();
}

#[test]
fn same_filled_pages_cross_the_ring_with_every_byte() {
    // Stored without a frame and written straight into the ring slot on a load.
    let b = Backend::new(true);
    let c = client(&b, 9);
    let fswap = Frontswap::new(Arc::clone(&c));
    fswap.init(0).unwrap();
    assert!(c.wait_mapped(T));
    let words = [0u64, u64::MAX, 0x0102_0304_0506_0708, 1 << 63];
    for (i, w) in words.iter().enumerate() {
        let mut p = [0u8; PAGE_SIZE];
        for ch in p.chunks_exact_mut(8) {
            ch.copy_from_slice(&w.to_le_bytes());
        }
        assert!(fswap.store(0, i as u64, &p));
        let mut out = [0xaau8; PAGE_SIZE];
        assert_eq!(fswap.load(0, i as u64, &mut out), LoadOutcome::Loaded);
        assert_eq!(out, p, "word {w:#x}");
    }
    // A page that differs only in its last byte is a page of data.
    let mut last = [0u8; PAGE_SIZE];
    last[PAGE_SIZE - 1] = 1;
    assert!(fswap.store(0, 10, &last));
    let mut out = [0xaau8; PAGE_SIZE];
    assert_eq!(fswap.load(0, 10, &mut out), LoadOutcome::Loaded);
    assert_eq!(out, last);
    let g = b.store.lock().unwrap().stats().global;
    assert_eq!((g.same_filled_pages, g.zero_pages), (4, 1));
    assert_eq!(g.data_bytes, PAGE_SIZE as u64);
    b.kill();
}
