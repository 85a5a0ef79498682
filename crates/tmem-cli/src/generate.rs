//! Man pages and shell completions, generated from clap definitions: `tmem`'s own ([`crate::cli`])
//! here, and any other command (tmemd's) through the same functions, so that the Debian
//! package's pages and `tmem generate` agree.
//!
//! Pages are in section 8: both programs are system administration commands in `/usr/sbin`.
//! clap_mangen writes most of each page; the synopsis is written here, because clap_mangen's
//! leaves out option values (`[-w|--weight]`) and shows a required choice as two optional
//! items, which cannot be typed as shown.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{ArgAction, Command, CommandFactory};
use clap_mangen::roff::{bold, italic, roman, Inline, Roff};

use crate::cli::Cli;
use crate::error::CliError;

/// The manual section of every page.
pub const MAN_SECTION: &str = "8";

/// A paragraph of an extra section: plain text, or a tagged item (a path, an exit status).
#[derive(Debug, Clone)]
pub enum Block {
    Para(String),
    Item { tag: String, text: String },
}

/// What a command's root page says beyond its clap definitions.
#[derive(Debug, Clone, Default)]
pub struct PageProse {
    /// Replaces clap's about text as DESCRIPTION when not empty: one paragraph each.
    pub description: Vec<String>,
    /// The heading under which the command's `after_help` text goes (default NOTES).
    pub after_help_heading: Option<&'static str>,
    /// Sections added after OPTIONS and SUBCOMMANDS, in order, e.g. FILES.
    pub sections: Vec<(&'static str, Vec<Block>)>,
    /// Pages outside this command's set for SEE ALSO, e.g. `tmemd(8)`. Each must exist
    /// wherever the pages are installed.
    pub see_also: Vec<String>,
}

/// One rendered page.
#[derive(Debug, Clone)]
pub struct ManPage {
    /// The page name: `tmem`, `tmem-list`, `tmem-generate-man`.
    pub name: String,
    /// The words typed to run it: `tmem generate man`.
    pub typed: String,
    /// The synopsis, also as data: the tests check it can be typed.
    pub synopsis: Vec<SynItem>,
    /// The roff source.
    pub roff: String,
}

impl ManPage {
    /// `tmem-list.8`.
    pub fn file_name(&self) -> String {
        format!("{}.{MAN_SECTION}", self.name)
    }
}

/// One word of a synopsis: typed as is, or a placeholder for a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Word {
    Literal(String),
    Placeholder(String),
}

/// One item of a synopsis: a choice of alternatives (usually one). Required with one
/// alternative prints bare (`-u UUID`); required with several as `(DOMAIN | -a)`; optional in
/// brackets (`[-w WEIGHT]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynItem {
    pub required: bool,
    pub alternatives: Vec<Alt>,
}

/// One alternative: the words of one argument (`-w WEIGHT`), or of the subcommand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alt {
    /// The clap id of the argument; `None` for the subcommand.
    pub arg: Option<String>,
    pub words: Vec<Word>,
}

/// Pages for `root` and every subcommand below it, nested ones too (a page links to a page
/// for each of its subcommands). `version` and `date` (YYYY-MM-DD, may be empty) go in each
/// page's header; `prose` goes on the root page, and its SEE ALSO list on every page.
pub fn man_pages(root: &Command, prose: &PageProse, version: &str, date: &str) -> Vec<ManPage> {
    let mut pages = Vec::new();
    let name = root.get_name().to_string();
    collect_pages(root, &name, None, prose, version, date, &mut pages);
    pages
}

fn collect_pages(
    cmd: &Command,
    typed: &str,
    parent: Option<&str>,
    prose: &PageProse,
    version: &str,
    date: &str,
    pages: &mut Vec<ManPage>,
) {
    let name = typed.replace(' ', "-");
    pages.push(render_page(cmd, &name, typed, parent, prose, version, date));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let typed_sub = format!("{typed} {}", sub.get_name());
        collect_pages(sub, &typed_sub, Some(&name), prose, version, date, pages);
    }
}

