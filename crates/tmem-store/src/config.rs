//! Store limits and defaults, client ids, and what attaching a client can answer.

use crate::{Identity, PAGE_SIZE};

/// The store's handle for one guest domain instance.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ClientId(pub u32);

/// Store limits and defaults.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StoreConfig {
    /// Bytes of page data the store may hold (default 256 MiB). Rounded down to whole pages.
    pub mem_limit_bytes: u64,
    /// Pools one client may have open (default 64; Xen had a fixed 16).
    pub max_pools_per_client: u32,
    /// Shared pools in the whole store (default 256).
    pub max_shared_pools: u32,
    /// Shared-pool uuids one domain may be authorised for (default 64).
    pub max_auth_per_domain: u32,
    /// Cap on page memory given to new clients, in 4 KiB units; 0 = none beyond memory.
    /// Counts the memory the client's private ephemeral and persistent pages take: 4 KiB a
    /// raw page, a compressed page's share of its run, nothing for a same-filled page.
    pub default_cap_pages: u64,
    /// Eviction weight given to new clients and to shared pools (default 1).
    pub default_weight: u32,
    /// Share of the memory limit, in percent, that one client may pin in persistent pages
    /// (never evicted, counted in page memory as the cap is) unless an administrator sets
    /// its cap; 0 = no such limit (default 25).
    pub default_persistent_share_percent: u32,
}

impl StoreConfig {
    /// Page memory, in 4 KiB units, one client may hold in persistent pages by default
    /// (0 = no limit).
    pub fn persistent_share_pages(&self) -> u64 {
        let frames = self.mem_limit_bytes / PAGE_SIZE as u64;
        match self.default_persistent_share_percent.min(100) {
            0 => 0,
            pct => (frames * pct as u64 / 100).max(1),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            mem_limit_bytes: 256 << 20,
            max_pools_per_client: 64,
            max_shared_pools: 256,
            max_auth_per_domain: 64,
            default_cap_pages: 0,
            default_weight: 1,
            default_persistent_share_percent: 25,
        }
    }
}

/// Why [`Store::attach`](crate::Store::attach) refused a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AttachRefused {
    /// The same identity and instance is attached now (its old connection may be closing).
    #[error("{0} (this instance) is already connected")]
    Attached(Identity),
    /// A local identity is attached now under another instance; replacing it would destroy a
    /// live guest's pools.
    #[error(
        "{identity} is connected now as instance {live:#x}; taking over a live client is refused"
    )]
    LiveTakeover { identity: Identity, live: u64 },
}

/// What [`Store::attach_client`](crate::Store::attach_client) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// A fresh client with no pools.
    New,
    /// The same domain instance came back; its persistent pools were kept.
    Reattached,
}
