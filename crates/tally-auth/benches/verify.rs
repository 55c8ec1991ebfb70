//! Cost of `Verifier::verify` per request. Targets (issue 5): at most 5 µs on a cached token
//! and at most 100 µs on a token seen for the first time.

use std::collections::HashSet;
use std::hint::black_box;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use tally_auth::{IssueRequest, KeyRing, Scope, Verifier};

fn verify(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    KeyRing::init(dir.path()).unwrap();
    // A realistic token: restricted, so its payload is not the smallest possible.
    let request = IssueRequest {
        subject: "billing-service".to_owned(),
        scopes: vec![Scope::Write, Scope::Read],
        ledgers: vec!["usd".to_owned(), "eur".to_owned()],
        accounts: vec![],
        ttl: Duration::from_secs(3600),
    };
    let (token, _) = KeyRing::issue(dir.path(), request).unwrap();
    // Revocation as the server does it: a set lookup, here over a thousand revoked ids.
    let revoked: Arc<RwLock<HashSet<String>>> = Arc::new(RwLock::new(
        (0..1000).map(|i| format!("{i:032x}")).collect(),
    ));
    let verifier = Verifier::load(
        dir.path(),
        Arc::new(move |id: &str| revoked.read().unwrap().contains(id)),
    )
    .unwrap();

    let mut group = c.benchmark_group("verify");
    group.bench_function("cached", |b| {
        verifier.verify(&token).unwrap();
        b.iter(|| verifier.verify(black_box(&token)).unwrap())
    });
    group.bench_function("fresh", |b| {
        // Emptying the cache before each call makes every call a miss: parse, Ed25519
        // verification, claims decoding and the cache insert.
        b.iter_batched(
            || verifier.clear_cache(),
            |()| verifier.verify(black_box(&token)).unwrap(),
            BatchSize::PerIteration,
        )
    });
    group.bench_function("garbage", |b| {
        b.iter(|| {
            verifier
                .verify(black_box("v4.public.bm90IGEgdG9rZW4"))
                .unwrap_err()
        })
    });
    group.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
