//! Health, readiness, metrics and the OpenAPI document.

use std::collections::BTreeSet;

use axum::http::{HeaderValue, StatusCode};
use serde_json::json;

use crate::support::TestApp;

/// Every route of the router, with its methods, as `tally_server::app` builds it.
const ROUTES: &[(&str, &str)] = &[
    ("/v1/campaigns", "post"),
    ("/v1/campaigns/{id}", "get"),
    ("/v1/campaigns/{id}/publish", "post"),
    ("/v1/campaigns/{id}/claims", "post"),
    ("/v1/claims", "get"),
    ("/v1/claims/{order_id}", "get"),
    ("/v1/claims/{order_id}/settle", "post"),
    ("/v1/accounts", "post"),
    ("/v1/accounts/{id}", "get"),
    ("/v1/accounts/{id}/history", "get"),
    ("/v1/ledgers/{code}", "get"),
    ("/v1/ledgers/{code}/daily", "get"),
    ("/v1/events", "get"),
    ("/v1/events/stream", "get"),
    ("/v1/deposits", "post"),
    ("/v1/withdrawals", "post"),
    ("/v1/transfers", "post"),
    ("/v1/transfers/batch", "post"),
    ("/v1/transfers/{id}", "get"),
    ("/v1/transfers/{id}/post", "post"),
    ("/v1/transfers/{id}/void", "post"),
    ("/v1/revocations", "post"),
    ("/v1/openapi.json", "get"),
    ("/healthz", "get"),
    ("/readyz", "get"),
    ("/metrics", "get"),
    ("/status", "get"),
    ("/status.json", "get"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let app = TestApp::new();
    assert_eq!(
        app.get("/healthz").await,
        (StatusCode::OK, json!({"status": "ok"}))
    );
    assert_eq!(
        app.get("/readyz").await,
        (StatusCode::OK, json!({"status": "ok"}))
    );
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_batches_and_requests_by_route() {
    let app = TestApp::new();
    app.open_account("a", "USD", false).await;
    app.get("/v1/accounts/nobody").await;
    app.get("/no/such/path").await;
    // What Prometheus sends.
    let accept = HeaderValue::from_static(
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    );
    let reply = app
        .send_with(&[("accept", accept)], "GET", "/metrics", "")
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let content_type = reply.headers.get("content-type").unwrap().to_str().unwrap();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = reply.text();
    for series in [
        "tally_engine_batches_total",
        "tally_engine_append_seconds_bucket",
        "tally_log_fsync_seconds_bucket",
        "tally_engine_batch_commands_bucket",
        "tally_http_requests_total",
        "tally_http_request_duration_seconds_bucket",
        "tally_durable_position",
        "tally_read_model_position",
        "tally_read_model_lag_events",
        "tally_read_model_lag_seconds",
        "tally_queued_commands",
        "tally_log_size_bytes",
        "tally_engine_failed 0",
    ] {
        assert!(text.contains(series), "no {series} in:\n{text}");
    }
    // Requests are counted by route template, never by raw path, so ids cannot blow up the
    // number of series.
    let requests: Vec<&str> = text
        .lines()
        .filter(|line| line.starts_with("tally_http_requests_total{"))
        .collect();
    let has = |needle: &str| requests.iter().any(|line| line.contains(needle));
    assert!(has(r#"route="/v1/accounts",status="201""#), "{requests:#?}");
    assert!(
        has(r#"route="/v1/accounts/{id}",status="404""#),
        "{requests:#?}"
    );
    assert!(has(r#"route="unmatched",status="404""#), "{requests:#?}");
    assert!(
        !text.contains("nobody") && !text.contains("/no/such/path"),
        "{text}"
    );
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    // Never written: no snapshot series rather than a made-up age.
    assert!(!text.contains("tally_engine_snapshot"), "{text}");

    // Anyone else (curl, promtool) gets the Prometheus text format: counters' families are
    // named with `_total`, and there is no EOF marker.
    let reply = app.send("GET", "/metrics", "").await;
    assert_eq!(
        reply.headers.get("content-type").unwrap(),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = reply.text();
    assert!(
        text.contains("# TYPE tally_http_requests_total counter\n"),
        "{text}"
    );
    assert!(!text.contains("# EOF"), "{text}");
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_every_route() {
    let app = TestApp::new();
    let reply = app.send("GET", "/v1/openapi.json", "").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.headers.get("content-type").unwrap(),
        "application/json"
    );
    let document = reply.json();
    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|version| version.starts_with('3')),
        "{document}"
    );
    let paths = document["paths"].as_object().expect("paths");
    let documented: BTreeSet<(String, String)> = paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|key| ["get", "post", "put", "patch", "delete"].contains(&key.as_str()))
                .map(|method| (path.clone(), method.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let routed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(path, method)| (path.to_string(), method.to_string()))
        .collect();
    assert_eq!(documented, routed);
    // Every documented route is really routed: none answers the router's own 404.
    for (path, method) in ROUTES {
        let mut concrete = path.replace("{id}", "x").replace("{code}", "X");
        if concrete.ends_with("/stream") {
            // A refused query answers at once; a stream that is let start waits for events.
            concrete.push_str("?limit=0");
        }
        let reply = app.send(&method.to_uppercase(), &concrete, "{}").await;
        let code = serde_json::from_slice::<serde_json::Value>(&reply.body)
            .ok()
            .and_then(|json| json["error"]["message"].as_str().map(str::to_string));
        assert!(
            !code.is_some_and(|message| message.starts_with("no such path")),
            "{method} {concrete} is documented but not routed"
        );
    }
    // The error body is documented as a schema.
    assert!(
        document["components"]["schemas"]["ErrorBody"].is_object(),
        "{document}"
    );
    app.finish().await;
}
