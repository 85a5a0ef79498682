//! memhog on a small size: every pass verifies, the output is JSON lines, and a corrupted
//! page is reported and fails the run.

use std::process::Command;

fn memhog(args: &[&str]) -> (i32, Vec<serde_json::Value>) {
    let out = Command::new(env!("CARGO_BIN_EXE_memhog"))
        .args(args)
        .output()
        .expect("run memhog");
    let lines = String::from_utf8(out.stdout)
        .expect("utf-8 output")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    (out.status.code().expect("exit code"), lines)
}

#[test]
fn fills_verifies_and_reports_each_pass() {
    for extra in [&[][..], &["--rewrite", "--order", "random"][..]] {
        let mut args = vec!["--mib", "4", "--passes", "3"];
        args.extend_from_slice(extra);
        let (code, lines) = memhog(&args);
        assert_eq!(code, 0, "{lines:?}");
        let passes: Vec<_> = lines.iter().filter(|l| l.get("pass").is_some()).collect();
        assert_eq!(passes.len(), 4, "fill + 3 verify passes: {lines:?}");
        for p in &passes {
            assert_eq!(p["pages"], 1024);
            assert_eq!(p["errors"], 0);
            assert!(p["pages_per_sec"].as_f64().unwrap() > 0.0);
        }
        let s = &lines.last().unwrap()["summary"];
        assert_eq!(
            (s["pages"].as_u64(), s["errors"].as_u64()),
            (Some(1024), Some(0))
        );
    }
}

#[test]
fn a_corrupted_page_is_reported_and_fails_the_run() {
    let (code, lines) = memhog(&["--mib", "1", "--passes", "2", "--corrupt-page", "77"]);
    assert_eq!(code, 1);
    let errs: Vec<_> = lines.iter().filter(|l| l["error"] == "mismatch").collect();
    assert_eq!(errs.len(), 2, "once per pass: {lines:?}");
    assert_eq!(errs[0]["page"], 77);
    assert_eq!(errs[0]["offset"], 17 * 8);
    assert_eq!(lines.last().unwrap()["summary"]["errors"], 2);
}

#[test]
fn compressible_content_still_verifies_every_byte() {
    let (code, lines) = memhog(&[
        "--mib",
        "2",
        "--passes",
        "2",
        "--rewrite",
        "--random-bytes",
        "512",
    ]);
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(lines[0]["start"]["random_bytes"], 512);
    assert_eq!(lines.last().unwrap()["summary"]["errors"], 0);
    // With 8 random bytes per page, word 17 lies in the repeated part: still checked.
    let (code, lines) = memhog(&[
        "--mib",
        "1",
        "--passes",
        "1",
        "--random-bytes",
        "8",
        "--corrupt-page",
        "5",
    ]);
    assert_eq!(code, 1, "{lines:?}");
    let err = lines
        .iter()
        .find(|l| l["error"] == "mismatch")
        .expect("a mismatch line");
    assert_eq!(
        (err["page"].as_u64(), err["offset"].as_u64()),
        (Some(5), Some(17 * 8))
    );
}

#[test]
fn bad_arguments_are_a_usage_error() {
    for args in [
        &[][..],
        &["--mib", "x"][..],
        &["--mib", "1", "--order", "up"][..],
        &["--mib", "1", "--random-bytes", "0"][..],
        &["--mib", "1", "--random-bytes", "12"][..],
        &["--mib", "1", "--random-bytes", "4104"][..],
    ] {
        let (code, lines) = memhog(args);
        assert_eq!((code, lines.len()), (2, 0), "{args:?}");
    }
}
