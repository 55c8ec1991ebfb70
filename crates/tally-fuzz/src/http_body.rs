//! Target `http_body`: request bodies of every POST route, through the real router.
//!
//! Input: one byte choosing the route ([`ROUTES`], modulo their number), then the body. For the
//! routes with an `{id}` in their path, the bytes up to the first newline are that id
//! (percent-encoded into the path, so any bytes reach the router) and the rest is the body.
//!
//! The router runs in-process (`tower::ServiceExt::oneshot`, no socket) over a real engine on
//! in-memory storage, without authentication, holding a few accounts and an open pending
//! transfers so that well-formed bodies reach the ledger rules. Promises checked: no panic and no
//! 5xx; the status is one the OpenAPI document lists for the route; an error is
//! `{"error":{"code","message"}}` with the code its status stands for; a batch answers one
//! result per transfer.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::Value;
use tally_engine::{Engine, EngineConfig};
use tally_log::MemStorage;
use tally_read::ReadModel;
use tally_server::{AppParts, AppState, ReadSlot, ServerMetrics};
use tower::ServiceExt;

use crate::Reached;

/// The POST routes, as the OpenAPI document names them.
pub const ROUTES: [&str; 8] = [
    "/v1/accounts",
    "/v1/deposits",
    "/v1/withdrawals",
    "/v1/transfers",
    "/v1/transfers/batch",
    "/v1/transfers/{id}/post",
    "/v1/transfers/{id}/void",
    "/v1/revocations",
];

