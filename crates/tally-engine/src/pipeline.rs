//! The write path: a state thread that owns the ledger and a writer thread that owns the log.
//!
//! ```text
//! handlers ──try_send──▶ [bounded request queue] ──▶ state thread ──send──▶ [staged batches] ──▶ writer thread
//!                                                    decide + apply          (bounded: 1)         append + fdatasync
//!                                                    encode events                                then deliver answers
//! ```
//!
//! The state thread decides batch N+1 against a state that already holds batch N's changes
//! while the writer fsyncs batch N. Answers, reads included, travel with the batch that was
//! staged when they were computed and are delivered only once that batch (and so everything
//! before it) is durable: nobody observes state that is not durable. If an append fails, that
//! batch and every batch staged after it fail, and the engine refuses all further work: the
//! in-memory state holds changes the log does not, so only a restart (which replays the log) may
//! continue.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tally_core::limits::TIMESTAMP_NS_MAX;
use tally_core::{encode_events, AccountIndex, ClaimState, Command, Event, Id, Ledger, Reply};
use tally_log::{Batch, BatchHeader, EventLog};
use tokio::sync::oneshot;

use crate::answer::{
    AccountView, Answer, CampaignView, ClaimPage, ClaimView, Detail, TransferDetail,
};
use crate::clock::Clock;
use crate::limits::{COMMAND_QUEUE_COMMANDS_MAX, COMMIT_BATCH_COMMANDS_MAX, IDLE_TICK_MS};
use crate::metrics::EngineMetrics;
use crate::names::{name_of, AccountName, AccountNames};
use crate::restriction::{Restriction, Revocations};
use crate::{EngineError, SnapshotInfo};

/// The closed set of inputs of the state thread.
pub(crate) enum Request {
    Execute {
        commands: Vec<Command>,
        detail: Detail,
        restriction: Option<Arc<Restriction>>,
        reply: oneshot::Sender<Result<Vec<Answer>, EngineError>>,
    },
    Account {
        id: Id,
        restriction: Option<Arc<Restriction>>,
        reply: oneshot::Sender<Result<Option<AccountView>, EngineError>>,
    },
    Campaign {
        id: Id,
        reply: oneshot::Sender<Result<Option<CampaignView>, EngineError>>,
    },
    Claim {
        order_id: Id,
        reply: oneshot::Sender<Result<Option<ClaimView>, EngineError>>,
    },
    Claims {
        state: Option<ClaimState>,
        after: Option<u64>,
        limit: usize,
        reply: oneshot::Sender<Result<ClaimPage, EngineError>>,
    },
    Shutdown,
}

impl Request {
    /// What the request counts against the command queue and batch limits (a read counts as
    /// one, and so does an execute without commands: each takes a place and an answer).
    pub(crate) fn weight(&self) -> usize {
        match self {
            Request::Execute { commands, .. } => {
                commands.iter().map(command_weight).sum::<usize>().max(1)
            }
            Request::Account { .. }
            | Request::Campaign { .. }
            | Request::Claim { .. }
            | Request::Claims { .. }
            | Request::Shutdown => 1,
        }
    }
}

fn command_weight(command: &Command) -> usize {
    match command {
        Command::Linked(chain) => chain.len(),
        Command::CreateAccount { .. }
        | Command::Transfer(_)
        | Command::RevokeToken { .. }
        | Command::DefineCampaign(_)
        | Command::PublishCampaign { .. }
        | Command::Claim { .. }
        | Command::SettleClaim { .. }
        | Command::RecordClaimAttempt { .. }
        | Command::EndClaimAttempt { .. } => 1,
    }
}

