//! Every limit of the ledger core in one place, each with the reason it exists.

/// Longest id, in bytes: ids are client-chosen and remembered, so they are bounded.
pub const ID_BYTES_MAX: usize = 128;

/// Longest ledger code (a currency or asset code such as `USD`), in bytes.
pub const LEDGER_CODE_BYTES_MAX: usize = 32;

/// Transfers in one batch request or linked chain; bounds one command's work and one reply's size.
pub const BATCH_TRANSFERS_MAX: usize = 8192;

/// Longest timeout of a pending transfer: 30 days, so a forgotten reservation cannot hold funds forever.
pub const PENDING_TIMEOUT_S_MAX: u32 = 30 * 24 * 60 * 60;

/// Pending transfers expired by one batch; more wait for the next batch, so that a mass expiry
/// cannot make one log record unbounded. Until its expiry event, an overdue pending transfer is
/// already treated as expired.
pub const EXPIRATIONS_PER_BATCH_MAX: usize = 4096;

/// Accounts in one Tally instance, external accounts included; account indices are `u32`.
pub const ACCOUNTS_MAX: u32 = u32::MAX - 1;

/// Ledgers in one Tally instance; ledger indices are `u32` and each ledger owns an external account.
pub const LEDGERS_MAX: u32 = 1 << 20;

/// Positions fit in 56 bits so that a remembered outcome packs position and tag into one `u64`.
pub const POSITION_MAX: u64 = (1 << 56) - 1;

/// Latest batch timestamp, in nanoseconds since the Unix epoch: `i64::MAX` (the year 2262), as
/// most time libraries bound it. The engine's clock gives each batch at least the last one plus
/// one nanosecond, so a state read back from disk must leave room for that.
pub const TIMESTAMP_NS_MAX: u64 = i64::MAX as u64;

const _: () = assert!(LEDGERS_MAX < ACCOUNTS_MAX);
const _: () = assert!(ID_BYTES_MAX <= u8::MAX as usize);
