//! Membership of a group: heartbeats, who should hold which partition, and leases.
//!
//! Every member computes the same assignment from the same list of live members (partition `p`
//! goes to the `p mod n`-th member by name), so no coordinator is needed: at each tick a member
//! gives up the partitions that are no longer its own and takes those that are, once their
//! previous holder released them or its lease ran out. While members disagree (one has not
//! ticked yet), a partition is simply held by one of them, and the lease check of every commit
//! keeps a second writer out.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::fold::Fold;
use crate::metrics::Metrics;
use crate::store::{Lease, RedisStore};

/// Ticks per lease: a member renews its leases and heartbeat this often, so a lease outlives
/// four missed ticks.
const TICKS_PER_LEASE: u32 = 5;

/// The member that should hold `partition`, among `members` sorted by name.
pub fn owner_of(partition: u32, members: &[String]) -> Option<&str> {
    assert!(members.is_sorted());
    let count = members.len();
    (count > 0).then(|| members[partition as usize % count].as_str())
}

pub struct Member {
    id: String,
    partitions: u32,
    lease: Duration,
    owned: BTreeMap<u32, Lease>,
}

impl Member {
    /// A new member with a name no other member has: its process id and random bits.
    pub fn new(partitions: u32, lease: Duration) -> Member {
        let id = format!("{}-{:08x}", std::process::id(), rand::random::<u32>());
        Member {
            id,
            partitions,
            lease,
            owned: BTreeMap::new(),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    pub fn owned(&self) -> &BTreeMap<u32, Lease> {
        &self.owned
    }

    pub fn tick_interval(&self) -> Duration {
        self.lease / TICKS_PER_LEASE
    }

    /// Heartbeats, then brings the held leases in line with the assignment: releases what
    /// belongs to another member now, renews the rest, takes what is newly its own.
    pub async fn tick(
        &mut self,
        store: &mut RedisStore,
        fold: &mut Fold,
        metrics: &Metrics,
    ) -> anyhow::Result<()> {
        let mut members = store.heartbeat(&self.id, Some(self.lease)).await?;
        members.sort();
        for (partition, lease) in self.owned.clone() {
            let keep = owner_of(partition, &members) == Some(self.id.as_str());
            let still_held = if keep {
                store.renew(partition, &self.id, lease, self.lease).await?
            } else {
                store.release(partition, &self.id, lease).await?;
                tracing::info!(partition, "gave partition {partition} up to another member");
                false
            };
            if !still_held {
                fold.clear();
                self.lose(partition, metrics);
            }
        }
        for partition in 0..self.partitions {
            if self.owned.contains_key(&partition)
                || owner_of(partition, &members) != Some(self.id.as_str())
            {
                continue;
            }
            if let Some(lease) = store.acquire(partition, &self.id, self.lease).await? {
                tracing::info!(
                    partition,
                    position = lease.position,
                    token = lease.token,
                    "took partition {partition}"
                );
                // Its rows may have changed while another member held it.
                fold.clear();
                metrics.acquisitions.inc();
                self.owned.insert(partition, lease);
                self.show(partition, metrics);
            }
        }
        metrics.partitions_owned.set(self.owned.len() as i64);
        Ok(())
    }

    /// Moves the checkpoints of a committed page.
    pub fn advance(&mut self, fences: &BTreeMap<u32, (Lease, u64)>, metrics: &Metrics) {
        for (partition, (_, position)) in fences {
            let lease = self
                .owned
                .get_mut(partition)
                .expect("fenced partitions are owned");
            assert!(lease.position < *position, "checkpoints only move forward");
            lease.position = *position;
            self.show(*partition, metrics);
        }
    }

    /// Forgets a partition whose lease is gone.
    pub fn lose(&mut self, partition: u32, metrics: &Metrics) {
        self.owned.remove(&partition);
        metrics
            .position
            .remove(&vec![("partition", partition.to_string())]);
        metrics.partitions_owned.set(self.owned.len() as i64);
    }

    /// After a commit whose outcome is unknown: reads every held lease again (its checkpoint
    /// says whether the commit landed); a lease that cannot be confirmed is dropped.
    pub async fn forget_positions(&mut self, store: &mut RedisStore, metrics: &Metrics) {
        for (partition, held) in self.owned.clone() {
            match store.acquire(partition, &self.id, self.lease).await {
                Ok(Some(lease)) if lease.token == held.token => {
                    self.owned.insert(partition, lease);
                    self.show(partition, metrics);
                }
                _ => self.lose(partition, metrics),
            }
        }
    }

    /// Gives every lease up and leaves the group, so that others take over at once. Best
    /// effort: what fails here expires by itself.
    pub async fn leave(&mut self, store: &mut RedisStore) {
        for (partition, lease) in std::mem::take(&mut self.owned) {
            if let Err(error) = store.release(partition, &self.id, lease).await {
                tracing::warn!("cannot release partition {partition}: {error:#}");
            }
        }
        if let Err(error) = store.heartbeat(&self.id, None).await {
            tracing::warn!("cannot leave the group: {error:#}");
        }
    }

    fn show(&self, partition: u32, metrics: &Metrics) {
        let position = self.owned[&partition].position;
        metrics
            .position
            .get_or_create(&vec![("partition", partition.to_string())])
            .set(position as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn partitions_spread_evenly_over_the_live_members() {
        let three = members(&["a", "b", "c"]);
        let counts = ["a", "b", "c"].map(|name| {
            (0..16)
                .filter(|p| owner_of(*p, &three) == Some(name))
                .count()
        });
        assert_eq!(counts, [6, 5, 5]);
        let two = members(&["a", "c"]);
        assert!((0..16).all(|p| owner_of(p, &two).is_some()));
        assert_eq!(owner_of(3, &[]), None);
    }
}
