//! Harness for the integration tests: start the real `tmemd`, real `tmem-guest` processes and
//! talk to the real control socket, each test in its own temporary directory.
//!
//! Nothing here replaces a component of ours; it only starts, watches and stops them.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

pub use serde_json::Value;

/// Directory of the built binaries (the profile directory the test executable lives in).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>
    exe.parent()
        .and_then(Path::parent)
        .expect("target profile dir")
        .to_path_buf()
}

static BUILD: Once = Once::new();

/// Path of a workspace binary, building the workspace's binaries once if one is missing.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    if !path.exists() {
        BUILD.call_once(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "--workspace", "--bins"]);
            if bin_dir().ends_with("release") {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("run cargo build");
            assert!(status.success(), "cargo build --bins failed");
        });
    }
    assert!(path.exists(), "binary {} not found", path.display());
    path
}

/// A temporary directory removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
    /// A directory on a tmpfs for page files (/dev/shm when there is one, else `path`):
    /// page memory on a disk would turn every page write into disk I/O.
    pages: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "tmem-it-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let p = std::env::temp_dir().join(&name);
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        let shm = Path::new("/dev/shm").join(&name);
        let _ = std::fs::remove_dir_all(&shm);
        let pages = if std::fs::create_dir(&shm).is_ok() {
            shm
        } else {
            p.clone()
        };
        TempDir { path: p, pages }
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn socket(&self) -> PathBuf {
        self.path.join("tmemd.sock")
    }
    pub fn control(&self) -> PathBuf {
        self.path.join("control.sock")
    }
    /// The page file [`Daemon::start`] gives tmemd.
    pub fn page_file(&self) -> PathBuf {
        self.pages.join("pages")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
        let _ = std::fs::remove_dir_all(&self.pages);
    }
}

/// Wait until `f` returns `Some`, or panic with `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A running tmemd.
#[derive(Debug)]
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
    pub socket: PathBuf,
    pub control: PathBuf,
}

/// What tmemd gets besides its arguments, as a service manager would give it.
#[derive(Debug, Default)]
pub struct Launch {
    /// Environment variables to set (e.g. NOTIFY_SOCKET, LISTEN_FDS, LISTEN_FDNAMES).
    pub env: Vec<(String, String)>,
    /// Fds passed at 3, 4, ... in this order (the caller sets LISTEN_FDS to match).
    pub fds: Vec<OwnedFd>,
    /// Let tmemd choose where page memory lives itself. Otherwise (the default) each test
    /// gets its own page file in its directory, never the host-wide default path.
    pub own_page_memory: bool,
}

impl Daemon {
    /// Start tmemd in `dir` with extra arguments and wait until it is ready (its control
    /// socket accepts).
    pub fn start<S: AsRef<OsStr>>(dir: &TempDir, extra: &[S]) -> Daemon {
        Daemon::start_with(dir, extra, Launch::default())
    }

    /// [`Daemon::start`] with an environment and inherited fds.
    pub fn start_with<S: AsRef<OsStr>>(dir: &TempDir, extra: &[S], launch: Launch) -> Daemon {
        let mut d = Daemon::spawn_on(dir, &dir.socket(), &dir.control(), extra, launch);
        d.wait_ready(Duration::from_secs(10));
        d
    }

    /// Start tmemd in `dir` with extra arguments, without waiting for it.
    pub fn spawn<S: AsRef<OsStr>>(dir: &TempDir, extra: &[S]) -> Daemon {
        Daemon::spawn_on(dir, &dir.socket(), &dir.control(), extra, Launch::default())
    }

    /// Start tmemd in `dir` on the given sockets (other sockets than the directory's own keep
    /// the test's guests away from it), without waiting for it.
    pub fn spawn_on<S: AsRef<OsStr>>(
        dir: &TempDir,
        socket: &Path,
        control: &Path,
        extra: &[S],
        launch: Launch,
    ) -> Daemon {
        let log = dir.path().join(format!(
            "tmemd-{}.log",
            Instant::now().elapsed().as_nanos() ^ u128::from(std::process::id())
        ));
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open daemon log");
        let mut cmd = Command::new(bin("tmemd"));
        cmd.arg("--socket")
            .arg(socket)
            .arg("--control-socket")
            .arg(control)
            .args(["--log-level", "debug"])
            .args(extra)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_FDNAMES")
            .env_remove("LISTEN_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf);
        let chooses = |flag: &str| extra.iter().any(|a| a.as_ref() == flag);
        if !launch.own_page_memory && !chooses("--page-file") && !chooses("--no-durable") {
            cmd.arg("--page-file").arg(dir.page_file());
        }
        for (k, v) in &launch.env {
            cmd.env(k, v);
        }
        let passed = pass_fds(&mut cmd, launch.fds);
        let child = cmd.spawn().expect("spawn tmemd");
        drop(passed);
        Daemon {
            child,
            log,
            socket: socket.to_path_buf(),
            control: control.to_path_buf(),
        }
    }

    /// Wait until the control socket accepts; panics with the log if tmemd exits first.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let control = self.control.clone();
        let child = &mut self.child;
        let log = &self.log;
        wait_for(timeout, "tmemd control socket", || {
            if let Ok(Some(st)) = child.try_wait() {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                panic!(
                    "tmemd exited ({st}) before it was ready; its log ends:\n{}",
                    lines[lines.len().saturating_sub(20)..].join("\n")
                );
            }
            // Serving, not only bound: the control socket is bound before the page memory
            // is opened, so a connect alone can succeed while tmemd is still formatting or
            // recovering its page file.
            try_control_request(&control, &tmem_control::Op::Status)
        });
    }

