//! A programmable fake downstream target, for tests (feature `fake-target`).
//!
//! A [`FakeTarget`] is one downstream service made of several endpoints (instances), each an
//! HTTP server on its own `127.0.0.1` port whose [`Behaviour`] can be changed while it runs.
//! The endpoints share one record of deliveries, as the instances of a real target share its
//! database, and honour `Idempotency-Key` as the delivery contract asks: a repeat of a
//! delivered order answers 409 and is not delivered again, but its attempt is counted. Tests
//! assert on those records: "never delivered twice", "attempts within the budget".
//!
//! Requests without an `Idempotency-Key` (the statistics webhook's) are counted per endpoint
//! and otherwise only answered; a GET of `.../orders/{order_id}` answers the order's status as
//! the README's delivery contract describes (for `tally claims reconcile`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// How an endpoint answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Delivers (200), or 409 for an order already delivered.
    Ok,
    /// Answers this status without delivering.
    Status(u16),
    /// Waits this long, then behaves as [`Behaviour::Ok`].
    Latency(Duration),
    /// Never answers (the connection stays open).
    Hang,
    /// Stops listening and drops its open connections: connecting is refused. Any other
    /// behaviour listens again on the same port.
    Refuse,
    /// Delivers the order, then never answers: the caller's read timeout fires although the
    /// gift was delivered.
    DeliverThenHang,
    /// Every `every`-th attempt at this endpoint answers 500 without delivering; the others
    /// behave as [`Behaviour::Ok`].
    FailEvery(u32),
}

/// A running fake target; dropping it stops every endpoint.
pub struct FakeTarget {
    shared: Arc<Shared>,
    endpoints: Vec<Endpoint>,
}

/// What the endpoints share: the record of orders.
#[derive(Default)]
struct Shared {
    orders: Mutex<HashMap<String, OrderRecord>>,
}

/// One order as the target saw it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrderRecord {
    /// Requests that carried the order, repeats included.
    pub attempts: u32,
    /// Times the order was delivered: 0 or 1 while the target honours idempotency.
    pub deliveries: u32,
    /// Requests that reached a delivering behaviour (repeats of a delivered order included):
    /// how often a target without idempotency would have delivered.
    pub delivery_requests: u32,
}

struct Endpoint {
    address: SocketAddr,
    state: Arc<EndpointState>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

struct EndpointState {
    shared: Arc<Shared>,
    behaviour: Mutex<Behaviour>,
    attempts: AtomicU64,
    deliveries: AtomicU64,
}

impl FakeTarget {
    /// Starts `count` endpoints answering [`Behaviour::Ok`].
    pub async fn start(count: usize) -> FakeTarget {
        let shared = Arc::new(Shared::default());
        let mut endpoints = Vec::with_capacity(count);
        for _ in 0..count {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind a loopback port");
            let state = Arc::new(EndpointState {
                shared: shared.clone(),
                behaviour: Mutex::new(Behaviour::Ok),
                attempts: AtomicU64::new(0),
                deliveries: AtomicU64::new(0),
            });
            let address = listener.local_addr().expect("a bound address");
            let accept = tokio::spawn(accept_loop(listener, state.clone()));
            endpoints.push(Endpoint {
                address,
                state,
                accept: Mutex::new(Some(accept)),
            });
        }
        FakeTarget { shared, endpoints }
    }

    /// The URL of endpoint `index` (`http://127.0.0.1:PORT/deliver`).
    pub fn url(&self, index: usize) -> String {
        format!("http://{}/deliver", self.endpoints[index].address)
    }

    /// The URLs of every endpoint.
    pub fn urls(&self) -> Vec<String> {
        (0..self.endpoints.len())
            .map(|index| self.url(index))
            .collect()
    }

    /// Changes how endpoint `index` answers from now on; requests already waiting keep their
    /// behaviour, except that [`Behaviour::Refuse`] drops them with their connections.
    pub async fn set(&self, index: usize, behaviour: Behaviour) {
        let endpoint = &self.endpoints[index];
        *lock(&endpoint.state.behaviour) = behaviour;
        let running = lock(&endpoint.accept).take();
        if behaviour == Behaviour::Refuse {
            if let Some(accept) = running {
                accept.abort();
                // Wait until the listener and the connections are dropped.
                let _ = accept.await;
            }
            return;
        }
        let accept = match running {
            Some(accept) => accept,
            None => {
                let listener = TcpListener::bind(endpoint.address)
                    .await
                    .expect("listen again on the endpoint's port");
                tokio::spawn(accept_loop(listener, endpoint.state.clone()))
            }
        };
        *lock(&endpoint.accept) = Some(accept);
    }

    /// What the target saw of `order_id`.
    pub fn order(&self, order_id: &str) -> OrderRecord {
        lock(&self.shared.orders)
            .get(order_id)
            .copied()
            .unwrap_or_default()
    }

