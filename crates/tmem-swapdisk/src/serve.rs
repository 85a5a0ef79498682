//! [`serve_batch`]: one round of a disk's ring — take requests, execute, answer, publish.

use crate::{Done, SegmentIo, SwapDisk};
use tmem_blkif::abi::status;
use tmem_blkif::{BlkBackend, Incoming, RingError, SharedMem};

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Served {
    /// Requests answered.
    pub answered: usize,
    /// The guest asked to be notified of the responses (kick its event channel).
    pub notify: bool,
}

/// Take up to `max` requests off `back`, execute each on `disk`, answer all of them and
/// publish. Requests that must wait for the spill file to be durable (FLUSH, FUA writes)
/// share one `fdatasync`, run here: **this blocks**, so only a thread allowed to block
/// (tests, benches, a disk's own worker) may call it. `batch` is scratch space.
///
/// A ring error (the guest broke the protocol) is returned after the requests taken before
/// it have been answered: disconnect the guest.
pub fn serve_batch<M: SharedMem>(
    back: &mut BlkBackend<M>,
    disk: &mut SwapDisk,
    io: &mut impl SegmentIo,
    max: usize,
    batch: &mut Vec<Incoming>,
) -> Result<Served, RingError> {
    batch.clear();
    let taken = back.next_batch(max, batch);
    let mut after_sync = Vec::new();
    for inc in batch.iter() {
        let st = match &inc.req {
            Err(refusal) => refusal.status(),
            Ok(req) => match disk.execute(req, io) {
                Ok(Done::Now) => status::OKAY,
                Ok(Done::AfterSync) => {
                    after_sync.push(inc.id);
                    continue;
                }
                Err(e) => e.status(),
            },
        };
        back.push_response(inc.id, st)?;
    }
    if !after_sync.is_empty() {
        let st = match disk.syncer().sync() {
            Ok(()) => status::OKAY,
            Err(_) => status::ERROR,
        };
        for id in after_sync {
            back.push_response(id, st)?;
        }
    }
    let notify = back.publish();
    taken?;
    Ok(Served {
        answered: batch.len(),
        notify,
    })
}
