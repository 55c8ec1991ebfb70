//! The projector thread: follows the log and folds it into the store in large transactions.
//!
//! Each write transaction folds whole batches (up to a number of events or a time budget) and
//! stores the checkpoint with the data, so the file always reflects an exact prefix of the log:
//! a crash at any point resumes at the last committed checkpoint and applies nothing twice.
//! Commits skip the fsync ([`redb::Durability::None`]) except one every
//! [`DURABLE_COMMIT_INTERVAL`](crate::limits::DURABLE_COMMIT_INTERVAL), which makes all earlier
//! ones durable too.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tally_log::LogReader;
use tokio::sync::{watch, Notify};

use crate::limits::{CAUGHT_UP_CHECK_INTERVAL, READ_RETRY_DELAY};
use crate::projection::Projection;
use crate::store::{store_error, Store, Tables};
use crate::{ProjectorOptions, ProjectorStatus, ReadError};

/// What the projector thread and the query side share.
pub(crate) struct Shared {
    pub store: Store,
    /// The committed checkpoint: the next position to apply.
    pub projected: watch::Sender<u64>,
    pub status: Mutex<ProjectorStatus>,
    /// Set once the projector has stopped for good (failure or shutdown), so waiters give up.
    pub finished: AtomicBool,
    /// Asks the projector to stop.
    pub stop: AtomicBool,
    /// Wakes the projector when `stop` is set or when a query waits for a position it has not
    /// reached.
    pub wake: Notify,
    /// The highest position a query has waited for: while the projection is short of it, the
    /// projector does not wait for more events to gather.
    pub asked: AtomicU64,
    /// The log's durable end, for the query side's view of the lag.
    pub durable: watch::Receiver<u64>,
    /// When the projector last saw itself caught up with the log, in nanoseconds after
    /// `opened`; 0 (the opening) until it first does.
    pub caught_up_ns: AtomicU64,
    /// When the read model opened, on the monotonic clock and on the wall clock.
    pub opened: (Instant, SystemTime),
}

impl Shared {
    /// The shared state of a projection of `store` that holds everything before `position`,
    /// following a log whose durable end `durable` tells.
    pub(crate) fn new(store: Store, position: u64, durable: watch::Receiver<u64>) -> Shared {
        Shared {
            store,
            projected: watch::Sender::new(position),
            status: Mutex::new(ProjectorStatus::Running),
            finished: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            wake: Notify::new(),
            asked: AtomicU64::new(0),
            durable,
            caught_up_ns: AtomicU64::new(0),
            opened: (Instant::now(), SystemTime::now()),
        }
    }
}

pub(crate) struct Projector {
    pub shared: Arc<Shared>,
    pub reader: Box<dyn LogReader>,
    pub durable: watch::Receiver<u64>,
    pub projection: Projection,
    pub options: ProjectorOptions,
}

/// What woke an idle projector.
enum Wake {
    LogMoved,
    LogClosed,
    /// A query waits, or a stop was asked.
    Asked,
    Timer,
}

