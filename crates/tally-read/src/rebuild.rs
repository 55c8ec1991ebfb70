//! Rebuilding the read model from position zero, as an offline job: `tally project --rebuild`,
//! and the read model half of the co-location benchmark.
//!
//! A rebuild projects the whole log into a fresh file with the projector's own transactions
//! (checkpoint and rows together), so a rebuild cut short by a crash leaves a valid read model of
//! a prefix of the log, which the server resumes from. It reads only the log (sealed records up
//! to the end it was given) and writes only its own file: nothing the online path waits for.
//!
//! Its disk writes are the one thing it still shares with the online path, so it writes them out
//! itself, one transaction at a time (see [`WriteBack`]).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use tally_log::LogReader;
use tally_offline::Progress;
use tokio::sync::watch;

use crate::limits::{REBUILD_TRANSACTION_DURATION_MAX, WRITE_BACK_CHUNK_BYTES};
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
    let (store, checkpoint) = Store::create(path)?;
    let write_back = WriteBack::open(path)?;
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
        write_back.run()?;
        progress.set_done(projector.projection.position().min(log_end));
    }
    // Durable at the end: the commits before skipped the fsync.
    projector.sync()?;
    Ok(projector.projection.position())
}

/// Writes the rebuild's dirty pages to the disk after each of its transactions, and waits.
///
/// Why: the rebuild's commits skip the fsync, so without this their pages stay in the page cache
/// until the kernel's flusher writes them out, up to 30 s and hundreds of megabytes later, in one
/// burst at normal I/O priority. The log's next `fdatasync` then waits behind that burst in the
/// device's queue (and, on a journaling file system, behind the data its journal commit must
/// write first), and the online path's tail latency jumps. Written back here, by the rebuild's own
/// thread, the writes leave one transaction at a time (a few megabytes) and carry that thread's
/// I/O class: idle for a thread at `SCHED_IDLE`, which the block layer's schedulers serve after
/// every other class. No cache flush and no durability: the final commit is durable, and a crash
/// before it only costs a rebuild.
struct WriteBack {
    file: File,
    path: std::path::PathBuf,
}

impl WriteBack {
    fn open(path: &Path) -> Result<WriteBack, ReadError> {
        // A second handle on the same file: write-back works on the file, not on the handle.
        let file = File::open(path).map_err(|source| ReadError::Io {
            op: "open the read model for write-back",
            path: path.to_path_buf(),
            source,
        })?;
        Ok(WriteBack {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Writes the file's dirty pages back, [`WRITE_BACK_CHUNK_BYTES`] at a time, each piece
    /// waited for before the next is sent: a transaction's pages sent at once (megabytes) would
    /// sit in the device's queue ahead of the log's next `fdatasync`, which the I/O scheduler
    /// can no longer reorder once they are sent. Clean ranges cost a lookup each.
    fn run(&self) -> Result<(), ReadError> {
        let error = |op, source| ReadError::Io {
            op,
            path: self.path.clone(),
            source,
        };
        let len = self
            .file
            .metadata()
            .map_err(|source| error("stat for write-back", source))?
            .len();
        let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        for offset in (0..len).step_by(WRITE_BACK_CHUNK_BYTES as usize) {
            // SAFETY: a plain syscall on a descriptor `self.file` keeps open.
            let result = unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    offset as libc::off64_t,
                    WRITE_BACK_CHUNK_BYTES as libc::off64_t,
                    flags,
                )
            };
            if result != 0 {
                return Err(error("write back", io::Error::last_os_error()));
            }
            tally_offline::yield_point();
        }
        Ok(())
    }
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
