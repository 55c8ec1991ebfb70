//! Reading records off a segment: the bounded read window, record checks, and
//! the torn-tail-or-corruption decision shared by recovery and verification.

use std::io;

use crate::format::{
    self, RecordPrefix, RECORD_HEADER_SIZE, RECORD_PREFIX_SIZE, SEGMENT_HEADER_SIZE,
};
use crate::limits::READ_WINDOW_BYTES;
use crate::storage::StorageFile;
use crate::Batch;

/// A bounded cache of one contiguous range of one file, so that scans and small
/// record reads cost one large positional read instead of many small ones.
#[derive(Debug, Default)]
pub(crate) struct ReadWindow {
    /// Which file the cached bytes belong to (a segment's first position).
    key: u64,
    start: u64,
    bytes: Vec<u8>,
}

impl ReadWindow {
    /// Bytes `[offset, offset + len)` of `file`, identified by `key`. The bytes up to
    /// `limit` must exist and never change; the window reads at most that far.
    pub(crate) fn get(
        &mut self,
        key: u64,
        file: &dyn StorageFile,
        offset: u64,
        len: usize,
        limit: u64,
    ) -> io::Result<&[u8]> {
        assert!(len <= READ_WINDOW_BYTES);
        assert!(offset + len as u64 <= limit);
        let cached_end = self.start + self.bytes.len() as u64;
        let hit = self.key == key && offset >= self.start && offset + len as u64 <= cached_end;
        if !hit {
            let fill = (limit - offset).min(READ_WINDOW_BYTES as u64) as usize;
            // Invalidate first, so that a failed read never leaves stale bytes labelled as valid.
            self.bytes.clear();
            self.bytes.resize(fill, 0);
            if let Err(error) = file.read_exact_at(&mut self.bytes, offset) {
                self.bytes.clear();
                return Err(error);
            }
            self.key = key;
            self.start = offset;
        }
        let from = (offset - self.start) as usize;
        Ok(&self.bytes[from..from + len])
    }
}

/// Reads and checks the header of the segment file whose name says `first_position`.
/// Returns the reason when the header is missing, damaged or names another position.
pub(crate) fn check_segment_header(
    file: &dyn StorageFile,
    file_len: u64,
    first_position: u64,
) -> io::Result<Result<(), &'static str>> {
    if file_len < SEGMENT_HEADER_SIZE {
        return Ok(Err("file is shorter than a segment header"));
    }
    let mut header = [0u8; SEGMENT_HEADER_SIZE as usize];
    file.read_exact_at(&mut header, 0)?;
    Ok(match format::decode_segment_header(&header) {
        Ok(position) if position == first_position => Ok(()),
        Ok(_) => Err("segment header position does not match the file name"),
        Err(reason) => Err(reason),
    })
}

/// The verdict on the bytes at one offset.
#[derive(Debug)]
pub(crate) enum Probe {
    /// A complete record with a matching CRC and a plausible header.
    Valid(RecordPrefix),
    /// Not a valid record, and why.
    Invalid(&'static str),
}

/// Reads the fixed-size start of the record at `offset` and checks what it claims (length in
/// range, record within `end`), or says why the bytes there cannot be a record.
fn prefix_at(
    window: &mut ReadWindow,
    key: u64,
    file: &dyn StorageFile,
    offset: u64,
    end: u64,
) -> io::Result<Result<RecordPrefix, &'static str>> {
    assert!(offset < end);
    let available = end - offset;
    if available < RECORD_PREFIX_SIZE as u64 {
        let rest = window.get(key, file, offset, available as usize, end)?;
        let reason = if rest.iter().all(|&b| b == 0) {
            "zero-filled tail"
        } else {
            "partial record header"
        };
        return Ok(Err(reason));
    }
    let prefix = format::decode_prefix(window.get(key, file, offset, RECORD_PREFIX_SIZE, end)?);
    Ok(format::check_prefix(&prefix, available).map(|()| prefix))
}

