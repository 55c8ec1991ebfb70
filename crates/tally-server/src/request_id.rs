//! Request ids: one per request, so that a client's error report, the answer's headers and the
//! server's log lines can be matched.
//!
//! The id comes from the `X-Request-Id` request header when a proxy or client sent a sane one
//! (so that ids can follow a request across services), and is generated otherwise. It is echoed
//! in the `X-Request-Id` response header, carried by a tracing span around the request (every
//! log line within it names it), and written into every error body.
//!
//! The middleware is the outermost layer of the router, so that answers made by the layers
//! inside it (load shedding, timeouts, a caught panic) carry the id too. Error bodies are built in
//! `IntoResponse`, far from the request, so the id reaches them through a task-local value scoped
//! around the inner service rather than through every function signature.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::limits::{REQUEST_ID_BYTES_MAX, SERVER_ERROR_LOGS_PER_SECOND_MAX};

/// The request and response header carrying the id.
pub(crate) const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

tokio::task_local! {
    static CURRENT: String;
}

/// The id of the request being answered on this task, if any.
pub(crate) fn current() -> Option<String> {
    CURRENT.try_with(Clone::clone).ok()
}

/// A fresh id: 128 random bits in hex, unique without coordination between servers.
pub(crate) fn generate() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The id a client sent, if it is one we can repeat safely: 1 to [`REQUEST_ID_BYTES_MAX`]
/// visible ASCII characters. Anything else (too long, spaces, control or non-ASCII bytes) could
/// bloat or forge log lines, so it is replaced by a generated id rather than cleaned up.
fn accepted(value: &HeaderValue) -> Option<String> {
    let bytes = value.as_bytes();
    let sane = (1..=REQUEST_ID_BYTES_MAX).contains(&bytes.len())
        && bytes.iter().all(|byte| byte.is_ascii_graphic());
    // Visible ASCII is valid UTF-8.
    sane.then(|| String::from_utf8_lossy(bytes).into_owned())
}

/// Middleware: assigns the request's id, answers with it, and logs the answer: a server error at
/// warn (at most [`SERVER_ERROR_LOGS_PER_SECOND_MAX`] lines a second), anything else at debug,
/// because the service answers tens of thousands of requests a second.
pub(crate) async fn assign(request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(accepted)
        .unwrap_or_else(generate);
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    // At error level so that the span, and with it the id, is on every line whatever the log
    // filter lets through: a span below the filter's level would be dropped from the lines.
    let span = tracing::error_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        route,
    );
    let started = Instant::now();
    let mut response = CURRENT
        .scope(id.clone(), next.run(request))
        .instrument(span.clone())
        .await;
    let value = HeaderValue::from_str(&id).expect("a request id is visible ASCII");
    response.headers_mut().insert(REQUEST_ID_HEADER, value);
    let status = response.status().as_u16();
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    span.in_scope(|| {
        if response.status().is_server_error() {
            if let Some(suppressed) = server_error_log_budget().take() {
                tracing::warn!(
                    status,
                    elapsed_ms,
                    suppressed,
                    "answered with a server error"
                );
            }
        } else {
            tracing::debug!(status, elapsed_ms, "answered");
        }
    });
    response
}

/// Log lines allowed per second, so that a burst of server errors (such as load shedding at
/// tens of thousands of requests a second) cannot flood the log and slow the server further.
struct LogBudget {
    started: Instant,
    /// The second (since `started`) the count is for.
    second: AtomicU64,
    used: AtomicU64,
    /// Lines refused since the last one written.
    suppressed: AtomicU64,
}

fn server_error_log_budget() -> &'static LogBudget {
    static BUDGET: OnceLock<LogBudget> = OnceLock::new();
    BUDGET.get_or_init(|| LogBudget {
        started: Instant::now(),
        second: AtomicU64::new(0),
        used: AtomicU64::new(0),
        suppressed: AtomicU64::new(0),
    })
}

impl LogBudget {
    /// Takes one line of this second's budget: `Some(lines suppressed since the last one
    /// written)`, or `None` when the budget is spent.
    fn take(&self) -> Option<u64> {
        self.take_at(self.started.elapsed().as_secs())
    }

    /// [`LogBudget::take`] at second `now`. Approximate under races (a line more or less at a
    /// second's turn), which is all a log budget needs.
    fn take_at(&self, now: u64) -> Option<u64> {
        let second = self.second.load(Ordering::Relaxed);
        if now != second
            && self
                .second
                .compare_exchange(second, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.used.store(0, Ordering::Relaxed);
        }
        if self.used.fetch_add(1, Ordering::Relaxed) < SERVER_ERROR_LOGS_PER_SECOND_MAX {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sane_ids_are_accepted() {
        let accept = |value: &[u8]| accepted(&HeaderValue::from_bytes(value).unwrap());
        assert_eq!(accept(b"abc-123_X.y:z"), Some("abc-123_X.y:z".into()));
        let longest = "a".repeat(REQUEST_ID_BYTES_MAX);
        assert_eq!(accept(longest.as_bytes()), Some(longest.clone()));
        assert_eq!(accept(format!("{longest}a").as_bytes()), None);
        assert_eq!(accept(b""), None);
        assert_eq!(accept(b"two words"), None);
        assert_eq!(accept(b"tab\there"), None);
        assert_eq!(accept("caf\u{e9}".as_bytes()), None);
    }

    #[test]
    fn generated_ids_are_128_bit_hex_and_differ() {
        let (a, b) = (generate(), generate());
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|byte| byte.is_ascii_hexdigit()), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn the_log_budget_refuses_beyond_its_limit_and_counts_what_it_refused() {
        let budget = LogBudget {
            started: Instant::now(),
            second: AtomicU64::new(0),
            used: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        };
        let taken: Vec<Option<u64>> = (0..SERVER_ERROR_LOGS_PER_SECOND_MAX + 5)
            .map(|_| budget.take_at(7))
            .collect();
        let limit = SERVER_ERROR_LOGS_PER_SECOND_MAX as usize;
        assert!(taken[..limit].iter().all(|line| *line == Some(0)));
        assert!(taken[limit..].iter().all(Option::is_none));
        // The next second: lines again, and the first says how many were suppressed.
        assert_eq!(budget.take_at(8), Some(5));
        assert_eq!(budget.take_at(8), Some(0));
    }
}
