//! Authentication and authorization through the router: every 401 and 403 case, and that a
//! refused request changes nothing (the log does not move, no account changes, and its command
//! id is still free for a caller allowed to use it).

use std::time::{Duration, SystemTime};

use axum::http::StatusCode;
use serde_json::{json, Value};
use tally_auth::Scope;
use tally_server::auth::OpenRoutes;

use crate::support::{assert_error_body, issue_in, TestApp};

/// Accounts of [`world`]: three in USD, two in EUR.
const ACCOUNTS: [(&str, &str); 5] = [
    ("a", "USD"),
    ("b", "USD"),
    ("c", "USD"),
    ("e1", "EUR"),
    ("e2", "EUR"),
];

/// A token id no token has; revoking it is a valid command.
const SOME_TOKEN_ID: &str = "00112233445566778899aabbccddeeff";

/// One request, described so that it can be sent with any token.
#[derive(Clone, Debug)]
struct Req {
    method: &'static str,
    path: String,
    body: Option<String>,
}

fn get(path: &str) -> Req {
    Req {
        method: "GET",
        path: path.to_owned(),
        body: None,
    }
}

fn post(path: &str, body: Value) -> Req {
    Req {
        method: "POST",
        path: path.to_owned(),
        body: Some(body.to_string()),
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn transfer(id: &str, from: &str, to: &str, amount: u64) -> Value {
    json!({"id": id, "from": from, "to": to, "amount": amount})
}

fn account(id: &str, ledger: &str) -> Req {
    post("/v1/accounts", json!({"id": id, "ledger": ledger}))
}

fn deposit(id: &str, account: &str) -> Req {
    post(
        "/v1/deposits",
        json!({"id": id, "account": account, "amount": 1}),
    )
}

fn withdrawal(id: &str, account: &str) -> Req {
    post(
        "/v1/withdrawals",
        json!({"id": id, "account": account, "amount": 1}),
    )
}

fn transfer_req(id: &str, from: &str, to: &str) -> Req {
    post("/v1/transfers", transfer(id, from, to, 1))
}

fn post_pending(id: &str, pending: &str) -> Req {
    post(&format!("/v1/transfers/{pending}/post"), json!({"id": id}))
}

fn void_pending(id: &str, pending: &str) -> Req {
    post(&format!("/v1/transfers/{pending}/void"), json!({"id": id}))
}

fn batch(items: &[(&str, &str, &str)], atomic: bool) -> Req {
    let transfers: Vec<Value> = items
        .iter()
        .map(|(id, from, to)| transfer(id, from, to, 1))
        .collect();
    post(
        "/v1/transfers/batch",
        json!({"transfers": transfers, "atomic": atomic}),
    )
}

fn revocation(token_id: &str) -> Req {
    post("/v1/revocations", json!({"token_id": token_id}))
}

/// Every write route, with ids that are free in [`world`] and bodies an admin may send.
fn writes() -> Vec<Req> {
    vec![
        account("w-acct", "USD"),
        deposit("w-dep", "a"),
        withdrawal("w-wd", "a"),
        transfer_req("w-tr", "a", "b"),
        batch(&[("w-bat", "a", "b")], false),
        post_pending("w-post", "p-usd"),
        void_pending("w-void", "p-usd2"),
        revocation(SOME_TOKEN_ID),
    ]
}

/// Every GET route of the API that needs the `read` scope.
fn reads() -> Vec<Req> {
    vec![
        get("/v1/accounts/a"),
        get("/v1/accounts/a/history"),
        get("/v1/transfers/t-usd"),
        get("/v1/ledgers/USD"),
        get("/v1/ledgers/USD/daily"),
    ]
}

/// Accounts funded in two ledgers, a completed and two pending transfers in each.
async fn world() -> TestApp {
    let app = TestApp::with_auth();
    for (id, ledger) in ACCOUNTS {
        app.open_account(id, ledger, false).await;
    }
    app.deposit("fund-a", "a", 1_000).await;
    app.deposit("fund-e1", "e1", 1_000).await;
    for (id, from, to, pending) in [
        ("t-usd", "a", "b", false),
        ("t-eur", "e1", "e2", false),
        ("p-usd", "a", "b", true),
        ("p-usd2", "a", "b", true),
        ("p-eur", "e1", "e2", true),
        ("p-eur2", "e1", "e2", true),
    ] {
        let body = json!({"id": id, "from": from, "to": to, "amount": 10, "pending": pending});
        app.post_ok("/v1/transfers", &body.to_string()).await;
    }
    app
}

/// Everything a refused request could have changed: the end of the log, every account, and
/// whether the accounts refused requests try to create exist.
async fn state(app: &TestApp) -> Value {
    let mut accounts = Vec::new();
    for (id, _) in ACCOUNTS {
        accounts.push(app.account(id).await);
    }
    let mut absent = Vec::new();
    for id in ["w-acct", "e3", "z"] {
        absent.push(app.get(&format!("/v1/accounts/{id}")).await.0.as_u16());
    }
    json!({
        "durable_position": app.durable_position(),
        "accounts": accounts,
        "absent": absent,
        "revoked": app.state.engine.revocations().len(),
    })
}

/// A request and its `Authorization` header, shortened, for failure messages.
fn describe(authorization: Option<&str>, request: &Req) -> String {
    let authorization = authorization.map(|a| a.chars().take(80).collect::<String>());
    format!(
        "{} {} {} with {authorization:?}",
        request.method,
        request.path,
        request.body.as_deref().unwrap_or("")
    )
}

/// Sends `request` with `authorization` and asserts the documented error.
async fn refused(app: &TestApp, authorization: Option<&str>, request: &Req, status: StatusCode) {
    let reply = app
        .send_as(
            authorization,
            request.method,
            &request.path,
            request.body.clone().unwrap_or_default(),
        )
        .await;
    let json = reply.json();
    let what = describe(authorization, request);
    assert_eq!(reply.status, status, "{what}: {json}");
    assert_error_body(&json);
    let code = if status == StatusCode::UNAUTHORIZED {
        assert_eq!(
            reply.headers.get("www-authenticate").map(|v| v.as_bytes()),
            Some(&b"Bearer"[..]),
            "{what}: a 401 names the scheme"
        );
        "unauthorized"
    } else {
        "forbidden"
    };
    assert_eq!(json["error"]["code"], code, "{what}: {json}");
}

/// Sends `request` with `authorization` and asserts success: 201 for a command, 200 with every
/// item `created` for a batch, 200 for a read. Returns the answer.
async fn accepted(app: &TestApp, authorization: Option<&str>, request: &Req) -> Value {
    let (status, json) = app
        .call_as(
            authorization,
            request.method,
            &request.path,
            request.body.as_deref(),
        )
        .await;
    let what = describe(authorization, request);
    if request.method == "GET" {
        assert_eq!(status, StatusCode::OK, "{what}: {json}");
    } else if request.path == "/v1/transfers/batch" {
        assert_eq!(status, StatusCode::OK, "{what}: {json}");
        for item in json["results"].as_array().expect("results") {
            assert_eq!(item["outcome"], "created", "{what}: {json}");
        }
    } else {
        assert_eq!(status, StatusCode::CREATED, "{what}: {json}");
    }
    json
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_routes_need_no_token() {
    let app = world().await;
    for path in ["/healthz", "/readyz", "/v1/openapi.json"] {
        for authorization in [None, Some("Bearer garbage"), Some("Basic eDp5")] {
            let reply = app.send_as(authorization, "GET", path, "").await;
            assert_eq!(
                reply.status,
                StatusCode::OK,
                "GET {path} with {authorization:?}: {}",
                reply.text()
            );
        }
    }
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_malformed_expired_foreign_or_tampered_tokens_are_401_and_change_nothing() {
    let app = world().await;
    let (expired, expiring) = app.issue_for(&[Scope::Admin], &[], &[], Duration::from_secs(1));

    let other_dir = tempfile::tempdir().expect("a second data directory");
    tally_auth::KeyRing::init(other_dir.path()).expect("a second key pair");
    let (foreign, _) = issue_in(
        other_dir.path(),
        &[Scope::Admin],
        &[],
        &[],
        Duration::from_secs(3600),
    );

    let admin = app.issue(&[Scope::Admin], &[], &[]);
    let tampered = {
        // v4.public.<payload and signature, base64url>.<footer>: change one payload character.
        let mut parts: Vec<String> = admin.split('.').map(str::to_owned).collect();
        assert_eq!(parts.len(), 4, "a footed v4.public token: {admin}");
        let mut body: Vec<char> = parts[2].chars().collect();
        body[10] = if body[10] == 'A' { 'B' } else { 'A' };
        parts[2] = body.into_iter().collect();
        parts.join(".")
    };
    let with_footer = |token: &str, footer: &str| {
        let mut parts: Vec<&str> = token.split('.').collect();
        parts[3] = footer;
        parts.join(".")
    };
    // The admin token naming a key id the ring does not have ({"kid":"0000000000000000"}).
    let unknown_kid = with_footer(&admin, "eyJraWQiOiIwMDAwMDAwMDAwMDAwMDAwIn0");
    // The foreign token claiming to be signed by this ring's key.
    let foreign_as_ours = with_footer(&foreign, admin.split('.').nth(3).expect("a footer"));

    // Wait out the short-lived token (at most a second: issue times are whole seconds).
    if let Ok(left) = expiring.expires_at.duration_since(SystemTime::now()) {
        tokio::time::sleep(left + Duration::from_millis(50)).await;
    }

    let authorizations: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("basic", Some("Basic dXNlcjpwYXNz".to_owned())),
        ("bearer alone", Some("Bearer".to_owned())),
        ("bearer and a space", Some("Bearer ".to_owned())),
        ("garbage", Some("Bearer garbage".to_owned())),
        ("v4.local", Some("Bearer v4.local.AAAA".to_owned())),
        ("other scheme", Some(format!("Token {admin}"))),
        ("no scheme", Some(admin.clone())),
        ("expired", Some(bearer(&expired))),
        ("foreign key", Some(bearer(&foreign))),
        ("tampered payload", Some(bearer(&tampered))),
        ("unknown key id", Some(bearer(&unknown_kid))),
        ("foreign key, our key id", Some(bearer(&foreign_as_ours))),
        ("oversized", Some(bearer(&"A".repeat(64 * 1024)))),
    ];
    let before = state(&app).await;
    let mut requests = writes();
    requests.extend(reads());
    requests.push(get("/metrics"));
    for (_case, authorization) in &authorizations {
        for request in &requests {
            refused(
                &app,
                authorization.as_deref(),
                request,
                StatusCode::UNAUTHORIZED,
            )
            .await;
        }
    }
    assert_eq!(state(&app).await, before, "a 401 changes nothing");
    // The valid token these were made from works, and every command id is still free.
    for request in writes() {
        accepted(&app, Some(&bearer(&admin)), &request).await;
    }
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_from_the_next_request_on() {
    let app = world().await;
    let (writer, claims) = app.issue_for(&[Scope::Write], &[], &[], Duration::from_secs(3600));
    let writer = bearer(&writer);
    // Verified (and cached) before the revocation.
    accepted(&app, Some(&writer), &deposit("before-revocation", "a")).await;

    // Only an unrestricted admin may revoke.
    let before = state(&app).await;
    let restricted_admin = bearer(&app.issue(&[Scope::Admin], &["USD"], &[]));
    let operator = bearer(&app.issue(&[Scope::Operator], &[], &[]));
    for authorization in [&writer, &operator, &restricted_admin] {
        refused(
            &app,
            Some(authorization),
            &revocation(&claims.token_id),
            StatusCode::FORBIDDEN,
        )
        .await;
    }
    assert_eq!(state(&app).await, before, "a 403 changes nothing");
    accepted(&app, Some(&writer), &deposit("still-valid", "a")).await;

    let (status, json) = app
        .post(
            "/v1/revocations",
            &json!({"token_id": claims.token_id}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{json}");
    assert_eq!(json, json!({"token_id": claims.token_id, "revoked": true}));
    assert!(app.state.engine.revocations().contains(&claims.token_id));
    let (status, again) = app
        .post(
            "/v1/revocations",
            &json!({"token_id": claims.token_id}).to_string(),
        )
        .await;
    assert_eq!((status, &again), (StatusCode::OK, &json), "a repeat");

    let before = state(&app).await;
    refused(
        &app,
        Some(&writer),
        &deposit("after-revocation", "a"),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    refused(
        &app,
        Some(&writer),
        &get("/v1/accounts/a"),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(state(&app).await, before, "a 401 changes nothing");
    // Another token of the same key and scope is not affected.
    let other_writer = bearer(&app.issue(&[Scope::Write], &[], &[]));
    accepted(&app, Some(&other_writer), &deposit("after-revocation", "a")).await;
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_scope_allows_only_its_routes() {
    let app = world().await;
    let read = bearer(&app.issue(&[Scope::Read], &[], &[]));
    let write = bearer(&app.issue(&[Scope::Write], &[], &[]));
    let operator = bearer(&app.issue(&[Scope::Operator], &[], &[]));
    let admin = bearer(&app.issue(&[Scope::Admin], &[], &[]));
    let metrics = get("/metrics");

    let before = state(&app).await;
    for request in writes() {
        refused(&app, Some(&read), &request, StatusCode::FORBIDDEN).await;
        refused(&app, Some(&operator), &request, StatusCode::FORBIDDEN).await;
    }
    // Revoking needs `admin`; `write` is not enough.
    refused(
        &app,
        Some(&write),
        &revocation(SOME_TOKEN_ID),
        StatusCode::FORBIDDEN,
    )
    .await;
    for request in reads() {
        refused(&app, Some(&write), &request, StatusCode::FORBIDDEN).await;
        refused(&app, Some(&operator), &request, StatusCode::FORBIDDEN).await;
    }
    for authorization in [&read, &write] {
        refused(&app, Some(authorization), &metrics, StatusCode::FORBIDDEN).await;
    }
    assert_eq!(state(&app).await, before, "a 403 changes nothing");

    // Each scope does what it is for, with the very command ids refused above.
    for request in reads() {
        accepted(&app, Some(&read), &request).await;
        accepted(&app, Some(&admin), &request).await;
    }
    for authorization in [&operator, &admin] {
        let reply = app
            .send_as(Some(authorization), "GET", "/metrics", "")
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    for request in writes() {
        let authorization = if request.path == "/v1/revocations" {
            &admin
        } else {
            &write
        };
        accepted(&app, Some(authorization), &request).await;
    }
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_restricted_token_cannot_touch_another_ledger() {
    let app = world().await;
    let usd = bearer(&app.issue(&[Scope::Read, Scope::Write], &["USD"], &[]));
    let admin = bearer(&app.issue(&[Scope::Admin], &[], &[]));

    // Each refused write, and a body an admin may send under the same id afterwards.
    let refused_writes = [
        (account("e3", "EUR"), account("e3", "EUR")),
        (deposit("l-dep", "e1"), deposit("l-dep", "e1")),
        (withdrawal("l-wd", "e1"), withdrawal("l-wd", "e1")),
        (
            transfer_req("l-tr", "e1", "e2"),
            transfer_req("l-tr", "e1", "e2"),
        ),
        // Across ledgers the engine would refuse it anyway; the id stays free.
        (
            transfer_req("l-from", "e1", "a"),
            transfer_req("l-from", "e2", "e1"),
        ),
        (
            transfer_req("l-to", "a", "e1"),
            transfer_req("l-to", "e1", "e2"),
        ),
        (
            post_pending("l-post", "p-eur"),
            post_pending("l-post", "p-eur"),
        ),
        (
            void_pending("l-void", "p-eur2"),
            void_pending("l-void", "p-eur2"),
        ),
        // Transfers of another ledger that are not pending: refused like the pending ones,
        // rather than recorded as `not_pending` rejections that reveal they exist.
        (
            post_pending("l-post-done", "t-eur"),
            deposit("l-post-done", "e1"),
        ),
        (
            void_pending("l-void-dep", "fund-e1"),
            deposit("l-void-dep", "e1"),
        ),
        (
            batch(&[("l-bat1", "a", "b"), ("l-bat2", "e1", "e2")], false),
            batch(&[("l-bat1", "a", "b"), ("l-bat2", "e1", "e2")], false),
        ),
        (
            batch(&[("l-atom1", "a", "b"), ("l-atom2", "e1", "e2")], true),
            batch(&[("l-atom1", "a", "b"), ("l-atom2", "e1", "e2")], true),
        ),
        (revocation(SOME_TOKEN_ID), revocation(SOME_TOKEN_ID)),
    ];
    let refused_reads = [
        get("/v1/accounts/e1"),
        get("/v1/accounts/e1/history"),
        get("/v1/transfers/t-eur"),
        get("/v1/transfers/fund-e1"),
        get("/v1/transfers/p-eur"),
        get("/v1/ledgers/EUR"),
        get("/v1/ledgers/EUR/daily"),
    ];

    let before = state(&app).await;
    for (request, _) in &refused_writes {
        refused(&app, Some(&usd), request, StatusCode::FORBIDDEN).await;
    }
    for request in &refused_reads {
        refused(&app, Some(&usd), request, StatusCode::FORBIDDEN).await;
    }
    assert_eq!(state(&app).await, before, "a 403 changes nothing");

    // Inside its ledger the token works.
    for request in [
        get("/v1/accounts/a"),
        get("/v1/accounts/a/history"),
        get("/v1/transfers/t-usd"),
        get("/v1/transfers/fund-a"),
        get("/v1/ledgers/USD"),
        get("/v1/ledgers/USD/daily"),
        account("l-usd", "USD"),
        deposit("l-usd-dep", "a"),
        withdrawal("l-usd-wd", "a"),
        transfer_req("l-usd-tr", "a", "b"),
        batch(&[("l-usd-bat1", "a", "b"), ("l-usd-bat2", "a", "c")], true),
        post_pending("l-usd-post", "p-usd"),
        void_pending("l-usd-void", "p-usd2"),
    ] {
        accepted(&app, Some(&usd), &request).await;
    }
    // Every refused command id is still free.
    for (_, request) in &refused_writes {
        accepted(&app, Some(&admin), request).await;
    }
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_restricted_token_cannot_touch_another_account() {
    let app = world().await;
    let only_a = bearer(&app.issue(&[Scope::Read, Scope::Write], &[], &["a"]));
    // Both restrictions hold at once: `a` is in USD, not EUR.
    let a_in_eur = bearer(&app.issue(&[Scope::Read, Scope::Write], &["EUR"], &["a"]));
    let admin = bearer(&app.issue(&[Scope::Admin], &[], &[]));

    let refused_writes = [
        account("z", "USD"),
        deposit("r-dep", "b"),
        withdrawal("r-wd", "b"),
        transfer_req("r-tr-out", "a", "b"),
        transfer_req("r-tr-in", "b", "a"),
        post_pending("r-post", "p-usd"),
        void_pending("r-void", "p-usd2"),
        batch(&[("r-bat1", "a", "b")], false),
    ];
    let refused_reads = [
        get("/v1/accounts/b"),
        get("/v1/accounts/b/history"),
        get("/v1/transfers/t-usd"),
        // Ledger-wide figures reach beyond the token's account.
        get("/v1/ledgers/USD"),
        get("/v1/ledgers/USD/daily"),
    ];
    let allowed_for_a = [
        deposit("r-a-dep", "a"),
        withdrawal("r-a-wd", "a"),
        get("/v1/accounts/a"),
        get("/v1/accounts/a/history"),
        get("/v1/transfers/fund-a"),
    ];

    let before = state(&app).await;
    for request in refused_writes.iter().chain(&refused_reads) {
        refused(&app, Some(&only_a), request, StatusCode::FORBIDDEN).await;
    }
    for request in allowed_for_a.iter().chain(&refused_writes) {
        refused(&app, Some(&a_in_eur), request, StatusCode::FORBIDDEN).await;
    }
    assert_eq!(state(&app).await, before, "a 403 changes nothing");

    for request in &allowed_for_a {
        accepted(&app, Some(&only_a), request).await;
    }
    for request in &refused_writes {
        accepted(&app, Some(&admin), request).await;
    }
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restricted_batch_with_one_item_outside_is_refused_whole() {
    let app = world().await;
    let usd = bearer(&app.issue(&[Scope::Write], &["USD"], &[]));
    let admin = bearer(&app.issue(&[Scope::Admin], &[], &[]));
    let items = [
        ("bw1", "a", "b"),
        ("bw2", "a", "c"),
        ("bw3", "b", "c"),
        ("bw4", "e1", "e2"),
        ("bw5", "c", "a"),
    ];
    let atomic_items = [
        ("ba1", "a", "b"),
        ("ba2", "a", "c"),
        ("ba3", "e1", "e2"),
        ("ba4", "b", "a"),
    ];
    let before = state(&app).await;
    refused(
        &app,
        Some(&usd),
        &batch(&items, false),
        StatusCode::FORBIDDEN,
    )
    .await;
    refused(
        &app,
        Some(&usd),
        &batch(&atomic_items, true),
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_eq!(
        state(&app).await,
        before,
        "nothing of a refused batch applies"
    );
    for id in ["bw1", "bw2", "bw3", "ba1", "ba2"] {
        let (status, json) = app.get(&format!("/v1/transfers/{id}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{id}: {json}");
    }
    accepted(&app, Some(&admin), &batch(&items, false)).await;
    accepted(&app, Some(&admin), &batch(&atomic_items, true)).await;
    app.finish().await;
}

/// `--open-metrics` opens `/metrics` and nothing else; the bearer scheme is case-insensitive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_metrics_opens_only_metrics_and_the_scheme_ignores_case() {
    let app = TestApp::with_auth_and(OpenRoutes {
        metrics: true,
        status: false,
    });
    let reply = app.send_as(None, "GET", "/metrics", "").await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "expected /metrics open with --open-metrics"
    );
    let reply = app.send_as(None, "GET", "/v1/accounts/a", "").await;
    assert_eq!(
        reply.status,
        StatusCode::UNAUTHORIZED,
        "expected reads to still need a token"
    );
    let admin = app.issue(&[Scope::Admin], &[], &[]);
    for scheme in ["BEARER", "bearer", "Bearer", "bEaReR"] {
        let header = format!("{scheme} {admin}");
        let (status, body) = app
            .call_as(Some(&header), "GET", "/v1/accounts/nobody", None)
            .await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "expected scheme {scheme:?} to be accepted, found {status} {body}"
        );
    }
    let closed = TestApp::with_auth();
    let reply = closed.send_as(None, "GET", "/metrics", "").await;
    assert_eq!(
        reply.status,
        StatusCode::UNAUTHORIZED,
        "expected /metrics to need a token by default"
    );
    app.finish().await;
    closed.finish().await;
}
