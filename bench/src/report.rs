//! The results: one markdown table (stdout and `OUT/results.md`) and an SVG latency chart
//! (`OUT/latency.svg`, hand-written). Scenarios add rows through [`Compare::row`], the one
//! helper for a side-by-side row (changefeed, peer, ratio).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

/// One measured value, or why there is none.
#[derive(Debug, Clone)]
pub enum Cell {
    Value(f64),
    /// Shown as is; no ratio.
    Text(String),
    Error(String),
    NotRun,
}

impl Cell {
    fn text(&self, notes: &mut Vec<String>) -> String {
        match self {
            Cell::Value(v) if v.is_nan() => "n/a".into(),
            Cell::Value(v) => format_number(*v),
            Cell::Text(text) => text.clone(),
            Cell::NotRun => "—".into(),
            Cell::Error(error) => {
                let index = match notes.iter().position(|n| n == error) {
                    Some(index) => index,
                    None => {
                        notes.push(error.clone());
                        notes.len() - 1
                    }
                };
                format!("error [e{}]", index + 1)
            }
        }
    }
}

fn format_number(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 100_000.0 {
        let s = format!("{:.0}", v);
        // Thousands separators.
        let bytes = s.as_bytes();
        let mut out = String::new();
        for (i, b) in bytes.iter().enumerate() {
            if i > 0 && (bytes.len() - i) % 3 == 0 && bytes[i - 1] != b'-' {
                out.push(',');
            }
            out.push(*b as char);
        }
        out
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// One table row.
pub struct Row {
    pub scenario: &'static str,
    pub setup: String,
    pub metric: String,
    pub ours: Cell,
    pub peer: &'static str,
    pub theirs: Cell,
    /// Only for reading the ratio (no assertion is ever made).
    pub lower_is_better: bool,
}

/// Which way a measure improves (only for reading the ratio; never asserted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Lower,
    Higher,
}

/// The fixed part of a group of side-by-side rows: the scenario, its setup and the peer.
pub struct Compare<'a> {
    pub scenario: &'static str,
    pub setup: &'a str,
    pub peer: &'static str,
}

impl Compare<'_> {
    /// One side-by-side row: `value` of changefeed's result beside the same of the peer's
    /// (`theirs: None` when the peer has no such measure). A failed run shows its error.
    pub fn row<T>(
        &self,
        report: &mut Report,
        metric: impl Into<String>,
        ours: &Result<T, String>,
        theirs: Option<&Result<T, String>>,
        value: impl Fn(&T) -> f64,
        better: Better,
    ) {
        let cell = |result: &Result<T, String>| match result {
            Ok(result) => Cell::Value(value(result)),
            Err(error) => Cell::Error(error.clone()),
        };
        report.push(Row {
            scenario: self.scenario,
            setup: self.setup.to_string(),
            metric: metric.into(),
            ours: cell(ours),
            peer: self.peer,
            theirs: theirs.map_or(Cell::NotRun, cell),
            lower_is_better: better == Better::Lower,
        });
    }

    /// A row whose changefeed cell is text (no ratio) and whose peer has no such measure.
    pub fn text_row<T>(
        &self,
        report: &mut Report,
        metric: impl Into<String>,
        ours: &Result<T, String>,
        text: impl Fn(&T) -> String,
    ) {
        report.push(Row {
            scenario: self.scenario,
            setup: self.setup.to_string(),
            metric: metric.into(),
            ours: match ours {
                Ok(result) => Cell::Text(text(result)),
                Err(error) => Cell::Error(error.clone()),
            },
            peer: self.peer,
            theirs: Cell::NotRun,
            lower_is_better: true,
        });
    }
}

