//! Commands: what clients ask the ledger to do.
//!
//! A command is built from already-validated parts ([`Id`], [`NonZeroU64`] amounts), and
//! [`Command::validate`] checks what types cannot (a transfer to itself, duplicate ids in a linked
//! chain). The engine never lets an invalid command reach the state machine.

use std::num::NonZeroU64;

use crate::campaign::{is_reserved, CampaignDefinition, ClaimState, InvalidDefinition};
use crate::id::{Id, LedgerCode};
use crate::limits::{BATCH_TRANSFERS_MAX, CLAIM_ATTEMPTS_MAX, PENDING_TIMEOUT_S_MAX};

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
    /// Define a gift campaign as a draft, creating and funding its pool (see
    /// [`crate::campaign`]). The campaign id doubles as the command id.
    DefineCampaign(Box<CampaignDefinition>),
    /// Take a draft campaign live; refused until its verification account received a gift.
    PublishCampaign {
        /// The campaign id.
        id: Id,
    },
    /// Claim one gift of `campaign` for `user`. The order id doubles as the command id.
    Claim {
        /// The campaign id.
        campaign: Id,
        /// The client's order id: the claim's idempotency key.
        order_id: Id,
        /// The user, an account of the campaign's gift ledger (created if missing).
        user: Id,
    },
    /// Record how a claim's delivery ended: `Delivered`, `Voided` or `Unknown`.
    SettleClaim {
        /// The claim's order id.
        order_id: Id,
        /// Its new state; never `PendingDelivery`.
        outcome: ClaimState,
    },
    /// Record that delivery attempt `attempt` (from 1) of a claim started.
    RecordClaimAttempt {
        /// The claim's order id.
        order_id: Id,
        /// The attempt's number: the previous one plus one (a repeat changes nothing).
        attempt: u32,
    },
    /// Record that delivery attempt `attempt` of a claim ended without settling it, and the
    /// order's read timeouts so far (this attempt's included). An attempt started but never
    /// ended this way may have delivered: after a restart the worker counts it as read
    /// timeouts, so the cap on read timeouts holds across crashes.
    EndClaimAttempt {
        /// The claim's order id.
        order_id: Id,
        /// The attempt that ended: the last one started.
        attempt: u32,
        /// The order's read timeouts so far; never fewer than recorded before.
        read_timeouts: u32,
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
    /// An id that belongs to the ledger itself (see [`crate::campaign`]).
    #[error("ids starting with `tally:` belong to the ledger itself, found {0:?}")]
    Reserved(Id),
    /// A campaign definition that cannot be right.
    #[error("{0}")]
    Campaign(#[from] InvalidDefinition),
    /// A claim settled back to pending delivery.
    #[error("a claim is settled as delivered, voided or unknown_needs_reconciliation")]
    NotASettlement,
    /// A delivery attempt numbered 0 or beyond the bound.
    #[error("delivery attempts are numbered from 1 to {max}, found {found}")]
    AttemptOutOfRange {
        /// The bound.
        max: u32,
        /// The number found.
        found: u32,
    },
}

/// Refuses ids the ledger owns.
fn unreserved(id: &Id) -> Result<(), InvalidCommand> {
    if is_reserved(id) {
        Err(InvalidCommand::Reserved(id.clone()))
    } else {
        Ok(())
    }
}

impl Command {
    /// Checks what the types do not: see [`InvalidCommand`].
    pub fn validate(&self) -> Result<(), InvalidCommand> {
        match self {
            Command::CreateAccount { id, .. } => unreserved(id),
            Command::RevokeToken { .. } | Command::PublishCampaign { .. } => Ok(()),
            Command::DefineCampaign(definition) => Ok(definition.validate()?),
            Command::Claim { user, .. } => unreserved(user),
            Command::SettleClaim { outcome, .. } => match outcome {
                ClaimState::PendingDelivery => Err(InvalidCommand::NotASettlement),
                _ => Ok(()),
            },
            Command::RecordClaimAttempt { attempt, .. }
            | Command::EndClaimAttempt { attempt, .. } => {
                if (1..=CLAIM_ATTEMPTS_MAX).contains(attempt) {
                    Ok(())
                } else {
                    Err(InvalidCommand::AttemptOutOfRange {
                        max: CLAIM_ATTEMPTS_MAX,
                        found: *attempt,
                    })
                }
            }
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
        unreserved(&self.id)?;
        match &self.body {
            TransferBody::Deposit { account, .. } | TransferBody::Withdrawal { account, .. } => {
                unreserved(account)?
            }
            TransferBody::Transfer { from, to, .. } => {
                unreserved(from)?;
                unreserved(to)?;
            }
            TransferBody::Post { pending_id, .. } | TransferBody::Void { pending_id } => {
                unreserved(pending_id)?
            }
        }
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
