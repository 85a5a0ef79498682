//! Kill tmemd in the middle of every kind of write, and check what a restart recovers.
//!
//! A SIGKILL leaves the page file exactly as the killed process's last executed store left
//! it (the kernel keeps every page of a memfd; there is no power loss to reorder writes). So
//! a copy of the page file taken at an instant is the state a kill at that instant leaves.
//! The page-memory crate calls a hook at every step of every record write (clear seal,
//! fields written, seal written, record cleared); the hook here copies the file, and page
//! sources copy half a page, take a copy, then copy the rest (a kill during the data copy).
//! Every copy is then opened as a restarted tmemd would, and every page of every pool is
//! compared with the model: a page the operation touched must hold exactly its old or its
//! new contents (absent counting as contents), every other page exactly what it held.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::rc::Rc;

use tmem_store::*;

const ID: Identity = Identity::Local {
    uid: 1000,
    label: 1,
};
const INSTANCE: u64 = 77;
const UUID_A: [u64; 2] = [0xa, 1];
const UUID_B: [u64; 2] = [0xb, 1];

/// Pool (A or B) -> (object, index) -> page (a missing key is an absent page).
type Model = BTreeMap<[u64; 2], BTreeMap<(u64, u32), Page>>;

fn key(o: u64, i: u32) -> PageKey {
    PageKey {
        oid: Oid([o, 3, 9]),
        index: i,
    }
}

/// Seed 0: the zero page; below [`SAME`]: a page of data; from [`SAME`] on: a same-filled
/// page (stored without a frame) of a word whose bytes all differ, and 255: all ones.
fn page(seed: u8) -> Page {
    let mut p = [0u8; PAGE_SIZE];
    if seed >= SAME {
        let word: [u8; 8] = std::array::from_fn(|i| seed ^ i as u8);
        for c in p.chunks_exact_mut(8) {
            c.copy_from_slice(if seed == 255 { &[0xff; 8] } else { &word });
        }
    } else if seed != 0 {
        for (i, b) in p.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(13).wrapping_add(seed);
        }
        p[0] = seed;
    }
    p
}

const SAME: u8 = 100;

type Snaps = Rc<RefCell<Vec<Vec<u8>>>>;

fn read_all(fd: &OwnedFd) -> Vec<u8> {
    let mut f = std::fs::File::from(fd.try_clone().unwrap());
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut v = Vec::new();
    f.read_to_end(&mut v).unwrap();
    v
}

/// A page source that is "killed" half way through its copy: a snapshot in the middle.
struct TornSource {
    data: Page,
    fd: OwnedFd,
    snaps: Snaps,
}

impl PageSource for TornSource {
    fn read_page(&self, dst: &mut Page) {
        dst[..PAGE_SIZE / 2].copy_from_slice(&self.data[..PAGE_SIZE / 2]);
        self.snaps.borrow_mut().push(read_all(&self.fd));
        dst[PAGE_SIZE / 2..].copy_from_slice(&self.data[PAGE_SIZE / 2..]);
    }
}

struct Rig {
    store: Store,
    c: ClientId,
    pools: BTreeMap<[u64; 2], u32>,
    cfg: StoreConfig,
}

fn cfg(frames: u64) -> StoreConfig {
    StoreConfig {
        mem_limit_bytes: frames * PAGE_SIZE as u64,
        default_persistent_share_percent: 0,
        ..StoreConfig::default()
    }
}

fn rig(frames: u64) -> Rig {
    let cfg = cfg(frames);
    let (store, _) = Store::open_durable(cfg.clone(), PageFile::memfd("crash").unwrap()).unwrap();
    let (c, _) = store.attach(ID, INSTANCE, "g").unwrap();
    let mut pools = BTreeMap::new();
    for u in [UUID_A, UUID_B] {
        let (p, re) = store.new_pool(c, u, PoolKind::PrivatePersistent).unwrap();
        assert!(!re);
        pools.insert(u, p);
    }
    Rig {
        store,
        c,
        pools,
        cfg,
    }
}

