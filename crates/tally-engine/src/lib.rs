//! The engine of Tally: the command pipeline between the HTTP handlers and the log.
//!
//! [`Engine::open`] recovers the ledger state from the newest snapshot and the log after it,
//! then starts two threads: the state thread, the only owner of the [`tally_core::Ledger`], and
//! the writer thread, the only owner of the [`tally_log::EventLog`]. Handlers talk to them
//! through an [`EngineHandle`]: a bounded queue (full means [`EngineError::Overloaded`], never
//! unbounded memory) and a reply slot per request.
//!
//! ```no_run
//! # async fn example() -> Result<(), tally_engine::EngineError> {
//! use tally_engine::{Detail, Engine, EngineConfig};
//!
//! let opened = Engine::open(EngineConfig::new("./tally-data".into()))?;
//! let handle = opened.engine.handle();
//! let answers = handle.execute(vec![/* commands */], Detail::Full).await?;
//! opened.engine.shutdown()?;
//! # Ok(()) }
//! ```
//!
//! Key design choice: one thread owns the state and applies commands in order, as TigerBeetle
//! does: no locks on the hot path and deterministic by construction. Group commit comes from
//! pipelining: while one batch is fsynced the next one fills up, so the busier the engine, the
//! more commands share each fsync. Offline work (snapshots, verification) runs on separate
//! idle-priority threads and reads only the log and snapshot files, never the live state.
#![deny(missing_docs)]

mod answer;
mod clock;
pub mod limits;
mod metrics;
mod names;
pub mod offline;
mod pipeline;
mod replay;
mod restriction;
mod snapshotter;
mod stepper;
mod verify;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use tally_core::{ClaimState, Command, Id, Ledger, ReplayError};
use tally_log::{
    EventLog, FsStorage, LogError, LogOptions, LogReader, SegmentedLog, SnapshotStore, Storage,
};
use tokio::sync::{oneshot, watch};

pub use answer::{AccountView, Answer, CampaignView, ClaimPage, ClaimView, Detail, TransferDetail};
pub use clock::{Clock, SystemClock};
pub use metrics::EngineMetrics;
pub use names::{AccountName, AccountNames};
pub use replay::replay_batch;
pub use restriction::{Restriction, Revocations};
pub use stepper::{Stepper, Ticket};
pub use verify::{verify_data_dir, verify_data_dir_reporting, DataDirReport, SnapshotCheck};

use limits::{COMMAND_QUEUE_REQUESTS_MAX, STAGED_BATCHES_MAX};
use pipeline::{Decider, Request, Shared, StateThread, Writer, WriterThread};
use snapshotter::Snapshotter;

/// Everything that can go wrong in the engine.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The caller's token does not allow what the request touches; nothing changed.
    #[error("{0}")]
    Forbidden(String),
    /// The command queue is full; retry later with the same ids.
    #[error("the command queue is full; retry later with the same ids")]
    Overloaded,
    /// The engine stopped accepting work.
    #[error("{0}")]
    Unavailable(String),
    /// The log or snapshot store failed.
    #[error("{0}")]
    Log(Arc<LogError>),
    /// The log contradicts the ledger rules: the data directory needs an operator.
    #[error("{error}. Run `tally verify {dir}` for details", dir = dir.display())]
    Replay {
        /// What does not apply.
        error: ReplayError,
        /// The data directory.
        dir: PathBuf,
    },
    /// A snapshot claims more history than the log holds.
    #[error(
        "snapshot in {dir} is at position {snapshot}, beyond the end of the log at {log}: acknowledged events are missing from the log",
        dir = dir.display()
    )]
    SnapshotAheadOfLog {
        /// The snapshot's position.
        snapshot: u64,
        /// The log's end.
        log: u64,
        /// The snapshot directory.
        dir: PathBuf,
    },
    /// A file or thread could not be set up.
    #[error("{context}: {message}")]
    Setup {
        /// What was being done.
        context: String,
        /// Why it failed.
        message: String,
    },
}

impl From<LogError> for EngineError {
    fn from(error: LogError) -> EngineError {
        EngineError::Log(Arc::new(error))
    }
}

