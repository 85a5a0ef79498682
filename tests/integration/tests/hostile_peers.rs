//! Hostile peers against the real daemon while a well-behaved guest runs beside them.
//!
//! Each hostile peer is a real process-level client: a real socket, a real sealed memfd and
//! real eventfds, but it writes whatever it likes into its ring (through the mock guest of
//! tmem-ring, which writes raw bytes into the shared memory the daemon mapped). It must get
//! error statuses or a disconnect; the good guest must see zero errors and no disconnect.

use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use tmem_abi::status::errno;
use tmem_abi::{cmd, RequestEntry, ResponseEntry};
use tmem_local::wire::{HelloWire, HELLO_MAGIC, MAX_NAME};
use tmem_local::{ConnectParams, LocalConnection, LocalError, MemfdRegion};
use tmem_ring::mock::MockGuest;
use tmem_ring::Layout;
use tmem_tests::{counter, wait_for, Daemon, Guest, TempDir};

const LAYOUT: Layout = Layout {
    ring_pages: 1,
    data_slots: 8,
};

fn hostile(dir: &TempDir, domid: u32) -> (MockGuest<MemfdRegion>, LocalConnection) {
    let mut conn = tmem_local::connect(
        &dir.socket(),
        &ConnectParams {
            domid,
            instance: 77,
            name: format!("hostile-{domid}"),
            layout: LAYOUT,
        },
    )
    .expect("hostile peer connects");
    // Move the mapping into the mock guest; the daemon keeps its own mapping of the memfd.
    let mem = std::mem::replace(
        &mut conn.mem,
        MemfdRegion::create("placeholder", 4096).expect("memfd"),
    );
    let guest = MockGuest::new(mem, LAYOUT).expect("mock guest over the memfd");
    (guest, conn)
}

fn kick(conn: &LocalConnection) {
    tmem_local::kick(conn.kick.as_fd());
}

/// Wait until `n` responses have been published after index `from`.
fn responses(g: &MockGuest<MemfdRegion>, from: u32, n: usize) -> Vec<ResponseEntry> {
    wait_for(Duration::from_secs(5), "responses from tmemd", || {
        let r = g.responses_from(from);
        (r.len() >= n).then_some(r)
    })
}

