//! The delivery worker end to end: a real `tally serve` (the worker runs by default), the fake target of
//! `tally-dispatch`, and a SIGKILL in the middle.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tally_dispatch::fake::{Behaviour, FakeTarget};

use crate::support::{Client, ServeOptions, Server};

/// Generous: the CI machine is busy; the tests poll, they do not time.
const DEADLINE: Duration = Duration::from_secs(180);

const SERVE_ARGS: &[&str] = &["--delivery-retry-max-ms", "500", "--open-metrics"];

/// Claims of the "one dead primary" scenario: issue 6's 10,000.
const CLAIMS_ONE_DEAD: usize = 10_000;

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
async fn with_no_deliveries_claims_wait_for_a_server_with_the_worker() {
    let target = FakeTarget::start(1).await;
    let dir = tempfile::tempdir().unwrap();
    let mut args = SERVE_ARGS.to_vec();
    args.push("--no-deliveries");
    let server = Server::start_with(
        dir.path(),
        ServeOptions {
            args: &args,
            ..ServeOptions::default()
        },
    )
    .await;
    let client = server.client();
    let spec = campaign(target.urls(), Vec::new(), 10);
    let answer = client.post_settled("/v1/campaigns", &spec).await.unwrap();
    assert_eq!(answer.status, 201, "{}", answer.text);
    let claim = json!({"order_id": "verify", "user": "ver"});
    let answer = client
        .post_settled("/v1/campaigns/gifts/claims", &claim)
        .await
        .unwrap();
    assert_eq!(answer.status, 201, "{}", answer.text);
    // Longer than the worker takes to deliver one claim to a healthy target (a few ms), and
    // than its rescan interval: a worker that ran anyway would have been seen.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        claim_state(&client, "verify").await,
        ("pending_delivery".to_owned(), 0)
    );
    assert_eq!(target.orders().len(), 0, "no request reached the target");
    server.stop().await;

    // The claim waited in the log: a server with the worker delivers it.
    let server = start(dir.path()).await;
    wait_delivered(&server.client(), &["verify".to_owned()]).await;
    assert_eq!(target.order("verify").deliveries, 1);
    server.stop().await;
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
    server.stop().await;
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

    // Reconciliation asks the target's order-status endpoint: an order it delivered is
    // posted; one it never received (turned unknown at the restart before it was sent) is
    // left for a person, with exit code 1.
    let reconcile = tokio::process::Command::new(crate::support::tally_bin())
        .args(["claims", "reconcile", "--target", &server.url])
        .env("TALLY_TOKEN", &server.token)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&reconcile.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&reconcile.stderr).into_owned();
    let mut left = 0;
    for order in &orders {
        let (state, _) = claim_state(&client, order).await;
        match records.get(order) {
            Some(record) if record.deliveries == 1 => {
                assert_eq!(state, "delivered", "order {order}\n{stdout}\n{stderr}");
            }
            _ => {
                left += 1;
                assert_eq!(state, "unknown_needs_reconciliation", "order {order}");
                assert!(
                    stdout.contains(&format!("{order}\tcampaign gifts\tleft for a person")),
                    "{stdout}"
                );
            }
        }
    }
    assert_eq!(
        reconcile.status.code(),
        Some(if left == 0 { 0 } else { 1 }),
        "{stdout}\n{stderr}"
    );
    assert!(stdout.contains(" settled, "), "{stdout}");
    server.stop().await;
}

/// Counts the claims in `state` by paging through `GET /v1/claims`.
async fn count_claims(client: &Client, state: &str) -> usize {
    let mut count = 0;
    let mut after: Option<u64> = None;
    loop {
        let path = match after {
            Some(after) => format!("/v1/claims?state={state}&limit=1000&after={after}"),
            None => format!("/v1/claims?state={state}&limit=1000"),
        };
        let answer = client.get_settled(&path).await.unwrap();
        assert_eq!(answer.status, 200, "{}", answer.text);
        count += answer.body["claims"].as_array().unwrap().len();
        match answer.body["next"].as_u64() {
            Some(next) => after = Some(next),
            None => return count,
        }
    }
}