/// How to run the engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The data directory: `log/` and `snapshots/` live in it.
    pub data_dir: PathBuf,
    /// How long the batcher waits for more commands after the first of a batch.
    pub batch_wait: Duration,
    /// Events between snapshots; 0 turns periodic snapshots off.
    pub snapshot_interval_events: u64,
    /// Options of the embedded log.
    pub log_options: LogOptions,
    /// Where batch timestamps come from: the system clock, or a simulated one.
    pub clock: Arc<dyn Clock>,
    /// Where offline work (periodic snapshots) runs.
    pub offline: tally_offline::OfflineExecutor,
}

impl EngineConfig {
    /// The defaults for `data_dir`.
    pub fn new(data_dir: PathBuf) -> EngineConfig {
        EngineConfig {
            data_dir,
            batch_wait: Duration::from_micros(limits::BATCH_WAIT_US_DEFAULT),
            snapshot_interval_events: limits::SNAPSHOT_INTERVAL_EVENTS_DEFAULT,
            log_options: LogOptions::default(),
            clock: Arc::new(SystemClock),
            offline: tally_offline::OfflineExecutor::default(),
        }
    }
}

/// What [`Engine::open`] found and did.
#[derive(Clone, Debug)]
pub struct Recovery {
    /// What the log's recovery did (torn tails cut, segments found).
    pub log: tally_log::RecoveryReport,
    /// Position of the snapshot the state was loaded from, if any.
    pub snapshot_position: Option<u64>,
    /// Events replayed from the log after the snapshot.
    pub replayed_events: u64,
    /// How long recovery took.
    pub elapsed: Duration,
}

/// A snapshot of the ledger state, as [`EngineHandle::last_snapshot`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The log position the snapshot holds the state at: every event before it is applied.
    pub position: u64,
    /// When it was written: the file's modification time for the snapshot loaded at start, the
    /// moment the write finished for one written since.
    pub written_at: SystemTime,
}

/// A reader of the log and the durable position, for consumers such as the read model.
pub struct LogFeed {
    /// Reads batches up to the durable end.
    pub reader: Box<dyn LogReader>,
    /// The durable end of the log, updated after every append.
    pub durable: watch::Receiver<u64>,
}

/// An opened engine, the log feed for the read model, and what recovery did.
pub struct Opened {
    /// The running engine.
    pub engine: Engine,
    /// A log reader for one consumer.
    pub feed: LogFeed,
    /// What recovery found.
    pub recovery: Recovery,
}

/// The running engine. Dropping it without [`Engine::shutdown`] leaves the threads to stop when
/// every handle is gone.
pub struct Engine {
    handle: EngineHandle,
    state_thread: JoinHandle<Ledger>,
    writer_thread: JoinHandle<()>,
    snapshotter: Snapshotter,
    store: SnapshotStore,
}

/// A cheap, cloneable way to submit work to the engine from async code.
#[derive(Clone)]
pub struct EngineHandle {
    requests: SyncSender<Request>,
    shared: Arc<Shared>,
}

impl Engine {
    /// Recovers the state from `config.data_dir` on the real filesystem and starts the engine.
    pub fn open(config: EngineConfig) -> Result<Opened, EngineError> {
        Engine::open_in(Arc::new(FsStorage), config)
    }

    /// [`Engine::open`] on any storage, such as the log's in-memory storage that simulates
    /// crashes and injects I/O errors.
    pub fn open_in(storage: Arc<dyn Storage>, config: EngineConfig) -> Result<Opened, EngineError> {
        let Recovered {
            decider,
            writer,
            recovery,
            store,
            feed,
        } = Recovered::open(Arc::clone(&storage), &config)?;
        let shared = Arc::clone(&decider.shared);
        let setup = |context: &str| setup_error(&config, context);
        let snapshotter = Snapshotter::start(
            SnapshotStore::open_in(storage, &config.data_dir.join("snapshots"))?,
            writer.log.reader(),
            Arc::clone(&shared),
            config.snapshot_interval_events,
            &config.offline,
        )
        .map_err(setup("cannot start the snapshot thread"))?;
        let (request_sender, requests) = sync_channel(COMMAND_QUEUE_REQUESTS_MAX);
        let (staged_sender, staged) = sync_channel(STAGED_BATCHES_MAX);
        let writer = WriterThread { writer, staged };
        // Requests wait for both threads: they ask for short scheduler slices as they start.
        let writer_thread = std::thread::Builder::new()
            .name("tally-writer".into())
            .spawn(move || {
                tally_offline::online_thread_started();
                writer.run()
            })
            .map_err(setup("cannot start the writer thread"))?;
        let state = StateThread {
            decider,
            requests,
            staged: staged_sender,
            batch_wait: config.batch_wait,
        };
        let state_thread = std::thread::Builder::new()
            .name("tally-state".into())
            .spawn(move || {
                tally_offline::online_thread_started();
                state.run()
            })
            .map_err(setup("cannot start the state thread"))?;

        let engine = Engine {
            handle: EngineHandle {
                requests: request_sender,
                shared,
            },
            state_thread,
            writer_thread,
            snapshotter,
            store,
        };
        Ok(Opened {
            engine,
            feed,
            recovery,
        })
    }

