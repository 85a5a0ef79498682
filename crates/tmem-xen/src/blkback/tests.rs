use super::*;
use crate::fake::FakeXenstore;
use crate::wire::ty;

#[test]
fn device_names_and_numbers() {
    for (name, n) in [
        ("xvda", 51712),
        ("xvdb", 51728),
        ("xvdp", 51952),
        ("xvdq", (1 << 28) | (16 << 8)),
        ("xvdz", 268441856),
        ("xvdaa", (1 << 28) | (26 << 8)),
        ("xvdzz", (1 << 28) | (701 << 8)),
        ("xvdaaa", (1 << 28) | (702 << 8)),
    ] {
        assert_eq!(device_number(name), Ok(n), "{name}");
        assert_eq!(device_name(n).as_deref(), Some(name), "{n}");
        assert_eq!(device_number(&n.to_string()), Ok(n), "{n} as a number");
    }
    // Every disk a guest can number round-trips; the next one is refused.
    for i in 0..MAX_DISKS {
        let name = format!("xvd{}", disk_letters(i));
        let n = device_number(&name).unwrap();
        assert_eq!(disk_index(n), Some(i));
        assert_eq!(device_name(n), Some(name));
    }
    let past = format!("xvd{}", disk_letters(MAX_DISKS));
    assert_eq!(
        device_number(&past),
        Err(DevNameError::TooLarge(past.clone()))
    );
    let e = device_number("xvdaaaa").unwrap_err();
    assert!(matches!(e, DevNameError::TooLarge(_)), "{e}");
    assert!(e.to_string().contains(&last_disk_name()), "{e}");

    assert_eq!(device_number(""), Err(DevNameError::Empty));
    for p in ["xvda1", "xvdaa12", "xvdp0"] {
        assert_eq!(device_number(p), Err(DevNameError::Partition(p.into())));
    }
    for bad in [
        "xvd", "sda", "hda", "xvdA", "xvd-a", " xvda", "xvda ", "xvda1b", "xvd1", "vda", "xvdé",
    ] {
        assert_eq!(
            device_number(bad),
            Err(DevNameError::NotXvd(bad.into())),
            "{bad:?}"
        );
    }
    // Numbers: partitions, other majors, a disk in its other form, too big, not a u32.
    for bad in [
        "0",
        "51713",      // xvda1
        "51720",      // not a multiple of 16
        "768",        // hda (major 3)
        "52112",      // major 203
        "268435456",  // xvda in the extended form: xvda is 51712
        "268439553",  // xvdq partition 1
        "269484032",  // disk 4096
        "805310464",  // bits above the extended flag
        "4294967296", // not a u32
        "051712",     // leading zero
    ] {
        assert_eq!(
            device_number(bad),
            Err(DevNameError::BadNumber(bad.into())),
            "{bad}"
        );
    }
    assert!(
        device_number(&"a".repeat(100))
            .unwrap_err()
            .to_string()
            .len()
            < 200
    );
}

fn offer(domid: u32, devid: u32) -> VbdOffer {
    VbdOffer {
        domid,
        devid,
        dev_name: device_name(devid).unwrap(),
        sectors: 2 << 21,
        max_ring_page_order: 2,
    }
}

/// Requests that changed something, with their paths, from the fake's log.
fn changes(fx: &FakeXenstore, from: usize) -> Vec<(u32, String)> {
    fx.log()[from..]
        .iter()
        .filter(|(t, _)| [ty::WRITE, ty::MKDIR, ty::RM, ty::SET_PERMS].contains(t))
        .cloned()
        .collect()
}

