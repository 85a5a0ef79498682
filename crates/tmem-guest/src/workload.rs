//! The simulated guest: page-cache-like and swap-like traffic, every byte checked.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use tmem_abi::{Page, PAGE_SIZE};
use tmem_front::{
    format_uuid, parse_uuid, Cleancache, Client, FileKey, Frontswap, LoadOutcome, Outcome,
    PoolHandle,
};

use crate::content::{check, fill, mix, Check, PageId, Rng};
use crate::ConnArgs;

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Private filesystems to mount (private ephemeral pools).
    #[arg(long, default_value_t = 4)]
    pub filesystems: u32,
    /// Mount a shared filesystem with this uuid (shared ephemeral pool). Repeatable.
    #[arg(long = "shared-fs", value_name = "UUID")]
    pub shared_fs: Vec<String>,
    /// Enable swap (one persistent pool).
    #[arg(long)]
    pub swap: bool,
    /// Swap area size in pages.
    #[arg(long, default_value_t = 4096)]
    pub swap_pages: u64,
    /// The first N swap pages are cold, like an idle process's swapped-out memory: stored
    /// once, then only loaded (stored again only if not in tmem), never invalidated.
    #[arg(long, default_value_t = 0)]
    pub swap_cold_pages: u64,
    /// Inodes per filesystem.
    #[arg(long, default_value_t = 16)]
    pub inodes: u64,
    /// Pages per inode.
    #[arg(long, default_value_t = 16)]
    pub pages_per_inode: u32,
    /// Stop after this many seconds.
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Stop after this many operations.
    #[arg(long)]
    pub ops: Option<u64>,
    /// Text-like page bodies (phrases of a small vocabulary, which lz4 packs to about 0.3)
    /// instead of random ones, to put tmemd's compression to work. Every byte is still
    /// checked, and a stale page is still told apart from a corrupt one.
    #[arg(long)]
    pub text_pages: bool,
    /// Seconds between status reports (0: none).
    #[arg(long, default_value_t = 1.0)]
    pub report_interval: f64,
    /// Print JSON lines instead of human output.
    #[arg(long)]
    pub json: bool,
    /// Workload random seed (default: from the instance).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Pause between operations, in microseconds (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    pub pace_us: u64,
}

/// The guest's own counters.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct GuestCounters {
    pub ops: u64,
    pub reads: u64,
    pub read_hits: u64,
    pub evictions: u64,
    pub writes: u64,
    pub truncates: u64,
    pub swap_stores: u64,
    pub swap_stored: u64,
    pub swap_loads: u64,
    pub swap_loaded: u64,
    /// Of `swap_loaded`, pages stored on an earlier connection to tmemd (they survived a
    /// disconnect, e.g. a restart of tmemd), verified like every other.
    pub swap_loaded_after_reconnect: u64,
    pub swap_lost: u64,
    pub swap_unavailable: u64,
    pub swap_failed: u64,
    pub swap_invalidates: u64,
    pub verified_pages: u64,
    /// Hits on pages the model says were invalidated, whose content is nevertheless current.
    pub unexpected_hits: u64,
    pub shared_refused: u64,
    pub verification_errors: u64,
}

struct Fs {
    handle: Option<PoolHandle>,
    seed: u64,
    shared: bool,
    label: String,
    /// Version of each page (private fs); shared fs content never changes.
    versions: Vec<u32>,
    /// Whether tmem may hold the page (put since the last invalidation / exclusive hit).
    maybe_in_tmem: Vec<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Empty,
    /// Stored in tmem: the version, and the connection it was stored on (the client's
    /// `connects` count), so a load on a later connection is known to have survived it.
    InTmem(u32, u64),
    OnDisk(u32),
    /// Stored in tmem, then reported lost (the backend lost it); stays lost until the
    /// offset is stored or invalidated again.
    Lost,
}

struct Guest {
    a: RunArgs,
    client: Arc<Client>,
    cc: Cleancache,
    fswap: Frontswap,
    fs: Vec<Fs>,
    swap: Vec<Slot>,
    swap_seed: u64,
    swap_version: u32,
    c: GuestCounters,
    errors: Vec<String>,
    rng: Rng,
    start: Instant,
    page: Page,
    scratch: Page,
}

