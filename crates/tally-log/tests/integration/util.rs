//! Shared helpers, so that tests state what they check rather than how to drive the API.

use std::path::{Path, PathBuf};

use tally_log::{
    Batch, BatchHeader, EventLog, LogError, LogOptions, MemStorage, RecoveryReport, SegmentedLog,
};

/// The log directory used with [`MemStorage`].
pub const DIR: &str = "/data/log";

pub fn dir() -> PathBuf {
    PathBuf::from(DIR)
}

/// A batch whose body is derived from its position, so that any mix-up shows.
pub fn batch(first_position: u64, event_count: u32, body_len: usize) -> Batch {
    let body = (0..body_len)
        .map(|i| (first_position.wrapping_mul(31) as usize).wrapping_add(i) as u8)
        .collect();
    Batch {
        header: BatchHeader {
            first_position,
            event_count,
            timestamp_ns: first_position.wrapping_add(1_000),
        },
        body,
    }
}

/// `count` contiguous batches from position `from`, with varied event counts and body sizes.
pub fn batches_from(from: u64, count: usize) -> Vec<Batch> {
    let mut position = from;
    (0..count)
        .map(|i| {
            let batch = batch(position, 1 + (i % 3) as u32, 10 + (i * 7) % 50);
            position = batch.header.end_position();
            batch
        })
        .collect()
}

pub fn batches(count: usize) -> Vec<Batch> {
    batches_from(0, count)
}

pub fn append_all(log: &mut dyn EventLog, batches: &[Batch]) {
    for batch in batches {
        log.append(batch).unwrap();
    }
}

pub fn try_read_from(log: &dyn EventLog, position: u64) -> Result<Vec<Batch>, LogError> {
    let mut reader = log.reader();
    let batches = reader.read_from(position)?.collect();
    batches
}

#[track_caller]
pub fn read_all(log: &dyn EventLog) -> Vec<Batch> {
    try_read_from(log, 0).unwrap()
}

/// A log on [`MemStorage`].
pub struct Mem {
    pub storage: MemStorage,
    pub options: LogOptions,
}

impl Mem {
    pub fn new(segment_bytes_max: u64) -> Mem {
        Mem {
            storage: MemStorage::new(),
            options: LogOptions { segment_bytes_max },
        }
    }

    pub fn open(&self) -> Result<(SegmentedLog, RecoveryReport), LogError> {
        SegmentedLog::open_in(
            std::sync::Arc::new(self.storage.clone()),
            &dir(),
            self.options.clone(),
        )
    }

    #[track_caller]
    pub fn open_ok(&self) -> (SegmentedLog, RecoveryReport) {
        self.open().unwrap()
    }

    /// Opens the log, appends `batches`, and closes it.
    pub fn write(&self, batches: &[Batch]) {
        let (mut log, _) = self.open_ok();
        append_all(&mut log, batches);
    }

    /// Segment files, ascending.
    pub fn segments(&self) -> Vec<PathBuf> {
        self.storage
            .paths()
            .into_iter()
            .filter(|path| path.extension().is_some_and(|ext| ext == "tlog"))
            .collect()
    }

    pub fn bytes(&self, path: &Path) -> Vec<u8> {
        self.storage.file_bytes(path).unwrap()
    }

    pub fn modify(&self, path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
        let mut bytes = self.bytes(path);
        f(&mut bytes);
        self.storage.set_file_bytes(path, bytes);
    }
}

/// Offsets of the records in a segment file, found by following the length fields up to the
/// end of the file or the zeros the writer keeps ahead of its records.
pub fn record_offsets(segment: &[u8]) -> Vec<u64> {
    let mut offsets = Vec::new();
    let mut offset = 32usize;
    while offset + 8 <= segment.len() {
        let length = u32::from_le_bytes(segment[offset..offset + 4].try_into().unwrap()) as usize;
        if length == 0 {
            break;
        }
        offsets.push(offset as u64);
        offset += 8 + length;
    }
    offsets
}

/// The offset just past the last record of a segment file: where its zero fill starts.
pub fn records_end(segment: &[u8]) -> u64 {
    match record_offsets(segment).last() {
        None => 32,
        Some(&last) => {
            let at = last as usize;
            let length = u32::from_le_bytes(segment[at..at + 4].try_into().unwrap());
            last + 8 + u64::from(length)
        }
    }
}

/// A segment header, encoded independently of the crate from `docs/format.md`.
pub fn encode_segment_header(first_position: u64) -> Vec<u8> {
    let mut header = Vec::new();
    header.extend_from_slice(b"TALLYLOG");
    header.extend_from_slice(&1u32.to_le_bytes());
    header.extend_from_slice(&[0; 4]);
    header.extend_from_slice(&first_position.to_le_bytes());
    header.extend_from_slice(&[0; 4]);
    let crc = crc32c::crc32c(&header);
    header.extend_from_slice(&crc.to_le_bytes());
    header
}

/// A record, encoded independently of the crate from `docs/format.md`.
pub fn encode_record(batch: &Batch) -> Vec<u8> {
    let mut payload = Vec::new();
    payload.extend_from_slice(&batch.header.first_position.to_le_bytes());
    payload.extend_from_slice(&batch.header.event_count.to_le_bytes());
    payload.extend_from_slice(&batch.header.timestamp_ns.to_le_bytes());
    payload.extend_from_slice(&batch.body);
    let length = (payload.len() as u32).to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&length), &payload);
    let mut record = length.to_vec();
    record.extend_from_slice(&crc.to_le_bytes());
    record.extend_from_slice(&payload);
    record
}

/// Flips one bit.
pub fn flip(bytes: &mut [u8], offset: u64) {
    bytes[offset as usize] ^= 0x10;
}
