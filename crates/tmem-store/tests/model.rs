//! Property test: long random operation sequences over several clients and pools of every
//! kind, against a simple reference model. Every status and every returned byte is checked.
//!
//! With eviction on, the model cannot know which ephemeral pages are still there, so it keeps
//! for each ephemeral key the data of the last successful put ("may be present") and checks
//! that a get returns a miss or exactly those bytes. Persistent pages are known exactly.
//!
//! Destroyed pools are reclaimed in chunks of a few pages that the test runs as separate
//! operations, so puts, gets and evictions interleave with half-reclaimed pools (and with
//! new pools that took the destroyed pools' ids).
//!
//! With compression on (`store_matches_model_compressed`), each client compresses some pool
//! kinds with lz4 or zstd, settings change at run time, and the pages mix compressible and
//! incompressible data; how much memory a page takes is then the store's business, so a put
//! of a data page may succeed or fail for lack of memory, but every byte is still checked.
//!
//! The same runs on a durable store (page memory in a memfd) add restarts: the store is
//! dropped at any point (as a killed tmemd is) and opened again on the same page file; every
//! persistent page must come back with its bytes and nothing else may.

use proptest::prelude::*;
use std::collections::BTreeMap;
use tmem_store::*;

const LIMIT: u64 = 24; // pages of memory: small, so eviction happens
const CLIENTS: usize = 3;
const SHARED_UUID: [u64; 2] = [0xabc, 0xdef];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Sel {
    Eph,
    Pers,
    Shared,
}

#[derive(Debug, Clone)]
enum Op {
    Put(usize, Sel, u64, u32, u8),
    Get(usize, Sel, u64, u32),
    FlushPage(usize, Sel, u64, u32),
    FlushObject(usize, Sel, u64),
    Freeze(usize, bool),
    Cap(usize, u64),
    Reattach(usize),
    FlushKib(u64),
    /// Destroy (or leave) a pool and open it again at once.
    DestroyPool(usize, Sel),
    /// Run one reclaim chunk of destroyed pools.
    ReapStep,
    /// Durable stores: drop the store and open its page file again (a no-op on the heap).
    Restart,
    /// Compressing runs: change a client's compression setting (0..6, see `setting`).
    Compress(usize, u8),
    /// Move at most this many compressed pages to give frames back.
    Compact(usize),
}

/// Compression settings the compressed runs switch between.
fn setting(n: u8) -> ClientCompression {
    let (l, z, o) = (Compression::Lz4, Compression::Zstd, Compression::Off);
    let (ephemeral, persistent) = match n % 6 {
        0 => (l, l),
        1 => (z, z),
        2 => (l, o),
        3 => (o, z),
        4 => (z, l),
        _ => (o, o),
    };
    ClientCompression {
        ephemeral,
        persistent,
    }
}

fn sel() -> impl Strategy<Value = Sel> {
    prop_oneof![Just(Sel::Eph), Just(Sel::Pers), Just(Sel::Shared)]
}

fn op() -> impl Strategy<Value = Op> {
    let c = 0..CLIENTS;
    let o = 0u64..3;
    let i = 0u32..4;
    prop_oneof![
        8 => (c.clone(), sel(), o.clone(), i.clone(), 0u8..8).prop_map(|(c, s, o, i, d)| Op::Put(c, s, o, i, d)),
        6 => (c.clone(), sel(), o.clone(), i.clone()).prop_map(|(c, s, o, i)| Op::Get(c, s, o, i)),
        2 => (c.clone(), sel(), o.clone(), i).prop_map(|(c, s, o, i)| Op::FlushPage(c, s, o, i)),
        1 => (c.clone(), sel(), o).prop_map(|(c, s, o)| Op::FlushObject(c, s, o)),
        1 => (c.clone(), any::<bool>()).prop_map(|(c, f)| Op::Freeze(c, f)),
        1 => (c.clone(), prop_oneof![Just(0u64), Just(3), Just(6), Just(12)]).prop_map(|(c, n)| Op::Cap(c, n)),
        1 => c.clone().prop_map(Op::Reattach),
        1 => (0u64..40).prop_map(Op::FlushKib),
        1 => (c, sel()).prop_map(|(c, s)| Op::DestroyPool(c, s)),
        2 => Just(Op::ReapStep),
        1 => Just(Op::Restart),
        1 => (0..CLIENTS, 0u8..6).prop_map(|(c, n)| Op::Compress(c, n)),
        1 => prop_oneof![Just(1usize), Just(4), Just(1000)].prop_map(Op::Compact),
    ]
}

