//! The page file's layout. Everything is little-endian 64-bit words; every region starts on
//! a page boundary.
//!
//! ```text
//! offset 0          superblock (one page): magic, format version, geometry, checksum
//! pools             npools   × 64-byte pool records
//! frame headers     nframes  × 64-byte page records, record f describes data frame f
//! metadata records  nxrecs   × 64-byte page records for pages stored without a frame
//!                   (same-filled persistent pages: one 8-byte word repeated, kept in the
//!                   record's last word)
//! data              nframes  × 4 KiB page frames
//! ```
//!
//! A record is eight words; word 0 is its *seal*, a checksum of words 1–7 that is never 0.
//! A record is valid only if its seal matches. Writers clear the seal before they touch
//! words 1–7 and write the seal last, after a release fence, so a record whose write was cut
//! short by a kill has seal 0 (or a stale seal that no longer matches) and is never valid;
//! see `docs/persistence.md` for the full write order.

use tmem_abi::PAGE_SIZE;

/// "TMEMPGS1" — the first word of a formatted page file.
pub const MAGIC: u64 = u64::from_le_bytes(*b"TMEMPGS1");
/// Incompatible layout changes bump the major version: a tmemd refuses any other major.
pub const FORMAT_MAJOR: u32 = 1;
/// Compatible additions bump the minor version (readers of the same major accept any minor).
///
/// * 0: the first durable format.
/// * 1: metadata records may describe a same-filled page of any word ([`page_flags::SAME`],
///   the word in [`PageRecord::fill`], record word 7). A 1.0 reader drops such records as
///   pages of an unknown kind (the page is lost, never misread); zero pages are written as
///   1.0 wrote them.
/// * 2: compressed pages. A frame may belong to a *run* of frames holding compressed
///   objects ([`page_flags::RUN`] frame records, pool slot `u32::MAX`), and a metadata record
///   may describe a compressed page ([`page_flags::COMPRESSED`], where its bytes are in word
///   7). What the words mean is the store's (`tmem-store/src/durable.rs`). A 1.1 reader
///   drops both kinds (run records name no pool; compressed records are of an unknown kind):
///   compressed pages are lost to a downgrade, never misread. New files have two metadata
///   records per frame (compressed pages outnumber frames).
pub const FORMAT_MINOR: u32 = 2;

pub(crate) const RECORD: usize = 64;
pub(crate) const WORDS: usize = RECORD / 8;

/// How many of each thing a page file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Page frames (page data).
    pub nframes: u32,
    /// Records for pages kept without a frame.
    pub nxrecs: u32,
    /// Pool records.
    pub npools: u32,
}

/// Byte offsets of each region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    pub geo: Geometry,
    pub pools: usize,
    pub frame_hdrs: usize,
    pub xrecs: usize,
    pub data: usize,
    pub len: usize,
}

fn page_round(n: usize) -> usize {
    n.div_ceil(PAGE_SIZE) * PAGE_SIZE
}

impl Layout {
    pub fn new(geo: Geometry) -> Layout {
        let pools = PAGE_SIZE;
        let frame_hdrs = pools + page_round(geo.npools as usize * RECORD);
        let xrecs = frame_hdrs + page_round(geo.nframes as usize * RECORD);
        let data = xrecs + page_round(geo.nxrecs as usize * RECORD);
        let len = data + geo.nframes as usize * PAGE_SIZE;
        Layout {
            geo,
            pools,
            frame_hdrs,
            xrecs,
            data,
            len,
        }
    }
}

/// Bytes a page file of this geometry takes.
pub fn file_len(geo: Geometry) -> u64 {
    Layout::new(geo).len as u64
}

// Superblock words.
pub(crate) const SB_MAGIC: usize = 0;
pub(crate) const SB_VERSION: usize = 1;
pub(crate) const SB_PAGE_SIZE: usize = 2;
pub(crate) const SB_NFRAMES: usize = 3;
pub(crate) const SB_NXRECS: usize = 4;
pub(crate) const SB_NPOOLS: usize = 5;
pub(crate) const SB_LEN: usize = 6;
pub(crate) const SB_SUM: usize = 7;
pub(crate) const SB_WORDS: usize = 8;

/// Seeds keep one kind of record from ever passing for another.
pub(crate) const SEED_SUPER: u64 = 0x5EED_0001;
pub(crate) const SEED_POOL: u64 = 0x5EED_0002;
pub(crate) const SEED_PAGE: u64 = 0x5EED_0003;

/// Checksum of a record's words 1..: a 64-bit mix, never 0 (0 means "no record").
pub(crate) fn seal(seed: u64, words: &[u64]) -> u64 {
    let mut h = 0x9E37_79B9_7F4A_7C15u64 ^ seed;
    for &w in words {
        h = (h ^ w).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h ^= h >> 31;
        h = h.wrapping_mul(0x94D0_49BB_1331_11EB);
        h ^= h >> 29;
    }
    h | 1
}

