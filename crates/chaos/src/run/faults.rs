//! The fault schedule: which faults the profile calls for next, on which
//! nodes, for how long, and how each fault is applied and undone.
//!
//! A step applies one fault, or for `compound` two or three that overlap
//! (each started 0.5-3 s after the one before), holds them, and undoes them
//! in reverse order. `mixed` draws a single fault three times in four and a
//! compound step otherwise.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockstep_harness::{set_clock, set_failpoints, Cluster};
use lockstep_proto as pb;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;

use super::common::now_ms;
use super::disks::{self, Probe};
use super::membership::{rejoin, MEMBERSHIP_CALL_MS_MAX};
use super::options::{Options, Profile};
use super::partitions::Partitions;

/// Wall-clock steps of the `clock` fault, in libfaketime's syntax: seconds
/// to hours, ahead and back, and a slow drift either way.
const CLOCK_OFFSETS: [&str; 10] = [
    "+5", "-5", "+60", "-60", "+600", "-600", "+3600", "-3600", "+0 x1.01", "+0 x0.99",
];
/// Share of answers the `lost-reply` fault drops, in percent.
const LOST_REPLY_PERCENT: [u32; 3] = [10, 30, 60];
/// How long a dropped answer is held before the call fails: past the
/// workload's call deadline, so the caller hears nothing.
const LOST_REPLY_HOLD_MS: u64 = 4_000;
/// Delay of each log append under the `slow-disk` fault, in milliseconds.
const SLOW_DISK_MS: [u64; 3] = [20, 100, 500];
/// How long an operator story lets the members it leaves running take
/// writes before it strikes, so a lagging member really lags.
const STORY_LAG_MS: u64 = 2_000;
/// The slow disk of a wiped member catching up in operator story 1.
const STORY_SLOW_APPEND: &str = "log-append=sleep(300)\n";
/// Bound on asking a node whether it still leads.
const LEADS_CALL_MS_MAX: u64 = 2_000;
/// Bound on the bootstrap an operator re-runs.
const STORY_BOOTSTRAP_MS_MAX: u64 = 10_000;

/// What a fault step needs of the run.
struct Env<'a> {
    cluster: &'a Arc<tokio::sync::Mutex<Cluster>>,
    channels: &'a [Channel],
    partitions: &'a mut Partitions,
    /// Where the nodes' clock and failpoints files live.
    dir: PathBuf,
    ids: Vec<u64>,
    /// What a fault found broken that the checker cannot see in the
    /// history (a leader below its disk reserve taking enqueues, or
    /// refusing them after space returned); the run fails on it.
    troubles: Vec<String>,
}

