//! [`GrantIo`]: guest data in tmem-blkif's mock grant pages (a memfd the mock guest maps
//! too), for tests and benchmarks (feature `test-utils`).

use crate::{Page, Segment, SegmentError, SegmentIo};
use tmem_blkif::mock::MockGrantPages;

/// Segment data copied from and to the mock guest's granted pages (`gref` = page number).
#[derive(Debug)]
pub struct GrantIo<'a> {
    pub pages: &'a MockGrantPages,
}

impl SegmentIo for GrantIo<'_> {
    fn fetch(&mut self, segs: &[Segment], pages: &mut [Page]) -> Result<(), SegmentError> {
        for (k, (s, page)) in segs.iter().zip(pages).enumerate() {
            let r = s.byte_range();
            self.pages
                .read(s.gref, r.start, &mut page[r])
                .map_err(|_| SegmentError {
                    segment: k,
                    gref: s.gref,
                })?;
        }
        Ok(())
    }

    fn deliver(&mut self, segs: &[Segment], pages: &[Page]) -> Result<(), SegmentError> {
        for (k, (s, page)) in segs.iter().zip(pages).enumerate() {
            let r = s.byte_range();
            self.pages
                .write(s.gref, r.start, &page[r])
                .map_err(|_| SegmentError {
                    segment: k,
                    gref: s.gref,
                })?;
        }
        Ok(())
    }
}

/// A directory under the system's temporary directory, removed (with its files) on drop.
#[derive(Debug)]
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> std::io::Result<TempDir> {
        TempDir::new_in(&std::env::temp_dir(), tag)
    }

    /// A new directory inside `base` (e.g. a tmpfs).
    pub fn new_in(base: &std::path::Path, tag: &str) -> std::io::Result<TempDir> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = base.join(format!("tmem-swapdisk-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A swap disk on a durable store (page file in a memfd) with its spill file in a temporary
/// directory, which can be "killed" and opened again as a restarted tmemd would.
#[derive(Debug)]
pub struct TestDisk {
    disk: Option<crate::SwapDisk>,
    store: Option<std::sync::Arc<tmem_store::Store>>,
    pub client: tmem_store::ClientId,
    pub pool: u32,
    pub cfg: crate::DiskConfig,
    /// Page cap set on the client after every (re)start (a daemon restores it).
    pub cap: Option<u64>,
    /// What the last open of the disk reported.
    pub opened: crate::OpenReport,
    pub dir: TempDir,
}

pub const TEST_DOMID: u32 = 7;
pub const TEST_INSTANCE: u64 = 0x5eed;
pub const TEST_DEVID: u32 = 51712;

impl TestDisk {
    /// A new disk of `sectors` sectors on a new durable store with `store_cfg`, spill file in
    /// `dir` (a fresh temporary directory if `None`).
    pub fn new(store_cfg: tmem_store::StoreConfig, sectors: u64, dir: Option<TempDir>) -> TestDisk {
        let file = tmem_store::PageFile::memfd("swapdisk-test").expect("memfd page file");
        let (store, rec) = tmem_store::Store::open_durable(store_cfg, file).expect("durable store");
        assert!(rec.formatted);
        let dir = match dir {
            Some(d) => d,
            None => TempDir::new("disk").expect("temporary directory"),
        };
        let cfg = crate::DiskConfig {
            id: crate::DiskId {
                identity: tmem_store::Identity::Xen { domid: TEST_DOMID },
                instance: TEST_INSTANCE,
                devid: TEST_DEVID,
            },
            sectors,
            spill_dir: dir.0.clone(),
        };
        let mut t = TestDisk {
            disk: None,
            store: Some(std::sync::Arc::new(store)),
            client: tmem_store::ClientId(0),
            pool: 0,
            cfg,
            cap: None,
            opened: crate::OpenReport::default(),
            dir,
        };
        t.attach(false);
        t
    }

    fn attach(&mut self, expect_reattach: bool) {
        let store = self.store.clone().expect("store");
        let (client, _) = store
            .attach_client(TEST_DOMID, TEST_INSTANCE, "swap-test")
            .expect("attach");
        if let Some(cap) = self.cap {
            store.set_cap_pages(client, cap).expect("cap");
        }
        let (pool, reattached) =
            crate::open_pool(&store, client, TEST_DEVID).expect("swap disk pool");
        assert_eq!(
            reattached, expect_reattach,
            "pool reattached after a restart"
        );
        let (disk, rep) = crate::SwapDisk::open(&self.cfg, store, client, pool, !reattached)
            .expect("open the swap disk");
        self.client = client;
        self.pool = pool;
        self.opened = rep;
        self.disk = Some(disk);
    }

    pub fn disk(&mut self) -> &mut crate::SwapDisk {
        self.disk.as_mut().expect("disk")
    }

    pub fn store(&self) -> &tmem_store::Store {
        self.store.as_ref().expect("store")
    }

    /// Drop the disk and the store as a killed tmemd would (nothing more is written), then
    /// open the page file again, reattach the client and reopen the disk.
    pub fn restart(&mut self) -> tmem_store::Recovery {
        let store = self.store.take().expect("store");
        let fd = store
            .page_file()
            .expect("durable")
            .try_clone_fd()
            .expect("page file fd");
        let cfg = store.config();
        drop(self.disk.take());
        drop(store);
        let (store, rec) = tmem_store::Store::open_durable(
            cfg,
            tmem_store::PageFile::from_fd(fd, "swapdisk-test"),
        )
        .expect("reopen the page file");
        assert!(!rec.formatted);
        self.store = Some(std::sync::Arc::new(store));
        self.attach(true);
        rec
    }
}
