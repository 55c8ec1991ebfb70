//! The ledger state as bytes, so that restart loads a snapshot instead of replaying all history.
//!
//! Derived indices (id → account, code → ledger, the expiry queue) are not stored: they are
//! rebuilt on load, which keeps the format small and the two copies from disagreeing. Decoding
//! treats its input as untrusted: every count is checked against the bytes left.

use crate::campaign::{
    claim_body_hash, pool_account_id, Campaign, CampaignState, Claim, ClaimState,
};
use crate::event::{decode_definition, encode_definition, AccountIndex};
use crate::id::{Id, LedgerCode};
use crate::ledger::{
    Account, Balances, Decided, IdKey, Ledger, LedgerInfo, PendingRecord, PendingState,
};
use crate::limits::{
    CAMPAIGNS_MAX, CLAIMS_MAX, CLAIM_ATTEMPTS_MAX, POSITION_MAX, TIMESTAMP_NS_MAX,
};

/// Version of the snapshot body encoding. Version 2 appends campaigns and claims; version 3
/// adds each claim's last ended attempt and read timeouts. Version 1 and 2 bodies still load
/// (a version 2 claim has no ended attempt and no read timeouts recorded).
pub const SNAPSHOT_VERSION: u32 = 3;

/// Why bytes are not a valid snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("snapshot body offset {offset}: {reason}")]
pub struct SnapshotError {
    /// Byte offset of the problem.
    pub offset: usize,
    /// What is wrong.
    pub reason: &'static str,
}

