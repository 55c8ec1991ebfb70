//! The fold: events of the feed into the rows of the read model, without I/O.
//!
//! A member of a group owns some partitions (a partition is a set of ledgers, see
//! [`partition_of`]); it alone writes their rows while its leases hold, so the rows it has read
//! or written are an authoritative cache. Before a page is folded, [`Fold::missing`] names the
//! rows the page needs that the cache lacks; the store loads them ([`Fold::load`]); then
//! [`Fold::apply`] folds the page and returns what changed, for the store to write in one atomic
//! commit with the checkpoints. Rows are written as values, never increments, and history
//! entries are appended only by the commit that moves the checkpoint past them: the checkpoint
//! is what makes each event count once.
//!
//! The rules mirror `tally_core::Ledger` and the embedded read model (`tally_read`): an account's
//! version grows by one per event that touches it, creation included; a pending transfer
//! reserves, a post moves its amount and releases the reservation, a void or an expiry releases.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use anyhow::{anyhow, bail, Context};
// The fold hashes every event's account ids several times over: foldhash costs a fraction of
// std's SipHash, and its random seed per map still keeps crafted ids from piling up in one
// bucket.
use foldhash::{HashMap, HashSet, HashSetExt};
use serde::Deserialize;

/// One event of the feed (`GET /v1/events`), as the server renders it.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct FeedEvent {
    /// Its position in the log.
    pub position: u64,
    /// Its batch's time, RFC 3339 in UTC.
    pub timestamp: String,
    /// `account_created`, `transfer`, `rejected`, `expired` or `token_revoked`.
    #[serde(rename = "type")]
    pub event_type: String,
    pub account: Option<String>,
    pub ledger: Option<String>,
    pub allow_overdraft: Option<bool>,
    pub transfer_id: Option<String>,
    /// For a transfer: `deposit`, `withdrawal`, `transfer`, `pending`, `post` or `void`.
    pub kind: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub amount: Option<u64>,
    pub pending_position: Option<u64>,
}

/// A named account's row: what `GET /v1/accounts/{id}` answers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccountRow {
    pub ledger: String,
    pub allow_overdraft: bool,
    pub balance: i128,
    pub debits: u64,
    pub credits: u64,
    pub debits_pending: u64,
    pub credits_pending: u64,
    pub version: u64,
}

/// A pending transfer not yet posted, voided or expired, by position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingRow {
    pub ledger: String,
    pub transfer_id: String,
    /// `None` for the ledger's external account.
    pub from: Option<String>,
    pub to: Option<String>,
    pub amount: u64,
}

/// A ledger's totals. A transfer *counts* when it posts value: a deposit, a withdrawal, a
/// transfer or a post (with its posted amount); pending transfers, voids and expiries do not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LedgerRow {
    /// Named accounts opened in the ledger.
    pub accounts: u64,
    /// Counted transfers.
    pub transfers: u64,
    /// Sum of the counted transfers' amounts.
    pub volume: u128,
    pub deposited: u128,
    pub withdrawn: u128,
    /// Pending transfers open now, and the sum of their reservations.
    pub pending: u64,
    pub pending_amount: u128,
}

/// Counted transfers of a ledger on one UTC day.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DayRow {
    pub transfers: u64,
    pub volume: u128,
}

/// Rows of the read model, as loaded or written. `None`: the store holds no such row.
#[derive(Debug, Default)]
pub struct Rows {
    pub accounts: HashMap<String, Option<AccountRow>>,
    pub pendings: HashMap<u64, Option<PendingRow>>,
    pub ledgers: HashMap<String, Option<LedgerRow>>,
    pub days: HashMap<(String, String), Option<DayRow>>,
}

impl Rows {
    fn len(&self) -> usize {
        self.accounts.len() + self.pendings.len() + self.ledgers.len() + self.days.len()
    }
}

/// The keys of rows a page needs and the cache lacks.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Missing {
    pub accounts: BTreeSet<String>,
    pub pendings: BTreeSet<u64>,
    pub ledgers: BTreeSet<String>,
    pub days: BTreeSet<(String, String)>,
}

