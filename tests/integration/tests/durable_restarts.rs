//! Issue 9's promise on real processes: tmemd is killed (`kill -9`) or stopped (SIGTERM) at
//! random moments while verifying guests hammer ephemeral, shared and persistent pools, and
//! started again on the same page file. Every guest must be remapped within a second of each
//! restart, find its persistent (swap) pool reattached with its pages, lose none of them and
//! never read a stale or corrupt byte (each guest checks every page it gets back). Some kill
//! rounds also kill a restarted tmemd while it opens the page file, or while the guests are
//! reattaching and replaying their invalidations. Shared-pool authorisations are given once,
//! before the first start, so they must survive every restart too. A page file
//! of another major format is refused and left exactly as it was; one whose formatting a kill
//! cut short is formatted again.
//!
//! Knobs (environment): `TMEM_DURABLE_SEED` (repeat a run; the seed is printed),
//! `TMEM_DURABLE_KILLS` (10), `TMEM_DURABLE_TERMS` (3), `TMEM_DURABLE_GUESTS` (8),
//! `TMEM_DURABLE_PACE_US` (pause between a guest's operations, 0), `TMEM_REMAP_BOUND_MS`
//! (asserted remap bound, 3000; the target printed beside it is 1 s).

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tmem_abi::{Oid, Page, PageKey, PoolKind, PAGE_SIZE};
use tmem_control::{OkReply, Op, Reply, Target};
use tmem_front::{Client, ClientConfig, LocalTransport, Outcome};
use tmem_tests::status::{all_mapped, is_status, pools, remap_bound, settled};
use tmem_tests::{bin, counter, wait_for, Daemon, Guest, TempDir, Value};

const SHARED_UUID: &str = "3b0e5c7d-1f2a-4c68-9d4e-7a5b6c8d9e01";

/// Each test here loads the whole machine; two at once would only measure each other.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// SplitMix64: a seeded generator for the kill moments, so a failing run can be repeated.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn seed() -> u64 {
    match std::env::var("TMEM_DURABLE_SEED") {
        Ok(_) => env_u64("TMEM_DURABLE_SEED", 0),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    }
}

/// Counters that must stay 0: a persistent page lost, or a byte that was stale or corrupt.
const MUST_BE_ZERO: [&[&str]; 6] = [
    &["counters", "map", "losses"],
    &["counters", "map", "lost_pages"],
    &["counters", "map", "unexpected_misses"],
    &["counters", "frontswap", "lost_loads"],
    &["guest", "swap_lost"],
    &["guest", "verification_errors"],
];

fn nonzero(v: &Value) -> Vec<String> {
    MUST_BE_ZERO
        .iter()
        .filter_map(|p| {
            let n = counter(v, p);
            (n != 0).then(|| format!("{} = {n}", p.join(".")))
        })
        .collect()
}

struct Fleet {
    guests: Vec<(String, Guest)>,
}

impl Fleet {
    /// `n` guests, labels 1..=n, each with two private filesystems (private ephemeral), the
    /// shared filesystem (shared ephemeral) and swap (private persistent). `text`: text-like
    /// page bodies, which compress (else random ones, which do not).
    fn start(dir: &TempDir, n: u32, rng: &mut Rng, text: bool) -> Fleet {
        let pace = env_u64("TMEM_DURABLE_PACE_US", 0).to_string();
        let guests = (1..=n)
            .map(|label| {
                let (domid, instance, seed) = (
                    label.to_string(),
                    rng.next().to_string(),
                    rng.next().to_string(),
                );
                let mut args = vec![
                    "--domid",
                    &domid,
                    "--instance",
                    &instance,
                    "--seed",
                    &seed,
                    "--filesystems",
                    "2",
                    "--shared-fs",
                    SHARED_UUID,
                    "--swap",
                    "--swap-pages",
                    "1024",
                    // A quarter of swap is an idle process's: stored once, then only read back,
                    // so every restart has pages from before it to read.
                    "--swap-cold-pages",
                    "256",
                    // Ended by SIGTERM once the rounds are done (it then prints its final report).
                    "--seconds",
                    "3600",
                    "--report-interval",
                    "0.05",
                    // Reconnect attempts at least every 200 ms, so remapping is measured, not backoff.
                    "--backoff-max-ms",
                    "200",
                    "--pace-us",
                    &pace,
                ];
                if text {
                    args.push("--text-pages");
                }
                (format!("guest {label}"), Guest::start(dir, &args))
            })
            .collect();
        Fleet { guests }
    }

