//! Watching tmemd without the rights to change it: `tmem metrics` read by Prometheus's own
//! text parser and checked against `tmem list --json`, a read-only control peer refused every
//! change, one audit line per administrative action, and `tmem top` surviving a restart of
//! tmemd and quitting on `q`.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tmem_abi::{Oid, Page, PageKey, PoolKind, PAGE_SIZE};
use tmem_front::{Client, ClientConfig, LocalTransport, Outcome, PoolHandle};
use tmem_tests::{wait_for, Daemon, TempDir, Value};

mod common;
use common::ok;

const T: Duration = Duration::from_secs(10);
const SHARED: &str = "00112233-4455-6677-8899-aabbccddeeff";

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn key(i: u32) -> PageKey {
    PageKey {
        oid: Oid([9, 0, u64::from(i / 8)]),
        index: i % 8,
    }
}

fn page(i: u32) -> Page {
    let mut p: Page = [0; PAGE_SIZE];
    for (j, b) in p.iter_mut().enumerate() {
        *b = (i as usize * 13 + j * 3 + 1) as u8;
    }
    p
}

fn connect(d: &Daemon, domid: u32, name: &str) -> Arc<Client> {
    let transport = LocalTransport::new(&d.socket, domid, 0x2000 + u64::from(domid), name);
    let client = Arc::new(Client::new(Box::new(transport), ClientConfig::default()));
    assert!(client.wait_mapped(T), "guest {domid} did not connect");
    client
}

fn pool(c: &Client, kind: PoolKind, uuid: Option<[u8; 16]>) -> PoolHandle {
    let h = c.create_pool(kind, uuid).expect("create pool");
    assert!(c.wait_mapped(T));
    h
}

/// Parse Prometheus text with the `prometheus_client` Python package's parser; returns one
/// JSON object per sample: `{"family", "type", "name", "labels", "value"}`.
fn prometheus_parse(text: &str) -> Vec<Value> {
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out.append({"family": fam.name, "type": fam.type, "name": s.name,
                    "labels": s.labels, "value": s.value})
print(json.dumps(out))
"#;
    // Debian's python3, where python3-prometheus-client installs (not a python3 of pyenv's
    // that may come first in PATH).
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 is needed to parse the metrics (apt install python3)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "the Prometheus parser refused tmem metrics (is python3-prometheus-client installed? \
         .ci/run installs it): {}\n{text}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("parser output is JSON")
}

/// The value of the one sample named `name` whose labels include `labels`.
fn sample(samples: &[Value], name: &str, labels: &[(&str, &str)]) -> u64 {
    let found: Vec<&Value> = samples
        .iter()
        .filter(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][k] == *v))
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
    let v = found[0]["value"].as_f64().unwrap();
    assert_eq!(v.fract(), 0.0, "{name} {v}");
    v as u64
}

