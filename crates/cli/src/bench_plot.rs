//! `lockstep bench-plot`: gathers `lockstep bench --json` results into one
//! file and draws them as SVG line charts (no plotting dependency; the
//! charts are simple enough to write by hand):
//! - throughput against concurrency of the enqueue-only runs with batch 1;
//! - the per-job latency CDF of those runs;
//! - the per-second timeline of mixed runs (a failover's dip).

#![allow(clippy::print_stdout)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

#[derive(clap::Args, Debug)]
pub struct PlotArgs {
    /// Result files of `lockstep bench --json` (each one run, or an array).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Prefix of the files written: PREFIX.json (all runs, gathered) and
    /// PREFIX-*.svg.
    #[arg(long)]
    pub out: PathBuf,
}

pub const WIDTH: f64 = 760.0;
pub const HEIGHT: f64 = 420.0;
const MARGIN_LEFT: f64 = 70.0;
const MARGIN_RIGHT: f64 = 190.0;
const MARGIN_TOP: f64 = 40.0;
const MARGIN_BOTTOM: f64 = 50.0;
const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// One named line of (x, y) points.
pub type Series = (String, Vec<(f64, f64)>);

pub fn run(args: PlotArgs) -> Result<(), String> {
    let mut runs: Vec<Value> = Vec::new();
    for path in &args.inputs {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        match serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))? {
            Value::Array(items) => runs.extend(items),
            one => runs.push(one),
        }
    }
    let gathered = with_suffix(&args.out, ".json");
    if !args.inputs.iter().any(|p| p == &gathered) {
        let json = serde_json::to_string_pretty(&runs).map_err(|e| e.to_string())?;
        std::fs::write(&gathered, json).map_err(|e| format!("{}: {e}", gathered.display()))?;
    }
    let mut written = Vec::new();
    for (name, svg) in charts(&runs) {
        let path = with_suffix(&args.out, &format!("-{name}.svg"));
        std::fs::write(&path, svg).map_err(|e| format!("{}: {e}", path.display()))?;
        written.push(path.display().to_string());
    }
    println!("{} runs; wrote {}", runs.len(), written.join(", "));
    Ok(())
}

fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn num(v: &Value, path: &[&str]) -> Option<f64> {
    let mut v = v;
    for key in path {
        v = v.get(key)?;
    }
    v.as_f64()
}

fn text(v: &Value, path: &[&str]) -> String {
    let mut v = v;
    for key in path {
        match v.get(key) {
            Some(next) => v = next,
            None => return String::new(),
        }
    }
    v.as_str().unwrap_or_default().to_string()
}

