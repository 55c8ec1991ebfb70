//! What an operator and a client get to trace a request: the request id (echoed, generated,
//! in every error body), refusals counted by reason, and the bounded labels of `/metrics`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, StatusCode};
use serde_json::json;
use tally_auth::Scope;
use tally_server::limits::CONCURRENT_REQUESTS_MAX;

use crate::support::{assert_error_body, Gate, Reply, TestApp};

const ID_HEADER: &str = "x-request-id";

fn is_generated(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|byte| byte.is_ascii_hexdigit())
}

/// The id in the answer's header, which must be the one in its error body.
#[track_caller]
fn error_id(reply: &Reply) -> String {
    let header = reply
        .headers
        .get(ID_HEADER)
        .expect("every answer has an X-Request-Id")
        .to_str()
        .unwrap()
        .to_owned();
    let body = reply.json();
    assert_error_body(&body);
    assert_eq!(body["error"]["request_id"], header.as_str(), "{body}");
    header
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_answer_carries_the_request_id_the_client_sent() {
    let app = TestApp::new();
    for id in ["client-42", "0f8fad5b-d9cb-469f-a165-70867728950e", "a"] {
        let reply = app
            .send_with(
                &[(ID_HEADER, HeaderValue::from_static(id))],
                "GET",
                "/v1/accounts/nobody",
                "",
            )
            .await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
        assert_eq!(error_id(&reply), id);
    }
    // Successes echo it too.
    let reply = app
        .send_with(
            &[(ID_HEADER, HeaderValue::from_static("create-a"))],
            "POST",
            "/v1/accounts",
            json!({"id": "a", "ledger": "USD"}).to_string(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(reply.headers.get(ID_HEADER).unwrap(), "create-a");
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_id_each_request_gets_a_generated_one() {
    let app = TestApp::new();
    let first = error_id(&app.send("GET", "/v1/accounts/nobody", "").await);
    let second = error_id(&app.send("GET", "/no/such/path", "").await);
    assert!(is_generated(&first), "{first}");
    assert!(is_generated(&second), "{second}");
    assert_ne!(first, second);
    // Rejections made before any handler runs (malformed JSON here) carry one too.
    let reply = app.send("POST", "/v1/deposits", "{").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(is_generated(&error_id(&reply)));
    app.finish().await;
}

/// An id that is too long or not visible ASCII is not repeated anywhere: the request gets a
/// generated one instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_request_id_is_replaced_by_a_generated_one() {
    let app = TestApp::new();
    let too_long = "x".repeat(tally_server::limits::REQUEST_ID_BYTES_MAX + 1);
    let longest = "y".repeat(tally_server::limits::REQUEST_ID_BYTES_MAX);
    let unusable: Vec<HeaderValue> = vec![
        HeaderValue::from_str(&too_long).unwrap(),
        HeaderValue::from_bytes("caf\u{e9}".as_bytes()).unwrap(),
        HeaderValue::from_static("two words"),
        HeaderValue::from_static(""),
    ];
    for value in unusable {
        let reply = app
            .send_with(&[(ID_HEADER, value.clone())], "GET", "/v1/accounts/x", "")
            .await;
        let id = error_id(&reply);
        assert!(is_generated(&id), "{value:?} became {id}");
    }
    let reply = app
        .send_with(
            &[(ID_HEADER, HeaderValue::from_str(&longest).unwrap())],
            "GET",
            "/v1/accounts/x",
            "",
        )
        .await;
    assert_eq!(error_id(&reply), longest, "the longest id allowed is kept");
    app.finish().await;
}

/// The lines of `tally_http_auth_failures_total`, as `status reason count`.
fn auth_failures(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text
        .lines()
        .filter_map(|line| line.strip_prefix("tally_http_auth_failures_total{"))
        .map(|line| {
            line.replace("status=\"", "")
                .replace("\",reason=\"", " ")
                .replace("\"} ", " ")
        })
        .collect();
    lines.sort();
    lines
}

/// Each kind of refusal is counted under its own reason, and only refusals are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_counted_by_reason() {
    let app = TestApp::with_auth();
    app.open_account("a", "USD", false).await;
    app.deposit("d1", "a", 10).await;
    let reader = format!("Bearer {}", app.issue(&[Scope::Read], &[], &[]));
    let eur_writer = format!(
        "Bearer {}",
        app.issue(&[Scope::Read, Scope::Write], &["EUR"], &[])
    );
    let deposit = json!({"id": "d2", "account": "a", "amount": 1}).to_string();
    let refusals = [
        (
            None,
            "GET",
            "/v1/accounts/a",
            None,
            StatusCode::UNAUTHORIZED,
        ),
        (
            Some("Bearer not-a-token"),
            "GET",
            "/v1/accounts/a",
            None,
            StatusCode::UNAUTHORIZED,
        ),
        (
            Some("Bearer not-a-token"),
            "GET",
            "/v1/accounts/a",
            None,
            StatusCode::UNAUTHORIZED,
        ),
        (
            Some(reader.as_str()),
            "POST",
            "/v1/deposits",
            Some(deposit.as_str()),
            StatusCode::FORBIDDEN,
        ),
        // Refused by the engine, which knows the account's ledger.
        (
            Some(eur_writer.as_str()),
            "POST",
            "/v1/deposits",
            Some(deposit.as_str()),
            StatusCode::FORBIDDEN,
        ),
        // Refused by the handler, which reads the transfer's ledger from the read model.
        (
            Some(eur_writer.as_str()),
            "GET",
            "/v1/transfers/d1",
            None,
            StatusCode::FORBIDDEN,
        ),
    ];
    for (authorization, method, path, body, status) in refusals {
        let (found, json) = app.call_as(authorization, method, path, body).await;
        assert_eq!(
            found, status,
            "{method} {path} with {authorization:?}: {json}"
        );
    }
    // Neither an allowed request nor another client error is a refusal.
    assert_eq!(
        app.get("/v1/accounts/nobody").await.0,
        StatusCode::NOT_FOUND
    );

    let text = app.send("GET", "/metrics", "").await.text();
    assert_eq!(
        auth_failures(&text),
        [
            "401 malformed 2",
            "401 missing 1",
            "403 restriction 2",
            "403 scope 1"
        ],
        "{text}"
    );
    app.finish().await;
}

/// A client cannot make series with methods or paths of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_stay_bounded_whatever_clients_send() {
    let app = TestApp::new();
    for i in 0..5 {
        let reply = app.send(&format!("BREW{i}"), "/v1/accounts", "").await;
        assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
        app.send("GET", &format!("/random/{i}"), "").await;
    }
    let text = app.send("GET", "/metrics", "").await.text();
    assert!(
        !text.contains("BREW") && !text.contains("/random"),
        "{text}"
    );
    let requests = |needle: &str| {
        text.lines()
            .filter(|line| line.starts_with("tally_http_requests_total{") && line.contains(needle))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        requests(r#"method="other",route="/v1/accounts",status="405""#),
        [r#"tally_http_requests_total{method="other",route="/v1/accounts",status="405"} 5"#]
    );
    assert_eq!(
        requests(r#"method="GET",route="unmatched",status="404""#),
        [r#"tally_http_requests_total{method="GET",route="unmatched",status="404"} 5"#]
    );
    app.finish().await;
}

/// The values read at scrape time are the accessors' values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_time_values_come_from_the_engine_and_read_model_accessors() {
    let app = TestApp::new();
    app.open_account("a", "USD", false).await;
    app.deposit("d1", "a", 10).await;
    // History waits until the read model holds the deposit, so its lag is zero after.
    assert_eq!(app.get("/v1/accounts/a/history").await.0, StatusCode::OK);
    let text = app.send("GET", "/metrics", "").await.text();
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
            .parse()
            .unwrap()
    };
    let engine = &app.state.engine;
    assert_eq!(
        value("tally_durable_position"),
        engine.durable_position() as f64
    );
    assert_eq!(value("tally_log_size_bytes"), engine.log_bytes() as f64);
    assert_eq!(value("tally_engine_failed"), 0.0);
    assert_eq!(value("tally_read_model_position"), 2.0);
    assert_eq!(value("tally_read_model_lag_events"), 0.0);
    assert_eq!(value("tally_read_model_lag_seconds"), 0.0);
    app.finish().await;
}

/// Clients learn from the OpenAPI document that every error names its request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_the_request_id() {
    let app = TestApp::new();
    let document = app.send("GET", "/v1/openapi.json", "").await.json();
    let schemas = &document["components"]["schemas"];
    assert_eq!(
        schemas["ErrorBody"]["properties"]["error"]["$ref"], "#/components/schemas/RequestError",
        "{schemas}"
    );
    let request_error = &schemas["RequestError"];
    assert_eq!(
        request_error["required"],
        json!(["code", "message", "request_id"]),
        "{request_error}"
    );
    let description = request_error["properties"]["request_id"]["description"]
        .as_str()
        .unwrap();
    assert!(description.contains("X-Request-Id"), "{description}");
    app.finish().await;
}

/// A 503 `overloaded` from the load-shedding layer, naming the request `id`.
#[track_caller]
fn assert_shed(reply: &Reply, id: &str) {
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text()
    );
    assert_eq!(error_id(reply), id);
    let body = reply.json();
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("too many requests in flight"),
        "shed by the load-shedding layer, not the engine: {body}"
    );
}

