//! Gift campaigns and claims in the ledger: the limits are decided on the state thread, with the
//! ledger's own two-phase transfers moving the gifts.
//!
//! # Why the gifts move as ordinary transfers
//!
//! Every unit of a gift is a balance in the campaign's *gift ledger*: the pool account is funded
//! by a deposit, a claim is a pending transfer of one unit from the pool to the user, and
//! settling a claim posts or voids that transfer. The campaign events (`CampaignDefined`,
//! `ClaimRecorded`, ...) carry only what is not money, so every reader of the log that knows
//! transfers (the read model, the event feed, the Redis projector) keeps correct balances without
//! knowing campaigns at all, and the ledger's invariants (every ledger sums to zero, pending
//! amounts match) cover the gifts too.
//!
//! # Ids the campaign machinery owns
//!
//! Ids starting with [`RESERVED_PREFIX`] (`tally:`) belong to the ledger: a client command that
//! names one, as a new id or as a reference, is invalid (see [`crate::Command::validate`]). So no
//! client can move units out of a pool, post or void a claim's transfer behind the claim's back,
//! or take an id a claim will need later. The ids, all deterministic:
//!
//! - pool account and its funding deposit: `tally:pool:{campaign}` and `tally:fund:{campaign}`,
//!   which is why a campaign id is at most [`CAMPAIGN_ID_BYTES_MAX`] bytes;
//! - a claim's pending transfer: `tally:claim:{h}`, and the transfer that settles it
//!   `tally:delivered:{h}` (post) or `tally:voided:{h}` (void), where `{h}` is the order id's
//!   128-bit hash ([`crate::hash128`]) in 32 lower-case hex digits: order ids are the clients'
//!   and may take all 128 bytes an id allows, so they cannot be embedded.
//!
//! The pool is created and funded when the campaign is *defined*, not when it is published: the
//! verification account must claim (and receive) a gift while the campaign is still a draft, and
//! that gift comes from the pool.
//!
//! A user is an account of the gift ledger with the user's id: the claim creates it (without
//! overdraft) when it does not exist yet; an account of that id in another ledger refuses the
//! claim with `ledger_mismatch`.
//!
//! # The local day, deterministically
//!
//! The daily limit counts claims per local day in the campaign's time zone, but the core reads
//! no time zone database (it does no I/O, and replay must not depend on the database of the
//! machine that replays). So the definition carries the campaign's UTC offsets over its window:
//! the offset in force at `starts_at` and every change before `ends_at` ([`OffsetChange`]),
//! computed once by the server from the time zone database when the campaign is defined and
//! recorded in the log with it. A claim's day is then `floor((t + offset(t)) / 86400)` with `t`
//! the batch's timestamp in seconds: the same on replay, on every machine, whatever database it
//! has. A claim by the verification account before `starts_at` (allowed in draft) counts on the
//! first day.
//!
//! # What counts toward the limits
//!
//! A claim counts toward its user's and its day's limit from the moment it is recorded, while it
//! waits for delivery, once delivered, and when its delivery is in doubt
//! (`unknown_needs_reconciliation`: the target may have delivered). A *voided* claim gave nothing
//! (its unit went back to the pool), so it stops counting: the user may claim again, and so may
//! another user on that day. Refused claims leave no trace, so a refused order id may be claimed
//! again later (the next day, say).
//!
//! # Settling
//!
//! The delivery worker drives a claim with [`crate::Command::RecordClaimAttempt`] (attempt `n`
//! started; idempotent per `n`) and [`crate::Command::SettleClaim`]: `delivered` posts the
//! transfer, `voided` voids it, `unknown_needs_reconciliation` keeps it pending. A delivered or
//! voided claim is final; an unknown one may still be settled either way (reconciliation).
//! A campaign may be published once its verification account has a delivered claim in it.

use std::num::NonZeroU64;

use hashbrown::HashMap;

use crate::command::{PendingOptions, TransferBody, TransferCommand};
use crate::event::{AccountIndex, Event, TransferEvent, TransferKind};
use crate::id::{hash128, Id, LedgerCode};
use crate::ledger::{Ledger, PendingState, Reply};
use crate::limits::{
    CAMPAIGNS_MAX, CAMPAIGN_ID_BYTES_MAX, CAMPAIGN_OFFSET_CHANGES_MAX, CAMPAIGN_SPEC_BYTES_MAX,
    CLAIMS_MAX, CLAIM_ATTEMPTS_MAX, TIMESTAMP_NS_MAX, UTC_OFFSET_SECONDS_MAX,
};
use crate::reject::RejectCode;

/// The prefix of every id the ledger itself owns; see the module documentation.
pub const RESERVED_PREFIX: &str = "tally:";

const NS_PER_SECOND: u64 = 1_000_000_000;
const SECONDS_PER_DAY: i64 = 24 * 60 * 60;

/// Whether `id` is one of the ledger's own ids, which clients may not name.
pub fn is_reserved(id: &Id) -> bool {
    id.as_str().starts_with(RESERVED_PREFIX)
}

/// The pool account of campaign `campaign`: `tally:pool:{campaign}`.
pub fn pool_account_id(campaign: &Id) -> Id {
    derived(&format!("{RESERVED_PREFIX}pool:{campaign}"))
}

/// The deposit that funds the pool of campaign `campaign`: `tally:fund:{campaign}`.
pub fn funding_transfer_id(campaign: &Id) -> Id {
    derived(&format!("{RESERVED_PREFIX}fund:{campaign}"))
}

