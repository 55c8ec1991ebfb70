//! `tally bench-offline`: what offline work in the same process costs the online path.
//!
//! It measures online latency at a fixed rate of single-transfer requests in three conditions:
//! `alone`; `idle`, with a full read model rebuild and a `verify` of a large data directory
//! running at the same time on the offline executor at idle priority; and `normal`, the same
//! with the executor at normal priority. Each condition runs in a fresh child process (this
//! binary with `--condition`), which serves the HTTP API in-process on a fresh data directory,
//! drives it from the same process, and runs the offline work on the server's own executor:
//! online and offline work share one process, as they do in `tally serve`.
//!
//! The load is open-loop: request `i` is due at `start + i / rate`, whatever happened to the
//! ones before, and its latency counts from when it was due, so a stall shows up in every
//! request it delayed (no coordinated omission). With offline work, the window lasts until the
//! offline work is done (at least `--duration`), so the figures cover only time under
//! contention. The child prints one JSON line; the parent prints a table and a JSON summary with
//! the ratios to `alone`.
//!
//! Beside that load, a probe writes one transfer every [`LOOKUP_INTERVAL`] and reads it back at
//! once (`GET /v1/transfers/{id}`), which waits until the read model has projected it: the
//! lookup latency it reports is what read-your-writes costs, so that a change which moves work
//! off the requests' path onto the read model's shows its price too.
//!
//! `--rounds N` runs the conditions in turn N times (alone, idle, normal, alone, ...) and
//! compares each condition's median over its runs. On a shared virtual machine one run's p99
//! varies more than the effect measured (single runs of `alone` gave 3.8 to 82.8 ms within an
//! hour on 2026-12-03), and a stall of the host lands on whichever run is going; interleaving
//! spreads slow stretches over every condition, and the median leaves out the run one hit.
//!
//! `--offline-in child` runs the same offline work, on an executor of the same priority, in a
//! grandchild process instead (this binary with `--offline-only`): a control that tells what
//! sharing the process costs the online path from what sharing the machine does.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use hyper::{Method, StatusCode};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tally_log::{EventLog, LogOptions, SegmentedLog};
use tally_offline::{Job, OfflineConfig, OfflineExecutor, Priority};

use super::{cpu_seconds, percentile};
use tally_project::http::{Connection, Endpoint};

/// Longest a window with offline work may last: a bigger offline data directory than this
/// allows is a mistake in the setup, not a measurement.
const WINDOW_MAX: Duration = Duration::from_secs(600);
/// Connections used to create and fund the accounts (not measured).
const SETUP_CONNECTIONS: usize = 16;
/// One row of `--timeline`.
const TIMELINE_SLICE: Duration = Duration::from_millis(100);
/// How often the read-your-writes probe writes a transfer and looks it up (50 a second, on a
/// connection of its own, beside the `--rate` load).
const LOOKUP_INTERVAL: Duration = Duration::from_millis(20);
/// Most rounds of `--rounds`: a round of all three conditions takes two minutes or more with the
/// default window, so 50 are well over an hour and a half.
const ROUNDS_MAX: i64 = 50;

/// Options of `tally bench-offline`.
#[derive(clap::Args, Debug, Clone)]
pub struct ColocationArgs {
    /// A large data directory (made with `tally bench --data-dir DIR ...`) whose log is verified
    /// and projected into a fresh read model as the offline work. It is only read.
    #[arg(long, value_name = "DIR")]
    pub offline_data: PathBuf,

    /// Single-transfer requests per second, due at fixed intervals.
    #[arg(long, value_name = "N", default_value_t = 4000)]
    pub rate: u64,

    /// Seconds of measured load (with offline work: at least this, until it is done).
    #[arg(long, value_name = "S", default_value_t = 30)]
    pub duration: u64,

    /// Seconds of unmeasured load before the window.
    #[arg(long, value_name = "S", default_value_t = 3)]
    pub warmup: u64,

    /// Accounts the transfers move between.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub accounts: u64,

    /// Connections the requests are spread over; a request waits for a free one.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub connections: usize,

    /// How many times to run the conditions, in turn (alone, idle, normal, alone, ...); the
    /// summary compares each condition's median over its runs.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=ROUNDS_MAX))]
    pub rounds: u32,

    /// The conditions to run, in this order within a round; the ratios need `alone`.
    #[arg(long, value_enum, value_name = "LIST", value_delimiter = ',',
          default_values_t = [Condition::Alone, Condition::Idle, Condition::Normal])]
    pub conditions: Vec<Condition>,

    /// The offline work: both jobs (what the figures in the README use), or one of them alone,
    /// to tell their effects apart.
    #[arg(long, value_enum, default_value_t = Work::Both)]
    pub offline_work: Work,

    /// Where the rebuild writes its redb file; by default the condition's temporary directory,
    /// on the same filesystem as the live log. A tmpfs here tells the rebuild's disk writes
    /// apart from its CPU use.
    #[arg(long, value_name = "DIR")]
    pub rebuild_dir: Option<PathBuf>,

    /// Where the offline work runs: on the server's own executor in the same process (what the
    /// figures in the README and the target are about), or in a child process on an executor
    /// of the same priority (a control: what sharing the process costs).
    #[arg(long, value_enum, default_value_t = OfflineIn::Process)]
    pub offline_in: OfflineIn,

    /// Run only this condition in this process and print its JSON line (used by the parent).
    #[arg(long, value_enum)]
    pub condition: Option<Condition>,

    /// Write the condition's window to FILE as CSV, one row per 100 ms: the requests due in it,
    /// their p99 and longest latency, the events the rebuild had projected and the records the
    /// verify had checked by then (offline work in this process only), and the size of the
    /// rebuild's file. It shows what the offline work was doing when latency rose. Needs
    /// `--condition`: one file per condition.
    #[arg(long, value_name = "FILE", requires = "condition")]
    pub timeline: Option<PathBuf>,

    /// Run only the condition's offline work, print its JSON line and exit (used by a condition
    /// with `--offline-in child`; needs `--condition` and `--rebuild-dir`).
    #[arg(long, hide = true)]
    pub offline_only: bool,
}

/// Where a condition's offline work runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OfflineIn {
    /// On the server's executor, in the process that serves the online load.
    Process,
    /// In a child process of its own, on an executor of the same priority.
    Child,
}

/// Which offline jobs run in the `idle` and `normal` conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Work {
    /// A read model rebuild and a verify, at the same time.
    Both,
    /// Only the verify (reads and CPU).
    Verify,
    /// Only the rebuild (reads, CPU and writes to a redb file).
    Rebuild,
    /// A control: one offline thread that only spins for `--duration` seconds (CPU, no memory
    /// traffic, no I/O, no allocation), to tell what sharing the CPU costs from the rest.
    Spin,
}

