//! The spill file: a sparse file of the disk's size, page `i` at byte `4096·i`. A hole (or
//! a run of zeroes) is an absent page. Blocking I/O: `pread`/`pwrite` go through the page
//! cache and normally return at once, but can wait for writeback; `fdatasync` waits for
//! the device and is only ever called through [`SpillSync`], which a worker serving other
//! guests must hand to a thread that may block.

use crate::bits::Bits;
use nix::errno::Errno;
use nix::fcntl::{fallocate, FallocateFlags};
use nix::unistd::{lseek, Whence};
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tmem_store::{Page, PAGE_SIZE};

const PS: u64 = PAGE_SIZE as u64;

#[derive(Debug)]
pub(crate) struct SpillFile {
    file: Arc<File>,
    path: PathBuf,
    pages: u64,
    /// Written or punched since the last successful `fdatasync`.
    dirty: Arc<AtomicBool>,
}

/// What opening found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    /// No file was there (or `fresh` asked for an empty one).
    New,
    Existing,
}

impl SpillFile {
    /// Open (creating, mode 0600) the spill file of a disk of `pages` pages. `fresh`: its
    /// content is thrown away (a new disk). An existing file of another size is refused.
    pub(crate) fn open(
        path: &Path,
        pages: u64,
        fresh: bool,
    ) -> Result<(SpillFile, Found), crate::OpenError> {
        let open_err = |source| crate::OpenError::SpillOpen {
            path: path.to_owned(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(open_err)?;
        let want = pages * PS;
        let have = file.metadata().map_err(open_err)?.len();
        let found = if fresh || have == 0 {
            // Truncating to 0 first frees every old block, then the file is one big hole.
            file.set_len(0).map_err(open_err)?;
            file.set_len(want).map_err(open_err)?;
            Found::New
        } else if have != want {
            return Err(crate::OpenError::SpillSize {
                path: path.to_owned(),
                have,
                want,
            });
        } else {
            Found::Existing
        };
        Ok((
            SpillFile {
                file: Arc::new(file),
                path: path.to_owned(),
                pages,
                dirty: Arc::new(AtomicBool::new(false)),
            },
            found,
        ))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn read(&self, page: u64, dst: &mut Page) -> io::Result<()> {
        self.file.read_exact_at(dst, page * PS)
    }

    pub(crate) fn write(&self, page: u64, src: &Page) -> io::Result<()> {
        let r = self.file.write_all_at(src, page * PS);
        // After the write: a sync that saw the flag set covers it (see `SpillSync::sync`).
        self.dirty.store(true, Ordering::Release);
        r
    }

    /// Make pages `r` read as zeroes and free their blocks.
    pub(crate) fn punch(&self, r: Range<u64>) -> io::Result<()> {
        let r = r.start..r.end.min(self.pages);
        if r.is_empty() {
            return Ok(());
        }
        let (off, len) = ((r.start * PS) as i64, ((r.end - r.start) * PS) as i64);
        let r = match fallocate(
            self.file.as_raw_fd(),
            FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
            off,
            len,
        ) {
            Ok(()) => Ok(()),
            // A file system without hole punching: zeroes are what a hole reads as.
            Err(Errno::EOPNOTSUPP) => {
                let zero = [0u8; PAGE_SIZE];
                r.into_iter()
                    .try_for_each(|p| self.file.write_all_at(&zero, p * PS))
            }
            Err(e) => Err(e.into()),
        };
        self.dirty.store(true, Ordering::Release);
        r
    }

    /// Mark in `bits` every page that may hold data (every page not inside a hole). A file
    /// system that cannot tell holes apart has every page marked, which is only slower.
    pub(crate) fn scan(&self, bits: &mut Bits) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        let end = (self.pages * PS) as i64;
        let mut pos = 0i64;
        while pos < end {
            let data = match lseek(fd, pos, Whence::SeekData) {
                Ok(d) => d,
                Err(Errno::ENXIO) => break,
                Err(Errno::EINVAL) | Err(Errno::EOPNOTSUPP) => {
                    bits.set_all();
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            };
            let hole = match lseek(fd, data, Whence::SeekHole) {
                Ok(h) => h.min(end),
                Err(e) => return Err(e.into()),
            };
            bits.set_range(data as u64 / PS..(hole as u64).div_ceil(PS));
            pos = hole.max(data + 1);
        }
        Ok(())
    }

    pub(crate) fn dirty(&self) -> bool {
        self.dirty.load(Ordering::Acquire)
    }

    /// A handle that makes this file durable, movable to a thread that may block.
    pub(crate) fn syncer(&self) -> SpillSync {
        SpillSync {
            file: Arc::clone(&self.file),
            dirty: Arc::clone(&self.dirty),
        }
    }
}

/// Makes a disk's spilled data durable (`fdatasync`). Cheap to clone; blocking to use: a
/// worker that polls other guests' rings must not call [`SpillSync::sync`] itself.
#[derive(Debug, Clone)]
pub struct SpillSync {
    file: Arc<File>,
    dirty: Arc<AtomicBool>,
}

impl SpillSync {
    /// Whether anything was written or punched since the last successful sync.
    pub fn pending(&self) -> bool {
        self.dirty.load(Ordering::Acquire)
    }

    /// `fdatasync` the spill file if anything changed since the last successful call. Covers
    /// every write that returned before this call started. Blocks.
    pub fn sync(&self) -> io::Result<()> {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        self.file.sync_data().inspect_err(|_| {
            self.dirty.store(true, Ordering::Release);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::TempDir;

    #[test]
    fn pages_holes_scan_and_sync() {
        for base in ["/dev/shm", "/tmp"] {
            if !Path::new(base).is_dir() {
                continue;
            }
            let dir = TempDir::new_in(Path::new(base), "spill").unwrap();
            let path = dir.0.join("t.spill");
            let (f, found) = SpillFile::open(&path, 200, false).unwrap();
            assert_eq!(found, Found::New);
            let mut a = [0u8; PAGE_SIZE];
            a[100] = 7;
            for p in [3, 4, 100, 199] {
                f.write(p, &a).unwrap();
            }
            assert!(f.dirty());
            f.punch(4..5).unwrap();
            f.punch(199..400).unwrap(); // clipped to the file
            let mut got = [1u8; PAGE_SIZE];
            f.read(4, &mut got).unwrap();
            assert_eq!(got, [0; PAGE_SIZE], "a punched page reads zeroes ({base})");
            f.read(100, &mut got).unwrap();
            assert_eq!(got, a);
            let mut bits = Bits::new(200);
            f.scan(&mut bits).unwrap();
            // A file system may report more as data than was written, never less.
            assert!(bits.get(3) && bits.get(100), "{base}");
            if base == "/dev/shm" {
                assert_eq!(bits.ones(), 2, "tmpfs reports holes per page");
            }
            let sync = f.syncer();
            sync.sync().unwrap();
            assert!(!sync.pending() && !f.dirty());
            drop(f);
            let (f, found) = SpillFile::open(&path, 200, false).unwrap();
            assert_eq!(found, Found::Existing);
            f.read(3, &mut got).unwrap();
            assert_eq!(got, a);
            assert!(matches!(
                SpillFile::open(&path, 201, false),
                Err(crate::OpenError::SpillSize { have, want, .. }) if have == 200 * PS && want == 201 * PS
            ));
            let (f, found) = SpillFile::open(&path, 201, true).unwrap();
            assert_eq!(found, Found::New);
            f.read(3, &mut got).unwrap();
            assert_eq!(got, [0; PAGE_SIZE], "a fresh file is empty");
        }
    }
}
