//! [`SwapDisk`]: blkif requests executed against the store and the spill file.
//!
//! # Where a page is, and which copy wins
//! A disk page is in the store (a persistent page), in the spill file, or nowhere (it reads
//! as zeroes). **The store wins**: a read asks the store first and reads the spill file only
//! on a miss. Invariant I1: *between two operations on a page, if the store holds it, its
//! spill block is a hole.* Every operation keeps I1 with writes in this order:
//!
//! * write into memory: `put` to the store, *then* punch the spill block (if any). Killed in
//!   between: both hold it, the store (new data) wins.
//! * write to the spill file (the put was refused): `pwrite` the spill block, *then* flush
//!   the store's copy (if any). Killed in between: both hold it, the store (old data) wins;
//!   the write was never acknowledged.
//! * an all-zero page, and DISCARD: flush the store's copy, punch the spill block. By I1
//!   only one of the two held anything, so either order is safe.
//!
//! A kill can thus leave a page in both places, with the store's copy the right one; I1 is
//! restored at [`SwapDisk::open`] before any request runs (every page the spill file may
//! hold is looked up in the store and its spill block punched if the store has it).
//!
//! Hence, after a kill at any instant: a page with no write in flight reads its last
//! acknowledged content; a page with a write in flight reads its old or its new content.
//! That holds when the store is full to the last frame too: a rewrite it cannot take is
//! refused with the old copy kept (`Store::put_keeping_old`), written to the spill file, and
//! only then is the store's copy flushed.
//!
//! # Concurrency
//! One disk is driven by one thread at a time (`&mut self`), one request after the other:
//! a read-modify-write of a partial page can then never lose a concurrent write to the
//! other sectors of the same page. The store is shared with every other guest.

use crate::bits::Bits;
use crate::spill::{Found, SpillFile};
use crate::{disk_oid, DiskConfig, DiskError, OpenError, SegmentIo, SpillSync};
use std::sync::Arc;
use tmem_blkif::abi::{MAX_SEGMENTS, SECTORS_PER_PAGE};
use tmem_blkif::sectors::{discard_span, disk_pages, page_ops, PageOp};
use tmem_blkif::{BlkRequest, Transfer};
use tmem_store::{ClientId, Oid, Page, PageKey, PageSink, Store, TmemError, PAGE_SIZE};

/// When a request may be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    /// Now.
    Now,
    /// After [`SpillSync::sync`] (a FLUSH, or a write with FUA, while spilled data is not
    /// yet durable). The sync blocks: run it where blocking is allowed.
    AfterSync,
}

/// Counters of one disk (for `tmem list` and the tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskStats {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub discards: u64,
    /// Pages written into the store.
    pub store_writes: u64,
    /// Pages written to the spill file because the store said no.
    pub spill_writes: u64,
    /// Of `store_writes`: pages that were in the spill file (moved back into memory).
    pub promotions: u64,
    /// Pages read from the spill file.
    pub spill_reads: u64,
    /// Store refusals that sent a page to the spill file, by reason.
    pub no_memory: u64,
    pub over_cap: u64,
    pub frozen: u64,
    pub dup_put_flushed: u64,
}

/// What [`SwapDisk::open`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// The spill file was created (or emptied, for a fresh disk).
    pub spill_created: bool,
    /// Pages the spill file may hold after reconciling.
    pub spilled_pages: u64,
    /// Pages found in both places (a kill between two writes): the spill copy was dropped.
    pub reconciled: u64,
}

/// A sink that keeps nothing: looking a page up in the store without copying it.
struct Probe;

impl PageSink for Probe {
    fn write_page(&mut self, _src: &Page) {}
    fn write_zero_page(&mut self) {}
    fn write_filled_page(&mut self, _word: u64) {}
}

fn is_zero(p: &Page) -> bool {
    // A slice comparison (memcmp), several times faster than a byte loop.
    p[..] == [0u8; PAGE_SIZE][..]
}

/// The store and the spill file of one disk, and where each page may be.
#[derive(Debug)]
struct Backing {
    store: Arc<Store>,
    client: ClientId,
    pool: u32,
    oid: Oid,
    spill: SpillFile,
    /// Pages the store may hold (a superset: set after a successful put, and for every page
    /// of a reopened non-empty pool; cleared when a page is flushed or found missing).
    in_store: Bits,
    /// Pages the spill file may hold (a superset: set before a spill write).
    spilled: Bits,
    stats: DiskStats,
    /// Test hook: store/spill mutations left before a simulated kill.
    crash_budget: Option<u32>,
}

impl Backing {
    fn key(&self, page: u64) -> PageKey {
        PageKey {
            oid: self.oid,
            // `open` refused disks of more than 2^32 pages.
            index: page as u32,
        }
    }

