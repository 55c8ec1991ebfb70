//! Property tests: whatever bytes or JSON arrive at the write endpoints, the answer is never a
//! 5xx, and every 4xx carries the JSON error body.

use axum::http::StatusCode;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Map, Value};

use crate::support::{assert_error_body, TestApp};

const CASES: u32 = 64;

const PATHS: &[&str] = &[
    "/v1/transfers",
    "/v1/transfers/batch",
    "/v1/deposits",
    "/v1/withdrawals",
    "/v1/accounts",
    "/v1/transfers/p/post",
    "/v1/transfers/p/void",
];

const FIELDS: &[&str] = &[
    "id",
    "from",
    "to",
    "amount",
    "pending",
    "timeout_s",
    "transfers",
    "atomic",
    "account",
    "ledger",
    "allow_overdraft",
];

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (0u64..2_000).prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::String),
        "[a-c]".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(field_name(), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(FIELDS).prop_map(str::to_string),
        1 => "\\PC{0,8}",
    ]
}

/// A transfer that is often valid, often nearly so: each field present or not, with a good
/// value or an arbitrary one.
fn near_transfer() -> impl Strategy<Value = Value> {
    let id = prop_oneof![3 => "[a-e]{1,3}".prop_map(Value::String), 1 => any_json()];
    let account = prop_oneof![3 => "[a-c]|eur".prop_map(Value::String), 1 => any_json()];
    let amount = prop_oneof![3 => (0u64..1_500).prop_map(Value::from), 1 => any::<u64>().prop_map(Value::from), 1 => any_json()];
    let flag = prop_oneof![3 => any::<bool>().prop_map(Value::Bool), 1 => any_json()];
    let timeout = prop_oneof![3 => (0u32..3).prop_map(Value::from), 1 => any_json()];
    (
        proptest::option::weighted(0.95, id),
        proptest::option::weighted(0.95, account.clone()),
        proptest::option::weighted(0.95, account),
        proptest::option::weighted(0.95, amount),
        proptest::option::weighted(0.3, flag),
        proptest::option::weighted(0.2, timeout),
    )
        .prop_map(|(id, from, to, amount, pending, timeout_s)| {
            let mut object = Map::new();
            for (name, value) in [
                ("id", id),
                ("from", from),
                ("to", to),
                ("amount", amount),
                ("pending", pending),
                ("timeout_s", timeout_s),
            ] {
                if let Some(value) = value {
                    object.insert(name.to_string(), value);
                }
            }
            Value::Object(object)
        })
}

fn near_batch() -> impl Strategy<Value = Value> {
    (
        vec(near_transfer(), 0..6),
        proptest::option::of(any::<bool>()),
    )
        .prop_map(|(transfers, atomic)| match atomic {
            Some(atomic) => json!({"transfers": transfers, "atomic": atomic}),
            None => json!({"transfers": transfers}),
        })
}

/// Valid bodies with one byte replaced, or cut short.
fn mangled() -> impl Strategy<Value = Vec<u8>> {
    let valid = prop_oneof![
        Just(r#"{"id":"m","from":"a","to":"b","amount":1}"#),
        Just(r#"{"transfers":[{"id":"m","from":"a","to":"b","amount":1}],"atomic":true}"#),
        Just(r#"{"id":"m","account":"a","amount":1}"#),
    ];
    (
        valid,
        any::<prop::sample::Index>(),
        any::<u8>(),
        any::<bool>(),
    )
        .prop_map(|(valid, index, byte, cut)| {
            let mut bytes = valid.as_bytes().to_vec();
            let index = index.index(bytes.len());
            if cut {
                bytes.truncate(index);
            } else {
                bytes[index] = byte;
            }
            bytes
        })
}

fn any_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..256),
        mangled(),
        any_json().prop_map(|value| value.to_string().into_bytes()),
        near_transfer().prop_map(|value| value.to_string().into_bytes()),
        near_batch().prop_map(|value| value.to_string().into_bytes()),
    ]
}

async fn check(app: &TestApp, path: &str, body: Vec<u8>) -> Result<(), TestCaseError> {
    let shown = String::from_utf8_lossy(&body).into_owned();
    let reply = app.send("POST", path, body).await;
    prop_assert!(
        !reply.status.is_server_error(),
        "POST {} {:?}: {} {:?}",
        path,
        shown,
        reply.status,
        String::from_utf8_lossy(&reply.body)
    );
    let json: Value = serde_json::from_slice(&reply.body).map_err(|error| {
        TestCaseError::fail(format!("POST {path} {shown:?}: not JSON: {error}"))
    })?;
    if reply.status.is_client_error() {
        assert_error_body(&json);
        prop_assert_ne!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    } else {
        prop_assert!(
            reply.status.is_success(),
            "POST {} {:?}: {}",
            path,
            shown,
            reply.status
        );
    }
    Ok(())
}

#[test]
fn arbitrary_bodies_never_get_a_server_error() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let app = runtime.block_on(async {
        let app = TestApp::new();
        app.open_account("a", "USD", false).await;
        app.open_account("b", "USD", true).await;
        app.open_account("c", "USD", false).await;
        app.open_account("eur", "EUR", false).await;
        app.deposit("fund", "a", 1_000).await;
        app.post_ok(
            "/v1/transfers",
            r#"{"id":"p","from":"a","to":"b","amount":100,"pending":true}"#,
        )
        .await;
        app
    });
    let config = Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    };
    for path in PATHS {
        let mut runner = TestRunner::new(config.clone());
        let result = runner.run(&any_body(), |body| {
            runtime.block_on(check(&app, path, body))
        });
        if let Err(error) = result {
            panic!("POST {path}: {error}");
        }
    }
    // Whatever was applied, every account still agrees with its own debits and credits.
    runtime.block_on(async {
        for id in ["a", "b", "c", "eur"] {
            // Typed, not `serde_json::Value`: a balance beyond 64 bits (an arbitrary body may
            // deposit up to `u64::MAX`) would come back from `Value` as a float.
            #[derive(serde::Deserialize, Debug)]
            struct Totals {
                balance: i128,
                credits: u64,
                debits: u64,
            }
            let reply = app
                .send("GET", &format!("/v1/accounts/{id}"), String::new())
                .await;
            assert_eq!(reply.status, StatusCode::OK, "GET account {id}");
            let totals: Totals = serde_json::from_slice(&reply.body).expect("an account");
            assert_eq!(
                totals.balance,
                i128::from(totals.credits) - i128::from(totals.debits),
                "{totals:?}"
            );
        }
        app.finish().await;
    });
}
