//! The command line as clap sees it: raw strings and flags, nothing validated yet.
//!
//! [`crate::command::Command`] is built from these types by `TryFrom`; the man pages and the
//! shell completions are generated from them too, so the three cannot disagree.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Administer tmemd, the transcendent-memory daemon for Xen guests.
///
/// Every command talks to tmemd over its control socket (root only). A DOMAIN is a Xen domain
/// id, `local:UID:LABEL` for a local guest, or the name a guest attached with; `-a` means every
/// domain.
#[derive(Debug, Parser)]
#[command(
    name = "tmem",
    version,
    disable_help_subcommand = true,
    about = "Administer tmemd, the transcendent-memory daemon for Xen guests",
    after_help = "Exit status: 0 success, 1 the operation failed, 2 usage error, \
                  3 tmemd unreachable or busy, 4 permission denied, 5 protocol mismatch."
)]
pub struct Cli {
    /// Control socket of the daemon.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "TMEM_CONTROL_SOCKET",
        default_value = tmem_control::DEFAULT_CONTROL_SOCKET
    )]
    pub socket: PathBuf,

    #[command(subcommand)]
    pub command: CliCommand,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Show clients, pools and counters (Xen's `xl tmem-list`).
    List(ListArgs),
    /// Refuse new puts from a domain (existing pages still answer gets).
    Freeze(TargetArgs),
    /// Undo `freeze`.
    Thaw(TargetArgs),
    /// Change a domain's weight, memory cap or compression flag.
    Set(SetArgs),
    /// Authorise or de-authorise a domain for a shared pool uuid.
    SharedAuth(SharedAuthArgs),
    /// Show how much ephemeral page memory (KiB) could be given back now.
    Freeable(JsonArgs),
    /// Evict ephemeral pages until at least this much page memory (KiB) is released.
    Flush(FlushArgs),
    /// Drop every pool of a domain and disconnect it.
    Destroy(DestroyArgs),
    /// Copy a stopped or disconnected domain's persistent pages to a file (for `tmem restore`
    /// on this or another host).
    Save(SaveArgs),
    /// Load a file written by `tmem save`: the pages wait for the domain to reattach.
    Restore(RestoreArgs),
    /// Show the daemon's version, uptime, connected guests and page memory.
    Status(JsonArgs),
    /// Print every counter, gauge and request-latency histogram in the Prometheus text format.
    Metrics,
    /// Live view of the busiest clients and pools.
    Top(TopArgs),
    /// Generate man pages or shell completions.
    #[command(subcommand, disable_help_subcommand = true)]
    Generate(GenerateCommand),
}

/// `tmem list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Domain id or name (default: all domains).
    #[arg(value_name = "DOMAIN", conflicts_with = "all")]
    pub domain: Option<String>,
    /// All domains (the default).
    #[arg(short = 'a', long = "all")]
    pub all: bool,
    /// Long statistics: every counter.
    #[arg(short = 'l', long = "long")]
    pub long: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ListFormat::Table, conflicts_with = "json")]
    pub format: ListFormat,
    /// Same as `--format json`.
    #[arg(long)]
    pub json: bool,
}

/// Output formats of `tmem list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    /// A readable table.
    Table,
    /// Xen's `tmem-list` lines (G=, S=, C=, P=, T) for existing parsers.
    Xen,
    /// The daemon's statistics snapshot as JSON, for scripts.
    Json,
}

/// `--json` of `status` and `freeable`.
#[derive(Debug, Args)]
pub struct JsonArgs {
    /// Print the answer as JSON, for scripts.
    #[arg(long)]
    pub json: bool,
}

/// A DOMAIN or `-a`, exactly one of them.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct TargetSel {
    /// Domain id or name.
    #[arg(value_name = "DOMAIN")]
    pub domain: Option<String>,
    /// Every domain.
    #[arg(short = 'a', long = "all")]
    pub all: bool,
}