/// Applies the profile's faults on a seeded schedule: the first step after
/// about a quarter of the run (at most 10 s), then every ~5 s, each holding
/// 2-15 s (cut short by the end of the run). Every step is undone before
/// the next one starts. Returns the faults applied, with their start time
/// (wall ms), and what they found broken (see `Env::troubles`).
pub(super) async fn inject(
    options: &Options,
    cluster: &Arc<tokio::sync::Mutex<Cluster>>,
    channels: &[Channel],
    partitions: &mut Partitions,
) -> (Vec<(u64, String)>, Vec<String>) {
    let mut rng = StdRng::seed_from_u64(options.seed);
    let start = Instant::now();
    let end = start + options.duration;
    let first = (options.duration / 4).min(Duration::from_secs(10));
    let dir = cluster.lock().await.spec().dir.clone();
    let mut env = Env {
        cluster,
        channels,
        partitions,
        dir,
        ids: (1..=options.nodes).collect(),
        troubles: Vec::new(),
    };
    let mut faults = Vec::new();
    tokio::time::sleep(first).await;
    while Instant::now() + Duration::from_secs(2) < end {
        let kinds = match options.profile {
            Profile::None => break,
            Profile::Compound => compound(&mut rng),
            Profile::Mixed if rng.random_ratio(1, 4) => compound(&mut rng),
            Profile::Mixed => vec![Profile::SINGLE[rng.random_range(0..Profile::SINGLE.len())]],
            p => vec![p],
        };
        let hold = Duration::from_millis(rng.random_range(2_000..15_000));
        let mut applied = Vec::new();
        for (i, kind) in kinds.iter().enumerate() {
            if i > 0 {
                let stagger = Duration::from_millis(rng.random_range(500..3_000));
                tokio::time::sleep(stagger.min(end.saturating_duration_since(Instant::now())))
                    .await;
            }
            let a = apply_fault(*kind, &mut env, &mut rng).await;
            let held = hold.min(end.saturating_duration_since(Instant::now()));
            faults.push((
                now_ms(),
                format!("{} for {} ms", a.label(), held.as_millis()),
            ));
            applied.push((*kind, a));
        }
        tokio::time::sleep(hold.min(end.saturating_duration_since(Instant::now()))).await;
        for (kind, a) in applied.iter().rev() {
            let undone = undo_fault(a, &mut env).await;
            faults.push((
                now_ms(),
                match undone {
                    Ok(()) => format!("healed {}", kind.name()),
                    Err(e) => format!("healed {} with trouble: {e}", kind.name()),
                },
            ));
        }
        let gap = Duration::from_millis(rng.random_range(4_000..6_000));
        tokio::time::sleep(gap.min(end.saturating_duration_since(Instant::now()))).await;
    }
    let rest = end.saturating_duration_since(Instant::now());
    tokio::time::sleep(rest).await;
    (faults, env.troubles)
}

/// Two or three different single faults for one compound step, at most one
/// of which takes a node's data away: two nodes of three without their data
/// is a cluster that cannot recover by design, not a fault to survive.
fn compound(rng: &mut StdRng) -> Vec<Profile> {
    let count = rng.random_range(2..=3);
    let amnesic = |p: &Profile| {
        matches!(
            p,
            Profile::Wipe | Profile::WipeLeader | Profile::Membership | Profile::Operator
        )
    };
    let mut kinds: Vec<Profile> = Vec::new();
    while kinds.len() < count {
        let p = Profile::SINGLE[rng.random_range(0..Profile::SINGLE.len())];
        if kinds.contains(&p) || (amnesic(&p) && kinds.iter().any(amnesic)) {
            continue;
        }
        kinds.push(p);
    }
    kinds
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
    /// Wall clocks set off (libfaketime); set back to `+0` when undone.
    Clocks(Vec<(u64, String)>),
    /// Failpoints set on these nodes; cleared when undone.
    Failpoints(Vec<u64>, String),
    /// A node's disk filled below its reserve, with the bytes left free
    /// and what a probe saw; freed when undone.
    Filled {
        id: u64,
        free: u64,
        seen: String,
    },
    /// An operator's incident: `label` says what was done; undone by
    /// restarting `killed` and rejoining `removed`.
    Story {
        label: String,
        killed: Vec<u64>,
        removed: Option<u64>,
    },
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
            Applied::Clocks(set) => {
                let parts: Vec<String> = set
                    .iter()
                    .map(|(id, offset)| format!("node {id} {offset}"))
                    .collect();
                format!("clock {}", parts.join(", "))
            }
            Applied::Failpoints(ids, text) => {
                format!("failpoints {} on nodes {ids:?}", text.replace('\n', "; "))
            }
            Applied::Filled { id, free, seen } => {
                format!(
                    "fill node {id}'s disk to {} MiB free ({seen})",
                    free / (1024 * 1024)
                )
            }
            Applied::Story { label, .. } => format!("operator: {label}"),
            Applied::Skipped(why) => format!("skipped: {why}"),
        }
    }
}

/// The node a fault strikes: the leader half the time, else any node;
/// `followers_only` for faults that would be another fault on a leader.
fn pick(rng: &mut StdRng, ids: &[u64], leader: Option<u64>, followers_only: bool) -> u64 {
    let followers: Vec<u64> = ids.iter().copied().filter(|i| Some(*i) != leader).collect();
    match leader {
        Some(_) if followers_only => followers[rng.random_range(0..followers.len())],
        Some(l) if rng.random_ratio(1, 2) => l,
        _ => ids[rng.random_range(0..ids.len())],
    }
}

