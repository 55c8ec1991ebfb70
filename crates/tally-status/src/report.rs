//! The status report: what `/status.json` serves, `/status` renders as HTML and
//! `tally status` renders as text. One type for all three, so they cannot disagree.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How well a dependency (or Tally as a whole) works.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Works as designed.
    Healthy,
    /// Works, but worse than designed or close to failing; the reason says how.
    Degraded,
    /// Does not work; the reason says what fails and what it means for requests.
    Down,
}

impl Health {
    /// The word shown on the page.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Down => "down",
        }
    }
}

/// A name and a value shown beside a dependency or a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Detail {
    /// What the value is.
    pub name: String,
    /// The value, formatted for people.
    pub value: String,
}

impl Detail {
    /// A detail from anything printable.
    pub fn new(name: &str, value: impl std::fmt::Display) -> Detail {
        Detail {
            name: name.to_string(),
            value: value.to_string(),
        }
    }
}

/// The state of one thing Tally depends on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DependencyStatus {
    /// A stable name (`log`, `disk`, `read_model`, `signing_keys`, ...).
    pub name: String,
    /// Its health.
    pub health: Health,
    /// Why it has this health, in a sentence.
    pub reason: String,
    /// Figures behind the verdict.
    pub details: Vec<Detail>,
}

/// A long-running offline job and how far it got.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobStatus {
    /// What the job does.
    pub name: String,
    /// `running`, `idle`, ...
    pub state: String,
    /// Units done.
    pub done: u64,
    /// Units in all (0 when unknown).
    pub total: u64,
    /// Units per second, when measured.
    pub rate_per_second: Option<f64>,
}

/// Availability over one window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WindowFigures {
    /// `1h`, `24h` or `30d`.
    pub window: String,
    /// The window's length.
    pub seconds: u64,
    /// API requests answered in the window.
    pub requests: u64,
    /// Of which failed (5xx or refused for overload).
    pub failed: u64,
    /// `1 - failed / requests`; absent when there were no requests.
    pub availability: Option<f64>,
    /// Seconds of the window during which Tally was running and counting.
    pub observed_seconds: u64,
}

impl WindowFigures {
    /// The share of the window during which Tally was running, in percent.
    pub fn observed_percent(&self) -> f64 {
        if self.seconds == 0 {
            return 0.0;
        }
        100.0 * self.observed_seconds as f64 / self.seconds as f64
    }
}

/// A change of a dependency's health.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Incident {
    /// When, in seconds since the Unix epoch.
    pub at_unix: u64,
    /// When, in RFC 3339.
    pub at: String,
    /// The dependency (or `tally` for the process itself).
    pub dependency: String,
    /// Its health before, if it had one.
    pub from: Option<Health>,
    /// Its health after.
    pub to: Health,
    /// Why.
    pub reason: String,
}

/// Everything the status page shows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StatusReport {
    /// Tally's version.
    pub version: String,
    /// When this process started, in RFC 3339.
    pub started_at: String,
    /// Seconds since then.
    pub uptime_seconds: u64,
    /// When this report was made, in RFC 3339.
    pub generated_at: String,
    /// The worst health of any dependency.
    pub health: Health,
    /// Availability over 1 hour, 24 hours and 30 days.
    pub availability: Vec<WindowFigures>,
    /// Every dependency.
    pub dependencies: Vec<DependencyStatus>,
    /// Offline jobs.
    pub jobs: Vec<JobStatus>,
    /// Recent health changes, newest first.
    pub incidents: Vec<Incident>,
}

/// The worst of several healths; healthy when there are none.
pub fn worst(healths: impl IntoIterator<Item = Health>) -> Health {
    healths.into_iter().max().unwrap_or(Health::Healthy)
}

/// RFC 3339 (UTC, whole seconds) of a Unix time.
pub fn rfc3339(unix_seconds: u64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix_seconds),
    )
    .to_string()
}

/// An availability ratio as a percentage with three decimals, or a dash without requests.
/// Never rounds a ratio below one up to 100 %, which would hide failures.
pub fn percent(availability: Option<f64>) -> String {
    match availability {
        None => "—".to_string(),
        Some(ratio) if ratio >= 1.0 => "100 %".to_string(),
        Some(ratio) => {
            let thousandths = (ratio * 100_000.0).floor() / 1_000.0;
            format!("{thousandths:.3} %")
        }
    }
}

/// A duration in seconds for people: `3d 4h`, `5h 2m`, `4m 10s`, `12s`.
pub fn human_seconds(seconds: u64) -> String {
    let (days, hours, minutes, secs) = (
        seconds / 86_400,
        seconds % 86_400 / 3_600,
        seconds % 3_600 / 60,
        seconds % 60,
    );
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{secs}s"),
        (0, 0, _) => format!("{minutes}m {secs}s"),
        (0, _, _) => format!("{hours}h {minutes}m"),
        _ => format!("{days}d {hours}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_never_rounds_a_failure_away() {
        assert_eq!(percent(None), "—");
        assert_eq!(percent(Some(1.0)), "100 %");
        assert_eq!(percent(Some(0.999_999_9)), "99.999 %");
        assert_eq!(percent(Some(0.9)), "90.000 %");
        assert_eq!(percent(Some(0.0)), "0.000 %");
    }

    #[test]
    fn worst_orders_down_above_degraded_above_healthy() {
        assert_eq!(worst([]), Health::Healthy);
        assert_eq!(worst([Health::Healthy, Health::Degraded]), Health::Degraded);
        assert_eq!(worst([Health::Down, Health::Degraded]), Health::Down);
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_seconds(12), "12s");
        assert_eq!(human_seconds(250), "4m 10s");
        assert_eq!(human_seconds(18_120), "5h 2m");
        assert_eq!(human_seconds(273_600), "3d 4h");
    }
}
