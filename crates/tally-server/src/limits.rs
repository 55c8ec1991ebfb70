//! Every limit of the HTTP layer in one place, each with the reason it exists.

use std::time::Duration;

/// Body of a single-command request: a few ids and numbers.
pub const BODY_BYTES_MAX: usize = 64 * 1024;

/// Body of a batch request: 8,192 transfers with ids of up to 128 characters.
pub const BATCH_BODY_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Longest a query waits for the read model to catch up with what was acknowledged before it.
pub const READ_WAIT_MAX: Duration = Duration::from_secs(5);

/// History entries per page by default.
pub const HISTORY_PAGE_DEFAULT: u32 = 100;

/// History entries per page at most.
pub const HISTORY_PAGE_MAX: u32 = 1000;

/// Days per page of a ledger's daily summary by default: about a month.
pub const DAILY_PAGE_DEFAULT: u32 = 31;

/// Days per page of a ledger's daily summary at most: a year, leap or not (the read model's own
/// bound).
pub const DAILY_PAGE_MAX: u32 = tally_read::limits::DAILY_PAGE_DAYS_MAX;

const _: () = assert!(DAILY_PAGE_DEFAULT >= 1 && DAILY_PAGE_DEFAULT <= DAILY_PAGE_MAX);

/// Events per page of the feed by default.
pub const EVENTS_PAGE_DEFAULT: u32 = 100;

/// Events per page of the feed at most (a page scans at most `tally_read`'s
/// `FEED_SCAN_EVENTS_MAX` events, kept or not).
pub const EVENTS_PAGE_MAX: u32 = 1000;

/// The longest a page of the feed long-polls (`wait_ms`) for the next event.
pub const EVENTS_PAGE_WAIT_MAX: Duration = Duration::from_secs(30);

/// How long an event stream waits for the read model to move before it reads again; keep-alive
/// comments flow meanwhile.
pub const EVENT_STREAM_WAIT: Duration = Duration::from_secs(15);

/// Event streams open at once; each holds a task and, while it reads, a page of events.
pub const EVENT_STREAMS_MAX: usize = 256;

/// Longest a request may take end to end before it is answered 503; far above a fsync.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Requests handled at once, over all routes together; more are refused at once with 503
/// `overloaded` (load shedding) rather than queued.
pub const CONCURRENT_REQUESTS_MAX: usize = 4096;

/// Longest `X-Request-Id` accepted from a client; a longer one is replaced by a generated id.
/// Room for the common formats (a UUID is 36 characters, a W3C trace id 32) while keeping every
/// log line and error body it appears in small.
pub const REQUEST_ID_BYTES_MAX: usize = 64;

/// Server errors logged at warn per second at most; the rest are counted and the count is
/// logged with the next line. A burst of 503s under overload must not also flood the log.
/// Every answer is counted in `/metrics` either way.
pub const SERVER_ERROR_LOGS_PER_SECOND_MAX: u64 = 100;

/// Claims per page of `GET /v1/claims` when the client does not say.
pub const CLAIMS_PAGE_DEFAULT: u32 = 100;

/// Most claims per page of `GET /v1/claims`: a page is built on the engine's state thread.
pub const CLAIMS_PAGE_MAX: u32 = 1000;

const _: () = assert!(CLAIMS_PAGE_DEFAULT <= CLAIMS_PAGE_MAX);
const _: () = assert!(CLAIMS_PAGE_MAX as usize <= tally_engine::limits::CLAIMS_PAGE_MAX);
