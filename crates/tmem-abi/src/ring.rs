//! Layout of the shared request ring (Xen `io/ring.h` style).
//!
//! Ring memory is a 64-byte [`RingHeader`] followed by `n` entry slots of [`ENTRY_SIZE`]
//! bytes, `n` being the largest power of two that fits. A slot holds either a
//! [`RequestEntry`] (frontend → backend) or a [`ResponseEntry`] (backend → frontend), as in
//! Xen's shared rings where a response overwrites the request it answers.
//!
//! These types describe bytes only. Code that reads them from shared memory must copy them
//! out with volatile reads first (tmem-ring does); never form a reference into guest memory.

use core::mem::{offset_of, size_of};

/// Bytes of the shared-ring header.
pub const HEADER_SIZE: usize = 64;
/// Bytes of one ring slot (a request, or a response padded to the same size).
pub const ENTRY_SIZE: usize = 64;
/// Ring protocol version carried in the local hello and in xenstore.
pub const PROTOCOL_VERSION: u32 = 1;

/// The shared-ring header: producer indices and event thresholds.
///
/// Indices are free-running `u32` counters; the slot of index `i` is `i & (n - 1)`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingHeader {
    /// Written by the frontend: requests produced so far.
    pub req_prod: u32,
    /// Written by the backend: notify me when `req_prod` passes this value.
    pub req_event: u32,
    /// Written by the backend: responses produced so far.
    pub rsp_prod: u32,
    /// Written by the frontend: notify me when `rsp_prod` passes this value.
    pub rsp_event: u32,
    pub pad: [u8; 48],
}

impl Default for RingHeader {
    fn default() -> Self {
        RingHeader {
            req_prod: 0,
            req_event: 1,
            rsp_prod: 0,
            rsp_event: 1,
            pad: [0; 48],
        }
    }
}

/// One request as it sits in a ring slot.
///
/// The 40 bytes at offset 16 are a union chosen by `cmd`:
/// * page ops (`PUT/GET/FLUSH_PAGE/FLUSH_OBJECT`): `oid[3]` at 16, `index: u32` at 40,
///   `slot: u32` at 44, then 8 zero bytes;
/// * `NEW_POOL`: `uuid[2]` at 16, `flags: u32` at 32, a zero `u32` at 36, then 16 zero bytes.
///
/// `arg` stores the union as five little-endian `u64` words; use the accessors.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestEntry {
    /// Chosen by the frontend, echoed in the response. Unique among requests in flight.
    pub id: u64,
    pub cmd: u32,
    pub pool_id: i32,
    pub arg: [u64; 5],
    /// Must be zero.
    pub rsvd: [u32; 2],
}

/// One response as it sits in a ring slot (the rest of the 64-byte slot is unused).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponseEntry {
    /// The `id` of the request this answers.
    pub id: u64,
    /// Xen tmem return convention (see [`crate::status`]).
    pub status: i32,
    /// See [`crate::rsp_flags`].
    pub flags: u32,
}

const _: () = {
    assert!(size_of::<RingHeader>() == HEADER_SIZE);
    assert!(offset_of!(RingHeader, req_prod) == 0);
    assert!(offset_of!(RingHeader, req_event) == 4);
    assert!(offset_of!(RingHeader, rsp_prod) == 8);
    assert!(offset_of!(RingHeader, rsp_event) == 12);
    assert!(size_of::<RequestEntry>() == ENTRY_SIZE);
    assert!(offset_of!(RequestEntry, id) == 0);
    assert!(offset_of!(RequestEntry, cmd) == 8);
    assert!(offset_of!(RequestEntry, pool_id) == 12);
    assert!(offset_of!(RequestEntry, arg) == 16);
    assert!(offset_of!(RequestEntry, rsvd) == 56);
    assert!(size_of::<ResponseEntry>() == 16);
    assert!(size_of::<ResponseEntry>() <= ENTRY_SIZE);
    assert!(offset_of!(ResponseEntry, id) == 0);
    assert!(offset_of!(ResponseEntry, status) == 8);
    assert!(offset_of!(ResponseEntry, flags) == 12);
};

/// Byte offsets of the header fields, for code that accesses them atomically in place.
pub mod offsets {
    pub const REQ_PROD: usize = 0;
    pub const REQ_EVENT: usize = 4;
    pub const RSP_PROD: usize = 8;
    pub const RSP_EVENT: usize = 12;
}

impl RequestEntry {
    /// A page-op request (`PUT/GET/FLUSH_PAGE/FLUSH_OBJECT`).
    pub const fn page_op(
        id: u64,
        cmd: u32,
        pool_id: i32,
        oid: [u64; 3],
        index: u32,
        slot: u32,
    ) -> Self {
        RequestEntry {
            id,
            cmd,
            pool_id,
            arg: [
                oid[0],
                oid[1],
                oid[2],
                index as u64 | (slot as u64) << 32,
                0,
            ],
            rsvd: [0; 2],
        }
    }

    /// A `NEW_POOL` request.
    pub const fn new_pool(id: u64, uuid: [u64; 2], flags: u32) -> Self {
        RequestEntry {
            id,
            cmd: crate::cmd::NEW_POOL,
            pool_id: 0,
            arg: [uuid[0], uuid[1], flags as u64, 0, 0],
            rsvd: [0; 2],
        }
    }

    /// A `DESTROY_POOL` request.
    pub const fn destroy_pool(id: u64, pool_id: i32) -> Self {
        RequestEntry {
            id,
            cmd: crate::cmd::DESTROY_POOL,
            pool_id,
            arg: [0; 5],
            rsvd: [0; 2],
        }
    }

