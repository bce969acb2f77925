//! Reports of a run: the JSON report with the checker's verdict and the
//! replay command, the one-line summary, and the one-page summary.

use super::options::{Options, Outcomes};
use crate::history::{Call, Op};

/// The JSON report of one run.
#[derive(Debug, serde::Serialize)]
pub struct ChaosReport {
    pub seed: u64,
    pub profile: &'static str,
    pub nodes: u64,
    pub duration_s: u64,
    pub passed: bool,
    pub liveness: Option<String>,
    pub checker: crate::checker::Report,
    /// Jobs the client library's `Worker` handed its handler.
    pub worker_jobs: usize,
    /// How that `Worker` took them: `stream` or `fetch`.
    pub worker_via: &'static str,
    pub faults: Vec<(u64, String)>,
    /// The command that runs the same seed and profile again.
    pub replay: String,
}

pub fn report(options: &Options, outcomes: &Outcomes) -> ChaosReport {
    let checker = crate::checker::check(&outcomes.history);
    ChaosReport {
        seed: options.seed,
        profile: options.profile.name(),
        nodes: options.nodes,
        duration_s: options.duration.as_secs(),
        passed: checker.passed() && outcomes.liveness.is_none(),
        liveness: outcomes.liveness.clone(),
        checker,
        worker_jobs: worker_jobs(&outcomes.history),
        worker_via: match super::library::worker_consume_mode(options.seed) {
            lockstep_client::ConsumeMode::Stream => "stream",
            lockstep_client::ConsumeMode::Fetch => "fetch",
        },
        faults: outcomes.faults.clone(),
        replay: format!(
            "lockstep chaos --profile {} --seed {} --duration-s {} --nodes {} --producers {} --workers {} --groups {}",
            options.profile.name(),
            options.seed,
            options.duration.as_secs(),
            options.nodes,
            options.producers,
            options.workers,
            options.groups
        ) + &options
            .planted
            .as_ref()
            .map(|b| format!(" --plant {b}"))
            .unwrap_or_default()
            + &options
                .max_attempts
                .map(|n| format!(" --max-attempts {n}"))
                .unwrap_or_default(),
    }
}

/// Jobs the client library's `Worker` handed its handler: its fetches are
/// the only ones the history records with an unknown send time, one per job.
fn worker_jobs(history: &[Op]) -> usize {
    history
        .iter()
        .filter(|op| {
            matches!(
                &op.call,
                Call::Fetch {
                    invoke_unknown: true,
                    ..
                }
            )
        })
        .count()
}

/// A short human summary of a report.
pub fn summary(r: &ChaosReport) -> String {
    let counts: Vec<String> = CLASSES
        .iter()
        .zip(r.checker.counts.in_order())
        .map(|((letter, _), n)| format!("{letter}={n}"))
        .collect();
    format!(
        "{} profile={} seed={} nodes={} {}s: ops={} enqueued_ok={} delivered={} dead_lettered={} worker_jobs={} worker_via={} {} faults={} liveness={}\nreplay: {}",
        if r.passed { "PASS" } else { "FAIL" },
        r.profile,
        r.seed,
        r.nodes,
        r.duration_s,
        r.checker.ops,
        r.checker.enqueued_ok,
        r.checker.delivered,
        r.checker.dead_lettered,
        r.worker_jobs,
        r.worker_via,
        counts.join(" "),
        r.faults.len() / 2,
        r.liveness.as_deref().unwrap_or("ok"),
        r.replay
    )
}

/// What each anomaly class means, for the one-page summary, in the order
/// of `Counts::in_order`.
const CLASSES: [(&str, &str); 12] = [
    (
        "L",
        "acknowledged enqueue neither delivered nor dead-lettered after the drain",
    ),
    ("U", "delivered or dead-lettered job no producer sent"),
    ("D", "one id stored at two offsets"),
    ("R", "delivered again after an ack answered OK"),
    ("O", "delivered out of group order"),
    (
        "F",
        "overlapping live leases by cluster time, or a stale fence accepted",
    ),
    (
        "X",
        "nodes with different state digests at one applied index",
    ),
    (
        "T",
        "overlapping live leases on one group by the harness's clock",
    ),
    (
        "A",
        "an attempt number no delivery explains (orphaned lease, dead-lettered unseen)",
    ),
    ("S", "stats after the drain that differ from the history"),
    (
        "N",
        "NOT_FOUND for a queue whose creation was acknowledged before",
    ),
    (
        "C",
        "a chained step lost (its ack landed, its next job is missing) or doubled",
    ),
];