/// Page contents: data 0 is the all-zero page, data 1 a same-filled page of a word whose
/// bytes differ (both kept without a frame); others encode the data number: 2 to 4 in a
/// pattern that compresses well, 5 to 7 in noise that does not compress.
fn page(d: u8) -> Page {
    let mut p = [0u8; PAGE_SIZE];
    if d >= 5 {
        let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ d as u64;
        for c in p.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        p[0] = d;
    } else if d == 1 {
        for c in p.chunks_exact_mut(8) {
            c.copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
        }
    } else if d != 0 {
        for (i, b) in p.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31) ^ d;
        }
        p[0] = d;
    }
    p
}

/// Whether data `d` needs a frame (same-filled pages do not; the store's bound on them is
/// far above what these runs put).
fn framed(d: u8) -> bool {
    d >= 2
}

fn key(o: u64, i: u32) -> PageKey {
    PageKey {
        oid: Oid([o, 7, 0]),
        index: i,
    }
}

#[derive(Default)]
struct Model {
    frozen: [bool; CLIENTS],
    cap: [u64; CLIENTS],
    /// Persistent-page limit: the default share until a cap is set.
    pers_cap: [u64; CLIENTS],
    /// Upper bound of the pages of destroyed pools not reclaimed yet.
    dying: u64,
    /// At most the page memory of each client's flushed objects not reclaimed yet: still
    /// charged to it (it is still used) until reclaimed.
    dying_bytes: [u64; CLIENTS],
    /// Persistent pages, exact: (client, oid, index) -> data.
    pers: BTreeMap<(usize, u64, u32), u8>,
    /// Private ephemeral pages that may be present.
    eph: BTreeMap<(usize, u64, u32), u8>,
    /// Shared ephemeral pages that may be present.
    shared: BTreeMap<(u64, u32), u8>,
}

impl Model {
    fn pers_of(&self, c: usize) -> u64 {
        self.pers.keys().filter(|k| k.0 == c).count() as u64
    }
    /// Page memory client `c`'s persistent pages take, at least and at most: a frame each
    /// for data pages (less if compressed: `z`), nothing for same-filled ones.
    fn pers_bytes(&self, c: usize, z: bool) -> (u64, u64) {
        let hi = PAGE_SIZE as u64
            * self
                .pers
                .iter()
                .filter(|(k, &d)| k.0 == c && framed(d))
                .count() as u64;
        (if z { 0 } else { hi }, hi)
    }
    fn eph_of(&self, c: usize) -> u64 {
        self.eph.keys().filter(|k| k.0 == c).count() as u64
    }
    /// At most the page memory its ephemeral pages take (any may have been evicted).
    fn eph_bytes_hi(&self, c: usize) -> u64 {
        PAGE_SIZE as u64
            * self
                .eph
                .iter()
                .filter(|(k, &d)| k.0 == c && framed(d))
                .count() as u64
    }
    fn pers_data(&self) -> u64 {
        self.pers.values().filter(|&&d| framed(d)).count() as u64
    }
    fn maybe(&self, c: usize, s: Sel, o: u64, i: u32) -> Option<u8> {
        match s {
            Sel::Eph => self.eph.get(&(c, o, i)).copied(),
            Sel::Pers => self.pers.get(&(c, o, i)).copied(),
            Sel::Shared => self.shared.get(&(o, i)).copied(),
        }
    }
    fn set(&mut self, c: usize, s: Sel, o: u64, i: u32, d: Option<u8>) {
        match (s, d) {
            (Sel::Eph, Some(d)) => drop(self.eph.insert((c, o, i), d)),
            (Sel::Eph, None) => drop(self.eph.remove(&(c, o, i))),
            (Sel::Pers, Some(d)) => drop(self.pers.insert((c, o, i), d)),
            (Sel::Pers, None) => drop(self.pers.remove(&(c, o, i))),
            (Sel::Shared, Some(d)) => drop(self.shared.insert((o, i), d)),
            (Sel::Shared, None) => drop(self.shared.remove(&(o, i))),
        }
    }
    fn pool_maybe_nonempty(&self, c: usize, s: Sel) -> bool {
        match s {
            Sel::Eph => self.eph.keys().any(|k| k.0 == c),
            Sel::Pers => self.pers.keys().any(|k| k.0 == c),
            Sel::Shared => !self.shared.is_empty(),
        }
    }
    fn clear_pool(&mut self, c: usize, s: Sel) {
        match s {
            Sel::Eph => self.eph.retain(|k, _| k.0 != c),
            Sel::Pers => self.pers.retain(|k, _| k.0 != c),
            Sel::Shared => self.shared.clear(),
        }
    }
}

