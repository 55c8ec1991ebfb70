//! The engine's metrics, registered into the server's Prometheus registry.
//!
//! These are the series that must be updated where the work happens (on the writer and state
//! threads), as counters and histograms. Values that can be read at any moment (positions,
//! queue depth, log size, snapshot age) are not kept here: the server reads them through the
//! [`EngineHandle`](crate::EngineHandle) accessors at scrape time, the same ones a status page
//! uses, so that the two never disagree.

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
    /// Seconds per fdatasync of an appended record, the part of an append the disk decides.
    pub fsync_seconds: Histogram,
    /// Commands per staged batch.
    pub batch_commands: Histogram,
}

/// Buckets of the append and fsync histograms: 50 µs (a fast NVMe flush) to 0.8 s (a disk in
/// trouble), doubling, the same for both so that they compare bucket by bucket.
fn disk_seconds_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000_05, 2.0, 15)
}

impl Default for EngineMetrics {
    fn default() -> EngineMetrics {
        EngineMetrics {
            batches: Counter::default(),
            events: Counter::default(),
            overloaded: Counter::default(),
            append_seconds: Histogram::new(disk_seconds_buckets()),
            fsync_seconds: Histogram::new(disk_seconds_buckets()),
            batch_commands: Histogram::new(exponential_buckets(1.0, 4.0, 9)),
        }
    }
}

impl EngineMetrics {
    /// Registers the engine's series under `tally_engine_` and the log's under `tally_log_`.
    pub fn register(&self, registry: &mut Registry) {
        let engine = registry.sub_registry_with_prefix("tally_engine");
        engine.register(
            "batches",
            "Group commits made durable",
            self.batches.clone(),
        );
        engine.register("events", "Events made durable", self.events.clone());
        engine.register(
            "overloaded_requests",
            "Requests refused with 503 overloaded because the command queue was full",
            self.overloaded.clone(),
        );
        engine.register(
            "append_seconds",
            "Seconds per log append: one write and one fdatasync",
            self.append_seconds.clone(),
        );
        engine.register(
            "batch_commands",
            "Commands per group commit",
            self.batch_commands.clone(),
        );
        let log = registry.sub_registry_with_prefix("tally_log");
        log.register(
            "fsync_seconds",
            "Seconds per fdatasync of an appended record (one per group commit)",
            self.fsync_seconds.clone(),
        );
    }
}
