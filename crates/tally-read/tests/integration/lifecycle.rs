//! Starting, stopping, resuming, rebuilding and failing.

use std::time::{Duration, SystemTime};

use tally_core::{Command, Event, TransferEvent, TransferKind};
use tally_log::{Batch, BatchHeader};
use tally_read::{Lag, ProjectorOptions, ProjectorStatus, ReadError, ReadModel};

use crate::support::*;

/// A log of many small batches touching every kind of event.
fn busy_sim() -> Sim {
    let mut sim = Sim::new();
    sim.batch(&[
        open("a", "USD"),
        open("b", "USD"),
        open("c", "EUR"),
        open("d", "EUR"),
    ]);
    for round in 0..20 {
        let id = |prefix: &str| format!("{prefix}{round}");
        let commands: Vec<Command> = vec![
            deposit(&id("da"), "a", 50),
            deposit(&id("dc"), "c", 50),
            transfer(&id("ab"), "a", "b", 7),
            pending(&id("pa"), "a", "b", 5, 0),
            pending(&id("pc"), "c", "d", 3, 1),
            // Every third withdrawal is refused for insufficient funds.
            withdraw(&id("wb"), "b", 1 + 30 * (round % 3)),
        ];
        sim.batch(&commands);
        let resolve = if round % 2 == 0 {
            post(&id("xa"), &id("pa"), Some(4))
        } else {
            void(&id("xa"), &id("pa"))
        };
        sim.batch_after(600_000_000, &[resolve, transfer(&id("ac"), "a", "c", 1)]);
    }
    sim
}

