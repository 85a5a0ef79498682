//! Durable page memory: a store whose frames and page records live in a page file
//! (`tmem-pmem`), rebuilt by a scan when tmemd starts again.
//!
//! What is kept: private persistent pools with a uuid (the pools a guest can reattach) and
//! their pages; and, best effort, each client's membership of its ephemeral and shared pools,
//! without their pages (so that a Xen frontend that stayed connected keeps its pool ids;
//! their owners start them empty after a restart anyway). Not uuid-less persistent pools,
//! which a guest cannot name again.
//!
//! Write order (see docs/persistence.md for why each step is safe against a kill):
//! * a new persistent pool: its pool record is written before its id is returned;
//! * a put into such a pool: data into a frame that has no valid record, then the frame's
//!   record (sealed last) with a new sequence number, and only then is any older copy of the
//!   page removed (its record cleared). Never a refill in place: a kill between the two
//!   leaves two records and recovery keeps the higher sequence number;
//! * a flush, or anything else that removes a page: its record is cleared before its frame
//!   can be reused;
//! * a destroyed pool: its pool record is cleared at once (its pages are then orphans that
//!   recovery drops), and the record slot is reused only when every page is gone.
//! * a Xen client re-keyed to another domain id ([`Store::rekey`], `rekey.rs`): pool records
//!   are never rewritten (a rewrite in place could be torn and lose the pool); a *rename
//!   record* in a free pool slot says which records now belong to the new domain id, and its
//!   single sealed write is the commit point.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tmem_pmem::{page_flags, OpenError, Opened, PageFile, PageMemory, PageRecord, PoolRecord};

use crate::frames::FrameMem;
use crate::meta::{Meta, Slot, EXTRA, NIL};
use crate::pools::new_pool_slot;
use crate::{ClientId, Identity, Oid, PageKey, PoolKind, Store, StoreConfig, PAGE_SIZE};

/// What [`Store::open_durable`] found in the page file.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Recovery {
    /// The file was new (or its formatting had never finished): nothing to recover.
    pub formatted: bool,
    /// Minor format version of the file found.
    pub format_minor: u32,
    /// Clients rebuilt (detached, waiting for their guest to reattach).
    pub clients: u32,
    /// Persistent pools rebuilt.
    pub pools: u32,
    /// Persistent pages recovered (with a frame, and same-filled ones kept as records).
    pub pages: u64,
    /// Of those, all-zero pages.
    pub zero_pages: u64,
    /// Of those, same-filled pages (one 8-byte word repeated), all-zero ones included.
    #[serde(default)]
    pub same_filled_pages: u64,
    /// Of those, compressed pages (format 1.2 on).
    #[serde(default)]
    pub compressed_pages: u64,
    /// Of two records for one page (a duplicate put cut short), the older, dropped.
    pub superseded: u64,
    /// Page records whose pool no longer exists (a destroy cut short), dropped; and pool
    /// records that lost to a newer one of the same guest.
    pub orphans: u64,
    /// Records whose write had been cut short (invalid seal), dropped.
    pub torn: u64,
    /// Frames in the file (its geometry wins over the configured memory limit).
    pub nframes: u32,
    /// The configured limit asked for another number of frames than the file has.
    pub geometry_differs: bool,
    pub scan: Duration,
    pub rebuild: Duration,
}

/// Bytes a new page file takes for `cfg`.
pub fn page_file_len(cfg: &StoreConfig) -> u64 {
    tmem_pmem::file_len(geometry(cfg))
}

pub(crate) fn geometry(cfg: &StoreConfig) -> tmem_pmem::Geometry {
    let nframes = crate::frames_for(cfg);
    tmem_pmem::Geometry {
        nframes,
        // Same-filled and compressed persistent pages: more of them than frames.
        nxrecs: nframes.saturating_mul(2).max(1),
        npools: nframes.clamp(MIN_POOL_RECORDS, MAX_POOL_RECORDS),
    }
}

