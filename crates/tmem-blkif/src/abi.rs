//! The blkif wire format for the x86_64 ABI (`protocol = "x86_64-abi"`), from Xen's
//! `xen/include/public/io/blkif.h` and `io/ring.h`.
//!
//! The `#[repr(C)]` structs below mirror the C structs so that the compiler checks their sizes
//! and field offsets against the numbers the C ABI gives (see the `const` asserts). They are
//! never laid over shared memory: a request is copied out as bytes ([`RawRequest`]) and its
//! fields are decoded from those bytes at the asserted offsets.

use core::mem::{offset_of, size_of};

/// Requests and all sector numbers are in units of 512 bytes, whatever the backing store.
pub const SECTOR_SIZE: usize = 512;
/// A Xen page: ring pages, granted data pages and the disk's storage pages.
pub const PAGE_SIZE: usize = 4096;
/// 512-byte sectors in one 4 KiB page; `first_sect`/`last_sect` are below this.
pub const SECTORS_PER_PAGE: u8 = (PAGE_SIZE / SECTOR_SIZE) as u8;

/// Segments a direct (non-indirect) request can carry.
pub const MAX_SEGMENTS: usize = 11;
/// Indirect pages an indirect request can name (recognised and refused: we do not offer
/// `feature-max-indirect-segments`).
pub const MAX_INDIRECT_PAGES: usize = 8;

/// Bytes of the shared-ring header (`req_prod`, `req_event`, `rsp_prod`, `rsp_event`,
/// then padding to 64 bytes).
pub const RING_HEADER_SIZE: usize = 64;
/// Bytes of one ring slot: the union of a request and a response.
pub const ENTRY_SIZE: usize = size_of::<RequestRw>();
/// Bytes of a response inside a slot (the rest of the slot is left as it is).
pub const RESPONSE_SIZE: usize = size_of::<Response>();

/// Byte offsets of the four ring indices in the header.
pub mod ring_offsets {
    pub const REQ_PROD: usize = 0;
    pub const REQ_EVENT: usize = 4;
    pub const RSP_PROD: usize = 8;
    pub const RSP_EVENT: usize = 12;
}

/// Operation codes (`BLKIF_OP_*`).
pub mod op {
    pub const READ: u8 = 0;
    pub const WRITE: u8 = 1;
    /// Ordered write; refused (we do not offer `feature-barrier`).
    pub const WRITE_BARRIER: u8 = 2;
    pub const FLUSH_DISKCACHE: u8 = 3;
    /// Reserved (SLES device-specific packets); refused.
    pub const RESERVED_1: u8 = 4;
    pub const DISCARD: u8 = 5;
    /// Segments in separate granted pages; refused (no `feature-max-indirect-segments`).
    pub const INDIRECT: u8 = 6;
}

/// Response status codes (`BLKIF_RSP_*`).
pub mod status {
    pub const OKAY: i16 = 0;
    /// The request failed (any malformed field, or an I/O error).
    pub const ERROR: i16 = -1;
    /// The operation is not offered by this backend.
    pub const EOPNOTSUPP: i16 = -2;
}

/// `flag` bit of a discard request: make the discarded data unrecoverable.
pub const DISCARD_SECURE: u8 = 1;

/// `struct blkif_request_segment`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestSegment {
    pub gref: u32,
    pub first_sect: u8,
    pub last_sect: u8,
}

/// `struct blkif_request`: READ, WRITE, WRITE_BARRIER and FLUSH_DISKCACHE.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestRw {
    pub operation: u8,
    pub nr_segments: u8,
    pub handle: u16,
    pub id: u64,
    pub sector_number: u64,
    pub seg: [RequestSegment; MAX_SEGMENTS],
}

/// `struct blkif_request_discard`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestDiscard {
    pub operation: u8,
    pub flag: u8,
    pub handle: u16,
    pub id: u64,
    pub sector_number: u64,
    pub nr_sectors: u64,
}

/// `struct blkif_request_indirect` (x86_64: no trailing pad).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestIndirect {
    pub operation: u8,
    pub indirect_op: u8,
    pub nr_segments: u16,
    pub id: u64,
    pub sector_number: u64,
    pub handle: u16,
    pub indirect_grefs: [u32; MAX_INDIRECT_PAGES],
}

/// `struct blkif_response`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Response {
    pub id: u64,
    pub operation: u8,
    pub status: i16,
}

