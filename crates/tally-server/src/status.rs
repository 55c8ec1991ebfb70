//! The server's side of the status page: it counts request outcomes, evaluates every
//! dependency once a second, records the changes as incidents, and persists both.
//!
//! Each verdict comes from something the server can observe itself (the engine's state, the
//! free space of the data directory's filesystem, the read model's position against the log,
//! the key files), never from a flag set by hand. The evaluation runs on a blocking thread off
//! the request path and handlers read its latest result, so `/status` costs a lock and a render.
//!
//! One verdict also acts: below the disk reserve the engine refuses commands (reads go on),
//! because an append that fails for want of space would stop the engine for good, while a
//! refusal ends by itself once space is freed.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use tally_auth::KeyRing;
use tally_status::disk::{human_bytes, space};
use tally_status::report::{human_seconds, rfc3339, worst};
use tally_status::store::{self, Saved, StoreError};
use tally_status::{
    Availability, DependencyStatus, Detail, Health, Incidents, JobStatus, Outcome, StatusReport,
};

use crate::auth::Auth;
use crate::AppState;

/// How often dependencies are evaluated.
pub const EVALUATE_INTERVAL: Duration = Duration::from_secs(1);
/// How often the status file is rewritten; a crash loses at most this much of the counts.
pub const SAVE_INTERVAL: Duration = Duration::from_secs(5);
/// How long the read model may stay behind the log before it counts as degraded.
pub const READ_MODEL_BEHIND_MAX: Duration = Duration::from_secs(10);
/// Age past which the signing key should be rotated.
pub const SIGNING_KEY_ROTATE_AFTER: Duration = Duration::from_secs(90 * 24 * 60 * 60);
/// Default free space below which commands are refused.
pub const DISK_RESERVE_BYTES_DEFAULT: u64 = 256 * 1024 * 1024;

/// What the status page is told at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusConfig {
    /// Free bytes on the data directory's filesystem below which commands are refused; below
    /// twice as much the disk is degraded.
    pub disk_reserve_bytes: u64,
}

impl Default for StatusConfig {
    fn default() -> StatusConfig {
        StatusConfig {
            disk_reserve_bytes: DISK_RESERVE_BYTES_DEFAULT,
        }
    }
}

/// Availability and incidents, the latest evaluation, and what is needed to make the next.
pub struct StatusHub {
    data_dir: PathBuf,
    config: StatusConfig,
    started_at: SystemTime,
    started: Instant,
    measured: Mutex<Measured>,
    latest: Mutex<Evaluation>,
    /// The read model's position at the last evaluation, to tell how fast it moves.
    read_sample: Mutex<Option<(u64, Instant)>>,
}

struct Measured {
    availability: Availability,
    incidents: Incidents,
}

#[derive(Clone, Default)]
struct Evaluation {
    dependencies: Vec<DependencyStatus>,
    jobs: Vec<JobStatus>,
}

impl StatusHub {
    /// Loads the persisted figures of `data_dir` (a corrupt file is an error that names it)
    /// and notes the start as an incident.
    pub fn open(data_dir: &Path, config: StatusConfig) -> Result<StatusHub, StoreError> {
        let saved = store::load(data_dir)?;
        let now = unix(SystemTime::now());
        let (availability, mut incidents, previous) = match saved {
            Some(saved) => (
                saved.availability,
                saved.incidents,
                format!(
                    "figures kept from the run last recorded at {}",
                    rfc3339(saved.saved_at_unix)
                ),
            ),
            None => (
                Availability::new(),
                Incidents::new(),
                "no figures from earlier runs".to_string(),
            ),
        };
        incidents.note(
            now,
            "tally",
            Health::Healthy,
            &format!("started, version {}; {previous}", env!("CARGO_PKG_VERSION")),
        );
        Ok(StatusHub {
            data_dir: data_dir.to_path_buf(),
            config,
            started_at: SystemTime::now(),
            started: Instant::now(),
            measured: Mutex::new(Measured {
                availability,
                incidents,
            }),
            latest: Mutex::new(Evaluation::default()),
            read_sample: Mutex::new(None),
        })
    }

    /// Counts the outcome of one answered request. Only API requests count: probes and scrapes
    /// of `/healthz`, `/metrics` or this page would make the figure say more than users saw.
    pub fn record(&self, route: &str, status: StatusCode) {
        if !route.starts_with("/v1/") || route == "/v1/openapi.json" {
            return;
        }
        let outcome = if status.is_server_error() {
            Outcome::Failure
        } else {
            Outcome::Success
        };
        let now = unix(SystemTime::now());
        lock(&self.measured).availability.record(now, outcome);
    }

