//! The ledger state machine: commands in, events and replies out; events applied to state.
//!
//! [`Ledger::execute`] decides a command against the current state and applies the events it
//! produces through the same [`Ledger::apply`] that replay uses, so live state and replayed state
//! cannot drift apart. Linked chains are applied with an undo log and rolled back when one of
//! their transfers fails.

use std::collections::{BTreeMap, BTreeSet};

use hashbrown::HashMap;

use crate::campaign::{Campaign, CampaignCode, Claim, ClaimState};
use crate::command::{Command, PendingOptions, TransferBody, TransferCommand};
use crate::event::{AccountIndex, Event, LedgerIndex, TransferEvent, TransferKind};
use crate::id::{Id, LedgerCode};
use crate::limits::{
    ACCOUNTS_MAX, EXPIRATIONS_PER_BATCH_MAX, LEDGERS_MAX, POSITION_MAX, TIMESTAMP_NS_MAX,
};
use crate::reject::RejectCode;

/// The whole state of every ledger: accounts, balances, remembered command ids, pending transfers.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    pub(crate) accounts: Vec<Account>,
    pub(crate) account_ids: HashMap<u128, AccountIndex>,
    pub(crate) ledgers: Vec<LedgerInfo>,
    pub(crate) ledger_codes: HashMap<LedgerCode, LedgerIndex>,
    pub(crate) decided: HashMap<IdKey, Decided>,
    pub(crate) pendings: HashMap<u64, PendingRecord>,
    /// Post or void position → the pending transfer's position, to answer retries of either.
    pub(crate) resolutions: HashMap<u64, u64>,
    /// (expires_at_ns, pending position) of every unresolved pending transfer with a timeout.
    pub(crate) expiry: BTreeSet<(u64, u64)>,
    /// (first position, timestamp) of every batch that recorded events, in order.
    pub(crate) batch_times: Vec<(u64, u64)>,
    pub(crate) next_position: u64,
    /// Ids of revoked access tokens.
    pub(crate) revoked: hashbrown::HashSet<Id>,
    /// Campaigns in order of definition; their index is their place.
    pub(crate) campaigns: Vec<Campaign>,
    pub(crate) campaign_ids: HashMap<Id, u32>,
    /// Claims by order id.
    pub(crate) claims: HashMap<Id, Claim>,
    /// Derived: a claim's pending transfer position → its order id. Ordered, because positions
    /// grow with recording: the delivery worker pages through claims by it, and learns of new
    /// claims as the range after the last position it saw.
    pub(crate) claim_pendings: BTreeMap<u64, Id>,
    /// Derived: claims that count toward a limit, per (campaign, user account) and per
    /// (campaign, local day); entries at zero are removed.
    pub(crate) claims_per_user: HashMap<(u32, AccountIndex), u64>,
    pub(crate) claims_per_day: HashMap<(u32, i32), u64>,
    batch: BatchCursor,
    undo: Option<Vec<Undo>>,
}

/// Two ledgers are equal when their recorded state is: the cursor of the batch in progress is not
/// state (replay and live execution set it differently between batches).
impl PartialEq for Ledger {
    fn eq(&self, other: &Ledger) -> bool {
        self.accounts == other.accounts
            && self.account_ids == other.account_ids
            && self.ledgers == other.ledgers
            && self.ledger_codes == other.ledger_codes
            && self.decided == other.decided
            && self.pendings == other.pendings
            && self.resolutions == other.resolutions
            && self.expiry == other.expiry
            && self.batch_times == other.batch_times
            && self.next_position == other.next_position
            && self.revoked == other.revoked
            && self.campaigns == other.campaigns
            && self.campaign_ids == other.campaign_ids
            && self.claims == other.claims
            && self.claim_pendings == other.claim_pendings
            && self.claims_per_user == other.claims_per_user
            && self.claims_per_day == other.claims_per_day
    }
}

impl Eq for Ledger {}

/// An account: an id, a ledger, and its balances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// The client's id; `None` for a ledger's external account.
    pub id: Option<Id>,
    /// The ledger it belongs to.
    pub ledger: LedgerIndex,
    /// Whether its balance may go below zero (always true for external accounts).
    pub allow_overdraft: bool,
    /// Its amounts.
    pub balances: Balances,
}

/// The amounts of an account. `balance = credits_posted - debits_posted`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Balances {
    /// Sum of posted debits.
    pub debits_posted: u64,
    /// Sum of posted credits.
    pub credits_posted: u64,
    /// Sum of debits reserved by pending transfers.
    pub debits_pending: u64,
    /// Sum of credits reserved by pending transfers.
    pub credits_pending: u64,
    /// Number of events that changed the account, creation included.
    pub version: u64,
}

impl Balances {
    /// Posted credits minus posted debits.
    pub fn balance(&self) -> i128 {
        i128::from(self.credits_posted) - i128::from(self.debits_posted)
    }

    /// What may still be debited without overdraft: the balance less pending debits.
    pub fn available(&self) -> i128 {
        self.balance() - i128::from(self.debits_pending)
    }
}

/// A ledger (currency or asset) and its external account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerInfo {
    /// Its code.
    pub code: LedgerCode,
    /// The account deposits come from and withdrawals go to.
    pub external: AccountIndex,
}

/// A pending transfer, kept after resolution so that retries and lookups can be answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingRecord {
    /// The account whose debit is reserved.
    pub debit: AccountIndex,
    /// The account whose credit is reserved.
    pub credit: AccountIndex,
    /// The reserved amount.
    pub amount: u64,
    /// When it voids itself; 0 means never.
    pub expires_at_ns: u64,
    /// Where it stands.
    pub state: PendingState,
}

impl PendingRecord {
    /// Whether its timeout has passed at `timestamp_ns`, expiry event or not.
    pub fn overdue(&self, timestamp_ns: u64) -> bool {
        self.expires_at_ns != 0 && self.expires_at_ns <= timestamp_ns
    }
}

/// Where a pending transfer stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PendingState {
    /// Still reserved.
    Pending,
    /// Posted by the transfer at `position`, moving `amount`.
    Posted {
        /// The posted amount.
        amount: u64,
        /// Position of the post.
        position: u64,
    },
    /// Voided by the transfer at `position`.
    Voided {
        /// Position of the void.
        position: u64,
    },
    /// Expired at `position`.
    Expired {
        /// Position of the expiry event.
        position: u64,
    },
}

