//! Statistics snapshot: everything Xen's `tmem-list` printed (global `G=`, client `C=`, pool
//! `P=` and shared-pool `S=` records), the seed's per-client counters, and tmemd's own
//! memory figures. Serialised as JSON on the admin control socket.

use crate::meta::{Meta, Obj, Pool};
use crate::{lock, Identity, Oid, Store, PAGE_SIZE};
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;

/// A snapshot of the whole store, taken under the metadata lock.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoreStats {
    /// Store-wide figures (Xen's `G=` record plus memory figures).
    pub global: GlobalStats,
    /// One entry per client (Xen's `C=` records), each with its pools (`P=` records).
    pub clients: Vec<ClientStats>,
    /// One entry per shared pool (Xen's `S=` records).
    pub shared_pools: Vec<SharedPoolStats>,
    /// tmemd's swap disks (filled in by the daemon, which owns them; the store only holds
    /// their pages, in each domain's persistent pool tagged "tmemswap").
    #[serde(default)]
    pub swap_disks: Vec<SwapDiskStats>,
    /// Xen domains saved or migrated away, pages kept for their uuid (filled in by tmemd).
    #[serde(default)]
    pub parked: Vec<crate::ParkedStats>,
}

/// One swap disk (a Xen PV block device served from a domain's persistent tmem pages).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SwapDiskStats {
    pub domid: u32,
    pub name: String,
    /// The guest's device name (`xvdz`) and blkif device number.
    pub device: String,
    pub devid: u32,
    pub sectors: u64,
    /// `offered` (waiting for the frontend), `connected`, `closed`, or `refused`.
    pub state: String,
    /// The store client and pool holding its pages (absent until connected).
    pub client_id: Option<u64>,
    pub pool_id: Option<u32>,
    /// Disk pages held in tmem memory (the pool's page count) and in the spill file.
    pub pages_in_memory: u64,
    pub pages_spilled: u64,
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub discards: u64,
    /// Writes that went to the spill file because the store refused them, and spilled
    /// pages a later write moved back into memory.
    pub spill_writes: u64,
    pub promotions: u64,
    /// Requests answered with an error (refused by the parser, or failed).
    pub errors: u64,
}

/// Compressed pages, store-wide.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompressionStats {
    /// Pages stored compressed now.
    pub pages: u64,
    /// Their compressed bytes.
    pub compressed_bytes: u64,
    /// Frames the size-class runs holding them take (`frames * 4096` is the memory they
    /// really use; the rest of those frames is rounding and free slots).
    pub frames: u64,
    /// Frames compaction could give back now.
    pub compactable_frames: u64,
    /// Compaction passes and objects moved by them.
    pub compactions: u64,
    pub compaction_moves: u64,
    /// Compressed pages that did not decompress (answered as misses; never expected).
    pub decompress_errors: u64,
    /// Puts whose page did not compress to the threshold (stored raw), and puts not tried
    /// because their client's recent pages did not compress.
    #[serde(default)]
    pub incompressible: u64,
    #[serde(default)]
    pub skipped: u64,
}

/// Store-wide counters and memory figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GlobalStats {
    /// Guest operations handled (new/destroy pool, put, get, flush page, flush object) (`Tt`).
    pub total_ops: u64,
    /// Guest operations that returned an error (`Te`).
    pub errored_ops: u64,
    /// Ephemeral pages evicted (`Et`).
    pub evictions: u64,
    /// Eviction attempts, successful or not (`Ea`).
    pub evict_attempts: u64,
    /// Ephemeral pages stored now, same-filled pages included (`Ec`).
    pub eph_pages: u64,
    /// Highest `eph_pages` seen (`Em`).
    pub eph_pages_max: u64,
    /// Objects stored now (`Oc`).
    pub objects: u64,
    /// Highest `objects` seen (`Om`).
    pub objects_max: u64,
    /// Pages stored now, all kinds, same-filled pages included (`Pc`).
    pub pages: u64,
    /// Highest `pages` seen (`Pm`).
    pub pages_max: u64,
    /// Pages stored as all-zero (metadata only, no data frame).
    pub zero_pages: u64,
    /// Pages stored as one 8-byte word repeated (metadata only, no data frame), all-zero
    /// pages included (as zram's `same_pages`): `same_filled_pages - zero_pages` are the
    /// non-zero ones.
    #[serde(default)]
    pub same_filled_pages: u64,
    /// Successful ephemeral puts (`Ep`).
    pub good_eph_puts: u64,
    /// Configured limit on page-data bytes.
    pub mem_limit_bytes: u64,
    /// Bytes of page data in use (frames holding a stored page, or being filled by a put).
    pub data_bytes: u64,
    /// Frames allocated (pre-faulted) so far; in use plus on the free list (`Fc`, in frames).
    pub frames_allocated: u64,
    /// Frames on the free list, ready for a put without a page fault (`Ta`).
    pub frames_free: u64,
    /// Ephemeral pages whose eviction would release page data now.
    pub freeable_pages: u64,
    /// The page memory, in bytes, their eviction would release (`tmem freeable`).
    #[serde(default)]
    pub freeable_bytes: u64,
    /// Estimate of the bytes of metadata (index, LRU links, frame locks, objects, pools).
    pub metadata_bytes: u64,
    /// Whether joining a shared pool needs a per-domain authorisation.
    pub shared_auth_required: bool,
    /// Compressed pages and the memory they take.
    #[serde(default)]
    pub compression: CompressionStats,
}

