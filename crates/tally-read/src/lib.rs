//! The embedded read model of Tally: a projection of the event log into a redb file that answers
//! the queries the engine's in-memory state does not, namely a transfer by id, an account's
//! history, and each ledger's totals and daily summary.
//!
//! [`ReadModel::start`] opens (or creates) the file and starts the `tally-projector` thread, which
//! follows the log from the stored checkpoint; the returned [`ReadModel`] is a cheap `Clone` for
//! the query side. Queries see whole committed transactions only, and
//! [`ReadModel::wait_for`] lets a caller read its own writes.
//!
//! ```no_run
//! # async fn example(log: &dyn tally_log::EventLog) -> Result<(), tally_read::ReadError> {
//! use std::time::Duration;
//!
//! let durable = log.subscribe();
//! let target = *durable.borrow();
//! let read = tally_read::ReadModel::start("data/read.redb".as_ref(), log.reader(), durable)?;
//! read.wait_for(target, Duration::from_secs(1)).await?;
//! if let Some(page) = read.history("alice", None, 100)? {
//!     for entry in page.entries {
//!         println!("{} {} {} -> {}", entry.position, entry.kind, entry.amount, entry.balance_after);
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Key design choice: the checkpoint (the next log position to apply) is stored in the same redb
//! write transaction as the rows it covers, so the file is always the projection of an exact
//! prefix of the log; a crash anywhere resumes from the last committed checkpoint and applies
//! nothing twice. This makes it safe to skip the fsync on most commits (the file is derived
//! data: at worst a crash costs re-projecting the last second), and to throw the file away and
//! rebuild it from position 0 whenever it is damaged or ahead of the log. The projector runs on
//! a thread of the offline executor ([`tally_offline`], at nice 19), so catching up takes little
//! CPU from the online write path yet is never starved; [`rebuild`] projects a whole log into a
//! new file as an offline job (`tally project --rebuild`).
#![deny(missing_docs)]

mod codec;
mod day;
mod error;
mod feed;
pub mod limits;
mod projection;
mod projector;
mod rebuild;
mod store;
mod write_back;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tally_log::LogReader;
use tally_offline::OfflineExecutor;
use tokio::sync::watch;

pub use day::Day;
pub use error::ReadError;
pub use feed::{EventFeed, FeedAccount, FeedBody, FeedEvent, FeedFilter, FeedPage};
pub use rebuild::{rebuild, REBUILD_JOB};

use crate::projection::Projection;
use crate::projector::{Projector, Shared};
use crate::store::Store;

/// The usual name of the read model's file inside a data directory.
pub const READ_MODEL_FILE_NAME: &str = "read.redb";

/// The query side of the read model. Cheap to clone; the projector stops when the last clone is
/// dropped (or at [`ReadModel::shutdown`]).
///
/// Queries are short blocking redb reads (a few B-tree lookups, at most one history page), cheap
/// enough to call from async handlers directly.
#[derive(Clone)]
pub struct ReadModel {
    shared: Arc<Shared>,
    handle: Arc<ProjectorHandle>,
}

/// A transfer as the read model shows it.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct TransferView {
    /// The transfer id.
    pub id: String,
    /// `deposit`, `withdrawal`, `transfer`, `pending`, `post` or `void`.
    pub kind: &'static str,
    /// `posted`, or for a pending transfer its current state: `pending`, `posted`, `voided` or
    /// `expired`.
    pub status: &'static str,
    /// The ledger code.
    pub ledger: String,
    /// The account debited; `None` for a deposit (the ledger's external account).
    pub from: Option<String>,
    /// The account credited; `None` for a withdrawal (the ledger's external account).
    pub to: Option<String>,
    /// Amount moved, reserved (pending) or released (void), in minor units.
    pub amount: u64,
    /// Its position in the log.
    pub position: u64,
    /// The timestamp of its batch.
    pub timestamp_ns: u64,
    /// For a post or a void: the id of the pending transfer it resolves.
    pub pending_id: Option<String>,
    /// For a posted pending transfer: the amount the post moved.
    pub posted_amount: Option<u64>,
    /// For a pending transfer with a timeout: when it expires (or expired).
    pub expires_at_ns: Option<u64>,
    /// For a resolved pending transfer: the id of the post or void; `None` for an expiry.
    pub resolved_by: Option<String>,
}

/// One page of an account's history.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// Entries in position order.
    pub entries: Vec<HistoryEntry>,
    /// The `after` of the next page; `None` when this page reaches the current end.
    pub next: Option<u64>,
}

/// One event touching an account.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The event's position in the log.
    pub position: u64,
    /// The transfer id; for an expiry, the pending transfer's.
    pub transfer_id: String,
    /// `deposit`, `withdrawal`, `transfer`, `pending`, `post`, `void` or `expire`.
    pub kind: &'static str,
    /// `debit` or `credit`: the side of the transfer the account is on.
    pub side: &'static str,
    /// The amount of the event.
    pub amount: u64,
    /// The account's posted balance after the event.
    pub balance_after: i128,
    /// The timestamp of the event's batch.
    pub timestamp_ns: u64,
}

