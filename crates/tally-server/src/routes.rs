//! The handlers: parse, hand to the engine or the read model, render. Nothing else happens here.

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tally_core::{Command, RejectCode, TransferBody, TransferCommand};
use tally_engine::{Answer, Detail};
use tally_read::{ReadError, ReadModel};

use crate::api::*;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::limits::{
    DAILY_PAGE_DEFAULT, DAILY_PAGE_MAX, HISTORY_PAGE_DEFAULT, HISTORY_PAGE_MAX, READ_WAIT_MAX,
};
use crate::AppState;

type Created<T> = (StatusCode, Json<T>);

/// The only answer a single command gets.
fn single(mut answers: Vec<Answer>) -> Result<Answer, ApiError> {
    match (answers.pop(), answers.is_empty()) {
        (Some(answer), true) => Ok(answer),
        _ => Err(ApiError::internal(
            "the engine gave a single command more or fewer than one answer",
        )),
    }
}

fn created_or_repeated(created: bool) -> StatusCode {
    if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

/// Open an account.
#[utoipa::path(post, path = "/v1/accounts", request_body = CreateAccountRequest, tag = "accounts", responses(
    (status = 201, description = "Created", body = AccountJson),
    (status = 200, description = "Already created with the same body", body = AccountJson),
    (status = 400, description = "Malformed request", body = ErrorBody),
    (status = 409, description = "The id exists with another ledger or overdraft setting", body = ErrorBody),
    (status = 413, description = "Body too large", body = ErrorBody),
    (status = 422, description = "`reserved_id`: ids starting with `tally:` are the ledger's own", body = ErrorBody),
    (status = 503, description = "Overloaded or unavailable", body = ErrorBody),
))]
pub async fn create_account(
    State(app): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<CreateAccountRequest>,
) -> Result<Created<AccountJson>, ApiError> {
    let id = parse_id("id", &request.id)?;
    let command = Command::CreateAccount {
        id,
        ledger: parse_ledger(&request.ledger)?,
        allow_overdraft: request.allow_overdraft,
    };
    match single(
        app.engine
            .execute_as(vec![command], Detail::Full, caller.restriction)
            .await?,
    )? {
        Answer::Account { view, created } => Ok((created_or_repeated(created), Json(view.into()))),
        Answer::Conflict => Err(ApiError::conflict(&request.id)),
        Answer::Invalid(invalid) => Err(ApiError::invalid_command(&invalid)),
        other => Err(ApiError::internal(format!(
            "unexpected answer to an account creation: {other:?}"
        ))),
    }
}

/// Look up an account.
#[utoipa::path(get, path = "/v1/accounts/{id}", tag = "accounts", params(("id" = String, Path, description = "Account id", min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._:-]+$")), responses(
    (status = 200, description = "The account", body = AccountJson),
    (status = 400, description = "Malformed id", body = ErrorBody),
    (status = 404, description = "No such account", body = ErrorBody),
    (status = 503, description = "Overloaded or unavailable", body = ErrorBody),
))]
pub async fn get_account(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<AccountJson>, ApiError> {
    let id = parse_id("id", &id)?;
    match app
        .engine
        .account_as(id.clone(), caller.restriction)
        .await?
    {
        Some(view) => Ok(Json(view.into())),
        None => Err(ApiError::not_found(format!("no account {id:?}"))),
    }
}

/// An account's history, oldest first.
#[utoipa::path(get, path = "/v1/accounts/{id}/history", tag = "accounts", params(("id" = String, Path, description = "Account id", min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._:-]+$"), HistoryQuery), responses(
    (status = 200, description = "A page of history", body = HistoryJson),
    (status = 400, description = "Malformed id or query", body = ErrorBody),
    (status = 404, description = "No such account", body = ErrorBody),
    (status = 503, description = "The read model is catching up or unavailable", body = ErrorBody),
))]
pub async fn get_history(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> Result<Json<HistoryJson>, ApiError> {
    let id = parse_id("id", &id)?;
    let limit = parse_page_limit(query.limit, HISTORY_PAGE_DEFAULT, HISTORY_PAGE_MAX)?;
    if caller.restriction.is_some() {
        // The account's ledger is the engine's to know: it answers 403 outside the restriction.
        app.engine
            .account_as(id.clone(), caller.restriction.clone())
            .await?;
    }
    let read = caught_up(&app).await?;
    match read
        .history(id.as_str(), query.after, limit)
        .map_err(read_error)?
    {
        Some(page) => Ok(Json(page.into())),
        None => Err(ApiError::not_found(format!("no account {id:?}"))),
    }
}

/// Deposit into an account from the ledger's external account.
#[utoipa::path(post, path = "/v1/deposits", request_body = DepositRequest, tag = "transfers", responses(
    (status = 201, description = "Recorded", body = TransferJson),
    (status = 200, description = "Recorded before by a request with the same body", body = TransferJson),
    (status = 400, description = "Malformed request", body = ErrorBody),
    (status = 404, description = "No such account", body = ErrorBody),
    (status = 409, description = "The id was used with another body", body = ErrorBody),
    (status = 413, description = "Body too large", body = ErrorBody),
    (status = 422, description = "Refused by the ledger rules (overflow), or `reserved_id`: the account is one of the ledger's own (`tally:...`)", body = ErrorBody),
    (status = 503, description = "Overloaded or unavailable", body = ErrorBody),
))]
pub async fn deposit(
    State(app): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<DepositRequest>,
) -> Result<Created<TransferJson>, ApiError> {
    submit_transfer(&app, &caller, request.command(false)?).await
}