/// Checks the record at `offset` completely (CRC streamed through the window, no body
/// allocation), where the file's data ends at `end`.
pub(crate) fn probe_record(
    window: &mut ReadWindow,
    key: u64,
    file: &dyn StorageFile,
    offset: u64,
    end: u64,
) -> io::Result<Probe> {
    let prefix = match prefix_at(window, key, file, offset, end)? {
        Ok(prefix) => prefix,
        Err(reason) => return Ok(Probe::Invalid(reason)),
    };
    let mut crc = crc32c::crc32c(&prefix.length.to_le_bytes());
    let mut chunk_offset = offset + RECORD_HEADER_SIZE;
    let payload_end = offset + prefix.record_size();
    while chunk_offset < payload_end {
        let chunk_len = (payload_end - chunk_offset).min(READ_WINDOW_BYTES as u64) as usize;
        crc = crc32c::crc32c_append(crc, window.get(key, file, chunk_offset, chunk_len, end)?);
        chunk_offset += chunk_len as u64;
    }
    if crc != prefix.crc {
        return Ok(Probe::Invalid("crc mismatch"));
    }
    if let Err(reason) = format::check_header(&prefix.header) {
        return Ok(Probe::Invalid(reason));
    }
    Ok(Probe::Valid(prefix))
}

/// Reads and verifies the whole record at `offset`, where the file's data ends at `end`.
pub(crate) fn read_record(
    window: &mut ReadWindow,
    key: u64,
    file: &dyn StorageFile,
    offset: u64,
    end: u64,
) -> io::Result<Result<Batch, &'static str>> {
    let prefix = match prefix_at(window, key, file, offset, end)? {
        Ok(prefix) => prefix,
        Err(reason) => return Ok(Err(reason)),
    };
    let size = prefix.record_size() as usize;
    let bytes = if size <= READ_WINDOW_BYTES {
        window.get(key, file, offset, size, end)?.to_vec()
    } else {
        let mut bytes = vec![0u8; size];
        file.read_exact_at(&mut bytes, offset)?;
        bytes
    };
    Ok(format::decode_record(bytes))
}

/// Where the valid records of a segment end.
#[derive(Debug)]
pub(crate) struct Scan {
    /// Valid, contiguous records from the segment header on.
    pub(crate) record_count: u64,
    /// Offset just past the last valid record.
    pub(crate) end_offset: u64,
    /// Position just past the last valid record.
    pub(crate) next_position: u64,
    /// The first bytes that are not a valid next record, if the valid records stop short of `end`.
    pub(crate) invalid: Option<Invalid>,
}

/// The first invalid record of a segment.
#[derive(Debug)]
pub(crate) struct Invalid {
    pub(crate) offset: u64,
    pub(crate) reason: String,
}

/// Checks the records of a segment in order, from its header to `end`, stopping at the first
/// one that is invalid or does not continue the positions.
pub(crate) fn scan_records(
    window: &mut ReadWindow,
    file: &dyn StorageFile,
    first_position: u64,
    end: u64,
) -> io::Result<Scan> {
    assert!(end >= SEGMENT_HEADER_SIZE);
    let mut scan = Scan {
        record_count: 0,
        end_offset: SEGMENT_HEADER_SIZE,
        next_position: first_position,
        invalid: None,
    };
    while scan.end_offset < end {
        let reason = match probe_record(window, first_position, file, scan.end_offset, end)? {
            Probe::Valid(prefix) if prefix.header.first_position == scan.next_position => {
                scan.record_count += 1;
                scan.end_offset += prefix.record_size();
                scan.next_position += u64::from(prefix.header.event_count);
                continue;
            }
            Probe::Valid(prefix) => format!(
                "position discontinuity: expected a batch starting at position {}, found {}",
                scan.next_position, prefix.header.first_position
            ),
            Probe::Invalid(reason) => reason.to_owned(),
        };
        scan.invalid = Some(Invalid {
            offset: scan.end_offset,
            reason,
        });
        break;
    }
    assert!(scan.end_offset <= end);
    Ok(scan)
}

/// The offset of the first valid record at or after `from` whose first position is above
/// `position_floor`, if any. Such a record is proof that the invalid bytes at `from` are not a
/// torn write: the writer never starts a record before the previous one is durable, so only the
/// very last record of a log can be torn.
///
/// Every offset is tried, because a damaged length tells nothing about where the next
/// record starts. Cheap header checks reject almost every offset before any CRC is computed.
pub(crate) fn find_valid_record(
    window: &mut ReadWindow,
    key: u64,
    file: &dyn StorageFile,
    from: u64,
    end: u64,
    position_floor: u64,
) -> io::Result<Option<u64>> {
    let mut offset = from;
    while offset + RECORD_PREFIX_SIZE as u64 <= end {
        let prefix =
            format::decode_prefix(window.get(key, file, offset, RECORD_PREFIX_SIZE, end)?);
        let plausible = format::check_prefix(&prefix, end - offset).is_ok()
            && prefix.header.event_count > 0
            && prefix.header.first_position > position_floor;
        if plausible
            && matches!(
                probe_record(window, key, file, offset, end)?,
                Probe::Valid(_)
            )
        {
            return Ok(Some(offset));
        }
        offset += 1;
    }
    Ok(None)
}

