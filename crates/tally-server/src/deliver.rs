//! The delivery worker: turns claims in `pending_delivery` into deliveries, with its retry
//! queue kept in the log.
//!
//! # Finding claims
//!
//! The ledger orders claims by the log position of their pending transfer, which only grows,
//! so one cursor serves both the start and what follows: the worker pages through
//! [`EngineHandle::claims`] (claims still `pending_delivery`, after the cursor) and moves the
//! cursor to the last claim scanned. At start the cursor is at the beginning: every pending
//! claim of the log is found, whatever crashed before. Afterwards, the pages after the cursor
//! are exactly the claims recorded since; the worker asks again whenever the durable log moves
//! (the engine's `AccountNames` watch, the one the event feed follows), at most every
//! [`RESCAN_INTERVAL_MIN`] and at least every [`RESCAN_INTERVAL`]. This is simpler than
//! following the event feed (no decoding, no second cursor to keep consistent with the engine's
//! state) and as cheap: a page after the cursor is a range of an ordered index on the state
//! thread.
//!
//! # The retry queue is the log
//!
//! Before attempt `n` of a claim calls its target, `RecordClaimAttempt { n }` is durable; after
//! an attempt that did not settle the claim, `EndClaimAttempt { n, read_timeouts }` records the
//! order's read timeouts so far. Memory holds only the timers. After a restart the claim's
//! attempts come back from the log, and an attempt started but never ended (a crash while it
//! was in flight) counts as a read timeout: each attempt is one HTTP request
//! ([`ATTEMPTS_PER_CALL`]), and that request may have delivered. So a restart never lets an
//! order be sent more often than its `max_read_timeouts` allows; the price is that a crash
//! during an attempt may send a claim to reconciliation one read timeout early.
//!
//! # Bounds
//!
//! At most [`CLAIMS_TRACKED_MAX`] claims are in memory (waiting for a retry or in flight); the
//! scan stops there, and the rest wait in the log until a claim is settled. At most
//! [`DELIVERIES_IN_FLIGHT_MAX`] deliveries are in flight at once, besides the dispatcher's own
//! bulkheads per endpoint and per campaign. Nothing here runs on the request path: the worker
//! is its own tasks, and talks to the engine through the same bounded queue as requests (an
//! `overloaded` answer makes it wait, never spin).
//!
//! # One engine request for many claims
//!
//! Every claim's task hands its commands (`RecordClaimAttempt`, `EndClaimAttempt`,
//! `SettleClaim`) to one collector, which sends whatever has gathered, up to
//! [`WORKER_BATCH_COMMANDS_MAX`], as one plain batch (each command stands alone and gets its own
//! answer), with at most [`WORKER_REQUESTS_IN_FLIGHT`] such requests in flight. While one is
//! being made durable the next fills by itself, so under load the worker costs the state thread
//! a few requests per fsync instead of two or three per claim.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use tally_campaign::CampaignSpec;
use tally_core::{CampaignCode, ClaimState, Command, Id};
use tally_dispatch::{
    Attempt, Backoff, DispatchConfig, DispatchMetrics, Dispatcher, Figures, Order, WebhookConfig,
};
use tally_engine::{Answer, ClaimView, Detail, EngineError, EngineHandle};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

/// Claims held in memory at once (in flight or waiting for their retry); the others wait in the
/// log. About 1 KiB each with the task's timer: 64 MiB at the bound.
pub const CLAIMS_TRACKED_MAX: usize = 65_536;

/// Deliveries in flight at once, over every campaign.
pub const DELIVERIES_IN_FLIGHT_MAX: usize = 512;

/// Claims asked of the engine per page of the scan.
pub const SCAN_PAGE_CLAIMS: usize = 1024;

/// The longest the scan waits for the log to move before it looks again anyway.
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(1);

/// The shortest time between two scans that found nothing new. The log moves with every
/// durable batch, up to thousands of times a second under single-transfer load with no claim in
/// sight; this bounds the worker's reads to a few hundred a second then, at the price of a few
/// milliseconds before a new claim's first attempt.
pub const RESCAN_INTERVAL_MIN: Duration = Duration::from_millis(5);

/// How long to wait before asking the engine again after it answered `overloaded` or
/// `unavailable`, or before building a campaign's dispatcher again after it failed.
pub const ENGINE_RETRY_DELAY: Duration = Duration::from_millis(200);

/// HTTP attempts per `deliver` call: one, so that the log records every request (see
/// [`dispatch_config`]).
pub const ATTEMPTS_PER_CALL: u32 = 1;

/// How long the statistics webhook may take per call (a non-core call: short).
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(1);

