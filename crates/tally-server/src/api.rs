//! The JSON types of the HTTP API and their conversion to and from the core's types.
//!
//! These are the API's promises, separate from commands and events: they may change only in
//! ways that keep clients working. Parsing is strict (unknown fields are refused) so that a typo
//! in a field name is an error rather than a silently ignored option.

use std::num::NonZeroU64;
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tally_campaign::CampaignSpec;
use tally_core::{
    Id, LedgerCode, PendingOptions, TransferBody, TransferCommand, TransferKind, TransferReply,
};
use tally_engine::{AccountView, CampaignView, ClaimView, TransferDetail};
use tally_read::{
    DailyPage, Day, FeedBody, FeedEvent, FeedPage, HistoryEntry, HistoryPage, LedgerTotals,
    TransferView,
};
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ErrorDetail};

/// Opens an account.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccountRequest {
    /// Account id: 1–128 characters of `[A-Za-z0-9._:-]`.
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._:-]+$")]
    pub id: String,
    /// Ledger (currency or asset) code: 1–32 characters of the id alphabet.
    #[schema(min_length = 1, max_length = 32, pattern = "^[A-Za-z0-9._:-]+$")]
    pub ledger: String,
    /// Whether the balance may go below zero.
    #[serde(default)]
    pub allow_overdraft: bool,
}

/// Moves value from the ledger's external account into an account, or back out of it.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DepositRequest {
    /// Transfer id: the idempotency key.
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._:-]+$")]
    pub id: String,
    /// The account.
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._:-]+$")]
    pub account: String,
    /// Amount in minor units, at least 1.
    #[schema(minimum = 1)]
    pub amount: u64,
}

/// Moves value between two accounts of one ledger, now or in two phases.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    /// Transfer id: the idempotency key.
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._:-]+$")]
    pub id: String,
    /// The account debited.
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._:-]+$")]
    pub from: String,
    /// The account credited.
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._:-]+$")]
    pub to: String,
    /// Amount in minor units, at least 1.
    #[schema(minimum = 1)]
    pub amount: u64,
    /// Reserve the amount instead of moving it; resolve later with post or void.
    #[serde(default)]
    pub pending: bool,
    /// For a pending transfer: seconds after which it voids itself (0 or absent: never), at
    /// most 30 days.
    #[schema(maximum = 2592000)]
    pub timeout_s: Option<u32>,
}

/// Posts a pending transfer, wholly or partly.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostRequest {
    /// Id of this post: a new transfer id.
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._:-]+$")]
    pub id: String,
    /// Amount to move, at most the reserved amount; absent moves all of it.
    #[schema(minimum = 1)]
    pub amount: Option<u64>,
}

/// Voids a pending transfer.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VoidRequest {
    /// Id of this void: a new transfer id.
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._:-]+$")]
    pub id: String,
}

/// Many transfers in one request.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// 1 to 8,192 transfers, executed in order.
    #[schema(min_items = 1, max_items = 8192)]
    pub transfers: Vec<TransferRequest>,
    /// All succeed or none does.
    #[serde(default)]
    pub atomic: bool,
}

/// An account.
#[derive(Serialize, ToSchema)]
pub struct AccountJson {
    /// Its id.
    pub id: String,
    /// Its ledger.
    pub ledger: String,
    /// Posted credits minus posted debits.
    #[schema(value_type = i64)]
    pub balance: i128,
    /// Posted debits.
    pub debits: u64,
    /// Posted credits.
    pub credits: u64,
    /// Debits reserved by pending transfers.
    pub debits_pending: u64,
    /// Credits reserved by pending transfers.
    pub credits_pending: u64,
    /// Whether the balance may go below zero.
    pub allow_overdraft: bool,
    /// Number of changes, creation included.
    pub version: u64,
}

/// A transfer.
#[derive(Serialize, ToSchema)]
pub struct TransferJson {
    /// Its id.
    pub id: String,
    /// `deposit`, `withdrawal`, `transfer`, `pending`, `post` or `void`.
    pub kind: String,
    /// `posted`, `pending`, `voided` or `expired`.
    pub status: String,
    /// The ledger.
    pub ledger: String,
    /// The account debited; null for a deposit (the ledger's external account).
    pub from: Option<String>,
    /// The account credited; null for a withdrawal (the ledger's external account).
    pub to: Option<String>,
    /// Amount in minor units.
    pub amount: u64,
    /// Position in the log: the global order of events.
    pub position: u64,
    /// When it was recorded (RFC 3339).
    pub timestamp: String,
    /// For a post or void: the pending transfer it resolves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_id: Option<String>,
    /// For a pending transfer with a timeout: when it voids itself (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// For a posted pending transfer: the amount posted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub posted_amount: Option<u64>,
    /// For a resolved pending transfer: the post or void that resolved it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_by: Option<String>,
}