    /// Wait until every guest shows `pred`, or panic naming the guest and its last line.
    fn wait_all(&self, timeout: Duration, what: &str, pred: impl Fn(&Value) -> bool) {
        for (who, g) in &self.guests {
            if let Err(last) = g.wait_line_at(timeout, &pred) {
                panic!(
                    "{who}: timed out after {timeout:?} waiting for {what}; last line: {}\nstderr:\n{}",
                    last.map_or("none".into(), |v| v.to_string()),
                    g.stderr_text()
                );
            }
        }
    }

    /// Every guest is busy again since `since` (its last line checked): swap loads and other
    /// operations, and after a restart also a verified load of a swap page stored before it.
    fn wait_load(&self, since: &[Value], after_restart: bool) {
        for ((who, g), v) in self.guests.iter().zip(since) {
            let was = |x: &Value, p: &[&str]| counter(x, p) > counter(v, p);
            if let Err(last) = g.wait_line_at(Duration::from_secs(20), |x| {
                is_status(x)
                    && was(x, &["guest", "swap_loads"])
                    && counter(x, &["guest", "ops"]) > counter(v, &["guest", "ops"]) + 64
                    && (!after_restart || was(x, &["guest", "swap_loaded_after_reconnect"]))
            }) {
                panic!(
                    "{who}: no {} within 20 s\nsince: {}\nlast line: {}",
                    if after_restart {
                        "verified load of a swap page stored before the restart"
                    } else {
                        "traffic"
                    },
                    v["guest"],
                    last.map_or("none".into(), |v| v.to_string())
                );
            }
        }
    }

    /// Every guest reports itself disconnected after `dead` (when a tmemd died). A busy guest
    /// notices on its next call and reports every 50 ms, so a line read 100 ms after the death
    /// cannot predate the guest's noticing it.
    fn wait_disconnected_since(&self, dead: Instant) {
        let after = dead + Duration::from_millis(100);
        for (who, g) in &self.guests {
            loop {
                match g.wait_line_at(Duration::from_secs(10), |v| {
                    is_status(v) && v["connected"] == false
                }) {
                    Ok((at, _)) if at > after => break,
                    Ok(_) => {}
                    Err(last) => panic!(
                        "{who}: not disconnected within 10 s of tmemd's death; last line: {}",
                        last.map_or("none".into(), |v| v.to_string())
                    ),
                }
            }
        }
    }

    /// Stop every guest (SIGTERM: it prints its final report) and check the reports.
    fn finish(self, restarts: u64) -> Vec<Value> {
        for (_, g) in &self.guests {
            g.signal(Signal::SIGTERM);
        }
        let mut finals = Vec::new();
        for (who, g) in self.guests {
            let seen = Arc::clone(&g.seen);
            let (st, stderr) = g.finish(Duration::from_secs(30));
            let lines = seen.lock().unwrap().clone();
            let errors: Vec<&Value> = lines.iter().filter(|v| v["type"] == "error").collect();
            assert!(
                errors.is_empty(),
                "{who}: stale or corrupt pages: {errors:?}"
            );
            let last = lines.last().cloned().expect("guest printed nothing");
            assert!(st.success(), "{who} failed ({st}): {stderr}");
            assert_eq!(last["type"], "final", "{who}: no final report: {last}");
            assert_eq!(last["ok"], true, "{who}: {last}");
            let bad = nonzero(&last);
            assert!(bad.is_empty(), "{who}: {} in {last}", bad.join(", "));
            assert_eq!(
                counter(&last, &["counters", "map", "refused_pools"]),
                0,
                "{who}: a pool was refused: {last}"
            );
            assert!(
                counter(&last, &["counters", "map", "reattached"]) >= restarts,
                "{who}: swap pool reattached fewer than {restarts} times: {last}"
            );
            for path in [
                &["guest", "swap_loaded_after_reconnect"][..],
                &["guest", "read_hits"],
                &["counters", "frontswap", "succ_stores"],
            ] {
                assert!(counter(&last, path) > 0, "{who}: {path:?} is 0 in {last}");
            }
            finals.push(last);
        }
        finals
    }
}

