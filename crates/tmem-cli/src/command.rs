//! The validated command: every number, uuid and domain is checked here, once, so the rest of
//! the CLI works with typed values.

use std::path::PathBuf;
use std::time::Duration;

use tmem_control::{parse_uuid, Op, Target};

use crate::cli::{Cli, CliCommand, GenerateCommand, ListFormat, TargetSel};
use crate::error::CliError;

/// Page size the cap is counted in.
const PAGE_BYTES: u64 = 4096;

/// A command ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    /// The control socket.
    pub socket: PathBuf,
    /// What to do.
    pub command: Command,
}

/// What `tmem` was asked to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// List statistics and print them.
    List {
        target: Target,
        long: bool,
        format: ListFormat,
    },
    /// One request whose reply is printed as a short confirmation.
    Simple(Op),
    /// `status` or `freeable`, printed as text or JSON.
    Query { op: Op, json: bool },
    /// `tmem metrics`.
    Metrics,
    /// The live view.
    Top(TopOptions),
    /// Stream a client's persistent pages to a file.
    Save {
        target: Target,
        live: bool,
        file: PathBuf,
    },
    /// Stream an image file into tmemd.
    Restore {
        file: PathBuf,
        as_identity: Option<String>,
    },
    /// Write man pages.
    GenerateMan(PathBuf),
    /// Print a completion script.
    GenerateCompletions(clap_complete::Shell),
}

/// Options of `tmem top`.
#[derive(Debug, Clone, PartialEq)]
pub struct TopOptions {
    pub interval: Duration,
    pub iterations: Option<u64>,
    pub rows: usize,
    pub plain: bool,
}

impl TryFrom<Cli> for Invocation {
    type Error = CliError;

    fn try_from(cli: Cli) -> Result<Self, CliError> {
        Ok(Invocation {
            socket: cli.socket,
            command: Command::try_from(cli.command)?,
        })
    }
}

impl TryFrom<CliCommand> for Command {
    type Error = CliError;

    fn try_from(c: CliCommand) -> Result<Self, CliError> {
        Ok(match c {
            CliCommand::List(a) => Command::List {
                target: match a.domain {
                    Some(d) => domain(&d)?,
                    None => Target::All,
                },
                long: a.long,
                format: if a.json { ListFormat::Json } else { a.format },
            },
            CliCommand::Freeze(a) => Command::Simple(Op::Freeze {
                target: target(a.target)?,
            }),
            CliCommand::Thaw(a) => Command::Simple(Op::Thaw {
                target: target(a.target)?,
            }),
            CliCommand::Set(a) => {
                if a.weight.is_none() && a.cap.is_none() && a.compress.is_none() {
                    return Err(CliError::Usage(
                        "nothing to set: give -w WEIGHT, -c CAP or -p 0|1".into(),
                    ));
                }
                Command::Simple(Op::Set {
                    target: target(a.target)?,
                    weight: a
                        .weight
                        .as_deref()
                        .map(|w| number_u32("weight", w))
                        .transpose()?,
                    cap_pages: a.cap.as_deref().map(cap_pages).transpose()?,
                    compress: a.compress.as_deref().map(|p| flag("-p", p)).transpose()?,
                })
            }
            CliCommand::SharedAuth(a) => Command::Simple(Op::SharedAuth {
                target: target(a.target)?,
                uuid: parse_uuid(&a.uuid).map_err(CliError::Usage)?,
                allow: flag("-A", &a.auth)?,
            }),
            CliCommand::Freeable(a) => Command::Query {
                op: Op::Freeable,
                json: a.json,
            },
            CliCommand::Flush(a) => {
                let kib = number_u64("--kib", &a.kib)?;
                if kib == 0 {
                    return Err(CliError::Usage("--kib must be at least 1".into()));
                }
                Command::Simple(Op::Flush { kib })
            }
            CliCommand::Destroy(a) => Command::Simple(Op::Destroy {
                target: domain(&a.domain)?,
            }),
            CliCommand::Save(a) => Command::Save {
                target: domain(&a.domain)?,
                live: a.live,
                file: a.file,
            },
            CliCommand::Restore(a) => Command::Restore {
                file: a.file,
                as_identity: match a.as_identity {
                    // Checked here so a typo is a usage error, not a refused restore.
                    Some(s) => {
                        let t = Target::parse_domain(&s).map_err(CliError::Usage)?;
                        match t {
                            Target::DomId(_) | Target::Local { .. } => Some(s.trim().to_string()),
                            _ => {
                                return Err(CliError::Usage(format!(
                                    "--as '{s}': give a domain id or local:UID:LABEL, not a name"
                                )))
                            }
                        }
                    }
                    None => None,
                },
            },
            CliCommand::Status(a) => Command::Query {
                op: Op::Status,
                json: a.json,
            },
            CliCommand::Metrics => Command::Metrics,
            CliCommand::Top(a) => {
                let secs: f64 = a.interval.trim().parse().map_err(|_| {
                    CliError::Usage(format!(
                        "bad number '{}' for --interval: expected seconds such as 1 or 0.5",
                        a.interval
                    ))
                })?;
                if !(0.05..=3600.0).contains(&secs) {
                    return Err(CliError::Usage(format!(
                        "--interval {secs} is out of range (0.05 to 3600 seconds)"
                    )));
                }
                let iterations = a
                    .iterations
                    .as_deref()
                    .map(|n| number_u64("--iterations", n))
                    .transpose()?;
                if iterations == Some(0) {
                    return Err(CliError::Usage("--iterations must be at least 1".into()));
                }
                let rows = number_u64("--rows", &a.rows)?;
                if rows == 0 || rows > 10_000 {
                    return Err(CliError::Usage("--rows must be 1 to 10000".into()));
                }
                Command::Top(TopOptions {
                    interval: Duration::from_secs_f64(secs),
                    iterations,
                    rows: rows as usize,
                    plain: a.plain,
                })
            }
            CliCommand::Generate(GenerateCommand::Man { dir }) => Command::GenerateMan(dir),
            CliCommand::Generate(GenerateCommand::Completions { shell }) => {
                Command::GenerateCompletions(shell)
            }
        })
    }
}

