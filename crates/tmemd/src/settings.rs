//! Administrator settings that survive a restart: shared-pool authorisations (and the global
//! "authorisation required" switch), weights, caps, frozen state and the compress flag.
//!
//! The store forgets them when tmemd stops, so the daemon keeps them here too, by client
//! identity, and gives them back to the store at start and whenever a client attaches.
//!
//! Two layers, and which wins:
//! - the *baseline* is what the config file declares (`shared_auth_required`, `[[guest]]`);
//! - the *changes* are what administrators set with `tmem` since. They are saved after every
//!   change and win over the baseline, also across restarts; editing the config file does not
//!   undo them (set the value again with `tmem`, or remove the saved file, to go back).
//!
//! Where the changes are saved ([`Backing`]): beside the page memory. With a page file at a
//! path, `<page_file>.settings.json`, replaced atomically (write a temporary file, fsync,
//! rename, fsync the directory). With page memory in systemd's fd store, a second memfd
//! (`tmemd-settings`) in the fd store holding two slots, each with a sequence number and a
//! checksum: a save writes the slot not holding the newest copy, so a save cut short by a
//! kill leaves the previous copy valid. Without durable memory, nowhere (memory only).
//! The format is JSON (`version` 1); unknown fields are ignored, a newer version refused.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tmem_store::{ClientId, Identity, Store};
use tracing::warn;

/// Version of the saved settings format.
pub const SETTINGS_VERSION: u32 = 1;

/// Settings, either layer. Every field is "not set" unless given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    #[serde(default = "version")]
    pub version: u32,
    /// Whether joining a shared pool needs a per-client authorisation (store default: yes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_auth_required: Option<bool>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub clients: BTreeMap<Who, ClientSettings>,
}

fn version() -> u32 {
    SETTINGS_VERSION
}

/// One client's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cap_pages: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compress: Option<bool>,
    /// The whole list of shared-pool uuids this client may join (replaces the lower layer's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_auth: Option<Vec<Uuid>>,
}

/// A client identity as a map key, written as `tmem` writes it (`7`, `local:1000:7`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Who(pub Identity);

impl Serialize for Who {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Who {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Who, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(Who).map_err(serde::de::Error::custom)
    }
}

/// A shared-pool uuid, written in its text form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Uuid(pub [u64; 2]);

impl Serialize for Uuid {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&tmem_control::format_uuid(self.0))
    }
}

impl<'de> Deserialize<'de> for Uuid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Uuid, D::Error> {
        let s = String::deserialize(d)?;
        tmem_control::parse_uuid(&s)
            .map(Uuid)
            .map_err(serde::de::Error::custom)
    }
}

impl ClientSettings {
    /// `self` with every field `over` sets taken from `over`.
    fn overlaid(&self, over: &ClientSettings) -> ClientSettings {
        ClientSettings {
            weight: over.weight.or(self.weight),
            cap_pages: over.cap_pages.or(self.cap_pages),
            frozen: over.frozen.or(self.frozen),
            compress: over.compress.or(self.compress),
            shared_auth: over
                .shared_auth
                .clone()
                .or_else(|| self.shared_auth.clone()),
        }
    }
}

impl Settings {
    /// `self` (the baseline) with `over` (the changes) on top.
    pub fn overlaid(&self, over: &Settings) -> Settings {
        let mut clients = self.clients.clone();
        for (who, c) in &over.clients {
            let merged = clients.get(who).cloned().unwrap_or_default().overlaid(c);
            clients.insert(*who, merged);
        }
        Settings {
            version: SETTINGS_VERSION,
            shared_auth_required: over.shared_auth_required.or(self.shared_auth_required),
            clients,
        }
    }

