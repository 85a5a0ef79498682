//! Handshake tests over real Unix sockets, memfds and eventfds.

use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use tmem_abi::{cmd, Request, RequestEntry};
use tmem_local::listen::BindError;
use tmem_local::wire::{HelloWire, HELLO_MAGIC, MAX_NAME};
use tmem_local::*;
use tmem_ring::{BackendRing, FrontendRing, Layout};

const LAYOUT: Layout = Layout {
    ring_pages: 1,
    data_slots: 8,
};

fn limits() -> HelloLimits {
    HelloLimits {
        max_ring_pages: 4,
        max_data_slots: 64,
        timeout: Duration::from_millis(500),
        first_byte: Duration::from_millis(500),
    }
}

fn sock_path(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tmem-local-test-{}-{}-{tag}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    // tmemd creates no directory but its runtime directory: the test makes its own.
    std::fs::create_dir_all(dir.join("sub")).expect("create test directory");
    dir.join("sub").join("tmemd.sock")
}

fn params(name: &str, layout: Layout) -> ConnectParams {
    ConnectParams {
        domid: 7,
        instance: 0xabcd,
        name: name.into(),
        layout,
    }
}

/// A daemon thread accepting `n` connections, each with `f`.
fn serve<T: Send + 'static>(
    listener: UnixListener,
    n: usize,
    f: impl Fn(usize, Result<PendingGuest, HelloError>) -> T + Send + 'static,
) -> thread::JoinHandle<Vec<T>> {
    thread::spawn(move || {
        (0..n)
            .map(|i| {
                let (s, _) = listener.accept().unwrap();
                f(i, read_hello(s, &limits()))
            })
            .collect()
    })
}

#[test]
fn happy_path_and_ring_traffic_across_processes_memory() {
    let path = sock_path("happy");
    let listener = bind_listener(&path).unwrap();
    let daemon = serve(listener, 1, |_, r| {
        let p = r.unwrap();
        assert_eq!(p.hello.domid, 7);
        assert_eq!(p.hello.instance, 0xabcd);
        assert_eq!(p.hello.name, "guest-ä");
        assert_eq!(p.hello.layout, LAYOUT);
        assert_eq!(p.peer.pid as u32, std::process::id());
        // SAFETY-free: getuid is always safe to call.
        assert_eq!(p.peer.uid, nix::unistd::getuid().as_raw());
        let g = p.accept(42).unwrap();
        // Serve one request on the ring.
        let mut ring = BackendRing::new(&g.mem, g.hello.layout).unwrap();
        assert!(wait_eventfd(g.kick.as_fd(), Some(Duration::from_secs(5))).unwrap());
        let mut v = Vec::new();
        ring.next_batch(8, &mut v).unwrap();
        assert_eq!(v.len(), 1);
        assert!(matches!(v[0].req, Ok(Request::FlushObject { .. })));
        ring.push_response(v[0].id, 1, 0).unwrap();
        if ring.publish() {
            kick(g.notify.as_fd());
        }
        // Then the goodbye.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match g.poll_peer() {
                PeerEvent::Idle if Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(1))
                }
                e => return e,
            }
        }
    });
    let c = connect(&path, &params("guest-ä", LAYOUT)).unwrap();
    assert_eq!(c.client_id, 42);
    let mut f = FrontendRing::init(&c.mem, c.layout).unwrap();
    f.push_request(&RequestEntry::page_op(
        9,
        cmd::FLUSH_OBJECT,
        0,
        [1, 2, 3],
        0,
        0,
    ))
    .unwrap();
    assert!(f.publish());
    kick(c.kick.as_fd());
    assert!(wait_eventfd(c.notify.as_fd(), Some(Duration::from_secs(5))).unwrap());
    let r = f.poll_response().unwrap();
    assert_eq!((r.id, r.status), (9, 1));
    c.goodbye();
    assert_eq!(daemon.join().unwrap(), vec![PeerEvent::Goodbye]);
}

#[test]
fn eof_is_reported_as_closed() {
    let path = sock_path("eof");
    let listener = bind_listener(&path).unwrap();
    let daemon = serve(listener, 1, |_, r| {
        let g = r.unwrap().accept(1).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match g.poll_peer() {
                PeerEvent::Idle if Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(1))
                }
                e => return e,
            }
        }
    });
    let c = connect(&path, &params("g", LAYOUT)).unwrap();
    drop(c);
    assert_eq!(daemon.join().unwrap(), vec![PeerEvent::Closed]);
}