/// The ledger's answer to one command (one per transfer of a linked chain).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The account exists, created by this command (`created`) or an earlier one with the same body.
    Account {
        /// Its index.
        index: AccountIndex,
        /// Whether this command created it.
        created: bool,
    },
    /// The transfer is recorded.
    Transfer(TransferReply),
    /// The transfer was refused; the refusal is recorded at `position`.
    Rejected {
        /// Why.
        code: RejectCode,
        /// Position of the rejection event.
        position: u64,
        /// Whether this command was refused now (false: a retry of a refused command).
        created: bool,
    },
    /// The id was used before with a different body; nothing changed.
    Conflict,
    /// The token is revoked, by this command (`created`) or an earlier one.
    Revoked {
        /// Whether this command revoked it.
        created: bool,
    },
    /// The campaign at `index` is defined (or published), by this command (`created`) or an
    /// earlier one with the same body.
    Campaign {
        /// Its index.
        index: u32,
        /// Whether this command changed it.
        created: bool,
    },
    /// The claim `order_id` is recorded (or settled, or its attempt recorded), by this command
    /// (`created`) or an earlier one with the same body.
    Claim {
        /// Its order id.
        order_id: Id,
        /// Whether this command changed it.
        created: bool,
    },
    /// A campaign or claim command was refused; nothing is recorded.
    Refused(CampaignCode),
}

/// What a recorded transfer looked like when it was first answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferReply {
    /// Whether this command recorded it (false: a retry).
    pub created: bool,
    /// Its position in the log.
    pub position: u64,
    /// The timestamp of its batch.
    pub timestamp_ns: u64,
    /// Its kind.
    pub kind: TransferKind,
    /// The account debited.
    pub debit: AccountIndex,
    /// The account credited.
    pub credit: AccountIndex,
    /// Amount moved, reserved or released.
    pub amount: u64,
}

/// The key a transfer id is remembered by: 96 bits of its 128-bit hash. With 4-byte alignment,
/// key and [`Decided`] take 24 bytes, so a hash table bucket stays under 64 bytes per id even
/// right after the table doubles (25 × 16/7 ≈ 57). Two ids collide with probability about
/// n²/2⁹⁷: below 10⁻¹⁵ for ten million ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IdKey([u32; 3]);

/// The key is already a uniform hash: feed the table's hasher one word of it rather than a
/// length-prefixed slice (measured: loading ten million ids went from 4.3 s to 1.6 s). The table's hasher is seeded per
/// process, so clients cannot choose which bucket their ids land in.
impl std::hash::Hash for IdKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(u64::from(self.0[0]) | (u64::from(self.0[1]) << 32));
    }
}

impl IdKey {
    pub(crate) fn of(id: &Id) -> IdKey {
        let hash = id.hash128();
        IdKey([hash as u32, (hash >> 32) as u32, (hash >> 64) as u32])
    }

    pub(crate) fn to_bytes(self) -> [u8; 12] {
        let mut bytes = [0; 12];
        for (chunk, word) in bytes.chunks_exact_mut(4).zip(self.0) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        bytes
    }

    pub(crate) fn from_bytes(bytes: [u8; 12]) -> IdKey {
        let word = |index: usize| {
            u32::from_le_bytes(bytes[index * 4..index * 4 + 4].try_into().expect("4 bytes"))
        };
        IdKey([word(0), word(1), word(2)])
    }
}

/// What the ledger remembers of a decided transfer command, in 12 bytes: the low 32 bits of its
/// body hash (a retry with another body is told apart except with probability 2⁻³²) and the
/// packed outcome, as `u32` halves to keep the alignment at 4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Decided {
    body_hash: u32,
    /// Tag in the top 8 bits (see [`Outcome`]), position in the low 56; low half first.
    outcome: [u32; 2],
}

/// The unpacked outcome of a decided command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Recorded at `position`; `kind_tag` is the transfer kind (see [`kind_tag`]).
    Committed {
        /// The kind, as a tag.
        kind_tag: u8,
        /// Its position.
        position: u64,
    },
    /// Refused, the refusal recorded at `position`.
    Rejected {
        /// Why.
        code: RejectCode,
        /// Position of the rejection event.
        position: u64,
    },
}

const TAG_REJECTED_BIT: u8 = 0x80;

/// A small stable number per transfer kind, used in [`Outcome`].
pub fn kind_tag(kind: TransferKind) -> u8 {
    match kind {
        TransferKind::Deposit => 1,
        TransferKind::Withdrawal => 2,
        TransferKind::Transfer => 3,
        TransferKind::Pending { .. } => 4,
        TransferKind::Post { .. } => 5,
        TransferKind::Void { .. } => 6,
    }
}

impl Decided {
    pub(crate) fn new(body_hash: u64, outcome: u64) -> Decided {
        Decided {
            body_hash: body_hash as u32,
            outcome: [outcome as u32, (outcome >> 32) as u32],
        }
    }

    pub(crate) fn body_matches(self, body_hash: u64) -> bool {
        self.body_hash == body_hash as u32
    }

    pub(crate) fn body_bits(self) -> u32 {
        self.body_hash
    }

    pub(crate) fn outcome_bits(self) -> u64 {
        u64::from(self.outcome[0]) | (u64::from(self.outcome[1]) << 32)
    }

    pub(crate) fn outcome(self) -> Outcome {
        let bits = self.outcome_bits();
        let tag = (bits >> 56) as u8;
        let position = bits & POSITION_MAX;
        if tag & TAG_REJECTED_BIT != 0 {
            let code = RejectCode::from_byte(tag & !TAG_REJECTED_BIT).expect("valid reject code");
            Outcome::Rejected { code, position }
        } else {
            Outcome::Committed {
                kind_tag: tag,
                position,
            }
        }
    }

    fn pack(tag: u8, position: u64) -> u64 {
        assert!(position <= POSITION_MAX);
        (u64::from(tag) << 56) | position
    }
}

/// An event that cannot be applied to the state it meets: the log contradicts the ledger rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event at position {position} cannot be applied: {reason}")]
pub struct ReplayError {
    /// Position of the event.
    pub position: u64,
    /// What is wrong.
    pub reason: String,
}