#[test]
fn metrics_parse_with_the_prometheus_parser_and_equal_list_json() {
    let dir = TempDir::new("obs-metrics");
    let d = Daemon::start(&dir, &["--mem-limit", "16M"]);
    ok(&d.control, &["shared-auth", "-a", "-u", SHARED, "-A", "1"]);
    let a = connect(&d, 3, "alpha");
    let b = connect(&d, 4, "beta");
    let eph = pool(&a, PoolKind::PrivateEphemeral, None);
    let pers = pool(&a, PoolKind::PrivatePersistent, None);
    let uuid = tmem_front::parse_uuid(SHARED).unwrap();
    let shared_a = pool(&a, PoolKind::SharedEphemeral, Some(uuid));
    let shared_b = pool(&b, PoolKind::SharedEphemeral, Some(uuid));
    for i in 0..24 {
        assert_eq!(a.put(eph, key(i), &page(i)), Outcome::Stored);
    }
    for i in 0..10 {
        assert_eq!(a.put(pers, key(i), &page(i)), Outcome::Stored);
        assert_eq!(b.put(shared_b, key(i), &page(i)), Outcome::Stored);
    }
    let mut buf: Page = [0; PAGE_SIZE];
    for i in 0..30 {
        let _ = a.get(pers, key(i), &mut buf);
        let _ = a.get(shared_a, key(i), &mut buf);
    }
    for i in 0..5 {
        let _ = a.flush_page(eph, key(i));
    }
    ok(&d.control, &["freeze", "beta"]);

    // The guests are idle now: both views are of the same counters.
    let text = ok(&d.control, &["metrics"]);
    let list: Value = serde_json::from_str(&ok(&d.control, &["list", "--json"])).unwrap();
    let s = prometheus_parse(&text);

    let g = &list["global"];
    for (metric, field) in [
        ("tmem_memory_limit_bytes", "mem_limit_bytes"),
        ("tmem_memory_used_bytes", "data_bytes"),
        ("tmem_pages", "pages"),
        ("tmem_ephemeral_pages", "eph_pages"),
        ("tmem_frames_allocated", "frames_allocated"),
        ("tmem_frames_free", "frames_free"),
        ("tmem_freeable_pages", "freeable_pages"),
        ("tmem_operations_total", "total_ops"),
        ("tmem_operation_errors_total", "errored_ops"),
        ("tmem_evictions_total", "evictions"),
    ] {
        assert_eq!(sample(&s, metric, &[]), u(&g[field]), "{metric}");
    }
    assert_eq!(sample(&s, "tmem_guests_connected", &[]), 2);
    let status: Value = serde_json::from_str(&ok(&d.control, &["status", "--json"])).unwrap();
    let version = status["daemon_version"].as_str().unwrap();
    assert_eq!(sample(&s, "tmem_build_info", &[("version", version)]), 1);
    assert_eq!(
        sample(&s, "tmem_page_memory_durable", &[("origin", "path")]),
        1
    );

    let clients = list["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 2);
    let mut put_requests = 0;
    let mut get_requests = 0;
    for c in clients {
        let who = format!("local:{}:{}", nix::unistd::getuid(), u(&c["domid"]));
        let l = [
            ("client", who.as_str()),
            ("name", c["name"].as_str().unwrap()),
        ];
        let gets = u(&c["succ_gets"]) + u(&c["failed_gets"]);
        for (metric, want) in [
            ("tmem_client_pages", u(&c["pages"])),
            ("tmem_client_memory_bytes", u(&c["pages"]) * 4096),
            ("tmem_client_puts_total", u(&c["puts"])),
            ("tmem_client_gets_total", gets),
            ("tmem_client_get_hits_total", u(&c["succ_gets"])),
            ("tmem_client_flushes_total", u(&c["invalidates"])),
            ("tmem_client_errors_total", u(&c["errors"])),
            ("tmem_client_evictions_total", u(&c["evictions"])),
            ("tmem_client_attached", u64::from(c["attached"] == true)),
            ("tmem_client_frozen", u64::from(c["frozen"] == true)),
        ] {
            assert_eq!(sample(&s, metric, &l), want, "{metric} {who}");
        }
        for p in c["pools"].as_array().unwrap() {
            let k = &p["counters"];
            put_requests += u(&k["total_puts"]);
            get_requests += u(&k["total_gets"]);
            if p["kind"] == "ES" {
                continue; // once, below
            }
            let id = u(&p["pool_id"]).to_string();
            let l = [("client", who.as_str()), ("pool", id.as_str())];
            for (metric, want) in [
                ("tmem_pool_pages", u(&k["pages"])),
                ("tmem_pool_puts_total", u(&k["total_puts"])),
                ("tmem_pool_gets_total", u(&k["total_gets"])),
                ("tmem_pool_get_hits_total", u(&k["found_gets"])),
                ("tmem_pool_page_flushes_total", u(&k["total_flushes"])),
                ("tmem_pool_evictions_total", u(&k["evictions"])),
            ] {
                assert_eq!(sample(&s, metric, &l), want, "{metric} {who} pool {id}");
            }
        }
    }
    // The shared pool once, under its uuid (the text form list --json also uses).
    let sp = &list["shared_pools"][0];
    assert_eq!(sp["uuid"], SHARED);
    let l = [("client", "shared"), ("uuid", SHARED)];
    assert_eq!(
        sample(&s, "tmem_pool_pages", &l),
        u(&sp["counters"]["pages"])
    );
    assert_eq!(
        sample(&s, "tmem_pool_get_hits_total", &l),
        u(&sp["counters"]["found_gets"])
    );
    // The shared pool's requests were counted under both sharers above.
    put_requests -= u(&sp["counters"]["total_puts"]);
    get_requests -= u(&sp["counters"]["total_gets"]);

    // Latency: one observation per request the workers carried out.
    let hist = |op: &str, name: &str| sample(&s, name, &[("op", op)]);
    assert_eq!(
        hist("put", "tmem_request_duration_seconds_count"),
        put_requests
    );
    assert_eq!(
        hist("get", "tmem_request_duration_seconds_count"),
        get_requests
    );
    assert_eq!(hist("flush_page", "tmem_request_duration_seconds_count"), 5);
    assert_eq!(hist("new_pool", "tmem_request_duration_seconds_count"), 4);
    let inf = sample(
        &s,
        "tmem_request_duration_seconds_bucket",
        &[("op", "put"), ("le", "+Inf")],
    );
    assert_eq!(inf, put_requests);
    assert!(s
        .iter()
        .any(|x| x["family"] == "tmem_request_duration_seconds" && x["type"] == "histogram"));
    // Ring batches: at least one per request sent on its own (each synchronous call), at
    // most one per request; the +Inf bucket is the count.
    let batches = sample(&s, "tmem_ring_batch_duration_seconds_count", &[]);
    let requests: u64 = REQUEST_OPS
        .iter()
        .map(|op| hist(op, "tmem_request_duration_seconds_count"))
        .sum();
    assert!(
        batches >= 1 && batches <= requests,
        "{batches} batches, {requests} requests"
    );
    assert_eq!(
        sample(
            &s,
            "tmem_ring_batch_duration_seconds_bucket",
            &[("le", "+Inf")]
        ),
        batches
    );
}

const REQUEST_OPS: [&str; 7] = tmem_control::REQUEST_KINDS;

/// Run `tmem args...` as uid/gid 65534 (nobody/nogroup).
fn as_nobody(control: &Path, args: &[&str]) -> Output {
    Command::new("/usr/bin/setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_tmem"))
        .arg("--socket")
        .arg(control)
        .args(args)
        .output()
        .expect("run tmem as nobody")
}

