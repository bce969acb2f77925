//! The wire types of a client request that a follower forwards to the
//! leader over the peer channel, and of the leader's answer.
//!
//! They cross the network as [`lockstep_core::codec`] records (a version
//! byte, then bincode), so both ends must agree on them: they live here, in
//! the one crate both the forwarding node and the leader link.

use lockstep_core::{self as core, Command, JobBlob, Reply};
use serde::{Deserialize, Serialize};

use crate::{NodeId, NodeInfo};

/// What a node executes for a client, locally or forwarded to the leader.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    /// A command for the replicated state machine, proposed through Raft.
    Write(Command),
    /// A linearizable read of the leader's applied state.
    Read(Read),
    /// A membership change; only the leader can propose one.
    Membership(MembershipChange),
    /// What the receiving node holds, answered by that node itself (not
    /// the leader): the first step of forming a cluster.
    Probe,
    /// Initialize the receiving node with the cluster's first membership,
    /// if it has no log and no vote: the second step, sent by the node that
    /// probed the members.
    Initialize {
        /// The first members: id, peer and client addresses.
        members: Vec<(NodeId, NodeInfo)>,
    },
    /// Would the receiving node vote for `candidate` now? Asked before a
    /// campaign, answered by that node itself and changing nothing: the
    /// pre-vote that keeps a node returning from a pause or a partition
    /// from raising the term under a healthy leader (see the node's
    /// `elector`).
    PreVote {
        /// The node that would campaign.
        candidate: NodeId,
        /// The id of its last log entry: a node with a newer log refuses,
        /// as its vote would.
        last_log: Option<crate::LogId>,
    },
}

/// What a node holds, as a probe sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probed {
    /// The index of its last log entry, if it has any.
    pub last_log_index: Option<u64>,
    /// The term of its vote, 0 if it never voted.
    pub vote_term: u64,
    /// Whether its vote guard is up.
    pub guarded: bool,
}

impl Probed {
    /// Whether the node never took part in a cluster: no log, no vote.
    pub fn is_empty(&self) -> bool {
        self.last_log_index.is_none() && self.vote_term == 0
    }
}

/// A change of the voting members, run by the leader.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Add as a learner, wait for it to catch up, then promote to voter.
    Join {
        /// The new member's id.
        id: NodeId,
        /// Where its peers and clients reach it.
        info: NodeInfo,
    },
    /// Take a voter out of the membership.
    Remove {
        /// The member to remove.
        id: NodeId,
    },
}

/// A gRPC status that crosses the peer channel.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WireStatus {
    /// The gRPC status code, as its number.
    pub code: i32,
    /// What went wrong, for a person.
    pub message: String,
}

/// A read of the applied state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Read {
    /// One queue's configuration and stats.
    Queue {
        /// The queue's name.
        name: String,
    },
    /// Every queue.
    ListQueues,
    /// One page of a queue's groups.
    Groups {
        /// The queue's name.
        queue: String,
        /// Which groups to list.
        filter: core::GroupFilter,
        /// The last group key of the previous page.
        after: Option<String>,
        /// The most groups on the page.
        limit: u32,
        /// The named subscription; `None`: the default one.
        subscription: Option<String>,
    },
    /// The commit index the leader confirms with a majority of the
    /// membership (its read index), for a guarded node's catch-up.
    ConfirmedCommit,
    /// One page of a queue's dead letters.
    DeadLetters {
        /// The queue's name.
        queue: String,
        /// The last offset of the previous page.
        after: Option<u64>,
        /// The most dead letters on the page.
        limit: u32,
        /// The named subscription; `None`: the default one.
        subscription: Option<String>,
    },
    /// One group of a queue.
    Group {
        /// The queue's name.
        queue: String,
        /// The group's key.
        key: String,
        /// The named subscription; `None`: the default one.
        subscription: Option<String>,
    },
    /// The top groups of a queue by backlog or by age.
    TopGroups {
        /// The queue's name.
        queue: String,
        /// How groups are ranked.
        rank: core::GroupRank,
        /// The most groups answered.
        limit: u32,
        /// The named subscription; `None`: the default one.
        subscription: Option<String>,
    },
    /// A queue's named subscriptions, each with its counts.
    Subscriptions {
        /// The queue's name.
        queue: String,
    },
}

