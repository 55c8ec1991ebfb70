//! `tally campaign check`: exit codes, and output that names the field and the fix.

use std::path::Path;
use std::process::Output;

use crate::support::tally_bin;

/// The documented example campaign, which must be valid.
const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../docs/examples/campaign.toml"
);

fn run_check(file: &Path, extra: &[&str]) -> Output {
    std::process::Command::new(tally_bin())
        .args(["campaign", "check"])
        .arg(file)
        .args(extra)
        .output()
        .expect("running tally campaign check")
}

#[track_caller]
fn assert_exit(output: &Output, code: i32) -> (String, String) {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(code),
        "expected exit code {code}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    (stdout, stderr)
}

/// The example with `from` replaced by `to`, written to `name` in a fresh directory.
fn variant(dir: &Path, name: &str, from: &str, to: &str) -> std::path::PathBuf {
    let example = std::fs::read_to_string(EXAMPLE).unwrap();
    assert!(example.contains(from), "the example holds {from:?}");
    let path = dir.join(name);
    std::fs::write(&path, example.replace(from, to)).unwrap();
    path
}

#[test]
fn the_example_is_valid() {
    let (stdout, _) = assert_exit(&run_check(Path::new(EXAMPLE), &[]), 0);
    assert!(
        stdout.contains("campaign spring-2026 is valid: 50000 GIFT in the pool"),
        "{stdout}"
    );
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let (stdout, _) = assert_exit(&run_check(Path::new(EXAMPLE), &["--json"]), 0);
    assert_eq!(stdout.trim(), "[]");
}

#[test]
fn violations_name_the_field_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = variant(
        dir.path(),
        "broken.toml",
        "read_timeout_ms = 1500",
        "read_timeout_ms = 150",
    );
    let path = {
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("inventory = 50000", "inventory = 10");
        std::fs::write(&path, text).unwrap();
        path
    };
    let (stdout, _) = assert_exit(&run_check(&path, &[]), 1);
    assert!(
        stdout.contains("inventory: inventory 10 is below the daily limit 2000"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  fix: raise inventory to at least 2000"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "delivery.read_timeout_ms: read timeout 150 ms is not above the connect timeout 200 ms"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("  fix: raise read_timeout_ms above 200"),
        "{stdout}"
    );
    assert!(stdout.contains("2 violation(s)"), "{stdout}");

    let (stdout, _) = assert_exit(&run_check(&path, &["--json"]), 1);
    let violations: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let rules: Vec<(&str, &str)> = violations
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["field"].as_str().unwrap(), v["rule"].as_str().unwrap()))
        .collect();
    assert_eq!(
        rules,
        [
            ("inventory", "inventory_below_daily_limit"),
            ("delivery.read_timeout_ms", "read_timeout_not_above_connect"),
        ]
    );
    assert!(violations[0]["fix"]
        .as_str()
        .unwrap()
        .contains("at least 2000"));
}

#[test]
fn parse_errors_name_the_line_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = variant(
        dir.path(),
        "typo.toml",
        "max_read_timeouts = 2",
        "max_read_timeout = 2",
    );
    let (stdout, _) = assert_exit(&run_check(&path, &[]), 1);
    assert!(stdout.contains("line 29"), "{stdout}");
    assert!(
        stdout.contains("field `delivery.max_read_timeout`"),
        "{stdout}"
    );
    assert!(
        stdout.contains("unknown field `max_read_timeout`"),
        "{stdout}"
    );
    assert!(stdout.contains("fix:"), "{stdout}");
    let (stdout, _) = assert_exit(&run_check(&path, &["--json"]), 1);
    let errors: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(errors[0]["rule"], "parse_error");
    assert_eq!(errors[0]["field"], "delivery.max_read_timeout");
}

#[test]
fn json_files_are_read_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let json = r#"{"id":"c1","gift_ledger":"GIFT","inventory":10,"per_user_limit":1,"daily_limit":10,
        "timezone":"Asia/Kolkata","starts_at":"2026-01-01T00:00:00+05:30","ends_at":"2026-01-02T00:00:00+05:30",
        "verification_account":"verify","delivery":{"primary":["http://127.0.0.1:9000/deliver"],
        "connect_timeout_ms":100,"read_timeout_ms":1000,"max_read_timeouts":1,"retry_budget_percent":20}}"#;
    let path = dir.path().join("campaign.json");
    std::fs::write(&path, json).unwrap();
    let (stdout, _) = assert_exit(&run_check(&path, &[]), 0);
    assert!(stdout.contains("campaign c1 is valid"), "{stdout}");
    // The same JSON under a name without .json is read as TOML, and is not TOML.
    let other = dir.path().join("campaign.txt");
    std::fs::write(&other, json).unwrap();
    let (stdout, _) = assert_exit(&run_check(&other, &[]), 1);
    assert!(stdout.contains("TOML line 1"), "{stdout}");
}

#[test]
fn a_missing_file_is_exit_code_2_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nowhere.toml");
    let (_, stderr) = assert_exit(&run_check(&path, &[]), 2);
    assert!(
        stderr.contains(&format!(
            "tally: cannot read campaign file {}",
            path.display()
        )),
        "{stderr}"
    );
}
