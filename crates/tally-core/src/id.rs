//! Validated client ids and ledger codes.
//!
//! Ids are strings of 1–128 characters from `[A-Za-z0-9._:-]`. Validation happens once, when an
//! [`Id`] is built, so every function that takes an `Id` can rely on it.

use std::fmt;
use std::sync::Arc;

use crate::limits::{ID_BYTES_MAX, LEDGER_CODE_BYTES_MAX};

/// A client-chosen id of an account or a transfer.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(Box<str>);

/// A ledger code: a currency or asset such as `USD`. Cheap to clone, as replies carry it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LedgerCode(Arc<str>);

/// Why a string is not a valid id or ledger code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The string is empty.
    #[error("must not be empty")]
    Empty,
    /// The string is longer than the limit.
    #[error("must be at most {max} characters, found {found}")]
    TooLong {
        /// The limit.
        max: usize,
        /// The length found.
        found: usize,
    },
    /// The string holds a character outside `[A-Za-z0-9._:-]`.
    #[error("may only contain A-Z, a-z, 0-9, '.', '_', ':' and '-', found {found:?}")]
    BadCharacter {
        /// The first offending character.
        found: char,
    },
}

fn validate(text: &str, max: usize) -> Result<(), IdError> {
    if text.is_empty() {
        return Err(IdError::Empty);
    }
    // The alphabet first: what passes it is ASCII, so bytes and characters agree below.
    let allowed = |c: &char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-');
    if let Some(found) = text.chars().find(|c| !allowed(c)) {
        return Err(IdError::BadCharacter { found });
    }
    if text.len() > max {
        return Err(IdError::TooLong {
            max,
            found: text.len(),
        });
    }
    Ok(())
}

impl Id {
    /// Validates `text` as an id.
    pub fn new(text: &str) -> Result<Id, IdError> {
        validate(text, ID_BYTES_MAX)?;
        Ok(Id(text.into()))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 128-bit hash the ledger remembers the id by. Stable across releases: it is persisted.
    pub fn hash128(&self) -> u128 {
        hash128(self.as_str())
    }
}

/// The 128-bit hash of an id string, as [`Id::hash128`] computes it.
pub fn hash128(text: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(text.as_bytes())
}

impl LedgerCode {
    /// Validates `text` as a ledger code (the id alphabet, at most 32 characters).
    pub fn new(text: &str) -> Result<LedgerCode, IdError> {
        validate(text, LEDGER_CODE_BYTES_MAX)?;
        Ok(LedgerCode(text.into()))
    }

    /// The code as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! string_like {
    ($name:ident) => {
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}
string_like!(Id);
string_like!(LedgerCode);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        assert!(Id::new("Az09._:-").is_ok());
        assert!(Id::new(&"a".repeat(128)).is_ok());
    }

    #[test]
    fn rejects_everything_else() {
        assert_eq!(Id::new(""), Err(IdError::Empty));
        assert_eq!(
            Id::new(&"a".repeat(129)),
            Err(IdError::TooLong {
                max: 128,
                found: 129
            })
        );
        assert_eq!(Id::new("a b"), Err(IdError::BadCharacter { found: ' ' }));
        assert_eq!(Id::new("é"), Err(IdError::BadCharacter { found: 'é' }));
        assert!(LedgerCode::new(&"A".repeat(33)).is_err());
    }
}
