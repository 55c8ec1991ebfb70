//! `/metrics`: the engine's series plus the server's own, named by the Prometheus conventions
//! (base units in the name, `_total` counters) and checked by `promtool check metrics` in the
//! tests.
//!
//! Three kinds of series:
//! - counters and histograms updated where the work happens: the engine's (`tally_engine_*`,
//!   `tally_log_fsync_seconds`) and the HTTP layer's (`tally_http_*`);
//! - the offline executor's (`tally_offline_*`: isolation in force, starvation guard boosts, job
//!   progress), read at scrape time by its own collector (see `tally_offline`);
//! - values read at scrape time through the same accessors a status page uses
//!   ([`EngineHandle`], [`ReadModel`](tally_read::ReadModel)), so the two never disagree, by a
//!   collector that leaves out what does not exist yet (no snapshot, a read model still opening);
//! - nothing keyed by client input: labels are route templates, a fixed set of methods, status
//!   codes and fixed reasons, so the number of series is bounded whatever clients send.
//!
//! The same registry answers in OpenMetrics (what Prometheus asks for) or in the Prometheus
//! text format (what `curl` and `promtool` get), chosen by the `Accept` header.

use std::fmt;
use std::time::{Instant, SystemTime};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, EncodeMetric,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::TypedMetric;
use prometheus_client::registry::Registry;
use tally_engine::EngineHandle;
use tally_offline::OfflineExecutor;

use crate::{AppState, ReadSlot};

/// Labels of a request series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: String,
    status: u16,
}

/// Labels of an authentication or authorization refusal.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthLabels {
    status: u16,
    reason: &'static str,
}

/// Why the auth middleware refused a request: the `reason` label of
/// `tally_http_auth_failures_total`, handed to [`track`] as an extension of the answer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AuthRefusal(pub(crate) &'static str);

/// The registry and the series the server keeps itself.
pub struct ServerMetrics {
    registry: Registry,
    requests: Family<RouteLabels, Counter>,
    request_seconds: Family<RouteLabels, Histogram>,
    auth_failures: Family<AuthLabels, Counter>,
    dispatch: tally_dispatch::DispatchMetrics,
    dispatchers: crate::deliver::Dispatchers,
}

impl ServerMetrics {
    /// The delivery dispatchers' families, shared by the dispatcher of every campaign.
    pub fn dispatch(&self) -> &tally_dispatch::DispatchMetrics {
        &self.dispatch
    }

    /// The delivery worker's dispatchers, whose 10-minute windows a scrape reads.
    pub fn dispatchers(&self) -> &crate::deliver::Dispatchers {
        &self.dispatchers
    }

    /// A registry holding the engine's series, the server's, and the values read at scrape
    /// time from `engine`, `read` and `offline` (the isolation and jobs of offline work).
    pub fn new(engine: &EngineHandle, read: &ReadSlot, offline: &OfflineExecutor) -> ServerMetrics {
        let mut registry = Registry::default();
        engine.metrics().register(&mut registry);
        offline.register_metrics(&mut registry);
        let dispatch = tally_dispatch::DispatchMetrics::register(&mut registry);
        let requests = Family::<RouteLabels, Counter>::default();
        let request_seconds = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_5, 2.0, 14))
        });
        let auth_failures = Family::<AuthLabels, Counter>::default();
        let http = registry.sub_registry_with_prefix("tally_http");
        http.register(
            "requests",
            "HTTP requests answered, by method, route template and status",
            requests.clone(),
        );
        http.register(
            "request_duration_seconds",
            "Seconds from receiving an HTTP request to answering it, by method, route template and status",
            request_seconds.clone(),
        );
        http.register(
            "auth_failures",
            "Requests refused by authentication (status 401; reason missing, malformed, unknown_key, bad_signature, expired, issued_in_future or revoked) or authorization (status 403; reason scope: the token lacks the route's scope, or restriction: a ledger or account outside the token's restriction)",
            auth_failures.clone(),
        );
        registry.register_collector(Box::new(Status {
            engine: engine.clone(),
            read: read.clone(),
        }));
        let dispatchers = crate::deliver::Dispatchers::default();
        registry.register_collector(Box::new(dispatchers.clone()));
        ServerMetrics {
            registry,
            requests,
            request_seconds,
            auth_failures,
            dispatch,
            dispatchers,
        }
    }

    /// The text of a scrape: OpenMetrics when `openmetrics`, else the Prometheus text format.
    pub(crate) fn render(&self, openmetrics: bool) -> Result<String, fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(if openmetrics {
            text
        } else {
            prometheus_text(&text)
        })
    }
}

/// Rewrites OpenMetrics text as the Prometheus text format (0.0.4), for the metric types this
/// registry holds (counters, gauges, histograms): a counter's family is named with its `_total`
/// suffix, and the `# UNIT` and `# EOF` lines go. Sample lines are the same in both formats.
fn prometheus_text(openmetrics: &str) -> String {
    let mut text = String::with_capacity(openmetrics.len());
    // A family's HELP line comes before its TYPE line, which decides its name.
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest);
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.rsplit_once(' ').unwrap_or((rest, ""));
            let suffix = if kind == "counter" { "_total" } else { "" };
            if let Some((_, help)) = help.take().and_then(|help| help.split_once(' ')) {
                text.push_str(&format!("# HELP {name}{suffix} {help}\n"));
            }
            text.push_str(&format!("# TYPE {name}{suffix} {kind}\n"));
        } else if !(line.starts_with("# UNIT ") || line == "# EOF") {
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}

