//! What the accept paths, the workers and the control socket share, and the one place where a
//! guest connection is registered and released.
//!
//! Every connection, local or Xen, goes the same way: [`Shared::reserve`] takes a `max_guests`
//! slot (check and increment in one atomic step), [`Shared::register`] makes the connection
//! known once a worker is about to serve it, and [`Shared::release`] ends it: guests map,
//! counter, and the store's detach or destroy, all in one place. A [`Reservation`] dropped on
//! an error path gives its slot back, so no error path can leak one.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tmem_store::{ClientId, Identity, Store, SwapDiskStats};
use tracing::info;

use crate::health::Health;
use crate::settings::{Keeper, Settings};
use crate::sync::lock;

/// State shared by the accept paths, the workers and the control socket.
#[derive(Debug)]
pub struct Shared {
    /// Shared with the swap disks' threads, which each hold one.
    pub store: Arc<Store>,
    /// Connected guests, by client, so the control socket can disconnect one.
    pub guests: Mutex<HashMap<ClientId, GuestHandle>>,
    /// Clients whose connection was lost: destroyed once the grace period ends.
    pub detached: Mutex<HashMap<ClientId, Detached>>,
    /// Connections registered or reserved; never above `max_guests`.
    pub connected: AtomicU32,
    /// Heartbeats of the workers and the Xen control plane, checked before feeding systemd.
    pub health: Health,
    /// Administrator settings, given to each client as it attaches and saved on change.
    pub settings: Mutex<Keeper>,
    /// Swap disks by (domid, devid): what `tmem list` shows of each, kept current by the
    /// Xen control plane and each disk's thread.
    pub swap_disks: Mutex<BTreeMap<(u32, u32), SwapDiskStatus>>,
    /// Xen domains saved or migrated away, by uuid: what `tmem list` shows of each (the Xen
    /// control plane owns the parked table itself).
    pub parked: Mutex<BTreeMap<String, ParkedStatus>>,
    /// Where the workers poll (see `presence.rs`).
    pub presence: super::presence::Presence,
}

/// One parked domain as `tmem list` shows it; `secs_left` is filled in from `deadline`.
#[derive(Debug, Clone)]
pub struct ParkedStatus {
    pub stats: tmem_store::ParkedStats,
    pub deadline: Instant,
}

/// One swap disk's figures, written by its thread and the control plane, read by `tmem list`.
pub type SwapDiskStatus = Arc<Mutex<SwapDiskStats>>;

/// What the control side holds on a connected guest.
#[derive(Debug, Clone)]
pub struct GuestHandle {
    pub kill: Arc<AtomicBool>,
    pub worker: usize,
    pub domid: u32,
}

/// A detached client waiting for its guest to come back.
#[derive(Debug, Clone, Copy)]
pub struct Detached {
    pub since: Instant,
    /// The store's detach epoch, so that expiry only destroys this very detach.
    pub epoch: u64,
}

/// Why a guest's connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Connection lost: keep persistent pools for a reattach.
    Detach,
    /// The guest said goodbye, or an administrator destroyed it: drop everything.
    Destroy,
    /// Already destroyed (or to be detached) by whoever killed it; only forget the connection.
    Close,
}

/// A `max_guests` slot held for a connection being set up; given back on drop unless the
/// connection was registered.
#[derive(Debug)]
#[must_use = "dropping a reservation gives its slot back"]
pub struct Reservation {
    shared: Arc<Shared>,
    held: bool,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.held {
            self.shared.connected.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Refusal of [`Shared::reserve`]: the daemon serves its maximum of guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("tmemd already serves its maximum of {max} guests")]
pub struct Full {
    pub max: u32,
}

impl Shared {
    pub fn new(store: Store) -> Shared {
        Shared::with_settings(store, Keeper::in_memory(Settings::default()))
    }

    pub fn with_settings(store: Store, settings: Keeper) -> Shared {
        Shared {
            store: Arc::new(store),
            swap_disks: Mutex::new(BTreeMap::new()),
            parked: Mutex::new(BTreeMap::new()),
            guests: Mutex::new(HashMap::new()),
            detached: Mutex::new(HashMap::new()),
            connected: AtomicU32::new(0),
            health: Health::default(),
            settings: Mutex::new(settings),
            presence: Default::default(),
        }
    }

    /// The client was attached in the store: it is no longer waiting for expiry, and it gets
    /// the settings administrators gave its identity (before its first request is served).
    pub fn attached_as(&self, client: ClientId, identity: Identity) {
        self.attached(client);
        let effective = lock(&self.settings).effective();
        effective.apply_client(&self.store, identity, client);
    }

    /// Clients rebuilt by recovery wait for their guest like detached ones: destroyed once
    /// the reattach grace ends unless their guest comes back.
    pub fn schedule_recovered(&self, recovered: &[(ClientId, u64)]) {
        let since = Instant::now();
        let mut d = lock(&self.detached);
        for &(client, epoch) in recovered {
            d.insert(client, Detached { since, epoch });
        }
    }

    /// Take a connection slot if fewer than `max` are in use (one atomic step, so two
    /// handshakes at once can never both take the last slot).
    pub fn reserve(self: &Arc<Self>, max: u32) -> Result<Reservation, Full> {
        self.connected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| Full { max })?;
        Ok(Reservation {
            shared: self.clone(),
            held: true,
        })
    }

    /// The client was attached in the store: it is no longer waiting for expiry.
    pub fn attached(&self, client: ClientId) {
        lock(&self.detached).remove(&client);
    }

    /// Make a connection known (its slot moves from the reservation to the connection).
    /// Call it just before handing the connection to its worker.
    pub fn register(&self, mut slot: Reservation, client: ClientId, handle: GuestHandle) {
        slot.held = false;
        if lock(&self.guests).insert(client, handle).is_some() {
            // The store refuses to attach a client twice, so this cannot happen; if it did,
            // the old entry's slot is this one's.
            self.connected.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// End a connection, or an attached client that never got one (error paths between
    /// attach and register): forget it, give its slot back, and detach or destroy it in the
    /// store. Safe to call more than once for one connection.
    pub fn release(&self, client: ClientId, end: End) {
        if lock(&self.guests).remove(&client).is_some() {
            self.connected.fetch_sub(1, Ordering::AcqRel);
        }
        match end {
            End::Detach => {
                let epoch = self.store.detach_client(client);
                let since = Instant::now();
                lock(&self.detached).insert(client, Detached { since, epoch });
            }
            End::Destroy => {
                lock(&self.detached).remove(&client);
                self.store.destroy_client(client);
            }
            End::Close => {}
        }
    }

    /// Destroy detached clients whose grace period is over. The store decides under its own
    /// lock whether the client is still detached from that same detach, so a guest that
    /// reattaches as its grace ends keeps its pools.
    pub fn expire_detached(&self, grace: Duration) {
        let now = Instant::now();
        let expired: Vec<(ClientId, Detached)> = {
            let mut d = lock(&self.detached);
            let expired: Vec<_> = d
                .iter()
                .filter(|(_, x)| now.duration_since(x.since) >= grace)
                .map(|(c, x)| (*c, *x))
                .collect();
            for (c, _) in &expired {
                d.remove(c);
            }
            expired
        };
        for (c, x) in expired {
            if self.store.expire_detached(c, x.epoch) {
                info!(client = c.0, "reattach grace period over; client destroyed");
            }
        }
    }
}
