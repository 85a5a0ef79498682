//! Simulated tmem guest, workload and load generator.
//!
//! `tmem-guest [OPTIONS]` mounts filesystems and a swap area through tmem-front's lazy-init
//! pool map and drives page-cache-like and swap-like traffic, checking every returned byte
//! against a deterministic content function and its own model of what may be valid. Any
//! stale or corrupt byte is fatal (exit 1). `tmem-guest bench` is the ring load generator.
//! This binary must never hide a verification error and never panic on a backend failure.

/// `println!` that ends the process quietly when stdout is gone (e.g. piped into `head`)
/// instead of panicking: nobody is left to read the result.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout(), $($arg)*).is_err() {
            std::process::exit(1);
        }
    }};
}

mod content;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use tmem_abi::{Oid, Page, PageKey, PoolKind, PAGE_SIZE};
use tmem_front::{Client, ClientConfig, LocalTransport, Outcome, PageOp, Transport, XenTransport};
use tmem_ring::{Layout, PollPolicy};

#[derive(Debug, Parser)]
#[command(
    name = "tmem-guest",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: workload::RunArgs,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the simulated guest (the default).
    Run(workload::RunArgs),
    /// Put N pages then get them back through the ring; print pages/s and latency as JSON.
    Bench(BenchArgs),
}

/// Connection options shared by `run` and `bench`.
#[derive(Debug, Clone, Args)]
pub struct ConnArgs {
    /// How to reach tmemd: `local` (its Unix socket) or `xen` (the tmem PV device in
    /// xenstore, grants and an event channel; run in a Xen guest, --socket and --domid unused).
    #[arg(long, value_enum, default_value = "local")]
    pub transport: TransportKind,
    /// tmemd's socket.
    #[arg(long, default_value = "/run/tmemd/tmemd.sock")]
    pub socket: PathBuf,
    /// Domain id announced in the hello.
    #[arg(long, default_value_t = 1)]
    pub domid: u32,
    /// Domain instance (default: random). Persistent pools are reattached by (instance, uuid).
    #[arg(long)]
    pub instance: Option<u64>,
    /// Guest name (default: guest-<domid>).
    #[arg(long)]
    pub name: Option<String>,
    /// Ring pages (entries = largest power of two of 64-byte entries that fits), 1 to 256.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub ring_pages: u32,
    /// Data-area slots (pages), 1 to 65536.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub data_slots: u32,
    /// Most requests in flight (1 = synchronous).
    #[arg(long, default_value_t = 128, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=65_536))]
    pub window: usize,
    /// Spin before sleeping while waiting for a response, in microseconds (default: the
    /// transport's: 50 on the local transport, 0 on Xen, where a spinning vCPU holds the CPU
    /// the backend may be waiting for).
    #[arg(long)]
    pub spin_us: Option<u64>,
    /// Largest reconnect backoff, in milliseconds (starts at 10 ms, doubling).
    #[arg(long, default_value_t = 1000)]
    pub backoff_max_ms: u64,
    /// No answer for this long means tmemd is dead, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub call_timeout_ms: u64,
}

/// Which transport `tmem-guest` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportKind {
    Local,
    Xen,
}

impl ConnArgs {
    pub fn client(&self) -> (Arc<Client>, u64) {
        let instance = self.instance.unwrap_or_else(|| {
            let u = tmem_front::random_uuid();
            u64::from_le_bytes(u[0..8].try_into().expect("8 bytes"))
        });
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| format!("guest-{}", self.domid));
        let layout = Layout {
            ring_pages: self.ring_pages,
            data_slots: self.data_slots,
        };
        let poll = |default: PollPolicy| match self.spin_us {
            Some(us) => PollPolicy {
                spin: Duration::from_micros(us),
                ..default
            },
            None => default,
        };
        let call_timeout = Duration::from_millis(self.call_timeout_ms.max(1));
        let t: Box<dyn Transport> = match self.transport {
            TransportKind::Local => {
                let mut t = LocalTransport::new(&self.socket, self.domid, instance, &name);
                t.layout = layout;
                t.window = self.window.max(1);
                t.poll = poll(t.poll);
                t.call_timeout = call_timeout;
                Box::new(t)
            }
            TransportKind::Xen => {
                let mut t = XenTransport::new(instance);
                t.layout = layout;
                t.window = self.window.max(1);
                t.poll = poll(t.poll);
                t.call_timeout = call_timeout;
                Box::new(t)
            }
        };
        let cfg = ClientConfig {
            backoff_max: Duration::from_millis(self.backoff_max_ms.max(10)),
            ..ClientConfig::default()
        };
        (Arc::new(Client::new(t, cfg)), instance)
    }
}