    /// The reply to `status`, as JSON.
    pub fn status(&self) -> Value {
        match self.control(&tmem_control::Op::Status) {
            tmem_control::Reply::Ok(ok) => serde_json::to_value(&ok).expect("status serialises"),
            other => panic!("status failed: {other:?}"),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
    }

    /// Wait for exit, up to `timeout`; returns the exit status.
    pub fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        wait_for(timeout, "tmemd to exit", || {
            self.child.try_wait().ok().flatten()
        })
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One control request; returns the decoded reply.
    pub fn control(&self, op: &tmem_control::Op) -> tmem_control::Reply {
        control_request(&self.control, op)
    }

    /// Statistics as JSON (the `list` reply's payload).
    pub fn stats(&self) -> Value {
        match self.control(&tmem_control::Op::List {
            target: tmem_control::Target::All,
        }) {
            tmem_control::Reply::Ok(tmem_control::OkReply::Stats(s)) => {
                serde_json::to_value(&*s).expect("stats serialise")
            }
            other => panic!("list failed: {other:?}"),
        }
    }

    /// While process `pid` runs (the caller's child, not reaped yet), poll the statistics
    /// every 250 ms: the most pages tmemd held compressed, and their compressed bytes. A
    /// `tmem-guest bench` destroys its pool when done, so give it `--hold-ms` of a few polls.
    pub fn compression_peak_while(&self, pid: u32) -> (u64, u64) {
        let (mut pages, mut bytes) = (0, 0);
        let deadline = Instant::now() + Duration::from_secs(600);
        while Instant::now() < deadline {
            let z = &self.stats()["global"]["compression"];
            let p = z["pages"].as_u64().unwrap_or(0);
            if p > pages {
                pages = p;
                bytes = z["compressed_bytes"].as_u64().unwrap_or(0);
            }
            let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| !s.contains(") Z "));
            if !alive {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        (pages, bytes)
    }
}

/// A tmemd config file in `dir` that turns lz4 on for this user's guests of `labels` (their
/// `--domid`) and nothing else, with no memory set aside for persistent pools.
pub fn lz4_config(dir: &TempDir, labels: &[u32]) -> PathBuf {
    let uid = nix::unistd::getuid().as_raw();
    let mut text = String::from("compression = \"lz4\"\ndefault_persistent_share_percent = 0\n");
    for l in labels {
        text += &format!("[[guest]]\nuid = {uid}\nlabel = {l}\ncompress = true\n");
    }
    let path = dir.path().join("tmemd.toml");
    std::fs::write(&path, text).expect("write tmemd.toml");
    path
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Have `fds` at 3, 4, ... in the child, as a service manager passes them (`LISTEN_FDS`).
/// Returns the copies the child takes them from: keep them until it is spawned.
fn pass_fds(cmd: &mut Command, fds: Vec<OwnedFd>) -> Vec<OwnedFd> {
    if fds.is_empty() {
        return Vec::new();
    }
    // Moved above anything the child could have at 3.. first, so that placing one cannot
    // overwrite another; close-on-exec, so only the copies at 3.. reach tmemd.
    let high: Vec<RawFd> = fds
        .iter()
        .map(|fd| {
            nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(512))
                .expect("duplicate an fd to pass")
        })
        .collect();
    let closers: Vec<OwnedFd> = high
        .iter()
        // SAFETY: each was just returned by F_DUPFD_CLOEXEC and is owned by nothing else.
        .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    let plan = high.clone();
    let place = move || {
        for (i, &fd) in plan.iter().enumerate() {
            // SAFETY: dup2 on fds this process owns; it is async-signal-safe.
            if unsafe { libc::dup2(fd, 3 + i as RawFd) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the closure runs between fork and exec and only calls dup2, which is
    // async-signal-safe; it allocates nothing (the plan was built before the fork).
    unsafe { cmd.pre_exec(place) };
    drop(fds);
    closers
}

/// Send one request to a control socket and read one reply.
/// [`control_request`], or `None` if tmemd does not answer (yet) within a second.
pub fn try_control_request(path: &Path, op: &tmem_control::Op) -> Option<tmem_control::Reply> {
    let mut s = UnixStream::connect(path).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.write_all(&tmem_control::encode_request(op)).ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    tmem_control::decode_reply(line.trim_end().as_bytes()).ok()
}

pub fn control_request(path: &Path, op: &tmem_control::Op) -> tmem_control::Reply {
    let mut s = UnixStream::connect(path).expect("connect control socket");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&tmem_control::encode_request(op)).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    tmem_control::decode_reply(line.trim_end().as_bytes()).expect("decode reply")
}

/// The number at `path` in a guest's JSON report; panics if it is missing.
pub fn counter(v: &Value, path: &[&str]) -> u64 {
    path.iter()
        .fold(v, |x, p| &x[*p])
        .as_u64()
        .unwrap_or_else(|| panic!("{path:?} missing in {v}"))
}

/// Predicates on a tmem-guest `--json` status line.
pub mod status {
    use super::Value;

    /// The pools the line reports.
    pub fn pools(v: &Value) -> &[Value] {
        v["pools"].as_array().map_or(&[], Vec::as_slice)
    }

    pub fn is_status(v: &Value) -> bool {
        v["type"] == "status"
    }

    /// Connected, and every pool has a real id.
    pub fn all_mapped(v: &Value) -> bool {
        is_status(v)
            && v["connected"] == true
            && !pools(v).is_empty()
            && pools(v).iter().all(|p| p["real_id"].is_u64())
    }

    /// Disconnected, and no pool has a real id.
    pub fn none_mapped(v: &Value) -> bool {
        is_status(v) && v["connected"] == false && pools(v).iter().all(|p| p["real_id"].is_null())
    }

    /// Connected again, and every pool settled: mapped, or refused by the backend.
    pub fn settled(v: &Value) -> bool {
        is_status(v)
            && v["connected"] == true
            && !pools(v).is_empty()
            && pools(v)
                .iter()
                .all(|p| p["real_id"].is_u64() || !p["error"].is_null())
    }

    /// The remap deadline asserted after a restart: the promise is 1 s; a loaded 2-core CI
    /// machine gets slack (override with `TMEM_REMAP_BOUND_MS`).
    pub fn remap_bound() -> std::time::Duration {
        let ms = std::env::var("TMEM_REMAP_BOUND_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3000);
        std::time::Duration::from_millis(ms)
    }
}

/// A running tmem-guest whose `--json` lines are collected.
#[derive(Debug)]
pub struct Guest {
    pub child: Child,
    /// Each JSON line with the instant the harness read it.
    lines: Receiver<(Instant, Value)>,
    /// Every JSON line seen so far.
    pub seen: Arc<Mutex<Vec<Value>>>,
    pub stderr: Arc<Mutex<String>>,
}

impl Guest {
    /// Start tmem-guest with `--socket <dir socket> --json` and the given arguments.
    pub fn start(dir: &TempDir, args: &[&str]) -> Guest {
        let mut child = Command::new(bin("tmem-guest"))
            .arg("--socket")
            .arg(dir.socket())
            .arg("--json")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tmem-guest");
        let stdout = child.stdout.take().expect("stdout");
        let mut stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let at = Instant::now();
                    seen2.lock().unwrap().push(v.clone());
                    let _ = tx.send((at, v));
                }
            }
        });
        let err = Arc::new(Mutex::new(String::new()));
        let err2 = err.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                err2.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Guest {
            child,
            lines: rx,
            seen,
            stderr: err,
        }
    }

    /// Wait for a JSON line satisfying `pred`; panics with the guest's stderr on timeout.
    pub fn wait_line(&self, timeout: Duration, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        match self.wait_line_at(timeout, pred) {
            Ok((_, v)) => v,
            Err(last) => panic!(
                "timed out waiting for guest line: {what}\nlast line: {}\nstderr:\n{}",
                last.map_or("none".to_string(), |v| v.to_string()),
                self.stderr.lock().unwrap()
            ),
        }
    }

    /// Wait for a JSON line satisfying `pred`; returns it with the instant the harness read
    /// it, or on timeout (or exit) the last line read while waiting.
    pub fn wait_line_at(
        &self,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<(Instant, Value), Option<Value>> {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, v)) if pred(&v) => return Ok((at, v)),
                Ok((_, v)) => last = Some(v),
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    return Err(last)
                }
            }
        }
    }

    /// The guest's stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Wait for the guest to exit and return (exit status, stderr).
    pub fn finish(mut self, timeout: Duration) -> (std::process::ExitStatus, String) {
        let st = wait_for(timeout, "tmem-guest to exit", || {
            self.child.try_wait().ok().flatten()
        });
        std::thread::sleep(Duration::from_millis(50));
        let err = self.stderr.lock().unwrap().clone();
        (st, err)
    }

    /// Wait for the guest to exit, and check that it ran clean: exit 0, a final report, no
    /// verification error, no disconnect, no backend error. Returns the final report.
    pub fn finish_clean(self, timeout: Duration) -> Value {
        let seen = self.seen.clone();
        let (st, err) = self.finish(timeout);
        assert!(st.success(), "good guest failed ({st}): {err}");
        let last = seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("good guest output");
        assert_eq!(last["type"], "final", "{last}");
        for path in [
            &["guest", "verification_errors"][..],
            &["counters", "map", "disconnects"],
            &["counters", "map", "backend_errors"],
        ] {
            assert_eq!(counter(&last, path), 0, "{path:?} in {last}");
        }
        last
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig);
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
