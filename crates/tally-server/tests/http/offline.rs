//! Offline work next to the online path: requests are answered while an offline job is stalled
//! and every idle-priority thread starves, and `/metrics` and the status page show the job.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;

use crate::support::TestApp;

/// Threads that spin at normal priority on every core until dropped: they starve every
/// `SCHED_IDLE` thread of the process (the snapshotter and the projector included).
struct CpuHog {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CpuHog {
    fn start() -> CpuHog {
        let count = 2 * std::thread::available_parallelism().map_or(2, |n| n.get());
        let stop = Arc::new(AtomicBool::new(false));
        let spinning = Arc::new(AtomicUsize::new(0));
        let threads = (0..count)
            .map(|_| {
                let (stop, spinning) = (Arc::clone(&stop), Arc::clone(&spinning));
                std::thread::spawn(move || {
                    spinning.fetch_add(1, Ordering::SeqCst);
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        while spinning.load(Ordering::SeqCst) < count {
            std::thread::yield_now();
        }
        CpuHog { stop, threads }
    }
}

impl Drop for CpuHog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            thread.join().unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_online_path_answers_while_an_offline_job_is_stalled() {
    let app = TestApp::new();
    app.open_account("a", "USD", false).await;
    app.open_account("b", "USD", false).await;
    app.deposit("d1", "a", 1000).await;

    // An offline job that stops halfway and waits: stalled, whatever the CPU.
    let (release, stalled) = std::sync::mpsc::channel::<()>();
    let job = app
        .state
        .offline
        .spawn_job("stalled", "units", move |progress| {
            progress.set_total(2);
            progress.add(1);
            stalled.recv().map_err(|error| error.to_string())?;
            progress.add(1);
            Ok(())
        })
        .unwrap();
    // Stalled once it has done its first unit (before the hog, which would starve it earlier).
    while job.progress().status().done < 1 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let hog = CpuHog::start();
    for i in 0..40 {
        let body = format!(r#"{{"id":"t{i}","from":"a","to":"b","amount":1}}"#);
        let (status, json) = app.post("/v1/transfers", &body).await;
        assert_eq!(status, StatusCode::CREATED, "{json}");
    }
    assert_eq!(app.balance("b").await, 40);
    let text = app.send("GET", "/metrics", "").await.text();
    drop(hog);

    let id = job.progress().status().id;
    let labels = format!(r#"name="stalled",id="{id}",unit="units""#);
    for line in [
        format!("tally_offline_job_state{{{labels},state=\"running\"}} 1"),
        format!("tally_offline_job_units_done{{{labels}}} 1"),
        format!("tally_offline_job_units_expected{{{labels}}} 2"),
        format!(
            "tally_offline_isolation{{mode=\"{}\"}} 1",
            app.state.offline.isolation().as_str()
        ),
    ] {
        assert!(text.contains(&line), "no {line} in\n{text}");
    }
    // The status page lists it among the offline jobs.
    app.state.status.refresh(&app.state);
    let jobs = app.state.status.report().jobs;
    assert!(
        jobs.iter()
            .any(|job| job.name.starts_with(&format!("stalled #{id}")) && job.state == "running"),
        "{jobs:?}"
    );

    release.send(()).unwrap();
    job.join().unwrap();
    app.finish().await;
}
