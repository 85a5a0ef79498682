//! The swap disk's xenstore side: tmemd offering a Xen PV block device (blkif) to a domain by
//! writing the entries a toolstack would, and the one parser of what blkfront writes back.
//!
//! - backend directory `/local/domain/0/backend/tmemblk/<domid>/<devid>`, owned by dom0 and
//!   readable by the guest (`n0 r<domid>`);
//! - frontend directory `/local/domain/<domid>/device/vbd/<devid>`, owned by the guest and
//!   readable by dom0 (`n<domid> r0`).
//!
//! libxl neither knows nor touches these devices, so tmemd must refuse a device id the domain
//! already uses ([`vbd_in_use`]) and remove its own entries when it is done ([`remove_vbd`]).
//! The key order and permissions follow what was observed necessary on real Xen 4.17 with
//! Linux 6.1's blkfront (see [`offer_vbd`]).
//!
//! Everything read from the frontend directory is guest-written: it is parsed here only
//! ([`read_blkfront_keys`], [`vbd_frontend_state`]), strictly and with bounded lengths.

use tmem_abi::xenstore::{key, state};

use crate::wire::parse_u32;
use crate::xenbus::{
    backend_perms, frontend_perms, invalid, key_opt_string, key_u32, parent_of, parse_state,
    KeyError, ReadNode, MAX_ERROR_LEN, MAX_RING_PAGE_ORDER,
};
use crate::xs::{Tx, Xs, XsError};

/// The domain that serves the disks (tmemd runs in dom0).
pub const BACKEND_DOMID: u32 = 0;
/// The backend directory's device type: ours, so that dom0's blkback and libxl ignore it.
pub const BACKEND_TYPE: &str = "tmemblk";

/// Key names blkif uses beyond the common ones of [`tmem_abi::xenstore::key`].
pub mod blkif_key {
    pub const ONLINE: &str = "online";
    pub const REMOVABLE: &str = "removable";
    pub const BOOTABLE: &str = "bootable";
    pub const DEV: &str = "dev";
    pub const TYPE: &str = "type";
    pub const MODE: &str = "mode";
    pub const DEVICE_TYPE: &str = "device-type";
    pub const SECTORS: &str = "sectors";
    pub const SECTOR_SIZE: &str = "sector-size";
    pub const PHYSICAL_SECTOR_SIZE: &str = "physical-sector-size";
    pub const INFO: &str = "info";
    pub const FEATURE_FLUSH_CACHE: &str = "feature-flush-cache";
    pub const FEATURE_DISCARD: &str = "feature-discard";
    pub const DISCARD_GRANULARITY: &str = "discard-granularity";
    pub const DISCARD_ALIGNMENT: &str = "discard-alignment";
    pub const DISCARD_SECURE: &str = "discard-secure";
    pub const FEATURE_PERSISTENT: &str = "feature-persistent";
    pub const MAX_RING_PAGE_ORDER: &str = "max-ring-page-order";
    pub const VIRTUAL_DEVICE: &str = "virtual-device";
    pub const ERROR: &str = "error";
    /// Frontend: log2 of the ring's page count (absent: one page in `ring-ref`).
    pub const RING_PAGE_ORDER: &str = "ring-page-order";
    /// Frontend: the ring's grant (one page), or `ring-ref<i>` with `ring-page-order`.
    pub const RING_REF: &str = "ring-ref";
    pub const EVENT_CHANNEL: &str = "event-channel";
    /// Frontend: the request layout (`x86_64-abi`, `x86_32-abi`, `native`).
    pub const PROTOCOL: &str = "protocol";
    pub const MULTI_QUEUE_NUM_QUEUES: &str = "multi-queue-num-queues";
}
use blkif_key as bk;

/// The only request layout served.
pub const PROTOCOL_X86_64: &str = "x86_64-abi";

// ---- device names ------------------------------------------------------------------------

