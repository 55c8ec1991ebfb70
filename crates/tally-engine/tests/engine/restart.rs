//! Restarts: after a clean shutdown nothing is replayed; after a crash the log is replayed; either
//! way every acknowledged command is there, and retries get their first answers.

use std::sync::{Arc, Mutex};

use tally_engine::{Answer, Detail, EngineHandle};
use tally_log::{MemStorage, Torn};

use crate::support::{
    commands, describe_all, eventually, execute, fs_config, open_mem, parse, run, shutdown,
    try_open_fs, views,
};

const HISTORY: &str = "
    open a USD
    open b USD
    open o USD overdraft
    deposit d1 a 100
    transfer t1 a b 30
    transfer t2 a b 1000
    pending p1 a b 20
    post x1 p1 15
    pending p2 a b 10
    pending p3 b o 7
    void v1 p3
    linked transfer l1 a b 5, transfer l2 b o 10
    withdraw w1 o 50
";

fn ids() -> Vec<String> {
    ["a", "b", "o", "missing"].map(String::from).to_vec()
}

/// Every line of `HISTORY` again, rendered: each answer is the first one, marked duplicate.
async fn retry_history(handle: &EngineHandle) -> String {
    run(handle, HISTORY).await
}

#[tokio::test(flavor = "multi_thread")]
async fn after_shutdown_a_restart_replays_nothing_and_serves_the_same_state() {
    let storage = MemStorage::new();
    let opened = open_mem(&storage);
    let handle = opened.engine.handle();
    let first = run(&handle, HISTORY).await;
    let before = views(&handle, &ids()).await;
    let durable = handle.durable_position();
    shutdown(opened.engine).await.unwrap();
    assert!(
        handle
            .execute(commands("deposit late a 1"), Detail::Full)
            .await
            .is_err(),
        "a stopped engine takes no work"
    );

    let reopened = open_mem(&storage);
    assert_eq!(reopened.recovery.snapshot_position, Some(durable));
    assert_eq!(reopened.recovery.replayed_events, 0);
    assert!(reopened.recovery.log.repairs.is_empty());
    let handle = reopened.engine.handle();
    assert_eq!(handle.durable_position(), durable);
    assert_eq!(views(&handle, &ids()).await, before);
    let retried = retry_history(&handle).await;
    assert_eq!(retried, duplicates_of(&first));
    assert_eq!(handle.durable_position(), durable, "retries record nothing");
    shutdown(reopened.engine).await.unwrap();
}

