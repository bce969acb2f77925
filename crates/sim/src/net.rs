//! What travels between the simulated nodes and clients.

use lockstep_core::{Command, Error, Reply};

pub(crate) type NodeIx = usize;
pub(crate) type ClientIx = usize;

/// Nodes in a simulated cluster.
pub(crate) const NODES: usize = 3;
/// Votes or acknowledgements that make a majority of [`NODES`].
pub(crate) const MAJORITY: usize = NODES / 2 + 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Addr {
    Node(NodeIx),
    Client(ClientIx),
}

/// One log entry.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub term: u64,
    pub body: Body,
}

#[derive(Clone, Debug)]
pub(crate) enum Body {
    /// A new leader's first entry, which commits what came before it.
    Blank,
    /// A command stamped with the leader's cluster time.
    Cmd { time_ms: u64, command: Command },
}

/// One try of a client request: its answer is taken only while the client
/// still waits for this try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Try {
    pub client: ClientIx,
    pub id: u64,
}

#[derive(Clone, Debug)]
pub(crate) enum Answer {
    /// The command was applied: its (first) result, and for each delivery
    /// the job id the payload store holds for it.
    Applied {
        result: Result<Reply, Error>,
        ids: Vec<String>,
    },
    /// Refused before anything was proposed (the precheck).
    Refused(Error),
    /// No leader here to take it; nothing was proposed.
    Unavailable,
}

/// An AppendEntries.
#[derive(Clone, Debug)]
pub(crate) struct Append {
    pub term: u64,
    pub prev_index: u64,
    pub prev_term: u64,
    pub entries: Vec<Entry>,
    pub commit: u64,
    /// When the leader sent it (simulated ms): echoed back, so a
    /// read-index round knows which answers came after it began.
    pub sent_at: u64,
}

#[derive(Clone, Debug)]
pub(crate) enum Msg {
    Vote {
        term: u64,
        last_index: u64,
        last_term: u64,
    },
    VoteResp {
        term: u64,
        granted: bool,
    },
    Append(Append),
    AppendResp {
        term: u64,
        success: bool,
        /// On success the last index now held; on failure a hint where
        /// the logs may agree.
        index: u64,
        sent_at: u64,
    },
    /// A client request; `via` is the node that forwarded it, which
    /// relays the answer.
    Request {
        tr: Try,
        command: Command,
        via: Option<NodeIx>,
    },
    Answer {
        tr: Try,
        answer: Answer,
    },
    /// A guarded node asks the leader for a commit index confirmed by a
    /// majority.
    GuardProbe,
    GuardIndex {
        index: u64,
    },
    /// A guarded node asks a peer for its current term.
    TermProbe,
    TermIs {
        term: u64,
    },
}

#[derive(Clone, Debug)]
pub(crate) struct Envelope {
    pub from: Addr,
    pub to: Addr,
    pub msg: Msg,
}