/// The pending transfer of the claim with order id `order_id`: `tally:claim:{hash}`.
pub fn claim_transfer_id(order_id: &Id) -> Id {
    derived(&format!(
        "{RESERVED_PREFIX}claim:{:032x}",
        hash128(order_id.as_str())
    ))
}

/// The transfer that settles the claim `order_id` as `outcome` (a post for `delivered`, a void
/// for `voided`): `tally:delivered:{hash}` or `tally:voided:{hash}`. `None` for an outcome that
/// moves nothing.
pub fn settle_transfer_id(order_id: &Id, outcome: ClaimState) -> Option<Id> {
    let word = match outcome {
        ClaimState::Delivered => "delivered",
        ClaimState::Voided => "voided",
        ClaimState::PendingDelivery | ClaimState::Unknown => return None,
    };
    Some(derived(&format!(
        "{RESERVED_PREFIX}{word}:{:032x}",
        hash128(order_id.as_str())
    )))
}

fn derived(text: &str) -> Id {
    Id::new(text).expect("derived ids fit the id rules: see CAMPAIGN_ID_BYTES_MAX")
}

/// From `from_ns` on, the campaign's local time is UTC plus `offset_seconds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffsetChange {
    /// When the offset starts to apply, in nanoseconds since the Unix epoch.
    pub from_ns: u64,
    /// Seconds east of UTC.
    pub offset_seconds: i32,
}

/// What the ledger keeps of a campaign definition. `spec` is the full definition in the
/// server's stored form (delivery targets, timeouts, ...): opaque to the ledger, but in the log,
/// so it survives restarts with everything else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CampaignDefinition {
    /// The campaign id, at most [`CAMPAIGN_ID_BYTES_MAX`] bytes.
    pub id: Id,
    /// The ledger the gifts are counted in.
    pub gift_ledger: LedgerCode,
    /// Units put in the pool.
    pub inventory: u64,
    /// Most claims one user may hold in the campaign.
    pub per_user_limit: u64,
    /// Most claims per local day.
    pub daily_limit: u64,
    /// When claims open, in nanoseconds since the Unix epoch.
    pub starts_at_ns: u64,
    /// When claims close (exclusive).
    pub ends_at_ns: u64,
    /// The account that must claim and receive a gift before the campaign may go live.
    pub verification_account: Id,
    /// The UTC offsets over `[starts_at_ns, ends_at_ns)`: the first at `starts_at_ns`, then every
    /// change, in order.
    pub offsets: Vec<OffsetChange>,
    /// The whole definition in the server's stored form.
    pub spec: Vec<u8>,
}

/// Why a campaign definition is malformed, whatever the ledger's state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidDefinition {
    /// The campaign id is too long for the pool's id.
    #[error("a campaign id has at most {CAMPAIGN_ID_BYTES_MAX} bytes, so that its pool account id `tally:pool:ID` is an id; found {0}")]
    IdTooLong(usize),
    /// The campaign id is a reserved id.
    #[error("ids starting with `tally:` are the ledger's own")]
    Reserved,
    /// A limit or the inventory is zero.
    #[error("inventory, per_user_limit and daily_limit must be above zero")]
    ZeroLimit,
    /// The window is empty or beyond Tally's clock.
    #[error("ends_at must be after starts_at, and both within Tally's clock")]
    Window,
    /// The offsets do not describe the window.
    #[error("the UTC offsets must start at starts_at, increase, stay before ends_at, be at most {CAMPAIGN_OFFSET_CHANGES_MAX} and each within ±{UTC_OFFSET_SECONDS_MAX} s")]
    Offsets,
    /// The stored definition is too large.
    #[error("the stored definition has at most {CAMPAIGN_SPEC_BYTES_MAX} bytes, found {0}")]
    SpecTooLarge(usize),
}

impl CampaignDefinition {
    /// Checks what the types do not; the same checks apply to a definition read from the log.
    pub fn validate(&self) -> Result<(), InvalidDefinition> {
        if self.id.as_str().len() > CAMPAIGN_ID_BYTES_MAX {
            return Err(InvalidDefinition::IdTooLong(self.id.as_str().len()));
        }
        if is_reserved(&self.id) || is_reserved(&self.verification_account) {
            return Err(InvalidDefinition::Reserved);
        }
        if self.inventory == 0 || self.per_user_limit == 0 || self.daily_limit == 0 {
            return Err(InvalidDefinition::ZeroLimit);
        }
        if self.starts_at_ns >= self.ends_at_ns || self.ends_at_ns > TIMESTAMP_NS_MAX {
            return Err(InvalidDefinition::Window);
        }
        let offsets_ok = !self.offsets.is_empty()
            && self.offsets.len() <= CAMPAIGN_OFFSET_CHANGES_MAX
            && self.offsets[0].from_ns == self.starts_at_ns
            && self
                .offsets
                .windows(2)
                .all(|pair| pair[0].from_ns < pair[1].from_ns)
            && self.offsets.iter().all(|change| {
                change.from_ns < self.ends_at_ns
                    && change.offset_seconds.unsigned_abs() <= UTC_OFFSET_SECONDS_MAX
            });
        if !offsets_ok {
            return Err(InvalidDefinition::Offsets);
        }
        if self.spec.len() > CAMPAIGN_SPEC_BYTES_MAX {
            return Err(InvalidDefinition::SpecTooLarge(self.spec.len()));
        }
        Ok(())
    }