/// A ledger's figures, as [`ReadModel::ledger_totals`] reports them.
///
/// Value counts once, when it is posted: deposits, withdrawals, transfers and posts of pending
/// transfers (with the amount posted). Pending transfers, voids and expiries post nothing; the
/// pending transfers still open are counted apart. The balances of the ledger's accounts sum to
/// `deposited - withdrawn`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerTotals {
    /// The ledger code.
    pub ledger: String,
    /// Accounts opened in the ledger (its external account is not one).
    pub accounts: u64,
    /// Deposits, withdrawals, transfers and posts.
    pub transfers: u64,
    /// The sum of their amounts (a post's is the amount it posted).
    pub volume: u128,
    /// The sum of the deposits' amounts.
    pub deposited: u128,
    /// The sum of the withdrawals' amounts.
    pub withdrawn: u128,
    /// Pending transfers open: neither posted, voided nor expired.
    pub pending: u64,
    /// The sum of the amounts they reserve.
    pub pending_amount: u128,
}

/// One page of a ledger's daily summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DailyPage {
    /// Days with a counted event, oldest first.
    pub days: Vec<DaySummary>,
    /// The first day of the next page (pass it as `from`); `None` when this page holds the last
    /// day of the range.
    pub next: Option<Day>,
}

/// A ledger's figures of one UTC day, counted as [`LedgerTotals::transfers`] and
/// [`LedgerTotals::volume`] are, by the day of each event's batch timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaySummary {
    /// The day.
    pub day: Day,
    /// Deposits, withdrawals, transfers and posts of that day.
    pub transfers: u64,
    /// The sum of their amounts.
    pub volume: u128,
}

/// Where the projector stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProjectorStatus {
    /// Following the log.
    Running,
    /// Stopped by [`ReadModel::shutdown`] or drop.
    Stopped,
    /// Stopped by an error; queries keep answering as of `position`.
    Failed {
        /// The checkpoint it stopped at.
        position: u64,
        /// The error.
        reason: String,
    },
}

/// How far the read model trails the durable log, as [`ReadModel::lag`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lag {
    /// Events durable in the log but not yet projected: the log's durable end minus
    /// [`ReadModel::position`].
    pub events: u64,
    /// Zero when `events` is zero; otherwise how long ago the projection was last caught up
    /// with the log (or opened, if it has not caught up since). An idle projector confirms that
    /// it is caught up every [`limits::CAUGHT_UP_CHECK_INTERVAL`], so this overstates the time
    /// the oldest unprojected event has waited by at most about that much.
    pub duration: Duration,
}

/// Tuning of the projector; [`Default`] takes the values of [`limits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProjectorOptions {
    /// Events folded into one write transaction at most.
    pub transaction_events_max: u64,
    /// Wall time one write transaction may keep folding.
    pub transaction_duration_max: Duration,
    /// Longest time between durable commits.
    pub durable_commit_interval: Duration,
    /// Shortest time between the starts of two transactions while no query waits.
    pub commit_interval_min: Duration,
}

impl Default for ProjectorOptions {
    fn default() -> ProjectorOptions {
        ProjectorOptions {
            transaction_events_max: limits::TRANSACTION_EVENTS_MAX,
            transaction_duration_max: limits::TRANSACTION_DURATION_MAX,
            durable_commit_interval: limits::DURABLE_COMMIT_INTERVAL,
            commit_interval_min: limits::COMMIT_INTERVAL_MIN,
        }
    }
}

/// Stops and joins the projector thread when the last [`ReadModel`] clone goes.
struct ProjectorHandle {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl ReadModel {
    /// Opens or creates the read model file at `path` (usually `DATA_DIR/read.redb`, see
    /// [`READ_MODEL_FILE_NAME`]) and starts the projector thread following the log through
    /// `reader` and `durable` (the log's durable next position).
    ///
    /// A file that is damaged, of another format version, or ahead of the log is deleted and
    /// rebuilt from position 0.
    pub fn start(
        path: &Path,
        reader: Box<dyn LogReader>,
        durable: watch::Receiver<u64>,
    ) -> Result<ReadModel, ReadError> {
        ReadModel::start_with(path, reader, durable, ProjectorOptions::default())
    }

    /// [`ReadModel::start`] with explicit projector tuning.
    pub fn start_with(
        path: &Path,
        reader: Box<dyn LogReader>,
        durable: watch::Receiver<u64>,
        options: ProjectorOptions,
    ) -> Result<ReadModel, ReadError> {
        ReadModel::start_on(&OfflineExecutor::default(), path, reader, durable, options)
    }

