//! A saved client image: what `tmem save` writes and `tmem restore` reads, so a guest's
//! persistent pages can move from one tmemd to another (another host, or the same host after
//! a domain id change).
//!
//! An image comes from a file an administrator hands us, possibly truncated, corrupted or not
//! an image at all, so [`ImageReader`] is the one place that validates it: every length is
//! bounded before anything is allocated, every page names a pool the header declared, the
//! counts must add up, and the CRC-32 of the whole stream is checked at the end. The caller
//! stages what it reads and commits only when [`ImageReader::next_page`] has returned
//! `Ok(None)` (the trailer matched).
//!
//! Layout, little-endian throughout:
//! ```text
//! header   magic "TMEMIMG\0", version u32, identity (u16 length + UTF-8), instance u64,
//!          name (u16 length + UTF-8), pool count u32, page count u64
//! pools    per pool: kind u32 (0 private persistent), uuid 2 x u64, pages u64
//! pages    per page: pool u32 (index in the pool table), form u32 (0 data, 1 same-filled,
//!          2 gone), oid 3 x u64, index u32, then 4096 data bytes (form 0), the u64 fill word
//!          (form 1) or nothing (form 2)
//! trailer  magic "TMEMEND\0", page count u64, CRC-32 (IEEE) u32 of every byte before it
//! ```

use std::io::{self, Read, Write};

/// The page size every image carries.
pub const PAGE_SIZE: usize = 4096;
/// Image format version this crate writes and reads.
pub const VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"TMEMIMG\0";
const END: &[u8; 8] = b"TMEMEND\0";
/// Longest identity or name text accepted.
pub const MAX_TEXT: usize = 256;
/// Most pools one image may carry (a client has far fewer).
pub const MAX_POOLS: u32 = 1024;

/// The kind of a saved pool. Only persistent pools move: ephemeral pages may be dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolKindCode {
    PrivatePersistent,
}

/// One saved pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePool {
    pub kind: PoolKindCode,
    pub uuid: [u64; 2],
    /// Pages of this pool in the image.
    pub pages: u64,
}

/// What an image says about the client it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageHeader {
    /// The client's identity as tmemd writes it (`7`, `local:1000:7`, ...).
    pub identity: String,
    /// The client's instance (a guest reattaches by identity and instance).
    pub instance: u64,
    pub name: String,
    pub pools: Vec<ImagePool>,
    /// Pages in the whole image.
    pub pages: u64,
}

/// A page's contents in an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageData {
    Data(Box<[u8; PAGE_SIZE]>),
    /// One 8-byte word repeated over the page (zero included).
    Filled(u64),
    /// Flushed by the guest while the image was written, after the header counted it: a
    /// restore must not bring it back (that would serve data the guest threw away).
    Gone,
}

/// One saved page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePage {
    /// Index into [`ImageHeader::pools`].
    pub pool: u32,
    pub oid: [u64; 3],
    pub index: u32,
    pub data: PageData,
}

