//! Incidents: every change of a dependency's health, with its time and reason.
//!
//! Only changes are kept (not every evaluation), newest last, in a bounded ring; the page
//! shows them newest first. Dependencies are few and named by the server, so the map of last
//! known healths stays small.

use std::collections::{BTreeMap, VecDeque};

use crate::report::{rfc3339, DependencyStatus, Health, Incident};

/// Incidents kept (and persisted); older ones are dropped.
pub const INCIDENTS_KEPT: usize = 100;
/// Bytes of an incident's reason kept; longer reasons are cut at a character boundary.
pub const REASON_BYTES_MAX: usize = 512;
/// Bytes of a dependency name.
pub const NAME_BYTES_MAX: usize = 64;

/// Recent incidents and the last health seen of each dependency.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Incidents {
    recent: VecDeque<Incident>,
    last: BTreeMap<String, Health>,
}

impl Incidents {
    /// No incidents.
    pub fn new() -> Incidents {
        Incidents::default()
    }

    /// Restores persisted incidents (oldest first). The last healths are not restored: after a
    /// restart, the first evaluation records what is not healthy afresh.
    pub fn from_recent(recent: impl IntoIterator<Item = Incident>) -> Incidents {
        let mut incidents = Incidents::new();
        for incident in recent {
            incidents.push(incident);
        }
        incidents
    }

    /// Records an event that is not a dependency evaluation (the process starting, say).
    pub fn note(&mut self, at_unix: u64, dependency: &str, to: Health, reason: &str) {
        self.push(incident(at_unix, dependency, None, to, reason));
    }

    /// Compares an evaluation with the last one and records each change. A dependency seen for
    /// the first time is recorded only when it is not healthy. Returns the new incidents.
    pub fn observe(&mut self, at_unix: u64, dependencies: &[DependencyStatus]) -> Vec<Incident> {
        let mut new = Vec::new();
        for dependency in dependencies {
            let before = self.last.insert(dependency.name.clone(), dependency.health);
            let changed = match before {
                None => dependency.health != Health::Healthy,
                Some(before) => before != dependency.health,
            };
            if changed {
                let incident = incident(
                    at_unix,
                    &dependency.name,
                    before,
                    dependency.health,
                    &dependency.reason,
                );
                new.push(incident.clone());
                self.push(incident);
            }
        }
        new
    }

    /// Oldest first.
    pub fn oldest_first(&self) -> impl Iterator<Item = &Incident> {
        self.recent.iter()
    }

    /// Newest first, as the page shows them.
    pub fn newest_first(&self) -> Vec<Incident> {
        self.recent.iter().rev().cloned().collect()
    }

    fn push(&mut self, incident: Incident) {
        if self.recent.len() == INCIDENTS_KEPT {
            self.recent.pop_front();
        }
        self.recent.push_back(incident);
        debug_assert!(self.recent.len() <= INCIDENTS_KEPT);
    }
}

fn incident(
    at_unix: u64,
    dependency: &str,
    from: Option<Health>,
    to: Health,
    reason: &str,
) -> Incident {
    Incident {
        at_unix,
        at: rfc3339(at_unix),
        dependency: cut(dependency, NAME_BYTES_MAX),
        from,
        to,
        reason: cut(reason, REASON_BYTES_MAX),
    }
}

/// `text` cut to at most `bytes` bytes, at a character boundary.
pub(crate) fn cut(text: &str, bytes: usize) -> String {
    let mut end = text.len().min(bytes);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dependency(name: &str, health: Health) -> DependencyStatus {
        DependencyStatus {
            name: name.into(),
            health,
            reason: format!("{name} is {}", health.as_str()),
            details: Vec::new(),
        }
    }

    #[test]
    fn only_changes_are_incidents() {
        let mut incidents = Incidents::new();
        let healthy = [dependency("disk", Health::Healthy)];
        assert!(incidents.observe(10, &healthy).is_empty());
        assert!(incidents.observe(11, &healthy).is_empty());
        let down = [dependency("disk", Health::Down)];
        let new = incidents.observe(12, &down);
        assert_eq!(new.len(), 1);
        assert_eq!(new[0].from, Some(Health::Healthy));
        assert_eq!(new[0].to, Health::Down);
        assert!(incidents.observe(13, &down).is_empty());
        assert_eq!(incidents.observe(14, &healthy).len(), 1);
        let newest = incidents.newest_first();
        assert_eq!(newest[0].at_unix, 14);
        assert_eq!(newest[1].at_unix, 12);
    }

    #[test]
    fn first_sight_records_only_trouble() {
        let mut incidents = Incidents::new();
        let new = incidents.observe(
            1,
            &[
                dependency("disk", Health::Healthy),
                dependency("read_model", Health::Degraded),
            ],
        );
        assert_eq!(new.len(), 1);
        assert_eq!(new[0].dependency, "read_model");
        assert_eq!(new[0].from, None);
    }

    #[test]
    fn the_ring_is_bounded() {
        let mut incidents = Incidents::new();
        for at in 0..(INCIDENTS_KEPT as u64 * 3) {
            let health = if at % 2 == 0 {
                Health::Down
            } else {
                Health::Healthy
            };
            incidents.observe(at, &[dependency("disk", health)]);
        }
        assert_eq!(incidents.oldest_first().count(), INCIDENTS_KEPT);
        assert_eq!(
            incidents.newest_first()[0].at_unix,
            INCIDENTS_KEPT as u64 * 3 - 1
        );
    }

    #[test]
    fn long_reasons_are_cut_at_a_character_boundary() {
        let mut incidents = Incidents::new();
        incidents.note(0, "tally", Health::Healthy, &"é".repeat(REASON_BYTES_MAX));
        let reason = &incidents.newest_first()[0].reason;
        assert!(reason.len() <= REASON_BYTES_MAX);
        assert!(reason.chars().all(|c| c == 'é'));
    }
}