/// Withdraw from an account to the ledger's external account.
#[utoipa::path(post, path = "/v1/withdrawals", request_body = DepositRequest, tag = "transfers", responses(
    (status = 201, description = "Recorded", body = TransferJson),
    (status = 200, description = "Recorded before by a request with the same body", body = TransferJson),
    (status = 400, description = "Malformed request", body = ErrorBody),
    (status = 404, description = "No such account", body = ErrorBody),
    (status = 409, description = "The id was used with another body", body = ErrorBody),
    (status = 413, description = "Body too large", body = ErrorBody),
    (status = 422, description = "Refused by the ledger rules (insufficient_funds, overflow, reserved_id)", body = ErrorBody),
    (status = 503, description = "Overloaded or unavailable", body = ErrorBody),
))]
pub async fn withdraw(
    State(app): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<DepositRequest>,
) -> Result<Created<TransferJson>, ApiError> {
    submit_transfer(&app, &caller, request.command(true)?).await
}

/// Transfer between two accounts of one ledger, or reserve with `pending`.
#[utoipa::path(post, path = "/v1/transfers", request_body = TransferRequest, tag = "transfers", responses(
    (status = 201, description = "Recorded", body = TransferJson),
    (status = 200, description = "Recorded before by a request with the same body", body = TransferJson),
    (status = 400, description = "Malformed request", body = ErrorBody),
    (status = 404, description = "No such account", body = ErrorBody),
    (status = 409, description = "The id was used with another body", body = ErrorBody),
    (status = 413, description = "Body too large", body = ErrorBody),
    (status = 422, description = "Refused by the ledger rules (insufficient_funds, ledger_mismatch, overflow, reserved_id)", body = ErrorBody),
    (status = 503, description = "Overloaded or unavailable", body = ErrorBody),
))]
pub async fn transfer(
    State(app): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<TransferRequest>,
) -> Result<Created<TransferJson>, ApiError> {
    submit_transfer(&app, &caller, request.command("")?).await
}

