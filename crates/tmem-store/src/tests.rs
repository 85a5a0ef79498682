//! Unit tests, one or more per rule of the store's contract.

use super::*;

const EP: PoolKind = PoolKind::PrivateEphemeral;
const ES: PoolKind = PoolKind::SharedEphemeral;
const PP: PoolKind = PoolKind::PrivatePersistent;
const U1: [u64; 2] = [0x1111, 0x2222];
const U2: [u64; 2] = [0x3333, 0x4444];

fn page(seed: u64) -> Page {
    let mut p = [0u8; PAGE_SIZE];
    for (i, c) in p.chunks_exact_mut(8).enumerate() {
        c.copy_from_slice(&(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i as u64 | 1).to_le_bytes());
    }
    p
}

fn key(o: u64, i: u32) -> PageKey {
    PageKey {
        oid: Oid([o, 0, 0]),
        index: i,
    }
}

/// A store of `pages` frames without the default persistent share, so that one client can
/// fill it (the share has its own tests).
fn store_pages(pages: u64) -> Store {
    Store::new(StoreConfig {
        mem_limit_bytes: pages * PAGE_SIZE as u64,
        default_persistent_share_percent: 0,
        ..StoreConfig::default()
    })
}

fn client(s: &Store, domid: u32) -> ClientId {
    s.attach_client(domid, 1, "guest").unwrap().0
}

fn get(s: &Store, c: ClientId, p: u32, k: PageKey) -> Result<Option<Page>, TmemError> {
    let mut d = [0xAAu8; PAGE_SIZE];
    Ok(s.get(c, p, k, &mut d)?.then_some(d))
}

#[test]
fn private_ephemeral_get_is_exclusive() {
    let s = store_pages(16);
    let c = client(&s, 1);
    let (p, _) = s.new_pool(c, [0, 0], EP).unwrap();
    s.put(c, p, key(1, 0), &page(1)).unwrap();
    s.put(c, p, key(1, 1), &page(2)).unwrap();
    assert_eq!(get(&s, c, p, key(1, 0)), Ok(Some(page(1))));
    assert_eq!(get(&s, c, p, key(1, 0)), Ok(None));
    assert_eq!(get(&s, c, p, key(1, 1)), Ok(Some(page(2))));
    assert_eq!(get(&s, c, p, key(1, 1)), Err(TmemError::Empty));
    assert_eq!(s.stats().global.data_bytes, 0);
}

#[test]
fn persistent_and_shared_gets_are_not_exclusive() {
    let s = store_pages(16);
    s.set_shared_auth_required(false);
    let c = client(&s, 1);
    let (pp, _) = s.new_pool(c, [0, 0], PP).unwrap();
    let (sp, _) = s.new_pool(c, U1, ES).unwrap();
    for p in [pp, sp] {
        s.put(c, p, key(7, 3), &page(9)).unwrap();
        for _ in 0..3 {
            assert_eq!(get(&s, c, p, key(7, 3)), Ok(Some(page(9))));
        }
    }
}

#[test]
fn get_on_empty_pool_is_empty_and_miss_is_false() {
    let s = store_pages(16);
    let c = client(&s, 1);
    let (p, _) = s.new_pool(c, [0, 0], PP).unwrap();
    assert_eq!(get(&s, c, p, key(1, 0)), Err(TmemError::Empty));
    s.put(c, p, key(1, 0), &page(1)).unwrap();
    assert_eq!(get(&s, c, p, key(1, 1)), Ok(None));
    assert_eq!(get(&s, c, p, key(2, 0)), Ok(None));
}

#[test]
fn unknown_pool_ids_are_no_such_pool() {
    let s = store_pages(16);
    let c = client(&s, 1);
    let (p, _) = s.new_pool(c, [0, 0], PP).unwrap();
    assert_eq!(p, 0);
    for bad in [1, 15, 16, 63, 64, u32::MAX, 0x8000_0000] {
        assert_eq!(
            s.put(c, bad, key(1, 0), &page(1)),
            Err(TmemError::NoSuchPool)
        );
        assert_eq!(get(&s, c, bad, key(1, 0)), Err(TmemError::NoSuchPool));
        assert_eq!(s.flush_page(c, bad, key(1, 0)), Err(TmemError::NoSuchPool));
        assert_eq!(
            s.flush_object(c, bad, Oid([1, 0, 0])),
            Err(TmemError::NoSuchPool)
        );
        assert_eq!(s.destroy_pool(c, bad), Ok(false));
    }
    assert_eq!(s.destroy_pool(c, p), Ok(true));
    assert_eq!(s.destroy_pool(c, p), Ok(false));
    assert_eq!(s.put(c, p, key(1, 0), &page(1)), Err(TmemError::NoSuchPool));
    assert_eq!(
        s.put(ClientId(999), 0, key(1, 0), &page(1)),
        Err(TmemError::NoDevice)
    );
}

#[test]
fn pool_ids_are_lowest_free_and_limited() {
    let s = Store::new(StoreConfig {
        max_pools_per_client: 3,
        mem_limit_bytes: 1 << 20,
        ..StoreConfig::default()
    });
    let c = client(&s, 1);
    assert_eq!(s.new_pool(c, [0, 0], EP), Ok((0, false)));
    assert_eq!(s.new_pool(c, [0, 0], PP), Ok((1, false)));
    assert_eq!(s.new_pool(c, [0, 0], EP), Ok((2, false)));
    assert_eq!(s.new_pool(c, [0, 0], EP), Err(TmemError::NotPermitted));
    assert_eq!(s.destroy_pool(c, 1), Ok(true));
    assert_eq!(s.new_pool(c, [0, 0], EP), Ok((1, false)));
}

#[test]
fn duplicate_put_replaces() {
    let s = store_pages(16);
    let c = client(&s, 1);
    let (p, _) = s.new_pool(c, [0, 0], PP).unwrap();
    s.put(c, p, key(1, 0), &page(1)).unwrap();
    s.put(c, p, key(1, 0), &page(2)).unwrap();
    assert_eq!(get(&s, c, p, key(1, 0)), Ok(Some(page(2))));
    let st = s.stats();
    assert_eq!(st.global.pages, 1);
    assert_eq!(st.clients[0].pools[0].counters.dup_puts_replaced, 1);
}

#[test]
fn duplicate_put_that_cannot_be_stored_flushes_old_copy() {
    // One frame, held by a persistent page; the other key is a zero page. Re-putting the zero
    // page with data needs a frame that does not exist: the old copy must go.
    let s = store_pages(1);
    let c = client(&s, 1);
    let (p, _) = s.new_pool(c, [0, 0], PP).unwrap();
    s.put(c, p, key(1, 0), &page(1)).unwrap();
    s.put(c, p, key(1, 1), &[0u8; PAGE_SIZE]).unwrap();
    assert_eq!(
        s.put(c, p, key(1, 1), &page(2)),
        Err(TmemError::DupPutFlushed)
    );
    assert_eq!(get(&s, c, p, key(1, 1)), Ok(None));
    assert_eq!(get(&s, c, p, key(1, 0)), Ok(Some(page(1))));
    assert_eq!(s.stats().clients[0].pools[0].counters.dup_puts_flushed, 1);
}

