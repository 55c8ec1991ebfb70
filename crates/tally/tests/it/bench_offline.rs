//! `tally bench-offline`: a condition gives a full result whether its offline work runs in the
//! server's process or in a child process of its own (`--offline-in child`, the control), and
//! its timeline (`--timeline`) follows the offline work to its end; with `--rounds` the parent
//! runs the conditions in turn and summarizes each by its medians.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::support::tally_bin;

/// Transfers in the offline data directory; `tally bench` also logs an account and a deposit
/// for each of its `ACCOUNTS`.
const TRANSFERS: u64 = 20_000;
const ACCOUNTS: u64 = 100;

/// Runs `command` (a `tally` subcommand) to success; its standard output.
fn succeeded(command: &mut Command) -> Vec<u8> {
    let output = command.env("TALLY_LOG", "warn").output().unwrap();
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

fn fill_offline_data(dir: &Path) {
    succeeded(
        Command::new(tally_bin())
            .arg("bench")
            .arg("--data-dir")
            .arg(dir)
            .args(["--transfers", &TRANSFERS.to_string()])
            .args(["--accounts", &ACCOUNTS.to_string()])
            .args(["--batch", "1000", "--concurrency", "2"]),
    );
}

/// One `idle` condition, as the parent runs it; its JSON line.
fn idle_condition(offline_data: &Path, offline_in: &str, timeline: &Path) -> Value {
    let stdout = succeeded(
        Command::new(tally_bin())
            .arg("bench-offline")
            .arg("--offline-data")
            .arg(offline_data)
            .args(["--rate", "200", "--duration", "1", "--warmup", "0"])
            .args(["--offline-in", offline_in, "--condition", "idle"])
            .arg("--timeline")
            .arg(timeline),
    );
    serde_json::from_slice(&stdout).unwrap()
}

#[test]
fn offline_work_in_the_process_or_a_child_is_done_within_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let offline_data = dir.path().join("offline");
    fill_offline_data(&offline_data);
    for offline_in in ["process", "child"] {
        let timeline = dir.path().join(format!("timeline-{offline_in}.csv"));
        let measured = idle_condition(&offline_data, offline_in, &timeline);
        assert_eq!(measured["offline_in"], offline_in, "{measured}");
        assert_eq!(
            measured["offline_events"],
            TRANSFERS + 2 * ACCOUNTS,
            "the rebuild read the whole log: {measured}"
        );
        assert_eq!(measured["failed"], 0, "{measured}");
        assert!(measured["requests"].as_u64().unwrap() >= 200, "{measured}");
        // Read-your-writes: each lookup found the transfer written just before it.
        assert_eq!(measured["lookups_failed"], 0, "{measured}");
        assert!(measured["lookups"].as_u64().unwrap() >= 5, "{measured}");
        let lookup = |figure: &str| measured[figure].as_f64().unwrap();
        assert!(
            0.0 < lookup("lookup_p50_ms")
                && lookup("lookup_p50_ms") <= lookup("lookup_p99_ms")
                && lookup("lookup_p99_ms") <= lookup("lookup_max_ms"),
            "{measured}"
        );
        let window = measured["window_s"].as_f64().unwrap();
        for job in ["verify_s", "rebuild_s"] {
            let seconds = measured[job].as_f64().unwrap();
            assert!(
                seconds > 0.0 && seconds <= window,
                "{job} outside the window: {measured}"
            );
        }

        let timeline = std::fs::read_to_string(&timeline).unwrap();
        let mut rows = timeline.lines();
        assert_eq!(
            rows.next(),
            Some("t_s,requests,p99_ms,max_ms,rebuild_events,verify_records,rebuild_file_mb")
        );
        let rows: Vec<Vec<&str>> = rows.map(|row| row.split(',').collect()).collect();
        // One row per 100 ms of a window of at least 1 s.
        assert!(rows.len() >= 10, "{timeline}");
        let requests: u64 = rows.iter().map(|row| row[1].parse::<u64>().unwrap()).sum();
        assert_eq!(requests, measured["requests"], "{timeline}");
        let rebuilt = rows.last().unwrap()[4];
        if offline_in == "process" {
            // Sampled by the end of the window, which lasts until the rebuild is done.
            assert_eq!(
                rebuilt,
                (TRANSFERS + 2 * ACCOUNTS).to_string(),
                "{timeline}"
            );
        } else {
            assert_eq!(rebuilt, "", "a child's progress is not visible: {timeline}");
        }
    }
}

#[test]
fn rounds_run_the_conditions_in_turn_and_the_summary_takes_their_medians() {
    let dir = tempfile::tempdir().unwrap();
    let offline_data = dir.path().join("offline");
    fill_offline_data(&offline_data);
    let stdout = succeeded(
        Command::new(tally_bin())
            .arg("bench-offline")
            .arg("--offline-data")
            .arg(&offline_data)
            .args(["--rate", "200", "--duration", "1", "--warmup", "0"])
            .args(["--rounds", "2", "--conditions", "idle,alone"]),
    );
    let summary: Value = serde_json::from_slice(&stdout).unwrap();
    assert_eq!(summary["rounds"], 2, "{summary}");
    let conditions = summary["conditions"].as_array().unwrap();
    let names: Vec<&str> = conditions
        .iter()
        .map(|c| c["condition"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["idle", "alone"], "in the order asked: {summary}");
    for condition in conditions {
        assert_eq!(condition["runs"], 2, "{summary}");
        let each: Vec<f64> = condition["p99_ms_each"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p99| p99.as_f64().unwrap())
            .collect();
        assert_eq!(each.len(), 2, "{summary}");
        for noise in ["steal_share_each", "io_full_share_each"] {
            let shares = condition[noise].as_array().unwrap();
            assert_eq!(shares.len(), 2, "{noise}: {summary}");
            assert!(
                shares
                    .iter()
                    .all(|share| share.as_f64().is_some_and(|s| (0.0..=1.0).contains(&s))),
                "{noise} is a share of the window (it needs /proc/stat and /proc/pressure/io, a kernel with PSI on): {summary}"
            );
        }
        let median = condition["p99_ms"].as_f64().unwrap();
        let mean_of_two = (each[0] + each[1]) / 2.0;
        assert!((median - mean_of_two).abs() < 0.001, "{summary}");
        assert!(
            condition["requests"].as_u64().unwrap() >= 2 * 200,
            "{summary}"
        );
    }
    let (idle, alone) = (&conditions[0], &conditions[1]);
    assert_eq!(
        idle["offline_events"],
        TRANSFERS + 2 * ACCOUNTS,
        "{summary}"
    );
    assert!(idle["rebuild_s"].as_f64().unwrap() > 0.0, "{summary}");
    assert_eq!(alone["rebuild_s"], 0.0, "{summary}");
    let ratio = idle["p99_ratio"].as_f64().unwrap();
    let expected = idle["p99_ms"].as_f64().unwrap() / alone["p99_ms"].as_f64().unwrap();
    assert!((ratio - expected).abs() < 0.01, "{summary}");
    assert_eq!(alone["p99_ratio"], 1.0, "{summary}");
}
