//! `tally keys ...`: the key pair, tokens and revocation.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use hyper::Method;
use tally_auth::{IssueRequest, KeyRing, Scope};

use tally_project::http::{Connection, Endpoint};

#[derive(clap::Subcommand)]
pub enum KeysCommand {
    /// Create the signing key pair of a data directory (the server also does this on first start).
    Init(DataDir),
    /// Create a new signing key; tokens signed by older keys stay valid until those are retired.
    Rotate(DataDir),
    /// Stop trusting a key: tokens it signed are refused within a second, without a restart.
    Retire {
        #[command(flatten)]
        dir: DataDir,
        /// The key id (see `tally keys list`).
        key_id: String,
    },
    /// List the keys of a data directory.
    List(DataDir),
    /// Issue a token; prints the token alone on standard output.
    Issue(IssueArgs),
    /// Print a token's fields, one `name: value` a line (the signature is not checked).
    Inspect {
        /// The token.
        token: String,
    },
    /// List the revoked tokens, read from the log of a data directory (read-only; works while a
    /// server runs on it).
    Revoked(DataDir),
    /// Revoke a token through a running server (needs an admin token in TALLY_TOKEN).
    Revoke {
        /// The server, e.g. http://127.0.0.1:7070.
        #[arg(long)]
        target: String,
        /// The id of the token to revoke (`id` in `tally keys inspect`).
        token_id: String,
    },
}

#[derive(clap::Args)]
pub struct DataDir {
    /// The data directory whose keys to use.
    #[arg(long, default_value = "./tally-data", env = "TALLY_DATA_DIR")]
    data_dir: PathBuf,
}

#[derive(clap::Args)]
pub struct IssueArgs {
    #[command(flatten)]
    dir: DataDir,
    /// Who the token is for (free text, logged with its requests).
    #[arg(long)]
    subject: String,
    /// A scope: admin, write, read or operator. Repeat for several.
    #[arg(long = "scope", required = true)]
    scopes: Vec<Scope>,
    /// Limit the token to a ledger. Repeat for several; none means every ledger.
    #[arg(long = "ledger")]
    ledgers: Vec<String>,
    /// Limit the token to an account. Repeat for several; none means every account.
    #[arg(long = "account")]
    accounts: Vec<String>,
    /// How long the token lives, e.g. 30d, 12h, 90m.
    #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
    ttl: Duration,
}

pub fn run(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Init(dir) => {
            let key_id = KeyRing::init(&dir.data_dir)?;
            eprintln!(
                "created signing key {key_id} in {}",
                dir.data_dir.join("keys").display()
            );
        }
        KeysCommand::Rotate(dir) => {
            let key_id = KeyRing::rotate(&dir.data_dir)?;
            eprintln!("new signing key {key_id}; retire the old one with `tally keys retire` once its tokens are replaced");
        }
        KeysCommand::Retire { dir, key_id } => {
            KeyRing::retire(&dir.data_dir, &key_id)?;
            eprintln!("retired key {key_id}; a running server refuses its tokens within a second");
        }
        KeysCommand::List(dir) => {
            for key in KeyRing::list(&dir.data_dir)? {
                println!("{}{}", key.id, if key.signing { " (signing)" } else { "" });
            }
        }
        KeysCommand::Issue(args) => {
            let request = IssueRequest {
                subject: args.subject,
                scopes: args.scopes,
                ledgers: args.ledgers,
                accounts: args.accounts,
                ttl: args.ttl,
            };
            let (token, _) = KeyRing::issue(&args.dir.data_dir, request)?;
            println!("{token}");
        }
        KeysCommand::Inspect { token } => {
            let claims = tally_auth::inspect(&token)?;
            let list = |items: &[String]| {
                if items.is_empty() {
                    "any".to_string()
                } else {
                    items.join(",")
                }
            };
            println!("id: {}", claims.token_id);
            println!("subject: {}", claims.subject);
            println!(
                "scopes: {}",
                claims
                    .scopes
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            );
            println!("ledgers: {}", list(&claims.ledgers));
            println!("accounts: {}", list(&claims.accounts));
            println!(
                "expires: {}",
                humantime::format_rfc3339_seconds(claims.expires_at)
            );
            println!(
                "issued: {}",
                humantime::format_rfc3339_seconds(claims.issued_at)
            );
            println!("key: {}", claims.key_id);
        }
        KeysCommand::Revoked(dir) => {
            for token_id in revoked(&dir.data_dir)? {
                println!("{token_id}");
            }
        }
        KeysCommand::Revoke { target, token_id } => revoke(&target, &token_id)?,
    }
    Ok(())
}

/// Every `TokenRevoked` event in the log, in order.
fn revoked(data_dir: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let mut tokens = Vec::new();
    let mut failure = None;
    let report =
        tally_log::verify_dir_with(&tally_log::FsStorage, &data_dir.join("log"), |batch| {
            match tally_core::decode_events(&batch.body, batch.header.event_count) {
                Ok(events) => {
                    tokens.extend(events.into_iter().filter_map(|event| match event {
                        tally_core::Event::TokenRevoked { token_id } => Some(token_id.to_string()),
                        _ => None,
                    }));
                    std::ops::ControlFlow::Continue(())
                }
                Err(error) => {
                    failure = Some(format!(
                        "batch at position {}: {error}",
                        batch.header.first_position
                    ));
                    std::ops::ControlFlow::Break(())
                }
            }
        })?;
    if let Some(failure) = failure {
        anyhow::bail!("cannot decode the log of {}: {failure}", data_dir.display());
    }
    if report.has_corruption() {
        anyhow::bail!(
            "the log of {} is corrupt; run `tally verify {}`",
            data_dir.display(),
            data_dir.display()
        );
    }
    Ok(tokens)
}

fn revoke(target: &str, token_id: &str) -> anyhow::Result<()> {
    let token = std::env::var("TALLY_TOKEN")
        .context("set TALLY_TOKEN to an admin token (see DATA_DIR/admin.token)")?;
    let body = serde_json::json!({ "token_id": token_id }).to_string();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let response = runtime.block_on(async {
        let endpoint = Endpoint::parse(target, Some(token.trim())).await?;
        Connection::new(endpoint)
            .send(Method::POST, "/v1/revocations", Bytes::from(body))
            .await
    })?;
    if response.status.is_success() {
        eprintln!("token {token_id} revoked");
        Ok(())
    } else {
        anyhow::bail!(
            "the server answered {}: {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        )
    }
}