impl Missing {
    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
            && self.pendings.is_empty()
            && self.ledgers.is_empty()
            && self.days.is_empty()
    }
}

/// What a page changed: the rows to write whole (their values are in [`Fold::rows`]), history
/// entries to add, pending rows to write or delete. Hash sets, not ordered ones: the order of
/// the writes within a commit does not matter, and a fold touches these for every event.
#[derive(Debug, Default)]
pub struct Changes {
    pub accounts: HashSet<String>,
    /// The changed accounts this page created: only their rows carry `ledger` and
    /// `allow_overdraft`, which never change afterwards, so later writes leave them out.
    pub created: HashSet<String>,
    /// Account id → the JSON of its new history entries (as `GET /v1/accounts/{id}/history`
    /// renders them), in log order.
    pub history: HashMap<String, Vec<String>>,
    /// Position → the row to write, or `None` to delete it.
    pub pendings: HashMap<u64, Option<PendingRow>>,
    pub ledgers: HashSet<String>,
    pub days: HashSet<(String, String)>,
    /// Events of the page applied to owned partitions.
    pub applied: u64,
}

/// The partitions a member owns, each with its checkpoint: the next position it applies.
pub struct Ownership<'a> {
    pub partitions: u32,
    pub checkpoints: &'a BTreeMap<u32, u64>,
}

impl Ownership<'_> {
    /// Whether the event at `position` of `ledger` is this member's to apply.
    fn applies(&self, ledger: &str, position: u64) -> bool {
        self.checkpoints
            .get(&partition_of(ledger, self.partitions))
            .is_some_and(|checkpoint| *checkpoint <= position)
    }
}

/// The partition of a ledger. Part of the stored format: a group's partitions are fixed when
/// it is created, and this function must never change.
pub fn partition_of(ledger: &str, partitions: u32) -> u32 {
    assert!(partitions > 0);
    (xxhash_rust::xxh3::xxh3_64(ledger.as_bytes()) % u64::from(partitions)) as u32
}

/// The member's cache of rows and the fold over it.
#[derive(Debug, Default)]
pub struct Fold {
    pub rows: Rows,
}

/// Rounds of [`Fold::missing`] and [`Fold::load`] a page needs at most: pending rows, then the
/// accounts of expiries.
pub const LOAD_ROUNDS_MAX: usize = 2;

/// The cache is dropped before a fold once it holds more rows than this: everything in it is
/// also in the store, so dropping costs reloads, never correctness.
pub const CACHED_ROWS_MAX: usize = 500_000;

impl Fold {
    /// Forgets every cached row: after a lease changed hands or a commit's outcome is unknown.
    pub fn clear(&mut self) {
        self.rows = Rows::default();
    }

    /// Whether the cache grew past [`CACHED_ROWS_MAX`] and should be dropped.
    pub fn is_full(&self) -> bool {
        self.rows.len() > CACHED_ROWS_MAX
    }

