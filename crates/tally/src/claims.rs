//! `tally claims reconcile`: settles the claims in `unknown_needs_reconciliation` by asking their
//! targets, and lists those no target could answer for a person to decide.
//!
//! A target that supports it answers `GET {endpoint}/orders/{order_id}` with 200
//! `{"delivered": true}` or `{"delivered": false}` (the README's delivery contract). Only those
//! two answers settle a claim: `true` posts it, `false` voids it. Anything else (404, an error,
//! no answer, a body without the field) proves nothing, so the claim is printed instead: a
//! target that never heard of an order may still have a request for it in flight.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use hyper::Method;
use serde_json::{json, Value};
use tally_project::http::{Connection, Endpoint};

/// How long one question to Tally or to a target may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Claims asked per page of `GET /v1/claims`.
const PAGE_CLAIMS: u32 = 1000;

#[derive(clap::Subcommand)]
pub enum ClaimsCommand {
    /// Settle claims in unknown_needs_reconciliation by asking their targets'
    /// `GET {endpoint}/orders/{order_id}`; print those left for a person. Exit 0 when none is
    /// left, 1 when some are, 2 on an error. The token comes from TALLY_TOKEN (admin).
    Reconcile(ReconcileArgs),
}

#[derive(clap::Args)]
pub struct ReconcileArgs {
    /// The server, as `http://host:port`.
    #[arg(long, default_value = "http://127.0.0.1:7070", env = "TALLY_TARGET")]
    target: String,
    /// Ask the targets and print what would be settled, without settling.
    #[arg(long)]
    dry_run: bool,
}

pub fn run(command: ClaimsCommand) -> anyhow::Result<ExitCode> {
    let ClaimsCommand::Reconcile(args) = command;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(reconcile(args))
}

/// What a target said of an order.
enum Verdict {
    Delivered(String),
    NotDelivered(String),
    Unknown(String),
}

async fn reconcile(args: ReconcileArgs) -> anyhow::Result<ExitCode> {
    let token = std::env::var("TALLY_TOKEN").ok();
    let endpoint = Endpoint::parse(&args.target, token.as_deref().map(str::trim)).await?;
    let mut tally = Connection::new(endpoint);
    let mut endpoints: HashMap<String, Vec<String>> = HashMap::new();
    let mut after: Option<u64> = None;
    let (mut settled, mut left) = (0u64, 0u64);
    loop {
        let path = match after {
            Some(after) => format!(
                "/v1/claims?state=unknown_needs_reconciliation&limit={PAGE_CLAIMS}&after={after}"
            ),
            None => format!("/v1/claims?state=unknown_needs_reconciliation&limit={PAGE_CLAIMS}"),
        };
        let page = ask_tally(&mut tally, Method::GET, &path, Bytes::new()).await?;
        for claim in page["claims"].as_array().context("a page without claims")? {
            let order_id = claim["order_id"]
                .as_str()
                .context("a claim without order_id")?;
            let campaign = claim["campaign"]
                .as_str()
                .context("a claim without campaign")?;
            if !endpoints.contains_key(campaign) {
                let found = campaign_endpoints(&mut tally, campaign).await?;
                endpoints.insert(campaign.to_owned(), found);
            }
            let verdict = ask_targets(&endpoints[campaign], order_id).await;
            let (state, reason) = match verdict {
                Verdict::Delivered(reason) => ("delivered", reason),
                Verdict::NotDelivered(reason) => ("voided", reason),
                Verdict::Unknown(reason) => {
                    left += 1;
                    println!("{order_id}\tcampaign {campaign}\tleft for a person: {reason}");
                    continue;
                }
            };
            if !args.dry_run {
                let path = format!("/v1/claims/{order_id}/settle");
                let body = Bytes::from(json!({ "state": state }).to_string());
                ask_tally(&mut tally, Method::POST, &path, body).await?;
            }
            settled += 1;
            let verb = if args.dry_run {
                "would settle"
            } else {
                "settled"
            };
            println!("{order_id}\tcampaign {campaign}\t{verb} {state}: {reason}");
        }
        match page["next"].as_u64() {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    println!("{settled} settled, {left} left for a person");
    Ok(if left == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// One request to Tally; a non-2xx answer is an error naming it.
async fn ask_tally(
    connection: &mut Connection,
    method: Method,
    path: &str,
    body: Bytes,
) -> anyhow::Result<Value> {
    let response = tokio::time::timeout(REQUEST_TIMEOUT, connection.send(method, path, body))
        .await
        .with_context(|| format!("{path}: no answer within {REQUEST_TIMEOUT:?}"))??;
    if !response.status.is_success() {
        let hint = if response.status.as_u16() == 401 || response.status.as_u16() == 403 {
            "; set TALLY_TOKEN to a token with the `admin` scope"
        } else {
            ""
        };
        anyhow::bail!(
            "{path} answered {}: {}{hint}",
            response.status,
            String::from_utf8_lossy(&response.body)
        );
    }
    serde_json::from_slice(&response.body).with_context(|| format!("{path}: not JSON"))
}

/// The campaign's delivery endpoints, primary first.
async fn campaign_endpoints(tally: &mut Connection, campaign: &str) -> anyhow::Result<Vec<String>> {
    let path = format!("/v1/campaigns/{campaign}");
    let view = ask_tally(tally, Method::GET, &path, Bytes::new()).await?;
    let delivery = &view["delivery"];
    let mut urls = Vec::new();
    for group in ["primary", "backup"] {
        if let Some(list) = delivery[group].as_array() {
            urls.extend(list.iter().filter_map(Value::as_str).map(str::to_owned));
        }
    }
    Ok(urls)
}

/// Asks each endpoint in turn until one answers for sure.
async fn ask_targets(urls: &[String], order_id: &str) -> Verdict {
    let mut reasons = Vec::new();
    for url in urls {
        match ask_target(url, order_id).await {
            Ok(Some(true)) => return Verdict::Delivered(format!("{url} says delivered")),
            Ok(Some(false)) => return Verdict::NotDelivered(format!("{url} says not delivered")),
            Ok(None) => reasons.push(format!("{url}: no order status")),
            Err(error) => reasons.push(format!("{url}: {error:#}")),
        }
    }
    Verdict::Unknown(reasons.join("; "))
}

/// `Some(delivered)` when the endpoint answers its order status; `None` when it has none for
/// this order (404, or another answer without the field).
async fn ask_target(url: &str, order_id: &str) -> anyhow::Result<Option<bool>> {
    let uri: hyper::Uri = url.parse().context("not a URL")?;
    let authority = uri.authority().context("no host")?;
    let base = format!("http://{authority}");
    let path = format!("{}/orders/{order_id}", uri.path().trim_end_matches('/'));
    let mut connection = Connection::new(Endpoint::parse(&base, None).await?);
    let response = tokio::time::timeout(
        REQUEST_TIMEOUT,
        connection.send(Method::GET, &path, Bytes::new()),
    )
    .await
    .context("no answer in time")??;
    if response.status.as_u16() != 200 {
        return Ok(None);
    }
    let body: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
    Ok(body["delivered"].as_bool())
}