impl Shared {
    fn mark_caught_up(&self) {
        let since_opened = u64::try_from(self.opened.0.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.caught_up_ns.store(since_opened, Ordering::Release);
    }

    /// How long ago the projector last saw itself caught up.
    pub fn since_caught_up(&self) -> Duration {
        let caught_up = Duration::from_nanos(self.caught_up_ns.load(Ordering::Acquire));
        self.opened.0.elapsed().saturating_sub(caught_up)
    }

    pub fn finish(&self, status: ProjectorStatus) {
        *self.status.lock().expect("status lock") = status;
        self.finished.store(true, Ordering::Release);
        // Wakes every `wait_for`, which then sees `finished`.
        self.projected.send_modify(|_| {});
    }
}

impl Projector {
    /// The thread's body: runs until stopped or until the log cannot be projected.
    pub fn run(mut self) {
        let shared = Arc::clone(&self.shared);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.follow()));
        let position = *shared.projected.borrow();
        match outcome {
            Ok(Ok(())) => {
                tracing::info!(position, "projector stopped");
                shared.finish(ProjectorStatus::Stopped);
            }
            Ok(Err(error)) => {
                tracing::error!(
                    position,
                    "projector stopped, queries are served from position {position}: {error}"
                );
                shared.finish(ProjectorStatus::Failed {
                    position,
                    reason: error.to_string(),
                });
            }
            Err(_) => {
                tracing::error!(
                    position,
                    "projector panicked, queries are served from position {position}"
                );
                shared.finish(ProjectorStatus::Failed {
                    position,
                    reason: "the projector thread panicked".into(),
                });
            }
        }
    }

    fn follow(&mut self) -> Result<(), ReadError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|source| ReadError::Io {
                op: "build projector runtime",
                path: self.shared.store.path.clone(),
                source,
            })?;
        let mut last_durable = Instant::now();
        let mut unsynced = false;
        let mut log_open = true;
        // When the last transaction started (see `COMMIT_INTERVAL_MIN`).
        let mut last_started: Option<Instant> = None;
        while !self.shared.stop.load(Ordering::Acquire) {
            let log_end = *self.durable.borrow_and_update();
            if log_end <= self.projection.position() {
                self.shared.mark_caught_up();
            }
            if log_end > self.projection.position() {
                let since_started = last_started.map_or(Duration::MAX, |started| started.elapsed());
                let asked = self.shared.asked.load(Ordering::Acquire) > self.projection.position();
                if !asked && since_started < self.options.commit_interval_min {
                    // Let more events gather until a query waits for them or the interval is
                    // over, then look again (a stop wakes this too).
                    let wake = &self.shared.wake;
                    let pause = self.options.commit_interval_min - since_started;
                    runtime.block_on(async {
                        tokio::select! {
                            () = wake.notified() => {}
                            () = tokio::time::sleep(pause) => {}
                        }
                    });
                    continue;
                }
                last_started = Some(Instant::now());
                let durable = last_durable.elapsed() >= self.options.durable_commit_interval;
                if self.transaction(durable)? == 0 {
                    // The log announced events its reader does not yield yet; ask again shortly.
                    std::thread::sleep(READ_RETRY_DELAY);
                } else if durable {
                    last_durable = Instant::now();
                    unsynced = false;
                } else {
                    unsynced = true;
                }
                continue;
            }
            let since_durable = last_durable.elapsed();
            if unsynced && since_durable >= self.options.durable_commit_interval {
                self.sync()?;
                last_durable = Instant::now();
                unsynced = false;
                continue;
            }
            // Caught up: sleep until the log moves, a stop, the next durable commit is due, or it
            // is time to confirm that it is still caught up.
            let timeout = if unsynced {
                (self.options.durable_commit_interval - since_durable).min(CAUGHT_UP_CHECK_INTERVAL)
            } else {
                CAUGHT_UP_CHECK_INTERVAL
            };
            let (durable, wake) = (&mut self.durable, &self.shared.wake);
            let woke = runtime.block_on(async {
                tokio::select! {
                    changed = durable.changed(), if log_open => if changed.is_ok() { Wake::LogMoved } else { Wake::LogClosed },
                    () = wake.notified() => Wake::Asked,
                    () = tokio::time::sleep(timeout) => Wake::Timer,
                }
            });
            match woke {
                Wake::LogClosed => {
                    tracing::info!(
                        position = self.projection.position(),
                        "the log closed its position channel; the projector idles"
                    );
                    log_open = false;
                }
                Wake::LogMoved | Wake::Asked | Wake::Timer => {}
            }
        }
        if unsynced {
            // Leave a durable checkpoint behind so that a restart does not redo the last second.
            self.sync()?;
        }
        Ok(())
    }

    /// Folds batches from the checkpoint on into one write transaction and commits it; returns
    /// the number of events applied (0: nothing was committed).
    pub fn transaction(&mut self, durable: bool) -> Result<u64, ReadError> {
        let path = self.shared.store.path.clone();
        let mut txn = self
            .shared
            .store
            .db
            .begin_write()
            .map_err(|source| store_error("begin write transaction", &path, source))?;
        let durability = if durable {
            redb::Durability::Immediate
        } else {
            redb::Durability::None
        };
        txn.set_durability(durability)
            .map_err(|source| store_error("set durability", &path, source))?;
        // Durable commits also save the allocator state, so that reopening after a crash is
        // almost instant instead of a full repair of the file on the restart path.
        txn.set_quick_repair(durable);
        let started = Instant::now();
        let mut applied: u64 = 0;
        // A batch that cannot be read or decoded ends the projection, but only after committing
        // the batches before it: nothing of it was written, and queries get as far as possible.
        let mut read_error = None;
        {
            let mut tables = Tables::open(&txn, &path)?;
            let position = self.projection.position();
            let mut batches = self
                .reader
                .read_from(position)
                .map_err(|source| ReadError::Log { position, source })?;
            // At least one batch per transaction: opening the transaction and the reader may
            // use the whole time budget on a starved thread, and a transaction that folds
            // nothing makes no progress at all.
            while !self.shared.stop.load(Ordering::Acquire)
                && (applied == 0
                    || (applied < self.options.transaction_events_max
                        && started.elapsed() < self.options.transaction_duration_max))
            {
                let Some(batch) = batches.next() else { break };
                let position = self.projection.position();
                let events = match batch.map_err(|source| ReadError::Log { position, source }) {
                    Ok(batch) => self
                        .projection
                        .decode(&batch)
                        .map(|events| (events, batch.header.timestamp_ns)),
                    Err(error) => Err(error),
                };
                let (events, timestamp_ns) = match events {
                    Ok(decoded) => decoded,
                    Err(error) => {
                        read_error = Some(error);
                        break;
                    }
                };
                // An event that cannot be folded fails the whole transaction: it may be half written.
                self.projection
                    .apply_events(&mut tables, &events, timestamp_ns)?;
                applied += events.len() as u64;
            }
            drop(batches);
            if applied > 0 {
                self.projection.flush(&mut tables)?;
            }
        }
        if applied == 0 {
            txn.abort()
                .map_err(|source| store_error("abort write transaction", &path, source))?;
            return read_error.map_or(Ok(0), Err);
        }
        txn.commit()
            .map_err(|source| store_error("commit", &path, source))?;
        let position = self.projection.position();
        self.shared.projected.send_if_modified(|projected| {
            assert!(position > *projected, "the checkpoint only moves forward");
            *projected = position;
            true
        });
        tracing::debug!(position, applied, durable, "projected");
        read_error.map_or(Ok(applied), Err)
    }

    /// Commits the checkpoint durably, which makes every earlier non-durable commit durable too.
    pub fn sync(&mut self) -> Result<(), ReadError> {
        let path = self.shared.store.path.clone();
        let mut txn = self
            .shared
            .store
            .db
            .begin_write()
            .map_err(|source| store_error("begin write transaction", &path, source))?;
        txn.set_quick_repair(true);
        {
            let mut tables = Tables::open(&txn, &path)?;
            self.projection.flush(&mut tables)?;
        }
        txn.commit()
            .map_err(|source| store_error("commit", &path, source))?;
        Ok(())
    }
}
