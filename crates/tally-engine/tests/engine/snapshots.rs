//! Snapshots: written in the background every interval, loaded on restart, skipped when damaged.

use std::path::Path;
use std::sync::Arc;

use tally_engine::EngineConfig;
use tally_log::{MemStorage, Torn};

use crate::support::{
    eventually, execute, files_ending, flip_byte, fs_config, mem_config, open_in, shutdown,
    snapshot_position, try_open_fs, views, MEM_DIR,
};

const INTERVAL: u64 = 100;

fn ids() -> Vec<String> {
    (0..4).map(|i| format!("x{i}")).collect()
}

/// `count` deposits `tag{i}` spread over the accounts, as one request.
fn deposits(tag: &str, count: usize) -> String {
    (0..count)
        .map(|i| format!("deposit {tag}{i} x{} {}\n", i % 4, i + 1))
        .collect()
}

fn opens() -> String {
    (0..4).map(|i| format!("open x{i} USD\n")).collect()
}

fn mem_snapshots(storage: &MemStorage) -> Vec<u64> {
    storage
        .paths()
        .iter()
        .filter(|path| path.parent() == Some(&Path::new(MEM_DIR).join("snapshots")))
        .filter(|path| {
            path.extension()
                .is_some_and(|extension| extension == "tsnap")
        })
        .map(|path| snapshot_position(path))
        .collect()
}

/// After enough events a snapshot appears without stopping anything; a crash afterwards
/// restarts from it and replays only the log after it.
#[tokio::test(flavor = "multi_thread")]
async fn a_periodic_snapshot_shortens_the_replay_after_a_crash() {
    let storage = MemStorage::new();
    let config = EngineConfig {
        snapshot_interval_events: INTERVAL,
        ..mem_config()
    };
    let opened = open_in(Arc::new(storage.clone()), config.clone());
    let handle = opened.engine.handle();
    execute(&handle, &opens()).await;
    execute(&handle, &deposits("a", 150)).await;
    eventually("a snapshot is durable", || {
        !mem_snapshots(&storage.crash_image(Torn::Nothing)).is_empty()
    })
    .await;
    execute(&handle, &deposits("b", 30)).await;
    let before = views(&handle, &ids()).await;
    let total = handle.durable_position();
    assert_eq!(total, 184);

    let image = storage.crash_image(Torn::Nothing);
    drop(opened);
    let snapshots = mem_snapshots(&image);
    let newest = *snapshots.iter().max().expect("the snapshot is durable");
    let reopened = open_in(Arc::new(image), config);
    assert_eq!(reopened.recovery.snapshot_position, Some(newest));
    assert!(newest >= INTERVAL);
    assert_eq!(reopened.recovery.replayed_events, total - newest);
    assert!(reopened.recovery.replayed_events < total);
    let handle = reopened.engine.handle();
    assert_eq!(handle.durable_position(), total);
    assert_eq!(views(&handle, &ids()).await, before);
    // Retries of commands from before the snapshot still get their first answers.
    let retried = execute(&handle, &deposits("a", 150)).await;
    assert!(retried.iter().all(
        |answer| matches!(answer, tally_engine::Answer::Transfer { reply, .. } if !reply.created)
    ));
    shutdown(reopened.engine).await.unwrap();
}

/// A damaged newest snapshot is skipped for the older one; with every snapshot damaged, the
/// whole log is replayed. The state is the same every time.
#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_snapshot_falls_back_to_an_older_one_or_to_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let snapshots_dir = dir.path().join("snapshots");
    let config = EngineConfig {
        snapshot_interval_events: INTERVAL,
        ..fs_config(dir.path())
    };
    let opened = try_open_fs(config.clone()).unwrap();
    let handle = opened.engine.handle();
    execute(&handle, &opens()).await;
    execute(&handle, &deposits("a", 150)).await;
    eventually("a snapshot is written", || {
        !files_ending(&snapshots_dir, ".tsnap").is_empty()
    })
    .await;
    let periodic = snapshot_position(&files_ending(&snapshots_dir, ".tsnap")[0]);
    execute(&handle, &deposits("b", 30)).await;
    let before = views(&handle, &ids()).await;
    let total = handle.durable_position();
    shutdown(opened.engine).await.unwrap();
    let files = files_ending(&snapshots_dir, ".tsnap");
    let positions: Vec<u64> = files.iter().map(|path| snapshot_position(path)).collect();
    assert_eq!(
        positions,
        vec![periodic, total],
        "the periodic snapshot and the final one"
    );

    // The newest is damaged: start from the older one.
    let newest = &files[1];
    flip_byte(
        newest,
        std::fs::metadata(newest).unwrap().len() as usize / 2,
    );
    let reopened = try_open_fs(config.clone()).unwrap();
    assert_eq!(reopened.recovery.snapshot_position, Some(periodic));
    assert_eq!(reopened.recovery.replayed_events, total - periodic);
    let handle = reopened.engine.handle();
    assert_eq!(views(&handle, &ids()).await, before);
    drop(handle);
    shutdown(reopened.engine).await.unwrap();

    // Every snapshot is damaged: replay the whole log.
    for file in files_ending(&snapshots_dir, ".tsnap") {
        flip_byte(&file, std::fs::metadata(&file).unwrap().len() as usize / 2);
    }
    let reopened = try_open_fs(config.clone()).unwrap();
    assert_eq!(reopened.recovery.snapshot_position, None);
    assert_eq!(reopened.recovery.replayed_events, total);
    let handle = reopened.engine.handle();
    assert_eq!(views(&handle, &ids()).await, before);
    shutdown(reopened.engine).await.unwrap();
    let report = tally_engine::verify_data_dir(dir.path()).unwrap();
    assert!(report.is_ok(), "{report:?}");
}

/// The scheduling policy of this process's threads named `name`, from `/proc` (field 41 of a
/// task's `stat`).
fn policies_of_threads_named(name: &str) -> Vec<i32> {
    let mut policies = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        policies.push(after.split(' ').nth(41 - 3).unwrap().parse().unwrap());
    }
    policies
}

/// The snapshot thread runs on the offline executor at `SCHED_IDLE`, and every snapshot is a
/// job with its progress in events.
#[tokio::test(flavor = "multi_thread")]
async fn snapshots_are_offline_jobs_at_idle_priority() {
    let offline = tally_offline::OfflineExecutor::new(tally_offline::OfflineConfig::default());
    let config = EngineConfig {
        snapshot_interval_events: INTERVAL,
        offline: offline.clone(),
        ..mem_config()
    };
    let opened = open_in(Arc::new(MemStorage::new()), config);
    let handle = opened.engine.handle();
    // The thread names itself and lowers its priority as it starts. SCHED_IDLE is 5.
    eventually("the snapshot thread runs at SCHED_IDLE", || {
        policies_of_threads_named("tally-snapshot") == [5]
    })
    .await;
    execute(&handle, &opens()).await;
    execute(&handle, &deposits("a", 150)).await;
    eventually("a snapshot job is done", || {
        offline.jobs().iter().any(|job| {
            job.name == tally_engine::offline::SNAPSHOT_JOB
                && job.state == tally_offline::JobState::Done
        })
    })
    .await;
    let job = offline
        .jobs()
        .into_iter()
        .find(|job| job.name == "snapshot")
        .unwrap();
    assert_eq!((job.unit, job.done), ("events", job.total));
    assert!(job.total >= INTERVAL, "{job:?}");
    shutdown(opened.engine).await.unwrap();
}