fn render_page(
    cmd: &Command,
    name: &str,
    typed: &str,
    parent: Option<&str>,
    prose: &PageProse,
    version: &str,
    date: &str,
) -> ManPage {
    let is_root = parent.is_none();
    // The page is named `tmem-list` (so the SUBCOMMANDS section links `tmem-list-*` pages), but
    // its synopsis says `tmem list`, which is what one types.
    let page_cmd = cmd
        .clone()
        .name(name.to_string())
        .bin_name(typed.to_string());
    let synopsis = synopsis_items(cmd);
    let man = clap_mangen::Man::new(page_cmd.clone())
        .section(MAN_SECTION)
        // An empty argument would vanish from the .TH line and shift the source into the
        // date's place.
        .date(if date.is_empty() { "\"\"" } else { date })
        .source(format!("tmemd {version}"));

    let section = |render: &dyn Fn(&mut dyn Write) -> std::io::Result<()>| {
        let mut buf = Vec::new();
        render(&mut buf).expect("rendering into memory does not fail");
        buf
    };
    let mut out = vec![
        section(&|w| man.render_title(w)),
        section(&|w| man.render_name_section(w)),
    ];
    let mut syn = Roff::new();
    syn.control("SH", ["SYNOPSIS"]);
    // Neither hyphenate nor stretch the synopsis: it is copied into a shell.
    syn.control("nh", []).control("ad", ["l"]);
    syn.text(synopsis_roff(typed, &synopsis));
    syn.control("ad", []).control("hy", []);
    out.push(syn.render().into_bytes());
    if is_root && !prose.description.is_empty() {
        let mut d = Roff::new();
        d.control("SH", ["DESCRIPTION"]);
        paragraphs(&mut d, &prose.description);
        out.push(d.render().into_bytes());
    } else {
        out.push(section(&|w| man.render_description_section(w)));
    }
    if page_cmd.get_arguments().any(|a| !a.is_hide_set()) {
        out.push(section(&|w| man.render_options_section(w)));
    }
    if page_cmd.has_subcommands() {
        out.push(section(&|w| man.render_subcommands_section(w)));
    }
    let mut extra = Roff::new();
    if let Some(text) = page_cmd.get_after_long_help().or(page_cmd.get_after_help()) {
        let heading = prose.after_help_heading.unwrap_or("NOTES");
        extra.control("SH", [heading]);
        // "Exit status: 0 success, ..." under EXIT STATUS says it twice.
        let text = text.to_string();
        let text = match text.split_once(": ") {
            Some((lead, rest)) if lead.eq_ignore_ascii_case(heading) => rest.to_string(),
            _ => text,
        };
        paragraphs(&mut extra, &[text]);
    }
    if is_root {
        for (heading, blocks) in &prose.sections {
            extra.control("SH", [*heading]);
            for b in blocks {
                match b {
                    Block::Para(p) => {
                        extra.control("PP", []).text([roman(p.as_str())]);
                    }
                    Block::Item { tag, text } => {
                        extra.control("TP", []).text([bold(tag.as_str())]);
                        extra.text([roman(text.as_str())]);
                    }
                }
            }
        }
    }
    let mut see: Vec<String> = parent
        .map(|p| format!("{p}({MAN_SECTION})"))
        .into_iter()
        .collect();
    see.extend(prose.see_also.iter().cloned());
    if !see.is_empty() {
        extra.control("SH", ["SEE ALSO"]);
        let mut line = Vec::new();
        for (i, s) in see.iter().enumerate() {
            if i > 0 {
                line.push(roman(", "));
            }
            // `tmemd(8)`: the name in bold, the section plain, as man-pages(7) writes them.
            match s.split_once('(') {
                Some((n, rest)) => {
                    line.push(bold(n));
                    line.push(roman(format!("({rest}")));
                }
                None => line.push(bold(s.as_str())),
            }
        }
        extra.text(line);
    }
    out.push(extra.render().into_bytes());

    // Each section rendered alone starts with roff's apostrophe preamble; keep the first.
    let preamble = Roff::new().render();
    let mut roff = String::new();
    for (i, part) in out.into_iter().enumerate() {
        let part = String::from_utf8(part).expect("roff from UTF-8 text is UTF-8");
        if i == 0 {
            roff.push_str(&part);
        } else {
            roff.push_str(part.strip_prefix(&preamble).unwrap_or(&part));
        }
    }
    ManPage {
        name: name.to_string(),
        typed: typed.to_string(),
        synopsis,
        roff,
    }
}