    /// The rows `events` need that the cache lacks. Pending transfers are looked up for every
    /// owned post and void, and for every expiry (an expiry names no ledger or account: its
    /// pending row says whose it is, so once that row is loaded, asking again names its
    /// accounts). Ask until nothing is missing: at most [`LOAD_ROUNDS_MAX`] rounds.
    pub fn missing(&self, events: &[FeedEvent], owned: &Ownership<'_>) -> Missing {
        let mut missing = Missing::default();
        let mut created = HashSet::new();
        let mut days = HashSet::new();
        for event in events {
            let mut pending = |position: Option<u64>| {
                if let Some(position) = position {
                    if !self.rows.pendings.contains_key(&position) {
                        missing.pendings.insert(position);
                    }
                }
            };
            if event.event_type == "expired" {
                // Whose it is, and which accounts it touches, only the pending row can tell: a
                // first round loads it, a second what it names.
                let Some(position) = event.pending_position else {
                    continue;
                };
                match self.rows.pendings.get(&position) {
                    None => pending(Some(position)),
                    Some(Some(row)) if owned.applies(&row.ledger, event.position) => {
                        if !self.rows.ledgers.contains_key(&row.ledger) {
                            missing.ledgers.insert(row.ledger.clone());
                        }
                        for account in [&row.from, &row.to].into_iter().flatten() {
                            if !self.rows.accounts.contains_key(account)
                                && !created.contains(account.as_str())
                            {
                                missing.accounts.insert(account.clone());
                            }
                        }
                    }
                    Some(_) => {}
                }
                continue;
            }
            let Some(ledger) = event.ledger.as_deref() else {
                continue;
            };
            if !owned.applies(ledger, event.position) {
                continue;
            }
            pending(event.pending_position);
            if !self.rows.ledgers.contains_key(ledger) {
                missing.ledgers.insert(ledger.to_owned());
            }
            if event.event_type == "account_created" {
                if let Some(account) = &event.account {
                    created.insert(account.as_str());
                }
                continue;
            }
            for account in [&event.from, &event.to].into_iter().flatten() {
                if !self.rows.accounts.contains_key(account) && !created.contains(account.as_str())
                {
                    missing.accounts.insert(account.clone());
                }
            }
            days.insert((ledger, day_of(&event.timestamp)));
        }
        for (ledger, day) in days {
            let day = (ledger.to_owned(), day.to_owned());
            if !self.rows.days.contains_key(&day) {
                missing.days.insert(day);
            }
        }
        missing
    }

    /// Adds rows the store loaded for [`Fold::missing`].
    pub fn load(&mut self, rows: Rows) {
        self.rows.accounts.extend(rows.accounts);
        self.rows.pendings.extend(rows.pendings);
        self.rows.ledgers.extend(rows.ledgers);
        self.rows.days.extend(rows.days);
    }

    /// Folds `events` (after [`Fold::missing`] and [`Fold::load`]) into the cache. An event that
    /// contradicts the rows (an unknown account, a second creation, an unknown pending transfer)
    /// is an error: the feed or the store is not what this projection wrote.
    pub fn apply(
        &mut self,
        events: &[FeedEvent],
        owned: &Ownership<'_>,
    ) -> anyhow::Result<Changes> {
        let mut changes = Changes::default();
        for event in events {
            self.apply_one(event, owned, &mut changes)
                .with_context(|| format!("event at position {}", event.position))?;
        }
        Ok(changes)
    }

    fn apply_one(
        &mut self,
        event: &FeedEvent,
        owned: &Ownership<'_>,
        changes: &mut Changes,
    ) -> anyhow::Result<()> {
        let ledger = match (event.event_type.as_str(), &event.ledger) {
            ("account_created" | "transfer", Some(ledger)) => ledger.clone(),
            ("account_created" | "transfer", None) => bail!("the event names no ledger"),
            ("expired", _) => {
                let pending = field(event.pending_position, "pending_position")?;
                // An expiry of another partition's pending transfer: that row is not ours, and
                // may not even be written yet by its owner.
                match self.rows.pendings.get(&pending) {
                    Some(Some(row)) => row.ledger.clone(),
                    Some(None) => return Ok(()),
                    None => bail!("pending transfer at {pending} was not loaded"),
                }
            }
            // Refusals and token revocations change no read model.
            _ => return Ok(()),
        };
        if !owned.applies(&ledger, event.position) {
            return Ok(());
        }
        changes.applied += 1;
        match event.event_type.as_str() {
            "account_created" => self.account_created(event, &ledger, changes),
            "transfer" => self.transfer(event, &ledger, changes),
            _ => self.expired(event, changes),
        }
    }

    fn account_created(
        &mut self,
        event: &FeedEvent,
        ledger: &str,
        changes: &mut Changes,
    ) -> anyhow::Result<()> {
        let account = field(event.account.clone(), "account")?;
        if let Some(Some(_)) = self.rows.accounts.get(&account) {
            bail!("account {account} is created twice");
        }
        self.rows.accounts.insert(
            account.clone(),
            Some(AccountRow {
                ledger: ledger.to_owned(),
                allow_overdraft: field(event.allow_overdraft, "allow_overdraft")?,
                version: 1,
                ..AccountRow::default()
            }),
        );
        changes.created.insert(account.clone());
        changes.accounts.insert(account);
        self.ledger(ledger)?.accounts += 1;
        mark(&mut changes.ledgers, ledger);
        Ok(())
    }

