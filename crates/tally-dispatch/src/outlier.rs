//! Outlier ejection (after Envoy's `outlier_detection`): an endpoint that fails much more than
//! it should is taken out of rotation for a while, and let back in only once a probe succeeds.
//!
//! Passive health checking: the detector learns only from the outcomes of real deliveries, so
//! it needs no health endpoint on the target. The rules:
//!
//! - an endpoint is an outlier when it fails `consecutive_failures` times in a row, or when
//!   its success rate over the window is below `success_percent_min` with at least
//!   `request_volume_min` outcomes in the window;
//! - an outlier is ejected for `base_ejection × 2^k`, capped by `max_ejection`, where `k` is
//!   how many times it was ejected before and not yet forgiven;
//! - at most `max_ejection_percent` of a group's endpoints are ejected at once (but at least
//!   one may be, as in Envoy): when a whole group looks sick the fault is more likely shared
//!   (the target's database) and ejecting everything would only concentrate load;
//! - when its time is up, an ejected endpoint is offered exactly one request, the probe. Its
//!   success re-admits the endpoint and forgives one ejection (`k - 1`); its failure ejects it
//!   again with `k + 1`. Unlike Envoy, which re-admits on the timer alone, a recovering
//!   endpoint takes one request rather than its full share of traffic until it proves healthy.
//!
//! The cap limits *ejections*, not the failover decision. An endpoint that fails
//! `consecutive_failures` times in a row but stays in rotation because of the cap is still not
//! *dependable*: a group with no dependable endpoint (each ejected, probing or failing in a row)
//! fails over to the backup group, whatever the cap, since the backup exists for exactly that
//! case. Meanwhile such an endpoint gets *trials* ([`Detector::admit_dependable`]): one request
//! at a time, on the schedule its ejection would have had; a successful trial makes it
//! dependable again, a failed one waits for the next. So a cap of 50 % no longer keeps
//! deliveries on dead primaries when every primary is dead.
//!
//! Pure: time is passed in; the dispatcher keeps one detector per endpoint group under a lock.

use std::time::{Duration, Instant};

use crate::limits::{EJECTION_EXPONENT_MAX, WINDOW_BUCKETS};
use crate::window::{Counts, Window};

/// When endpoints are ejected and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutlierConfig {
    /// Failures in a row that eject an endpoint.
    pub consecutive_failures: u32,
    /// An endpoint whose success rate (in percent) over the window is below this is ejected.
    pub success_percent_min: u32,
    /// Outcomes the window must hold before its success rate counts.
    pub request_volume_min: u64,
    /// The sliding window of the success rate.
    pub window: Duration,
    /// The first ejection's length.
    pub base_ejection: Duration,
    /// The longest ejection.
    pub max_ejection: Duration,
    /// The largest share of a group's endpoints ejected at once, in percent.
    pub max_ejection_percent: u32,
}

impl Default for OutlierConfig {
    fn default() -> OutlierConfig {
        OutlierConfig {
            consecutive_failures: 5,
            success_percent_min: 50,
            request_volume_min: 20,
            window: Duration::from_secs(10),
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}

/// May a request go to an endpoint?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Yes, it is healthy.
    Admitted,
    /// Yes, as the probe of an ejected endpoint whose time is up; its outcome decides.
    Probe,
    /// No: it is ejected, or its probe is in flight.
    Refused,
}

/// What an outcome changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Nothing.
    None,
    /// The endpoint was ejected for this long.
    Ejected(Duration),
    /// The endpoint's probe succeeded: it is back in rotation.
    Readmitted,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Healthy,
    Ejected {
        until: Instant,
    },
    /// One request in flight to learn whether the endpoint recovered: the probe of an ejected
    /// endpoint (`ejected`), or the trial of one failing in a row but kept by the cap.
    Probing {
        since: Instant,
        ejected: bool,
    },
}

#[derive(Clone, Debug)]
struct Endpoint {
    state: State,
    consecutive_failures: u32,
    /// Ejections not yet forgiven by successful probes: the `k` of `base × 2^k`.
    ejections: u32,
    /// When an endpoint failing in a row but not ejected (the cap) may have its next trial.
    trial_after: Instant,
    window: Window,
}

/// The health of one group of endpoints.
#[derive(Clone, Debug)]
pub struct Detector {
    config: OutlierConfig,
    /// A probe not answered after this long is taken as lost (its caller gave up) and another
    /// is offered; longer than any attempt can take.
    probe_lost_after: Duration,
    endpoints: Vec<Endpoint>,
}