struct Harness {
    durable: bool,
    /// Clients compress (see `Op::Compress`).
    z: bool,
    reap_chunk: Option<usize>,
    s: Store,
    ids: Vec<ClientId>,
    pools: Vec<BTreeMap<Sel, u32>>,
    m: Model,
}

fn open_pools(s: &Store, c: ClientId, domid: usize, reattach: bool) -> BTreeMap<Sel, u32> {
    let mut p = BTreeMap::new();
    let (e, re) = s.new_pool(c, [0, 0], PoolKind::PrivateEphemeral).unwrap();
    assert!(!re);
    p.insert(Sel::Eph, e);
    let (pp, re) = s
        .new_pool(c, [domid as u64 + 1, 99], PoolKind::PrivatePersistent)
        .unwrap();
    assert_eq!(re, reattach);
    p.insert(Sel::Pers, pp);
    let (sp, re) = s
        .new_pool(c, SHARED_UUID, PoolKind::SharedEphemeral)
        .unwrap();
    assert!(!re);
    p.insert(Sel::Shared, sp);
    p
}

impl Harness {
    /// `share`: the default persistent share in percent; `reap_chunk`: pages per reclaim
    /// step, reclaim left to `Op::ReapStep` (else destroys reclaim at once, as in tmemd).
    fn new(share: u32, reap_chunk: Option<usize>, durable: bool) -> Harness {
        Harness::new_z(share, reap_chunk, durable, None)
    }

