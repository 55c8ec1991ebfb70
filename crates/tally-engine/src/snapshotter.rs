//! The offline snapshot thread.
//!
//! It never touches the live state: it loads the newest snapshot, replays the log after it up to
//! the durable end, and writes the result as a new snapshot, all on a thread of the offline
//! executor (idle priority). Each snapshot is a job (`snapshot`, counted in events replayed) in
//! `/metrics`. The writer never waits for it, and a restart after a crash replays at most about
//! one interval.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use tally_core::Ledger;
use tally_log::{LogReader, SnapshotStore};
use tally_offline::{OfflineExecutor, Progress};

use crate::offline::SNAPSHOT_JOB;
use crate::pipeline::Shared;
use crate::replay::replay_batch;
use crate::SnapshotInfo;

/// How often the thread checks whether a snapshot is due.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

pub(crate) struct Snapshotter {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Snapshotter {
    pub(crate) fn start(
        store: SnapshotStore,
        reader: Box<dyn LogReader>,
        shared: Arc<Shared>,
        interval_events: u64,
        offline: &OfflineExecutor,
    ) -> std::io::Result<Snapshotter> {
        let stop = Arc::new(AtomicBool::new(false));
        if interval_events == 0 {
            return Ok(Snapshotter { stop, thread: None });
        }
        let stopping = Arc::clone(&stop);
        let executor = offline.clone();
        let thread = offline.spawn_thread("tally-snapshot", move || {
            let mut reader = reader;
            // Where the last attempt, successful or not, started: a failed attempt waits a
            // whole interval before the next, without pretending a snapshot exists.
            let mut last_attempt = shared
                .last_snapshot()
                .map_or(0, |snapshot| snapshot.position);
            while !stopping.load(Ordering::SeqCst) {
                std::thread::sleep(POLL_INTERVAL);
                let durable = shared.durable_position.load(Ordering::SeqCst);
                if durable < last_attempt + interval_events {
                    continue;
                }
                last_attempt = durable;
                // The outcome is logged and tracked as a job; a failed attempt waits an interval.
                let _ = snapshot_job(&store, reader.as_mut(), &shared, &executor, &stopping);
            }
        })?;
        Ok(Snapshotter {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread, abandoning a snapshot in progress.
    pub(crate) fn stop(self) {
        drop(self);
    }
}

/// A dropped engine must not leave a thread that could still write into its directory.
impl Drop for Snapshotter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One snapshot as a tracked offline job, run on the calling thread: the snapshot thread's
/// periodic work, and [`crate::Stepper::snapshot`]'s. Returns the position written; `None` when
/// stopped midway, skipped or failed (snapshots only shorten restarts; the log holds everything).
pub(crate) fn snapshot_job(
    store: &SnapshotStore,
    reader: &mut dyn LogReader,
    shared: &Shared,
    executor: &OfflineExecutor,
    stop: &AtomicBool,
) -> Result<Option<u64>, String> {
    let durable = shared.durable_position.load(Ordering::SeqCst);
    let progress = match executor.track(SNAPSHOT_JOB, "events") {
        Ok(progress) => progress,
        Err(reason) => {
            tracing::warn!(%reason, "snapshot skipped until the next interval");
            return Err(reason);
        }
    };
    let taken = take_snapshot(store, reader, stop, durable, &progress);
    OfflineExecutor::finish_job(&progress, matches!(taken, Ok(Some(_))));
    match &taken {
        Ok(Some(position)) => {
            shared.set_last_snapshot(SnapshotInfo {
                position: *position,
                written_at: SystemTime::now(),
            });
            tracing::info!(position, "snapshot written");
        }
        Ok(None) => {}
        Err(error) => {
            tracing::error!(%error, "snapshot failed; will retry at the next interval");
        }
    }
    taken
}

/// Writes a snapshot at the durable end (`durable` when called, or later); `None` when stopped
/// midway.
fn take_snapshot(
    store: &SnapshotStore,
    reader: &mut dyn LogReader,
    stop: &AtomicBool,
    durable: u64,
    progress: &Progress,
) -> Result<Option<u64>, String> {
    let mut ledger = match store.latest().map_err(|error| error.to_string())? {
        Some((_, bytes)) => Ledger::decode_snapshot(&bytes).unwrap_or_default(),
        None => Ledger::new(),
    };
    let start = ledger.next_position();
    progress.set_total(durable.saturating_sub(start));
    for batch in reader
        .read_from(ledger.next_position())
        .map_err(|error| error.to_string())?
    {
        if stop.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let batch = batch.map_err(|error| error.to_string())?;
        replay_batch(&mut ledger, &batch).map_err(|error| error.to_string())?;
        progress.set_done(ledger.next_position() - start);
    }
    // The log may have grown since `durable` was read; the reader went on to its end.
    progress.set_total(ledger.next_position() - start);
    let position = ledger.next_position();
    store
        .write(position, &ledger.encode_snapshot())
        .map_err(|error| error.to_string())?;
    Ok(Some(position))
}
