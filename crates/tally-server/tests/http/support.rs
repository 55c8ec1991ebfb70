//! The fixture and the one helper every test sends its requests through.
//!
//! Tests talk to the router as a `Service` (no socket), and only through [`send`] and the thin
//! wrappers around it, so that a change of the API's shape touches this file, not a hundred
//! tests.

use std::any::Any;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::Value;
use tally_auth::{Claims, IssueRequest, KeyRing, Scope, Verifier};
use tally_engine::{Clock, Engine, EngineConfig};
use tally_log::{FsStorage, Storage, StorageFile};
use tally_read::ReadModel;
use tally_server::auth::OpenRoutes;
use tally_server::status::{StatusConfig, StatusHub};
use tally_server::{AppParts, AppState, ServerMetrics};
use tempfile::TempDir;
use tower::ServiceExt;

/// A real engine and read model in a temporary data directory, and the router over them.
pub struct TestApp {
    /// The router under test.
    pub router: Router,
    /// The state the router was built from, to look at what tests cannot see through HTTP.
    pub state: AppState,
    engine: Option<Engine>,
    read: Option<ReadModel>,
    /// The `Authorization` header every request sends unless a test picks another (the admin
    /// token of [`TestApp::with_auth`]); `None` without authentication.
    authorization: Option<String>,
    // Dropped last: the engine and the read model write into it.
    dir: TempDir,
}

/// A clock the test sets: batch timestamps are its time (forced to increase by the engine).
#[derive(Debug)]
pub struct ManualClock {
    now_ns: AtomicU64,
}

impl ManualClock {
    pub fn at(now_ns: u64) -> Arc<ManualClock> {
        Arc::new(ManualClock {
            now_ns: AtomicU64::new(now_ns),
        })
    }

