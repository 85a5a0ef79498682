//! The disk model of the data path: 512-byte sectors stored as 4 KiB pages.
//!
//! A validated transfer becomes a list of [`PageOp`]s, each one contiguous byte range that
//! lies inside one segment's granted page and inside one disk page. A write op that covers
//! less than a whole page is a read-modify-write of that one disk page. Pure functions, no
//! grants and no storage: the backend applies the ops with whatever moves its data.

use crate::abi::{MAX_SEGMENTS, PAGE_SIZE, SECTORS_PER_PAGE, SECTOR_SIZE};
use crate::parse::Transfer;
use core::ops::Range;

/// A segment (at most 8 sectors) touches at most two disk pages.
pub const MAX_PAGE_OPS: usize = 2 * MAX_SEGMENTS;

const SPP: u64 = SECTORS_PER_PAGE as u64;

/// One piece of a transfer: `len` bytes at `segment_offset` in the granted page of segment
/// `segment`, and at `page_offset` in disk page `disk_page`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageOp {
    pub segment: usize,
    pub segment_offset: usize,
    pub disk_page: u64,
    pub page_offset: usize,
    pub len: usize,
}

impl PageOp {
    /// The op covers its whole disk page: a write needs no read of the old content.
    pub fn is_whole_page(&self) -> bool {
        self.len == PAGE_SIZE
    }

    /// The bytes of the disk page.
    pub fn page_range(&self) -> Range<usize> {
        self.page_offset..self.page_offset + self.len
    }

    /// The bytes of the segment's granted page.
    pub fn segment_range(&self) -> Range<usize> {
        self.segment_offset..self.segment_offset + self.len
    }

    /// The write half of a read-modify-write: put this op's bytes of the granted page into
    /// the disk page (which holds the page's old content unless [`PageOp::is_whole_page`]).
    pub fn write_into(&self, disk_page: &mut Page, granted: &Page) {
        disk_page[self.page_range()].copy_from_slice(&granted[self.segment_range()]);
    }

    /// Copy this op's bytes of the disk page into the granted page.
    pub fn read_from(&self, disk_page: &Page, granted: &mut Page) {
        granted[self.segment_range()].copy_from_slice(&disk_page[self.page_range()]);
    }
}

/// One 4 KiB page of data.
pub type Page = [u8; PAGE_SIZE];

/// The page ops of one transfer, in order (fixed size: no allocation per request).
#[derive(Debug, Clone, Copy)]
pub struct PageOps {
    ops: [PageOp; MAX_PAGE_OPS],
    len: usize,
}

impl core::ops::Deref for PageOps {
    type Target = [PageOp];
    fn deref(&self) -> &[PageOp] {
        &self.ops[..self.len]
    }
}

/// Split a validated transfer into page ops. Segment `i` covers the disk sectors right
/// after those of segment `i - 1`; each is split where it crosses a disk page boundary.
pub fn page_ops(io: &Transfer) -> PageOps {
    let mut out = PageOps {
        ops: [PageOp::default(); MAX_PAGE_OPS],
        len: 0,
    };
    // The parser checked sector + total sectors <= disk size, so nothing here overflows.
    let mut sector = io.sector();
    for (segment, seg) in io.segments().iter().enumerate() {
        let mut seg_sector = u64::from(seg.first_sect);
        let mut left = seg.sectors();
        while left > 0 {
            let in_page = sector % SPP;
            let n = left.min(SPP - in_page);
            out.ops[out.len] = PageOp {
                segment,
                segment_offset: seg_sector as usize * SECTOR_SIZE,
                disk_page: sector / SPP,
                page_offset: in_page as usize * SECTOR_SIZE,
                len: n as usize * SECTOR_SIZE,
            };
            out.len += 1;
            sector += n;
            seg_sector += n;
            left -= n;
        }
    }
    out
}

/// Part of one disk page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PagePiece {
    pub disk_page: u64,
    pub range: Range<usize>,
}

/// A discarded sector range as pages: the whole pages it covers (which can be freed) and
/// the partly covered pages at either end (which stay as they are: a discard is a hint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscardSpan {
    pub head: Option<PagePiece>,
    pub whole_pages: Range<u64>,
    pub tail: Option<PagePiece>,
}

/// The pages of the validated discard `sector .. sector + nr_sectors` (O(1) whatever its
/// length: a swap disk is discarded whole at `swapon`).
pub fn discard_span(sector: u64, nr_sectors: u64) -> DiscardSpan {
    // The parser checked that the end does not overflow; saturate rather than trust it.
    let end = sector.saturating_add(nr_sectors);
    let first_whole = sector.div_ceil(SPP);
    let end_whole = (end / SPP).max(first_whole);
    let boundary = first_whole.saturating_mul(SPP);
    DiscardSpan {
        // From the start to the first page boundary, or to the end if that comes first.
        head: piece(sector, end.min(boundary)),
        whole_pages: first_whole..end_whole,
        // From the last page boundary to the end, unless the head already got there.
        tail: piece(end_whole.saturating_mul(SPP).max(boundary), end),
    }
}

/// The sectors `from..to`, which lie inside one page, as a piece of it (None if empty).
fn piece(from: u64, to: u64) -> Option<PagePiece> {
    if from >= to {
        return None;
    }
    let page = from / SPP;
    let offset = |s: u64| (s - page * SPP) as usize * SECTOR_SIZE;
    Some(PagePiece {
        disk_page: page,
        range: offset(from)..offset(to),
    })
}

/// Disk pages of a disk of `sectors` sectors (the last one may be partly beyond the end).
pub fn disk_pages(sectors: u64) -> u64 {
    sectors.div_ceil(SPP)
}

#[cfg(test)]
mod tests;