    /// Evaluates every dependency (blocking: reads files and the filesystem), applies the disk
    /// reserve to the engine and records changes as incidents.
    pub fn refresh(&self, app: &AppState) {
        let now = SystemTime::now();
        let disk = self.disk(app);
        let log = log(app);
        let (read_model, read_job) = self.read_model(app);
        let keys = keys(app, &self.data_dir, now);
        let evaluation = Evaluation {
            dependencies: vec![log, disk, read_model, keys],
            jobs: read_job.into_iter().chain(offline_jobs(app)).collect(),
        };
        {
            let mut measured = lock(&self.measured);
            measured.availability.mark_up(unix(now));
            for incident in measured
                .incidents
                .observe(unix(now), &evaluation.dependencies)
            {
                if incident.to == Health::Healthy {
                    tracing::info!(dependency = %incident.dependency, reason = %incident.reason, "dependency healthy again");
                } else {
                    tracing::warn!(dependency = %incident.dependency, health = incident.to.as_str(), reason = %incident.reason, "dependency changed health");
                }
            }
        }
        *lock(&self.latest) = evaluation;
    }

    /// Writes the status file (blocking).
    pub fn save(&self) -> Result<(), StoreError> {
        let saved = {
            let measured = lock(&self.measured);
            Saved {
                saved_at_unix: unix(SystemTime::now()),
                availability: measured.availability.clone(),
                incidents: measured.incidents.clone(),
            }
        };
        store::save(&self.data_dir, &saved)
    }

    /// The report the page, the JSON and the CLI show.
    pub fn report(&self) -> StatusReport {
        let now = SystemTime::now();
        let latest = lock(&self.latest).clone();
        let measured = lock(&self.measured);
        StatusReport {
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: rfc3339(unix(self.started_at)),
            uptime_seconds: self.started.elapsed().as_secs(),
            generated_at: rfc3339(unix(now)),
            health: worst(latest.dependencies.iter().map(|d| d.health)),
            availability: measured.availability.all_figures(unix(now)),
            dependencies: latest.dependencies,
            jobs: latest.jobs,
            incidents: measured.incidents.newest_first(),
        }
    }

    fn disk(&self, app: &AppState) -> DependencyStatus {
        let reserve = self.config.disk_reserve_bytes;
        let (health, reason, details) = match space(&self.data_dir) {
            Err(error) => (
                Health::Down,
                format!(
                    "cannot read the free space of {}: {error}",
                    self.data_dir.display()
                ),
                Vec::new(),
            ),
            Ok(space) => {
                let details = vec![
                    Detail::new("available", human_bytes(space.available)),
                    Detail::new("size", human_bytes(space.total)),
                    Detail::new("reserve", human_bytes(reserve)),
                ];
                let free = human_bytes(space.available);
                if space.available < reserve {
                    let reason = format!("{free} free on the data directory's filesystem, below the reserve of {}: commands are refused until space is freed", human_bytes(reserve));
                    app.engine.refuse_writes(Some(reason.clone()));
                    (Health::Down, reason, details)
                } else {
                    app.engine.refuse_writes(None);
                    if space.available < reserve.saturating_mul(2) {
                        (Health::Degraded, format!("{free} free, close to the reserve of {} below which commands are refused", human_bytes(reserve)), details)
                    } else {
                        (
                            Health::Healthy,
                            format!("{free} free of {}", human_bytes(space.total)),
                            details,
                        )
                    }
                }
            }
        };
        dependency("disk", health, reason, details)
    }

    fn read_model(&self, app: &AppState) -> (DependencyStatus, Option<JobStatus>) {
        let read = match app.read.get() {
            None => {
                return (
                    dependency("read_model", Health::Degraded, "opening (checking or rebuilding the read model file); transfer lookups and history wait for it".into(), Vec::new()),
                    None,
                )
            }
            Some(Err(reason)) => {
                return (
                    dependency("read_model", Health::Down, format!("failed to open: {reason}; transfer lookups and history answer 503 until a restart opens it"), Vec::new()),
                    None,
                )
            }
            Some(Ok(read)) => read,
        };
        let position = read.position();
        let durable = app.engine.durable_position();
        let lag = read.lag();
        let behind = lag.duration;
        let now = Instant::now();
        let rate = {
            let mut sample = lock(&self.read_sample);
            let rate = sample.and_then(|(before, at)| {
                let seconds = now.duration_since(at).as_secs_f64();
                (seconds > 0.0).then(|| position.saturating_sub(before) as f64 / seconds)
            });
            *sample = Some((position, now));
            rate
        };
        let lag = lag.events;
        let details = vec![
            Detail::new("projected position", position),
            Detail::new("durable position", durable),
            Detail::new("lag (events)", lag),
            Detail::new("behind for", human_seconds(behind.as_secs())),
        ];
        let job = (lag > 0).then(|| JobStatus {
            name: "read model projection".into(),
            state: "catching up".into(),
            done: position,
            total: durable,
            rate_per_second: rate,
        });
        let (health, reason) = match read.status() {
            tally_read::ProjectorStatus::Failed { position, reason } => (Health::Down, format!("the projector stopped at position {position}: {reason}; lookups and history are frozen there until a restart")),
            tally_read::ProjectorStatus::Stopped => (Health::Down, "the projector has stopped (the server is shutting down)".to_string()),
            tally_read::ProjectorStatus::Running if lag > 0 && behind > READ_MODEL_BEHIND_MAX => (Health::Degraded, format!("{lag} events behind the log for {}: lookups and history wait for it", human_seconds(behind.as_secs()))),
            tally_read::ProjectorStatus::Running => (Health::Healthy, "following the log".to_string()),
        };
        (dependency("read_model", health, reason, details), job)
    }
}

