//! Pending transfers expire on time through the engine, with no other traffic.

use std::time::{Duration, Instant};

use tally_log::MemStorage;

use crate::support::{accounts, eventually, execute, open_mem, run, shutdown};

#[tokio::test(flavor = "multi_thread")]
async fn a_pending_transfer_expires_without_traffic() {
    let storage = MemStorage::new();
    let opened = open_mem(&storage);
    let handle = opened.engine.handle();
    execute(
        &handle,
        "open a USD\nopen b USD\ndeposit d1 a 100\npending forever a b 5",
    )
    .await;
    execute(&handle, "pending p1 a b 40 1").await;
    let answered = Instant::now();
    let durable = handle.durable_position();
    assert_eq!(
        accounts(&handle, &["a", "b"]).await,
        "a: USD balance 100 debits 0 credits 100 pending -45 +0 v4\n\
         b: USD balance 0 debits 0 credits 0 pending -0 +45 v3\n"
    );

    // No requests from here on: only the state thread's own tick can record the expiry.
    eventually("the expiry event is durable", || {
        handle.durable_position() > durable
    })
    .await;
    assert!(
        answered.elapsed() >= Duration::from_millis(900),
        "expired after {:?}, before its timeout",
        answered.elapsed()
    );
    assert_eq!(
        handle.durable_position(),
        durable + 1,
        "one event: the expiry"
    );

    assert_eq!(
        run(&handle, "post x1 p1\nvoid v1 p1").await,
        format!(
            "post x1 p1: rejected already_resolved @{}\nvoid v1 p1: rejected already_resolved @{}\n",
            durable + 1,
            durable + 2
        )
    );
    let after = accounts(&handle, &["a", "b"]).await;
    assert_eq!(
        after,
        "a: USD balance 100 debits 0 credits 100 pending -5 +0 v5\n\
         b: USD balance 0 debits 0 credits 0 pending -0 +5 v4\n"
    );
    // A pending transfer without a timeout stays.
    assert!(run(&handle, "post x2 forever")
        .await
        .contains("post created"));
    shutdown(opened.engine).await.unwrap();

    // The expiry is in the log: after a restart the pending transfer is still resolved.
    let reopened = open_mem(&storage);
    let handle = reopened.engine.handle();
    assert_eq!(
        run(&handle, "post x1 p1").await,
        format!(
            "post x1 p1: rejected already_resolved @{} (again)\n",
            durable + 1
        )
    );
    shutdown(reopened.engine).await.unwrap();
}
