//! The `tmem` binary against a real tmemd, with real guests (tmem-guest processes, and small
//! in-test guests built on tmem-front over the local transport), each command checked by its
//! effect on the guests and on the daemon's statistics.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use tmem_abi::{Oid, Page, PageKey, PoolKind, TmemError, PAGE_SIZE};
use tmem_front::{Client, ClientConfig, LocalTransport, Outcome, PoolHandle};
use tmem_tests::{wait_for, Daemon, Guest, TempDir, Value};

mod common;
use common::{fails, ok, stderr, tmem};

const T: Duration = Duration::from_secs(10);

/// Run tmem and require clap's usage error: status 2, the whole message on stderr.
fn usage_fails(control: &Path, args: &[&str]) -> String {
    let o = tmem(control, args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "tmem {args:?}: {err:?}");
    assert!(err.starts_with("error: "), "{err:?}");
    assert!(err.contains("--help"), "{err:?}");
    err
}

/// How the CLI names local guest `label` of this test's uid: `local:UID:LABEL`.
fn local(label: u32) -> String {
    format!("local:{}:{label}", nix::unistd::getuid().as_raw())
}

fn list_json(control: &Path) -> Value {
    serde_json::from_str(&ok(control, &["list", "--json"])).expect("list --json is JSON")
}