/// Paragraphs separated by blank lines; lines inside one are joined by roff.
fn paragraphs(roff: &mut Roff, texts: &[String]) {
    let mut first = true;
    for text in texts {
        for para in text.split("\n\n") {
            if !first {
                roff.control("PP", []);
            }
            first = false;
            roff.text([roman(para.trim())]);
        }
    }
}

/// The synopsis of `cmd` as data: required choices first, then options, then operands, then
/// the subcommand. `--help` and `--version` are left out (OPTIONS lists them).
pub fn synopsis_items(cmd: &Command) -> Vec<SynItem> {
    let shown = |a: &&clap::Arg| {
        !a.is_hide_set()
            && !matches!(
                a.get_action(),
                ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
            )
    };
    let mut items = Vec::new();
    let mut grouped = Vec::new();
    for g in cmd.get_groups() {
        let mut g = g.clone();
        if !g.is_required_set() || g.is_multiple() {
            continue;
        }
        let members: Vec<&clap::Arg> = g
            .get_args()
            .filter_map(|id| cmd.get_arguments().find(|a| a.get_id() == id))
            .filter(shown)
            .collect();
        // Operands first: `(DOMAIN | -a)`.
        let mut members = members;
        members.sort_by_key(|a| !a.is_positional());
        grouped.extend(members.iter().map(|a| a.get_id().clone()));
        items.push(SynItem {
            required: true,
            alternatives: members.iter().map(|a| arg_alt(a)).collect(),
        });
    }
    let ungrouped = |a: &&clap::Arg| shown(a) && !grouped.contains(a.get_id());
    for positional in [false, true] {
        for a in cmd
            .get_arguments()
            .filter(ungrouped)
            .filter(|a| a.is_positional() == positional)
        {
            items.push(SynItem {
                required: a.is_required_set(),
                alternatives: vec![arg_alt(a)],
            });
        }
    }
    if cmd.has_subcommands() {
        items.push(SynItem {
            required: cmd.is_subcommand_required_set(),
            alternatives: vec![Alt {
                arg: None,
                words: vec![Word::Placeholder(
                    cmd.get_subcommand_value_name()
                        .unwrap_or("COMMAND")
                        .to_string(),
                )],
            }],
        });
    }
    items
}

/// `-w WEIGHT`, `--json`, `DOMAIN`, `FILE...`.
fn arg_alt(a: &clap::Arg) -> Alt {
    Alt {
        arg: Some(a.get_id().to_string()),
        words: arg_words(a),
    }
}

fn arg_words(a: &clap::Arg) -> Vec<Word> {
    let value = || {
        let name = a
            .get_value_names()
            .and_then(|n| n.first())
            .map(|n| n.to_string())
            .unwrap_or_else(|| a.get_id().as_str().to_uppercase());
        let many = a
            .get_num_args()
            .is_some_and(|r| r.max_values() > 1 && a.is_positional());
        Word::Placeholder(if many { format!("{name}...") } else { name })
    };
    if a.is_positional() {
        return vec![value()];
    }
    let flag = match (a.get_short(), a.get_long()) {
        (Some(s), _) => format!("-{s}"),
        (None, Some(l)) => format!("--{l}"),
        (None, None) => a.get_id().to_string(),
    };
    let mut words = vec![Word::Literal(flag)];
    if a.get_action().takes_values() {
        words.push(value());
    }
    words
}