/// Persistent pools the page file can describe (64 bytes each): one per frame, within these
/// bounds (a pool with a uuid and no pages still needs its record to be found again).
const MIN_POOL_RECORDS: u32 = 64;
const MAX_POOL_RECORDS: u32 = 16384;

/// Identity encoding in pool records.
const TAG_XEN: u8 = 1;
const TAG_LOCAL: u8 = 2;
/// Pool kind encoding in pool records.
const KIND_PRIVATE_PERSISTENT: u8 = 1;
const KIND_PRIVATE_EPHEMERAL: u8 = 2;
const KIND_SHARED_EPHEMERAL: u8 = 3;
/// Not a pool: a rename record (see [`Rename`]). A tmemd before format 1.3's renames reads it
/// as a record of an unknown kind and drops it (its pools then come back under the old id).
pub(crate) const KIND_RENAME: u8 = 4;

/// A rename record: pool records of Xen domain `from`, instance `instance`, with a generation
/// below `bound`, belong to Xen domain `to`. Encoded in a pool record slot as `owner_tag`
/// Xen, `owner_a` = from, `owner_b` = to, `uuid[0]` = bound, `kind` [`KIND_RENAME`]. Of two
/// for one `(from, instance)` the higher `gen` wins; recovery applies them in `gen` order, so
/// a chain (5 to 6, then 6 to 9) resolves to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rename {
    pub(crate) slot: u32,
    pub(crate) from: u32,
    pub(crate) to: u32,
    pub(crate) instance: u64,
    pub(crate) bound: u64,
    pub(crate) gen: u64,
}

impl Rename {
    fn record(&self) -> PoolRecord {
        PoolRecord {
            owner_tag: TAG_XEN,
            owner_a: self.from,
            owner_b: self.to,
            instance: self.instance,
            pool_index: 0,
            kind: KIND_RENAME,
            uuid: [self.bound, 0],
            gen: self.gen,
        }
    }
}

/// The identity a pool record of `id`, `instance` and `gen` belongs to after the renames
/// (sorted by `gen`); marks the renames that applied.
fn renamed(
    renames: &[Rename],
    used: &mut [bool],
    id: Identity,
    instance: u64,
    gen: u64,
) -> Identity {
    let Identity::Xen { mut domid } = id else {
        return id;
    };
    for (i, rn) in renames.iter().enumerate() {
        if rn.from == domid && rn.instance == instance && gen < rn.bound {
            domid = rn.to;
            used[i] = true;
        }
    }
    Identity::Xen { domid }
}

fn kind_code(k: PoolKind) -> u8 {
    match k {
        PoolKind::PrivatePersistent => KIND_PRIVATE_PERSISTENT,
        PoolKind::PrivateEphemeral => KIND_PRIVATE_EPHEMERAL,
        PoolKind::SharedEphemeral => KIND_SHARED_EPHEMERAL,
    }
}

fn kind_of(code: u8) -> Option<PoolKind> {
    match code {
        KIND_PRIVATE_PERSISTENT => Some(PoolKind::PrivatePersistent),
        KIND_PRIVATE_EPHEMERAL => Some(PoolKind::PrivateEphemeral),
        KIND_SHARED_EPHEMERAL => Some(PoolKind::SharedEphemeral),
        _ => None,
    }
}

fn encode_identity(id: Identity) -> (u8, u32, u32) {
    match id {
        Identity::Xen { domid } => (TAG_XEN, domid, 0),
        Identity::Local { uid, label } => (TAG_LOCAL, uid, label),
    }
}

fn decode_identity(tag: u8, a: u32, b: u32) -> Option<Identity> {
    match tag {
        TAG_XEN => Some(Identity::Xen { domid: a }),
        TAG_LOCAL => Some(Identity::Local { uid: a, label: b }),
        _ => None,
    }
}

/// Recovery: the record that holds a page so far (of two, the higher sequence number wins).
struct Winner {
    seq: u64,
    /// Its frame, or its metadata record slot (`xrec`).
    slot: u32,
    xrec: bool,
    /// The word of a same-filled page, or where a compressed page is.
    fill: u64,
    compressed: bool,
}

