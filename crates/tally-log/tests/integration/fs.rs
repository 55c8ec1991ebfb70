//! The same behaviour on the real filesystem.

use std::fs;
use std::path::Path;

use tally_log::{
    verify_dir, EventLog, LogError, LogOptions, ProblemKind, Repair, SegmentedLog, SnapshotStore,
};

use crate::util::{append_all, batches, batches_from, flip, read_all, record_offsets, records_end};

fn open(
    dir: &Path,
    segment_bytes_max: u64,
) -> Result<(SegmentedLog, tally_log::RecoveryReport), LogError> {
    SegmentedLog::open(dir, LogOptions { segment_bytes_max })
}

fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut paths: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "tlog"))
        .collect();
    paths.sort();
    paths
}

#[test]
fn reopen_continues_positions() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("log");
    let first = batches(30);
    {
        let (mut log, report) = open(&dir, 500).unwrap();
        assert!(report.created);
        append_all(&mut log, &first);
    }
    let end = first.last().unwrap().header.end_position();
    let (mut log, report) = open(&dir, 500).unwrap();
    assert!(!report.created);
    assert!(report.repairs.is_empty());
    assert_eq!(report.next_position, end);
    assert_eq!(report.segment_count as usize, segments(&dir).len());
    assert_eq!(log.next_position(), end);
    let second = batches_from(end, 10);
    append_all(&mut log, &second);
    assert_eq!(read_all(&log), [first, second].concat());
    assert!(dir.join("00000000000000000000.tlog").exists());
}

/// On a real file system: the last segment carries its zero fill across a reopen, which
/// repairs nothing, and a sealed segment ends with its last record.
#[test]
fn the_zero_fill_survives_a_reopen_and_is_cut_at_a_roll() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let segment_bytes_max = 64 * 1024;
    let first = batches(20);
    append_all(&mut open(dir, segment_bytes_max).unwrap().0, &first);
    let path = &segments(dir)[0];
    let bytes = fs::read(path).unwrap();
    let end = records_end(&bytes);
    assert_eq!(
        bytes.len() as u64,
        segment_bytes_max,
        "filled up to the segment size"
    );
    assert!(bytes[end as usize..].iter().all(|&byte| byte == 0));

    let (mut log, report) = open(dir, segment_bytes_max).unwrap();
    assert!(report.repairs.is_empty(), "{report}");
    assert_eq!(fs::metadata(path).unwrap().len(), segment_bytes_max);
    // Enough to roll: the first segment is sealed without its zeros.
    let more = batches_from(log.next_position(), 2000);
    append_all(&mut log, &more);
    let all = segments(dir);
    assert!(all.len() > 1);
    for sealed in &all[..all.len() - 1] {
        let bytes = fs::read(sealed).unwrap();
        assert_eq!(
            records_end(&bytes),
            bytes.len() as u64,
            "{}",
            sealed.display()
        );
    }
    assert_eq!(read_all(&log), [first, more].concat());
    assert!(verify_dir(dir).unwrap().is_ok());
}

#[test]
fn torn_tail_is_cut_on_disk() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let written = batches(4);
    append_all(&mut open(dir, 1 << 20).unwrap().0, &written);
    let path = &segments(dir)[0];
    let bytes = fs::read(path).unwrap();
    let last = *record_offsets(&bytes).last().unwrap();
    fs::write(path, &bytes[..last as usize + 11]).unwrap();

    let (log, report) = open(dir, 1 << 20).unwrap();
    assert_eq!(
        report.repairs,
        [Repair::TruncatedTornTail {
            path: path.clone(),
            offset: last,
            bytes_truncated: 11,
            reason: "partial record header".to_owned()
        }]
    );
    assert_eq!(fs::metadata(path).unwrap().len(), last);
    assert_eq!(read_all(&log), written[..3]);
}

#[test]
fn corruption_message_names_the_real_file() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    append_all(&mut open(dir, 1 << 20).unwrap().0, &batches(4));
    let path = &segments(dir)[0];
    let mut bytes = fs::read(path).unwrap();
    let offsets = record_offsets(&bytes);
    flip(&mut bytes, offsets[1] + 30);
    fs::write(path, &bytes).unwrap();

    let message = open(dir, 1 << 20).unwrap_err().to_string();
    assert!(
        message.starts_with(&format!(
            "log segment {} is corrupt at byte offset {}: crc mismatch;",
            path.display(),
            offsets[1]
        )),
        "{message}"
    );
    assert!(
        message.ends_with(&format!("Run `tally verify {}` for details", dir.display())),
        "{message}"
    );

    let report = verify_dir(dir).unwrap();
    assert_eq!(report.problems.len(), 1, "{report}");
    assert_eq!(
        (&report.problems[0].path, report.problems[0].offset),
        (path, offsets[1])
    );
    assert_eq!(report.problems[0].kind, ProblemKind::Corruption);
    assert_eq!(report.batch_count, 1);
}

#[test]
fn second_open_of_a_directory_is_locked() {
    let temp = tempfile::tempdir().unwrap();
    let (_log, _) = open(temp.path(), 1 << 20).unwrap();
    assert!(matches!(
        open(temp.path(), 1 << 20),
        Err(LogError::Locked { .. })
    ));
}

#[test]
fn snapshots_on_disk() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("snapshots");
    let store = SnapshotStore::open(&dir).unwrap();
    store.write(5, b"five").unwrap();
    store.write(9, b"nine").unwrap();
    store.write(12, b"twelve").unwrap();
    let newest = dir.join("snapshot-00000000000000000012.tsnap");
    let mut bytes = fs::read(&newest).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    fs::write(&newest, bytes).unwrap();
    assert_eq!(
        SnapshotStore::open(&dir).unwrap().latest().unwrap(),
        Some((9, b"nine".to_vec()))
    );
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 2);
}
