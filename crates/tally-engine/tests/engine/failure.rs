//! I/O failures of the log: the engine stops taking work, and a restart from what reached the
//! disk recovers exactly the acknowledged state.

use std::sync::Arc;
use std::time::Duration;

use tally_engine::{Detail, EngineError};
use tally_log::{MemStorage, Torn};

use crate::support::{
    commands, describe_all, eventually, execute, id, mem_config, open_in, open_mem, open_traced,
    parse, poll_once, run, shutdown, thread_cpu_ticks, views, Throttled,
};

const ACKNOWLEDGED: &str = "
    open a USD
    open b USD
    deposit d1 a 100
    transfer t1 a b 30
    pending p1 a b 20
";

fn ids() -> Vec<String> {
    ["a", "b"].map(String::from).to_vec()
}

fn is_unavailable<T: std::fmt::Debug>(outcome: &Result<T, EngineError>) -> bool {
    matches!(outcome, Err(EngineError::Unavailable(_)))
}

/// The write (countdown 0) or the fdatasync (countdown 1) of an append fails.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_append_stops_the_engine_and_a_restart_recovers_the_acknowledged_state() {
    for (countdown, op) in [(0, "write"), (1, "fdatasync")] {
        let storage = MemStorage::new();
        let opened = open_mem(&storage);
        let handle = opened.engine.handle();
        let first = run(&handle, ACKNOWLEDGED).await;
        assert!(!first.contains("error"), "{first}");
        assert_eq!(handle.failure(), None, "a working engine has no failure");

        // One append is a write and an fdatasync; nothing else touches the storage meanwhile.
        let ops = storage.op_count();
        execute(&handle, "deposit probe b 1").await;
        assert_eq!(storage.op_count() - ops, 2, "operations per append");
        let acknowledged = views(&handle, &ids()).await;
        let durable = handle.durable_position();

        storage.fail_after(countdown);
        let failed = handle
            .execute(commands("deposit d2 a 5"), Detail::Full)
            .await;
        assert!(is_unavailable(&failed), "{op}: {failed:?}");
        let message = failed.unwrap_err().to_string();
        assert!(message.contains("injected I/O error"), "{op}: {message}");
        assert!(message.contains(op), "{op}: {message}");
        assert!(!handle.is_ready(), "{op}");
        let failure = handle.failure().expect("a failed engine says why");
        assert!(
            failure.contains("injected I/O error") && failure.contains(op),
            "{op}: {failure}"
        );
        assert_eq!(handle.durable_position(), durable, "{op}");
        assert!(is_unavailable(
            &handle
                .execute(commands("deposit d3 a 5"), Detail::Full)
                .await
        ));
        assert!(is_unavailable(&handle.account(id("a")).await));
        assert!(
            is_unavailable(&shutdown(opened.engine).await),
            "{op}: shutdown reports the failure"
        );

        // Only synced bytes survive: exactly the acknowledged state.
        let reopened = open_mem(&storage.crash_image(Torn::Nothing));
        let handle = reopened.engine.handle();
        assert!(handle.is_ready());
        assert_eq!(handle.durable_position(), durable, "{op}");
        assert_eq!(views(&handle, &ids()).await, acknowledged, "{op}");
        // The refused deposit never happened; retried, it is recorded now.
        assert_eq!(
            describe_all(
                &handle
                    .execute(commands("deposit d2 a 5"), Detail::Full)
                    .await
            ),
            format!("deposit created @{durable} amount 5 USD ext->a"),
            "{op}"
        );
        shutdown(reopened.engine).await.unwrap();

        // With whatever unsynced bytes survived too, every acknowledged command is still there.
        let reopened = open_mem(&storage.crash_image(Torn::Prefix(u64::MAX)));
        let handle = reopened.engine.handle();
        let retried = run(&handle, ACKNOWLEDGED).await;
        assert!(!retried.contains("created"), "{op}: {retried}");
        assert!(handle.durable_position() >= durable, "{op}");
        shutdown(reopened.engine).await.unwrap();
    }
}

