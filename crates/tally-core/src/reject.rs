//! Why the ledger refuses a well-formed command: stable codes that clients can match on.

/// A refusal decided against the ledger's state. The byte values are persisted in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectCode {
    /// A referenced account or pending transfer does not exist.
    NotFound,
    /// The debit account would go below zero and does not allow overdraft.
    InsufficientFunds,
    /// The two accounts belong to different ledgers.
    LedgerMismatch,
    /// The referenced pending transfer was already posted, voided or expired.
    AlreadyResolved,
    /// The referenced transfer is not a pending transfer.
    NotPending,
    /// A post asks for more than the pending transfer reserved.
    ExceedsPendingAmount,
    /// An account's debits or credits would exceed what a u64 holds.
    Overflow,
    /// Another transfer of the same atomic batch failed, so this one was not applied.
    LinkedFailed,
}

impl RejectCode {
    /// Every code, for tests and documentation.
    pub const ALL: [RejectCode; 8] = [
        RejectCode::NotFound,
        RejectCode::InsufficientFunds,
        RejectCode::LedgerMismatch,
        RejectCode::AlreadyResolved,
        RejectCode::NotPending,
        RejectCode::ExceedsPendingAmount,
        RejectCode::Overflow,
        RejectCode::LinkedFailed,
    ];

    /// The stable code of the API's error body.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::NotFound => "not_found",
            RejectCode::InsufficientFunds => "insufficient_funds",
            RejectCode::LedgerMismatch => "ledger_mismatch",
            RejectCode::AlreadyResolved => "already_resolved",
            RejectCode::NotPending => "not_pending",
            RejectCode::ExceedsPendingAmount => "exceeds_pending_amount",
            RejectCode::Overflow => "overflow",
            RejectCode::LinkedFailed => "linked_failed",
        }
    }

    /// A sentence for humans. It depends on the code alone, so a retry's answer equals the first.
    pub fn message(self) -> &'static str {
        match self {
            RejectCode::NotFound => "a referenced account or pending transfer does not exist",
            RejectCode::InsufficientFunds => {
                "the debit account has insufficient funds and does not allow overdraft"
            }
            RejectCode::LedgerMismatch => "the accounts belong to different ledgers",
            RejectCode::AlreadyResolved => {
                "the pending transfer was already posted, voided or expired"
            }
            RejectCode::NotPending => "the referenced transfer is not a pending transfer",
            RejectCode::ExceedsPendingAmount => {
                "the amount exceeds what the pending transfer reserved"
            }
            RejectCode::Overflow => "an account's debits or credits would overflow",
            RejectCode::LinkedFailed => {
                "another transfer of the atomic batch failed, so none was applied"
            }
        }
    }

    pub(crate) fn to_byte(self) -> u8 {
        match self {
            RejectCode::NotFound => 1,
            RejectCode::InsufficientFunds => 2,
            RejectCode::LedgerMismatch => 3,
            RejectCode::AlreadyResolved => 4,
            RejectCode::NotPending => 5,
            RejectCode::ExceedsPendingAmount => 6,
            RejectCode::Overflow => 7,
            RejectCode::LinkedFailed => 8,
        }
    }

    pub(crate) fn from_byte(byte: u8) -> Option<RejectCode> {
        RejectCode::ALL
            .into_iter()
            .find(|code| code.to_byte() == byte)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_and_are_distinct() {
        for code in RejectCode::ALL {
            assert_eq!(RejectCode::from_byte(code.to_byte()), Some(code));
        }
        assert_eq!(RejectCode::from_byte(0), None);
    }
}
