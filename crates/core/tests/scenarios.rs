//! One scenario per rule of SPEC section 2, each named for what it proves.
//! Every command runs through `Sim`, which checks all invariants after it.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use lockstep_core::*;

fn config() -> QueueConfig {
    QueueConfig {
        backoff_base_ms: 100,
        backoff_cap_ms: 1_000,
        backoff_jitter_pct: 0,
        lease_ms_default: 1_000,
        ..QueueConfig::default()
    }
}

#[test]
fn group_order_is_kept_across_nack_expiry_and_backoff() {
    let mut sim = Sim::with_queue(config());
    let a = sim.enqueue("a", Some("g"));
    let b = sim.enqueue("b", Some("g"));
    let c = sim.enqueue("c", Some("g"));

    // Only the head of the group is deliverable.
    let first = sim.fetch(10);
    assert_eq!(offsets(&first), vec![a]);

    // Nack: the head backs off, and the whole group waits with it.
    let reply = sim.nack(&first[0], 0).unwrap();
    assert_eq!(
        reply,
        Reply::Nacked {
            dead: false,
            not_before_ms: sim.now_ms + 100
        }
    );
    assert!(
        sim.fetch(10).is_empty(),
        "b must not overtake a backing-off a"
    );
    assert_eq!(sim.stats().delayed, 1);

    // After the backoff the same head comes back, second attempt.
    sim.advance(100);
    let second = sim.fetch(10);
    assert_eq!(offsets(&second), vec![a]);
    assert_eq!(second[0].attempt, 2);

    // Expiry: the lease runs out, the head returns to the front after the
    // (doubled) backoff, and still nothing behind it is delivered.
    sim.advance(1_000);
    assert_eq!(sim.tick(), 1);
    assert!(sim.fetch(10).is_empty());
    sim.advance(200);
    let third = sim.fetch(10);
    assert_eq!(offsets(&third), vec![a]);
    assert_eq!(third[0].attempt, 3);

    assert_eq!(sim.ack(a, third[0].fence), AckResult::Acked);
    assert_eq!(offsets(&sim.fetch(10)), vec![b]);
    let _ = c;
}

#[test]
fn a_stale_fence_is_rejected_after_expiry_and_re_lease() {
    let mut sim = Sim::with_queue(QueueConfig {
        backoff_base_ms: 0,
        backoff_cap_ms: 0,
        ..config()
    });
    let a = sim.enqueue("a", Some("g"));
    let old = sim.fetch_as("w1", 1, 500).remove(0);
    sim.advance(500);
    let new = sim.fetch_as("w2", 1, 500).remove(0);
    assert_eq!(new.offset, a);
    assert!(
        new.fence > old.fence,
        "every grant of a job has a greater fence"
    );

    // The first worker's late calls all fail and change nothing.
    let before = sim.state.queues_snapshot();
    assert_eq!(
        sim.ack(a, old.fence),
        AckResult::Failed(Error::LeaseLost {
            offset: a,
            fence: old.fence
        })
    );
    let lost = |r: Result<Reply>| assert_eq!(r.unwrap_err().code(), Code::FailedPrecondition);
    lost(sim.nack(&old, 0));
    lost(sim.run(Command::Extend {
        queue: Q.into(),
        offset: a,
        fence: old.fence,
        lease_ms: 0,
    }));
    lost(sim.run(Command::Release {
        queue: Q.into(),
        offset: a,
        fence: old.fence,
    }));
    lost(sim.run(Command::DeadLetter {
        queue: Q.into(),
        offset: a,
        fence: old.fence,
        reason: "x".into(),
    }));
    assert_eq!(
        sim.state.queues_snapshot(),
        before,
        "stale-fence calls changed the state"
    );

    // The live holder acks; a repeat of that ack is OK, the stale one is not.
    assert_eq!(sim.ack(a, new.fence), AckResult::Acked);
    assert_eq!(sim.ack(a, new.fence), AckResult::AlreadyAcked);
    assert_eq!(
        sim.ack(a, old.fence),
        AckResult::Failed(Error::LeaseLost {
            offset: a,
            fence: old.fence
        })
    );
}

#[test]
fn a_job_released_in_an_entry_is_not_re_leased_by_the_same_entry() {
    let mut sim = Sim::with_queue(config());
    let a = sim.enqueue("a", Some("g"));
    let d = sim.fetch(1).remove(0);
    // Granted and released within one entry: a second grant by that entry
    // would carry the released lease's fence, so it must wait.
    sim.run_in_same_entry(Command::Release {
        queue: Q.into(),
        offset: a,
        fence: d.fence,
    })
    .unwrap();
    let fetch = Command::Fetch {
        queue: Q.into(),
        consumer: "w".into(),
        max: 1,
        lease_ms: 0,
    };
    assert_eq!(
        sim.run_in_same_entry(fetch).unwrap(),
        Reply::Fetched(vec![])
    );
    let again = sim.fetch(1).remove(0);
    assert_eq!(again.offset, a);
    assert!(again.fence > d.fence);
    assert_eq!(again.attempt, 1, "release counts no attempt");
}

#[test]
fn a_duplicate_inside_the_window_returns_the_original_offset_and_an_id_past_it_is_new() {
    let mut sim = Sim::with_queue(QueueConfig {
        dedup_window_ms: 10_000,
        ..config()
    });
    let a = sim.enqueue("id-1", Some("g"));
    sim.advance(5_000);
    let again = sim.enqueue_jobs(vec![job("id-1", Some("g"))]).unwrap();
    assert_eq!(
        again,
        vec![EnqueueResult::Duplicate {
            offset: a,
            state: JobState::Ready
        }]
    );

    // Different payload or group under the same id: a conflict, nothing stored.
    let mut other = job("id-1", Some("g"));
    other.payload = b"something else".to_vec();
    let conflict = sim
        .enqueue_jobs(vec![other, job("id-1", Some("h"))])
        .unwrap();
    assert_eq!(conflict, vec![EnqueueResult::IdConflict { offset: a }; 2]);
    assert_eq!(sim.stats().next_offset, 1);

    // Finishing the job does not end the window; the state is reported.
    let d = sim.fetch(1).remove(0);
    sim.ack(d.offset, d.fence);
    let done = sim.enqueue_jobs(vec![job("id-1", Some("g"))]).unwrap();
    assert_eq!(
        done,
        vec![EnqueueResult::Duplicate {
            offset: a,
            state: JobState::Done
        }]
    );

    // The window counts from the first acceptance, not from the duplicates.
    sim.advance(5_000);
    let fresh = sim.enqueue_jobs(vec![job("id-1", Some("g"))]).unwrap();
    assert_eq!(fresh, vec![EnqueueResult::Created { offset: 1 }]);
}

#[test]
fn duplicates_inside_one_batch_are_answered_per_item() {
    let mut sim = Sim::with_queue(config());
    let results = sim
        .enqueue_jobs(vec![job("x", None), job("x", None), job("y", None)])
        .unwrap();
    assert_eq!(
        results,
        vec![
            EnqueueResult::Created { offset: 0 },
            EnqueueResult::Duplicate {
                offset: 0,
                state: JobState::Ready
            },
            EnqueueResult::Created { offset: 1 },
        ]
    );
}

#[test]
fn park_stops_a_group_and_resume_restarts_it() {
    let cfg = QueueConfig {
        max_attempts: 1,
        group_policy: GroupPolicy::Park,
        ..config()
    };
    let mut sim = Sim::with_queue(cfg);
    let a = sim.enqueue("a", Some("g"));
    let b = sim.enqueue("b", Some("g"));
    let other = sim.enqueue("c", Some("h"));

    let d = sim.fetch(1).remove(0);
    assert_eq!(d.offset, a);
    assert_eq!(
        sim.nack(&d, 0).unwrap(),
        Reply::Nacked {
            dead: true,
            not_before_ms: 0
        }
    );

    // The group is parked: b waits, other groups go on.
    assert_eq!(offsets(&sim.fetch(10)), vec![other]);
    let page = sim
        .state
        .list_groups(Q, &GroupFilter::default(), None, 10)
        .unwrap();
    let g = page.groups.iter().find(|g| g.key == "g").unwrap();
    assert!(g.paused && g.parked_reason.is_some());
    let dead = sim
        .state
        .list_dead_letters(Q, None, 10)
        .unwrap()
        .dead_letters;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "max_attempts = 1 reached");
    assert_eq!(dead[0].history.len(), 1);
    assert_eq!(dead[0].history[0].outcome, AttemptOutcome::Nacked);

    sim.run(Command::ResumeGroup {
        queue: Q.into(),
        group: "g".into(),
    })
    .unwrap();
    assert_eq!(offsets(&sim.fetch(10)), vec![b]);
}

