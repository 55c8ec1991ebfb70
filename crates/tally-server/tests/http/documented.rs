//! Every status code the OpenAPI document lists is real: for each operation and status there is
//! a request in [`PRODUCERS`] that gets exactly that status, and every producer is documented.
//! Schemathesis checks that answers are documented; this checks the converse.

use std::collections::BTreeSet;

use axum::http::StatusCode;
use tally_auth::Scope;

use crate::support::{assert_error_body, TestApp};

/// Who sends a producer's request.
#[derive(Clone, Copy, Debug)]
enum Caller {
    Admin,
    /// No `Authorization` header.
    Anonymous,
    /// A valid token with only this scope.
    Only(Scope),
}

/// The state of the server a producer's request meets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Server {
    /// Running, holding [`SETUP`].
    Running,
    /// Its read model failed to open.
    ReadModelFailed,
    /// Holding as many event streams open as it keeps.
    StreamsFull,
    /// Its engine stopped.
    EngineStopped,
}

struct Producer {
    method: &'static str,
    /// The path as the document writes it.
    route: &'static str,
    status: u16,
    server: Server,
    caller: Caller,
    path: &'static str,
    body: &'static str,
}

const fn produce(
    method: &'static str,
    route: &'static str,
    status: u16,
    path: &'static str,
    body: &'static str,
) -> Producer {
    Producer {
        method,
        route,
        status,
        server: Server::Running,
        caller: Caller::Admin,
        path,
        body,
    }
}

const fn by(caller: Caller, producer: Producer) -> Producer {
    Producer { caller, ..producer }
}

const fn on(server: Server, producer: Producer) -> Producer {
    Producer { server, ..producer }
}

const READ: Caller = Caller::Only(Scope::Read);
const WRITE: Caller = Caller::Only(Scope::Write);

/// A live campaign open from 2020 to 2200, one gift per user.
const SPRING: &str = r#"{"id":"spring","gift_ledger":"GIFT","inventory":100,"per_user_limit":1,"daily_limit":100,"timezone":"UTC","starts_at":"2020-01-01T00:00:00Z","ends_at":"2200-01-01T00:00:00Z","verification_account":"ver","delivery":{"primary":["https://gifts.example.com/deliver"],"connect_timeout_ms":200,"read_timeout_ms":1500,"max_read_timeouts":2,"retry_budget_percent":10}}"#;
/// A campaign left in draft.
const DRAFT: &str = r#"{"id":"draft","gift_ledger":"GIFT","inventory":100,"per_user_limit":1,"daily_limit":100,"timezone":"UTC","starts_at":"2020-01-01T00:00:00Z","ends_at":"2200-01-01T00:00:00Z","verification_account":"ver","delivery":{"primary":["https://gifts.example.com/deliver"],"connect_timeout_ms":200,"read_timeout_ms":1500,"max_read_timeouts":2,"retry_budget_percent":10}}"#;
/// A new campaign, and the same id with another inventory.
const AUTUMN: &str = r#"{"id":"autumn","gift_ledger":"GIFT","inventory":100,"per_user_limit":1,"daily_limit":100,"timezone":"UTC","starts_at":"2020-01-01T00:00:00Z","ends_at":"2200-01-01T00:00:00Z","verification_account":"ver","delivery":{"primary":["https://gifts.example.com/deliver"],"connect_timeout_ms":200,"read_timeout_ms":1500,"max_read_timeouts":2,"retry_budget_percent":10}}"#;
const AUTUMN_OTHER: &str = r#"{"id":"autumn","gift_ledger":"GIFT","inventory":101,"per_user_limit":1,"daily_limit":100,"timezone":"UTC","starts_at":"2020-01-01T00:00:00Z","ends_at":"2200-01-01T00:00:00Z","verification_account":"ver","delivery":{"primary":["https://gifts.example.com/deliver"],"connect_timeout_ms":200,"read_timeout_ms":1500,"max_read_timeouts":2,"retry_budget_percent":10}}"#;
/// A campaign that breaks a rule: the read timeout is below the connect timeout.
const BROKEN: &str = r#"{"id":"broken","gift_ledger":"GIFT","inventory":100,"per_user_limit":1,"daily_limit":100,"timezone":"UTC","starts_at":"2020-01-01T00:00:00Z","ends_at":"2200-01-01T00:00:00Z","verification_account":"ver","delivery":{"primary":["https://gifts.example.com/deliver"],"connect_timeout_ms":200,"read_timeout_ms":150,"max_read_timeouts":1,"retry_budget_percent":10}}"#;

