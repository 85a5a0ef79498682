//! One swap disk's thread: serves its blkif ring until told to stop or until the guest
//! breaks the protocol.
//!
//! Each disk has a thread of its own, blocked on an event channel file of its own when idle,
//! because a disk's requests may block (spill-file I/O through dom0's page cache, and the
//! `fdatasync` a FLUSH needs when data was spilled): the tmem workers, which poll many
//! guests' rings, must never wait for one disk. A batch takes at most [`MAX_BATCH`] requests,
//! then the thread looks at its stop flag and goes on, so the scheduler shares the CPU among
//! disks and a guest can keep only its own thread busy.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tmem_blkif::BlkBackend;
use tmem_store::{ClientId, SwapDiskStats};
use tmem_swapdisk::{serve_batch, RingJournal, SwapDisk};
use tmem_xen::blkback::BlkfrontKeys;
use tmem_xen::{BoundPort, GrantMapping};
use tracing::{error, warn};

use super::grant_io::GrantCopyIo;
use crate::health::Heartbeat;
use crate::ratelimit::RateLimiter;
use crate::sync::lock;
use crate::worker::Shared;

/// Requests taken per round (one ring of one page holds 32).
const MAX_BATCH: usize = 32;
/// An idle disk thread looks at its stop flag this often.
const IDLE_WAKE: Duration = Duration::from_millis(100);

/// Everything a disk's thread owns while it serves the ring.
pub(super) struct DiskRun {
    pub domid: u32,
    pub devid: u32,
    pub back: BlkBackend<GrantMapping>,
    pub disk: SwapDisk,
    pub io: GrantCopyIo,
    pub journal: Option<RingJournal>,
    /// Bound on an event channel file of this disk's own.
    pub port: BoundPort,
    pub status: Arc<Mutex<SwapDiskStats>>,
}

/// The watchdog's name for a disk's thread (one per domain and device).
fn heartbeat_name(domid: u32, devid: u32) -> String {
    format!("swap disk {domid}/{devid}")
}

/// The control plane's handle on a running disk thread.
#[derive(Debug)]
pub(super) struct DiskThread {
    stop: Arc<AtomicBool>,
    ended: Arc<AtomicBool>,
    join: Option<JoinHandle<()>>,
    pub client: ClientId,
    pub keys: BlkfrontKeys,
}

impl DiskThread {
    /// The thread's heartbeat is checked by the systemd watchdog (as the workers' are) from
    /// now until it ends: a disk thread stuck in its loop gets tmemd restarted.
    pub fn spawn(
        run: DiskRun,
        client: ClientId,
        keys: BlkfrontKeys,
        shared: Arc<Shared>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let ended = Arc::new(AtomicBool::new(false));
        let (s, e) = (stop.clone(), ended.clone());
        let name = format!("tmemd-vbd{}", run.domid);
        let beat_name = heartbeat_name(run.domid, run.devid);
        let heartbeat = shared.health.register(beat_name.clone());
        let on_fail = shared.clone();
        let spawned = std::thread::Builder::new().name(name).spawn(move || {
            let mut run = run;
            let (domid, devid) = (run.domid, run.devid);
            match catch_unwind(AssertUnwindSafe(|| serve(&mut run, &s, &heartbeat))) {
                Ok(Ok(())) => {}
                Ok(Err(why)) => warn!(
                    domid,
                    devid, "swap disk disconnected: {why}; closing the device"
                ),
                Err(_) => error!(
                    domid,
                    devid,
                    "swap disk thread panicked; closing the device (other guests are not affected)"
                ),
            }
            // Ended on purpose or not, it no longer serves: stop checking it.
            shared.health.unregister(&heartbeat_name(domid, devid));
            e.store(true, Ordering::Release);
        });
        let join = match spawned {
            Ok(j) => j,
            Err(err) => {
                on_fail.health.unregister(&beat_name);
                return Err(err);
            }
        };
        Ok(DiskThread {
            stop,
            ended,
            join: Some(join),
            client,
            keys,
        })
    }

    /// The thread ended on its own (the guest broke the protocol, or a failure): the
    /// control plane closes the device.
    pub fn has_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Stop serving and wait until the thread has let go of the ring, the grants and the
    /// event channel (at most one batch and [`IDLE_WAKE`]).
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for DiskThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

/// The loop: serve batches while there are requests, sleep on the event channel when not.
fn serve(run: &mut DiskRun, stop: &AtomicBool, heartbeat: &Heartbeat) -> Result<(), String> {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut errors = 0u64;
    // Failed requests are the guest's doing (bad grants): a few lines, then a count.
    let mut log = RateLimiter::new(5, Duration::from_secs(10));
    // A resumed ring may already hold requests, and the guest may be asleep waiting.
    let _ = run.port.notify();
    loop {
        // Every round, busy or idle (an idle one wakes every IDLE_WAKE), shows progress.
        heartbeat.beat();
        if stop.load(Ordering::Acquire) {
            return Ok(());
        }
        let served = serve_batch(
            &mut run.back,
            &mut run.disk,
            &mut run.io,
            MAX_BATCH,
            &mut batch,
            run.journal.as_mut(),
        );
        let served = match served {
            Ok(s) => s,
            Err(tmem_swapdisk::ServeError::Journal(e)) => {
                // Requests stay on the ring unanswered; without a journal a resume could
                // replay the wrong ones, so make sure none is attempted and stop here.
                if let Some(j) = run.journal.as_mut() {
                    let _ = j.invalidate();
                }
                return Err(format!("the ring journal cannot be written ({e})"));
            }
            Err(e) => return Err(format!("the guest broke the ring protocol: {e}")),
        };
        if served.notify {
            run.port
                .notify()
                .map_err(|e| format!("cannot notify the guest's event channel: {e}"))?;
        }
        if served.answered > 0 {
            if served.errors > 0 {
                errors += served.errors as u64;
                if let Some(cause) = run.io.take_last_error() {
                    if let Some(suppressed) = log.allow() {
                        warn!(
                            domid = run.domid,
                            suppressed,
                            "swap disk request failed: copying the guest's data: {cause}"
                        );
                    }
                }
            }
            publish_status(run, errors);
            continue;
        }
        if run.back.prepare_to_sleep() {
            continue;
        }
        run.port
            .evtchn
            .wait(Some(IDLE_WAKE))
            .map_err(|e| format!("waiting on the event channel failed: {e}"))?;
    }
}

fn publish_status(run: &DiskRun, errors: u64) {
    let d = run.disk.stats();
    let mut s = lock(&run.status);
    s.reads = d.reads;
    s.writes = d.writes;
    s.flushes = d.flushes;
    s.discards = d.discards;
    s.spill_writes = d.spill_writes;
    s.promotions = d.promotions;
    s.pages_spilled = run.disk.spilled_pages();
    s.errors = errors;
}
