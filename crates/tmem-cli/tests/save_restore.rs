//! `tmem save` and `tmem restore` between two tmemd instances: a guest's persistent pages
//! leave one tmemd as an image and the same guest, reconnecting to the other tmemd, finds
//! every page byte for byte. Corrupt, truncated and foreign files are refused with a message
//! that says so, and leave nothing behind; an image cannot be restored over a live client.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tmem_abi::{Oid, Page, PageKey, PoolKind, PAGE_SIZE};
use tmem_front::{Client, ClientConfig, LocalTransport, Outcome, PoolHandle};
use tmem_tests::{wait_for, Daemon, Launch, TempDir};

mod common;
use common::{fails, ok};

const T: Duration = Duration::from_secs(20);
const LABEL: u32 = 21;
const PAGES: u32 = 300;

fn key(i: u32) -> PageKey {
    PageKey {
        oid: Oid([4, u64::from(i % 7), 0]),
        index: i,
    }
}

/// Data pages, same-filled pages and zero pages, so every form of the image is used.
fn page(i: u32) -> Page {
    let mut p: Page = [0; PAGE_SIZE];
    match i % 10 {
        0 => {}
        1 => tmem_abi::page::fill_page(&mut p, 0x0101_0101_0101_0101 * u64::from(i % 200)),
        _ => {
            for (j, b) in p.iter_mut().enumerate() {
                *b = (i as usize * 31 + j * 7 + 3) as u8;
            }
        }
    }
    p
}

fn clients(control: &Path) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(&ok(control, &["list", "--json"])).unwrap();
    v["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| format!("{}:{}", c["domid"], c["attached"]))
        .collect()
}

#[test]
fn a_guest_finds_its_pages_in_another_tmemd_after_save_and_restore() {
    let uid = nix::unistd::getuid().as_raw();
    let me = format!("local:{uid}:{LABEL}");
    let dir_a = TempDir::new("xfer-a");
    let dir_b = TempDir::new("xfer-b");
    let mut a = Daemon::start(&dir_a, &["--mem-limit", "32M"]);
    // B listens elsewhere until it holds the pages: the guest must not reach it first.
    let b_socket = dir_b.path().join("b.sock");
    let mut b = Daemon::spawn_on(
        &dir_b,
        &b_socket,
        &dir_b.control(),
        &["--mem-limit", "32M"],
        Launch::default(),
    );
    b.wait_ready(T);

    let transport = LocalTransport::new(&a.socket, LABEL, 0x5151, "mover");
    let guest = Arc::new(Client::new(Box::new(transport), ClientConfig::default()));
    assert!(guest.wait_mapped(T), "guest did not connect to A");
    let pool: PoolHandle = guest
        .create_pool(PoolKind::PrivatePersistent, Some([0x42; 16]))
        .unwrap();
    for i in 0..PAGES {
        assert_eq!(
            guest.put(pool, key(i), &page(i)),
            Outcome::Stored,
            "put {i}"
        );
    }
    // A flushed page must not come back.
    let _ = guest.flush_page(pool, key(5));

    let file = dir_a.path().join("mover.tmem");
    let file_s = file.to_str().unwrap();
    let err = fails(&a.control, &["save", &me, file_s], 1);
    assert!(
        err.contains("is connected") && err.contains("--live"),
        "{err}"
    );
    let out = ok(&a.control, &["save", "--live", &me, file_s]);
    assert!(out.contains(&format!("{}", PAGES - 1)), "{out}");
    assert!(file.exists() && !dir_a.path().join("mover.tmem.partial").exists());

    let bytes = std::fs::read(&file).unwrap();
    let bad = dir_a.path().join("bad.tmem");
    let bad_s = bad.to_str().unwrap();
    let other = format!("local:{uid}:99");
    // Corrupt: one byte flipped in the middle of a page.
    let mut corrupt = bytes.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0x20;
    std::fs::write(&bad, &corrupt).unwrap();
    let err = fails(&b.control, &["restore", "--as", &other, bad_s], 1);
    assert!(err.contains("corrupt"), "{err}");
    // Truncated: the last page and the trailer cut off.
    std::fs::write(&bad, &bytes[..bytes.len() - 5000]).unwrap();
    let err = fails(&b.control, &["restore", "--as", &other, bad_s], 1);
    assert!(err.contains("truncated"), "{err}");
    // Foreign: not an image at all.
    std::fs::write(&bad, b"#!/bin/sh\necho hello\n").unwrap();
    let err = fails(&b.control, &["restore", "--as", &other, bad_s], 1);
    assert!(err.contains("not a tmem image"), "{err}");
    assert!(
        clients(&b.control).is_empty(),
        "a refused image leaves nothing: {:?}",
        clients(&b.control)
    );

    let out = ok(&b.control, &["restore", file_s]);
    assert!(out.contains(&format!("{} pages", PAGES - 1)), "{out}");
    let err = fails(&b.control, &["restore", file_s], 1);
    assert!(err.contains("already has a client"), "{err}");
    assert_eq!(clients(&b.control), [format!("{LABEL}:false")]);

    // The guest moves: A dies, B takes A's socket path, the guest reconnects on its own.
    a.signal(nix::sys::signal::Signal::SIGKILL);
    a.wait(T);
    std::fs::rename(&b_socket, &a.socket).unwrap();
    wait_for(T, "the guest reattached to B", || {
        (clients(&b.control) == [format!("{LABEL}:true")] && guest.wait_mapped(T)).then_some(())
    });
    let st = guest.status();
    assert!(st.connected, "{st:?}");
    let mut buf: Page = [0; PAGE_SIZE];
    for i in 0..PAGES {
        let got = guest.get(pool, key(i), &mut buf);
        if i == 5 {
            assert_eq!(
                got,
                Outcome::Miss,
                "a page flushed before the save came back"
            );
        } else {
            assert_eq!(got, Outcome::Hit, "page {i} lost");
            assert!(buf == page(i), "page {i} differs");
        }
    }
    let lost: u64 = guest.pools().iter().map(|p| p.lost_pages).sum();
    assert_eq!(
        lost,
        0,
        "the guest counted pages as lost: {:?}",
        guest.pools()
    );
    drop(guest);
    b.signal(nix::sys::signal::Signal::SIGTERM);
    b.wait(T);
}
