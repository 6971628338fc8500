//! The run's report: a JSON document (for machines and CI), a final table
//! (for the terminal), and a self-contained HTML page whose charts are
//! inline SVG (no scripts, no downloads: it opens anywhere, offline).

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::lake::Verdict;
use crate::scenario::Scenario;
use crate::workers::Sample;

/// Percentiles of a histogram, in its unit.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// Percentiles of `h`, divided by `scale` (1000 for µs → ms).
    pub fn of(h: &Histogram<u64>, scale: f64) -> Self {
        if h.is_empty() {
            return Percentiles::default();
        }
        let q = |p: f64| h.value_at_quantile(p) as f64 / scale;
        Percentiles { count: h.len(), p50: q(0.5), p90: q(0.9), p99: q(0.99), max: h.max() as f64 / scale }
    }
}

/// One second of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// Seconds since the start.
    pub t: f64,
    /// Records sent / acknowledged per second in this interval.
    pub sent_per_s: f64,
    pub acked_per_s: f64,
    /// Distinct events that became readable in the lake per second.
    pub lake_per_s: f64,
    /// End-to-end latency percentiles of the events seen in this interval, ms.
    pub e2e_p50_ms: f64,
    pub e2e_p99_ms: f64,
    /// The fleet at the end of the interval.
    pub fleet: Sample,
}

/// A chaos action, when it happened.
#[derive(Debug, Clone, Serialize)]
pub struct ChaosEvent {
    pub t: f64,
    pub kind: String,
    pub detail: String,
}

/// Producer-side totals.
#[derive(Debug, Default, Serialize)]
pub struct Produced {
    pub target_rate: u32,
    pub achieved_rate: f64,
    pub sent: u64,
    pub acked: u64,
    pub failed: u64,
    pub throttled: u64,
    pub retried: u64,
    pub produce_latency_ms: Percentiles,
    pub failure_examples: Vec<String>,
}

/// Fault proxy totals.
#[derive(Debug, Default, Serialize)]
pub struct Injected {
    pub s3_errors: u64,
    pub s3_dropped: u64,
    pub s3_passed: u64,
    pub kinesis_throttles: u64,
    pub kinesis_passed: u64,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    pub started: String,
    pub seconds: f64,
    pub produced: Produced,
    pub end_to_end_latency_ms: Percentiles,
    /// Seconds from the end of producing until the lake held every event.
    pub drain_seconds: Option<f64>,
    pub verdict: Verdict,
    pub consumers: Consumers,
    pub injected: Injected,
    pub chaos: Vec<ChaosEvent>,
    pub timeline: Vec<Point>,
}

/// Consumer-side totals.
#[derive(Debug, Default, Serialize)]
pub struct Consumers {
    pub workers: usize,
    /// Workers of a running fleet watched through their `/metrics`.
    pub attached: usize,
    pub restarts: u32,
    pub cpu_seconds: f64,
    pub max_rss_mib: f64,
    pub max_lag_ms: f64,
}

impl Report {
    /// Whether the run proved exactly-once delivery.
    pub fn passed(&self) -> bool {
        self.verdict.exactly_once() && self.verdict.acked > 0
    }

    /// The final table for the terminal.
    pub fn table(&self) -> String {
        let v = &self.verdict;
        let p = &self.produced;
        let e = &self.end_to_end_latency_ms;
        let mut t = String::new();
        let mut row = |k: &str, val: String| {
            let _ = writeln!(t, "  {k:<40} {val}");
        };
        row("run", format!("{} ({:.0} s, stream {})", self.scenario.run_id, self.seconds, self.scenario.stream));
        row("rate (target / achieved)", format!("{} / {:.0} records/s", p.target_rate, p.achieved_rate));
        row("sent / acked / failed", format!("{} / {} / {}", p.sent, p.acked, p.failed));
        row("producer throttled / retried", format!("{} / {}", p.throttled, p.retried));
        let pl = &p.produce_latency_ms;
        row("produce latency p50/p99/max", format!("{:.1} / {:.1} / {:.1} ms", pl.p50, pl.p99, pl.max));
        row(
            "end-to-end p50/p90/p99/max",
            format!("{:.2} / {:.2} / {:.2} / {:.2} s", e.p50 / 1e3, e.p90 / 1e3, e.p99 / 1e3, e.max / 1e3),
        );
        row("drain after producing", self.drain_seconds.map_or("did not finish".into(), |s| format!("{s:.1} s")));
        let c = &self.consumers;
        row(
            "consumers",
            format!(
                "{} workers (+{} attached), {} restarts, {:.1} CPU s, max RSS {:.0} MiB, max lag {:.1} s",
                c.workers,
                c.attached,
                c.restarts,
                c.cpu_seconds,
                c.max_rss_mib,
                c.max_lag_ms / 1e3
            ),
        );
        let i = &self.injected;
        row(
            "faults injected",
            format!(
                "S3 {} errors + {} drops, Kinesis {} throttles; {} chaos actions",
                i.s3_errors,
                i.s3_dropped,
                i.kinesis_throttles,
                self.chaos.len()
            ),
        );
        row(
            "lake",
            format!(
                "{} data files, {} error files; {} of {} acked events found",
                v.data_files, v.error_files, v.found, v.acked
            ),
        );
        row(
            "lost / duplicated / errored / misrouted",
            format!("{} / {} / {} / {}", v.lost, v.duplicated, v.errored, v.misrouted),
        );
        row("verdict", if self.passed() { "PASS: every acked event exactly once".into() } else { "FAIL".to_string() });
        for (what, ids) in &v.examples {
            row(&format!("  e.g. {what}"), ids.join(", "));
        }
        t
    }