/// One latency run for the chart.
pub struct LatencyBar {
    pub label: String,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

pub struct Report {
    quick: bool,
    load_at_start: String,
    rows: Vec<Row>,
    pub bars: Vec<LatencyBar>,
    generator: Vec<(String, f64)>,
}

impl Report {
    pub fn new(quick: bool) -> Report {
        Report {
            quick,
            load_at_start: load_average(),
            rows: Vec::new(),
            bars: Vec::new(),
            generator: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Row) {
        self.rows.push(row);
    }

    /// Records the load generator's own CPU for a run (flagged when it may be the bottleneck).
    pub fn load_generator(&mut self, run: &str, percent: f64) {
        self.generator.push((run.to_string(), percent));
    }

    /// Writes and prints the results; returns how many cells hold an error.
    pub fn finish(&self, out: &Path, elapsed: Duration) -> usize {
        let mut md = String::new();
        let mut errors = Vec::new();
        let _ = writeln!(
            md,
            "## changefeed benchmark{}\n",
            if self.quick { " (--quick)" } else { "" }
        );
        let _ = writeln!(md, "{}\n", machine(&self.load_at_start));
        let _ = writeln!(
            md,
            "| Scenario | Setup | Metric | changefeed | Peer | Peer value | changefeed / peer |"
        );
        let _ = writeln!(md, "|---|---|---|---:|---|---:|---:|");
        let mut last_setup = String::new();
        for row in &self.rows {
            let ratio = match (&row.ours, &row.theirs) {
                (Cell::Value(a), Cell::Value(b)) if *b != 0.0 && a.is_finite() && b.is_finite() => {
                    format!(
                        "{:.2}×{}",
                        a / b,
                        if row.lower_is_better {
                            " (lower is better)"
                        } else {
                            ""
                        }
                    )
                }
                _ => "—".into(),
            };
            let setup = if row.setup == last_setup {
                String::new()
            } else {
                row.setup.clone()
            };
            last_setup = row.setup.clone();
            let ours = row.ours.text(&mut errors);
            let theirs = row.theirs.text(&mut errors);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} |",
                row.scenario, setup, row.metric, ours, row.peer, theirs, ratio
            );
        }
        if !self.generator.is_empty() {
            let _ = writeln!(md, "\nLoad generator CPU (this process, % of one core; ≥ 90 % means the load generator, not the server, may be the bottleneck):\n");
            for (run, percent) in &self.generator {
                let flag = if *percent >= 90.0 {
                    " — **load generator saturated**"
                } else {
                    ""
                };
                let _ = writeln!(md, "- {run}: {percent:.0} %{flag}");
            }
        }
        if !errors.is_empty() {
            let _ = writeln!(md, "\nErrors:\n");
            for (i, error) in errors.iter().enumerate() {
                let _ = writeln!(md, "- [e{}] {}", i + 1, error.replace('|', "/"));
            }
        }
        let _ = writeln!(
            md,
            "\nTotal bench time {:.0} s. Chart: latency.svg.",
            elapsed.as_secs_f64()
        );
        println!("{md}");
        let _ = std::fs::write(out.join("results.md"), &md);
        let _ = std::fs::write(out.join("latency.svg"), self.svg());
        eprintln!(
            "wrote {} and {}",
            out.join("results.md").display(),
            out.join("latency.svg").display()
        );
        self.rows
            .iter()
            .flat_map(|row| [&row.ours, &row.theirs])
            .filter(|cell| matches!(cell, Cell::Error(_)))
            .count()
    }

    /// Grouped horizontal bars (p50, p99, max) per latency run, on a log scale in ms.
    fn svg(&self) -> String {
        let width = 760.0;
        let left = 230.0;
        let right = 30.0;
        let bar_h = 12.0;
        let group_h = 3.0 * bar_h + 18.0;
        let top = 50.0;
        let height = top + group_h * self.bars.len().max(1) as f64 + 40.0;
        let values: Vec<f64> = self
            .bars
            .iter()
            .flat_map(|b| [b.p50, b.p99, b.max])
            .filter(|v| v.is_finite() && *v > 0.0)
            .collect();
        let lo = values
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
            .min(1.0)
            .log10()
            .floor();
        let hi = values
            .iter()
            .copied()
            .fold(0.0, f64::max)
            .max(10.0)
            .log10()
            .ceil();
        let x = |v: f64| {
            let v = v.max(10f64.powf(lo));
            left + (v.log10() - lo) / (hi - lo) * (width - left - right)
        };
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
        );
        let _ = writeln!(
            s,
            r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="20" font-size="14">Commit → client latency per delivery (ms, log scale){}</text>"#,
            if self.quick { " — --quick" } else { "" }
        );
        let mut decade = lo;
        while decade <= hi {
            let v = 10f64.powf(decade);
            let px = x(v);
            let _ = writeln!(
                s,
                r##"<line x1="{px:.1}" y1="{:.1}" x2="{px:.1}" y2="{:.1}" stroke="#ddd"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                top - 10.0,
                height - 30.0,
                height - 15.0,
                if v < 1.0 {
                    format!("{v}")
                } else {
                    format!("{v:.0}")
                }
            );
            decade += 1.0;
        }
        let colors = [("p50", "#4c78a8"), ("p99", "#f58518"), ("max", "#e45756")];
        for (i, bar) in self.bars.iter().enumerate() {
            let y0 = top + group_h * i as f64;
            let _ = writeln!(
                s,
                r#"<text x="10" y="{:.1}">{}</text>"#,
                y0 + 1.5 * bar_h + 4.0,
                escape(&bar.label)
            );
            for (k, value) in [bar.p50, bar.p99, bar.max].iter().enumerate() {
                let y = y0 + k as f64 * bar_h;
                let w = (x(*value) - left).max(1.0);
                let _ = writeln!(
                    s,
                    r#"<rect x="{left}" y="{y:.1}" width="{w:.1}" height="{:.1}" fill="{}"/><text x="{:.1}" y="{:.1}">{} {}</text>"#,
                    bar_h - 2.0,
                    colors[k].1,
                    left + w + 4.0,
                    y + bar_h - 3.0,
                    colors[k].0,
                    format_number(*value)
                );
            }
        }
        if self.bars.is_empty() {
            let _ = writeln!(
                s,
                r#"<text x="10" y="{top}">no latency run succeeded</text>"#
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// CPU count, model and load average, for the report header.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split(' ').take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn machine(load_at_start: &str) -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let load = load_average();
    format!("Machine: {cpus} CPUs ({model}); load average at the start: {load_at_start}, at the end: {load}. Loopback only; server, load generator and writers share the machine.")
}