/// Commands of the worker sent to the engine in one request at most. Each delivery in flight
/// has at most one command waiting, so this many cover them all.
pub const WORKER_BATCH_COMMANDS_MAX: usize = DELIVERIES_IN_FLIGHT_MAX;

/// The worker's engine requests in flight at once: one being made durable while the next is
/// decided, as the engine's own pipeline does.
pub const WORKER_REQUESTS_IN_FLIGHT: usize = 2;

const _: () = assert!(SCAN_PAGE_CLAIMS <= tally_engine::limits::CLAIMS_PAGE_MAX);
const _: () = assert!(WORKER_BATCH_COMMANDS_MAX <= tally_engine::limits::COMMIT_BATCH_COMMANDS_MAX);
const _: () = assert!(DELIVERIES_IN_FLIGHT_MAX <= CLAIMS_TRACKED_MAX);

/// How the worker retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeliveryConfig {
    /// The schedule of durable retries (full jitter).
    pub backoff: Backoff,
}

impl Default for DeliveryConfig {
    fn default() -> DeliveryConfig {
        DeliveryConfig {
            backoff: Backoff {
                base: Duration::from_millis(500),
                cap: Duration::from_secs(60),
            },
        }
    }
}

/// What every claim's task shares.
struct Shared {
    engine: EngineHandle,
    /// The collector's queue (see the module documentation); bounded, so a task waits when it
    /// is full.
    commands: mpsc::Sender<Queued>,
    config: DeliveryConfig,
    metrics: DispatchMetrics,
    in_flight: Arc<Semaphore>,
    dispatchers: Dispatchers,
}

/// The worker's dispatchers, one per campaign, built from its stored spec on first use. Shared
/// with `/metrics`, which reads their 10-minute windows when it is scraped.
#[derive(Clone, Default)]
pub struct Dispatchers(Arc<Mutex<HashMap<Id, Arc<Target>>>>);

impl std::fmt::Debug for Dispatchers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatchers").finish_non_exhaustive()
    }
}

