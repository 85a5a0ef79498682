//! Compressed pages in the store: stored compressed when they compress, raw when they do not,
//! read back byte for byte, through eviction, flushes, compaction and setting changes.

use tmem_store::*;

fn store(frames: u64) -> Store {
    Store::new(StoreConfig {
        mem_limit_bytes: frames * PAGE_SIZE as u64,
        default_persistent_share_percent: 0,
        ..StoreConfig::default()
    })
}

/// Text-like data that lz4 packs to roughly a third: words from a small vocabulary chosen
/// by a seeded generator, so every page differs.
fn text(seed: u64) -> Page {
    const WORDS: &[&str] = &[
        "page ",
        "memory ",
        "guest ",
        "the ",
        "of ",
        "tmem ",
        "pool ",
        "swap ",
        "and ",
        "a ",
        "frame ",
        "kernel ",
        "to ",
        "in ",
        "store ",
        "hypervisor ",
    ];
    let mut p = [0u8; PAGE_SIZE];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut at = 0;
    while at < PAGE_SIZE {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let w = WORDS[(x % WORDS.len() as u64) as usize].as_bytes();
        let n = w.len().min(PAGE_SIZE - at);
        p[at..at + n].copy_from_slice(&w[..n]);
        at += n;
    }
    p
}

fn noise(seed: u64) -> Page {
    let mut p = [0u8; PAGE_SIZE];
    let mut x = seed.wrapping_mul(0xBF58_476D_1CE4_E5B9) | 1;
    for c in p.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes());
    }
    p
}

fn key(i: u32) -> PageKey {
    PageKey {
        oid: Oid([1, 2, 3]),
        index: i,
    }
}

fn client(s: &Store, kind: PoolKind, z: ClientCompression) -> (ClientId, u32) {
    let (c, _) = s.attach_client(1, 1, "g").unwrap();
    s.set_compression(c, z).unwrap();
    let (p, _) = s.new_pool(c, [9, 9], kind).unwrap();
    (c, p)
}

fn get(s: &Store, c: ClientId, p: u32, i: u32) -> Option<Page> {
    let mut b = [0x5a; PAGE_SIZE];
    match s.get(c, p, key(i), &mut b) {
        Ok(true) => Some(b),
        Ok(false) | Err(TmemError::Empty) => None,
        Err(e) => panic!("get {i}: {e}"),
    }
}

#[test]
fn compressible_pages_are_compressed_and_incompressible_ones_stay_raw() {
    for algo in [Compression::Lz4, Compression::Zstd] {
        let s = store(64);
        let (c, p) = client(
            &s,
            PoolKind::PrivatePersistent,
            ClientCompression::both(algo),
        );
        for i in 0..40 {
            s.put(c, p, key(i), &text(i as u64)).unwrap();
        }
        for i in 40..44 {
            s.put(c, p, key(i), &noise(i as u64)).unwrap();
        }
        let g = s.stats().global;
        assert_eq!(g.compression.pages, 40, "{algo:?}");
        let zb = g.compression.compressed_bytes;
        assert!(zb < 40 * 3072, "{algo:?}: {g:?}");
        // 40 compressed pages in runs of their classes plus 4 raw frames: about what the
        // compressed bytes need (a few runs are part empty).
        let frames = g.data_bytes / PAGE_SIZE as u64;
        assert!(
            frames < 4 + zb.div_ceil(PAGE_SIZE as u64) + 16,
            "{algo:?}: {frames} frames for 44 pages ({zb} compressed bytes)"
        );
        assert!(frames < 44);
        assert_eq!(frames, g.compression.frames + 4, "{algo:?}");
        // The pool's own figures: 40 compressed pages, their memory a share of the runs.
        let pc = s.stats().clients[0].pools[0].counters.clone();
        assert_eq!((pc.pages, pc.compressed_pages), (44, 40), "{algo:?}");
        assert_eq!(pc.compressed_bytes, zb);
        assert!(pc.mem_bytes >= 4 * PAGE_SIZE as u64 + zb, "{pc:?}");
        assert!(pc.mem_bytes <= g.data_bytes, "{pc:?} {g:?}");
        for i in 0..40 {
            assert!(
                get(&s, c, p, i) == Some(text(i as u64)),
                "{algo:?} page {i}"
            );
        }
        for i in 40..44 {
            assert!(
                get(&s, c, p, i) == Some(noise(i as u64)),
                "{algo:?} page {i}"
            );
        }
        // Rewrites, raw over compressed and back.
        s.put(c, p, key(3), &noise(3)).unwrap();
        s.put(c, p, key(41), &text(41)).unwrap();
        assert!(get(&s, c, p, 3) == Some(noise(3)));
        assert!(get(&s, c, p, 41) == Some(text(41)));
        // Flushing everything gives every frame back.
        s.flush_object(c, p, key(0).oid).unwrap();
        let g = s.stats().global;
        assert_eq!((g.pages, g.data_bytes, g.compression.pages), (0, 0, 0));
        assert_eq!(g.compression.frames, 0);
        let pc = s.stats().clients[0].pools[0].counters.clone();
        assert_eq!(
            (pc.mem_bytes, pc.compressed_pages, pc.compressed_bytes),
            (0, 0, 0)
        );
    }
}