/// One client (a connected or detached guest domain instance).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientStats {
    /// The store's id for this client.
    pub client_id: u32,
    /// Xen domain id (`CI`); for a local client the label its hello named.
    pub domid: u32,
    /// For a local client, the uid the kernel reported for its socket; `None` for Xen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_uid: Option<u32>,
    /// Domain instance (distinguishes reuses of a domain id).
    pub instance: u64,
    /// Name given at attach.
    pub name: String,
    /// Whether the guest is connected now.
    pub attached: bool,
    /// Eviction weight (`ww`).
    pub weight: u32,
    /// Cap on the page memory of its private pools, in 4 KiB units (`cap_bytes / 4096`),
    /// 0 = none (`ca`); enforced on `mem_bytes`.
    pub cap_pages: u64,
    /// The same cap in bytes (0 = none).
    #[serde(default)]
    pub cap_bytes: u64,
    /// Page memory its private pools' pages take (raw 4096 B each, compressed their share of
    /// a run, same-filled none): what its cap and its weighted share count.
    #[serde(default)]
    pub mem_bytes: u64,
    /// Compression requested (`co`); stored and reported only.
    pub compress: bool,
    /// Frozen: puts of new handles refused (`fr`).
    pub frozen: bool,
    /// Pages charged to this client (its private pools, ephemeral and persistent, same-filled pages included).
    pub pages: u64,
    /// Ephemeral pages in its private pools now (`Ec`).
    pub eph_pages: u64,
    /// Highest `eph_pages` seen (`Em`).
    pub eph_pages_max: u64,
    /// Successful ephemeral gets (`Ge`).
    pub succ_eph_gets: u64,
    /// Successful persistent puts (`Pp`).
    pub pers_puts: u64,
    /// Successful persistent gets (`Gp`).
    pub pers_gets: u64,
    /// Gets that returned data (seed `succ_gets`).
    pub succ_gets: u64,
    /// Gets that missed or failed (seed `failed_gets`).
    pub failed_gets: u64,
    /// Successful puts (seed `puts`).
    pub puts: u64,
    /// Page and object flushes (seed `invalidates`).
    pub invalidates: u64,
    /// Operations answered with an error (this client's share of the global `errored_ops`).
    #[serde(default)]
    pub errors: u64,
    /// Ephemeral pages of its private pools evicted under memory pressure.
    #[serde(default)]
    pub evictions: u64,
    /// This client's pools (`P=` records), by pool id.
    pub pools: Vec<PoolStats>,
}

/// One pool as seen from one client.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolStats {
    /// Pool id within the client (`PI`).
    pub pool_id: u32,
    /// Xen's two-letter type: `EP`, `ES` or `PP` (`PT`).
    pub kind: String,
    /// Pool uuid (`U0`, `U1`).
    pub uuid: [u64; 2],
    /// False for a persistent pool kept across a detach and not yet re-created by the guest.
    pub adopted: bool,
    /// The pool's counters (shared pools: the same counters for every sharer).
    pub counters: PoolCounters,
}

