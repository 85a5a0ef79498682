//! Where page memory lives, chosen once at start, and the store opened on it.
//!
//! In this order:
//! 1. an fd named [`FD_PAGES`] handed over by the service manager (`LISTEN_FDS`,
//!    `LISTEN_FDNAMES`): systemd's fd store kept it from the previous tmemd;
//! 2. when no `page_file` is configured and systemd is listening (`NOTIFY_SOCKET`): a new memfd,
//!    handed to systemd's fd store (`FDSTORE=1`, `FDNAME=tmemd-pages`) right after the store
//!    formats it, before `READY=1`;
//! 3. the `page_file` path (default [`crate::config::DEFAULT_PAGE_FILE`]), on a tmpfs.
//!
//! With `durable = false` page memory is the heap and nothing survives tmemd.
//! The settings memfd ([`FD_SETTINGS`]) travels the same way beside the page memfd.

use std::fs::File;
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use tmem_store::{page_file_len, PageFile, PageFileError, Recovery, Store};
use tracing::{info, warn};

use crate::config::Config;
use crate::sdnotify::Notifier;
use crate::settings::{settings_memfd, Backing};

/// The name of the page memfd in systemd's fd store.
pub const FD_PAGES: &str = "tmemd-pages";
/// The name of the settings memfd in systemd's fd store.
pub const FD_SETTINGS: &str = "tmemd-settings";
/// The first fd a service manager passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// Where page memory is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Heap frames: nothing survives tmemd (`durable = false`).
    Heap,
    /// A memfd in systemd's fd store; `inherited`: handed back by it at this start.
    FdStore { inherited: bool },
    /// A file at this path.
    Path(PathBuf),
}

impl Placement {
    /// The short form `tmem status` reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Placement::Heap => "heap",
            Placement::FdStore { .. } => "fd_store",
            Placement::Path(_) => "path",
        }
    }
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Placement::Heap => write!(f, "heap (not durable)"),
            Placement::FdStore { inherited: true } => {
                write!(f, "memfd from systemd's fd store (inherited)")
            }
            Placement::FdStore { inherited: false } => {
                write!(f, "new memfd, handed to systemd's fd store")
            }
            Placement::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

/// The store on its page memory, and what the daemon reports about it.
#[derive(Debug)]
pub struct Opened {
    pub store: Store,
    pub placement: Placement,
    /// `None` for heap memory.
    pub recovery: Option<Recovery>,
    /// Where administrators' settings are kept beside it.
    pub settings: Backing,
}

/// Why page memory could not be set up. Each is fatal: tmemd exits with [`EXIT_PAGE_MEMORY`].
#[derive(Debug, thiserror::Error)]
pub enum PageMemError {
    #[error("cannot create the page file directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the page file {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create a memfd for page memory: {0}")]
    Memfd(#[source] std::io::Error),
    #[error(
        "the page file {path} needs {need} bytes but its file system has {have} free; free \
         space there (e.g. a bigger tmpfs), lower mem_limit, or set page_file elsewhere"
    )]
    NoSpace { path: PathBuf, need: u64, have: u64 },
    #[error("page memory in {place}: {source}")]
    Refused {
        place: String,
        #[source]
        source: PageFileError,
    },
    #[error(
        "cannot hand the page memfd to systemd's fd store: {0}; without it a restart would \
         lose every persistent page (set page_file to use a tmpfs file instead)"
    )]
    FdStore(#[source] std::io::Error),
}

/// The exit status for a [`PageMemError`] (2 is for configuration errors): systemd's unit
/// does not restart on it, since a restart would be refused the same way.
pub const EXIT_PAGE_MEMORY: u8 = 3;

/// Fds handed over by the service manager, by name.
#[derive(Debug, Default)]
pub struct Inherited {
    fds: Vec<(String, OwnedFd)>,
}