    /// The self-contained HTML page.
    pub fn html(&self) -> String {
        let pts = &self.timeline;
        let series = |f: &dyn Fn(&Point) -> f64| pts.iter().map(|p| (p.t, f(p))).collect::<Vec<_>>();
        let marks: Vec<(f64, String)> = self.chaos.iter().map(|c| (c.t, c.kind.clone())).collect();
        let throughput = chart(
            "Throughput",
            "records/s",
            &[
                ("sent", "#1f77b4", series(&|p| p.sent_per_s)),
                ("acked", "#2ca02c", series(&|p| p.acked_per_s)),
                ("readable in the lake", "#ff7f0e", series(&|p| p.lake_per_s)),
            ],
            &marks,
        );
        // Only intervals in which events became readable have a latency.
        let seen = |f: &dyn Fn(&Point) -> f64| {
            pts.iter().filter(|p| p.lake_per_s > 0.0).map(|p| (p.t, f(p))).collect::<Vec<_>>()
        };
        let latency = chart(
            "End-to-end latency (send → readable in the lake)",
            "seconds",
            &[("p50", "#2ca02c", seen(&|p| p.e2e_p50_ms / 1e3)), ("p99", "#d62728", seen(&|p| p.e2e_p99_ms / 1e3))],
            &marks,
        );
        let lag = chart(
            "Consumer lag (largest MillisBehindLatest)",
            "seconds",
            &[("lag", "#9467bd", series(&|p| p.fleet.lag_ms / 1e3))],
            &marks,
        );
        let resources = chart(
            "Consumer resources",
            "CPU s/s · RSS GiB",
            &[
                ("CPU cores used", "#8c564b", cpu_rate(pts)),
                ("RSS (GiB)", "#17becf", series(&|p| p.fleet.rss_mib / 1024.0)),
            ],
            &marks,
        );
        let verdict_class = if self.passed() { "pass" } else { "fail" };
        let verdict =
            if self.passed() { "PASS — every acknowledged event is in the lake exactly once" } else { "FAIL" };
        let chaos_rows: String = self
            .chaos
            .iter()
            .map(|c| format!("<tr><td>{:.1} s</td><td>{}</td><td>{}</td></tr>", c.t, esc(&c.kind), esc(&c.detail)))
            .collect();
        format!(
            r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>shardlake load test {run}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1100px; }}
h1 {{ font-size: 1.5em; }} pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; }}
.pass {{ color: #1a7f37; }} .fail {{ color: #cf222e; }}
.charts {{ display: grid; grid-template-columns: 1fr 1fr; gap: 1em; }} figure {{ margin: 0; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ddd; padding: 0.2em 0.6em; }}
</style></head><body>
<h1>shardlake load test <code>{run}</code></h1>
<h2 class="{verdict_class}" id="verdict">{verdict}</h2>
<pre id="summary">{table}</pre>
<div class="charts">{throughput}{latency}{lag}{resources}</div>
<h2>Chaos</h2>
<table><tr><th>at</th><th>action</th><th>detail</th></tr>{chaos_rows}</table>
<p>Dashed lines on the charts mark chaos actions. Full figures: <code>report.json</code>.</p>
</body></html>
"#,
            run = esc(&self.scenario.run_id),
            table = esc(&self.table()),
        )
    }
}