/// Durable bookkeeping, kept under the metadata lock.
#[derive(Debug)]
pub(crate) struct Dur {
    pub(crate) pm: Arc<PageMemory>,
    /// Pool record slots not in use (popped from the end).
    pool_free: Vec<u32>,
    /// The metadata record of each extra node (by extra index; [`NIL`]: none).
    xrec: Vec<u32>,
    xrec_free: Vec<u32>,
    /// Metadata records never used yet start here.
    xrec_fresh: u32,
    /// Clients rebuilt by recovery, with their detach epoch.
    recovered: Vec<(ClientId, u64)>,
    /// Rename records in the file (see [`Rename`]).
    pub(crate) renames: Vec<Rename>,
    /// The Xen domain id each pool record slot was written under (renames leave it as is).
    pub(crate) slot_owner: HashMap<u32, u32>,
}

impl Dur {
    fn new(pm: Arc<PageMemory>) -> Dur {
        let g = pm.geometry();
        Dur {
            pool_free: (0..g.npools).rev().collect(),
            xrec: Vec::new(),
            xrec_free: Vec::new(),
            xrec_fresh: 0,
            recovered: Vec::new(),
            renames: Vec::new(),
            slot_owner: HashMap::new(),
            pm,
        }
    }

    /// Write rename `rn` into a free pool slot (its `slot` is filled in); false if none free.
    pub(crate) fn write_rename(&mut self, rn: &mut Rename) -> bool {
        let Some(slot) = self.pool_free.pop() else {
            return false;
        };
        rn.slot = slot;
        self.pm.write_pool(slot, &rn.record());
        self.renames.push(*rn);
        true
    }

    /// Clear the rename record in `slot` and free the slot.
    pub(crate) fn clear_rename(&mut self, slot: u32) {
        if let Some(i) = self.renames.iter().position(|r| r.slot == slot) {
            self.renames.swap_remove(i);
            self.pm.clear_pool(slot);
            self.pool_free.push(slot);
        }
    }

    /// Free pool record slots.
    pub(crate) fn free_pool_slots(&self) -> usize {
        self.pool_free.len()
    }

    /// The metadata record of extra node `x`, if it has one.
    pub(crate) fn xrec_of(&self, x: u32) -> Option<u32> {
        self.xrec
            .get((x & !EXTRA) as usize)
            .copied()
            .filter(|&r| r != NIL)
    }

    /// Clear metadata record `r` and make it free.
    pub(crate) fn release_xrec(&mut self, r: u32) {
        self.pm.clear_xrec(r);
        self.xrec_free.push(r);
    }

    pub(crate) fn xrec_available(&self) -> bool {
        !self.xrec_free.is_empty() || self.xrec_fresh < self.pm.geometry().nxrecs
    }

    fn take_xrec(&mut self) -> Option<u32> {
        if let Some(r) = self.xrec_free.pop() {
            return Some(r);
        }
        if self.xrec_fresh < self.pm.geometry().nxrecs {
            self.xrec_fresh += 1;
            return Some(self.xrec_fresh - 1);
        }
        None
    }

    fn set_xrec(&mut self, x: u32, r: u32) {
        let i = (x & !EXTRA) as usize;
        if self.xrec.len() <= i {
            self.xrec.resize(i + 1, NIL);
        }
        self.xrec[i] = r;
    }
}

impl Meta {
    /// Whether pool `gid`'s pages are kept in the page file.
    #[inline]
    pub(crate) fn durable_pool(&self, gid: u32) -> bool {
        self.dur.is_some() && self.pool(gid).rec != NIL
    }

    /// Whether a same-filled page of pool `gid` may be kept without a frame now (else it is
    /// stored in a frame like any other page).
    pub(crate) fn can_same(&self, gid: u32) -> bool {
        self.g.same_pages < self.max_same && self.record_room(gid)
    }

    /// Whether a page of pool `gid` kept without a frame can have its record now (always,
    /// for a pool whose pages are not in the page file).
    pub(crate) fn record_room(&self, gid: u32) -> bool {
        match &self.dur {
            Some(d) if self.pool(gid).rec != NIL => d.xrec_available(),
            _ => true,
        }
    }

