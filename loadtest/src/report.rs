//! The result of a run: named figures, latency summaries, errors by kind and
//! process usage; printed as a human summary or as one JSON object.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::baseline::Comparison;
use crate::client::TransportKind;
use crate::metrics::{ErrorSummary, LatencySummary, MachineUsage, ProcTotal, ProcUsage};
use crate::timeline::TimelineReport;

/// One named number of a run.
#[derive(Debug, Clone)]
pub struct Figure {
    /// Machine name (JSON key), e.g. `throughput_per_s`.
    pub key: String,
    /// Human label, e.g. `throughput`.
    pub label: String,
    pub value: f64,
    /// Unit shown after the value in the human summary.
    pub unit: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    /// The first (or only) server URL.
    pub url: String,
    /// The node list (`--url` repeated); one URL: the same as `url`.
    pub urls: Vec<String>,
    pub transport: TransportKind,
    pub namespace: String,
    /// The scenario's parameters as given.
    pub params: serde_json::Value,
    /// Wall time of the whole run, seconds.
    pub elapsed_s: f64,
    #[serde(serialize_with = "figures_as_map")]
    pub figures: Vec<Figure>,
    #[serde(serialize_with = "pairs_as_map")]
    pub latency: Vec<(String, LatencySummary)>,
    pub error_total: u64,
    pub errors: BTreeMap<String, ErrorSummary>,
    /// Server processes given with `--server-pid`, over the measured window.
    pub servers: Vec<ProcUsage>,
    /// The sum over `servers` (a cluster's nodes), when there are any.
    pub servers_total: Option<ProcTotal>,
    /// This client process, over the same window.
    pub client: Option<ProcUsage>,
    /// The whole machine over the same window (other processes included).
    pub machine: Option<MachineUsage>,
    /// Anything the run noticed that the figures do not say.
    pub notes: Vec<String>,
    /// Per-second samples (with `--plot`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeline: Option<TimelineReport>,
    /// Ratios against a saved report (with `--baseline`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Comparison>,
}

fn figures_as_map<S: Serializer>(figures: &[Figure], s: S) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(figures.len()))?;
    for f in figures {
        if f.value.is_finite() {
            map.serialize_entry(&f.key, &f.value)?;
        } else {
            map.serialize_entry(&f.key, &Option::<f64>::None)?;
        }
    }
    map.end()
}

fn pairs_as_map<S: Serializer>(
    pairs: &[(String, LatencySummary)],
    s: S,
) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(pairs.len()))?;
    for (k, v) in pairs {
        map.serialize_entry(k, v)?;
    }
    map.end()
}

impl Report {
    pub fn new(
        scenario: &'static str,
        urls: &[String],
        transport: TransportKind,
        namespace: &str,
        params: serde_json::Value,
    ) -> Self {
        Report {
            scenario,
            url: urls.first().cloned().unwrap_or_default(),
            urls: urls.to_vec(),
            transport,
            namespace: namespace.to_string(),
            params,
            elapsed_s: 0.0,
            figures: Vec::new(),
            latency: Vec::new(),
            error_total: 0,
            errors: BTreeMap::new(),
            servers: Vec::new(),
            servers_total: None,
            client: None,
            machine: None,
            notes: Vec::new(),
            timeline: None,
            baseline: None,
        }
    }

    pub fn figure(&mut self, key: &str, label: &str, value: f64, unit: &'static str) {
        self.figures.push(Figure {
            key: key.to_string(),
            label: label.to_string(),
            value,
            unit,
        });
    }

    pub fn latency(&mut self, name: &str, summary: LatencySummary) {
        self.latency.push((name.to_string(), summary));
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Server CPU microseconds per unit of work (summed over all servers),
    /// added as a figure when pids were given and `units` is positive.
    pub fn cpu_per(&mut self, key: &str, label: &str, units: u64) {
        if self.servers.is_empty() {
            return;
        }
        let cpu: u64 = self.servers.iter().map(|s| s.cpu_us).sum();
        let value = if units > 0 {
            cpu as f64 / units as f64
        } else {
            f64::NAN
        };
        self.figure(key, label, value, "µs");
    }

    /// Server RSS growth per session (summed over all servers), in KiB.
    pub fn rss_per(&mut self, key: &str, label: &str, sessions: u64) {
        if self.servers.is_empty() {
            return;
        }
        let before: u64 = self.servers.iter().map(|s| s.rss_before_kb).sum();
        let after: u64 = self.servers.iter().map(|s| s.rss_after_kb).sum();
        let value = if sessions > 0 {
            (after as f64 - before as f64) / sessions as f64
        } else {
            f64::NAN
        };
        self.figure(key, label, value, "KiB");
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|e| format!("{{\"error\":\"report serialization: {e}\"}}"))
    }

