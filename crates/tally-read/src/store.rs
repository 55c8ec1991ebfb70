//! The redb file: its tables, opening (and rebuilding) it, and the queries.
//!
//! Every table is written only by the projector, in transactions that also store the checkpoint
//! (the next position to apply), so the file is always a projection of an exact prefix of the log.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, TableDefinition};

use crate::codec::{AccountRow, DayRow, HistoryRow, TotalsRow, TransferRow};
use crate::limits::{DAILY_PAGE_DAYS_MAX, HISTORY_PAGE_ENTRIES_MAX, STORE_FORMAT_VERSION};
use crate::write_back::{WriteBackAt, WriteBackFile};
use crate::{
    DailyPage, Day, DaySummary, HistoryEntry, HistoryPage, LedgerTotals, ReadError, TransferView,
};

/// Checkpoint and counters, by name.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Account index → [`AccountRow`].
pub(crate) const ACCOUNTS: TableDefinition<u32, &[u8]> = TableDefinition::new("accounts");
/// Account id → account index.
pub(crate) const ACCOUNT_IDS: TableDefinition<&str, u32> = TableDefinition::new("account_ids");
/// Ledger code → index of its external account.
pub(crate) const LEDGERS: TableDefinition<&str, u32> = TableDefinition::new("ledgers");
/// Transfer id → [`TransferRow`].
pub(crate) const TRANSFERS: TableDefinition<&str, &[u8]> = TableDefinition::new("transfers");
/// Position of an unresolved pending transfer → its id; posts, voids and expiries name the
/// pending transfer by position.
pub(crate) const PENDINGS: TableDefinition<u64, &str> = TableDefinition::new("pendings");
/// (account index, position) → [`HistoryRow`].
pub(crate) const HISTORY: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("history");
/// Ledger code → [`TotalsRow`]; a row from the ledger's first account on.
pub(crate) const LEDGER_TOTALS: TableDefinition<&str, &[u8]> =
    TableDefinition::new("ledger_totals");
/// (ledger code, UTC day as days since 1970-01-01) → [`DayRow`]; only days with a counted event.
pub(crate) const LEDGER_DAYS: TableDefinition<(&str, u32), &[u8]> =
    TableDefinition::new("ledger_days");

/// Meta key: the next position to apply.
pub(crate) const META_POSITION: &str = "position";
/// Meta key: the number of accounts (external ones included), i.e. the next account index.
pub(crate) const META_ACCOUNT_COUNT: &str = "account_count";
/// Meta key: [`STORE_FORMAT_VERSION`] of the file.
pub(crate) const META_FORMAT_VERSION: &str = "format_version";

/// The tables of one write transaction.
pub(crate) struct Tables<'txn> {
    pub meta: redb::Table<'txn, &'static str, u64>,
    pub accounts: redb::Table<'txn, u32, &'static [u8]>,
    pub account_ids: redb::Table<'txn, &'static str, u32>,
    pub ledgers: redb::Table<'txn, &'static str, u32>,
    pub transfers: redb::Table<'txn, &'static str, &'static [u8]>,
    pub pendings: redb::Table<'txn, u64, &'static str>,
    pub history: redb::Table<'txn, (u32, u64), &'static [u8]>,
    pub ledger_totals: redb::Table<'txn, &'static str, &'static [u8]>,
    pub ledger_days: redb::Table<'txn, (&'static str, u32), &'static [u8]>,
}

/// Where the stored projection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    pub position: u64,
    pub account_count: u32,
}

/// The read model's redb database.
pub(crate) struct Store {
    pub db: Database,
    pub path: PathBuf,
}

/// Why an existing file is not used.
enum Unusable {
    /// Another handle has it open: a real error, the file must not be touched.
    Busy(ReadError),
    /// It is damaged, from another format version, or ahead of the log: rebuild it.
    Stale(String),
}

