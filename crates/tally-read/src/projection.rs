//! The fold: log events into table rows.
//!
//! [`Projection`] replicates exactly what it needs of the ledger state machine (account index
//! assignment, posted balances, pending transfers by position) and nothing else, and counts each
//! ledger's figures, in all and per UTC day; it is the part a later projection framework with
//! other stores reuses. It does not decide transaction boundaries: the projector does, and calls
//! [`Projection::flush`] before each commit.

use std::collections::HashMap;
use std::path::PathBuf;

use redb::ReadableTable;
use tally_core::{decode_events, Event, TransferEvent, TransferKind};
use tally_log::Batch;

use crate::codec::{
    AccountRow, DayRow, EntryKind, HistoryRow, Side, Status, TotalsRow, TransferRow,
};
use crate::store::{store_error, Checkpoint, Store, Tables, META_ACCOUNT_COUNT, META_POSITION};
use crate::{Day, ReadError};

/// The in-memory side of the fold, valid only together with the tables it was loaded from.
pub(crate) struct Projection {
    path: PathBuf,
    /// The next position to apply.
    position: u64,
    /// The next account index.
    account_count: u32,
    /// Ledger code → external account index; small (one per currency), so kept whole.
    ledgers: HashMap<String, u32>,
    /// Accounts read or written in the current transaction, written back by `flush`. Cleared on
    /// every flush, so its size is bounded by twice the events of one transaction.
    accounts: HashMap<u32, AccountRow>,
    /// Ledger totals read or written in the current transaction, by ledger code, written back by
    /// `flush`. Cleared on every flush, so its size is bounded by the events of one transaction.
    totals: HashMap<String, TotalsRow>,
    /// Daily figures read or written in the current transaction, by ledger code and then day
    /// (days since 1970-01-01), written back by `flush`. Cleared on every flush, so its size is
    /// bounded by the events of one transaction.
    days: HashMap<String, HashMap<u32, DayRow>>,
}

/// What one event changes in its ledger's figures.
#[derive(Clone, Copy, Debug)]
enum Change {
    /// An account was opened (the external account is not one).
    Account,
    /// Value was posted: a deposit, withdrawal, transfer or post, counted once with the amount
    /// it moved. Counted in the day of its batch too.
    Posted { kind: EntryKind, amount: u64 },
    /// A pending transfer reserved `amount`.
    Reserved(u64),
    /// A pending transfer that reserved `amount` was posted, voided or expired.
    Released(u64),
}

impl Projection {
    /// The projection stored in `store` at `checkpoint`.
    pub fn load(store: &Store, checkpoint: Checkpoint) -> Result<Projection, ReadError> {
        Ok(Projection {
            path: store.path.clone(),
            position: checkpoint.position,
            account_count: checkpoint.account_count,
            ledgers: store.ledgers()?.into_iter().collect(),
            accounts: HashMap::new(),
            totals: HashMap::new(),
            days: HashMap::new(),
        })
    }

    /// The next position to apply.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Decodes `batch` and checks that it holds the current position; returns its events from
    /// the current position on. Writes nothing, so a failure leaves the transaction committable.
    pub fn decode(&self, batch: &Batch) -> Result<Vec<Event>, ReadError> {
        let header = batch.header;
        let end = header
            .first_position
            .checked_add(u64::from(header.event_count));
        if !end.is_some_and(|end| header.first_position <= self.position && self.position < end) {
            let reason = format!(
                "the log returned the batch at position {} with {} events when asked for position {}",
                header.first_position, header.event_count, self.position
            );
            return Err(ReadError::InvalidEvent {
                position: self.position,
                reason,
            });
        }
        let mut events =
            decode_events(&batch.body, header.event_count).map_err(|source| ReadError::Decode {
                first_position: header.first_position,
                source,
            })?;
        assert_eq!(events.len() as u64, u64::from(header.event_count));
        // A batch may start before the checkpoint only if the log was asked for a position inside
        // it; the events before the checkpoint are already applied.
        events.drain(..(self.position - header.first_position) as usize);
        Ok(events)
    }

    /// Applies `events` (from [`Projection::decode`]) of a batch stamped `timestamp_ns`.
    pub fn apply_events(
        &mut self,
        tables: &mut Tables<'_>,
        events: &[Event],
        timestamp_ns: u64,
    ) -> Result<(), ReadError> {
        for event in events {
            self.apply(tables, event, timestamp_ns)?;
            // The projector and rebuilds run on idle-priority threads; a batch holds up to
            // thousands of events.
            tally_offline::yield_point();
        }
        Ok(())
    }

