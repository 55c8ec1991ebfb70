//! `tally bench-claims`: claims accepted per second with the delivery worker running, and
//! claims delivered per second, against a healthy target.
//!
//! It starts the fake target of `tally-dispatch` in this process (every endpoint answers 200
//! at once) and its own `tally serve` (delivery worker on), defines and verifies a campaign (not
//! measured), then claims `--claims` gifts for distinct users from `--concurrency` tasks, each
//! with its own keep-alive connection and one request in flight. Accepted: a 201
//! `pending_delivery` answer, durable. Delivered: the target recorded the order. It prints a
//! human summary to stderr and one JSON line to stdout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use hyper::Method;
use serde_json::json;
use tally_dispatch::fake::FakeTarget;
use tally_project::http::{Connection, Endpoint};

use super::server::Server;

/// The longest the bench waits for the last delivery after the last claim.
const DELIVERY_WAIT_MAX: Duration = Duration::from_secs(600);

/// Endpoints of the fake target (the primary group).
const TARGET_ENDPOINTS: usize = 3;

/// The longest one request is retried while the server answers `overloaded` (503): a server
/// that stays overloaded this long fails the bench instead of hanging it.
const OVERLOADED_RETRY_MAX: Duration = Duration::from_secs(60);

#[derive(clap::Args)]
pub struct ClaimsBenchArgs {
    /// Claims to make in the timed phase.
    #[arg(long, value_name = "N", default_value_t = 50_000)]
    claims: u64,
    /// Concurrent client tasks, each with one request in flight.
    #[arg(long, value_name = "N", default_value_t = 64)]
    concurrency: u64,
}

pub async fn run(args: ClaimsBenchArgs) -> anyhow::Result<()> {
    if args.claims == 0 || !(1..=1024).contains(&args.concurrency) {
        bail!("--claims must be at least 1 and --concurrency between 1 and 1024");
    }
    let target = FakeTarget::start(TARGET_ENDPOINTS).await;
    let server = Server::start(None, false).await?;
    let token = server
        .admin_token()?
        .context("the server wrote no admin token")?;
    let endpoint = Endpoint::parse(&server.url, Some(&token)).await?;
    let result = bench(&args, &target, endpoint).await;
    let status = server.stop().await?;
    let report = result?;
    if !status.success() {
        bail!("tally serve exited with {status} after SIGTERM");
    }
    eprintln!(
        "bench-claims: {} claims accepted in {:.2} s ({:.0}/s); delivered in {:.2} s ({:.0}/s)",
        args.claims,
        report.accept_seconds,
        args.claims as f64 / report.accept_seconds,
        report.deliver_seconds,
        args.claims as f64 / report.deliver_seconds,
    );
    println!(
        "{}",
        json!({
            "bench": "claims", "claims": args.claims, "concurrency": args.concurrency,
            "accepted_per_second": (args.claims as f64 / report.accept_seconds).round(),
            "delivered_per_second": (args.claims as f64 / report.deliver_seconds).round(),
            "accept_seconds": report.accept_seconds, "deliver_seconds": report.deliver_seconds,
        })
    );
    Ok(())
}

struct Report {
    /// From the first claim sent to the last accepted.
    accept_seconds: f64,
    /// From the first claim sent to the last delivered.
    deliver_seconds: f64,
}

