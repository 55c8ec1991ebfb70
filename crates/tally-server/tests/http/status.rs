//! `/status` and `/status.json`: availability counted from a known sequence of outcomes, the
//! dependency rows, and who may see them.

use axum::http::StatusCode;
use serde_json::Value;
use tally_auth::Scope;
use tally_server::auth::OpenRoutes;

use crate::support::{assert_error, TestApp};

fn window<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["availability"]
        .as_array()
        .expect("availability windows")
        .iter()
        .find(|window| window["window"] == name)
        .unwrap_or_else(|| panic!("no {name} window in {status}"))
}

fn dependency<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["dependencies"]
        .as_array()
        .expect("dependencies")
        .iter()
        .find(|dependency| dependency["name"] == name)
        .unwrap_or_else(|| panic!("no {name} dependency in {status}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn availability_counts_a_known_sequence_of_api_outcomes() {
    let mut app = TestApp::new();
    // Six answers that are not failures, 4xx included: a bad request is the client's fault.
    app.open_account("a", "USD", false).await;
    app.deposit("d1", "a", 10).await;
    assert_eq!(app.get("/v1/accounts/a").await.0, StatusCode::OK);
    assert_eq!(
        app.get("/v1/accounts/nobody").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.post("/v1/deposits", "{\"id\":").await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.post(
            "/v1/withdrawals",
            r#"{"id":"w1","account":"a","amount":1000}"#
        )
        .await
        .0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    // Probes, scrapes and the status page itself are not API requests and count for nothing.
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/status",
        "/v1/openapi.json",
    ] {
        assert_eq!(
            app.send("GET", path, "").await.status,
            StatusCode::OK,
            "{path}"
        );
    }
    // Three failures: the engine is gone, so commands get 503.
    app.shutdown_engine().await;
    for id in ["d2", "d3", "d4"] {
        let answer = app
            .post(
                "/v1/deposits",
                &format!(r#"{{"id":"{id}","account":"a","amount":1}}"#),
            )
            .await;
        assert_error(&answer, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    }

    let (code, status) = app.get("/status.json").await;
    assert_eq!(code, StatusCode::OK, "{status}");
    for name in ["1h", "24h", "30d"] {
        let figures = window(&status, name);
        assert_eq!(figures["requests"], 9, "{name}: {figures}");
        assert_eq!(figures["failed"], 3, "{name}: {figures}");
        let availability = figures["availability"].as_f64().expect("a ratio");
        assert!((availability - 6.0 / 9.0).abs() < 1e-12, "{figures}");
        assert!(figures["observed_seconds"].as_u64().unwrap() >= 60);
    }
    let page = app.send("GET", "/status", "").await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(
        page.headers.get("content-type").unwrap(),
        "text/html; charset=utf-8"
    );
    let html = page.text();
    assert!(html.contains("66.666 %"), "{html}");
    assert!(html.contains("9 requests, 3 failed"), "{html}");
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_dependency_has_a_row_with_a_verdict_and_a_reason() {
    let app = TestApp::with_auth();
    app.open_account("a", "USD", false).await;
    let (code, status) = app.get("/status.json").await;
    assert_eq!(code, StatusCode::OK, "{status}");
    for name in ["log", "disk", "read_model", "signing_keys"] {
        let row = dependency(&status, name);
        assert!(
            ["healthy", "degraded", "down"].contains(&row["health"].as_str().unwrap()),
            "{row}"
        );
        assert!(!row["reason"].as_str().unwrap().is_empty(), "{row}");
    }
    assert_eq!(dependency(&status, "log")["health"], "healthy", "{status}");
    assert_eq!(dependency(&status, "disk")["health"], "healthy", "{status}");
    let keys = dependency(&status, "signing_keys");
    assert_eq!(keys["health"], "healthy", "{keys}");
    assert!(
        keys["reason"].as_str().unwrap().contains("rotation"),
        "{keys}"
    );
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    let started = &status["incidents"].as_array().unwrap().last().unwrap();
    assert_eq!(started["dependency"], "tally", "{status}");

    let html = app.send("GET", "/status", "").await.text();
    for name in ["log", "disk", "read_model", "signing_keys"] {
        assert!(
            html.contains(&format!("id=\"dependency-{name}\"")),
            "{name}: {html}"
        );
    }
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_authentication_the_keys_row_says_so() {
    let app = TestApp::new();
    let (_, status) = app.get("/status.json").await;
    let keys = dependency(&status, "signing_keys");
    assert_eq!(keys["health"], "degraded", "{keys}");
    assert!(keys["reason"].as_str().unwrap().contains("--no-auth"));
    assert_eq!(status["health"], "degraded");
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_needs_the_operator_scope_unless_opened() {
    let app = TestApp::with_auth();
    let read = app.issue(&[Scope::Read], &[], &[]);
    let operator = app.issue(&[Scope::Operator], &[], &[]);
    for path in ["/status", "/status.json"] {
        assert_eq!(
            app.send_as(None, "GET", path, "").await.status,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
        assert_eq!(
            app.send_as(Some(&format!("Bearer {read}")), "GET", path, "")
                .await
                .status,
            StatusCode::FORBIDDEN,
            "{path}"
        );
        assert_eq!(
            app.send_as(Some(&format!("Bearer {operator}")), "GET", path, "")
                .await
                .status,
            StatusCode::OK,
            "{path}"
        );
    }
    app.finish().await;

    let open = TestApp::with_auth_and(OpenRoutes {
        metrics: false,
        status: true,
    });
    for path in ["/status", "/status.json"] {
        assert_eq!(
            open.send_as(None, "GET", path, "").await.status,
            StatusCode::OK,
            "{path}"
        );
    }
    // Opening the status opens nothing else.
    assert_eq!(
        open.send_as(None, "GET", "/metrics", "").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        open.send_as(None, "GET", "/v1/accounts/a", "").await.status,
        StatusCode::UNAUTHORIZED
    );
    open.finish().await;
}
