//! Events: the facts the ledger records, and their compact binary encoding.
//!
//! Events are what the log stores and what replay applies; they are separate from the HTTP types
//! and from [`crate::Command`]. The encoding is versioned with the log format (see
//! `docs/format.md`): a tag byte per event, LEB128 varints for integers, and length-prefixed
//! strings. Decoding never trusts its input: every length is bounded and every byte accounted for.

use crate::campaign::{CampaignDefinition, ClaimState, OffsetChange};
use crate::id::{Id, LedgerCode};
use crate::limits::{CAMPAIGN_OFFSET_CHANGES_MAX, CAMPAIGN_SPEC_BYTES_MAX};
use crate::reject::RejectCode;

/// Index of an account in the ledger state; assigned in creation order, so replay reproduces it.
pub type AccountIndex = u32;
/// Index of a ledger in the ledger state; assigned in order of first use.
pub type LedgerIndex = u32;

/// One recorded fact. Its position is its index in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// An account was opened; it gets the next account index (a new ledger first gets its
    /// external account).
    AccountCreated {
        /// The account id.
        id: Id,
        /// Its ledger.
        ledger: LedgerCode,
        /// Whether it may go below zero.
        allow_overdraft: bool,
    },
    /// Value moved or was reserved or released.
    Transfer(TransferEvent),
    /// A transfer command was refused; remembered so that a retry gets the same answer.
    Rejected {
        /// The command's transfer id.
        id: Id,
        /// The command's body hash, to tell a retry from a conflict.
        body_hash: u64,
        /// Why.
        code: RejectCode,
    },
    /// A pending transfer reached its timeout and released its reservation.
    Expired {
        /// Position of the pending transfer.
        pending: u64,
    },
    /// An access token was revoked: every node that reads the log refuses it from here on.
    TokenRevoked {
        /// The token's id.
        token_id: Id,
    },
    /// A campaign was defined as a draft. Its pool account's creation and funding come just
    /// before it (see [`crate::campaign`]).
    CampaignDefined(Box<CampaignDefinition>),
    /// A draft campaign went live.
    CampaignPublished {
        /// The campaign id.
        campaign: Id,
    },
    /// A claim was recorded; its pending transfer (of one unit from the pool to the user) is
    /// at position `pending`, just before.
    ClaimRecorded {
        /// The client's order id.
        order_id: Id,
        /// The campaign's index.
        campaign: u32,
        /// Position of the claim's pending transfer.
        pending: u64,
    },
    /// A claim was settled; for `Delivered` and `Voided` the post or void of its transfer
    /// follows.
    ClaimSettled {
        /// The claim's order id.
        order_id: Id,
        /// Its new state.
        outcome: ClaimState,
    },
    /// Delivery attempt `attempt` of a claim started.
    ClaimAttempted {
        /// The claim's order id.
        order_id: Id,
        /// The attempt's number, from 1.
        attempt: u32,
    },
    /// Delivery attempt `attempt` of a claim ended without settling it (appended in format
    /// version 1 as tag 11; older logs never hold it).
    ClaimAttemptEnded {
        /// The claim's order id.
        order_id: Id,
        /// The attempt's number, the last one started.
        attempt: u32,
        /// The order's read timeouts so far.
        read_timeouts: u32,
    },
}

/// A committed transfer command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferEvent {
    /// The transfer id.
    pub id: Id,
    /// The command's body hash.
    pub body_hash: u64,
    /// What kind of movement.
    pub kind: TransferKind,
    /// The account debited (for post and void: the pending transfer's).
    pub debit: AccountIndex,
    /// The account credited.
    pub credit: AccountIndex,
    /// Amount moved, reserved or released, in minor units; never zero.
    pub amount: u64,
}

/// The kinds of transfer event, with what each needs besides the common fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferKind {
    /// From the external account into an account.
    Deposit,
    /// From an account to the external account.
    Withdrawal,
    /// Between two accounts.
    Transfer,
    /// A reservation: first phase of a two-phase transfer.
    Pending {
        /// Timestamp at which it voids itself; 0 means never.
        expires_at_ns: u64,
    },
    /// Second phase: moves `amount` of the pending transfer at position `pending`.
    Post {
        /// Position of the pending transfer.
        pending: u64,
    },
    /// Second phase: releases the pending transfer at position `pending`.
    Void {
        /// Position of the pending transfer.
        pending: u64,
    },
}

