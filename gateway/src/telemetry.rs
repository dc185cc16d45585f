//! The gateway's logs, traces and metrics: set up by `ringway-telemetry`
//! (shared with the coordinator), with the gateway's instruments here.

use std::sync::LazyLock;

use opentelemetry::metrics::{Counter, Histogram};

/// The Socket.IO layer's instruments (deliveries, recovery).
pub use crate::socketio::metrics::metrics as socketio_metrics;
/// The Engine.IO layer's instruments (sessions, requests, bytes, limits).
pub use ringway_engineio::metrics::metrics as engine_metrics;
pub use ringway_telemetry::{
    attr, continue_trace, histogram, meter, render, seconds, traced, LogFormat, Options, Telemetry,
    TelemetryError,
};

/// Every instrument the gateway updates as it works. Gauges of state
/// (sessions, rooms, membership) are observed at collection time instead:
/// see `register_observers` in `node.rs`.
pub struct Metrics {
    /// Emits received from other nodes (room emits only reach nodes with
    /// members in the room).
    pub peer_emits: Counter<u64>,
    /// Calls to other gateways (`Node.Forward`, `Handoff`, `Local`), by
    /// method and outcome.
    pub peer_duration: Histogram<f64>,
    /// Items a peer's delivery queue could not take.
    pub peer_queue_drops: Counter<u64>,
    /// Registry (Redis) calls, by operation and outcome.
    pub registry_duration: Histogram<f64>,
    /// Push API calls, by method.
    pub push_duration: Histogram<f64>,
    /// Upstream hook calls, by call and outcome.
    pub upstream_duration: Histogram<f64>,
    /// Internal calls refused for their cluster credential, by reason.
    pub cluster_auth_refusals: Counter<u64>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let m = meter();
    Metrics {
        peer_emits: m
            .u64_counter("ringway.peer.emits")
            .with_description("Emits received from other gateways, to deliver here")
            .build(),
        peer_duration: histogram(
            &m,
            "ringway.peer.duration",
            "Calls to other gateways (Node.Forward, Handoff, Local)",
        ),
        peer_queue_drops: m
            .u64_counter("ringway.peer.queue.drops")
            .with_description("Items dropped because a peer's delivery queue was full")
            .build(),
        registry_duration: histogram(&m, "ringway.registry.duration", "Registry (Redis) calls"),
        push_duration: histogram(&m, "ringway.push.duration", "Push API calls"),
        upstream_duration: histogram(
            &m,
            "ringway.upstream.duration",
            "Upstream hook calls (Authorize, Connected, Event, Disconnected)",
        ),
        cluster_auth_refusals: m
            .u64_counter("ringway.cluster.auth.refusals")
            .with_description("Node-to-node calls refused for their cluster credential, by reason")
            .build(),
    }
});

/// The gateway's instruments.
pub fn metrics() -> &'static Metrics {
    &METRICS
}