    fn transfer(
        &mut self,
        event: &FeedEvent,
        ledger: &str,
        changes: &mut Changes,
    ) -> anyhow::Result<()> {
        let kind = field(event.kind.as_deref(), "kind")?;
        let amount = field(event.amount, "amount")?;
        let transfer_id = field(event.transfer_id.as_deref(), "transfer_id")?;
        let (from, to) = (&event.from, &event.to);
        match kind {
            "deposit" | "withdrawal" | "transfer" => {
                self.moved(event, (from, to), amount, transfer_id, kind, changes)?;
                let totals = self.ledger(ledger)?;
                match kind {
                    "deposit" => totals.deposited += u128::from(amount),
                    "withdrawal" => totals.withdrawn += u128::from(amount),
                    _ => {}
                }
                self.count(ledger, &event.timestamp, amount, changes)?;
            }
            "pending" => {
                for (account, side) in [(from, Side::Debit), (to, Side::Credit)] {
                    self.touch(
                        account,
                        event,
                        transfer_id,
                        kind,
                        side,
                        amount,
                        changes,
                        |row| reserve(row, side, amount),
                    )?;
                }
                self.rows.pendings.insert(
                    event.position,
                    Some(PendingRow {
                        ledger: ledger.to_owned(),
                        transfer_id: transfer_id.to_owned(),
                        from: from.clone(),
                        to: to.clone(),
                        amount,
                    }),
                );
                changes
                    .pendings
                    .insert(event.position, self.rows.pendings[&event.position].clone());
                let totals = self.ledger(ledger)?;
                totals.pending += 1;
                totals.pending_amount += u128::from(amount);
            }
            "post" | "void" => {
                let pending = self.take_pending(event, changes)?;
                if pending.from != *from || pending.to != *to || amount > pending.amount {
                    bail!(
                        "{kind} {transfer_id} does not match its pending transfer {}",
                        pending.transfer_id
                    );
                }
                let posted = if kind == "post" { amount } else { 0 };
                for (account, side) in [(from, Side::Debit), (to, Side::Credit)] {
                    self.touch(
                        account,
                        event,
                        transfer_id,
                        kind,
                        side,
                        amount,
                        changes,
                        |row| {
                            release(row, side, pending.amount)?;
                            post(row, side, posted)
                        },
                    )?;
                }
                let totals = self.ledger(ledger)?;
                totals.pending -= 1;
                totals.pending_amount -= u128::from(pending.amount);
                if kind == "post" {
                    self.count(ledger, &event.timestamp, amount, changes)?;
                }
            }
            other => bail!("unknown transfer kind {other:?}"),
        }
        mark(&mut changes.ledgers, ledger);
        Ok(())
    }

    fn expired(&mut self, event: &FeedEvent, changes: &mut Changes) -> anyhow::Result<()> {
        let pending = self.take_pending(event, changes)?;
        for (account, side) in [(&pending.from, Side::Debit), (&pending.to, Side::Credit)] {
            self.touch(
                account,
                event,
                &pending.transfer_id,
                "expire",
                side,
                pending.amount,
                changes,
                |row| release(row, side, pending.amount),
            )?;
        }
        let totals = self.ledger(&pending.ledger)?;
        totals.pending -= 1;
        totals.pending_amount -= u128::from(pending.amount);
        changes.ledgers.insert(pending.ledger);
        Ok(())
    }

    /// A deposit, withdrawal or transfer: `amount` moves from `from` to `to`.
    fn moved(
        &mut self,
        event: &FeedEvent,
        (from, to): (&Option<String>, &Option<String>),
        amount: u64,
        transfer_id: &str,
        kind: &str,
        changes: &mut Changes,
    ) -> anyhow::Result<()> {
        for (account, side) in [(from, Side::Debit), (to, Side::Credit)] {
            self.touch(
                account,
                event,
                transfer_id,
                kind,
                side,
                amount,
                changes,
                |row| post(row, side, amount),
            )?;
        }
        Ok(())
    }

