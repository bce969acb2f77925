//! Target `sequence`: the input, read by `arbitrary`, is a sequence of
//! steps over a small alphabet of queues, groups, ids, payloads and
//! consumers, so that steps collide on the same jobs instead of spreading
//! over names that never meet.
//!
//! Each step moves the stamp on (a new entry, or the same entry again;
//! cluster time never goes back) and applies one command through
//! [`Harness::step`], which checks precheck against apply, no partial write
//! and every invariant. Leases the fetches granted are remembered, so acks,
//! nacks, extends, releases and dead letters mostly name live leases and
//! sometimes stale or made-up ones. Every `RESTART_EVERY` steps, and when
//! the input asks, the state is snapshotted and restored and the digests are
//! compared. Reads with odd filters and page limits run on the way.

use arbitrary::{Result, Unstructured};
use lockstep_core::limits::{DELAY_MS_MAX, LEASE_MS_LIMIT, PAGE_LIMIT_MAX};
use lockstep_core::*;

use crate::command::{tight_config, FIXTURE_TIME_MS};
use crate::harness::Harness;

/// Steps per input, so one input stays fast.
pub const STEPS_MAX: usize = 256;
/// Steps between two forced snapshot-restore checks.
pub const RESTART_EVERY: usize = 16;
/// Leases remembered for later acks and nacks.
const LEASES_REMEMBERED_MAX: usize = 16;

/// Two real queues, one that is never created, and an invalid name.
const QUEUES: [&str; 4] = ["a", "b", "absent", "no spaces"];
const GROUPS: [Option<&str>; 6] = [None, None, Some("g0"), Some("g1"), Some("g2"), Some("")];
const IDS: [&str; 9] = ["j0", "j1", "j2", "j3", "j4", "j5", "j6", "j7", ""];
const PAYLOADS: [&[u8]; 4] = [b"", b"p", b"pq", b"payload-over-16-bytes"];
const CONSUMERS: [&str; 3] = ["c0", "c1", "bell\u{7}"];
const REASONS: [&str; 3] = ["", "poison", "line\nbreak"];
/// Subscription names: one often made, one rarely, one no subscription can
/// have.
const SUBSCRIPTIONS: [&str; 3] = ["s0", "s1", "no spaces"];
/// Time steps: mostly small, sometimes past a lease, a backoff or a window.
const ADVANCE_MS: [u64; 10] = [
    0,
    0,
    1,
    10,
    100,
    1_000,
    30_000,
    60_001,
    3_600_000,
    2 * 86_400_000,
];
const DELAYS_MS: [u64; 5] = [0, 0, 50, 60_000, DELAY_MS_MAX + 1];
const LEASES_MS: [u64; 6] = [0, 0, 10, 2_000, LEASE_MS_LIMIT + 1, u64::MAX];
const PAGE_LIMITS: [u32; 5] = [0, 1, 2, PAGE_LIMIT_MAX, PAGE_LIMIT_MAX + 1];

fn pick<T: Copy>(u: &mut Unstructured<'_>, items: &[T]) -> Result<T> {
    u.choose(items).copied()
}

fn config(u: &mut Unstructured<'_>) -> Result<QueueConfig> {
    Ok(match u.int_in_range(0..=4u8)? {
        0 => QueueConfig::default(),
        1 => tight_config(),
        2 => QueueConfig {
            group_policy: GroupPolicy::Continue,
            max_attempts: 3,
            dedup_window_ms: 1_000,
            ..tight_config()
        },
        3 => QueueConfig {
            lease_ms_default: 10,
            lease_ms_max: 10,
            backoff_base_ms: 0,
            backoff_cap_ms: 0,
            max_jobs: 3,
            ..tight_config()
        },
        // Refused: no attempt at all.
        _ => QueueConfig {
            max_attempts: 0,
            ..QueueConfig::default()
        },
    })
}