#[test]
fn settings_change_at_run_time_and_old_pages_stay_readable() {
    let s = store(64);
    let (c, p) = client(
        &s,
        PoolKind::PrivatePersistent,
        ClientCompression::both(Compression::Zstd),
    );
    s.put(c, p, key(0), &text(0)).unwrap();
    s.set_compress(c, true).unwrap(); // the default codec: lz4
    s.put(c, p, key(1), &text(1)).unwrap();
    s.set_compress(c, false).unwrap();
    s.put(c, p, key(2), &text(2)).unwrap();
    assert_eq!(s.stats().global.compression.pages, 2);
    for i in 0..3 {
        assert!(get(&s, c, p, i) == Some(text(i as u64)));
    }
    // Per kind: ephemeral only, so a persistent pool stores raw.
    s.set_compression(
        c,
        ClientCompression {
            ephemeral: Compression::Lz4,
            persistent: Compression::Off,
        },
    )
    .unwrap();
    s.put(c, p, key(3), &text(3)).unwrap();
    assert_eq!(s.stats().global.compression.pages, 2);
    let (e, _) = s.new_pool(c, [0, 0], PoolKind::PrivateEphemeral).unwrap();
    s.put(c, e, key(0), &text(9)).unwrap();
    assert_eq!(s.stats().global.compression.pages, 3);
    assert!(get(&s, c, e, 0) == Some(text(9)));
    assert!(s.stats().clients[0].compress);
}

#[test]
fn a_full_store_of_compressed_ephemeral_pages_evicts_and_keeps_more_than_its_frames() {
    let s = store(32);
    let (c, p) = client(
        &s,
        PoolKind::PrivateEphemeral,
        ClientCompression::both(Compression::Lz4),
    );
    let n = 400u32;
    for i in 0..n {
        s.put(c, p, key(i), &text(i as u64)).unwrap();
    }
    let g = s.stats().global;
    assert!(g.data_bytes <= 32 * PAGE_SIZE as u64);
    assert!(g.pages > 48, "only {} pages kept in 32 frames", g.pages);
    assert!(g.evictions > 0);
    // Every page still there is exact; the newest ones are there.
    let mut hits = 0;
    for i in (0..n).rev() {
        if let Some(b) = get(&s, c, p, i) {
            assert!(b == text(i as u64), "page {i}");
            hits += 1;
        }
    }
    assert_eq!(hits, g.pages);
    assert!(
        get(&s, c, p, n - 1).is_none(),
        "a private ephemeral get removes the page"
    );
    assert_eq!(s.stats().global.compression.decompress_errors, 0);
}

#[test]
fn compaction_gives_frames_back_and_moves_no_byte_wrong() {
    let s = store(1024);
    let (c, p) = client(
        &s,
        PoolKind::PrivatePersistent,
        ClientCompression::both(Compression::Lz4),
    );
    for i in 0..600 {
        s.put(c, p, key(i), &text(i as u64)).unwrap();
    }
    for i in 0..600 {
        if i % 4 != 0 {
            s.flush_page(c, p, key(i)).unwrap();
        }
    }
    let before = s.stats().global;
    assert!(before.compression.compactable_frames > 0, "{before:?}");
    let freed = s.compact(usize::MAX);
    let after = s.stats().global;
    assert_eq!(freed, before.compression.frames - after.compression.frames);
    assert!(freed > 0);
    assert_eq!(after.compression.compactable_frames, 0);
    assert_eq!(
        after.data_bytes,
        before.data_bytes - freed * PAGE_SIZE as u64
    );
    for i in (0..600).step_by(4) {
        assert!(get(&s, c, p, i) == Some(text(i as u64)), "page {i}");
    }
    assert!(after.compression.compaction_moves > 0);
}

