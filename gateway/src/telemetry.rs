//! The gateway's logs, traces and metrics: set up by `ringway-telemetry`
//! (shared with the coordinator), with the gateway's instruments here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;

use opentelemetry::metrics::{Counter, Histogram};
use opentelemetry::KeyValue;

pub use ringway_telemetry::{
    attr, continue_trace, histogram, meter, render, seconds, traced, LogFormat, Options, Telemetry,
    TelemetryError,
};

/// Every instrument the gateway updates as it works. Gauges of state
/// (sessions, rooms, membership) are observed at collection time instead:
/// see `register_observers` in `main.rs`.
pub struct Metrics {
    /// New sessions, by transport.
    pub handshakes: Counter<u64>,
    /// Requests refused, by Engine.IO error.
    pub request_errors: Counter<u64>,
    /// Completed upgrades to WebSocket.
    pub upgrades: Counter<u64>,
    /// Sessions taken over from (`in`) or handed to (`out`) another node.
    pub handoffs: Counter<u64>,
    pub handoff_duration: Histogram<f64>,
    /// Polling requests forwarded to their owner, by method.
    pub forwards: Counter<u64>,
    /// Emits received from other nodes (room emits only reach nodes with
    /// members in the room).
    pub peer_emits: Counter<u64>,
    /// Answers of forwarded polls that the forwarding node did not
    /// confirm delivered (it failed, or its client went away), whose
    /// packets went back to the queue.
    pub poll_answers_retaken: Counter<u64>,
    pub forward_duration: Histogram<f64>,
    /// Messages from clients, and deliveries to clients.
    pub messages_in: Tally,
    pub messages_out: Tally,
    /// Bytes of those messages, `direction` receive / transmit (the
    /// semantic conventions' network.io; Engine.IO payloads as framed,
    /// binary counted as its base64 size on polling).
    pub network_io: Counter<u64>,
    /// Calls to other gateways (`Node.Forward`, `Handoff`, `Local`), by
    /// method and outcome.
    pub peer_duration: Histogram<f64>,
    /// Sessions closed, by reason (slow consumer among them).
    pub session_closes: Counter<u64>,
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
    /// Requests, sessions and packets refused by a public-port limit, by
    /// limit.
    pub limit_refusals: Counter<u64>,
}

impl Metrics {
    pub fn bytes_in(&self, n: u64) {
        self.network_io.add(n, &attr("direction", "receive"));
    }

    pub fn bytes_out(&self, n: u64) {
        self.network_io.add(n, &attr("direction", "transmit"));
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let m = meter();
    Metrics {
        handshakes: m
            .u64_counter("ringway.handshakes")
            .with_description("Sessions opened")
            .build(),
        request_errors: m
            .u64_counter("ringway.request.errors")
            .with_description("Requests refused with an Engine.IO error")
            .build(),
        upgrades: m
            .u64_counter("ringway.upgrades")
            .with_description("Sessions upgraded to WebSocket")
            .build(),
        handoffs: m
            .u64_counter("ringway.handoffs")
            .with_description("Sessions moved between nodes")
            .build(),
        handoff_duration: histogram(
            &m,
            "ringway.handoff.duration",
            "Time to take a session over",
        ),
        forwards: m
            .u64_counter("ringway.forwards")
            .with_description("Polling requests forwarded to the owner node")
            .build(),
        forward_duration: histogram(&m, "ringway.forward.duration", "Forwarded request time"),
        poll_answers_retaken: m
            .u64_counter("ringway.poll.answers.retaken")
            .with_description("Forwarded poll answers not confirmed delivered, requeued")
            .build(),
        peer_emits: m
            .u64_counter("ringway.peer.emits")
            .with_description("Emits received from other gateways, to deliver here")
            .build(),
        messages_in: Tally::new(
            m.u64_counter("ringway.messages.received")
                .with_description("Engine.IO messages received from clients")
                .build(),
        ),
        messages_out: Tally::new(
            m.u64_counter("ringway.messages.delivered")
                .with_description("Socket.IO packets queued for clients")
                .build(),
        ),
        network_io: m
            .u64_counter("ringway.network.io")
            .with_unit("By")
            .with_description(
                "Bytes of the messages received from clients (direction=receive) \
                 and queued for them (direction=transmit)",
            )
            .build(),
        peer_duration: histogram(
            &m,
            "ringway.peer.duration",
            "Calls to other gateways (Node.Forward, Handoff, Local)",
        ),
        session_closes: m
            .u64_counter("ringway.session.closes")
            .with_description("Sessions closed, by reason")
            .build(),
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
        limit_refusals: m
            .u64_counter("ringway.limits.refusals")
            .with_description(
                "Requests, sessions and packets refused by a public-port limit, by limit",
            )
            .build(),
    }
});

/// A counter that also keeps its process total readable here (the
/// heartbeat reports it to the coordinator's dashboard).
pub struct Tally {
    counter: Counter<u64>,
    total: AtomicU64,
}

impl Tally {
    fn new(counter: Counter<u64>) -> Tally {
        Tally {
            counter,
            total: AtomicU64::new(0),
        }
    }

    pub fn add(&self, value: u64, attributes: &[KeyValue]) {
        self.total.fetch_add(value, Ordering::Relaxed);
        self.counter.add(value, attributes);
    }

    /// Everything added since the process started.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

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
