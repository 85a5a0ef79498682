//! A cleancache-like API over the pool map: clean page cache of filesystems, ephemeral pools.

use std::sync::Arc;

use tmem_abi::{Oid, Page, PageKey, PoolKind};

use crate::client::{Client, Outcome};
use crate::pool::PoolHandle;
use crate::FrontError;

/// A file's key inside a filesystem (Linux's 24-byte `cleancache_filekey`): the object id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FileKey(pub [u64; 3]);

impl FileKey {
    /// The key of an inode number (what most filesystems use).
    pub const fn from_ino(ino: u64) -> FileKey {
        FileKey([ino, 0, 0])
    }
}

/// Cleancache front end. Pool handles are fake until a backend maps them.
#[derive(Debug, Clone)]
pub struct Cleancache {
    client: Arc<Client>,
}

/// A page offset that does not fit tmem's 32-bit index is never sent (as Linux's shim did).
fn key(k: FileKey, index: u64) -> Option<PageKey> {
    Some(PageKey {
        oid: Oid(k.0),
        index: u32::try_from(index).ok()?,
    })
}

impl Cleancache {
    pub fn new(client: Arc<Client>) -> Cleancache {
        Cleancache { client }
    }

    pub fn client(&self) -> &Arc<Client> {
        &self.client
    }

    /// Mount of a private filesystem: a private ephemeral pool.
    pub fn init_fs(&self) -> Result<PoolHandle, FrontError> {
        self.client.create_pool(PoolKind::PrivateEphemeral, None)
    }

    /// Mount of a filesystem shared by uuid (e.g. a cluster filesystem): a shared ephemeral
    /// pool. The uuid is copied. With a backend connected, a refusal (not authorised) is
    /// returned now; otherwise it is reported later on the handle ([`Client::pools`]).
    pub fn init_shared_fs(&self, uuid: [u8; 16]) -> Result<PoolHandle, FrontError> {
        self.client
            .create_pool(PoolKind::SharedEphemeral, Some(uuid))
    }

    /// Read: `true` on a hit (the page was filled in).
    pub fn get_page(&self, fs: PoolHandle, file: FileKey, index: u64, page: &mut Page) -> bool {
        match key(file, index) {
            Some(k) => self.client.get(fs, k, page) == Outcome::Hit,
            None => false,
        }
    }

    /// Eviction of a clean page. The outcome is informational (cleancache puts may be dropped).
    pub fn put_page(&self, fs: PoolHandle, file: FileKey, index: u64, page: &Page) -> Outcome {
        match key(file, index) {
            Some(k) => self.client.put(fs, k, page),
            None => Outcome::Dropped,
        }
    }

    /// A page was written or dropped: its cached copy must go.
    pub fn invalidate_page(&self, fs: PoolHandle, file: FileKey, index: u64) {
        if let Some(k) = key(file, index) {
            self.client.flush_page(fs, k);
        }
    }

    /// A file was truncated or deleted.
    pub fn invalidate_inode(&self, fs: PoolHandle, file: FileKey) {
        self.client.flush_object(fs, Oid(file.0));
    }

    /// Unmount. A pool that never reached a backend is forgotten locally only.
    pub fn invalidate_fs(&self, fs: PoolHandle) -> Result<(), FrontError> {
        self.client.destroy_pool(fs)
    }
}