    /// [`ReadModel::start_with`] with the projector on a thread of `offline`, the process's
    /// executor for offline work.
    pub fn start_on(
        offline: &OfflineExecutor,
        path: &Path,
        reader: Box<dyn LogReader>,
        durable: watch::Receiver<u64>,
        options: ProjectorOptions,
    ) -> Result<ReadModel, ReadError> {
        assert!(options.transaction_events_max > 0);
        let log_end = *durable.borrow();
        let (store, checkpoint) = Store::open(path, log_end)?;
        assert!(checkpoint.position <= log_end);
        let projection = Projection::load(&store, checkpoint)?;
        tracing::info!(path = %path.display(), position = checkpoint.position, log_end, "read model opened");
        let shared = Arc::new(Shared::new(store, checkpoint.position, durable.clone()));
        let projector = Projector {
            shared: Arc::clone(&shared),
            reader,
            durable,
            projection,
            options,
        };
        // Queries wait for it (read-your-writes): a low priority that busy cores cannot starve.
        let thread = offline
            .spawn_follower("tally-projector", move || projector.run())
            .map_err(|source| ReadError::Io {
                op: "spawn projector thread for",
                path: path.to_path_buf(),
                source,
            })?;
        let handle = Arc::new(ProjectorHandle {
            shared: Arc::clone(&shared),
            thread: Mutex::new(Some(thread)),
        });
        Ok(ReadModel { shared, handle })
    }

    /// The transfer `id`; `None` if no transfer has that id (a rejected command has none).
    pub fn transfer(&self, id: &str) -> Result<Option<TransferView>, ReadError> {
        self.shared.store.transfer(id)
    }

    /// Up to `limit` entries of the account's history strictly after position `after`, in
    /// position order; `limit` is clamped to `1..=`[`limits::HISTORY_PAGE_ENTRIES_MAX`].
    /// `None` if the account is unknown (as of [`ReadModel::position`]).
    pub fn history(
        &self,
        account_id: &str,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Option<HistoryPage>, ReadError> {
        self.shared.store.history(account_id, after, limit)
    }

    /// The figures of the ledger `code`; `None` if no account of it is projected (as of
    /// [`ReadModel::position`]).
    pub fn ledger_totals(&self, code: &str) -> Result<Option<LedgerTotals>, ReadError> {
        self.shared.store.ledger_totals(code)
    }

    /// Up to `limit` days of the ledger `code` that have a counted event, oldest first, from
    /// `from` to `to` (both inclusive; unbounded when `None`); `limit` is clamped to
    /// `1..=`[`limits::DAILY_PAGE_DAYS_MAX`]. `None` if no account of the ledger is projected
    /// (as of [`ReadModel::position`]).
    pub fn ledger_days(
        &self,
        code: &str,
        from: Option<Day>,
        to: Option<Day>,
        limit: u32,
    ) -> Result<Option<DailyPage>, ReadError> {
        self.shared.store.ledger_days(code, from, to, limit)
    }

    /// The position up to which events are projected: the next position to apply.
    pub fn position(&self) -> u64 {
        *self.shared.projected.borrow()
    }

    /// How far the projection trails the durable log; see [`Lag`].
    pub fn lag(&self) -> Lag {
        // The durable end first: the projection only moves forward, so reading it second can
        // only make the lag look smaller, never report a lag that did not exist.
        let durable = *self.shared.durable.borrow();
        let events = durable.saturating_sub(self.position());
        let duration = if events == 0 {
            Duration::ZERO
        } else {
            self.shared.since_caught_up()
        };
        Lag { events, duration }
    }

    /// When the projection was last caught up with the durable log: now when it is, and
    /// otherwise `now - lag().duration` (see [`Lag::duration`]).
    pub fn last_caught_up(&self) -> SystemTime {
        let now = SystemTime::now();
        now.checked_sub(self.lag().duration).unwrap_or(now)
    }

    /// Where the projector stands.
    pub fn status(&self) -> ProjectorStatus {
        self.shared.status.lock().expect("status lock").clone()
    }

    /// Waits until [`ReadModel::position`] reaches `target`. Fails with [`ReadError::Lagging`]
    /// when `timeout` passes first, or at once if the projector has stopped short of it.
    pub async fn wait_for(&self, target: u64, timeout: Duration) -> Result<(), ReadError> {
        let mut projected = self.shared.projected.subscribe();
        if *projected.borrow() < target {
            // Someone waits: the projector stops gathering events for a larger transaction.
            self.shared.asked.fetch_max(target, Ordering::AcqRel);
            self.shared.wake.notify_one();
        }
        let finished = &self.shared.finished;
        let wait =
            projected.wait_for(|position| *position >= target || finished.load(Ordering::Acquire));
        // Whether it timed out or the projector finished, the position decides.
        let _ = tokio::time::timeout(timeout, wait).await;
        let position = self.position();
        if position >= target {
            Ok(())
        } else {
            Err(ReadError::Lagging {
                projected: position,
                target,
            })
        }
    }

    /// Stops the projector thread (for every clone) after its current transaction, leaving a
    /// durable checkpoint. Queries keep working.
    pub fn shutdown(self) {
        self.handle.stop();
    }
}

impl ProjectorHandle {
    fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        let thread = self.thread.lock().expect("thread lock").take();
        if let Some(thread) = thread {
            // The projector catches its own panics, so a join error cannot carry news.
            let _ = thread.join();
        }
    }
}

impl Drop for ProjectorHandle {
    fn drop(&mut self) {
        self.stop();
    }
}