/// The values read at scrape time, from the accessors a status page uses too.
struct Status {
    engine: EngineHandle,
    read: ReadSlot,
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Status").finish_non_exhaustive()
    }
}

impl Collector for Status {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let engine = &self.engine;
        let e = &mut encoder;
        gauge(
            e,
            "tally_durable_position",
            "Position up to which the log is durable: the number of events ever made durable.",
            engine.durable_position(),
        )?;
        gauge(
            e,
            "tally_queued_commands",
            "Commands waiting in the engine's bounded queue for the state thread.",
            engine.queued_commands() as u64,
        )?;
        gauge(
            e,
            "tally_engine_failed",
            "1 once the engine has stopped accepting work after a failed append (restart to recover from the log), else 0.",
            u64::from(engine.failure().is_some()),
        )?;
        gauge(
            e,
            "tally_log_size_bytes",
            "Bytes the log holds on disk: its segment files, without the zeros kept ahead of the newest one's records.",
            engine.log_bytes(),
        )?;
        if let Some(snapshot) = engine.last_snapshot() {
            gauge(
                e,
                "tally_engine_snapshot_position",
                "Position of the newest snapshot; a restart replays the log from here to tally_durable_position. Absent until there is a snapshot.",
                snapshot.position,
            )?;
            let age = SystemTime::now()
                .duration_since(snapshot.written_at)
                .unwrap_or_default();
            gauge(
                e,
                "tally_engine_snapshot_age_seconds",
                "Seconds since the newest snapshot was written (by this process, or before it started). Absent until there is a snapshot.",
                age.as_secs_f64(),
            )?;
        }
        if let Some(Ok(read)) = self.read.get() {
            let lag = read.lag();
            gauge(
                e,
                "tally_read_model_position",
                "Position up to which the read model has projected the log.",
                read.position(),
            )?;
            gauge(
                e,
                "tally_read_model_lag_events",
                "Events durable in the log but not yet projected into the read model: tally_durable_position minus tally_read_model_position as the read model sees them.",
                lag.events,
            )?;
            gauge(
                e,
                "tally_read_model_lag_seconds",
                "0 when the read model holds every durable event; otherwise seconds since it last did (or since it opened, if it has not since). An idle projector checks every second, so this may overstate the lag by about a second.",
                lag.duration.as_secs_f64(),
            )?;
        }
        Ok(())
    }
}

fn gauge<N: EncodeGaugeValue + fmt::Debug>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: N,
) -> fmt::Result {
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, None, ConstGauge::<N>::TYPE)?)
}

/// The method as a label: the standard methods by name, any other as `other`, so that a client
/// inventing methods cannot create series.
fn method_label(method: &Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "CONNECT" => "CONNECT",
        _ => "other",
    }
}

/// Middleware that counts and times every request by its route template (not its raw path,
/// so that ids do not make the series unbounded), and counts authentication refusals.
pub(crate) async fn track(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |path| path.as_str().to_string());
    let response = next.run(request).await;
    let status = response.status();
    app.status.record(&route, status);
    let labels = RouteLabels {
        method,
        route,
        status: status.as_u16(),
    };
    let metrics = &app.metrics;
    metrics.requests.get_or_create(&labels).inc();
    metrics
        .request_seconds
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    // Every 403 the auth middleware did not mark is a handler's or the engine's refusal of a
    // ledger or account outside the token's restriction: those are the only other 403s.
    let refusal = match response.extensions().get::<AuthRefusal>() {
        Some(AuthRefusal(reason)) => Some(*reason),
        None => (status == StatusCode::FORBIDDEN).then_some("restriction"),
    };
    if let Some(reason) = refusal {
        metrics
            .auth_failures
            .get_or_create(&AuthLabels {
                status: status.as_u16(),
                reason,
            })
            .inc();
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_renamed_and_openmetrics_lines_dropped() {
        let openmetrics = "\
# HELP tally_x_requests Requests.
# TYPE tally_x_requests counter
tally_x_requests_total{route=\"/a b\"} 3
# HELP tally_x_seconds Seconds per thing.
# TYPE tally_x_seconds histogram
# UNIT tally_x_seconds seconds
tally_x_seconds_sum 0.5
tally_x_seconds_count 1
tally_x_seconds_bucket{le=\"1.0\"} 1
tally_x_seconds_bucket{le=\"+Inf\"} 1
# HELP tally_x_position A gauge.
# TYPE tally_x_position gauge
tally_x_position 7
# EOF
";
        let expected = "\
# HELP tally_x_requests_total Requests.
# TYPE tally_x_requests_total counter
tally_x_requests_total{route=\"/a b\"} 3
# HELP tally_x_seconds Seconds per thing.
# TYPE tally_x_seconds histogram
tally_x_seconds_sum 0.5
tally_x_seconds_count 1
tally_x_seconds_bucket{le=\"1.0\"} 1
tally_x_seconds_bucket{le=\"+Inf\"} 1
# HELP tally_x_position A gauge.
# TYPE tally_x_position gauge
tally_x_position 7
";
        assert_eq!(prometheus_text(openmetrics), expected);
    }

    #[test]
    fn only_standard_methods_are_labels() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::OPTIONS), "OPTIONS");
        let invented = Method::from_bytes(b"BREW").unwrap();
        assert_eq!(method_label(&invented), "other");
    }
}
