//! The HTTP layer of Tally: the `/v1` JSON API, health, metrics and the OpenAPI document.
//!
//! It is thin on purpose: handlers parse and validate input into core commands, hand them to
//! the engine ([`tally_engine::EngineHandle`]) or queries to the read model
//! ([`tally_read::ReadModel`]), and render the answer. Every malformed input becomes a 4xx with
//! a JSON error body before anything reaches the engine, so nothing half-parsed is ever applied.
//!
//! ```no_run
//! # async fn example() -> Result<(), tally_server::ServeError> {
//! let config = tally_server::ServeConfig::new("./tally-data".into(), "127.0.0.1:7070".parse().unwrap());
//! tally_server::serve(config, |address| println!("listening on http://{address}")).await
//! # }
//! ```
//!
//! Key design choice: the router is a plain `fn app(state) -> Router`, and limits (body size,
//! concurrency, timeouts) are tower layers around it, so tests can drive it without a socket.
#![deny(missing_docs)]

pub mod api;
pub mod auth;
mod campaigns;
pub mod deliver;
pub mod error;
mod extract;
pub mod feed;
pub mod limits;
mod metrics;
mod openapi;
mod read_slot;
mod request_id;
mod routes;
mod shutdown;
pub mod status;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use tally_engine::{Engine, EngineConfig, EngineError, EngineHandle};
use tally_offline::OfflineExecutor;
use tally_read::{ProjectorOptions, ReadModel};
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;

pub use metrics::ServerMetrics;
pub use read_slot::ReadSlot;
pub use shutdown::ShutdownSignals;

/// What every handler gets: the engine, the read model and the metrics, behind one `Arc`.
///
/// The router clones the state for every request (each `from_fn_with_state` layer and the
/// `State` extractor take their own copy); with a field per `Arc`, channel end and watch
/// receiver, those clones and drops were 7% of the server's CPU under single-transfer load, most
/// of it in atomic counters both cores fight over. One `Arc` makes a clone one increment.
#[derive(Clone)]
pub struct AppState(Arc<AppParts>);

