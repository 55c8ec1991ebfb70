//! Campaigns and claims over HTTP: every error code of the contract, the verification rule,
//! local days in the campaign's zone, and the limits under 64 concurrent claimers.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};
use tally_auth::Scope;
use tower::ServiceExt;

use crate::support::{assert_error, assert_error_body, ManualClock, TestApp};

const NS: u64 = 1_000_000_000;
/// 2030-01-01T00:00:00Z.
const JAN_1_2030: u64 = 1_893_456_000;

fn spec(id: &str, inventory: u64, per_user: u64, daily: u64, starts: &str, ends: &str) -> String {
    json!({
        "id": id, "gift_ledger": "GIFT", "inventory": inventory, "per_user_limit": per_user,
        "daily_limit": daily, "timezone": "Europe/Berlin", "starts_at": starts, "ends_at": ends,
        "verification_account": "ver",
        "delivery": {"primary": ["https://gifts.example.com/deliver"], "connect_timeout_ms": 200,
                     "read_timeout_ms": 1500, "max_read_timeouts": 2, "retry_budget_percent": 10}
    })
    .to_string()
}

fn spring() -> String {
    spec(
        "spring",
        4,
        2,
        3,
        "2030-01-01T00:00:00+01:00",
        "2030-02-01T00:00:00+01:00",
    )
}

async fn claim(app: &TestApp, order: &str, user: &str) -> (StatusCode, Value) {
    app.post(
        "/v1/campaigns/spring/claims",
        &json!({"order_id": order, "user": user}).to_string(),
    )
    .await
}