/// The answers of a first run as a retry renders them.
fn duplicates_of(first: &str) -> String {
    first
        .lines()
        .map(|line| {
            let (command, answers) = line.split_once(": ").unwrap();
            let answers: Vec<String> = answers
                .split(", ")
                .map(|answer| {
                    if answer.starts_with("account ") {
                        answer.replace(" created", " exists")
                    } else if answer.starts_with("rejected ") {
                        format!("{answer} (again)")
                    } else {
                        answer.replace(" created ", " duplicate ")
                    }
                })
                .collect();
            format!("{command}: {}\n", answers.join(", "))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn after_shutdown_a_restart_on_disk_serves_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let opened = try_open_fs(fs_config(dir.path())).unwrap();
    assert!(opened.recovery.log.created);
    let handle = opened.engine.handle();
    let first = run(&handle, HISTORY).await;
    let before = views(&handle, &ids()).await;
    let durable = handle.durable_position();
    shutdown(opened.engine).await.unwrap();

    let reopened = try_open_fs(fs_config(dir.path())).unwrap();
    assert!(!reopened.recovery.log.created);
    assert_eq!(reopened.recovery.snapshot_position, Some(durable));
    assert_eq!(reopened.recovery.replayed_events, 0);
    let handle = reopened.engine.handle();
    assert_eq!(views(&handle, &ids()).await, before);
    assert_eq!(retry_history(&handle).await, duplicates_of(&first));
    shutdown(reopened.engine).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_engine_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let opened = try_open_fs(fs_config(dir.path())).unwrap();
    let error = try_open_fs(fs_config(dir.path()))
        .err()
        .expect("the directory is locked");
    assert!(error.to_string().contains("locked"), "{error}");
    shutdown(opened.engine).await.unwrap();
    let reopened = try_open_fs(fs_config(dir.path())).unwrap();
    shutdown(reopened.engine).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_crash_a_restart_replays_the_log_and_keeps_every_acknowledged_command() {
    for torn in [Torn::Nothing, Torn::Prefix(u64::MAX), Torn::Zeros(64)] {
        let storage = MemStorage::new();
        let opened = open_mem(&storage);
        let handle = opened.engine.handle();
        let first = run(&handle, HISTORY).await;
        let before = views(&handle, &ids()).await;
        let durable = handle.durable_position();
        // The crash: only what the syncs made durable survives; the engine is never shut down.
        let image = storage.crash_image(torn);
        drop(opened);

        let reopened = open_mem(&image);
        assert_eq!(reopened.recovery.snapshot_position, None, "{torn:?}");
        assert_eq!(reopened.recovery.replayed_events, durable, "{torn:?}");
        let handle = reopened.engine.handle();
        assert_eq!(handle.durable_position(), durable, "{torn:?}");
        assert_eq!(views(&handle, &ids()).await, before, "{torn:?}");
        assert_eq!(
            retry_history(&handle).await,
            duplicates_of(&first),
            "{torn:?}"
        );
        // The engine goes on from where the log ends.
        let answers = execute(&handle, "deposit d9 a 1").await;
        assert_eq!(
            describe_all(&Ok(answers)),
            format!("deposit created @{durable} amount 1 USD ext->a")
        );
        shutdown(reopened.engine).await.unwrap();
    }
}

/// Many clients write while the machine crashes at an arbitrary moment: every command answered
/// before the crash is in the recovered state with its first answer, and retrying every command
/// converges on the state as if nothing had happened.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_under_load_loses_no_acknowledged_command() {
    const ACCOUNTS: usize = 8;
    const DEPOSITS: usize = 300;
    let deposit = |i: usize| format!("deposit dep{i} x{} {}", i % ACCOUNTS, i + 1);
    for (round, torn) in [
        Torn::Nothing,
        Torn::Prefix(u64::MAX),
        Torn::Prefix(20),
        Torn::Zeros(100),
    ]
    .into_iter()
    .enumerate()
    {
        let storage = MemStorage::new();
        let opened = open_mem(&storage);
        let handle = opened.engine.handle();
        let opens: String = (0..ACCOUNTS).map(|i| format!("open x{i} USD\n")).collect();
        execute(&handle, &opens).await;

        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..DEPOSITS {
            let handle = handle.clone();
            let acknowledged = Arc::clone(&acknowledged);
            tasks.push(tokio::spawn(async move {
                let answers = handle.execute(vec![parse(&deposit(i))], Detail::Full).await;
                if let Ok(answers) = answers {
                    acknowledged.lock().unwrap().push((i, answers));
                }
            }));
        }
        // Crash once a part of the deposits is answered (varying with the round).
        let crash_after = DEPOSITS / 8 * (round + 1);
        eventually("enough deposits are answered", || {
            acknowledged.lock().unwrap().len() >= crash_after
        })
        .await;
        // Answers taken before the image was: each of them was durable before it.
        let answered_before_crash = acknowledged.lock().unwrap().clone();
        let image = storage.crash_image(torn);
        for task in tasks {
            task.await.unwrap();
        }
        drop(opened);

        let reopened = open_mem(&image);
        let handle = reopened.engine.handle();
        for (i, answers) in &answered_before_crash {
            let again = handle
                .execute(vec![parse(&deposit(*i))], Detail::Full)
                .await
                .unwrap();
            assert_eq!(again.len(), 1);
            match (&answers[0], &again[0]) {
                (
                    Answer::Transfer {
                        reply: first,
                        detail: first_detail,
                    },
                    Answer::Transfer {
                        reply: retry,
                        detail: retry_detail,
                    },
                ) => {
                    assert!(first.created && !retry.created, "{torn:?} deposit {i}");
                    assert_eq!(retry.position, first.position, "{torn:?} deposit {i}");
                    assert_eq!(retry.amount, first.amount);
                    assert_eq!(retry.timestamp_ns, first.timestamp_ns);
                    assert_eq!(retry_detail, first_detail);
                }
                other => panic!("{torn:?} deposit {i}: {other:?}"),
            }
        }
        // Clients retry whatever they did not see answered; all of it lands exactly once.
        for i in 0..DEPOSITS {
            handle
                .execute(vec![parse(&deposit(i))], Detail::Full)
                .await
                .unwrap();
        }
        let total: i128 = views(
            &handle,
            &(0..ACCOUNTS).map(|i| format!("x{i}")).collect::<Vec<_>>(),
        )
        .await
        .into_iter()
        .map(|view| view.unwrap().balance)
        .sum();
        assert_eq!(total, (1..=DEPOSITS as i128).sum::<i128>(), "{torn:?}");
        assert_eq!(
            handle.durable_position(),
            (ACCOUNTS + DEPOSITS) as u64,
            "{torn:?}: each deposit recorded once"
        );
        shutdown(reopened.engine).await.unwrap();
    }
}

/// Shutting down while clients are writing: whatever was answered survives the restart.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_under_load_keeps_every_answered_command() {
    let storage = MemStorage::new();
    let opened = open_mem(&storage);
    let handle = opened.engine.handle();
    execute(&handle, "open a USD").await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let handle = handle.clone();
        tasks.push(tokio::spawn(async move {
            handle
                .execute(vec![parse(&format!("deposit s{i} a 1"))], Detail::Compact)
                .await
                .map(|answers| (i, answers))
        }));
    }
    eventually("some deposits are queued or answered", || {
        handle.durable_position() > 5
    })
    .await;
    shutdown(opened.engine).await.unwrap();
    let mut answered = Vec::new();
    for task in tasks {
        if let Ok(answer) = task.await.unwrap() {
            answered.push(answer);
        }
    }

    let reopened = open_mem(&storage);
    assert_eq!(reopened.recovery.replayed_events, 0);
    let handle = reopened.engine.handle();
    let balance = handle
        .account(crate::support::id("a"))
        .await
        .unwrap()
        .unwrap()
        .balance;
    assert_eq!(
        balance,
        answered.len() as i128,
        "exactly the answered deposits are in"
    );
    for (i, answers) in answered {
        let again = handle
            .execute(vec![parse(&format!("deposit s{i} a 1"))], Detail::Compact)
            .await
            .unwrap();
        assert_eq!(
            describe_all(&Ok(again)),
            describe_all(&Ok(answers)).replace("created", "duplicate")
        );
    }
    shutdown(reopened.engine).await.unwrap();
}
