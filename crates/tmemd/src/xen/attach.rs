//! Connecting a Xen guest: map its grants, bind its event channel on the chosen worker's
//! evtchn file, attach a store client and hand a [`GuestConn`] to that worker; resuming a
//! guest that stayed connected while tmemd restarted the same way; and the reverse.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tmem_abi::Request;
use tmem_ring::{BackendRing, Layout, Resumed};
use tmem_store::{ClientId, Identity, Store};
use tmem_xen::xenbus::{self, FrontendKeys};
use tmem_xen::{BoundPort, GrantMapping};
use tracing::{debug, info, warn};

use super::backend::{Live, XenBackend};
use crate::worker::{self, lock, End, GuestConn, GuestHandle, GuestMem, Reservation, WorkerMsg};

/// How long a torn-down connection may take to leave its worker.
const TEARDOWN_WAIT: Duration = Duration::from_secs(2);

impl XenBackend {
    /// Map the ring and data grants the frontend published, as one area.
    fn map_guest(&self, d: u32, keys: &FrontendKeys) -> Result<(GrantMapping, Layout), String> {
        let gntdev = self
            .gntdev
            .clone()
            .ok_or_else(|| "the grant device is not available".to_string())?;
        let mut refs = keys.ring_refs.clone();
        if keys.data_pages > 0 {
            let dir = gntdev
                .map(d, &keys.data_dir_refs, false)
                .map_err(|e| format!("cannot map the data directory grants: {e}"))?;
            let bytes = dir.copy_out();
            drop(dir);
            refs.extend(
                xenbus::parse_data_dir(&bytes, keys.data_pages).map_err(|e| e.to_string())?,
            );
        }
        let mem = gntdev
            .map(d, &refs, true)
            .map_err(|e| format!("cannot map the ring and data grants: {e}"))?;
        let layout = Layout {
            ring_pages: keys.ring_pages(),
            data_slots: keys.data_pages,
        };
        Ok((mem, layout))
    }

    /// Pick a worker and bind the frontend's event channel on its evtchn file.
    fn bind_guest(&self, d: u32, keys: &FrontendKeys) -> Result<(usize, BoundPort), String> {
        let worker = worker::pick_worker(&self.workers)
            .ok_or_else(|| "no worker thread is left to serve the guest".to_string())?;
        let evtchn = self
            .evtchns
            .get(worker)
            .cloned()
            .ok_or_else(|| "no event channel device for the worker".to_string())?;
        let local = evtchn
            .bind_interdomain(d, keys.event_channel)
            .map_err(|e| format!("cannot bind event channel {}: {e}", keys.event_channel))?;
        Ok((
            worker,
            BoundPort {
                evtchn,
                port: local,
            },
        ))
    }

    pub(super) fn dom_name(&self, d: u32) -> String {
        self.domains
            .get(&d)
            .map(|x| x.name.clone())
            .unwrap_or_default()
    }

    /// Map, bind, attach and hand to a worker. On error everything taken is released.
    pub(super) fn attach(&mut self, d: u32, keys: FrontendKeys) -> Result<Live, String> {
        // Checked and taken in one step; given back on every path that does not register.
        let slot = self
            .shared
            .reserve(self.max_guests)
            .map_err(|full| full.to_string())?;
        let (mem, layout) = self.map_guest(d, &keys)?;
        let (worker, port) = self.bind_guest(d, &keys)?;
        let name = self.dom_name(d);
        let (client, attach) = self
            .shared
            .store
            .attach_client(d, keys.instance, &name)
            .map_err(|e| format!("cannot attach a store client: {e}"))?;
        self.shared.attached_as(client, Identity::Xen { domid: d });
        let kill = Arc::new(AtomicBool::new(false));
        let conn = match GuestConn::from_xen(client, d, name, mem, layout, port, kill.clone()) {
            Ok(c) => c,
            Err(e) => {
                self.shared.release(client, End::Detach);
                return Err(format!("ring unusable: {e}"));
            }
        };
        debug!(domid = d, ?attach, worker, "handing Xen guest to worker");
        self.hand_over(slot, conn, worker, keys)
    }