/// What runs next to the online load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Condition {
    /// Nothing.
    Alone,
    /// A rebuild and a verify on the offline executor at idle priority.
    Idle,
    /// The same at normal priority.
    Normal,
}

/// One condition's figures: the child's JSON line.
#[derive(Debug, Serialize, Deserialize)]
struct Measured {
    condition: Condition,
    offline_in: OfflineIn,
    isolation: String,
    rate: u64,
    requests: u64,
    failed: u64,
    window_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    /// Read-your-writes: lookups of a transfer just written, and their latency (see the module
    /// docs); `lookups_failed` counts the writes or lookups that did not succeed.
    lookups: u64,
    lookups_failed: u64,
    lookup_p50_ms: f64,
    lookup_p99_ms: f64,
    lookup_max_ms: f64,
    /// CPU time of the whole process over the window, as a share of all cores.
    cpu_share: f64,
    /// Seconds the offline jobs took (0 alone).
    verify_s: f64,
    rebuild_s: f64,
    /// Events of the offline data directory's log.
    offline_events: u64,
    /// Online threads this process's idle threads moved to their own core over the run
    /// (`tally_offline_handovers_total`; offline work in a child process hands over none here).
    handovers: u64,
    /// The machine's 1-minute load average at the start and the end of the window: the machine
    /// is shared, and other processes' load shows here.
    loadavg_start: f64,
    loadavg_end: f64,
    /// Share of the machine's CPU time the hypervisor gave to others over the window (steal);
    /// `None` where `/proc/stat` cannot be read.
    steal_share: Option<f64>,
    /// Share of the window in which every task of the machine that could run was waiting for
    /// I/O (PSI `full`, `/proc/pressure/io`): the log's own syncs count, so it is a figure to
    /// compare between runs of one condition, where a stall of a shared disk stands out.
    /// `None` without PSI.
    io_full_share: Option<f64>,
}

/// Runs every condition in a child process and prints the comparison.
pub fn run(args: ColocationArgs) -> anyhow::Result<()> {
    validate(&args)?;
    if let Some(condition) = args.condition {
        if args.offline_only {
            return run_offline_only(&args, condition);
        }
        return run_condition(&args, condition);
    }
    let mut runs = Vec::new();
    for round in 1..=args.rounds {
        for &condition in &args.conditions {
            eprintln!(
                "bench-offline: round {round} of {}, condition {condition:?}...",
                args.rounds
            );
            let measured = child(&args, condition)?;
            eprintln!(
                "bench-offline: {:?}: p50 {:.3} ms, p99 {:.3} ms, p999 {:.3} ms over {} requests in {:.1} s, lookup p99 {:.3} ms, cpu {:.0}%, offline verify {:.1} s rebuild {:.1} s ({})",
                measured.condition, measured.p50_ms, measured.p99_ms, measured.p999_ms, measured.requests,
                measured.window_s, measured.lookup_p99_ms, measured.cpu_share * 100.0, measured.verify_s, measured.rebuild_s, measured.isolation
            );
            runs.push(measured);
        }
    }
    print_summary(&summarize(&args.conditions, &runs), args.rounds);
    if let Some(failed) = runs
        .iter()
        .find(|run| run.failed > 0 || run.lookups_failed > 0)
    {
        bail!(
            "{} requests and {} read-your-writes lookups failed in condition {:?}",
            failed.failed,
            failed.lookups_failed,
            failed.condition
        );
    }
    Ok(())
}

fn validate(args: &ColocationArgs) -> anyhow::Result<()> {
    if !args.offline_data.join("log").is_dir() {
        bail!(
            "{} holds no log directory: make one first, e.g. `tally bench --data-dir {} --transfers 2000000 --accounts 10000`",
            args.offline_data.display(),
            args.offline_data.display()
        );
    }
    if args.rate == 0 || args.duration == 0 || args.connections == 0 || args.accounts < 2 {
        bail!("--rate, --duration and --connections must be at least 1, --accounts at least 2");
    }
    if let Some(repeated) = args
        .conditions
        .iter()
        .enumerate()
        .find_map(|(i, condition)| {
            args.conditions[..i]
                .contains(condition)
                .then_some(condition)
        })
    {
        bail!(
            "--conditions names {} twice: name each once (--rounds repeats them)",
            value_name(*repeated)
        );
    }
    Ok(())
}

