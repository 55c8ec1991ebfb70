//! The crash loop shared by the crash test (`crash.rs`) and the soak
//! (`examples/soak.rs`, run by `scripts/soak`): SIGKILL `tally serve` under
//! concurrent load, run `tally verify`, restart it on the same data
//! directory, and check that nothing acknowledged was lost and nothing was
//! applied twice.
//!
//! The client keeps its own model of every transfer it sent. A transfer is
//! applied when the server acknowledged it (201/200, batch outcome `created` or
//! `duplicate`), or when it was in flight at the crash and the restarted
//! server has it. Every balance must equal the deposits plus the applied
//! transfers computed client-side, which proves that none was lost or applied
//! twice. Wrong data goes into [`Findings`], so that the soak can count it;
//! an answer no correct server could give (a wrong status, a malformed body)
//! panics.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::support::{verify_data_dir, Answer, Client, Server};

const LEDGER: &str = "CRASH";
/// Accounts in the test ledger; few, so transfers contend for the same rows.
const ACCOUNT_COUNT: usize = 20;
/// Accounts funded by a deposit; the others start empty, so some transfers
/// are rejected for insufficient funds.
const FUNDED_COUNT: usize = 12;
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
/// Transfers looked up per intermediate check besides those not looked up
/// yet; the final check looks up every one.
const LOOKUP_SAMPLE_MAX: usize = 3_000;
/// Tasks used for the read-back checks.
const CHECK_TASKS: usize = 8;
/// How long balances may take to reflect applied transfers (read model lag).
const BALANCE_SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the checks found wrong. Keyed by transfer id (or account), with the
/// first finding about it, so that a transfer lost for good counts once
/// however often later checks miss it.
#[derive(Debug, Default)]
pub struct Findings {
    /// Applied transfers (acknowledged, or found after a crash) that are
    /// missing or no longer as sent.
    pub lost: BTreeMap<String, String>,
    /// Applied transfers found or answered at a second log position.
    pub duplicated: BTreeMap<String, String>,
    /// `tally verify` failures on a data directory, one per run.
    pub verify_failures: Vec<String>,
    /// The rest: balances that differ from deposits plus applied transfers,
    /// absent transfers that appeared, rejected ones applied when re-sent.
    pub diverged: BTreeMap<String, String>,
}

impl Findings {
    fn lost(&mut self, id: &str, what: String) {
        self.lost.entry(id.to_owned()).or_insert(what);
    }

    fn duplicated(&mut self, id: &str, what: String) {
        self.duplicated.entry(id.to_owned()).or_insert(what);
    }

    fn diverged(&mut self, key: &str, what: String) {
        self.diverged.entry(key.to_owned()).or_insert(what);
    }

    pub fn is_empty(&self) -> bool {
        self.lost.is_empty()
            && self.duplicated.is_empty()
            && self.verify_failures.is_empty()
            && self.diverged.is_empty()
    }
}

impl fmt::Display for Findings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kinds = [
            ("lost", self.lost.values().collect::<Vec<_>>()),
            ("duplicated", self.duplicated.values().collect()),
            ("verify failure", self.verify_failures.iter().collect()),
            ("diverged", self.diverged.values().collect()),
        ];
        for (kind, lines) in kinds {
            for line in lines {
                writeln!(f, "{kind}: {line}")?;
            }
        }
        Ok(())
    }
}

/// What one crash loop did and found.
#[derive(Debug)]
pub struct CrashLoop {
    /// SIGKILL/restart rounds run.
    pub rounds: u32,
    /// Transfers sent.
    pub transfers: usize,
    /// Transfers the server answered as applied.
    pub acknowledged: usize,
    /// Transfers in flight at a SIGKILL (their fate settled after the restart).
    pub in_flight: usize,
    /// Transfers in flight at a SIGKILL and missing after the restart (allowed:
    /// never acknowledged).
    pub absent: usize,
    pub findings: Findings,
}