    /// `z`: compress, starting from this `setting` for every client (shifted by client).
    fn new_z(share: u32, reap_chunk: Option<usize>, durable: bool, z: Option<u8>) -> Harness {
        let cfg = StoreConfig {
            mem_limit_bytes: LIMIT * PAGE_SIZE as u64,
            default_persistent_share_percent: share,
            ..StoreConfig::default()
        };
        let pers_cap = cfg.persistent_share_pages();
        let s = if durable {
            let file = PageFile::memfd("model").unwrap();
            let (s, rec) = Store::open_durable(cfg, file).unwrap();
            assert!(rec.formatted);
            s
        } else {
            Store::new(cfg)
        };
        if let Some(n) = reap_chunk {
            s.set_manual_reap(n);
        }
        let mut ids = Vec::new();
        let mut pools = Vec::new();
        for d in 0..CLIENTS {
            s.set_shared_auth(
                Identity::Xen {
                    domid: d as u32 + 1,
                },
                SHARED_UUID,
                true,
            )
            .unwrap();
            let (c, how) = s.attach_client(d as u32 + 1, 5, "g").unwrap();
            assert_eq!(how, Attach::New);
            if let Some(n) = z {
                s.set_compression(c, setting(n + d as u8)).unwrap();
            }
            pools.push(open_pools(&s, c, d, false));
            ids.push(c);
        }
        Harness {
            durable,
            z: z.is_some(),
            reap_chunk,
            s,
            ids,
            pools,
            m: Model {
                pers_cap: [pers_cap; CLIENTS],
                ..Model::default()
            },
        }
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let s = &self.s;
        match *op {
            Op::Put(c, sel, o, i, d) => {
                let id = self.ids[c];
                let pool = self.pools[c][&sel];
                let r = s.put(id, pool, key(o, i), &page(d));
                let m = &self.m;
                let old = m.maybe(c, sel, o, i);
                // Compressed pages take less than a frame and runs hold frames with free
                // slots: whether memory is full is the store's business.
                let full = m.pers_data() == LIMIT || (self.z && framed(d));
                let mut allowed: Vec<Result<(), TmemError>> = Vec::new();
                if self.z && framed(d) && old.is_some() {
                    allowed.push(Ok(()));
                    allowed.push(Err(TmemError::DupPutFlushed));
                }
                // Present (certainly for persistent pages, possibly for ephemeral ones).
                if let Some(od) = old {
                    if !framed(od) && framed(d) && full {
                        allowed.push(Err(TmemError::DupPutFlushed));
                    } else {
                        allowed.push(Ok(()));
                        // A durable page is never refilled in place: it needs a free frame.
                        if self.durable && sel == Sel::Pers && framed(d) && full {
                            allowed.push(Err(TmemError::DupPutFlushed));
                        }
                    }
                }
                // Absent (certainly if not in the model, possibly for ephemeral pages).
                if old.is_none() || sel != Sel::Pers {
                    // Caps count page memory, and a put needs room for a raw page.
                    let pg = PAGE_SIZE as u64;
                    let pcap = m.pers_cap[c] * pg;
                    let (plo, phi) = m.pers_bytes(c, self.z);
                    let phi = phi + m.dying_bytes[c];
                    if m.frozen[c] {
                        allowed.push(Err(TmemError::Frozen));
                    } else if sel == Sel::Pers && pcap != 0 && plo + pg > pcap {
                        allowed.push(Err(TmemError::OverCap));
                    } else {
                        if sel == Sel::Pers && pcap != 0 && phi + pg > pcap {
                            allowed.push(Err(TmemError::OverCap));
                        }
                        let cap = m.cap[c] * pg;
                        let mut go_on = true;
                        if sel != Sel::Shared && cap != 0 {
                            let hi = phi + m.eph_bytes_hi(c);
                            // Persistent puts are refused at cap; ephemeral ones may push out
                            // the client's own ephemeral pages, which still needs room beside
                            // its persistent ones.
                            if hi + pg > cap {
                                allowed.push(Err(TmemError::OverCap));
                            }
                            go_on = plo + pg <= cap;
                        }
                        if go_on {
                            if framed(d) && full {
                                allowed.push(Err(TmemError::NoMemory));
                                if self.z {
                                    allowed.push(Ok(()));
                                }
                            } else {
                                allowed.push(Ok(()));
                            }
                        }
                    }
                }
                prop_assert!(
                    allowed.contains(&r),
                    "put {:?} -> {:?}, allowed {:?}",
                    op,
                    r,
                    allowed
                );
                self.m.set(c, sel, o, i, r.is_ok().then_some(d));
            }
            Op::Get(c, sel, o, i) => {
                let id = self.ids[c];
                let pool = self.pools[c][&sel];
                let mut buf = [0x5au8; PAGE_SIZE];
                let r = s.get(id, pool, key(o, i), &mut buf);
                let m = &self.m;
                let want = m.maybe(c, sel, o, i);
                match r {
                    Err(TmemError::Empty) => {
                        prop_assert!(
                            sel != Sel::Pers || !m.pool_maybe_nonempty(c, sel),
                            "{:?}: Empty but model has pages",
                            op
                        );
                        self.m.clear_pool(c, sel);
                    }
                    Ok(false) => {
                        prop_assert!(
                            m.pool_maybe_nonempty(c, sel),
                            "{:?}: miss on a pool that must be empty",
                            op
                        );
                        prop_assert!(
                            sel != Sel::Pers || want.is_none(),
                            "{:?}: persistent page lost",
                            op
                        );
                        self.m.set(c, sel, o, i, None);
                    }
                    Ok(true) => {
                        let Some(d) = want else {
                            return Err(TestCaseError::fail(format!(
                                "{op:?}: hit on a page never put"
                            )));
                        };
                        prop_assert!(buf == page(d), "{:?}: wrong bytes (want data {})", op, d);
                        if sel == Sel::Eph {
                            self.m.set(c, sel, o, i, None);
                        }
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("{op:?}: {e:?}"))),
                }
            }
            Op::FlushPage(c, sel, o, i) => {
                let r = s.flush_page(self.ids[c], self.pools[c][&sel], key(o, i));
                prop_assert_eq!(r, Ok(()));
                self.m.set(c, sel, o, i, None);
            }
            Op::FlushObject(c, sel, o) => {
                let r = s.flush_object(self.ids[c], self.pools[c][&sel], key(o, 0).oid);
                prop_assert_eq!(r, Ok(()));
                let before = self.m.pers.len() + self.m.eph.len() + self.m.shared.len();
                let gone = |m: &BTreeMap<(usize, u64, u32), u8>| {
                    m.iter()
                        .filter(|(k, &d)| k.0 == c && k.1 == o && framed(d))
                        .count() as u64
                };
                self.m.dying_bytes[c] += PAGE_SIZE as u64
                    * match sel {
                        Sel::Eph => gone(&self.m.eph),
                        Sel::Pers => gone(&self.m.pers),
                        Sel::Shared => 0,
                    };
                match sel {
                    Sel::Eph => self.m.eph.retain(|k, _| !(k.0 == c && k.1 == o)),
                    Sel::Pers => self.m.pers.retain(|k, _| !(k.0 == c && k.1 == o)),
                    Sel::Shared => self.m.shared.retain(|k, _| k.0 != o),
                }
                let after = self.m.pers.len() + self.m.eph.len() + self.m.shared.len();
                self.m.dying += (before - after) as u64;
            }
            Op::Freeze(c, f) => {
                s.set_frozen(self.ids[c], f).unwrap();
                self.m.frozen[c] = f;
            }
            Op::Cap(c, n) => {
                s.set_cap_pages(self.ids[c], n).unwrap();
                self.m.cap[c] = n;
                self.m.pers_cap[c] = 0;
            }
            Op::Reattach(c) => {
                let id = self.ids[c];
                s.detach_client(id);
                let (id2, how) = s.attach_client(c as u32 + 1, 5, "g").unwrap();
                prop_assert_eq!(id2, id);
                prop_assert_eq!(how, Attach::Reattached);
                self.pools[c] = open_pools(s, id, c, true);
                self.m.dying += self.m.eph_of(c);
                self.m.eph.retain(|k, _| k.0 != c);
            }
            Op::Restart => {
                if !self.durable {
                    return Ok(());
                }
                // A flushed object's pages keep their records until reclaimed, and tmemd
                // answers a flush only once its reclaim has ended (`Store::reap` runs inside
                // the call); only this test's manual reclaim can stop in between.
                while s.reap_step() {}
                let fd = s.page_file().unwrap().try_clone_fd().unwrap();
                let cfg = s.config();
                let (s2, rec) = Store::open_durable(cfg, PageFile::from_fd(fd, "model")).unwrap();
                prop_assert!(!rec.formatted);
                prop_assert_eq!(rec.torn, 0, "a clean stop leaves no torn record");
                prop_assert_eq!(rec.pages, self.m.pers.len() as u64, "{:?}", rec);
                let same = self.m.pers.values().filter(|&&d| !framed(d));
                prop_assert_eq!(rec.same_filled_pages, same.clone().count() as u64);
                prop_assert_eq!(rec.zero_pages, same.filter(|&&d| d == 0).count() as u64);
                self.s = s2;
                let s = &self.s;
                if let Some(n) = self.reap_chunk {
                    s.set_manual_reap(n);
                }
                for c in 0..CLIENTS {
                    s.set_shared_auth(
                        Identity::Xen {
                            domid: c as u32 + 1,
                        },
                        SHARED_UUID,
                        true,
                    )
                    .unwrap();
                    let (id, how) = s.attach_client(c as u32 + 1, 5, "g").unwrap();
                    prop_assert_eq!(how, Attach::Reattached, "client {} after restart", c);
                    self.ids[c] = id;
                    self.pools[c] = open_pools(s, id, c, true);
                }
                // Settings are the daemon's to restore; the store starts from its defaults.
                if self.z {
                    for c in 0..CLIENTS {
                        s.set_compression(self.ids[c], setting(c as u8)).unwrap();
                    }
                }
                let pers_cap = s.config().persistent_share_pages();
                self.m.frozen = [false; CLIENTS];
                self.m.cap = [0; CLIENTS];
                self.m.pers_cap = [pers_cap; CLIENTS];
                self.m.eph.clear();
                self.m.shared.clear();
                self.m.dying = 0;
                self.m.dying_bytes = [0; CLIENTS];
                self.check_persistent()?;
            }
            Op::FlushKib(k) => {
                let got = s.flush_kib(k);
                // Released memory is counted in bytes: raw pages 4 KiB each, compressed
                // ones less; it stops within one page of the request.
                if self.z {
                    prop_assert!(got < k + 4, "{} KiB for {}", got, k);
                } else {
                    prop_assert_eq!(got % 4, 0);
                    prop_assert!(got <= k.div_ceil(4) * 4);
                }
            }
            Op::DestroyPool(c, sel) => {
                let id = self.ids[c];
                prop_assert_eq!(s.destroy_pool(id, self.pools[c][&sel]), Ok(true));
                let (uuid, kind) = match sel {
                    Sel::Eph => ([0, 0], PoolKind::PrivateEphemeral),
                    Sel::Pers => ([c as u64 + 1, 99], PoolKind::PrivatePersistent),
                    Sel::Shared => (SHARED_UUID, PoolKind::SharedEphemeral),
                };
                let (p, re) = s.new_pool(id, uuid, kind).unwrap();
                prop_assert!(!re, "{:?}: a destroyed pool came back", op);
                // The lowest free id: the one just given up.
                prop_assert_eq!(p, self.pools[c][&sel]);
                // The other sharers stay, so a shared pool keeps its pages.
                if sel != Sel::Shared {
                    self.m.dying += match sel {
                        Sel::Eph => self.m.eph_of(c),
                        _ => self.m.pers_of(c),
                    };
                    self.m.clear_pool(c, sel);
                }
            }
            Op::Compress(c, n) => {
                if self.z {
                    s.set_compression(self.ids[c], setting(n)).unwrap();
                }
            }
            Op::Compact(n) => {
                s.compact(n);
            }
            Op::ReapStep => {
                if !s.reap_step() {
                    self.m.dying = 0;
                    self.m.dying_bytes = [0; CLIENTS];
                }
            }
        }
        let g = self.s.stats().global;
        prop_assert!(
            g.data_bytes <= LIMIT * PAGE_SIZE as u64,
            "over the memory limit"
        );
        if !self.z {
            prop_assert!(g.data_bytes >= self.m.pers_data() * PAGE_SIZE as u64);
        } else {
            prop_assert_eq!(g.compression.decompress_errors, 0);
        }
        prop_assert!(g.pages >= self.m.pers.len() as u64);
        prop_assert!(
            g.pages
                <= (self.m.pers.len() + self.m.eph.len() + self.m.shared.len()) as u64
                    + self.m.dying,
            "{} pages stored, model allows {} + {} being reclaimed",
            g.pages,
            self.m.pers.len() + self.m.eph.len() + self.m.shared.len(),
            self.m.dying
        );
        let st = self.s.stats();
        let charged: u64 = st.clients.iter().map(|c| c.pages).sum();
        prop_assert!(charged <= g.pages);
        // The memory charged to a client is what its private pools take (their pages being
        // reclaimed included).
        for c in &st.clients {
            let pools: u64 = c
                .pools
                .iter()
                .filter(|p| p.kind != "ES")
                .map(|p| p.counters.mem_bytes)
                .sum();
            prop_assert_eq!(c.mem_bytes, pools, "client {}", c.client_id);
        }
        // Without compression every page that takes memory takes a frame.
        if !self.z {
            prop_assert_eq!(g.freeable_bytes, g.freeable_pages * PAGE_SIZE as u64);
        }
        Ok(())
    }

    /// Every persistent page is there with its bytes; nothing else is.
    fn check_persistent(&self) -> Result<(), TestCaseError> {
        for c in 0..CLIENTS {
            for o in 0..3 {
                for i in 0..4 {
                    let mut buf = [0x5au8; PAGE_SIZE];
                    let r = self
                        .s
                        .get(self.ids[c], self.pools[c][&Sel::Pers], key(o, i), &mut buf);
                    match self.m.pers.get(&(c, o, i)) {
                        Some(&d) => {
                            prop_assert_eq!(r, Ok(true));
                            prop_assert!(buf == page(d));
                        }
                        None => prop_assert!(matches!(r, Ok(false) | Err(TmemError::Empty))),
                    }
                }
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn store_matches_model(
        ops in proptest::collection::vec(op(), 1..600),
        share in prop_oneof![Just(0u32), Just(25), Just(50)],
        reap_chunk in proptest::option::of(1usize..4),
    ) {
        let mut h = Harness::new(share, reap_chunk, false);
        for op in &ops {
            h.step(op)?;
        }
        h.check_persistent()?;
        // Reclaim everything: then the store holds exactly what the model may hold.
        while h.s.reap_step() {}
        h.m.dying = 0;
        h.step(&Op::FlushKib(0))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn durable_store_matches_model_across_restarts(
        ops in proptest::collection::vec(op(), 1..600),
        share in prop_oneof![Just(0u32), Just(25), Just(50)],
        reap_chunk in proptest::option::of(1usize..4),
    ) {
        let mut h = Harness::new(share, reap_chunk, true);
        for op in &ops {
            h.step(op)?;
        }
        h.check_persistent()?;
        h.step(&Op::Restart)?;
        h.check_persistent()?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn store_matches_model_compressed(
        ops in proptest::collection::vec(op(), 1..600),
        share in prop_oneof![Just(0u32), Just(25), Just(50)],
        reap_chunk in proptest::option::of(1usize..4),
        z in 0u8..6,
    ) {
        let mut h = Harness::new_z(share, reap_chunk, false, Some(z));
        for op in &ops {
            h.step(op)?;
        }
        h.check_persistent()?;
        while h.s.reap_step() {}
        h.m.dying = 0;
        h.step(&Op::FlushKib(0))?;
        // Compaction keeps every page: check them all again after a full one.
        h.s.compact(usize::MAX);
        h.check_persistent()?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn durable_store_matches_model_across_restarts_compressed(
        ops in proptest::collection::vec(op(), 1..600),
        share in prop_oneof![Just(0u32), Just(25), Just(50)],
        reap_chunk in proptest::option::of(1usize..4),
        z in 0u8..6,
    ) {
        let mut h = Harness::new_z(share, reap_chunk, true, Some(z));
        for op in &ops {
            h.step(op)?;
        }
        h.check_persistent()?;
        h.s.compact(usize::MAX);
        h.check_persistent()?;
        h.step(&Op::Restart)?;
        h.check_persistent()?;
    }
}
