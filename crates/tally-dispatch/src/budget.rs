//! The retry budget (after Finagle's `RetryBudget`): retries may add at most a fixed share of
//! load to a target, and none while the target is mostly failing.
//!
//! Retrying every failure multiplies the load on a target exactly when it is least able to
//! take it; a target at 0 % success with three attempts per request receives triple traffic.
//! The budget allows, over a sliding window, `percent` retries per hundred requests plus
//! `min_per_second` retries per second (so a quiet target can still be retried), and refuses
//! every retry while the window's success rate is below `success_percent_min` (with at least
//! `request_volume_min` requests in it, so a single early failure does not gate retries).
//!
//! Pure: time is passed in.

use std::time::{Duration, Instant};

use crate::limits::WINDOW_BUCKETS;
use crate::window::{Counts, Window};

/// How much retrying a dispatcher may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryBudgetConfig {
    /// Retries allowed per hundred requests over the window.
    pub percent: u32,
    /// Retries allowed per second of the window whatever the traffic.
    pub min_per_second: u32,
    /// The sliding window the requests, retries and success rate are counted over.
    pub window: Duration,
    /// No retries while the window's success rate (in percent) is below this.
    pub success_percent_min: u32,
    /// Requests the window must hold before its success rate gates retries.
    pub request_volume_min: u64,
}

impl Default for RetryBudgetConfig {
    fn default() -> RetryBudgetConfig {
        RetryBudgetConfig {
            percent: 20,
            min_per_second: 10,
            window: Duration::from_secs(10),
            success_percent_min: 50,
            request_volume_min: 20,
        }
    }
}

/// Why a retry was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The window's retries already reach the budget.
    Exhausted,
    /// The target's recent success rate is below the threshold.
    LowSuccessRate,
}

/// A retry budget's state.
#[derive(Clone, Debug)]
pub struct RetryBudget {
    config: RetryBudgetConfig,
    window: Window,
}

impl RetryBudget {
    /// An empty budget: only the per-second minimum is available.
    pub fn new(config: RetryBudgetConfig, now: Instant) -> RetryBudget {
        RetryBudget {
            config,
            window: Window::new(config.window, WINDOW_BUCKETS, now),
        }
    }

    /// Records one original request (a retry is not one): it earns `percent / 100` retries.
    pub fn deposit(&mut self, now: Instant) {
        self.window.add(
            now,
            Counts {
                requests: 1,
                ..Counts::default()
            },
        );
    }

    /// Records the outcome of one attempt, a retry or not, for the success rate.
    pub fn record(&mut self, now: Instant, success: bool) {
        self.window.add(
            now,
            Counts {
                successes: u64::from(success),
                attempts: 1,
                ..Counts::default()
            },
        );
    }

    /// Takes one retry from the budget, or says why not.
    pub fn withdraw(&mut self, now: Instant) -> Result<(), Refusal> {
        let sum = self.window.sum(now);
        let attempts = sum.attempts;
        if attempts >= self.config.request_volume_min
            && sum.successes * 100 < attempts * u64::from(self.config.success_percent_min)
        {
            self.window.add(now, refused());
            return Err(Refusal::LowSuccessRate);
        }
        if sum.retries >= self.allowed(&sum) {
            self.window.add(now, refused());
            return Err(Refusal::Exhausted);
        }
        self.window.add(
            now,
            Counts {
                retries: 1,
                ..Counts::default()
            },
        );
        Ok(())
    }

    /// Retries taken and requests made over the window ending at `now`.
    pub fn usage(&mut self, now: Instant) -> (u64, u64) {
        let sum = self.window.sum(now);
        (sum.retries, sum.requests)
    }

    /// Retries the window's requests allow.
    fn allowed(&self, sum: &Counts) -> u64 {
        let floor = u64::from(self.config.min_per_second) * self.config.window.as_secs().max(1);
        floor + sum.requests * u64::from(self.config.percent) / 100
    }
}

fn refused() -> Counts {
    Counts {
        retries_refused: 1,
        ..Counts::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config(percent: u32, min_per_second: u32) -> RetryBudgetConfig {
        RetryBudgetConfig {
            percent,
            min_per_second,
            window: Duration::from_secs(10),
            success_percent_min: 50,
            request_volume_min: 20,
        }
    }

    #[test]
    fn no_retries_while_the_target_mostly_fails() {
        let now = Instant::now();
        let mut budget = RetryBudget::new(config(100, 10), now);
        for _ in 0..19 {
            budget.deposit(now);
            budget.record(now, false);
        }
        // Below the request volume the success rate does not gate yet.
        assert_eq!(budget.withdraw(now), Ok(()));
        budget.record(now, false);
        assert_eq!(budget.withdraw(now), Err(Refusal::LowSuccessRate));
        // Once the failures age out of the window, retries come back.
        assert_eq!(budget.withdraw(now + Duration::from_secs(11)), Ok(()));
    }

    proptest! {
        #[test]
        fn retries_never_exceed_the_budget(
            percent in 0u32..=100, min_per_second in 0u32..5,
            requests in proptest::collection::vec(0u32..50, 1..40),
        ) {
            // Each tick (100 ms) some requests arrive, all succeed at first, and every one
            // asks for a retry: the budget must hold whatever the traffic.
            let start = Instant::now();
            let mut budget = RetryBudget::new(config(percent, min_per_second), start);
            for (tick, count) in requests.iter().enumerate() {
                let now = start + Duration::from_millis(100 * tick as u64);
                for _ in 0..*count {
                    budget.deposit(now);
                    budget.record(now, true);
                    let _ = budget.withdraw(now);
                }
                let (retries, deposited) = budget.usage(now);
                let allowed = u64::from(min_per_second) * 10 + deposited * u64::from(percent) / 100;
                prop_assert!(retries <= allowed, "{retries} retries for {deposited} requests");
            }
        }
    }
}
