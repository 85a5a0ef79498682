//! Build tool for the package: writes every man page and shell completion of `tmem` and
//! `tmemd` from their clap definitions, so the installed documentation cannot disagree with
//! the parsers. Not installed; `scripts/build-deb.sh` runs it.
//!
//! Layout written under the output directory:
//! `man8/*.8`, `completions/bash/{tmem,tmemd}`, `completions/zsh/{_tmem,_tmemd}`,
//! `completions/fish/{tmem,tmemd}.fish`.

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;
use tmem_cli::generate::{self, Block, ManPage, PageProse, MAN_SECTION};

/// Writing one output file failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {}: {source}", path.display())]
pub struct WriteError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// tmemd's command line, as its parser sees it. The page's NAME line gets a summary of its
/// own: `tmemd --help` opens with the crate description, which repeats the name.
pub fn tmemd_command() -> clap::Command {
    tmemd::config::Args::command().about("transcendent memory for Xen guests, as a dom0 daemon")
}

/// What tmemd's page says beyond its clap definitions.
pub fn tmemd_prose() -> PageProse {
    let item = |tag: &str, text: &str| Block::Item {
        tag: tag.into(),
        text: text.into(),
    };
    PageProse {
        description: vec![
            "tmemd keeps pages that Xen guests hand it (transcendent memory: clean page cache \
             in ephemeral pools, swap in persistent pools) in dom0 memory, up to a fixed limit. \
             Guests reach it over shared-memory rings negotiated in xenstore; local processes \
             can use the same protocol over a Unix socket. tmem(8) administers it."
                .into(),
            "Settings come from the flags, then the TOML file named with -c, then built-in \
             defaults; unknown keys and bad values stop tmemd with one line on stderr. The \
             Debian package starts it from tmemd.service with -c /etc/tmemd/tmemd.toml."
                .into(),
            "Under systemd (Type=notify) tmemd reports READY=1 once its page memory is faulted \
             in, pings the watchdog while every worker thread is alive, and keeps page memory \
             in a memfd in systemd's file-descriptor store, so persistent pages survive a \
             crash, a restart or an upgrade of tmemd (not a reboot, and on systemd 252 not a \
             stop). SIGTERM or SIGINT stops it cleanly; SIGHUP is logged and ignored."
                .into(),
            "The administrator's guide is /usr/share/doc/tmemd/operations.md.".into(),
        ],
        after_help_heading: None,
        sections: vec![
            (
                "EXIT STATUS",
                vec![
                    item("0", "Stopped by SIGTERM or SIGINT."),
                    item(
                        "1",
                        "Could not serve: a socket in use or in a missing directory, a \
                         permission problem, or a failure while running (every worker gone, a \
                         panic in the page store). The unit restarts tmemd.",
                    ),
                    item(
                        "2",
                        "Bad configuration: a flag, the file, a memory limit the host cannot \
                         give, or saved settings that cannot be read. Not restarted.",
                    ),
                    item(
                        "3",
                        "Page memory refused: a page file that does not fit, cannot be \
                         created, or was written in a format this tmemd cannot read. The file \
                         is left as it was. Not restarted.",
                    ),
                ],
            ),
            (
                "ENVIRONMENT",
                vec![
                    item(
                        "NOTIFY_SOCKET, WATCHDOG_USEC",
                        "Set by systemd: readiness, status and watchdog notifications.",
                    ),
                    item(
                        "LISTEN_FDS, LISTEN_FDNAMES",
                        "Set by systemd: the page memory (tmemd-pages) and saved settings \
                         (tmemd-settings) kept in the fd store by the previous tmemd.",
                    ),
                    item(
                        "JOURNAL_STREAM",
                        "When stderr is this stream, logs go to the journal with priorities.",
                    ),
                ],
            ),
            (
                "FILES",
                vec![
                    item(
                        "/etc/tmemd/tmemd.toml",
                        "The configuration file the unit names with -c.",
                    ),
                    item(
                        tmemd::config::DEFAULT_SOCKET,
                        "The socket local guests connect to.",
                    ),
                    item(
                        tmemd::config::DEFAULT_CONTROL_SOCKET,
                        "The control socket tmem(8) uses (root only by default).",
                    ),
                    item(
                        tmemd::config::DEFAULT_PAGE_FILE,
                        "Page memory when not under systemd and page_file is not set, with \
                         the saved settings beside it (pages.settings.json).",
                    ),
                ],
            ),
        ],
        see_also: vec![format!("tmem({MAN_SECTION})")],
    }
}

