//! One test per parser rule, then a property: no byte pattern panics the parser, and what it
//! accepts keeps every invariant the data path relies on.

use super::*;
use crate::abi::{RequestIndirect, RequestRw, RequestSegment};
use crate::mock::{full_page, rw_request};
use proptest::prelude::*;

const DISK: u64 = 1 << 20; // 512 MiB

fn disk() -> DiskParams {
    DiskParams::swap_disk(DISK)
}

fn seg(gref: u32, first_sect: u8, last_sect: u8) -> Segment {
    Segment {
        gref,
        first_sect,
        last_sect,
    }
}

fn parse_rw(operation: u8, sector: u64, segs: &[Segment]) -> Result<BlkRequest, Refusal> {
    parse_request(&rw_request(operation, 9, sector, segs), &disk())
}

fn discard(sector: u64, nr_sectors: u64, flag: u8) -> RawRequest {
    crate::abi::RequestDiscard {
        operation: op::DISCARD,
        flag,
        handle: 0,
        id: 1,
        sector_number: sector,
        nr_sectors,
    }
    .to_raw()
}

fn transfer_of(r: Result<BlkRequest, Refusal>) -> Transfer {
    match r {
        Ok(BlkRequest::Read(t)) | Ok(BlkRequest::Write { io: t, .. }) => t,
        other => panic!("expected a transfer, got {other:?}"),
    }
}

// --- every request kind, accepted ---

#[test]
fn read_is_accepted_with_its_segments_and_sector() {
    let segs = [full_page(5), seg(6, 0, 3)];
    let r = parse_rw(op::READ, 800, &segs);
    let Ok(BlkRequest::Read(t)) = r else {
        panic!("expected Read, got {r:?}");
    };
    assert_eq!(t.sector(), 800);
    assert_eq!(t.segments(), &segs);
    assert_eq!(t.sectors(), 12);
}

#[test]
fn write_is_accepted_without_flush() {
    let r = parse_rw(op::WRITE, 0, &[full_page(1)]);
    assert!(
        matches!(r, Ok(BlkRequest::Write { flush: false, .. })),
        "{r:?}"
    );
}

#[test]
fn flush_without_segments_is_a_pure_flush() {
    assert_eq!(parse_rw(op::FLUSH_DISKCACHE, 0, &[]), Ok(BlkRequest::Flush));
}

#[test]
fn flush_with_segments_is_a_durable_write() {
    // Linux blkfront sends a FUA write as FLUSH_DISKCACHE carrying data.
    let r = parse_rw(op::FLUSH_DISKCACHE, 16, &[full_page(3)]);
    let Ok(BlkRequest::Write { io, flush: true }) = r else {
        panic!("expected a flushing write, got {r:?}");
    };
    assert_eq!((io.sector(), io.sectors()), (16, 8));
}

#[test]
fn discard_is_accepted_with_its_range() {
    let r = parse_request(&discard(8, 4096, 0), &disk());
    assert_eq!(
        r,
        Ok(BlkRequest::Discard {
            sector: 8,
            nr_sectors: 4096,
            secure: false
        })
    );
}

#[test]
fn secure_discard_is_accepted_when_offered() {
    let d = DiskParams {
        discard_secure: true,
        ..disk()
    };
    let r = parse_request(&discard(0, 8, crate::abi::DISCARD_SECURE), &d);
    assert!(
        matches!(r, Ok(BlkRequest::Discard { secure: true, .. })),
        "{r:?}"
    );
}

#[test]
fn empty_discard_is_a_no_op_not_an_error() {
    let r = parse_request(&discard(DISK, 0, 0), &disk());
    assert!(
        matches!(r, Ok(BlkRequest::Discard { nr_sectors: 0, .. })),
        "{r:?}"
    );
}

#[test]
fn eleven_segments_are_accepted() {
    let segs: Vec<Segment> = (0..11).map(full_page).collect();
    assert_eq!(transfer_of(parse_rw(op::WRITE, 0, &segs)).sectors(), 88);
}

// --- segment counts ---

#[test]
fn read_without_segments_is_refused() {
    assert_eq!(parse_rw(op::READ, 0, &[]), Err(Refusal::SegmentCount(0)));
}

#[test]
fn write_without_segments_is_refused() {
    assert_eq!(parse_rw(op::WRITE, 0, &[]), Err(Refusal::SegmentCount(0)));
}

#[test]
fn twelve_segments_are_refused() {
    let mut req = RequestRw {
        operation: op::READ,
        nr_segments: 12,
        ..Default::default()
    };
    req.seg = [RequestSegment {
        gref: 1,
        first_sect: 0,
        last_sect: 7,
    }; 11];
    let r = parse_request(&req.to_raw(), &disk());
    assert_eq!(r, Err(Refusal::SegmentCount(12)));
    assert_eq!(r.unwrap_err().status(), status::ERROR);
}