impl TransferKind {
    /// The stable name used in the API.
    pub fn name(self) -> &'static str {
        match self {
            TransferKind::Deposit => "deposit",
            TransferKind::Withdrawal => "withdrawal",
            TransferKind::Transfer => "transfer",
            TransferKind::Pending { .. } => "pending",
            TransferKind::Post { .. } => "post",
            TransferKind::Void { .. } => "void",
        }
    }
}

/// Why bytes do not decode into events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event {event_index} at body offset {offset}: {reason}")]
pub struct DecodeError {
    /// Index of the event within the batch.
    pub event_index: u32,
    /// Byte offset within the batch body.
    pub offset: usize,
    /// What is wrong.
    pub reason: &'static str,
}

const TAG_ACCOUNT_CREATED: u8 = 1;
const TAG_TRANSFER: u8 = 2;
const TAG_REJECTED: u8 = 3;
const TAG_EXPIRED: u8 = 4;
const TAG_TOKEN_REVOKED: u8 = 5;
const TAG_CAMPAIGN_DEFINED: u8 = 6;
const TAG_CAMPAIGN_PUBLISHED: u8 = 7;
const TAG_CLAIM_RECORDED: u8 = 8;
const TAG_CLAIM_SETTLED: u8 = 9;
const TAG_CLAIM_ATTEMPTED: u8 = 10;
const TAG_CLAIM_ATTEMPT_ENDED: u8 = 11;

const KIND_DEPOSIT: u8 = 1;
const KIND_WITHDRAWAL: u8 = 2;
const KIND_TRANSFER: u8 = 3;
const KIND_PENDING: u8 = 4;
const KIND_POST: u8 = 5;
const KIND_VOID: u8 = 6;

/// Appends the encoding of `event` to `out`.
pub fn encode_event(event: &Event, out: &mut Vec<u8>) {
    match event {
        Event::AccountCreated {
            id,
            ledger,
            allow_overdraft,
        } => {
            out.push(TAG_ACCOUNT_CREATED);
            put_str(out, id.as_str());
            put_str(out, ledger.as_str());
            out.push(u8::from(*allow_overdraft));
        }
        Event::Transfer(transfer) => {
            out.push(TAG_TRANSFER);
            put_str(out, transfer.id.as_str());
            out.extend_from_slice(&transfer.body_hash.to_le_bytes());
            let (kind, extra) = match transfer.kind {
                TransferKind::Deposit => (KIND_DEPOSIT, None),
                TransferKind::Withdrawal => (KIND_WITHDRAWAL, None),
                TransferKind::Transfer => (KIND_TRANSFER, None),
                TransferKind::Pending { expires_at_ns } => (KIND_PENDING, Some(expires_at_ns)),
                TransferKind::Post { pending } => (KIND_POST, Some(pending)),
                TransferKind::Void { pending } => (KIND_VOID, Some(pending)),
            };
            out.push(kind);
            put_varint(out, u64::from(transfer.debit));
            put_varint(out, u64::from(transfer.credit));
            put_varint(out, transfer.amount);
            if let Some(extra) = extra {
                put_varint(out, extra);
            }
        }
        Event::Rejected {
            id,
            body_hash,
            code,
        } => {
            out.push(TAG_REJECTED);
            put_str(out, id.as_str());
            out.extend_from_slice(&body_hash.to_le_bytes());
            out.push(code.to_byte());
        }
        Event::Expired { pending } => {
            out.push(TAG_EXPIRED);
            put_varint(out, *pending);
        }
        Event::TokenRevoked { token_id } => {
            out.push(TAG_TOKEN_REVOKED);
            put_str(out, token_id.as_str());
        }
        Event::CampaignDefined(definition) => {
            out.push(TAG_CAMPAIGN_DEFINED);
            encode_definition(definition, out);
        }
        Event::CampaignPublished { campaign } => {
            out.push(TAG_CAMPAIGN_PUBLISHED);
            put_str(out, campaign.as_str());
        }
        Event::ClaimRecorded {
            order_id,
            campaign,
            pending,
        } => {
            out.push(TAG_CLAIM_RECORDED);
            put_str(out, order_id.as_str());
            put_varint(out, u64::from(*campaign));
            put_varint(out, *pending);
        }
        Event::ClaimSettled { order_id, outcome } => {
            out.push(TAG_CLAIM_SETTLED);
            put_str(out, order_id.as_str());
            out.push(outcome.to_byte());
        }
        Event::ClaimAttempted { order_id, attempt } => {
            out.push(TAG_CLAIM_ATTEMPTED);
            put_str(out, order_id.as_str());
            put_varint(out, u64::from(*attempt));
        }
        Event::ClaimAttemptEnded {
            order_id,
            attempt,
            read_timeouts,
        } => {
            out.push(TAG_CLAIM_ATTEMPT_ENDED);
            put_str(out, order_id.as_str());
            put_varint(out, u64::from(*attempt));
            put_varint(out, u64::from(*read_timeouts));
        }
    }
}

