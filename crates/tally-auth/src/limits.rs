//! Every limit of the auth crate in one place, each with the reason it exists.

use std::time::Duration;

/// Verified tokens remembered by one [`Verifier`](crate::Verifier). A hit costs a hash and a
/// constant-time compare instead of an Ed25519 verification; 10,000 covers every client of a
/// busy instance while bounding memory (see [`TOKEN_BYTES_MAX`] for the worst case per entry).
pub const CACHE_ENTRIES_MAX: usize = 10_000;

/// Independent locks the cache is split into, so that concurrent misses inserting entries do
/// not serialise every request behind one lock. A power of two: the shard is picked by bits.
pub const CACHE_SHARDS: usize = 16;

/// Entries per shard; the cache as a whole never holds more than [`CACHE_ENTRIES_MAX`].
pub const CACHE_SHARD_ENTRIES_MAX: usize = CACHE_ENTRIES_MAX / CACHE_SHARDS;

/// Longest token lifetime: 400 days, so a forgotten token expires within about a year and a
/// month. Tokens claiming a longer lifetime are refused as malformed, even when signed.
pub const TOKEN_TTL_MAX: Duration = Duration::from_secs(400 * 24 * 60 * 60);

/// How far in the future a token's issue time may be: clocks of the issuing machine and the
/// server disagree a little, but a token "issued" next week was not issued by us.
pub const CLOCK_SKEW_MAX: Duration = Duration::from_secs(5 * 60);

/// Longest subject, ledger id or account id in a token, in bytes. Matches the id bound of
/// `tally-core` (`ID_BYTES_MAX`), which this crate does not depend on.
pub const ID_BYTES_MAX: usize = 128;

/// Ledgers one token may be restricted to. Restricted tokens are handed to narrow clients; a
/// token needing more is better issued unrestricted, and the bound keeps tokens small.
pub const TOKEN_LEDGERS_MAX: usize = 16;

/// Accounts one token may be restricted to, for the same reason as [`TOKEN_LEDGERS_MAX`].
pub const TOKEN_ACCOUNTS_MAX: usize = 16;

/// Longest token accepted, in bytes. Checked before any decoding, so it bounds the work an
/// unauthenticated request can cause, and it bounds each cache entry. A token with every
/// field at its maximum stays below it (see the assertion below); typical tokens are under
/// 500 bytes, so a full cache typically holds about 10 MB.
pub const TOKEN_BYTES_MAX: usize = 16 * 1024;

/// Trusted public keys in one key directory. Rotation keeps two or three alive at a time;
/// the bound keeps a reload cheap and a misconfigured directory from being loaded whole.
pub const KEYS_MAX: usize = 64;

/// Longest key file, in bytes. A PASERK key is under 100 bytes; anything larger is not ours.
pub const KEY_FILE_BYTES_MAX: u64 = 1024;

/// Random bytes in a key id (shown as twice as many hex digits): enough that two keys of one
/// directory never collide, short enough to read out loud during a rotation.
pub const KEY_ID_BYTES: usize = 8;

/// Random bytes in a token id (shown as twice as many hex digits): 128 bits, so ids are unique
/// without coordination and can be used as revocation keys.
pub const TOKEN_ID_BYTES: usize = 16;

/// Upper bound of the JSON payload of a token with every field at its maximum. Each quoted id
/// costs its bytes, two quotes and a comma; ids may not contain control characters, so JSON
/// escaping at most doubles their bytes (`"` and `\`).
const PAYLOAD_BYTES_MAX: usize = 256 // Field names, punctuation, times, token id and scopes.
    + (1 + TOKEN_LEDGERS_MAX + TOKEN_ACCOUNTS_MAX) * (2 * ID_BYTES_MAX + 3);

/// The signed part is base64 of payload plus a 64-byte signature; the footer is small.
const TOKEN_BYTES_ESTIMATE: usize =
    "v4.public.".len() + (PAYLOAD_BYTES_MAX + 64).div_ceil(3) * 4 + 64;

const _: () = assert!(TOKEN_BYTES_ESTIMATE <= TOKEN_BYTES_MAX);
const _: () = assert!(CACHE_SHARDS.is_power_of_two());
const _: () = assert!(CACHE_SHARD_ENTRIES_MAX * CACHE_SHARDS <= CACHE_ENTRIES_MAX);
const _: () = assert!(CACHE_SHARD_ENTRIES_MAX > 0);
const _: () = assert!(CLOCK_SKEW_MAX.as_secs() < TOKEN_TTL_MAX.as_secs());
