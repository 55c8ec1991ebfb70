//! The engine's metrics, registered into the server's Prometheus registry.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Counters and histograms of the write path. Cloning shares the same series.
#[derive(Clone, Debug)]
pub struct EngineMetrics {
    /// Batches made durable.
    pub batches: Counter,
    /// Events made durable.
    pub events: Counter,
    /// Requests refused because the queue was full.
    pub overloaded: Counter,
    /// Seconds per append (one write and one fdatasync).
    pub append_seconds: Histogram,
    /// Commands per staged batch.
    pub batch_commands: Histogram,
}

impl Default for EngineMetrics {
    fn default() -> EngineMetrics {
        EngineMetrics {
            batches: Counter::default(),
            events: Counter::default(),
            overloaded: Counter::default(),
            append_seconds: Histogram::new(exponential_buckets(0.000_25, 2.0, 12)),
            batch_commands: Histogram::new(exponential_buckets(1.0, 4.0, 9)),
        }
    }
}

impl EngineMetrics {
    /// Registers every series under `tally_engine_`.
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("tally_engine");
        registry.register("batches", "Batches made durable", self.batches.clone());
        registry.register("events", "Events made durable", self.events.clone());
        registry.register(
            "overloaded",
            "Requests refused because the command queue was full",
            self.overloaded.clone(),
        );
        registry.register(
            "append_seconds",
            "Seconds per log append (one write and one fdatasync)",
            self.append_seconds.clone(),
        );
        registry.register(
            "batch_commands",
            "Commands per group commit",
            self.batch_commands.clone(),
        );
    }
}
