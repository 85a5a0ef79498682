//! Target `abi_request`: `tmem_abi::parse_request` on any 64-byte entry and data-area size.

use crate::input::Input;
use tmem_abi::request::parse_pool_flags;
use tmem_abi::{Request, RequestEntry, ResponseEntry, ENTRY_SIZE};

pub fn abi_request(data: &[u8]) {
    let mut inp = Input::new(data);
    let bytes: [u8; ENTRY_SIZE] = inp.array();
    let data_slots = inp.u32();
    let e = RequestEntry::from_bytes(&bytes);
    assert_eq!(e.to_bytes(), bytes, "request entry bytes must round-trip");

    match tmem_abi::parse_request(&e, data_slots) {
        Ok(req) => {
            assert_eq!(e.rsvd, [0, 0], "accepted a request with reserved words set");
            match req {
                Request::Put { slot, .. } | Request::Get { slot, .. } => {
                    assert!(slot < data_slots, "slot {slot} of {data_slots} accepted");
                }
                Request::NewPool { kind, .. } => {
                    assert_eq!(parse_pool_flags(kind.flags()), Ok(kind));
                }
                _ => {}
            }
        }
        Err(refusal) => {
            assert!(refusal.status() < 0, "refusal {refusal:?} answers success");
            let _ = refusal.to_string();
        }
    }

    let rsp: [u8; 16] = bytes[..16].try_into().expect("16 bytes");
    assert_eq!(ResponseEntry::from_bytes(&rsp).to_bytes(), rsp);
}
