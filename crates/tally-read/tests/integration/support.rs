//! The test harness: a ledger driven by commands, an in-memory log, and dumps to compare.

use std::fmt::Write as _;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tally_core::{
    Command, Id, Ledger, LedgerCode, PendingOptions, Reply, TransferBody, TransferCommand,
};
use tally_log::{Batch, BatchHeader, LogError, LogReader};
use tally_read::{ProjectorOptions, ReadModel};
use tokio::sync::watch;

/// Long enough for an idle-priority thread on a busy 2-core machine.
pub const WAIT: Duration = Duration::from_secs(60);

/// A ledger whose batches are appended to an in-memory log.
pub struct Sim {
    pub ledger: Ledger,
    pub log: FakeLog,
    timestamp_ns: u64,
}

/// An in-memory log: every appended batch is durable at once.
#[derive(Clone)]
pub struct FakeLog {
    batches: Arc<Mutex<Vec<Batch>>>,
    durable: Arc<watch::Sender<u64>>,
}

struct FakeReader {
    batches: Arc<Mutex<Vec<Batch>>>,
    durable: watch::Receiver<u64>,
}

impl FakeLog {
    pub fn new() -> FakeLog {
        FakeLog {
            batches: Arc::default(),
            durable: Arc::new(watch::Sender::new(0)),
        }
    }

    pub fn reader(&self) -> Box<dyn LogReader> {
        Box::new(FakeReader {
            batches: Arc::clone(&self.batches),
            durable: self.durable.subscribe(),
        })
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.durable.subscribe()
    }

    pub fn end(&self) -> u64 {
        *self.durable.borrow()
    }

    pub fn append(&self, batch: Batch) {
        assert_eq!(batch.header.first_position, self.end());
        let end = batch.header.end_position();
        self.batches.lock().unwrap().push(batch);
        self.durable.send_replace(end);
    }

    /// A log holding the first `count` batches of this one.
    pub fn prefix(&self, count: usize) -> FakeLog {
        let log = FakeLog::new();
        for batch in self.batches.lock().unwrap().iter().take(count) {
            log.append(batch.clone());
        }
        log
    }

    pub fn batch_count(&self) -> usize {
        self.batches.lock().unwrap().len()
    }
}

impl LogReader for FakeReader {
    fn another(&self) -> Box<dyn LogReader> {
        Box::new(FakeReader {
            batches: Arc::clone(&self.batches),
            durable: self.durable.clone(),
        })
    }

    fn read_from(
        &mut self,
        position: u64,
    ) -> Result<Box<dyn Iterator<Item = Result<Batch, LogError>> + '_>, LogError> {
        let durable = *self.durable.borrow();
        let batches: Vec<_> = self
            .batches
            .lock()
            .unwrap()
            .iter()
            .filter(|batch| {
                batch.header.end_position() > position && batch.header.end_position() <= durable
            })
            .cloned()
            .collect();
        Ok(Box::new(batches.into_iter().map(Ok)))
    }
}

impl Sim {
    pub fn new() -> Sim {
        Sim {
            ledger: Ledger::new(),
            log: FakeLog::new(),
            timestamp_ns: 1_000_000_000,
        }
    }

    /// Executes `commands` as one batch at `advance_ns` after the previous one and appends the
    /// events, if any; returns the replies.
    pub fn batch_after(&mut self, advance_ns: u64, commands: &[Command]) -> Vec<Reply> {
        self.timestamp_ns += advance_ns;
        let (mut events, mut replies) = (Vec::new(), Vec::new());
        let first_position = self.ledger.next_position();
        self.ledger.begin_batch(self.timestamp_ns, &mut events);
        for command in commands {
            self.ledger.execute(command, &mut events, &mut replies);
        }
        if !events.is_empty() {
            let header = BatchHeader {
                first_position,
                event_count: events.len() as u32,
                timestamp_ns: self.timestamp_ns,
            };
            self.log.append(Batch {
                header,
                body: tally_core::encode_events(&events),
            });
        }
        assert_eq!(self.ledger.next_position(), self.log.end());
        self.ledger.check_invariants().unwrap();
        replies
    }

    pub fn batch(&mut self, commands: &[Command]) -> Vec<Reply> {
        self.batch_after(1_000, commands)
    }

    pub fn timestamp_ns(&self) -> u64 {
        self.timestamp_ns
    }

