//! Command-line arguments and the optional TOML file, validated into one [`Config`].
//!
//! Precedence: a command-line flag beats the file, the file beats the default. Every field
//! is checked here once; the rest of the daemon trusts `Config`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;
use tmem_store::{Identity, StoreConfig};

use crate::settings::{ClientSettings, Settings, Uuid, Who};

pub const DEFAULT_SOCKET: &str = "/run/tmemd/tmemd.sock";
pub const DEFAULT_CONTROL_SOCKET: &str = tmem_control::DEFAULT_CONTROL_SOCKET;
/// Where page memory lives when neither systemd's fd store nor `page_file` says otherwise.
/// Outside the unit's `RuntimeDirectory=` (/run/tmemd), which systemd removes when tmemd
/// stops; /run is a tmpfs, so this lasts until the host reboots.
pub const DEFAULT_PAGE_FILE: &str = "/run/tmemd-pages/pages";
/// Where swap disks spill pages that memory (or the guest's cap) cannot take.
pub const DEFAULT_SWAP_SPILL_DIR: &str = "/var/lib/tmemd/swap";
/// The device name a swap disk gets in the guest unless configured: the last short-form
/// name, far from the disks a domain configuration usually names.
pub const DEFAULT_SWAP_DEVICE: &str = "xvdz";

/// tmemd: transcendent memory for Xen guests, as a dom0 daemon.
#[derive(Debug, Parser, Default)]
#[command(name = "tmemd", version, about, long_about = None)]
pub struct Args {
    /// TOML configuration file (flags given here override it).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Unix socket guests connect to (local transport).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Unix socket for the `tmem` administration CLI (root only).
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
    /// Memory for page data, e.g. 512M or 2G.
    #[arg(long, value_name = "SIZE")]
    pub mem_limit: Option<String>,
    /// Worker threads serving guest rings.
    #[arg(long, value_name = "N")]
    pub workers: Option<u32>,
    /// How long a worker polls its rings before it sleeps, in microseconds.
    #[arg(long, value_name = "US")]
    pub poll_us: Option<u64>,
    /// Largest ring a guest may offer, in pages.
    #[arg(long, value_name = "N")]
    pub max_ring_pages: Option<u32>,
    /// Largest data area a guest may offer, in page slots.
    #[arg(long, value_name = "N")]
    pub max_data_slots: Option<u32>,
    /// Guests connected at once.
    #[arg(long, value_name = "N")]
    pub max_guests: Option<u32>,
    /// Seconds a disconnected guest's persistent pools are kept for it to reattach.
    #[arg(long, value_name = "SECS")]
    pub reattach_grace_secs: Option<u64>,
    /// Cap on each guest's page memory, in 4 KiB units (0 = only the memory limit): a raw
    /// page takes one, a compressed page less, a same-filled page none.
    #[arg(long, value_name = "PAGES")]
    pub default_cap_pages: Option<u64>,
    /// Log filter (error, warn, info, debug, trace, or a tracing filter).
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Do not serve Xen guests even when running in a Xen dom0 (local transport only).
    #[arg(long)]
    pub no_xen: bool,
    /// Do not fault in the whole page-data memory at start-up (it is then faulted in chunk by
    /// chunk as puts first need it, which stalls those puts).
    #[arg(long)]
    pub no_prefault: bool,
    /// Accept a --mem-limit larger than the memory this host has available now (for people
    /// who know it will be there, e.g. memory about to be freed or added).
    #[arg(long)]
    pub allow_overcommit: bool,
    /// Xen domains that get a tmem device: ids or names, comma separated (default: every
    /// domain but dom0).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub xen_domains: Option<Vec<String>>,
    /// File that holds page memory, on a tmpfs (default: a memfd in systemd's fd store under
    /// systemd, else /run/tmemd-pages/pages).
    #[arg(long, value_name = "PATH")]
    pub page_file: Option<PathBuf>,
    /// Keep page memory on the heap: nothing survives a restart of tmemd.
    #[arg(long)]
    pub no_durable: bool,
}