/// The offline executor's jobs (snapshots, verifications, rebuilds), running or recently
/// finished, with the isolation they run under.
fn offline_jobs(app: &AppState) -> impl Iterator<Item = JobStatus> {
    let isolation = app.offline.isolation().as_str();
    app.offline.jobs().into_iter().map(move |job| JobStatus {
        name: format!("{} #{} ({}, {isolation})", job.name, job.id, job.unit),
        state: job.state.as_str().to_string(),
        done: job.done,
        total: job.total,
        rate_per_second: job.rate_per_second,
    })
}

fn log(app: &AppState) -> DependencyStatus {
    let mut details = vec![
        Detail::new("durable position", app.engine.durable_position()),
        Detail::new("size", human_bytes(app.engine.log_bytes())),
        Detail::new("queued commands", app.engine.queued_commands()),
    ];
    if let Some(snapshot) = app.engine.last_snapshot() {
        let age = SystemTime::now()
            .duration_since(snapshot.written_at)
            .unwrap_or_default();
        details.push(Detail::new(
            "last snapshot",
            format!(
                "at position {}, {} ago",
                snapshot.position,
                human_seconds(age.as_secs())
            ),
        ));
    }
    let (health, reason) = if let Some(failure) = app.engine.failure() {
        (Health::Down, format!("stopped accepting commands: {failure}. Nothing acknowledged is lost; fix the cause and restart"))
    } else if let Some(refused) = app.engine.writes_refused() {
        (Health::Down, format!("refusing commands: {refused}"))
    } else {
        (Health::Healthy, "appending".to_string())
    };
    dependency("log", health, reason, details)
}

fn keys(app: &AppState, data_dir: &Path, now: SystemTime) -> DependencyStatus {
    let verifier = match &app.auth {
        Auth::Disabled => {
            return dependency(
                "signing_keys",
                Health::Degraded,
                "authentication is off (--no-auth): anyone who can reach the listen address can move value".into(),
                Vec::new(),
            )
        }
        Auth::Tokens { verifier, .. } => verifier,
    };
    let keys = match KeyRing::list(data_dir) {
        Ok(keys) => keys,
        Err(error) => {
            return dependency(
                "signing_keys",
                Health::Down,
                format!("cannot read the keys: {error}"),
                Vec::new(),
            )
        }
    };
    let mut details = vec![Detail::new(
        "trusted",
        verifier.trusted_key_ids().join(", "),
    )];
    let Some(signing) = keys.iter().find(|key| key.signing && key.has_secret_key) else {
        return dependency("signing_keys", Health::Degraded, "no signing key with its secret here: `tally keys issue` cannot sign, though tokens signed elsewhere still verify".into(), details);
    };
    let age = now.duration_since(signing.created).unwrap_or_default();
    let rotate_by = unix(signing.created + SIGNING_KEY_ROTATE_AFTER);
    details.push(Detail::new("signing key", signing.id.as_str()));
    details.push(Detail::new("rotate by", rfc3339(rotate_by)));
    if age > SIGNING_KEY_ROTATE_AFTER {
        dependency(
            "signing_keys",
            Health::Degraded,
            format!(
                "signing key {} is {} days old, past its {}-day rotation: run `tally keys rotate`",
                signing.id.as_str(),
                age.as_secs() / 86_400,
                SIGNING_KEY_ROTATE_AFTER.as_secs() / 86_400
            ),
            details,
        )
    } else {
        dependency(
            "signing_keys",
            Health::Healthy,
            format!(
                "signing key {}, due for rotation by {}",
                signing.id.as_str(),
                rfc3339(rotate_by)
            ),
            details,
        )
    }
}

fn dependency(
    name: &str,
    health: Health,
    reason: String,
    details: Vec<Detail>,
) -> DependencyStatus {
    DependencyStatus {
        name: name.to_string(),
        health,
        reason,
        details,
    }
}

/// Evaluates once a second and saves every few seconds, until the task is aborted.
pub(crate) async fn monitor(app: AppState) {
    let mut interval = tokio::time::interval(EVALUATE_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_save = Instant::now();
    loop {
        interval.tick().await;
        let save = last_save.elapsed() >= SAVE_INTERVAL;
        let worker = app.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            worker.status.refresh(&worker);
            if save {
                worker.status.save()
            } else {
                Ok(())
            }
        })
        .await;
        if save {
            last_save = Instant::now();
        }
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "cannot save the status file"),
            Err(error) => tracing::error!(%error, "the status evaluation panicked"),
        }
    }
}

fn unix(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
