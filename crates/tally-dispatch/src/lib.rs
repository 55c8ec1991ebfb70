//! Delivers gifts to downstream HTTP targets, exactly once in effect, and keeps working when
//! targets break.
//!
//! # The delivery contract
//!
//! For each order, Tally sends `POST URL` with the JSON body
//! `{"order_id", "user", "campaign", "gift_ledger", "amount"}` and the header
//! `Idempotency-Key: ORDER_ID`. The target answers:
//!
//! - any 2xx: delivered;
//! - 409: already delivered (a repeat of an order it delivered), also a success;
//! - any other 4xx: a definitive failure, never retried (the ledger voids the pending
//!   transfer);
//! - 5xx, or no answer within the read timeout: a failure that may be retried. After a read
//!   timeout the target may have delivered; the target must therefore deduplicate on the key.
//!
//! # Use
//!
//! ```no_run
//! # async fn example() -> Result<(), tally_dispatch::Error> {
//! use tally_dispatch::{Attempt, DispatchConfig, Dispatcher, Order};
//!
//! let mut registry = prometheus_client::registry::Registry::default();
//! let config = DispatchConfig::new(vec!["http://10.0.0.7:8080/gifts".to_owned()]);
//! let dispatcher = Dispatcher::new(config, &mut registry)?;
//! let order = Order::new("order-1", "alice", "spring", "points", 100)?;
//! match dispatcher.deliver(&order, 0).await {
//!     Attempt::Delivered { .. } | Attempt::AlreadyDelivered { .. } => { /* post */ }
//!     Attempt::Rejected { .. } => { /* void */ }
//!     Attempt::RetryLater { read_timeouts, .. } => { /* queue, keep the count */ }
//!     Attempt::UnknownNeedsReconciliation { .. } => { /* ask the target */ }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! One [`Dispatcher`] serves one target. A `deliver` call may retry in-process (at other
//! endpoints, within the retry budget); retrying after a restart is the caller's durable
//! queue's job, on the schedule of [`Backoff::retry_delay`].
//!
//! # Design
//!
//! Every concern is a tower layer or service, so timeouts, retries and limits compose and each
//! can be read and tested alone. A delivery goes through, outermost first:
//!
//! 1. *observe*: counts the outcome per campaign and offers a statistics event to the webhook
//!    (never waiting, never failing the delivery);
//! 2. the *campaign bulkhead*: a campaign at its in-flight cap is answered busy at once, before
//!    anything queues, so one campaign cannot take the others' slots;
//! 3. tower's `Retry` with the budget policy: in-process retries at other endpoints, within the
//!    [`budget`], the call's attempt limit and the order's cap on read timeouts;
//! 4. *failover*: round robin over the primary endpoints the [`outlier`] detector admits, else
//!    the backups; feeds each result back to the detector and the budget;
//! 5. per endpoint: `LoadShed` over `ConcurrencyLimit` (the endpoint bulkhead), `Timeout` (the
//!    read timeout) and the POST through the endpoint's own pooled client, whose connector has
//!    the connect timeout, so a connect failure (safe to retry) is told apart from a read
//!    timeout (the target may have delivered).
//!
//! The decisions
//! that need state over time (the [`budget`] and the [`outlier`] detector) are pure state
//! machines with time passed in, tested without sockets or sleeping. Every limit is in
//! [`limits`].
//!
//! With the `fake-target` feature, [`fake`] provides a programmable target for tests.

#![deny(missing_docs)]

pub mod backoff;
pub mod budget;
mod config;
#[cfg(feature = "fake-target")]
pub mod fake;
pub mod limits;
mod metrics;
mod order;
pub mod outlier;
mod stack;
mod webhook;
pub mod window;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};

pub use crate::backoff::Backoff;
pub use crate::config::{DispatchConfig, WebhookConfig};
pub use crate::metrics::{DispatchMetrics, Figures, Snapshot};
pub use crate::order::Order;

use crate::budget::RetryBudget;
use crate::limits::{CAMPAIGNS_TRACKED_MAX, CAMPAIGN_OVERFLOW};
use crate::metrics::{CampaignMetrics, Metrics};
use crate::outlier::Detector;
use crate::stack::bulkhead::CampaignBulkheadLayer;
use crate::stack::endpoint::EndpointLimits;
use crate::stack::failover::{Endpoint, Failover, Group, Targets};
use crate::stack::observe::ObserveLayer;
use crate::stack::retry::BudgetPolicy;
use crate::stack::{Delivery, Tried, TryResult};

/// The errors of this crate: a configuration or an order that breaks the rules.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is out of range.
    #[error("invalid dispatch configuration: {field} {reason}")]
    InvalidConfig {
        /// The setting.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An endpoint or webhook URL is not usable.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as configured.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An order's field is not a valid id (1 to 128 characters of `[A-Za-z0-9._:-]`).
    #[error("invalid order: {field} is not a valid id")]
    InvalidOrder {
        /// The field.
        field: &'static str,
    },
}

