//! Crash safety of the real process: the crash loop of `crash_loop.rs`
//! (SIGKILL under concurrent load, restart, check) on one data directory.
//! Set `TALLY_CRASH_SEED` to replay a run's random choices (the kill moment
//! still depends on timing).

use std::time::Instant;

use crate::crash_loop::crash_loop;

/// Kill/restart rounds on one data directory.
const ROUNDS: u32 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_under_load_loses_nothing_acknowledged_and_applies_nothing_twice() {
    let seed = match std::env::var("TALLY_CRASH_SEED") {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("TALLY_CRASH_SEED must be a u64, found {text:?}")),
        Err(_) => rand::random::<u64>(),
    };
    eprintln!("crash test seed: {seed} (rerun with TALLY_CRASH_SEED={seed})");
    let started = Instant::now();
    let run = crash_loop(seed, ROUNDS, None).await;
    eprintln!(
        "crash test: {} transfers sent, {} acknowledged, {} in flight at a SIGKILL of which {} absent after the restart, in {:.1} s",
        run.transfers,
        run.acknowledged,
        run.in_flight,
        run.absent,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        run.rounds, ROUNDS,
        "expected every round to run without a deadline"
    );
    assert!(
        run.findings.is_empty(),
        "expected no lost, duplicated or diverged transfers and no verify failure, found:\n{}",
        run.findings
    );
}
