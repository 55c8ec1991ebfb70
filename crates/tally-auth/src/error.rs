//! The crate's one error type, and the refusal a request gets.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Everything that can go wrong managing keys and issuing or decoding tokens.
///
/// Request-time failures are not `AuthError`s: [`Verifier::verify`](crate::Verifier::verify)
/// returns [`Unauthorized`], which the server maps to 401.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// An operating-system I/O error.
    #[error("{op} {path}: {source}", path = path.display())]
    Io {
        /// What was being done, e.g. "fsync".
        op: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// `init` found a key directory that already holds keys.
    #[error("{dir} already holds keys: use `tally keys rotate` to add one", dir = dir.display())]
    AlreadyInitialized {
        /// The key directory.
        dir: PathBuf,
    },

    /// The key directory has no signing key (or no trusted key at all).
    #[error("no keys in {dir}: run `tally keys init` first", dir = dir.display())]
    NotInitialized {
        /// The key directory.
        dir: PathBuf,
    },

    /// No key with this id exists in the key directory.
    #[error("no key {key_id} in {dir}", dir = dir.display())]
    UnknownKey {
        /// The key id asked for.
        key_id: String,
        /// The key directory.
        dir: PathBuf,
    },

    /// The text is not a key id: key ids are lowercase hex of a fixed length.
    #[error("invalid key id {key_id:?}: expected {expected} lowercase hex digits")]
    InvalidKeyId {
        /// The text given.
        key_id: String,
        /// Hex digits a key id has.
        expected: usize,
    },

    /// Retiring the signing key would leave nothing to issue tokens with.
    #[error("key {key_id} is the signing key: run `tally keys rotate` before retiring it")]
    RetireSigningKey {
        /// The signing key's id.
        key_id: String,
    },

    /// A key file exists but cannot be used.
    #[error("key file {path}: {reason}", path = path.display())]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// What is wrong and what to do about it.
        reason: String,
    },

    /// The key directory holds more keys than [`KEYS_MAX`](crate::limits::KEYS_MAX).
    #[error("{dir} holds more than {max} keys: retire old ones", dir = dir.display())]
    TooManyKeys {
        /// The key directory.
        dir: PathBuf,
        /// The limit.
        max: usize,
    },

    /// A scope name that is not one of `admin`, `write`, `read`, `operator`.
    #[error("unknown scope {scope:?}: expected one of admin, write, read, operator")]
    UnknownScope {
        /// The text given.
        scope: String,
    },

    /// An [`IssueRequest`](crate::IssueRequest) breaks a rule (empty scopes, TTL too long...).
    #[error("invalid token request: {reason}")]
    InvalidRequest {
        /// The rule broken.
        reason: String,
    },

    /// The text is not a token of ours (for [`inspect`](crate::inspect)).
    #[error("malformed token: {reason}")]
    MalformedToken {
        /// What is wrong.
        reason: String,
    },

    /// The PASETO library refused to sign or generate a key.
    #[error("{op}: {reason}")]
    Crypto {
        /// What was being done, e.g. "sign token".
        op: &'static str,
        /// The library's error.
        reason: String,
    },
}

/// Why a request's credential was refused: every case is a 401 `unauthorized`.
///
/// [`Display`](fmt::Display) gives the reason, for the server's log; the client only ever
/// sees [`Unauthorized::client_message`], so that a caller probing with forged tokens learns
/// nothing about which check failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unauthorized {
    reason: UnauthorizedReason,
    token_id: Option<String>,
}

/// Which check refused a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnauthorizedReason {
    /// The request carried no token. The server constructs this one with
    /// [`Unauthorized::missing`]; [`Verifier::verify`](crate::Verifier::verify) never does.
    Missing,
    /// Not a PASETO v4.public token of ours, or its claims break a rule.
    Malformed(&'static str),
    /// The footer names a key this server does not trust (never trusted, or retired).
    UnknownKey,
    /// The signature does not match the trusted key the footer names.
    BadSignature,
    /// The token's expiry has passed.
    Expired,
    /// The token claims to be issued further in the future than clocks can disagree.
    IssuedInFuture,
    /// The revocation check refused the token id.
    Revoked,
}