    pub fn set(&self, now_ns: u64) {
        self.now_ns.store(now_ns, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ns(&self) -> u64 {
        self.now_ns.load(Ordering::SeqCst)
    }
}

/// A raw answer.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl TestApp {
    /// Opens an empty ledger.
    pub fn new() -> TestApp {
        TestApp::on(Arc::new(FsStorage))
    }

    /// Opens an empty ledger that authenticates with tokens, as `tally serve` does: a key pair
    /// in the data directory (`KeyRing::init`), a verifier over it that consults the engine's
    /// revocations, and an admin token that every helper but [`TestApp::send_as`] sends.
    pub fn with_auth() -> TestApp {
        TestApp::with_auth_and(OpenRoutes::default())
    }

    /// [`TestApp::with_auth`], with the operator routes in `open` answering without a token
    /// (`--open-metrics`, `--open-status`).
    pub fn with_auth_and(open: OpenRoutes) -> TestApp {
        TestApp::with_auth_on(open, Arc::new(tally_engine::SystemClock))
    }

    /// [`TestApp::with_auth`], with batch timestamps from `clock`.
    pub fn with_auth_at(clock: Arc<ManualClock>) -> TestApp {
        TestApp::with_auth_on(OpenRoutes::default(), clock)
    }

    fn with_auth_on(open: OpenRoutes, clock: Arc<dyn Clock>) -> TestApp {
        let dir = tempfile::tempdir().expect("create a temporary data directory");
        KeyRing::init(dir.path()).expect("create the signing key");
        let mut app = TestApp::build(Arc::new(FsStorage), dir, clock, |dir, engine| {
            let revocations = engine.handle().revocations();
            let verifier = Verifier::load(
                dir,
                Arc::new(move |token_id: &str| revocations.contains(token_id)),
            )
            .expect("load the trusted keys");
            tally_server::auth::Auth::Tokens { verifier, open }
        });
        let admin = app.issue(&[Scope::Admin], &[], &[]);
        app.authorization = Some(format!("Bearer {admin}"));
        app
    }

    /// The data directory (log, read model and, with authentication, `keys/`).
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Issues a token signed by this app's signing key, valid for an hour.
    pub fn issue(&self, scopes: &[Scope], ledgers: &[&str], accounts: &[&str]) -> String {
        self.issue_for(scopes, ledgers, accounts, Duration::from_secs(3600))
            .0
    }

    /// Issues a token with its claims; see [`TestApp::issue`].
    pub fn issue_for(
        &self,
        scopes: &[Scope],
        ledgers: &[&str],
        accounts: &[&str],
        ttl: Duration,
    ) -> (String, Claims) {
        issue_in(self.data_dir(), scopes, ledgers, accounts, ttl)
    }

    /// Opens an empty ledger whose log syncs only while `gate` is open, so that a test can hold
    /// the engine's writer still.
    pub fn gated(gate: Arc<Gate>) -> TestApp {
        TestApp::on(Arc::new(GatedStorage { gate }))
    }

    fn on(storage: Arc<dyn Storage>) -> TestApp {
        let dir = tempfile::tempdir().expect("create a temporary data directory");
        TestApp::build(storage, dir, Arc::new(tally_engine::SystemClock), |_, _| {
            tally_server::auth::Auth::Disabled
        })
    }

    fn build(
        storage: Arc<dyn Storage>,
        dir: TempDir,
        clock: Arc<dyn Clock>,
        auth: impl FnOnce(&Path, &Engine) -> tally_server::auth::Auth,
    ) -> TestApp {
        let config = EngineConfig {
            clock,
            ..EngineConfig::new(dir.path().to_path_buf())
        };
        let opened = Engine::open_in(storage, config).expect("open the engine");
        let feed = tally_server::feed::Feed::new(opened.feed.reader.another());
        let read = ReadModel::start(
            &dir.path().join(tally_read::READ_MODEL_FILE_NAME),
            opened.feed.reader,
            opened.feed.durable,
        )
        .expect("start the read model");
        let engine = opened.engine;
        let read_slot = tally_server::ReadSlot::ready(read.clone());
        let state = AppState::new(AppParts {
            engine: engine.handle(),
            metrics: Arc::new(ServerMetrics::new(
                &engine.handle(),
                &read_slot,
                &tally_offline::OfflineExecutor::default(),
            )),
            read: read_slot,
            auth: auth(dir.path(), &engine),
            status: Arc::new(
                StatusHub::open(dir.path(), StatusConfig::default())
                    .expect("open the status figures"),
            ),
            offline: tally_offline::OfflineExecutor::default(),
            feed,
        });
        state.status.refresh(&state);
        TestApp {
            router: tally_server::app(state.clone()),
            state,
            engine: Some(engine),
            read: Some(read),
            authorization: None,
            dir,
        }
    }

    /// Stops the engine (a durable shutdown must succeed) and the read model. Requests sent
    /// afterwards still reach the router.
    pub async fn shutdown_engine(&mut self) {
        let engine = self.engine.take().expect("the engine runs");
        tokio::task::spawn_blocking(move || engine.shutdown())
            .await
            .expect("shutdown does not panic")
            .expect("shutdown succeeds");
    }

    /// Answers from now on as a server whose read model failed to open: queries that need it get
    /// 503, everything else is unchanged.
    pub async fn fail_read_model(&mut self) {
        let mut parts = AppParts::clone(&self.state);
        parts.read = tally_server::ReadSlot::opening(|| {
            Err(tally_read::ReadError::Io {
                op: "open",
                path: "read.redb".into(),
                source: io::Error::other("the test failed the read model"),
            })
        });
        self.state = AppState::new(parts);
        self.router = tally_server::app(self.state.clone());
    }

    /// Shuts everything down cleanly; call at the end of every test.
    pub async fn finish(mut self) {
        if self.engine.is_some() {
            self.shutdown_engine().await;
        }
        let read = self.read.take().expect("the read model runs");
        tokio::task::spawn_blocking(move || read.shutdown())
            .await
            .expect("read model shutdown does not panic");
    }

    /// The position up to which the log is durable: it must not move for malformed input,
    /// which never reaches the engine.
    pub fn durable_position(&self) -> u64 {
        self.state.engine.durable_position()
    }

    /// Sends one request (with the app's own token, if any) and collects the whole answer.
    pub async fn send(&self, method: &str, path: &str, body: impl Into<Body>) -> Reply {
        self.send_as(self.authorization.as_deref(), method, path, body)
            .await
    }

    /// Opens `path` (an event stream) as the default caller and returns the response with its
    /// body unread, so that the stream stays open while the response is kept.
    pub async fn open_stream(&self, path: &str) -> axum::response::Response {
        let mut request = Request::get(path);
        if let Some(authorization) = &self.authorization {
            request = request.header("authorization", authorization);
        }
        let request = request.body(Body::empty()).expect("a valid request");
        self.router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible")
    }

    /// Sends one request with `authorization` as its whole `Authorization` header (none for
    /// `None`).
    pub async fn send_as(
        &self,
        authorization: Option<&str>,
        method: &str,
        path: &str,
        body: impl Into<Body>,
    ) -> Reply {
        self.exchange(authorization, &[], method, path, body).await
    }

    /// Sends one request with the app's own token and `headers` besides.
    pub async fn send_with(
        &self,
        headers: &[(&str, HeaderValue)],
        method: &str,
        path: &str,
        body: impl Into<Body>,
    ) -> Reply {
        self.exchange(self.authorization.as_deref(), headers, method, path, body)
            .await
    }

    /// Every other helper goes through here.
    async fn exchange(
        &self,
        authorization: Option<&str>,
        headers: &[(&str, HeaderValue)],
        method: &str,
        path: &str,
        body: impl Into<Body>,
    ) -> Reply {
        let mut request = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).expect("a valid method"))
            .uri(path)
            .header("content-type", "application/json");
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        for (name, value) in headers {
            request = request.header(*name, value.clone());
        }
        let request = request.body(body.into()).expect("a valid request");
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("the body can be read")
            .to_bytes()
            .to_vec();
        Reply {
            status,
            headers,
            body,
        }
    }

    /// Sends a request and parses the answer as JSON, which every answer of the API is.
    pub async fn call(&self, method: &str, path: &str, body: Option<&str>) -> (StatusCode, Value) {
        let reply = self
            .send(method, path, body.unwrap_or_default().to_string())
            .await;
        (reply.status, reply.json())
    }

    /// [`TestApp::call`] with `authorization` as the whole `Authorization` header.
    pub async fn call_as(
        &self,
        authorization: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        let reply = self
            .send_as(
                authorization,
                method,
                path,
                body.unwrap_or_default().to_string(),
            )
            .await;
        (reply.status, reply.json())
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call("GET", path, None).await
    }

    pub async fn post(&self, path: &str, body: &str) -> (StatusCode, Value) {
        self.call("POST", path, Some(body)).await
    }

    /// Posts and expects success (200 or 201); returns the answer.
    pub async fn post_ok(&self, path: &str, body: &str) -> Value {
        let (status, json) = self.post(path, body).await;
        assert!(
            status == StatusCode::OK || status == StatusCode::CREATED,
            "POST {path} {body} answered {status} {json}"
        );
        json
    }

    pub async fn open_account(&self, id: &str, ledger: &str, allow_overdraft: bool) {
        let body =
            serde_json::json!({"id": id, "ledger": ledger, "allow_overdraft": allow_overdraft});
        let (status, json) = self.post("/v1/accounts", &body.to_string()).await;
        assert_eq!(status, StatusCode::CREATED, "{json}");
    }

    pub async fn deposit(&self, id: &str, account: &str, amount: u64) {
        let body = serde_json::json!({"id": id, "account": account, "amount": amount});
        let (status, json) = self.post("/v1/deposits", &body.to_string()).await;
        assert_eq!(status, StatusCode::CREATED, "{json}");
    }

    /// The account as `GET /v1/accounts/{id}` answers it.
    pub async fn account(&self, id: &str) -> Value {
        let (status, json) = self.get(&format!("/v1/accounts/{id}")).await;
        assert_eq!(status, StatusCode::OK, "GET account {id}: {json}");
        json
    }

    pub async fn balance(&self, id: &str) -> i64 {
        self.account(id).await["balance"]
            .as_i64()
            .expect("balance is an integer")
    }
}