#[test]
fn offer_writes_both_directories_in_order_with_their_permissions() {
    let fx = FakeXenstore::new();
    fx.introduce(5, "guest");
    let (mut xs, _j) = fx.connect();
    let o = offer(5, 51728);
    let (be, fe) = (vbd_backend_path(5, 51728), vbd_frontend_path(5, 51728));
    assert_eq!(be, "/local/domain/0/backend/tmemblk/5/51728");
    assert_eq!(fe, "/local/domain/5/device/vbd/51728");
    let start = fx.log().len();
    offer_vbd(&mut xs, &o).unwrap();

    for (k, v) in [
        ("frontend", fe.as_str()),
        ("frontend-id", "5"),
        ("online", "1"),
        ("removable", "0"),
        ("bootable", "0"),
        ("dev", "xvdb"),
        ("type", "tmem"),
        ("mode", "w"),
        ("device-type", "disk"),
        ("sectors", "4194304"),
        ("sector-size", "512"),
        ("physical-sector-size", "4096"),
        ("info", "0"),
        ("feature-flush-cache", "1"),
        ("feature-discard", "1"),
        ("discard-granularity", "4096"),
        ("discard-alignment", "0"),
        ("discard-secure", "0"),
        ("feature-persistent", "0"),
        ("max-ring-page-order", "2"),
        ("state", "2"),
    ] {
        assert_eq!(fx.read(&format!("{be}/{k}")).as_deref(), Some(v), "{k}");
    }
    for (k, v) in [
        ("backend", be.as_str()),
        ("backend-id", "0"),
        ("virtual-device", "51728"),
        ("device-type", "disk"),
        ("state", "1"),
    ] {
        assert_eq!(fx.read(&format!("{fe}/{k}")).as_deref(), Some(v), "{k}");
        // Written after the chmod: the guest owns each key (it must write `state`).
        assert_eq!(fx.perms(&format!("{fe}/{k}")).unwrap(), ["n5", "r0"], "{k}");
    }
    assert_eq!(fx.perms(&be).unwrap(), ["n0", "r5"]);
    assert_eq!(fx.perms(&format!("{be}/state")).unwrap(), ["n0", "r5"]);
    assert_eq!(
        fx.perms("/local/domain/0/backend/tmemblk/5").unwrap(),
        ["n0", "r5"]
    );
    assert_eq!(fx.perms(&fe).unwrap(), ["n5", "r0"]);
    // Nothing outside this domain's entries became readable to it.
    assert_eq!(fx.perms("/local/domain/0/backend/tmemblk").unwrap(), ["n0"]);

    // The order of the writes.
    let log = changes(&fx, start);
    let pos = |t: u32, p: &str| {
        log.iter()
            .position(|(lt, lp)| *lt == t && lp == p)
            .unwrap_or_else(|| panic!("no {t} of {p} in {log:?}"))
    };
    let under = |dir: &str| -> Vec<usize> {
        log.iter()
            .enumerate()
            .filter(|(_, (_, p))| p.starts_with(&format!("{dir}/")))
            .map(|(i, _)| i)
            .collect()
    };
    let be_keys = under(&be);
    let fe_keys = under(&fe);
    assert_eq!(be_keys.len(), 21);
    assert_eq!(fe_keys.len(), 5);
    assert_eq!(
        *be_keys.last().unwrap(),
        pos(ty::WRITE, &format!("{be}/state")),
        "backend state last"
    );
    assert!(pos(ty::SET_PERMS, &be) < be_keys[0]);
    assert!(
        *be_keys.last().unwrap() < pos(ty::MKDIR, &fe),
        "backend first"
    );
    assert!(pos(ty::MKDIR, &fe) < pos(ty::SET_PERMS, &fe));
    assert!(pos(ty::SET_PERMS, &fe) < fe_keys[0], "chmod before keys");
    assert_eq!(
        log.last().unwrap(),
        &(ty::WRITE, format!("{fe}/state")),
        "frontend state=1 is the last write"
    );
    // All in one transaction.
    let l = fx.log();
    assert_eq!(
        l[start..]
            .iter()
            .filter(|(t, _)| *t == ty::TRANSACTION_END)
            .count(),
        1
    );

    // A second offer of the same device starts from clean directories.
    fx.write(&format!("{be}/stale"), "x");
    fx.write(&format!("{fe}/ring-ref"), "8");
    fx.write(&format!("{fe}/state"), "6");
    offer_vbd(&mut xs, &o).unwrap();
    assert!(!fx.exists(&format!("{be}/stale")));
    assert!(!fx.exists(&format!("{fe}/ring-ref")));
    assert_eq!(vbd_frontend_state(&mut xs, 5, 51728).unwrap(), Some(1));
    assert_eq!(vbd_backend_state(&mut xs, 5, 51728).unwrap(), Some(2));
}

