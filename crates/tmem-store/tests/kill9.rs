//! kill -9 with compression on, on real processes: a child process (this test binary run
//! again) puts, rewrites, flushes and compacts persistent pages, compressed (lz4 and zstd)
//! and raw, into a page file on tmpfs from two threads, and tells the parent (through a pipe)
//! what it is about to do and what it finished. The parent kills it with SIGKILL at a random
//! moment, opens the page file as a restarted tmemd would, and checks every page: a page
//! whose last operation was acknowledged holds exactly that, one with an operation in flight
//! holds the old or the new contents, never anything else.
//!
//! `TMEM_KILL9_ROUNDS` (default 12) sets the number of kills.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tmem_store::*;

const CHILD_ENV: &str = "TMEM_KILL9_CHILD";
const FRAMES: u64 = 2048;
const KEYS: u32 = 1500;
const UUID: [u64; 2] = [0x51, 0x9];

fn key(i: u32) -> PageKey {
    PageKey {
        oid: Oid([(i / 100) as u64, 1, 2]),
        index: i % 100,
    }
}

/// Version `v` of page `i`: 0 is absent; otherwise a mix of text-like (compressible),
/// same-filled and noise pages, decided by `v`.
fn page(i: u32, v: u32) -> Page {
    let mut p = [0u8; PAGE_SIZE];
    let mut x = (u64::from(i) << 32 | u64::from(v)).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    match v % 8 {
        0 => {
            for c in p.chunks_exact_mut(8) {
                c.copy_from_slice(&next().to_le_bytes());
            }
        }
        // Same-filled (no header: it would break the fill).
        1 => {
            p.fill((next() & 0xff) as u8);
            return p;
        }
        _ => {
            const W: &[&[u8]] = &[b"swap ", b"page ", b"guest ", b"of ", b"the ", b"kernel "];
            let mut at = 0;
            while at < PAGE_SIZE {
                let w = W[(next() % W.len() as u64) as usize];
                let n = w.len().min(PAGE_SIZE - at);
                p[at..at + n].copy_from_slice(&w[..n]);
                at += n;
            }
        }
    }
    p[..4].copy_from_slice(&i.to_le_bytes());
    p[4..8].copy_from_slice(&v.to_le_bytes());
    p
}

fn cfg() -> StoreConfig {
    StoreConfig {
        mem_limit_bytes: FRAMES * PAGE_SIZE as u64,
        default_persistent_share_percent: 0,
        ..StoreConfig::default()
    }
}

fn open(path: &std::path::Path) -> (Store, Recovery) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap();
    Store::open_durable(cfg(), PageFile::from_fd(f.into(), "kill9")).unwrap()
}

fn attach(s: &Store) -> (ClientId, u32) {
    let (c, _) = s.attach_client(1, 7, "g").unwrap();
    let (p, _) = s.new_pool(c, UUID, PoolKind::PrivatePersistent).unwrap();
    (c, p)
}