#[test]
fn frozen_client_rules() {
    let s = store_pages(16);
    let c = client(&s, 1);
    let (p, _) = s.new_pool(c, [0, 0], PP).unwrap();
    s.put(c, p, key(1, 0), &page(1)).unwrap();
    s.put(c, p, key(1, 1), &page(1)).unwrap();
    s.set_frozen(c, true).unwrap();
    assert_eq!(s.put(c, p, key(2, 0), &page(2)), Err(TmemError::Frozen));
    assert_eq!(get(&s, c, p, key(2, 0)), Ok(None));
    // Duplicate puts, gets and flushes work (flushes return Ok: a documented departure).
    assert_eq!(s.put(c, p, key(1, 0), &page(3)), Ok(()));
    assert_eq!(get(&s, c, p, key(1, 0)), Ok(Some(page(3))));
    assert_eq!(s.flush_page(c, p, key(1, 0)), Ok(()));
    assert_eq!(get(&s, c, p, key(1, 0)), Ok(None));
    assert_eq!(s.flush_object(c, p, Oid([1, 0, 0])), Ok(()));
    assert_eq!(get(&s, c, p, key(1, 1)), Err(TmemError::Empty));
    s.set_frozen(c, false).unwrap();
    assert_eq!(s.put(c, p, key(2, 0), &page(2)), Ok(()));
}

#[test]
fn zero_pages_store_no_data_but_count() {
    let s = store_pages(4);
    let c = client(&s, 1);
    s.set_cap_pages(c, 3).unwrap();
    let (p, _) = s.new_pool(c, [0, 0], PP).unwrap();
    let z = [0u8; PAGE_SIZE];
    s.put(c, p, key(1, 0), &z).unwrap();
    s.put(c, p, key(1, 1), &z).unwrap();
    let st = s.stats();
    assert_eq!(st.global.data_bytes, 0);
    assert_eq!(st.global.zero_pages, 2);
    assert_eq!(st.clients[0].pages, 2);
    let mut d = [0xFFu8; PAGE_SIZE];
    assert_eq!(s.get(c, p, key(1, 0), &mut d), Ok(true));
    assert_eq!(d, z);
    // The cap counts page memory: zero pages take none, so they never reach it.
    for i in 2..8 {
        s.put(c, p, key(1, i), &z).unwrap();
    }
    assert_eq!(s.stats().clients[0].mem_bytes, 0);
    // A data page over a zero page takes a frame; zero over data gives it back.
    s.put(c, p, key(1, 0), &page(5)).unwrap();
    assert_eq!(s.stats().global.data_bytes, PAGE_SIZE as u64);
    assert_eq!(s.stats().clients[0].mem_bytes, PAGE_SIZE as u64);
    s.put(c, p, key(1, 0), &z).unwrap();
    assert_eq!(s.stats().global.data_bytes, 0);
    assert_eq!(s.stats().clients[0].mem_bytes, 0);
    assert_eq!(get(&s, c, p, key(1, 0)), Ok(Some(z)));
    // Three data pages fill the cap of three pages' memory.
    for i in 0..3 {
        s.put(c, p, key(2, i), &page(6)).unwrap();
    }
    assert_eq!(s.put(c, p, key(2, 3), &page(6)), Err(TmemError::OverCap));
}

#[test]
fn zero_page_fits_when_memory_is_full() {
    let s = store_pages(1);
    let c = client(&s, 1);
    let (p, _) = s.new_pool(c, [0, 0], PP).unwrap();
    s.put(c, p, key(1, 0), &page(1)).unwrap();
    assert_eq!(s.put(c, p, key(1, 1), &page(2)), Err(TmemError::NoMemory));
    assert_eq!(s.put(c, p, key(1, 1), &[0u8; PAGE_SIZE]), Ok(()));
}

#[test]
fn persistent_pages_are_never_evicted_and_no_memory_changes_nothing() {
    let s = store_pages(4);
    let c = client(&s, 1);
    let (p, _) = s.new_pool(c, [0, 0], PP).unwrap();
    for i in 0..4 {
        s.put(c, p, key(1, i), &page(i as u64)).unwrap();
    }
    assert_eq!(s.put(c, p, key(1, 9), &page(9)), Err(TmemError::NoMemory));
    let (e, _) = s.new_pool(c, [0, 0], EP).unwrap();
    assert_eq!(s.put(c, e, key(1, 0), &page(9)), Err(TmemError::NoMemory));
    for i in 0..4 {
        assert_eq!(get(&s, c, p, key(1, i)), Ok(Some(page(i as u64))));
    }
    assert_eq!(s.stats().clients[0].pools[0].counters.no_mem_puts, 1);
    assert_eq!(s.flush_kib(1 << 20), 0);
}

#[test]
fn ephemeral_pages_are_evicted_oldest_first() {
    let s = store_pages(4);
    let c = client(&s, 1);
    let (p, _) = s.new_pool(c, [0, 0], EP).unwrap();
    for i in 0..8u32 {
        s.put(c, p, key(1, i), &page(i as u64)).unwrap();
    }
    for i in 0..4 {
        assert_eq!(get(&s, c, p, key(1, i)), Ok(None), "{i}");
    }
    for i in 4..8 {
        assert_eq!(get(&s, c, p, key(1, i)), Ok(Some(page(i as u64))));
    }
    let st = s.stats();
    let g = &st.global;
    assert_eq!(g.evictions, 4);
    assert!(g.data_bytes <= 4 * PAGE_SIZE as u64);
    // Charged to the pool and its owner too.
    assert_eq!(st.clients[0].evictions, 4);
    assert_eq!(st.clients[0].pools[0].counters.evictions, 4);
}

/// Evictions and errors are charged to the client (and pool) they hit, not only counted
/// store-wide: the operator sees whose pages pressure takes and who sends bad requests.
#[test]
fn evictions_and_errors_are_counted_per_client() {
    let s = store_pages(4);
    let a = client(&s, 1);
    let b = client(&s, 2);
    let (pa, _) = s.new_pool(a, [0, 0], EP).unwrap();
    let (pb, _) = s.new_pool(b, [0, 0], EP).unwrap();
    for i in 0..4u32 {
        s.put(a, pa, key(1, i), &page(i as u64)).unwrap();
    }
    for i in 0..4u32 {
        s.put(b, pb, key(1, i), &page(i as u64)).unwrap();
    }
    assert_eq!(
        s.put(b, 77, key(1, 0), &page(1)),
        Err(TmemError::NoSuchPool)
    );
    assert!(s.flush_page(b, 78, key(1, 0)).is_err());
    let st = s.stats();
    let by_domid = |d: u32| st.clients.iter().find(|c| c.domid == d).unwrap();
    let (ca, cb) = (by_domid(1), by_domid(2));
    assert_eq!(st.global.evictions, ca.evictions + cb.evictions);
    assert!(
        ca.evictions >= 2,
        "the client over its share loses pages: {ca:?}"
    );
    assert_eq!(ca.pools[0].counters.evictions, ca.evictions);
    assert_eq!((ca.errors, cb.errors), (0, 2));
    assert_eq!(st.global.errored_ops, 2);
}

#[test]
fn weighted_lru_evicts_from_client_over_its_share() {
    let s = store_pages(8);
    let a = client(&s, 1);
    let b = client(&s, 2);
    let (pa, _) = s.new_pool(a, [0, 0], EP).unwrap();
    let (pb, _) = s.new_pool(b, [0, 0], EP).unwrap();
    // a's pages are the oldest, but a has weight 3 and only 4 of 8 pages: b (weight 1,
    // share 2 pages) is over its share and loses its own oldest first.
    s.set_weight(a, 3).unwrap();
    for i in 0..4 {
        s.put(a, pa, key(1, i), &page(i as u64)).unwrap();
    }
    for i in 0..4 {
        s.put(b, pb, key(1, i), &page(10 + i as u64)).unwrap();
    }
    s.put(b, pb, key(2, 0), &page(99)).unwrap();
    assert_eq!(get(&s, b, pb, key(1, 0)), Ok(None));
    for i in 0..4 {
        assert_eq!(get(&s, a, pa, key(1, i)), Ok(Some(page(i as u64))));
    }
}