/// The results of a batch, in request order.
#[derive(Serialize, ToSchema)]
pub struct BatchResponse {
    /// One result per transfer.
    pub results: Vec<BatchItem>,
}

/// The result of one transfer of a batch.
#[derive(Serialize, ToSchema)]
pub struct BatchItem {
    /// The transfer id.
    pub id: String,
    /// `created`, `duplicate` (recorded by an earlier request with the same body), `rejected` or `conflict`.
    pub outcome: &'static str,
    /// For a recorded transfer: `posted` or `pending`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'static str>,
    /// For a recorded or rejected transfer: its position in the log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    /// For a rejected or conflicting transfer: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

/// A page of an account's history.
#[derive(Serialize, ToSchema)]
pub struct HistoryJson {
    /// Entries in position order.
    pub entries: Vec<HistoryEntryJson>,
    /// Pass as `after` for the next page; null when this page reaches the current end.
    pub next: Option<u64>,
}

/// One event that touched an account.
#[derive(Serialize, ToSchema)]
pub struct HistoryEntryJson {
    /// Position in the log.
    pub position: u64,
    /// The transfer; for an expiry, the pending transfer.
    pub transfer_id: String,
    /// `deposit`, `withdrawal`, `transfer`, `pending`, `post`, `void` or `expire`.
    pub kind: String,
    /// `debit` or `credit`.
    pub side: String,
    /// Amount in minor units.
    pub amount: u64,
    /// Posted balance after the event.
    #[schema(value_type = i64)]
    pub balance_after: i128,
    /// When it was recorded (RFC 3339).
    pub timestamp: String,
}

/// Paging of an account's history.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Only entries after this position (the `next` of the previous page).
    pub after: Option<u64>,
    /// Entries per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// A ledger's figures. Value counts once, when it is posted: deposits, withdrawals, transfers
/// and posts of pending transfers (with the amount posted); pending transfers, voids and
/// expiries post nothing. The balances of the ledger's accounts sum to `deposited - withdrawn`.
#[derive(Serialize, ToSchema)]
pub struct LedgerJson {
    /// The ledger code.
    pub ledger: String,
    /// Accounts opened in the ledger (its external account is not counted).
    pub accounts: u64,
    /// Deposits, withdrawals, transfers and posts: the events that posted value.
    pub transfers: u64,
    /// The sum of their amounts, in minor units (a post counts the amount it posted).
    #[schema(value_type = u64)]
    pub volume: u128,
    /// The sum of the deposits.
    #[schema(value_type = u64)]
    pub deposited: u128,
    /// The sum of the withdrawals.
    #[schema(value_type = u64)]
    pub withdrawn: u128,
    /// Pending transfers open: neither posted, voided nor expired.
    pub pending: u64,
    /// The sum of the amounts they reserve.
    #[schema(value_type = u64)]
    pub pending_amount: u128,
}

/// A page of a ledger's daily summary.
#[derive(Serialize, ToSchema)]
pub struct DailyJson {
    /// The ledger code.
    pub ledger: String,
    /// Days with at least one counted event, oldest first; days without one are left out.
    pub days: Vec<DayJson>,
    /// Pass as `from` for the next page; null when this page reaches the end of the range.
    #[schema(format = Date)]
    pub next: Option<String>,
}

/// A ledger's figures of one UTC day (the day of each event's batch timestamp), counted as the
/// ledger's `transfers` and `volume` are.
#[derive(Serialize, ToSchema)]
pub struct DayJson {
    /// The day, `YYYY-MM-DD` (UTC).
    #[schema(format = Date)]
    pub date: String,
    /// Deposits, withdrawals, transfers and posts of the day.
    pub transfers: u64,
    /// The sum of their amounts, in minor units.
    #[schema(value_type = u64)]
    pub volume: u128,
}

/// Paging of a ledger's daily summary.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DailyQuery {
    /// The first day (UTC, `YYYY-MM-DD`), inclusive; from the ledger's first day if absent.
    /// The `next` of the previous page.
    #[param(format = Date, pattern = "^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
    pub from: Option<String>,
    /// The last day (UTC, `YYYY-MM-DD`), inclusive, not before `from`; up to the latest day if
    /// absent.
    #[param(format = Date, pattern = "^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
    pub to: Option<String>,
    /// Days per page, 1 to 366 (default 31).
    #[param(minimum = 1, maximum = 366)]
    pub limit: Option<u32>,
}