    /// Give every setting to `store`: the global switch, every authorisation, and the
    /// per-client values of clients it already has (rebuilt by recovery). Returns how many
    /// settings the store refused (each is logged).
    pub fn apply_all(&self, store: &Store) -> usize {
        let mut refused = 0;
        if let Some(required) = self.shared_auth_required {
            store.set_shared_auth_required(required);
        }
        for (who, c) in &self.clients {
            for uuid in c.shared_auth.iter().flatten() {
                if let Err(e) = store.set_shared_auth(who.0, uuid.0, true) {
                    refused += 1;
                    warn!(
                        client = %who.0,
                        uuid = %tmem_control::format_uuid(uuid.0),
                        "saved shared-pool authorisation not applied: {e}"
                    );
                }
            }
            if let Some(id) = store.client_by_identity(who.0) {
                refused += self.apply_client(store, who.0, id);
            }
        }
        refused
    }

    /// Give `identity`'s per-client settings to its client `id` (just attached). Returns how
    /// many the store refused (each is logged).
    pub fn apply_client(&self, store: &Store, identity: Identity, id: ClientId) -> usize {
        let Some(c) = self.clients.get(&Who(identity)) else {
            return 0;
        };
        let mut results = Vec::new();
        if let Some(w) = c.weight {
            results.push(("weight", store.set_weight(id, w)));
        }
        if let Some(cap) = c.cap_pages {
            results.push(("cap", store.set_cap_pages(id, cap)));
        }
        if let Some(f) = c.frozen {
            results.push(("frozen", store.set_frozen(id, f)));
        }
        if let Some(on) = c.compress {
            results.push(("compress", store.set_compress(id, on)));
        }
        let mut refused = 0;
        for (what, r) in results {
            if let Err(e) = r {
                refused += 1;
                warn!(client = %identity, "saved {what} not applied: {e}");
            }
        }
        refused
    }
}

/// Where the administrators' changes are saved.
#[derive(Debug)]
pub enum Backing {
    /// Not saved: they last as long as this process.
    Memory,
    /// A JSON file, replaced atomically.
    File(PathBuf),
    /// A memfd kept in systemd's fd store, two checksummed slots.
    Memfd(File),
}

impl fmt::Display for Backing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backing::Memory => write!(f, "memory only"),
            Backing::File(p) => write!(f, "{}", p.display()),
            Backing::Memfd(_) => {
                write!(f, "fd \"{}\" in the fd store", crate::pagemem::FD_SETTINGS)
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read the saved settings {what}: {source}")]
    Read {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the saved settings {what} are not valid ({message}); fix the file or remove it (the \
         settings of the config file then apply)"
    )]
    Invalid { what: String, message: String },
    #[error(
        "the saved settings {what} have format version {found}, newer than this tmemd's \
         {SETTINGS_VERSION}; run that tmemd, or remove them"
    )]
    Newer { what: String, found: u32 },
    #[error("cannot save the settings to {what}: {source}")]
    Write {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the settings are {len} bytes, more than the {SLOT_BYTES} a saved copy can hold")]
    TooLarge { len: usize },
}

/// The two layers, where the changes are saved, and the sequence number of the last save.
#[derive(Debug)]
pub struct Keeper {
    baseline: Settings,
    changes: Settings,
    backing: Backing,
    seq: u64,
    /// Changed since the last save.
    dirty: bool,
}

impl Keeper {
    /// Load the saved changes from `backing` (none if it is empty or new).
    pub fn load(baseline: Settings, backing: Backing) -> Result<Keeper, SettingsError> {
        let what = backing.to_string();
        let (changes, seq) = match &backing {
            Backing::Memory => (None, 0),
            Backing::File(path) => (read_json_file(path)?, 0),
            Backing::Memfd(f) => match read_slots(f).map_err(|source| SettingsError::Read {
                what: what.clone(),
                source,
            })? {
                Some((seq, body)) => (Some(body), seq),
                None => (None, 0),
            },
        };
        let changes = match changes {
            Some(body) => parse(&what, &body)?,
            None => Settings::default(),
        };
        Ok(Keeper {
            baseline,
            changes,
            backing,
            seq,
            dirty: false,
        })
    }

