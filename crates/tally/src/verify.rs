//! `tally verify DIR`: explains what is wrong with a data directory, or that nothing is.

use std::path::PathBuf;
use std::process::ExitCode;

use tally_engine::offline::spawn_verify;
use tally_engine::SnapshotCheck;
use tally_log::ProblemKind;

use crate::progress::{follow, PriorityArg};

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The data directory to check (as given to `tally serve --data-dir`).
    dir: PathBuf,
    /// Priority of the check: `idle` leaves the CPU to everything else, `normal` competes.
    #[arg(long, value_enum, default_value_t = PriorityArg::Idle)]
    offline_priority: PriorityArg,
}

/// Prints a report on standard output (and a progress bar on standard error when it is a
/// terminal). Exit code 0: sound; 1: problems found.
pub fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    if !args.dir.join("log").is_dir() {
        anyhow::bail!(
            "{} holds no log directory; is it a tally data directory?",
            args.dir.display()
        );
    }
    let offline = args.offline_priority.executor();
    let job = spawn_verify(&offline, args.dir.clone())?;
    let report = follow(job, "verifying").map_err(anyhow::Error::msg)?;
    let log = &report.log;
    println!("data directory {}", report.dir.display());
    println!(
        "log: {} segment(s), {} batch(es), {} event(s)",
        log.segments.len(),
        log.batch_count,
        log.next_position
    );
    for problem in &log.problems {
        let label = match problem.kind {
            ProblemKind::TornTail { .. } => "torn tail (repaired on next start)",
            ProblemKind::IncompleteSegment => "incomplete segment (removed on next start)",
            ProblemKind::Corruption => "CORRUPTION",
        };
        println!(
            "  {label}: {} at byte offset {}: {}",
            problem.path.display(),
            problem.offset,
            problem.reason
        );
        println!("    {}", problem.meaning());
    }
    match &report.replay_error {
        Some(error) => println!("ledger rules: VIOLATED: {error}"),
        None => println!(
            "ledger rules: every event obeys them ({} accounts in {} ledgers, {} transfer ids)",
            report.accounts - report.ledgers,
            report.ledgers,
            report.transfer_ids
        ),
    }
    match &report.invariant_error {
        Some(violation) => println!("invariants: BROKEN: {violation}"),
        None if report.replay_error.is_none() => println!(
            "invariants: hold (every ledger sums to zero, no account below zero without overdraft)"
        ),
        None => println!("invariants: not checked, replay stopped early"),
    }
    match &report.snapshot {
        SnapshotCheck::None => println!("snapshot: none"),
        SnapshotCheck::Matches { position } => println!("snapshot: at position {position}, equal to the replayed state"),
        SnapshotCheck::Differs { position } => println!("snapshot: at position {position}, DIFFERS from the replayed state; delete it so that a restart replays the log"),
        SnapshotCheck::Unusable { reason } => println!("snapshot: unusable ({reason}); a restart replays the log instead"),
    }
    // The status file holds only statistics, but a corrupt one stops the server too.
    let status_ok = match tally_status::store::load(&args.dir) {
        Ok(None) => {
            println!("status file: none (availability figures start afresh)");
            true
        }
        Ok(Some(saved)) => {
            println!(
                "status file: sound, last saved at {}",
                tally_status::report::rfc3339(saved.saved_at_unix)
            );
            true
        }
        Err(error) => {
            println!("status file: CORRUPT: {error}");
            false
        }
    };
    if report.is_ok() && status_ok {
        println!("ok");
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "NOT OK: the server refuses to start on this directory or would serve a wrong state"
        );
        Ok(ExitCode::from(1))
    }
}
