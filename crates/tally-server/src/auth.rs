//! Authentication and authorization of every request, verified locally.
//!
//! A bearer token is verified against the public keys in the data directory (no network call:
//! an auth service that is down cannot take Tally down), then the route's scope is checked. The
//! caller's ledger and account restriction travels in the request to the engine, which checks it
//! where the ledger of every account is known.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tally_auth::{IssueRequest, KeyRing, Principal, Scope, UnauthorizedReason, Verifier};
use tally_engine::{Restriction, Revocations};

use crate::error::ApiError;
use crate::metrics::AuthRefusal;
use crate::AppState;

/// How the server authenticates.
#[derive(Clone)]
pub enum Auth {
    /// Every request is let through (`--no-auth`, loopback only).
    Disabled,
    /// Every request but health, readiness, the OpenAPI document and the routes in `open`
    /// needs a valid token.
    Tokens {
        /// Checks tokens against the trusted keys.
        verifier: Verifier,
        /// Operator routes opened without a token.
        open: OpenRoutes,
    },
}

/// Operator routes that answer without a token, for clients that cannot send one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenRoutes {
    /// `/metrics`, for scrapers (`--open-metrics`).
    pub metrics: bool,
    /// `/status` and `/status.json`, for browsers and public status pages (`--open-status`).
    pub status: bool,
}

impl OpenRoutes {
    fn opens(self, route: Option<&str>) -> bool {
        match route {
            Some("/metrics") => self.metrics,
            Some("/status" | "/status.json") => self.status,
            _ => false,
        }
    }
}

/// Who is calling, as the handlers see it: the restriction the engine must enforce, if any.
#[derive(Clone, Default)]
pub struct Caller {
    /// The token's principal; `None` when authentication is disabled.
    pub principal: Option<Principal>,
    /// Ledgers and accounts the token is limited to; `None` when unrestricted.
    pub restriction: Option<Arc<Restriction>>,
}

impl Caller {
    /// Whether an account (by ledger and id) is within the caller's restriction.
    pub fn allows(&self, ledger: Option<&str>, account: Option<&str>) -> bool {
        self.restriction
            .as_ref()
            .is_none_or(|restriction| restriction.allows(ledger, account))
    }

    /// A 403 unless the account is within the caller's restriction.
    pub fn require(&self, ledger: Option<&str>, account: Option<&str>) -> Result<(), ApiError> {
        if self.allows(ledger, account) {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "the token does not allow this ledger or account",
            ))
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Caller, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Caller>()
            .cloned()
            .unwrap_or_default())
    }
}

/// Creates the key pair and an admin token on first start, loads the trusted public keys, and
/// re-reads them every second so that keys can be added and retired without a restart.
pub(crate) fn start_verifier(
    data_dir: &Path,
    revocations: Arc<Revocations>,
) -> Result<Verifier, tally_auth::AuthError> {
    if KeyRing::list(data_dir)?.is_empty() {
        let key_id = KeyRing::init(data_dir)?;
        let request = IssueRequest {
            subject: "admin".into(),
            scopes: vec![Scope::Admin],
            ledgers: Vec::new(),
            accounts: Vec::new(),
            ttl: ADMIN_TOKEN_TTL,
        };
        let (token, claims) = KeyRing::issue(data_dir, request)?;
        let path = data_dir.join(ADMIN_TOKEN_FILE_NAME);
        tally_auth::write_secret_file(&path, format!("{token}\n").as_bytes())?;
        tracing::warn!(
            key_id = %key_id,
            token_id = %claims.token_id,
            "created a signing key and wrote an admin token to {} (mode 0600): use it as `Authorization: Bearer TOKEN`, or TALLY_TOKEN for the CLI",
            path.display()
        );
    }
    let verifier = Verifier::load(
        data_dir,
        Arc::new(move |token_id: &str| revocations.contains(token_id)),
    )?;
    let reloading = verifier.clone();
    tokio::runtime::Handle::current().spawn(async move {
        loop {
            tokio::time::sleep(KEY_RELOAD_INTERVAL).await;
            let verifier = reloading.clone();
            match tokio::task::spawn_blocking(move || verifier.reload_if_changed()).await {
                Ok(Ok(true)) => tracing::info!("trusted keys reloaded"),
                Ok(Ok(false)) => {}
                Ok(Err(error)) => tracing::error!(%error, "cannot reload the trusted keys; keeping the previous ones"),
                Err(_) => return,
            }
        }
    });
    Ok(verifier)
}

