//! Per-second samples of a run (for `--plot`): the latency percentiles of
//! the values recorded in each second, and how many there were.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::metrics::LatencySummary;

/// One second of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    /// End of the interval, seconds since the start of the run.
    pub t_s: f64,
    /// Values recorded in the interval (round trips, deliveries, ...).
    pub count: u64,
    /// `count` per second of the interval.
    pub per_s: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// The samples of a run and the latency they follow.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TimelineReport {
    /// The latency histogram sampled (`echo_rtt`, `delivery`, ...).
    pub latency: String,
    pub samples: Vec<Sample>,
}

/// Samples a histogram every second until finished.
pub struct Timeline {
    latency: String,
    samples: Arc<Mutex<Vec<Sample>>>,
    take: Arc<dyn Fn() -> LatencySummary + Send + Sync>,
    start: Instant,
    last: Arc<Mutex<Instant>>,
    task: tokio::task::JoinHandle<()>,
}

impl Timeline {
    /// Starts sampling: `take` returns the values recorded since its last
    /// call (see `LatencyHistogram::take_interval`).
    pub fn start<F>(latency: &str, take: F) -> Timeline
    where
        F: Fn() -> LatencySummary + Send + Sync + 'static,
    {
        let take: Arc<dyn Fn() -> LatencySummary + Send + Sync> = Arc::new(take);
        let samples = Arc::new(Mutex::new(Vec::new()));
        let start = Instant::now();
        let last = Arc::new(Mutex::new(start));
        // Values recorded before the start belong to no sample.
        take();
        let task = {
            let (samples, take, last) = (samples.clone(), take.clone(), last.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    push_sample(&samples, &*take, start, &last);
                }
            })
        };
        Timeline {
            latency: latency.to_string(),
            samples,
            take,
            start,
            last,
            task,
        }
    }

    /// Stops sampling (the last, partial second included).
    pub fn finish(self) -> TimelineReport {
        self.task.abort();
        push_sample(&self.samples, &*self.take, self.start, &self.last);
        let samples = std::mem::take(&mut *self.samples.lock().unwrap_or_else(|e| e.into_inner()));
        TimelineReport {
            latency: self.latency.clone(),
            samples,
        }
    }
}

impl Drop for Timeline {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn push_sample(
    samples: &Mutex<Vec<Sample>>,
    take: &(dyn Fn() -> LatencySummary + Send + Sync),
    start: Instant,
    last: &Mutex<Instant>,
) {
    let now = Instant::now();
    let summary = take();
    let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
    let secs = now.duration_since(*last).as_secs_f64();
    *last = now;
    if secs < 0.05 && summary.count == 0 {
        return;
    }
    samples
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Sample {
            t_s: now.duration_since(start).as_secs_f64(),
            count: summary.count,
            per_s: if secs > 0.0 {
                summary.count as f64 / secs
            } else {
                0.0
            },
            p50_us: summary.p50_us,
            p90_us: summary.p90_us,
            p99_us: summary.p99_us,
            max_us: summary.max_us,
        });
}