    /// Every order seen, with its record.
    pub fn orders(&self) -> HashMap<String, OrderRecord> {
        lock(&self.shared.orders).clone()
    }

    /// Orders delivered (each counts once).
    pub fn delivered_count(&self) -> usize {
        lock(&self.shared.orders)
            .values()
            .filter(|record| record.deliveries > 0)
            .count()
    }

    /// Requests endpoint `index` received, webhook calls included.
    pub fn endpoint_attempts(&self, index: usize) -> u64 {
        self.endpoints[index].state.attempts.load(Ordering::Relaxed)
    }

    /// Orders endpoint `index` delivered.
    pub fn endpoint_deliveries(&self, index: usize) -> u64 {
        self.endpoints[index]
            .state
            .deliveries
            .load(Ordering::Relaxed)
    }
}

impl Drop for FakeTarget {
    fn drop(&mut self) {
        for endpoint in &self.endpoints {
            if let Some(accept) = lock(&endpoint.accept).take() {
                accept.abort();
            }
        }
    }
}

/// Serves connections until aborted; aborting it drops the listener and, with the `JoinSet`,
/// every connection it accepted.
async fn accept_loop(listener: TcpListener, state: Arc<EndpointState>) {
    let app = Router::new().fallback(handle).with_state(state);
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors, most likely: wait for connections to close.
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        connections.spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        // Reap finished connections so the set stays as large as the open ones.
        while connections.try_join_next().is_some() {}
    }
}

async fn handle(
    State(state): State<Arc<EndpointState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    if method == Method::GET {
        return order_status(&state, uri.path());
    }
    let attempt = state.attempts.fetch_add(1, Ordering::Relaxed) + 1;
    let behaviour = *lock(&state.behaviour);
    let key = headers
        .get("idempotency-key")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    if let Some(key) = &key {
        if !body_names_order(&body, key) {
            return (StatusCode::BAD_REQUEST, "the body does not match the key");
        }
        lock(&state.shared.orders)
            .entry(key.clone())
            .or_default()
            .attempts += 1;
    }
    match behaviour {
        Behaviour::Ok => deliver(&state, key.as_deref()),
        Behaviour::Status(status) => (
            StatusCode::from_u16(status).expect("a valid status"),
            "programmed status",
        ),
        Behaviour::Latency(latency) => {
            tokio::time::sleep(latency).await;
            deliver(&state, key.as_deref())
        }
        Behaviour::Hang => std::future::pending().await,
        Behaviour::Refuse => (StatusCode::SERVICE_UNAVAILABLE, "refusing"),
        Behaviour::DeliverThenHang => {
            deliver(&state, key.as_deref());
            std::future::pending().await
        }
        Behaviour::FailEvery(every) if attempt % u64::from(every.max(1)) == 0 => {
            (StatusCode::INTERNAL_SERVER_ERROR, "programmed failure")
        }
        Behaviour::FailEvery(_) => deliver(&state, key.as_deref()),
    }
}

/// The order-status endpoint of the README's delivery contract, `GET {endpoint}/orders/{id}`:
/// whether the shared record delivered the order; 404 for an order never received. Answered
/// whatever the behaviour (but `Refuse`, which does not listen), as a target's status query
/// usually goes to its database, not through the delivery path.
fn order_status(state: &EndpointState, path: &str) -> (StatusCode, &'static str) {
    let Some((_, order_id)) = path.rsplit_once("/orders/") else {
        return (StatusCode::NOT_FOUND, "no such route");
    };
    match lock(&state.shared.orders).get(order_id) {
        Some(record) if record.deliveries > 0 => (StatusCode::OK, r#"{"delivered":true}"#),
        Some(_) => (StatusCode::OK, r#"{"delivered":false}"#),
        None => (StatusCode::NOT_FOUND, r#"{"error":"unknown order"}"#),
    }
}

fn deliver(state: &EndpointState, key: Option<&str>) -> (StatusCode, &'static str) {
    let Some(key) = key else {
        return (StatusCode::OK, "{}");
    };
    let mut orders = lock(&state.shared.orders);
    let record = orders.entry(key.to_owned()).or_default();
    record.delivery_requests += 1;
    if record.deliveries > 0 {
        return (StatusCode::CONFLICT, r#"{"status":"already_delivered"}"#);
    }
    record.deliveries = 1;
    state.deliveries.fetch_add(1, Ordering::Relaxed);
    (StatusCode::OK, r#"{"status":"delivered"}"#)
}

/// Whether `body` is the contract's JSON for order `key`.
fn body_names_order(body: &[u8], key: &str) -> bool {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    let fields = ["user", "campaign", "gift_ledger"];
    value["order_id"] == key
        && fields.iter().all(|field| value[field].is_string())
        && value["amount"].is_u64()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