/// A broken invariant found by [`Ledger::check_invariants`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invariant broken: {0}")]
pub struct InvariantViolation(pub String);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct BatchCursor {
    timestamp_ns: u64,
    /// Whether the current batch has not recorded its first event yet.
    untimed: bool,
    /// In a replayed batch: a claim settled as delivered or voided, whose post or void the
    /// engine always writes as the very next event.
    settlement_awaiting_transfer: Option<Settlement>,
}

/// A claim's settlement, by the position of its pending transfer and whether it was delivered
/// (posted) or voided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Settlement {
    pending: u64,
    delivered: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Undo {
    Balances(AccountIndex, Balances),
    DecidedInserted(IdKey),
    PendingInserted(u64),
    PendingState(u64, PendingState),
    ResolutionInserted(u64),
    ExpiryInserted((u64, u64)),
    ExpiryRemoved((u64, u64)),
    BatchTimePushed,
    Position,
}

/// The outcome of deciding one transfer command, before anything changes.
enum Decision {
    Duplicate(Reply),
    Conflict,
    Commit(TransferEvent),
    Reject(RejectCode),
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// Position the next event will get.
    pub fn next_position(&self) -> u64 {
        self.next_position
    }

    /// Timestamp of the last batch that recorded events; 0 before any.
    pub fn last_timestamp_ns(&self) -> u64 {
        self.batch_times
            .last()
            .map_or(0, |(_, timestamp)| *timestamp)
    }

    /// When the next pending transfer expires, if any has a timeout.
    pub fn next_expiry_ns(&self) -> Option<u64> {
        self.expiry.first().map(|(expires_at_ns, _)| *expires_at_ns)
    }

    /// Starts a batch: the following events carry `timestamp_ns`. Expires due pending transfers
    /// first, appending their events to `events`.
    pub fn begin_batch(&mut self, timestamp_ns: u64, events: &mut Vec<Event>) {
        self.start_batch(timestamp_ns);
        for _ in 0..EXPIRATIONS_PER_BATCH_MAX {
            let Some(&(expires_at_ns, pending)) = self.expiry.first() else {
                break;
            };
            if expires_at_ns > timestamp_ns {
                break;
            }
            let event = Event::Expired { pending };
            self.apply(&event);
            events.push(event);
        }
    }

    /// Starts a batch read back from the log; its events follow through [`Ledger::apply_checked`],
    /// and [`Ledger::end_replayed_batch`] closes it.
    pub fn begin_replayed_batch(
        &mut self,
        first_position: u64,
        timestamp_ns: u64,
    ) -> Result<(), ReplayError> {
        self.end_replayed_batch()?;
        if first_position != self.next_position {
            return Err(ReplayError {
                position: first_position,
                reason: format!(
                    "batch starts at position {first_position}, expected {}",
                    self.next_position
                ),
            });
        }
        if timestamp_ns > TIMESTAMP_NS_MAX {
            return Err(ReplayError {
                position: first_position,
                reason: format!(
                    "batch timestamp {timestamp_ns} is beyond the limit {TIMESTAMP_NS_MAX}"
                ),
            });
        }
        if timestamp_ns <= self.last_timestamp_ns() {
            return Err(ReplayError {
                position: first_position,
                reason: format!(
                    "batch timestamp {timestamp_ns} does not follow {}",
                    self.last_timestamp_ns()
                ),
            });
        }
        self.start_batch(timestamp_ns);
        Ok(())
    }

    /// Checks that the replayed batch is whole: a claim's settlement in it is followed by its
    /// transfer. Without the check, a log cut between the two (or crafted so) would replay into
    /// a claim that disagrees with its transfer.
    pub fn end_replayed_batch(&self) -> Result<(), ReplayError> {
        match self.batch.settlement_awaiting_transfer {
            None => Ok(()),
            Some(settlement) => Err(ReplayError {
                position: self.next_position,
                reason: format!(
                    "the batch ends after the settlement of claim {} without its transfer",
                    self.claim_pendings[&settlement.pending]
                ),
            }),
        }
    }

    fn start_batch(&mut self, timestamp_ns: u64) {
        assert!(
            timestamp_ns > self.last_timestamp_ns(),
            "batch timestamps must increase"
        );
        assert!(self.undo.is_none());
        self.batch = BatchCursor {
            timestamp_ns,
            untimed: true,
            settlement_awaiting_transfer: None,
        };
    }

    /// Decides `command`, applies the events it produces (appending them to `events`) and appends
    /// one reply per command, or per transfer of a linked chain, to `replies`.
    pub fn execute(
        &mut self,
        command: &Command,
        events: &mut Vec<Event>,
        replies: &mut Vec<Reply>,
    ) {
        debug_assert!(
            command.validate().is_ok(),
            "the engine validates commands first"
        );
        match command {
            Command::CreateAccount {
                id,
                ledger,
                allow_overdraft,
            } => {
                replies.push(self.create_account(id, ledger, *allow_overdraft, events));
            }
            Command::Transfer(transfer) => replies.push(self.execute_transfer(transfer, events)),
            Command::Linked(chain) => self.execute_chain(chain, events, replies),
            Command::RevokeToken { token_id } => {
                let created = !self.revoked.contains(token_id);
                if created {
                    let event = Event::TokenRevoked {
                        token_id: token_id.clone(),
                    };
                    self.apply(&event);
                    events.push(event);
                }
                replies.push(Reply::Revoked { created });
            }
            Command::DefineCampaign(definition) => {
                replies.push(self.define_campaign(definition, events))
            }
            Command::PublishCampaign { id } => replies.push(self.publish_campaign(id, events)),
            Command::Claim {
                campaign,
                order_id,
                user,
            } => replies.push(self.claim_gift(campaign, order_id, user, events)),
            Command::SettleClaim { order_id, outcome } => {
                replies.push(self.settle_claim(order_id, *outcome, events))
            }
            Command::RecordClaimAttempt { order_id, attempt } => {
                replies.push(self.record_attempt(order_id, *attempt, events))
            }
            Command::EndClaimAttempt {
                order_id,
                attempt,
                read_timeouts,
            } => replies.push(self.end_attempt(order_id, *attempt, *read_timeouts, events)),
        }
    }

