//! `tally bench`: the load generator.
//!
//! It drives the public HTTP API only, like any client would: it creates and
//! funds accounts (not measured), then sends transfers of amount 1 between
//! random distinct accounts from `--concurrency` tasks, each with its own
//! keep-alive connection and one request in flight. It prints a human summary
//! to stderr and exactly one JSON line to stdout, and fails if any transfer
//! failed.
//!
//! Request bodies are written straight into a `String` and responses are parsed
//! into small borrowed structs, so the client stays cheap enough to share two
//! cores with the server it measures.

pub(crate) mod claims;
pub(crate) mod colocation;
pub(crate) mod projection;
mod server;

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use hyper::{Method, StatusCode};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

use self::server::Server;
use tally_project::http::{Connection, Endpoint, Response};

/// Transfers per batch request the server accepts (`POST /v1/transfers/batch`).
const BATCH_TRANSFERS_MAX: u64 = 8192;
/// Setup (account creation and funding) is not measured, so it uses at least
/// this many tasks to get it over with.
const SETUP_TASKS_MIN: usize = 32;
/// Retries per request before it counts as failed: `overloaded` answers and
/// transport errors are retried with the same ids, which is safe because every
/// write is idempotent by id. Overload is expected under load and passes;
/// a transport error usually means the server is gone, so it gives up sooner.
const OVERLOADED_RETRIES_MAX: u32 = 600;
const TRANSPORT_RETRIES_MAX: u32 = 5;
/// Backoff after an `overloaded` answer or a transport error, doubling up to
/// the max; short because the server's queue drains in milliseconds.
const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(1);
const RETRY_BACKOFF_MAX: Duration = Duration::from_millis(100);
/// Error bodies printed in full; the rest are only counted.
const ERRORS_PRINTED_MAX: usize = 5;
/// How often progress is reported on stderr during the timed phase.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

/// Options of `tally bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Base URL of a running server, e.g. http://127.0.0.1:7070. Without it,
    /// bench starts its own `tally serve` on a loopback port and stops it
    /// (SIGTERM) at the end.
    #[arg(long, value_name = "URL")]
    pub target: Option<String>,

    /// Data directory for the server bench starts itself (kept afterwards).
    /// Defaults to a fresh temporary directory that is deleted at the end.
    /// Ignored with --target.
    #[arg(long, value_name = "DIR", conflicts_with = "target")]
    pub data_dir: Option<PathBuf>,

    /// Number of transfers to send in the timed phase.
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    pub transfers: u64,

    /// Number of accounts to create and fund before the timed phase; each
    /// transfer goes between two random distinct ones.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub accounts: u64,

    /// Transfers per request: 1 sends POST /v1/transfers one by one, more
    /// sends POST /v1/transfers/batch (at most 8192).
    #[arg(long, value_name = "N", default_value_t = 8_000)]
    pub batch: u64,

    /// Concurrent client tasks in the timed phase, each with its own
    /// keep-alive HTTP/1.1 connection and one request in flight.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub concurrency: usize,

    /// Ledger code of the bench accounts.
    #[arg(long, value_name = "CODE", default_value = "BENCH")]
    pub ledger: String,

    /// Seed for the random account pairs, for reproducible runs. Ids still
    /// get a random run tag so reruns against one server never collide.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,

    /// Bearer token sent as `Authorization: Bearer <token>` on every request.
    #[arg(
        long,
        env = "TALLY_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,

    /// Start the server without authentication (`tally serve --no-auth`), to measure what
    /// authentication costs. Ignored with --target.
    #[arg(long, conflicts_with = "target")]
    pub no_auth: bool,
}