impl<'txn> Tables<'txn> {
    pub fn open(txn: &'txn redb::WriteTransaction, path: &Path) -> Result<Tables<'txn>, ReadError> {
        let err = |source: redb::TableError| store_error("open table", path, source);
        Ok(Tables {
            meta: txn.open_table(META).map_err(err)?,
            accounts: txn.open_table(ACCOUNTS).map_err(err)?,
            account_ids: txn.open_table(ACCOUNT_IDS).map_err(err)?,
            ledgers: txn.open_table(LEDGERS).map_err(err)?,
            transfers: txn.open_table(TRANSFERS).map_err(err)?,
            pendings: txn.open_table(PENDINGS).map_err(err)?,
            history: txn.open_table(HISTORY).map_err(err)?,
            ledger_totals: txn.open_table(LEDGER_TOTALS).map_err(err)?,
            ledger_days: txn.open_table(LEDGER_DAYS).map_err(err)?,
        })
    }
}

/// Wraps a redb error with the operation and the file.
pub(crate) fn store_error(
    op: &'static str,
    path: &Path,
    source: impl Into<redb::Error>,
) -> ReadError {
    ReadError::Store {
        op,
        path: path.to_path_buf(),
        source: Box::new(source.into()),
    }
}

impl Store {
    /// Opens the file at `path`, or creates it. A file that is damaged, of another format
    /// version, or whose checkpoint lies beyond `log_end` (the log's durable next position) is
    /// deleted and created empty: it is derived data, and the log rebuilds it.
    pub fn open(path: &Path, log_end: u64) -> Result<(Store, Checkpoint), ReadError> {
        let reason = match Store::open_existing(path) {
            Ok(None) => return Store::create(path),
            Ok(Some((store, checkpoint))) if checkpoint.position <= log_end => {
                return Ok((store, checkpoint))
            }
            Ok(Some((_, checkpoint))) => {
                format!("its checkpoint (position {}) lies beyond the end of the log (position {log_end})", checkpoint.position)
            }
            Err(Unusable::Busy(error)) => return Err(error),
            Err(Unusable::Stale(reason)) => reason,
        };
        tracing::warn!(path = %path.display(), "rebuilding the read model from the start of the log: {reason}");
        std::fs::remove_file(path).map_err(|source| ReadError::Io {
            op: "remove stale read model",
            path: path.into(),
            source,
        })?;
        Store::create(path)
    }

    /// The store and its checkpoint if a file exists at `path`.
    fn open_existing(path: &Path) -> Result<Option<(Store, Checkpoint)>, Unusable> {
        match std::fs::metadata(path) {
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(Unusable::Busy(ReadError::Io {
                    op: "stat",
                    path: path.into(),
                    source,
                }))
            }
        }
        let opened = WriteBackFile::create(path, WriteBackAt::Sync)
            .and_then(|backend| Database::builder().create_with_backend(backend));
        let db = match opened {
            Ok(db) => db,
            Err(
                error @ (redb::DatabaseError::DatabaseAlreadyOpen
                | redb::DatabaseError::TransactionInProgress),
            ) => {
                return Err(Unusable::Busy(store_error("open", path, error)));
            }
            Err(error) => return Err(Unusable::Stale(format!("it cannot be opened: {error}"))),
        };
        let store = Store {
            db,
            path: path.to_path_buf(),
        };
        let meta = |key| {
            store
                .meta(key)
                .map_err(|error| Unusable::Stale(format!("its checkpoint cannot be read: {error}")))
        };
        if meta(META_FORMAT_VERSION)? != Some(STORE_FORMAT_VERSION) {
            return Err(Unusable::Stale(format!(
                "it is not of format version {STORE_FORMAT_VERSION}"
            )));
        }
        let (Some(position), Some(account_count)) =
            (meta(META_POSITION)?, meta(META_ACCOUNT_COUNT)?)
        else {
            return Err(Unusable::Stale("its checkpoint is missing".into()));
        };
        let account_count = u32::try_from(account_count)
            .map_err(|_| Unusable::Stale("its account count overflows u32".into()))?;
        Ok(Some((
            store,
            Checkpoint {
                position,
                account_count,
            },
        )))
    }

