//! `check_invariants`: what must hold after every apply. Tests and the
//! property suite call it after each command; snapshot restore calls it so a
//! corrupt snapshot is refused rather than served.

use std::collections::{BTreeMap, BTreeSet};

use crate::limits::{PRIORITY_MAX, SUBSCRIPTIONS_MAX};
use crate::state::{Finished, Holds, Job, Queue, State, NO_GROUP};

macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            return Err(format!($($arg)*));
        }
    };
}

impl Queue {
    fn check_invariants(&self, last_index: u64) -> Result<(), String> {
        let by_offset = self.check_dedup()?;
        self.check_consumer(last_index, &by_offset)?;
        self.check_subscriptions(last_index, &by_offset)
    }

    /// A queue's or a subscription's consumer state; `by_offset` is the
    /// queue's dedup ids by the offset they name.
    fn check_consumer(
        &self,
        last_index: u64,
        by_offset: &BTreeMap<u64, u128>,
    ) -> Result<(), String> {
        let label = match &self.subscription {
            Some(sub) => format!("{}/{sub}", self.name),
            None => self.name.clone(),
        };
        let q = &label;
        // Groups: ordered offsets of pending jobs of that group; only the
        // head may be leased, so at most one lease per group.
        ensure!(
            self.groups.len() == self.group_ids.len(),
            "{q}: group index size differs"
        );
        for (key, id) in &self.group_ids {
            let group = self
                .groups
                .get(id)
                .ok_or(format!("{q}: group `{key}` indexed but missing"))?;
            ensure!(&group.key == key, "{q}: group {id} key mismatch");
            ensure!(
                !group.offsets.is_empty() || group.paused,
                "{q}: empty unpaused group `{key}` kept"
            );
            ensure!(
                group
                    .offsets
                    .iter()
                    .zip(group.offsets.iter().skip(1))
                    .all(|(a, b)| a < b),
                "{q}: group `{key}` out of order"
            );
            for (i, offset) in group.offsets.iter().enumerate() {
                let job = self
                    .jobs
                    .get(offset)
                    .ok_or(format!("{q}: group `{key}` names missing job {offset}"))?;
                ensure!(
                    job.group == *id,
                    "{q}: job {offset} is not in group `{key}`"
                );
                ensure!(
                    i == 0 || job.lease.is_none(),
                    "{q}: non-head job {offset} of `{key}` is leased"
                );
            }
        }
        // Group buckets: one entry per group in both maps, none full.
        ensure!(
            self.group_tats.len() == self.group_tat_order.len()
                && self
                    .group_tat_order
                    .iter()
                    .all(|(tat, key)| self.group_tats.get(key) == Some(tat)),
            "{q}: group buckets and their order differ"
        );
        ensure!(
            self.group_tat_order
                .first()
                .is_none_or(|(tat, _)| *tat > self.clock_ms.saturating_mul(1_000)),
            "{q}: a full group bucket is kept"
        );
        // The top-k indexes hold exactly the groups with jobs.
        let mut by_backlog = BTreeSet::new();
        let mut by_head = BTreeSet::new();
        for (id, group) in self.groups.iter() {
            if let Some(&head) = group.offsets.front() {
                by_backlog.insert((group.offsets.len() as u64, id));
                by_head.insert((head, id));
            }
        }
        ensure!(by_backlog == self.by_backlog, "{q}: backlog index differs");
        ensure!(by_head == self.by_head, "{q}: head index differs");
        let mut leases = BTreeSet::new();
        let mut delayed = BTreeSet::new();
        let mut ready = BTreeSet::new();
        let mut bytes = 0u64;
        for (offset, job) in self.jobs.iter() {
            ensure!(
                offset < self.next_offset,
                "{q}: job {offset} at or past next offset"
            );
            ensure!(
                job.priority <= PRIORITY_MAX,
                "{q}: job {offset} priority out of range"
            );
            ensure!(
                job.last_fence <= last_index,
                "{q}: job {offset} fence from the future"
            );
            ensure!(
                job.group == NO_GROUP
                    || self
                        .groups
                        .get(&job.group)
                        .is_some_and(|g| g.offsets.contains(&offset)),
                "{q}: job {offset} missing from its group"
            );
            ensure!(
                !self.finished.contains_key(&offset),
                "{q}: job {offset} both pending and finished"
            );
            bytes += u64::from(job.payload_bytes);
            match job.lease {
                Some(lease) => {
                    ensure!(
                        lease.fence == job.last_fence,
                        "{q}: job {offset} lease fence is not its last grant"
                    );
                    ensure!(
                        lease.deadline_ms > self.clock_ms,
                        "{q}: job {offset} lease past its deadline"
                    );
                    ensure!(
                        self.holders.contains_key(&offset),
                        "{q}: leased job {offset} has no holder"
                    );
                    leases.insert((lease.deadline_ms, offset));
                }
                None if job.not_before_ms > self.clock_ms => {
                    delayed.insert((job.not_before_ms, offset));
                }
                None => {}
            }
            if self.should_be_ready(offset, job) {
                ready.insert((PRIORITY_MAX - job.priority, offset));
            }
        }
        ensure!(
            leases == self.leases,
            "{q}: lease index disagrees with the jobs"
        );
        ensure!(
            self.holders.len() == leases.len(),
            "{q}: holder table disagrees with the leases"
        );
        ensure!(
            delayed == self.delayed,
            "{q}: delay index disagrees with the jobs"
        );
        ensure!(
            ready == self.ready,
            "{q}: ready index disagrees with the jobs"
        );
        self.check_fairness(&ready)?;
        for (&offset, dead) in &self.dead {
            ensure!(
                offset < self.next_offset,
                "{q}: dead letter {offset} past next offset"
            );
            ensure!(
                !self.jobs.contains_key(&offset),
                "{q}: {offset} both pending and dead"
            );
            ensure!(
                dead.job.lease.is_none(),
                "{q}: dead letter {offset} holds a lease"
            );
            bytes += u64::from(dead.job.payload_bytes);
        }
        ensure!(
            bytes == self.bytes,
            "{q}: byte count {} but jobs hold {bytes}",
            self.bytes
        );
        // The ack floor is at most every unfinished offset: nothing below the
        // first pending job is pending.
        let floor = self.jobs.keys().next().unwrap_or(self.next_offset);
        ensure!(
            self.jobs.keys().all(|o| o >= floor),
            "{q}: ack floor above a pending job"
        );
        for offset in self.history.keys() {
            ensure!(
                self.jobs.contains_key(offset),
                "{q}: history kept for finished job {offset}"
            );
        }
        for (offset, how) in &self.finished {
            ensure!(
                by_offset.contains_key(offset),
                "{q}: finished record {offset} outlived its dedup id"
            );
            if let Finished::Dead { .. } = how {
                ensure!(
                    !self.jobs.contains_key(offset),
                    "{q}: dead record for pending job {offset}"
                );
            }
        }
        Ok(())
    }

