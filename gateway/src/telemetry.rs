//! The gateway's logs, traces and metrics: set up by `ringway-telemetry`
//! (shared with the coordinator), with the gateway's instruments here.

use std::sync::LazyLock;

use opentelemetry::metrics::{Counter, Histogram};

/// The Engine.IO layer's instruments (sessions, requests, bytes, limits),
/// and the counter that keeps its total.
pub use ringway_engineio::metrics::{metrics as engine_metrics, Tally};
pub use ringway_telemetry::{
    attr, continue_trace, histogram, meter, render, seconds, traced, LogFormat, Options, Telemetry,
    TelemetryError,
};

/// Every instrument the gateway updates as it works. Gauges of state
/// (sessions, rooms, membership) are observed at collection time instead:
/// see `register_observers` in `main.rs`.
pub struct Metrics {
    /// Emits received from other nodes (room emits only reach nodes with
    /// members in the room).
    pub peer_emits: Counter<u64>,
    /// Socket.IO packets queued for clients.
    pub messages_out: Tally,
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
    /// Recovery attempts (CONNECTs with a pid), by outcome.
    pub recoveries: Counter<u64>,
    /// Events replayed to recovered or moved sockets.
    pub replayed: Counter<u64>,
    /// Recoverable emits, by outcome (`ok`: in the log; `unlogged`,
    /// `queue_full`: delivered without recovery).
    pub log_appends: Counter<u64>,
    /// Round trips of log appends (one per batch).
    pub log_append_duration: Histogram<f64>,
    /// Internal calls refused for their cluster credential, by reason.
    pub cluster_auth_refusals: Counter<u64>,
}

impl Metrics {
    /// Bytes queued for clients (the engine's `network.io`, transmit).
    pub fn bytes_out(&self, n: u64) {
        engine_metrics().bytes_out(n);
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let m = meter();
    Metrics {
        peer_emits: m
            .u64_counter("ringway.peer.emits")
            .with_description("Emits received from other gateways, to deliver here")
            .build(),
        messages_out: Tally::new(
            m.u64_counter("ringway.messages.delivered")
                .with_description("Socket.IO packets queued for clients")
                .build(),
        ),
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
        recoveries: m
            .u64_counter("ringway.recoveries")
            .with_description("Connection state recovery attempts, by outcome")
            .build(),
        replayed: m
            .u64_counter("ringway.recovery.replayed")
            .with_description("Events replayed to recovered or moved sockets")
            .build(),
        log_appends: m
            .u64_counter("ringway.recovery.log.appends")
            .with_description("Recoverable emits appended to the log, by outcome")
            .build(),
        log_append_duration: histogram(
            &m,
            "ringway.recovery.log.append.duration",
            "Recovery log appends (one round trip per batch)",
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

/// `tracing::warn!` at most once per period per call site, with the count
/// of the lines held back since: for what every request of an outage would
/// log.
#[macro_export]
macro_rules! warn_every {
    ($period:expr, $($arg:tt)+) => {{
        static LIMITER: ringway_telemetry::LogLimiter = ringway_telemetry::LogLimiter::new($period);
        if let Some(held) = LIMITER.allow() {
            tracing::warn!(similar_lines_held = held, $($arg)+);
        }
    }};
}