fn emit_json(v: serde_json::Value) {
    outln!("{v}");
}

/// Set by SIGTERM or SIGINT: finish the current step, print the final report, exit.
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Take SIGTERM and SIGINT on a thread of their own, so a harness can end a run early and
/// still get the final report. Must run before any other thread starts (they inherit the mask).
pub fn stop_on_signals() {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    if set.thread_block().is_err() {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if set.wait().is_ok() {
                STOP.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        });
}

/// Whether SIGTERM or SIGINT asked this program to stop (see [`stop_on_signals`]).
pub fn stop_requested() -> bool {
    STOP.load(std::sync::atomic::Ordering::Relaxed)
}

pub fn run(a: RunArgs) -> ExitCode {
    crate::content::set_text(a.text_pages);
    let mut shared_uuids = Vec::new();
    for s in &a.shared_fs {
        match parse_uuid(s) {
            Some(u) => shared_uuids.push(u),
            None => {
                eprintln!("tmem-guest: --shared-fs {s:?} is not a uuid (32 hex digits)");
                return ExitCode::from(2);
            }
        }
    }
    if a.inodes == 0 || a.pages_per_inode == 0 {
        eprintln!("tmem-guest: --inodes and --pages-per-inode must be at least 1");
        return ExitCode::from(2);
    }
    let (client, instance) = a.conn.client();
    let cc = Cleancache::new(Arc::clone(&client));
    let fswap = Frontswap::new(Arc::clone(&client));
    let per_fs = (a.inodes * u64::from(a.pages_per_inode)) as usize;
    let mut g = Guest {
        rng: Rng::new(a.seed.unwrap_or(instance)),
        a: a.clone(),
        client,
        cc,
        fswap,
        fs: Vec::new(),
        swap: vec![Slot::Empty; if a.swap { a.swap_pages as usize } else { 0 }],
        swap_seed: mix(instance ^ 0x5357_4150),
        swap_version: 0,
        c: GuestCounters::default(),
        errors: Vec::new(),
        start: Instant::now(),
        page: [0u8; PAGE_SIZE],
        scratch: [0u8; PAGE_SIZE],
    };
    for i in 0..a.filesystems {
        let label = format!("fs{i}");
        let handle = match g.cc.init_fs() {
            Ok(h) => Some(h),
            Err(e) => {
                g.event("init-fs-failed", &format!("{label}: {e}"));
                None
            }
        };
        g.fs.push(Fs {
            handle,
            seed: mix(instance ^ mix(u64::from(i) + 1)),
            shared: false,
            label,
            versions: vec![0; per_fs],
            maybe_in_tmem: vec![false; per_fs],
        });
    }
    for u in shared_uuids {
        let w = u64::from_le_bytes(u[0..8].try_into().expect("8"))
            ^ mix(u64::from_le_bytes(u[8..16].try_into().expect("8")));
        let label = format!("shared:{}", format_uuid(&u));
        let handle = match g.cc.init_shared_fs(u) {
            Ok(h) => Some(h),
            Err(e) => {
                g.c.shared_refused += 1;
                g.event("shared-refused", &format!("{label}: {e}"));
                None
            }
        };
        g.fs.push(Fs {
            handle,
            seed: mix(w),
            shared: true,
            label,
            versions: vec![0; per_fs],
            maybe_in_tmem: vec![false; per_fs],
        });
    }
    if a.swap {
        if let Err(e) = g.fswap.init(0) {
            g.event("swap-init-failed", &e.to_string());
        }
    }
    g.report("status");
    let code = g.main_loop();
    g.report("final");
    if !a.json {
        g.print_table();
    }
    code
}

impl Guest {
    fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn event(&mut self, kind: &str, msg: &str) {
        if self.a.json {
            emit_json(
                serde_json::json!({"type":"event","t":self.elapsed(),"event":kind,"message":msg}),
            );
        } else {
            eprintln!("tmem-guest: {kind}: {msg}");
        }
    }