#[test]
fn equal_weights_evict_global_oldest_when_balanced() {
    let s = store_pages(4);
    let a = client(&s, 1);
    let b = client(&s, 2);
    let (pa, _) = s.new_pool(a, [0, 0], EP).unwrap();
    let (pb, _) = s.new_pool(b, [0, 0], EP).unwrap();
    s.put(a, pa, key(1, 0), &page(1)).unwrap();
    s.put(b, pb, key(1, 0), &page(2)).unwrap();
    s.put(b, pb, key(1, 1), &page(3)).unwrap();
    s.put(a, pa, key(1, 1), &page(4)).unwrap();
    // Balanced (2 and 2): the global oldest, a's first page, goes.
    s.put(b, pb, key(1, 2), &page(5)).unwrap();
    assert_eq!(get(&s, a, pa, key(1, 0)), Ok(None));
    assert_eq!(get(&s, a, pa, key(1, 1)), Ok(Some(page(4))));
}

#[test]
fn shared_get_moves_page_to_mru() {
    let s = store_pages(2);
    s.set_shared_auth_required(false);
    let c = client(&s, 1);
    let (p, _) = s.new_pool(c, U1, ES).unwrap();
    s.put(c, p, key(1, 0), &page(1)).unwrap();
    s.put(c, p, key(1, 1), &page(2)).unwrap();
    assert_eq!(get(&s, c, p, key(1, 0)), Ok(Some(page(1))));
    s.put(c, p, key(1, 2), &page(3)).unwrap();
    assert_eq!(get(&s, c, p, key(1, 1)), Ok(None));
    assert_eq!(get(&s, c, p, key(1, 0)), Ok(Some(page(1))));
}

#[test]
fn cap_is_enforced_and_ephemeral_put_evicts_own_pages() {
    let s = store_pages(64);
    let a = client(&s, 1);
    let b = client(&s, 2);
    s.set_cap_pages(a, 2).unwrap();
    let (pe, _) = s.new_pool(a, [0, 0], EP).unwrap();
    let (pp, _) = s.new_pool(a, [0, 0], PP).unwrap();
    let (pb, _) = s.new_pool(b, [0, 0], EP).unwrap();
    s.put(b, pb, key(1, 0), &page(50)).unwrap();
    s.put(a, pe, key(1, 0), &page(1)).unwrap();
    s.put(a, pe, key(1, 1), &page(2)).unwrap();
    // Ephemeral put at cap: a's own oldest page goes, not b's.
    s.put(a, pe, key(1, 2), &page(3)).unwrap();
    assert_eq!(get(&s, a, pe, key(1, 0)), Ok(None));
    assert_eq!(get(&s, b, pb, key(1, 0)), Ok(Some(page(50))));
    assert_eq!(s.stats().clients[0].pages, 2);
    // A persistent put at cap does not push out ephemeral pages.
    assert_eq!(s.put(a, pp, key(1, 0), &page(4)), Err(TmemError::OverCap));
    assert_eq!(get(&s, a, pe, key(1, 1)), Ok(Some(page(2))));
    s.put(a, pp, key(1, 0), &page(4)).unwrap();
    // Persistent put at cap: refused.
    assert_eq!(s.put(a, pp, key(1, 1), &page(5)), Err(TmemError::OverCap));
    // Dup put at cap is fine.
    s.put(a, pp, key(1, 0), &page(6)).unwrap();
    s.set_cap_pages(a, 0).unwrap();
    s.put(a, pp, key(1, 1), &page(5)).unwrap();
}

#[test]
fn cap_over_with_only_persistent_pages_refuses_ephemeral_put() {
    let s = store_pages(64);
    let a = client(&s, 1);
    s.set_cap_pages(a, 1).unwrap();
    let (pe, _) = s.new_pool(a, [0, 0], EP).unwrap();
    let (pp, _) = s.new_pool(a, [0, 0], PP).unwrap();
    s.put(a, pp, key(1, 0), &page(4)).unwrap();
    assert_eq!(s.put(a, pe, key(1, 0), &page(1)), Err(TmemError::OverCap));
}

#[test]
fn shared_pool_auth_and_bad_uuids() {
    let s = Store::new(StoreConfig {
        max_auth_per_domain: 2,
        ..StoreConfig::default()
    });
    let a = client(&s, 1);
    let b = client(&s, 2);
    assert_eq!(s.new_pool(a, U1, ES), Err(TmemError::NotAuthorised));
    assert_eq!(s.new_pool(a, [0, 0], ES), Err(TmemError::NotPermitted));
    assert_eq!(s.new_pool(a, [!0, !0], ES), Err(TmemError::NotPermitted));
    assert_eq!(
        s.set_shared_auth(Identity::Xen { domid: 1 }, U1, true),
        Ok(true)
    );
    assert_eq!(
        s.set_shared_auth(Identity::Xen { domid: 1 }, U1, true),
        Ok(false)
    );
    assert_eq!(
        s.set_shared_auth(Identity::Xen { domid: 1 }, U2, true),
        Ok(true)
    );
    assert_eq!(
        s.set_shared_auth(Identity::Xen { domid: 1 }, [5, 5], true),
        Err(TmemError::NoMemory)
    );
    // Before the domain ever connected.
    assert_eq!(
        s.set_shared_auth(Identity::Xen { domid: 7 }, U1, true),
        Ok(true)
    );
    let (pa, _) = s.new_pool(a, U1, ES).unwrap();
    assert_eq!(s.new_pool(b, U1, ES), Err(TmemError::NotAuthorised));
    s.set_shared_auth_required(false);
    let (pb, _) = s.new_pool(b, U1, ES).unwrap();
    s.put(a, pa, key(1, 0), &page(1)).unwrap();
    assert_eq!(get(&s, b, pb, key(1, 0)), Ok(Some(page(1))));
    let st = s.stats();
    assert_eq!(st.shared_pools.len(), 1);
    assert_eq!(st.shared_pools[0].sharers, vec![1, 2]);
    assert_eq!(
        s.set_shared_auth(Identity::Xen { domid: 1 }, U1, false),
        Ok(true)
    );
    assert_eq!(
        s.set_shared_auth(Identity::Xen { domid: 1 }, U1, false),
        Ok(false)
    );
}

#[test]
fn shared_pool_lives_until_last_sharer_leaves() {
    let s = store_pages(16);
    s.set_shared_auth_required(false);
    let a = client(&s, 1);
    let b = client(&s, 2);
    let c = client(&s, 3);
    let (pa, _) = s.new_pool(a, U1, ES).unwrap();
    let (pb, _) = s.new_pool(b, U1, ES).unwrap();
    let (pc, _) = s.new_pool(c, U1, ES).unwrap();
    s.put(a, pa, key(1, 0), &page(1)).unwrap();
    assert_eq!(s.destroy_pool(a, pa), Ok(true));
    // a's pages stay for the others.
    assert_eq!(get(&s, b, pb, key(1, 0)), Ok(Some(page(1))));
    assert!(s.destroy_client(b));
    s.detach_client(c);
    let st = s.stats();
    assert!(st.shared_pools.is_empty());
    assert_eq!(st.global.pages, 0);
    assert_eq!(st.global.data_bytes, 0);
    let _ = pc;
}

#[test]
fn shared_pool_limit() {
    let s = Store::new(StoreConfig {
        max_shared_pools: 1,
        ..StoreConfig::default()
    });
    s.set_shared_auth_required(false);
    let a = client(&s, 1);
    s.new_pool(a, U1, ES).unwrap();
    assert_eq!(s.new_pool(a, U2, ES), Err(TmemError::NotPermitted));
}