    /// Dedup: one expiry slot per id, and every id names a known offset.
    /// Returns the ids by offset: a finished record, in the queue or a
    /// subscription, exists only while its id is remembered.
    fn check_dedup(&self) -> Result<BTreeMap<u64, u128>, String> {
        let q = &self.name;
        ensure!(
            self.dedup.index_agrees(),
            "{q}: dedup index and order disagree"
        );
        let mut last_ms = 0;
        let mut by_offset = BTreeMap::new();
        for (id_hash, entry) in self.dedup.iter() {
            ensure!(
                entry.first_ms >= last_ms,
                "{q}: dedup order not by first acceptance"
            );
            last_ms = entry.first_ms;
            ensure!(
                entry.offset < self.next_offset,
                "{q}: dedup entry names a future offset"
            );
            by_offset.insert(entry.offset, id_hash);
        }
        Ok(by_offset)
    }

    /// Subscriptions (SPEC 2.3a): each a consumer over the queue's offsets
    /// and blobs under the queue's configuration and time, holding nothing
    /// of the queue's own; and the payload holds equal to the real holders.
    fn check_subscriptions(
        &self,
        last_index: u64,
        by_offset: &BTreeMap<u64, u128>,
    ) -> Result<(), String> {
        let q = &self.name;
        ensure!(
            self.subscription.is_none(),
            "{q}: a queue marked as a subscription"
        );
        ensure!(
            self.subscriptions.len() <= SUBSCRIPTIONS_MAX,
            "{q}: {} subscriptions",
            self.subscriptions.len()
        );
        // Holders of each blob, and its bytes; the default subscription's
        // blobs apart.
        let mut holders: BTreeMap<u64, (u32, u32)> = BTreeMap::new();
        let mut own = BTreeSet::new();
        let mut hold = |consumer: &Queue, own: Option<&mut BTreeSet<u64>>| {
            let mut seen = BTreeSet::new();
            let jobs = consumer
                .jobs
                .values()
                .chain(consumer.dead.values().map(|d| &d.job));
            for job in jobs {
                if !seen.insert(job.blob) {
                    return Err(format!(
                        "{q}: blob {} held twice by one subscription",
                        job.blob
                    ));
                }
                let entry = holders.entry(job.blob).or_insert((0, job.payload_bytes));
                entry.0 += 1;
                if entry.1 != job.payload_bytes {
                    return Err(format!("{q}: blob {} sizes differ", job.blob));
                }
            }
            if let Some(own) = own {
                *own = seen;
            }
            Ok(())
        };
        hold(self, Some(&mut own))?;
        for (name, sub) in &self.subscriptions {
            ensure!(
                sub.subscription.as_deref() == Some(name.as_str()),
                "{q}: subscription `{name}` stored under another name"
            );
            ensure!(
                sub.name == self.name && sub.id == self.id,
                "{q}: subscription `{name}` names another queue"
            );
            ensure!(
                sub.config == self.config,
                "{q}: subscription `{name}` has another configuration"
            );
            ensure!(
                sub.clock_ms == self.clock_ms && sub.next_offset == self.next_offset,
                "{q}: subscription `{name}` clock or next offset differs from the queue's"
            );
            ensure!(
                sub.dedup.is_empty()
                    && sub.holds == Holds::default()
                    && sub.subscriptions.is_empty()
                    && sub.enqueue_tat_us == 0,
                "{q}: subscription `{name}` keeps what only the queue keeps"
            );
            sub.check_consumer(last_index, by_offset)?;
            hold(sub, None)?;
        }
        let shared: BTreeMap<u64, u32> = holders
            .iter()
            .filter(|(_, (n, _))| *n >= 2)
            .map(|(blob, (n, _))| (*blob, *n))
            .collect();
        ensure!(
            shared == self.holds.shared,
            "{q}: payload holds disagree with the subscriptions that hold them"
        );
        let orphans = holders.iter().filter(|(blob, _)| !own.contains(*blob));
        let (count, bytes) = orphans.fold((0u64, 0u64), |(c, b), (_, (_, size))| {
            (c + 1, b + u64::from(*size))
        });
        ensure!(
            (count, bytes) == (self.holds.orphans, self.holds.orphan_bytes),
            "{q}: {} jobs of {} bytes counted as held by subscriptions only, but they hold {count} of {bytes}",
            self.holds.orphans,
            self.holds.orphan_bytes
        );
        Ok(())
    }
}

