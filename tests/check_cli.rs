#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `./build.sh check FILE` (the `surgeguard-check` binary): the same messages as Envoy's log,
//! exit 0 / 1; and the README's reference table is the one the parser uses.

use std::process::Command;

fn check(json: &str) -> (i32, String, String) {
    let dir = tempfile_dir();
    let file = dir.join("plugin.json");
    std::fs::write(&file, json).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_surgeguard-check")).arg(&file).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn tempfile_dir() -> std::path::PathBuf {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let d = std::env::temp_dir().join(format!("surgeguard-check-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn a_valid_configuration_exits_zero() {
    let (code, stdout, _) = check(r#"{"limits": [{"name": "a", "tokens_per_second": 5, "burst": 10}]}"#);
    assert_eq!(code, 0);
    assert!(stdout.contains("valid (1 classes, 0 rules, 1 limits, mode Enforce)"), "{stdout}");
}

#[test]
fn a_bad_configuration_exits_one_with_every_problem_on_its_own_line() {
    let (code, _, stderr) =
        check(r#"{"limits": [{"name": "a", "tokens_per_second": 5, "burst": 0, "tokens_per_secnd": 1}]}"#);
    assert_eq!(code, 1);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines[0], "limits[0].tokens_per_secnd: unknown field");
    assert_eq!(lines[1], "limits[0].burst: must be >= 1, got 0");
    assert!(lines[2].ends_with("refused: 2 problem(s)"), "{stderr}");
}

#[test]
fn a_missing_file_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_surgeguard-check")).arg("/nonexistent/x.json").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn the_readme_reference_table_is_the_one_the_parser_uses() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find("<!-- reference:start -->").expect("README has the reference start marker");
    let end = readme.find("<!-- reference:end -->").expect("README has the reference end marker");
    let table = readme[start + "<!-- reference:start -->".len()..end].trim();
    let out = Command::new(env!("CARGO_BIN_EXE_surgeguard-check")).arg("--reference").output().unwrap();
    let expected = String::from_utf8_lossy(&out.stdout);
    assert_eq!(table, expected.trim(), "regenerate with: cargo run -q --bin surgeguard-check -- --reference");
}