fn domain(s: &str) -> Result<Target, CliError> {
    Target::parse_domain(s).map_err(CliError::Usage)
}

fn target(sel: TargetSel) -> Result<Target, CliError> {
    match (sel.domain, sel.all) {
        (None, true) => Ok(Target::All),
        (Some(d), false) => domain(&d),
        // clap's argument group makes these unreachable; keep a clear message anyway.
        _ => Err(CliError::Usage("give exactly one of DOMAIN or -a".into())),
    }
}

/// Parse an unsigned decimal number (underscores allowed as digit separators).
pub fn number_u64(what: &str, s: &str) -> Result<u64, CliError> {
    let t: String = s.trim().chars().filter(|c| *c != '_').collect();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CliError::Usage(format!(
            "bad number '{s}' for {what}: expected a non-negative whole number"
        )));
    }
    t.parse::<u64>()
        .map_err(|_| CliError::Usage(format!("bad number '{s}' for {what}: out of range")))
}

fn number_u32(what: &str, s: &str) -> Result<u32, CliError> {
    let v = number_u64(what, s)?;
    u32::try_from(v)
        .map_err(|_| CliError::Usage(format!("bad number '{s}' for {what}: at most {}", u32::MAX)))
}

/// A 0|1 flag (also accepts on/off, true/false, yes/no).
fn flag(what: &str, s: &str) -> Result<bool, CliError> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "on" | "true" | "yes" => Ok(true),
        "0" | "off" | "false" | "no" => Ok(false),
        _ => Err(CliError::Usage(format!(
            "bad value '{s}' for {what}: expected 0 or 1"
        ))),
    }
}