async fn settle(app: &TestApp, order: &str, state: &str) -> (StatusCode, Value) {
    app.post(
        &format!("/v1/claims/{order}/settle"),
        &json!({"state": state}).to_string(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_is_defined_as_a_draft_checked_by_the_rules_and_stored_once() {
    let app = TestApp::with_auth();
    let (status, campaign) = app.post("/v1/campaigns", &spring()).await;
    assert_eq!(status, StatusCode::CREATED, "{campaign}");
    assert_eq!(campaign["state"], "draft");
    assert_eq!(campaign["verified"], false);
    assert_eq!(campaign["pool_account"], "tally:pool:spring");
    assert_eq!(campaign["available"], 4);
    assert_eq!(campaign["starts_at"], "2029-12-31T23:00:00Z");
    assert_eq!(
        campaign["delivery"]["max_retries"], 3,
        "defaults are written out"
    );
    assert_eq!(
        app.balance("tally:pool:spring").await,
        4,
        "the pool is funded at definition"
    );
    // Nobody but the ledger moves units of the pool.
    let answer = app
        .post(
            "/v1/withdrawals",
            r#"{"id":"w1","account":"tally:pool:spring","amount":1}"#,
        )
        .await;
    assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, "reserved_id");

    let (status, again) = app.post("/v1/campaigns", &spring()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again, campaign);
    assert_eq!(
        app.get("/v1/campaigns/spring").await,
        (StatusCode::OK, campaign)
    );
    let other = spec(
        "spring",
        5,
        2,
        3,
        "2030-01-01T00:00:00+01:00",
        "2030-02-01T00:00:00+01:00",
    );
    assert_error(
        &app.post("/v1/campaigns", &other).await,
        StatusCode::CONFLICT,
        "conflict",
    );
    assert_error(
        &app.get("/v1/campaigns/autumn").await,
        StatusCode::NOT_FOUND,
        "campaign_not_found",
    );

    // Every violation, with its field, rule and fix, as `tally campaign check` reports them.
    let broken = spec(
        "autumn",
        2,
        5,
        3,
        "2030-01-01T00:00:00Z",
        "2029-01-01T00:00:00Z",
    );
    let answer = app.post("/v1/campaigns", &broken).await;
    assert_error(
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "campaign_invalid",
    );
    let rules: Vec<(&str, &str)> = answer.1["error"]["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|violation| {
            assert!(!violation["fix"].as_str().unwrap().is_empty());
            (
                violation["field"].as_str().unwrap(),
                violation["rule"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rules,
        [
            ("inventory", "inventory_below_daily_limit"),
            ("per_user_limit", "per_user_limit_above_daily_limit"),
            ("ends_at", "ends_not_after_start"),
        ]
    );
    let long_id = "c".repeat(118);
    let answer = app
        .post(
            "/v1/campaigns",
            &spec(
                &long_id,
                4,
                2,
                3,
                "2030-01-01T00:00:00Z",
                "2030-02-01T00:00:00Z",
            ),
        )
        .await;
    assert_error(
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "campaign_invalid",
    );
    assert_eq!(answer.1["error"]["violations"][0]["rule"], "id_invalid");
    for malformed in [
        "{}".to_string(),
        "not json".to_string(),
        spring().replace("+01:00", ""),
        spring().replace("\"inventory\"", "\"inventroy\""),
    ] {
        assert_error(
            &app.post("/v1/campaigns", &malformed).await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        );
    }
    // Only administrators define campaigns.
    let writer = format!("Bearer {}", app.issue(&[Scope::Write], &[], &[]));
    let answer = app
        .call_as(Some(&writer), "POST", "/v1/campaigns", Some(&spring()))
        .await;
    assert_error(&answer, StatusCode::FORBIDDEN, "forbidden");
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_follow_the_window_the_limits_and_the_verification_rule() {
    // The day before the campaign opens, in Berlin.
    let clock = ManualClock::at((JAN_1_2030 - 12 * 3600) * NS);
    let app = TestApp::with_auth_at(Arc::clone(&clock));
    app.post_ok("/v1/campaigns", &spring()).await;
    app.open_account("eve", "EUR", false).await;

    assert_error(
        &claim(&app, "o1", "alice").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "campaign_not_live",
    );
    assert_error(
        &publish(&app).await,
        StatusCode::CONFLICT,
        "campaign_not_verified",
    );

    // The verification account claims before the start, while the campaign is a draft.
    let (status, verification) = claim(&app, "v1", "ver").await;
    assert_eq!(status, StatusCode::CREATED, "{verification}");
    assert_eq!(verification["state"], "pending_delivery");
    assert_eq!(verification["campaign"], "spring");
    assert_eq!(verification["user"], "ver");
    assert_eq!(verification["attempts"], 0);
    assert_eq!(
        verification["day"], "2030-01-01",
        "counted on the first day"
    );
    let (status, looked_up) = app.get("/v1/claims/v1").await;
    assert_eq!((status, &looked_up), (StatusCode::OK, &verification));
    assert_error(
        &publish(&app).await,
        StatusCode::CONFLICT,
        "campaign_not_verified",
    );
    let (status, delivered) = settle(&app, "v1", "delivered").await;
    assert_eq!(
        (status, &delivered["state"]),
        (StatusCode::CREATED, &json!("delivered"))
    );
    assert_eq!(settle(&app, "v1", "delivered").await.0, StatusCode::OK);
    assert_error(
        &settle(&app, "v1", "voided").await,
        StatusCode::CONFLICT,
        "claim_already_settled",
    );
    assert_error(
        &settle(&app, "v1", "pending_delivery").await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    assert_error(
        &settle(&app, "nope", "voided").await,
        StatusCode::NOT_FOUND,
        "claim_not_found",
    );
    assert_eq!(app.balance("ver").await, 1);

    let (status, live) = publish(&app).await;
    assert_eq!(
        (status, &live["state"], &live["verified"]),
        (StatusCode::OK, &json!("live"), &json!(true))
    );
    assert_eq!(
        publish(&app).await.0,
        StatusCode::OK,
        "publishing twice changes nothing"
    );
    assert_error(
        &claim(&app, "o1", "alice").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "campaign_not_started",
    );

    // 2030-01-01T22:30Z is 23:30 in Berlin: still the first day, which holds v1 already.
    clock.set((JAN_1_2030 + 22 * 3600 + 1800) * NS);
    let (status, first) = claim(&app, "o1", "alice").await;
    assert_eq!(
        (status, &first["day"]),
        (StatusCode::CREATED, &json!("2030-01-01"))
    );
    assert_eq!(
        claim(&app, "o1", "alice").await,
        (StatusCode::OK, first),
        "the same order, the same claim"
    );
    assert_error(
        &claim(&app, "o1", "bob").await,
        StatusCode::CONFLICT,
        "conflict",
    );
    assert_eq!(claim(&app, "o2", "alice").await.0, StatusCode::CREATED);
    assert_error(
        &claim(&app, "o3", "alice").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "per_user_limit_reached",
    );
    assert_error(
        &claim(&app, "o4", "bob").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "daily_limit_reached",
    );
    assert_error(
        &claim(&app, "o5", "eve").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "ledger_mismatch",
    );
    assert_error(
        &claim(&app, "o5", "tally:pool:spring").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "reserved_id",
    );
    // A voided claim gives its unit back and stops counting.
    assert_eq!(settle(&app, "o2", "voided").await.0, StatusCode::CREATED);
    assert_eq!(claim(&app, "o4", "bob").await.0, StatusCode::CREATED);

    // 23:00Z is midnight in Berlin: a new day.
    clock.set((JAN_1_2030 + 23 * 3600) * NS);
    let (status, next_day) = claim(&app, "o6", "bob").await;
    assert_eq!(
        (status, &next_day["day"]),
        (StatusCode::CREATED, &json!("2030-01-02"))
    );
    assert_error(
        &claim(&app, "o7", "carol").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "inventory_exhausted",
    );
    assert_eq!(app.account("tally:pool:spring").await["debits_pending"], 3);
    assert_eq!(
        settle(&app, "o1", "unknown_needs_reconciliation").await.1["state"],
        "unknown_needs_reconciliation"
    );

    clock.set((JAN_1_2030 + 40 * 86_400) * NS);
    assert_error(
        &claim(&app, "o8", "carol").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "campaign_ended",
    );
    assert_error(
        &app.post(
            "/v1/campaigns/autumn/claims",
            r#"{"order_id":"o9","user":"carol"}"#,
        )
        .await,
        StatusCode::NOT_FOUND,
        "campaign_not_found",
    );
    assert_error(
        &app.get("/v1/claims/o9").await,
        StatusCode::NOT_FOUND,
        "claim_not_found",
    );

    // Claiming is a write; settling is an administrator's.
    let writer = format!("Bearer {}", app.issue(&[Scope::Write], &[], &[]));
    let answer = app
        .call_as(
            Some(&writer),
            "POST",
            "/v1/claims/o1/settle",
            Some(r#"{"state":"voided"}"#),
        )
        .await;
    assert_error(&answer, StatusCode::FORBIDDEN, "forbidden");
    let answer = app
        .call_as(
            Some(&writer),
            "POST",
            "/v1/campaigns/spring/claims",
            Some(r#"{"order_id":"o1","user":"alice"}"#),
        )
        .await;
    assert_eq!(answer.0, StatusCode::OK, "{}", answer.1);

    // A token limited to some accounts reads its users' claims, and no whole campaign.
    let alice = format!(
        "Bearer {}",
        app.issue(&[Scope::Read], &["GIFT"], &["alice"])
    );
    assert_eq!(
        app.call_as(Some(&alice), "GET", "/v1/claims/o1", None)
            .await
            .0,
        StatusCode::OK
    );
    let answer = app
        .call_as(Some(&alice), "GET", "/v1/claims/o4", None)
        .await;
    assert_error(&answer, StatusCode::FORBIDDEN, "forbidden");
    let answer = app
        .call_as(Some(&alice), "GET", "/v1/campaigns/spring", None)
        .await;
    assert_error(&answer, StatusCode::FORBIDDEN, "forbidden");
    let euro = format!("Bearer {}", app.issue(&[Scope::Write], &["EUR"], &[]));
    let answer = app
        .call_as(
            Some(&euro),
            "POST",
            "/v1/campaigns/spring/claims",
            Some(r#"{"order_id":"o10","user":"dave"}"#),
        )
        .await;
    assert_error(&answer, StatusCode::FORBIDDEN, "forbidden");
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limits_hold_under_64_concurrent_claimers_over_http() {
    let app = TestApp::new();
    let open = spec(
        "rush",
        1000,
        3,
        40,
        "2020-01-01T00:00:00Z",
        "2200-01-01T00:00:00Z",
    );
    app.post_ok("/v1/campaigns", &open).await;
    app.post_ok(
        "/v1/campaigns/rush/claims",
        r#"{"order_id":"v","user":"ver"}"#,
    )
    .await;
    app.post_ok("/v1/claims/v/settle", r#"{"state":"delivered"}"#)
        .await;
    app.post_ok("/v1/campaigns/rush/publish", "").await;

    let claimers = (0..64).map(|claimer| {
        let router = app.router.clone();
        tokio::spawn(async move {
            let mut answers = Vec::new();
            for round in 0..6 {
                let user = format!("u{}", claimer % 24);
                let body = json!({"order_id": format!("o{claimer}-{round}"), "user": user});
                let request = Request::post("/v1/campaigns/rush/claims")
                    .body(Body::from(body.to_string()))
                    .unwrap();
                let response = router.clone().oneshot(request).await.unwrap();
                let status = response.status();
                let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
                    .await
                    .unwrap();
                answers.push((
                    user,
                    status,
                    serde_json::from_slice::<Value>(&bytes).unwrap(),
                ));
            }
            answers
        })
    });
    let mut per_user: HashMap<String, u64> = HashMap::new();
    let mut per_day: HashMap<String, u64> = HashMap::new();
    let mut refused = 0;
    for claimer in claimers {
        for (user, status, json) in claimer.await.unwrap() {
            match status {
                StatusCode::CREATED => {
                    assert_eq!(json["user"], user.as_str());
                    *per_user.entry(user).or_insert(0) += 1;
                    *per_day
                        .entry(json["day"].as_str().unwrap().to_string())
                        .or_insert(0) += 1;
                }
                StatusCode::UNPROCESSABLE_ENTITY => {
                    assert_error_body(&json);
                    let code = json["error"]["code"].as_str().unwrap();
                    assert!(
                        ["per_user_limit_reached", "daily_limit_reached"].contains(&code),
                        "{json}"
                    );
                    refused += 1;
                }
                other => panic!("unexpected {other}: {json}"),
            }
        }
    }
    let (_, verification) = app.get("/v1/claims/v").await;
    *per_day
        .entry(verification["day"].as_str().unwrap().to_string())
        .or_insert(0) += 1;
    assert!(per_user.values().all(|count| *count <= 3), "{per_user:?}");
    assert!(per_day.values().all(|count| *count <= 40), "{per_day:?}");
    let accepted: u64 = per_user.values().sum();
    assert_eq!(accepted + refused, 64 * 6);
    if per_day.len() == 1 {
        assert_eq!(accepted + 1, 40, "the day's limit is reached exactly");
    }
    let pool = app.account("tally:pool:rush").await;
    assert_eq!(pool["debits_pending"], accepted);
    app.finish().await;
}

async fn publish(app: &TestApp) -> (StatusCode, Value) {
    app.post("/v1/campaigns/spring/publish", "").await
}
