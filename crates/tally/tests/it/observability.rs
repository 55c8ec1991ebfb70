//! What an operator sees of the real `tally serve`: `/metrics` that `promtool` finds clean after
//! real traffic, and a JSON log whose lines name the request they are about.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue, ACCEPT};
use hyper::Method;
use serde_json::{json, Value};

use crate::support::{Client, ServeOptions, Server};

/// Posts and expects one of `statuses`.
async fn post(client: &Client, path: &str, body: Value, statuses: &[u16]) -> Value {
    let answer = client.post_settled(path, &body).await.unwrap();
    assert!(
        statuses.contains(&answer.status),
        "POST {path} {body}: expected one of {statuses:?}, found {} {}",
        answer.status,
        answer.text
    );
    answer.body
}

/// Traffic of every kind: writes, a batch, reads of both models, client errors, authentication
/// failures and a method no route has.
async fn traffic(client: &Client, tag: &str) {
    let (a, b) = (format!("{tag}-a"), format!("{tag}-b"));
    for id in [&a, &b] {
        post(
            client,
            "/v1/accounts",
            json!({"id": id, "ledger": "USD"}),
            &[201],
        )
        .await;
    }
    let deposit = json!({"id": format!("{tag}-d"), "account": a, "amount": 100});
    post(client, "/v1/deposits", deposit, &[201]).await;
    let transfer = json!({"id": format!("{tag}-t"), "from": a, "to": b, "amount": 10});
    post(client, "/v1/transfers", transfer, &[201]).await;
    let batch = json!({"transfers": [
        {"id": format!("{tag}-b1"), "from": a, "to": b, "amount": 1},
        {"id": format!("{tag}-b2"), "from": a, "to": b, "amount": 1_000_000},
    ]});
    post(client, "/v1/transfers/batch", batch, &[200]).await;
    let too_much = json!({"id": format!("{tag}-w"), "account": b, "amount": 1_000_000});
    post(client, "/v1/withdrawals", too_much, &[422]).await;
    for (path, status) in [
        (format!("/v1/accounts/{a}"), 200),
        (format!("/v1/accounts/{a}/history"), 200),
        (format!("/v1/transfers/{tag}-t"), 200),
        ("/v1/accounts/nobody".to_string(), 404),
        ("/no/such/path".to_string(), 404),
    ] {
        let answer = client.get_settled(&path).await.unwrap();
        assert_eq!(answer.status, status, "GET {path}: {}", answer.text);
    }
    for authorization in [None, Some("Bearer not-a-token")] {
        let answer = client
            .with_authorization(authorization)
            .get_settled(&format!("/v1/accounts/{a}"))
            .await
            .unwrap();
        assert_eq!(answer.status, 401, "{authorization:?}: {}", answer.text);
    }
    let brew = Method::from_bytes(b"BREW").unwrap();
    let answer = client
        .send(brew, "/v1/accounts", Bytes::new())
        .await
        .unwrap();
    assert_eq!(answer.status, 405, "{}", answer.text);
}

/// Runs `promtool check metrics` on `text`; returns its exit success and everything it printed.
pub(crate) fn promtool_check(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| {
            panic!(
                "cannot run promtool ({error}): install the Debian package `prometheus` \
                 (scripts/install-test-deps does)"
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), printed)
}