#[test]
fn continue_policy_moves_the_group_on_and_dead_letters_can_be_requeued_and_purged() {
    let mut sim = Sim::with_queue(QueueConfig {
        max_attempts: 1,
        ..config()
    });
    let a = sim.enqueue("a", Some("g"));
    let b = sim.enqueue("b", Some("g"));
    let d = sim.fetch(1).remove(0);
    sim.run(Command::DeadLetter {
        queue: Q.into(),
        offset: a,
        fence: d.fence,
        reason: "poison".into(),
    })
    .unwrap();
    assert_eq!(sim.stats().dead, 1);
    let next = sim.fetch(1).remove(0);
    assert_eq!(next.offset, b);

    // Requeue: a new offset at the tail of its group, the same id.
    let reply = sim
        .run(Command::RequeueDeadLetter {
            queue: Q.into(),
            offset: a,
        })
        .unwrap();
    assert_eq!(reply, Reply::Requeued { offset: 2 });
    let dup = sim.enqueue_jobs(vec![job("a", Some("g"))]).unwrap();
    assert_eq!(
        dup,
        vec![EnqueueResult::Duplicate {
            offset: 2,
            state: JobState::Ready
        }]
    );
    sim.ack(b, next.fence);
    let requeued = sim.fetch(1).remove(0);
    assert_eq!((requeued.offset, requeued.attempt), (2, 1));
    assert_eq!(sim.id_of(&requeued), "a");

    // Purge removes the dead letters and their payloads.
    sim.run(Command::DeadLetter {
        queue: Q.into(),
        offset: 2,
        fence: requeued.fence,
        reason: "again".into(),
    })
    .unwrap();
    let purged = sim
        .run(Command::PurgeDeadLetters {
            queue: Q.into(),
            which: PurgeSelector::All,
        })
        .unwrap();
    assert_eq!(purged, Reply::Purged { count: 1 });
    assert_eq!(sim.stats().dead, 0);
    assert!(sim.store.blobs.is_empty());
}

#[test]
fn priority_never_reorders_within_a_group_but_orders_ready_heads() {
    let mut sim = Sim::with_queue(config());
    let mut low = job("low", Some("g"));
    low.priority = 0;
    let mut high_same_group = job("high-g", Some("g"));
    high_same_group.priority = 9;
    let mut high_other = job("high-h", Some("h"));
    high_other.priority = 5;
    sim.enqueue_jobs(vec![low, high_same_group, high_other])
        .unwrap();

    // Heads are "low" (g, prio 0) and "high-h" (h, prio 5): the priority-9
    // job is not a head, so it cannot jump its group.
    let ds = sim.fetch(10);
    assert_eq!(offsets(&ds), vec![2, 0]);
    sim.ack(0, ds[1].fence);
    let next = sim.fetch(10);
    assert_eq!(offsets(&next), vec![1]);
}

#[test]
fn a_hot_group_contributes_only_its_head() {
    let mut sim = Sim::with_queue(config());
    for i in 0..50 {
        sim.enqueue(&format!("hot-{i}"), Some("hot"));
    }
    let cold = sim.enqueue("cold", Some("cold"));
    let ds = sim.fetch(10);
    assert_eq!(offsets(&ds), vec![0, cold]);
}

#[test]
fn a_delayed_head_blocks_its_group_until_its_time() {
    let mut sim = Sim::with_queue(config());
    let mut delayed = job("later", Some("g"));
    delayed.delay_ms = 5_000;
    sim.enqueue_jobs(vec![delayed, job("after", Some("g")), job("free", None)])
        .unwrap();
    assert_eq!(sim.stats().delayed, 1);
    assert_eq!(offsets(&sim.fetch(10)), vec![2]);
    sim.advance(5_000);
    assert_eq!(offsets(&sim.fetch(10)), vec![0]);
}

#[test]
fn a_batch_over_a_limit_changes_nothing() {
    let cfg = QueueConfig {
        max_jobs: 3,
        max_bytes: 1_000,
        max_batch: 4,
        max_payload_bytes: 100,
        ..config()
    };
    let mut sim = Sim::with_queue(cfg);
    sim.enqueue("first", None);
    let before = sim.state.queues_snapshot();
    let blobs = sim.store.clone();

    let mut big = job("big", None);
    big.payload = vec![0; 101];
    let mut bad_priority = job("p", None);
    bad_priority.priority = 10;
    let cases: Vec<(Vec<NewJob>, Code, &str)> = vec![
        (
            vec![job("a", None), job("b", None), job("c", None)],
            Code::ResourceExhausted,
            "max_jobs",
        ),
        (
            (0..5).map(|i| job(&format!("j{i}"), None)).collect(),
            Code::InvalidArgument,
            "max_batch",
        ),
        (
            vec![job("ok", None), big],
            Code::InvalidArgument,
            "max_payload_bytes",
        ),
        (
            vec![job("ok", None), job("", None)],
            Code::InvalidArgument,
            "jobs[1].id",
        ),
        (
            vec![job("ok", None), bad_priority],
            Code::InvalidArgument,
            "priority",
        ),
        (vec![], Code::InvalidArgument, "jobs"),
    ];
    for (jobs, code, names) in cases {
        let err = sim.enqueue_jobs(jobs).unwrap_err();
        assert_eq!(err.code(), code, "{err}");
        assert!(
            err.to_string().contains(names),
            "`{err}` should name `{names}`"
        );
        assert_eq!(
            sim.state.queues_snapshot(),
            before,
            "a rejected batch changed the state: {err}"
        );
        assert_eq!(sim.store, blobs);
    }

    // max_bytes counts payloads of pending jobs.
    let mut cfg = config();
    cfg.max_bytes = 30;
    let mut sim = Sim::with_queue(cfg);
    let mut heavy = job("heavy", None);
    heavy.payload = vec![1; 20];
    sim.enqueue_jobs(vec![heavy]).unwrap();
    let mut more = job("more", None);
    more.payload = vec![1; 11];
    let err = sim.enqueue_jobs(vec![more]).unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.to_string().contains("max_bytes"));
}

#[test]
fn bad_requests_get_typed_errors_that_name_the_problem() {
    let mut sim = Sim::with_queue(config());
    let a = sim.enqueue("a", None);
    let cases: Vec<(Command, Code, &str)> = vec![
        (
            Command::Enqueue {
                queue: "nope".into(),
                jobs: vec![job("x", None)],
            },
            Code::NotFound,
            "nope",
        ),
        (
            Command::Fetch {
                queue: Q.into(),
                consumer: "w".into(),
                max: 1,
                lease_ms: limits::LEASE_MS_LIMIT + 1,
            },
            Code::InvalidArgument,
            "lease_ms",
        ),
        (
            Command::Fetch {
                queue: Q.into(),
                consumer: "w".into(),
                max: 0,
                lease_ms: 0,
            },
            Code::InvalidArgument,
            "max",
        ),
        (
            Command::Nack {
                queue: Q.into(),
                offset: a,
                fence: 99,
                delay_ms: 0,
            },
            Code::FailedPrecondition,
            "lease lost",
        ),
        (
            Command::Release {
                queue: Q.into(),
                offset: 42,
                fence: 1,
            },
            Code::NotFound,
            "offset 42",
        ),
        (
            Command::CreateQueue {
                name: "bad name!".into(),
                config: config(),
            },
            Code::InvalidArgument,
            "queue",
        ),
        (
            Command::CreateQueue {
                name: Q.into(),
                config: QueueConfig {
                    max_attempts: 9,
                    ..config()
                },
            },
            Code::AlreadyExists,
            Q,
        ),
        (
            Command::CreateQueue {
                name: "q2".into(),
                config: QueueConfig {
                    max_attempts: 0,
                    ..config()
                },
            },
            Code::InvalidArgument,
            "max_attempts",
        ),
        (
            Command::ResumeGroup {
                queue: Q.into(),
                group: "ghost".into(),
            },
            Code::NotFound,
            "ghost",
        ),
        (
            Command::RequeueDeadLetter {
                queue: Q.into(),
                offset: a,
            },
            Code::NotFound,
            "dead letter",
        ),
        (
            Command::DeleteQueue {
                name: "nope".into(),
            },
            Code::NotFound,
            "nope",
        ),
    ];
    for (command, code, names) in cases {
        let before = sim.state.queues_snapshot();
        let err = sim.run(command).unwrap_err();
        assert_eq!(err.code(), code, "{err}");
        assert!(
            err.to_string().contains(names),
            "`{err}` should name `{names}`"
        );
        assert_eq!(
            sim.state.queues_snapshot(),
            before,
            "error changed the state: {err}"
        );
    }
    // Creating the same queue with the same config again is harmless.
    let again = sim
        .run(Command::CreateQueue {
            name: Q.into(),
            config: config(),
        })
        .unwrap();
    assert!(matches!(again, Reply::QueueCreated { created: false, .. }));
}

#[test]
fn leases_are_clamped_to_the_queue_maximum_and_extend_pushes_the_deadline() {
    let mut sim = Sim::with_queue(QueueConfig {
        lease_ms_max: 2_000,
        ..config()
    });
    let a = sim.enqueue("a", None);
    let d = sim.fetch_as("w", 1, 60_000).remove(0);
    assert_eq!(d.deadline_ms, sim.now_ms + 2_000);
    sim.advance(1_500);
    let reply = sim
        .run(Command::Extend {
            queue: Q.into(),
            offset: a,
            fence: d.fence,
            lease_ms: 1_000,
        })
        .unwrap();
    assert_eq!(
        reply,
        Reply::Extended {
            deadline_ms: sim.now_ms + 1_000
        }
    );
    sim.advance(900);
    assert_eq!(sim.tick(), 0, "the extended lease is still live");
    sim.advance(100);
    assert_eq!(sim.tick(), 1);
    assert_eq!(
        sim.ack(a, d.fence),
        AckResult::Failed(Error::LeaseLost {
            offset: a,
            fence: d.fence
        })
    );
}