/// Listing claims.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ClaimsQuery {
    /// Only claims in this state: `pending_delivery`, `delivered`, `voided` or
    /// `unknown_needs_reconciliation`; every state if absent.
    #[param(pattern = "^(pending_delivery|delivered|voided|unknown_needs_reconciliation)$")]
    pub state: Option<String>,
    /// Only claims recorded after this log position (the `next` of the previous page); from
    /// the first claim if absent.
    pub after: Option<u64>,
    /// Claims per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// A page of claims, in the order they were recorded.
#[derive(Serialize, ToSchema)]
pub struct ClaimsJson {
    /// The claims of the page.
    pub claims: Vec<ClaimJson>,
    /// The `after` of the next page: the position of the last claim scanned (a page scans a
    /// bounded number of claims, so it may hold fewer than `limit` with more to come).
    /// Absent when nothing after `after` was scanned: there is nothing more yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
}

/// Reading the event feed.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events after this position (the `next` of the previous page); from the start if
    /// absent.
    pub after: Option<u64>,
    /// Events per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Only events of this ledger.
    #[param(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._:-]+$")]
    pub ledger: Option<String>,
    /// Only events that name this account.
    #[param(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._:-]+$")]
    pub account: Option<String>,
    /// Long-poll: when nothing after `after` is projected yet, wait up to this many
    /// milliseconds (at most 30000) for the next event before answering with an empty page.
    #[param(minimum = 0, maximum = 30000)]
    pub wait_ms: Option<u64>,
}

/// Following the event feed.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventStreamQuery {
    /// Only events after this position; from the start if absent. A `Last-Event-ID` header
    /// (sent by browsers when they reconnect) takes precedence.
    pub after: Option<u64>,
    /// End the stream after this many events (for scripts that take a bounded number); without
    /// it the stream goes on as long as the client stays.
    #[param(minimum = 1)]
    pub limit: Option<u32>,
    /// Only events of this ledger.
    #[param(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._:-]+$")]
    pub ledger: Option<String>,
    /// Only events that name this account.
    #[param(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._:-]+$")]
    pub account: Option<String>,
}

/// A page of the event feed.
#[derive(Serialize, ToSchema)]
pub struct EventsJson {
    /// Events in position order.
    pub events: Vec<EventJson>,
    /// The last position this page read, kept or not: pass it as `after` for the next page.
    /// Null when there was nothing new to read: ask again later with the same `after`.
    pub next: Option<u64>,
    /// Events are served below this position: the durable end of the log when the page was read.
    pub end: u64,
}

/// One event of the log. `type` says which of the optional fields are present.
#[derive(Serialize, ToSchema)]
pub struct EventJson {
    /// Position in the log.
    pub position: u64,
    /// When its batch was recorded (RFC 3339).
    pub timestamp: String,
    /// `account_created`, `transfer`, `rejected`, `expired`, `token_revoked`,
    /// `campaign_defined`, `campaign_published`, `claim_recorded`, `claim_settled`,
    /// `claim_attempted` or `claim_attempt_ended`.
    #[serde(rename = "type")]
    pub event_type: &'static str,
    /// `account_created`: the account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// `account_created` and `transfer`: the ledger.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ledger: Option<String>,
    /// `account_created`: whether it may go below zero.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_overdraft: Option<bool>,
    /// `transfer` and `rejected`: the transfer id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer_id: Option<String>,
    /// `transfer`: `deposit`, `withdrawal`, `transfer`, `pending`, `post` or `void`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    /// `transfer`: the account debited; absent for the ledger's external account (a deposit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// `transfer`: the account credited; absent for the ledger's external account (a
    /// withdrawal).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// `transfer`: amount in minor units.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount: Option<u64>,
    /// `transfer` (post or void), `expired` and `claim_recorded`: position of the pending
    /// transfer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_position: Option<u64>,
    /// `rejected`: the error code the command got.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    /// `token_revoked`: the token's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    /// `campaign_defined` and `campaign_published`: the campaign's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
    /// `claim_recorded`, `claim_settled`, `claim_attempted` and `claim_attempt_ended`: the
    /// claim's order id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    /// `claim_settled`: the claim's new state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<&'static str>,
    /// `claim_attempted` and `claim_attempt_ended`: the delivery attempt's number, from 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// `claim_attempt_ended`: the order's read timeouts so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_timeouts: Option<u32>,
}

