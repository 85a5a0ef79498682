//! Kill tmemd inside the store's own writes while a swap disk works: the page-memory crate
//! calls a hook at every step of every record write; the hook here copies the page file and
//! the spill file (the state a SIGKILL at that instant leaves). Each copy is then opened as a
//! restarted tmemd would (store from the page file, disk on the spill file, reconcile), and
//! every page of the disk must read its old or its new content.
//!
//! (The kills *between* a store write and a spill-file write are `tests/model.rs`'s.)

use crate::mock::{GrantIo, TempDir, TestDisk, TEST_DEVID, TEST_DOMID, TEST_INSTANCE};
use crate::{open_pool, DiskConfig, SwapDisk};
use std::cell::RefCell;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;
use tmem_blkif::mock::{full_page, MockGrantPages};
use tmem_blkif::{BlkRequest, Segment, Transfer};
use tmem_store::{PageFile, Store, StoreConfig, PAGE_SIZE};

const PAGES: u64 = 96;
const SECTORS: u64 = PAGES * 8;

type Snaps = Rc<RefCell<Vec<(Vec<u8>, Vec<u8>)>>>;

fn read_fd(fd: &OwnedFd) -> Vec<u8> {
    let mut f = std::fs::File::from(fd.try_clone().unwrap());
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut v = Vec::new();
    f.read_to_end(&mut v).unwrap();
    v
}

fn content(tag: u32, page: u64) -> [u8; PAGE_SIZE] {
    let mut p = [0u8; PAGE_SIZE];
    for (i, c) in p.chunks_exact_mut(8).enumerate() {
        c.copy_from_slice(&((u64::from(tag) << 40) ^ (page << 16) ^ i as u64 | 1).to_le_bytes());
    }
    p
}

fn execute(disk: &mut SwapDisk, grants: &MockGrantPages, req: &BlkRequest) {
    disk.execute_blocking(req, &mut GrantIo { pages: grants })
        .unwrap();
}

fn write_req(guest: &MockGrantPages, tag: u32, page: u64, segs: &[Segment]) -> BlkRequest {
    for (k, _) in segs.iter().enumerate() {
        guest
            .write(k as u32, 0, &content(tag, page + k as u64))
            .unwrap();
    }
    BlkRequest::Write {
        io: Transfer::new(page * 8, segs, SECTORS).unwrap(),
        flush: false,
    }
}

fn read_all(disk: &mut SwapDisk, guest: &MockGrantPages, grants: &MockGrantPages) -> Vec<u8> {
    let mut out = Vec::with_capacity(PAGES as usize * PAGE_SIZE);
    for p in 0..PAGES {
        let t = Transfer::new(p * 8, &[full_page(0)], SECTORS).unwrap();
        execute(disk, grants, &BlkRequest::Read(t));
        let mut page = [0u8; PAGE_SIZE];
        guest.read(0, 0, &mut page).unwrap();
        out.extend_from_slice(&page);
    }
    out
}

/// A restarted tmemd on copies of the page file and the spill file: the disk's bytes.
fn reopen(cfg: &DiskConfig, store_cfg: &StoreConfig, snap: &(Vec<u8>, Vec<u8>)) -> Vec<u8> {
    let file = PageFile::memfd("crash-copy").unwrap();
    std::fs::File::from(file.try_clone_fd().unwrap())
        .write_all(&snap.0)
        .unwrap();
    let dir = TempDir::new("crash-copy").unwrap();
    std::fs::write(dir.0.join(cfg.id.spill_name()), &snap.1).unwrap();
    let (store, _) = Store::open_durable(store_cfg.clone(), file).unwrap();
    let store = Arc::new(store);
    let (c, _) = store
        .attach_client(TEST_DOMID, TEST_INSTANCE, "copy")
        .unwrap();
    let (pool, re) = open_pool(&store, c, TEST_DEVID).unwrap();
    assert!(re, "the disk's pool is recovered");
    let cfg = DiskConfig {
        spill_dir: dir.0.clone(),
        ..cfg.clone()
    };
    let (mut disk, _) = SwapDisk::open(&cfg, store, c, pool, false).unwrap();
    let guest = MockGrantPages::create(1).unwrap();
    let grants = guest.map_again().unwrap();
    read_all(&mut disk, &guest, &grants)
}