    /// A 64-bit hash of the whole definition, to tell a repeated definition from a conflicting
    /// one. Persisted in snapshots: the encoding it hashes is the event's, which never changes.
    pub fn body_hash(&self) -> u64 {
        let mut bytes = Vec::with_capacity(128 + self.spec.len());
        crate::event::encode_definition(self, &mut bytes);
        xxhash_rust::xxh3::xxh3_64(&bytes)
    }

    /// The local day (days since 1970-01-01 on the campaign's wall clock) of `timestamp_ns`,
    /// clamped into the campaign's window.
    pub fn local_day(&self, timestamp_ns: u64) -> i32 {
        let at = timestamp_ns.clamp(self.starts_at_ns, self.ends_at_ns - 1);
        let index = self.offsets.partition_point(|change| change.from_ns <= at);
        assert!(index > 0, "the first offset applies from starts_at");
        let offset = i64::from(self.offsets[index - 1].offset_seconds);
        let seconds = i64::try_from(at / NS_PER_SECOND).expect("bounded by TIMESTAMP_NS_MAX");
        i32::try_from((seconds + offset).div_euclid(SECONDS_PER_DAY)).expect("days fit in i32")
    }
}

/// Where a campaign stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CampaignState {
    /// Defined; only its verification account may claim.
    Draft,
    /// Published: open to everyone within its window and limits.
    Live,
}

impl CampaignState {
    /// The stable name used in the API.
    pub fn name(self) -> &'static str {
        match self {
            CampaignState::Draft => "draft",
            CampaignState::Live => "live",
        }
    }
}

/// A campaign as the ledger keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Campaign {
    /// The definition, as recorded.
    pub definition: CampaignDefinition,
    /// Its [`CampaignDefinition::body_hash`].
    pub body_hash: u64,
    /// Draft or live.
    pub state: CampaignState,
    /// The pool account.
    pub pool: AccountIndex,
    /// Whether the verification account has a delivered claim in it.
    pub verified: bool,
}

/// Where a claim stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimState {
    /// Recorded; its unit is reserved and waits for delivery.
    PendingDelivery,
    /// The target confirmed the delivery; the transfer is posted.
    Delivered,
    /// The delivery failed for good; the transfer is voided and the unit is back in the pool.
    Voided,
    /// The target may or may not have delivered; the unit stays reserved until reconciled.
    Unknown,
}

impl ClaimState {
    /// Every state.
    pub const ALL: [ClaimState; 4] = [
        ClaimState::PendingDelivery,
        ClaimState::Delivered,
        ClaimState::Voided,
        ClaimState::Unknown,
    ];

    /// The stable name used in the API.
    pub fn name(self) -> &'static str {
        match self {
            ClaimState::PendingDelivery => "pending_delivery",
            ClaimState::Delivered => "delivered",
            ClaimState::Voided => "voided",
            ClaimState::Unknown => "unknown_needs_reconciliation",
        }
    }

    /// Whether nothing may change it any more.
    pub fn is_final(self) -> bool {
        matches!(self, ClaimState::Delivered | ClaimState::Voided)
    }

    pub(crate) fn to_byte(self) -> u8 {
        match self {
            ClaimState::PendingDelivery => 0,
            ClaimState::Delivered => 1,
            ClaimState::Voided => 2,
            ClaimState::Unknown => 3,
        }
    }

    pub(crate) fn from_byte(byte: u8) -> Option<ClaimState> {
        ClaimState::ALL
            .into_iter()
            .find(|state| state.to_byte() == byte)
    }
}

/// A claim as the ledger keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// Index of its campaign.
    pub campaign: u32,
    /// The user's account.
    pub user: AccountIndex,
    /// Position of its pending transfer.
    pub pending: u64,
    /// The local day it counts on.
    pub day: i32,
    /// Hash of campaign and user, to tell a repeated claim from a conflicting one.
    pub body_hash: u64,
    /// Where it stands.
    pub state: ClaimState,
    /// Delivery attempts started.
    pub attempts: u32,
    /// The last attempt recorded as ended without settling the claim (0: none).
    pub attempts_ended: u32,
    /// The order's read timeouts as of the end of attempt `attempts_ended`.
    pub read_timeouts: u32,
}

/// The hash of a claim's body, by which a repeated order id is told from a conflicting one.
pub(crate) fn claim_body_hash(campaign: &Id, user: &Id) -> u64 {
    let mut bytes = Vec::with_capacity(campaign.as_str().len() + user.as_str().len() + 2);
    for id in [campaign, user] {
        bytes.push(id.as_str().len() as u8);
        bytes.extend_from_slice(id.as_str().as_bytes());
    }
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

/// Why the ledger refuses a campaign or claim command: stable codes for the API. Refusals are
/// not recorded (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CampaignCode {
    /// No campaign with that id.
    CampaignNotFound,
    /// No claim with that order id.
    ClaimNotFound,
    /// The campaign is a draft and the user is not its verification account.
    CampaignNotLive,
    /// The campaign's window has not opened yet.
    CampaignNotStarted,
    /// The campaign's window has closed.
    CampaignEnded,
    /// The user holds `per_user_limit` claims already.
    PerUserLimitReached,
    /// The local day holds `daily_limit` claims already.
    DailyLimitReached,
    /// The pool has no unit left that is not reserved.
    InventoryExhausted,
    /// The user's account belongs to another ledger than the campaign's gift ledger.
    LedgerMismatch,
    /// Publishing needs a delivered claim of the verification account.
    CampaignNotVerified,
    /// The claim is delivered or voided; it cannot change any more.
    ClaimAlreadySettled,
    /// A delivery attempt number skips one.
    AttemptOutOfOrder,
    /// A bound of the ledger (campaigns, claims, attempts) is reached.
    CapacityExceeded,
}