/// Whether the daemon closed the peer's socket within `timeout`. Notify bytes the daemon
/// sent meanwhile are read and skipped (any other byte fails the test); a read timeout is not a
/// disconnect.
fn disconnected(conn: &LocalConnection, timeout: Duration) -> bool {
    let mut s: &UnixStream = &conn.stream;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => assert!(
                buf[..n].iter().all(|&b| b == tmem_local::wire::NOTIFY),
                "daemon sent a byte that is not a notification"
            ),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

fn good_guest(dir: &TempDir) -> Guest {
    Guest::start(
        dir,
        &[
            "--domid",
            "1",
            "--filesystems",
            "4",
            "--swap",
            "--seconds",
            "10",
            "--report-interval",
            "0.2",
        ],
    )
}

#[test]
fn hostile_peers_get_errors_or_disconnects_and_a_good_guest_sees_nothing() {
    let dir = TempDir::new("hostile");
    let daemon = Daemon::start(&dir, &["--mem-limit", "64M"]);
    let good = good_guest(&dir);
    good.wait_line(Duration::from_secs(10), "good guest mapped", |v| {
        v["type"] == "status" && v["connected"] == true
    });

    // 1. Garbage entries: every one is answered with an error status; the peer stays connected.
    let (mut g, conn) = hostile(&dir, 101);
    let mut seed = 0x1234_5678_9abc_def0u64;
    for _ in 0..200 {
        let mut bytes = [0u8; 64];
        for chunk in bytes.chunks_mut(8) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            chunk.copy_from_slice(&seed.to_le_bytes());
        }
        g.push_bytes(&bytes);
        g.publish();
        kick(&conn);
        // Stay within the ring: wait for this request's answer before the next.
        let want = g.req_prod();
        wait_for(Duration::from_secs(5), "answer to garbage", || {
            (g.rsp_prod() == want).then_some(())
        });
    }
    let all = g.responses_from(g.rsp_prod().wrapping_sub(g.entries()));
    assert!(!all.is_empty());
    for r in &all {
        assert!(r.status < 0, "garbage answered with success: {r:?}");
    }
    assert!(
        !disconnected(&conn, Duration::from_millis(100)),
        "garbage must not disconnect"
    );

    // 2. Privileged commands, an out-of-range data slot, and another client's pool ids.
    let base = g.rsp_prod();
    let reqs = [
        (
            RequestEntry::page_op(1, cmd::CONTROL, 0, [0; 3], 0, 0),
            -errno::EPERM,
        ),
        (
            RequestEntry::page_op(2, cmd::AUTH, 0, [0; 3], 0, 0),
            -errno::EPERM,
        ),
        (
            RequestEntry::page_op(3, cmd::RESTORE_NEW, 0, [0; 3], 0, 0),
            -errno::EPERM,
        ),
        (
            RequestEntry::page_op(4, cmd::PUT_PAGE, 0, [1, 2, 3], 0, LAYOUT.data_slots),
            -errno::EINVAL,
        ),
        // The good guest's pool 0 exists; this peer has none, so the id names nothing.
        (
            RequestEntry::page_op(5, cmd::GET_PAGE, 0, [1, 0, 0], 0, 0),
            -errno::ENODEV,
        ),
        (
            RequestEntry::page_op(6, cmd::FLUSH_OBJECT, 3, [1, 0, 0], 0, 0),
            -errno::ENODEV,
        ),
        (
            RequestEntry::page_op(7, cmd::PUT_PAGE, -1, [1, 0, 0], 0, 0),
            -errno::ENODEV,
        ),
    ];
    for (r, _) in &reqs {
        g.push(r);
    }
    g.publish();
    kick(&conn);
    let got = responses(&g, base, reqs.len());
    for (r, want) in reqs.iter().map(|(r, w)| (r.id, *w)) {
        let rsp = got.iter().find(|x| x.id == r).expect("answered");
        assert_eq!(rsp.status, want, "request {r}");
    }

    // 3. Producer index far beyond the ring: disconnected.
    let p = g.req_prod();
    g.set_req_prod(p.wrapping_add(10 * g.entries()));
    kick(&conn);
    assert!(
        disconnected(&conn, Duration::from_secs(5)),
        "overflow must disconnect"
    );
    drop(conn);

    // 4. A peer that asks to be notified after every request but never reads its socket
    //    (so the daemon's notify bytes fill the socket buffer), then fills its ring, never
    //    reads a response and saturates its notify eventfd: the daemon must not block on it.
    let (mut g, conn) = hostile(&dir, 102);
    // ~300 one-byte sends fill a Unix socket's default buffer; go well past that.
    for i in 0..1000u32 {
        let rsp = g.rsp_prod();
        g.set_rsp_event(rsp.wrapping_add(1));
        g.push(&RequestEntry::page_op(
            u64::from(i),
            cmd::FLUSH_PAGE,
            0,
            [9, 9, 9],
            i,
            0,
        ));
        g.publish();
        kick(&conn);
        let want = g.req_prod();
        wait_for(
            Duration::from_secs(5),
            "answer while the socket fills",
            || (g.rsp_prod() == want).then_some(()),
        );
    }
    // The daemon's wake-ups piled up unread on the socket: only notify bytes, and fewer than
    // the 1000 it wanted to send once the buffer was full (it skipped the rest, not blocked).
    let mut queued = Vec::new();
    conn.stream.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    while let Ok(n) = (&conn.stream).read(&mut buf) {
        if n == 0 {
            break;
        }
        queued.extend_from_slice(&buf[..n]);
    }
    assert!(
        (100..1000).contains(&queued.len()),
        "{} notify bytes queued",
        queued.len()
    );
    assert!(queued.iter().all(|&b| b == tmem_local::wire::NOTIFY));
    for i in 0..g.entries() {
        g.push(&RequestEntry::page_op(
            u64::from(i),
            cmd::FLUSH_PAGE,
            0,
            [9, 9, 9],
            i,
            0,
        ));
    }
    g.publish();
    kick(&conn);
    nix::unistd::write(conn.notify.as_fd(), &0xffff_ffff_ffff_fffeu64.to_ne_bytes())
        .expect("saturate notify counter");
    std::thread::sleep(Duration::from_millis(300));

    // 5. Bad hellos: an unsealed memfd, a too-small memfd, a silent peer.
    assert_rejected(&dir, Some(0), LAYOUT, 0, "seal");
    assert_rejected(&dir, None, LAYOUT, 4096, "needs");
    let silent = UnixStream::connect(dir.socket()).expect("connect");

    // Meanwhile the good guest must be untouched and the daemon responsive.
    let t = Instant::now();
    let r = daemon.control(&tmem_control::Op::Status);
    assert!(matches!(r, tmem_control::Reply::Ok(_)), "{r:?}");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "control answered slowly"
    );
    drop(silent);
    drop(conn);

    let last = good.finish_clean(Duration::from_secs(30));
    assert!(counter(&last, &["guest", "read_hits"]) > 0, "{last}");
    let log = daemon.log_text();
    assert!(log.contains("disconnecting guest"), "daemon log:\n{log}");
}

/// Send a hand-made hello and expect a refusal whose message contains `what`.
/// `seals`: `Some(s)` seals to apply, `None` for the proper ones; `size_override`: memfd size.
fn assert_rejected(
    dir: &TempDir,
    seals: Option<libc::c_int>,
    layout: Layout,
    size_override: usize,
    what: &str,
) {
    let size = if size_override > 0 {
        size_override
    } else {
        layout.total_bytes()
    };
    let mem = match seals {
        Some(s) => MemfdRegion::create_with_seals("bad", size, s).expect("memfd"),
        None => MemfdRegion::create("bad", size).expect("memfd"),
    };
    let kick = tmem_local::new_eventfd().expect("eventfd");
    let notify = tmem_local::new_eventfd().expect("eventfd");
    let mut name = [0u8; MAX_NAME];
    name[..3].copy_from_slice(b"bad");
    let hello = HelloWire {
        magic: HELLO_MAGIC,
        version: tmem_abi::ring::PROTOCOL_VERSION,
        domid: 200,
        flags: 0,
        instance: 1,
        ring_pages: layout.ring_pages,
        data_slots: layout.data_slots,
        name_len: 3,
        reserved: 0,
        name,
    };
    let s = UnixStream::connect(dir.socket()).expect("connect");
    tmem_local::send_hello(
        &s,
        &hello.to_bytes(),
        &[mem.fd(), kick.as_fd(), notify.as_fd()],
    )
    .expect("send hello");
    match tmem_local::read_reply(&s, Duration::from_secs(5)) {
        Err(LocalError::Rejected { message, .. }) => {
            assert!(message.to_lowercase().contains(what), "{what}: {message}")
        }
        other => panic!("{what}: expected a refusal, got {other:?}"),
    }
}