/// The TOML file. Unknown keys are an error, so a typo is not silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub socket: Option<PathBuf>,
    pub control_socket: Option<PathBuf>,
    pub mem_limit: Option<String>,
    pub workers: Option<u32>,
    pub poll_us: Option<u64>,
    pub max_ring_pages: Option<u32>,
    pub max_data_slots: Option<u32>,
    pub max_guests: Option<u32>,
    pub reattach_grace_secs: Option<u64>,
    /// Seconds a Xen domain saved or migrated away keeps its persistent pages and swap disk
    /// for a domain with its uuid to claim them (0 = never park: destroy at release).
    pub park_timeout_secs: Option<u64>,
    pub default_cap_pages: Option<u64>,
    /// Percent of mem_limit one guest may pin in persistent pages (0 = no limit).
    pub default_persistent_share_percent: Option<u32>,
    pub max_pools_per_client: Option<u32>,
    pub max_shared_pools: Option<u32>,
    pub max_auth_per_domain: Option<u32>,
    pub log_level: Option<String>,
    /// Non-root user ids (besides the daemon's own) allowed on the control socket.
    pub control_uids: Option<Vec<u32>>,
    /// User ids allowed on the control socket for reading only (list, status, metrics, ...).
    pub control_readonly_uids: Option<Vec<u32>>,
    /// Group ids (the peer's effective group) allowed on the control socket for reading only.
    pub control_readonly_gids: Option<Vec<u32>>,
    /// Group (name or id) that owns the control socket, which is then made 0660 so that its
    /// members can connect; the credential check still decides what they may do.
    pub control_socket_group: Option<String>,
    /// Serve Xen guests when running in a Xen dom0 (default true).
    pub xen: Option<bool>,
    /// Xen domains that get a tmem device: ids or names (default: all but dom0).
    pub xen_domains: Option<Vec<String>>,
    /// Fault in all page-data memory at start-up (default true).
    pub prefault: Option<bool>,
    /// Accept a mem_limit above the host's available memory (default false).
    pub allow_overcommit: Option<bool>,
    /// File that holds page memory (see `--page-file`).
    pub page_file: Option<PathBuf>,
    /// Persistent pages survive a restart of tmemd (default true).
    pub durable: Option<bool>,
    /// Whether joining a shared pool needs a per-client authorisation (default true).
    pub shared_auth_required: Option<bool>,
    /// The codec a guest's `compress = true` (or `tmem set -p 1`) turns on: "lz4" (default)
    /// or "zstd".
    pub compression: Option<String>,
    /// Largest compressed page kept, in bytes (64 to 4032, default 3072); pages that do not
    /// compress to this or less are stored raw.
    pub compress_max_bytes: Option<u32>,
    /// Per-guest settings: `[[guest]]` tables.
    pub guest: Option<Vec<GuestConfig>>,
    /// Directory of the swap disks' spill files (default [`DEFAULT_SWAP_SPILL_DIR`]).
    pub swap_spill_dir: Option<PathBuf>,
    /// Which domains get a swap disk: `[[swap_disk]]` tables (none: no swap disks).
    pub swap_disk: Option<Vec<SwapDiskFile>>,
}

/// One `[[swap_disk]]` table: the domains it gives a swap disk, and the disk.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwapDiskFile {
    /// Domain ids or names; `"*"` is every domain tmemd admits.
    pub domains: Vec<String>,
    /// Size, e.g. "2GiB" (a whole number of 4 KiB pages).
    pub size: String,
    /// The guest's device name (default [`DEFAULT_SWAP_DEVICE`]).
    pub device: Option<String>,
}