    /// Changes a named account (the external account, `None`, has no row) by `change` and
    /// records the history entry.
    #[allow(clippy::too_many_arguments)]
    fn touch(
        &mut self,
        account: &Option<String>,
        event: &FeedEvent,
        transfer_id: &str,
        kind: &str,
        side: Side,
        amount: u64,
        changes: &mut Changes,
        change: impl FnOnce(&mut AccountRow) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let Some(account) = account else {
            return Ok(());
        };
        let row = self
            .rows
            .accounts
            .get_mut(account)
            .ok_or_else(|| anyhow!("account {account} was not loaded"))?
            .as_mut()
            .ok_or_else(|| anyhow!("the event names account {account}, which was never created"))?;
        change(row)?;
        row.version += 1;
        // The JSON of `GET /v1/accounts/{id}/history`'s entries, keys sorted, written directly:
        // two entries per event make this the fold's hottest line.
        let mut json = String::with_capacity(192);
        write!(
            json,
            r#"{{"amount":{amount},"balance_after":{},"kind":"#,
            row.balance
        )
        .expect("writing to a String");
        push_json_string(&mut json, kind);
        write!(
            json,
            r#","position":{},"side":"{}","timestamp":"#,
            event.position,
            side.name()
        )
        .expect("writing to a String");
        push_json_string(&mut json, &event.timestamp);
        json.push_str(r#","transfer_id":"#);
        push_json_string(&mut json, transfer_id);
        json.push('}');
        mark(&mut changes.accounts, account);
        match changes.history.get_mut(account) {
            Some(entries) => entries.push(json),
            None => {
                changes.history.insert(account.clone(), vec![json]);
            }
        }
        Ok(())
    }

    fn take_pending(
        &mut self,
        event: &FeedEvent,
        changes: &mut Changes,
    ) -> anyhow::Result<PendingRow> {
        let position = field(event.pending_position, "pending_position")?;
        let row = self
            .rows
            .pendings
            .insert(position, None)
            .flatten()
            .ok_or_else(|| anyhow!("position {position} is not an open pending transfer"))?;
        changes.pendings.insert(position, None);
        Ok(row)
    }

    /// Counts a transfer that posted `amount` in the ledger's totals and its day.
    fn count(
        &mut self,
        ledger: &str,
        timestamp: &str,
        amount: u64,
        changes: &mut Changes,
    ) -> anyhow::Result<()> {
        let totals = self.ledger(ledger)?;
        totals.transfers += 1;
        totals.volume += u128::from(amount);
        let key = (ledger.to_owned(), day_of(timestamp).to_owned());
        let day = self
            .rows
            .days
            .get_mut(&key)
            .ok_or_else(|| anyhow!("day {} of {ledger} was not loaded", key.1))?
            .get_or_insert_with(DayRow::default);
        day.transfers += 1;
        day.volume += u128::from(amount);
        if !changes.days.contains(&key) {
            changes.days.insert(key);
        }
        Ok(())
    }

    fn ledger(&mut self, ledger: &str) -> anyhow::Result<&mut LedgerRow> {
        Ok(self
            .rows
            .ledgers
            .get_mut(ledger)
            .ok_or_else(|| anyhow!("ledger {ledger} was not loaded"))?
            .get_or_insert_with(LedgerRow::default))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Debit,
    Credit,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Debit => "debit",
            Side::Credit => "credit",
        }
    }
}

fn reserve(row: &mut AccountRow, side: Side, amount: u64) -> anyhow::Result<()> {
    let slot = match side {
        Side::Debit => &mut row.debits_pending,
        Side::Credit => &mut row.credits_pending,
    };
    *slot = slot
        .checked_add(amount)
        .context("pending amount overflows u64")?;
    Ok(())
}

fn release(row: &mut AccountRow, side: Side, amount: u64) -> anyhow::Result<()> {
    let slot = match side {
        Side::Debit => &mut row.debits_pending,
        Side::Credit => &mut row.credits_pending,
    };
    *slot = slot
        .checked_sub(amount)
        .context("releases more than the account has pending")?;
    Ok(())
}

