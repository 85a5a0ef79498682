//! The `tmem` PV device's xenstore protocol, both ends: key names (from `tmem_abi::xenstore`),
//! strict parsing of what the other end wrote, the backend's state decisions, and each end's
//! xenstore writes (the frontend's publication; the backend's directories, state and errors).
//! tmemd decides what to do; the xenstore I/O for it lives here. See `docs/protocol.md` §3.

use tmem_abi::xenstore::{backend_path, frontend_path, key, state, DEVICE_TYPE};

use crate::wire::{parse_u32, Access, Perm};
use crate::xs::{Tx, Xs, XsError};

/// Grant references per data-directory page (4-byte little-endian entries).
pub const REFS_PER_DIR_PAGE: u32 = 1024;
/// Largest ring the protocol allows whatever the backend says (2^8 = 256 pages).
pub const MAX_RING_PAGE_ORDER: u32 = 8;
/// The ring protocol version this code speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// What the backend accepts, as it advertises it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_ring_page_order: u32,
    pub max_data_pages: u32,
}

/// The frontend's connection parameters, parsed and bounds-checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendKeys {
    pub ring_page_order: u32,
    pub ring_refs: Vec<u32>,
    pub data_pages: u32,
    pub data_dir_refs: Vec<u32>,
    pub event_channel: u32,
    pub instance: u64,
}

impl FrontendKeys {
    pub fn ring_pages(&self) -> u32 {
        1 << self.ring_page_order
    }
}

/// A frontend value that is missing or malformed (hostile input: always a refusal).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("frontend key {0} is missing")]
    Missing(String),
    #[error("frontend key {key} = {value:?} is invalid: {why}")]
    Invalid {
        key: String,
        value: String,
        why: &'static str,
    },
    #[error(transparent)]
    Xs(#[from] XsError),
}

pub(crate) fn invalid(key: &str, value: &str, why: &'static str) -> KeyError {
    // Bound what a guest can make us log.
    let value: String = value.chars().take(32).collect();
    KeyError::Invalid {
        key: key.to_owned(),
        value,
        why,
    }
}

/// Read a strictly formatted decimal u32 key.
pub fn read_u32(xs: &mut Xs, tx: Tx, dir: &str, k: &str) -> Result<u32, KeyError> {
    key_u32(&mut |path| xs.read(tx, path), dir, k)
}

/// Reads one xenstore node: `Ok(None)` if it does not exist. [`read_frontend_keys`] reads
/// through one so that its parsing can be fuzzed without a xenstored.
pub type ReadNode<'a> = dyn FnMut(&str) -> Result<Option<Vec<u8>>, XsError> + 'a;

pub(crate) fn key_u32(read: &mut ReadNode<'_>, dir: &str, k: &str) -> Result<u32, KeyError> {
    let v = key_string(read, dir, k)?;
    parse_u32(&v).ok_or_else(|| invalid(k, &v, "not a decimal u32"))
}

pub(crate) fn key_string(read: &mut ReadNode<'_>, dir: &str, k: &str) -> Result<String, KeyError> {
    key_opt_string(read, dir, k)?.ok_or_else(|| KeyError::Missing(k.to_owned()))
}

/// An optional key: `Ok(None)` if absent; present, it is bounded and UTF-8 like any other.
pub(crate) fn key_opt_string(
    read: &mut ReadNode<'_>,
    dir: &str,
    k: &str,
) -> Result<Option<String>, KeyError> {
    let Some(raw) = read(&format!("{dir}/{k}"))? else {
        return Ok(None);
    };
    if raw.len() > 64 {
        return Err(invalid(k, "", "longer than 64 bytes"));
    }
    String::from_utf8(raw)
        .map(Some)
        .map_err(|_| invalid(k, "", "not UTF-8"))
}

/// Strict decimal u64 (no sign, no leading zeros, no spaces).
pub fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if s.len() > 1 && s.starts_with('0') {
        return None;
    }
    s.parse().ok()
}

/// Read and validate everything the frontend published, against our limits.
pub fn read_frontend_keys(
    xs: &mut Xs,
    tx: Tx,
    fe: &str,
    limits: &Limits,
) -> Result<FrontendKeys, KeyError> {
    parse_frontend_keys(&mut |path| xs.read(tx, path), fe, limits)
}