#[test]
fn cluster_time_never_runs_backwards() {
    let mut sim = Sim::with_queue(config());
    let a = sim.enqueue("a", None);
    let d = sim.fetch_as("w", 1, 1_000).remove(0);
    // A new leader with a slower clock stamps an earlier time: the lease
    // must still expire no earlier than its deadline, and no later than
    // the first stamp past it.
    sim.now_ms -= 500;
    assert_eq!(sim.tick(), 0);
    assert_eq!(sim.state.clock_ms(), d.deadline_ms - 1_000);
    sim.now_ms = d.deadline_ms;
    assert_eq!(sim.tick(), 1);
    let _ = a;
}

#[test]
fn offsets_are_never_reused_and_the_ack_floor_follows_the_oldest_unfinished_job() {
    let mut sim = Sim::with_queue(config());
    let a = sim.enqueue("a", None);
    let b = sim.enqueue("b", None);
    let ds = sim.fetch(2);
    assert_eq!(sim.stats().ack_floor, a);
    sim.ack(b, ds[1].fence);
    assert_eq!(sim.stats().ack_floor, a, "a is unfinished");
    sim.ack(a, ds[0].fence);
    assert_eq!(sim.stats().ack_floor, 2);
    // Deleting and recreating the queue starts a new incarnation, whose
    // offsets continue above the old one's (SPEC §1: never reused).
    sim.run(Command::DeleteQueue { name: Q.into() }).unwrap();
    sim.run(Command::CreateQueue {
        name: Q.into(),
        config: config(),
    })
    .unwrap();
    let c = sim.enqueue("c", None);
    let d = sim.fetch(1).remove(0);
    assert_eq!(c, 2);
    assert_ne!(d.queue_id, ds[0].queue_id);
}

#[test]
fn stats_and_group_listing_report_the_state() {
    let mut sim = Sim::with_queue(config());
    for i in 0..3 {
        sim.enqueue(&format!("g{i}"), Some("alpha"));
    }
    sim.enqueue("b0", Some("beta"));
    let mut later = job("d", Some("delta"));
    later.delay_ms = 10_000;
    sim.enqueue_jobs(vec![later]).unwrap();
    sim.advance(250);
    let d = sim.fetch_as("worker-7", 1, 0).remove(0);
    assert_eq!(d.offset, 0);
    sim.run(Command::PauseGroup {
        queue: Q.into(),
        group: "beta".into(),
    })
    .unwrap();

    let stats = sim.stats();
    assert_eq!(
        (stats.ready, stats.delayed, stats.leased, stats.dead),
        (3, 1, 1, 0)
    );
    assert_eq!(stats.next_offset, 5);
    assert_eq!(
        stats.oldest_ready_age_ms, 0,
        "beta is paused and delta delayed: nothing is fetchable"
    );

    let page = sim
        .state
        .list_groups(Q, &GroupFilter::default(), None, 2)
        .unwrap();
    assert_eq!(
        page.groups
            .iter()
            .map(|g| g.key.as_str())
            .collect::<Vec<_>>(),
        vec!["alpha", "beta"]
    );
    assert_eq!(page.groups[0].backlog, 3);
    assert_eq!(page.groups[0].lease_holder.as_deref(), Some("worker-7"));
    assert_eq!(page.groups[0].head_age_ms, 250);
    assert!(page.groups[1].paused);
    let rest = sim
        .state
        .list_groups(Q, &GroupFilter::default(), page.next_after.as_deref(), 2)
        .unwrap();
    assert_eq!(
        rest.groups
            .iter()
            .map(|g| g.key.as_str())
            .collect::<Vec<_>>(),
        vec!["delta"]
    );
    assert_eq!(rest.next_after, None);

    let leased = GroupFilter {
        status: GroupStatus::Leased,
        ..GroupFilter::default()
    };
    let only = sim.state.list_groups(Q, &leased, None, 10).unwrap();
    assert_eq!(only.groups.len(), 1);
    let prefixed = GroupFilter {
        key_prefix: "de".into(),
        ..GroupFilter::default()
    };
    assert_eq!(
        sim.state
            .list_groups(Q, &prefixed, None, 10)
            .unwrap()
            .groups[0]
            .key,
        "delta"
    );
}

#[test]
fn a_snapshot_restores_an_identical_state() {
    let mut sim = Sim::with_queue(QueueConfig {
        max_attempts: 2,
        ..config()
    });
    for i in 0..20 {
        sim.enqueue(&format!("j{i}"), Some(["a", "b", "c"][i % 3]));
    }
    let ds = sim.fetch(3);
    sim.ack(ds[0].offset, ds[0].fence);
    sim.nack(&ds[1], 0).unwrap();
    let bytes = sim.state.snapshot();
    let restored = State::restore(&bytes).unwrap();
    assert_eq!(restored, sim.state);
    assert_eq!(restored.snapshot(), bytes);
    assert_eq!(restored.digest(), sim.state.digest());
    // Corrupt or truncated bytes are refused, never half-loaded.
    assert!(State::restore(&bytes[..bytes.len() / 2]).is_err());
    assert!(State::restore(&[]).is_err());
}

fn open_session(sim: &mut Sim) -> u64 {
    match sim.run(Command::OpenSession).unwrap() {
        Reply::SessionOpened { session } => session,
        other => panic!("{other:?}"),
    }
}

fn sequenced(session: u64, seq: u64, command: Command) -> Command {
    Command::Sequenced {
        sequence: Sequence {
            session,
            seq,
            floor: 1,
            try_number: TryNumber::default(),
        },
        command: Box::new(command),
    }
}

fn fetch_command(max: u32) -> Command {
    Command::Fetch {
        queue: Q.into(),
        consumer: "w".into(),
        max,
        lease_ms: 0,
    }
}

#[test]
fn a_repeated_sequenced_fetch_grants_nothing_new_and_returns_the_held_leases() {
    let mut sim = Sim::with_queue(config());
    let a = sim.enqueue("a", Some("ga"));
    sim.enqueue("b", Some("gb"));
    let session = open_session(&mut sim);
    let first = sim.run(sequenced(session, 1, fetch_command(1))).unwrap();
    let again = sim.run(sequenced(session, 1, fetch_command(1))).unwrap();
    assert_eq!(first, again);
    assert_eq!(sim.stats().leased, 1);
    assert_eq!(sim.stats().ready, 1);

    // Once the lease expired, a late repeat hands out nothing it no
    // longer holds.
    let Reply::Fetched(deliveries) = first else {
        panic!("{first:?}")
    };
    assert_eq!(offsets(&deliveries), vec![a]);
    sim.advance(1_000);
    sim.tick();
    assert_eq!(
        sim.run(sequenced(session, 1, fetch_command(1))).unwrap(),
        Reply::Fetched(Vec::new())
    );
}

#[test]
fn a_repeated_sequenced_nack_gets_its_first_answer_not_lease_lost() {
    let mut sim = Sim::with_queue(config());
    sim.enqueue("a", Some("g"));
    let d = sim.fetch(1).remove(0);
    let session = open_session(&mut sim);
    let nack = Command::Nack {
        queue: Q.into(),
        offset: d.offset,
        fence: d.fence,
        delay_ms: 0,
    };
    let first = sim.run(sequenced(session, 1, nack.clone())).unwrap();
    assert_eq!(sim.run(sequenced(session, 1, nack.clone())).unwrap(), first);
    // Without a session the repeat is a second, refused, nack.
    assert!(matches!(sim.run(nack), Err(Error::LeaseLost { .. })));
}

#[test]
fn an_unknown_session_is_refused_by_precheck_and_apply_alike() {
    let mut sim = Sim::with_queue(config());
    let command = sequenced(42, 1, fetch_command(1));
    assert_eq!(
        sim.state.precheck(&command),
        Err(Error::SessionUnknown { session: 42 })
    );
    assert_eq!(sim.run(command), Err(Error::SessionUnknown { session: 42 }));
    assert_eq!(sim.state.sessions_count(), 0);
}

#[test]
fn a_session_command_cannot_be_sequenced() {
    let mut sim = Sim::with_queue(config());
    let session = open_session(&mut sim);
    for inner in [
        Command::OpenSession,
        Command::Tick,
        sequenced(session, 1, fetch_command(1)),
    ] {
        let command = sequenced(session, 2, inner);
        assert!(matches!(
            sim.state.precheck(&command),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            sim.run(command),
            Err(Error::InvalidArgument { .. })
        ));
    }
}

#[test]
fn an_idle_session_expires_on_a_tick() {
    let mut sim = Sim::with_queue(config());
    let session = open_session(&mut sim);
    sim.advance(limits::SESSION_IDLE_MS + 1);
    sim.tick();
    assert_eq!(sim.state.sessions_count(), 0);
    assert_eq!(
        sim.run(sequenced(session, 1, fetch_command(1))),
        Err(Error::SessionUnknown { session })
    );
}

