//! The pipeline: group commit, reads ordered after staged writes, and a bounded queue.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_core::Command;
use tally_engine::limits::{
    COMMAND_QUEUE_COMMANDS_MAX, COMMAND_QUEUE_REQUESTS_MAX, COMMIT_BATCH_COMMANDS_MAX,
};
use tally_engine::{Answer, Detail, EngineError, EngineHandle};

use crate::support::{
    accounts, describe_all, eventually, execute, id, mem_config, open_in, parse, poll_once,
    shutdown, Throttled,
};

/// 200 concurrent clients behind fsyncs of 5 ms: many commands share each fsync.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_commands_share_fsyncs() {
    const CLIENTS: usize = 200;
    let storage = Throttled::new();
    let opened = open_in(Arc::new(storage.clone()), mem_config());
    let handle = opened.engine.handle();
    let opens: String = (0..10).map(|i| format!("open x{i} USD\n")).collect();
    execute(&handle, &opens).await;
    storage.set_delay(Duration::from_millis(5));

    let batches_before = handle.metrics().batches.get();
    let events_before = handle.metrics().events.get();
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let handle = handle.clone();
        tasks.push(tokio::spawn(async move {
            let command = parse(&format!("deposit g{i} x{} {}", i % 10, i + 1));
            handle.execute(vec![command], Detail::Compact).await
        }));
    }
    let mut positions = Vec::new();
    for task in tasks {
        let answers = task.await.unwrap().unwrap();
        match answers.as_slice() {
            [Answer::Transfer { reply, .. }] if reply.created => positions.push(reply.position),
            other => panic!("{other:?}"),
        }
    }
    let batches = handle.metrics().batches.get() - batches_before;
    assert_eq!(
        handle.metrics().events.get() - events_before,
        CLIENTS as u64
    );
    assert!(
        batches * 5 <= CLIENTS as u64,
        "{CLIENTS} commands took {batches} fsyncs: expected at least 5 commands per fsync"
    );
    positions.sort_unstable();
    assert_eq!(positions, (10..10 + CLIENTS as u64).collect::<Vec<_>>());
    let total: i128 = {
        let mut total = 0;
        for i in 0..10 {
            total += handle
                .account(id(&format!("x{i}")))
                .await
                .unwrap()
                .unwrap()
                .balance;
        }
        total
    };
    assert_eq!(total, (1..=CLIENTS as i128).sum::<i128>());
    shutdown(opened.engine).await.unwrap();
}

/// A read submitted right after a write sees the write, and is not answered before the write is
/// durable: nobody observes state that is not durable.
#[tokio::test(flavor = "multi_thread")]
async fn a_read_after_a_write_sees_it_only_once_it_is_durable() {
    let storage = Throttled::new();
    let opened = open_in(Arc::new(storage.clone()), mem_config());
    let handle = opened.engine.handle();
    execute(&handle, "open a USD\nopen b USD\ndeposit d1 a 100").await;
    let durable = handle.durable_position();

    storage.hold();
    let write = handle.execute(vec![parse("transfer t1 a b 30")], Detail::Full);
    tokio::pin!(write);
    assert!(
        poll_once(&mut write).await.is_none(),
        "submitted, not durable"
    );
    let read = handle.account(id("b"));
    tokio::pin!(read);
    assert!(poll_once(&mut read).await.is_none(), "submitted");
    eventually("the write's fsync is held", || storage.waiting() == 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        poll_once(&mut read).await.is_none(),
        "the read waits for the write's fsync"
    );
    assert_eq!(handle.durable_position(), durable);

    storage.release();
    let view = read.await.unwrap().unwrap();
    assert!(
        handle.durable_position() > durable,
        "the write is durable when the read is answered"
    );
    assert_eq!(view.balance, 30);
    assert_eq!(
        describe_all(&write.await),
        format!("transfer created @{durable} amount 30 USD a->b")
    );

    // Without holding anything: each read right after a write (submitted, not awaited) sees it.
    for i in 0..50 {
        let write = handle.execute(
            vec![parse(&format!("transfer r{i} a b 1"))],
            Detail::Compact,
        );
        tokio::pin!(write);
        let submitted = poll_once(&mut write).await;
        let view = handle.account(id("b")).await.unwrap().unwrap();
        assert_eq!(view.balance, 31 + i, "read {i}");
        let answers = match submitted {
            Some(answers) => answers,
            None => write.await,
        };
        assert!(matches!(answers.unwrap()[..], [Answer::Transfer { .. }]));
    }
    shutdown(opened.engine).await.unwrap();
}

