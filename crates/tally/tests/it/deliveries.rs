//! The delivery worker end to end: a real `tally serve --deliveries`, the fake target of
//! `tally-dispatch`, and a SIGKILL in the middle.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tally_dispatch::fake::{Behaviour, FakeTarget};

use crate::support::{Client, ServeOptions, Server};

/// Generous: the CI machine is busy; the tests poll, they do not time.
const DEADLINE: Duration = Duration::from_secs(180);

const SERVE_ARGS: &[&str] = &["--deliveries", "--delivery-retry-max-ms", "500"];

async fn start(data_dir: &Path) -> Server {
    Server::start_with(
        data_dir,
        ServeOptions {
            args: SERVE_ARGS,
            ..ServeOptions::default()
        },
    )
    .await
}

fn campaign(primary: Vec<String>, backup: Vec<String>, inventory: u64) -> Value {
    let mut spec = json!({
        "id": "gifts", "gift_ledger": "GIFT", "inventory": inventory, "per_user_limit": 1,
        "daily_limit": inventory, "timezone": "UTC", "starts_at": "2020-01-01T00:00:00Z",
        "ends_at": "2100-01-01T00:00:00Z", "verification_account": "ver",
        "delivery": {"primary": primary, "backup": backup, "connect_timeout_ms": 200,
                     "read_timeout_ms": 1000, "max_read_timeouts": 2, "retry_budget_percent": 20}
    });
    if backup.is_empty() {
        spec["delivery"].as_object_mut().unwrap().remove("backup");
    }
    spec
}

async fn claim_state(client: &Client, order: &str) -> (String, u64) {
    let answer = client
        .get_settled(&format!("/v1/claims/{order}"))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text);
    (
        answer.body["state"].as_str().unwrap().to_owned(),
        answer.body["attempts"].as_u64().unwrap(),
    )
}

/// Polls until every order is delivered; panics with the stragglers at the deadline.
async fn wait_delivered(client: &Client, orders: &[String]) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut waiting: Vec<String> = orders.to_vec();
    while !waiting.is_empty() {
        let mut still = Vec::new();
        for order in &waiting {
            let (state, _) = claim_state(client, order).await;
            match state.as_str() {
                "delivered" => {}
                "pending_delivery" => still.push(order.clone()),
                other => panic!("order {order} ended {other}, expected delivered"),
            }
        }
        waiting = still;
        if waiting.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} claims still pending after {DEADLINE:?}, such as {}",
            waiting.len(),
            waiting[0]
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Defines the campaign, has its verification account's gift delivered (the target must
/// deliver) and publishes it.
async fn define_and_publish(client: &Client, spec: &Value) {
    let answer = client.post_settled("/v1/campaigns", spec).await.unwrap();
    assert_eq!(answer.status, 201, "{}", answer.text);
    let answer = client
        .post_settled(
            "/v1/campaigns/gifts/claims",
            &json!({"order_id": "verify", "user": "ver"}),
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 201, "{}", answer.text);
    wait_delivered(client, &["verify".to_owned()]).await;
    let answer = client
        .post_settled("/v1/campaigns/gifts/publish", &json!({}))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text);
}

async fn claim_all(client: &Client, count: usize) -> Vec<String> {
    let orders: Vec<String> = (0..count).map(|index| format!("order-{index}")).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in orders.chunks(count.div_ceil(16).max(1)) {
        let client = client.clone();
        let chunk = chunk.to_vec();
        tasks.spawn(async move {
            for order in chunk {
                let body = json!({"order_id": order, "user": format!("user-{order}")});
                let answer = client
                    .post_settled("/v1/campaigns/gifts/claims", &body)
                    .await
                    .unwrap();
                assert_eq!(answer.status, 201, "{}", answer.text);
                assert_eq!(answer.body["state"], "pending_delivery");
            }
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap();
    }
    orders
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_everything_down_claims_wait_and_are_delivered_once_after_recovery_across_a_sigkill() {
    let target = FakeTarget::start(2).await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let client = server.client();
    let spec = campaign(vec![target.url(0)], vec![target.url(1)], 1000);
    define_and_publish(&client, &spec).await;

    target.set(0, Behaviour::Refuse).await;
    target.set(1, Behaviour::Refuse).await;
    let orders = claim_all(&client, 300).await;
    // The worker keeps trying: attempts are recorded in the log, nothing is delivered.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (state, attempts) = claim_state(&client, &orders[0]).await;
        assert_eq!(state, "pending_delivery");
        if attempts >= 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no retries seen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(target.delivered_count(), 1, "only the verification gift");

    // A crash while the retry queue is busy; the queue is in the log.
    server.kill().await;
    target.set(0, Behaviour::Ok).await;
    target.set(1, Behaviour::Ok).await;
    let server = start(dir.path()).await;
    let client = server.client();
    wait_delivered(&client, &orders).await;

    let records = target.orders();
    for order in &orders {
        let record = records.get(order).copied().unwrap_or_default();
        assert_eq!(record.deliveries, 1, "order {order}: {record:?}");
        assert_eq!(
            record.delivery_requests, 1,
            "order {order} reached a delivering endpoint more than once: {record:?}"
        );
    }
    server.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliver_then_time_out_never_sends_an_order_more_often_than_the_cap_across_a_sigkill() {
    let target = FakeTarget::start(1).await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let client = server.client();
    let spec = campaign(vec![target.url(0)], Vec::new(), 100);
    define_and_publish(&client, &spec).await;

    target.set(0, Behaviour::DeliverThenHang).await;
    let orders = claim_all(&client, 20).await;
    // Kill while attempts hang in flight: each counts as read timeouts after the restart.
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill().await;
    let server = start(dir.path()).await;
    let client = server.client();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    for order in &orders {
        loop {
            let (state, _) = claim_state(&client, order).await;
            if state != "pending_delivery" {
                assert_eq!(state, "unknown_needs_reconciliation", "order {order}");
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "order {order} still pending"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let records = target.orders();
    let sent: u32 = orders
        .iter()
        .filter_map(|order| records.get(order))
        .map(|record| record.delivery_requests)
        .sum();
    assert!(
        sent > 0,
        "the target never saw an order: the test proves nothing"
    );
    for order in &orders {
        let record = records.get(order).copied().unwrap_or_default();
        // max_read_timeouts is 2: never more delivering requests than that, crash or not.
        assert!(
            record.delivery_requests <= 2,
            "order {order} reached the target {} times: {record:?}",
            record.delivery_requests
        );
    }
    server.terminate().await;
}
