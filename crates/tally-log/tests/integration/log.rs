//! Appending, reading, rolling, subscribing.

use tally_log::limits::{BATCH_BODY_BYTES_MAX, SEGMENT_ZERO_FILL_BYTES};
use tally_log::{Batch, EventLog, LogError, LogOptions, MemStorage, SegmentedLog, Torn};

use crate::util::{
    append_all, batch, batches, dir, encode_record, encode_segment_header, read_all, records_end,
    try_read_from, Mem,
};

#[test]
fn round_trip_across_segment_rolls() {
    let mem = Mem::new(400);
    let batches = batches(60);
    let (mut log, report) = mem.open_ok();
    assert!(report.created);
    append_all(&mut log, &batches);
    let end = batches.last().unwrap().header.end_position();
    assert_eq!(log.next_position(), end);
    // More segments than a reader caches, so eviction is exercised too.
    assert!(
        mem.segments().len() > 8,
        "{} segments",
        mem.segments().len()
    );
    assert_eq!(read_all(&log), batches);

    // Every position, including ones inside a batch, starts at the batch containing it.
    for (index, batch) in batches.iter().enumerate() {
        for position in batch.header.first_position..batch.header.end_position() {
            assert_eq!(
                try_read_from(&log, position).unwrap(),
                batches[index..],
                "position {position}"
            );
        }
    }
    assert_eq!(try_read_from(&log, end).unwrap(), []);
    assert_eq!(try_read_from(&log, end + 100).unwrap(), []);
}

/// The size an operator sees is what the segment files take, sealed ones included, after every
/// append and after a reopen (which sums the sealed segments without scanning them). Only the
/// last segment has zeros after its records, and they are not counted.
#[test]
fn size_bytes_is_the_sum_of_the_segment_files() {
    let mem = Mem::new(300);
    let on_disk = || -> u64 {
        let segments = mem.segments();
        let (last, sealed) = segments.split_last().unwrap();
        for path in sealed {
            assert_eq!(records_end(&mem.bytes(path)), mem.bytes(path).len() as u64);
        }
        let sealed: u64 = sealed.iter().map(|path| mem.bytes(path).len() as u64).sum();
        sealed + records_end(&mem.bytes(last))
    };
    let (mut log, _) = mem.open_ok();
    assert_eq!(log.size_bytes(), on_disk(), "an empty log is its header");
    for batch in batches(40) {
        log.append(&batch).unwrap();
        assert_eq!(log.size_bytes(), on_disk(), "after {:?}", batch.header);
    }
    assert!(mem.segments().len() > 3, "the log rolled");
    let size = log.size_bytes();
    drop(log);
    let (reopened, _) = mem.open_ok();
    assert_eq!(reopened.size_bytes(), size);
}

#[test]
fn segment_files_are_named_by_first_position_and_start_where_the_previous_ends() {
    let mem = Mem::new(200);
    let batches = batches(20);
    mem.write(&batches);
    let starts: Vec<u64> = batches.iter().map(|b| b.header.first_position).collect();
    for path in mem.segments() {
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(name.len(), "00000000000000000000.tlog".len());
        let first_position: u64 = name.trim_end_matches(".tlog").parse().unwrap();
        assert!(starts.contains(&first_position), "{name}");
        assert_eq!(
            mem.bytes(&path)[..32],
            encode_segment_header(first_position)[..]
        );
    }
}

/// Appends write into zeros written ahead of them, so that only one append in every
/// SEGMENT_ZERO_FILL_BYTES grows the file (and commits the file system's journal).
#[test]
fn appends_grow_the_file_only_past_the_zero_fill() {
    let mem = Mem::new(LogOptions::default().segment_bytes_max);
    let (mut log, _) = mem.open_ok();
    let path = mem.segments()[0].clone();
    let small = batches(50);
    append_all(&mut log, &small);
    let filled = mem.bytes(&path).len() as u64;
    let first_record_end = 32 + encode_record(&small[0]).len() as u64;
    assert_eq!(filled, first_record_end + SEGMENT_ZERO_FILL_BYTES);
    // A batch that crosses the end of the fill grows the file again, a fill past itself.
    let big = batch(log.next_position(), 1, SEGMENT_ZERO_FILL_BYTES as usize);
    log.append(&big).unwrap();
    let big_end = records_end(&mem.bytes(&path));
    assert!(big_end > filled);
    assert_eq!(
        mem.bytes(&path).len() as u64,
        big_end + SEGMENT_ZERO_FILL_BYTES
    );
    assert_eq!(read_all(&log), [small, vec![big]].concat());
}

