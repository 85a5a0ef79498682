//! [`MockGrantPages`]: the pages a mock guest grants for its block requests' data, in a real
//! memfd. Grant reference `g` names page `g`; the guest's view and the backend's view are
//! two mappings of the same memfd, so data crosses real shared memory as it does through
//! grants on Xen.
#![allow(unsafe_code)]

use super::MemfdMem;
use crate::{SharedMem, PAGE_SIZE};
use std::io;

/// A grant reference the mock does not know, or bytes outside its page: what a failing
/// grant copy reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("grant {gref}: bytes {offset}..+{len} are not inside a granted page")]
pub struct BadGrant {
    pub gref: u32,
    pub offset: usize,
    pub len: usize,
}

/// `pages` granted pages in one memfd mapping.
#[derive(Debug)]
pub struct MockGrantPages {
    mem: MemfdMem,
    pages: usize,
}

impl MockGrantPages {
    /// A fresh zeroed memfd of `pages` pages (grant refs `0..pages`).
    pub fn create(pages: usize) -> io::Result<MockGrantPages> {
        Ok(MockGrantPages {
            mem: MemfdMem::create(pages.max(1) * PAGE_SIZE)?,
            pages,
        })
    }

    /// The other side's view: a second mapping of the same pages.
    pub fn map_again(&self) -> io::Result<MockGrantPages> {
        Ok(MockGrantPages {
            mem: self.mem.map_again()?,
            pages: self.pages,
        })
    }

    /// Number of pages (valid grant refs are below it).
    pub fn pages(&self) -> usize {
        self.pages
    }

    /// Start of `len` bytes at `offset` of page `gref`, if they lie inside it.
    fn at(&self, gref: u32, offset: usize, len: usize) -> Result<*mut u8, BadGrant> {
        let bad = BadGrant { gref, offset, len };
        let page = usize::try_from(gref).map_err(|_| bad)?;
        let end = offset.checked_add(len).ok_or(bad)?;
        if page >= self.pages || end > PAGE_SIZE {
            return Err(bad);
        }
        Ok(self.mem.base().wrapping_add(page * PAGE_SIZE + offset))
    }

    /// Copy bytes of page `gref` from `offset` on into `dst`.
    pub fn read(&self, gref: u32, offset: usize, dst: &mut [u8]) -> Result<(), BadGrant> {
        let p = self.at(gref, offset, dst.len())?;
        // SAFETY: `at` checked the bytes lie inside one page of the live mapping; `dst` is
        // private memory, so the ranges cannot overlap. The peer may write concurrently: we
        // copy whatever bytes are there and never form a reference to them.
        unsafe { std::ptr::copy_nonoverlapping(p, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    /// Copy `src` into page `gref` from `offset` on.
    pub fn write(&self, gref: u32, offset: usize, src: &[u8]) -> Result<(), BadGrant> {
        let p = self.at(gref, offset, src.len())?;
        // SAFETY: as in `read`, with the copy going the other way.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), p, src.len()) };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_views_share_bytes_and_bounds_are_checked() {
        let guest = MockGrantPages::create(2).unwrap();
        let back = guest.map_again().unwrap();
        guest.write(1, 4000, &[7u8; 96]).unwrap();
        let mut b = [0u8; 96];
        back.read(1, 4000, &mut b).unwrap();
        assert_eq!(b, [7u8; 96]);
        assert!(back.read(2, 0, &mut b).is_err());
        assert!(back.read(1, 4001, &mut b).is_err());
        assert!(back.write(u32::MAX, 0, &b).is_err());
        assert!(back.read(0, usize::MAX, &mut b).is_err());
    }
}
