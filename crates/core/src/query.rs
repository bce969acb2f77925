//! Read-only views of the state: queue stats, group listing, dead letters.
//!
//! Ages are measured against the queue's own cluster clock, never a local
//! clock, so every replica answers the same at the same applied index.

use serde::{Deserialize, Serialize};

use crate::command::QueueId;
use crate::config::QueueConfig;
use crate::error::{Error, Result};
use crate::limits::*;
use crate::state::{Attempt, Counters, Queue, State};
use std::ops::Bound;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    pub queue_id: QueueId,
    /// Pending jobs that could run once their group lets them.
    pub ready: u64,
    pub delayed: u64,
    pub leased: u64,
    pub dead: u64,
    /// Payload bytes of pending and dead-lettered jobs.
    pub bytes: u64,
    /// Lowest offset not yet finished (acked or dead-lettered).
    pub ack_floor: u64,
    pub next_offset: u64,
    /// Age of the oldest job a fetch could take right now (0 when none).
    pub oldest_ready_age_ms: u64,
    /// Groups with jobs or paused.
    pub groups: u64,
    pub counters: Counters,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueInfo {
    pub name: String,
    pub config: QueueConfig,
    pub stats: QueueStats,
}

/// One named subscription of a queue (SPEC 2.3a) and its stats, computed
/// as a queue's are, over the subscription's own jobs, leases and dead
/// letters. `queue_id` and `next_offset` are the queue's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionInfo {
    pub name: String,
    pub stats: QueueStats,
}

/// Which groups a listing shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum GroupStatus {
    #[default]
    Any,
    /// The head is leased.
    Leased,
    Paused,
    /// Neither leased nor paused: waiting for a worker or for its delay.
    Waiting,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct GroupFilter {
    pub key_prefix: String,
    pub status: GroupStatus,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    pub key: String,
    pub backlog: u64,
    pub head_offset: Option<u64>,
    pub head_age_ms: u64,
    pub lease_holder: Option<String>,
    /// Cluster time at which the head's lease ends unless extended.
    pub lease_deadline_ms: Option<u64>,
    /// Failed attempts of the head.
    pub attempts: u32,
    pub paused: bool,
    pub parked_reason: Option<String>,
}

