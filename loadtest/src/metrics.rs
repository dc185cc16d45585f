//! What a run measures: latency histograms (HDR, microseconds), error
//! counts by kind, and server processes' RSS and CPU time from /proc.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::client::{ClientError, ErrorKind};

/// Largest latency recorded as is (one hour); longer ones saturate.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// A latency histogram shared by the tasks of a run (values in µs, three
/// significant digits). A second histogram holds the values since the last
/// [`LatencyHistogram::take_interval`], for per-second samples.
pub struct LatencyHistogram {
    hist: Mutex<Pair>,
}

struct Pair {
    all: Histogram<u64>,
    interval: Histogram<u64>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("static histogram bounds are valid")
}

fn summarize(hist: &Histogram<u64>) -> LatencySummary {
    if hist.is_empty() {
        return LatencySummary::default();
    }
    LatencySummary {
        count: hist.len(),
        min_us: hist.min(),
        mean_us: hist.mean(),
        p50_us: hist.value_at_quantile(0.50),
        p90_us: hist.value_at_quantile(0.90),
        p99_us: hist.value_at_quantile(0.99),
        p999_us: hist.value_at_quantile(0.999),
        max_us: hist.max(),
    }
}

impl LatencyHistogram {
    pub fn new() -> Self {
        LatencyHistogram {
            hist: Mutex::new(Pair {
                all: new_histogram(),
                interval: new_histogram(),
            }),
        }
    }

    pub fn record(&self, latency: Duration) {
        let us = (latency.as_micros() as u64).max(1);
        let mut h = self.lock();
        h.all.saturating_record(us);
        h.interval.saturating_record(us);
    }

    /// Records many values at once (one lock).
    pub fn record_all(&self, latencies_us: &[u64]) {
        let mut h = self.lock();
        for &us in latencies_us {
            h.all.saturating_record(us.max(1));
            h.interval.saturating_record(us.max(1));
        }
    }

    pub fn summary(&self) -> LatencySummary {
        summarize(&self.lock().all)
    }

    /// The values recorded since the previous call, summarized; starts a
    /// new interval.
    pub fn take_interval(&self) -> LatencySummary {
        let mut h = self.lock();
        let summary = summarize(&h.interval);
        h.interval.reset();
        summary
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pair> {
        // A panic while holding the lock cannot leave a histogram invalid.
        self.hist.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Percentiles of one histogram, in microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min_us: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// Errors of a run, counted by kind, with the first detail of each kind.
#[derive(Default)]
pub struct ErrorCounts {
    by_kind: Mutex<BTreeMap<ErrorKind, (u64, String)>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorSummary {
    pub count: u64,
    pub first: String,
}

impl ErrorCounts {
    pub fn add(&self, err: &ClientError) {
        let mut map = self.by_kind.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map
            .entry(err.kind)
            .or_insert_with(|| (0, err.detail.clone()));
        entry.0 += 1;
    }

    pub fn total(&self) -> u64 {
        let map = self.by_kind.lock().unwrap_or_else(|e| e.into_inner());
        map.values().map(|(n, _)| n).sum()
    }

    pub fn snapshot(&self) -> BTreeMap<String, ErrorSummary> {
        let map = self.by_kind.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .map(|(kind, (count, first))| {
                (
                    kind.as_str().to_string(),
                    ErrorSummary {
                        count: *count,
                        first: first.clone(),
                    },
                )
            })
            .collect()
    }
}

/// One reading of a process in /proc.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    /// Resident set size (VmRSS), KiB.
    pub rss_kb: u64,
    /// utime + stime, microseconds.
    pub cpu_us: u64,
}

/// Reads VmRSS from /proc/PID/status and utime + stime from /proc/PID/stat.
pub fn sample_proc(pid: u32) -> Result<ProcSample, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("pid {pid}: {e}"))?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("pid {pid}: no VmRSS (a zombie?)"))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("pid {pid}: {e}"))?;
    let cpu_ticks =
        parse_stat_cpu_ticks(&stat).ok_or_else(|| format!("pid {pid}: unreadable stat"))?;
    Ok(ProcSample {
        rss_kb,
        cpu_us: cpu_ticks * 1_000_000 / clock_ticks_per_second(),
    })
}

/// utime + stime (fields 14 and 15) from a /proc/PID/stat line. The command
/// name (field 2) may hold spaces and parentheses: fields are counted after
/// its last `)`.
fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // rest starts at field 3 (state): utime is field 14, the 12th here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

/// RSS and CPU of one server process over a window of the run.
#[derive(Debug, Clone, Serialize)]
pub struct ProcUsage {
    pub pid: u32,
    pub rss_before_kb: u64,
    pub rss_after_kb: u64,
    /// CPU time (user + system) spent in the window, microseconds.
    pub cpu_us: u64,
    pub window_s: f64,
}

/// RSS and CPU summed over several server processes (a cluster's nodes).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProcTotal {
    pub processes: usize,
    pub rss_before_kb: u64,
    pub rss_after_kb: u64,
    pub cpu_us: u64,
}