fn post(row: &mut AccountRow, side: Side, amount: u64) -> anyhow::Result<()> {
    match side {
        Side::Debit => {
            row.debits = row
                .debits
                .checked_add(amount)
                .context("debits overflow u64")?;
            row.balance -= i128::from(amount);
        }
        Side::Credit => {
            row.credits = row
                .credits
                .checked_add(amount)
                .context("credits overflow u64")?;
            row.balance += i128::from(amount);
        }
    }
    Ok(())
}

/// Adds `name` to a set of changed keys, allocating only the first time.
fn mark(set: &mut HashSet<String>, name: &str) {
    if !set.contains(name) {
        set.insert(name.to_owned());
    }
}

/// Appends `text` as a JSON string. Ids, kinds and timestamps rarely need escaping, so the
/// common case copies them as they are.
fn push_json_string(out: &mut String, text: &str) {
    if text
        .bytes()
        .any(|byte| byte == b'"' || byte == b'\\' || byte < 0x20)
    {
        out.push_str(&serde_json::to_string(text).expect("a string serializes"));
    } else {
        out.push('"');
        out.push_str(text);
        out.push('"');
    }
}

fn field<T>(value: Option<T>, name: &str) -> anyhow::Result<T> {
    value.ok_or_else(|| anyhow!("the event has no {name}"))
}