    pub fn to_human(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "== {}  {}  {}  namespace {}  ({:.1} s)",
            self.scenario,
            self.urls.join(" "),
            self.transport.as_str(),
            self.namespace,
            self.elapsed_s
        );
        if let Some(obj) = self.params.as_object() {
            let params: Vec<String> = obj.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(out, "params: {}", params.join(" "));
        }
        for f in &self.figures {
            let _ = writeln!(
                out,
                "  {:<34} {:>14} {}",
                f.label,
                format_value(f.value),
                f.unit
            );
        }
        if !self.latency.is_empty() {
            let _ = writeln!(
                out,
                "latency (µs)           {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                "count", "p50", "p90", "p99", "p99.9", "max", "mean"
            );
            for (name, s) in &self.latency {
                let _ = writeln!(
                    out,
                    "  {:<20} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9.0}",
                    name, s.count, s.p50_us, s.p90_us, s.p99_us, s.p999_us, s.max_us, s.mean_us
                );
            }
        }
        if self.errors.is_empty() {
            let _ = writeln!(out, "errors: none");
        } else {
            let _ = writeln!(out, "errors: {} in all", self.error_total);
            for (kind, e) in &self.errors {
                let _ = writeln!(out, "  {:<18} {:>9}  first: {}", kind, e.count, e.first);
            }
        }
        for s in &self.servers {
            let _ = writeln!(out, "server {}", describe_usage(s));
        }
        if let (Some(t), true) = (&self.servers_total, self.servers.len() > 1) {
            let _ = writeln!(
                out,
                "servers ({}) in all: RSS {:.1} MiB -> {:.1} MiB, CPU {:.2} s",
                self.servers.len(),
                t.rss_before_kb as f64 / 1024.0,
                t.rss_after_kb as f64 / 1024.0,
                t.cpu_us as f64 / 1e6
            );
        }
        if let Some(c) = &self.client {
            let _ = writeln!(out, "client {}", describe_usage(c));
        }
        if let Some(m) = &self.machine {
            let _ = writeln!(
                out,
                "machine: {:.2} of {} cores busy ({:.2} in interrupts and softirqs, {:.2} by other processes)",
                m.busy_cores, m.cores, m.irq_cores, m.others_busy_cores
            );
        }
        for n in &self.notes {
            let _ = writeln!(out, "note: {n}");
        }
        if let Some(b) = &self.baseline {
            self.describe_baseline(&mut out, b);
        }
        out
    }

    fn describe_baseline(&self, out: &mut String, b: &Comparison) {
        let _ = writeln!(
            out,
            "vs baseline {} ({}): current / baseline",
            b.file, b.scenario
        );
        if b.scenario != self.scenario {
            let _ = writeln!(
                out,
                "  (the baseline is a {} run, this one {})",
                b.scenario, self.scenario
            );
        }
        let ratio = |r: Option<f64>| r.map(|v| format!("{v:.3}")).unwrap_or_else(|| "n/a".into());
        for f in &self.figures {
            if let Some(r) = b.figures.get(&f.key) {
                let _ = writeln!(
                    out,
                    "  {:<34} {:>14} {:>14}  x{}",
                    f.label,
                    format_value(r.current),
                    format_value(r.baseline),
                    ratio(r.ratio)
                );
            }
        }
        for (name, ratios) in &b.latency {
            let parts: Vec<String> = ["p50", "p90", "p99", "p999"]
                .iter()
                .filter_map(|p| ratios.get(*p).map(|r| format!("{p} x{}", ratio(r.ratio))))
                .collect();
            let _ = writeln!(out, "  latency {:<18} {}", name, parts.join("  "));
        }
    }
}

fn describe_usage(u: &ProcUsage) -> String {
    let pct = if u.window_s > 0.0 {
        u.cpu_us as f64 / 1e4 / u.window_s
    } else {
        0.0
    };
    format!(
        "pid {}: RSS {:.1} MiB -> {:.1} MiB, CPU {:.2} s in {:.1} s ({:.0}% of one core)",
        u.pid,
        u.rss_before_kb as f64 / 1024.0,
        u.rss_after_kb as f64 / 1024.0,
        u.cpu_us as f64 / 1e6,
        u.window_s,
        pct
    )
}

fn format_value(v: f64) -> String {
    if !v.is_finite() {
        "n/a".to_string()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}