    /// Record in the page file that `node` now holds page `key` of pool `gid`: called after
    /// its data is in place and before any older copy of the page is removed. A same-filled
    /// node must have passed [`Meta::can_same`] under the same lock.
    pub(crate) fn publish(&mut self, gid: u32, key: &PageKey, node: u32) {
        let rec = self.pool(gid).rec;
        let Some(d) = self.dur.as_mut().filter(|_| rec != NIL) else {
            return;
        };
        let r = PageRecord {
            pool_slot: rec,
            flags: 0,
            oid: key.oid.0,
            index: key.index,
            seq: d.pm.next_seq(),
            fill: 0,
        };
        if node & EXTRA == 0 {
            d.pm.publish_frame(node, &r);
            return;
        }
        if let Some(loc) = self.z_location(node) {
            let Some(d) = self.dur.as_mut() else { return };
            if let Some(slot) = d.take_xrec() {
                d.set_xrec(node, slot);
                let flags = page_flags::COMPRESSED;
                d.pm.publish_xrec(
                    slot,
                    &PageRecord {
                        flags,
                        fill: loc,
                        ..r
                    },
                );
            }
            return;
        }
        let fill = self.fill_of(node);
        let Some(d) = self.dur.as_mut() else { return };
        if let Some(slot) = d.take_xrec() {
            d.set_xrec(node, slot);
            // Zero pages exactly as format 1.0 wrote them, so that a 1.0 tmemd still reads
            // them; other words with the flag a 1.0 tmemd does not know (it drops the page
            // rather than taking it for a zero page).
            let flags = if fill == 0 {
                page_flags::ZERO
            } else {
                page_flags::SAME
            };
            d.pm.publish_xrec(slot, &PageRecord { flags, fill, ..r });
        }
    }

    /// A persistent page's `node` is being removed: its record goes first, so that its
    /// frame (or record slot) can be reused.
    pub(crate) fn unpublish(&mut self, node: u32) {
        let Some(d) = self.dur.as_mut() else { return };
        if node & EXTRA == 0 {
            d.pm.clear_frame(node);
            return;
        }
        let i = (node & !EXTRA) as usize;
        if let Some(r) = d.xrec.get_mut(i) {
            if *r != NIL {
                d.pm.clear_xrec(*r);
                d.xrec_free.push(*r);
                *r = NIL;
            }
        }
    }

    /// Whether a durable pool record can be had for a new persistent pool with this uuid
    /// (`None`: not durable at all).
    pub(crate) fn pool_record_available(&self, kind: PoolKind, uuid: [u64; 2]) -> Option<bool> {
        let d = self.dur.as_ref()?;
        if !kind.is_persistent() || uuid == [0, 0] {
            return None;
        }
        Some(!d.pool_free.is_empty())
    }

    /// Give new pool `gid` (slot `pool_index` of client `c`) a pool record, if it is one the
    /// page file keeps and a record is free.
    pub(crate) fn record_pool(&mut self, gid: u32, c: ClientId, pool_index: u32) {
        let p = self.pool(gid);
        if self.pool_record_available(p.kind, p.uuid) != Some(true) {
            return;
        }
        if let Some(slot) = self.write_pool_record(gid, c, pool_index, p.gen) {
            self.pool_mut(gid).rec = slot;
        }
    }

    /// Record client `c`'s membership of ephemeral or shared pool `gid` (its slot
    /// `pool_index`), so that a frontend still connected after a restart finds its pool ids
    /// (empty: ephemeral pages are not kept). Best effort: without a free record the pool
    /// is simply not there after a restart, as ephemeral pools may not be.
    pub(crate) fn record_slot(&mut self, gid: u32, c: ClientId, pool_index: u32) {
        // Best effort, and never at the cost of a persistent pool's record: a quarter of the
        // records stays for those.
        let Some(d) = self.dur.as_ref() else { return };
        if d.pool_free.len() as u64 <= d.pm.geometry().npools as u64 / 4 {
            return;
        }
        // The membership's own age (a shared pool may be older than its sharer).
        let gen = self.next_gen;
        let Some(slot) = self.write_pool_record(gid, c, pool_index, gen) else {
            return;
        };
        if let Some(Some(s)) = self
            .clients
            .get_mut(&c)
            .and_then(|cl| cl.pools.get_mut(pool_index as usize))
        {
            s.rec = slot;
        }
    }

