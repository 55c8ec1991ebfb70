//! What an operator sees of a running engine: the accessors a status page and `/metrics` read
//! (log size, last snapshot) and the fsync latency histogram.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::registry::Registry;
use tally_engine::{EngineConfig, EngineHandle};
use tally_log::LogOptions;

use crate::support::{
    eventually, execute, files_ending, fs_config, mem_config, open_in, segment_records_end,
    shutdown, try_open_fs, Throttled,
};

/// The sum of the lengths of the segment files in `data_dir/log`.
/// The bytes of the segment files, without the zeros after the last one's records.
fn segment_bytes(data_dir: &Path) -> u64 {
    let segments = files_ending(&data_dir.join("log"), ".tlog");
    let (last, sealed) = segments.split_last().unwrap();
    let sealed: u64 = sealed
        .iter()
        .map(|path| std::fs::metadata(path).unwrap().len())
        .sum();
    sealed + segment_records_end(last)
}

fn deposits(tag: &str, count: usize) -> String {
    let mut script = String::from("open a USD\n");
    for i in 0..count {
        script.push_str(&format!("deposit {tag}{i} a {}\n", i + 1));
    }
    script
}

/// The log's size is the sum of its segment files, through rolls and across a restart.
#[tokio::test(flavor = "multi_thread")]
async fn log_bytes_is_the_size_of_the_segment_files() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        // Small segments, so that several are sealed and the sum spans them.
        log_options: LogOptions {
            segment_bytes_max: 1024,
        },
        ..fs_config(dir.path())
    };
    let opened = try_open_fs(config.clone()).unwrap();
    let handle = opened.engine.handle();
    let empty = handle.log_bytes();
    assert_eq!(
        empty,
        segment_bytes(dir.path()),
        "an empty log is its header"
    );
    for round in 0..20 {
        execute(&handle, &deposits(&format!("r{round}-"), 10)).await;
        assert_eq!(
            handle.log_bytes(),
            segment_bytes(dir.path()),
            "round {round}"
        );
    }
    assert!(
        files_ending(&dir.path().join("log"), ".tlog").len() > 2,
        "the log rolled"
    );
    let written = handle.log_bytes();
    assert!(written > empty);
    drop(handle);
    shutdown(opened.engine).await.unwrap();

    let reopened = try_open_fs(config).unwrap();
    assert_eq!(reopened.engine.handle().log_bytes(), written);
    shutdown(reopened.engine).await.unwrap();
}

/// No snapshot before the first; the periodic one once written (with when); after a restart,
/// the one recovery loaded, with its file's time.
#[tokio::test(flavor = "multi_thread")]
async fn last_snapshot_is_the_newest_loaded_or_written() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        snapshot_interval_events: 100,
        ..fs_config(dir.path())
    };
    let opened = try_open_fs(config.clone()).unwrap();
    let handle = opened.engine.handle();
    assert_eq!(handle.last_snapshot(), None);
    let before = SystemTime::now();
    execute(&handle, &deposits("d", 150)).await;
    eventually("the periodic snapshot is written", || {
        handle.last_snapshot().is_some()
    })
    .await;
    let periodic = handle.last_snapshot().unwrap();
    assert!(periodic.position >= 100, "{periodic:?}");
    assert!(
        periodic.position <= handle.durable_position(),
        "{periodic:?}"
    );
    assert!(
        before <= periodic.written_at && periodic.written_at <= SystemTime::now(),
        "{periodic:?}"
    );
    let durable = handle.durable_position();
    drop(handle);
    // Shutdown writes a final snapshot at the durable end, which the restart loads.
    shutdown(opened.engine).await.unwrap();
    let newest = files_ending(&dir.path().join("snapshots"), ".tsnap")
        .pop()
        .unwrap();
    let modified = std::fs::metadata(&newest).unwrap().modified().unwrap();

    let reopened = try_open_fs(config).unwrap();
    let loaded = reopened.engine.handle().last_snapshot().unwrap();
    assert_eq!(loaded.position, durable);
    assert_eq!(loaded.written_at, modified);
    shutdown(reopened.engine).await.unwrap();
}

/// The value of one unlabelled sample of a registry's text, such as `name_sum`.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
        .parse()
        .unwrap()
}

fn metrics_text(handle: &EngineHandle) -> String {
    let mut registry = Registry::default();
    handle.metrics().register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text
}

/// The fsync histogram times exactly the fdatasync: with every sync slowed down by 20 ms, each
/// append's fsync takes at least that, and never more than the whole append.
#[tokio::test(flavor = "multi_thread")]
async fn fsync_seconds_time_each_records_sync() {
    const DELAY: Duration = Duration::from_millis(20);
    const APPENDS: u64 = 5;
    let storage = Throttled::new();
    let opened = open_in(Arc::new(storage.clone()), mem_config());
    let handle = opened.engine.handle();
    let before = metrics_text(&handle);
    assert_eq!(sample(&before, "tally_log_fsync_seconds_count"), 0.0);
    storage.set_delay(DELAY);
    for i in 0..APPENDS {
        // One request at a time: one append each.
        execute(&handle, &format!("open x{i} USD")).await;
    }
    let text = metrics_text(&handle);
    assert_eq!(
        sample(&text, "tally_log_fsync_seconds_count"),
        APPENDS as f64
    );
    assert_eq!(sample(&text, "tally_engine_batches_total"), APPENDS as f64);
    let fsync = sample(&text, "tally_log_fsync_seconds_sum");
    let append = sample(&text, "tally_engine_append_seconds_sum");
    assert!(
        fsync >= (DELAY * APPENDS as u32).as_secs_f64(),
        "fsync sum {fsync}"
    );
    assert!(fsync <= append, "fsync sum {fsync}, append sum {append}");
    drop(handle);
    shutdown(opened.engine).await.unwrap();
}
