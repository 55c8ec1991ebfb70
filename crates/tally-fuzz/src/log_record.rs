//! Target `log_record`: segment files as a restart meets them.
//!
//! Input: one flags byte, then the records of the log (`[length | crc32c | payload]`, see
//! `docs/format.md`), which the harness puts behind valid segment headers in memory. Flags:
//! [`FIX_CRCS`] rewrites the CRC of every record whose length fits, so that mutations reach the
//! batch header and the event decoder instead of stopping at a checksum; [`SPLIT`] puts the
//! second half of the records in a second segment, so that sealed segments and the boundary
//! between segments are read too.
//!
//! The log is checked read-only (`verify_dir_with`, what `tally verify` does), then opened (the
//! recovery a restart runs, which may cut a torn tail), read from position 0 and replayed through
//! the ledger rules. Promises checked: no panic; opening and reading succeed exactly when
//! verification finds no corruption, and yield the same batches; the replayed state keeps every
//! invariant and keeps working; the recovered log takes a new batch that survives a reopen.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;

use tally_core::{encode_events, Event, Id, Ledger};
use tally_engine::replay_batch;
use tally_log::{
    verify_dir_with, Batch, BatchHeader, EventLog, LogError, LogOptions, MemStorage, SegmentedLog,
};

use crate::ledger_check::keep_working;
use crate::Reached;

/// Flag: recompute each record's CRC.
pub const FIX_CRCS: u8 = 1;
/// Flag: split the records between two segments.
pub const SPLIT: u8 = 2;

/// Bytes in a segment header (format version 1).
const SEGMENT_HEADER_BYTES: usize = 32;
/// Bytes of `length` and `crc32c` in front of a record's payload.
const RECORD_HEADER_BYTES: usize = 8;
/// Bytes of the batch header at the start of a payload.
const BATCH_HEADER_BYTES: usize = 20;

/// Runs one input; panics if the log breaks a promise.
pub fn run(data: &[u8]) -> Reached {
    let Some((&flags, records)) = data.split_first() else {
        return Reached::Refused;
    };
    let mut records = records.to_vec();
    if flags & FIX_CRCS != 0 {
        fix_crcs(&mut records);
    }
    let storage = MemStorage::new();
    let dir = Path::new("/log");
    for (first_position, bytes) in segments(&records, flags & SPLIT != 0) {
        let mut file = segment_header(first_position).to_vec();
        file.extend_from_slice(bytes);
        storage.set_file_bytes(&dir.join(format!("{first_position:020}.tlog")), file);
    }

    let mut visited = Vec::new();
    let verified = verify_dir_with(&storage, dir, |batch| {
        visited.push(batch.clone());
        ControlFlow::Continue(())
    })
    .expect("in-memory storage does not fail");
    let corrupt = verified.has_corruption();

    let (log, batches) = match open_and_read(&storage, dir) {
        Ok(opened) => opened,
        Err(error) => {
            assert!(
                corrupt,
                "opening or reading fails ({error}) on a log that verification passes: {verified}"
            );
            return Reached::Refused;
        }
    };
    assert!(
        !corrupt,
        "verification reports corruption in a log that opens and reads: {verified}"
    );
    assert_eq!(
        batches, visited,
        "recovery and verification see the same batches"
    );
    assert_eq!(log.next_position(), verified.next_position);

    let mut ledger = Ledger::new();
    let replayed = batches
        .iter()
        .try_for_each(|batch| replay_batch(&mut ledger, batch));
    if replayed.is_ok() {
        if let Err(violation) = ledger.check_invariants() {
            panic!("replay accepted a log that breaks an invariant: {violation}");
        }
        keep_working(&ledger);
    }
    append_and_reopen(&storage, dir, log);
    match replayed {
        Ok(()) => Reached::Accepted,
        Err(_) => Reached::Refused,
    }
}

