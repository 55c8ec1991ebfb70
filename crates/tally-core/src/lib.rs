//! The ledger core of Tally: ids, amounts, accounts, transfers, and the deterministic state
//! machine that turns commands into events and applies events to state.
//!
//! This crate does no I/O (no files, sockets or clocks: the engine passes timestamps in), so it
//! cannot fail because of the outside world, and the same event sequence always yields the same
//! state. The engine feeds it commands in batches:
//!
//! ```
//! use std::num::NonZeroU64;
//! use tally_core::{Command, Id, Ledger, LedgerCode, Reply, TransferBody, TransferCommand};
//!
//! let mut ledger = Ledger::new();
//! let (mut events, mut replies) = (Vec::new(), Vec::new());
//! ledger.begin_batch(1, &mut events);
//! let usd = LedgerCode::new("USD").unwrap();
//! let open = |id: &str| Command::CreateAccount { id: Id::new(id).unwrap(), ledger: usd.clone(), allow_overdraft: false };
//! ledger.execute(&open("alice"), &mut events, &mut replies);
//! let deposit = TransferCommand {
//!     id: Id::new("d1").unwrap(),
//!     body: TransferBody::Deposit { account: Id::new("alice").unwrap(), amount: NonZeroU64::new(10).unwrap() },
//! };
//! ledger.execute(&Command::Transfer(deposit), &mut events, &mut replies);
//! assert!(matches!(replies[1], Reply::Transfer(_)));
//! ledger.check_invariants().unwrap();
//!
//! // Replaying the events yields exactly the same state.
//! let mut replayed = Ledger::new();
//! replayed.begin_replayed_batch(0, 1).unwrap();
//! for event in &events {
//!     replayed.apply_checked(event).unwrap();
//! }
//! assert_eq!(replayed, ledger);
//! ```
//!
//! Key design choice: double entry with one external account per ledger. Deposits debit it and
//! withdrawals credit it, so the balances of every ledger always sum to zero, which
//! [`Ledger::check_invariants`] asserts and `tally verify` checks on every data directory.
#![deny(missing_docs)]

pub mod campaign;
mod command;
mod event;
mod id;
mod ledger;
pub mod limits;
mod reject;
pub mod script;
mod snapshot;

pub use campaign::{
    Campaign, CampaignCode, CampaignDefinition, CampaignState, Claim, ClaimState,
    InvalidDefinition, OffsetChange,
};
pub use command::{Command, InvalidCommand, PendingOptions, TransferBody, TransferCommand};
pub use event::{
    decode_events, encode_event, encode_events, AccountIndex, DecodeError, Event, LedgerIndex,
    TransferEvent, TransferKind,
};
pub use id::{hash128, Id, IdError, LedgerCode};
pub use ledger::{
    kind_tag, Account, Balances, InvariantViolation, Ledger, LedgerInfo, Outcome, PendingRecord,
    PendingState, ReplayError, Reply, TransferReply,
};
pub use reject::RejectCode;
pub use snapshot::{SnapshotError, SNAPSHOT_VERSION};