/// Per-pool counters (the long part of Xen's `P=` record).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolCounters {
    /// Pages now (`Pc`).
    pub pages: u64,
    /// Of those, pages stored compressed, and their compressed bytes.
    #[serde(default)]
    pub compressed_pages: u64,
    #[serde(default)]
    pub compressed_bytes: u64,
    /// Page memory the pool's pages take: a frame for each raw page, each compressed page's
    /// share of its run (run bytes / slots of its size class), nothing for same-filled
    /// pages. Pages of a flushed object or destroyed pool count until they are reclaimed.
    #[serde(default)]
    pub mem_bytes: u64,
    /// Highest `pages` seen (`Pm`).
    pub pages_max: u64,
    /// Objects now (`Oc`).
    pub objects: u64,
    /// Highest `objects` seen (`Om`).
    pub objects_max: u64,
    /// Successful puts (`ps`).
    pub good_puts: u64,
    /// All puts (`pt`).
    pub total_puts: u64,
    /// Duplicate puts that failed and flushed the old copy (`pd`).
    pub dup_puts_flushed: u64,
    /// Duplicate puts that replaced the data (`pr`).
    pub dup_puts_replaced: u64,
    /// Puts refused for lack of memory (`px`).
    pub no_mem_puts: u64,
    /// Gets that found the page (`gs`).
    pub found_gets: u64,
    /// All gets (`gt`).
    pub total_gets: u64,
    /// Page flushes that found the page (`fs`).
    pub found_flushes: u64,
    /// All page flushes (`ft`).
    pub total_flushes: u64,
    /// Object flushes that found the object (`os`).
    pub found_obj_flushes: u64,
    /// All object flushes (`ot`).
    pub total_obj_flushes: u64,
    /// Ephemeral pages of this pool evicted under memory pressure.
    #[serde(default)]
    pub evictions: u64,
}

/// One shared pool (Xen's `S=` record).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SharedPoolStats {
    /// Pool uuid (`U0`, `U1`).
    pub uuid: [u64; 2],
    /// Xen's two-letter type, always `ES` (`PT`).
    pub kind: String,
    /// Domain ids of the Xen sharers (`SC`).
    pub sharers: Vec<u32>,
    /// Local sharers, as `local:UID:LABEL`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub local_sharers: Vec<String>,
    /// Eviction weight of the pool's own account.
    pub weight: u32,
    /// The pool's counters.
    pub counters: PoolCounters,
}

impl ClientStats {
    /// The client's identity: a Xen domain, or a local uid and label.
    pub fn identity(&self) -> crate::Identity {
        match self.local_uid {
            None => crate::Identity::Xen { domid: self.domid },
            Some(uid) => crate::Identity::Local {
                uid,
                label: self.domid,
            },
        }
    }
}