    /// A handle for submitting work.
    pub fn handle(&self) -> EngineHandle {
        self.handle.clone()
    }

    /// Finishes the batch in flight, makes it durable, writes a snapshot of the final state so
    /// that the next start replays nothing, and stops every thread.
    pub fn shutdown(self) -> Result<(), EngineError> {
        let Engine {
            handle,
            state_thread,
            writer_thread,
            snapshotter,
            store,
        } = self;
        snapshotter.stop();
        // A blocking send: shutdown must get through even when the queue is full.
        handle.shared.queued_commands.fetch_add(1, Ordering::SeqCst);
        let _ = handle.requests.send(Request::Shutdown);
        drop(handle.requests);
        let ledger = state_thread
            .join()
            .map_err(|_| EngineError::Unavailable("the state thread panicked".into()))?;
        writer_thread
            .join()
            .map_err(|_| EngineError::Unavailable("the writer thread panicked".into()))?;
        if handle.shared.failed.load(Ordering::SeqCst) {
            return Err(handle.shared.unavailable());
        }
        write_final_snapshot(&ledger, &handle.shared, &store)
    }
}

/// After a clean stop, writes a snapshot of the final state unless the newest one already holds
/// it, so that the next start replays nothing.
fn write_final_snapshot(
    ledger: &Ledger,
    shared: &Shared,
    store: &SnapshotStore,
) -> Result<(), EngineError> {
    let durable = shared.durable_position.load(Ordering::SeqCst);
    assert_eq!(
        ledger.next_position(),
        durable,
        "after shutdown every staged batch is durable"
    );
    let snapshot_position = shared
        .last_snapshot()
        .map_or(0, |snapshot| snapshot.position);
    if snapshot_position != durable {
        store.write(durable, &ledger.encode_snapshot())?;
    }
    Ok(())
}

fn setup_error(config: &EngineConfig, context: &str) -> impl FnOnce(std::io::Error) -> EngineError {
    let context = format!("{context} in {}", config.data_dir.display());
    move |error: std::io::Error| EngineError::Setup {
        context,
        message: error.to_string(),
    }
}

/// The engine's parts after recovery, before anything runs them: threads in production, a
/// [`Stepper`] in simulation.
struct Recovered {
    decider: Decider,
    writer: Writer,
    recovery: Recovery,
    store: SnapshotStore,
    feed: LogFeed,
}

impl Recovered {
    /// Opens the log and snapshots in `config.data_dir` and rebuilds the ledger state from them.
    fn open(storage: Arc<dyn Storage>, config: &EngineConfig) -> Result<Recovered, EngineError> {
        let started = Instant::now();
        storage
            .create_dir_all(&config.data_dir)
            .map_err(setup_error(config, "cannot create the data directory"))?;
        let log_dir = config.data_dir.join("log");
        let (log, log_report) =
            SegmentedLog::open_in(Arc::clone(&storage), &log_dir, config.log_options.clone())?;
        let snapshots_dir = config.data_dir.join("snapshots");
        let store = SnapshotStore::open_in(storage, &snapshots_dir)?;
        let (ledger, snapshot) = recover(&log, &store, &config.data_dir)?;
        let snapshot_position = snapshot.map(|snapshot| snapshot.position);
        ledger
            .check_invariants()
            .map_err(|violation| EngineError::Replay {
                error: ReplayError {
                    position: ledger.next_position(),
                    reason: violation.to_string(),
                },
                dir: config.data_dir.clone(),
            })?;
        let replayed_events = ledger.next_position() - snapshot_position.unwrap_or(0);
        let shared = Arc::new(Shared {
            queued_commands: AtomicUsize::new(0),
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
            writes_refused: Mutex::new(None),
            durable_position: AtomicU64::new(log.next_position()),
            log_bytes: AtomicU64::new(log.size_bytes()),
            last_snapshot: Mutex::new(snapshot),
            metrics: EngineMetrics::default(),
            revocations: Arc::new(Revocations::seeded(ledger.revoked_tokens())),
            names: Arc::new(AccountNames::seeded(&ledger)),
        });
        let feed = LogFeed {
            reader: log.reader(),
            durable: log.subscribe(),
        };
        let last_timestamp_ns = ledger.last_timestamp_ns();
        Ok(Recovered {
            decider: Decider {
                ledger,
                shared: Arc::clone(&shared),
                clock: Arc::clone(&config.clock),
                last_timestamp_ns,
            },
            writer: Writer {
                log: Box::new(log),
                shared,
            },
            recovery: Recovery {
                log: log_report,
                snapshot_position,
                replayed_events,
                elapsed: started.elapsed(),
            },
            store,
            feed,
        })
    }
}

