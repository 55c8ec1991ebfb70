//! Request-time verification: trusted public keys, and a bounded cache of verified tokens.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use pasetors::keys::AsymmetricPublicKey;
use pasetors::version4::{PublicToken, V4};

use crate::claims;
use crate::error::UnauthorizedReason as Reason;
use crate::keys;
use crate::limits::{CACHE_SHARDS, CACHE_SHARD_ENTRIES_MAX, CLOCK_SKEW_MAX, TOKEN_BYTES_MAX};
use crate::{AuthError, Principal, Unauthorized};

/// The revocation check: given a token id, whether it is revoked. Called on every
/// verification, cache hits included, so it must be cheap (a set lookup).
pub type RevocationCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Checks tokens against the trusted public keys of `DATA_DIR/keys/`, with no network and
/// no disk access per request. Clones share keys and cache.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    revoked: RevocationCheck,
    keys: RwLock<Arc<TrustedKeys>>,
    cache: Cache,
    /// The key files last loaded; held for the whole of a reload, so reloads never interleave.
    fingerprint: Mutex<Fingerprint>,
}

type Fingerprint = Vec<(String, u64, u64, SystemTime)>;

struct TrustedKeys {
    /// Bumped by every reload; the cache only accepts entries verified with the current set.
    generation: u64,
    by_id: HashMap<String, AsymmetricPublicKey<V4>>,
}

impl Verifier {
    /// Trusts every public key in `DATA_DIR/keys/`. Fails when there is none: a server that
    /// can authenticate nobody is misconfigured.
    pub fn load(data_dir: &Path, revoked: RevocationCheck) -> Result<Verifier, AuthError> {
        let dir = keys::keys_dir(data_dir);
        let fingerprint = keys::fingerprint(&dir)?;
        let by_id = keys::read_public_keys(&dir)?;
        if by_id.is_empty() {
            return Err(AuthError::NotInitialized { dir });
        }
        tracing::info!(keys = by_id.len(), dir = %dir.display(), "loaded trusted keys");
        Ok(Verifier {
            inner: Arc::new(Inner {
                dir,
                revoked,
                keys: RwLock::new(Arc::new(TrustedKeys {
                    generation: 0,
                    by_id,
                })),
                cache: Cache::new(CACHE_SHARD_ENTRIES_MAX),
                fingerprint: Mutex::new(fingerprint),
            }),
        })
    }

    /// Checks a token (the text after `Bearer `) and returns who it belongs to. Every refusal
    /// is a 401; scope and restriction checks (403) are the caller's, on the [`Principal`].
    pub fn verify(&self, token: &str) -> Result<Principal, Unauthorized> {
        if token.len() > TOKEN_BYTES_MAX {
            // Before hashing: an oversized header must not cost more than a rejection.
            return Err(Unauthorized::new(Reason::Malformed("token too long")));
        }
        let now = SystemTime::now();
        let inner = &*self.inner;
        let hash = inner.cache.hash(token);
        let principal = match inner.cache.get(hash, token) {
            Some(principal) => principal,
            None => {
                let keys = Arc::clone(&inner.keys.read().expect("keys lock poisoned"));
                let principal = verify_uncached(&keys, token, now)?;
                inner
                    .cache
                    .insert(hash, token, principal.clone(), keys.generation);
                principal
            }
        };
        // Expiry and revocation change while a token sits in the cache, so they are checked
        // on every call rather than once at insertion.
        if now >= principal.expires_at() {
            return Err(Unauthorized::with_token_id(
                Reason::Expired,
                principal.token_id(),
            ));
        }
        if (inner.revoked)(principal.token_id()) {
            return Err(Unauthorized::with_token_id(
                Reason::Revoked,
                principal.token_id(),
            ));
        }
        Ok(principal)
    }

    /// Re-reads the trusted public keys when a `.pub` file was added, removed or replaced;
    /// returns whether it did. On a change the cache is emptied, so tokens of a retired key
    /// are refused from the next request on. The server calls this every second.
    ///
    /// On error the previous keys stay in force.
    pub fn reload_if_changed(&self) -> Result<bool, AuthError> {
        let inner = &*self.inner;
        let mut fingerprint = inner.fingerprint.lock().expect("fingerprint lock poisoned");
        let current = keys::fingerprint(&inner.dir)?;
        if current == *fingerprint {
            return Ok(false);
        }
        let by_id = keys::read_public_keys(&inner.dir)?;
        if by_id.is_empty() {
            tracing::warn!(dir = %inner.dir.display(), "no trusted keys left: every token will be refused");
        }
        let mut ids: Vec<&str> = by_id.keys().map(String::as_str).collect();
        ids.sort_unstable();
        tracing::info!(keys = ?ids, "reloaded trusted keys");
        let generation = {
            let mut keys = inner.keys.write().expect("keys lock poisoned");
            let generation = keys.generation + 1;
            *keys = Arc::new(TrustedKeys { generation, by_id });
            generation
        };
        // After the swap: a verification that started with the old keys carries the old
        // generation, and the cache refuses its entry.
        inner.cache.clear(generation);
        *fingerprint = current;
        Ok(true)
    }

