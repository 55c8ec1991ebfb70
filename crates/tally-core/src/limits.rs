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

/// Campaigns in one Tally instance. Each keeps its definition (up to
/// [`CAMPAIGN_SPEC_BYTES_MAX`]) in memory, so the bound caps that memory at about 1 GiB in the
/// worst case; real deployments run a handful of campaigns at a time.
pub const CAMPAIGNS_MAX: usize = 4096;

/// Longest campaign id, in bytes: the pool account's id `tally:pool:{campaign}` must be an id
/// ([`ID_BYTES_MAX`]), and so must the funding deposit's `tally:fund:{campaign}`.
pub const CAMPAIGN_ID_BYTES_MAX: usize = ID_BYTES_MAX - "tally:pool:".len();

/// Largest stored campaign definition, in bytes: the spec's own bound (a campaign file or
/// request body), so that every accepted spec fits.
pub const CAMPAIGN_SPEC_BYTES_MAX: usize = 256 * 1024;

/// UTC offset changes one campaign carries. Tally's clock spans 1970–2262, about 600 daylight
/// saving changes in the zones that change most, so every real window fits.
pub const CAMPAIGN_OFFSET_CHANGES_MAX: usize = 1024;

/// Largest UTC offset, in seconds: jiff's bound (25:59:59), above every zone in use.
pub const UTC_OFFSET_SECONDS_MAX: u32 = 26 * 60 * 60 - 1;

/// Claims remembered, over every campaign. Every claim stays in memory (for its order id's
/// idempotency and the limits), about 100 bytes each with its order id: 1.6 GiB at the bound.
pub const CLAIMS_MAX: usize = 1 << 24;

/// Delivery attempts recorded for one claim: the dispatcher's retry policy allows at most 11 per
/// delivery; the rest is room for the retry queue's later rounds, bounded so that a runaway
/// worker is refused rather than counting forever.
pub const CLAIM_ATTEMPTS_MAX: u32 = 10_000;

const _: () = assert!(CAMPAIGN_ID_BYTES_MAX + "tally:fund:".len() <= ID_BYTES_MAX);
