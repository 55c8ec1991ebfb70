//! Property: for any command sequence, the projection agrees with the ledger core.

use proptest::prelude::*;
use tally_core::{Command, PendingState, Reply};

use crate::support::*;

const ACCOUNTS: [(&str, &str); 4] = [("a0", "USD"), ("a1", "USD"), ("a2", "EUR"), ("a3", "EUR")];

#[derive(Clone, Debug)]
enum Op {
    Deposit(usize, u64),
    Withdraw(usize, u64),
    Transfer(usize, usize, u64),
    Pending(usize, usize, u64, u32),
    Post(usize, Option<u64>),
    Void(usize),
    /// Ends the batch, `seconds` before the next one (so pending transfers may expire).
    Advance(u8),
    /// Ends the batch, a day before the next one (so the daily summaries have several days).
    NextDay,
}

fn op() -> impl Strategy<Value = Op> {
    let account = 0..ACCOUNTS.len();
    let amount = 1u64..60;
    prop_oneof![
        (account.clone(), amount.clone()).prop_map(|(a, n)| Op::Deposit(a, n)),
        (account.clone(), amount.clone()).prop_map(|(a, n)| Op::Withdraw(a, n)),
        (account.clone(), account.clone(), amount.clone())
            .prop_map(|(a, b, n)| Op::Transfer(a, b, n)),
        (account.clone(), account, amount.clone(), 0u32..3)
            .prop_map(|(a, b, n, t)| Op::Pending(a, b, n, t)),
        (0usize..16, proptest::option::of(amount)).prop_map(|(p, n)| Op::Post(p, n)),
        (0usize..16).prop_map(Op::Void),
        (0u8..3).prop_map(Op::Advance),
        Just(Op::NextDay),
    ]
}

/// Runs `ops` through a ledger; returns the simulation and the positions of recorded pending
/// transfers by id.
fn simulate(ops: &[Op]) -> (Sim, Vec<(String, u64)>) {
    let mut sim = Sim::new();
    let opens: Vec<Command> = ACCOUNTS
        .iter()
        .map(|(id, ledger)| open(id, ledger))
        .collect();
    sim.batch(&opens);
    let mut pendings: Vec<(String, u64)> = Vec::new();
    let mut pending_ids: Vec<String> = Vec::new();
    let mut batch: Vec<Command> = Vec::new();
    let flush = |sim: &mut Sim,
                 batch: &mut Vec<Command>,
                 advance_s: u32,
                 pendings: &mut Vec<(String, u64)>| {
        let replies = sim.batch_after(u64::from(advance_s) * 1_000_000_000 + 1, batch);
        for (command, reply) in batch.iter().zip(&replies) {
            if let (Command::Transfer(transfer), Reply::Transfer(recorded)) = (command, reply) {
                if matches!(recorded.kind, tally_core::TransferKind::Pending { .. }) {
                    pendings.push((transfer.id.as_str().to_owned(), recorded.position));
                }
            }
        }
        batch.clear();
    };
    for (index, op) in ops.iter().enumerate() {
        let id = format!("x{index}");
        let name = |account: usize| ACCOUNTS[account].0;
        let pending_of = |k: usize| {
            pending_ids
                .get(k % pending_ids.len().max(1))
                .cloned()
                .unwrap_or_else(|| "none".into())
        };
        let command = match *op {
            Op::Deposit(a, n) => deposit(&id, name(a), n),
            Op::Withdraw(a, n) => withdraw(&id, name(a), n),
            Op::Transfer(a, b, n) if a != b => transfer(&id, name(a), name(b), n),
            Op::Pending(a, b, n, t) if a != b => {
                pending_ids.push(id.clone());
                pending(&id, name(a), name(b), n, t)
            }
            Op::Post(k, n) => post(&id, &pending_of(k), n),
            Op::Void(k) => void(&id, &pending_of(k)),
            Op::Advance(seconds) => {
                flush(&mut sim, &mut batch, u32::from(seconds), &mut pendings);
                continue;
            }
            Op::NextDay => {
                flush(&mut sim, &mut batch, 86_400, &mut pendings);
                continue;
            }
            Op::Transfer(..) | Op::Pending(..) => continue,
        };
        batch.push(command);
    }
    flush(&mut sim, &mut batch, 0, &mut pendings);
    (sim, pendings)
}

