//! What each publication of the private set changed, kept for a while so a client that holds
//! an older version downloads only the difference (`GET /v1/private/set/delta?since=…`).
//!
//! Bounded two ways: by age and by the number of changed values kept (8 bytes each); the
//! oldest publications go first. A version older than what is kept, or one this replica never
//! published (replicas publish on their own clocks), has no delta: the client then fetches the
//! shards whose ETags changed.

use std::collections::{BTreeMap, VecDeque};

use crate::protocol::private_set::{SetDelta, ShardDelta, Tag};

use super::Published;

/// How much history is kept.
#[derive(Debug, Clone, Copy)]
pub struct HistoryLimits {
    /// Publications older than this many seconds are dropped.
    pub max_age_secs: u64,
    /// At most this many changed values are kept in all.
    pub max_values: usize,
}

/// The values one publication added to and removed from one shard (sorted; multisets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardChange {
    /// The shard.
    pub shard: u32,
    /// Values added.
    pub added: Vec<u64>,
    /// Values removed.
    pub removed: Vec<u64>,
}

/// One publication: from which version to which, when, and what changed.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The version it started from.
    pub from: Tag,
    /// The version it published.
    pub to: Tag,
    /// Unix seconds.
    pub at: u64,
    /// Per changed shard, in shard order.
    pub changes: Vec<ShardChange>,
}

impl Entry {
    fn values(&self) -> usize {
        self.changes
            .iter()
            .map(|c| c.added.len() + c.removed.len())
            .sum()
    }
}

/// The publications still kept, oldest first.
#[derive(Debug, Default)]
pub struct History {
    entries: VecDeque<Entry>,
    values: usize,
}

impl History {
    /// Records a publication and drops what the limits no longer allow.
    pub fn push(&mut self, entry: Entry, limits: HistoryLimits, now: u64) {
        self.values += entry.values();
        self.entries.push_back(entry);
        while let Some(oldest) = self.entries.front() {
            let too_old = oldest.at.saturating_add(limits.max_age_secs) < now;
            if self.values <= limits.max_values && !too_old {
                break;
            }
            self.values -= oldest.values();
            self.entries.pop_front();
        }
    }

    /// Changed values kept (for stats and memory accounting).
    pub fn values(&self) -> usize {
        self.values
    }

    /// What changed from version `since` to `current` (which the newest entry published), or
    /// `None` when `since` is not a version kept here.
    pub fn delta(&self, since: Tag, current: &Published) -> Option<SetDelta> {
        let start = self.entries.iter().position(|e| e.from == since)?;
        // Net count change per value, per shard: what several publications added and later
        // removed cancels out.
        let mut net: BTreeMap<u32, BTreeMap<u64, i64>> = BTreeMap::new();
        for entry in self.entries.iter().skip(start) {
            for change in &entry.changes {
                let shard = net.entry(change.shard).or_default();
                for v in &change.added {
                    *shard.entry(*v).or_default() += 1;
                }
                for v in &change.removed {
                    *shard.entry(*v).or_default() -= 1;
                }
            }
        }
        let shards = net
            .into_iter()
            .filter_map(|(shard, counts)| {
                let (added, removed) = split_net(counts);
                let now = current.shards.get(shard as usize)?;
                (!added.is_empty() || !removed.is_empty()).then_some(ShardDelta {
                    shard,
                    etag: now.etag,
                    items: now.items,
                    added,
                    removed,
                })
            })
            .collect();
        Some(SetDelta {
            from: since,
            to: current.version,
            shards,
        })
    }
}

/// Net count changes per value as the sorted values to add and to remove (a value repeated
/// once per copy); values whose changes cancel out appear in neither.
pub(super) fn split_net(net: BTreeMap<u64, i64>) -> (Vec<u64>, Vec<u64>) {
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    for (value, count) in net {
        let list = if count > 0 { &mut added } else { &mut removed };
        list.extend(std::iter::repeat_n(value, count.unsigned_abs() as usize));
    }
    (added, removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::private_set::Shard;

    fn entry(from: u8, to: u8, at: u64, changes: Vec<ShardChange>) -> Entry {
        Entry {
            from: [from; 16],
            to: [to; 16],
            at,
            changes,
        }
    }

    fn change(shard: u32, added: &[u64], removed: &[u64]) -> ShardChange {
        ShardChange {
            shard,
            added: added.to_vec(),
            removed: removed.to_vec(),
        }
    }

    fn published(version: u8, shards: usize) -> Published {
        Published {
            version: [version; 16],
            items: 0,
            shards: (0..shards)
                .map(|i| Shard {
                    bytes: bytes::Bytes::new(),
                    etag: [i as u8; 16],
                    items: i as u64,
                })
                .collect(),
        }
    }

    const ROOMY: HistoryLimits = HistoryLimits {
        max_age_secs: 1_000,
        max_values: 1_000,
    };

    #[test]
    fn deltas_net_out_what_later_publications_undid() {
        let mut h = History::default();
        h.push(
            entry(1, 2, 0, vec![change(0, &[5, 7], &[]), change(1, &[3], &[])]),
            ROOMY,
            0,
        );
        h.push(
            entry(2, 3, 1, vec![change(0, &[], &[7]), change(1, &[3], &[9])]),
            ROOMY,
            1,
        );
        let now = published(3, 2);
        let d = h.delta([1; 16], &now).unwrap();
        assert_eq!((d.from, d.to), ([1; 16], [3; 16]));
        assert_eq!(d.shards.len(), 2);
        assert_eq!(
            (d.shards[0].added.clone(), d.shards[0].removed.clone()),
            (vec![5], vec![])
        );
        assert_eq!(
            (d.shards[1].added.clone(), d.shards[1].removed.clone()),
            (vec![3, 3], vec![9])
        );
        assert_eq!((d.shards[1].etag, d.shards[1].items), ([1; 16], 1));
        // From the middle: only the second publication.
        let d = h.delta([2; 16], &now).unwrap();
        assert_eq!(d.shards[0].removed, vec![7]);
        // A shard whose changes cancel out is not sent.
        let mut h = History::default();
        h.push(entry(1, 2, 0, vec![change(0, &[5], &[])]), ROOMY, 0);
        h.push(entry(2, 3, 0, vec![change(0, &[], &[5])]), ROOMY, 0);
        assert!(h.delta([1; 16], &now).unwrap().shards.is_empty());
        assert!(h.delta([9; 16], &now).is_none());
    }

    #[test]
    fn limits_drop_the_oldest_first() {
        let limits = HistoryLimits {
            max_age_secs: 10,
            max_values: 3,
        };
        let mut h = History::default();
        h.push(entry(1, 2, 0, vec![change(0, &[1, 2], &[])]), limits, 0);
        h.push(entry(2, 3, 5, vec![change(0, &[3], &[])]), limits, 5);
        assert_eq!(h.values(), 3);
        assert!(h.delta([1; 16], &published(3, 1)).is_some());
        h.push(entry(3, 4, 6, vec![change(0, &[4], &[])]), limits, 6);
        assert!(
            h.delta([1; 16], &published(4, 1)).is_none(),
            "over the value cap"
        );
        assert!(h.delta([2; 16], &published(4, 1)).is_some());
        h.push(entry(4, 5, 16, vec![]), limits, 16);
        assert!(
            h.delta([2; 16], &published(5, 1)).is_none(),
            "older than max_age"
        );
        assert!(h.delta([3; 16], &published(5, 1)).is_some());
    }
}
