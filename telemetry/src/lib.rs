//! Logs, traces and metrics of a Ringway process (the gateway and the
//! coordinator set them up the same way).
//!
//! - Logs: `tracing` on stderr, human or JSON (`--log-format`), levels by
//!   `RUST_LOG`. Every line logged inside a traced span names its trace
//!   (`trace_id`), so a log search finds what a trace shows.
//! - Traces: spans go to an OTLP collector (gRPC) when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set; off otherwise.
//!   `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` name the process.
//!   W3C trace context crosses gRPC calls in their metadata ([`traced`],
//!   [`continue_trace`]).
//! - Metrics: OpenTelemetry instruments from [`meter`], always readable in
//!   Prometheus text ([`render`], served on `/metrics`), and exported by
//!   OTLP too when the endpoint is set.

//!
//! Without the `setup` feature (default on) this crate is only the
//! instrument helpers ([`meter`], [`histogram`], [`attr`], [`seconds`],
//! [`LogLimiter`]) over the `opentelemetry` API: what a library crate (the
//! Engine.IO layer) needs to record metrics, without the exporters and
//! their gRPC stack.

#[cfg(feature = "setup")]
mod log;
#[cfg(feature = "grpc")]
mod propagation;
#[cfg(feature = "setup")]
mod setup;

use opentelemetry::metrics::{Histogram, Meter};
use opentelemetry::KeyValue;

#[cfg(feature = "grpc")]
pub use propagation::{continue_trace, grpc_outcome, traced};
#[cfg(feature = "setup")]
pub use setup::{render, LogFormat, Options, Telemetry, TelemetryError};

/// The meter of this process: a no-op one before `Telemetry::init`
/// (library use, unit tests). The same provider is the global one, so a
/// crate without the `setup` feature records into it too.
pub fn meter() -> Meter {
    #[cfg(feature = "setup")]
    if let Some(provider) = setup::meter_provider() {
        use opentelemetry::metrics::MeterProvider as _;
        return provider.meter("ringway");
    }
    opentelemetry::global::meter("ringway")
}

/// Buckets (seconds) for latencies: 50 µs .. 10 s.
const BUCKETS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];

/// A latency histogram in seconds, with the buckets every Ringway latency
/// uses.
pub fn histogram(meter: &Meter, name: &'static str, description: &'static str) -> Histogram<f64> {
    meter
        .f64_histogram(name)
        .with_unit("s")
        .with_description(description)
        .with_boundaries(BUCKETS.to_vec())
        .build()
}

/// Seconds since `start`, for a histogram.
pub fn seconds(start: std::time::Instant) -> f64 {
    start.elapsed().as_secs_f64()
}

/// One attribute, for instruments that take a slice.
pub fn attr(key: &'static str, value: impl Into<opentelemetry::Value>) -> [KeyValue; 1] {
    [KeyValue::new(key, value)]
}

/// `tracing::warn!` at most once per period per call site, with the count
/// of the lines held back since: for what every request of an outage would
/// log. (The calling crate depends on `tracing`.)
#[macro_export]
macro_rules! warn_every {
    ($period:expr, $($arg:tt)+) => {{
        static LIMITER: $crate::LogLimiter = $crate::LogLimiter::new($period);
        if let Some(held) = LIMITER.allow() {
            tracing::warn!(similar_lines_held = held, $($arg)+);
        }
    }};
}

/// Lets a log line through at most once per period, from any thread,
/// counting the ones held back: for warnings a flood of requests would
/// repeat (a Redis outage fails every lookup).
#[derive(Debug)]
pub struct LogLimiter {
    period_ms: u64,
    /// Milliseconds since `epoch` of the last line let through, plus one
    /// (0: none yet).
    last: std::sync::atomic::AtomicU64,
    held: std::sync::atomic::AtomicU64,
    epoch: std::sync::OnceLock<std::time::Instant>,
}

impl LogLimiter {
    pub const fn new(period: std::time::Duration) -> LogLimiter {
        LogLimiter {
            period_ms: period.as_millis() as u64,
            last: std::sync::atomic::AtomicU64::new(0),
            held: std::sync::atomic::AtomicU64::new(0),
            epoch: std::sync::OnceLock::new(),
        }
    }

    /// `Some(lines held back since the last one)` when a line may go out.
    pub fn allow(&self) -> Option<u64> {
        use std::sync::atomic::Ordering;
        let epoch = *self.epoch.get_or_init(std::time::Instant::now);
        let now = epoch.elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && now < last + self.period_ms {
            self.held.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if self
            .last
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            self.held.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.held.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod limiter_tests {
    use super::LogLimiter;
    use std::time::Duration;

    #[test]
    fn one_line_per_period_and_the_rest_counted() {
        let limiter = LogLimiter::new(Duration::from_secs(3600));
        assert_eq!(limiter.allow(), Some(0));
        assert_eq!(limiter.allow(), None);
        assert_eq!(limiter.allow(), None);
        let open = LogLimiter::new(Duration::ZERO);
        assert_eq!(open.allow(), Some(0));
        assert_eq!(open.allow(), Some(0));
    }
}
