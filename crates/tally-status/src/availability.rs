//! Availability measured from Tally's own request outcomes.
//!
//! A status page that reports what it is told (or nothing at all) stays green while the
//! service fails. Tally counts the outcome of every API request it answers instead: a request
//! failed if it got a 5xx or was refused for overload. Counts live in two fixed rings: one
//! bucket per minute for the last day and one per hour for the last thirty days, so memory and
//! the persisted file have a fixed size however long the server runs.
//!
//! Requests cannot be counted while the process is not running, so each bucket also says
//! whether Tally was up during it ("observed"); the page shows how much of each window was
//! observed beside the ratio, rather than pretending that minutes without a server were fine.

use crate::report::WindowFigures;

/// Minute buckets kept: one day.
pub const MINUTES_KEPT: usize = 24 * 60;
/// Hour buckets kept: thirty days.
pub const HOURS_KEPT: usize = 30 * 24;

/// How one request ended, as far as availability is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered as designed, including 4xx answers to bad requests.
    Success,
    /// A 5xx, or refused for overload.
    Failure,
}

/// The windows the page reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// The last 60 minute buckets (the current one included).
    Hour,
    /// The last 1,440 minute buckets.
    Day,
    /// The last 720 hour buckets.
    Month,
}

impl Window {
    /// Every window, shortest first.
    pub const ALL: [Window; 3] = [Window::Hour, Window::Day, Window::Month];

    /// The short name shown on the page.
    pub fn name(self) -> &'static str {
        match self {
            Window::Hour => "1h",
            Window::Day => "24h",
            Window::Month => "30d",
        }
    }

    /// The window's length in seconds.
    pub fn seconds(self) -> u64 {
        match self {
            Window::Hour => 3_600,
            Window::Day => 86_400,
            Window::Month => 30 * 86_400,
        }
    }
}

/// Counts of one minute or one hour.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Minutes (or hours) since the Unix epoch: which minute this bucket counts. A ring slot
    /// holding another index belongs to an older period and counts as empty.
    pub index: u64,
    /// Requests that succeeded.
    pub succeeded: u64,
    /// Requests that failed.
    pub failed: u64,
    /// Minutes of this bucket during which Tally was running (0 or 1 for a minute bucket).
    pub observed_minutes: u32,
}

/// The two rings of buckets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Availability {
    minutes: Vec<Bucket>,
    hours: Vec<Bucket>,
}

impl Default for Availability {
    fn default() -> Availability {
        Availability::new()
    }
}

impl Availability {
    /// No requests counted yet.
    pub fn new() -> Availability {
        Availability {
            minutes: vec![Bucket::default(); MINUTES_KEPT],
            hours: vec![Bucket::default(); HOURS_KEPT],
        }
    }

    /// Rebuilds from persisted buckets; `None` if a ring has the wrong length.
    pub fn from_buckets(minutes: Vec<Bucket>, hours: Vec<Bucket>) -> Option<Availability> {
        (minutes.len() == MINUTES_KEPT && hours.len() == HOURS_KEPT)
            .then_some(Availability { minutes, hours })
    }

    /// The minute ring, then the hour ring, as stored.
    pub fn buckets(&self) -> (&[Bucket], &[Bucket]) {
        (&self.minutes, &self.hours)
    }

    /// Counts one request answered at `unix_seconds`. A time older than the rings keep
    /// (a clock stepped back by more than a day) is dropped rather than allowed to overwrite
    /// newer counts.
    pub fn record(&mut self, unix_seconds: u64, outcome: Outcome) {
        self.mark_up(unix_seconds);
        let minute = unix_seconds / 60;
        for bucket in [
            slot(&mut self.minutes, minute),
            slot(&mut self.hours, minute / 60),
        ]
        .into_iter()
        .flatten()
        {
            match outcome {
                Outcome::Success => bucket.succeeded = bucket.succeeded.saturating_add(1),
                Outcome::Failure => bucket.failed = bucket.failed.saturating_add(1),
            }
        }
    }

    /// Notes that Tally was running at `unix_seconds`; called at least once a minute.
    pub fn mark_up(&mut self, unix_seconds: u64) {
        let minute = unix_seconds / 60;
        let Some(minute_bucket) = slot(&mut self.minutes, minute) else {
            return;
        };
        if minute_bucket.observed_minutes != 0 {
            return;
        }
        minute_bucket.observed_minutes = 1;
        if let Some(hour_bucket) = slot(&mut self.hours, minute / 60) {
            hour_bucket.observed_minutes = hour_bucket.observed_minutes.saturating_add(1);
        }
    }

