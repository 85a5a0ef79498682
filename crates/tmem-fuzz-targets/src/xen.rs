//! Targets `xen_wire`, `xen_frontend_keys` and `xen_blkfront_keys`: the xenstore wire decoder
//! and client (a watch event's path is chosen by whoever wrote the node, a guest included), and
//! the keys a domU writes into its frontend directory of the `tmem` device and of a swap disk.

use crate::input::Input;
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use tmem_abi::xenstore::key;
use tmem_xen::blkback::{self, blkif_key};
use tmem_xen::wire::{self, check_path, parse_u32, split_nul, Decoder, Message, Perm};
use tmem_xen::xenbus::{self, Limits, MAX_RING_PAGE_ORDER, REFS_PER_DIR_PAGE};
use tmem_xen::{Xs, XsError};

/// Messages decoded per input at most (each needs 16 bytes, so inputs end sooner anyway).
const MAX_MESSAGES: usize = 4096;

pub fn xen_wire(data: &[u8]) {
    let mut inp = Input::new(data);
    // The stream arrives in pieces of a size the input chooses.
    let piece = usize::from(inp.u8()).max(1);
    let stream = inp.rest();
    let mut dec = Decoder::default();
    let mut consumed = 0usize;
    let mut pushed = 0usize;
    let mut chunks = stream.chunks(piece);
    let mut decoded = 0;
    'outer: while decoded < MAX_MESSAGES {
        match dec.next_message() {
            Ok(Some(m)) => {
                decoded += 1;
                consumed += wire::HEADER_LEN + m.payload.len();
                assert!(consumed <= pushed, "decoded more bytes than were pushed");
                check_message(&m);
            }
            Ok(None) => match chunks.next() {
                Some(c) => {
                    dec.push(c);
                    pushed += c.len();
                }
                None => break 'outer,
            },
            Err(e) => {
                let _ = e.to_string();
                break 'outer;
            }
        }
    }
    client_reads(stream);
}

/// What the client and the backend do with a message's payload.
fn check_message(m: &Message) {
    assert!(m.payload.len() <= wire::PAYLOAD_MAX);
    let bytes = m.encode().expect("a decoded message re-encodes");
    assert_eq!(bytes.len(), wire::HEADER_LEN + m.payload.len());
    let Ok(parts) = split_nul(&m.payload) else {
        return;
    };
    for s in &parts {
        if check_path(s).is_ok() {
            assert!(s.len() <= wire::ABS_PATH_MAX);
            assert!(s.starts_with('/') || s.starts_with('@'));
        }
        if let Ok(p) = Perm::parse(s) {
            assert_eq!(&p.format(), s, "permission does not round-trip");
        }
        if let Some(v) = parse_u32(s) {
            assert_eq!(&v.to_string(), s, "u32 parse is not strict");
        }
        if let Some(v) = xenbus::parse_u64(s) {
            assert_eq!(&v.to_string(), s, "u64 parse is not strict");
        }
        let _ = xenbus::parse_state(Some(s.as_bytes()));
    }
}

/// The real client reading the same bytes from a socket: it must queue at most its bound of
/// watch events and end with an error (never hang) when the peer closes.
fn client_reads(stream: &[u8]) {
    let (mine, theirs) = UnixStream::pair().expect("socketpair");
    let mut xs = Xs::from_stream(mine, Path::new("fuzz")).expect("client over a socketpair");
    // A socket buffer holds far more than a fuzz input; on the rare short write, stop there.
    let _ = (&theirs).write_all(stream);
    drop(theirs);
    let mut events = 0usize;
    for _ in 0..64 {
        let r = xs.pump();
        while xs.take_event().is_some() {
            events += 1;
        }
        if r.is_err() {
            break;
        }
    }
    assert!(events <= MAX_MESSAGES);
    assert!(
        xs.pump().is_err(),
        "a closed xenstore connection must stay an error"
    );
}

/// Names of every key a frontend may write, by index (the input picks keys by number).
fn frontend_key_name(i: u8) -> String {
    match i % 8 {
        0 => key::RING_PAGE_ORDER.to_owned(),
        1 => format!("{}{}", key::RING_REF_PREFIX, (i / 8) % 32),
        2 => key::DATA_PAGES.to_owned(),
        3 => format!("{}{}", key::DATA_DIR_REF_PREFIX, (i / 8) % 32),
        4 => key::EVENT_CHANNEL.to_owned(),
        5 => key::INSTANCE.to_owned(),
        6 => key::STATE.to_owned(),
        _ => format!("{}{}", key::RING_REF_PREFIX, i / 8),
    }
}