/// Issue 15: a queue name no queue could have is the caller's mistake,
/// `INVALID_ARGUMENT` naming `queue`, on every command and read, from
/// `precheck` and `apply` alike, as `CreateQueue` already answered. It was
/// `NOT_FOUND` on Enqueue, Fetch and the rest, which reads as "create it
/// and retry".
#[test]
fn a_malformed_queue_name_is_invalid_argument_everywhere() {
    let mut sim = Sim::with_queue(config());
    for name in ["", "bad name!"] {
        let commands = vec![
            Command::Enqueue {
                queue: name.into(),
                jobs: vec![job("x", None)],
            },
            Command::Fetch {
                queue: name.into(),
                consumer: "w".into(),
                max: 1,
                lease_ms: 0,
            },
            Command::Ack {
                queue: name.into(),
                items: vec![AckItem {
                    offset: 0,
                    fence: 1,
                }],
            },
            Command::Nack {
                queue: name.into(),
                offset: 0,
                fence: 1,
                delay_ms: 0,
            },
            Command::Extend {
                queue: name.into(),
                offset: 0,
                fence: 1,
                lease_ms: 0,
            },
            Command::Release {
                queue: name.into(),
                offset: 0,
                fence: 1,
            },
            Command::DeadLetter {
                queue: name.into(),
                offset: 0,
                fence: 1,
                reason: String::new(),
            },
            Command::PauseGroup {
                queue: name.into(),
                group: "g".into(),
            },
            Command::ResumeGroup {
                queue: name.into(),
                group: "g".into(),
            },
            Command::RequeueDeadLetter {
                queue: name.into(),
                offset: 0,
            },
            Command::PurgeDeadLetters {
                queue: name.into(),
                which: PurgeSelector::All,
            },
            Command::DeleteQueue { name: name.into() },
            Command::UpdateQueue {
                name: name.into(),
                config: config(),
            },
            Command::CreateQueue {
                name: name.into(),
                config: config(),
            },
        ];
        for command in commands {
            let what = format!("{command:?}");
            let checked = sim.state.precheck(&command).unwrap_err();
            assert_eq!(
                checked.code(),
                Code::InvalidArgument,
                "precheck {what}: {checked}"
            );
            let applied = sim.run(command).unwrap_err();
            assert_eq!(applied, checked, "apply and precheck agree on {what}");
            assert!(applied.to_string().contains("queue"), "{applied}");
        }
        for read in [
            sim.state.stats(name).map(|_| ()),
            sim.state.queue_info(name).map(|_| ()),
            sim.state
                .list_groups(name, &GroupFilter::default(), None, 10)
                .map(|_| ()),
            sim.state.list_dead_letters(name, None, 10).map(|_| ()),
        ] {
            assert_eq!(read.unwrap_err().code(), Code::InvalidArgument);
        }
    }
}

/// SPEC §1: offsets are never reused. A queue deleted and created again
/// (under its old name or another) gives offsets above every offset the
/// deleted one gave, also after a snapshot and restore. Before, the new
/// queue started again at offset 0, so a consumer or a log that keys on
/// (queue, offset) saw two jobs under one offset.
#[test]
fn a_queue_created_again_never_reuses_an_offset() {
    let mut sim = Sim::with_queue(config());
    let old: Vec<u64> = (0..3)
        .map(|i| sim.enqueue(&format!("j{i}"), None))
        .collect();
    assert_eq!(old, vec![0, 1, 2]);
    sim.run(Command::DeleteQueue { name: Q.into() }).unwrap();
    // Through a snapshot, as a node that restarts or catches up sees it.
    sim.state = State::restore(&sim.state.snapshot()).unwrap();
    sim.run(Command::CreateQueue {
        name: Q.into(),
        config: config(),
    })
    .unwrap();
    let again = sim.enqueue("j0", None);
    assert!(
        again > *old.iter().max().unwrap(),
        "offset {again} of the queue created again reuses one of {old:?}"
    );
    assert_eq!(sim.stats().ack_floor, again, "nothing below is pending");
    sim.run(Command::CreateQueue {
        name: "other".into(),
        config: config(),
    })
    .unwrap();
    let results = sim
        .run(Command::Enqueue {
            queue: "other".into(),
            jobs: vec![job("o", None)],
        })
        .unwrap();
    let Reply::Enqueued(results) = results else {
        panic!("{results:?}")
    };
    let EnqueueResult::Created { offset } = results[0] else {
        panic!("{results:?}")
    };
    assert!(offset > 2, "a new queue starts above every deleted offset");
}

// ---------------------------------------------------------------- chained jobs

const NEXT: &str = "next";

fn chain(items: Vec<AckItem>, then: Vec<Chained>) -> Command {
    Command::AckThen {
        queue: Q.into(),
        items,
        then,
    }
}

fn chained(queue: &str, ids: &[&str]) -> Chained {
    Chained {
        queue: queue.into(),
        jobs: ids.iter().map(|id| job(id, Some("step"))).collect(),
    }
}

fn with_next_queue(next: QueueConfig) -> Sim {
    let mut sim = Sim::with_queue(config());
    sim.run(Command::CreateQueue {
        name: NEXT.into(),
        config: next,
    })
    .unwrap();
    sim
}

#[test]
fn an_ack_with_chained_jobs_finishes_one_step_and_enqueues_the_next_together() {
    let mut sim = with_next_queue(config());
    let a = sim.enqueue("a", Some("g"));
    let d = sim.fetch(1).remove(0);
    let item = AckItem {
        offset: a,
        fence: d.fence,
    };
    let reply = sim
        .run(chain(
            vec![item],
            vec![chained(NEXT, &["a.2"]), chained(Q, &["a.3"])],
        ))
        .unwrap();
    let Reply::AckedThen { acked, then } = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(acked, vec![AckResult::Acked]);
    assert_eq!(then.len(), 2);
    assert!(matches!(then[0][..], [EnqueueResult::Created { .. }]));
    assert_eq!(sim.state.stats(NEXT).unwrap().ready, 1);
    // The source queue lost `a` and gained `a.3`.
    assert_eq!(sim.stats().counters.acked, 1);
    assert_eq!(sim.stats().ready, 1);

    // The same chained ack again (a retry whose answer was lost): answered
    // as already acked, and the next step is not enqueued twice.
    let again = sim
        .run(chain(
            vec![item],
            vec![chained(NEXT, &["a.2"]), chained(Q, &["a.3"])],
        ))
        .unwrap();
    assert_eq!(
        again,
        Reply::AckedThen {
            acked: vec![AckResult::AlreadyAcked],
            then: vec![]
        }
    );
    assert_eq!(sim.state.stats(NEXT).unwrap().counters.enqueued, 1);
    assert_eq!(sim.state.stats(NEXT).unwrap().counters.duplicates, 0);
}

#[test]
fn a_chained_ack_whose_lease_is_lost_enqueues_nothing() {
    let mut sim = with_next_queue(config());
    let a = sim.enqueue("a", None);
    let b = sim.enqueue("b", None);
    let ds = sim.fetch(2);
    // One of two items lost its lease (expired and granted again): the
    // whole chained ack is refused, the other item stays leased.
    sim.advance(1_000);
    sim.tick();
    sim.advance(200);
    let again = sim.fetch(2);
    let items = vec![
        AckItem {
            offset: a,
            fence: again.iter().find(|d| d.offset == a).unwrap().fence,
        },
        AckItem {
            offset: b,
            fence: ds.iter().find(|d| d.offset == b).unwrap().fence,
        },
    ];
    let err = sim
        .run(chain(items, vec![chained(NEXT, &["a.2"])]))
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert_eq!(sim.state.stats(NEXT).unwrap().next_offset, 0);
    assert_eq!(sim.stats().leased, 2);
    // A mix of a repeated item and a live one is no repeat: refused too.
    let fence_a = items_fence(&again, a);
    assert_eq!(sim.ack(a, fence_a), AckResult::Acked);
    let b_fence = items_fence(&again, b);
    let mixed = vec![
        AckItem {
            offset: a,
            fence: fence_a,
        },
        AckItem {
            offset: b,
            fence: b_fence,
        },
    ];
    let err = sim
        .run(chain(mixed, vec![chained(NEXT, &["a.2"])]))
        .unwrap_err();
    assert_eq!(
        err,
        Error::LeaseLost {
            offset: a,
            fence: fence_a
        }
    );
    assert_eq!(sim.stats().leased, 1);
}

fn items_fence(deliveries: &[Delivery], offset: u64) -> u64 {
    deliveries
        .iter()
        .find(|d| d.offset == offset)
        .unwrap()
        .fence
}

#[test]
fn a_chained_ack_past_a_target_limit_acks_nothing() {
    let mut sim = with_next_queue(QueueConfig {
        max_jobs: 1,
        ..config()
    });
    let a = sim.enqueue("a", None);
    let d = sim.fetch(1).remove(0);
    let item = AckItem {
        offset: a,
        fence: d.fence,
    };
    let err = sim
        .run(chain(vec![item], vec![chained(NEXT, &["x", "y"])]))
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.to_string().contains("max_jobs"), "{err}");
    assert_eq!(sim.stats().leased, 1, "the ack did not happen");

    // A missing target queue, an invalid job, a queue named twice and too
    // many queues: each refused by name, before anything changes, and the
    // leader's precheck refuses each the same way.
    let missing = chain(vec![item], vec![chained("nowhere", &["x"])]);
    let invalid = chain(vec![item], vec![chained(NEXT, &[""])]);
    let twice = chain(
        vec![item],
        vec![chained(NEXT, &["x"]), chained(NEXT, &["y"])],
    );
    let many = chain(
        vec![item],
        (0..=limits::CHAINED_QUEUES_MAX)
            .map(|i| chained(&format!("q{i}"), &["x"]))
            .collect(),
    );
    for (command, code, names) in [
        (missing, Code::NotFound, "nowhere"),
        (invalid, Code::InvalidArgument, "jobs[0].id"),
        (twice, Code::InvalidArgument, "appears twice"),
        (many, Code::InvalidArgument, "then"),
    ] {
        let pre = sim.state.precheck(&command).unwrap_err();
        let err = sim.run(command).unwrap_err();
        assert_eq!(pre, err);
        assert_eq!(err.code(), code, "{err}");
        assert!(err.to_string().contains(names), "{err}");
    }
    assert_eq!(sim.stats().leased, 1);
    // Within the limit it goes through.
    let reply = sim
        .run(chain(vec![item], vec![chained(NEXT, &["x"])]))
        .unwrap();
    assert!(matches!(reply, Reply::AckedThen { .. }), "{reply:?}");
    assert_eq!(sim.stats().leased, 0);
}

