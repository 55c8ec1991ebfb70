//! Commands: what clients ask the ledger to do.
//!
//! A command is built from already-validated parts ([`Id`], [`NonZeroU64`] amounts), and
//! [`Command::validate`] checks what types cannot (a transfer to itself, duplicate ids in a linked
//! chain). The engine never lets an invalid command reach the state machine.

use std::num::NonZeroU64;

use crate::id::{Id, LedgerCode};
use crate::limits::{BATCH_TRANSFERS_MAX, PENDING_TIMEOUT_S_MAX};

/// One request to the ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Open an account. The account id doubles as the command id.
    CreateAccount {
        /// The account id.
        id: Id,
        /// The ledger the account belongs to; created on first use.
        ledger: LedgerCode,
        /// Whether the balance may go below zero.
        allow_overdraft: bool,
    },
    /// One transfer-like command.
    Transfer(TransferCommand),
    /// A chain of transfers that all succeed or all fail.
    Linked(Vec<TransferCommand>),
    /// Refuse an access token from now on, on every node that reads the log. The token id
    /// doubles as the command id: revoking twice changes nothing.
    RevokeToken {
        /// The token's id.
        token_id: Id,
    },
}

/// A command that moves value, identified by its client-chosen transfer id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferCommand {
    /// The transfer id: the idempotency key of the command.
    pub id: Id,
    /// What to do.
    pub body: TransferBody,
}

/// What a transfer command does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransferBody {
    /// Move value from the ledger's external account into `account`.
    Deposit {
        /// The account credited.
        account: Id,
        /// Amount in minor units.
        amount: NonZeroU64,
    },
    /// Move value from `account` to the ledger's external account.
    Withdrawal {
        /// The account debited.
        account: Id,
        /// Amount in minor units.
        amount: NonZeroU64,
    },
    /// Move value between two accounts of one ledger, now or in two phases.
    Transfer {
        /// The account debited.
        from: Id,
        /// The account credited.
        to: Id,
        /// Amount in minor units.
        amount: NonZeroU64,
        /// `Some` reserves the amount instead of moving it.
        pending: Option<PendingOptions>,
    },
    /// Complete a pending transfer, moving all of its amount or a part.
    Post {
        /// The pending transfer's id.
        pending_id: Id,
        /// The amount to move; `None` moves the whole reserved amount.
        amount: Option<NonZeroU64>,
    },
    /// Release a pending transfer's reservation.
    Void {
        /// The pending transfer's id.
        pending_id: Id,
    },
}

/// Options of a pending (two-phase) transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingOptions {
    /// Seconds after which the reservation voids itself; 0 means never.
    pub timeout_s: u32,
}

/// Why a command is malformed, whatever the state of the ledger.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidCommand {
    /// A transfer whose two sides are the same account.
    #[error("a transfer needs two different accounts, found {0:?} on both sides")]
    SameAccount(Id),
    /// A timeout above the limit.
    #[error("timeout_s must be at most {max}, found {found}")]
    TimeoutTooLong {
        /// The limit.
        max: u32,
        /// The value found.
        found: u32,
    },
    /// An empty linked chain.
    #[error("a batch needs at least one transfer")]
    EmptyChain,
    /// A linked chain above the limit.
    #[error("a batch holds at most {max} transfers, found {found}")]
    ChainTooLong {
        /// The limit.
        max: usize,
        /// The length found.
        found: usize,
    },
    /// The same id twice in one linked chain.
    #[error("transfer id {0:?} appears twice in one atomic batch")]
    DuplicateInChain(Id),
}

impl Command {
    /// Checks what the types do not: see [`InvalidCommand`].
    pub fn validate(&self) -> Result<(), InvalidCommand> {
        match self {
            Command::CreateAccount { .. } | Command::RevokeToken { .. } => Ok(()),
            Command::Transfer(transfer) => transfer.validate(),
            Command::Linked(chain) => {
                if chain.is_empty() {
                    return Err(InvalidCommand::EmptyChain);
                }
                if chain.len() > BATCH_TRANSFERS_MAX {
                    return Err(InvalidCommand::ChainTooLong {
                        max: BATCH_TRANSFERS_MAX,
                        found: chain.len(),
                    });
                }
                let mut seen = std::collections::HashSet::with_capacity(chain.len());
                for transfer in chain {
                    transfer.validate()?;
                    if !seen.insert(transfer.id.as_str()) {
                        return Err(InvalidCommand::DuplicateInChain(transfer.id.clone()));
                    }
                }
                Ok(())
            }
        }
    }
}

impl TransferCommand {
    /// Checks one transfer command; see [`Command::validate`].
    pub fn validate(&self) -> Result<(), InvalidCommand> {
        if let TransferBody::Transfer {
            from, to, pending, ..
        } = &self.body
        {
            if from == to {
                return Err(InvalidCommand::SameAccount(from.clone()));
            }
            if let Some(PendingOptions { timeout_s }) = pending {
                if *timeout_s > PENDING_TIMEOUT_S_MAX {
                    return Err(InvalidCommand::TimeoutTooLong {
                        max: PENDING_TIMEOUT_S_MAX,
                        found: *timeout_s,
                    });
                }
            }
        }
        Ok(())
    }

    /// A 64-bit hash of everything but the id, so a retry with another body is told apart.
    ///
    /// Persisted in events: the encoding below is part of the log format and must never change.
    pub fn body_hash(&self) -> u64 {
        let mut bytes = Vec::with_capacity(64);
        let put_id = |bytes: &mut Vec<u8>, id: &Id| {
            bytes.push(id.as_str().len() as u8);
            bytes.extend_from_slice(id.as_str().as_bytes());
        };
        match &self.body {
            TransferBody::Deposit { account, amount } => {
                bytes.push(1);
                put_id(&mut bytes, account);
                bytes.extend_from_slice(&amount.get().to_le_bytes());
            }
            TransferBody::Withdrawal { account, amount } => {
                bytes.push(2);
                put_id(&mut bytes, account);
                bytes.extend_from_slice(&amount.get().to_le_bytes());
            }
            TransferBody::Transfer {
                from,
                to,
                amount,
                pending,
            } => {
                bytes.push(3);
                put_id(&mut bytes, from);
                put_id(&mut bytes, to);
                bytes.extend_from_slice(&amount.get().to_le_bytes());
                match pending {
                    None => bytes.push(0),
                    Some(options) => {
                        bytes.push(1);
                        bytes.extend_from_slice(&options.timeout_s.to_le_bytes());
                    }
                }
            }
            TransferBody::Post { pending_id, amount } => {
                bytes.push(4);
                put_id(&mut bytes, pending_id);
                bytes.extend_from_slice(&amount.map_or(0, NonZeroU64::get).to_le_bytes());
            }
            TransferBody::Void { pending_id } => {
                bytes.push(5);
                put_id(&mut bytes, pending_id);
            }
        }
        xxhash_rust::xxh3::xxh3_64(&bytes)
    }
}