    /// Writes the cached accounts, ledger totals and days and the checkpoint into `tables`,
    /// ending the transaction's part of the fold.
    pub fn flush(&mut self, tables: &mut Tables<'_>) -> Result<(), ReadError> {
        let err = |source| store_error("write account", &self.path, source);
        for (index, row) in self.accounts.drain() {
            tables
                .accounts
                .insert(index, row.encode().as_slice())
                .map_err(err)?;
        }
        let err = |source| store_error("write ledger totals", &self.path, source);
        for (code, row) in self.totals.drain() {
            tables
                .ledger_totals
                .insert(code.as_str(), row.encode().as_slice())
                .map_err(err)?;
        }
        let err = |source| store_error("write ledger day", &self.path, source);
        for (code, days) in self.days.drain() {
            for (day, row) in days {
                tables
                    .ledger_days
                    .insert((code.as_str(), day), row.encode().as_slice())
                    .map_err(err)?;
            }
        }
        let err = |source| store_error("write checkpoint", &self.path, source);
        tables
            .meta
            .insert(META_POSITION, self.position)
            .map_err(err)?;
        tables
            .meta
            .insert(META_ACCOUNT_COUNT, u64::from(self.account_count))
            .map_err(err)?;
        Ok(())
    }

    fn apply(
        &mut self,
        tables: &mut Tables<'_>,
        event: &Event,
        timestamp_ns: u64,
    ) -> Result<(), ReadError> {
        match event {
            Event::AccountCreated { id, ledger, .. } => {
                self.apply_account_created(tables, id.as_str(), ledger.as_str())?
            }
            Event::Transfer(transfer) => self.apply_transfer(tables, transfer, timestamp_ns)?,
            // A rejection leaves no trace but its position: its id is not a transfer. Token
            // revocations concern authentication, not the read model; campaigns and claims live
            // in the ledger state (their gifts move as the transfers around them).
            Event::Rejected { .. }
            | Event::TokenRevoked { .. }
            | Event::CampaignDefined(_)
            | Event::CampaignPublished { .. }
            | Event::ClaimRecorded { .. }
            | Event::ClaimSettled { .. }
            | Event::ClaimAttempted { .. }
            | Event::ClaimAttemptEnded { .. } => {}
            Event::Expired { pending } => self.apply_expired(tables, *pending, timestamp_ns)?,
        }
        self.position += 1;
        Ok(())
    }

    /// Assigns indices exactly as `tally_core::Ledger` does: a new ledger's external account
    /// first, then the account.
    fn apply_account_created(
        &mut self,
        tables: &mut Tables<'_>,
        id: &str,
        ledger: &str,
    ) -> Result<(), ReadError> {
        let exists = tables
            .account_ids
            .get(id)
            .map_err(|source| store_error("read account id", &self.path, source))?;
        if exists.is_some() {
            return Err(self.invalid(format!("account {id} is created twice")));
        }
        drop(exists);
        if !self.ledgers.contains_key(ledger) {
            // The ledger's figures start with its first account.
            self.totals.insert(ledger.to_owned(), TotalsRow::default());
            let external = self.next_account_index()?;
            self.accounts.insert(
                external,
                AccountRow {
                    id: None,
                    ledger: ledger.to_owned(),
                    balance: 0,
                },
            );
            self.ledgers.insert(ledger.to_owned(), external);
            tables
                .ledgers
                .insert(ledger, external)
                .map_err(|source| store_error("write ledger", &self.path, source))?;
        }
        let index = self.next_account_index()?;
        self.accounts.insert(
            index,
            AccountRow {
                id: Some(id.to_owned()),
                ledger: ledger.to_owned(),
                balance: 0,
            },
        );
        tables
            .account_ids
            .insert(id, index)
            .map_err(|source| store_error("write account id", &self.path, source))?;
        self.count(tables, ledger, Change::Account, 0)
    }

    fn next_account_index(&mut self) -> Result<u32, ReadError> {
        let index = self.account_count;
        self.account_count = index
            .checked_add(1)
            .ok_or_else(|| self.invalid("account indices overflow u32".into()))?;
        Ok(index)
    }