#[test]
fn bytes_on_disk_match_the_documented_format() {
    let mem = Mem::new(LogOptions::default().segment_bytes_max);
    let batches = batches(5);
    mem.write(&batches);
    let mut expected = encode_segment_header(0);
    for batch in &batches {
        expected.extend(encode_record(batch));
    }
    let bytes = mem.bytes(&mem.segments()[0]);
    assert_eq!(bytes[..expected.len()], expected);
    // The zero fill: the first record's append grew the file by SEGMENT_ZERO_FILL_BYTES past it.
    let first_record_end = 32 + encode_record(&batches[0]).len() as u64;
    assert_eq!(
        bytes.len() as u64,
        first_record_end + SEGMENT_ZERO_FILL_BYTES
    );
    assert!(bytes[expected.len()..].iter().all(|&byte| byte == 0));
}

#[test]
fn logs_written_by_format_version_1_open() {
    // Built from the spec, not by the crate, as a release of format version 1 would have written it.
    let mem = Mem::new(LogOptions::default().segment_bytes_max);
    let batches = batches(4);
    let split = batches[2].header.first_position;
    let mut first = encode_segment_header(0);
    batches[..2]
        .iter()
        .for_each(|b| first.extend(encode_record(b)));
    let mut second = encode_segment_header(split);
    batches[2..]
        .iter()
        .for_each(|b| second.extend(encode_record(b)));
    mem.storage
        .set_file_bytes(&dir().join("00000000000000000000.tlog"), first);
    mem.storage
        .set_file_bytes(&dir().join(format!("{split:020}.tlog")), second);
    let (log, report) = mem.open_ok();
    assert!(report.repairs.is_empty());
    assert_eq!(read_all(&log), batches);
}

#[test]
fn large_records_round_trip_even_above_the_segment_size() {
    let mem = Mem::new(4096);
    let batches = vec![
        batch(0, 1, 10),
        batch(1, 2, 600_000),
        batch(3, 1, 5),
        batch(4, 1, 300_000),
    ];
    mem.write(&batches);
    let (log, _) = mem.open_ok();
    assert_eq!(read_all(&log), batches);
    assert_eq!(try_read_from(&log, 2).unwrap(), batches[1..]);
}

#[test]
fn append_checks_position_and_batch_rules() {
    let (mut log, _) = Mem::new(4096).open_ok();
    log.append(&batch(0, 2, 3)).unwrap();
    for found in [0, 1, 3, u64::MAX] {
        match log.append(&batch(found, 1, 3)) {
            Err(LogError::PositionConflict {
                expected: 2,
                found: f,
            }) if f == found => {}
            other => panic!("{other:?}"),
        }
    }
    let empty = log.append(&batch(2, 0, 3)).unwrap_err();
    assert!(
        matches!(
            empty,
            LogError::InvalidBatch {
                reason: "event count is zero",
                ..
            }
        ),
        "{empty}"
    );
    let big = Batch {
        body: vec![0; BATCH_BODY_BYTES_MAX as usize + 1],
        ..batch(2, 1, 0)
    };
    assert!(matches!(
        log.append(&big),
        Err(LogError::InvalidBatch { .. })
    ));
    // Rejected batches leave the log usable.
    log.append(&batch(2, 1, 3)).unwrap();
    assert_eq!(log.next_position(), 3);
    assert_eq!(read_all(&log).len(), 2);
}

#[test]
fn position_conflict_message() {
    let (mut log, _) = Mem::new(4096).open_ok();
    let error = log.append(&batch(5, 1, 0)).unwrap_err();
    assert_eq!(
        error.to_string(),
        "position conflict: the log expects a batch starting at position 0, found 5"
    );
}

#[test]
fn failed_fdatasync_poisons_the_log_and_hides_the_batch() {
    let mem = Mem::new(4096);
    let (mut log, _) = mem.open_ok();
    log.append(&batch(0, 1, 8)).unwrap();
    let mut subscription = log.subscribe();
    subscription.mark_unchanged();
    // The write is operation 0, the fdatasync operation 1.
    mem.storage.fail_after(1);
    let error = log.append(&batch(1, 1, 8)).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("fdatasync /data/log/00000000000000000000.tlog: injected I/O error"),
        "{error}"
    );
    assert!(matches!(
        log.append(&batch(1, 1, 8)),
        Err(LogError::Poisoned { .. })
    ));
    assert_eq!(log.next_position(), 1);
    assert!(!subscription.has_changed().unwrap());
    assert_eq!(read_all(&log), [batch(0, 1, 8)]);

    // The unsynced record never became durable; a restart resumes after the last good batch.
    drop(log);
    let image = Mem {
        storage: mem.storage.crash_image(Torn::Nothing),
        options: mem.options.clone(),
    };
    let (log, report) = image.open_ok();
    assert_eq!(report.next_position, 1);
    assert_eq!(read_all(&log), [batch(0, 1, 8)]);
}