/// Runs a crash loop on a fresh data directory: sets up accounts, then runs
/// `rounds` rounds (fewer once `deadline` passed, but at least one) of load →
/// SIGKILL at a random point → `tally verify` → restart → settle the requests
/// in flight at the kill → check, then checks every transfer, stops the server
/// with SIGTERM, verifies again and checks after restarting. Random choices
/// come from `seed` (the kill moment still depends on timing). The data
/// directory is deleted unless something was found.
pub async fn crash_loop(seed: u64, rounds: u32, deadline: Option<Instant>) -> CrashLoop {
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::Builder::new()
        .prefix("tally-crash-")
        .tempdir()
        .expect("temp dir");

    let mut server = Server::start(dir.path()).await;
    let model = Arc::new(Mutex::new(Model::new(&mut rng)));
    setup_accounts(&server.client(), &model).await;

    let mut rounds_run = 0;
    let mut in_flight = 0;
    while rounds_run < rounds && (rounds_run == 0 || deadline.is_none_or(|d| Instant::now() < d)) {
        let round = rounds_run;
        let when = format!("before the load of round {round}");
        check_state(&server.client(), &model, &mut rng, Lookups::New, &when).await;
        let tasks = rng.random_range(CLIENT_TASKS_MIN..=CLIENT_TASKS_MAX);
        let kill_after = rng.random_range(
            KILL_AFTER_REQUESTS_MIN * tasks as u64..=REQUESTS_PER_TASK_MAX * tasks as u64 * 9 / 10,
        );
        let killed = load_then_kill(server, &model, seed, round, tasks, kill_after).await;
        let round_in_flight: usize = model
            .lock()
            .unwrap()
            .in_flight
            .iter()
            .map(|request| request.ids.len())
            .sum();
        in_flight += round_in_flight;
        eprintln!(
            "round {round}: {tasks} tasks, SIGKILL after {} of {kill_after} requests answered ({:?}); {} answered in all, {round_in_flight} transfers in flight",
            killed.answered_at_kill, killed.elapsed, killed.answered,
        );
        verify(
            &model,
            dir.path(),
            &format!("on the data directory left by SIGKILL in round {round}"),
        );
        server = Server::start(dir.path()).await;
        resolve_in_flight(&server.client(), &model, &mut rng).await;
        rounds_run += 1;
    }
    check_state(
        &server.client(),
        &model,
        &mut rng,
        Lookups::All,
        "after the last restart",
    )
    .await;

    server.stop().await;
    verify(&model, dir.path(), "after a SIGTERM shutdown");
    let server = Server::start(dir.path()).await;
    let when = "after restarting from a SIGTERM shutdown";
    check_state(&server.client(), &model, &mut rng, Lookups::New, when).await;
    server.stop().await;

    let Ok(model) = Arc::try_unwrap(model) else {
        panic!("expected the client and check tasks to have ended");
    };
    let model = model.into_inner().unwrap();
    if !model.findings.is_empty() {
        eprintln!(
            "data directory kept for inspection: {}",
            dir.keep().display()
        );
    }
    let count =
        |keep: fn(&TransferRecord) -> bool| model.transfers.values().filter(|r| keep(r)).count();
    CrashLoop {
        rounds: rounds_run,
        transfers: model.transfers.len(),
        acknowledged: count(|record| record.acknowledged),
        in_flight,
        absent: count(|record| record.fate == Fate::Absent),
        findings: model.findings,
    }
}

/// Runs `tally verify` on `data_dir` and records a failure.
fn verify(model: &Mutex<Model>, data_dir: &std::path::Path, when: &str) {
    if let Err(failure) = verify_data_dir(data_dir) {
        model
            .lock()
            .unwrap()
            .findings
            .verify_failures
            .push(format!("{when}: {failure}"));
    }
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
    /// The server answered that it applied it (not only found it after a crash).
    acknowledged: bool,
    /// A check looked it up since its fate was settled.
    looked_up: bool,
}

struct Model {
    accounts: Vec<String>,
    deposits: Vec<u64>,
    /// Ordered so that a seed replays the same checks.
    transfers: BTreeMap<String, TransferRecord>,
    /// Requests without an answer when the server died.
    in_flight: Vec<Arc<Request>>,
    /// What the checks found wrong so far.
    findings: Findings,
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
            findings: Findings::default(),
        }
    }

    /// Deposits plus applied transfers per account. Signed: a server that
    /// lost transfers lets the client overdraw accounts by the model's count,
    /// which the balance check then reports.
    fn expected_balances(&self) -> Vec<i128> {
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
    }

    /// Records the server's definite answer to `request`.
    fn record_answer(&mut self, request: &Request, answer: &Answer) {
        let fates = fates_of(request, answer);
        let created = created_flags(request, answer);
        for ((id, fate), created) in request.ids.iter().zip(fates).zip(created) {
            let record = self
                .transfers
                .get_mut(id)
                .expect("sent transfers are in the model");
            match (&record.fate, &fate) {
                (Fate::Unknown, _) => {
                    record.acknowledged = matches!(fate, Fate::Applied { .. });
                    record.fate = fate;
                }
                (&Fate::Applied { position }, &Fate::Applied { position: again }) => {
                    if created {
                        // The server did not know it any more: it lost it, and
                        // applied it afresh now, where later checks expect it.
                        self.findings.lost(id, format!(
                            "transfer {id} applied at {position} was created again at {again} when sent again"
                        ));
                        record.fate = fate;
                    } else if position != again {
                        // Answered as applied at a second position: applied twice.
                        self.findings.duplicated(id, format!(
                            "transfer {id} answered position {again} when sent again, first {position}"
                        ));
                    }
                }
                (Fate::Applied { position }, after) => self.findings.lost(
                    id,
                    format!(
                        "transfer {id} applied at {position} answered {after:?} when sent again"
                    ),
                ),
                (before, after) => self.findings.diverged(
                    id,
                    format!("transfer {id} was {before:?} and answered {after:?} when sent again"),
                ),
            }
        }
    }
}