impl Reply {
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "answer {} is not JSON ({error}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("the answer is UTF-8")
    }
}

/// Issues a token signed by the signing key of `data_dir`.
pub fn issue_in(
    data_dir: &Path,
    scopes: &[Scope],
    ledgers: &[&str],
    accounts: &[&str],
    ttl: Duration,
) -> (String, Claims) {
    let strings = |items: &[&str]| items.iter().map(|item| item.to_string()).collect();
    KeyRing::issue(
        data_dir,
        IssueRequest {
            subject: "test".to_owned(),
            scopes: scopes.to_vec(),
            ledgers: strings(ledgers),
            accounts: strings(accounts),
            ttl,
        },
    )
    .expect("issue a token")
}

/// Asserts that an answer is the documented error: the status, and exactly
/// `{"error":{"code","message","request_id"}}` with the code, a non-empty message and an id.
#[track_caller]
pub fn assert_error(answer: &(StatusCode, Value), status: StatusCode, code: &str) {
    let (found_status, json) = answer;
    assert_eq!(*found_status, status, "status of {json}");
    assert_error_body(json);
    assert_eq!(json["error"]["code"], code, "code of {json}");
}

/// Asserts the shape of an error body, whatever its code.
#[track_caller]
pub fn assert_error_body(json: &Value) {
    let object = json
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {json}"));
    assert_eq!(object.len(), 1, "only `error`: {json}");
    if json["error"]["code"] == "campaign_invalid" {
        // The one code whose body lists more: every rule the campaign breaks.
        let mut error = json["error"].clone();
        let violations = error
            .as_object_mut()
            .expect("an object")
            .remove("violations")
            .unwrap_or_else(|| panic!("campaign_invalid without violations: {json}"));
        let violations = violations.as_array().expect("violations is an array");
        assert!(!violations.is_empty(), "{json}");
        for violation in violations {
            assert_error_fields(violation, &["field", "rule", "message", "fix"]);
        }
        assert_error_fields(&error, &["code", "message", "request_id"]);
        return;
    }
    assert_error_fields(&json["error"], &["code", "message", "request_id"]);
}

