//! A frontswap-like API over the pool map: swap pages in one persistent pool.
//!
//! As in Linux's Xen shim, one persistent pool serves every swap type, created on the first
//! `init`; `(type, offset)` maps to object `(type << 4) | (offset & 0xf)` and index
//! `offset >> 4`. The pool map remembers which pages were stored, so a load can tell a page
//! that was never stored (`Miss`) from one the backend lost (`Lost`, never a silent miss) and
//! from one that is on an unreachable backend (`Unavailable`).

use std::sync::{Arc, Mutex};

use tmem_abi::{Oid, Page, PageKey, PoolKind, TmemError};

use crate::client::{Client, Outcome};
use crate::pool::PoolHandle;
use crate::FrontError;

const SWIZ_BITS: u32 = 4;
const SWIZ_MASK: u64 = (1 << SWIZ_BITS) - 1;

/// The result of a [`Frontswap::load`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadOutcome {
    /// The page was copied out.
    Loaded,
    /// Not in tmem: never stored, invalidated, or its store failed. Read it from disk.
    NotStored,
    /// Stored, but the backend lost it (e.g. tmemd restarted). The data is gone.
    Lost,
    /// Stored, but the backend is unreachable right now; it may come back.
    Unavailable,
    /// The backend refused the load.
    Failed(TmemError),
}

/// Frontswap front end.
#[derive(Debug)]
pub struct Frontswap {
    client: Arc<Client>,
    pool: Mutex<Option<PoolHandle>>,
}

fn key(ty: u32, offset: u64) -> Option<PageKey> {
    let obj = (u64::from(ty) << SWIZ_BITS) | (offset & SWIZ_MASK);
    Some(PageKey {
        oid: Oid([obj, 0, 0]),
        index: u32::try_from(offset >> SWIZ_BITS).ok()?,
    })
}

impl Frontswap {
    pub fn new(client: Arc<Client>) -> Frontswap {
        Frontswap {
            client,
            pool: Mutex::new(None),
        }
    }

    pub fn client(&self) -> &Arc<Client> {
        &self.client
    }

    /// The persistent pool's handle, once `init` ran.
    pub fn handle(&self) -> Option<PoolHandle> {
        *self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// swapon of `swap_type`. The first call creates the (single) persistent pool.
    pub fn init(&self, _swap_type: u32) -> Result<PoolHandle, FrontError> {
        let mut g = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = *g {
            return Ok(h);
        }
        let h = self.client.create_pool(PoolKind::PrivatePersistent, None)?;
        *g = Some(h);
        Ok(h)
    }

    /// Store a swap page: `true` if tmem has it now (else it must go to disk).
    pub fn store(&self, ty: u32, offset: u64, page: &Page) -> bool {
        match (self.handle(), key(ty, offset)) {
            (Some(h), Some(k)) => self.client.put(h, k, page) == Outcome::Stored,
            _ => false,
        }
    }

    /// Load a swap page.
    pub fn load(&self, ty: u32, offset: u64, page: &mut Page) -> LoadOutcome {
        let (Some(h), Some(k)) = (self.handle(), key(ty, offset)) else {
            return LoadOutcome::NotStored;
        };
        match self.client.get(h, k, page) {
            Outcome::Hit => LoadOutcome::Loaded,
            Outcome::Lost => LoadOutcome::Lost,
            Outcome::Unavailable => LoadOutcome::Unavailable,
            Outcome::Failed(e) => LoadOutcome::Failed(e),
            _ => LoadOutcome::NotStored,
        }
    }

    /// A swap slot was freed.
    pub fn invalidate_page(&self, ty: u32, offset: u64) {
        if let (Some(h), Some(k)) = (self.handle(), key(ty, offset)) {
            self.client.flush_page(h, k);
        }
    }

    /// swapoff of `swap_type`: its 16 objects.
    pub fn invalidate_area(&self, ty: u32) {
        if let Some(h) = self.handle() {
            for low in 0..=SWIZ_MASK {
                let obj = (u64::from(ty) << SWIZ_BITS) | low;
                self.client.flush_object(h, Oid([obj, 0, 0]));
            }
        }
    }

    /// The loss state of the swap pool: `Some((losses, lost_pages))` while flagged.
    pub fn lost(&self) -> Option<(u64, u64)> {
        self.handle().and_then(|h| self.client.pool_lost(h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swizzle_matches_linux() {
        let k = key(2, 0x1234_5678).unwrap();
        assert_eq!(k.oid, Oid([(2 << 4) | 0x8, 0, 0]));
        assert_eq!(k.index, 0x0123_4567);
        assert!(key(0, 1 << 36).is_none());
    }
}
