//! The client's session: how its state-changing Queue calls become
//! at-most-once (Raft dissertation, section 6.3).
//!
//! The client opens one session with the cluster, lazily on its first
//! state-changing call, and numbers every such call 1, 2, 3... A retry
//! resends the same number, and the cluster answers a repeat with the first
//! result, so a retry after an unknown outcome (a leader died mid-write, a
//! call deadline passed, ABORTED) never applies a fetch, nack, release or
//! dead-letter twice. Each request also carries the lowest number the
//! client still waits for, so the cluster can forget the replies below it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

use lockstep_proto as pb;

/// The session id (once opened) and the numbers in flight.
#[derive(Debug, Default)]
pub(crate) struct Session {
    /// Held while a session is being opened, so concurrent first calls
    /// open one session, not one each.
    pub(crate) id: tokio::sync::Mutex<Option<u64>>,
    numbers: Arc<Mutex<Numbers>>,
}

#[derive(Debug, Default)]
struct Numbers {
    next: u64,
    in_flight: BTreeSet<u64>,
}

/// One request's number, held until its call ends (answered, or given up):
/// then the number leaves the in-flight set, and the floor can pass it.
#[derive(Debug)]
pub(crate) struct Ticket {
    seq: u64,
    floor: u64,
    numbers: Arc<Mutex<Numbers>>,
}

impl Session {
    /// A number for the next request.
    pub(crate) fn ticket(&self) -> Ticket {
        let mut n = self.numbers.lock().unwrap_or_else(PoisonError::into_inner);
        n.next += 1;
        let seq = n.next;
        n.in_flight.insert(seq);
        let floor = n.in_flight.first().copied().unwrap_or(seq);
        Ticket {
            seq,
            floor,
            numbers: self.numbers.clone(),
        }
    }
}

impl Ticket {
    /// The request's place in session `id`, as the API carries it.
    pub(crate) fn in_session(&self, id: u64) -> pb::Session {
        pb::Session {
            id,
            seq: self.seq,
            floor: self.floor,
            attempt: 0,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut n = self.numbers.lock().unwrap_or_else(PoisonError::into_inner);
        n.in_flight.remove(&self.seq);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_floor_is_the_oldest_number_in_flight() {
        let session = Session::default();
        let first = session.ticket();
        let second = session.ticket();
        assert_eq!(second.in_session(9).floor, 1);
        drop(first);
        let third = session.ticket();
        assert_eq!(
            third.in_session(9),
            pb::Session {
                id: 9,
                seq: 3,
                floor: 2,
                attempt: 0
            }
        );
        drop(second);
        drop(third);
        assert_eq!(session.ticket().in_session(9).floor, 4);
    }
}