/// Post a pending transfer, wholly or partly.
#[utoipa::path(post, path = "/v1/transfers/{id}/post", request_body = PostRequest, tag = "transfers",
    params(("id" = String, Path, description = "The pending transfer's id", min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._:-]+$")), responses(
    (status = 201, description = "Posted", body = TransferJson),
    (status = 200, description = "Posted before by a request with the same body", body = TransferJson),
    (status = 400, description = "Malformed request", body = ErrorBody),
    (status = 404, description = "No such pending transfer", body = ErrorBody),
    (status = 409, description = "The id was used with another body", body = ErrorBody),
    (status = 413, description = "Body too large", body = ErrorBody),
    (status = 422, description = "Refused (already_resolved, not_pending, exceeds_pending_amount, overflow, reserved_id)", body = ErrorBody),
    (status = 503, description = "Overloaded or unavailable", body = ErrorBody),
))]
pub async fn post_pending(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(pending_id): ApiPath<String>,
    ApiJson(request): ApiJson<PostRequest>,
) -> Result<Created<TransferJson>, ApiError> {
    let amount = match request.amount {
        None => None,
        Some(amount) => Some(
            std::num::NonZeroU64::new(amount)
                .ok_or_else(|| ApiError::invalid("amount: must be at least 1"))?,
        ),
    };
    let body = TransferBody::Post {
        pending_id: parse_id("pending transfer id", &pending_id)?,
        amount,
    };
    submit_transfer(
        &app,
        &caller,
        TransferCommand {
            id: parse_id("id", &request.id)?,
            body,
        },
    )
    .await
}

/// Void a pending transfer.
#[utoipa::path(post, path = "/v1/transfers/{id}/void", request_body = VoidRequest, tag = "transfers",
    params(("id" = String, Path, description = "The pending transfer's id", min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._:-]+$")), responses(
    (status = 201, description = "Voided", body = TransferJson),
    (status = 200, description = "Voided before by a request with the same body", body = TransferJson),
    (status = 400, description = "Malformed request", body = ErrorBody),
    (status = 404, description = "No such pending transfer", body = ErrorBody),
    (status = 409, description = "The id was used with another body", body = ErrorBody),
    (status = 413, description = "Body too large", body = ErrorBody),
    (status = 422, description = "Refused (already_resolved, not_pending, reserved_id)", body = ErrorBody),
    (status = 503, description = "Overloaded or unavailable", body = ErrorBody),
))]
pub async fn void_pending(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(pending_id): ApiPath<String>,
    ApiJson(request): ApiJson<VoidRequest>,
) -> Result<Created<TransferJson>, ApiError> {
    let body = TransferBody::Void {
        pending_id: parse_id("pending transfer id", &pending_id)?,
    };
    submit_transfer(
        &app,
        &caller,
        TransferCommand {
            id: parse_id("id", &request.id)?,
            body,
        },
    )
    .await
}

async fn submit_transfer(
    app: &AppState,
    caller: &Caller,
    command: TransferCommand,
) -> Result<Created<TransferJson>, ApiError> {
    let answer = single(
        app.engine
            .execute_as(
                vec![Command::Transfer(command.clone())],
                Detail::Full,
                caller.restriction.clone(),
            )
            .await?,
    )?;
    match answer {
        Answer::Transfer {
            reply,
            detail: Some(detail),
        } => Ok((
            created_or_repeated(reply.created),
            Json(TransferJson::answered(&command, &reply, detail)),
        )),
        Answer::Rejected { code, .. } => Err(ApiError::rejected(code)),
        Answer::Conflict => Err(ApiError::conflict(command.id.as_str())),
        Answer::Invalid(invalid) => Err(ApiError::invalid_command(&invalid)),
        other => Err(ApiError::internal(format!(
            "unexpected answer to a transfer: {other:?}"
        ))),
    }
}