#[derive(Debug, Args)]
struct BenchArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Pages to put, then get.
    #[arg(long, default_value_t = 100_000)]
    pages: u64,
    /// Pages per batch handed to the library (default: 1 if --window is 1, else 4×window).
    #[arg(long)]
    batch: Option<usize>,
    /// Pool kind: ephemeral or persistent.
    #[arg(long, default_value = "persistent")]
    kind: String,
    /// How long to wait for tmemd, in seconds.
    #[arg(long, default_value_t = 5.0)]
    wait: f64,
    /// Page content: `zero` (a zero page with the page number stamped at both ends; lz4
    /// packs it to a few dozen bytes), `text` (text-like phrases of a 16-word vocabulary,
    /// which lz4 packs to about 0.3 of a page: the slowest pages for its decoder) or `mixed`
    /// (page i is page i of the mixed corpus of `tmem-corpus`: this machine's executables,
    /// libraries, text and logs, zero, same-filled and random pages; built before any timing
    /// and held in memory, --pages × 4 KiB). Every byte of a `text` or `mixed` page is checked
    /// on get. With `mixed`, the report also gives the get latency of the pages tmemd stores
    /// compressed with lz4 (get.compressible_*; latencies with --batch 1 only).
    #[arg(long, value_enum, default_value = "zero")]
    content: BenchContent,
    /// Put-then-get rounds over the same pages (0: until killed, as a load beside another
    /// guest; SIGTERM or SIGINT then ends it after the current round, with the report).
    /// Rates and latencies cover every round.
    #[arg(long, default_value_t = 1)]
    rounds: u64,
    /// After the last round, keep the pages stored this long before destroying the pool (not
    /// timed), in milliseconds: time for an observer to read tmemd's statistics of them.
    #[arg(long, default_value_t = 0)]
    hold_ms: u64,
}

/// `tmem-guest bench --content`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BenchContent {
    Zero,
    Text,
    Mixed,
}

impl BenchContent {
    fn name(self) -> &'static str {
        match self {
            BenchContent::Zero => "zero",
            BenchContent::Text => "text",
            BenchContent::Mixed => "mixed",
        }
    }
}

/// tmemd's default `compress_max_bytes`: a page that compresses to more is stored raw.
const COMPRESS_MAX_BYTES: usize = PAGE_SIZE * 3 / 4;

