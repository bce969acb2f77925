//! The public gRPC services `lockstep.v1.Queue`, `Admin` and `Cluster`,
//! one file each.
//!
//! Each call becomes a core [`Command`] or a [`Read`], runs through
//! [`Node::execute`] (locally on the leader, or forwarded to it), and its
//! answer is turned back into protobuf. Core errors keep their gRPC code.

mod admin;
mod cluster;
mod consume;
mod queue;

use std::sync::Arc;

use lockstep_core::{Command, JobBlob, Reply};
use lockstep_types::forward::{Read, ReadReply, Request, Response};
use tonic::Status;

use crate::auth::Auth;
use crate::convert;
use crate::node::Node;
use crate::pb;

/// The three public services of one node, answering from its [`Node`].
#[derive(Clone, Debug)]
pub struct Services {
    pub(crate) node: Arc<Node>,
    /// Checked first in every call, before the request becomes a command.
    auth: Arc<Auth>,
}

impl Services {
    /// The services of `node`, with no auth and plaintext to other nodes.
    pub fn new(node: Arc<Node>) -> Services {
        Services {
            node,
            auth: Arc::new(Auth::off()),
        }
    }

    /// The same services, checking callers with `auth`.
    pub fn with_auth(self, auth: Arc<Auth>) -> Services {
        Services { auth, ..self }
    }

    /// A server-made job id: this node's id and 128 random bits from the
    /// operating system's generator (`lockstep_client::new_job_id`, the
    /// client's own ids). It reads no clock: the ids of a node restarted
    /// with its wall clock stepped back, or frozen, never repeat earlier
    /// ones, which would have made a new job a DUPLICATE or an ID_CONFLICT
    /// of an old one. The pure core never makes ids; the node does, before
    /// it proposes (SPEC 2.1).
    pub(super) fn make_id(&self) -> String {
        format!(
            "lockstep-{}-{}",
            self.node.id,
            lockstep_client::new_job_id()
        )
    }

    /// Runs a write without a session (opening one).
    pub(super) async fn write(
        &self,
        command: Command,
    ) -> Result<(Reply, Vec<Option<JobBlob>>), Status> {
        self.write_in(None, command).await
    }

    /// Runs a write as request `session` of a client session when the
    /// client sent one: applied at most once, however often it is retried.
    pub(super) async fn write_in(
        &self,
        session: Option<pb::Session>,
        command: Command,
    ) -> Result<(Reply, Vec<Option<JobBlob>>), Status> {
        self.write_round(session, 0, command).await
    }

    /// [`Services::write_in`] as round `round` of a long poll, which tries
    /// the request again under the same number (see
    /// `lockstep_core::TryNumber`).
    pub(super) async fn write_round(
        &self,
        session: Option<pb::Session>,
        round: u32,
        command: Command,
    ) -> Result<(Reply, Vec<Option<JobBlob>>), Status> {
        let command = match session {
            Some(s) => Command::Sequenced {
                sequence: lockstep_core::Sequence {
                    session: s.id,
                    seq: s.seq,
                    floor: s.floor,
                    try_number: lockstep_core::TryNumber {
                        client: s.attempt,
                        round,
                        forward: 0,
                    },
                },
                command: Box::new(command),
            },
            None => command,
        };
        match self.node.execute(Request::Write(command)).await? {
            Response::Write {
                reply: Ok(reply),
                blobs,
            } => Ok((reply, blobs)),
            Response::Write { reply: Err(e), .. } => Err(convert::status(&e)),
            other => Err(unexpected(other)),
        }
    }

    pub(super) async fn read(
        &self,
        read: Read,
        options: Option<pb::ReadOptions>,
    ) -> Result<ReadReply, Status> {
        let result = if options.is_some_and(|o| o.stale) {
            self.node.read_local(read)?
        } else {
            match self.node.execute(Request::Read(read)).await? {
                Response::Read(result) => result,
                other => return Err(unexpected(other)),
            }
        };
        result.map_err(|e| convert::status(&e))
    }
}

pub(super) fn unexpected(response: Response) -> Status {
    match response {
        Response::Unavailable(message) => {
            Status::unavailable(format!("not applied: {message}; retry"))
        }
        Response::MayHaveApplied(message) => Status::aborted(format!(
            "outcome unknown, the request may have applied: {message}; retry with the same \
             session and seq to learn it"
        )),
        other => Status::internal(format!("unexpected answer {other:?}")),
    }
}

pub(super) fn wrong_reply(reply: Reply) -> Status {
    Status::internal(format!("unexpected reply {reply:?}"))
}

/// `command` on the named subscription of its queue, or on the default
/// one when `subscription` is empty.
pub(super) fn in_subscription(subscription: &str, command: Command) -> Command {
    if subscription.is_empty() {
        command
    } else {
        Command::InSubscription {
            subscription: subscription.to_string(),
            command: Box::new(command),
        }
    }
}

/// Ready jobs of the queue's default subscription, or of the named one, in
/// this node's applied state: whether a waiting fetch should try again.
pub(super) fn ready_in(
    state: &lockstep_core::State,
    queue: &str,
    subscription: &str,
) -> lockstep_core::Result<u64> {
    if subscription.is_empty() {
        state.stats(queue).map(|st| st.ready)
    } else {
        state
            .subscription_stats(queue, subscription)
            .map(|st| st.ready)
    }
}
