//! `tally project` into a real Redis (the `redis-server` the project's scripts install): a
//! group of projector processes under load, killed one after another; crashes at fault points
//! around a commit; a member fenced after its leases lapsed; a rebuild. Every time, the read
//! model in Redis must equal the server's own view (its accounts and history, which replay the
//! log) for every account, with no event skipped or applied twice.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use redis::AsyncCommands;
use serde_json::{json, Value};
use tokio::process::{Child, Command};

use crate::support::{tally_bin, Client, Server};

/// A `redis-server` of the test's own on a free loopback port, killed when dropped.
struct RedisServer {
    _child: Child,
    url: String,
}

impl RedisServer {
    async fn start(dir: &Path) -> RedisServer {
        RedisServer::start_with(dir, None, 0).await
    }

    /// A server that wants `password` (if any), used through database `db`.
    async fn start_with(dir: &Path, password: Option<&str>, db: u32) -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir)
            .args(
                password
                    .map(|password| ["--requirepass", password])
                    .into_iter()
                    .flatten(),
            )
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect(
                "cannot start redis-server: install the Debian package redis-server \
                 (scripts/install-test-deps does)",
            );
        let login = password.map_or(String::new(), |password| format!(":{password}@"));
        let url = format!("redis://{login}127.0.0.1:{port}/{db}");
        let client = redis::Client::open(url.as_str()).unwrap();
        for _ in 0..100 {
            if let Ok(mut connection) = client.get_multiplexed_async_connection().await {
                let pong: redis::RedisResult<String> =
                    redis::cmd("PING").query_async(&mut connection).await;
                if pong.is_ok() {
                    return RedisServer { _child: child, url };
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server did not answer PING on port {port} within 5 s");
    }

    async fn connection(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(self.url.as_str()).unwrap();
        client.get_multiplexed_async_connection().await.unwrap()
    }
}

/// Starts a member of `group` (lease 2 s) writing under `prefix`, with `extra` arguments; its
/// output goes to `log`.
fn projector(
    server: &Server,
    redis: &RedisServer,
    group: &str,
    prefix: &str,
    extra: &[&str],
    log: &Path,
) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(tally_bin())
        .args([
            "project",
            "--store",
            &redis.url,
            "--source",
            &server.url,
            "--token",
            &server.token,
        ])
        .args([
            "--group",
            group,
            "--prefix",
            prefix,
            "--lease",
            "2s",
            "--partitions",
            "16",
        ])
        .args(extra)
        .env("TALLY_LOG", "info")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start tally project")
}

const LEDGERS: usize = 6;
const ACCOUNTS_PER_LEDGER: usize = 8;

fn account(ledger: usize, index: usize) -> String {
    format!("acct-{ledger}-{index}")
}

async fn open_accounts(client: &Client) {
    for ledger in 0..LEDGERS {
        for index in 0..ACCOUNTS_PER_LEDGER {
            let id = account(ledger, index);
            let answer = client
                .post_settled(
                    "/v1/accounts",
                    &json!({"id": id, "ledger": format!("L{ledger}")}),
                )
                .await
                .unwrap();
            assert_eq!(answer.status, 201, "{}", answer.text);
            let answer = client
                .post_settled(
                    "/v1/deposits",
                    &json!({"id": format!("fund-{id}"), "account": id, "amount": 1_000_000}),
                )
                .await
                .unwrap();
            assert!(answer.status < 300, "{}", answer.text);
        }
    }
}