fn transfer_ids() -> Vec<String> {
    let prefixes = ["da", "dc", "ab", "pa", "pc", "wb", "xa", "ac"];
    (0..20)
        .flat_map(|round| {
            prefixes
                .iter()
                .map(move |prefix| format!("{prefix}{round}"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_resume_without_duplicates() {
    let sim = busy_sim();
    let accounts = sim.account_ids();
    let fresh_dir = dir();
    let fresh = project(&fresh_dir.path, &sim.log).await;
    let expected = dump(&fresh, &accounts, &transfer_ids());
    fresh.shutdown();
    for account in &accounts {
        let last = all_history(&project(&fresh_dir.path, &sim.log).await, account, 1000)
            .last()
            .map_or(0, |e| e.balance_after);
        assert_eq!(last, sim.balance(account), "balance of {account}");
    }

    // Stop after half the log, then resume on the whole of it.
    let dir = dir();
    let half = sim.log.prefix(sim.log.batch_count() / 2);
    let model = start_small(&dir.path, &half);
    model.wait_for(half.end(), WAIT).await.unwrap();
    model.shutdown();
    // On the same log it has nothing to do, so its position is the stored checkpoint.
    let model = start_small(&dir.path, &half);
    assert_eq!(model.position(), half.end(), "resumes at the checkpoint");
    model.shutdown();
    let model = start_small(&dir.path, &sim.log);
    model.wait_for(sim.log.end(), WAIT).await.unwrap();
    assert_eq!(dump(&model, &accounts, &transfer_ids()), expected);
    drop(model);

    // Over a growing log, stop right after the first commit of each run (or wherever the
    // projector got to by then) and resume.
    let dir = self::dir();
    let mut checkpoints = Vec::new();
    let batch_count = sim.log.batch_count();
    for count in (1..batch_count).step_by(3) {
        let log = sim.log.prefix(count);
        let model = start_small(&dir.path, &log);
        let checkpoint = model.position();
        checkpoints.push(checkpoint);
        if checkpoint < log.end() {
            model.wait_for(checkpoint + 1, WAIT).await.unwrap();
        }
        model.shutdown();
    }
    assert!(
        checkpoints.windows(2).all(|pair| pair[0] <= pair[1]),
        "checkpoints never go back: {checkpoints:?}"
    );
    assert!(checkpoints.len() > 10);
    let model = project(&dir.path, &sim.log).await;
    assert_eq!(dump(&model, &accounts, &transfer_ids()), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_reports_lagging() {
    let dir = dir();
    let mut sim = Sim::new();
    let model = start(&dir.path, &sim.log);
    model.wait_for(0, Duration::ZERO).await.unwrap();
    let lagging = model
        .wait_for(5, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(
        matches!(
            lagging,
            ReadError::Lagging {
                projected: 0,
                target: 5
            }
        ),
        "{lagging:?}"
    );
    assert_eq!(
        lagging.to_string(),
        "read model is lagging: projected up to position 0, waiting for 5"
    );

    sim.batch(&[open("alice", "USD")]);
    sim.batch(&[deposit("d1", "alice", 3), deposit("d2", "alice", 4)]);
    model.wait_for(3, WAIT).await.unwrap();
    assert_eq!(model.position(), 3);
    assert_eq!(model.status(), ProjectorStatus::Running);
    let entries = all_history(&model, "alice", 10);
    assert_eq!(entries.last().unwrap().balance_after, 7);
    model.clone().shutdown();
    assert_eq!(model.status(), ProjectorStatus::Stopped);
    let stopped = model.wait_for(4, WAIT).await.unwrap_err();
    assert!(
        matches!(
            stopped,
            ReadError::Lagging {
                projected: 3,
                target: 4
            }
        ),
        "a stopped projector fails waits at once"
    );
}

/// Unobserved writes gather for up to `commit_interval_min` before a transaction; a query that
/// waits for them wakes the projector at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_query_wakes_a_projector_that_gathers_events() {
    let dir = dir();
    let mut sim = Sim::new();
    let options = ProjectorOptions {
        commit_interval_min: Duration::from_secs(3600),
        ..ProjectorOptions::default()
    };
    let model =
        ReadModel::start_with(&dir.path, sim.log.reader(), sim.log.subscribe(), options).unwrap();
    // The first transaction has nothing before it to wait for.
    sim.batch(&[open("alice", "USD")]);
    model.wait_for(sim.log.end(), WAIT).await.unwrap();
    let first = model.position();

    // The next one would wait for an hour: nobody asked.
    sim.batch(&[deposit("d1", "alice", 3)]);
    sim.batch(&[deposit("d2", "alice", 4)]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        model.position(),
        first,
        "the projector gathers while nobody waits"
    );

    // A query asks: it gets its answer in far less than the hour.
    let asked = std::time::Instant::now();
    model.wait_for(sim.log.end(), WAIT).await.unwrap();
    assert!(asked.elapsed() < WAIT, "{:?}", asked.elapsed());
    assert_eq!(
        all_history(&model, "alice", 10)
            .last()
            .unwrap()
            .balance_after,
        7
    );

    // Stopping does not wait for the hour either.
    model.clone().shutdown();
    assert_eq!(model.status(), ProjectorStatus::Stopped);
}

/// The lag is the events durable but not projected, and, when there are any, the time since the
/// projection was last caught up: it grows while the projector does not follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_counts_unprojected_events_and_the_time_since_caught_up() {
    let dir = dir();
    let mut sim = Sim::new();
    sim.batch(&[open("alice", "USD")]);
    let model = project(&dir.path, &sim.log).await;
    let caught_up = Lag {
        events: 0,
        duration: Duration::ZERO,
    };
    assert_eq!(model.lag(), caught_up);
    let now = SystemTime::now();
    assert!(model.last_caught_up() >= now, "caught up means now");

    // A stopped projector stops following: the new events wait, and their wait grows.
    model.clone().shutdown();
    sim.batch(&[deposit("d1", "alice", 3), deposit("d2", "alice", 4)]);
    let waited = Duration::from_millis(200);
    tokio::time::sleep(waited).await;
    let lag = model.lag();
    assert_eq!(lag.events, 2, "{lag:?}");
    assert!(lag.duration >= waited, "{lag:?}");

    // A new projector catches up, and the lag is gone.
    drop(model);
    let model = project(&dir.path, &sim.log).await;
    assert_eq!(model.lag(), caught_up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_ahead_of_the_log_is_rebuilt() {
    let dir = dir();
    let sim = busy_sim();
    project(&dir.path, &sim.log).await.shutdown();

    let empty = FakeLog::new();
    let model = start(&dir.path, &empty);
    assert_eq!(model.position(), 0, "rebuilt from the start");
    assert_eq!(model.history("a", None, 10).unwrap(), None);
    model.shutdown();

    project(&dir.path, &sim.log).await.shutdown();
    let shorter = sim.log.prefix(3);
    let model = start(&dir.path, &shorter);
    model.wait_for(shorter.end(), WAIT).await.unwrap();
    assert!(model.transfer("da0").unwrap().is_some());
    assert_eq!(
        model.transfer("da1").unwrap(),
        None,
        "nothing of the longer log survives"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_file_is_rebuilt() {
    let sim = busy_sim();
    let accounts = sim.account_ids();
    let fresh_dir = dir();
    let expected = dump(
        &project(&fresh_dir.path, &sim.log).await,
        &accounts,
        &transfer_ids(),
    );

    let dir = dir();
    std::fs::write(&dir.path, vec![0xAB; 64 * 1024]).unwrap();
    let model = project(&dir.path, &sim.log).await;
    assert_eq!(dump(&model, &accounts, &transfer_ids()), expected);
    drop(model);

    std::fs::write(&dir.path, b"").unwrap();
    let model = project(&dir.path, &sim.log).await;
    assert_eq!(dump(&model, &accounts, &transfer_ids()), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_batch_stops_the_projector_but_not_queries() {
    let dir = dir();
    let mut sim = Sim::new();
    sim.batch(&[open("alice", "USD")]);
    sim.batch(&[deposit("d1", "alice", 3)]);
    let good_end = sim.log.end();
    let header = BatchHeader {
        first_position: good_end,
        event_count: 2,
        timestamp_ns: sim.timestamp_ns() + 1,
    };
    sim.log.append(Batch {
        header,
        body: vec![0xFF; 9],
    });
    let model = start(&dir.path, &sim.log);
    let lagging = model.wait_for(sim.log.end(), WAIT).await.unwrap_err();
    assert!(
        matches!(lagging, ReadError::Lagging { projected, target: 4 } if projected == good_end),
        "{lagging:?}"
    );
    let ProjectorStatus::Failed { position, reason } = model.status() else {
        panic!("{:?}", model.status())
    };
    assert_eq!(position, good_end);
    assert!(
        reason.starts_with("batch at position 2 does not decode"),
        "{reason}"
    );
    assert_eq!(model.transfer("d1").unwrap().unwrap().amount, 3);
    assert_eq!(all_history(&model, "alice", 10).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_handle_on_the_same_file_is_refused() {
    let dir = dir();
    let sim = busy_sim();
    let model = project(&dir.path, &sim.log).await;
    let error = tally_read::ReadModel::start(&dir.path, sim.log.reader(), sim.log.subscribe())
        .err()
        .expect("refused");
    assert!(
        matches!(error, ReadError::Store { op: "open", .. }),
        "{error:?}"
    );
    assert!(
        model.transfer("da0").unwrap().is_some(),
        "the file in use is left alone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_cannot_be_folded_aborts_its_whole_transaction() {
    let dir = dir();
    let mut sim = Sim::new();
    sim.batch(&[open("alice", "USD")]);
    sim.batch(&[deposit("d1", "alice", 3)]);
    let good_end = sim.log.end();
    // A valid deposit, then a post of a position that holds no pending transfer.
    let deposit = TransferEvent {
        id: id("d2"),
        body_hash: 1,
        kind: TransferKind::Deposit,
        debit: 0,
        credit: 1,
        amount: 5,
    };
    let post = TransferEvent {
        id: id("c1"),
        body_hash: 2,
        kind: TransferKind::Post { pending: 1 },
        ..deposit.clone()
    };
    let events = [Event::Transfer(deposit), Event::Transfer(post)];
    let header = BatchHeader {
        first_position: good_end,
        event_count: 2,
        timestamp_ns: sim.timestamp_ns() + 1,
    };
    sim.log.append(Batch {
        header,
        body: tally_core::encode_events(&events),
    });

    let options = ProjectorOptions {
        transaction_events_max: 2,
        ..ProjectorOptions::default()
    };
    let model =
        ReadModel::start_with(&dir.path, sim.log.reader(), sim.log.subscribe(), options).unwrap();
    let lagging = model.wait_for(sim.log.end(), WAIT).await.unwrap_err();
    assert!(
        matches!(lagging, ReadError::Lagging { projected, .. } if projected == good_end),
        "{lagging:?}"
    );
    let ProjectorStatus::Failed { reason, .. } = model.status() else {
        panic!("{:?}", model.status())
    };
    assert_eq!(
        reason,
        "event at position 3 cannot be projected: position 1 is not an unresolved pending transfer"
    );
    assert_eq!(
        model.transfer("d2").unwrap(),
        None,
        "the deposit before it in the transaction is not committed"
    );
    assert_eq!(all_history(&model, "alice", 10).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_from_position_zero_equals_the_live_projection() {
    let sim = busy_sim();
    let accounts = sim.account_ids();
    let live_dir = dir();
    let live = project(&live_dir.path, &sim.log).await;
    let expected = dump(&live, &accounts, &transfer_ids());

    // A file another handle holds is refused, not replaced under it.
    let offline = tally_offline::OfflineExecutor::default();
    let progress = offline.track(tally_read::REBUILD_JOB, "events").unwrap();
    let busy = tally_read::rebuild(&live_dir.path, sim.log.reader(), sim.log.end(), &progress);
    let error = busy.unwrap_err().to_string();
    assert!(error.contains("stop it first"), "{error}");
    live.shutdown();

    // Over a file of garbage, as an offline job.
    let rebuilt_dir = dir();
    std::fs::write(&rebuilt_dir.path, b"not a redb file").unwrap();
    let (path, reader, end) = (rebuilt_dir.path.clone(), sim.log.reader(), sim.log.end());
    let job = offline
        .spawn_job(tally_read::REBUILD_JOB, "events", move |progress| {
            tally_read::rebuild(&path, reader, end, progress).map_err(|error| error.to_string())
        })
        .unwrap();
    let progress = job.progress().clone();
    assert_eq!(job.join().unwrap(), sim.log.end());
    let status = progress.status();
    assert_eq!((status.done, status.total), (sim.log.end(), sim.log.end()));
    assert_eq!(status.state, tally_offline::JobState::Done);

    let rebuilt = start(&rebuilt_dir.path, &sim.log);
    assert_eq!(
        rebuilt.position(),
        sim.log.end(),
        "the rebuild's checkpoint is the log's end"
    );
    assert_eq!(dump(&rebuilt, &accounts, &transfer_ids()), expected);
}

/// The scheduling policy and nice value of this process's threads named `name`, from `/proc`
/// (fields 41 and 19 of a task's `stat`).
fn priorities_of_threads_named(name: &str) -> Vec<(i32, i32)> {
    let mut priorities = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap();
        // Fields after the command (in parentheses) start at field 3.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after.split(' ').collect();
        let field = |number: usize| fields[number - 3].parse().unwrap();
        priorities.push((field(41), field(19)));
    }
    priorities
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_projector_runs_at_nice_19() {
    let sim = busy_sim();
    let dir = dir();
    let model = project(&dir.path, &sim.log).await;
    let priorities = priorities_of_threads_named("tally-projector");
    assert!(!priorities.is_empty(), "no projector thread found");
    // SCHED_OTHER is 0: queries wait for the projector, and SCHED_IDLE would starve it.
    assert!(
        priorities.iter().all(|&priority| priority == (0, 19)),
        "(policy, nice) of the projector threads: {priorities:?}"
    );
    model.shutdown();
}

/// A transfer id recorded twice stops the projector, whether the first (a pending transfer) was
/// recorded in the same transaction or an earlier one, resolved or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_transfer_id_recorded_twice_stops_the_projector() {
    for (transaction_events_max, resolve_first) in [(100, false), (1, false), (100, true)] {
        let dir = dir();
        let mut sim = Sim::new();
        sim.batch(&[open("alice", "USD"), open("bob", "USD")]);
        sim.batch(&[deposit("d1", "alice", 10)]);
        let good_end = sim.log.end();
        let options = ProjectorOptions {
            transaction_events_max,
            ..ProjectorOptions::default()
        };
        let model =
            ReadModel::start_with(&dir.path, sim.log.reader(), sim.log.subscribe(), options)
                .unwrap();
        model.wait_for(good_end, WAIT).await.unwrap();
        let pending = TransferEvent {
            id: id("x"),
            body_hash: 1,
            kind: TransferKind::Pending { expires_at_ns: 0 },
            debit: 1,
            credit: 2,
            amount: 5,
        };
        let post = TransferEvent {
            id: id("p"),
            body_hash: 2,
            kind: TransferKind::Post { pending: good_end },
            ..pending.clone()
        };
        let again = TransferEvent {
            body_hash: 3,
            kind: TransferKind::Transfer,
            ..pending.clone()
        };
        // Two batches, so that `transaction_events_max: 1` puts them in two transactions.
        let mut later = Vec::new();
        if resolve_first {
            later.push(Event::Transfer(post));
        }
        later.push(Event::Transfer(again));
        for events in [vec![Event::Transfer(pending)], later] {
            let header = BatchHeader {
                first_position: sim.log.end(),
                event_count: events.len() as u32,
                timestamp_ns: sim.timestamp_ns() + 1,
            };
            sim.log.append(Batch {
                header,
                body: tally_core::encode_events(&events),
            });
        }
        model.wait_for(sim.log.end(), WAIT).await.unwrap_err();
        let ProjectorStatus::Failed { reason, .. } = model.status() else {
            panic!("{:?}", model.status())
        };
        assert!(
            reason.ends_with("transfer id x is recorded twice"),
            "{transaction_events_max} {resolve_first}: {reason}"
        );
        assert_eq!(model.transfer("d1").unwrap().unwrap().amount, 10);
    }
}