    /// A keeper with nothing saved and nowhere to save (tests, `--no-durable`).
    pub fn in_memory(baseline: Settings) -> Keeper {
        Keeper {
            baseline,
            changes: Settings::default(),
            backing: Backing::Memory,
            seq: 0,
            dirty: false,
        }
    }

    /// What applies now: the baseline with the changes on top.
    pub fn effective(&self) -> Settings {
        self.baseline.overlaid(&self.changes)
    }

    /// Where changes are saved.
    pub fn backing(&self) -> &Backing {
        &self.backing
    }

    /// Whether any change has been made with `tmem` (ever, if saved).
    pub fn has_changes(&self) -> bool {
        self.changes.shared_auth_required.is_some() || !self.changes.clients.is_empty()
    }

    /// Record a change of one client's settings.
    pub fn change_client(&mut self, who: Identity, f: impl FnOnce(&mut ClientSettings)) {
        f(self.changes.clients.entry(Who(who)).or_default());
        self.dirty = true;
    }

    /// Record that `who` may (or may no longer) join shared pool `uuid`: the change holds
    /// the client's whole resulting list, so a revocation also beats the baseline.
    pub fn change_shared_auth(&mut self, who: Identity, uuid: [u64; 2], allow: bool) {
        let mut list = self
            .effective()
            .clients
            .get(&Who(who))
            .and_then(|c| c.shared_auth.clone())
            .unwrap_or_default();
        list.retain(|u| u.0 != uuid);
        if allow {
            list.push(Uuid(uuid));
            list.sort();
        }
        self.change_client(who, |c| c.shared_auth = Some(list));
    }

    /// Record the global switch.
    pub fn change_shared_auth_required(&mut self, required: bool) {
        self.changes.shared_auth_required = Some(required);
        self.dirty = true;
    }

    /// Whether there are changes not saved yet.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Save the changes where they are kept, atomically (module documentation).
    pub fn save(&mut self) -> Result<(), SettingsError> {
        self.write()?;
        self.dirty = false;
        Ok(())
    }

    fn write(&mut self) -> Result<(), SettingsError> {
        let body = serde_json::to_vec_pretty(&Settings {
            version: SETTINGS_VERSION,
            ..self.changes.clone()
        })
        .map_err(|e| SettingsError::Invalid {
            what: self.backing.to_string(),
            message: e.to_string(),
        })?;
        let what = self.backing.to_string();
        let write = |source| SettingsError::Write {
            what: what.clone(),
            source,
        };
        match &self.backing {
            Backing::Memory => Ok(()),
            Backing::File(path) => replace_file(path, &body).map_err(write),
            Backing::Memfd(f) => {
                if body.len() > SLOT_BYTES - SLOT_HEADER {
                    return Err(SettingsError::TooLarge { len: body.len() });
                }
                let seq = self.seq + 1;
                write_slot(f, seq, &body).map_err(write)?;
                self.seq = seq;
                Ok(())
            }
        }
    }
}

fn parse(what: &str, body: &[u8]) -> Result<Settings, SettingsError> {
    let s: Settings = serde_json::from_slice(body).map_err(|e| SettingsError::Invalid {
        what: what.to_string(),
        message: e.to_string(),
    })?;
    if s.version > SETTINGS_VERSION {
        return Err(SettingsError::Newer {
            what: what.to_string(),
            found: s.version,
        });
    }
    Ok(s)
}

fn read_json_file(path: &Path) -> Result<Option<Vec<u8>>, SettingsError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SettingsError::Read {
            what: path.display().to_string(),
            source,
        }),
    }
}