/// Whether tmemd with lz4 on stores `p` compressed (tmem-store's `compress.rs`, with the
/// default threshold): not same-filled (those are kept as metadata only) and lz4 packs it to
/// at most [`COMPRESS_MAX_BYTES`]. tmemd may still store a few such pages raw: after eight
/// pages in a row that do not compress it skips some without trying.
fn lz4_compressible(p: &Page) -> bool {
    !tmem_corpus::same_filled(p)
        && (1..=COMPRESS_MAX_BYTES).contains(&lz4_flex::block::compress(p).len())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap's whole message: what is wrong, the usage line, where to read more.
            // --help and --version go to stdout with status 0.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    workload::stop_on_signals();
    match cli.cmd {
        Some(Cmd::Bench(b)) => bench(b),
        Some(Cmd::Run(r)) => workload::run(r),
        None => workload::run(cli.run),
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

fn bench(a: BenchArgs) -> ExitCode {
    let kind = match a.kind.as_str() {
        "ephemeral" => PoolKind::PrivateEphemeral,
        "persistent" => PoolKind::PrivatePersistent,
        other => {
            eprintln!("tmem-guest bench: --kind must be ephemeral or persistent, not {other:?}");
            return ExitCode::from(2);
        }
    };
    // `--content mixed`: the corpus and which of its pages compress, before connecting.
    let (corpus, compressible) = if a.content == BenchContent::Mixed {
        let c = tmem_corpus::Corpus::mixed(a.pages as usize);
        let z: Vec<bool> = c.pages.iter().map(|p| lz4_compressible(&p.0)).collect();
        (Some(c), z)
    } else {
        (None, Vec::new())
    };
    let (client, _) = a.conn.client();
    if !client.wait_mapped(Duration::from_secs_f64(a.wait.max(0.0))) {
        let st = client.status();
        eprintln!(
            "tmem-guest bench: no tmemd at {} ({})",
            a.conn.socket.display(),
            st.last_error.unwrap_or_default()
        );
        return ExitCode::from(2);
    }
    let h = match client.create_pool(kind, None) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("tmem-guest bench: creating the pool failed: {e}");
            return ExitCode::from(2);
        }
    };
    let window = a.conn.window.max(1);
    let batch = a
        .batch
        .unwrap_or(if window == 1 { 1 } else { window * 4 })
        .max(1);
    let key = |i: u64| PageKey {
        oid: Oid([i >> 10, 0, 0]),
        index: (i & 1023) as u32,
    };
    let text = a.content == BenchContent::Text;
    content::set_text(text);
    let text_id = |i: u64| content::PageId {
        seed: 0xbe4c,
        inode: i >> 10,
        index: (i & 1023) as u32,
        version: 0,
    };
    let stamp = |p: &mut Page, i: u64| {
        if text {
            content::fill(p, text_id(i));
        } else if let Some(c) = &corpus {
            *p = c.pages[i as usize].0;
        } else {
            p[0..8].copy_from_slice(&i.to_le_bytes());
            p[PAGE_SIZE - 8..].copy_from_slice(&(!i).to_le_bytes());
        }
    };
    let mut scratch = [0u8; PAGE_SIZE];
    let mut pages: Vec<Page> = vec![[0u8; PAGE_SIZE]; batch];
    let mut out = Vec::with_capacity(batch);
    let mut lat_put = Vec::with_capacity((a.pages as usize).div_ceil(batch));
    let mut lat_get = Vec::with_capacity(lat_put.capacity());
    // Gets of the pages tmemd stores compressed (`--content mixed`, one page a call).
    let mut lat_get_z = Vec::new();
    let (mut stored, mut hits, mut bad) = (0u64, 0u64, 0u64);
    let (mut put_s, mut get_s) = (0.0, 0.0);
    let mut round = 0u64;
    loop {
        // Put phase.
        let t0 = Instant::now();
        let mut i = 0u64;
        while i < a.pages {
            let n = ((a.pages - i) as usize).min(batch);
            for (j, p) in pages.iter_mut().take(n).enumerate() {
                stamp(p, i + j as u64);
            }
            let mut ops: Vec<PageOp<'_>> = pages
                .iter()
                .take(n)
                .enumerate()
                .map(|(j, p)| PageOp::Put(key(i + j as u64), p))
                .collect();
            let s = Instant::now();
            let _ = client.batch(h, &mut ops, &mut out);
            lat_put.push(s.elapsed().as_nanos() as u64);
            stored += out.iter().filter(|o| **o == Outcome::Stored).count() as u64;
            i += n as u64;
        }
        put_s += t0.elapsed().as_secs_f64();
        // Get phase.
        let t1 = Instant::now();
        let mut i = 0u64;
        while i < a.pages {
            let n = ((a.pages - i) as usize).min(batch);
            let mut ops: Vec<PageOp<'_>> = pages
                .iter_mut()
                .take(n)
                .enumerate()
                .map(|(j, p)| PageOp::Get(key(i + j as u64), p))
                .collect();
            let s = Instant::now();
            let _ = client.batch(h, &mut ops, &mut out);
            let ns = s.elapsed().as_nanos() as u64;
            lat_get.push(ns);
            if batch == 1 && compressible.get(i as usize) == Some(&true) {
                lat_get_z.push(ns);
            }
            drop(ops);
            for (j, o) in out.iter().enumerate() {
                if *o == Outcome::Hit {
                    hits += 1;
                    let want = i + j as u64;
                    let p = &pages[j];
                    let ok = if text {
                        content::check(p, text_id(want), &mut scratch) == content::Check::Ok
                    } else if let Some(c) = &corpus {
                        *p == c.pages[want as usize].0
                    } else {
                        p[0..8] == want.to_le_bytes() && p[PAGE_SIZE - 8..] == (!want).to_le_bytes()
                    };
                    if !ok {
                        bad += 1;
                    }
                }
            }
            i += n as u64;
        }
        get_s += t1.elapsed().as_secs_f64();
        round += 1;
        if round == a.rounds || workload::stop_requested() {
            break;
        }
    }
    lat_put.sort_unstable();
    lat_get.sort_unstable();
    lat_get_z.sort_unstable();
    std::thread::sleep(Duration::from_millis(a.hold_ms));
    let _ = client.destroy_pool(h);
    let mut j = serde_json::json!({
        "type": "bench",
        "pages": a.pages,
        "rounds": round,
        "window": window,
        "batch": batch,
        "kind": a.kind,
        "content": a.content.name(),
        "latency_unit": if batch == 1 { "op" } else { "batch" },
        "put": {
            "pages_per_s": (a.pages * round) as f64 / put_s.max(1e-9),
            "stored": stored,
            "seconds": put_s,
            "p50_us": percentile(&lat_put, 0.50),
            "p99_us": percentile(&lat_put, 0.99),
        },
        "get": {
            "pages_per_s": (a.pages * round) as f64 / get_s.max(1e-9),
            "hits": hits,
            "seconds": get_s,
            "p50_us": percentile(&lat_get, 0.50),
            "p99_us": percentile(&lat_get, 0.99),
        },
        "verification_errors": bad,
        "counters": client.counters(),
    });
    if let Some(c) = &corpus {
        j["corpus"] = c.describe().into();
        let g = &mut j["get"];
        g["compressible_pages"] = compressible.iter().filter(|z| **z).count().into();
        // Per page only if one page a call; none if no page compresses.
        let one = batch == 1 && !lat_get_z.is_empty();
        g["compressible_p50_us"] = one.then(|| percentile(&lat_get_z, 0.50)).into();
        g["compressible_p99_us"] = one.then(|| percentile(&lat_get_z, 0.99)).into();
    }
    outln!("{j}");
    if bad > 0 {
        eprintln!("tmem-guest bench: {bad} pages came back with the wrong content");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
