//! Ledger totals and daily summaries: `GET /v1/ledgers/{code}` and `/v1/ledgers/{code}/daily`.

use axum::http::StatusCode;
use serde_json::{json, Value};
use tally_auth::Scope;

use crate::support::{assert_error, ManualClock, TestApp};

/// 2026-03-10T12:00:00Z, in nanoseconds.
const MARCH_10_NOON_NS: u64 = 1_773_144_000 * 1_000_000_000;
const DAY_NS: u64 = 86_400 * 1_000_000_000;

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn transfer(app: &TestApp, id: &str, from: &str, to: &str, amount: u64) -> Value {
    let body = json!({"id": id, "from": from, "to": to, "amount": amount});
    app.post_ok("/v1/transfers", &body.to_string()).await
}

async fn reserve(app: &TestApp, id: &str, from: &str, to: &str, amount: u64, timeout_s: u32) {
    let body = json!({"id": id, "from": from, "to": to, "amount": amount, "pending": true, "timeout_s": timeout_s});
    app.post_ok("/v1/transfers", &body.to_string()).await;
}

async fn withdraw(app: &TestApp, id: &str, account: &str, amount: u64) -> StatusCode {
    let body = json!({"id": id, "account": account, "amount": amount});
    app.post("/v1/withdrawals", &body.to_string()).await.0
}

/// The ledger's totals; asserts a 200.
async fn totals(app: &TestApp, code: &str) -> Value {
    let (status, json) = app.get(&format!("/v1/ledgers/{code}")).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    json
}

/// A page of the ledger's days; asserts a 200 and the answer's shape.
async fn daily(app: &TestApp, code: &str, query: &str) -> Value {
    let (status, json) = app.get(&format!("/v1/ledgers/{code}/daily{query}")).await;
    assert_eq!(status, StatusCode::OK, "{query}: {json}");
    let object = json.as_object().unwrap();
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["days", "ledger", "next"], "{json}");
    assert_eq!(json["ledger"], code);
    json
}

/// Two ledgers over two UTC days (2026-03-10 and 11): deposits, withdrawals (one refused), a
/// transfer, and pending transfers that are posted in part, voided, expired and left open.
async fn scripted() -> (TestApp, std::sync::Arc<ManualClock>) {
    let clock = ManualClock::at(MARCH_10_NOON_NS);
    let app = TestApp::with_auth_at(clock.clone());
    for (id, ledger) in [("a", "USD"), ("b", "USD"), ("c", "USD"), ("e", "EUR")] {
        app.open_account(id, ledger, false).await;
    }
    app.deposit("d1", "a", 100).await;
    app.deposit("d2", "b", 50).await;
    assert_eq!(withdraw(&app, "w1", "b", 20).await, StatusCode::CREATED);
    assert_eq!(
        withdraw(&app, "w2", "a", 1_000).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "refused: counts nowhere"
    );
    transfer(&app, "t1", "a", "b", 30).await;
    app.deposit("de", "e", 7).await;
    reserve(&app, "p1", "a", "b", 40, 0).await;
    reserve(&app, "p2", "a", "b", 10, 0).await;
    reserve(&app, "p3", "b", "a", 5, 60).await;
    (app, clock)
}