    fn apply_transfer(
        &mut self,
        tables: &mut Tables<'_>,
        transfer: &TransferEvent,
        timestamp_ns: u64,
    ) -> Result<(), ReadError> {
        let id = transfer.id.as_str();
        let (debit, credit, amount) = (transfer.debit, transfer.credit, transfer.amount);
        if debit >= self.account_count || credit >= self.account_count || debit == credit {
            return Err(self.invalid(format!(
                "transfer {id} names unknown or identical accounts {debit} and {credit}"
            )));
        }
        let mut row = TransferRow {
            kind: EntryKind::Deposit,
            debit,
            credit,
            amount,
            position: self.position,
            timestamp_ns,
            expires_at_ns: 0,
            status: Status::Posted,
            pending_id: None,
            posted_amount: None,
            resolved_by: None,
        };
        // Only posted movements change balances; reservations and releases do not, but change
        // the ledger's open pending transfers.
        let (moves, reservation) = match transfer.kind {
            TransferKind::Deposit => (true, None),
            TransferKind::Withdrawal => {
                row.kind = EntryKind::Withdrawal;
                (true, None)
            }
            TransferKind::Transfer => {
                row.kind = EntryKind::Transfer;
                (true, None)
            }
            TransferKind::Pending { expires_at_ns } => {
                row.kind = EntryKind::Pending;
                row.status = Status::Pending;
                row.expires_at_ns = expires_at_ns;
                tables
                    .pendings
                    .insert(self.position, id)
                    .map_err(|source| store_error("write pending", &self.path, source))?;
                (false, Some(Change::Reserved(amount)))
            }
            TransferKind::Post { pending } => {
                row.kind = EntryKind::Post;
                let (pending_id, reserved) =
                    self.resolve(tables, pending, transfer, Status::Posted)?;
                row.pending_id = Some(pending_id);
                (true, Some(Change::Released(reserved)))
            }
            TransferKind::Void { pending } => {
                row.kind = EntryKind::Void;
                let (pending_id, reserved) =
                    self.resolve(tables, pending, transfer, Status::Voided)?;
                row.pending_id = Some(pending_id);
                (false, Some(Change::Released(reserved)))
            }
        };
        let previous = tables
            .transfers
            .insert(id, row.encode().as_slice())
            .map_err(|source| store_error("write transfer", &self.path, source))?;
        if previous.is_some() {
            return Err(self.invalid(format!("transfer id {id} is recorded twice")));
        }
        drop(previous);
        let delta = if moves { i128::from(amount) } else { 0 };
        self.record(
            tables,
            debit,
            Side::Debit,
            -delta,
            id,
            row.kind,
            amount,
            timestamp_ns,
        )?;
        self.record(
            tables,
            credit,
            Side::Credit,
            delta,
            id,
            row.kind,
            amount,
            timestamp_ns,
        )?;
        // Both accounts are of one ledger (the core refuses anything else).
        let ledger = self.account(tables, debit)?.ledger.clone();
        if moves {
            let posted = Change::Posted {
                kind: row.kind,
                amount,
            };
            self.count(tables, &ledger, posted, timestamp_ns)?;
        }
        if let Some(change) = reservation {
            self.count(tables, &ledger, change, timestamp_ns)?;
        }
        Ok(())
    }

    /// Moves the pending transfer at `pending` to `status` on behalf of the post or void
    /// `transfer`; returns the pending transfer's id and the amount it reserved.
    fn resolve(
        &mut self,
        tables: &mut Tables<'_>,
        pending: u64,
        transfer: &TransferEvent,
        status: Status,
    ) -> Result<(String, u64), ReadError> {
        let (pending_id, mut row) = self.take_pending(tables, pending)?;
        let matches = row.debit == transfer.debit
            && row.credit == transfer.credit
            && transfer.amount <= row.amount;
        if !matches {
            return Err(self.invalid(format!(
                "transfer {} does not match the pending transfer {pending_id}",
                transfer.id
            )));
        }
        row.status = status;
        row.resolved_by = Some(transfer.id.as_str().to_owned());
        if status == Status::Posted {
            row.posted_amount = Some(transfer.amount);
        }
        self.put_transfer(tables, &pending_id, &row)?;
        Ok((pending_id, row.amount))
    }

    fn apply_expired(
        &mut self,
        tables: &mut Tables<'_>,
        pending: u64,
        timestamp_ns: u64,
    ) -> Result<(), ReadError> {
        let (pending_id, mut row) = self.take_pending(tables, pending)?;
        row.status = Status::Expired;
        self.put_transfer(tables, &pending_id, &row)?;
        self.record(
            tables,
            row.debit,
            Side::Debit,
            0,
            &pending_id,
            EntryKind::Expire,
            row.amount,
            timestamp_ns,
        )?;
        self.record(
            tables,
            row.credit,
            Side::Credit,
            0,
            &pending_id,
            EntryKind::Expire,
            row.amount,
            timestamp_ns,
        )?;
        let ledger = self.account(tables, row.debit)?.ledger.clone();
        self.count(tables, &ledger, Change::Released(row.amount), timestamp_ns)
    }

