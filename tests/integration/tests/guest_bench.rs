//! `tmem-guest bench` as the benchmarks use it: the load mode (`--rounds 0`), which the
//! end-to-end benchmark runs beside a synchronous guest (it must last until stopped and still
//! report every round), and the mixed corpus (`--content mixed`) that `e2e_compress` measures.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tmem_tests::{bin, lz4_config, wait_for, Daemon, TempDir};

/// The bench's one JSON report, once it has exited successfully.
fn report(child: Child) -> Value {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON report")
}

#[test]
fn bench_rounds_until_killed_reports_every_round_on_sigterm() {
    let dir = TempDir::new("rounds");
    let d = Daemon::start(&dir, &["--mem-limit", "64M"]);
    let child = Command::new(bin("tmem-guest"))
        .arg("bench")
        .arg("--socket")
        .arg(dir.socket())
        .args(["--pages", "2000", "--rounds", "0", "--content", "text"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tmem-guest bench");
    // Let it go round a few times: tmemd's counters show the gets of three rounds.
    wait_for(Duration::from_secs(60), "three rounds of gets", || {
        let v = d.stats();
        let gets: u64 = v["clients"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| c["succ_gets"].as_u64().unwrap_or(0))
            .sum();
        (gets >= 6000).then_some(())
    });
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let v = report(child);
    let rounds = v["rounds"].as_u64().unwrap();
    assert!(rounds >= 3, "{v}");
    assert_eq!(v["get"]["hits"].as_u64(), Some(2000 * rounds), "{v}");
    assert_eq!(v["verification_errors"].as_u64(), Some(0), "{v}");
}

#[test]
fn bench_mixed_checks_every_page_and_times_the_pages_tmemd_compresses() {
    let dir = TempDir::new("mixed");
    let cfg = lz4_config(&dir, &[7]);
    let d = Daemon::start(
        &dir,
        &["--config", &cfg.to_string_lossy(), "--mem-limit", "64M"],
    );
    let pages = 3000u64;
    let child = Command::new(bin("tmem-guest"))
        .arg("bench")
        .arg("--socket")
        .arg(dir.socket())
        .args(["--domid", "7", "--pages", &pages.to_string()])
        .args(["--window", "1", "--content", "mixed", "--hold-ms", "800"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tmem-guest bench");
    let (zpages, zbytes) = d.compression_peak_while(child.id());
    let v = report(child);
    assert_eq!(v["content"], "mixed", "{v}");
    assert_eq!(v["put"]["stored"].as_u64(), Some(pages), "{v}");
    assert_eq!(v["get"]["hits"].as_u64(), Some(pages), "{v}");
    assert_eq!(v["verification_errors"].as_u64(), Some(0), "{v}");
    assert!(
        v["corpus"].as_str().unwrap().starts_with("3000 pages: "),
        "{v}"
    );
    // At most 70% of the corpus can compress (zero, same-filled and random pages do not);
    // on any machine with files in /usr some do.
    let g = &v["get"];
    let z = g["compressible_pages"]
        .as_u64()
        .expect("compressible_pages");
    assert!(z > 0 && z <= pages * 70 / 100, "{v}");
    let (p50, p99) = (
        g["compressible_p50_us"]
            .as_f64()
            .expect("compressible_p50_us"),
        g["compressible_p99_us"]
            .as_f64()
            .expect("compressible_p99_us"),
    );
    assert!(p50 > 0.0 && p50 <= p99 && p99 < 1e6, "{v}");
    // The guest's rule is tmemd's: every page it calls compressible, and no other, is
    // stored compressed (but for the few tmemd skips after a streak of misses).
    assert!(
        zpages <= z && zpages * 10 >= z * 9,
        "tmemd compressed {zpages} of {z}"
    );
    assert!(
        zbytes > 0 && zbytes < zpages * 3072,
        "{zbytes} bytes for {zpages} pages"
    );
}
