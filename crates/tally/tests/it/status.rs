//! The status page of the real server: figures that survive a crash and a restart, a disk that
//! fills up and empties again, the page as a real browser renders it, and `tally status`.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use tally_status::store;
use tally_status::Window;
use tokio::process::Command;

use crate::support::{tally_bin, Client, ServeOptions, Server};

/// How long a dependency's change may take to show: one evaluation a second, plus slack for a
/// loaded machine.
const SHOWS_WITHIN: Duration = Duration::from_secs(10);
/// How long a browser may take to render one page.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);

/// Where screenshots are kept for people to look at: `target/test-artefacts/`.
fn artefacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-artefacts");
    std::fs::create_dir_all(&dir).expect("create target/test-artefacts");
    dir
}

async fn status_json(client: &Client) -> Value {
    let answer = client.get_settled("/status.json").await.expect("status");
    assert_eq!(answer.status, 200, "{}", answer.text);
    answer.body
}

fn find<'a>(status: &'a Value, list: &str, key: &str, name: &str) -> &'a Value {
    status[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list} in {status}"))
        .iter()
        .find(|item| item[key] == name)
        .unwrap_or_else(|| panic!("no {name} in {list} of {status}"))
}

fn hour_requests(status: &Value) -> (u64, u64) {
    let hour = find(status, "availability", "window", "1h");
    (
        hour["requests"].as_u64().unwrap(),
        hour["failed"].as_u64().unwrap(),
    )
}