/// Whether bytes `[from, end)` are all zeros: the zero fill the writer keeps ahead of the
/// records of the active segment, which ends the log without being a torn write.
pub(crate) fn is_zero_fill(
    window: &mut ReadWindow,
    key: u64,
    file: &dyn StorageFile,
    from: u64,
    end: u64,
) -> io::Result<bool> {
    let mut offset = from;
    while offset < end {
        let len = (end - offset).min(READ_WINDOW_BYTES as u64) as usize;
        if window
            .get(key, file, offset, len, end)?
            .iter()
            .any(|&byte| byte != 0)
        {
            return Ok(false);
        }
        offset += len as u64;
    }
    Ok(true)
}

/// Why the bytes at an invalid record are corruption rather than a torn write.
pub(crate) fn not_torn_reason(reason: &str, valid_offset: u64) -> String {
    format!(
        "{reason}; records after it are intact (the next valid record starts at byte offset {valid_offset}), \
         so this is not a torn write"
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::format::{encode_record, encode_segment_header};
    use crate::storage::Storage;
    use crate::{BatchHeader, MemStorage};

    fn segment_file(records: &[(u64, u32, usize)]) -> (Box<dyn StorageFile>, Vec<u64>) {
        let storage = MemStorage::new();
        let file = storage.create_new(Path::new("/s")).unwrap();
        let mut bytes = encode_segment_header(0).to_vec();
        let mut offsets = Vec::new();
        for &(first_position, event_count, body_len) in records {
            offsets.push(bytes.len() as u64);
            let header = BatchHeader {
                first_position,
                event_count,
                timestamp_ns: 0,
            };
            bytes.extend(encode_record(&Batch {
                header,
                body: vec![7; body_len],
            }));
        }
        file.write_all_at(&bytes, 0).unwrap();
        (file, offsets)
    }

    #[test]
    fn window_serves_cached_ranges_and_never_reads_past_the_limit() {
        let (file, _) = segment_file(&[(0, 1, 10)]);
        let len = file.len().unwrap();
        let mut window = ReadWindow::default();
        assert_eq!(window.get(0, &*file, 0, 8, len).unwrap(), &b"TALLYLOG"[..]);
        // The whole file fit in the window; a request for another key reloads.
        assert_eq!(window.bytes.len() as u64, len);
        window.get(1, &*file, 4, 4, 20).unwrap();
        assert_eq!((window.key, window.start, window.bytes.len()), (1, 4, 16));
    }

    #[test]
    fn scan_stops_at_the_first_invalid_record() {
        let (file, offsets) = segment_file(&[(0, 2, 5), (2, 1, 5), (4, 1, 5)]);
        let len = file.len().unwrap();
        let scan = scan_records(&mut ReadWindow::default(), &*file, 0, len).unwrap();
        assert_eq!(
            (scan.record_count, scan.next_position, scan.end_offset),
            (2, 3, offsets[2])
        );
        let invalid = scan.invalid.unwrap();
        assert_eq!(invalid.offset, offsets[2]);
        assert!(
            invalid.reason.starts_with("position discontinuity"),
            "{}",
            invalid.reason
        );
        // The discontinuous record is itself valid and above the expected position: not torn.
        let found =
            find_valid_record(&mut ReadWindow::default(), 0, &*file, offsets[2], len, 3).unwrap();
        assert_eq!(found, Some(offsets[2]));
        // Records at or below the floor do not count.
        let found =
            find_valid_record(&mut ReadWindow::default(), 0, &*file, offsets[2], len, 4).unwrap();
        assert_eq!(found, None);
    }

    #[test]
    fn probe_streams_the_crc_of_records_larger_than_the_window() {
        let (file, offsets) = segment_file(&[(0, 1, READ_WINDOW_BYTES * 2 + 3)]);
        let len = file.len().unwrap();
        let probe = probe_record(&mut ReadWindow::default(), 0, &*file, offsets[0], len).unwrap();
        assert!(matches!(probe, Probe::Valid(prefix) if prefix.record_size() == len - offsets[0]));
        file.write_all_at(&[0], len - 1).unwrap();
        let probe = probe_record(&mut ReadWindow::default(), 0, &*file, offsets[0], len).unwrap();
        assert!(matches!(probe, Probe::Invalid("crc mismatch")));
    }
}
