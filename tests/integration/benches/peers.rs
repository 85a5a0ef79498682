//! tmemd's local transport against Redis and memcached on the same put/get workload, in one
//! run: `scripts/bench-peers.sh` starts the two servers on loopback, runs this bench and stops
//! them. Each system stores N 4 KiB pages under N keys and reads them back, checking every
//! page, once pipelined (128 requests in flight, like tmem's default window) and once
//! synchronously (one request at a time). Redis and memcached are driven by minimal clients
//! written here (RESP and memcached's text protocol: one `write` per group of requests,
//! replies parsed in place), so no client library's overhead is charged to them.
//!
//! Environment: `TMEM_PEERS_REDIS` and `TMEM_PEERS_MEMCACHED` (host:port; a system whose
//! variable is unset is left out), `TMEM_PEERS_PAGES` (default 100000; synchronous runs use a
//! tenth), `TMEM_PEERS_RUNS` (default 5). Every cell is the median [min–max] of the runs; the
//! systems take turns within each run, so each ratio compares runs made side by side.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tmem_tests::{bin, Daemon, TempDir, Value};

const PAGE: usize = 4096;
const DEPTH: usize = 128;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A page whose first and last 8 bytes name it (as `tmem-guest bench` does).
fn stamp(p: &mut [u8], i: u64) {
    p[0..8].copy_from_slice(&i.to_le_bytes());
    p[PAGE - 8..].copy_from_slice(&(!i).to_le_bytes());
}

fn check(p: &[u8], i: u64) {
    assert_eq!(p.len(), PAGE, "page {i}: wrong length");
    assert!(
        p[0..8] == i.to_le_bytes() && p[PAGE - 8..] == (!i).to_le_bytes(),
        "page {i}: wrong bytes read back"
    );
}

/// The key-value protocols the bench speaks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Proto {
    Redis,
    Memcached,
}

struct Kv {
    proto: Proto,
    w: TcpStream,
    r: BufReader<TcpStream>,
    line: String,
    buf: Vec<u8>,
}

impl Kv {
    fn connect(proto: Proto, addr: &str) -> Kv {
        let s = TcpStream::connect(addr).unwrap_or_else(|e| {
            panic!("cannot reach {addr} ({e}): start the server or run scripts/bench-peers.sh")
        });
        s.set_nodelay(true).expect("TCP_NODELAY");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        Kv {
            proto,
            r: BufReader::with_capacity(1 << 20, s.try_clone().expect("clone socket")),
            w: s,
            line: String::new(),
            buf: Vec::with_capacity(DEPTH * (PAGE + 64)),
        }
    }

    fn encode_put(&mut self, i: u64, page: &[u8]) {
        let key = format!("p{i}");
        match self.proto {
            Proto::Redis => write!(
                self.buf,
                "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${PAGE}\r\n",
                key.len()
            ),
            Proto::Memcached => write!(self.buf, "set {key} 0 0 {PAGE}\r\n"),
        }
        .expect("write to a Vec");
        self.buf.extend_from_slice(page);
        self.buf.extend_from_slice(b"\r\n");
    }