/// A failed fsync fails the batch and every batch staged on top of it, reads included, even
/// though their decisions were already made.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_fsync_fails_every_batch_staged_after_it() {
    let storage = Throttled::new();
    let opened = open_in(Arc::new(storage.clone()), mem_config());
    let handle = opened.engine.handle();
    let first = run(&handle, ACKNOWLEDGED).await;
    assert!(!first.contains("error"), "{first}");
    let acknowledged = views(&handle, &ids()).await;
    let durable = handle.durable_position();

    storage.hold();
    let failing = handle.execute(commands("deposit d2 a 5"), Detail::Full);
    tokio::pin!(failing);
    assert!(poll_once(&mut failing).await.is_none());
    eventually("the fsync is held", || storage.waiting() == 1).await;
    // Staged behind the held fsync: a write and a read that sees it.
    let behind = handle.execute(commands("transfer t2 a b 1"), Detail::Full);
    tokio::pin!(behind);
    assert!(poll_once(&mut behind).await.is_none());
    let read = handle.account(id("b"));
    tokio::pin!(read);
    assert!(poll_once(&mut read).await.is_none());
    tokio::time::sleep(Duration::from_millis(20)).await;

    // The held fsync fails once released.
    storage.inner.fail_after(0);
    storage.release();
    assert!(is_unavailable(&failing.await));
    assert!(is_unavailable(&behind.await));
    assert!(
        is_unavailable(&read.await),
        "no read of state that never became durable"
    );
    assert!(!handle.is_ready());
    assert_eq!(handle.durable_position(), durable);
    assert!(is_unavailable(&shutdown(opened.engine).await));

    let reopened = open_mem(&storage.inner.crash_image(Torn::Nothing));
    let handle = reopened.engine.handle();
    assert_eq!(views(&handle, &ids()).await, acknowledged);
    assert_eq!(handle.durable_position(), durable);
    shutdown(reopened.engine).await.unwrap();
}

/// Once failed, the state thread waits for work instead of spinning, even with an overdue
/// pending transfer it may no longer expire.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_engine_does_not_spin_on_overdue_pending_transfers() {
    let storage = MemStorage::new();
    let (opened, state_thread) = open_traced(Arc::new(storage.clone()), mem_config());
    let handle = opened.engine.handle();
    execute(
        &handle,
        "open a USD\nopen b USD\ndeposit d1 a 100\npending p1 a b 10 1",
    )
    .await;
    storage.fail_after(0);
    assert!(is_unavailable(
        &handle
            .execute(vec![parse("deposit d2 a 1")], Detail::Full)
            .await
    ));

    // The pending transfer is overdue after one second; then measure the state thread for one.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let before = thread_cpu_ticks(state_thread);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = thread_cpu_ticks(state_thread) - before;
    // A spinning thread uses tens of ticks (10 ms each) per second even on a busy machine.
    assert!(
        used < 10,
        "the state thread used {used} ticks of CPU in one idle second"
    );
    assert!(is_unavailable(&shutdown(opened.engine).await));
}

/// A refusal from outside (the disk below its reserve) stops commands, not reads, appends
/// nothing, and ends when lifted; unlike a failed append, the engine stays ready.
#[tokio::test(flavor = "multi_thread")]
async fn refused_writes_append_nothing_keep_reads_and_resume_when_lifted() {
    let storage = MemStorage::new();
    let opened = open_mem(&storage);
    let handle = opened.engine.handle();
    let first = run(&handle, ACKNOWLEDGED).await;
    assert!(!first.contains("error"), "{first}");
    let before = views(&handle, &ids()).await;
    let durable = handle.durable_position();

    handle.refuse_writes(Some("the disk has 1 MiB free".into()));
    let refused = handle
        .execute(commands("deposit d2 a 5"), Detail::Full)
        .await;
    assert!(is_unavailable(&refused), "{refused:?}");
    assert!(refused.unwrap_err().to_string().contains("1 MiB free"));
    assert_eq!(views(&handle, &ids()).await, before);
    assert_eq!(handle.durable_position(), durable);
    assert!(handle.is_ready());

    handle.refuse_writes(None);
    assert_eq!(handle.writes_refused(), None);
    let resumed = run(&handle, "deposit d2 a 5").await;
    assert!(!resumed.contains("error"), "{resumed}");
    assert!(handle.durable_position() > durable);
    shutdown(opened.engine).await.unwrap();
}