impl Unauthorized {
    /// The refusal for a request that carried no token.
    pub fn missing() -> Unauthorized {
        Unauthorized {
            reason: UnauthorizedReason::Missing,
            token_id: None,
        }
    }

    /// The check that failed.
    pub fn reason(&self) -> UnauthorizedReason {
        self.reason
    }

    /// The token id, when the signature was valid (so the id is trustworthy for a log line).
    pub fn token_id(&self) -> Option<&str> {
        self.token_id.as_deref()
    }

    /// The one message a client gets, whatever the reason.
    pub fn client_message(&self) -> &'static str {
        "unauthorized"
    }

    pub(crate) fn new(reason: UnauthorizedReason) -> Unauthorized {
        Unauthorized {
            reason,
            token_id: None,
        }
    }

    pub(crate) fn with_token_id(reason: UnauthorizedReason, token_id: &str) -> Unauthorized {
        Unauthorized {
            reason,
            token_id: Some(token_id.to_owned()),
        }
    }
}

impl fmt::Display for Unauthorized {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unauthorized: {}", self.reason)?;
        if let Some(token_id) = &self.token_id {
            write!(f, " (token {token_id})")?;
        }
        Ok(())
    }
}

impl UnauthorizedReason {
    /// A short name that never changes, for metric labels and structured logs: `missing`,
    /// `malformed`, `unknown_key`, `bad_signature`, `expired`, `issued_in_future` or `revoked`.
    /// Unlike [`Display`](fmt::Display) it leaves out details, so that the set of values stays
    /// small and fixed.
    pub fn as_str(&self) -> &'static str {
        match self {
            UnauthorizedReason::Missing => "missing",
            UnauthorizedReason::Malformed(_) => "malformed",
            UnauthorizedReason::UnknownKey => "unknown_key",
            UnauthorizedReason::BadSignature => "bad_signature",
            UnauthorizedReason::Expired => "expired",
            UnauthorizedReason::IssuedInFuture => "issued_in_future",
            UnauthorizedReason::Revoked => "revoked",
        }
    }
}

impl fmt::Display for UnauthorizedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnauthorizedReason::Missing => f.write_str("no token"),
            UnauthorizedReason::Malformed(why) => write!(f, "malformed token: {why}"),
            UnauthorizedReason::UnknownKey => f.write_str("token signed by an untrusted key id"),
            UnauthorizedReason::BadSignature => f.write_str("bad token signature"),
            UnauthorizedReason::Expired => f.write_str("token expired"),
            UnauthorizedReason::IssuedInFuture => f.write_str("token issued in the future"),
            UnauthorizedReason::Revoked => f.write_str("token revoked"),
        }
    }
}

impl std::error::Error for Unauthorized {}

pub(crate) fn io_error(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> AuthError {
    let path = path.into();
    move |source| AuthError::Io { op, path, source }
}

#[cfg(test)]
mod tests {
    use super::UnauthorizedReason as Reason;

    /// The names label metric series: distinct, and plain snake case in any Prometheus tool.
    #[test]
    fn reason_names_are_distinct_snake_case() {
        let reasons = [
            Reason::Missing,
            Reason::Malformed("a detail that must not leak into the name"),
            Reason::UnknownKey,
            Reason::BadSignature,
            Reason::Expired,
            Reason::IssuedInFuture,
            Reason::Revoked,
        ];
        let names: std::collections::BTreeSet<&str> =
            reasons.iter().map(|reason| reason.as_str()).collect();
        assert_eq!(names.len(), reasons.len(), "{names:?}");
        for name in names {
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{name}"
            );
        }
    }
}
