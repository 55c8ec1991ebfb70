//! `tally project`: read models outside the server.
//!
//! - `tally project --store redis://HOST:PORT --source http://HOST:PORT` runs a member of a
//!   projector group that keeps the read models in Redis (`tally_project`);
//! - `tally project --store ... --rebuild` deletes the prefix's keys and projects the feed from
//!   position zero up to its end, with a progress bar, then stops;
//! - `tally project status --store ...` shows the group's partitions, owners and lag;
//! - `tally project --rebuild --data-dir DIR` rebuilds the embedded read model of a stopped
//!   server from position zero, as an offline job (idle priority by default) with a progress
//!   bar on a terminal.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tally_log::{EventLog, LogOptions, SegmentedLog};
use tally_project::metrics::Metrics;
use tally_project::source::Source;
use tally_project::store::{Keys, RedisStore};
use tally_project::{FaultPoint, Options};
use tally_read::{rebuild, READ_MODEL_FILE_NAME, REBUILD_JOB};
use tally_server::ShutdownSignals;

use crate::progress::{follow, PriorityArg};

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ProjectArgs {
    #[command(subcommand)]
    command: Option<ProjectCommand>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Subcommand)]
enum ProjectCommand {
    /// Shows a projector group: each partition's owner, lease, position and lag.
    Status(StatusArgs),
}

#[derive(clap::Args)]
struct StoreArgs {
    /// The Redis read store, `redis://HOST:PORT[/DB]` (Redis 7 or later).
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// The projector group: members of one group share its partitions.
    #[arg(long, default_value = "default")]
    group: String,
    /// Prefix of every key the projector writes.
    #[arg(long, default_value = "tally:")]
    prefix: String,
    /// The server whose event feed is projected.
    #[arg(long, default_value = "http://127.0.0.1:7070", value_name = "URL")]
    source: String,
    /// A token of the server without ledger or account restrictions (`tally serve` writes an
    /// admin token into its data directory on first start).
    #[arg(long, env = "TALLY_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// With --store: delete the prefix's keys and project from position zero up to the feed's
    /// end, then stop. Without: rebuild the embedded read model of --data-dir.
    #[arg(long)]
    rebuild: bool,
    /// Partitions of a new group (ledgers are spread over them; fixed once the group exists).
    #[arg(long)]
    partitions: Option<u32>,
    /// How long a member's leases last without renewal: after a member dies, others take its
    /// partitions within about a fifth of this of its leases running out.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    lease: Duration,
    /// Events per page of the feed and per commit to Redis (1 to 1000).
    #[arg(long, default_value_t = 1000)]
    page_events: u32,
    /// Serve the projector's /metrics on this address.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// A test hook: abort the process just before or after its Nth commit, as a crash would
    /// (`before-commit:N`, `after-commit:N`).
    #[arg(long, hide = true)]
    fault_point: Option<FaultPoint>,
    /// Without --store: the data directory (as given to `tally serve --data-dir`) whose
    /// embedded read model --rebuild rebuilds; its server must be stopped.
    #[arg(long, default_value = "./tally-data", env = "TALLY_DATA_DIR")]
    data_dir: PathBuf,
    /// Priority of the embedded rebuild: `idle` leaves the CPU to everything else, `normal`
    /// competes.
    #[arg(long, value_enum, default_value_t = PriorityArg::Idle)]
    offline_priority: PriorityArg,
}

#[derive(clap::Args)]
struct StatusArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: ProjectArgs) -> anyhow::Result<()> {
    match (args.command, args.run) {
        (Some(ProjectCommand::Status(status)), _) => {
            crate::runtime()?.block_on(show_status(status))
        }
        (None, run) if run.store.store.is_some() => crate::runtime()?.block_on(run_projector(run)),
        (None, run) if run.rebuild => rebuild_embedded(run),
        (None, _) => anyhow::bail!(
            "nothing to do: pass --store redis://HOST:PORT to run a projector into Redis, or \
             --rebuild to rebuild the embedded read model of --data-dir"
        ),
    }
}

async fn run_projector(args: RunArgs) -> anyhow::Result<()> {
    let store = args.store;
    let options = Options {
        store: store.store.expect("checked by the caller"),
        source: store.source,
        token: store.token,
        group: store.group,
        prefix: store.prefix,
        partitions: args.partitions,
        lease: args.lease,
        page_events: args.page_events,
        metrics_listen: args.metrics_listen,
        rebuild: args.rebuild,
        fault: args.fault_point,
    };
    options.validate()?;
    let metrics = Metrics::default();
    let bar = args.rebuild.then(|| rebuild_bar(metrics.clone()));
    // Before the projector starts: a SIGTERM sent once it runs must find its handler.
    let signals = ShutdownSignals::install().context("cannot listen for SIGTERM and SIGINT")?;
    let summary = tally_project::run(options, metrics, signals.received()).await;
    if let Some(bar) = bar {
        bar.abort();
    }
    let summary = summary?;
    let seconds = summary.elapsed.as_secs_f64();
    if let Some(position) = summary.position {
        println!(
            "rebuilt: {} events up to position {position} in {seconds:.1} s ({:.0} events/s)",
            summary.events,
            summary.events as f64 / seconds.max(f64::EPSILON)
        );
    } else {
        println!(
            "stopped after applying {} events in {} commits",
            summary.events, summary.commits
        );
    }
    Ok(())
}