fn client_json(control: &Path, domid: u32) -> Option<Value> {
    list_json(control)["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["domid"] == domid)
        .cloned()
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// A small guest in the test process, on tmem-front over the local transport.
struct TestGuest {
    client: Arc<Client>,
}

impl TestGuest {
    fn connect(d: &Daemon, domid: u32, name: &str) -> TestGuest {
        let transport = LocalTransport::new(&d.socket, domid, 0x1000 + u64::from(domid), name);
        let client = Arc::new(Client::new(Box::new(transport), ClientConfig::default()));
        assert!(client.wait_mapped(T), "guest {domid} did not connect");
        TestGuest { client }
    }

    fn pool(&self, kind: PoolKind, uuid: Option<[u8; 16]>) -> PoolHandle {
        let h = self.client.create_pool(kind, uuid).expect("create pool");
        assert!(self.client.wait_mapped(T));
        h
    }

    fn put(&self, h: PoolHandle, i: u32) -> Outcome {
        self.client.put(h, key(i), &page(i))
    }

    fn get(&self, h: PoolHandle, i: u32) -> Outcome {
        let mut p: Page = [0; PAGE_SIZE];
        let o = self.client.get(h, key(i), &mut p);
        if o == Outcome::Hit {
            assert_eq!(p, page(i), "page {i} came back with other data");
        }
        o
    }
}

fn key(i: u32) -> PageKey {
    PageKey {
        oid: Oid([7, 0, u64::from(i / 16)]),
        index: i % 16,
    }
}

fn page(i: u32) -> Page {
    let mut p: Page = [0; PAGE_SIZE];
    for (j, b) in p.iter_mut().enumerate() {
        *b = (i as usize * 31 + j * 7 + 1) as u8;
    }
    p
}

#[test]
fn freeze_refuses_new_puts_while_gets_still_hit_and_thaw_undoes_it() {
    let dir = TempDir::new("cli-freeze");
    let d = Daemon::start(&dir, &["--mem-limit", "16M"]);
    let g = TestGuest::connect(&d, 5, "frosty");
    let h = g.pool(PoolKind::PrivatePersistent, None);
    assert_eq!(g.put(h, 1), Outcome::Stored);

    let out = ok(&d.control, &["freeze", "frosty"]);
    assert!(out.contains("froze domain 'frosty' (1 client)"), "{out}");
    assert_eq!(client_json(&d.control, 5).unwrap()["frozen"], true);
    assert_eq!(g.put(h, 2), Outcome::Failed(TmemError::Frozen));
    assert_eq!(g.get(h, 1), Outcome::Hit, "gets still hit while frozen");
    assert_eq!(g.get(h, 2), Outcome::Miss);
    // Xen's C= record shows it too.
    let xen = ok(&d.control, &["list", &local(5), "--format", "xen"]);
    assert!(
        xen.starts_with("C=CI:5,") && xen.contains(",fr:1,"),
        "{xen}"
    );

    ok(&d.control, &["thaw", &local(5)]);
    assert_eq!(client_json(&d.control, 5).unwrap()["frozen"], false);
    assert_eq!(g.put(h, 2), Outcome::Stored);
    assert_eq!(g.get(h, 2), Outcome::Hit);

    // -a freezes every client.
    let g2 = TestGuest::connect(&d, 6, "other");
    let h2 = g2.pool(PoolKind::PrivateEphemeral, None);
    let out = ok(&d.control, &["freeze", "-a"]);
    assert!(out.contains("(2 clients)"), "{out}");
    assert_eq!(g.put(h, 3), Outcome::Failed(TmemError::Frozen));
    assert_eq!(g2.put(h2, 3), Outcome::Failed(TmemError::Frozen));
    ok(&d.control, &["thaw", "-a"]);
    assert_eq!(g2.put(h2, 3), Outcome::Stored);
}

#[test]
fn set_cap_limits_a_guests_pages() {
    let dir = TempDir::new("cli-cap");
    let d = Daemon::start(&dir, &["--mem-limit", "16M"]);
    let g = TestGuest::connect(&d, 8, "capped");
    let h = g.pool(PoolKind::PrivatePersistent, None);

    let out = ok(&d.control, &["set", &local(8), "-c", "10", "-w", "3"]);
    assert!(out.contains("(10 × 4 KiB)"), "{out}");
    let c = client_json(&d.control, 8).unwrap();
    assert_eq!(u(&c["cap_pages"]), 10);
    assert_eq!(u(&c["weight"]), 3);

    let outcomes: Vec<Outcome> = (0..25).map(|i| g.put(h, i)).collect();
    let stored = outcomes.iter().filter(|o| **o == Outcome::Stored).count();
    assert_eq!(stored, 10, "{outcomes:?}");
    assert!(outcomes[10..]
        .iter()
        .all(|o| *o == Outcome::Failed(TmemError::OverCap)));
    assert_eq!(u(&client_json(&d.control, 8).unwrap()["pages"]), 10);

    // A size is rounded to pages; 0 removes the cap.
    ok(&d.control, &["set", "capped", "-c", "48K"]);
    assert_eq!(u(&client_json(&d.control, 8).unwrap()["cap_pages"]), 12);
    assert_eq!(g.put(h, 10), Outcome::Stored);
    assert_eq!(g.put(h, 11), Outcome::Stored);
    assert_eq!(g.put(h, 12), Outcome::Failed(TmemError::OverCap));
    ok(&d.control, &["set", "capped", "-c", "0"]);
    assert_eq!(g.put(h, 12), Outcome::Stored);
}

#[test]
fn shared_auth_admits_and_refuses_guests_on_a_shared_pool() {
    let dir = TempDir::new("cli-auth");
    let d = Daemon::start(&dir, &["--mem-limit", "16M"]);
    let text = "00112233-4455-6677-8899-aabbccddeeff";
    let uuid = tmem_front::parse_uuid(text).unwrap();

    let out = ok(&d.control, &["shared-auth", "-a", "-u", text, "-A", "0"]);
    assert!(out.contains("now need authorisation"), "{out}");
    ok(
        &d.control,
        &["shared-auth", &local(21), "-u", text, "-A", "1"],
    );

    let admitted = TestGuest::connect(&d, 21, "admitted");
    let refused = TestGuest::connect(&d, 22, "refused");
    let h = admitted
        .client
        .create_pool(PoolKind::SharedEphemeral, Some(uuid))
        .expect("authorised domain joins the shared pool");
    assert!(admitted.client.wait_mapped(T));
    assert_eq!(admitted.put(h, 1), Outcome::Stored);
    assert_eq!(admitted.get(h, 1), Outcome::Hit);
    let err = refused
        .client
        .create_pool(PoolKind::SharedEphemeral, Some(uuid))
        .expect_err("unauthorised domain is refused");
    assert!(err.to_string().contains("not authorised"), "{err}");

    // The list shows the pool under the uuid the administrator typed.
    let table = ok(&d.control, &["list"]);
    assert!(
        table.contains(&format!("{text}  ES    {}", local(21))),
        "{table}"
    );

    // Authorise the second domain by id: now it joins; de-authorise: new joins refused.
    ok(
        &d.control,
        &["shared-auth", &local(22), "-u", text, "-A", "1"],
    );
    let h2 = refused
        .client
        .create_pool(PoolKind::SharedEphemeral, Some(uuid))
        .expect("now authorised");
    assert!(refused.client.wait_mapped(T));
    assert_eq!(
        refused.get(h2, 1),
        Outcome::Hit,
        "shared page visible to the new sharer"
    );
    ok(
        &d.control,
        &["shared-auth", &local(22), "-u", text, "-A", "0"],
    );
    let third = TestGuest::connect(&d, 23, "third");
    assert!(third
        .client
        .create_pool(PoolKind::SharedEphemeral, Some(uuid))
        .is_err());
}

#[test]
fn flush_frees_at_least_the_requested_kib_after_freeze_and_freeable() {
    let dir = TempDir::new("cli-flush");
    let d = Daemon::start(&dir, &["--mem-limit", "16M"]);
    let g = TestGuest::connect(&d, 3, "cache");
    let h = g.pool(PoolKind::PrivateEphemeral, None);
    for i in 0..300 {
        assert_eq!(g.put(h, i), Outcome::Stored);
    }
    // The freeable-memory protocol: freeze, query, flush, (allocate), thaw.
    ok(&d.control, &["freeze", "-a"]);
    let out = ok(&d.control, &["freeable"]);
    let freeable_kib: u64 = out.split_whitespace().next().unwrap().parse().unwrap();
    assert!(freeable_kib >= 300 * 4, "{out}");

    let before = list_json(&d.control);
    let out = ok(&d.control, &["flush", "--kib", "512"]);
    let flushed: u64 = out
        .trim()
        .strip_prefix("flushed ")
        .and_then(|s| s.strip_suffix(" KiB"))
        .unwrap()
        .parse()
        .unwrap();
    assert!(flushed >= 512, "{out}");
    let after = list_json(&d.control);
    let gone = u(&before["global"]["eph_pages"]) - u(&after["global"]["eph_pages"]);
    assert!(gone >= 128, "only {gone} pages evicted");
    assert!(u(&before["global"]["data_bytes"]) - u(&after["global"]["data_bytes"]) >= 512 * 1024);
    assert!(u(&after["global"]["evictions"]) >= u(&before["global"]["evictions"]) + 128);
    ok(&d.control, &["thaw", "-a"]);
    let hits = (0..300).filter(|i| g.get(h, *i) == Outcome::Hit).count();
    assert!(
        hits <= 300 - 128,
        "{hits} pages still there after the flush"
    );
}

#[test]
fn destroy_drops_the_guests_pools_and_disconnects_it() {
    let dir = TempDir::new("cli-destroy");
    let d = Daemon::start(&dir, &["--mem-limit", "16M"]);
    let g = TestGuest::connect(&d, 9, "victim");
    let h = g.pool(PoolKind::PrivatePersistent, Some([9; 16]));
    for i in 0..20 {
        assert_eq!(g.put(h, i), Outcome::Stored);
    }
    let survivor = TestGuest::connect(&d, 10, "survivor");
    let hs = survivor.pool(PoolKind::PrivatePersistent, None);
    assert_eq!(survivor.put(hs, 1), Outcome::Stored);
    let before = client_json(&d.control, 9).unwrap();
    assert_eq!(before["pools"].as_array().unwrap().len(), 1);
    assert_eq!(u(&before["pages"]), 20);

    let out = ok(&d.control, &["destroy", "victim"]);
    assert!(out.contains("destroyed domain 'victim'"), "{out}");
    // The guest sees its connection dropped and its swap pages lost. tmem-front reconnects
    // at once, so domain 9 may come back, but as a new client with nothing in it.
    wait_for(T, "the guest to see the disconnect", || {
        (g.client.counters().map.disconnects >= 1).then_some(())
    });
    let now = client_json(&d.control, 9);
    if let Some(c) = &now {
        assert_ne!(
            c["client_id"], before["client_id"],
            "old client survived: {c}"
        );
        assert_eq!(u(&c["pages"]), 0, "{c}");
    }
    assert!(g.client.wait_mapped(T));
    assert!(
        matches!(g.get(h, 0), Outcome::Lost | Outcome::Miss),
        "destroyed page still readable"
    );
    assert_eq!(
        u(&list_json(&d.control)["global"]["pages"]),
        1,
        "only the survivor's page"
    );
    assert_eq!(
        survivor.get(hs, 1),
        Outcome::Hit,
        "other guests are untouched"
    );
    fails(&d.control, &["destroy", "nobody"], 1);
    let e = usage_fails(&d.control, &["destroy", "-a"]);
    assert!(e.contains("unexpected argument '-a'"), "{e}");
}

#[test]
fn list_json_totals_match_the_guests_own_counters() {
    let dir = TempDir::new("cli-totals");
    let d = Daemon::start(&dir, &["--mem-limit", "16M"]);
    let a = TestGuest::connect(&d, 31, "a");
    let b = TestGuest::connect(&d, 32, "b");
    let ha = a.pool(PoolKind::PrivateEphemeral, None);
    let hb = b.pool(PoolKind::PrivatePersistent, None);
    for i in 0..40 {
        a.put(ha, i);
        b.put(hb, i);
    }
    for i in (0..60).step_by(3) {
        a.get(ha, i);
        b.get(hb, i);
    }
    for i in 0..5 {
        a.client.flush_page(ha, key(i));
    }
    let stats = list_json(&d.control);
    for (g, domid) in [(&a, 31), (&b, 32)] {
        let own = g.client.counters();
        let c = stats["clients"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["domid"] == domid)
            .unwrap();
        let puts = own.cleancache.puts + own.frontswap.succ_stores;
        let hits = own.cleancache.succ_gets + own.frontswap.succ_loads;
        let misses = own.cleancache.failed_gets + own.frontswap.loads - own.frontswap.succ_loads;
        assert_eq!(u(&c["puts"]), puts, "domain {domid} puts");
        assert_eq!(u(&c["succ_gets"]), hits, "domain {domid} hits");
        assert_eq!(u(&c["failed_gets"]), misses, "domain {domid} misses");
        let pool_pages: u64 = c["pools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| u(&p["counters"]["pages"]))
            .sum();
        assert_eq!(u(&c["pages"]), pool_pages);
    }
    // Exact figures from the workload itself.
    let b_stats = client_json(&d.control, 32).unwrap();
    assert_eq!(u(&b_stats["pages"]), 40);
    assert_eq!(u(&b_stats["succ_gets"]), 14); // 0,3,...,39
                                              // Totals across clients add up to the store's own count.
    let total: u64 = stats["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| u(&c["pages"]))
        .sum();
    assert_eq!(total, u(&stats["global"]["pages"]));
}

#[test]
fn real_guests_show_up_in_every_list_format_and_in_top() {
    let dir = TempDir::new("cli-real");
    let d = Daemon::start(&dir, &["--mem-limit", "32M"]);
    let g1 = Guest::start(
        &dir,
        &[
            "--domid",
            "41",
            "--name",
            "alpha",
            "--swap",
            "--seconds",
            "20",
            "--report-interval",
            "0.2",
        ],
    );
    let g2 = Guest::start(
        &dir,
        &[
            "--domid",
            "42",
            "--name",
            "beta",
            "--filesystems",
            "2",
            "--seconds",
            "20",
            "--report-interval",
            "0.2",
        ],
    );
    for g in [&g1, &g2] {
        g.wait_line(T, "connected with ops", |v| {
            v["connected"] == true && v["guest"]["ops"].as_u64().unwrap_or(0) > 100
        });
    }
    // The guests' own op counts include operations answered without tmemd: wait for
    // tmemd's count, which the Xen format's `Tt` shows below.
    wait_for(T, "both clients listed, 200 operations", || {
        let s = list_json(&d.control);
        (s["clients"].as_array().unwrap().len() == 2
            && s["global"]["total_ops"].as_u64().unwrap_or(0) > 200)
            .then_some(())
    });

    // Table.
    let table = ok(&d.control, &["list"]);
    assert!(table.contains("alpha") && table.contains("beta"), "{table}");
    assert!(table.contains("PP"), "swap pool listed: {table}");
    let one = ok(&d.control, &["list", "alpha", "-l"]);
    assert!(
        one.contains(&format!("client {} 'alpha'", local(41))) && !one.contains("beta"),
        "{one}"
    );

    // Xen format, parsed back line by line.
    let xen = ok(&d.control, &["list", "-l", "--format", "xen"]);
    let recs: Vec<_> = xen
        .lines()
        .map(|l| tmem_cli::xen::parse_xen_line(l).unwrap_or_else(|e| panic!("{e}: {xen}")))
        .collect();
    let kinds: String = recs.iter().map(|r| r.record.as_str()).collect();
    assert!(kinds.starts_with("GC"), "{kinds}");
    assert!(kinds.ends_with('T'), "{kinds}");
    assert_eq!(kinds.matches('C').count(), 2, "{kinds}");
    assert_eq!(
        kinds.matches('P').count(),
        5 + 2,
        "4 fs + swap, 2 fs: {kinds}"
    );
    let g = &recs[0];
    assert_eq!(
        g.tags(),
        tmem_cli::xen::G_SHORT
            .iter()
            .chain(tmem_cli::xen::G_LONG.iter())
            .copied()
            .collect::<Vec<_>>()
    );
    assert!(g.num("Tt").unwrap() > 200);
    for r in recs.iter().filter(|r| r.record == "P") {
        assert!(["41", "42"].contains(&r.get("CI").unwrap()));
        assert!(r.num("pt").unwrap() >= r.num("ps").unwrap());
        assert!(r.num("gt").unwrap() >= r.num("gs").unwrap());
    }

    // top, not on a terminal: plain frames, no escape codes.
    let top = ok(
        &d.control,
        &["top", "--interval", "0.3", "--iterations", "2"],
    );
    assert_eq!(top.matches("tmem top: 2 clients").count(), 2, "{top}");
    assert!(!top.contains('\x1b'), "escape codes on a pipe");
    let first_client_row = top.lines().nth(4).unwrap();
    assert!(
        first_client_row.contains("alpha") || first_client_row.contains("beta"),
        "{top}"
    );
    let ops: f64 = top
        .lines()
        .next()
        .unwrap()
        .split(" ops/s")
        .next()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(ops > 10.0, "busy guests show a rate: {top}");

    let s = ok(&d.control, &["status"]);
    assert!(s.contains("2 guest(s) connected"), "{s}");
    drop(g1);
    drop(g2);
}

#[test]
fn errors_are_one_line_with_distinct_exit_codes() {
    let dir = TempDir::new("cli-errors");
    // Daemon not running: no socket at all, then a stale socket file.
    let err = fails(&dir.control(), &["list"], 3);
    assert!(
        err.contains("tmemd is not running (no socket at") && err.contains("systemctl start tmemd"),
        "{err}"
    );
    drop(std::os::unix::net::UnixListener::bind(dir.control()).unwrap());
    fails(&dir.control(), &["status"], 3);
    std::fs::remove_file(dir.control()).unwrap();

    let d = Daemon::start(&dir, &["--mem-limit", "16M"]);
    let c = &d.control;
    let e = fails(c, &["freeze", "77"], 1);
    assert!(e.contains("domain 77 has no tmem client"), "{e}");
    let e = fails(c, &["list", "nosuchguest"], 1);
    assert!(e.contains("nosuchguest"), "{e}");
    let e = fails(c, &["shared-auth", "3", "-u", "12345", "-A", "1"], 2);
    assert!(e.contains("bad uuid '12345'"), "{e}");
    let e = fails(c, &["flush", "--kib", "lots"], 2);
    assert!(e.contains("bad number 'lots'"), "{e}");
    let e = fails(c, &["set", "-a", "-w", "-3"], 2);
    assert!(e.contains("bad number '-3'"), "{e}");
    let e = fails(c, &["top", "--iterations", "x"], 2);
    assert!(e.contains("bad number 'x'"), "{e}");
    // clap's own usage errors come whole: what is wrong, which argument, the usage line.
    let e = usage_fails(c, &["frobnicate"]);
    assert!(e.contains("unrecognized subcommand 'frobnicate'"), "{e}");
    let e = usage_fails(c, &["freeze"]);
    assert!(
        e.contains("the following required arguments were not provided")
            && e.contains("<DOMAIN|--all>")
            && e.contains("Usage: tmem freeze"),
        "{e}"
    );

    // Permission denied (only checkable as root, by running tmem as nobody): first the
    // daemon's own peer-credential check, then a socket file the user may not open.
    if nix::unistd::geteuid().is_root() && Path::new("/usr/bin/setpriv").exists() {
        use std::os::unix::fs::PermissionsExt;
        let as_nobody = || {
            Command::new("/usr/bin/setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(env!("CARGO_BIN_EXE_tmem"))
                .arg("--socket")
                .arg(c)
                .arg("list")
                .output()
                .unwrap()
        };
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(c, std::fs::Permissions::from_mode(0o777)).unwrap();
        let o = as_nobody();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(4), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("may not use tmemd's control socket; run tmem as root"),
            "{err}"
        );
        std::fs::set_permissions(c, std::fs::Permissions::from_mode(0o700)).unwrap();
        let o = as_nobody();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(4), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("permission denied on"), "{err}");
    }
}

#[test]
fn a_daemon_speaking_another_protocol_version_is_reported() {
    let dir = TempDir::new("cli-version");
    let path = dir.control();
    let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let t = std::thread::spawn(move || {
        use std::io::{BufRead, BufReader, Write};
        let (mut s, _) = l.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        s.write_all(b"{\"version\":2,\"ok\":{\"kind\":\"status\"}}\n")
            .unwrap();
    });
    let e = fails(&path, &["status"], 5);
    assert!(e.contains("control protocol version 2"), "{e}");
    t.join().unwrap();
}

#[test]
fn generated_man_pages_and_completions() {
    let dir = TempDir::new("cli-gen");
    let man = dir.path().join("man8");
    let out = ok(&dir.control(), &["generate", "man", man.to_str().unwrap()]);
    assert!(out.contains("tmem.8"), "{out}");
    let page = std::fs::read_to_string(man.join("tmem-shared-auth.8")).unwrap();
    assert!(page.contains("uuid") || page.contains("UUID"), "{page}");
    for shell in ["bash", "zsh", "fish"] {
        let s = ok(&dir.control(), &["generate", "completions", shell]);
        assert!(s.contains("shared-auth"), "{shell}: {s}");
    }
}