fn new_job(u: &mut Unstructured<'_>) -> Result<NewJob> {
    let headers = match u.int_in_range(0..=3u8)? {
        0 => vec![("trace".to_string(), "1".to_string())],
        1 => vec![(String::new(), "empty key".to_string())],
        _ => Vec::new(),
    };
    Ok(NewJob {
        id: pick(u, &IDS)?.to_string(),
        group: pick(u, &GROUPS)?.map(str::to_string),
        payload: pick(u, &PAYLOADS)?.to_vec(),
        headers,
        // 10 is one past the highest priority.
        priority: u.int_in_range(0..=10)?,
        delay_ms: pick(u, &DELAYS_MS)?,
        fairness_key: None,
    })
}

/// The driver: the harness plus what it remembers of granted leases.
struct Run {
    h: Harness,
    /// (queue, offset, fence) of leases granted so far, newest last. Ended
    /// leases stay on purpose: presenting them must get "lease lost".
    leases: Vec<(String, u64, u64)>,
}

impl Run {
    /// A lease to act on: a remembered one (live, or since ended), or a
    /// made-up offset and fence.
    fn lease(&self, u: &mut Unstructured<'_>) -> Result<(String, u64, u64)> {
        if !self.leases.is_empty() && u.ratio(7u8, 8u8)? {
            return Ok(u.choose(&self.leases)?.clone());
        }
        Ok((
            pick(u, &QUEUES)?.to_string(),
            u.int_in_range(0..=12)?,
            u.int_in_range(0..=self.h.index.saturating_add(1))?,
        ))
    }

    fn remember(&mut self, queue: &str, reply: &std::result::Result<Reply, Error>) {
        if let Ok(Reply::Fetched(deliveries)) = reply {
            for d in deliveries {
                self.leases.push((queue.to_string(), d.offset, d.fence));
            }
            let excess = self.leases.len().saturating_sub(LEASES_REMEMBERED_MAX);
            self.leases.drain(..excess);
        }
    }

    fn command(&self, u: &mut Unstructured<'_>) -> Result<Command> {
        let queue = pick(u, &QUEUES)?.to_string();
        Ok(match u.int_in_range(0..=17u8)? {
            0 => Command::CreateQueue {
                name: queue,
                config: config(u)?,
            },
            1 => Command::UpdateQueue {
                name: queue,
                config: config(u)?,
            },
            2 if u.ratio(1u8, 4u8)? => Command::DeleteQueue { name: queue },
            2 | 3 => {
                let count = u.int_in_range(0..=5usize)?;
                let jobs = (0..count).map(|_| new_job(u)).collect::<Result<_>>()?;
                Command::Enqueue { queue, jobs }
            }
            4 | 5 => Command::Fetch {
                queue,
                consumer: pick(u, &CONSUMERS)?.to_string(),
                max: u.int_in_range(0..=5)?,
                lease_ms: pick(u, &LEASES_MS)?,
            },
            6 | 7 => {
                let (queue, offset, fence) = self.lease(u)?;
                let mut items = vec![AckItem { offset, fence }];
                for _ in 0..u.int_in_range(0..=4u8)? {
                    let (_, offset, fence) = self.lease(u)?;
                    items.push(AckItem { offset, fence });
                }
                if u.ratio(1u8, 16u8)? {
                    items.clear();
                }
                Command::Ack { queue, items }
            }
            8 => {
                let (queue, offset, fence) = self.lease(u)?;
                Command::Nack {
                    queue,
                    offset,
                    fence,
                    delay_ms: pick(u, &DELAYS_MS)?,
                }
            }
            9 => {
                let (queue, offset, fence) = self.lease(u)?;
                Command::Extend {
                    queue,
                    offset,
                    fence,
                    lease_ms: pick(u, &LEASES_MS)?,
                }
            }
            10 => {
                let (queue, offset, fence) = self.lease(u)?;
                Command::Release {
                    queue,
                    offset,
                    fence,
                }
            }
            11 => {
                let (queue, offset, fence) = self.lease(u)?;
                Command::DeadLetter {
                    queue,
                    offset,
                    fence,
                    reason: pick(u, &REASONS)?.to_string(),
                }
            }
            12 => Command::Tick,
            13 => {
                let group = pick(u, &GROUPS)?.unwrap_or("g0").to_string();
                if u.arbitrary()? {
                    Command::PauseGroup { queue, group }
                } else {
                    Command::ResumeGroup { queue, group }
                }
            }
            16 => {
                let name = pick(u, &SUBSCRIPTIONS)?.to_string();
                if u.ratio(1u8, 4u8)? {
                    Command::DeleteSubscription { queue, name }
                } else {
                    Command::CreateSubscription { queue, name }
                }
            }
            // A consumer command of this same generator, in a subscription
            // (a command no subscription runs is refused by name).
            17 => {
                let subscription = pick(u, &SUBSCRIPTIONS)?.to_string();
                let command = Box::new(self.command(u)?);
                Command::InSubscription {
                    subscription,
                    command,
                }
            }
            14 => Command::RequeueDeadLetter {
                queue,
                offset: u.int_in_range(0..=12)?,
            },
            _ => Command::PurgeDeadLetters {
                queue,
                which: if u.arbitrary()? {
                    PurgeSelector::All
                } else {
                    let count = u.int_in_range(0..=3usize)?;
                    PurgeSelector::Offsets(
                        (0..count)
                            .map(|_| u.int_in_range(0..=12))
                            .collect::<Result<_>>()?,
                    )
                },
            },
        })
    }