/// The leader the running nodes agree on, if any within 3 s.
async fn current_leader(env: &Env<'_>) -> Option<u64> {
    let c = env.cluster.lock().await;
    c.wait_leader(&env.ids, Duration::from_millis(3_000))
        .await
        .ok()
}

/// How long a fault that takes a node's data waits for a member wiped
/// before to lift its vote guard.
const GUARD_LIFT_WAIT_MS_MAX: u64 = 30_000;

/// Whether every node reports its vote guard down, waiting up to
/// `GUARD_LIFT_WAIT_MS_MAX` for one that is still up. A member wiped
/// before it caught up from the last wipe makes two members of three
/// without their data: the cluster waits that out, unavailable by design
/// (a guarded member acknowledges nothing until a majority of the others
/// can report the newest term), rather than surviving it, so the schedule
/// does not ask for it.
async fn guards_down(env: &Env<'_>) -> bool {
    let deadline = Instant::now() + Duration::from_millis(GUARD_LIFT_WAIT_MS_MAX);
    loop {
        let mut up = false;
        {
            let c = env.cluster.lock().await;
            for id in &env.ids {
                let status = tokio::time::timeout(Duration::from_millis(1_000), c.status(*id));
                if let Ok(Ok(s)) = status.await {
                    up |= s.vote_guarded;
                }
            }
        }
        if !up {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn apply_fault(kind: Profile, env: &mut Env<'_>, rng: &mut StdRng) -> Applied {
    let amnesic = matches!(
        kind,
        Profile::Wipe | Profile::WipeLeader | Profile::Membership | Profile::Operator
    );
    if amnesic && !guards_down(env).await {
        return Applied::Skipped(format!(
            "{}: a member wiped before is still guarded after {GUARD_LIFT_WAIT_MS_MAX} ms",
            kind.name()
        ));
    }
    let leader = current_leader(env).await;
    let ids = env.ids.clone();
    let target = match kind {
        // Wipe and remove only followers: removing the leader is a
        // leadership transfer openraft 0.9 does not offer.
        Profile::Wipe | Profile::Membership => pick(rng, &ids, leader, true),
        Profile::WipeLeader => leader.unwrap_or(ids[0]),
        _ => pick(rng, &ids, leader, false),
    };
    let mut c = env.cluster.lock().await;
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
            for id in &ids {
                c.kill(*id);
            }
            Applied::Killed(ids.clone())
        }
        Profile::Pause => {
            let _ = c.pause(target);
            Applied::Paused(target)
        }
        Profile::Wipe | Profile::WipeLeader => {
            let _ = c.wipe(target);
            Applied::Wiped(target)
        }
        Profile::PartitionLeader => {
            env.partitions.isolate(ip(&c, target), &others(&c));
            Applied::Cut(format!("isolate node {target}"))
        }
        Profile::PartitionHalves => {
            // A random split into a minority and a majority side.
            let mut shuffled = ids.clone();
            shuffle(&mut shuffled, rng);
            let (minority, majority) = shuffled.split_at(ids.len() / 2);
            for a in minority {
                let others: Vec<Ipv4Addr> = majority.iter().map(|b| ip(&c, *b)).collect();
                env.partitions.isolate(ip(&c, *a), &others);
            }
            Applied::Cut(format!("split {minority:?} | {majority:?}"))
        }
        Profile::PartitionOneway => {
            env.partitions.drop_from(ip(&c, target), &others(&c));
            Applied::Cut(format!("drop node {target}'s outgoing packets"))
        }
        Profile::Membership => remove(&mut c, env.channels, target, rng).await,
        Profile::Clock => {
            // One node (often the leader), or every node, each its own way.
            let targets = if rng.random_ratio(1, 3) {
                ids.clone()
            } else {
                vec![target]
            };
            let mut set = Vec::new();
            for id in targets {
                let offset = CLOCK_OFFSETS[rng.random_range(0..CLOCK_OFFSETS.len())];
                if let Err(e) = set_clock(&env.dir, id, offset) {
                    return Applied::Skipped(e.0);
                }
                set.push((id, offset.to_string()));
            }
            Applied::Clocks(set)
        }
        Profile::LostReply => {
            let percent = LOST_REPLY_PERCENT[rng.random_range(0..LOST_REPLY_PERCENT.len())];
            // Answers to clients (direct, or relayed by a follower) and
            // answers of the leader to a forwarding follower.
            let text = format!(
                "client-reply-lost={percent}%return({LOST_REPLY_HOLD_MS})\n\
                 forward-reply-lost={percent}%return({LOST_REPLY_HOLD_MS})\n"
            );
            let targets = if rng.random_ratio(1, 3) {
                ids.clone()
            } else {
                vec![target]
            };
            failpoints(&env.dir, targets, text)
        }
        Profile::SlowDisk => {
            let ms = SLOW_DISK_MS[rng.random_range(0..SLOW_DISK_MS.len())];
            failpoints(&env.dir, vec![target], format!("log-append=sleep({ms})\n"))
        }
        Profile::Operator => {
            let story = rng.random_range(0..3);
            drop(c);
            operator(story, env, leader, rng).await
        }
        Profile::DiskFull => {
            let left = disks::draw_left(rng);
            drop(c);
            match disks::fill(&env.dir, target, left).await {
                Ok(free) => {
                    let seen = refusal(env, target, leader == Some(target), free).await;
                    Applied::Filled {
                        id: target,
                        free,
                        seen,
                    }
                }
                Err(e) => {
                    // A partial filler is still space taken: give it back.
                    let _ = disks::unfill(&env.dir, target);
                    Applied::Skipped(e)
                }
            }
        }
        Profile::None | Profile::Compound | Profile::Mixed => Applied::Skipped("no fault".into()),
    }
}

/// After node `target`'s disk was filled below its reserve: if it led,
/// whether it refuses enqueues by name within the time a node takes to
/// notice (a leader still leading that takes them is a trouble). Only a
/// leader reads its disk; a follower below the reserve still appends what
/// the leader sends, and forwards enqueues to it.
async fn refusal(env: &mut Env<'_>, target: u64, led: bool, free: u64) -> String {
    if !led {
        return "a follower".into();
    }
    let channel = &env.channels[(target - 1) as usize];
    let (ms, answer) = disks::probe_until(channel, &Probe::Refused).await;
    match answer {
        Probe::Refused => format!("the leader: enqueues refused by name after {ms} ms"),
        Probe::Taken if still_leads(env, target).await => {
            env.troubles.push(format!(
                "node {target} led with {free} bytes free, below limits.disk_free_bytes_min, \
                 and still took enqueues {ms} ms later"
            ));
            format!("the leader: enqueues NOT refused after {ms} ms")
        }
        other => format!("the leader: no refusal seen in {ms} ms, leadership moved or {other:?}"),
    }
}

/// Whether node `id` says it leads.
async fn still_leads(env: &Env<'_>, id: u64) -> bool {
    let c = env.cluster.lock().await;
    let status = tokio::time::timeout(Duration::from_millis(LEADS_CALL_MS_MAX), c.status(id)).await;
    matches!(status, Ok(Ok(s)) if s.leader_id == Some(id))
}

fn failpoints(dir: &Path, targets: Vec<u64>, text: String) -> Applied {
    for id in &targets {
        if let Err(e) = set_failpoints(dir, *id, &text) {
            return Applied::Skipped(e.0);
        }
    }
    Applied::Failpoints(targets, text.trim().to_string())
}

fn shuffle(ids: &mut [u64], rng: &mut StdRng) {
    for i in (1..ids.len()).rev() {
        ids.swap(i, rng.random_range(0..=i));
    }
}

/// Removes follower `target` through a random node; a removed node is
/// stopped and forgets its data, as an operator retiring it would, and
/// comes back empty when undone.
async fn remove(c: &mut Cluster, channels: &[Channel], target: u64, rng: &mut StdRng) -> Applied {
    let channel = channels[rng.random_range(0..channels.len())].clone();
    let removed = tokio::time::timeout(
        Duration::from_millis(MEMBERSHIP_CALL_MS_MAX),
        pb::cluster_client::ClusterClient::new(channel).remove(pb::RemoveRequest { id: target }),
    )
    .await;
    match removed {
        Ok(Ok(_)) => {
            let _ = c.stop(target);
            let _ = c.wipe(target);
            Applied::Removed(target)
        }
        Ok(Err(s)) => Applied::Skipped(format!("remove node {target}: {}", s.message())),
        Err(_) => Applied::Skipped(format!("remove node {target}: timed out")),
    }
}

/// What a person does in an incident, from the README, each on a cluster
/// where some members lag. `story`:
///
/// 0. **Bootstrap re-run through a wiped member.** A majority-minus-one of
///    followers is paused (they lag); after a while one other follower
///    loses its data and every remaining member (the leader among them)
///    is killed. The operator restarts the empty one and runs bootstrap
///    again through it (as `scripts/cluster up` does on every `up`, and an
///    embedded node's `bootstrap(..)` at every start: both are
///    `bootstrap::form`), then the lagging members return.
/// 1. **A wiped member restarted in the middle of catching up.** As 0, but
///    the empty member is started while the leader still runs, on a slow
///    disk (each log append delayed 300 ms), killed again 0.8-2 s later
///    (with a vote and part of the log), and restarted after the leader
///    is killed.
/// 2. **A wiped member removed and joined back.** One follower loses its
///    data and restarts empty; the operator removes it, and joins it back
///    when the step ends.
///
/// In 0 and 1 the members left running are the lagging ones and the one
/// without its data: no leader may appear until a member with the data
/// returns (when the step is undone), or acknowledged jobs are lost.
async fn operator(story: u32, env: &mut Env<'_>, leader: Option<u64>, rng: &mut StdRng) -> Applied {
    let ids = env.ids.clone();
    let Some(leader) = leader else {
        return Applied::Skipped("operator: no leader".into());
    };
    let mut followers: Vec<u64> = ids.iter().copied().filter(|i| *i != leader).collect();
    shuffle(&mut followers, rng);
    if story == 2 {
        let target = followers[0];
        let mut c = env.cluster.lock().await;
        let _ = c.wipe(target);
        if let Err(e) = c.spawn(target) {
            return Applied::Skipped(e.0);
        }
        return match remove(&mut c, env.channels, target, rng).await {
            Applied::Removed(id) => Applied::Story {
                label: format!("node {id} wiped, restarted, removed"),
                killed: Vec::new(),
                removed: Some(id),
            },
            other => other,
        };
    }
    let majority = ids.len() / 2 + 1;
    if followers.len() < majority {
        return Applied::Skipped("operator: too few members for the story".into());
    }
    let lagging: Vec<u64> = followers[..majority - 1].to_vec();
    let wiped = followers[majority - 1];
    let rest: Vec<u64> = followers[majority..]
        .iter()
        .copied()
        .chain([leader])
        .collect();
    {
        let mut c = env.cluster.lock().await;
        for id in &lagging {
            let _ = c.pause(*id);
        }
    }
    tokio::time::sleep(Duration::from_millis(STORY_LAG_MS)).await;
    let mut c = env.cluster.lock().await;
    let _ = c.wipe(wiped);
    let label = if story == 0 {
        for id in &rest {
            c.kill(*id);
        }
        let _ = c.spawn(wiped);
        let members: Vec<pb::JoinRequest> = ids.iter().map(|id| c.addr(*id).member()).collect();
        let answer = match c.channel(wiped).await {
            Ok(channel) => tokio::time::timeout(
                Duration::from_millis(STORY_BOOTSTRAP_MS_MAX),
                pb::cluster_client::ClusterClient::new(channel).bootstrap(pb::BootstrapRequest {
                    members,
                    this_node_only: false,
                }),
            )
            .await
            .map_or_else(
                |_| "timed out".to_string(),
                |r| r.map_or_else(|s| format!("{:?}", s.code()), |_| "formed".into()),
            ),
            Err(e) => e.0,
        };
        format!(
            "nodes {lagging:?} lagging, node {wiped} wiped, nodes {rest:?} killed, \
             bootstrap re-run through node {wiped}: {answer}"
        )
    } else {
        // Its disk is slow while it catches up, so that it is stopped with
        // a vote and part of the log, not all of it.
        let _ = set_failpoints(&env.dir, wiped, STORY_SLOW_APPEND);
        let _ = c.spawn(wiped);
        drop(c);
        tokio::time::sleep(Duration::from_millis(rng.random_range(800..2_000))).await;
        c = env.cluster.lock().await;
        c.kill(wiped);
        let _ = set_failpoints(&env.dir, wiped, "");
        for id in &rest {
            c.kill(*id);
        }
        let _ = c.spawn(wiped);
        format!(
            "nodes {lagging:?} lagging, node {wiped} wiped and restarted mid-catch-up, \
             nodes {rest:?} killed"
        )
    };
    for id in &lagging {
        let _ = c.resume(*id);
    }
    Applied::Story {
        label,
        killed: rest,
        removed: None,
    }
}

async fn undo_fault(applied: &Applied, env: &mut Env<'_>) -> Result<(), String> {
    let mut c = env.cluster.lock().await;
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
            env.partitions.heal();
            Ok(())
        }
        Applied::Removed(id) => {
            c.spawn(*id).map_err(|e| e.0)?;
            rejoin(&c, *id, env.channels).await
        }
        Applied::Clocks(set) => {
            for (id, _) in set {
                set_clock(&env.dir, *id, "+0").map_err(|e| e.0)?;
            }
            Ok(())
        }
        Applied::Failpoints(ids, _) => {
            for id in ids {
                set_failpoints(&env.dir, *id, "").map_err(|e| e.0)?;
            }
            Ok(())
        }
        Applied::Filled { id, .. } => {
            disks::unfill(&env.dir, *id)?;
            drop(c);
            // Writes resume by themselves: through the node, whichever
            // leads, an enqueue passes the disk check again in time. (No
            // answer at all, under a fault still in place, is no verdict.)
            let channel = &env.channels[(*id - 1) as usize];
            let (ms, answer) = disks::probe_until(channel, &Probe::Taken).await;
            if answer == Probe::Refused {
                let trouble = format!(
                    "node {id} still refused enqueues for disk space {ms} ms after its disk had \
                     space again"
                );
                env.troubles.push(trouble.clone());
                return Err(trouble);
            }
            Ok(())
        }
        Applied::Story {
            killed, removed, ..
        } => {
            for id in killed {
                c.spawn(*id).map_err(|e| e.0)?;
            }
            if let Some(id) = removed {
                c.spawn(*id).map_err(|e| e.0)?;
                rejoin(&c, *id, env.channels).await?;
            }
            Ok(())
        }
        Applied::Skipped(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_compound_step_draws_two_or_three_faults_at_most_one_taking_data_away() {
        let amnesic = |p: &Profile| {
            matches!(
                p,
                Profile::Wipe | Profile::WipeLeader | Profile::Membership | Profile::Operator
            )
        };
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..2_000 {
            let kinds = compound(&mut StdRng::seed_from_u64(seed));
            assert!((2..=3).contains(&kinds.len()), "{kinds:?}");
            assert!(
                kinds.iter().filter(|p| amnesic(p)).count() <= 1,
                "{kinds:?}"
            );
            for (i, p) in kinds.iter().enumerate() {
                assert!(!kinds[..i].contains(p), "a fault twice: {kinds:?}");
                assert!(Profile::SINGLE.contains(p), "{kinds:?}");
                seen.insert(p.name());
            }
        }
        assert_eq!(
            seen.len(),
            Profile::SINGLE.len(),
            "every single fault is drawn"
        );
    }

    #[test]
    fn the_same_seed_draws_the_same_compound_steps() {
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..20).map(|_| compound(&mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
    }
}