/// The major number of xvd disks in the short `virtual-device` form.
pub const XVD_MAJOR: u32 = 202;
/// The flag of the extended `virtual-device` form: `1 << 28 | disk << 8 | partition`.
const EXTENDED: u32 = 1 << 28;
/// Disks the short form can number (xvda..xvdp: 16 minors each in an 8-bit minor).
const SHORT_DISKS: u32 = 16;
/// Disks numbered below this: Linux gives an extended disk 256 minors of its 20 minor bits.
pub const MAX_DISKS: u32 = (1 << 20) / 256;

/// A device name or number that is not a whole xvd disk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DevNameError {
    #[error("the device name is empty: give a whole disk name such as xvdb")]
    Empty,
    #[error("device {0:?} is a partition: give a whole disk such as xvdb")]
    Partition(String),
    #[error("device {0:?} is not an xvd disk: give a name xvda..xvdz, xvdaa.. or its number")]
    NotXvd(String),
    #[error("device {0:?} is beyond the last disk a guest can number ({last}): pick a lower one", last = last_disk_name())]
    TooLarge(String),
    #[error("device number {0} is not a whole xvd disk in its usual form (202<<8 | disk*16 for xvda..xvdp, 1<<28 | disk<<8 beyond): give the disk name instead")]
    BadNumber(String),
}

fn last_disk_name() -> String {
    format!("xvd{}", disk_letters(MAX_DISKS - 1))
}

/// Bound what a configuration mistake puts into one error line.
fn shown(s: &str) -> String {
    s.chars().take(32).collect()
}

/// Linux's letters for disk `index`: a..z, then aa..zz, then aaa.. (bijective base 26).
fn disk_letters(mut index: u32) -> String {
    let mut out = Vec::new();
    loop {
        out.push(b'a' + (index % 26) as u8);
        if index < 26 {
            break;
        }
        index = index / 26 - 1;
    }
    out.reverse();
    String::from_utf8(out).expect("ASCII letters")
}

/// The `virtual-device` number of disk `index` (< [`MAX_DISKS`]): the short form where it
/// reaches, the extended form beyond, as Linux and libxl number them.
fn disk_devid(index: u32) -> u32 {
    if index < SHORT_DISKS {
        (XVD_MAJOR << 8) | (index * 16)
    } else {
        EXTENDED | (index << 8)
    }
}

/// The disk index of a `virtual-device` number, if it is a whole xvd disk in the form
/// [`device_number`] gives (so one disk never has two numbers).
pub fn disk_index(devid: u32) -> Option<u32> {
    if devid >> 8 == XVD_MAJOR && devid & 0xf == 0 {
        return Some((devid & 0xff) >> 4);
    }
    if devid & !(EXTENDED | 0x0fff_ff00) == 0 && devid & EXTENDED != 0 {
        let index = (devid >> 8) & 0xf_ffff;
        if (SHORT_DISKS..MAX_DISKS).contains(&index) {
            return Some(index);
        }
    }
    None
}

/// The name of a whole xvd disk's number (`xvdb` for 51728); `None` if it is not one.
pub fn device_name(devid: u32) -> Option<String> {
    disk_index(devid).map(|i| format!("xvd{}", disk_letters(i)))
}

/// The `virtual-device` number of a disk name: `xvda`..`xvdp` → `202 << 8 | disk * 16`
/// (xvdp = 51952); `xvdq`.. and `xvdaa`.. → `1 << 28 | disk << 8` (xvdz = 268441856). A
/// plain number is accepted if it is a whole xvd disk in that same form. Partitions, other
/// prefixes and disks past [`MAX_DISKS`] are refused.
pub fn device_number(name: &str) -> Result<u32, DevNameError> {
    if name.is_empty() {
        return Err(DevNameError::Empty);
    }
    if name.bytes().all(|b| b.is_ascii_digit()) {
        return parse_u32(name)
            .filter(|&n| disk_index(n).is_some())
            .ok_or_else(|| DevNameError::BadNumber(shown(name)));
    }
    let not_xvd = || DevNameError::NotXvd(shown(name));
    let rest = name.strip_prefix("xvd").ok_or_else(not_xvd)?;
    let letters = rest.bytes().take_while(u8::is_ascii_lowercase).count();
    let tail = &rest[letters..];
    if letters == 0 {
        return Err(not_xvd());
    }
    if !tail.is_empty() {
        return Err(if tail.bytes().all(|b| b.is_ascii_digit()) {
            DevNameError::Partition(shown(name))
        } else {
            not_xvd()
        });
    }
    if letters > 3 {
        return Err(DevNameError::TooLarge(shown(name)));
    }
    let n = rest
        .bytes()
        .fold(0u32, |n, c| n * 26 + u32::from(c - b'a') + 1);
    let index = n - 1;
    if index >= MAX_DISKS {
        return Err(DevNameError::TooLarge(shown(name)));
    }
    Ok(disk_devid(index))
}

