//! Crash consistency on [`MemStorage`]: whatever was acknowledged survives, exactly, and
//! nothing that was never appended appears.

use std::ops::ControlFlow;

use proptest::prelude::*;
use tally_log::{verify_dir_with, Batch, EventLog, LogError, Torn};

use crate::util::{batch, dir, read_all, Mem};

/// Runs `appends` (event count, body length) against a fresh log whose storage fails at
/// operation `fail_at`, then crashes with `torn` and reopens. Checks that the recovered log
/// holds every acknowledged batch, exactly, plus at most the one batch in flight at the failure.
fn check_crash(segment_bytes_max: u64, appends: &[(u32, usize)], fail_at: u64, torn: Torn) {
    let mem = Mem::new(segment_bytes_max);
    mem.storage.fail_after(fail_at);
    let mut acknowledged: Vec<Batch> = Vec::new();
    let mut in_flight: Option<Batch> = None;
    if let Ok((mut log, _)) = mem.open() {
        for &(event_count, body_len) in appends {
            let next = batch(log.next_position(), event_count, body_len);
            match log.append(&next) {
                Ok(_) => acknowledged.push(next),
                Err(error) => {
                    assert!(matches!(error, LogError::Io { .. }), "{error}");
                    assert!(matches!(log.append(&next), Err(LogError::Poisoned { .. })));
                    in_flight = Some(next);
                    break;
                }
            }
        }
    }

    let image = Mem {
        storage: mem.storage.crash_image(torn),
        options: mem.options.clone(),
    };
    // A crash leaves at most repairable damage, never corruption.
    let report = verify_dir_with(&image.storage, &dir(), |_| ControlFlow::Continue(())).unwrap();
    assert!(!report.has_corruption(), "{report}");

    let (mut log, recovery) = image
        .open()
        .unwrap_or_else(|error| panic!("reopen after crash: {error}"));
    let recovered = read_all(&log);
    assert_eq!(
        recovered[..acknowledged.len().min(recovered.len())],
        acknowledged[..],
        "acknowledged batches changed"
    );
    assert!(
        recovered.len() >= acknowledged.len(),
        "lost {} acknowledged batch(es)",
        acknowledged.len() - recovered.len()
    );
    match &recovered[acknowledged.len()..] {
        [] => {}
        [extra] => assert_eq!(
            Some(extra),
            in_flight.as_ref(),
            "a batch that was never appended appeared"
        ),
        extra => panic!("{} unexpected batches", extra.len()),
    }
    assert_eq!(
        recovery.next_position,
        recovered.last().map_or(0, |b| b.header.end_position())
    );
    assert_eq!(report.next_position, recovery.next_position);

    // The recovered log is a working log, and recovery left it clean.
    let next = batch(log.next_position(), 1, 3);
    log.append(&next).unwrap();
    assert_eq!(read_all(&log).last(), Some(&next));
    drop(log);
    assert!(image.open().unwrap().1.repairs.is_empty());
}

fn torn() -> impl Strategy<Value = Torn> {
    prop_oneof![
        Just(Torn::Nothing),
        (0u64..400).prop_map(Torn::Prefix),
        (0u64..400).prop_map(Torn::Zeros),
        Just(Torn::Prefix(u64::MAX)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn crash_at_any_operation(
        segment_bytes_max in 100u64..1500,
        appends in prop::collection::vec((1u32..5, 0usize..300), 1..40),
        fail_at in 0u64..120,
        torn in torn(),
    ) {
        check_crash(segment_bytes_max, &appends, fail_at, torn);
    }
}

#[test]
fn crash_after_clean_appends_keeps_everything() {
    let appends: Vec<(u32, usize)> = (0..50)
        .map(|i| (1 + i % 4, (i * 13 % 200) as usize))
        .collect();
    check_crash(500, &appends, u64::MAX, Torn::Prefix(u64::MAX));
}

#[test]
fn crash_during_every_operation_of_a_short_run() {
    let appends: Vec<(u32, usize)> = (0..12)
        .map(|i| (1 + i % 3, (i * 37 % 120) as usize))
        .collect();
    for fail_at in 0..80 {
        for torn in [
            Torn::Nothing,
            Torn::Prefix(5),
            Torn::Prefix(40),
            Torn::Prefix(u64::MAX),
            Torn::Zeros(30),
        ] {
            check_crash(200, &appends, fail_at, torn);
        }
    }
}

/// A process that dies on an I/O error is restarted while the machine stays up: the new process
/// sees every byte and directory entry the old one wrote, synced or not. Whatever the restart
/// accepts must be durable before it acknowledges anything built on it, or a power loss later
/// takes acknowledged batches with it. (Both cases were found by the deterministic simulation:
/// a segment whose directory fsync failed, and a record whose fdatasync failed.)
#[test]
fn a_restart_after_an_io_error_makes_what_it_accepts_durable() {
    for fail_at in 0..120 {
        let mem = Mem::new(160);
        mem.storage.fail_after(fail_at);
        let mut acknowledged = Vec::new();
        let mut restarts = 0;
        while acknowledged.len() < 12 {
            restarts += 1;
            assert!(restarts < 4, "fail_at {fail_at}: the log never opened");
            // Opening again without a crash is the supervisor starting a new process.
            let Ok((mut log, _)) = mem.open() else {
                continue;
            };
            while acknowledged.len() < 12 {
                let next = batch(log.next_position(), 1, 40);
                match log.append(&next) {
                    Ok(_) => acknowledged.push(next),
                    Err(_) => break,
                }
            }
        }
        let image = Mem {
            storage: mem.storage.crash_image(Torn::Nothing),
            options: mem.options.clone(),
        };
        let (log, _) = image
            .open()
            .unwrap_or_else(|error| panic!("fail_at {fail_at}: reopen after crash: {error}"));
        let recovered = read_all(&log);
        for batch in &acknowledged {
            assert!(
                recovered.contains(batch),
                "fail_at {fail_at}: acknowledged batch at {} lost",
                batch.header.first_position
            );
        }
    }
}
