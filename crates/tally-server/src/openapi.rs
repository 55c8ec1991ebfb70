//! The OpenAPI document, generated from the handlers and types, built once.

use std::sync::OnceLock;

use utoipa::OpenApi;

use crate::api::*;
use crate::error::{ErrorBody, ErrorDetail};
use crate::routes;

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
        routes::deposit,
        routes::withdraw,
        routes::transfer,
        routes::transfer_batch,
        routes::get_transfer,
        routes::post_pending,
        routes::void_pending,
        routes::healthz,
        routes::readyz,
        routes::metrics,
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
        HealthJson,
        ErrorBody,
        ErrorDetail
    ))
)]
struct ApiDoc;

/// The document as JSON text.
pub fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serializes")
    })
}
