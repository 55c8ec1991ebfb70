//! Every limit of a campaign definition in one place, each with the reason it exists.

/// Largest campaign file or request body, in bytes. A campaign is a page of settings; anything
/// larger is a mistake (a wrong file), and the bound keeps parsing cheap.
pub const SPEC_BYTES_MAX: usize = 256 * 1024;

/// Longest endpoint or webhook URL, in bytes: what common HTTP servers and proxies accept in a
/// request line, and what the dispatcher keeps in memory per endpoint.
pub const URL_BYTES_MAX: usize = 2048;

/// Endpoints in one delivery group (primary or backup). The dispatcher keeps health state per
/// endpoint and probes ejected ones; a bounded group bounds that work.
pub const ENDPOINTS_PER_GROUP_MAX: usize = 16;

/// Shortest connect timeout, in milliseconds. Below it, a TCP handshake across a data centre
/// fails by timeout on ordinary jitter and every delivery looks like an outage.
pub const CONNECT_TIMEOUT_MS_MIN: u64 = 10;

/// Longest connect timeout, in milliseconds. A handshake that has not completed in 10 s will not
/// complete; waiting longer only holds a delivery slot (the fast failures must stay fast).
pub const CONNECT_TIMEOUT_MS_MAX: u64 = 10_000;

/// Shortest read timeout, in milliseconds. The target has to do real work (grant a gift) after
/// the connection is made; below this, successful deliveries would be cut off and retried.
pub const READ_TIMEOUT_MS_MIN: u64 = 50;

/// Longest read timeout, in milliseconds. Every in-flight delivery holds a slot for up to this
/// long; a minute already lets one slow target tie up the dispatcher's bulkhead.
pub const READ_TIMEOUT_MS_MAX: u64 = 60_000;

/// Most read timeouts one delivery may suffer before it stops being sent and waits for
/// verification. A read timeout may hide a delivery that succeeded, so each one risks a
/// duplicate at a target whose idempotency is imperfect; the cap bounds that risk.
pub const READ_TIMEOUTS_PER_DELIVERY_MAX: u32 = 10;

/// Most retries of one delivery after its first attempt. Retries beyond this do not recover a
/// target that is down; the asynchronous retry queue does, later.
pub const RETRIES_PER_DELIVERY_MAX: u32 = 10;

/// Retries of one delivery when the campaign does not say (`delivery.max_retries`).
pub const RETRIES_PER_DELIVERY_DEFAULT: u32 = 3;

/// Largest retry budget, in percent of first attempts. Retries above half the traffic turn a
/// struggling target into a dead one (a retry storm); Finagle's default budget is 20 %.
pub const RETRY_BUDGET_PERCENT_MAX: u32 = 50;

const _: () = assert!(CONNECT_TIMEOUT_MS_MIN < CONNECT_TIMEOUT_MS_MAX);
const _: () = assert!(READ_TIMEOUT_MS_MIN < READ_TIMEOUT_MS_MAX);
// Some valid read timeout must exceed every valid connect timeout's minimum, and the largest
// connect timeout must leave room for a larger read timeout.
const _: () = assert!(CONNECT_TIMEOUT_MS_MAX < READ_TIMEOUT_MS_MAX);
const _: () = assert!(RETRIES_PER_DELIVERY_DEFAULT <= RETRIES_PER_DELIVERY_MAX);
// Every allowed read-timeout cap must be reachable with the allowed retries.
const _: () = assert!(READ_TIMEOUTS_PER_DELIVERY_MAX <= RETRIES_PER_DELIVERY_MAX + 1);
const _: () = assert!(RETRY_BUDGET_PERCENT_MAX <= 100);
// A spec with full delivery groups of the longest URLs must still fit the size bound.
const _: () = assert!(2 * ENDPOINTS_PER_GROUP_MAX * URL_BYTES_MAX + 16 * 1024 <= SPEC_BYTES_MAX);