/// What a page record says: which page of which pool a frame (or metadata record) holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRecord {
    /// The pool record slot of its pool.
    pub pool_slot: u32,
    /// [`page_flags`].
    pub flags: u32,
    pub oid: [u64; 3],
    pub index: u32,
    /// Global write order: of two records for one page, the higher wins.
    pub seq: u64,
    /// Metadata records with [`page_flags::SAME`]: the 8-byte word the page repeats (its
    /// first 8 bytes, read little-endian). 0 everywhere else, as format 1.0 wrote it.
    pub fill: u64,
}

/// Bits of [`PageRecord::flags`].
pub mod page_flags {
    /// An all-zero page, kept without a frame (metadata records only).
    pub const ZERO: u32 = 1;
    /// A page that is one 8-byte word repeated, [`PageRecord::fill`], kept without a frame
    /// (metadata records only; format 1.1 on; the store writes [`ZERO`] for the word 0).
    pub const SAME: u32 = 2;
    /// A compressed page kept in a run's slot; [`PageRecord::fill`] says where (metadata
    /// records only; format 1.2 on).
    pub const COMPRESSED: u32 = 4;
    /// This frame is a member of a run of frames holding compressed pages (frame records
    /// only, pool slot `u32::MAX`; format 1.2 on).
    pub const RUN: u32 = 8;
}

impl PageRecord {
    pub(crate) fn encode(&self) -> [u64; WORDS - 1] {
        [
            self.pool_slot as u64 | (self.flags as u64) << 32,
            self.oid[0],
            self.oid[1],
            self.oid[2],
            self.index as u64,
            self.seq,
            self.fill,
        ]
    }
    pub(crate) fn decode(w: &[u64; WORDS - 1]) -> PageRecord {
        PageRecord {
            pool_slot: w[0] as u32,
            flags: (w[0] >> 32) as u32,
            oid: [w[1], w[2], w[3]],
            index: w[4] as u32,
            seq: w[5],
            fill: w[6],
        }
    }
}

/// What a pool record says: whose pool it is and which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolRecord {
    /// The owner's identity, encoded by the store (kind tag and two numbers).
    pub owner_tag: u8,
    pub owner_a: u32,
    pub owner_b: u32,
    /// The owner's instance (a guest restarted is a new instance).
    pub instance: u64,
    /// The pool's id in its owner's pool table.
    pub pool_index: u16,
    /// The pool kind, as the store encodes it.
    pub kind: u8,
    pub uuid: [u64; 2],
    /// The store's generation number of the pool (unique over the file's life).
    pub gen: u64,
}

impl PoolRecord {
    pub(crate) fn encode(&self) -> [u64; WORDS - 1] {
        [
            self.kind as u64
                | (self.owner_tag as u64) << 8
                | (self.pool_index as u64) << 16
                | (self.owner_a as u64) << 32,
            self.owner_b as u64,
            self.instance,
            self.uuid[0],
            self.uuid[1],
            self.gen,
            0,
        ]
    }
    pub(crate) fn decode(w: &[u64; WORDS - 1]) -> PoolRecord {
        PoolRecord {
            kind: w[0] as u8,
            owner_tag: (w[0] >> 8) as u8,
            pool_index: (w[0] >> 16) as u16,
            owner_a: (w[0] >> 32) as u32,
            owner_b: w[1] as u32,
            instance: w[2],
            uuid: [w[3], w[4]],
            gen: w[5],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let p = PageRecord {
            pool_slot: 7,
            flags: page_flags::ZERO,
            oid: [1, u64::MAX, 3],
            index: u32::MAX,
            seq: 99,
            fill: 0,
        };
        assert_eq!(PageRecord::decode(&p.encode()), p);
        let same = PageRecord {
            flags: page_flags::SAME,
            fill: 0x0102_0304_0506_0708,
            ..p
        };
        assert_eq!(PageRecord::decode(&same.encode()), same);
        // The fill word is covered by the seal like every other field.
        assert_ne!(
            seal(SEED_PAGE, &same.encode()),
            seal(SEED_PAGE, &PageRecord { fill: 1, ..same }.encode())
        );
        let r = PoolRecord {
            owner_tag: 2,
            owner_a: u32::MAX,
            owner_b: 5,
            instance: 0xdead_beef,
            pool_index: 63,
            kind: 2,
            uuid: [11, 12],
            gen: 1 << 40,
        };
        assert_eq!(PoolRecord::decode(&r.encode()), r);
    }

    #[test]
    fn seals_differ_by_kind_and_content_and_are_never_zero() {
        let w = [0u64; 7];
        assert_ne!(seal(SEED_POOL, &w), seal(SEED_PAGE, &w));
        assert_ne!(seal(SEED_PAGE, &w), 0);
        let mut w2 = w;
        w2[3] = 1;
        assert_ne!(seal(SEED_PAGE, &w), seal(SEED_PAGE, &w2));
    }

    #[test]
    fn regions_are_page_aligned_and_ordered() {
        let l = Layout::new(Geometry {
            nframes: 1000,
            nxrecs: 10,
            npools: 3,
        });
        for off in [l.pools, l.frame_hdrs, l.xrecs, l.data] {
            assert_eq!(off % PAGE_SIZE, 0);
        }
        assert!(l.pools < l.frame_hdrs && l.frame_hdrs < l.xrecs && l.xrecs < l.data);
        assert_eq!(l.len, l.data + 1000 * PAGE_SIZE);
    }
}