impl Request {
    /// The queue a request addresses, if any (for the request's span).
    pub fn queue(&self) -> Option<&str> {
        match self {
            Request::Write(command) => command.queue(),
            Request::Read(read) => read.queue(),
            Request::Membership(_)
            | Request::Probe
            | Request::Initialize { .. }
            | Request::PreVote { .. } => None,
        }
    }
}

impl Request {
    /// Whether sending this request again after an unknown outcome can
    /// never apply it twice: reads and membership changes; a sequenced
    /// write (the reply cache answers a repeat); an enqueue, whose ids are
    /// fixed before the first send (a repeat is answered `DUPLICATE`); and
    /// opening a session (a repeat opens one more, which expires unused).
    pub fn retry_safe(&self) -> bool {
        match self {
            Request::Write(command) => matches!(
                command,
                Command::Sequenced { .. } | Command::Enqueue { .. } | Command::OpenSession
            ),
            Request::Read(_)
            | Request::Membership(_)
            | Request::Probe
            | Request::Initialize { .. }
            | Request::PreVote { .. } => true,
        }
    }

    /// Whether a forward of this request may be given up while it waits
    /// for its answer, and sent to the next leader: a request safe to send
    /// again ([`Request::retry_safe`]) whose given-up try, if it applied
    /// unseen, leaves nothing its caller needed to see. A read changes
    /// nothing, and a job enqueued by the given-up try is the one the
    /// retry finds by its id (a sequenced enqueue: in the reply cache).
    /// Not a fetch: a given-up try may lease jobs whose lease runs out
    /// before its retry is answered, so an attempt is spent that no one
    /// saw (an orphaned lease; `tests/chaos/README.md`).
    pub fn abandon_safe(&self) -> bool {
        match self {
            Request::Write(Command::Enqueue { .. }) | Request::Read(_) => true,
            Request::Write(Command::Sequenced { command, .. }) => {
                matches!(**command, Command::Enqueue { .. })
            }
            _ => false,
        }
    }

    /// Marks a sequenced write as forward `forward` of its round, so a
    /// later try of it compares newer than every earlier one (see
    /// `lockstep_core::TryNumber`), and says whether it was one; any other
    /// request is left as it is.
    pub fn set_forward_try(&mut self, forward: u32) -> bool {
        match self {
            Request::Write(command) => command.set_forward_try(forward),
            _ => false,
        }
    }
}

impl Read {
    /// The queue a read addresses, if any.
    pub fn queue(&self) -> Option<&str> {
        match self {
            Read::Queue { name } => Some(name),
            Read::ListQueues | Read::ConfirmedCommit => None,
            Read::Groups { queue, .. }
            | Read::DeadLetters { queue, .. }
            | Read::Group { queue, .. }
            | Read::TopGroups { queue, .. }
            | Read::Subscriptions { queue } => Some(queue),
        }
    }
}

/// The answer to a [`Read`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ReadReply {
    /// One queue (boxed: its configuration and stats are the largest
    /// answer, and every `Response` would otherwise be that big).
    Queue(Box<core::QueueInfo>),
    /// Every queue.
    Queues(Vec<core::QueueInfo>),
    /// One page of groups.
    Groups(core::GroupPage),
    /// The leader's confirmed commit index (0: none yet).
    ConfirmedCommit(u64),
    /// The page, and the stored job of each dead letter, in order.
    DeadLetters(core::DeadLetterPage, Vec<Option<JobBlob>>),
    /// One group.
    Group(core::GroupInfo),
    /// Groups, ranked.
    TopGroups(Vec<core::GroupInfo>),
    /// A queue's named subscriptions.
    Subscriptions(Vec<core::SubscriptionInfo>),
}

