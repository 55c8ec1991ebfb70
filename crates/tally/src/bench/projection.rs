//! `tally bench-project`: the Redis projector's throughput, lag under load, and takeover time.
//!
//! It starts its own `redis-server` (from `PATH`) and `tally serve` on loopback, then measures:
//! 1. **throughput**: a rebuild (one projector process, in-process here) of a log of
//!    `--events` transfers spread over `--ledgers` x `--accounts`, in events per second;
//! 2. **lag**: a group member following the feed while the bench sends `--rate` transfers per
//!    second for `--duration` seconds; the delay of every event from its commit in the log to
//!    its rows being visible in Redis, as percentiles;
//! 3. **takeover**: two members share a group with `--lease`; one is stopped dead (its task
//!    dropped, so it releases nothing, as a SIGKILL would); the time from its leases running
//!    out (on Redis's clock) to the other holding every partition.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use hyper::{Method, StatusCode};
use rand::{Rng, SeedableRng};
use redis::AsyncCommands;
use tally_project::http::{Connection, Endpoint};
use tally_project::metrics::Metrics;
use tally_project::Options;
use tokio::process::{Child, Command};

use super::percentile;
use super::server::Server;

/// Transfers per batch request when loading the log.
const LOAD_BATCH: usize = 1000;

/// Options of `tally bench-project`.
#[derive(clap::Args, Debug, Clone)]
pub struct ProjectionArgs {
    /// Transfers in the log the rebuild projects.
    #[arg(long, default_value_t = 300_000)]
    pub events: u64,
    /// Ledgers the accounts are spread over.
    #[arg(long, default_value_t = 8)]
    pub ledgers: u64,
    /// Accounts per ledger.
    #[arg(long, default_value_t = 1000)]
    pub accounts: u64,
    /// Transfers per second of the steady load while the lag is measured.
    #[arg(long, default_value_t = 10_000)]
    pub rate: u64,
    /// Seconds of steady load.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// The lease of the takeover measurement.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub lease: Duration,
}

/// A `redis-server` of the bench's own, killed when dropped.
struct Redis {
    _child: Child,
    url: String,
}

