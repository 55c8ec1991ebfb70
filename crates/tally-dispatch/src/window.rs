//! A sliding window as a fixed ring of buckets: the rates the dispatcher decides on (success
//! rate for ejection and for the retry budget) and the ones it reports (the 10-minute
//! statistics) describe the recent past, at a fixed memory cost whatever the traffic.
//!
//! Time is passed in, never read here, so the window is tested without sleeping.

use std::ops::AddAssign;
use std::time::{Duration, Instant};

/// Counts kept per bucket: what every window in this crate needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Attempts (or deliveries) that ended.
    pub requests: u64,
    /// Of those, the successful ones.
    pub successes: u64,
    /// Attempts whose outcome was recorded (the retry budget counts requests and attempts
    /// apart: a request is an original delivery, an attempt each try of it).
    pub attempts: u64,
    /// Retries taken.
    pub retries: u64,
    /// Retries refused by the budget.
    pub retries_refused: u64,
    /// Ejections of an endpoint.
    pub ejections: u64,
    /// Sum of latencies, in microseconds, of the requests.
    pub latency_us_sum: u64,
    /// Largest latency, in microseconds.
    pub latency_us_max: u64,
}

impl AddAssign for Counts {
    fn add_assign(&mut self, other: Counts) {
        self.requests += other.requests;
        self.successes += other.successes;
        self.attempts += other.attempts;
        self.retries += other.retries;
        self.retries_refused += other.retries_refused;
        self.ejections += other.ejections;
        self.latency_us_sum += other.latency_us_sum;
        self.latency_us_max = self.latency_us_max.max(other.latency_us_max);
    }
}

impl Counts {
    /// Successes per request in percent, or `None` without requests.
    pub fn success_percent(&self) -> Option<u64> {
        assert!(self.successes <= self.requests);
        (self.requests > 0).then(|| self.successes * 100 / self.requests)
    }
}

/// A window of `buckets` buckets of `bucket_length` each, sliding one bucket at a time.
#[derive(Clone, Debug)]
pub struct Window {
    buckets: Vec<Counts>,
    bucket_length: Duration,
    origin: Instant,
    /// Index (since `origin`) of the newest bucket.
    head: u64,
}

impl Window {
    /// A window of `length` split into `buckets` buckets, starting at `origin`.
    pub fn new(length: Duration, buckets: usize, origin: Instant) -> Window {
        assert!(buckets > 0);
        assert!(length >= Duration::from_millis(buckets as u64));
        Window {
            buckets: vec![Counts::default(); buckets],
            bucket_length: length / buckets as u32,
            origin,
            head: 0,
        }
    }

    /// Adds `counts` to the bucket of `now`.
    pub fn add(&mut self, now: Instant, counts: Counts) {
        let index = self.advance(now);
        self.buckets[index] += counts;
    }

    /// The sum of the window ending at `now`.
    pub fn sum(&mut self, now: Instant) -> Counts {
        self.advance(now);
        let mut total = Counts::default();
        for bucket in &self.buckets {
            total += *bucket;
        }
        total
    }

    /// Forgets everything counted so far.
    pub fn clear(&mut self) {
        self.buckets.fill(Counts::default());
    }

    /// Slides the window to `now`, clearing the buckets that fell out; returns the index of
    /// `now`'s bucket. A `now` before the newest bucket (callers race to the lock with
    /// slightly older clocks) counts in the newest bucket.
    fn advance(&mut self, now: Instant) -> usize {
        let elapsed = now.saturating_duration_since(self.origin);
        let index = (elapsed.as_nanos() / self.bucket_length.as_nanos()) as u64;
        let count = self.buckets.len() as u64;
        if index > self.head {
            let stale = (index - self.head).min(count);
            for step in 1..=stale {
                let slot = ((self.head + step) % count) as usize;
                self.buckets[slot] = Counts::default();
            }
            self.head = index;
        }
        (self.head % count) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(successes: u64) -> Counts {
        Counts {
            requests: 1,
            successes,
            ..Counts::default()
        }
    }

    #[test]
    fn old_buckets_age_out() {
        let origin = Instant::now();
        let mut window = Window::new(Duration::from_secs(10), 10, origin);
        window.add(origin, one(1));
        window.add(origin + Duration::from_millis(4500), one(0));
        assert_eq!(window.sum(origin + Duration::from_secs(9)).requests, 2);
        // The first bucket falls out at 10 s, the second (4 s to 5 s) at 14 s.
        assert_eq!(window.sum(origin + Duration::from_secs(10)).requests, 1);
        assert_eq!(
            window.sum(origin + Duration::from_millis(13_999)).requests,
            1
        );
        assert_eq!(window.sum(origin + Duration::from_secs(14)).requests, 0);
        // A long silence clears everything, once.
        window.add(origin + Duration::from_secs(1000), one(1));
        assert_eq!(window.sum(origin + Duration::from_secs(1000)).successes, 1);
    }

    #[test]
    fn an_older_clock_counts_in_the_newest_bucket() {
        let origin = Instant::now();
        let mut window = Window::new(Duration::from_secs(10), 10, origin);
        window.add(origin + Duration::from_secs(5), one(1));
        window.add(origin + Duration::from_secs(2), one(1));
        assert_eq!(window.sum(origin + Duration::from_secs(5)).requests, 2);
    }
}
