//! Xenstore paths and key names of the `tmem` PV device (devid 0).
//!
//! Follows blkif's conventions. The Xen transport (tmem-xen) is the only user; the names live
//! here so that both ends and the documentation agree on one spelling.

/// The PV device type name.
pub const DEVICE_TYPE: &str = "tmem";
/// tmem uses a single device per domain.
pub const DEVID: u32 = 0;

/// Backend directory for a domain: `/local/domain/0/backend/tmem/<domid>/0`.
pub fn backend_path(backend_domid: u32, domid: u32) -> String {
    format!("/local/domain/{backend_domid}/backend/{DEVICE_TYPE}/{domid}/{DEVID}")
}

/// Frontend directory for a domain: `/local/domain/<domid>/device/tmem/0`.
pub fn frontend_path(domid: u32) -> String {
    format!("/local/domain/{domid}/device/{DEVICE_TYPE}/{DEVID}")
}

/// XenbusState, written to `state` by each end.
pub mod state {
    pub const UNKNOWN: u32 = 0;
    pub const INITIALISING: u32 = 1;
    pub const INIT_WAIT: u32 = 2;
    pub const INITIALISED: u32 = 3;
    pub const CONNECTED: u32 = 4;
    pub const CLOSING: u32 = 5;
    pub const CLOSED: u32 = 6;
    pub const RECONFIGURING: u32 = 7;
    pub const RECONFIGURED: u32 = 8;
}

/// Keys in both directories.
pub mod key {
    pub const STATE: &str = "state";
    pub const BACKEND: &str = "backend";
    pub const BACKEND_ID: &str = "backend-id";
    pub const FRONTEND: &str = "frontend";
    pub const FRONTEND_ID: &str = "frontend-id";
    /// Backend: the ring protocol version it speaks.
    pub const PROTOCOL_VERSION: &str = "protocol-version";
    /// Backend: the largest ring it accepts, as log2 of its page count.
    pub const MAX_RING_PAGE_ORDER: &str = "max-ring-page-order";
    /// Backend: the largest data area it accepts, in pages.
    pub const MAX_DATA_PAGES: &str = "max-data-pages";
    /// Frontend: log2 of the ring's page count.
    pub const RING_PAGE_ORDER: &str = "ring-page-order";
    /// Frontend: `ring-ref<i>`, grant reference of ring page i.
    pub const RING_REF_PREFIX: &str = "ring-ref";
    /// Frontend: number of data-area pages.
    pub const DATA_PAGES: &str = "data-pages";
    /// Frontend: `data-dir-ref<i>`, grants of the pages that list the data pages' grant refs.
    pub const DATA_DIR_REF_PREFIX: &str = "data-dir-ref";
    /// Frontend: the unbound event channel port the backend binds to.
    pub const EVENT_CHANNEL: &str = "event-channel";
    /// Frontend: a number that changes each time the guest boots (the domain instance).
    pub const INSTANCE: &str = "instance";
}
