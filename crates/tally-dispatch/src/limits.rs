//! Every limit of the dispatcher in one place, each with the reason for its value.
//!
//! A dispatcher talks to targets it does not control; anything it keeps per request, per order,
//! per endpoint or per campaign is bounded here so that a misbehaving target or a flood of
//! campaigns costs bounded memory and bounded time.

use std::time::Duration;

/// Endpoints of one group (primary or backup). A target is a handful of instances; the
/// per-delivery set of endpoints already tried is a bit set of this many bits.
pub const ENDPOINTS_PER_GROUP_MAX: usize = 32;

/// Endpoints of a dispatcher, both groups together; one `u64` bit set covers them all.
pub const ENDPOINTS_MAX: usize = 2 * ENDPOINTS_PER_GROUP_MAX;
const _: () = assert!(ENDPOINTS_MAX <= 64);

/// Attempts one `deliver` call makes, the first included, whatever the retry budget would
/// allow: a call must end in bounded time, and the durable queue retries later anyway.
pub const ATTEMPTS_PER_DELIVERY_MAX: u32 = 4;

/// Read timeouts an order may be given as its cap: past a few, the target has probably
/// delivered and only a reconciliation can say, so more attempts would only add risk.
pub const READ_TIMEOUTS_PER_ORDER_MAX: u32 = 16;

/// Deliveries in flight to one endpoint. The per-endpoint bulkhead may be configured lower,
/// never higher: a slow endpoint can hold this many connections at most.
pub const IN_FLIGHT_PER_ENDPOINT_MAX: u32 = 1024;

/// Deliveries in flight for one campaign. A heavy campaign may not take every slot of a target
/// from the light ones; configurable lower, never higher.
pub const IN_FLIGHT_PER_CAMPAIGN_MAX: u32 = 4096;

/// Campaigns with their own bulkhead, metrics labels and statistics window. Campaign names come
/// from orders, so the maps keyed by them must be bounded; campaigns beyond this share one
/// overflow entry (named [`CAMPAIGN_OVERFLOW`]).
pub const CAMPAIGNS_TRACKED_MAX: usize = 256;

/// The name the campaigns beyond [`CAMPAIGNS_TRACKED_MAX`] share.
pub const CAMPAIGN_OVERFLOW: &str = "_other";

/// Idle keep-alive connections kept per endpoint: enough for a busy endpoint to reuse
/// connections, bounded so an idle dispatcher does not hold thousands of sockets.
pub const IDLE_CONNECTIONS_PER_ENDPOINT_MAX: usize = 64;

/// How long an idle pooled connection is kept before it is closed.
pub const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes of a target's answer the dispatcher reads. Targets answer with small JSON; a longer
/// body is cut off rather than read into memory.
pub const ANSWER_BYTES_MAX: usize = 16 * 1024;

/// Bytes of a rejecting answer's body kept in [`crate::Attempt::Rejected`]: enough to explain
/// the rejection in a log line, small enough to keep in the claim's record.
pub const REJECTION_SNIPPET_BYTES_MAX: usize = 256;

/// The longest connect or read timeout accepted: a delivery attempt that may take longer
/// than this holds a bulkhead slot too long to be useful.
pub const TIMEOUT_MAX: Duration = Duration::from_secs(60);

/// The longest an endpoint stays ejected, whatever its ejection count: a target that was
/// down for an hour should be probed again within minutes of recovering.
pub const EJECTION_TIME_MAX: Duration = Duration::from_secs(300);

/// The highest power of two the ejection time is multiplied by (`base × 2^k`, k capped here);
/// past it [`EJECTION_TIME_MAX`] would cap the product anyway, and the shift cannot overflow.
pub const EJECTION_EXPONENT_MAX: u32 = 16;

/// Buckets in the ring of an outlier detector's or retry budget's window. Ten buckets make a
/// window slide in tenths: old failures age out steadily rather than all at once.
pub const WINDOW_BUCKETS: usize = 10;

/// The window of the statistics snapshot and of the per-campaign and per-endpoint rates.
pub const STATS_WINDOW: Duration = Duration::from_secs(600);

/// Buckets of the statistics window (one a minute).
pub const STATS_BUCKETS: usize = 10;
const _: () = assert!(STATS_WINDOW.as_secs().is_multiple_of(STATS_BUCKETS as u64));

/// The longest window of the retry budget or the outlier detector: their rates must describe
/// the target's recent health, not its history.
pub const HEALTH_WINDOW_MAX: Duration = Duration::from_secs(600);

/// Statistics events waiting for the webhook. The webhook is not core: when it falls behind,
/// events are dropped (and counted) instead of memory growing or deliveries waiting.
pub const WEBHOOK_QUEUE_DEPTH: usize = 1024;

/// The longest webhook timeout accepted; the webhook must stay cheap to wait for.
pub const WEBHOOK_TIMEOUT_MAX: Duration = Duration::from_secs(5);

/// Webhook calls in flight at once: the webhook worker never holds more connections than this.
pub const WEBHOOK_IN_FLIGHT_MAX: usize = 4;

/// The cap of [`crate::retry_delay`]'s exponent, so `base × 2^attempt` cannot overflow.
pub const BACKOFF_EXPONENT_MAX: u32 = 30;

/// Percentage of requests a retry budget may configure as retries. More than all requests
/// would let retries double the load on a failing target, which is what budgets prevent.
pub const RETRY_BUDGET_PERCENT_MAX: u32 = 100;
