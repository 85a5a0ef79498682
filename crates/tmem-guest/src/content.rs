//! The deterministic page content every returned byte is checked against.
//!
//! A page is a 32-byte header (magic, source seed, inode, index, version) followed by a
//! pseudo-random body derived from the same tuple, so a wrong page can be classified: an
//! older version of the same page is *stale*, anything else is *corrupt*.
//!
//! The body is random bytes (incompressible) by default, or text-like (words of a small
//! phrases, which lz4 packs to about 0.3 of a page) after [`set_text`], to put tmemd's
//! compression to work.

use std::sync::atomic::{AtomicBool, Ordering};
use tmem_abi::{Page, PAGE_SIZE};

/// Whether page bodies are text-like (set once at start-up, before any page is made).
static TEXT: AtomicBool = AtomicBool::new(false);

/// Make every page body from now on text-like (`true`) or random (`false`).
pub fn set_text(on: bool) {
    TEXT.store(on, Ordering::Relaxed);
}

/// Phrases of a log-like text: what a page of a guest's page cache often holds.
const WORDS: [&[u8]; 16] = [
    b"the guest page ",
    b"of memory ",
    b"tmem pool ",
    b"swap frame ",
    b"and a kernel ",
    b"to the store ",
    b"in the hypervisor ",
    b"error: request failed ",
    b"info: block cache ",
    b"0x1f00 ",
    b"disk file ",
    b"\n2026-12-02 ",
    b"is ok ",
    b"for user process ",
    b"with ",
    b"done\n",
];

/// A text-like body from the PRNG state `s`: phrases chosen by it.
fn text_body(body: &mut [u8], mut s: u64) {
    let mut at = 0;
    while at < body.len() {
        s = mix(s);
        // Several phrases per step: 4 bits each.
        for k in 0..16 {
            let w = WORDS[((s >> (4 * k)) & 15) as usize];
            let n = w.len().min(body.len() - at);
            body[at..at + n].copy_from_slice(&w[..n]);
            at += n;
            if at == body.len() {
                return;
            }
        }
    }
}

const MAGIC: u64 = 0x4547_4150_4d45_4d54; // "TMEMPAGE"

/// splitmix64 step.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Which page: `seed` names the filesystem (private: guest instance and fs number; shared:
/// the uuid only) or the swap area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageId {
    pub seed: u64,
    pub inode: u64,
    pub index: u32,
    pub version: u32,
}

pub fn fill(page: &mut Page, id: PageId) {
    page[0..8].copy_from_slice(&MAGIC.to_le_bytes());
    page[8..16].copy_from_slice(&id.seed.to_le_bytes());
    page[16..24].copy_from_slice(&id.inode.to_le_bytes());
    page[24..28].copy_from_slice(&id.index.to_le_bytes());
    page[28..32].copy_from_slice(&id.version.to_le_bytes());
    let mut s =
        mix(id.seed ^ mix(id.inode ^ mix(u64::from(id.index) << 32 | u64::from(id.version))));
    if TEXT.load(Ordering::Relaxed) {
        text_body(&mut page[32..], s);
        return;
    }
    for chunk in page[32..].chunks_exact_mut(8) {
        s = mix(s);
        chunk.copy_from_slice(&s.to_le_bytes());
    }
}

/// What a page claims to be (its header), if it has a valid header.
pub fn header(page: &Page) -> Option<PageId> {
    let u64_at = |o: usize| u64::from_le_bytes(page[o..o + 8].try_into().expect("8"));
    let u32_at = |o: usize| u32::from_le_bytes(page[o..o + 4].try_into().expect("4"));
    (u64_at(0) == MAGIC).then(|| PageId {
        seed: u64_at(8),
        inode: u64_at(16),
        index: u32_at(24),
        version: u32_at(28),
    })
}

/// How a returned page compares with the expected one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Ok,
    /// The right page, but an older (or other) version.
    Stale {
        got: u32,
    },
    /// Another page, or garbage.
    Corrupt,
}

pub fn check(page: &Page, want: PageId, scratch: &mut Page) -> Check {
    fill(scratch, want);
    if page[..] == scratch[..] {
        return Check::Ok;
    }
    match header(page) {
        Some(h) if h.seed == want.seed && h.inode == want.inode && h.index == want.index => {
            let mut again = [0u8; PAGE_SIZE];
            fill(&mut again, h);
            if again[..] == page[..] {
                Check::Stale { got: h.version }
            } else {
                Check::Corrupt
            }
        }
        _ => Check::Corrupt,
    }
}

/// A small xorshift generator for the workload.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(mix(seed) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_stale_and_corrupt() {
        let id = PageId {
            seed: 1,
            inode: 2,
            index: 3,
            version: 4,
        };
        let mut p = [0u8; PAGE_SIZE];
        let mut s = [0u8; PAGE_SIZE];
        fill(&mut p, id);
        assert_eq!(check(&p, id, &mut s), Check::Ok);
        assert_eq!(
            check(&p, PageId { version: 5, ..id }, &mut s),
            Check::Stale { got: 4 }
        );
        assert_eq!(check(&p, PageId { inode: 9, ..id }, &mut s), Check::Corrupt);
        p[100] ^= 1;
        assert_eq!(check(&p, id, &mut s), Check::Corrupt);
    }

    #[test]
    fn text_bodies_differ_per_page_and_compress() {
        let id = PageId {
            seed: 1,
            inode: 2,
            index: 3,
            version: 4,
        };
        let (mut a, mut b) = ([0u8; PAGE_SIZE], [0u8; PAGE_SIZE]);
        text_body(&mut a[32..], 7);
        text_body(&mut b[32..], 8);
        assert_ne!(a[..], b[..]);
        // Printable words only, no run of one byte (not a same-filled page).
        assert!(a[32..]
            .iter()
            .all(|&c| c == b'\n' || (0x20..0x7f).contains(&c)));
        let z = lz4_flex::block::compress(&a);
        assert!(z.len() < PAGE_SIZE * 2 / 5, "{} bytes", z.len());
        // Deterministic: the same id gives the same page.
        fill(&mut a, id);
        fill(&mut b, id);
        assert_eq!(a[..], b[..]);
    }
}