/// State shared by the handle, the state thread and the writer thread.
pub(crate) struct Shared {
    /// Commands queued but not yet taken by the state thread.
    pub(crate) queued_commands: AtomicUsize,
    /// Set once an append failed; the reason is in `failure`.
    pub(crate) failed: AtomicBool,
    pub(crate) failure: Mutex<Option<String>>,
    /// Position up to which the log is durable.
    pub(crate) durable_position: AtomicU64,
    /// Bytes the log occupies, as of the last append.
    pub(crate) log_bytes: AtomicU64,
    /// The newest snapshot loaded at start or written since.
    pub(crate) last_snapshot: Mutex<Option<SnapshotInfo>>,
    pub(crate) metrics: EngineMetrics,
    pub(crate) revocations: Arc<Revocations>,
    pub(crate) names: Arc<AccountNames>,
    /// Why commands are refused while reads go on (a disk below its reserve, say); see
    /// [`crate::EngineHandle::refuse_writes`].
    pub(crate) writes_refused: Mutex<Option<String>>,
}

impl Shared {
    pub(crate) fn unavailable(&self) -> EngineError {
        let reason = self
            .failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        EngineError::Unavailable(reason.unwrap_or_else(|| "the engine has stopped".to_string()))
    }

    /// Counts `weight` commands into the queue, or refuses them when the engine has failed or
    /// the queue is full.
    pub(crate) fn admit(&self, weight: usize) -> Result<(), EngineError> {
        if self.failed.load(Ordering::SeqCst) {
            return Err(self.unavailable());
        }
        let queued = self.queued_commands.fetch_add(weight, Ordering::SeqCst);
        if queued + weight > COMMAND_QUEUE_COMMANDS_MAX {
            self.unadmit(weight);
            self.metrics.overloaded.inc();
            return Err(EngineError::Overloaded);
        }
        Ok(())
    }

    /// Takes back an [`Shared::admit`] whose request never reached the queue.
    pub(crate) fn unadmit(&self, weight: usize) {
        self.queued_commands.fetch_sub(weight, Ordering::SeqCst);
    }

    pub(crate) fn last_snapshot(&self) -> Option<SnapshotInfo> {
        *self
            .last_snapshot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn set_last_snapshot(&self, snapshot: SnapshotInfo) {
        *self
            .last_snapshot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(snapshot);
    }

    pub(crate) fn fail(&self, reason: String) {
        let mut failure = self
            .failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        failure.get_or_insert(reason);
        self.failed.store(true, Ordering::SeqCst);
    }
}

/// A decided batch on its way to the log, with the answers that wait for it.
pub(crate) struct Staged {
    batch: Option<Batch>,
    deliveries: Vec<Delivery>,
    /// Tokens this batch revokes: refused everywhere once the batch is durable.
    revoked: Vec<String>,
    /// The names of the accounts this batch creates, published once it is durable.
    named: Vec<AccountName>,
}

/// Sends one request's answer, or the error that stopped its batch.
type Delivery = Box<dyn FnOnce(Result<(), EngineError>) + Send>;

/// The state thread's decisions, apart from how requests arrive: [`crate::Stepper`] drives the
/// same code one step at a time for deterministic simulation.
pub(crate) struct Decider {
    pub(crate) ledger: Ledger,
    pub(crate) shared: Arc<Shared>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) last_timestamp_ns: u64,
}

/// A batch being decided: its events so far and the answers that wait for it.
pub(crate) struct OpenBatch {
    first_position: u64,
    /// The ledger's account count when the batch began: accounts from here on are its own.
    accounts_before: usize,
    timestamp_ns: u64,
    events: Vec<Event>,
    deliveries: Vec<Delivery>,
    commands: usize,
    /// Requests count too, reads included: a steady stream of reads must not keep a batch open
    /// (and growing) forever.
    taken: usize,
}

/// Whether a batch takes more requests after the one just taken.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Taken {
    More,
    Full,
    Shutdown,
}