/// [`read_frontend_keys`] over any node reader (the guest-controlled parsing, fuzzed).
pub fn parse_frontend_keys(
    read: &mut ReadNode<'_>,
    fe: &str,
    limits: &Limits,
) -> Result<FrontendKeys, KeyError> {
    let order = key_u32(read, fe, key::RING_PAGE_ORDER)?;
    if order > limits.max_ring_page_order.min(MAX_RING_PAGE_ORDER) {
        return Err(invalid(
            key::RING_PAGE_ORDER,
            &order.to_string(),
            "above max-ring-page-order",
        ));
    }
    let mut ring_refs = Vec::with_capacity(1 << order);
    for i in 0..(1u32 << order) {
        ring_refs.push(key_u32(read, fe, &format!("{}{i}", key::RING_REF_PREFIX))?);
    }
    let data_pages = key_u32(read, fe, key::DATA_PAGES)?;
    if data_pages > limits.max_data_pages {
        return Err(invalid(
            key::DATA_PAGES,
            &data_pages.to_string(),
            "above max-data-pages",
        ));
    }
    let mut data_dir_refs = Vec::new();
    for i in 0..data_pages.div_ceil(REFS_PER_DIR_PAGE) {
        data_dir_refs.push(key_u32(
            read,
            fe,
            &format!("{}{i}", key::DATA_DIR_REF_PREFIX),
        )?);
    }
    let event_channel = key_u32(read, fe, key::EVENT_CHANNEL)?;
    if event_channel == 0 {
        return Err(invalid(key::EVENT_CHANNEL, "0", "port 0 is never valid"));
    }
    let inst = key_string(read, fe, key::INSTANCE)?;
    let instance = parse_u64(&inst)
        .filter(|&i| i != 0)
        .ok_or_else(|| invalid(key::INSTANCE, &inst, "not a non-zero decimal u64"))?;
    Ok(FrontendKeys {
        ring_page_order: order,
        ring_refs,
        data_pages,
        data_dir_refs,
        event_channel,
        instance,
    })
}

/// The data pages' grant references from the directory pages (copied out of shared memory
/// once). Entries past `data_pages` are ignored.
pub fn parse_data_dir(dir: &[u8], data_pages: u32) -> Result<Vec<u32>, KeyError> {
    let need = data_pages as usize * 4;
    if dir.len() < need {
        return Err(invalid(key::DATA_DIR_REF_PREFIX, "", "directory too small"));
    }
    Ok(dir[..need]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect())
}

/// Lay out directory pages for `refs` (little-endian u32 each, zero padded to whole pages).
pub fn build_data_dir(refs: &[u32]) -> Vec<u8> {
    let pages = (refs.len() as u32).div_ceil(REFS_PER_DIR_PAGE) as usize;
    let mut out = vec![0u8; pages * tmem_abi::PAGE_SIZE];
    for (i, r) in refs.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&r.to_le_bytes());
    }
    out
}

/// What the backend does after looking at both states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Nothing,
    /// Read the frontend's keys and connect (first tearing down a connection made with other
    /// keys; the same keys mean nothing to do).
    Connect,
    /// Tear down and answer `Closed` (the frontend is closing).
    Close,
    /// Tear down and go back to `InitWait` (the frontend reset or went away).
    Reset,
}

/// The backend state machine: `fe` is the frontend's state (None if absent or garbage), `be`
/// the backend's last written state, `connected` whether a connection is live.
pub fn backend_step(fe: Option<u32>, be: u32, connected: bool) -> Step {
    match fe {
        Some(state::INITIALISED) => {
            if connected || be == state::INIT_WAIT {
                Step::Connect
            } else {
                Step::Nothing
            }
        }
        Some(state::CONNECTED) | Some(state::INIT_WAIT) => Step::Nothing,
        Some(state::CLOSING) => {
            if connected || be != state::CLOSED {
                Step::Close
            } else {
                Step::Nothing
            }
        }
        _ => {
            if connected || be != state::INIT_WAIT {
                Step::Reset
            } else {
                Step::Nothing
            }
        }
    }
}

/// Parse a `state` value (absent or garbage: `None`).
pub fn parse_state(v: Option<&[u8]>) -> Option<u32> {
    let s = std::str::from_utf8(v?).ok()?;
    parse_u32(s).filter(|&x| x <= state::RECONFIGURED)
}