/// Why an image was not accepted. Each message says what is wrong with the file.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("not a tmem image (wrong magic number): was this file written by `tmem save`?")]
    Foreign,
    #[error("tmem image format version {0} is not supported (this tmemd reads version {VERSION})")]
    Version(u32),
    #[error("the image is truncated ({0}): was the save interrupted, or the copy cut short?")]
    Truncated(&'static str),
    #[error("the image is corrupt: {0}")]
    Corrupt(String),
    #[error("the image is corrupt: checksum {found:08x} where {expected:08x} was recorded")]
    Checksum { expected: u32, found: u32 },
    #[error("reading the image failed: {0}")]
    Io(#[source] io::Error),
}

/// Writes an image; the caller announces the header (with exact counts) first.
#[derive(Debug)]
pub struct ImageWriter<W: Write> {
    out: W,
    crc: crc32fast::Hasher,
    left: Vec<u64>,
    written: u64,
}

impl<W: Write> ImageWriter<W> {
    /// Write the header. Its page counts are a promise [`ImageWriter::finish`] checks.
    pub fn new(out: W, header: &ImageHeader) -> io::Result<ImageWriter<W>> {
        let invalid = |m: &str| io::Error::new(io::ErrorKind::InvalidInput, m.to_string());
        if header.identity.len() > MAX_TEXT || header.name.len() > MAX_TEXT {
            return Err(invalid("identity or name longer than 256 bytes"));
        }
        if header.pools.len() > MAX_POOLS as usize {
            return Err(invalid("too many pools for one image"));
        }
        if header.pools.iter().map(|p| p.pages).sum::<u64>() != header.pages {
            return Err(invalid("the pools' page counts do not add up to the total"));
        }
        let mut w = ImageWriter {
            out,
            crc: crc32fast::Hasher::new(),
            left: header.pools.iter().map(|p| p.pages).collect(),
            written: 0,
        };
        let mut h = Vec::with_capacity(64 + header.pools.len() * 32);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&VERSION.to_le_bytes());
        let text = |h: &mut Vec<u8>, t: &str| {
            h.extend_from_slice(&(t.len() as u16).to_le_bytes());
            h.extend_from_slice(t.as_bytes());
        };
        text(&mut h, &header.identity);
        h.extend_from_slice(&header.instance.to_le_bytes());
        text(&mut h, &header.name);
        h.extend_from_slice(&(header.pools.len() as u32).to_le_bytes());
        h.extend_from_slice(&header.pages.to_le_bytes());
        for p in &header.pools {
            let PoolKindCode::PrivatePersistent = p.kind;
            h.extend_from_slice(&0u32.to_le_bytes());
            h.extend_from_slice(&p.uuid[0].to_le_bytes());
            h.extend_from_slice(&p.uuid[1].to_le_bytes());
            h.extend_from_slice(&p.pages.to_le_bytes());
        }
        w.put(&h)?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc.update(bytes);
        self.out.write_all(bytes)
    }

    /// Write one page of pool `pool` (an index into the header's pools).
    pub fn page(&mut self, page: &ImagePage) -> io::Result<()> {
        let left = self
            .left
            .get_mut(page.pool as usize)
            .filter(|l| **l > 0)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "more pages than the header announced for this pool",
                )
            })?;
        *left -= 1;
        let mut rec = [0u8; 36];
        rec[0..4].copy_from_slice(&page.pool.to_le_bytes());
        let form: u32 = match page.data {
            PageData::Data(_) => 0,
            PageData::Filled(_) => 1,
            PageData::Gone => 2,
        };
        rec[4..8].copy_from_slice(&form.to_le_bytes());
        for (i, w) in page.oid.iter().enumerate() {
            rec[8 + 8 * i..16 + 8 * i].copy_from_slice(&w.to_le_bytes());
        }
        rec[32..36].copy_from_slice(&page.index.to_le_bytes());
        self.put(&rec)?;
        match &page.data {
            PageData::Data(d) => self.put(&d[..])?,
            PageData::Filled(word) => self.put(&word.to_le_bytes())?,
            PageData::Gone => {}
        }
        self.written += 1;
        Ok(())
    }

    /// Write the trailer; fails if fewer pages were written than announced.
    pub fn finish(mut self) -> io::Result<W> {
        if self.left.iter().any(|&l| l != 0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "fewer pages written than the header announced",
            ));
        }
        let mut t = [0u8; 20];
        t[0..8].copy_from_slice(END);
        t[8..16].copy_from_slice(&self.written.to_le_bytes());
        self.crc.update(&t[..16]);
        let crc = self.crc.clone().finalize();
        t[16..20].copy_from_slice(&crc.to_le_bytes());
        self.out.write_all(&t)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Reads and validates an image, page by page.
#[derive(Debug)]
pub struct ImageReader<R: Read> {
    input: R,
    crc: crc32fast::Hasher,
    left: Vec<u64>,
    total_left: u64,
    read: u64,
    done: bool,
}

impl<R: Read> ImageReader<R> {
    /// Read and check the header.
    pub fn new(input: R) -> Result<(ImageHeader, ImageReader<R>), ImageError> {
        let mut r = ImageReader {
            input,
            crc: crc32fast::Hasher::new(),
            left: Vec::new(),
            total_left: 0,
            read: 0,
            done: false,
        };
        let mut magic = [0u8; 8];
        r.take(&mut magic, "header")?;
        if &magic != MAGIC {
            return Err(ImageError::Foreign);
        }
        let version = r.u32("header")?;
        if version != VERSION {
            return Err(ImageError::Version(version));
        }
        let identity = r.text("identity")?;
        let instance = r.u64("header")?;
        let name = r.text("name")?;
        let npools = r.u32("header")?;
        if npools > MAX_POOLS {
            return Err(ImageError::Corrupt(format!(
                "{npools} pools (at most {MAX_POOLS})"
            )));
        }
        let pages = r.u64("header")?;
        let mut pools = Vec::with_capacity(npools as usize);
        for _ in 0..npools {
            let kind = match r.u32("pool table")? {
                0 => PoolKindCode::PrivatePersistent,
                k => return Err(ImageError::Corrupt(format!("unknown pool kind {k}"))),
            };
            let uuid = [r.u64("pool table")?, r.u64("pool table")?];
            let n = r.u64("pool table")?;
            pools.push(ImagePool {
                kind,
                uuid,
                pages: n,
            });
        }
        let sum = pools
            .iter()
            .try_fold(0u64, |a, p| a.checked_add(p.pages))
            .ok_or_else(|| ImageError::Corrupt("pool page counts overflow".into()))?;
        if sum != pages {
            return Err(ImageError::Corrupt(format!(
                "the pools hold {sum} pages but the header says {pages}"
            )));
        }
        r.left = pools.iter().map(|p| p.pages).collect();
        r.total_left = pages;
        let header = ImageHeader {
            identity,
            instance,
            name,
            pools,
            pages,
        };
        Ok((header, r))
    }

