//! The dispatcher against the fake target, over real sockets on 127.0.0.1, with timeouts of
//! tens of milliseconds so each test takes at most a few seconds.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use tally_dispatch::fake::{Behaviour, FakeTarget};
use tally_dispatch::{Attempt, DispatchConfig, Dispatcher, Order, RetryReason, WebhookConfig};

const MS: Duration = Duration::from_millis(1);

/// Short timeouts and quick ejections, for tests.
fn config(primary: Vec<String>) -> DispatchConfig {
    let mut config = DispatchConfig::new(primary);
    config.connect_timeout = 50 * MS;
    config.read_timeout = 100 * MS;
    config.outlier.consecutive_failures = 3;
    config.outlier.base_ejection = 100 * MS;
    config.outlier.max_ejection = 400 * MS;
    config.outlier.window = Duration::from_secs(1);
    config
}

fn dispatcher(config: DispatchConfig) -> Arc<Dispatcher> {
    Arc::new(Dispatcher::new(config, &mut Registry::default()).expect("a valid configuration"))
}

fn order(campaign: &str, index: usize) -> Order {
    Order::new(
        &format!("{campaign}-{index}"),
        "alice",
        campaign,
        "points",
        10,
    )
    .unwrap()
}

fn orders(campaign: &str, count: usize) -> Vec<Order> {
    (0..count).map(|index| order(campaign, index)).collect()
}

/// Delivers every order once, `concurrency` at a time; the attempts in the orders' order.
async fn deliver_all(
    dispatcher: &Arc<Dispatcher>,
    orders: Vec<Order>,
    concurrency: usize,
) -> Vec<Attempt> {
    let count = orders.len();
    let queue = Arc::new(Mutex::new(
        orders.into_iter().enumerate().collect::<VecDeque<_>>(),
    ));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (queue, dispatcher) = (queue.clone(), dispatcher.clone());
        workers.spawn(async move {
            let mut done = Vec::new();
            loop {
                let next = queue.lock().unwrap().pop_front();
                let Some((index, order)) = next else { break };
                done.push((index, dispatcher.deliver(&order, 0).await));
            }
            done
        });
    }
    let mut attempts = vec![None; count];
    while let Some(done) = workers.join_next().await {
        for (index, attempt) in done.unwrap() {
            attempts[index] = Some(attempt);
        }
    }
    attempts.into_iter().map(Option::unwrap).collect()
}