/// Sends rounds of mixed traffic until `stop`: a batch of transfers (some refused for lack of
/// funds, some pending with a 1 s timeout that may expire), posts and voids of earlier pending
/// transfers, withdrawals.
async fn load(client: Client, seed: u64, stop: tokio::sync::watch::Receiver<bool>) -> u64 {
    let mut random = rand::rngs::StdRng::seed_from_u64(seed);
    let mut round = 0u64;
    let mut pendings = Vec::new();
    while !*stop.borrow() {
        round += 1;
        let mut transfers = Vec::new();
        for item in 0..50 {
            let ledger = random.random_range(0..LEDGERS);
            let from = random.random_range(0..ACCOUNTS_PER_LEDGER);
            let to = (from + random.random_range(1..ACCOUNTS_PER_LEDGER)) % ACCOUNTS_PER_LEDGER;
            let id = format!("s{seed}-r{round}-{item}");
            let amount = random.random_range(1..300_000u64);
            let mut transfer = json!({"id": id, "from": account(ledger, from), "to": account(ledger, to), "amount": amount});
            if random.random_bool(0.2) {
                transfer["pending"] = json!(true);
                transfer["timeout_s"] = json!(1);
                pendings.push(id);
            }
            transfers.push(transfer);
        }
        if let Ok(answer) = client
            .post_settled("/v1/transfers/batch", &json!({"transfers": transfers}))
            .await
        {
            assert!(
                answer.status == 200 || answer.status == 503,
                "{}",
                answer.text
            );
        }
        for pending in pendings.drain(..).take(6) {
            let (action, body) = if random.random_bool(0.5) {
                (
                    "post",
                    json!({"id": format!("{pending}-post"), "amount": 1}),
                )
            } else {
                ("void", json!({"id": format!("{pending}-void")}))
            };
            // Refused when it expired first or was refused itself: both leave events.
            let _ = client
                .post_settled(&format!("/v1/transfers/{pending}/{action}"), &body)
                .await;
        }
        let ledger = random.random_range(0..LEDGERS);
        let body =
            json!({"id": format!("s{seed}-w{round}"), "account": account(ledger, 0), "amount": 3});
        let _ = client.post_settled("/v1/withdrawals", &body).await;
    }
    round
}

/// The feed's end once the server's read model holds everything acknowledged.
async fn feed_end(client: &Client) -> u64 {
    let answer = client
        .get_settled(&format!("/v1/events?after={}", u64::MAX - 1))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text);
    answer.body["end"].as_u64().unwrap()
}

