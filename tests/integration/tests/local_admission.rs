//! Local admission against the real daemon while a well-behaved guest runs beside it: a flood
//! of silent connections, descriptor stuffing, identity takeover, and refusals that say why
//! and whether to retry.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tmem_front::local::LocalTransport;
use tmem_front::{Client, ClientConfig};
use tmem_local::wire::{HelloWire, HELLO_MAGIC, MAX_NAME};
use tmem_local::{ConnectParams, LocalConnection, LocalError, MemfdRegion, RefusalClass};
use tmem_ring::Layout;
use tmem_tests::{counter, wait_for, Daemon, Guest, TempDir};

const LAYOUT: Layout = Layout {
    ring_pages: 1,
    data_slots: 8,
};

fn good_guest(dir: &TempDir, seconds: &str) -> Guest {
    let g = Guest::start(
        dir,
        &[
            "--domid",
            "1",
            "--filesystems",
            "2",
            "--swap",
            "--seconds",
            seconds,
            "--report-interval",
            "0.2",
        ],
    );
    g.wait_line(Duration::from_secs(20), "good guest connected", |v| {
        v["type"] == "status" && v["connected"] == true
    });
    g
}

/// The good guest ran to its end with no error, no disconnect and real hits.
fn assert_good_guest_clean(good: Guest) {
    let last = good.finish_clean(Duration::from_secs(60));
    assert!(counter(&last, &["guest", "read_hits"]) > 0, "{last}");
}

fn params(label: u32, instance: u64) -> ConnectParams {
    ConnectParams {
        domid: label,
        instance,
        name: format!("t{label}"),
        layout: LAYOUT,
    }
}