    /// The timestamp of the batch in progress.
    pub(crate) fn batch_timestamp_ns(&self) -> u64 {
        self.batch.timestamp_ns
    }

    /// Whether no linked chain is being applied.
    pub(crate) fn undo_is_off(&self) -> bool {
        self.undo.is_none()
    }

    fn create_account(
        &mut self,
        id: &Id,
        ledger: &LedgerCode,
        allow_overdraft: bool,
        events: &mut Vec<Event>,
    ) -> Reply {
        if let Some(&index) = self.account_ids.get(&id.hash128()) {
            let account = &self.accounts[index as usize];
            let same = account.id.as_ref() == Some(id)
                && self.ledgers[account.ledger as usize].code == *ledger
                && account.allow_overdraft == allow_overdraft;
            return if same {
                Reply::Account {
                    index,
                    created: false,
                }
            } else {
                Reply::Conflict
            };
        }
        let event = Event::AccountCreated {
            id: id.clone(),
            ledger: ledger.clone(),
            allow_overdraft,
        };
        self.apply(&event);
        events.push(event);
        Reply::Account {
            index: (self.accounts.len() - 1) as AccountIndex,
            created: true,
        }
    }

    fn execute_transfer(&mut self, transfer: &TransferCommand, events: &mut Vec<Event>) -> Reply {
        match self.decide(transfer) {
            Decision::Duplicate(reply) => reply,
            Decision::Conflict => Reply::Conflict,
            Decision::Commit(event) => self.commit(event, events),
            Decision::Reject(code) => self.reject(transfer, code, events),
        }
    }

    fn execute_chain(
        &mut self,
        chain: &[TransferCommand],
        events: &mut Vec<Event>,
        replies: &mut Vec<Reply>,
    ) {
        let events_before = events.len();
        let replies_before = replies.len();
        self.undo = Some(Vec::new());
        let mut failure = None;
        for (index, transfer) in chain.iter().enumerate() {
            match self.decide(transfer) {
                Decision::Duplicate(reply) => replies.push(reply),
                Decision::Commit(event) => {
                    let reply = self.commit(event, events);
                    replies.push(reply);
                }
                Decision::Conflict => {
                    failure = Some((index, None));
                    break;
                }
                Decision::Reject(code) => {
                    failure = Some((index, Some(code)));
                    break;
                }
            }
        }
        let undo = self.undo.take().expect("undo log is recording");
        let Some((failed_index, failed_code)) = failure else {
            return;
        };
        self.rollback(undo);
        events.truncate(events_before);
        replies.truncate(replies_before);
        for (index, transfer) in chain.iter().enumerate() {
            let reply = if index == failed_index {
                match failed_code {
                    None => Reply::Conflict,
                    Some(code) => self.reject(transfer, code, events),
                }
            } else {
                match self.decide(transfer) {
                    Decision::Duplicate(reply) => reply,
                    Decision::Conflict => Reply::Conflict,
                    Decision::Commit(_) | Decision::Reject(_) => {
                        self.reject(transfer, RejectCode::LinkedFailed, events)
                    }
                }
            };
            replies.push(reply);
        }
        assert_eq!(replies.len() - replies_before, chain.len());
    }

    fn commit(&mut self, transfer: TransferEvent, events: &mut Vec<Event>) -> Reply {
        let position = self.next_position;
        let reply = TransferReply {
            created: true,
            position,
            timestamp_ns: self.batch.timestamp_ns,
            kind: transfer.kind,
            debit: transfer.debit,
            credit: transfer.credit,
            amount: transfer.amount,
        };
        let event = Event::Transfer(transfer);
        self.apply(&event);
        events.push(event);
        Reply::Transfer(reply)
    }

    fn reject(
        &mut self,
        transfer: &TransferCommand,
        code: RejectCode,
        events: &mut Vec<Event>,
    ) -> Reply {
        let position = self.next_position;
        let event = Event::Rejected {
            id: transfer.id.clone(),
            body_hash: transfer.body_hash(),
            code,
        };
        self.apply(&event);
        events.push(event);
        Reply::Rejected {
            code,
            position,
            created: true,
        }
    }

    fn decide(&self, transfer: &TransferCommand) -> Decision {
        let body_hash = transfer.body_hash();
        if let Some(decided) = self.decided.get(&IdKey::of(&transfer.id)) {
            if !decided.body_matches(body_hash) {
                return Decision::Conflict;
            }
            return match self.replay_reply(transfer, decided.outcome()) {
                Some(reply) => Decision::Duplicate(reply),
                None => Decision::Conflict,
            };
        }
        match self.decide_new(transfer, body_hash) {
            Ok(event) => Decision::Commit(event),
            Err(code) => Decision::Reject(code),
        }
    }

    fn decide_new(
        &self,
        transfer: &TransferCommand,
        body_hash: u64,
    ) -> Result<TransferEvent, RejectCode> {
        let event = |kind, debit, credit, amount| TransferEvent {
            id: transfer.id.clone(),
            body_hash,
            kind,
            debit,
            credit,
            amount,
        };
        let decided = match &transfer.body {
            TransferBody::Deposit { account, amount } => {
                let credit = self.lookup(account)?;
                let debit = self.external_of(credit);
                event(TransferKind::Deposit, debit, credit, amount.get())
            }
            TransferBody::Withdrawal { account, amount } => {
                let debit = self.lookup(account)?;
                let credit = self.external_of(debit);
                event(TransferKind::Withdrawal, debit, credit, amount.get())
            }
            TransferBody::Transfer {
                from,
                to,
                amount,
                pending,
            } => {
                let debit = self.lookup(from)?;
                let credit = self.lookup(to)?;
                let kind = match pending {
                    None => TransferKind::Transfer,
                    Some(PendingOptions { timeout_s: 0 }) => {
                        TransferKind::Pending { expires_at_ns: 0 }
                    }
                    Some(PendingOptions { timeout_s }) => TransferKind::Pending {
                        expires_at_ns: self
                            .batch
                            .timestamp_ns
                            .saturating_add(u64::from(*timeout_s) * 1_000_000_000),
                    },
                };
                event(kind, debit, credit, amount.get())
            }
            TransferBody::Post { pending_id, amount } => {
                let (position, record) = self.open_pending(pending_id)?;
                let amount = amount.map_or(record.amount, |amount| amount.get());
                if amount > record.amount {
                    return Err(RejectCode::ExceedsPendingAmount);
                }
                event(
                    TransferKind::Post { pending: position },
                    record.debit,
                    record.credit,
                    amount,
                )
            }
            TransferBody::Void { pending_id } => {
                let (position, record) = self.open_pending(pending_id)?;
                event(
                    TransferKind::Void { pending: position },
                    record.debit,
                    record.credit,
                    record.amount,
                )
            }
        };
        self.admissible(&decided)?;
        Ok(decided)
    }