impl Detector {
    /// A detector of `count` endpoints, all healthy, whose probes are taken as lost after
    /// `probe_lost_after` (longer than an attempt can take).
    pub fn new(
        config: OutlierConfig,
        probe_lost_after: Duration,
        count: usize,
        now: Instant,
    ) -> Detector {
        assert!(count > 0);
        assert!(config.consecutive_failures > 0);
        assert!(config.base_ejection <= config.max_ejection);
        let endpoint = Endpoint {
            state: State::Healthy,
            consecutive_failures: 0,
            ejections: 0,
            trial_after: now,
            window: Window::new(config.window, WINDOW_BUCKETS, now),
        };
        Detector {
            config,
            probe_lost_after,
            endpoints: vec![endpoint; count],
        }
    }

    /// Whether a request may go to endpoint `index` now; hands out the probe of an ejected
    /// endpoint whose time is up (the caller must then [`Detector::record`] its outcome).
    pub fn admit(&mut self, index: usize, now: Instant) -> Admission {
        let lost_after = self.probe_lost_after;
        let endpoint = &mut self.endpoints[index];
        match endpoint.state {
            State::Healthy => Admission::Admitted,
            State::Ejected { until } if now < until => Admission::Refused,
            State::Probing { since, .. } if now < since + lost_after => Admission::Refused,
            State::Ejected { .. } => {
                endpoint.state = State::Probing {
                    since: now,
                    ejected: true,
                };
                Admission::Probe
            }
            State::Probing { ejected, .. } => {
                endpoint.state = State::Probing {
                    since: now,
                    ejected,
                };
                Admission::Probe
            }
        }
    }

    /// [`Detector::admit`] for a group that has no dependable endpoint and is failing over: an
    /// endpoint failing in a row (kept in rotation only by the cap) gets no regular traffic,
    /// only a trial when its time is up, so that it can show it recovered.
    pub fn admit_dependable(&mut self, index: usize, now: Instant) -> Admission {
        if self.is_dependable(index) {
            return Admission::Admitted;
        }
        let endpoint = &mut self.endpoints[index];
        match endpoint.state {
            State::Healthy if now < endpoint.trial_after => Admission::Refused,
            State::Healthy => {
                endpoint.state = State::Probing {
                    since: now,
                    ejected: false,
                };
                Admission::Probe
            }
            State::Ejected { .. } | State::Probing { .. } => self.admit(index, now),
        }
    }

    /// Whether endpoint `index` can be counted on: in rotation and not failing
    /// `consecutive_failures` times in a row. Unlike ejection, this does not depend on the
    /// ejection cap.
    pub fn is_dependable(&self, index: usize) -> bool {
        let endpoint = &self.endpoints[index];
        endpoint.state == State::Healthy
            && endpoint.consecutive_failures < self.config.consecutive_failures
    }

    /// Whether any endpoint of the group can be counted on; when none can, the dispatcher
    /// fails over to the backup group.
    pub fn has_dependable(&self) -> bool {
        (0..self.endpoints.len()).any(|index| self.is_dependable(index))
    }

    /// Whether endpoint `index` is in rotation (neither ejected nor waiting for its probe).
    pub fn is_healthy(&self, index: usize) -> bool {
        self.endpoints[index].state == State::Healthy
    }

    /// Endpoints ejected (or probing after an ejection): what the cap counts.
    pub fn ejected_count(&self) -> usize {
        self.endpoints
            .iter()
            .filter(|endpoint| {
                matches!(
                    endpoint.state,
                    State::Ejected { .. } | State::Probing { ejected: true, .. }
                )
            })
            .count()
    }

    /// Gives back a probe that was never sent (the request was refused before reaching the
    /// endpoint): the next request may probe at once.
    pub fn release_probe(&mut self, index: usize, now: Instant) {
        let endpoint = &mut self.endpoints[index];
        match endpoint.state {
            State::Probing { ejected: true, .. } => endpoint.state = State::Ejected { until: now },
            State::Probing { ejected: false, .. } => {
                endpoint.state = State::Healthy;
                endpoint.trial_after = now;
            }
            State::Healthy | State::Ejected { .. } => {}
        }
    }