/// The synopsis as roff: literals bold, placeholders italic.
fn synopsis_roff(typed: &str, items: &[SynItem]) -> Vec<Inline> {
    let mut line = vec![bold(typed)];
    for item in items {
        line.push(roman(" "));
        let many = item.alternatives.len() > 1;
        let (open, close) = match (item.required, many) {
            (true, false) => ("", ""),
            (true, true) => ("(", ")"),
            (false, _) => ("[", "]"),
        };
        line.push(roman(open));
        for (i, alt) in item.alternatives.iter().enumerate() {
            if i > 0 {
                line.push(roman(" | "));
            }
            for (j, w) in alt.words.iter().enumerate() {
                if j > 0 {
                    line.push(roman(" "));
                }
                line.push(match w {
                    Word::Literal(s) => bold(s.as_str()),
                    Word::Placeholder(s) => italic(s.as_str()),
                });
            }
        }
        line.push(roman(close));
    }
    line
}

/// The synopsis as plain text, as the rendered page shows it.
pub fn synopsis_text(typed: &str, items: &[SynItem]) -> String {
    synopsis_roff(typed, items)
        .into_iter()
        .map(|i| match i {
            Inline::Roman(s) | Inline::Bold(s) | Inline::Italic(s) => s,
            Inline::LineBreak => "\n".into(),
        })
        .collect()
}

/// What `tmem`'s root page says beyond its clap definitions.
pub fn tmem_prose() -> PageProse {
    let item = |tag: &str, text: &str| Block::Item {
        tag: tag.into(),
        text: text.into(),
    };
    PageProse {
        description: Vec::new(),
        after_help_heading: Some("EXIT STATUS"),
        sections: vec![
            (
                "ENVIRONMENT",
                vec![item(
                    "TMEM_CONTROL_SOCKET",
                    "The control socket, when --socket is not given.",
                )],
            ),
            (
                "FILES",
                vec![item(
                    tmem_control::DEFAULT_CONTROL_SOCKET,
                    "tmemd's control socket (root only, unless tmemd's configuration admits \
                     other users or read-only peers).",
                )],
            ),
        ],
        see_also: vec![format!("tmemd({MAN_SECTION})")],
    }
}

/// `tmem`'s pages: `tmem.8` and one per subcommand.
pub fn tmem_man_pages(date: &str) -> Vec<ManPage> {
    man_pages(
        &Cli::command(),
        &tmem_prose(),
        env!("CARGO_PKG_VERSION"),
        date,
    )
}

/// Write `pages` into `dir` (created if missing); returns the files written.
pub fn write_man_pages(dir: &Path, pages: &[ManPage]) -> Result<Vec<PathBuf>, CliError> {
    let err = |what: String| move |source| CliError::Output { what, source };
    std::fs::create_dir_all(dir).map_err(err(format!("cannot create {}", dir.display())))?;
    let mut written = Vec::new();
    for page in pages {
        let path = dir.join(page.file_name());
        std::fs::write(&path, &page.roff)
            .map_err(err(format!("cannot write {}", path.display())))?;
        written.push(path);
    }
    Ok(written)
}

/// Write the completion script of `cmd` (run as `bin`) for `shell` to `out`.
pub fn write_completions_for(
    mut cmd: Command,
    bin: &str,
    shell: clap_complete::Shell,
    out: &mut dyn Write,
) {
    clap_complete::generate(shell, &mut cmd, bin, out);
}

/// Write `tmem`'s completion script for `shell` to `out`.
pub fn write_completions(shell: clap_complete::Shell, out: &mut dyn Write) {
    write_completions_for(Cli::command(), "tmem", shell, out);
}

/// Test helpers shared with the package's generator: checks every page set must pass.
pub mod check {
    use super::*;