    /// The ids of the trusted keys, sorted, for status pages.
    pub fn trusted_key_ids(&self) -> Vec<String> {
        let keys = Arc::clone(&self.inner.keys.read().expect("keys lock poisoned"));
        let mut ids: Vec<String> = keys.by_id.keys().cloned().collect();
        ids.sort_unstable();
        ids
    }

    /// Tokens currently cached, for a metrics gauge; never above
    /// [`CACHE_ENTRIES_MAX`](crate::limits::CACHE_ENTRIES_MAX).
    pub fn cache_entries(&self) -> usize {
        self.inner.cache.len()
    }

    /// Forgets every cached verification; the next request with each token pays the full
    /// cost again. Not needed for revocation, which is checked on every call.
    pub fn clear_cache(&self) {
        let generation = self
            .inner
            .keys
            .read()
            .expect("keys lock poisoned")
            .generation;
        self.inner.cache.clear(generation);
    }
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("dir", &self.inner.dir)
            .field("trusted_key_ids", &self.trusted_key_ids())
            .field("cache_entries", &self.cache_entries())
            .finish_non_exhaustive()
    }
}

/// The full check, minus expiry and revocation (which `verify` does for hits and misses).
fn verify_uncached(
    keys: &TrustedKeys,
    token: &str,
    now: SystemTime,
) -> Result<Principal, Unauthorized> {
    let malformed = |why| Unauthorized::new(Reason::Malformed(why));
    let untrusted = claims::parse_untrusted(token).map_err(malformed)?;
    let key_id = claims::decode_footer(untrusted.untrusted_footer()).map_err(malformed)?;
    let Some(public_key) = keys.by_id.get(&key_id) else {
        return Err(Unauthorized::new(Reason::UnknownKey));
    };
    let trusted = PublicToken::verify(public_key, &untrusted, None, None)
        .map_err(|_| Unauthorized::new(Reason::BadSignature))?;
    // Only now is the payload trustworthy: decoding it earlier would let a forger probe the
    // parser with claims of their choosing.
    let claims = claims::decode_payload(trusted.payload().as_bytes(), key_id).map_err(malformed)?;
    if claims.issued_at > now + CLOCK_SKEW_MAX {
        return Err(Unauthorized::with_token_id(
            Reason::IssuedInFuture,
            &claims.token_id,
        ));
    }
    Ok(Principal::from_claims(claims))
}

/// Verified tokens by a keyed hash of their text, split into shards that each hold at most
/// `shard_entries_max` entries.
///
/// The hash is SipHash with a per-process random key (std's `RandomState`), so no one can
/// aim tokens at one shard or make two tokens collide on purpose. A hit still compares the
/// whole token in constant time: a collision, however unlikely, is a miss and never an
/// impersonation, and the comparison leaks no prefix of a valid token through timing.
///
/// Eviction, when a shard is full: drop its expired entries; if none expired, drop about an
/// eighth of the shard chosen at random (the keys are random hashes, so a bit test on them
/// is a random sample). That costs one pass over the shard per eighth of its capacity, and
/// unlike clearing everything it keeps most hot tokens cached under churn.
struct Cache {
    shards: Box<[RwLock<Shard>]>,
    hasher: RandomState,
    shard_entries_max: usize,
}

struct Shard {
    generation: u64,
    entries: HashMap<u64, Entry, BuildHasherDefault<IdentityHasher>>,
}

struct Entry {
    token: Box<str>,
    principal: Principal,
}

impl Cache {
    fn new(shard_entries_max: usize) -> Cache {
        assert!(shard_entries_max > 0);
        let shards = (0..CACHE_SHARDS)
            .map(|_| {
                RwLock::new(Shard {
                    generation: 0,
                    entries: HashMap::default(),
                })
            })
            .collect();
        Cache {
            shards,
            hasher: RandomState::new(),
            shard_entries_max,
        }
    }

    fn hash(&self, token: &str) -> u64 {
        self.hasher.hash_one(token)
    }

    fn shard(&self, hash: u64) -> &RwLock<Shard> {
        // Mixed before taking the top bits: the map's probing uses the hash's own top and low
        // bits, which would be constant within a shard if they also picked it.
        let mixed = hash.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        &self.shards[(mixed >> (64 - CACHE_SHARDS.trailing_zeros())) as usize]
    }

    fn get(&self, hash: u64, token: &str) -> Option<Principal> {
        let shard = self.shard(hash).read().expect("cache lock poisoned");
        let entry = shard.entries.get(&hash)?;
        constant_time_eq(entry.token.as_bytes(), token.as_bytes()).then(|| entry.principal.clone())
    }