    fn encode_get(&mut self, i: u64) {
        let key = format!("p{i}");
        match self.proto {
            Proto::Redis => write!(self.buf, "*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len()),
            Proto::Memcached => write!(self.buf, "get {key}\r\n"),
        }
        .expect("write to a Vec");
    }

    fn flush(&mut self) {
        self.w.write_all(&self.buf).expect("send requests");
        self.buf.clear();
    }

    fn read_line(&mut self) -> &str {
        self.line.clear();
        let n = self.r.read_line(&mut self.line).expect("read reply");
        assert!(n > 0, "server closed the connection");
        self.line.trim_end()
    }

    fn put_reply(&mut self) {
        let want = match self.proto {
            Proto::Redis => "+OK",
            Proto::Memcached => "STORED",
        };
        let l = self.read_line().to_owned();
        assert_eq!(l, want, "unexpected reply to a store");
    }

    fn get_reply(&mut self, page: &mut [u8]) {
        let head = self.read_line().to_owned();
        let len: usize = match self.proto {
            Proto::Redis => head.strip_prefix('$').and_then(|n| n.parse().ok()),
            Proto::Memcached => head
                .strip_prefix("VALUE ")
                .and_then(|r| r.split_whitespace().nth(2))
                .and_then(|n| n.parse().ok()),
        }
        .unwrap_or_else(|| panic!("unexpected reply to a get: {head:?}"));
        assert_eq!(len, PAGE, "value of the wrong size");
        self.r.read_exact(page).expect("read value");
        let mut crlf = [0u8; 2];
        self.r.read_exact(&mut crlf).expect("read value end");
        if self.proto == Proto::Memcached {
            let end = self.read_line().to_owned();
            assert_eq!(end, "END", "unexpected end of a get reply");
        }
    }

    /// Put then get `n` pages, `depth` requests per round trip; (puts/s, gets/s).
    fn run(&mut self, n: u64, depth: usize) -> (f64, f64) {
        let mut page = vec![0u8; PAGE];
        let t = Instant::now();
        let mut i = 0;
        while i < n {
            let k = (n - i).min(depth as u64);
            for j in i..i + k {
                stamp(&mut page, j);
                self.encode_put(j, &page);
            }
            self.flush();
            for _ in 0..k {
                self.put_reply();
            }
            i += k;
        }
        let put = n as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut i = 0;
        while i < n {
            let k = (n - i).min(depth as u64);
            for j in i..i + k {
                self.encode_get(j);
            }
            self.flush();
            for j in i..i + k {
                self.get_reply(&mut page);
                check(&page, j);
            }
            i += k;
        }
        let get = n as f64 / t.elapsed().as_secs_f64();
        (put, get)
    }
}

/// One `tmem-guest bench` (put then get, every page checked); (puts/s, gets/s).
fn tmem(dir: &TempDir, n: u64, window: usize) -> (f64, f64) {
    let out = Command::new(bin("tmem-guest"))
        .arg("bench")
        .arg("--socket")
        .arg(dir.socket())
        .args(["--domid", "10", "--pages", &n.to_string()])
        .args(["--window", &window.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .expect("run tmem-guest bench");
    assert!(out.status.success(), "tmem-guest bench failed");
    let v: Value = serde_json::from_slice(&out.stdout).expect("bench JSON");
    assert_eq!(v["verification_errors"], 0, "{v}");
    assert_eq!(v["get"]["hits"].as_u64(), Some(n), "{v}");
    let rate = |p: &str| v[p]["pages_per_s"].as_f64().unwrap_or(f64::NAN);
    (rate("put"), rate("get"))
}

fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn cell(v: &[f64]) -> String {
    let (m, lo, hi) = spread(v);
    format!("{:.0} k [{:.0}–{:.0}]", m / 1e3, lo / 1e3, hi / 1e3)
}

fn main() {
    let pages = env_u64("TMEM_PEERS_PAGES", 100_000).max(1000);
    let runs = env_u64("TMEM_PEERS_RUNS", 5).max(1) as usize;
    let sync_pages = (pages / 10).max(1000);
    let mut peers: Vec<(&str, Proto, String)> = Vec::new();
    if let Ok(a) = std::env::var("TMEM_PEERS_REDIS") {
        peers.push(("Redis", Proto::Redis, a));
    }
    if let Ok(a) = std::env::var("TMEM_PEERS_MEMCACHED") {
        peers.push(("memcached", Proto::Memcached, a));
    }
    let dir = TempDir::new("peers");
    // As in the e2e bench: persistent pages get only a share of the limit.
    let mem = format!("{}M", ((pages * 8 * PAGE as u64) >> 20) + 256);
    let daemon = Daemon::start(&dir, &["--mem-limit", &mem]);
    tmem_tests::wait_for(Duration::from_secs(120), "tmemd prefault", || {
        daemon
            .log_text()
            .contains("page-data memory faulted in")
            .then_some(())
    });
    // [system][mode: pipelined, sync][op: put, get] -> rates over runs; system 0 is tmemd.
    let mut m = vec![[[Vec::new(), Vec::new()], [Vec::new(), Vec::new()]]; peers.len() + 1];
    let mut conns: Vec<Kv> = peers
        .iter()
        .map(|(_, proto, addr)| Kv::connect(*proto, addr))
        .collect();
    for run in 0..runs {
        for (mode, (n, depth)) in [(pages, DEPTH), (sync_pages, 1)].into_iter().enumerate() {
            let (p, g) = tmem(&dir, n, depth);
            m[0][mode][0].push(p);
            m[0][mode][1].push(g);
            for (s, c) in conns.iter_mut().enumerate() {
                let (p, g) = c.run(n, depth);
                m[s + 1][mode][0].push(p);
                m[s + 1][mode][1].push(g);
            }
        }
        eprintln!("peers: run {}/{runs} done", run + 1);
    }
    drop(daemon);

    println!();
    println!(
        "tmemd (local transport) against Redis and memcached on loopback: {pages} pages of \
         4 KiB put then read back and checked ({sync_pages} synchronously); ops/s, median \
         [min–max] of {runs} runs; the ratio is tmemd's median over the system's"
    );
    println!();
    println!("| system | mode | put ops/s | get ops/s | tmemd / it, put | tmemd / it, get |");
    println!("|---|---|---:|---:|---:|---:|");
    let names: Vec<&str> = std::iter::once("tmemd")
        .chain(peers.iter().map(|p| p.0))
        .collect();
    for (mode, what) in [(0, "pipelined, 128 in flight"), (1, "synchronous")] {
        for (s, name) in names.iter().enumerate() {
            let ratio = |op: usize| {
                if s == 0 {
                    String::new()
                } else {
                    format!(
                        "{:.1}×",
                        spread(&m[0][mode][op]).0 / spread(&m[s][mode][op]).0
                    )
                }
            };
            println!(
                "| {name} | {what} | {} | {} | {} | {} |",
                cell(&m[s][mode][0]),
                cell(&m[s][mode][1]),
                ratio(0),
                ratio(1)
            );
        }
    }
}