#[test]
fn a_device_of_the_domain_config_is_never_taken() {
    let fx = FakeXenstore::new();
    let (mut xs, _j) = fx.connect();
    let fe = vbd_frontend_path(6, 51712);
    assert_eq!(vbd_in_use(&mut xs, 6, 51712).unwrap(), None);
    // libxl's disk xvda.
    let libxl = "/local/domain/0/backend/vbd/6/51712";
    fx.write(&format!("{fe}/backend"), libxl);
    fx.write(&format!("{fe}/state"), "4");
    assert_eq!(
        vbd_in_use(&mut xs, 6, 51712).unwrap().as_deref(),
        Some(libxl)
    );
    let start = fx.log().len();
    let e = offer_vbd(&mut xs, &offer(6, 51712)).unwrap_err();
    assert!(
        matches!(&e, OfferError::InUse { domid: 6, devid: 51712, backend } if backend == libxl),
        "{e}"
    );
    assert!(e.to_string().contains("pick another device"), "{e}");
    assert_eq!(changes(&fx, start), [], "nothing written");
    assert_eq!(fx.read(&format!("{fe}/backend")).as_deref(), Some(libxl));
    assert!(!fx.exists(&vbd_backend_path(6, 51712)));
    // Removing "our" disk there leaves libxl's frontend alone.
    remove_vbd(&mut xs, 6, 51712).unwrap();
    assert_eq!(fx.read(&format!("{fe}/state")).as_deref(), Some("4"));

    // A frontend directory with no backend key, or with a hostile one, is not ours either.
    let fe2 = vbd_frontend_path(6, 51728);
    fx.write(&format!("{fe2}/junk"), "x");
    let b = vbd_in_use(&mut xs, 6, 51728).unwrap().unwrap();
    assert!(b.contains("no backend key"), "{b}");
    fx.write(
        &format!("{fe2}/backend"),
        &format!("\n{}", "x".repeat(4000)),
    );
    let b = vbd_in_use(&mut xs, 6, 51728).unwrap().unwrap();
    assert!(b.len() <= 128 && !b.contains('\n'), "{b:?}");
    // Our own path for another device is not ours for this one.
    fx.write(&format!("{fe2}/backend"), &vbd_backend_path(6, 51744));
    assert!(vbd_in_use(&mut xs, 6, 51728).unwrap().is_some());
    // Ours (left by an earlier tmemd): free to offer again.
    fx.write(&format!("{fe2}/backend"), &vbd_backend_path(6, 51728));
    assert_eq!(vbd_in_use(&mut xs, 6, 51728).unwrap(), None);
    offer_vbd(&mut xs, &offer(6, 51728)).unwrap();
    assert!(!fx.exists(&format!("{fe2}/junk")));
}

fn good_single(fx: &FakeXenstore, fe: &str) {
    fx.rm(fe);
    for (k, v) in [
        ("ring-ref", "8"),
        ("event-channel", "15"),
        ("protocol", "x86_64-abi"),
        ("feature-persistent", "1"),
        ("state", "3"),
    ] {
        fx.write(&format!("{fe}/{k}"), v);
    }
}

fn good_multi(fx: &FakeXenstore, fe: &str) {
    fx.rm(fe);
    for (k, v) in [
        ("ring-page-order", "2"),
        ("ring-ref0", "20"),
        ("ring-ref1", "21"),
        ("ring-ref2", "22"),
        ("ring-ref3", "23"),
        ("event-channel", "16"),
        ("multi-queue-num-queues", "1"),
    ] {
        fx.write(&format!("{fe}/{k}"), v);
    }
}