impl Store {
    /// A snapshot of every counter, taken under the metadata lock.
    pub fn stats(&self) -> StoreStats {
        let m = self.meta();
        let (free_len, fresh) = {
            let f = lock(&self.free);
            (f.list.len() as u64, f.fresh as u64)
        };
        let mut clients: Vec<ClientStats> = m
            .clients
            .iter()
            .map(|(id, cl)| ClientStats {
                client_id: id.0,
                domid: match cl.identity {
                    Identity::Xen { domid } => domid,
                    Identity::Local { label, .. } => label,
                },
                local_uid: match cl.identity {
                    Identity::Xen { .. } => None,
                    Identity::Local { uid, .. } => Some(uid),
                },
                instance: cl.instance,
                name: cl.name.clone(),
                attached: cl.attached,
                weight: cl.weight,
                cap_pages: cl.cap_bytes / PAGE_SIZE as u64,
                cap_bytes: cl.cap_bytes,
                mem_bytes: cl.bytes,
                compress: cl.compress,
                frozen: cl.frozen,
                pages: cl.pages,
                eph_pages: m
                    .accounts
                    .get(cl.account as usize)
                    .and_then(Option::as_ref)
                    .map_or(0, |a| a.eph),
                eph_pages_max: cl.c.eph_max,
                succ_eph_gets: cl.c.succ_eph_gets,
                pers_puts: cl.c.pers_puts,
                pers_gets: cl.c.pers_gets,
                succ_gets: cl.c.succ_gets,
                failed_gets: cl.c.failed_gets,
                puts: cl.c.puts,
                invalidates: cl.c.invalidates,
                errors: cl.c.errors,
                evictions: cl.c.evictions,
                pools: cl
                    .pools
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| {
                        let s = (*s)?;
                        let p = m.pool(s.gid);
                        Some(PoolStats {
                            pool_id: i as u32,
                            kind: p.kind.xen_tag().to_owned(),
                            uuid: p.uuid,
                            adopted: s.adopted,
                            counters: p.c.clone(),
                        })
                    })
                    .collect(),
            })
            .collect();
        clients.sort_by_key(|c| (c.identity(), c.client_id));
        let mut shared_pools: Vec<SharedPoolStats> = m
            .shared
            .values()
            .map(|&gid| {
                let p = m.pool(gid);
                SharedPoolStats {
                    uuid: p.uuid,
                    kind: p.kind.xen_tag().to_owned(),
                    sharers: p
                        .sharers
                        .iter()
                        .filter_map(|c| match m.clients.get(c)?.identity {
                            Identity::Xen { domid } => Some(domid),
                            Identity::Local { .. } => None,
                        })
                        .collect(),
                    local_sharers: p
                        .sharers
                        .iter()
                        .filter_map(|c| match m.clients.get(c)?.identity {
                            Identity::Xen { .. } => None,
                            local => Some(local.to_string()),
                        })
                        .collect(),
                    weight: m
                        .accounts
                        .get(p.account as usize)
                        .and_then(Option::as_ref)
                        .map_or(0, |a| a.weight),
                    counters: p.c.clone(),
                }
            })
            .collect();
        shared_pools.sort_by_key(|s| s.uuid);
        // Frames compressed runs gave back are free, though not on the list yet.
        let used = fresh - free_len - m.zfreed.len() as u64;
        StoreStats {
            global: GlobalStats {
                total_ops: self.total_ops.load(Ordering::Relaxed),
                errored_ops: self.errored_ops.load(Ordering::Relaxed),
                evictions: m.g.evictions,
                evict_attempts: m.g.evict_attempts,
                eph_pages: m.g.eph,
                eph_pages_max: m.g.eph_max,
                objects: m.g.objects,
                objects_max: m.g.objects_max,
                pages: m.g.pages,
                pages_max: m.g.pages_max,
                zero_pages: m.g.zero_pages,
                same_filled_pages: m.g.same_pages,
                good_eph_puts: m.g.good_eph_puts,
                mem_limit_bytes: self.nframes as u64 * PAGE_SIZE as u64,
                data_bytes: used * PAGE_SIZE as u64,
                frames_allocated: fresh,
                frames_free: free_len,
                freeable_pages: m.g.eph_data,
                freeable_bytes: m.g.eph_bytes,
                metadata_bytes: self.metadata_bytes(&m, free_len),
                shared_auth_required: m.auth_required,
                compression: CompressionStats {
                    pages: m.g.z_pages,
                    compressed_bytes: m.g.z_bytes,
                    frames: m.z.stats().frames,
                    compactable_frames: m.z.reclaimable_frames(),
                    compactions: m.g.z_compactions,
                    compaction_moves: m.g.z_moved,
                    decompress_errors: self.zerrors.load(Ordering::Relaxed),
                    incompressible: self.zincompressible.load(Ordering::Relaxed),
                    skipped: self.zskipped.load(Ordering::Relaxed),
                },
            },
            clients,
            shared_pools,
            swap_disks: Vec::new(),
            parked: Vec::new(),
        }
    }

    /// Estimate of metadata bytes: per-node arrays, frame locks, object and pool maps.
    fn metadata_bytes(&self, m: &Meta, free_cap: u64) -> u64 {
        fn map_bytes(cap: usize, entry: usize) -> u64 {
            if cap == 0 {
                return 0;
            }
            // hashbrown: buckets = next power of two of cap * 8 / 7, one control byte each
            // plus a group of trailing control bytes.
            let buckets = (cap * 8 / 7).next_power_of_two().max(4);
            (buckets * (entry + 1) + 16) as u64
        }
        let mut b = m.dl.bytes() + m.xl.bytes() + self.frames.overhead_bytes();
        b += 4 * free_cap + 4 * m.x_free.capacity() as u64 + 8 * m.xfill.capacity() as u64;
        b += (m.objs.capacity() * std::mem::size_of::<Option<Obj>>()) as u64;
        b += 4 * m.obj_free.capacity() as u64;
        b += m.obj_heap_bytes;
        for p in m.pools.iter().flatten() {
            b += std::mem::size_of::<Pool>() as u64;
            b += map_bytes(p.objs.capacity(), std::mem::size_of::<(Oid, u32)>());
        }
        b
    }
}
