//! Pages to measure page compression on: what `cargo bench -p tmem-store --bench capacity`
//! stores and what `tmem-guest bench --content mixed` puts through a real tmemd.
//!
//! * [`Corpus::mixed`]: pages of the files of the machine it runs on (executables and shared
//!   libraries, text, logs) with zero, same-filled and random pages, in fixed proportions
//!   ([`Kind`]), shuffled with a fixed seed: the same machine gives the same pages in the same
//!   order, so numbers measured on it stay comparable.
//! * [`incompressible`]: random pages only.
//!
//! It only reads, and of each file only the pages it takes; a file it cannot read is passed
//! over. It must never write, need a privilege, or depend on more than std.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub const PAGE_SIZE: usize = 4096;

/// Shares of the mixed corpus, in percent of its pages; the rest is random.
const EXECUTABLE_PCT: usize = 40;
const TEXT_PCT: usize = 20;
const LOG_PCT: usize = 10;
const ZERO_PCT: usize = 15;
const SAME_FILLED_PCT: usize = 5;

/// Pages taken from one file at most, spread over it.
const PAGES_PER_FILE: usize = 8;

const MIXED_SEED: u64 = 0x1234_5678_9abc_def1;
const INCOMPRESSIBLE_SEED: u64 = 0xfeed_f00d_dead_beef;

/// A page, aligned as a page frame is.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(C, align(4096))]
pub struct AlignedPage(pub [u8; PAGE_SIZE]);

impl AlignedPage {
    pub const ZERO: AlignedPage = AlignedPage([0; PAGE_SIZE]);
}

impl std::fmt::Debug for AlignedPage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("AlignedPage")
            .field(&format_args!("{:02x?}..", &self.0[..16]))
            .finish()
    }
}

/// Whether every 8 bytes of `p` are the same word (tmemd's *same-filled* rule, zram's too;
/// an all-zero page is one): such a page is kept as metadata only, never compressed.
pub fn same_filled(p: &[u8; PAGE_SIZE]) -> bool {
    let w = &p[..8];
    p.chunks_exact(8).all(|c| c == w)
}

/// Where a page of the mixed corpus came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// An executable or a shared library (`/usr/bin`, `/usr/sbin`, `*.so*` under `/usr/lib`):
    /// 40% of the pages.
    Executable,
    /// Text (`/usr/share/doc`, `/usr/include`, `/usr/share`, not `.gz`, `.png`, `.mo`): 20%.
    Text,
    /// A log (`/var/log`, not `.gz`): up to 10%.
    Log,
    /// Text (`/usr/share/common-licenses`, `/usr/share/doc`) for the logs the machine lacks.
    LogStandIn,
    /// All zero: 15%.
    Zero,
    /// One non-zero 8-byte word repeated: 5%.
    SameFilled,
    /// Random bytes: the rest (10% when the machine has files enough).
    Random,
}

/// The mixed corpus: `pages[i]` came from `kinds[i]`.
#[derive(Debug, Clone)]
pub struct Corpus {
    pub pages: Vec<AlignedPage>,
    pub kinds: Vec<Kind>,
}

impl Corpus {
    /// `n` pages of this machine's files and of made-up pages (see [`Kind`]), shuffled.
    ///
    /// Files are walked in sorted order and each gives at most 8 whole pages spread over it,
    /// so the corpus depends only on what the machine holds (a log that grows changes it).
    pub fn mixed(n: usize) -> Corpus {
        Corpus::mixed_under(Path::new("/"), n)
    }

    /// [`Corpus::mixed`] with every directory it reads taken below `root` instead of `/`.
    pub fn mixed_under(root: &Path, n: usize) -> Corpus {
        let under = |dirs: &[&str]| -> Vec<PathBuf> { dirs.iter().map(|d| root.join(d)).collect() };
        let (bin, sbin) = (root.join("usr/bin"), root.join("usr/sbin"));
        let bins = file_pages(
            &under(&["usr/bin", "usr/sbin", "usr/lib/x86_64-linux-gnu", "usr/lib"]),
            n * EXECUTABLE_PCT / 100,
            &|p| {
                let rel = p.strip_prefix(root).unwrap_or(p);
                p.starts_with(&bin) || p.starts_with(&sbin) || rel.to_string_lossy().contains(".so")
            },
        );
        let text = file_pages(
            &under(&["usr/share/doc", "usr/include", "usr/share"]),
            n * TEXT_PCT / 100,
            &|p| {
                let s = p.to_string_lossy();
                !s.ends_with(".gz") && !s.ends_with(".png") && !s.ends_with(".mo")
            },
        );
        let want_logs = n * LOG_PCT / 100;
        let logs = file_pages(&under(&["var/log"]), want_logs, &|p| {
            !p.to_string_lossy().ends_with(".gz")
        });
        // Few logs here: text instead (the last pages of the first `n` of these).
        let stand_ins = if logs.len() < want_logs {
            let more = file_pages(
                &under(&["usr/share/common-licenses", "usr/share/doc"]),
                n,
                &|_| true,
            );
            more.into_iter()
                .rev()
                .take(want_logs - logs.len())
                .collect()
        } else {
            Vec::new()
        };

        let mut pages = Vec::with_capacity(n);
        let mut kinds = Vec::with_capacity(n);
        for (kind, from) in [
            (Kind::Executable, bins),
            (Kind::Text, text),
            (Kind::Log, logs),
            (Kind::LogStandIn, stand_ins),
        ] {
            kinds.resize(kinds.len() + from.len(), kind);
            pages.extend(from);
        }
        for _ in 0..n * ZERO_PCT / 100 {
            pages.push(AlignedPage::ZERO);
            kinds.push(Kind::Zero);
        }
        for i in 0..n * SAME_FILLED_PCT / 100 {
            let w = 0x0101_0101_0101_0101u64.wrapping_mul(i as u64 % 255 + 1);
            pages.push(word_page(w));
            kinds.push(Kind::SameFilled);
        }
        let mut r = Rng(MIXED_SEED);
        while pages.len() < n {
            pages.push(random_page(&mut r));
            kinds.push(Kind::Random);
        }
        for i in (1..pages.len()).rev() {
            let j = (r.next() % (i as u64 + 1)) as usize;
            pages.swap(i, j);
            kinds.swap(i, j);
        }
        Corpus { pages, kinds }
    }