    fn lookup(&self, id: &Id) -> Result<AccountIndex, RejectCode> {
        self.account_ids
            .get(&id.hash128())
            .copied()
            .ok_or(RejectCode::NotFound)
    }

    pub(crate) fn external_of(&self, account: AccountIndex) -> AccountIndex {
        self.ledgers[self.accounts[account as usize].ledger as usize].external
    }

    /// The position and record of the unresolved pending transfer `pending_id`.
    fn open_pending(&self, pending_id: &Id) -> Result<(u64, PendingRecord), RejectCode> {
        let decided = self
            .decided
            .get(&IdKey::of(pending_id))
            .ok_or(RejectCode::NotFound)?;
        match decided.outcome() {
            Outcome::Rejected { .. } => Err(RejectCode::NotFound),
            Outcome::Committed {
                kind_tag: 4,
                position,
            } => {
                let record = self.pendings[&position];
                match record.state {
                    PendingState::Pending if !record.overdue(self.batch.timestamp_ns) => {
                        Ok((position, record))
                    }
                    _ => Err(RejectCode::AlreadyResolved),
                }
            }
            Outcome::Committed { .. } => Err(RejectCode::NotPending),
        }
    }

    /// Whether `transfer` may be applied to the current state: the ledger rules every recorded
    /// transfer obeys, checked both when deciding and when replaying.
    pub(crate) fn admissible(&self, transfer: &TransferEvent) -> Result<(), RejectCode> {
        let debit = &self.accounts[transfer.debit as usize];
        let credit = &self.accounts[transfer.credit as usize];
        if debit.ledger != credit.ledger {
            return Err(RejectCode::LedgerMismatch);
        }
        let amount = transfer.amount;
        let (debit_after, credit_after) = match transfer.kind {
            TransferKind::Deposit | TransferKind::Withdrawal | TransferKind::Transfer => (
                debit
                    .balances
                    .debits_posted
                    .checked_add(amount)
                    .map(|posted| (posted, debit.balances.debits_pending)),
                credit
                    .balances
                    .credits_posted
                    .checked_add(amount)
                    .map(|posted| (posted, credit.balances.credits_pending)),
            ),
            TransferKind::Pending { .. } => (
                debit
                    .balances
                    .debits_pending
                    .checked_add(amount)
                    .map(|pending| (debit.balances.debits_posted, pending)),
                credit
                    .balances
                    .credits_pending
                    .checked_add(amount)
                    .map(|pending| (credit.balances.credits_posted, pending)),
            ),
            // The reservation already covers the amount: posting moves it from pending to posted.
            TransferKind::Post { .. } | TransferKind::Void { .. } => (
                Some((debit.balances.debits_posted, 0)),
                Some((credit.balances.credits_posted, 0)),
            ),
        };
        let (Some((debits_posted, debits_pending)), Some((credits_posted, credits_pending))) =
            (debit_after, credit_after)
        else {
            return Err(RejectCode::Overflow);
        };
        if debits_posted.checked_add(debits_pending).is_none()
            || credits_posted.checked_add(credits_pending).is_none()
        {
            return Err(RejectCode::Overflow);
        }
        let needs_funds = matches!(
            transfer.kind,
            TransferKind::Withdrawal | TransferKind::Transfer | TransferKind::Pending { .. }
        );
        if needs_funds && !debit.allow_overdraft && debit.balances.available() < i128::from(amount)
        {
            return Err(RejectCode::InsufficientFunds);
        }
        Ok(())
    }

    /// The answer a retry gets: what the first answer said.
    fn replay_reply(&self, transfer: &TransferCommand, outcome: Outcome) -> Option<Reply> {
        let (kind_tag, position) = match outcome {
            Outcome::Rejected { code, position } => {
                return Some(Reply::Rejected {
                    code,
                    position,
                    created: false,
                });
            }
            Outcome::Committed { kind_tag, position } => (kind_tag, position),
        };
        let timestamp_ns = self.timestamp_at(position);
        let reply = |kind, debit, credit, amount| {
            Some(Reply::Transfer(TransferReply {
                created: false,
                position,
                timestamp_ns,
                kind,
                debit,
                credit,
                amount,
            }))
        };
        // Accounts are never removed, so the ids of a matching body resolve as they did at first.
        // Only a body whose hash collides with the recorded one (2^-32) can fail to, and then it
        // is a conflict, never a panic.
        let resolve = |id: &Id| self.lookup(id).ok();
        match (&transfer.body, kind_tag) {
            (TransferBody::Deposit { account, amount }, 1) => {
                let credit = resolve(account)?;
                reply(
                    TransferKind::Deposit,
                    self.external_of(credit),
                    credit,
                    amount.get(),
                )
            }
            (TransferBody::Withdrawal { account, amount }, 2) => {
                let debit = resolve(account)?;
                reply(
                    TransferKind::Withdrawal,
                    debit,
                    self.external_of(debit),
                    amount.get(),
                )
            }
            (
                TransferBody::Transfer {
                    from,
                    to,
                    amount,
                    pending: None,
                },
                3,
            ) => reply(
                TransferKind::Transfer,
                resolve(from)?,
                resolve(to)?,
                amount.get(),
            ),
            (
                TransferBody::Transfer {
                    pending: Some(_), ..
                },
                4,
            ) => {
                let record = self.pendings.get(&position)?;
                let kind = TransferKind::Pending {
                    expires_at_ns: record.expires_at_ns,
                };
                reply(kind, record.debit, record.credit, record.amount)
            }
            (TransferBody::Post { .. }, 5) | (TransferBody::Void { .. }, 6) => {
                let pending = *self.resolutions.get(&position)?;
                let record = self.pendings.get(&pending)?;
                match record.state {
                    PendingState::Posted { amount, .. } => reply(
                        TransferKind::Post { pending },
                        record.debit,
                        record.credit,
                        amount,
                    ),
                    _ => reply(
                        TransferKind::Void { pending },
                        record.debit,
                        record.credit,
                        record.amount,
                    ),
                }
            }
            _ => None,
        }
    }

