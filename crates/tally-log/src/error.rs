//! The crate's one error type.

use std::io;
use std::path::{Path, PathBuf};

/// Everything that can go wrong in the log and the snapshot store.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// An operating-system I/O error.
    #[error("{op} {path}: {source}", path = path.display())]
    Io {
        /// What was being done, e.g. "fdatasync".
        op: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// Stored data failed a check. Never a torn write that recovery may cut: those are
    /// repaired on open and reported in [`RecoveryReport`](crate::RecoveryReport).
    #[error(
        "log segment {path} is corrupt at byte offset {offset}: {reason}. Run `tally verify {dir}` for details",
        path = path.display(),
        dir = path.parent().unwrap_or(Path::new(".")).display()
    )]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the bad record (or header) in that file.
        offset: u64,
        /// What is wrong and what it means.
        reason: String,
    },

    /// The batch does not start where the log ends. A distributed log reports this when
    /// another writer appended first; it is never resolved by overwriting.
    #[error(
        "position conflict: the log expects a batch starting at position {expected}, found {found}"
    )]
    PositionConflict {
        /// The log's next position.
        expected: u64,
        /// The batch's first position.
        found: u64,
    },

    /// The batch breaks a rule of the log (for example, it is empty or too large).
    #[error("invalid batch at position {first_position}: {reason}")]
    InvalidBatch {
        /// The batch's first position.
        first_position: u64,
        /// The rule it breaks.
        reason: &'static str,
    },

    /// An option is out of range.
    #[error("invalid log option: {reason}")]
    InvalidOptions {
        /// Which option and its accepted range.
        reason: String,
    },

    /// A snapshot body is over [`SNAPSHOT_BODY_BYTES_MAX`](crate::limits::SNAPSHOT_BODY_BYTES_MAX).
    #[error("snapshot at position {position} is {bytes} bytes, over the limit of {limit}")]
    SnapshotTooLarge {
        /// The snapshot's position.
        position: u64,
        /// Its size.
        bytes: u64,
        /// The limit.
        limit: u64,
    },

    /// An earlier write or fdatasync failed, so what is durable is unknown; the log refuses
    /// all further appends. Reopening it recovers from what reached the disk.
    #[error("log {dir} is unusable after an earlier write or fdatasync failure; reopen it to recover", dir = dir.display())]
    Poisoned {
        /// The log directory.
        dir: PathBuf,
    },

    /// Another process (or another `SegmentedLog` in this one) has the log open.
    #[error("log {dir} is locked by another writer", dir = dir.display())]
    Locked {
        /// The log directory.
        dir: PathBuf,
    },
}

impl LogError {
    /// Builds the context-carrying variant for an I/O error.
    pub(crate) fn io<'a>(
        op: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(io::Error) -> LogError + 'a {
        move |source| LogError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> LogError {
        LogError::Corrupt {
            path: path.to_path_buf(),
            offset,
            reason: reason.into(),
        }
    }
}
