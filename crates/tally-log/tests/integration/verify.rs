//! `verify_dir`: precise, read-only reports.

use std::ops::ControlFlow;
use std::path::PathBuf;

use tally_log::{verify_dir_with, Batch, ProblemKind, Storage, VerifyReport};

use crate::util::{batches, dir, flip, record_offsets, records_end, Mem};

/// A log of 20 batches in several segments, damaged by `damage`.
fn damaged(damage: impl FnOnce(&Mem, &[PathBuf])) -> (Mem, Vec<Batch>) {
    let mem = Mem::new(200);
    let written = batches(20);
    mem.write(&written);
    damage(&mem, &mem.segments());
    (mem, written)
}

/// Verifies, checks that nothing was modified, and returns the report and visited batches.
#[track_caller]
fn check(mem: &Mem) -> (VerifyReport, Vec<Batch>) {
    let before: Vec<Vec<u8>> = mem.storage.paths().iter().map(|p| mem.bytes(p)).collect();
    let mut visited = Vec::new();
    let report = verify_dir_with(&mem.storage, &dir(), |batch| {
        visited.push(batch.clone());
        ControlFlow::Continue(())
    })
    .unwrap();
    let after: Vec<Vec<u8>> = mem.storage.paths().iter().map(|p| mem.bytes(p)).collect();
    assert_eq!(before, after, "verify must not modify anything");
    assert_eq!(report.batch_count as usize, visited.len());
    (report, visited)
}

#[track_caller]
fn assert_one_problem(
    report: &VerifyReport,
    path: &PathBuf,
    offset: u64,
    kind: ProblemKind,
    reason: &str,
) {
    assert_eq!(report.problems.len(), 1, "{report}");
    let problem = &report.problems[0];
    assert_eq!(
        (&problem.path, problem.offset, problem.kind),
        (path, offset, kind),
        "{report}"
    );
    assert!(problem.reason.contains(reason), "{report}");
}

#[test]
fn clean_log_is_ok_and_visits_every_batch() {
    let (mem, written) = damaged(|_, _| {});
    let (report, visited) = check(&mem);
    assert!(report.is_ok(), "{report}");
    assert!(!report.has_corruption());
    assert_eq!(visited, written);
    assert_eq!(
        report.next_position,
        written.last().unwrap().header.end_position()
    );
    assert_eq!(report.segments.len(), mem.segments().len());
    assert_eq!(
        report.segments.iter().map(|s| s.record_count).sum::<u64>(),
        20
    );
    assert!(
        report.to_string().starts_with("log /data/log: ok; "),
        "{report}"
    );
}