/// The names of the samples of a scrape (what precedes the labels or the value).
fn sample_names(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            line.split(['{', ' '])
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

/// After traffic of every kind and a restart (so that a snapshot exists), `/metrics` holds every
/// series an operator needs, and `promtool check metrics` has nothing to say about it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_after_real_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    traffic(&server.client(), "first").await;
    server.stop().await;
    // The shutdown wrote a snapshot; the restarted server reports it. A short snapshot
    // interval makes the second round's traffic start a periodic snapshot: an offline job.
    let options = ServeOptions {
        args: &["--snapshot-interval-events", "2"],
        ..ServeOptions::default()
    };
    let server = Server::start_with(dir.path(), options).await;
    let client = server.client();
    traffic(&client, "second").await;

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let text = loop {
        let scrape = client.get_settled("/metrics").await.unwrap();
        assert_eq!(scrape.status, 200, "{}", scrape.text);
        if scrape
            .text
            .contains("tally_offline_job_state{name=\"snapshot\"")
            || std::time::Instant::now() > deadline
        {
            break scrape.text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for series in [
        "tally_http_requests_total{",
        "tally_http_request_duration_seconds_bucket{",
        "tally_http_auth_failures_total{status=\"401\",reason=\"missing\"} 1",
        "tally_http_auth_failures_total{status=\"401\",reason=\"malformed\"} 1",
        "tally_queued_commands ",
        "tally_engine_batch_commands_bucket{",
        "tally_engine_append_seconds_bucket{",
        "tally_log_fsync_seconds_bucket{",
        "tally_log_size_bytes ",
        "tally_engine_snapshot_age_seconds ",
        "tally_engine_snapshot_position ",
        "tally_read_model_lag_events ",
        "tally_read_model_lag_seconds ",
        "tally_engine_failed 0",
        r#"method="other",route="/v1/accounts",status="405""#,
        "tally_offline_isolation{mode=\"sched_idle+idle_cgroup\"} ",
        "tally_offline_boosts_total 0",
        "tally_offline_handovers_total ",
        "tally_online_slice_seconds ",
        // The binary turns transparent huge pages off as it starts (`huge_pages.rs`).
        "tally_huge_pages_off 1",
        "tally_offline_job_units_done{name=\"snapshot\",",
        "tally_offline_job_units_per_second{name=\"snapshot\",",
        "tally_offline_job_state{name=\"snapshot\",",
    ] {
        assert!(text.contains(series), "no {series} in:\n{text}");
    }
    // The server's threads ask for 100 µs scheduler slices: it shows what this kernel gives a
    // thread that asks (Linux 6.12 and later give it; `tally-offline`'s tests check that).
    let granted = std::thread::spawn(tally_offline::request_short_slice)
        .join()
        .unwrap();
    let slice_line = text
        .lines()
        .find(|line| line.starts_with("tally_online_slice_seconds "))
        .unwrap();
    let slice: f64 = slice_line.split(' ').nth(1).unwrap().parse().unwrap();
    assert_eq!(
        slice,
        granted.map_or(0.0, |slice| slice.as_secs_f64()),
        "{slice_line}"
    );
    let (clean, printed) = promtool_check(&text);
    assert!(
        clean && printed.is_empty(),
        "expected promtool check metrics to exit 0 and print nothing, found {} and:\n{printed}\nfor:\n{text}",
        if clean { "exit 0" } else { "a failure" }
    );

    // Prometheus asks for OpenMetrics: the same series, in that format.
    let accept = (
        ACCEPT,
        HeaderValue::from_static("application/openmetrics-text;version=1.0.0,*/*;q=0.1"),
    );
    let openmetrics = client
        .send_with(Method::GET, "/metrics", Bytes::new(), &[accept])
        .await
        .unwrap();
    assert!(
        openmetrics.text.ends_with("# EOF\n"),
        "{}",
        openmetrics.text
    );
    assert_eq!(sample_names(&openmetrics.text), sample_names(&text));
    server.stop().await;
}

/// How long the server may take to log a line after answering.
const LOG_PATIENCE: Duration = Duration::from_secs(10);

/// With `--log-format json` every line of standard error is a JSON object, and the warning
/// logged for a server error names the request's id, route and status.
///
/// The server error is real: a read model file the server cannot replace (a directory in its
/// place) makes transfer lookups answer 503 `unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_name_the_request_of_a_server_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("read.redb")).unwrap();
    let options = ServeOptions {
        args: &["--log-format", "json"],
        log_filter: Some("info"),
        capture_stderr: true,
        ..ServeOptions::default()
    };
    let server = Server::start_with(dir.path(), options).await;
    let id = "json-log-test-5xx";
    let request_id = (
        HeaderName::from_static("x-request-id"),
        HeaderValue::from_static(id),
    );
    let answer = server
        .client()
        .send_with(Method::GET, "/v1/transfers/t1", Bytes::new(), &[request_id])
        .await
        .unwrap();
    assert_eq!(answer.status, 503, "{}", answer.text);
    assert_eq!(answer.body["error"]["request_id"], id, "{}", answer.text);
    assert_eq!(answer.headers["x-request-id"], id);

    let stderr = server.stderr();
    let warning = stderr
        .wait_for("a warning naming the request", LOG_PATIENCE, |line| {
            line.contains(id) && line.contains("server error")
        })
        .await;
    let warning: Value = serde_json::from_str(&warning).unwrap();
    assert_eq!(warning["level"], "WARN", "{warning}");
    assert_eq!(warning["status"], 503, "{warning}");
    let request = warning["spans"]
        .as_array()
        .and_then(|spans| spans.iter().find(|span| span["name"] == "request"))
        .unwrap_or_else(|| panic!("no request span in {warning}"));
    assert_eq!(request["request_id"], id, "{warning}");
    assert_eq!(request["route"], "/v1/transfers/{id}", "{warning}");
    assert_eq!(request["method"], "GET", "{warning}");

    server.stop().await;
    // Up to the last line, written at shutdown.
    stderr
        .wait_for("the shutdown line", LOG_PATIENCE, |line| {
            line.contains("shutting down")
        })
        .await;
    let lines = stderr.lines();
    assert!(lines.len() > 3, "startup is logged at info: {lines:#?}");
    for line in &lines {
        let object: Value =
            serde_json::from_str(line).unwrap_or_else(|error| panic!("not JSON ({error}): {line}"));
        assert!(
            object["timestamp"].is_string() && object["level"].is_string(),
            "{line}"
        );
    }
}
