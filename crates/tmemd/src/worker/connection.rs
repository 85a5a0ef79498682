//! One guest connection as a worker holds it: its ring over the guest's memory, how it is
//! notified, and its own log limits.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use tmem_local::{LocalGuest, MemfdRegion};
use tmem_ring::{BackendRing, Incoming};
use tmem_store::ClientId;
use tmem_xen::{BoundPort, GrantMapping};

use super::dispatch::BATCH;
use crate::ratelimit::RateLimiter;

/// A guest connection as a worker serves it.
#[derive(Debug)]
pub struct GuestConn {
    pub client: ClientId,
    pub domid: u32,
    pub name: String,
    pub ring: BackendRing<GuestMem>,
    pub link: Link,
    pub kill: Arc<AtomicBool>,
    pub(super) log: GuestLog,
    pub(super) batch: Vec<Incoming>,
    /// Test-only misbehaviour of the serving code (never reachable by a guest).
    #[cfg(test)]
    pub(super) fault: Option<super::tests::Fault>,
}

/// The guest's shared area: a sealed memfd (local) or the guest's grants mapped (Xen).
#[derive(Debug)]
pub enum GuestMem {
    Memfd(MemfdRegion),
    Grant(GrantMapping),
}

// SAFETY: forwards to the variant, each of which upholds the SharedMem contract itself.
unsafe impl tmem_ring::SharedMem for GuestMem {
    fn base(&self) -> *mut u8 {
        match self {
            GuestMem::Memfd(m) => m.base(),
            GuestMem::Grant(m) => m.base(),
        }
    }
    fn len(&self) -> usize {
        match self {
            GuestMem::Memfd(m) => m.len(),
            GuestMem::Grant(m) => m.len(),
        }
    }
}

/// How a guest is notified and how its liveness is known.
#[derive(Debug)]
pub enum Link {
    /// Local transport: the kick eventfd, and the socket that carries notifications to the
    /// guest and whose EOF means the guest left. (The hello's notify eventfd is not kept: see
    /// `tmem_local::notify_peer`.)
    Local { kick: OwnedFd, stream: UnixStream },
    /// Xen: an event channel port bound on the worker's evtchn file (unbound on drop).
    /// Liveness is xenstore's business: the daemon's Xen module sets `kill`.
    Xen { port: BoundPort },
}

/// Log limits of one guest, one per call site a guest can trigger: a guest flooding one kind
/// of line neither silences its other lines nor any other guest's (each guest has its own).
#[derive(Debug)]
pub(super) struct GuestLog {
    pub refused: RateLimiter,
    pub pool_refused: RateLimiter,
    pub garbage: RateLimiter,
}

impl GuestLog {
    fn new() -> GuestLog {
        let per_site = || RateLimiter::new(10, Duration::from_secs(1));
        GuestLog {
            refused: per_site(),
            pool_refused: per_site(),
            garbage: per_site(),
        }
    }
}

impl GuestConn {
    /// Wrap an accepted local guest. Fails if its ring memory is unusable.
    pub fn from_local(
        client: ClientId,
        guest: LocalGuest,
        kill: Arc<AtomicBool>,
    ) -> Result<GuestConn, tmem_ring::RingError> {
        let layout = guest.hello.layout;
        let link = Link::Local {
            kick: guest.kick,
            stream: guest.stream,
        };
        let ring = BackendRing::new(GuestMem::Memfd(guest.mem), layout)?;
        Ok(GuestConn::new(
            client,
            guest.hello.domid,
            guest.hello.name,
            ring,
            link,
            kill,
        ))
    }

    /// Wrap a Xen guest whose grants are mapped and whose event channel is bound.
    pub fn from_xen(
        client: ClientId,
        domid: u32,
        name: String,
        mem: GrantMapping,
        layout: tmem_ring::Layout,
        port: BoundPort,
        kill: Arc<AtomicBool>,
    ) -> Result<GuestConn, tmem_ring::RingError> {
        let ring = BackendRing::new(GuestMem::Grant(mem), layout)?;
        Ok(GuestConn::new(
            client,
            domid,
            name,
            ring,
            Link::Xen { port },
            kill,
        ))
    }

    /// Wrap a Xen guest whose ring was taken over from a previous tmemd
    /// ([`BackendRing::resume`]); its event channel is bound again.
    pub fn from_xen_ring(
        client: ClientId,
        domid: u32,
        name: String,
        ring: BackendRing<GuestMem>,
        port: BoundPort,
        kill: Arc<AtomicBool>,
    ) -> GuestConn {
        GuestConn::new(client, domid, name, ring, Link::Xen { port }, kill)
    }

    pub(crate) fn new(
        client: ClientId,
        domid: u32,
        name: String,
        ring: BackendRing<GuestMem>,
        link: Link,
        kill: Arc<AtomicBool>,
    ) -> GuestConn {
        GuestConn {
            client,
            domid,
            name,
            ring,
            link,
            kill,
            log: GuestLog::new(),
            batch: Vec::with_capacity(BATCH),
            #[cfg(test)]
            fault: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_at_one_call_site_leaves_the_others_and_other_guests_their_lines() {
        let mut noisy = GuestLog::new();
        let mut quiet = GuestLog::new();
        while noisy.refused.allow().is_some() {}
        assert!(noisy.refused.allow().is_none(), "the flood is limited");
        assert_eq!(noisy.garbage.allow(), Some(0), "the guest's other line");
        assert_eq!(quiet.refused.allow(), Some(0), "another guest's same line");
    }
}
