//! The ring journal: what lets a restarted tmemd carry on a frontend's ring in place.
//!
//! A blkif response is written into the slot of a request already consumed, so after a kill
//! the ring alone cannot say which requests the dead backend had taken (their slots may hold
//! its unpublished answers). Before any answer is written, the disk's thread therefore copies
//! the requests it took into this file, then the index up to which it took them. A new tmemd
//! reads both back and hands the requests the guest has not seen answered to
//! [`BlkBackend::resume`](tmem_blkif::BlkBackend::resume), which runs them again (block
//! requests can be repeated: see there).
//!
//! Layout (little-endian): a 64-byte header — magic `TMEMRJ01`, the ring's identity (a hash
//! of its grant references and event channel, so a journal is only ever applied to the ring
//! it was written for), entries, consumed index — then one 112-byte slot per ring entry,
//! request `i` at slot `i % entries`. Written with `pwrite` into the page cache: what a killed
//! process wrote stays (a host crash loses the guests too, so nothing is ever synced).
//! The consumed index is one aligned 4-byte `pwrite`, after the slots it covers.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use tmem_blkif::abi::ENTRY_SIZE;
use tmem_blkif::{Incoming, RawRequest};

const MAGIC: &[u8; 8] = b"TMEMRJ01";
const HEADER: u64 = 64;
const OFF_IDENT: u64 = 8;
const OFF_ENTRIES: u64 = 16;
const OFF_CONSUMED: u64 = 24;

/// FNV-1a, 64 bits: fixed here so that every tmemd build computes the same values for the
/// names and identities below (they outlive a tmemd).
fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The identity of a ring: its grant references and event channel, hashed.
pub fn ring_identity(ring_refs: &[u32], event_channel: u32) -> u64 {
    let words = std::iter::once(ring_refs.len() as u32)
        .chain(ring_refs.iter().copied())
        .chain(std::iter::once(event_channel));
    fnv1a(words.flat_map(u32::to_le_bytes))
}

/// A Xen domain's instance for [`crate::DiskId`], from its `vm` path in xenstore
/// (`/vm/<uuid>`): a new domain on a reused domain id has another one.
pub fn domain_instance(vm_path: &str) -> u64 {
    fnv1a(vm_path.bytes())
}

/// A disk's ring journal, open for writing.
#[derive(Debug)]
pub struct RingJournal {
    file: File,
    entries: u32,
}

/// What a journal left by a previous tmemd says.
#[derive(Debug, Clone)]
pub struct JournalState {
    pub ident: u64,
    pub entries: u32,
    pub consumed: u32,
    slots: Vec<RawRequest>,
}

impl JournalState {
    /// The copy of request `i` (any index: slots wrap).
    pub fn request(&self, i: u32) -> Option<RawRequest> {
        if self.entries == 0 {
            return None;
        }
        self.slots.get((i % self.entries) as usize).copied()
    }
}

impl RingJournal {
    /// Start a journal for a new ring of `entries` slots whose first request index is
    /// `consumed` (0 for a ring the frontend just set up), replacing any old one.
    pub fn create(path: &Path, ident: u64, entries: u32, consumed: u32) -> io::Result<RingJournal> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        let j = RingJournal { file, entries };
        let mut h = [0u8; HEADER as usize];
        h[..8].copy_from_slice(MAGIC);
        h[8..16].copy_from_slice(&ident.to_le_bytes());
        h[16..20].copy_from_slice(&entries.to_le_bytes());
        h[24..28].copy_from_slice(&consumed.to_le_bytes());
        j.file
            .set_len(HEADER + u64::from(entries) * ENTRY_SIZE as u64)?;
        j.file.write_all_at(&h, 0)?;
        Ok(j)
    }

    /// Carry on a journal read with [`RingJournal::read`] (the resumed ring's own).
    pub fn reopen(path: &Path, entries: u32) -> io::Result<RingJournal> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(RingJournal { file, entries })
    }

    /// Record requests just taken off the ring, in the order taken, before any of them is
    /// answered: their copies, then the index after the last.
    pub fn record(&mut self, batch: &[Incoming]) -> io::Result<()> {
        let Some(last) = batch.last() else {
            return Ok(());
        };
        let mut run: Vec<u8> = Vec::with_capacity(batch.len() * ENTRY_SIZE);
        let mut run_start: Option<u32> = None;
        let mut prev = 0u32;
        for inc in batch {
            let slot = inc.index % self.entries;
            if let Some(s) = run_start {
                if slot != prev + 1 {
                    self.write_run(s, &run)?;
                    run.clear();
                    run_start = Some(slot);
                }
            } else {
                run_start = Some(slot);
            }
            run.extend_from_slice(&inc.raw.0);
            prev = slot;
        }
        if let Some(s) = run_start {
            self.write_run(s, &run)?;
        }
        self.file
            .write_all_at(&last.index.wrapping_add(1).to_le_bytes(), OFF_CONSUMED)
    }

    fn write_run(&self, slot: u32, bytes: &[u8]) -> io::Result<()> {
        self.file
            .write_all_at(bytes, HEADER + u64::from(slot) * ENTRY_SIZE as u64)
    }

    /// Make the journal unusable for a resume (after a failed write, a resume from it could
    /// replay the wrong requests).
    pub fn invalidate(&mut self) -> io::Result<()> {
        self.file.write_all_at(&[0u8; 8], 0)
    }

    /// Read a journal a previous tmemd left. `Ok(None)`: there is none, or it is not one
    /// (wrong magic, size or geometry).
    pub fn read(path: &Path) -> io::Result<Option<JournalState>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if bytes.len() < HEADER as usize || &bytes[..8] != MAGIC {
            return Ok(None);
        }
        let word = |off: u64, n: usize| -> u64 {
            let mut w = [0u8; 8];
            w[..n].copy_from_slice(&bytes[off as usize..off as usize + n]);
            u64::from_le_bytes(w)
        };
        let ident = word(OFF_IDENT, 8);
        let entries = word(OFF_ENTRIES, 4) as u32;
        let consumed = word(OFF_CONSUMED, 4) as u32;
        let want = HEADER as usize + entries as usize * ENTRY_SIZE;
        if entries == 0 || !entries.is_power_of_two() || bytes.len() != want {
            return Ok(None);
        }
        let slots = bytes[HEADER as usize..]
            .chunks_exact(ENTRY_SIZE)
            .map(|c| {
                let mut r = [0u8; ENTRY_SIZE];
                r.copy_from_slice(c);
                RawRequest(r)
            })
            .collect();
        Ok(Some(JournalState {
            ident,
            entries,
            consumed,
            slots,
        }))
    }
}