    /// How many pages are of `kind`.
    pub fn count(&self, kind: Kind) -> usize {
        self.kinds.iter().filter(|k| **k == kind).count()
    }

    /// What the corpus is made of, in one line.
    pub fn describe(&self) -> String {
        let n = self.pages.len();
        let c = |k| self.count(k);
        let stand_ins = match c(Kind::LogStandIn) {
            0 => String::new(),
            s => format!(" (+ {s} of text for the missing logs)"),
        };
        format!(
            "{n} pages: {} of executables/libraries, {} of text, {} of logs{stand_ins}, {} zero, {} same-filled, {} random",
            c(Kind::Executable),
            c(Kind::Text),
            c(Kind::Log),
            c(Kind::Zero),
            c(Kind::SameFilled),
            c(Kind::Random),
        )
    }
}

/// `n` random pages (a fixed seed: the same pages every time).
pub fn incompressible(n: usize) -> Vec<AlignedPage> {
    let mut r = Rng(INCOMPRESSIBLE_SEED);
    (0..n).map(|_| random_page(&mut r)).collect()
}

/// xorshift64: fast, and the same sequence on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn word_page(w: u64) -> AlignedPage {
    let mut a = AlignedPage::ZERO;
    for c in a.0.chunks_exact_mut(8) {
        c.copy_from_slice(&w.to_le_bytes());
    }
    a
}

fn random_page(r: &mut Rng) -> AlignedPage {
    let mut a = AlignedPage::ZERO;
    for c in a.0.chunks_exact_mut(8) {
        c.copy_from_slice(&r.next().to_le_bytes());
    }
    a
}