// The x86_64 C layout, field by field.
const _: () = {
    assert!(size_of::<RequestSegment>() == 8);
    assert!(offset_of!(RequestSegment, gref) == 0);
    assert!(offset_of!(RequestSegment, first_sect) == 4);
    assert!(offset_of!(RequestSegment, last_sect) == 5);

    assert!(size_of::<RequestRw>() == 112);
    assert!(offset_of!(RequestRw, operation) == 0);
    assert!(offset_of!(RequestRw, nr_segments) == 1);
    assert!(offset_of!(RequestRw, handle) == 2);
    assert!(offset_of!(RequestRw, id) == 8);
    assert!(offset_of!(RequestRw, sector_number) == 16);
    assert!(offset_of!(RequestRw, seg) == 24);

    assert!(size_of::<RequestDiscard>() == 32);
    assert!(offset_of!(RequestDiscard, operation) == 0);
    assert!(offset_of!(RequestDiscard, flag) == 1);
    assert!(offset_of!(RequestDiscard, handle) == 2);
    assert!(offset_of!(RequestDiscard, id) == 8);
    assert!(offset_of!(RequestDiscard, sector_number) == 16);
    assert!(offset_of!(RequestDiscard, nr_sectors) == 24);

    assert!(size_of::<RequestIndirect>() == 64);
    assert!(offset_of!(RequestIndirect, operation) == 0);
    assert!(offset_of!(RequestIndirect, indirect_op) == 1);
    assert!(offset_of!(RequestIndirect, nr_segments) == 2);
    assert!(offset_of!(RequestIndirect, id) == 8);
    assert!(offset_of!(RequestIndirect, sector_number) == 16);
    assert!(offset_of!(RequestIndirect, handle) == 24);
    assert!(offset_of!(RequestIndirect, indirect_grefs) == 28);

    assert!(size_of::<Response>() == 16);
    assert!(offset_of!(Response, id) == 0);
    assert!(offset_of!(Response, operation) == 8);
    assert!(offset_of!(Response, status) == 10);

    // Every request kind fits a slot and keeps `operation` and `id` where the parser reads
    // them before it knows the kind.
    assert!(size_of::<RequestDiscard>() <= ENTRY_SIZE);
    assert!(size_of::<RequestIndirect>() <= ENTRY_SIZE);
    assert!(size_of::<Response>() <= ENTRY_SIZE);
    assert!(ENTRY_SIZE.is_multiple_of(8));
    assert!(RING_HEADER_SIZE.is_multiple_of(8));
    // One page holds 32 requests (`__CONST_RING_SIZE(blkif, 4096)`).
    assert!(ring_entries(PAGE_SIZE) == 32);
};

/// Request slots in a ring of `ring_bytes` bytes: the largest power of two of whole slots
/// that fit after the header (`__RING_SIZE` in `io/ring.h`), or 0 if none fits.
pub const fn ring_entries(ring_bytes: usize) -> u32 {
    if ring_bytes < RING_HEADER_SIZE + ENTRY_SIZE {
        return 0;
    }
    let fit = (ring_bytes - RING_HEADER_SIZE) / ENTRY_SIZE;
    if fit > u32::MAX as usize {
        return 1 << 31;
    }
    let fit = fit as u32;
    1 << (31 - fit.leading_zeros())
}

/// One request slot copied out of shared memory. All decoding reads this private copy.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RawRequest(pub [u8; ENTRY_SIZE]);

impl core::fmt::Debug for RawRequest {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "RawRequest(op {}, id {:#x})",
            self.operation(),
            self.id()
        )
    }
}

impl RawRequest {
    /// From the slot's bytes as 8-byte little-endian words (how the ring copies it out).
    pub fn from_words(words: &[u64; ENTRY_SIZE / 8]) -> RawRequest {
        let mut b = [0u8; ENTRY_SIZE];
        for (chunk, w) in b.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        RawRequest(b)
    }