#[test]
fn a_read_only_peer_reads_everything_changes_nothing_and_every_change_is_logged() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test switches to uid 65534 and must run as root"
    );
    let dir = TempDir::new("obs-readonly");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf = dir.path().join("tmemd.toml");
    std::fs::write(
        &conf,
        "control_readonly_uids = [65534]\ncontrol_socket_group = \"65534\"\n",
    )
    .unwrap();
    let d = Daemon::start(
        &dir,
        &["--mem-limit", "16M", "--config", conf.to_str().unwrap()],
    );
    let meta = std::fs::metadata(&d.control).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660, "the group may connect");
    assert_eq!(meta.gid(), 65534);
    let g = connect(&d, 6, "watched");
    let h = pool(&g, PoolKind::PrivateEphemeral, None);
    assert_eq!(g.put(h, key(1), &page(1)), Outcome::Stored);

    for args in [
        &["list", "--json"][..],
        &["status", "--json"],
        &["freeable", "--json"],
        &["metrics"],
        &["top", "--iterations", "1", "--interval", "0.1"],
    ] {
        let o = as_nobody(&d.control, args);
        assert!(
            o.status.success(),
            "read-only {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let before = ok(&d.control, &["list", "--json"]);
    for (args, cmd) in [
        (&["freeze", "-a"][..], "freeze"),
        (&["thaw", "watched"], "thaw"),
        (&["set", "watched", "-w", "5"], "set"),
        (
            &["shared-auth", "-a", "-u", SHARED, "-A", "1"],
            "shared-auth",
        ),
        (&["flush", "--kib", "4"], "flush"),
        (&["destroy", "watched"], "destroy"),
    ] {
        let o = as_nobody(&d.control, args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(4), "{args:?}: {err}");
        assert_eq!(
            err.trim_end(),
            format!(
                "tmem: user id 65534 has read-only access to tmemd: `tmem {cmd}` needs an \
                 administrator (root, or a uid in control_uids)"
            )
        );
    }
    assert_eq!(
        ok(&d.control, &["list", "--json"]),
        before,
        "nothing changed"
    );
    assert_eq!(g.put(h, key(2), &page(2)), Outcome::Stored, "not frozen");

    // Root administers; each action is logged once with who and what.
    ok(&d.control, &["freeze", "watched"]);
    ok(&d.control, &["set", "watched", "-c", "64MiB"]);
    let log = wait_for(T, "audit lines", || {
        let log = d.log_text();
        log.contains("cap_pages=16384").then_some(log)
    });
    let freeze: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("administrative action") && l.contains("freeze"))
        .collect();
    assert_eq!(freeze.len(), 1, "{log}");
    assert!(
        freeze[0].contains("by uid 0 (pid ")
            && freeze[0].contains("freeze domain named \"watched\": done (1 client(s))"),
        "{}",
        freeze[0]
    );
    assert!(
        log.contains("administrative request refused: uid 65534 (pid ")
            && log.contains("has read-only access: freeze all clients"),
        "{log}"
    );
}