/// Loads the newest valid snapshot, then replays the log after it. Returns the ledger and the
/// snapshot it started from, if any.
fn recover(
    log: &SegmentedLog,
    store: &SnapshotStore,
    dir: &std::path::Path,
) -> Result<(Ledger, Option<SnapshotInfo>), EngineError> {
    let log_end = log.next_position();
    let (mut ledger, snapshot) = match store.newest()? {
        Some(snapshot) => match Ledger::decode_snapshot(&snapshot.body) {
            Ok(ledger) if ledger.next_position() == snapshot.position => {
                let info = SnapshotInfo {
                    position: snapshot.position,
                    written_at: snapshot.written_at,
                };
                (ledger, Some(info))
            }
            Ok(_) => {
                tracing::warn!(
                    position = snapshot.position,
                    "snapshot disagrees with its own position; replaying the whole log instead"
                );
                (Ledger::new(), None)
            }
            Err(error) => {
                tracing::warn!(position = snapshot.position, %error, "snapshot does not decode; replaying the whole log instead");
                (Ledger::new(), None)
            }
        },
        None => (Ledger::new(), None),
    };
    if ledger.next_position() > log_end {
        return Err(EngineError::SnapshotAheadOfLog {
            snapshot: ledger.next_position(),
            log: log_end,
            dir: store.dir().to_path_buf(),
        });
    }
    let mut reader = log.reader();
    for batch in reader.read_from(ledger.next_position())? {
        let batch = batch?;
        replay_batch(&mut ledger, &batch).map_err(|error| EngineError::Replay {
            error,
            dir: dir.to_path_buf(),
        })?;
    }
    if ledger.next_position() != log_end {
        return Err(EngineError::Replay {
            error: ReplayError {
                position: ledger.next_position(),
                reason: format!("replay stopped before the log's end at {log_end}"),
            },
            dir: dir.to_path_buf(),
        });
    }
    Ok((ledger, snapshot))
}

impl EngineHandle {
    /// Executes `commands` in order, in one batch, and answers once they are durable: one answer
    /// per command, or per transfer of a linked chain.
    pub async fn execute(
        &self,
        commands: Vec<Command>,
        detail: Detail,
    ) -> Result<Vec<Answer>, EngineError> {
        self.execute_as(commands, detail, None).await
    }

    /// [`EngineHandle::execute`] for a caller limited by `restriction`: a request that touches
    /// anything outside it is refused whole with [`EngineError::Forbidden`], and nothing changes.
    pub async fn execute_as(
        &self,
        commands: Vec<Command>,
        detail: Detail,
        restriction: Option<Arc<Restriction>>,
    ) -> Result<Vec<Answer>, EngineError> {
        if let Some(reason) = self.writes_refused() {
            return Err(EngineError::Unavailable(reason));
        }
        let (reply, answer) = oneshot::channel();
        self.submit(Request::Execute {
            commands,
            detail,
            restriction,
            reply,
        })?;
        answer.await.map_err(|_| self.shared.unavailable())?
    }

    /// The account `id` as of everything durable when the request was taken.
    pub async fn account(&self, id: Id) -> Result<Option<AccountView>, EngineError> {
        self.account_as(id, None).await
    }