/// Asserts the shape of one transfer's error in a batch answer: `{"code","message"}` (the
/// request id is the batch's, in its header).
#[track_caller]
pub fn assert_item_error(error: &Value) {
    assert_error_fields(error, &["code", "message"]);
}

/// Asserts that `error` is an object of exactly `fields`, each a non-empty string.
#[track_caller]
fn assert_error_fields(error: &Value, fields: &[&str]) {
    let object = error
        .as_object()
        .unwrap_or_else(|| panic!("the error is not an object: {error}"));
    let mut found: Vec<&str> = object.keys().map(String::as_str).collect();
    found.sort_unstable();
    let mut expected = fields.to_vec();
    expected.sort_unstable();
    assert_eq!(found, expected, "{error}");
    for field in fields {
        let value = object[*field]
            .as_str()
            .unwrap_or_else(|| panic!("{field} is not a string: {error}"));
        assert!(!value.is_empty(), "empty {field}: {error}");
    }
}

/// Holds every sync of the log while closed.
#[derive(Debug, Default)]
pub struct Gate {
    closed: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    pub fn close(&self) {
        *self.closed.lock().unwrap() = true;
    }

    pub fn open(&self) {
        *self.closed.lock().unwrap() = false;
        self.opened.notify_all();
    }

    fn pass(&self) {
        let mut closed = self.closed.lock().unwrap();
        while *closed {
            closed = self.opened.wait(closed).unwrap();
        }
    }
}

/// The real filesystem, with every file's sync held at a [`Gate`].
#[derive(Debug)]
struct GatedStorage {
    gate: Arc<Gate>,
}

#[derive(Debug)]
struct GatedFile {
    inner: Box<dyn StorageFile>,
    gate: Arc<Gate>,
}

impl GatedStorage {
    fn wrap(&self, inner: Box<dyn StorageFile>) -> Box<dyn StorageFile> {
        Box::new(GatedFile {
            inner,
            gate: Arc::clone(&self.gate),
        })
    }
}

impl Storage for GatedStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        FsStorage.create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        FsStorage.list(dir)
    }
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        Ok(self.wrap(FsStorage.open_read(path)?))
    }
    fn open_write(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        Ok(self.wrap(FsStorage.open_write(path)?))
    }
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        Ok(self.wrap(FsStorage.create_new(path)?))
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        FsStorage.remove(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        FsStorage.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.gate.pass();
        FsStorage.sync_dir(dir)
    }
    fn lock_exclusive(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>> {
        FsStorage.lock_exclusive(path)
    }
}

impl StorageFile for GatedFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.gate.pass();
        self.inner.sync_data()
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }

    fn modified(&self) -> io::Result<std::time::SystemTime> {
        self.inner.modified()
    }
}
