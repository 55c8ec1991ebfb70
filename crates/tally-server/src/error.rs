//! The one error type of the HTTP layer: every failure becomes a JSON body with a stable code
//! and the request's id, so that a client reporting an error points at the server's log lines.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use tally_core::{CampaignCode, InvalidCommand, RejectCode};
use tally_engine::EngineError;
use utoipa::ToSchema;

use crate::request_id;

/// An error answer: `{"error":{"code","message","request_id"}}` with a matching status.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable code.
    pub code: &'static str,
    /// A sentence for humans.
    pub message: String,
    /// For an invalid campaign: every rule it breaks.
    pub violations: Option<Vec<ViolationJson>>,
}

/// One rule a campaign breaks, as `tally campaign check --json` prints it.
#[derive(Serialize, ToSchema, Clone, Debug, PartialEq, Eq)]
pub struct ViolationJson {
    /// The field, dotted (`delivery.read_timeout_ms`, `delivery.primary[0]`).
    pub field: String,
    /// The rule's stable code, such as `read_timeout_not_above_connect`.
    pub rule: String,
    /// What is wrong, with the values found.
    pub message: String,
    /// How to fix it.
    pub fix: String,
}

/// The body of every error answer.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: RequestError,
}

/// What went wrong with a request.
#[derive(Serialize, ToSchema, Clone, Debug, PartialEq, Eq)]
pub struct RequestError {
    /// Stable code: `invalid_request`, `not_found`, `conflict`, `insufficient_funds`,
    /// `ledger_mismatch`, `already_resolved`, `not_pending`, `exceeds_pending_amount`,
    /// `overflow`, `linked_failed`, `payload_too_large`, `method_not_allowed`, `overloaded`,
    /// `unauthorized`, `forbidden`, `unavailable`, `internal`, `reserved_id`, and for campaigns
    /// and claims
    /// `campaign_invalid`, `campaign_not_found`, `claim_not_found`, `campaign_not_live`,
    /// `campaign_not_started`, `campaign_ended`, `per_user_limit_reached`,
    /// `daily_limit_reached`, `inventory_exhausted`, `campaign_not_verified`,
    /// `claim_already_settled`, `attempt_out_of_order`, `capacity_exceeded`.
    pub code: String,
    /// A sentence for humans.
    pub message: String,
    /// The request's id, also in the `X-Request-Id` answer header: the client's own
    /// `X-Request-Id` if it sent one of 1 to 64 visible ASCII characters, otherwise one the
    /// server generated. The server's log lines about the request carry it; quote it when
    /// reporting a problem.
    pub request_id: String,
    /// `campaign_invalid` only: every rule the campaign breaks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub violations: Option<Vec<ViolationJson>>,
}

/// What went wrong with one transfer of a batch. The batch's own answer names the request (in
/// its `X-Request-Id` header), so the items do not repeat it.
#[derive(Serialize, ToSchema, Clone, Debug, PartialEq, Eq)]
pub struct ErrorDetail {
    /// Stable code, from the same set as an error answer's (`RequestError`).
    pub code: String,
    /// A sentence for humans.
    pub message: String,
}