impl Ledger {
    /// Encodes the whole state. Must be called between batches.
    pub fn encode_snapshot(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            64 + self.accounts.len() * 64 + self.decided.len() * 24 + self.pendings.len() * 48,
        );
        put_u32(&mut out, SNAPSHOT_VERSION);
        put_u64(&mut out, self.next_position);
        put_u64(&mut out, self.batch_times.len() as u64);
        for (first, timestamp) in &self.batch_times {
            put_u64(&mut out, *first);
            put_u64(&mut out, *timestamp);
        }
        put_u64(&mut out, self.ledgers.len() as u64);
        for ledger in &self.ledgers {
            put_str(&mut out, ledger.code.as_str());
            put_u32(&mut out, ledger.external);
        }
        put_u64(&mut out, self.accounts.len() as u64);
        for account in &self.accounts {
            out.push(u8::from(account.id.is_some()) | (u8::from(account.allow_overdraft) << 1));
            if let Some(id) = &account.id {
                put_str(&mut out, id.as_str());
            }
            put_u32(&mut out, account.ledger);
            let b = &account.balances;
            for value in [
                b.debits_posted,
                b.credits_posted,
                b.debits_pending,
                b.credits_pending,
                b.version,
            ] {
                put_u64(&mut out, value);
            }
        }
        put_u64(&mut out, self.decided.len() as u64);
        for (key, decided) in &self.decided {
            out.extend_from_slice(&key.to_bytes());
            put_u32(&mut out, decided.body_bits());
            put_u64(&mut out, decided.outcome_bits());
        }
        put_u64(&mut out, self.pendings.len() as u64);
        for (position, record) in &self.pendings {
            put_u64(&mut out, *position);
            put_u32(&mut out, record.debit);
            put_u32(&mut out, record.credit);
            put_u64(&mut out, record.amount);
            put_u64(&mut out, record.expires_at_ns);
            let (tag, amount, at) = match record.state {
                PendingState::Pending => (0, 0, 0),
                PendingState::Posted { amount, position } => (1, amount, position),
                PendingState::Voided { position } => (2, 0, position),
                PendingState::Expired { position } => (3, 0, position),
            };
            out.push(tag);
            put_u64(&mut out, amount);
            put_u64(&mut out, at);
        }
        put_u64(&mut out, self.resolutions.len() as u64);
        for (resolving, pending) in &self.resolutions {
            put_u64(&mut out, *resolving);
            put_u64(&mut out, *pending);
        }
        put_u64(&mut out, self.revoked.len() as u64);
        for token_id in &self.revoked {
            put_str(&mut out, token_id.as_str());
        }
        put_u64(&mut out, self.campaigns.len() as u64);
        let mut definition = Vec::new();
        for campaign in &self.campaigns {
            definition.clear();
            encode_definition(&campaign.definition, &mut definition);
            put_u64(&mut out, definition.len() as u64);
            out.extend_from_slice(&definition);
            out.push(
                u8::from(campaign.state == CampaignState::Live)
                    | (u8::from(campaign.verified) << 1),
            );
        }
        put_u64(&mut out, self.claims.len() as u64);
        for (order_id, claim) in &self.claims {
            put_str(&mut out, order_id.as_str());
            put_u32(&mut out, claim.campaign);
            put_u64(&mut out, claim.pending);
            out.push(claim.state.to_byte());
            put_u32(&mut out, claim.attempts);
            put_u32(&mut out, claim.attempts_ended);
            put_u32(&mut out, claim.read_timeouts);
        }
        out
    }

    /// Decodes a snapshot made by [`Ledger::encode_snapshot`], checking its structure and then
    /// every invariant.
    pub fn decode_snapshot(bytes: &[u8]) -> Result<Ledger, SnapshotError> {
        let mut reader = Reader { bytes, offset: 0 };
        let version = reader.u32()?;
        if !(1..=SNAPSHOT_VERSION).contains(&version) {
            return Err(reader.error("unsupported snapshot version"));
        }
        let mut ledger = Ledger::new();
        ledger.next_position = reader.u64()?;
        // A ledger at the limit could record nothing more: the next event would not fit.
        if ledger.next_position >= POSITION_MAX {
            return Err(reader.error("next position at or beyond the position limit"));
        }
        let next_position = ledger.next_position;
        let count = reader.count(16)?;
        ledger.batch_times.reserve_exact(count);
        for _ in 0..count {
            let entry = (reader.u64()?, reader.u64()?);
            if ledger
                .batch_times
                .last()
                .is_some_and(|last| last.0 >= entry.0 || last.1 >= entry.1)
            {
                return Err(reader.error("batch times out of order"));
            }
            if entry.0 >= next_position || entry.1 > TIMESTAMP_NS_MAX {
                return Err(reader.error("batch time beyond the next position or the time limit"));
            }
            ledger.batch_times.push(entry);
        }
        // The first event opens the first batch, so events and batch times come together.
        if ledger.batch_times.first().map(|first| first.0) != (next_position > 0).then_some(0) {
            return Err(reader.error("batch times do not start at position 0"));
        }
        let count = reader.count(5)?;
        for index in 0..count {
            let code =
                LedgerCode::new(reader.text()?).map_err(|_| reader.error("invalid ledger code"))?;
            let external = reader.u32()?;
            if ledger
                .ledger_codes
                .insert(code.clone(), index as u32)
                .is_some()
            {
                return Err(reader.error("duplicate ledger code"));
            }
            ledger.ledgers.push(LedgerInfo { code, external });
        }
        let count = reader.count(45)?;
        ledger.accounts.reserve_exact(count);
        ledger.account_ids.reserve(count);
        for index in 0..count {
            let flags = reader.byte()?;
            if flags > 3 {
                return Err(reader.error("unknown account flags"));
            }
            let id = if flags & 1 != 0 {
                Some(Id::new(reader.text()?).map_err(|_| reader.error("invalid account id"))?)
            } else {
                None
            };
            let ledger_index = reader.u32()?;
            if ledger_index as usize >= ledger.ledgers.len() {
                return Err(reader.error("account of an unknown ledger"));
            }
            let mut values = [0u64; 5];
            for value in &mut values {
                *value = reader.u64()?;
            }
            let [debits_posted, credits_posted, debits_pending, credits_pending, version] = values;
            // Each event changes an account at most once, so a version counts at most every event;
            // a larger one would overflow as the ledger goes on.
            if version > next_position {
                return Err(reader.error("account version beyond the next position"));
            }
            if let Some(id) = &id {
                if ledger
                    .account_ids
                    .insert(id.hash128(), index as AccountIndex)
                    .is_some()
                {
                    return Err(reader.error("duplicate account id"));
                }
            }
            ledger.accounts.push(Account {
                id,
                ledger: ledger_index,
                allow_overdraft: flags & 2 != 0,
                balances: Balances {
                    debits_posted,
                    credits_posted,
                    debits_pending,
                    credits_pending,
                    version,
                },
            });
        }
        let count = reader.count(24)?;
        ledger.decided.reserve(count);
        for _ in 0..count {
            let key = IdKey::from_bytes(reader.take(12)?.try_into().expect("took 12 bytes"));
            let (body_hash, outcome) = (reader.u32()?, reader.u64()?);
            let tag = (outcome >> 56) as u8;
            let known = if tag & 0x80 != 0 {
                crate::reject::RejectCode::from_byte(tag & 0x7f).is_some()
            } else {
                (1..=6).contains(&tag)
            };
            if !known {
                return Err(reader.error("unknown outcome tag"));
            }
            if outcome & POSITION_MAX >= next_position {
                return Err(reader.error("outcome at or beyond the next position"));
            }
            if ledger
                .decided
                .insert(key, Decided::new(u64::from(body_hash), outcome))
                .is_some()
            {
                return Err(reader.error("duplicate transfer id"));
            }
        }
        let count = reader.count(49)?;
        ledger.pendings.reserve(count);
        for _ in 0..count {
            let position = reader.u64()?;
            let (debit, credit) = (reader.u32()?, reader.u32()?);
            let (amount, expires_at_ns) = (reader.u64()?, reader.u64()?);
            let tag = reader.byte()?;
            let (state_amount, at) = (reader.u64()?, reader.u64()?);
            let state = match tag {
                0 => PendingState::Pending,
                1 => PendingState::Posted {
                    amount: state_amount,
                    position: at,
                },
                2 => PendingState::Voided { position: at },
                3 => PendingState::Expired { position: at },
                _ => return Err(reader.error("unknown pending state")),
            };
            let resolved_at = (state != PendingState::Pending).then_some(at);
            if position >= next_position || resolved_at.is_some_and(|at| at >= next_position) {
                return Err(reader.error("pending transfer at or beyond the next position"));
            }
            if debit as usize >= ledger.accounts.len() || credit as usize >= ledger.accounts.len() {
                return Err(reader.error("pending transfer of an unknown account"));
            }
            if state == PendingState::Pending && expires_at_ns != 0 {
                ledger.expiry.insert((expires_at_ns, position));
            }
            let record = PendingRecord {
                debit,
                credit,
                amount,
                expires_at_ns,
                state,
            };
            if ledger.pendings.insert(position, record).is_some() {
                return Err(reader.error("duplicate pending transfer"));
            }
        }
        let count = reader.count(16)?;
        ledger.resolutions.reserve(count);
        for _ in 0..count {
            let (resolving, pending) = (reader.u64()?, reader.u64()?);
            if resolving >= next_position {
                return Err(reader.error("resolution at or beyond the next position"));
            }
            if !ledger.pendings.contains_key(&pending) {
                return Err(reader.error("resolution of an unknown pending transfer"));
            }
            ledger.resolutions.insert(resolving, pending);
        }
        let count = reader.count(2)?;
        for _ in 0..count {
            let token_id = Id::new(reader.text()?).map_err(|_| reader.error("invalid token id"))?;
            if !ledger.revoked.insert(token_id) {
                return Err(reader.error("duplicate revoked token"));
            }
        }
        if version >= 2 {
            decode_campaigns(&mut reader, &mut ledger, version)?;
        }
        if reader.offset != bytes.len() {
            return Err(reader.error("bytes left after the snapshot"));
        }
        if ledger.ledgers.iter().any(|info| {
            ledger
                .accounts
                .get(info.external as usize)
                .is_none_or(|account| account.id.is_some())
        }) {
            return Err(reader.error("a ledger's external account is missing"));
        }
        if ledger.check_invariants().is_err() {
            return Err(reader.error("the state breaks a ledger invariant"));
        }
        Ok(ledger)
    }
}