    /// The figures of one window ending at `now_unix_seconds`.
    pub fn figures(&self, window: Window, now_unix_seconds: u64) -> WindowFigures {
        let minute = now_unix_seconds / 60;
        let (ring, last, count, bucket_seconds) = match window {
            Window::Hour => (&self.minutes, minute, 60, 60),
            Window::Day => (&self.minutes, minute, MINUTES_KEPT as u64, 60),
            Window::Month => (&self.hours, minute / 60, HOURS_KEPT as u64, 3_600),
        };
        let mut figures = WindowFigures {
            window: window.name().to_string(),
            seconds: window.seconds(),
            requests: 0,
            failed: 0,
            availability: None,
            observed_seconds: 0,
        };
        for index in last.saturating_sub(count - 1)..=last {
            let bucket = &ring[(index % ring.len() as u64) as usize];
            if bucket.index != index {
                continue;
            }
            figures.requests = figures
                .requests
                .saturating_add(bucket.succeeded)
                .saturating_add(bucket.failed);
            figures.failed = figures.failed.saturating_add(bucket.failed);
            figures.observed_seconds = figures
                .observed_seconds
                .saturating_add(u64::from(bucket.observed_minutes) * 60);
        }
        debug_assert!(figures.observed_seconds <= count * bucket_seconds);
        if figures.requests > 0 {
            figures.availability = Some(1.0 - figures.failed as f64 / figures.requests as f64);
        }
        figures
    }

    /// The figures of every window.
    pub fn all_figures(&self, now_unix_seconds: u64) -> Vec<WindowFigures> {
        Window::ALL
            .iter()
            .map(|window| self.figures(*window, now_unix_seconds))
            .collect()
    }
}

/// The bucket for `index` in its ring, emptied first if it held an older period; `None` if the
/// slot already holds a newer period.
fn slot(ring: &mut [Bucket], index: u64) -> Option<&mut Bucket> {
    let length = ring.len() as u64;
    let bucket = &mut ring[(index % length) as usize];
    if bucket.index > index {
        return None;
    }
    if bucket.index < index {
        *bucket = Bucket {
            index,
            ..Bucket::default()
        };
    }
    Some(bucket)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_790_000_000 / 3_600 * 3_600; // on an hour boundary, in 2026

    #[test]
    fn a_known_sequence_gives_known_figures() {
        let mut availability = Availability::new();
        // In time order: 100 failures two days ago, 900 successes two hours ago, then 90
        // successes and 10 failures in the current minute.
        for _ in 0..100 {
            availability.record(T0 + 86_400, Outcome::Failure);
        }
        for _ in 0..900 {
            availability.record(T0 + 3 * 86_400 - 7_200, Outcome::Success);
        }
        for i in 0..90 {
            availability.record(T0 + 3 * 86_400 + i % 60, Outcome::Success);
        }
        for _ in 0..10 {
            availability.record(T0 + 3 * 86_400 + 30, Outcome::Failure);
        }
        let now = T0 + 3 * 86_400 + 59;
        let hour = availability.figures(Window::Hour, now);
        assert_eq!((hour.requests, hour.failed), (100, 10));
        assert_eq!(hour.availability, Some(0.9));
        let day = availability.figures(Window::Day, now);
        assert_eq!((day.requests, day.failed), (1_000, 10));
        assert_eq!(day.availability, Some(0.99));
        let month = availability.figures(Window::Month, now);
        assert_eq!((month.requests, month.failed), (1_100, 110));
        assert_eq!(month.availability, Some(0.9));
        // Three distinct minutes were observed.
        assert_eq!(month.observed_seconds, 3 * 60);
        assert_eq!(hour.observed_seconds, 60);
    }

    #[test]
    fn no_requests_is_no_figure_not_a_hundred_percent() {
        let mut availability = Availability::new();
        availability.mark_up(T0);
        let hour = availability.figures(Window::Hour, T0);
        assert_eq!(hour.availability, None);
        assert_eq!(hour.observed_seconds, 60);
    }

    #[test]
    fn counts_leave_the_window_when_it_passes_them() {
        let mut availability = Availability::new();
        availability.record(T0, Outcome::Failure);
        assert_eq!(availability.figures(Window::Hour, T0 + 3_599).failed, 1);
        assert_eq!(availability.figures(Window::Hour, T0 + 3_600).failed, 0);
        assert_eq!(availability.figures(Window::Day, T0 + 86_399).failed, 1);
        assert_eq!(availability.figures(Window::Day, T0 + 86_400).failed, 0);
        assert_eq!(
            availability
                .figures(Window::Month, T0 + 30 * 86_400 - 1)
                .failed,
            1
        );
        assert_eq!(
            availability.figures(Window::Month, T0 + 30 * 86_400).failed,
            0
        );
    }

    #[test]
    fn a_clock_stepped_back_never_overwrites_newer_counts() {
        let mut availability = Availability::new();
        availability.record(T0 + 2 * 86_400, Outcome::Success);
        // Exactly one ring length earlier: the same minute slot, an older minute.
        availability.record(T0 + 86_400, Outcome::Failure);
        let day = availability.figures(Window::Day, T0 + 2 * 86_400);
        assert_eq!((day.requests, day.failed), (1, 0));
    }

    #[test]
    fn observed_minutes_count_once_per_minute() {
        let mut availability = Availability::new();
        for second in 0..180 {
            availability.mark_up(T0 + second);
            availability.record(T0 + second, Outcome::Success);
        }
        let hour = availability.figures(Window::Hour, T0 + 179);
        assert_eq!(hour.observed_seconds, 180);
        assert_eq!(
            availability
                .figures(Window::Month, T0 + 179)
                .observed_seconds,
            180
        );
    }
}