impl Rig {
    fn fill(&self, model: &Model) {
        for (u, pages) in model {
            for (&(o, i), p) in pages {
                self.store.put(self.c, self.pools[u], key(o, i), p).unwrap();
            }
        }
    }
    fn fd(&self) -> OwnedFd {
        self.store.page_file().unwrap().try_clone_fd().unwrap()
    }
    fn torn(&self, data: Page, snaps: &Snaps) -> TornSource {
        TornSource {
            data,
            fd: self.fd(),
            snaps: snaps.clone(),
        }
    }
    /// Run `op` with a snapshot at every crash point (and whatever `op` takes itself);
    /// the state before it first, the final state last.
    fn crash_states(&self, snaps: &Snaps, op: impl FnOnce()) -> Vec<Vec<u8>> {
        let fd = self.fd();
        snaps.borrow_mut().push(read_all(&fd));
        let s2 = snaps.clone();
        tmem_pmem_hook(Some(Box::new(move || s2.borrow_mut().push(read_all(&fd)))));
        op();
        tmem_pmem_hook(None);
        let mut v = std::mem::take(&mut *snaps.borrow_mut());
        v.push(read_all(&self.fd()));
        v
    }
}

fn tmem_pmem_hook(f: Option<Box<dyn FnMut()>>) {
    tmem_pmem::crash::set_hook(f);
}

/// What a tmemd restarted on `bytes` serves: pool uuid -> pages found under `keys`.
fn recover(cfg: &StoreConfig, bytes: &[u8], keys: &[(u64, u32)]) -> (Model, Recovery) {
    let file = PageFile::memfd("restored").unwrap();
    let mut f = std::fs::File::from(file.try_clone_fd().unwrap());
    f.write_all(bytes).unwrap();
    let (store, rec) = Store::open_durable(cfg.clone(), file).unwrap();
    let (c, how) = store.attach(ID, INSTANCE, "g").unwrap();
    let mut out = Model::new();
    for u in [UUID_A, UUID_B] {
        let (p, re) = store.new_pool(c, u, PoolKind::PrivatePersistent).unwrap();
        if re {
            assert_eq!(how, Attach::Reattached);
        }
        let pages = out.entry(u).or_default();
        for &(o, i) in keys {
            let mut buf = [0x5au8; PAGE_SIZE];
            match store.get(c, p, key(o, i), &mut buf) {
                Ok(true) => {
                    pages.insert((o, i), buf);
                }
                Ok(false) | Err(TmemError::Empty) => {}
                Err(e) => panic!("get after recovery: {e}"),
            }
        }
    }
    // Nothing recovered beyond what the gets found (no page under another key, none twice).
    let found: usize = out.values().map(BTreeMap::len).sum();
    assert_eq!(rec.pages as usize, found, "{rec:?}");
    (out, rec)
}

fn describe(p: Option<&Page>) -> String {
    match p {
        None => "absent".into(),
        Some(p) if p.iter().all(|&b| b == 0) => "zero page".into(),
        Some(p) if *p == page(p[0]) && p[0] >= SAME => format!("same-filled page {}", p[0]),
        Some(p) if *p == page(p[0]) => format!("page seeded {}", p[0]),
        Some(p) => format!(
            "a mix (first byte {}, last byte {})",
            p[0],
            p[PAGE_SIZE - 1]
        ),
    }
}

/// Check every crash state against `before` and `after`; returns how many states there were.
fn check(
    name: &str,
    cfg: &StoreConfig,
    states: &[Vec<u8>],
    before: &Model,
    after: &Model,
) -> usize {
    let mut keys: Vec<(u64, u32)> = before
        .values()
        .chain(after.values())
        .flat_map(|m| m.keys().copied())
        .collect();
    keys.sort();
    keys.dedup();
    for (n, bytes) in states.iter().enumerate() {
        let (got, rec) = recover(cfg, bytes, &keys);
        let empty = BTreeMap::new();
        let mut all_old = true;
        let mut all_new = true;
        for u in [UUID_A, UUID_B] {
            let (b, a, g) = (
                before.get(&u).unwrap_or(&empty),
                after.get(&u).unwrap_or(&empty),
                got.get(&u).unwrap_or(&empty),
            );
            for k in &keys {
                let (bk, ak, gk) = (b.get(k), a.get(k), g.get(k));
                assert!(
                    gk == bk || gk == ak,
                    "{name}: crash state {n}/{}: pool {u:?} page {k:?} is {}, but must be its old \
                     ({}) or new ({}) contents; recovery: {rec:?}",
                    states.len(),
                    describe(gk),
                    describe(bk),
                    describe(ak),
                );
                all_old &= gk == bk;
                all_new &= gk == ak;
            }
        }
        if n == 0 {
            assert!(
                all_old,
                "{name}: the state before the operation is not the old model"
            );
        }
        if n == states.len() - 1 {
            assert!(
                all_new,
                "{name}: the state after the operation is not the new model"
            );
        }
    }
    assert!(
        states.len() > 2,
        "{name}: no crash point inside the operation"
    );
    states.len()
}

