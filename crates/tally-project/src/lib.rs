//! `tally project`: Tally's read models kept in Redis for many readers, fed by the event feed of
//! a running server, by a group of processes that share the work.
//!
//! Why a separate process: the embedded read model inside `tally serve` answers the API; a Redis
//! copy serves other readers (dashboards, other services) at whatever rate they need without
//! touching the ledger's machine, and several projectors keep it current when one of them dies.
//!
//! How it loses nothing and applies nothing twice:
//! - the ledgers are split into a fixed number of partitions ([`fold::partition_of`]); each
//!   partition has a checkpoint (the next log position it applies) and a lease, both in Redis;
//! - a member applies a page of events to the partitions it holds and writes the rows and the
//!   new checkpoints in one transaction fenced by its leases ([`store`]); a crash before the
//!   transaction changes nothing, a crash after it loses nothing, and a member whose lease moved
//!   on writes nothing;
//! - rows are written as values, never increments, and history entries are appended only by
//!   the transaction that moves the checkpoint past them, so the only thing that decides
//!   whether an event counted is the checkpoint written with it;
//! - one commit is in flight at a time while the next pages are folded on top of it; when it
//!   fails, what was folded after it is dropped unsent.
//!
//! Members heartbeat into the group; partition `p` belongs to the `p mod n`-th live member by
//! name, so when one joins or leaves the others give up or take partitions at their next tick
//! ([`group`]).

pub mod fold;
pub mod group;
pub mod http;
pub mod metrics;
pub mod resp;
pub mod source;
pub mod store;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context};

use crate::fold::{Fold, Ownership};
use crate::group::Member;
use crate::metrics::Metrics;
use crate::source::{next_retry, ReadAhead, Source, SourceError, PAGE_EVENTS_MAX};
use crate::store::{Commit, Committed, Committer, Keys, Lease, RedisStore, Transactions};

/// Partitions of a new group unless `--partitions` says otherwise: enough to spread over a
/// handful of members, few enough that each commit fences them all cheaply.
pub const DEFAULT_PARTITIONS: u32 = 16;

/// Partitions of a group at most (each is a lease to renew and a checkpoint per commit).
pub const PARTITIONS_MAX: u32 = 1024;

/// How a projector runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// `redis://host:port[/db]`.
    pub store: String,
    /// The server whose feed it reads, `http://host:port`.
    pub source: String,
    pub token: Option<String>,
    pub group: String,
    pub prefix: String,
    /// The partition count of a new group (an existing group keeps its own).
    pub partitions: Option<u32>,
    /// How long a lease and a heartbeat last; members renew them five times per lease.
    pub lease: Duration,
    /// Events per page of the feed (and so per commit), at most 1000.
    pub page_events: u32,
    pub metrics_listen: Option<SocketAddr>,
    /// Delete every key of the prefix, project the feed from position zero up to its end at
    /// the start, then stop.
    pub rebuild: bool,
    /// A test hook: abort the process at a commit (see [`FaultPoint`]).
    pub fault: Option<FaultPoint>,
}

impl Options {
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(1..=PAGE_EVENTS_MAX).contains(&self.page_events) {
            bail!("--page-events must be between 1 and {PAGE_EVENTS_MAX}");
        }
        if let Some(partitions) = self.partitions {
            if !(1..=PARTITIONS_MAX).contains(&partitions) {
                bail!("--partitions must be between 1 and {PARTITIONS_MAX}");
            }
        }
        if self.lease < Duration::from_millis(500) || self.lease > Duration::from_secs(600) {
            bail!("--lease must be between 500ms and 10m");
        }
        let valid = |text: &str| {
            !text.is_empty()
                && text.len() <= 64
                && text
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c))
        };
        if !valid(&self.group) {
            bail!("--group must be 1 to 64 letters, digits or . _ : -");
        }
        if !valid(&self.prefix) {
            bail!("--prefix must be 1 to 64 letters, digits or . _ : -");
        }
        Ok(())
    }
}

/// Where a test makes the projector misbehave at its `commit`-th commit: abort (as a crash
/// would) just before it is sent or just after Redis acknowledged it, or stall before sending it
/// for twice the lease, as a paused process would, so that its leases lapse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultPoint {
    pub fault: Fault,
    pub commit: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    AbortBefore,
    AbortAfter,
    StallBefore,
}