/// The account directory the event feed reads names an account only once the batch that opened
/// it is durable: a failed append names nothing, and a restart names what the log holds.
#[tokio::test(flavor = "multi_thread")]
async fn account_names_follow_durable_batches_only() {
    let storage = MemStorage::new();
    let opened = open_mem(&storage);
    let handle = opened.engine.handle();
    let names = handle.account_names();
    let first = run(&handle, "open a USD\nopen b EUR").await;
    assert!(!first.contains("error"), "{first}");
    assert_eq!(names.visible(), handle.durable_position());
    // Each new ledger gets its external account first: USD's, a, EUR's, b.
    let named: Vec<Option<String>> = (0..4)
        .map(|index| names.get(index).unwrap().id.map(|id| id.to_string()))
        .collect();
    assert_eq!(named, [None, Some("a".into()), None, Some("b".into())]);
    assert_eq!(names.get(1).unwrap().ledger.as_str(), "USD");
    assert_eq!(names.get(4), None);

    let visible = names.visible();
    storage.fail_after(0);
    let failed = handle.execute(commands("open c USD"), Detail::Full).await;
    assert!(is_unavailable(&failed), "{failed:?}");
    assert_eq!(names.get(4), None, "a batch that failed names nothing");
    assert_eq!(names.visible(), visible);
    assert!(is_unavailable(&shutdown(opened.engine).await));

    let reopened = open_mem(&storage.crash_image(Torn::Nothing));
    let names = reopened.engine.handle().account_names();
    assert_eq!(names.visible(), visible);
    assert_eq!(names.get(3).unwrap().id.unwrap().as_str(), "b");
    assert_eq!(names.get(4), None);
}

/// A clock at the last nanosecond a batch can be stamped with (in the year 2262).
#[derive(Debug)]
struct AtTheTimestampLimit;

impl tally_engine::Clock for AtTheTimestampLimit {
    fn now_ns(&self) -> u64 {
        tally_core::limits::TIMESTAMP_NS_MAX
    }
}

/// Batch timestamps increase, so a clock at the limit leaves room for one batch. The engine
/// then fails rather than stamp a batch past the limit, which replay would refuse: requests are
/// refused, saying why, and the log a restart reads holds only batches it accepts.
#[tokio::test(flavor = "multi_thread")]
async fn an_engine_at_the_timestamp_limit_fails_rather_than_write_a_batch_replay_refuses() {
    let storage = MemStorage::new();
    let config = tally_engine::EngineConfig {
        clock: Arc::new(AtTheTimestampLimit),
        ..mem_config()
    };
    let opened = open_in(Arc::new(storage.clone()), config);
    let handle = opened.engine.handle();
    // The first batch (a request's, or an idle tick's) is at the limit; the second cannot be.
    for name in ["a", "b", "c"] {
        let answer = handle
            .execute(commands(&format!("open {name} USD")), Detail::Full)
            .await;
        assert!(answer.is_ok() || is_unavailable(&answer), "{answer:?}");
    }
    let failure = handle.failure().expect("the engine failed at the limit");
    assert!(failure.contains("past the timestamp limit"), "{failure}");
    assert!(is_unavailable(
        &handle.execute(commands("open d USD"), Detail::Full).await
    ));
    let durable = handle.durable_position();
    let _ = shutdown(opened.engine).await;
    let reopened = open_mem(&storage.crash_image(Torn::Nothing));
    assert_eq!(reopened.engine.handle().durable_position(), durable);
}