/// Authorise every guest label for the shared filesystem's uuid.
fn authorise(daemon: &Daemon, guests: u32) {
    let uuid = tmem_control::parse_uuid(SHARED_UUID).expect("uuid");
    let uid = nix::unistd::getuid().as_raw();
    for label in 1..=guests {
        let r = daemon.control(&Op::SharedAuth {
            target: Target::Local { uid, label },
            uuid,
            allow: true,
        });
        assert!(matches!(r, Reply::Ok(OkReply::Done { .. })), "{r:?}");
    }
}

/// Pages stored compressed in private persistent pools (the guests' swap), from `tmem list`.
fn compressed_persistent_pages(daemon: &Daemon) -> u64 {
    let st = daemon.stats();
    let mut z = 0;
    for c in st["clients"].as_array().into_iter().flatten() {
        for p in c["pools"].as_array().into_iter().flatten() {
            if p["kind"] == "PP" {
                z += counter(p, &["counters", "compressed_pages"]);
            }
        }
    }
    z
}

/// Turn compression on for every guest label (a saved administrator setting, so it is given
/// back to each guest after every restart).
fn compress_all(daemon: &Daemon, guests: u32) {
    let uid = nix::unistd::getuid().as_raw();
    for label in 1..=guests {
        let r = daemon.control(&Op::Set {
            target: Target::Local { uid, label },
            weight: None,
            cap_pages: None,
            compress: Some(true),
        });
        assert!(matches!(r, Reply::Ok(OkReply::Done { .. })), "{r:?}");
    }
}

/// Stop tmemd with `sig` at random moments `rounds` times under load, restart it on the same
/// page file each time, and hold the guests to issue 9's promise.
fn restart_under_load(sig: Signal, rounds: u64, tag: &str) {
    restart_under_load_with(sig, rounds, tag, false)
}