/// Waits until every partition of `group` under `prefix` reached `end`; on a timeout, fails
/// with the members' logs.
async fn wait_caught_up(
    redis: &RedisServer,
    prefix: &str,
    group: &str,
    end: u64,
    within: Duration,
    logs: &[&Path],
) {
    let mut connection = redis.connection().await;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let mut positions = Vec::new();
        for partition in 0..16 {
            let key = format!("{prefix}group:{group}:partition:{partition}");
            let position: Option<u64> = connection.hget(&key, "position").await.unwrap();
            positions.push(position.unwrap_or(0));
        }
        if positions.iter().all(|position| *position >= end) {
            assert!(
                positions.iter().all(|position| *position == end),
                "{positions:?} beyond the end {end}"
            );
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            let logs: Vec<String> = logs.iter().map(|log| log_of(log)).collect();
            panic!(
                "the group did not reach position {end} within {within:?}: {positions:?}\n{}",
                logs.join("\n----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks every account in Redis under `prefix` against the server: the account's figures and
/// its whole history, entry by entry.
async fn assert_matches_server(redis: &RedisServer, prefix: &str, client: &Client) {
    let mut connection = redis.connection().await;
    for ledger in 0..LEDGERS {
        let mut balances = 0i128;
        let mut pending = 0u128;
        for index in 0..ACCOUNTS_PER_LEDGER {
            let id = account(ledger, index);
            let answer = client
                .get_settled(&format!("/v1/accounts/{id}"))
                .await
                .unwrap();
            assert_eq!(answer.status, 200, "{}", answer.text);
            let server = &answer.body;
            let row: HashMap<String, String> = connection
                .hgetall(format!("{prefix}account:{id}"))
                .await
                .unwrap();
            for field in [
                "balance",
                "debits",
                "credits",
                "debits_pending",
                "credits_pending",
                "version",
            ] {
                assert_eq!(
                    row.get(field).map(String::as_str),
                    Some(server[field].to_string().as_str()),
                    "{field} of {id}: redis {row:?}, server {server}"
                );
            }
            assert_eq!(row["ledger"], format!("L{ledger}"));
            balances += row["balance"].parse::<i128>().unwrap();
            pending += row["debits_pending"].parse::<u128>().unwrap();
            let mut expected = Vec::new();
            let mut after = None;
            loop {
                let query = after.map_or(String::new(), |after: u64| format!("&after={after}"));
                let page = client
                    .get_settled(&format!("/v1/accounts/{id}/history?limit=1000{query}"))
                    .await
                    .unwrap();
                assert_eq!(page.status, 200, "{}", page.text);
                let entries = page.body["entries"].as_array().unwrap().clone();
                expected.extend(entries);
                match page.body["next"].as_u64() {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            let stored = history(&mut connection, &format!("{prefix}history:{id}")).await;
            let stored: Vec<Value> = stored
                .iter()
                .map(|entry| serde_json::from_str(entry).unwrap())
                .collect();
            assert_eq!(
                stored.len(),
                expected.len(),
                "history of {id}: redis has {} entries, the server {}",
                stored.len(),
                expected.len()
            );
            for (stored, expected) in stored.iter().zip(&expected) {
                assert_eq!(stored, expected, "history of {id}");
            }
        }
        let totals: HashMap<String, String> = connection
            .hgetall(format!("{prefix}ledger:L{ledger}"))
            .await
            .unwrap();
        let figure = |name: &str| totals[name].parse::<i128>().unwrap();
        assert_eq!(figure("accounts"), ACCOUNTS_PER_LEDGER as i128);
        assert_eq!(
            balances,
            figure("deposited") - figure("withdrawn"),
            "ledger L{ledger}: {totals:?}"
        );
        assert_eq!(
            pending as i128,
            figure("pending_amount"),
            "ledger L{ledger}: {totals:?}"
        );
    }
}

/// An account's history list: the entries' JSON, in order.
async fn history(connection: &mut redis::aio::MultiplexedConnection, key: &str) -> Vec<String> {
    connection.lrange(key, 0, -1).await.unwrap()
}

/// Every key under `prefix` but the group's, with its content.
async fn dump(redis: &RedisServer, prefix: &str) -> BTreeMap<String, Value> {
    let mut connection = redis.connection().await;
    let keys: Vec<String> = connection.keys(format!("{prefix}*")).await.unwrap();
    let mut dump = BTreeMap::new();
    for key in keys {
        let name = key.strip_prefix(prefix).unwrap().to_owned();
        if name.starts_with("group:") {
            continue;
        }
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .unwrap();
        let value = match kind.as_str() {
            "hash" => json!(connection
                .hgetall::<_, BTreeMap<String, String>>(&key)
                .await
                .unwrap()),
            "zset" => json!(connection
                .zrange_withscores::<_, Vec<(String, f64)>>(&key, 0, -1)
                .await
                .unwrap()),
            "list" => json!(history(&mut connection, &key).await),
            other => panic!("{key} is a {other}"),
        };
        dump.insert(name, value);
    }
    dump
}

fn signal(child: &Child, signal: libc::c_int) {
    let pid = child.id().expect("running") as libc::pid_t;
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_projectors_survives_its_members_being_killed_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path()).await;
    let server = Server::start(&dir.path().join("data")).await;
    let client = server.client();
    open_accounts(&client).await;
    let logs: Vec<_> = (0..3)
        .map(|member| dir.path().join(format!("member-{member}.log")))
        .collect();
    let mut members: Vec<Child> = logs
        .iter()
        .map(|log| projector(&server, &redis, "g", "tally:", &[], log))
        .collect();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let loads: Vec<_> = (0..2)
        .map(|seed| tokio::spawn(load(client.clone(), seed, stopped.clone())))
        .collect();

    tokio::time::sleep(Duration::from_secs(4)).await;
    signal(&members[0], libc::SIGKILL);
    tokio::time::sleep(Duration::from_secs(5)).await;
    signal(&members[1], libc::SIGKILL);
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.send(true).unwrap();
    let mut rounds = 0;
    for load in loads {
        rounds += load.await.unwrap();
    }
    assert!(rounds > 20, "the load ran only {rounds} rounds");

    // Pending transfers left open expire within their 1 s timeout: their expiries are events too.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let end = feed_end(&client).await;
    let paths: Vec<&Path> = logs.iter().map(|log| log.as_path()).collect();
    wait_caught_up(&redis, "tally:", "g", end, Duration::from_secs(60), &paths).await;
    assert!(
        members[2].try_wait().unwrap().is_none(),
        "the last member died:\n{}",
        log_of(&logs[2])
    );
    assert_matches_server(&redis, "tally:", &client).await;
    let took = log_of(&logs[2]).matches("took partition").count();
    assert!(
        took >= 16,
        "the survivor took {took} partitions, not all 16:\n{}",
        log_of(&logs[2])
    );

    // A rebuild from position zero gives exactly the rows the group wrote live.
    let rebuild = Command::new(tally_bin())
        .args([
            "project",
            "--rebuild",
            "--store",
            &redis.url,
            "--source",
            &server.url,
            "--token",
            &server.token,
        ])
        .args(["--prefix", "rebuilt:"])
        .output()
        .await
        .unwrap();
    assert!(
        rebuild.status.success(),
        "{}",
        String::from_utf8_lossy(&rebuild.stderr)
    );
    let live = dump(&redis, "tally:").await;
    assert_eq!(dump(&redis, "rebuilt:").await, live);
    assert!(
        live.len() > LEDGERS * ACCOUNTS_PER_LEDGER * 2,
        "{} keys",
        live.len()
    );
    members[2].kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projector_crashed_around_a_commit_resumes_exactly_and_a_stalled_one_is_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path()).await;
    let server = Server::start(&dir.path().join("data")).await;
    let client = server.client();
    open_accounts(&client).await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(load(client.clone(), 7, stopped));
    let log = dir.path().join("projector.log");
    // Small pages make many commits. Crash after Redis acknowledged a commit (its events must
    // not count twice), then before one is sent (its events must not be lost).
    for fault in ["after-commit:3", "before-commit:2", "after-commit:1"] {
        let mut member = projector(
            &server,
            &redis,
            "g",
            "tally:",
            &["--page-events", "20", "--fault-point", fault],
            &log,
        );
        let status = tokio::time::timeout(Duration::from_secs(30), member.wait())
            .await
            .expect("the fault point fires")
            .unwrap();
        assert!(!status.success(), "{fault}: {status}");
        assert!(
            log_of(&log).contains(&format!("fault point {fault} reached")),
            "{}",
            log_of(&log)
        );
    }
    // Two members; one stalls before a commit for twice its lease, as a paused process would.
    // The other takes its partitions meanwhile, so its late commit must be refused.
    let stalled_log = dir.path().join("stalled.log");
    let mut stalled = projector(
        &server,
        &redis,
        "g",
        "tally:",
        &[
            "--page-events",
            "20",
            "--fault-point",
            "stall-before-commit:2",
        ],
        &stalled_log,
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut healthy = projector(
        &server,
        &redis,
        "g",
        "tally:",
        &["--page-events", "20"],
        &log,
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !log_of(&stalled_log).contains("lost the lease") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled member was not fenced:\n{}",
            log_of(&stalled_log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.send(true).unwrap();
    load.await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let end = feed_end(&client).await;
    wait_caught_up(
        &redis,
        "tally:",
        "g",
        end,
        Duration::from_secs(60),
        &[&log, &stalled_log],
    )
    .await;
    assert_matches_server(&redis, "tally:", &client).await;
    for member in [&mut stalled, &mut healthy] {
        assert!(member.try_wait().unwrap().is_none(), "a member died");
        member.kill().await.unwrap();
    }
}

/// A key under the prefix that Redis cannot write as the layout says (here an account's
/// history that is a stream, as projectors before 2026-12-02 wrote it) makes Redis refuse part
/// of a commit: the projector stops, names what Redis said, and asks for a rebuild, rather than
/// go on past a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projector_stops_when_redis_refuses_part_of_a_commit() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path()).await;
    let server = Server::start(&dir.path().join("data")).await;
    let client = server.client();
    open_accounts(&client).await;
    let mut connection = redis.connection().await;
    let history = format!("tally:history:{}", account(0, 0));
    let _: String = redis::cmd("XADD")
        .arg(&history)
        .arg("1-0")
        .arg("entry")
        .arg("{}")
        .query_async(&mut connection)
        .await
        .unwrap();
    let log = dir.path().join("projector.log");
    let mut member = projector(&server, &redis, "g", "tally:", &[], &log);
    let status = tokio::time::timeout(Duration::from_secs(30), member.wait())
        .await
        .expect("the projector stops")
        .unwrap();
    assert!(!status.success(), "{status}");
    let text = log_of(&log);
    assert!(text.contains("WRONGTYPE"), "{text}");
    assert!(text.contains("tally project --rebuild"), "{text}");
    let length: u64 = redis::cmd("XLEN")
        .arg(&history)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(length, 1, "the old history is left as it was");
}

/// A Redis that wants a password, used through another database than 0: the projector's
/// connections (its commits' own included) log in and select it, and the read model lands there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projector_logs_in_and_writes_to_the_database_its_url_names() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start_with(dir.path(), Some("s3cret"), 3).await;
    let server = Server::start(&dir.path().join("data")).await;
    let client = server.client();
    open_accounts(&client).await;
    let log = dir.path().join("projector.log");
    let _member = projector(&server, &redis, "g", "tally:", &[], &log);
    let end = feed_end(&client).await;
    wait_caught_up(&redis, "tally:", "g", end, Duration::from_secs(30), &[&log]).await;
    assert_matches_server(&redis, "tally:", &client).await;
    let database_0 = redis.url.replace("/3", "/0");
    let mut connection = redis::Client::open(database_0.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: u64 = redis::cmd("DBSIZE")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(keys, 0, "nothing is written to database 0");
}
