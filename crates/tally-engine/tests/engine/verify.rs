//! `verify_data_dir`, and refusing to open a damaged log with a message naming file and offset.

use std::path::{Path, PathBuf};

use tally_engine::{verify_data_dir, EngineConfig, SnapshotCheck};
use tally_log::{LogOptions, ProblemKind};

use crate::support::{
    execute, files_ending, flip_byte, fs_config, segment_records_end, shutdown, try_open_fs,
};

/// Writes `batches` requests (so as many log records) into a fresh engine in `dir`, shuts it
/// down and returns the durable end.
async fn fill(config: EngineConfig, batches: usize) -> u64 {
    let opened = try_open_fs(config).unwrap();
    let handle = opened.engine.handle();
    execute(&handle, "open a USD\nopen b USD").await;
    for i in 0..batches {
        execute(&handle, &format!("deposit d{i} a 10\ntransfer t{i} a b 3")).await;
    }
    let durable = handle.durable_position();
    shutdown(opened.engine).await.unwrap();
    durable
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    files_ending(&dir.join("log"), ".tlog")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_healthy_directory_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let durable = fill(fs_config(dir.path()), 20).await;
    let report = verify_data_dir(dir.path()).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert!(report.log.is_ok(), "{}", report.log);
    assert_eq!(report.events, durable);
    assert_eq!(report.log.next_position, durable);
    assert_eq!(
        report.snapshot,
        SnapshotCheck::Matches { position: durable }
    );
    assert_eq!(report.replay_error, None);
    assert_eq!(report.invariant_error, None);
}

/// The damaged record and the records after it are all in the last segment, which opening
/// scans: the engine refuses to start instead of cutting acknowledged records off.
#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_record_before_valid_ones_is_reported_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    fill(fs_config(dir.path()), 20).await;
    let segments = segments(dir.path());
    assert_eq!(segments.len(), 1);
    let segment = &segments[0];
    let length = segment_records_end(segment) as usize;
    flip_byte(segment, length / 2);

    let report = verify_data_dir(dir.path()).unwrap();
    assert!(!report.is_ok());
    assert!(report.log.has_corruption(), "{}", report.log);
    let problem = report
        .log
        .problems
        .iter()
        .find(|problem| problem.kind == ProblemKind::Corruption)
        .unwrap();
    assert_eq!(&problem.path, segment);
    assert!(problem.offset <= length as u64 / 2, "{problem}");
    assert!(report.log.next_position < report.events + 1);

    let error = try_open_fs(fs_config(dir.path()))
        .err()
        .expect("a corrupt log is refused");
    let message = error.to_string();
    assert!(
        message.contains(&segment.display().to_string()),
        "{message}"
    );
    assert!(
        message.contains(&format!("offset {}", problem.offset)),
        "{message}"
    );
}

/// A damaged record in a sealed segment is found when the engine replays it.
#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_record_in_a_sealed_segment_is_reported_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        log_options: LogOptions {
            segment_bytes_max: 256,
        },
        ..fs_config(dir.path())
    };
    fill(config.clone(), 30).await;
    // Without snapshots, opening replays every segment.
    for snapshot in files_ending(&dir.path().join("snapshots"), ".tsnap") {
        std::fs::remove_file(snapshot).unwrap();
    }
    let segments = segments(dir.path());
    assert!(segments.len() >= 3, "{segments:?}");
    let sealed = &segments[1];
    let length = std::fs::metadata(sealed).unwrap().len() as usize;
    flip_byte(sealed, length / 2);

    let report = verify_data_dir(dir.path()).unwrap();
    assert!(report.log.has_corruption(), "{}", report.log);
    let problem = report
        .log
        .problems
        .iter()
        .find(|problem| problem.kind == ProblemKind::Corruption)
        .unwrap();
    assert_eq!(&problem.path, sealed);

    let error = try_open_fs(config).err().expect("a corrupt log is refused");
    let message = error.to_string();
    assert!(message.contains(&sealed.display().to_string()), "{message}");
    assert!(
        message.contains(&format!("offset {}", problem.offset)),
        "{message}"
    );
}