#[test]
fn blkfront_keys_are_parsed_strictly() {
    let fx = FakeXenstore::new();
    let (mut xs, _j) = fx.connect();
    let fe = vbd_frontend_path(7, 51728);
    let mut read = |max| read_blkfront_keys(&mut xs, 7, 51728, max);

    good_single(&fx, &fe);
    assert_eq!(
        read(0).unwrap(),
        BlkfrontKeys {
            ring_refs: vec![8],
            event_channel: 15
        }
    );
    good_multi(&fx, &fe);
    assert_eq!(
        read(2).unwrap(),
        BlkfrontKeys {
            ring_refs: vec![20, 21, 22, 23],
            event_channel: 16
        }
    );
    // Order 0 written explicitly: one page in ring-ref0 (blkif.h), not ring-ref.
    good_multi(&fx, &fe);
    fx.write(&format!("{fe}/ring-page-order"), "0");
    assert_eq!(read(0).unwrap().ring_refs, [20]);
    // The protocol key may be absent (native = x86_64 here).
    good_single(&fx, &fe);
    fx.rm(&format!("{fe}/protocol"));
    assert_eq!(read(0).unwrap().ring_refs, [8]);

    let long = "1".repeat(65);
    type Setup = fn(&FakeXenstore, &str);
    let cases: &[(Setup, u32, &str, Option<&str>, &str)] = &[
        // (starting keys, our max order, key, value or removed, expected text)
        (good_single, 0, "ring-ref", None, "ring-ref is missing"),
        (good_single, 0, "ring-ref", Some("0x8"), "not a decimal u32"),
        (good_single, 0, "ring-ref", Some("-8"), "not a decimal u32"),
        (
            good_single,
            0,
            "ring-ref",
            Some("4294967296"),
            "not a decimal u32",
        ),
        (good_single, 0, "ring-ref", Some(""), "not a decimal u32"),
        (
            good_single,
            0,
            "ring-ref",
            Some(&long),
            "longer than 64 bytes",
        ),
        (
            good_single,
            0,
            "event-channel",
            None,
            "event-channel is missing",
        ),
        (good_single, 0, "event-channel", Some("0"), "port 0"),
        (
            good_single,
            0,
            "event-channel",
            Some("15 "),
            "not a decimal u32",
        ),
        (
            good_single,
            0,
            "protocol",
            Some("x86_32-abi"),
            "x86_64-abi request layout",
        ),
        (
            good_single,
            0,
            "protocol",
            Some("native"),
            "x86_64-abi request layout",
        ),
        (
            good_single,
            0,
            "protocol",
            Some("x86_64-abi\0"),
            "x86_64-abi request layout",
        ),
        (
            good_single,
            0,
            "protocol",
            Some(""),
            "x86_64-abi request layout",
        ),
        (
            good_single,
            0,
            "multi-queue-num-queues",
            Some("2"),
            "multi-queue is not offered",
        ),
        (
            good_single,
            0,
            "multi-queue-num-queues",
            Some("0"),
            "multi-queue is not offered",
        ),
        (
            good_single,
            0,
            "multi-queue-num-queues",
            Some("01"),
            "not a decimal u32",
        ),
        (
            good_single,
            0,
            "ring-page-order",
            Some("1"),
            "above max-ring-page-order",
        ),
        (
            good_multi,
            2,
            "ring-page-order",
            Some("3"),
            "above max-ring-page-order",
        ),
        (
            good_multi,
            99,
            "ring-page-order",
            Some("9"),
            "above max-ring-page-order",
        ),
        (
            good_multi,
            2,
            "ring-page-order",
            Some("4294967295"),
            "above max-ring-page-order",
        ),
        (
            good_multi,
            2,
            "ring-page-order",
            Some("two"),
            "not a decimal u32",
        ),
        (good_multi, 2, "ring-ref3", None, "ring-ref3 is missing"),
        (good_multi, 2, "ring-ref0", Some("020"), "not a decimal u32"),
    ];
    for (setup, max, k, v, what) in cases {
        setup(&fx, &fe);
        match v {
            Some(v) => fx.write(&format!("{fe}/{k}"), v),
            None => fx.rm(&format!("{fe}/{k}")),
        }
        let e = read(*max).unwrap_err();
        assert!(e.to_string().contains(what), "{k}={v:?}: {e}");
        // What a guest wrote is cut short in the message.
        assert!(e.to_string().len() < 200, "{e}");
    }
    // Non-UTF-8 bytes (the fake cannot store them: read through the parser's node reader).
    let mut node = |p: &str| -> Result<Option<Vec<u8>>, XsError> {
        Ok(match p.rsplit('/').next() {
            Some("ring-ref") => Some(b"\xff\xfe".to_vec()),
            Some("event-channel") => Some(b"3".to_vec()),
            _ => None,
        })
    };
    let e = parse_blkfront_keys(&mut node, &fe, 0).unwrap_err();
    assert!(e.to_string().contains("not UTF-8"), "{e}");
}

