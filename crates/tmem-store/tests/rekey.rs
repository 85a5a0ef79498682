//! Re-keying a detached Xen client to a new domain id (a domain saved and restored): a kill
//! at any write of the re-key leaves the pools under the old id or the new one, never both
//! and never neither; repeated cycles do not use up pool records; a domain that later reuses
//! the old id gets none of them.

use std::cell::RefCell;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::rc::Rc;

use tmem_store::*;

const INSTANCE: u64 = 77;
const UUIDS: [[u64; 2]; 3] = [[0xa, 1], [0xb, 1], [0xc, 1]];

fn xen(domid: u32) -> Identity {
    Identity::Xen { domid }
}

fn key(i: u32) -> PageKey {
    PageKey {
        oid: Oid([1, 2, 3]),
        index: i,
    }
}

fn page(seed: u8) -> Page {
    let mut p = [0u8; PAGE_SIZE];
    for (i, b) in p.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(7).wrapping_add(seed);
    }
    p
}

fn cfg() -> StoreConfig {
    StoreConfig {
        mem_limit_bytes: 256 * PAGE_SIZE as u64,
        default_persistent_share_percent: 0,
        ..StoreConfig::default()
    }
}

fn read_all(fd: &OwnedFd) -> Vec<u8> {
    let mut f = std::fs::File::from(fd.try_clone().unwrap());
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut v = Vec::new();
    f.read_to_end(&mut v).unwrap();
    v
}

fn fd(s: &Store) -> OwnedFd {
    s.page_file().unwrap().try_clone_fd().unwrap()
}

fn reopen(bytes: &[u8]) -> (Store, Recovery) {
    let file = PageFile::memfd("restored").unwrap();
    std::fs::File::from(file.try_clone_fd().unwrap())
        .write_all(bytes)
        .unwrap();
    Store::open_durable(cfg(), file).unwrap()
}

/// A detached client of `domid` with `pools` persistent pools (uuid n holds pages 0..4 seeded
/// n*10+i).
fn setup(pools: usize) -> (Store, ClientId) {
    let (s, _) = Store::open_durable(cfg(), PageFile::memfd("rekey").unwrap()).unwrap();
    let (c, _) = s.attach(xen(5), INSTANCE, "g").unwrap();
    for (n, u) in UUIDS.iter().take(pools).enumerate() {
        let (p, _) = s.new_pool(c, *u, PoolKind::PrivatePersistent).unwrap();
        for i in 0..4 {
            s.put(c, p, key(i), &page(n as u8 * 10 + i as u8)).unwrap();
        }
    }
    s.detach_client(c);
    (s, c)
}

/// Add pool `n` (under the client's current domain id) and detach again.
fn add_pool(s: &Store, domid: u32, n: usize) {
    let (c, how) = s.attach(xen(domid), INSTANCE, "g").unwrap();
    assert_eq!(how, Attach::Reattached);
    let (p, re) = s
        .new_pool(c, UUIDS[n], PoolKind::PrivatePersistent)
        .unwrap();
    assert!(!re);
    for i in 0..4 {
        s.put(c, p, key(i), &page(n as u8 * 10 + i as u8)).unwrap();
    }
    s.detach_client(c);
}

/// Which of `ids` a store rebuilt from `bytes` holds the client under, checking that the
/// first `pools` pools come back whole there and nothing anywhere else.
fn owner(bytes: &[u8], ids: &[u32], pools: usize) -> u32 {
    let (s, rec) = reopen(bytes);
    let found: Vec<u32> = ids
        .iter()
        .copied()
        .filter(|&d| s.client_by_identity(xen(d)).is_some())
        .collect();
    assert_eq!(found.len(), 1, "clients under {found:?}; recovery {rec:?}");
    assert_eq!(rec.clients, 1, "{rec:?}");
    assert_eq!(rec.pages, 4 * pools as u64, "{rec:?}");
    let d = found[0];
    let (c, how) = s.attach(xen(d), INSTANCE, "g").unwrap();
    assert_eq!(how, Attach::Reattached);
    for (n, u) in UUIDS.iter().take(pools).enumerate() {
        let (p, re) = s.new_pool(c, *u, PoolKind::PrivatePersistent).unwrap();
        assert!(re, "pool {n} under {d}");
        for i in 0..4 {
            let mut buf = [0u8; PAGE_SIZE];
            assert_eq!(s.get(c, p, key(i), &mut buf), Ok(true));
            assert_eq!(buf, page(n as u8 * 10 + i as u8), "pool {n} page {i}");
        }
    }
    d
}

type Snaps = Rc<RefCell<Vec<Vec<u8>>>>;

/// `op` with a copy of the page file at every crash point, the states before and after
/// included.
fn crash_states(s: &Store, op: impl FnOnce()) -> Vec<Vec<u8>> {
    let snaps: Snaps = Rc::default();
    snaps.borrow_mut().push(read_all(&fd(s)));
    let (s2, f) = (snaps.clone(), fd(s));
    tmem_pmem::crash::set_hook(Some(Box::new(move || s2.borrow_mut().push(read_all(&f)))));
    op();
    tmem_pmem::crash::set_hook(None);
    let mut v = std::mem::take(&mut *snaps.borrow_mut());
    v.push(read_all(&fd(s)));
    v
}

