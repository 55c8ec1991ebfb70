//! What the engine answers, rendered from the ledger state on the state thread: ids resolved,
//! nothing that needs the state afterwards.

use tally_core::{Account, Id, InvalidCommand, Ledger, LedgerCode, RejectCode, TransferReply};

/// The engine's answer to one command, or to one transfer of a linked chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The account exists: created now, or before with the same body.
    Account {
        /// The account as of this answer.
        view: AccountView,
        /// Whether this command created it.
        created: bool,
    },
    /// The transfer is recorded (now, or before: see `reply.created`).
    Transfer {
        /// Position, kind, accounts and amount as first recorded.
        reply: TransferReply,
        /// Ids and ledger, when the request asked for [`Detail::Full`].
        detail: Option<TransferDetail>,
    },
    /// The transfer was refused (now, or before with the same body).
    Rejected {
        /// Why.
        code: RejectCode,
        /// Position of the refusal in the log.
        position: u64,
        /// Whether this command was refused now.
        created: bool,
    },
    /// The id was used with another body; nothing changed.
    Conflict,
    /// The command is malformed whatever the state; nothing changed.
    Invalid(InvalidCommand),
    /// The token is revoked (now, or before: see `created`).
    Revoked {
        /// Whether this command revoked it.
        created: bool,
    },
}

/// How much an answer renders. Batches of thousands answer compactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detail {
    /// Ledger code and account ids too.
    Full,
    /// Only what [`TransferReply`] holds.
    Compact,
}

/// Ledger and accounts of a transfer answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferDetail {
    /// The ledger.
    pub ledger: LedgerCode,
    /// The account debited; `None` for the external account (a deposit).
    pub from: Option<Id>,
    /// The account credited; `None` for the external account (a withdrawal).
    pub to: Option<Id>,
}

/// An account as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountView {
    /// Its id.
    pub id: Id,
    /// Its ledger.
    pub ledger: LedgerCode,
    /// Posted credits minus posted debits.
    pub balance: i128,
    /// Posted debits.
    pub debits_posted: u64,
    /// Posted credits.
    pub credits_posted: u64,
    /// Debits reserved by pending transfers.
    pub debits_pending: u64,
    /// Credits reserved by pending transfers.
    pub credits_pending: u64,
    /// Whether it may go below zero.
    pub allow_overdraft: bool,
    /// Events that changed it, creation included.
    pub version: u64,
}

impl AccountView {
    pub(crate) fn of(ledger: &Ledger, account: &Account) -> AccountView {
        let balances = account.balances;
        AccountView {
            id: account
                .id
                .clone()
                .expect("external accounts are never shown"),
            ledger: ledger.ledger(account.ledger).code.clone(),
            balance: balances.balance(),
            debits_posted: balances.debits_posted,
            credits_posted: balances.credits_posted,
            debits_pending: balances.debits_pending,
            credits_pending: balances.credits_pending,
            allow_overdraft: account.allow_overdraft,
            version: balances.version,
        }
    }
}

impl TransferDetail {
    pub(crate) fn of(ledger: &Ledger, reply: &TransferReply) -> TransferDetail {
        let debit = ledger.account(reply.debit);
        TransferDetail {
            ledger: ledger.ledger(debit.ledger).code.clone(),
            from: debit.id.clone(),
            to: ledger.account(reply.credit).id.clone(),
        }
    }
}
