//! A tiny driver for scenario tests: it stamps commands the way a leader
//! would, keeps an in-memory payload store in step, and checks every
//! invariant after every command.

#![allow(dead_code)]

use lockstep_core::*;

#[derive(Debug)]
pub struct Sim {
    pub state: State,
    pub store: MemBlobStore,
    pub index: u64,
    pub now_ms: u64,
}

pub const Q: &str = "jobs";

impl Default for Sim {
    fn default() -> Self {
        Self::new()
    }
}

impl Sim {
    pub fn new() -> Sim {
        Sim {
            state: State::new(),
            store: MemBlobStore::default(),
            index: 0,
            now_ms: 1_000,
        }
    }

    /// A simulation with queue `Q` created under `config`.
    pub fn with_queue(config: QueueConfig) -> Sim {
        let mut sim = Sim::new();
        sim.run(Command::CreateQueue {
            name: Q.into(),
            config,
        })
        .expect("create queue");
        sim
    }

    /// Applies `command` as the only command of a new log entry.
    pub fn run(&mut self, command: Command) -> Result<Reply> {
        self.index += 1;
        self.run_in_same_entry(command)
    }

    /// Applies `command` in the entry of the previous command (same index).
    pub fn run_in_same_entry(&mut self, command: Command) -> Result<Reply> {
        self.run_in_same_entry_with_effects(command).0
    }

    /// [`Sim::run`], also returning the effects the command produced.
    pub fn run_with_effects(&mut self, command: Command) -> (Result<Reply>, Vec<Effect>) {
        self.index += 1;
        self.run_in_same_entry_with_effects(command)
    }

    fn run_in_same_entry_with_effects(&mut self, command: Command) -> (Result<Reply>, Vec<Effect>) {
        let mut effects = Vec::new();
        let stamp = Stamp {
            index: self.index,
            time_ms: self.now_ms,
        };
        let reply = self.state.apply(stamp, command, &mut effects);
        if reply.is_err() {
            assert!(
                effects.is_empty(),
                "a failed command pushed effects: {effects:?}"
            );
        }
        self.store.apply_effects(&effects);
        self.state.check_invariants().expect("invariants hold");
        self.store
            .check_against(&self.state)
            .expect("payload store agrees");
        (reply, effects)
    }

    pub fn advance(&mut self, ms: u64) {
        self.now_ms += ms;
    }

    pub fn tick(&mut self) -> u32 {
        match self.run(Command::Tick) {
            Ok(Reply::Ticked { expired }) => expired,
            other => panic!("tick: {other:?}"),
        }
    }

    pub fn enqueue_jobs(&mut self, jobs: Vec<NewJob>) -> Result<Vec<EnqueueResult>> {
        match self.run(Command::Enqueue {
            queue: Q.into(),
            jobs,
        })? {
            Reply::Enqueued(results) => Ok(results),
            other => panic!("enqueue: {other:?}"),
        }
    }

    /// Enqueues one job and returns its new offset.
    pub fn enqueue(&mut self, id: &str, group: Option<&str>) -> u64 {
        match self
            .enqueue_jobs(vec![job(id, group)])
            .expect("enqueue")
            .as_slice()
        {
            [EnqueueResult::Created { offset }] => *offset,
            other => panic!("expected CREATED, got {other:?}"),
        }
    }

    pub fn fetch(&mut self, max: u32) -> Vec<Delivery> {
        self.fetch_as("worker", max, 0)
    }

    pub fn fetch_as(&mut self, consumer: &str, max: u32, lease_ms: u64) -> Vec<Delivery> {
        let command = Command::Fetch {
            queue: Q.into(),
            consumer: consumer.into(),
            max,
            lease_ms,
        };
        match self.run(command).expect("fetch") {
            Reply::Fetched(deliveries) => deliveries,
            other => panic!("fetch: {other:?}"),
        }
    }

    pub fn ack(&mut self, offset: u64, fence: u64) -> AckResult {
        match self.run(Command::Ack {
            queue: Q.into(),
            items: vec![AckItem { offset, fence }],
        }) {
            Ok(Reply::Acked(mut results)) => results.remove(0),
            other => panic!("ack: {other:?}"),
        }
    }

    pub fn nack(&mut self, d: &Delivery, delay_ms: u64) -> Result<Reply> {
        self.run(Command::Nack {
            queue: Q.into(),
            offset: d.offset,
            fence: d.fence,
            delay_ms,
        })
    }

    pub fn stats(&self) -> QueueStats {
        self.state.stats(Q).expect("stats")
    }

    /// The id the payload store holds for a delivery.
    pub fn id_of(&self, d: &Delivery) -> String {
        self.store
            .get(d.queue_id, d.blob)
            .expect("payload stored")
            .id
    }
}

pub fn job(id: &str, group: Option<&str>) -> NewJob {
    NewJob {
        id: id.into(),
        group: group.map(Into::into),
        payload: format!("payload of {id}").into_bytes(),
        headers: vec![],
        priority: 0,
        delay_ms: 0,
        fairness_key: None,
    }
}

pub fn offsets(deliveries: &[Delivery]) -> Vec<u64> {
    deliveries.iter().map(|d| d.offset).collect()
}
