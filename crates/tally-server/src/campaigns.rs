//! The campaign and claim handlers: parse, check, hand to the engine, render.
//!
//! A campaign body is read by `tally_campaign`'s own parser and checked by its rules, so that the
//! API and `tally campaign check` report the same faults. The time zone is turned into the UTC
//! offsets over the campaign's window here, at definition, and recorded with it: the ledger
//! counts local days from them without a time zone database (see `tally_core::campaign`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use tally_campaign::{check, CampaignError, CampaignSpec, Format};
use tally_core::{CampaignDefinition, ClaimState, Command, LedgerCode};
use tally_engine::{Answer, CampaignView, Detail};

use crate::api::*;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiBody, ApiJson, ApiPath, ApiQuery};
use crate::limits::{CLAIMS_PAGE_DEFAULT, CLAIMS_PAGE_MAX};
use crate::AppState;

type Created<T> = (StatusCode, Json<T>);

fn status(created: bool) -> StatusCode {
    if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

async fn execute(app: &AppState, caller: &Caller, command: Command) -> Result<Answer, ApiError> {
    let mut answers = app
        .engine
        .execute_as(vec![command], Detail::Full, caller.restriction.clone())
        .await?;
    match (answers.pop(), answers.is_empty()) {
        (Some(answer), true) => Ok(answer),
        _ => Err(ApiError::internal(
            "the engine gave a single command more or fewer than one answer",
        )),
    }
}

/// The spec stored with a campaign; it was written by this server, so a failure is ours.
fn stored_spec(view: &CampaignView) -> Result<CampaignSpec, ApiError> {
    CampaignSpec::from_bytes(&view.definition.spec).map_err(ApiError::internal)
}

fn render_campaign(view: &CampaignView) -> Result<Json<CampaignJson>, ApiError> {
    Ok(Json(CampaignJson::of(view, &stored_spec(view)?)))
}

/// The ledger's definition of a checked spec: its limits, window and UTC offsets, and the
/// spec itself in its stored form.
fn definition(spec: &CampaignSpec) -> Result<CampaignDefinition, ApiError> {
    let calendar = spec
        .calendar()
        .map_err(|error| ApiError::invalid(error.to_string()))?;
    Ok(CampaignDefinition {
        id: parse_id("id", &spec.id)?,
        gift_ledger: LedgerCode::new(&spec.gift_ledger)
            .map_err(|error| ApiError::invalid(format!("gift_ledger: {error}")))?,
        inventory: spec.inventory,
        per_user_limit: spec.per_user_limit,
        daily_limit: spec.daily_limit,
        starts_at_ns: spec.starts_at_ns,
        ends_at_ns: spec.ends_at_ns,
        verification_account: parse_id("verification_account", &spec.verification_account)?,
        offsets: calendar.offset_changes(spec.starts_at_ns, spec.ends_at_ns),
        spec: spec.to_canonical_bytes(),
    })
}

/// Define a gift campaign, as a draft.
#[utoipa::path(post, path = "/v1/campaigns", request_body = CampaignRequest, tag = "campaigns", responses(
    (status = 201, description = "Defined as a draft; its pool is created and funded", body = CampaignJson),
    (status = 200, description = "Already defined with the same body", body = CampaignJson),
    (status = 400, description = "Not a campaign: bad JSON, an unknown or missing field, a time without an offset", body = ErrorBody),
    (status = 409, description = "The id is defined with another body", body = ErrorBody),
    (status = 413, description = "Body too large", body = ErrorBody),
    (status = 422, description = "`campaign_invalid`: every rule the campaign breaks, in `violations`", body = ErrorBody),
    (status = 503, description = "Overloaded or unavailable", body = ErrorBody),
))]
pub async fn define_campaign(
    State(app): State<AppState>,
    caller: Caller,
    ApiBody(body): ApiBody,
) -> Result<Created<CampaignJson>, ApiError> {
    let text = std::str::from_utf8(&body)
        .map_err(|error| ApiError::invalid(format!("body is not UTF-8: {error}")))?;
    let spec = CampaignSpec::parse(text, Format::Json).map_err(|error| match error {
        CampaignError::TooLarge { .. } => ApiError::payload_too_large(),
        other => ApiError::invalid(other.to_string()),
    })?;
    let violations = check(&spec);
    if !violations.is_empty() {
        return Err(ApiError::campaign_invalid(violations));
    }
    let id = spec.id.clone();
    match execute(
        &app,
        &caller,
        Command::DefineCampaign(Box::new(definition(&spec)?)),
    )
    .await?
    {
        Answer::Campaign { view, created } => Ok((status(created), render_campaign(&view)?)),
        Answer::Conflict => Err(ApiError::conflict(&id)),
        Answer::Refused(code) => Err(ApiError::refused(code)),
        Answer::Invalid(invalid) => Err(ApiError::invalid_command(&invalid)),
        other => Err(ApiError::internal(format!(
            "unexpected answer to a campaign definition: {other:?}"
        ))),
    }
}

