//! Error codes that are not about the ledger's rules: routing, methods, overload and
//! unavailability, and the mapping of every error to its status.

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tally_core::RejectCode;
use tally_engine::EngineError;
use tally_server::error::ApiError;

use crate::support::{assert_error, assert_error_body, Gate, Reply, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_and_methods_are_json_errors() {
    let app = TestApp::new();
    app.open_account("a", "USD", false).await;
    for path in [
        "/",
        "/v1",
        "/v2/accounts",
        "/v1/account",
        "/v1/accounts/a/extra",
        "/v1/transfers/x/post/y",
        "/healthz/x",
        "/v1/accounts/",
    ] {
        for method in ["GET", "POST"] {
            let answer = app.call(method, path, Some("{}")).await;
            assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
        }
    }
    let wrong = [
        ("GET", "/v1/accounts"),
        ("PUT", "/v1/accounts"),
        ("DELETE", "/v1/accounts/a"),
        ("POST", "/v1/accounts/a"),
        ("PATCH", "/v1/accounts/a"),
        ("POST", "/v1/accounts/a/history"),
        ("GET", "/v1/deposits"),
        ("GET", "/v1/withdrawals"),
        ("PUT", "/v1/transfers"),
        ("GET", "/v1/transfers/batch"),
        ("DELETE", "/v1/transfers/x"),
        ("GET", "/v1/transfers/x/post"),
        ("GET", "/v1/transfers/x/void"),
        ("POST", "/healthz"),
        ("POST", "/readyz"),
        ("POST", "/metrics"),
        ("DELETE", "/v1/openapi.json"),
    ];
    for (method, path) in wrong {
        let answer = app
            .call(method, path, Some(r#"{"id":"a","ledger":"USD"}"#))
            .await;
        assert_eq!(
            answer.0,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {}",
            answer.1
        );
        assert_error(
            &answer,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        );
    }
    // Nothing above reached the ledger.
    assert_eq!(app.account("a").await["version"], 1);
    app.finish().await;
}

async fn render(error: ApiError) -> (StatusCode, Option<String>, Value) {
    let response = error.into_response();
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|value| value.to_str().unwrap().to_string());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, retry_after, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn engine_errors_map_to_503_with_a_code() {
    let (status, retry_after, body) = render(ApiError::from(EngineError::Overloaded)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        retry_after.as_deref(),
        Some("1"),
        "an overloaded client is told when to retry"
    );
    assert_error_body(&body);
    assert_eq!(body["error"]["code"], "overloaded");

    let stopped = EngineError::Unavailable("the engine stopped".into());
    let (status, retry_after, body) = render(ApiError::from(stopped)).await;
    assert_eq!(
        (status, retry_after),
        (StatusCode::SERVICE_UNAVAILABLE, None)
    );
    assert_error_body(&body);
    assert_eq!(
        (&body["error"]["code"], &body["error"]["message"]),
        (&json!("unavailable"), &json!("the engine stopped"))
    );

    let setup = EngineError::Setup {
        context: "open".into(),
        message: "denied".into(),
    };
    let (status, _, body) = render(ApiError::from(setup)).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::SERVICE_UNAVAILABLE, &json!("unavailable"))
    );
}

#[tokio::test]
async fn every_rejection_maps_to_its_status_and_code() {
    for code in RejectCode::ALL {
        let (status, retry_after, body) = render(ApiError::rejected(code)).await;
        let expected = if code == RejectCode::NotFound {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        assert_eq!((status, retry_after), (expected, None), "{code:?}");
        assert_error_body(&body);
        assert_eq!(
            (&body["error"]["code"], &body["error"]["message"]),
            (&json!(code.as_str()), &json!(code.message()))
        );
    }
    // An internal fault tells the client nothing of its detail.
    let (status, _, body) = render(ApiError::internal("secret detail")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body["error"]["code"], "internal");
    assert!(!body.to_string().contains("secret"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_engine_answers_unavailable() {
    let mut app = TestApp::new();
    app.open_account("a", "USD", false).await;
    app.deposit("d", "a", 10).await;
    app.shutdown_engine().await;
    let writes = [
        ("/v1/accounts", r#"{"id":"b","ledger":"USD"}"#),
        ("/v1/deposits", r#"{"id":"d2","account":"a","amount":1}"#),
        ("/v1/withdrawals", r#"{"id":"w","account":"a","amount":1}"#),
        (
            "/v1/transfers",
            r#"{"id":"t","from":"a","to":"b","amount":1}"#,
        ),
        (
            "/v1/transfers/batch",
            r#"{"transfers":[{"id":"t","from":"a","to":"b","amount":1}]}"#,
        ),
        ("/v1/transfers/d/void", r#"{"id":"v"}"#),
    ];
    for (path, body) in writes {
        let answer = app.post(path, body).await;
        assert_error(&answer, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    }
    let answer = app.get("/v1/accounts/a").await;
    assert_error(&answer, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    // Malformed input is still a 400, not a 503: it never gets as far as the engine.
    let answer = app.post("/v1/deposits", "{").await;
    assert_error(&answer, StatusCode::BAD_REQUEST, "invalid_request");
    // What is durable stays readable from the read model.
    let (status, view) = app.get("/v1/transfers/d").await;
    assert_eq!((status, &view["amount"]), (StatusCode::OK, &json!(10)));
    let (status, _) = app.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    app.finish().await;
}

/// Holds the engine's writer at its fsync and floods it with batches: once the command queue
/// is full, batches are refused at once with 503 `overloaded` and `Retry-After`, and a refused
/// batch applies nothing; once the writer moves again, everything queued is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_beyond_the_queue_is_shed_and_never_half_applied() {
    let gate = std::sync::Arc::new(Gate::default());
    let app = std::sync::Arc::new(TestApp::gated(gate.clone()));
    app.open_account("a", "USD", false).await;
    app.open_account("b", "USD", false).await;
    app.deposit("fund", "a", u64::MAX / 2).await;
    gate.close();
    let count = tally_core::limits::BATCH_TRANSFERS_MAX;
    // At most 14 fit: the queue holds 8 full batches, and the writer, the staged slot and the
    // state thread (waiting to stage) each hold one commit of up to 2 batches. 16 make sure that
    // some are shed, however the batches happen to pair up into commits.
    let requests = 16;
    let (done, mut answers) = tokio::sync::mpsc::unbounded_channel();
    for request in 0..requests {
        let transfers: Vec<Value> = (0..count)
            .map(|index| json!({"id": format!("f{request}-{index}"), "from": "a", "to": "b", "amount": 1}))
            .collect();
        let body = json!({"atomic": request % 2 == 0, "transfers": transfers}).to_string();
        let (app, done) = (app.clone(), done.clone());
        tokio::spawn(async move {
            let reply = app.send("POST", "/v1/transfers/batch", body).await;
            let _ = done.send((request, reply));
        });
    }
    drop(done);
    // With the writer held, the only answers that can come are refusals; more requests than
    // the queue holds make at least one come.
    let mut shed = Vec::new();
    let mut check_shed = |request: usize, reply: Reply| {
        assert_error(
            &(reply.status, reply.json()),
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
        );
        assert_eq!(reply.headers.get("retry-after").unwrap(), "1");
        shed.push(request);
    };
    let (request, reply) = tokio::time::timeout(Duration::from_secs(60), answers.recv())
        .await
        .expect("the queue fills")
        .expect("an answer");
    check_shed(request, reply);
    while let Ok(Some((request, reply))) =
        tokio::time::timeout(Duration::from_millis(200), answers.recv()).await
    {
        check_shed(request, reply);
    }
    gate.open();
    // Requests still being parsed may be queued or refused, nothing else.
    let mut applied = 0u64;
    while let Some((request, reply)) = answers.recv().await {
        if reply.status == StatusCode::SERVICE_UNAVAILABLE {
            check_shed(request, reply);
            continue;
        }
        assert_eq!(reply.status, StatusCode::OK, "request {request}");
        let json = reply.json();
        let results = json["results"].as_array().unwrap();
        assert_eq!(results.len(), count);
        assert!(
            results.iter().all(|item| item["outcome"] == "created"),
            "request {request}"
        );
        applied += count as u64;
    }
    assert_eq!(applied, ((requests - shed.len()) * count) as u64);
    // The lookups below read the read model, whose projector runs at idle priority: on a machine
    // busy with other tests it may take longer than a query waits to fold the flood. What is
    // checked here is that nothing refused was applied, not how fast the projector is.
    app.state
        .read
        .wait(Duration::from_secs(60))
        .await
        .unwrap()
        .wait_for(
            app.state.engine.durable_position(),
            Duration::from_secs(120),
        )
        .await
        .expect("the read model catches up");
    for request in &shed {
        let answer = app.get(&format!("/v1/transfers/f{request}-0")).await;
        assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
    }
    assert_eq!(app.account("b").await["balance"], json!(applied));
    // A refused batch can be retried with the same ids.
    let retried = shed[0];
    let transfers: Vec<Value> = (0..count)
        .map(|index| json!({"id": format!("f{retried}-{index}"), "from": "a", "to": "b", "amount": 1}))
        .collect();
    let body = json!({"atomic": retried % 2 == 0, "transfers": transfers}).to_string();
    let (status, json) = app.post("/v1/transfers/batch", &body).await;
    assert_eq!(
        (status, &json["results"][0]["outcome"]),
        (StatusCode::OK, &json!("created"))
    );
    let app = std::sync::Arc::into_inner(app).expect("every request is answered");
    app.finish().await;
}