/// Polls until no claim is pending delivery.
async fn wait_none_pending(client: &Client) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let pending = count_claims(client, "pending_delivery").await;
        if pending == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{pending} claims still pending after {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The sum of the samples of `name` labelled with `endpoint`, from `/metrics`.
async fn endpoint_metric(client: &Client, name: &str, endpoint: &str) -> u64 {
    let answer = client.get_settled("/metrics").await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text);
    let label = format!("endpoint=\"{endpoint}\"");
    answer
        .text
        .lines()
        .filter(|line| line.starts_with(name) && line.contains(&label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_dead_primary_of_three_claims_are_delivered_and_it_is_ejected_then_readmitted() {
    let target = FakeTarget::start(3).await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let client = server.client();
    let inventory = CLAIMS_ONE_DEAD as u64 + 1000;
    define_and_publish(&client, &campaign(target.urls(), Vec::new(), inventory)).await;
    target.set(2, Behaviour::Refuse).await;
    let orders = claim_all(&client, CLAIMS_ONE_DEAD).await;
    wait_none_pending(&client).await;

    let records = target.orders();
    let delivered = orders
        .iter()
        .filter(|order| {
            records
                .get(*order)
                .is_some_and(|record| record.deliveries == 1)
        })
        .count();
    assert!(
        delivered * 1000 >= CLAIMS_ONE_DEAD * 999,
        "{delivered} of {CLAIMS_ONE_DEAD} delivered"
    );
    assert_eq!(
        count_claims(&client, "delivered").await,
        CLAIMS_ONE_DEAD + 1
    );
    let dead = target.url(2);
    assert!(
        endpoint_metric(&client, "tally_dispatch_ejections_total", &dead).await >= 1,
        "the dead endpoint was never ejected"
    );

    // It recovers: after its ejection time a probe re-admits it; keep a trickle of claims
    // flowing so that there is a request to probe with.
    target.set(2, Behaviour::Ok).await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut extra = 0;
    while endpoint_metric(&client, "tally_dispatch_readmissions_total", &dead).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the recovered endpoint was never re-admitted"
        );
        let order = format!("late-{extra}");
        extra += 1;
        let body = json!({"order_id": order, "user": format!("user-{order}")});
        let answer = client
            .post_settled("/v1/campaigns/gifts/claims", &body)
            .await
            .unwrap();
        assert_eq!(answer.status, 201, "{}", answer.text);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    wait_none_pending(&client).await;
    assert_eq!(
        count_claims(&client, "unknown_needs_reconciliation").await,
        0
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_primary_dead_the_backup_delivers() {
    let target = FakeTarget::start(4).await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let client = server.client();
    let primary = target.urls()[..3].to_vec();
    let spec = campaign(primary, vec![target.url(3)], 1000);
    define_and_publish(&client, &spec).await;
    for index in 0..3 {
        target.set(index, Behaviour::Refuse).await;
    }
    let orders = claim_all(&client, 300).await;
    wait_delivered(&client, &orders).await;
    let records = target.orders();
    for order in &orders {
        assert_eq!(records[order].deliveries, 1, "order {order}");
    }
    // Some claims reach the backup only on a retry while the primaries fail their way out of
    // rotation; all of them end there.
    assert!(
        target.endpoint_deliveries(3) >= 300,
        "{}",
        target.endpoint_deliveries(3)
    );
    // The dispatch series, per campaign and endpoint, are in /metrics and clean.
    let metrics = client.get_settled("/metrics").await.unwrap().text;
    assert!(
        metrics
            .contains("tally_dispatch_deliveries_total{campaign=\"gifts\",outcome=\"delivered\"}"),
        "{metrics}"
    );
    // The last 10 minutes, per campaign and per endpoint: the backup answered all it got.
    let window = |name: &str, endpoint: &str| -> f64 {
        let series = format!("{name}{{campaign=\"gifts\",endpoint=\"{endpoint}\"}} ");
        let line = metrics
            .lines()
            .find(|line| line.starts_with(&series))
            .unwrap_or_else(|| panic!("no {series} in {metrics}"));
        line[series.len()..].trim().parse().unwrap()
    };
    assert!(window("tally_dispatch_window_requests", "") >= 300.0);
    let backup = target.url(3);
    assert!(window("tally_dispatch_window_requests", &backup) >= 300.0);
    assert_eq!(window("tally_dispatch_window_success_ratio", &backup), 1.0);
    assert!(window("tally_dispatch_window_latency_max_seconds", &backup) > 0.0);
    let (clean, printed) = crate::observability::promtool_check(&metrics);
    assert!(clean, "promtool check metrics: {printed}");
    server.stop().await;
}