// ---------------------------------------------------------------- group control

#[test]
fn a_skipped_head_goes_to_the_dead_letters_and_its_group_moves_on() {
    let mut sim = Sim::with_queue(QueueConfig {
        group_policy: GroupPolicy::Park,
        ..config()
    });
    let a = sim.enqueue("a", Some("g"));
    let b = sim.enqueue("b", Some("g"));
    let held = sim.fetch(1).remove(0);
    let info = sim.state.get_group(Q, "g").unwrap();
    assert_eq!(info.head_offset, Some(a));
    assert_eq!(info.lease_holder.as_deref(), Some("worker"));
    assert_eq!(info.lease_deadline_ms, Some(held.deadline_ms));

    let skip = Command::SkipHead {
        queue: Q.into(),
        group: "g".into(),
        reason: "poison, by hand".into(),
    };
    assert_eq!(sim.run(skip).unwrap(), Reply::Skipped { offset: a });
    // The holder's lease is gone: its late ack is refused.
    assert!(matches!(
        sim.ack(a, held.fence),
        AckResult::Failed(Error::LeaseLost { .. })
    ));
    // A park queue does not park the group: the next job runs.
    let info = sim.state.get_group(Q, "g").unwrap();
    assert!(!info.paused, "{info:?}");
    assert_eq!(offsets(&sim.fetch(1)), vec![b]);
    let dead = sim
        .state
        .list_dead_letters(Q, None, 10)
        .unwrap()
        .dead_letters;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "skipped: poison, by hand");
    assert_eq!(dead[0].attempts, 1, "the attempt in flight ended");

    // Nothing to skip: named errors.
    let missing = Command::SkipHead {
        queue: Q.into(),
        group: "nobody".into(),
        reason: String::new(),
    };
    let err = sim.run(missing).unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.to_string().contains("group `nobody`"), "{err}");
    assert!(sim.state.get_group(Q, "nobody").is_err());
}

#[test]
fn the_top_groups_come_by_backlog_and_by_age_and_survive_a_restore() {
    let mut sim = Sim::with_queue(config());
    for (group, n) in [("old", 2), ("big", 5), ("mid", 3)] {
        for i in 0..n {
            sim.enqueue(&format!("{group}-{i}"), Some(group));
        }
        sim.advance(10);
    }
    let keys =
        |groups: Vec<GroupInfo>| -> Vec<String> { groups.into_iter().map(|g| g.key).collect() };
    let by_backlog = sim.state.top_groups(Q, GroupRank::Backlog, 2).unwrap();
    assert_eq!(keys(by_backlog), vec!["big", "mid"]);
    let by_age = sim.state.top_groups(Q, GroupRank::Age, 10).unwrap();
    assert_eq!(keys(by_age), vec!["old", "big", "mid"]);
    // Finishing the old group's head keeps it first by age (its next job
    // is still older than the others' heads) and shrinks its backlog.
    let d = sim.fetch(3);
    for delivery in d.iter().filter(|d| d.group.as_deref() == Some("big")) {
        assert_eq!(sim.ack(delivery.offset, delivery.fence), AckResult::Acked);
    }
    let restored = State::restore(&sim.state.snapshot()).unwrap();
    assert_eq!(restored, sim.state, "the indexes are rebuilt on restore");
    let by_backlog = restored.top_groups(Q, GroupRank::Backlog, 3).unwrap();
    assert_eq!(keys(by_backlog), vec!["big", "mid", "old"]);
    assert_eq!(
        restored
            .top_groups(Q, GroupRank::Age, 0)
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
}

// ---------------------------------------------------------------- rate limits

fn rated(rates: RateLimits) -> Sim {
    Sim::with_queue(QueueConfig { rates, ..config() })
}

#[test]
fn an_enqueue_past_the_queue_rate_is_refused_with_the_limit_and_the_retry_time() {
    let mut sim = rated(RateLimits {
        enqueue_rate_max: 10,
        rate_window_ms: 1_000,
        ..RateLimits::default()
    });
    let ten: Vec<NewJob> = (0..10).map(|i| job(&format!("j{i}"), None)).collect();
    sim.enqueue_jobs(ten).unwrap();
    // The bucket is empty: one more job waits a tenth of the window.
    let err = sim.enqueue_jobs(vec![job("late", None)]).unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.to_string().contains("enqueue_rate_max"), "{err}");
    assert!(err.to_string().contains("retry in 100 ms"), "{err}");
    assert_eq!(sim.stats().next_offset, 10, "nothing stored");
    // A duplicate takes no token.
    let again = sim.enqueue_jobs(vec![job("j0", None)]).unwrap();
    assert!(matches!(again[0], EnqueueResult::Duplicate { .. }));
    sim.advance(100);
    sim.enqueue("late", None);
    // A batch larger than the burst can never pass: it says to split it.
    sim.advance(10_000);
    let eleven: Vec<NewJob> = (0..11).map(|i| job(&format!("k{i}"), None)).collect();
    let err = sim.enqueue_jobs(eleven).unwrap_err();
    assert!(err.to_string().contains("split it"), "{err}");
}

#[test]
fn a_group_past_its_rate_waits_as_a_delayed_head_and_keeps_its_order() {
    let mut sim = rated(RateLimits {
        group_rate_max: 2,
        group_burst: 1,
        rate_window_ms: 1_000,
        ..RateLimits::default()
    });
    let a = sim.enqueue("a", Some("g"));
    let b = sim.enqueue("b", Some("g"));
    let other = sim.enqueue("o", Some("h"));
    let first = sim.fetch(10);
    assert_eq!(offsets(&first), vec![a, other]);
    let fence = first[0].fence;
    assert_eq!(sim.ack(a, fence), AckResult::Acked);
    // `g` took its one token: `b` waits 500 ms, shown as delayed, and no
    // other job of `g` overtakes it.
    sim.enqueue("c", Some("g"));
    assert!(sim.fetch(10).is_empty());
    assert_eq!(sim.stats().delayed, 1);
    assert_eq!(sim.state.next_due_ms(), Some(sim.now_ms + 500));
    sim.advance(499);
    sim.tick();
    assert!(sim.fetch(10).is_empty());
    sim.advance(1);
    sim.tick();
    let next = sim.fetch(10);
    assert_eq!(offsets(&next), vec![b]);
    // A nack's retry waits for the later of its backoff and the rate.
    sim.nack(&next[0], 10).unwrap();
    sim.advance(10);
    assert!(
        sim.fetch(10).is_empty(),
        "the backoff ended, the rate did not"
    );
    sim.advance(490);
    sim.tick();
    assert_eq!(offsets(&sim.fetch(10)), vec![b]);
}

// ---------------------------------------------------------------- fairness

/// A queue sharing deliveries by `weights` (every other key weighs 1).
fn fair(weights: &[(&str, u32)]) -> Sim {
    Sim::with_queue(QueueConfig {
        fairness: Fairness {
            weights: weights.iter().map(|(k, w)| (k.to_string(), *w)).collect(),
            weight_default: 0,
        },
        ..config()
    })
}

fn tenant_job(id: &str, group: &str, key: Option<&str>, priority: u8) -> NewJob {
    NewJob {
        fairness_key: key.map(Into::into),
        priority,
        ..job(id, Some(group))
    }
}

/// Enqueues `groups` groups of `per_group` jobs each for `tenant` at
/// `priority` and returns the offset of each job with its tenant.
fn backlog(
    sim: &mut Sim,
    tenant: &str,
    groups: usize,
    per_group: usize,
    priority: u8,
) -> Vec<(u64, String)> {
    let jobs: Vec<NewJob> = (0..groups)
        .flat_map(|g| {
            (0..per_group).map(move |j| {
                tenant_job(
                    &format!("{tenant}-{priority}-{g}-{j}"),
                    &format!("{tenant}-{g}"),
                    Some(tenant),
                    priority,
                )
            })
        })
        .collect();
    let mut out = Vec::new();
    for chunk in jobs.chunks(1_000) {
        for result in sim.enqueue_jobs(chunk.to_vec()).unwrap() {
            let EnqueueResult::Created { offset } = result else {
                panic!("expected CREATED, got {result:?}");
            };
            out.push((offset, tenant.to_string()));
        }
    }
    out
}

/// Fetches one job at a time and acks it, `n` times: the deliveries.
fn deliver_one_by_one(sim: &mut Sim, n: usize) -> Vec<Delivery> {
    (0..n)
        .map(|_| {
            let d = sim.fetch(1).remove(0);
            assert_eq!(sim.ack(d.offset, d.fence), AckResult::Acked);
            d
        })
        .collect()
}

fn tenants_of(deliveries: &[Delivery], owners: &[(u64, String)]) -> Vec<String> {
    let owner: std::collections::BTreeMap<u64, &str> =
        owners.iter().map(|(o, t)| (*o, t.as_str())).collect();
    deliveries
        .iter()
        .map(|d| owner[&d.offset].to_string())
        .collect()
}

fn count(tenants: &[String], tenant: &str) -> usize {
    tenants.iter().filter(|t| *t == tenant).count()
}

