//! The load mode of `tmem-guest bench` (`--rounds 0`), which the end-to-end benchmark runs
//! beside a synchronous guest: it must last until stopped and still report every round.

use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tmem_tests::{bin, wait_for, Daemon, TempDir};

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
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON report");
    let rounds = v["rounds"].as_u64().unwrap();
    assert!(rounds >= 3, "{v}");
    assert_eq!(v["get"]["hits"].as_u64(), Some(2000 * rounds), "{v}");
    assert_eq!(v["verification_errors"].as_u64(), Some(0), "{v}");
}