impl CampaignCode {
    /// Every code, for tests and documentation.
    pub const ALL: [CampaignCode; 13] = [
        CampaignCode::CampaignNotFound,
        CampaignCode::ClaimNotFound,
        CampaignCode::CampaignNotLive,
        CampaignCode::CampaignNotStarted,
        CampaignCode::CampaignEnded,
        CampaignCode::PerUserLimitReached,
        CampaignCode::DailyLimitReached,
        CampaignCode::InventoryExhausted,
        CampaignCode::LedgerMismatch,
        CampaignCode::CampaignNotVerified,
        CampaignCode::ClaimAlreadySettled,
        CampaignCode::AttemptOutOfOrder,
        CampaignCode::CapacityExceeded,
    ];

    /// The stable code of the API's error body.
    pub fn as_str(self) -> &'static str {
        match self {
            CampaignCode::CampaignNotFound => "campaign_not_found",
            CampaignCode::ClaimNotFound => "claim_not_found",
            CampaignCode::CampaignNotLive => "campaign_not_live",
            CampaignCode::CampaignNotStarted => "campaign_not_started",
            CampaignCode::CampaignEnded => "campaign_ended",
            CampaignCode::PerUserLimitReached => "per_user_limit_reached",
            CampaignCode::DailyLimitReached => "daily_limit_reached",
            CampaignCode::InventoryExhausted => "inventory_exhausted",
            CampaignCode::LedgerMismatch => "ledger_mismatch",
            CampaignCode::CampaignNotVerified => "campaign_not_verified",
            CampaignCode::ClaimAlreadySettled => "claim_already_settled",
            CampaignCode::AttemptOutOfOrder => "attempt_out_of_order",
            CampaignCode::CapacityExceeded => "capacity_exceeded",
        }
    }

    /// A sentence for humans.
    pub fn message(self) -> &'static str {
        match self {
            CampaignCode::CampaignNotFound => "no campaign with that id",
            CampaignCode::ClaimNotFound => "no claim with that order id",
            CampaignCode::CampaignNotLive => {
                "the campaign is a draft: only its verification account may claim until it is published"
            }
            CampaignCode::CampaignNotStarted => "the campaign has not started yet",
            CampaignCode::CampaignEnded => "the campaign has ended",
            CampaignCode::PerUserLimitReached => "the user has reached the campaign's per-user limit",
            CampaignCode::DailyLimitReached => "the campaign's daily limit is reached for today",
            CampaignCode::InventoryExhausted => "the campaign's pool has no gift left",
            CampaignCode::LedgerMismatch => {
                "the user's account belongs to another ledger than the campaign's gift ledger"
            }
            CampaignCode::CampaignNotVerified => {
                "the campaign's verification account has not claimed and received a gift of it yet"
            }
            CampaignCode::ClaimAlreadySettled => "the claim is already delivered or voided",
            CampaignCode::AttemptOutOfOrder => {
                "delivery attempts are recorded in order: attempt n follows attempt n - 1"
            }
            CampaignCode::CapacityExceeded => {
                "the ledger holds as many campaigns, claims or attempts as it may"
            }
        }
    }
}

const _: () = assert!(CAMPAIGNS_MAX < u32::MAX as usize);
const _: () = assert!(CLAIMS_MAX < u32::MAX as usize);
const _: () = assert!(CLAIM_ATTEMPTS_MAX < u32::MAX);

impl Ledger {
    /// Every campaign, in order of definition (a campaign's index is its place here).
    pub fn campaigns(&self) -> &[Campaign] {
        &self.campaigns
    }

    /// The campaign `id` and its index.
    pub fn campaign_by_id(&self, id: &Id) -> Option<(u32, &Campaign)> {
        let index = *self.campaign_ids.get(id)?;
        Some((index, &self.campaigns[index as usize]))
    }

    /// The claim with order id `order_id`.
    pub fn claim(&self, order_id: &Id) -> Option<&Claim> {
        self.claims.get(order_id)
    }

    /// Every claim by order id, in no particular order.
    pub fn claims(&self) -> impl Iterator<Item = (&Id, &Claim)> {
        self.claims.iter()
    }

    /// Claims of campaign `campaign` that count toward `user`'s limit.
    pub fn claims_of_user(&self, campaign: u32, user: AccountIndex) -> u64 {
        self.claims_per_user
            .get(&(campaign, user))
            .copied()
            .unwrap_or(0)
    }

    /// Claims of campaign `campaign` that count toward local day `day`'s limit.
    pub fn claims_of_day(&self, campaign: u32, day: i32) -> u64 {
        self.claims_per_day
            .get(&(campaign, day))
            .copied()
            .unwrap_or(0)
    }

    fn emit(&mut self, event: Event, events: &mut Vec<Event>) {
        self.apply(&event);
        events.push(event);
    }

