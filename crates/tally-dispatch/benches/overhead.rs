//! The dispatcher's overhead per delivery: a `deliver` call against a fake target answering
//! at once, next to a bare hyper client doing the same POST. Overhead = dispatcher − bare;
//! the target (issue 6) is under 200 µs.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tally_dispatch::fake::FakeTarget;
use tally_dispatch::{Attempt, DispatchConfig, Dispatcher, Order};

fn overhead(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let target = runtime.block_on(FakeTarget::start(1));
    let url = target.url(0);
    let mut registry = prometheus_client::registry::Registry::default();
    let dispatcher = runtime.block_on(async {
        Dispatcher::new(DispatchConfig::new(vec![url.clone()]), &mut registry).unwrap()
    });
    let next = AtomicU64::new(0);
    let order = || {
        let id = format!("order-{}", next.fetch_add(1, Ordering::Relaxed));
        Order::new(&id, "alice", "spring", "points", 100).unwrap()
    };

    let mut group = c.benchmark_group("deliver");
    group.bench_function("dispatcher", |b| {
        b.to_async(&runtime).iter(|| {
            let order = order();
            let dispatcher = &dispatcher;
            async move {
                let attempt = dispatcher.deliver(black_box(&order), 0).await;
                assert!(matches!(attempt, Attempt::Delivered { .. }), "{attempt:?}");
            }
        })
    });
    let client = runtime
        .block_on(async { Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>() });
    group.bench_function("bare_hyper", |b| {
        b.to_async(&runtime).iter(|| {
            // The same work the dispatcher must do: the JSON body, the key, the POST.
            let id = format!("order-{}", next.fetch_add(1, Ordering::Relaxed));
            let body = serde_json::json!({
                "order_id": id, "user": "alice", "campaign": "spring",
                "gift_ledger": "points", "amount": 100,
            });
            let request = Request::builder()
                .method(Method::POST)
                .uri(&url)
                .header("content-type", "application/json")
                .header("idempotency-key", &id)
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap();
            let client = &client;
            async move {
                let response = client.request(request).await.unwrap();
                assert!(response.status().is_success());
                black_box(response.into_body().collect().await.unwrap());
            }
        })
    });
    group.finish();
}

criterion_group!(benches, overhead);
criterion_main!(benches);