impl FromStr for FaultPoint {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<FaultPoint> {
        let expected = "expected before-commit:N, after-commit:N or stall-before-commit:N";
        let (when, commit) = text.split_once(':').ok_or_else(|| anyhow!("{expected}"))?;
        let fault = match when {
            "before-commit" => Fault::AbortBefore,
            "after-commit" => Fault::AbortAfter,
            "stall-before-commit" => Fault::StallBefore,
            other => bail!("unknown fault point {other:?}: {expected}"),
        };
        let commit = commit.parse().context("the commit number")?;
        Ok(FaultPoint { fault, commit })
    }
}

impl fmt::Display for FaultPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let when = match self.fault {
            Fault::AbortBefore => "before-commit",
            Fault::AbortAfter => "after-commit",
            Fault::StallBefore => "stall-before-commit",
        };
        write!(f, "{when}:{}", self.commit)
    }
}

/// What a projector did, when it stops.
#[derive(Debug, Default)]
pub struct Summary {
    pub events: u64,
    pub commits: u64,
    /// From the first read of the feed to the stop.
    pub elapsed: Duration,
    /// The feed position every partition reached (for a rebuild).
    pub position: Option<u64>,
}

/// Events folded into one commit at most. While catching up, the pages already read ahead are
/// folded together, so an account that several of them touch is written once (one `HSET` and
/// one `RPUSH` per account and commit): with 8,000 accounts, commits of 16,000 events cost
/// Redis half the CPU per event that commits of 4,000 did, as most accounts appear in most
/// commits. The bound keeps one transaction's size in check, and with it the time its `EXEC`
/// keeps Redis from serving other clients: about 35 ms at this size on a 2-core machine.
pub const COMMIT_EVENTS_MAX: usize = source::PAGES_AHEAD_MAX * PAGE_EVENTS_MAX as usize;