/// Backend directory permissions: dom0 owns it, nobody else may read, except the guest.
pub fn backend_perms(backend: u32, domid: u32) -> [Perm; 2] {
    [
        Perm::new(backend, Access::None),
        Perm::new(domid, Access::Read),
    ]
}

/// Frontend directory permissions: the guest owns it (may write), the backend may read.
pub fn frontend_perms(backend: u32, domid: u32) -> [Perm; 2] {
    [
        Perm::new(domid, Access::None),
        Perm::new(backend, Access::Read),
    ]
}

/// What the frontend shares, to publish.
#[derive(Debug, Clone)]
pub struct Publish {
    pub ring_page_order: u32,
    pub ring_refs: Vec<u32>,
    pub data_pages: u32,
    pub data_dir_refs: Vec<u32>,
    pub event_channel: u32,
    pub instance: u64,
}

/// Frontend: write all keys and `state = Initialised` in one transaction (stale ring-ref /
/// data-dir-ref keys of a bigger earlier ring are removed first).
pub fn publish_frontend(xs: &mut Xs, fe: &str, p: &Publish) -> Result<(), XsError> {
    xs.transaction(|xs, tx| {
        if let Some(kids) = xs.directory(tx, fe)? {
            for k in kids {
                if k.starts_with(key::RING_REF_PREFIX) || k.starts_with(key::DATA_DIR_REF_PREFIX) {
                    xs.rm(tx, &format!("{fe}/{k}"))?;
                }
            }
        }
        let w = |xs: &mut Xs, k: &str, v: String| xs.write(tx, &format!("{fe}/{k}"), v.as_bytes());
        w(xs, key::RING_PAGE_ORDER, p.ring_page_order.to_string())?;
        for (i, r) in p.ring_refs.iter().enumerate() {
            w(xs, &format!("{}{i}", key::RING_REF_PREFIX), r.to_string())?;
        }
        w(xs, key::DATA_PAGES, p.data_pages.to_string())?;
        for (i, r) in p.data_dir_refs.iter().enumerate() {
            w(
                xs,
                &format!("{}{i}", key::DATA_DIR_REF_PREFIX),
                r.to_string(),
            )?;
        }
        w(xs, key::EVENT_CHANNEL, p.event_channel.to_string())?;
        w(xs, key::INSTANCE, p.instance.to_string())?;
        w(xs, key::STATE, state::INITIALISED.to_string())
    })
}

/// Longest `error` text the backend writes (a guest-visible reason, kept short).
pub const MAX_ERROR_LEN: usize = 200;

/// Backend: the directory holding every domain's device, `/local/domain/<b>/backend/tmem`.
pub fn backend_root(backend: u32) -> String {
    format!("/local/domain/{backend}/backend/{DEVICE_TYPE}")
}

/// Backend: the domains that have a device directory (entries that are not domain ids are
/// skipped; they are not ours to interpret).
pub fn list_devices(xs: &mut Xs, backend: u32) -> Result<Vec<u32>, XsError> {
    Ok(xs
        .directory(Tx::NONE, &backend_root(backend))?
        .unwrap_or_default()
        .iter()
        .filter_map(|d| parse_u32(d))
        .collect())
}