    /// Creates an empty store at position 0, durably, so that a crash never leaves a file without
    /// tables behind. Its file writes its pages back to the disk in small pieces before each sync
    /// (see `write_back.rs`), as the one [`Store::open`] opens does.
    pub fn create(path: &Path) -> Result<(Store, Checkpoint), ReadError> {
        Store::create_at(path, WriteBackAt::Sync)
    }

    /// Creates an empty store as [`Store::create`] does, on a file that also writes its pages
    /// back as they are written, a few megabytes at a time (see `write_back.rs`): for a rebuild,
    /// which writes its whole file while the online path shares the disk, and has no readers.
    pub fn create_written_back(path: &Path) -> Result<(Store, Checkpoint), ReadError> {
        Store::create_at(path, WriteBackAt::SyncOrPendingMax)
    }

    fn create_at(path: &Path, at: WriteBackAt) -> Result<(Store, Checkpoint), ReadError> {
        let db = WriteBackFile::create(path, at)
            .and_then(|backend| Database::builder().create_with_backend(backend))
            .map_err(|source| store_error("create", path, source))?;
        Store::initialise(db, path)
    }

    /// Writes the tables and a checkpoint at position 0 into the new database `db`, durably.
    fn initialise(db: Database, path: &Path) -> Result<(Store, Checkpoint), ReadError> {
        let txn = db
            .begin_write()
            .map_err(|source| store_error("begin write transaction", path, source))?;
        {
            let mut tables = Tables::open(&txn, path)?;
            let insert =
                |source: redb::StorageError| store_error("initialise meta table", path, source);
            tables
                .meta
                .insert(META_FORMAT_VERSION, STORE_FORMAT_VERSION)
                .map_err(insert)?;
            tables.meta.insert(META_POSITION, 0).map_err(insert)?;
            tables.meta.insert(META_ACCOUNT_COUNT, 0).map_err(insert)?;
        }
        txn.commit()
            .map_err(|source| store_error("commit", path, source))?;
        Ok((
            Store {
                db,
                path: path.to_path_buf(),
            },
            Checkpoint {
                position: 0,
                account_count: 0,
            },
        ))
    }

    fn meta(&self, key: &str) -> Result<Option<u64>, ReadError> {
        let txn = self
            .db
            .begin_read()
            .map_err(|source| store_error("begin read transaction", &self.path, source))?;
        let table = txn
            .open_table(META)
            .map_err(|source| store_error("open table", &self.path, source))?;
        let value = table
            .get(key)
            .map_err(|source| store_error("read meta", &self.path, source))?;
        Ok(value.map(|guard| guard.value()))
    }

    /// Every ledger code and the index of its external account.
    pub fn ledgers(&self) -> Result<Vec<(String, u32)>, ReadError> {
        let txn = self
            .db
            .begin_read()
            .map_err(|source| store_error("begin read transaction", &self.path, source))?;
        let table = txn
            .open_table(LEDGERS)
            .map_err(|source| store_error("open table", &self.path, source))?;
        let range = table
            .range::<&str>(..)
            .map_err(|source| store_error("read ledgers", &self.path, source))?;
        let mut ledgers = Vec::new();
        for row in range {
            let (code, external) =
                row.map_err(|source| store_error("read ledgers", &self.path, source))?;
            ledgers.push((code.value().to_owned(), external.value()));
        }
        Ok(ledgers)
    }

