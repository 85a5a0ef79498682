//! `tmem-demo`: the lazy-init story, end to end, on the local transport.
//!
//! Two guest processes (`tmem-guest`) mount filesystems and a swap area before any tmemd
//! exists and get fake pool handles; tmemd starts and the handles are remapped to real pools;
//! tmemd is killed under load and the handles revert; it restarts and they are remapped
//! again — while every page the guests get back is checked. Run by `scripts/demo.sh`.
//! It uses the sibling binaries next to its own executable and a private temporary directory.
//! Every process it starts dies with it (also on SIGINT, SIGTERM or SIGKILL of the demo).

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

struct Guest {
    name: &'static str,
    child: Child,
    last: Arc<Mutex<Option<Value>>>,
}

const USAGE: &str = "\
tmem-demo: the lazy-init story of tmem, end to end, on the local transport

Usage: tmem-demo [--help | --version]

Starts two simulated guests before any tmemd exists, starts tmemd, kills it under load and
restarts it, checking every page the guests get back. Takes about 20 seconds. Uses tmemd,
tmem-guest and tmem from the directory tmem-demo is in, and a private temporary directory.
Exit status: 0 every page verified, 1 a check failed, 2 usage error.";

fn sibling(name: &str) -> PathBuf {
    match std::env::current_exe() {
        Ok(exe) => exe.with_file_name(name),
        Err(e) => die(&format!("cannot find my own executable: {e}")),
    }
}

/// Start `cmd` so that it dies with the demo: the kernel sends it SIGTERM when the demo
/// exits in any way (PR_SET_PDEATHSIG), and it does not inherit the demo's blocked signals.
fn spawn_tied(cmd: &mut Command, what: &str) -> Child {
    let demo = nix::unistd::getpid();
    // SAFETY: the closure runs in the child between fork and exec and only makes
    // async-signal-safe system calls (sigprocmask, prctl, getppid, _exit).
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::signal::SigSet::all().thread_unblock()?;
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)?;
            // The demo may have died before prctl: then nobody would signal us.
            if nix::unistd::getppid() != demo {
                libc_exit();
            }
            Ok(())
        });
    }
    cmd.spawn()
        .unwrap_or_else(|e| die(&format!("cannot start {what}: {e}")))
}

fn libc_exit() -> ! {
    // SAFETY: _exit ends the forked child at once, without running the parent's handlers.
    unsafe { nix::libc::_exit(1) }
}

/// SIGINT and SIGTERM end the demo cleanly: the temporary directory is removed and the
/// children, tied by [`spawn_tied`], follow. Must run before any other thread starts.
fn exit_on_signals(dir: PathBuf) {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    if set.thread_block().is_err() {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(sig) = set.wait() {
                eprintln!("tmem-demo: {} received; stopping", sig.as_str());
                let _ = std::fs::remove_dir_all(&dir);
                std::process::exit(128 + sig as i32);
            }
        });
}

/// `--help` and `--version` are answered; anything else on the command line is an error.
fn parse_args() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => {}
        Some("-h" | "--help") => {
            println!("{USAGE}");
            std::process::exit(0);
        }
        Some("-V" | "--version") => {
            println!("tmem-demo {}", env!("CARGO_PKG_VERSION"));
            std::process::exit(0);
        }
        Some(other) => {
            eprintln!(
                "tmem-demo: unexpected argument {other:?}; it takes none (see `tmem-demo --help`)"
            );
            std::process::exit(2);
        }
    }
}

fn start_guest(dir: &Path, name: &'static str, domid: u32, fs: u32, seconds: u32) -> Guest {
    let mut cmd = Command::new(sibling("tmem-guest"));
    cmd.arg("--socket")
        .arg(dir.join("tmemd.sock"))
        .args(["--domid", &domid.to_string(), "--name", name])
        .args(["--filesystems", &fs.to_string(), "--swap"])
        .args(["--seconds", &seconds.to_string()])
        .args([
            "--report-interval",
            "0.1",
            "--backoff-max-ms",
            "200",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = spawn_tied(&mut cmd, "tmem-guest");
    let Some(out) = child.stdout.take() else {
        die("tmem-guest started without its output pipe");
    };
    let last = Arc::new(Mutex::new(None));
    let l2 = last.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v["type"] == "status" || v["type"] == "final" {
                    *l2.lock().unwrap() = Some(v);
                }
            }
        }
    });
    Guest { name, child, last }
}

fn start_tmemd(dir: &Path) -> Child {
    let mut cmd = Command::new(sibling("tmemd"));
    cmd.arg("--socket")
        .arg(dir.join("tmemd.sock"))
        .arg("--control-socket")
        .arg(dir.join("control.sock"))
        .args(["--mem-limit", "128M", "--log-level", "warn"])
        .stderr(Stdio::null());
    let child = spawn_tied(&mut cmd, "tmemd");
    let control = dir.join("control.sock");
    wait(Duration::from_secs(10), || {
        std::os::unix::net::UnixStream::connect(&control).is_ok()
    });
    child
}

fn die(msg: &str) -> ! {
    eprintln!("tmem-demo: {msg}");
    std::process::exit(1)
}

