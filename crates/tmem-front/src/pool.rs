//! Per-pool bookkeeping of the lazy-init pool map (no I/O here).

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use tmem_abi::{Oid, PageKey, PoolKind, TmemError};

/// A stable, process-local pool handle ("fake pool id"). It stays valid across backend
/// disconnects and reconnects; the real pool id behind it changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PoolHandle(pub(crate) u32);

impl PoolHandle {
    /// The fake pool id, as shown in status output.
    pub fn fake_id(self) -> u32 {
        self.0
    }
}

impl std::fmt::Display for PoolHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Invalidations recorded while a pool was unreachable, replayed before it is trusted again.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    pub pages: HashSet<PageKey>,
    pub objects: HashSet<Oid>,
}

impl Replay {
    pub fn len(&self) -> usize {
        self.pages.len() + self.objects.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn clear(&mut self) {
        self.pages.clear();
        self.objects.clear();
    }
}

/// One entry of the pool map.
#[derive(Debug)]
pub(crate) struct Pool {
    pub kind: PoolKind,
    pub uuid: [u8; 16],
    /// The real pool id on the current connection; `None` while unmapped.
    pub real: Option<i32>,
    /// Whether this pool ever existed on a backend (so the backend may still hold pages).
    pub ever_mapped: bool,
    /// The backend's refusal of the last `NEW_POOL` (retried on every reconnect).
    pub refused: Option<TmemError>,
    /// Too many invalidations recorded while unreachable (shared pools): never trusted again.
    pub poisoned: bool,
    /// Persistent pools: incremented on every detected loss.
    pub epoch: u64,
    /// Persistent pools: pages that may be on the backend, with the epoch they were stored in.
    pub held: HashMap<Oid, HashMap<u32, u64, KeyedFold>, KeyedFold>,
    pub held_pages: usize,
    pub replay: Replay,
    pub losses: u64,
    pub lost_pages: u64,
    /// Set on a loss; cleared by `Client::acknowledge_loss`.
    pub lost: bool,
}

/// What may still be on the backend for one key of a persistent pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Held {
    /// Never stored, invalidated, or a failed store: the backend cannot have it.
    No,
    /// Stored in the current epoch: the backend must have it.
    Current,
    /// Stored before a loss: gone.
    Lost,
}

impl Pool {
    pub fn new(kind: PoolKind, uuid: [u8; 16]) -> Pool {
        Pool {
            kind,
            uuid,
            real: None,
            ever_mapped: false,
            refused: None,
            poisoned: false,
            epoch: 0,
            held: HashMap::default(),
            held_pages: 0,
            replay: Replay::default(),
            losses: 0,
            lost_pages: 0,
            lost: false,
        }
    }

    pub fn held(&self, key: &PageKey) -> Held {
        match self.held.get(&key.oid).and_then(|o| o.get(&key.index)) {
            None => Held::No,
            Some(&e) if e == self.epoch => Held::Current,
            Some(_) => Held::Lost,
        }
    }

    pub fn hold(&mut self, key: PageKey) {
        let epoch = self.epoch;
        if self
            .held
            .entry(key.oid)
            .or_default()
            .insert(key.index, epoch)
            .is_none()
        {
            self.held_pages += 1;
        }
    }

    /// Forget a key; returns what was held.
    pub fn unhold(&mut self, key: &PageKey) -> Held {
        let h = self.held(key);
        if h != Held::No {
            if let Some(o) = self.held.get_mut(&key.oid) {
                o.remove(&key.index);
                if o.is_empty() {
                    self.held.remove(&key.oid);
                }
            }
            self.held_pages -= 1;
        }
        h
    }

    /// Forget an object; returns whether anything of it was held.
    pub fn unhold_object(&mut self, oid: &Oid) -> bool {
        match self.held.remove(oid) {
            Some(o) => {
                self.held_pages -= o.len();
                !o.is_empty()
            }
            None => false,
        }
    }

    /// Pages stored in the current epoch.
    pub fn current_pages(&self) -> usize {
        self.held
            .values()
            .flat_map(|o| o.values())
            .filter(|&&e| e == self.epoch)
            .count()
    }
}