fn model(a: &[((u64, u32), u8)], b: &[((u64, u32), u8)]) -> Model {
    let mut m = Model::new();
    m.insert(UUID_A, a.iter().map(|&(k, s)| (k, page(s))).collect());
    m.insert(UUID_B, b.iter().map(|&(k, s)| (k, page(s))).collect());
    m
}

#[test]
fn a_kill_during_any_write_recovers_the_old_or_the_new_page_never_a_mix() {
    any_write(None);
}

#[test]
fn the_same_with_compressed_pages() {
    // The data pages here compress well: with lz4 or zstd on, every data page of the cases
    // above is a compressed page in a run, rewrites move between slots and runs, and data
    // pages turn into same-filled ones and back.
    any_write(Some(Compression::Lz4));
    any_write(Some(Compression::Zstd));
}

fn any_write(z: Option<Compression>) {
    let base_a = [
        ((1, 0), 1),
        ((1, 1), 2),
        ((1, 2), 0),
        ((2, 0), 3),
        ((1, 3), 150),
        ((2, 1), 255),
    ];
    let base_b = [((1, 0), 9), ((5, 7), 8), ((5, 8), 160)];
    let before = model(&base_a, &base_b);
    let with = |changes: &[((u64, u32), Option<u8>)]| {
        let mut m = before.clone();
        for &(k, s) in changes {
            match s {
                Some(s) => drop(m.get_mut(&UUID_A).unwrap().insert(k, page(s))),
                None => drop(m.get_mut(&UUID_A).unwrap().remove(&k)),
            }
        }
        m
    };
    type Case = (
        &'static str,
        Vec<((u64, u32), Option<u8>)>,
        fn(&Rig, &Snaps),
    );
    let cases: Vec<Case> = vec![
        ("new put", vec![((3, 0), Some(4))], |r, s| {
            r.store
                .put(r.c, r.pools[&UUID_A], key(3, 0), &r.torn(page(4), s))
                .unwrap()
        }),
        ("new put of a zero page", vec![((3, 1), Some(0))], |r, s| {
            r.store
                .put(r.c, r.pools[&UUID_A], key(3, 1), &r.torn(page(0), s))
                .unwrap()
        }),
        ("duplicate put", vec![((1, 0), Some(5))], |r, s| {
            r.store
                .put(r.c, r.pools[&UUID_A], key(1, 0), &r.torn(page(5), s))
                .unwrap()
        }),
        (
            "duplicate put: data to zero",
            vec![((1, 1), Some(0))],
            |r, s| {
                r.store
                    .put(r.c, r.pools[&UUID_A], key(1, 1), &r.torn(page(0), s))
                    .unwrap()
            },
        ),
        (
            "duplicate put: zero to data",
            vec![((1, 2), Some(6))],
            |r, s| {
                r.store
                    .put(r.c, r.pools[&UUID_A], key(1, 2), &r.torn(page(6), s))
                    .unwrap()
            },
        ),
        (
            "new put of a same-filled page",
            vec![((3, 2), Some(170))],
            |r, s| {
                r.store
                    .put(r.c, r.pools[&UUID_A], key(3, 2), &r.torn(page(170), s))
                    .unwrap()
            },
        ),
        (
            "duplicate put: data to same-filled",
            vec![((1, 0), Some(180))],
            |r, s| {
                r.store
                    .put(r.c, r.pools[&UUID_A], key(1, 0), &r.torn(page(180), s))
                    .unwrap()
            },
        ),
        (
            "duplicate put: same-filled to data",
            vec![((1, 3), Some(7))],
            |r, s| {
                r.store
                    .put(r.c, r.pools[&UUID_A], key(1, 3), &r.torn(page(7), s))
                    .unwrap()
            },
        ),
        (
            "duplicate put: same-filled to another word",
            vec![((1, 3), Some(190))],
            |r, s| {
                r.store
                    .put(r.c, r.pools[&UUID_A], key(1, 3), &r.torn(page(190), s))
                    .unwrap()
            },
        ),
        (
            "duplicate put: zero to same-filled",
            vec![((1, 2), Some(200))],
            |r, s| {
                r.store
                    .put(r.c, r.pools[&UUID_A], key(1, 2), &r.torn(page(200), s))
                    .unwrap()
            },
        ),
        (
            "duplicate put: same-filled to zero",
            vec![((2, 1), Some(0))],
            |r, s| {
                r.store
                    .put(r.c, r.pools[&UUID_A], key(2, 1), &r.torn(page(0), s))
                    .unwrap()
            },
        ),
        ("flush same-filled page", vec![((1, 3), None)], |r, _| {
            r.store
                .flush_page(r.c, r.pools[&UUID_A], key(1, 3))
                .unwrap()
        }),
        ("flush page", vec![((1, 1), None)], |r, _| {
            r.store
                .flush_page(r.c, r.pools[&UUID_A], key(1, 1))
                .unwrap()
        }),
        ("flush zero page", vec![((1, 2), None)], |r, _| {
            r.store
                .flush_page(r.c, r.pools[&UUID_A], key(1, 2))
                .unwrap()
        }),
        (
            "flush object",
            vec![
                ((1, 0), None),
                ((1, 1), None),
                ((1, 2), None),
                ((1, 3), None),
            ],
            |r, _| {
                r.store
                    .flush_object(r.c, r.pools[&UUID_A], key(1, 0).oid)
                    .unwrap()
            },
        ),
    ];
    let mut total = 0;
    for (name, changes, op) in cases {
        let r = rig(64);
        if let Some(z) = z {
            r.store
                .set_compression(r.c, ClientCompression::both(z))
                .unwrap();
        }
        r.fill(&before);
        if z.is_some() {
            assert!(r.store.stats().global.compression.pages > 0);
        }
        let snaps: Snaps = Rc::default();
        let states = r.crash_states(&snaps, || op(&r, &snaps));
        total += check(name, &r.cfg, &states, &before, &with(&changes));
    }
    println!("{total} crash states checked");
}

