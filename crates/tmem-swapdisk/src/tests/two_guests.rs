//! Two guests' disks on one store smaller than what either keeps in use, driven by two
//! threads at once: memory runs out under both (pages spill and come back; with no frames
//! kept for rewrites in so small a store, rewrites are refused too), yet each disk reads
//! exactly what its own guest wrote, never the other's.

use crate::mock::{GrantIo, TempDir};
use crate::{open_pool, DiskConfig, DiskId, DiskStats, SwapDisk};
use std::sync::Arc;
use tmem_blkif::mock::{full_page, MockGrantPages};
use tmem_blkif::{BlkRequest, Transfer};
use tmem_store::{Identity, PageFile, Store, StoreConfig, PAGE_SIZE};

const PAGES: u64 = 80;
const DEVID: u32 = 51712;

fn content(domid: u32, page: u64, version: u32) -> [u8; PAGE_SIZE] {
    let mut p = [0u8; PAGE_SIZE];
    for (i, c) in p.chunks_exact_mut(8).enumerate() {
        let w = (u64::from(domid) << 56) ^ (page << 32) ^ (u64::from(version) << 12) ^ i as u64;
        c.copy_from_slice(&(w | 1 << 63).to_le_bytes());
    }
    p
}

/// One guest: random whole-page writes, reads and discards against its own disk.
fn guest(store: Arc<Store>, domid: u32, dir: std::path::PathBuf) -> DiskStats {
    let (client, _) = store.attach_client(domid, 1, "guest").unwrap();
    let (pool, re) = open_pool(&store, client, DEVID).unwrap();
    assert!(!re);
    let cfg = DiskConfig {
        id: DiskId {
            identity: Identity::Xen { domid },
            instance: 1,
            devid: DEVID,
        },
        sectors: PAGES * 8,
        spill_dir: dir,
    };
    let (mut disk, _) = SwapDisk::open(&cfg, store, client, pool, true).unwrap();
    let guest = MockGrantPages::create(1).unwrap();
    let back = guest.map_again().unwrap();
    let mut io = GrantIo { pages: &back };
    let mut model: Vec<Option<u32>> = vec![None; PAGES as usize];
    let mut x = u64::from(domid).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for n in 0..4000u32 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let page = x % PAGES;
        let t = Transfer::new(page * 8, &[full_page(0)], PAGES * 8).unwrap();
        match (x >> 32) % 8 {
            0..=3 => {
                guest.write(0, 0, &content(domid, page, n)).unwrap();
                let w = BlkRequest::Write {
                    io: t,
                    flush: false,
                };
                disk.execute_blocking(&w, &mut io).unwrap();
                model[page as usize] = Some(n);
            }
            4..=6 => {
                disk.execute_blocking(&BlkRequest::Read(t), &mut io)
                    .unwrap();
                let mut got = [0u8; PAGE_SIZE];
                guest.read(0, 0, &mut got).unwrap();
                let want = match model[page as usize] {
                    Some(v) => content(domid, page, v),
                    None => [0; PAGE_SIZE],
                };
                assert!(got == want, "dom{domid} page {page} after {n} operations");
            }
            _ => {
                let end = (page + 1 + (x >> 40) % 4).min(PAGES);
                let d = BlkRequest::Discard {
                    sector: page * 8,
                    nr_sectors: (end - page) * 8,
                    secure: false,
                };
                disk.execute_blocking(&d, &mut io).unwrap();
                model[page as usize..end as usize].fill(None);
            }
        }
    }
    disk.stats()
}

#[test]
fn two_guests_share_memory_and_never_see_each_other() {
    let cfg = StoreConfig {
        mem_limit_bytes: 32 * PAGE_SIZE as u64,
        default_persistent_share_percent: 100,
        ..StoreConfig::default()
    };
    let (store, _) = Store::open_durable(cfg, PageFile::memfd("two-guests").unwrap()).unwrap();
    let store = Arc::new(store);
    let dir = TempDir::new("two").unwrap();
    let threads: Vec<_> = [1u32, 2]
        .into_iter()
        .map(|domid| {
            let (store, dir) = (Arc::clone(&store), dir.0.clone());
            std::thread::spawn(move || guest(store, domid, dir))
        })
        .collect();
    let stats: Vec<DiskStats> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    // Both paths ran for each guest (how the memory splits between the two threads
    // depends on scheduling, so the bounds are loose per guest and firmer in total).
    for s in &stats {
        eprintln!("{s:?}");
        assert!(s.store_writes > 0 && s.spill_writes > 0, "{s:?}");
    }
    let total = |f: fn(&DiskStats) -> u64| stats.iter().map(f).sum::<u64>();
    assert!(
        total(|s| s.store_writes) > 100 && total(|s| s.spill_writes) > 40,
        "{stats:?}"
    );
    assert!(total(|s| s.promotions) > 0, "{stats:?}");
    let files = std::fs::read_dir(&dir.0).unwrap().count();
    assert_eq!(files, 2, "one spill file per guest");
}