/// Backend: offer the device to `domid` in one transaction. Recreates the backend directory
/// (dropping whatever an earlier backend left), gives the guest read access to it and to the
/// level above (so it can watch it), advertises `limits`, goes `InitWait`, and creates the
/// frontend directory owned by the guest (readable by the backend) with its links back. The
/// frontend's own `state` is left alone if present, so a connected frontend notices the reset.
pub fn offer_device(xs: &mut Xs, backend: u32, domid: u32, limits: &Limits) -> Result<(), XsError> {
    let be = backend_path(backend, domid);
    let fe = frontend_path(domid);
    xs.transaction(|xs, tx| {
        xs.rm(tx, &be)?;
        xs.mkdir(tx, &be)?;
        let bperms = backend_perms(backend, domid);
        xs.set_perms(tx, parent_of(&be), &bperms)?;
        xs.set_perms(tx, &be, &bperms)?;
        let w = |xs: &mut Xs, k: &str, v: String| xs.write(tx, &format!("{be}/{k}"), v.as_bytes());
        w(xs, key::FRONTEND, fe.clone())?;
        w(xs, key::FRONTEND_ID, domid.to_string())?;
        w(xs, key::PROTOCOL_VERSION, PROTOCOL_VERSION.to_string())?;
        w(
            xs,
            key::MAX_RING_PAGE_ORDER,
            limits.max_ring_page_order.to_string(),
        )?;
        w(xs, key::MAX_DATA_PAGES, limits.max_data_pages.to_string())?;
        w(xs, key::STATE, state::INIT_WAIT.to_string())?;
        if xs.read(tx, &fe)?.is_none() {
            xs.mkdir(tx, &fe)?;
        }
        let fperms = frontend_perms(backend, domid);
        xs.set_perms(tx, parent_of(&fe), &fperms)?;
        xs.set_perms(tx, &fe, &fperms)?;
        xs.write(tx, &format!("{fe}/{}", key::BACKEND), be.as_bytes())?;
        xs.write(
            tx,
            &format!("{fe}/{}", key::BACKEND_ID),
            backend.to_string().as_bytes(),
        )?;
        let fe_state = format!("{fe}/{}", key::STATE);
        if xs.read(tx, &fe_state)?.is_none() {
            xs.write(tx, &fe_state, state::INITIALISING.to_string().as_bytes())?;
        }
        Ok(())
    })
}

/// `/a/b/c` → `/a/b` (paths here are always absolute and built by this module).
pub(crate) fn parent_of(path: &str) -> &str {
    &path[..path.rfind('/').unwrap_or(0)]
}

/// Backend: write the backend's `state`.
pub fn set_backend_state(xs: &mut Xs, backend: u32, domid: u32, s: u32) -> Result<(), XsError> {
    let p = format!("{}/{}", backend_path(backend, domid), key::STATE);
    xs.write(Tx::NONE, &p, s.to_string().as_bytes())
}

/// Backend: the backend's `state` as xenstore holds it (`None`: absent or garbage).
pub fn backend_state(xs: &mut Xs, backend: u32, domid: u32) -> Result<Option<u32>, XsError> {
    let p = format!("{}/{}", backend_path(backend, domid), key::STATE);
    Ok(parse_state(xs.read(Tx::NONE, &p)?.as_deref()))
}

/// Backend: say why the device was refused or closed (first [`MAX_ERROR_LEN`] characters).
pub fn set_backend_error(xs: &mut Xs, backend: u32, domid: u32, msg: &str) -> Result<(), XsError> {
    let p = format!("{}/error", backend_path(backend, domid));
    let msg: String = msg.chars().take(MAX_ERROR_LEN).collect();
    xs.write(Tx::NONE, &p, msg.as_bytes())
}

/// Backend: remove the `error` key (absent is fine).
pub fn clear_backend_error(xs: &mut Xs, backend: u32, domid: u32) -> Result<(), XsError> {
    xs.rm(Tx::NONE, &format!("{}/error", backend_path(backend, domid)))
}

/// Backend: remove a domain's device directory, `<root>/<domid>` with everything below it.
pub fn remove_device(xs: &mut Xs, backend: u32, domid: u32) -> Result<(), XsError> {
    xs.rm(Tx::NONE, &format!("{}/{domid}", backend_root(backend)))
}

/// Backend: the frontend's `state` (`None`: absent or garbage).
pub fn frontend_state(xs: &mut Xs, domid: u32) -> Result<Option<u32>, XsError> {
    let p = format!("{}/{}", frontend_path(domid), key::STATE);
    Ok(parse_state(xs.read(Tx::NONE, &p)?.as_deref()))
}

/// Backend: watch the frontend's `state` (and anything the guest writes below it).
pub fn watch_frontend_state(xs: &mut Xs, domid: u32, token: &str) -> Result<(), XsError> {
    xs.watch(&format!("{}/{}", frontend_path(domid), key::STATE), token)
}

/// Backend: stop watching the frontend's `state` (not watched is fine).
pub fn unwatch_frontend_state(xs: &mut Xs, domid: u32, token: &str) -> Result<(), XsError> {
    xs.unwatch(&format!("{}/{}", frontend_path(domid), key::STATE), token)
}

/// Where the toolstack asks a domain to shut down (`suspend` for a save or migration).
pub fn shutdown_path(domid: u32) -> String {
    format!("/local/domain/{domid}/control/shutdown")
}