impl From<FeedEvent> for EventJson {
    fn from(event: FeedEvent) -> EventJson {
        let mut json = EventJson {
            position: event.position,
            timestamp: rfc3339(event.timestamp_ns),
            event_type: "",
            account: None,
            ledger: None,
            allow_overdraft: None,
            transfer_id: None,
            kind: None,
            from: None,
            to: None,
            amount: None,
            pending_position: None,
            code: None,
            token_id: None,
            campaign: None,
            order_id: None,
            state: None,
            attempt: None,
            read_timeouts: None,
        };
        match event.body {
            FeedBody::AccountCreated {
                account,
                ledger,
                allow_overdraft,
            } => {
                json.event_type = "account_created";
                json.account = Some(account);
                json.ledger = Some(ledger);
                json.allow_overdraft = Some(allow_overdraft);
            }
            FeedBody::Transfer {
                transfer_id,
                kind,
                ledger,
                from,
                to,
                amount,
                pending_position,
            } => {
                json.event_type = "transfer";
                json.transfer_id = Some(transfer_id);
                json.kind = Some(kind);
                json.ledger = Some(ledger);
                json.from = from;
                json.to = to;
                json.amount = Some(amount);
                json.pending_position = pending_position;
            }
            FeedBody::Rejected { transfer_id, code } => {
                json.event_type = "rejected";
                json.transfer_id = Some(transfer_id);
                json.code = Some(code);
            }
            FeedBody::Expired { pending_position } => {
                json.event_type = "expired";
                json.pending_position = Some(pending_position);
            }
            FeedBody::TokenRevoked { token_id } => {
                json.event_type = "token_revoked";
                json.token_id = Some(token_id);
            }
            FeedBody::Campaign {
                event_type,
                campaign,
                order_id,
                state,
                attempt,
                read_timeouts,
                pending_position,
            } => {
                json.event_type = event_type;
                json.campaign = campaign;
                json.order_id = order_id;
                json.state = state;
                json.attempt = attempt;
                json.read_timeouts = read_timeouts;
                json.pending_position = pending_position;
            }
        }
        json
    }
}

impl From<FeedPage> for EventsJson {
    fn from(page: FeedPage) -> EventsJson {
        EventsJson {
            events: page.events.into_iter().map(EventJson::from).collect(),
            next: page.next,
            end: page.end,
        }
    }
}

/// Revokes an access token.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevocationRequest {
    /// The token's id (`id` in `tally keys inspect`).
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._:-]+$")]
    pub token_id: String,
}

/// A revoked token.
#[derive(Serialize, ToSchema)]
pub struct RevocationJson {
    /// The token's id.
    pub token_id: String,
    /// Always true: the token is refused from now on.
    pub revoked: bool,
}

/// Liveness and readiness.
#[derive(Serialize, ToSchema)]
pub struct HealthJson {
    /// `ok`, or why not.
    pub status: String,
}

/// Validates `text` as the id in `field`.
pub fn parse_id(field: &str, text: &str) -> Result<Id, ApiError> {
    Id::new(text).map_err(|error| ApiError::invalid(format!("{field}: {error}")))
}

/// The page size a query asked for (`default` when it did not), within `1..=max`.
pub fn parse_page_limit(limit: Option<u32>, default: u32, max: u32) -> Result<u32, ApiError> {
    let limit = limit.unwrap_or(default);
    if !(1..=max).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "limit: must be between 1 and {max}, found {limit}"
        )));
    }
    Ok(limit)
}

fn parse_amount(field: &str, amount: u64) -> Result<NonZeroU64, ApiError> {
    NonZeroU64::new(amount).ok_or_else(|| ApiError::invalid(format!("{field}: must be at least 1")))
}

/// Validates a ledger code.
pub fn parse_ledger(text: &str) -> Result<LedgerCode, ApiError> {
    parse_ledger_in("ledger", text)
}