#[test]
fn flush_with_too_many_segments_is_refused() {
    let raw = RequestRw {
        operation: op::FLUSH_DISKCACHE,
        nr_segments: 255,
        ..Default::default()
    }
    .to_raw();
    assert_eq!(
        parse_request(&raw, &disk()),
        Err(Refusal::SegmentCount(255))
    );
}

// --- segment sectors ---

#[test]
fn first_sect_after_last_sect_is_refused() {
    let r = parse_rw(op::READ, 0, &[full_page(1), seg(2, 5, 4)]);
    assert_eq!(
        r,
        Err(Refusal::SegmentSectors {
            index: 1,
            first_sect: 5,
            last_sect: 4
        })
    );
}

#[test]
fn last_sect_past_the_page_is_refused() {
    let r = parse_rw(op::WRITE, 0, &[seg(2, 0, 8)]);
    assert!(
        matches!(r, Err(Refusal::SegmentSectors { index: 0, .. })),
        "{r:?}"
    );
    let r = parse_rw(op::WRITE, 0, &[seg(2, 200, 255)]);
    assert!(matches!(r, Err(Refusal::SegmentSectors { .. })), "{r:?}");
}

#[test]
fn unused_segment_slots_are_ignored() {
    // Garbage after nr_segments is never read as a segment.
    let mut req = RequestRw {
        operation: op::READ,
        nr_segments: 1,
        ..Default::default()
    };
    req.seg = [RequestSegment {
        gref: 0xdead,
        first_sect: 9,
        last_sect: 2,
    }; 11];
    req.seg[0] = RequestSegment {
        gref: 1,
        first_sect: 0,
        last_sect: 7,
    };
    let t = transfer_of(parse_request(&req.to_raw(), &disk()));
    assert_eq!(t.segments().len(), 1);
}

#[test]
fn single_sector_segments_are_accepted_anywhere_in_the_page() {
    for s in 0..8 {
        let t = transfer_of(parse_rw(op::READ, 0, &[seg(1, s, s)]));
        assert_eq!(t.sectors(), 1);
    }
}

// --- sector ranges ---

#[test]
fn transfer_ending_at_the_disk_end_is_accepted() {
    let t = transfer_of(parse_rw(op::READ, DISK - 8, &[full_page(1)]));
    assert_eq!(t.sector() + t.sectors(), DISK);
}

#[test]
fn transfer_past_the_disk_end_is_refused() {
    let r = parse_rw(op::WRITE, DISK - 7, &[full_page(1)]);
    assert_eq!(
        r,
        Err(Refusal::BeyondDisk {
            sector: DISK - 7,
            sectors: 8,
            disk_sectors: DISK
        })
    );
}

#[test]
fn transfer_whose_end_overflows_is_refused() {
    let r = parse_rw(op::READ, u64::MAX - 3, &[full_page(1)]);
    assert_eq!(
        r,
        Err(Refusal::SectorOverflow {
            sector: u64::MAX - 3,
            sectors: 8
        })
    );
}

#[test]
fn discard_past_the_disk_end_is_refused() {
    let r = parse_request(&discard(DISK - 8, 9, 0), &disk());
    assert!(matches!(r, Err(Refusal::BeyondDisk { .. })), "{r:?}");
    assert_eq!(r.unwrap_err().status(), status::ERROR);
}

#[test]
fn discard_whose_end_overflows_is_refused() {
    let r = parse_request(&discard(8, u64::MAX, 0), &disk());
    assert!(matches!(r, Err(Refusal::SectorOverflow { .. })), "{r:?}");
}

// --- read-only disks ---

#[test]
fn read_only_disk_refuses_every_modification_but_serves_reads_and_flushes() {
    let ro = DiskParams {
        read_only: true,
        ..disk()
    };
    let p = |raw: RawRequest| parse_request(&raw, &ro);
    assert!(p(rw_request(op::READ, 1, 0, &[full_page(1)])).is_ok());
    assert_eq!(
        p(rw_request(op::FLUSH_DISKCACHE, 1, 0, &[])),
        Ok(BlkRequest::Flush)
    );
    assert_eq!(
        p(rw_request(op::WRITE, 1, 0, &[full_page(1)])),
        Err(Refusal::ReadOnly(op::WRITE))
    );
    assert_eq!(
        p(rw_request(op::FLUSH_DISKCACHE, 1, 0, &[full_page(1)])),
        Err(Refusal::ReadOnly(op::FLUSH_DISKCACHE))
    );
    assert_eq!(p(discard(0, 8, 0)), Err(Refusal::ReadOnly(op::DISCARD)));
}

