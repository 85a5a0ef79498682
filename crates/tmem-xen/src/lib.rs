//! Xen plumbing for tmem, in pure Rust over the stable kernel interfaces: the xenstore wire
//! protocol ([`xs`], over xenstored's socket or `/dev/xen/xenbus`), grant mapping and sharing
//! (`/dev/xen/gntdev`, `/dev/xen/gntalloc`, and gntdev's grant copy) and event channels
//! (`/dev/xen/evtchn`), plus the `tmem` device's xenstore protocol ([`xenbus`]) and the swap
//! disk's blkif one ([`blkback`]). No Xen library is linked, so one binary runs on a Xen host
//! and on plain Linux, where [`probe`] says why Xen is absent.
//!
//! This crate is the only home of the Xen transport's FFI and ioctl `unsafe` (all of it in
//! `sys.rs`). It must never trust a value a guest wrote: xenstore values are parsed strictly
//! and bounded here, and grant-mapped memory is only exposed through [`tmem_ring::SharedMem`].

pub mod blkback;
pub mod sys;
pub mod wire;
pub mod xenbus;
pub mod xs;

#[cfg(any(test, feature = "test-utils"))]
pub mod fake;

pub use sys::{BoundPort, CopyError, CopySeg, Drained, Evtchn, Gntdev, GrantMapping, GrantShare};
pub use xs::{Tx, WatchEvent, Xs, XsError};

use std::time::Duration;

/// Why this host cannot serve (or use) the Xen transport.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Absent(pub String);

/// Which end the probe checks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// dom0 backend: needs gntdev, evtchn and a privileged xenstore connection.
    Backend,
    /// Guest frontend: needs gntalloc, evtchn and xenstore.
    Frontend,
}