pub fn xen_frontend_keys(data: &[u8]) {
    let mut inp = Input::new(data);
    let limits = Limits {
        max_ring_page_order: u32::from(inp.u8() % 10),
        max_data_pages: inp.u32() % (64 * REFS_PER_DIR_PAGE),
    };
    // A node whose read fails as a transport error (the xenstore connection broke).
    let failing = inp.u8();
    let count = inp.u8();
    let fe = tmem_abi::xenstore::frontend_path(7);
    let mut tree: HashMap<String, Vec<u8>> = HashMap::new();
    for _ in 0..count {
        let name = frontend_key_name(inp.u8());
        let len = usize::from(inp.u8() % 80);
        tree.insert(format!("{fe}/{name}"), inp.bytes(len).to_vec());
    }
    // Common case made easy: every ring-ref the order needs, written by a well-behaved guest.
    if inp.bool() {
        for i in 0..(1u32 << MAX_RING_PAGE_ORDER) {
            let k = format!("{fe}/{}{i}", key::RING_REF_PREFIX);
            tree.entry(k)
                .or_insert_with(|| (i + 8).to_string().into_bytes());
        }
    }
    let failing_key = format!("{fe}/{}", frontend_key_name(failing));
    let mut reads = 0usize;
    let res = xenbus::parse_frontend_keys(
        &mut |path| {
            reads += 1;
            if failing != 0 && path == failing_key {
                return Err(XsError::Closed);
            }
            Ok(tree.get(path).cloned())
        },
        &fe,
        &limits,
    );
    // Bounded: the order, its ring-refs, data-pages, its directory refs, channel, instance.
    let bound = 1 + (1 << MAX_RING_PAGE_ORDER) + 1 + 64 + 2;
    assert!(reads <= bound, "{reads} reads for one connection");
    match res {
        Ok(k) => {
            assert!(k.ring_page_order <= limits.max_ring_page_order.min(MAX_RING_PAGE_ORDER));
            assert_eq!(k.ring_refs.len(), k.ring_pages() as usize);
            assert!(k.data_pages <= limits.max_data_pages);
            let dirs = k.data_pages.div_ceil(REFS_PER_DIR_PAGE) as usize;
            assert_eq!(k.data_dir_refs.len(), dirs);
            assert_ne!(k.event_channel, 0);
            assert_ne!(k.instance, 0);
            let dir = inp.rest();
            if let Ok(refs) = xenbus::parse_data_dir(dir, k.data_pages) {
                assert_eq!(refs.len(), k.data_pages as usize);
            }
        }
        Err(e) => {
            // What reaches the log is bounded whatever the guest wrote.
            assert!(e.to_string().len() < 512, "unbounded error text: {e}");
        }
    }
    let fe_state = xenbus::parse_state(tree.get(&format!("{fe}/{}", key::STATE)).map(|v| &v[..]));
    for be in 0..=8 {
        let _ = xenbus::backend_step(fe_state, be, failing & 1 == 1);
    }
}

/// Names of every key blkfront may write, by index (the input picks keys by number).
fn blkfront_key_name(i: u8) -> String {
    match i % 8 {
        0 => blkif_key::RING_PAGE_ORDER.to_owned(),
        1 => format!("{}{}", blkif_key::RING_REF, (i / 8) % 32),
        2 => blkif_key::RING_REF.to_owned(),
        3 => blkif_key::EVENT_CHANNEL.to_owned(),
        4 => blkif_key::PROTOCOL.to_owned(),
        5 => blkif_key::MULTI_QUEUE_NUM_QUEUES.to_owned(),
        6 => key::STATE.to_owned(),
        _ => format!("{}{}", blkif_key::RING_REF, i / 8),
    }
}

pub fn xen_blkfront_keys(data: &[u8]) {
    let mut inp = Input::new(data);
    let max_order = u32::from(inp.u8() % 10);
    // A node whose read fails as a transport error (the xenstore connection broke).
    let failing = inp.u8();
    let count = inp.u8();
    let fe = blkback::vbd_frontend_path(7, 51728);
    let mut tree: HashMap<String, Vec<u8>> = HashMap::new();
    for _ in 0..count {
        let name = blkfront_key_name(inp.u8());
        let len = usize::from(inp.u8() % 80);
        tree.insert(format!("{fe}/{name}"), inp.bytes(len).to_vec());
    }
    // Common case made easy: every ring-ref a ring may need, written by a well-behaved guest.
    if inp.bool() {
        for i in 0..(1u32 << MAX_RING_PAGE_ORDER) {
            let k = format!("{fe}/{}{i}", blkif_key::RING_REF);
            tree.entry(k)
                .or_insert_with(|| (i + 8).to_string().into_bytes());
        }
    }
    let node = |k: &str| tree.get(&format!("{fe}/{k}"));
    let failing_key = format!("{fe}/{}", blkfront_key_name(failing));
    let mut reads = 0usize;
    let res = blkback::parse_blkfront_keys(
        &mut |path| {
            reads += 1;
            if failing != 0 && path == failing_key {
                return Err(XsError::Closed);
            }
            Ok(tree.get(path).cloned())
        },
        &fe,
        max_order,
    );
    // Bounded: queues, protocol, order, its ring-refs, channel.
    let bound = 3 + (1 << MAX_RING_PAGE_ORDER) + 1;
    assert!(reads <= bound, "{reads} reads for one connection");
    match res {
        Ok(k) => {
            let n = k.ring_refs.len();
            match node(blkif_key::RING_PAGE_ORDER) {
                None => assert_eq!(n, 1, "no ring-page-order: one ring-ref"),
                Some(_) => {
                    assert!(n.is_power_of_two());
                    assert!(n <= 1 << max_order.min(MAX_RING_PAGE_ORDER));
                }
            }
            assert_ne!(k.event_channel, 0);
            if let Some(p) = node(blkif_key::PROTOCOL) {
                assert_eq!(&p[..], blkback::PROTOCOL_X86_64.as_bytes());
            }
            if let Some(q) = node(blkif_key::MULTI_QUEUE_NUM_QUEUES) {
                assert_eq!(&q[..], b"1");
            }
        }
        Err(e) => {
            // What reaches the log is bounded whatever the guest wrote.
            assert!(e.to_string().len() < 512, "unbounded error text: {e}");
        }
    }
    let _ = xenbus::parse_state(node(key::STATE).map(|v| &v[..]));
}
