//! The pure half of the hello check: the 104 bytes and the number of descriptors that came
//! with them, validated without touching a descriptor or the socket (and so fuzzable).
//! `read_hello` calls it first, then checks the descriptors themselves.

use tmem_ring::Layout;

use crate::wire::{HelloWire, HELLO_FDS, HELLO_MAGIC, HELLO_SIZE, MAX_NAME};
use crate::{Hello, HelloError, HelloLimits};

/// A hello whose bytes and descriptor count passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedHello {
    pub hello: Hello,
    /// Bytes of shared memory the layout needs (the memfd must be at least this large).
    pub need: usize,
}

/// Validate the hello bytes `buf` and the count of descriptors that arrived with them against
/// `limits`, in the order the protocol documents (first failure wins).
pub fn parse_hello(
    buf: &[u8; HELLO_SIZE],
    fd_count: usize,
    limits: &HelloLimits,
) -> Result<ParsedHello, HelloError> {
    let w = HelloWire::from_bytes(buf);
    if w.magic != HELLO_MAGIC {
        return Err(HelloError::BadMagic(w.magic));
    }
    let want = tmem_abi::ring::PROTOCOL_VERSION;
    if w.version != want {
        return Err(HelloError::BadVersion {
            got: w.version,
            want,
        });
    }
    if w.flags != 0 {
        return Err(HelloError::Malformed("unknown flags set"));
    }
    if w.reserved != 0 {
        return Err(HelloError::Malformed("reserved field is not zero"));
    }
    let name_len = w.name_len as usize;
    if name_len > MAX_NAME {
        return Err(HelloError::Malformed("name longer than 64 bytes"));
    }
    if w.name[name_len..].iter().any(|&b| b != 0) {
        return Err(HelloError::Malformed("name padding is not zero"));
    }
    let name = std::str::from_utf8(&w.name[..name_len])
        .map_err(|_| HelloError::Malformed("name is not UTF-8"))?
        .to_owned();
    if name.chars().any(char::is_control) {
        return Err(HelloError::Malformed("name contains control characters"));
    }
    if fd_count != HELLO_FDS {
        return Err(HelloError::FdCount(fd_count));
    }
    if w.ring_pages == 0 || w.ring_pages > limits.max_ring_pages {
        return Err(HelloError::RingPages {
            got: w.ring_pages,
            max: limits.max_ring_pages,
        });
    }
    if w.data_slots > limits.max_data_slots {
        return Err(HelloError::DataSlots {
            got: w.data_slots,
            max: limits.max_data_slots,
        });
    }
    let layout = Layout {
        ring_pages: w.ring_pages,
        data_slots: w.data_slots,
    };
    if layout.ring_entries() == 0 {
        return Err(HelloError::Layout(tmem_ring::RingError::BadLayout(
            layout,
            "ring has no entries",
        )));
    }
    let need =
        layout
            .checked_total_bytes()
            .ok_or(HelloError::Layout(tmem_ring::RingError::BadLayout(
                layout,
                "size overflows",
            )))?;
    let hello = Hello {
        domid: w.domid,
        instance: w.instance,
        layout,
        name,
        flags: w.flags,
    };
    Ok(ParsedHello { hello, need })
}