/// Many transfers in one request: independent, or all-or-nothing with `atomic`.
#[utoipa::path(post, path = "/v1/transfers/batch", request_body = BatchRequest, tag = "transfers", responses(
    (status = 200, description = "One result per transfer, in order", body = BatchResponse),
    (status = 400, description = "Malformed request; nothing was applied", body = ErrorBody),
    (status = 413, description = "Body too large", body = ErrorBody),
    (status = 503, description = "Overloaded or unavailable; nothing was applied", body = ErrorBody),
))]
pub async fn transfer_batch(
    State(app): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<BatchRequest>,
) -> Result<Json<BatchResponse>, ApiError> {
    let count = request.transfers.len();
    if !(1..=tally_core::limits::BATCH_TRANSFERS_MAX).contains(&count) {
        return Err(ApiError::invalid(format!(
            "transfers: must hold 1 to {} transfers, found {count}",
            tally_core::limits::BATCH_TRANSFERS_MAX
        )));
    }
    let mut transfers = Vec::with_capacity(count);
    for (index, transfer) in request.transfers.iter().enumerate() {
        transfers.push(transfer.command(&format!("transfers[{index}]."))?);
    }
    let commands = if request.atomic {
        let chain = Command::Linked(transfers);
        chain
            .validate()
            .map_err(|error| ApiError::invalid(format!("transfers: {error}")))?;
        vec![chain]
    } else {
        transfers.into_iter().map(Command::Transfer).collect()
    };
    let answers = app
        .engine
        .execute_as(commands, Detail::Compact, caller.restriction)
        .await?;
    if answers.len() != count {
        return Err(ApiError::internal(format!(
            "the engine gave {} answers to {count} transfers",
            answers.len()
        )));
    }
    let results = request
        .transfers
        .into_iter()
        .zip(answers)
        .map(|(transfer, answer)| batch_item(transfer.id, answer))
        .collect();
    Ok(Json(BatchResponse { results }))
}

fn batch_item(id: String, answer: Answer) -> BatchItem {
    let item = |outcome, status, position, error| BatchItem {
        id: id.clone(),
        outcome,
        status,
        position,
        error,
    };
    match answer {
        Answer::Transfer { reply, .. } => {
            let outcome = if reply.created {
                "created"
            } else {
                "duplicate"
            };
            item(
                outcome,
                Some(first_status(reply.kind)),
                Some(reply.position),
                None,
            )
        }
        Answer::Rejected { code, position, .. } => item(
            "rejected",
            None,
            Some(position),
            Some(ApiError::rejected(code).detail()),
        ),
        Answer::Conflict => item(
            "conflict",
            None,
            None,
            Some(ApiError::conflict(&id).detail()),
        ),
        Answer::Invalid(invalid) => item(
            "rejected",
            None,
            None,
            Some(ApiError::invalid_command(&invalid).detail()),
        ),
        Answer::Account { .. }
        | Answer::Revoked { .. }
        | Answer::Campaign { .. }
        | Answer::Claim { .. }
        | Answer::Refused(_) => item(
            "rejected",
            None,
            None,
            Some(ApiError::rejected(RejectCode::NotFound).detail()),
        ),
    }
}

/// Revoke an access token: every node that reads the log refuses it from then on.
#[utoipa::path(post, path = "/v1/revocations", request_body = RevocationRequest, tag = "operations", responses(
    (status = 201, description = "Revoked", body = RevocationJson),
    (status = 200, description = "Already revoked", body = RevocationJson),
    (status = 400, description = "Malformed request", body = ErrorBody),
    (status = 401, description = "Missing or invalid token", body = ErrorBody),
    (status = 403, description = "The token lacks the admin scope", body = ErrorBody),
    (status = 413, description = "Body too large", body = ErrorBody),
    (status = 503, description = "Overloaded or unavailable", body = ErrorBody),
))]
pub async fn revoke(
    State(app): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<RevocationRequest>,
) -> Result<Created<RevocationJson>, ApiError> {
    let token_id = parse_id("token_id", &request.token_id)?;
    let command = Command::RevokeToken {
        token_id: token_id.clone(),
    };
    match single(
        app.engine
            .execute_as(vec![command], Detail::Full, caller.restriction)
            .await?,
    )? {
        Answer::Revoked { created } => Ok((
            created_or_repeated(created),
            Json(RevocationJson {
                token_id: token_id.to_string(),
                revoked: true,
            }),
        )),
        other => Err(ApiError::internal(format!(
            "unexpected answer to a revocation: {other:?}"
        ))),
    }
}