#[test]
fn attach_detach_reattach() {
    let s = store_pages(16);
    let (c, how) = s.attach_client(5, 100, "vm").unwrap();
    assert_eq!(how, Attach::New);
    assert_eq!(s.attach_client(5, 100, "vm"), Err(TmemError::NotPermitted));
    let (e, _) = s.new_pool(c, [0, 0], EP).unwrap();
    let (p0, _) = s.new_pool(c, [0, 0], PP).unwrap();
    let (p, _) = s.new_pool(c, U1, PP).unwrap();
    s.put(c, e, key(1, 0), &page(1)).unwrap();
    s.put(c, p, key(1, 0), &page(2)).unwrap();
    s.put(c, p0, key(1, 0), &page(3)).unwrap();
    s.detach_client(c);
    assert_eq!(s.put(c, p, key(1, 0), &page(2)), Err(TmemError::NoDevice));
    assert_eq!(s.stats().global.pages, 1);
    assert_eq!(s.attach_client(5, 100, "vm"), Ok((c, Attach::Reattached)));
    // Not adopted yet: invisible.
    assert_eq!(get(&s, c, p, key(1, 0)), Err(TmemError::NoSuchPool));
    // A new pool does not take the kept pool's id.
    let (n, re) = s.new_pool(c, [0, 0], EP).unwrap();
    assert!(!re);
    assert_ne!(n, p);
    assert_eq!(s.new_pool(c, U1, PP), Ok((p, true)));
    assert_eq!(get(&s, c, p, key(1, 0)), Ok(Some(page(2))));
    // A different instance of the same domid is a new client.
    s.detach_client(c);
    let (c2, how) = s.attach_client(5, 101, "vm").unwrap();
    assert_eq!(how, Attach::New);
    assert_ne!(c2, c);
    assert_eq!(s.new_pool(c2, U1, PP), Ok((0, false)));
    assert_eq!(s.stats().global.pages, 0);
    assert_eq!(s.client_by_domid(5), Some(c2));
    assert!(s.destroy_client(c2));
    assert!(!s.destroy_client(c2));
    assert_eq!(s.client_by_domid(5), None);
}

#[test]
fn flush_page_object_and_destroy_free_memory() {
    let s = store_pages(16);
    let c = client(&s, 1);
    let (p, _) = s.new_pool(c, [0, 0], PP).unwrap();
    for i in 0..4 {
        s.put(c, p, key(1, i), &page(i as u64)).unwrap();
        s.put(c, p, key(2, i), &page(i as u64)).unwrap();
    }
    s.flush_page(c, p, key(1, 0)).unwrap();
    s.flush_page(c, p, key(1, 0)).unwrap();
    assert_eq!(get(&s, c, p, key(1, 0)), Ok(None));
    s.flush_object(c, p, Oid([1, 0, 0])).unwrap();
    assert_eq!(get(&s, c, p, key(1, 1)), Ok(None));
    assert_eq!(get(&s, c, p, key(2, 1)), Ok(Some(page(1))));
    let st = s.stats();
    assert_eq!(st.global.pages, 4);
    assert_eq!(st.global.objects, 1);
    let pc = &st.clients[0].pools[0].counters;
    assert_eq!((pc.found_flushes, pc.total_flushes), (1, 2));
    assert_eq!((pc.found_obj_flushes, pc.total_obj_flushes), (1, 1));
    assert_eq!(st.clients[0].invalidates, 3);
    s.destroy_pool(c, p).unwrap();
    let g = s.stats().global;
    assert_eq!((g.pages, g.objects, g.data_bytes), (0, 0, 0));
}

#[test]
fn freeable_and_flush_kib() {
    let s = store_pages(16);
    let c = client(&s, 1);
    let (e, _) = s.new_pool(c, [0, 0], EP).unwrap();
    let (p, _) = s.new_pool(c, [0, 0], PP).unwrap();
    for i in 0..6 {
        s.put(c, e, key(1, i), &page(i as u64)).unwrap();
    }
    s.put(c, e, key(1, 9), &[0u8; PAGE_SIZE]).unwrap();
    s.put(c, p, key(1, 0), &page(1)).unwrap();
    assert_eq!(s.freeable_pages(), 6);
    assert_eq!(s.flush_kib(9), 12);
    assert_eq!(s.freeable_pages(), 3);
    assert_eq!(s.flush_kib(1000), 12);
    assert_eq!(s.freeable_pages(), 0);
    assert_eq!(get(&s, c, p, key(1, 0)), Ok(Some(page(1))));
}

#[test]
fn stats_count_ops_and_errors_and_serialise() {
    let s = store_pages(16);
    let c = client(&s, 1);
    let (p, _) = s.new_pool(c, [0, 0], PP).unwrap();
    s.put(c, p, key(1, 0), &page(1)).unwrap();
    let _ = get(&s, c, p, key(1, 0));
    let _ = get(&s, c, p, key(1, 1));
    let _ = s.put(c, 9, key(1, 0), &page(1));
    let st = s.stats();
    assert_eq!(st.global.total_ops, 5);
    assert_eq!(st.global.errored_ops, 1);
    let cl = &st.clients[0];
    assert_eq!(
        (
            cl.puts,
            cl.pers_puts,
            cl.succ_gets,
            cl.failed_gets,
            cl.pers_gets
        ),
        (1, 1, 1, 1, 1)
    );
    let pc = &cl.pools[0].counters;
    assert_eq!(
        (pc.found_gets, pc.total_gets, pc.good_puts, pc.total_puts),
        (1, 2, 1, 1)
    );
    assert_eq!(cl.pools[0].kind, "PP");
    assert!(st.global.metadata_bytes > 0);
    // Serde round trip through a self-describing format is the control socket's business;
    // here: the types implement the traits.
    fn is_serde<T: serde::Serialize + for<'a> serde::Deserialize<'a>>(_: &T) {}
    is_serde(&st);
    s.set_weight(c, 4).unwrap();
    s.set_compress(c, true).unwrap();
    let cl = &s.stats().clients[0];
    assert_eq!((cl.weight, cl.compress), (4, true));
}

#[test]
fn store_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Store>();
}

#[test]
fn prefault_allocates_every_frame_once_and_puts_still_work() {
    let store = Store::new(StoreConfig {
        mem_limit_bytes: 1030 * PAGE_SIZE as u64,
        default_persistent_share_percent: 0,
        ..StoreConfig::default()
    });
    let (c, _) = store.attach_client(1, 1, "p").unwrap();
    let (pool, _) = store
        .new_pool(c, [1, 2], PoolKind::PrivatePersistent)
        .unwrap();
    let page: Page = [7; PAGE_SIZE];
    let key = |i: u32| PageKey {
        oid: Oid([1, 0, 0]),
        index: i,
    };
    store.put(c, pool, key(0), &page).unwrap();
    // The first chunk was faulted by that put; the rest (1030 - 512 frames) by prefault.
    assert_eq!(store.prefault(), (1030 - 512) * PAGE_SIZE as u64);
    assert_eq!(
        store.prefault(),
        0,
        "a second prefault has nothing left to do"
    );
    for i in 1..1030 {
        store.put(c, pool, key(i), &page).unwrap();
    }
    let mut out: Page = [0; PAGE_SIZE];
    assert!(store.get(c, pool, key(1029), &mut out).unwrap());
    assert!(out == page);
    // The frame overhead kept as chunks are allocated: 1030 frames in 3 chunks.
    let per = std::mem::size_of::<Mutex<Page>>() - PAGE_SIZE;
    let chunk = std::mem::size_of::<Box<[Mutex<Page>]>>();
    assert_eq!(
        store.frames.overhead_bytes(),
        (1030 * per + 3 * chunk) as u64
    );
}

/// The object map bytes kept incrementally match a walk over every live object.
fn check_obj_heap_bytes(s: &Store) {
    let m = lock(&s.meta);
    let walked: u64 = m.objs.iter().flatten().map(|o| o.pages.heap_bytes()).sum();
    assert_eq!(m.obj_heap_bytes, walked);
}