impl ApiError {
    /// A 400 `invalid_request`.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError {
            violations: None,
            status: StatusCode::BAD_REQUEST,
            code: "invalid_request",
            message: message.into(),
        }
    }

    /// A 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            violations: None,
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: message.into(),
        }
    }

    /// A 409 `conflict`: the id was used before with another body.
    pub fn conflict(id: &str) -> ApiError {
        ApiError {
            violations: None,
            status: StatusCode::CONFLICT,
            code: "conflict",
            message: format!(
                "id {id:?} was already used with a different body; use a new id for a new command"
            ),
        }
    }

    /// A 413 `payload_too_large`.
    pub fn payload_too_large() -> ApiError {
        ApiError {
            violations: None,
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "payload_too_large",
            message: "request body is larger than this endpoint accepts".into(),
        }
    }

    /// A 403 `forbidden`: the token is valid but does not allow this.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError {
            violations: None,
            status: StatusCode::FORBIDDEN,
            code: "forbidden",
            message: message.into(),
        }
    }

    /// A 503 `overloaded`: retry later.
    pub fn overloaded(message: impl Into<String>) -> ApiError {
        ApiError {
            violations: None,
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "overloaded",
            message: message.into(),
        }
    }

    /// A 503 `unavailable`.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            violations: None,
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "unavailable",
            message: message.into(),
        }
    }

    /// The answer to a refusal of the ledger rules.
    pub fn rejected(code: RejectCode) -> ApiError {
        let status = match code {
            RejectCode::NotFound => StatusCode::NOT_FOUND,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError {
            violations: None,
            status,
            code: code.as_str(),
            message: code.message().to_string(),
        }
    }

    /// The answer to a command the engine found malformed: a 400 `invalid_request`, but a 422
    /// `reserved_id` for an id of the ledger's own (`tally:...`), which is well-formed and only
    /// refused by the ledger's rules.
    pub fn invalid_command(invalid: &InvalidCommand) -> ApiError {
        match invalid {
            InvalidCommand::Reserved(_) => ApiError {
                violations: None,
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: "reserved_id",
                message: invalid.to_string(),
            },
            other => ApiError::invalid(other.to_string()),
        }
    }

    /// The answer to a refusal of a campaign or claim command.
    pub fn refused(code: CampaignCode) -> ApiError {
        let status = match code {
            CampaignCode::CampaignNotFound | CampaignCode::ClaimNotFound => StatusCode::NOT_FOUND,
            CampaignCode::CampaignNotVerified
            | CampaignCode::ClaimAlreadySettled
            | CampaignCode::AttemptOutOfOrder => StatusCode::CONFLICT,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError {
            violations: None,
            status,
            code: code.as_str(),
            message: code.message().to_string(),
        }
    }

    /// A 422 `campaign_invalid` listing every rule the campaign breaks.
    pub fn campaign_invalid(violations: Vec<tally_campaign::Violation>) -> ApiError {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "campaign_invalid",
            message: format!(
                "the campaign breaks {} rule(s); each is listed with its field and a fix",
                violations.len()
            ),
            violations: Some(
                violations
                    .into_iter()
                    .map(|violation| ViolationJson {
                        field: violation.field,
                        rule: violation.rule.code().to_string(),
                        message: violation.message,
                        fix: violation.fix,
                    })
                    .collect(),
            ),
        }
    }

    /// A 500 whose detail goes to the log, not to the client.
    pub fn internal(detail: impl std::fmt::Display) -> ApiError {
        tracing::error!(%detail, "internal error");
        ApiError {
            violations: None,
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: "internal error; see the server log".into(),
        }
    }

    pub(crate) fn detail(&self) -> ErrorDetail {
        ErrorDetail {
            code: self.code.to_string(),
            message: self.message.clone(),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> ApiError {
        match error {
            EngineError::Forbidden(reason) => ApiError::forbidden(reason),
            EngineError::Overloaded => ApiError::overloaded(error.to_string()),
            other => ApiError::unavailable(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Every answer of the router is made inside the request-id middleware; outside it (a
        // caller rendering an error itself) a fresh id keeps the body in its documented shape.
        let request_id = request_id::current().unwrap_or_else(request_id::generate);
        let body = ErrorBody {
            error: RequestError {
                code: self.code.to_string(),
                message: self.message,
                request_id,
                violations: self.violations,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.code == "overloaded" {
            response
                .headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        response
    }
}

/// Turns an error of a tower middleware (timeout, load shedding) into an answer.
pub async fn from_middleware(error: tower::BoxError) -> ApiError {
    if error.is::<tower::timeout::error::Elapsed>() {
        ApiError::unavailable("the request took too long; retry with the same ids")
    } else if error.is::<tower::load_shed::error::Overloaded>() {
        ApiError {
            violations: None,
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "overloaded",
            message: "too many requests in flight; retry later with the same ids".into(),
        }
    } else {
        ApiError::internal(error)
    }
}
