//! Hand-written histories, one per anomaly class and one per way of
//! getting it wrong by being too strict.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::history::{self, AckItem, Delivery, EnqueueResult, SentJob};

const Q: &str = "q";

fn op(t0: u64, t1: u64, outcome: Outcome, call: Call) -> Op {
    Op {
        invoke_ms: t0,
        complete_ms: t1,
        node: 1,
        process: 1,
        outcome,
        call,
    }
}

fn enq(t0: u64, t1: u64, outcome: Outcome, jobs: &[(&str, &str, u64)]) -> Op {
    op(
        t0,
        t1,
        outcome,
        Call::Enqueue {
            queue: Q.into(),
            jobs: jobs
                .iter()
                .map(|(id, g, _)| SentJob {
                    id: (*id).into(),
                    group: (*g).into(),
                })
                .collect(),
            results: if outcome == Outcome::Ok {
                jobs.iter()
                    .map(|(id, _, o)| EnqueueResult {
                        id: (*id).into(),
                        offset: *o,
                        outcome: EnqueueOutcome::Created,
                    })
                    .collect()
            } else {
                Vec::new()
            },
        },
    )
}

/// (offset, id, group, fence, deadline)
fn fetch(t0: u64, t1: u64, ds: &[(u64, &str, &str, u64, u64)]) -> Op {
    op(
        t0,
        t1,
        Outcome::Ok,
        Call::Fetch {
            queue: Q.into(),
            consumer: "w".into(),
            deliveries: ds
                .iter()
                .map(|(offset, id, group, fence, deadline)| Delivery {
                    offset: *offset,
                    id: (*id).into(),
                    group: (*group).into(),
                    fence: *fence,
                    lease_deadline_ms: *deadline,
                })
                .collect(),
        },
    )
}

fn ack(t0: u64, t1: u64, outcome: Outcome, offset: u64, fence: u64, ok: bool) -> Op {
    op(
        t0,
        t1,
        outcome,
        Call::Ack {
            queue: Q.into(),
            items: vec![AckItem { offset, fence, ok }],
        },
    )
}

fn drained(t: u64) -> Op {
    op(t, t, Outcome::Ok, Call::Drained { queue: Q.into() })
}

fn digest(node: u64, index: u64, d: &str) -> Op {
    let mut o = op(
        0,
        0,
        Outcome::Ok,
        Call::Digest {
            applied_index: index,
            digest: d.into(),
        },
    );
    o.node = node;
    o
}

/// Two jobs of group g, delivered and acked in order, drained, replicas
/// agree.
fn clean() -> Vec<Op> {
    vec![
        enq(0, 10, Outcome::Ok, &[("a", "g", 0), ("b", "g", 1)]),
        fetch(20, 30, &[(0, "a", "g", 5, 30_030)]),
        ack(40, 50, Outcome::Ok, 0, 5, true),
        fetch(60, 70, &[(1, "b", "g", 7, 30_070)]),
        ack(80, 90, Outcome::Ok, 1, 7, true),
        drained(100),
        digest(1, 9, "ab"),
        digest(2, 9, "ab"),
        digest(3, 8, "cd"),
    ]
}

#[test]
fn a_clean_history_passes() {
    let r = check(&clean());
    assert!(r.passed(), "{r:?}");
    assert_eq!(r.enqueued_ok, 2);
    assert_eq!(r.delivered, 2);
}

#[test]
fn an_acknowledged_job_never_delivered_is_lost() {
    let mut h = clean();
    h.push(enq(110, 120, Outcome::Ok, &[("c", "h", 2)]));
    let r = check(&h);
    assert_eq!(r.counts.lost, 1, "{r:?}");
    assert!(r.examples["L"][0].contains("id c"));
}

#[test]
fn an_indeterminate_enqueue_may_or_may_not_appear() {
    let mut h = clean();
    h.push(enq(110, 5_000, Outcome::Indeterminate, &[("c", "h", 0)]));
    h.push(enq(110, 5_000, Outcome::Indeterminate, &[("d", "i", 0)]));
    h.push(fetch(6_000, 6_010, &[(3, "d", "i", 20, 40_000)]));
    h.push(ack(6_020, 6_030, Outcome::Ok, 3, 20, true));
    let r = check(&h);
    assert!(r.passed(), "{r:?}");
}

#[test]
fn a_delivered_id_nobody_sent_is_unexpected() {
    let mut h = clean();
    h.push(fetch(110, 120, &[(9, "ghost", "z", 30, 40_000)]));
    let r = check(&h);
    assert_eq!(r.counts.unexpected, 1, "{r:?}");
}

#[test]
fn one_id_at_two_offsets_is_duplicated() {
    let mut h = clean();
    // The retry of "a" created a second job instead of DUPLICATE.
    h.push(enq(110, 120, Outcome::Ok, &[("a", "g", 2)]));
    let r = check(&h);
    assert_eq!(r.counts.duplicated, 1, "{r:?}");
}

#[test]
fn a_delivery_after_an_ok_ack_is_a_redelivery() {
    let mut h = clean();
    h.push(fetch(95, 99, &[(0, "a", "g", 11, 40_000)]));
    let r = check(&h);
    assert_eq!(r.counts.redelivered_after_ack, 1, "{r:?}");
    // A fetch sent before the ack answered may still have seen the job.
    let mut h = clean();
    h.push(fetch(45, 99, &[(0, "a", "g", 11, 40_000)]));
    assert_eq!(check(&h).counts.redelivered_after_ack, 0);
}

