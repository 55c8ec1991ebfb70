//! Simulated clients and what they were told.
//!
//! Each client keeps at most one request in flight: one to four commands (accounts, deposits,
//! withdrawals, transfers, two-phase transfers and their posts and voids, linked chains, and a
//! gift campaign: its definition, claims, their settlements and attempts, its publication),
//! with ids it never reuses for another body. A client that gets no answer before its deadline, or
//! whose answer was lost with a crashed engine, sends the same commands again with the same ids,
//! as a real client must. The [`Model`] remembers every answer a client received: those are the
//! promises the engine must keep.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU64;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tally_core::limits::TIMESTAMP_NS_MAX;
use tally_core::{
    CampaignDefinition, ClaimState, Command, Id, LedgerCode, OffsetChange, Outcome, PendingOptions,
    TransferBody, TransferCommand,
};
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

/// The simulation's one campaign: every client defining it sends this body. Open over the whole
/// clock, so that its limits, not its window, decide; small limits, so that they bind.
fn define_campaign() -> Command {
    Command::DefineCampaign(Box::new(CampaignDefinition {
        id: id(CAMPAIGN),
        gift_ledger: LedgerCode::new("GIFT").expect("valid code"),
        inventory: 40,
        per_user_limit: 3,
        daily_limit: 12,
        starts_at_ns: 0,
        ends_at_ns: TIMESTAMP_NS_MAX,
        verification_account: id(VERIFIER),
        offsets: vec![OffsetChange {
            from_ns: 0,
            offset_seconds: 3600,
        }],
        spec: b"simulated".to_vec(),
    }))
}

const CAMPAIGN: &str = "sim-gifts";
const VERIFIER: &str = "gift-verifier";

fn campaign_command(prefix: &str, rng: &mut ChaCha8Rng, model: &Model) -> Command {
    let claimed = (!model.claims.is_empty())
        .then(|| {
            model
                .claims
                .keys()
                .nth(rng.random_range(0..model.claims.len()))
        })
        .flatten()
        .cloned();
    match (rng.random_range(0..100), claimed) {
        (0..10, _) => define_campaign(),
        (10..15, _) => Command::PublishCampaign { id: id(CAMPAIGN) },
        (15..40, Some(order_id)) => Command::SettleClaim {
            order_id,
            outcome: [
                ClaimState::Delivered,
                ClaimState::Voided,
                ClaimState::Unknown,
            ][rng.random_range(0..3)],
        },
        (40..50, Some(order_id)) => Command::RecordClaimAttempt {
            order_id,
            attempt: rng.random_range(1..=3),
        },
        _ => {
            let user = match rng.random_range(0..6) {
                0 => id(VERIFIER),
                user => id(&format!("gift-user-{user}")),
            };
            Command::Claim {
                campaign: id(CAMPAIGN),
                order_id: id(&format!("{prefix}-order")),
                user,
            }
        }
    }
}

fn random_command(prefix: &str, rng: &mut ChaCha8Rng, model: &Model) -> Command {
    let one = |rng: &mut ChaCha8Rng, suffix: &str| TransferCommand {
        id: id(&format!("{prefix}{suffix}")),
        body: random_body(rng, model),
    };
    match rng.random_range(0..100) {
        0..10 => create_account(rng.random_range(0..ACCOUNTS)),
        10..80 => Command::Transfer(one(rng, "")),
        80..90 => campaign_command(prefix, rng, model),
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
    /// Acknowledged claims: the position of each one's pending transfer.
    pub(crate) claims: BTreeMap<Id, u64>,
    /// Whether the campaign's definition was acknowledged.
    pub(crate) campaign_defined: bool,
    /// Claim orders and campaign definitions answered, even if refused: they were answered.
    pub(crate) campaign_answered: BTreeSet<Id>,
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
                    Command::DefineCampaign(definition) => vec![(&definition.id, false)],
                    Command::CreateAccount { id, .. }
                    | Command::RevokeToken { token_id: id }
                    | Command::PublishCampaign { id }
                    | Command::Claim { order_id: id, .. }
                    | Command::SettleClaim { order_id: id, .. }
                    | Command::RecordClaimAttempt { order_id: id, .. }
                    | Command::EndClaimAttempt { order_id: id, .. } => vec![(id, false)],
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
        for (((id, pending), answer), command) in
            transfers
                .into_iter()
                .zip(answers)
                .zip(commands.iter().flat_map(|command| match command {
                    Command::Linked(chain) => vec![command; chain.len()],
                    _ => vec![command],
                }))
        {
            let told = match (answer, command) {
                (Answer::Account { .. }, _) => {
                    self.accounts.insert(id.clone());
                    continue;
                }
                (Answer::Campaign { .. }, Command::DefineCampaign(_)) => {
                    self.campaign_defined = true;
                    self.campaign_answered.insert(id.clone());
                    continue;
                }
                (Answer::Claim { view, .. }, Command::Claim { .. }) => {
                    match self.claims.insert(id.clone(), view.position) {
                        Some(earlier) if earlier != view.position => {
                            return Err(format!(
                                "claim {id:?} was answered at {earlier} and later at {}",
                                view.position
                            ))
                        }
                        _ => {}
                    }
                    self.campaign_answered.insert(id.clone());
                    continue;
                }
                // A refused claim or definition is not remembered: a retry may succeed.
                (Answer::Refused(_), Command::Claim { .. } | Command::DefineCampaign(_)) => {
                    self.campaign_answered.insert(id.clone());
                    continue;
                }
                // Publications, settlements and attempts change state that the ledger's own
                // checks (invariants, replay) cover; any of their answers is possible.
                (
                    Answer::Campaign { .. } | Answer::Claim { .. } | Answer::Refused(_),
                    Command::PublishCampaign { .. }
                    | Command::SettleClaim { .. }
                    | Command::RecordClaimAttempt { .. },
                ) => continue,
                (Answer::Transfer { reply, .. }, _) => Told {
                    committed: true,
                    position: reply.position,
                },
                (Answer::Rejected { position, .. }, _) => Told {
                    committed: false,
                    position: *position,
                },
                (other, _) => {
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

/// The ids a command must be answered for; publications, settlements and attempts have none of
/// their own.
fn command_ids(command: &Command) -> Vec<Id> {
    match command {
        Command::DefineCampaign(definition) => vec![definition.id.clone()],
        Command::CreateAccount { id, .. }
        | Command::RevokeToken { token_id: id }
        | Command::Claim { order_id: id, .. } => vec![id.clone()],
        Command::PublishCampaign { .. }
        | Command::SettleClaim { .. }
        | Command::RecordClaimAttempt { .. }
        | Command::EndClaimAttempt { .. } => Vec::new(),
        Command::Transfer(transfer) => vec![transfer.id.clone()],
        Command::Linked(chain) => chain.iter().map(|transfer| transfer.id.clone()).collect(),
    }
}
