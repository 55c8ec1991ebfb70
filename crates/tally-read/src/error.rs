//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in the read model.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The redb store failed.
    #[error("read model store {path}: {op}: {source}", path = path.display())]
    Store {
        /// What was being done, e.g. "begin read transaction".
        op: &'static str,
        /// The store file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: Box<redb::Error>,
    },

    /// An operating-system I/O error outside the store (removing a stale file, spawning the thread).
    #[error("{op} {path}: {source}", path = path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A stored row does not decode: the file was damaged after it was opened.
    #[error("read model store {path}: {table} row {key} is corrupt: {reason}", path = path.display())]
    Corrupt {
        /// The store file.
        path: PathBuf,
        /// The table holding the row.
        table: &'static str,
        /// The row's key, rendered.
        key: String,
        /// What is wrong.
        reason: &'static str,
    },

    /// An event names an account that no earlier event created: the log contradicts itself.
    #[error("the event at position {position} names account {index}, which no earlier event created; run `tally verify` on the data directory")]
    UnknownAccount {
        /// The event's position.
        position: u64,
        /// The account index it names.
        index: u32,
    },

    /// The log could not be read.
    #[error("reading the log from position {position}: {source}")]
    Log {
        /// The position asked for.
        position: u64,
        /// The underlying error.
        #[source]
        source: tally_log::LogError,
    },

    /// A batch of the log does not decode into events.
    #[error("batch at position {first_position} does not decode: {source}")]
    Decode {
        /// The batch's first position.
        first_position: u64,
        /// The underlying error.
        #[source]
        source: tally_core::DecodeError,
    },

    /// The log holds something the projection cannot fold: a gap, or an event naming an account
    /// or a pending transfer that does not exist.
    #[error("event at position {position} cannot be projected: {reason}")]
    InvalidEvent {
        /// Position of the event (or of the batch, for a gap).
        position: u64,
        /// What is wrong.
        reason: String,
    },

    /// The projection did not reach the wanted position in time (or stopped; see
    /// [`crate::ReadModel::status`]).
    #[error("read model is lagging: projected up to position {projected}, waiting for {target}")]
    Lagging {
        /// The next position the read model will apply.
        projected: u64,
        /// The position waited for.
        target: u64,
    },
}
