//! The simulated clients' state: what each one is, what it is waiting
//! for, and the leases it holds. What they do is in `workload.rs`.

use std::collections::VecDeque;

use lockstep_chaos::history::{EndKind, SentJob};
use lockstep_core::Command;

use crate::net::NodeIx;

/// The `process` of the drain's operations.
pub(crate) const DRAIN_PROCESS: u64 = 9_999;
const PRODUCERS: usize = 3;
const WORKERS: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Producer,
    Worker,
    Admin,
    Drain,
}

/// What a call is, for recording it.
#[derive(Clone, Debug)]
pub(crate) enum What {
    OpenSession,
    CreateQueue {
        queue: String,
    },
    Enqueue {
        queue: String,
        jobs: Vec<SentJob>,
    },
    Probe {
        queue: String,
    },
    Fetch {
        queue: String,
        max: u32,
        lease_ms: u64,
    },
    Ack {
        queue: String,
        items: Vec<(u64, u64)>,
    },
    EndLease {
        queue: String,
        offset: u64,
        fence: u64,
        kind: EndKind,
    },
    Extend {
        queue: String,
        offset: u64,
        fence: u64,
    },
}

#[derive(Clone, Debug)]
pub(crate) struct Pending {
    pub(crate) what: What,
    pub(crate) command: Command,
    pub(crate) seq: Option<u64>,
    pub(crate) invoke_ms: u64,
    pub(crate) first_node: NodeIx,
    pub(crate) node: NodeIx,
    pub(crate) tries: u32,
    pub(crate) tries_max: u32,
    /// The try whose answer is awaited; 0 between tries.
    pub(crate) try_id: u64,
    /// An earlier try may have taken effect.
    pub(crate) maybe_applied: bool,
}

#[derive(Clone, Debug)]
pub(crate) struct Held {
    pub(crate) queue: String,
    pub(crate) offset: u64,
    pub(crate) fence: u64,
    pub(crate) lease_ms: u64,
    pub(crate) extended: bool,
}

#[derive(Debug)]
pub(crate) struct Client {
    pub(crate) kind: Kind,
    pub(crate) ix: usize,
    pub(crate) token: u64,
    pub(crate) session: Option<u64>,
    pub(crate) seq: u64,
    pub(crate) pending: Option<Pending>,
    pub(crate) next_try: u64,
    pub(crate) sent: u64,
    /// Jobs sent before: (queue, id, group), for a deliberate resend.
    pub(crate) past: Vec<(String, String, String)>,
    pub(crate) held: VecDeque<Held>,
    pub(crate) created: u64,
    pub(crate) probes: VecDeque<(String, NodeIx)>,
    pub(crate) drain_queue: usize,
}

impl Client {
    pub(crate) fn new(kind: Kind, ix: usize) -> Client {
        Client {
            kind,
            ix,
            token: 0,
            session: None,
            seq: 0,
            pending: None,
            next_try: 0,
            sent: 0,
            past: Vec::new(),
            held: VecDeque::new(),
            created: 0,
            probes: VecDeque::new(),
            drain_queue: 0,
        }
    }

    /// A new wake-up token: earlier wake-ups are void.
    pub(crate) fn next_token(&mut self) -> u64 {
        self.token += 1;
        self.token
    }

    pub(crate) fn process(&self) -> u64 {
        match self.kind {
            Kind::Drain => DRAIN_PROCESS,
            _ => self.ix as u64 + 1,
        }
    }
}

/// The clients of a run; the drain is the last.
pub(crate) fn clients() -> Vec<Client> {
    let mut all = Vec::new();
    for _ in 0..PRODUCERS {
        all.push(Client::new(Kind::Producer, all.len()));
    }
    for _ in 0..WORKERS {
        all.push(Client::new(Kind::Worker, all.len()));
    }
    all.push(Client::new(Kind::Admin, all.len()));
    all.push(Client::new(Kind::Drain, all.len()));
    all
}
