//! `lockstep.v1.Queue`: enqueue, fetch, ack, nack, extend, release and
//! dead-letter, the calls producers and workers make.

use std::time::Duration;

use lockstep_core::{AckItem, Chained, Command, Delivery, JobBlob, Reply};
use tonic::{Request, Response, Status};

use super::{wrong_reply, Services};
use crate::auth::Permission;
use crate::convert;
use crate::pb;

/// The `what` label of `lockstep_invariant_violations_total` for a granted
/// delivery whose payload is not in the payload store.
const PAYLOAD_MISSING: &str = "payload_missing";

impl Services {
    /// Joins a fetch's deliveries with their payloads.
    ///
    /// Every granted job's payload is stored by the same batch that stored
    /// the job, and deleted only when the job is finished, so a missing one
    /// is a broken invariant (a bug or damaged storage), never an ordinary
    /// outcome. It is loud: the fetch answers INTERNAL naming the queue,
    /// offset and blob, the node logs an error and counts it in
    /// `lockstep_invariant_violations_total{what="payload_missing"}`. The
    /// other deliveries of the fetch, which the caller will never see, are
    /// released (no attempt counted) rather than left leased; the job whose
    /// payload is missing keeps its lease, so it is not handed out again at
    /// once, and its expiries count attempts until the queue's dead-letter
    /// rule takes it out of the way.
    pub(super) async fn with_payloads(
        &self,
        queue: &str,
        deliveries: Vec<Delivery>,
        blobs: Vec<Option<JobBlob>>,
    ) -> Result<Vec<pb::Delivery>, Status> {
        let missing: Vec<&Delivery> = deliveries
            .iter()
            .zip(&blobs)
            .filter(|(_, blob)| blob.is_none())
            .map(|(d, _)| d)
            .collect();
        // A reply with fewer payloads than deliveries is the same breach.
        let short = deliveries.len() > blobs.len();
        if missing.is_empty() && !short {
            return Ok(deliveries
                .into_iter()
                .zip(blobs)
                .filter_map(|(d, blob)| blob.map(|b| convert::delivery(d, b)))
                .collect());
        }
        let first = missing
            .first()
            .copied()
            .or_else(|| deliveries.get(blobs.len()));
        let (offset, blob, queue_id) = first.map_or((0, 0, 0), |d| (d.offset, d.blob, d.queue_id));
        self.node
            .metrics
            .observe_invariant_violation(PAYLOAD_MISSING);
        tracing::error!(
            queue,
            queue_id,
            offset,
            blob,
            missing = missing.len().max(1),
            "invariant violated: a delivered job's payload is missing from the payload store"
        );
        let broken: Vec<u64> = missing.iter().map(|d| d.offset).collect();
        for d in deliveries
            .iter()
            .zip(&blobs)
            .filter(|(_, b)| b.is_some())
            .map(|(d, _)| d)
        {
            let release = Command::Release {
                queue: queue.to_string(),
                offset: d.offset,
                fence: d.fence,
            };
            if let Err(e) = self.write(release).await {
                tracing::warn!(queue, offset = d.offset, error = %e, "could not release a delivery of a failed fetch; its lease will expire");
            }
        }
        Err(Status::internal(format!(
            "invariant violated: the payload of queue `{queue}` offset {offset} (blob {blob}) \
             is missing from this node's payload store{}; the job keeps its lease until it \
             expires, the fetch's other deliveries were released; \
             see lockstep_invariant_violations_total",
            if broken.len() > 1 {
                format!(
                    " ({} deliveries affected: offsets {broken:?})",
                    broken.len()
                )
            } else {
                String::new()
            }
        )))
    }
}

impl Services {
    /// Makes the ids of jobs sent without one. Under a session an id comes
    /// from the job's place (session, seq, index): a retry through another
    /// node makes the same id, so the first answer, replayed, names the
    /// right ids.
    fn id_maker(&self, session: Option<pb::Session>) -> impl FnMut() -> String + '_ {
        let mut index = 0;
        move || match session {
            Some(s) => {
                index += 1;
                format!("lockstep-s{}-{}-{}", s.id, s.seq, index - 1)
            }
            None => self.make_id(),
        }
    }
}

fn ack_results(offsets: Vec<u64>, results: &[lockstep_core::AckResult]) -> Vec<pb::AckResult> {
    offsets
        .into_iter()
        .zip(results)
        .map(|(o, r)| convert::ack_result(o, r))
        .collect()
}

