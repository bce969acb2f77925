//! `lockstep.v1.Admin`: queues, groups and dead letters, as an operator
//! manages them.

use std::time::Duration;

use lockstep_core::{self as core, Command, JobBlob, PurgeSelector, Reply};
use lockstep_types::forward::{Read, ReadReply};
use tonic::{Request, Response, Status};

use super::{wrong_reply, Services};
use crate::auth::{Caller, Permission};
use crate::convert::{self, outcome_name, queue_to_pb};
use crate::pb;

#[tonic::async_trait]
impl pb::admin_server::Admin for Services {
    async fn create_subscription(
        &self,
        request: Request<pb::CreateSubscriptionRequest>,
    ) -> Result<Response<pb::CreateSubscriptionResponse>, Status> {
        let (metadata, _, r) = request.into_parts();
        self.auth
            .authorize(&metadata, Permission::Admin, &r.queue)?;
        let command = Command::CreateSubscription {
            queue: r.queue,
            name: r.name,
        };
        match self.write_in(r.session, command).await?.0 {
            Reply::SubscriptionCreated { created } => {
                Ok(Response::new(pb::CreateSubscriptionResponse { created }))
            }
            other => Err(wrong_reply(other)),
        }
    }

    async fn delete_subscription(
        &self,
        request: Request<pb::DeleteSubscriptionRequest>,
    ) -> Result<Response<pb::DeleteSubscriptionResponse>, Status> {
        let (metadata, _, r) = request.into_parts();
        self.auth
            .authorize(&metadata, Permission::Admin, &r.queue)?;
        let command = Command::DeleteSubscription {
            queue: r.queue,
            name: r.name,
        };
        match self.write_in(r.session, command).await?.0 {
            Reply::SubscriptionDeleted => Ok(Response::new(pb::DeleteSubscriptionResponse {})),
            other => Err(wrong_reply(other)),
        }
    }

    async fn list_subscriptions(
        &self,
        request: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        let (metadata, _, r) = request.into_parts();
        self.auth.authorize_read(&metadata, &r.queue)?;
        match self
            .read(Read::Subscriptions { queue: r.queue }, r.read)
            .await?
        {
            ReadReply::Subscriptions(subs) => Ok(Response::new(pb::ListSubscriptionsResponse {
                subscriptions: subs
                    .into_iter()
                    .map(|sub| pb::SubscriptionInfo {
                        name: sub.name,
                        stats: Some(convert::stats_to_pb(&sub.stats)),
                    })
                    .collect(),
            })),
            _ => Err(Status::internal("unexpected read reply")),
        }
    }

    async fn create_queue(
        &self,
        request: Request<pb::CreateQueueRequest>,
    ) -> Result<Response<pb::CreateQueueResponse>, Status> {
        let (metadata, _, r) = request.into_parts();
        self.auth.authorize(&metadata, Permission::Admin, &r.name)?;
        let config = convert::queue_config(r.config)?;
        match self
            .write_in(
                r.session,
                Command::CreateQueue {
                    name: r.name,
                    config,
                },
            )
            .await?
            .0
        {
            Reply::QueueCreated { created, .. } => {
                Ok(Response::new(pb::CreateQueueResponse { created }))
            }
            other => Err(wrong_reply(other)),
        }
    }

    async fn update_queue(
        &self,
        request: Request<pb::UpdateQueueRequest>,
    ) -> Result<Response<pb::UpdateQueueResponse>, Status> {
        let (metadata, _, r) = request.into_parts();
        self.auth.authorize(&metadata, Permission::Admin, &r.name)?;
        let config = convert::queue_config(r.config)?;
        match self
            .write_in(
                r.session,
                Command::UpdateQueue {
                    name: r.name,
                    config,
                },
            )
            .await?
            .0
        {
            Reply::QueueUpdated => Ok(Response::new(pb::UpdateQueueResponse {})),
            other => Err(wrong_reply(other)),
        }
    }

