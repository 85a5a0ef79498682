//! Shared ephemeral pools between guests, by uuid, through the real daemon: authorised guests
//! see each other's pages, an unauthorised guest gets an explicit error.

use std::sync::Arc;
use std::time::Duration;

use tmem_abi::{Page, PAGE_SIZE};
use tmem_control::{OkReply, Op, Reply, Target};
use tmem_front::{Cleancache, Client, ClientConfig, FileKey, FrontError, LocalTransport};
use tmem_tests::{Daemon, TempDir};

const UUID_TEXT: &str = "6f1c2a7e-93b4-4d2e-8a11-0c5f3e9d7b21";

fn guest(dir: &TempDir, domid: u32) -> Cleancache {
    let t = LocalTransport::new(
        dir.socket(),
        domid,
        0x1000 + u64::from(domid),
        "shared-test",
    );
    let client = Arc::new(Client::new(Box::new(t), ClientConfig::default()));
    assert!(
        client.wait_mapped(Duration::from_secs(5)),
        "domain {domid} connects"
    );
    Cleancache::new(client)
}

fn page_for(inode: u64, index: u64) -> Page {
    let mut p = [0u8; PAGE_SIZE];
    for (i, chunk) in p.chunks_mut(8).enumerate() {
        let v = inode.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (index << 20) ^ i as u64;
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    p
}

/// Authorise local guest `label` of this test's uid (local guests are named by the uid the
/// kernel reports plus their label, never by a bare domain id).
fn authorise(daemon: &Daemon, label: u32, allow: bool) {
    let uuid = tmem_control::parse_uuid(UUID_TEXT).unwrap();
    let r = daemon.control(&Op::SharedAuth {
        target: Target::Local {
            uid: nix::unistd::getuid().as_raw(),
            label,
        },
        uuid,
        allow,
    });
    assert!(matches!(r, Reply::Ok(OkReply::Done { .. })), "{r:?}");
}

#[test]
fn authorised_guests_share_pages_and_an_unauthorised_guest_is_refused() {
    let dir = TempDir::new("shared");
    let daemon = Daemon::start(&dir, &["--mem-limit", "64M"]);
    authorise(&daemon, 1, true);
    authorise(&daemon, 2, true);
    let raw = tmem_front::parse_uuid(UUID_TEXT).unwrap();

    let a = guest(&dir, 1);
    let b = guest(&dir, 2);
    let c = guest(&dir, 3);
    let fa = a.init_shared_fs(raw).expect("domain 1 joins");
    let fb = b.init_shared_fs(raw).expect("domain 2 joins");
    match c.init_shared_fs(raw) {
        Err(FrontError::Backend(tmem_abi::TmemError::NotAuthorised)) => {}
        other => panic!("domain 3 must be refused explicitly, got {other:?}"),
    }

    // A puts; B sees exactly A's bytes (shared gets are not exclusive, so A still sees them).
    let file = FileKey::from_ino(7);
    for index in 0..64 {
        let out = a.put_page(fa, file, index, &page_for(7, index));
        assert!(matches!(out, tmem_front::Outcome::Stored), "{out:?}");
    }
    let mut got = [0u8; PAGE_SIZE];
    for index in 0..64 {
        assert!(
            b.get_page(fb, file, index, &mut got),
            "B misses page {index}"
        );
        assert!(
            got == page_for(7, index),
            "B got wrong bytes for page {index}"
        );
        assert!(
            a.get_page(fa, file, index, &mut got),
            "A misses page {index}"
        );
        assert!(got == page_for(7, index));
    }
    // B invalidates a page: A must not see the old copy afterwards.
    b.invalidate_page(fb, file, 5);
    assert!(
        !a.get_page(fa, file, 5, &mut got),
        "stale shared page after invalidate"
    );

    // The daemon's view: one shared pool with both domains as sharers.
    let stats = daemon.stats();
    let shared = stats["shared_pools"].as_array().expect("shared_pools");
    assert_eq!(shared.len(), 1, "{stats}");
    let sharers = shared[0]["local_sharers"]
        .as_array()
        .expect("local_sharers");
    let mut names: Vec<&str> = sharers.iter().map(|s| s.as_str().unwrap()).collect();
    names.sort();
    let uid = nix::unistd::getuid().as_raw();
    assert_eq!(
        names,
        [format!("local:{uid}:1"), format!("local:{uid}:2")],
        "{stats}"
    );

    // De-authorising stops new joins (existing members keep their pool).
    authorise(&daemon, 2, false);
    drop(b);
    let b2 = guest(&dir, 2);
    match b2.init_shared_fs(raw) {
        Err(FrontError::Backend(tmem_abi::TmemError::NotAuthorised)) => {}
        other => panic!("de-authorised domain must be refused, got {other:?}"),
    }
}