    /// Every client account id, in index order.
    pub fn account_ids(&self) -> Vec<String> {
        (0..self.ledger.account_count() as u32)
            .filter_map(|index| {
                self.ledger
                    .account(index)
                    .id
                    .as_ref()
                    .map(|id| id.as_str().to_owned())
            })
            .collect()
    }

    pub fn balance(&self, account: &str) -> i128 {
        self.ledger
            .account_by_id(&id(account))
            .unwrap()
            .1
            .balances
            .balance()
    }
}

pub fn id(text: &str) -> Id {
    Id::new(text).unwrap()
}

fn amount(value: u64) -> NonZeroU64 {
    NonZeroU64::new(value).unwrap()
}

pub fn open(account: &str, ledger: &str) -> Command {
    Command::CreateAccount {
        id: id(account),
        ledger: LedgerCode::new(ledger).unwrap(),
        allow_overdraft: false,
    }
}

fn transfer_command(transfer_id: &str, body: TransferBody) -> Command {
    Command::Transfer(TransferCommand {
        id: id(transfer_id),
        body,
    })
}

pub fn deposit(transfer_id: &str, account: &str, value: u64) -> Command {
    transfer_command(
        transfer_id,
        TransferBody::Deposit {
            account: id(account),
            amount: amount(value),
        },
    )
}

pub fn withdraw(transfer_id: &str, account: &str, value: u64) -> Command {
    transfer_command(
        transfer_id,
        TransferBody::Withdrawal {
            account: id(account),
            amount: amount(value),
        },
    )
}

pub fn transfer(transfer_id: &str, from: &str, to: &str, value: u64) -> Command {
    transfer_command(
        transfer_id,
        TransferBody::Transfer {
            from: id(from),
            to: id(to),
            amount: amount(value),
            pending: None,
        },
    )
}

pub fn pending(transfer_id: &str, from: &str, to: &str, value: u64, timeout_s: u32) -> Command {
    let pending = Some(PendingOptions { timeout_s });
    transfer_command(
        transfer_id,
        TransferBody::Transfer {
            from: id(from),
            to: id(to),
            amount: amount(value),
            pending,
        },
    )
}

pub fn post(transfer_id: &str, pending_id: &str, value: Option<u64>) -> Command {
    transfer_command(
        transfer_id,
        TransferBody::Post {
            pending_id: id(pending_id),
            amount: value.map(amount),
        },
    )
}

pub fn void(transfer_id: &str, pending_id: &str) -> Command {
    transfer_command(
        transfer_id,
        TransferBody::Void {
            pending_id: id(pending_id),
        },
    )
}

/// A temporary directory with the read model's file path.
pub struct Dir {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

pub fn dir() -> Dir {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(tally_read::READ_MODEL_FILE_NAME);
    Dir { _dir: dir, path }
}

pub fn start(path: &Path, log: &FakeLog) -> ReadModel {
    ReadModel::start(path, log.reader(), log.subscribe()).unwrap()
}

/// Small transactions, so that a few batches make several of them.
pub fn start_small(path: &Path, log: &FakeLog) -> ReadModel {
    let options = ProjectorOptions {
        transaction_events_max: 3,
        ..ProjectorOptions::default()
    };
    ReadModel::start_with(path, log.reader(), log.subscribe(), options).unwrap()
}

/// Starts a read model of `log` at `path` and waits until it has projected all of it.
pub async fn project(path: &Path, log: &FakeLog) -> ReadModel {
    let model = start(path, log);
    model.wait_for(log.end(), WAIT).await.unwrap();
    model
}

/// Every history (all pages) and every transfer of `ids`, rendered for comparison.
pub fn dump(model: &ReadModel, accounts: &[String], transfer_ids: &[String]) -> String {
    let mut out = String::new();
    for account in accounts {
        let entries = all_history(model, account, 7);
        writeln!(out, "account {account}: {entries:?}").unwrap();
    }
    for transfer_id in transfer_ids {
        writeln!(
            out,
            "transfer {transfer_id}: {:?}",
            model.transfer(transfer_id).unwrap()
        )
        .unwrap();
    }
    out
}

/// The whole history of `account`, read page by page.
pub fn all_history(model: &ReadModel, account: &str, limit: u32) -> Vec<tally_read::HistoryEntry> {
    let mut entries = Vec::new();
    let mut after = None;
    loop {
        let page = model
            .history(account, after, limit)
            .unwrap()
            .expect("account exists");
        assert!(page.entries.len() <= limit as usize);
        entries.extend(page.entries);
        match page.next {
            Some(next) => after = Some(next),
            None => return entries,
        }
    }
}