/// One `[[guest]]` table: a Xen domain (`domid`) or a local client (`uid` and `label`), and
/// the settings it starts with.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestConfig {
    pub domid: Option<u32>,
    pub uid: Option<u32>,
    pub label: Option<u32>,
    pub weight: Option<u32>,
    pub cap_pages: Option<u64>,
    pub frozen: Option<bool>,
    pub compress: Option<bool>,
    /// Shared-pool uuids this guest may join.
    pub shared_auth: Option<Vec<String>>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub socket: PathBuf,
    pub control_socket: PathBuf,
    pub workers: u32,
    pub poll: Duration,
    pub max_ring_pages: u32,
    pub max_data_slots: u32,
    pub max_guests: u32,
    pub reattach_grace: Duration,
    /// How long a suspended-then-released Xen domain's pages wait for its uuid (0: never).
    pub park_timeout: Duration,
    pub log_level: String,
    pub control_uids: Vec<u32>,
    /// Peers with one of these uids, or effective gid in `control_readonly_gids`, may only read.
    pub control_readonly_uids: Vec<u32>,
    pub control_readonly_gids: Vec<u32>,
    /// The group given the control socket (mode 0660), if any.
    pub control_socket_gid: Option<u32>,
    pub store: StoreConfig,
    /// Try the Xen transport (it still needs a Xen dom0 to start).
    pub xen: bool,
    /// Fault in all page-data memory at start-up, before telling systemd we are ready.
    pub prefault: bool,
    /// Skip the check of mem_limit against the host's available memory.
    pub allow_overcommit: bool,
    /// `None`: every domain but dom0.
    pub xen_domains: Option<Vec<String>>,
    /// The page file when configured (`None`: fd store under systemd, else the default path).
    pub page_file: Option<PathBuf>,
    /// Page memory survives tmemd (false: heap frames).
    pub durable: bool,
    /// Administrator settings the config file declares (the baseline; see [`crate::settings`]).
    pub settings: Settings,
    /// Swap disks (Xen PV block devices served from tmem memory).
    pub swap: SwapConfig,
    /// The codec a guest's compression flag turns on.
    pub compression: tmem_store::Compression,
    /// Largest compressed page kept (bytes).
    pub compress_max_bytes: u32,
}

/// The validated `[[swap_disk]]` tables and spill directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SwapConfig {
    pub spill_dir: PathBuf,
    /// In file order; the first rule that names a domain gives it its disk.
    pub rules: Vec<SwapRule>,
}

/// One domain's swap disk, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwapRule {
    /// Domain ids or names, or `"*"`.
    pub domains: Vec<String>,
    /// Size in 512-byte sectors (a multiple of 8).
    pub sectors: u64,
    /// Device name in the guest (`xvdz`) and its blkif device number.
    pub device: String,
    pub devid: u32,
}

impl SwapConfig {
    /// The disk domain `domid` named `name` gets, if any (dom0 never gets one).
    pub fn disk_for(&self, domid: u32, name: &str) -> Option<&SwapRule> {
        if domid == 0 {
            return None;
        }
        self.rules.iter().find(|r| {
            r.domains
                .iter()
                .any(|e| e == "*" || crate::xen::policy::names(e, domid, name))
        })
    }
}