/// Runs a member of the group until `shutdown` completes (or, for a rebuild, until every
/// partition reached the feed's end); gives its leases up on the way out.
pub async fn run(
    options: Options,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Summary> {
    options.validate()?;
    let keys = Keys::new(&options.prefix, &options.group);
    let mut store = RedisStore::connect(&options.store, keys.clone()).await?;
    let committer = Committer::connect(&options.store, keys.clone()).await?;
    let mut source = Source::new(&options.source, options.token.as_deref()).await?;
    let stop_at = if options.rebuild {
        let deleted = store.delete_everything().await?;
        let end = source.end().await?;
        tracing::info!(
            deleted,
            end,
            "rebuild: deleted the prefix's keys; projecting the feed from 0"
        );
        metrics.rebuild_total.set(end as i64);
        Some(end)
    } else {
        None
    };
    let partitions = store
        .group_partitions(DEFAULT_PARTITIONS, options.partitions)
        .await?;
    if let Some(listen) = options.metrics_listen {
        let address = metrics.serve(listen).await?;
        println!("metrics on http://{address}/metrics");
    }
    let mut member = Member::new(partitions, options.lease);
    tracing::info!(member = member.id(), partitions, group = %options.group, "projector started");
    let page_events = options.page_events;
    let mut projector = Projector {
        options,
        metrics,
        store,
        transactions: std::sync::Arc::new(Transactions::new(keys)),
        committer: Some(committer),
        in_flight: None,
        reader: ReadAhead::start(source, 0, page_events),
        fold: Fold::default(),
        summary: Summary::default(),
        next_tick: Instant::now(),
    };
    tokio::pin!(shutdown);
    let started = Instant::now();
    let result = projector.follow(&mut member, stop_at, &mut shutdown).await;
    // What is still on its way lands (or not) before the leases go, so the summary counts it.
    if let Err(Failure::Transient(error) | Failure::Fatal(error)) =
        projector.settle(&mut member).await
    {
        tracing::warn!("the last commit's outcome is unknown: {error:#}");
    }
    member.leave(&mut projector.store).await;
    projector.summary.elapsed = started.elapsed();
    projector.summary.position = stop_at;
    result.map(|()| projector.summary)
}

struct Projector {
    options: Options,
    metrics: Metrics,
    /// Loads rows and keeps the group's membership and leases.
    store: RedisStore,
    transactions: std::sync::Arc<Transactions>,
    /// Sends commits; away (with the task that uses it) while a commit is in flight.
    committer: Option<Committer>,
    /// At most one commit is in flight, so commits land in order and one that fails is the
    /// last one sent.
    in_flight: Option<InFlight>,
    reader: ReadAhead,
    fold: Fold,
    summary: Summary,
    next_tick: Instant,
}

impl Projector {
    async fn follow(
        &mut self,
        member: &mut Member,
        stop_at: Option<u64>,
        shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> anyhow::Result<()> {
        let mut retry = Duration::ZERO;
        loop {
            if !retry.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(retry) => {}
                    () = shutdown.as_mut() => return Ok(()),
                }
            }
            if Instant::now() >= self.next_tick {
                // A tick may give partitions up or take new ones, which clears the cache that
                // the commit in flight was folded on: it lands first.
                if let Err(failure) = self.settle(member).await {
                    match failure {
                        Failure::Fatal(error) => return Err(error),
                        Failure::Transient(error) => {
                            retry = self.recover(member, error, retry).await;
                            continue;
                        }
                    }
                }
                if let Err(error) = member
                    .tick(&mut self.store, &mut self.fold, &self.metrics)
                    .await
                {
                    tracing::warn!("cannot reach the group in Redis: {error:#}");
                }
                self.next_tick = Instant::now() + member.tick_interval();
            }
            if let Some(stop) = stop_at {
                let done = member.owned().len() as u32 == member.partitions()
                    && member.owned().values().all(|lease| lease.position >= stop);
                if done && self.in_flight.is_none() {
                    return Ok(());
                }
            }
            // Where the next page starts: after the commit in flight, which moves every
            // partition behind its end to its end, or at the lowest checkpoint.
            let from = match &self.in_flight {
                Some(flight) => Some(flight.end),
                None => member.owned().values().map(|lease| lease.position).min(),
            };
            let Some(from) = from else {
                tokio::select! {
                    () = tokio::time::sleep_until(self.next_tick.into()) => {}
                    () = shutdown.as_mut() => return Ok(()),
                }
                continue;
            };
            let wait = self.next_tick.saturating_duration_since(Instant::now());
            let page = tokio::select! {
                page = self.reader.next(from, wait) => page,
                joined = landed(&mut self.in_flight) => {
                    let flight = self.in_flight.take().expect("the commit that landed");
                    match self.finish(member, flight, joined).await {
                        Ok(_) => {}
                        Err(Failure::Fatal(error)) => return Err(error),
                        Err(Failure::Transient(error)) => {
                            retry = self.recover(member, error, retry).await;
                        }
                    }
                    continue;
                }
                () = shutdown.as_mut() => return Ok(()),
            };
            let Some(page) = page else {
                continue;
            };
            let page = match page {
                Ok(page) => page,
                Err(SourceError::Fatal(error)) => return Err(error),
                Err(SourceError::Transient(error)) => {
                    tracing::warn!("cannot read the feed (retrying): {error:#}");
                    continue;
                }
            };
            self.metrics
                .lag_events
                .set(page.end.saturating_sub(from) as i64);
            let Some(first) = page.events.first() else {
                self.metrics.lag_seconds.set(0.0);
                continue;
            };
            let age = SystemTime::now()
                .duration_since(source::timestamp(&first.timestamp)?)
                .unwrap_or_default();
            self.metrics.lag_seconds.set(age.as_secs_f64());
            let events = self.gather(page)?;
            match self.apply(member, events).await {
                Ok(()) => retry = Duration::ZERO,
                Err(Failure::Fatal(error)) => return Err(error),
                Err(Failure::Transient(error)) => {
                    retry = self.recover(member, error, retry).await;
                }
            }
            if let Some(stop) = stop_at {
                let done = member
                    .owned()
                    .values()
                    .map(|lease| lease.position)
                    .min()
                    .unwrap_or(0);
                self.metrics.rebuild_done.set(done.min(stop) as i64);
            }
        }
    }

    /// `page`, followed by the pages after it that were read already, while each was full, up to
    /// [`COMMIT_EVENTS_MAX`] events: a projector that is behind commits more at a time.
    fn gather(&mut self, page: source::Page) -> anyhow::Result<Vec<fold::FeedEvent>> {
        let limit = self.options.page_events as usize;
        let mut full = page.events.len() == limit;
        let mut events = page.events;
        while full && events.len() + limit <= COMMIT_EVENTS_MAX {
            let next = events.last().expect("a full page").position + 1;
            match self.reader.ready(next) {
                Some(Ok(page)) => {
                    full = page.events.len() == limit;
                    events.extend(page.events);
                }
                Some(Err(SourceError::Fatal(error))) => return Err(error),
                Some(Err(SourceError::Transient(_))) | None => break,
            }
        }
        Ok(events)
    }

    /// Folds events into the owned partitions and sends them with their checkpoints, once the
    /// commit before them landed.
    ///
    /// The fold runs while that commit is still in flight, on a cache that already holds its
    /// rows: a row the cache lacks is not one it writes, so loading it reads what Redis will
    /// hold either way. Should the commit in flight fail, this one is dropped unsent, the cache
    /// with it, and the pages are read again from the checkpoints.
    async fn apply(
        &mut self,
        member: &mut Member,
        events: Vec<fold::FeedEvent>,
    ) -> Result<(), Failure> {
        if self.fold.is_full() {
            // Dropping rows a commit in flight writes would let a load read them stale.
            if !self.settle(member).await? {
                return Ok(());
            }
            self.fold.clear();
        }
        let end = events.last().expect("a page with events").position + 1;
        let checkpoints: BTreeMap<u32, u64> = member
            .owned()
            .iter()
            .map(|(partition, lease)| (*partition, lease.position))
            .collect();
        let ownership = Ownership {
            partitions: member.partitions(),
            checkpoints: &checkpoints,
        };
        let mut rounds = 0;
        loop {
            let missing = self.fold.missing(&events, &ownership);
            if missing.is_empty() {
                break;
            }
            rounds += 1;
            assert!(
                rounds <= fold::LOAD_ROUNDS_MAX,
                "every row a page needs is loaded within LOAD_ROUNDS_MAX rounds"
            );
            let rows = self
                .store
                .load(&missing)
                .await
                .map_err(Failure::from_redis)?;
            self.fold.load(rows);
        }
        // Only partitions the page moves are fenced: one acquired further on is not behind. The
        // commit in flight moves the same partitions (to its end, which is before this one's).
        let fences: BTreeMap<u32, (Lease, u64)> = member
            .owned()
            .iter()
            .filter(|(_, lease)| lease.position < end)
            .map(|(partition, lease)| (*partition, (*lease, end)))
            .collect();
        // Folding and building the transaction is the CPU-heavy part: it runs on a blocking
        // thread, so the async threads keep the commit in flight and the reader moving.
        let mut fold = std::mem::take(&mut self.fold);
        let transactions = self.transactions.clone();
        let partitions = member.partitions();
        let member_id = member.id().to_owned();
        let lease = self.options.lease;
        let folded = tokio::task::spawn_blocking(move || {
            let ownership = Ownership {
                partitions,
                checkpoints: &checkpoints,
            };
            let prepared = fold
                .apply(&events, &ownership)
                .context("the feed contradicts the read model in Redis")
                .and_then(|changes| {
                    let last = events.last().expect("a page with events");
                    let commit = transactions.prepare(
                        &member_id,
                        lease,
                        fences,
                        &last.timestamp,
                        &changes,
                        &fold.rows,
                    )?;
                    // The events of a batch share its time: each is parsed once.
                    let mut last_time: Option<(&str, SystemTime)> = None;
                    let logged: Vec<SystemTime> = events
                        .iter()
                        .filter_map(|event| match last_time {
                            Some((text, time)) if text == event.timestamp => Some(time),
                            _ => {
                                let time = source::timestamp(&event.timestamp).ok()?;
                                last_time = Some((&event.timestamp, time));
                                Some(time)
                            }
                        })
                        .collect();
                    Ok((commit, changes.applied, logged))
                });
            (fold, prepared)
        })
        .await;
        let (fold, prepared) = match folded {
            Ok(folded) => folded,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(error) => return Err(Failure::Fatal(anyhow!("the fold stopped: {error}"))),
        };
        self.fold = fold;
        let (commit, applied, logged) = prepared.map_err(Failure::Fatal)?;
        if !self.settle(member).await? {
            return Ok(());
        }
        self.fault(true).await;
        self.send(commit, end, applied, logged);
        Ok(())
    }

    /// Sends `commit` from a task of its own, so that the next pages are folded meanwhile.
    fn send(&mut self, commit: Commit, end: u64, applied: u64, logged: Vec<SystemTime>) {
        assert!(self.in_flight.is_none(), "one commit in flight at most");
        let mut committer = self.committer.take().expect("the committer is home");
        let fences = commit.fences.clone();
        let task = tokio::spawn(async move {
            let committed = committer.commit(&commit).await;
            (committer, committed)
        });
        self.in_flight = Some(InFlight {
            task,
            fences,
            end,
            applied,
            logged,
        });
    }

    /// Waits for the commit in flight, if any. `Ok(false)`: it was fenced, and the cache and
    /// the lost partition are gone.
    async fn settle(&mut self, member: &mut Member) -> Result<bool, Failure> {
        let Some(mut flight) = self.in_flight.take() else {
            return Ok(true);
        };
        let joined = (&mut flight.task).await;
        self.finish(member, flight, joined).await
    }

    /// Takes in the outcome of a commit that was in flight.
    async fn finish(
        &mut self,
        member: &mut Member,
        flight: InFlight,
        joined: Result<CommitOutcome, tokio::task::JoinError>,
    ) -> Result<bool, Failure> {
        let (committer, committed) = match joined {
            Ok(outcome) => outcome,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(error) => return Err(Failure::Fatal(anyhow!("the commit task stopped: {error}"))),
        };
        self.committer = Some(committer);
        match committed.map_err(Failure::from_redis)? {
            Committed::Written => {
                self.fault(false).await;
                member.advance(&flight.fences, &self.metrics);
                self.summary.commits += 1;
                self.summary.events += flight.applied;
                self.metrics.commits.inc();
                self.metrics.events.inc_by(flight.applied);
                let now = SystemTime::now();
                self.metrics.observe_delays(
                    flight
                        .logged
                        .iter()
                        .map(|at| now.duration_since(*at).unwrap_or_default().as_secs_f64()),
                );
                Ok(true)
            }
            Committed::Fenced(partition) => {
                tracing::warn!(partition, "lost the lease of partition {partition} to another member; its rows are theirs now");
                self.metrics.fenced.inc();
                self.fold.clear();
                member.lose(partition, &self.metrics);
                Ok(false)
            }
        }
    }

    /// After Redis failed: the outcome of the last commit is unknown, so what Redis holds
    /// decides. The cache goes and the leases are read again for their checkpoints. Returns the
    /// pause before the next try.
    async fn recover(
        &mut self,
        member: &mut Member,
        error: anyhow::Error,
        retry: Duration,
    ) -> Duration {
        // A failed load may leave a commit in flight: it ends before the checkpoints are read.
        if let Err(Failure::Transient(error) | Failure::Fatal(error)) = self.settle(member).await {
            tracing::warn!("the commit in flight failed too: {error:#}");
        }
        self.fold.clear();
        member
            .forget_positions(&mut self.store, &self.metrics)
            .await;
        let retry = next_retry(retry);
        tracing::warn!("cannot write to Redis (retrying in {retry:?}): {error:#}");
        retry
    }

    /// Fires the test's fault point, once.
    async fn fault(&mut self, before: bool) {
        let Some(point) = self.options.fault else {
            return;
        };
        if point.commit != self.summary.commits + 1 {
            return;
        }
        if point.fault == Fault::StallBefore {
            self.options.fault = None;
        }
        match (point.fault, before) {
            (Fault::AbortBefore, true) | (Fault::AbortAfter, false) => {
                eprintln!("tally project: fault point {point} reached; aborting");
                std::process::abort();
            }
            (Fault::StallBefore, true) => {
                eprintln!("tally project: fault point {point} reached; stalling");
                tokio::time::sleep(self.options.lease * 2).await;
            }
            _ => {}
        }
    }
}

