//! Cost of one durable append of a small batch (write and `fdatasync`): the floor under every
//! group commit's latency. Runs on the disk that holds the build's target directory, never on a
//! tmpfs, so that the `fdatasync` is real.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use tally_log::{Batch, BatchHeader, EventLog, LogOptions, SegmentedLog};

/// A batch body the size of a few single-transfer commands.
const BODY_BYTES: usize = 256;

fn append(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (mut log, _) = SegmentedLog::open(dir.path(), LogOptions::default()).unwrap();
    let mut group = c.benchmark_group("log");
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("append_small_batch_durably", |b| {
        b.iter(|| {
            let batch = Batch {
                header: BatchHeader {
                    first_position: log.next_position(),
                    event_count: 1,
                    timestamp_ns: 0,
                },
                body: vec![7; BODY_BYTES],
            };
            log.append(&batch).unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, append);
criterion_main!(benches);