    /// The timestamp of the batch that holds `position`.
    pub fn timestamp_at(&self, position: u64) -> u64 {
        let index = self
            .batch_times
            .partition_point(|(first, _)| *first <= position);
        assert!(index > 0, "position {position} precedes every batch");
        self.batch_times[index - 1].1
    }

    /// Applies an event read from the log, after checking that the ledger rules allow it.
    pub fn apply_checked(&mut self, event: &Event) -> Result<(), ReplayError> {
        let fail = |reason: String| {
            Err(ReplayError {
                position: self.next_position,
                reason,
            })
        };
        if let Some(settlement) = self.batch.settlement_awaiting_transfer {
            let resolves = match event {
                Event::Transfer(transfer) => match transfer.kind {
                    TransferKind::Post { pending } => {
                        settlement.delivered && pending == settlement.pending
                    }
                    TransferKind::Void { pending } => {
                        !settlement.delivered && pending == settlement.pending
                    }
                    _ => false,
                },
                _ => false,
            };
            if !resolves {
                return fail(format!(
                    "the settlement of claim {} is not followed by its transfer",
                    self.claim_pendings[&settlement.pending]
                ));
            }
        }
        match event {
            Event::AccountCreated { id, ledger, .. } => {
                if self.account_ids.contains_key(&id.hash128()) {
                    return fail(format!("account {id} is created twice"));
                }
                let new_ledger = !self.ledger_codes.contains_key(ledger);
                if self.accounts.len() + 2 > ACCOUNTS_MAX as usize || (new_ledger && self.ledgers.len() >= LEDGERS_MAX as usize) {
                    return fail("too many accounts or ledgers".into());
                }
            }
            Event::Transfer(transfer) => {
                if self.decided.contains_key(&IdKey::of(&transfer.id)) {
                    return fail(format!("transfer id {} is recorded twice", transfer.id));
                }
                let known = |index: AccountIndex| (index as usize) < self.accounts.len();
                if !known(transfer.debit) || !known(transfer.credit) || transfer.debit == transfer.credit {
                    return fail(format!("transfer {} names unknown or identical accounts", transfer.id));
                }
                match transfer.kind {
                    TransferKind::Post { pending } | TransferKind::Void { pending } => {
                        let Some(record) = self.pendings.get(&pending) else {
                            return fail(format!("transfer {} resolves position {pending}, which is not a pending transfer", transfer.id));
                        };
                        let matches = record.debit == transfer.debit && record.credit == transfer.credit;
                        let amount_ok = match transfer.kind {
                            TransferKind::Void { .. } => transfer.amount == record.amount,
                            _ => transfer.amount <= record.amount,
                        };
                        let overdue = record.overdue(self.batch.timestamp_ns);
                        if record.state != PendingState::Pending || overdue || !matches || !amount_ok {
                            return fail(format!("transfer {} does not match pending transfer at {pending}", transfer.id));
                        }
                        if let Err(reason) = self.check_claim_resolution(pending, transfer.kind) {
                            return fail(reason);
                        }
                    }
                    TransferKind::Deposit | TransferKind::Withdrawal => {
                        let (external, own) = match transfer.kind {
                            TransferKind::Deposit => (transfer.debit, transfer.credit),
                            _ => (transfer.credit, transfer.debit),
                        };
                        if self.accounts[external as usize].id.is_some() || self.accounts[own as usize].id.is_none() {
                            return fail(format!("{} {} does not use the external account", transfer.kind.name(), transfer.id));
                        }
                    }
                    TransferKind::Transfer | TransferKind::Pending { .. } => {
                        if self.accounts[transfer.debit as usize].id.is_none() || self.accounts[transfer.credit as usize].id.is_none() {
                            return fail(format!("transfer {} moves value to or from an external account", transfer.id));
                        }
                    }
                }
                if let Err(code) = self.admissible(transfer) {
                    return fail(format!("transfer {} breaks a ledger rule: {}", transfer.id, code.as_str()));
                }
            }
            Event::Rejected { id, .. } => {
                if self.decided.contains_key(&IdKey::of(id)) {
                    return fail(format!("transfer id {id} is recorded twice"));
                }
            }
            Event::TokenRevoked { token_id } => {
                if self.revoked.contains(token_id) {
                    return fail(format!("token {token_id} is revoked twice"));
                }
            }
            Event::Expired { pending } => match self.pendings.get(pending) {
                Some(record) if record.state == PendingState::Pending && record.expires_at_ns != 0 => {
                    if record.expires_at_ns > self.batch.timestamp_ns {
                        return fail(format!("pending transfer at {pending} expires after its expiry event"));
                    }
                }
                _ => return fail(format!("expiry of position {pending}, which is not an open pending transfer with a timeout")),
            },
            Event::CampaignDefined(_)
            | Event::CampaignPublished { .. }
            | Event::ClaimRecorded { .. }
            | Event::ClaimSettled { .. }
            | Event::ClaimAttempted { .. }
            | Event::ClaimAttemptEnded { .. } => {
                if let Err(reason) = self.check_campaign_event(event) {
                    return fail(reason);
                }
            }
        }
        self.batch.settlement_awaiting_transfer = match event {
            Event::ClaimSettled { order_id, outcome } => {
                let pending = self.claims[order_id].pending;
                match outcome {
                    ClaimState::Delivered => Some(Settlement {
                        pending,
                        delivered: true,
                    }),
                    ClaimState::Voided => Some(Settlement {
                        pending,
                        delivered: false,
                    }),
                    ClaimState::PendingDelivery | ClaimState::Unknown => None,
                }
            }
            _ => None,
        };
        self.apply(event);
        Ok(())
    }