/// Send a hand-made hello over a socket pair and return the daemon's verdict and the reply
/// the client received.
fn raw_hello(
    bytes: &[u8],
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> (Result<PendingGuest, HelloError>, Result<u32, LocalError>) {
    let (client, server) = UnixStream::pair().unwrap();
    let t = thread::spawn(move || read_hello(server, &limits()));
    send_hello(&client, bytes, fds).unwrap();
    let verdict = t.join().unwrap();
    let reply = read_reply(&client, Duration::from_secs(2));
    (verdict, reply)
}

fn good_wire(layout: Layout) -> HelloWire {
    let mut name = [0u8; MAX_NAME];
    name[..4].copy_from_slice(b"test");
    HelloWire {
        magic: HELLO_MAGIC,
        version: tmem_abi::ring::PROTOCOL_VERSION,
        domid: 1,
        flags: 0,
        instance: 2,
        ring_pages: layout.ring_pages,
        data_slots: layout.data_slots,
        name_len: 4,
        reserved: 0,
        name,
    }
}

fn fds_for(layout: Layout) -> (MemfdRegion, std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    (
        MemfdRegion::create("t", layout.total_bytes()).unwrap(),
        new_eventfd().unwrap(),
        new_eventfd().unwrap(),
    )
}

fn rejected_status(reply: Result<u32, LocalError>) -> (i32, String) {
    match reply {
        Err(LocalError::Rejected {
            status, message, ..
        }) => (status, message),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn raw_good_hello_is_accepted() {
    let (m, k, n) = fds_for(LAYOUT);
    let (client, server) = UnixStream::pair().unwrap();
    let t = thread::spawn(move || read_hello(server, &limits()).map(|p| p.accept(5)));
    send_hello(
        &client,
        &good_wire(LAYOUT).to_bytes(),
        &[m.fd(), k.as_fd(), n.as_fd()],
    )
    .unwrap();
    assert!(t.join().unwrap().unwrap().is_ok());
    assert_eq!(read_reply(&client, Duration::from_secs(2)).unwrap(), 5);
}

#[test]
fn unsealed_memfd_is_rejected() {
    let m = MemfdRegion::create_with_seals("t", LAYOUT.total_bytes(), 0).unwrap();
    let (k, n) = (new_eventfd().unwrap(), new_eventfd().unwrap());
    let (v, r) = raw_hello(
        &good_wire(LAYOUT).to_bytes(),
        &[m.fd(), k.as_fd(), n.as_fd()],
    );
    assert!(matches!(v, Err(HelloError::NotSealed(_))), "{v:?}");
    let (status, msg) = rejected_status(r);
    assert_eq!(status, -libc::EPERM);
    assert!(msg.contains("F_SEAL_SHRINK"), "{msg}");
    // Shrink-sealed only is not enough either.
    let m = MemfdRegion::create_with_seals("t", LAYOUT.total_bytes(), libc::F_SEAL_SHRINK).unwrap();
    let (v, _) = raw_hello(
        &good_wire(LAYOUT).to_bytes(),
        &[m.fd(), k.as_fd(), n.as_fd()],
    );
    assert!(matches!(v, Err(HelloError::NotSealed(_))), "{v:?}");
}

#[test]
fn memfd_too_small_is_rejected() {
    let small = Layout {
        ring_pages: 1,
        data_slots: 2,
    };
    let (m, k, n) = fds_for(small);
    let (v, r) = raw_hello(
        &good_wire(LAYOUT).to_bytes(),
        &[m.fd(), k.as_fd(), n.as_fd()],
    );
    assert!(
        matches!(v, Err(HelloError::MemfdTooSmall { have, need }) if have == 3 * 4096 && need == 9 * 4096),
        "{v:?}"
    );
    assert_eq!(rejected_status(r).0, -libc::EINVAL);
}

#[test]
fn bad_magic_and_version_are_rejected() {
    let (m, k, n) = fds_for(LAYOUT);
    let fds = [m.fd(), k.as_fd(), n.as_fd()];
    let mut w = good_wire(LAYOUT);
    w.magic = 0x1234_5678;
    let (v, r) = raw_hello(&w.to_bytes(), &fds);
    assert!(matches!(v, Err(HelloError::BadMagic(0x1234_5678))), "{v:?}");
    assert_eq!(rejected_status(r).0, -libc::EPROTO);

    let mut w = good_wire(LAYOUT);
    w.version = 2;
    let (v, r) = raw_hello(&w.to_bytes(), &fds);
    assert!(
        matches!(v, Err(HelloError::BadVersion { got: 2, .. })),
        "{v:?}"
    );
    assert!(rejected_status(r).1.contains("version 2"));
}

#[test]
fn malformed_fields_are_rejected() {
    let (m, k, n) = fds_for(LAYOUT);
    let fds = [m.fd(), k.as_fd(), n.as_fd()];
    let mut w = good_wire(LAYOUT);
    w.name_len = 65;
    assert!(matches!(
        raw_hello(&w.to_bytes(), &fds).0,
        Err(HelloError::Malformed(_))
    ));
    let mut w = good_wire(LAYOUT);
    w.name[10] = b'x'; // garbage past name_len
    assert!(matches!(
        raw_hello(&w.to_bytes(), &fds).0,
        Err(HelloError::Malformed(_))
    ));
    let mut w = good_wire(LAYOUT);
    w.name[0] = 0xff; // not UTF-8
    assert!(matches!(
        raw_hello(&w.to_bytes(), &fds).0,
        Err(HelloError::Malformed(_))
    ));
    let mut w = good_wire(LAYOUT);
    w.flags = 1;
    assert!(matches!(
        raw_hello(&w.to_bytes(), &fds).0,
        Err(HelloError::Malformed(_))
    ));
}

#[test]
fn wrong_descriptors_are_rejected() {
    let (m, k, n) = fds_for(LAYOUT);
    let bytes = good_wire(LAYOUT).to_bytes();
    // Too few.
    let (v, r) = raw_hello(&bytes, &[m.fd(), k.as_fd()]);
    assert!(matches!(v, Err(HelloError::FdCount(2))), "{v:?}");
    assert_eq!(rejected_status(r).0, -libc::EBADF);
    // None at all.
    assert!(matches!(
        raw_hello(&bytes, &[]).0,
        Err(HelloError::FdCount(0))
    ));
    // Too many.
    let extra = new_eventfd().unwrap();
    let (v, r) = raw_hello(&bytes, &[m.fd(), k.as_fd(), n.as_fd(), extra.as_fd()]);
    assert!(matches!(v, Err(HelloError::TooManyFds)), "{v:?}");
    assert!(matches!(
        r,
        Err(LocalError::Rejected {
            class: RefusalClass::Permanent,
            ..
        })
    ));
    // An eventfd where the memfd goes.
    let (v, _) = raw_hello(&bytes, &[k.as_fd(), k.as_fd(), n.as_fd()]);
    assert!(matches!(v, Err(HelloError::NotMemfd(_))), "{v:?}");
    // A memfd where an eventfd goes.
    let (v, _) = raw_hello(&bytes, &[m.fd(), m.fd(), n.as_fd()]);
    assert!(matches!(v, Err(HelloError::NotEventfd("kick"))), "{v:?}");
    // A regular file where the memfd goes.
    let f = std::fs::File::open("/proc/self/exe").unwrap();
    let (v, _) = raw_hello(&bytes, &[f.as_fd(), k.as_fd(), n.as_fd()]);
    assert!(matches!(v, Err(HelloError::NotMemfd(_))), "{v:?}");
}

#[test]
fn limits_are_enforced() {
    let big = Layout {
        ring_pages: 1,
        data_slots: 65,
    };
    let (m, k, n) = fds_for(big);
    let (v, r) = raw_hello(&good_wire(big).to_bytes(), &[m.fd(), k.as_fd(), n.as_fd()]);
    assert!(
        matches!(v, Err(HelloError::DataSlots { got: 65, max: 64 })),
        "{v:?}"
    );
    assert_eq!(rejected_status(r).0, -libc::E2BIG);

    let many = Layout {
        ring_pages: 5,
        data_slots: 1,
    };
    let (m, k, n) = fds_for(many);
    let (v, _) = raw_hello(&good_wire(many).to_bytes(), &[m.fd(), k.as_fd(), n.as_fd()]);
    assert!(
        matches!(v, Err(HelloError::RingPages { got: 5, .. })),
        "{v:?}"
    );

    let none = Layout {
        ring_pages: 0,
        data_slots: 1,
    };
    let (v, _) = raw_hello(&good_wire(none).to_bytes(), &[m.fd(), k.as_fd(), n.as_fd()]);
    assert!(
        matches!(v, Err(HelloError::RingPages { got: 0, .. })),
        "{v:?}"
    );
}

#[test]
fn silent_peer_times_out() {
    let (client, server) = UnixStream::pair().unwrap();
    let start = Instant::now();
    let v = read_hello(server, &limits());
    let took = start.elapsed();
    assert!(matches!(v, Err(HelloError::FirstByteTimeout(_))), "{v:?}");
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(rejected_status(read_reply(&client, Duration::from_secs(1)))
        .1
        .contains("nothing received"));

    // A peer that trickles part of a hello is held to the same overall deadline.
    let (client, server) = UnixStream::pair().unwrap();
    let t = thread::spawn(move || read_hello(server, &limits()));
    send_hello(&client, &good_wire(LAYOUT).to_bytes()[..10], &[]).unwrap();
    let start = Instant::now();
    assert!(matches!(t.join().unwrap(), Err(HelloError::Timeout(_))));
    assert!(start.elapsed() < Duration::from_secs(3));
    // And one that hangs up mid-hello is reported as gone.
    let (client, server) = UnixStream::pair().unwrap();
    send_hello(&client, &good_wire(LAYOUT).to_bytes()[..10], &[]).unwrap();
    drop(client);
    assert!(matches!(
        read_hello(server, &limits()),
        Err(HelloError::PeerClosed)
    ));
}

#[test]
fn policy_reject_reaches_the_client() {
    let path = sock_path("reject");
    let listener = bind_listener(&path).unwrap();
    let daemon = serve(listener, 1, |_, r| {
        r.unwrap().refuse(&Refusal {
            status: -libc::EPERM,
            class: RefusalClass::Permanent,
            message: "domain 7 is not admitted".into(),
        })
    });
    let e = connect(&path, &params("g", LAYOUT)).unwrap_err();
    assert!(e.is_permanent_refusal(), "{e:?}");
    match e {
        LocalError::Rejected {
            status, message, ..
        } => {
            assert_eq!(status, -libc::EPERM);
            assert_eq!(message, "domain 7 is not admitted");
        }
        other => panic!("{other:?}"),
    }
    daemon.join().unwrap();
}

#[test]
fn two_connections_are_independent() {
    let path = sock_path("two");
    let listener = bind_listener(&path).unwrap();
    let daemon = serve(listener, 2, |i, r| {
        r.unwrap().accept(100 + i as u32).unwrap()
    });
    let a = connect(&path, &params("a", LAYOUT)).unwrap();
    let b = connect(
        &path,
        &params(
            "b",
            Layout {
                ring_pages: 2,
                data_slots: 3,
            },
        ),
    )
    .unwrap();
    assert_ne!(a.client_id, b.client_id);
    let guests = daemon.join().unwrap();
    for (c, g, byte) in [(&a, &guests[0], 11u8), (&b, &guests[1], 22u8)] {
        let mut f = FrontendRing::init(&c.mem, c.layout).unwrap();
        f.write_slot(1, &[byte; 4096]);
        f.push_request(&RequestEntry::page_op(1, cmd::PUT_PAGE, 0, [0; 3], 0, 1))
            .unwrap();
        assert!(f.publish());
        kick(c.kick.as_fd());
        // Daemon side of this connection only.
        let mut ring = BackendRing::new(&g.mem, g.hello.layout).unwrap();
        assert!(wait_eventfd(g.kick.as_fd(), Some(Duration::from_secs(5))).unwrap());
        let mut v = Vec::new();
        ring.next_batch(8, &mut v).unwrap();
        assert_eq!(v.len(), 1);
        let Ok(Request::Put { slot, .. }) = v[0].req else {
            panic!("{:?}", v[0])
        };
        let mut page = [0u8; 4096];
        tmem_abi::PageSource::read_page(&ring.slot_source(slot), &mut page);
        ring.push_response(v[0].id, i32::from(page[0]), 0).unwrap();
        assert!(ring.publish());
        kick(g.notify.as_fd());
        assert!(wait_eventfd(c.notify.as_fd(), Some(Duration::from_secs(5))).unwrap());
        assert_eq!(f.poll_response().unwrap().status, i32::from(byte));
    }
    // The other connection's eventfds saw nothing of it.
    assert!(!wait_eventfd(guests[0].kick.as_fd(), Some(Duration::ZERO)).unwrap());
    assert_eq!(guests[0].hello.name, "a");
    assert_eq!(guests[1].hello.layout.ring_pages, 2);
}

#[test]
fn listener_reports_busy_and_removes_stale() {
    let path = sock_path("busy");
    let l = bind_listener(&path).unwrap();
    assert!(path.parent().unwrap().is_dir());
    match bind_listener(&path) {
        Err(e @ LocalError::Listen(BindError::AlreadyListening { .. })) => {
            assert!(e.to_string().contains("another tmemd is listening on"))
        }
        other => panic!("{other:?}"),
    }
    drop(l); // socket file stays: stale
    assert!(path.exists());
    let _l2 = bind_listener(&path).unwrap();
    // A non-socket file is not removed.
    let file = path.with_file_name("plain");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(
        bind_listener(&file),
        Err(LocalError::Listen(BindError::NotASocket { .. }))
    ));
}

#[test]
fn connect_to_nothing_is_a_clear_error() {
    let path = sock_path("none");
    let e = connect(&path, &params("g", LAYOUT)).unwrap_err();
    assert!(matches!(e, LocalError::Connect { .. }), "{e:?}");
    assert!(e.to_string().contains("cannot connect to tmemd at"));
}

/// Descriptors spread over many one-byte segments: the hello ends at the first segment that
/// takes the total past three, with every received descriptor closed (old code read the whole
/// hello and held up to 8 descriptors per segment, 832 per handshake).
#[test]
fn excess_descriptors_end_the_hello_at_once() {
    let (m, k, n) = fds_for(LAYOUT);
    let bytes = good_wire(LAYOUT).to_bytes();
    let (client, server) = UnixStream::pair().unwrap();
    let t = thread::spawn(move || {
        let start = Instant::now();
        (read_hello(server, &limits()), start.elapsed())
    });
    let fds = [m.fd(), k.as_fd(), n.as_fd()];
    send_hello(&client, &bytes[..1], &fds).unwrap();
    send_hello(&client, &bytes[1..2], &fds[..1]).unwrap();
    let (v, took) = t.join().unwrap();
    assert!(matches!(v, Err(HelloError::TooManyFds)), "{v:?}");
    assert!(took < Duration::from_millis(400), "took {took:?}");
    let (status, msg) = rejected_status(read_reply(&client, Duration::from_secs(2)));
    assert_eq!(status, -libc::EBADF, "{msg}");

    // A control message larger than the room for four descriptors is truncated: refused too.
    let many: Vec<_> = (0..20).map(|_| new_eventfd().unwrap()).collect();
    let borrowed: Vec<_> = many.iter().map(|f| f.as_fd()).collect();
    let (v, _) = raw_hello(&bytes, &borrowed);
    assert!(matches!(v, Err(HelloError::TooManyFds)), "{v:?}");
}

/// A connection that sends nothing is dropped after the first-byte deadline, not the whole
/// hello timeout, and is told why (a temporary refusal).
#[test]
fn silent_peer_hits_the_first_byte_deadline() {
    let l = HelloLimits {
        first_byte: Duration::from_millis(100),
        timeout: Duration::from_secs(5),
        ..limits()
    };
    let (client, server) = UnixStream::pair().unwrap();
    let start = Instant::now();
    let v = read_hello(server, &l);
    let took = start.elapsed();
    assert!(matches!(v, Err(HelloError::FirstByteTimeout(_))), "{v:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let e = read_reply(&client, Duration::from_secs(1)).unwrap_err();
    assert!(
        matches!(
            e,
            LocalError::Rejected {
                class: RefusalClass::Temporary,
                status,
                ..
            } if status == -libc::ETIMEDOUT
        ),
        "{e:?}"
    );
}

/// `claim` returning false abandons the hello without a reply (the shedder answered).
#[test]
fn unclaimed_hello_is_abandoned_silently() {
    let (m, k, n) = fds_for(LAYOUT);
    let (client, server) = UnixStream::pair().unwrap();
    send_hello(
        &client,
        &good_wire(LAYOUT).to_bytes(),
        &[m.fd(), k.as_fd(), n.as_fd()],
    )
    .unwrap();
    let v = read_hello_claimed(server, &limits(), || false);
    assert!(matches!(v, Err(HelloError::Shed)), "{v:?}");
    assert!(read_reply(&client, Duration::from_millis(200)).is_err());
}

/// The pure parser: a good hello parses to the layout's size; wrong descriptor counts and
/// arbitrary bytes are errors, never panics.
#[test]
fn parse_hello_is_total() {
    let bytes = good_wire(LAYOUT).to_bytes();
    let (h, need) = parse_hello(&bytes, 3, &limits()).unwrap();
    assert_eq!(h.layout, LAYOUT);
    assert_eq!(need, LAYOUT.total_bytes());
    assert!(matches!(
        parse_hello(&bytes, 4, &limits()),
        Err(HelloError::FdCount(4))
    ));
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..20_000 {
        let mut b = bytes;
        for _ in 0..4 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            b[(seed % b.len() as u64) as usize] = (seed >> 32) as u8;
        }
        let _ = parse_hello(&b, i % 5, &limits());
    }
}