/// Pages of the regular files under `dirs` (sorted walk, at most [`PAGES_PER_FILE`] whole
/// pages per file spread over it) until `want` pages; fewer if there are fewer. Only the
/// pages taken are read.
fn file_pages(dirs: &[PathBuf], want: usize, filter: &dyn Fn(&Path) -> bool) -> Vec<AlignedPage> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = dirs.iter().rev().cloned().collect();
    while let Some(p) = stack.pop() {
        if out.len() >= want {
            break;
        }
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if md.is_dir() {
            let Ok(rd) = std::fs::read_dir(&p) else {
                continue;
            };
            let mut v: Vec<_> = rd.flatten().map(|e| e.path()).collect();
            v.sort();
            v.reverse();
            stack.extend(v);
            continue;
        }
        if !md.is_file() || md.len() < PAGE_SIZE as u64 || !filter(&p) {
            continue;
        }
        let Ok(f) = File::open(&p) else {
            continue;
        };
        let pages = (md.len() / PAGE_SIZE as u64) as usize;
        let step = pages.div_ceil(PAGES_PER_FILE).max(1);
        for i in (0..pages).step_by(step) {
            if out.len() >= want {
                break;
            }
            let mut a = AlignedPage::ZERO;
            // A file cut short since its length was read: keep what was read.
            if f.read_exact_at(&mut a.0, (i * PAGE_SIZE) as u64).is_err() {
                break;
            }
            out.push(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory tree made for a test, removed when dropped.
    struct Tree(PathBuf);

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// ASCII text, distinct for every (file, page), never a zero or same-filled page.
    fn write_file(root: &Path, rel: &str, pages: usize) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let mut data = Vec::with_capacity(pages * PAGE_SIZE);
        let mut line = 0;
        while data.len() < pages * PAGE_SIZE {
            data.extend(format!("{rel} line {line}: some words of a file\n").bytes());
            line += 1;
        }
        data.truncate(pages * PAGE_SIZE);
        std::fs::write(p, data).unwrap();
    }

    /// Files for 60 x 8 executable pages, 30 x 8 text pages, 3 log pages and plenty of
    /// stand-in text; plus files that must be passed over.
    fn tree(tag: &str) -> Tree {
        let root = std::env::temp_dir().join(format!("tmem-corpus-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for i in 0..30 {
            write_file(&root, &format!("usr/bin/prog{i:02}"), 16);
            write_file(&root, &format!("usr/lib/libx{i:02}.so.1"), 16);
            write_file(&root, &format!("usr/include/h{i:02}.h"), 8);
        }
        write_file(&root, "usr/lib/notes.txt", 20);
        write_file(&root, "usr/bin/tiny", 0);
        write_file(&root, "usr/include/big.gz", 20);
        write_file(&root, "var/log/syslog", 3);
        write_file(&root, "var/log/old.gz", 20);
        for i in 0..20 {
            write_file(&root, &format!("usr/share/common-licenses/L{i:02}"), 8);
        }
        Tree(root)
    }

    #[test]
    fn two_builds_are_equal_and_every_page_is_a_page() {
        let t = tree("twice");
        let a = Corpus::mixed_under(&t.0, 1000);
        let b = Corpus::mixed_under(&t.0, 1000);
        assert_eq!(a.pages.len(), 1000);
        assert_eq!(a.kinds.len(), 1000);
        assert!(a.pages == b.pages && a.kinds == b.kinds);
        assert_eq!(std::mem::size_of::<AlignedPage>(), PAGE_SIZE);
        assert!(a.pages.iter().all(|p| p.0.len() == PAGE_SIZE));
        // Shuffled: not the kinds in build order.
        assert_ne!(a.kinds[..400], [Kind::Executable; 400]);
        assert_eq!(incompressible(64), incompressible(64));
    }

    #[test]
    fn proportions_are_as_stated() {
        let t = tree("shares");
        let n = 1000;
        let c = Corpus::mixed_under(&t.0, n);
        assert_eq!(c.count(Kind::Executable), 400);
        assert_eq!(c.count(Kind::Text), 200);
        assert_eq!((c.count(Kind::Log), c.count(Kind::LogStandIn)), (3, 97));
        assert_eq!(c.count(Kind::Zero), 150);
        assert_eq!(c.count(Kind::SameFilled), 50);
        assert_eq!(c.count(Kind::Random), 100);
        // The bytes agree with the kinds (the tree's files are ASCII text, never same-filled).
        let zero = c.pages.iter().filter(|p| p.0 == [0; PAGE_SIZE]).count();
        let same = c.pages.iter().filter(|p| same_filled(&p.0)).count();
        let random = c
            .pages
            .iter()
            .filter(|p| !same_filled(&p.0) && p.0.iter().any(|b| *b >= 0x80))
            .count();
        assert_eq!((zero, same - zero, random), (150, 50, 100));
        for (p, k) in c.pages.iter().zip(&c.kinds) {
            assert_eq!(
                same_filled(&p.0),
                matches!(k, Kind::Zero | Kind::SameFilled),
                "{k:?}"
            );
        }
        // Files that must be passed over were: no page of a .gz, a non-library under
        // usr/lib, a file shorter than a page.
        let from = |name: &str| {
            let name = name.as_bytes();
            c.pages
                .iter()
                .filter(|p| p.0.windows(name.len()).any(|w| w == name))
                .count()
        };
        assert_eq!(
            from("usr/include/big.gz") + from("var/log/old.gz") + from("usr/lib/notes"),
            0
        );
        // At most 8 pages of a file, spread over it (a 16-page file: every other page).
        assert_eq!(from("usr/bin/prog00 "), 8);
        assert_eq!(
            c.describe(),
            "1000 pages: 400 of executables/libraries, 200 of text, 3 of logs \
             (+ 97 of text for the missing logs), 150 zero, 50 same-filled, 100 random"
        );
    }

    #[test]
    fn this_machines_corpus_has_the_stated_shares_and_is_deterministic() {
        let (a, b) = (Corpus::mixed(2000), Corpus::mixed(2000));
        assert_eq!(a.pages.len(), 2000);
        assert_eq!(a.kinds, b.kinds);
        // Logs may grow between the two builds; nothing else changes.
        for (i, k) in a.kinds.iter().enumerate() {
            assert!(
                *k == Kind::Log || a.pages[i] == b.pages[i],
                "page {i} ({k:?}) differs"
            );
        }
        assert_eq!((a.count(Kind::Zero), a.count(Kind::SameFilled)), (300, 100));
        assert!(a.count(Kind::Executable) <= 800 && a.count(Kind::Text) <= 400);
        assert!(a.count(Kind::Log) + a.count(Kind::LogStandIn) <= 200);
    }

    #[test]
    fn same_filled_is_every_word_alike() {
        assert!(same_filled(&AlignedPage::ZERO.0));
        let mut p = word_page(0x0102_0304_0506_0708);
        assert!(same_filled(&p.0));
        p.0[PAGE_SIZE - 1] ^= 1;
        assert!(!same_filled(&p.0));
    }
}