impl Inherited {
    /// Take the fds `LISTEN_FDS` announces (if `LISTEN_PID`, when set, is ours), mark them
    /// close-on-exec, and unset `LISTEN_*` so nothing started later sees them. Call while
    /// the process has one thread (it changes the environment).
    pub fn from_env() -> Inherited {
        let var = |k: &str| std::env::var(k).ok();
        let parsed = parse_listen(
            var("LISTEN_PID").as_deref(),
            var("LISTEN_FDS").as_deref(),
            var("LISTEN_FDNAMES").as_deref(),
            std::process::id(),
        );
        for k in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            std::env::remove_var(k);
        }
        let list = match parsed {
            Ok(list) => list,
            Err(why) => {
                warn!("ignoring the fds the service manager passed: {why}");
                return Inherited::default();
            }
        };
        let mut fds = Vec::new();
        for (fd, name) in list {
            // Refuse anything that is not an open fd of ours before taking ownership of it.
            if nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_err() {
                warn!(
                    fd,
                    name, "the service manager announced an fd that is not open"
                );
                continue;
            }
            let _ = nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            );
            // SAFETY: by the LISTEN_FDS protocol fds 3..3+n belong to this process and nothing
            // else in it owns them (they are taken once, here, before any thread starts); the
            // fd was just checked to be open.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            fds.push((name, owned));
        }
        Inherited { fds }
    }

    /// An explicit set (tests).
    pub fn from_fds(fds: Vec<(String, OwnedFd)>) -> Inherited {
        Inherited { fds }
    }

    /// Take the first fd named `name`; later ones of the same name are dropped (closed).
    pub fn take(&mut self, name: &str) -> Option<OwnedFd> {
        let i = self.fds.iter().position(|(n, _)| n == name)?;
        let (_, fd) = self.fds.remove(i);
        let dups = self.fds.iter().filter(|(n, _)| n == name).count();
        if dups > 0 {
            warn!(
                name,
                dups, "more than one fd of this name was passed; using the first"
            );
            self.fds.retain(|(n, _)| n != name);
        }
        Some(fd)
    }

    /// Close what is left, saying what it was.
    pub fn close_rest(&mut self) {
        for (name, _) in self.fds.drain(..) {
            warn!(
                name,
                "closing an fd passed by the service manager that tmemd does not use"
            );
        }
    }
}

/// `(fd, name)` for each fd `LISTEN_FDS` announces; empty when it is not for `our_pid`.
fn parse_listen(
    pid: Option<&str>,
    count: Option<&str>,
    names: Option<&str>,
    our_pid: u32,
) -> Result<Vec<(RawFd, String)>, String> {
    let Some(count) = count else {
        return Ok(Vec::new());
    };
    if let Some(pid) = pid {
        let pid: u32 = pid
            .trim()
            .parse()
            .map_err(|_| format!("LISTEN_PID {pid:?} is not a number"))?;
        if pid != our_pid {
            return Ok(Vec::new());
        }
    }
    let n: i32 = count
        .trim()
        .parse()
        .map_err(|_| format!("LISTEN_FDS {count:?} is not a number"))?;
    if !(0..=4096).contains(&n) {
        return Err(format!("LISTEN_FDS {n} is out of range"));
    }
    let names: Vec<&str> = names.map(|s| s.split(':').collect()).unwrap_or_default();
    Ok((0..n)
        .map(|i| {
            let name = names.get(i as usize).copied().unwrap_or("unknown");
            (LISTEN_FDS_START + i, name.to_string())
        })
        .collect())
}

