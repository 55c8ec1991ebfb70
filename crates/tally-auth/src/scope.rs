//! Scopes and the verified identity a request carries.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::SystemTime;

use crate::AuthError;

/// What a token lets its holder do. `admin` implies every other scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Every other scope, plus administration (such as revoking tokens).
    Admin,
    /// Commands: anything that appends events.
    Write,
    /// Queries and the event feed.
    Read,
    /// Status, metrics, verify and rebuild.
    Operator,
}

/// A verified token's identity and rights: what a request carries after
/// [`Verifier::verify`](crate::Verifier::verify). Clones share one allocation.
///
/// There is no public constructor: holding a `Principal` is proof that a token verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    inner: Arc<PrincipalInner>,
}

#[derive(Debug, PartialEq, Eq)]
struct PrincipalInner {
    token_id: String,
    subject: String,
    scopes: ScopeSet,
    ledgers: Vec<String>,
    accounts: Vec<String>,
    expires_at: SystemTime,
    key_id: String,
}

impl Scope {
    /// Every scope, in a fixed order.
    pub const ALL: [Scope; 4] = [Scope::Admin, Scope::Write, Scope::Read, Scope::Operator];

    /// The scope's name, as written in tokens and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::Write => "write",
            Scope::Read => "read",
            Scope::Operator => "operator",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Scope::Admin => 1,
            Scope::Write => 2,
            Scope::Read => 4,
            Scope::Operator => 8,
        }
    }
}

impl FromStr for Scope {
    type Err = AuthError;

    fn from_str(text: &str) -> Result<Scope, AuthError> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == text)
            .ok_or_else(|| AuthError::UnknownScope {
                scope: text.to_owned(),
            })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Principal {
    /// Whether the token grants `scope`, directly or through `admin`.
    pub fn allows(&self, scope: Scope) -> bool {
        self.inner.scopes.allows(scope)
    }

    /// Whether the token may touch `ledger`: true when it is not restricted to ledgers.
    pub fn allows_ledger(&self, ledger: &str) -> bool {
        self.inner.ledgers.is_empty() || self.inner.ledgers.iter().any(|l| l == ledger)
    }

    /// Whether the token may touch `account`: true when it is not restricted to accounts.
    pub fn allows_account(&self, account: &str) -> bool {
        self.inner.accounts.is_empty() || self.inner.accounts.iter().any(|a| a == account)
    }

    /// Whether the token is restricted to some ledgers or some accounts. Requests that span
    /// every ledger (the whole event feed, a rebuild) should refuse restricted principals.
    pub fn is_restricted(&self) -> bool {
        !self.inner.ledgers.is_empty() || !self.inner.accounts.is_empty()
    }

    /// The token id (`jti`), the handle for revocation.
    pub fn token_id(&self) -> &str {
        &self.inner.token_id
    }

    /// Who the token was issued to (`sub`).
    pub fn subject(&self) -> &str {
        &self.inner.subject
    }

    /// The scopes granted, in [`Scope::ALL`] order, without duplicates.
    pub fn scopes(&self) -> Vec<Scope> {
        self.inner.scopes.to_vec()
    }

    /// The ledgers the token is restricted to; empty means any.
    pub fn ledgers(&self) -> &[String] {
        &self.inner.ledgers
    }

    /// The accounts the token is restricted to; empty means any.
    pub fn accounts(&self) -> &[String] {
        &self.inner.accounts
    }

    /// When the token expires.
    pub fn expires_at(&self) -> SystemTime {
        self.inner.expires_at
    }

    /// The id of the key that signed the token.
    pub fn key_id(&self) -> &str {
        &self.inner.key_id
    }

    pub(crate) fn from_claims(claims: crate::Claims) -> Principal {
        Principal {
            inner: Arc::new(PrincipalInner {
                scopes: ScopeSet::from_scopes(&claims.scopes),
                token_id: claims.token_id,
                subject: claims.subject,
                ledgers: claims.ledgers,
                accounts: claims.accounts,
                expires_at: claims.expires_at,
                key_id: claims.key_id,
            }),
        }
    }
}

/// Scopes as bits, so that [`Principal::allows`] is one AND.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ScopeSet(u8);

impl ScopeSet {
    fn from_scopes(scopes: &[Scope]) -> ScopeSet {
        ScopeSet(scopes.iter().fold(0, |bits, scope| bits | scope.bit()))
    }

    fn allows(self, scope: Scope) -> bool {
        self.0 & (Scope::Admin.bit() | scope.bit()) != 0
    }

    fn to_vec(self) -> Vec<Scope> {
        Scope::ALL
            .into_iter()
            .filter(|scope| self.0 & scope.bit() != 0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Claims;

    fn principal(scopes: &[Scope], ledgers: &[&str], accounts: &[&str]) -> Principal {
        Principal::from_claims(Claims {
            token_id: "00".repeat(16),
            subject: "ci".to_owned(),
            scopes: scopes.to_vec(),
            ledgers: ledgers.iter().map(|s| s.to_string()).collect(),
            accounts: accounts.iter().map(|s| s.to_string()).collect(),
            issued_at: SystemTime::UNIX_EPOCH,
            expires_at: SystemTime::UNIX_EPOCH,
            key_id: "00".repeat(8),
        })
    }

    #[test]
    fn admin_implies_every_scope() {
        let admin = principal(&[Scope::Admin], &[], &[]);
        for scope in Scope::ALL {
            assert!(admin.allows(scope));
        }
    }

    #[test]
    fn scopes_do_not_imply_each_other() {
        for granted in [Scope::Write, Scope::Read, Scope::Operator] {
            let p = principal(&[granted], &[], &[]);
            for scope in Scope::ALL {
                assert_eq!(
                    p.allows(scope),
                    scope == granted,
                    "{granted} allows {scope}"
                );
            }
        }
        let p = principal(&[Scope::Read, Scope::Write, Scope::Read], &[], &[]);
        assert_eq!(p.scopes(), vec![Scope::Write, Scope::Read]);
        assert!(!p.allows(Scope::Admin));
    }

    #[test]
    fn empty_restrictions_mean_any() {
        let p = principal(&[Scope::Read], &[], &[]);
        assert!(!p.is_restricted());
        assert!(p.allows_ledger("usd"));
        assert!(p.allows_account("alice"));
    }

    #[test]
    fn restrictions_are_independent() {
        let p = principal(&[Scope::Read], &["usd"], &[]);
        assert!(p.is_restricted());
        assert!(p.allows_ledger("usd"));
        assert!(!p.allows_ledger("eur"));
        assert!(!p.allows_ledger(""));
        assert!(p.allows_account("alice"));

        let p = principal(&[Scope::Read], &[], &["alice", "bob"]);
        assert!(p.is_restricted());
        assert!(p.allows_ledger("eur"));
        assert!(p.allows_account("bob"));
        assert!(!p.allows_account("carol"));
    }

    #[test]
    fn scope_names_round_trip() {
        for scope in Scope::ALL {
            assert_eq!(scope.to_string().parse::<Scope>().unwrap(), scope);
        }
        for bad in ["", "Admin", "ADMIN", "readwrite", " read"] {
            assert!(
                matches!(bad.parse::<Scope>(), Err(AuthError::UnknownScope { .. })),
                "{bad:?}"
            );
        }
    }
}
