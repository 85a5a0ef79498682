//! What the `tmem` binary's tests share: running it against a control socket and checking
//! the outcome.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::Path;
use std::process::{Command, Output};

/// Run `tmem --socket <control> args...`.
pub fn tmem(control: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tmem"))
        .arg("--socket")
        .arg(control)
        .args(args)
        .env_remove("TMEM_CONTROL_SOCKET")
        .output()
        .expect("run tmem")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Run tmem and require success.
pub fn ok(control: &Path, args: &[&str]) -> String {
    let o = tmem(control, args);
    assert!(
        o.status.success(),
        "tmem {args:?} failed ({:?}): {}",
        o.status.code(),
        stderr(&o)
    );
    stdout(&o)
}

/// Run tmem and require a failure with exit status `code` and exactly one line on stderr.
pub fn fails(control: &Path, args: &[&str], code: i32) -> String {
    let o = tmem(control, args);
    let err = stderr(&o);
    assert_eq!(
        o.status.code(),
        Some(code),
        "tmem {args:?}: stdout {:?} stderr {err:?}",
        stdout(&o)
    );
    assert_eq!(err.lines().count(), 1, "one line expected, got {err:?}");
    assert!(err.starts_with("tmem: "), "{err:?}");
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{err:?}"
    );
    err
}
