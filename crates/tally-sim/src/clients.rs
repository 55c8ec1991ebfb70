//! Simulated clients and what they were told.
//!
//! Each client keeps at most one request in flight: one to four commands (accounts, deposits,
//! withdrawals, transfers, two-phase transfers and their posts and voids, linked chains), with
//! ids it never reuses for another body. A client that gets no answer before its deadline, or
//! whose answer was lost with a crashed engine, sends the same commands again with the same ids,
//! as a real client must. The [`Model`] remembers every answer a client received: those are the
//! promises the engine must keep.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU64;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tally_core::{Command, Id, LedgerCode, Outcome, PendingOptions, TransferBody, TransferCommand};
use tally_engine::{Answer, Ticket};
use tokio::sync::oneshot::error::TryRecvError;

/// Accounts the clients use: `ACCOUNTS` accounts spread over `LEDGERS` ledgers.
const ACCOUNTS: u32 = 10;
const LEDGERS: u32 = 2;

/// One client and its request in flight.
#[derive(Default)]
pub(crate) struct Client {
    /// Commands created so far, to number ids.
    created: u64,
    pub(crate) in_flight: Option<InFlight>,
}

/// A request waiting for an answer, and every attempt at it.
pub(crate) struct InFlight {
    pub(crate) commands: Vec<Command>,
    /// The tickets of all attempts: any of them may still answer.
    pub(crate) tickets: Vec<Ticket>,
    /// When the client gives up waiting and sends again.
    pub(crate) deadline_ns: u64,
}

/// What happened to a request when its tickets were polled.
pub(crate) enum Poll {
    /// No attempt answered yet, and at least one may still.
    Waiting,
    /// Every attempt is lost or refused: send again.
    Lost,
    /// An attempt answered.
    Answered(Vec<Answer>),
}

impl InFlight {
    pub(crate) fn poll(&mut self) -> Poll {
        let mut waiting = Vec::new();
        for mut ticket in self.tickets.drain(..) {
            match ticket.try_recv() {
                Ok(Ok(answers)) => return Poll::Answered(answers),
                Ok(Err(_)) | Err(TryRecvError::Closed) => {}
                Err(TryRecvError::Empty) => waiting.push(ticket),
            }
        }
        // Only the attempts that may still answer are kept.
        self.tickets = waiting;
        if !self.tickets.is_empty() {
            Poll::Waiting
        } else {
            Poll::Lost
        }
    }
}

impl Client {
    /// A new request of one to four commands.
    pub(crate) fn new_request(
        &mut self,
        index: usize,
        rng: &mut ChaCha8Rng,
        model: &Model,
    ) -> Vec<Command> {
        let count = rng.random_range(1..=4);
        (0..count)
            .map(|_| {
                self.created += 1;
                let prefix = format!("c{index}-{}", self.created);
                random_command(&prefix, rng, model)
            })
            .collect()
    }
}

fn account_id(index: u32) -> Id {
    Id::new(&format!("acct-{index}")).expect("valid id")
}

fn id(text: &str) -> Id {
    Id::new(text).expect("valid id")
}

fn amount(rng: &mut ChaCha8Rng) -> NonZeroU64 {
    NonZeroU64::new(rng.random_range(1..=400)).expect("not zero")
}

/// Account `index`: its ledger and overdraft flag follow from the index, so that every client
/// creating it sends the same body.
fn create_account(index: u32) -> Command {
    Command::CreateAccount {
        id: account_id(index),
        ledger: LedgerCode::new(&format!("L{}", index % LEDGERS)).expect("valid code"),
        allow_overdraft: index % 5 == 4,
    }
}

fn random_command(prefix: &str, rng: &mut ChaCha8Rng, model: &Model) -> Command {
    let one = |rng: &mut ChaCha8Rng, suffix: &str| TransferCommand {
        id: id(&format!("{prefix}{suffix}")),
        body: random_body(rng, model),
    };
    match rng.random_range(0..100) {
        0..10 => create_account(rng.random_range(0..ACCOUNTS)),
        10..88 => Command::Transfer(one(rng, "")),
        _ => {
            let len = rng.random_range(2..=4);
            Command::Linked((0..len).map(|i| one(rng, &format!("-l{i}"))).collect())
        }
    }
}