/// Check the `[[swap_disk]]` tables.
fn swap_config(dir: Option<PathBuf>, tables: Vec<SwapDiskFile>) -> Result<SwapConfig, ConfigError> {
    let spill_dir = dir.unwrap_or_else(|| DEFAULT_SWAP_SPILL_DIR.into());
    if !spill_dir.is_absolute() {
        return Err(invalid(format!(
            "swap_spill_dir {:?} must be an absolute path (e.g. {DEFAULT_SWAP_SPILL_DIR})",
            spill_dir.display().to_string()
        )));
    }
    let mut rules = Vec::new();
    for (i, t) in tables.into_iter().enumerate() {
        let n = i + 1;
        if t.domains.is_empty() {
            return Err(invalid(format!(
                "[[swap_disk]] number {n} names no domains: list domain names or ids, or \"*\""
            )));
        }
        for e in &t.domains {
            let ok = !e.is_empty() && e.len() <= 64 && e.chars().all(|c| c.is_ascii_graphic());
            if !ok {
                return Err(invalid(format!(
                    "[[swap_disk]] number {n}: {e:?} is not a domain id or name"
                )));
            }
        }
        let bytes = parse_size(&t.size)
            .map_err(|e| invalid(format!("[[swap_disk]] number {n}: size: {e}")))?;
        let page = tmem_abi::PAGE_SIZE as u64;
        if bytes < page || bytes % page != 0 || bytes / page > 1 << 32 {
            return Err(invalid(format!(
                "[[swap_disk]] number {n}: size {:?} must be a whole number of 4 KiB pages, \
                 from 4 KiB to 16 TiB",
                t.size
            )));
        }
        let device = t.device.unwrap_or_else(|| DEFAULT_SWAP_DEVICE.into());
        let devid = tmem_xen::blkback::device_number(&device).map_err(|e| {
            invalid(format!(
                "[[swap_disk]] number {n}: device {device:?}: {e} (use a name like xvdz)"
            ))
        })?;
        rules.push(SwapRule {
            domains: t.domains,
            sectors: bytes / 512,
            device,
            devid,
        });
    }
    Ok(SwapConfig { spill_dir, rules })
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Build the configuration from arguments, reading the file they name.
    pub fn load(args: Args) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let config = Config::merge(args, file)?;
        if let Some(available) = host_available_bytes() {
            config.check_host_memory(available)?;
        }
        Ok(config)
    }

    /// Refuse a page-data limit the host cannot give (unless overcommit is allowed): the
    /// store would abort, or push the host into the OOM killer, when it later fills up.
    /// `available` is the host's MemAvailable; tmemd holds no page memory yet at this point.
    pub fn check_host_memory(&self, available: u64) -> Result<(), ConfigError> {
        let want = self.store.mem_limit_bytes;
        if self.allow_overcommit || want <= available {
            return Ok(());
        }
        Err(invalid(format!(
            "mem_limit {} is more than this host has available ({}); lower --mem-limit, or add \
             --allow-overcommit (allow_overcommit = true) if you know the memory will be there",
            human(want),
            human(available)
        )))
    }

    /// Merge flags over file values over defaults, and validate.
    pub fn merge(args: Args, file: FileConfig) -> Result<Config, ConfigError> {
        let defaults = StoreConfig::default();
        let mem_limit = match args.mem_limit.or(file.mem_limit) {
            Some(s) => parse_size(&s).map_err(ConfigError::Invalid)?,
            None => defaults.mem_limit_bytes,
        };
        if mem_limit < tmem_abi::PAGE_SIZE as u64 {
            return Err(invalid(format!(
                "mem_limit {mem_limit} bytes is smaller than one page (4096 bytes)"
            )));
        }
        let workers = args
            .workers
            .or(file.workers)
            .unwrap_or_else(default_workers);
        check_range("workers", workers.into(), 1, 64)?;
        let poll_us = args.poll_us.or(file.poll_us).unwrap_or(50);
        check_range("poll_us", poll_us, 0, 100_000)?;
        let max_ring_pages = args.max_ring_pages.or(file.max_ring_pages).unwrap_or(16);
        check_range("max_ring_pages", max_ring_pages.into(), 1, 256)?;
        let max_data_slots = args.max_data_slots.or(file.max_data_slots).unwrap_or(1024);
        check_range("max_data_slots", max_data_slots.into(), 1, 65_536)?;
        let max_guests = args.max_guests.or(file.max_guests).unwrap_or(256);
        check_range("max_guests", max_guests.into(), 1, 65_536)?;
        let grace = args
            .reattach_grace_secs
            .or(file.reattach_grace_secs)
            .unwrap_or(30);
        check_range("reattach_grace_secs", grace, 0, 86_400)?;
        let park_timeout = file.park_timeout_secs.unwrap_or(300);
        check_range("park_timeout_secs", park_timeout, 0, 86_400)?;
        let store = StoreConfig {
            mem_limit_bytes: mem_limit,
            max_pools_per_client: file
                .max_pools_per_client
                .unwrap_or(defaults.max_pools_per_client),
            max_shared_pools: file.max_shared_pools.unwrap_or(defaults.max_shared_pools),
            max_auth_per_domain: file
                .max_auth_per_domain
                .unwrap_or(defaults.max_auth_per_domain),
            default_cap_pages: args
                .default_cap_pages
                .or(file.default_cap_pages)
                .unwrap_or(defaults.default_cap_pages),
            default_weight: defaults.default_weight,
            default_persistent_share_percent: file
                .default_persistent_share_percent
                .unwrap_or(defaults.default_persistent_share_percent),
        };
        check_range(
            "default_persistent_share_percent",
            store.default_persistent_share_percent.into(),
            0,
            100,
        )?;
        check_range(
            "max_pools_per_client",
            store.max_pools_per_client.into(),
            1,
            1 << 20,
        )?;
        check_range(
            "max_shared_pools",
            store.max_shared_pools.into(),
            0,
            1 << 20,
        )?;
        check_range(
            "max_auth_per_domain",
            store.max_auth_per_domain.into(),
            0,
            1 << 20,
        )?;
        let log_level = args
            .log_level
            .or(file.log_level)
            .unwrap_or_else(|| "info".into());
        check_log_level(&log_level)?;
        let xen = !args.no_xen && file.xen.unwrap_or(true);
        let xen_domains = args.xen_domains.or(file.xen_domains);
        if let Some(list) = &xen_domains {
            for e in list {
                let ok = !e.is_empty()
                    && e.len() <= 64
                    && e.chars().all(|c| c.is_ascii_graphic() && c != ',');
                if !ok {
                    return Err(invalid(format!(
                        "xen_domains entry {e:?} is not a domain id or name"
                    )));
                }
            }
        }
        if let Some(p) = args.page_file.as_ref().or(file.page_file.as_ref()) {
            if p.as_os_str().is_empty() || p.is_dir() || p.to_string_lossy().ends_with('/') {
                return Err(invalid(format!(
                    "page_file {:?} must name a file (e.g. /run/tmemd-pages/pages)",
                    p.display().to_string()
                )));
            }
        }
        let control_socket_gid = match file.control_socket_group.as_deref() {
            None => None,
            Some(g) => Some(group_id(g)?),
        };
        let settings =
            declared_settings(file.shared_auth_required, file.guest.unwrap_or_default())?;
        let swap = swap_config(file.swap_spill_dir, file.swap_disk.unwrap_or_default())?;
        let compression = match file.compression.as_deref() {
            None => tmem_store::Compression::Lz4,
            Some(s) => match tmem_store::Compression::parse(s) {
                Some(c) if c.is_on() => c,
                _ => {
                    return Err(invalid(format!(
                        "compression {s:?} is not a codec: use \"lz4\" or \"zstd\""
                    )))
                }
            },
        };
        let compress_max_bytes = file.compress_max_bytes.unwrap_or(3072);
        check_range("compress_max_bytes", compress_max_bytes.into(), 64, 4032)?;
        Ok(Config {
            swap,
            compression,
            compress_max_bytes,
            page_file: args.page_file.or(file.page_file),
            durable: !args.no_durable && file.durable.unwrap_or(true),
            settings,
            xen,
            prefault: !args.no_prefault && file.prefault.unwrap_or(true),
            xen_domains,
            socket: args
                .socket
                .or(file.socket)
                .unwrap_or_else(|| DEFAULT_SOCKET.into()),
            control_socket: args
                .control_socket
                .or(file.control_socket)
                .unwrap_or_else(|| DEFAULT_CONTROL_SOCKET.into()),
            workers,
            poll: Duration::from_micros(poll_us),
            max_ring_pages,
            max_data_slots,
            max_guests,
            reattach_grace: Duration::from_secs(grace),
            park_timeout: Duration::from_secs(park_timeout),
            log_level,
            allow_overcommit: args.allow_overcommit || file.allow_overcommit.unwrap_or(false),
            control_uids: file.control_uids.unwrap_or_default(),
            control_readonly_uids: file.control_readonly_uids.unwrap_or_default(),
            control_readonly_gids: file.control_readonly_gids.unwrap_or_default(),
            control_socket_gid,
            store,
        })
    }
}

