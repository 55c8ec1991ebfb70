//! The outermost layer: turns an attempt's story into the call's [`Attempt`], counts it per
//! campaign, and hands a statistics event to the webhook.
//!
//! Outermost so that it sees every outcome, bulkhead refusals included, and the whole
//! latency of the call with its retries. The webhook hand-off is a `try_send` on a bounded
//! queue: it never waits and never fails the delivery.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tower::{Layer, Service};

use super::{Delivery, Tried};
use crate::webhook::{Event, WebhookSender};
use crate::Attempt;

/// Adds the observation of outcomes.
#[derive(Clone)]
pub(crate) struct ObserveLayer {
    pub(crate) read_timeouts_max: u32,
    pub(crate) webhook: Option<WebhookSender>,
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            layer: self.clone(),
        }
    }
}

/// The observing service.
#[derive(Clone)]
pub(crate) struct Observe<S> {
    inner: S,
    layer: ObserveLayer,
}

impl<S> Service<Delivery> for Observe<S>
where
    S: Service<Delivery, Response = Tried, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Attempt;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Attempt, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, delivery: Delivery) -> Self::Future {
        let started = Instant::now();
        let campaign = delivery.campaign.clone();
        let key = delivery.key.clone();
        let layer = self.layer.clone();
        let future = self.inner.call(delivery);
        Box::pin(async move {
            let Ok(tried) = future.await;
            let attempt = Attempt::from_tried(tried, layer.read_timeouts_max);
            let latency = started.elapsed();
            let metrics = &campaign.metrics;
            metrics.deliveries[attempt.index()].inc();
            metrics.latency.observe(latency.as_secs_f64());
            let delivered = matches!(
                attempt,
                Attempt::Delivered { .. } | Attempt::AlreadyDelivered { .. }
            );
            metrics.window.request(delivered, latency);
            if let Some(webhook) = &layer.webhook {
                webhook.offer(Event {
                    order_id: key,
                    campaign: campaign.name.clone(),
                    outcome: attempt.name(),
                    latency,
                });
            }
            Ok(attempt)
        })
    }
}