/// Open the store on the page memory the configuration and the environment call for.
pub fn open(
    config: &Config,
    inherited: &mut Inherited,
    notifier: &Notifier,
) -> Result<Opened, PageMemError> {
    if !config.durable {
        inherited.close_rest();
        info!("page memory: heap frames (durable = false); nothing survives tmemd");
        return Ok(Opened {
            store: Store::new(config.store.clone()),
            placement: Placement::Heap,
            recovery: None,
            settings: Backing::Memory,
        });
    }
    let settings_fd = inherited.take(FD_SETTINGS);
    let (file, placement) = if let Some(fd) = inherited.take(FD_PAGES) {
        if let Some(p) = &config.page_file {
            info!(
                page_file = %p.display(),
                "using the page memfd systemd kept rather than the configured page_file"
            );
        }
        (
            PageFile::from_fd(fd, FD_PAGES),
            Placement::FdStore { inherited: true },
        )
    } else if config.page_file.is_none() && notifier.is_present() {
        let f = PageFile::memfd(FD_PAGES).map_err(PageMemError::Memfd)?;
        (f, Placement::FdStore { inherited: false })
    } else {
        let path = config
            .page_file
            .clone()
            .unwrap_or_else(|| crate::config::DEFAULT_PAGE_FILE.into());
        let f = open_path(&path, page_file_len(&config.store))?;
        (f, Placement::Path(path))
    };
    inherited.close_rest();
    // Kept before the store takes the file, to hand to systemd once the store has it.
    let for_fd_store = match placement {
        Placement::FdStore { inherited: false } => {
            Some(file.try_clone_fd().map_err(PageMemError::FdStore)?)
        }
        _ => None,
    };
    let place = placement.to_string();
    let (store, recovery) = Store::open_durable(config.store.clone(), file).map_err(|source| {
        PageMemError::Refused {
            place: place.clone(),
            source,
        }
    })?;
    // The page memfd first: it is the one that matters.
    if let Some(fd) = for_fd_store {
        hand_to_fd_store(fd, notifier)?;
    }
    let settings = match &placement {
        Placement::Path(p) => Backing::File(settings_path(p)),
        Placement::FdStore { inherited } => settings_backing(settings_fd, *inherited, notifier)?,
        Placement::Heap => Backing::Memory,
    };
    log_recovery(&placement, &recovery);
    Ok(Opened {
        store,
        placement,
        recovery: Some(recovery),
        settings,
    })
}

/// `<page_file>.settings.json`.
pub fn settings_path(page_file: &Path) -> PathBuf {
    let mut s = page_file.as_os_str().to_owned();
    s.push(".settings.json");
    PathBuf::from(s)
}

/// The settings memfd: the one systemd kept, or a new one handed to its fd store.
fn settings_backing(
    kept: Option<OwnedFd>,
    pages_inherited: bool,
    notifier: &Notifier,
) -> Result<Backing, PageMemError> {
    if let Some(fd) = kept {
        return Ok(Backing::Memfd(File::from(fd)));
    }
    if pages_inherited {
        info!("systemd kept no settings memfd; starting a new one");
    }
    let fd = settings_memfd().map_err(PageMemError::Memfd)?;
    let msg = format!("FDSTORE=1\nFDNAME={FD_SETTINGS}");
    // Settings are also in the config file; losing the `tmem` changes is not worth refusing
    // to serve, but it is worth saying.
    match notifier.notify_with_fds(&msg, &[fd.as_fd()]) {
        Ok(true) => {}
        Ok(false) => warn!(
            "no service manager to keep the settings memfd; settings changed with tmem will \
             not survive a restart"
        ),
        Err(e) => warn!(
            "cannot hand the settings memfd to systemd's fd store ({e}); settings changed with \
             tmem will not survive a restart"
        ),
    }
    Ok(Backing::Memfd(File::from(fd)))
}

fn hand_to_fd_store(fd: OwnedFd, notifier: &Notifier) -> Result<(), PageMemError> {
    let msg = format!("FDSTORE=1\nFDNAME={FD_PAGES}");
    notifier
        .notify_with_fds(&msg, &[fd.as_fd()])
        .map_err(PageMemError::FdStore)?;
    info!("page memfd handed to systemd's fd store");
    Ok(())
}

/// Open (or create) the page file at `path`; a new one must fit in its file system.
fn open_path(path: &Path, need: u64) -> Result<PageFile, PageMemError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| PageMemError::Dir {
                    path: dir.to_owned(),
                    source,
                })?;
        }
    }
    let existing = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if existing < need {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if let Ok(st) = nix::sys::statvfs::statvfs(dir) {
            let have = st.blocks_available().saturating_mul(st.fragment_size());
            let grow = need - existing;
            if have < grow {
                return Err(PageMemError::NoSpace {
                    path: path.to_owned(),
                    need,
                    have: have + existing,
                });
            }
        }
    }
    PageFile::open_path(path).map_err(|source| PageMemError::Open {
        path: path.to_owned(),
        source,
    })
}