    /// The transfer `id` as of the last committed transaction.
    pub fn transfer(&self, id: &str) -> Result<Option<TransferView>, ReadError> {
        let path = &self.path;
        let txn = self
            .db
            .begin_read()
            .map_err(|source| store_error("begin read transaction", path, source))?;
        let transfers = txn
            .open_table(TRANSFERS)
            .map_err(|source| store_error("open table", path, source))?;
        let accounts = txn
            .open_table(ACCOUNTS)
            .map_err(|source| store_error("open table", path, source))?;
        let Some(bytes) = transfers
            .get(id)
            .map_err(|source| store_error("read transfer", path, source))?
        else {
            return Ok(None);
        };
        let row = TransferRow::decode(bytes.value())
            .map_err(|reason| self.corrupt("transfers", id, reason))?;
        let account = |index: u32| -> Result<AccountRow, ReadError> {
            let bytes = accounts
                .get(index)
                .map_err(|source| store_error("read account", path, source))?;
            let bytes = bytes.ok_or_else(|| {
                self.corrupt(
                    "accounts",
                    &index.to_string(),
                    "a transfer names a missing account",
                )
            })?;
            AccountRow::decode(bytes.value())
                .map_err(|reason| self.corrupt("accounts", &index.to_string(), reason))
        };
        let (debit, credit) = (account(row.debit)?, account(row.credit)?);
        Ok(Some(TransferView {
            id: id.to_owned(),
            kind: row.kind.name(),
            status: row.status.name(),
            ledger: debit.ledger,
            from: debit.id,
            to: credit.id,
            amount: row.amount,
            position: row.position,
            timestamp_ns: row.timestamp_ns,
            pending_id: row.pending_id,
            posted_amount: row.posted_amount,
            expires_at_ns: (row.expires_at_ns != 0).then_some(row.expires_at_ns),
            resolved_by: row.resolved_by,
        }))
    }