    pub(crate) fn define_campaign(
        &mut self,
        definition: &CampaignDefinition,
        events: &mut Vec<Event>,
    ) -> Reply {
        let body_hash = definition.body_hash();
        if let Some((index, campaign)) = self.campaign_by_id(&definition.id) {
            return if campaign.body_hash == body_hash {
                Reply::Campaign {
                    index,
                    created: false,
                }
            } else {
                Reply::Conflict
            };
        }
        if self.campaigns.len() >= CAMPAIGNS_MAX {
            return Reply::Refused(CampaignCode::CapacityExceeded);
        }
        let pool = pool_account_id(&definition.id);
        let funding = funding_transfer_id(&definition.id);
        // Clients cannot name reserved ids, so only a log written before they were reserved
        // can hold these.
        if self.account_by_id(&pool).is_some() || self.outcome(&funding).is_some() {
            return Reply::Conflict;
        }
        let pool_created = Event::AccountCreated {
            id: pool.clone(),
            ledger: definition.gift_ledger.clone(),
            allow_overdraft: false,
        };
        self.emit(pool_created, events);
        let (pool_index, _) = self.account_by_id(&pool).expect("just created");
        let deposit = TransferCommand {
            id: funding.clone(),
            body: TransferBody::Deposit {
                account: pool,
                amount: NonZeroU64::new(definition.inventory).expect("validated: above zero"),
            },
        };
        let funded = Event::Transfer(TransferEvent {
            id: funding,
            body_hash: deposit.body_hash(),
            kind: TransferKind::Deposit,
            debit: self.external_of(pool_index),
            credit: pool_index,
            amount: definition.inventory,
        });
        self.emit(funded, events);
        self.emit(Event::CampaignDefined(Box::new(definition.clone())), events);
        Reply::Campaign {
            index: (self.campaigns.len() - 1) as u32,
            created: true,
        }
    }

    pub(crate) fn publish_campaign(&mut self, id: &Id, events: &mut Vec<Event>) -> Reply {
        let Some((index, campaign)) = self.campaign_by_id(id) else {
            return Reply::Refused(CampaignCode::CampaignNotFound);
        };
        match campaign.state {
            CampaignState::Live => Reply::Campaign {
                index,
                created: false,
            },
            CampaignState::Draft if !campaign.verified => {
                Reply::Refused(CampaignCode::CampaignNotVerified)
            }
            CampaignState::Draft => {
                self.emit(
                    Event::CampaignPublished {
                        campaign: id.clone(),
                    },
                    events,
                );
                Reply::Campaign {
                    index,
                    created: true,
                }
            }
        }
    }

    pub(crate) fn claim_gift(
        &mut self,
        campaign_id: &Id,
        order_id: &Id,
        user: &Id,
        events: &mut Vec<Event>,
    ) -> Reply {
        if let Some(claim) = self.claims.get(order_id) {
            return if claim.body_hash == claim_body_hash(campaign_id, user) {
                Reply::Claim {
                    order_id: order_id.clone(),
                    created: false,
                }
            } else {
                Reply::Conflict
            };
        }
        let Some((index, _)) = self.campaign_by_id(campaign_id) else {
            return Reply::Refused(CampaignCode::CampaignNotFound);
        };
        let user_index = match self.decide_claim(index, user) {
            Ok(user_index) => user_index,
            Err(code) => return Reply::Refused(code),
        };
        let transfer_id = claim_transfer_id(order_id);
        if self.outcome(&transfer_id).is_some() {
            // Two order ids with one 128-bit hash: astronomically unlikely, never a panic.
            return Reply::Conflict;
        }
        let pool = self.campaigns[index as usize].pool;
        let user_index = match user_index {
            Some(user_index) => user_index,
            None => {
                let created = Event::AccountCreated {
                    id: user.clone(),
                    ledger: self.campaigns[index as usize]
                        .definition
                        .gift_ledger
                        .clone(),
                    allow_overdraft: false,
                };
                self.emit(created, events);
                (self.accounts.len() - 1) as AccountIndex
            }
        };
        let command = TransferCommand {
            id: transfer_id.clone(),
            body: TransferBody::Transfer {
                from: pool_account_id(campaign_id),
                to: user.clone(),
                amount: NonZeroU64::MIN,
                pending: Some(PendingOptions { timeout_s: 0 }),
            },
        };
        let pending = self.next_position;
        let reserved = Event::Transfer(TransferEvent {
            id: transfer_id,
            body_hash: command.body_hash(),
            kind: TransferKind::Pending { expires_at_ns: 0 },
            debit: pool,
            credit: user_index,
            amount: 1,
        });
        self.emit(reserved, events);
        let recorded = Event::ClaimRecorded {
            order_id: order_id.clone(),
            campaign: index,
            pending,
        };
        self.emit(recorded, events);
        Reply::Claim {
            order_id: order_id.clone(),
            created: true,
        }
    }

    /// Whether `user` may claim a gift of campaign `index` now; the user's account if it exists.
    fn decide_claim(&self, index: u32, user: &Id) -> Result<Option<AccountIndex>, CampaignCode> {
        if self.claims.len() >= CLAIMS_MAX {
            return Err(CampaignCode::CapacityExceeded);
        }
        let campaign = &self.campaigns[index as usize];
        let definition = &campaign.definition;
        let verifying =
            campaign.state == CampaignState::Draft && *user == definition.verification_account;
        let now = self.batch_timestamp_ns();
        if campaign.state == CampaignState::Draft && !verifying {
            return Err(CampaignCode::CampaignNotLive);
        }
        if now >= definition.ends_at_ns {
            return Err(CampaignCode::CampaignEnded);
        }
        if now < definition.starts_at_ns && !verifying {
            return Err(CampaignCode::CampaignNotStarted);
        }
        let user_index = match self.account_by_id(user) {
            Some((user_index, account)) => {
                if account.ledger != self.accounts[campaign.pool as usize].ledger {
                    return Err(CampaignCode::LedgerMismatch);
                }
                Some(user_index)
            }
            None => None,
        };
        let held = user_index.map_or(0, |user_index| self.claims_of_user(index, user_index));
        if held >= definition.per_user_limit {
            return Err(CampaignCode::PerUserLimitReached);
        }
        if self.claims_of_day(index, definition.local_day(now)) >= definition.daily_limit {
            return Err(CampaignCode::DailyLimitReached);
        }
        if self.accounts[campaign.pool as usize].balances.available() < 1 {
            return Err(CampaignCode::InventoryExhausted);
        }
        if let Some(user_index) = user_index {
            let reservation = TransferEvent {
                id: definition.id.clone(),
                body_hash: 0,
                kind: TransferKind::Pending { expires_at_ns: 0 },
                debit: campaign.pool,
                credit: user_index,
                amount: 1,
            };
            match self.admissible(&reservation) {
                Ok(()) => {}
                Err(RejectCode::InsufficientFunds) => return Err(CampaignCode::InventoryExhausted),
                Err(_) => return Err(CampaignCode::CapacityExceeded),
            }
        }
        Ok(user_index)
    }

