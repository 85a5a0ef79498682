use super::*;
use std::io::{Read, Seek, SeekFrom, Write};

const GEO: Geometry = Geometry {
    nframes: 64,
    nxrecs: 16,
    npools: 8,
};

fn reopen(m: &PageMemory) -> PageFile {
    PageFile::from_fd(m.file().try_clone_fd().unwrap(), "test")
}

fn page_rec(slot: u32, index: u32, seq: u64) -> PageRecord {
    PageRecord {
        pool_slot: slot,
        flags: 0,
        oid: [1, 2, 3],
        index,
        seq,
        fill: 0,
    }
}

#[test]
fn a_new_file_is_formatted_and_its_records_and_pages_survive_a_reopen() {
    let (m, how) = PageMemory::open(PageFile::memfd("t").unwrap(), GEO).unwrap();
    assert_eq!(how, Opened::Formatted);
    assert_eq!(m.file().len().unwrap(), file_len(GEO));
    let pool = PoolRecord {
        owner_tag: 1,
        owner_a: 7,
        owner_b: 0,
        instance: 42,
        pool_index: 3,
        kind: 2,
        uuid: [5, 6],
        gen: 9,
    };
    m.write_pool(2, &pool);
    m.lock_frame(5).fill(0xab);
    let seq = m.next_seq();
    m.publish_frame(5, &page_rec(2, 77, seq));
    m.publish_xrec(
        3,
        &PageRecord {
            flags: page_flags::ZERO,
            ..page_rec(2, 78, m.next_seq())
        },
    );
    let file = reopen(&m);
    drop(m);

    let (m, how) = PageMemory::open(
        file,
        Geometry {
            nframes: 999,
            ..GEO
        },
    )
    .unwrap();
    assert_eq!(
        how,
        Opened::Existing {
            minor: FORMAT_MINOR
        }
    );
    assert_eq!(m.geometry(), GEO, "an existing file keeps its own geometry");
    let s = m.scan();
    assert_eq!(s.pools, vec![(2, pool)]);
    assert_eq!(s.frames, vec![(5, page_rec(2, 77, seq))]);
    assert_eq!(s.xrecs.len(), 1);
    assert_eq!(s.xrecs[0].1.flags, page_flags::ZERO);
    assert_eq!(s.torn, 0);
    assert!(m.lock_frame(5).iter().all(|&b| b == 0xab));
    assert!(
        m.next_seq() > seq + 1,
        "sequence numbers continue above the file's"
    );
}

#[test]
fn a_record_with_a_wrong_seal_is_torn_and_cleared() {
    let (m, _) = PageMemory::open(PageFile::memfd("t").unwrap(), GEO).unwrap();
    m.publish_frame(1, &page_rec(0, 1, 1));
    m.publish_frame(2, &page_rec(0, 2, 2));
    let file = reopen(&m);
    drop(m);
    // Change one field of frame 2's record behind the seal's back, as a cut-short rewrite
    // that did not clear the seal first would.
    let mut f = std::fs::File::from(file.try_clone_fd().unwrap());
    let off = layout::Layout::new(GEO).frame_hdrs as u64 + 2 * 64 + 8 * 5;
    f.seek(SeekFrom::Start(off)).unwrap();
    f.write_all(&3u64.to_le_bytes()).unwrap();
    let (m, _) = PageMemory::open(file, GEO).unwrap();
    let s = m.scan();
    assert_eq!(s.frames.len(), 1);
    assert_eq!(s.frames[0].0, 1);
    assert_eq!(s.torn, 1);
    assert_eq!(m.scan().torn, 0, "the torn record was cleared");
}

#[test]
fn cleared_records_are_gone() {
    let (m, _) = PageMemory::open(PageFile::memfd("t").unwrap(), GEO).unwrap();
    m.publish_frame(1, &page_rec(0, 1, 1));
    m.write_pool(
        0,
        &PoolRecord {
            owner_tag: 0,
            owner_a: 0,
            owner_b: 0,
            instance: 0,
            pool_index: 0,
            kind: 0,
            uuid: [1, 1],
            gen: 1,
        },
    );
    m.clear_frame(1);
    m.clear_pool(0);
    let s = m.scan();
    assert!(s.frames.is_empty() && s.pools.is_empty());
}