/// Draws the rebuild's progress from the projector's metrics, on a terminal only.
fn rebuild_bar(metrics: Metrics) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if !std::io::stderr().is_terminal() {
            return;
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{msg} [{bar:40}] {human_pos}/{human_len} {per_sec} eta {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message("rebuilding");
        loop {
            bar.set_length(metrics.rebuild_total.get().max(0) as u64);
            bar.set_position(metrics.rebuild_done.get().max(0) as u64);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

async fn show_status(args: StatusArgs) -> anyhow::Result<()> {
    let store_args = args.store;
    let url = store_args
        .store
        .context("pass --store redis://HOST:PORT: the Redis the group writes to")?;
    let mut store =
        RedisStore::connect(&url, Keys::new(&store_args.prefix, &store_args.group)).await?;
    let partitions = store.stored_partitions().await?.with_context(|| {
        format!(
            "no group {:?} under prefix {:?} in {url}",
            store_args.group, store_args.prefix
        )
    })?;
    let states = store.partitions(partitions).await?;
    let members = store.live_members().await?;
    // The feed says how far the log goes, and when the oldest event a partition lacks was
    // written; without the server only positions are shown.
    let mut source = Source::new(&store_args.source, store_args.token.as_deref()).await?;
    let end = source.end().await.ok();
    let mut rows = Vec::new();
    for state in states {
        let lag_events = end.map(|end| end.saturating_sub(state.position));
        let lag_seconds = match lag_events {
            Some(0) => Some(0.0),
            Some(_) => source
                .age_of(state.position)
                .await
                .ok()
                .flatten()
                .map(|age| age.as_secs_f64()),
            None => None,
        };
        rows.push(serde_json::json!({
            "partition": state.partition,
            "owner": state.owner,
            "token": state.token,
            "lease_remaining_ms": state.lease_remaining_ms,
            "position": state.position,
            "lag_events": lag_events,
            "lag_seconds": lag_seconds,
        }));
    }
    if args.json {
        let status = serde_json::json!({
            "group": store_args.group,
            "partitions": partitions,
            "members": members,
            "end": end,
            "partition_states": rows,
        });
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    match end {
        Some(end) => println!(
            "group {}: {partitions} partitions, {} live members, feed end {end}",
            store_args.group,
            members.len()
        ),
        None => println!(
            "group {}: {partitions} partitions, {} live members (feed unreachable: lag unknown)",
            store_args.group,
            members.len()
        ),
    }
    println!(
        "{:>9}  {:<18} {:>6} {:>9} {:>12} {:>11} {:>12}",
        "partition", "owner", "token", "lease", "position", "lag events", "lag seconds"
    );
    let show = |value: &serde_json::Value| match value {
        serde_json::Value::Null => "-".to_owned(),
        value => value.to_string(),
    };
    for row in rows {
        let owner = row["owner"].as_str().unwrap_or("-");
        let lease = format!(
            "{:.1}s",
            row["lease_remaining_ms"].as_u64().unwrap_or(0) as f64 / 1000.0
        );
        let lag_seconds = row["lag_seconds"]
            .as_f64()
            .map_or("-".to_owned(), |seconds| format!("{seconds:.3}"));
        println!(
            "{:>9}  {:<18} {:>6} {:>9} {:>12} {:>11} {:>12}",
            show(&row["partition"]),
            owner,
            show(&row["token"]),
            lease,
            show(&row["position"]),
            show(&row["lag_events"]),
            lag_seconds
        );
    }
    Ok(())
}

fn rebuild_embedded(args: RunArgs) -> anyhow::Result<()> {
    assert!(args.rebuild);
    let log_dir = args.data_dir.join("log");
    if !log_dir.is_dir() {
        anyhow::bail!(
            "{} holds no log directory; is it a tally data directory?",
            args.data_dir.display()
        );
    }
    let (log, _) = SegmentedLog::open(&log_dir, LogOptions::default()).with_context(|| {
        format!(
            "cannot open the log of {} (a running server holds it: stop it first)",
            args.data_dir.display()
        )
    })?;
    let log_end = log.next_position();
    let reader = log.reader();
    let path = args.data_dir.join(READ_MODEL_FILE_NAME);
    let offline = args.offline_priority.executor();
    eprintln!(
        "tally: rebuilding {} from the {log_end} events of the log (offline isolation: {})",
        path.display(),
        offline.isolation().as_str()
    );
    let started = Instant::now();
    let job_path = path.clone();
    let job = offline.spawn_job(REBUILD_JOB, "events", move |progress| {
        rebuild(&job_path, reader, log_end, progress).map_err(|error| error.to_string())
    })?;
    let position = follow(job, "rebuilding").map_err(anyhow::Error::msg)?;
    drop(log);
    println!(
        "rebuilt {}: {position} events in {:.1} s",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