#[test]
fn a_tenant_with_a_hundred_times_the_groups_does_not_starve_a_small_one() {
    // Regression: by offset alone, the 1,000 older heads of `big` would
    // take the first 1,000 deliveries and `small` none of the first 20.
    let mut sim = fair(&[]);
    let mut owners = backlog(&mut sim, "big", 1_000, 1, 0);
    owners.extend(backlog(&mut sim, "small", 10, 2, 0));
    let tenants = tenants_of(&deliver_one_by_one(&mut sim, 20), &owners);
    let small = count(&tenants, "small");
    assert!(
        (9..=11).contains(&small),
        "small got {small} of 20: {tenants:?}"
    );
    // One fetch of many shares the same way.
    let mut sim = fair(&[]);
    let mut owners = backlog(&mut sim, "big", 1_000, 1, 0);
    owners.extend(backlog(&mut sim, "small", 10, 1, 0));
    let tenants = tenants_of(&sim.fetch(20), &owners);
    assert_eq!(count(&tenants, "small"), 10, "{tenants:?}");
}

#[test]
fn weights_three_to_one_share_deliveries_three_to_one() {
    let mut sim = fair(&[("gold", 3), ("free", 1)]);
    let mut owners = backlog(&mut sim, "free", 100, 1, 0);
    owners.extend(backlog(&mut sim, "gold", 100, 1, 0));
    let tenants = tenants_of(&deliver_one_by_one(&mut sim, 40), &owners);
    let gold = count(&tenants, "gold");
    assert!(
        (29..=31).contains(&gold),
        "gold got {gold} of 40: {tenants:?}"
    );
    // A weight change applies from then on.
    let mut equal = QueueConfig {
        fairness: Fairness::default(),
        ..config()
    };
    equal.fairness.weight_default = 1;
    sim.run(Command::UpdateQueue {
        name: Q.into(),
        config: equal,
    })
    .unwrap();
    let tenants = tenants_of(&deliver_one_by_one(&mut sim, 40), &owners);
    let gold = count(&tenants, "gold");
    assert!(
        (19..=21).contains(&gold),
        "gold got {gold} of 40: {tenants:?}"
    );
}

#[test]
fn priority_ranks_before_fairness() {
    let mut sim = fair(&[]);
    let mut owners = backlog(&mut sim, "big", 100, 1, 0);
    owners.extend(backlog(&mut sim, "small", 10, 1, 0));
    // `big` has had its share of the low band: `small` is next there.
    let first = tenants_of(&deliver_one_by_one(&mut sim, 5), &owners);
    assert_eq!(first, ["big", "small", "big", "small", "big"]);
    // A high-priority head of `big` still goes before every lower head.
    owners.extend(backlog(&mut sim, "big", 1, 1, 5));
    let ds = deliver_one_by_one(&mut sim, 3);
    assert_eq!(ds[0].priority, 5);
    assert_eq!(tenants_of(&ds, &owners), ["big", "small", "big"]);
}

#[test]
fn fairness_never_reorders_a_group() {
    let mut sim = fair(&[("heavy", 5)]);
    let jobs: Vec<NewJob> = (0..3)
        .flat_map(|i| {
            [
                tenant_job(&format!("g{i}"), "g", Some("heavy"), 0),
                tenant_job(&format!("h{i}"), "h", Some("light"), 0),
            ]
        })
        .collect();
    sim.enqueue_jobs(jobs).unwrap();
    // Only heads are candidates, whatever the weights.
    let heads = sim.fetch(10);
    assert_eq!(offsets(&heads), vec![0, 1]);
    // A nacked head keeps its group waiting, and comes back first.
    sim.nack(&heads[0], 50).unwrap();
    sim.ack(heads[1].offset, heads[1].fence);
    sim.advance(50);
    let mut order = offsets(&heads[1..]);
    loop {
        let ds = sim.fetch(10);
        if ds.is_empty() {
            break;
        }
        for d in ds {
            order.push(d.offset);
            sim.ack(d.offset, d.fence);
        }
    }
    let g: Vec<u64> = order.iter().copied().filter(|o| o % 2 == 0).collect();
    let h: Vec<u64> = order.iter().copied().filter(|o| o % 2 == 1).collect();
    assert_eq!(g, vec![0, 2, 4]);
    assert_eq!(h, vec![1, 3, 5]);
}

#[test]
fn without_fairness_keys_the_older_head_goes_first_as_before() {
    // Mixed priorities and groups, no key anywhere (and weights set for a
    // key nobody uses): priority, then offset, exactly as before.
    let mut sim = fair(&[("unused", 7)]);
    let priorities = [0u8, 3, 0, 9, 3, 0, 9, 1];
    let jobs: Vec<NewJob> = priorities
        .iter()
        .enumerate()
        .map(|(i, p)| NewJob {
            priority: *p,
            ..job(&format!("j{i}"), Some(&format!("g{i}")))
        })
        .collect();
    sim.enqueue_jobs(jobs.clone()).unwrap();
    let mut want: Vec<(std::cmp::Reverse<u8>, u64)> = priorities
        .iter()
        .enumerate()
        .map(|(i, p)| (std::cmp::Reverse(*p), i as u64))
        .collect();
    want.sort();
    let want: Vec<u64> = want.into_iter().map(|(_, o)| o).collect();
    let got: Vec<u64> = deliver_one_by_one(&mut sim, 8)
        .iter()
        .map(|d| d.offset)
        .collect();
    assert_eq!(got, want);
    // One key for every job is the same as none.
    let mut sim = fair(&[]);
    let keyed = jobs
        .into_iter()
        .map(|j| NewJob {
            fairness_key: Some("only".into()),
            ..j
        })
        .collect();
    sim.enqueue_jobs(keyed).unwrap();
    assert_eq!(offsets(&sim.fetch(8)), want);
}

#[test]
fn virtual_times_survive_a_snapshot_so_a_restored_replica_picks_alike() {
    let mut sim = fair(&[("a", 2)]);
    let mut owners = backlog(&mut sim, "a", 20, 2, 0);
    owners.extend(backlog(&mut sim, "b", 20, 2, 0));
    owners.extend(backlog(&mut sim, "c", 5, 1, 3));
    deliver_one_by_one(&mut sim, 13);
    let mut restored = Sim {
        state: State::restore(&sim.state.snapshot()).unwrap(),
        store: sim.store.clone(),
        index: sim.index,
        now_ms: sim.now_ms,
    };
    assert_eq!(restored.state, sim.state);
    let here = deliver_one_by_one(&mut sim, 30);
    let there = deliver_one_by_one(&mut restored, 30);
    assert_eq!(here, there);
    assert_eq!(restored.state.snapshot(), sim.state.snapshot());
}

#[test]
fn bad_fairness_input_is_refused_by_name() {
    let mut sim = fair(&[]);
    let long = "k".repeat(limits::FAIRNESS_KEY_BYTES_MAX + 1);
    let weights = |pairs: Vec<(String, u32)>| QueueConfig {
        fairness: Fairness {
            weights: pairs.into_iter().collect(),
            weight_default: 0,
        },
        ..config()
    };
    let too_many = (0..=limits::FAIRNESS_WEIGHTS_MAX)
        .map(|i| (format!("t{i}"), 1))
        .collect();
    let cases: Vec<(Command, &str)> = vec![
        (
            Command::Enqueue {
                queue: Q.into(),
                jobs: vec![job("ok", None), tenant_job("x", "g", Some(&long), 0)],
            },
            "jobs[1].fairness_key",
        ),
        (
            Command::Enqueue {
                queue: Q.into(),
                jobs: vec![tenant_job("x", "g", Some(""), 0)],
            },
            "jobs[0].fairness_key",
        ),
        (
            Command::Enqueue {
                queue: Q.into(),
                jobs: vec![tenant_job("x", "g", Some("bad\nkey"), 0)],
            },
            "jobs[0].fairness_key",
        ),
        (
            Command::UpdateQueue {
                name: Q.into(),
                config: weights(vec![("acme".into(), 0)]),
            },
            "fairness.weights[\"acme\"]",
        ),
        (
            Command::CreateQueue {
                name: "q2".into(),
                config: weights(vec![("acme".into(), limits::FAIRNESS_WEIGHT_MAX + 1)]),
            },
            "fairness.weights[\"acme\"]",
        ),
        (
            Command::UpdateQueue {
                name: Q.into(),
                config: weights(vec![(long.clone(), 1)]),
            },
            "fairness.weights",
        ),
        (
            Command::UpdateQueue {
                name: Q.into(),
                config: weights(too_many),
            },
            "fairness.weights",
        ),
        (
            Command::UpdateQueue {
                name: Q.into(),
                config: QueueConfig {
                    fairness: Fairness {
                        weights: Default::default(),
                        weight_default: limits::FAIRNESS_WEIGHT_MAX + 1,
                    },
                    ..config()
                },
            },
            "fairness.weight_default",
        ),
    ];
    for (command, names) in cases {
        let before = sim.state.queues_snapshot();
        let precheck = sim.state.precheck(&command);
        let err = sim.run(command).unwrap_err();
        assert_eq!(precheck, Err(err.clone()), "precheck answers as apply");
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
        assert!(
            err.to_string().contains(names),
            "`{err}` should name `{names}`"
        );
        assert_eq!(sim.state.queues_snapshot(), before, "{err} changed state");
    }
}

// ---------------------------------------------------------------------------
// Subscriptions (SPEC 2.3a): several consumer groups over the same jobs.

fn in_sub(subscription: &str, command: Command) -> Command {
    Command::InSubscription {
        subscription: subscription.into(),
        command: Box::new(command),
    }
}

