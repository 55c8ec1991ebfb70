//! Shared helpers for the integration tests: the real `tally` process and a
//! tiny JSON-over-HTTP client.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{HeaderMap, Method, Request};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The `tally` binary under test: cargo's own build for the integration tests. Cargo names
/// binaries to tests only, so the soak example, which shares this module, is told the binary
/// in the `TALLY_BIN` environment variable (`scripts/soak` sets it).
pub fn tally_bin() -> String {
    match option_env!("CARGO_BIN_EXE_tally") {
        Some(path) => path.to_owned(),
        None => std::env::var("TALLY_BIN").expect("TALLY_BIN names the tally binary to run"),
    }
}

/// How long a starting server may take to recover and print its address.
const SERVER_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a graceful shutdown may take.
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Per-request timeout; generous because reads may wait for the read model.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `*_settled` keeps retrying 503 answers (`overloaded`, or
/// `unavailable` while the read model catches up).
const RETRY_503_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `tally serve`; dropping it kills the process (SIGKILL).
pub struct Server {
    child: Child,
    /// Base URL such as `http://127.0.0.1:41234`.
    pub url: String,
    /// The admin token the server wrote into its data directory on first start.
    pub token: String,
    /// What the server wrote to standard error so far, by line, when started to capture it.
    stderr: Option<Arc<Mutex<Vec<String>>>>,
    /// The data directory as this process sees it: under `/proc/PID/root` when the server
    /// runs on its own tmpfs.
    pub data_view: PathBuf,
}

/// Lines of a server's standard error, shared with the task that reads them.
#[derive(Clone)]
pub struct CapturedLines(Arc<Mutex<Vec<String>>>);

impl CapturedLines {
    /// The lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// Waits until a line satisfies `matches` and returns it; panics after `patience`.
    pub async fn wait_for(
        &self,
        what: &str,
        patience: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            if let Some(line) = self.lines().into_iter().find(|line| matches(line)) {
                return line;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected {what} on standard error within {patience:?}, found:\n{}",
                self.lines().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// How [`Server::start_with`] runs the server.
#[derive(Default)]
pub struct ServeOptions<'a> {
    /// Flags after `serve --data-dir DIR --listen 127.0.0.1:0`.
    pub args: &'a [&'a str],
    /// `TALLY_LOG`; by default the test's own `TALLY_LOG`, or `warn`.
    pub log_filter: Option<&'a str>,
    /// Keep standard error for [`Server::stderr_lines`] instead of passing it through.
    pub capture_stderr: bool,
    /// Serve from a fresh tmpfs of this many bytes mounted over the data directory, in a mount
    /// namespace of the server's own (`unshare --mount`, which needs root or CAP_SYS_ADMIN), so
    /// that a test can fill the server's disk without touching the machine's.
    pub tmpfs_bytes: Option<u64>,
}

impl Server {
    /// Starts `tally serve` on a loopback port and waits until it listens.
    pub async fn start(data_dir: &Path) -> Server {
        Server::start_with(data_dir, ServeOptions::default()).await
    }

    /// [`Server::start`] with more flags or a captured standard error.
    pub async fn start_with(data_dir: &Path, options: ServeOptions<'_>) -> Server {
        // Warnings and errors only by default, so the test output stays readable; set
        // TALLY_LOG to see more.
        let log_filter = options.log_filter.map_or_else(
            || std::env::var("TALLY_LOG").unwrap_or_else(|_| "warn".into()),
            str::to_owned,
        );
        let stderr = if options.capture_stderr {
            Stdio::piped()
        } else {
            Stdio::inherit()
        };
        let mut command = match options.tmpfs_bytes {
            None => {
                let mut command = Command::new(tally_bin());
                command.arg("serve").arg("--data-dir").arg(data_dir);
                command
            }
            Some(bytes) => {
                // unshare(1) execs its command in the same process, and so does `sh -c exec`:
                // the child's pid is the server's.
                let mut command = Command::new("unshare");
                command
                    .args(["--mount", "--propagation", "private", "sh", "-c"])
                    .arg(format!(
                        r#"mount -t tmpfs -o size={bytes} tally-test "$1" && exec "$0" serve --data-dir "$@""#
                    ))
                    .arg(tally_bin())
                    .arg(data_dir);
                command
            }
        };
        let mut child = command
            .args(["--listen", "127.0.0.1:0"])
            .args(options.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .env("TALLY_LOG", log_filter)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "spawning {} serve: {error} (a tmpfs needs util-linux `unshare`)",
                    tally_bin()
                )
            });
        let data_view = match options.tmpfs_bytes {
            None => data_dir.to_path_buf(),
            Some(_) => {
                let pid = child.id().expect("the server runs");
                let relative = data_dir
                    .strip_prefix("/")
                    .expect("an absolute data directory");
                PathBuf::from(format!("/proc/{pid}/root")).join(relative)
            }
        };
        let captured = child.stderr.take().map(|stderr| {
            let captured = Arc::new(Mutex::new(Vec::new()));
            let lines = Arc::clone(&captured);
            tokio::spawn(async move {
                let mut stderr = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = stderr.next_line().await {
                    lines.lock().unwrap().push(line);
                }
            });
            captured
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let wait = async {
            while let Some(line) = lines.next_line().await.expect("reading server stdout") {
                if let Some(url) = line.trim().strip_prefix("listening on ") {
                    return Some(url.to_string());
                }
            }
            None
        };
        let url = match tokio::time::timeout(SERVER_READY_TIMEOUT, wait).await {
            Ok(Some(url)) => url,
            Ok(None) => panic!(
                "expected tally serve on {} to print 'listening on http://...', found it exited ({:?})",
                data_dir.display(),
                child.wait().await
            ),
            Err(_) => panic!(
                "expected tally serve on {} to be listening within {SERVER_READY_TIMEOUT:?}, found no listening line",
                data_dir.display()
            ),
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let token_path = data_view.join("admin.token");
        let token = std::fs::read_to_string(&token_path).unwrap_or_else(|error| {
            panic!(
                "expected tally serve to write {}, found: {error}",
                token_path.display()
            )
        });
        Server {
            child,
            url,
            token: token.trim().to_string(),
            stderr: captured,
            data_view,
        }
    }

    pub fn client(&self) -> Client {
        Client::new(&self.url, &self.token)
    }

    /// The lines the server writes to standard error, as they come, also after it exits; it
    /// must have been started with `capture_stderr`.
    pub fn stderr(&self) -> CapturedLines {
        CapturedLines(Arc::clone(
            self.stderr
                .as_ref()
                .expect("the server was started with capture_stderr"),
        ))
    }

    /// Kills the server with SIGKILL, as a crash would, and reaps it.
    pub async fn kill(mut self) {
        self.signal(libc::SIGKILL);
        let status = self.child.wait().await.expect("waiting for killed server");
        assert!(
            !status.success(),
            "expected SIGKILL to end the server abnormally, found {status}"
        );
    }

    /// Stops the server with SIGTERM and checks that it shut down gracefully.
    pub async fn stop(mut self) {
        self.signal(libc::SIGTERM);
        let status = match tokio::time::timeout(SERVER_STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => status.expect("waiting for server"),
            Err(_) => panic!("expected tally serve to exit within {SERVER_STOP_TIMEOUT:?} of SIGTERM, found it still running"),
        };
        assert!(
            status.success(),
            "expected tally serve to exit 0 after SIGTERM, found {status}"
        );
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = self.child.id().expect("server still running") as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {signal}): {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Runs `tally verify DIR`; on failure, says how it exited and what it printed. At normal
/// priority: tests run side by side on busy cores, where an idle-priority check would only wait.
pub fn verify_data_dir(data_dir: &Path) -> Result<(), String> {
    let tally = tally_bin();
    let output = std::process::Command::new(&tally)
        .arg("verify")
        .args(["--offline-priority", "normal"])
        .arg(data_dir)
        .output()
        .unwrap_or_else(|error| panic!("running {tally} verify: {error}"));
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "`tally verify {}` exited with {}\nstdout:\n{}\nstderr:\n{}",
        data_dir.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}

/// A pooled HTTP/1.1 client speaking JSON to one server.
#[derive(Clone)]
pub struct Client {
    inner: hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>,
    base: String,
    authorization: Option<HeaderValue>,
}

/// A complete answer: status, headers, the body as text and parsed as JSON (`Null` when empty
/// or not JSON).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
    pub body: Value,
}

impl Client {
    pub fn new(base: &str, token: &str) -> Client {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let inner =
            hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector);
        let authorization = Some(
            HeaderValue::from_str(&format!("Bearer {token}")).expect("the token is a valid header"),
        );
        Client {
            inner,
            base: base.trim_end_matches('/').to_string(),
            authorization,
        }
    }

    /// The same server and connection pool with another `Authorization` header,
    /// sent whole (`Some("Bearer TOKEN")`), or none for `None`.
    pub fn with_authorization(&self, authorization: Option<&str>) -> Client {
        Client {
            authorization: authorization
                .map(|value| HeaderValue::from_str(value).expect("a valid Authorization header")),
            ..self.clone()
        }
    }

    /// The same server with `Bearer token`.
    pub fn with_token(&self, token: &str) -> Client {
        self.with_authorization(Some(&format!("Bearer {token}")))
    }

    /// GETs, retrying 503 answers for a while; `Err` as for `send`.
    pub async fn get_settled(&self, path: &str) -> Result<Answer, String> {
        self.send_settled(Method::GET, path, Bytes::new()).await
    }

    /// POSTs, retrying 503 answers (the same body: writes are idempotent by
    /// id) for a while; `Err` as for `send`.
    pub async fn post_settled(&self, path: &str, body: &Value) -> Result<Answer, String> {
        self.send_settled(Method::POST, path, Bytes::from(body.to_string()))
            .await
    }

    /// Sends until the answer is not 503 or `RETRY_503_TIMEOUT` passed; then
    /// returns the last answer.
    async fn send_settled(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<Answer, String> {
        let deadline = tokio::time::Instant::now() + RETRY_503_TIMEOUT;
        let mut backoff = Duration::from_millis(2);
        loop {
            let answer = self.send(method.clone(), path, body.clone()).await?;
            if answer.status != 503 || tokio::time::Instant::now() >= deadline {
                return Ok(answer);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(100));
        }
    }

    /// Sends one request. `Err` means the outcome is unknown: the connection
    /// failed or the answer did not arrive in time.
    pub async fn send(&self, method: Method, path: &str, body: Bytes) -> Result<Answer, String> {
        self.send_with(method, path, body, &[]).await
    }

    /// [`Client::send`] with more request headers.
    pub async fn send_with(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Result<Answer, String> {
        let mut request = Request::builder()
            .method(method.clone())
            .uri(format!("{}{}", self.base, path))
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .expect("valid request");
        if let Some(authorization) = &self.authorization {
            request
                .headers_mut()
                .insert(AUTHORIZATION, authorization.clone());
        }
        for (name, value) in headers {
            request.headers_mut().insert(name.clone(), value.clone());
        }
        let exchange = async {
            let response = self
                .inner
                .request(request)
                .await
                .map_err(|error| format!("{error:?}"))?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|error| format!("{error:?}"))?
                .to_bytes();
            let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let text = String::from_utf8_lossy(&bytes).into_owned();
            Ok::<Answer, String>(Answer {
                status,
                headers,
                text,
                body,
            })
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(result) => result.map_err(|error| format!("{method} {path}: {error}")),
            Err(_) => Err(format!(
                "{method} {path}: no answer within {REQUEST_TIMEOUT:?}"
            )),
        }
    }
}