fn restart_under_load_with(sig: Signal, rounds: u64, tag: &str, compress: bool) {
    let _one_at_a_time = serial();
    let seed = seed();
    eprintln!("{tag}: seed {seed} (TMEM_DURABLE_SEED={seed} repeats this run)");
    let mut rng = Rng(seed);
    let n = u32::try_from(env_u64("TMEM_DURABLE_GUESTS", 8)).expect("guest count");
    let dir = TempDir::new(tag);
    // Daemon::start gives tmemd the test's own page file (TempDir::page_file).
    let args = ["--mem-limit", "96M"];
    let mut daemon = Daemon::start(&dir, &args);
    // Authorised once: administrator settings must survive the restarts too.
    authorise(&daemon, n);
    let fleet = Fleet::start(&dir, n, &mut rng, compress);
    fleet.wait_all(Duration::from_secs(20), "all pools mapped", all_mapped);
    if compress {
        // `tmem set` names clients tmemd knows: once every guest is attached.
        compress_all(&daemon, n);
    }
    let mut last: Vec<Value> = fleet
        .guests
        .iter()
        .map(|(_, g)| g.wait_line(Duration::from_secs(20), "a status line", is_status))
        .collect();

    let mut worst = Duration::ZERO;
    fleet.wait_load(&last, false);
    let mut z_before = Vec::new();
    for round in 1..=rounds {
        if compress {
            // What the kill must not lose includes pages stored compressed.
            z_before.push(wait_for(
                Duration::from_secs(30),
                "compressed persistent pages",
                || Some(compressed_persistent_pages(&daemon)).filter(|&z| z > 0),
            ));
        }
        // A random moment in the guests' traffic (the randomness is the point, not a wait).
        let delay = Duration::from_millis(rng.below(1500));
        std::thread::sleep(delay);
        daemon.signal(sig);
        let st = daemon.wait(Duration::from_secs(20));
        if sig == Signal::SIGKILL {
            assert_eq!(st.signal(), Some(libc::SIGKILL), "tmemd: {st}");
        } else {
            assert!(
                st.success(),
                "tmemd after {sig}: {st}\n{}",
                daemon.log_text()
            );
        }
        fleet.wait_all(Duration::from_secs(10), "disconnect", |v| {
            is_status(v) && v["connected"] == false
        });
        drop(daemon);
        // Some kills land while a restarted tmemd is still opening and scanning the page file
        // (on sockets of its own, so no guest sees it).
        let mut note = String::new();
        if sig == Signal::SIGKILL && rng.below(2) == 0 {
            let after = Duration::from_millis(rng.below(40));
            let mut early = Daemon::spawn_on(
                &dir,
                &dir.path().join("early.sock"),
                &dir.path().join("early-control.sock"),
                &args,
                tmem_tests::Launch::default(),
            );
            std::thread::sleep(after);
            early.signal(Signal::SIGKILL);
            early.wait(Duration::from_secs(20));
            note = format!(" (and once {} ms into its start-up)", after.as_millis());
        }
        // Some land while the guests are reconnecting: reattaching their pools and replaying
        // the invalidations they made while tmemd was away.
        if sig == Signal::SIGKILL && rng.below(3) == 0 {
            let after = Duration::from_millis(rng.below(150));
            let mut storm = Daemon::start(&dir, &args);
            std::thread::sleep(after);
            storm.signal(Signal::SIGKILL);
            storm.wait(Duration::from_secs(20));
            let dead = Instant::now();
            drop(storm);
            fleet.wait_disconnected_since(dead);
            note += &format!(
                " (and once {} ms into the guests' reconnection)",
                after.as_millis()
            );
        }
        let restart = Instant::now();
        daemon = Daemon::start(&dir, &args);
        let ready = Instant::now();

        let mut problems = Vec::new();
        // The operator's view: `tmem status` says what came back.
        let rec = daemon.status()["page_memory"]["recovery"].clone();
        let rec_pages = rec["pages"].as_u64().unwrap_or(0);
        if rec["formatted"] != false || rec_pages == 0 {
            problems.push(format!("tmemd recovered no pages: {rec}"));
        }
        if compress && counter(&rec, &["compressed_pages"]) == 0 {
            problems.push(format!("tmemd recovered no compressed page: {rec}"));
        }
        let mut round_worst = Duration::ZERO;
        for ((who, g), prev) in fleet.guests.iter().zip(last.iter_mut()) {
            let (at, v) = match g.wait_line_at(Duration::from_secs(20), settled) {
                Ok(x) => x,
                Err(seen) => {
                    problems.push(format!(
                        "{who}: not reconnected 20 s after the restart; last line: {}",
                        seen.map_or("none".into(), |v| v.to_string())
                    ));
                    continue;
                }
            };
            let took = at.saturating_duration_since(ready);
            round_worst = round_worst.max(took);
            // Losses first: they are what this issue is about.
            let bad = nonzero(&v);
            if !bad.is_empty() {
                problems.push(format!("{who}: {}", bad.join(", ")));
            }
            let reattached = counter(&v, &["counters", "map", "reattached"]);
            if reattached <= counter(prev, &["counters", "map", "reattached"]) {
                problems.push(format!(
                    "{who}: swap pool not reattached (reattached = {reattached})"
                ));
            }
            let refused: Vec<String> = pools(&v)
                .iter()
                .filter(|p| !p["error"].is_null())
                .map(|p| format!("{} pool refused: {}", p["kind"], p["error"]))
                .collect();
            if !refused.is_empty() {
                problems.push(format!("{who}: {}", refused.join("; ")));
            }
            if took >= remap_bound() {
                problems.push(format!(
                    "{who}: remapped {} ms after tmemd was ready (bound {} ms)",
                    took.as_millis(),
                    remap_bound().as_millis()
                ));
            }
            *prev = v;
        }
        worst = worst.max(round_worst);
        eprintln!(
            "{tag} {round}/{rounds}: {sig} after {} ms of load{note}; tmemd ready {} ms \
             after start, {rec_pages} pages recovered ({} compressed; {} torn records \
             dropped); guests remapped within {} ms of ready",
            delay.as_millis(),
            ready.duration_since(restart).as_millis(),
            rec["compressed_pages"],
            rec["torn"],
            round_worst.as_millis()
        );
        if !problems.is_empty() {
            let log = daemon.log_text();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(15)..];
            panic!(
                "after {sig} {round}/{rounds} (seed {seed}):\n  {}\ntmemd log (last lines):\n  {}",
                problems.join("\n  "),
                tail.join("\n  ")
            );
        }
        fleet.wait_load(&last, true);
    }
    let finals = fleet.finish(rounds);
    let survived: u64 = finals
        .iter()
        .map(|v| counter(v, &["guest", "swap_loaded_after_reconnect"]))
        .sum();
    let verified: u64 = finals
        .iter()
        .map(|v| counter(v, &["guest", "verified_pages"]))
        .sum();
    if compress {
        eprintln!("{tag}: compressed persistent pages stored just before each kill: {z_before:?}");
    }
    eprintln!(
        "{tag}: {rounds} × {sig} with {n} guests: 0 pages lost, 0 stale; {verified} pages \
         verified, {survived} of them swap pages stored before a restart; slowest remap {} ms \
         after tmemd was ready (target 1000 ms, asserted < {} ms)",
        worst.as_millis(),
        remap_bound().as_millis()
    );
    drop(daemon);
}