// ---- paths -------------------------------------------------------------------------------

/// `/local/domain/0/backend/tmemblk`: every domain's swap disks.
pub fn backend_root() -> String {
    format!("/local/domain/{BACKEND_DOMID}/backend/{BACKEND_TYPE}")
}

/// `/local/domain/0/backend/tmemblk/<domid>/<devid>`.
pub fn vbd_backend_path(domid: u32, devid: u32) -> String {
    format!("{}/{domid}/{devid}", backend_root())
}

/// `/local/domain/<domid>/device/vbd/<devid>`.
pub fn vbd_frontend_path(domid: u32, devid: u32) -> String {
    format!("/local/domain/{domid}/device/vbd/{devid}")
}

// ---- offering ----------------------------------------------------------------------------

/// A swap disk to offer to a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VbdOffer {
    pub domid: u32,
    /// The `virtual-device` number ([`device_number`]).
    pub devid: u32,
    /// The name the backend advertises in `dev` (e.g. `xvdb`).
    pub dev_name: String,
    /// Size in 512-byte sectors.
    pub sectors: u64,
    /// Largest ring offered, as log2 of its page count.
    pub max_ring_page_order: u32,
}

/// The backend's keys in the order [`offer_vbd`] writes them (`state` = InitWait last).
pub fn backend_keys(o: &VbdOffer) -> Vec<(&'static str, String)> {
    vec![
        (key::FRONTEND, vbd_frontend_path(o.domid, o.devid)),
        (key::FRONTEND_ID, o.domid.to_string()),
        (bk::ONLINE, "1".into()),
        (bk::REMOVABLE, "0".into()),
        (bk::BOOTABLE, "0".into()),
        (bk::DEV, o.dev_name.clone()),
        (bk::TYPE, "tmem".into()),
        (bk::MODE, "w".into()),
        (bk::DEVICE_TYPE, "disk".into()),
        (bk::SECTORS, o.sectors.to_string()),
        (bk::SECTOR_SIZE, "512".into()),
        (bk::PHYSICAL_SECTOR_SIZE, "4096".into()),
        (bk::INFO, "0".into()),
        (bk::FEATURE_FLUSH_CACHE, "1".into()),
        (bk::FEATURE_DISCARD, "1".into()),
        (bk::DISCARD_GRANULARITY, "4096".into()),
        (bk::DISCARD_ALIGNMENT, "0".into()),
        (bk::DISCARD_SECURE, "0".into()),
        (bk::FEATURE_PERSISTENT, "0".into()),
        (bk::MAX_RING_PAGE_ORDER, o.max_ring_page_order.to_string()),
        (key::STATE, state::INIT_WAIT.to_string()),
    ]
}

/// The frontend's keys in the order [`offer_vbd`] writes them (`state` = Initialising last:
/// it is what makes blkfront probe the device).
pub fn frontend_keys(o: &VbdOffer) -> Vec<(&'static str, String)> {
    vec![
        (key::BACKEND, vbd_backend_path(o.domid, o.devid)),
        (key::BACKEND_ID, BACKEND_DOMID.to_string()),
        (bk::VIRTUAL_DEVICE, o.devid.to_string()),
        (bk::DEVICE_TYPE, "disk".into()),
        (key::STATE, state::INITIALISING.to_string()),
    ]
}