/// Runs the benchmark and prints its JSON summary line on stdout. Fails if any
/// transfer failed (after printing the summary).
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    validate(&args)?;
    let server = match &args.target {
        Some(_) => None,
        None => Some(Server::start(args.data_dir.as_deref(), args.no_auth).await?),
    };
    let url = match (&args.target, &server) {
        (Some(url), _) => url.clone(),
        (None, Some(server)) => server.url.clone(),
        (None, None) => unreachable!("a server is started when there is no target"),
    };
    // A server bench starts itself wrote its admin token into its data directory.
    let token = match (&args.token, &server) {
        (Some(token), _) => Some(token.clone()),
        (None, Some(server)) => server.admin_token()?,
        (None, None) => None,
    };
    let result = async {
        let endpoint = Endpoint::parse(&url, token.as_deref()).await?;
        bench(&args, endpoint).await
    }
    .await;
    let stopped = match server {
        Some(server) => stop_server(server, args.data_dir.is_some()).await,
        None => Ok(()),
    };
    let report = match (result, stopped) {
        (Ok(report), stopped) => {
            report.print();
            stopped?;
            report
        }
        (Err(error), Ok(())) => return Err(error),
        (Err(error), Err(stop_error)) => {
            eprintln!("bench: also: {stop_error:#}");
            return Err(error);
        }
    };
    if report.failed > 0 {
        bail!("{} of {} transfers failed", report.failed, report.transfers);
    }
    Ok(())
}

/// Stops a server bench started; a server that does not exit cleanly on
/// SIGTERM is an error, because a graceful shutdown must always work.
async fn stop_server(server: Server, keep_data_dir: bool) -> anyhow::Result<()> {
    let data_dir = server.data_dir.clone();
    let status = server.stop().await?;
    if keep_data_dir {
        eprintln!("bench: data directory kept at {}", data_dir.display());
    }
    if !status.success() {
        bail!("tally serve exited with {status} after SIGTERM");
    }
    Ok(())
}

fn validate(args: &BenchArgs) -> anyhow::Result<()> {
    if args.transfers == 0 {
        bail!("--transfers must be at least 1");
    }
    if args.accounts < 2 {
        bail!("--accounts must be at least 2 (transfers go between distinct accounts)");
    }
    if args.batch == 0 || args.batch > BATCH_TRANSFERS_MAX {
        bail!("--batch must be between 1 and {BATCH_TRANSFERS_MAX}");
    }
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    Ok(())
}

/// What the timed phase measured.
struct Report {
    transfers: u64,
    succeeded: u64,
    failed: u64,
    retries: u64,
    seconds: f64,
    /// Sorted ascending.
    latencies_ms: Vec<f64>,
    batch: u64,
    concurrency: usize,
    accounts: u64,
    run: String,
}

impl Report {
    fn print(&self) {
        let rate = self.succeeded as f64 / self.seconds;
        let p50 = percentile(&self.latencies_ms, 0.50);
        let p99 = percentile(&self.latencies_ms, 0.99);
        let max = self.latencies_ms.last().copied().unwrap_or(0.0);
        eprintln!(
            "bench: {} transfers in {:.3} s = {:.0} transfers/s (batch {}, concurrency {})",
            self.transfers, self.seconds, rate, self.batch, self.concurrency
        );
        eprintln!(
            "bench: request latency p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms over {} requests",
            p50,
            p99,
            max,
            self.latencies_ms.len()
        );
        eprintln!(
            "bench: succeeded {}, failed {}, retries {}",
            self.succeeded, self.failed, self.retries
        );
        let line = serde_json::json!({
            "transfers": self.transfers,
            "seconds": round3(self.seconds),
            "transfers_per_sec": rate.round(),
            "p50_ms": round3(p50),
            "p99_ms": round3(p99),
            "batch": self.batch,
            "concurrency": self.concurrency,
            "accounts": self.accounts,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "retries": self.retries,
            "run": self.run,
        });
        println!("{line}");
    }
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// CPU seconds this process has used, user and system.
fn cpu_seconds() -> f64 {
    // SAFETY: `usage` is a valid, writable rusage.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// CPU seconds process `pid` has used, user and system, from `/proc/{pid}/stat`; `None` where
/// it cannot be read (not Linux, or the process is gone).
fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, field 2, may hold spaces; the fields after its `)` are plain.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15, in clock ticks.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_second > 0).then(|| ticks / per_second as f64)
}