/// Commands that take only a target.
#[derive(Debug, Args)]
pub struct TargetArgs {
    #[command(flatten)]
    pub target: TargetSel,
}

/// `tmem set`.
#[derive(Debug, Args)]
pub struct SetArgs {
    #[command(flatten)]
    pub target: TargetSel,
    /// Eviction weight (a larger weight keeps more ephemeral pages).
    #[arg(
        short = 'w',
        long = "weight",
        value_name = "WEIGHT",
        allow_hyphen_values = true
    )]
    pub weight: Option<String>,
    /// Cap on the page memory the domain's pages take: a size such as 64M, 64MiB or 1G, or a
    /// plain number of 4 KiB units; 0 removes the cap. A raw page takes 4 KiB, a compressed
    /// one its size class's share of a run (less), a same-filled one nothing.
    #[arg(
        short = 'c',
        long = "cap",
        value_name = "CAP",
        allow_hyphen_values = true
    )]
    pub cap: Option<String>,
    /// Compression, 0 or 1: 1 compresses the domain's new pages with the configured codec
    /// (`compression` in tmemd's config: lz4 by default, or zstd).
    #[arg(short = 'p', long = "compress", value_name = "0|1")]
    pub compress: Option<String>,
}

/// `tmem shared-auth`.
#[derive(Debug, Args)]
pub struct SharedAuthArgs {
    #[command(flatten)]
    pub target: TargetSel,
    /// Shared pool uuid: 32 hex digits, dashes allowed.
    #[arg(short = 'u', long = "uuid", value_name = "UUID")]
    pub uuid: String,
    /// 1 to authorise, 0 to de-authorise. With -a: 1 turns authorisation checking off, 0 on.
    #[arg(short = 'A', long = "auth", value_name = "0|1")]
    pub auth: String,
}

/// `tmem flush`.
#[derive(Debug, Args)]
pub struct FlushArgs {
    /// KiB of page memory to release (4 KiB per raw page evicted, a compressed page's share
    /// of its run).
    #[arg(long = "kib", value_name = "N", allow_hyphen_values = true)]
    pub kib: String,
}

/// `tmem destroy`.
#[derive(Debug, Args)]
pub struct DestroyArgs {
    /// Domain id or name.
    #[arg(value_name = "DOMAIN")]
    pub domain: String,
}

/// `tmem save`.
#[derive(Debug, Args)]
pub struct SaveArgs {
    /// Domain id, `local:UID:LABEL` or name.
    #[arg(value_name = "DOMAIN")]
    pub domain: String,
    /// File to write (`-` for standard output); written as FILE.partial, renamed when whole.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Save a connected domain too: each page is copied as it is at that moment, so pages the
    /// guest changes during the save may be older in the file.
    #[arg(long)]
    pub live: bool,
}

/// `tmem restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// File written by `tmem save` (`-` for standard input).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Give the pages to this domain id or `local:UID:LABEL` instead of the saved one (e.g.
    /// the id the domain has after `xl restore`).
    #[arg(long = "as", value_name = "DOMAIN")]
    pub as_identity: Option<String>,
}

/// `tmem top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// Seconds between refreshes (fractions allowed).
    #[arg(
        short = 'i',
        long = "interval",
        value_name = "SECS",
        default_value = "1"
    )]
    pub interval: String,
    /// Stop after this many refreshes (default: run until interrupted).
    #[arg(short = 'n', long = "iterations", value_name = "N")]
    pub iterations: Option<String>,
    /// Rows shown in each of the client and pool lists.
    #[arg(short = 'r', long = "rows", value_name = "N", default_value = "10")]
    pub rows: String,
    /// Plain lines even on a terminal.
    #[arg(long)]
    pub plain: bool,
}

/// `tmem generate`.
#[derive(Debug, Subcommand)]
pub enum GenerateCommand {
    /// Write man pages (tmem.8 and one per subcommand) into DIR.
    Man {
        /// Directory to write into, e.g. /usr/local/share/man/man8.
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Print a completion script for SHELL on stdout.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
}
