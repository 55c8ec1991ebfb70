//! The campaign bulkhead: at most `in_flight_per_campaign` deliveries of one campaign at once.
//!
//! Campaigns share a target; without this, one campaign's burst (or its orders stuck on a
//! hanging endpoint) would hold every connection and every endpoint slot, and the other
//! campaigns would wait behind it. A campaign at its cap is answered "busy" at once: waiting
//! is bounded at zero, and the durable queue is where a delivery waits.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::{Delivery, Tried, TryResult};

/// Adds the campaign bulkhead (the semaphore lives in each campaign).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CampaignBulkheadLayer;

impl<S> Layer<S> for CampaignBulkheadLayer {
    type Service = CampaignBulkhead<S>;

    fn layer(&self, inner: S) -> CampaignBulkhead<S> {
        CampaignBulkhead { inner }
    }
}

/// The campaign bulkhead service.
#[derive(Clone)]
pub(crate) struct CampaignBulkhead<S> {
    inner: S,
}

impl<S> Service<Delivery> for CampaignBulkhead<S>
where
    S: Service<Delivery, Response = Tried, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Tried;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Tried, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, delivery: Delivery) -> Self::Future {
        let Ok(permit) = delivery.campaign.slots.clone().try_acquire_owned() else {
            let tried = Tried {
                endpoint: None,
                result: TryResult::CampaignBusy,
                read_timeouts: delivery.read_timeouts,
            };
            return Box::pin(std::future::ready(Ok(tried)));
        };
        let future = self.inner.call(delivery);
        Box::pin(async move {
            let tried = future.await;
            drop(permit);
            tried
        })
    }
}
