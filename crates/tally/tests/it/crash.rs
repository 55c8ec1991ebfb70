//! Crash safety of the real process: the crash loop of `crash_loop.rs`
//! (SIGKILL under concurrent load, restart, check) on one data directory,
//! and a graceful stop however early it is asked for.
//! Set `TALLY_CRASH_SEED` to replay a run's random choices (the kill moment
//! still depends on timing).

use std::time::Instant;

use crate::crash_loop::crash_loop;
use crate::support::{verify_data_dir, Server};

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

/// Starts and stops of one data directory; each a chance to lose the race below.
const EARLY_STOPS: u32 = 5;

/// A SIGTERM sent the moment the server says it listens still finds the handler that shuts
/// it down gracefully, rather than the default action that kills it without a snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_the_moment_the_server_listens_shuts_it_down_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..EARLY_STOPS {
        Server::start(dir.path()).await.stop().await;
    }
    verify_data_dir(dir.path()).unwrap_or_else(|report| panic!("{report}"));
}