impl Queue {
    /// Fair sharing (SPEC 2.3a): interned keys counted by their held jobs,
    /// lanes counted by their pending jobs, the lanes' ready heads and the
    /// bands' order equal to what the jobs imply (`ready`, from the jobs),
    /// and no lane with ready heads behind its band's clock.
    fn check_fairness(&self, ready: &BTreeSet<(u8, u64)>) -> Result<(), String> {
        let q = &self.name;
        ensure!(
            self.fair_keys.len() == self.fair_ids.len()
                && self
                    .fair_ids
                    .iter()
                    .all(|(key, id)| self.fair_keys.get(id).is_some_and(|k| &k.key == key)),
            "{q}: fairness keys and their ids differ"
        );
        let band = |job: &Job| PRIORITY_MAX - job.priority;
        let mut held: BTreeMap<u32, u64> = BTreeMap::new();
        let mut pending: BTreeMap<(u8, u32), u64> = BTreeMap::new();
        for job in self.jobs.values() {
            *held.entry(job.fair).or_default() += 1;
            *pending.entry((band(job), job.fair)).or_default() += 1;
        }
        for dead in self.dead.values() {
            *held.entry(dead.job.fair).or_default() += 1;
        }
        ensure!(
            held.len() == self.fair_keys.len()
                && held
                    .iter()
                    .all(|(id, n)| self.fair_keys.get(id).is_some_and(|k| k.held == *n)),
            "{q}: fairness keys disagree with the jobs that hold them"
        );
        let lanes: BTreeMap<(u8, u32), u64> = self
            .bands
            .iter()
            .flat_map(|(b, band)| band.lanes.iter().map(|(id, l)| ((*b, *id), l.pending)))
            .collect();
        ensure!(
            lanes == pending,
            "{q}: fairness lanes disagree with the pending jobs"
        );
        ensure!(
            self.bands.values().all(|b| !b.lanes.is_empty()),
            "{q}: an empty fairness band is kept"
        );
        let mut lane_ready: BTreeMap<(u8, u32), BTreeSet<u64>> = BTreeMap::new();
        for &(b, offset) in ready {
            lane_ready
                .entry((b, self.jobs[&offset].fair))
                .or_default()
                .insert(offset);
        }
        for (b, band) in &self.bands {
            let mut order = BTreeSet::new();
            for (id, lane) in &band.lanes {
                let want = lane_ready.remove(&(*b, *id)).unwrap_or_default();
                ensure!(
                    lane.ready == want,
                    "{q}: ready heads of fairness lane {id} in band {b} disagree with the jobs"
                );
                if let Some(&head) = lane.ready.first() {
                    ensure!(
                        lane.vtime >= band.vclock,
                        "{q}: fairness lane {id} in band {b} is ready behind the band's clock"
                    );
                    order.insert((lane.vtime, head));
                }
            }
            ensure!(
                order == band.order,
                "{q}: fairness order of band {b} disagrees with its lanes"
            );
        }
        Ok(())
    }
}

impl State {
    /// Checks every structural invariant of every queue. Cheap enough for
    /// tests after each command; O(state) so not for the hot path.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut ids = BTreeSet::new();
        for (name, queue) in &self.queues {
            ensure!(
                &queue.name == name,
                "queue `{name}` stored under another name"
            );
            ensure!(
                queue.id < self.next_queue_id,
                "queue `{name}` id from the future"
            );
            ensure!(ids.insert(queue.id), "queue id {} used twice", queue.id);
            ensure!(
                queue.clock_ms <= self.clock_ms,
                "queue `{name}` clock ahead of the cluster clock"
            );
            queue.check_invariants(self.last_index)?;
        }
        self.sessions.check()
    }

    /// Every payload the state references, as (queue id, blob key).
    pub fn referenced_blobs(&self) -> BTreeSet<(u64, u64)> {
        let mut out = BTreeSet::new();
        for queue in self.queues.values() {
            for consumer in std::iter::once(queue).chain(queue.subscriptions.values()) {
                out.extend(consumer.jobs.values().map(|j| (queue.id, j.blob)));
                out.extend(consumer.dead.values().map(|d| (queue.id, d.job.blob)));
            }
        }
        out
    }
}