/// The `[[guest]]` tables and `shared_auth_required`, checked, as the settings baseline.
fn declared_settings(
    required: Option<bool>,
    guests: Vec<GuestConfig>,
) -> Result<Settings, ConfigError> {
    let mut s = Settings {
        shared_auth_required: required,
        ..Settings::default()
    };
    for (i, g) in guests.into_iter().enumerate() {
        let n = i + 1;
        let who = match (g.domid, g.uid, g.label) {
            (Some(domid), None, None) => Identity::Xen { domid },
            (None, Some(uid), Some(label)) => Identity::Local { uid, label },
            _ => {
                return Err(invalid(format!(
                    "[[guest]] number {n} must name either a Xen domain (domid = N) or a local \
                     client (uid = N and label = N), not both or neither"
                )))
            }
        };
        let shared_auth = match g.shared_auth {
            Some(list) => {
                let mut v = Vec::new();
                for u in list {
                    let uuid = tmem_control::parse_uuid(&u)
                        .map_err(|e| invalid(format!("[[guest]] {who}: shared_auth: {e}")))?;
                    if !v.contains(&Uuid(uuid)) {
                        v.push(Uuid(uuid));
                    }
                }
                v.sort();
                Some(v)
            }
            None => None,
        };
        let c = ClientSettings {
            weight: g.weight,
            cap_pages: g.cap_pages,
            frozen: g.frozen,
            compress: g.compress,
            shared_auth,
        };
        if s.clients.insert(Who(who), c).is_some() {
            return Err(invalid(format!(
                "[[guest]] {who} is declared twice; merge the two tables"
            )));
        }
    }
    Ok(s)
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: toml_message(&text, &e),
    })
}

