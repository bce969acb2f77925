//! The fault schedule: which fault the profile calls for next, on which
//! node, for how long, and how each fault is applied and undone.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockstep_harness::Cluster;
use lockstep_proto as pb;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;

use super::common::now_ms;
use super::membership::{rejoin, MEMBERSHIP_CALL_MS_MAX};
use super::options::{Options, Profile};
use super::partitions::Partitions;

/// Applies the profile's faults on a seeded schedule: the first after
/// about a quarter of the run (at most 10 s), then every ~5 s, each lasting
/// 2–15 s (cut short by the end of the run). Every fault is undone before
/// the next one starts.
pub(super) async fn inject(
    options: &Options,
    cluster: &Arc<tokio::sync::Mutex<Cluster>>,
    channels: &[Channel],
    partitions: &mut Partitions,
) -> Vec<(u64, String)> {
    let mut rng = StdRng::seed_from_u64(options.seed);
    let start = Instant::now();
    let end = start + options.duration;
    let first = (options.duration / 4).min(Duration::from_secs(10));
    let mut faults = Vec::new();
    tokio::time::sleep(first).await;
    let ids: Vec<u64> = (1..=options.nodes).collect();
    while Instant::now() + Duration::from_secs(2) < end {
        let kind = match options.profile {
            Profile::None => break,
            Profile::Mixed => Profile::MIXED[rng.random_range(0..Profile::MIXED.len())],
            p => p,
        };
        let hold = Duration::from_millis(rng.random_range(2_000..15_000))
            .min(end.saturating_duration_since(Instant::now()));
        let leader = {
            let c = cluster.lock().await;
            c.wait_leader(&ids, Duration::from_millis(3_000)).await.ok()
        };
        let followers: Vec<u64> = ids.iter().copied().filter(|i| Some(*i) != leader).collect();
        let target = match (kind, leader) {
            // Wipe and remove only followers: a wiped leader is the same as
            // kill + wipe of a follower after an election, and removing the
            // leader is a leadership transfer openraft 0.9 does not offer.
            (Profile::Wipe | Profile::Membership, Some(_)) => {
                followers[rng.random_range(0..followers.len())]
            }
            (_, Some(l)) if rng.random_ratio(1, 2) => l,
            _ => ids[rng.random_range(0..ids.len())],
        };
        let applied = {
            let mut c = cluster.lock().await;
            apply_fault(kind, target, &ids, &mut c, channels, partitions, &mut rng).await
        };
        faults.push((
            now_ms(),
            format!("{} for {} ms", applied.label(), hold.as_millis()),
        ));
        tokio::time::sleep(hold).await;
        let undone = {
            let mut c = cluster.lock().await;
            undo_fault(&applied, &mut c, channels, partitions).await
        };
        faults.push((
            now_ms(),
            match undone {
                Ok(()) => format!("healed {}", kind.name()),
                Err(e) => format!("healed {} with trouble: {e}", kind.name()),
            },
        ));
        let gap = Duration::from_millis(rng.random_range(4_000..6_000));
        tokio::time::sleep(gap.min(end.saturating_duration_since(Instant::now()))).await;
    }
    let rest = end.saturating_duration_since(Instant::now());
    tokio::time::sleep(rest).await;
    faults
}

/// A fault in place, and what undoing it takes.
#[derive(Debug)]
enum Applied {
    Killed(Vec<u64>),
    Paused(u64),
    Wiped(u64),
    /// Partitioned: `label` says how.
    Cut(String),
    /// Removed from the membership; rejoined (empty) when undone.
    Removed(u64),
    /// The fault could not be applied (for example a removal refused).
    Skipped(String),
}