    /// Write the record of pool `gid` as slot `pool_index` of client `c`; its record slot,
    /// or `None` (not durable, no free record, or an id the record cannot hold).
    fn write_pool_record(
        &mut self,
        gid: u32,
        c: ClientId,
        pool_index: u32,
        gen: u64,
    ) -> Option<u32> {
        let p = self.pool(gid);
        let (kind, uuid) = (p.kind, p.uuid);
        let cl = self.clients.get(&c)?;
        let (tag, a, b) = encode_identity(cl.identity);
        let rec = PoolRecord {
            owner_tag: tag,
            owner_a: a,
            owner_b: b,
            instance: cl.instance,
            pool_index: u16::try_from(pool_index).ok()?,
            kind: kind_code(kind),
            uuid,
            gen,
        };
        let d = self.dur.as_mut()?;
        let slot = d.pool_free.pop()?;
        d.pm.write_pool(slot, &rec);
        if tag == TAG_XEN {
            d.slot_owner.insert(slot, a);
        }
        Some(slot)
    }

    /// A membership record (see [`Meta::record_slot`]) goes, with its slot.
    pub(crate) fn forget_slot(&mut self, rec: u32) {
        if let Some(d) = self.dur.as_mut().filter(|_| rec != NIL) {
            d.pm.clear_pool(rec);
            d.pool_free.push(rec);
            d.slot_owner.remove(&rec);
        }
    }

    /// Pool `gid` is closed: its record goes now (its pages become orphans for a recovery);
    /// the slot is kept until the pool's pages are all freed ([`Meta::release_pool_record`]).
    pub(crate) fn forget_pool(&mut self, gid: u32) {
        let rec = self.pool(gid).rec;
        if let Some(d) = self.dur.as_ref().filter(|_| rec != NIL) {
            d.pm.clear_pool(rec);
        }
    }

    /// Pool slot `gid` is being freed: its record slot may be used again.
    pub(crate) fn release_pool_record(&mut self, rec: u32) {
        if let Some(d) = self.dur.as_mut().filter(|_| rec != NIL) {
            d.pool_free.push(rec);
            d.slot_owner.remove(&rec);
        }
    }
}

impl Store {
    /// A store whose page memory is `file`: formatted if new, else every persistent page it
    /// holds is recovered, each client that owns one rebuilt detached (see
    /// [`Store::recovered_clients`]). Refuses (leaving the file untouched) a file it cannot
    /// read. An existing file keeps the number of frames it was made with.
    pub fn open_durable(cfg: StoreConfig, file: PageFile) -> Result<(Store, Recovery), OpenError> {
        let want = geometry(&cfg);
        let (pm, opened) = PageMemory::open(file, want)?;
        let pm = Arc::new(pm);
        let geo = pm.geometry();
        let mut rep = Recovery {
            formatted: opened == Opened::Formatted,
            format_minor: match opened {
                Opened::Existing { minor } => minor,
                Opened::Formatted => tmem_pmem::FORMAT_MINOR,
            },
            nframes: geo.nframes,
            geometry_differs: geo.nframes != want.nframes,
            ..Recovery::default()
        };
        let mut cfg = cfg;
        cfg.mem_limit_bytes = geo.nframes as u64 * PAGE_SIZE as u64;
        let store = Store::with_memory(
            cfg,
            geo.nframes,
            FrameMem::Mapped(pm.clone()),
            Some(Dur::new(pm.clone())),
        );
        if !rep.formatted {
            store.recover(&pm, &mut rep);
        }
        Ok((store, rep))
    }

