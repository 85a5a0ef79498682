//! `tmem`: the administration CLI for tmemd. Parses, runs, prints one line on error, exits
//! with the documented status (see `tmem --help`).

use clap::Parser;
use tmem_cli::cli::Cli;
use tmem_cli::command::Invocation;
use tmem_cli::error::{CliError, EXIT_USAGE};

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap's whole message: what is wrong (which argument is missing), the usage
            // line and where to read more. --help and --version go to stdout, status 0.
            let _ = e.print();
            std::process::exit(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    let result =
        Invocation::try_from(cli).and_then(|inv| tmem_cli::run(inv, &mut std::io::stdout().lock()));
    if let Err(e) = result {
        report(&e);
        std::process::exit(e.exit_code());
    }
}

fn report(e: &CliError) {
    eprintln!("tmem: {}", e.one_line());
}
