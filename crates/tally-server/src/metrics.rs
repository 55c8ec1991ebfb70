//! `/metrics`: the engine's series plus the server's own, in the OpenMetrics text format.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tally_engine::EngineMetrics;

use crate::AppState;

/// Labels of a request series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
    status: u16,
}

/// The registry and the series the server keeps itself.
pub struct ServerMetrics {
    registry: Registry,
    requests: Family<RouteLabels, Counter>,
    request_seconds: Family<RouteLabels, Histogram>,
    durable_position: Gauge,
    read_model_position: Gauge,
    queued_commands: Gauge,
}

impl ServerMetrics {
    /// A registry holding the engine's series and the server's.
    pub fn new(engine: &EngineMetrics) -> ServerMetrics {
        let mut registry = Registry::default();
        engine.register(&mut registry);
        let requests = Family::<RouteLabels, Counter>::default();
        let request_seconds = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_5, 2.0, 14))
        });
        let (durable_position, read_model_position, queued_commands) =
            (Gauge::default(), Gauge::default(), Gauge::default());
        let http = registry.sub_registry_with_prefix("tally_http");
        http.register(
            "requests",
            "HTTP requests answered, by route and status",
            requests.clone(),
        );
        http.register(
            "request_seconds",
            "Seconds to answer an HTTP request",
            request_seconds.clone(),
        );
        let log = registry.sub_registry_with_prefix("tally");
        log.register(
            "durable_position",
            "Position up to which the log is durable",
            durable_position.clone(),
        );
        log.register(
            "read_model_position",
            "Position up to which the read model has projected",
            read_model_position.clone(),
        );
        log.register(
            "queued_commands",
            "Commands waiting for the state thread",
            queued_commands.clone(),
        );
        ServerMetrics {
            registry,
            requests,
            request_seconds,
            durable_position,
            read_model_position,
            queued_commands,
        }
    }

    pub(crate) fn render(&self, app: &AppState) -> Result<String, std::fmt::Error> {
        self.durable_position
            .set(gauge(app.engine.durable_position()));
        if let Some(Ok(read)) = app.read.get() {
            self.read_model_position.set(gauge(read.position()));
        }
        self.queued_commands
            .set(gauge(app.engine.queued_commands() as u64));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

fn gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Middleware that counts and times every request by its route template (not its raw path,
/// so that ids do not make the series unbounded).
pub(crate) async fn track(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |path| path.as_str().to_string());
    let response = next.run(request).await;
    app.status.record(&route, response.status());
    let labels = RouteLabels {
        method,
        route,
        status: response.status().as_u16(),
    };
    app.metrics.requests.get_or_create(&labels).inc();
    app.metrics
        .request_seconds
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
}