#[test]
fn persistent_share_caps_a_greedy_client_but_not_the_others() {
    // 100 frames, default share 25%: 25 persistent pages per client.
    let s = Store::new(StoreConfig {
        mem_limit_bytes: 100 * PAGE_SIZE as u64,
        ..StoreConfig::default()
    });
    let greedy = client(&s, 1);
    let good = client(&s, 2);
    let (gp, _) = s.new_pool(greedy, [0, 0], PP).unwrap();
    let (ge, _) = s.new_pool(greedy, [0, 0], EP).unwrap();
    let (op, _) = s.new_pool(good, [0, 0], PP).unwrap();
    let mut stored = 0;
    for i in 0..100 {
        match s.put(greedy, gp, key(1, i), &page(i as u64)) {
            Ok(()) => stored += 1,
            Err(e) => {
                assert_eq!(e, TmemError::OverCap);
                break;
            }
        }
    }
    assert_eq!(stored, 25);
    // Zero pages count too; ephemeral puts stay governed by the LRU only.
    assert_eq!(
        s.put(greedy, gp, key(2, 0), &[0u8; PAGE_SIZE]),
        Err(TmemError::OverCap)
    );
    s.put(greedy, ge, key(1, 0), &page(7)).unwrap();
    // A duplicate put at the limit still replaces the data.
    s.put(greedy, gp, key(1, 0), &page(99)).unwrap();
    assert_eq!(get(&s, greedy, gp, key(1, 0)), Ok(Some(page(99))));
    for i in 0..25 {
        s.put(good, op, key(1, i), &page(1000 + i as u64)).unwrap();
    }
    // A flush makes room again.
    s.flush_page(greedy, gp, key(1, 3)).unwrap();
    s.put(greedy, gp, key(3, 0), &page(5)).unwrap();
    // An administrator's cap replaces the share: 0 lifts it, a number sets it.
    s.set_cap_pages(greedy, 0).unwrap();
    s.put(greedy, gp, key(4, 0), &page(6)).unwrap();
    s.set_cap_pages(greedy, 27).unwrap();
    assert_eq!(
        s.put(greedy, gp, key(4, 1), &page(6)),
        Err(TmemError::OverCap)
    );
    // Destroying the pool gives the whole share back at once.
    assert_eq!(s.destroy_pool(greedy, gp), Ok(true));
    let (gp, _) = s.new_pool(greedy, [0, 0], PP).unwrap();
    s.put(greedy, gp, key(1, 0), &page(8)).unwrap();
}

#[test]
fn share_rule_rounds_and_zero_means_none() {
    let cfg = |mib: u64, pct: u32| StoreConfig {
        mem_limit_bytes: mib << 20,
        default_persistent_share_percent: pct,
        ..StoreConfig::default()
    };
    assert_eq!(cfg(256, 25).persistent_share_pages(), 16384);
    assert_eq!(cfg(256, 0).persistent_share_pages(), 0);
    assert_eq!(cfg(256, 250).persistent_share_pages(), 65536);
    let tiny = StoreConfig {
        mem_limit_bytes: 2 * PAGE_SIZE as u64,
        ..StoreConfig::default()
    };
    assert_eq!(tiny.persistent_share_pages(), 1);
}

#[test]
fn destroyed_pool_is_gone_at_once_and_reclaimed_in_chunks() {
    let s = store_pages(64);
    s.set_manual_reap(8);
    let a = client(&s, 1);
    let b = client(&s, 2);
    let (ap, _) = s.new_pool(a, [0, 0], PP).unwrap();
    let (bp, _) = s.new_pool(b, [0, 0], PP).unwrap();
    for o in 0..4 {
        for i in 0..10 {
            s.put(a, ap, key(o, i), &page(o * 100 + i as u64)).unwrap();
        }
    }
    s.put(a, ap, key(9, 0), &[0u8; PAGE_SIZE]).unwrap();
    for i in 0..10 {
        s.put(b, bp, key(1, i), &page(5000 + i as u64)).unwrap();
    }
    check_obj_heap_bytes(&s);
    assert_eq!(s.destroy_pool(a, ap), Ok(true));
    // Unlinked: the id now names a new, empty pool; nothing of the old one is served.
    assert_eq!(get(&s, a, ap, key(0, 0)), Err(TmemError::NoSuchPool));
    let (np, _) = s.new_pool(a, [0, 0], PP).unwrap();
    assert_eq!(np, ap);
    assert_eq!(get(&s, a, np, key(0, 0)), Err(TmemError::Empty));
    let st = s.stats();
    // Still stored and counted until freed; no longer charged to the client.
    assert_eq!(st.global.pages, 51);
    assert_eq!(st.global.data_bytes, 50 * PAGE_SIZE as u64);
    assert_eq!(st.clients[0].pages, 0);
    s.put(a, np, key(0, 0), &page(77)).unwrap();
    let mut steps = 0;
    let mut last = s.stats().global.pages;
    loop {
        let more = s.reap_step();
        steps += 1;
        let g = s.stats().global;
        // At most one chunk (8 pages) per step.
        assert!(last - g.pages <= 8, "{} -> {}", last, g.pages);
        last = g.pages;
        // The other client's pages and the new pool's page are untouched, every byte.
        assert_eq!(get(&s, b, bp, key(1, 3)), Ok(Some(page(5003))));
        assert_eq!(get(&s, a, np, key(0, 0)), Ok(Some(page(77))));
        assert_eq!(get(&s, a, np, key(0, 1)), Ok(None));
        check_obj_heap_bytes(&s);
        if !more {
            break;
        }
    }
    assert!(steps >= 51 / 8, "{steps} steps");
    let g = s.stats().global;
    assert_eq!((g.pages, g.objects), (11, 2));
    assert_eq!(g.data_bytes, 11 * PAGE_SIZE as u64);
    assert_eq!(g.zero_pages, 0);
}

#[test]
fn reclaim_steps_are_bounded() {
    let s = store_pages(64);
    s.set_manual_reap(8);
    let a = client(&s, 1);
    let (ap, _) = s.new_pool(a, [0, 0], EP).unwrap();
    for i in 0..40 {
        s.put(a, ap, key(i as u64 / 20, i % 20), &page(i as u64))
            .unwrap();
    }
    assert_eq!(s.destroy_pool(a, ap), Ok(true));
    let mut before = s.stats().global.pages;
    assert_eq!(before, 40);
    while s.reap_step() {
        let now = s.stats().global.pages;
        assert!(before - now <= 8, "{before} -> {now}: more than one chunk");
        before = now;
    }
    assert_eq!(s.stats().global.pages, 0);
}

#[test]
fn puts_needing_memory_help_reclaim_and_eviction_skips_nothing() {
    // Memory full of a destroyed pool's pages: a put takes a frame from the reclaim, not an
    // error, and eviction of pages waiting for reclaim is harmless.
    let s = store_pages(16);
    s.set_manual_reap(4);
    let a = client(&s, 1);
    let b = client(&s, 2);
    let (ap, _) = s.new_pool(a, [0, 0], PP).unwrap();
    let (ae, _) = s.new_pool(a, [0, 0], EP).unwrap();
    for i in 0..8 {
        s.put(a, ap, key(1, i), &page(i as u64)).unwrap();
        s.put(a, ae, key(1, i), &page(50 + i as u64)).unwrap();
    }
    assert!(s.destroy_client(a));
    let (bp, _) = s.new_pool(b, [0, 0], PP).unwrap();
    for i in 0..16 {
        s.put(b, bp, key(2, i), &page(900 + i as u64)).unwrap();
    }
    for i in 0..16 {
        assert_eq!(get(&s, b, bp, key(2, i)), Ok(Some(page(900 + i as u64))));
    }
    while s.reap_step() {}
    let g = s.stats().global;
    assert_eq!((g.pages, g.eph_pages, g.objects), (16, 0, 1));
    // The destroyed client's account (its LRU head) was freed once its list was empty, and
    // new clients work.
    let c = client(&s, 3);
    let (ce, _) = s.new_pool(c, [0, 0], EP).unwrap();
    assert_eq!(s.flush_kib(16), 0);
    assert_eq!(s.put(c, ce, key(1, 1), &page(3)), Err(TmemError::NoMemory));
}

