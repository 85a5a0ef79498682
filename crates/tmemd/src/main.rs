//! The `tmemd` binary: arguments in, one-line error and non-zero exit out.

use std::process::ExitCode;

use clap::Parser;
use tmemd::config::{Args, Config};

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            // clap's whole message: what is wrong, the usage line, where to read more. --help
            // and --version go to stdout with status 0.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let config = match Config::load(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tmemd: {}", one_line(&e));
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level);
    let filter = match filter {
        Ok(f) => f,
        Err(e) => {
            eprintln!(
                "tmemd: bad log level '{}': {e}; use error, warn, info, debug or trace",
                config.log_level
            );
            return ExitCode::from(2);
        }
    };
    init_logging(filter);
    match tmemd::daemon::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tmemd: {}", one_line(&e));
            ExitCode::from(e.exit_code())
        }
    }
}

/// Log to journald, with each level's priority and the fields (uid, pid, op, domid, ...) as
/// `TMEMD_*` journal fields, when stderr is the journal stream systemd gave us; else plain
/// lines on stderr.
fn init_logging(filter: tracing_subscriber::EnvFilter) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    if stderr_is_journal() {
        match tracing_journald::layer() {
            Ok(layer) => {
                let layer = layer.with_field_prefix(Some("TMEMD".into()));
                tracing_subscriber::registry()
                    .with(filter)
                    .with(layer)
                    .init();
                return;
            }
            Err(e) => eprintln!("tmemd: cannot log to journald ({e}); logging to stderr"),
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Whether stderr is the stream named by `JOURNAL_STREAM` (`DEV:INODE`), as systemd.exec(5)
/// says to check: the variable alone may be inherited by a process whose stderr is elsewhere.
fn stderr_is_journal() -> bool {
    let Ok(v) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // fstat through /proc/self/fd would follow the link; the open descriptor is what counts.
    use std::os::unix::fs::MetadataExt;
    let stderr = std::io::stderr();
    let fd = std::os::fd::AsFd::as_fd(&stderr);
    match fd.try_clone_to_owned().map(std::fs::File::from) {
        Ok(f) => f.metadata().is_ok_and(|m| m.dev() == dev && m.ino() == ino),
        Err(_) => false,
    }
}

/// The error and its causes on one line ("what is wrong: why"), each cause once.
fn one_line(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        let t = cause.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = cause.source();
    }
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