fn wait(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn latest(g: &Guest) -> Value {
    g.last.lock().unwrap().clone().unwrap_or(Value::Null)
}

fn all_mapped(v: &Value) -> bool {
    v["connected"] == true
        && v["pools"]
            .as_array()
            .is_some_and(|p| !p.is_empty() && p.iter().all(|p| p["real_id"].is_u64()))
}

fn none_mapped(v: &Value) -> bool {
    v["connected"] == false
        && v["pools"]
            .as_array()
            .is_some_and(|p| p.iter().all(|p| p["real_id"].is_null()))
}

fn n(v: &Value, path: &[&str]) -> u64 {
    path.iter().fold(v, |x, p| &x[*p]).as_u64().unwrap_or(0)
}

/// The pool map of every guest, side by side with its traffic counters.
fn show(guests: &[Guest]) {
    println!(
        "  {:<6} {:>7}  {:<19} {:>7}  state",
        "guest", "handle", "kind", "pool"
    );
    for g in guests {
        let v = latest(g);
        for p in v["pools"].as_array().into_iter().flatten() {
            let real = match p["real_id"].as_u64() {
                Some(r) => r.to_string(),
                None => "-".into(),
            };
            let state = if p["real_id"].is_u64() {
                "mapped"
            } else {
                "fake"
            };
            let lost = if p["lost"] == true { " (lost)" } else { "" };
            println!(
                "  {:<6} {:>7}  {:<19} {:>7}  {state}{lost}",
                g.name,
                p["fake_id"].as_u64().unwrap_or(0),
                p["kind"].as_str().unwrap_or("?"),
                real
            );
        }
    }
    println!();
    println!(
        "  {:<6} {:>10} {:>10} {:>12} {:>10} {:>10} {:>12} {:>8}",
        "guest",
        "cc puts",
        "cc hits",
        "puts dropped",
        "swap st",
        "swap hits",
        "swap lost",
        "verified"
    );
    for g in guests {
        let v = latest(g);
        println!(
            "  {:<6} {:>10} {:>10} {:>12} {:>10} {:>10} {:>12} {:>8}",
            g.name,
            n(&v, &["counters", "cleancache", "puts"]),
            n(&v, &["counters", "cleancache", "succ_gets"]),
            n(&v, &["counters", "map", "dropped_puts"]),
            n(&v, &["counters", "frontswap", "succ_stores"]),
            n(&v, &["counters", "frontswap", "succ_loads"]),
            n(&v, &["guest", "swap_lost"]),
            n(&v, &["guest", "verified_pages"]),
        );
    }
    println!();
}

fn step(title: &str) {
    println!("== {title}");
}

fn main() -> ExitCode {
    parse_args();
    for b in ["tmemd", "tmem-guest", "tmem"] {
        if !sibling(b).exists() {
            die(&format!(
                "{} not found next to tmem-demo; build with `cargo build --release --workspace --bins`",
                sibling(b).display()
            ));
        }
    }
    let dir = std::env::temp_dir().join(format!("tmem-demo-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    exit_on_signals(dir.clone());

    step("1. Two guests mount filesystems and a swap area. tmemd is NOT running.");
    let guests = vec![
        start_guest(&dir, "web", 1, 3, 14),
        start_guest(&dir, "db", 2, 2, 14),
    ];
    wait(Duration::from_secs(5), || {
        guests
            .iter()
            .all(|g| n(&latest(g), &["counters", "map", "dropped_puts"]) > 0)
    });
    std::thread::sleep(Duration::from_millis(500));
    println!("   Every pool got a fake handle at once; puts are dropped, gets miss.\n");
    show(&guests);

    step("2. tmemd starts.");
    let up = Instant::now();
    let mut tmemd = start_tmemd(&dir);
    let mapped = wait(Duration::from_secs(5), || {
        guests.iter().all(|g| all_mapped(&latest(g)))
    });
    if !mapped {
        die("the guests' handles were not remapped within 5 s");
    }
    println!(
        "   All handles remapped to real pools {} ms after tmemd started (handles unchanged).",
        up.elapsed().as_millis()
    );
    std::thread::sleep(Duration::from_millis(1500));
    println!("   Traffic now hits:\n");
    show(&guests);

    step("3. The administrator's view: `tmem list`");
    let _ = Command::new(sibling("tmem"))
        .arg("--socket")
        .arg(dir.join("control.sock"))
        .arg("list")
        .status();
    println!();

    step("4. tmemd is killed (SIGKILL) under load.");
    let _ = tmemd.kill();
    let _ = tmemd.wait();
    wait(Duration::from_secs(10), || {
        guests.iter().all(|g| none_mapped(&latest(g)))
    });
    println!("   The guests keep running; their handles reverted to fake ones:\n");
    show(&guests);

    step("5. tmemd comes back.");
    let up = Instant::now();
    let mut tmemd = start_tmemd(&dir);
    wait(Duration::from_secs(5), || {
        guests.iter().all(|g| all_mapped(&latest(g)))
    });
    println!(
        "   Remapped {} ms after the restart. The old tmemd's swap pages died with it: the guests",
        up.elapsed().as_millis()
    );
    println!("   were told (\"lost\"), instead of getting a silent miss or stale data.\n");
    std::thread::sleep(Duration::from_millis(1500));
    show(&guests);

    step("6. The guests finish and report their verification of every page they got back.");
    let mut ok = true;
    for mut g in guests {
        let st = g.child.wait().map(|s| s.success()).unwrap_or(false);
        std::thread::sleep(Duration::from_millis(100));
        let v = latest(&g);
        let verified = n(&v, &["guest", "verified_pages"]);
        let errors = n(&v, &["guest", "verification_errors"]);
        println!(
            "   {:<4} {} ({verified} pages verified, {errors} stale or corrupt)",
            g.name,
            if st && errors == 0 { "OK" } else { "FAILED" }
        );
        ok &= st && errors == 0;
    }
    let _ = tmemd.kill();
    let _ = tmemd.wait();
    let _ = std::fs::remove_dir_all(&dir);
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