    fn u8_at(&self, off: usize) -> u8 {
        self.0[off]
    }
    fn u16_at(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.0[off], self.0[off + 1]])
    }
    fn u32_at(&self, off: usize) -> u32 {
        let mut w = [0u8; 4];
        w.copy_from_slice(&self.0[off..off + 4]);
        u32::from_le_bytes(w)
    }
    fn u64_at(&self, off: usize) -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&self.0[off..off + 8]);
        u64::from_le_bytes(w)
    }

    /// The operation code, at the same offset in every request kind.
    pub fn operation(&self) -> u8 {
        self.u8_at(offset_of!(RequestRw, operation))
    }

    /// The guest's request id, at the same offset in every request kind.
    pub fn id(&self) -> u64 {
        self.u64_at(offset_of!(RequestRw, id))
    }

    /// `nr_segments` of a read/write/flush request.
    pub fn nr_segments(&self) -> u8 {
        self.u8_at(offset_of!(RequestRw, nr_segments))
    }

    /// The bytes decoded as a read/write/flush request (every field, whatever the op).
    pub fn rw(&self) -> RequestRw {
        let mut seg = [RequestSegment::default(); MAX_SEGMENTS];
        for (i, s) in seg.iter_mut().enumerate() {
            let base = offset_of!(RequestRw, seg) + i * size_of::<RequestSegment>();
            *s = RequestSegment {
                gref: self.u32_at(base + offset_of!(RequestSegment, gref)),
                first_sect: self.u8_at(base + offset_of!(RequestSegment, first_sect)),
                last_sect: self.u8_at(base + offset_of!(RequestSegment, last_sect)),
            };
        }
        RequestRw {
            operation: self.operation(),
            nr_segments: self.nr_segments(),
            handle: self.u16_at(offset_of!(RequestRw, handle)),
            id: self.id(),
            sector_number: self.u64_at(offset_of!(RequestRw, sector_number)),
            seg,
        }
    }

    /// The bytes decoded as a discard request.
    pub fn discard(&self) -> RequestDiscard {
        RequestDiscard {
            operation: self.operation(),
            flag: self.u8_at(offset_of!(RequestDiscard, flag)),
            handle: self.u16_at(offset_of!(RequestDiscard, handle)),
            id: self.id(),
            sector_number: self.u64_at(offset_of!(RequestDiscard, sector_number)),
            nr_sectors: self.u64_at(offset_of!(RequestDiscard, nr_sectors)),
        }
    }
}

/// Little-endian byte writer for building slots (mock frontend, tests, responses).
struct Writer<'a>(&'a mut [u8]);

impl Writer<'_> {
    fn put(&mut self, off: usize, bytes: &[u8]) {
        self.0[off..off + bytes.len()].copy_from_slice(bytes);
    }
}

impl RequestRw {
    /// The slot bytes of this request (padding zeroed).
    pub fn to_raw(&self) -> RawRequest {
        let mut b = [0u8; ENTRY_SIZE];
        let mut w = Writer(&mut b);
        w.put(offset_of!(RequestRw, operation), &[self.operation]);
        w.put(offset_of!(RequestRw, nr_segments), &[self.nr_segments]);
        w.put(offset_of!(RequestRw, handle), &self.handle.to_le_bytes());
        w.put(offset_of!(RequestRw, id), &self.id.to_le_bytes());
        w.put(
            offset_of!(RequestRw, sector_number),
            &self.sector_number.to_le_bytes(),
        );
        for (i, s) in self.seg.iter().enumerate() {
            let base = offset_of!(RequestRw, seg) + i * size_of::<RequestSegment>();
            w.put(
                base + offset_of!(RequestSegment, gref),
                &s.gref.to_le_bytes(),
            );
            w.put(
                base + offset_of!(RequestSegment, first_sect),
                &[s.first_sect],
            );
            w.put(base + offset_of!(RequestSegment, last_sect), &[s.last_sect]);
        }
        RawRequest(b)
    }
}

impl RequestDiscard {
    /// The slot bytes of this request (the rest of the slot zeroed).
    pub fn to_raw(&self) -> RawRequest {
        let mut b = [0u8; ENTRY_SIZE];
        let mut w = Writer(&mut b);
        w.put(offset_of!(RequestDiscard, operation), &[self.operation]);
        w.put(offset_of!(RequestDiscard, flag), &[self.flag]);
        w.put(
            offset_of!(RequestDiscard, handle),
            &self.handle.to_le_bytes(),
        );
        w.put(offset_of!(RequestDiscard, id), &self.id.to_le_bytes());
        w.put(
            offset_of!(RequestDiscard, sector_number),
            &self.sector_number.to_le_bytes(),
        );
        w.put(
            offset_of!(RequestDiscard, nr_sectors),
            &self.nr_sectors.to_le_bytes(),
        );
        RawRequest(b)
    }
}

