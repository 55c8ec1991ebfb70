//! Malformed input on every POST endpoint: always a 4xx with the JSON error body, and never a
//! change of any kind (no balance moves, no event is logged, the ids stay unused).

use axum::http::StatusCode;
use serde_json::Value;
use tally_server::limits::{BATCH_BODY_BYTES_MAX, BODY_BYTES_MAX};

use crate::support::{assert_error, TestApp};

/// One POST endpoint and a valid body for it, as fields of raw JSON text so that tests can put
/// anything in a field, including numbers no JSON library would write.
struct Endpoint {
    path: &'static str,
    fields: Vec<(&'static str, &'static str)>,
}

impl Endpoint {
    fn all() -> Vec<Endpoint> {
        vec![
            Endpoint {
                path: "/v1/accounts",
                fields: vec![
                    ("id", r#""fresh-acct""#),
                    ("ledger", r#""USD""#),
                    ("allow_overdraft", "false"),
                ],
            },
            Endpoint {
                path: "/v1/deposits",
                fields: vec![
                    ("id", r#""fresh-dep""#),
                    ("account", r#""a""#),
                    ("amount", "5"),
                ],
            },
            Endpoint {
                path: "/v1/withdrawals",
                fields: vec![
                    ("id", r#""fresh-wd""#),
                    ("account", r#""a""#),
                    ("amount", "5"),
                ],
            },
            Endpoint {
                path: "/v1/transfers",
                fields: transfer_fields(r#""fresh-tr""#),
            },
            Endpoint {
                path: "/v1/transfers/p1/post",
                fields: vec![("id", r#""fresh-post""#), ("amount", "50")],
            },
            Endpoint {
                path: "/v1/transfers/p2/void",
                fields: vec![("id", r#""fresh-void""#)],
            },
        ]
    }

    fn valid(&self) -> String {
        object(&self.fields)
    }

    /// The valid body with `field` set to `raw`, added if absent.
    fn with(&self, field: &'static str, raw: &'static str) -> String {
        object(&with(&self.fields, field, raw))
    }

    fn without(&self, field: &str) -> String {
        let fields: Vec<_> = self
            .fields
            .iter()
            .copied()
            .filter(|(name, _)| *name != field)
            .collect();
        object(&fields)
    }
}

fn transfer_fields(id: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        ("id", id),
        ("from", r#""a""#),
        ("to", r#""b""#),
        ("amount", "5"),
    ]
}

fn with(
    fields: &[(&'static str, &'static str)],
    field: &'static str,
    raw: &'static str,
) -> Vec<(&'static str, &'static str)> {
    let mut fields = fields.to_vec();
    match fields.iter_mut().find(|(name, _)| *name == field) {
        Some(slot) => slot.1 = raw,
        None => fields.push((field, raw)),
    }
    fields
}

fn object(fields: &[(&str, &str)]) -> String {
    let inner: Vec<String> = fields
        .iter()
        .map(|(name, raw)| format!("{name:?}:{raw}"))
        .collect();
    format!("{{{}}}", inner.join(","))
}

fn batch(items: &[String], atomic: &str) -> String {
    format!(r#"{{"transfers":[{}],"atomic":{atomic}}}"#, items.join(","))
}

const BAD_IDS: &[&str] = &[
    r#""""#,
    // 129 characters, one over the limit.
    r#""aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa""#,
    r#""a b""#,
    r#"" a""#,
    r#""é""#,
    r#""💸""#,
    r#""a/b""#,
    r#""a\u0000b""#,
    r#""a\nb""#,
    "5",
    "null",
    "true",
    r#"["a"]"#,
    r#"{"id":"a"}"#,
];

const BAD_AMOUNTS: &[&str] = &[
    "-1",
    "1.5",
    "0",
    "5.0",
    "1e3",
    "18446744073709551616",
    "-18446744073709551616",
    "99999999999999999999999999999999",
    r#""10""#,
    "true",
    "[5]",
];

const BAD_LEDGERS: &[&str] = &[
    r#""""#,
    r#""AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA""#,
    r#""U D""#,
    r#""€""#,
    r#""US/D""#,
    "840",
    "null",
];

const BAD_BOOLS: &[&str] = &[r#""yes""#, "1", "0", "null", r#""true""#];

/// Bodies that are wrong for any endpoint, whatever its fields.
const BAD_BODIES: &[&str] = &[
    "",
    " ",
    "not json",
    "{",
    "{\"id\":",
    "}",
    "[]",
    "[{}]",
    r#""a string""#,
    "null",
    "42",
    "true",
    "{}",
    "\u{feff}{}",
    "\u{0}",
];

/// What must not change when a request is refused: the log, every account and the two pending
/// transfers.
async fn observe(app: &TestApp) -> (u64, Vec<Value>) {
    let mut seen = Vec::new();
    for id in ["a", "b", "eur"] {
        seen.push(app.account(id).await);
    }
    for path in ["/v1/transfers/p1", "/v1/transfers/p2"] {
        let (status, json) = app.get(path).await;
        assert_eq!(status, StatusCode::OK, "{json}");
        seen.push(json);
    }
    (app.durable_position(), seen)
}

/// Two accounts in USD (one funded), one in EUR, and two pending transfers.
async fn world() -> TestApp {
    let app = TestApp::new();
    app.open_account("a", "USD", false).await;
    app.open_account("b", "USD", false).await;
    app.open_account("eur", "EUR", false).await;
    app.deposit("fund-a", "a", 1_000).await;
    for id in ["p1", "p2"] {
        app.post_ok(
            "/v1/transfers",
            &format!(r#"{{"id":"{id}","from":"a","to":"b","amount":100,"pending":true}}"#),
        )
        .await;
    }
    app
}

/// Sends `body` and expects it refused with `status` and `code`, and nothing changed.
async fn check_refused(app: &TestApp, path: &str, body: &str, status: StatusCode, code: &str) {
    let before = observe(app).await;
    let answer = app.post(path, body).await;
    let shown: String = body.chars().take(200).collect();
    assert_eq!(answer.0, status, "POST {path} {shown:?}: {}", answer.1);
    assert_error(&answer, status, code);
    assert_eq!(
        observe(app).await,
        before,
        "POST {path} {shown:?} changed something"
    );
}

async fn check_invalid(app: &TestApp, path: &str, body: &str) {
    check_refused(app, path, body, StatusCode::BAD_REQUEST, "invalid_request").await;
}

/// Finally every endpoint accepts its valid body with the id the refused requests used: none of
/// them took the id.
async fn check_ids_unused(app: &TestApp) {
    for endpoint in Endpoint::all() {
        let (status, json) = app.post(endpoint.path, &endpoint.valid()).await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "POST {} {}: {json}",
            endpoint.path,
            endpoint.valid()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_are_not_the_schema_are_refused_everywhere() {
    let app = world().await;
    let batch_path = "/v1/transfers/batch";
    for endpoint in Endpoint::all() {
        for body in BAD_BODIES {
            check_invalid(&app, endpoint.path, body).await;
        }
        let valid = endpoint.valid();
        // A valid value followed by anything else is not a single JSON value.
        for trailer in ["x", "{}", &valid, ",", "]"] {
            check_invalid(&app, endpoint.path, &format!("{valid}{trailer}")).await;
        }
        check_invalid(&app, endpoint.path, &valid[..valid.len() - 1]).await;
        check_invalid(&app, endpoint.path, &format!("[{valid}]")).await;
        check_invalid(&app, endpoint.path, &format!(r#"{{"body":{valid}}}"#)).await;
        for (field, _) in &endpoint.fields {
            let optional = matches!(*field, "allow_overdraft")
                || endpoint.path.ends_with("/post") && *field == "amount";
            if !optional {
                check_invalid(&app, endpoint.path, &endpoint.without(field)).await;
            }
        }
        for unknown in ["extra", "ID", "Amount", "memo", "pending_id", ""] {
            check_invalid(&app, endpoint.path, &endpoint.with(unknown, "1")).await;
        }
        // A field given twice is ambiguous.
        check_invalid(
            &app,
            endpoint.path,
            &format!(r#"{{"id":"x",{}"#, &valid[1..]),
        )
        .await;
    }
    for body in BAD_BODIES {
        check_invalid(&app, batch_path, body).await;
    }
    check_ids_unused(&app).await;
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_of_the_wrong_type_or_value_are_refused_everywhere() {
    let app = world().await;
    for endpoint in Endpoint::all() {
        for (field, _) in &endpoint.fields {
            let bad: Vec<&'static str> = match *field {
                "id" | "account" | "from" | "to" => BAD_IDS.to_vec(),
                // An absent amount posts everything, and so does null.
                "amount" if endpoint.path.ends_with("/post") => BAD_AMOUNTS.to_vec(),
                "amount" => BAD_AMOUNTS.iter().copied().chain(["null"]).collect(),
                "ledger" => BAD_LEDGERS.to_vec(),
                "allow_overdraft" => BAD_BOOLS.to_vec(),
                other => panic!("no bad values for {other}"),
            };
            for raw in bad {
                check_invalid(&app, endpoint.path, &endpoint.with(field, raw)).await;
            }
        }
    }
    check_ids_unused(&app).await;
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_that_make_no_sense_are_refused() {
    let app = world().await;
    let fields = transfer_fields(r#""fresh-tr""#);
    let cases: Vec<Vec<(&str, &str)>> = vec![
        // To itself.
        with(&fields, "to", r#""a""#),
        with(&with(&fields, "from", r#""eur""#), "to", r#""eur""#),
        // A timeout without pending, or with pending false.
        with(&fields, "timeout_s", "5"),
        with(&with(&fields, "pending", "false"), "timeout_s", "5"),
        with(&with(&fields, "pending", "false"), "timeout_s", "0"),
        // A timeout longer than 30 days, negative, fractional, or beyond u32.
        with(&with(&fields, "pending", "true"), "timeout_s", "2592001"),
        with(&with(&fields, "pending", "true"), "timeout_s", "-1"),
        with(&with(&fields, "pending", "true"), "timeout_s", "1.5"),
        with(&with(&fields, "pending", "true"), "timeout_s", "4294967296"),
        with(&with(&fields, "pending", "true"), "timeout_s", r#""1""#),
        // Pending of the wrong type.
        with(&fields, "pending", r#""yes""#),
        with(&fields, "pending", "1"),
        with(&fields, "pending", "null"),
    ];
    for case in &cases {
        let body = object(case);
        check_invalid(&app, "/v1/transfers", &body).await;
        // The same transfer inside a batch refuses the whole batch, atomic or not.
        for atomic in ["false", "true"] {
            let valid_first = object(&transfer_fields(r#""fresh-batch-0""#));
            check_invalid(
                &app,
                "/v1/transfers/batch",
                &batch(&[valid_first, body.clone()], atomic),
            )
            .await;
        }
    }
    // The longest timeout is accepted.
    let longest = object(&with(
        &with(&fields, "pending", "true"),
        "timeout_s",
        "2592000",
    ));
    let json = app.post_ok("/v1/transfers", &longest).await;
    assert_eq!(json["status"], "pending", "{json}");
    let (status, json) = app.get("/v1/transfers/fresh-batch-0").await;
    assert_error(&(status, json), StatusCode::NOT_FOUND, "not_found");
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_batches_apply_nothing() {
    let app = world().await;
    let path = "/v1/transfers/batch";
    let item = |id: &str| format!(r#"{{"id":"{id}","from":"a","to":"b","amount":1}}"#);
    let fields = transfer_fields(r#""fresh-batch-0""#);
    let mut bodies = vec![
        r#"{"transfers":[]}"#.to_string(),
        r#"{"transfers":[],"atomic":true}"#.to_string(),
        r#"{"atomic":true}"#.to_string(),
        r#"{"transfers":null}"#.to_string(),
        r#"{"transfers":{}}"#.to_string(),
        r#"{"transfers":"x"}"#.to_string(),
        format!(r#"{{"transfers":{}}}"#, item("x")),
        format!(r#"{{"transfers":[{}],"atomic":"yes"}}"#, item("x")),
        format!(r#"{{"transfers":[{}],"atomic":null}}"#, item("x")),
        format!(r#"{{"transfers":[{}],"atomics":true}}"#, item("x")),
        format!(
            r#"{{"transfers":[{}],"transfers":[{}]}}"#,
            item("x"),
            item("y")
        ),
        format!(r#"{{"transfers":[{},null]}}"#, item("x")),
        format!(r#"{{"transfers":[{},[]]}}"#, item("x")),
        format!(r#"{{"transfers":[{},{{}}]}}"#, item("x")),
        // Duplicate ids make an atomic batch ambiguous.
        batch(&[item("dup"), item("dup")], "true"),
        batch(&[item("dup"), item("other"), item("dup")], "true"),
    ];
    // Every malformed item refuses the batch, wherever it stands.
    for (field, _) in &fields {
        let bad: &[&str] = match *field {
            "id" | "from" | "to" => BAD_IDS,
            "amount" => BAD_AMOUNTS,
            other => panic!("no bad values for {other}"),
        };
        for raw in bad {
            let bad_item = object(&with(&fields, field, raw));
            bodies.push(batch(&[item("fresh-batch-1"), bad_item.clone()], "false"));
            bodies.push(batch(&[bad_item, item("fresh-batch-1")], "true"));
        }
    }
    for body in &bodies {
        check_invalid(&app, path, body).await;
    }
    // One transfer over the limit: the body is far over the single-request limit but within the
    // batch limit, so the count is what refuses it.
    let count = tally_core::limits::BATCH_TRANSFERS_MAX + 1;
    let items: Vec<String> = (0..count)
        .map(|index| item(&format!("big-{index}")))
        .collect();
    let body = batch(&items, "false");
    assert!(body.len() > BODY_BYTES_MAX && body.len() < BATCH_BODY_BYTES_MAX);
    check_invalid(&app, path, &body).await;
    check_invalid(&app, path, &batch(&items, "true")).await;
    let (status, json) = app.get("/v1/transfers/big-0").await;
    assert_error(&(status, json), StatusCode::NOT_FOUND, "not_found");
    let (status, json) = app.get("/v1/transfers/fresh-batch-1").await;
    assert_error(&(status, json), StatusCode::NOT_FOUND, "not_found");
    app.finish().await;
}

/// `body` padded with trailing spaces (still a valid body) to `size` bytes.
fn padded(body: &str, size: usize) -> String {
    assert!(body.len() <= size);
    format!("{body}{}", " ".repeat(size - body.len()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_are_refused_and_bodies_at_it_are_not() {
    let app = world().await;
    for endpoint in Endpoint::all() {
        let body = padded(&endpoint.valid(), BODY_BYTES_MAX + 1);
        check_refused(
            &app,
            endpoint.path,
            &body,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        )
        .await;
        let huge = padded(&endpoint.valid(), 4 * BODY_BYTES_MAX);
        check_refused(
            &app,
            endpoint.path,
            &huge,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        )
        .await;
    }
    let batch_body = batch(&[object(&transfer_fields(r#""fresh-batch""#))], "false");
    let body = padded(&batch_body, BATCH_BODY_BYTES_MAX + 1);
    check_refused(
        &app,
        "/v1/transfers/batch",
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
    // Exactly at the limits, the same bodies are accepted.
    for endpoint in Endpoint::all() {
        let body = padded(&endpoint.valid(), BODY_BYTES_MAX);
        let (status, json) = app.post(endpoint.path, &body).await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "POST {} at the limit: {json}",
            endpoint.path
        );
    }
    let body = padded(&batch_body, BATCH_BODY_BYTES_MAX);
    let (status, json) = app.post("/v1/transfers/batch", &body).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["results"][0]["outcome"], "created", "{json}");
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ids_in_the_path_are_refused() {
    let app = world().await;
    let long = "a".repeat(129);
    let bad_segments = [
        "a%20b",
        "%C3%A9",
        "a%2Fb",
        "%F0%9F%92%B8",
        long.as_str(),
        "a%00b",
    ];
    for segment in bad_segments {
        for action in ["post", "void"] {
            check_invalid(
                &app,
                &format!("/v1/transfers/{segment}/{action}"),
                r#"{"id":"fresh-x"}"#,
            )
            .await;
        }
        for path in [
            format!("/v1/accounts/{segment}"),
            format!("/v1/accounts/{segment}/history"),
            format!("/v1/transfers/{segment}"),
            format!("/v1/ledgers/{segment}"),
            format!("/v1/ledgers/{segment}/daily"),
        ] {
            let answer = app.get(&path).await;
            assert_error(&answer, StatusCode::BAD_REQUEST, "invalid_request");
        }
    }
    // An id of exactly 128 characters is fine: unknown, not malformed.
    let answer = app.get(&format!("/v1/accounts/{}", "a".repeat(128))).await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
    // An empty segment is an empty id.
    check_invalid(&app, "/v1/transfers//post", r#"{"id":"fresh-x"}"#).await;
    check_invalid(&app, "/v1/transfers//void", r#"{"id":"fresh-x"}"#).await;
    // Bad query strings.
    for query in [
        "limit=0",
        "limit=1001",
        "limit=-1",
        "limit=x",
        "limit=1.5",
        "after=-1",
        "after=x",
        "page=2",
        "limit=4294967296",
    ] {
        let answer = app.get(&format!("/v1/accounts/a/history?{query}")).await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "invalid_request");
    }
    app.finish().await;
}
