//! Swap-disk data on Xen: [`GrantCopyIo`] moves a request's segments between the guest's
//! granted pages and local pages with one gntdev grant copy per request (no mapping, so a
//! grant the guest revokes or never made fails that request only).

use std::sync::Arc;

use tmem_swapdisk::{Page, Segment, SegmentError, SegmentIo};
use tmem_xen::{CopyError, CopySeg, Gntdev};

/// [`SegmentIo`] over grant copy, for one guest.
#[derive(Debug)]
pub struct GrantCopyIo {
    gntdev: Arc<Gntdev>,
    domid: u32,
    /// Why the last failed copy failed (for a rate-limited log line; the request is answered
    /// with an error either way).
    last_error: Option<CopyError>,
}

impl GrantCopyIo {
    pub fn new(gntdev: Arc<Gntdev>, domid: u32) -> GrantCopyIo {
        GrantCopyIo {
            gntdev,
            domid,
            last_error: None,
        }
    }

    /// The cause of the last [`SegmentError`] returned, once.
    pub fn take_last_error(&mut self) -> Option<CopyError> {
        self.last_error.take()
    }

    fn failed(&mut self, segs: &[Segment], e: CopyError) -> SegmentError {
        // An ioctl error is about no segment in particular: blame the first.
        let segment = e.segment().unwrap_or(0);
        self.last_error = Some(e);
        SegmentError {
            segment,
            gref: segs.get(segment).map_or(0, |s| s.gref),
        }
    }
}

/// The bytes of the granted page that segment `s` covers (its sectors: at most one page).
fn grant_range(s: &Segment) -> CopySeg {
    let r = s.byte_range();
    CopySeg {
        gref: s.gref,
        offset: r.start as u16,
        len: r.len() as u16,
    }
}

impl SegmentIo for GrantCopyIo {
    fn fetch(&mut self, segs: &[Segment], pages: &mut [Page]) -> Result<(), SegmentError> {
        let ranges: Vec<CopySeg> = segs.iter().map(grant_range).collect();
        let mut bufs: Vec<&mut [u8]> = segs
            .iter()
            .zip(pages.iter_mut())
            .map(|(s, p)| &mut p[s.byte_range()])
            .collect();
        let r = self.gntdev.copy_from_guest(self.domid, &ranges, &mut bufs);
        r.map_err(|e| self.failed(segs, e))
    }

    fn deliver(&mut self, segs: &[Segment], pages: &[Page]) -> Result<(), SegmentError> {
        let ranges: Vec<CopySeg> = segs.iter().map(grant_range).collect();
        let bufs: Vec<&[u8]> = segs
            .iter()
            .zip(pages)
            .map(|(s, p)| &p[s.byte_range()])
            .collect();
        let r = self.gntdev.copy_to_guest(self.domid, &ranges, &bufs);
        r.map_err(|e| self.failed(segs, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(gref: u32, first_sect: u8, last_sect: u8) -> Segment {
        Segment {
            gref,
            first_sect,
            last_sect,
        }
    }

    #[test]
    fn a_segment_copies_exactly_its_sectors() {
        assert_eq!(
            grant_range(&seg(5, 1, 3)),
            CopySeg {
                gref: 5,
                offset: 512,
                len: 1536
            }
        );
        assert_eq!(
            grant_range(&seg(6, 0, 7)),
            CopySeg {
                gref: 6,
                offset: 0,
                len: 4096
            }
        );
        assert_eq!(grant_range(&seg(7, 7, 7)).offset, 3584);
    }

    /// Without Xen the ioctl fails (ENOTTY on /dev/null): the request fails at its first
    /// segment, and the cause is kept for the log.
    #[test]
    fn a_failed_copy_names_a_segment_and_keeps_its_cause() {
        let dev = Gntdev::from_file(std::fs::File::open("/dev/null").unwrap());
        let mut io = GrantCopyIo::new(dev, 3);
        let segs = [seg(40, 0, 7), seg(41, 2, 2)];
        let mut pages = [[0u8; 4096]; 2];
        let e = io.fetch(&segs, &mut pages).unwrap_err();
        assert_eq!(
            e,
            SegmentError {
                segment: 0,
                gref: 40
            }
        );
        let cause = io.take_last_error().unwrap();
        assert!(
            matches!(&cause, CopyError::Io(e) if e.raw_os_error() == Some(libc::ENOTTY)),
            "{cause}"
        );
        assert!(io.take_last_error().is_none());
        assert_eq!(
            io.deliver(&segs[1..], &pages[1..]).unwrap_err(),
            SegmentError {
                segment: 0,
                gref: 41
            }
        );
    }
}