/// With every request slot taken (the writer held at its fsync, reads waiting behind it), the
/// load-shedding layer refuses more requests, on any route, before any handler runs, and its
/// answers name their requests too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_shed_by_the_outer_layers_name_their_request() {
    const EXTRA: usize = 16;
    let gate = Arc::new(Gate::default());
    let app = Arc::new(TestApp::gated(gate.clone()));
    app.open_account("a", "USD", false).await;
    gate.close();
    let deposit = json!({"id": "held", "account": "a", "amount": 1}).to_string();
    let held = {
        let app = app.clone();
        tokio::spawn(async move { app.send("POST", "/v1/deposits", deposit).await.status })
    };
    // Once the deposit is at the gate, reads wait behind it (to be answered as of it). A read
    // that is let in and dropped gives its slot back.
    let started = Instant::now();
    while tokio::time::timeout(
        Duration::from_millis(50),
        app.send("GET", "/v1/accounts/a", ""),
    )
    .await
    .is_ok()
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the deposit never reached the gate"
        );
    }
    // The deposit holds one slot; the reads take the others, and the extra ones are shed.
    let (done, mut answers) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..CONCURRENT_REQUESTS_MAX + EXTRA {
        let (app, done) = (app.clone(), done.clone());
        tokio::spawn(async move {
            let id = format!("flood-{i}");
            let header = [(ID_HEADER, HeaderValue::from_str(&id).unwrap())];
            let reply = app.send_with(&header, "GET", "/v1/accounts/a", "").await;
            let _ = done.send((id, reply));
        });
    }
    drop(done);
    for _ in 0..EXTRA + 1 {
        let (id, reply) = tokio::time::timeout(Duration::from_secs(60), answers.recv())
            .await
            .expect("the requests beyond the limit are shed")
            .unwrap();
        assert_shed(&reply, &id);
    }
    // The limit is the server's, not a route's: a route with nothing in flight is full too.
    let probe = [(ID_HEADER, HeaderValue::from_static("probe"))];
    assert_shed(&app.send_with(&probe, "GET", "/healthz", "").await, "probe");

    gate.open();
    assert_eq!(held.await.unwrap(), StatusCode::CREATED);
    let mut answered = 0;
    while let Some((id, reply)) = answers.recv().await {
        assert_eq!(reply.status, StatusCode::OK, "{id}: {}", reply.text());
        answered += 1;
    }
    assert_eq!(answered, CONCURRENT_REQUESTS_MAX - 1);
    let app = Arc::into_inner(app).expect("every request is answered");
    app.finish().await;
}
