//! `cargo bench -p tmem-tests --bench e2e_compress`: synchronous put and get latency (a
//! window of one request) of a real `tmem-guest bench` over the local transport to a real
//! tmemd, with lz4 compression on and off, on two contents:
//! * `text` (`--content text`): text-like pages of a 16-word vocabulary that lz4 packs to
//!   about 0.28 of a page, the slowest for its decoder (the hard case);
//! * `mixed` (`--content mixed`): the mixed corpus of `tmem-corpus` (this machine's
//!   executables, libraries, text and logs, zero, same-filled and random pages), with the get
//!   latency of the pages that compress given apart.
//!
//! One tmemd (`compression = "lz4"` in its config file) serves two guest labels: label 20
//! has `compress = true` in a `[[guest]]` table, label 21 does not. Each run measures every
//! content on both, alternating which content and which label goes first, so the machine's
//! load hits them alike; rows are the median [min–max] of `TMEM_E2E_RUNS` runs (default 5),
//! `TMEM_E2E_PAGES` pages a guest (default 20000), `TMEM_E2E_CONTENT` `text`, `mixed` or
//! `both` (default). While the lz4 guest runs, tmemd's statistics are polled to show its
//! pages really are stored compressed (the bench fails otherwise). Numbers go into
//! docs/benchmarks.md.

use std::process::{Command, Stdio};

use tmem_tests::{bin, lz4_config, Daemon, TempDir, Value};

const Z_LABEL: u32 = 20;
const RAW_LABEL: u32 = 21;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Median, min and max of `v`: "1.23 [1.10–1.40]".
fn spread(v: &[f64]) -> String {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    format!("{:.2} [{:.2}–{:.2}]", v[v.len() / 2], v[0], v[v.len() - 1])
}

