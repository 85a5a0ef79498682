//! Replays every checked-in fuzz input (`fuzz/corpus/<target>/` seeds and minimised corpus,
//! `fuzz/regressions/<target>/` crash reproducers) through the target bodies, so that plain
//! `cargo test` on stable Rust re-checks everything the fuzzers ever found.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

#[test]
fn every_corpus_and_regression_input_passes() {
    let mut failures = Vec::new();
    for (name, target) in tmem_fuzz_targets::TARGETS {
        let corpus = files(&fuzz_dir().join("corpus").join(name));
        assert!(
            corpus.len() >= 3,
            "fuzz/corpus/{name} has {} files; the seeds are missing",
            corpus.len()
        );
        let regressions = files(&fuzz_dir().join("regressions").join(name));
        for path in corpus.iter().chain(&regressions) {
            let data = std::fs::read(path).expect("readable corpus file");
            if catch_unwind(AssertUnwindSafe(|| target(&data))).is_err() {
                failures.push(path.display().to_string());
            }
        }
        println!(
            "{name}: {} corpus + {} regression inputs",
            corpus.len(),
            regressions.len()
        );
    }
    assert!(failures.is_empty(), "inputs that fail: {failures:#?}");
}

#[test]
fn every_fuzz_binary_has_a_target_body() {
    // fuzz/Cargo.toml and TARGETS must name the same targets, or a target goes unreplayed.
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz manifest");
    let bins: Vec<&str> = manifest
        .lines()
        .filter_map(|l| l.strip_prefix("name = \""))
        .filter_map(|l| l.strip_suffix('"'))
        .filter(|n| *n != "tmem-fuzz")
        .collect();
    let mut names: Vec<&str> = tmem_fuzz_targets::TARGETS.iter().map(|(n, _)| *n).collect();
    let mut bins_sorted = bins.clone();
    names.sort_unstable();
    bins_sorted.sort_unstable();
    assert_eq!(bins_sorted, names);
}