/// The one-page human summary of a run (`summary.txt`): the verdict, what
/// was done, each anomaly class with its count and first examples, the
/// faults in order, and the replay command.
pub fn summary_page(r: &ChaosReport) -> String {
    use std::fmt::Write as _;
    let counts = r.checker.counts.in_order();
    let mut page = String::new();
    let _ = writeln!(
        page,
        "{}: chaos profile {} seed {}, {} nodes, {} s",
        if r.passed { "PASS" } else { "FAIL" },
        r.profile,
        r.seed,
        r.nodes,
        r.duration_s
    );
    let _ = writeln!(
        page,
        "{} operations recorded, {} enqueues acknowledged, {} deliveries, {} dead-lettered, \
         {} jobs handled by the client's Worker",
        r.checker.ops,
        r.checker.enqueued_ok,
        r.checker.delivered,
        r.checker.dead_lettered,
        r.worker_jobs
    );
    let _ = writeln!(
        page,
        "liveness: {}",
        r.liveness
            .as_deref()
            .unwrap_or("ok (a leader after healing, the queue drained)")
    );
    let _ = writeln!(page, "\nanomalies:");
    for ((letter, meaning), n) in CLASSES.iter().zip(counts) {
        let _ = writeln!(page, "  {letter} = {n:<6} {meaning}");
        for example in r
            .checker
            .examples
            .get(*letter)
            .into_iter()
            .flatten()
            .take(3)
        {
            let _ = writeln!(page, "      e.g. {example}");
        }
    }
    if !r.checker.undrained.is_empty() {
        let _ = writeln!(page, "  not drained: {}", r.checker.undrained.join(", "));
    }
    let _ = writeln!(page, "\nfaults:");
    let t0 = r.faults.first().map_or(0, |f| f.0);
    for (ms, what) in &r.faults {
        let _ = writeln!(
            page,
            "  +{:>6.1} s  {what}",
            ms.saturating_sub(t0) as f64 / 1e3
        );
    }
    if r.faults.is_empty() {
        let _ = writeln!(page, "  none");
    }
    let _ = writeln!(page, "\nreplay: {}", r.replay);
    page
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::super::options::Profile;
    use super::*;

    #[test]
    fn the_summary_page_lists_classes_faults_and_the_replay() {
        let options = Options {
            bin: PathBuf::from("lockstep"),
            dir: PathBuf::from("/tmp/x"),
            nodes: 3,
            seed: 9,
            profile: Profile::Kill,
            duration: Duration::from_secs(30),
            producers: 4,
            workers: 4,
            groups: 20,
            planted: Some("skip-fence".into()),
            net: 0,
            max_attempts: None,
        };
        let outcomes = Outcomes {
            history: Vec::new(),
            faults: vec![
                (10_000, "kill node 2 for 2000 ms".into()),
                (12_000, "healed kill".into()),
            ],
            liveness: None,
        };
        let page = summary_page(&report(&options, &outcomes));
        for needle in [
            "chaos profile kill seed 9, 3 nodes, 30 s",
            "  L = 0 ",
            "  X = 0 ",
            "  T = 0 ",
            "  A = 0 ",
            "  S = 0 ",
            "+   2.0 s  healed kill",
            "replay: lockstep chaos --profile kill --seed 9",
            "--plant skip-fence",
        ] {
            assert!(page.contains(needle), "`{needle}` missing from:\n{page}");
        }
        let line = summary(&report(&options, &outcomes));
        assert!(
            line.contains("L=0 U=0 D=0 R=0 O=0 F=0 X=0 T=0 A=0 S=0 N=0 "),
            "{line}"
        );
    }

    #[test]
    fn the_classes_follow_the_checker_s_letters() {
        let letters: Vec<&str> = CLASSES.iter().map(|(letter, _)| *letter).collect();
        assert_eq!(letters, crate::checker::Counts::LETTERS);
    }
}