    pub(crate) fn settle_claim(
        &mut self,
        order_id: &Id,
        outcome: ClaimState,
        events: &mut Vec<Event>,
    ) -> Reply {
        let Some(claim) = self.claims.get(order_id) else {
            return Reply::Refused(CampaignCode::ClaimNotFound);
        };
        if claim.state == outcome {
            return Reply::Claim {
                order_id: order_id.clone(),
                created: false,
            };
        }
        if claim.state.is_final() {
            return Reply::Refused(CampaignCode::ClaimAlreadySettled);
        }
        let pending = claim.pending;
        let transfer_id = settle_transfer_id(order_id, outcome);
        if transfer_id
            .as_ref()
            .is_some_and(|id| self.outcome(id).is_some())
        {
            return Reply::Conflict;
        }
        let settled = Event::ClaimSettled {
            order_id: order_id.clone(),
            outcome,
        };
        self.emit(settled, events);
        if let Some(id) = transfer_id {
            let record = self.pendings[&pending];
            let pending_id = claim_transfer_id(order_id);
            let (kind, body) = match outcome {
                ClaimState::Delivered => (
                    TransferKind::Post { pending },
                    TransferBody::Post {
                        pending_id,
                        amount: None,
                    },
                ),
                _ => (
                    TransferKind::Void { pending },
                    TransferBody::Void { pending_id },
                ),
            };
            let body_hash = TransferCommand {
                id: id.clone(),
                body,
            }
            .body_hash();
            let resolved = Event::Transfer(TransferEvent {
                id,
                body_hash,
                kind,
                debit: record.debit,
                credit: record.credit,
                amount: record.amount,
            });
            self.emit(resolved, events);
        }
        Reply::Claim {
            order_id: order_id.clone(),
            created: true,
        }
    }

    pub(crate) fn record_attempt(
        &mut self,
        order_id: &Id,
        attempt: u32,
        events: &mut Vec<Event>,
    ) -> Reply {
        let Some(claim) = self.claims.get(order_id) else {
            return Reply::Refused(CampaignCode::ClaimNotFound);
        };
        if attempt <= claim.attempts {
            return Reply::Claim {
                order_id: order_id.clone(),
                created: false,
            };
        }
        if claim.state.is_final() {
            return Reply::Refused(CampaignCode::ClaimAlreadySettled);
        }
        if attempt != claim.attempts + 1 {
            return Reply::Refused(CampaignCode::AttemptOutOfOrder);
        }
        let attempted = Event::ClaimAttempted {
            order_id: order_id.clone(),
            attempt,
        };
        self.emit(attempted, events);
        Reply::Claim {
            order_id: order_id.clone(),
            created: true,
        }
    }

    pub(crate) fn end_attempt(
        &mut self,
        order_id: &Id,
        attempt: u32,
        read_timeouts: u32,
        events: &mut Vec<Event>,
    ) -> Reply {
        let Some(claim) = self.claims.get(order_id) else {
            return Reply::Refused(CampaignCode::ClaimNotFound);
        };
        if attempt == claim.attempts_ended && read_timeouts == claim.read_timeouts {
            return Reply::Claim {
                order_id: order_id.clone(),
                created: false,
            };
        }
        if claim.state.is_final() {
            return Reply::Refused(CampaignCode::ClaimAlreadySettled);
        }
        // Only the attempt in progress can end, once, and read timeouts only grow: anything
        // else is a worker out of step with the log.
        if attempt != claim.attempts
            || attempt <= claim.attempts_ended
            || read_timeouts < claim.read_timeouts
        {
            return Reply::Refused(CampaignCode::AttemptOutOfOrder);
        }
        let ended = Event::ClaimAttemptEnded {
            order_id: order_id.clone(),
            attempt,
            read_timeouts,
        };
        self.emit(ended, events);
        Reply::Claim {
            order_id: order_id.clone(),
            created: true,
        }
    }

    /// Claims whose pending transfer comes after position `after` (every claim for `None`), in
    /// the order they were recorded.
    pub fn claims_after(&self, after: Option<u64>) -> impl Iterator<Item = (&Id, &Claim)> {
        let start = after.map_or(0, |after| after.saturating_add(1));
        self.claim_pendings
            .range(start..)
            .map(|(_, order_id)| (order_id, &self.claims[order_id]))
    }