#[test]
fn a_later_job_delivered_before_the_earlier_one_finished_is_out_of_order() {
    let h = vec![
        enq(0, 10, Outcome::Ok, &[("a", "g", 0), ("b", "g", 1)]),
        fetch(20, 30, &[(1, "b", "g", 5, 30_000)]),
        ack(40, 50, Outcome::Ok, 1, 5, true),
        fetch(60, 70, &[(0, "a", "g", 7, 30_070)]),
        ack(80, 90, Outcome::Ok, 0, 7, true),
        drained(100),
    ];
    let r = check(&h);
    assert_eq!(r.counts.out_of_order, 1, "{r:?}");
    // Another group is not held back by g.
    let h = vec![
        enq(0, 10, Outcome::Ok, &[("a", "g", 0), ("b", "h", 1)]),
        fetch(
            20,
            30,
            &[(0, "a", "g", 5, 30_000), (1, "b", "h", 5, 30_000)],
        ),
        ack(40, 50, Outcome::Ok, 0, 5, true),
        ack(40, 50, Outcome::Ok, 1, 5, true),
        drained(100),
    ];
    assert!(check(&h).passed());
}

#[test]
fn an_ack_of_unknown_outcome_may_have_finished_the_earlier_job() {
    let h = vec![
        enq(0, 10, Outcome::Ok, &[("a", "g", 0), ("b", "g", 1)]),
        fetch(20, 30, &[(0, "a", "g", 5, 30_000)]),
        ack(40, 5_000, Outcome::Indeterminate, 0, 5, false),
        fetch(60, 70, &[(1, "b", "g", 7, 30_070)]),
        ack(80, 90, Outcome::Ok, 1, 7, true),
        drained(100),
    ];
    let r = check(&h);
    assert_eq!(r.counts.out_of_order, 0, "{r:?}");
    assert!(r.passed(), "{r:?}");
}

#[test]
fn two_live_leases_on_one_group_break_fencing() {
    let h = vec![
        enq(0, 10, Outcome::Ok, &[("a", "g", 0), ("b", "g", 1)]),
        fetch(20, 30, &[(0, "a", "g", 5, 30_000)]),
        // A second worker gets the same head with a new fence while the
        // first lease still runs: no second lease may exist.
        fetch(100, 110, &[(0, "a", "g", 6, 30_100)]),
        ack(200, 210, Outcome::Ok, 0, 6, true),
        fetch(220, 230, &[(1, "b", "g", 8, 30_230)]),
        ack(240, 250, Outcome::Ok, 1, 8, true),
        drained(300),
    ];
    let r = check(&h);
    assert!(r.counts.fencing >= 1, "{r:?}");
    // After the first lease expired, a new grant is fine.
    let h = vec![
        enq(0, 10, Outcome::Ok, &[("a", "g", 0)]),
        fetch(20, 30, &[(0, "a", "g", 5, 1_000)]),
        fetch(1_200, 1_210, &[(0, "a", "g", 6, 31_200)]),
        ack(1_300, 1_310, Outcome::Ok, 0, 6, true),
        drained(1_400),
    ];
    let r = check(&h);
    assert!(r.passed(), "{r:?}");
}

#[test]
fn an_ack_accepted_with_an_old_fence_breaks_fencing() {
    let h = vec![
        enq(0, 10, Outcome::Ok, &[("a", "g", 0)]),
        fetch(20, 30, &[(0, "a", "g", 5, 1_000)]),
        fetch(1_200, 1_210, &[(0, "a", "g", 9, 31_200)]),
        // The stopped worker wakes and its late ack is accepted.
        ack(1_300, 1_310, Outcome::Ok, 0, 5, true),
        drained(1_400),
    ];
    let r = check(&h);
    assert_eq!(r.counts.fencing, 1, "{r:?}");
    assert!(r.examples["F"][0].contains("fence 5"));
    // Refused, it is exactly what should happen.
    let h = vec![
        enq(0, 10, Outcome::Ok, &[("a", "g", 0)]),
        fetch(20, 30, &[(0, "a", "g", 5, 1_000)]),
        fetch(1_200, 1_210, &[(0, "a", "g", 9, 31_200)]),
        ack(1_300, 1_310, Outcome::Ok, 0, 5, false),
        ack(1_320, 1_330, Outcome::Ok, 0, 9, true),
        drained(1_400),
    ];
    assert!(check(&h).passed());
}

#[test]
fn different_digests_at_one_applied_index_diverge() {
    let mut h = clean();
    h.push(digest(3, 9, "zz"));
    let r = check(&h);
    assert_eq!(r.counts.diverged, 1, "{r:?}");
}

#[test]
fn an_undrained_queue_fails_the_run_without_counting_losses() {
    let h = vec![enq(0, 10, Outcome::Ok, &[("a", "g", 0)])];
    let r = check(&h);
    assert_eq!(r.counts.lost, 0);
    assert_eq!(r.undrained, vec![Q.to_string()]);
    assert!(!r.passed());
}

#[test]
fn a_history_round_trips_through_json_lines() {
    let h = clean();
    let text: String = h.iter().map(|o| history::to_line(o) + "\n").collect();
    assert_eq!(history::parse(&text).unwrap(), h);
    let err = history::parse("{\"nope\":1}\n").unwrap_err();
    assert!(err.contains("history line 1"), "{err}");
}