/// The second day of [`scripted`]: p3 expires, p1 is posted in part, p2 voided, p4 left open.
async fn second_day(app: &TestApp, clock: &ManualClock) {
    clock.set(MARCH_10_NOON_NS + DAY_NS);
    app.post_ok("/v1/transfers/p1/post", r#"{"id":"x1","amount":25}"#)
        .await;
    app.post_ok("/v1/transfers/p2/void", r#"{"id":"v1"}"#).await;
    transfer(app, "t2", "b", "c", 5).await;
    reserve(app, "p4", "a", "c", 3, 0).await;
}

/// The balances of `accounts` sum to what the ledger's totals say was deposited less withdrawn.
async fn assert_balances_sum(app: &TestApp, accounts: &[&str], totals: &Value) {
    let mut sum = 0;
    for account in accounts {
        sum += app.balance(account).await;
    }
    let net = totals["deposited"].as_i64().unwrap() - totals["withdrawn"].as_i64().unwrap();
    assert_eq!(sum, net, "balances of {accounts:?} against {totals}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totals_count_what_posted_value() {
    let (app, clock) = scripted().await;
    let usd = totals(&app, "USD").await;
    assert_eq!(
        usd,
        json!({"ledger": "USD", "accounts": 3, "transfers": 4, "volume": 200, "deposited": 150,
               "withdrawn": 20, "pending": 3, "pending_amount": 55})
    );
    assert_balances_sum(&app, &["a", "b", "c"], &usd).await;

    second_day(&app, &clock).await;
    assert_eq!(
        app.get("/v1/transfers/p3").await.1["status"],
        "expired",
        "p3 expired on the second day"
    );
    let usd = totals(&app, "USD").await;
    // The partial post counts once, with the 25 it posted; the void and the expiry do not.
    assert_eq!(
        usd,
        json!({"ledger": "USD", "accounts": 3, "transfers": 6, "volume": 230, "deposited": 150,
               "withdrawn": 20, "pending": 1, "pending_amount": 3})
    );
    assert_balances_sum(&app, &["a", "b", "c"], &usd).await;
    let eur = totals(&app, "EUR").await;
    assert_eq!(
        eur,
        json!({"ledger": "EUR", "accounts": 1, "transfers": 1, "volume": 7, "deposited": 7,
               "withdrawn": 0, "pending": 0, "pending_amount": 0})
    );
    assert_balances_sum(&app, &["e"], &eur).await;

    assert_eq!(
        daily(&app, "USD", "").await,
        json!({"ledger": "USD", "days": [
            {"date": "2026-03-10", "transfers": 4, "volume": 200},
            {"date": "2026-03-11", "transfers": 2, "volume": 30},
        ], "next": null})
    );
    assert_eq!(
        daily(&app, "EUR", "").await["days"],
        json!([{"date": "2026-03-10", "transfers": 1, "volume": 7}])
    );

    // A write is in the next read (read-your-writes), and a new account counts.
    app.open_account("d", "USD", false).await;
    app.deposit("d3", "d", 1).await;
    let usd = totals(&app, "USD").await;
    assert_eq!(
        (&usd["accounts"], &usd["transfers"]),
        (&json!(4), &json!(7))
    );
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_pages_by_date() {
    let clock = ManualClock::at(MARCH_10_NOON_NS);
    let app = TestApp::with_auth_at(clock.clone());
    app.open_account("a", "USD", false).await;
    // One deposit of `day + 1` on each of 40 days, every other day from 2026-03-10 on.
    let mut dates = Vec::new();
    for day in 0..40u64 {
        clock.set(MARCH_10_NOON_NS + 2 * day * DAY_NS);
        let deposit = app
            .post_ok(
                "/v1/deposits",
                &json!({"id": format!("d{day}"), "account": "a", "amount": day + 1}).to_string(),
            )
            .await;
        let date = deposit["timestamp"].as_str().unwrap()[..10].to_owned();
        dates.push(date);
    }
    assert_eq!(dates[0], "2026-03-10");
    assert_eq!(dates[1], "2026-03-12");
    assert_eq!(dates[39], "2026-05-27");
    let expected: Vec<Value> = dates
        .iter()
        .enumerate()
        .map(|(day, date)| json!({"date": date, "transfers": 1, "volume": day + 1}))
        .collect();

    // The default page is 31 days; `next` is the first day of the next page.
    let page = daily(&app, "USD", "").await;
    assert_eq!(page["days"], json!(expected[..31]));
    assert_eq!(page["next"], dates[31].as_str());
    let page = daily(&app, "USD", &format!("?from={}", dates[31])).await;
    assert_eq!(page["days"], json!(expected[31..]));
    assert_eq!(page["next"], Value::Null);
    assert_eq!(
        daily(&app, "USD", "?limit=366").await["days"],
        json!(expected)
    );

    // Following `next` with small pages visits every day once.
    for limit in [1, 3, 7] {
        let mut seen = Vec::new();
        let mut query = format!("?limit={limit}");
        loop {
            let page = daily(&app, "USD", &query).await;
            let days = page["days"].as_array().unwrap();
            assert!(days.len() <= limit);
            seen.extend(days.iter().cloned());
            match page["next"].as_str() {
                Some(next) => query = format!("?limit={limit}&from={next}"),
                None => break,
            }
        }
        assert_eq!(seen, expected, "pages of {limit}");
    }

    // `from` and `to` are inclusive; days between rows have none.
    let page = daily(&app, "USD", "?from=2026-03-11&to=2026-03-14").await;
    assert_eq!(page["days"], json!(expected[1..3]));
    assert_eq!(page["next"], Value::Null);
    let page = daily(&app, "USD", "?from=2026-03-12&to=2026-03-12").await;
    assert_eq!(page["days"], json!(expected[1..2]));
    let page = daily(&app, "USD", "?from=2026-03-11&to=2026-03-11").await;
    assert_eq!(page["days"], json!([]));
    let page = daily(&app, "USD", "?to=2026-03-12&limit=1").await;
    assert_eq!(page["days"], json!(expected[..1]));
    assert_eq!(page["next"], "2026-03-12");
    let page = daily(&app, "USD", "?to=2026-03-11&limit=1").await;
    assert_eq!(page["next"], Value::Null, "nothing more up to `to`");
    // Ranges before the first day or after the last are empty, not errors.
    for query in [
        "?to=2026-03-09",
        "?from=2027-01-01",
        "?from=0001-01-01&to=1969-12-31",
    ] {
        let page = daily(&app, "USD", query).await;
        assert_eq!(page["days"], json!([]), "{query}");
        assert_eq!(page["next"], Value::Null, "{query}");
    }
    assert_eq!(
        daily(&app, "USD", "?from=0000-01-01&to=9999-12-31&limit=366").await["days"],
        json!(expected)
    );
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restricted_tokens_read_only_their_ledgers() {
    let (app, _clock) = scripted().await;
    let usd = bearer(&app.issue(&[Scope::Read], &["USD"], &[]));
    let only_a = bearer(&app.issue(&[Scope::Read], &[], &["a"]));
    let writer = bearer(&app.issue(&[Scope::Write], &[], &[]));
    let reader = bearer(&app.issue(&[Scope::Read], &[], &[]));
    let get = |authorization: &str, path: &str| {
        let authorization = authorization.to_owned();
        let path = path.to_owned();
        let app = &app;
        async move { app.call_as(Some(&authorization), "GET", &path, None).await }
    };

    for route in ["/v1/ledgers/USD", "/v1/ledgers/USD/daily"] {
        assert_eq!(get(&usd, route).await.0, StatusCode::OK, "{route}");
        assert_eq!(get(&reader, route).await.0, StatusCode::OK, "{route}");
        // Ledger-wide figures go beyond the accounts of an account-restricted token.
        assert_error(
            &get(&only_a, route).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
        // Reading needs the read scope.
        assert_error(
            &get(&writer, route).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
        // Without a token, nothing.
        assert_error(
            &app.call_as(None, "GET", route, None).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
    }
    for route in [
        "/v1/ledgers/EUR",
        "/v1/ledgers/EUR/daily",
        // Outside the restriction, an unknown ledger is refused, not found: a restricted
        // token learns nothing of which ledgers exist.
        "/v1/ledgers/GBP",
        "/v1/ledgers/GBP/daily?from=2026-01-01",
    ] {
        assert_error(&get(&usd, route).await, StatusCode::FORBIDDEN, "forbidden");
        assert_error(
            &get(&only_a, route).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
    }
    assert_error(
        &get(&reader, "/v1/ledgers/GBP").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_400_naming_the_parameter() {
    let (app, _clock) = scripted().await;
    let position = app.durable_position();
    let too_long = "L".repeat(33);
    for (path, field) in [
        ("/v1/ledgers/US%20D".to_owned(), "code:"),
        (format!("/v1/ledgers/{too_long}"), "code:"),
        ("/v1/ledgers/%C3%A9/daily".to_owned(), "code:"),
        (format!("/v1/ledgers/{too_long}/daily"), "code:"),
        ("/v1/ledgers/USD/daily?from=2026-13-01".to_owned(), "from:"),
        ("/v1/ledgers/USD/daily?from=2026-02-29".to_owned(), "from:"),
        ("/v1/ledgers/USD/daily?from=2026-3-1".to_owned(), "from:"),
        ("/v1/ledgers/USD/daily?from=".to_owned(), "from:"),
        (
            "/v1/ledgers/USD/daily?from=2026-03-10T00:00:00Z".to_owned(),
            "from:",
        ),
        ("/v1/ledgers/USD/daily?to=yesterday".to_owned(), "to:"),
        ("/v1/ledgers/USD/daily?to=%00".to_owned(), "to:"),
        (
            "/v1/ledgers/USD/daily?from=2026-03-11&to=2026-03-10".to_owned(),
            "from:",
        ),
        ("/v1/ledgers/USD/daily?limit=0".to_owned(), "limit:"),
        ("/v1/ledgers/USD/daily?limit=367".to_owned(), "limit:"),
        ("/v1/ledgers/USD/daily?limit=-1".to_owned(), "limit"),
        ("/v1/ledgers/USD/daily?limit=x".to_owned(), "limit"),
        ("/v1/ledgers/USD/daily?limit=4294967296".to_owned(), "limit"),
        ("/v1/ledgers/USD/daily?page=2".to_owned(), "page"),
    ] {
        let answer = app.get(&path).await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "invalid_request");
        let message = answer.1["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{path}: {message}");
    }
    // A malformed query of an unknown ledger is still malformed.
    assert_error(
        &app.get("/v1/ledgers/GBP/daily?limit=0").await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    for path in [
        "/v1/ledgers/GBP",
        "/v1/ledgers/GBP/daily",
        "/v1/ledgers/GBP/daily?from=2026-03-10&to=2026-03-10&limit=1",
        "/v1/ledgers/usd",
        &format!("/v1/ledgers/{}", "L".repeat(32)),
    ] {
        assert_error(&app.get(path).await, StatusCode::NOT_FOUND, "not_found");
    }
    // Other methods are not allowed.
    let answer = app.post("/v1/ledgers/USD", "{}").await;
    assert_error(
        &answer,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
    assert_eq!(app.durable_position(), position, "reads write nothing");
    app.finish().await;
}

/// The document gives schemathesis what it needs to send only well-formed dates and limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_bounds_every_parameter() {
    let app = TestApp::new();
    let (_, document) = app.get("/v1/openapi.json").await;
    let parameters = &document["paths"]["/v1/ledgers/{code}/daily"]["get"]["parameters"];
    let schema = |name: &str| {
        parameters
            .as_array()
            .unwrap()
            .iter()
            .find(|parameter| parameter["name"] == name)
            .unwrap_or_else(|| panic!("no parameter {name}"))["schema"]
            .clone()
    };
    for date in ["from", "to"] {
        assert_eq!(schema(date)["format"], "date");
        assert_eq!(schema(date)["pattern"], "^[0-9]{4}-[0-9]{2}-[0-9]{2}$");
    }
    assert_eq!(schema("limit")["minimum"], 1);
    assert_eq!(
        schema("limit")["maximum"],
        tally_server::limits::DAILY_PAGE_MAX
    );
    assert_eq!(schema("code")["maxLength"], 32);
    let volume = &document["components"]["schemas"]["LedgerJson"]["properties"]["volume"];
    assert_eq!(volume["format"], "uint64", "{volume}");
    app.finish().await;
}