    fn fatal(&mut self, kind: &str, msg: String) {
        self.c.verification_errors += 1;
        if self.a.json {
            emit_json(
                serde_json::json!({"type":"error","t":self.elapsed(),"kind":kind,"message":msg}),
            );
        } else {
            eprintln!("tmem-guest: VERIFICATION ERROR ({kind}): {msg}");
        }
        self.errors.push(format!("{kind}: {msg}"));
    }

    fn main_loop(&mut self) -> ExitCode {
        let deadline = self
            .a
            .seconds
            .map(|s| self.start + Duration::from_secs_f64(s.max(0.0)));
        let interval =
            (self.a.report_interval > 0.0).then(|| Duration::from_secs_f64(self.a.report_interval));
        let mut next_report = interval.map(|i| Instant::now() + i);
        loop {
            if self.c.verification_errors > 0 {
                return ExitCode::from(1);
            }
            if self.a.ops.is_some_and(|n| self.c.ops >= n)
                || STOP.load(std::sync::atomic::Ordering::Relaxed)
            {
                break;
            }
            if self.c.ops.is_multiple_of(64) {
                let now = Instant::now();
                if deadline.is_some_and(|d| now >= d) {
                    break;
                }
                if let (Some(t), Some(i)) = (next_report, interval) {
                    if now >= t {
                        self.report("status");
                        next_report = Some(now + i);
                    }
                }
                for e in self.client.take_events() {
                    let s = serde_json::to_string(&e).unwrap_or_default();
                    self.event("pool", &s);
                }
            }
            self.step();
            if self.a.pace_us > 0 {
                std::thread::sleep(Duration::from_micros(self.a.pace_us));
            }
        }
        if self.c.verification_errors > 0 {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        }
    }

    fn step(&mut self) {
        self.c.ops += 1;
        let have_fs = self.fs.iter().any(|f| f.handle.is_some());
        let swap = !self.swap.is_empty() && self.fswap.handle().is_some();
        let do_swap = match (have_fs, swap) {
            (false, false) => return,
            (true, false) => false,
            (false, true) => true,
            (true, true) => self.rng.below(10) < 3,
        };
        if do_swap {
            self.swap_step();
        } else {
            self.fs_step();
        }
    }

    fn fs_step(&mut self) {
        let live: Vec<usize> = (0..self.fs.len())
            .filter(|&i| self.fs[i].handle.is_some())
            .collect();
        let fi = live[self.rng.below(live.len() as u64) as usize];
        let inode = self.rng.below(self.a.inodes);
        let index = self.rng.below(u64::from(self.a.pages_per_inode)) as u32;
        let slot = (inode * u64::from(self.a.pages_per_inode) + u64::from(index)) as usize;
        let r = self.rng.below(100);
        let fs = &self.fs[fi];
        let h = fs.handle.expect("live");
        let key = FileKey::from_ino(inode + 1);
        let want = PageId {
            seed: fs.seed,
            inode: inode + 1,
            index,
            version: fs.versions[slot],
        };
        if r < 50 {
            // Read: look in tmem first.
            self.c.reads += 1;
            self.page.fill(0xa5);
            if self.cc.get_page(h, key, u64::from(index), &mut self.page) {
                self.c.read_hits += 1;
                let was = self.fs[fi].maybe_in_tmem[slot];
                match check(&self.page, want, &mut self.scratch) {
                    Check::Ok => {
                        self.c.verified_pages += 1;
                        if !was {
                            self.c.unexpected_hits += 1;
                        }
                    }
                    Check::Stale { got } => {
                        let l = self.fs[fi].label.clone();
                        self.fatal(
                            "stale",
                            format!(
                                "{l} inode {} page {index}: got version {got}, current is {}",
                                inode + 1,
                                want.version
                            ),
                        );
                    }
                    Check::Corrupt => {
                        let l = self.fs[fi].label.clone();
                        self.fatal(
                            "corrupt",
                            format!(
                                "{l} inode {} page {index} version {}: wrong bytes",
                                inode + 1,
                                want.version
                            ),
                        );
                    }
                }
                if !self.fs[fi].shared {
                    // Private ephemeral gets are exclusive.
                    self.fs[fi].maybe_in_tmem[slot] = false;
                }
            }
            // The page is now in the page cache; sometimes evict it at once.
            if self.rng.below(2) == 0 {
                self.evict(fi, h, key, index, slot, want);
            }
        } else if r < 80 {
            self.evict(fi, h, key, index, slot, want);
        } else if r < 95 {
            // Write: the cached copy must go.
            self.c.writes += 1;
            let fs = &mut self.fs[fi];
            if !fs.shared {
                fs.versions[slot] = fs.versions[slot].wrapping_add(1);
            }
            fs.maybe_in_tmem[slot] = false;
            self.cc.invalidate_page(h, key, u64::from(index));
        } else {
            // Truncate / rewrite the whole file.
            self.c.truncates += 1;
            let ppi = self.a.pages_per_inode as usize;
            let base = inode as usize * ppi;
            let fs = &mut self.fs[fi];
            for s in base..base + ppi {
                if !fs.shared {
                    fs.versions[s] = fs.versions[s].wrapping_add(1);
                }
                fs.maybe_in_tmem[s] = false;
            }
            self.cc.invalidate_inode(h, key);
        }
    }

