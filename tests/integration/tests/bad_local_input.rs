//! Bad input from the local administrator gets a one-line error that names what to fix and a
//! non-zero exit, never a panic, a silent daemon or damage (a deleted file, a stray directory).
//! Each case runs the real binaries.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tmem_tests::{bin, wait_for, Daemon, TempDir};

/// Run tmemd to completion (it must refuse to start) and return its output.
fn tmemd_refuses(args: &[&str]) -> Output {
    let mut child = Command::new(bin("tmemd"))
        .arg("--no-xen")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tmemd");
    let started = Instant::now();
    let done = wait_for(Duration::from_secs(30), "tmemd to refuse", || {
        match child.try_wait().expect("try_wait") {
            Some(_) => Some(true),
            None if started.elapsed() > Duration::from_secs(20) => Some(false),
            None => None,
        }
    });
    if !done {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("tmemd output");
    assert!(
        done,
        "tmemd started instead of refusing {args:?}; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The single stderr line of a refusal, checked for a non-zero exit.
fn one_line_error(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "exit status {}: {err}", out.status);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    err
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn control_socket_on_a_regular_file_leaves_the_file_alone() {
    let dir = TempDir::new("regfile");
    let file = dir.path().join("precious.txt");
    std::fs::write(&file, b"do not delete").unwrap();
    let out = tmemd_refuses(&["--socket", s(&dir.socket()), "--control-socket", s(&file)]);
    let err = one_line_error(&out);
    assert!(
        err.contains("is not a socket") && err.contains("--control-socket"),
        "{err}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"do not delete");
}

#[test]
fn missing_socket_directories_are_not_created() {
    let dir = TempDir::new("nodir");
    let missing = dir.path().join("no").join("such");
    let out = tmemd_refuses(&[
        "--socket",
        s(&missing.join("tmemd.sock")),
        "--control-socket",
        s(&dir.control()),
    ]);
    let err = one_line_error(&out);
    assert!(
        err.contains("does not exist") && err.contains("--socket"),
        "{err}"
    );
    assert!(!dir.path().join("no").exists(), "a directory was created");
}

#[test]
fn a_socket_path_too_long_says_so() {
    let dir = TempDir::new("long");
    let long = dir.path().join(format!("{}.sock", "s".repeat(110)));
    let out = tmemd_refuses(&["--socket", s(&long), "--control-socket", s(&dir.control())]);
    let err = one_line_error(&out);
    assert!(err.contains("at most 107"), "{err}");
}

#[test]
fn misspelt_log_level_and_toml_type_errors_name_what_to_fix() {
    let dir = TempDir::new("cfg");
    let (sock, ctl) = (dir.socket(), dir.control());
    let base = ["--socket", s(&sock), "--control-socket", s(&ctl)];
    let mut args = base.to_vec();
    args.extend(["--log-level", "infoo"]);
    let err = one_line_error(&tmemd_refuses(&args));
    assert!(err.contains("\"infoo\" is not a log level"), "{err}");

    let toml = dir.path().join("tmemd.toml");
    std::fs::write(&toml, "mem_limit = \"64M\"\nworkers = \"two\"\n").unwrap();
    let mut args = base.to_vec();
    args.extend(["-c", s(&toml)]);
    let err = one_line_error(&tmemd_refuses(&args));
    assert!(err.contains("line 2, key `workers`"), "{err}");

    // clap's usage errors come whole: the argument, why, and the usage line.
    let mut args = base.to_vec();
    args.extend(["--workers", "two"]);
    let out = tmemd_refuses(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("invalid value 'two' for '--workers <N>'") && err.contains("try '--help'"),
        "{err}"
    );
}

fn mem_available() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

#[test]
fn mem_limit_above_host_memory_is_refused_unless_overcommit_is_allowed() {
    let dir = TempDir::new("mem");
    let too_much = format!("{}M", (mem_available() >> 20) * 2 + 1024);
    let (sock, ctl) = (dir.socket(), dir.control());
    let base = ["--socket", s(&sock), "--control-socket", s(&ctl)];
    let mut args = base.to_vec();
    args.extend(["--mem-limit", &too_much]);
    let err = one_line_error(&tmemd_refuses(&args));
    assert!(
        err.contains("more than this host has available") && err.contains("--allow-overcommit"),
        "{err}"
    );
    // With the override (and no prefault, so nothing is touched) it starts and serves. Heap
    // page memory: a page file that large would not fit its tmpfs, which is refused anyway.
    let daemon = Daemon::start(
        &dir,
        &[
            "--no-xen",
            "--mem-limit",
            &too_much,
            "--allow-overcommit",
            "--no-prefault",
            "--no-durable",
        ],
    );
    let r = daemon.control(&tmem_control::Op::Status);
    assert!(matches!(r, tmem_control::Reply::Ok(_)), "{r:?}");
}

fn rss_bytes(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

#[test]
fn ready_is_sent_only_once_page_memory_is_in_place() {
    let dir = TempDir::new("ready");
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let limit: u64 = 512 << 20;
    let mut child = Command::new(bin("tmemd"))
        .args(["--no-xen", "--log-level", "info", "--mem-limit", "512M"])
        .arg("--socket")
        .arg(dir.socket())
        .arg("--control-socket")
        .arg(dir.control())
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tmemd");
    let mut buf = [0u8; 256];
    // The page memory's fd-store messages come first; READY once it is faulted in.
    let recv = |buf: &mut [u8]| loop {
        match notify.recv(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => break r.expect("READY within 60 s"),
        }
    };
    // Before READY there may also be a STATUS= alone (tmemd reports its state while the
    // page memory is still being faulted in).
    let mut n = recv(&mut buf);
    while !String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
        n = recv(&mut buf);
    }
    // Read the daemon's resident memory at once: READY must not come before the prefault.
    let rss = rss_bytes(child.id());
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    let _ = child.kill();
    let _ = child.wait();
    assert!(msg.contains("READY=1"), "{msg}");
    assert!(
        rss >= limit * 9 / 10,
        "READY sent with only {} MiB of the {} MiB page memory resident",
        rss >> 20,
        limit >> 20
    );
}

#[test]
fn socket_modes_do_not_follow_the_umask() {
    let dir = TempDir::new("umask");
    let mut child = Command::new(bin("tmemd"));
    child
        .args(["--no-xen", "--mem-limit", "64M", "--no-prefault"])
        .arg("--socket")
        .arg(dir.socket())
        .arg("--control-socket")
        .arg(dir.control())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let open_umask = || {
        // SAFETY: umask cannot fail and only affects the child about to exec.
        let _ = unsafe { libc::umask(0) };
        Ok(())
    };
    // SAFETY: the closure runs between fork and exec and only calls umask, which is
    // async-signal-safe.
    unsafe {
        child.pre_exec(open_umask);
    }
    let mut child = child.spawn().expect("spawn tmemd");
    let control = dir.control();
    wait_for(Duration::from_secs(20), "tmemd control socket", || {
        std::os::unix::net::UnixStream::connect(&control).ok()
    });
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
    let (guest, ctl) = (mode(&dir.socket()), mode(&dir.control()));
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(guest, 0o660, "guest socket mode {guest:o} under umask 000");
    assert_eq!(ctl, 0o600, "control socket mode {ctl:o} under umask 000");
    // The directory is not opened up either.
    let dmode = std::fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(dmode & 0o002, 0, "directory mode {dmode:o}");
}

#[test]
fn tmem_guest_refuses_zero_data_slots_without_panicking() {
    for args in [
        ["--data-slots", "0"],
        ["--ring-pages", "0"],
        ["--window", "0"],
    ] {
        let out = Command::new(bin("tmem-guest"))
            .args(args)
            .args(["--socket", "/nonexistent/tmemd.sock", "--seconds", "1"])
            .output()
            .expect("run tmem-guest");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(err.contains(args[0]), "{args:?}: {err}");
        // clap's whole message: why, and where to read more.
        assert!(
            err.starts_with("error: invalid value '0'"),
            "{args:?}: {err}"
        );
        assert!(err.contains("try '--help'"), "{args:?}: {err}");
    }
}

/// Children of `pid` whose command name is `comm`.
fn children_named(pid: u32, comm: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let name = head.split_once(" (").map_or("", |(_, n)| n);
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|x| x.parse::<u32>().ok());
        if name == comm && ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    // A zombie is as good as gone; only a running process counts.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, r)| !r.starts_with('Z'))
        })
        .unwrap_or(false)
}

#[test]
fn tmem_demo_help_prints_help_and_a_killed_demo_takes_its_tmemd_with_it() {
    let out = Command::new(bin("tmem-demo"))
        .arg("--help")
        .output()
        .expect("run tmem-demo --help");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("Usage: tmem-demo"), "{text}");
    let out = Command::new(bin("tmem-demo"))
        .arg("--bogus")
        .output()
        .expect("run tmem-demo --bogus");
    assert_eq!(out.status.code(), Some(2));

    for sig in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGKILL,
    ] {
        let mut demo = Command::new(bin("tmem-demo"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tmem-demo");
        let pid = demo.id();
        let tmemd = wait_for(Duration::from_secs(60), "the demo to start tmemd", || {
            children_named(pid, "tmemd").first().copied()
        });
        let guests = children_named(pid, "tmem-guest");
        assert!(!guests.is_empty(), "no tmem-guest child");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
        let _ = demo.wait();
        let mut left: Vec<u32> = vec![tmemd];
        left.extend(guests);
        wait_for(
            Duration::from_secs(30),
            "the demo's children to exit after the demo was killed",
            || {
                left.retain(|&p| alive(p));
                left.is_empty().then_some(())
            },
        );
    }
}