/// Waits until `/status.json` satisfies `condition`, and returns it.
async fn status_until(client: &Client, what: &str, condition: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + SHOWS_WITHIN;
    loop {
        let status = status_json(client).await;
        if condition(&status) {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {what} within {SHOWS_WITHIN:?}, found {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn deposit(client: &Client, id: &str) -> u16 {
    client
        .send(
            hyper::Method::POST,
            "/v1/deposits",
            json!({"id": id, "account": "a", "amount": 5})
                .to_string()
                .into(),
        )
        .await
        .expect("an answer")
        .status
}

async fn tally_status(url: &str, token: Option<&str>, flags: &[&str]) -> Output {
    let mut command = Command::new(tally_bin());
    command
        .args(["status", "--target", url])
        .args(flags)
        .env_remove("TALLY_TOKEN")
        .stdin(Stdio::null());
    if let Some(token) = token {
        command.env("TALLY_TOKEN", token);
    }
    tokio::time::timeout(BROWSER_TIMEOUT, command.output())
        .await
        .expect("tally status finishes")
        .expect("run tally status")
}

/// Runs headless Chromium with `flags` on `url`; fails naming the package when it is missing.
async fn chromium(url: &str, flags: &[&str]) -> Output {
    let profile = tempfile::tempdir().unwrap();
    let mut command = Command::new("chromium");
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(flags)
        .arg(url)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = match tokio::time::timeout(BROWSER_TIMEOUT, command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(error)) => panic!(
            "cannot run `chromium` ({error}): this test needs the Debian package `chromium` (scripts/install-test-deps installs it)"
        ),
        Err(_) => panic!("expected chromium to render {url} within {BROWSER_TIMEOUT:?}"),
    };
    assert!(
        output.status.success(),
        "chromium {flags:?} {url} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The page as the browser built it.
async fn rendered_page(url: &str) -> String {
    String::from_utf8(chromium(url, &["--dump-dom"]).await.stdout).expect("UTF-8 DOM")
}

/// Screenshots of the page in a desktop and a phone-width window, kept as test artefacts.
async fn screenshots(url: &str, name: &str) {
    for (suffix, size) in [("", "1200,1400"), ("-narrow", "390,1600")] {
        let path = artefacts().join(format!("{name}{suffix}.png"));
        let _ = std::fs::remove_file(&path);
        chromium(
            url,
            &[
                &format!("--window-size={size}"),
                &format!("--screenshot={}", path.display()),
            ],
        )
        .await;
        let bytes = std::fs::read(&path).expect("the screenshot exists");
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
            "{} is not a rendered page",
            path.display()
        );
    }
}

/// A server that fills its own disk: the disk and the log show as down within seconds on the
/// page (rendered by Chromium) and in `status.json`, commands are refused while reads go on, and
/// everything is healthy again once space is freed. Needs root for the tmpfs (CI runs as root).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_shows_as_down_refuses_commands_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        dir.path(),
        ServeOptions {
            args: &["--disk-reserve", "16MiB", "--open-status"],
            tmpfs_bytes: Some(64 << 20),
            ..ServeOptions::default()
        },
    )
    .await;
    let client = server.client();
    let page = format!("{}/status", server.url);
    let created = client
        .send(
            hyper::Method::POST,
            "/v1/accounts",
            json!({"id": "a", "ledger": "USD"}).to_string().into(),
        )
        .await
        .unwrap();
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(deposit(&client, "d1").await, 201);
    let status = status_json(&client).await;
    assert_eq!(
        find(&status, "dependencies", "name", "disk")["health"],
        "healthy",
        "{status:#}"
    );

    // Leave 8 MiB free, half the reserve.
    let space = tally_status::disk::space(&server.data_view).expect("statvfs of the tmpfs");
    assert!(
        space.total <= 64 << 20,
        "the data directory is on the tmpfs"
    );
    let filler = server.data_view.join("filler");
    std::fs::write(&filler, vec![0u8; (space.available - (8 << 20)) as usize])
        .expect("fill the tmpfs");

    let down = status_until(&client, "the disk and the log down", |status| {
        find(status, "dependencies", "name", "disk")["health"] == "down"
            && find(status, "dependencies", "name", "log")["health"] == "down"
    })
    .await;
    assert_eq!(down["health"], "down");
    let reason = find(&down, "dependencies", "name", "disk")["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.contains("reserve"), "{reason}");
    let refused = client
        .send(
            hyper::Method::POST,
            "/v1/deposits",
            json!({"id": "d2", "account": "a", "amount": 5})
                .to_string()
                .into(),
        )
        .await
        .unwrap();
    assert_eq!(refused.status, 503, "{}", refused.text);
    assert_eq!(refused.body["error"]["code"], "unavailable");
    assert!(
        refused.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("reserve"),
        "{}",
        refused.text
    );
    let read = client.get_settled("/v1/accounts/a").await.unwrap();
    assert_eq!(read.status, 200, "reads go on: {}", read.text);
    assert_eq!(read.body["balance"], 5);

    let dom = rendered_page(&page).await;
    assert!(
        dom.contains(r#"id="dependency-disk" data-health="down""#),
        "{dom}"
    );
    assert!(dom.contains(r#"id="overall" data-health="down""#), "{dom}");
    screenshots(&page, "status-disk-down").await;
    let cli = tally_status(&server.url, None, &[]).await;
    let text = String::from_utf8_lossy(&cli.stdout);
    assert_eq!(cli.status.code(), Some(1), "down exits 1: {text}");
    assert!(text.starts_with("tally: down\n"), "{text}");
    assert!(!text.contains('\x1b'), "no colours into a pipe: {text}");

    std::fs::remove_file(&filler).unwrap();
    let healthy = status_until(&client, "the disk and the log healthy again", |status| {
        find(status, "dependencies", "name", "disk")["health"] == "healthy"
            && find(status, "dependencies", "name", "log")["health"] == "healthy"
    })
    .await;
    let changes: Vec<(String, String)> = healthy["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|incident| incident["dependency"] == "disk")
        .map(|incident| {
            (
                incident["from"].as_str().unwrap_or("").to_string(),
                incident["to"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    // Newest first: down, then healthy again.
    assert_eq!(
        changes,
        [
            ("down".to_string(), "healthy".to_string()),
            ("healthy".to_string(), "down".to_string())
        ],
        "{healthy:#}"
    );
    assert_eq!(deposit(&client, "d2").await, 201, "commands resume");

    // Known outcomes so far: the account, d1, the refused d2, the read, d2 again.
    let status = status_json(&client).await;
    assert_eq!(hour_requests(&status), (5, 1), "{status:#}");
    let dom = rendered_page(&page).await;
    assert!(dom.contains("80.000 %"), "{dom}");
    assert!(
        dom.contains(r#"id="availability-1h" data-requests="5" data-failed="1""#),
        "{dom}"
    );
    for name in ["log", "disk", "read_model", "signing_keys"] {
        assert!(
            dom.contains(&format!(r#"id="dependency-{name}" data-health="healthy""#)),
            "{name}: {dom}"
        );
    }
    screenshots(&page, "status").await;
    server.stop().await;
}

/// Availability figures and incidents are persisted: a SIGKILL loses at most the last few
/// seconds, a clean stop nothing; `tally status` prints them as plain text into a pipe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn figures_survive_a_crash_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let client = server.client();
    let created = client
        .post_settled("/v1/accounts", &json!({"id": "a", "ledger": "USD"}))
        .await
        .unwrap();
    assert_eq!(created.status, 201);
    for id in ["d1", "d2", "d3", "d4"] {
        assert_eq!(deposit(&client, id).await, 201);
    }
    // Wait for a save that holds all five, then crash.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        if let Ok(Some(saved)) = store::load(dir.path()) {
            if saved.availability.figures(Window::Hour, now).requests == 5 {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected the status file to hold 5 requests within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.kill().await;

    let server = Server::start(dir.path()).await;
    let client = server.client();
    assert_eq!(hour_requests(&status_json(&client).await), (5, 0));
    for id in ["d5", "d6", "d7"] {
        assert_eq!(deposit(&client, id).await, 201);
    }
    server.stop().await;

    let server = Server::start(dir.path()).await;
    let client = server.client();
    let status = status_json(&client).await;
    assert_eq!(hour_requests(&status), (8, 0), "{status:#}");
    let starts = status["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|incident| incident["dependency"] == "tally")
        .count();
    assert_eq!(starts, 3, "{status:#}");

    let denied = tally_status(&server.url, None, &[]).await;
    assert_eq!(denied.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("TALLY_TOKEN"),
        "a refusal says which token to set"
    );
    let cli = tally_status(&server.url, Some(&server.token), &[]).await;
    let text = String::from_utf8_lossy(&cli.stdout);
    assert_eq!(cli.status.code(), Some(0), "healthy exits 0: {text}");
    assert!(text.starts_with("tally: healthy\n"), "{text}");
    assert!(text.contains("8 requests, 0 failed"), "{text}");
    assert!(!text.contains('\x1b'), "{text}");
    let coloured = tally_status(&server.url, Some(&server.token), &["--color", "always"]).await;
    assert!(String::from_utf8_lossy(&coloured.stdout).contains("\x1b[32mhealthy"));
    let json = tally_status(&server.url, Some(&server.token), &["--json"]).await;
    let parsed: Value = serde_json::from_slice(&json.stdout).expect("--json prints JSON");
    assert_eq!(hour_requests(&parsed), (8, 0));
    server.stop().await;
}
