//! `tmem`: the administration CLI for tmemd. Parses, runs, prints one line on error, exits
//! with the documented status (see `tmem --help`).

use clap::Parser;
use tmem_cli::cli::Cli;
use tmem_cli::command::Invocation;
use tmem_cli::error::{CliError, EXIT_USAGE};

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            std::process::exit(0);
        }
        Err(e) => {
            // clap's message is several lines (usage, hints); keep the first.
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("tmem: {first} (see `tmem --help`)");
            std::process::exit(EXIT_USAGE);
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
