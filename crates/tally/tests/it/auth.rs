//! Authentication of the real process: tokens on the wire, `tally keys` against a running
//! server (rotation, retirement, revocation through the log), `--no-auth` only on loopback,
//! and verification with no network at all.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::process::Command;

use crate::support::{tally_bin, Client, Server};

/// How long one `tally` command (other than `bench`) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the `bench` run of `no_network_is_needed_to_verify_tokens` may take.
const BENCH_TIMEOUT: Duration = Duration::from_secs(120);
/// A running server re-reads its keys every second; added and retired keys must take effect
/// within this long.
const KEY_RELOAD_DEADLINE: Duration = Duration::from_secs(2);
/// A revocation is applied once durable; the server must refuse the token within this long.
const REVOCATION_DEADLINE: Duration = Duration::from_secs(1);

/// Runs `tally ARGS` with `env` added (and TALLY_TOKEN removed unless given), bounded in time.
async fn tally(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(tally_bin());
    command
        .args(args)
        .env_remove("TALLY_TOKEN")
        .env_remove("TALLY_DATA_DIR")
        .env("TALLY_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output();
    match tokio::time::timeout(COMMAND_TIMEOUT, output).await {
        Ok(output) => output.unwrap_or_else(|error| panic!("running tally {args:?}: {error}")),
        Err(_) => panic!("expected `tally {args:?}` to finish within {COMMAND_TIMEOUT:?}"),
    }
}

/// Runs `tally ARGS`, asserts success, and returns its standard output.
async fn tally_ok(args: &[&str], env: &[(&str, &str)]) -> String {
    let output = tally(args, env).await;
    assert!(
        output.status.success(),
        "expected `tally {args:?}` to succeed, found {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// `tally keys issue` on `data_dir`, with extra flags (`--scope`, `--ledger`, ...).
async fn issue(data_dir: &Path, flags: &[&str]) -> String {
    let dir = data_dir.to_str().expect("a UTF-8 path");
    let mut args = vec!["keys", "issue", "--data-dir", dir, "--subject", "it"];
    args.extend_from_slice(flags);
    tally_ok(&args, &[]).await.trim().to_string()
}

/// `tally keys inspect TOKEN` as `name -> value`.
async fn inspect(token: &str) -> Vec<(String, String)> {
    tally_ok(&["keys", "inspect", token], &[])
        .await
        .lines()
        .map(|line| {
            let (name, value) = line
                .split_once(": ")
                .unwrap_or_else(|| panic!("expected `name: value`, found {line:?}"));
            (name.to_string(), value.to_string())
        })
        .collect()
}

async fn field(token: &str, name: &str) -> String {
    inspect(token)
        .await
        .into_iter()
        .find(|(found, _)| found == name)
        .unwrap_or_else(|| panic!("expected `tally keys inspect` to print `{name}:`"))
        .1
}

/// The key ids of `tally keys list`, and which one signs.
async fn keys(data_dir: &Path) -> (Vec<String>, String) {
    let listing = tally_ok(
        &["keys", "list", "--data-dir", data_dir.to_str().unwrap()],
        &[],
    )
    .await;
    let mut ids = Vec::new();
    let mut signing = None;
    for line in listing.lines() {
        let id = line
            .split_whitespace()
            .next()
            .expect("a key id")
            .to_string();
        if line.ends_with("(signing)") {
            signing = Some(id.clone());
        }
        ids.push(id);
    }
    (ids, signing.expect("a signing key"))
}

async fn status(client: &Client, method: &str, path: &str, body: Option<&Value>) -> u16 {
    let method = hyper::Method::from_bytes(method.as_bytes()).unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    client
        .send(method.clone(), path, body.into())
        .await
        .unwrap_or_else(|error| panic!("{method} {path}: {error}"))
        .status
}

async fn balance(admin: &Client, account: &str) -> i64 {
    let answer = admin
        .get_settled(&format!("/v1/accounts/{account}"))
        .await
        .unwrap();
    assert_eq!(
        answer.status, 200,
        "GET account {account}: {:?}",
        answer.body
    );
    answer.body["balance"].as_i64().expect("a balance")
}

/// Polls `GET /v1/accounts/a` with `client` until it answers `want`, for at most `deadline`.
async fn await_status(client: &Client, want: u16, deadline: Duration, what: &str) {
    let start = Instant::now();
    loop {
        let found = status(client, "GET", "/v1/accounts/a", None).await;
        if found == want {
            return;
        }
        assert!(
            start.elapsed() < deadline,
            "expected {what} to answer {want} within {deadline:?}, found {found}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two accounts in two ledgers, `a` (USD) and `e` (EUR), each funded with 100.
async fn world(admin: &Client) {
    for (id, ledger) in [("a", "USD"), ("e", "EUR")] {
        let answer = admin
            .post_settled("/v1/accounts", &json!({"id": id, "ledger": ledger}))
            .await
            .unwrap();
        assert_eq!(answer.status, 201, "{:?}", answer.body);
        let deposit = json!({"id": format!("fund-{id}"), "account": id, "amount": 100});
        let answer = admin.post_settled("/v1/deposits", &deposit).await.unwrap();
        assert_eq!(answer.status, 201, "{:?}", answer.body);
    }
}

fn deposit(id: &str, account: &str) -> Value {
    json!({"id": id, "account": account, "amount": 1})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_on_the_wire_401_403_and_ledger_restrictions() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let admin = server.client();
    world(&admin).await;
    let read = admin.with_token(&issue(dir.path(), &["--scope", "read"]).await);
    let write = admin.with_token(&issue(dir.path(), &["--scope", "write"]).await);
    let usd = admin.with_token(
        &issue(
            dir.path(),
            &["--scope", "read", "--scope", "write", "--ledger", "USD"],
        )
        .await,
    );

    for path in ["/healthz", "/readyz", "/v1/openapi.json"] {
        let open = admin.with_authorization(None);
        assert_eq!(status(&open, "GET", path, None).await, 200, "GET {path}");
    }
    let unauthenticated = [
        admin.with_authorization(None),
        admin.with_authorization(Some("Basic dXNlcjpwYXNz")),
        admin.with_authorization(Some("Bearer")),
        admin.with_token("garbage"),
        admin.with_token(&format!("{}x", server.token)),
    ];
    let mut refused = Vec::new();
    for (n, client) in unauthenticated.iter().enumerate() {
        let id = format!("dep-401-{n}");
        let body = deposit(&id, "a");
        assert_eq!(
            status(client, "POST", "/v1/deposits", Some(&body)).await,
            401
        );
        assert_eq!(status(client, "GET", "/v1/accounts/a", None).await, 401);
        assert_eq!(status(client, "GET", "/metrics", None).await, 401);
        refused.push(body);
    }
    let forbidden = [
        (&read, deposit("dep-403-read", "a")),
        (&usd, deposit("dep-403-usd", "e")),
    ];
    for (client, body) in forbidden {
        assert_eq!(
            status(client, "POST", "/v1/deposits", Some(&body)).await,
            403
        );
        refused.push(body);
    }
    assert_eq!(status(&write, "GET", "/v1/accounts/a", None).await, 403);
    assert_eq!(status(&read, "GET", "/metrics", None).await, 403);
    assert_eq!(status(&usd, "GET", "/v1/accounts/e", None).await, 403);
    assert_eq!(status(&usd, "GET", "/v1/transfers/fund-e", None).await, 403);
    let revoke = json!({"token_id": "00112233445566778899aabbccddeeff"});
    assert_eq!(
        status(&write, "POST", "/v1/revocations", Some(&revoke)).await,
        403
    );

    // Nothing changed, and every refused command id is still free.
    assert_eq!(
        (balance(&admin, "a").await, balance(&admin, "e").await),
        (100, 100)
    );
    for body in &refused {
        let answer = admin.post_settled("/v1/deposits", body).await.unwrap();
        assert_eq!(answer.status, 201, "{body}: {:?}", answer.body);
    }
    // Each token does what it is allowed to.
    assert_eq!(status(&read, "GET", "/v1/accounts/e", None).await, 200);
    assert_eq!(status(&usd, "GET", "/v1/accounts/a", None).await, 200);
    let body = deposit("dep-usd-ok", "a");
    assert_eq!(status(&usd, "POST", "/v1/deposits", Some(&body)).await, 201);
    let body = deposit("dep-write-ok", "e");
    assert_eq!(
        status(&write, "POST", "/v1/deposits", Some(&body)).await,
        201
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_and_retire_keys_while_the_server_runs() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let server = Server::start(dir.path()).await;
    let admin = server.client();
    world(&admin).await;
    let (ids, old_key) = keys(dir.path()).await;
    assert_eq!(ids, vec![old_key.clone()]);
    let old = admin.with_token(&issue(dir.path(), &["--scope", "read"]).await);

    tally_ok(&["keys", "rotate", "--data-dir", data_dir], &[]).await;
    let (ids, new_key) = keys(dir.path()).await;
    assert_ne!(new_key, old_key);
    assert_eq!(ids.len(), 2, "{ids:?}");
    let new_token = issue(dir.path(), &["--scope", "read"]).await;
    assert_eq!(field(&new_token, "key").await, new_key);
    let new = admin.with_token(&new_token);
    await_status(&new, 200, KEY_RELOAD_DEADLINE, "a token of the new key").await;
    assert_eq!(status(&old, "GET", "/v1/accounts/a", None).await, 200);
    assert_eq!(status(&admin, "GET", "/v1/accounts/a", None).await, 200);

    // The signing key cannot be retired.
    let output = tally(&["keys", "retire", "--data-dir", data_dir, &new_key], &[]).await;
    assert!(!output.status.success(), "retiring the signing key");

    tally_ok(&["keys", "retire", "--data-dir", data_dir, &old_key], &[]).await;
    await_status(&old, 401, KEY_RELOAD_DEADLINE, "a token of the retired key").await;
    assert_eq!(status(&admin, "GET", "/v1/accounts/a", None).await, 401);
    assert_eq!(status(&new, "GET", "/v1/accounts/a", None).await, 200);
    assert_eq!(keys(dir.path()).await, (vec![new_key.clone()], new_key));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_reaches_the_server_and_other_processes_through_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let server = Server::start(dir.path()).await;
    let admin = server.client();
    world(&admin).await;
    let token = issue(dir.path(), &["--scope", "write", "--scope", "read"]).await;
    let token_id = field(&token, "id").await;
    let holder = admin.with_token(&token);
    assert_eq!(status(&holder, "GET", "/v1/accounts/a", None).await, 200);

    // Without an admin token the CLI refuses, and so does the server.
    let output = tally(&["keys", "revoke", "--target", &server.url, &token_id], &[]).await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("TALLY_TOKEN"), "{stderr}");
    let args = ["keys", "revoke", "--target", &server.url, &token_id];
    let output = tally(&args, &[("TALLY_TOKEN", &token)]).await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("403"), "{stderr}");
    assert_eq!(status(&holder, "GET", "/v1/accounts/a", None).await, 200);

    tally_ok(&args, &[("TALLY_TOKEN", &server.token)]).await;
    await_status(&holder, 401, REVOCATION_DEADLINE, "a revoked token").await;
    let body = deposit("after-revocation", "a");
    assert_eq!(
        status(&holder, "POST", "/v1/deposits", Some(&body)).await,
        401
    );

    // Another process reading the same log, while the server runs, sees it.
    let revoked = tally_ok(&["keys", "revoked", "--data-dir", data_dir], &[]).await;
    assert_eq!(revoked.lines().collect::<Vec<_>>(), vec![token_id.as_str()]);
    assert_eq!(balance(&admin, "a").await, 100);
    server.stop().await;

    // And the revocation survives a restart.
    let server = Server::start(dir.path()).await;
    let holder = server.client().with_token(&token);
    assert_eq!(status(&holder, "GET", "/v1/accounts/a", None).await, 401);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_auth_is_refused_off_loopback() {
    for listen in ["0.0.0.0:0", "[::]:0"] {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().to_str().unwrap();
        let args = [
            "serve",
            "--no-auth",
            "--listen",
            listen,
            "--data-dir",
            data_dir,
        ];
        let output = tally(&args, &[]).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "expected `tally serve --no-auth --listen {listen}` to fail, found {}\n{stderr}",
            output.status
        );
        assert!(stderr.contains("loopback"), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_prints_every_field() {
    let dir = tempfile::tempdir().unwrap();
    tally_ok(
        &["keys", "init", "--data-dir", dir.path().to_str().unwrap()],
        &[],
    )
    .await;
    let flags = [
        "--scope",
        "write",
        "--scope",
        "read",
        "--ledger",
        "USD",
        "--ledger",
        "EUR",
        "--account",
        "a",
        "--ttl",
        "2h",
    ];
    let token = issue(dir.path(), &flags).await;
    let fields = inspect(&token).await;
    let names: Vec<&str> = fields.iter().map(|(name, _)| name.as_str()).collect();
    for name in ["id", "subject", "scopes", "ledgers", "accounts", "expires"] {
        assert!(names.contains(&name), "`{name}:` in {fields:?}");
    }
    let value = |name: &str| {
        fields
            .iter()
            .find(|(found, _)| found == name)
            .map(|(_, value)| value.clone())
            .unwrap()
    };
    let id = value("id");
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    assert_eq!(value("subject"), "it");
    assert_eq!(value("scopes"), "write,read");
    assert_eq!(value("ledgers"), "USD,EUR");
    assert_eq!(value("accounts"), "a");
    let expires = humantime::parse_rfc3339(&value("expires")).expect("an RFC 3339 time");
    let issued = humantime::parse_rfc3339(&value("issued")).expect("an RFC 3339 time");
    assert_eq!(
        expires.duration_since(issued).unwrap(),
        Duration::from_secs(7200)
    );

    let unrestricted = issue(dir.path(), &["--scope", "admin"]).await;
    assert_eq!(field(&unrestricted, "ledgers").await, "any");
    assert_eq!(field(&unrestricted, "accounts").await, "any");
    assert!(!tally(&["keys", "inspect", "garbage"], &[])
        .await
        .status
        .success());
}

/// Runs `script` under `sh` in new network and mount namespaces: FAILS, naming what is missing,
/// when that is not possible here.
async fn in_isolated_namespaces(script: &str, timeout: Duration) -> Output {
    let mut command = Command::new("unshare");
    command
        .args(["--net", "--mount", "sh", "-c", script])
        .env("TALLY", tally_bin())
        .env("TALLY_LOG", "warn")
        .env_remove("TALLY_TOKEN")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = match tokio::time::timeout(timeout, command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(error)) => panic!(
            "cannot run `unshare` ({error}): this test needs util-linux `unshare`, root or \
             CAP_SYS_ADMIN, and iproute2 `ip`"
        ),
        Err(_) => panic!("expected `unshare ... {script}` to finish within {timeout:?}"),
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        let missing = if stderr.contains("unshare failed")
            || stderr.contains("Operation not permitted")
        {
            "root or CAP_SYS_ADMIN to create network and mount namespaces (unshare --net --mount)"
        } else if stderr.contains("ip: not found") || stderr.contains("ip: command not found") {
            "iproute2 `ip`, to bring up the loopback interface"
        } else if stderr.contains("mount") {
            "permission to bind-mount over /etc/resolv.conf (root or CAP_SYS_ADMIN)"
        } else {
            ""
        };
        assert!(
            missing.is_empty(),
            "this test needs {missing}; `unshare` said:\n{stderr}"
        );
    }
    output
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_network_is_needed_to_verify_tokens() {
    // The prerequisites first, so that a missing one is named rather than mistaken for a bug.
    let probe = in_isolated_namespaces(
        "ip link set lo up && mount --bind /dev/null /etc/resolv.conf && ip -o link show up | grep -v ' lo:' | wc -l",
        COMMAND_TIMEOUT,
    )
    .await;
    assert!(
        probe.status.success(),
        "this test needs util-linux `unshare`, root or CAP_SYS_ADMIN, and iproute2 `ip`; the probe \
         failed with {}:\n{}",
        probe.status,
        String::from_utf8_lossy(&probe.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&probe.stdout).trim(),
        "0",
        "only the loopback interface is up in the namespace"
    );

    let output = in_isolated_namespaces(
        r#"ip link set lo up && mount --bind /dev/null /etc/resolv.conf && exec "$TALLY" bench --transfers 2000 --accounts 20 --batch 100 --concurrency 2"#,
        BENCH_TIMEOUT,
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "expected bench with no network to exit 0, found {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    let last = stdout.lines().last().expect("bench prints a JSON line");
    let report: Value = serde_json::from_str(last)
        .unwrap_or_else(|error| panic!("the last line is not JSON ({error}): {last}"));
    assert_eq!(report["failed"], 0, "{report}");
    assert_eq!(report["succeeded"], 2000, "{report}");
}
