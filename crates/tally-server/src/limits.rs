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

/// Longest a request may take end to end before it is answered 503; far above a fsync.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Requests handled at once; more wait in the listener's backlog.
pub const CONCURRENT_REQUESTS_MAX: usize = 4096;