/// A queue `Q` under `config` with the named subscriptions.
fn subscribed(config: QueueConfig, names: &[&str]) -> Sim {
    let mut sim = Sim::with_queue(config);
    for name in names {
        let reply = sim.run(Command::CreateSubscription {
            queue: Q.into(),
            name: (*name).into(),
        });
        assert_eq!(reply, Ok(Reply::SubscriptionCreated { created: true }));
    }
    sim
}

/// Fetches up to `max` from subscription `sub` (`None`: the default one).
fn fetch_in(sim: &mut Sim, sub: Option<&str>, max: u32) -> Vec<Delivery> {
    let fetch = fetch_command(max);
    let command = match sub {
        Some(name) => in_sub(name, fetch),
        None => fetch,
    };
    match sim.run(command).expect("fetch") {
        Reply::Fetched(deliveries) => deliveries,
        other => panic!("fetch: {other:?}"),
    }
}

fn ack_command(d: &Delivery) -> Command {
    Command::Ack {
        queue: Q.into(),
        items: vec![AckItem {
            offset: d.offset,
            fence: d.fence,
        }],
    }
}

/// Acks `d` in `sub` and returns the effects of the ack.
fn ack_in(sim: &mut Sim, sub: Option<&str>, d: &Delivery) -> Vec<Effect> {
    let command = match sub {
        Some(name) => in_sub(name, ack_command(d)),
        None => ack_command(d),
    };
    let (reply, effects) = sim.run_with_effects(command);
    assert_eq!(reply, Ok(Reply::Acked(vec![AckResult::Acked])));
    effects
}

fn sub_stats(sim: &Sim, sub: &str) -> QueueStats {
    sim.state
        .subscription_stats(Q, sub)
        .expect("subscription stats")
}

fn deleted(effects: &[Effect]) -> Vec<u64> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::DeleteBlob { blob, .. } => Some(*blob),
            _ => None,
        })
        .collect()
}

#[test]
fn two_subscriptions_each_get_every_job_in_group_order_with_their_own_leases() {
    let mut sim = subscribed(config(), &["audit", "billing"]);
    let a = sim.enqueue("a", Some("g"));
    let b = sim.enqueue("b", Some("g"));
    let c = sim.enqueue("c", Some("h"));

    let audit = fetch_in(&mut sim, Some("audit"), 10);
    assert_eq!(offsets(&audit), vec![a, c], "one head per group");
    // Fetching in `audit` locked group g there only: `billing` and the
    // default subscription still get its head.
    let billing = fetch_in(&mut sim, Some("billing"), 10);
    assert_eq!(offsets(&billing), vec![a, c]);
    let default = fetch_in(&mut sim, None, 10);
    assert_eq!(offsets(&default), vec![a, c]);
    // The same job: the queue's offset and the same payload.
    assert_eq!(audit[0].blob, billing[0].blob);
    assert_eq!(sim.id_of(&audit[0]), "a");
    assert_eq!(sim.id_of(&billing[0]), "a");
    // Each has its own lease and fence.
    assert_ne!(audit[0].fence, billing[0].fence);
    assert!(sim
        .state
        .holds_lease_in(Q, Some("audit"), a, audit[0].fence));
    assert!(!sim
        .state
        .holds_lease_in(Q, Some("billing"), a, audit[0].fence));
    assert!(sim
        .state
        .holds_lease_in(Q, Some("billing"), a, billing[0].fence));
    assert!(sim.state.holds_lease(Q, a, default[0].fence));
    assert!(!sim.state.holds_lease(Q, a, audit[0].fence));
    assert!(!sim
        .state
        .holds_lease_in(Q, Some("nobody"), a, audit[0].fence));

    // A fence of one subscription is "lease lost" in another.
    let wrong = sim.run(in_sub("billing", ack_command(&audit[0])));
    assert_eq!(
        wrong,
        Ok(Reply::Acked(vec![AckResult::Failed(Error::LeaseLost {
            offset: a,
            fence: audit[0].fence
        })]))
    );

    // Group order per subscription: b comes once a is finished there.
    ack_in(&mut sim, Some("audit"), &audit[0]);
    assert_eq!(offsets(&fetch_in(&mut sim, Some("audit"), 10)), vec![b]);
    assert!(fetch_in(&mut sim, Some("billing"), 10).is_empty());
    ack_in(&mut sim, Some("billing"), &billing[0]);
    assert_eq!(offsets(&fetch_in(&mut sim, Some("billing"), 10)), vec![b]);
    let listed: Vec<String> = sim
        .state
        .list_subscriptions(Q)
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(listed, vec!["audit".to_string(), "billing".to_string()]);
    assert_eq!(sub_stats(&sim, "audit").leased, 2);
    assert_eq!(sub_stats(&sim, "audit").counters.acked, 1);
}

#[test]
fn a_payload_is_deleted_only_when_the_last_subscription_finishes_its_job() {
    let mut sim = subscribed(config(), &["s1", "s2"]);
    let a = sim.enqueue("a", Some("g"));

    let d = fetch_in(&mut sim, None, 1).remove(0);
    assert!(
        deleted(&ack_in(&mut sim, None, &d)).is_empty(),
        "s1, s2 hold it"
    );
    assert_eq!(sim.stats().ack_floor, a + 1, "done in the default one");
    assert_eq!(sub_stats(&sim, "s1").ready, 1, "not finished in s1");
    assert!(sim.store.get(d.queue_id, d.blob).is_some());

    let d1 = fetch_in(&mut sim, Some("s1"), 1).remove(0);
    assert_eq!(d1.offset, a);
    assert!(
        deleted(&ack_in(&mut sim, Some("s1"), &d1)).is_empty(),
        "s2 holds it"
    );

    let d2 = fetch_in(&mut sim, Some("s2"), 1).remove(0);
    assert_eq!(deleted(&ack_in(&mut sim, Some("s2"), &d2)), vec![d.blob]);
    assert!(sim.store.get(d.queue_id, d.blob).is_none());

    // A repeated ack in a subscription is answered OK and deletes nothing.
    let (reply, effects) = sim.run_with_effects(in_sub("s2", ack_command(&d2)));
    assert_eq!(reply, Ok(Reply::Acked(vec![AckResult::AlreadyAcked])));
    assert!(effects.is_empty());
}

#[test]
fn attempts_and_dead_letters_are_per_subscription() {
    let mut sim = subscribed(
        QueueConfig {
            max_attempts: 2,
            ..config()
        },
        &["s1"],
    );
    let a = sim.enqueue("a", Some("g"));
    for attempt in 1..=2 {
        let d = fetch_in(&mut sim, Some("s1"), 1).remove(0);
        assert_eq!((d.offset, d.attempt), (a, attempt));
        let nack = Command::Nack {
            queue: Q.into(),
            offset: d.offset,
            fence: d.fence,
            delay_ms: 1,
        };
        let dead = attempt == 2;
        assert!(matches!(
            sim.run(in_sub("s1", nack)),
            Ok(Reply::Nacked { dead: d, .. }) if d == dead
        ));
        sim.advance(1);
    }
    assert_eq!(sub_stats(&sim, "s1").dead, 1);
    assert_eq!(sim.stats().dead, 0);
    assert_eq!(
        sim.stats().ready,
        1,
        "the default subscription still has it"
    );
    let d = fetch_in(&mut sim, None, 1).remove(0);
    assert_eq!((d.offset, d.attempt), (a, 1), "its own first attempt");

    // Requeued in s1, it goes back there only, with its payload.
    let requeued = match sim.run(in_sub(
        "s1",
        Command::RequeueDeadLetter {
            queue: Q.into(),
            offset: a,
        },
    )) {
        Ok(Reply::Requeued { offset }) => offset,
        other => panic!("requeue: {other:?}"),
    };
    assert!(requeued > a);
    assert_eq!(
        sim.stats().next_offset,
        requeued + 1,
        "offsets are the queue's"
    );
    let again = fetch_in(&mut sim, Some("s1"), 1).remove(0);
    assert_eq!(
        (again.offset, again.blob, again.attempt),
        (requeued, d.blob, 1)
    );
    assert_eq!(sim.id_of(&again), "a");
    // Dead-lettered again and purged in s1: the default one still holds it.
    let kill = Command::DeadLetter {
        queue: Q.into(),
        offset: again.offset,
        fence: again.fence,
        reason: "poison".into(),
    };
    sim.run(in_sub("s1", kill)).unwrap();
    let purge = Command::PurgeDeadLetters {
        queue: Q.into(),
        which: PurgeSelector::All,
    };
    let (reply, effects) = sim.run_with_effects(in_sub("s1", purge));
    assert_eq!(reply, Ok(Reply::Purged { count: 1 }));
    assert!(deleted(&effects).is_empty());
    assert_eq!(deleted(&ack_in(&mut sim, None, &d)), vec![d.blob]);
}

#[test]
fn a_subscription_created_later_sees_only_later_jobs() {
    let mut sim = Sim::with_queue(config());
    sim.enqueue("a", Some("g"));
    sim.run(Command::CreateSubscription {
        queue: Q.into(),
        name: "late".into(),
    })
    .unwrap();
    let stats = sub_stats(&sim, "late");
    assert_eq!((stats.ready, stats.ack_floor), (0, stats.next_offset));
    let b = sim.enqueue("b", Some("g"));
    assert_eq!(offsets(&fetch_in(&mut sim, Some("late"), 10)), vec![b]);
    // Creating it again changes nothing.
    assert_eq!(
        sim.run(Command::CreateSubscription {
            queue: Q.into(),
            name: "late".into(),
        }),
        Ok(Reply::SubscriptionCreated { created: false })
    );
    assert_eq!(sub_stats(&sim, "late").leased, 1);
}

