//! Recovery on open: torn tails are cut and reported, corruption refuses to open.

use tally_log::{EventLog, LogError, Repair};

use crate::util::{batches, dir, flip, read_all, record_offsets, records_end, Mem};

/// Writes `count` batches in one segment, damages the segment with `damage`, reopens, and
/// returns the repairs and the batches that survived.
#[track_caller]
fn check_cut(count: usize, damage: impl FnOnce(&mut Vec<u8>, &[u64])) -> (Vec<Repair>, usize) {
    let mem = Mem::new(1 << 20);
    let written = batches(count);
    mem.write(&written);
    let path = mem.segments()[0].clone();
    let offsets = record_offsets(&mem.bytes(&path));
    mem.modify(&path, |bytes| damage(bytes, &offsets));
    let (mut log, report) = mem.open_ok();
    let survivors = read_all(&log);
    assert_eq!(survivors, written[..survivors.len()]);
    assert_eq!(report.next_position, log.next_position());
    // The cut log accepts the lost batches again and reads them back.
    for batch in &written[survivors.len()..] {
        log.append(batch).unwrap();
    }
    assert_eq!(read_all(&log), written);
    // After the repair the log is clean.
    drop(log);
    assert!(mem.open_ok().1.repairs.is_empty());
    (report.repairs, survivors.len())
}

