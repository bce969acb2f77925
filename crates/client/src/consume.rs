//! [`Consumer`]: one `Queue.Consume` stream (SPEC 2.3), opened by
//! [`Client::consume`](crate::Client::consume).
//!
//! The node pushes deliveries while the consumer holds credits: each
//! delivery takes one, and the consumer grants one back per job it
//! finishes, so credits bound its jobs in flight. Acks, nacks, extends,
//! releases and dead-letters may ride the stream too ([`Consumer::call`]);
//! each is answered in a [`pb::ConsumeResponse`] carrying the call's tag.
//!
//! [`Consumer::close`] is the clean close: the node releases every job
//! delivered on the stream and still leased under its delivery's fence.
//! A dropped or broken stream releases nothing; its leases expire.

use std::time::Duration;

use lockstep_proto as pb;
use pb::consume_request::Call;
use tokio::sync::mpsc;
use tonic::Code;

use crate::error::Error;

/// Messages queued toward the node on one stream before a send waits.
pub const CONSUME_SEND_BUFFER: usize = 64;
/// Longest [`Consumer::close`] waits for the node to end the stream after
/// the consumer's side is closed (the node's releases run meanwhile).
pub const CONSUME_CLOSE_WAIT: Duration = Duration::from_secs(15);

/// An open consume stream. See the module docs.
#[derive(Debug)]
pub struct Consumer {
    requests: mpsc::Sender<pb::ConsumeRequest>,
    responses: tonic::Streaming<pb::ConsumeResponse>,
    endpoint: String,
    queue: String,
    next_tag: u64,
}

impl Consumer {
    pub(crate) fn new(
        requests: mpsc::Sender<pb::ConsumeRequest>,
        responses: tonic::Streaming<pb::ConsumeResponse>,
        endpoint: String,
        queue: String,
    ) -> Consumer {
        Consumer {
            requests,
            responses,
            endpoint,
            queue,
            next_tag: 1,
        }
    }

    /// The node the stream runs on.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The queue the stream consumes.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Grants the node `credits` more deliveries.
    pub async fn grant(&mut self, credits: u32) -> Result<(), Error> {
        self.send(pb::ConsumeRequest {
            credits,
            tag: 0,
            call: None,
        })
        .await
    }

    /// Sends a call on the stream, with `credits` granted along; returns
    /// the tag its answer will carry.
    pub async fn call(&mut self, credits: u32, call: Call) -> Result<u64, Error> {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.send(pb::ConsumeRequest {
            credits,
            tag,
            call: Some(call),
        })
        .await?;
        Ok(tag)
    }

    async fn send(&mut self, request: pb::ConsumeRequest) -> Result<(), Error> {
        self.requests
            .send(request)
            .await
            .map_err(|_| Error::Transport {
                code: Code::Unavailable,
                message: "the consume stream has ended".into(),
                endpoint: self.endpoint.clone(),
            })
    }

    /// The next message from the node: pushed deliveries (tag 0), or the
    /// answer to a call. `None` when the node ended the stream cleanly (after
    /// a close); an error when it broke or the node ended it with a status.
    pub async fn next(&mut self) -> Result<Option<pb::ConsumeResponse>, Error> {
        self.responses
            .message()
            .await
            .map_err(|status| Error::from_status(status, &self.endpoint))
    }

    /// Closes the stream cleanly: no more deliveries, and the node releases
    /// what the stream holds. Returns the deliveries and answers that were
    /// still on their way (their jobs, if any, were released too unless
    /// finished). Bounded by [`CONSUME_CLOSE_WAIT`].
    pub async fn close(self) -> Result<Vec<pb::ConsumeResponse>, Error> {
        let Consumer {
            requests,
            mut responses,
            endpoint,
            ..
        } = self;
        drop(requests);
        let mut rest = Vec::new();
        let drain = async {
            while let Some(message) = responses.message().await? {
                rest.push(message);
            }
            Ok::<(), tonic::Status>(())
        };
        match tokio::time::timeout(CONSUME_CLOSE_WAIT, drain).await {
            Ok(Ok(())) => Ok(rest),
            Ok(Err(status)) => Err(Error::from_status(status, &endpoint)),
            Err(_) => Err(Error::Transport {
                code: Code::DeadlineExceeded,
                message: format!(
                    "the node did not end the consume stream within {CONSUME_CLOSE_WAIT:?} \
                     (CONSUME_CLOSE_WAIT); its leases will expire"
                ),
                endpoint,
            }),
        }
    }
}