/// Write `body` to `path` so that a reader (or a crash at any point) sees the old file or
/// the new one, never a mix.
fn replace_file(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(body)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Bytes of one slot in the settings memfd (the file is sparse: only what is written counts).
pub const SLOT_BYTES: usize = 1 << 20;
/// magic, sequence number, body length, checksum: 8 bytes each.
const SLOT_HEADER: usize = 32;
const SLOT_MAGIC: &[u8; 8] = b"TMEMSET1";

/// FNV-1a, 64 bits: enough to tell a slot whose write was cut short (not a defence against
/// anyone who can write the memfd, who could write the settings anyway).
fn checksum(seq: u64, body: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seq
        .to_le_bytes()
        .iter()
        .chain((body.len() as u64).to_le_bytes().iter())
        .chain(body)
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The newest valid slot: `(sequence number, body)`, or `None` if neither is valid.
fn read_slots(f: &File) -> std::io::Result<Option<(u64, Vec<u8>)>> {
    let mut best: Option<(u64, Vec<u8>)> = None;
    for slot in 0..2u64 {
        let base = slot * SLOT_BYTES as u64;
        let mut head = [0u8; SLOT_HEADER];
        if !read_full(f, &mut head, base)? {
            continue;
        }
        let word = |i: usize| u64::from_le_bytes(head[i * 8..i * 8 + 8].try_into().expect("8"));
        if &head[..8] != SLOT_MAGIC {
            continue;
        }
        let (seq, len, sum) = (word(1), word(2), word(3));
        if len > (SLOT_BYTES - SLOT_HEADER) as u64 {
            continue;
        }
        let mut body = vec![0u8; len as usize];
        if !read_full(f, &mut body, base + SLOT_HEADER as u64)? || checksum(seq, &body) != sum {
            continue;
        }
        let newer = match &best {
            Some((s, _)) => seq > *s,
            None => true,
        };
        if newer {
            best = Some((seq, body));
        }
    }
    Ok(best)
}

/// Read exactly `buf.len()` bytes at `off`; `false` if the file ends first.
fn read_full(f: &File, buf: &mut [u8], off: u64) -> std::io::Result<bool> {
    match f.read_exact_at(buf, off) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Write copy `seq` into the slot that does not hold copy `seq - 1`.
fn write_slot(f: &File, seq: u64, body: &[u8]) -> std::io::Result<()> {
    let base = (seq % 2) * SLOT_BYTES as u64;
    let mut buf = Vec::with_capacity(SLOT_HEADER + body.len());
    buf.extend_from_slice(SLOT_MAGIC);
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&(body.len() as u64).to_le_bytes());
    buf.extend_from_slice(&checksum(seq, body).to_le_bytes());
    buf.extend_from_slice(body);
    f.write_all_at(&buf, base)
}

/// A memfd for the settings.
pub fn settings_memfd() -> std::io::Result<OwnedFd> {
    let fd = nix::sys::memfd::memfd_create(
        c"tmemd-settings",
        nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
    )?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    const U1: &str = "6f1c2a7e-93b4-4d2e-8a11-0c5f3e9d7b21";
    const U2: &str = "00000000-0000-0000-0000-000000000002";

    fn uuid(s: &str) -> [u64; 2] {
        tmem_control::parse_uuid(s).unwrap()
    }

    fn baseline() -> Settings {
        let mut s = Settings {
            shared_auth_required: Some(true),
            ..Settings::default()
        };
        s.clients.insert(
            Who(Identity::Xen { domid: 3 }),
            ClientSettings {
                weight: Some(2),
                cap_pages: Some(1000),
                shared_auth: Some(vec![Uuid(uuid(U1))]),
                ..ClientSettings::default()
            },
        );
        s
    }

    #[test]
    fn changes_win_over_the_baseline_and_a_revocation_sticks() {
        let mut k = Keeper::in_memory(baseline());
        let d3 = Identity::Xen { domid: 3 };
        k.change_client(d3, |c| c.weight = Some(5));
        k.change_shared_auth(d3, uuid(U1), false);
        k.change_shared_auth(d3, uuid(U2), true);
        k.change_shared_auth_required(false);
        let e = k.effective();
        let c = &e.clients[&Who(d3)];
        assert_eq!(c.weight, Some(5));
        assert_eq!(c.cap_pages, Some(1000), "baseline kept where not changed");
        assert_eq!(c.shared_auth, Some(vec![Uuid(uuid(U2))]));
        assert_eq!(e.shared_auth_required, Some(false));
    }

    #[test]
    fn json_round_trip_names_clients_and_uuids_as_text() {
        let s = baseline();
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains("\"3\""), "{text}");
        assert!(text.contains(U1), "{text}");
        let back: Settings = serde_json::from_str(&text).unwrap();
        assert_eq!(back, s);
        let local: Settings =
            serde_json::from_str(r#"{"clients":{"local:1000:7":{"frozen":true}}}"#).unwrap();
        assert_eq!(local.version, SETTINGS_VERSION);
        assert!(local.clients.contains_key(&Who(Identity::Local {
            uid: 1000,
            label: 7
        })));
        assert!(serde_json::from_str::<Settings>(r#"{"clients":{"x":{}}}"#).is_err());
    }

    #[test]
    fn a_file_save_replaces_the_file_and_loads_back() {
        let dir = std::env::temp_dir().join(format!("tmemd-settings-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("pages.settings.json");
        let _ = std::fs::remove_file(&path);
        let mut k = Keeper::load(Settings::default(), Backing::File(path.clone())).unwrap();
        assert!(!k.has_changes());
        k.change_client(Identity::Xen { domid: 9 }, |c| c.frozen = Some(true));
        k.save().unwrap();
        let k2 = Keeper::load(Settings::default(), Backing::File(path.clone())).unwrap();
        assert_eq!(
            k2.effective().clients[&Who(Identity::Xen { domid: 9 })].frozen,
            Some(true)
        );
        std::fs::write(&path, b"{not json").unwrap();
        let e = Keeper::load(Settings::default(), Backing::File(path.clone())).unwrap_err();
        assert!(e.to_string().contains("remove it"), "{e}");
        std::fs::write(&path, br#"{"version": 99}"#).unwrap();
        let e = Keeper::load(Settings::default(), Backing::File(path.clone())).unwrap_err();
        assert!(e.to_string().contains("version 99"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_memfd_save_cut_short_leaves_the_previous_copy() {
        let f = File::from(settings_memfd().unwrap());
        let again = || f.try_clone().unwrap();
        let mut k = Keeper::load(Settings::default(), Backing::Memfd(again())).unwrap();
        let d = Identity::Xen { domid: 4 };
        k.change_client(d, |c| c.weight = Some(7));
        k.save().unwrap();
        k.change_client(d, |c| c.weight = Some(8));
        k.save().unwrap();
        let weight = |k: &Keeper| k.effective().clients[&Who(d)].weight;
        let k2 = Keeper::load(Settings::default(), Backing::Memfd(again())).unwrap();
        assert_eq!(weight(&k2), Some(8));
        // A third save torn halfway through its slot (the one holding copy 1): copy 2 wins.
        let mut k3 = k2;
        k3.change_client(d, |c| c.weight = Some(9));
        k3.save().unwrap();
        // Copy 3 went to slot 1.
        let base = SLOT_BYTES as u64;
        f.write_all_at(b"garbage", base + SLOT_HEADER as u64 + 3)
            .unwrap();
        let k4 = Keeper::load(Settings::default(), Backing::Memfd(again())).unwrap();
        assert_eq!(weight(&k4), Some(8));
        // The next save after loading copy 2 goes to the other slot and wins.
        let mut k4 = k4;
        k4.change_client(d, |c| c.weight = Some(10));
        k4.save().unwrap();
        let k5 = Keeper::load(Settings::default(), Backing::Memfd(again())).unwrap();
        assert_eq!(weight(&k5), Some(10));
    }
}