/// CPU cores used per interval, from the cumulative CPU seconds.
fn cpu_rate(pts: &[Point]) -> Vec<(f64, f64)> {
    pts.windows(2)
        .map(|w| {
            let dt = (w[1].t - w[0].t).max(1e-3);
            (w[1].t, ((w[1].fleet.cpu_seconds - w[0].fleet.cpu_seconds) / dt).max(0.0))
        })
        .collect()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A chart line: its name, colour and points.
pub type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// An SVG line chart with a legend and dashed vertical marks.
pub fn chart(title: &str, unit: &str, series: &[Series], marks: &[(f64, String)]) -> String {
    let (w, h, left, right, top, bottom) = (520.0, 260.0, 56.0, 12.0, 30.0, 34.0);
    let all = series.iter().flat_map(|s| s.2.iter());
    let x_max = all.clone().map(|p| p.0).fold(1.0f64, f64::max);
    let y_max = nice_ceiling(all.map(|p| p.1).fold(0.0f64, f64::max));
    let x = |v: f64| left + v / x_max * (w - left - right);
    let y = |v: f64| h - bottom - v / y_max * (h - top - bottom);
    let mut s = format!(
        r##"<figure><svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="100%" role="img" aria-label="{t}">
<text x="{left}" y="18" font-size="13" font-weight="bold">{t}</text>
<line x1="{left}" y1="{y0}" x2="{xr}" y2="{y0}" stroke="#888"/><line x1="{left}" y1="{top}" x2="{left}" y2="{y0}" stroke="#888"/>
"##,
        t = esc(title),
        y0 = h - bottom,
        xr = w - right,
    );
    for i in 0..=4 {
        let v = y_max * f64::from(i) / 4.0;
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{py}" x2="{xr}" y2="{py}" stroke="#eee"/><text x="{tx}" y="{ty}" font-size="10" text-anchor="end">{v}</text>"##,
            py = y(v),
            xr = w - right,
            tx = left - 4.0,
            ty = y(v) + 3.0,
            v = short(v),
        );
    }
    for i in 0..=5 {
        let v = x_max * f64::from(i) / 5.0;
        let _ = writeln!(
            s,
            r#"<text x="{px}" y="{py}" font-size="10" text-anchor="middle">{v:.0}s</text>"#,
            px = x(v),
            py = h - bottom + 14.0
        );
    }
    let _ = writeln!(s, r#"<text x="{left}" y="{}" font-size="10">{}</text>"#, h - 4.0, esc(unit));
    for (t, label) in marks {
        let _ = writeln!(
            s,
            r##"<line x1="{px}" y1="{top}" x2="{px}" y2="{y0}" stroke="#d62728" stroke-dasharray="4 3" opacity="0.6"><title>{l}</title></line>"##,
            px = x(*t),
            y0 = h - bottom,
            l = esc(label),
        );
    }
    for (i, (name, color, pts)) in series.iter().enumerate() {
        let path: Vec<String> = pts.iter().map(|(a, b)| format!("{:.1},{:.1}", x(*a), y(*b))).collect();
        let _ =
            writeln!(s, r#"<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{}"/>"#, path.join(" "));
        let lx = w - right - 150.0;
        let ly = top + 4.0 + 14.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{lx}" y="{ly}" width="10" height="3" fill="{color}"/><text x="{tx}" y="{ty}" font-size="10">{n}</text>"#,
            tx = lx + 14.0,
            ty = ly + 4.0,
            n = esc(name)
        );
    }
    s.push_str("</svg></figure>\n");
    s
}

/// A round axis maximum at or above `v`.
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * mag).find(|c| *c >= v).unwrap_or(10.0 * mag)
}

fn short(v: f64) -> String {
    let trim = |x: f64, digits: usize| {
        let text = format!("{x:.digits$}");
        if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.').to_string() } else { text }
    };
    if v >= 10_000.0 {
        format!("{}k", trim(v / 1000.0, 1))
    } else if v >= 1.0 {
        trim(v, 1)
    } else {
        trim(v, 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_labels_are_short() {
        assert_eq!(short(37_500.0), "37.5k");
        assert_eq!(short(50_000.0), "50k");
        assert_eq!(short(12.5), "12.5");
        assert_eq!(short(0.0), "0");
        assert_eq!(short(0.25), "0.25");
    }

    #[test]
    fn axis_maxima_are_round() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(7.3), 10.0);
        assert_eq!(nice_ceiling(2100.0), 2500.0);
        assert_eq!(nice_ceiling(0.42), 0.5);
    }

    #[test]
    fn charts_are_svg_with_every_series_and_mark() {
        let svg = chart(
            "T <x>",
            "u",
            &[("a", "#000", vec![(0.0, 1.0), (10.0, 5.0)]), ("b", "#111", vec![(0.0, 2.0)])],
            &[(4.0, "kill w1".into())],
        );
        assert!(svg.starts_with("<figure><svg"));
        assert!(svg.contains("T &lt;x&gt;") && svg.contains("kill w1"));
        assert_eq!(svg.matches("<polyline").count(), 2);
    }
}