/// The hash of the held-page maps, which a persistent pool updates on every put and checks on
/// every get: SipHash there took about 8% of a guest's CPU time on a stream of puts (`perf`,
/// docs/benchmarks.md). Keys can be chosen by applications in the guest (cleancache: file
/// offsets), so the hash stays keyed: one multiply-fold per word with a per-process random key.
#[derive(Debug, Clone, Copy)]
pub struct KeyedFold {
    key: u64,
}

impl Default for KeyedFold {
    fn default() -> Self {
        static KEY: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        let key = *KEY.get_or_init(|| {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(0x9e37_79b9_7f4a_7c15);
            h.finish() | 1
        });
        KeyedFold { key }
    }
}

impl std::hash::BuildHasher for KeyedFold {
    type Hasher = FoldHasher;
    fn build_hasher(&self) -> FoldHasher {
        FoldHasher { h: self.key }
    }
}

/// See [`KeyedFold`].
#[derive(Debug, Clone, Copy)]
pub struct FoldHasher {
    h: u64,
}

impl FoldHasher {
    fn mix(&mut self, x: u64) {
        let p = u128::from(self.h ^ x) * 0x5851_f42d_4c95_7f2d_u128;
        self.h = (p as u64) ^ ((p >> 64) as u64);
    }
}

impl std::hash::Hasher for FoldHasher {
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.mix(u64::from_le_bytes(w));
        }
    }
    fn write_u32(&mut self, x: u32) {
        self.mix(u64::from(x));
    }
    fn write_u64(&mut self, x: u64) {
        self.mix(x);
    }
    fn write_usize(&mut self, x: usize) {
        self.mix(x as u64);
    }
    fn finish(&self) -> u64 {
        self.h
    }
}

/// The uuid as the two little-endian words of `NEW_POOL` (what Linux's shim sent).
pub(crate) fn uuid_words(uuid: &[u8; 16]) -> [u64; 2] {
    let lo = u64::from_le_bytes(uuid[0..8].try_into().expect("8 bytes"));
    let hi = u64::from_le_bytes(uuid[8..16].try_into().expect("8 bytes"));
    [lo, hi]
}

/// A random, non-zero uuid for a private pool (so a persistent one can be reattached).
pub fn random_uuid() -> [u8; 16] {
    use std::io::Read;
    let mut u = [0u8; 16];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut u))
        .is_ok();
    if !ok || u == [0; 16] {
        // Fallback: std's per-process random hash keys mixed with time and a counter.
        use std::hash::{BuildHasher, Hasher};
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        for (i, chunk) in u.chunks_mut(8).enumerate() {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(t ^ n.rotate_left(17) ^ i as u64);
            chunk.copy_from_slice(&(h.finish() | 1).to_le_bytes());
        }
    }
    u
}

/// Format a uuid the usual 8-4-4-4-12 way.
pub fn format_uuid(u: &[u8; 16]) -> String {
    let h: Vec<String> = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    )
}

/// Parse a uuid written as 32 hex digits, dashes allowed anywhere.
pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = s.bytes().filter(|&b| b != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut u = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        u[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(u)
}

#[cfg(test)]
mod held_tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn held_pages_are_tracked_by_key_and_epoch() {
        let mut p = Pool::new(PoolKind::PrivatePersistent, [7; 16]);
        let key = |i: u64| PageKey {
            oid: Oid([i >> 10, 3, 0]),
            index: (i & 1023) as u32,
        };
        for i in 0..5000 {
            p.hold(key(i));
        }
        assert_eq!(p.held_pages, 5000);
        assert_eq!(p.held(&key(4999)), Held::Current);
        assert_eq!(p.held(&key(5000)), Held::No);
        assert_eq!(p.unhold(&key(17)), Held::Current);
        assert_eq!(p.held(&key(17)), Held::No);
        p.epoch += 1;
        assert_eq!(p.held(&key(18)), Held::Lost);
        assert!(p.unhold_object(&Oid([0, 3, 0])));
        assert_eq!(p.held_pages, 5000 - 1024);
    }

    #[test]
    fn the_fold_hash_spreads_small_keys() {
        let b = KeyedFold::default();
        let mut seen = HashSet::new();
        for i in 0u32..4096 {
            // The low 12 bits pick a bucket in a 4096-slot table.
            seen.insert(b.hash_one(i) & 0xfff);
        }
        assert!(
            seen.len() > 2400,
            "only {} of 4096 buckets used",
            seen.len()
        );
    }
}
