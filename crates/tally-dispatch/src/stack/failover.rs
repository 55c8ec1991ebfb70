//! Picks the endpoint of an attempt and learns from its result.
//!
//! Round robin over the primary endpoints the outlier detector admits, those this call has not
//! tried yet first; when no primary is admitted, the same over the backup group. When no
//! primary is dependable (each ejected, probing, or failing in a row but kept in rotation by
//! the ejection cap), the primaries get only their probes and trials and the backup group the
//! rest: the cap limits ejections, not failover. Round robin
//! rather than least-loaded: the endpoints of one target are alike, and the bulkheads already
//! keep a slow endpoint from accumulating requests. An ejected endpoint whose time is up is
//! admitted once, as its probe, in its turn.
//!
//! After the attempt, its result feeds the outlier detector (ejection, re-admission), the
//! retry budget's success rate and the endpoint's metrics. Only attempts that reached the
//! endpoint count; a bulkhead refusal says nothing about its health.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use tower::{Service, ServiceExt};

use super::endpoint::{classify, EndpointService};
use super::{Delivery, Tried, TryResult};
use crate::budget::RetryBudget;
use crate::metrics::{lock, EndpointMetrics};
use crate::outlier::{Admission, Detector, Transition};
use crate::window::Counts;

/// The endpoints of a dispatcher and what is known of their health; shared by every clone.
pub(crate) struct Targets {
    /// The primary group, then the backup group (possibly empty).
    pub(crate) groups: [Group; 2],
    pub(crate) budget: Mutex<RetryBudget>,
}

/// One group of endpoints with its outlier detector.
pub(crate) struct Group {
    pub(crate) endpoints: Vec<Endpoint>,
    /// `None` for an empty group.
    pub(crate) detector: Option<Mutex<Detector>>,
    pub(crate) next: AtomicUsize,
}

/// One endpoint: its stack and its metrics.
pub(crate) struct Endpoint {
    /// Index over both groups, primary first: the bit of [`Delivery::tried`].
    pub(crate) index: usize,
    pub(crate) url: Arc<str>,
    pub(crate) service: EndpointService,
    pub(crate) metrics: EndpointMetrics,
}

/// The innermost service above the endpoints.
#[derive(Clone)]
pub(crate) struct Failover {
    pub(crate) targets: Arc<Targets>,
}

/// The endpoint chosen for an attempt.
struct Choice {
    group: usize,
    position: usize,
    probe: bool,
}

impl Targets {
    /// The endpoint for the next attempt of a delivery that tried `tried`.
    fn choose(&self, tried: u64, now: Instant) -> Option<Choice> {
        let has_backup = self.groups[1].detector.is_some();
        for (group_index, group) in self.groups.iter().enumerate() {
            let Some(detector) = &group.detector else {
                continue;
            };
            let count = group.endpoints.len();
            let start = group.next.fetch_add(1, Ordering::Relaxed);
            let mut detector = lock(detector);
            // No dependable primary (each ejected, probing or failing in a row, whatever the
            // ejection cap let stay): the primaries get only probes and trials, the rest goes
            // to the backup group. Without a backup, failing primaries are still better than
            // nothing.
            let failing_over = group_index == 0 && has_backup && !detector.has_dependable();
            for untried_only in [true, false] {
                for step in 0..count {
                    let position = (start + step) % count;
                    let bit = 1u64 << group.endpoints[position].index;
                    if untried_only == (tried & bit != 0) {
                        continue;
                    }
                    let admission = if failing_over {
                        detector.admit_dependable(position, now)
                    } else {
                        detector.admit(position, now)
                    };
                    match admission {
                        Admission::Refused => continue,
                        admission => {
                            return Some(Choice {
                                group: group_index,
                                position,
                                probe: admission == Admission::Probe,
                            })
                        }
                    }
                }
            }
        }
        None
    }

    /// Learns from an attempt at the chosen endpoint.
    fn record(&self, choice: &Choice, result: &TryResult, started: Instant) {
        let now = Instant::now();
        let group = &self.groups[choice.group];
        let endpoint = &group.endpoints[choice.position];
        let detector = group
            .detector
            .as_ref()
            .expect("a chosen group has endpoints");
        endpoint.metrics.attempts[result.index()].inc();
        let Some(healthy) = result.endpoint_healthy() else {
            if choice.probe {
                lock(detector).release_probe(choice.position, now);
            }
            return;
        };
        let latency = now - started;
        endpoint.metrics.latency.observe(latency.as_secs_f64());
        endpoint.metrics.window.request(healthy, latency);
        lock(&self.budget).record(now, healthy);
        match lock(detector).record(choice.position, healthy, now) {
            Transition::None => {}
            Transition::Ejected(time) => {
                tracing::warn!(endpoint = %endpoint.url, ?time, "endpoint ejected");
                endpoint.metrics.ejections.inc();
                endpoint.metrics.window.add(Counts {
                    ejections: 1,
                    ..Counts::default()
                });
            }
            Transition::Readmitted => {
                tracing::info!(endpoint = %endpoint.url, "endpoint re-admitted after a probe");
                endpoint.metrics.readmissions.inc();
            }
        }
    }
}

impl Service<Delivery> for Failover {
    type Response = Tried;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Tried, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Readiness is per endpoint, known only once one is chosen; each endpoint's bulkhead
        // sheds instead of waiting.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, delivery: Delivery) -> Self::Future {
        let targets = self.targets.clone();
        Box::pin(async move {
            let started = Instant::now();
            let read_timeouts = delivery.read_timeouts;
            let Some(choice) = targets.choose(delivery.tried, started) else {
                return Ok(Tried {
                    endpoint: None,
                    result: TryResult::NoEndpoint,
                    read_timeouts,
                });
            };
            let endpoint = &targets.groups[choice.group].endpoints[choice.position];
            let result = match endpoint.service.clone().oneshot(delivery).await {
                Ok(result) => result,
                Err(error) => classify(&error),
            };
            targets.record(&choice, &result, started);
            let read_timeouts = read_timeouts + u32::from(result.is_ambiguous());
            Ok(Tried {
                endpoint: Some((endpoint.index, endpoint.url.clone())),
                result,
                read_timeouts,
            })
        })
    }
}