    /// Applies a campaign event; see [`Ledger::apply`].
    pub(crate) fn apply_campaign_event(&mut self, event: &Event) {
        // Campaign commands never run inside a linked chain, so they need no undo.
        assert!(self.undo_is_off());
        match event {
            Event::CampaignDefined(definition) => {
                let (pool, _) = self
                    .account_by_id(&pool_account_id(&definition.id))
                    .expect("the pool is created before its campaign");
                assert!(self.campaigns.len() < CAMPAIGNS_MAX);
                let index = self.campaigns.len() as u32;
                self.campaigns.push(Campaign {
                    definition: (**definition).clone(),
                    body_hash: definition.body_hash(),
                    state: CampaignState::Draft,
                    pool,
                    verified: false,
                });
                assert!(self
                    .campaign_ids
                    .insert(definition.id.clone(), index)
                    .is_none());
            }
            Event::CampaignPublished { campaign } => {
                let index = self.campaign_ids[campaign];
                self.campaigns[index as usize].state = CampaignState::Live;
            }
            Event::ClaimRecorded {
                order_id,
                campaign,
                pending,
            } => {
                assert!(self.claims.len() < CLAIMS_MAX);
                let user = self.pendings[pending].credit;
                let definition = &self.campaigns[*campaign as usize].definition;
                let user_id = self.accounts[user as usize].id.as_ref().expect("a user");
                let claim = Claim {
                    campaign: *campaign,
                    user,
                    pending: *pending,
                    day: definition.local_day(self.batch_timestamp_ns()),
                    body_hash: claim_body_hash(&definition.id, user_id),
                    state: ClaimState::PendingDelivery,
                    attempts: 0,
                    attempts_ended: 0,
                    read_timeouts: 0,
                };
                self.count(&claim, 1);
                assert!(self
                    .claim_pendings
                    .insert(*pending, order_id.clone())
                    .is_none());
                assert!(self.claims.insert(order_id.clone(), claim).is_none());
            }
            Event::ClaimSettled { order_id, outcome } => {
                let claim = self.claims.get_mut(order_id).expect("a recorded claim");
                assert!(!claim.state.is_final());
                claim.state = *outcome;
                let claim = claim.clone();
                match outcome {
                    ClaimState::Voided => self.count(&claim, -1),
                    ClaimState::Delivered => {
                        let campaign = &mut self.campaigns[claim.campaign as usize];
                        let user = self.accounts[claim.user as usize].id.as_ref();
                        if user == Some(&campaign.definition.verification_account) {
                            campaign.verified = true;
                        }
                    }
                    ClaimState::PendingDelivery | ClaimState::Unknown => {}
                }
            }
            Event::ClaimAttempted { order_id, attempt } => {
                let claim = self.claims.get_mut(order_id).expect("a recorded claim");
                assert_eq!(*attempt, claim.attempts + 1);
                claim.attempts = *attempt;
            }
            Event::ClaimAttemptEnded {
                order_id,
                attempt,
                read_timeouts,
            } => {
                let claim = self.claims.get_mut(order_id).expect("a recorded claim");
                assert_eq!(*attempt, claim.attempts);
                claim.attempts_ended = *attempt;
                claim.read_timeouts = *read_timeouts;
            }
            _ => unreachable!("not a campaign event"),
        }
    }

    /// Adds `delta` (±1) to the counts `claim` is part of; a count back at zero is removed, so
    /// that the maps hold what a snapshot rebuilds.
    fn count(&mut self, claim: &Claim, delta: i64) {
        bump(
            &mut self.claims_per_user,
            (claim.campaign, claim.user),
            delta,
        );
        bump(&mut self.claims_per_day, (claim.campaign, claim.day), delta);
    }

    /// Whether a campaign event read from the log may be applied; see [`Ledger::apply_checked`].
    pub(crate) fn check_campaign_event(&self, event: &Event) -> Result<(), String> {
        match event {
            Event::CampaignDefined(definition) => {
                definition
                    .validate()
                    .map_err(|error| format!("campaign {}: {error}", definition.id))?;
                if self.campaign_ids.contains_key(&definition.id) {
                    return Err(format!("campaign {} is defined twice", definition.id));
                }
                if self.campaigns.len() >= CAMPAIGNS_MAX {
                    return Err("too many campaigns".into());
                }
                let pool = self.account_by_id(&pool_account_id(&definition.id));
                let pool_ok = pool.is_some_and(|(_, account)| {
                    self.ledgers[account.ledger as usize].code == definition.gift_ledger
                });
                if !pool_ok || self.outcome(&funding_transfer_id(&definition.id)).is_none() {
                    return Err(format!(
                        "campaign {} comes before its pool or the pool's funding",
                        definition.id
                    ));
                }
            }
            Event::CampaignPublished { campaign } => match self.campaign_by_id(campaign) {
                Some((_, found)) if found.state == CampaignState::Draft && found.verified => {}
                _ => {
                    return Err(format!(
                        "campaign {campaign} is published while not a verified draft"
                    ))
                }
            },
            Event::ClaimRecorded {
                order_id,
                campaign,
                pending,
            } => {
                if self.claims.contains_key(order_id) || self.claims.len() >= CLAIMS_MAX {
                    return Err(format!(
                        "claim {order_id} is recorded twice or beyond the bound"
                    ));
                }
                let Some(found) = self.campaigns.get(*campaign as usize) else {
                    return Err(format!("claim {order_id} names an unknown campaign"));
                };
                let record = self.pendings.get(pending);
                let reserves_a_unit = record.is_some_and(|record| {
                    record.state == PendingState::Pending
                        && record.debit == found.pool
                        && record.amount == 1
                        && record.expires_at_ns == 0
                });
                if !reserves_a_unit || self.claim_pendings.contains_key(pending) {
                    return Err(format!(
                        "claim {order_id} does not name a fresh reservation of one unit of its pool"
                    ));
                }
                let user = record.expect("checked").credit;
                let user_id = self.accounts[user as usize].id.clone();
                let Some(user_id) = user_id else {
                    return Err(format!("claim {order_id} is for an external account"));
                };
                let now = self.batch_timestamp_ns();
                let definition = &found.definition;
                let verifying = found.state == CampaignState::Draft
                    && user_id == definition.verification_account;
                let open = (found.state == CampaignState::Live || verifying)
                    && now < definition.ends_at_ns
                    && (now >= definition.starts_at_ns || verifying);
                let within = self.claims_of_user(*campaign, user) < definition.per_user_limit
                    && self.claims_of_day(*campaign, definition.local_day(now))
                        < definition.daily_limit;
                if !open || !within {
                    return Err(format!(
                        "claim {order_id} is outside its campaign's window or limits"
                    ));
                }
            }
            Event::ClaimSettled { order_id, outcome } => match self.claims.get(order_id) {
                Some(claim)
                    if !claim.state.is_final()
                        && claim.state != *outcome
                        && *outcome != ClaimState::PendingDelivery => {}
                _ => {
                    return Err(format!(
                        "claim {order_id} cannot be settled as {}",
                        outcome.name()
                    ))
                }
            },
            Event::ClaimAttempted { order_id, attempt } => match self.claims.get(order_id) {
                Some(claim)
                    if !claim.state.is_final()
                        && *attempt == claim.attempts + 1
                        && *attempt <= CLAIM_ATTEMPTS_MAX => {}
                _ => {
                    return Err(format!(
                        "attempt {attempt} of claim {order_id} is out of order"
                    ))
                }
            },
            Event::ClaimAttemptEnded {
                order_id,
                attempt,
                read_timeouts,
            } => match self.claims.get(order_id) {
                Some(claim)
                    if !claim.state.is_final()
                        && *attempt == claim.attempts
                        && *attempt > claim.attempts_ended
                        && *read_timeouts >= claim.read_timeouts => {}
                _ => {
                    return Err(format!(
                        "the end of attempt {attempt} of claim {order_id} is out of order"
                    ))
                }
            },
            _ => unreachable!("not a campaign event"),
        }
        Ok(())
    }

