//! The gateway's logs, traces and metrics: set up by `ringway-telemetry`
//! (shared with the coordinator), with the gateway's instruments here.

use std::sync::LazyLock;

use opentelemetry::metrics::Histogram;

/// The Socket.IO layer's instruments (deliveries, recovery).
pub use crate::socketio::metrics::metrics as socketio_metrics;
/// The Engine.IO layer's instruments (sessions, requests, bytes, limits).
pub use ringway_engineio::metrics::metrics as engine_metrics;
pub use ringway_telemetry::{
    attr, continue_trace, histogram, meter, render, seconds, traced, LogFormat, Options, Telemetry,
    TelemetryError,
};

/// The cluster's instruments (peers, registry, refused internal calls).
pub use ringway_cluster::metrics::metrics as cluster_metrics;

/// The instruments of the gateway's own APIs (the cluster's are in
/// `ringway-cluster`, the layers' in their crates).
pub struct Metrics {
    /// Push API calls, by method.
    pub push_duration: Histogram<f64>,
    /// Upstream hook calls, by call and outcome.
    pub upstream_duration: Histogram<f64>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let m = meter();
    Metrics {
        push_duration: histogram(&m, "ringway.push.duration", "Push API calls"),
        upstream_duration: histogram(
            &m,
            "ringway.upstream.duration",
            "Upstream hook calls (Authorize, Connected, Event, Disconnected)",
        ),
    }
});

/// The gateway's instruments.
pub fn metrics() -> &'static Metrics {
    &METRICS
}
