//! The on-disk byte layout (see `docs/format.md`). Pure functions only: no I/O,
//! so every encoding rule can be tested without a disk.

use crate::limits::RECORD_PAYLOAD_BYTES_MAX;
use crate::{Batch, BatchHeader};

/// Magic bytes opening every segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"TALLYLOG";
/// Magic bytes opening every snapshot file.
pub(crate) const SNAPSHOT_MAGIC: [u8; 8] = *b"TALLYSNP";
/// The only format version this crate reads and writes (segments and snapshots).
pub(crate) const FORMAT_VERSION: u32 = 1;

/// Bytes in a segment header: magic, version, reserved, first_position, reserved, crc.
pub(crate) const SEGMENT_HEADER_SIZE: u64 = 32;
/// Bytes before a record's payload: length and crc.
pub(crate) const RECORD_HEADER_SIZE: u64 = 8;
/// Bytes of the batch header at the start of a payload: first_position, event_count, timestamp_ns.
pub(crate) const BATCH_HEADER_SIZE: u64 = 20;
/// Bytes read to judge a record without its body.
pub(crate) const RECORD_PREFIX_SIZE: usize = (RECORD_HEADER_SIZE + BATCH_HEADER_SIZE) as usize;
/// Bytes in a snapshot header: magic, version, reserved, position, body length, body crc, header crc.
pub(crate) const SNAPSHOT_HEADER_SIZE: u64 = 40;

/// Segment file name suffix.
pub(crate) const SEGMENT_SUFFIX: &str = ".tlog";
/// Digits in a zero-padded position in a file name: enough for any u64.
const POSITION_DIGITS: usize = 20;

/// The name of the segment file whose first record starts at `first_position`.
pub(crate) fn segment_file_name(first_position: u64) -> String {
    format!(
        "{first_position:0width$}{SEGMENT_SUFFIX}",
        width = POSITION_DIGITS
    )
}

/// The first position encoded in a segment file name, or `None` when the name is not one.
pub(crate) fn parse_segment_file_name(name: &str) -> Option<u64> {
    parse_padded_position(name.strip_suffix(SEGMENT_SUFFIX)?)
}