#[test]
fn deleting_a_subscription_deletes_the_payloads_only_it_held() {
    let mut sim = subscribed(config(), &["s1", "s2"]);
    let a = sim.enqueue("a", None);
    let b = sim.enqueue("b", None);
    // a: the default one finished it, so s1 and s2 hold it. b: only s1.
    let fetched = fetch_in(&mut sim, None, 10);
    for d in &fetched {
        ack_in(&mut sim, None, d);
    }
    let in_s2 = fetch_in(&mut sim, Some("s2"), 10);
    assert_eq!(offsets(&in_s2), vec![a, b]);
    ack_in(&mut sim, Some("s2"), &in_s2[1]);
    // s1 holds a lease on a; deleting s1 drops it too.
    let leased = fetch_in(&mut sim, Some("s1"), 1);
    assert_eq!(offsets(&leased), vec![a]);

    let (reply, effects) = sim.run_with_effects(Command::DeleteSubscription {
        queue: Q.into(),
        name: "s1".into(),
    });
    assert_eq!(reply, Ok(Reply::SubscriptionDeleted));
    assert_eq!(deleted(&effects), vec![fetched[1].blob], "b only");
    assert!(sim.store.get(in_s2[0].queue_id, in_s2[0].blob).is_some());
    assert!(!sim.state.holds_lease_in(Q, Some("s1"), a, leased[0].fence));
    assert_eq!(
        sim.run(Command::DeleteSubscription {
            queue: Q.into(),
            name: "s1".into(),
        })
        .map_err(|e| e.code()),
        Err(Code::NotFound)
    );
    assert_eq!(
        deleted(&ack_in(&mut sim, Some("s2"), &in_s2[0])),
        vec![in_s2[0].blob]
    );
}

#[test]
fn the_held_jobs_of_every_subscription_count_against_the_queue_limits() {
    let mut sim = subscribed(
        QueueConfig {
            max_jobs: 1,
            ..config()
        },
        &["s1"],
    );
    sim.enqueue("a", None);
    let d = fetch_in(&mut sim, None, 1).remove(0);
    ack_in(&mut sim, None, &d);
    // Finished in the default subscription, but s1 still holds it.
    let full = sim.enqueue_jobs(vec![job("b", None)]);
    assert!(
        matches!(&full, Err(Error::ResourceExhausted { limit, .. }) if limit == "max_jobs"),
        "{full:?}"
    );
    let d1 = fetch_in(&mut sim, Some("s1"), 1).remove(0);
    ack_in(&mut sim, Some("s1"), &d1);
    sim.enqueue("b", None);
}

/// Asserts that the leader's precheck, the configurations' precheck and
/// apply refuse `command` alike, and returns the error.
fn refused_alike(sim: &mut Sim, command: Command) -> Error {
    let pre = sim.state.precheck(&command).expect_err("precheck refuses");
    assert_eq!(sim.state.configs().precheck(&command), Err(pre.clone()));
    let before = sim.state.queues_snapshot();
    assert_eq!(sim.run(command), Err(pre.clone()), "apply refuses alike");
    assert_eq!(sim.state.queues_snapshot(), before, "nothing changed");
    pre
}

#[test]
fn bad_subscription_input_is_refused_by_name_in_precheck_and_apply_alike() {
    let mut sim = subscribed(config(), &["s1"]);
    sim.enqueue("a", None);

    let unknown = refused_alike(&mut sim, in_sub("nope", fetch_command(1)));
    assert_eq!(unknown.code(), Code::NotFound);
    assert!(unknown.to_string().contains("`nope`") && unknown.to_string().contains(Q));

    let field_of = |e: Error| match e {
        Error::InvalidArgument { field, message } => (field, message),
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    };
    let (field, _) = field_of(refused_alike(
        &mut sim,
        in_sub("bad name", fetch_command(1)),
    ));
    assert_eq!(field, "subscription");
    for name in [
        "",
        "bad/name",
        &"x".repeat(limits::SUBSCRIPTION_NAME_BYTES_MAX + 1),
    ] {
        let create = Command::CreateSubscription {
            queue: Q.into(),
            name: name.to_string(),
        };
        assert_eq!(field_of(refused_alike(&mut sim, create)).0, "name");
    }
    let enqueue = Command::Enqueue {
        queue: Q.into(),
        jobs: vec![job("b", None)],
    };
    let (field, message) = field_of(refused_alike(&mut sim, in_sub("s1", enqueue)));
    assert_eq!(field, "command");
    assert!(message.contains("Enqueue"), "{message}");
    let nested = in_sub("s1", in_sub("s1", fetch_command(1)));
    let (_, message) = field_of(refused_alike(&mut sim, nested));
    assert!(message.contains("InSubscription"), "{message}");
    let sequenced_inside = in_sub("s1", sequenced(1, 1, fetch_command(1)));
    let (_, message) = field_of(refused_alike(&mut sim, sequenced_inside));
    assert!(message.contains("Sequenced"), "{message}");
    let (_, message) = field_of(refused_alike(&mut sim, in_sub("s1", Command::Tick)));
    assert!(message.contains("Tick"), "{message}");
    // The wrapped command's own checks still apply.
    let (field, _) = field_of(refused_alike(&mut sim, in_sub("s1", fetch_command(0))));
    assert_eq!(field, "max");
    // An unknown queue is NOT_FOUND before the subscription is looked at.
    let elsewhere = Command::Fetch {
        queue: "other".into(),
        consumer: "w".into(),
        max: 1,
        lease_ms: 0,
    };
    let e = refused_alike(&mut sim, in_sub("s1", elsewhere));
    assert_eq!(
        e,
        Error::NotFound {
            what: "queue `other`".into()
        }
    );

    // At most SUBSCRIPTIONS_MAX; an existing one may be created again.
    for i in 1..limits::SUBSCRIPTIONS_MAX {
        sim.run(Command::CreateSubscription {
            queue: Q.into(),
            name: format!("more{i}"),
        })
        .unwrap();
    }
    let over = Command::CreateSubscription {
        queue: Q.into(),
        name: "one-too-many".into(),
    };
    match refused_alike(&mut sim, over) {
        Error::ResourceExhausted { limit, max, .. } => {
            assert_eq!((limit.as_str(), max), ("subscriptions_max", 16));
        }
        other => panic!("{other:?}"),
    }
    let again = Command::CreateSubscription {
        queue: Q.into(),
        name: "s1".into(),
    };
    assert_eq!(sim.state.precheck(&again), Ok(()));
    assert_eq!(
        sim.run(again),
        Ok(Reply::SubscriptionCreated { created: false })
    );
}

#[test]
fn a_sequenced_fetch_in_a_subscription_is_answered_once_and_replayed() {
    let mut sim = subscribed(config(), &["s1"]);
    let a = sim.enqueue("a", Some("g"));
    let session = open_session(&mut sim);
    let command = sequenced(session, 1, in_sub("s1", fetch_command(5)));
    assert_eq!(sim.state.precheck(&command), Ok(()));
    let first = sim.run(command.clone()).unwrap();
    let Reply::Fetched(deliveries) = &first else {
        panic!("{first:?}")
    };
    assert_eq!(offsets(deliveries), vec![a]);
    sim.enqueue("b", None);
    // The retry gets the first answer (the lease is still held in s1),
    // and grants nothing new.
    assert_eq!(sim.run(command), Ok(first));
    assert_eq!(sub_stats(&sim, "s1").leased, 1);
}

#[test]
fn subscriptions_survive_a_snapshot_with_their_derived_indexes() {
    let mut sim = subscribed(
        QueueConfig {
            max_attempts: 1,
            ..config()
        },
        &["s1", "s2"],
    );
    for (id, group) in [("a", "g"), ("b", "g"), ("c", "h"), ("d", "i")] {
        sim.enqueue(id, Some(group));
    }
    let s1 = fetch_in(&mut sim, Some("s1"), 1);
    ack_in(&mut sim, Some("s1"), &s1[0]);
    let d = fetch_in(&mut sim, Some("s2"), 1).remove(0);
    sim.run(in_sub(
        "s2",
        Command::DeadLetter {
            queue: Q.into(),
            offset: d.offset,
            fence: d.fence,
            reason: "poison".into(),
        },
    ))
    .unwrap();
    fetch_in(&mut sim, Some("s2"), 1);
    sim.run(in_sub(
        "s1",
        Command::PauseGroup {
            queue: Q.into(),
            group: "h".into(),
        },
    ))
    .unwrap();

    let bytes = sim.state.snapshot();
    let restored = State::restore(&bytes).expect("restore");
    assert_eq!(restored, sim.state, "derived indexes rebuilt alike");
    restored.check_invariants().unwrap();
    assert_eq!(restored.snapshot(), bytes);
    assert_eq!(
        restored.list_subscriptions(Q).unwrap(),
        sim.state.list_subscriptions(Q).unwrap()
    );
    // The restored replica picks as the original does, in each subscription.
    let mut twin = Sim {
        state: restored,
        store: sim.store.clone(),
        index: sim.index,
        now_ms: sim.now_ms,
    };
    for sub in [Some("s1"), Some("s2"), None] {
        assert_eq!(fetch_in(&mut twin, sub, 10), fetch_in(&mut sim, sub, 10));
    }
}