fn child(args: &ColocationArgs, condition: Condition) -> anyhow::Result<Measured> {
    let output = condition_command(args, condition)?
        .env(
            "TALLY_LOG",
            std::env::var("TALLY_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .output()
        .context("cannot run a condition's child process")?;
    result_line(&output, &format!("condition {condition:?}"))
}

/// The child process that runs `condition` as `args` ask.
fn condition_command(
    args: &ColocationArgs,
    condition: Condition,
) -> anyhow::Result<std::process::Command> {
    let mut command = this_benchmark(args, condition, args.rebuild_dir.as_deref())?;
    command
        .args(["--rate", &args.rate.to_string()])
        .args(["--warmup", &args.warmup.to_string()])
        .args(["--accounts", &args.accounts.to_string()])
        .args(["--connections", &args.connections.to_string()])
        .args(["--offline-in", &value_name(args.offline_in)]);
    Ok(command)
}

/// This benchmark again, as a child process that runs `condition` (or its offline work), with the
/// options every such child takes from `args`, and the rebuild's file under `rebuild_dir`.
fn this_benchmark(
    args: &ColocationArgs,
    condition: Condition,
    rebuild_dir: Option<&std::path::Path>,
) -> anyhow::Result<std::process::Command> {
    let exe = std::env::current_exe().context("cannot find this executable to run a condition")?;
    let mut command = std::process::Command::new(exe);
    command
        .arg("bench-offline")
        .arg("--offline-data")
        .arg(&args.offline_data)
        .args(["--duration", &args.duration.to_string()])
        .args(["--offline-work", &value_name(args.offline_work)])
        .args(["--condition", &value_name(condition)])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some(dir) = rebuild_dir {
        command.arg("--rebuild-dir").arg(dir);
    }
    Ok(command)
}

/// How `value` is spelled on the command line.
fn value_name(value: impl clap::ValueEnum) -> String {
    value
        .to_possible_value()
        .expect("every value of these options has a name")
        .get_name()
        .to_string()
}

/// The JSON line a child process of this benchmark (`what`) printed as its result.
fn result_line<T: serde::de::DeserializeOwned>(
    output: &std::process::Output,
    what: &str,
) -> anyhow::Result<T> {
    if !output.status.success() {
        bail!("{what} failed ({})", output.status);
    }
    let line = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(line.trim())
        .with_context(|| format!("{what} printed no result line: {line}"))
}

/// One condition over its runs: the median of each figure, and each run's p99.
#[derive(Debug)]
struct Summary {
    condition: Condition,
    offline_in: OfflineIn,
    isolation: String,
    rate: u64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    p99_ms_each: Vec<f64>,
    lookup_p99_ms: f64,
    requests: u64,
    window_s: f64,
    cpu_share: f64,
    verify_s: f64,
    rebuild_s: f64,
    offline_events: u64,
    handovers: f64,
    /// The lowest and highest 1-minute load average seen at the start or end of a run.
    loadavg: (f64, f64),
    /// Each run's [`Measured::steal_share`] and [`Measured::io_full_share`].
    steal_share_each: Vec<Option<f64>>,
    io_full_share_each: Vec<Option<f64>>,
}

/// Each condition of `conditions` (in that order) over its runs among `runs`.
fn summarize(conditions: &[Condition], runs: &[Measured]) -> Vec<Summary> {
    conditions
        .iter()
        .filter_map(|&condition| {
            let mine: Vec<&Measured> = runs.iter().filter(|r| r.condition == condition).collect();
            let first = mine.first()?;
            let median_of = |figure: fn(&Measured) -> f64| median(mine.iter().map(|r| figure(r)));
            let loads = mine.iter().flat_map(|r| [r.loadavg_start, r.loadavg_end]);
            Some(Summary {
                condition,
                offline_in: first.offline_in,
                isolation: first.isolation.clone(),
                rate: first.rate,
                p50_ms: median_of(|r| r.p50_ms),
                p99_ms: median_of(|r| r.p99_ms),
                p999_ms: median_of(|r| r.p999_ms),
                p99_ms_each: mine.iter().map(|r| r.p99_ms).collect(),
                lookup_p99_ms: median_of(|r| r.lookup_p99_ms),
                requests: mine.iter().map(|r| r.requests).sum(),
                window_s: median_of(|r| r.window_s),
                cpu_share: median_of(|r| r.cpu_share),
                verify_s: median_of(|r| r.verify_s),
                rebuild_s: median_of(|r| r.rebuild_s),
                offline_events: first.offline_events,
                handovers: median_of(|r| r.handovers as f64),
                loadavg: (
                    loads.clone().fold(f64::INFINITY, f64::min),
                    loads.fold(f64::NEG_INFINITY, f64::max),
                ),
                steal_share_each: mine.iter().map(|r| r.steal_share).collect(),
                io_full_share_each: mine.iter().map(|r| r.io_full_share).collect(),
            })
        })
        .collect()
}

/// The median of `values` (the mean of the middle two for an even count); 0 for none.
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut sorted: Vec<f64> = values.collect();
    sorted.sort_unstable_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn print_summary(summaries: &[Summary], rounds: u32) {
    let alone = summaries.iter().find(|s| s.condition == Condition::Alone);
    let ratio = |value: f64, base: Option<f64>| base.filter(|b| *b > 0.0).map(|b| value / b);
    let rows: Vec<serde_json::Value> = summaries
        .iter()
        .map(|s| {
            serde_json::json!({
                "condition": s.condition,
                "offline_in": s.offline_in,
                "isolation": s.isolation,
                "runs": s.p99_ms_each.len(),
                "p50_ms": round3(s.p50_ms),
                "p99_ms": round3(s.p99_ms),
                "p999_ms": round3(s.p999_ms),
                "p50_ratio": ratio(s.p50_ms, alone.map(|a| a.p50_ms)),
                "p99_ratio": ratio(s.p99_ms, alone.map(|a| a.p99_ms)),
                "p999_ratio": ratio(s.p999_ms, alone.map(|a| a.p999_ms)),
                "p99_ms_each": s.p99_ms_each,
                "lookup_p99_ms": round3(s.lookup_p99_ms),
                "requests": s.requests,
                "window_s": round3(s.window_s),
                "cpu_share": round3(s.cpu_share),
                "verify_s": round3(s.verify_s),
                "rebuild_s": round3(s.rebuild_s),
                "offline_events": s.offline_events,
                "handovers": s.handovers,
                "loadavg_min": s.loadavg.0,
                "loadavg_max": s.loadavg.1,
                "steal_share_each": s.steal_share_each,
                "io_full_share_each": s.io_full_share_each,
            })
        })
        .collect();
    if rounds > 1 {
        eprintln!("bench-offline: medians over {rounds} rounds");
    }
    eprintln!(
        "condition  p50 ms   p99 ms   p999 ms  p99/alone  p999/alone  lookup p99  cpu   verify s  rebuild s  load     each run: p99 ms [steal % / I/O full stall %]"
    );
    for (s, row) in summaries.iter().zip(&rows) {
        let percent =
            |share: Option<f64>| share.map_or("-".into(), |s| format!("{:.0}", s * 100.0));
        let noise = s.steal_share_each.iter().zip(&s.io_full_share_each);
        let each: Vec<String> = s
            .p99_ms_each
            .iter()
            .zip(noise)
            .map(|(p99, (steal, io))| format!("{p99:.1} [{} / {}]", percent(*steal), percent(*io)))
            .collect();
        eprintln!(
            "{:<9} {:>7.3} {:>8.3} {:>9.3} {:>9.2} {:>10.2} {:>11.3} {:>4.0}% {:>8.1} {:>9.1}  {:.1}-{:.1}  {}",
            format!("{:?}", s.condition).to_lowercase(),
            s.p50_ms,
            s.p99_ms,
            s.p999_ms,
            row["p99_ratio"].as_f64().unwrap_or(f64::NAN),
            row["p999_ratio"].as_f64().unwrap_or(f64::NAN),
            s.lookup_p99_ms,
            s.cpu_share * 100.0,
            s.verify_s,
            s.rebuild_s,
            s.loadavg.0,
            s.loadavg.1,
            each.join(" · ")
        );
    }
    println!(
        "{}",
        serde_json::json!({
            "rate": summaries.first().map(|s| s.rate),
            "rounds": rounds,
            "conditions": rows,
        })
    );
}

/// One condition in this process; prints its JSON line and exits without a graceful shutdown
/// (the data directory is temporary).
fn run_condition(args: &ColocationArgs, condition: Condition) -> anyhow::Result<()> {
    let priority = match condition {
        Condition::Normal => Priority::Normal,
        Condition::Alone | Condition::Idle => Priority::Idle,
    };
    let offline = OfflineExecutor::new(OfflineConfig::with_priority(priority));
    let runtime = crate::runtime()?;
    let measured = runtime.block_on(measure(args, condition, offline))?;
    println!("{}", serde_json::to_string(&measured)?);
    // The in-process server has no stop signal of its own; the process ends here.
    std::process::exit(0)
}

async fn measure(
    args: &ColocationArgs,
    condition: Condition,
    offline: OfflineExecutor,
) -> anyhow::Result<Measured> {
    let data = tempfile::tempdir().context("cannot create a temporary data directory")?;
    let mut config = tally_server::ServeConfig::new(
        data.path().join("data"),
        "127.0.0.1:0".parse().expect("a valid address"),
    );
    config.auth = tally_server::AuthConfig::Disabled;
    config.engine.offline = offline.clone();
    let (listening, address) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let served = tally_server::serve(config, move |address| {
            let _ = listening.send(address);
        })
        .await;
        if let Err(error) = served {
            eprintln!("bench-offline: the server stopped: {error}");
            std::process::exit(2);
        }
    });
    let address = address.await.context("the server did not start")?;
    let endpoint = Endpoint::parse(&format!("http://{address}"), None).await?;
    setup_accounts(&endpoint, args.accounts).await?;

    let load = Load::new(args, endpoint);
    load.run(Duration::from_secs(args.warmup), None).await?;

    let loadavg_start = loadavg();
    let counters_start = MachineCounters::read();
    let rusage_before = cpu_seconds();
    let handovers_before = tally_offline::handovers();
    let started = Instant::now();
    let scratch = args.rebuild_dir.as_deref().unwrap_or(data.path());
    let offline_work = match (condition, args.offline_in) {
        (Condition::Alone, _) => None,
        (Condition::Idle | Condition::Normal, OfflineIn::Process) => {
            Some(OfflineRun::InProcess(Box::new(OfflineWork::start(
                &offline,
                &args.offline_data,
                scratch,
                args.offline_work,
                Duration::from_secs(args.duration),
            )?)))
        }
        (Condition::Idle | Condition::Normal, OfflineIn::Child) => Some(OfflineRun::Child(
            OfflineChild::spawn(args, condition, scratch)?,
        )),
    };
    let sampler = args.timeline.as_ref().map(|_| {
        let jobs = match &offline_work {
            Some(OfflineRun::InProcess(work)) => work.progress(),
            Some(OfflineRun::Child(_)) | None => OfflineProgress::default(),
        };
        // Started just before the load, whose due times count from its own start.
        Sampler::start(Instant::now(), jobs, scratch.to_path_buf())
    });
    let minimum = Duration::from_secs(args.duration);
    let latencies = load.run(minimum, offline_work.as_ref()).await?;
    let window = started.elapsed();
    if let (Some(path), Some(sampler)) = (&args.timeline, sampler) {
        write_timeline(path, &latencies, &sampler.stop())
            .with_context(|| format!("cannot write the timeline to {}", path.display()))?;
    }
    let cpu = cpu_seconds() - rusage_before;
    let loadavg_end = loadavg();
    let (steal_share, io_full_share) = MachineCounters::read().shares_since(&counters_start);
    let (isolation, (verify_s, rebuild_s, offline_events)) = match offline_work {
        Some(OfflineRun::InProcess(work)) => {
            (offline.isolation().as_str().to_string(), work.finish()?)
        }
        Some(OfflineRun::Child(child)) => {
            let done = child.finish()?;
            (
                done.isolation,
                (done.verify_s, done.rebuild_s, done.offline_events),
            )
        }
        None => (offline.isolation().as_str().to_string(), (0.0, 0.0, 0)),
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let mut sorted = latencies.latencies_ms;
    sorted.sort_unstable_by(f64::total_cmp);
    let mut lookups = latencies.lookups_ms;
    lookups.sort_unstable_by(f64::total_cmp);
    Ok(Measured {
        condition,
        offline_in: args.offline_in,
        isolation,
        rate: args.rate,
        requests: sorted.len() as u64,
        failed: latencies.failed,
        window_s: round3(window.as_secs_f64()),
        p50_ms: round3(percentile(&sorted, 0.50)),
        p99_ms: round3(percentile(&sorted, 0.99)),
        p999_ms: round3(percentile(&sorted, 0.999)),
        max_ms: round3(sorted.last().copied().unwrap_or(0.0)),
        lookups: lookups.len() as u64,
        lookups_failed: latencies.lookups_failed,
        lookup_p50_ms: round3(percentile(&lookups, 0.50)),
        lookup_p99_ms: round3(percentile(&lookups, 0.99)),
        lookup_max_ms: round3(lookups.last().copied().unwrap_or(0.0)),
        cpu_share: round3(cpu / window.as_secs_f64() / cores),
        verify_s: round3(verify_s),
        rebuild_s: round3(rebuild_s),
        offline_events,
        handovers: tally_offline::handovers() - handovers_before,
        loadavg_start,
        loadavg_end,
        steal_share: steal_share.map(round3),
        io_full_share: io_full_share.map(round3),
    })
}

/// The offline work of one condition: a verify and a rebuild of the offline data directory
/// (or one of them), on the server's executor.
struct OfflineWork {
    verify: Option<Job<tally_engine::DataDirReport>>,
    rebuild: Option<Job<u64>>,
    spin: Option<Job<u64>>,
    /// The rebuild's file, removed at the end.
    target: PathBuf,
    /// Holds the log's lock while the rebuild reads it.
    _log: SegmentedLog,
}

impl OfflineWork {
    fn start(
        offline: &OfflineExecutor,
        dir: &std::path::Path,
        scratch: &std::path::Path,
        work: Work,
        spin_for: Duration,
    ) -> anyhow::Result<OfflineWork> {
        let (log, _) =
            SegmentedLog::open(&dir.join("log"), LogOptions::default()).with_context(|| {
                format!(
                    "cannot open the log of {} (is a server running on it?)",
                    dir.display()
                )
            })?;
        let target = scratch.join(format!("rebuilt-{}.redb", std::process::id()));
        let rebuild = match work {
            Work::Both | Work::Rebuild => {
                let (reader, end) = (log.reader(), log.next_position());
                let target = target.clone();
                Some(
                    offline.spawn_job(tally_read::REBUILD_JOB, "events", move |progress| {
                        tally_read::rebuild(&target, reader, end, progress)
                            .map_err(|error| error.to_string())
                    })?,
                )
            }
            Work::Verify | Work::Spin => None,
        };
        let verify = match work {
            Work::Both | Work::Verify => Some(tally_engine::offline::spawn_verify(
                offline,
                dir.to_path_buf(),
            )?),
            Work::Rebuild | Work::Spin => None,
        };
        let spin = match work {
            Work::Spin => Some(offline.spawn_job("spin", "iterations", move |progress| {
                let mut iterations: u64 = 0;
                let started = Instant::now();
                while started.elapsed() < spin_for {
                    for _ in 0..1_000 {
                        iterations = std::hint::black_box(iterations + 1);
                    }
                    tally_offline::yield_point();
                    progress.set_done(iterations);
                }
                Ok(iterations)
            })?),
            Work::Both | Work::Verify | Work::Rebuild => None,
        };
        Ok(OfflineWork {
            verify,
            rebuild,
            spin,
            target,
            _log: log,
        })
    }

    fn progress(&self) -> OfflineProgress {
        OfflineProgress {
            rebuild: self.rebuild.as_ref().map(|job| job.progress().clone()),
            verify: self.verify.as_ref().map(|job| job.progress().clone()),
        }
    }

    fn is_finished(&self) -> bool {
        self.verify.as_ref().is_none_or(Job::is_finished)
            && self.rebuild.as_ref().is_none_or(Job::is_finished)
            && self.spin.as_ref().is_none_or(Job::is_finished)
    }

    /// Seconds each took (0 for one not run), and the events of the log (0 without a rebuild).
    fn finish(self) -> anyhow::Result<(f64, f64, u64)> {
        let seconds = |progress: &tally_offline::Progress| progress.status().elapsed.as_secs_f64();
        let verify_s = self
            .verify
            .as_ref()
            .map_or(0.0, |job| seconds(job.progress()));
        let rebuild_s = self
            .rebuild
            .as_ref()
            .map_or(0.0, |job| seconds(job.progress()));
        if let Some(verify) = self.verify {
            let report = verify.join().map_err(anyhow::Error::msg)?;
            if !report.is_ok() {
                bail!(
                    "the offline data directory {} does not verify",
                    report.dir.display()
                );
            }
        }
        if let Some(spin) = self.spin {
            spin.join().map_err(anyhow::Error::msg)?;
        }
        let events = match self.rebuild {
            Some(rebuild) => rebuild.join().map_err(anyhow::Error::msg)?,
            None => 0,
        };
        // Best effort: a file left in a tmpfs would hold memory until the next boot.
        let _ = std::fs::remove_file(&self.target);
        Ok((verify_s, rebuild_s, events))
    }
}

/// A condition's offline work, in this process or in a child.
enum OfflineRun {
    InProcess(Box<OfflineWork>),
    Child(OfflineChild),
}

impl OfflineRun {
    fn is_finished(&self) -> bool {
        match self {
            OfflineRun::InProcess(work) => work.is_finished(),
            OfflineRun::Child(child) => child.is_finished(),
        }
    }
}

/// What the offline work's own process prints (`--offline-only`).
#[derive(Debug, Serialize, Deserialize)]
struct OfflineDone {
    isolation: String,
    verify_s: f64,
    rebuild_s: f64,
    offline_events: u64,
}

/// The offline work running in a child process (`--offline-in child`).
///
/// Dropped before [`OfflineChild::finish`] (a condition that failed mid-window), it kills the
/// child, which would otherwise go on rebuilding and verifying after the benchmark has stopped.
struct OfflineChild {
    /// Locked only by the load's polling task, to ask whether the child has exited; `None` once
    /// finished or killed.
    process: std::sync::Mutex<Option<std::process::Child>>,
}

impl OfflineChild {
    fn spawn(
        args: &ColocationArgs,
        condition: Condition,
        scratch: &std::path::Path,
    ) -> anyhow::Result<OfflineChild> {
        let process = OfflineChild::command(args, condition, scratch)?
            .spawn()
            .context("cannot start the offline work's process")?;
        Ok(OfflineChild {
            process: std::sync::Mutex::new(Some(process)),
        })
    }

    /// The child process that runs `condition`'s offline work, its rebuild's file under `scratch`.
    fn command(
        args: &ColocationArgs,
        condition: Condition,
        scratch: &std::path::Path,
    ) -> anyhow::Result<std::process::Command> {
        let mut command = this_benchmark(args, condition, Some(scratch))?;
        command.arg("--offline-only").stdout(Stdio::piped());
        Ok(command)
    }

    fn is_finished(&self) -> bool {
        let mut process = self
            .process
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // An error here is reported by `finish`, which waits again.
        !matches!(
            process.as_mut().map(std::process::Child::try_wait),
            Some(Ok(None))
        )
    }

    fn finish(mut self) -> anyhow::Result<OfflineDone> {
        let process = self.take().expect("an offline child is finished once");
        let output = process
            .wait_with_output()
            .context("cannot wait for the offline work's process")?;
        result_line(&output, "the offline work's process")
    }

    fn take(&mut self) -> Option<std::process::Child> {
        self.process
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }
}

impl Drop for OfflineChild {
    fn drop(&mut self) {
        if let Some(mut process) = self.take() {
            // Errors only mean it has exited already; wait reaps it either way.
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}

/// The offline work of a condition alone, in this process, for a condition that runs it in a
/// child (`--offline-in child`): prints its [`OfflineDone`] line.
fn run_offline_only(args: &ColocationArgs, condition: Condition) -> anyhow::Result<()> {
    let priority = match condition {
        Condition::Normal => Priority::Normal,
        Condition::Idle => Priority::Idle,
        Condition::Alone => bail!("--offline-only needs --condition idle or normal"),
    };
    let Some(scratch) = args.rebuild_dir.as_deref() else {
        bail!("--offline-only needs --rebuild-dir");
    };
    let offline = OfflineExecutor::new(OfflineConfig::with_priority(priority));
    let work = OfflineWork::start(
        &offline,
        &args.offline_data,
        scratch,
        args.offline_work,
        Duration::from_secs(args.duration),
    )?;
    let started = Instant::now();
    while !work.is_finished() && started.elapsed() < WINDOW_MAX {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (verify_s, rebuild_s, offline_events) = work.finish()?;
    let done = OfflineDone {
        isolation: offline.isolation().as_str().to_string(),
        verify_s: round3(verify_s),
        rebuild_s: round3(rebuild_s),
        offline_events,
    };
    println!("{}", serde_json::to_string(&done)?);
    Ok(())
}

/// The progress of a condition's offline jobs, where the sampler can read it.
#[derive(Default)]
struct OfflineProgress {
    rebuild: Option<tally_offline::Progress>,
    verify: Option<tally_offline::Progress>,
}

/// What the offline work had done at one moment of the window (`--timeline`).
struct Sample {
    at: Duration,
    rebuilt: Option<u64>,
    verified: Option<u64>,
    rebuild_file_bytes: u64,
}

/// A thread that samples the offline work every [`TIMELINE_SLICE`] for `--timeline`.
struct Sampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Sample>>,
}

impl Sampler {
    fn start(started: Instant, jobs: OfflineProgress, scratch: PathBuf) -> Sampler {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let done = |job: &Option<tally_offline::Progress>| {
                job.as_ref().map(|progress| progress.status().done)
            };
            let mut samples = Vec::new();
            // One sample more after the stop, so that the last one sees the work's end.
            loop {
                samples.push(Sample {
                    at: started.elapsed(),
                    rebuilt: done(&jobs.rebuild),
                    verified: done(&jobs.verify),
                    rebuild_file_bytes: rebuild_file_bytes(&scratch),
                });
                if stopped.load(Ordering::Relaxed) || started.elapsed() >= WINDOW_MAX {
                    return samples;
                }
                std::thread::sleep(TIMELINE_SLICE);
            }
        });
        Sampler { stop, thread }
    }

    fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// Bytes of the rebuild files in `scratch` (the one of this process or of its child).
fn rebuild_file_bytes(scratch: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(scratch) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.starts_with("rebuilt-") && name.ends_with(".redb")
        })
        .filter_map(|entry| entry.metadata().ok())
        .map(|metadata| metadata.len())
        .sum()
}

