//! `--baseline FILE.json`: the ratios of this run's figures and latency
//! percentiles to those of a saved `--json` report (current / baseline).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::report::Report;

/// One number now and in the baseline.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub current: f64,
    pub baseline: f64,
    /// current / baseline (none when the baseline is 0).
    pub ratio: Option<f64>,
}

impl Ratio {
    fn new(current: f64, baseline: f64) -> Ratio {
        Ratio {
            current,
            baseline,
            ratio: (baseline != 0.0).then(|| current / baseline),
        }
    }
}

/// This run against a saved report.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub file: String,
    /// The baseline's scenario (a comparison across scenarios is allowed,
    /// but noted).
    pub scenario: String,
    pub figures: BTreeMap<String, Ratio>,
    /// Per latency histogram: p50, p90, p99, p99.9 and mean.
    pub latency: BTreeMap<String, BTreeMap<String, Ratio>>,
}

const PERCENTILES: [&str; 5] = ["p50_us", "p90_us", "p99_us", "p999_us", "mean_us"];

/// Reads `file` (a `--json` report) and compares `report` with it.
pub fn compare(report: &Report, file: &Path) -> Result<Comparison, String> {
    let text =
        std::fs::read_to_string(file).map_err(|e| format!("--baseline {}: {e}", file.display()))?;
    let base: Value = serde_json::from_str(&text)
        .map_err(|e| format!("--baseline {}: not a JSON report: {e}", file.display()))?;
    let mut figures = BTreeMap::new();
    for f in &report.figures {
        if let Some(b) = base["figures"][&f.key].as_f64() {
            if f.value.is_finite() {
                figures.insert(f.key.clone(), Ratio::new(f.value, b));
            }
        }
    }
    let mut latency = BTreeMap::new();
    for (name, summary) in &report.latency {
        let b = &base["latency"][name];
        if summary.count == 0 || b["count"].as_u64().unwrap_or(0) == 0 {
            continue;
        }
        let current = serde_json::to_value(summary).unwrap_or_default();
        let mut ratios = BTreeMap::new();
        for p in PERCENTILES {
            if let (Some(c), Some(bv)) = (current[p].as_f64(), b[p].as_f64()) {
                ratios.insert(p.trim_end_matches("_us").to_string(), Ratio::new(c, bv));
            }
        }
        latency.insert(name.clone(), ratios);
    }
    if figures.is_empty() && latency.is_empty() {
        return Err(format!(
            "--baseline {}: no figure or latency in common with this run",
            file.display()
        ));
    }
    Ok(Comparison {
        file: file.display().to_string(),
        scenario: base["scenario"].as_str().unwrap_or("?").to_string(),
        figures,
        latency,
    })
}