/// The charts the runs allow, by file-name part.
pub fn charts(runs: &[Value]) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    // Enqueue-only runs with one job per call, by payload and groups.
    let sweep: Vec<&Value> = runs
        .iter()
        .filter(|r| text(r, &["args", "mode"]) == "enqueue")
        .filter(|r| num(r, &["args", "batch"]) == Some(1.0) && r["args"]["rate"].is_null())
        .collect();
    if !sweep.is_empty() {
        let mut points: Vec<(f64, f64)> = sweep
            .iter()
            .filter_map(|r| {
                let c = num(r, &["args", "producers"])? * num(r, &["args", "in_flight"])?;
                Some((c, num(&r["phases"][0], &["jobs_per_s"])?))
            })
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut p99: Vec<(f64, f64)> = sweep
            .iter()
            .filter_map(|r| {
                let c = num(r, &["args", "producers"])? * num(r, &["args", "in_flight"])?;
                Some((c, num(&r["phases"][0], &["per_call", "p99"])?))
            })
            .collect();
        p99.sort_by(|a, b| a.0.total_cmp(&b.0));
        out.push((
            "throughput",
            chart(
                "Enqueue throughput vs concurrency (3 nodes, fsync, 1 job per call)",
                "calls in flight (producers x in-flight)",
                "jobs/s",
                &[("jobs/s".to_string(), points)],
                true,
                false,
            ),
        ));
        out.push((
            "latency-p99",
            chart(
                "Enqueue call latency p99 vs concurrency",
                "calls in flight (producers x in-flight)",
                "p99 ms",
                &[("p99 ms".to_string(), p99)],
                true,
                false,
            ),
        ));
        let cdfs: Vec<Series> = sweep
            .iter()
            .filter_map(|r| {
                let cdf = r["phases"][0]["cdf"].as_array()?;
                let points = cdf
                    .iter()
                    .filter_map(|p| Some((p[0].as_f64()?.max(0.01), p[1].as_f64()?)))
                    .collect();
                Some((text(r, &["label"]), points))
            })
            .collect();
        out.push((
            "latency-cdf",
            chart(
                "Per-job enqueue latency CDF",
                "latency ms (log)",
                "fraction of jobs",
                &cdfs,
                true,
                false,
            ),
        ));
    }
    let mixed: Vec<Series> = runs
        .iter()
        .filter(|r| text(r, &["args", "mode"]) == "mixed")
        .flat_map(|r| {
            let label = text(r, &["label"]);
            r["phases"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |p| {
                    let points = p["timeline"]
                        .as_array()
                        .map(|t| {
                            t.iter()
                                .enumerate()
                                .filter_map(|(i, v)| Some((i as f64, v.as_f64()?)))
                                .collect()
                        })
                        .unwrap_or_default();
                    (format!("{label} {}", text(&p, &["name"])), points)
                })
        })
        .collect();
    if !mixed.is_empty() {
        out.push((
            "timeline",
            chart(
                "Mixed load: jobs per second (a leader kill shows as a dip)",
                "second",
                "jobs/s",
                &mixed,
                false,
                false,
            ),
        ));
    }
    out
}

/// A line chart as SVG text. `log_x`/`log_y` use a base-10 scale (values
/// must be positive).
pub fn chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_x: bool,
    log_y: bool,
) -> String {
    chart_with_bands(title, x_label, y_label, series, &[], log_x, log_y)
}

/// A shaded span of the x axis with a label: a fault, in a chaos timeline.
pub type Band = (f64, f64, String);

