//! A greedy guest storing persistent (swap) pages as fast as it can hits its default share of
//! the memory limit; a good guest that starts after it still gets every store in, with zero
//! verification errors. Before the share existed the greedy guest filled all memory with
//! pages that are never evicted, and the good guest's stores failed.

use std::time::Duration;

use tmem_tests::{wait_for, Daemon, Guest, TempDir, Value};

/// 64 MiB of frames; the default share is 25% of it.
const SHARE_PAGES: u64 = 16384 / 4;

fn num(v: &Value, path: &[&str]) -> u64 {
    let mut x = v;
    for p in path {
        x = &x[*p];
    }
    x.as_u64()
        .unwrap_or_else(|| panic!("{path:?} missing in {v}"))
}

/// Stores of a guest's status line that reached tmemd and were refused.
fn refused_stores(v: &Value) -> u64 {
    num(&v["counters"]["frontswap"], &["failed_stores"])
        - num(&v["counters"]["map"], &["dropped_puts"])
}

/// Pages the daemon charges to `domid`'s client (0 if it has none).
fn client_pages(d: &Daemon, domid: u64) -> u64 {
    let s = d.stats();
    s["clients"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["domid"].as_u64() == Some(domid))
        .map(|c| num(c, &["pages"]))
        .sum()
}

#[test]
fn a_greedy_guest_hits_its_share_and_a_good_guest_still_stores() {
    let dir = TempDir::new("share");
    let daemon = Daemon::start(&dir, &["--mem-limit", "64M", "--no-prefault"]);
    // Swap only, twice the memory limit: it would pin every frame if it could.
    let mut greedy = Guest::start(
        &dir,
        &[
            "--domid",
            "2",
            "--filesystems",
            "0",
            "--swap",
            "--swap-pages",
            "32768",
            "--seconds",
            "120",
            "--report-interval",
            "0.2",
        ],
    );
    // Wait until tmemd has refused the greedy guest's stores (not counting stores the guest
    // library dropped before its pool was mapped): it is at its limit (or, without a share,
    // memory is full).
    let line = greedy.wait_line(
        Duration::from_secs(120),
        "tmemd refusing the greedy guest",
        |v| v["type"] == "status" && refused_stores(v) > 0,
    );
    let held = client_pages(&daemon, 2);
    assert!(
        held <= SHARE_PAGES,
        "greedy guest holds {held} persistent pages, over its share of {SHARE_PAGES}; its last status: {line}"
    );
    // The good guest's swap (2048 slots, about 1500 stored at a time) fits its own share.
    let good = Guest::start(
        &dir,
        &[
            "--domid",
            "1",
            "--filesystems",
            "0",
            "--swap",
            "--swap-pages",
            "2048",
            "--seconds",
            "6",
            "--report-interval",
            "0.5",
        ],
    );
    let seen = good.seen.clone();
    let (status, err) = good.finish(Duration::from_secs(120));
    let fin = wait_for(Duration::from_secs(10), "good guest's final line", || {
        seen.lock()
            .unwrap()
            .iter()
            .find(|v| v["type"] == "final")
            .cloned()
    });
    let g = &fin["guest"];
    assert!(status.success(), "good guest failed: {fin}\n{err}");
    assert_eq!(num(g, &["verification_errors"]), 0, "{fin}");
    assert!(
        num(g, &["swap_stores"]) >= 200,
        "good guest barely ran: {fin}"
    );
    // Stores made before its pool was mapped are dropped by the guest library; every store
    // that reached tmemd must have been taken.
    assert_eq!(
        refused_stores(&fin),
        0,
        "tmemd refused the good guest's stores while the greedy one ran: {fin}"
    );
    // The greedy guest was still storing (and being refused) all along.
    assert!(
        greedy.child.try_wait().ok().flatten().is_none(),
        "greedy guest exited"
    );
    assert!(client_pages(&daemon, 2) <= SHARE_PAGES);
}
