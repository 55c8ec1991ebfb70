//! Rebuilding the read model from position zero, as an offline job: `tally project --rebuild`,
//! and the read model half of the co-location benchmark.
//!
//! A rebuild projects the whole log into a fresh file with the projector's own transactions
//! (checkpoint and rows together), so a rebuild cut short by a crash leaves a valid read model of
//! a prefix of the log, which the server resumes from. It reads only the log (sealed records up
//! to the end it was given) and writes only its own file: nothing the online path waits for.
//!
//! Its disk writes are the one thing it still shares with the online path, so its file writes
//! them back itself, a small piece at a time (see `write_back.rs`).

use std::path::Path;
use std::sync::Arc;

use tally_log::LogReader;
use tally_offline::Progress;
use tokio::sync::watch;

use crate::limits::REBUILD_TRANSACTION_DURATION_MAX;
use crate::projection::Projection;
use crate::projector::{Projector, Shared};
use crate::store::{store_error, Store};
use crate::{ProjectorOptions, ReadError};

/// Name of the rebuild job in `/metrics` and on the status page.
pub const REBUILD_JOB: &str = "read_model_rebuild";

/// Replaces the read model file at `path` with the projection of the log `reader` reads, from
/// position 0 up to `log_end`, reporting events projected to `progress`. Returns the position
/// reached (at least `log_end`).
///
/// Refuses a file another process has open (a running server): stop it first.
pub fn rebuild(
    path: &Path,
    reader: Box<dyn LogReader>,
    log_end: u64,
    progress: &Progress,
) -> Result<u64, ReadError> {
    remove_unused(path)?;
    let (store, checkpoint) = Store::create_written_back(path)?;
    let projection = Projection::load(&store, checkpoint)?;
    let (_, durable) = watch::channel(log_end);
    let shared = Arc::new(Shared::new(store, checkpoint.position, durable.clone()));
    let mut projector = Projector {
        shared,
        reader,
        durable,
        projection,
        options: ProjectorOptions {
            transaction_duration_max: REBUILD_TRANSACTION_DURATION_MAX,
            ..ProjectorOptions::default()
        },
    };
    progress.set_total(log_end);
    while projector.projection.position() < log_end {
        if projector.transaction(false)? == 0 {
            return Err(ReadError::Io {
                op: "rebuild",
                path: path.to_path_buf(),
                source: std::io::Error::other(format!(
                    "the log ended at position {} before position {log_end}",
                    projector.projection.position()
                )),
            });
        }
        progress.set_done(projector.projection.position().min(log_end));
    }
    // Durable at the end: the commits before skipped the fsync.
    projector.sync()?;
    Ok(projector.projection.position())
}

/// Removes the file at `path` unless another handle has it open.
fn remove_unused(path: &Path) -> Result<(), ReadError> {
    if !path.exists() {
        return Ok(());
    }
    // A file that opens, or is damaged, is replaced either way; only one in use is refused.
    if let Err(
        error @ (redb::DatabaseError::DatabaseAlreadyOpen
        | redb::DatabaseError::TransactionInProgress),
    ) = redb::Database::open(path)
    {
        return Err(store_error(
            "open (is a server running on it? stop it first)",
            path,
            error,
        ));
    }
    std::fs::remove_file(path).map_err(|source| ReadError::Io {
        op: "remove the read model to rebuild",
        path: path.to_path_buf(),
        source,
    })
}