/// The answer to a [`Request`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Response {
    /// A write's answer and, for a fetch, each delivery's stored job.
    Write {
        /// What the state machine answered.
        reply: Result<Reply, core::Error>,
        /// For a fetch, each delivery's stored job, in order.
        blobs: Vec<Option<JobBlob>>,
    },
    /// A read's answer.
    Read(Result<ReadReply, core::Error>),
    /// A membership change's outcome.
    Membership(Result<(), WireStatus>),
    /// What the probed node holds.
    Probe(Probed),
    /// Whether an `Initialize` initialized the node (false: it already had
    /// a log or a vote, and nothing changed).
    Initialized(bool),
    /// The receiving node is not the leader.
    NotLeader {
        /// The leader this node knows of, if any.
        leader: Option<(NodeId, NodeInfo)>,
    },
    /// The request certainly did not apply (no leader took it); the
    /// message says why. Safe to retry as is.
    Unavailable(String),
    /// The request may have applied: it reached Raft, and no answer came
    /// (the leader stepped down or crashed mid-write, a deadline passed, a
    /// forward broke after sending). Only a sequenced request learns its
    /// outcome by retrying (see `lockstep_core::Sequence`).
    MayHaveApplied(String),
    /// Whether the node would vote for a `PreVote`'s candidate now.
    PreVote(bool),
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockstep_core::codec;

    /// Forwarded messages cross between nodes that may run two builds
    /// during an upgrade: a new variant goes last, so the ones an older
    /// node knows keep their numbers. The pre-vote's are pinned here.
    #[test]
    fn the_pre_vote_variants_come_last_and_round_trip() {
        let request = Request::PreVote {
            candidate: 3,
            last_log: Some(openraft::LogId::new(
                openraft::CommittedLeaderId::new(7, 2),
                41,
            )),
        };
        let bytes = codec::encode(&request).expect("encode");
        assert_eq!(bytes[1], 5, "Request::PreVote is the sixth variant");
        match codec::decode::<Request>(&bytes).expect("decode") {
            Request::PreVote {
                candidate,
                last_log,
            } => {
                assert_eq!(candidate, 3);
                assert_eq!(last_log.map(|l| (l.leader_id.term, l.index)), Some((7, 41)));
            }
            other => panic!("decoded {other:?}"),
        }
        let bytes = codec::encode(&Response::PreVote(true)).expect("encode");
        assert_eq!(bytes[1], 8, "Response::PreVote is the ninth variant");
        assert!(matches!(
            codec::decode::<Response>(&bytes).expect("decode"),
            Response::PreVote(true)
        ));
    }

    /// Only what leaves no trace its caller needed to see may be given up
    /// in flight: reads and enqueues, plain or sequenced; never a fetch,
    /// whose unseen leases would spend attempts.
    #[test]
    fn only_enqueues_and_reads_are_given_up_in_flight() {
        let enqueue = Command::Enqueue {
            queue: "q".into(),
            jobs: Vec::new(),
        };
        let fetch = Command::Fetch {
            queue: "q".into(),
            consumer: "w".into(),
            max: 1,
            lease_ms: 0,
        };
        let sequenced = |command: Command| {
            Request::Write(Command::Sequenced {
                sequence: core::Sequence {
                    session: 1,
                    seq: 1,
                    floor: 1,
                    try_number: core::TryNumber::default(),
                },
                command: Box::new(command),
            })
        };
        // Forwarding retries a given-up try only when it is retry-safe.
        for given_up in [Request::Write(enqueue.clone()), sequenced(enqueue)] {
            assert!(given_up.abandon_safe());
            assert!(given_up.retry_safe());
        }
        assert!(!Request::Write(fetch.clone()).abandon_safe());
        assert!(!sequenced(fetch).abandon_safe());
        assert!(!Request::Write(Command::OpenSession).abandon_safe());
        assert!(!Request::Probe.abandon_safe());
    }
}