#[test]
fn big_object_flush_and_big_pool_destroy_leave_nothing() {
    // More than one chunk in one object, and a pool of many objects, on the automatic path.
    let n = (REAP_CHUNK * 2 + 100) as u32;
    let s = store_pages(2 * n as u64 + 16);
    let a = client(&s, 1);
    let (p, _) = s.new_pool(a, [0, 0], PP).unwrap();
    for i in 0..n {
        s.put(a, p, key(1, i), &page(i as u64)).unwrap();
        s.put(a, p, key(2 + i as u64, 0), &page(i as u64)).unwrap();
    }
    s.put(a, p, key(1, n + 5000), &page(1)).unwrap(); // sparse from here on
    check_obj_heap_bytes(&s);
    s.flush_object(a, p, Oid([1, 0, 0])).unwrap();
    assert_eq!(get(&s, a, p, key(1, 5)), Ok(None));
    let g = s.stats().global;
    assert_eq!((g.pages, g.objects), (n as u64, n as u64));
    check_obj_heap_bytes(&s);
    // A new object with the same id starts empty.
    s.put(a, p, key(1, 7), &page(42)).unwrap();
    assert_eq!(get(&s, a, p, key(1, 7)), Ok(Some(page(42))));
    assert_eq!(get(&s, a, p, key(1, 8)), Ok(None));
    assert_eq!(s.destroy_pool(a, p), Ok(true));
    let g = s.stats().global;
    assert_eq!((g.pages, g.objects, g.data_bytes), (0, 0, 0));
    assert_eq!(lock(&s.meta).obj_heap_bytes, 0);
}

#[test]
fn a_big_destroy_releases_the_lock_every_chunk() {
    // The automatic path, as tmemd uses it: destroy_pool frees everything before it returns,
    // in chunks of at most REAP_CHUNK pages (plus objects), one lock acquisition each.
    let n = 3 * REAP_CHUNK as u64 + 5;
    let s = store_pages(n + 8);
    let a = client(&s, 1);
    let (p, _) = s.new_pool(a, [0, 0], PP).unwrap();
    for i in 0..n {
        s.put(a, p, key(i / 512, (i % 512) as u32), &page(i))
            .unwrap();
    }
    let objects = n.div_ceil(512);
    let before = lock(&s.meta).reap_chunks_run;
    assert_eq!(s.destroy_pool(a, p), Ok(true));
    let chunks = lock(&s.meta).reap_chunks_run - before;
    let least = (n + objects).div_ceil(REAP_CHUNK as u64);
    assert!(chunks >= least, "{chunks} lock acquisitions for {n} pages");
    let g = s.stats().global;
    assert_eq!((g.pages, g.objects, g.data_bytes), (0, 0, 0));
}

/// Local identities live beside Xen ones and never collide; a live local client cannot be
/// taken over by another instance (old code destroyed its pools), a detached one can.
#[test]
fn local_identity_is_separate_and_cannot_be_taken_over() {
    let s = store_pages(16);
    let xen = s.attach_client(5, 100, "xen").unwrap().0;
    let me = Identity::Local {
        uid: 1000,
        label: 5,
    };
    let (c, how) = s.attach(me, 100, "local").unwrap();
    assert_eq!(how, Attach::New);
    assert_ne!(c, xen);
    assert_eq!(s.client_by_identity(me), Some(c));
    assert_eq!(s.client_by_domid(5), Some(xen));
    let (p, _) = s.new_pool(c, U1, PP).unwrap();
    s.put(c, p, key(1, 0), &page(7)).unwrap();
    // Same instance while attached: refused, the client stays.
    assert_eq!(s.attach(me, 100, "x"), Err(AttachRefused::Attached(me)));
    // Another instance while attached: refused, pools intact.
    assert_eq!(
        s.attach(me, 101, "thief"),
        Err(AttachRefused::LiveTakeover {
            identity: me,
            live: 100
        })
    );
    assert_eq!(get(&s, c, p, key(1, 0)), Ok(Some(page(7))));
    // Another uid with the same label is another client.
    let other = Identity::Local {
        uid: 1001,
        label: 5,
    };
    let (c3, _) = s.attach(other, 101, "other").unwrap();
    assert_ne!(c3, c);
    let st = s.stats();
    let ids: Vec<String> = st
        .clients
        .iter()
        .map(|c| c.identity().to_string())
        .collect();
    assert_eq!(ids, ["5", "local:1000:5", "local:1001:5"]);
    // Shared-pool authorisation is per identity.
    assert_eq!(s.set_shared_auth(me, U2, true), Ok(true));
    assert!(s.new_pool(c, U2, ES).is_ok());
    assert_eq!(s.new_pool(c3, U2, ES), Err(TmemError::NotAuthorised));
    assert_eq!(s.new_pool(xen, U2, ES), Err(TmemError::NotAuthorised));
    assert_eq!(s.stats().shared_pools[0].local_sharers, ["local:1000:5"]);
    // Once detached, a restarted guest (new instance) replaces it.
    s.detach_client(c);
    let (c2, how) = s.attach(me, 101, "restarted").unwrap();
    assert_eq!(how, Attach::New);
    assert_ne!(c2, c);
    // Xen keeps its old rule: a new instance of an attached domain replaces it.
    let (x2, how) = s.attach_client(5, 101, "xen2").unwrap();
    assert_eq!(how, Attach::New);
    assert_ne!(x2, xen);
}

#[test]
fn expiry_of_an_old_detach_never_destroys_a_reattached_client() {
    let s = store_pages(16);
    let (c, _) = s.attach_client(5, 100, "vm").unwrap();
    let (p, _) = s.new_pool(c, U1, PP).unwrap();
    s.put(c, p, key(1, 0), &page(1)).unwrap();
    let first = s.detach_client(c);
    // The guest reattaches just as the grace period of its first detach ends.
    assert_eq!(s.attach_client(5, 100, "vm"), Ok((c, Attach::Reattached)));
    assert!(!s.expire_detached(c, first), "an attached client expired");
    assert_eq!(s.new_pool(c, U1, PP), Ok((p, true)));
    assert_eq!(get(&s, c, p, key(1, 0)), Ok(Some(page(1))));
    // It leaves again: the expiry of the first detach is stale, only the new one counts.
    let second = s.detach_client(c);
    assert_ne!(first, second);
    assert!(!s.expire_detached(c, first), "a stale detach epoch expired");
    assert!(s.expire_detached(c, second));
    assert_eq!(s.client_by_domid(5), None);
    assert_eq!(s.stats().global.pages, 0);
}

#[test]
fn a_poisoned_store_fails_stop_instead_of_recovering() {
    let s = store_pages(16);
    let c = client(&s, 1);
    let (p, _) = s.new_pool(c, [0, 0], PP).unwrap();
    assert!(!s.is_poisoned());
    std::thread::scope(|t| {
        let _ = t
            .spawn(|| {
                let _held = s.meta.lock();
                panic!("a bug in the middle of a metadata update");
            })
            .join();
    });
    assert!(s.is_poisoned());
    let later = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        s.put(c, p, key(1, 0), &page(1))
    }));
    assert!(
        later.is_err(),
        "a call on a poisoned store went on: {later:?}"
    );
}

// ---- same-filled pages -------------------------------------------------------------------

/// A page that repeats `w.to_le_bytes()`.
fn same(w: u64) -> Page {
    let mut p = [0u8; PAGE_SIZE];
    tmem_abi::page::fill_page(&mut p, w);
    p
}

