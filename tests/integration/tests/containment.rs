//! Failure containment against the real daemon: connection slots under a burst of concurrent
//! handshakes, and the systemd watchdog fed by a healthy daemon (idle workers included).

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use tmem_local::wire::{HelloWire, HELLO_MAGIC, MAX_NAME};
use tmem_local::{LocalError, MemfdRegion};
use tmem_ring::Layout;
use tmem_tests::{bin, wait_for, Daemon, Guest, TempDir};

const LAYOUT: Layout = Layout {
    ring_pages: 1,
    data_slots: 8,
};

/// A guest connected to the socket with everything ready, whose hello is not sent yet.
struct ReadyHello {
    stream: UnixStream,
    hello: Vec<u8>,
    mem: MemfdRegion,
    kick: OwnedFd,
    notify: OwnedFd,
}

impl ReadyHello {
    fn new(socket: &Path, domid: u32) -> ReadyHello {
        let mem = MemfdRegion::create("burst", LAYOUT.total_bytes()).expect("memfd");
        tmem_ring::init_shared_ring(&mem, LAYOUT).expect("ring header");
        let name = format!("burst-{domid}");
        let mut name_bytes = [0u8; MAX_NAME];
        name_bytes[..name.len()].copy_from_slice(name.as_bytes());
        let hello = HelloWire {
            magic: HELLO_MAGIC,
            version: tmem_abi::ring::PROTOCOL_VERSION,
            domid,
            flags: 0,
            instance: 5,
            ring_pages: LAYOUT.ring_pages,
            data_slots: LAYOUT.data_slots,
            name_len: name.len() as u32,
            reserved: 0,
            name: name_bytes,
        };
        ReadyHello {
            stream: UnixStream::connect(socket).expect("connect"),
            hello: hello.to_bytes().to_vec(),
            mem,
            kick: tmem_local::new_eventfd().expect("eventfd"),
            notify: tmem_local::new_eventfd().expect("eventfd"),
        }
    }

    /// Send the hello and read the reply; the stream stays open while the result lives.
    fn send(self) -> (Result<u32, LocalError>, UnixStream) {
        let fds = [self.mem.fd(), self.kick.as_fd(), self.notify.as_fd()];
        let r = tmem_local::send_hello(&self.stream, &self.hello, &fds)
            .and_then(|()| tmem_local::read_reply(&self.stream, Duration::from_secs(20)));
        (r, self.stream)
    }
}

/// Guests connected, as the daemon's `status` says.
fn connected(daemon: &Daemon) -> u32 {
    match daemon.control(&tmem_control::Op::Status) {
        tmem_control::Reply::Ok(tmem_control::OkReply::Status {
            guests_connected, ..
        }) => guests_connected,
        other => panic!("status failed: {other:?}"),
    }
}

/// `max_guests` is checked and taken in one step: a burst of concurrent hellos can never
/// get more guests in than allowed, and every refused or closed connection gives its slot back.
#[test]
fn a_burst_of_concurrent_hellos_never_exceeds_max_guests() {
    let dir = TempDir::new("burst");
    let daemon = Daemon::start(&dir, &["--mem-limit", "64M", "--max-guests", "2"]);
    let good = Guest::start(
        &dir,
        &[
            "--domid",
            "1",
            "--filesystems",
            "2",
            "--seconds",
            "6",
            "--report-interval",
            "0.2",
        ],
    );
    good.wait_line(Duration::from_secs(20), "good guest mapped", |v| {
        v["type"] == "status" && v["connected"] == true
    });
    for round in 0..3u32 {
        let n = 12;
        let gate = Arc::new(Barrier::new(n));
        let socket = dir.socket();
        // Every peer is connected (its handshake thread waiting) before any hello is sent, so
        // the hellos race each other inside the daemon.
        let tries: Vec<_> = (0..n as u32)
            .map(|i| {
                let gate = gate.clone();
                let ready = ReadyHello::new(&socket, 100 + round * 100 + i);
                std::thread::spawn(move || {
                    gate.wait();
                    ready.send()
                })
            })
            .collect();
        // The streams stay open (the admitted guest stays connected) until the check below.
        let results: Vec<_> = tries.into_iter().map(|t| t.join().unwrap()).collect();
        let admitted = results.iter().filter(|(r, _)| r.is_ok()).count();
        let refusals: Vec<String> = results
            .iter()
            .filter_map(|(r, _)| r.as_ref().err().map(|e| e.to_string()))
            .collect();
        eprintln!("round {round}: admitted {admitted}, refused {refusals:?}");
        assert!(
            admitted <= 1,
            "round {round}: {admitted} guests admitted beside the good one with max_guests 2; \
             refusals: {refusals:?}"
        );
        let now = connected(&daemon);
        assert!(now <= 2, "round {round}: {now} guests connected");
        drop(results);
        // Every slot of the burst comes back once its connection is gone.
        wait_for(Duration::from_secs(20), "the burst's slots back", || {
            (connected(&daemon) == 1).then_some(())
        });
    }
    good.finish_clean(Duration::from_secs(60));
}

/// Played systemd: a healthy daemon sends READY=1, then WATCHDOG=1 at half the interval
/// while idle (idle workers wake to beat their heartbeats), and STOPPING=1 on SIGTERM.
#[test]
fn a_healthy_idle_daemon_keeps_feeding_the_watchdog() {
    let dir = TempDir::new("watchdog");
    let notify_path = dir.path().join("notify");
    let systemd = UnixDatagram::bind(&notify_path).expect("bind notify socket");
    systemd
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let log = std::fs::File::create(dir.path().join("tmemd.log")).unwrap();
    let mut child = Command::new(bin("tmemd"))
        .arg("--socket")
        .arg(dir.socket())
        .arg("--control-socket")
        .arg(dir.control())
        .args(["--mem-limit", "16M", "--workers", "2"])
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "1000000")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn tmemd");
    let mut seen: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 512];
    // Idle for several heartbeat periods: feeding must go on.
    while seen.iter().filter(|m| *m == "WATCHDOG=1").count() < 10 {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let log = std::fs::read_to_string(dir.path().join("tmemd.log")).unwrap_or_default();
            panic!("watchdog not fed: saw {seen:?}\nlog:\n{log}");
        }
        if let Ok(n) = systemd.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    // The page memfd (and the settings memfd) go to the fd store before READY.
    let first = seen.iter().find(|m| !m.starts_with("FDSTORE=1"));
    assert!(first.is_some_and(|m| m.starts_with("READY=1")), "{seen:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = wait_for(Duration::from_secs(20), "tmemd to exit", || {
        child.try_wait().ok().flatten()
    });
    assert!(status.success(), "{status}");
    while let Ok(n) = systemd.recv(&mut buf) {
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(seen.iter().any(|m| m == "STOPPING=1"), "{seen:?}");
}
