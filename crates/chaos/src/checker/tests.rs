//! Hand-written histories, one per anomaly class and one per way of
//! getting it wrong by being too strict.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::history::{self, AckItem, DeadJob, Delivery, EnqueueResult, SentJob};

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
                    chained_from: None,
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

/// A fetch as old histories record it: no attempt, no lease length.
/// (offset, id, group, fence, deadline)
fn fetch(t0: u64, t1: u64, ds: &[(u64, &str, &str, u64, u64)]) -> Op {
    let ds: Vec<_> = ds
        .iter()
        .map(|&(offset, id, group, fence, deadline)| (offset, id, group, fence, deadline, 0))
        .collect();
    fetch_with(t0, t1, Outcome::Ok, 0, false, &ds)
}

/// A fetch asking for a `LEASE_MS` lease, with attempt numbers.
/// (offset, id, group, fence, deadline, attempt)
fn fetch_a(t0: u64, t1: u64, ds: &[(u64, &str, &str, u64, u64, u32)]) -> Op {
    fetch_with(t0, t1, Outcome::Ok, LEASE_MS, false, ds)
}

/// A job the library `Worker` fetched, recorded when its handler started
/// at `t`.
fn worker_fetch(t: u64, ds: &[(u64, &str, &str, u64, u64, u32)]) -> Op {
    fetch_with(t, t, Outcome::Ok, LEASE_MS, true, ds)
}

/// A fetch that timed out: it may have delivered anything.
fn lost_fetch(t0: u64, t1: u64) -> Op {
    fetch_with(t0, t1, Outcome::Indeterminate, LEASE_MS, false, &[])
}

const LEASE_MS: u64 = 2_000;

fn fetch_with(
    t0: u64,
    t1: u64,
    outcome: Outcome,
    lease_ms: u64,
    invoke_unknown: bool,
    ds: &[(u64, &str, &str, u64, u64, u32)],
) -> Op {
    op(
        t0,
        t1,
        outcome,
        Call::Fetch {
            queue: Q.into(),
            consumer: "w".into(),
            deliveries: ds
                .iter()
                .map(|(offset, id, group, fence, deadline, attempt)| Delivery {
                    offset: *offset,
                    id: (*id).into(),
                    group: (*group).into(),
                    fence: *fence,
                    lease_deadline_ms: *deadline,
                    attempt: *attempt,
                })
                .collect(),
            lease_ms,
            invoke_unknown,
            max: 0,
            retried: false,
        },
    )
}

fn end(t0: u64, t1: u64, outcome: Outcome, offset: u64, fence: u64, kind: EndKind) -> Op {
    op(
        t0,
        t1,
        outcome,
        Call::EndLease {
            queue: Q.into(),
            offset,
            fence,
            kind,
        },
    )
}

fn nack(t0: u64, t1: u64, offset: u64, fence: u64) -> Op {
    end(t0, t1, Outcome::Ok, offset, fence, EndKind::Nack)
}

/// (offset, id, group, attempts)
fn dead_letters(t: u64, jobs: &[(u64, &str, &str, u32)]) -> Op {
    op(
        t,
        t,
        Outcome::Ok,
        Call::DeadLetters {
            queue: Q.into(),
            jobs: jobs
                .iter()
                .map(|(offset, id, group, attempts)| DeadJob {
                    offset: *offset,
                    id: (*id).into(),
                    group: (*group).into(),
                    attempts: *attempts,
                    reason: format!("max_attempts = {attempts} reached"),
                })
                .collect(),
        },
    )
}

