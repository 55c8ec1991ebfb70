//! Crash safety of the real process: SIGKILL `tally serve` under concurrent
//! load, restart it on the same data directory, and check that nothing
//! acknowledged was lost and nothing was applied twice.
//!
//! The client keeps its own model of every transfer it sent. A transfer is
//! applied when the server acknowledged it (201/200, batch outcome `created` or
//! `duplicate`), or when it was in flight at the crash and the restarted
//! server has it. Every balance must equal the deposits plus the applied
//! transfers computed client-side, which proves that none was lost or applied
//! twice. Set `TALLY_CRASH_SEED` to replay a run's random choices (the kill
//! moment still depends on timing).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::support::{assert_verify_ok, Answer, Client, Server};

const LEDGER: &str = "CRASH";
/// Accounts in the test ledger; few, so transfers contend for the same rows.
const ACCOUNT_COUNT: usize = 20;
/// Accounts funded by a deposit; the others start empty, so some transfers
/// are rejected for insufficient funds.
const FUNDED_COUNT: usize = 12;
/// Kill/restart rounds on one data directory.
const ROUNDS: u32 = 4;
/// Concurrent client tasks during the load, chosen per round.
const CLIENT_TASKS_MIN: usize = 8;
const CLIENT_TASKS_MAX: usize = 16;
/// Requests per client task per round; bounds the data the checks read back,
/// whatever the server's speed.
const REQUESTS_PER_TASK_MAX: u64 = 400;
/// The SIGKILL lands once this many requests of the round were answered (a
/// random count, so the moment is random within the load whatever the
/// server's speed) or after this long, whichever comes first.
const KILL_AFTER_REQUESTS_MIN: u64 = 10;
const KILL_DELAY_MAX: Duration = Duration::from_secs(3);
/// Transfers per batch request.
const BATCH_TRANSFERS_MAX: usize = 12;
/// Fully applied requests re-posted per check to confirm they answer 200
/// with the first answer.
const REPOST_SAMPLE_MAX: usize = 200;
/// Transfers looked up per intermediate check besides those settled after a
/// crash; the final check looks up every one.
const LOOKUP_SAMPLE_MAX: usize = 3_000;
/// Tasks used for the read-back checks.
const CHECK_TASKS: usize = 8;
/// How long balances may take to reflect applied transfers (read model lag).
const BALANCE_SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_under_load_loses_nothing_acknowledged_and_applies_nothing_twice() {
    let seed = match std::env::var("TALLY_CRASH_SEED") {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("TALLY_CRASH_SEED must be a u64, found {text:?}")),
        Err(_) => rand::random::<u64>(),
    };
    eprintln!("crash test seed: {seed} (rerun with TALLY_CRASH_SEED={seed})");
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::Builder::new()
        .prefix("tally-crash-")
        .tempdir()
        .expect("temp dir");

    let mut server = Server::start(dir.path()).await;
    let model = Arc::new(Mutex::new(Model::new(&mut rng)));
    setup_accounts(&server.client(), &model).await;

    for round in 0..ROUNDS {
        let when = format!("before the load of round {round}");
        check_state(&server.client(), &model, &mut rng, Lookups::Sample, &when).await;
        let tasks = rng.random_range(CLIENT_TASKS_MIN..=CLIENT_TASKS_MAX);
        let kill_after = rng.random_range(
            KILL_AFTER_REQUESTS_MIN * tasks as u64..=REQUESTS_PER_TASK_MAX * tasks as u64 * 9 / 10,
        );
        let killed = load_then_kill(server, &model, seed, round, tasks, kill_after).await;
        eprintln!(
            "round {round}: {tasks} tasks, SIGKILL after {} of {kill_after} requests answered ({:?}); {} answered in all, {} in flight",
            killed.answered_at_kill,
            killed.elapsed,
            killed.answered,
            model.lock().unwrap().in_flight.len()
        );
        assert_verify_ok(
            dir.path(),
            &format!("on the data directory left by SIGKILL in round {round}"),
        );
        server = Server::start(dir.path()).await;
        resolve_in_flight(&server.client(), &model, &mut rng).await;
    }
    check_state(
        &server.client(),
        &model,
        &mut rng,
        Lookups::All,
        "after the last restart",
    )
    .await;

    let status = server.terminate().await;
    assert!(
        status.success(),
        "expected tally serve to exit 0 after SIGTERM, found {status}"
    );
    assert_verify_ok(dir.path(), "after a SIGTERM shutdown");
    let server = Server::start(dir.path()).await;
    let when = "after restarting from a SIGTERM shutdown";
    check_state(&server.client(), &model, &mut rng, Lookups::Sample, when).await;
    let status = server.terminate().await;
    assert!(
        status.success(),
        "expected tally serve to exit 0 after SIGTERM, found {status}"
    );

    let model = model.lock().unwrap();
    eprintln!(
        "crash test: {} transfers sent, {} applied, {} rejected, {} absent after crashes, in {:.1} s",
        model.transfers.len(),
        model.transfers.values().filter(|record| matches!(record.fate, Fate::Applied { .. })).count(),
        model.transfers.values().filter(|record| record.fate == Fate::Rejected).count(),
        model.transfers.values().filter(|record| record.fate == Fate::Absent).count(),
        started.elapsed().as_secs_f64()
    );
}