/// What the running server holds before the producers run, in order.
const SETUP: [(&str, &str); 12] = [
    ("/v1/accounts", r#"{"id":"a","ledger":"USD"}"#),
    ("/v1/accounts", r#"{"id":"b","ledger":"USD"}"#),
    ("/v1/accounts", r#"{"id":"e","ledger":"EUR"}"#),
    ("/v1/deposits", r#"{"id":"d1","account":"a","amount":100}"#),
    (
        "/v1/transfers",
        r#"{"id":"p1","from":"a","to":"b","amount":5,"pending":true}"#,
    ),
    (
        "/v1/transfers",
        r#"{"id":"p2","from":"a","to":"b","amount":5,"pending":true}"#,
    ),
    (
        "/v1/transfers",
        r#"{"id":"p3","from":"a","to":"b","amount":5,"pending":true}"#,
    ),
    ("/v1/campaigns", SPRING),
    ("/v1/campaigns", DRAFT),
    (
        "/v1/campaigns/spring/claims",
        r#"{"order_id":"v1","user":"ver"}"#,
    ),
    ("/v1/claims/v1/settle", r#"{"state":"delivered"}"#),
    ("/v1/campaigns/spring/publish", ""),
];

/// A body over the 64 KiB limit of a single command, one over the 8 MiB limit of a batch, and
/// one over the 256 KiB limit of a campaign.
const BIG: &str = "BIG";
const HUGE: &str = "HUGE";
const BIG_CAMPAIGN: &str = "BIG_CAMPAIGN";

const CLAIM: &str = r#"{"order_id":"c1","user":"alice"}"#;

/// Requests that produce each documented status, run in this order within each server state.
const PRODUCERS: &[Producer] = &[
    // POST /v1/accounts
    produce(
        "POST",
        "/v1/accounts",
        201,
        "/v1/accounts",
        r#"{"id":"n","ledger":"USD"}"#,
    ),
    produce(
        "POST",
        "/v1/accounts",
        200,
        "/v1/accounts",
        r#"{"id":"n","ledger":"USD"}"#,
    ),
    produce("POST", "/v1/accounts", 400, "/v1/accounts", r#"{"id":"n"}"#),
    by(
        Caller::Anonymous,
        produce(
            "POST",
            "/v1/accounts",
            401,
            "/v1/accounts",
            r#"{"id":"x","ledger":"USD"}"#,
        ),
    ),
    by(
        READ,
        produce(
            "POST",
            "/v1/accounts",
            403,
            "/v1/accounts",
            r#"{"id":"x","ledger":"USD"}"#,
        ),
    ),
    produce(
        "POST",
        "/v1/accounts",
        409,
        "/v1/accounts",
        r#"{"id":"n","ledger":"EUR"}"#,
    ),
    produce("POST", "/v1/accounts", 413, "/v1/accounts", BIG),
    produce(
        "POST",
        "/v1/accounts",
        422,
        "/v1/accounts",
        r#"{"id":"tally:pool:x","ledger":"USD"}"#,
    ),
    on(
        Server::EngineStopped,
        produce(
            "POST",
            "/v1/accounts",
            503,
            "/v1/accounts",
            r#"{"id":"x","ledger":"USD"}"#,
        ),
    ),
    // POST /v1/campaigns
    produce("POST", "/v1/campaigns", 201, "/v1/campaigns", AUTUMN),
    produce("POST", "/v1/campaigns", 200, "/v1/campaigns", AUTUMN),
    produce("POST", "/v1/campaigns", 400, "/v1/campaigns", "{}"),
    by(
        Caller::Anonymous,
        produce("POST", "/v1/campaigns", 401, "/v1/campaigns", AUTUMN),
    ),
    by(
        WRITE,
        produce("POST", "/v1/campaigns", 403, "/v1/campaigns", AUTUMN),
    ),
    produce("POST", "/v1/campaigns", 409, "/v1/campaigns", AUTUMN_OTHER),
    produce("POST", "/v1/campaigns", 413, "/v1/campaigns", BIG_CAMPAIGN),
    produce("POST", "/v1/campaigns", 422, "/v1/campaigns", BROKEN),
    on(
        Server::EngineStopped,
        produce("POST", "/v1/campaigns", 503, "/v1/campaigns", SPRING),
    ),
    // GET /v1/campaigns/{id}
    produce("GET", "/v1/campaigns/{id}", 200, "/v1/campaigns/spring", ""),
    produce("GET", "/v1/campaigns/{id}", 400, "/v1/campaigns/a%20b", ""),
    by(
        Caller::Anonymous,
        produce("GET", "/v1/campaigns/{id}", 401, "/v1/campaigns/spring", ""),
    ),
    by(
        WRITE,
        produce("GET", "/v1/campaigns/{id}", 403, "/v1/campaigns/spring", ""),
    ),
    produce("GET", "/v1/campaigns/{id}", 404, "/v1/campaigns/nope", ""),
    on(
        Server::EngineStopped,
        produce("GET", "/v1/campaigns/{id}", 503, "/v1/campaigns/spring", ""),
    ),
    // POST /v1/campaigns/{id}/publish
    produce(
        "POST",
        "/v1/campaigns/{id}/publish",
        200,
        "/v1/campaigns/spring/publish",
        "",
    ),
    produce(
        "POST",
        "/v1/campaigns/{id}/publish",
        400,
        "/v1/campaigns/a%20b/publish",
        "",
    ),
    by(
        Caller::Anonymous,
        produce(
            "POST",
            "/v1/campaigns/{id}/publish",
            401,
            "/v1/campaigns/spring/publish",
            "",
        ),
    ),
    by(
        WRITE,
        produce(
            "POST",
            "/v1/campaigns/{id}/publish",
            403,
            "/v1/campaigns/spring/publish",
            "",
        ),
    ),
    produce(
        "POST",
        "/v1/campaigns/{id}/publish",
        404,
        "/v1/campaigns/nope/publish",
        "",
    ),
    produce(
        "POST",
        "/v1/campaigns/{id}/publish",
        409,
        "/v1/campaigns/draft/publish",
        "",
    ),
    on(
        Server::EngineStopped,
        produce(
            "POST",
            "/v1/campaigns/{id}/publish",
            503,
            "/v1/campaigns/spring/publish",
            "",
        ),
    ),
    // POST /v1/campaigns/{id}/claims
    produce(
        "POST",
        "/v1/campaigns/{id}/claims",
        201,
        "/v1/campaigns/spring/claims",
        CLAIM,
    ),
    produce(
        "POST",
        "/v1/campaigns/{id}/claims",
        200,
        "/v1/campaigns/spring/claims",
        CLAIM,
    ),
    produce(
        "POST",
        "/v1/campaigns/{id}/claims",
        400,
        "/v1/campaigns/spring/claims",
        "{}",
    ),
    by(
        Caller::Anonymous,
        produce(
            "POST",
            "/v1/campaigns/{id}/claims",
            401,
            "/v1/campaigns/spring/claims",
            CLAIM,
        ),
    ),
    by(
        READ,
        produce(
            "POST",
            "/v1/campaigns/{id}/claims",
            403,
            "/v1/campaigns/spring/claims",
            CLAIM,
        ),
    ),
    produce(
        "POST",
        "/v1/campaigns/{id}/claims",
        404,
        "/v1/campaigns/nope/claims",
        r#"{"order_id":"c9","user":"alice"}"#,
    ),
    produce(
        "POST",
        "/v1/campaigns/{id}/claims",
        409,
        "/v1/campaigns/spring/claims",
        r#"{"order_id":"c1","user":"bob"}"#,
    ),
    produce(
        "POST",
        "/v1/campaigns/{id}/claims",
        413,
        "/v1/campaigns/spring/claims",
        BIG,
    ),
    produce(
        "POST",
        "/v1/campaigns/{id}/claims",
        422,
        "/v1/campaigns/spring/claims",
        r#"{"order_id":"c2","user":"alice"}"#,
    ),
    on(
        Server::EngineStopped,
        produce(
            "POST",
            "/v1/campaigns/{id}/claims",
            503,
            "/v1/campaigns/spring/claims",
            CLAIM,
        ),
    ),
    // GET /v1/claims
    produce(
        "GET",
        "/v1/claims",
        200,
        "/v1/claims?state=pending_delivery",
        "",
    ),
    produce("GET", "/v1/claims", 400, "/v1/claims?state=lost", ""),
    by(
        Caller::Anonymous,
        produce("GET", "/v1/claims", 401, "/v1/claims", ""),
    ),
    by(READ, produce("GET", "/v1/claims", 403, "/v1/claims", "")),
    on(
        Server::EngineStopped,
        produce("GET", "/v1/claims", 503, "/v1/claims", ""),
    ),
    // GET /v1/claims/{order_id}
    produce("GET", "/v1/claims/{order_id}", 200, "/v1/claims/c1", ""),
    produce("GET", "/v1/claims/{order_id}", 400, "/v1/claims/a%20b", ""),
    by(
        Caller::Anonymous,
        produce("GET", "/v1/claims/{order_id}", 401, "/v1/claims/c1", ""),
    ),
    by(
        WRITE,
        produce("GET", "/v1/claims/{order_id}", 403, "/v1/claims/c1", ""),
    ),
    produce("GET", "/v1/claims/{order_id}", 404, "/v1/claims/nope", ""),
    on(
        Server::EngineStopped,
        produce("GET", "/v1/claims/{order_id}", 503, "/v1/claims/c1", ""),
    ),
    // POST /v1/claims/{order_id}/settle
    produce(
        "POST",
        "/v1/claims/{order_id}/settle",
        201,
        "/v1/claims/c1/settle",
        r#"{"state":"unknown_needs_reconciliation"}"#,
    ),
    produce(
        "POST",
        "/v1/claims/{order_id}/settle",
        200,
        "/v1/claims/c1/settle",
        r#"{"state":"unknown_needs_reconciliation"}"#,
    ),
    produce(
        "POST",
        "/v1/claims/{order_id}/settle",
        400,
        "/v1/claims/c1/settle",
        r#"{"state":"lost"}"#,
    ),
    by(
        Caller::Anonymous,
        produce(
            "POST",
            "/v1/claims/{order_id}/settle",
            401,
            "/v1/claims/c1/settle",
            r#"{"state":"voided"}"#,
        ),
    ),
    by(
        WRITE,
        produce(
            "POST",
            "/v1/claims/{order_id}/settle",
            403,
            "/v1/claims/c1/settle",
            r#"{"state":"voided"}"#,
        ),
    ),
    produce(
        "POST",
        "/v1/claims/{order_id}/settle",
        404,
        "/v1/claims/nope/settle",
        r#"{"state":"voided"}"#,
    ),
    produce(
        "POST",
        "/v1/claims/{order_id}/settle",
        409,
        "/v1/claims/v1/settle",
        r#"{"state":"voided"}"#,
    ),
    produce(
        "POST",
        "/v1/claims/{order_id}/settle",
        413,
        "/v1/claims/c1/settle",
        BIG,
    ),
    on(
        Server::EngineStopped,
        produce(
            "POST",
            "/v1/claims/{order_id}/settle",
            503,
            "/v1/claims/c1/settle",
            r#"{"state":"voided"}"#,
        ),
    ),
    // GET /v1/accounts/{id}
    produce("GET", "/v1/accounts/{id}", 200, "/v1/accounts/a", ""),
    produce("GET", "/v1/accounts/{id}", 400, "/v1/accounts/a%20b", ""),
    by(
        Caller::Anonymous,
        produce("GET", "/v1/accounts/{id}", 401, "/v1/accounts/a", ""),
    ),
    by(
        WRITE,
        produce("GET", "/v1/accounts/{id}", 403, "/v1/accounts/a", ""),
    ),
    produce("GET", "/v1/accounts/{id}", 404, "/v1/accounts/nobody", ""),
    on(
        Server::EngineStopped,
        produce("GET", "/v1/accounts/{id}", 503, "/v1/accounts/a", ""),
    ),
    // GET /v1/accounts/{id}/history
    produce(
        "GET",
        "/v1/accounts/{id}/history",
        200,
        "/v1/accounts/a/history?limit=2",
        "",
    ),
    produce(
        "GET",
        "/v1/accounts/{id}/history",
        400,
        "/v1/accounts/a/history?limit=0",
        "",
    ),
    by(
        Caller::Anonymous,
        produce(
            "GET",
            "/v1/accounts/{id}/history",
            401,
            "/v1/accounts/a/history",
            "",
        ),
    ),
    by(
        WRITE,
        produce(
            "GET",
            "/v1/accounts/{id}/history",
            403,
            "/v1/accounts/a/history",
            "",
        ),
    ),
    produce(
        "GET",
        "/v1/accounts/{id}/history",
        404,
        "/v1/accounts/nobody/history",
        "",
    ),
    on(
        Server::ReadModelFailed,
        produce(
            "GET",
            "/v1/accounts/{id}/history",
            503,
            "/v1/accounts/a/history",
            "",
        ),
    ),
    // GET /v1/ledgers/{code}
    produce("GET", "/v1/ledgers/{code}", 200, "/v1/ledgers/USD", ""),
    produce("GET", "/v1/ledgers/{code}", 400, "/v1/ledgers/U%20SD", ""),
    by(
        Caller::Anonymous,
        produce("GET", "/v1/ledgers/{code}", 401, "/v1/ledgers/USD", ""),
    ),
    by(
        WRITE,
        produce("GET", "/v1/ledgers/{code}", 403, "/v1/ledgers/USD", ""),
    ),
    produce("GET", "/v1/ledgers/{code}", 404, "/v1/ledgers/GBP", ""),
    on(
        Server::ReadModelFailed,
        produce("GET", "/v1/ledgers/{code}", 503, "/v1/ledgers/USD", ""),
    ),
    // GET /v1/ledgers/{code}/daily
    produce(
        "GET",
        "/v1/ledgers/{code}/daily",
        200,
        "/v1/ledgers/USD/daily?limit=2",
        "",
    ),
    produce(
        "GET",
        "/v1/ledgers/{code}/daily",
        400,
        "/v1/ledgers/USD/daily?from=2026-02-30",
        "",
    ),
    by(
        Caller::Anonymous,
        produce(
            "GET",
            "/v1/ledgers/{code}/daily",
            401,
            "/v1/ledgers/USD/daily",
            "",
        ),
    ),
    by(
        WRITE,
        produce(
            "GET",
            "/v1/ledgers/{code}/daily",
            403,
            "/v1/ledgers/USD/daily",
            "",
        ),
    ),
    produce(
        "GET",
        "/v1/ledgers/{code}/daily",
        404,
        "/v1/ledgers/GBP/daily",
        "",
    ),
    on(
        Server::ReadModelFailed,
        produce(
            "GET",
            "/v1/ledgers/{code}/daily",
            503,
            "/v1/ledgers/USD/daily",
            "",
        ),
    ),
    // GET /v1/events
    produce("GET", "/v1/events", 200, "/v1/events?limit=2", ""),
    produce("GET", "/v1/events", 400, "/v1/events?limit=0", ""),
    by(
        Caller::Anonymous,
        produce("GET", "/v1/events", 401, "/v1/events", ""),
    ),
    by(WRITE, produce("GET", "/v1/events", 403, "/v1/events", "")),
    // GET /v1/events/stream
    produce(
        "GET",
        "/v1/events/stream",
        200,
        "/v1/events/stream?limit=2",
        "",
    ),
    produce(
        "GET",
        "/v1/events/stream",
        400,
        "/v1/events/stream?limit=0",
        "",
    ),
    by(
        Caller::Anonymous,
        produce("GET", "/v1/events/stream", 401, "/v1/events/stream", ""),
    ),
    by(
        WRITE,
        produce("GET", "/v1/events/stream", 403, "/v1/events/stream", ""),
    ),
    on(
        Server::StreamsFull,
        produce("GET", "/v1/events/stream", 503, "/v1/events/stream", ""),
    ),
    // POST /v1/deposits
    produce(
        "POST",
        "/v1/deposits",
        201,
        "/v1/deposits",
        r#"{"id":"d2","account":"a","amount":1}"#,
    ),
    produce(
        "POST",
        "/v1/deposits",
        200,
        "/v1/deposits",
        r#"{"id":"d2","account":"a","amount":1}"#,
    ),
    produce(
        "POST",
        "/v1/deposits",
        400,
        "/v1/deposits",
        r#"{"id":"d3","account":"a","amount":0}"#,
    ),
    by(
        Caller::Anonymous,
        produce(
            "POST",
            "/v1/deposits",
            401,
            "/v1/deposits",
            r#"{"id":"d3","account":"a","amount":1}"#,
        ),
    ),
    by(
        READ,
        produce(
            "POST",
            "/v1/deposits",
            403,
            "/v1/deposits",
            r#"{"id":"d3","account":"a","amount":1}"#,
        ),
    ),
    produce(
        "POST",
        "/v1/deposits",
        404,
        "/v1/deposits",
        r#"{"id":"d3","account":"nobody","amount":1}"#,
    ),
    produce(
        "POST",
        "/v1/deposits",
        409,
        "/v1/deposits",
        r#"{"id":"d2","account":"a","amount":2}"#,
    ),
    produce("POST", "/v1/deposits", 413, "/v1/deposits", BIG),
    produce(
        "POST",
        "/v1/deposits",
        422,
        "/v1/deposits",
        r#"{"id":"d4","account":"a","amount":18446744073709551615}"#,
    ),
    on(
        Server::EngineStopped,
        produce(
            "POST",
            "/v1/deposits",
            503,
            "/v1/deposits",
            r#"{"id":"d5","account":"a","amount":1}"#,
        ),
    ),
    // POST /v1/withdrawals
    produce(
        "POST",
        "/v1/withdrawals",
        201,
        "/v1/withdrawals",
        r#"{"id":"w1","account":"a","amount":1}"#,
    ),
    produce(
        "POST",
        "/v1/withdrawals",
        200,
        "/v1/withdrawals",
        r#"{"id":"w1","account":"a","amount":1}"#,
    ),
    produce(
        "POST",
        "/v1/withdrawals",
        400,
        "/v1/withdrawals",
        r#"{"id":"w2","account":"a"}"#,
    ),
    by(
        Caller::Anonymous,
        produce(
            "POST",
            "/v1/withdrawals",
            401,
            "/v1/withdrawals",
            r#"{"id":"w2","account":"a","amount":1}"#,
        ),
    ),
    by(
        READ,
        produce(
            "POST",
            "/v1/withdrawals",
            403,
            "/v1/withdrawals",
            r#"{"id":"w2","account":"a","amount":1}"#,
        ),
    ),
    produce(
        "POST",
        "/v1/withdrawals",
        404,
        "/v1/withdrawals",
        r#"{"id":"w2","account":"nobody","amount":1}"#,
    ),
    produce(
        "POST",
        "/v1/withdrawals",
        409,
        "/v1/withdrawals",
        r#"{"id":"w1","account":"a","amount":2}"#,
    ),
    produce("POST", "/v1/withdrawals", 413, "/v1/withdrawals", BIG),
    produce(
        "POST",
        "/v1/withdrawals",
        422,
        "/v1/withdrawals",
        r#"{"id":"w3","account":"a","amount":1000}"#,
    ),
    on(
        Server::EngineStopped,
        produce(
            "POST",
            "/v1/withdrawals",
            503,
            "/v1/withdrawals",
            r#"{"id":"w4","account":"a","amount":1}"#,
        ),
    ),
    // POST /v1/transfers
    produce(
        "POST",
        "/v1/transfers",
        201,
        "/v1/transfers",
        r#"{"id":"t1","from":"a","to":"b","amount":1}"#,
    ),
    produce(
        "POST",
        "/v1/transfers",
        200,
        "/v1/transfers",
        r#"{"id":"t1","from":"a","to":"b","amount":1}"#,
    ),
    produce(
        "POST",
        "/v1/transfers",
        400,
        "/v1/transfers",
        r#"{"id":"t2","from":"a","to":"a","amount":1}"#,
    ),
    by(
        Caller::Anonymous,
        produce(
            "POST",
            "/v1/transfers",
            401,
            "/v1/transfers",
            r#"{"id":"t2","from":"a","to":"b","amount":1}"#,
        ),
    ),
    by(
        READ,
        produce(
            "POST",
            "/v1/transfers",
            403,
            "/v1/transfers",
            r#"{"id":"t2","from":"a","to":"b","amount":1}"#,
        ),
    ),
    produce(
        "POST",
        "/v1/transfers",
        404,
        "/v1/transfers",
        r#"{"id":"t2","from":"a","to":"nobody","amount":1}"#,
    ),
    produce(
        "POST",
        "/v1/transfers",
        409,
        "/v1/transfers",
        r#"{"id":"t1","from":"a","to":"b","amount":2}"#,
    ),
    produce("POST", "/v1/transfers", 413, "/v1/transfers", BIG),
    produce(
        "POST",
        "/v1/transfers",
        422,
        "/v1/transfers",
        r#"{"id":"t3","from":"a","to":"e","amount":1}"#,
    ),
    on(
        Server::EngineStopped,
        produce(
            "POST",
            "/v1/transfers",
            503,
            "/v1/transfers",
            r#"{"id":"t4","from":"a","to":"b","amount":1}"#,
        ),
    ),
    // POST /v1/transfers/batch
    produce(
        "POST",
        "/v1/transfers/batch",
        200,
        "/v1/transfers/batch",
        r#"{"transfers":[{"id":"b1","from":"a","to":"b","amount":1}]}"#,
    ),
    produce(
        "POST",
        "/v1/transfers/batch",
        400,
        "/v1/transfers/batch",
        r#"{"transfers":[]}"#,
    ),
    by(
        Caller::Anonymous,
        produce(
            "POST",
            "/v1/transfers/batch",
            401,
            "/v1/transfers/batch",
            r#"{"transfers":[{"id":"b2","from":"a","to":"b","amount":1}]}"#,
        ),
    ),
    by(
        READ,
        produce(
            "POST",
            "/v1/transfers/batch",
            403,
            "/v1/transfers/batch",
            r#"{"transfers":[{"id":"b2","from":"a","to":"b","amount":1}]}"#,
        ),
    ),
    produce(
        "POST",
        "/v1/transfers/batch",
        413,
        "/v1/transfers/batch",
        HUGE,
    ),
    on(
        Server::EngineStopped,
        produce(
            "POST",
            "/v1/transfers/batch",
            503,
            "/v1/transfers/batch",
            r#"{"transfers":[{"id":"b3","from":"a","to":"b","amount":1}]}"#,
        ),
    ),
    // GET /v1/transfers/{id}
    produce("GET", "/v1/transfers/{id}", 200, "/v1/transfers/d1", ""),
    produce("GET", "/v1/transfers/{id}", 400, "/v1/transfers/d%2F1", ""),
    by(
        Caller::Anonymous,
        produce("GET", "/v1/transfers/{id}", 401, "/v1/transfers/d1", ""),
    ),
    by(
        WRITE,
        produce("GET", "/v1/transfers/{id}", 403, "/v1/transfers/d1", ""),
    ),
    produce(
        "GET",
        "/v1/transfers/{id}",
        404,
        "/v1/transfers/nothing",
        "",
    ),
    on(
        Server::ReadModelFailed,
        produce("GET", "/v1/transfers/{id}", 503, "/v1/transfers/d1", ""),
    ),
    // POST /v1/transfers/{id}/post
    produce(
        "POST",
        "/v1/transfers/{id}/post",
        201,
        "/v1/transfers/p1/post",
        r#"{"id":"x1","amount":2}"#,
    ),
    produce(
        "POST",
        "/v1/transfers/{id}/post",
        200,
        "/v1/transfers/p1/post",
        r#"{"id":"x1","amount":2}"#,
    ),
    produce(
        "POST",
        "/v1/transfers/{id}/post",
        400,
        "/v1/transfers/p1/post",
        r#"{"id":"x2","amount":0}"#,
    ),
    by(
        Caller::Anonymous,
        produce(
            "POST",
            "/v1/transfers/{id}/post",
            401,
            "/v1/transfers/p2/post",
            r#"{"id":"x2"}"#,
        ),
    ),
    by(
        READ,
        produce(
            "POST",
            "/v1/transfers/{id}/post",
            403,
            "/v1/transfers/p2/post",
            r#"{"id":"x2"}"#,
        ),
    ),
    produce(
        "POST",
        "/v1/transfers/{id}/post",
        404,
        "/v1/transfers/nothing/post",
        r#"{"id":"x2"}"#,
    ),
    produce(
        "POST",
        "/v1/transfers/{id}/post",
        409,
        "/v1/transfers/p1/post",
        r#"{"id":"x1","amount":3}"#,
    ),
    produce(
        "POST",
        "/v1/transfers/{id}/post",
        413,
        "/v1/transfers/p2/post",
        BIG,
    ),
    produce(
        "POST",
        "/v1/transfers/{id}/post",
        422,
        "/v1/transfers/p1/post",
        r#"{"id":"x3"}"#,
    ),
    on(
        Server::EngineStopped,
        produce(
            "POST",
            "/v1/transfers/{id}/post",
            503,
            "/v1/transfers/p2/post",
            r#"{"id":"x4"}"#,
        ),
    ),
    // POST /v1/transfers/{id}/void
    produce(
        "POST",
        "/v1/transfers/{id}/void",
        201,
        "/v1/transfers/p2/void",
        r#"{"id":"v1"}"#,
    ),
    produce(
        "POST",
        "/v1/transfers/{id}/void",
        200,
        "/v1/transfers/p2/void",
        r#"{"id":"v1"}"#,
    ),
    produce(
        "POST",
        "/v1/transfers/{id}/void",
        400,
        "/v1/transfers/p3/void",
        r#"{"id":""}"#,
    ),
    by(
        Caller::Anonymous,
        produce(
            "POST",
            "/v1/transfers/{id}/void",
            401,
            "/v1/transfers/p3/void",
            r#"{"id":"v2"}"#,
        ),
    ),
    by(
        READ,
        produce(
            "POST",
            "/v1/transfers/{id}/void",
            403,
            "/v1/transfers/p3/void",
            r#"{"id":"v2"}"#,
        ),
    ),
    produce(
        "POST",
        "/v1/transfers/{id}/void",
        404,
        "/v1/transfers/nothing/void",
        r#"{"id":"v2"}"#,
    ),
    produce(
        "POST",
        "/v1/transfers/{id}/void",
        409,
        "/v1/transfers/p3/void",
        r#"{"id":"v1"}"#,
    ),
    produce(
        "POST",
        "/v1/transfers/{id}/void",
        413,
        "/v1/transfers/p3/void",
        BIG,
    ),
    produce(
        "POST",
        "/v1/transfers/{id}/void",
        422,
        "/v1/transfers/p2/void",
        r#"{"id":"v3"}"#,
    ),
    on(
        Server::EngineStopped,
        produce(
            "POST",
            "/v1/transfers/{id}/void",
            503,
            "/v1/transfers/p3/void",
            r#"{"id":"v4"}"#,
        ),
    ),
    // POST /v1/revocations
    produce(
        "POST",
        "/v1/revocations",
        201,
        "/v1/revocations",
        r#"{"token_id":"tok-1"}"#,
    ),
    produce(
        "POST",
        "/v1/revocations",
        200,
        "/v1/revocations",
        r#"{"token_id":"tok-1"}"#,
    ),
    produce(
        "POST",
        "/v1/revocations",
        400,
        "/v1/revocations",
        r#"{"token_id":"tok 1"}"#,
    ),
    by(
        Caller::Anonymous,
        produce(
            "POST",
            "/v1/revocations",
            401,
            "/v1/revocations",
            r#"{"token_id":"tok-2"}"#,
        ),
    ),
    by(
        WRITE,
        produce(
            "POST",
            "/v1/revocations",
            403,
            "/v1/revocations",
            r#"{"token_id":"tok-2"}"#,
        ),
    ),
    produce("POST", "/v1/revocations", 413, "/v1/revocations", BIG),
    on(
        Server::EngineStopped,
        produce(
            "POST",
            "/v1/revocations",
            503,
            "/v1/revocations",
            r#"{"token_id":"tok-3"}"#,
        ),
    ),
    // Operations
    by(
        Caller::Anonymous,
        produce("GET", "/healthz", 200, "/healthz", ""),
    ),
    by(
        Caller::Anonymous,
        produce("GET", "/readyz", 200, "/readyz", ""),
    ),
    on(
        Server::EngineStopped,
        by(
            Caller::Anonymous,
            produce("GET", "/readyz", 503, "/readyz", ""),
        ),
    ),
    by(
        Caller::Only(Scope::Operator),
        produce("GET", "/metrics", 200, "/metrics", ""),
    ),
    by(
        Caller::Anonymous,
        produce("GET", "/metrics", 401, "/metrics", ""),
    ),
    by(READ, produce("GET", "/metrics", 403, "/metrics", "")),
    by(
        Caller::Only(Scope::Operator),
        produce("GET", "/status", 200, "/status", ""),
    ),
    by(
        Caller::Anonymous,
        produce("GET", "/status", 401, "/status", ""),
    ),
    by(READ, produce("GET", "/status", 403, "/status", "")),
    by(
        Caller::Only(Scope::Operator),
        produce("GET", "/status.json", 200, "/status.json", ""),
    ),
    by(
        Caller::Anonymous,
        produce("GET", "/status.json", 401, "/status.json", ""),
    ),
    by(
        READ,
        produce("GET", "/status.json", 403, "/status.json", ""),
    ),
    by(
        Caller::Anonymous,
        produce("GET", "/v1/openapi.json", 200, "/v1/openapi.json", ""),
    ),
];

/// Every `(method, route, status)` the served OpenAPI document lists.
async fn documented(app: &TestApp) -> BTreeSet<(String, String, u16)> {
    let (status, document) = app.get("/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let mut found = BTreeSet::new();
    for (route, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("a path item") {
            for status in operation["responses"]
                .as_object()
                .expect("responses")
                .keys()
            {
                let status = status.parse().expect("a numeric status");
                found.insert((method.to_uppercase(), route.clone(), status));
            }
        }
    }
    found
}

fn body(body: &str) -> String {
    match body {
        BIG => format!(
            r#"{{"id":"{}"}}"#,
            "x".repeat(tally_server::limits::BODY_BYTES_MAX)
        ),
        HUGE => format!(
            r#"{{"transfers":[],"atomic":{}}}"#,
            " ".repeat(tally_server::limits::BATCH_BODY_BYTES_MAX)
        ),
        BIG_CAMPAIGN => format!(
            r#"{{"id":"{}"}}"#,
            "x".repeat(tally_campaign::limits::SPEC_BYTES_MAX)
        ),
        other => other.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_status_is_produced_by_a_request() {
    let mut app = TestApp::with_auth();
    let producible: BTreeSet<(String, String, u16)> = PRODUCERS
        .iter()
        .map(|producer| {
            (
                producer.method.to_string(),
                producer.route.to_string(),
                producer.status,
            )
        })
        .collect();
    let documented = documented(&app).await;
    let unproduced: Vec<_> = documented.difference(&producible).collect();
    assert!(
        unproduced.is_empty(),
        "documented, but no request in PRODUCERS gets it: {unproduced:?}"
    );
    let undocumented: Vec<_> = producible.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "in PRODUCERS, but not documented: {undocumented:?}"
    );

    for (path, request) in SETUP {
        app.post_ok(path, request).await;
    }
    let mut streams = Vec::new();
    for server in [
        Server::Running,
        Server::ReadModelFailed,
        Server::StreamsFull,
        Server::EngineStopped,
    ] {
        match server {
            Server::Running => {}
            Server::ReadModelFailed => app.fail_read_model().await,
            Server::StreamsFull => {
                for _ in 0..tally_server::limits::EVENT_STREAMS_MAX {
                    let response = app.open_stream("/v1/events/stream").await;
                    assert_eq!(response.status(), StatusCode::OK);
                    streams.push(response);
                }
            }
            Server::EngineStopped => {
                streams.clear();
                app.shutdown_engine().await;
            }
        }
        for producer in PRODUCERS
            .iter()
            .filter(|producer| producer.server == server)
        {
            let authorization = match producer.caller {
                Caller::Admin => None,
                Caller::Anonymous => Some(None),
                Caller::Only(scope) => {
                    Some(Some(format!("Bearer {}", app.issue(&[scope], &[], &[]))))
                }
            };
            let reply = match &authorization {
                None => {
                    app.send(producer.method, producer.path, body(producer.body))
                        .await
                }
                Some(header) => {
                    app.send_as(
                        header.as_deref(),
                        producer.method,
                        producer.path,
                        body(producer.body),
                    )
                    .await
                }
            };
            assert_eq!(
                reply.status.as_u16(),
                producer.status,
                "{} {} by {:?} on a {:?} server: {}",
                producer.method,
                producer.path,
                producer.caller,
                server,
                String::from_utf8_lossy(&reply.body)
            );
            // Every failure is an error body, but readiness, which says why it is not ready.
            let failed = reply.status.is_client_error() || reply.status.is_server_error();
            if failed && producer.route != "/readyz" {
                assert_error_body(&reply.json());
            }
        }
    }
    app.finish().await;
}