impl Collector for Dispatchers {
    /// Every campaign's and endpoint's figures over the current 10-minute window, as gauges:
    /// what the counters say since the start, a dashboard can read here for the last minutes
    /// without a time-series database.
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let mut targets: Vec<(Id, Arc<Target>)> = lock(&self.0)
            .iter()
            .map(|(campaign, target)| (campaign.clone(), Arc::clone(target)))
            .collect();
        targets.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        // (campaign, endpoint or "", figures): a campaign's own row has no endpoint.
        let mut rows: Vec<(String, String, Figures)> = Vec::new();
        for (campaign, target) in &targets {
            let snapshot = target.dispatcher.snapshot();
            for figures in snapshot.campaigns {
                rows.push((campaign.as_str().to_owned(), String::new(), figures));
            }
            for figures in snapshot.endpoints {
                rows.push((campaign.as_str().to_owned(), figures.name.clone(), figures));
            }
        }
        type Value = fn(&Figures) -> Option<f64>;
        let families: [(&str, &str, Value); 7] = [
            (
                "tally_dispatch_window_requests",
                "Deliver calls (rows without endpoint) or attempts (rows with one) that ended in the last 10 minutes, per campaign of the delivery worker",
                |figures| Some(figures.requests as f64),
            ),
            (
                "tally_dispatch_window_success_ratio",
                "Share of those that succeeded in the last 10 minutes (absent without requests)",
                |figures| figures.success_percent.map(|percent| percent as f64 / 100.0),
            ),
            (
                "tally_dispatch_window_latency_mean_seconds",
                "Mean latency in the last 10 minutes (absent without requests)",
                |figures| figures.latency_mean.map(|mean| mean.as_secs_f64()),
            ),
            (
                "tally_dispatch_window_latency_max_seconds",
                "Largest latency in the last 10 minutes",
                |figures| Some(figures.latency_max.as_secs_f64()),
            ),
            (
                "tally_dispatch_window_retries",
                "In-process retries in the last 10 minutes (campaign rows)",
                |figures| Some(figures.retries as f64),
            ),
            (
                "tally_dispatch_window_retries_refused",
                "Retries the retry budget refused in the last 10 minutes (campaign rows)",
                |figures| Some(figures.retries_refused as f64),
            ),
            (
                "tally_dispatch_window_ejections",
                "Outlier ejections in the last 10 minutes (endpoint rows)",
                |figures| Some(figures.ejections as f64),
            ),
        ];
        for (name, help, value) in families {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (campaign, endpoint, figures) in &rows {
                let Some(value) = value(figures) else {
                    continue;
                };
                let labels = [
                    ("campaign", campaign.as_str()),
                    ("endpoint", endpoint.as_str()),
                ];
                ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// A campaign's dispatcher and what the worker needs of its settings.
struct Target {
    dispatcher: Dispatcher,
    gift_ledger: String,
    max_read_timeouts: u32,
    /// Read timeouts one `deliver` call can suffer at most: one per HTTP attempt.
    attempts_per_call: u32,
}

/// Starts the worker on the current runtime. Dropping (or aborting) the returned task stops it
/// and every claim's task; nothing is lost, the log holds the queue.
pub fn start(
    engine: EngineHandle,
    metrics: DispatchMetrics,
    dispatchers: Dispatchers,
    config: DeliveryConfig,
) -> tokio::task::JoinHandle<()> {
    let (commands, queue) = mpsc::channel(WORKER_BATCH_COMMANDS_MAX);
    tokio::spawn(collect(engine.clone(), queue));
    let shared = Arc::new(Shared {
        engine,
        commands,
        config,
        metrics,
        in_flight: Arc::new(Semaphore::new(DELIVERIES_IN_FLIGHT_MAX)),
        dispatchers,
    });
    tokio::spawn(scan(shared))
}

/// Finds pending claims (see the module documentation) and starts a task for each.
async fn scan(shared: Arc<Shared>) {
    let tracked = Arc::new(Semaphore::new(CLAIMS_TRACKED_MAX));
    let mut tasks = JoinSet::new();
    let mut log_moved = shared.engine.account_names().subscribe();
    let mut cursor: Option<u64> = None;
    loop {
        // Reap finished tasks so the set holds only live ones.
        while tasks.try_join_next().is_some() {}
        let page = match shared
            .engine
            .claims(Some(ClaimState::PendingDelivery), cursor, SCAN_PAGE_CLAIMS)
            .await
        {
            Ok(page) => page,
            Err(error) => {
                tracing::debug!(%error, "claim scan waits for the engine");
                tokio::time::sleep(ENGINE_RETRY_DELAY).await;
                continue;
            }
        };
        for claim in page.claims {
            let Ok(permit) = Arc::clone(&tracked).acquire_owned().await else {
                return;
            };
            // The cursor moves claim by claim: if the bound stops the scan here, the claims
            // after this one are found again once permits are back.
            cursor = Some(claim.position);
            tasks.spawn(drive(Arc::clone(&shared), claim, permit));
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => {
                // Nothing after the cursor yet: wait for the log to move (a move during the
                // pause is not missed: the watch remembers it).
                tokio::time::sleep(RESCAN_INTERVAL_MIN).await;
                let _ = tokio::time::timeout(RESCAN_INTERVAL, log_moved.changed()).await;
            }
        }
    }
}

/// What became of one round of a claim.
enum Step {
    /// The claim is settled (or was, by someone else): done.
    Done,
    /// Try again after the backoff, with the order's read timeouts so far.
    Retry { read_timeouts: u32 },
    /// The engine could not take the command: ask again shortly, nothing was sent.
    EngineBusy,
}

/// Delivers one claim until it is settled; holds `_tracked` for as long.
async fn drive(shared: Arc<Shared>, claim: ClaimView, _tracked: OwnedSemaphorePermit) {
    let target = loop {
        match shared.target(&claim.campaign).await {
            Some(target) => break target,
            None => tokio::time::sleep(shared.config.backoff.cap).await,
        }
    };
    let order = match Order::new(
        claim.order_id.as_str(),
        claim.user.as_str(),
        claim.campaign.as_str(),
        &target.gift_ledger,
        1,
    ) {
        Ok(order) => order,
        Err(error) => {
            // Ids of the ledger always make a valid order; this would be a bug, not a state.
            tracing::error!(%error, order_id = %claim.order_id, "claim cannot be delivered");
            return;
        }
    };
    // Every attempt started but not recorded as ended may have been a read timeout per HTTP
    // attempt it could make.
    let open_attempts = claim.attempts - claim.attempts_ended;
    let mut read_timeouts = claim
        .read_timeouts
        .saturating_add(open_attempts.saturating_mul(target.attempts_per_call));
    let mut attempt = claim.attempts;
    let mut retries: u32 = 0;
    loop {
        let step = if read_timeouts >= target.max_read_timeouts {
            shared.settle(&claim.order_id, ClaimState::Unknown).await
        } else {
            shared
                .attempt(&target, &order, &claim.order_id, attempt + 1, read_timeouts)
                .await
        };
        match step {
            Step::Done => return,
            Step::EngineBusy => tokio::time::sleep(ENGINE_RETRY_DELAY).await,
            Step::Retry { read_timeouts: now } => {
                attempt += 1;
                read_timeouts = now;
                let delay = shared.config.backoff.retry_delay(retries, &mut rand::rng());
                retries = retries.saturating_add(1);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

impl Shared {
    /// The campaign's dispatcher, built from its stored spec on first use; `None` (logged) if
    /// the campaign cannot be read or its settings are refused by the dispatcher.
    async fn target(&self, campaign: &Id) -> Option<Arc<Target>> {
        if let Some(target) = lock(&self.dispatchers.0).get(campaign) {
            return Some(Arc::clone(target));
        }
        let view = loop {
            match self.engine.campaign(campaign.clone()).await {
                Ok(view) => break view?,
                Err(_) => tokio::time::sleep(ENGINE_RETRY_DELAY).await,
            }
        };
        let spec = match CampaignSpec::from_bytes(&view.definition.spec) {
            Ok(spec) => spec,
            Err(error) => {
                tracing::error!(%campaign, %error, "stored campaign spec does not decode; its claims wait");
                return None;
            }
        };
        let mut dispatchers = lock(&self.dispatchers.0);
        if let Some(target) = dispatchers.get(campaign) {
            return Some(Arc::clone(target));
        }
        let (config, attempts_per_call) = dispatch_config(&spec);
        match Dispatcher::with_metrics(config, &self.metrics) {
            Ok(dispatcher) => {
                let target = Arc::new(Target {
                    dispatcher,
                    gift_ledger: spec.gift_ledger.clone(),
                    max_read_timeouts: spec.delivery.max_read_timeouts,
                    attempts_per_call,
                });
                dispatchers.insert(campaign.clone(), Arc::clone(&target));
                Some(target)
            }
            Err(error) => {
                tracing::error!(%campaign, %error, "campaign's delivery settings are refused by the dispatcher; its claims wait");
                None
            }
        }
    }

    /// Records attempt `number` durably, then makes it.
    async fn attempt(
        &self,
        target: &Target,
        order: &Order,
        order_id: &Id,
        number: u32,
        read_timeouts: u32,
    ) -> Step {
        let Ok(slot) = self.in_flight.acquire().await else {
            return Step::Done;
        };
        let record = Command::RecordClaimAttempt {
            order_id: order_id.clone(),
            attempt: number,
        };
        match self.execute(record).await {
            Executed::Ok => {}
            Executed::Settled => return Step::Done,
            Executed::Busy => return Step::EngineBusy,
        }
        let outcome = target.dispatcher.deliver(order, read_timeouts).await;
        // The slot bounds calls to targets, not the bookkeeping after them.
        drop(slot);
        let (state, read_timeouts) = match outcome {
            Attempt::Delivered { .. } | Attempt::AlreadyDelivered { .. } => {
                return self.settle(order_id, ClaimState::Delivered).await
            }
            Attempt::Rejected { status, .. } => {
                tracing::info!(%order_id, status, "delivery rejected by the target; voided");
                return self.settle(order_id, ClaimState::Voided).await;
            }
            Attempt::UnknownNeedsReconciliation { read_timeouts } => {
                (Some(ClaimState::Unknown), read_timeouts)
            }
            Attempt::RetryLater { read_timeouts, .. } => (None, read_timeouts),
        };
        let ended = Command::EndClaimAttempt {
            order_id: order_id.clone(),
            attempt: number,
            read_timeouts,
        };
        // The end must be durable before anything else: if it is not recorded, a restart
        // counts the attempt as read timeouts, which is safe.
        loop {
            match self.execute(ended.clone()).await {
                Executed::Ok => break,
                Executed::Settled => return Step::Done,
                Executed::Busy => tokio::time::sleep(ENGINE_RETRY_DELAY).await,
            }
        }
        match state {
            Some(state) => self.settle(order_id, state).await,
            None => Step::Retry { read_timeouts },
        }
    }

    /// Settles the claim as `state`, waiting out a busy engine.
    async fn settle(&self, order_id: &Id, state: ClaimState) -> Step {
        let command = Command::SettleClaim {
            order_id: order_id.clone(),
            outcome: state,
        };
        loop {
            match self.execute(command.clone()).await {
                Executed::Ok | Executed::Settled => return Step::Done,
                Executed::Busy => tokio::time::sleep(ENGINE_RETRY_DELAY).await,
            }
        }
    }

    /// Runs `command` through the collector and waits until it is durable (or refused).
    async fn execute(&self, command: Command) -> Executed {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(Queued { command, reply }).await.is_err() {
            // The collector is gone: the worker is stopping.
            return Executed::Settled;
        }
        answer.await.unwrap_or(Executed::Settled)
    }
}

/// A command waiting for the collector, and where its outcome goes.
struct Queued {
    command: Command,
    reply: oneshot::Sender<Executed>,
}

/// The collector: sends the worker's queued commands to the engine in plain batches (see the
/// module documentation). Ends when every sender is gone.
async fn collect(engine: EngineHandle, mut queue: mpsc::Receiver<Queued>) {
    let slots = Arc::new(Semaphore::new(WORKER_REQUESTS_IN_FLIGHT));
    let mut requests = JoinSet::new();
    loop {
        // A slot first, then the commands: while both requests are in flight, commands gather
        // in the queue and leave together.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut batch = Vec::with_capacity(WORKER_BATCH_COMMANDS_MAX);
        if queue.recv_many(&mut batch, WORKER_BATCH_COMMANDS_MAX).await == 0 {
            return;
        }
        while requests.try_join_next().is_some() {}
        let engine = engine.clone();
        requests.spawn(async move {
            execute_batch(&engine, batch).await;
            drop(slot);
        });
    }
}

/// Sends `batch` as one engine request and tells each command's task how it went.
async fn execute_batch(engine: &EngineHandle, batch: Vec<Queued>) {
    let (commands, replies): (Vec<Command>, Vec<oneshot::Sender<Executed>>) = batch
        .into_iter()
        .map(|queued| (queued.command, queued.reply))
        .unzip();
    let outcomes: Vec<Executed> = match engine.execute(commands, Detail::Full).await {
        Ok(answers) => {
            // None of the worker's commands is a linked chain: one answer per command.
            assert_eq!(
                answers.len(),
                replies.len(),
                "one answer per worker command"
            );
            answers.into_iter().map(executed).collect()
        }
        Err(EngineError::Overloaded | EngineError::Unavailable(_)) => {
            replies.iter().map(|_| Executed::Busy).collect()
        }
        Err(error) => {
            tracing::warn!(%error, "delivery worker's commands failed; leaving their claims");
            replies.iter().map(|_| Executed::Settled).collect()
        }
    };
    for (reply, outcome) in replies.into_iter().zip(outcomes) {
        // A task that stopped waiting (the worker is stopping) needs no answer.
        let _ = reply.send(outcome);
    }
}

/// What the engine's answer to one of the worker's commands means for its claim.
fn executed(answer: Answer) -> Executed {
    match answer {
        Answer::Claim { .. } => Executed::Ok,
        Answer::Refused(CampaignCode::ClaimAlreadySettled) => Executed::Settled,
        other => {
            // Out of step with the log (a person settled the claim meanwhile, say): stop; if it
            // is still pending, the next start picks it up afresh.
            tracing::warn!(answer = ?other, "delivery worker's command refused; leaving the claim");
            Executed::Settled
        }
    }
}

/// How a command of the worker went.
enum Executed {
    Ok,
    /// The claim is settled, or the worker must leave it.
    Settled,
    /// The engine could not take it now.
    Busy,
}

/// The dispatcher's settings from a campaign's spec, and the HTTP attempts one call may make.
///
/// One HTTP attempt per call: every request a target may have received is then an attempt in
/// the log, so an attempt a crash left without its end counts as exactly one possible read
/// timeout. With in-process retries a call could hide several, and a crash in the middle of
/// any call would have to count as the whole cap, sending the claim to reconciliation though
/// it may only have met refused connections. Failover and ejection work across calls (the
/// dispatcher's round robin and outlier detector persist); the retrying is the durable
/// queue's, until the claim is delivered, rejected or reaches the cap, so `max_retries` (and
/// the in-process retry budget) do not apply to the worker.
fn dispatch_config(spec: &CampaignSpec) -> (DispatchConfig, u32) {
    let delivery = &spec.delivery;
    let mut config = DispatchConfig::new(delivery.primary.clone());
    config.backup = delivery.backup.clone().unwrap_or_default();
    config.connect_timeout = Duration::from_millis(delivery.connect_timeout_ms);
    config.read_timeout = Duration::from_millis(delivery.read_timeout_ms);
    config.max_read_timeouts = delivery.max_read_timeouts;
    config.attempts_max = ATTEMPTS_PER_CALL;
    config.retry_budget.percent = delivery.retry_budget_percent;
    config.webhook = spec.stats_webhook.clone().map(|url| WebhookConfig {
        url,
        timeout: WEBHOOK_TIMEOUT,
    });
    (config, ATTEMPTS_PER_CALL)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