/// Why a disk was not offered.
#[derive(Debug, thiserror::Error)]
pub enum OfferError {
    #[error("domain {domid} already has a device {devid} (served by {backend}): pick another device for its swap disk")]
    InUse {
        domid: u32,
        devid: u32,
        backend: String,
    },
    #[error(transparent)]
    Xs(#[from] XsError),
}

/// A guest-written value, fit for an error line.
fn printable(v: &[u8]) -> String {
    String::from_utf8_lossy(v)
        .chars()
        .take(128)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// The backend serving the frontend directory, if it exists and is not ours.
fn foreign_backend(xs: &mut Xs, tx: Tx, domid: u32, devid: u32) -> Result<Option<String>, XsError> {
    let fe = vbd_frontend_path(domid, devid);
    if xs.read(tx, &fe)?.is_none() {
        return Ok(None);
    }
    let ours = vbd_backend_path(domid, devid);
    Ok(match xs.read(tx, &format!("{fe}/{}", key::BACKEND))? {
        Some(v) if v == ours.as_bytes() => None,
        Some(v) => Some(printable(&v)),
        None => Some("nothing: its frontend directory has no backend key".into()),
    })
}

/// `Some(backend)` if the domain already has a device `devid` that is not one of ours (a
/// disk of its configuration, served by libxl's vbd, vbd3 or qdisk backends): the swap disk
/// must not take its place. `None` if the device id is free or ours.
pub fn vbd_in_use(xs: &mut Xs, domid: u32, devid: u32) -> Result<Option<String>, XsError> {
    foreign_backend(xs, Tx::NONE, domid, devid)
}

/// Offer a swap disk, in one transaction, in the order blkfront needs: the backend directory,
/// its permissions (`n0 r<domid>`, also on `tmemblk/<domid>`), its keys ([`backend_keys`],
/// `state` = InitWait last); then the frontend directory, its permissions (`n<domid> r0`)
/// *before* its keys, so that they inherit the guest as owner (keys written first left blkfront
/// unable to write its state), then its keys ([`frontend_keys`]) with `state` = Initialising
/// last.
///
/// Whatever an earlier offer of the same device left in either directory is removed first.
/// The collision check is repeated inside the transaction, so a disk hot-plugged after
/// [`vbd_in_use`] is never overwritten. For a device no frontend is using: after a tmemd
/// restart a live disk is picked up, not offered again.
pub fn offer_vbd(xs: &mut Xs, o: &VbdOffer) -> Result<(), OfferError> {
    let be = vbd_backend_path(o.domid, o.devid);
    let fe = vbd_frontend_path(o.domid, o.devid);
    let taken = xs.transaction(|xs, tx| {
        if let Some(other) = foreign_backend(xs, tx, o.domid, o.devid)? {
            // Nothing written yet: committing this read-only transaction changes nothing.
            return Ok(Some(other));
        }
        xs.rm(tx, &be)?;
        xs.mkdir(tx, &be)?;
        let bperms = backend_perms(BACKEND_DOMID, o.domid);
        xs.set_perms(tx, parent_of(&be), &bperms)?;
        xs.set_perms(tx, &be, &bperms)?;
        for (k, v) in backend_keys(o) {
            xs.write(tx, &format!("{be}/{k}"), v.as_bytes())?;
        }
        xs.rm(tx, &fe)?;
        xs.mkdir(tx, &fe)?;
        xs.set_perms(tx, &fe, &frontend_perms(BACKEND_DOMID, o.domid))?;
        for (k, v) in frontend_keys(o) {
            xs.write(tx, &format!("{fe}/{k}"), v.as_bytes())?;
        }
        Ok(None)
    })?;
    match taken {
        None => Ok(()),
        Some(backend) => Err(OfferError::InUse {
            domid: o.domid,
            devid: o.devid,
            backend,
        }),
    }
}

// ---- what blkfront writes ----------------------------------------------------------------

/// What blkfront published to connect, parsed and bounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlkfrontKeys {
    /// The ring's grant references, one per page (a power of two of them).
    pub ring_refs: Vec<u32>,
    pub event_channel: u32,
}

/// Read and check what blkfront wrote in `device/vbd/<devid>` against the ring size we
/// offered. See [`parse_blkfront_keys`].
pub fn read_blkfront_keys(
    xs: &mut Xs,
    domid: u32,
    devid: u32,
    max_ring_page_order: u32,
) -> Result<BlkfrontKeys, KeyError> {
    let fe = vbd_frontend_path(domid, devid);
    parse_blkfront_keys(&mut |p| xs.read(Tx::NONE, p), &fe, max_ring_page_order)
}

/// The one parser of blkfront's keys, over any node reader (fuzzable without a xenstored):
/// - `multi-queue-num-queues`: absent or 1 (multi-queue is not offered);
/// - `protocol`: absent or exactly `x86_64-abi` (the only layout served);
/// - `ring-page-order`: absent → one page in `ring-ref`; present → at most
///   `max_ring_page_order` (and [`MAX_RING_PAGE_ORDER`]), pages in `ring-ref0`..;
/// - `event-channel`: a port, not 0.
///
/// Numbers are strict decimal u32s; every value is at most 64 bytes.
pub fn parse_blkfront_keys(
    read: &mut ReadNode<'_>,
    fe: &str,
    max_ring_page_order: u32,
) -> Result<BlkfrontKeys, KeyError> {
    if let Some(v) = key_opt_string(read, fe, bk::MULTI_QUEUE_NUM_QUEUES)? {
        match parse_u32(&v) {
            Some(1) => {}
            Some(_) => {
                return Err(invalid(
                    bk::MULTI_QUEUE_NUM_QUEUES,
                    &v,
                    "multi-queue is not offered: one queue only",
                ))
            }
            None => return Err(invalid(bk::MULTI_QUEUE_NUM_QUEUES, &v, "not a decimal u32")),
        }
    }
    if let Some(v) = key_opt_string(read, fe, bk::PROTOCOL)? {
        if v != PROTOCOL_X86_64 {
            return Err(invalid(
                bk::PROTOCOL,
                &v,
                "only the x86_64-abi request layout is served",
            ));
        }
    }
    let ring_refs = match key_opt_string(read, fe, bk::RING_PAGE_ORDER)? {
        None => vec![key_u32(read, fe, bk::RING_REF)?],
        Some(v) => {
            let order = parse_u32(&v)
                .ok_or_else(|| invalid(bk::RING_PAGE_ORDER, &v, "not a decimal u32"))?;
            if order > max_ring_page_order.min(MAX_RING_PAGE_ORDER) {
                return Err(invalid(
                    bk::RING_PAGE_ORDER,
                    &v,
                    "above max-ring-page-order",
                ));
            }
            (0..1u32 << order)
                .map(|i| key_u32(read, fe, &format!("{}{i}", bk::RING_REF)))
                .collect::<Result<_, _>>()?
        }
    };
    let event_channel = key_u32(read, fe, bk::EVENT_CHANNEL)?;
    if event_channel == 0 {
        return Err(invalid(bk::EVENT_CHANNEL, "0", "port 0 is never valid"));
    }
    Ok(BlkfrontKeys {
        ring_refs,
        event_channel,
    })
}

// ---- states, errors, removal ---------------------------------------------------------------

/// Write the backend's `state`.
pub fn set_vbd_state(xs: &mut Xs, domid: u32, devid: u32, s: u32) -> Result<(), XsError> {
    let p = format!("{}/{}", vbd_backend_path(domid, devid), key::STATE);
    xs.write(Tx::NONE, &p, s.to_string().as_bytes())
}

/// The backend's `state` (`None`: absent or garbage).
pub fn vbd_backend_state(xs: &mut Xs, domid: u32, devid: u32) -> Result<Option<u32>, XsError> {
    let p = format!("{}/{}", vbd_backend_path(domid, devid), key::STATE);
    Ok(parse_state(xs.read(Tx::NONE, &p)?.as_deref()))
}

/// The frontend's `state` (`None`: absent or garbage).
pub fn vbd_frontend_state(xs: &mut Xs, domid: u32, devid: u32) -> Result<Option<u32>, XsError> {
    let p = format!("{}/{}", vbd_frontend_path(domid, devid), key::STATE);
    Ok(parse_state(xs.read(Tx::NONE, &p)?.as_deref()))
}

/// Watch the frontend's `state` (xenstored also fires it when the directory is removed).
pub fn watch_vbd_frontend(xs: &mut Xs, domid: u32, devid: u32, token: &str) -> Result<(), XsError> {
    xs.watch(
        &format!("{}/{}", vbd_frontend_path(domid, devid), key::STATE),
        token,
    )
}

/// Stop watching the frontend's `state` (not watched is fine).
pub fn unwatch_vbd_frontend(
    xs: &mut Xs,
    domid: u32,
    devid: u32,
    token: &str,
) -> Result<(), XsError> {
    xs.unwatch(
        &format!("{}/{}", vbd_frontend_path(domid, devid), key::STATE),
        token,
    )
}

/// Say in the backend's `error` key why the disk was refused or closed (first
/// [`MAX_ERROR_LEN`] characters).
pub fn set_vbd_error(xs: &mut Xs, domid: u32, devid: u32, msg: &str) -> Result<(), XsError> {
    let p = format!("{}/{}", vbd_backend_path(domid, devid), bk::ERROR);
    let msg: String = msg.chars().take(MAX_ERROR_LEN).collect();
    xs.write(Tx::NONE, &p, msg.as_bytes())
}

/// Remove the backend's `error` key (absent is fine).
pub fn clear_vbd_error(xs: &mut Xs, domid: u32, devid: u32) -> Result<(), XsError> {
    let p = format!("{}/{}", vbd_backend_path(domid, devid), bk::ERROR);
    xs.rm(Tx::NONE, &p)
}

/// Remove a swap disk's entries: the frontend directory if it still exists and is ours (its
/// `backend` names our directory; a device that took the id since is left alone), then the
/// backend directory, and `tmemblk/<domid>` once it holds no disk. Absent entries are fine.
/// Both removals are tried; the first error is returned.
pub fn remove_vbd(xs: &mut Xs, domid: u32, devid: u32) -> Result<(), XsError> {
    let fe = vbd_frontend_path(domid, devid);
    // No transaction here: the guest owns this directory and could make one conflict forever.
    let fe_done = match foreign_backend(xs, Tx::NONE, domid, devid) {
        Ok(None) => xs.rm(Tx::NONE, &fe),
        Ok(Some(_)) => Ok(()),
        Err(e) => Err(e),
    };
    let be = vbd_backend_path(domid, devid);
    // dom0's own nodes: a transaction keeps a concurrent offer of another disk of the same
    // domain from losing its new directory to the tidy-up.
    let be_done = xs.transaction(|xs, tx| {
        xs.rm(tx, &be)?;
        let dom = parent_of(&be);
        if xs.directory(tx, dom)?.is_some_and(|d| d.is_empty()) {
            xs.rm(tx, dom)?;
        }
        Ok(())
    });
    fe_done.and(be_done)
}

/// Every swap disk with a backend directory, as `(domid, devid)`, sorted. Entries that are
/// not numbers are skipped (not ours to interpret).
pub fn list_vbds(xs: &mut Xs) -> Result<Vec<(u32, u32)>, XsError> {
    let root = backend_root();
    let mut out = Vec::new();
    for d in xs.directory(Tx::NONE, &root)?.unwrap_or_default() {
        let Some(domid) = parse_u32(&d) else { continue };
        let devs = xs
            .directory(Tx::NONE, &format!("{root}/{d}"))?
            .unwrap_or_default();
        out.extend(devs.iter().filter_map(|v| parse_u32(v)).map(|v| (domid, v)));
    }
    out.sort_unstable();
    Ok(out)
}

#[cfg(test)]
mod tests;
