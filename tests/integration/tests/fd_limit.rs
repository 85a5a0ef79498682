//! tmemd raises its own open-file soft limit to the hard limit at start (its own process, so
//! lowering this test process's soft limit, which the daemon inherits, does not disturb others).

use std::time::Duration;

use tmem_tests::{wait_for, Daemon, TempDir};

fn open_files_limits(pid: i32) -> Option<(String, String)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let mut f = line["Max open files".len()..].split_whitespace();
    Some((f.next()?.to_owned(), f.next()?.to_owned()))
}

#[test]
fn tmemd_raises_its_open_file_soft_limit_to_the_hard_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one struct into a live local.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    if lim.rlim_max <= 256 {
        eprintln!("hard limit {} too low to tell; skipping", lim.rlim_max);
        return;
    }
    lim.rlim_cur = 256;
    // SAFETY: setrlimit reads one struct from a live local; lowering the soft limit is allowed.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    let dir = TempDir::new("fdlimit");
    let daemon = Daemon::start(&dir, &["--mem-limit", "16M"]);
    let (soft, hard) = wait_for(Duration::from_secs(10), "daemon limits", || {
        open_files_limits(daemon.pid())
    });
    assert_eq!(soft, hard, "tmemd kept soft limit {soft} below hard {hard}");
    assert_eq!(hard, lim.rlim_max.to_string());
}
