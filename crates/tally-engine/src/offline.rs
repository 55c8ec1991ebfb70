//! The engine's offline work, run on the [`OfflineExecutor`] (at `SCHED_IDLE`, in an idle
//! cgroup where the machine allows it): periodic snapshots (see `snapshotter.rs`) and
//! verification of a data directory.
//!
//! Both only read: sealed log records, snapshot files and the durable prefix of the log. They
//! never touch the live state or take a lock the state and writer threads use, so an offline
//! thread the kernel starves delays nothing but itself. Results go back by value, when the job
//! ends.

use std::path::PathBuf;

use tally_offline::{Job, OfflineExecutor};

use crate::verify::{verify_data_dir_reporting, DataDirReport};

/// Name of the verification job in `/metrics` and on the status page.
pub const VERIFY_JOB: &str = "verify";

/// Name of a periodic snapshot's job in `/metrics` and on the status page.
pub const SNAPSHOT_JOB: &str = "snapshot";

/// Starts [`verify_data_dir`](crate::verify_data_dir) on `dir` as an offline job; its progress
/// counts bytes of log records checked against the size of the log's files.
pub fn spawn_verify(
    offline: &OfflineExecutor,
    dir: PathBuf,
) -> std::io::Result<Job<DataDirReport>> {
    offline.spawn_job(VERIFY_JOB, "bytes", move |progress| {
        verify_data_dir_reporting(&dir, &mut |done, total| {
            progress.set_total(total);
            progress.set_done(done);
        })
        .map_err(|error| error.to_string())
    })
}
