//! Target `image_file`: the reader of `tmem restore`'s image files, which an administrator
//! may hand tmemd from anywhere (another host, a damaged disk, the wrong file).

use tmem_image::{ImageReader, ImageWriter};

pub fn image_file(data: &[u8]) {
    let Ok((header, mut reader)) = ImageReader::new(data) else {
        return;
    };
    let mut pages = Vec::new();
    loop {
        match reader.next_page() {
            Ok(Some(p)) => {
                assert!(
                    (p.pool as usize) < header.pools.len(),
                    "a page of pool {} got through a table of {}",
                    p.pool,
                    header.pools.len()
                );
                pages.push(p);
                assert!(
                    pages.len() as u64 <= header.pages,
                    "more pages than announced"
                );
            }
            Ok(None) => break,
            Err(_) => return,
        }
    }
    // Accepted: it must be exactly what the writer makes of the same contents.
    let mut w = ImageWriter::new(Vec::new(), &header).expect("an accepted header is writable");
    for p in &pages {
        w.page(p).expect("an accepted page is writable");
    }
    let again = w.finish().expect("an accepted image is complete");
    assert_eq!(again, data, "an accepted image does not round-trip");
}