/// Look up a campaign.
#[utoipa::path(get, path = "/v1/campaigns/{id}", tag = "campaigns", params(("id" = String, Path, description = "Campaign id", min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._:-]+$")), responses(
    (status = 200, description = "The campaign", body = CampaignJson),
    (status = 400, description = "Malformed id", body = ErrorBody),
    (status = 404, description = "`campaign_not_found`", body = ErrorBody),
    (status = 503, description = "Overloaded or unavailable", body = ErrorBody),
))]
pub async fn get_campaign(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<CampaignJson>, ApiError> {
    let id = parse_id("id", &id)?;
    match app.engine.campaign(id).await? {
        Some(view) => {
            // A token limited to some accounts sees its users' claims, not whole campaigns.
            caller.require(Some(view.definition.gift_ledger.as_str()), None)?;
            render_campaign(&view)
        }
        None => Err(ApiError::refused(
            tally_core::CampaignCode::CampaignNotFound,
        )),
    }
}

/// Take a draft campaign live.
///
/// The verification account must have claimed and received a gift of the campaign. The rules
/// need no second check: a draft was checked when it was defined, with the same rules and
/// messages as `tally campaign check`, and a campaign that breaks one is never stored.
#[utoipa::path(post, path = "/v1/campaigns/{id}/publish", tag = "campaigns", params(("id" = String, Path, description = "Campaign id", min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._:-]+$")), responses(
    (status = 200, description = "Live (now or before)", body = CampaignJson),
    (status = 400, description = "Malformed id", body = ErrorBody),
    (status = 404, description = "`campaign_not_found`", body = ErrorBody),
    (status = 409, description = "`campaign_not_verified`: the verification account has not received a gift of it yet", body = ErrorBody),
    (status = 503, description = "Overloaded or unavailable", body = ErrorBody),
))]
pub async fn publish_campaign(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<CampaignJson>, ApiError> {
    let id = parse_id("id", &id)?;
    match execute(&app, &caller, Command::PublishCampaign { id }).await? {
        Answer::Campaign { view, .. } => render_campaign(&view),
        Answer::Refused(code) => Err(ApiError::refused(code)),
        other => Err(ApiError::internal(format!(
            "unexpected answer to a publication: {other:?}"
        ))),
    }
}

/// Claim one gift of a campaign.
///
/// The window and the limits are checked atomically with the claim, which reserves one unit of
/// the pool for the user (a pending transfer); the answer comes at once, in `pending_delivery`.
/// The same order id answers the same claim (200).
#[utoipa::path(post, path = "/v1/campaigns/{id}/claims", request_body = ClaimRequest, tag = "campaigns", params(("id" = String, Path, description = "Campaign id", min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._:-]+$")), responses(
    (status = 201, description = "Claimed: the gift waits for delivery", body = ClaimJson),
    (status = 200, description = "Already claimed with this order id and body", body = ClaimJson),
    (status = 400, description = "Malformed request", body = ErrorBody),
    (status = 404, description = "`campaign_not_found`", body = ErrorBody),
    (status = 409, description = "The order id was used for another campaign or user", body = ErrorBody),
    (status = 413, description = "Body too large", body = ErrorBody),
    (status = 422, description = "Refused: `campaign_not_live`, `campaign_not_started`, `campaign_ended`, `per_user_limit_reached`, `daily_limit_reached`, `inventory_exhausted`, `ledger_mismatch`, `capacity_exceeded`, or `reserved_id` for a user id starting with `tally:`", body = ErrorBody),
    (status = 503, description = "Overloaded or unavailable", body = ErrorBody),
))]
pub async fn claim(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(campaign): ApiPath<String>,
    ApiJson(request): ApiJson<ClaimRequest>,
) -> Result<Created<ClaimJson>, ApiError> {
    let command = Command::Claim {
        campaign: parse_id("campaign id", &campaign)?,
        order_id: parse_id("order_id", &request.order_id)?,
        user: parse_id("user", &request.user)?,
    };
    claim_answer(execute(&app, &caller, command).await?, &request.order_id)
}

fn claim_answer(answer: Answer, order_id: &str) -> Result<Created<ClaimJson>, ApiError> {
    match answer {
        Answer::Claim { view, created } => Ok((status(created), Json(view.into()))),
        Answer::Conflict => Err(ApiError::conflict(order_id)),
        Answer::Refused(code) => Err(ApiError::refused(code)),
        Answer::Invalid(invalid) => Err(ApiError::invalid_command(&invalid)),
        other => Err(ApiError::internal(format!(
            "unexpected answer to a claim: {other:?}"
        ))),
    }
}