/// One line naming where the error is: "line N, key `k`: message" (toml's own rendering
/// spans several lines and its bare message does not say which key is wrong).
fn toml_message(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
    let Some(span) = e.span() else {
        return message;
    };
    let start = span.start.min(text.len());
    let line_no = text[..start].matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("");
    match line.split_once('=') {
        Some((key, _)) if !key.trim().is_empty() && !key.trim_start().starts_with('#') => {
            format!("line {line_no}, key `{}`: {message}", key.trim())
        }
        _ => format!("line {line_no}: {message}"),
    }
}

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// A misspelt level would parse as a target name and silence the daemon: accept a level, or
/// comma-separated `target=level` directives whose levels are real.
fn check_log_level(filter: &str) -> Result<(), ConfigError> {
    let is_level = |l: &str| LEVELS.contains(&l.trim().to_ascii_lowercase().as_str());
    let ok = !filter.trim().is_empty()
        && filter.split(',').all(|d| match d.rsplit_once('=') {
            Some((target, level)) => !target.trim().is_empty() && is_level(level),
            None => is_level(d),
        });
    if ok {
        return Ok(());
    }
    Err(invalid(format!(
        "log_level {filter:?} is not a log level: use error, warn, info, debug or trace \
         (or target=level directives, e.g. tmemd=debug)"
    )))
}

/// The host's MemAvailable in bytes, if /proc/meminfo says.
fn host_available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    meminfo_available(&text)
}