/// Writes `--timeline`: per slice, the requests due in it and the last sample taken by its end
/// (by the end of the sampling, for the last slice).
fn write_timeline(
    path: &std::path::Path,
    latencies: &Latencies,
    samples: &[Sample],
) -> std::io::Result<()> {
    use std::io::Write;
    let slice_s = TIMELINE_SLICE.as_secs_f64();
    let slices = latencies
        .due_s
        .iter()
        .map(|due| (due / slice_s) as usize + 1)
        .max()
        .unwrap_or(0);
    let mut by_slice: Vec<Vec<f64>> = vec![Vec::new(); slices];
    for (due, latency) in latencies.due_s.iter().zip(&latencies.latencies_ms) {
        by_slice[(due / slice_s) as usize].push(*latency);
    }
    let count = |value: Option<u64>| value.map_or(String::new(), |value| value.to_string());
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(
        out,
        "t_s,requests,p99_ms,max_ms,rebuild_events,verify_records,rebuild_file_mb"
    )?;
    let mut samples = samples.iter().peekable();
    let mut last: Option<&Sample> = None;
    for (index, in_slice) in by_slice.iter_mut().enumerate() {
        let end = Duration::from_secs_f64((index + 1) as f64 * slice_s);
        let is_last = index + 1 == slices;
        while let Some(sample) = samples.next_if(|sample| is_last || sample.at <= end) {
            last = Some(sample);
        }
        in_slice.sort_unstable_by(f64::total_cmp);
        writeln!(
            out,
            "{:.1},{},{:.3},{:.3},{},{},{:.1}",
            index as f64 * slice_s,
            in_slice.len(),
            percentile(in_slice, 0.99),
            in_slice.last().copied().unwrap_or(0.0),
            count(last.and_then(|sample| sample.rebuilt)),
            count(last.and_then(|sample| sample.verified)),
            last.map_or(0.0, |sample| sample.rebuild_file_bytes as f64 / 1e6),
        )?;
    }
    out.flush()
}