/// The uuid in a domain's `vm` path (`/vm/<uuid>`, lower-case hex in 8-4-4-4-12 form, maybe
/// followed by `-<suffix>`); `None` for anything else.
pub fn parse_vm_uuid(vm: &[u8]) -> Option<String> {
    let rest = vm.strip_prefix(b"/vm/")?;
    if rest.len() < 36 || (rest.len() > 36 && rest[36] != b'-') {
        return None;
    }
    let (u, tail) = rest.split_at(36);
    let uuid_ok = u.iter().enumerate().all(|(i, &c)| match i {
        8 | 13 | 18 | 23 => c == b'-',
        _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
    });
    let tail_ok = tail.len() <= 64 && tail.iter().all(|c| c.is_ascii_graphic());
    (uuid_ok && tail_ok).then(|| String::from_utf8_lossy(u).into_owned())
}

/// A domain's uuid, from its `vm` path, if dom0 vouches for it: the node must be owned by
/// dom0 (the toolstack writes it; a domain owns most of its own home directory and could
/// otherwise name another domain's uuid) and well formed. `Ok(None)` otherwise.
pub fn read_domain_uuid(xs: &mut Xs, domid: u32) -> Result<Option<String>, XsError> {
    let path = format!("/local/domain/{domid}/vm");
    let Some(vm) = xs.read(Tx::NONE, &path)? else {
        return Ok(None);
    };
    let owner = match xs.get_perms(Tx::NONE, &path) {
        Ok(p) => p.first().map(|p| p.domid),
        Err(e) if e.is_enoent() => return Ok(None),
        Err(e) => return Err(e),
    };
    if owner != Some(0) {
        return Ok(None);
    }
    Ok(parse_vm_uuid(&vm))
}