/// A cap: a page count (a plain number), or a size in tmemd's syntax
/// ([`tmem_control::parse_size`]: `64M`, `64MiB`, `1G`, `512B`) rounded down to whole pages.
pub fn cap_pages(s: &str) -> Result<u64, CliError> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || b == b'_') {
        return number_u64("-c", t);
    }
    tmem_control::parse_size(t)
        .map(|bytes| bytes / PAGE_BYTES)
        .map_err(|e| {
            CliError::Usage(format!(
                "bad cap '{s}': expected pages (e.g. 25600) or a size (e.g. 100M, 2GiB): {e}"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Invocation, CliError> {
        let mut v = vec!["tmem"];
        v.extend_from_slice(args);
        let cli = Cli::try_parse_from(v).map_err(|e| CliError::Usage(e.to_string()))?;
        Invocation::try_from(cli)
    }

    fn cmd(args: &[&str]) -> Command {
        parse(args).expect("valid command").command
    }

    fn usage_err(args: &[&str]) -> String {
        match parse(args) {
            Err(e @ CliError::Usage(_)) => e.to_string(),
            other => panic!("expected a usage error for {args:?}, got {other:?}"),
        }
    }

    #[test]
    fn list_defaults_to_all_in_a_table() {
        assert_eq!(
            cmd(&["list"]),
            Command::List {
                target: Target::All,
                long: false,
                format: ListFormat::Table
            }
        );
        assert_eq!(
            cmd(&["list", "-l", "-a", "--format", "xen"]),
            Command::List {
                target: Target::All,
                long: true,
                format: ListFormat::Xen
            }
        );
        assert_eq!(
            cmd(&["list", "web", "--json"]),
            Command::List {
                target: Target::Name("web".into()),
                long: false,
                format: ListFormat::Json
            }
        );
        assert_eq!(
            cmd(&["list", "7"]),
            Command::List {
                target: Target::DomId(7),
                long: false,
                format: ListFormat::Table
            }
        );
        usage_err(&["list", "7", "-a"]);
        usage_err(&["list", "--json", "--format", "xen"]);
    }

    #[test]
    fn freeze_and_thaw_need_exactly_one_target() {
        assert_eq!(
            cmd(&["freeze", "3"]),
            Command::Simple(Op::Freeze {
                target: Target::DomId(3)
            })
        );
        assert_eq!(
            cmd(&["thaw", "-a"]),
            Command::Simple(Op::Thaw {
                target: Target::All
            })
        );
        usage_err(&["freeze"]);
        usage_err(&["freeze", "3", "-a"]);
    }

    #[test]
    fn set_validates_each_value() {
        assert_eq!(
            cmd(&["set", "web", "-w", "200", "-c", "64M", "-p", "1"]),
            Command::Simple(Op::Set {
                target: Target::Name("web".into()),
                weight: Some(200),
                cap_pages: Some(16384),
                compress: Some(true),
            })
        );
        assert_eq!(
            cmd(&["set", "-a", "-c", "1000"]),
            Command::Simple(Op::Set {
                target: Target::All,
                weight: None,
                cap_pages: Some(1000),
                compress: None,
            })
        );
        assert!(usage_err(&["set", "1"]).contains("nothing to set"));
        assert!(usage_err(&["set", "1", "-w", "ten"]).contains("bad number 'ten'"));
        assert!(usage_err(&["set", "1", "-w", "-5"]).contains("-5"));
        assert!(usage_err(&["set", "1", "-w", "5000000000"]).contains("at most"));
        assert!(usage_err(&["set", "1", "-c", "12Q"]).contains("bad cap"));
        assert!(usage_err(&["set", "1", "-p", "2"]).contains("expected 0 or 1"));
    }

    #[test]
    fn shared_auth_checks_uuid_and_flag() {
        assert_eq!(
            cmd(&[
                "shared-auth",
                "2",
                "-u",
                "00112233-4455-6677-8899-aabbccddeeff",
                "-A",
                "1"
            ]),
            Command::Simple(Op::SharedAuth {
                target: Target::DomId(2),
                uuid: [0x7766_5544_3322_1100, 0xffee_ddcc_bbaa_9988],
                allow: true,
            })
        );
        assert!(
            usage_err(&["shared-auth", "2", "-u", "not-a-uuid", "-A", "1"]).contains("bad uuid")
        );
        assert!(usage_err(&[
            "shared-auth",
            "2",
            "-u",
            "00000000000000010000000000000002",
            "-A",
            "maybe"
        ])
        .contains("expected 0 or 1"));
        usage_err(&["shared-auth", "2", "-A", "1"]);
    }

    #[test]
    fn flush_needs_a_positive_kib() {
        assert_eq!(
            cmd(&["flush", "--kib", "4096"]),
            Command::Simple(Op::Flush { kib: 4096 })
        );
        assert!(usage_err(&["flush", "--kib", "lots"]).contains("bad number"));
        assert!(usage_err(&["flush", "--kib", "0"]).contains("at least 1"));
        usage_err(&["flush"]);
    }

    #[test]
    fn destroy_takes_one_domain() {
        assert_eq!(
            cmd(&["destroy", "db"]),
            Command::Simple(Op::Destroy {
                target: Target::Name("db".into())
            })
        );
        usage_err(&["destroy"]);
        usage_err(&["destroy", "-a"]);
        assert!(usage_err(&["destroy", "99999999999"]).contains("out of range"));
    }

    #[test]
    fn top_options() {
        assert_eq!(
            cmd(&["top", "--interval", "0.5", "--iterations", "3", "--plain"]),
            Command::Top(TopOptions {
                interval: Duration::from_millis(500),
                iterations: Some(3),
                rows: 10,
                plain: true
            })
        );
        assert!(usage_err(&["top", "--interval", "soon"]).contains("bad number"));
        assert!(usage_err(&["top", "--interval", "0"]).contains("out of range"));
        assert!(usage_err(&["top", "--iterations", "0"]).contains("at least 1"));
    }

    #[test]
    fn socket_option_and_default() {
        let inv = parse(&["--socket", "/tmp/c.sock", "status"]).unwrap();
        assert_eq!(inv.socket, PathBuf::from("/tmp/c.sock"));
        assert_eq!(
            inv.command,
            Command::Query {
                op: Op::Status,
                json: false
            }
        );
        assert_eq!(
            cmd(&["freeable", "--json"]),
            Command::Query {
                op: Op::Freeable,
                json: true
            }
        );
        assert_eq!(cmd(&["metrics"]), Command::Metrics);
        // The global option also works after the subcommand.
        let inv = parse(&["freeable", "--socket", "/tmp/d.sock"]).unwrap();
        assert_eq!(inv.socket, PathBuf::from("/tmp/d.sock"));
    }

    #[test]
    fn cap_sizes_round_down_to_pages() {
        assert_eq!(cap_pages("0").unwrap(), 0);
        assert_eq!(cap_pages("4k").unwrap(), 1);
        assert_eq!(cap_pages("6K").unwrap(), 1);
        assert_eq!(cap_pages("1G").unwrap(), 262_144);
        assert_eq!(cap_pages("64MiB").unwrap(), 16_384);
        assert_eq!(cap_pages("64 MiB").unwrap(), 16_384);
        assert_eq!(cap_pages("8192B").unwrap(), 2);
        assert!(cap_pages("M").is_err());
        assert!(cap_pages("99999999999999T").is_err());
    }
}
