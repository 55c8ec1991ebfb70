//! `tally simulate`: deterministic simulation runs for as many seeds or as long as asked.
//!
//! Each seed is one run of `tally_sim::run`: the real engine against a simulated clock, disk and
//! clients. Seeds run on every core; a failing seed stops the command with the line that
//! replays it.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use tally_sim::{Failure, Options, Summary};

#[derive(clap::Args)]
pub struct SimulateArgs {
    /// Run this one seed (to replay a failure); otherwise seeds are counted up from a random one.
    #[arg(long, conflicts_with_all = ["seeds", "first_seed"])]
    seed: Option<u64>,
    /// Seeds to run (with --time: whichever ends first).
    #[arg(long)]
    seeds: Option<u64>,
    /// The first seed of the run (default: random, printed).
    #[arg(long)]
    first_seed: Option<u64>,
    /// How long to keep running seeds, such as `30s` or `10m` (default: 10s unless --seeds).
    #[arg(long, value_parser = humantime::parse_duration)]
    time: Option<Duration>,
    /// Steps per seed before the drain that lets every client finish.
    #[arg(long, default_value_t = Options::default().steps)]
    steps: u64,
    /// Print every seed's report, not only the summary.
    #[arg(long)]
    verbose: bool,
}

pub fn run(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    let options = Options {
        steps: args.steps,
        ..Options::default()
    };
    if let Some(seed) = args.seed {
        return Ok(match tally_sim::run(seed, &options) {
            Ok(report) => {
                println!("{report}");
                ExitCode::SUCCESS
            }
            Err(failure) => {
                eprintln!("{failure}");
                ExitCode::from(1)
            }
        });
    }
    let first_seed = args.first_seed.unwrap_or_else(rand::random);
    let time = match (args.time, args.seeds) {
        (Some(time), _) => Some(time),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    };
    let deadline = time.map(|time| Instant::now() + time);
    let seeds = args.seeds.unwrap_or(u64::MAX);
    println!(
        "simulating from seed {first_seed}, {} steps a seed",
        options.steps
    );
    let next = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let totals = Mutex::new(Totals::default());
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                if stop.load(Ordering::SeqCst) || deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let index = next.fetch_add(1, Ordering::SeqCst);
                if index >= seeds {
                    break;
                }
                let outcome = tally_sim::run(first_seed.wrapping_add(index), &options);
                let mut totals = totals.lock().unwrap_or_else(|p| p.into_inner());
                match outcome {
                    Ok(report) => {
                        if args.verbose {
                            println!("{report}");
                        }
                        totals.summary.add(&report);
                    }
                    Err(failure) => {
                        stop.store(true, Ordering::SeqCst);
                        totals.summary.failed += 1;
                        totals.failures.push(failure);
                    }
                }
            });
        }
    });
    let totals = totals
        .into_inner()
        .context("a simulation thread panicked")?;
    println!("{}", totals.summary);
    if totals.failures.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for failure in &totals.failures {
        eprintln!("{failure}");
    }
    Ok(ExitCode::from(1))
}

#[derive(Default)]
struct Totals {
    summary: Summary,
    failures: Vec<Failure>,
}