/// The file the first start writes the admin token to, in the data directory.
pub const ADMIN_TOKEN_FILE_NAME: &str = "admin.token";

/// How long the first admin token lives; issue others with `tally keys issue`.
const ADMIN_TOKEN_TTL: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// How often the trusted keys are re-read: a retired key is refused within this long.
const KEY_RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// The scope a route needs; `None` for the open ones.
fn required_scope(method: &Method, route: Option<&str>) -> Option<Scope> {
    match (method, route?) {
        (_, "/healthz" | "/readyz" | "/v1/openapi.json") => None,
        (_, "/metrics" | "/status" | "/status.json") => Some(Scope::Operator),
        (&Method::POST, "/v1/revocations") => Some(Scope::Admin),
        // Campaigns are managed, and claims settled by hand, by administrators; claiming is a
        // write like any other.
        (
            &Method::POST,
            "/v1/campaigns" | "/v1/campaigns/{id}/publish" | "/v1/claims/{order_id}/settle",
        ) => Some(Scope::Admin),
        // Listing claims shows every user's orders: for administrators (reconciliation).
        (&Method::GET | &Method::HEAD, "/v1/claims") => Some(Scope::Admin),
        (&Method::GET | &Method::HEAD, _) => Some(Scope::Read),
        _ => Some(Scope::Write),
    }
}

/// Middleware: verifies the bearer token and the route's scope, and hands the caller on.
pub(crate) async fn authenticate(
    State(app): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    // Exhaustive on purpose: a new mode must decide here what it lets through.
    let (verifier, open) = match &app.auth {
        Auth::Disabled => return next.run(request).await,
        Auth::Tokens { verifier, open } => (verifier, *open),
    };
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_string());
    let scope = match required_scope(request.method(), route.as_deref()) {
        None => return next.run(request).await,
        Some(Scope::Operator) if open.opens(route.as_deref()) => return next.run(request).await,
        Some(scope) => scope,
    };
    // The scheme name is case-insensitive (RFC 9110, section 11.1).
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token);
    let Some(token) = token else {
        return unauthorized(
            "missing bearer token: send `Authorization: Bearer TOKEN`",
            UnauthorizedReason::Missing,
        );
    };
    let principal = match verifier.verify(token.trim()) {
        Ok(principal) => principal,
        Err(refusal) => {
            tracing::debug!(reason = %refusal, "token refused");
            return unauthorized(refusal.client_message(), refusal.reason());
        }
    };
    if !principal.allows(scope) {
        let mut response = ApiError::forbidden(format!(
            "the token lacks the `{scope}` scope this request needs"
        ))
        .into_response();
        response.extensions_mut().insert(AuthRefusal("scope"));
        return response;
    }
    let restriction = principal.is_restricted().then(|| {
        Arc::new(Restriction {
            ledgers: principal.ledgers().to_vec(),
            accounts: principal.accounts().to_vec(),
        })
    });
    request.extensions_mut().insert(Caller {
        principal: Some(principal),
        restriction,
    });
    next.run(request).await
}

/// A 401 with `message` for the client; `reason` (never shown to the client) is counted.
fn unauthorized(message: &str, reason: UnauthorizedReason) -> Response {
    let mut response = ApiError {
        violations: None,
        status: StatusCode::UNAUTHORIZED,
        code: "unauthorized",
        message: message.to_string(),
    }
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
        .extensions_mut()
        .insert(AuthRefusal(reason.as_str()));
    response
}