/// Every crash state is the old or the new owner; the first old, the last new; and once
/// new, never old again.
fn check(name: &str, states: &[Vec<u8>], from: u32, to: u32, ids: &[u32], pools: usize) {
    assert!(states.len() > 2, "{name}: no crash point inside");
    let mut seen_new = false;
    for (n, b) in states.iter().enumerate() {
        let d = owner(b, ids, pools);
        assert!(d == from || d == to, "{name}: state {n} under {d}");
        if n == 0 {
            assert_eq!(d, from, "{name}: before");
        }
        if n == states.len() - 1 {
            assert_eq!(d, to, "{name}: after");
        }
        assert!(!(seen_new && d == from), "{name}: state {n} went back");
        seen_new |= d == to;
    }
}

#[test]
fn a_kill_at_any_write_of_a_rekey_leaves_the_old_or_the_new_owner() {
    let ids = [5, 6, 9];
    let (s, c) = setup(2);
    // One domain id written: one rename record.
    let st = crash_states(&s, || s.rekey(c, 6).unwrap());
    check("5 to 6", &st, 5, 6, &ids, 2);
    // A pool made under 6: records under two ids, so a chain record commits the re-key and
    // the compaction after it must keep every state whole.
    add_pool(&s, 6, 2);
    let st = crash_states(&s, || s.rekey(c, 9).unwrap());
    check("6 to 9", &st, 6, 9, &ids, 3);
    // Back to an id the records were written under.
    let st = crash_states(&s, || s.rekey(c, 5).unwrap());
    check("9 to 5", &st, 9, 5, &ids, 3);
    let st = crash_states(&s, || s.rekey(c, 6).unwrap());
    check("5 to 6 again", &st, 5, 6, &ids, 3);
}

#[test]
fn many_cycles_use_no_more_pool_records() {
    let (s, c) = setup(1);
    add_pool(&s, 5, 1);
    let mut d = 5;
    // The page file has 256 pool records: a record lost per cycle would run out.
    for n in 0..600u32 {
        let to = 100 + n % 7;
        s.rekey(c, to).unwrap_or_else(|e| panic!("cycle {n}: {e}"));
        d = to;
    }
    assert_eq!(owner(&read_all(&fd(&s)), &[5, d], 2), d);
}

#[test]
fn a_domain_reusing_the_old_id_gets_none_of_the_pools() {
    let (s, c) = setup(1);
    s.rekey(c, 6).unwrap();
    // A new domain on domid 5, same instance (a second restore of the same image).
    let (c5, how) = s.attach(xen(5), INSTANCE, "g").unwrap();
    assert_eq!(how, Attach::New);
    let (p, re) = s
        .new_pool(c5, UUIDS[0], PoolKind::PrivatePersistent)
        .unwrap();
    assert!(!re, "the old id's pool went with the rekey");
    s.put(c5, p, key(0), &page(99)).unwrap();
    s.detach_client(c5);
    let (r, rec) = reopen(&read_all(&fd(&s)));
    assert_eq!(rec.clients, 2, "{rec:?}");
    let mut buf = [0u8; PAGE_SIZE];
    for (d, want) in [(6, page(0)), (5, page(99))] {
        let (c, how) = r.attach(xen(d), INSTANCE, "g").unwrap();
        assert_eq!(how, Attach::Reattached);
        let (p, re) = r
            .new_pool(c, UUIDS[0], PoolKind::PrivatePersistent)
            .unwrap();
        assert!(re);
        assert_eq!(r.get(c, p, key(0), &mut buf), Ok(true));
        assert_eq!(buf, want, "domain {d}");
    }
}

#[test]
fn refusals_and_a_dead_target_replaced() {
    let (s, c) = setup(1);
    let (live, _) = s.attach(xen(7), 1, "live").unwrap();
    assert_eq!(s.rekey(c, 7), Err(RekeyRefused::TargetLive(xen(7))));
    s.detach_client(live);
    // A detached leftover on the target id is a dead domain's: replaced.
    s.rekey(c, 7).unwrap();
    assert_eq!(s.client_by_identity(xen(7)), Some(c));
    assert_eq!(s.client_by_identity(xen(5)), None);
    let (a, _) = s.attach(xen(7), INSTANCE, "g").unwrap();
    assert_eq!(s.rekey(a, 8), Err(RekeyRefused::Attached(xen(7))));
    let (l, _) = s
        .attach(Identity::Local { uid: 1, label: 1 }, 1, "l")
        .unwrap();
    s.detach_client(l);
    assert_eq!(s.rekey(l, 8), Err(RekeyRefused::NotXen));
}

#[test]
fn a_destroyed_client_leaves_no_rename_behind() {
    let (s, c) = setup(1);
    s.rekey(c, 6).unwrap();
    s.destroy_client(c);
    let (_, rec) = reopen(&read_all(&fd(&s)));
    assert_eq!((rec.clients, rec.pools, rec.orphans), (0, 0, 0), "{rec:?}");
}