impl RequestIndirect {
    /// The slot bytes of this request (the rest of the slot zeroed).
    pub fn to_raw(&self) -> RawRequest {
        let mut b = [0u8; ENTRY_SIZE];
        let mut w = Writer(&mut b);
        w.put(offset_of!(RequestIndirect, operation), &[self.operation]);
        w.put(
            offset_of!(RequestIndirect, indirect_op),
            &[self.indirect_op],
        );
        w.put(
            offset_of!(RequestIndirect, nr_segments),
            &self.nr_segments.to_le_bytes(),
        );
        w.put(offset_of!(RequestIndirect, id), &self.id.to_le_bytes());
        w.put(
            offset_of!(RequestIndirect, sector_number),
            &self.sector_number.to_le_bytes(),
        );
        w.put(
            offset_of!(RequestIndirect, handle),
            &self.handle.to_le_bytes(),
        );
        for (i, g) in self.indirect_grefs.iter().enumerate() {
            w.put(
                offset_of!(RequestIndirect, indirect_grefs) + 4 * i,
                &g.to_le_bytes(),
            );
        }
        RawRequest(b)
    }
}

impl Response {
    /// The 16 bytes of this response (padding zeroed).
    pub fn to_bytes(&self) -> [u8; RESPONSE_SIZE] {
        let mut b = [0u8; RESPONSE_SIZE];
        let mut w = Writer(&mut b);
        w.put(offset_of!(Response, id), &self.id.to_le_bytes());
        w.put(offset_of!(Response, operation), &[self.operation]);
        w.put(offset_of!(Response, status), &self.status.to_le_bytes());
        b
    }

    /// A response from its 16 bytes.
    pub fn from_bytes(b: &[u8; RESPONSE_SIZE]) -> Response {
        let mut id = [0u8; 8];
        id.copy_from_slice(&b[..8]);
        let st = offset_of!(Response, status);
        Response {
            id: u64::from_le_bytes(id),
            operation: b[offset_of!(Response, operation)],
            status: i16::from_le_bytes([b[st], b[st + 1]]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_entries_follow_ring_h() {
        assert_eq!(ring_entries(0), 0);
        assert_eq!(ring_entries(RING_HEADER_SIZE + ENTRY_SIZE - 1), 0);
        assert_eq!(ring_entries(RING_HEADER_SIZE + ENTRY_SIZE), 1);
        assert_eq!(ring_entries(PAGE_SIZE), 32);
        assert_eq!(ring_entries(2 * PAGE_SIZE), 64);
        assert_eq!(ring_entries(16 * PAGE_SIZE), 512);
    }

    #[test]
    fn rw_round_trips_through_bytes() {
        let mut req = RequestRw {
            operation: op::WRITE,
            nr_segments: 3,
            handle: 0xbeef,
            id: 0x0102_0304_0506_0708,
            sector_number: 0x1122_3344_5566_7788,
            ..Default::default()
        };
        for (i, s) in req.seg.iter_mut().enumerate() {
            *s = RequestSegment {
                gref: 0xa000_0000 + i as u32,
                first_sect: i as u8,
                last_sect: 7,
            };
        }
        let raw = req.to_raw();
        assert_eq!(raw.rw(), req);
        // Spot-check the C offsets in the bytes themselves.
        assert_eq!(raw.0[0], op::WRITE);
        assert_eq!(raw.0[1], 3);
        assert_eq!(&raw.0[8..16], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&raw.0[24..28], &0xa000_0000u32.to_le_bytes());
        assert_eq!(raw.0[24 + 8 + 4], 1, "first_sect of seg[1]");
    }

    #[test]
    fn discard_round_trips_through_bytes() {
        let req = RequestDiscard {
            operation: op::DISCARD,
            flag: DISCARD_SECURE,
            handle: 7,
            id: 42,
            sector_number: 4096,
            nr_sectors: 1 << 40,
        };
        let raw = req.to_raw();
        assert_eq!(raw.discard(), req);
        assert_eq!(&raw.0[24..32], &(1u64 << 40).to_le_bytes());
    }

    #[test]
    fn response_round_trips_through_bytes() {
        let rsp = Response {
            id: u64::MAX - 1,
            operation: op::DISCARD,
            status: status::EOPNOTSUPP,
        };
        let b = rsp.to_bytes();
        assert_eq!(Response::from_bytes(&b), rsp);
        assert_eq!(&b[10..12], &(-2i16).to_le_bytes());
    }

    #[test]
    fn from_words_is_little_endian_bytes() {
        let mut words = [0u64; ENTRY_SIZE / 8];
        words[1] = 0xdead_beef;
        let raw = RawRequest::from_words(&words);
        assert_eq!(raw.id(), 0xdead_beef);
    }
}