    fn evict(
        &mut self,
        fi: usize,
        h: PoolHandle,
        key: FileKey,
        index: u32,
        slot: usize,
        want: PageId,
    ) {
        self.c.evictions += 1;
        fill(&mut self.page, want);
        if self.cc.put_page(h, key, u64::from(index), &self.page) == Outcome::Stored {
            self.fs[fi].maybe_in_tmem[slot] = true;
        }
    }

    fn swap_step(&mut self) {
        let off = self.rng.below(self.swap.len() as u64);
        let mut r = self.rng.below(100);
        let s = self.swap[off as usize];
        if off < self.a.swap_cold_pages {
            // Cold: load what tmem holds, (re)store anything else.
            r = if matches!(s, Slot::InTmem(..)) { 50 } else { 0 };
        }
        let id = |v: u32, seed: u64| PageId {
            seed,
            inode: 0,
            index: off as u32,
            version: v,
        };
        if r < 40 {
            self.c.swap_stores += 1;
            self.swap_version = self.swap_version.wrapping_add(1);
            let v = self.swap_version;
            fill(&mut self.page, id(v, self.swap_seed));
            if self.fswap.store(0, off, &self.page) {
                self.c.swap_stored += 1;
                let conn = self.client.counters().map.connects;
                self.swap[off as usize] = Slot::InTmem(v, conn);
            } else {
                self.swap[off as usize] = Slot::OnDisk(v);
            }
        } else if r < 85 {
            self.c.swap_loads += 1;
            self.page.fill(0x5a);
            let got = self.fswap.load(0, off, &mut self.page);
            match (got, s) {
                (LoadOutcome::Loaded, Slot::InTmem(v, conn)) => {
                    self.c.swap_loaded += 1;
                    match check(&self.page, id(v, self.swap_seed), &mut self.scratch) {
                        Check::Ok => {
                            self.c.verified_pages += 1;
                            if self.client.counters().map.connects > conn {
                                self.c.swap_loaded_after_reconnect += 1;
                            }
                        }
                        Check::Stale { got } => self.fatal(
                            "stale",
                            format!("swap offset {off}: got version {got}, stored {v}"),
                        ),
                        Check::Corrupt => self.fatal(
                            "corrupt",
                            format!("swap offset {off} version {v}: wrong bytes"),
                        ),
                    }
                }
                (LoadOutcome::Loaded, _) => {
                    self.fatal("stale", format!("swap offset {off}: tmem returned a page that was not stored there ({s:?})"));
                }
                (LoadOutcome::Lost, Slot::InTmem(..)) => {
                    // Reported loss: the data is gone (a kernel would fail this swap-in).
                    self.c.swap_lost += 1;
                    self.swap[off as usize] = Slot::Lost;
                }
                // The loss is reported again, or the library has forgotten the key: both
                // are honest (neither returns data).
                (LoadOutcome::Lost | LoadOutcome::NotStored, Slot::Lost) => {}
                (LoadOutcome::Lost, _) => {
                    self.fatal(
                        "bogus-loss",
                        format!("swap offset {off}: reported lost but never stored ({s:?})"),
                    );
                }
                (LoadOutcome::Unavailable, Slot::InTmem(..)) => self.c.swap_unavailable += 1,
                (LoadOutcome::Unavailable, _) => {
                    self.fatal(
                        "bogus-unavailable",
                        format!("swap offset {off}: unavailable but never stored ({s:?})"),
                    );
                }
                (LoadOutcome::NotStored, Slot::InTmem(v, _)) => {
                    self.fatal(
                        "silent-loss",
                        format!("swap offset {off}: version {v} was stored, load says not stored"),
                    );
                }
                (LoadOutcome::NotStored, _) => {}
                (LoadOutcome::Failed(e), _) => {
                    self.c.swap_failed += 1;
                    let _ = e;
                }
            }
        } else {
            self.c.swap_invalidates += 1;
            self.fswap.invalidate_page(0, off);
            self.swap[off as usize] = Slot::Empty;
        }
    }