async fn bench(
    args: &ClaimsBenchArgs,
    target: &FakeTarget,
    endpoint: Endpoint,
) -> anyhow::Result<Report> {
    let mut connection = Connection::new(endpoint.clone());
    let spec = json!({
        "id": "bench", "gift_ledger": "GIFT", "inventory": args.claims + 1,
        "per_user_limit": 1, "daily_limit": args.claims + 1, "timezone": "UTC",
        "starts_at": "2020-01-01T00:00:00Z", "ends_at": "2200-01-01T00:00:00Z",
        "verification_account": "verifier",
        "delivery": {"primary": target.urls(), "connect_timeout_ms": 200,
                     "read_timeout_ms": 2000, "max_read_timeouts": 2, "retry_budget_percent": 10}
    });
    expect(&mut connection, "/v1/campaigns", &spec.to_string(), 201).await?;
    let verify = json!({"order_id": "verify", "user": "verifier"}).to_string();
    expect(&mut connection, "/v1/campaigns/bench/claims", &verify, 201).await?;
    let started = Instant::now();
    while target.delivered_count() < 1 {
        if started.elapsed() > DELIVERY_WAIT_MAX {
            bail!("the verification gift was not delivered");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The claim is settled just after the target answered; publishing waits for it.
    loop {
        let answer = send(&mut connection, "/v1/campaigns/bench/publish", "{}").await?;
        if answer.0 == 200 {
            break;
        }
        if started.elapsed() > DELIVERY_WAIT_MAX {
            bail!("publishing answered {}: {}", answer.0, answer.1);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let next = Arc::clone(&next);
        let endpoint = endpoint.clone();
        let claims = args.claims;
        tasks.spawn(async move {
            let mut connection = Connection::new(endpoint);
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= claims {
                    return anyhow::Ok(());
                }
                let body = format!(r#"{{"order_id":"o-{index}","user":"u-{index}"}}"#);
                expect(&mut connection, "/v1/campaigns/bench/claims", &body, 201).await?;
            }
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    let accept_seconds = started.elapsed().as_secs_f64();
    let wanted = args.claims as usize + 1;
    while target.delivered_count() < wanted {
        if started.elapsed() > DELIVERY_WAIT_MAX {
            bail!(
                "{} of {} claims delivered after {DELIVERY_WAIT_MAX:?}",
                target.delivered_count() - 1,
                args.claims
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(Report {
        accept_seconds,
        deliver_seconds: started.elapsed().as_secs_f64(),
    })
}

/// POSTs `body` to `path`; the answer's status and body.
async fn send(
    connection: &mut Connection,
    path: &str,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let response = connection
        .send(Method::POST, path, Bytes::from(body.to_owned()))
        .await?;
    Ok((
        response.status.as_u16(),
        String::from_utf8_lossy(&response.body).into_owned(),
    ))
}

/// POSTs and requires `status`, retrying `overloaded` answers (503) as any client would, for
/// at most [`OVERLOADED_RETRY_MAX`].
async fn expect(
    connection: &mut Connection,
    path: &str,
    body: &str,
    status: u16,
) -> anyhow::Result<()> {
    expect_within(connection, path, body, status, OVERLOADED_RETRY_MAX).await
}

/// [`expect`], retrying 503 answers for at most `retry_max`.
async fn expect_within(
    connection: &mut Connection,
    path: &str,
    body: &str,
    status: u16,
    retry_max: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let (found, text) = send(connection, path, body).await?;
        if found == status {
            return Ok(());
        }
        if found != 503 {
            bail!("{path} answered {found}, expected {status}: {text}");
        }
        if started.elapsed() >= retry_max {
            bail!("{path} still answered 503 (overloaded) after {retry_max:?}: {text}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use tally_dispatch::fake::Behaviour;

    use super::*;

    #[tokio::test]
    async fn a_server_that_stays_overloaded_fails_the_bench_after_the_retry_limit() {
        let target = FakeTarget::start(1).await;
        target.set(0, Behaviour::Status(503)).await;
        let url: hyper::Uri = target.url(0).parse().unwrap();
        let base = format!("http://{}", url.authority().unwrap());
        let endpoint = Endpoint::parse(&base, None).await.unwrap();
        let mut connection = Connection::new(endpoint);
        let limit = Duration::from_millis(200);
        let started = Instant::now();
        let error = expect_within(&mut connection, url.path(), "{}", 201, limit)
            .await
            .unwrap_err();
        assert!(started.elapsed() >= limit);
        assert!(
            error
                .to_string()
                .contains("still answered 503 (overloaded) after 200ms"),
            "{error}"
        );
        assert!(target.endpoint_attempts(0) > 1, "503 was retried");
    }
}