/// One HTTP request as it was sent; re-sent byte for byte when retried.
#[derive(Debug)]
struct Request {
    path: &'static str,
    body: Value,
    /// Transfer ids in request order.
    ids: Vec<String>,
}

impl Request {
    fn is_batch(&self) -> bool {
        self.path == "/v1/transfers/batch"
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Fate {
    /// The request is unanswered (in flight when the server died).
    Unknown,
    /// Applied at this log position: acknowledged, or found after a restart.
    Applied { position: u64 },
    /// Rejected for insufficient funds; never re-sent, so never applied.
    Rejected,
    /// In flight at a crash and missing after the restart; never re-sent.
    Absent,
}

#[derive(Debug)]
struct TransferRecord {
    source: usize,
    target: usize,
    amount: u64,
    fate: Fate,
    request: Arc<Request>,
    /// Its fate was settled after a crash (it was in flight at one).
    settled_after_crash: bool,
}

struct Model {
    accounts: Vec<String>,
    deposits: Vec<u64>,
    /// Ordered so that a seed replays the same checks.
    transfers: BTreeMap<String, TransferRecord>,
    /// Requests without an answer when the server died.
    in_flight: Vec<Arc<Request>>,
}

impl Model {
    fn new(rng: &mut StdRng) -> Model {
        let accounts = (0..ACCOUNT_COUNT)
            .map(|index| format!("crash-{index}"))
            .collect();
        let deposits = (0..ACCOUNT_COUNT)
            .map(|index| {
                if index < FUNDED_COUNT {
                    rng.random_range(2_000..=20_000)
                } else {
                    0
                }
            })
            .collect();
        Model {
            accounts,
            deposits,
            transfers: BTreeMap::new(),
            in_flight: Vec::new(),
        }
    }

    fn expected_balances(&self) -> Vec<u64> {
        let mut balances: Vec<i128> = self
            .deposits
            .iter()
            .map(|&amount| i128::from(amount))
            .collect();
        for record in self.transfers.values() {
            if let Fate::Applied { .. } = record.fate {
                balances[record.source] -= i128::from(record.amount);
                balances[record.target] += i128::from(record.amount);
            }
        }
        balances
            .into_iter()
            .map(|balance| u64::try_from(balance).expect("the model never overdraws an account"))
            .collect()
    }

    /// Records the server's definite answer to `request`.
    fn record_answer(&mut self, request: &Request, answer: &Answer) {
        for (id, fate) in request.ids.iter().zip(fates_of(request, answer)) {
            let record = self
                .transfers
                .get_mut(id)
                .expect("sent transfers are in the model");
            match (&record.fate, &fate) {
                (Fate::Unknown, _) => record.fate = fate,
                (Fate::Applied { position }, Fate::Applied { position: again }) => assert_eq!(
                    position, again,
                    "expected transfer {id} to keep position {position} when sent again, found {again}"
                ),
                (before, after) => panic!("expected transfer {id} to stay {before:?} when sent again, found {after:?}"),
            }
        }
    }
}

/// The fate of each transfer of `request` given the server's answer.
fn fates_of(request: &Request, answer: &Answer) -> Vec<Fate> {
    if !request.is_batch() {
        return vec![single_fate(request, answer)];
    }
    assert_eq!(
        answer.status, 200,
        "expected 200 for POST {} {}, found {answer:?}",
        request.path, request.body
    );
    let results = answer.body["results"].as_array().unwrap_or_else(|| {
        panic!(
            "expected a results array from POST /v1/transfers/batch, found {}",
            answer.body
        )
    });
    assert_eq!(
        results.len(),
        request.ids.len(),
        "expected one batch result per transfer, found {}",
        answer.body
    );
    request
        .ids
        .iter()
        .zip(results)
        .map(|(id, result)| {
            assert_eq!(result["id"], json!(id), "expected batch results in request order, found {result}");
            match result["outcome"].as_str() {
                Some("created" | "duplicate") => Fate::Applied { position: position_of(result) },
                Some("rejected") if result["error"]["code"] == "insufficient_funds" => Fate::Rejected,
                _ => panic!("expected outcome created, duplicate or rejected (insufficient_funds) for {id}, found {result}"),
            }
        })
        .collect()
}

fn single_fate(request: &Request, answer: &Answer) -> Fate {
    match answer.status {
        200 | 201 => {
            assert_eq!(answer.body["id"], json!(request.ids[0]), "expected the transfer back, found {}", answer.body);
            Fate::Applied { position: position_of(&answer.body) }
        }
        422 if answer.body["error"]["code"] == "insufficient_funds" => Fate::Rejected,
        _ => panic!("expected 201, 200 or 422 insufficient_funds for POST /v1/transfers {}, found {answer:?}", request.body),
    }
}

fn position_of(value: &Value) -> u64 {
    value["position"]
        .as_u64()
        .unwrap_or_else(|| panic!("expected an integer position, found {value}"))
}

async fn setup_accounts(client: &Client, model: &Mutex<Model>) {
    let (accounts, deposits) = {
        let model = model.lock().unwrap();
        (model.accounts.clone(), model.deposits.clone())
    };
    for (index, account) in accounts.iter().enumerate() {
        let body = json!({"id": account, "ledger": LEDGER, "allow_overdraft": false});
        let answer = client
            .post_settled("/v1/accounts", &body)
            .await
            .expect("server is up during setup");
        assert_eq!(
            answer.status, 201,
            "expected 201 creating account {account}, found {answer:?}"
        );
        if deposits[index] > 0 {
            let body = json!({"id": format!("deposit-{index}"), "account": account, "amount": deposits[index]});
            let answer = client
                .post_settled("/v1/deposits", &body)
                .await
                .expect("server is up during setup");
            assert_eq!(
                answer.status, 201,
                "expected 201 for deposit {body}, found {answer:?}"
            );
        }
    }
}

struct Killed {
    answered_at_kill: u64,
    answered: u64,
    elapsed: Duration,
}

/// Runs `tasks` client tasks and SIGKILLs the server once `kill_after`
/// requests were answered (or after `KILL_DELAY_MAX`).
async fn load_then_kill(
    server: Server,
    model: &Arc<Mutex<Model>>,
    seed: u64,
    round: u32,
    tasks: usize,
    kill_after: u64,
) -> Killed {
    let answered = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::with_capacity(tasks);
    for task in 0..tasks {
        let rng =
            StdRng::seed_from_u64(seed ^ (u64::from(round) << 40) ^ ((task as u64 + 1) << 20));
        let client = server.client();
        let model = model.clone();
        let answered = answered.clone();
        handles.push(tokio::spawn(client_task(
            client,
            model,
            answered,
            rng,
            format!("r{round}.c{task}"),
        )));
    }
    let started = Instant::now();
    while answered.load(Ordering::SeqCst) < kill_after && started.elapsed() < KILL_DELAY_MAX {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let answered_at_kill = answered.load(Ordering::SeqCst);
    let elapsed = started.elapsed();
    server.kill().await;
    for handle in handles {
        if let Err(error) = handle.await {
            std::panic::resume_unwind(error.into_panic());
        }
    }
    Killed {
        answered_at_kill,
        answered: answered.load(Ordering::SeqCst),
        elapsed,
    }
}

/// Sends single and batch transfers one at a time until a request fails in
/// transport (the server died) or it sent `REQUESTS_PER_TASK_MAX`; retries
/// some acknowledged requests right away and checks that they answer with the
/// first answer.
async fn client_task(
    client: Client,
    model: Arc<Mutex<Model>>,
    answered: Arc<AtomicU64>,
    mut rng: StdRng,
    tag: String,
) {
    let mut sequence = 0u64;
    for _ in 0..REQUESTS_PER_TASK_MAX {
        let request = next_request(&model, &mut rng, &tag, &mut sequence);
        let answer = match client.post_settled(request.path, &request.body).await {
            Ok(answer) => answer,
            Err(_) => {
                model.lock().unwrap().in_flight.push(request);
                return;
            }
        };
        answered.fetch_add(1, Ordering::SeqCst);
        let fates = fates_of(&request, &answer);
        model.lock().unwrap().record_answer(&request, &answer);
        let all_applied = fates
            .iter()
            .all(|fate| matches!(fate, Fate::Applied { .. }));
        if all_applied && rng.random_bool(0.2) {
            // A client retry of the same ids: the answer must be the first one.
            match client.post_settled(request.path, &request.body).await {
                Ok(again) => {
                    if !request.is_batch() {
                        assert_eq!(
                            again.status, 200,
                            "expected 200 for a retried transfer, found {again:?}"
                        );
                    }
                    model.lock().unwrap().record_answer(&request, &again);
                }
                Err(_) => return,
            }
        }
    }
}

/// Builds a single (70%) or batch request of random transfers and enters its
/// transfers into the model as unknown.
fn next_request(
    model: &Mutex<Model>,
    rng: &mut StdRng,
    tag: &str,
    sequence: &mut u64,
) -> Arc<Request> {
    let count = if rng.random_bool(0.7) {
        1
    } else {
        rng.random_range(2..=BATCH_TRANSFERS_MAX)
    };
    let mut model = model.lock().unwrap();
    let mut items = Vec::with_capacity(count);
    let mut records = Vec::with_capacity(count);
    for _ in 0..count {
        *sequence += 1;
        let id = format!("{tag}.t{sequence}");
        let source = rng.random_range(0..ACCOUNT_COUNT);
        let target = (source + rng.random_range(1..ACCOUNT_COUNT)) % ACCOUNT_COUNT;
        let amount = rng.random_range(1..=200u64);
        items.push(json!({"id": id, "from": model.accounts[source], "to": model.accounts[target], "amount": amount}));
        records.push((id, source, target, amount));
    }
    let ids = records.iter().map(|(id, ..)| id.clone()).collect();
    let request = Arc::new(if count == 1 {
        Request {
            path: "/v1/transfers",
            body: items.pop().expect("one item"),
            ids,
        }
    } else {
        Request {
            path: "/v1/transfers/batch",
            body: json!({"transfers": items, "atomic": false}),
            ids,
        }
    });
    for (id, source, target, amount) in records {
        let record = TransferRecord {
            source,
            target,
            amount,
            fate: Fate::Unknown,
            request: request.clone(),
            settled_after_crash: false,
        };
        assert!(
            model.transfers.insert(id.clone(), record).is_none(),
            "expected transfer id {id} to be new"
        );
    }
    request
}

/// After a restart, settles every request that was in flight at the crash:
/// about half are re-sent with the same ids (a client retrying after the
/// outage), the rest are looked up.
async fn resolve_in_flight(client: &Client, model: &Mutex<Model>, rng: &mut StdRng) {
    let in_flight = std::mem::take(&mut model.lock().unwrap().in_flight);
    for request in in_flight {
        if rng.random_bool(0.5) {
            let answer = client
                .post_settled(request.path, &request.body)
                .await
                .unwrap_or_else(|error| {
                    panic!("expected the restarted server to answer, found {error}")
                });
            let mut model = model.lock().unwrap();
            model.record_answer(&request, &answer);
            for id in &request.ids {
                model
                    .transfers
                    .get_mut(id)
                    .expect("sent transfers are in the model")
                    .settled_after_crash = true;
            }
            continue;
        }
        for id in &request.ids {
            let answer = client
                .get_settled(&format!("/v1/transfers/{id}"))
                .await
                .unwrap_or_else(|error| {
                    panic!("expected the restarted server to answer, found {error}")
                });
            let fate = match answer.status {
                200 => Fate::Applied {
                    position: position_of(&answer.body),
                },
                404 => Fate::Absent,
                _ => panic!("expected 200 or 404 for GET /v1/transfers/{id}, found {answer:?}"),
            };
            let mut model = model.lock().unwrap();
            let record = model
                .transfers
                .get_mut(id)
                .expect("sent transfers are in the model");
            assert_eq!(
                record.fate,
                Fate::Unknown,
                "expected in-flight transfer {id} to be unknown"
            );
            if fate != Fate::Absent {
                assert_transfer_matches(id, record, &answer.body);
            }
            record.fate = fate;
            record.settled_after_crash = true;
        }
    }
}

fn assert_transfer_matches(id: &str, record: &TransferRecord, body: &Value) {
    let expected = json!({"id": id, "amount": record.amount, "status": "posted"});
    for key in ["id", "amount", "status"] {
        assert_eq!(
            body[key], expected[key],
            "expected transfer {id} to have {key} {}, found {body}",
            expected[key]
        );
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Lookups {
    /// Every transfer settled after a crash and a random sample of the rest.
    Sample,
    /// Every applied or absent transfer.
    All,
}

/// Checks the server against the model: applied transfers are there once at
/// their position, absent ones are still absent, a sample of applied requests
/// answers 200 with the first answer, and balances match.
async fn check_state(
    client: &Client,
    model: &Arc<Mutex<Model>>,
    rng: &mut StdRng,
    lookups: Lookups,
    when: &str,
) {
    let lookup_all = lookups == Lookups::All;
    let (lookups, reposts) = {
        let model = model.lock().unwrap();
        assert!(
            model.in_flight.is_empty(),
            "expected every in-flight request to be resolved {when}"
        );
        let candidates: Vec<(&String, &TransferRecord)> = model
            .transfers
            .iter()
            .filter(|(_, record)| matches!(record.fate, Fate::Applied { .. } | Fate::Absent))
            .collect();
        let sample_probability = LOOKUP_SAMPLE_MAX as f64 / candidates.len().max(1) as f64;
        let lookups: Vec<(String, Fate)> = candidates
            .into_iter()
            .filter(|(_, record)| {
                lookup_all
                    || record.settled_after_crash
                    || rng.random_bool(sample_probability.min(1.0))
            })
            .map(|(id, record)| (id.clone(), record.fate.clone()))
            .collect();
        // Each request once (through its first transfer), and only when all
        // its transfers are applied: re-sending a rejected or absent one could
        // apply it now.
        let requests: Vec<Arc<Request>> = model
            .transfers
            .iter()
            .filter(|(id, record)| record.request.ids[0] == **id)
            .map(|(_, record)| record.request.clone())
            .filter(|request| {
                request
                    .ids
                    .iter()
                    .all(|id| matches!(model.transfers[id].fate, Fate::Applied { .. }))
            })
            .collect();
        let sample: Vec<Arc<Request>> = (0..REPOST_SAMPLE_MAX.min(requests.len()))
            .map(|_| requests[rng.random_range(0..requests.len())].clone())
            .collect();
        (lookups, sample)
    };

    check_lookups(client, model, lookups, when).await;
    for request in &reposts {
        let answer = client
            .post_settled(request.path, &request.body)
            .await
            .unwrap_or_else(|error| panic!("expected an answer {when}, found {error}"));
        if !request.is_batch() {
            assert_eq!(
                answer.status, 200,
                "expected 200 re-posting {} {when}, found {answer:?}",
                request.body
            );
        }
        model.lock().unwrap().record_answer(request, &answer);
    }
    check_balances(client, model, when).await;
}

/// GETs every applied or absent transfer, from `CHECK_TASKS` tasks.
async fn check_lookups(
    client: &Client,
    model: &Arc<Mutex<Model>>,
    lookups: Vec<(String, Fate)>,
    when: &str,
) {
    let lookups = Arc::new(lookups);
    let mut handles = Vec::with_capacity(CHECK_TASKS);
    for task in 0..CHECK_TASKS {
        let lookups = lookups.clone();
        let client = client.clone();
        let model = model.clone();
        let when = when.to_string();
        handles.push(tokio::spawn(async move {
            for (id, fate) in lookups.iter().skip(task).step_by(CHECK_TASKS) {
                let answer = client
                    .get_settled(&format!("/v1/transfers/{id}"))
                    .await
                    .unwrap_or_else(|error| panic!("expected an answer {when}, found {error}"));
                match fate {
                    Fate::Applied { position } => {
                        assert_eq!(answer.status, 200, "expected applied transfer {id} to exist {when}, found {answer:?}");
                        assert_eq!(
                            position_of(&answer.body),
                            *position,
                            "expected transfer {id} at position {position} {when}, found {}",
                            answer.body
                        );
                        let model = model.lock().unwrap();
                        assert_transfer_matches(id, &model.transfers[id], &answer.body);
                    }
                    Fate::Absent => {
                        assert_eq!(answer.status, 404, "expected transfer {id}, absent after a crash, to stay absent {when}, found {answer:?}")
                    }
                    Fate::Unknown | Fate::Rejected => unreachable!("only applied and absent transfers are looked up"),
                }
            }
        }));
    }
    for handle in handles {
        if let Err(error) = handle.await {
            std::panic::resume_unwind(error.into_panic());
        }
    }
}

/// Compares every balance with the model, allowing the read model a moment
/// to catch up, and checks conservation.
async fn check_balances(client: &Client, model: &Mutex<Model>, when: &str) {
    let (accounts, expected, deposits_total) = {
        let model = model.lock().unwrap();
        (
            model.accounts.clone(),
            model.expected_balances(),
            model.deposits.iter().sum::<u64>(),
        )
    };
    let deadline = Instant::now() + BALANCE_SETTLE_TIMEOUT;
    loop {
        let mut found = Vec::with_capacity(accounts.len());
        for account in &accounts {
            let answer = client
                .get_settled(&format!("/v1/accounts/{account}"))
                .await
                .unwrap_or_else(|error| panic!("expected an answer {when}, found {error}"));
            assert_eq!(
                answer.status, 200,
                "expected account {account} to exist {when}, found {answer:?}"
            );
            let balance = answer.body["balance"].as_u64().unwrap_or_else(|| {
                panic!(
                    "expected an integer balance for {account}, found {}",
                    answer.body
                )
            });
            found.push(balance);
        }
        if found == expected {
            let total: u64 = found.iter().sum();
            assert_eq!(
                total, deposits_total,
                "expected balances to sum to the deposits {when}"
            );
            return;
        }
        if Instant::now() >= deadline {
            let mismatches: Vec<String> = accounts
                .iter()
                .zip(expected.iter().zip(&found))
                .filter(|(_, (expected, found))| expected != found)
                .map(|(account, (expected, found))| {
                    format!("{account}: expected {expected}, found {found}")
                })
                .collect();
            panic!(
                "balances differ from deposits + applied transfers {when} (sum expected {deposits_total}, found {}):\n{}",
                found.iter().sum::<u64>(),
                mismatches.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
