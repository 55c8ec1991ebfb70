//! Authentication for Tally: signing keys, bearer tokens, and their verification.
//!
//! Tally checks every credential itself, with no network call per request, and still
//! supports key rotation and token revocation. Tokens are [PASETO] `v4.public` tokens: an
//! Ed25519 signature over JSON claims (token id, subject, scopes, optional ledger and account
//! restrictions, issue and expiry times), with the signing key's id in the footer.
//!
//! Main types:
//!
//! - [`KeyRing`]: the key directory `DATA_DIR/keys/` (`tally keys init|rotate|retire|list`)
//!   and token issuing ([`KeyRing::issue`]).
//! - [`Verifier`]: what the server holds. It trusts every public key of the directory,
//!   verifies a token into a [`Principal`] or an [`Unauthorized`] (401), caches results, and
//!   picks up added or retired keys with [`Verifier::reload_if_changed`].
//! - [`Principal`]: who a request is; [`Principal::allows`] and friends decide 403s.
//! - [`inspect`]: decodes a token without verifying it, for humans.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use tally_auth::{IssueRequest, KeyRing, Scope, Verifier};
//!
//! let data_dir = tempfile::tempdir()?;
//! KeyRing::init(data_dir.path())?;
//! let (token, _claims) = KeyRing::issue(data_dir.path(), IssueRequest {
//!     subject: "billing-service".to_owned(),
//!     scopes: vec![Scope::Write],
//!     ledgers: vec!["usd".to_owned()],
//!     accounts: vec![],
//!     ttl: Duration::from_secs(3600),
//! })?;
//!
//! let verifier = Verifier::load(data_dir.path(), Arc::new(|_token_id: &str| false))?;
//! let principal = verifier.verify(&token).expect("a fresh token verifies");
//! assert!(principal.allows(Scope::Write) && !principal.allows(Scope::Read));
//! assert!(principal.allows_ledger("usd") && !principal.allows_ledger("eur"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Why PASETO v4.public: it is a standard, versioned, misuse-resistant format. The version
//! fixes the algorithm (Ed25519), so there is no algorithm negotiation to attack, unlike
//! JWT's `alg` header (`none`, or HMAC keyed with a public key). Biscuit would add attenuation
//! and a Datalog policy language that Tally does not need; our restrictions are two lists.
//! Public-key signatures mean the server holds only public keys: a stolen server disk issues
//! no tokens.
//!
//! Rotation: `rotate` adds a key pair and makes it the signing key while every older public
//! key stays trusted; once tokens of the old key have expired or been reissued, `retire`
//! removes it, and running servers notice within a reload period. Revocation: the server
//! passes a check on token ids, consulted on every request, cache hits included.
//!
//! Cost: an Ed25519 verification is tens of microseconds, so verified tokens are cached,
//! bounded by [`limits::CACHE_ENTRIES_MAX`]; a hit costs a keyed hash, a constant-time
//! comparison of the whole token, an expiry check and the revocation check.
//!
//! [PASETO]: https://github.com/paseto-standard/paseto-spec

#![deny(missing_docs)]

mod claims;
mod error;
mod keys;
pub mod limits;
mod scope;
mod verify;

pub use claims::{inspect, Claims};
pub use error::{AuthError, Unauthorized, UnauthorizedReason};
pub use keys::{write_secret_file, IssueRequest, KeyId, KeyInfo, KeyRing};
pub use scope::{Principal, Scope};
pub use verify::{RevocationCheck, Verifier};
