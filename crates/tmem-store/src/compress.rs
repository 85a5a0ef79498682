//! Page compression: the codecs, and the per-client, per-pool-kind setting.
//!
//! A page is compressed on the put path (inline, after its copy into a frame and the
//! same-filled check) when its client's setting for the pool's kind says so. The result is
//! kept only if it is at most [`Store::compress_max_bytes`](crate::Store) bytes (default
//! 3072, 75% of a page): anything bigger would save little memory and cost a decompression on
//! every get, so the page stays raw in its frame. Compressed pages live in size classes inside
//! page frames (`tmem-zalloc`); see `zpage.rs`.
//!
//! lz4 (`lz4_flex`, safe Rust, no `unsafe`) is the default; zstd (level 1, the C library
//! through the `zstd` crate, cargo feature `zstd`) is the option that packs tighter and
//! costs more CPU. Which codec made an object is kept beside it, so a client's setting may
//! change at run time without touching what is stored.

use crate::{Page, PAGE_SIZE};

/// How a pool kind's pages are compressed.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Stored raw (same-filled pages are still kept as metadata only).
    #[default]
    Off,
    Lz4,
    Zstd,
}

impl Compression {
    pub fn is_on(self) -> bool {
        self != Compression::Off
    }
    /// Parse `off`, `lz4` or `zstd` (what the config file and `tmem set -p` take).
    pub fn parse(s: &str) -> Option<Compression> {
        match s {
            "off" | "none" | "0" => Some(Compression::Off),
            "lz4" => Some(Compression::Lz4),
            "zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Compression::Off => "off",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
    pub(crate) fn code(self) -> u32 {
        match self {
            Compression::Off => 0,
            Compression::Lz4 => 1,
            Compression::Zstd => 2,
        }
    }
    pub(crate) fn from_code(c: u32) -> Compression {
        match c {
            1 => Compression::Lz4,
            2 => Compression::Zstd,
            _ => Compression::Off,
        }
    }
}

/// A client's compression setting: one per pool kind.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct ClientCompression {
    /// Private and shared ephemeral pools.
    pub ephemeral: Compression,
    /// Persistent pools.
    pub persistent: Compression,
}

impl ClientCompression {
    pub fn both(c: Compression) -> ClientCompression {
        ClientCompression {
            ephemeral: c,
            persistent: c,
        }
    }
    pub fn is_on(&self) -> bool {
        self.ephemeral.is_on() || self.persistent.is_on()
    }
    pub fn for_kind(&self, persistent: bool) -> Compression {
        if persistent {
            self.persistent
        } else {
            self.ephemeral
        }
    }
    /// The codec to try before the pool's kind is known (the put fast path compresses
    /// before it takes the metadata lock): persistent pages' codec if on, else ephemeral's.
    pub(crate) fn guess(&self) -> Compression {
        if self.persistent.is_on() {
            self.persistent
        } else {
            self.ephemeral
        }
    }
}

/// Room for a compressed page: lz4_flex wants room for its worst case (a page plus 10% and
/// a few bytes) before it starts; zstd is given only `max` bytes, so it stops early on a page
/// that does not compress.
pub(crate) const ZBUF_LEN: usize = lz4_flex::block::get_maximum_output_size(PAGE_SIZE);
pub(crate) type ZBuf = [u8; ZBUF_LEN];

/// Compress `page` with `algo` into `out`; the length if it is at most `max` bytes.
pub(crate) fn compress(
    algo: Compression,
    page: &Page,
    out: &mut ZBuf,
    max: usize,
) -> Option<usize> {
    let max = max.min(PAGE_SIZE);
    match algo {
        Compression::Off => None,
        Compression::Lz4 => lz4_flex::block::compress_into(page, out).ok(),
        Compression::Zstd => zstd_codec::compress(page, &mut out[..max]),
    }
    .filter(|&n| n > 0 && n <= max)
}

/// Decompress `input` (made by `algo`) into `out`; whether it gave exactly one page.
pub(crate) fn decompress(algo: Compression, input: &[u8], out: &mut Page) -> bool {
    match algo {
        Compression::Off => false,
        Compression::Lz4 => lz4_flex::block::decompress_into(input, out).ok() == Some(PAGE_SIZE),
        Compression::Zstd => zstd_codec::decompress(input, out),
    }
}

#[cfg(feature = "zstd")]
mod zstd_codec {
    use crate::{Page, PAGE_SIZE};
    use std::cell::RefCell;

