//! The `tmem` administration CLI for tmemd.
//!
//! `main.rs` only parses and exits; this library turns the clap arguments into a validated
//! [`command::Invocation`], sends it to the daemon through [`client::Client`] and formats the
//! answer with the pure functions of [`render`], [`xen`] and [`top`]. It never touches guest
//! memory or the store directly: everything goes through the control socket.

pub mod cli;
pub mod client;
pub mod command;
pub mod error;
pub mod generate;
pub mod render;
pub mod top;
pub mod xen;

use std::io::Write;

use tmem_control::{OkReply, Op, Target};

use crate::cli::ListFormat;
use crate::client::Client;
use crate::command::{Command, Invocation};
use crate::error::CliError;

/// Write `text` to `out`; a closed pipe (`tmem list | head`) is not an error.
pub fn write_out(out: &mut dyn Write, text: &str) -> Result<(), CliError> {
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(source) => Err(CliError::Output {
            what: "cannot write output".into(),
            source,
        }),
    }
}

/// Render a statistics snapshot in the requested format.
pub fn render_list(
    stats: &tmem_control::StoreStats,
    all: bool,
    long: bool,
    format: ListFormat,
) -> String {
    match format {
        ListFormat::Table if long => render::render_long(stats, all),
        ListFormat::Table => render::render_table(stats, all),
        ListFormat::Xen => xen::render_xen(stats, long, all),
        ListFormat::Json => {
            let mut s = serde_json::to_string_pretty(stats).expect("statistics always serialise");
            s.push('\n');
            s
        }
    }
}

/// Run one validated invocation, writing its output to `out`.
pub fn run(inv: Invocation, out: &mut dyn Write) -> Result<(), CliError> {
    let client = Client::new(&inv.socket);
    match inv.command {
        Command::List {
            target,
            long,
            format,
        } => {
            let all = target == Target::All;
            let op = Op::List { target };
            match client.request(&op)? {
                OkReply::Stats(stats) => write_out(out, &render_list(&stats, all, long, format)),
                other => Err(CliError::UnexpectedReply {
                    op: "list",
                    reply: format!("{other:?}"),
                }),
            }
        }
        Command::Simple(op) => {
            let reply = client.request(&op)?;
            write_out(out, &render::render_reply(&op, &reply))
        }
        Command::Top(opts) => top::run_top(&client, &opts, out),
        Command::GenerateMan(dir) => {
            let files = generate::write_man_pages(&dir)?;
            let list: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
            write_out(out, &format!("wrote {}\n", list.join(" ")))
        }
        Command::GenerateCompletions(shell) => {
            let mut buf = Vec::new();
            generate::write_completions(shell, &mut buf);
            write_out(out, &String::from_utf8_lossy(&buf))
        }
    }
}
