//! Membership repair: joining a node back as a voter after a membership
//! fault removed it, during the run or once it has ended.

use std::time::{Duration, Instant};

use lockstep_harness::Cluster;
use lockstep_proto as pb;
use tonic::transport::Channel;

/// Longest a membership call of the fault schedule may take.
pub(super) const MEMBERSHIP_CALL_MS_MAX: u64 = 30_000;

/// Rejoins every node of `ids` that is not a voter (after a membership
/// fault the run ended in the middle of).
pub(super) async fn ensure_members(
    c: &Cluster,
    leader: u64,
    ids: &[u64],
    channels: &[Channel],
) -> Result<(), String> {
    let status = c.status(leader).await.map_err(|e| e.0)?;
    for id in ids {
        if !status
            .members
            .iter()
            .any(|m| m.id == *id && m.role != "learner")
        {
            rejoin(c, *id, channels).await?;
        }
    }
    Ok(())
}

/// Joins node `id` (running, empty) back as a voter, retrying through any
/// node for up to `MEMBERSHIP_CALL_MS_MAX`.
pub(super) async fn rejoin(c: &Cluster, id: u64, channels: &[Channel]) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_millis(MEMBERSHIP_CALL_MS_MAX);
    let member = c.addr(id).member();
    let mut last = String::new();
    // Not through the node being joined (channel `id - 1`): it knows no
    // leader yet.
    let through: Vec<&Channel> = channels
        .iter()
        .enumerate()
        .filter(|(i, _)| channels.len() == 1 || *i as u64 + 1 != id)
        .map(|(_, channel)| channel)
        .collect();
    for channel in through.iter().cycle() {
        if Instant::now() >= deadline {
            break;
        }
        let joined = tokio::time::timeout(
            Duration::from_millis(MEMBERSHIP_CALL_MS_MAX),
            pb::cluster_client::ClusterClient::new((*channel).clone()).join(member.clone()),
        )
        .await;
        match joined {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(s)) => last = s.message().to_string(),
            Err(_) => last = "timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!("join of node {id} failed: {last}"))
}
