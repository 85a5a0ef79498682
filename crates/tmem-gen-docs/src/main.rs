//! `tmem-gen-docs OUT_DIR [--date YYYY-MM-DD]`: write the man pages and completions of tmem
//! and tmemd under OUT_DIR (see the library for the layout).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Write the man pages and shell completions of tmem and tmemd.
#[derive(Debug, Parser)]
#[command(name = "tmem-gen-docs", version)]
struct Args {
    /// Directory to write into (man8/ and completions/ below it).
    #[arg(value_name = "OUT_DIR")]
    out: PathBuf,
    /// Date shown in each page's footer, YYYY-MM-DD (e.g. from SOURCE_DATE_EPOCH, so that
    /// builds are reproducible).
    #[arg(long, value_name = "YYYY-MM-DD", value_parser = parse_date)]
    date: Option<String>,
}

fn parse_date(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && digits(0..4)
        && digits(5..7)
        && digits(8..10)
    {
        Ok(s.to_string())
    } else {
        Err("expected YYYY-MM-DD, e.g. `date -u +%F`".into())
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match tmem_gen_docs::write_all(&args.out, args.date.as_deref().unwrap_or("")) {
        Ok(files) => {
            println!("wrote {} files under {}", files.len(), args.out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tmem-gen-docs: {e}");
            ExitCode::FAILURE
        }
    }
}