fn bytes_of(file: &PageFile) -> Vec<u8> {
    let mut f = std::fs::File::from(file.try_clone_fd().unwrap());
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut v = Vec::new();
    f.read_to_end(&mut v).unwrap();
    v
}

#[test]
fn a_foreign_file_is_refused_and_left_as_it_was() {
    let file = PageFile::memfd("t").unwrap();
    let mut f = std::fs::File::from(file.try_clone_fd().unwrap());
    f.write_all(&[7u8; 10000]).unwrap();
    let before = bytes_of(&file);
    let e = PageMemory::open(file, GEO).unwrap_err();
    assert!(matches!(e, OpenError::Foreign { len: 10000 }), "{e}");
    assert!(e.to_string().contains("not a tmemd page file"));
    let file = PageFile::from_fd(f.into(), "again");
    assert_eq!(bytes_of(&file), before);
}

#[test]
fn another_major_format_is_refused_and_left_as_it_was() {
    let (m, _) = PageMemory::open(PageFile::memfd("t").unwrap(), GEO).unwrap();
    m.lock_frame(0).fill(1);
    let file = reopen(&m);
    drop(m);
    // A newer tmemd's file: major version 2 (the checksum is not even looked at).
    let mut f = std::fs::File::from(file.try_clone_fd().unwrap());
    f.seek(SeekFrom::Start(8)).unwrap();
    f.write_all(&((2u64 << 32) | 5).to_le_bytes()).unwrap();
    let before = bytes_of(&file);
    let e = PageMemory::open(file, GEO).unwrap_err();
    assert!(
        matches!(
            e,
            OpenError::Incompatible {
                found_major: 2,
                found_minor: 5
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("format 2.5"), "{e}");
    let file = PageFile::from_fd(f.into(), "again");
    assert_eq!(bytes_of(&file), before);
}

#[test]
fn a_newer_minor_format_is_read() {
    let (m, _) = PageMemory::open(PageFile::memfd("t").unwrap(), GEO).unwrap();
    m.publish_frame(3, &page_rec(0, 1, 1));
    let file = reopen(&m);
    drop(m);
    set_minor(&file, FORMAT_MINOR + 1);
    let (m, how) = PageMemory::open(file, GEO).unwrap();
    assert_eq!(
        how,
        Opened::Existing {
            minor: FORMAT_MINOR + 1
        }
    );
    assert_eq!(m.scan().frames.len(), 1);
}

#[test]
fn a_format_cut_short_is_formatted_again() {
    // Sized but no magic yet: what a kill during formatting leaves.
    let file = PageFile::memfd("t").unwrap();
    file.set_len(file_len(GEO)).unwrap();
    let (m, how) = PageMemory::open(file, GEO).unwrap();
    assert_eq!(how, Opened::Formatted);
    // Killed after the other superblock words, before the magic.
    let file = reopen(&m);
    drop(m);
    let mut f = std::fs::File::from(file.try_clone_fd().unwrap());
    f.write_all(&0u64.to_le_bytes()).unwrap();
    let (_, how) = PageMemory::open(file, GEO).unwrap();
    assert_eq!(how, Opened::Formatted);
}

#[test]
fn populate_keeps_contents() {
    let (m, _) = PageMemory::open(PageFile::memfd("t").unwrap(), GEO).unwrap();
    m.lock_frame(63).fill(9);
    m.publish_frame(63, &page_rec(0, 1, 1));
    assert_eq!(m.populate().unwrap(), file_len(GEO));
    assert!(m.lock_frame(63).iter().all(|&b| b == 9));
    assert_eq!(m.scan().frames.len(), 1);
}

#[test]
fn a_path_file_is_created_and_reopened() {
    let dir = std::env::temp_dir().join(format!("tmem-pmem-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pages");
    let _ = std::fs::remove_file(&path);
    {
        let (m, how) = PageMemory::open(PageFile::open_path(&path).unwrap(), GEO).unwrap();
        assert_eq!(how, Opened::Formatted);
        m.lock_frame(2).fill(4);
        m.publish_frame(2, &page_rec(1, 1, 1));
    }
    let (m, how) = PageMemory::open(PageFile::open_path(&path).unwrap(), GEO).unwrap();
    assert!(matches!(how, Opened::Existing { .. }));
    assert_eq!(m.scan().frames.len(), 1);
    assert!(m.lock_frame(2).iter().all(|&b| b == 4));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_page_file_in_use_by_another_process_is_refused() {
    let dir = std::env::temp_dir().join(format!("tmem-pmem-busy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pages");
    let (m, _) = PageMemory::open(PageFile::open_path(&path).unwrap(), GEO).unwrap();
    // A second open of the path is another open file: refused while the first lives.
    let e = PageMemory::open(PageFile::open_path(&path).unwrap(), GEO).unwrap_err();
    assert!(matches!(e, OpenError::Busy), "{e}");
    // The same open file (an fd handed back by systemd's fd store) is not refused.
    let again = reopen(&m);
    drop(m);
    assert!(PageMemory::open(again, GEO).is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Rewrite the superblock's version as `minor` (resealed), as a tmemd of that format wrote it.
fn set_minor(file: &PageFile, minor: u32) {
    let mut f = std::fs::File::from(file.try_clone_fd().unwrap());
    let mut sb = [0u64; 8];
    let mut buf = [0u8; 64];
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_exact(&mut buf).unwrap();
    for (i, w) in sb.iter_mut().enumerate() {
        *w = u64::from_le_bytes(buf[i * 8..i * 8 + 8].try_into().unwrap());
    }
    sb[1] = (FORMAT_MAJOR as u64) << 32 | minor as u64;
    sb[7] = layout::seal(layout::SEED_SUPER, &sb[1..7]);
    f.seek(SeekFrom::Start(0)).unwrap();
    for w in sb {
        f.write_all(&w.to_le_bytes()).unwrap();
    }
}

#[test]
fn a_format_1_0_zero_page_record_reads_as_word_0_and_same_filled_records_keep_their_word() {
    let (m, _) = PageMemory::open(PageFile::memfd("t").unwrap(), GEO).unwrap();
    let file = reopen(&m);
    drop(m);
    set_minor(&file, 0);
    // A metadata record exactly as format 1.0 wrote a zero page, word by word (seal; pool
    // slot | ZERO flag << 32; oid; index; seq; 0), written behind the crate's back.
    let words = [2u64 | 1 << 32, 1, 2, 3, 78, 5, 0];
    let mut f = std::fs::File::from(file.try_clone_fd().unwrap());
    f.seek(SeekFrom::Start(
        layout::Layout::new(GEO).xrecs as u64 + 3 * 64,
    ))
    .unwrap();
    f.write_all(&layout::seal(layout::SEED_PAGE, &words).to_le_bytes())
        .unwrap();
    for w in words {
        f.write_all(&w.to_le_bytes()).unwrap();
    }
    let (m, how) = PageMemory::open(file, GEO).unwrap();
    assert_eq!(how, Opened::Existing { minor: 0 });
    let s = m.scan();
    assert_eq!(
        s.xrecs,
        vec![(
            3,
            PageRecord {
                flags: page_flags::ZERO,
                ..page_rec(2, 78, 5)
            }
        )]
    );
    assert_eq!(s.xrecs[0].1.fill, 0);

    // A same-filled record of this format keeps its word across a reopen.
    let same = PageRecord {
        flags: page_flags::SAME,
        fill: 0xfeed_f00d_dead_beef,
        ..page_rec(2, 79, m.next_seq())
    };
    m.publish_xrec(4, &same);
    let file = reopen(&m);
    drop(m);
    let (m, _) = PageMemory::open(file, GEO).unwrap();
    let s = m.scan();
    assert_eq!(s.xrecs.len(), 2);
    assert_eq!(s.xrecs[1], (4, same));
}