    /// Removes the unresolved pending transfer at `pending` from the pending index (it resolves at
    /// most once) and returns its id and row.
    fn take_pending(
        &mut self,
        tables: &mut Tables<'_>,
        pending: u64,
    ) -> Result<(String, TransferRow), ReadError> {
        let removed = tables
            .pendings
            .remove(pending)
            .map_err(|source| store_error("remove pending", &self.path, source))?;
        let Some(pending_id) = removed.map(|guard| guard.value().to_owned()) else {
            return Err(self.invalid(format!(
                "position {pending} is not an unresolved pending transfer"
            )));
        };
        let bytes = tables
            .transfers
            .get(pending_id.as_str())
            .map_err(|source| store_error("read transfer", &self.path, source))?;
        let Some(bytes) = bytes else {
            return Err(ReadError::Corrupt {
                path: self.path.clone(),
                table: "transfers",
                key: pending_id,
                reason: "pending transfer missing",
            });
        };
        let row = TransferRow::decode(bytes.value()).map_err(|reason| ReadError::Corrupt {
            path: self.path.clone(),
            table: "transfers",
            key: pending_id.clone(),
            reason,
        })?;
        drop(bytes);
        assert_eq!(row.kind, EntryKind::Pending);
        assert_eq!(row.status, Status::Pending);
        Ok((pending_id, row))
    }

    fn put_transfer(
        &self,
        tables: &mut Tables<'_>,
        id: &str,
        row: &TransferRow,
    ) -> Result<(), ReadError> {
        tables
            .transfers
            .insert(id, row.encode().as_slice())
            .map_err(|source| store_error("write transfer", &self.path, source))?;
        Ok(())
    }

    /// Changes the balance of `account` by `delta` and, unless it is an external account, adds
    /// the history entry of the current position.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        tables: &mut Tables<'_>,
        account: u32,
        side: Side,
        delta: i128,
        transfer_id: &str,
        kind: EntryKind,
        amount: u64,
        timestamp_ns: u64,
    ) -> Result<(), ReadError> {
        let position = self.position;
        let row = self.account(tables, account)?;
        // Balances are sums of u64 amounts over at most 2^56 events: they fit an i128.
        row.balance = row
            .balance
            .checked_add(delta)
            .expect("balance fits an i128");
        if row.id.is_none() {
            return Ok(());
        }
        let entry = HistoryRow {
            transfer_id: transfer_id.to_owned(),
            kind,
            side,
            amount,
            balance_after: row.balance,
            timestamp_ns,
        };
        let previous = tables
            .history
            .insert((account, position), entry.encode().as_slice())
            .map_err(|source| store_error("write history", &self.path, source))?;
        assert!(previous.is_none(), "an event touches an account once");
        Ok(())
    }

    /// The account at `index`, read into the cache on first use in this transaction.
    fn account(
        &mut self,
        tables: &mut Tables<'_>,
        index: u32,
    ) -> Result<&mut AccountRow, ReadError> {
        if !self.accounts.contains_key(&index) {
            let bytes = tables
                .accounts
                .get(index)
                .map_err(|source| store_error("read account", &self.path, source))?;
            let corrupt = |reason| ReadError::Corrupt {
                path: self.path.clone(),
                table: "accounts",
                key: index.to_string(),
                reason,
            };
            let row = AccountRow::decode(bytes.ok_or_else(|| corrupt("account missing"))?.value())
                .map_err(corrupt)?;
            self.accounts.insert(index, row);
        }
        Ok(self.accounts.get_mut(&index).expect("just cached"))
    }

    /// Counts `change` in the figures of `ledger`, and a posting in those of its batch's day
    /// (`timestamp_ns`) too.
    fn count(
        &mut self,
        tables: &mut Tables<'_>,
        ledger: &str,
        change: Change,
        timestamp_ns: u64,
    ) -> Result<(), ReadError> {
        let totals = self.ledger_totals(tables, ledger)?;
        count_in_totals(totals, change).map_err(|reason| ReadError::Corrupt {
            path: self.path.clone(),
            table: "ledger_totals",
            key: ledger.to_owned(),
            reason,
        })?;
        let Change::Posted { amount, .. } = change else {
            return Ok(());
        };
        let day = Day::of_timestamp_ns(timestamp_ns)
            .since_epoch()
            .expect("a timestamp falls on or after 1970-01-01");
        let row = self.ledger_day(tables, ledger, day)?;
        let counted = row
            .transfers
            .checked_add(1)
            .zip(row.volume.checked_add(u128::from(amount)));
        let Some((transfers, volume)) = counted else {
            return Err(ReadError::Corrupt {
                path: self.path.clone(),
                table: "ledger_days",
                key: format!("({ledger}, {day})"),
                reason: "a figure overflows",
            });
        };
        (row.transfers, row.volume) = (transfers, volume);
        Ok(())
    }

    /// The totals of `ledger`, read into the cache on first use in this transaction.
    fn ledger_totals(
        &mut self,
        tables: &mut Tables<'_>,
        ledger: &str,
    ) -> Result<&mut TotalsRow, ReadError> {
        if !self.totals.contains_key(ledger) {
            let bytes = tables
                .ledger_totals
                .get(ledger)
                .map_err(|source| store_error("read ledger totals", &self.path, source))?;
            let corrupt = |reason| ReadError::Corrupt {
                path: self.path.clone(),
                table: "ledger_totals",
                key: ledger.to_owned(),
                reason,
            };
            let row = TotalsRow::decode(
                bytes
                    .ok_or_else(|| corrupt("ledger totals missing"))?
                    .value(),
            )
            .map_err(corrupt)?;
            self.totals.insert(ledger.to_owned(), row);
        }
        Ok(self.totals.get_mut(ledger).expect("just cached"))
    }

    /// The figures of `ledger` on `day` (days since 1970-01-01), read into the cache on first use
    /// in this transaction; zero for a day without a row yet.
    fn ledger_day(
        &mut self,
        tables: &mut Tables<'_>,
        ledger: &str,
        day: u32,
    ) -> Result<&mut DayRow, ReadError> {
        let cached = self
            .days
            .get(ledger)
            .is_some_and(|days| days.contains_key(&day));
        if !cached {
            let bytes = tables
                .ledger_days
                .get((ledger, day))
                .map_err(|source| store_error("read ledger day", &self.path, source))?;
            let row = match bytes {
                None => DayRow::default(),
                Some(bytes) => {
                    DayRow::decode(bytes.value()).map_err(|reason| ReadError::Corrupt {
                        path: self.path.clone(),
                        table: "ledger_days",
                        key: format!("({ledger}, {day})"),
                        reason,
                    })?
                }
            };
            match self.days.get_mut(ledger) {
                Some(days) => {
                    days.insert(day, row);
                }
                None => {
                    self.days
                        .insert(ledger.to_owned(), HashMap::from([(day, row)]));
                }
            }
        }
        Ok(self
            .days
            .get_mut(ledger)
            .and_then(|days| days.get_mut(&day))
            .expect("just cached"))
    }

    fn invalid(&self, reason: String) -> ReadError {
        ReadError::InvalidEvent {
            position: self.position,
            reason,
        }
    }
}