#[test]
fn top_waits_for_a_restarted_tmemd_and_goes_on() {
    let dir = TempDir::new("obs-top");
    let mut d = Daemon::start(&dir, &["--mem-limit", "16M"]);
    let mut top = Command::new(env!("CARGO_BIN_EXE_tmem"))
        .arg("--socket")
        .arg(&d.control)
        .args(["top", "--interval", "0.1", "--iterations", "4"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = lines.clone();
    let out = top.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            seen.lock().unwrap().push(l);
        }
    });
    let has = |needle: &str| lines.lock().unwrap().iter().any(|l| l.contains(needle));
    wait_for(T, "a first frame", || {
        has("tmem top: 0 clients").then_some(())
    });
    d.signal(nix::sys::signal::Signal::SIGTERM);
    d.wait(T);
    wait_for(T, "top to say it waits", || {
        has("waiting for tmemd to come back").then_some(())
    });
    assert!(top.try_wait().unwrap().is_none(), "top exited with tmemd");
    let _d = Daemon::start(&dir, &["--mem-limit", "16M"]);
    let status = wait_for(T, "top to finish its frames", || top.try_wait().unwrap());
    reader.join().unwrap();
    let mut err = String::new();
    top.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "{err}");
    let lines = lines.lock().unwrap();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("tmem top: 0 clients"))
            .count(),
        4
    );
    assert_eq!(
        lines.iter().filter(|l| l.contains("waiting for")).count(),
        1,
        "said once per outage"
    );
}

#[test]
fn top_on_a_terminal_quits_on_q() {
    let dir = TempDir::new("obs-top-q");
    let d = Daemon::start(&dir, &["--mem-limit", "16M"]);
    // script(1) gives tmem a terminal 120 columns wide and passes our keys to it.
    let cmd = format!(
        "stty cols 120 rows 40; exec {} --socket {} top --interval 0.1",
        env!("CARGO_BIN_EXE_tmem"),
        d.control.display()
    );
    let mut child = Command::new("script")
        .args(["-q", "-f", "-e", "-c", &cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("script(1) from util-linux");
    let screen = Arc::new(Mutex::new(Vec::<u8>::new()));
    let sink = screen.clone();
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let shows = |needle: &str| String::from_utf8_lossy(&screen.lock().unwrap()).contains(needle);
    wait_for(T, "a full-screen frame", || {
        (shows("tmem top: 0 clients") && shows("q to quit")).then_some(())
    });
    assert!(child.try_wait().unwrap().is_none());
    child.stdin.as_mut().unwrap().write_all(b"q").unwrap();
    let status = wait_for(T, "top to quit on q", || child.try_wait().unwrap());
    assert!(status.success(), "{status}");
    reader.join().unwrap();
    // The terminal is given back: the alternate screen is left.
    assert!(shows("\x1b[?1049l"), "alternate screen left");
}