/// For each transfer of `request`, whether the answer says it was created
/// now (201, batch outcome `created`) rather than found applied already.
fn created_flags(request: &Request, answer: &Answer) -> Vec<bool> {
    if !request.is_batch() {
        return vec![answer.status == 201];
    }
    let results = answer.body["results"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    results
        .iter()
        .map(|result| result["outcome"] == "created")
        .collect()
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
            // A client retry of the same ids: the answer must be the first
            // one, which record_answer checks.
            match client.post_settled(request.path, &request.body).await {
                Ok(again) => model.lock().unwrap().record_answer(&request, &again),
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
            acknowledged: false,
            looked_up: false,
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
            model.lock().unwrap().record_answer(&request, &answer);
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
            let mismatch = match fate {
                Fate::Absent => None,
                _ => transfer_mismatch(id, record, &answer.body),
            };
            record.fate = fate;
            if let Some(mismatch) = mismatch {
                model.findings.diverged(id, mismatch);
            }
        }
    }
}

/// How the server's copy of transfer `id` differs from what was sent, if it does.
fn transfer_mismatch(id: &str, record: &TransferRecord, body: &Value) -> Option<String> {
    let expected = json!({"id": id, "amount": record.amount, "status": "posted"});
    ["id", "amount", "status"]
        .into_iter()
        .find(|key| body[key] != expected[key])
        .map(|key| {
            format!(
                "transfer {id} should have {key} {}, found {body}",
                expected[key]
            )
        })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Lookups {
    /// Every transfer not looked up since its fate was settled (so each one
    /// is looked up after the crash that follows it) and a random sample of
    /// the rest.
    New,
    /// Every applied or absent transfer.
    All,
}

/// Checks the server against the model: applied transfers are there once at
/// their position, absent ones are still absent, a sample of applied requests
/// answers 200 with the first answer, and balances match. What differs goes
/// into the model's findings.
async fn check_state(
    client: &Client,
    model: &Arc<Mutex<Model>>,
    rng: &mut StdRng,
    lookups: Lookups,
    when: &str,
) {
    let lookup_all = lookups == Lookups::All;
    let (lookups, reposts) = {
        let mut model = model.lock().unwrap();
        assert!(
            model.in_flight.is_empty(),
            "expected every in-flight request to be resolved {when}"
        );
        let candidates = model
            .transfers
            .values()
            .filter(|record| matches!(record.fate, Fate::Applied { .. } | Fate::Absent))
            .count();
        let sample_probability = (LOOKUP_SAMPLE_MAX as f64 / candidates.max(1) as f64).min(1.0);
        let lookups: Vec<(String, Fate)> = model
            .transfers
            .iter_mut()
            .filter(|(_, record)| matches!(record.fate, Fate::Applied { .. } | Fate::Absent))
            .filter(|(_, record)| {
                lookup_all || !record.looked_up || rng.random_bool(sample_probability)
            })
            .map(|(id, record)| {
                record.looked_up = true;
                (id.clone(), record.fate.clone())
            })
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
        // record_answer checks that it is the first answer again.
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
                let mut model = model.lock().unwrap();
                match (fate, answer.status) {
                    (Fate::Applied { .. }, 404) => model
                        .findings
                        .lost(id, format!("applied transfer {id} is missing {when}")),
                    (Fate::Applied { position }, 200) => {
                        let found = position_of(&answer.body);
                        if found != *position {
                            // The id is unique in the log, so another position
                            // means the transfer was applied again.
                            model.findings.duplicated(
                                id,
                                format!("transfer {id} applied at {position} is at {found} {when}"),
                            );
                        } else if let Some(mismatch) =
                            transfer_mismatch(id, &model.transfers[id], &answer.body)
                        {
                            // Not as applied: the applied transfer is gone.
                            model.findings.lost(id, format!("{mismatch} {when}"));
                        }
                    }
                    (Fate::Absent, 404) => {}
                    (Fate::Absent, 200) => model.findings.diverged(
                        id,
                        format!(
                            "transfer {id}, absent after a crash and never re-sent, appeared {when}: {}",
                            answer.body
                        ),
                    ),
                    (Fate::Applied { .. } | Fate::Absent, _) => panic!(
                        "expected 200 or 404 for GET /v1/transfers/{id} {when}, found {answer:?}"
                    ),
                    (Fate::Unknown | Fate::Rejected, _) => {
                        unreachable!("only applied and absent transfers are looked up")
                    }
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
            model
                .deposits
                .iter()
                .map(|&amount| i128::from(amount))
                .sum::<i128>(),
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
            found.push(i128::from(balance));
        }
        if found == expected {
            return;
        }
        if Instant::now() >= deadline {
            let mut model = model.lock().unwrap();
            for (account, (expected, found)) in accounts.iter().zip(expected.iter().zip(&found)) {
                if expected != found {
                    model.findings.diverged(
                        account,
                        format!("balance of {account} is {found} {when}, deposits and applied transfers make {expected}"),
                    );
                }
            }
            let total: i128 = found.iter().sum();
            if total != deposits_total {
                model.findings.diverged(
                    "the sum of balances",
                    format!("balances sum to {total} {when}, deposits to {deposits_total}"),
                );
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