    async fn delete_queue(
        &self,
        request: Request<pb::DeleteQueueRequest>,
    ) -> Result<Response<pb::DeleteQueueResponse>, Status> {
        let (metadata, _, r) = request.into_parts();
        self.auth.authorize(&metadata, Permission::Admin, &r.name)?;
        match self
            .write_in(r.session, Command::DeleteQueue { name: r.name })
            .await?
            .0
        {
            Reply::QueueDeleted => Ok(Response::new(pb::DeleteQueueResponse {})),
            other => Err(wrong_reply(other)),
        }
    }

    async fn get_queue(
        &self,
        request: Request<pb::GetQueueRequest>,
    ) -> Result<Response<pb::GetQueueResponse>, Status> {
        let (metadata, _, r) = request.into_parts();
        self.auth.authorize_read(&metadata, &r.name)?;
        match self.read(Read::Queue { name: r.name }, r.read).await? {
            ReadReply::Queue(q) => Ok(Response::new(pb::GetQueueResponse {
                queue: Some(queue_to_pb(*q)),
            })),
            _ => Err(Status::internal("unexpected read reply")),
        }
    }

    async fn list_queues(
        &self,
        request: Request<pb::ListQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesResponse>, Status> {
        let (metadata, _, r) = request.into_parts();
        let caller: Caller<'_> = self.auth.authenticate(&metadata)?;
        match self.read(Read::ListQueues, r.read).await? {
            // A token lists only the queues it has some permission on.
            ReadReply::Queues(qs) => Ok(Response::new(pb::ListQueuesResponse {
                queues: qs
                    .into_iter()
                    .filter(|q| caller.sees(&q.name))
                    .map(queue_to_pb)
                    .collect(),
            })),
            _ => Err(Status::internal("unexpected read reply")),
        }
    }

    async fn list_groups(
        &self,
        request: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        let (metadata, _, r) = request.into_parts();
        self.auth.authorize_read(&metadata, &r.queue)?;
        let status = match pb::GroupStatus::try_from(r.status) {
            Ok(pb::GroupStatus::Any) => core::GroupStatus::Any,
            Ok(pb::GroupStatus::Leased) => core::GroupStatus::Leased,
            Ok(pb::GroupStatus::Paused) => core::GroupStatus::Paused,
            Ok(pb::GroupStatus::Waiting) => core::GroupStatus::Waiting,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "invalid argument `status`: unknown value {}",
                    r.status
                )))
            }
        };
        let read = Read::Groups {
            queue: r.queue,
            filter: core::GroupFilter {
                key_prefix: r.key_prefix,
                status,
            },
            after: (!r.after.is_empty()).then_some(r.after),
            limit: r.limit,
            subscription: named(r.subscription),
        };
        match self.read(read, r.read).await? {
            ReadReply::Groups(page) => Ok(Response::new(pb::ListGroupsResponse {
                groups: page.groups.into_iter().map(group_to_pb).collect(),
                next_after: page.next_after.unwrap_or_default(),
            })),
            _ => Err(Status::internal("unexpected read reply")),
        }
    }

    async fn pause_group(
        &self,
        request: Request<pb::PauseGroupRequest>,
    ) -> Result<Response<pb::PauseGroupResponse>, Status> {
        let (metadata, _, r) = request.into_parts();
        self.auth
            .authorize(&metadata, Permission::Admin, &r.queue)?;
        match self
            .write_in(
                r.session,
                super::in_subscription(
                    &r.subscription,
                    Command::PauseGroup {
                        queue: r.queue,
                        group: r.group,
                    },
                ),
            )
            .await?
            .0
        {
            Reply::GroupPaused => Ok(Response::new(pb::PauseGroupResponse {})),
            other => Err(wrong_reply(other)),
        }
    }

    async fn get_group(
        &self,
        request: Request<pb::GetGroupRequest>,
    ) -> Result<Response<pb::GetGroupResponse>, Status> {
        let (metadata, _, r) = request.into_parts();
        self.auth.authorize_read(&metadata, &r.queue)?;
        let read = Read::Group {
            queue: r.queue,
            key: r.group,
            subscription: named(r.subscription),
        };
        match self.read(read, r.read).await? {
            ReadReply::Group(g) => Ok(Response::new(pb::GetGroupResponse {
                group: Some(group_to_pb(g)),
            })),
            _ => Err(Status::internal("unexpected read reply")),
        }
    }

    async fn skip_group_head(
        &self,
        request: Request<pb::SkipGroupHeadRequest>,
    ) -> Result<Response<pb::SkipGroupHeadResponse>, Status> {
        let (metadata, _, r) = request.into_parts();
        self.auth
            .authorize(&metadata, Permission::Admin, &r.queue)?;
        let command = super::in_subscription(
            &r.subscription,
            Command::SkipHead {
                queue: r.queue,
                group: r.group,
                reason: r.reason,
            },
        );
        match self.write_in(r.session, command).await?.0 {
            Reply::Skipped { offset } => Ok(Response::new(pb::SkipGroupHeadResponse { offset })),
            other => Err(wrong_reply(other)),
        }
    }

    async fn drain_group(
        &self,
        request: Request<pb::DrainGroupRequest>,
    ) -> Result<Response<pb::DrainGroupResponse>, Status> {
        let (metadata, _, r) = request.into_parts();
        self.auth
            .authorize(&metadata, Permission::Admin, &r.queue)?;
        let pause = super::in_subscription(
            &r.subscription,
            Command::PauseGroup {
                queue: r.queue.clone(),
                group: r.group.clone(),
            },
        );
        match self.write(pause).await?.0 {
            Reply::GroupPaused => {}
            other => return Err(wrong_reply(other)),
        }
        // Paused: no new head goes out. Wait for the lease in flight: the
        // answer is a linearizable read, taken when this node's own state
        // shows the lease gone (it applies the ack, nack or expiry that
        // ends it) or when the wait runs out, as a fetch's long poll looks
        // at the local state before it proposes again.
        let wait_ms = r.wait_ms.min(self.node.config.limits.fetch_wait_ms_max);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
        let mut applied = self.node.applied_watch();
        let read = || Read::Group {
            queue: r.queue.clone(),
            key: r.group.clone(),
            subscription: named(r.subscription.clone()),
        };
        loop {
            let group = match self.read(read(), None).await? {
                ReadReply::Group(g) => g,
                _ => return Err(Status::internal("unexpected read reply")),
            };
            let drained = group.lease_holder.is_none();
            if drained || tokio::time::Instant::now() >= deadline {
                return Ok(Response::new(pb::DrainGroupResponse {
                    drained,
                    group: Some(group_to_pb(group)),
                }));
            }
            loop {
                match tokio::time::timeout_at(deadline, applied.changed()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(Status::unavailable("the node is shutting down")),
                    Err(_) => break,
                }
                let leased = matches!(
                    self.node.read_local(read())?,
                    Ok(ReadReply::Group(g)) if g.lease_holder.is_some()
                );
                if !leased {
                    break;
                }
            }
        }
    }

    async fn top_groups(
        &self,
        request: Request<pb::TopGroupsRequest>,
    ) -> Result<Response<pb::TopGroupsResponse>, Status> {
        let (metadata, _, r) = request.into_parts();
        self.auth.authorize_read(&metadata, &r.queue)?;
        let rank = match pb::GroupRank::try_from(r.by) {
            Ok(pb::GroupRank::Backlog) => core::GroupRank::Backlog,
            Ok(pb::GroupRank::Age) => core::GroupRank::Age,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "invalid argument `by`: unknown value {}",
                    r.by
                )))
            }
        };
        let read = Read::TopGroups {
            queue: r.queue,
            rank,
            limit: r.limit,
            subscription: named(r.subscription),
        };
        match self.read(read, r.read).await? {
            ReadReply::TopGroups(groups) => Ok(Response::new(pb::TopGroupsResponse {
                groups: groups.into_iter().map(group_to_pb).collect(),
            })),
            _ => Err(Status::internal("unexpected read reply")),
        }
    }

    async fn resume_group(
        &self,
        request: Request<pb::ResumeGroupRequest>,
    ) -> Result<Response<pb::ResumeGroupResponse>, Status> {
        let (metadata, _, r) = request.into_parts();
        self.auth
            .authorize(&metadata, Permission::Admin, &r.queue)?;
        match self
            .write_in(
                r.session,
                super::in_subscription(
                    &r.subscription,
                    Command::ResumeGroup {
                        queue: r.queue,
                        group: r.group,
                    },
                ),
            )
            .await?
            .0
        {
            Reply::GroupResumed => Ok(Response::new(pb::ResumeGroupResponse {})),
            other => Err(wrong_reply(other)),
        }
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        let (metadata, _, r) = request.into_parts();
        self.auth.authorize_read(&metadata, &r.queue)?;
        match self
            .read(
                Read::DeadLetters {
                    queue: r.queue,
                    after: r.after,
                    limit: r.limit,
                    subscription: named(r.subscription),
                },
                r.read,
            )
            .await?
        {
            ReadReply::DeadLetters(page, blobs) => Ok(Response::new(pb::ListDeadLettersResponse {
                dead_letters: page
                    .dead_letters
                    .into_iter()
                    .zip(blobs)
                    .map(|(d, blob)| {
                        let blob = blob.unwrap_or(JobBlob {
                            id: String::new(),
                            headers: vec![],
                            payload: vec![],
                        });
                        pb::DeadLetter {
                            offset: d.offset,
                            id: blob.id,
                            group: d.group.unwrap_or_default(),
                            payload: blob.payload,
                            attempts: d.attempts,
                            reason: d.reason,
                            history: d
                                .history
                                .iter()
                                .map(|a| pb::Attempt {
                                    attempt: a.attempt,
                                    fence: a.fence,
                                    at_ms: a.at_ms,
                                    outcome: outcome_name(a.outcome).into(),
                                })
                                .collect(),
                            enqueued_ms: d.enqueued_ms,
                            dead_ms: d.dead_ms,
                        }
                    })
                    .collect(),
                next_after: page.next_after,
            })),
            _ => Err(Status::internal("unexpected read reply")),
        }
    }

    async fn requeue_dead_letter(
        &self,
        request: Request<pb::RequeueDeadLetterRequest>,
    ) -> Result<Response<pb::RequeueDeadLetterResponse>, Status> {
        let (metadata, _, r) = request.into_parts();
        self.auth
            .authorize(&metadata, Permission::Admin, &r.queue)?;
        match self
            .write_in(
                r.session,
                super::in_subscription(
                    &r.subscription,
                    Command::RequeueDeadLetter {
                        queue: r.queue,
                        offset: r.offset,
                    },
                ),
            )
            .await?
            .0
        {
            Reply::Requeued { offset } => {
                Ok(Response::new(pb::RequeueDeadLetterResponse { offset }))
            }
            other => Err(wrong_reply(other)),
        }
    }

    async fn purge_dead_letters(
        &self,
        request: Request<pb::PurgeDeadLettersRequest>,
    ) -> Result<Response<pb::PurgeDeadLettersResponse>, Status> {
        let (metadata, _, r) = request.into_parts();
        self.auth
            .authorize(&metadata, Permission::Admin, &r.queue)?;
        let which = if r.offsets.is_empty() {
            PurgeSelector::All
        } else {
            PurgeSelector::Offsets(r.offsets)
        };
        match self
            .write_in(
                r.session,
                super::in_subscription(
                    &r.subscription,
                    Command::PurgeDeadLetters {
                        queue: r.queue,
                        which,
                    },
                ),
            )
            .await?
            .0
        {
            Reply::Purged { count } => Ok(Response::new(pb::PurgeDeadLettersResponse { count })),
            other => Err(wrong_reply(other)),
        }
    }
}

fn group_to_pb(g: core::GroupInfo) -> pb::GroupInfo {
    pb::GroupInfo {
        key: g.key,
        backlog: g.backlog,
        head_offset: g.head_offset,
        head_age_ms: g.head_age_ms,
        lease_holder: g.lease_holder.unwrap_or_default(),
        attempts: g.attempts,
        paused: g.paused,
        parked_reason: g.parked_reason.unwrap_or_default(),
        lease_deadline_ms: g.lease_deadline_ms.unwrap_or_default(),
    }
}

/// A request's subscription: `None` for the default one (empty).
fn named(subscription: String) -> Option<String> {
    (!subscription.is_empty()).then_some(subscription)
}