fn check_projection(ops: &[Op]) {
    let (sim, pendings) = simulate(ops);
    let whole = dir();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let model = runtime.block_on(project(&whole.path, &sim.log));
    check_model(&sim, &model, &pendings);
    model.shutdown();
    // Tiny transactions: pending transfers are resolved in later transactions than their own.
    let small = dir();
    let model = start_small(&small.path, &sim.log);
    runtime
        .block_on(model.wait_for(sim.log.end(), WAIT))
        .unwrap();
    check_model(&sim, &model, &pendings);
    model.shutdown();
}

/// The projection of `sim`'s log agrees with its ledger: balances, ledger figures and the
/// status of every pending transfer.
fn check_model(sim: &Sim, model: &tally_read::ReadModel, pendings: &[(String, u64)]) {
    for account in sim.account_ids() {
        let entries = all_history(model, &account, 50);
        let projected = entries.last().map_or(0, |entry| entry.balance_after);
        assert_eq!(projected, sim.balance(&account), "balance of {account}");
    }
    check_ledgers(sim, model, pendings);
    for (id, position) in pendings {
        let expected = match sim.ledger.pending(*position).unwrap().state {
            PendingState::Pending => "pending",
            PendingState::Posted { .. } => "posted",
            PendingState::Voided { .. } => "voided",
            PendingState::Expired { .. } => "expired",
        };
        assert_eq!(
            model.transfer(id).unwrap().unwrap().status,
            expected,
            "status of {id}"
        );
    }
}

/// Each ledger's totals agree with the ledger core (accounts, balances against deposits and
/// withdrawals, open pending transfers) and with its days.
fn check_ledgers(sim: &Sim, model: &tally_read::ReadModel, pendings: &[(String, u64)]) {
    for ledger in ["USD", "EUR"] {
        let totals = model
            .ledger_totals(ledger)
            .unwrap()
            .expect("the ledger exists");
        let accounts: Vec<&str> = ACCOUNTS
            .iter()
            .filter(|(_, code)| *code == ledger)
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(totals.accounts, accounts.len() as u64, "{totals:?}");
        let balances: i128 = accounts.iter().map(|id| sim.balance(id)).sum();
        let net =
            i128::try_from(totals.deposited).unwrap() - i128::try_from(totals.withdrawn).unwrap();
        assert_eq!(balances, net, "{totals:?}");
        assert!(
            totals.deposited + totals.withdrawn <= totals.volume,
            "{totals:?}"
        );
        let open: Vec<u64> = pendings
            .iter()
            .filter_map(|(id, position)| {
                let record = sim.ledger.pending(*position).unwrap();
                let of_ledger = accounts.contains(
                    &model
                        .transfer(id)
                        .unwrap()
                        .unwrap()
                        .from
                        .as_deref()
                        .unwrap(),
                );
                (of_ledger && matches!(record.state, PendingState::Pending))
                    .then_some(record.amount)
            })
            .collect();
        assert_eq!(totals.pending, open.len() as u64, "{totals:?}");
        assert_eq!(
            totals.pending_amount,
            open.iter().map(|amount| u128::from(*amount)).sum::<u128>(),
            "{totals:?}"
        );
        let page = model
            .ledger_days(ledger, None, None, tally_read::limits::DAILY_PAGE_DAYS_MAX)
            .unwrap()
            .unwrap();
        assert_eq!(page.next, None, "the test spans a few days");
        assert!(page.days.iter().all(|day| day.transfers > 0));
        assert!(page.days.windows(2).all(|pair| pair[0].day < pair[1].day));
        let transfers: u64 = page.days.iter().map(|day| day.transfers).sum();
        let volume: u128 = page.days.iter().map(|day| day.volume).sum();
        assert_eq!((transfers, volume), (totals.transfers, totals.volume));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    #[test]
    fn projected_balances_match_the_ledger(ops in proptest::collection::vec(op(), 0..120)) {
        check_projection(&ops);
    }
}