    /// Level 1: zstd's fastest standard level (zram's default for zstd too).
    const LEVEL: i32 = 1;

    thread_local! {
        // A context per thread: making one costs more than compressing a page.
        static C: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
        static D: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
    }

    pub(super) fn compress(page: &Page, out: &mut [u8]) -> Option<usize> {
        C.with(|c| {
            let mut c = c.borrow_mut();
            if c.is_none() {
                *c = zstd::bulk::Compressor::new(LEVEL).ok();
            }
            c.as_mut()?.compress_to_buffer(&page[..], out).ok()
        })
    }

    pub(super) fn decompress(input: &[u8], out: &mut Page) -> bool {
        D.with(|d| {
            let mut d = d.borrow_mut();
            if d.is_none() {
                *d = zstd::bulk::Decompressor::new().ok();
            }
            d.as_mut()
                .and_then(|d| d.decompress_to_buffer(input, &mut out[..]).ok())
                == Some(PAGE_SIZE)
        })
    }
}

#[cfg(not(feature = "zstd"))]
mod zstd_codec {
    //! Built without zstd: a zstd setting stores pages raw.
    use crate::Page;
    pub(super) fn compress(_: &Page, _: &mut [u8]) -> Option<usize> {
        None
    }
    pub(super) fn decompress(_: &[u8], _: &mut Page) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_page() -> Page {
        let mut p = [0u8; PAGE_SIZE];
        let words = b"the quick brown fox jumps over the lazy dog; tmem stores pages. ";
        for (i, b) in p.iter_mut().enumerate() {
            *b = words[(i * 7 + i / 64) % words.len()];
        }
        p
    }

    fn noise_page(seed: u64) -> Page {
        let mut p = [0u8; PAGE_SIZE];
        let mut x = seed | 1;
        for c in p.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        p
    }

    #[test]
    fn both_codecs_round_trip_and_refuse_what_does_not_fit() {
        let algos: &[Compression] = if cfg!(feature = "zstd") {
            &[Compression::Lz4, Compression::Zstd]
        } else {
            &[Compression::Lz4]
        };
        for &a in algos {
            let p = text_page();
            let mut z = [0u8; ZBUF_LEN];
            let n = compress(a, &p, &mut z, 3072).expect("text compresses");
            assert!(n < 3072, "{a:?}: {n}");
            let mut back = [0u8; PAGE_SIZE];
            assert!(decompress(a, &z[..n], &mut back));
            assert!(back == p, "{a:?}: bytes differ");
            // Noise does not compress below the threshold: stored raw.
            assert_eq!(compress(a, &noise_page(9), &mut z, 3072), None, "{a:?}");
            // A threshold just below the real size refuses it.
            assert_eq!(compress(a, &p, &mut z, n - 1), None, "{a:?}");
            // Truncated or damaged input never yields a page.
            assert!(!decompress(a, &z[..n / 2], &mut back));
        }
        assert!(!decompress(
            Compression::Off,
            &[1, 2, 3],
            &mut [0u8; PAGE_SIZE]
        ));
    }

    #[test]
    fn settings_parse() {
        assert_eq!(Compression::parse("lz4"), Some(Compression::Lz4));
        assert_eq!(Compression::parse("zstd"), Some(Compression::Zstd));
        assert_eq!(Compression::parse("off"), Some(Compression::Off));
        assert_eq!(Compression::parse("gzip"), None);
        for c in [Compression::Off, Compression::Lz4, Compression::Zstd] {
            assert_eq!(Compression::from_code(c.code()), c);
            assert_eq!(Compression::parse(c.name()), Some(c));
        }
    }
}