/// How [`State::top_groups`] ranks groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupRank {
    /// Most jobs first (ties: the later group id first).
    Backlog,
    /// Oldest head first.
    Age,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPage {
    pub groups: Vec<GroupInfo>,
    /// Pass as `after` to get the next page; `None` at the end.
    pub next_after: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterInfo {
    pub queue_id: QueueId,
    pub offset: u64,
    pub blob: u64,
    pub group: Option<String>,
    pub priority: u8,
    pub attempts: u32,
    pub reason: String,
    pub history: Vec<Attempt>,
    pub enqueued_ms: u64,
    pub dead_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterPage {
    pub dead_letters: Vec<DeadLetterInfo>,
    pub next_after: Option<u64>,
}

/// Rows a group listing examines for one page, so a filter that matches
/// little cannot turn one read into a scan of every group.
pub const GROUP_SCAN_ROWS_MAX: usize = 100_000;

fn check_limit(limit: u32) -> Result<usize> {
    if limit == 0 || limit > PAGE_LIMIT_MAX {
        return Err(Error::invalid(
            "limit",
            format!("{limit} is outside 1..={PAGE_LIMIT_MAX}"),
        ));
    }
    Ok(limit as usize)
}

impl Queue {
    fn group_info(&self, id: u64) -> GroupInfo {
        let group = &self.groups[&id];
        let head = group.offsets.front().map(|o| (*o, &self.jobs[o]));
        GroupInfo {
            key: group.key.clone(),
            backlog: group.offsets.len() as u64,
            head_offset: head.map(|(o, _)| o),
            head_age_ms: head.map_or(0, |(_, j)| self.clock_ms.saturating_sub(j.enqueued_ms)),
            lease_holder: head.and_then(|(o, _)| self.holders.get(&o).cloned()),
            lease_deadline_ms: head.and_then(|(_, j)| j.lease.map(|l| l.deadline_ms)),
            attempts: head.map_or(0, |(_, j)| j.attempts),
            paused: group.paused,
            parked_reason: group.parked_reason.clone(),
        }
    }

    pub(crate) fn stats(&self) -> QueueStats {
        let leased = self.leases.len() as u64;
        let delayed = self.delayed.len() as u64;
        let pending = self.jobs.len() as u64;
        // The oldest fetchable head: the first entry of each priority band
        // of the ready index, so this is ten lookups, not a scan.
        let oldest = (0..=PRIORITY_MAX)
            .filter_map(|band| self.ready.range((band, 0)..=(band, u64::MAX)).next())
            .map(|&(_, offset)| self.jobs[&offset].enqueued_ms)
            .min();
        QueueStats {
            queue_id: self.id,
            ready: pending - leased - delayed,
            delayed,
            leased,
            dead: self.dead.len() as u64,
            bytes: self.bytes,
            ack_floor: self.jobs.keys().next().unwrap_or(self.next_offset),
            next_offset: self.next_offset,
            oldest_ready_age_ms: oldest.map_or(0, |t| self.clock_ms.saturating_sub(t)),
            groups: self.groups.len() as u64,
            counters: self.counters.clone(),
        }
    }
}

impl State {
    /// The queue `name`; a name no queue could have is `INVALID_ARGUMENT`,
    /// as on every write (`State::queue_mut`). Its clock is not moved.
    pub(crate) fn queue(&self, name: &str) -> Result<&Queue> {
        crate::state::validate_queue_name(name)?;
        self.queues
            .get(name)
            .ok_or_else(|| Error::queue_not_found(name))
    }

    pub fn queue_info(&self, name: &str) -> Result<QueueInfo> {
        let queue = self.queue(name)?;
        Ok(QueueInfo {
            name: queue.name.clone(),
            config: queue.config.clone(),
            stats: queue.stats(),
        })
    }

    pub fn list_queues(&self) -> Vec<QueueInfo> {
        self.queues
            .values()
            .map(|q| QueueInfo {
                name: q.name.clone(),
                config: q.config.clone(),
                stats: q.stats(),
            })
            .collect()
    }

    pub fn stats(&self, name: &str) -> Result<QueueStats> {
        Ok(self.queue(name)?.stats())
    }

    /// Whether job `offset` of queue `name` is leased right now under
    /// `fence`. A consume stream asks it of its node's local state before
    /// it releases what it delivered, so a job finished some other way (a
    /// unary ack) costs no write.
    /// Of the default subscription; [`State::holds_lease_in`] asks a named
    /// one.
    pub fn holds_lease(&self, name: &str, offset: u64, fence: u64) -> bool {
        self.holds_lease_in(name, None, offset, fence)
    }

    /// [`State::holds_lease`] in subscription `subscription` of queue
    /// `queue` (`None`: the default subscription). False when either does
    /// not exist.
    pub fn holds_lease_in(
        &self,
        queue: &str,
        subscription: Option<&str>,
        offset: u64,
        fence: u64,
    ) -> bool {
        self.queue(queue)
            .ok()
            .and_then(|q| q.consumer(subscription))
            .and_then(|q| q.jobs.get(&offset))
            .and_then(|j| j.lease)
            .is_some_and(|l| l.fence == fence)
    }

    /// The named subscriptions of queue `queue`, by name, with their stats.
    pub fn list_subscriptions(&self, queue: &str) -> Result<Vec<SubscriptionInfo>> {
        Ok(self
            .queue(queue)?
            .subscriptions
            .iter()
            .map(|(name, sub)| SubscriptionInfo {
                name: name.clone(),
                stats: sub.stats(),
            })
            .collect())
    }

    /// The stats of subscription `name` of queue `queue`. A name no
    /// subscription could have is `INVALID_ARGUMENT` naming
    /// `subscription`; a well-formed one the queue lacks is `NOT_FOUND`.
    pub fn subscription_stats(&self, queue: &str, name: &str) -> Result<QueueStats> {
        self.consumer(queue, Some(name)).map(Queue::stats)
    }

    /// The consumer-side state of queue `name`: its default subscription,
    /// or the named one.
    pub(crate) fn consumer(&self, name: &str, subscription: Option<&str>) -> Result<&Queue> {
        let q = self.queue(name)?;
        let Some(sub) = subscription else {
            return Ok(q);
        };
        crate::state::validate_subscription_name("subscription", sub)?;
        q.subscriptions.get(sub).ok_or_else(|| Error::NotFound {
            what: format!("subscription `{sub}` of queue `{name}`"),
        })
    }

    /// The largest batch queue `name` takes (its `max_batch`).
    pub fn max_batch(&self, name: &str) -> Result<u32> {
        Ok(self.queue(name)?.config.max_batch)
    }

    /// Groups in key order, after `after` (exclusive).
    pub fn list_groups(
        &self,
        name: &str,
        filter: &GroupFilter,
        after: Option<&str>,
        limit: u32,
    ) -> Result<GroupPage> {
        self.list_groups_in(name, None, filter, after, limit)
    }

    /// [`State::list_groups`] in the default subscription (`None`) or a
    /// named one.
    pub fn list_groups_in(
        &self,
        name: &str,
        subscription: Option<&str>,
        filter: &GroupFilter,
        after: Option<&str>,
        limit: u32,
    ) -> Result<GroupPage> {
        let queue = self.consumer(name, subscription)?;
        let limit = check_limit(limit)?;
        let prefix = filter.key_prefix.as_str();
        // Keys with the prefix form one contiguous run starting at the prefix.
        let start = match after {
            Some(key) if key >= prefix => Bound::Excluded(key.to_string()),
            _ => Bound::Included(prefix.to_string()),
        };
        let mut groups = Vec::new();
        let (mut next_after, mut last_examined) = (None, None);
        let run = queue
            .group_ids
            .range((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix));
        for (scanned, (key, id)) in run.enumerate() {
            if groups.len() == limit || scanned == GROUP_SCAN_ROWS_MAX {
                next_after = last_examined;
                break;
            }
            last_examined = Some(key.clone());
            let group = &queue.groups[id];
            let head = group.offsets.front().map(|o| (*o, &queue.jobs[o]));
            let leased = head.is_some_and(|(_, j)| j.lease.is_some());
            let shown = match filter.status {
                GroupStatus::Any => true,
                GroupStatus::Leased => leased,
                GroupStatus::Paused => group.paused,
                GroupStatus::Waiting => !leased && !group.paused,
            };
            if !shown {
                continue;
            }
            groups.push(queue.group_info(*id));
        }
        Ok(GroupPage { groups, next_after })
    }

    /// One group by its key: its state, head and lease.
    pub fn get_group(&self, name: &str, key: &str) -> Result<GroupInfo> {
        self.get_group_in(name, None, key)
    }

    /// [`State::get_group`] in the default subscription (`None`) or a
    /// named one.
    pub fn get_group_in(
        &self,
        name: &str,
        subscription: Option<&str>,
        key: &str,
    ) -> Result<GroupInfo> {
        let queue = self.consumer(name, subscription)?;
        let id = queue.group_ids.get(key).ok_or_else(|| Error::NotFound {
            what: format!("group `{key}` in queue `{name}`"),
        })?;
        Ok(queue.group_info(*id))
    }

    /// The `limit` groups with the most jobs, or with the oldest heads,
    /// from indexes kept by every apply: O(limit log n), never a scan.
    /// Only groups holding jobs are ranked.
    pub fn top_groups(&self, name: &str, rank: GroupRank, limit: u32) -> Result<Vec<GroupInfo>> {
        self.top_groups_in(name, None, rank, limit)
    }

    /// [`State::top_groups`] in the default subscription (`None`) or a
    /// named one.
    pub fn top_groups_in(
        &self,
        name: &str,
        subscription: Option<&str>,
        rank: GroupRank,
        limit: u32,
    ) -> Result<Vec<GroupInfo>> {
        let queue = self.consumer(name, subscription)?;
        let limit = check_limit(limit)?;
        let ids: Vec<u64> = match rank {
            GroupRank::Backlog => queue
                .by_backlog
                .iter()
                .rev()
                .take(limit)
                .map(|&(_, id)| id)
                .collect(),
            GroupRank::Age => queue
                .by_head
                .iter()
                .take(limit)
                .map(|&(_, id)| id)
                .collect(),
        };
        Ok(ids.into_iter().map(|id| queue.group_info(id)).collect())
    }

    /// Dead letters in offset order, after `after` (exclusive).
    pub fn list_dead_letters(
        &self,
        name: &str,
        after: Option<u64>,
        limit: u32,
    ) -> Result<DeadLetterPage> {
        self.list_dead_letters_in(name, None, after, limit)
    }

    /// [`State::list_dead_letters`] in the default subscription (`None`)
    /// or a named one.
    pub fn list_dead_letters_in(
        &self,
        name: &str,
        subscription: Option<&str>,
        after: Option<u64>,
        limit: u32,
    ) -> Result<DeadLetterPage> {
        let queue = self.consumer(name, subscription)?;
        let limit = check_limit(limit)?;
        let start = after.map_or(0, |a| a.saturating_add(1));
        let rows: Vec<DeadLetterInfo> = queue
            .dead
            .range(start..)
            .take(limit)
            .map(|(&offset, dead)| DeadLetterInfo {
                queue_id: queue.id,
                offset,
                blob: dead.job.blob,
                group: dead.group_key.clone(),
                priority: dead.job.priority,
                attempts: dead.job.attempts,
                reason: dead.reason.clone(),
                history: dead.history.clone(),
                enqueued_ms: dead.job.enqueued_ms,
                dead_ms: dead.dead_ms,
            })
            .collect();
        let next_after = match rows.last() {
            Some(last)
                if rows.len() == limit && queue.dead.range(last.offset + 1..).next().is_some() =>
            {
                Some(last.offset)
            }
            _ => None,
        };
        Ok(DeadLetterPage {
            dead_letters: rows,
            next_after,
        })
    }
}
