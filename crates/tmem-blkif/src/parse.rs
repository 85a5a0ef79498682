//! The one parser of blkif requests: a copied-out [`RawRequest`] in, a validated
//! [`BlkRequest`] or a [`Refusal`] (with its response status) out.
//!
//! Rules (each has a unit test):
//! * READ, WRITE: 1..=11 segments; FLUSH_DISKCACHE: 0..=11 (0 is a pure flush; Linux's
//!   blkfront sends a FUA write as FLUSH_DISKCACHE with data).
//! * Each used segment: `first_sect <= last_sect <= 7` (the sectors lie in one 4 KiB page).
//!   Unused segment slots and the `handle` are ignored; grant refs are opaque.
//! * The sectors `sector_number .. sector_number + total` must not overflow and must end
//!   at or before the end of the disk. DISCARD likewise for `sector_number .. + nr_sectors`.
//! * WRITE, FLUSH_DISKCACHE with data, and DISCARD on a read-only disk are refused.
//! * An operation the disk does not offer (FLUSH or DISCARD turned off, a secure discard
//!   without `discard-secure`, WRITE_BARRIER, INDIRECT, RESERVED_1, any unknown code) gets
//!   `BLKIF_RSP_EOPNOTSUPP`, as Linux's blkback answers; every other refusal `BLKIF_RSP_ERROR`.

use crate::abi::{op, status, RawRequest, DISCARD_SECURE, MAX_SEGMENTS, SECTORS_PER_PAGE};

/// What the disk offers and how large it is: the facts a request is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskParams {
    /// Size in 512-byte sectors (the backend's `sectors` key).
    pub sectors: u64,
    pub read_only: bool,
    /// `feature-flush-cache` is offered.
    pub flush: bool,
    /// `feature-discard` is offered.
    pub discard: bool,
    /// `discard-secure` is offered.
    pub discard_secure: bool,
}

impl DiskParams {
    /// A writable disk of `sectors` sectors offering flush and (non-secure) discard: what a
    /// swap disk offers.
    pub fn swap_disk(sectors: u64) -> DiskParams {
        DiskParams {
            sectors,
            read_only: false,
            flush: true,
            discard: true,
            discard_secure: false,
        }
    }
}

/// One validated segment: sectors `first_sect..=last_sect` of the granted page `gref`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Segment {
    /// The guest's grant reference, opaque here (the grant operation validates it).
    pub gref: u32,
    pub first_sect: u8,
    pub last_sect: u8,
}

impl Segment {
    /// Sectors in this segment (1..=8).
    pub fn sectors(&self) -> u64 {
        u64::from(self.last_sect - self.first_sect) + 1
    }

    /// The bytes of the granted page this segment covers.
    pub fn byte_range(&self) -> core::ops::Range<usize> {
        let s = crate::abi::SECTOR_SIZE;
        usize::from(self.first_sect) * s..(usize::from(self.last_sect) + 1) * s
    }
}

/// The data of a validated READ or WRITE: segments that cover consecutive disk sectors
/// starting at `sector`, in order. Fixed size: parsing allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    sector: u64,
    nr_segments: u8,
    segs: [Segment; MAX_SEGMENTS],
}

impl Transfer {
    /// First disk sector.
    pub fn sector(&self) -> u64 {
        self.sector
    }

    /// The segments (1..=11).
    pub fn segments(&self) -> &[Segment] {
        &self.segs[..usize::from(self.nr_segments)]
    }

    /// Total sectors (1..=88).
    pub fn sectors(&self) -> u64 {
        self.segments().iter().map(Segment::sectors).sum()
    }

    /// Build a transfer, checking every rule a request's segments and range must pass (the
    /// parser uses the same function).
    pub fn new(sector: u64, segs: &[Segment], disk_sectors: u64) -> Result<Transfer, Refusal> {
        if segs.is_empty() || segs.len() > MAX_SEGMENTS {
            return Err(Refusal::SegmentCount(segs.len().min(255) as u8));
        }
        let mut t = Transfer {
            sector,
            nr_segments: segs.len() as u8,
            segs: [Segment::default(); MAX_SEGMENTS],
        };
        for (i, (dst, s)) in t.segs.iter_mut().zip(segs).enumerate() {
            check_segment(i, s)?;
            *dst = *s;
        }
        check_range(sector, t.sectors(), disk_sectors)?;
        Ok(t)
    }
}