/// The open-loop online load.
struct Load {
    endpoint: Endpoint,
    rate: u64,
    accounts: u64,
    connections: usize,
    next_id: Arc<AtomicU64>,
}

#[derive(Default)]
struct Latencies {
    latencies_ms: Vec<f64>,
    /// When each request was due, in seconds from the start of the window, in the order of
    /// `latencies_ms`.
    due_s: Vec<f64>,
    failed: u64,
    /// Each read-your-writes lookup's latency (see [`lookup_probe`]); at most one per
    /// [`LOOKUP_INTERVAL`] of a window bounded by [`WINDOW_MAX`].
    lookups_ms: Vec<f64>,
    lookups_failed: u64,
}

impl Load {
    fn new(args: &ColocationArgs, endpoint: Endpoint) -> Load {
        Load {
            endpoint,
            rate: args.rate,
            accounts: args.accounts,
            connections: args.connections,
            next_id: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Sends requests at the rate for `minimum`, and on while `offline` is running (up to
    /// [`WINDOW_MAX`]); returns the latencies, each from when its request was due.
    async fn run(
        &self,
        minimum: Duration,
        offline: Option<&OfflineRun>,
    ) -> anyhow::Result<Latencies> {
        let interval = Duration::from_secs(1) / u32::try_from(self.rate).unwrap_or(u32::MAX);
        let start = tokio::time::Instant::now();
        let next_due = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::with_capacity(self.connections);
        for task in 0..self.connections {
            let mut connection = Connection::new(self.endpoint.clone());
            let (next_due, stop, next_id) = (next_due.clone(), stop.clone(), self.next_id.clone());
            let accounts = self.accounts;
            tasks.push(tokio::spawn(async move {
                let mut rng = rand::rngs::SmallRng::seed_from_u64(task as u64);
                let mut measured = Latencies::default();
                loop {
                    let index = next_due.fetch_add(1, Ordering::Relaxed);
                    let due = start + interval * u32::try_from(index).unwrap_or(u32::MAX);
                    tokio::time::sleep_until(due).await;
                    if stop.load(Ordering::Relaxed) {
                        return measured;
                    }
                    let id = format!("co-t{}", next_id.fetch_add(1, Ordering::Relaxed));
                    let body = transfer_between_random_accounts(&mut rng, accounts, &id);
                    let answer = connection
                        .send(Method::POST, "/v1/transfers", Bytes::from(body))
                        .await;
                    measured
                        .latencies_ms
                        .push(due.elapsed().as_secs_f64() * 1000.0);
                    measured.due_s.push((due - start).as_secs_f64());
                    if !matches!(&answer, Ok(response) if response.status == StatusCode::CREATED) {
                        measured.failed += 1;
                    }
                }
            }));
        }
        let probe = tokio::spawn(lookup_probe(
            Connection::new(self.endpoint.clone()),
            self.accounts,
            self.next_id.clone(),
            stop.clone(),
        ));
        tokio::time::sleep(minimum).await;
        if let Some(offline) = offline {
            while !offline.is_finished() && start.elapsed() < WINDOW_MAX {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        stop.store(true, Ordering::Relaxed);
        let mut all = Latencies::default();
        for task in tasks {
            let measured = task.await.context("a load task panicked")?;
            all.latencies_ms.extend(measured.latencies_ms);
            all.due_s.extend(measured.due_s);
            all.failed += measured.failed;
        }
        (all.lookups_ms, all.lookups_failed) = probe.await.context("the lookup probe panicked")?;
        Ok(all)
    }
}

/// The body of a transfer `id` of 1 between two distinct accounts of `co-0` ..
/// `co-{accounts-1}`, picked by `rng`.
fn transfer_between_random_accounts(rng: &mut impl Rng, accounts: u64, id: &str) -> String {
    let from = rng.random_range(0..accounts);
    let to = (from + rng.random_range(1..accounts)) % accounts;
    format!(r#"{{"id":"{id}","from":"co-{from}","to":"co-{to}","amount":1}}"#)
}

/// Every [`LOOKUP_INTERVAL`] until `stop`, writes a transfer and at once looks it up by id; returns
/// each lookup's latency in ms and how many writes or lookups failed. The lookup waits for the
/// read model to project the transfer (up to 5 s, then `503`), so its latency is the price of
/// reading one's own write.
async fn lookup_probe(
    mut connection: Connection,
    accounts: u64,
    next_id: Arc<AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (Vec<f64>, u64) {
    let mut ticks = tokio::time::interval(LOOKUP_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut latencies_ms, mut failed) = (Vec::new(), 0);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(u64::MAX);
    while !stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        let id = format!("co-l{}", next_id.fetch_add(1, Ordering::Relaxed));
        let body = transfer_between_random_accounts(&mut rng, accounts, &id);
        let written = connection
            .send(Method::POST, "/v1/transfers", Bytes::from(body))
            .await;
        if !matches!(&written, Ok(response) if response.status == StatusCode::CREATED) {
            failed += 1;
            continue;
        }
        let asked = Instant::now();
        let found = connection
            .send(Method::GET, &format!("/v1/transfers/{id}"), Bytes::new())
            .await;
        if matches!(&found, Ok(response) if response.status == StatusCode::OK) {
            latencies_ms.push(asked.elapsed().as_secs_f64() * 1000.0);
        } else {
            failed += 1;
        }
    }
    (latencies_ms, failed)
}

/// Creates and funds `co-0` .. `co-{accounts-1}` (not measured).
async fn setup_accounts(endpoint: &Endpoint, accounts: u64) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..SETUP_CONNECTIONS {
        let mut connection = Connection::new(endpoint.clone());
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= accounts {
                    return anyhow::Ok(());
                }
                for (path, body) in [
                    (
                        "/v1/accounts",
                        format!(r#"{{"id":"co-{index}","ledger":"CO"}}"#),
                    ),
                    (
                        "/v1/deposits",
                        format!(
                            r#"{{"id":"co-d{index}","account":"co-{index}","amount":1000000000}}"#
                        ),
                    ),
                ] {
                    let answer = connection
                        .send(Method::POST, path, Bytes::from(body))
                        .await?;
                    if answer.status != StatusCode::CREATED {
                        bail!("setup: POST {path} answered {}", answer.status);
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.context("a setup task panicked")??;
    }
    Ok(())
}

/// The 1-minute load average of the machine; 0 where `/proc/loadavg` cannot be read.
fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The machine's counters of time this process had no say over, read at both ends of a window.
#[derive(Debug)]
struct MachineCounters {
    /// Every CPU's ticks, and those stolen by the hypervisor (`/proc/stat`).
    cpu_ticks: Option<(u64, u64)>,
    /// PSI's `full` I/O stall total, and when it was read.
    io_full: Option<(Duration, Instant)>,
}

impl MachineCounters {
    fn read() -> MachineCounters {
        let stat = std::fs::read_to_string("/proc/stat").ok();
        let pressure = std::fs::read_to_string("/proc/pressure/io").ok();
        MachineCounters {
            cpu_ticks: stat.as_deref().and_then(cpu_ticks),
            io_full: pressure
                .as_deref()
                .and_then(io_full_stall)
                .map(|total| (total, Instant::now())),
        }
    }

    /// The steal share and the I/O `full` share since `start`, each where both reads had it.
    fn shares_since(&self, start: &MachineCounters) -> (Option<f64>, Option<f64>) {
        let steal = match (start.cpu_ticks, self.cpu_ticks) {
            (Some((all0, steal0)), Some((all1, steal1))) if all1 > all0 => {
                Some(steal1.saturating_sub(steal0) as f64 / (all1 - all0) as f64)
            }
            _ => None,
        };
        let io_full = match (start.io_full, self.io_full) {
            (Some((stall0, at0)), Some((stall1, at1))) if at1 > at0 => {
                Some(stall1.saturating_sub(stall0).as_secs_f64() / (at1 - at0).as_secs_f64())
            }
            _ => None,
        };
        (steal, io_full)
    }
}

/// All CPUs' ticks and the stolen ones, from the `cpu` line of `/proc/stat` (user, nice, system,
/// idle, iowait, irq, softirq, steal, ...; guest time is already counted in user).
fn cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|field| field.parse().ok())
        .collect::<Option<_>>()?;
    (ticks.len() == 8).then(|| (ticks.iter().sum(), ticks[7]))
}

/// The `full` line's `total=` (microseconds) of a PSI file.
fn io_full_stall(pressure: &str) -> Option<Duration> {
    let line = pressure.lines().find(|line| line.starts_with("full "))?;
    let total = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("total="))?;
    total.parse().ok().map(Duration::from_micros)
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ColocationArgs,
    }

    fn parse(words: &[&str]) -> ColocationArgs {
        Cli::try_parse_from(std::iter::once("bench-offline").chain(words.iter().copied()))
            .unwrap()
            .args
    }

    /// The options a child process gets, read back as its own command line.
    fn as_child_reads_them(command: &std::process::Command) -> ColocationArgs {
        let words: Vec<String> = command
            .get_args()
            .map(|word| word.to_str().unwrap().to_string())
            .collect();
        assert_eq!(words[0], "bench-offline", "{words:?}");
        let words: Vec<&str> = words[1..].iter().map(String::as_str).collect();
        parse(&words)
    }

    #[test]
    fn an_offline_child_dropped_unfinished_is_killed() {
        let process = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        let pid = process.id();
        let child = OfflineChild {
            process: std::sync::Mutex::new(Some(process)),
        };
        assert!(!child.is_finished());
        drop(child);
        // Killed and reaped: the process id names no process of ours any more.
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"));
        assert!(
            status.map_or(true, |status| !status
                .contains(&format!("PPid:\t{}", std::process::id()))),
            "the offline child {pid} outlived its handle"
        );
    }

    #[test]
    fn a_condition_s_process_gets_every_option_that_shapes_it() {
        let parent = parse(&[
            "--offline-data",
            "/offline",
            "--rate",
            "10",
            "--duration",
            "7",
            "--warmup",
            "1",
            "--accounts",
            "50",
            "--connections",
            "3",
            "--offline-work",
            "rebuild",
            "--rebuild-dir",
            "/dev/shm/rebuild",
            "--offline-in",
            "child",
        ]);
        let child = as_child_reads_them(&condition_command(&parent, Condition::Idle).unwrap());
        let expected = ColocationArgs {
            condition: Some(Condition::Idle),
            ..parent.clone()
        };
        assert_eq!(format!("{child:?}"), format!("{expected:?}"));

        let scratch = std::path::Path::new("/tmp/scratch");
        let offline =
            as_child_reads_them(&OfflineChild::command(&child, Condition::Idle, scratch).unwrap());
        assert!(offline.offline_only);
        assert_eq!(offline.rebuild_dir.as_deref(), Some(scratch));
        assert_eq!(offline.condition, Some(Condition::Idle));
        assert_eq!(offline.offline_work, Work::Rebuild);
        assert_eq!(offline.offline_data, parent.offline_data);
        assert_eq!(offline.duration, 7);
    }

    /// A run of `condition` whose p99 is `p99_ms` (and whose other figures follow from it).
    fn run_of(condition: Condition, p99_ms: f64, loadavg: f64) -> Measured {
        Measured {
            condition,
            offline_in: OfflineIn::Process,
            isolation: "sched_idle".into(),
            rate: 4000,
            requests: 1000,
            failed: 0,
            window_s: 30.0,
            p50_ms: p99_ms / 4.0,
            p99_ms,
            p999_ms: p99_ms * 2.0,
            max_ms: p99_ms * 3.0,
            lookups: 100,
            lookups_failed: 0,
            lookup_p50_ms: p99_ms * 5.0,
            lookup_p99_ms: p99_ms * 10.0,
            lookup_max_ms: p99_ms * 20.0,
            cpu_share: 0.4,
            verify_s: if condition == Condition::Alone {
                0.0
            } else {
                4.0
            },
            rebuild_s: if condition == Condition::Alone {
                0.0
            } else {
                p99_ms
            },
            offline_events: 0,
            handovers: 0,
            loadavg_start: loadavg,
            loadavg_end: loadavg + 1.0,
            steal_share: Some(loadavg / 100.0),
            io_full_share: None,
        }
    }

    #[test]
    fn the_median_takes_the_middle_or_the_mean_of_the_middle_two() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0, 3.0, 2.0].into_iter()), 2.5);
        assert_eq!(median([7.0].into_iter()), 7.0);
        assert_eq!(median(std::iter::empty()), 0.0);
    }