/// Words of every class: zero, all ones, bytes that differ inside the word, one bit.
const WORDS: [u64; 4] = [0, u64::MAX, 0x0102_0304_0506_0708, 1 << 63];

/// A durable store on a new memfd, `frames` frames, no persistent share.
fn durable_pages(frames: u64) -> Store {
    let cfg = StoreConfig {
        mem_limit_bytes: frames * PAGE_SIZE as u64,
        default_persistent_share_percent: 0,
        ..StoreConfig::default()
    };
    Store::open_durable(cfg, PageFile::memfd("same").unwrap())
        .unwrap()
        .0
}

/// The store a tmemd restarted on `s`'s page file serves (its client reattached), with
/// what the recovery found.
fn restart(s: Store) -> (Store, Recovery, ClientId, u32) {
    let fd = s.page_file().unwrap().try_clone_fd().unwrap();
    let cfg = s.config();
    drop(s);
    let (s, rec) = Store::open_durable(cfg, PageFile::from_fd(fd, "same")).unwrap();
    let c = client(&s, 1);
    let (p, re) = s.new_pool(c, U1, PP).unwrap();
    assert!(re, "the persistent pool comes back");
    (s, rec, c, p)
}

#[test]
fn same_filled_pages_of_any_word_store_no_data_and_read_back_exactly() {
    let s = store_pages(16);
    s.set_shared_auth_required(false);
    let c = client(&s, 1);
    let mut last_byte = [0u8; PAGE_SIZE];
    last_byte[PAGE_SIZE - 1] = 1;
    let mut first_byte = same(u64::MAX);
    first_byte[0] = 0xfe;
    for kind in [PP, ES, EP] {
        let uuid = if kind == ES { U2 } else { [0, 0] };
        let (p, _) = s.new_pool(c, uuid, kind).unwrap();
        for (i, w) in WORDS.iter().enumerate() {
            s.put(c, p, key(1, i as u32), &same(*w)).unwrap();
        }
        // Not same-filled: these take frames.
        s.put(c, p, key(2, 0), &last_byte).unwrap();
        s.put(c, p, key(2, 1), &first_byte).unwrap();
        let g = s.stats().global;
        assert_eq!(g.data_bytes, 2 * PAGE_SIZE as u64, "{kind:?}");
        assert_eq!((g.same_filled_pages, g.zero_pages), (4, 1), "{kind:?}");
        for (i, w) in WORDS.iter().enumerate() {
            assert_eq!(
                get(&s, c, p, key(1, i as u32)),
                Ok(Some(same(*w))),
                "{w:#x}"
            );
        }
        assert_eq!(get(&s, c, p, key(2, 0)), Ok(Some(last_byte)));
        assert_eq!(get(&s, c, p, key(2, 1)), Ok(Some(first_byte)));
        // Private ephemeral gets took their pages; the others are flushed here.
        s.flush_object(c, p, Oid([1, 0, 0])).unwrap();
        s.flush_object(c, p, Oid([2, 0, 0])).unwrap();
        let g = s.stats().global;
        assert_eq!(
            (g.pages, g.data_bytes, g.same_filled_pages, g.zero_pages),
            (0, 0, 0, 0)
        );
    }
}

#[test]
fn duplicate_puts_move_between_same_filled_and_data_pages() {
    for durable in [false, true] {
        let s = if durable {
            durable_pages(16)
        } else {
            store_pages(16)
        };
        let c = client(&s, 1);
        let (p, _) = s.new_pool(c, U1, PP).unwrap();
        let k = key(1, 0);
        // (page, frames in use, same-filled pages, zero pages) after each duplicate put.
        let steps = [
            (page(1), 1, 0, 0),
            (same(WORDS[2]), 0, 1, 0),
            (same(WORDS[1]), 0, 1, 0),
            (same(0), 0, 1, 1),
            (same(WORDS[3]), 0, 1, 0),
            (page(2), 1, 0, 0),
            (same(0), 0, 1, 1),
            (page(3), 1, 0, 0),
        ];
        let mut s = s;
        let (mut c, mut p) = (c, p);
        for (n, (pg, frames, same_n, zero_n)) in steps.into_iter().enumerate() {
            s.put(c, p, k, &pg).unwrap();
            let g = s.stats().global;
            let what = format!("durable {durable}, step {n}");
            assert_eq!(g.data_bytes, frames * PAGE_SIZE as u64, "{what}");
            assert_eq!(
                (g.same_filled_pages, g.zero_pages),
                (same_n, zero_n),
                "{what}"
            );
            assert_eq!(g.pages, 1, "{what}");
            assert_eq!(get(&s, c, p, k), Ok(Some(pg)), "{what}");
            if durable {
                let (s2, rec, c2, p2) = restart(s);
                assert_eq!(
                    (
                        rec.pages,
                        rec.same_filled_pages,
                        rec.zero_pages,
                        rec.superseded
                    ),
                    (1, same_n, zero_n, 0),
                    "{what}"
                );
                assert_eq!(get(&s2, c2, p2, k), Ok(Some(pg)), "{what}, after a restart");
                (s, c, p) = (s2, c2, p2);
            }
        }
    }
}

#[test]
fn same_filled_puts_into_full_memory() {
    for durable in [false, true] {
        // 8 frames (no frame kept back for duplicates below 64), all holding data.
        let s = if durable {
            durable_pages(8)
        } else {
            store_pages(8)
        };
        let c = client(&s, 1);
        let (p, _) = s.new_pool(c, U1, PP).unwrap();
        for i in 0..8 {
            s.put(c, p, key(1, i), &page(i as u64 + 10)).unwrap();
        }
        let what = format!("durable {durable}");
        assert_eq!(s.put(c, p, key(2, 0), &page(1)), Err(TmemError::NoMemory));
        // A new same-filled page fits with memory full.
        s.put(c, p, key(2, 0), &same(WORDS[2])).unwrap();
        // Same-filled over same-filled, another word: in place, or a new record.
        s.put(c, p, key(2, 0), &same(WORDS[1])).unwrap();
        s.put(c, p, key(2, 0), &same(WORDS[1])).unwrap();
        assert_eq!(get(&s, c, p, key(2, 0)), Ok(Some(same(WORDS[1]))), "{what}");
        // Data over a same-filled page needs a frame that does not exist: the put fails,
        // keeping the old copy only when asked to.
        assert_eq!(
            s.put_keeping_old(c, p, key(2, 0), &page(2)),
            Err(TmemError::NoMemory)
        );
        assert_eq!(get(&s, c, p, key(2, 0)), Ok(Some(same(WORDS[1]))), "{what}");
        assert_eq!(
            s.put(c, p, key(2, 0), &page(2)),
            Err(TmemError::DupPutFlushed)
        );
        assert_eq!(get(&s, c, p, key(2, 0)), Ok(None), "{what}");
        // Same-filled over data gives the frame back.
        s.put(c, p, key(1, 3), &same(WORDS[3])).unwrap();
        let g = s.stats().global;
        assert_eq!(g.frames_free, 1, "{what}");
        assert_eq!((g.same_filled_pages, g.zero_pages), (1, 0), "{what}");
        s.put(c, p, key(1, 4), &same(0)).unwrap();
        assert_eq!(s.stats().global.frames_free, 2, "{what}");
        for i in [0, 1, 2, 5, 6, 7] {
            assert_eq!(get(&s, c, p, key(1, i)), Ok(Some(page(i as u64 + 10))));
        }
        if durable {
            let (s, rec, c, p) = restart(s);
            assert_eq!(
                (rec.pages, rec.same_filled_pages, rec.zero_pages),
                (8, 2, 1)
            );
            assert_eq!(get(&s, c, p, key(1, 3)), Ok(Some(same(WORDS[3]))));
            assert_eq!(get(&s, c, p, key(1, 4)), Ok(Some(same(0))));
            assert_eq!(get(&s, c, p, key(1, 5)), Ok(Some(page(15))));
        }
    }
}