/// Submits `request` (one command or read) on its own task and counts it once submitted.
fn spawn_submitted<T: Send + 'static>(
    submitted: &Arc<AtomicUsize>,
    request: impl std::future::Future<Output = Result<T, EngineError>> + Send + 'static,
) -> tokio::task::JoinHandle<Result<T, EngineError>> {
    let submitted = Arc::clone(submitted);
    tokio::spawn(async move {
        tokio::pin!(request);
        let early = poll_once(&mut request).await;
        submitted.fetch_add(1, Ordering::SeqCst);
        match early {
            Some(outcome) => outcome,
            None => request.await,
        }
    })
}

/// While the log is stuck, a flood of large requests fills the queue: the excess is refused as
/// overloaded, the queue never holds more than its limit, and every accepted request completes
/// once the log moves again.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_large_requests_is_refused_beyond_the_queue_limit() {
    const CHAINS: usize = 20;
    const CHAIN: usize = tally_core::limits::BATCH_TRANSFERS_MAX;
    let storage = Throttled::new();
    let opened = open_in(Arc::new(storage.clone()), mem_config());
    let handle = opened.engine.handle();
    execute(&handle, "open sink USD").await;

    storage.hold();
    let stuck = tokio::spawn({
        let handle = handle.clone();
        async move {
            handle
                .execute(vec![parse("deposit first sink 1")], Detail::Compact)
                .await
        }
    });
    eventually("the writer's fsync is held", || storage.waiting() == 1).await;

    let submitted = Arc::new(AtomicUsize::new(0));
    let mut floods = Vec::new();
    for chain in 0..CHAINS {
        let chain: Vec<_> = (0..CHAIN)
            .map(|i| match parse(&format!("deposit c{chain}-{i} sink 1")) {
                Command::Transfer(transfer) => transfer,
                _ => unreachable!(),
            })
            .collect();
        let handle = handle.clone();
        floods.push(spawn_submitted(&submitted, async move {
            handle
                .execute(vec![Command::Linked(chain)], Detail::Compact)
                .await
        }));
    }
    eventually("every chain is submitted", || {
        submitted.load(Ordering::SeqCst) == CHAINS
    })
    .await;
    // Let the state thread take what it can; it then waits for the stuck writer.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(handle.queued_commands() <= COMMAND_QUEUE_COMMANDS_MAX);
    let overloaded = floods.iter().filter(|flood| flood.is_finished()).count();
    let accepted = CHAINS - overloaded;
    assert!(
        overloaded > 0,
        "the queue must refuse some of {CHAINS} chains of {CHAIN}"
    );
    // Held: the queue, one batch staged for the writer and one waiting to be staged.
    assert!(
        accepted * CHAIN <= COMMAND_QUEUE_COMMANDS_MAX + 2 * COMMIT_BATCH_COMMANDS_MAX,
        "{accepted} chains of {CHAIN} accepted"
    );
    assert_eq!(handle.metrics().overloaded.get(), overloaded as u64);

    storage.release();
    let mut completed = 0;
    for flood in floods {
        match flood.await.unwrap() {
            Ok(answers) => {
                assert_eq!(answers.len(), CHAIN);
                assert!(answers.iter().all(
                    |answer| matches!(answer, Answer::Transfer { reply, .. } if reply.created)
                ));
                completed += 1;
            }
            Err(EngineError::Overloaded) => {}
            Err(error) => panic!("{error}"),
        }
    }
    assert_eq!(completed, accepted);
    stuck.await.unwrap().unwrap();
    assert_eq!(handle.queued_commands(), 0);

    // The engine still works, and holds exactly what it accepted.
    execute(&handle, "deposit after sink 1").await;
    assert_eq!(
        handle.account(id("sink")).await.unwrap().unwrap().balance,
        (2 + accepted * CHAIN) as i128
    );
    shutdown(opened.engine).await.unwrap();
}