/// The UTC day (`YYYY-MM-DD`) of an RFC 3339 timestamp in UTC, as the server renders them.
pub fn day_of(timestamp: &str) -> &str {
    timestamp.get(..10).unwrap_or(timestamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(position: u64, timestamp: &str, body: Value) -> FeedEvent {
        let mut json = body;
        json["position"] = position.into();
        json["timestamp"] = timestamp.into();
        serde_json::from_value(json).unwrap()
    }

    use serde_json::{json, Value};

    const DAY1: &str = "2026-12-01T23:59:59.5Z";
    const DAY2: &str = "2026-12-02T00:00:00.1Z";

    /// Folds `events` for a member owning every partition from `checkpoint` on, loading what
    /// is missing from `store` (the rows earlier commits wrote).
    fn fold(fold: &mut Fold, events: &[FeedEvent], checkpoint: u64) -> Changes {
        let checkpoints: BTreeMap<u32, u64> = (0..4).map(|p| (p, checkpoint)).collect();
        let owned = Ownership {
            partitions: 4,
            checkpoints: &checkpoints,
        };
        fold.load(absent(&fold.missing(events, &owned)));
        fold.apply(events, &owned).unwrap()
    }

    fn transfer(kind: &str, id: &str, from: Option<&str>, to: Option<&str>, amount: u64) -> Value {
        json!({"type": "transfer", "ledger": "USD", "kind": kind, "transfer_id": id, "from": from, "to": to, "amount": amount})
    }

    /// Only the page that creates an account marks it created: later pages change its other
    /// fields, and the store writes `ledger` and `allow_overdraft` with the creation alone.
    #[test]
    fn an_account_is_created_in_one_page_only() {
        let created = |id: &str| json!({"type": "account_created", "account": id, "ledger": "USD", "allow_overdraft": true});
        let mut state = Fold::default();
        let first = [
            event(0, DAY1, created("a")),
            event(1, DAY1, transfer("deposit", "d", None, Some("a"), 5)),
        ];
        let changes = fold(&mut state, &first, 0);
        assert_eq!(changes.created, HashSet::from_iter(["a".to_owned()]));
        assert!(changes.accounts.contains("a"));
        let second = [
            event(2, DAY1, created("b")),
            event(3, DAY1, transfer("transfer", "t", Some("a"), Some("b"), 5)),
        ];
        let changes = fold(&mut state, &second, 2);
        assert_eq!(changes.created, HashSet::from_iter(["b".to_owned()]));
        assert!(changes.accounts.contains("a") && changes.accounts.contains("b"));
        assert!(state.rows.accounts["a"].as_ref().unwrap().allow_overdraft);
    }

    #[test]
    fn the_fold_follows_the_ledger_rules_and_counts_what_posts_value() {
        let created = |id: &str| json!({"type": "account_created", "account": id, "ledger": "USD", "allow_overdraft": false});
        let mut post = transfer("post", "po", Some("a"), Some("b"), 15);
        post["pending_position"] = 4.into();
        let mut void = transfer("void", "vo", Some("a"), Some("b"), 5);
        void["pending_position"] = 6.into();
        let events = [
            event(0, DAY1, created("a")),
            event(1, DAY1, created("b")),
            event(2, DAY1, transfer("deposit", "d", None, Some("a"), 100)),
            event(3, DAY1, transfer("transfer", "t", Some("a"), Some("b"), 30)),
            event(4, DAY1, transfer("pending", "p", Some("a"), Some("b"), 20)),
            event(5, DAY2, post),
            event(6, DAY2, transfer("pending", "p2", Some("a"), Some("b"), 5)),
            event(7, DAY2, void),
            event(8, DAY2, transfer("pending", "p3", Some("a"), Some("b"), 7)),
            event(9, DAY2, json!({"type": "expired", "pending_position": 8})),
            event(
                10,
                DAY2,
                json!({"type": "rejected", "transfer_id": "x", "code": "insufficient_funds"}),
            ),
            event(11, DAY2, transfer("withdrawal", "w", Some("b"), None, 10)),
        ];
        let mut state = Fold::default();
        let changes = fold(&mut state, &events, 0);
        assert_eq!(changes.applied, 11, "the refusal changes nothing");
        let a = state.rows.accounts["a"].clone().unwrap();
        let b = state.rows.accounts["b"].clone().unwrap();
        assert_eq!(
            (a.balance, a.debits, a.credits, a.debits_pending),
            (55, 45, 100, 0)
        );
        assert_eq!(
            (b.balance, b.credits, b.debits, b.credits_pending),
            (35, 45, 10, 0)
        );
        // Creation, then one per event that touched it: a 8 (d t p po p2 vo p3 expire), b 8 (t p
        // po p2 vo p3 expire w).
        assert_eq!((a.version, b.version), (9, 9));
        let usd = state.rows.ledgers["USD"].clone().unwrap();
        assert_eq!(
            usd,
            LedgerRow {
                accounts: 2,
                transfers: 4,
                volume: 155,
                deposited: 100,
                withdrawn: 10,
                pending: 0,
                pending_amount: 0
            }
        );
        assert_eq!(
            a.balance + b.balance,
            (usd.deposited - usd.withdrawn) as i128
        );
        let day = |day: &str| {
            state.rows.days[&("USD".to_owned(), day.to_owned())]
                .clone()
                .unwrap()
        };
        assert_eq!(
            day("2026-12-01"),
            DayRow {
                transfers: 2,
                volume: 130
            }
        );
        assert_eq!(
            day("2026-12-02"),
            DayRow {
                transfers: 2,
                volume: 25
            }
        );
        assert_eq!(changes.history["a"].len(), 8);
        let expired: Value = serde_json::from_str(&changes.history["a"][7]).unwrap();
        assert_eq!(
            expired,
            json!({"amount": 7, "balance_after": 55, "kind": "expire", "position": 9, "side": "debit", "timestamp": DAY2, "transfer_id": "p3"})
        );
        assert_eq!(
            changes
                .pendings
                .values()
                .filter(|row| row.is_some())
                .count(),
            0,
            "every pending transfer closed"
        );
    }

    #[test]
    fn events_before_a_partitions_checkpoint_are_not_applied_again() {
        let created = json!({"type": "account_created", "account": "a", "ledger": "USD", "allow_overdraft": true});
        let events = [
            event(0, DAY1, created),
            event(1, DAY1, transfer("deposit", "d", None, Some("a"), 5)),
        ];
        let mut state = Fold::default();
        fold(&mut state, &events[..1], 0);
        let changes = fold(&mut state, &events, 1);
        assert_eq!(changes.applied, 1);
        assert_eq!(state.rows.accounts["a"].as_ref().unwrap().balance, 5);
        assert_eq!(state.rows.accounts["a"].as_ref().unwrap().version, 2);
    }

    #[test]
    fn a_transfer_naming_an_unknown_account_is_an_error_not_a_guess() {
        let mut state = Fold::default();
        let events = [event(
            0,
            DAY1,
            transfer("deposit", "d", None, Some("ghost"), 5),
        )];
        let checkpoints: BTreeMap<u32, u64> = (0..4).map(|p| (p, 0)).collect();
        let owned = Ownership {
            partitions: 4,
            checkpoints: &checkpoints,
        };
        state.load(absent(&state.missing(&events, &owned)));
        let error = state.apply(&events, &owned).unwrap_err();
        assert!(format!("{error:#}").contains("never created"), "{error:#}");
    }

    /// The rows `missing` names, as a store that holds none of them loads them.
    fn absent(missing: &Missing) -> Rows {
        let mut rows = Rows::default();
        rows.accounts
            .extend(missing.accounts.iter().map(|id| (id.clone(), None)));
        rows.pendings
            .extend(missing.pendings.iter().map(|p| (*p, None)));
        rows.ledgers
            .extend(missing.ledgers.iter().map(|l| (l.clone(), None)));
        rows.days
            .extend(missing.days.iter().map(|d| (d.clone(), None)));
        rows
    }

    #[test]
    fn another_members_ledgers_are_skipped() {
        let events = [event(
            0,
            DAY1,
            json!({"type": "account_created", "account": "a", "ledger": "USD", "allow_overdraft": false}),
        )];
        let mine = partition_of("USD", 4);
        let checkpoints: BTreeMap<u32, u64> =
            (0..4).filter(|p| *p != mine).map(|p| (p, 0)).collect();
        let owned = Ownership {
            partitions: 4,
            checkpoints: &checkpoints,
        };
        let mut state = Fold::default();
        assert!(state.missing(&events, &owned).is_empty());
        assert_eq!(state.apply(&events, &owned).unwrap().applied, 0);
    }

    #[test]
    fn an_expiry_after_the_cache_was_dropped_loads_the_accounts_its_pending_row_names() {
        let created = |id: &str| json!({"type": "account_created", "account": id, "ledger": "USD", "allow_overdraft": true});
        let setup = [
            event(0, DAY1, created("a")),
            event(1, DAY1, created("b")),
            event(2, DAY1, transfer("pending", "p", Some("a"), Some("b"), 7)),
        ];
        let mut state = Fold::default();
        fold(&mut state, &setup, 0);
        // What a commit wrote, as the store would load it after the cache is dropped.
        let stored = std::mem::take(&mut state.rows);
        let expiry = [event(
            3,
            DAY2,
            json!({"type": "expired", "pending_position": 2}),
        )];
        let checkpoints: BTreeMap<u32, u64> = (0..4).map(|p| (p, 3)).collect();
        let owned = Ownership {
            partitions: 4,
            checkpoints: &checkpoints,
        };
        for round in 1..=LOAD_ROUNDS_MAX + 1 {
            let missing = state.missing(&expiry, &owned);
            if missing.is_empty() {
                assert_eq!(round, LOAD_ROUNDS_MAX + 1);
                break;
            }
            let mut rows = Rows::default();
            for id in &missing.accounts {
                rows.accounts
                    .insert(id.clone(), stored.accounts[id].clone());
            }
            for position in &missing.pendings {
                rows.pendings
                    .insert(*position, stored.pendings[position].clone());
            }
            for ledger in &missing.ledgers {
                rows.ledgers
                    .insert(ledger.clone(), stored.ledgers[ledger].clone());
            }
            state.load(rows);
        }
        let changes = state.apply(&expiry, &owned).unwrap();
        assert_eq!(changes.applied, 1);
        assert_eq!(state.rows.accounts["a"].as_ref().unwrap().debits_pending, 0);
        assert_eq!(state.rows.ledgers["USD"].as_ref().unwrap().pending, 0);
    }
}
