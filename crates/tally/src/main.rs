//! `tally`: the command-line entry point. It parses flags into typed configuration and hands
//! off to the library crates; nothing else lives here.

mod bench;
mod campaign;
mod claims;
mod keys;
mod progress;
mod project;
mod simulate;
mod status;
mod verify;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tally_engine::limits::{
    BATCH_WAIT_US_DEFAULT, BATCH_WAIT_US_MAX, SNAPSHOT_INTERVAL_EVENTS_DEFAULT,
};

/// Tally: a self-hosted, event-sourced ledger.
#[derive(Parser)]
#[command(version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: CommandLine,
}

#[derive(Subcommand)]
enum CommandLine {
    /// Serve the HTTP API on the embedded log (no other server needed).
    Serve(ServeArgs),
    /// Check every record of a data directory and every ledger invariant, without changing it.
    Verify(verify::VerifyArgs),
    /// Keep the read models in Redis as a member of a projector group (`--store`), show a
    /// group (`status`), or rebuild the embedded read model of a stopped server (`--rebuild`).
    Project(project::ProjectArgs),
    /// Load generator: drive transfers through the public HTTP API and report throughput and latency.
    Bench(bench::BenchArgs),
    /// Co-location benchmark: online latency at a fixed rate alone, and next to a read model
    /// rebuild and a verify in the same process at idle and at normal priority.
    BenchOffline(bench::colocation::ColocationArgs),
    /// Measures the Redis projector: rebuild throughput, lag under steady load, takeover
    /// after a member dies (starts its own redis-server and tally serve).
    BenchProject(bench::projection::ProjectionArgs),
    /// Measures claims: accepted per second with the delivery worker running, and delivered
    /// per second, to a healthy fake target (starts its own tally serve).
    BenchClaims(bench::claims::ClaimsBenchArgs),
    /// Show a running server's status: availability, dependencies, offline jobs, incidents.
    Status(status::StatusArgs),
    /// Deterministic simulation: the engine against a simulated clock, faulty disk, clients and
    /// crashes, for many seeds; a failure prints the command that replays it.
    Simulate(simulate::SimulateArgs),
    /// Keys and tokens: create and rotate the key pair, issue, inspect and revoke tokens.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Gift campaigns: check a campaign file against every rule before it is published.
    #[command(subcommand)]
    Campaign(campaign::CampaignCommand),
    /// Claims: reconcile those whose delivery is unknown with their targets.
    #[command(subcommand)]
    Claims(claims::ClaimsCommand),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Data directory: the log, snapshots and read model live here (created if missing).
    #[arg(long, default_value = "./tally-data", env = "TALLY_DATA_DIR")]
    data_dir: PathBuf,
    /// Address to listen on; port 0 picks a free port (printed on standard output).
    #[arg(long, default_value = "127.0.0.1:7070", env = "TALLY_LISTEN")]
    listen: SocketAddr,
    /// Microseconds the batcher waits for more commands after the first of a batch.
    #[arg(long, default_value_t = BATCH_WAIT_US_DEFAULT, value_parser = clap::value_parser!(u64).range(0..=BATCH_WAIT_US_MAX))]
    batch_wait_us: u64,
    /// Events between snapshots (0: only at shutdown); bounds the log a restart replays.
    #[arg(long, default_value_t = SNAPSHOT_INTERVAL_EVENTS_DEFAULT)]
    snapshot_interval_events: u64,
    /// Serve without authentication. Only allowed with a loopback --listen address.
    #[arg(long)]
    no_auth: bool,
    /// Let /metrics answer without a token (it needs the `operator` scope otherwise).
    #[arg(long)]
    open_metrics: bool,
    /// Let /status and /status.json answer without a token, for browsers and public status
    /// pages (they need the `operator` scope otherwise).
    #[arg(long)]
    open_status: bool,
    /// Free space on the data directory's filesystem below which commands are refused (reads
    /// go on) until space is freed: bytes, or with a KiB, MiB or GiB suffix.
    #[arg(long, default_value = "256MiB", value_parser = parse_bytes)]
    disk_reserve: u64,
    /// Format of the log on standard error: `text` for people, `json` (one object a line) for
    /// log collectors. The level is set with TALLY_LOG (default `info`).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "TALLY_LOG_FORMAT")]
    log_format: LogFormat,
    /// Priority of offline work (snapshots, read model projection): `idle` runs it at SCHED_IDLE,
    /// in an idle cpu cgroup where the machine allows it; `normal` lets it compete with requests,
    /// for comparison.
    #[arg(long, value_enum, default_value_t = progress::PriorityArg::Idle, env = "TALLY_OFFLINE_PRIORITY")]
    offline_priority: progress::PriorityArg,
    /// Do not run the delivery worker: claims stay `pending_delivery` until they are settled by
    /// hand (`POST /v1/claims/{id}/settle`), or until a server with the worker runs on this
    /// data directory.
    #[arg(long)]
    no_deliveries: bool,
    /// The longest wait between two delivery attempts of a claim (the backoff's cap, before
    /// jitter), in milliseconds.
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    delivery_retry_max_ms: u64,
}