impl Applied {
    fn label(&self) -> String {
        match self {
            Applied::Killed(ids) if ids.len() == 1 => format!("kill node {}", ids[0]),
            Applied::Killed(ids) => format!("kill nodes {ids:?}"),
            Applied::Paused(id) => format!("pause node {id}"),
            Applied::Wiped(id) => format!("wipe node {id}"),
            Applied::Cut(how) => how.clone(),
            Applied::Removed(id) => format!("remove node {id}"),
            Applied::Skipped(why) => format!("skipped: {why}"),
        }
    }
}

async fn apply_fault(
    kind: Profile,
    target: u64,
    ids: &[u64],
    c: &mut Cluster,
    channels: &[Channel],
    partitions: &mut Partitions,
    rng: &mut StdRng,
) -> Applied {
    let ip = |c: &Cluster, id: u64| c.addr(id).ip;
    // Every node's address but `target`'s.
    let others = |c: &Cluster| -> Vec<Ipv4Addr> {
        ids.iter()
            .filter(|i| **i != target)
            .map(|i| ip(c, *i))
            .collect()
    };
    match kind {
        Profile::Kill => {
            c.kill(target);
            Applied::Killed(vec![target])
        }
        Profile::KillAll => {
            for id in ids {
                c.kill(*id);
            }
            Applied::Killed(ids.to_vec())
        }
        Profile::Pause => {
            let _ = c.pause(target);
            Applied::Paused(target)
        }
        Profile::Wipe => {
            let _ = c.wipe(target);
            Applied::Wiped(target)
        }
        Profile::PartitionLeader => {
            partitions.isolate(ip(c, target), &others(c));
            Applied::Cut(format!("isolate node {target}"))
        }
        Profile::PartitionHalves => {
            // A random split into a minority and a majority side.
            let mut shuffled = ids.to_vec();
            for i in (1..shuffled.len()).rev() {
                shuffled.swap(i, rng.random_range(0..=i));
            }
            let (minority, majority) = shuffled.split_at(ids.len() / 2);
            for a in minority {
                let others: Vec<Ipv4Addr> = majority.iter().map(|b| ip(c, *b)).collect();
                partitions.isolate(ip(c, *a), &others);
            }
            Applied::Cut(format!("split {minority:?} | {majority:?}"))
        }
        Profile::PartitionOneway => {
            partitions.drop_from(ip(c, target), &others(c));
            Applied::Cut(format!("drop node {target}'s outgoing packets"))
        }
        Profile::Membership => {
            let channel = channels[rng.random_range(0..channels.len())].clone();
            let removed = tokio::time::timeout(
                Duration::from_millis(MEMBERSHIP_CALL_MS_MAX),
                pb::cluster_client::ClusterClient::new(channel)
                    .remove(pb::RemoveRequest { id: target }),
            )
            .await;
            match removed {
                Ok(Ok(_)) => {
                    // A removed node is stopped and forgets its data, as an
                    // operator retiring it would; it comes back empty.
                    let _ = c.stop(target);
                    let _ = c.wipe(target);
                    Applied::Removed(target)
                }
                Ok(Err(s)) => Applied::Skipped(format!("remove node {target}: {}", s.message())),
                Err(_) => Applied::Skipped(format!("remove node {target}: timed out")),
            }
        }
        Profile::None | Profile::Mixed => Applied::Skipped("no fault".into()),
    }
}

async fn undo_fault(
    applied: &Applied,
    c: &mut Cluster,
    channels: &[Channel],
    partitions: &mut Partitions,
) -> Result<(), String> {
    match applied {
        Applied::Killed(ids) => {
            for id in ids {
                c.spawn(*id).map_err(|e| e.0)?;
            }
            Ok(())
        }
        Applied::Paused(id) => c.resume(*id).map_err(|e| e.0),
        Applied::Wiped(id) => c.spawn(*id).map_err(|e| e.0),
        Applied::Cut(_) => {
            partitions.heal();
            Ok(())
        }
        Applied::Removed(id) => {
            c.spawn(*id).map_err(|e| e.0)?;
            rejoin(c, *id, channels).await
        }
        Applied::Skipped(_) => Ok(()),
    }
}