/// Frontend: the backend's advertised limits and protocol version.
pub fn read_backend_limits(xs: &mut Xs, be: &str) -> Result<Limits, KeyError> {
    let v = read_u32(xs, Tx::NONE, be, key::PROTOCOL_VERSION)?;
    if v != PROTOCOL_VERSION {
        return Err(invalid(
            key::PROTOCOL_VERSION,
            &v.to_string(),
            "unsupported",
        ));
    }
    Ok(Limits {
        max_ring_page_order: read_u32(xs, Tx::NONE, be, key::MAX_RING_PAGE_ORDER)?,
        max_data_pages: read_u32(xs, Tx::NONE, be, key::MAX_DATA_PAGES)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeXenstore;

    const LIM: Limits = Limits {
        max_ring_page_order: 4,
        max_data_pages: 1024,
    };

    fn good(fx: &FakeXenstore, fe: &str) {
        for (k, v) in [
            ("ring-page-order", "1"),
            ("ring-ref0", "10"),
            ("ring-ref1", "11"),
            ("data-pages", "1025"),
            ("data-dir-ref0", "20"),
            ("data-dir-ref1", "21"),
            ("event-channel", "7"),
            ("instance", "123456789"),
        ] {
            fx.write(&format!("{fe}/{k}"), v);
        }
    }

    #[test]
    fn frontend_keys_parse_and_are_bounded() {
        let fx = FakeXenstore::new();
        let (mut xs, _j) = fx.connect();
        let fe = frontend_path(5);
        good(&fx, &fe);
        let lim = Limits {
            max_data_pages: 2048,
            ..LIM
        };
        let k = read_frontend_keys(&mut xs, Tx::NONE, &fe, &lim).unwrap();
        assert_eq!(k.ring_refs, vec![10, 11]);
        assert_eq!(k.data_dir_refs, vec![20, 21]);
        assert_eq!(
            (k.data_pages, k.event_channel, k.instance),
            (1025, 7, 123456789)
        );
        // Above our limit.
        let e = read_frontend_keys(&mut xs, Tx::NONE, &fe, &LIM).unwrap_err();
        assert!(e.to_string().contains("max-data-pages"), "{e}");
        // Each kind of garbage.
        for (k, v, what) in [
            ("ring-page-order", "5", "max-ring-page-order"),
            ("ring-page-order", "-1", "decimal"),
            ("ring-ref1", "0x10", "decimal"),
            ("event-channel", "0", "port 0"),
            ("instance", "0", "non-zero"),
            ("instance", "18446744073709551616", "non-zero"),
            ("data-pages", " 3", "decimal"),
        ] {
            good(&fx, &fe);
            fx.write(&format!("{fe}/{k}"), v);
            let e = read_frontend_keys(&mut xs, Tx::NONE, &fe, &lim).unwrap_err();
            assert!(e.to_string().contains(what), "{k}={v}: {e}");
        }
        good(&fx, &fe);
        fx.rm(&format!("{fe}/data-dir-ref1"));
        let e = read_frontend_keys(&mut xs, Tx::NONE, &fe, &lim).unwrap_err();
        assert!(
            matches!(e, KeyError::Missing(ref k) if k == "data-dir-ref1"),
            "{e}"
        );
        fx.write(&format!("{fe}/data-dir-ref1"), &"9".repeat(100));
        let e = read_frontend_keys(&mut xs, Tx::NONE, &fe, &lim).unwrap_err();
        assert!(e.to_string().contains("64 bytes"), "{e}");
    }

    #[test]
    fn data_directory_round_trip() {
        let refs: Vec<u32> = (100..1200).collect();
        let dir = build_data_dir(&refs);
        assert_eq!(dir.len(), 2 * 4096);
        assert_eq!(parse_data_dir(&dir, refs.len() as u32).unwrap(), refs);
        assert!(parse_data_dir(&dir[..4096], 1100).is_err());
    }

    #[test]
    fn backend_state_machine() {
        use state::*;
        // Normal handshake.
        assert_eq!(
            backend_step(Some(INITIALISING), INIT_WAIT, false),
            Step::Nothing
        );
        assert_eq!(
            backend_step(Some(INITIALISED), INIT_WAIT, false),
            Step::Connect
        );
        assert_eq!(
            backend_step(Some(INITIALISED), CONNECTED, true),
            Step::Connect
        );
        assert_eq!(
            backend_step(Some(CONNECTED), CONNECTED, true),
            Step::Nothing
        );
        // A failed connect waits for the frontend to reset.
        assert_eq!(
            backend_step(Some(INITIALISED), CLOSED, false),
            Step::Nothing
        );
        // Closing and reset.
        assert_eq!(backend_step(Some(CLOSING), CONNECTED, true), Step::Close);
        assert_eq!(backend_step(Some(CLOSING), CLOSED, false), Step::Nothing);
        assert_eq!(backend_step(Some(CLOSED), CLOSED, false), Step::Reset);
        assert_eq!(backend_step(Some(CLOSED), INIT_WAIT, false), Step::Nothing);
        assert_eq!(backend_step(None, CONNECTED, true), Step::Reset);
        assert_eq!(backend_step(Some(INITIALISING), CLOSED, false), Step::Reset);
        // After a tmemd restart: a frontend still "Connected" keeps us in InitWait until it
        // notices and re-publishes.
        assert_eq!(
            backend_step(Some(CONNECTED), INIT_WAIT, false),
            Step::Nothing
        );
        assert_eq!(parse_state(Some(b"4")), Some(CONNECTED));
        assert_eq!(parse_state(Some(b"9")), None);
        assert_eq!(parse_state(Some(b"04")), None);
        assert_eq!(parse_state(None), None);
    }

    #[test]
    fn publish_then_read_back_with_a_conflict() {
        let fx = FakeXenstore::new();
        let (mut xs, _j) = fx.connect();
        let fe = frontend_path(3);
        fx.write(&format!("{fe}/ring-ref3"), "99"); // stale key of an older, bigger ring
        fx.conflict_next(2);
        let p = Publish {
            ring_page_order: 1,
            ring_refs: vec![8, 9],
            data_pages: 3,
            data_dir_refs: vec![12],
            event_channel: 4,
            instance: 77,
        };
        publish_frontend(&mut xs, &fe, &p).unwrap();
        assert!(!fx.exists(&format!("{fe}/ring-ref3")));
        assert_eq!(fx.read(&format!("{fe}/state")).as_deref(), Some("3"));
        let k = read_frontend_keys(&mut xs, Tx::NONE, &fe, &LIM).unwrap();
        assert_eq!(k.ring_refs, vec![8, 9]);
        assert_eq!(k.instance, 77);
        // Three commits were tried.
        let ends = fx
            .log()
            .iter()
            .filter(|(t, _)| *t == crate::wire::ty::TRANSACTION_END)
            .count();
        assert_eq!(ends, 3);
    }

    /// The backend's writes: offer (both directories, permissions, limits, links, states),
    /// state and error, listing, removal.
    #[test]
    fn backend_side_writes() {
        let fx = FakeXenstore::new();
        let (mut xs, _j) = fx.connect();
        let (be, fe) = (backend_path(0, 4), frontend_path(4));
        fx.write(&format!("{be}/stale"), "x"); // left by an earlier backend
        offer_device(&mut xs, 0, 4, &LIM).unwrap();
        assert!(!fx.exists(&format!("{be}/stale")));
        assert_eq!(fx.perms(&be).unwrap(), ["n0", "r4"]);
        assert_eq!(
            fx.perms("/local/domain/0/backend/tmem/4").unwrap(),
            ["n0", "r4"]
        );
        assert_eq!(fx.perms(&fe).unwrap(), ["n4", "r0"]);
        assert_eq!(
            fx.perms("/local/domain/4/device/tmem").unwrap(),
            ["n4", "r0"]
        );
        for (k, v) in [
            ("frontend", fe.as_str()),
            ("frontend-id", "4"),
            ("protocol-version", "1"),
            ("max-ring-page-order", "4"),
            ("max-data-pages", "1024"),
            ("state", "2"),
        ] {
            assert_eq!(fx.read(&format!("{be}/{k}")).as_deref(), Some(v), "{k}");
        }
        assert_eq!(
            fx.read(&format!("{fe}/backend")).as_deref(),
            Some(be.as_str())
        );
        assert_eq!(fx.read(&format!("{fe}/backend-id")).as_deref(), Some("0"));
        assert_eq!(
            frontend_state(&mut xs, 4).unwrap(),
            Some(state::INITIALISING)
        );
        // A frontend's own state survives a second offer (it must notice the reset itself).
        fx.write(&format!("{fe}/state"), "4");
        offer_device(&mut xs, 0, 4, &LIM).unwrap();
        assert_eq!(frontend_state(&mut xs, 4).unwrap(), Some(state::CONNECTED));

        set_backend_state(&mut xs, 0, 4, state::CLOSED).unwrap();
        assert_eq!(backend_state(&mut xs, 0, 4).unwrap(), Some(state::CLOSED));
        set_backend_error(&mut xs, 0, 4, &"e".repeat(500)).unwrap();
        assert_eq!(
            fx.read(&format!("{be}/error")).unwrap().len(),
            MAX_ERROR_LEN
        );
        clear_backend_error(&mut xs, 0, 4).unwrap();
        clear_backend_error(&mut xs, 0, 4).unwrap(); // absent is fine
        assert!(!fx.exists(&format!("{be}/error")));

        fx.write("/local/domain/0/backend/tmem/junk/0/state", "1");
        assert_eq!(list_devices(&mut xs, 0).unwrap(), [4]);
        remove_device(&mut xs, 0, 4).unwrap();
        assert!(!fx.exists("/local/domain/0/backend/tmem/4"));
        assert_eq!(backend_state(&mut xs, 0, 4).unwrap(), None);
    }

    #[test]
    fn vm_uuids_are_parsed_strictly() {
        let u = "5e6f7a00-1234-4abc-8def-0123456789ab";
        assert_eq!(
            parse_vm_uuid(format!("/vm/{u}").as_bytes()).as_deref(),
            Some(u)
        );
        assert_eq!(
            parse_vm_uuid(format!("/vm/{u}-1").as_bytes()).as_deref(),
            Some(u)
        );
        for bad in [
            String::new(),
            "/vm/".into(),
            format!("/vm/{}", &u[..35]),
            format!("/vm/{}", u.to_uppercase()),
            format!("/vm/{u}x"),
            format!("/vm/{u}-a b"),
            format!("/vm/{u}-{}", "1".repeat(65)),
            format!("vm/{u}"),
            format!("/vm/{}", u.replace('-', "0")),
            format!("/local/{u}"),
        ] {
            assert_eq!(parse_vm_uuid(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn perms_for_both_directories() {
        let b: Vec<String> = backend_perms(0, 7).iter().map(Perm::format).collect();
        assert_eq!(b, ["n0", "r7"]);
        let f: Vec<String> = frontend_perms(0, 7).iter().map(Perm::format).collect();
        assert_eq!(f, ["n7", "r0"]);
    }
}
