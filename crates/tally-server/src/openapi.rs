//! The OpenAPI document, generated from the handlers and types, built once.

use std::sync::OnceLock;

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::api::*;
use crate::error::{ErrorBody, ErrorDetail, RequestError, ViolationJson};
use crate::{campaigns, feed, routes};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tally",
        description = "A self-hosted, event-sourced ledger. Amounts are integers in minor units; ids are 1–128 characters of [A-Za-z0-9._:-]."
    ),
    paths(
        routes::create_account,
        routes::get_account,
        routes::get_history,
        routes::get_ledger,
        routes::get_ledger_daily,
        feed::get_events,
        feed::stream_events,
        routes::deposit,
        routes::withdraw,
        routes::transfer,
        routes::transfer_batch,
        routes::get_transfer,
        routes::post_pending,
        routes::void_pending,
        routes::revoke,
        campaigns::define_campaign,
        campaigns::get_campaign,
        campaigns::publish_campaign,
        campaigns::claim,
        campaigns::get_claim,
        campaigns::list_claims,
        campaigns::settle_claim,
        routes::healthz,
        routes::readyz,
        routes::metrics,
        routes::status_page,
        routes::status_json,
        routes::openapi,
    ),
    components(schemas(
        CreateAccountRequest,
        DepositRequest,
        TransferRequest,
        PostRequest,
        VoidRequest,
        BatchRequest,
        AccountJson,
        TransferJson,
        BatchResponse,
        BatchItem,
        HistoryJson,
        HistoryEntryJson,
        LedgerJson,
        DailyJson,
        DayJson,
        EventsJson,
        EventJson,
        HealthJson,
        ErrorBody,
        RequestError,
        ErrorDetail,
        RevocationRequest,
        RevocationJson,
        CampaignRequest,
        DeliveryJson,
        CampaignJson,
        ClaimRequest,
        ClaimJson,
        ClaimsJson,
        SettleRequest,
        ViolationJson
    )),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

/// Documents the bearer token every route needs but health, readiness and this document, and
/// the 401 and 403 answers that come with it.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("PASETO v4.public")
                    .build(),
            ),
        );
        let error = || {
            ResponseBuilder::new().content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            if matches!(path.as_str(), "/healthz" | "/readyz" | "/v1/openapi.json") {
                continue;
            }
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
                &mut item.head,
            ];
            for operation in operations.into_iter().flatten() {
                operation.security = Some(vec![SecurityRequirement::new(
                    "bearer",
                    Vec::<String>::new(),
                )]);
                let responses = &mut operation.responses.responses;
                responses.insert(
                    "401".into(),
                    error()
                        .description("Missing, malformed, expired, wrongly signed or revoked token")
                        .build()
                        .into(),
                );
                responses.insert("403".into(), error().description("The token lacks the scope, or the ledger or account is outside its restriction").build().into());
            }
        }
    }
}

/// The document as JSON text.
pub fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let mut document =
            serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serializes");
        widen_unsigned(&mut document);
        serde_json::to_string_pretty(&document).expect("the OpenAPI document serializes")
    })
}

/// utoipa documents a `u64` as `int64` with a minimum, whose range stops at 2^63 - 1, so that a
/// client trusting the document would refuse amounts and positions Tally gives and takes. Every
/// such integer becomes `uint64` with its real maximum, written exactly (utoipa's own maximum is
/// a float, which cannot hold 2^64 - 1).
fn widen_unsigned(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(object) => {
            let unsigned = object.get("format").and_then(|format| format.as_str()) == Some("int64")
                && object
                    .get("minimum")
                    .and_then(|minimum| minimum.as_f64())
                    .is_some_and(|minimum| minimum >= 0.0);
            if unsigned {
                object.insert("format".into(), "uint64".into());
                object.insert("maximum".into(), u64::MAX.into());
            }
            object.values_mut().for_each(widen_unsigned);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(widen_unsigned),
        _ => {}
    }
}