/// Every page of both programs.
pub fn all_man_pages(date: &str) -> Vec<ManPage> {
    let mut pages = generate::tmem_man_pages(date);
    pages.extend(generate::man_pages(
        &tmemd_command(),
        &tmemd_prose(),
        env!("CARGO_PKG_VERSION"),
        date,
    ));
    pages
}

/// Completion file names in each shell's vendor directory.
fn completion_file(shell: Shell, bin: &str) -> String {
    match shell {
        Shell::Zsh => format!("_{bin}"),
        Shell::Fish => format!("{bin}.fish"),
        _ => bin.to_string(),
    }
}

/// Write everything under `out`; returns the files written.
pub fn write_all(out: &Path, date: &str) -> Result<Vec<PathBuf>, WriteError> {
    let mut written = Vec::new();
    let mut write = |path: PathBuf, bytes: &[u8]| -> Result<(), WriteError> {
        let r = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|_| std::fs::write(&path, bytes));
        r.map_err(|source| WriteError {
            path: path.clone(),
            source,
        })?;
        written.push(path);
        Ok(())
    };
    for page in all_man_pages(date) {
        write(
            out.join(format!("man{MAN_SECTION}")).join(page.file_name()),
            page.roff.as_bytes(),
        )?;
    }
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        for (bin, cmd) in [
            ("tmem", tmem_cli::cli::Cli::command()),
            ("tmemd", tmemd_command()),
        ] {
            let mut buf = Vec::new();
            generate::write_completions_for(cmd, bin, shell, &mut buf);
            let dir = out.join("completions").join(shell.to_string());
            write(dir.join(completion_file(shell, bin)), &buf)?;
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tmem_cli::generate::{check, synopsis_text};

    #[test]
    fn tmemd_clap_definitions_are_consistent() {
        tmemd_command().debug_assert();
    }

    #[test]
    fn every_link_between_the_two_sets_resolves() {
        let pages = all_man_pages("2025-01-01");
        let names: Vec<String> = pages.iter().map(|p| p.name.clone()).collect();
        assert!(names.contains(&"tmemd".to_string()), "{names:?}");
        assert!(names.contains(&"tmem-metrics".to_string()), "{names:?}");
        assert_eq!(check::dangling_links(&pages, &names), None);
        // tmemd's page links tmem's, which must therefore be in the set.
        let without_tmem: Vec<String> = names.iter().filter(|n| *n != "tmem").cloned().collect();
        assert!(check::dangling_links(&pages, &without_tmem).is_some());
    }

    #[test]
    fn tmemd_synopsis_is_typeable() {
        let pages = all_man_pages("");
        let page = pages.iter().find(|p| p.name == "tmemd").unwrap();
        let text = synopsis_text(&page.typed, &page.synopsis);
        assert!(
            text.starts_with(
                "tmemd [-c FILE] [--socket PATH] [--control-socket PATH] [--mem-limit SIZE]"
            ),
            "{text}"
        );
        assert!(text.ends_with("[--no-durable]"), "{text}");
        let root = tmemd_command();
        for (i, item) in page.synopsis.iter().enumerate() {
            for alt in 0..item.alternatives.len() {
                let argv = check::fill(page, &root, Some((i, alt)));
                if let Err(e) = root.clone().try_get_matches_from(&argv) {
                    panic!("{argv:?} does not parse: {e}");
                }
            }
        }
        for s in [
            "EXIT STATUS",
            "/etc/tmemd/tmemd.toml",
            "/run/tmemd/control.sock",
        ] {
            assert!(page.roff.contains(s), "{s} missing");
        }
    }

    #[test]
    fn writes_pages_and_completions_where_the_package_takes_them() {
        let dir = std::env::temp_dir().join(format!("tmem-gen-docs-{}", std::process::id()));
        let files = write_all(&dir, "2025-01-01").unwrap();
        for f in [
            "man8/tmem.8",
            "man8/tmem-list.8",
            "man8/tmemd.8",
            "completions/bash/tmem",
            "completions/bash/tmemd",
            "completions/zsh/_tmem",
            "completions/fish/tmem.fish",
            "completions/fish/tmemd.fish",
        ] {
            assert!(files.contains(&dir.join(f)), "{f} not written: {files:?}");
        }
        let bash = std::fs::read_to_string(dir.join("completions/bash/tmemd")).unwrap();
        assert!(bash.contains("--mem-limit"), "{bash}");
        let zsh = std::fs::read_to_string(dir.join("completions/zsh/_tmem")).unwrap();
        assert!(zsh.starts_with("#compdef tmem"), "{zsh}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
