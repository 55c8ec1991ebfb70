//! `tally-log`: the durable, append-only log that stores Tally's events.
//!
//! The log knows nothing about ledgers. It stores *batches*: one batch is one
//! group commit of the engine and one record on disk, a [`BatchHeader`] the log
//! understands (positions, event count, timestamp) and an opaque body written by
//! the core codec. Positions are global event sequence numbers: each batch starts
//! where the previous one ended, and the first batch starts at 0.
//!
//! Main types:
//! - [`EventLog`] and [`LogReader`]: the engine's view of a log, designed so that
//!   a distributed log (NATS JetStream, Kafka) can implement it later.
//! - [`SegmentedLog`]: the embedded implementation, segment files in one directory.
//! - [`SnapshotStore`]: snapshots of engine state, so restart replays only the tail.
//! - [`verify_dir`] / [`verify_dir_with`]: read-only checking for `tally verify`.
//! - [`Storage`]: the disk behind a trait; [`FsStorage`] for real files and
//!   [`MemStorage`] for crash tests.
//!
//! ```
//! use tally_log::{Batch, BatchHeader, EventLog, LogOptions, SegmentedLog};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let (mut log, _report) = SegmentedLog::open(dir.path(), LogOptions::default()).unwrap();
//! let batch = Batch {
//!     header: BatchHeader { first_position: 0, event_count: 2, timestamp_ns: 1 },
//!     body: b"two events".to_vec(),
//! };
//! log.append(&batch).unwrap(); // Durable when this returns.
//! assert_eq!(log.next_position(), 2);
//!
//! let mut reader = log.reader();
//! let batches: Vec<Batch> = reader.read_from(0).unwrap().collect::<Result<_, _>>().unwrap();
//! assert_eq!(batches, vec![batch]);
//! ```
//!
//! Key design choice: one batch is written with one write and one fdatasync, and
//! the next write starts only after that sync returned. So at most one record is
//! ever in flight, only the last record of the log can be torn by a crash, and
//! recovery can tell a torn write (cut it; it was never acknowledged) from
//! corruption (refuse to start) by looking for valid records after the damage.
//! The byte layout and the crash analysis are in `docs/format.md`.

#![deny(missing_docs)]

mod error;
mod format;
pub mod limits;
mod log;
mod mem;
mod reader;
mod scan;
mod snapshot;
mod storage;
mod verify;

use std::time::Duration;

pub use crate::error::LogError;
pub use crate::log::{LogOptions, RecoveryReport, Repair, SegmentedLog};
pub use crate::mem::{MemStorage, Torn};
pub use crate::snapshot::{Snapshot, SnapshotStore};
pub use crate::storage::{FsStorage, Storage, StorageFile};
pub use crate::verify::{
    verify_dir, verify_dir_with, Problem, ProblemKind, SegmentSummary, VerifyReport,
};

/// The part of a batch the log understands. Stored in front of the body in every record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BatchHeader {
    /// Position of the batch's first event; equals the previous batch's
    /// `first_position + event_count` (0 for the first batch).
    pub first_position: u64,
    /// Events in the batch; at least 1.
    pub event_count: u32,
    /// When the batch was committed, in nanoseconds since the Unix epoch. Opaque to the log.
    pub timestamp_ns: u64,
}

/// One group commit: a header and an opaque body of at most
/// [`BATCH_BODY_BYTES_MAX`](limits::BATCH_BODY_BYTES_MAX) bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Positions and timestamp.
    pub header: BatchHeader,
    /// The encoded events.
    pub body: Vec<u8>,
}

impl BatchHeader {
    /// The position just after this batch: where the next batch starts.
    pub fn end_position(&self) -> u64 {
        self.first_position + u64::from(self.event_count)
    }
}

/// The engine's view of a log. Synchronous: the engine calls it from its own dedicated I/O
/// thread.
///
/// Designed so that a distributed log can implement it later: NATS JetStream (append only if
/// the stream's last sequence is the expected one) and Kafka (fenced transactional producer).
/// An append carries the position it expects to follow, and a mismatch is
/// [`LogError::PositionConflict`], never a silent overwrite.
pub trait EventLog: Send + 'static {
    /// Appends one batch durably (one write and one fdatasync for the embedded log) and
    /// returns only once it is durable. `batch.header.first_position` must equal
    /// [`next_position`](EventLog::next_position), else
    /// [`LogError::PositionConflict`]. After an I/O error the log accepts no more appends.
    fn append(&mut self, batch: &Batch) -> Result<Appended, LogError>;

    /// The position the next batch must start at: the durable end of the log.
    fn next_position(&self) -> u64;

    /// Bytes the log holds in storage; for the embedded log, the sum of the lengths of its
    /// segment files (headers included) without the zeros kept ahead of the records of the
    /// last one. Only grows.
    fn size_bytes(&self) -> u64;

    /// An independent reader with its own file handles, usable from any thread. Readers
    /// never block appends.
    fn reader(&self) -> Box<dyn LogReader>;

    /// A receiver of the durable [`next_position`](EventLog::next_position), updated after
    /// every append.
    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64>;
}

/// What one [`EventLog::append`] cost, for the operator's metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// How long the append waited for durability: the record's fdatasync for the embedded log.
    /// The write before it (into the page cache) is not included: it is the sync that decides
    /// an acknowledgement's latency, and that degrades first when a disk is in trouble.
    pub sync: Duration,
}

/// Reads batches from a log.
pub trait LogReader: Send {
    /// The batches with `first_position + event_count > position` (the batch containing
    /// `position`, then every later one) up to the durable end as of this call. Each batch is
    /// CRC-checked as it is read; corruption is an `Err` naming the file and offset, after
    /// which the iterator ends.
    #[allow(clippy::type_complexity)]
    fn read_from(
        &mut self,
        position: u64,
    ) -> Result<Box<dyn Iterator<Item = Result<Batch, LogError>> + '_>, LogError>;

    /// A new, independent reader of the same log, for another consumer.
    fn another(&self) -> Box<dyn LogReader>;
}
