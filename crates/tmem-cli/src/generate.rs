//! Man pages and shell completions, generated from the clap definitions in [`crate::cli`].

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::CommandFactory;

use crate::cli::Cli;
use crate::error::CliError;

/// Write `tmem.1` and `tmem-<subcommand>.1` for every subcommand into `dir`; returns the
/// files written.
pub fn write_man_pages(dir: &Path) -> Result<Vec<PathBuf>, CliError> {
    let err = |what: String| move |source| CliError::Output { what, source };
    std::fs::create_dir_all(dir).map_err(err(format!("cannot create {}", dir.display())))?;
    let cmd = Cli::command();
    let mut written = Vec::new();
    let mut pages = vec![("tmem".to_string(), cmd.clone())];
    add_subcommand_pages(&cmd, "tmem", &mut pages);
    for (name, page) in pages {
        let path = dir.join(format!("{name}.1"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(page)
            .render(&mut buf)
            .map_err(err(format!("cannot render {name}.1")))?;
        std::fs::write(&path, buf).map_err(err(format!("cannot write {}", path.display())))?;
        written.push(path);
    }
    Ok(written)
}

/// One page per subcommand, nested ones too (`tmem-generate-man`), since a page links to a
/// page for each of its subcommands. The page is named `tmem-list` but its synopsis says
/// `tmem list`, which is what one types.
fn add_subcommand_pages(
    cmd: &clap::Command,
    typed: &str,
    pages: &mut Vec<(String, clap::Command)>,
) {
    for sub in cmd.get_subcommands() {
        let typed = format!("{typed} {}", sub.get_name());
        let name = typed.replace(' ', "-");
        let page = sub.clone().name(name.clone()).bin_name(typed.clone());
        add_subcommand_pages(sub, &typed, pages);
        pages.push((name, page));
    }
}

/// Write the completion script for `shell` to `out`.
pub fn write_completions(shell: clap_complete::Shell, out: &mut dyn Write) {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "tmem", out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn man_pages_cover_every_subcommand() {
        let dir = std::env::temp_dir().join(format!("tmem-man-{}", std::process::id()));
        let files = write_man_pages(&dir).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for n in [
            "tmem.1",
            "tmem-list.1",
            "tmem-shared-auth.1",
            "tmem-top.1",
            "tmem-flush.1",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        }
        let list = std::fs::read_to_string(dir.join("tmem-list.1")).unwrap();
        assert!(list.contains(".TH"), "not a man page");
        // The synopsis is what one types.
        assert!(list.contains("\\fBtmem list\\fR"), "{list}");
        // Every page another page links to exists.
        for f in &files {
            let text = std::fs::read_to_string(f).unwrap();
            for word in text.split(|c: char| c.is_whitespace() || c == ',') {
                if let Some(page) = word.strip_suffix("(1)") {
                    let page = page
                        .replace("\\-", "-")
                        .replace("\\fB", "")
                        .replace("\\fR", "");
                    assert!(
                        dir.join(format!("{page}.1")).exists(),
                        "{} links to {page}(1), which was not written",
                        f.display()
                    );
                }
            }
        }
        assert!(list.contains("xen"), "format values documented");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn completions_know_the_subcommands() {
        let mut out = Vec::new();
        write_completions(clap_complete::Shell::Bash, &mut out);
        let s = String::from_utf8(out).unwrap();
        for sub in ["list", "freeze", "shared-auth", "top", "generate"] {
            assert!(s.contains(sub), "{sub} not in bash completion");
        }
    }
}
