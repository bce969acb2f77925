//! Job ids made by the client.
//!
//! A node makes an id for a job that arrives without one (`id` left out),
//! but it makes a new one for every request it receives. A client that retried such a job
//! after an unknown outcome (a timeout, a leader change) could therefore
//! store it twice. The client closes that gap by filling in every missing id
//! itself, once, before the first try; each retry then carries the same
//! ids, and the node's dedup index answers DUPLICATE with the original
//! offset instead of storing a second job (SPEC 2.1).

use lockstep_proto::Job;

/// A fresh job id: 128 random bits from the operating system's generator
/// (through `rand`'s thread-local CSPRNG), as 32 lowercase hex digits. The
/// chance that two of a billion ids collide is about 10^-21.
pub fn new_job_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Gives every job whose id is left out (`None`) a fresh one; keeps the ids
/// already set. Returns how many it filled.
///
/// An id that is present but empty is left alone: the node refuses it with
/// INVALID_ARGUMENT, because it is almost always an unset variable, and the
/// client does not hide that mistake.
pub fn fill_missing_ids(jobs: &mut [Job]) -> usize {
    let mut filled = 0;
    for job in jobs.iter_mut().filter(|j| j.id.is_none()) {
        job.id = Some(new_job_id());
        filled += 1;
    }
    filled
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn ids_are_32_hex_digits_and_distinct() {
        let ids: BTreeSet<String> = (0..10_000).map(|_| new_job_id()).collect();
        assert_eq!(ids.len(), 10_000);
        for id in ids.iter().take(100) {
            assert_eq!(id.len(), 32);
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        }
    }

    #[test]
    fn only_missing_ids_are_filled_and_given_ones_are_kept() {
        let mut jobs = vec![
            Job {
                id: Some("mine".into()),
                ..Default::default()
            },
            Job::default(),
            Job::default(),
            Job {
                id: Some(String::new()),
                ..Default::default()
            },
        ];
        assert_eq!(fill_missing_ids(&mut jobs), 2);
        assert_eq!(jobs[0].id.as_deref(), Some("mine"));
        let made: Vec<&str> = jobs[1..3].iter().filter_map(|j| j.id.as_deref()).collect();
        assert_eq!(made.len(), 2);
        assert!(made.iter().all(|id| id.len() == 32));
        assert_ne!(made[0], made[1]);
        assert_eq!(
            jobs[3].id.as_deref(),
            Some(""),
            "the node refuses it, by name"
        );
        // Filling again changes nothing: a retry keeps the ids.
        let before: Vec<Option<String>> = jobs.iter().map(|j| j.id.clone()).collect();
        assert_eq!(fill_missing_ids(&mut jobs), 0);
        let after: Vec<Option<String>> = jobs.iter().map(|j| j.id.clone()).collect();
        assert_eq!(before, after);
    }
}