impl ProcTotal {
    pub fn of(usage: &[ProcUsage]) -> Option<ProcTotal> {
        if usage.is_empty() {
            return None;
        }
        Some(ProcTotal {
            processes: usage.len(),
            rss_before_kb: usage.iter().map(|u| u.rss_before_kb).sum(),
            rss_after_kb: usage.iter().map(|u| u.rss_after_kb).sum(),
            cpu_us: usage.iter().map(|u| u.cpu_us).sum(),
        })
    }
}

/// CPU time of the whole machine from /proc/stat: (busy, irq + softirq,
/// total) jiffies.
fn machine_cpu() -> Option<(u64, u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 7 {
        return None;
    }
    // user nice system idle iowait irq softirq steal ...
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v[4];
    Some((total - idle, v[5] + v[6], total))
}

/// How busy the whole machine was over a window: a server or client
/// starved by other processes shows up here.
#[derive(Debug, Clone, Serialize)]
pub struct MachineUsage {
    pub cores: usize,
    /// Cores' worth of CPU used by every process over the window.
    pub busy_cores: f64,
    /// The part of `busy_cores` spent in interrupts and softirqs, charged
    /// to no process: mostly the kernel's loopback network path, which the
    /// servers' and client's own CPU times do not include.
    pub irq_cores: f64,
    /// The rest of `busy_cores` spent by other processes than the measured
    /// servers and this client (a compile next door shows here).
    pub others_busy_cores: f64,
}

/// Samples the machine's CPU counters at the start and end of a window.
pub struct MachineProbe {
    before: Option<(u64, u64, u64)>,
}

impl MachineProbe {
    pub fn start() -> Self {
        MachineProbe {
            before: machine_cpu(),
        }
    }

    pub fn finish(&self) -> Option<MachineUsage> {
        let (b0, i0, t0) = self.before?;
        let (b1, i1, t1) = machine_cpu()?;
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let total = t1.saturating_sub(t0);
        if total == 0 {
            return None;
        }
        Some(MachineUsage {
            cores,
            busy_cores: b1.saturating_sub(b0) as f64 / total as f64 * cores as f64,
            irq_cores: i1.saturating_sub(i0) as f64 / total as f64 * cores as f64,
            others_busy_cores: 0.0,
        })
    }
}

/// Samples a set of processes (and the machine) at the start and at the
/// end of a window.
pub struct ProcProbe {
    pids: Vec<u32>,
    before: Vec<Option<(ProcSample, std::time::Instant)>>,
    machine: MachineProbe,
}

impl ProcProbe {
    /// Checks that every pid can be read, then takes the "before" sample.
    pub fn start(pids: &[u32]) -> Result<ProcProbe, String> {
        let mut before = Vec::with_capacity(pids.len());
        for &pid in pids {
            before.push(Some((sample_proc(pid)?, std::time::Instant::now())));
        }
        Ok(ProcProbe {
            pids: pids.to_vec(),
            before,
            machine: MachineProbe::start(),
        })
    }

    /// A probe that measures nothing.
    pub fn none() -> ProcProbe {
        ProcProbe {
            pids: Vec::new(),
            before: Vec::new(),
            machine: MachineProbe::start(),
        }
    }

    /// Takes the "before" sample again (the window starts now).
    pub fn restart(&mut self) -> Result<(), String> {
        for (i, &pid) in self.pids.iter().enumerate() {
            self.before[i] = Some((sample_proc(pid)?, std::time::Instant::now()));
        }
        self.machine = MachineProbe::start();
        Ok(())
    }

    /// The whole machine's CPU use since the start of the window.
    pub fn machine(&self) -> Option<MachineUsage> {
        self.machine.finish()
    }

    /// Samples again; a process that vanished is reported in the error list.
    pub fn finish(&self) -> (Vec<ProcUsage>, Vec<String>) {
        let mut usage = Vec::new();
        let mut errors = Vec::new();
        for (i, &pid) in self.pids.iter().enumerate() {
            let Some((before, at)) = self.before[i] else {
                continue;
            };
            match sample_proc(pid) {
                Ok(after) => usage.push(ProcUsage {
                    pid,
                    rss_before_kb: before.rss_kb,
                    rss_after_kb: after.rss_kb,
                    cpu_us: after.cpu_us.saturating_sub(before.cpu_us),
                    window_s: at.elapsed().as_secs_f64(),
                }),
                Err(e) => errors.push(format!("server process gone: {e}")),
            }
        }
        (usage, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_command_name() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 4 0 100 1000 50";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(325));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let s = sample_proc(std::process::id()).unwrap();
        assert!(s.rss_kb > 0);
    }

    #[test]
    fn histogram_percentiles() {
        let h = LatencyHistogram::new();
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        let s = h.summary();
        assert_eq!(s.count, 100);
        assert!((49_000..=51_000).contains(&s.p50_us));
        assert!(s.p999_us >= s.p99_us && s.max_us >= 99_000);
    }
}