#[test]
fn visitor_can_stop_early() {
    let (mem, _) = damaged(|_, _| {});
    let mut visits = 0;
    let report = verify_dir_with(&mem.storage, &dir(), |_| {
        visits += 1;
        if visits == 3 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    assert_eq!(visits, 3);
    assert!(report.visit_stopped);
    assert_eq!(report.batch_count, 20);
}

#[test]
fn torn_tail_is_reported_as_repairable() {
    let mut torn_at = 0;
    let (mem, written) = damaged(|mem, segments| {
        mem.modify(segments.last().unwrap(), |bytes| {
            torn_at = records_end(bytes);
            bytes.truncate(torn_at as usize);
            bytes.extend([9; 13]);
        })
    });
    let (report, visited) = check(&mem);
    let last = mem.segments().last().unwrap().clone();
    assert_one_problem(
        &report,
        &last,
        torn_at,
        ProblemKind::TornTail { bytes: 13 },
        "partial record header",
    );
    assert!(!report.has_corruption());
    assert_eq!(visited, written);
    let text = report.to_string();
    assert!(text.contains("repairable"), "{text}");
    assert!(text.contains("torn tail: a write interrupted by a crash, never acknowledged; opening the log cuts these 13 byte(s)"), "{text}");
}

#[test]
fn corrupt_record_in_the_last_segment_with_data_after_it() {
    let mut at = (PathBuf::new(), 0);
    let (mem, _) = damaged(|mem, segments| {
        let last = segments.last().unwrap();
        let offsets = record_offsets(&mem.bytes(last));
        assert!(offsets.len() >= 2);
        mem.modify(last, |bytes| flip(bytes, offsets[0] + 12));
        at = (last.clone(), offsets[0]);
    });
    let (report, _) = check(&mem);
    assert_one_problem(
        &report,
        &at.0,
        at.1,
        ProblemKind::Corruption,
        "crc mismatch; records after it are intact",
    );
    assert!(report.has_corruption());
    assert!(report.to_string().contains("CORRUPT"));
}

#[test]
fn corrupt_record_in_a_sealed_segment() {
    let mut at = (PathBuf::new(), 0);
    let (mem, written) = damaged(|mem, segments| {
        let sealed = &segments[1];
        let offsets = record_offsets(&mem.bytes(sealed));
        let last = *offsets.last().unwrap();
        // Damage the last record of a sealed segment: nothing follows it in this file, yet it is
        // corruption, because only the very end of the log can be torn.
        mem.modify(sealed, |bytes| flip(bytes, last + 28));
        at = (sealed.clone(), last);
    });
    let (report, visited) = check(&mem);
    assert_one_problem(
        &report,
        &at.0,
        at.1,
        ProblemKind::Corruption,
        "crc mismatch in a sealed segment",
    );
    // Only batches before the damage are visited: what the server could replay.
    assert!(visited.len() < written.len());
    assert_eq!(visited, written[..visited.len()]);
    // Later segments are still checked, and found fine.
    assert_eq!(report.segments.len(), mem.segments().len());
}

#[test]
fn truncated_sealed_segment() {
    let mut at = (PathBuf::new(), 0);
    let (mem, _) = damaged(|mem, segments| {
        let sealed = &segments[0];
        let offsets = record_offsets(&mem.bytes(sealed));
        let last = *offsets.last().unwrap();
        mem.modify(sealed, |bytes| bytes.truncate(last as usize + 10));
        at = (sealed.clone(), last);
    });
    let (report, _) = check(&mem);
    assert_one_problem(
        &report,
        &at.0,
        at.1,
        ProblemKind::Corruption,
        "partial record header in a sealed segment",
    );
}

#[test]
fn missing_middle_segment() {
    let mut missing_end = 0;
    let (mem, _) = damaged(|mem, segments| {
        mem.storage.remove(&segments[1]).unwrap();
        missing_end = segments[2]
            .file_stem()
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
    });
    let (report, _) = check(&mem);
    let third = mem.segments()[1].clone();
    assert_one_problem(
        &report,
        &third,
        0,
        ProblemKind::Corruption,
        "but the previous one ends at position",
    );
    assert!(report.next_position < missing_end);
}

#[test]
fn damaged_segment_header() {
    let (mem, _) = damaged(|mem, segments| mem.modify(&segments[1], |bytes| bytes[3] = b'x'));
    let (report, _) = check(&mem);
    assert_one_problem(
        &report,
        &mem.segments()[1],
        0,
        ProblemKind::Corruption,
        "bad segment magic",
    );
}

#[test]
fn incomplete_last_segment() {
    let (mem, written) =
        damaged(|mem, segments| mem.modify(segments.last().unwrap(), |bytes| bytes.truncate(20)));
    let (report, visited) = check(&mem);
    let last = mem.segments().last().unwrap().clone();
    assert_one_problem(
        &report,
        &last,
        0,
        ProblemKind::IncompleteSegment,
        "shorter than a segment header",
    );
    assert!(!report.has_corruption());
    assert_eq!(visited, written[..visited.len()]);
}

#[test]
fn verify_agrees_with_recovery() {
    // Whatever verify calls repairable, open repairs; whatever it calls corruption, open refuses
    // (or, for sealed segments, reading refuses).
    // Zeros after the last record are the end of the log to both; other bytes a torn tail.
    for (tail, is_ok) in [(0u8, true), (7, false)] {
        let (mem, _) = damaged(|mem, segments| {
            mem.modify(segments.last().unwrap(), |bytes| {
                let end = records_end(bytes) as usize;
                bytes.resize(bytes.len().max(end + 40), 0);
                bytes[end..end + 40].fill(tail);
            });
        });
        let (report, visited) = check(&mem);
        assert_eq!(report.is_ok(), is_ok, "{report}");
        assert!(!report.has_corruption());
        let (log, recovery) = mem.open_ok();
        assert_eq!(recovery.repairs.is_empty(), is_ok);
        assert_eq!(recovery.next_position, report.next_position);
        assert_eq!(crate::util::read_all(&log), visited);
    }
}

#[test]
fn empty_directory_is_ok() {
    let mem = Mem::new(200);
    let (report, visited) = check(&mem);
    assert!(report.is_ok());
    assert!(visited.is_empty());
    assert_eq!(report.segments.len(), 0);
}
