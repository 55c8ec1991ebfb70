//! Every bound the log enforces, in one place, each with the reason for its value.

use crate::format::{BATCH_HEADER_SIZE, RECORD_HEADER_SIZE, SEGMENT_HEADER_SIZE};

/// Bytes in one batch body. A batch is one group commit, so this bounds the
/// work behind one fdatasync and the memory a reader allocates for one record.
pub const BATCH_BODY_BYTES_MAX: u32 = 64 * 1024 * 1024;

/// Bytes in one record payload (batch header plus body). A stored `length`
/// above this is corruption, never a reason to allocate.
pub const RECORD_PAYLOAD_BYTES_MAX: u32 = BATCH_HEADER_SIZE as u32 + BATCH_BODY_BYTES_MAX;

/// Default for [`LogOptions::segment_bytes_max`](crate::LogOptions): large
/// enough that rolls are rare, small enough that recovery, which scans only the
/// last segment, stays well under a second.
pub const SEGMENT_BYTES_MAX_DEFAULT: u64 = 64 * 1024 * 1024;

/// Bytes of zeros the writer keeps ahead of the records of the active segment (the zero fill,
/// see `log.rs`). An append inside zeros written earlier changes no file size, so its
/// fdatasync writes no inode and commits no journal. One append in every this many bytes pays
/// for a size change and for writing the zeros: 4 MiB keeps that to a few milliseconds, and
/// the zeros recovery reads on open to a few milliseconds too.
pub const SEGMENT_ZERO_FILL_BYTES: u64 = 4 * 1024 * 1024;

/// Smallest accepted `segment_bytes_max`; tiny segments exist only in tests
/// that want many rolls.
pub const SEGMENT_BYTES_MAX_MIN: u64 = SEGMENT_HEADER_SIZE + RECORD_HEADER_SIZE + BATCH_HEADER_SIZE;

/// Largest accepted `segment_bytes_max`: recovery scans the whole last segment,
/// so restart time grows with it.
pub const SEGMENT_BYTES_MAX_MAX: u64 = 1024 * 1024 * 1024;

/// Segments (open file handle plus record index) one reader keeps cached. A
/// dense index costs 16 bytes per record, so this bounds a reader's memory.
pub const READER_SEGMENTS_CACHED_MAX: usize = 4;

/// Bytes of the window through which scans and small record reads go. Turns
/// many small reads into few large ones while keeping the buffer bounded.
pub const READ_WINDOW_BYTES: usize = 256 * 1024;

/// Bytes in one snapshot body. Loading a snapshot reads it into memory, so this
/// bounds that allocation (and a corrupt length field can never exceed it).
pub const SNAPSHOT_BODY_BYTES_MAX: u64 = 16 * 1024 * 1024 * 1024;

/// Valid snapshots kept on disk. Two, so that a snapshot found corrupt at load
/// time still leaves an older one to start from.
pub const SNAPSHOTS_KEPT: usize = 2;

const _: () = assert!(RECORD_PAYLOAD_BYTES_MAX > BATCH_BODY_BYTES_MAX);
const _: () = assert!(SEGMENT_BYTES_MAX_MIN <= SEGMENT_BYTES_MAX_DEFAULT);
const _: () = assert!(SEGMENT_BYTES_MAX_DEFAULT <= SEGMENT_BYTES_MAX_MAX);
const _: () = assert!(READ_WINDOW_BYTES as u64 >= RECORD_HEADER_SIZE + BATCH_HEADER_SIZE);
const _: () = assert!(READER_SEGMENTS_CACHED_MAX >= 2);
const _: () = assert!(SEGMENT_ZERO_FILL_BYTES <= SEGMENT_BYTES_MAX_DEFAULT);
const _: () = assert!(SNAPSHOTS_KEPT >= 2);