/// What a commit task hands back: its connection, and whether the commit landed.
type CommitOutcome = (Committer, anyhow::Result<Committed>);

/// A commit sent and not yet answered.
struct InFlight {
    task: tokio::task::JoinHandle<CommitOutcome>,
    fences: BTreeMap<u32, (Lease, u64)>,
    /// The position after its last event.
    end: u64,
    /// Events it applies to owned partitions.
    applied: u64,
    /// When each of its events entered the log, for the delay metric.
    logged: Vec<SystemTime>,
}

/// The outcome of the commit in flight, once it lands; never, when there is none.
async fn landed(in_flight: &mut Option<InFlight>) -> Result<CommitOutcome, tokio::task::JoinError> {
    match in_flight {
        Some(flight) => (&mut flight.task).await,
        None => std::future::pending().await,
    }
}

enum Failure {
    /// Redis unreachable or slow: retry.
    Transient(anyhow::Error),
    /// Retrying cannot help.
    Fatal(anyhow::Error),
}

impl Failure {
    fn from_redis(error: anyhow::Error) -> Failure {
        let transient = error.is::<resp::ConnectionLost>()
            || error
                .downcast_ref::<redis::RedisError>()
                .is_some_and(|error| {
                    error.is_io_error()
                        || error.is_timeout()
                        || error.is_connection_dropped()
                        || error.is_connection_refusal()
                });
        if transient {
            Failure::Transient(error)
        } else {
            Failure::Fatal(error.context(
                "Redis refused a write of the projector; keys under the prefix may have been \
                 changed by something else: rebuild with `tally project --rebuild`",
            ))
        }
    }
}