impl Redis {
    async fn start() -> anyhow::Result<Redis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
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
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start redis-server: install it (Debian package redis-server)")?;
        let url = format!("redis://127.0.0.1:{port}");
        let client = redis::Client::open(url.as_str())?;
        for _ in 0..100 {
            if let Ok(mut connection) = client.get_multiplexed_async_connection().await {
                let pong: redis::RedisResult<String> =
                    redis::cmd("PING").query_async(&mut connection).await;
                if pong.is_ok() {
                    return Ok(Redis { _child: child, url });
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("redis-server did not answer on port {port} within 5 s")
    }
}

pub async fn run(args: ProjectionArgs) -> anyhow::Result<()> {
    if args.ledgers == 0 || args.accounts < 2 || args.rate == 0 {
        bail!("--ledgers must be at least 1, --accounts at least 2 and --rate at least 1");
    }
    let redis = Redis::start().await?;
    let server = Server::start(None, false).await?;
    let token = server
        .admin_token()?
        .context("the server wrote no admin token")?;
    let endpoint = Endpoint::parse(&server.url, Some(&token)).await?;
    let mut connection = Connection::new(endpoint.clone());
    eprintln!(
        "bench-project: opening {} accounts",
        args.ledgers * args.accounts
    );
    setup(&mut connection, &args).await?;
    eprintln!("bench-project: loading {} transfers", args.events);
    let mut random = rand::rngs::StdRng::seed_from_u64(1);
    let mut sent = 0;
    while sent < args.events {
        let count = (args.events - sent).min(LOAD_BATCH as u64) as usize;
        send_batch(&mut connection, &args, &mut random, "load", sent, count).await?;
        sent += count as u64;
    }
    // The server's own read model projects the load at idle priority; the rebuild is measured
    // once it is done, so that the two do not share the machine.
    wait_for_read_model(&mut connection).await?;
    let options = |group: &str, prefix: &str, rebuild: bool| Options {
        store: redis.url.clone(),
        source: server.url.clone(),
        token: Some(token.clone()),
        group: group.to_owned(),
        prefix: prefix.to_owned(),
        partitions: None,
        lease: args.lease,
        page_events: 1000,
        metrics_listen: None,
        rebuild,
        fault: None,
    };

    // 1. Throughput of a rebuild, and what it cost each of the three processes.
    let server_pid = server.pid().context("the server exited")?;
    let cpu_before = Cpu::read(&redis, server_pid).await?;
    let summary = tally_project::run(
        options("rebuild", "rebuild:", true),
        Metrics::default(),
        std::future::pending(),
    )
    .await?;
    let cpu = Cpu::read(&redis, server_pid).await?.since(&cpu_before);
    let throughput = summary.events as f64 / summary.elapsed.as_secs_f64();
    eprintln!(
        "bench-project: rebuilt {} events in {:.2} s, in {} commits",
        summary.events,
        summary.elapsed.as_secs_f64(),
        summary.commits
    );
    let per_event_us = |seconds: f64| seconds * 1e6 / summary.events.max(1) as f64;
    eprintln!(
        "bench-project: CPU per event during the rebuild: projector {:.1} µs, Redis {:.1} µs, \
         server {:.1} µs; Redis's costliest commands: {}",
        per_event_us(cpu.projector),
        per_event_us(cpu.redis),
        per_event_us(cpu.server),
        cpu.commands_summary(summary.events)
    );

    // 2. Lag under steady load: a member that caught up, then the load.
    let metrics = Metrics::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let follower = tokio::spawn(tally_project::run(
        options("lag", "lag:", false),
        metrics.clone(),
        async {
            let _ = stopped.await;
        },
    ));
    while metrics.lag_events.get() != 0 || metrics.commits.get() == 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    metrics.keep_delays((args.rate * args.duration * 2) as usize);
    eprintln!(
        "bench-project: {} transfers/s for {} s",
        args.rate, args.duration
    );
    let offered = steady_load(&mut connection, &args, &mut random).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = stop.send(());
    follower.await??;
    let mut delays = metrics.delays();
    delays.sort_by(f64::total_cmp);
    let delay_ms = |quantile| percentile(&delays, quantile) * 1000.0;

    // 3. Takeover after a member dies.
    let takeover = takeover(&redis, options("takeover", "takeover:", false)).await?;

    server.stop().await?;
    let report = serde_json::json!({
        "events": summary.events,
        "rebuild_events_per_s": throughput.round(),
        "rebuild_cpu_us_per_event": {
            "projector": per_event_us(cpu.projector),
            "redis": per_event_us(cpu.redis),
            "server": per_event_us(cpu.server),
        },
        "lag_rate_offered": offered.round(),
        "lag_events_measured": delays.len(),
        "lag_p50_ms": delay_ms(0.50),
        "lag_p99_ms": delay_ms(0.99),
        "lag_max_ms": delays.last().map_or(0.0, |max| max * 1000.0),
        "lease_s": args.lease.as_secs_f64(),
        "takeover_after_lease_expiry_ms": takeover.as_millis(),
    });
    println!(
        "rebuild (one projector):     {throughput:>10.0} events/s ({} events)",
        summary.events
    );
    println!(
        "lag at {:.0} transfers/s:    p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} events)",
        offered,
        delay_ms(0.50),
        delay_ms(0.99),
        delays.last().map_or(0.0, |max| max * 1000.0),
        delays.len()
    );
    println!(
        "takeover after lease expiry: {:>10} ms (lease {:?})",
        takeover.as_millis(),
        args.lease
    );
    println!("{report}");
    Ok(())
}

/// CPU seconds used so far by the projector (this process), Redis and the server, with Redis's
/// time per command (`INFO commandstats`: calls and µs, by command).
struct Cpu {
    projector: f64,
    redis: f64,
    server: f64,
    commands: std::collections::BTreeMap<String, (u64, u64)>,
}

impl Cpu {
    async fn read(redis: &Redis, server_pid: u32) -> anyhow::Result<Cpu> {
        let client = redis::Client::open(redis.url.as_str())?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        let info: String = redis::cmd("INFO")
            .arg("cpu")
            .arg("commandstats")
            .query_async(&mut connection)
            .await?;
        let mut cpu = Cpu {
            projector: super::cpu_seconds(),
            redis: 0.0,
            server: super::process_cpu_seconds(server_pid).unwrap_or(0.0),
            commands: Default::default(),
        };
        for line in info.lines() {
            if let Some((name, value)) = line.split_once(':') {
                if name == "used_cpu_sys" || name == "used_cpu_user" {
                    cpu.redis += value.trim().parse::<f64>().unwrap_or(0.0);
                }
                if let Some(command) = name.strip_prefix("cmdstat_") {
                    // calls=N,usec=N,usec_per_call=…
                    let field = |key: &str| {
                        value
                            .split(',')
                            .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
                            .and_then(|number| number.parse::<u64>().ok())
                            .unwrap_or(0)
                    };
                    cpu.commands
                        .insert(command.to_owned(), (field("calls"), field("usec")));
                }
            }
        }
        Ok(cpu)
    }

    fn since(mut self, before: &Cpu) -> Cpu {
        self.projector -= before.projector;
        self.redis -= before.redis;
        self.server -= before.server;
        for (command, (calls, usec)) in &mut self.commands {
            let (calls_before, usec_before) =
                before.commands.get(command).copied().unwrap_or_default();
            *calls -= calls_before;
            *usec -= usec_before;
        }
        self
    }

    /// The commands Redis spent most time in, as `RPUSH 1.23 µs/event (1.20 calls)`.
    fn commands_summary(&self, events: u64) -> String {
        let events = events.max(1) as f64;
        let mut commands: Vec<_> = self
            .commands
            .iter()
            .filter(|(_, (calls, _))| *calls > 0)
            .collect();
        commands.sort_by_key(|(_, (_, usec))| std::cmp::Reverse(*usec));
        commands
            .iter()
            .take(6)
            .map(|(command, (calls, usec))| {
                format!(
                    "{} {:.2} µs/event ({:.2} calls)",
                    command.to_uppercase(),
                    *usec as f64 / events,
                    *calls as f64 / events
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

async fn setup(connection: &mut Connection, args: &ProjectionArgs) -> anyhow::Result<()> {
    for ledger in 0..args.ledgers {
        for index in 0..args.accounts {
            let id = account(ledger, index);
            let body = format!(r#"{{"id":"{id}","ledger":"L{ledger}"}}"#);
            expect(
                connection
                    .send(Method::POST, "/v1/accounts", Bytes::from(body))
                    .await?,
                StatusCode::CREATED,
            )?;
            let body = format!(r#"{{"id":"fund-{id}","account":"{id}","amount":1000000000000}}"#);
            expect(
                connection
                    .send(Method::POST, "/v1/deposits", Bytes::from(body))
                    .await?,
                StatusCode::CREATED,
            )?;
        }
    }
    Ok(())
}

/// Waits until the server's embedded read model has caught up with its log (its
/// `tally_read_model_lag_events` is 0), for at most two minutes.
async fn wait_for_read_model(connection: &mut Connection) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let metrics = connection
            .send(Method::GET, "/metrics", Bytes::new())
            .await?;
        let text = String::from_utf8_lossy(&metrics.body);
        let lag = text
            .lines()
            .find_map(|line| line.strip_prefix("tally_read_model_lag_events "))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .context("the server's /metrics has no tally_read_model_lag_events")?;
        if lag == 0.0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the server's read model is still {lag} events behind after 2 minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn account(ledger: u64, index: u64) -> String {
    format!("b{ledger}-{index}")
}

/// Sends `count` random transfers as one batch, with ids `{tag}-{first}`...
async fn send_batch(
    connection: &mut Connection,
    args: &ProjectionArgs,
    random: &mut rand::rngs::StdRng,
    tag: &str,
    first: u64,
    count: usize,
) -> anyhow::Result<()> {
    let mut body = String::from(r#"{"transfers":["#);
    for item in 0..count as u64 {
        let ledger = random.random_range(0..args.ledgers);
        let from = random.random_range(0..args.accounts);
        let to = (from + random.random_range(1..args.accounts)) % args.accounts;
        if item > 0 {
            body.push(',');
        }
        body.push_str(&format!(
            r#"{{"id":"{tag}-{}","from":"{}","to":"{}","amount":1}}"#,
            first + item,
            account(ledger, from),
            account(ledger, to)
        ));
    }
    body.push_str("]}");
    expect(
        connection
            .send(Method::POST, "/v1/transfers/batch", Bytes::from(body))
            .await?,
        StatusCode::OK,
    )
}

/// Sends `--rate` transfers per second for `--duration` seconds, in batches every 10 ms;
/// returns the rate achieved.
async fn steady_load(
    connection: &mut Connection,
    args: &ProjectionArgs,
    random: &mut rand::rngs::StdRng,
) -> anyhow::Result<f64> {
    let tick = Duration::from_millis(10);
    let per_tick = (args.rate / 100).max(1) as usize;
    let started = Instant::now();
    let mut sent = 0u64;
    let mut next = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_secs(args.duration) {
        send_batch(connection, args, random, "steady", sent, per_tick).await?;
        sent += per_tick as u64;
        next += tick;
        tokio::time::sleep_until(next).await;
    }
    Ok(sent as f64 / started.elapsed().as_secs_f64())
}

/// Two members of a group; once both hold partitions, one is dropped dead. Returns the time from
/// the last of its leases running out to the survivor holding all partitions (Redis's clock).
async fn takeover(redis: &Redis, options: Options) -> anyhow::Result<Duration> {
    let survivor_metrics = Metrics::default();
    let survivor = tokio::spawn(tally_project::run(
        options.clone(),
        survivor_metrics.clone(),
        std::future::pending(),
    ));
    let victim_metrics = Metrics::default();
    let victim = tokio::spawn(tally_project::run(
        options.clone(),
        victim_metrics.clone(),
        std::future::pending(),
    ));
    let client = redis::Client::open(redis.url.as_str())?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    let key = |partition: u32| {
        format!(
            "{}group:{}:partition:{partition}",
            options.prefix, options.group
        )
    };
    let partitions = tally_project::DEFAULT_PARTITIONS;
    let deadline = Instant::now() + Duration::from_secs(60);
    // The assignment settles with each member holding its half; killed before that, the victim
    // could be handing partitions over, and then no lease of its stands still.
    let share = i64::from(partitions / 2);
    while victim_metrics.partitions_owned.get() != share
        || survivor_metrics.partitions_owned.get() != share
    {
        if Instant::now() > deadline {
            bail!("the two members never held {share} partitions each");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    victim.abort();
    let _ = victim.await;
    // The dead member's leases are frozen while the survivor renews its own every fifth of a
    // lease: what did not move in half a lease was the victim's.
    let mut expiries = Vec::new();
    for partition in 0..partitions {
        let (owner, expires): (Option<String>, Option<u64>) = redis::cmd("HMGET")
            .arg(key(partition))
            .arg("owner")
            .arg("expires_ms")
            .query_async(&mut connection)
            .await?;
        expiries.push((
            owner.filter(|owner| !owner.is_empty()),
            expires.unwrap_or(0),
        ));
    }
    tokio::time::sleep(options.lease / 2).await;
    let mut victim_expiry = 0u64;
    let mut victim_partitions = Vec::new();
    for (partition, (owner, expires)) in (0..partitions).zip(&expiries) {
        let now: Option<u64> = connection.hget(key(partition), "expires_ms").await?;
        if owner.is_some() && now == Some(*expires) {
            victim_expiry = victim_expiry.max(*expires);
            victim_partitions.push(partition);
        }
    }
    if victim_partitions.is_empty() {
        bail!("could not tell the dead member's partitions from the survivor's");
    }
    loop {
        let (seconds, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut connection).await?;
        let now_ms = seconds * 1000 + micros / 1000;
        let mut moved = true;
        for partition in &victim_partitions {
            let expires: Option<u64> = connection.hget(key(*partition), "expires_ms").await?;
            // A lease taken after the victim's ran out expires after it.
            moved &= expires.unwrap_or(0) > victim_expiry;
        }
        if moved {
            survivor.abort();
            return Ok(Duration::from_millis(now_ms.saturating_sub(victim_expiry)));
        }
        if Instant::now() > deadline {
            bail!("the survivor did not take the dead member's partitions within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn expect(response: tally_project::http::Response, status: StatusCode) -> anyhow::Result<()> {
    if response.status != status {
        bail!(
            "expected {status}, got {}: {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        );
    }
    Ok(())
}
