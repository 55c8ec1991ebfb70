//! The event feed: pages, filters, refusals, and the server-sent event stream.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tally_auth::Scope;
use tower::ServiceExt;

use axum::Router;

use crate::support::TestApp;

/// Accounts in two ledgers, a deposit, a transfer, a voided pending transfer and a refusal.
async fn world() -> TestApp {
    let app = TestApp::new();
    app.open_account("a", "USD", false).await;
    app.open_account("b", "USD", false).await;
    app.open_account("e", "EUR", false).await;
    app.deposit("fund-a", "a", 100).await;
    app.post_ok(
        "/v1/transfers",
        &json!({"id": "t1", "from": "a", "to": "b", "amount": 30}).to_string(),
    )
    .await;
    let pending = json!({"id": "p1", "from": "a", "to": "b", "amount": 5, "pending": true});
    app.post_ok("/v1/transfers", &pending.to_string()).await;
    app.post_ok("/v1/transfers/p1/void", &json!({"id": "v1"}).to_string())
        .await;
    let (status, _) = app
        .post(
            "/v1/withdrawals",
            &json!({"id": "w1", "account": "e", "amount": 1}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    app
}

fn summary(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|event| {
            let name = event["transfer_id"]
                .as_str()
                .or(event["account"].as_str())
                .unwrap_or("-");
            format!("{}:{}", event["type"].as_str().unwrap(), name)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_serves_the_log_in_order_with_account_ids() {
    let app = world().await;
    let (status, page) = app.get("/v1/events").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let events = page["events"].as_array().unwrap();
    assert_eq!(
        summary(events),
        [
            "account_created:a",
            "account_created:b",
            "account_created:e",
            "transfer:fund-a",
            "transfer:t1",
            "transfer:p1",
            "transfer:v1",
            "rejected:w1"
        ]
    );
    let positions: Vec<u64> = events
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert!(
        positions.windows(2).all(|pair| pair[0] < pair[1]),
        "{positions:?}"
    );
    let deposit = &events[3];
    assert_eq!(deposit["kind"], "deposit");
    assert_eq!(deposit["ledger"], "USD");
    assert_eq!(
        deposit["from"],
        Value::Null,
        "the external account has no id: {deposit}"
    );
    assert_eq!(deposit["to"], "a");
    assert_eq!(deposit["amount"], 100);
    assert_eq!(events[6]["kind"], "void");
    assert_eq!(events[6]["pending_position"], events[5]["position"]);
    assert_eq!(events[7]["code"], "insufficient_funds");
    assert_eq!(page["next"], events[7]["position"]);
    assert!(page["end"].as_u64().unwrap() > positions[7]);

    // Nothing after the last: `next` null, ask again later with the same `after`.
    let (_, empty) = app.get(&format!("/v1/events?after={}", page["next"])).await;
    assert_eq!(empty["events"], json!([]));
    assert_eq!(empty["next"], Value::Null);

    // Paging with `next` gives the same events.
    let mut paged = Vec::new();
    let mut after = String::new();
    loop {
        let (status, page) = app.get(&format!("/v1/events?limit=3{after}")).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let Some(next) = page["next"].as_u64() else {
            break;
        };
        paged.extend(page["events"].as_array().unwrap().iter().cloned());
        after = format!("&after={next}");
    }
    assert_eq!(&paged, events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_keep_the_events_of_a_ledger_or_an_account() {
    let app = world().await;
    let (_, page) = app.get("/v1/events?account=b").await;
    assert_eq!(
        summary(page["events"].as_array().unwrap()),
        [
            "account_created:b",
            "transfer:t1",
            "transfer:p1",
            "transfer:v1"
        ]
    );
    let (_, page) = app.get("/v1/events?ledger=EUR").await;
    assert_eq!(
        summary(page["events"].as_array().unwrap()),
        ["account_created:e"]
    );
    let (_, page) = app.get("/v1/events?ledger=USD&account=e").await;
    assert_eq!(page["events"], json!([]));
    // The scan went on though nothing was kept, so a follower does not read it again.
    assert!(page["next"].as_u64().is_some(), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_queries_and_restricted_tokens_are_refused() {
    let app = world().await;
    for query in [
        "limit=0",
        "limit=1001",
        "after=-1",
        "ledger=no%20spaces",
        "account=",
        "wait_ms=30001",
        "x=1",
    ] {
        let (status, body) = app.get(&format!("/v1/events?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{query}: {body}");
    }
    let app = TestApp::with_auth();
    let restricted = format!("Bearer {}", app.issue(&[Scope::Read], &["USD"], &[]));
    for path in ["/v1/events", "/v1/events/stream"] {
        let (status, body) = app.call_as(Some(&restricted), "GET", path, None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
    }
}

/// Reads the stream at `path` until `count` events arrived; returns their `event` and `id`
/// lines' values and the JSON data.
async fn read_stream(
    router: Router,
    path: &str,
    last_event_id: Option<&str>,
    count: usize,
) -> Vec<(String, u64, Value)> {
    let mut request = Request::get(path);
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let response = router
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let mut text = String::new();
    let mut events = Vec::new();
    while events.len() < count {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("an event within 10 s")
            .expect("the stream goes on")
            .unwrap();
        let Ok(data) = frame.into_data() else {
            continue;
        };
        text.push_str(std::str::from_utf8(&data).unwrap());
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|line| line.strip_prefix(&format!("{name}:")))
                    .map(|value| value.trim().to_string())
            };
            if let (Some(event), Some(id), Some(data)) =
                (field("event"), field("id"), field("data"))
            {
                events.push((
                    event,
                    id.parse().unwrap(),
                    serde_json::from_str(&data).unwrap(),
                ));
            }
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_follows_new_events_and_resumes_from_the_last_event_id() {
    let app = world().await;
    let (_, page) = app.get("/v1/events").await;
    let last = page["next"].as_u64().unwrap();

    // From the start: the same events as the page.
    let streamed = read_stream(app.router.clone(), "/v1/events/stream", None, 8).await;
    let data: Vec<Value> = streamed.iter().map(|(_, _, data)| data.clone()).collect();
    assert_eq!(&data, page["events"].as_array().unwrap());
    assert!(streamed
        .iter()
        .all(|(event, id, data)| data["type"] == event.as_str() && data["position"] == *id));

    // A follower waiting at the end gets a transfer committed after it connected.
    let follower = {
        let router = app.router.clone();
        let path = format!("/v1/events/stream?after={last}&account=b");
        tokio::spawn(async move { read_stream(router, &path, None, 1).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.post_ok(
        "/v1/transfers",
        &json!({"id": "t2", "from": "a", "to": "b", "amount": 1}).to_string(),
    )
    .await;
    let got = follower.await.unwrap();
    assert_eq!(got[0].2["transfer_id"], "t2");

    // Last-Event-ID resumes after the event it names (and wins over `after`).
    let resumed = read_stream(
        app.router.clone(),
        "/v1/events/stream?after=0",
        Some(&last.to_string()),
        1,
    )
    .await;
    assert_eq!(resumed[0].2["transfer_id"], "t2");

    let reply = app
        .send_with(
            &[("last-event-id", "x".parse().unwrap())],
            "GET",
            "/v1/events/stream",
            "",
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_streams_are_bounded() {
    let app = world().await;
    let max = tally_server::limits::EVENT_STREAMS_MAX;
    let mut open = Vec::with_capacity(max);
    for _ in 0..max {
        let response = app.open_stream("/v1/events/stream").await;
        assert_eq!(response.status(), StatusCode::OK);
        open.push(response);
    }
    let (status, body) = app.get("/v1/events/stream").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    // A client that leaves gives its place back.
    drop(open.pop());
    let reply = app.send("GET", "/v1/events/stream?limit=1", "").await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_follows_the_log_not_the_read_model() {
    let mut app = world().await;
    let (_, before) = app.get("/v1/events").await;
    // Without a read model, lookups fail, but the feed still serves every durable event, new
    // accounts included: it names them from the engine, not from the projection.
    app.fail_read_model().await;
    app.open_account("late", "GBP", false).await;
    app.deposit("fund-late", "late", 7).await;
    let (status, _) = app.get("/v1/transfers/fund-late").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, page) = app.get("/v1/events").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let events = page["events"].as_array().unwrap();
    assert_eq!(
        &events[..8],
        before["events"].as_array().unwrap().as_slice()
    );
    assert_eq!(
        summary(&events[8..]),
        ["account_created:late", "transfer:fund-late"]
    );
    assert_eq!(events[9]["ledger"], "GBP");
    assert_eq!(events[9]["to"], "late");
    assert_eq!(page["end"].as_u64(), Some(app.durable_position()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stream_waits_instead_of_reading_again() {
    let app = world().await;
    let (_, page) = app.get("/v1/events").await;
    let last = page["next"].as_u64().unwrap();
    let request = Request::get(format!("/v1/events/stream?after={last}"))
        .body(Body::empty())
        .unwrap();
    let response = app.router.clone().oneshot(request).await.unwrap();
    let mut body = response.into_body();
    // Polling the body runs the stream; it finds nothing new and must then wait.
    let _ = tokio::time::timeout(Duration::from_millis(500), body.frame()).await;
    let before = app.state.feed.pages_read();
    let _ = tokio::time::timeout(Duration::from_millis(500), body.frame()).await;
    assert!(
        app.state.feed.pages_read() - before <= 1,
        "an idle stream read {} pages in 0.5 s",
        app.state.feed.pages_read() - before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_position_is_an_empty_feed_not_a_crash() {
    let app = world().await;
    let max = u64::MAX;
    let (status, page) = app.get(&format!("/v1/events?after={max}")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!((&page["events"], &page["next"]), (&json!([]), &Value::Null));
    let request = Request::get(format!("/v1/events/stream?after={max}"))
        .body(Body::empty())
        .unwrap();
    let response = app.router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Nothing comes after the last position: the stream waits (no event, no error).
    let mut body = response.into_body();
    let frame = tokio::time::timeout(Duration::from_millis(500), body.frame()).await;
    assert!(frame.is_err(), "the stream sent {frame:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_answers_when_the_next_event_is_projected() {
    let app = world().await;
    let (_, page) = app.get("/v1/events").await;
    let last = page["next"].as_u64().unwrap();
    // Nothing after the last event: without `wait_ms` the page is empty at once.
    let (_, empty) = app.get(&format!("/v1/events?after={last}")).await;
    assert_eq!(empty["events"], json!([]));
    let poll = {
        let router = app.router.clone();
        tokio::spawn(async move {
            let request = Request::get(format!("/v1/events?after={last}&wait_ms=10000"))
                .body(Body::empty())
                .unwrap();
            let response = router.oneshot(request).await.unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            serde_json::from_slice::<Value>(&body).unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !poll.is_finished(),
        "the long poll answered before there was an event"
    );
    app.deposit("late", "b", 7).await;
    let page = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .expect("the long poll answers once the event is projected")
        .unwrap();
    assert_eq!(
        summary(page["events"].as_array().unwrap()),
        ["transfer:late"]
    );
    // With nothing to wait for, a short wait ends with an empty page.
    let next = page["next"].as_u64().unwrap();
    let (status, empty) = app
        .get(&format!("/v1/events?after={next}&wait_ms=50"))
        .await;
    assert_eq!((status, &empty["events"]), (StatusCode::OK, &json!([])));
}
