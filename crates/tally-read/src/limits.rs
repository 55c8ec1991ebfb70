//! Every limit of the read model in one place, each with the reason it exists.

use std::time::Duration;

/// Events folded into one write transaction at most; bounds the memory of the fold's caches
/// (accounts, ledger totals and days, each cleared at every commit) and the work lost when the
/// process dies before the transaction commits.
pub const TRANSACTION_EVENTS_MAX: u64 = 50_000;

/// About the most the live read model writes back to the disk at a time (see `write_back.rs`),
/// and the size of the pieces of its file it tracks writes by: the log's next `fdatasync` may
/// queue behind one such write-back rather than behind a whole second's pages. Larger than a
/// rebuild's ([`REBUILD_WRITE_BACK_CHUNK_BYTES`]) because the live model writes back before its
/// durable commit, which read-your-writes queries wait for: in 32 KiB ranges their p99 went from
/// 21–27 ms to 35–45 ms, for no gain in the online p99 (2026-12-04).
pub const WRITE_BACK_CHUNK_BYTES: u64 = 256 * 1024;

/// The same for a rebuild, which nothing waits for. The log's next write and `fdatasync` may queue
/// behind one write-back, so this is what bounds the rebuild's requests in the device's queue
/// ahead of them: redb's pages land apart in the file, so each 4 KiB page written back is about a
/// request of its own, eight of them here. At 256 KiB (some 60 requests at a time) idle-priority
/// work cost the online p99 1.17× on 2026-12-04; at 32 KiB about 1.0× (README, "Eight pages at a
/// time"). A rebuild on its own took as long (27 s for two million events); next to the online
/// load about 15% longer, the time its waits for the disk now take.
pub const REBUILD_WRITE_BACK_CHUNK_BYTES: u64 = 32 * 1024;

/// Bytes a rebuild writes before it writes them back (see `write_back.rs`); bounds how much of
/// its file sits dirty in the page cache, for the kernel's flusher or a sync to send at once.
pub const WRITE_BACK_PENDING_BYTES_MAX: u64 = 8 * 1024 * 1024;

/// Wall time one write transaction may keep folding; bounds how stale queries get under load,
/// since readers only see committed transactions.
pub const TRANSACTION_DURATION_MAX: Duration = Duration::from_millis(100);

/// Wall time one write transaction of a rebuild may keep folding. A rebuild has no readers to
/// keep fresh, so its transactions are bounded by [`TRANSACTION_EVENTS_MAX`] rather than by
/// staleness: fewer, larger transactions make a rebuild of two million events take about a
/// third less time than the 100 ms of [`TRANSACTION_DURATION_MAX`] did, for the same bytes
/// written. A crash loses at most this much of the rebuild's work.
pub const REBUILD_TRANSACTION_DURATION_MAX: Duration = Duration::from_secs(1);

/// Shortest time between the starts of two write transactions while no query waits. A redb
/// transaction has a fixed cost (opening the tables, checksumming and writing the dirty pages)
/// that dwarfs folding the few events of one group commit: following every commit of the log
/// one by one under single-request load spent as much CPU as the requests themselves. A query
/// that waits for a position the projector has not reached wakes it at once (read-your-writes
/// costs nothing), so this only bounds how many transactions unobserved writes cost, and adds
/// at most this much to the lag that `/metrics` reports.
pub const COMMIT_INTERVAL_MIN: Duration = Duration::from_millis(50);

/// Longest time between durable commits while events are being projected. Commits in between
/// skip the fsync: the read model is derived data, so a crash only costs re-projecting at most
/// this much of the log.
pub const DURABLE_COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// Entries in one history page; bounds the work and the answer size of one query.
pub const HISTORY_PAGE_ENTRIES_MAX: u32 = 1000;

/// Pause before asking the log again when it announced events its reader did not yield yet;
/// keeps a lagging reader from turning the projector into a busy loop.
pub const READ_RETRY_DELAY: Duration = Duration::from_millis(10);

/// Longest an idle projector goes without checking that it is still caught up with the log. The
/// check stamps the time reported as the read model's lag, so this bounds how much
/// [`Lag::duration`](crate::Lag::duration) can overstate the lag after a quiet period.
pub const CAUGHT_UP_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Days in one page of a ledger's daily summary at most: a year, leap or not. Bounds the work and
/// the answer size of one query.
pub const DAILY_PAGE_DAYS_MAX: u32 = 366;

/// Version of the stored tables and rows. A file with another version is rebuilt from the log.
///
/// History: 1, transfers, history and balances; 2, plus the ledger totals and daily summaries.
pub const STORE_FORMAT_VERSION: u64 = 2;

const _: () = assert!(TRANSACTION_EVENTS_MAX > 0);
const _: () =
    assert!(WRITE_BACK_CHUNK_BYTES > 0 && WRITE_BACK_CHUNK_BYTES <= WRITE_BACK_PENDING_BYTES_MAX);
// Whole 4 KiB pages, and few of them: each may be a request of its own in the device's queue.
const _: () = assert!(
    REBUILD_WRITE_BACK_CHUNK_BYTES.is_multiple_of(4096)
        && REBUILD_WRITE_BACK_CHUNK_BYTES > 0
        && REBUILD_WRITE_BACK_CHUNK_BYTES <= 64 * 1024
);
const _: () = assert!(HISTORY_PAGE_ENTRIES_MAX > 0);
const _: () = assert!(DAILY_PAGE_DAYS_MAX > 0);
const _: () = assert!(TRANSACTION_DURATION_MAX.as_nanos() < DURABLE_COMMIT_INTERVAL.as_nanos());
const _: () = assert!(COMMIT_INTERVAL_MIN.as_nanos() < DURABLE_COMMIT_INTERVAL.as_nanos());

/// Events in one page of the event feed at most.
pub const FEED_PAGE_EVENTS_MAX: u32 = 1000;

/// Events one page of the event feed reads at most, kept or not: a filter that matches little
/// cannot make one request scan the whole log.
pub const FEED_SCAN_EVENTS_MAX: u64 = 100_000;

/// Log readers the event feed keeps between requests (each holds the index of a few segments).
pub const FEED_READERS_KEPT_MAX: usize = 8;