/// Parses exactly [`POSITION_DIGITS`] ASCII digits.
pub(crate) fn parse_padded_position(digits: &str) -> Option<u64> {
    if digits.len() != POSITION_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Zero-padded decimal position, as used in file names.
pub(crate) fn padded_position(position: u64) -> String {
    format!("{position:0width$}", width = POSITION_DIGITS)
}

pub(crate) fn encode_segment_header(first_position: u64) -> [u8; SEGMENT_HEADER_SIZE as usize] {
    let mut header = [0u8; SEGMENT_HEADER_SIZE as usize];
    header[0..8].copy_from_slice(&SEGMENT_MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    // Bytes 12..16 and 24..28 are reserved and zero in version 1.
    header[16..24].copy_from_slice(&first_position.to_le_bytes());
    let crc = crc32c::crc32c(&header[0..28]);
    header[28..32].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Returns the segment's first position, or why the header is invalid.
pub(crate) fn decode_segment_header(
    header: &[u8; SEGMENT_HEADER_SIZE as usize],
) -> Result<u64, &'static str> {
    if header[0..8] != SEGMENT_MAGIC {
        return Err("bad segment magic (not a tally log segment)");
    }
    let crc_stored = u32_at(header, 28);
    if crc32c::crc32c(&header[0..28]) != crc_stored {
        return Err("segment header crc mismatch");
    }
    // The version is checked after the crc so that a flipped bit reads as corruption, not as a
    // file from an unknown future release.
    if u32_at(header, 8) != FORMAT_VERSION {
        return Err("unsupported segment format version");
    }
    if u32_at(header, 12) != 0 || u32_at(header, 24) != 0 {
        return Err("reserved segment header bytes are not zero");
    }
    Ok(u64_at(header, 16))
}

/// Encodes one batch as one record: `[length | crc | first_position | event_count | timestamp_ns | body]`.
pub(crate) fn encode_record(batch: &Batch) -> Vec<u8> {
    let length = payload_length(batch.body.len());
    let mut record = Vec::with_capacity(RECORD_HEADER_SIZE as usize + length as usize);
    record.extend_from_slice(&length.to_le_bytes());
    record.extend_from_slice(&[0u8; 4]);
    record.extend_from_slice(&batch.header.first_position.to_le_bytes());
    record.extend_from_slice(&batch.header.event_count.to_le_bytes());
    record.extend_from_slice(&batch.header.timestamp_ns.to_le_bytes());
    record.extend_from_slice(&batch.body);
    let crc = record_crc(&record[0..4], &record[8..]);
    record[4..8].copy_from_slice(&crc.to_le_bytes());
    assert_eq!(record.len() as u64, RECORD_HEADER_SIZE + u64::from(length));
    record
}

/// The payload length of a record whose body has `body_len` bytes.
pub(crate) fn payload_length(body_len: usize) -> u32 {
    assert!(body_len <= crate::limits::BATCH_BODY_BYTES_MAX as usize);
    BATCH_HEADER_SIZE as u32 + body_len as u32
}

/// The checksum of a record: crc32c over the length field bytes, then the payload, so that
/// a corrupted length is caught as surely as a corrupted body.
pub(crate) fn record_crc(length_bytes: &[u8], payload: &[u8]) -> u32 {
    debug_assert_eq!(length_bytes.len(), 4);
    crc32c::crc32c_append(crc32c::crc32c(length_bytes), payload)
}

/// What the first [`RECORD_PREFIX_SIZE`] bytes of a record claim; nothing is verified yet
/// beyond the plausibility checks of [`check_prefix`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecordPrefix {
    pub(crate) length: u32,
    pub(crate) crc: u32,
    pub(crate) header: BatchHeader,
}

impl RecordPrefix {
    /// Bytes the whole record occupies on disk.
    pub(crate) fn record_size(&self) -> u64 {
        RECORD_HEADER_SIZE + u64::from(self.length)
    }
}

pub(crate) fn decode_prefix(bytes: &[u8]) -> RecordPrefix {
    assert!(bytes.len() >= RECORD_PREFIX_SIZE);
    RecordPrefix {
        length: u32_at(bytes, 0),
        crc: u32_at(bytes, 4),
        header: BatchHeader {
            first_position: u64_at(bytes, 8),
            event_count: u32_at(bytes, 16),
            timestamp_ns: u64_at(bytes, 20),
        },
    }
}

/// Checks what can be checked without the body: the length is in range and the
/// record fits in the `available` bytes from its start.
pub(crate) fn check_prefix(prefix: &RecordPrefix, available: u64) -> Result<(), &'static str> {
    if prefix.length == 0 {
        return Err("zero length (zero-filled or never written)");
    }
    if u64::from(prefix.length) < BATCH_HEADER_SIZE {
        return Err("length is shorter than a batch header");
    }
    if prefix.length > RECORD_PAYLOAD_BYTES_MAX {
        return Err("length is over the record size limit");
    }
    if prefix.record_size() > available {
        return Err("record extends past the end of the data");
    }
    Ok(())
}

/// Checks a CRC-verified record's header for values no writer produces.
pub(crate) fn check_header(header: &BatchHeader) -> Result<(), &'static str> {
    if header.event_count == 0 {
        return Err("event count is zero");
    }
    if header
        .first_position
        .checked_add(u64::from(header.event_count))
        .is_none()
    {
        return Err("positions overflow u64");
    }
    Ok(())
}

/// Verifies one complete record (`bytes` holds exactly the record) and returns its prefix.
pub(crate) fn verify_record(bytes: &[u8]) -> Result<RecordPrefix, &'static str> {
    if bytes.len() < RECORD_PREFIX_SIZE {
        return Err("record is shorter than its header");
    }
    let prefix = decode_prefix(bytes);
    check_prefix(&prefix, bytes.len() as u64)?;
    if prefix.record_size() != bytes.len() as u64 {
        return Err("record length does not match the record index");
    }
    if record_crc(&bytes[0..4], &bytes[RECORD_HEADER_SIZE as usize..]) != prefix.crc {
        return Err("crc mismatch");
    }
    check_header(&prefix.header)?;
    Ok(prefix)
}

/// Decodes and verifies one complete record (`bytes` holds exactly the record).
pub(crate) fn decode_record(mut bytes: Vec<u8>) -> Result<Batch, &'static str> {
    let prefix = verify_record(&bytes)?;
    // Drain moves the body to the front in place rather than allocating a second buffer.
    bytes.drain(..RECORD_PREFIX_SIZE);
    Ok(Batch {
        header: prefix.header,
        body: bytes,
    })
}

