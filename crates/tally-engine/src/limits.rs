//! Every limit of the engine in one place, each with the reason it exists.

use tally_core::limits::BATCH_TRANSFERS_MAX;

/// Commands per group commit; bounds one fsync's worth of work and one log record. Two bench
/// clients with batches of 8,000 fit behind one fsync.
pub const COMMIT_BATCH_COMMANDS_MAX: usize = 2 * BATCH_TRANSFERS_MAX;

/// Commands queued for the state thread before submitters are told `overloaded`: enough for
/// a few batches in flight, never unbounded memory.
pub const COMMAND_QUEUE_COMMANDS_MAX: usize = 4 * COMMIT_BATCH_COMMANDS_MAX;

/// Requests queued for the state thread (each holds one or more commands, or is a read).
pub const COMMAND_QUEUE_REQUESTS_MAX: usize = 8192;

/// Batches decided but not yet durable, beyond the one being written: the pipeline depth. One
/// is enough to validate batch N+1 while batch N is fsynced.
pub const STAGED_BATCHES_MAX: usize = 1;

/// How long the batcher waits for more commands after the first one of a batch. Short: while a
/// batch is being fsynced, the next one fills by itself.
pub const BATCH_WAIT_US_DEFAULT: u64 = 50;

/// Longest batch wait that may be configured; longer only adds latency.
pub const BATCH_WAIT_US_MAX: u64 = 10_000;

/// How often the state thread wakes without traffic, to expire pending transfers on time.
pub const IDLE_TICK_MS: u64 = 100;

/// Events between two snapshots by default: bounds how much of the log a restart replays.
pub const SNAPSHOT_INTERVAL_EVENTS_DEFAULT: u64 = 1_000_000;

/// Claims one page of a claim listing holds: what one answer may carry.
pub const CLAIMS_PAGE_MAX: usize = 1024;

/// Claims one page of a claim listing scans, kept or not: bounds the state thread's time on a
/// listing of a rare state among many claims (the page's `next` says where the scan stopped).
pub const CLAIMS_SCAN_MAX: usize = 16 * CLAIMS_PAGE_MAX;

const _: () = assert!(CLAIMS_SCAN_MAX >= CLAIMS_PAGE_MAX);
const _: () = assert!(COMMAND_QUEUE_COMMANDS_MAX >= COMMIT_BATCH_COMMANDS_MAX);
const _: () = assert!(COMMIT_BATCH_COMMANDS_MAX >= BATCH_TRANSFERS_MAX);
