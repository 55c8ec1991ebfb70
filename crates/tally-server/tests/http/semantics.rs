//! The ledger's rules as clients see them through HTTP: idempotency, funds, ledgers, two-phase
//! transfers, batches, history.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::{json, Value};

use crate::support::{assert_error, TestApp};

fn transfer(id: &str, from: &str, to: &str, amount: u64) -> String {
    json!({"id": id, "from": from, "to": to, "amount": amount}).to_string()
}

fn pending(id: &str, from: &str, to: &str, amount: u64) -> String {
    json!({"id": id, "from": from, "to": to, "amount": amount, "pending": true}).to_string()
}

/// Two USD accounts, `a` funded with 1,000, and one EUR account.
async fn world() -> TestApp {
    let app = TestApp::new();
    app.open_account("a", "USD", false).await;
    app.open_account("b", "USD", false).await;
    app.open_account("eur", "EUR", false).await;
    app.deposit("fund-a", "a", 1_000).await;
    app
}

/// POSTs `body` twice, then `other` (another body under the same id): 201, then 200 with the
/// identical answer, then 409. Returns the first answer.
async fn check_idempotent(app: &TestApp, path: &str, body: &str, other: (&str, &str)) -> Value {
    let (status, first) = app.post(path, body).await;
    assert_eq!(status, StatusCode::CREATED, "POST {path} {body}: {first}");
    let (status, again) = app.post(path, body).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "repeat of POST {path} {body}: {again}"
    );
    assert_eq!(again, first, "a repeat answers the first answer");
    let answer = app.post(other.0, other.1).await;
    assert_error(&answer, StatusCode::CONFLICT, "conflict");
    // A conflict does not replace the first answer.
    let (status, again) = app.post(path, body).await;
    assert_eq!((status, &again), (StatusCode::OK, &first));
    first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_is_idempotent_by_id() {
    let app = world().await;
    let account = check_idempotent(
        &app,
        "/v1/accounts",
        r#"{"id":"c","ledger":"USD"}"#,
        ("/v1/accounts", r#"{"id":"c","ledger":"EUR"}"#),
    )
    .await;
    assert_eq!(
        account,
        json!({"id":"c","ledger":"USD","balance":0,"debits":0,"credits":0,
               "debits_pending":0,"credits_pending":0,"allow_overdraft":false,"version":1})
    );
    // An explicit default is the same body.
    let (status, json) = app
        .post(
            "/v1/accounts",
            r#"{"id":"c","ledger":"USD","allow_overdraft":false}"#,
        )
        .await;
    assert_eq!((status, json), (StatusCode::OK, account));
    let answer = app
        .post(
            "/v1/accounts",
            r#"{"id":"c","ledger":"USD","allow_overdraft":true}"#,
        )
        .await;
    assert_error(&answer, StatusCode::CONFLICT, "conflict");

    let deposit = check_idempotent(
        &app,
        "/v1/deposits",
        r#"{"id":"d1","account":"c","amount":70}"#,
        ("/v1/deposits", r#"{"id":"d1","account":"c","amount":71}"#),
    )
    .await;
    assert_eq!(deposit["kind"], "deposit");
    assert_eq!(deposit["status"], "posted");
    assert_eq!(deposit["from"], Value::Null);
    assert_eq!(deposit["to"], "c");
    assert_eq!(deposit["amount"], 70);
    assert_eq!(deposit["ledger"], "USD");
    assert!(deposit["position"].is_u64() && deposit["timestamp"].is_string());
    // The same id as a withdrawal, or into another account, is another body.
    let answer = app
        .post(
            "/v1/withdrawals",
            r#"{"id":"d1","account":"c","amount":70}"#,
        )
        .await;
    assert_error(&answer, StatusCode::CONFLICT, "conflict");
    let answer = app
        .post("/v1/deposits", r#"{"id":"d1","account":"a","amount":70}"#)
        .await;
    assert_error(&answer, StatusCode::CONFLICT, "conflict");
    assert_eq!(app.balance("c").await, 70, "deposited once");

    let withdrawal = check_idempotent(
        &app,
        "/v1/withdrawals",
        r#"{"id":"w1","account":"c","amount":20}"#,
        (
            "/v1/withdrawals",
            r#"{"id":"w1","account":"c","amount":21}"#,
        ),
    )
    .await;
    assert_eq!(
        (&withdrawal["from"], &withdrawal["to"]),
        (&json!("c"), &Value::Null)
    );
    assert_eq!(app.balance("c").await, 50, "withdrawn once");

    let moved = check_idempotent(
        &app,
        "/v1/transfers",
        &transfer("t1", "a", "b", 10),
        ("/v1/transfers", &transfer("t1", "a", "b", 11)),
    )
    .await;
    assert_eq!(moved["kind"], "transfer");
    let answer = app
        .post("/v1/transfers", &transfer("t1", "b", "a", 10))
        .await;
    assert_error(&answer, StatusCode::CONFLICT, "conflict");
    let answer = app
        .post("/v1/transfers", &pending("t1", "a", "b", 10))
        .await;
    assert_error(&answer, StatusCode::CONFLICT, "conflict");
    // A transfer id is not a deposit id either.
    let answer = app
        .post("/v1/deposits", r#"{"id":"t1","account":"b","amount":10}"#)
        .await;
    assert_error(&answer, StatusCode::CONFLICT, "conflict");
    assert_eq!((app.balance("a").await, app.balance("b").await), (990, 10));

    app.post_ok("/v1/transfers", &pending("p1", "a", "b", 100))
        .await;
    app.post_ok("/v1/transfers", &pending("p2", "a", "b", 100))
        .await;
    app.post_ok("/v1/transfers", &pending("p3", "a", "b", 100))
        .await;
    let post = check_idempotent(
        &app,
        "/v1/transfers/p1/post",
        r#"{"id":"p1-post","amount":40}"#,
        ("/v1/transfers/p1/post", r#"{"id":"p1-post","amount":41}"#),
    )
    .await;
    assert_eq!(
        (&post["kind"], &post["pending_id"], &post["amount"]),
        (&json!("post"), &json!("p1"), &json!(40))
    );
    // The whole amount is another body than an explicit amount.
    let answer = app
        .post("/v1/transfers/p1/post", r#"{"id":"p1-post"}"#)
        .await;
    assert_error(&answer, StatusCode::CONFLICT, "conflict");
    let void = check_idempotent(
        &app,
        "/v1/transfers/p2/void",
        r#"{"id":"p2-void"}"#,
        // Voiding another pending transfer under the same id is another body.
        ("/v1/transfers/p3/void", r#"{"id":"p2-void"}"#),
    )
    .await;
    assert_eq!(
        (&void["kind"], &void["pending_id"]),
        (&json!("void"), &json!("p2"))
    );
    // The conflict left p3 pending.
    let (_, view) = app.get("/v1/transfers/p3").await;
    assert_eq!(view["status"], "pending", "{view}");
    // A post under a void's id is another body too.
    let answer = app
        .post("/v1/transfers/p2/post", r#"{"id":"p2-void"}"#)
        .await;
    assert_error(&answer, StatusCode::CONFLICT, "conflict");
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn funds_ledgers_and_accounts_are_checked() {
    let app = world().await;
    let answer = app
        .post(
            "/v1/withdrawals",
            r#"{"id":"w","account":"a","amount":1001}"#,
        )
        .await;
    assert_error(
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "insufficient_funds",
    );
    let answer = app
        .post("/v1/transfers", &transfer("t", "a", "b", 1001))
        .await;
    assert_error(
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "insufficient_funds",
    );
    let answer = app
        .post("/v1/transfers", &pending("p", "a", "b", 1001))
        .await;
    assert_error(
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "insufficient_funds",
    );
    let answer = app
        .post("/v1/transfers", &transfer("x", "a", "eur", 1))
        .await;
    assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, "ledger_mismatch");
    let answer = app
        .post("/v1/transfers", &transfer("x2", "nobody", "b", 1))
        .await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
    let answer = app
        .post("/v1/transfers", &transfer("x3", "a", "nobody", 1))
        .await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
    let answer = app
        .post(
            "/v1/deposits",
            r#"{"id":"x4","account":"nobody","amount":1}"#,
        )
        .await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
    let answer = app
        .post(
            "/v1/withdrawals",
            r#"{"id":"x5","account":"nobody","amount":1}"#,
        )
        .await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
    let answer = app.get("/v1/accounts/nobody").await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
    assert_eq!((app.balance("a").await, app.balance("b").await), (1_000, 0));

    // Exactly the balance is fine.
    app.post_ok("/v1/transfers", &transfer("all", "a", "b", 1_000))
        .await;
    assert_eq!((app.balance("a").await, app.balance("b").await), (0, 1_000));

    // An overdraft account goes below zero, by transfer and by withdrawal.
    app.open_account("od", "USD", true).await;
    app.post_ok("/v1/transfers", &transfer("od-1", "od", "a", 300))
        .await;
    app.post_ok(
        "/v1/withdrawals",
        r#"{"id":"od-2","account":"od","amount":200}"#,
    )
    .await;
    let account = app.account("od").await;
    assert_eq!(
        (
            &account["balance"],
            &account["debits"],
            &account["allow_overdraft"]
        ),
        (&json!(-500), &json!(500), &json!(true))
    );

    // Credits beyond u64 overflow.
    app.open_account("big", "GOLD", false).await;
    app.post_ok(
        "/v1/deposits",
        &json!({"id":"big-1","account":"big","amount":u64::MAX}).to_string(),
    )
    .await;
    let answer = app
        .post(
            "/v1/deposits",
            r#"{"id":"big-2","account":"big","amount":1}"#,
        )
        .await;
    assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, "overflow");
    assert_eq!(app.account("big").await["credits"], json!(u64::MAX));
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_is_remembered_like_a_success() {
    let app = world().await;
    let body = r#"{"id":"w","account":"a","amount":1500}"#;
    let first = app.post("/v1/withdrawals", body).await;
    assert_error(
        &first,
        StatusCode::UNPROCESSABLE_ENTITY,
        "insufficient_funds",
    );
    // A rejected command records no transfer.
    let answer = app.get("/v1/transfers/w").await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
    // Even once the funds are there, the retry gets the first answer.
    app.deposit("more", "a", 1_000).await;
    // The same answer, but for the request id, which names each request.
    let mut retried = app.post("/v1/withdrawals", body).await;
    let mut first = first;
    for (_, json) in [&mut first, &mut retried] {
        json["error"]
            .as_object_mut()
            .unwrap()
            .remove("request_id")
            .expect("an error names its request");
    }
    assert_eq!(retried, first);
    assert_eq!(app.balance("a").await, 2_000);
    let answer = app
        .post("/v1/withdrawals", r#"{"id":"w","account":"a","amount":1}"#)
        .await;
    assert_error(&answer, StatusCode::CONFLICT, "conflict");
    let answer = app.get("/v1/transfers/w").await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_transfers_reserve_and_resolve_once() {
    let app = world().await;
    let reserved = app
        .post_ok("/v1/transfers", &pending("p", "a", "b", 300))
        .await;
    assert_eq!(
        (&reserved["kind"], &reserved["status"]),
        (&json!("pending"), &json!("pending"))
    );
    assert_eq!(reserved.get("expires_at"), None, "no timeout, no expiry");
    let a = app.account("a").await;
    assert_eq!(
        (&a["balance"], &a["debits_pending"]),
        (&json!(1_000), &json!(300))
    );
    assert_eq!(app.account("b").await["credits_pending"], 300);
    // The reservation is not available to spend.
    let answer = app
        .post(
            "/v1/withdrawals",
            r#"{"id":"w","account":"a","amount":701}"#,
        )
        .await;
    assert_error(
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "insufficient_funds",
    );

    let answer = app
        .post("/v1/transfers/p/post", r#"{"id":"too-much","amount":301}"#)
        .await;
    assert_error(
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "exceeds_pending_amount",
    );
    let answer = app
        .post("/v1/transfers/nothing/post", r#"{"id":"post-nothing"}"#)
        .await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
    let answer = app
        .post("/v1/transfers/nothing/void", r#"{"id":"void-nothing"}"#)
        .await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
    let post = app
        .post_ok("/v1/transfers/p/post", r#"{"id":"p-post","amount":120}"#)
        .await;
    assert_eq!(
        (&post["from"], &post["to"], &post["amount"]),
        (&json!("a"), &json!("b"), &json!(120))
    );
    let (status, view) = app.get("/v1/transfers/p").await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["status"], "posted", "{view}");
    assert_eq!(view["posted_amount"], 120, "{view}");
    assert_eq!(view["resolved_by"], "p-post", "{view}");
    assert_eq!(
        (&view["amount"], &view["position"]),
        (&json!(300), &reserved["position"])
    );
    let (status, view) = app.get("/v1/transfers/p-post").await;
    assert_eq!(
        (status, &view["kind"], &view["pending_id"]),
        (StatusCode::OK, &json!("post"), &json!("p"))
    );
    let a = app.account("a").await;
    assert_eq!(
        (&a["balance"], &a["debits_pending"]),
        (&json!(880), &json!(0))
    );
    assert_eq!(app.balance("b").await, 120);

    // Resolved once: no second post, no void afterwards.
    let answer = app
        .post("/v1/transfers/p/post", r#"{"id":"p-post-2","amount":1}"#)
        .await;
    assert_error(
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "already_resolved",
    );
    let answer = app.post("/v1/transfers/p/void", r#"{"id":"p-void"}"#).await;
    assert_error(
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "already_resolved",
    );

    // Void, then post is refused.
    app.post_ok("/v1/transfers", &pending("q", "a", "b", 200))
        .await;
    let void = app
        .post_ok("/v1/transfers/q/void", r#"{"id":"q-void"}"#)
        .await;
    assert_eq!(void["kind"], "void");
    let answer = app.post("/v1/transfers/q/post", r#"{"id":"q-post"}"#).await;
    assert_error(
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "already_resolved",
    );
    let (_, view) = app.get("/v1/transfers/q").await;
    assert_eq!(
        (&view["status"], &view["resolved_by"]),
        (&json!("voided"), &json!("q-void"))
    );
    assert_eq!(app.account("a").await["debits_pending"], 0);
    assert_eq!(app.balance("a").await, 880);

    // Only pending transfers can be resolved.
    app.post_ok("/v1/transfers", &transfer("plain", "a", "b", 1))
        .await;
    for (target, id) in [
        ("plain", "post-plain"),
        ("fund-a", "post-deposit"),
        ("p-post", "post-post"),
    ] {
        let answer = app
            .post(
                &format!("/v1/transfers/{target}/post"),
                &json!({"id": id}).to_string(),
            )
            .await;
        assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, "not_pending");
        let answer = app
            .post(
                &format!("/v1/transfers/{target}/void"),
                &json!({"id": format!("{id}-void")}).to_string(),
            )
            .await;
        assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, "not_pending");
    }

    // A full post without an amount moves all of it.
    app.post_ok("/v1/transfers", &pending("r", "a", "b", 50))
        .await;
    let post = app
        .post_ok("/v1/transfers/r/post", r#"{"id":"r-post"}"#)
        .await;
    assert_eq!(post["amount"], 50);
    let (_, view) = app.get("/v1/transfers/r").await;
    assert_eq!(
        (&view["status"], &view["posted_amount"]),
        (&json!("posted"), &json!(50))
    );
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_transfer_with_a_timeout_expires() {
    let app = world().await;
    let body =
        json!({"id":"p","from":"a","to":"b","amount":300,"pending":true,"timeout_s":1}).to_string();
    let reserved = app.post_ok("/v1/transfers", &body).await;
    assert!(reserved["expires_at"].is_string(), "{reserved}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let view = loop {
        let (status, view) = app.get("/v1/transfers/p").await;
        assert_eq!(status, StatusCode::OK, "{view}");
        if view["status"] == "expired" {
            break view;
        }
        assert_eq!(view["status"], "pending", "{view}");
        assert!(Instant::now() < deadline, "not expired within 5 s: {view}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(view["expires_at"], reserved["expires_at"]);
    let a = app.account("a").await;
    assert_eq!(
        (&a["balance"], &a["debits_pending"]),
        (&json!(1_000), &json!(0))
    );
    let answer = app.post("/v1/transfers/p/post", r#"{"id":"late"}"#).await;
    assert_error(
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "already_resolved",
    );
    let answer = app
        .post("/v1/transfers/p/void", r#"{"id":"late-void"}"#)
        .await;
    assert_error(
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "already_resolved",
    );
    let (status, history) = app.get("/v1/accounts/a/history").await;
    assert_eq!(status, StatusCode::OK);
    let kinds: Vec<&Value> = history["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| &entry["kind"])
        .collect();
    assert_eq!(
        kinds,
        [&json!("deposit"), &json!("pending"), &json!("expire")],
        "{history}"
    );
    app.finish().await;
}

fn outcomes(answer: &Value) -> Vec<(String, String, String)> {
    answer["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results: {answer}"))
        .iter()
        .map(|item| {
            let text = |value: &Value| value.as_str().unwrap_or_default().to_string();
            (
                text(&item["id"]),
                text(&item["outcome"]),
                text(&item["error"]["code"]),
            )
        })
        .collect()
}

fn expected(items: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    items
        .iter()
        .map(|(id, outcome, code)| (id.to_string(), outcome.to_string(), code.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_atomic_batch_applies_all_or_nothing() {
    let app = world().await;
    app.open_account("c", "USD", false).await;
    let body = json!({"atomic": true, "transfers": [
        {"id":"t1","from":"a","to":"b","amount":100},
        {"id":"t2","from":"b","to":"c","amount":100},
        {"id":"t3","from":"c","to":"a","amount":101},
        {"id":"t4","from":"a","to":"c","amount":1},
    ]})
    .to_string();
    let (status, answer) = app.post("/v1/transfers/batch", &body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        outcomes(&answer),
        expected(&[
            ("t1", "rejected", "linked_failed"),
            ("t2", "rejected", "linked_failed"),
            ("t3", "rejected", "insufficient_funds"),
            ("t4", "rejected", "linked_failed"),
        ]),
        "{answer}"
    );
    for item in answer["results"].as_array().unwrap() {
        crate::support::assert_item_error(&item["error"]);
    }
    assert_eq!(
        (
            app.balance("a").await,
            app.balance("b").await,
            app.balance("c").await
        ),
        (1_000, 0, 0)
    );
    for id in ["t1", "t2", "t3", "t4"] {
        let answer = app.get(&format!("/v1/transfers/{id}")).await;
        assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
    }
    // The same batch again gets the same answer.
    let (status, again) = app.post("/v1/transfers/batch", &body).await;
    assert_eq!(
        (status, &outcomes(&again)),
        (StatusCode::OK, &outcomes(&answer))
    );

    // A chain that holds succeeds as a whole, each step seeing the one before.
    let body = json!({"atomic": true, "transfers": [
        {"id":"u1","from":"a","to":"b","amount":100},
        {"id":"u2","from":"b","to":"c","amount":100},
        {"id":"u3","from":"c","to":"a","amount":40},
    ]})
    .to_string();
    let (status, answer) = app.post("/v1/transfers/batch", &body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        outcomes(&answer),
        expected(&[
            ("u1", "created", ""),
            ("u2", "created", ""),
            ("u3", "created", "")
        ]),
        "{answer}"
    );
    assert_eq!(
        (
            app.balance("a").await,
            app.balance("b").await,
            app.balance("c").await
        ),
        (940, 0, 60)
    );
    let (status, again) = app.post("/v1/transfers/batch", &body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        outcomes(&again),
        expected(&[
            ("u1", "duplicate", ""),
            ("u2", "duplicate", ""),
            ("u3", "duplicate", "")
        ]),
        "{again}"
    );
    assert_eq!(
        (
            app.balance("a").await,
            app.balance("b").await,
            app.balance("c").await
        ),
        (940, 0, 60)
    );
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_batch_answers_each_transfer_in_order() {
    let app = world().await;
    app.post_ok("/v1/transfers", &transfer("earlier", "a", "b", 5))
        .await;
    let body = json!({"transfers": [
        {"id":"ok-1","from":"a","to":"b","amount":10},
        {"id":"poor","from":"b","to":"a","amount":1000},
        {"id":"mixed","from":"a","to":"eur","amount":1},
        {"id":"ghost","from":"a","to":"nobody","amount":1},
        {"id":"earlier","from":"a","to":"b","amount":5},
        {"id":"earlier","from":"a","to":"b","amount":6},
        {"id":"hold","from":"a","to":"b","amount":7,"pending":true},
        {"id":"ok-2","from":"b","to":"a","amount":15},
    ]})
    .to_string();
    let (status, answer) = app.post("/v1/transfers/batch", &body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        outcomes(&answer),
        expected(&[
            ("ok-1", "created", ""),
            ("poor", "rejected", "insufficient_funds"),
            ("mixed", "rejected", "ledger_mismatch"),
            ("ghost", "rejected", "not_found"),
            ("earlier", "duplicate", ""),
            ("earlier", "conflict", "conflict"),
            ("hold", "created", ""),
            ("ok-2", "created", ""),
        ]),
        "{answer}"
    );
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results[6]["status"], "pending");
    assert_eq!(results[7]["status"], "posted");
    let positions: Vec<u64> = [0, 6, 7]
        .iter()
        .map(|&index| results[index]["position"].as_u64().unwrap())
        .collect();
    assert!(
        positions.windows(2).all(|pair| pair[0] < pair[1]),
        "positions follow the order: {answer}"
    );
    assert_eq!((app.balance("a").await, app.balance("b").await), (1_000, 0));
    assert_eq!(app.account("a").await["debits_pending"], 7);
    let (status, view) = app.get("/v1/transfers/ok-2").await;
    assert_eq!((status, &view["amount"]), (StatusCode::OK, &json!(15)));
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_batch_is_accepted() {
    let app = world().await;
    let count = tally_core::limits::BATCH_TRANSFERS_MAX;
    let transfers: Vec<Value> = (0..count)
        .map(|index| json!({"id": format!("max-{index}"), "from": "a", "to": "b", "amount": 1}))
        .collect();
    for atomic in [false, true] {
        let transfers: Vec<Value> = transfers
            .iter()
            .map(|item| {
                let mut item = item.clone();
                item["id"] = json!(format!("{}-{atomic}", item["id"].as_str().unwrap()));
                item
            })
            .collect();
        let body = json!({"atomic": atomic, "transfers": transfers}).to_string();
        let (status, answer) = app.post("/v1/transfers/batch", &body).await;
        assert_eq!(status, StatusCode::OK);
        let results = answer["results"].as_array().unwrap();
        assert_eq!(results.len(), count);
        // 1,000 funds the first 1,000 transfers of the first batch; the rest are refused.
        let created = results
            .iter()
            .filter(|item| item["outcome"] == "created")
            .count();
        assert_eq!(created, if atomic { 0 } else { 1_000 }, "atomic: {atomic}");
    }
    assert_eq!((app.balance("a").await, app.balance("b").await), (0, 1_000));
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_through_an_account() {
    let app = world().await;
    for index in 0..4 {
        app.post_ok(
            "/v1/transfers",
            &transfer(&format!("t{index}"), "a", "b", 10),
        )
        .await;
    }
    let (status, all) = app.get("/v1/accounts/a/history").await;
    assert_eq!(status, StatusCode::OK, "{all}");
    let entries = all["entries"].as_array().unwrap().clone();
    assert_eq!(entries.len(), 5, "{all}");
    assert_eq!(all["next"], Value::Null, "{all}");
    assert_eq!(
        entries[0].as_object().unwrap().keys().collect::<Vec<_>>(),
        [
            "amount",
            "balance_after",
            "kind",
            "position",
            "side",
            "timestamp",
            "transfer_id"
        ]
    );
    assert_eq!(
        (
            &entries[0]["kind"],
            &entries[0]["side"],
            &entries[0]["balance_after"]
        ),
        (&json!("deposit"), &json!("credit"), &json!(1_000))
    );
    assert_eq!(
        (
            &entries[4]["transfer_id"],
            &entries[4]["side"],
            &entries[4]["balance_after"]
        ),
        (&json!("t3"), &json!("debit"), &json!(960))
    );

    // Page by two: the pages concatenate to the whole history.
    let mut paged = Vec::new();
    let mut after: Option<u64> = None;
    for _ in 0..10 {
        let query = match after {
            Some(after) => format!("?limit=2&after={after}"),
            None => "?limit=2".to_string(),
        };
        let (status, page) = app.get(&format!("/v1/accounts/a/history{query}")).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let page_entries = page["entries"].as_array().unwrap();
        assert!(page_entries.len() <= 2, "{page}");
        paged.extend(page_entries.iter().cloned());
        match page["next"].as_u64() {
            Some(next) => {
                assert_eq!(
                    Some(next),
                    page_entries
                        .last()
                        .and_then(|entry| entry["position"].as_u64()),
                    "{page}"
                );
                after = Some(next);
            }
            None => break,
        }
    }
    assert_eq!(paged, entries);
    let (_, page) = app.get("/v1/accounts/a/history?limit=1").await;
    assert_eq!(page["entries"].as_array().unwrap().len(), 1);
    // A page that ends exactly at the current end has no next page.
    for limit in [5, 1000] {
        let (_, page) = app
            .get(&format!("/v1/accounts/a/history?limit={limit}"))
            .await;
        assert_eq!(
            (page["entries"].as_array().unwrap(), &page["next"]),
            (&entries, &Value::Null)
        );
    }
    // After the last entry there is nothing.
    let last = entries[4]["position"].as_u64().unwrap();
    let (status, page) = app
        .get(&format!("/v1/accounts/a/history?after={last}"))
        .await;
    assert_eq!(
        (status, page),
        (StatusCode::OK, json!({"entries": [], "next": null}))
    );
    // An account without history has an empty page.
    let (status, page) = app.get("/v1/accounts/eur/history").await;
    assert_eq!(
        (status, page),
        (StatusCode::OK, json!({"entries": [], "next": null}))
    );

    for query in ["limit=0", "limit=1001"] {
        let answer = app.get(&format!("/v1/accounts/a/history?{query}")).await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "invalid_request");
    }
    let answer = app.get("/v1/accounts/nobody/history").await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
    let answer = app.get("/v1/transfers/nothing").await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
    app.finish().await;
}