    /// Up to `limit` (at least 1, at most [`HISTORY_PAGE_ENTRIES_MAX`]) history entries of
    /// `account_id` after position `after`; `None` if there is no such account.
    pub fn history(
        &self,
        account_id: &str,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Option<HistoryPage>, ReadError> {
        let path = &self.path;
        let limit = limit.clamp(1, HISTORY_PAGE_ENTRIES_MAX);
        let txn = self
            .db
            .begin_read()
            .map_err(|source| store_error("begin read transaction", path, source))?;
        let account_ids = txn
            .open_table(ACCOUNT_IDS)
            .map_err(|source| store_error("open table", path, source))?;
        let history = txn
            .open_table(HISTORY)
            .map_err(|source| store_error("open table", path, source))?;
        let Some(index) = account_ids
            .get(account_id)
            .map_err(|source| store_error("read account id", path, source))?
        else {
            return Ok(None);
        };
        let index = index.value();
        let first = match after {
            None => 0,
            Some(u64::MAX) => {
                return Ok(Some(HistoryPage {
                    entries: Vec::new(),
                    next: None,
                }))
            }
            Some(after) => after + 1,
        };
        let range = history
            .range((index, first)..=(index, u64::MAX))
            .map_err(|source| store_error("read history", path, source))?;
        let mut entries = Vec::with_capacity(limit as usize);
        let mut more = false;
        for row in range {
            let (key, value) = row.map_err(|source| store_error("read history", path, source))?;
            if entries.len() == limit as usize {
                more = true;
                break;
            }
            let (key_index, position) = key.value();
            assert_eq!(key_index, index);
            let row = HistoryRow::decode(value.value()).map_err(|reason| {
                self.corrupt("history", &format!("({index}, {position})"), reason)
            })?;
            entries.push(HistoryEntry {
                position,
                transfer_id: row.transfer_id,
                kind: row.kind.name(),
                side: row.side.name(),
                amount: row.amount,
                balance_after: row.balance_after,
                timestamp_ns: row.timestamp_ns,
            });
        }
        assert!(entries.len() <= limit as usize);
        let next = if more {
            entries.last().map(|entry| entry.position)
        } else {
            None
        };
        Ok(Some(HistoryPage { entries, next }))
    }

    /// The figures of the ledger `code`; `None` if it has no account.
    pub fn ledger_totals(&self, code: &str) -> Result<Option<LedgerTotals>, ReadError> {
        let path = &self.path;
        let txn = self
            .db
            .begin_read()
            .map_err(|source| store_error("begin read transaction", path, source))?;
        let totals = txn
            .open_table(LEDGER_TOTALS)
            .map_err(|source| store_error("open table", path, source))?;
        let Some(bytes) = totals
            .get(code)
            .map_err(|source| store_error("read ledger totals", path, source))?
        else {
            return Ok(None);
        };
        let row = TotalsRow::decode(bytes.value())
            .map_err(|reason| self.corrupt("ledger_totals", code, reason))?;
        Ok(Some(LedgerTotals {
            ledger: code.to_owned(),
            accounts: row.accounts,
            transfers: row.transfers,
            volume: row.volume,
            deposited: row.deposited,
            withdrawn: row.withdrawn,
            pending: row.pending,
            pending_amount: row.pending_amount,
        }))
    }

    /// Up to `limit` (at least 1, at most [`DAILY_PAGE_DAYS_MAX`]) days with a row of the ledger
    /// `code`, oldest first, from `from` to `to` (both inclusive, unbounded when `None`); `None`
    /// if the ledger has no account.
    pub fn ledger_days(
        &self,
        code: &str,
        from: Option<Day>,
        to: Option<Day>,
        limit: u32,
    ) -> Result<Option<DailyPage>, ReadError> {
        let path = &self.path;
        let limit = limit.clamp(1, DAILY_PAGE_DAYS_MAX);
        let txn = self
            .db
            .begin_read()
            .map_err(|source| store_error("begin read transaction", path, source))?;
        let totals = txn
            .open_table(LEDGER_TOTALS)
            .map_err(|source| store_error("open table", path, source))?;
        let days = txn
            .open_table(LEDGER_DAYS)
            .map_err(|source| store_error("open table", path, source))?;
        let exists = totals
            .get(code)
            .map_err(|source| store_error("read ledger totals", path, source))?
            .is_some();
        if !exists {
            return Ok(None);
        }
        let empty = DailyPage {
            days: Vec::new(),
            next: None,
        };
        // Stored days count from 1970-01-01: a bound before it starts at the first stored day,
        // and a page that ends before it is empty.
        let first = from.and_then(Day::since_epoch).unwrap_or(0);
        let last = match to {
            None => u32::MAX,
            Some(to) => match to.since_epoch() {
                Some(last) => last,
                None => return Ok(Some(empty)),
            },
        };
        if first > last {
            return Ok(Some(empty));
        }
        let range = days
            .range((code, first)..=(code, last))
            .map_err(|source| store_error("read ledger days", path, source))?;
        let mut page = empty;
        for row in range {
            let (key, value) =
                row.map_err(|source| store_error("read ledger days", path, source))?;
            let (key_code, since_epoch) = key.value();
            assert_eq!(key_code, code);
            let rendered = || format!("({code}, {since_epoch})");
            let day = Day::from_since_epoch(since_epoch)
                .ok_or_else(|| self.corrupt("ledger_days", &rendered(), "day beyond 9999-12-31"))?;
            if page.days.len() == limit as usize {
                page.next = Some(day);
                break;
            }
            let row = DayRow::decode(value.value())
                .map_err(|reason| self.corrupt("ledger_days", &rendered(), reason))?;
            page.days.push(DaySummary {
                day,
                transfers: row.transfers,
                volume: row.volume,
            });
        }
        assert!(page.days.len() <= limit as usize);
        Ok(Some(page))
    }

    pub(crate) fn corrupt(
        &self,
        table: &'static str,
        key: &str,
        reason: &'static str,
    ) -> ReadError {
        ReadError::Corrupt {
            path: self.path.clone(),
            table,
            key: key.to_owned(),
            reason,
        }
    }
}