type Pending = Pin<Box<dyn Future<Output = Result<(), EngineError>> + Send>>;

/// One small request of `kind`: a read or an execute without commands.
fn small_request(handle: &EngineHandle, kind: &'static str) -> Pending {
    let handle = handle.clone();
    match kind {
        "read" => Box::pin(async move {
            let view = handle.account(id("a")).await?;
            assert!(view.is_some());
            Ok(())
        }),
        "empty" => Box::pin(async move {
            let answers = handle.execute(Vec::new(), Detail::Compact).await?;
            assert!(answers.is_empty());
            Ok(())
        }),
        _ => unreachable!(),
    }
}

/// While the log is stuck, clients submit small requests as fast as they can: the engine takes
/// a bounded number of them (the queue's and two batches' worth), then refuses the rest.
async fn flood_of_small_requests_is_bounded(kind: &'static str) {
    const SUBMITTERS: usize = 4;
    let storage = Throttled::new();
    let opened = open_in(Arc::new(storage.clone()), mem_config());
    let handle = opened.engine.handle();
    execute(&handle, "open a USD").await;
    storage.hold();
    let stuck = tokio::spawn({
        let handle = handle.clone();
        async move {
            handle
                .execute(vec![parse("deposit first a 1")], Detail::Compact)
                .await
        }
    });
    eventually("the writer's fsync is held", || storage.waiting() == 1).await;

    let bound = COMMAND_QUEUE_REQUESTS_MAX + 2 * COMMIT_BATCH_COMMANDS_MAX;
    let started = Instant::now();
    let accepted_count = Arc::new(AtomicUsize::new(0));
    // Milliseconds after `started` of the last acceptance by any submitter.
    let last_accepted = Arc::new(AtomicU64::new(0));
    let overloaded = Arc::new(AtomicUsize::new(0));
    let mut submitters = Vec::new();
    for _ in 0..SUBMITTERS {
        let handle = handle.clone();
        let (accepted_count, last_accepted, overloaded) = (
            Arc::clone(&accepted_count),
            Arc::clone(&last_accepted),
            Arc::clone(&overloaded),
        );
        submitters.push(tokio::spawn(async move {
            let mut accepted = Vec::new();
            // Stop once nothing was accepted for a while (the engine is full), or past the bound.
            loop {
                let idle_ms = (started.elapsed().as_millis() as u64)
                    .saturating_sub(last_accepted.load(Ordering::SeqCst));
                if idle_ms >= 300 || accepted_count.load(Ordering::SeqCst) > bound {
                    break;
                }
                let mut request = small_request(&handle, kind);
                match poll_once(&mut request).await {
                    None => {
                        accepted.push(request);
                        accepted_count.fetch_add(1, Ordering::SeqCst);
                        last_accepted
                            .fetch_max(started.elapsed().as_millis() as u64, Ordering::SeqCst);
                    }
                    Some(Err(EngineError::Overloaded)) => {
                        overloaded.fetch_add(1, Ordering::SeqCst);
                        tokio::task::yield_now().await;
                    }
                    Some(other) => panic!("{kind}: {:?}", other.err()),
                }
                assert!(handle.queued_commands() <= COMMAND_QUEUE_COMMANDS_MAX);
            }
            accepted
        }));
    }
    let mut accepted = Vec::new();
    for submitter in submitters {
        accepted.extend(submitter.await.unwrap());
    }
    assert!(
        accepted.len() <= bound,
        "{kind}: {} requests accepted while the log was stuck, bound {bound}",
        accepted.len()
    );
    assert!(overloaded.load(Ordering::SeqCst) > 0, "{kind}");

    storage.release();
    for request in accepted {
        request.await.unwrap();
    }
    stuck.await.unwrap().unwrap();
    assert_eq!(
        accounts(&handle, &["a"]).await,
        "a: USD balance 1 debits 0 credits 1 pending -0 +0 v2\n"
    );
    shutdown(opened.engine).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_reads_is_bounded() {
    flood_of_small_requests_is_bounded("read").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_empty_requests_is_bounded() {
    flood_of_small_requests_is_bounded("empty").await;
}
