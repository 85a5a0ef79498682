//! The tmem wire format, shared by every end of a tmem connection.
//!
//! This crate holds numbers and layouts only: command numbers, pool-flag bits and status
//! values from Xen's public tmem ABI, the shared-ring header and entries, the xenstore key
//! names, and the one function that turns a *copy* of a guest request into a validated
//! [`Request`]. It must never do I/O, never touch shared memory, and never hold state.
//!
//! Everything here is little-endian; tmem is only defined for little-endian Xen guests.

#[cfg(not(target_endian = "little"))]
compile_error!("tmem-abi assumes a little-endian target: the wire format is little-endian");

pub mod page;
pub mod request;
pub mod ring;
pub mod status;
pub mod xenstore;

pub use page::{Page, PageSink, PageSource};
pub use request::{parse_request, Oid, PageKey, PoolKind, Refusal, Request};
pub use ring::{RequestEntry, ResponseEntry, RingHeader, ENTRY_SIZE, HEADER_SIZE};
pub use status::TmemError;

/// Size of a tmem page. Only 4 KiB pages exist on the platforms Xen tmem served.
pub const PAGE_SIZE: usize = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;

/// Command numbers (the `cmd` field). Values follow Xen's `public/tmem.h`.
pub mod cmd {
    /// Privileged control op (Xen ≤4.5). Never accepted from a guest ring.
    pub const CONTROL: u32 = 0;
    pub const NEW_POOL: u32 = 1;
    pub const DESTROY_POOL: u32 = 2;
    /// Legacy (Xen ≤4.3) put of an all-zero page; not supported.
    pub const NEW_PAGE: u32 = 3;
    pub const PUT_PAGE: u32 = 4;
    pub const GET_PAGE: u32 = 5;
    pub const FLUSH_PAGE: u32 = 6;
    pub const FLUSH_OBJECT: u32 = 7;
    /// Legacy (Xen ≤4.3) sub-page get; not supported.
    pub const READ: u32 = 8;
    /// Legacy (Xen ≤4.3) sub-page put; not supported.
    pub const WRITE: u32 = 9;
    /// Never implemented by Xen; not supported.
    pub const XCHG: u32 = 10;
    /// Privileged shared-pool authorisation. Never accepted from a guest ring.
    pub const AUTH: u32 = 101;
    /// Privileged pool restore. Never accepted from a guest ring.
    pub const RESTORE_NEW: u32 = 102;
}

/// Pool flag bits (`NEW_POOL`'s `flags`). Values follow Xen's `public/tmem.h`.
pub mod pool_flags {
    /// Persistent (frontswap-like) pool; clear means ephemeral.
    pub const PERSIST: u32 = 1 << 0;
    /// Shared pool, keyed by uuid.
    pub const SHARED: u32 = 1 << 1;
    /// Defined by Xen, always refused.
    pub const PRECOMPRESSED: u32 = 1 << 2;
    /// Unused by Xen and never checked there; tmemd refuses it so it can be given a meaning later.
    pub const UNUSED_BIT3: u32 = 1 << 3;
    pub const PAGESIZE_SHIFT: u32 = 4;
    pub const PAGESIZE_MASK: u32 = 0xf;
    pub const RESERVED_BITS: u32 = 0x00ff_ff00;
    pub const VERSION_SHIFT: u32 = 24;
    pub const VERSION_MASK: u32 = 0xff;
    /// The only spec version tmemd speaks (192-bit object ids).
    pub const SPEC_VERSION: u32 = 1;

    /// Flags for a pool of the given kind as Linux's Xen tmem shim sent them.
    pub const fn for_kind(persistent: bool, shared: bool) -> u32 {
        let mut f = SPEC_VERSION << VERSION_SHIFT;
        if persistent {
            f |= PERSIST;
        }
        if shared {
            f |= SHARED;
        }
        f
    }
}

/// Flags a response may carry (the response's `flags` field).
pub mod rsp_flags {
    /// `NEW_POOL` found a persistent pool this domain instance had before it disconnected, and
    /// attached to it: its pages are still there.
    pub const REATTACHED: u32 = 1 << 0;
}