fn is_delivered(attempt: &Attempt) -> bool {
    matches!(
        attempt,
        Attempt::Delivered { .. } | Attempt::AlreadyDelivered { .. }
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_follow_the_contract() {
    let target = FakeTarget::start(1).await;
    let dispatcher = dispatcher(config(target.urls()));
    let first = order("contract", 1);
    let delivered = dispatcher.deliver(&first, 0).await;
    assert!(
        matches!(delivered, Attempt::Delivered { .. }),
        "{delivered:?}"
    );
    let again = dispatcher.deliver(&first, 0).await;
    assert!(
        matches!(again, Attempt::AlreadyDelivered { .. }),
        "{again:?}"
    );
    assert_eq!(target.order("contract-1").deliveries, 1);
    assert_eq!(target.order("contract-1").attempts, 2);

    target.set(0, Behaviour::Status(400)).await;
    let rejected = dispatcher.deliver(&order("contract", 2), 0).await;
    assert_eq!(
        rejected,
        Attempt::Rejected {
            status: 400,
            body: "programmed status".to_owned()
        }
    );
    target.set(0, Behaviour::Status(503)).await;
    let failed = dispatcher.deliver(&order("contract", 3), 0).await;
    let expected = RetryReason::ServerError { status: 503 };
    assert!(
        matches!(failed, Attempt::RetryLater { reason, read_timeouts: 0 } if reason == expected),
        "{failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_primary_is_ejected_and_readmitted_after_a_probe() {
    let target = FakeTarget::start(3).await;
    target.set(2, Behaviour::Refuse).await;
    let dispatcher = dispatcher(config(target.urls()));

    let attempts = deliver_all(&dispatcher, orders("dead", 10_000), 32).await;
    let delivered = attempts
        .iter()
        .filter(|attempt| is_delivered(attempt))
        .count();
    assert!(delivered >= 9_990, "{delivered} of 10000 delivered");
    assert_eq!(target.delivered_count(), delivered);
    assert_eq!(target.endpoint_deliveries(2), 0);
    let snapshot = dispatcher.snapshot();
    assert!(snapshot.endpoints[2].ejections >= 1, "{snapshot:?}");

    // The endpoint recovers: once its ejection is over, a probe succeeds and it is back.
    target.set(2, Behaviour::Ok).await;
    let started = Instant::now();
    let mut index = 0;
    while target.endpoint_deliveries(2) < 10 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "never re-admitted"
        );
        index += 1;
        let attempt = dispatcher.deliver(&order("recovered", index), 0).await;
        assert!(is_delivered(&attempt), "{attempt:?}");
        tokio::time::sleep(MS).await;
    }
    assert_eq!(dispatcher.is_endpoint_healthy(&target.url(2)), Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_primary_dead_the_backup_delivers() {
    let target = FakeTarget::start(3).await;
    target.set(0, Behaviour::Refuse).await;
    target.set(1, Behaviour::Refuse).await;
    let mut config = config(vec![target.url(0), target.url(1)]);
    config.backup = vec![target.url(2)];
    // The default cap (50 %) ejects only one of the two primaries: failover must not depend
    // on it, a primary failing in a row is not counted on either.
    assert_eq!(config.outlier.max_ejection_percent, 50);
    config.outlier.base_ejection = Duration::from_secs(10);
    config.outlier.max_ejection = Duration::from_secs(10);
    let dispatcher = dispatcher(config);

    let attempts = deliver_all(&dispatcher, orders("backup", 200), 1).await;
    // A few deliveries fail while the primaries are being ejected, then all go to the backup.
    let backup: Arc<str> = target.url(2).into();
    for attempt in &attempts[10..] {
        assert_eq!(
            attempt,
            &Attempt::Delivered {
                endpoint: backup.clone()
            }
        );
    }
    assert!(target.endpoint_deliveries(2) >= 190);
    assert_eq!(dispatcher.is_endpoint_healthy(&target.url(0)), Some(false));
    assert_eq!(dispatcher.is_endpoint_healthy(&target.url(1)), Some(false));
}

/// Delivers `order` the way the durable queue would, carrying the read timeouts from call to
/// call, until the outcome is final or `calls` calls were made.
async fn deliver_until_final(dispatcher: &Dispatcher, order: &Order, calls: u32) -> Attempt {
    let mut read_timeouts = 0;
    let mut last = None;
    for _ in 0..calls {
        let attempt = dispatcher.deliver(order, read_timeouts).await;
        match attempt {
            Attempt::RetryLater {
                read_timeouts: count,
                ..
            } => read_timeouts = count,
            _ => return attempt,
        }
        last = Some(attempt);
    }
    last.expect("at least one call")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_timeouts_are_capped_and_connect_failures_do_not_count() {
    let target = FakeTarget::start(2).await;
    target.set(0, Behaviour::DeliverThenHang).await;
    target.set(1, Behaviour::DeliverThenHang).await;
    let mut config = config(target.urls());
    config.max_read_timeouts = 2;
    // Ejection would hide the timeouts behind "no healthy endpoint": switched off here.
    config.outlier.consecutive_failures = 1_000_000;
    config.outlier.success_percent_min = 0;
    let dispatcher = dispatcher(config);

    let mut calls = tokio::task::JoinSet::new();
    for index in 0..20 {
        let dispatcher = dispatcher.clone();
        calls.spawn(async move {
            let order = order("hang", index);
            (
                order.clone(),
                deliver_until_final(&dispatcher, &order, 10).await,
            )
        });
    }
    while let Some(done) = calls.join_next().await {
        let (order, attempt) = done.unwrap();
        assert_eq!(
            attempt,
            Attempt::UnknownNeedsReconciliation { read_timeouts: 2 }
        );
        let record = target.order(order.order_id());
        assert_eq!(record.deliveries, 1);
        assert!(record.delivery_requests <= 2, "{record:?}");
    }
    // The count carried in from earlier calls counts too.
    let later = dispatcher.deliver(&order("hang", 0), 2).await;
    assert_eq!(
        later,
        Attempt::UnknownNeedsReconciliation { read_timeouts: 2 }
    );

    // A refused connection never left: as many calls as wanted, no read timeout counted.
    target.set(0, Behaviour::Refuse).await;
    target.set(1, Behaviour::Refuse).await;
    let refused = order("refused", 0);
    for _ in 0..5 {
        let attempt = dispatcher.deliver(&refused, 0).await;
        assert_eq!(
            attempt,
            Attempt::RetryLater {
                reason: RetryReason::ConnectFailed,
                read_timeouts: 0
            }
        );
    }
    assert_eq!(target.order("refused-0").attempts, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stay_within_the_budget() {
    let target = FakeTarget::start(2).await;
    // One attempt in three fails: retries are useful, and the budget must still bound them.
    target.set(0, Behaviour::FailEvery(3)).await;
    target.set(1, Behaviour::FailEvery(3)).await;
    let mut config = config(target.urls());
    config.retry_budget.percent = 10;
    config.retry_budget.min_per_second = 1;
    config.retry_budget.window = Duration::from_secs(10);
    config.outlier.success_percent_min = 0;
    let dispatcher = dispatcher(config);
    let count = 1_000;
    deliver_all(&dispatcher, orders("budget", count), 4).await;
    let attempts = target.endpoint_attempts(0) + target.endpoint_attempts(1);
    let retries = attempts - count as u64;
    // 10 % of the requests plus 1 a second over the 10 s window.
    assert!(retries <= 100 + 10, "{retries} retries for {count} orders");
    assert!(retries >= 50, "the budget was not used: {retries} retries");
    let snapshot = dispatcher.snapshot();
    assert!(snapshot.campaigns[0].retries_refused > 0, "{snapshot:?}");

    // A target failing everything gets no retries once its success rate is known.
    let target = FakeTarget::start(2).await;
    target.set(0, Behaviour::Status(500)).await;
    target.set(1, Behaviour::Status(500)).await;
    let mut config = self::config(target.urls());
    config.retry_budget.percent = 50;
    config.outlier.consecutive_failures = 1_000_000;
    config.outlier.success_percent_min = 0;
    let dispatcher = self::dispatcher(config);
    deliver_all(&dispatcher, orders("failing", count), 4).await;
    let attempts = target.endpoint_attempts(0) + target.endpoint_attempts(1);
    // Only before the window holds `request_volume_min` (20) attempts can any retry happen.
    assert!(attempts - (count as u64) <= 20, "{attempts} attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_target_does_not_block_another_target() {
    let slow = FakeTarget::start(1).await;
    slow.set(0, Behaviour::Hang).await;
    let fast = FakeTarget::start(1).await;
    let mut slow_config = config(slow.urls());
    slow_config.read_timeout = Duration::from_secs(2);
    let slow_dispatcher = dispatcher(slow_config);
    let fast_dispatcher = dispatcher(config(fast.urls()));

    let hanging = tokio::spawn({
        let dispatcher = slow_dispatcher.clone();
        async move { deliver_all(&dispatcher, orders("slow", 100), 100).await }
    });
    tokio::time::sleep(50 * MS).await;
    let started = Instant::now();
    let attempts = deliver_all(&fast_dispatcher, orders("fast", 200), 8).await;
    assert!(attempts.iter().all(is_delivered));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(!hanging.is_finished());
    hanging.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heavy_campaign_does_not_take_the_light_ones_slots() {
    let target = FakeTarget::start(1).await;
    target.set(0, Behaviour::Latency(300 * MS)).await;
    let mut config = config(target.urls());
    config.read_timeout = Duration::from_secs(2);
    config.in_flight_per_campaign = 8;
    config.in_flight_per_endpoint = 16;
    let dispatcher = dispatcher(config);

    let heavy = tokio::spawn({
        let dispatcher = dispatcher.clone();
        async move { deliver_all(&dispatcher, orders("heavy", 60), 60).await }
    });
    tokio::time::sleep(50 * MS).await;
    let light = deliver_all(&dispatcher, orders("light", 4), 4).await;
    assert!(light.iter().all(is_delivered), "{light:?}");
    let heavy = heavy.await.unwrap();
    let busy = heavy
        .iter()
        .filter(|attempt| {
            matches!(
                attempt,
                Attempt::RetryLater {
                    reason: RetryReason::Busy,
                    ..
                }
            )
        })
        .count();
    // Eight were in flight; the others were refused at once rather than queued.
    assert_eq!(busy, 52, "{heavy:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_hanging_webhook_never_fails_a_delivery() {
    let target = FakeTarget::start(1).await;
    let webhook = FakeTarget::start(1).await;
    for behaviour in [Behaviour::Hang, Behaviour::Refuse, Behaviour::Status(500)] {
        webhook.set(0, behaviour).await;
        let mut config = config(target.urls());
        config.webhook = Some(WebhookConfig {
            url: webhook.url(0),
            timeout: 20 * MS,
        });
        let mut registry = Registry::default();
        let dispatcher = Dispatcher::new(config, &mut registry).unwrap();
        for index in 0..300 {
            let order = order(&format!("webhook{}", behaviour_index(behaviour)), index);
            let attempt = dispatcher.deliver(&order, 0).await;
            assert!(is_delivered(&attempt), "{attempt:?}");
        }
        tokio::time::sleep(100 * MS).await;
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let failed = metric(
            &text,
            r#"tally_dispatch_webhook_events_total{result="failed"}"#,
        );
        let dropped = metric(
            &text,
            r#"tally_dispatch_webhook_events_total{result="dropped"}"#,
        );
        assert!(failed + dropped > 0, "{text}");
        assert_eq!(
            metric(
                &text,
                r#"tally_dispatch_webhook_events_total{result="sent"}"#
            ),
            0
        );
    }
}

/// A delivery waits for no webhook call, not even its timeout: with a webhook that hangs past
/// the longest timeout allowed, no delivery takes that long. (Against the timeout itself, not a
/// few milliseconds, so that a busy machine cannot make the test fail.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_webhook_is_not_waited_for() {
    let target = FakeTarget::start(1).await;
    let webhook = FakeTarget::start(1).await;
    webhook.set(0, Behaviour::Hang).await;
    let timeout = tally_dispatch::limits::WEBHOOK_TIMEOUT_MAX;
    let mut config = config(target.urls());
    config.webhook = Some(WebhookConfig {
        url: webhook.url(0),
        timeout,
    });
    let dispatcher = Dispatcher::new(config, &mut Registry::default()).unwrap();
    let mut slowest = Duration::ZERO;
    for index in 0..300 {
        let started = Instant::now();
        let attempt = dispatcher
            .deliver(&order("hanging-webhook", index), 0)
            .await;
        assert!(is_delivered(&attempt), "{attempt:?}");
        slowest = slowest.max(started.elapsed());
    }
    assert!(slowest < timeout, "slowest delivery {slowest:?}");
}

fn behaviour_index(behaviour: Behaviour) -> usize {
    match behaviour {
        Behaviour::Hang => 0,
        Behaviour::Refuse => 1,
        _ => 2,
    }
}

/// The value of one sample of a text exposition, 0 when absent.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name))
        .map(|value| value.trim().parse().unwrap())
        .unwrap_or(0)
}
