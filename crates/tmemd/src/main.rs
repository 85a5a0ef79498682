//! The `tmemd` binary: arguments in, one-line error and non-zero exit out.

use std::process::ExitCode;

use clap::Parser;
use tmemd::config::{Args, Config};

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's message spans several lines (usage, hints); keep the one that says why.
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("tmemd: {first} (see `tmemd --help`)");
            return ExitCode::from(2);
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
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match tmemd::daemon::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tmemd: {}", one_line(&e));
            ExitCode::from(e.exit_code())
        }
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
