//! The soak: runs the crash loop of the crash test (`tests/it/crash_loop.rs`)
//! over and over, each time on a fresh data directory, for a given duration,
//! and prints one summary line:
//!
//! `rounds=N acknowledged=N lost=N duplicated=N verify_failures=N ...`
//!
//! It exits 1 if anything was lost, duplicated or diverged, if `tally verify`
//! failed, or if the server gave an answer no correct server gives. Run it
//! with `scripts/soak`, which builds it and the `tally` binary it drives
//! (named by `TALLY_BIN`).

// The soak shares the integration tests' process handling and crash loop; it
// uses fewer of the helpers than the tests do.
#[allow(dead_code)]
#[path = "../tests/it/support.rs"]
mod support;

#[path = "../tests/it/crash_loop.rs"]
mod crash_loop;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::crash_loop::{crash_loop, CrashLoop};

/// Kill/restart rounds per data directory before the soak starts a fresh one:
/// the model of every transfer, and the final check that reads each one back,
/// grow with the rounds, so this bounds both memory and the check's time.
const ROUNDS_PER_DATA_DIR: u32 = 8;

#[derive(clap::Parser)]
#[command(about = "SIGKILL/restart tally serve under load and check the acknowledged history")]
struct Args {
    /// How long to keep starting rounds, e.g. 60s or 3m; the round under way
    /// and the final checks of its data directory run past it.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Duration,

    /// Seed of the random choices, printed at the start, to replay a run
    /// (the kill moments still depend on timing).
    #[arg(long)]
    seed: Option<u64>,
}

/// Totals over all data directories.
#[derive(Default)]
struct Totals {
    data_dirs: u32,
    rounds: u32,
    transfers: usize,
    acknowledged: usize,
    in_flight: usize,
    absent: usize,
    lost: usize,
    duplicated: usize,
    verify_failures: usize,
    diverged: usize,
}

impl Totals {
    fn add(&mut self, run: &CrashLoop) {
        self.data_dirs += 1;
        self.rounds += run.rounds;
        self.transfers += run.transfers;
        self.acknowledged += run.acknowledged;
        self.in_flight += run.in_flight;
        self.absent += run.absent;
        self.lost += run.findings.lost.len();
        self.duplicated += run.findings.duplicated.len();
        self.verify_failures += run.findings.verify_failures.len();
        self.diverged += run.findings.diverged.len();
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> ExitCode {
    let args: Args = clap::Parser::parse();
    let seed = args.seed.unwrap_or_else(rand::random);
    eprintln!(
        "soak: seed {seed} (rerun with --seed {seed}), duration {}",
        humantime::format_duration(args.duration)
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut totals = Totals::default();
    // A panic (an answer no correct server gives) ends the soak; it is counted
    // so that the summary line still comes out, and fails the run.
    let mut unexpected = 0;
    while Instant::now() < deadline {
        let loop_seed: u64 = rng.random();
        eprintln!(
            "soak: data directory {} (crash loop seed {loop_seed})",
            totals.data_dirs
        );
        match tokio::spawn(crash_loop(loop_seed, ROUNDS_PER_DATA_DIR, Some(deadline))).await {
            Ok(run) => {
                if !run.findings.is_empty() {
                    eprint!("{}", run.findings);
                }
                totals.add(&run);
            }
            Err(error) => {
                eprintln!("soak: crash loop failed: {error}");
                unexpected += 1;
                break;
            }
        }
    }
    println!(
        "rounds={} acknowledged={} lost={} duplicated={} verify_failures={} diverged={} unexpected={unexpected} in_flight={} absent={} transfers={} data_dirs={} seconds={:.0} seed={seed}",
        totals.rounds,
        totals.acknowledged,
        totals.lost,
        totals.duplicated,
        totals.verify_failures,
        totals.diverged,
        totals.in_flight,
        totals.absent,
        totals.transfers,
        totals.data_dirs,
        started.elapsed().as_secs_f64(),
    );
    let failed =
        totals.lost + totals.duplicated + totals.verify_failures + totals.diverged + unexpected;
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