fn log_recovery(placement: &Placement, r: &Recovery) {
    info!(
        place = %placement,
        formatted = r.formatted,
        format_minor = r.format_minor,
        clients = r.clients,
        pools = r.pools,
        pages = r.pages,
        zero_pages = r.zero_pages,
        same_filled_pages = r.same_filled_pages,
        compressed_pages = r.compressed_pages,
        superseded = r.superseded,
        orphans = r.orphans,
        torn = r.torn,
        nframes = r.nframes,
        geometry_differs = r.geometry_differs,
        scan_ms = r.scan.as_millis() as u64,
        rebuild_ms = r.rebuild.as_millis() as u64,
        "page memory opened"
    );
    if r.geometry_differs {
        warn!(
            nframes = r.nframes,
            "the page file has another size than mem_limit asks for; its own size is used \
             (remove it while tmemd is stopped to resize, losing its pages)"
        );
    }
}

/// What `tmem status` says about page memory.
pub fn status(
    placement: &Placement,
    recovery: Option<&Recovery>,
    settings: &Backing,
) -> tmem_control::PageMemoryStatus {
    tmem_control::PageMemoryStatus {
        origin: placement.kind().to_string(),
        durable: *placement != Placement::Heap,
        inherited: matches!(placement, Placement::FdStore { inherited: true }),
        path: match placement {
            Placement::Path(p) => Some(p.display().to_string()),
            _ => None,
        },
        settings: settings.to_string(),
        recovery: recovery.map(|r| tmem_control::RecoveryStatus {
            formatted: r.formatted,
            clients: r.clients,
            pools: r.pools,
            pages: r.pages,
            zero_pages: r.zero_pages,
            compressed_pages: r.compressed_pages,
            superseded: r.superseded,
            orphans: r.orphans,
            torn: r.torn,
            scan_ms: r.scan.as_millis() as u64,
            rebuild_ms: r.rebuild.as_millis() as u64,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_fds_are_named_and_start_at_three() {
        let v = parse_listen(
            Some("42"),
            Some("2"),
            Some("tmemd-pages:tmemd-settings"),
            42,
        );
        assert_eq!(
            v.unwrap(),
            vec![
                (3, "tmemd-pages".to_string()),
                (4, "tmemd-settings".to_string())
            ]
        );
        // No LISTEN_PID (a harness that could not know the pid): still ours.
        let v = parse_listen(None, Some("1"), None, 42).unwrap();
        assert_eq!(v, vec![(3, "unknown".to_string())]);
    }

    #[test]
    fn listen_fds_for_another_process_are_ignored() {
        assert!(parse_listen(Some("41"), Some("2"), None, 42)
            .unwrap()
            .is_empty());
        assert!(parse_listen(None, None, Some("x"), 42).unwrap().is_empty());
        assert!(parse_listen(Some("x"), Some("1"), None, 42).is_err());
        assert!(parse_listen(None, Some("-1"), None, 42).is_err());
    }

    #[test]
    fn inherited_fds_are_taken_by_name_once() {
        let a = settings_memfd().unwrap();
        let b = settings_memfd().unwrap();
        let c = settings_memfd().unwrap();
        let mut inh = Inherited::from_fds(vec![
            ("tmemd-pages".into(), a),
            ("other".into(), b),
            ("tmemd-pages".into(), c),
        ]);
        assert!(inh.take(FD_PAGES).is_some());
        assert!(inh.take(FD_PAGES).is_none(), "a duplicate is dropped");
        assert!(inh.take("other").is_some());
    }

    #[test]
    fn a_page_file_that_does_not_fit_is_refused_in_one_line() {
        let dir = std::env::temp_dir().join(format!("tmemd-pagemem-{}", std::process::id()));
        let path = dir.join("sub").join("pages");
        let e = open_path(&path, u64::MAX / 2).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("needs") && text.contains("free"), "{text}");
        assert!(!text.contains('\n'));
        let meta = std::fs::metadata(dir.join("sub")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        let f = open_path(&path, 4096).unwrap();
        assert_eq!(f.origin(), &tmem_store::PageFileOrigin::Path(path.clone()));
        assert_eq!(
            settings_path(&path),
            dir.join("sub").join("pages.settings.json")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
