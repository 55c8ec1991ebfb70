//! What the dispatcher reports: Prometheus metrics per campaign and per endpoint, and
//! 10-minute windows of the same figures for [`crate::Dispatcher::snapshot`].
//!
//! Metric handles are looked up once, when an endpoint or a campaign is first seen, and kept
//! with it: a label lookup per delivery would cost more than the rest of the bookkeeping.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::limits::{STATS_BUCKETS, STATS_WINDOW};
use crate::window::{Counts, Window};

/// A metric's labels.
pub(crate) type Labels = Vec<(&'static str, String)>;

type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// The dispatcher's metric families, registered once in a registry and shared by every
/// dispatcher built with [`crate::Dispatcher::with_metrics`].
#[derive(Clone)]
pub struct DispatchMetrics(pub(crate) Metrics);

impl DispatchMetrics {
    /// Registers the families in `registry` (under the `tally_dispatch` prefix).
    pub fn register(registry: &mut Registry) -> DispatchMetrics {
        DispatchMetrics(Metrics::register(registry))
    }
}

/// Every family the dispatcher registers.
#[derive(Clone)]
pub(crate) struct Metrics {
    attempts: Family<Labels, Counter>,
    attempt_latency: HistogramFamily,
    ejections: Family<Labels, Counter>,
    readmissions: Family<Labels, Counter>,
    deliveries: Family<Labels, Counter>,
    delivery_latency: HistogramFamily,
    retries: Family<Labels, Counter>,
    retries_refused: Family<Labels, Counter>,
    /// Webhook events sent, failed (error or timeout) and dropped (queue full).
    pub(crate) webhook: Family<Labels, Counter>,
}

fn latency_histogram() -> Histogram {
    // 100 µs to about 13 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

impl Metrics {
    /// Registers the families in `registry` (under the `tally_dispatch` prefix).
    pub(crate) fn register(registry: &mut Registry) -> Metrics {
        let metrics = Metrics {
            attempts: Family::default(),
            attempt_latency: Family::new_with_constructor(latency_histogram),
            ejections: Family::default(),
            readmissions: Family::default(),
            deliveries: Family::default(),
            delivery_latency: Family::new_with_constructor(latency_histogram),
            retries: Family::default(),
            retries_refused: Family::default(),
            webhook: Family::default(),
        };
        let registry = registry.sub_registry_with_prefix("tally_dispatch");
        registry.register(
            "attempts",
            "Delivery attempts per endpoint and result",
            metrics.attempts.clone(),
        );
        registry.register(
            "attempt_latency_seconds",
            "Duration of delivery attempts per endpoint",
            metrics.attempt_latency.clone(),
        );
        registry.register(
            "ejections",
            "Ejections of an endpoint by outlier detection",
            metrics.ejections.clone(),
        );
        registry.register(
            "readmissions",
            "Ejected endpoints re-admitted after a successful probe",
            metrics.readmissions.clone(),
        );
        registry.register(
            "deliveries",
            "Deliver calls per campaign and outcome",
            metrics.deliveries.clone(),
        );
        registry.register(
            "delivery_latency_seconds",
            "Duration of deliver calls, retries included, per campaign",
            metrics.delivery_latency.clone(),
        );
        registry.register(
            "retries",
            "In-process retries per campaign",
            metrics.retries.clone(),
        );
        registry.register(
            "retries_refused",
            "Retries the retry budget refused, per campaign and reason",
            metrics.retries_refused.clone(),
        );
        registry.register(
            "webhook_events",
            "Statistics webhook events per result (sent, failed, dropped)",
            metrics.webhook.clone(),
        );
        metrics
    }

    /// The handles of one endpoint.
    pub(crate) fn endpoint(&self, url: &str) -> EndpointMetrics {
        let labels = vec![("endpoint", url.to_owned())];
        let attempts = ATTEMPT_RESULTS.map(|result| {
            let mut labels = labels.clone();
            labels.push(("result", result.to_owned()));
            let counter = self.attempts.get_or_create(&labels);
            counter.clone()
        });
        let latency = self.attempt_latency.get_or_create(&labels).clone();
        let ejections = self.ejections.get_or_create(&labels).clone();
        let readmissions = self.readmissions.get_or_create(&labels).clone();
        EndpointMetrics {
            attempts,
            latency,
            ejections,
            readmissions,
            window: Stats::new(url),
        }
    }

    /// The handles of one campaign.
    pub(crate) fn campaign(&self, campaign: &str) -> CampaignMetrics {
        let labels = vec![("campaign", campaign.to_owned())];
        let with = |key: &'static str, value: &str| {
            let mut labels = labels.clone();
            labels.push((key, value.to_owned()));
            labels
        };
        // One `get_or_create` per statement: its guard lives to the end of the statement, and a
        // second lookup in the same family while it lives would deadlock on a new label.
        let deliveries = OUTCOMES.map(|outcome| {
            let counter = self.deliveries.get_or_create(&with("outcome", outcome));
            counter.clone()
        });
        let latency = self.delivery_latency.get_or_create(&labels).clone();
        let retries = self.retries.get_or_create(&labels).clone();
        let exhausted = with("reason", "exhausted");
        let refused_exhausted = self.retries_refused.get_or_create(&exhausted).clone();
        let low_success = with("reason", "low_success_rate");
        let refused_low_success = self.retries_refused.get_or_create(&low_success).clone();
        CampaignMetrics {
            deliveries,
            latency,
            retries,
            refused_exhausted,
            refused_low_success,
            window: Stats::new(campaign),
        }
    }
}

/// The `result` label of attempts, indexed by [`crate::stack::TryResult::index`].
pub(crate) const ATTEMPT_RESULTS: [&str; 8] = [
    "delivered",
    "already_delivered",
    "rejected",
    "server_error",
    "connect_failed",
    "read_timeout",
    "read_failed",
    "busy",
];

/// The `outcome` label of deliveries, indexed by [`crate::Attempt::index`].
pub(crate) const OUTCOMES: [&str; 5] = [
    "delivered",
    "already_delivered",
    "rejected",
    "retry_later",
    "unknown_needs_reconciliation",
];

/// One endpoint's metric handles and statistics window.
pub(crate) struct EndpointMetrics {
    pub(crate) attempts: [Counter; ATTEMPT_RESULTS.len()],
    pub(crate) latency: Histogram,
    pub(crate) ejections: Counter,
    pub(crate) readmissions: Counter,
    pub(crate) window: Stats,
}

/// One campaign's metric handles and statistics window.
pub(crate) struct CampaignMetrics {
    pub(crate) deliveries: [Counter; OUTCOMES.len()],
    pub(crate) latency: Histogram,
    pub(crate) retries: Counter,
    pub(crate) refused_exhausted: Counter,
    pub(crate) refused_low_success: Counter,
    pub(crate) window: Stats,
}

/// A named 10-minute window.
pub(crate) struct Stats {
    name: Arc<str>,
    window: Mutex<Window>,
}

impl Stats {
    fn new(name: &str) -> Stats {
        Stats {
            name: name.into(),
            window: Mutex::new(Window::new(STATS_WINDOW, STATS_BUCKETS, Instant::now())),
        }
    }

    pub(crate) fn add(&self, counts: Counts) {
        lock(&self.window).add(Instant::now(), counts);
    }

    /// Adds one request that took `latency`.
    pub(crate) fn request(&self, success: bool, latency: Duration) {
        let latency_us = latency.as_micros().min(u128::from(u64::MAX)) as u64;
        self.add(Counts {
            requests: 1,
            successes: u64::from(success),
            latency_us_sum: latency_us,
            latency_us_max: latency_us,
            ..Counts::default()
        });
    }

    pub(crate) fn figures(&self) -> Figures {
        let counts = lock(&self.window).sum(Instant::now());
        Figures {
            name: self.name.to_string(),
            requests: counts.requests,
            successes: counts.successes,
            success_percent: counts.success_percent(),
            retries: counts.retries,
            retries_refused: counts.retries_refused,
            ejections: counts.ejections,
            latency_mean: (counts.requests > 0)
                .then(|| Duration::from_micros(counts.latency_us_sum / counts.requests)),
            latency_max: Duration::from_micros(counts.latency_us_max),
        }
    }
}

/// The figures of one campaign or endpoint over the current 10-minute window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Figures {
    /// The campaign, or the endpoint's URL.
    pub name: String,
    /// Deliver calls (for a campaign) or attempts (for an endpoint) that ended.
    pub requests: u64,
    /// Of those, the delivered ones (already delivered and rejected count for an endpoint:
    /// it answered).
    pub successes: u64,
    /// `successes` per `requests`, in percent; `None` without requests.
    pub success_percent: Option<u64>,
    /// In-process retries taken (campaigns only).
    pub retries: u64,
    /// Retries the budget refused (campaigns only).
    pub retries_refused: u64,
    /// Ejections (endpoints only).
    pub ejections: u64,
    /// Mean latency; `None` without requests.
    pub latency_mean: Option<Duration>,
    /// Largest latency.
    pub latency_max: Duration,
}

/// Figures of every campaign and endpoint over the current 10-minute window.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// One per campaign seen (campaigns past the tracked limit share one entry).
    pub campaigns: Vec<Figures>,
    /// One per endpoint, primary then backup.
    pub endpoints: Vec<Figures>,
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
