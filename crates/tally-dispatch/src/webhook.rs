//! The statistics webhook: a non-core call that must never fail or slow a delivery.
//!
//! Deliveries hand events to a bounded queue with `try_send`; when the queue is full the event
//! is dropped and counted. A worker task posts each event with a short timeout and at most
//! [`WEBHOOK_IN_FLIGHT_MAX`] calls at once through its own client (its own pool, so a hanging
//! webhook holds none of the target's connections). A failed or timed-out call is counted and
//! skipped, never retried: the statistics are a convenience, the ledger is the record.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Uri};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{mpsc, Semaphore};

use crate::limits::{WEBHOOK_IN_FLIGHT_MAX, WEBHOOK_QUEUE_DEPTH};
use crate::metrics::Metrics;
use crate::stack::endpoint::client;

/// One delivery's statistics.
pub(crate) struct Event {
    pub(crate) order_id: HeaderValue,
    pub(crate) campaign: Arc<str>,
    pub(crate) outcome: &'static str,
    pub(crate) latency: Duration,
}

/// The delivery side of the queue.
#[derive(Clone)]
pub(crate) struct WebhookSender {
    queue: mpsc::Sender<Event>,
    dropped: Counter,
}

impl WebhookSender {
    /// Queues `event`, or drops and counts it when the queue is full.
    pub(crate) fn offer(&self, event: Event) {
        if self.queue.try_send(event).is_err() {
            self.dropped.inc();
        }
    }
}

/// Starts the worker posting to `uri`; it ends when every sender is dropped.
pub(crate) fn start(uri: Uri, timeout: Duration, metrics: &Metrics) -> WebhookSender {
    let (queue, mut events) = mpsc::channel::<Event>(WEBHOOK_QUEUE_DEPTH);
    let counter = |result: &str| {
        metrics
            .webhook
            .get_or_create(&vec![("result", result.to_owned())])
            .clone()
    };
    let (sent, failed) = (counter("sent"), counter("failed"));
    let dropped = counter("dropped");
    // The connect timeout is the call's timeout: a webhook slower than that is skipped anyway.
    let client = client(timeout);
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(WEBHOOK_IN_FLIGHT_MAX));
        while let Some(event) = events.recv().await {
            let slot = slots.clone().acquire_owned().await.expect("never closed");
            let request = Request::builder()
                .method(Method::POST)
                .uri(uri.clone())
                .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                .body(Full::new(body(&event)))
                .expect("a valid URI makes a valid request");
            let call = client.request(request);
            let (sent, failed) = (sent.clone(), failed.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(timeout, call).await {
                    Ok(Ok(response)) if response.status().is_success() => sent.inc(),
                    _ => failed.inc(),
                };
                drop(slot);
            });
        }
    });
    WebhookSender { queue, dropped }
}

fn body(event: &Event) -> Bytes {
    let body = serde_json::json!({
        "order_id": event.order_id.to_str().unwrap_or_default(),
        "campaign": &*event.campaign,
        "outcome": event.outcome,
        "latency_us": event.latency.as_micros() as u64,
    });
    Bytes::from(body.to_string())
}