    /// Applies an event. Total for every event [`Ledger::execute`] produced or
    /// [`Ledger::apply_checked`] accepted; anything else is a programming error and panics.
    pub fn apply(&mut self, event: &Event) {
        let position = self.next_position;
        assert!(position < POSITION_MAX);
        if self.batch.untimed {
            self.batch.untimed = false;
            self.batch_times.push((position, self.batch.timestamp_ns));
            self.record(Undo::BatchTimePushed);
        }
        match event {
            Event::AccountCreated {
                id,
                ledger,
                allow_overdraft,
            } => self.apply_account_created(id, ledger, *allow_overdraft),
            Event::Transfer(transfer) => self.apply_transfer(transfer, position),
            Event::Rejected {
                id,
                body_hash,
                code,
            } => {
                let tag = TAG_REJECTED_BIT | code.to_byte();
                self.insert_decided(
                    IdKey::of(id),
                    Decided::new(*body_hash, Decided::pack(tag, position)),
                );
            }
            Event::TokenRevoked { token_id } => {
                // Revocations never happen inside a linked chain, so they need no undo.
                assert!(self.undo.is_none());
                assert!(
                    self.revoked.insert(token_id.clone()),
                    "a token is revoked at most once"
                );
            }
            Event::Expired { pending } => {
                self.release(*pending, PendingState::Expired { position }, 0)
            }
            Event::CampaignDefined(_)
            | Event::CampaignPublished { .. }
            | Event::ClaimRecorded { .. }
            | Event::ClaimSettled { .. }
            | Event::ClaimAttempted { .. }
            | Event::ClaimAttemptEnded { .. } => self.apply_campaign_event(event),
        }
        self.next_position += 1;
        self.record(Undo::Position);
    }

    fn apply_account_created(&mut self, id: &Id, ledger: &LedgerCode, allow_overdraft: bool) {
        // Account creation never happens inside a linked chain, so it needs no undo.
        assert!(self.undo.is_none());
        // Memory runs out long before these limits; they guard the u32 indices.
        assert!(self.accounts.len() + 2 <= ACCOUNTS_MAX as usize);
        assert!(self.ledgers.len() < LEDGERS_MAX as usize);
        let ledger_index = match self.ledger_codes.get(ledger) {
            Some(index) => *index,
            None => {
                let index = self.ledgers.len() as LedgerIndex;
                let external = self.accounts.len() as AccountIndex;
                self.accounts.push(Account {
                    id: None,
                    ledger: index,
                    allow_overdraft: true,
                    balances: Balances {
                        version: 1,
                        ..Balances::default()
                    },
                });
                self.ledgers.push(LedgerInfo {
                    code: ledger.clone(),
                    external,
                });
                self.ledger_codes.insert(ledger.clone(), index);
                index
            }
        };
        let index = self.accounts.len() as AccountIndex;
        self.accounts.push(Account {
            id: Some(id.clone()),
            ledger: ledger_index,
            allow_overdraft,
            balances: Balances {
                version: 1,
                ..Balances::default()
            },
        });
        let previous = self.account_ids.insert(id.hash128(), index);
        assert!(previous.is_none(), "account {id} created twice");
    }

    fn apply_transfer(&mut self, transfer: &TransferEvent, position: u64) {
        let (debit, credit, amount) = (transfer.debit, transfer.credit, transfer.amount);
        assert_ne!(debit, credit);
        assert_eq!(
            self.accounts[debit as usize].ledger,
            self.accounts[credit as usize].ledger
        );
        assert!(amount > 0);
        let tag = kind_tag(transfer.kind);
        self.insert_decided(
            IdKey::of(&transfer.id),
            Decided::new(transfer.body_hash, Decided::pack(tag, position)),
        );
        match transfer.kind {
            TransferKind::Deposit | TransferKind::Withdrawal | TransferKind::Transfer => {
                self.update(debit, |balances| {
                    balances.debits_posted = balances
                        .debits_posted
                        .checked_add(amount)
                        .expect("admissible")
                });
                self.update(credit, |balances| {
                    balances.credits_posted = balances
                        .credits_posted
                        .checked_add(amount)
                        .expect("admissible")
                });
            }
            TransferKind::Pending { expires_at_ns } => {
                self.update(debit, |balances| {
                    balances.debits_pending = balances
                        .debits_pending
                        .checked_add(amount)
                        .expect("admissible")
                });
                self.update(credit, |balances| {
                    balances.credits_pending = balances
                        .credits_pending
                        .checked_add(amount)
                        .expect("admissible")
                });
                let record = PendingRecord {
                    debit,
                    credit,
                    amount,
                    expires_at_ns,
                    state: PendingState::Pending,
                };
                assert!(self.pendings.insert(position, record).is_none());
                self.record(Undo::PendingInserted(position));
                if expires_at_ns != 0 {
                    self.expiry.insert((expires_at_ns, position));
                    self.record(Undo::ExpiryInserted((expires_at_ns, position)));
                }
            }
            TransferKind::Post { pending } => {
                self.release(pending, PendingState::Posted { amount, position }, amount);
                self.insert_resolution(position, pending);
            }
            TransferKind::Void { pending } => {
                self.release(pending, PendingState::Voided { position }, 0);
                self.insert_resolution(position, pending);
            }
        }
    }

    /// Releases the reservation of the pending transfer at `pending`, moving it to `state`, and
    /// posts `posted` of it (0 for a void or an expiry): one change per account, so each
    /// account's version grows by one per event.
    fn release(&mut self, pending: u64, state: PendingState, posted: u64) {
        let record = self
            .pendings
            .get_mut(&pending)
            .expect("pending transfer exists");
        assert_eq!(
            record.state,
            PendingState::Pending,
            "a pending transfer resolves at most once"
        );
        let previous = std::mem::replace(&mut record.state, state);
        let PendingRecord {
            debit,
            credit,
            amount,
            expires_at_ns,
            ..
        } = *record;
        self.record(Undo::PendingState(pending, previous));
        if expires_at_ns != 0 {
            assert!(self.expiry.remove(&(expires_at_ns, pending)));
            self.record(Undo::ExpiryRemoved((expires_at_ns, pending)));
        }
        self.update(debit, |balances| {
            balances.debits_pending = balances
                .debits_pending
                .checked_sub(amount)
                .expect("reserved");
            balances.debits_posted = balances
                .debits_posted
                .checked_add(posted)
                .expect("admissible");
        });
        self.update(credit, |balances| {
            balances.credits_pending = balances
                .credits_pending
                .checked_sub(amount)
                .expect("reserved");
            balances.credits_posted = balances
                .credits_posted
                .checked_add(posted)
                .expect("admissible");
        });
    }