#[track_caller]
fn assert_torn(repairs: &[Repair], offset: u64, bytes_truncated: u64, reason: &str) {
    match repairs {
        [Repair::TruncatedTornTail {
            path,
            offset: o,
            bytes_truncated: b,
            reason: r,
        }] => {
            assert_eq!(path, &dir().join("00000000000000000000.tlog"));
            assert_eq!((*o, *b), (offset, bytes_truncated));
            assert!(r.contains(reason), "{r}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn clean_log_needs_no_repair() {
    let (repairs, survivors) = check_cut(5, |_, _| {});
    assert!(repairs.is_empty());
    assert_eq!(survivors, 5);
}

#[test]
fn torn_tail_in_the_record_header_is_cut() {
    let mut last = 0;
    let (repairs, survivors) = check_cut(5, |bytes, offsets| {
        last = offsets[4];
        bytes.truncate(last as usize + 3);
    });
    assert_eq!(survivors, 4);
    assert_torn(&repairs, last, 3, "partial record header");
}

#[test]
fn torn_tail_in_the_batch_header_is_cut() {
    let mut last = 0;
    let (repairs, survivors) = check_cut(5, |bytes, offsets| {
        last = offsets[4];
        bytes.truncate(last as usize + 20);
    });
    assert_eq!(survivors, 4);
    assert_torn(&repairs, last, 20, "partial record header");
}

#[test]
fn torn_tail_in_the_payload_is_cut() {
    let mut last = 0;
    let (repairs, survivors) = check_cut(5, |bytes, offsets| {
        last = offsets[4];
        bytes.truncate(last as usize + 40);
    });
    assert_eq!(survivors, 4);
    assert_torn(&repairs, last, 40, "extends past the end");
}

#[test]
fn flipped_bit_in_the_last_record_is_cut() {
    let mut last = 0;
    let mut len = 0;
    let (repairs, survivors) = check_cut(5, |bytes, offsets| {
        last = offsets[4];
        len = bytes.len() as u64;
        flip(bytes, last + 30);
    });
    assert_eq!(survivors, 4);
    assert_torn(&repairs, last, len - last, "crc mismatch");
}

#[test]
fn flipped_bit_in_the_last_length_field_is_cut() {
    let mut last = 0;
    let (repairs, survivors) = check_cut(5, |bytes, offsets| {
        last = offsets[4];
        flip(bytes, last);
    });
    assert_eq!(survivors, 4);
    match &repairs[..] {
        [Repair::TruncatedTornTail { offset, .. }] => assert_eq!(*offset, last),
        other => panic!("{other:?}"),
    }
}

/// Zeros after the last record are the zero fill the writer keeps ahead of its records, or the
/// size of a write whose data never reached the disk: either way the end of the log.
#[test]
fn zeros_after_the_last_record_end_the_log_without_a_repair() {
    for zeros in [0, 1, 7, 27, 28, 100, 5000] {
        let (repairs, survivors) = check_cut(3, |bytes, _| {
            let end = records_end(bytes) as usize;
            bytes.truncate(end);
            bytes.resize(end + zeros, 0);
        });
        assert_eq!(survivors, 3);
        assert!(repairs.is_empty(), "{zeros} zeros: {repairs:?}");
    }
}

/// A torn append over the zero fill: the bytes from the last record to the end of the file are
/// cut, zeros included, and the next append fills ahead again.
#[test]
fn garbage_over_the_zero_fill_is_cut() {
    let (mut end, mut len) = (0, 0);
    let (repairs, survivors) = check_cut(3, |bytes, _| {
        end = records_end(bytes);
        len = bytes.len() as u64;
        assert!(len > end + 300, "the file has a zero fill");
        for (i, byte) in bytes[end as usize..][..300].iter_mut().enumerate() {
            *byte = (i * 97 % 251) as u8;
        }
    });
    assert_eq!(survivors, 3);
    assert!(
        matches!(&repairs[..], [Repair::TruncatedTornTail { offset, bytes_truncated, .. }] if *offset == end && *bytes_truncated == len - end),
        "{repairs:?}"
    );
}

/// Garbage after the last record of a file without a zero fill (as a crash during the append
/// that grows the file leaves it, and as logs written before the zero fill end).
#[test]
fn garbage_tail_is_cut() {
    let mut end = 0;
    let (repairs, survivors) = check_cut(3, |bytes, _| {
        end = records_end(bytes);
        bytes.truncate(end as usize);
        bytes.extend((0..300u32).map(|i| (i * 97 % 251) as u8));
    });
    assert_eq!(survivors, 3);
    assert_eq!(repairs.len(), 1);
    assert!(
        matches!(&repairs[0], Repair::TruncatedTornTail { offset, bytes_truncated: 300, .. } if *offset == end)
    );
}

#[test]
fn flipped_bit_mid_segment_refuses_to_open() {
    let mem = Mem::new(1 << 20);
    mem.write(&batches(5));
    let path = mem.segments()[0].clone();
    let offsets = record_offsets(&mem.bytes(&path));
    let before = mem.bytes(&path);
    mem.modify(&path, |bytes| flip(bytes, offsets[2] + 29));
    let error = mem.open().unwrap_err();
    assert!(
        matches!(&error, LogError::Corrupt { path: p, offset, .. } if *p == path && *offset == offsets[2]),
        "{error:?}"
    );
    let expected = format!(
        "log segment /data/log/00000000000000000000.tlog is corrupt at byte offset {}: crc mismatch; \
         records after it are intact (the next valid record starts at byte offset {}), so this is not a torn \
         write. Run `tally verify /data/log` for details",
        offsets[2], offsets[3]
    );
    assert_eq!(error.to_string(), expected);
    // Nothing was cut.
    let mut restored = mem.bytes(&path);
    flip(&mut restored, offsets[2] + 29);
    assert_eq!(restored, before);
}

#[test]
fn corrupt_length_mid_segment_refuses_to_open() {
    let mem = Mem::new(1 << 20);
    mem.write(&batches(5));
    let path = mem.segments()[0].clone();
    let offsets = record_offsets(&mem.bytes(&path));
    // A damaged length makes the next record unfindable by length; the byte-wise search finds it.
    mem.modify(&path, |bytes| bytes[offsets[1] as usize + 1] = 0x7f);
    assert!(matches!(mem.open(), Err(LogError::Corrupt { offset, .. }) if offset == offsets[1]));
}

#[test]
fn zeroed_record_mid_segment_refuses_to_open() {
    let mem = Mem::new(1 << 20);
    mem.write(&batches(5));
    let path = mem.segments()[0].clone();
    let offsets = record_offsets(&mem.bytes(&path));
    mem.modify(&path, |bytes| {
        bytes[offsets[1] as usize..offsets[2] as usize].fill(0)
    });
    let error = mem.open().unwrap_err();
    assert!(error.to_string().contains("zero length"), "{error}");
}

#[test]
fn gap_in_positions_refuses_to_open() {
    let mem = Mem::new(1 << 20);
    let written = batches(5);
    mem.write(&written);
    let path = mem.segments()[0].clone();
    let offsets = record_offsets(&mem.bytes(&path));
    // Cut a whole record out of the middle: every remaining record is valid, but positions jump.
    mem.modify(&path, |bytes| {
        bytes.drain(offsets[2] as usize..offsets[3] as usize);
    });
    let error = mem.open().unwrap_err();
    assert!(
        error.to_string().contains("position discontinuity"),
        "{error}"
    );
    assert!(matches!(error, LogError::Corrupt { offset, .. } if offset == offsets[2]));
}

#[test]
fn gap_before_the_last_record_refuses_to_open() {
    let mem = Mem::new(1 << 20);
    mem.write(&batches(5));
    let path = mem.segments()[0].clone();
    let offsets = record_offsets(&mem.bytes(&path));
    // The last record is intact but no longer follows its predecessor: lost data, not a torn write.
    mem.modify(&path, |bytes| {
        bytes.drain(offsets[3] as usize..offsets[4] as usize);
    });
    assert!(matches!(mem.open(), Err(LogError::Corrupt { offset, .. }) if offset == offsets[3]));
}

#[test]
fn incomplete_last_segment_is_removed() {
    for kept in [0, 10, 31, 32] {
        let mem = Mem::new(200);
        let written = batches(20);
        mem.write(&written);
        let segments = mem.segments();
        let last = segments.last().unwrap().clone();
        let previous_end: u64 = last.file_stem().unwrap().to_str().unwrap().parse().unwrap();
        let end = written
            .iter()
            .position(|b| b.header.first_position == previous_end)
            .unwrap();
        mem.modify(&last, |bytes| {
            bytes.truncate(kept);
            // A header that never reached the disk reads as zeros.
            bytes.fill(0);
        });
        let (mut log, report) = mem.open_ok();
        assert_eq!(
            report.repairs,
            [Repair::RemovedIncompleteSegment {
                path: last.clone(),
                bytes: kept as u64
            }]
        );
        assert_eq!(report.segment_count as usize, segments.len() - 1);
        assert_eq!(report.next_position, previous_end);
        assert_eq!(read_all(&log), written[..end]);
        for batch in &written[end..] {
            log.append(batch).unwrap();
        }
        assert_eq!(read_all(&log), written);
    }
}

#[test]
fn incomplete_only_segment_is_recreated() {
    let mem = Mem::new(4096);
    let first = dir().join("00000000000000000000.tlog");
    mem.storage.set_file_bytes(&first, vec![b'T', b'A', b'L']);
    let (log, report) = mem.open_ok();
    assert_eq!(
        report.repairs,
        [Repair::RemovedIncompleteSegment {
            path: first.clone(),
            bytes: 3
        }]
    );
    assert_eq!(report.segment_count, 1);
    assert_eq!(log.next_position(), 0);
    assert_eq!(mem.bytes(&first).len(), 32);
}

#[test]
fn damaged_header_of_a_sealed_segment_refuses_to_open() {
    let mem = Mem::new(200);
    mem.write(&batches(20));
    let sealed = mem.segments()[1].clone();
    mem.modify(&sealed, |bytes| flip(bytes, 17));
    let error = mem.open().unwrap_err();
    assert!(
        matches!(&error, LogError::Corrupt { path, offset: 0, .. } if *path == sealed),
        "{error}"
    );
    assert!(
        error.to_string().contains("segment header crc mismatch"),
        "{error}"
    );
}

#[test]
fn damaged_header_of_the_last_segment_with_records_refuses_to_open() {
    let mem = Mem::new(200);
    mem.write(&batches(20));
    let last = mem.segments().last().unwrap().clone();
    mem.modify(&last, |bytes| flip(bytes, 0));
    let error = mem.open().unwrap_err();
    assert!(error.to_string().contains("bad segment magic"), "{error}");
}

#[test]
fn missing_first_segment_refuses_to_open() {
    use tally_log::Storage;
    let mem = Mem::new(200);
    mem.write(&batches(20));
    mem.storage.remove(&mem.segments()[0]).unwrap();
    let error = mem.open().unwrap_err();
    assert!(
        error.to_string().contains("older segments are missing"),
        "{error}"
    );
}

#[test]
fn sealed_segments_are_not_scanned_on_open() {
    let mem = Mem::new(200);
    let written = batches(20);
    mem.write(&written);
    let sealed = mem.segments()[0].clone();
    let offsets = record_offsets(&mem.bytes(&sealed));
    mem.modify(&sealed, |bytes| flip(bytes, offsets[0] + 30));
    // Opening stays fast and succeeds; the damage shows when the record is read (see verify tests).
    let (log, report) = mem.open_ok();
    assert!(report.repairs.is_empty());
    assert_eq!(
        report.next_position,
        written.last().unwrap().header.end_position()
    );
    let error = crate::util::try_read_from(&log, 0).unwrap_err();
    assert!(
        matches!(&error, LogError::Corrupt { path, offset, .. } if *path == sealed && *offset == offsets[0])
    );
    assert_eq!(
        error.to_string(),
        format!(
            "log segment /data/log/00000000000000000000.tlog is corrupt at byte offset {}: crc mismatch. \
             Run `tally verify /data/log` for details",
            offsets[0]
        )
    );
    // Reads that start after the damaged record are unaffected.
    let later = written[1].header.first_position;
    assert_eq!(
        crate::util::try_read_from(&log, later).unwrap(),
        written[1..]
    );
}

#[test]
fn repairs_are_reported_in_display_form() {
    let mem = Mem::new(1 << 20);
    mem.write(&batches(2));
    let path = mem.segments()[0].clone();
    mem.modify(&path, |bytes| {
        bytes.truncate(records_end(bytes) as usize);
        bytes.extend([1, 2, 3]);
    });
    let (_, report) = mem.open_ok();
    let text = report.to_string();
    assert!(text.starts_with("log /data/log: 1 segment(s), next position 3; truncated 3 byte(s) of torn tail at /data/log/00000000000000000000.tlog offset"), "{text}");
}
