//! `tmem-demo`: the lazy-init story, end to end, on the local transport.
//!
//! Two guest processes (`tmem-guest`) mount filesystems and a swap area before any tmemd
//! exists and get fake pool handles; tmemd starts and the handles are remapped to real pools;
//! tmemd is killed under load and the handles revert; it restarts and they are remapped
//! again — while every page the guests get back is checked. Run by `scripts/demo.sh`.
//! It uses the sibling binaries next to its own executable and a private temporary directory.

use std::io::{BufRead, BufReader};
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

fn sibling(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    exe.with_file_name(name)
}

fn start_guest(dir: &Path, name: &'static str, domid: u32, fs: u32, seconds: u32) -> Guest {
    let mut child = Command::new(sibling("tmem-guest"))
        .arg("--socket")
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
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| die(&format!("cannot start tmem-guest: {e}")));
    let out = child.stdout.take().expect("piped stdout");
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
    let child = Command::new(sibling("tmemd"))
        .arg("--socket")
        .arg(dir.join("tmemd.sock"))
        .arg("--control-socket")
        .arg(dir.join("control.sock"))
        .args(["--mem-limit", "128M", "--log-level", "warn"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| die(&format!("cannot start tmemd: {e}")));
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
