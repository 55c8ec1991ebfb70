//! The tower stack a delivery goes through, outermost first:
//!
//! 1. [`observe`]: per-campaign metrics and window, and the statistics webhook event. It
//!    sees every outcome, refusals included, and can never change one.
//! 2. [`bulkhead`]: the campaign bulkhead. It sheds load before anything queues: a campaign
//!    at its in-flight cap is answered "busy" at once, so one heavy campaign cannot take
//!    every slot of a target from the others.
//! 3. tower's `Retry` with [`retry::BudgetPolicy`]: in-process retries, each taken from the
//!    retry budget, and the per-order cap on read timeouts.
//! 4. [`failover::Failover`]: picks an endpoint (round robin over the healthy primaries, else
//!    the backups), asks the outlier detector, and records what the attempt did to the
//!    endpoint's health, the budget's success rate and the endpoint's metrics.
//! 5. Per endpoint ([`endpoint::stack`]): `LoadShed` over `ConcurrencyLimit` (the endpoint
//!    bulkhead, refusing rather than queueing), `Timeout` (the read timeout), and
//!    [`endpoint::Send`], the POST through the endpoint's own hyper client whose connector has
//!    the connect timeout.
//!
//! Every layer below the retry answers `Ok` with a [`Tried`] describing the attempt, even for
//! failures: the retry policy and the outcome mapping need the whole story (which endpoint,
//! how many read timeouts), and classifying errors once at the bottom keeps `BoxError`
//! downcasts in one place.

pub(crate) mod bulkhead;
pub(crate) mod endpoint;
pub(crate) mod failover;
pub(crate) mod observe;
pub(crate) mod retry;

use std::sync::Arc;

use bytes::Bytes;
use hyper::header::HeaderValue;

use crate::Campaign;

/// One delivery as it travels down the stack; cheap to clone for a retry.
#[derive(Clone)]
pub(crate) struct Delivery {
    pub(crate) body: Bytes,
    pub(crate) key: HeaderValue,
    pub(crate) campaign: Arc<Campaign>,
    /// Read timeouts of the order so far, this call's included.
    pub(crate) read_timeouts: u32,
    /// Attempts of this call so far.
    pub(crate) attempts: u32,
    /// Endpoints this call tried, as bits of their global index.
    pub(crate) tried: u64,
}

/// What one attempt did.
#[derive(Clone, Debug)]
pub(crate) struct Tried {
    /// The endpoint's global index and URL, if one was chosen.
    pub(crate) endpoint: Option<(usize, Arc<str>)>,
    pub(crate) result: TryResult,
    /// Read timeouts of the order, this attempt's included.
    pub(crate) read_timeouts: u32,
}

/// The result of one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TryResult {
    /// 2xx.
    Delivered,
    /// 409.
    AlreadyDelivered,
    /// Any other status below 500 (4xx, and 3xx which the contract does not allow).
    Rejected { status: u16, snippet: String },
    /// 5xx.
    ServerError { status: u16 },
    /// Refused or timed out while connecting: the request never left.
    ConnectFailed,
    /// No complete answer within the read timeout: the target may have delivered.
    ReadTimedOut,
    /// The connection failed after the request was sent: the target may have delivered.
    ReadFailed,
    /// The endpoint's bulkhead was full: nothing was sent.
    EndpointBusy,
    /// The campaign's bulkhead was full: nothing was sent.
    CampaignBusy,
    /// Every endpoint is ejected: nothing was sent.
    NoEndpoint,
}

impl TryResult {
    /// Whether the target may have acted on the request without answering.
    pub(crate) fn is_ambiguous(&self) -> bool {
        matches!(self, TryResult::ReadTimedOut | TryResult::ReadFailed)
    }

    /// Whether another attempt, possibly at another endpoint, could do better.
    pub(crate) fn is_retryable(&self) -> bool {
        matches!(
            self,
            TryResult::ServerError { .. }
                | TryResult::ConnectFailed
                | TryResult::ReadTimedOut
                | TryResult::ReadFailed
                | TryResult::EndpointBusy
        )
    }

    /// What the attempt says of the endpoint's health: `None` when nothing reached it.
    pub(crate) fn endpoint_healthy(&self) -> Option<bool> {
        match self {
            TryResult::Delivered | TryResult::AlreadyDelivered | TryResult::Rejected { .. } => {
                Some(true)
            }
            TryResult::ServerError { .. }
            | TryResult::ConnectFailed
            | TryResult::ReadTimedOut
            | TryResult::ReadFailed => Some(false),
            TryResult::EndpointBusy | TryResult::CampaignBusy | TryResult::NoEndpoint => None,
        }
    }

    /// The index of the `result` label in [`crate::metrics::ATTEMPT_RESULTS`].
    pub(crate) fn index(&self) -> usize {
        match self {
            TryResult::Delivered => 0,
            TryResult::AlreadyDelivered => 1,
            TryResult::Rejected { .. } => 2,
            TryResult::ServerError { .. } => 3,
            TryResult::ConnectFailed => 4,
            TryResult::ReadTimedOut => 5,
            TryResult::ReadFailed => 6,
            TryResult::EndpointBusy | TryResult::CampaignBusy | TryResult::NoEndpoint => 7,
        }
    }
}