impl Decider {
    /// Starts a batch at the clock's time (after the previous batch's): expires the pending
    /// transfers that are due.
    ///
    /// `None`, and the engine fails, once that time is past the timestamp limit (the year
    /// 2262): replay refuses such a batch, so writing one would leave a log no restart reads.
    /// Only a clock that far ahead, or a log that a previous clock took to the limit, gets here.
    pub(crate) fn begin(&mut self) -> Option<OpenBatch> {
        let timestamp_ns = self
            .clock
            .now_ns()
            .max(self.last_timestamp_ns.saturating_add(1));
        if timestamp_ns > TIMESTAMP_NS_MAX {
            self.shared.fail(format!(
                "the next batch would be stamped {timestamp_ns} ns, past the timestamp limit \
                 {TIMESTAMP_NS_MAX} (the last batch is at {}): no later batch can be written",
                self.last_timestamp_ns
            ));
            return None;
        }
        self.last_timestamp_ns = timestamp_ns;
        let first_position = self.ledger.next_position();
        let accounts_before = self.ledger.account_count();
        let mut events = Vec::new();
        self.ledger.begin_batch(timestamp_ns, &mut events);
        Some(OpenBatch {
            first_position,
            accounts_before,
            timestamp_ns,
            events,
            deliveries: Vec::new(),
            commands: 0,
            taken: 0,
        })
    }

    /// Decides one request into `batch`.
    pub(crate) fn take(&mut self, batch: &mut OpenBatch, request: Request) -> Taken {
        let weight = request.weight();
        self.shared
            .queued_commands
            .fetch_sub(weight, Ordering::SeqCst);
        batch.taken += weight;
        match request {
            Request::Shutdown => return Taken::Shutdown,
            Request::Execute {
                commands,
                detail,
                restriction,
                reply,
            } => {
                let refusal = restriction.and_then(|restriction| {
                    commands
                        .iter()
                        .find_map(|command| restriction.check(&self.ledger, command).err())
                });
                if let Some(reason) = refusal {
                    // Refused whole, before anything is applied; nothing waits on the log.
                    let _ = reply.send(Err(EngineError::Forbidden(reason)));
                } else {
                    batch.commands += commands.iter().map(command_weight).sum::<usize>();
                    let answers = self.execute(&commands, detail, &mut batch.events);
                    batch.deliveries.push(deliver(reply, answers));
                }
            }
            Request::Account {
                id,
                restriction,
                reply,
            } => {
                let view = self
                    .ledger
                    .account_by_id(&id)
                    .map(|(_, account)| AccountView::of(&self.ledger, account));
                let allowed = match (&view, &restriction) {
                    (Some(view), Some(restriction)) => {
                        restriction.allows(Some(view.ledger.as_str()), Some(view.id.as_str()))
                    }
                    _ => true,
                };
                if allowed {
                    batch.deliveries.push(deliver(reply, view));
                } else {
                    let _ = reply.send(Err(EngineError::Forbidden(format!(
                        "the token may not read account {id:?}"
                    ))));
                }
            }
            Request::Campaign { id, reply } => {
                let view = self
                    .ledger
                    .campaign_by_id(&id)
                    .map(|(index, _)| CampaignView::of(&self.ledger, index));
                batch.deliveries.push(deliver(reply, view));
            }
            Request::Claim { order_id, reply } => {
                let view = ClaimView::of(&self.ledger, &order_id);
                batch.deliveries.push(deliver(reply, view));
            }
            Request::Claims {
                state,
                after,
                limit,
                reply,
            } => {
                let page = ClaimPage::of(&self.ledger, state, after, limit);
                batch.deliveries.push(deliver(reply, page));
            }
        }
        if batch.taken >= COMMIT_BATCH_COMMANDS_MAX {
            Taken::Full
        } else {
            Taken::More
        }
    }

    /// Ends `batch`: the decided batch for the writer, or `None` when it holds nothing to write
    /// and nobody waits for it.
    pub(crate) fn seal(&mut self, batch: OpenBatch) -> Option<Staged> {
        let OpenBatch {
            first_position,
            accounts_before,
            timestamp_ns,
            events,
            deliveries,
            commands,
            taken: _,
        } = batch;
        if events.is_empty() && deliveries.is_empty() {
            return None;
        }
        assert_eq!(
            first_position + events.len() as u64,
            self.ledger.next_position()
        );
        let revoked = events
            .iter()
            .filter_map(|event| match event {
                Event::TokenRevoked { token_id } => Some(token_id.to_string()),
                _ => None,
            })
            .collect();
        let named = (accounts_before..self.ledger.account_count())
            .map(|index| name_of(&self.ledger, index as AccountIndex))
            .collect();
        let batch = (!events.is_empty()).then(|| Batch {
            header: BatchHeader {
                first_position,
                event_count: u32::try_from(events.len()).expect("bounded batch"),
                timestamp_ns,
            },
            body: encode_events(&events),
        });
        self.shared.metrics.batch_commands.observe(commands as f64);
        Some(Staged {
            batch,
            deliveries,
            revoked,
            named,
        })
    }