    /// Before each change to the store or the spill file: a simulated kill stops here.
    fn step(&mut self) -> Result<(), DiskError> {
        match &mut self.crash_budget {
            Some(0) => Err(DiskError::Crashed),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn store_err(op: &'static str, page: u64) -> impl FnOnce(TmemError) -> DiskError {
        move |source| DiskError::Store { op, page, source }
    }

    fn spill_err(op: &'static str, page: u64) -> impl FnOnce(std::io::Error) -> DiskError {
        move |source| DiskError::Spill { op, page, source }
    }

    /// Whether the store has `page` (looked up without copying it out).
    fn store_has(&mut self, page: u64) -> Result<bool, DiskError> {
        if !self.in_store.get(page) {
            return Ok(false);
        }
        let hit = match self
            .store
            .get(self.client, self.pool, self.key(page), &mut Probe)
        {
            Ok(hit) => hit,
            Err(TmemError::Empty) => false,
            Err(e) => return Err(Self::store_err("lookup", page)(e)),
        };
        if !hit {
            self.in_store.clear(page);
        }
        Ok(hit)
    }

    /// The content of `page`: the store's copy, else the spill file's, else zeroes.
    fn read_page(&mut self, page: u64, dst: &mut Page) -> Result<(), DiskError> {
        if self.in_store.get(page) {
            match self.store.get(self.client, self.pool, self.key(page), dst) {
                Ok(true) => return Ok(()),
                Ok(false) | Err(TmemError::Empty) => self.in_store.clear(page),
                Err(e) => return Err(Self::store_err("get", page)(e)),
            }
        }
        if self.spilled.get(page) {
            self.stats.spill_reads += 1;
            return self
                .spill
                .read(page, dst)
                .map_err(Self::spill_err("read", page));
        }
        dst.fill(0);
        Ok(())
    }

    /// Make `page` hold `data`: into the store if it takes it, else into the spill file.
    /// Returns once the data is in one of them (see the module comment for the order).
    fn write_page(&mut self, page: u64, data: &Page) -> Result<(), DiskError> {
        if is_zero(data) {
            // An absent page reads as zeroes: no memory and no spill space needed.
            return self.drop_page(page);
        }
        self.step()?;
        // A rewrite the store cannot take keeps the old copy (NoMemory), so a kill before the
        // spill write below leaves the old contents.
        let refused = match self
            .store
            .put_keeping_old(self.client, self.pool, self.key(page), data)
        {
            Ok(()) => {
                self.in_store.set(page);
                self.stats.store_writes += 1;
                if self.spilled.get(page) {
                    self.stats.promotions += 1;
                    self.step()?;
                    self.spill
                        .punch(page..page + 1)
                        .map_err(Self::spill_err("punch", page))?;
                    self.spilled.clear(page);
                }
                return Ok(());
            }
            Err(e) => e,
        };
        match refused {
            TmemError::NoMemory => self.stats.no_memory += 1,
            TmemError::OverCap => self.stats.over_cap += 1,
            TmemError::Frozen => self.stats.frozen += 1,
            TmemError::DupPutFlushed => {
                // The store dropped its old copy.
                self.stats.dup_put_flushed += 1;
                self.in_store.clear(page);
            }
            e => return Err(Self::store_err("put", page)(e)),
        }
        self.stats.spill_writes += 1;
        self.spilled.set(page);
        self.step()?;
        self.spill
            .write(page, data)
            .map_err(Self::spill_err("write", page))?;
        if self.in_store.get(page) {
            self.step()?;
            self.store
                .flush_page(self.client, self.pool, self.key(page))
                .map_err(Self::store_err("flush", page))?;
            self.in_store.clear(page);
        }
        Ok(())
    }

    /// Make `page` absent (reads as zeroes).
    fn drop_page(&mut self, page: u64) -> Result<(), DiskError> {
        if self.in_store.get(page) {
            self.step()?;
            self.store
                .flush_page(self.client, self.pool, self.key(page))
                .map_err(Self::store_err("flush", page))?;
            self.in_store.clear(page);
        }
        if self.spilled.get(page) {
            self.step()?;
            self.spill
                .punch(page..page + 1)
                .map_err(Self::spill_err("punch", page))?;
            self.spilled.clear(page);
        }
        Ok(())
    }

    /// Make pages `r` absent. Costs one store flush per page the store may hold (a short
    /// metadata-lock hold each) and one hole punch; the whole disk at once is one object
    /// flush, which the store reclaims in chunks.
    fn drop_pages(&mut self, r: std::ops::Range<u64>, disk_pages: u64) -> Result<(), DiskError> {
        if r.is_empty() {
            return Ok(());
        }
        if r.start == 0 && r.end >= disk_pages && self.in_store.ones() > 0 {
            self.step()?;
            self.store
                .flush_object(self.client, self.pool, self.oid)
                .map_err(Self::store_err("flush object", 0))?;
            self.in_store.clear_all();
        }
        let mut p = r.start;
        while let Some(q) = self.in_store.next_one(p, r.end) {
            self.step()?;
            self.store
                .flush_page(self.client, self.pool, self.key(q))
                .map_err(Self::store_err("flush", q))?;
            self.in_store.clear(q);
            p = q + 1;
        }
        if self.spilled.any_in(r.clone()) {
            self.step()?;
            self.spill
                .punch(r.clone())
                .map_err(Self::spill_err("punch", r.start))?;
            self.spilled.clear_range(r);
        }
        Ok(())
    }
}

/// One swap disk. See the module documentation for where pages live and why a kill at any
/// point is safe.
#[derive(Debug)]
pub struct SwapDisk {
    b: Backing,
    sectors: u64,
    pages: u64,
    /// One page per segment: the request's data on its way in or out.
    staging: Box<[Page; MAX_SEGMENTS]>,
    /// The page being read-modify-written.
    scratch: Box<Page>,
}

impl SwapDisk {
    /// Open the disk `cfg` on pool `pool` of `client` (see [`crate::open_pool`]).
    ///
    /// `fresh`: the pool was just created (not reattached), so the disk starts empty and any
    /// old spill file of the same name is emptied. Otherwise the spill file is kept, and
    /// pages that a kill left in both places lose their spill copy before this returns.
    /// Blocks on the spill file (a scan of its holes, and one store lookup per page it may
    /// hold that the store may hold too).
    pub fn open(
        cfg: &DiskConfig,
        store: Arc<Store>,
        client: ClientId,
        pool: u32,
        fresh: bool,
    ) -> Result<(SwapDisk, OpenReport), OpenError> {
        let pages = disk_pages(cfg.sectors);
        if cfg.sectors < u64::from(SECTORS_PER_PAGE) || pages > 1 << 32 {
            return Err(OpenError::Size(cfg.sectors));
        }
        let path = cfg.spill_dir.join(cfg.id.spill_name());
        let (spill, found) = SpillFile::open(&path, pages, fresh)?;
        let mut b = Backing {
            store,
            client,
            pool,
            oid: disk_oid(cfg.id.devid),
            spill,
            in_store: Bits::new(pages),
            spilled: Bits::new(pages),
            stats: DiskStats::default(),
            crash_budget: None,
        };
        // Which pages the store may hold: none if the pool is new or empty; else any.
        match b.store.get(client, pool, b.key(0), &mut Probe) {
            // A new disk on a pool that holds pages (the caller's mistake): empty it rather
            // than show old pages.
            Ok(_) if fresh => b
                .store
                .flush_object(client, pool, b.oid)
                .map_err(|source| OpenError::Pool { pool, source })?,
            Ok(hit) => {
                b.in_store.set_all();
                if !hit {
                    b.in_store.clear(0);
                }
            }
            Err(TmemError::Empty) => {}
            Err(source) => return Err(OpenError::Pool { pool, source }),
        }
        let mut report = OpenReport {
            spill_created: found == Found::New,
            ..OpenReport::default()
        };
        if found == Found::Existing {
            b.spill
                .scan(&mut b.spilled)
                .map_err(|source| OpenError::SpillScan {
                    path: b.spill.path().to_owned(),
                    source,
                })?;
            // Restore I1: where both hold a page, the store's copy is the right one.
            let mut p = 0;
            while let Some(q) = b.spilled.next_one(p, pages) {
                let both = b
                    .store_has(q)
                    .map_err(|source| OpenError::Reconcile { page: q, source })?;
                if both {
                    b.spill
                        .punch(q..q + 1)
                        .map_err(|source| OpenError::Reconcile {
                            page: q,
                            source: DiskError::Spill {
                                op: "punch",
                                page: q,
                                source,
                            },
                        })?;
                    b.spilled.clear(q);
                    report.reconciled += 1;
                }
                p = q + 1;
            }
        }
        report.spilled_pages = b.spilled.ones();
        Ok((
            SwapDisk {
                b,
                sectors: cfg.sectors,
                pages,
                staging: Box::new([[0; PAGE_SIZE]; MAX_SEGMENTS]),
                scratch: Box::new([0; PAGE_SIZE]),
            },
            report,
        ))
    }

    /// Size in sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    pub fn stats(&self) -> DiskStats {
        self.b.stats
    }

    /// Pages the spill file may hold (exact unless a kill or an I/O error intervened).
    pub fn spilled_pages(&self) -> u64 {
        self.b.spilled.ones()
    }

    /// The handle that makes spilled data durable, for a thread that may block.
    pub fn syncer(&self) -> SpillSync {
        self.b.spill.syncer()
    }

    /// Test hook: allow `n` more changes to the store or spill file, then fail every request
    /// with [`DiskError::Crashed`] as if tmemd had been killed right there.
    #[cfg(any(test, feature = "test-utils"))]
    pub fn crash_after(&mut self, n: u32) {
        self.b.crash_budget = Some(n);
    }

    /// Execute one validated request. `Ok(Done::Now)`: answer OKAY now;
    /// `Ok(Done::AfterSync)`: answer OKAY once [`SpillSync::sync`] has succeeded (answer
    /// ERROR if it fails). `Err`: answer [`DiskError::status`]; a failed write leaves its
    /// sectors holding old or new data.
    ///
    /// Blocks only on spill-file `pread`/`pwrite`/hole punching, never on `fdatasync`.
    pub fn execute(
        &mut self,
        req: &BlkRequest,
        io: &mut impl SegmentIo,
    ) -> Result<Done, DiskError> {
        self.check_range(req)?;
        match req {
            BlkRequest::Read(t) => {
                self.b.stats.reads += 1;
                self.read(t, io)?;
                Ok(Done::Now)
            }
            BlkRequest::Write { io: t, flush } => {
                self.b.stats.writes += 1;
                self.write(t, io)?;
                Ok(self.after(*flush))
            }
            BlkRequest::Flush => {
                self.b.stats.flushes += 1;
                Ok(self.after(true))
            }
            BlkRequest::Discard {
                sector, nr_sectors, ..
            } => {
                self.b.stats.discards += 1;
                // Whole pages are freed; partly covered pages at the ends stay as they are
                // (a discard is a hint, and swap discards whole pages).
                let span = discard_span(*sector, *nr_sectors);
                self.b.drop_pages(span.whole_pages, self.pages)?;
                Ok(Done::Now)
            }
        }
    }

    /// [`SwapDisk::execute`], then the sync if one is needed (blocks): for tests, benches and
    /// threads allowed to block.
    pub fn execute_blocking(
        &mut self,
        req: &BlkRequest,
        io: &mut impl SegmentIo,
    ) -> Result<(), DiskError> {
        if self.execute(req, io)? == Done::AfterSync {
            self.syncer().sync().map_err(DiskError::Sync)?;
        }
        Ok(())
    }

    /// The parser checked the request against the disk's size; this disk must be the same
    /// size (a request checked against other parameters is refused, not executed).
    fn check_range(&self, req: &BlkRequest) -> Result<(), DiskError> {
        let (sector, n) = match req {
            BlkRequest::Read(t) | BlkRequest::Write { io: t, .. } => (t.sector(), t.sectors()),
            BlkRequest::Discard {
                sector, nr_sectors, ..
            } => (*sector, *nr_sectors),
            BlkRequest::Flush => return Ok(()),
        };
        match sector.checked_add(n) {
            Some(end) if end <= self.sectors => Ok(()),
            _ => Err(DiskError::OutOfRange { sector, sectors: n }),
        }
    }

    fn after(&self, flush: bool) -> Done {
        if flush && self.b.spill.dirty() {
            Done::AfterSync
        } else {
            Done::Now
        }
    }

    fn read(&mut self, t: &Transfer, io: &mut impl SegmentIo) -> Result<(), DiskError> {
        let ops = page_ops(t);
        for group in groups(&ops) {
            let page = group[0].disk_page;
            if let [op] = group {
                if op.is_whole_page() {
                    self.b.read_page(page, &mut self.staging[op.segment])?;
                    continue;
                }
            }
            self.b.read_page(page, &mut self.scratch)?;
            for op in group {
                op.read_from(&self.scratch, &mut self.staging[op.segment]);
            }
        }
        let segs = t.segments();
        io.deliver(segs, &self.staging[..segs.len()])?;
        Ok(())
    }

    fn write(&mut self, t: &Transfer, io: &mut impl SegmentIo) -> Result<(), DiskError> {
        let segs = t.segments();
        // All of the request's data first: a failed copy leaves the disk untouched.
        io.fetch(segs, &mut self.staging[..segs.len()])?;
        let ops = page_ops(t);
        for group in groups(&ops) {
            let page = group[0].disk_page;
            if let [op] = group {
                if op.is_whole_page() {
                    self.b.write_page(page, &self.staging[op.segment])?;
                    continue;
                }
            }
            self.b.read_page(page, &mut self.scratch)?;
            for op in group {
                op.write_into(&mut self.scratch, &self.staging[op.segment]);
            }
            self.b.write_page(page, &self.scratch)?;
        }
        Ok(())
    }
}

/// The page ops of a transfer grouped by disk page (two segments can share one page; the
/// ops of one page are consecutive).
fn groups(ops: &[PageOp]) -> impl Iterator<Item = &[PageOp]> {
    ops.chunk_by(|a, b| a.disk_page == b.disk_page)
}

#[cfg(test)]
mod tests;
