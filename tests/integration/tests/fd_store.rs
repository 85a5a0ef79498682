//! The systemd path without systemd, and settings that survive a restart.
//!
//! A small harness plays systemd: it owns the notify socket (`NOTIFY_SOCKET`), takes the
//! `FDSTORE=1` messages with their fds (`SCM_RIGHTS`) and `READY=1`, kills tmemd with SIGKILL
//! and starts it again with the stored fds at 3, 4, ... (`LISTEN_FDS`, `LISTEN_FDNAMES`,
//! no `LISTEN_PID`), as systemd does for a unit with `FileDescriptorStoreMax=`.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use tmem_abi::{Page, PAGE_SIZE};
use tmem_front::{
    Cleancache, Client, ClientConfig, FrontError, Frontswap, LoadOutcome, LocalTransport,
};
use tmem_tests::{bin, wait_for, Daemon, Launch, TempDir, Value};

const T: Duration = Duration::from_secs(10);
const UUID_TEXT: &str = "6f1c2a7e-93b4-4d2e-8a11-0c5f3e9d7b21";

/// One notification, with the fds it carried.
#[derive(Debug)]
struct Notification {
    text: String,
    fds: Vec<OwnedFd>,
}

impl Notification {
    fn field(&self, key: &str) -> Option<&str> {
        self.text
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
    }
}

/// systemd's side of the notify socket, and its fd store.
struct FakeSystemd {
    socket: UnixDatagram,
    path: PathBuf,
    /// The fd store: name and fd, in the order they arrived.
    store: Vec<(String, OwnedFd)>,
}