#[test]
fn a_duplicate_put_into_full_memory_takes_a_new_frame_and_keeps_old_or_new() {
    // 8 frames: 4 persistent pages, 4 ephemeral ones; a duplicate put must evict an
    // ephemeral page for its new frame (the general path), never refill in place.
    let r = rig(8);
    let before = model(&[((1, 0), 1), ((1, 1), 2), ((1, 2), 3), ((1, 3), 4)], &[]);
    r.fill(&before);
    let (e, _) = r
        .store
        .new_pool(r.c, [0, 0], PoolKind::PrivateEphemeral)
        .unwrap();
    for i in 0..4 {
        r.store.put(r.c, e, key(9, i), &page(20 + i as u8)).unwrap();
    }
    assert_eq!(r.store.stats().global.frames_free, 0);
    let snaps: Snaps = Rc::default();
    let states = r.crash_states(&snaps, || {
        r.store
            .put(r.c, r.pools[&UUID_A], key(1, 2), &r.torn(page(7), &snaps))
            .unwrap()
    });
    let mut after = before.clone();
    after.get_mut(&UUID_A).unwrap().insert((1, 2), page(7));
    check(
        "duplicate put, memory full",
        &r.cfg,
        &states,
        &before,
        &after,
    );
}

#[test]
fn same_filled_duplicates_into_full_memory_keep_old_or_new() {
    // 8 frames, all holding persistent pages, plus same-filled pages that hold none: every
    // duplicate below finds no free frame and takes the memory-full path.
    type Op = (&'static str, (u64, u32), u8);
    let ops: [Op; 4] = [
        ("data to same-filled, memory full", (1, 2), 130),
        ("same-filled to another word, memory full", (2, 0), 140),
        ("same-filled to the same word, memory full", (2, 0), 120),
        ("zero to same-filled, memory full", (2, 1), 255),
    ];
    let mut total = 0;
    for (name, k, seed) in ops {
        let r = rig(8);
        let before = model(
            &[
                ((1, 0), 1),
                ((1, 1), 2),
                ((1, 2), 3),
                ((1, 3), 4),
                ((2, 0), 120),
                ((2, 1), 0),
            ],
            &[((1, 0), 5), ((1, 1), 6), ((1, 2), 7), ((1, 3), 8)],
        );
        r.fill(&before);
        assert_eq!(r.store.stats().global.frames_free, 0);
        let snaps: Snaps = Rc::default();
        let states = r.crash_states(&snaps, || {
            r.store
                .put(
                    r.c,
                    r.pools[&UUID_A],
                    key(k.0, k.1),
                    &r.torn(page(seed), &snaps),
                )
                .unwrap()
        });
        let mut after = before.clone();
        after.get_mut(&UUID_A).unwrap().insert(k, page(seed));
        // (A rewrite of the same word changes nothing: every state must be the model.)
        total += check(name, &r.cfg, &states, &before, &after);
    }
    println!("{total} crash states checked");
}

#[test]
fn a_kill_during_a_destroy_keeps_the_whole_pool_or_none_of_it() {
    let r = rig(64);
    let before = model(
        &[((1, 0), 1), ((1, 1), 0), ((4, 4), 2), ((4, 5), 222)],
        &[((1, 0), 3)],
    );
    r.fill(&before);
    let snaps: Snaps = Rc::default();
    let states = r.crash_states(&snaps, || {
        assert_eq!(r.store.destroy_pool(r.c, r.pools[&UUID_A]), Ok(true));
    });
    let mut after = before.clone();
    after.remove(&UUID_A);
    let n = check("destroy pool", &r.cfg, &states, &before, &after);
    // All or nothing: check() allows any mix per page; a destroy must not be half-seen.
    for bytes in &states {
        let (got, _) = recover(&r.cfg, bytes, &[(1, 0), (1, 1), (4, 4), (4, 5)]);
        let a = got.get(&UUID_A).map_or(0, BTreeMap::len);
        assert!(
            a == 0 || a == 4,
            "half a destroyed pool came back: {a} of 4 pages"
        );
    }
    assert!(n > 2);
}

#[test]
fn a_kill_during_pool_creation_leaves_no_pool_or_an_empty_one() {
    let r = rig(64);
    let snaps: Snaps = Rc::default();
    let states = r.crash_states(&snaps, || {
        r.store
            .new_pool(r.c, [0xc, 1], PoolKind::PrivatePersistent)
            .unwrap();
    });
    assert!(states.len() > 2);
    for bytes in &states {
        let file = PageFile::memfd("restored").unwrap();
        std::fs::File::from(file.try_clone_fd().unwrap())
            .write_all(bytes)
            .unwrap();
        let (store, rec) = Store::open_durable(r.cfg.clone(), file).unwrap();
        assert_eq!(rec.pages, 0);
        let (c, _) = store.attach(ID, INSTANCE, "g").unwrap();
        let (p, _) = store
            .new_pool(c, [0xc, 1], PoolKind::PrivatePersistent)
            .unwrap();
        let mut buf = [0u8; PAGE_SIZE];
        assert!(matches!(
            store.get(c, p, key(0, 0), &mut buf),
            Ok(false) | Err(TmemError::Empty)
        ));
    }
    // The last state has the pool: a restarted tmemd gives it back as reattached.
    let file = PageFile::memfd("restored").unwrap();
    std::fs::File::from(file.try_clone_fd().unwrap())
        .write_all(states.last().unwrap())
        .unwrap();
    let (store, rec) = Store::open_durable(r.cfg.clone(), file).unwrap();
    assert_eq!(rec.pools, 3);
    let (c, how) = store.attach(ID, INSTANCE, "g").unwrap();
    assert_eq!(how, Attach::Reattached);
    assert_eq!(
        store.new_pool(c, [0xc, 1], PoolKind::PrivatePersistent),
        Ok((2, true))
    );
}

/// Open a copy of a page file as a restarted tmemd would.
fn reopen(cfg: &StoreConfig, bytes: &[u8]) -> (Store, Recovery) {
    let file = PageFile::memfd("restored").unwrap();
    std::fs::File::from(file.try_clone_fd().unwrap())
        .write_all(bytes)
        .unwrap();
    Store::open_durable(cfg.clone(), file).unwrap()
}

#[test]
fn a_frontend_still_connected_resumes_with_the_same_pool_ids() {
    let r = rig(64);
    r.store.set_shared_auth(ID, [0x5, 5], true).unwrap();
    let (e, _) = r
        .store
        .new_pool(r.c, [0, 0], PoolKind::PrivateEphemeral)
        .unwrap();
    let (sh, _) = r
        .store
        .new_pool(r.c, [0x5, 5], PoolKind::SharedEphemeral)
        .unwrap();
    let pa = r.pools[&UUID_A];
    r.store.put(r.c, pa, key(1, 1), &page(3)).unwrap();
    r.store.put(r.c, e, key(1, 1), &page(4)).unwrap();
    r.store.put(r.c, sh, key(1, 1), &page(5)).unwrap();
    // Killed: no detach. A restarted tmemd finds the frontend still connected.
    let bytes = read_all(&r.fd());
    let (s, rec) = reopen(&r.cfg, &bytes);
    assert_eq!((rec.clients, rec.pools, rec.pages), (1, 2, 1));
    assert_eq!(
        s.resume(ID, INSTANCE + 1, "g"),
        None,
        "another instance is not resumed"
    );
    let c = s.resume(ID, INSTANCE, "g").expect("resumed");
    assert_eq!(s.resume(ID, INSTANCE, "g"), None, "resumed once");
    let mut buf = [0u8; PAGE_SIZE];
    assert_eq!(s.get(c, pa, key(1, 1), &mut buf), Ok(true));
    assert_eq!(buf, page(3));
    // Ephemeral and shared pools are there under the same ids, empty, and usable.
    for p in [e, sh] {
        assert!(matches!(
            s.get(c, p, key(1, 1), &mut buf),
            Ok(false) | Err(TmemError::Empty)
        ));
        s.put(c, p, key(2, 2), &page(6)).unwrap();
        assert_eq!(s.get(c, p, key(2, 2), &mut buf), Ok(true));
        assert_eq!(buf, page(6));
    }
    assert!(
        s.recovered_clients().is_empty(),
        "a resumed client is not expired"
    );

    // A guest that says hello instead reopens its pools: the kept ephemeral and shared
    // ones go, persistent ones come back reattached with their pages.
    let (s, _) = reopen(&r.cfg, &bytes);
    assert_eq!(s.recovered_clients().len(), 1);
    let (c, how) = s.attach(ID, INSTANCE, "g").unwrap();
    assert_eq!(how, Attach::Reattached);
    let (p2, re) = s.new_pool(c, [0, 0], PoolKind::PrivateEphemeral).unwrap();
    assert!(!re);
    assert_eq!(p2, e, "the ephemeral pool's old id is free again");
    assert_eq!(
        s.new_pool(c, UUID_A, PoolKind::PrivatePersistent),
        Ok((pa, true))
    );
    assert_eq!(s.get(c, pa, key(1, 1), &mut buf), Ok(true));
    assert_eq!(buf, page(3));
    let st = s.stats();
    assert_eq!(st.clients[0].pools.len(), 3, "{:?}", st.clients[0].pools);
}

#[test]
fn a_client_that_detached_cleanly_keeps_only_its_persistent_pools() {
    let r = rig(64);
    let (e, _) = r
        .store
        .new_pool(r.c, [0, 0], PoolKind::PrivateEphemeral)
        .unwrap();
    r.store.put(r.c, e, key(1, 1), &page(4)).unwrap();
    r.store
        .put(r.c, r.pools[&UUID_B], key(1, 1), &page(8))
        .unwrap();
    r.store.detach_client(r.c);
    let (s, rec) = reopen(&r.cfg, &read_all(&r.fd()));
    assert_eq!((rec.clients, rec.pools, rec.pages), (1, 2, 1));
    assert!(s.resume(ID, INSTANCE, "g").is_some());
    assert_eq!(s.stats().clients[0].pools.len(), 2);
}

#[test]
fn ephemeral_pool_records_never_take_the_last_quarter_from_persistent_pools() {
    // 64 frames: 64 pool records. Three clients open 40 ephemeral pools each (records are
    // best effort for those), then each a persistent pool: every one gets a record.
    let cfg = StoreConfig {
        max_pools_per_client: 64,
        ..cfg(64)
    };
    let (store, _) = Store::open_durable(cfg.clone(), PageFile::memfd("q").unwrap()).unwrap();
    let mut clients = Vec::new();
    for label in 0..3 {
        let id = Identity::Local { uid: 7, label };
        let (c, _) = store.attach(id, 1, "g").unwrap();
        for _ in 0..40 {
            store
                .new_pool(c, [0, 0], PoolKind::PrivateEphemeral)
                .unwrap();
        }
        clients.push(c);
    }
    for (i, &c) in clients.iter().enumerate() {
        let (p, _) = store
            .new_pool(c, [9, i as u64], PoolKind::PrivatePersistent)
            .expect("a persistent pool gets a record");
        store.put(c, p, key(1, 1), &page(1)).unwrap();
    }
    let fd = store.page_file().unwrap().try_clone_fd().unwrap();
    let (_, rec) = reopen(&cfg, &read_all(&fd));
    assert_eq!((rec.pools, rec.pages), (3, 3));
}

#[test]
fn a_rewrite_a_full_store_cannot_take_keeps_the_old_copy_only_when_asked() {
    // 8 frames (no frame kept back for rewrites below 64), all holding persistent pages.
    let r = rig(8);
    let pa = r.pools[&UUID_A];
    for i in 0..8 {
        r.store.put(r.c, pa, key(1, i), &page(i as u8 + 1)).unwrap();
    }
    let mut buf = [0u8; PAGE_SIZE];
    assert_eq!(
        r.store.put_keeping_old(r.c, pa, key(1, 3), &page(50)),
        Err(TmemError::NoMemory)
    );
    assert_eq!(r.store.get(r.c, pa, key(1, 3), &mut buf), Ok(true));
    assert_eq!(buf, page(4), "the old copy is kept");
    assert_eq!(
        r.store.put(r.c, pa, key(1, 3), &page(50)),
        Err(TmemError::DupPutFlushed)
    );
    assert_eq!(r.store.get(r.c, pa, key(1, 3), &mut buf), Ok(false));
}

#[test]
fn a_kill_during_compaction_keeps_every_page() {
    let r = rig(256);
    r.store
        .set_compression(r.c, ClientCompression::both(Compression::Lz4))
        .unwrap();
    // Many compressed pages in several runs, then holes in every run.
    let all: Vec<((u64, u32), u8)> = (0..240u32)
        .map(|i| ((10 + (i / 60) as u64, i % 60), (i % 90) as u8 + 1))
        .collect();
    r.fill(&model(&all, &[]));
    for (i, &((o, x), _)) in all.iter().enumerate() {
        if i % 4 != 0 {
            r.store
                .flush_page(r.c, r.pools[&UUID_A], key(o, x))
                .unwrap();
        }
    }
    let kept: Vec<((u64, u32), u8)> = all.iter().copied().step_by(4).collect();
    let before = model(&kept, &[]);
    let g = r.store.stats().global.compression;
    assert!(g.compactable_frames > 0, "{g:?}");
    let snaps: Snaps = Rc::default();
    let states = r.crash_states(&snaps, || {
        r.store.compact(usize::MAX);
    });
    let after = r.store.stats().global.compression;
    assert!(
        after.frames < g.frames && after.compaction_moves > 0,
        "{after:?}"
    );
    // Every page is there with its bytes at every instant.
    let n = check("compaction", &r.cfg, &states, &before, &before);
    println!("{n} crash states checked");
}