/// Check that the Xen devices and xenstore are usable for `role`; on success hand back the
/// open xenstore connection. Every failure names what is missing.
pub fn probe(role: Role) -> Result<Xs, Absent> {
    if !sys::exists("/dev/xen") && !sys::exists("/proc/xen/capabilities") {
        return Err(Absent(
            "no /dev/xen and no /proc/xen: not running on Xen".into(),
        ));
    }
    let grant_dev = match role {
        Role::Backend => sys::GNTDEV_PATH,
        Role::Frontend => sys::GNTALLOC_PATH,
    };
    for dev in [grant_dev, sys::EVTCHN_PATH] {
        if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open(dev) {
            let module = if dev.ends_with("gntdev") {
                "xen-gntdev"
            } else if dev.ends_with("gntalloc") {
                "xen-gntalloc"
            } else {
                "xen-evtchn"
            };
            return Err(Absent(format!(
                "cannot open {dev}: {e} (is the {module} module loaded, and are we root?)"
            )));
        }
    }
    let mut xs = Xs::open().map_err(|e| Absent(format!("no xenstore: {e}")))?;
    xs.set_timeout(Duration::from_secs(3));
    if role == Role::Backend {
        // Only a privileged domain may list other domains.
        match xs.directory(Tx::NONE, "/local/domain") {
            Ok(Some(_)) => {}
            Ok(None) => return Err(Absent("xenstore has no /local/domain".into())),
            Err(e) => {
                return Err(Absent(format!(
                    "xenstore at {} is not usable as a backend: {e}",
                    xs.describe()
                )))
            }
        }
    } else {
        xs.own_domid()
            .map_err(|e| Absent(format!("cannot learn our domain id from xenstore: {e}")))?;
    }
    xs.set_timeout(Duration::from_secs(10));
    Ok(xs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeXenstore;
    use crate::wire::{Access, Perm};

    #[test]
    fn client_basic_operations_against_the_fake() {
        let fx = FakeXenstore::new();
        let (mut xs, _j) = fx.connect();
        assert_eq!(xs.read(Tx::NONE, "/a/b").unwrap(), None);
        xs.write(Tx::NONE, "/a/b", b"hello").unwrap();
        assert_eq!(
            xs.read(Tx::NONE, "/a/b").unwrap().as_deref(),
            Some(&b"hello"[..])
        );
        xs.mkdir(Tx::NONE, "/a/c").unwrap();
        let mut d = xs.directory(Tx::NONE, "/a").unwrap().unwrap();
        d.sort();
        assert_eq!(d, ["b", "c"]);
        xs.set_perms(
            Tx::NONE,
            "/a",
            &[Perm::new(0, Access::None), Perm::new(4, Access::Read)],
        )
        .unwrap();
        assert_eq!(
            xs.get_perms(Tx::NONE, "/a").unwrap(),
            [Perm::new(0, Access::None), Perm::new(4, Access::Read)]
        );
        xs.rm(Tx::NONE, "/a").unwrap();
        xs.rm(Tx::NONE, "/a").unwrap(); // absent is fine
        assert_eq!(xs.directory(Tx::NONE, "/a").unwrap(), None);
        let e = xs.set_perms(Tx::NONE, "/nope", &[Perm::new(0, Access::None)]);
        assert!(matches!(e, Err(ref e) if e.is_enoent()), "{e:?}");
        assert!(xs.write(Tx::NONE, "relative", b"x").is_err());
        assert_eq!(xs.get_domain_path(3).unwrap(), "/local/domain/3");
        fx.introduce(3, "guest");
        assert!(xs.is_domain_introduced(3).unwrap());
        fx.release(3);
        assert!(!xs.is_domain_introduced(3).unwrap());
    }

    #[test]
    fn watch_events_arrive_on_the_fd_and_between_requests() {
        let fx = FakeXenstore::new();
        let (mut xs, _j) = fx.connect();
        xs.watch("/local/domain/7/device", "fe7").unwrap();
        xs.watch(wire::RELEASE_DOMAIN, "rel").unwrap();
        // Both watches fire once when set; a request flushes them into the queue.
        let _ = xs.read(Tx::NONE, "/x").unwrap();
        let mut got = Vec::new();
        while let Some(e) = xs.take_event() {
            got.push(e.token);
        }
        assert_eq!(got, ["fe7", "rel"]);
        fx.write("/local/domain/7/device/tmem/0/state", "3");
        fx.write("/local/domain/8/other", "x"); // not watched
        fx.release(9);
        // Wait for readability like a daemon would, then pump.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut got = Vec::new();
        while got.len() < 2 && std::time::Instant::now() < deadline {
            sys::poll_fd(
                xs.as_raw_fd(),
                libc::POLLIN,
                Some(Duration::from_millis(50)),
            )
            .unwrap();
            xs.pump().unwrap();
            while let Some(e) = xs.take_event() {
                got.push((e.path, e.token));
            }
        }
        assert_eq!(
            got,
            [
                (
                    "/local/domain/7/device/tmem/0/state".to_string(),
                    "fe7".to_string()
                ),
                ("@releaseDomain".to_string(), "rel".to_string())
            ]
        );
        xs.unwatch("/local/domain/7/device", "fe7").unwrap();
    }

    /// A peer that keeps sending cannot keep `pump` reading: one call reads a bounded amount,
    /// and the rest is still there for the next.
    #[test]
    fn pump_reads_a_bounded_amount_per_call() {
        let fx = FakeXenstore::new();
        let (mut xs, _j) = fx.connect();
        xs.watch("/flood", "f").unwrap();
        let _ = xs.read(Tx::NONE, "/x").unwrap();
        while xs.take_event().is_some() {}
        // ~40 bytes per event: well over one pump's worth.
        let n = 3 * xs::MAX_PUMP_BYTES / 40;
        for i in 0..n {
            fx.write(&format!("/flood/{i}"), "x");
        }
        // Give the fake time to fill the socket buffer (~200 KiB), so an unbounded pump would
        // read far more than its budget in one call. (Only makes the check stronger: a
        // shorter wait cannot make a correct pump fail.)
        std::thread::sleep(Duration::from_millis(300));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let (mut total, mut largest) = (0, 0);
        while total < n {
            assert!(
                std::time::Instant::now() < deadline,
                "{total} of {n} events"
            );
            sys::poll_fd(
                xs.as_raw_fd(),
                libc::POLLIN,
                Some(Duration::from_millis(50)),
            )
            .unwrap();
            xs.pump().unwrap();
            let mut got = 0;
            while xs.take_event().is_some() {
                got += 1;
            }
            largest = largest.max(got);
            total += got;
        }
        assert!(
            !xs.take_events_dropped(),
            "taken as they came: none dropped"
        );
        // Each event is over 20 bytes on the wire.
        assert!(
            largest * 20 <= xs::MAX_PUMP_BYTES,
            "{largest} events in one pump"
        );
        assert!(largest > 0);
    }

    /// Events beyond the queue's capacity are dropped, oldest first, and the client is told.
    #[test]
    fn a_full_event_queue_drops_the_oldest_and_says_so() {
        let fx = FakeXenstore::new();
        let (mut xs, _j) = fx.connect();
        xs.watch("/q", "q").unwrap();
        let _ = xs.read(Tx::NONE, "/x").unwrap();
        assert!(!xs.take_events_dropped());
        for i in 0..xs::MAX_QUEUED_EVENTS + 10 {
            fx.write(&format!("/q/{i}"), "x");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !xs.take_events_dropped() {
            assert!(
                std::time::Instant::now() < deadline,
                "{} queued",
                xs.queued_events()
            );
            sys::poll_fd(
                xs.as_raw_fd(),
                libc::POLLIN,
                Some(Duration::from_millis(50)),
            )
            .unwrap();
            xs.pump().unwrap();
        }
        assert_eq!(xs.queued_events(), xs::MAX_QUEUED_EVENTS);
        assert!(!xs.take_events_dropped(), "the flag is cleared once taken");
        let first = xs.take_event().unwrap();
        assert_ne!(first.path, "/q/0", "the oldest went first");
    }

    #[test]
    fn transactions_retry_on_eagain_and_give_up() {
        let fx = FakeXenstore::new();
        let (mut xs, _j) = fx.connect();
        fx.conflict_next(3);
        let mut runs = 0;
        xs.transaction(|xs, tx| {
            runs += 1;
            xs.write(tx, "/t", b"1")
        })
        .unwrap();
        assert_eq!(runs, 4);
        fx.conflict_next(xs::TRANSACTION_RETRIES + 5);
        let e = xs
            .transaction(|xs, tx| xs.write(tx, "/t", b"2"))
            .unwrap_err();
        assert!(matches!(e, XsError::Conflict(_)), "{e}");
        // An error inside aborts without retrying.
        fx.conflict_next(0);
        let mut runs = 0;
        let e = xs
            .transaction(|xs, tx| {
                runs += 1;
                xs.set_perms(tx, "/missing", &[Perm::new(0, Access::None)])
            })
            .unwrap_err();
        assert!(e.is_enoent());
        assert_eq!(runs, 1);
    }

    #[test]
    fn a_dead_peer_and_a_silent_peer_are_errors_not_hangs() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut xs = Xs::from_stream(a, std::path::Path::new("test")).unwrap();
        xs.set_timeout(Duration::from_millis(100));
        let e = xs.read(Tx::NONE, "/x").unwrap_err();
        assert!(matches!(e, XsError::Timeout(_)), "{e}");
        // After a timeout the connection is not reused.
        assert!(matches!(xs.read(Tx::NONE, "/x"), Err(XsError::Broken)));
        let (a, b2) = std::os::unix::net::UnixStream::pair().unwrap();
        drop(b2);
        drop(b);
        let mut xs = Xs::from_stream(a, std::path::Path::new("test")).unwrap();
        assert!(xs.read(Tx::NONE, "/x").is_err());
    }

    #[test]
    fn probe_explains_absence_on_plain_linux() {
        if std::path::Path::new("/dev/xen").exists() {
            return; // running on Xen: nothing to check here
        }
        let e = probe(Role::Backend).unwrap_err();
        assert!(e.0.contains("not running on Xen"), "{e}");
    }
}