#[tonic::async_trait]
impl pb::queue_server::Queue for Services {
    async fn open_session(
        &self,
        request: Request<pb::OpenSessionRequest>,
    ) -> Result<Response<pb::OpenSessionResponse>, Status> {
        // Any caller that may write may open a session: it is bookkeeping
        // for its own retries, bounded by the session count.
        let (metadata, _, _) = request.into_parts();
        self.auth.authenticate(&metadata)?;
        match self.write(Command::OpenSession).await?.0 {
            Reply::SessionOpened { session } => {
                Ok(Response::new(pb::OpenSessionResponse { session }))
            }
            other => Err(wrong_reply(other)),
        }
    }

    async fn enqueue(
        &self,
        request: Request<pb::EnqueueRequest>,
    ) -> Result<Response<pb::EnqueueResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        self.auth
            .authorize(&metadata, Permission::Produce, &req.queue)?;
        let mut make_id = self.id_maker(req.session);
        let jobs = req
            .jobs
            .into_iter()
            .enumerate()
            .map(|(i, job)| convert::new_job(job, i, &mut make_id))
            .collect::<Result<Vec<_>, _>>()?;
        let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
        match self
            .write_in(
                req.session,
                Command::Enqueue {
                    queue: req.queue,
                    jobs,
                },
            )
            .await?
            .0
        {
            Reply::Enqueued(results) => Ok(Response::new(pb::EnqueueResponse {
                results: results
                    .into_iter()
                    .zip(ids)
                    .map(|(r, id)| convert::enqueue_result(r, id))
                    .collect(),
            })),
            other => Err(wrong_reply(other)),
        }
    }

    async fn fetch(
        &self,
        request: Request<pb::FetchRequest>,
    ) -> Result<Response<pb::FetchResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        self.auth
            .authorize(&metadata, Permission::Consume, &req.queue)?;
        let wait_ms = req.wait_ms.min(self.node.config.limits.fetch_wait_ms_max);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
        let mut applied = self.node.applied_watch();
        let mut round: u32 = 0;
        loop {
            let command = super::in_subscription(
                &req.subscription,
                Command::Fetch {
                    queue: req.queue.clone(),
                    consumer: req.consumer.clone(),
                    max: req.max,
                    lease_ms: req.lease_ms,
                },
            );
            // Every try of the long poll runs under the one seq: an empty
            // fetch is not kept by the reply cache, so the next try applies.
            // Each round counts up, so a stale try of an earlier round that
            // reaches the log late is refused rather than leasing jobs.
            let (reply, blobs) = self.write_round(req.session, round, command).await?;
            round = round.saturating_add(1);
            let Reply::Fetched(deliveries) = reply else {
                return Err(wrong_reply(reply));
            };
            if !deliveries.is_empty() || tokio::time::Instant::now() >= deadline {
                let deliveries = self.with_payloads(&req.queue, deliveries, blobs).await?;
                return Ok(Response::new(pb::FetchResponse { deliveries }));
            }
            // Long poll: wait for this node to apply something new (an
            // enqueue, an ack that frees a group, a tick), then try again.
            // The local state says whether anything could be ready.
            loop {
                match tokio::time::timeout_at(deadline, applied.changed()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(Status::unavailable("the node is shutting down")),
                    Err(_) => break,
                }
                let ready = self
                    .node
                    .state
                    .read(|s| super::ready_in(s, &req.queue, &req.subscription))
                    .ok();
                if !matches!(ready, Some(Ok(0))) {
                    break;
                }
            }
        }
    }

    async fn ack(
        &self,
        request: Request<pb::AckRequest>,
    ) -> Result<Response<pb::AckResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        self.auth
            .authorize(&metadata, Permission::Consume, &req.queue)?;
        for chained in &req.then {
            self.auth
                .authorize(&metadata, Permission::Produce, &chained.queue)?;
        }
        let items: Vec<AckItem> = req
            .items
            .iter()
            .map(|i| AckItem {
                offset: i.offset,
                fence: i.fence,
            })
            .collect();
        let offsets: Vec<u64> = items.iter().map(|i| i.offset).collect();
        if req.then.is_empty() {
            let command = super::in_subscription(
                &req.subscription,
                Command::Ack {
                    queue: req.queue,
                    items,
                },
            );
            return match self.write_in(req.session, command).await?.0 {
                Reply::Acked(results) => Ok(Response::new(pb::AckResponse {
                    results: ack_results(offsets, &results),
                    then: Vec::new(),
                })),
                other => Err(wrong_reply(other)),
            };
        }
        // Ids made for chained jobs count across every `then` entry, so
        // two entries of one request never make the same id.
        let mut make_id = self.id_maker(req.session);
        let mut then = Vec::with_capacity(req.then.len());
        for chained in req.then {
            let jobs = chained
                .jobs
                .into_iter()
                .enumerate()
                .map(|(i, job)| convert::new_job(job, i, &mut make_id))
                .collect::<Result<Vec<_>, _>>()?;
            then.push(Chained {
                queue: chained.queue,
                jobs,
            });
        }
        let ids: Vec<Vec<String>> = then
            .iter()
            .map(|c| c.jobs.iter().map(|j| j.id.clone()).collect())
            .collect();
        let command = super::in_subscription(
            &req.subscription,
            Command::AckThen {
                queue: req.queue,
                items,
                then,
            },
        );
        match self.write_in(req.session, command).await?.0 {
            Reply::AckedThen { acked, then } => Ok(Response::new(pb::AckResponse {
                results: ack_results(offsets, &acked),
                then: then
                    .into_iter()
                    .zip(ids)
                    .map(|(results, ids)| pb::EnqueueResponse {
                        results: results
                            .into_iter()
                            .zip(ids)
                            .map(|(r, id)| convert::enqueue_result(r, id))
                            .collect(),
                    })
                    .collect(),
            })),
            other => Err(wrong_reply(other)),
        }
    }

    type ConsumeStream = super::consume::ConsumeStream;

    async fn consume(
        &self,
        request: Request<tonic::Streaming<pb::ConsumeRequest>>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
        super::consume::open(self, request).await
    }

    async fn nack(
        &self,
        request: Request<pb::NackRequest>,
    ) -> Result<Response<pb::NackResponse>, Status> {
        let (metadata, _, r) = request.into_parts();
        self.auth
            .authorize(&metadata, Permission::Consume, &r.queue)?;
        let command = super::in_subscription(
            &r.subscription,
            Command::Nack {
                queue: r.queue,
                offset: r.offset,
                fence: r.fence,
                delay_ms: r.delay_ms,
            },
        );
        match self.write_in(r.session, command).await?.0 {
            Reply::Nacked {
                dead,
                not_before_ms,
            } => Ok(Response::new(pb::NackResponse {
                dead,
                not_before_ms,
            })),
            other => Err(wrong_reply(other)),
        }
    }

    async fn extend(
        &self,
        request: Request<pb::ExtendRequest>,
    ) -> Result<Response<pb::ExtendResponse>, Status> {
        let (metadata, _, r) = request.into_parts();
        self.auth
            .authorize(&metadata, Permission::Consume, &r.queue)?;
        let command = super::in_subscription(
            &r.subscription,
            Command::Extend {
                queue: r.queue,
                offset: r.offset,
                fence: r.fence,
                lease_ms: r.lease_ms,
            },
        );
        match self.write_in(r.session, command).await?.0 {
            Reply::Extended { deadline_ms } => Ok(Response::new(pb::ExtendResponse {
                lease_deadline_ms: deadline_ms,
            })),
            other => Err(wrong_reply(other)),
        }
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let (metadata, _, r) = request.into_parts();
        self.auth
            .authorize(&metadata, Permission::Consume, &r.queue)?;
        match self
            .write_in(
                r.session,
                super::in_subscription(
                    &r.subscription,
                    Command::Release {
                        queue: r.queue,
                        offset: r.offset,
                        fence: r.fence,
                    },
                ),
            )
            .await?
            .0
        {
            Reply::Released => Ok(Response::new(pb::ReleaseResponse {})),
            other => Err(wrong_reply(other)),
        }
    }

    async fn dead_letter(
        &self,
        request: Request<pb::DeadLetterRequest>,
    ) -> Result<Response<pb::DeadLetterResponse>, Status> {
        let (metadata, _, r) = request.into_parts();
        self.auth
            .authorize(&metadata, Permission::Consume, &r.queue)?;
        let command = super::in_subscription(
            &r.subscription,
            Command::DeadLetter {
                queue: r.queue,
                offset: r.offset,
                fence: r.fence,
                reason: r.reason,
            },
        );
        match self.write_in(r.session, command).await?.0 {
            Reply::DeadLettered => Ok(Response::new(pb::DeadLetterResponse {})),
            other => Err(wrong_reply(other)),
        }
    }
}
