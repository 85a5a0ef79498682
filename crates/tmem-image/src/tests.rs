use super::*;
use proptest::prelude::*;

fn header(pages_per_pool: &[u64]) -> ImageHeader {
    ImageHeader {
        identity: "local:1000:7".into(),
        instance: 0x1234_5678_9abc,
        name: "guest".into(),
        pools: pages_per_pool
            .iter()
            .enumerate()
            .map(|(i, &n)| ImagePool {
                kind: PoolKindCode::PrivatePersistent,
                uuid: [i as u64 + 1, 0xfeed],
                pages: n,
            })
            .collect(),
        pages: pages_per_pool.iter().sum(),
    }
}

fn page(pool: u32, i: u32) -> ImagePage {
    let data = if i.is_multiple_of(3) {
        PageData::Filled(u64::from(i) * 0x0101)
    } else if i % 5 == 4 {
        PageData::Gone
    } else {
        let mut d = Box::new([0u8; PAGE_SIZE]);
        for (j, b) in d.iter_mut().enumerate() {
            *b = (j as u32 ^ i ^ pool) as u8;
        }
        PageData::Data(d)
    };
    ImagePage {
        pool,
        oid: [u64::from(pool), 2, 3],
        index: i,
        data,
    }
}

fn image(pages_per_pool: &[u64]) -> (ImageHeader, Vec<ImagePage>, Vec<u8>) {
    let h = header(pages_per_pool);
    let mut pages = Vec::new();
    for (p, &n) in pages_per_pool.iter().enumerate() {
        for i in 0..n as u32 {
            pages.push(page(p as u32, i));
        }
    }
    let mut w = ImageWriter::new(Vec::new(), &h).unwrap();
    for p in &pages {
        w.page(p).unwrap();
    }
    (h, pages, w.finish().unwrap())
}

fn read_all(bytes: &[u8]) -> Result<(ImageHeader, Vec<ImagePage>), ImageError> {
    let (h, mut r) = ImageReader::new(bytes)?;
    let mut pages = Vec::new();
    while let Some(p) = r.next_page()? {
        pages.push(p);
    }
    Ok((h, pages))
}

#[test]
fn round_trip() {
    let (h, pages, bytes) = image(&[5, 0, 3]);
    let (h2, pages2) = read_all(&bytes).unwrap();
    assert_eq!(h, h2);
    assert_eq!(pages, pages2);
}

#[test]
fn every_truncation_is_refused() {
    let (_, _, bytes) = image(&[2, 1]);
    for cut in 0..bytes.len() {
        let e = read_all(&bytes[..cut]).expect_err("a cut image must not be accepted");
        assert!(matches!(e, ImageError::Truncated(_)), "cut at {cut}: {e}");
    }
}

#[test]
fn foreign_and_other_versions_are_named() {
    let (_, _, mut bytes) = image(&[1]);
    assert!(matches!(
        read_all(b"\x7fELF\x02\x01\x01\0 and so on"),
        Err(ImageError::Foreign)
    ));
    bytes[8] = 9;
    assert!(matches!(read_all(&bytes), Err(ImageError::Version(9))));
}

#[test]
fn trailing_bytes_are_refused() {
    let (_, _, mut bytes) = image(&[1]);
    bytes.push(0);
    assert!(matches!(read_all(&bytes), Err(ImageError::Corrupt(_))));
}

#[test]
fn the_writer_keeps_its_promise() {
    let h = header(&[1]);
    let w = ImageWriter::new(Vec::new(), &h).unwrap();
    assert!(w.finish().is_err(), "fewer pages than announced");
    let mut w = ImageWriter::new(Vec::new(), &h).unwrap();
    w.page(&page(0, 1)).unwrap();
    assert!(w.page(&page(0, 2)).is_err(), "more pages than announced");
    assert!(w.page(&page(1, 2)).is_err(), "a pool not in the table");
}

proptest! {
    /// Any single flipped byte is caught: by the checksum, or earlier by a check that
    /// names what it found. A corrupt image is never read back as a good one.
    #[test]
    fn any_flipped_byte_is_refused(at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let (_, _, mut bytes) = image(&[3, 2]);
        let i = at.index(bytes.len());
        bytes[i] ^= 1 << bit;
        prop_assert!(read_all(&bytes).is_err(), "flip at {} accepted", i);
    }

    /// Arbitrary bytes never panic or allocate without bound.
    #[test]
    fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = read_all(&bytes);
    }
}

/// The fuzzer's seeds are whole, good images (so it starts from inputs that reach the
/// page and trailer checks, not only the magic number).
#[test]
fn the_fuzz_seeds_are_good_images() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/image_file");
    let mut n = 0;
    for seed in ["empty", "filled-and-gone", "data-page"] {
        let bytes = std::fs::read(dir.join(seed)).unwrap();
        read_all(&bytes).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        n += 1;
    }
    assert_eq!(n, 3);
}