    fn recover(&self, pm: &PageMemory, rep: &mut Recovery) {
        let scan = pm.scan();
        rep.scan = scan.took;
        rep.torn = scan.torn;
        let start = Instant::now();
        let mut m = self.meta();
        let m = &mut *m;

        // Pools: per identity the newest instance wins (an older one was being replaced);
        // per (identity, pool index) the newest record.
        // Renames first: per (from, instance) the newest, applied in generation order.
        let (rename_recs, pool_recs): (Vec<_>, Vec<_>) = scan
            .pools
            .into_iter()
            .partition(|(_, r)| r.kind == KIND_RENAME && r.owner_tag == TAG_XEN);
        let mut newest_rename: HashMap<(u32, u64), Rename> = HashMap::new();
        for (slot, r) in rename_recs {
            let rn = Rename {
                slot,
                from: r.owner_a,
                to: r.owner_b,
                instance: r.instance,
                bound: r.uuid[0],
                gen: r.gen,
            };
            let loser = match newest_rename.get(&(rn.from, rn.instance)) {
                Some(o) if o.gen > rn.gen => rn.slot,
                Some(o) => {
                    let l = o.slot;
                    newest_rename.insert((rn.from, rn.instance), rn);
                    l
                }
                None => {
                    newest_rename.insert((rn.from, rn.instance), rn);
                    continue;
                }
            };
            rep.orphans += 1;
            pm.clear_pool(loser);
        }
        let mut renames: Vec<Rename> = newest_rename.into_values().collect();
        renames.sort_by_key(|r| r.gen);
        let mut rename_used = vec![false; renames.len()];
        let mut slot_owner: HashMap<u32, u32> = HashMap::new();

        let mut newest: HashMap<Identity, (u64, u64)> = HashMap::new();
        let mut pools: Vec<(u32, Identity, PoolKind, PoolRecord)> = Vec::new();
        for (slot, r) in pool_recs {
            let id = decode_identity(r.owner_tag, r.owner_a, r.owner_b)
                .map(|id| renamed(&renames, &mut rename_used, id, r.instance, r.gen));
            let kind = kind_of(r.kind);
            match (id, kind) {
                (Some(id), Some(kind))
                    if r.uuid != [0, 0] || kind == PoolKind::PrivateEphemeral =>
                {
                    let e = newest.entry(id).or_insert((r.instance, r.gen));
                    if r.gen > e.1 {
                        *e = (r.instance, r.gen);
                    }
                    pools.push((slot, id, kind, r));
                }
                _ => {
                    rep.orphans += 1;
                    pm.clear_pool(slot);
                }
            }
        }
        pools.sort_by_key(|(_, _, _, r)| std::cmp::Reverse(r.gen));
        let mut gid_of_slot: HashMap<u32, u32> = HashMap::new();
        let mut used_slots = vec![false; pm.geometry().npools as usize];
        let mut max_gen = 0;
        for (slot, id, kind, r) in pools {
            max_gen = max_gen.max(r.gen);
            let instance_ok = newest.get(&id).is_some_and(|&(i, _)| i == r.instance);
            let c = match m.by_identity.get(&id) {
                Some(&c) => c,
                None if instance_ok => {
                    let c = m.new_client(id, r.instance, "");
                    if let Some(cl) = m.clients.get_mut(&c) {
                        cl.attached = false;
                        cl.detach_epoch = 1;
                    }
                    rep.clients += 1;
                    c
                }
                None => {
                    rep.orphans += 1;
                    pm.clear_pool(slot);
                    continue;
                }
            };
            let idx = r.pool_index as usize;
            let taken = m
                .clients
                .get(&c)
                .is_none_or(|cl| cl.pools.get(idx).is_some_and(Option::is_some));
            let shared_full = kind.is_shared()
                && !m.shared.contains_key(&r.uuid)
                && m.shared.len() >= m.cfg.max_shared_pools as usize;
            if !instance_ok || taken || shared_full || idx >= m.cfg.max_pools_per_client as usize {
                rep.orphans += 1;
                pm.clear_pool(slot);
                continue;
            }
            let account = m.clients.get(&c).map_or(0, |cl| cl.account);
            let gid = if kind.is_shared() {
                match m.shared.get(&r.uuid) {
                    Some(&gid) => {
                        m.pool_mut(gid).sharers.push(c);
                        gid
                    }
                    None => {
                        let account = m.new_account(m.cfg.default_weight);
                        let gid = new_pool_slot(m, kind, r.uuid, account, None, vec![c]);
                        m.shared.insert(r.uuid, gid);
                        gid
                    }
                }
            } else {
                new_pool_slot(m, kind, r.uuid, account, Some(c), Vec::new())
            };
            let membership = if kind.is_persistent() {
                m.pool_mut(gid).rec = slot;
                gid_of_slot.insert(slot, gid);
                rep.pools += 1;
                NIL
            } else {
                slot
            };
            if let Some(cl) = m.clients.get_mut(&c) {
                if cl.pools.len() <= idx {
                    cl.pools.resize(idx + 1, None);
                }
                cl.pools[idx] = Some(Slot {
                    gid,
                    adopted: false,
                    rec: membership,
                });
            }
            used_slots[slot as usize] = true;
            if r.owner_tag == TAG_XEN {
                slot_owner.insert(slot, r.owner_a);
            }
        }
        // Renames no kept record needs go; the others stay with their slots.
        let mut kept_renames = Vec::new();
        for (rn, used) in renames.into_iter().zip(rename_used) {
            max_gen = max_gen.max(rn.gen).max(rn.bound);
            if used {
                used_slots[rn.slot as usize] = true;
                kept_renames.push(rn);
            } else {
                pm.clear_pool(rn.slot);
            }
        }
        m.next_gen = m.next_gen.max(max_gen + 1);

        // Runs of compressed pages (format 1.2): rebuilt first, so that compressed page
        // records can find their slots.
        let (frames, run_frames) = self.recover_runs(m, pm, scan.frames, rep);

        // Pages: of two records for one page the higher sequence number wins.
        let mut best: HashMap<(u32, Oid, u32), Winner> = HashMap::new();
        let candidates = frames
            .into_iter()
            .map(|(f, r)| (f, r, false))
            .chain(scan.xrecs.into_iter().map(|(x, r)| (x, r, true)));
        let clear = |slot: u32, xrec: bool| {
            if xrec {
                pm.clear_xrec(slot);
            } else {
                pm.clear_frame(slot);
            }
        };
        for (slot, r, xrec) in candidates {
            let ok_kind = if xrec {
                r.flags == page_flags::ZERO
                    || r.flags == page_flags::SAME
                    || r.flags == page_flags::COMPRESSED
            } else {
                r.flags == 0
            };
            if !ok_kind || !gid_of_slot.contains_key(&r.pool_slot) {
                rep.orphans += 1;
                clear(slot, xrec);
                continue;
            }
            let key = (r.pool_slot, Oid(r.oid), r.index);
            // A ZERO record (format 1.0's only kind) is the word 0 whatever its last word.
            let fill = if r.flags == page_flags::SAME || r.flags == page_flags::COMPRESSED {
                r.fill
            } else {
                0
            };
            let new = Winner {
                seq: r.seq,
                slot,
                xrec,
                fill,
                compressed: r.flags == page_flags::COMPRESSED,
            };
            match best.get(&key) {
                Some(w) if w.seq > r.seq => {
                    rep.superseded += 1;
                    clear(slot, xrec);
                }
                Some(w) => {
                    rep.superseded += 1;
                    clear(w.slot, w.xrec);
                    best.insert(key, new);
                }
                None => {
                    best.insert(key, new);
                }
            }
        }
        let nframes = pm.geometry().nframes;
        let mut frame_used = vec![false; nframes as usize];
        let mut xrec_used = vec![false; pm.geometry().nxrecs as usize];
        for ((pslot, oid, index), w) in best {
            let Winner {
                slot,
                xrec,
                fill,
                compressed,
                ..
            } = w;
            let gid = gid_of_slot[&pslot];
            let key = PageKey { oid, index };
            let node = if compressed {
                // Its run must have come back whole and the slot be free and in range.
                let Some(x) = self.recover_z(m, &run_frames, fill) else {
                    rep.torn += 1;
                    pm.clear_xrec(slot);
                    continue;
                };
                if let Some(d) = m.dur.as_mut() {
                    d.set_xrec(x, slot);
                }
                xrec_used[slot as usize] = true;
                rep.compressed_pages += 1;
                x
            } else if xrec {
                let x = m.alloc_same(fill);
                if let Some(d) = m.dur.as_mut() {
                    d.set_xrec(x, slot);
                }
                xrec_used[slot as usize] = true;
                rep.same_filled_pages += 1;
                if fill == 0 {
                    rep.zero_pages += 1;
                }
                x
            } else {
                m.ensure_data_links(slot);
                frame_used[slot as usize] = true;
                slot
            };
            m.insert_page(gid, &key, node);
            rep.pages += 1;
        }

        // Runs no recovered page uses go, with their records; the others' frames are used.
        for f in m.z.drop_empty_runs() {
            pm.clear_frame(f);
        }
        for (&f, &(rid, _, _)) in run_frames.iter() {
            if m.z.run_alive(rid) {
                frame_used[f as usize] = true;
            }
        }
        // Everything not in use is free.
        {
            let mut free = crate::lock(&self.free);
            free.list = (0..nframes)
                .rev()
                .filter(|&f| !frame_used[f as usize])
                .collect();
            free.fresh = nframes;
        }
        if let Some(d) = m.dur.as_mut() {
            d.xrec_free = (0..xrec_used.len() as u32)
                .rev()
                .filter(|&r| !xrec_used[r as usize])
                .collect();
            d.xrec_fresh = xrec_used.len() as u32;
            d.pool_free = (0..used_slots.len() as u32)
                .rev()
                .filter(|&s| !used_slots[s as usize])
                .collect();
            d.recovered = m.clients.keys().map(|&c| (c, 1)).collect();
            d.renames = kept_renames;
            d.slot_owner = slot_owner;
        }
        rep.rebuild = start.elapsed();
    }