/// The child: work until killed. Lines on stdout: `B t i v` (thread t starts setting page i
/// to version v; 0 = flush), `D t` (done), `C` / `c` (a compaction starts / ends).
fn child(path: &str, seed: u64) {
    let (s, _) = open(std::path::Path::new(path));
    let (c, p) = attach(&s);
    let out = std::sync::Mutex::new(std::io::stdout());
    let say = |l: String| {
        let mut o = out.lock().unwrap();
        writeln!(o, "{l}").unwrap();
        o.flush().unwrap();
    };
    // libtest's "test <name> ... " has no newline: start the log on a line of its own.
    say(String::new());
    std::thread::scope(|sc| {
        for t in 0..2u32 {
            let (s, say) = (&s, &say);
            sc.spawn(move || {
                let mut x = (seed ^ ((t as u64 + 1) * 0x1234_5678_9abc_def1)) | 1;
                let mut n = 0u64;
                loop {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    n += 1;
                    // Each thread has its own keys, so its log orders its operations.
                    let i = (x % (KEYS as u64 / 2)) as u32 * 2 + t;
                    let algo = if (x >> 20).is_multiple_of(3) {
                        Compression::Zstd
                    } else {
                        Compression::Lz4
                    };
                    if t == 0 && n.is_multiple_of(64) {
                        let _ = s.set_compression(c, ClientCompression::both(algo));
                    }
                    if (x >> 8).is_multiple_of(5) {
                        say(format!("B {t} {i} 0"));
                        s.flush_page(c, p, key(i)).unwrap();
                    } else {
                        let v = ((x >> 32) as u32 & 0x7fff_ffff).max(1);
                        say(format!("B {t} {i} {v}"));
                        match s.put(c, p, key(i), &page(i, v)) {
                            Ok(()) => {}
                            // Full: the page keeps its old contents (a new one stays absent).
                            Err(TmemError::NoMemory) => {
                                say(format!("F {t}"));
                                continue;
                            }
                            // A rewrite that could not be stored: the old copy is gone.
                            Err(TmemError::DupPutFlushed) => {
                                say(format!("X {t}"));
                                continue;
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                    say(format!("D {t}"));
                    if t == 1 && n.is_multiple_of(50) {
                        say("C".into());
                        s.compact(200);
                        say("c".into());
                    }
                }
            });
        }
    });
}

#[test]
fn kill_9_under_compressed_load_loses_no_persistent_page_and_serves_nothing_stale() {
    if let Ok(args) = std::env::var(CHILD_ENV) {
        let (path, seed) = args.split_once(' ').unwrap();
        child(path, seed.parse().unwrap());
        return;
    }
    let rounds: u64 = std::env::var("TMEM_KILL9_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let dir = std::env::temp_dir().join(format!("tmem-kill9-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // tmpfs if the machine has it at /dev/shm (the page file's home), else the temp dir.
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        dir.clone()
    };
    let path = base.join(format!("tmem-kill9-{}.pages", std::process::id()));
    let _ = std::fs::remove_file(&path);
    // The model: each key's acknowledged version (0 = absent).
    let mut model: BTreeMap<u32, u32> = BTreeMap::new();
    let mut seed = 0x5eed_u64 ^ std::process::id() as u64;
    let (mut total_pages, mut total_z) = (0u64, 0u64);
    for round in 0..rounds {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let exe = std::env::current_exe().unwrap();
        let mut ch = Command::new(exe)
            .arg("--exact")
            .arg("kill_9_under_compressed_load_loses_no_persistent_page_and_serves_nothing_stale")
            .arg("--nocapture")
            .arg("--test-threads=1")
            .env(CHILD_ENV, format!("{} {seed}", path.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = ch.stdout.take().unwrap();
        let lines = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<String>>()
        });
        // Random moment: let it do some work first (the store opens and recovers first).
        let wait = Duration::from_millis(200 + (seed >> 33) % 600);
        let start = Instant::now();
        while start.elapsed() < wait {
            std::thread::sleep(Duration::from_millis(10));
            if let Ok(Some(st)) = ch.try_wait() {
                panic!("child ended on its own: {st}");
            }
        }
        // SIGKILL (std's `Child::kill` on Unix).
        ch.kill().unwrap();
        let st = ch.wait().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(9));
        let log = lines.join().unwrap();
        // Apply the log: acknowledged operations move the model; each thread may have one
        // operation in flight, whose page may then be old or new.
        let mut inflight: BTreeMap<u32, (u32, u32)> = BTreeMap::new(); // thread -> (i, v)
        let mut ops = 0u64;
        for l in &log {
            let w: Vec<&str> = l.split(' ').collect();
            match w[0] {
                "B" => {
                    let (t, i, v) = (
                        w[1].parse().unwrap(),
                        w[2].parse().unwrap(),
                        w[3].parse().unwrap(),
                    );
                    inflight.insert(t, (i, v));
                }
                "D" => {
                    let Some((i, v)) = inflight.remove(&w[1].parse().unwrap()) else {
                        panic!(
                            "log line {l:?} ends nothing; log: {:?}",
                            &log[..log.len().min(20)]
                        );
                    };
                    model.insert(i, v);
                    ops += 1;
                }
                "F" => {
                    inflight.remove(&w[1].parse().unwrap());
                }
                "X" => {
                    let (i, _) = inflight.remove(&w[1].parse().unwrap()).unwrap();
                    model.insert(i, 0);
                }
                _ => {}
            }
        }
        // Restart and check every key.
        let (s, rec) = open(&path);
        assert!(!rec.formatted);
        let (c, p) = attach(&s);
        let mut lost = Vec::new();
        for i in 0..KEYS {
            let want = model.get(&i).copied().unwrap_or(0);
            let alt = inflight.values().find(|(k, _)| *k == i).map(|&(_, v)| v);
            let mut b = [0u8; PAGE_SIZE];
            let got = match s.get(c, p, key(i), &mut b) {
                Ok(true) => Some(b),
                Ok(false) | Err(TmemError::Empty) => None,
                Err(e) => panic!("{e}"),
            };
            let is = |v: u32| match (v, &got) {
                (0, None) => true,
                (0, Some(_)) | (_, None) => false,
                (v, Some(b)) => *b == page(i, v),
            };
            // A rewrite that could not be stored (`X`) may also leave the page absent.
            if !(is(want) || alt.is_some_and(is) || alt.is_some() && got.is_none()) {
                lost.push((
                    i,
                    want,
                    alt,
                    got.map(|b| u32::from_le_bytes(b[4..8].try_into().unwrap())),
                ));
            }
            // From now on the page is what recovery says.
            let now = if is(want) {
                want
            } else {
                alt.filter(|&v| is(v)).unwrap_or(0)
            };
            model.insert(i, now);
        }
        assert!(
            lost.is_empty(),
            "round {round} (seed {seed}): pages lost or stale (key, acknowledged, in flight, \
             found): {:?}; recovery {rec:?}",
            &lost[..lost.len().min(10)]
        );
        total_pages += rec.pages;
        total_z += rec.compressed_pages;
        eprintln!(
            "round {round}: killed after {} ms, {ops} operations acknowledged; recovered {} \
             pages ({} compressed, {} same-filled), {} torn records dropped",
            wait.as_millis(),
            rec.pages,
            rec.compressed_pages,
            rec.same_filled_pages,
            rec.torn,
        );
        drop(s);
    }
    assert!(total_z > 0, "no compressed page was ever recovered");
    eprintln!("{rounds} kills: 0 pages lost, 0 stale; {total_pages} pages recovered, {total_z} compressed");
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir_all(&dir);
}