impl AppState {
    /// The state of a router serving `parts`.
    pub fn new(parts: AppParts) -> AppState {
        AppState(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppParts;

    fn deref(&self) -> &AppParts {
        &self.0
    }
}

/// The parts of [`AppState`].
#[derive(Clone)]
pub struct AppParts {
    /// Submits commands and account reads.
    pub engine: EngineHandle,
    /// Answers transfer lookups, history, ledger totals and daily summaries.
    pub read: ReadSlot,
    /// The Prometheus registry.
    pub metrics: Arc<ServerMetrics>,
    /// How requests are authenticated.
    pub auth: auth::Auth,
    /// Availability, dependency health and incidents for the status page.
    pub status: Arc<status::StatusHub>,
    /// Where offline work runs; its jobs show on the status page and in `/metrics`.
    pub offline: OfflineExecutor,
    /// The event feed: the log's readers and the open streams, bounded.
    pub feed: feed::Feed,
}

/// The router with every route and layer.
pub fn app(state: AppState) -> Router {
    let batch =
        post(routes::transfer_batch).layer(DefaultBodyLimit::max(limits::BATCH_BODY_BYTES_MAX));
    Router::new()
        .route("/v1/accounts", post(routes::create_account))
        .route("/v1/accounts/{id}", get(routes::get_account))
        .route("/v1/accounts/{id}/history", get(routes::get_history))
        .route("/v1/ledgers/{code}", get(routes::get_ledger))
        .route("/v1/ledgers/{code}/daily", get(routes::get_ledger_daily))
        .route("/v1/events", get(feed::get_events))
        .route("/v1/events/stream", get(feed::stream_events))
        .route("/v1/deposits", post(routes::deposit))
        .route("/v1/withdrawals", post(routes::withdraw))
        .route("/v1/transfers", post(routes::transfer))
        .route("/v1/transfers/batch", batch)
        .route("/v1/transfers/{id}", get(routes::get_transfer))
        .route("/v1/transfers/{id}/post", post(routes::post_pending))
        .route("/v1/transfers/{id}/void", post(routes::void_pending))
        .route("/v1/revocations", post(routes::revoke))
        .route(
            "/v1/campaigns",
            post(campaigns::define_campaign).layer(DefaultBodyLimit::max(
                tally_campaign::limits::SPEC_BYTES_MAX,
            )),
        )
        .route("/v1/campaigns/{id}", get(campaigns::get_campaign))
        .route(
            "/v1/campaigns/{id}/publish",
            post(campaigns::publish_campaign),
        )
        .route("/v1/campaigns/{id}/claims", post(campaigns::claim))
        .route("/v1/claims", get(campaigns::list_claims))
        .route("/v1/claims/{order_id}", get(campaigns::get_claim))
        .route(
            "/v1/claims/{order_id}/settle",
            post(campaigns::settle_claim),
        )
        .route("/v1/openapi.json", get(routes::openapi))
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .route("/metrics", get(routes::metrics))
        .route("/status", get(routes::status_page))
        .route("/status.json", get(routes::status_json))
        .fallback(routes::no_route)
        .method_not_allowed_fallback(routes::wrong_method)
        .layer(DefaultBodyLimit::max(limits::BODY_BYTES_MAX))
        .layer(
            ServiceBuilder::new()
                // Outermost, so that every answer carries the request id, including those the
                // layers below make (a caught panic, load shedding, a timeout).
                .layer(axum::middleware::from_fn(request_id::assign))
                .layer(CatchPanicLayer::custom(|_panic| {
                    axum::response::IntoResponse::into_response(error::ApiError::internal(
                        "a handler panicked",
                    ))
                }))
                .layer(axum::middleware::from_fn_with_state(
                    state.clone(),
                    metrics::track,
                ))
                .layer(axum::middleware::from_fn_with_state(
                    state.clone(),
                    auth::authenticate,
                ))
                // Shed load before anything that queues: past the concurrency limit a request
                // is refused at once rather than left waiting. The limit is global: the router
                // applies these layers to each route, and a plain concurrency limit would give
                // every route its own.
                .layer(HandleErrorLayer::new(error::from_middleware))
                .load_shed()
                .layer(GlobalConcurrencyLimitLayer::new(
                    limits::CONCURRENT_REQUESTS_MAX,
                ))
                .timeout(limits::REQUEST_TIMEOUT),
        )
        .with_state(state)
}

/// How long the first status evaluation waits for the read model to open.
const STATUS_FIRST_READ_WAIT: Duration = Duration::from_secs(2);

/// How to run the server.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The engine's configuration (data directory and tuning).
    pub engine: EngineConfig,
    /// Where to listen; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Whether requests need tokens.
    pub auth: AuthConfig,
    /// Operator routes open without a token (they need `operator` otherwise).
    pub open: auth::OpenRoutes,
    /// What the status page watches.
    pub status: status::StatusConfig,
    /// The delivery worker's settings; `None` (the default) runs no worker, so claims stay
    /// `pending_delivery` until another process delivers them.
    pub deliveries: Option<deliver::DeliveryConfig>,
}

/// Whether the server requires tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthConfig {
    /// Every request but health, readiness and the OpenAPI document needs a token. On first
    /// start the data directory gets a key pair and an admin token (`admin.token`, mode 0600).
    Required,
    /// No authentication: only for a loopback listen address (checked by the caller).
    Disabled,
}