    #[test]
    fn rounds_are_summarized_per_condition_by_their_medians_so_one_stalled_run_does_not_count() {
        // Three rounds, interleaved as `run` makes them; the second `alone` met a stall.
        let runs = [
            run_of(Condition::Alone, 5.0, 0.5),
            run_of(Condition::Idle, 6.0, 0.7),
            run_of(Condition::Alone, 800.0, 1.5),
            run_of(Condition::Idle, 5.5, 0.6),
            run_of(Condition::Alone, 4.0, 0.4),
            run_of(Condition::Idle, 9.0, 0.8),
        ];
        let summaries = summarize(
            &[Condition::Alone, Condition::Idle, Condition::Normal],
            &runs,
        );
        assert_eq!(summaries.len(), 2, "normal did not run: {summaries:?}");
        let (alone, idle) = (&summaries[0], &summaries[1]);
        assert_eq!(alone.condition, Condition::Alone);
        assert_eq!(alone.p99_ms, 5.0);
        assert_eq!(
            alone.p99_ms_each,
            [5.0, 800.0, 4.0],
            "in the order they ran"
        );
        assert_eq!(alone.p50_ms, 1.25);
        assert_eq!(alone.p999_ms, 10.0);
        assert_eq!(alone.lookup_p99_ms, 50.0);
        assert_eq!(alone.requests, 3000);
        assert_eq!(alone.loadavg, (0.4, 2.5));
        assert_eq!(
            alone.steal_share_each,
            [Some(0.005), Some(0.015), Some(0.004)]
        );
        assert_eq!(alone.io_full_share_each, [None, None, None]);
        assert_eq!(idle.p99_ms, 6.0);
        assert_eq!(idle.rebuild_s, 6.0);
        assert_eq!(idle.verify_s, 4.0);
    }