/// Nearest-rank percentile of an ascending slice; 0 when empty.
fn percentile(sorted: &[f64], quantile: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (quantile * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn bench(args: &BenchArgs, endpoint: Endpoint) -> anyhow::Result<Report> {
    let run = format!("{:08x}", rand::random::<u32>());
    let ids = Arc::new(Ids::new(&run));
    let shared = Arc::new(Shared::default());
    // Enough that no account can run dry, whatever the random pairs.
    let funding = args.transfers.max(1_000_000_000);

    let started = Instant::now();
    setup_accounts(args, &endpoint, &ids, &shared, funding).await?;
    eprintln!(
        "bench: run {run}: created and funded {} accounts in ledger {} in {:.1} s",
        args.accounts,
        args.ledger,
        started.elapsed().as_secs_f64()
    );
    shared.retries.store(0, Ordering::Relaxed);

    let plan = Plan {
        transfers: args.transfers,
        accounts: args.accounts,
        batch: args.batch,
        seed: args.seed.unwrap_or_else(rand::random),
    };
    let barrier = Arc::new(tokio::sync::Barrier::new(args.concurrency + 1));
    let mut tasks = Vec::with_capacity(args.concurrency);
    for _ in 0..args.concurrency {
        let task = TransferTask {
            connection: Connection::new(endpoint.clone()),
            ids: ids.clone(),
            shared: shared.clone(),
            plan: plan.clone(),
            barrier: barrier.clone(),
            concurrency: args.concurrency,
        };
        tasks.push(tokio::spawn(task.run()));
    }
    barrier.wait().await;
    let started = Instant::now();
    let progress = tokio::spawn(report_progress(shared.clone(), args.transfers, started));
    let mut stats = TaskStats::default();
    for task in tasks {
        stats.merge(task.await.context("bench task panicked")??);
    }
    let seconds = started.elapsed().as_secs_f64();
    progress.abort();
    stats.latencies_ms.sort_unstable_by(f64::total_cmp);
    assert_eq!(stats.succeeded + stats.failed, args.transfers);
    Ok(Report {
        transfers: args.transfers,
        succeeded: stats.succeeded,
        failed: stats.failed,
        retries: shared.retries.load(Ordering::Relaxed),
        seconds,
        latencies_ms: stats.latencies_ms,
        batch: args.batch,
        concurrency: args.concurrency,
        accounts: args.accounts,
        run,
    })
}

async fn report_progress(shared: Arc<Shared>, transfers: u64, started: Instant) {
    let mut interval = tokio::time::interval(PROGRESS_INTERVAL);
    interval.tick().await;
    loop {
        interval.tick().await;
        let done = shared.transfers_done.load(Ordering::Relaxed);
        let seconds = started.elapsed().as_secs_f64();
        eprintln!(
            "bench: {done}/{transfers} transfers after {seconds:.1} s ({:.0}/s)",
            done as f64 / seconds
        );
    }
}

/// State shared by all tasks of one run.
#[derive(Default)]
struct Shared {
    next_request: AtomicU64,
    next_account: AtomicU64,
    transfers_done: AtomicU64,
    retries: AtomicU64,
    errors_printed: AtomicUsize,
}

impl Shared {
    fn report_error(&self, what: &str) {
        let printed = self.errors_printed.fetch_add(1, Ordering::Relaxed);
        if printed < ERRORS_PRINTED_MAX {
            eprintln!("bench: error: {what}");
        } else if printed == ERRORS_PRINTED_MAX {
            eprintln!("bench: further errors are counted but not printed");
        }
    }
}

/// Id formatting: `bench-{run}-{i}` for accounts, `bench-{run}-d{i}` for
/// deposits and `bench-{run}-t{i}` for transfers.
struct Ids {
    prefix: String,
}

impl Ids {
    fn new(run: &str) -> Ids {
        Ids {
            prefix: format!("bench-{run}-"),
        }
    }

    fn push_account(&self, buf: &mut String, index: u64) {
        buf.push_str(&self.prefix);
        push_u64(buf, index);
    }

    fn push_transfer(&self, buf: &mut String, index: u64) {
        buf.push_str(&self.prefix);
        buf.push('t');
        push_u64(buf, index);
    }

    fn push_deposit(&self, buf: &mut String, index: u64) {
        buf.push_str(&self.prefix);
        buf.push('d');
        push_u64(buf, index);
    }
}

/// Appends the decimal digits of `value` without going through `fmt`.
fn push_u64(buf: &mut String, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    // The slice holds only ASCII digits.
    buf.push_str(std::str::from_utf8(&digits[start..]).expect("ASCII digits"));
}

async fn setup_accounts(
    args: &BenchArgs,
    endpoint: &Endpoint,
    ids: &Arc<Ids>,
    shared: &Arc<Shared>,
    funding: u64,
) -> anyhow::Result<()> {
    let ledger_json = serde_json::to_string(&args.ledger)?;
    let task_count = args
        .concurrency
        .max(SETUP_TASKS_MIN)
        .min(args.accounts as usize);
    let mut tasks = Vec::with_capacity(task_count);
    for _ in 0..task_count {
        let mut connection = Connection::new(endpoint.clone());
        let ids = ids.clone();
        let shared = shared.clone();
        let ledger_json = ledger_json.clone();
        let accounts = args.accounts;
        tasks.push(tokio::spawn(async move {
            loop {
                let index = shared.next_account.fetch_add(1, Ordering::Relaxed);
                if index >= accounts {
                    return anyhow::Ok(());
                }
                let mut body = String::with_capacity(128);
                body.push_str(r#"{"id":""#);
                ids.push_account(&mut body, index);
                body.push_str(r#"","ledger":"#);
                body.push_str(&ledger_json);
                body.push_str(r#","allow_overdraft":false}"#);
                expect_created(&mut connection, &shared, "/v1/accounts", body).await?;

                let mut body = String::with_capacity(128);
                body.push_str(r#"{"id":""#);
                ids.push_deposit(&mut body, index);
                body.push_str(r#"","account":""#);
                ids.push_account(&mut body, index);
                body.push_str(r#"","amount":"#);
                push_u64(&mut body, funding);
                body.push('}');
                expect_created(&mut connection, &shared, "/v1/deposits", body).await?;
            }
        }));
    }
    for task in tasks {
        task.await.context("setup task panicked")??;
    }
    Ok(())
}

/// Sends a setup write and insists on 201 (or 200, a repeat of the same).
async fn expect_created(
    connection: &mut Connection,
    shared: &Shared,
    path: &str,
    body: String,
) -> anyhow::Result<()> {
    let body = Bytes::from(body);
    let response = send_with_retry(connection, shared, path, &body).await?;
    if response.status != StatusCode::CREATED && response.status != StatusCode::OK {
        bail!(
            "setup: POST {path} {} answered {}: {}",
            String::from_utf8_lossy(&body),
            response.status,
            String::from_utf8_lossy(&response.body)
        );
    }
    Ok(())
}

/// Sends a POST, retrying the same body after `overloaded` (503) answers and
/// transport errors with a short backoff. Any other answer is returned.
async fn send_with_retry(
    connection: &mut Connection,
    shared: &Shared,
    path: &str,
    body: &Bytes,
) -> anyhow::Result<Response> {
    let mut backoff = RETRY_BACKOFF_MIN;
    let mut overloaded_retries = 0;
    let mut transport_retries = 0;
    loop {
        match connection.send(Method::POST, path, body.clone()).await {
            Ok(response) if is_overloaded(&response) => {
                if overloaded_retries == OVERLOADED_RETRIES_MAX {
                    bail!(
                        "POST {path}: still overloaded after {overloaded_retries} retries: {}",
                        String::from_utf8_lossy(&response.body)
                    );
                }
                overloaded_retries += 1;
            }
            Ok(response) => return Ok(response),
            Err(error) => {
                if transport_retries == TRANSPORT_RETRIES_MAX {
                    return Err(error.context(format!(
                        "POST {path}: giving up after {transport_retries} retries"
                    )));
                }
                transport_retries += 1;
            }
        }
        shared.retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
    }
}

/// Whether the server shed this request because its queue was full; only
/// that 503 is retried (`unavailable` means the server stopped accepting
/// writes, and waiting would not help).
fn is_overloaded(response: &Response) -> bool {
    #[derive(Deserialize)]
    struct ErrorBody<'a> {
        #[serde(borrow)]
        error: ErrorDetail<'a>,
    }
    #[derive(Deserialize)]
    struct ErrorDetail<'a> {
        #[serde(borrow)]
        code: Cow<'a, str>,
    }
    response.status == StatusCode::SERVICE_UNAVAILABLE
        && serde_json::from_slice::<ErrorBody>(&response.body)
            .is_ok_and(|body| body.error.code == "overloaded")
}

/// What the timed phase sends; request `r` covers transfers
/// `r * batch .. min((r + 1) * batch, transfers)` and derives its account
/// pairs from `seed` and `r` alone, so a seed reproduces the same pairs
/// whatever the concurrency.
#[derive(Clone)]
struct Plan {
    transfers: u64,
    accounts: u64,
    batch: u64,
    seed: u64,
}

impl Plan {
    fn request_count(&self) -> u64 {
        self.transfers.div_ceil(self.batch)
    }

    /// Writes request `request`'s body and returns how many transfers it holds.
    fn write_body(&self, ids: &Ids, request: u64, buf: &mut String) -> u64 {
        let first = request * self.batch;
        let end = (first + self.batch).min(self.transfers);
        assert!(first < end);
        let mut rng =
            SmallRng::seed_from_u64(self.seed ^ request.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        buf.clear();
        if self.batch > 1 {
            buf.push_str(r#"{"transfers":["#);
        }
        for index in first..end {
            if index > first {
                buf.push(',');
            }
            let source = rng.random_range(0..self.accounts);
            let mut target = rng.random_range(0..self.accounts - 1);
            if target >= source {
                target += 1;
            }
            buf.push_str(r#"{"id":""#);
            ids.push_transfer(buf, index);
            buf.push_str(r#"","from":""#);
            ids.push_account(buf, source);
            buf.push_str(r#"","to":""#);
            ids.push_account(buf, target);
            buf.push_str(r#"","amount":1}"#);
        }
        if self.batch > 1 {
            buf.push_str(r#"],"atomic":false}"#);
        }
        end - first
    }
}

#[derive(Default)]
struct TaskStats {
    latencies_ms: Vec<f64>,
    succeeded: u64,
    failed: u64,
}

impl TaskStats {
    fn merge(&mut self, other: TaskStats) {
        self.latencies_ms.extend(other.latencies_ms);
        self.succeeded += other.succeeded;
        self.failed += other.failed;
    }
}

struct TransferTask {
    connection: Connection,
    ids: Arc<Ids>,
    shared: Arc<Shared>,
    plan: Plan,
    barrier: Arc<tokio::sync::Barrier>,
    concurrency: usize,
}

impl TransferTask {
    async fn run(mut self) -> anyhow::Result<TaskStats> {
        let request_count = self.plan.request_count();
        let mut stats = TaskStats {
            latencies_ms: Vec::with_capacity(
                (request_count / self.concurrency as u64 + 1) as usize,
            ),
            ..TaskStats::default()
        };
        let path = if self.plan.batch > 1 {
            "/v1/transfers/batch"
        } else {
            "/v1/transfers"
        };
        let mut buf = String::with_capacity(self.plan.batch as usize * 96 + 64);
        self.barrier.wait().await;
        loop {
            let request = self.shared.next_request.fetch_add(1, Ordering::Relaxed);
            if request >= request_count {
                return Ok(stats);
            }
            let count = self.plan.write_body(&self.ids, request, &mut buf);
            let body = Bytes::copy_from_slice(buf.as_bytes());
            let started = Instant::now();
            let succeeded =
                match send_with_retry(&mut self.connection, &self.shared, path, &body).await {
                    Ok(response) => {
                        count_succeeded(&self.shared, &response, count, self.plan.batch > 1)
                    }
                    Err(error) => {
                        self.shared.report_error(&format!("{error:#}"));
                        0
                    }
                };
            stats
                .latencies_ms
                .push(started.elapsed().as_secs_f64() * 1000.0);
            assert!(succeeded <= count);
            stats.succeeded += succeeded;
            stats.failed += count - succeeded;
            self.shared
                .transfers_done
                .fetch_add(count, Ordering::Relaxed);
        }
    }
}

/// How many of a request's `count` transfers the server accepted.
fn count_succeeded(shared: &Shared, response: &Response, count: u64, is_batch: bool) -> u64 {
    let status = response.status;
    if !is_batch {
        if status == StatusCode::CREATED || status == StatusCode::OK {
            return 1;
        }
        shared.report_error(&format!(
            "POST /v1/transfers answered {status}: {}",
            String::from_utf8_lossy(&response.body)
        ));
        return 0;
    }
    if status != StatusCode::OK {
        shared.report_error(&format!(
            "POST /v1/transfers/batch answered {status}: {}",
            String::from_utf8_lossy(&response.body)
        ));
        return 0;
    }
    let parsed: BatchResponse = match serde_json::from_slice(&response.body) {
        Ok(parsed) => parsed,
        Err(error) => {
            shared.report_error(&format!(
                "unparsable batch answer ({error}): {}",
                String::from_utf8_lossy(&response.body)
            ));
            return 0;
        }
    };
    if parsed.results.len() as u64 != count {
        shared.report_error(&format!(
            "batch of {count} transfers answered {} results",
            parsed.results.len()
        ));
        return 0;
    }
    let mut succeeded = 0;
    for item in &parsed.results {
        match &*item.outcome {
            "created" | "duplicate" => succeeded += 1,
            outcome => shared.report_error(&format!(
                "transfer {} in batch: outcome {outcome}, error {}",
                item.id,
                item.error
                    .as_ref()
                    .map_or_else(|| "none".to_string(), |error| error.to_string())
            )),
        }
    }
    succeeded
}

/// The parts of a batch answer bench looks at; other fields are skipped.
#[derive(Deserialize)]
struct BatchResponse<'a> {
    #[serde(borrow)]
    results: Vec<BatchItem<'a>>,
}

#[derive(Deserialize)]
struct BatchItem<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    outcome: Cow<'a, str>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_u64_formats_like_display() {
        for value in [0, 1, 9, 10, 99, 100, 12345, u64::MAX] {
            let mut buf = String::new();
            push_u64(&mut buf, value);
            assert_eq!(buf, value.to_string());
        }
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.50), 50.0);
        assert_eq!(percentile(&values, 0.99), 99.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn batch_body_is_valid_json_with_distinct_pairs() {
        let ids = Ids::new("abc");
        let plan = Plan {
            transfers: 10,
            accounts: 2,
            batch: 4,
            seed: 7,
        };
        assert_eq!(plan.request_count(), 3);
        let mut buf = String::new();
        assert_eq!(plan.write_body(&ids, 2, &mut buf), 2);
        let value: serde_json::Value = serde_json::from_str(&buf).expect("valid JSON");
        let transfers = value["transfers"].as_array().expect("transfers array");
        assert_eq!(transfers.len(), 2);
        assert_eq!(transfers[0]["id"], "bench-abc-t8");
        assert_eq!(transfers[1]["id"], "bench-abc-t9");
        for transfer in transfers {
            assert_ne!(transfer["from"], transfer["to"]);
            assert_eq!(transfer["amount"], 1);
        }
        assert_eq!(value["atomic"], false);
    }

    #[test]
    fn single_body_is_one_transfer() {
        let ids = Ids::new("abc");
        let plan = Plan {
            transfers: 3,
            accounts: 5,
            batch: 1,
            seed: 1,
        };
        let mut buf = String::new();
        assert_eq!(plan.write_body(&ids, 1, &mut buf), 1);
        let value: serde_json::Value = serde_json::from_str(&buf).expect("valid JSON");
        assert_eq!(value["id"], "bench-abc-t1");
    }
}
