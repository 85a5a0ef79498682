//! `cargo bench -p tmem-tests --bench e2e_compress`: synchronous put and get latency (a
//! window of one request) of a real `tmem-guest bench` over the local transport to a real
//! tmemd, with lz4 compression on and off, on pages that compress (`--content text`:
//! text-like pages that lz4 packs to about 0.28 of a page).
//!
//! One tmemd (`compression = "lz4"` in its config file) serves two guest labels: label 20
//! has `compress = true` in a `[[guest]]` table, label 21 does not. Each run measures both,
//! in alternating order, so the machine's load hits them alike; rows are the median
//! [min–max] of `TMEM_E2E_RUNS` runs (default 5), `TMEM_E2E_PAGES` pages a guest (default
//! 20000). While the lz4 guest runs, tmemd's statistics are polled to show its pages really
//! are stored compressed (the bench fails otherwise). Numbers go into docs/benchmarks.md.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tmem_tests::{bin, Daemon, TempDir, Value};

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
fn guest(dir: &TempDir, daemon: &Daemon, label: u32, pages: u64) -> (Value, u64, u64) {
    let child = Command::new(bin("tmem-guest"))
        .arg("bench")
        .arg("--socket")
        .arg(dir.socket())
        .args(["--domid", &label.to_string()])
        .args(["--pages", &pages.to_string()])
        .args(["--window", "1", "--content", "text"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn tmem-guest bench");
    let pid = child.id();
    let (mut zpages, mut zbytes) = (0, 0);
    // Poll until the guest exits (its pool is destroyed at the end, so look while it runs).
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline {
        let g = &daemon.stats()["global"]["compression"];
        let p = g["pages"].as_u64().unwrap_or(0);
        if p > zpages {
            zpages = p;
            zbytes = g["compressed_bytes"].as_u64().unwrap_or(0);
        }
        let alive =
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "));
        if !alive {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
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
}

impl Row {
    fn push(&mut self, v: &Value) {
        let f = |a: &str, b: &str| v[a][b].as_f64().unwrap_or(f64::NAN);
        self.put_p50.push(f("put", "p50_us"));
        self.put_p99.push(f("put", "p99_us"));
        self.get_p50.push(f("get", "p50_us"));
        self.get_p99.push(f("get", "p99_us"));
        self.get_rate.push(f("get", "pages_per_s") / 1e3);
    }
}

fn main() {
    let runs = env_u64("TMEM_E2E_RUNS", 5).max(1) as usize;
    let pages = env_u64("TMEM_E2E_PAGES", 20_000).max(1000);
    let dir = TempDir::new("e2e-z");
    let uid = nix::unistd::getuid().as_raw();
    let cfg = dir.path().join("tmemd.toml");
    std::fs::write(
        &cfg,
        format!(
            "compression = \"lz4\"\ndefault_persistent_share_percent = 0\n[[guest]]\nuid = {uid}\nlabel = {Z_LABEL}\ncompress = true\n"
        ),
    )
    .expect("write config");
    let mem = format!("{}M", ((pages * 2 * 4096) >> 20) + 64);
    let cfg_arg = cfg.to_string_lossy().into_owned();
    let daemon = Daemon::start(&dir, &["--config", &cfg_arg, "--mem-limit", &mem]);
    tmem_tests::wait_for(Duration::from_secs(120), "tmemd prefault", || {
        daemon
            .log_text()
            .contains("page-data memory faulted in")
            .then_some(())
    });
    let (mut z, mut raw) = (Row::default(), Row::default());
    let mut ratio = Vec::new();
    let mut get_ratio = Vec::new();
    let mut get_diff = Vec::new();
    for run in 0..runs {
        let order = if run % 2 == 0 {
            [Z_LABEL, RAW_LABEL]
        } else {
            [RAW_LABEL, Z_LABEL]
        };
        let mut this = [None, None];
        for label in order {
            let (v, zp, zb) = guest(&dir, &daemon, label, pages);
            if label == Z_LABEL {
                assert!(
                    zp * 10 >= pages * 9,
                    "only {zp} of {pages} text pages were stored compressed"
                );
                ratio.push(zb as f64 / (zp.max(1) * 4096) as f64);
                this[0] = Some(v);
            } else {
                assert_eq!(zp, 0, "the raw guest's pages were compressed");
                this[1] = Some(v);
            }
        }
        let (vz, vr) = (this[0].take().unwrap(), this[1].take().unwrap());
        z.push(&vz);
        raw.push(&vr);
        let p50 = |v: &Value| v["get"]["p50_us"].as_f64().unwrap_or(f64::NAN);
        get_ratio.push(p50(&vz) / p50(&vr));
        get_diff.push(p50(&vz) - p50(&vr));
        eprintln!(
            "run {}: get p50 lz4 {} µs, off {} µs",
            run + 1,
            vz["get"]["p50_us"],
            vr["get"]["p50_us"]
        );
    }
    println!(
        "# synchronous latency with compression, local transport, {pages} text pages a guest, \
         window 1, {runs} runs: median [min–max]\n"
    );
    println!(
        "lz4 compressed size / page size while the lz4 guest ran: {}\n",
        spread(&ratio)
    );
    println!(
        "| tmemd compression | put p50 µs | put p99 µs | get p50 µs | get p99 µs | get k pages/s |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, r) in [("lz4", &z), ("off", &raw)] {
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            spread(&r.put_p50),
            spread(&r.put_p99),
            spread(&r.get_p50),
            spread(&r.get_p99),
            spread(&r.get_rate)
        );
    }
    println!(
        "\nget p50 lz4 / off, run by run: {}; lz4 - off: {} µs (target: lz4 get p50 ≤ 3 µs)",
        spread(&get_ratio),
        spread(&get_diff)
    );
}
