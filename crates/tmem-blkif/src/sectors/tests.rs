//! The segment → page mapping against a byte-array model of the disk.

use super::*;
use crate::parse::Segment;
use proptest::prelude::*;
use std::collections::HashMap;

fn seg(first_sect: u8, last_sect: u8) -> Segment {
    Segment {
        gref: 0,
        first_sect,
        last_sect,
    }
}

fn ops(sector: u64, segs: &[Segment]) -> Vec<PageOp> {
    let t = Transfer::new(sector, segs, 1 << 30).expect("valid transfer");
    page_ops(&t).to_vec()
}

#[test]
fn aligned_whole_page_segment_is_one_whole_page_op() {
    let o = ops(16, &[seg(0, 7)]);
    assert_eq!(
        o,
        [PageOp {
            segment: 0,
            segment_offset: 0,
            disk_page: 2,
            page_offset: 0,
            len: PAGE_SIZE
        }]
    );
    assert!(o[0].is_whole_page());
}

#[test]
fn unaligned_whole_page_segment_splits_into_two_partial_ops() {
    let o = ops(3, &[seg(0, 7)]);
    assert_eq!(o.len(), 2);
    assert_eq!((o[0].disk_page, o[0].page_range()), (0, 1536..4096));
    assert_eq!(o[0].segment_range(), 0..2560);
    assert_eq!((o[1].disk_page, o[1].page_range()), (1, 0..1536));
    assert_eq!(o[1].segment_range(), 2560..4096);
    assert!(!o[0].is_whole_page() && !o[1].is_whole_page());
}

#[test]
fn partial_segment_maps_its_own_sectors() {
    let o = ops(8, &[seg(2, 4)]);
    assert_eq!(
        o,
        [PageOp {
            segment: 0,
            segment_offset: 1024,
            disk_page: 1,
            page_offset: 0,
            len: 1536
        }]
    );
}

#[test]
fn consecutive_segments_continue_where_the_previous_ended() {
    // 4 + 4 sectors from two granted pages fill disk page 5 in two ops.
    let o = ops(40, &[seg(4, 7), seg(0, 3)]);
    assert_eq!(o.len(), 2);
    assert_eq!(
        (o[0].segment, o[0].disk_page, o[0].page_range()),
        (0, 5, 0..2048)
    );
    assert_eq!(
        (o[1].segment, o[1].disk_page, o[1].page_range()),
        (1, 5, 2048..4096)
    );
}

#[test]
fn eleven_unaligned_segments_fit_the_op_limit() {
    let segs = [seg(0, 7); 11];
    let o = ops(1, &segs);
    assert_eq!(o.len(), MAX_PAGE_OPS);
    assert_eq!(o.iter().map(|op| op.len).sum::<usize>(), 88 * SECTOR_SIZE);
}

#[test]
fn discard_within_one_page_is_a_head_piece_only() {
    let s = discard_span(9, 3);
    assert_eq!(
        s.head,
        Some(PagePiece {
            disk_page: 1,
            range: 512..2048
        })
    );
    assert!(s.whole_pages.is_empty());
    assert_eq!(s.tail, None);
}

#[test]
fn discard_of_aligned_pages_is_whole_pages_only() {
    let s = discard_span(16, 80);
    assert_eq!((s.head, s.tail), (None, None));
    assert_eq!(s.whole_pages, 2..12);
}

#[test]
fn discard_straddling_one_boundary_has_head_and_tail() {
    let s = discard_span(6, 4);
    assert_eq!(
        s.head,
        Some(PagePiece {
            disk_page: 0,
            range: 3072..4096
        })
    );
    assert!(s.whole_pages.is_empty());
    assert_eq!(
        s.tail,
        Some(PagePiece {
            disk_page: 1,
            range: 0..1024
        })
    );
}

#[test]
fn discard_of_a_huge_range_is_constant_work() {
    let s = discard_span(0, u64::MAX - 4);
    assert_eq!(s.whole_pages, 0..(u64::MAX - 4) / 8);
    assert!(s.tail.is_some());
}

#[test]
fn discard_at_the_top_of_the_sector_space_does_not_overflow() {
    let s = discard_span(u64::MAX - 2, 2);
    assert_eq!(s.head.map(|p| p.range.len()), Some(1024));
    assert!(s.whole_pages.is_empty() && s.tail.is_none());
}