    /// [`EngineHandle::account`] for a caller limited by `restriction`.
    pub async fn account_as(
        &self,
        id: Id,
        restriction: Option<Arc<Restriction>>,
    ) -> Result<Option<AccountView>, EngineError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Request::Account {
            id,
            restriction,
            reply,
        })?;
        answer.await.map_err(|_| self.shared.unavailable())?
    }

    /// The campaign `id` as of everything durable when the request was taken.
    pub async fn campaign(&self, id: Id) -> Result<Option<CampaignView>, EngineError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Request::Campaign { id, reply })?;
        answer.await.map_err(|_| self.shared.unavailable())?
    }

    /// The claim with order id `order_id` as of everything durable when the request was taken.
    pub async fn claim(&self, order_id: Id) -> Result<Option<ClaimView>, EngineError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Request::Claim { order_id, reply })?;
        answer.await.map_err(|_| self.shared.unavailable())?
    }

    /// Up to `limit` (1 to [`limits::CLAIMS_PAGE_MAX`]) claims in `state` (any for `None`)
    /// recorded after log position `after`, in the order they were recorded, as of everything
    /// durable when the request was taken. Page on with the answer's `next`; claims recorded
    /// later come after every earlier one, so following `next` also finds new claims.
    pub async fn claims(
        &self,
        state: Option<ClaimState>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<ClaimPage, EngineError> {
        assert!((1..=limits::CLAIMS_PAGE_MAX).contains(&limit));
        let (reply, answer) = oneshot::channel();
        self.submit(Request::Claims {
            state,
            after,
            limit,
            reply,
        })?;
        answer.await.map_err(|_| self.shared.unavailable())?
    }

    /// Refuses every command with [`EngineError::Unavailable`] and `reason` until called again
    /// with `None`, while account reads go on. For conditions outside the engine that make
    /// appending unsafe, such as the disk falling below its reserve: an append that fails
    /// half-way stops the engine for good, a refusal ends when the condition does.
    pub fn refuse_writes(&self, reason: Option<String>) {
        *self
            .shared
            .writes_refused
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = reason;
    }

    /// Why commands are refused, if they are (see [`EngineHandle::refuse_writes`]).
    pub fn writes_refused(&self) -> Option<String> {
        self.shared
            .writes_refused
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The revoked access tokens, as of the durable log.
    pub fn revocations(&self) -> Arc<Revocations> {
        Arc::clone(&self.shared.revocations)
    }

    /// The accounts' names by index, as of the durable log, for the event feed.
    pub fn account_names(&self) -> Arc<AccountNames> {
        Arc::clone(&self.shared.names)
    }

    fn submit(&self, request: Request) -> Result<(), EngineError> {
        let weight = request.weight();
        self.shared.admit(weight)?;
        match self.requests.try_send(request) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.shared.unadmit(weight);
                self.shared.metrics.overloaded.inc();
                Err(EngineError::Overloaded)
            }
            Err(TrySendError::Disconnected(_)) => {
                self.shared.unadmit(weight);
                Err(self.shared.unavailable())
            }
        }
    }

    /// The position up to which the log is durable.
    pub fn durable_position(&self) -> u64 {
        self.shared.durable_position.load(Ordering::SeqCst)
    }

    /// Whether the engine accepts work.
    pub fn is_ready(&self) -> bool {
        !self.shared.failed.load(Ordering::SeqCst)
    }

    /// Why the engine stopped accepting work (a failed append: the log is poisoned and only a
    /// restart recovers); `None` while it works. A stopped engine never resumes, so once this is
    /// `Some` it stays so.
    pub fn failure(&self) -> Option<String> {
        (!self.is_ready()).then(|| self.shared.unavailable().to_string())
    }

    /// Bytes the log holds on disk: its segment files without the zeros kept ahead of the newest
    /// one's records, as of the last append.
    /// It only grows (segments are never deleted yet).
    pub fn log_bytes(&self) -> u64 {
        self.shared.log_bytes.load(Ordering::Relaxed)
    }

    /// The newest snapshot: the one recovery loaded at start, or a newer one written since by
    /// the periodic snapshotter; `None` if there is neither. A restart replays the log from its
    /// position (see [`EngineHandle::durable_position`] for the other end).
    pub fn last_snapshot(&self) -> Option<SnapshotInfo> {
        self.shared.last_snapshot()
    }

    /// Commands waiting in the queue.
    pub fn queued_commands(&self) -> usize {
        self.shared.queued_commands.load(Ordering::SeqCst)
    }

    /// The engine's metrics.
    pub fn metrics(&self) -> &EngineMetrics {
        &self.shared.metrics
    }
}
