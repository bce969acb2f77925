//! What a scrape reads at the moment it runs: Raft's term, leader and
//! indexes, and each queue's depth, bytes, groups and running totals from
//! the applied state. Nothing is kept between scrapes, so a deleted queue
//! disappears from the next one.

use std::collections::BTreeMap;

use lockstep_core::QueueInfo;
use lockstep_types::{NodeId, NodeInfo};
use openraft::RaftMetrics;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// What a scrape reads from Raft and the applied state.
#[derive(Debug, Default)]
pub struct Scrape {
    pub term: u64,
    pub leading: bool,
    /// 0 when no leader is known (node ids start at 1).
    pub leader_id: u64,
    pub last_log_index: u64,
    /// `None` when Raft did not answer in time.
    pub commit_index: Option<u64>,
    pub applied_index: u64,
    /// On the leader: each other member's lag behind its last log index.
    pub replication_lag: BTreeMap<NodeId, u64>,
    pub queues: Vec<QueueInfo>,
}

impl Scrape {
    /// Reads Raft's view of this node from its metrics watch, plus the
    /// commit index, which openraft 0.9 keeps out of `RaftMetrics`.
    pub fn raft(
        &mut self,
        metrics: &RaftMetrics<NodeId, NodeInfo>,
        commit_index: Option<Option<u64>>,
    ) {
        let last_log_index = metrics.last_log_index.unwrap_or(0);
        self.term = metrics.current_term;
        self.leading = metrics.current_leader == Some(metrics.id);
        self.leader_id = metrics.current_leader.unwrap_or(0);
        self.last_log_index = last_log_index;
        self.commit_index = commit_index.map(|c| c.unwrap_or(0));
        self.applied_index = metrics.last_applied.map_or(0, |l| l.index);
        // openraft reports the leader's own progress too; its lag is not
        // replication lag.
        self.replication_lag = metrics
            .replication
            .iter()
            .flatten()
            .filter(|(id, _)| **id != metrics.id)
            .map(|(id, matched)| {
                let matched = matched.map_or(0, |l| l.index);
                (*id, last_log_index.saturating_sub(matched))
            })
            .collect();
    }
}

fn gauge(out: MetricEncoder, value: u64) -> Result<(), std::fmt::Error> {
    ConstGauge::new(value as i64).encode(out)
}

fn counter(out: MetricEncoder, value: u64) -> Result<(), std::fmt::Error> {
    ConstCounter::new(value).encode(out)
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let raft: [(&str, &str, u64); 5] = [
            (
                "lockstep_raft_term",
                "The current Raft term as this node sees it.",
                self.term,
            ),
            (
                "lockstep_raft_is_leader",
                "1 if this node is the Raft leader, else 0.",
                u64::from(self.leading),
            ),
            (
                "lockstep_raft_leader_id",
                "The id of the leader this node knows, 0 if none.",
                self.leader_id,
            ),
            (
                "lockstep_raft_last_log_index",
                "Index of the last entry in this node's Raft log.",
                self.last_log_index,
            ),
            (
                "lockstep_raft_applied_index",
                "Index of the last entry this node applied to its state machine.",
                self.applied_index,
            ),
        ];
        for (name, help, value) in raft {
            gauge(
                enc.encode_descriptor(name, help, None, MetricType::Gauge)?,
                value,
            )?;
        }
        if let Some(commit) = self.commit_index {
            let out = enc.encode_descriptor(
                "lockstep_raft_commit_index",
                "Index of the last entry this node knows to be committed.",
                None,
                MetricType::Gauge,
            )?;
            gauge(out, commit)?;
        }
        if !self.replication_lag.is_empty() {
            let mut out = enc.encode_descriptor(
                "lockstep_raft_replication_lag",
                "On the leader: entries of its log each follower or learner has not yet matched.",
                None,
                MetricType::Gauge,
            )?;
            for (id, lag) in &self.replication_lag {
                let id = id.to_string();
                gauge(out.encode_family(&[("follower", id.as_str())])?, *lag)?;
            }
        }
        if self.queues.is_empty() {
            return Ok(());
        }

        let mut out = enc.encode_descriptor(
            "lockstep_queue_depth",
            "Jobs in a queue by state: ready, delayed, leased or dead (dead-lettered).",
            None,
            MetricType::Gauge,
        )?;
        for q in &self.queues {
            let s = &q.stats;
            for (state, value) in [
                ("ready", s.ready),
                ("delayed", s.delayed),
                ("leased", s.leased),
                ("dead", s.dead),
            ] {
                let labels = [("queue", q.name.as_str()), ("state", state)];
                gauge(out.encode_family(&labels)?, value)?;
            }
        }
        type Field = fn(&QueueInfo) -> u64;
        let gauges: [(&str, &str, Field); 2] = [
            (
                "lockstep_queue_bytes",
                "Payload bytes of a queue's pending and dead-lettered jobs.",
                |q| q.stats.bytes,
            ),
            (
                "lockstep_queue_groups",
                "Groups of a queue that have jobs or are paused.",
                |q| q.stats.groups,
            ),
        ];
        for (name, help, field) in gauges {
            let mut out = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for q in &self.queues {
                gauge(out.encode_family(&[("queue", q.name.as_str())])?, field(q))?;
            }
        }
        let mut out = enc.encode_descriptor(
            "lockstep_queue_oldest_ready_age_seconds",
            "Age of the oldest job a fetch could take now, by the queue's cluster clock (0 when none).",
            None,
            MetricType::Gauge,
        )?;
        for q in &self.queues {
            let age = q.stats.oldest_ready_age_ms as f64 / 1_000.0;
            ConstGauge::new(age).encode(out.encode_family(&[("queue", q.name.as_str())])?)?;
        }
        let counters: [(&str, &str, Field); 8] = [
            (
                "lockstep_queue_enqueued",
                "Jobs accepted into a queue (duplicates excluded).",
                |q| q.stats.counters.enqueued,
            ),
            (
                "lockstep_queue_duplicates",
                "Enqueues answered as duplicates of a job id inside the dedup window.",
                |q| q.stats.counters.duplicates,
            ),
            (
                "lockstep_queue_delivered",
                "Deliveries (leases granted) of a queue's jobs, first or later.",
                |q| q.stats.counters.delivered,
            ),
            (
                "lockstep_queue_redelivered",
                "Deliveries of a job that had been delivered before.",
                |q| q.stats.counters.redelivered,
            ),
            ("lockstep_queue_acked", "Jobs acknowledged as done.", |q| {
                q.stats.counters.acked
            }),
            (
                "lockstep_queue_nacked",
                "Negative acknowledgements by workers.",
                |q| q.stats.counters.nacked,
            ),
            (
                "lockstep_queue_lease_expired",
                "Leases that expired before an ack, nack or release.",
                |q| q.stats.counters.expired,
            ),
            (
                "lockstep_queue_dead_lettered",
                "Jobs moved to the dead letters.",
                |q| q.stats.counters.dead_lettered,
            ),
        ];
        for (name, help, field) in counters {
            let mut out = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for q in &self.queues {
                counter(out.encode_family(&[("queue", q.name.as_str())])?, field(q))?;
            }
        }
        Ok(())
    }
}