    /// Records the outcome of a request to endpoint `index`.
    pub fn record(&mut self, index: usize, success: bool, now: Instant) -> Transition {
        let config = self.config;
        let endpoint = &mut self.endpoints[index];
        match endpoint.state {
            // A request sent before the ejection: the ejection already accounts for it.
            State::Ejected { .. } => Transition::None,
            State::Probing { ejected: false, .. } => {
                // A trial: back in rotation either way; a failure counts as one more in a row.
                endpoint.state = State::Healthy;
                self.record(index, success, now)
            }
            State::Probing { .. } if success => {
                endpoint.state = State::Healthy;
                endpoint.ejections = endpoint.ejections.saturating_sub(1);
                endpoint.consecutive_failures = 0;
                endpoint.window.clear();
                Transition::Readmitted
            }
            // A failed probe ejects again, whatever the cap: the endpoint is already counted.
            State::Probing { .. } => Transition::Ejected(self.eject(index, now)),
            State::Healthy => {
                endpoint.window.add(
                    now,
                    Counts {
                        attempts: 1,
                        successes: u64::from(success),
                        ..Counts::default()
                    },
                );
                if success {
                    endpoint.consecutive_failures = 0;
                    return Transition::None;
                }
                endpoint.consecutive_failures += 1;
                let wait = self.ejection_time(self.endpoints[index].ejections);
                let endpoint = &mut self.endpoints[index];
                endpoint.trial_after = now + wait;
                let sum = endpoint.window.sum(now);
                let outlier = endpoint.consecutive_failures >= config.consecutive_failures
                    || (sum.attempts >= config.request_volume_min
                        && sum.successes * 100
                            < sum.attempts * u64::from(config.success_percent_min));
                if outlier && self.may_eject() {
                    Transition::Ejected(self.eject(index, now))
                } else {
                    Transition::None
                }
            }
        }
    }

    /// The length of the next ejection of an endpoint ejected `ejections` times before.
    pub fn ejection_time(&self, ejections: u32) -> Duration {
        let factor = 1u32 << ejections.min(EJECTION_EXPONENT_MAX);
        self.config
            .base_ejection
            .saturating_mul(factor)
            .min(self.config.max_ejection)
    }

    /// Whether one more endpoint may be ejected under `max_ejection_percent` (always the
    /// first one).
    fn may_eject(&self) -> bool {
        let ejected = self.ejected_count();
        let allowed = self.endpoints.len() * self.config.max_ejection_percent as usize / 100;
        ejected == 0 || ejected < allowed
    }

