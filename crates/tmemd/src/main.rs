//! The `tmemd` binary: arguments in, one-line error and non-zero exit out.

use std::process::ExitCode;

use clap::Parser;
use tmemd::config::{Args, Config};

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tmemd: {e}");
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
            eprintln!("tmemd: {e}");
            ExitCode::FAILURE
        }
    }
}