#[test]
fn kill_9_ten_times_under_load_loses_no_persistent_page_and_serves_nothing_stale() {
    restart_under_load(Signal::SIGKILL, env_u64("TMEM_DURABLE_KILLS", 10), "kill9");
}

/// The same with every guest compressing (lz4, set with `tmem set -p 1` once the guests are
/// attached, so it is a saved setting given back after each restart) pages that compress:
/// the verifying guests write text-like page bodies (`tmem-guest --text-pages`), every byte
/// still checked. Before each kill `tmem list` must show compressed persistent pages, and
/// after each restart tmemd must have recovered compressed pages.
#[test]
fn kill_9_with_compression_on_loses_no_persistent_page_and_serves_nothing_stale() {
    restart_under_load_with(
        Signal::SIGKILL,
        env_u64("TMEM_DURABLE_KILLS", 10).min(4),
        "kill9-z",
        true,
    );
}

#[test]
fn sigterm_restarts_under_load_lose_no_persistent_page_and_serve_nothing_stale() {
    restart_under_load(Signal::SIGTERM, env_u64("TMEM_DURABLE_TERMS", 3), "sigterm");
}

// ---------------------------------------------------------------------------------------------
// Upgrade: a page file of another major format.

/// Offset of the superblock's version word: `(major << 32) | minor`, little-endian.
const VERSION_OFFSET: usize = 8;