/// Disk pages as a backend would keep them: absent pages read as zeroes.
#[derive(Default)]
struct PageDisk {
    pages: HashMap<u64, Page>,
}

impl PageDisk {
    /// Read-modify-write each op's page (a whole-page op skips the read).
    fn write(&mut self, io: &Transfer, granted: &[Page]) {
        for op in page_ops(io).iter() {
            let mut page = match (op.is_whole_page(), self.pages.get(&op.disk_page)) {
                (false, Some(old)) => *old,
                _ => [0; PAGE_SIZE],
            };
            op.write_into(&mut page, &granted[op.segment]);
            self.pages.insert(op.disk_page, page);
        }
    }

    fn read(&self, io: &Transfer, granted: &mut [Page]) {
        for op in page_ops(io).iter() {
            let page = self.pages.get(&op.disk_page).unwrap_or(&[0; PAGE_SIZE]);
            op.read_from(page, &mut granted[op.segment]);
        }
    }

    fn discard(&mut self, sector: u64, nr: u64) {
        for p in discard_span(sector, nr).whole_pages {
            self.pages.remove(&p);
        }
    }
}

/// The model: the disk as one byte array, written sector by sector from the segments.
fn model_write(model: &mut [u8], io: &Transfer, granted: &[Page]) {
    let mut at = io.sector() as usize * SECTOR_SIZE;
    for (i, s) in io.segments().iter().enumerate() {
        let bytes = &granted[i][s.byte_range()];
        model[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    }
}

fn model_read(model: &[u8], io: &Transfer) -> Vec<u8> {
    let start = io.sector() as usize * SECTOR_SIZE;
    model[start..start + io.sectors() as usize * SECTOR_SIZE].to_vec()
}

/// What a read put into the granted pages, in segment order.
fn gathered(io: &Transfer, granted: &[Page]) -> Vec<u8> {
    io.segments()
        .iter()
        .enumerate()
        .flat_map(|(i, s)| granted[i][s.byte_range()].to_vec())
        .collect()
}

const MODEL_SECTORS: u64 = 200; // 25 pages: small enough to make collisions likely

fn arb_segment() -> impl Strategy<Value = Segment> {
    (0u8..8, 0u8..8, any::<u32>()).prop_map(|(a, b, gref)| Segment {
        gref,
        first_sect: a.min(b),
        last_sect: a.max(b),
    })
}

#[derive(Debug, Clone)]
enum Action {
    Write {
        sector: u64,
        segs: Vec<Segment>,
        fill: u8,
    },
    Read {
        sector: u64,
        segs: Vec<Segment>,
    },
    Discard {
        sector: u64,
        nr: u64,
    },
}

fn arb_action() -> impl Strategy<Value = Action> {
    let segs = || proptest::collection::vec(arb_segment(), 1..=11);
    prop_oneof![
        4 => (0..MODEL_SECTORS, segs(), any::<u8>())
            .prop_map(|(sector, segs, fill)| Action::Write { sector, segs, fill }),
        3 => (0..MODEL_SECTORS, segs()).prop_map(|(sector, segs)| Action::Read { sector, segs }),
        1 => (0..MODEL_SECTORS, 0..MODEL_SECTORS)
            .prop_map(|(sector, nr)| Action::Discard { sector, nr }),
    ]
}

/// Granted pages whose every byte says which segment, page and offset it came from.
fn granted_pages(n: usize, fill: u8) -> Vec<Page> {
    (0..n)
        .map(|i| {
            let mut p = [0u8; PAGE_SIZE];
            for (k, b) in p.iter_mut().enumerate() {
                *b = fill ^ (i as u8).wrapping_mul(31) ^ (k as u8) ^ ((k >> 8) as u8);
            }
            p
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every op lies inside one disk page and one granted page, and together the ops cover
    /// the transfer's bytes exactly once, in order.
    #[test]
    fn ops_tile_the_transfer(sector in 0u64..1_000_000, segs in proptest::collection::vec(arb_segment(), 1..=11)) {
        let t = Transfer::new(sector, &segs, u64::MAX).unwrap();
        let o = page_ops(&t);
        prop_assert!(o.len() <= MAX_PAGE_OPS);
        let mut disk_byte = sector * SECTOR_SIZE as u64;
        let mut seg_pos = (0usize, usize::from(segs[0].first_sect) * SECTOR_SIZE);
        for op in o.iter() {
            prop_assert!(op.len > 0 && op.page_range().end <= PAGE_SIZE);
            prop_assert!(op.segment_range().end <= PAGE_SIZE);
            prop_assert_eq!(op.disk_page * PAGE_SIZE as u64 + op.page_offset as u64, disk_byte);
            if op.segment != seg_pos.0 {
                prop_assert_eq!(seg_pos.1, segs[seg_pos.0].byte_range().end);
                prop_assert_eq!(op.segment, seg_pos.0 + 1);
                seg_pos = (op.segment, segs[op.segment].byte_range().start);
            }
            prop_assert_eq!(op.segment_offset, seg_pos.1);
            disk_byte += op.len as u64;
            seg_pos.1 += op.len;
        }
        prop_assert_eq!(disk_byte, (sector + t.sectors()) * SECTOR_SIZE as u64);
        prop_assert_eq!(seg_pos, (segs.len() - 1, segs.last().unwrap().byte_range().end));
    }

    /// Writes as read-modify-write of pages, reads and whole-page discards give the same
    /// bytes as the byte-array model, after every step and over the whole disk at the end.
    #[test]
    fn page_disk_matches_byte_model(actions in proptest::collection::vec(arb_action(), 1..40)) {
        let mut disk = PageDisk::default();
        let mut model = vec![0u8; MODEL_SECTORS as usize * SECTOR_SIZE];
        for a in actions {
            match a {
                Action::Write { sector, segs, fill } => {
                    let Ok(t) = Transfer::new(sector, &segs, MODEL_SECTORS) else { continue };
                    let granted = granted_pages(segs.len(), fill);
                    disk.write(&t, &granted);
                    model_write(&mut model, &t, &granted);
                }
                Action::Read { sector, segs } => {
                    let Ok(t) = Transfer::new(sector, &segs, MODEL_SECTORS) else { continue };
                    let mut granted = granted_pages(segs.len(), 0x5a);
                    disk.read(&t, &mut granted);
                    prop_assert_eq!(gathered(&t, &granted), model_read(&model, &t));
                }
                Action::Discard { sector, nr } => {
                    if sector + nr > MODEL_SECTORS { continue }
                    disk.discard(sector, nr);
                    // Whole pages read back as zeroes; partly covered pages keep their bytes.
                    for p in discard_span(sector, nr).whole_pages {
                        let r = p as usize * PAGE_SIZE..(p as usize + 1) * PAGE_SIZE;
                        model[r].fill(0);
                    }
                }
            }
        }
        for p in 0..disk_pages(MODEL_SECTORS) {
            let page = disk.pages.get(&p).copied().unwrap_or([0; PAGE_SIZE]);
            let r = p as usize * PAGE_SIZE..(p as usize + 1) * PAGE_SIZE;
            prop_assert_eq!(&page[..], &model[r]);
        }
    }

    /// A discard span covers exactly the discarded bytes: pieces inside one page, whole
    /// pages whole, nothing twice, nothing missing.
    #[test]
    fn discard_span_covers_exactly_the_range(sector in 0u64..10_000, nr in 0u64..10_000) {
        let s = discard_span(sector, nr);
        let mut covered: Vec<(u64, u64)> = Vec::new();
        let page_bytes = PAGE_SIZE as u64;
        if let Some(h) = &s.head {
            prop_assert!(h.range.start < h.range.end && h.range.end <= PAGE_SIZE);
            prop_assert!(h.range.len() < PAGE_SIZE);
            covered.push((h.disk_page * page_bytes + h.range.start as u64, h.disk_page * page_bytes + h.range.end as u64));
        }
        if !s.whole_pages.is_empty() {
            covered.push((s.whole_pages.start * page_bytes, s.whole_pages.end * page_bytes));
        }
        if let Some(t) = &s.tail {
            prop_assert!(t.range.start < t.range.end && t.range.len() < PAGE_SIZE);
            covered.push((t.disk_page * page_bytes + t.range.start as u64, t.disk_page * page_bytes + t.range.end as u64));
        }
        let want = (sector * SECTOR_SIZE as u64, (sector + nr) * SECTOR_SIZE as u64);
        if nr == 0 {
            prop_assert!(covered.is_empty());
        } else {
            prop_assert_eq!(covered.first().unwrap().0, want.0);
            prop_assert_eq!(covered.last().unwrap().1, want.1);
            for w in covered.windows(2) {
                prop_assert_eq!(w[0].1, w[1].0);
            }
        }
    }
}