#[test]
fn a_kill_at_any_store_write_leaves_old_or_new_pages() {
    let store_cfg = StoreConfig {
        mem_limit_bytes: 64 * PAGE_SIZE as u64,
        default_persistent_share_percent: 100,
        ..StoreConfig::default()
    };
    let guest = MockGrantPages::create(11).unwrap();
    let grants = guest.map_again().unwrap();
    let mut t = TestDisk::new(store_cfg.clone(), SECTORS, None);
    let whole = |n: usize| vec![full_page(0); n];
    let partial = [Segment {
        gref: 0,
        first_sect: 2,
        last_sect: 5,
    }];
    // Pages 0..72 written: 63 in memory (one frame is kept for rewrites), the rest spilled.
    for p in (0..72).step_by(8) {
        let r = write_req(&guest, 1, p, &whole(8));
        execute(t.disk(), &grants, &r);
    }
    assert!(t.disk().spilled_pages() >= 8);
    let discard = |sector, nr_sectors| BlkRequest::Discard {
        sector,
        nr_sectors,
        secure: false,
    };
    // (what, first page, data tag (0: zeroes), segments), or a discard (no segments).
    let ops: Vec<(&str, u64, u32, Vec<Segment>)> = vec![
        ("rewrite pages in memory", 3, 2, whole(3)),
        ("write new pages, memory full", 80, 3, whole(2)),
        ("partial rewrite of a spilled page", 70, 4, partial.to_vec()),
        ("zeroes over a page in memory", 8, 0, whole(1)),
        // The frame page 8 had is free again: spilled page 71 moves into memory.
        ("promote a spilled page", 71, 5, whole(1)),
        ("discard across memory and spill", 40, 0, vec![]),
        ("discard the whole disk", 0, 0, vec![]),
    ];
    let page_fd = t.store().page_file().unwrap().try_clone_fd().unwrap();
    let spill_path = t.cfg.spill_dir.join(t.cfg.id.spill_name());
    let mut checked = 0;
    for (name, first, tag, segs) in ops {
        let old = read_all(t.disk(), &guest, &grants);
        let req = match (segs.is_empty(), tag) {
            (true, _) if first == 0 => discard(0, SECTORS),
            (true, _) => discard(first * 8, 40 * 8),
            (false, 0) => {
                guest.write(0, 0, &[0; PAGE_SIZE]).unwrap();
                BlkRequest::Write {
                    io: Transfer::new(first * 8, &segs, SECTORS).unwrap(),
                    flush: false,
                }
            }
            (false, tag) => write_req(&guest, tag, first, &segs),
        };
        let snaps: Snaps = Rc::new(RefCell::new(Vec::new()));
        let (s2, fd2, path2) = (
            snaps.clone(),
            page_fd.try_clone().unwrap(),
            spill_path.clone(),
        );
        tmem_pmem::crash::set_hook(Some(Box::new(move || {
            s2.borrow_mut()
                .push((read_fd(&fd2), std::fs::read(&path2).unwrap()));
        })));
        execute(t.disk(), &grants, &req);
        tmem_pmem::crash::set_hook(None);
        if name.starts_with("promote") {
            assert_eq!(t.disk().stats().promotions, 1);
        }
        let new = read_all(t.disk(), &guest, &grants);
        assert_ne!(old, new, "{name} changes the disk");
        // Ops that only touch the spill file have no store record write to stop in.
        let snaps = snaps.take();
        for (k, snap) in snaps.iter().enumerate() {
            let got = reopen(&t.cfg, &store_cfg, snap);
            for p in 0..PAGES as usize {
                let r = p * PAGE_SIZE..(p + 1) * PAGE_SIZE;
                assert!(
                    got[r.clone()] == old[r.clone()] || got[r.clone()] == new[r],
                    "{name}, kill point {k}: page {p} is neither old nor new"
                );
            }
            checked += 1;
        }
    }
    eprintln!("{checked} kill points checked");
    assert!(checked > 20);
}
