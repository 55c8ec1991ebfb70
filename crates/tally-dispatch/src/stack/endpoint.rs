//! One endpoint: its own connection pool, bulkhead and read timeout around the POST.
//!
//! Each endpoint has its own hyper client, so its own pool: a slow endpoint holding its
//! connections cannot starve a fast one, and a dead one's broken connections are not reused
//! for the others.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Service, ServiceBuilder};

use super::{Delivery, TryResult};
use crate::limits::{
    ANSWER_BYTES_MAX, IDLE_CONNECTIONS_PER_ENDPOINT_MAX, IDLE_CONNECTION_TIMEOUT,
    REJECTION_SNIPPET_BYTES_MAX,
};

/// An endpoint's whole stack.
pub(crate) type EndpointService = BoxCloneSyncService<Delivery, TryResult, BoxError>;

/// Timeouts and bulkhead of an endpoint.
#[derive(Clone, Copy, Debug)]
pub(crate) struct EndpointLimits {
    pub(crate) connect_timeout: Duration,
    pub(crate) read_timeout: Duration,
    pub(crate) in_flight: u32,
}

/// Builds an endpoint's stack, outermost first: shed when full, the in-flight limit, the
/// read timeout, the POST.
pub(crate) fn stack(uri: Uri, limits: EndpointLimits) -> EndpointService {
    let send = Send {
        client: client(limits.connect_timeout),
        uri,
    };
    let service = ServiceBuilder::new()
        .load_shed()
        .concurrency_limit(limits.in_flight as usize)
        .timeout(limits.read_timeout)
        .service(send);
    BoxCloneSyncService::new(service)
}

/// A pooled client whose connects give up after `connect_timeout`.
pub(crate) fn client(connect_timeout: Duration) -> Client<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(IDLE_CONNECTIONS_PER_ENDPOINT_MAX)
        .pool_idle_timeout(IDLE_CONNECTION_TIMEOUT)
        .build(connector)
}

/// Sorts an error of the endpoint stack into an attempt's result.
pub(crate) fn classify(error: &BoxError) -> TryResult {
    if error.is::<tower::timeout::error::Elapsed>() {
        return TryResult::ReadTimedOut;
    }
    if error.is::<tower::load_shed::error::Overloaded>() {
        return TryResult::EndpointBusy;
    }
    match error.downcast_ref::<hyper_util::client::legacy::Error>() {
        Some(error) if error.is_connect() => TryResult::ConnectFailed,
        // Anything else happened on a connection that carried (part of) the request.
        _ => TryResult::ReadFailed,
    }
}

/// The POST of the delivery contract to one endpoint.
#[derive(Clone)]
pub(crate) struct Send {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
}

static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

impl Service<Delivery> for Send {
    type Response = TryResult;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<TryResult, BoxError>> + std::marker::Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // The pool has no readiness of its own; the bulkhead above limits what is in flight.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, delivery: Delivery) -> Self::Future {
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(&IDEMPOTENCY_KEY, delivery.key)
            .body(Full::new(delivery.body))
            .expect("a valid URI and valid headers make a valid request");
        let answer = self.client.request(request);
        Box::pin(async move {
            let response = answer.await?;
            let status = response.status().as_u16();
            // The status decides; the body is read (bounded) so the connection can be reused,
            // and kept only to explain a rejection.
            let body = Limited::new(response.into_body(), ANSWER_BYTES_MAX)
                .collect()
                .await
                .map(|body| body.to_bytes())
                .unwrap_or_default();
            Ok(match status {
                200..=299 => TryResult::Delivered,
                409 => TryResult::AlreadyDelivered,
                500.. => TryResult::ServerError { status },
                _ => TryResult::Rejected {
                    status,
                    snippet: snippet(&body),
                },
            })
        })
    }
}

/// The start of a body as text, cut on a character boundary.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(REJECTION_SNIPPET_BYTES_MAX)]);
    let mut end = text.len().min(REJECTION_SNIPPET_BYTES_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}