/// Appends the encoding of a campaign definition (the body of `CampaignDefined`) to `out`.
pub(crate) fn encode_definition(definition: &CampaignDefinition, out: &mut Vec<u8>) {
    put_str(out, definition.id.as_str());
    put_str(out, definition.gift_ledger.as_str());
    for value in [
        definition.inventory,
        definition.per_user_limit,
        definition.daily_limit,
        definition.starts_at_ns,
        definition.ends_at_ns,
    ] {
        put_varint(out, value);
    }
    put_str(out, definition.verification_account.as_str());
    put_varint(out, definition.offsets.len() as u64);
    for change in &definition.offsets {
        put_varint(out, change.from_ns);
        // Zigzag, so that offsets west of Greenwich stay short.
        let offset = change.offset_seconds;
        put_varint(out, u64::from(((offset << 1) ^ (offset >> 31)) as u32));
    }
    put_varint(out, definition.spec.len() as u64);
    out.extend_from_slice(&definition.spec);
}

/// Decodes bytes written by `encode_definition`, and nothing else.
pub(crate) fn decode_definition(bytes: &[u8]) -> Result<CampaignDefinition, DecodeError> {
    let mut reader = Reader {
        bytes,
        offset: 0,
        event_index: 0,
    };
    let definition = reader.definition()?;
    if reader.offset != bytes.len() {
        return Err(reader.error("bytes left after the campaign definition"));
    }
    Ok(definition)
}

/// Encodes a batch body: the events back to back.
pub fn encode_events(events: &[Event]) -> Vec<u8> {
    let mut out = Vec::with_capacity(events.len() * 40);
    for event in events {
        encode_event(event, &mut out);
    }
    out
}