    /// Until the next pending transfer expires, at most an idle tick.
    pub(crate) fn idle_timeout(&self) -> Duration {
        let tick = Duration::from_millis(IDLE_TICK_MS);
        // A failed engine expires nothing, so an overdue pending transfer must not make it spin.
        if self.shared.failed.load(Ordering::SeqCst) {
            return tick;
        }
        match self.ledger.next_expiry_ns() {
            None => tick,
            Some(expires_at_ns) => {
                Duration::from_nanos(expires_at_ns.saturating_sub(self.clock.now_ns())).min(tick)
            }
        }
    }

    /// Answers a request of a failed engine. Returns true on shutdown.
    pub(crate) fn refuse(&self, request: Request) -> bool {
        self.shared
            .queued_commands
            .fetch_sub(request.weight(), Ordering::SeqCst);
        let error = self.shared.unavailable();
        match request {
            Request::Execute { reply, .. } => drop(reply.send(Err(error))),
            Request::Account { reply, .. } => drop(reply.send(Err(error))),
            Request::Campaign { reply, .. } => drop(reply.send(Err(error))),
            Request::Claim { reply, .. } => drop(reply.send(Err(error))),
            Request::Claims { reply, .. } => drop(reply.send(Err(error))),
            Request::Shutdown => return true,
        }
        false
    }

    fn execute(
        &mut self,
        commands: &[Command],
        detail: Detail,
        events: &mut Vec<Event>,
    ) -> Vec<Answer> {
        let mut replies = Vec::with_capacity(commands.len());
        let mut answers = Vec::with_capacity(commands.len());
        for command in commands {
            if let Err(invalid) = command.validate() {
                answers.push(Answer::Invalid(invalid));
                continue;
            }
            replies.clear();
            self.ledger.execute(command, events, &mut replies);
            answers.extend(replies.drain(..).map(|reply| self.render(reply, detail)));
        }
        answers
    }

    fn render(&self, reply: Reply, detail: Detail) -> Answer {
        match reply {
            Reply::Account { index, created } => Answer::Account {
                view: AccountView::of(&self.ledger, self.ledger.account(index)),
                created,
            },
            Reply::Transfer(reply) => {
                let detail =
                    (detail == Detail::Full).then(|| TransferDetail::of(&self.ledger, &reply));
                Answer::Transfer { reply, detail }
            }
            Reply::Rejected {
                code,
                position,
                created,
            } => Answer::Rejected {
                code,
                position,
                created,
            },
            Reply::Conflict => Answer::Conflict,
            Reply::Revoked { created } => Answer::Revoked { created },
            Reply::Campaign { index, created } => Answer::Campaign {
                view: Box::new(CampaignView::of(&self.ledger, index)),
                created,
            },
            Reply::Claim { order_id, created } => Answer::Claim {
                view: ClaimView::of(&self.ledger, &order_id).expect("a claim just answered exists"),
                created,
            },
            Reply::Refused(code) => Answer::Refused(code),
        }
    }
}

/// The state thread: takes requests off the bounded queue, gathers them into batches for at most
/// `batch_wait` after the first, and hands each decided batch to the writer.
pub(crate) struct StateThread {
    pub(crate) decider: Decider,
    pub(crate) requests: Receiver<Request>,
    pub(crate) staged: SyncSender<Staged>,
    pub(crate) batch_wait: Duration,
}