#[test]
fn a_full_store_of_persistent_pages_still_takes_compressed_pages_into_free_slots() {
    let s = store(16);
    let (c, p) = client(
        &s,
        PoolKind::PrivatePersistent,
        ClientCompression::both(Compression::Lz4),
    );
    let mut stored = 0;
    for i in 0..200 {
        match s.put(c, p, key(i), &text(i as u64)) {
            Ok(()) => stored += 1,
            Err(TmemError::NoMemory) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert!(stored > 24, "{stored} compressed pages in 16 frames");
    for i in 0..200 {
        if let Some(b) = get(&s, c, p, i) {
            assert!(b == text(i as u64));
        }
    }
}

#[test]
fn a_run_of_incompressible_pages_stops_the_tries_and_one_that_compresses_ends_it() {
    let s = store(1024);
    let (c, p) = client(
        &s,
        PoolKind::PrivatePersistent,
        ClientCompression::both(Compression::Lz4),
    );
    for i in 0..200 {
        s.put(c, p, key(i), &noise(i as u64)).unwrap();
    }
    let z = s.stats().global.compression;
    assert_eq!(z.pages, 0);
    assert_eq!(z.incompressible + z.skipped, 200);
    assert!(z.skipped > 150, "{z:?}");
    // Compressible pages again: within one skip window (at most 1024 pages) they compress.
    for i in 200..1300 {
        s.put(c, p, key(i), &text(i as u64)).unwrap();
    }
    let z = s.stats().global.compression;
    assert!(z.pages >= 1100 - 1024, "{z:?}");
    for i in 0..1300 {
        let want = if i < 200 {
            noise(i as u64)
        } else {
            text(i as u64)
        };
        assert!(get(&s, c, p, i) == Some(want), "page {i}");
    }
}

fn reopen(s: Store) -> (Store, Recovery) {
    let fd = s.page_file().unwrap().try_clone_fd().unwrap();
    let cfg = s.config();
    drop(s);
    Store::open_durable(cfg, PageFile::from_fd(fd, "z")).unwrap()
}

#[test]
fn compressed_persistent_pages_come_back_after_a_restart_even_after_compaction() {
    let cfg = StoreConfig {
        mem_limit_bytes: 512 * PAGE_SIZE as u64,
        default_persistent_share_percent: 0,
        ..StoreConfig::default()
    };
    let (s, rec) = Store::open_durable(cfg, PageFile::memfd("z").unwrap()).unwrap();
    assert!(rec.formatted);
    let (c, p) = client(
        &s,
        PoolKind::PrivatePersistent,
        ClientCompression::both(Compression::Lz4),
    );
    for i in 0..300 {
        let pg = if i % 10 == 9 {
            noise(i as u64)
        } else {
            text(i as u64)
        };
        s.put(c, p, key(i), &pg).unwrap();
    }
    // Rewrites (a new slot each, the old record cleared after) and flushes that leave holes.
    for i in (0..300).step_by(7) {
        s.put(c, p, key(i), &text(i as u64 + 1000)).unwrap();
    }
    for i in (0..300).step_by(3) {
        s.flush_page(c, p, key(i)).unwrap();
    }
    let want = |i: u32| -> Option<Page> {
        if i.is_multiple_of(3) {
            None
        } else if i.is_multiple_of(7) {
            Some(text(i as u64 + 1000))
        } else if i % 10 == 9 {
            Some(noise(i as u64))
        } else {
            Some(text(i as u64))
        }
    };
    let z = s.stats().global.compression;
    assert!(z.pages > 150, "{z:?}");
    let moved = s.compact(usize::MAX);
    assert!(moved > 0);
    let zpages = s.stats().global.compression.pages;
    let (s, rec) = reopen(s);
    assert!(!rec.formatted);
    assert_eq!(rec.torn, 0, "{rec:?}");
    assert_eq!(rec.compressed_pages, zpages, "{rec:?}");
    assert_eq!(rec.pages, 200, "{rec:?}");
    let (c, how) = s.attach_client(1, 1, "g").unwrap();
    assert_eq!(how, Attach::Reattached);
    let (p2, re) = s.new_pool(c, [9, 9], PoolKind::PrivatePersistent).unwrap();
    assert!(re);
    assert_eq!(p2, p);
    for i in 0..300 {
        assert!(get(&s, c, p, i) == want(i), "page {i} after restart");
    }
    // The rebuilt allocator carries on: more puts, flush all, every frame free again.
    s.set_compression(c, ClientCompression::both(Compression::Zstd))
        .unwrap();
    for i in 300..400 {
        s.put(c, p, key(i), &text(i as u64)).unwrap();
    }
    let (s, rec) = reopen(s);
    assert_eq!(rec.pages, 300, "{rec:?}");
    let (c, _) = s.attach_client(1, 1, "g").unwrap();
    let (p, _) = s.new_pool(c, [9, 9], PoolKind::PrivatePersistent).unwrap();
    for i in 300..400 {
        assert!(get(&s, c, p, i) == Some(text(i as u64)), "page {i}");
    }
    s.flush_object(c, p, key(0).oid).unwrap();
    let g = s.stats().global;
    assert_eq!((g.pages, g.data_bytes, g.compression.frames), (0, 0, 0));
}

#[test]
fn holes_left_by_flushed_compressed_pages_are_reused_when_memory_is_full() {
    let s = store(64);
    let (c, p) = client(
        &s,
        PoolKind::PrivatePersistent,
        ClientCompression::both(Compression::Lz4),
    );
    let mut n1 = 0u32;
    while s.put(c, p, key(n1), &text(n1 as u64)).is_ok() {
        n1 += 1;
    }
    assert!(n1 > 80, "{n1}");
    // Three pages in four go: every run keeps some, so no frame comes free by itself.
    for i in 0..n1 {
        if i % 4 != 0 {
            s.flush_page(c, p, key(i)).unwrap();
        }
    }
    let mut n2 = 0u32;
    while s
        .put(c, p, key(10_000 + n2), &text(10_000 + n2 as u64))
        .is_ok()
    {
        n2 += 1;
    }
    // Most of the room the flushes made is found again (compaction under the put).
    assert!(
        n2 * 10 >= (n1 - n1.div_ceil(4)) * 6,
        "{n2} new pages after {n1}"
    );
    assert!(s.stats().global.compression.compactions > 0);
    for i in (0..n1).step_by(4) {
        assert!(get(&s, c, p, i) == Some(text(i as u64)), "page {i}");
    }
    for i in 0..n2 {
        assert!(get(&s, c, p, 10_000 + i) == Some(text(10_000 + i as u64)));
    }
    // Housekeeping's compaction has nothing left to do once a pass finished.
    s.compact(usize::MAX);
    assert_eq!(s.compact_some(), 0);
}

/// `tmem save` reads compressed persistent pages back whole, from a detached client, with
/// lz4 and zstd alike (`Store::read_kept` decompresses as a persistent get does).
#[test]
fn compressed_persistent_pages_are_read_back_for_a_save() {
    for algo in [Compression::Lz4, Compression::Zstd] {
        let s = store(64);
        let (c, p) = client(
            &s,
            PoolKind::PrivatePersistent,
            ClientCompression::both(algo),
        );
        for i in 0..30 {
            s.put(c, p, key(i), &text(u64::from(i))).unwrap();
        }
        let compressed = s.stats().clients[0].pools[0].counters.compressed_pages;
        assert_eq!(
            compressed, 30,
            "{algo:?}: the pages must really be compressed"
        );
        s.detach_client(c);
        let pools = s.persistent_pools(c).unwrap();
        assert_eq!(pools.len(), 1);
        assert_eq!(pools[0].keys.len(), 30);
        for i in 0..30 {
            let mut b = [0x5a; PAGE_SIZE];
            assert_eq!(s.read_kept(c, p, key(i), &mut b), Ok(true), "{algo:?} {i}");
            assert!(b == text(u64::from(i)), "{algo:?}: page {i} differs");
        }
    }
}

// ---- accounting in bytes of page memory --------------------------------------------------

fn client_n(s: &Store, domid: u32, kind: PoolKind, z: ClientCompression) -> (ClientId, u32) {
    let (c, _) = s.attach_client(domid, 1, "g").unwrap();
    s.set_compression(c, z).unwrap();
    let (p, _) = s.new_pool(c, [0, 0], kind).unwrap();
    (c, p)
}

fn client_stats(s: &Store, c: ClientId) -> ClientStats {
    s.stats()
        .clients
        .into_iter()
        .find(|x| x.client_id == c.0)
        .unwrap()
}

#[test]
fn equal_weights_share_memory_in_bytes_not_pages() {
    let s = store(256);
    let lz4 = ClientCompression::both(Compression::Lz4);
    let (a, pa) = client_n(&s, 1, PoolKind::PrivateEphemeral, lz4);
    let (b, pb) = client_n(&s, 2, PoolKind::PrivateEphemeral, lz4);
    // Both keep putting far more than memory holds: A's pages compress, B's do not.
    for i in 0..4000u32 {
        s.put(a, pa, key(i), &text(i as u64)).unwrap();
        s.put(b, pb, key(i), &noise(i as u64)).unwrap();
    }
    let (sa, sb) = (client_stats(&s, a), client_stats(&s, b));
    let limit = 256 * PAGE_SIZE as u64;
    // Memory is full and shared evenly in bytes (within 10%)...
    assert!(
        sa.mem_bytes + sb.mem_bytes > limit * 8 / 10,
        "{sa:?} {sb:?}"
    );
    let (lo, hi) = (
        sa.mem_bytes.min(sb.mem_bytes),
        sa.mem_bytes.max(sb.mem_bytes),
    );
    assert!(
        hi - lo <= hi / 10,
        "A {} B {} bytes",
        sa.mem_bytes,
        sb.mem_bytes
    );
    // ...so the client whose pages compress keeps about twice as many pages.
    assert!(
        sa.eph_pages * 10 >= sb.eph_pages * 18,
        "A {} B {} pages",
        sa.eph_pages,
        sb.eph_pages
    );
    // Every page still there reads back byte for byte.
    let mut found = 0;
    for i in 0..4000u32 {
        if let Some(p) = get(&s, a, pa, i) {
            assert!(p == text(i as u64), "A page {i}");
            found += 1;
        }
        if let Some(p) = get(&s, b, pb, i) {
            assert!(p == noise(i as u64), "B page {i}");
            found += 1;
        }
    }
    assert_eq!(found, sa.eph_pages + sb.eph_pages);
}

#[test]
fn a_cap_counts_the_memory_of_compressed_pages() {
    const CAP_KIB: u64 = 256;
    let cap = CAP_KIB * 1024;
    for kind in [PoolKind::PrivatePersistent, PoolKind::PrivateEphemeral] {
        let s = store(1024);
        let (c, p) = client_n(&s, 1, kind, ClientCompression::both(Compression::Lz4));
        s.set_cap_bytes(c, cap).unwrap();
        let mut stored = 0u64;
        for i in 0..1000u32 {
            match s.put(c, p, key(i), &text(i as u64)) {
                Ok(()) => stored += 1,
                Err(TmemError::OverCap) => {}
                Err(e) => panic!("{kind:?} put {i}: {e}"),
            }
            let st = client_stats(&s, c);
            assert!(st.mem_bytes <= cap, "{kind:?} put {i}: {st:?}");
        }
        let st = client_stats(&s, c);
        assert_eq!(st.cap_bytes, cap);
        assert_eq!(st.cap_pages, CAP_KIB / 4);
        // More pages than raw ones would fit in the cap (64), in no more than the cap.
        assert!(st.pages > CAP_KIB / 4 + CAP_KIB / 8, "{kind:?}: {st:?}");
        assert!(st.mem_bytes > cap - PAGE_SIZE as u64, "{kind:?}: {st:?}");
        if kind.is_persistent() {
            // Nothing evicted: the ones refused were refused at the cap.
            assert_eq!(stored, st.pages);
        } else {
            // Ephemeral puts push out the client's own oldest pages instead.
            assert_eq!(stored, 1000);
        }
    }
}

#[test]
fn flush_kib_releases_at_least_that_much_memory() {
    let s = store(512);
    let lz4 = ClientCompression::both(Compression::Lz4);
    let (a, pa) = client_n(&s, 1, PoolKind::PrivateEphemeral, lz4);
    let (b, pb) = client_n(
        &s,
        2,
        PoolKind::PrivateEphemeral,
        ClientCompression::default(),
    );
    for i in 0..600u32 {
        s.put(a, pa, key(i), &text(i as u64)).unwrap();
    }
    for i in 0..100u32 {
        s.put(b, pb, key(i), &noise(i as u64)).unwrap();
    }
    for want in [1u64, 100, 700] {
        let before = s.stats();
        let mem = |st: &StoreStats| st.clients.iter().map(|c| c.mem_bytes).sum::<u64>();
        assert_eq!(before.global.freeable_bytes, mem(&before));
        let got = s.flush_kib(want);
        let after = s.stats();
        assert!(got >= want, "flush {want} KiB released {got}");
        // Released in the accounting the caps use, and in frames given back (compaction
        // leaves at most one part-filled run of up to 8 frames per size class in use).
        let released = mem(&before) - mem(&after);
        assert!(released >= want * 1024, "{want} KiB: {released} B");
        assert_eq!(released / 1024, got);
        let frames_back = (before.global.data_bytes - after.global.data_bytes) / 1024;
        assert!(
            frames_back + 8 * 4 >= want,
            "{want} KiB: {frames_back} KiB of frames back"
        );
        assert_eq!(after.global.freeable_bytes, mem(&after));
    }
}