fn page(i: u64) -> Page {
    let mut p = [0u8; PAGE_SIZE];
    for (w, chunk) in p.chunks_mut(8).enumerate() {
        let v = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (w as u64) << 48 ^ 0x7E57;
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    p
}

fn key(i: u64) -> PageKey {
    PageKey {
        oid: Oid([i / 64, 7, 0]),
        index: (i % 64) as u32,
    }
}

/// A guest that keeps its persistent pages across tmemd's absences (same instance).
fn persistent_client(dir: &TempDir) -> Arc<Client> {
    let t = LocalTransport::new(dir.socket(), 21, 0x5eed_0021, "upgrade-test");
    let cfg = ClientConfig {
        backoff_max: Duration::from_millis(200),
        ..ClientConfig::default()
    };
    Arc::new(Client::new(Box::new(t), cfg))
}

/// The page file tmemd left at `path`, which must be formatted.
fn formatted_page_file(path: &std::path::Path) -> Vec<u8> {
    let bytes = std::fs::read(path).expect("read the page file tmemd left");
    assert!(
        bytes.len() > 64 && bytes[..8] == *b"TMEMPGS1",
        "tmemd left no formatted page file at {} ({} bytes)",
        path.display(),
        bytes.len()
    );
    bytes
}

/// A 16 MiB tmemd on the page file at `path`.
fn small_daemon_args(path: &std::path::Path) -> Vec<String> {
    vec![
        "--mem-limit".into(),
        "16M".into(),
        "--page-file".into(),
        path.to_string_lossy().into_owned(),
    ]
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or((a.len() != b.len()).then(|| a.len().min(b.len())))
}

#[test]
fn a_page_file_of_another_major_format_is_refused_and_left_untouched() {
    let _one_at_a_time = serial();
    let dir = TempDir::new("upgrade");
    let path = dir.page_file();
    let args = small_daemon_args(&path);
    let mut daemon = Daemon::start(&dir, &args);

    // Persistent pages with known bytes, from a guest that stays up across everything below.
    const PAGES: u64 = 300;
    let client = persistent_client(&dir);
    assert!(
        client.wait_mapped(Duration::from_secs(10)),
        "client connects"
    );
    let h = client
        .create_pool(PoolKind::PrivatePersistent, None)
        .expect("persistent pool");
    for i in 0..PAGES {
        assert_eq!(client.put(h, key(i), &page(i)), Outcome::Stored, "put {i}");
    }

    daemon.signal(Signal::SIGTERM);
    let st = daemon.wait(Duration::from_secs(20));
    assert!(
        st.success(),
        "tmemd after SIGTERM: {st}\n{}",
        daemon.log_text()
    );
    drop(daemon);
    assert!(
        client.wait_disconnected(Duration::from_secs(10)),
        "client sees tmemd go"
    );

    // What an incompatible newer (or older) tmemd would have left: the next major format.
    let mut bytes = formatted_page_file(&path);
    let word = u64::from_le_bytes(
        bytes[VERSION_OFFSET..VERSION_OFFSET + 8]
            .try_into()
            .unwrap(),
    );
    let (major, minor) = (word >> 32, word & 0xffff_ffff);
    let other = (major + 1) << 32 | minor;
    bytes[VERSION_OFFSET..VERSION_OFFSET + 8].copy_from_slice(&other.to_le_bytes());
    std::fs::write(&path, &bytes).expect("rewrite the version word");

    // tmemd refuses: non-zero exit, one clear line, the file exactly as it was.
    let mut child = Command::new(bin("tmemd"))
        .arg("--socket")
        .arg(dir.socket())
        .arg("--control-socket")
        .arg(dir.control())
        .args(&args)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_FDNAMES")
        .env_remove("LISTEN_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tmemd");
    let st = wait_for(
        Duration::from_secs(20),
        "tmemd to refuse the page file",
        || child.try_wait().ok().flatten(),
    );
    let out = child.wait_with_output().expect("tmemd stderr");
    let err = String::from_utf8_lossy(&out.stderr);
    // Log lines may come first; the refusal is the last line, one line, naming both formats.
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        !st.success(),
        "tmemd accepted a major-{} page file:\n{err}",
        major + 1
    );
    let ours: Vec<&&str> = lines.iter().filter(|l| l.starts_with("tmemd: ")).collect();
    assert_eq!(
        ours.len(),
        1,
        "want one `tmemd: ` line on stderr, got:\n{err}"
    );
    assert_eq!(
        lines.last(),
        ours.first().copied(),
        "refusal is not the last line:\n{err}"
    );
    let line = ours[0].to_lowercase();
    for needle in ["format", &format!("{}.{minor}", major + 1)] {
        assert!(line.contains(needle), "message lacks {needle:?}: {err}");
    }
    eprintln!("refused with exit {st}: {}", ours[0]);
    let after = std::fs::read(&path).expect("read the page file again");
    if let Some(at) = first_difference(&bytes, &after) {
        panic!(
            "the refused page file was changed ({} → {} bytes, first difference at byte {at})",
            bytes.len(),
            after.len()
        );
    }

    // Untouched means still usable: put the version back and every page comes home.
    bytes[VERSION_OFFSET..VERSION_OFFSET + 8].copy_from_slice(&word.to_le_bytes());
    std::fs::write(&path, &bytes).expect("restore the version word");
    let daemon = Daemon::start(&dir, &args);
    assert!(client.wait_mapped(Duration::from_secs(10)), "client remaps");
    let c = client.counters();
    assert_eq!(
        (c.map.losses, c.map.lost_pages),
        (0, 0),
        "pages lost: {c:?}"
    );
    assert!(c.map.reattached >= 1, "pool not reattached: {c:?}");
    let mut got = [0u8; PAGE_SIZE];
    for i in 0..PAGES {
        got.fill(0xee);
        assert_eq!(client.get(h, key(i), &mut got), Outcome::Hit, "page {i}");
        assert!(got == page(i), "page {i} came back with other bytes");
    }
    drop(daemon);
}

#[test]
fn a_page_file_whose_formatting_was_cut_short_is_formatted_again() {
    // A kill -9 during tmemd's very first start can stop formatting after the superblock's
    // other words and before its magic: the next start must format again, not refuse the file
    // (there is nothing in it to keep) and leave tmemd in a restart loop.
    let _one_at_a_time = serial();
    let dir = TempDir::new("format-cut");
    let path = dir.page_file();
    let args = small_daemon_args(&path);
    let mut daemon = Daemon::start(&dir, &args);
    daemon.signal(Signal::SIGTERM);
    let st = daemon.wait(Duration::from_secs(20));
    assert!(st.success(), "tmemd after SIGTERM: {st}");
    drop(daemon);
    let formatted = formatted_page_file(&path);

    // What the cut leaves: the file at its full size, zero but for superblock words 1 to 7.
    let mut cut = vec![0u8; formatted.len()];
    cut[8..64].copy_from_slice(&formatted[8..64]);
    std::fs::write(&path, &cut).expect("write the cut-short page file");
    let daemon = Daemon::start(&dir, &args);
    let after = formatted_page_file(&path);
    assert_eq!(after.len(), formatted.len(), "formatted to another size");
    drop(daemon);
}