    fn insert(&self, hash: u64, token: &str, principal: Principal, generation: u64) {
        let mut shard = self.shard(hash).write().expect("cache lock poisoned");
        if shard.generation != generation {
            return; // Verified with keys that a reload has since replaced.
        }
        if shard.entries.len() >= self.shard_entries_max && !shard.entries.contains_key(&hash) {
            evict(&mut shard.entries, self.shard_entries_max);
        }
        shard.entries.insert(
            hash,
            Entry {
                token: token.into(),
                principal,
            },
        );
        assert!(shard.entries.len() <= self.shard_entries_max);
    }

    fn clear(&self, generation: u64) {
        for shard in self.shards.iter() {
            let mut shard = shard.write().expect("cache lock poisoned");
            shard.entries.clear();
            shard.generation = generation;
        }
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().expect("cache lock poisoned").entries.len())
            .sum()
    }
}

fn evict(
    entries: &mut HashMap<u64, Entry, BuildHasherDefault<IdentityHasher>>,
    entries_max: usize,
) {
    let now = SystemTime::now();
    entries.retain(|_, entry| entry.principal.expires_at() > now);
    if entries.len() < entries_max {
        return;
    }
    let salt: u64 = rand::random();
    entries.retain(|hash, _| (hash ^ salt) & 7 != 0);
    if entries.len() >= entries_max {
        // Only when the random draw spared everything, which a tiny shard makes possible.
        let any = *entries.keys().next().expect("a full shard has an entry");
        entries.remove(&any);
    }
}

/// Whether two byte strings are equal, in time that depends on their length only, not on
/// where they differ: the cached token is a live credential, and an early-exit comparison
/// would let a caller learn it byte by byte from response times. Lengths are not secret
/// (a token's length follows from its public claims). `subtle` would do this, but it is not
/// a workspace dependency; `black_box` keeps the optimiser from turning the loop back into
/// an early exit.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut difference = 0u8;
    for (x, y) in a.iter().zip(b) {
        difference |= std::hint::black_box(x ^ y);
    }
    difference == 0
}

/// The cache keys are already SipHash outputs; hashing them again would only cost time.
#[derive(Default)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, _bytes: &[u8]) {
        unreachable!("the cache only hashes u64 keys");
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Claims, Scope};
    use std::time::Duration;

    fn principal(token_id: u128, expires_at: SystemTime) -> Principal {
        Principal::from_claims(Claims {
            token_id: format!("{token_id:032x}"),
            subject: "s".to_owned(),
            scopes: vec![Scope::Read],
            ledgers: vec![],
            accounts: vec![],
            issued_at: SystemTime::UNIX_EPOCH,
            expires_at,
            key_id: "0011223344556677".to_owned(),
        })
    }

    #[test]
    fn cache_hit_needs_the_whole_token() {
        let cache = Cache::new(4);
        let later = SystemTime::now() + Duration::from_secs(60);
        let hash = cache.hash("token-a");
        cache.insert(hash, "token-a", principal(1, later), 0);
        assert_eq!(
            cache.get(hash, "token-a").map(|p| p.token_id().to_owned()),
            Some(format!("{:032x}", 1))
        );
        // A colliding hash with different text is a miss.
        assert!(cache.get(hash, "token-b").is_none());
        assert!(cache.get(hash, "token-a ").is_none());
    }

    #[test]
    fn cache_stays_bounded() {
        let cache = Cache::new(8);
        let later = SystemTime::now() + Duration::from_secs(60);
        for i in 0..10_000u128 {
            let token = format!("token-{i}");
            cache.insert(cache.hash(&token), &token, principal(i, later), 0);
            assert!(cache.len() <= 8 * CACHE_SHARDS);
        }
        // Most recent insert always survives.
        assert!(cache.get(cache.hash("token-9999"), "token-9999").is_some());
    }

    #[test]
    fn eviction_prefers_expired_entries() {
        let cache = Cache::new(8);
        let now = SystemTime::now();
        let mut live = Vec::new();
        for i in 0..2_000u128 {
            let token = format!("token-{i}");
            let expires_at = if i % 2 == 0 {
                now + Duration::from_secs(60)
            } else {
                now - Duration::from_secs(1)
            };
            cache.insert(cache.hash(&token), &token, principal(i, expires_at), 0);
            if i % 2 == 0 {
                live.push(token);
            }
        }
        let cached_live = live
            .iter()
            .filter(|t| cache.get(cache.hash(t), t).is_some())
            .count();
        assert!(cached_live > 0);
    }

    #[test]
    fn stale_generation_is_not_cached() {
        let cache = Cache::new(8);
        let later = SystemTime::now() + Duration::from_secs(60);
        cache.clear(1);
        let hash = cache.hash("t");
        cache.insert(hash, "t", principal(1, later), 0);
        assert!(cache.get(hash, "t").is_none());
        cache.insert(hash, "t", principal(1, later), 1);
        assert!(cache.get(hash, "t").is_some());
        cache.clear(2);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"xbc", b"abc"));
    }
}