/// Connect, retrying temporary refusals until `within` has passed. Returns the connection,
/// the time it took and how many temporary refusals it met.
fn connect_retrying(
    dir: &TempDir,
    p: &ConnectParams,
    within: Duration,
) -> Result<(LocalConnection, Duration, u32), String> {
    let start = Instant::now();
    let mut refusals = 0;
    loop {
        match tmem_local::connect_with_timeout(&dir.socket(), p, Duration::from_secs(5)) {
            Ok(c) => return Ok((c, start.elapsed(), refusals)),
            Err(LocalError::Rejected {
                class: RefusalClass::Temporary,
                message,
                ..
            }) if start.elapsed() < within => {
                refusals += 1;
                if refusals > 50 {
                    return Err(format!("refused {refusals} times, last: {message}"));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                return Err(format!(
                    "after {:?} and {refusals} refusals: {e}",
                    start.elapsed()
                ))
            }
        }
    }
}

/// Old tmemd: 16 silent connections filled the handshake slots for 2 s each and every later
/// guest was closed without a word. Now the flood only sheds its own oldest connections.
#[test]
fn silent_connection_flood_does_not_lock_out_new_guests() {
    let dir = TempDir::new("flood");
    let daemon = Daemon::start(&dir, &["--mem-limit", "64M"]);
    let good = good_guest(&dir, "8");

    // The first silent connection: it must be told why it is dropped, not just closed.
    let first_silent = UnixStream::connect(dir.socket()).expect("connect");
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicU64::new(0));
    let flood = {
        let (stop, opened, path) = (stop.clone(), opened.clone(), dir.socket());
        std::thread::spawn(move || {
            // Hold up to 200 silent connections, opening new ones as fast as possible.
            let mut held = std::collections::VecDeque::new();
            while !stop.load(Ordering::Relaxed) {
                if let Ok(s) = UnixStream::connect(&path) {
                    held.push_back(s);
                    opened.fetch_add(1, Ordering::Relaxed);
                }
                if held.len() > 200 {
                    held.pop_front();
                }
            }
        })
    };
    wait_for(Duration::from_secs(10), "flood under way", || {
        (opened.load(Ordering::Relaxed) > 100).then_some(())
    });

    let mut worst = Duration::ZERO;
    let mut total_refusals = 0;
    for i in 0..30u32 {
        let (c, took, refusals) = connect_retrying(&dir, &params(100 + i, 1), Duration::from_secs(5))
            .unwrap_or_else(|e| {
                panic!(
                    "guest {i} could not get in during the flood ({} silent connections opened): {e}\ndaemon log tail:\n{}",
                    opened.load(Ordering::Relaxed),
                    tail(&daemon.log_text())
                )
            });
        worst = worst.max(took);
        total_refusals += refusals;
        c.goodbye();
    }
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();
    eprintln!(
        "30 guests got in during a flood of {} silent connections; worst {worst:?}, {total_refusals} temporary refusals",
        opened.load(Ordering::Relaxed)
    );
    assert!(
        worst < Duration::from_secs(3),
        "worst connect took {worst:?}"
    );
    match tmem_local::read_reply(&first_silent, Duration::from_secs(5)) {
        Err(LocalError::Rejected {
            status,
            class: RefusalClass::Temporary,
            message,
        }) => assert!(
            (status == -libc::EAGAIN && message.contains("oldest"))
                || (status == -libc::ETIMEDOUT && message.contains("nothing received")),
            "{status}: {message}"
        ),
        other => panic!("a silent connection was dropped without a reason: {other:?}"),
    }
    assert_good_guest_clean(good);
    let log = daemon.log_text();
    assert!(
        log.contains("local guest refused"),
        "no refusal logged:\n{}",
        tail(&log)
    );
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn hello_bytes(label: u32) -> [u8; tmem_local::wire::HELLO_SIZE] {
    let mut name = [0u8; MAX_NAME];
    name[..3].copy_from_slice(b"fds");
    HelloWire {
        magic: HELLO_MAGIC,
        version: tmem_abi::ring::PROTOCOL_VERSION,
        domid: label,
        flags: 0,
        instance: 1,
        ring_pages: LAYOUT.ring_pages,
        data_slots: LAYOUT.data_slots,
        name_len: 3,
        reserved: 0,
        name,
    }
    .to_bytes()
}

/// Old tmemd kept reading a hello whose segments each carried descriptors (up to 832 held per
/// handshake). Now the second segment that takes the count past three ends it at once.
#[test]
fn excess_descriptors_are_refused_at_once() {
    let dir = TempDir::new("fds");
    let daemon = Daemon::start(&dir, &["--mem-limit", "64M"]);
    let good = good_guest(&dir, "3");
    let mem = MemfdRegion::create("fds", LAYOUT.total_bytes()).unwrap();
    let k = tmem_local::new_eventfd().unwrap();
    let n = tmem_local::new_eventfd().unwrap();
    let fds = [mem.fd(), k.as_fd(), n.as_fd()];
    let bytes = hello_bytes(9);
    for _ in 0..5 {
        let s = UnixStream::connect(dir.socket()).unwrap();
        tmem_local::send_hello(&s, &bytes[..1], &fds).unwrap();
        // The daemon may already have refused and closed: a failed send is fine.
        let _ = tmem_local::send_hello(&s, &bytes[1..2], &fds);
        let t = Instant::now();
        match tmem_local::read_reply(&s, Duration::from_millis(1500)) {
            Err(LocalError::Rejected {
                status,
                class,
                message,
            }) => {
                assert_eq!(status, -libc::EBADF, "{message}");
                assert_eq!(class, RefusalClass::Permanent, "{message}");
                assert!(message.contains("descriptors"), "{message}");
            }
            other => panic!(
                "expected an immediate refusal, got {other:?} after {:?}",
                t.elapsed()
            ),
        }
    }
    assert_good_guest_clean(good);
    drop(daemon);
}

/// Old tmemd: a second hello with a live guest's domid and another instance destroyed that
/// guest's pools (persistent ones too). Now a local identity is (peer uid, label) and a live
/// one cannot be taken over.
#[test]
fn live_local_client_cannot_be_taken_over() {
    let dir = TempDir::new("takeover");
    let daemon = Daemon::start(&dir, &["--mem-limit", "64M"]);
    let good = good_guest(&dir, "6");
    let uid = nix::unistd::getuid().as_raw();
    for instance in [2u64, 3, 0xdead] {
        match tmem_local::connect(&dir.socket(), &params(1, instance)) {
            Err(LocalError::Rejected {
                status,
                class,
                message,
            }) => {
                assert_eq!(status, -libc::EBUSY, "{message}");
                assert_eq!(class, RefusalClass::Temporary, "{message}");
                assert!(message.contains("taking over"), "{message}");
                assert!(message.contains(&format!("local:{uid}:1")), "{message}");
            }
            other => panic!("takeover with instance {instance} was not refused: {other:?}"),
        }
    }
    // The identity is local, whatever number the hello claims: label 0 is not dom0.
    let c = tmem_local::connect(&dir.socket(), &params(0, 5)).expect("label 0 connects");
    let stats = daemon.stats();
    let clients = stats["clients"].as_array().expect("clients");
    let ids: Vec<(u64, u64)> = clients
        .iter()
        .map(|c| {
            (
                c["domid"].as_u64().unwrap(),
                c["local_uid"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(ids.contains(&(1, u64::from(uid))), "{stats}");
    assert!(ids.contains(&(0, u64::from(uid))), "{stats}");
    // The CLI form names a local client.
    let r = daemon.control(&tmem_control::Op::Freeze {
        target: tmem_control::Target::parse_domain(&format!("local:{uid}:0")).unwrap(),
    });
    assert!(matches!(r, tmem_control::Reply::Ok(_)), "{r:?}");
    c.goodbye();
    assert_good_guest_clean(good);
}

fn front(dir: &TempDir, label: u32, layout: Layout) -> Client {
    let mut t = LocalTransport::new(dir.socket(), label, 7, "front");
    t.layout = layout;
    t.window = 8;
    Client::new(Box::new(t), ClientConfig::default())
}

/// A permanent refusal (ring larger than allowed) stops tmem-front retrying and says so; a
/// temporary one (tmemd full) keeps it backing off until it gets in.
#[test]
fn refusals_carry_a_class_and_tmem_front_obeys_it() {
    let dir = TempDir::new("refusal");
    let daemon = Daemon::start(
        &dir,
        &[
            "--mem-limit",
            "64M",
            "--max-guests",
            "1",
            "--max-ring-pages",
            "2",
        ],
    );

    let too_big = front(
        &dir,
        5,
        Layout {
            ring_pages: 4,
            data_slots: 8,
        },
    );
    wait_for(Duration::from_secs(10), "permanent refusal", || {
        too_big.is_refused().then_some(())
    });
    let st = too_big.status();
    assert!(!st.connected && st.refused, "{st:?}");
    let why = st.last_error.clone().unwrap_or_default();
    assert!(
        why.contains("ring_pages 4") && why.contains("permanent"),
        "{why}"
    );
    let tries = st.counters.map.failed_connects;
    std::thread::sleep(Duration::from_millis(500)); // no event to wait for: absence of retries
    assert_eq!(too_big.status().counters.map.failed_connects, tries);
    assert!(!too_big.wait_mapped(Duration::from_secs(5)));

    // tmemd full: temporary, retried.
    let first = tmem_local::connect(&dir.socket(), &params(1, 1)).expect("first guest");
    let second = front(&dir, 2, LAYOUT);
    wait_for(
        Duration::from_secs(10),
        "several temporary refusals",
        || (second.status().counters.map.failed_connects >= 3).then_some(()),
    );
    let st = second.status();
    assert!(!st.connected && !st.refused, "{st:?}");
    let why = st.last_error.unwrap_or_default();
    assert!(
        why.contains("maximum of 1") && why.contains("temporary"),
        "{why}"
    );
    first.goodbye();
    assert!(
        second.wait_mapped(Duration::from_secs(10)),
        "second guest never got in: {:?}",
        second.status()
    );
    let log = daemon.log_text();
    assert!(log.contains("local guest refused"), "{}", tail(&log));
}

/// A pool the guest asks for and does not get is refused with a status (the guest keeps its
/// connection) and logged with who asked and why, so an operator can answer "why does this
/// guest not use tmem?".
#[test]
fn a_refused_pool_is_logged_with_who_and_why() {
    let dir = TempDir::new("pool-refusal");
    let config = dir.path().join("tmemd.toml");
    std::fs::write(&config, "max_pools_per_client = 1\n").unwrap();
    let daemon = Daemon::start(
        &dir,
        &["--mem-limit", "64M", "--config", config.to_str().unwrap()],
    );
    let client = front(&dir, 9, LAYOUT);
    assert!(
        client.wait_mapped(Duration::from_secs(10)),
        "never connected"
    );
    client
        .create_pool(tmem_abi::PoolKind::PrivateEphemeral, None)
        .expect("the first pool is within the limit");
    let second = client.create_pool(tmem_abi::PoolKind::PrivatePersistent, Some([7; 16]));
    assert!(
        second.is_err(),
        "the second pool exceeds max_pools_per_client = 1"
    );
    assert!(
        client.status().connected,
        "a refused pool does not disconnect the guest"
    );
    let log = wait_for(Duration::from_secs(10), "the refusal in the log", || {
        let log = daemon.log_text();
        log.contains("refused a new PP pool").then_some(log)
    });
    let line = log
        .lines()
        .find(|l| l.contains("refused a new PP pool"))
        .unwrap();
    assert!(
        line.contains("07070707070707070707070707070707") && line.contains("client="),
        "the line names the pool and the client: {line}"
    );
}