    fn take(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), ImageError> {
        self.input.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => ImageError::Truncated(what),
            _ => ImageError::Io(e),
        })?;
        self.crc.update(buf);
        Ok(())
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, ImageError> {
        let mut b = [0u8; 4];
        self.take(&mut b, what)?;
        Ok(u32::from_le_bytes(b))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, ImageError> {
        let mut b = [0u8; 8];
        self.take(&mut b, what)?;
        Ok(u64::from_le_bytes(b))
    }
    fn text(&mut self, what: &'static str) -> Result<String, ImageError> {
        let mut b = [0u8; 2];
        self.take(&mut b, what)?;
        let len = u16::from_le_bytes(b) as usize;
        if len > MAX_TEXT {
            return Err(ImageError::Corrupt(format!(
                "{what} of {len} bytes (at most {MAX_TEXT})"
            )));
        }
        let mut t = vec![0u8; len];
        self.take(&mut t, what)?;
        String::from_utf8(t).map_err(|_| ImageError::Corrupt(format!("{what} is not UTF-8")))
    }

    /// Pages read so far.
    pub fn pages_read(&self) -> u64 {
        self.read
    }

    /// The next page, or `Ok(None)` once the trailer has been read and every count and the
    /// checksum matched. Only then is the image good.
    pub fn next_page(&mut self) -> Result<Option<ImagePage>, ImageError> {
        if self.done {
            return Ok(None);
        }
        if self.total_left == 0 {
            return self.trailer().map(|()| None);
        }
        let pool = self.u32("page record")?;
        let left = self.left.get_mut(pool as usize).ok_or_else(|| {
            ImageError::Corrupt(format!("a page names pool {pool}, not in the pool table"))
        })?;
        if *left == 0 {
            return Err(ImageError::Corrupt(format!(
                "more pages for pool {pool} than its table entry says"
            )));
        }
        *left -= 1;
        self.total_left -= 1;
        let form = self.u32("page record")?;
        let oid = [
            self.u64("page record")?,
            self.u64("page record")?,
            self.u64("page record")?,
        ];
        let index = self.u32("page record")?;
        let data = match form {
            0 => {
                let mut d = Box::new([0u8; PAGE_SIZE]);
                self.take(&mut d[..], "page data")?;
                PageData::Data(d)
            }
            1 => PageData::Filled(self.u64("page data")?),
            2 => PageData::Gone,
            f => return Err(ImageError::Corrupt(format!("unknown page form {f}"))),
        };
        self.read += 1;
        Ok(Some(ImagePage {
            pool,
            oid,
            index,
            data,
        }))
    }

    fn trailer(&mut self) -> Result<(), ImageError> {
        let mut end = [0u8; 8];
        self.take(&mut end, "trailer")?;
        if &end != END {
            return Err(ImageError::Corrupt(
                "more pages than the header announced, or a damaged trailer".into(),
            ));
        }
        let n = self.u64("trailer")?;
        if n != self.read {
            return Err(ImageError::Corrupt(format!(
                "the trailer counts {n} pages, {} were read",
                self.read
            )));
        }
        let found = self.crc.clone().finalize();
        let mut c = [0u8; 4];
        self.input.read_exact(&mut c).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => ImageError::Truncated("trailer"),
            _ => ImageError::Io(e),
        })?;
        let expected = u32::from_le_bytes(c);
        if expected != found {
            return Err(ImageError::Checksum { expected, found });
        }
        // Nothing may follow: a concatenation or a longer file is not this image.
        let mut extra = [0u8; 1];
        match self.input.read(&mut extra) {
            Ok(0) => {}
            Ok(_) => return Err(ImageError::Corrupt("bytes after the trailer".into())),
            Err(e) => return Err(ImageError::Io(e)),
        }
        self.done = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