    fn eject(&mut self, index: usize, now: Instant) -> Duration {
        let time = self.ejection_time(self.endpoints[index].ejections);
        let endpoint = &mut self.endpoints[index];
        endpoint.state = State::Ejected { until: now + time };
        endpoint.ejections = (endpoint.ejections + 1).min(EJECTION_EXPONENT_MAX);
        endpoint.consecutive_failures = 0;
        endpoint.window.clear();
        assert!(time <= self.config.max_ejection);
        time
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn config() -> OutlierConfig {
        OutlierConfig {
            consecutive_failures: 3,
            success_percent_min: 50,
            request_volume_min: 10,
            window: 10 * SECOND,
            base_ejection: SECOND,
            max_ejection: 5 * SECOND,
            max_ejection_percent: 50,
        }
    }

    fn fail(detector: &mut Detector, index: usize, times: u32, now: Instant) -> Transition {
        let mut last = Transition::None;
        for _ in 0..times {
            assert_eq!(detector.admit(index, now), Admission::Admitted);
            last = detector.record(index, false, now);
        }
        last
    }

    #[test]
    fn consecutive_failures_eject_then_a_probe_readmits() {
        let t0 = Instant::now();
        let mut detector = Detector::new(config(), 2 * SECOND, 4, t0);
        assert_eq!(fail(&mut detector, 0, 2, t0), Transition::None);
        assert_eq!(detector.record(0, true, t0), Transition::None);
        assert_eq!(fail(&mut detector, 0, 2, t0), Transition::None);
        assert_eq!(detector.record(0, false, t0), Transition::Ejected(SECOND));
        assert_eq!(detector.admit(0, t0 + SECOND / 2), Admission::Refused);
        // Time is up: one probe, and only one.
        assert_eq!(detector.admit(0, t0 + SECOND), Admission::Probe);
        assert_eq!(detector.admit(0, t0 + SECOND), Admission::Refused);
        assert_eq!(
            detector.record(0, true, t0 + SECOND),
            Transition::Readmitted
        );
        assert_eq!(detector.admit(0, t0 + SECOND), Admission::Admitted);
    }

    #[test]
    fn a_failed_probe_doubles_the_ejection_up_to_the_cap() {
        let t0 = Instant::now();
        let mut detector = Detector::new(config(), 2 * SECOND, 2, t0);
        assert_eq!(fail(&mut detector, 1, 3, t0), Transition::Ejected(SECOND));
        let mut now = t0;
        for expected in [2, 4, 5, 5] {
            now += 5 * SECOND;
            assert_eq!(detector.admit(1, now), Admission::Probe);
            let transition = detector.record(1, false, now);
            assert_eq!(transition, Transition::Ejected(expected * SECOND));
        }
        // A successful probe forgives one ejection: the next one is shorter.
        now += 5 * SECOND;
        assert_eq!(detector.admit(1, now), Admission::Probe);
        assert_eq!(detector.record(1, true, now), Transition::Readmitted);
        assert_eq!(
            fail(&mut detector, 1, 3, now),
            Transition::Ejected(5 * SECOND)
        );
    }

    #[test]
    fn a_low_success_rate_ejects_once_the_volume_is_reached() {
        let t0 = Instant::now();
        let mut detector = Detector::new(config(), 2 * SECOND, 2, t0);
        // Alternating failure and success never makes three in a row; 4 of 9 is below 50 %
        // but under the volume, the 10th outcome makes the rate count.
        for round in 0..9 {
            let transition = detector.record(0, round % 2 == 1, t0);
            assert_eq!(transition, Transition::None);
        }
        assert_eq!(detector.record(0, false, t0), Transition::Ejected(SECOND));
    }

    #[test]
    fn never_more_than_the_share_is_ejected() {
        let t0 = Instant::now();
        let mut detector = Detector::new(config(), 2 * SECOND, 4, t0);
        assert_eq!(fail(&mut detector, 0, 3, t0), Transition::Ejected(SECOND));
        assert_eq!(fail(&mut detector, 1, 3, t0), Transition::Ejected(SECOND));
        // Half of four are out: the third stays in rotation however it fails.
        assert_eq!(fail(&mut detector, 2, 10, t0), Transition::None);
        assert_eq!(detector.ejected_count(), 2);
        // Even a single-endpoint group may eject its endpoint (as Envoy does).
        let mut single = Detector::new(config(), 2 * SECOND, 1, t0);
        assert_eq!(fail(&mut single, 0, 3, t0), Transition::Ejected(SECOND));
    }

    #[test]
    fn with_no_dependable_endpoint_the_cap_still_limits_ejections_and_trials_recover() {
        let t0 = Instant::now();
        let mut detector = Detector::new(config(), 2 * SECOND, 3, t0);
        assert!(detector.has_dependable());
        // Every endpoint fails in a row; 50 % of three allows one ejection.
        assert_eq!(fail(&mut detector, 0, 3, t0), Transition::Ejected(SECOND));
        assert_eq!(fail(&mut detector, 1, 3, t0), Transition::None);
        assert_eq!(fail(&mut detector, 2, 3, t0), Transition::None);
        assert_eq!(detector.ejected_count(), 1);
        // Yet none can be counted on: the dispatcher fails over.
        assert!(!detector.has_dependable());
        assert_eq!(detector.admit_dependable(1, t0), Admission::Refused);
        // Its trial comes on the ejection schedule, one at a time; success makes it dependable.
        let t1 = t0 + SECOND;
        assert_eq!(detector.admit_dependable(1, t1), Admission::Probe);
        assert_eq!(detector.admit_dependable(1, t1), Admission::Refused);
        assert_eq!(detector.record(1, true, t1), Transition::None);
        assert!(detector.is_dependable(1));
        assert!(detector.has_dependable());
        // A failed trial waits for the next one and ejects nothing beyond the cap.
        assert_eq!(detector.admit_dependable(2, t1), Admission::Probe);
        assert_eq!(detector.record(2, false, t1), Transition::None);
        assert_eq!(detector.admit_dependable(2, t1), Admission::Refused);
        assert_eq!(detector.ejected_count(), 1);
    }

    #[test]
    fn a_lost_or_unsent_probe_is_offered_again() {
        let t0 = Instant::now();
        let mut detector = Detector::new(config(), 2 * SECOND, 2, t0);
        fail(&mut detector, 0, 3, t0);
        let t1 = t0 + SECOND;
        assert_eq!(detector.admit(0, t1), Admission::Probe);
        detector.release_probe(0, t1);
        assert_eq!(detector.admit(0, t1), Admission::Probe);
        // The probe's caller vanished: after `probe_lost_after` another probe goes.
        assert_eq!(detector.admit(0, t1 + SECOND), Admission::Refused);
        assert_eq!(detector.admit(0, t1 + 2 * SECOND), Admission::Probe);
        // An outcome of a request sent before the ejection changes nothing.
        let mut other = Detector::new(config(), 2 * SECOND, 2, t0);
        fail(&mut other, 0, 3, t0);
        assert_eq!(other.record(0, true, t0), Transition::None);
        assert!(!other.is_healthy(0));
    }
}
