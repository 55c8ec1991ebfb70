//! The projector's `/metrics`: where each owned partition stands and how far behind the feed.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The `partition` label.
pub type PartitionLabel = Vec<(&'static str, String)>;

/// Every figure the projector exports; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    /// The next position each owned partition applies (a partition given up is removed).
    pub position: Family<PartitionLabel, Gauge>,
    /// Events the feed holds beyond the slowest owned partition.
    pub lag_events: Gauge,
    /// Age of the oldest event the feed held and this member had not applied, at its last
    /// read (0 when caught up).
    pub lag_seconds: Gauge<f64, AtomicU64>,
    /// Time from an event's commit in the log to its rows being visible in Redis.
    pub delay: Histogram,
    pub events: Counter,
    pub commits: Counter,
    /// Commits refused because a lease had moved on (the member was fenced).
    pub fenced: Counter,
    pub partitions_owned: Gauge,
    pub acquisitions: Counter,
    /// Events to apply and applied in a rebuild (`--rebuild`), else 0.
    pub rebuild_total: Gauge,
    pub rebuild_done: Gauge,
    /// Every delay observed, in seconds, up to a capacity, when a benchmark asked for them
    /// ([`Metrics::keep_delays`]): a histogram's buckets are too coarse for its percentiles.
    delays: Arc<Mutex<Option<Vec<f64>>>>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let metrics = Metrics {
            registry: Arc::default(),
            position: Family::default(),
            lag_events: Gauge::default(),
            lag_seconds: Gauge::default(),
            delay: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            events: Counter::default(),
            commits: Counter::default(),
            fenced: Counter::default(),
            partitions_owned: Gauge::default(),
            acquisitions: Counter::default(),
            rebuild_total: Gauge::default(),
            rebuild_done: Gauge::default(),
            delays: Arc::default(),
        };
        {
            let mut registry = metrics.registry.lock().expect("fresh lock");
            let registry = &mut *registry;
            registry.register(
                "tally_projection_position",
                "Next log position each owned partition applies",
                metrics.position.clone(),
            );
            registry.register(
                "tally_projection_lag_events",
                "Events in the feed beyond the slowest owned partition",
                metrics.lag_events.clone(),
            );
            registry.register("tally_projection_lag_seconds", "Age of the oldest event not yet applied at the last read of the feed (0 when caught up)", metrics.lag_seconds.clone());
            registry.register(
                "tally_projection_delay_seconds",
                "Time from an event's commit in the log to its rows being visible in the store",
                metrics.delay.clone(),
            );
            registry.register(
                "tally_projection_events",
                "Events applied to owned partitions",
                metrics.events.clone(),
            );
            registry.register(
                "tally_projection_commits",
                "Atomic writes of rows and checkpoints",
                metrics.commits.clone(),
            );
            registry.register(
                "tally_projection_fenced",
                "Commits refused because a lease had moved to another member",
                metrics.fenced.clone(),
            );
            registry.register(
                "tally_projection_partitions_owned",
                "Partitions whose lease this member holds",
                metrics.partitions_owned.clone(),
            );
            registry.register(
                "tally_projection_lease_acquisitions",
                "Leases this member took",
                metrics.acquisitions.clone(),
            );
            registry.register(
                "tally_projection_rebuild_events_total",
                "Events a rebuild projects (0 when not rebuilding)",
                metrics.rebuild_total.clone(),
            );
            registry.register(
                "tally_projection_rebuild_events_done",
                "Events a rebuild projected so far",
                metrics.rebuild_done.clone(),
            );
        }
        metrics
    }
}

impl Metrics {
    /// Keeps the next `capacity` delays for [`Metrics::delays`].
    pub fn keep_delays(&self, capacity: usize) {
        *self
            .delays
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Vec::with_capacity(capacity));
    }

    /// The delays kept since [`Metrics::keep_delays`].
    pub fn delays(&self) -> Vec<f64> {
        self.delays
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
            .unwrap_or_default()
    }

    /// Records the delays of the events of one commit.
    pub fn observe_delays(&self, delays: impl Iterator<Item = f64>) {
        let mut kept = self
            .delays
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for delay in delays {
            self.delay.observe(delay);
            if let Some(kept) = kept.as_mut().filter(|kept| kept.len() < kept.capacity()) {
                kept.push(delay);
            }
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        encode(
            &mut text,
            &self
                .registry
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
        .expect("writing to a String cannot fail");
        text
    }

    /// Serves `GET /metrics` on `listen` until the process ends; returns the bound address.
    pub async fn serve(&self, listen: SocketAddr) -> anyhow::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let address = listener.local_addr()?;
        let app = Router::new()
            .route("/metrics", get(scrape))
            .with_state(self.clone());
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "the metrics endpoint stopped");
            }
        });
        Ok(address)
    }
}

async fn scrape(State(metrics): State<Metrics>) -> impl IntoResponse {
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
}