#[test]
fn the_frameless_limit_counts_every_same_filled_page() {
    let s = store_pages(16);
    s.meta().max_same = 3;
    let c = client(&s, 1);
    let (p, _) = s.new_pool(c, [0, 0], PP).unwrap();
    for (i, w) in WORDS.iter().enumerate() {
        s.put(c, p, key(1, i as u32), &same(*w)).unwrap();
    }
    // Three kept without a frame, the fourth in a frame: still served exactly.
    let g = s.stats().global;
    assert_eq!((g.same_filled_pages, g.data_bytes), (3, PAGE_SIZE as u64));
    for (i, w) in WORDS.iter().enumerate() {
        assert_eq!(get(&s, c, p, key(1, i as u32)), Ok(Some(same(*w))));
    }
    // A duplicate refilled in place stays in its frame at the limit, and leaves it below.
    s.put(c, p, key(1, 3), &same(7)).unwrap();
    assert_eq!(s.stats().global.data_bytes, PAGE_SIZE as u64);
    s.flush_page(c, p, key(1, 0)).unwrap();
    s.put(c, p, key(1, 3), &same(8)).unwrap();
    let g = s.stats().global;
    assert_eq!((g.same_filled_pages, g.data_bytes), (3, 0));
    assert_eq!(get(&s, c, p, key(1, 3)), Ok(Some(same(8))));
}

#[test]
fn durable_same_filled_pages_are_bounded_by_their_records() {
    // 8 frames: 16 metadata records (two per frame). The 17th same-filled persistent page
    // takes a frame.
    let s = durable_pages(8);
    let c = client(&s, 1);
    let (p, _) = s.new_pool(c, U1, PP).unwrap();
    for i in 0..17u32 {
        s.put(c, p, key(1, i), &same(i as u64 * 0x0101_0101_0101_0101))
            .unwrap();
    }
    let g = s.stats().global;
    assert_eq!((g.same_filled_pages, g.data_bytes), (16, PAGE_SIZE as u64));
    let (s, rec, c, p) = restart(s);
    assert_eq!(
        (rec.pages, rec.same_filled_pages, rec.zero_pages),
        (17, 16, 1)
    );
    for i in 0..17u32 {
        assert_eq!(
            get(&s, c, p, key(1, i)),
            Ok(Some(same(i as u64 * 0x0101_0101_0101_0101)))
        );
    }
}

#[test]
fn a_zero_flagged_record_is_the_word_0_whatever_its_last_word() {
    // Format 1.0 wrote zero pages as ZERO records with a 0 last word; a ZERO record means
    // the word 0 even if that word were not 0, and only SAME records carry another word.
    let s = durable_pages(16);
    let c = client(&s, 1);
    let (p, _) = s.new_pool(c, U1, PP).unwrap();
    s.put(c, p, key(1, 0), &same(0)).unwrap();
    s.put(c, p, key(1, 1), &same(WORDS[2])).unwrap();
    let fd = s.page_file().unwrap().try_clone_fd().unwrap();
    let cfg = s.config();
    drop(s);
    let geo = crate::durable::geometry(&cfg);
    let (pm, _) =
        tmem_pmem::PageMemory::open(PageFile::from_fd(fd.try_clone().unwrap(), "same"), geo)
            .unwrap();
    let scan = pm.scan();
    assert_eq!(scan.xrecs.len(), 2);
    for (slot, r) in scan.xrecs {
        if r.index == 0 {
            assert_eq!((r.flags, r.fill), (tmem_pmem::page_flags::ZERO, 0));
            pm.publish_xrec(slot, &tmem_pmem::PageRecord { fill: 0xdead, ..r });
        } else {
            assert_eq!((r.flags, r.fill), (tmem_pmem::page_flags::SAME, WORDS[2]));
        }
    }
    drop(pm);
    let (s, rec) = Store::open_durable(cfg, PageFile::from_fd(fd, "same")).unwrap();
    assert_eq!((rec.same_filled_pages, rec.zero_pages), (2, 1));
    let c = client(&s, 1);
    let (p, _) = s.new_pool(c, U1, PP).unwrap();
    assert_eq!(get(&s, c, p, key(1, 0)), Ok(Some(same(0))));
    assert_eq!(get(&s, c, p, key(1, 1)), Ok(Some(same(WORDS[2]))));
}

/// `tmem save`'s view of a client: its persistent pools with a uuid and every page's key,
/// readable after a detach, not counted as gets, and nothing of its ephemeral pools.
#[test]
fn persistent_pools_are_listed_and_read_after_a_detach() {
    let s = store_pages(16);
    let c = client(&s, 1);
    let (e, _) = s.new_pool(c, [0, 0], EP).unwrap();
    let (p, _) = s.new_pool(c, [5, 6], PP).unwrap();
    let (anon, _) = s.new_pool(c, [0, 0], PP).unwrap();
    s.put(c, e, key(1, 0), &page(1)).unwrap();
    s.put(c, anon, key(1, 0), &page(1)).unwrap();
    for i in 0..4u32 {
        s.put(c, p, key(2, i), &page(u64::from(i) + 10)).unwrap();
    }
    s.put(c, p, key(3, 0), &[0u8; PAGE_SIZE]).unwrap();
    s.detach_client(c);
    let gets_before = s.stats().clients[0].succ_gets;
    let pools = s.persistent_pools(c).unwrap();
    assert_eq!(pools.len(), 1, "{pools:?}");
    assert_eq!((pools[0].pool, pools[0].uuid), (p, [5, 6]));
    assert_eq!(pools[0].keys.len(), 5);
    for k in &pools[0].keys {
        let mut d = [0xAAu8; PAGE_SIZE];
        assert_eq!(s.read_kept(c, p, *k, &mut d), Ok(true));
        let want = if k.oid == key(3, 0).oid {
            [0u8; PAGE_SIZE]
        } else {
            page(u64::from(k.index) + 10)
        };
        assert_eq!(d, want, "{k:?}");
    }
    let mut d = [0u8; PAGE_SIZE];
    assert_eq!(s.read_kept(c, p, key(9, 9), &mut d), Ok(false));
    assert_eq!(
        s.read_kept(c, 7, key(2, 0), &mut d),
        Err(TmemError::NoSuchPool)
    );
    assert_eq!(
        s.stats().clients[0].succ_gets,
        gets_before,
        "not a guest's get"
    );
}

#[test]
fn an_ephemeral_put_over_cap_evicts_its_own_pages_only_when_that_makes_room() {
    let s = store_pages(64);
    let c = client(&s, 1);
    let (e, _) = s.new_pool(c, [0, 0], EP).unwrap();
    let (p, _) = s.new_pool(c, [0, 0], PP).unwrap();
    s.set_cap_pages(c, 4).unwrap();
    for i in 0..2 {
        s.put(c, e, key(1, i), &page(10 + i as u64)).unwrap();
        s.put(c, p, key(1, i), &page(20 + i as u64)).unwrap();
    }
    // At the cap: a new ephemeral page pushes out the client's oldest one.
    s.put(c, e, key(1, 2), &page(12)).unwrap();
    let st = &s.stats().clients[0];
    assert_eq!((st.eph_pages, st.mem_bytes, st.evictions), (2, 4 * 4096, 1));
    // Persistent pages alone fill a lowered cap: evicting ephemeral ones cannot make room,
    // so none goes.
    s.set_cap_pages(c, 2).unwrap();
    assert_eq!(s.put(c, e, key(1, 3), &page(13)), Err(TmemError::OverCap));
    let st = &s.stats().clients[0];
    assert_eq!((st.eph_pages, st.evictions), (2, 1));
}
