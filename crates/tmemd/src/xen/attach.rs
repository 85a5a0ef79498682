//! Connecting a Xen guest: map its grants, bind its event channel on the chosen worker's
//! evtchn file, attach a store client and hand a [`GuestConn`] to that worker; and the reverse.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tmem_xen::xenbus::{self, FrontendKeys};
use tmem_xen::BoundPort;
use tracing::{debug, info, warn};

use super::backend::{Live, XenBackend};
use crate::worker::{self, lock, End, GuestConn, GuestHandle, WorkerMsg};

/// How long a torn-down connection may take to leave its worker.
const TEARDOWN_WAIT: Duration = Duration::from_secs(2);

impl XenBackend {
    /// Map, bind, attach and hand to a worker. On error everything taken is released.
    pub(super) fn attach(&mut self, d: u32, keys: FrontendKeys) -> Result<Live, String> {
        // Checked and taken in one step; given back on every path that does not register.
        let slot = self
            .shared
            .reserve(self.max_guests)
            .map_err(|full| full.to_string())?;
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
        let layout = tmem_ring::Layout {
            ring_pages: keys.ring_pages(),
            data_slots: keys.data_pages,
        };
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
        let port = BoundPort {
            evtchn,
            port: local,
        };
        let name = self
            .domains
            .get(&d)
            .map(|x| x.name.clone())
            .unwrap_or_default();
        let (client, attach) = self
            .shared
            .store
            .attach_client(d, keys.instance, &name)
            .map_err(|e| format!("cannot attach a store client: {e}"))?;
        self.shared
            .attached_as(client, tmem_store::Identity::Xen { domid: d });
        let kill = Arc::new(AtomicBool::new(false));
        let conn = match GuestConn::from_xen(client, d, name, mem, layout, port, kill.clone()) {
            Ok(c) => c,
            Err(e) => {
                self.shared.release(client, End::Detach);
                return Err(format!("ring unusable: {e}"));
            }
        };
        debug!(domid = d, ?attach, worker, "handing Xen guest to worker");
        let handle = GuestHandle {
            kill: kill.clone(),
            worker,
            domid: d,
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