#[test]
fn states_errors_and_watches() {
    let fx = FakeXenstore::new();
    let (mut xs, _j) = fx.connect();
    offer_vbd(&mut xs, &offer(8, 51712)).unwrap();
    let (be, fe) = (vbd_backend_path(8, 51712), vbd_frontend_path(8, 51712));
    set_vbd_state(&mut xs, 8, 51712, state::CONNECTED).unwrap();
    assert_eq!(fx.read(&format!("{be}/state")).as_deref(), Some("4"));
    assert_eq!(vbd_backend_state(&mut xs, 8, 51712).unwrap(), Some(4));
    for (v, want) in [("3", Some(3)), ("9", None), ("03", None), ("x", None)] {
        fx.write(&format!("{fe}/state"), v);
        assert_eq!(vbd_frontend_state(&mut xs, 8, 51712).unwrap(), want, "{v}");
    }
    fx.rm(&format!("{fe}/state"));
    assert_eq!(vbd_frontend_state(&mut xs, 8, 51712).unwrap(), None);

    set_vbd_error(&mut xs, 8, 51712, &"e".repeat(500)).unwrap();
    assert_eq!(
        fx.read(&format!("{be}/error")).unwrap().len(),
        MAX_ERROR_LEN
    );
    clear_vbd_error(&mut xs, 8, 51712).unwrap();
    clear_vbd_error(&mut xs, 8, 51712).unwrap();
    assert!(!fx.exists(&format!("{be}/error")));

    watch_vbd_frontend(&mut xs, 8, 51712, "vbd-8-51712").unwrap();
    fx.write(&format!("{fe}/state"), "3");
    fx.write(&format!("{fe}/ring-ref"), "9"); // not the state: no event
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut got = Vec::new();
    while got.len() < 2 {
        assert!(std::time::Instant::now() < deadline, "events: {got:?}");
        crate::sys::poll_fd(
            xs.as_raw_fd(),
            libc::POLLIN,
            Some(std::time::Duration::from_millis(50)),
        )
        .unwrap();
        xs.pump().unwrap();
        while let Some(e) = xs.take_event() {
            got.push((e.path, e.token));
        }
    }
    let want = (format!("{fe}/state"), "vbd-8-51712".to_string());
    // The first fires when the watch is set, the second is the guest's write.
    assert_eq!(got, [want.clone(), want]);
    unwatch_vbd_frontend(&mut xs, 8, 51712, "vbd-8-51712").unwrap();
    unwatch_vbd_frontend(&mut xs, 8, 51712, "vbd-8-51712").unwrap();
    assert_eq!(fx.watch_count(), 0);
}

#[test]
fn list_and_remove() {
    let fx = FakeXenstore::new();
    let (mut xs, _j) = fx.connect();
    assert_eq!(list_vbds(&mut xs).unwrap(), []);
    for (d, v) in [(9, 51728), (9, 51712), (3, 268441856)] {
        offer_vbd(&mut xs, &offer(d, v)).unwrap();
    }
    fx.write(&format!("{}/junk/1/state", backend_root()), "1");
    fx.write(&format!("{}/9/junk/state", backend_root()), "1");
    assert_eq!(
        list_vbds(&mut xs).unwrap(),
        [(3, 268441856), (9, 51712), (9, 51728)]
    );
    fx.rm(&format!("{}/9/junk", backend_root()));

    // Ours: both directories go; the domain's directory stays while it holds another disk.
    remove_vbd(&mut xs, 9, 51728).unwrap();
    assert!(!fx.exists(&vbd_frontend_path(9, 51728)));
    assert!(!fx.exists(&vbd_backend_path(9, 51728)));
    assert!(fx.exists(&vbd_frontend_path(9, 51712)));
    assert_eq!(list_vbds(&mut xs).unwrap(), [(3, 268441856), (9, 51712)]);
    // The last disk of a domain takes the domain's directory with it.
    remove_vbd(&mut xs, 9, 51712).unwrap();
    assert!(!fx.exists(&format!("{}/9", backend_root())));
    assert_eq!(list_vbds(&mut xs).unwrap(), [(3, 268441856)]);
    // Already gone (the domain died and its home went with it): fine.
    fx.release(3);
    remove_vbd(&mut xs, 3, 268441856).unwrap();
    remove_vbd(&mut xs, 3, 268441856).unwrap();
    assert_eq!(list_vbds(&mut xs).unwrap(), []);
    assert!(fx.exists(&backend_root()));
}
