//! What the engine answers, rendered from the ledger state on the state thread: ids resolved,
//! nothing that needs the state afterwards.

use crate::limits::{CLAIMS_PAGE_MAX, CLAIMS_SCAN_MAX};
use tally_core::campaign::{claim_transfer_id, pool_account_id};
use tally_core::{
    Account, CampaignCode, CampaignDefinition, CampaignState, ClaimState, Id, InvalidCommand,
    Ledger, LedgerCode, RejectCode, TransferReply,
};

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
    /// The campaign as of this answer: defined or published now (`created`) or before.
    Campaign {
        /// The campaign.
        view: Box<CampaignView>,
        /// Whether this command changed it.
        created: bool,
    },
    /// The claim as of this answer: recorded, settled or attempted now (`created`) or before.
    Claim {
        /// The claim.
        view: ClaimView,
        /// Whether this command changed it.
        created: bool,
    },
    /// A campaign or claim command was refused; nothing changed.
    Refused(CampaignCode),
}

/// A campaign as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CampaignView {
    /// The definition as recorded, the stored spec included.
    pub definition: CampaignDefinition,
    /// Draft or live.
    pub state: CampaignState,
    /// Whether the verification account has a delivered claim in it.
    pub verified: bool,
    /// The pool account's id.
    pub pool_account: Id,
    /// Units in the pool not reserved by a claim.
    pub available: i128,
}

/// A claim as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimView {
    /// The client's order id.
    pub order_id: Id,
    /// The campaign's id.
    pub campaign: Id,
    /// The user (an account of the gift ledger).
    pub user: Id,
    /// Where it stands.
    pub state: ClaimState,
    /// Delivery attempts started.
    pub attempts: u32,
    /// The last attempt recorded as ended without settling the claim (0: none).
    pub attempts_ended: u32,
    /// The order's read timeouts as of the end of attempt `attempts_ended`.
    pub read_timeouts: u32,
    /// The local day (days since 1970-01-01 in the campaign's zone) it counts on.
    pub day: i32,
    /// The id of its pending transfer.
    pub transfer_id: Id,
    /// Position of its pending transfer in the log.
    pub position: u64,
    /// When it was recorded (its batch's timestamp), in nanoseconds since the Unix epoch.
    pub claimed_at_ns: u64,
}

/// A page of claims in the order they were recorded (see [`crate::EngineHandle::claims`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimPage {
    /// The claims kept, in the order they were recorded.
    pub claims: Vec<ClaimView>,
    /// The position of the last claim scanned: the `after` of the next page. `None` when
    /// nothing was scanned: there is nothing after `after` yet.
    pub next: Option<u64>,
}

impl ClaimPage {
    /// Up to `limit` claims in `state` (any state for `None`) recorded after position `after`,
    /// scanning at most [`CLAIMS_SCAN_MAX`] claims, so that a page of a rare state cannot make
    /// the state thread walk every claim at once.
    pub(crate) fn of(
        ledger: &Ledger,
        state: Option<ClaimState>,
        after: Option<u64>,
        limit: usize,
    ) -> ClaimPage {
        assert!((1..=CLAIMS_PAGE_MAX).contains(&limit));
        let mut page = ClaimPage {
            claims: Vec::new(),
            next: None,
        };
        for (order_id, claim) in ledger.claims_after(after).take(CLAIMS_SCAN_MAX) {
            page.next = Some(claim.pending);
            if state.is_none_or(|state| state == claim.state) {
                page.claims
                    .push(ClaimView::of(ledger, order_id).expect("a listed claim"));
                if page.claims.len() == limit {
                    break;
                }
            }
        }
        page
    }
}

impl CampaignView {
    pub(crate) fn of(ledger: &Ledger, index: u32) -> CampaignView {
        let campaign = &ledger.campaigns()[index as usize];
        CampaignView {
            definition: campaign.definition.clone(),
            state: campaign.state,
            verified: campaign.verified,
            pool_account: pool_account_id(&campaign.definition.id),
            available: ledger.account(campaign.pool).balances.available(),
        }
    }
}

impl ClaimView {
    pub(crate) fn of(ledger: &Ledger, order_id: &Id) -> Option<ClaimView> {
        let claim = ledger.claim(order_id)?;
        let campaign = &ledger.campaigns()[claim.campaign as usize];
        Some(ClaimView {
            order_id: order_id.clone(),
            campaign: campaign.definition.id.clone(),
            user: ledger
                .account(claim.user)
                .id
                .clone()
                .expect("users have ids"),
            state: claim.state,
            attempts: claim.attempts,
            attempts_ended: claim.attempts_ended,
            read_timeouts: claim.read_timeouts,
            day: claim.day,
            transfer_id: claim_transfer_id(order_id),
            position: claim.pending,
            claimed_at_ns: ledger.timestamp_at(claim.pending),
        })
    }
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
