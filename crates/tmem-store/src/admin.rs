//! Administration: freeze, weight, caps, compression flag, shared-pool authorisation,
//! prefault, and releasing memory on request.

use crate::reap::REAP_CHUNK;
use crate::{ClientId, Identity, Store, TmemError, PAGE_SIZE};

/// Compaction steps at most after a flush: enough to move every object of a store of a few
/// GiB, bounded so that a flush always returns.
const FLUSH_COMPACT_STEPS: usize = 4096;

impl Store {
    /// Freeze or thaw a client: while frozen, puts of new handles fail with `Frozen`.
    pub fn set_frozen(&self, c: ClientId, frozen: bool) -> Result<(), TmemError> {
        self.meta().client_mut(c)?.frozen = frozen;
        Ok(())
    }

    /// Set a client's eviction weight.
    pub fn set_weight(&self, c: ClientId, weight: u32) -> Result<(), TmemError> {
        let mut m = self.meta();
        let cl = m.client_mut(c)?;
        cl.weight = weight;
        let a = cl.account;
        if let Some(Some(acc)) = m.accounts.get_mut(a as usize) {
            acc.weight = weight;
        }
        Ok(())
    }

    /// Set a client's cap on page memory in 4 KiB units (0 = none): `cap` raw pages, or more
    /// compressed ones. See [`Store::set_cap_bytes`].
    pub fn set_cap_pages(&self, c: ClientId, cap: u64) -> Result<(), TmemError> {
        self.set_cap_bytes(c, cap.saturating_mul(PAGE_SIZE as u64))
    }

    /// Set a client's cap on the page memory its private pools take, in bytes (0 = none): a
    /// raw page costs 4096, a compressed one its size class's share of a run, a same-filled
    /// one nothing. It replaces the default persistent share for this client. Pages already
    /// stored above a lowered cap stay.
    pub fn set_cap_bytes(&self, c: ClientId, cap: u64) -> Result<(), TmemError> {
        let mut m = self.meta();
        let cl = m.client_mut(c)?;
        cl.cap_bytes = cap;
        cl.pers_cap_bytes = 0;
        Ok(())
    }

    /// Turn a client's compression on (the default codec, lz4 unless
    /// [`Store::set_default_compression`] says otherwise, for every pool kind) or off.
    /// Pages already stored stay as they are.
    pub fn set_compress(&self, c: ClientId, on: bool) -> Result<(), TmemError> {
        let algo = if on {
            self.default_compression()
        } else {
            crate::Compression::Off
        };
        self.set_compression(c, crate::ClientCompression::both(algo))
    }

    /// Allow or disallow a domain to join the shared pool `uuid`. Works before the domain
    /// has connected. `Ok(true)` if the list changed; a full list gives `NoMemory`.
    /// Revoking does not expel a domain that has already joined.
    pub fn set_shared_auth(
        &self,
        who: Identity,
        uuid: [u64; 2],
        allow: bool,
    ) -> Result<bool, TmemError> {
        let mut m = self.meta();
        let max = m.cfg.max_auth_per_domain as usize;
        if allow {
            let l = m.auth.entry(who).or_default();
            if l.contains(&uuid) {
                return Ok(false);
            }
            if l.len() >= max {
                if l.is_empty() {
                    m.auth.remove(&who);
                }
                return Err(TmemError::NoMemory);
            }
            l.push(uuid);
            Ok(true)
        } else {
            let Some(l) = m.auth.get_mut(&who) else {
                return Ok(false);
            };
            let before = l.len();
            l.retain(|u| *u != uuid);
            let changed = l.len() != before;
            if l.is_empty() {
                m.auth.remove(&who);
            }
            Ok(changed)
        }
    }

    /// Global switch (Xen's `cli_id=ALL`): when false any domain may join any shared pool.
    pub fn set_shared_auth_required(&self, required: bool) {
        self.meta().auth_required = required;
    }

    /// Fault in all page-data memory now, so that no put ever waits for the kernel to back a
    /// frame (a first-touch fault costs as much as twenty page copies). Meant for a background
    /// thread at start-up; puts may run meanwhile. Returns the bytes it faulted in.
    pub fn prefault(&self) -> u64 {
        self.frames.prefault()
    }

    /// Ephemeral pages whose eviction would release page memory now.
    pub fn freeable_pages(&self) -> u64 {
        self.meta().g.eph_data
    }

    /// The page memory, in bytes, that evicting every ephemeral page would release (raw pages
    /// 4096 each, compressed ones their share of their runs).
    pub fn freeable_bytes(&self) -> u64 {
        self.meta().g.eph_bytes
    }

    /// Evict ephemeral pages until at least `kib` KiB of page memory has been released (or
    /// nothing is left to evict); returns the KiB released, counted as [`Store::freeable_bytes`]
    /// counts (rounded down). Holes that compressed pages leave are compacted into whole
    /// frames. The frames go back to the store's free list (they stay allocated to the
    /// daemon, pre-faulted, for later puts).
    pub fn flush_kib(&self, kib: u64) -> u64 {
        let want = kib.saturating_mul(1024);
        let mut released = 0u64;
        // A chunk of evictions per lock acquisition, so a large flush never stalls the guests.
        loop {
            let mut m = self.meta();
            let mut out = Vec::new();
            let mut steps = 0;
            let mut more = true;
            while released < want && steps < REAP_CHUNK {
                steps += 1;
                if m.g.eph_data == 0 {
                    more = false;
                    break;
                }
                let z_before = m.g.z_pages;
                let bytes_before = m.g.eph_bytes;
                let evicted = m.evict_one();
                released += bytes_before - m.g.eph_bytes;
                match evicted {
                    Some(Some(f)) => out.push(f),
                    Some(None) => {
                        // A compressed page frees a frame only when its run empties; every
                        // so many, compaction turns the holes into whole frames.
                        if m.g.z_pages < z_before && steps.is_multiple_of(16) && m.zfreed.is_empty()
                        {
                            self.z_compact(&mut m, crate::zpage::PRESSURE_COMPACT);
                        }
                        out.append(&mut m.zfreed);
                    }
                    None => {
                        more = false;
                        break;
                    }
                }
            }
            drop(m);
            self.free_frames(&out);
            if !more || released >= want {
                break;
            }
            self.hand_off();
        }
        // The memory is released: give back the frames the holes it left add up to, a
        // pressure step's worth of moves per lock acquisition.
        for _ in 0..FLUSH_COMPACT_STEPS {
            if self.compactable_frames() == 0 {
                break;
            }
            self.compact(crate::zpage::PRESSURE_COMPACT);
            self.hand_off();
        }
        released / 1024
    }
}
