//! The retry policy of a `deliver` call: retry what another attempt could fix, while the
//! retry budget allows, the call's attempt limit holds and the order's read timeouts stay
//! under their cap.
//!
//! The cap on read timeouts exists because a timed-out attempt may have delivered: the
//! target's idempotency should make a repeat harmless, but past a few such doubts the honest
//! answer is "unknown, reconcile", not one more request. A connect failure never left the
//! machine, so it does not count.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::sync::Arc;
use std::time::Instant;

use tower::retry::Policy;

use super::failover::Targets;
use super::{Delivery, Tried};
use crate::budget::Refusal;
use crate::metrics::lock;
use crate::window::Counts;

/// The policy; one clone per `deliver` call.
#[derive(Clone)]
pub(crate) struct BudgetPolicy {
    pub(crate) targets: Arc<Targets>,
    pub(crate) attempts_max: u32,
    pub(crate) read_timeouts_max: u32,
}

impl Policy<Delivery, Tried, Infallible> for BudgetPolicy {
    type Future = Ready<()>;

    fn retry(
        &mut self,
        delivery: &mut Delivery,
        result: &mut Result<Tried, Infallible>,
    ) -> Option<Ready<()>> {
        let tried = match result {
            Ok(tried) => tried,
            Err(never) => match *never {},
        };
        assert!(tried.read_timeouts >= delivery.read_timeouts);
        delivery.read_timeouts = tried.read_timeouts;
        delivery.attempts += 1;
        if let Some((index, _)) = &tried.endpoint {
            delivery.tried |= 1u64 << index;
        }
        let stop = !tried.result.is_retryable()
            || delivery.read_timeouts >= self.read_timeouts_max
            || delivery.attempts >= self.attempts_max;
        if stop {
            return None;
        }
        let campaign = &delivery.campaign.metrics;
        match lock(&self.targets.budget).withdraw(Instant::now()) {
            Ok(()) => {
                campaign.retries.inc();
                campaign.window.add(Counts {
                    retries: 1,
                    ..Counts::default()
                });
                Some(ready(()))
            }
            Err(refusal) => {
                match refusal {
                    Refusal::Exhausted => campaign.refused_exhausted.inc(),
                    Refusal::LowSuccessRate => campaign.refused_low_success.inc(),
                };
                campaign.window.add(Counts {
                    retries_refused: 1,
                    ..Counts::default()
                });
                None
            }
        }
    }

    fn clone_request(&mut self, delivery: &Delivery) -> Option<Delivery> {
        Some(delivery.clone())
    }
}
