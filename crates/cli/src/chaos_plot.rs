//! The timeline picture of a chaos run: faults as shaded spans behind the
//! work done per second and the latency of the calls that succeeded, so a
//! person can see what each fault did.

use lockstep_chaos::history::{Call, Op, Outcome};

use crate::bench_plot::{chart_with_bands, Band, Series, HEIGHT};

/// The timeline as one SVG: throughput above, latency below.
pub fn timeline(history: &[Op], faults: &[(u64, String)], title: &str) -> String {
    let t0 = history
        .iter()
        .map(|op| op.invoke_ms)
        .chain(faults.iter().map(|f| f.0))
        .min()
        .unwrap_or(0);
    let second = |ms: u64| (ms.saturating_sub(t0) / 1_000) as usize;
    let seconds = history
        .iter()
        .map(|op| second(op.complete_ms))
        .max()
        .unwrap_or(0)
        + 1;
    let (mut enqueued, mut acked, mut failed) = (
        vec![0f64; seconds],
        vec![0f64; seconds],
        vec![0f64; seconds],
    );
    let mut latencies: Vec<Vec<u64>> = vec![Vec::new(); seconds];
    for op in history {
        let s = second(op.complete_ms);
        match (&op.outcome, &op.call) {
            (Outcome::Ok, Call::Enqueue { jobs, .. }) => enqueued[s] += jobs.len() as f64,
            (Outcome::Ok, Call::Ack { items, .. }) => acked[s] += items.len() as f64,
            (Outcome::Ok, _) => {}
            (Outcome::Fail | Outcome::Indeterminate, _) => failed[s] += 1.0,
        }
        if op.outcome == Outcome::Ok && matches!(op.call, Call::Enqueue { .. } | Call::Ack { .. }) {
            latencies[s].push(op.complete_ms.saturating_sub(op.invoke_ms));
        }
    }
    let points = |v: &[f64]| -> Vec<(f64, f64)> {
        v.iter().enumerate().map(|(i, y)| (i as f64, *y)).collect()
    };
    let quantile = |q: f64| -> Vec<(f64, f64)> {
        latencies
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.is_empty())
            .map(|(i, l)| {
                let mut l = l.clone();
                l.sort_unstable();
                let k = ((l.len() - 1) as f64 * q).round() as usize;
                (i as f64, l[k] as f64)
            })
            .collect()
    };
    let bands = fault_bands(faults, t0);
    let work: Vec<Series> = vec![
        ("jobs enqueued".into(), points(&enqueued)),
        ("jobs acked".into(), points(&acked)),
        ("calls failed or unknown".into(), points(&failed)),
    ];
    let latency: Vec<Series> = vec![
        ("p50 ms".into(), quantile(0.5)),
        ("p99 ms".into(), quantile(0.99)),
    ];
    let top = chart_with_bands(
        &format!("{title}: work per second (shaded: faults)"),
        "second",
        "per second",
        &work,
        &bands,
        false,
        false,
    );
    let bottom = chart_with_bands(
        "latency of successful enqueues and acks",
        "second",
        "ms",
        &latency,
        &bands,
        false,
        false,
    );
    let width = crate::bench_plot::WIDTH;
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{}\">\n<svg y=\"0\">\n{top}</svg>\n<svg y=\"{HEIGHT}\">\n{bottom}</svg>\n</svg>\n",
        2.0 * HEIGHT
    )
}

/// Pairs each fault with the "healed" entry after it, in seconds from `t0`.
fn fault_bands(faults: &[(u64, String)], t0: u64) -> Vec<Band> {
    let s = |ms: u64| ms.saturating_sub(t0) as f64 / 1_000.0;
    let mut bands = Vec::new();
    let mut open: Option<(u64, &str)> = None;
    for (ms, label) in faults {
        if label.starts_with("healed") {
            if let Some((from, what)) = open.take() {
                bands.push((s(from), s(*ms), what.to_string()));
            }
        } else {
            open = Some((*ms, label));
        }
    }
    if let Some((from, what)) = open {
        bands.push((s(from), s(from) + 1.0, what.to_string()));
    }
    bands
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_become_bands_between_start_and_heal() {
        let faults = vec![
            (10_000, "kill node 2 for 3000 ms".to_string()),
            (13_000, "healed kill".to_string()),
            (20_000, "pause node 1 for 2000 ms".to_string()),
            (22_500, "healed pause".to_string()),
        ];
        let bands = fault_bands(&faults, 5_000);
        assert_eq!(
            bands,
            vec![
                (5.0, 8.0, "kill node 2 for 3000 ms".to_string()),
                (15.0, 17.5, "pause node 1 for 2000 ms".to_string()),
            ]
        );
        let svg = timeline(&[], &faults, "kill seed 1");
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("kill node 2"), "{svg}");
    }
}