/// Stats after a drain: nothing pending, `dead` dead letters, offsets
/// 0..next.
fn stats(t: u64, dead: u64, next_offset: u64) -> Op {
    op(
        t,
        t,
        Outcome::Ok,
        Call::Stats {
            queue: Q.into(),
            ready: 0,
            delayed: 0,
            leased: 0,
            dead,
            next_offset,
            ack_floor: next_offset,
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
    // An extend that answered an earlier deadline shortened the first
    // lease (it sets the deadline to its own time plus the length it
    // asks): the second grant came after it ended.
    let extend = op(
        100,
        110,
        Outcome::Ok,
        Call::Extend {
            queue: Q.into(),
            offset: 0,
            fence: 5,
            lease_deadline_ms: 1_100,
        },
    );
    let h = vec![
        enq(0, 10, Outcome::Ok, &[("a", "g", 0)]),
        fetch(20, 30, &[(0, "a", "g", 5, 30_000)]),
        extend,
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
    let mut h = clean();
    h.extend(clean_with_dead_letters());
    let text: String = h.iter().map(|o| history::to_line(o) + "\n").collect();
    assert_eq!(history::parse(&text).unwrap(), h);
    let err = history::parse("{\"nope\":1}\n").unwrap_err();
    assert!(err.contains("history line 1"), "{err}");
}

#[test]
fn an_old_history_without_attempts_or_lease_lengths_still_parses() {
    let line = r#"{"invoke_ms":20,"complete_ms":30,"node":1,"process":1,"outcome":"ok","call":{"f":"fetch","queue":"q","consumer":"w","deliveries":[{"offset":0,"id":"a","group":"g","fence":5,"lease_deadline_ms":30030}]}}"#;
    let h = history::parse(line).unwrap();
    let Call::Fetch {
        deliveries,
        lease_ms,
        invoke_unknown,
        ..
    } = &h[0].call
    else {
        panic!("{h:?}");
    };
    assert_eq!(
        (deliveries[0].attempt, *lease_ms, *invoke_unknown),
        (0, 0, false)
    );
    assert_eq!(h[0], fetch(20, 30, &[(0, "a", "g", 5, 30_030)]));
}

/// Every class at 0 on `h`, and the report passed.
fn assert_clean(h: &[Op]) {
    let r = check(h);
    assert_eq!(r.counts, Counts::default(), "{r:#?}");
    assert!(r.passed(), "{r:#?}");
}

/// Each count at 0 but `class`, which is `n`.
fn assert_only(r: &Report, class: &str, n: u64) {
    for (letter, count) in Counts::LETTERS.iter().zip(r.counts.in_order()) {
        let want = if *letter == class { n } else { 0 };
        assert_eq!(count, want, "{letter} in {r:#?}");
    }
}

/// A run with `max_attempts` 3 and library workers, all as it should be:
/// - `a` (group g) is nacked on each of its 3 attempts, all seen, and the
///   server dead-letters it; `b` behind it is delivered after;
/// - `c` (group h) is nacked on attempt 1; attempt 2 went to a fetch that
///   timed out (its lease expired unseen); attempt 3 is seen and acked;
/// - `d` (group i) ran in a library `Worker`, whose ack is of unknown
///   outcome (before c's attempt 1, so its fetch cannot explain c's
///   attempt 2).
fn clean_with_dead_letters() -> Vec<Op> {
    vec![
        enq(
            0,
            10,
            Outcome::Ok,
            &[("a", "g", 0), ("b", "g", 1), ("c", "h", 2), ("d", "i", 3)],
        ),
        fetch_a(20, 30, &[(0, "a", "g", 5, 2_030, 1)]),
        nack(40, 50, 0, 5),
        fetch_a(60, 70, &[(0, "a", "g", 6, 2_070, 2)]),
        nack(80, 90, 0, 6),
        fetch_a(100, 110, &[(0, "a", "g", 7, 2_110, 3)]),
        nack(120, 130, 0, 7),
        fetch_a(200, 210, &[(1, "b", "g", 8, 2_210, 1)]),
        ack(220, 230, Outcome::Ok, 1, 8, true),
        fetch_a(300, 310, &[(2, "c", "h", 9, 2_310, 1)]),
        nack(320, 330, 2, 9),
        lost_fetch(400, 5_400),
        fetch_a(3_000, 3_010, &[(2, "c", "h", 12, 5_010, 3)]),
        ack(3_020, 3_030, Outcome::Ok, 2, 12, true),
        worker_fetch(250, &[(3, "d", "i", 10, 2_250, 1)]),
        ack(260, 260, Outcome::Indeterminate, 3, 10, false),
        drained(6_000),
        dead_letters(6_010, &[(0, "a", "g", 3)]),
        stats(6_020, 1, 4),
    ]
}

#[test]
fn a_clean_history_with_dead_letters_and_library_workers_passes() {
    let h = clean_with_dead_letters();
    assert_clean(&h);
    let r = check(&h);
    assert_eq!((r.enqueued_ok, r.delivered, r.dead_lettered), (4, 7, 1));
    // Without the fetch that timed out, and with d's library fetch sent at
    // a known time (unknown, it may have been sent at any time before and
    // have made anything), c's attempt 2 is an orphaned lease.
    let h: Vec<Op> = clean_with_dead_letters()
        .into_iter()
        .filter(|o| o.outcome != Outcome::Indeterminate || !matches!(o.call, Call::Fetch { .. }))
        .map(|mut o| {
            if let Call::Fetch { invoke_unknown, .. } = &mut o.call {
                *invoke_unknown = false;
            }
            o
        })
        .collect();
    assert_only(&check(&h), "A", 1);
    // Without the dead-letter list, `a` would be a job that holds its group
    // forever: b out of order.
    let h: Vec<Op> = clean_with_dead_letters()
        .into_iter()
        .filter(|o| !matches!(o.call, Call::DeadLetters { .. } | Call::Stats { .. }))
        .collect();
    assert_only(&check(&h), "O", 1);
}

#[test]
fn a_dead_lettered_job_is_not_lost() {
    let h = vec![
        enq(0, 10, Outcome::Ok, &[("a", "g", 0)]),
        fetch_a(20, 30, &[(0, "a", "g", 5, 2_030, 1)]),
        // The worker stalls; the lease expires on the last attempt.
        drained(5_000),
        dead_letters(5_010, &[(0, "a", "g", 1)]),
        stats(5_020, 1, 1),
    ];
    assert_clean(&h);
    let mut h = h;
    h.retain(|o| !matches!(o.call, Call::DeadLetters { .. }));
    h.push(dead_letters(5_010, &[]));
    // Not in the list, it is still not lost (it was delivered), but the
    // stats count a dead letter the list lacks.
    assert_only(&check(&h), "S", 1);
}

#[test]
fn a_library_fetch_is_never_ordered_after_its_send() {
    // The worker's handler for `a` starts after a's ack answered OK, but
    // its fetch may have been sent before: no R, no T.
    let mut h = clean();
    h.push(worker_fetch(95, &[(0, "a", "g", 11, 40_000, 0)]));
    assert_clean(&h);
    // The same delivery from a fetch the harness sent itself is an R.
    let mut h = clean();
    h.push(fetch_with(
        95,
        95,
        Outcome::Ok,
        0,
        false,
        &[(0, "a", "g", 11, 40_000, 0)],
    ));
    assert_only(&check(&h), "R", 1);
}

/// `a` of group g leased at 20..30 for 30 s, granted again at
/// 1 200..1 210 with a new fence. A node whose cluster clock jumped ahead
/// gave the first lease a deadline that looks expired by then (1 000), so
/// F sees nothing.
fn clock_jump(first: Op, second: Op) -> Vec<Op> {
    vec![
        enq(0, 10, Outcome::Ok, &[("a", "g", 0)]),
        first,
        second,
        ack(1_300, 1_310, Outcome::Ok, 0, 6, true),
        drained(1_400),
    ]
}

fn first_lease(lease_ms: u64) -> Op {
    fetch_with(
        20,
        30,
        Outcome::Ok,
        lease_ms,
        false,
        &[(0, "a", "g", 5, 1_000, 1)],
    )
}

fn second_lease(t0: u64, t1: u64, invoke_unknown: bool) -> Op {
    fetch_with(
        t0,
        t1,
        Outcome::Ok,
        30_000,
        invoke_unknown,
        &[(0, "a", "g", 6, 31_200, 2)],
    )
}

#[test]
fn a_group_granted_twice_on_the_harness_clock_overlaps() {
    let r = check(&clock_jump(
        first_lease(30_000),
        second_lease(1_200, 1_210, false),
    ));
    assert_only(&r, "T", 1);
    assert!(r.examples["T"][0].contains("offset 0 (fence 5)"), "{r:?}");
    // A 1 s lease may well have ended by 1 200 ms.
    assert_clean(&clock_jump(
        first_lease(1_000),
        second_lease(1_200, 1_210, false),
    ));
    // Within 1 % slew and the tolerance of its end, it may have too:
    // 20 + 1 200 * 0.99 - 100 = 1 108 ms.
    assert_clean(&clock_jump(
        first_lease(1_200),
        second_lease(1_100, 1_110, false),
    ));
    assert_only(
        &check(&clock_jump(
            first_lease(1_200),
            second_lease(1_050, 1_100, false),
        )),
        "T",
        1,
    );
    // A fetch sent before the first lease arrived cannot be ordered after it.
    assert_clean(&clock_jump(
        first_lease(30_000),
        second_lease(25, 1_210, false),
    ));
    // Nor can a library fetch, whose send time is unknown.
    assert_clean(&clock_jump(
        first_lease(30_000),
        second_lease(1_200, 1_210, true),
    ));
    // An unknown lease length gives no end to the first lease.
    assert_clean(&clock_jump(
        first_lease(0),
        second_lease(1_200, 1_210, false),
    ));
    // A nack (even of unknown outcome) sent before the second grant may
    // have ended the first lease.
    let mut h = clock_jump(first_lease(30_000), second_lease(1_200, 1_210, false));
    h.push(end(500, 9_000, Outcome::Indeterminate, 0, 5, EndKind::Nack));
    assert_clean(&h);
    // A refused ack ended nothing.
    let mut h = clock_jump(first_lease(30_000), second_lease(1_200, 1_210, false));
    h.push(ack(500, 510, Outcome::Ok, 0, 5, false));
    assert_only(&check(&h), "T", 1);
    // An extend that answered a later deadline only lengthened the lease;
    // one of unknown outcome may have shortened it (it sets the deadline
    // to its own time plus the length it asks).
    let extend = |outcome, lease_deadline_ms| {
        op(
            500,
            510,
            outcome,
            Call::Extend {
                queue: Q.into(),
                offset: 0,
                fence: 5,
                lease_deadline_ms,
            },
        )
    };
    let mut h = clock_jump(first_lease(30_000), second_lease(1_200, 1_210, false));
    h.push(extend(Outcome::Ok, 1_050));
    assert_only(&check(&h), "T", 1);
    let mut h = clock_jump(first_lease(30_000), second_lease(1_200, 1_210, false));
    h.push(extend(Outcome::Indeterminate, 0));
    assert_clean(&h);
}

#[test]
fn the_next_job_of_a_group_granted_while_the_head_s_lease_runs_overlaps() {
    let h = vec![
        enq(0, 10, Outcome::Ok, &[("a", "g", 0), ("b", "g", 1)]),
        fetch_a(20, 30, &[(0, "a", "g", 5, 30, 1)]),
        // a's ack goes out at 1 000 ms; b was granted at 500 ms.
        fetch_a(400, 500, &[(1, "b", "g", 6, 2_500, 1)]),
        ack(1_000, 1_010, Outcome::Ok, 0, 5, true),
        ack(1_020, 1_030, Outcome::Ok, 1, 6, true),
        drained(1_100),
    ];
    // O sees it too: a was not finished when b arrived.
    let r = check(&h);
    assert_eq!(
        r.counts.in_order(),
        [0, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0],
        "{r:?}"
    );
}

#[test]
fn an_attempt_no_delivery_explains_is_an_orphaned_lease() {
    let h = |extra: Vec<Op>| {
        let mut h = vec![
            enq(0, 10, Outcome::Ok, &[("a", "g", 0)]),
            fetch_a(20, 30, &[(0, "a", "g", 5, 2_030, 1)]),
            nack(40, 50, 0, 5),
            fetch_a(3_000, 3_010, &[(0, "a", "g", 9, 5_010, 3)]),
            ack(3_020, 3_030, Outcome::Ok, 0, 9, true),
            drained(4_000),
        ];
        h.extend(extra);
        h
    };
    // Attempt 2 was granted to nobody the harness knows of.
    let r = check(&h(Vec::new()));
    assert_only(&r, "A", 1);
    assert!(r.examples["A"][0].starts_with("orphaned lease"), "{r:?}");
    assert!(r.examples["A"][0].contains("attempt 2"), "{r:?}");
    // A fetch that timed out between attempts 1 and 3 may have made it.
    assert_clean(&h(vec![lost_fetch(100, 5_100)]));
    // Not one sent after attempt 3 arrived, nor one answered before
    // attempt 1 was sent.
    assert_only(&check(&h(vec![lost_fetch(3_020, 8_000)])), "A", 1);
    // One answered before attempt 1 was sent may still have been applied
    // later (a forward held up in a partition): it may have made it too.
    assert_clean(&h(vec![lost_fetch(0, 15)]));
    // Nor a fetch that failed: it did nothing.
    let failed = fetch_with(100, 200, Outcome::Fail, LEASE_MS, false, &[]);
    assert_only(&check(&h(vec![failed])), "A", 1);
    // A library fetch may have fetched it and never run it.
    assert_clean(&h(vec![worker_fetch(700, &[])]));
}

#[test]
fn a_job_dead_lettered_with_no_delivery_seen_is_unexplained() {
    let h = |extra: Vec<Op>| {
        let mut h = vec![enq(0, 10, Outcome::Ok, &[("a", "g", 0)])];
        h.extend(extra);
        h.extend([
            drained(9_000),
            dead_letters(9_010, &[(0, "a", "g", 3)]),
            stats(9_020, 1, 1),
        ]);
        h
    };
    // Three attempts, none seen, no fetch that could have made them.
    let r = check(&h(Vec::new()));
    assert_only(&r, "A", 3);
    assert!(
        r.examples["A"][0].starts_with("dead-lettered unseen"),
        "{r:?}"
    );
    // Three fetches of unknown outcome may have made its three attempts;
    // two may not: one fetch leases a job at most once.
    let lost = || {
        vec![
            lost_fetch(20, 2_020),
            lost_fetch(2_100, 4_100),
            lost_fetch(4_200, 6_200),
        ]
    };
    assert_clean(&h(lost()));
    assert_only(&check(&h(lost()[..2].to_vec())), "A", 1);
}

#[test]
fn a_history_without_attempt_numbers_has_no_unexplained_attempt() {
    // Attempts 0 (unknown), and one delivery in two: nothing to judge.
    let h = vec![
        enq(0, 10, Outcome::Ok, &[("a", "g", 0)]),
        fetch(20, 30, &[(0, "a", "g", 5, 1_000)]),
        fetch(1_200, 1_210, &[(0, "a", "g", 9, 31_200)]),
        ack(1_300, 1_310, Outcome::Ok, 0, 9, true),
        drained(1_400),
    ];
    assert_clean(&h);
}

#[test]
fn stats_after_the_drain_match_the_history() {
    let with = |s: Op| {
        let mut h = clean();
        h.push(dead_letters(200, &[]));
        h.push(s);
        h
    };
    assert_clean(&with(stats(210, 0, 2)));
    // A job no client ever saw, at offset 2.
    let r = check(&with(stats(210, 0, 3)));
    assert_only(&r, "S", 1);
    assert!(
        r.examples["S"][0].contains("never seen (first [2])"),
        "{r:?}"
    );
    // A job left pending after the drain.
    let mut pending = stats(210, 0, 2);
    if let Call::Stats { leased, .. } = &mut pending.call {
        *leased = 1;
    }
    assert_only(&check(&with(pending)), "S", 1);
    // A dead letter the list does not hold.
    assert_only(&check(&with(stats(210, 1, 2))), "S", 1);
    // A queue that was not drained is a liveness failure, not an S.
    let h = vec![enq(0, 10, Outcome::Ok, &[("a", "g", 0)]), stats(20, 0, 5)];
    let r = check(&h);
    assert_eq!(r.counts, Counts::default());
    assert!(!r.passed());
}

fn side(invoke_ms: u64, complete_ms: u64, outcome: Outcome, call: Call) -> Op {
    Op {
        invoke_ms,
        complete_ms,
        node: 1,
        process: 3_000,
        outcome,
        call,
    }
}

#[test]
fn not_found_after_an_acknowledged_creation_is_a_stale_refusal() {
    let created = |queue: &str| Call::CreateQueue {
        queue: queue.into(),
    };
    let missing = |queue: &str| Call::QueueNotFound {
        queue: queue.into(),
    };
    let h = vec![
        side(0, 10, Outcome::Ok, created("s1")),
        // Sent before the creation was acknowledged: may be true.
        side(5, 12, Outcome::Fail, missing("s1")),
        // Sent after: a state without an acknowledged write answered.
        side(20, 25, Outcome::Fail, missing("s1")),
        // A creation of unknown outcome proves nothing.
        side(30, 40, Outcome::Indeterminate, created("s2")),
        side(50, 55, Outcome::Fail, missing("s2")),
    ];
    let r = check(&h);
    assert_eq!(r.counts.stale_refusal, 1, "{r:?}");
    assert_eq!(r.counts.total(), 1, "{r:?}");
    assert_eq!(r.examples["N"].len(), 1, "{r:?}");
}

#[test]
fn a_fetch_of_unknown_outcome_explains_at_most_the_jobs_it_asked_for() {
    // Two jobs, each redelivered as attempt 2 with attempt 1 unseen.
    let h = |max: u32| {
        let mut lost = lost_fetch(20, 3_020);
        if let Call::Fetch { max: m, .. } = &mut lost.call {
            *m = max;
        }
        vec![
            enq(0, 10, Outcome::Ok, &[("a", "g", 0), ("b", "h", 1)]),
            lost,
            fetch_a(
                5_000,
                5_010,
                &[(0, "a", "g", 9, 7_010, 2), (1, "b", "h", 10, 7_010, 2)],
            ),
            ack(5_020, 5_030, Outcome::Ok, 0, 9, true),
            ack(5_020, 5_030, Outcome::Ok, 1, 10, true),
            drained(6_000),
        ]
    };
    assert_only(&check(&h(1)), "A", 1);
    assert_clean(&h(2));
    // Unknown (0): no limit.
    assert_clean(&h(0));
}

// ---------------------------------------------------------------- C

const NEXT: &str = "next";

/// The chained job `id` of `source` (on `Q`), enqueued with unknown outcome.
fn chained(t: u64, id: &str, source: &str) -> Op {
    op(
        t,
        t,
        Outcome::Indeterminate,
        Call::Enqueue {
            queue: NEXT.into(),
            jobs: vec![SentJob {
                id: id.into(),
                group: "g".into(),
                chained_from: Some((Q.into(), source.into())),
            }],
            results: Vec::new(),
        },
    )
}

/// The harness's drain of `queue`, delivering (offset, id, attempt).
fn drain_of(t: u64, queue: &str, jobs: &[(u64, &str, u32)]) -> Vec<Op> {
    let deliveries = jobs
        .iter()
        .map(|&(offset, id, attempt)| Delivery {
            offset,
            id: id.into(),
            group: "g".into(),
            fence: t,
            lease_deadline_ms: t + 30_000,
            attempt,
        })
        .collect();
    let fetch = Call::Fetch {
        queue: queue.into(),
        consumer: DRAIN_CONSUMER.into(),
        deliveries,
        lease_ms: 30_000,
        invoke_unknown: false,
        max: 100,
        retried: false,
    };
    let items = jobs
        .iter()
        .map(|&(offset, _, _)| AckItem {
            offset,
            fence: t,
            ok: true,
        })
        .collect();
    vec![
        op(t, t, Outcome::Ok, fetch),
        op(
            t + 1,
            t + 1,
            Outcome::Ok,
            Call::Ack {
                queue: queue.into(),
                items,
            },
        ),
        op(
            t + 2,
            t + 2,
            Outcome::Ok,
            Call::DeadLetters {
                queue: queue.into(),
                jobs: vec![],
            },
        ),
        op(
            t + 3,
            t + 3,
            Outcome::Ok,
            Call::Drained {
                queue: queue.into(),
            },
        ),
    ]
}

/// A job handled by the `Worker` with two chained acks (the first lost
/// its lease), then `tail`.
fn chain_history(next_ids: &[&str], source_drained: bool) -> Vec<Op> {
    let next: Vec<(u64, &str, u32)> = next_ids
        .iter()
        .map(|id| (if *id == "a>0" { 0 } else { 1 }, *id, 1))
        .collect();
    let mut h = vec![
        enq(0, 10, Outcome::Ok, &[("a", "g", 0)]),
        worker_fetch(20, &[(0, "a", "g", 5, 2_020, 1)]),
        chained(30, "a>0", "a"),
        worker_fetch(3_000, &[(0, "a", "g", 9, 5_000, 2)]),
        chained(3_010, "a>1", "a"),
    ];
    h.extend(drain_of(
        10_000,
        Q,
        if source_drained { &[(0, "a", 3)] } else { &[] },
    ));
    h.extend(drain_of(11_000, NEXT, &next));
    h
}

#[test]
fn c_counts_a_chained_step_lost_or_doubled() {
    // The ack landed once (the job finished in the run): one next step.
    let r = check(&chain_history(&["a>1"], false));
    assert_eq!(r.counts.chained, 0, "{r:?}");
    // Lost: the job finished, its next step is nowhere.
    let r = check(&chain_history(&[], false));
    assert_eq!(r.counts.chained, 1, "{:?}", r.examples);
    assert!(r.examples["C"][0].contains("lost"), "{:?}", r.examples);
    // Doubled: both chained acks enqueued their step.
    let r = check(&chain_history(&["a>0", "a>1"], false));
    assert_eq!(r.counts.chained, 1, "{:?}", r.examples);
    assert!(r.examples["C"][0].contains("doubled"), "{:?}", r.examples);
    // No ack landed (the drain found the job pending): no next step is
    // right, and one is a step without its ack.
    let r = check(&chain_history(&[], true));
    assert_eq!(r.counts.chained, 0, "{r:?}");
    let r = check(&chain_history(&["a>0"], true));
    assert_eq!(r.counts.chained, 1, "{:?}", r.examples);
    // Not judged before both queues are drained.
    let mut h = chain_history(&[], false);
    h.retain(|o| !matches!(&o.call, Call::Drained { queue } if queue == NEXT));
    assert_eq!(check(&h).counts.chained, 0);
}
