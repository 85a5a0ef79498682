//! Target `local_hello`: the 104 hello bytes and the number of descriptors that came with them
//! (`tmem_local::parse_hello`, the pure half of the handshake), and the reply a guest library
//! parses.

use crate::input::Input;
use tmem_local::wire::{HelloWire, ReplyWire, HELLO_FDS, HELLO_SIZE, MAX_NAME, REPLY_SIZE};
use tmem_local::{parse_hello, HelloLimits};

pub fn local_hello(data: &[u8]) {
    let mut inp = Input::new(data);
    let buf: [u8; HELLO_SIZE] = inp.array();
    // SCM_RIGHTS carries at most 253 descriptors per message; a hello may span messages.
    let fd_count = usize::from(inp.u8()) + usize::from(inp.u8());
    let limits = HelloLimits {
        max_ring_pages: u32::from(inp.u8()),
        max_data_slots: inp.u32() % (1 << 20),
        ..HelloLimits::default()
    };
    assert_eq!(HelloWire::from_bytes(&buf).to_bytes(), buf);

    match parse_hello(&buf, fd_count, &limits) {
        Ok((h, need)) => {
            assert_eq!(fd_count, HELLO_FDS);
            assert!(h.layout.ring_pages >= 1 && h.layout.ring_pages <= limits.max_ring_pages);
            assert!(h.layout.data_slots <= limits.max_data_slots);
            assert!(h.layout.ring_entries() > 0);
            assert_eq!(Some(need), h.layout.checked_total_bytes());
            assert!(h.name.len() <= MAX_NAME);
            assert!(!h.name.chars().any(char::is_control));
            assert_eq!(h.flags, 0);
        }
        Err(e) => {
            assert!(e.status() < 0, "refusal {e} answers success");
            assert!(!e.message().is_empty());
        }
    }

    let mut reply = [0u8; REPLY_SIZE];
    let rest = inp.rest();
    let n = rest.len().min(REPLY_SIZE);
    reply[..n].copy_from_slice(&rest[..n]);
    if let Some(r) = ReplyWire::from_bytes(&reply) {
        assert_eq!(ReplyWire::from_bytes(&r.to_bytes()), Some(r));
    }
}