pub(crate) struct SnapshotHeader {
    pub(crate) position: u64,
    pub(crate) body_len: u64,
    pub(crate) body_crc: u32,
}

pub(crate) fn encode_snapshot_header(
    position: u64,
    body: &[u8],
) -> [u8; SNAPSHOT_HEADER_SIZE as usize] {
    let mut header = [0u8; SNAPSHOT_HEADER_SIZE as usize];
    header[0..8].copy_from_slice(&SNAPSHOT_MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    // Bytes 12..16 are reserved and zero in version 1.
    header[16..24].copy_from_slice(&position.to_le_bytes());
    header[24..32].copy_from_slice(&(body.len() as u64).to_le_bytes());
    header[32..36].copy_from_slice(&crc32c::crc32c(body).to_le_bytes());
    let crc = crc32c::crc32c(&header[0..36]);
    header[36..40].copy_from_slice(&crc.to_le_bytes());
    header
}

pub(crate) fn decode_snapshot_header(
    header: &[u8; SNAPSHOT_HEADER_SIZE as usize],
) -> Result<SnapshotHeader, &'static str> {
    if header[0..8] != SNAPSHOT_MAGIC {
        return Err("bad snapshot magic");
    }
    if crc32c::crc32c(&header[0..36]) != u32_at(header, 36) {
        return Err("snapshot header crc mismatch");
    }
    if u32_at(header, 8) != FORMAT_VERSION {
        return Err("unsupported snapshot format version");
    }
    if u32_at(header, 12) != 0 {
        return Err("reserved snapshot header bytes are not zero");
    }
    Ok(SnapshotHeader {
        position: u64_at(header, 16),
        body_len: u64_at(header, 24),
        body_crc: u32_at(header, 32),
    })
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(first_position: u64, event_count: u32, body: &[u8]) -> Batch {
        Batch {
            header: BatchHeader {
                first_position,
                event_count,
                timestamp_ns: 7,
            },
            body: body.to_vec(),
        }
    }

    #[test]
    fn record_round_trip() {
        let original = batch(42, 3, b"hello");
        let bytes = encode_record(&original);
        assert_eq!(bytes.len(), 8 + 20 + 5);
        assert_eq!(decode_record(bytes).unwrap(), original);
    }

    #[test]
    fn record_layout_is_little_endian() {
        let bytes = encode_record(&batch(0x0102, 1, b"x"));
        assert_eq!(&bytes[0..4], &21u32.to_le_bytes());
        assert_eq!(&bytes[8..16], &0x0102u64.to_le_bytes());
        assert_eq!(&bytes[16..20], &1u32.to_le_bytes());
        assert_eq!(bytes[28], b'x');
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let bytes = encode_record(&batch(9, 2, b"body"));
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_record(damaged).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn zero_event_count_is_rejected_even_with_a_valid_crc() {
        let bytes = encode_record(&batch(9, 0, b""));
        assert_eq!(decode_record(bytes), Err("event count is zero"));
    }

    #[test]
    fn segment_header_round_trip_and_damage() {
        let header = encode_segment_header(77);
        assert_eq!(decode_segment_header(&header), Ok(77));
        for bit in 0..header.len() * 8 {
            let mut damaged = header;
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_segment_header(&damaged).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn snapshot_header_round_trip() {
        let header = encode_snapshot_header(5, b"abc");
        let decoded = decode_snapshot_header(&header).unwrap();
        assert_eq!(decoded.position, 5);
        assert_eq!(decoded.body_len, 3);
        assert_eq!(decoded.body_crc, crc32c::crc32c(b"abc"));
    }

    #[test]
    fn file_names() {
        assert_eq!(segment_file_name(0), "00000000000000000000.tlog");
        assert_eq!(segment_file_name(u64::MAX), "18446744073709551615.tlog");
        assert_eq!(
            parse_segment_file_name("00000000000000000042.tlog"),
            Some(42)
        );
        assert_eq!(parse_segment_file_name("42.tlog"), None);
        assert_eq!(parse_segment_file_name("0000000000000000004x.tlog"), None);
        assert_eq!(parse_segment_file_name("99999999999999999999.tlog"), None);
        assert_eq!(
            parse_segment_file_name("00000000000000000042.tlog.tmp"),
            None
        );
    }
}