/// Look up a claim by its order id.
#[utoipa::path(get, path = "/v1/claims/{order_id}", tag = "campaigns", params(("order_id" = String, Path, description = "Order id", min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._:-]+$")), responses(
    (status = 200, description = "The claim", body = ClaimJson),
    (status = 400, description = "Malformed order id", body = ErrorBody),
    (status = 404, description = "`claim_not_found`", body = ErrorBody),
    (status = 503, description = "Overloaded or unavailable", body = ErrorBody),
))]
pub async fn get_claim(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(order_id): ApiPath<String>,
) -> Result<Json<ClaimJson>, ApiError> {
    let order_id = parse_id("order_id", &order_id)?;
    let Some(view) = app.engine.claim(order_id).await? else {
        return Err(ApiError::refused(tally_core::CampaignCode::ClaimNotFound));
    };
    if caller.restriction.is_some() {
        let campaign = app.engine.campaign(view.campaign.clone()).await?;
        let ledger = campaign.map(|campaign| campaign.definition.gift_ledger);
        caller.require(
            ledger.as_ref().map(|code| code.as_str()),
            Some(view.user.as_str()),
        )?;
    }
    Ok(Json(view.into()))
}

/// List claims, optionally of one state, in the order they were recorded (reconciliation:
/// `?state=unknown_needs_reconciliation`).
#[utoipa::path(get, path = "/v1/claims", tag = "campaigns", params(ClaimsQuery), responses(
    (status = 200, description = "A page of claims", body = ClaimsJson),
    (status = 400, description = "Malformed query", body = ErrorBody),
    (status = 503, description = "Overloaded or unavailable", body = ErrorBody),
))]
pub async fn list_claims(
    State(app): State<AppState>,
    ApiQuery(query): ApiQuery<ClaimsQuery>,
) -> Result<Json<ClaimsJson>, ApiError> {
    let state = match query.state.as_deref() {
        None => None,
        Some(name) => Some(
            ClaimState::ALL
                .into_iter()
                .find(|state| state.name() == name)
                .ok_or_else(|| {
                    ApiError::invalid(format!(
                        "state: must be pending_delivery, delivered, voided or unknown_needs_reconciliation, found {name:?}"
                    ))
                })?,
        ),
    };
    let limit = parse_page_limit(query.limit, CLAIMS_PAGE_DEFAULT, CLAIMS_PAGE_MAX)?;
    let page = app
        .engine
        .claims(state, query.after, limit as usize)
        .await?;
    Ok(Json(ClaimsJson {
        claims: page.claims.into_iter().map(ClaimJson::from).collect(),
        next: page.next,
    }))
}

/// Record how a claim's delivery ended (reconciliation by an operator).
///
/// `delivered` posts the claim's transfer, `voided` voids it (the unit goes back to the pool
/// and the claim stops counting toward the limits), `unknown_needs_reconciliation` keeps it
/// reserved. A delivered or voided claim is final; repeating its state answers 200.
#[utoipa::path(post, path = "/v1/claims/{order_id}/settle", request_body = SettleRequest, tag = "campaigns", params(("order_id" = String, Path, description = "Order id", min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._:-]+$")), responses(
    (status = 201, description = "Settled now", body = ClaimJson),
    (status = 200, description = "Already in that state", body = ClaimJson),
    (status = 400, description = "Malformed request", body = ErrorBody),
    (status = 404, description = "`claim_not_found`", body = ErrorBody),
    (status = 409, description = "`claim_already_settled`: delivered or voided already", body = ErrorBody),
    (status = 413, description = "Body too large", body = ErrorBody),
    (status = 503, description = "Overloaded or unavailable", body = ErrorBody),
))]
pub async fn settle_claim(
    State(app): State<AppState>,
    caller: Caller,
    ApiPath(order_id): ApiPath<String>,
    ApiJson(request): ApiJson<SettleRequest>,
) -> Result<Created<ClaimJson>, ApiError> {
    let outcome = match request.state.as_str() {
        "delivered" => ClaimState::Delivered,
        "voided" => ClaimState::Voided,
        "unknown_needs_reconciliation" => ClaimState::Unknown,
        other => {
            return Err(ApiError::invalid(format!(
                "state: must be delivered, voided or unknown_needs_reconciliation, found {other:?}"
            )))
        }
    };
    let command = Command::SettleClaim {
        order_id: parse_id("order_id", &order_id)?,
        outcome,
    };
    claim_answer(execute(&app, &caller, command).await?, &order_id)
}