impl ServeConfig {
    /// Defaults for a data directory and a listen address.
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> ServeConfig {
        ServeConfig {
            engine: EngineConfig::new(data_dir),
            listen,
            auth: AuthConfig::Required,
            open: auth::OpenRoutes::default(),
            status: status::StatusConfig::default(),
            deliveries: None,
        }
    }
}

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The engine failed to open or to shut down.
    #[error("{0}")]
    Engine(#[from] EngineError),
    /// The listen address could not be bound.
    #[error("cannot listen on {address}: {source}; pick another address with --listen")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The keys or the admin token could not be set up.
    #[error("{0}")]
    Auth(#[from] tally_auth::AuthError),
    /// The status file could not be read.
    #[error("{0}")]
    Status(#[from] tally_status::store::StoreError),
    /// The shutdown signals' handlers could not be installed.
    #[error("cannot listen for SIGTERM and SIGINT: {0}")]
    Signals(std::io::Error),
    /// Serving failed.
    #[error("serving HTTP failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Opens the engine and the read model, serves until SIGTERM or Ctrl-C, then shuts down
/// gracefully: stops accepting, lets requests in flight get their (durable) answers, and
/// snapshots the final state. Calls `on_listening` with the bound address once ready.
pub async fn serve(
    config: ServeConfig,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    let engine_config = config.engine.clone();
    let data_dir = engine_config.data_dir.clone();
    // Sets up (and logs) the isolation of offline threads before the first one starts.
    let offline = engine_config.offline.clone();
    let isolation = offline.isolation();
    tracing::info!(
        isolation = isolation.as_str(),
        priority = ?offline.config().priority,
        huge_pages_off = tally_offline::huge_pages_off(),
        "offline work (snapshots, projection, verification, rebuilds) isolated as {}",
        isolation.as_str()
    );
    let opened = tokio::task::spawn_blocking(move || Engine::open(engine_config))
        .await
        .map_err(|error| EngineError::Unavailable(format!("engine start panicked: {error}")))??;
    let recovery = &opened.recovery;
    tracing::info!(
        snapshot = ?recovery.snapshot_position,
        replayed_events = recovery.replayed_events,
        elapsed_ms = recovery.elapsed.as_millis() as u64,
        "{}", recovery.log
    );
    for repair in &recovery.log.repairs {
        tracing::warn!(?repair, "log repaired on open");
    }
    let read_path = data_dir.join(tally_read::READ_MODEL_FILE_NAME);
    let feed = opened.feed;
    let event_feed = feed::Feed::new(feed.reader.another());
    let projector_offline = offline.clone();
    let read = ReadSlot::opening(move || {
        ReadModel::start_on(
            &projector_offline,
            &read_path,
            feed.reader,
            feed.durable,
            ProjectorOptions::default(),
        )
    });
    let engine = opened.engine;
    let metrics = Arc::new(ServerMetrics::new(&engine.handle(), &read, &offline));
    let auth = match config.auth {
        AuthConfig::Disabled => {
            tracing::warn!(listen = %config.listen, "authentication is OFF (--no-auth): anyone who can reach this address can move value");
            auth::Auth::Disabled
        }
        AuthConfig::Required => {
            let data_dir = data_dir.clone();
            let revocations = engine.handle().revocations();
            let verifier =
                tokio::task::spawn_blocking(move || auth::start_verifier(&data_dir, revocations))
                    .await
                    .map_err(|error| {
                        EngineError::Unavailable(format!("key setup panicked: {error}"))
                    })??;
            auth::Auth::Tokens {
                verifier,
                open: config.open,
            }
        }
    };
    let status_config = config.status;
    let status_dir = data_dir.clone();
    let status =
        tokio::task::spawn_blocking(move || status::StatusHub::open(&status_dir, status_config))
            .await
            .map_err(|error| {
                EngineError::Unavailable(format!("status setup panicked: {error}"))
            })??;
    let state = AppState::new(AppParts {
        engine: engine.handle(),
        read: read.clone(),
        metrics,
        auth,
        status: Arc::new(status),
        offline,
        feed: event_feed,
    });
    // The page has a verdict for every dependency before the first request can ask for it;
    // a read model that opens quickly is not recorded as an incident of every start.
    let _ = read.wait(STATUS_FIRST_READ_WAIT).await;
    let first = state.clone();
    tokio::task::spawn_blocking(move || first.status.refresh(&first))
        .await
        .map_err(|error| {
            EngineError::Unavailable(format!("status evaluation panicked: {error}"))
        })?;
    let monitor = tokio::spawn(status::monitor(state.clone()));
    let worker = config.deliveries.map(|deliveries| {
        tracing::info!("delivery worker started");
        deliver::start(
            engine.handle(),
            state.metrics.dispatch().clone(),
            state.metrics.dispatchers().clone(),
            deliveries,
        )
    });
    let hub = Arc::clone(&state.status);

    // Before the address is announced: a SIGTERM sent once it is must find its handler.
    let signals = ShutdownSignals::install().map_err(ServeError::Signals)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            address: config.listen,
            source,
        })?;
    let address = listener.local_addr()?;
    on_listening(address);
    let router = app(state);
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        // Answers are small and latency matters more than packet count.
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal(signals))
        .await?;

    tracing::info!("shutting down: finishing the batch in flight and writing a snapshot");
    monitor.abort();
    if let Some(worker) = worker {
        // Attempts in flight are abandoned; the log says where each claim stands.
        worker.abort();
    }
    // The read model may still be opening; its checkpoint is safe either way, so wait briefly.
    let read = read.wait(limits::READ_WAIT_MAX).await.ok();
    tokio::task::spawn_blocking(move || {
        if let Err(error) = hub.save() {
            tracing::warn!(%error, "cannot save the status file");
        }
        if let Some(read) = read {
            read.shutdown();
        }
        engine.shutdown()
    })
    .await
    .map_err(|error| EngineError::Unavailable(format!("engine shutdown panicked: {error}")))??;
    Ok(())
}

async fn shutdown_signal(signals: ShutdownSignals) {
    signals.received().await;
    // Let the in-flight answers go out before the listener closes.
    tokio::time::sleep(Duration::from_millis(10)).await;
}