/// `4096`, `64KiB`, `256MiB`, `2GiB` (also `K`, `M`, `G`, binary multiples) as bytes.
fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size: use bytes or a KiB, MiB or GiB suffix"))?;
    let multiple: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        other => return Err(format!("unknown size unit `{other}`: use KiB, MiB or GiB")),
    };
    number
        .checked_mul(multiple)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message` and the event's
    /// fields, and `spans` (a request's span carries its `request_id`, `method` and `route`).
    Json,
}

/// mimalloc, not glibc's malloc: the request path, the read model's redb transactions and the
/// delivery worker allocate many small, short-lived buffers across threads, where glibc's
/// per-arena locking and chunk coalescing showed up as a tenth of the server's CPU time under
/// `tally bench-claims` (`_int_malloc`, `_int_free`, `unlink_chunk` in `perf`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Only the server's log goes to collectors; the other commands talk to a person.
    let log_format = match &cli.command {
        CommandLine::Serve(args) => args.log_format,
        _ => LogFormat::Text,
    };
    // A simulation crashes engines thousands of times a second; their logs would drown its
    // report, so it logs only what TALLY_LOG asks for.
    let default_level = match &cli.command {
        CommandLine::Simulate(_) => "off",
        _ => "info",
    };
    init_logging(log_format, default_level);
    // It covers memory mapped before it too; called once logging is up, so that a refusal is
    // logged. See `tally_offline::turn_off_huge_pages` for why.
    if let Err(error) = tally_offline::turn_off_huge_pages() {
        tracing::warn!(%error, "transparent huge pages stay on; a thread that faults one in holds its core for milliseconds");
    }
    let result = match cli.command {
        CommandLine::Serve(args) => serve(args).map(|()| ExitCode::SUCCESS),
        CommandLine::Verify(args) => verify::run(args),
        CommandLine::Project(args) => project::run(args).map(|()| ExitCode::SUCCESS),
        CommandLine::Status(args) => status::run(args),
        CommandLine::Simulate(args) => simulate::run(args),
        CommandLine::Keys(command) => keys::run(command).map(|()| ExitCode::SUCCESS),
        CommandLine::Campaign(command) => campaign::run(command),
        CommandLine::Claims(command) => claims::run(command),
        CommandLine::BenchOffline(args) => bench::colocation::run(args).map(|()| ExitCode::SUCCESS),
        CommandLine::BenchProject(args) => runtime()
            .and_then(|runtime| runtime.block_on(bench::projection::run(args)))
            .map(|()| ExitCode::SUCCESS),
        CommandLine::BenchClaims(args) => runtime()
            .and_then(|runtime| runtime.block_on(bench::claims::run(args)))
            .map(|()| ExitCode::SUCCESS),
        CommandLine::Bench(args) => runtime()
            .and_then(|runtime| runtime.block_on(bench::run(args)))
            .map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            if is_broken_pipe(&error) {
                return ExitCode::SUCCESS;
            }
            match log_format {
                LogFormat::Text => eprintln!("tally: {error:#}"),
                // Every line of a JSON log must be JSON, the last one included.
                LogFormat::Json => tracing::error!("tally stopped: {error:#}"),
            }
            ExitCode::from(2)
        }
    }
}

fn init_logging(format: LogFormat, default_level: &str) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TALLY_LOG")
                .unwrap_or_else(|_| default_level.into()),
        )
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        // The event's fields at the top level, and each line's context once, as the list of
        // its spans (the innermost alone could miss the request's id).
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .init(),
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(|| {
            tally_offline::online_thread_started();
        })
        .build()?)
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if args.no_auth && !args.listen.ip().is_loopback() {
        anyhow::bail!(
            "--no-auth is only allowed with a loopback --listen address (127.0.0.1 or ::1), not {}",
            args.listen
        );
    }
    let mut config = tally_server::ServeConfig::new(args.data_dir, args.listen);
    config.open = tally_server::auth::OpenRoutes {
        metrics: args.open_metrics,
        status: args.open_status,
    };
    config.status.disk_reserve_bytes = args.disk_reserve;
    if args.no_auth {
        // Shown whatever TALLY_LOG filters; a JSON log gets the server's own warning line only.
        if args.log_format == LogFormat::Text {
            eprintln!("tally: WARNING: authentication is off (--no-auth); anyone who can reach {} can move value", args.listen);
        }
        config.auth = tally_server::AuthConfig::Disabled;
    }
    config.engine.batch_wait = Duration::from_micros(args.batch_wait_us);
    config.engine.snapshot_interval_events = args.snapshot_interval_events;
    config.engine.offline = args.offline_priority.executor();
    if !args.no_deliveries {
        let mut deliveries = tally_server::deliver::DeliveryConfig::default();
        deliveries.backoff.cap = Duration::from_millis(args.delivery_retry_max_ms);
        deliveries.backoff.base = deliveries.backoff.base.min(deliveries.backoff.cap);
        config.deliveries = Some(deliveries);
    }
    runtime()?.block_on(tally_server::serve(config, |address| {
        // Scripts and `tally bench` wait for exactly this line.
        println!("listening on http://{address}");
    }))?;
    Ok(())
}
