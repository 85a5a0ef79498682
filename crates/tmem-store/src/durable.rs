//! Durable page memory: a store whose frames and page records live in a page file
//! (`tmem-pmem`), rebuilt by a scan when tmemd starts again.

use std::time::Duration;

use tmem_pmem::{OpenError, PageFile};

use crate::{ClientId, Store, StoreConfig};

/// What [`Store::open_durable`] found in the page file.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Recovery {
    /// The file was new (or its formatting had never finished): nothing to recover.
    pub formatted: bool,
    /// Minor format version of the file found.
    pub format_minor: u32,
    /// Clients rebuilt (detached, waiting for their guest to reattach).
    pub clients: u32,
    /// Persistent pools rebuilt.
    pub pools: u32,
    /// Persistent pages recovered (with a frame, and all-zero ones kept as records).
    pub pages: u64,
    pub zero_pages: u64,
    /// Of two records for one page (a duplicate put cut short), the older, dropped.
    pub superseded: u64,
    /// Page records whose pool no longer exists (a destroy or flush cut short), dropped.
    pub orphans: u64,
    /// Records whose write had been cut short (invalid seal), dropped.
    pub torn: u64,
    /// Frames in the file (its geometry wins over the configured memory limit).
    pub nframes: u32,
    /// The configured limit asked for another number of frames than the file has.
    pub geometry_differs: bool,
    pub scan: Duration,
    pub rebuild: Duration,
}

/// Bytes a new page file takes for `cfg`.
pub fn page_file_len(cfg: &StoreConfig) -> u64 {
    tmem_pmem::file_len(geometry(cfg))
}

pub(crate) fn geometry(cfg: &StoreConfig) -> tmem_pmem::Geometry {
    let nframes = crate::frames_for(cfg);
    tmem_pmem::Geometry {
        nframes,
        nxrecs: nframes.max(1),
        npools: POOL_RECORDS,
    }
}

/// Persistent pools the page file can describe (64 bytes each).
pub(crate) const POOL_RECORDS: u32 = 16384;

impl Store {
    /// A store whose page memory is `file`: formatted if new, else every persistent page it
    /// holds is recovered, each client that owns one rebuilt detached (see
    /// [`Store::recovered_clients`]). Refuses (leaving the file untouched) a file it cannot
    /// read.
    pub fn open_durable(cfg: StoreConfig, file: PageFile) -> Result<(Store, Recovery), OpenError> {
        // Placeholder until durable frames land: same API, heap frames, nothing recovered.
        let _ = file;
        Ok((
            Store::new(cfg),
            Recovery {
                formatted: true,
                ..Recovery::default()
            },
        ))
    }

    /// Clients rebuilt by recovery that no guest has reattached yet, with the detach epoch
    /// to pass to [`Store::expire_detached`] when their reattach grace ends.
    pub fn recovered_clients(&self) -> Vec<(ClientId, u64)> {
        Vec::new()
    }

    /// The page file, for a durable store (to hand to systemd's fd store).
    pub fn page_file(&self) -> Option<&PageFile> {
        None
    }
}