fn random_body(rng: &mut ChaCha8Rng, model: &Model) -> TransferBody {
    let account = |rng: &mut ChaCha8Rng| account_id(rng.random_range(0..ACCOUNTS));
    match rng.random_range(0..100) {
        0..30 => TransferBody::Deposit {
            account: account(rng),
            amount: amount(rng),
        },
        30..42 => TransferBody::Withdrawal {
            account: account(rng),
            amount: amount(rng),
        },
        42..80 => {
            let from = rng.random_range(0..ACCOUNTS);
            // Mostly within one ledger; sometimes across, which the ledger refuses.
            let step = if rng.random_bool(0.9) { LEDGERS } else { 1 };
            let to = (from + step * rng.random_range(1..ACCOUNTS / LEDGERS)) % ACCOUNTS;
            let pending = rng.random_bool(0.3).then(|| PendingOptions {
                timeout_s: if rng.random_bool(0.5) {
                    0
                } else {
                    rng.random_range(1..=5)
                },
            });
            TransferBody::Transfer {
                from: account_id(from),
                to: account_id(to),
                amount: amount(rng),
                pending,
            }
        }
        _ => {
            let pending_id = model
                .pick_pending(rng)
                .unwrap_or_else(|| id("never-recorded"));
            if rng.random_bool(0.5) {
                TransferBody::Void { pending_id }
            } else {
                TransferBody::Post {
                    pending_id,
                    amount: rng.random_bool(0.5).then(|| amount(rng)),
                }
            }
        }
    }
}

/// What an acknowledged transfer command was told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Told {
    pub(crate) committed: bool,
    pub(crate) position: u64,
}

impl Told {
    pub(crate) fn of(outcome: Outcome) -> Told {
        match outcome {
            Outcome::Committed { position, .. } => Told {
                committed: true,
                position,
            },
            Outcome::Rejected { position, .. } => Told {
                committed: false,
                position,
            },
        }
    }
}

/// Every promise the engine made: the answers clients received.
#[derive(Default)]
pub(crate) struct Model {
    pub(crate) transfers: BTreeMap<Id, Told>,
    pub(crate) accounts: BTreeSet<Id>,
    /// Committed two-phase transfers, candidates for posts and voids.
    pendings: Vec<Id>,
    /// Every command id ever sent, acknowledged or not.
    pub(crate) sent: BTreeSet<Id>,
}

impl Model {
    fn pick_pending(&self, rng: &mut ChaCha8Rng) -> Option<Id> {
        (!self.pendings.is_empty())
            .then(|| self.pendings[rng.random_range(0..self.pendings.len())].clone())
    }

    pub(crate) fn sent(&mut self, commands: &[Command]) {
        for command in commands {
            for id in command_ids(command) {
                self.sent.insert(id);
            }
        }
    }

    /// Records the answers to `commands`; an answer that contradicts an earlier one to the same
    /// id is an error.
    pub(crate) fn answered(
        &mut self,
        commands: &[Command],
        answers: &[Answer],
    ) -> Result<(), String> {
        let transfers: Vec<(&Id, bool)> = commands
            .iter()
            .flat_map(|command| -> Vec<(&Id, bool)> {
                match command {
                    Command::CreateAccount { id, .. } | Command::RevokeToken { token_id: id } => {
                        vec![(id, false)]
                    }
                    Command::Transfer(transfer) => vec![(&transfer.id, is_pending(transfer))],
                    Command::Linked(chain) => chain
                        .iter()
                        .map(|transfer| (&transfer.id, is_pending(transfer)))
                        .collect(),
                }
            })
            .collect();
        if transfers.len() != answers.len() {
            return Err(format!(
                "{} answers to a request of {} commands",
                answers.len(),
                transfers.len()
            ));
        }
        for ((id, pending), answer) in transfers.into_iter().zip(answers) {
            let told = match answer {
                Answer::Account { .. } => {
                    self.accounts.insert(id.clone());
                    continue;
                }
                Answer::Transfer { reply, .. } => Told {
                    committed: true,
                    position: reply.position,
                },
                Answer::Rejected { position, .. } => Told {
                    committed: false,
                    position: *position,
                },
                other => {
                    return Err(format!(
                        "command {id:?}, sent with one body only, was answered {other:?}"
                    ))
                }
            };
            match self.transfers.get(id) {
                Some(earlier) if *earlier != told => {
                    return Err(format!(
                        "command {id:?} was answered {earlier:?} and later {told:?}"
                    ))
                }
                Some(_) => {}
                None => {
                    self.transfers.insert(id.clone(), told);
                    if told.committed && pending {
                        self.pendings.push(id.clone());
                    }
                }
            }
        }
        Ok(())
    }
}

fn is_pending(transfer: &TransferCommand) -> bool {
    matches!(
        transfer.body,
        TransferBody::Transfer {
            pending: Some(_),
            ..
        }
    )
}

fn command_ids(command: &Command) -> Vec<Id> {
    match command {
        Command::CreateAccount { id, .. } | Command::RevokeToken { token_id: id } => {
            vec![id.clone()]
        }
        Command::Transfer(transfer) => vec![transfer.id.clone()],
        Command::Linked(chain) => chain.iter().map(|transfer| transfer.id.clone()).collect(),
    }
}