/// Reads the campaigns and claims of a version 2 or 3 body, and rebuilds what derives from them.
/// A claim's user and day are derived too: the user is its transfer's credit account, and the
/// day is its campaign's local day at the time of the transfer's batch.
fn decode_campaigns(
    reader: &mut Reader<'_>,
    ledger: &mut Ledger,
    version: u32,
) -> Result<(), SnapshotError> {
    let count = reader.count(9)?;
    if count > CAMPAIGNS_MAX {
        return Err(reader.error("more campaigns than the bound"));
    }
    for index in 0..count {
        let length = reader.count(1)?;
        let definition = decode_definition(reader.take(length)?)
            .map_err(|_| reader.error("campaign definition does not decode"))?;
        if definition.validate().is_err() {
            return Err(reader.error("invalid campaign definition"));
        }
        let flags = reader.byte()?;
        if flags > 3 {
            return Err(reader.error("unknown campaign flags"));
        }
        let pool = match ledger.account_by_id(&pool_account_id(&definition.id)) {
            Some((pool, account))
                if ledger.ledgers[account.ledger as usize].code == definition.gift_ledger =>
            {
                pool
            }
            _ => return Err(reader.error("campaign without its pool account")),
        };
        if ledger
            .campaign_ids
            .insert(definition.id.clone(), index as u32)
            .is_some()
        {
            return Err(reader.error("duplicate campaign"));
        }
        ledger.campaigns.push(Campaign {
            body_hash: definition.body_hash(),
            definition,
            state: if flags & 1 != 0 {
                CampaignState::Live
            } else {
                CampaignState::Draft
            },
            pool,
            verified: flags & 2 != 0,
        });
    }
    let count = reader.count(if version >= 3 { 27 } else { 19 })?;
    if count > CLAIMS_MAX {
        return Err(reader.error("more claims than the bound"));
    }
    ledger.claims.reserve(count);
    for _ in 0..count {
        let order_id = Id::new(reader.text()?).map_err(|_| reader.error("invalid order id"))?;
        let campaign = reader.u32()?;
        let pending = reader.u64()?;
        let state = ClaimState::from_byte(reader.byte()?)
            .ok_or_else(|| reader.error("unknown claim state"))?;
        let attempts = reader.u32()?;
        let (attempts_ended, read_timeouts) = if version >= 3 {
            (reader.u32()?, reader.u32()?)
        } else {
            (0, 0)
        };
        if attempts_ended > attempts {
            return Err(reader.error("a claim's ended attempt was never started"));
        }
        let Some(found) = ledger.campaigns.get(campaign as usize) else {
            return Err(reader.error("claim of an unknown campaign"));
        };
        let Some(record) = ledger.pendings.get(&pending) else {
            return Err(reader.error("claim without its pending transfer"));
        };
        let user = record.credit;
        let Some(user_id) = ledger.accounts[user as usize].id.as_ref() else {
            return Err(reader.error("claim for an external account"));
        };
        if record.debit != found.pool || attempts > CLAIM_ATTEMPTS_MAX {
            return Err(reader.error("claim does not match its campaign"));
        }
        let claim = Claim {
            campaign,
            user,
            pending,
            day: found.definition.local_day(ledger.timestamp_at(pending)),
            body_hash: claim_body_hash(&found.definition.id, user_id),
            state,
            attempts,
            attempts_ended,
            read_timeouts,
        };
        if state != ClaimState::Voided {
            *ledger.claims_per_user.entry((campaign, user)).or_insert(0) += 1;
            *ledger
                .claims_per_day
                .entry((campaign, claim.day))
                .or_insert(0) += 1;
        }
        if ledger
            .claim_pendings
            .insert(pending, order_id.clone())
            .is_some()
            || ledger.claims.insert(order_id, claim).is_some()
        {
            return Err(reader.error("duplicate claim"));
        }
    }
    Ok(())
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    assert!(text.len() <= u8::MAX as usize);
    out.push(text.len() as u8);
    out.extend_from_slice(text.as_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    fn error(&self, reason: &'static str) -> SnapshotError {
        SnapshotError {
            offset: self.offset,
            reason,
        }
    }

    fn take(&mut self, count: usize) -> Result<&'a [u8], SnapshotError> {
        let end = self
            .offset
            .checked_add(count)
            .filter(|end| *end <= self.bytes.len());
        let end = end.ok_or_else(|| self.error("unexpected end of snapshot"))?;
        let bytes: &'a [u8] = self.bytes;
        let slice = &bytes[self.offset..end];
        self.offset = end;
        Ok(slice)
    }

    fn byte(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("took 4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("took 8 bytes"),
        ))
    }

    /// A count of items of at least `item_bytes_min` bytes each, checked against what is left.
    fn count(&mut self, item_bytes_min: usize) -> Result<usize, SnapshotError> {
        let count = self.u64()?;
        let left = (self.bytes.len() - self.offset) as u64;
        if count.saturating_mul(item_bytes_min as u64) > left {
            return Err(self.error("count exceeds the bytes left"));
        }
        Ok(count as usize)
    }

    fn text(&mut self) -> Result<&'a str, SnapshotError> {
        let length = self.byte()? as usize;
        let bytes = self.take(length)?;
        std::str::from_utf8(bytes).map_err(|_| self.error("string is not UTF-8"))
    }
}