    /// Page ops: the object id.
    pub const fn oid(&self) -> [u64; 3] {
        [self.arg[0], self.arg[1], self.arg[2]]
    }
    /// Page ops: the page index within the object.
    pub const fn index(&self) -> u32 {
        self.arg[3] as u32
    }
    /// Page ops: the data-area slot for `PUT`/`GET`.
    pub const fn slot(&self) -> u32 {
        (self.arg[3] >> 32) as u32
    }
    /// `NEW_POOL`: the uuid (`[lo, hi]`).
    pub const fn uuid(&self) -> [u64; 2] {
        [self.arg[0], self.arg[1]]
    }
    /// `NEW_POOL`: the pool flags.
    pub const fn pool_flags(&self) -> u32 {
        self.arg[2] as u32
    }
    /// `NEW_POOL`: the reserved `u32` after the flags.
    pub const fn creat_rsvd(&self) -> u32 {
        (self.arg[2] >> 32) as u32
    }

    /// The entry as the 64 bytes that sit in a ring slot.
    pub fn to_bytes(&self) -> [u8; ENTRY_SIZE] {
        let mut b = [0u8; ENTRY_SIZE];
        b[0..8].copy_from_slice(&self.id.to_le_bytes());
        b[8..12].copy_from_slice(&self.cmd.to_le_bytes());
        b[12..16].copy_from_slice(&self.pool_id.to_le_bytes());
        for (i, w) in self.arg.iter().enumerate() {
            b[16 + 8 * i..24 + 8 * i].copy_from_slice(&w.to_le_bytes());
        }
        b[56..60].copy_from_slice(&self.rsvd[0].to_le_bytes());
        b[60..64].copy_from_slice(&self.rsvd[1].to_le_bytes());
        b
    }

    /// The entry from the 64 bytes of a ring slot (already copied out of shared memory).
    pub fn from_bytes(b: &[u8; ENTRY_SIZE]) -> Self {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        RequestEntry {
            id: u64_at(0),
            cmd: u32_at(8),
            pool_id: u32_at(12) as i32,
            arg: [u64_at(16), u64_at(24), u64_at(32), u64_at(40), u64_at(48)],
            rsvd: [u32_at(56), u32_at(60)],
        }
    }
}

impl ResponseEntry {
    /// The response as its 16 wire bytes (the start of a ring slot).
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.id.to_le_bytes());
        b[8..12].copy_from_slice(&self.status.to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        b
    }

    /// The response from its 16 wire bytes.
    pub fn from_bytes(b: &[u8; 16]) -> Self {
        ResponseEntry {
            id: u64::from_le_bytes(b[0..8].try_into().expect("8 bytes")),
            status: i32::from_le_bytes(b[8..12].try_into().expect("4 bytes")),
            flags: u32::from_le_bytes(b[12..16].try_into().expect("4 bytes")),
        }
    }
}

/// Number of entry slots in a ring of `ring_bytes` bytes: the largest power of two that fits
/// after the header, or `None` if not even one slot fits (or the count exceeds `u32`).
pub const fn ring_entries(ring_bytes: usize) -> Option<u32> {
    if ring_bytes < HEADER_SIZE + ENTRY_SIZE {
        return None;
    }
    let fit = (ring_bytes - HEADER_SIZE) / ENTRY_SIZE;
    // Largest power of two <= fit.
    let n = 1usize << (usize::BITS - 1 - fit.leading_zeros());
    if n > u32::MAX as usize / 2 {
        return None;
    }
    Some(n as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_entries_is_largest_power_of_two_that_fits() {
        assert_eq!(ring_entries(0), None);
        assert_eq!(ring_entries(HEADER_SIZE + ENTRY_SIZE - 1), None);
        assert_eq!(ring_entries(HEADER_SIZE + ENTRY_SIZE), Some(1));
        assert_eq!(ring_entries(HEADER_SIZE + 3 * ENTRY_SIZE), Some(2));
        // One 4 KiB page: (4096 - 64) / 64 = 63 slots fit -> 32.
        assert_eq!(ring_entries(4096), Some(32));
        // Two pages: 127 fit -> 64. Four pages: 255 -> 128.
        assert_eq!(ring_entries(8192), Some(64));
        assert_eq!(ring_entries(16384), Some(128));
    }

    #[test]
    fn request_bytes_round_trip_and_offsets() {
        let r = RequestEntry::page_op(
            0x1122_3344_5566_7788,
            crate::cmd::PUT_PAGE,
            -3,
            [1, 2, 3],
            0xdead_beef,
            7,
        );
        let b = r.to_bytes();
        assert_eq!(RequestEntry::from_bytes(&b), r);
        assert_eq!(&b[40..44], &0xdead_beefu32.to_le_bytes());
        assert_eq!(&b[44..48], &7u32.to_le_bytes());
        assert_eq!(&b[12..16], &(-3i32).to_le_bytes());
        assert_eq!(r.index(), 0xdead_beef);
        assert_eq!(r.slot(), 7);
        assert_eq!(r.oid(), [1, 2, 3]);

        let c = RequestEntry::new_pool(9, [0xa, 0xb], 0x0100_0002);
        let b = c.to_bytes();
        assert_eq!(&b[16..24], &0xau64.to_le_bytes());
        assert_eq!(&b[24..32], &0xbu64.to_le_bytes());
        assert_eq!(&b[32..36], &0x0100_0002u32.to_le_bytes());
        assert_eq!(c.uuid(), [0xa, 0xb]);
        assert_eq!(c.pool_flags(), 0x0100_0002);
        assert_eq!(c.creat_rsvd(), 0);
    }

    #[test]
    fn response_bytes_round_trip() {
        let r = ResponseEntry {
            id: 42,
            status: -1000,
            flags: 1,
        };
        assert_eq!(ResponseEntry::from_bytes(&r.to_bytes()), r);
    }
}