    #[test]
    fn rounds_and_conditions_are_parsed_and_a_repeated_condition_is_refused() {
        let args = parse(&[
            "--offline-data",
            "/offline",
            "--rounds",
            "5",
            "--conditions",
            "alone,idle",
        ]);
        assert_eq!(args.rounds, 5);
        assert_eq!(args.conditions, [Condition::Alone, Condition::Idle]);

        let every = parse(&["--offline-data", "/offline"]);
        assert_eq!(every.rounds, 1);
        assert_eq!(
            every.conditions,
            [Condition::Alone, Condition::Idle, Condition::Normal]
        );

        for rounds in ["0", "51"] {
            let refused = Cli::try_parse_from([
                "bench-offline",
                "--offline-data",
                "/offline",
                "--rounds",
                rounds,
            ]);
            assert!(refused.is_err(), "--rounds {rounds} was accepted");
        }

        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("log")).unwrap();
        let data = dir.path().to_str().unwrap();
        let repeated = parse(&["--offline-data", data, "--conditions", "alone,idle,alone"]);
        let error = validate(&repeated).unwrap_err().to_string();
        assert!(error.contains("names alone twice"), "{error}");
        validate(&parse(&[
            "--offline-data",
            data,
            "--conditions",
            "idle,alone",
        ]))
        .unwrap();
    }

    #[test]
    fn the_machine_s_steal_and_io_stall_are_read_as_shares_of_the_window() {
        let stat = "cpu  100 5 50 800 20 0 5 20 7 0\ncpu0 50 2 25 400 10 0 2 10 3 0\n";
        assert_eq!(cpu_ticks(stat), Some((1000, 20)));
        assert_eq!(cpu_ticks("cpu  1 2 3\n"), None, "too few fields");
        assert_eq!(cpu_ticks("intr 5\n"), None);
        let pressure = "some avg10=1.00 avg60=0.50 avg300=0.10 total=900000\n\
                        full avg10=0.50 avg60=0.20 avg300=0.05 total=250000\n";
        assert_eq!(io_full_stall(pressure), Some(Duration::from_millis(250)));
        assert_eq!(io_full_stall("some avg10=0.00 total=5\n"), None);

        let at = Instant::now();
        let start = MachineCounters {
            cpu_ticks: Some((1000, 20)),
            io_full: Some((Duration::from_millis(250), at)),
        };
        let end = MachineCounters {
            cpu_ticks: Some((3000, 120)),
            io_full: Some((Duration::from_millis(750), at + Duration::from_secs(2))),
        };
        assert_eq!(end.shares_since(&start), (Some(0.05), Some(0.25)));
        let unreadable = MachineCounters {
            cpu_ticks: None,
            io_full: None,
        };
        assert_eq!(end.shares_since(&unreadable), (None, None));
        // And on this machine both are there (Linux with PSI, as the README's figures need).
        let now = MachineCounters::read();
        assert!(now.cpu_ticks.is_some(), "{now:?}");
    }
}
