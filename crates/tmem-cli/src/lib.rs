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
pub mod metrics;
pub mod render;
pub mod top;
pub mod transfer;
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
        ListFormat::Json => pretty(&stats_json(stats)),
    }
}

/// Pretty JSON with a final newline.
fn pretty(v: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("JSON values always serialise");
    s.push('\n');
    s
}

/// The statistics as `tmem list --json` prints them: the daemon's snapshot, except that
/// numbers a double cannot hold exactly (jq, JavaScript and Python's `json` with floats read
/// every number as one) are strings: each client's `instance` (a 64-bit value) and every
/// pool `uuid`, which is written in the text form `tmem shared-auth -u` takes. Every other
/// number is a count or an id far below 2^53.
pub fn stats_json(stats: &tmem_control::StoreStats) -> serde_json::Value {
    let mut v = serde_json::to_value(stats).expect("statistics always serialise");
    let uuid_text = |p: &mut serde_json::Value| {
        let words = p["uuid"]
            .as_array()
            .map(|a| a.iter().filter_map(|w| w.as_u64()).collect::<Vec<_>>());
        if let Some([lo, hi]) = words.as_deref() {
            p["uuid"] = tmem_control::format_uuid([*lo, *hi]).into();
        }
    };
    if let Some(clients) = v["clients"].as_array_mut() {
        for c in clients {
            if let Some(i) = c["instance"].as_u64() {
                c["instance"] = i.to_string().into();
            }
            if let Some(pools) = c["pools"].as_array_mut() {
                pools.iter_mut().for_each(uuid_text);
            }
        }
    }
    if let Some(shared) = v["shared_pools"].as_array_mut() {
        shared.iter_mut().for_each(uuid_text);
    }
    v
}

/// `tmem status --json` and `tmem freeable --json`: the reply's fields as one object.
pub fn reply_json(reply: &OkReply) -> String {
    let mut v = serde_json::to_value(reply).expect("replies always serialise");
    if let Some(o) = v.as_object_mut() {
        // The reply's tag says which reply it is; the command already says that.
        o.shift_remove("kind");
    }
    pretty(&v)
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
        Command::Query { op, json } => {
            let reply = client.request(&op)?;
            if json {
                write_out(out, &reply_json(&reply))
            } else {
                write_out(out, &render::render_reply(&op, &reply))
            }
        }
        Command::Metrics => match client.request(&Op::Metrics)? {
            OkReply::Metrics(m) => write_out(out, &metrics::render_metrics(&m)),
            other => Err(CliError::UnexpectedReply {
                op: "metrics",
                reply: format!("{other:?}"),
            }),
        },
        Command::Top(opts) => top::run_top(&client, &opts, out),
        Command::Save { target, live, file } => transfer::save(&client, target, live, &file, out),
        Command::Restore { file, as_identity } => {
            transfer::restore(&client, &file, as_identity, out)
        }
        Command::GenerateMan(dir) => {
            let files = generate::write_man_pages(&dir, &generate::tmem_man_pages(""))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_for_scripts_has_no_number_a_double_cannot_hold() {
        let mut stats = render::tests::sample();
        stats.clients[0].instance = u64::MAX - 1;
        stats.clients[0].pools[2].uuid = [u64::MAX, 1 << 60];
        let v = stats_json(&stats);
        assert_eq!(v["clients"][0]["instance"], "18446744073709551614");
        assert_eq!(
            v["clients"][0]["pools"][2]["uuid"],
            tmem_control::format_uuid([u64::MAX, 1 << 60])
        );
        assert_eq!(
            v["shared_pools"][0]["uuid"],
            tmem_control::format_uuid([0x2, 0xabcdef])
        );
        // Walk everything: no number above 2^53 is left.
        fn walk(v: &serde_json::Value) {
            match v {
                serde_json::Value::Number(n) => {
                    assert!(n.as_u64().is_some_and(|n| n < 1 << 53), "{n}")
                }
                serde_json::Value::Array(a) => a.iter().for_each(walk),
                serde_json::Value::Object(o) => o.values().for_each(walk),
                _ => {}
            }
        }
        walk(&v);
    }

    #[test]
    fn status_and_freeable_as_json() {
        let j = reply_json(&OkReply::Freeable { pages: 3, kib: 12 });
        assert_eq!(j, "{\n  \"pages\": 3,\n  \"kib\": 12\n}\n");
    }
}