/// [`chart`] with shaded `bands` behind the lines, each labelled at its top.
pub fn chart_with_bands(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    bands: &[Band],
    log_x: bool,
    log_y: bool,
) -> String {
    let mut all: Vec<(f64, f64)> = series.iter().flat_map(|s| s.1.iter().copied()).collect();
    if let Some((_, first)) = all.first().copied() {
        // Bands widen the x range, never the y range.
        all.extend(
            bands
                .iter()
                .flat_map(|(a, b, _)| [(*a, first), (*b, first)]),
        );
    }
    let scale = |v: f64, log: bool| if log { v.max(1e-9).log10() } else { v };
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in &all {
        x0 = x0.min(scale(*x, log_x));
        x1 = x1.max(scale(*x, log_x));
        y0 = y0.min(scale(*y, log_y));
        y1 = y1.max(scale(*y, log_y));
    }
    if all.is_empty() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if !log_y {
        y0 = y0.min(0.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    let plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM;
    let px = |x: f64| MARGIN_LEFT + (scale(x, log_x) - x0) / (x1 - x0) * plot_w;
    let py = |y: f64| MARGIN_TOP + plot_h - (scale(y, log_y) - y0) / (y1 - y0) * plot_h;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" font-size="14" text-anchor="middle">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    // Axes and ticks.
    let (left, bottom) = (MARGIN_LEFT, MARGIN_TOP + plot_h);
    let _ = writeln!(
        svg,
        r#"<path d="M{left},{MARGIN_TOP} L{left},{bottom} L{},{bottom}" stroke="black" fill="none"/>"#,
        left + plot_w
    );
    for i in 0..=5 {
        let f = i as f64 / 5.0;
        let xv = unscale(x0 + f * (x1 - x0), log_x);
        let yv = unscale(y0 + f * (y1 - y0), log_y);
        let (tx, ty) = (left + f * plot_w, bottom - f * plot_h);
        let _ = writeln!(
            svg,
            r##"<line x1="{tx}" y1="{bottom}" x2="{tx}" y2="{}" stroke="black"/><text x="{tx}" y="{}" text-anchor="middle">{}</text>"##,
            bottom + 5.0,
            bottom + 18.0,
            short(xv)
        );
        let _ = writeln!(
            svg,
            r##"<line x1="{}" y1="{ty}" x2="{}" y2="{ty}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            left,
            left + plot_w,
            left - 6.0,
            ty + 4.0,
            short(yv)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        left + plot_w / 2.0,
        HEIGHT - 12.0,
        escape(x_label)
    );
    let _ = writeln!(
        svg,
        r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>"#,
        MARGIN_TOP + plot_h / 2.0,
        MARGIN_TOP + plot_h / 2.0,
        escape(y_label)
    );
    for (k, (from, to, label)) in bands.iter().enumerate() {
        let (bx0, bx1) = (px(*from), px(*to).max(px(*from) + 1.0));
        let _ = writeln!(
            svg,
            r##"<rect x="{bx0:.1}" y="{MARGIN_TOP}" width="{:.1}" height="{plot_h}" fill="#f4a3a3" fill-opacity="0.35"/><text x="{:.1}" y="{}" font-size="9" fill="#933">{}</text>"##,
            bx1 - bx0,
            bx0 + 2.0,
            MARGIN_TOP + 10.0 + (k % 4) as f64 * 10.0,
            escape(label)
        );
    }
    for (i, (name, points)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let path: Vec<String> = points
            .iter()
            .enumerate()
            .map(|(k, (x, y))| {
                format!(
                    "{}{:.1},{:.1}",
                    if k == 0 { "M" } else { "L" },
                    px(*x),
                    py(*y)
                )
            })
            .collect();
        let _ = writeln!(
            svg,
            r#"<path d="{}" stroke="{colour}" stroke-width="2" fill="none"/>"#,
            path.join(" ")
        );
        for (x, y) in points {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{colour}"/>"#,
                px(*x),
                py(*y)
            );
        }
        let ly = MARGIN_TOP + 14.0 + i as f64 * 16.0;
        let lx = left + plot_w + 12.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{lx}" y="{}" width="10" height="10" fill="{colour}"/><text x="{}" y="{}">{}</text>"#,
            ly - 9.0,
            lx + 14.0,
            ly,
            escape(name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn unscale(v: f64, log: bool) -> f64 {
    if log {
        10f64.powf(v)
    } else {
        v
    }
}

fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_is_svg_with_every_series_and_point() {
        let svg = chart(
            "t <1>",
            "x",
            "y",
            &[
                ("a".into(), vec![(1.0, 10.0), (10.0, 20.0), (100.0, 15.0)]),
                ("b".into(), vec![(1.0, 5.0)]),
            ],
            true,
            false,
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<circle").count(), 4);
        assert!(svg.contains("t &lt;1&gt;"), "title escaped");
        assert!(svg.contains(">a</text>") && svg.contains(">b</text>"));
    }

    #[test]
    fn charts_come_from_the_runs_that_allow_them() {
        let run = |mode: &str, producers: u64| {
            serde_json::json!({
                "label": format!("{mode}-{producers}"),
                "args": {"mode": mode, "batch": 1, "rate": null, "producers": producers, "in_flight": 1},
                "phases": [{"name": "enqueue", "jobs_per_s": 100.0 * producers as f64,
                            "per_call": {"p99": 5.0}, "cdf": [[1.0, 0.5], [2.0, 1.0]],
                            "timeline": [10, 0, 12]}]
            })
        };
        let names: Vec<&str> = charts(&[run("enqueue", 1), run("enqueue", 4)])
            .into_iter()
            .map(|c| c.0)
            .collect();
        assert_eq!(names, ["throughput", "latency-p99", "latency-cdf"]);
        let names: Vec<&str> = charts(&[run("mixed", 8)])
            .into_iter()
            .map(|c| c.0)
            .collect();
        assert_eq!(names, ["timeline"]);
        assert!(charts(&[]).is_empty());
    }
}