/// How a `deliver` call ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The target delivered the gift (2xx): post the pending transfer.
    Delivered {
        /// The endpoint that delivered.
        endpoint: Arc<str>,
    },
    /// The target had already delivered this order (409): post the pending transfer.
    AlreadyDelivered {
        /// The endpoint that answered.
        endpoint: Arc<str>,
    },
    /// The target refused the order for good (4xx): void the pending transfer.
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The start of the answer's body.
        body: String,
    },
    /// Not delivered this time; try again later (with [`Backoff::retry_delay`]).
    RetryLater {
        /// Why the last attempt failed.
        reason: RetryReason,
        /// The order's read timeouts so far, this call's included: pass it to the next call.
        read_timeouts: u32,
    },
    /// The order reached its cap of read timeouts: the target may or may not have delivered,
    /// and only asking it (reconciliation) can tell. Neither post nor void yet.
    UnknownNeedsReconciliation {
        /// The order's read timeouts.
        read_timeouts: u32,
    },
}

/// Why an attempt failed in a way that may be retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryReason {
    /// The target answered 5xx.
    ServerError {
        /// The HTTP status.
        status: u16,
    },
    /// Connecting was refused or timed out: the request never left.
    ConnectFailed,
    /// No answer within the read timeout: the target may have delivered.
    ReadTimedOut,
    /// The connection broke after the request was sent: the target may have delivered.
    ReadFailed,
    /// A bulkhead (the campaign's or every endpoint's) was full: nothing was sent.
    Busy,
    /// Every endpoint is ejected: nothing was sent.
    NoHealthyEndpoint,
}

impl Attempt {
    fn from_tried(tried: Tried, read_timeouts_max: u32) -> Attempt {
        let endpoint = || {
            tried
                .endpoint
                .clone()
                .expect("an answer names its endpoint")
                .1
        };
        let reason = match tried.result {
            TryResult::Delivered => {
                return Attempt::Delivered {
                    endpoint: endpoint(),
                }
            }
            TryResult::AlreadyDelivered => {
                return Attempt::AlreadyDelivered {
                    endpoint: endpoint(),
                }
            }
            TryResult::Rejected { status, snippet } => {
                return Attempt::Rejected {
                    status,
                    body: snippet,
                }
            }
            _ if tried.read_timeouts >= read_timeouts_max => {
                return Attempt::UnknownNeedsReconciliation {
                    read_timeouts: tried.read_timeouts,
                }
            }
            TryResult::ServerError { status } => RetryReason::ServerError { status },
            TryResult::ConnectFailed => RetryReason::ConnectFailed,
            TryResult::ReadTimedOut => RetryReason::ReadTimedOut,
            TryResult::ReadFailed => RetryReason::ReadFailed,
            TryResult::EndpointBusy | TryResult::CampaignBusy => RetryReason::Busy,
            TryResult::NoEndpoint => RetryReason::NoHealthyEndpoint,
        };
        Attempt::RetryLater {
            reason,
            read_timeouts: tried.read_timeouts,
        }
    }

    /// The outcome's name in metrics and webhook events.
    pub fn name(&self) -> &'static str {
        metrics::OUTCOMES[self.index()]
    }

    fn index(&self) -> usize {
        match self {
            Attempt::Delivered { .. } => 0,
            Attempt::AlreadyDelivered { .. } => 1,
            Attempt::Rejected { .. } => 2,
            Attempt::RetryLater { .. } => 3,
            Attempt::UnknownNeedsReconciliation { .. } => 4,
        }
    }
}

/// What the dispatcher keeps per campaign: its bulkhead and its metrics.
pub(crate) struct Campaign {
    pub(crate) name: Arc<str>,
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) metrics: CampaignMetrics,
}

/// Delivers orders to one target. Cheap to share (`Arc`); `deliver` takes `&self`.
pub struct Dispatcher {
    stack: BoxCloneSyncService<Delivery, Attempt, Infallible>,
    targets: Arc<Targets>,
    campaigns: RwLock<HashMap<Arc<str>, Arc<Campaign>>>,
    metrics: Metrics,
    read_timeouts_max: u32,
    in_flight_per_campaign: u32,
}

impl Dispatcher {
    /// Checks `config`, registers the metrics in `registry` and builds the stack. Must be
    /// called inside a Tokio runtime (the webhook worker and the pools run on it).
    pub fn new(config: DispatchConfig, registry: &mut Registry) -> Result<Dispatcher, Error> {
        let uris = config.validate()?;
        Dispatcher::build(config, uris, Metrics::register(registry))
    }

    /// [`Dispatcher::new`] with families registered once and shared by many dispatchers (one
    /// per campaign, say): a registry may hold a family only once, and the `campaign` and
    /// `endpoint` labels already tell the dispatchers' series apart.
    pub fn with_metrics(
        config: DispatchConfig,
        metrics: &DispatchMetrics,
    ) -> Result<Dispatcher, Error> {
        let uris = config.validate()?;
        Dispatcher::build(config, uris, metrics.0.clone())
    }