    fn update(&mut self, index: AccountIndex, change: impl FnOnce(&mut Balances)) {
        let balances = &mut self.accounts[index as usize].balances;
        let before = *balances;
        change(balances);
        balances.version += 1;
        self.record(Undo::Balances(index, before));
    }

    fn insert_decided(&mut self, key: IdKey, decided: Decided) {
        let previous = self.decided.insert(key, decided);
        assert!(previous.is_none(), "a command id is decided at most once");
        self.record(Undo::DecidedInserted(key));
    }

    fn insert_resolution(&mut self, position: u64, pending: u64) {
        assert!(self.resolutions.insert(position, pending).is_none());
        self.record(Undo::ResolutionInserted(position));
    }

    fn record(&mut self, undo: Undo) {
        if let Some(log) = &mut self.undo {
            log.push(undo);
        }
    }

    fn rollback(&mut self, undo: Vec<Undo>) {
        for step in undo.into_iter().rev() {
            match step {
                Undo::Balances(index, before) => self.accounts[index as usize].balances = before,
                Undo::DecidedInserted(key) => assert!(self.decided.remove(&key).is_some()),
                Undo::PendingInserted(position) => {
                    assert!(self.pendings.remove(&position).is_some())
                }
                Undo::PendingState(position, state) => {
                    self.pendings.get_mut(&position).expect("recorded").state = state
                }
                Undo::ResolutionInserted(position) => {
                    assert!(self.resolutions.remove(&position).is_some())
                }
                Undo::ExpiryInserted(key) => assert!(self.expiry.remove(&key)),
                Undo::ExpiryRemoved(key) => assert!(self.expiry.insert(key)),
                Undo::BatchTimePushed => {
                    self.batch_times.pop().expect("recorded");
                    self.batch.untimed = true;
                }
                Undo::Position => self.next_position -= 1,
            }
        }
    }

    /// The account with client id `id`, and its index.
    pub fn account_by_id(&self, id: &Id) -> Option<(AccountIndex, &Account)> {
        let index = *self.account_ids.get(&id.hash128())?;
        Some((index, &self.accounts[index as usize]))
    }

    /// The account at `index`. Panics if there is none: indices come from the ledger itself.
    pub fn account(&self, index: AccountIndex) -> &Account {
        &self.accounts[index as usize]
    }

    /// Number of accounts, external accounts included.
    pub fn account_count(&self) -> usize {
        self.accounts.len()
    }

    /// The ledger at `index`.
    pub fn ledger(&self, index: LedgerIndex) -> &LedgerInfo {
        &self.ledgers[index as usize]
    }

    /// Every ledger, in order of first use.
    pub fn ledgers(&self) -> &[LedgerInfo] {
        &self.ledgers
    }

    /// Whether the access token `token_id` is revoked.
    pub fn is_revoked(&self, token_id: &str) -> bool {
        Id::new(token_id).is_ok_and(|id| self.revoked.contains(&id))
    }

    /// Every revoked access token id.
    pub fn revoked_tokens(&self) -> impl Iterator<Item = &Id> {
        self.revoked.iter()
    }

    /// Number of remembered transfer command ids.
    pub fn decided_count(&self) -> usize {
        self.decided.len()
    }

    /// What became of the transfer command `id`, if it was decided.
    pub fn outcome(&self, id: &Id) -> Option<Outcome> {
        self.decided
            .get(&IdKey::of(id))
            .map(|decided| decided.outcome())
    }

    /// The pending transfer recorded at `position`.
    pub fn pending(&self, position: u64) -> Option<&PendingRecord> {
        self.pendings.get(&position)
    }

    /// Checks every invariant over the whole state: O(accounts + pending transfers).
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        let fail = |text: String| Err(InvariantViolation(text));
        let mut balance_sums = vec![0i128; self.ledgers.len()];
        let mut pending_debits = vec![0i128; self.ledgers.len()];
        let mut pending_credits = vec![0i128; self.ledgers.len()];
        for (index, account) in self.accounts.iter().enumerate() {
            let ledger = account.ledger as usize;
            balance_sums[ledger] += account.balances.balance();
            pending_debits[ledger] += i128::from(account.balances.debits_pending);
            pending_credits[ledger] += i128::from(account.balances.credits_pending);
            if !account.allow_overdraft && account.balances.available() < 0 {
                return fail(format!(
                    "account {:?} (index {index}) is below zero without allow_overdraft",
                    account.id
                ));
            }
            let is_external = self.ledgers[ledger].external as usize == index;
            if is_external != account.id.is_none() {
                return fail(format!(
                    "account index {index} is external in one place only"
                ));
            }
        }
        for (ledger, info) in self.ledgers.iter().enumerate() {
            if balance_sums[ledger] != 0 {
                return fail(format!(
                    "balances of ledger {} sum to {}, not zero",
                    info.code, balance_sums[ledger]
                ));
            }
            if pending_debits[ledger] != pending_credits[ledger] {
                return fail(format!(
                    "pending debits and credits of ledger {} differ",
                    info.code
                ));
            }
        }
        let mut reserved = vec![(0u128, 0u128); self.accounts.len()];
        let mut with_timeout = 0usize;
        for record in self
            .pendings
            .values()
            .filter(|record| record.state == PendingState::Pending)
        {
            reserved[record.debit as usize].0 += u128::from(record.amount);
            reserved[record.credit as usize].1 += u128::from(record.amount);
            with_timeout += usize::from(record.expires_at_ns != 0);
        }
        for (index, account) in self.accounts.iter().enumerate() {
            let expected = (
                u128::from(account.balances.debits_pending),
                u128::from(account.balances.credits_pending),
            );
            if reserved[index] != expected {
                return fail(format!("pending amounts of account index {index} do not match its open pending transfers"));
            }
        }
        if with_timeout != self.expiry.len() {
            return fail("the expiry queue does not match the open pending transfers".into());
        }
        if self.account_ids.len() + self.ledgers.len() != self.accounts.len() {
            return fail("the account id index does not match the accounts".into());
        }
        self.check_campaign_invariants().map_err(InvariantViolation)
    }
}