impl StateThread {
    /// Runs until shutdown or until every handle is gone; returns the ledger for a final snapshot.
    pub(crate) fn run(mut self) -> Ledger {
        loop {
            let first = match self.requests.recv_timeout(self.decider.idle_timeout()) {
                Ok(request) => Some(request),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            if self.decider.shared.failed.load(Ordering::SeqCst) {
                if let Some(request) = first {
                    if self.decider.refuse(request) {
                        break;
                    }
                }
                continue;
            }
            if !self.run_batch(first) {
                break;
            }
        }
        self.decider.ledger
    }

    /// Decides one batch, starting with `first` (or with expirations only), and stages it.
    /// Returns false once the engine should stop.
    fn run_batch(&mut self, first: Option<Request>) -> bool {
        let Some(mut batch) = self.decider.begin() else {
            // The engine failed: the request is refused like every one after it.
            return !first.is_some_and(|request| self.decider.refuse(request));
        };
        let mut keep_running = true;
        let deadline = Instant::now() + self.batch_wait;
        let mut next = first;
        while let Some(request) = next.take() {
            match self.decider.take(&mut batch, request) {
                Taken::More => {}
                Taken::Full => break,
                Taken::Shutdown => {
                    keep_running = false;
                    break;
                }
            }
            next = match self.requests.try_recv() {
                Ok(request) => Some(request),
                Err(TryRecvError::Disconnected) => None,
                Err(TryRecvError::Empty) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        None
                    } else {
                        self.requests.recv_timeout(left).ok()
                    }
                }
            };
        }
        if let Some(staged) = self.decider.seal(batch) {
            // Blocks while the writer is busy and a batch is already staged: backpressure.
            if self.staged.send(staged).is_err() {
                self.decider
                    .shared
                    .fail("the log writer has stopped".to_string());
            }
        }
        keep_running
    }
}

fn deliver<T: Send + 'static>(
    reply: oneshot::Sender<Result<T, EngineError>>,
    answer: T,
) -> Delivery {
    Box::new(move |outcome: Result<(), EngineError>| {
        // The client may have gone away; its answer is then nobody's business.
        let _ = reply.send(outcome.map(|()| answer));
    })
}

/// The writer's work, apart from how batches arrive: the writer thread and [`crate::Stepper`]
/// run the same code.
pub(crate) struct Writer {
    pub(crate) log: Box<dyn EventLog>,
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct WriterThread {
    pub(crate) writer: Writer,
    pub(crate) staged: Receiver<Staged>,
}

impl WriterThread {
    pub(crate) fn run(mut self) {
        while let Ok(staged) = self.staged.recv() {
            self.writer.commit(staged);
        }
    }
}

impl Writer {
    /// Makes `staged` durable (or fails it), then delivers its answers.
    pub(crate) fn commit(&mut self, staged: Staged) {
        let Staged {
            batch,
            deliveries,
            revoked,
            named,
        } = staged;
        let outcome = match &batch {
            _ if self.shared.failed.load(Ordering::SeqCst) => Err(self.shared.unavailable()),
            None => Ok(()),
            Some(batch) => self.append(batch),
        };
        if outcome.is_ok() && !revoked.is_empty() {
            self.shared.revocations.extend(revoked);
        }
        if let (Ok(()), Some(batch)) = (&outcome, &batch) {
            self.shared.names.extend(named, batch.header.end_position());
        }
        for delivery in deliveries {
            delivery(outcome.clone());
        }
    }

    fn append(&mut self, batch: &Batch) -> Result<(), EngineError> {
        let started = Instant::now();
        match self.log.append(batch) {
            Ok(appended) => {
                let metrics = &self.shared.metrics;
                metrics
                    .append_seconds
                    .observe(started.elapsed().as_secs_f64());
                metrics.fsync_seconds.observe(appended.sync.as_secs_f64());
                self.shared
                    .log_bytes
                    .store(self.log.size_bytes(), Ordering::Relaxed);
                metrics.batches.inc();
                metrics.events.inc_by(u64::from(batch.header.event_count));
                self.shared
                    .durable_position
                    .store(batch.header.end_position(), Ordering::SeqCst);
                Ok(())
            }
            Err(error) => {
                let reason = format!("the log failed to make a batch durable, so the engine stopped accepting work: {error}");
                tracing::error!("{reason}; restart tally to recover from the log");
                self.shared.fail(reason);
                Err(self.shared.unavailable())
            }
        }
    }
}