/// Validates `text` as the ledger code in `field`.
pub fn parse_ledger_in(field: &str, text: &str) -> Result<LedgerCode, ApiError> {
    LedgerCode::new(text).map_err(|error| ApiError::invalid(format!("{field}: {error}")))
}

/// Validates `text` as the UTC day (`YYYY-MM-DD`) in `field`.
pub fn parse_day(field: &str, text: &str) -> Result<Day, ApiError> {
    Day::parse(text)
        .map_err(|reason| ApiError::invalid(format!("{field}: {reason}, found {text:?}")))
}

impl DepositRequest {
    /// The command, as a deposit (`withdraw` false) or a withdrawal.
    pub fn command(&self, withdraw: bool) -> Result<TransferCommand, ApiError> {
        let account = parse_id("account", &self.account)?;
        let amount = parse_amount("amount", self.amount)?;
        let body = if withdraw {
            TransferBody::Withdrawal { account, amount }
        } else {
            TransferBody::Deposit { account, amount }
        };
        Ok(TransferCommand {
            id: parse_id("id", &self.id)?,
            body,
        })
    }
}

impl TransferRequest {
    /// The command; `field` prefixes error messages (e.g. `transfers[3].`).
    pub fn command(&self, field: &str) -> Result<TransferCommand, ApiError> {
        let pending = match (self.pending, self.timeout_s) {
            (true, timeout_s) => Some(PendingOptions {
                timeout_s: timeout_s.unwrap_or(0),
            }),
            (false, None) => None,
            (false, Some(_)) => {
                return Err(ApiError::invalid(format!(
                    "{field}timeout_s: only a pending transfer has a timeout"
                )))
            }
        };
        let command = TransferCommand {
            id: parse_id(&format!("{field}id"), &self.id)?,
            body: TransferBody::Transfer {
                from: parse_id(&format!("{field}from"), &self.from)?,
                to: parse_id(&format!("{field}to"), &self.to)?,
                amount: parse_amount(&format!("{field}amount"), self.amount)?,
                pending,
            },
        };
        command
            .validate()
            .map_err(|error| ApiError::invalid(format!("{field}{error}")))?;
        Ok(command)
    }
}

impl From<AccountView> for AccountJson {
    fn from(view: AccountView) -> AccountJson {
        AccountJson {
            id: view.id.to_string(),
            ledger: view.ledger.to_string(),
            balance: view.balance,
            debits: view.debits_posted,
            credits: view.credits_posted,
            debits_pending: view.debits_pending,
            credits_pending: view.credits_pending,
            allow_overdraft: view.allow_overdraft,
            version: view.version,
        }
    }
}

/// RFC 3339 with nanoseconds, in UTC.
pub fn rfc3339(timestamp_ns: u64) -> String {
    humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_nanos(timestamp_ns)).to_string()
}

/// `pending` for a reservation, `posted` for everything else, as first answered.
pub fn first_status(kind: TransferKind) -> &'static str {
    match kind {
        TransferKind::Pending { .. } => "pending",
        _ => "posted",
    }
}

impl TransferJson {
    /// The answer to a transfer command, as first recorded.
    pub fn answered(
        command: &TransferCommand,
        reply: &TransferReply,
        detail: TransferDetail,
    ) -> TransferJson {
        let pending_id = match &command.body {
            TransferBody::Post { pending_id, .. } | TransferBody::Void { pending_id } => {
                Some(pending_id.to_string())
            }
            _ => None,
        };
        let expires_at = match reply.kind {
            TransferKind::Pending { expires_at_ns } if expires_at_ns != 0 => {
                Some(rfc3339(expires_at_ns))
            }
            _ => None,
        };
        TransferJson {
            id: command.id.to_string(),
            kind: reply.kind.name().to_string(),
            status: first_status(reply.kind).to_string(),
            ledger: detail.ledger.to_string(),
            from: detail.from.map(|id| id.to_string()),
            to: detail.to.map(|id| id.to_string()),
            amount: reply.amount,
            position: reply.position,
            timestamp: rfc3339(reply.timestamp_ns),
            pending_id,
            expires_at,
            posted_amount: None,
            resolved_by: None,
        }
    }
}