/// What the fixture holds before the first input, in the API's own words.
const SETUP: [(&str, &str); 8] = [
    ("/v1/accounts", r#"{"id":"a","ledger":"USD"}"#),
    ("/v1/accounts", r#"{"id":"b","ledger":"USD"}"#),
    ("/v1/accounts", r#"{"id":"c","ledger":"EUR"}"#),
    (
        "/v1/accounts",
        r#"{"id":"o","ledger":"USD","allow_overdraft":true}"#,
    ),
    (
        "/v1/deposits",
        r#"{"id":"d1","account":"a","amount":1000000}"#,
    ),
    (
        "/v1/deposits",
        r#"{"id":"d2","account":"c","amount":1000000}"#,
    ),
    (
        "/v1/transfers",
        r#"{"id":"p1","from":"a","to":"b","amount":10,"pending":true}"#,
    ),
    (
        "/v1/transfers",
        r#"{"id":"p2","from":"a","to":"b","amount":10,"pending":true}"#,
    ),
];

struct Fixture {
    runtime: tokio::runtime::Runtime,
    router: Router,
    /// The statuses the OpenAPI document lists for each of [`ROUTES`], in that order.
    documented: Vec<Vec<u16>>,
    // Held so that the engine and the projector keep running for the whole fuzz run.
    _engine: Engine,
    _read: ReadModel,
}

/// Runs one input; panics if the HTTP layer breaks a promise.
pub fn run(data: &[u8]) -> Reached {
    let Some((&selector, rest)) = data.split_first() else {
        return Reached::Refused;
    };
    let fixture = fixture();
    let index = usize::from(selector) % ROUTES.len();
    let route = ROUTES[index];
    let (path, body) = match route.split_once("{id}") {
        Some((before, after)) => {
            let (id, body) = match rest.iter().position(|&byte| byte == b'\n') {
                Some(newline) => (&rest[..newline], &rest[newline + 1..]),
                None => (rest, &[][..]),
            };
            (format!("{before}{}{after}", percent_encode(id)), body)
        }
        None => (route.to_string(), rest),
    };
    let (status, answer) = fixture.post(&path, body.to_vec());
    assert!(
        !status.is_server_error(),
        "POST {path} answered {status}: {answer}"
    );
    assert!(
        fixture.documented[index].contains(&status.as_u16()),
        "POST {path} answered {status}, which the OpenAPI document does not list for {route}: {answer}"
    );
    if status.is_client_error() {
        check_error(status, &answer);
        return Reached::Refused;
    }
    if route == "/v1/transfers/batch" {
        let request: Value = serde_json::from_slice(body).expect("an accepted body is JSON");
        assert_eq!(
            answer["results"].as_array().map(Vec::len),
            request["transfers"].as_array().map(Vec::len),
            "one result per transfer: {answer}"
        );
    }
    Reached::Accepted
}

/// An error body is exactly `{"error":{"code","message","request_id"}}`, with the code of its
/// status.
fn check_error(status: StatusCode, answer: &Value) {
    let error = &answer["error"];
    assert_eq!(
        answer.as_object().map(|object| object.len()),
        Some(1),
        "{answer}"
    );
    assert_eq!(
        error.as_object().map(|object| object.len()),
        Some(3),
        "{answer}"
    );
    assert!(
        error["request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "{answer}"
    );
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|text| !text.is_empty()),
        "{answer}"
    );
    let code = error["code"].as_str().unwrap_or_default();
    let expected: &[&str] = match status {
        StatusCode::BAD_REQUEST => &["invalid_request"],
        StatusCode::NOT_FOUND => &["not_found"],
        StatusCode::CONFLICT => &["conflict"],
        StatusCode::PAYLOAD_TOO_LARGE => &["payload_too_large"],
        StatusCode::UNPROCESSABLE_ENTITY => &[
            "reserved_id",
            "insufficient_funds",
            "ledger_mismatch",
            "already_resolved",
            "not_pending",
            "exceeds_pending_amount",
            "overflow",
            "linked_failed",
        ],
        _ => &[],
    };
    assert!(
        expected.contains(&code),
        "{status} with code {code:?}: {answer}"
    );
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(Fixture::start)
}

impl Fixture {
    fn start() -> Fixture {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("start a tokio runtime");
        let mut config = EngineConfig::new(PathBuf::from("/fuzz"));
        // Snapshots would only copy the growing state around in memory.
        config.snapshot_interval_events = 0;
        let opened = Engine::open_in(Arc::new(MemStorage::new()), config).expect("open the engine");
        let feed = tally_server::feed::Feed::new(opened.feed.reader.another());
        let read = start_read_model(opened.feed.reader, opened.feed.durable);
        let engine = opened.engine;
        let read_slot = ReadSlot::ready(read.clone());
        // The status hub only reads its file here (there is none under /fuzz); nothing saves it.
        let status = tally_server::status::StatusHub::open(
            Path::new("/fuzz"),
            tally_server::status::StatusConfig::default(),
        )
        .expect("open the status figures");
        let state = AppState::new(AppParts {
            engine: engine.handle(),
            metrics: Arc::new(ServerMetrics::new(
                &engine.handle(),
                &read_slot,
                &tally_offline::OfflineExecutor::default(),
            )),
            read: read_slot,
            auth: tally_server::auth::Auth::Disabled,
            status: Arc::new(status),
            offline: tally_offline::OfflineExecutor::default(),
            feed,
        });
        let mut fixture = Fixture {
            runtime,
            router: tally_server::app(state),
            documented: Vec::new(),
            _engine: engine,
            _read: read,
        };
        let (status, document) = fixture.send("GET", "/v1/openapi.json", Vec::new());
        assert_eq!(status, StatusCode::OK, "{document}");
        fixture.documented = ROUTES
            .iter()
            .map(|route| {
                let responses = document["paths"][route]["post"]["responses"]
                    .as_object()
                    .unwrap_or_else(|| panic!("the OpenAPI document has POST {route}"));
                responses
                    .keys()
                    .map(|code| code.parse().expect("a numeric status"))
                    .collect()
            })
            .collect();
        for (path, body) in SETUP {
            let (status, answer) = fixture.post(path, body.as_bytes().to_vec());
            assert_eq!(status, StatusCode::CREATED, "POST {path} {body}: {answer}");
        }
        fixture
    }

    fn post(&self, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
        self.send("POST", path, body)
    }

    /// Sends one request; every answer of the API is JSON, so a body that is not is a failure.
    fn send(&self, method: &str, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(Body::from(body))
            .expect("a percent-encoded path is a valid URI");
        self.runtime.block_on(async {
            let response = self
                .router
                .clone()
                .oneshot(request)
                .await
                .expect("the router is infallible");
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .expect("the body can be read")
                .to_bytes();
            let json = serde_json::from_slice(&bytes).unwrap_or_else(|error| {
                panic!(
                    "{method} {path} answered {status} with a body that is not JSON ({error}): {:?}",
                    String::from_utf8_lossy(&bytes)
                )
            });
            (status, json)
        })
    }
}

/// The read model, in a directory removed as soon as the file is open: the open file lives on
/// until the process exits, and a fuzz run ends by exiting, never by dropping its fixture.
fn start_read_model(
    reader: Box<dyn tally_log::LogReader>,
    durable: tokio::sync::watch::Receiver<u64>,
) -> ReadModel {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let path = dir.path().join(tally_read::READ_MODEL_FILE_NAME);
    let read = ReadModel::start(&path, reader, durable).expect("start the read model");
    dir.close().expect("remove the temporary directory");
    read
}

/// Every byte but the unreserved ones of RFC 3986 as `%XX`.
fn percent_encode(bytes: &[u8]) -> String {
    let mut encoded = String::with_capacity(bytes.len() * 3);
    for &byte in bytes {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}