    /// Reads with the input's filter, cursor and page limit. They must
    /// answer (or refuse a bad limit) without panicking, and a listed queue
    /// must be found.
    fn read(&self, u: &mut Unstructured<'_>) -> Result<()> {
        let state = &self.h.state;
        for info in state.list_queues() {
            assert_eq!(
                state.queue_info(&info.name).as_ref(),
                Ok(&info),
                "listed queue reads differently"
            );
        }
        let queue = pick(u, &QUEUES)?;
        let filter = GroupFilter {
            key_prefix: pick(u, &["", "g", "g1", "h"])?.to_string(),
            status: pick(
                u,
                &[
                    GroupStatus::Any,
                    GroupStatus::Leased,
                    GroupStatus::Paused,
                    GroupStatus::Waiting,
                ],
            )?,
        };
        let after = pick(u, &[None, Some(""), Some("g0"), Some("g1"), Some("zz")])?;
        let limit = pick(u, &PAGE_LIMITS)?;
        if let Ok(page) = state.list_groups(queue, &filter, after, limit) {
            assert!(page.groups.len() <= limit as usize, "page over its limit");
        }
        let after = pick(u, &[None, Some(0), Some(3), Some(u64::MAX)])?;
        if let Ok(page) = state.list_dead_letters(queue, after, limit) {
            assert!(
                page.dead_letters.len() <= limit as usize,
                "page over its limit"
            );
        }
        Ok(())
    }

    fn step(&mut self, u: &mut Unstructured<'_>, n: usize) -> Result<()> {
        // A new entry most of the time; sometimes the same one again.
        if u.ratio(3u8, 4u8)? {
            self.h.index += 1;
        }
        self.h.time_ms += pick(u, &ADVANCE_MS)?;
        match u.int_in_range(0..=31u8)? {
            0 => self.h.restart(),
            1 => self.read(u)?,
            _ => {
                let command = self.command(u)?;
                let queue = command.queue().unwrap_or_default().to_string();
                let reply = self.h.step(command);
                self.remember(&queue, &reply);
            }
        }
        if n % RESTART_EVERY == RESTART_EVERY - 1 {
            self.h.restart();
        }
        Ok(())
    }
}

/// The `sequence` target.
pub fn sequence(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let mut run = Run {
        h: Harness::new(1, FIXTURE_TIME_MS),
        leases: Vec::new(),
    };
    // Both real queues exist from the start, most of the time.
    for name in &QUEUES[..2] {
        if u.ratio(7u8, 8u8).unwrap_or(true) {
            let config = config(&mut u).unwrap_or_default();
            let _ = run.h.step(Command::CreateQueue {
                name: name.to_string(),
                config,
            });
        }
    }
    for n in 0..STEPS_MAX {
        if u.is_empty() || run.step(&mut u, n).is_err() {
            break;
        }
    }
    run.h.restart();
}