impl From<TransferView> for TransferJson {
    fn from(view: TransferView) -> TransferJson {
        TransferJson {
            id: view.id,
            kind: view.kind.to_string(),
            status: view.status.to_string(),
            ledger: view.ledger,
            from: view.from,
            to: view.to,
            amount: view.amount,
            position: view.position,
            timestamp: rfc3339(view.timestamp_ns),
            pending_id: view.pending_id,
            expires_at: view.expires_at_ns.map(rfc3339),
            posted_amount: view.posted_amount,
            resolved_by: view.resolved_by,
        }
    }
}

impl From<HistoryPage> for HistoryJson {
    fn from(page: HistoryPage) -> HistoryJson {
        HistoryJson {
            entries: page
                .entries
                .into_iter()
                .map(HistoryEntryJson::from)
                .collect(),
            next: page.next,
        }
    }
}

impl From<HistoryEntry> for HistoryEntryJson {
    fn from(entry: HistoryEntry) -> HistoryEntryJson {
        HistoryEntryJson {
            position: entry.position,
            transfer_id: entry.transfer_id,
            kind: entry.kind.to_string(),
            side: entry.side.to_string(),
            amount: entry.amount,
            balance_after: entry.balance_after,
            timestamp: rfc3339(entry.timestamp_ns),
        }
    }
}

impl From<LedgerTotals> for LedgerJson {
    fn from(totals: LedgerTotals) -> LedgerJson {
        LedgerJson {
            ledger: totals.ledger,
            accounts: totals.accounts,
            transfers: totals.transfers,
            volume: totals.volume,
            deposited: totals.deposited,
            withdrawn: totals.withdrawn,
            pending: totals.pending,
            pending_amount: totals.pending_amount,
        }
    }
}

impl DailyJson {
    /// The page of the ledger `ledger`.
    pub fn new(ledger: String, page: DailyPage) -> DailyJson {
        DailyJson {
            ledger,
            days: page
                .days
                .into_iter()
                .map(|day| DayJson {
                    date: day.day.to_string(),
                    transfers: day.transfers,
                    volume: day.volume,
                })
                .collect(),
            next: page.next.map(|day| day.to_string()),
        }
    }
}

/// A gift campaign, as `POST /v1/campaigns` takes it; the same fields as a campaign file
/// (`docs/campaigns.md`). Only the schema of the body: the server reads it with the same parser
/// as `tally campaign check`, so that both report the same faults.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CampaignRequest {
    /// Campaign id: 1–117 characters of `[A-Za-z0-9._:-]`, not starting with `tally:`.
    #[schema(min_length = 1, max_length = 117, pattern = "^[A-Za-z0-9._:-]+$")]
    pub id: String,
    /// The ledger the gifts are counted in.
    #[schema(min_length = 1, max_length = 32, pattern = "^[A-Za-z0-9._:-]+$")]
    pub gift_ledger: String,
    /// Gift units put in the pool.
    pub inventory: u64,
    /// Most gifts one user may claim.
    pub per_user_limit: u64,
    /// Most gifts claimed per local day.
    pub daily_limit: u64,
    /// IANA time zone whose midnight starts a new day, such as `Europe/Berlin`.
    pub timezone: String,
    /// When claims open (RFC 3339 with an offset), between 1970 and 2262.
    #[schema(format = DateTime)]
    pub starts_at: String,
    /// When claims close, exclusive (RFC 3339 with an offset), between 1970 and 2262.
    #[schema(format = DateTime)]
    pub ends_at: String,
    /// The account that must claim and receive a gift before the campaign may go live.
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._:-]+$")]
    pub verification_account: String,
    /// Where and how gifts are delivered.
    pub delivery: DeliveryJson,
    /// Where campaign statistics are posted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats_webhook: Option<String>,
}

/// A campaign's delivery target.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeliveryJson {
    /// Endpoints that receive deliveries while healthy.
    pub primary: Vec<String>,
    /// Endpoints that take over when every primary one is ejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<Vec<String>>,
    /// Time allowed to connect, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Time allowed for the answer once connected, in milliseconds.
    pub read_timeout_ms: u64,
    /// Read timeouts one delivery may suffer before it waits for reconciliation.
    pub max_read_timeouts: u32,
    /// Retries of one delivery after its first attempt (default 3).
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// Retries allowed, as a percentage of first attempts.
    pub retry_budget_percent: u32,
}

