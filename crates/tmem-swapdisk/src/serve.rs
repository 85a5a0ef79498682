//! [`serve_batch`]: one round of a disk's ring — take requests, journal them, execute,
//! answer, publish.

use crate::{Done, RingJournal, SegmentIo, SwapDisk};
use tmem_blkif::abi::status;
use tmem_blkif::{BlkBackend, Incoming, RingError, SharedMem};

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Served {
    /// Requests answered.
    pub answered: usize,
    /// Of those, answered with an error status (refused by the parser, or failed).
    pub errors: usize,
    /// The guest asked to be notified of the responses (kick its event channel).
    pub notify: bool,
}

/// Why a round ended the ring.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The guest broke the protocol: disconnect it.
    #[error(transparent)]
    Ring(#[from] RingError),
    /// The ring journal could not be written; the requests of this round were not executed
    /// nor answered (a new tmemd can still take them from the ring). Stop serving the ring
    /// so that no answer overwrites a request the journal does not hold.
    #[error("writing the ring journal failed: {0}")]
    Journal(#[source] std::io::Error),
}

/// Take up to `max` requests off `back`, record them in `journal` (if any) before anything
/// is answered, execute each on `disk`, answer all of them and publish. Requests that must
/// wait for the spill file to be durable (FLUSH, FUA writes) share one `fdatasync`, run
/// here: **this blocks**, so only a thread allowed to block (tests, benches, a disk's own
/// thread) may call it. `batch` is scratch space.
///
/// A ring error (the guest broke the protocol) is returned after the requests taken before
/// it have been answered: disconnect the guest.
pub fn serve_batch<M: SharedMem>(
    back: &mut BlkBackend<M>,
    disk: &mut SwapDisk,
    io: &mut impl SegmentIo,
    max: usize,
    batch: &mut Vec<Incoming>,
    journal: Option<&mut RingJournal>,
) -> Result<Served, ServeError> {
    batch.clear();
    let taken = back.next_batch(max, batch);
    if let Some(j) = journal {
        j.record(batch).map_err(ServeError::Journal)?;
    }
    let mut errors = 0;
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
        if st != status::OKAY {
            errors += 1;
        }
        back.push_response(inc.id, st)?;
    }
    if !after_sync.is_empty() {
        let st = match disk.syncer().sync() {
            Ok(()) => status::OKAY,
            Err(_) => {
                errors += after_sync.len();
                status::ERROR
            }
        };
        for id in after_sync {
            back.push_response(id, st)?;
        }
    }
    let notify = back.publish();
    taken?;
    Ok(Served {
        answered: batch.len(),
        errors,
        notify,
    })
}