/// Counts `change` in a ledger's totals; fails (the stored row must be damaged) if a figure
/// would overflow or a release finds no open pending transfer to close.
fn count_in_totals(totals: &mut TotalsRow, change: Change) -> Result<(), &'static str> {
    const OVERFLOW: &str = "a figure overflows";
    match change {
        Change::Account => totals.accounts = totals.accounts.checked_add(1).ok_or(OVERFLOW)?,
        Change::Posted { kind, amount } => {
            let amount = u128::from(amount);
            totals.transfers = totals.transfers.checked_add(1).ok_or(OVERFLOW)?;
            totals.volume = totals.volume.checked_add(amount).ok_or(OVERFLOW)?;
            match kind {
                EntryKind::Deposit => {
                    totals.deposited = totals.deposited.checked_add(amount).ok_or(OVERFLOW)?;
                }
                EntryKind::Withdrawal => {
                    totals.withdrawn = totals.withdrawn.checked_add(amount).ok_or(OVERFLOW)?;
                }
                EntryKind::Transfer | EntryKind::Post => {}
                EntryKind::Pending | EntryKind::Void | EntryKind::Expire => {
                    unreachable!("{kind:?} posts no value")
                }
            }
        }
        Change::Reserved(amount) => {
            totals.pending = totals.pending.checked_add(1).ok_or(OVERFLOW)?;
            totals.pending_amount = totals
                .pending_amount
                .checked_add(u128::from(amount))
                .ok_or(OVERFLOW)?;
        }
        Change::Released(amount) => {
            totals.pending = totals
                .pending
                .checked_sub(1)
                .ok_or("a pending transfer closes with none open")?;
            totals.pending_amount = totals
                .pending_amount
                .checked_sub(u128::from(amount))
                .ok_or("a pending transfer releases more than is reserved")?;
        }
    }
    Ok(())
}