/// A campaign: its definition as stored (times in UTC, every default written out), and where
/// it stands.
#[derive(Serialize, ToSchema)]
pub struct CampaignJson {
    /// The campaign id.
    pub id: String,
    /// The ledger the gifts are counted in.
    pub gift_ledger: String,
    /// Gift units put in the pool.
    pub inventory: u64,
    /// Most gifts one user may claim.
    pub per_user_limit: u64,
    /// Most gifts claimed per local day.
    pub daily_limit: u64,
    /// IANA time zone whose midnight starts a new day.
    pub timezone: String,
    /// When claims open (RFC 3339, UTC).
    pub starts_at: String,
    /// When claims close, exclusive (RFC 3339, UTC).
    pub ends_at: String,
    /// The account that must claim and receive a gift before the campaign may go live.
    pub verification_account: String,
    /// Where and how gifts are delivered.
    pub delivery: DeliveryJson,
    /// Where campaign statistics are posted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats_webhook: Option<String>,
    /// `draft` until published, then `live`.
    pub state: &'static str,
    /// Whether the verification account has received a gift of it (publishing needs it).
    pub verified: bool,
    /// The pool account, in the gift ledger: `tally:pool:{id}`.
    pub pool_account: String,
    /// Units in the pool not reserved by a claim.
    pub available: i64,
}

impl CampaignJson {
    /// Renders `view`, whose stored spec is `spec`.
    pub fn of(view: &CampaignView, spec: &CampaignSpec) -> CampaignJson {
        let stored: CampaignRequest =
            serde_json::from_value(serde_json::to_value(spec).expect("a spec serializes"))
                .expect("the stored form has the request's fields");
        CampaignJson {
            id: stored.id,
            gift_ledger: stored.gift_ledger,
            inventory: stored.inventory,
            per_user_limit: stored.per_user_limit,
            daily_limit: stored.daily_limit,
            timezone: stored.timezone,
            starts_at: stored.starts_at,
            ends_at: stored.ends_at,
            verification_account: stored.verification_account,
            delivery: stored.delivery,
            stats_webhook: stored.stats_webhook,
            state: view.state.name(),
            verified: view.verified,
            pool_account: view.pool_account.to_string(),
            available: i64::try_from(view.available).unwrap_or(i64::MAX),
        }
    }
}

/// Claims one gift of a campaign.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// The client's order id: the claim's idempotency key.
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._:-]+$")]
    pub order_id: String,
    /// The user: an account of the gift ledger, created if missing.
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._:-]+$")]
    pub user: String,
}

/// A claim and where its delivery stands.
#[derive(Serialize, ToSchema)]
pub struct ClaimJson {
    /// The client's order id.
    pub order_id: String,
    /// The campaign's id.
    pub campaign: String,
    /// The user.
    pub user: String,
    /// `pending_delivery`, `delivered`, `voided` or `unknown_needs_reconciliation`.
    pub state: &'static str,
    /// Delivery attempts started.
    pub attempts: u32,
    /// The order's read timeouts recorded so far (attempts that may have delivered).
    pub read_timeouts: u32,
    /// The local day it counts on, in the campaign's time zone (`YYYY-MM-DD`).
    pub day: String,
    /// Its pending transfer of one unit from the pool to the user: `tally:claim:{hash}`.
    pub transfer_id: String,
    /// Position of that transfer in the log.
    pub position: u64,
    /// When it was recorded (RFC 3339).
    pub claimed_at: String,
}

impl From<ClaimView> for ClaimJson {
    fn from(view: ClaimView) -> ClaimJson {
        ClaimJson {
            order_id: view.order_id.to_string(),
            campaign: view.campaign.to_string(),
            user: view.user.to_string(),
            state: view.state.name(),
            attempts: view.attempts,
            read_timeouts: view.read_timeouts,
            // Days are at least -1 (1969-12-31, west of Greenwich at the epoch): a campaign's
            // window starts at or after the epoch.
            day: u32::try_from(view.day)
                .ok()
                .and_then(Day::from_since_epoch)
                .map_or_else(|| "1969-12-31".to_string(), |day| day.to_string()),
            transfer_id: view.transfer_id.to_string(),
            position: view.position,
            claimed_at: rfc3339(view.claimed_at_ns),
        }
    }
}

/// How a claim's delivery ended, as an operator (or the delivery worker) records it.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettleRequest {
    /// `delivered` (the transfer is posted), `voided` (the unit goes back to the pool) or
    /// `unknown_needs_reconciliation`.
    #[schema(pattern = "^(delivered|voided|unknown_needs_reconciliation)$")]
    pub state: String,
}
