//! The simulated network: every peer message of every node, and every call
//! of a client to a node, crosses it. It delays each leg, drops some, and
//! cuts links (partitions), by the run's seeded generator.
//!
//! A message crosses as its encoded bytes ([`lockstep_raft::Transport`]),
//! so the codec, openraft's error mapping and the receiving node's peer
//! service (with its vote guard) are the real ones. The receiving side runs
//! in its own task, as a server would: a caller that gives up does not stop
//! the work it asked for, so an answer lost on the way back is a request
//! that took effect unseen (a lost reply).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use lockstep_node::parts::Assembled;
use lockstep_raft::{Method, Transport};
use lockstep_types::NodeId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::Status;

/// One leg's delay, ms (uniform): loopback-like, with room to reorder.
pub(crate) const LATENCY_MS: (u64, u64) = (1, 6);
/// Where a client stands on the network: its calls cross the same links,
/// and a partition can cut a client off a node too.
pub(crate) const CLIENT_SIDE: NodeId = 0;

/// What the network does now.
#[derive(Debug)]
struct State {
    rng: StdRng,
    /// The running nodes; a node not here is down, and a message to it is
    /// refused at once (a connection refused).
    up: BTreeMap<NodeId, Arc<Assembled>>,
    /// The work each running node is doing for messages it took: cut off
    /// when the node stops, as a crash would.
    serving: BTreeMap<NodeId, Vec<tokio::task::AbortHandle>>,
    /// Directed links that carry nothing (`(from, to)`): a message on one
    /// is lost, and its caller waits out its timeout.
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Chance, in parts per million, that a leg is lost.
    drop_ppm: u32,
    /// Nodes whose answers to clients are lost (the `lost-reply` fault):
    /// the call runs, its caller never hears.
    lose_replies_of: BTreeSet<NodeId>,
}

/// The network all nodes and clients of one run share.
#[derive(Debug)]
pub(crate) struct Net {
    state: Mutex<State>,
}

/// What one leg does.
enum Leg {
    Arrives(Duration),
    Lost,
}

impl Net {
    pub(crate) fn new(seed: u64) -> Arc<Net> {
        Arc::new(Net {
            state: Mutex::new(State {
                rng: StdRng::seed_from_u64(seed),
                up: BTreeMap::new(),
                serving: BTreeMap::new(),
                cut: BTreeSet::new(),
                drop_ppm: 0,
                lose_replies_of: BTreeSet::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change is one assignment: a panic elsewhere leaves it whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn set_up(&self, id: NodeId, node: Option<Arc<Assembled>>) {
        let mut s = self.lock();
        match node {
            Some(node) => {
                s.up.insert(id, node);
            }
            None => {
                s.up.remove(&id);
                for task in s.serving.remove(&id).unwrap_or_default() {
                    task.abort();
                }
            }
        }
    }

    /// Cuts (or mends) both directions between `a` and `b`.
    pub(crate) fn cut_both(&self, a: NodeId, b: NodeId, cut: bool) {
        self.cut_one(a, b, cut);
        self.cut_one(b, a, cut);
    }

    /// Cuts (or mends) the link from `from` to `to` only.
    pub(crate) fn cut_one(&self, from: NodeId, to: NodeId, cut: bool) {
        let mut s = self.lock();
        if cut {
            s.cut.insert((from, to));
        } else {
            s.cut.remove(&(from, to));
        }
    }

    pub(crate) fn set_drop_ppm(&self, ppm: u32) {
        self.lock().drop_ppm = ppm;
    }

    pub(crate) fn lose_replies(&self, node: NodeId, lose: bool) {
        let mut s = self.lock();
        if lose {
            s.lose_replies_of.insert(node);
        } else {
            s.lose_replies_of.remove(&node);
        }
    }

    /// Every link mended, nothing dropped, every reply delivered.
    pub(crate) fn heal(&self) {
        let mut s = self.lock();
        s.cut.clear();
        s.drop_ppm = 0;
        s.lose_replies_of.clear();
    }

    fn leg(&self, from: NodeId, to: NodeId) -> Leg {
        let mut s = self.lock();
        let delay = s.rng.random_range(LATENCY_MS.0..=LATENCY_MS.1);
        let dropped = s.drop_ppm > 0 && s.rng.random_range(0..1_000_000) < s.drop_ppm;
        if dropped || s.cut.contains(&(from, to)) {
            Leg::Lost
        } else {
            Leg::Arrives(Duration::from_millis(delay))
        }
    }

    /// Carries a request from `from` to `to` and its answer back: `serve`
    /// runs on `to`'s side, in a task of its own, so it completes whether or
    /// not anyone still waits. Bounded by `timeout`, after which the caller
    /// gets DEADLINE_EXCEEDED, as a gRPC call would.
    pub(crate) async fn round_trip<T, F, Fut>(
        &self,
        from: NodeId,
        to: NodeId,
        timeout: Duration,
        serve: F,
    ) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Assembled>) -> Fut,
        Fut: Future<Output = Result<T, Status>> + Send + 'static,
    {
        let trip = async {
            let Leg::Arrives(there) = self.leg(from, to) else {
                return std::future::pending().await;
            };
            tokio::time::sleep(there).await;
            let Some(node) = self.lock().up.get(&to).cloned() else {
                // Worded as the real transport words a refused connection,
                // so the forwarder knows the request was never sent.
                return Err(Status::unavailable(format!(
                    "tcp connect error: node {to} is down"
                )));
            };
            let task = tokio::spawn(serve(node.clone()));
            {
                let mut s = self.lock();
                let serving = s.serving.entry(to).or_default();
                serving.retain(|t| !t.is_finished());
                serving.push(task.abort_handle());
            }
            // Cut off by a stop: the node crashed with the call in hand.
            let Ok(answer) = task.await else {
                return std::future::pending().await;
            };
            let (gone, lost) = {
                let s = self.lock();
                let gone = !s.up.get(&to).is_some_and(|n| Arc::ptr_eq(n, &node));
                (gone, from == CLIENT_SIDE && s.lose_replies_of.contains(&to))
            };
            if gone {
                return std::future::pending().await;
            }
            match self.leg(to, from) {
                Leg::Arrives(back) if !lost => {
                    tokio::time::sleep(back).await;
                    answer
                }
                _ => std::future::pending().await,
            }
        };
        match tokio::time::timeout(timeout, trip).await {
            Ok(answer) => answer,
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no answer from node {to} within {} ms",
                timeout.as_millis()
            ))),
        }
    }
}

/// One node's way onto the network: openraft's and the forwarder's
/// transport.
#[derive(Debug)]
pub(crate) struct NodeLink {
    pub(crate) from: NodeId,
    pub(crate) net: Arc<Net>,
}

#[tonic::async_trait]
impl Transport for NodeLink {
    async fn call(
        &self,
        target: NodeId,
        method: Method,
        data: Vec<u8>,
        timeout: Duration,
        traceparent: Option<String>,
    ) -> Result<Vec<u8>, Status> {
        self.net
            .round_trip(self.from, target, timeout, move |node| async move {
                node.peer_service().handle(method, data, traceparent).await
            })
            .await
    }
}