    /// For a post or void of the pending transfer at `pending`: if it is a claim's, the claim
    /// must have just been settled that way (the settlement comes first in the log).
    pub(crate) fn check_claim_resolution(
        &self,
        pending: u64,
        kind: TransferKind,
    ) -> Result<(), String> {
        let Some(order_id) = self.claim_pendings.get(&pending) else {
            return Ok(());
        };
        let state = self.claims[order_id].state;
        let expected = match kind {
            TransferKind::Post { .. } => ClaimState::Delivered,
            _ => ClaimState::Voided,
        };
        if state == expected {
            Ok(())
        } else {
            Err(format!(
                "the transfer of claim {order_id} is resolved while the claim is {}",
                state.name()
            ))
        }
    }

    /// Checks the campaign invariants; see [`Ledger::check_invariants`].
    pub(crate) fn check_campaign_invariants(&self) -> Result<(), String> {
        let mut per_user: HashMap<(u32, AccountIndex), u64> = HashMap::new();
        let mut per_day: HashMap<(u32, i32), u64> = HashMap::new();
        for (order_id, claim) in &self.claims {
            let record = self
                .pendings
                .get(&claim.pending)
                .ok_or("a claim without its transfer")?;
            let consistent = matches!(
                (claim.state, record.state),
                (
                    ClaimState::PendingDelivery | ClaimState::Unknown,
                    PendingState::Pending
                ) | (ClaimState::Delivered, PendingState::Posted { .. })
                    | (ClaimState::Voided, PendingState::Voided { .. })
            );
            if !consistent || self.claim_pendings.get(&claim.pending) != Some(order_id) {
                return Err(format!("claim {order_id} disagrees with its transfer"));
            }
            // Only a settlement resolves a claim's transfer: one that expired by itself would
            // leave the claim pending over a transfer that is gone.
            if record.expires_at_ns != 0 {
                return Err(format!("the transfer of claim {order_id} has a timeout"));
            }
            if claim.state != ClaimState::Voided {
                *per_user.entry((claim.campaign, claim.user)).or_insert(0) += 1;
                *per_day.entry((claim.campaign, claim.day)).or_insert(0) += 1;
            }
        }
        if per_user != self.claims_per_user || per_day != self.claims_per_day {
            return Err("the claim counts do not match the claims".into());
        }
        for ((campaign, _), count) in &per_user {
            if *count > self.campaigns[*campaign as usize].definition.per_user_limit {
                return Err(format!(
                    "a user of campaign index {campaign} is over the per-user limit"
                ));
            }
        }
        for ((campaign, day), count) in &per_day {
            if *count > self.campaigns[*campaign as usize].definition.daily_limit {
                return Err(format!(
                    "day {day} of campaign index {campaign} is over the daily limit"
                ));
            }
        }
        for campaign in &self.campaigns {
            let pool = &self.accounts[campaign.pool as usize];
            if pool.id.as_ref() != Some(&pool_account_id(&campaign.definition.id)) {
                return Err(format!(
                    "campaign {} has the wrong pool",
                    campaign.definition.id
                ));
            }
        }
        Ok(())
    }
}

fn bump<K: std::hash::Hash + Eq + Copy>(map: &mut HashMap<K, u64>, key: K, delta: i64) {
    let count = map.entry(key).or_insert(0);
    *count = count
        .checked_add_signed(delta)
        .expect("counts stay within 0..=limit");
    if *count == 0 {
        map.remove(&key);
    }
}