    fn report(&mut self, kind: &str) {
        let st = self.client.status();
        if self.a.json {
            emit_json(serde_json::json!({
                "type": kind,
                "t": self.elapsed(),
                "connected": st.connected,
                "client_id": st.client_id,
                "last_error": st.last_error,
                "guest": self.c,
                "counters": st.counters,
                "pools": st.pools,
                "ok": self.c.verification_errors == 0,
                "errors": self.errors,
            }));
        } else {
            let mapped = st.pools.iter().filter(|p| p.real_id.is_some()).count();
            let cc = st.counters.cleancache;
            let fsw = st.counters.frontswap;
            outln!(
                "[{:7.2}s] {} pools {}/{} mapped | ops {} | cleancache gets {}/{} puts {} inval {} | frontswap stores {}/{} loads {}/{} lost {} | errors {}",
                self.elapsed(),
                if st.connected { "connected   " } else { "disconnected" },
                mapped,
                st.pools.len(),
                self.c.ops,
                cc.succ_gets,
                cc.succ_gets + cc.failed_gets,
                cc.puts,
                cc.invalidates,
                fsw.succ_stores,
                fsw.succ_stores + fsw.failed_stores,
                fsw.succ_loads,
                fsw.loads,
                fsw.lost_loads,
                self.c.verification_errors
            );
        }
    }

    fn print_table(&self) {
        let st = self.client.status();
        outln!();
        outln!(
            "{:<10} {:<20} {:<38} {:>8} {:>5} {:>8}",
            "FAKE-ID",
            "KIND",
            "UUID",
            "REAL-ID",
            "LOST",
            "REPLAY"
        );
        for p in &st.pools {
            outln!(
                "{:<10} {:<20} {:<38} {:>8} {:>5} {:>8}{}",
                p.fake_id,
                p.kind,
                p.uuid,
                p.real_id.map_or("-".to_string(), |r| r.to_string()),
                if p.lost { "yes" } else { "no" },
                p.pending_replay,
                p.error
                    .as_ref()
                    .map_or(String::new(), |e| format!("  error: {e}"))
            );
        }
        let c = st.counters;
        outln!();
        outln!(
            "cleancache: succ_gets {} failed_gets {} puts {} invalidates {}",
            c.cleancache.succ_gets,
            c.cleancache.failed_gets,
            c.cleancache.puts,
            c.cleancache.invalidates
        );
        outln!(
            "frontswap:  succ_stores {} failed_stores {} loads {} succ_loads {} lost_loads {} invalidates {}",
            c.frontswap.succ_stores, c.frontswap.failed_stores, c.frontswap.loads, c.frontswap.succ_loads, c.frontswap.lost_loads, c.frontswap.invalidates
        );
        outln!(
            "map:        connects {} disconnects {} mapped {} reattached {} losses {} lost_pages {} replayed {} dropped_puts {}",
            c.map.connects, c.map.disconnects, c.map.pools_mapped, c.map.reattached, c.map.losses, c.map.lost_pages, c.map.replayed, c.map.dropped_puts
        );
        outln!(
            "guest:      {}",
            serde_json::to_string(&self.c).unwrap_or_default()
        );
        if self.errors.is_empty() {
            outln!("verification: OK ({} pages checked)", self.c.verified_pages);
        } else {
            outln!("verification: FAILED");
            for e in &self.errors {
                outln!("  {e}");
            }
        }
    }
}