    /// Every `name(8)` a page mentions is one of `existing` (page names). Returns the first
    /// dangling reference as "page -> name(8)".
    pub fn dangling_links(pages: &[ManPage], existing: &[String]) -> Option<String> {
        let suffix = format!("({MAN_SECTION})");
        for p in pages {
            // Undo roff's escapes and fonts, then look at each word.
            let text = p
                .roff
                .replace("\\-", "-")
                .replace("\\fB", "")
                .replace("\\fI", "")
                .replace("\\fR", "");
            for word in text.split(|c: char| c.is_whitespace() || c == ',') {
                if let Some(name) = word.strip_suffix(suffix.as_str()) {
                    if !existing.iter().any(|e| e == name) {
                        return Some(format!("{} -> {word}", p.name));
                    }
                }
            }
        }
        None
    }

    /// Arguments that fill the synopsis's required items (first alternative) plus, if given,
    /// alternative `alt` of optional item `i`. A placeholder gets its argument's first
    /// possible value, or `1`; the subcommand placeholder gets `SUB --help`.
    pub fn fill(page: &ManPage, root: &Command, optional: Option<(usize, usize)>) -> Vec<String> {
        let mut argv: Vec<String> = page.typed.split(' ').map(String::from).collect();
        let cmd = argv[1..].iter().fold(root.clone(), |c, name| {
            c.find_subcommand(name)
                .expect("typed words are subcommands")
                .clone()
        });
        for (i, item) in page.synopsis.iter().enumerate() {
            let alt = match optional {
                _ if item.required => 0,
                Some((oi, alt)) if oi == i => alt,
                _ => continue,
            };
            let alt = &item.alternatives[alt];
            for w in &alt.words {
                match (w, &alt.arg) {
                    (Word::Literal(s), _) => argv.push(s.clone()),
                    (Word::Placeholder(_), Some(id)) => {
                        let arg = cmd.get_arguments().find(|a| a.get_id() == id.as_str());
                        let value = arg
                            .and_then(|a| a.get_possible_values().first().cloned())
                            .map(|v| v.get_name().to_string())
                            .unwrap_or_else(|| "1".into());
                        argv.push(value);
                    }
                    (Word::Placeholder(_), None) => {
                        let sub = cmd.get_subcommands().next().expect("has subcommands");
                        argv.push(sub.get_name().to_string());
                        argv.push("--help".into());
                    }
                }
            }
        }
        argv
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    fn names(pages: &[ManPage]) -> Vec<String> {
        pages.iter().map(|p| p.name.clone()).collect()
    }

    #[test]
    fn a_page_for_every_subcommand_and_no_dangling_links() {
        let pages = tmem_man_pages("2025-01-01");
        let names = names(&pages);
        for n in [
            "tmem",
            "tmem-list",
            "tmem-shared-auth",
            "tmem-top",
            "tmem-flush",
            "tmem-metrics",
            "tmem-generate",
            "tmem-generate-man",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        }
        // tmemd(8) comes with the daemon; everything else must be a page of this set.
        let mut existing = names.clone();
        existing.push("tmemd".into());
        assert_eq!(check::dangling_links(&pages, &existing), None);
        // And the check can fail.
        assert!(check::dangling_links(&pages, &names).is_some_and(|d| d.contains("tmemd(8)")));

        let list = &pages.iter().find(|p| p.name == "tmem-list").unwrap().roff;
        assert!(list.starts_with(".ie"), "{list}");
        assert!(
            list.contains(".TH tmem-list 8 2025-01-01 \"tmemd "),
            "{list}"
        );
        assert_eq!(
            list.matches(".ie \\n(.g").count(),
            1,
            "one preamble: {list}"
        );
        assert!(list.contains("xen"), "format values documented");
        assert!(
            list.contains(".SH \"SEE ALSO\"\n\\fBtmem\\fR(8), \\fBtmemd\\fR(8)"),
            "{list}"
        );
        let root = &pages[0].roff;
        assert!(
            root.contains(".SH \"EXIT STATUS\"\n0 success, 1 "),
            "{root}"
        );
        assert!(root.contains("TMEM_CONTROL_SOCKET"), "{root}");
        assert!(root.contains("\\fBtmem\\-list\\fR(8)") || root.contains("tmem\\-list(8)"));
    }

    #[test]
    fn synopses_say_what_to_type() {
        let pages = tmem_man_pages("");
        let title = &pages[0].roff;
        assert!(title.contains(".TH tmem 8 \"\" \"tmemd "), "{title}");
        let syn = |name: &str| {
            let p = pages.iter().find(|p| p.name == name).unwrap();
            synopsis_text(&p.typed, &p.synopsis)
        };
        assert_eq!(syn("tmem"), "tmem [--socket PATH] COMMAND");
        assert_eq!(
            syn("tmem-set"),
            "tmem set (DOMAIN | -a) [-w WEIGHT] [-c CAP] [-p 0|1]"
        );
        assert_eq!(
            syn("tmem-shared-auth"),
            "tmem shared-auth (DOMAIN | -a) -u UUID -A 0|1"
        );
        assert_eq!(
            syn("tmem-list"),
            "tmem list [-a] [-l] [--format FORMAT] [--json] [DOMAIN]"
        );
        assert_eq!(syn("tmem-flush"), "tmem flush --kib N");
        assert_eq!(syn("tmem-destroy"), "tmem destroy DOMAIN");
        assert_eq!(syn("tmem-generate"), "tmem generate COMMAND");
        assert_eq!(
            syn("tmem-generate-completions"),
            "tmem generate completions SHELL"
        );
        // The roff has the same words, literals in bold, placeholders in italic, dashes that
        // stay ASCII when copied.
        let set = &pages.iter().find(|p| p.name == "tmem-set").unwrap().roff;
        assert!(
            set.contains(
                "\\fBtmem set\\fR (\\fIDOMAIN\\fR | \\fB\\-a\\fR) [\\fB\\-w\\fR \\fIWEIGHT\\fR]"
            ),
            "{set}"
        );
    }

    #[test]
    fn every_synopsis_parses_when_filled_in() {
        let root = Cli::command();
        for page in tmem_man_pages("") {
            let mut tries = vec![check::fill(&page, &root, None)];
            for (i, item) in page.synopsis.iter().enumerate() {
                for alt in 0..item.alternatives.len() {
                    if !item.required {
                        tries.push(check::fill(&page, &root, Some((i, alt))));
                    }
                }
            }
            for argv in tries {
                match root.clone().try_get_matches_from(&argv) {
                    Ok(_) => {}
                    Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => {}
                    Err(e) => panic!("{}: {argv:?} does not parse: {e}", page.name),
                }
            }
        }
        // The check can fail: a synopsis that forgot a required option.
        let page = tmem_man_pages("")
            .into_iter()
            .find(|p| p.name == "tmem-shared-auth")
            .unwrap();
        let mut broken = page.clone();
        broken
            .synopsis
            .retain(|i| i.alternatives[0].words.first() != Some(&Word::Literal("-u".into())));
        let argv = check::fill(&broken, &root, None);
        assert!(
            root.clone().try_get_matches_from(&argv).is_err(),
            "{argv:?}"
        );
    }

    #[test]
    fn pages_render_with_man() {
        // man(1) is not everywhere; where it is, the page renders without warnings and the
        // synopsis reads as typed.
        if std::process::Command::new("man")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("man not installed; skipped");
            return;
        }
        let dir = std::env::temp_dir().join(format!("tmem-man-{}", std::process::id()));
        let files = write_man_pages(&dir, &tmem_man_pages("2025-01-01")).unwrap();
        let set = files.iter().find(|f| f.ends_with("tmem-set.8")).unwrap();
        let out = std::process::Command::new("man")
            .args(["--warnings", "-l"])
            .arg(set)
            .env("MANWIDTH", "100")
            .env("MAN_KEEP_FORMATTING", "")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let errs = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{errs}");
        assert!(errs.trim().is_empty(), "warnings: {errs}");
        assert!(
            text.contains("tmem set (DOMAIN | -a) [-w WEIGHT] [-c CAP] [-p 0|1]"),
            "{text}"
        );
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