// --- operations not offered ---

#[test]
fn flush_is_refused_as_unsupported_when_not_offered() {
    let d = DiskParams {
        flush: false,
        ..disk()
    };
    let r = parse_request(&rw_request(op::FLUSH_DISKCACHE, 1, 0, &[]), &d);
    assert_eq!(r, Err(Refusal::NotOffered(op::FLUSH_DISKCACHE)));
    assert_eq!(r.unwrap_err().status(), status::EOPNOTSUPP);
}

#[test]
fn discard_is_refused_as_unsupported_when_not_offered() {
    let d = DiskParams {
        discard: false,
        ..disk()
    };
    let r = parse_request(&discard(0, 8, 0), &d);
    assert_eq!(r, Err(Refusal::NotOffered(op::DISCARD)));
}

#[test]
fn secure_discard_is_refused_as_unsupported_when_not_offered() {
    let r = parse_request(&discard(0, 8, crate::abi::DISCARD_SECURE), &disk());
    assert_eq!(r, Err(Refusal::NotOffered(op::DISCARD)));
}

#[test]
fn barrier_reserved_and_unknown_operations_are_unsupported() {
    for operation in [op::WRITE_BARRIER, op::RESERVED_1]
        .into_iter()
        .chain(7..=u8::MAX)
    {
        let r = parse_request(&rw_request(operation, 1, 0, &[full_page(1)]), &disk());
        assert_eq!(r, Err(Refusal::NotOffered(operation)));
        assert_eq!(r.unwrap_err().status(), status::EOPNOTSUPP);
    }
}

#[test]
fn indirect_requests_are_recognised_and_refused() {
    let raw = RequestIndirect {
        operation: op::INDIRECT,
        indirect_op: op::WRITE,
        nr_segments: 32,
        id: 77,
        ..Default::default()
    }
    .to_raw();
    assert_eq!(raw.id(), 77);
    let r = parse_request(&raw, &disk());
    assert_eq!(r, Err(Refusal::NotOffered(op::INDIRECT)));
    assert_eq!(r.unwrap_err().status(), status::EOPNOTSUPP);
}

// --- opaque fields ---

#[test]
fn grant_refs_and_handle_are_passed_through_untouched() {
    let mut req = RequestRw {
        operation: op::READ,
        nr_segments: 2,
        handle: 0xffff,
        ..Default::default()
    };
    req.seg[0] = RequestSegment {
        gref: 0,
        first_sect: 0,
        last_sect: 7,
    };
    req.seg[1] = RequestSegment {
        gref: u32::MAX,
        first_sect: 0,
        last_sect: 7,
    };
    let t = transfer_of(parse_request(&req.to_raw(), &disk()));
    assert_eq!(t.segments()[0].gref, 0);
    assert_eq!(t.segments()[1].gref, u32::MAX);
}

#[test]
fn transfer_new_applies_the_parser_rules() {
    assert!(Transfer::new(0, &[full_page(1)], 8).is_ok());
    assert_eq!(Transfer::new(0, &[], 8), Err(Refusal::SegmentCount(0)));
    assert!(Transfer::new(1, &[full_page(1)], 8).is_err());
    assert!(Transfer::new(0, &[seg(1, 3, 2)], 8).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    /// Any 112 bytes: no panic, and an accepted request satisfies what the data path needs.
    #[test]
    fn any_bytes_parse_without_panic_and_accepted_requests_are_sound(
        bytes in proptest::collection::vec(any::<u8>(), crate::abi::ENTRY_SIZE),
        operation in 0u8..8,
        nr in 0u8..14,
        disk_sectors in 0u64..4096,
    ) {
        let mut b = [0u8; crate::abi::ENTRY_SIZE];
        b.copy_from_slice(&bytes);
        // Bias the fields that decide the path towards interesting values.
        b[0] = operation;
        b[1] = nr;
        let d = DiskParams::swap_disk(disk_sectors);
        match parse_request(&RawRequest(b), &d) {
            Ok(BlkRequest::Read(t)) | Ok(BlkRequest::Write { io: t, .. }) => {
                prop_assert!((1..=11).contains(&t.segments().len()));
                for s in t.segments() {
                    prop_assert!(s.first_sect <= s.last_sect && s.last_sect < 8);
                }
                prop_assert!(t.sector() + t.sectors() <= disk_sectors);
            }
            Ok(BlkRequest::Discard { sector, nr_sectors, .. }) => {
                prop_assert!(sector.checked_add(nr_sectors).is_some_and(|e| e <= disk_sectors));
            }
            Ok(BlkRequest::Flush) => prop_assert_eq!(nr, 0),
            Err(r) => prop_assert!(r.status() == status::ERROR || r.status() == status::EOPNOTSUPP),
        }
    }
}