/// Look up a transfer by id, with the current status of a pending transfer.
#[utoipa::path(get, path = "/v1/transfers/{id}", tag = "transfers", params(("id" = String, Path, description = "Transfer id", min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._:-]+$")), responses(
    (status = 200, description = "The transfer", body = TransferJson),
    (status = 400, description = "Malformed id", body = ErrorBody),
    (status = 404, description = "No such transfer (rejected commands create none)", body = ErrorBody),
    (status = 503, description = "The read model is catching up or unavailable", body = ErrorBody),
))]
pub async fn get_transfer(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<TransferJson>, ApiError> {
    let id = parse_id("id", &id)?;
    let read = caught_up(&app).await?;
    match read.transfer(id.as_str()).map_err(read_error)? {
        Some(view) => {
            // Deposits and withdrawals have one side only; the other is the external account.
            for account in [&view.from, &view.to].into_iter().flatten() {
                caller.require(Some(&view.ledger), Some(account))?;
            }
            Ok(Json(view.into()))
        }
        None => Err(ApiError::not_found(format!("no transfer {id:?}"))),
    }
}

/// A ledger's totals: accounts, posted value (in all, deposited, withdrawn) and the pending
/// transfers open.
#[utoipa::path(get, path = "/v1/ledgers/{code}", tag = "ledgers", params(("code" = String, Path, description = "Ledger code", min_length = 1, max_length = 32, pattern = "^[A-Za-z0-9._:-]+$")), responses(
    (status = 200, description = "The ledger's totals", body = LedgerJson),
    (status = 400, description = "Malformed code", body = ErrorBody),
    (status = 404, description = "No account in that ledger", body = ErrorBody),
    (status = 503, description = "The read model is catching up or unavailable", body = ErrorBody),
))]
pub async fn get_ledger(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(code): ApiPath<String>,
) -> Result<Json<LedgerJson>, ApiError> {
    let code = parse_ledger_in("code", &code)?;
    // Figures of a whole ledger: a token limited to some accounts may not see them.
    caller.require(Some(code.as_str()), None)?;
    let read = caught_up(&app).await?;
    match read.ledger_totals(code.as_str()).map_err(read_error)? {
        Some(totals) => Ok(Json(totals.into())),
        None => Err(no_ledger(code.as_str())),
    }
}

/// A ledger's daily summary, oldest day first: the count and volume of what posted value each
/// UTC day. Days without such an event have no entry.
#[utoipa::path(get, path = "/v1/ledgers/{code}/daily", tag = "ledgers", params(("code" = String, Path, description = "Ledger code", min_length = 1, max_length = 32, pattern = "^[A-Za-z0-9._:-]+$"), DailyQuery), responses(
    (status = 200, description = "A page of days", body = DailyJson),
    (status = 400, description = "Malformed code or query, or `from` after `to`", body = ErrorBody),
    (status = 404, description = "No account in that ledger", body = ErrorBody),
    (status = 503, description = "The read model is catching up or unavailable", body = ErrorBody),
))]
pub async fn get_ledger_daily(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(code): ApiPath<String>,
    ApiQuery(query): ApiQuery<DailyQuery>,
) -> Result<Json<DailyJson>, ApiError> {
    let code = parse_ledger_in("code", &code)?;
    let limit = parse_page_limit(query.limit, DAILY_PAGE_DEFAULT, DAILY_PAGE_MAX)?;
    let from = query
        .from
        .as_deref()
        .map(|text| parse_day("from", text))
        .transpose()?;
    let to = query
        .to
        .as_deref()
        .map(|text| parse_day("to", text))
        .transpose()?;
    if let (Some(from), Some(to)) = (from, to) {
        if from > to {
            return Err(ApiError::invalid(format!(
                "from: {from} is after to ({to})"
            )));
        }
    }
    caller.require(Some(code.as_str()), None)?;
    let read = caught_up(&app).await?;
    match read
        .ledger_days(code.as_str(), from, to, limit)
        .map_err(read_error)?
    {
        Some(page) => Ok(Json(DailyJson::new(code.to_string(), page))),
        None => Err(no_ledger(code.as_str())),
    }
}

fn no_ledger(code: &str) -> ApiError {
    ApiError::not_found(format!("no ledger {code:?}: no account of it exists"))
}

