//! The seed's story on real processes: guests that mount before tmemd exists get fake pool
//! handles, are remapped when tmemd comes up, revert when it dies (SIGTERM or SIGKILL) and
//! are remapped again when it returns — with their persistent (swap) pages still there, since
//! tmemd keeps them in a page file that outlives it — and never see a stale byte (each guest
//! verifies every page it gets back and exits non-zero on a stale, corrupt or silently lost
//! page).

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tmem_tests::status::{all_mapped, is_status, none_mapped, pools, remap_bound, settled};
use tmem_tests::{counter, Daemon, Guest, TempDir, Value};

fn guest_args(domid: &str, seconds: &str, filesystems: &str) -> Vec<String> {
    [
        "--domid",
        domid,
        "--filesystems",
        filesystems,
        "--swap",
        // Swap pages stored once and then only read back, as an idle process's would be.
        "--swap-cold-pages",
        "512",
        "--seconds",
        seconds,
        "--report-interval",
        "0.05",
        // Reconnect attempts at least every 200 ms, so remapping is measured, not backoff.
        "--backoff-max-ms",
        "200",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn start_guest(dir: &TempDir, args: &[String]) -> Guest {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    Guest::start(dir, &a)
}

/// Check a guest's last line: exit 0, `ok`, no verification errors.
fn assert_clean_exit(g: Guest, who: &str) -> Value {
    let seen = g.seen.clone();
    let (status, stderr) = g.finish(Duration::from_secs(60));
    let lines = seen.lock().unwrap().clone();
    let errors: Vec<&Value> = lines.iter().filter(|v| v["type"] == "error").collect();
    assert!(errors.is_empty(), "{who} reported errors: {errors:?}");
    let last = lines.last().cloned().expect("guest printed nothing");
    assert!(status.success(), "{who} failed ({status}): {stderr}");
    assert_eq!(
        last["type"], "final",
        "{who}: last line is not the final report: {last}"
    );
    assert_eq!(last["ok"], true, "{who}: {last}");
    assert_eq!(
        counter(&last, &["guest", "verification_errors"]),
        0,
        "{who}"
    );
    last
}

#[test]
fn guests_mounted_before_tmemd_get_fake_handles_then_real_pools_within_a_second() {
    let dir = TempDir::new("lazy");
    // Two guests, each with 40 filesystems and a swap area, before any tmemd exists.
    let g1 = start_guest(&dir, &guest_args("1", "6", "40"));
    let g2 = start_guest(&dir, &guest_args("2", "6", "40"));
    for (g, who) in [(&g1, "guest 1"), (&g2, "guest 2")] {
        let v = g.wait_line(
            Duration::from_secs(10),
            "fake handles with dropped puts",
            |v| none_mapped(v) && counter(v, &["counters", "map", "dropped_puts"]) > 0,
        );
        let ps = pools(&v);
        assert_eq!(ps.len(), 41, "{who}: 40 filesystems + swap");
        let fakes: std::collections::BTreeSet<u64> =
            ps.iter().map(|p| p["fake_id"].as_u64().unwrap()).collect();
        assert_eq!(fakes.len(), 41, "{who}: fake ids are distinct");
        // Without a backend nothing can hit.
        assert_eq!(
            counter(&v, &["counters", "cleancache", "succ_gets"]),
            0,
            "{who}"
        );
        assert_eq!(
            counter(&v, &["counters", "frontswap", "succ_stores"]),
            0,
            "{who}"
        );
    }

    let daemon = Daemon::start(&dir, &["--mem-limit", "256M"]);
    let up = Instant::now();
    for (g, who) in [(&g1, "guest 1"), (&g2, "guest 2")] {
        let v = g.wait_line(Duration::from_secs(10), "all handles mapped", all_mapped);
        let took = up.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "{who}: mapping took {took:?}"
        );
        // The handles the filesystems hold did not change: the same fake ids, now mapped.
        assert_eq!(pools(&v).len(), 41, "{who}");
    }
    for (g, who) in [(&g1, "guest 1"), (&g2, "guest 2")] {
        g.wait_line(Duration::from_secs(10), "cleancache and swap hits", |v| {
            is_status(v)
                && counter(v, &["guest", "read_hits"]) > 0
                && counter(v, &["guest", "swap_loaded"]) > 0
        })
        .get("t")
        .unwrap_or_else(|| panic!("{who}"));
    }
    let stats = daemon.stats();
    let clients = stats["clients"].as_array().expect("clients");
    assert_eq!(clients.len(), 2);
    for c in clients {
        assert_eq!(c["pools"].as_array().unwrap().len(), 41, "{c}");
    }
    assert_clean_exit(g1, "guest 1");
    assert_clean_exit(g2, "guest 2");
}

/// After restart number `round`: each guest reconnects, its swap pool comes back reattached
/// with its pages (no loss reported), and it is fully remapped soon after tmemd is ready.
fn check_reattached(guests: &[(&Guest, &str)], ready: Instant, round: u64, how: &str) {
    for (g, who) in guests {
        let (at, v) = g
            .wait_line_at(Duration::from_secs(15), settled)
            .unwrap_or_else(|last| {
                panic!(
                    "{who} did not reconnect after {how}; last line: {last:?}\nstderr:\n{}",
                    g.stderr_text()
                )
            });
        let took = at.saturating_duration_since(ready);
        eprintln!(
            "{who}: remapped {} ms after tmemd was ready ({how})",
            took.as_millis()
        );
        // Losses first: they are what a restart must no longer cause.
        for path in [
            &["counters", "map", "losses"][..],
            &["counters", "map", "lost_pages"],
            &["counters", "map", "unexpected_misses"],
            &["guest", "swap_lost"],
            &["guest", "verification_errors"],
        ] {
            assert_eq!(counter(&v, path), 0, "{who} after {how}: {path:?} in {v}");
        }
        assert!(
            counter(&v, &["counters", "map", "reattached"]) >= round,
            "{who} after {how}: swap pool not reattached (restart {round}): {v}"
        );
        assert!(all_mapped(&v), "{who} after {how}: a pool was refused: {v}");
        assert!(
            took < remap_bound(),
            "{who} after {how}: remapped {took:?} after tmemd was ready (target 1 s)"
        );
        // Swap pages stored before the restart come back, verified byte for byte.
        let path = ["guest", "swap_loaded_after_reconnect"];
        let before = counter(&v, &path);
        g.wait_line(
            Duration::from_secs(10),
            "a verified load of a swap page stored before the restart",
            |x| is_status(x) && counter(x, &path) > before,
        );
    }
}

#[test]
fn tmemd_killed_or_terminated_under_load_keeps_persistent_pages_and_never_serves_stale_data() {
    let dir = TempDir::new("restart");
    // Daemon::start gives tmemd the test's own page file (TempDir::page_file).
    let args = ["--mem-limit", "64M"];
    let mut daemon = Daemon::start(&dir, &args);
    let g1 = start_guest(&dir, &guest_args("1", "14", "4"));
    let g2 = start_guest(&dir, &guest_args("2", "14", "4"));
    for g in [&g1, &g2] {
        g.wait_line(Duration::from_secs(10), "mapped", all_mapped);
        g.wait_line(Duration::from_secs(10), "swap traffic", |v| {
            is_status(v) && counter(v, &["guest", "swap_loaded"]) > 0
        });
    }
    let guests = [(&g1, "guest 1"), (&g2, "guest 2")];

    // SIGKILL: no goodbye, no cleanup; the socket file stays behind.
    daemon.signal(Signal::SIGKILL);
    daemon.wait(Duration::from_secs(5));
    for g in [&g1, &g2] {
        g.wait_line(
            Duration::from_secs(10),
            "revert to fake handles after SIGKILL",
            none_mapped,
        );
    }
    drop(daemon);
    let mut daemon = Daemon::start(&dir, &args);
    check_reattached(&guests, Instant::now(), 1, "SIGKILL");

    // SIGTERM: a clean exit with status 0, and the pages are still there afterwards.
    daemon.signal(Signal::SIGTERM);
    let st = daemon.wait(Duration::from_secs(10));
    assert!(
        st.success(),
        "tmemd exit after SIGTERM: {st}\n{}",
        daemon.log_text()
    );
    assert!(daemon.log_text().contains("SIGTERM received"));
    for g in [&g1, &g2] {
        g.wait_line(Duration::from_secs(10), "revert after SIGTERM", none_mapped);
    }
    drop(daemon);
    let daemon = Daemon::start(&dir, &args);
    check_reattached(&guests, Instant::now(), 2, "SIGTERM");
    for (g, who) in [(g1, "guest 1"), (g2, "guest 2")] {
        let last = assert_clean_exit(g, who);
        assert!(
            counter(&last, &["counters", "map", "connects"]) >= 3,
            "{who}: {last}"
        );
        assert!(
            counter(&last, &["counters", "map", "reattached"]) >= 2,
            "{who}: {last}"
        );
        for path in [
            &["counters", "map", "losses"][..],
            &["counters", "map", "lost_pages"],
            &["counters", "frontswap", "lost_loads"],
            &["guest", "swap_lost"],
        ] {
            assert_eq!(counter(&last, path), 0, "{who}: {path:?} in {last}");
        }
        assert!(counter(&last, &["guest", "verified_pages"]) > 0, "{who}");
        assert!(counter(&last, &["guest", "read_hits"]) > 0, "{who}");
    }
    drop(daemon);
}