    /// Carry on the connection of a frontend that stayed connected while tmemd restarted:
    /// map its grants, bind its event channel again (closing our old end left the guest's
    /// port unbound and bindable by dom0 again: Xen's `evtchn_close`), take the ring over and
    /// resume the recovered store client. On error everything taken is released, and the
    /// caller makes the frontend reconnect.
    pub(super) fn resume(&mut self, d: u32, keys: FrontendKeys) -> Result<(Live, Resumed), String> {
        let slot = self
            .shared
            .reserve(self.max_guests)
            .map_err(|full| full.to_string())?;
        let (mem, layout) = self.map_guest(d, &keys)?;
        let (worker, port) = self.bind_guest(d, &keys)?;
        let name = self.dom_name(d);
        let (client, ring, resumed) = take_over(
            &self.shared.store,
            d,
            keys.instance,
            &name,
            GuestMem::Grant(mem),
            layout,
        )?;
        self.shared.attached_as(client, Identity::Xen { domid: d });
        // A kick in any case, so a frontend asleep on its event channel looks at the ring.
        if let Err(e) = port.notify() {
            self.shared.release(client, End::Detach);
            return Err(format!("cannot notify the guest's event channel: {e}"));
        }
        let kill = Arc::new(AtomicBool::new(false));
        let conn = GuestConn::from_xen_ring(client, d, name, ring, port, kill);
        let live = self.hand_over(slot, conn, worker, keys)?;
        Ok((live, resumed))
    }

    /// Register a connection and send it to its worker.
    fn hand_over(
        &mut self,
        slot: Reservation,
        conn: GuestConn,
        worker: usize,
        keys: FrontendKeys,
    ) -> Result<Live, String> {
        let client = conn.client;
        let kill = conn.kill.clone();
        let handle = GuestHandle {
            kill: kill.clone(),
            worker,
            domid: conn.domid,
        };
        self.shared.register(slot, client, handle);
        if self.workers[worker]
            .send(WorkerMsg::Add(Box::new(conn)))
            .is_err()
        {
            self.shared.release(client, End::Detach);
            return Err("the guest's worker thread has ended".into());
        }
        Ok(Live {
            client,
            kill,
            worker,
            keys,
        })
    }

    /// Stop serving a connection and wait until its worker has let go of the ring (so no
    /// request of the old ring can run after a new connection replays invalidations), then
    /// detach the client: persistent pools stay for a reattach within the grace period.
    pub(super) fn teardown(&mut self, d: u32) {
        let Some(live) = self.domains.get_mut(&d).and_then(|x| x.live.take()) else {
            return;
        };
        live.kill.store(true, Ordering::Relaxed);
        if let Some(w) = self.workers.get(live.worker) {
            let _ = w.waker.wake();
        }
        let deadline = Instant::now() + TEARDOWN_WAIT;
        while lock(&self.shared.guests).contains_key(&live.client) {
            if Instant::now() >= deadline {
                warn!(domid = d, "worker did not release the guest in time");
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.shared.release(live.client, End::Detach);
        if let Some(suppressed) = self.guest_log(d, "disconnected") {
            info!(
                domid = d,
                client = live.client.0,
                suppressed,
                "Xen guest disconnected; grants unmapped"
            );
        }
    }
}

/// The part of a resume that needs no Xen: take over the ring a previous tmemd served and
/// attach the guest's recovered client again, with every pool under its old id. Publishes
/// the answers the dead tmemd computed; the caller notifies the guest.
///
/// Requests that were in flight (published by the guest, not answered where it can see)
/// are carried out again unless their slot says the dead tmemd finished them
/// ([`BackendRing::resume`]). That is safe for the page operations because each sets the
/// final state of the keys it names whatever the state before (put: the page is the slot's
/// bytes, which the guest leaves alone until it sees the answer; flush: no page; get: reads),
/// so running a prefix of the same sequence twice ends where running it once does; and the
/// store made each of them all-or-nothing in the page file. Pool creation and destruction
/// are not: a repeated NEW_POOL would make a second pool, a repeated DESTROY_POOL answers
/// "no such pool". If one of them is in flight, the guest reconnects instead (its frontend
/// then opens its pools again by uuid).
pub(super) fn take_over(
    store: &Store,
    domid: u32,
    instance: u64,
    name: &str,
    mem: GuestMem,
    layout: Layout,
) -> Result<(ClientId, BackendRing<GuestMem>, Resumed), String> {
    let (mut ring, resumed) =
        BackendRing::resume(mem, layout).map_err(|e| format!("ring cannot be taken over: {e}"))?;
    // A look at requests the worker will read (and validate) again when it serves them: a
    // guest that rewrites one in between can only make its own NEW_POOL run (a pool of its
    // own, within its limit, as any NEW_POOL it sends), so this check needs no single copy.
    let pool_op = ring.peek_pending().into_iter().any(|r| {
        matches!(
            r,
            Ok(Request::NewPool { .. }) | Ok(Request::DestroyPool { .. })
        )
    });
    if pool_op {
        return Err("a pool was being created or destroyed when tmemd stopped".into());
    }
    let client = store
        .resume(Identity::Xen { domid }, instance, name)
        .ok_or_else(|| format!("no client of this domain instance ({instance}) was recovered"))?;
    // The answers the dead tmemd computed but had not published.
    ring.publish();
    Ok((client, ring, resumed))
}