#[test]
fn failed_roll_poisons_the_log_and_recovers_on_reopen() {
    let mem = Mem::new(100);
    let (mut log, _) = mem.open_ok();
    log.append(&batch(0, 1, 50)).unwrap();
    // The next append rolls: create, header write, fdatasync, directory fsync. Fail the fsync.
    mem.storage.fail_after(3);
    assert!(matches!(
        log.append(&batch(1, 1, 50)),
        Err(LogError::Io {
            op: "fsync directory",
            ..
        })
    ));
    assert!(matches!(
        log.append(&batch(1, 1, 50)),
        Err(LogError::Poisoned { .. })
    ));
    drop(log);
    for torn in [Torn::Nothing, Torn::Prefix(1000)] {
        let image = Mem {
            storage: mem.storage.crash_image(torn),
            options: mem.options.clone(),
        };
        let (mut log, report) = image.open_ok();
        assert_eq!(report.next_position, 1);
        log.append(&batch(1, 1, 50)).unwrap();
        assert_eq!(read_all(&log), [batch(0, 1, 50), batch(1, 1, 50)]);
    }
}

#[test]
fn subscription_and_readers_follow_appends() {
    let (mut log, _) = Mem::new(300).open_ok();
    let mut subscription = log.subscribe();
    let mut reader = log.reader();
    assert_eq!(*subscription.borrow_and_update(), 0);
    let batches = batches(30);
    let mut seen = Vec::new();
    for batch in &batches {
        log.append(batch).unwrap();
        assert!(subscription.has_changed().unwrap());
        let next = *subscription.borrow_and_update();
        assert_eq!(next, batch.header.end_position());
        // A tailing reader picks up exactly the new batch, including across segment rolls.
        let from = seen.last().map_or(0, |b: &Batch| b.header.end_position());
        seen.extend(reader.read_from(from).unwrap().map(Result::unwrap));
        assert_eq!(
            seen.len(),
            batches
                .iter()
                .take_while(|b| b.header.first_position < next)
                .count()
        );
    }
    assert_eq!(seen, batches);
}

#[test]
fn readers_on_other_threads_see_only_durable_batches() {
    let (mut log, _) = Mem::new(1000).open_ok();
    let batches = batches(200);
    let subscription = log.subscribe();
    let reader = log.reader();
    let expected = batches.clone();
    let tail = std::thread::spawn(move || {
        let mut reader = reader;
        let mut subscription = subscription;
        let mut seen: Vec<Batch> = Vec::new();
        let end = expected.last().unwrap().header.end_position();
        while seen.last().map_or(0, |b| b.header.end_position()) < end {
            let durable = *subscription.borrow_and_update();
            let from = seen.last().map_or(0, |b| b.header.end_position());
            for batch in reader.read_from(from).unwrap() {
                let batch = batch.unwrap();
                // Readers capture the durable end at the call; nothing past it may appear.
                assert!(batch.header.first_position < end);
                seen.push(batch);
            }
            assert!(seen.last().map_or(0, |b| b.header.end_position()) >= durable);
            std::thread::yield_now();
        }
        assert_eq!(seen, expected);
    });
    append_all(&mut log, &batches);
    tail.join().unwrap();
}

#[test]
fn reader_outlives_the_log() {
    let mem = Mem::new(4096);
    let (mut log, _) = mem.open_ok();
    append_all(&mut log, &batches(3));
    let mut reader = log.reader();
    drop(log);
    assert_eq!(reader.read_from(0).unwrap().count(), 3);
}

#[test]
fn second_writer_is_locked_out() {
    let mem = Mem::new(4096);
    let (log, _) = mem.open_ok();
    assert!(matches!(mem.open(), Err(LogError::Locked { .. })));
    drop(log);
    mem.open_ok();
}

#[test]
fn options_are_range_checked() {
    for segment_bytes_max in [0, 10, 2 << 40] {
        let result = SegmentedLog::open_in(
            std::sync::Arc::new(MemStorage::new()),
            &dir(),
            LogOptions { segment_bytes_max },
        );
        assert!(matches!(result, Err(LogError::InvalidOptions { .. })));
    }
}