impl FakeSystemd {
    fn new(dir: &TempDir) -> FakeSystemd {
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).expect("bind notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        FakeSystemd {
            socket,
            path,
            store: Vec::new(),
        }
    }

    fn env(&self) -> (String, String) {
        ("NOTIFY_SOCKET".into(), self.path.display().to_string())
    }

    fn recv(&self) -> Option<Notification> {
        let mut buf = [0u8; 4096];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([RawFd; 8]);
        let msg = recvmsg::<()>(
            self.socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .ok()?;
        let mut fds = Vec::new();
        for c in msg.cmsgs().expect("control messages") {
            if let ControlMessageOwned::ScmRights(v) = c {
                // SAFETY: the kernel just installed these fds for us; nothing else owns them.
                fds.extend(v.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        let n = msg.bytes;
        Some(Notification {
            text: String::from_utf8_lossy(&buf[..n]).into_owned(),
            fds,
        })
    }

    /// Every notification up to READY=1; `FDSTORE=1` fds go to the store as systemd keeps
    /// them. Panics with the daemon's log if READY does not come.
    /// tmemd with `ARGS`: under this fake systemd (page memory in its fd store) and ready,
    /// or plainly (page memory in a file).
    fn start_daemon(&mut self, dir: &TempDir, via_fd_store: bool) -> Daemon {
        if via_fd_store {
            let d = self.start(dir, ARGS);
            self.until_ready(&d);
            d
        } else {
            Daemon::start(dir, ARGS)
        }
    }

    fn until_ready(&mut self, daemon: &Daemon) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut texts = Vec::new();
        loop {
            assert!(
                Instant::now() < deadline,
                "no READY=1; got {texts:?}\nlog:\n{}",
                daemon.log_text()
            );
            let Some(mut n) = self.recv() else { continue };
            if n.field("FDSTORE") == Some("1") {
                let name = n.field("FDNAME").unwrap_or("stored").to_string();
                for fd in std::mem::take(&mut n.fds) {
                    self.store.push((name.clone(), fd));
                }
            }
            let ready = n.field("READY") == Some("1");
            texts.push(n.text);
            if ready {
                return texts;
            }
        }
    }

    /// Start tmemd again as systemd would: the stored fds at 3.., named, and the notify socket.
    fn start(&self, dir: &TempDir, extra: &[&str]) -> Daemon {
        let mut fds = Vec::new();
        let mut names = Vec::new();
        for (name, fd) in &self.store {
            fds.push(fd.try_clone().expect("dup a stored fd"));
            names.push(name.as_str());
        }
        let mut env = vec![self.env()];
        if !fds.is_empty() {
            env.push(("LISTEN_FDS".into(), fds.len().to_string()));
            env.push(("LISTEN_FDNAMES".into(), names.join(":")));
        }
        Daemon::start_with(
            dir,
            extra,
            Launch {
                env,
                fds,
                own_page_memory: true,
            },
        )
    }

    fn stored_names(&self) -> Vec<&str> {
        self.store.iter().map(|(n, _)| n.as_str()).collect()
    }
}

const ARGS: &[&str] = &[
    "--no-xen",
    "--mem-limit",
    "16M",
    "--reattach-grace-secs",
    "30",
];

fn kill9(d: &mut Daemon) {
    d.signal(Signal::SIGKILL);
    d.wait(T);
}

fn page_memory(status: &Value) -> &Value {
    &status["page_memory"]
}

/// Run `tmem --socket <control> args...`; it must succeed.
fn tmem(control: &Path, args: &[&str]) -> String {
    let out: Output = Command::new(bin("tmem"))
        .arg("--socket")
        .arg(control)
        .args(args)
        .env_remove("TMEM_CONTROL_SOCKET")
        .stdin(Stdio::null())
        .output()
        .expect("run tmem");
    assert!(
        out.status.success(),
        "tmem {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn uid() -> u32 {
    nix::unistd::getuid().as_raw()
}

/// A local guest with this label (a fixed instance, so a restarted tmemd sees it come back).
fn client(dir: &TempDir, label: u32) -> Arc<Client> {
    let t = LocalTransport::new(dir.socket(), label, 0x5000 + u64::from(label), "fd-store");
    let c = Arc::new(Client::new(
        Box::new(t),
        ClientConfig {
            backoff_max: Duration::from_millis(100),
            ..ClientConfig::default()
        },
    ));
    assert!(c.wait_mapped(T), "guest {label} connects");
    c
}

/// The stats entry of local client `label`, once it is there.
fn client_stats(d: &Daemon, label: u32) -> Value {
    wait_for(T, "the client in tmem list", || {
        d.stats()["clients"]
            .as_array()?
            .iter()
            .find(|c| c["local_uid"] == uid() && c["domid"] == label)
            .cloned()
    })
}

fn page_for(offset: u64) -> Page {
    let mut p = [0u8; PAGE_SIZE];
    for (i, chunk) in p.chunks_mut(8).enumerate() {
        let v = offset.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i as u64) << 3 ^ 0xD1;
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    p
}

#[test]
fn the_page_memfd_goes_to_the_fd_store_and_is_used_again_after_sigkill() {
    let dir = TempDir::new("fdstore");
    let mut systemd = FakeSystemd::new(&dir);
    let mut d = systemd.start(&dir, ARGS);
    let texts = systemd.until_ready(&d);
    // Both memfds were stored before READY=1.
    assert_eq!(
        systemd.stored_names(),
        ["tmemd-pages", "tmemd-settings"],
        "{texts:?}"
    );
    assert!(texts.last().unwrap().starts_with("READY=1"), "{texts:?}");
    let st = d.status();
    let pm = page_memory(&st);
    assert_eq!(pm["origin"], "fd_store", "{st}");
    assert_eq!(pm["durable"], true, "{st}");
    assert_eq!(pm["inherited"], false, "{st}");
    assert_eq!(pm["recovery"]["formatted"], true, "{st}");
    let text = tmem(&d.control, &["status"]);
    assert!(
        text.contains("page memory: memfd in systemd's fd store (new at this start)"),
        "{text}"
    );

    kill9(&mut d);
    let mut d = systemd.start(&dir, ARGS);
    let texts = systemd.until_ready(&d);
    // Nothing new is stored: tmemd uses what it was handed.
    assert_eq!(
        systemd.stored_names(),
        ["tmemd-pages", "tmemd-settings"],
        "{texts:?}"
    );
    let st = d.status();
    let pm = page_memory(&st);
    assert_eq!(pm["origin"], "fd_store", "{st}");
    assert_eq!(pm["inherited"], true, "{st}");
    let text = tmem(&d.control, &["status"]);
    assert!(
        text.contains("memfd in systemd's fd store (handed back at this start)"),
        "{text}"
    );
    assert!(
        d.log_text().contains("inherited"),
        "the log says where page memory is:\n{}",
        d.log_text()
    );
    d.signal(Signal::SIGTERM);
    assert!(d.wait(T).success());
}

/// Needs the durable store (tmem-store's `open_durable`): with heap frames behind it, the
/// pages are gone after the kill and the guest library reports them lost.
#[test]
fn persistent_pages_survive_sigkill_through_the_fd_store() {
    pages_survive_sigkill(true);
}

/// The same with the page file at a path (no systemd).
#[test]
fn persistent_pages_survive_sigkill_in_a_page_file() {
    pages_survive_sigkill(false);
}

fn pages_survive_sigkill(via_fd_store: bool) {
    let dir = TempDir::new("fdpages");
    let mut systemd = FakeSystemd::new(&dir);
    let mut d = systemd.start_daemon(&dir, via_fd_store);
    let guest = client(&dir, 11);
    let swap = Frontswap::new(guest.clone());
    swap.init(0).expect("swap pool");
    const PAGES: u64 = 512;
    for off in 0..PAGES {
        assert!(swap.store(0, off, &page_for(off)), "store {off}");
    }
    // A page overwritten and one invalidated: after the restart, the new bytes and a miss.
    assert!(swap.store(0, 7, &page_for(1_000_007)));
    swap.invalidate_page(0, 9);

    kill9(&mut d);
    assert!(guest.wait_disconnected(T), "the guest sees tmemd go");
    let d = systemd.start_daemon(&dir, via_fd_store);
    assert!(guest.wait_mapped(T), "the guest reattaches");
    let st = d.status();
    let want_origin = if via_fd_store { "fd_store" } else { "path" };
    assert_eq!(page_memory(&st)["origin"], want_origin, "{st}");

    let mut got = [0u8; PAGE_SIZE];
    let mut wrong = Vec::new();
    for off in 0..PAGES {
        let want = match off {
            7 => Some(page_for(1_000_007)),
            9 => None,
            _ => Some(page_for(off)),
        };
        let out = swap.load(0, off, &mut got);
        match (want, out) {
            (Some(w), LoadOutcome::Loaded) if got == w => {}
            (None, LoadOutcome::NotStored) => {}
            (w, out) => wrong.push((off, w.is_some(), out)),
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {PAGES} pages wrong after the restart (offset, was stored, outcome), first: \
         {:?}; recovery: {}",
        wrong.len(),
        &wrong[..wrong.len().min(5)],
        page_memory(&st)["recovery"]
    );
    assert_eq!(swap.lost(), None, "no loss reported");
    let rec = &page_memory(&st)["recovery"];
    assert!(rec["pages"].as_u64().unwrap() >= PAGES - 1, "{rec}");
}

/// Weight, cap, frozen state and shared-pool authorisations set with `tmem` are back after
/// kill -9, for the page file at a path (`<page_file>.settings.json`) and for the fd store
/// (the settings memfd).
#[test]
fn settings_set_with_tmem_survive_sigkill() {
    for via_fd_store in [false, true] {
        let dir = TempDir::new("settings");
        let mut systemd = FakeSystemd::new(&dir);
        let mut d = systemd.start_daemon(&dir, via_fd_store);
        let g = client(&dir, 5);
        let who = format!("local:{}:5", uid());
        let ally = format!("local:{}:1", uid());
        tmem(
            &d.control,
            &["set", &who, "-w", "7", "-c", "1000", "-p", "1"],
        );
        tmem(&d.control, &["freeze", &who]);
        tmem(
            &d.control,
            &["shared-auth", &ally, "-u", UUID_TEXT, "-A", "1"],
        );
        let before = client_stats(&d, 5);
        assert_eq!(before["weight"], 7, "{before}");

        kill9(&mut d);
        assert!(g.wait_disconnected(T));
        let d = systemd.start_daemon(&dir, via_fd_store);
        assert!(g.wait_mapped(T), "guest 5 comes back");
        let after = client_stats(&d, 5);
        for (k, v) in [
            ("weight", Value::from(7)),
            ("cap_pages", Value::from(1000)),
            ("frozen", Value::from(true)),
            ("compress", Value::from(true)),
        ] {
            assert_eq!(
                after[k], v,
                "{k} after restart (fd store: {via_fd_store}): {after}"
            );
        }
        let list = tmem(&d.control, &["list"]);
        assert!(list.contains(&who), "{list}");
        // The authorisation is back: guest 1 joins the shared pool, guest 2 is refused.
        let raw = tmem_front::parse_uuid(UUID_TEXT).unwrap();
        let one = Cleancache::new(client(&dir, 1));
        let two = Cleancache::new(client(&dir, 2));
        one.init_shared_fs(raw).expect("the authorised guest joins");
        match two.init_shared_fs(raw) {
            Err(FrontError::Backend(tmem_abi::TmemError::NotAuthorised)) => {}
            other => panic!("guest 2 must be refused, got {other:?}"),
        }
        let pm = page_memory(&d.status()).clone();
        let kept = pm["settings"].as_str().unwrap().to_string();
        if via_fd_store {
            assert!(kept.contains("tmemd-settings"), "{pm}");
        } else {
            assert!(kept.ends_with("pages.settings.json"), "{pm}");
            let text = std::fs::read_to_string(&kept).unwrap();
            assert!(text.contains(&who) && text.contains(UUID_TEXT), "{text}");
        }
    }
}

/// `[[guest]]` tables are the baseline: applied when the guest attaches; a change with `tmem`
/// wins over them, also after a restart; what was not changed keeps the file's value.
#[test]
fn settings_declared_in_the_config_apply_and_tmem_changes_win() {
    let dir = TempDir::new("declared");
    let toml = dir.path().join("tmemd.toml");
    std::fs::write(
        &toml,
        format!(
            "[[guest]]\nuid = {uid}\nlabel = 4\nweight = 3\ncap_pages = 500\nfrozen = true\n\
             shared_auth = [\"{UUID_TEXT}\"]\n",
            uid = uid()
        ),
    )
    .unwrap();
    let mut args = ARGS.to_vec();
    let toml_s = toml.display().to_string();
    args.extend(["-c", &toml_s]);
    let mut d = Daemon::start(&dir, &args);
    let raw = tmem_front::parse_uuid(UUID_TEXT).unwrap();
    let g = Cleancache::new(client(&dir, 4));
    g.init_shared_fs(raw)
        .expect("declared authorisation lets guest 4 join");
    let c = client_stats(&d, 4);
    assert_eq!(
        (&c["weight"], &c["cap_pages"], &c["frozen"]),
        (&Value::from(3), &Value::from(500), &Value::from(true)),
        "{c}"
    );

    let who = format!("local:{}:4", uid());
    tmem(&d.control, &["set", &who, "-w", "9"]);
    tmem(&d.control, &["thaw", &who]);
    kill9(&mut d);
    assert!(g.client().wait_disconnected(T));
    let d = Daemon::start(&dir, &args);
    assert!(g.client().wait_mapped(T));
    let c = client_stats(&d, 4);
    assert_eq!(c["weight"], 9, "the change wins: {c}");
    assert_eq!(c["frozen"], false, "the change wins: {c}");
    assert_eq!(c["cap_pages"], 500, "the file's value stays: {c}");
}

/// Page memory that cannot be used stops tmemd at once, with one line and exit status 3.
#[test]
fn unusable_page_memory_is_refused_with_exit_status_3() {
    let dir = TempDir::new("badpages");
    // A file where the page file's directory should be.
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"x").unwrap();
    let out = Command::new(bin("tmemd"))
        .args(["--no-xen", "--mem-limit", "16M", "--page-file"])
        .arg(blocker.join("pages"))
        .arg("--socket")
        .arg(dir.socket())
        .arg("--control-socket")
        .arg(dir.control())
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .output()
        .expect("run tmemd");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.starts_with("tmemd: cannot open the page file") && last.contains("not-a-dir"),
        "{err}"
    );

    // A page file larger than the free space of its file system.
    let pages = dir.page_file();
    let st = nix::sys::statvfs::statvfs(pages.parent().unwrap()).unwrap();
    let free_mib = (st.blocks_available() * st.fragment_size()) >> 20;
    let too_big = format!("{}M", free_mib * 2 + 64);
    let out = Command::new(bin("tmemd"))
        .args(["--no-xen", "--allow-overcommit", "--mem-limit", &too_big])
        .arg("--page-file")
        .arg(&pages)
        .arg("--socket")
        .arg(dir.socket())
        .arg("--control-socket")
        .arg(dir.control())
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .output()
        .expect("run tmemd");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.contains("needs") && last.contains("free") && last.contains("lower mem_limit"),
        "{err}"
    );
    assert_eq!(std::fs::metadata(&pages).map(|m| m.len()).unwrap_or(0), 0);
}
