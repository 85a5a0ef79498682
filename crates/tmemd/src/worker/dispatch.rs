//! Serving one guest's ring: take a bounded batch of validated requests, carry each out
//! against the store, answer, and notify the guest.

use std::time::Instant;

use tmem_abi::{rsp_flags, status, Request};
use tmem_ring::Incoming;
use tmem_store::Store;
use tracing::warn;

use super::connection::{GuestConn, Link};
use super::latency::{kind_of, Latency, REFUSED};

/// Requests taken from one guest's ring before the worker turns to the next guest.
pub const BATCH: usize = 64;
/// The same while more threads are runnable than CPUs and another worker polls: a busy
/// worker can yield to that sibling after each round (see `event_loop.rs`); a round of 64
/// puts (~70 µs) is what a synchronous guest's worker queued on the same CPU waited for.
pub const CROWDED_BATCH: usize = 8;
/// Responses are published (and the guest notified, if it sleeps) at least this often.
const PUBLISH_EVERY: usize = 16;

/// Serve up to `max` (at most [`BATCH`]) requests of one guest. An error means: disconnect
/// this guest.
pub(super) fn serve(
    store: &Store,
    g: &mut GuestConn,
    latency: &Latency,
    max: usize,
) -> Result<usize, String> {
    #[cfg(test)]
    super::tests::inject(store, g);
    g.batch.clear();
    g.ring
        .next_batch(max.min(BATCH), &mut g.batch)
        .map_err(|e| format!("ring protocol violation: {e}"))?;
    let n = g.batch.len();
    if n == 0 {
        return Ok(0);
    }
    // One clock read per request: each request's time starts where the previous one's
    // ended (answer included), or after a notification sent to the guest.
    let mut since = Instant::now();
    let taken = since;
    for i in 0..n {
        let Incoming { id, req } = g.batch[i];
        let (kind, (status, flags)) = match req {
            Ok(req) => (kind_of(&req), execute(store, g, req)),
            Err(refusal) => {
                if let Some(suppressed) = g.log.refused.allow() {
                    warn!(domid = g.domid, suppressed, "refused request: {refusal}");
                }
                (REFUSED, (refusal.status(), 0))
            }
        };
        let done = Instant::now();
        latency.record(kind, done.saturating_duration_since(since));
        since = done;
        g.ring
            .push_response(id, status, flags)
            .map_err(|e| format!("cannot answer request: {e}"))?;
        // Publish in small groups, not once per batch: a guest polling for its first answers
        // can consume them and refill the ring while we work on the rest.
        if ((i + 1) % PUBLISH_EVERY == 0 || i + 1 == n) && publish(g)? {
            since = Instant::now();
        }
    }
    latency.record_batch(since.saturating_duration_since(taken));
    Ok(n)
}

/// Make pushed responses visible, and notify the guest if it asked to be woken; returns
/// whether a notification was sent.
fn publish(g: &mut GuestConn) -> Result<bool, String> {
    let notify = g.ring.publish();
    if notify {
        match &g.link {
            Link::Local { stream, .. } => {
                tmem_local::notify_peer(stream).map_err(|e| format!("cannot notify guest: {e}"))?
            }
            Link::Xen { port } => port
                .notify()
                .map_err(|e| format!("cannot notify guest's event channel: {e}"))?,
        }
    }
    Ok(notify)
}

/// Carry out one validated request against the store; returns (status, response flags).
fn execute(store: &Store, g: &mut GuestConn, req: Request) -> (i32, u32) {
    let (client, ring) = (g.client, &mut g.ring);
    let result = match req {
        Request::NewPool { uuid, kind } => {
            return match store.new_pool(client, uuid, kind) {
                Ok((pool, reattached)) => (
                    pool as i32,
                    if reattached { rsp_flags::REATTACHED } else { 0 },
                ),
                Err(e) => {
                    // A pool the guest asked for and did not get is an operator's question
                    // ("why does this guest not use tmem?"): say who, what, and why.
                    if let Some(suppressed) = g.log.pool_refused.allow() {
                        warn!(
                            domid = g.domid,
                            client = client.0,
                            suppressed,
                            "refused a new {} pool (uuid {:016x}{:016x}): {e}",
                            kind.xen_tag(),
                            uuid[0],
                            uuid[1]
                        );
                    }
                    (e.status(), 0)
                }
            };
        }
        Request::DestroyPool { pool } => store.destroy_pool(client, pool).map(i32::from),
        Request::Put { pool, key, slot } => store
            .put(client, pool, key, &ring.slot_source(slot))
            .map(|()| status::SUCCESS),
        Request::Get { pool, key, slot } => store
            .get(client, pool, key, &mut ring.slot_sink(slot))
            .map(|hit| if hit { status::SUCCESS } else { status::MISS }),
        Request::FlushPage { pool, key } => store
            .flush_page(client, pool, key)
            .map(|()| status::SUCCESS),
        Request::FlushObject { pool, oid } => store
            .flush_object(client, pool, oid)
            .map(|()| status::SUCCESS),
    };
    (result.unwrap_or_else(|e| e.status()), 0)
}