    fn build(
        config: DispatchConfig,
        uris: config::Uris,
        metrics: Metrics,
    ) -> Result<Dispatcher, Error> {
        let now = Instant::now();
        let limits = EndpointLimits {
            connect_timeout: config.connect_timeout,
            read_timeout: config.read_timeout,
            in_flight: config.in_flight_per_endpoint,
        };
        // A probe's caller may vanish; after the longest an attempt can take, another probe.
        let probe_lost_after = config.connect_timeout + config.read_timeout;
        let mut index = 0;
        let mut group = |uris: Vec<hyper::Uri>| {
            let detector = (!uris.is_empty()).then(|| {
                Mutex::new(Detector::new(
                    config.outlier,
                    probe_lost_after,
                    uris.len(),
                    now,
                ))
            });
            let endpoints = uris
                .into_iter()
                .map(|uri| {
                    let url: Arc<str> = uri.to_string().into();
                    index += 1;
                    Endpoint {
                        index: index - 1,
                        metrics: metrics.endpoint(&url),
                        service: stack::endpoint::stack(uri, limits),
                        url,
                    }
                })
                .collect();
            Group {
                endpoints,
                detector,
                next: AtomicUsize::new(0),
            }
        };
        let groups = [group(uris.primary), group(uris.backup)];
        let targets = Arc::new(Targets {
            groups,
            budget: Mutex::new(RetryBudget::new(config.retry_budget, now)),
        });
        let webhook = uris.webhook.map(|uri| {
            let timeout = config.webhook.as_ref().expect("validated").timeout;
            webhook::start(uri, timeout, &metrics)
        });
        let stack = ServiceBuilder::new()
            .layer(ObserveLayer {
                read_timeouts_max: config.max_read_timeouts,
                webhook,
            })
            .layer(CampaignBulkheadLayer)
            .layer(tower::retry::RetryLayer::new(BudgetPolicy {
                targets: targets.clone(),
                attempts_max: config.attempts_max,
                read_timeouts_max: config.max_read_timeouts,
            }))
            .service(Failover {
                targets: targets.clone(),
            });
        Ok(Dispatcher {
            stack: BoxCloneSyncService::new(stack),
            targets,
            campaigns: RwLock::default(),
            metrics,
            read_timeouts_max: config.max_read_timeouts,
            in_flight_per_campaign: config.in_flight_per_campaign,
        })
    }

    /// Delivers `order`, which has had `read_timeouts_so_far` read timeouts in earlier calls
    /// (0 for a new order; else the `read_timeouts` of the last [`Attempt::RetryLater`]).
    pub async fn deliver(&self, order: &Order, read_timeouts_so_far: u32) -> Attempt {
        if read_timeouts_so_far >= self.read_timeouts_max {
            return Attempt::UnknownNeedsReconciliation {
                read_timeouts: read_timeouts_so_far,
            };
        }
        let campaign = self.campaign(order.campaign());
        metrics::lock(&self.targets.budget).deposit(Instant::now());
        let delivery = Delivery {
            body: order.body(),
            key: order.key(),
            campaign,
            read_timeouts: read_timeouts_so_far,
            attempts: 0,
            tried: 0,
        };
        let Ok(attempt) = self.stack.clone().oneshot(delivery).await;
        attempt
    }

    /// Figures of every campaign and endpoint over the current 10-minute window.
    pub fn snapshot(&self) -> Snapshot {
        let campaigns = self
            .campaigns
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut snapshot = Snapshot {
            campaigns: campaigns
                .values()
                .map(|campaign| campaign.metrics.window.figures())
                .collect(),
            endpoints: Vec::new(),
        };
        snapshot.campaigns.sort_by(|a, b| a.name.cmp(&b.name));
        for group in &self.targets.groups {
            for endpoint in &group.endpoints {
                snapshot.endpoints.push(endpoint.metrics.window.figures());
            }
        }
        snapshot
    }

    /// Whether the endpoint with this URL is healthy: in rotation (not ejected, not waiting
    /// for its probe) and not failing in a row (see [`outlier`]); `None` for an unknown URL.
    pub fn is_endpoint_healthy(&self, url: &str) -> Option<bool> {
        self.targets.groups.iter().find_map(|group| {
            let position = group.endpoints.iter().position(|e| &*e.url == url)?;
            let detector = group.detector.as_ref()?;
            Some(metrics::lock(detector).is_dependable(position))
        })
    }

    /// The campaign's state, created on first sight; past [`CAMPAIGNS_TRACKED_MAX`]
    /// campaigns, new ones share the overflow entry.
    fn campaign(&self, name: &str) -> Arc<Campaign> {
        let read = self
            .campaigns
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(campaign) = read.get(name) {
            return campaign.clone();
        }
        drop(read);
        let mut campaigns = self
            .campaigns
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let name = if campaigns.len() < CAMPAIGNS_TRACKED_MAX - 1 || campaigns.contains_key(name) {
            name
        } else {
            CAMPAIGN_OVERFLOW
        };
        let campaign = campaigns
            .entry(name.into())
            .or_insert_with(|| {
                Arc::new(Campaign {
                    name: name.into(),
                    slots: Arc::new(Semaphore::new(self.in_flight_per_campaign as usize)),
                    metrics: self.metrics.campaign(name),
                })
            })
            .clone();
        assert!(campaigns.len() <= CAMPAIGNS_TRACKED_MAX);
        campaign
    }
}