/// Waits until the read model holds everything acknowledged before this request arrived, so
/// that a client reads its own writes.
async fn caught_up(app: &AppState) -> Result<ReadModel, ApiError> {
    let target = app.engine.durable_position();
    let read = app
        .read
        .wait(READ_WAIT_MAX)
        .await
        .map_err(ApiError::unavailable)?;
    read.wait_for(target, READ_WAIT_MAX)
        .await
        .map_err(read_error)?;
    Ok(read)
}

pub(crate) fn read_error(error: ReadError) -> ApiError {
    match error {
        ReadError::Lagging { projected, target } => ApiError::unavailable(format!(
            "the read model is at position {projected} and has not caught up with {target} within {}s; retry shortly",
            READ_WAIT_MAX.as_secs()
        )),
        other => ApiError::internal(other),
    }
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "Alive", body = HealthJson)))]
pub async fn healthz() -> Json<HealthJson> {
    Json(HealthJson {
        status: "ok".into(),
    })
}

/// Readiness: the engine accepts work and the read model is projecting.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Ready", body = HealthJson),
    (status = 503, description = "Not ready, and why", body = HealthJson),
))]
pub async fn readyz(State(app): State<AppState>) -> (StatusCode, Json<HealthJson>) {
    if !app.engine.is_ready() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(HealthJson {
                status: "the engine has stopped accepting writes; see the server log".into(),
            }),
        );
    }
    let status = app.read.get().map(|read| read.map(|read| read.status()));
    if let Some(Err(reason) | Ok(tally_read::ProjectorStatus::Failed { reason, .. })) = status {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(HealthJson {
                status: format!("the read model has stopped: {reason}"),
            }),
        );
    }
    (
        StatusCode::OK,
        Json(HealthJson {
            status: "ok".into(),
        }),
    )
}

/// Metrics: OpenMetrics text when the `Accept` header asks for it (as Prometheus does), the
/// Prometheus text format otherwise.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "OpenMetrics text (`Accept: application/openmetrics-text`) or the Prometheus text format", content((String = "application/openmetrics-text"), (String = "text/plain")))))]
pub async fn metrics(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let openmetrics = headers.get_all(header::ACCEPT).iter().any(|accept| {
        accept
            .to_str()
            .is_ok_and(|accept| accept.contains("application/openmetrics-text"))
    });
    let content_type = if openmetrics {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; version=0.0.4; charset=utf-8"
    };
    match app.metrics.render(openmetrics) {
        Ok(text) => ([(header::CONTENT_TYPE, content_type)], text).into_response(),
        Err(error) => ApiError::internal(error).into_response(),
    }
}

/// The status page: availability, dependencies, offline jobs and incidents, as HTML.
#[utoipa::path(get, path = "/status", tag = "operations", responses(
    (status = 200, description = "The status page", content_type = "text/html"),
    (status = 401, description = "Missing or invalid token (unless opened with --open-status)", body = ErrorBody),
    (status = 403, description = "The token lacks the `operator` scope", body = ErrorBody),
))]
pub async fn status_page(State(app): State<AppState>) -> Response {
    let page = tally_status::html::render(&app.status.report());
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        page,
    )
        .into_response()
}

/// The status page's data, for machines.
#[utoipa::path(get, path = "/status.json", tag = "operations", responses(
    (status = 200, description = "Availability, dependencies, offline jobs and incidents", body = tally_status::StatusReport),
    (status = 401, description = "Missing or invalid token (unless opened with --open-status)", body = ErrorBody),
    (status = 403, description = "The token lacks the `operator` scope", body = ErrorBody),
))]
pub async fn status_json(State(app): State<AppState>) -> Response {
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(app.status.report()),
    )
        .into_response()
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "operations", responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object)))]
pub async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::document(),
    )
        .into_response()
}

/// Any path that does not exist.
pub async fn no_route() -> ApiError {
    ApiError::not_found("no such path; see /v1/openapi.json")
}

/// A path that exists, with another method.
pub async fn wrong_method() -> ApiError {
    ApiError {
        violations: None,
        status: StatusCode::METHOD_NOT_ALLOWED,
        code: "method_not_allowed",
        message: "method not allowed on this path; see /v1/openapi.json".into(),
    }
}