fn meminfo_available(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Bytes as "N MiB" / "N.N GiB", for messages.
fn human(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

fn default_workers() -> u32 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    cpus.clamp(1, 4) as u32
}

fn invalid(msg: String) -> ConfigError {
    ConfigError::Invalid(msg)
}

fn check_range(name: &str, v: u64, lo: u64, hi: u64) -> Result<(), ConfigError> {
    if v < lo || v > hi {
        return Err(invalid(format!(
            "{name} = {v} is out of range: it must be between {lo} and {hi}"
        )));
    }
    Ok(())
}

/// Byte sizes: the one parser `tmem` uses too, so `64MiB` means the same to both.
pub use tmem_control::parse_size;

/// A group given by id or name.
fn group_id(g: &str) -> Result<u32, ConfigError> {
    if let Ok(gid) = g.trim().parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(g.trim()) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        Ok(None) => Err(invalid(format!(
            "control_socket_group {g:?} is not a group on this host"
        ))),
        Err(e) => Err(invalid(format!(
            "control_socket_group {g:?}: cannot look the group up: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn flags_override_file_and_defaults_apply() {
        let args = Args {
            mem_limit: Some("1G".into()),
            ..Args::default()
        };
        let file = FileConfig {
            mem_limit: Some("2G".into()),
            workers: Some(3),
            ..FileConfig::default()
        };
        let c = Config::merge(args, file).unwrap();
        assert_eq!(c.store.mem_limit_bytes, 1 << 30);
        assert_eq!(c.workers, 3);
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.poll, Duration::from_micros(50));
    }

    #[test]
    fn the_compression_codec_and_threshold() {
        let c = Config::merge(Args::default(), FileConfig::default()).unwrap();
        assert_eq!(c.compression, tmem_store::Compression::Lz4);
        assert_eq!(c.compress_max_bytes, 3072);
        let f: FileConfig =
            toml::from_str("compression = \"zstd\"\ncompress_max_bytes = 2048\n").unwrap();
        let c = Config::merge(Args::default(), f).unwrap();
        assert_eq!(c.compression, tmem_store::Compression::Zstd);
        assert_eq!(c.compress_max_bytes, 2048);
        for bad in [
            "compression = \"gzip\"",
            "compression = \"off\"",
            "compress_max_bytes = 5000",
        ] {
            let f: FileConfig = toml::from_str(bad).unwrap();
            let e = Config::merge(Args::default(), f).unwrap_err().to_string();
            assert!(e.contains("compress"), "{bad}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn out_of_range_values_are_refused_with_their_name() {
        let args = Args {
            workers: Some(0),
            ..Args::default()
        };
        let e = Config::merge(args, FileConfig::default()).unwrap_err();
        assert!(e.to_string().contains("workers = 0"), "{e}");
        let args = Args {
            mem_limit: Some("100".into()),
            ..Args::default()
        };
        assert!(Config::merge(args, FileConfig::default()).is_err());
    }

    #[test]
    fn read_only_control_peers_and_the_socket_group() {
        let f: FileConfig = toml::from_str(
            "control_readonly_uids = [65534]\ncontrol_readonly_gids = [4242]\n\
             control_socket_group = \"0\"\n",
        )
        .unwrap();
        let c = Config::merge(Args::default(), f).unwrap();
        assert_eq!(c.control_readonly_uids, vec![65534]);
        assert_eq!(c.control_readonly_gids, vec![4242]);
        assert_eq!(c.control_socket_gid, Some(0));
        let f: FileConfig = toml::from_str("control_socket_group = \"root\"\n").unwrap();
        assert_eq!(
            Config::merge(Args::default(), f)
                .unwrap()
                .control_socket_gid,
            Some(0)
        );
        let f: FileConfig =
            toml::from_str("control_socket_group = \"no-such-group-here\"\n").unwrap();
        let e = Config::merge(Args::default(), f).unwrap_err().to_string();
        assert!(e.contains("is not a group on this host"), "{e}");
        let c = Config::merge(Args::default(), FileConfig::default()).unwrap();
        assert!(c.control_readonly_uids.is_empty() && c.control_socket_gid.is_none());
    }

    #[test]
    fn xen_switches() {
        let c = Config::merge(Args::default(), FileConfig::default()).unwrap();
        assert!(c.xen);
        assert_eq!(c.xen_domains, None);
        let args = Args::try_parse_from(["tmemd", "--no-xen", "--xen-domains", "3,web"]).unwrap();
        let c = Config::merge(args, FileConfig::default()).unwrap();
        assert!(!c.xen);
        assert_eq!(
            c.xen_domains,
            Some(vec!["3".to_string(), "web".to_string()])
        );
        let f: FileConfig = toml::from_str("xen = false\nxen_domains = [\"1\", \"db\"]\n").unwrap();
        let c = Config::merge(Args::default(), f).unwrap();
        assert!(!c.xen);
        assert_eq!(c.xen_domains.unwrap().len(), 2);
        let f: FileConfig = toml::from_str("xen_domains = [\"\"]\n").unwrap();
        assert!(Config::merge(Args::default(), f).is_err());
    }

    #[test]
    fn misspelt_log_levels_are_refused() {
        for good in [
            "info",
            "DEBUG",
            "warn",
            "tmemd=debug",
            "info,tmemd=trace",
            "off",
        ] {
            let args = Args {
                log_level: Some(good.into()),
                ..Args::default()
            };
            assert!(Config::merge(args, FileConfig::default()).is_ok(), "{good}");
        }
        for bad in ["infoo", "", "tmemd=loud", "verbose", "=debug"] {
            let args = Args {
                log_level: Some(bad.into()),
                ..Args::default()
            };
            let e = Config::merge(args, FileConfig::default()).unwrap_err();
            assert!(e.to_string().contains("is not a log level"), "{bad}: {e}");
        }
    }

    #[test]
    fn toml_type_errors_name_the_key_and_line() {
        let text = "mem_limit = \"1G\"\nworkers = \"2\"\n";
        let e = toml::from_str::<FileConfig>(text).unwrap_err();
        let m = toml_message(text, &e);
        assert!(m.starts_with("line 2, key `workers`:"), "{m}");
        assert!(!m.contains('\n'), "{m}");
    }

    #[test]
    fn mem_limit_above_available_memory_needs_overcommit() {
        let args = Args {
            mem_limit: Some("4G".into()),
            ..Args::default()
        };
        let c = Config::merge(args, FileConfig::default()).unwrap();
        let e = c.check_host_memory(1 << 30).unwrap_err();
        assert!(e.to_string().contains("--allow-overcommit"), "{e}");
        assert!(c.check_host_memory(8 << 30).is_ok());
        let args =
            Args::try_parse_from(["tmemd", "--mem-limit", "4G", "--allow-overcommit"]).unwrap();
        let c = Config::merge(args, FileConfig::default()).unwrap();
        assert!(c.check_host_memory(1 << 30).is_ok());
        assert_eq!(
            meminfo_available("MemTotal: 10 kB\nMemAvailable:  2048 kB\n"),
            Some(2 << 20)
        );
    }

    #[test]
    fn page_memory_choices() {
        let c = Config::merge(Args::default(), FileConfig::default()).unwrap();
        assert!(c.durable);
        assert_eq!(c.page_file, None);
        let args =
            Args::try_parse_from(["tmemd", "--page-file", "/dev/shm/p", "--no-durable"]).unwrap();
        let f: FileConfig = toml::from_str("page_file = \"/run/x/pages\"\n").unwrap();
        let c = Config::merge(args, f).unwrap();
        assert!(!c.durable);
        assert_eq!(c.page_file, Some(PathBuf::from("/dev/shm/p")));
        let f: FileConfig = toml::from_str("durable = false\n").unwrap();
        assert!(!Config::merge(Args::default(), f).unwrap().durable);
        let f: FileConfig = toml::from_str("page_file = \"/run/\"\n").unwrap();
        let e = Config::merge(Args::default(), f).unwrap_err();
        assert!(e.to_string().contains("must name a file"), "{e}");
    }

    #[test]
    fn guests_declared_in_the_file_become_the_settings_baseline() {
        let text = r#"
shared_auth_required = false
[[guest]]
domid = 3
weight = 2
cap_pages = 1000
frozen = false
shared_auth = ["6f1c2a7e-93b4-4d2e-8a11-0c5f3e9d7b21"]
[[guest]]
uid = 1000
label = 7
compress = true
"#;
        let f: FileConfig = toml::from_str(text).unwrap();
        let c = Config::merge(Args::default(), f).unwrap();
        assert_eq!(c.settings.shared_auth_required, Some(false));
        let d3 = &c.settings.clients[&Who(Identity::Xen { domid: 3 })];
        assert_eq!(
            (d3.weight, d3.cap_pages, d3.frozen),
            (Some(2), Some(1000), Some(false))
        );
        assert_eq!(d3.shared_auth.as_ref().map(Vec::len), Some(1));
        let l = &c.settings.clients[&Who(Identity::Local {
            uid: 1000,
            label: 7,
        })];
        assert_eq!(l.compress, Some(true));
    }

    #[test]
    fn bad_guest_tables_are_refused_with_what_is_wrong() {
        for (text, want) in [
            ("[[guest]]\nweight = 2\n", "either a Xen domain"),
            ("[[guest]]\ndomid = 1\nuid = 0\nlabel = 1\n", "not both"),
            ("[[guest]]\nuid = 0\n", "either a Xen domain"),
            (
                "[[guest]]\ndomid = 1\nshared_auth = [\"nope\"]\n",
                "bad uuid 'nope'",
            ),
            (
                "[[guest]]\ndomid = 1\n[[guest]]\ndomid = 1\n",
                "declared twice",
            ),
        ] {
            let f: FileConfig = toml::from_str(text).unwrap();
            let e = Config::merge(Args::default(), f).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
        let e = toml::from_str::<FileConfig>("[[guest]]\ndomid = 1\nwieght = 2\n").unwrap_err();
        assert!(e.message().contains("wieght"), "{}", e.message());
    }

    #[test]
    fn the_example_config_is_valid_and_so_are_its_commented_settings() {
        let text = include_str!("../../../xen-config/tmemd.toml");
        let f: FileConfig = toml::from_str(text).unwrap();
        Config::merge(Args::default(), f).unwrap();
        // The commented-out page memory and [[guest]] examples, switched on.
        let on: String = text
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest)
                    if rest.starts_with("[[guest]]")
                        || rest.split_once(" = ").is_some_and(|(k, _)| {
                            [
                                "page_file",
                                "durable",
                                "shared_auth_required",
                                "domid",
                                "uid",
                                "label",
                                "weight",
                                "cap_pages",
                                "frozen",
                                "compress",
                                "shared_auth",
                            ]
                            .contains(&k.trim())
                        }) =>
                {
                    rest
                }
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let f: FileConfig = toml::from_str(&on).unwrap();
        let c = Config::merge(Args::default(), f).unwrap();
        assert_eq!(c.settings.clients.len(), 2, "{on}");
        assert_eq!(c.page_file, Some(PathBuf::from(DEFAULT_PAGE_FILE)));
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let e = toml::from_str::<FileConfig>("mem_limt = \"1G\"").unwrap_err();
        assert!(e.message().contains("mem_limt"), "{}", e.message());
        let f: FileConfig = toml::from_str("mem_limit = \"1G\"\nworkers = 2\n").unwrap();
        assert_eq!(f.workers, Some(2));
    }
}