fn open_and_read(storage: &MemStorage, dir: &Path) -> Result<(SegmentedLog, Vec<Batch>), LogError> {
    let (log, _report) =
        SegmentedLog::open_in(Arc::new(storage.clone()), dir, LogOptions::default())?;
    let batches = log.reader().read_from(0)?.collect::<Result<Vec<_>, _>>()?;
    Ok((log, batches))
}

/// A recovered log, torn tail cut, must take the next batch, and keep it across a reopen.
fn append_and_reopen(storage: &MemStorage, dir: &Path, mut log: SegmentedLog) {
    let first_position = log.next_position();
    let event = Event::TokenRevoked {
        token_id: Id::new("fz-token").expect("a valid id"),
    };
    let batch = Batch {
        header: BatchHeader {
            first_position,
            event_count: 1,
            timestamp_ns: 1,
        },
        body: encode_events(&[event]),
    };
    log.append(&batch)
        .expect("a recovered log takes the next batch");
    drop(log);
    let (log, report) =
        SegmentedLog::open_in(Arc::new(storage.clone()), dir, LogOptions::default())
            .expect("a log reopens after a clean append");
    assert!(
        report.repairs.is_empty(),
        "nothing to repair after a clean append: {report}"
    );
    let read: Vec<Batch> = log
        .reader()
        .read_from(first_position)
        .expect("the appended batch is readable")
        .collect::<Result<_, _>>()
        .expect("the appended batch reads back");
    assert_eq!(read, vec![batch]);
}

/// The `[length | crc]` headers found by walking `records` from the start, as
/// `(offset, record size)`, up to the first record that does not fit.
fn walk(records: &[u8]) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    let mut offset = 0;
    while let Some(length) = records.get(offset..offset + 4) {
        let length = u32::from_le_bytes(length.try_into().expect("4 bytes")) as usize;
        let size = RECORD_HEADER_BYTES + length;
        if records.len() - offset < size {
            break;
        }
        found.push((offset, size));
        offset += size;
    }
    found
}

fn fix_crcs(records: &mut [u8]) {
    for (offset, size) in walk(records) {
        let record = &mut records[offset..offset + size];
        let crc = crc32c::crc32c_append(crc32c::crc32c(&record[0..4]), &record[8..]);
        record[4..8].copy_from_slice(&crc.to_le_bytes());
    }
}

/// The segments to write, as `(first_position, records)`: one, or two when `split` and there
/// are at least two records, the second starting where the first's last record ends.
fn segments(records: &[u8], split: bool) -> Vec<(u64, &[u8])> {
    let found = walk(records);
    if !split || found.len() < 2 {
        return vec![(0, records)];
    }
    let (last_offset, last_size) = found[found.len().div_ceil(2) - 1];
    let cut = last_offset + last_size;
    let last = &records[last_offset..cut];
    if last_size < RECORD_HEADER_BYTES + BATCH_HEADER_BYTES {
        return vec![(0, records)];
    }
    let first_position = u64::from_le_bytes(last[8..16].try_into().expect("8 bytes"));
    let event_count = u32::from_le_bytes(last[16..20].try_into().expect("4 bytes"));
    let second_position = first_position.wrapping_add(u64::from(event_count));
    // Two files of one name would be one file.
    if second_position == 0 {
        return vec![(0, records)];
    }
    vec![(0, &records[..cut]), (second_position, &records[cut..])]
}

/// A version 1 segment header, written from `docs/format.md` rather than by the log, so that a
/// change of the log's own encoder cannot hide from the fuzzer.
fn segment_header(first_position: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    header[0..8].copy_from_slice(b"TALLYLOG");
    header[8..12].copy_from_slice(&1u32.to_le_bytes());
    header[16..24].copy_from_slice(&first_position.to_le_bytes());
    let crc = crc32c::crc32c(&header[0..28]);
    header[28..32].copy_from_slice(&crc.to_le_bytes());
    header
}