/// Decodes a batch body that must hold exactly `count` events and nothing else.
pub fn decode_events(body: &[u8], count: u32) -> Result<Vec<Event>, DecodeError> {
    // Each event takes at least two bytes, so a lying count cannot make us allocate much.
    let mut events = Vec::with_capacity((count as usize).min(body.len() / 2));
    let mut reader = Reader {
        bytes: body,
        offset: 0,
        event_index: 0,
    };
    for event_index in 0..count {
        reader.event_index = event_index;
        events.push(reader.event()?);
    }
    if reader.offset != body.len() {
        return Err(reader.error("bytes left after the last event"));
    }
    Ok(events)
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    assert!(text.len() <= u8::MAX as usize);
    out.push(text.len() as u8);
    out.extend_from_slice(text.as_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
    event_index: u32,
}

impl<'a> Reader<'a> {
    fn error(&self, reason: &'static str) -> DecodeError {
        DecodeError {
            event_index: self.event_index,
            offset: self.offset,
            reason,
        }
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        let byte = *self
            .bytes
            .get(self.offset)
            .ok_or_else(|| self.error("unexpected end of body"))?;
        self.offset += 1;
        Ok(byte)
    }

    fn take(&mut self, count: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .offset
            .checked_add(count)
            .filter(|end| *end <= self.bytes.len());
        let end = end.ok_or_else(|| self.error("unexpected end of body"))?;
        let bytes: &'a [u8] = self.bytes;
        let slice = &bytes[self.offset..end];
        self.offset = end;
        Ok(slice)
    }

    fn u64_le(&mut self) -> Result<u64, DecodeError> {
        let bytes = self.take(8)?;
        Ok(u64::from_le_bytes(bytes.try_into().expect("took 8 bytes")))
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(self.error("varint overflows u64"));
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.error("varint longer than 10 bytes"))
    }

    fn varint_u32(&mut self) -> Result<u32, DecodeError> {
        u32::try_from(self.varint()?).map_err(|_| self.error("account index overflows u32"))
    }

    fn text(&mut self) -> Result<&'a str, DecodeError> {
        let length = self.byte()? as usize;
        let bytes = self.take(length)?;
        std::str::from_utf8(bytes).map_err(|_| self.error("string is not UTF-8"))
    }

    fn id(&mut self) -> Result<Id, DecodeError> {
        let text = self.text()?;
        Id::new(text).map_err(|_| self.error("invalid id"))
    }

    fn definition(&mut self) -> Result<CampaignDefinition, DecodeError> {
        let id = self.id()?;
        let gift_ledger =
            LedgerCode::new(self.text()?).map_err(|_| self.error("invalid ledger code"))?;
        let mut values = [0u64; 5];
        for value in &mut values {
            *value = self.varint()?;
        }
        let [inventory, per_user_limit, daily_limit, starts_at_ns, ends_at_ns] = values;
        let verification_account = self.id()?;
        let count = self.varint()?;
        if count > CAMPAIGN_OFFSET_CHANGES_MAX as u64 {
            return Err(self.error("too many UTC offset changes"));
        }
        let mut offsets = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let from_ns = self.varint()?;
            let zigzag =
                u32::try_from(self.varint()?).map_err(|_| self.error("UTC offset overflows"))?;
            let offset_seconds = ((zigzag >> 1) as i32) ^ -((zigzag & 1) as i32);
            offsets.push(OffsetChange {
                from_ns,
                offset_seconds,
            });
        }
        let length = self.varint()?;
        if length > CAMPAIGN_SPEC_BYTES_MAX as u64 {
            return Err(self.error("stored campaign definition too large"));
        }
        let spec = self.take(length as usize)?.to_vec();
        Ok(CampaignDefinition {
            id,
            gift_ledger,
            inventory,
            per_user_limit,
            daily_limit,
            starts_at_ns,
            ends_at_ns,
            verification_account,
            offsets,
            spec,
        })
    }

    fn event(&mut self) -> Result<Event, DecodeError> {
        match self.byte()? {
            TAG_ACCOUNT_CREATED => {
                let id = self.id()?;
                let ledger =
                    LedgerCode::new(self.text()?).map_err(|_| self.error("invalid ledger code"))?;
                let allow_overdraft = match self.byte()? {
                    0 => false,
                    1 => true,
                    _ => return Err(self.error("allow_overdraft is neither 0 nor 1")),
                };
                Ok(Event::AccountCreated {
                    id,
                    ledger,
                    allow_overdraft,
                })
            }
            TAG_TRANSFER => {
                let id = self.id()?;
                let body_hash = self.u64_le()?;
                let kind_byte = self.byte()?;
                let debit = self.varint_u32()?;
                let credit = self.varint_u32()?;
                let amount = self.varint()?;
                if amount == 0 {
                    return Err(self.error("transfer amount is zero"));
                }
                let kind = match kind_byte {
                    KIND_DEPOSIT => TransferKind::Deposit,
                    KIND_WITHDRAWAL => TransferKind::Withdrawal,
                    KIND_TRANSFER => TransferKind::Transfer,
                    KIND_PENDING => TransferKind::Pending {
                        expires_at_ns: self.varint()?,
                    },
                    KIND_POST => TransferKind::Post {
                        pending: self.varint()?,
                    },
                    KIND_VOID => TransferKind::Void {
                        pending: self.varint()?,
                    },
                    _ => return Err(self.error("unknown transfer kind")),
                };
                Ok(Event::Transfer(TransferEvent {
                    id,
                    body_hash,
                    kind,
                    debit,
                    credit,
                    amount,
                }))
            }
            TAG_REJECTED => {
                let id = self.id()?;
                let body_hash = self.u64_le()?;
                let code = RejectCode::from_byte(self.byte()?)
                    .ok_or_else(|| self.error("unknown reject code"))?;
                Ok(Event::Rejected {
                    id,
                    body_hash,
                    code,
                })
            }
            TAG_EXPIRED => Ok(Event::Expired {
                pending: self.varint()?,
            }),
            TAG_TOKEN_REVOKED => Ok(Event::TokenRevoked {
                token_id: self.id()?,
            }),
            TAG_CAMPAIGN_DEFINED => Ok(Event::CampaignDefined(Box::new(self.definition()?))),
            TAG_CAMPAIGN_PUBLISHED => Ok(Event::CampaignPublished {
                campaign: self.id()?,
            }),
            TAG_CLAIM_RECORDED => Ok(Event::ClaimRecorded {
                order_id: self.id()?,
                campaign: self.varint_u32()?,
                pending: self.varint()?,
            }),
            TAG_CLAIM_SETTLED => {
                let order_id = self.id()?;
                let outcome = ClaimState::from_byte(self.byte()?)
                    .filter(|state| *state != ClaimState::PendingDelivery)
                    .ok_or_else(|| self.error("unknown claim outcome"))?;
                Ok(Event::ClaimSettled { order_id, outcome })
            }
            TAG_CLAIM_ATTEMPTED => Ok(Event::ClaimAttempted {
                order_id: self.id()?,
                attempt: self.varint_u32()?,
            }),
            TAG_CLAIM_ATTEMPT_ENDED => Ok(Event::ClaimAttemptEnded {
                order_id: self.id()?,
                attempt: self.varint_u32()?,
                read_timeouts: self.varint_u32()?,
            }),
            _ => Err(self.error("unknown event tag")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(text: &str) -> Id {
        Id::new(text).unwrap()
    }

    fn sample() -> Vec<Event> {
        vec![
            Event::AccountCreated {
                id: id("a"),
                ledger: LedgerCode::new("USD").unwrap(),
                allow_overdraft: true,
            },
            Event::Transfer(TransferEvent {
                id: id("t1"),
                body_hash: u64::MAX,
                kind: TransferKind::Pending {
                    expires_at_ns: 1 << 62,
                },
                debit: 1,
                credit: u32::MAX,
                amount: u64::MAX,
            }),
            Event::Rejected {
                id: id("t2"),
                body_hash: 7,
                code: RejectCode::InsufficientFunds,
            },
            Event::Expired { pending: 1 },
            Event::CampaignDefined(Box::new(CampaignDefinition {
                id: id("spring"),
                gift_ledger: LedgerCode::new("GIFT").unwrap(),
                inventory: 50_000,
                per_user_limit: 3,
                daily_limit: 2_000,
                starts_at_ns: 1 << 60,
                ends_at_ns: (1 << 60) + 1,
                verification_account: id("verifier"),
                offsets: vec![
                    OffsetChange {
                        from_ns: 1 << 60,
                        offset_seconds: -36_000,
                    },
                    OffsetChange {
                        from_ns: (1 << 60) + 1,
                        offset_seconds: 93_599,
                    },
                ],
                spec: b"{\"version\":1}".to_vec(),
            })),
            Event::CampaignPublished {
                campaign: id("spring"),
            },
            Event::ClaimRecorded {
                order_id: id("o1"),
                campaign: u32::MAX,
                pending: u64::MAX,
            },
            Event::ClaimSettled {
                order_id: id("o1"),
                outcome: ClaimState::Unknown,
            },
            Event::ClaimAttempted {
                order_id: id("o1"),
                attempt: u32::MAX,
            },
            Event::ClaimAttemptEnded {
                order_id: id("o1"),
                attempt: u32::MAX,
                read_timeouts: u32::MAX,
            },
        ]
    }

    #[test]
    fn round_trips() {
        let events = sample();
        let body = encode_events(&events);
        assert_eq!(decode_events(&body, events.len() as u32).unwrap(), events);
    }

    #[test]
    fn refuses_wrong_counts_and_truncation() {
        let events = sample();
        let body = encode_events(&events);
        let count = events.len() as u32;
        assert!(
            decode_events(&body, count - 1).is_err(),
            "trailing bytes must be refused"
        );
        assert!(
            decode_events(&body, count + 1).is_err(),
            "missing events must be refused"
        );
        for cut in 0..body.len() {
            assert!(
                decode_events(&body[..cut], count).is_err(),
                "truncated at {cut}"
            );
        }
    }

    proptest! {
        #[test]
        fn never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..512), count in 0u32..64) {
            let _ = decode_events(&bytes, count);
        }
    }
}