    /// Clients rebuilt by recovery that no guest has reattached yet, with the detach epoch
    /// to pass to [`Store::expire_detached`] when their reattach grace ends.
    pub fn recovered_clients(&self) -> Vec<(ClientId, u64)> {
        let m = self.meta();
        let Some(d) = m.dur.as_ref() else {
            return Vec::new();
        };
        d.recovered
            .iter()
            .filter(|(c, e)| {
                m.clients
                    .get(c)
                    .is_some_and(|cl| !cl.attached && cl.detach_epoch == *e)
            })
            .copied()
            .collect()
    }

    /// A Xen frontend that stayed connected while tmemd restarted carries on: its recovered
    /// client (same identity and instance, not attached since) is attached again with every
    /// pool it had, under the same pool ids (ephemeral and shared ones empty). `None` if
    /// there is no such client: the frontend must then connect afresh.
    pub fn resume(&self, identity: Identity, instance: u64, name: &str) -> Option<ClientId> {
        let mut m = self.meta();
        let c = *m.by_identity.get(&identity)?;
        let cl = m.clients.get_mut(&c)?;
        if cl.attached || cl.instance != instance {
            return None;
        }
        cl.attached = true;
        cl.name = name.to_owned();
        for s in cl.pools.iter_mut().flatten() {
            s.adopted = true;
        }
        Some(c)
    }

    /// The page file, for a durable store (to hand to systemd's fd store).
    pub fn page_file(&self) -> Option<&PageFile> {
        match &self.frames {
            FrameMem::Mapped(pm) => Some(pm.file()),
            FrameMem::Heap(_) => None,
        }
    }

    /// Whether persistent pages outlive this process.
    pub fn is_durable(&self) -> bool {
        matches!(self.frames, FrameMem::Mapped(_))
    }
}