/// One synchronous guest run; while it runs, the most compressed pages tmemd held and their
/// compressed bytes.
fn guest(
    dir: &TempDir,
    daemon: &Daemon,
    label: u32,
    pages: u64,
    content: &str,
) -> (Value, u64, u64) {
    let child = Command::new(bin("tmem-guest"))
        .arg("bench")
        .arg("--socket")
        .arg(dir.socket())
        .args(["--domid", &label.to_string()])
        .args(["--pages", &pages.to_string()])
        .args(["--window", "1", "--content", content])
        // Its pages stay stored for a few of the daemon's polls after the last get.
        .args(["--hold-ms", "600"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn tmem-guest bench");
    let (zpages, zbytes) = daemon.compression_peak_while(child.id());
    let out = child.wait_with_output().expect("bench output");
    assert!(out.status.success(), "tmem-guest bench failed");
    let v: Value = serde_json::from_slice(&out.stdout).expect("bench JSON");
    assert_eq!(v["verification_errors"], 0, "{v}");
    assert_eq!(v["put"]["stored"].as_u64(), Some(pages), "{v}");
    assert_eq!(v["get"]["hits"].as_u64(), Some(pages), "{v}");
    (v, zpages, zbytes)
}

#[derive(Default)]
struct Row {
    put_p50: Vec<f64>,
    put_p99: Vec<f64>,
    get_p50: Vec<f64>,
    get_p99: Vec<f64>,
    get_rate: Vec<f64>,
    /// Gets of the pages that compress (`mixed` only).
    zget_p50: Vec<f64>,
    zget_p99: Vec<f64>,
}

impl Row {
    fn push(&mut self, v: &Value) {
        let f = |a: &str, b: &str| v[a][b].as_f64().unwrap_or(f64::NAN);
        self.put_p50.push(f("put", "p50_us"));
        self.put_p99.push(f("put", "p99_us"));
        self.get_p50.push(f("get", "p50_us"));
        self.get_p99.push(f("get", "p99_us"));
        self.get_rate.push(f("get", "pages_per_s") / 1e3);
        if v["get"].get("compressible_p50_us").is_some() {
            self.zget_p50.push(f("get", "compressible_p50_us"));
            self.zget_p99.push(f("get", "compressible_p99_us"));
        }
    }
}

/// One content's results over all runs.
#[derive(Default)]
struct Measured {
    z: Row,
    raw: Row,
    /// Compressed bytes / (compressed pages × 4096) at the lz4 guest's peak.
    ratio: Vec<f64>,
    /// Pages tmemd held compressed at the peak / pages the guest says compress.
    stored_share: Vec<f64>,
    /// What the guest said it put (`mixed`) and how many of those compress.
    corpus: Option<(String, u64)>,
}

impl Measured {
    /// The lz4 guest's run: its pages must really be stored compressed.
    fn lz4(&mut self, content: &str, pages: u64, v: Value, zp: u64, zb: u64) {
        let expect = match v["get"]["compressible_pages"].as_u64() {
            Some(z) => {
                self.corpus = Some((v["corpus"].as_str().unwrap_or("?").to_owned(), z));
                z
            }
            None => pages,
        };
        assert!(
            zp * 10 >= expect * 9,
            "only {zp} of the {expect} {content} pages that compress were stored compressed"
        );
        assert!(
            zp <= expect,
            "{zp} {content} pages stored compressed, more than the {expect} that compress"
        );
        self.ratio.push(zb as f64 / (zp.max(1) * 4096) as f64);
        self.stored_share.push(zp as f64 / expect.max(1) as f64);
        self.z.push(&v);
    }

    fn print(&self, content: &str, pages: u64, runs: usize) {
        println!(
            "\n# synchronous latency with compression, local transport, {pages} {content} pages \
             a guest, window 1, {runs} runs: median [min–max]\n"
        );
        if let Some((desc, z)) = &self.corpus {
            println!(
                "corpus: {desc}; {z} of them compress (lz4 ≤ 3072 B, not same-filled); \
                 stored compressed at the lz4 guest's peak / those: {}\n",
                spread(&self.stored_share)
            );
        }
        println!(
            "lz4 compressed size / page size while the lz4 guest ran: {}\n",
            spread(&self.ratio)
        );
        println!(
            "| tmemd compression | put p50 µs | put p99 µs | get p50 µs | get p99 µs | get k pages/s |"
        );
        println!("|---|---|---|---|---|---|");
        for (name, r) in [("lz4", &self.z), ("off", &self.raw)] {
            println!(
                "| {name} | {} | {} | {} | {} | {} |",
                spread(&r.put_p50),
                spread(&r.put_p99),
                spread(&r.get_p50),
                spread(&r.get_p99),
                spread(&r.get_rate)
            );
        }
        let compressible = !self.z.zget_p50.is_empty() && !self.raw.zget_p50.is_empty();
        if compressible {
            for (name, r) in [("lz4", &self.z), ("off", &self.raw)] {
                println!(
                    "| {name}, the pages that compress only | | | {} | {} | |",
                    spread(&r.zget_p50),
                    spread(&r.zget_p99)
                );
            }
        }
        let by_run = |z: &[f64], raw: &[f64]| {
            let ratio: Vec<f64> = z.iter().zip(raw).map(|(a, b)| a / b).collect();
            let diff: Vec<f64> = z.iter().zip(raw).map(|(a, b)| a - b).collect();
            format!("{}; lz4 - off: {} µs", spread(&ratio), spread(&diff))
        };
        println!(
            "\nget p50 lz4 / off, run by run: {} (target: lz4 get p50 ≤ 3 µs)",
            by_run(&self.z.get_p50, &self.raw.get_p50)
        );
        if compressible {
            println!(
                "get p50 of the pages that compress, lz4 / off, run by run: {}",
                by_run(&self.z.zget_p50, &self.raw.zget_p50)
            );
        }
    }
}

fn main() {
    let runs = env_u64("TMEM_E2E_RUNS", 5).max(1) as usize;
    let pages = env_u64("TMEM_E2E_PAGES", 20_000).max(1000);
    let contents: &[&str] = match std::env::var("TMEM_E2E_CONTENT").as_deref() {
        Ok("text") => &["text"],
        Ok("mixed") => &["mixed"],
        Ok("both") | Err(_) => &["text", "mixed"],
        Ok(other) => panic!("TMEM_E2E_CONTENT is text, mixed or both, not {other:?}"),
    };
    let dir = TempDir::new("e2e-z");
    let cfg = lz4_config(&dir, &[Z_LABEL]);
    let mem = format!("{}M", ((pages * 2 * 4096) >> 20) + 64);
    let cfg_arg = cfg.to_string_lossy().into_owned();
    let daemon = Daemon::start(&dir, &["--config", &cfg_arg, "--mem-limit", &mem]);
    tmem_tests::wait_for(
        std::time::Duration::from_secs(120),
        "tmemd prefault",
        || {
            daemon
                .log_text()
                .contains("page-data memory faulted in")
                .then_some(())
        },
    );
    let mut results: Vec<Measured> = contents.iter().map(|_| Measured::default()).collect();
    for run in 0..runs {
        let labels = if run % 2 == 0 {
            [Z_LABEL, RAW_LABEL]
        } else {
            [RAW_LABEL, Z_LABEL]
        };
        let mut order: Vec<usize> = (0..contents.len()).collect();
        if run % 2 == 1 {
            order.reverse();
        }
        for c in order {
            let (content, m) = (contents[c], &mut results[c]);
            let mut p50 = [0.0; 2];
            for label in labels {
                let (v, zp, zb) = guest(&dir, &daemon, label, pages, content);
                let at = usize::from(label == RAW_LABEL);
                p50[at] = v["get"]["p50_us"].as_f64().unwrap_or(f64::NAN);
                if label == Z_LABEL {
                    m.lz4(content, pages, v, zp, zb);
                } else {
                    assert_eq!(zp, 0, "the raw guest's pages were compressed");
                    m.raw.push(&v);
                }
            }
            eprintln!(
                "run {}, {content}: get p50 lz4 {} µs, off {} µs",
                run + 1,
                p50[0],
                p50[1]
            );
        }
    }
    for (content, m) in contents.iter().zip(&results) {
        m.print(content, pages, runs);
    }
}
