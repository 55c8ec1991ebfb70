//! The schedule of durable retries: exponential backoff, capped, with jitter.
//!
//! The durable retry queue (in the log) asks [`Backoff::retry_delay`] when to try an order
//! again. Jitter spreads the retries of many orders that failed together (a target restart)
//! so they do not come back as one wave. The functions are pure: the random source is passed
//! in, so the queue can use a seeded one in deterministic simulation.

use std::time::Duration;

use rand::Rng;

use crate::limits::BACKOFF_EXPONENT_MAX;

/// An exponential backoff: `base × 2^attempt`, never above `cap`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The delay before the first retry (attempt 0), before jitter.
    pub base: Duration,
    /// The longest delay.
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The exponential delay of retry `attempt` (0 for the first retry) before jitter.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        assert!(self.base <= self.cap);
        let factor = 1u32 << attempt.min(BACKOFF_EXPONENT_MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// "Full jitter": a delay drawn uniformly from `[0, ceiling(attempt)]`. Of the usual
    /// jitters it spreads a wave of retries the most, at the cost of sometimes retrying early.
    pub fn retry_delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(attempt);
        let delay = rng.random_range(Duration::ZERO..=ceiling);
        assert!(delay <= self.cap);
        delay
    }

    /// "Decorrelated jitter": a delay drawn from `[base, 3 × previous]`, capped; for a queue
    /// that keeps the previous delay rather than the attempt number. Pass `base` as the first
    /// `previous`.
    pub fn decorrelated_delay(&self, previous: Duration, rng: &mut impl Rng) -> Duration {
        assert!(self.base <= self.cap);
        let upper = previous.saturating_mul(3).clamp(self.base, self.cap);
        let delay = rng.random_range(self.base..=upper);
        assert!(delay >= self.base);
        assert!(delay <= self.cap);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn backoff(base_ms: u64, cap_ms: u64) -> Backoff {
        Backoff {
            base: Duration::from_millis(base_ms),
            cap: Duration::from_millis(base_ms.max(cap_ms)),
        }
    }

    proptest! {
        #[test]
        fn full_jitter_stays_under_the_exponential_ceiling(
            base_ms in 1u64..10_000, cap_ms in 1u64..1_000_000, attempt in 0u32..100, seed: u64,
        ) {
            let backoff = backoff(base_ms, cap_ms);
            let mut rng = StdRng::seed_from_u64(seed);
            let delay = backoff.retry_delay(attempt, &mut rng);
            prop_assert!(delay <= backoff.ceiling(attempt));
            prop_assert!(backoff.ceiling(attempt) <= backoff.cap);
        }

        #[test]
        fn the_ceiling_grows_until_the_cap(
            base_ms in 1u64..10_000, cap_ms in 1u64..1_000_000, attempt in 0u32..100,
        ) {
            let backoff = backoff(base_ms, cap_ms);
            prop_assert!(backoff.ceiling(attempt) <= backoff.ceiling(attempt + 1));
        }

        #[test]
        fn decorrelated_jitter_stays_between_base_and_cap(
            base_ms in 1u64..10_000, cap_ms in 1u64..1_000_000, previous_ms in 0u64..10_000_000,
            seed: u64,
        ) {
            let backoff = backoff(base_ms, cap_ms);
            let mut rng = StdRng::seed_from_u64(seed);
            let delay = backoff.decorrelated_delay(Duration::from_millis(previous_ms), &mut rng);
            prop_assert!(delay >= backoff.base && delay <= backoff.cap);
        }
    }

    #[test]
    fn full_jitter_spreads_a_wave() {
        // A thousand orders failing together come back over the whole interval, not at once.
        let backoff = backoff(100, 100_000);
        let mut rng = StdRng::seed_from_u64(7);
        let delays: Vec<Duration> = (0..1000)
            .map(|_| backoff.retry_delay(3, &mut rng))
            .collect();
        let early = delays
            .iter()
            .filter(|d| **d < Duration::from_millis(400))
            .count();
        assert!(
            (350..650).contains(&early),
            "{early} of 1000 in the first half"
        );
    }
}