/// A request that passed every check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlkRequest {
    /// Copy the disk's sectors into the segments' pages.
    Read(Transfer),
    /// Copy the segments' pages onto the disk. `flush` (a FLUSH_DISKCACHE with data): make
    /// everything written before durable first, and this data durable before answering.
    Write { io: Transfer, flush: bool },
    /// FLUSH_DISKCACHE without data: make everything written before durable.
    Flush,
    /// The sectors are no longer in use; their content becomes unspecified.
    Discard {
        sector: u64,
        nr_sectors: u64,
        secure: bool,
    },
}

/// Why a request was refused. [`Refusal::status`] is the response status to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("operation {0} is not offered by this disk")]
    NotOffered(u8),
    #[error("{0} segments; a request with data carries 1..=11")]
    SegmentCount(u8),
    #[error("segment {index} covers sectors {first_sect}..={last_sect}, outside one page")]
    SegmentSectors {
        index: usize,
        first_sect: u8,
        last_sect: u8,
    },
    #[error("sectors {sector}+{sectors} overflow")]
    SectorOverflow { sector: u64, sectors: u64 },
    #[error("sectors {sector}+{sectors} go past the end of the disk ({disk_sectors} sectors)")]
    BeyondDisk {
        sector: u64,
        sectors: u64,
        disk_sectors: u64,
    },
    #[error("operation {0} would modify a read-only disk")]
    ReadOnly(u8),
}

impl Refusal {
    /// The `BLKIF_RSP_*` status that answers the refused request.
    pub fn status(&self) -> i16 {
        match self {
            Refusal::NotOffered(_) => status::EOPNOTSUPP,
            _ => status::ERROR,
        }
    }
}

fn check_segment(index: usize, s: &Segment) -> Result<(), Refusal> {
    if s.first_sect > s.last_sect || s.last_sect >= SECTORS_PER_PAGE {
        return Err(Refusal::SegmentSectors {
            index,
            first_sect: s.first_sect,
            last_sect: s.last_sect,
        });
    }
    Ok(())
}

fn check_range(sector: u64, sectors: u64, disk_sectors: u64) -> Result<(), Refusal> {
    let end = sector
        .checked_add(sectors)
        .ok_or(Refusal::SectorOverflow { sector, sectors })?;
    if end > disk_sectors {
        return Err(Refusal::BeyondDisk {
            sector,
            sectors,
            disk_sectors,
        });
    }
    Ok(())
}

/// Validate one request copied out of the ring against `disk`.
pub fn parse_request(raw: &RawRequest, disk: &DiskParams) -> Result<BlkRequest, Refusal> {
    let operation = raw.operation();
    match operation {
        op::READ | op::WRITE => {
            let io = parse_transfer(raw, disk)?;
            if operation == op::READ {
                Ok(BlkRequest::Read(io))
            } else {
                writable(disk, operation)?;
                Ok(BlkRequest::Write { io, flush: false })
            }
        }
        op::FLUSH_DISKCACHE => {
            if !disk.flush {
                return Err(Refusal::NotOffered(operation));
            }
            if raw.nr_segments() == 0 {
                return Ok(BlkRequest::Flush);
            }
            let io = parse_transfer(raw, disk)?;
            writable(disk, operation)?;
            Ok(BlkRequest::Write { io, flush: true })
        }
        op::DISCARD => {
            if !disk.discard {
                return Err(Refusal::NotOffered(operation));
            }
            let d = raw.discard();
            let secure = d.flag & DISCARD_SECURE != 0;
            if secure && !disk.discard_secure {
                return Err(Refusal::NotOffered(operation));
            }
            writable(disk, operation)?;
            check_range(d.sector_number, d.nr_sectors, disk.sectors)?;
            Ok(BlkRequest::Discard {
                sector: d.sector_number,
                nr_sectors: d.nr_sectors,
                secure,
            })
        }
        // WRITE_BARRIER, RESERVED_1, INDIRECT and anything unknown: not offered.
        _ => Err(Refusal::NotOffered(operation)),
    }
}

fn writable(disk: &DiskParams, operation: u8) -> Result<(), Refusal> {
    if disk.read_only {
        return Err(Refusal::ReadOnly(operation));
    }
    Ok(())
}

fn parse_transfer(raw: &RawRequest, disk: &DiskParams) -> Result<Transfer, Refusal> {
    let rw = raw.rw();
    let n = usize::from(rw.nr_segments);
    if n > MAX_SEGMENTS {
        return Err(Refusal::SegmentCount(rw.nr_segments));
    }
    let mut segs = [Segment::default(); MAX_SEGMENTS];
    for (dst, src) in segs.iter_mut().zip(&rw.seg[..n]) {
        *dst = Segment {
            gref: src.gref,
            first_sect: src.first_sect,
            last_sect: src.last_sect,
        };
    }
    Transfer::new(rw.sector_number, &segs[..n], disk.sectors)
}

#[cfg(test)]
mod tests;
